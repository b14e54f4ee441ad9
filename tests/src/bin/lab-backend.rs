//! A tiny HTTP/1.1 + UDP echo backend for the namespace lab.
//!
//! Every response names the backend (body `NAME\n` and an `X-Backend`
//! header) so a client can tell which backend the load balancer picked. The
//! response status can be switched live through a status file, which is how
//! tests make a backend "unhealthy" without restarting it.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use geosteer_tests::http::{self, Reader};

const USAGE: &str = "usage: lab-backend --name NAME --listen IP:PORT [--udp IP:PORT] \
                     [--status-file PATH] [--exit-with-parent]";

/// A keep-alive connection that stays silent this long is dropped, so a
/// client that vanished (e.g. its packets are now black-holed) does not pin
/// a thread forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection threads only parse small heads; a small stack keeps thousands
/// of concurrent benchmark connections cheap.
const CONN_STACK_BYTES: usize = 256 * 1024;

struct Config {
    name: String,
    listen: SocketAddr,
    udp: Option<SocketAddr>,
    status_file: Option<PathBuf>,
    exit_with_parent: bool,
}

fn parse_args() -> Result<Config, String> {
    let mut name = None;
    let mut listen = None;
    let mut udp = None;
    let mut status_file = None;
    let mut exit_with_parent = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--exit-with-parent" {
            exit_with_parent = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = Some(value),
            "--listen" => listen = Some(parse_addr(&flag, &value)?),
            "--udp" => udp = Some(parse_addr(&flag, &value)?),
            "--status-file" => status_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let name = name.ok_or("--name is required")?;
    if name.is_empty() || name.contains(['\r', '\n']) {
        return Err("--name must be a non-empty single line".into());
    }
    Ok(Config {
        name,
        listen: listen.ok_or("--listen is required")?,
        udp,
        status_file,
        exit_with_parent,
    })
}

fn parse_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: expected IP:PORT, got {value:?}"))
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("lab-backend: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let listener = match TcpListener::bind(cfg.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab-backend {}: bind tcp {}: {e}", cfg.name, cfg.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = cfg.udp {
        match UdpSocket::bind(addr) {
            Ok(sock) => {
                let cfg = cfg.clone();
                thread::spawn(move || serve_udp(sock, &cfg.name));
            }
            Err(e) => {
                eprintln!("lab-backend {}: bind udp {addr}: {e}", cfg.name);
                return ExitCode::FAILURE;
            }
        }
    }
    if cfg.exit_with_parent {
        thread::spawn(exit_when_orphaned);
    }

    // The spawner waits for this line, so it must only appear once both
    // sockets are bound.
    let mut out = io::stdout().lock();
    if writeln!(out, "ready {}", cfg.name)
        .and_then(|_| out.flush())
        .is_err()
    {
        eprintln!("lab-backend {}: could not report readiness", cfg.name);
    }
    drop(out);

    // A server runs until it is killed (or orphaned, see above); each pass
    // handles one accepted connection.
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let conn_cfg = cfg.clone();
                let spawned = thread::Builder::new()
                    .stack_size(CONN_STACK_BYTES)
                    .spawn(move || serve_connection(stream, &conn_cfg));
                if let Err(e) = spawned {
                    eprintln!("lab-backend {}: cannot spawn thread: {e}", cfg.name);
                }
            }
            Err(e) => {
                // Typically EMFILE under heavy load; back off instead of spinning.
                eprintln!("lab-backend {}: accept: {e}", cfg.name);
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    ExitCode::SUCCESS
}

/// The status to answer with right now: the status file wins if it holds a
/// valid code, so tests can flip a backend to 503 while it is serving.
fn current_status(cfg: &Config) -> u16 {
    cfg.status_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|code| (100..=599).contains(code))
        .unwrap_or(200)
}

fn serve_connection(stream: TcpStream, cfg: &Config) {
    if let Err(e) = handle_connection(&stream, cfg) {
        // Resets and timeouts are routine when clients or the balancer drop
        // connections; only report what looks like a real problem.
        if !matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::UnexpectedEof
        ) {
            eprintln!("lab-backend {}: connection: {e}", cfg.name);
        }
    }
}

fn handle_connection(stream: &TcpStream, cfg: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = Reader::new(stream);
    let mut writer = stream;

    // One request per pass. The loop ends when the peer closes, asks to
    // close, errs, or idles past IDLE_TIMEOUT.
    loop {
        let head = match reader.read_head() {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                respond_error(&mut writer, cfg, 400)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let line = match http::parse_request_line(&head.start_line) {
            Ok(l) => l,
            Err(_) => {
                respond_error(&mut writer, cfg, 400)?;
                return Ok(());
            }
        };
        if head.header("transfer-encoding").is_some() {
            // Chunked request bodies are out of scope; refuse rather than
            // misread the body as the next request.
            respond_error(&mut writer, cfg, 501)?;
            return Ok(());
        }
        match head.content_length() {
            Ok(Some(len)) => reader.discard_body(len)?,
            Ok(None) => {}
            Err(_) => {
                respond_error(&mut writer, cfg, 400)?;
                return Ok(());
            }
        }

        let http10 = line.version == "HTTP/1.0";
        let keep_alive = if http10 {
            head.connection_has("keep-alive")
        } else {
            !head.connection_has("close")
        };
        if let Some(size) = line.target.strip_prefix(BYTES_PATH) {
            let size: usize = size.parse().unwrap_or(0).min(64 << 20);
            let head = format!(
                "{} 200 OK\r\nContent-Length: {size}\r\nX-Backend: {}\r\n\r\n",
                version_of(http10),
                cfg.name
            );
            writer.write_all(head.as_bytes())?;
            writer.write_all(&vec![b'x'; size])?;
            if !keep_alive {
                let _ = stream.shutdown(Shutdown::Write);
                return Ok(());
            }
            continue;
        }
        if let Some(query) = line.target.strip_prefix(ECHO_PATH) {
            serve_echo(&mut writer, cfg, version_of(http10), query)?;
            if !keep_alive {
                let _ = stream.shutdown(Shutdown::Write);
                return Ok(());
            }
            continue;
        }
        if line.target == CAPTURE_PATH {
            serve_capture(&mut writer, cfg, version_of(http10))?;
            if !keep_alive {
                let _ = stream.shutdown(Shutdown::Write);
                return Ok(());
            }
            continue;
        }
        let status = current_status(cfg);
        let connection = match (http10, keep_alive) {
            (true, true) => "Connection: keep-alive\r\n",
            (false, false) => "Connection: close\r\n",
            _ => "",
        };
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let body = format!("{}\n", cfg.name);
        let mut response = format!(
            "{version} {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {}\r\n{connection}\r\n",
            http::reason_phrase(status),
            body.len(),
            cfg.name,
        );
        if line.method != "HEAD" {
            response.push_str(&body);
        }
        // One write per response: with TCP_NODELAY this is one segment.
        writer.write_all(response.as_bytes())?;

        if !keep_alive {
            let _ = stream.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// `/bytes/N`: a 200 with an N-byte body (large responses: full-size segments).
const BYTES_PATH: &str = "/bytes/";

/// A download of a captured HTTP exchange: a healthy 200 whose body segments begin like
/// error status lines. Each part is its own write, a pause apart, so each leaves as its own
/// segment (TCP_NODELAY) and a body segment starts with `HTTP/1.1 503`.
const CAPTURE_PATH: &str = "/capture";

/// `/echo?q=TEXT`: a 200 whose body is TEXT (percent-decoded), written as Python's
/// `http.server` writes: the head, then (a pause later) the body, so the body starts a write of
/// its own with bytes the client chose.
const ECHO_PATH: &str = "/echo?q=";

fn serve_echo(writer: &mut &TcpStream, cfg: &Config, version: &str, query: &str) -> io::Result<()> {
    let body = percent_decode(query);
    let head = format!(
        "{version} 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {}\r\n\r\n",
        body.len(),
        cfg.name
    );
    writer.write_all(head.as_bytes())?;
    thread::sleep(Duration::from_millis(50));
    writer.write_all(&body)
}

/// `%XX` escapes decoded; anything malformed is kept as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn version_of(http10: bool) -> &'static str {
    if http10 { "HTTP/1.0" } else { "HTTP/1.1" }
}

fn serve_capture(writer: &mut &TcpStream, cfg: &Config, version: &str) -> io::Result<()> {
    let parts = [
        format!("{}\n", cfg.name),
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_string(),
        "HTTP/1.0 502 Bad Gateway\r\n\r\n".to_string(),
        "HTTP/1.1 504 Gateway Timeout\r\n\r\n".to_string(),
    ];
    let length: usize = parts.iter().map(String::len).sum();
    let head = format!(
        "{version} 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\nX-Backend: {}\r\n\r\n",
        cfg.name
    );
    writer.write_all(head.as_bytes())?;
    for part in parts {
        thread::sleep(Duration::from_millis(15));
        writer.write_all(part.as_bytes())?;
    }
    Ok(())
}

/// Answers a malformed request and closes, since the byte stream can no
/// longer be trusted to be in sync.
fn respond_error(writer: &mut &TcpStream, cfg: &Config, status: u16) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nX-Backend: {}\r\nConnection: close\r\n\r\n",
        http::reason_phrase(status),
        cfg.name,
    );
    writer.write_all(response.as_bytes())?;
    let _ = writer.shutdown(Shutdown::Write);
    Ok(())
}

fn serve_udp(sock: UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65536];
    let prefix = format!("{name}:");
    // Runs for the life of the process; one datagram per pass.
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("lab-backend {name}: udp recv: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let mut reply = Vec::with_capacity(prefix.len() + n);
        reply.extend_from_slice(prefix.as_bytes());
        reply.extend_from_slice(&buf[..n]);
        if let Err(e) = sock.send_to(&reply, peer) {
            eprintln!("lab-backend {name}: udp send to {peer}: {e}");
        }
    }
}

/// With `--exit-with-parent`, exit once the spawning process is gone, so a
/// crashed test run does not leave backends running inside namespaces.
fn exit_when_orphaned() {
    let parent = std::os::unix::process::parent_id();
    loop {
        thread::sleep(Duration::from_millis(500));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(0);
        }
    }
}
