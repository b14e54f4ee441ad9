//! Lab traffic generator: reports which backend answered each request.
//!
//! Runs inside the client namespace and prints machine-readable JSON, so
//! tests and demos can assert on the distribution of traffic across
//! backends. Failed requests are reported in the JSON, not by the exit code;
//! only bad arguments make it exit non-zero.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use geosteer_tests::http::{self, Reader};
use serde_json::json;

const USAGE: &str = "usage:
  lab-client http --target IP:PORT --connections N [--requests-per-connection K] [--timeout-ms T] [--concurrency C] [--source-port P]
  lab-client udp --target IP:PORT --count N [--size BYTES] [--timeout-ms T]
  lab-client udp-connected --target IP:PORT [--timeout-ms T]
  lab-client fetch --target IP:PORT --path PATH [--timeout-ms T]
  lab-client watch --target IP:PORT --duration-ms D --interval-ms I [--timeout-ms T]
  lab-client failover-probe --target IP:PORT --duration-ms D [--max-connections N] [--timeout-ms T] [--first-source-port P]
  lab-client adversary --target IP:PORT --attack capture|echo-early-request|synfin-then-syn|syn-on-open|unanswerable-syn [--source-port P] [--requests K] [--repeat-after-ms T]
  lab-client pool --target IP:PORT --connections K --duration-ms D [--interval-ms I] [--timeout-ms T] [--stop-file PATH]";

const DEFAULT_TIMEOUT_MS: u64 = 2000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("http") => parse_flags(
            &args[1..],
            &[
                "--target",
                "--connections",
                "--requests-per-connection",
                "--timeout-ms",
                "--concurrency",
                "--source-port",
            ],
        )
        .and_then(|f| run_http(&f)),
        Some("udp-connected") => parse_flags(&args[1..], &["--target", "--timeout-ms"])
            .and_then(|f| run_udp_connected(&f)),
        Some("fetch") => parse_flags(&args[1..], &["--target", "--path", "--timeout-ms"])
            .and_then(|f| run_fetch(&f)),
        Some("udp") => parse_flags(
            &args[1..],
            &["--target", "--count", "--size", "--timeout-ms"],
        )
        .and_then(|f| run_udp(&f)),
        Some("watch") => parse_flags(
            &args[1..],
            &["--target", "--duration-ms", "--interval-ms", "--timeout-ms"],
        )
        .and_then(|f| run_watch(&f)),
        Some("failover-probe") => parse_flags(
            &args[1..],
            &[
                "--target",
                "--duration-ms",
                "--max-connections",
                "--timeout-ms",
                "--first-source-port",
            ],
        )
        .and_then(|f| run_failover_probe(&f)),
        Some("pool") => parse_flags(
            &args[1..],
            &[
                "--target",
                "--connections",
                "--duration-ms",
                "--interval-ms",
                "--timeout-ms",
                "--stop-file",
            ],
        )
        .and_then(|f| run_pool(&f)),
        Some("adversary") => parse_flags(
            &args[1..],
            &[
                "--target",
                "--attack",
                "--source-port",
                "--requests",
                "--repeat-after-ms",
            ],
        )
        .and_then(|f| run_adversary(&f)),
        Some(other) => Err(format!("unknown subcommand {other:?}")),
        None => Err("missing subcommand".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-client: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Flags(HashMap<String, String>);

fn parse_flags(args: &[String], allowed: &[&str]) -> Result<Flags, String> {
    let mut map = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if !allowed.contains(&flag.as_str()) {
            return Err(format!("unknown argument {flag:?}"));
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        map.insert(flag.clone(), value.clone());
    }
    Ok(Flags(map))
}

impl Flags {
    fn target(&self) -> Result<SocketAddr, String> {
        let v = self.0.get("--target").ok_or("--target is required")?;
        v.parse()
            .map_err(|_| format!("--target: expected IP:PORT, got {v:?}"))
    }

    /// A positive integer flag, or `default` when absent (`None` = required).
    fn num(&self, flag: &str, default: Option<u64>) -> Result<u64, String> {
        match (self.0.get(flag), default) {
            (Some(v), _) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{flag}: expected a positive integer, got {v:?}")),
            },
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("{flag} is required")),
        }
    }

    /// `--source-port`: connect from this port (a fixed 5-tuple, e.g. to compare with
    /// `geosteer explain`). Only for a single connection: a second one from the same port
    /// would meet the first one's TIME_WAIT.
    fn source_port(&self, connections: u64) -> Result<Option<u16>, String> {
        let Some(v) = self.0.get("--source-port") else {
            return Ok(None);
        };
        let port = match v.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(format!(
                    "--source-port: expected a port 1..65535, got {v:?}"
                ));
            }
        };
        if connections != 1 {
            return Err(format!(
                "--source-port needs --connections 1, got {connections}"
            ));
        }
        Ok(Some(port))
    }

    fn timeout(&self) -> Result<Duration, String> {
        Ok(Duration::from_millis(
            self.num("--timeout-ms", Some(DEFAULT_TIMEOUT_MS))?,
        ))
    }
}

fn print_json(value: &serde_json::Value) {
    let mut out = io::stdout().lock();
    // Nothing useful can be done if stdout is gone.
    let _ = writeln!(out, "{value}").and_then(|_| out.flush());
}

// ---------------------------------------------------------------- http ---

/// Tallies for a set of connections; merged across worker threads.
#[derive(Default)]
struct HttpTally {
    ok: u64,
    errors: u64,
    status: BTreeMap<u16, u64>,
    backends: BTreeMap<String, u64>,
    consistent: bool,
    connect_failures: u64,
    first_error: Option<String>,
}

impl HttpTally {
    fn new() -> Self {
        HttpTally {
            consistent: true,
            ..Default::default()
        }
    }

    fn error(&mut self, count: u64, msg: String) {
        self.errors += count;
        self.first_error.get_or_insert(msg);
    }

    fn merge(&mut self, other: HttpTally) {
        self.ok += other.ok;
        self.errors += other.errors;
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in other.backends {
            *self.backends.entry(k).or_default() += v;
        }
        self.consistent &= other.consistent;
        self.connect_failures += other.connect_failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One parsed response.
struct Response {
    status: u16,
    backend: Option<String>,
    close: bool,
}

fn run_http(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let connections = flags.num("--connections", None)?;
    let per_conn = flags.num("--requests-per-connection", Some(1))?;
    let concurrency = flags.num("--concurrency", Some(1))?.min(connections);
    let timeout = flags.timeout()?;
    let source_port = flags.source_port(connections)?;
    let connections = u32::try_from(connections).map_err(|_| "--connections is too large")?;

    let started = Instant::now();
    let next = AtomicU32::new(0);
    let mut total = HttpTally::new();
    thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(|| {
                    let mut tally = HttpTally::new();
                    // Each pass claims one connection; at most `connections` in all.
                    while next.fetch_add(1, Ordering::Relaxed) < connections {
                        run_connection(target, source_port, per_conn, timeout, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(t) => total.merge(t),
                Err(_) => total.error(0, "worker thread panicked".into()),
            }
        }
    });

    let status: BTreeMap<String, u64> = total
        .status
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    print_json(&json!({
        "ok": total.ok,
        "errors": total.errors,
        "status": status,
        "backends": total.backends,
        "per_connection_backends_consistent": total.consistent,
        "connect_failures": total.connect_failures,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "first_error": total.first_error,
    }));
    Ok(())
}

/// Opens one connection and sends `requests` keep-alive requests on it.
/// Once a connection breaks, its remaining requests count as errors, so
/// `ok + errors` always equals connections × requests.
fn run_connection(
    target: SocketAddr,
    source_port: Option<u16>,
    requests: u64,
    timeout: Duration,
    tally: &mut HttpTally,
) {
    let connected = match source_port {
        Some(port) => connect_from(port, target, timeout),
        None => connect(target, timeout),
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            tally.connect_failures += 1;
            tally.error(requests, format!("connect {target}: {e}"));
            return;
        }
    };
    let mut reader = Reader::new(&stream);
    let mut seen = BTreeSet::new();
    for i in 0..requests {
        let last = i + 1 == requests;
        match request(&stream, &mut reader, target, "/", last) {
            Ok(resp) => {
                *tally.status.entry(resp.status).or_default() += 1;
                if (200..300).contains(&resp.status) {
                    tally.ok += 1;
                } else {
                    tally.error(1, format!("HTTP status {}", resp.status));
                }
                if let Some(b) = resp.backend {
                    *tally.backends.entry(b.clone()).or_default() += 1;
                    seen.insert(b);
                }
                if resp.close && !last {
                    tally.error(
                        requests - i - 1,
                        "server closed a keep-alive connection early".into(),
                    );
                    break;
                }
            }
            Err(e) => {
                tally.error(requests - i, format!("request {i} to {target}: {e}"));
                break;
            }
        }
    }
    if seen.len() > 1 {
        tally.consistent = false;
    }
}

fn connect(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    configure(stream, timeout)
}

/// Like [`connect`], from a chosen source port.
fn connect_from(port: u16, target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // A port left in TIME_WAIT by an earlier run may be reused for a new connection.
    socket.set_reuse_address(true)?;
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    };
    socket
        .bind(&local.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind port {port}: {e}")))?;
    socket.connect_timeout(&target.into(), timeout)?;
    configure(socket.into(), timeout)
}

fn configure(stream: TcpStream, timeout: Duration) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends `GET /` and reads the full response. On the last request the
/// client announces `Connection: close` so the server closes its side too.
fn request(
    stream: &TcpStream,
    reader: &mut Reader<&TcpStream>,
    target: SocketAddr,
    path: &str,
    last: bool,
) -> io::Result<Response> {
    let connection = if last { "close" } else { "keep-alive" };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: lab-client\r\nConnection: {connection}\r\n\r\n"
    );
    let mut w = stream;
    w.write_all(req.as_bytes())?;

    let head = reader.read_head()?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        )
    })?;
    let status = http::parse_status_line(&head.start_line)?;
    let len = head.content_length()?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "response has no Content-Length")
    })?;
    reader.discard_body(len)?;
    Ok(Response {
        status,
        backend: head.header("x-backend").map(str::to_string),
        close: head.connection_has("close"),
    })
}

/// `/echo` of a status line, with the next request sent once the echo's head has arrived and
/// before its body: the two responses, reported as the second's (the first is a 200).
fn early_request(
    stream: &TcpStream,
    reader: &mut Reader<&TcpStream>,
    target: SocketAddr,
) -> io::Result<Response> {
    const REFLECTED: &str =
        "HTTP/1.1%20503%20Service%20Unavailable%0D%0AContent-Length:%200%0D%0A%0D%0A";
    let mut w = stream;
    w.write_all(format!("GET /echo?q={REFLECTED} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
    let head = reader.read_head()?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        )
    })?;
    w.write_all(format!("GET / HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
    let len = head.content_length()?.unwrap_or(0);
    let body = reader.read_body(len)?;
    if http::parse_status_line(&head.start_line)? != 200 || !body.starts_with(b"HTTP/1.1 503") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echo did not reflect the status line",
        ));
    }
    let head = reader.read_head()?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        )
    })?;
    reader.discard_body(head.content_length()?.unwrap_or(0))?;
    Ok(Response {
        status: http::parse_status_line(&head.start_line)?,
        backend: head.header("x-backend").map(str::to_string),
        close: head.connection_has("close"),
    })
}

// ----------------------------------------------------------------- udp ---

fn run_udp(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let count = flags.num("--count", None)?;
    let size = flags.num("--size", Some(0))? as usize;
    let timeout = flags.timeout()?;

    let mut ok = 0u64;
    let mut errors = 0u64;
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error: Option<String> = None;
    // Every socket stays open until the end, so no two datagrams share a source port (the
    // kernel picks ephemeral UDP ports at random and would reuse a closed one's port now and
    // then, which the balancer rightly sees as the same flow).
    let mut open = Vec::new();
    for i in 0..count {
        match udp_ping(target, i, size, timeout, &mut open) {
            Ok(name) => {
                ok += 1;
                *backends.entry(name).or_default() += 1;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("datagram {i} to {target}: {e}"));
            }
        }
    }
    print_json(&json!({
        "ok": ok,
        "errors": errors,
        "backends": backends,
        "first_error": first_error,
    }));
    Ok(())
}

/// Sends `ping-<i>` from a fresh socket (kept in `open`, so a fresh source port) and returns
/// the backend name from the `NAME:ping-<i>` reply.
fn udp_ping(
    target: SocketAddr,
    i: u64,
    size: usize,
    timeout: Duration,
    open: &mut Vec<UdpSocket>,
) -> io::Result<String> {
    let sock = UdpSocket::bind(any_of_family(target))?;
    sock.set_read_timeout(Some(timeout))?;
    // `--size`: padded (a large datagram leaves in fragments, and so does its echo).
    let mut payload = format!("ping-{i}");
    if payload.len() < size {
        payload.push(':');
        payload.extend(std::iter::repeat_n('x', size - payload.len()));
    }
    sock.send_to(payload.as_bytes(), target)?;

    let mut buf = vec![0u8; 65536];
    let received = sock.recv_from(&mut buf);
    open.push(sock);
    let (n, from) = received?;
    // A reply from any other address would be dropped by a real (connected)
    // UDP client, so it counts as a failure of the balancer.
    if from != target {
        return Err(io::Error::other(format!(
            "reply came from {from}, not {target}"
        )));
    }
    let reply = String::from_utf8_lossy(&buf[..n]);
    reply
        .strip_suffix(&format!(":{payload}"))
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("unexpected reply {reply:?}")))
}

/// The unspecified address of `target`'s family, any port: what a client socket binds.
fn any_of_family(target: SocketAddr) -> SocketAddr {
    if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

// ------------------------------------------------------- udp-connected ---

/// One datagram from a connected UDP socket: what the application sees — a reply, the
/// kernel's ECONNREFUSED (an ICMP port unreachable that matched the socket), or nothing.
fn run_udp_connected(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let timeout = flags.timeout()?;
    let outcome = (|| -> io::Result<String> {
        let sock = UdpSocket::bind(any_of_family(target))?;
        sock.connect(target)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send(b"anyone there?")?;
        let mut buf = [0u8; 2048];
        Ok(match sock.recv(&mut buf) {
            Ok(_) => "reply".into(),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => "refused".into(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                "timeout".into()
            }
            Err(e) => format!("error: {e}"),
        })
    })()
    .map_err(|e| e.to_string())?;
    print_json(&json!({ "outcome": outcome }));
    Ok(())
}

// ---------------------------------------------------------------- fetch ---

/// One GET of `--path` on a fresh connection: status, body bytes, time.
fn run_fetch(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let path = flags.0.get("--path").cloned().ok_or("--path is required")?;
    let timeout = flags.timeout()?;
    let started = Instant::now();
    let result = (|| -> io::Result<(u16, u64)> {
        let stream = connect(target, timeout)?;
        let mut w = &stream;
        w.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut reader = Reader::new(&stream);
        let head = reader.read_head()?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response")
        })?;
        let status = http::parse_status_line(&head.start_line)?;
        let len = head.content_length()?.unwrap_or(0);
        reader.discard_body(len)?;
        Ok((status, len as u64))
    })();
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok((status, bytes)) => print_json(&json!({ "status": status, "bytes": bytes, "ms": ms })),
        Err(e) => print_json(&json!({ "error": e.to_string(), "ms": ms })),
    }
    Ok(())
}

// --------------------------------------------------------------- watch ---

fn run_watch(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let duration = flags.num("--duration-ms", None)?;
    let interval = flags.num("--interval-ms", None)?;
    let timeout = flags.timeout()?;

    let started = Instant::now();
    // Ticks are on a fixed grid; a slow request skips the ticks it overran
    // rather than bursting to catch up. The cap is a second safety bound.
    let max_ticks = duration / interval + 1;
    for _ in 0..max_ticks {
        let t_ms = started.elapsed().as_millis() as u64;
        if t_ms >= duration {
            break;
        }
        let line = match watch_request(target, timeout) {
            Ok(resp) => json!({
                "t_ms": t_ms,
                "backend": resp.backend,
                "status": resp.status,
                "error": null,
            }),
            Err(e) => json!({
                "t_ms": t_ms,
                "backend": null,
                "status": null,
                "error": e.to_string(),
            }),
        };
        print_json(&line);

        let now = started.elapsed().as_millis() as u64;
        let next_tick = (now / interval + 1) * interval;
        if next_tick >= duration {
            break;
        }
        thread::sleep(Duration::from_millis(next_tick - now));
    }
    Ok(())
}

fn watch_request(target: SocketAddr, timeout: Duration) -> io::Result<Response> {
    let stream = connect(target, timeout)?;
    let mut reader = Reader::new(&stream);
    request(&stream, &mut reader, target, "/", true)
}

// ------------------------------------------------------- failover-probe ---

/// Safety bound on the connections of one `failover-probe` run, whatever its duration.
const DEFAULT_MAX_PROBE_CONNECTIONS: u64 = 200_000;

/// Opens new connections back to back, one request each, for `--duration-ms`, and prints one
/// JSON line per connection: when it was opened (`t_us`) and when its answer or error arrived
/// (`done_us`), both in µs since the start, with the source port, backend, status and error.
/// A benchmark switches backends to failing while this runs and reads from the log how
/// quickly new connections stopped reaching them.
///
/// By default the kernel picks each source port, as for any client, so a port comes back
/// once it is free again. With `--first-source-port P`, connection i uses port P + i instead,
/// so no two connections of a run share a 5-tuple (the run ends when the ports do).
fn run_failover_probe(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let duration = Duration::from_millis(flags.num("--duration-ms", None)?);
    let mut max_connections =
        flags.num("--max-connections", Some(DEFAULT_MAX_PROBE_CONNECTIONS))?;
    let timeout = flags.timeout()?;
    let first_port = match flags.0.get("--first-source-port") {
        None => None,
        Some(_) => {
            let port = flags.num("--first-source-port", None)?;
            if !(1024..=65535).contains(&port) {
                return Err(format!(
                    "--first-source-port: expected 1024..65535, got {port}"
                ));
            }
            max_connections = max_connections.min(65536 - port);
            Some(port as u16)
        }
    };

    // Lines go through a buffer: a write per connection would slow the loop being measured.
    let mut out = io::BufWriter::new(io::stdout().lock());
    let started = Instant::now();
    let micros = |at: Instant| at.duration_since(started).as_micros() as u64;
    for i in 0..max_connections {
        let opened = Instant::now();
        if opened.duration_since(started) >= duration {
            break;
        }
        let port = first_port.map(|p| p + i as u16);
        let (port, result) = probe_connection(target, port, timeout);
        let done = Instant::now();
        let line = match result {
            Ok(resp) => json!({
                "t_us": micros(opened),
                "done_us": micros(done),
                "port": port,
                "backend": resp.backend,
                "status": resp.status,
                "error": null,
            }),
            Err(e) => json!({
                "t_us": micros(opened),
                "done_us": micros(done),
                "port": port,
                "backend": null,
                "status": null,
                "error": e.to_string(),
            }),
        };
        writeln!(out, "{line}").map_err(|e| format!("writing stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("writing stdout: {e}"))
}

/// One connection with one request; returns the source port it used (if it got one).
fn probe_connection(
    target: SocketAddr,
    port: Option<u16>,
    timeout: Duration,
) -> (Option<u16>, io::Result<Response>) {
    let connected = match port {
        Some(p) => connect_from(p, target, timeout),
        None => connect(target, timeout),
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => return (port, Err(e)),
    };
    let port = stream.local_addr().ok().map(|a| a.port());
    let mut reader = Reader::new(&stream);
    (port, request(&stream, &mut reader, target, "/", true))
}

// ----------------------------------------------------------- adversary ---

/// Weird-but-legal and hostile clients, each reporting what it saw as JSON: the status and
/// backend of every request it made.
fn run_adversary(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let attack = flags.0.get("--attack").ok_or("--attack is required")?;
    let timeout = Duration::from_secs(5);
    let port = || -> Result<u16, String> {
        let v = flags
            .0
            .get("--source-port")
            .ok_or("--source-port is required")?;
        v.parse()
            .map_err(|_| format!("--source-port: expected a port, got {v:?}"))
    };
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut record = |result: io::Result<Response>| {
        seen.push(match result {
            Ok(r) => json!({"status": r.status, "backend": r.backend}),
            Err(e) => json!({"error": e.to_string()}),
        });
    };
    match attack.as_str() {
        // Keep-alive downloads whose body segments begin like error status lines.
        "capture" => {
            let requests = flags.num("--requests", Some(5))?;
            let stream = connect(target, timeout).map_err(|e| format!("connect: {e}"))?;
            let mut reader = Reader::new(&stream);
            for i in 0..requests {
                record(request(
                    &stream,
                    &mut reader,
                    target,
                    "/capture",
                    i + 1 == requests,
                ));
            }
        }
        // A server that writes a response's head and body apart and echoes the client: the
        // client sends its next request as soon as the head is in, before the body (which it
        // chose to read like a 503) — a request start at a write boundary inside a body.
        "echo-early-request" => {
            let requests = flags.num("--requests", Some(5))?;
            let stream = connect(target, timeout).map_err(|e| format!("connect: {e}"))?;
            let mut reader = Reader::new(&stream);
            for _ in 0..requests {
                record(early_request(&stream, &mut reader, target));
            }
        }
        // A SYN|FIN (no connection attempt: Linux drops it), then a real SYN from the same
        // port 1.2 s later.
        "synfin-then-syn" => {
            let port = port()?;
            raw_tcp(target, port, TCP_SYN | TCP_FIN).map_err(|e| format!("raw SYN|FIN: {e}"))?;
            thread::sleep(Duration::from_millis(1200));
            let stream =
                connect_from(port, target, timeout).map_err(|e| format!("connect: {e}"))?;
            let mut reader = Reader::new(&stream);
            record(request(&stream, &mut reader, target, "/", true));
        }
        // A SYN injected on the tuple of an open keep-alive connection, which then goes on.
        "syn-on-open" => {
            let port = port()?;
            let stream =
                connect_from(port, target, timeout).map_err(|e| format!("connect: {e}"))?;
            let mut reader = Reader::new(&stream);
            record(request(&stream, &mut reader, target, "/", false));
            raw_tcp(target, port, TCP_SYN).map_err(|e| format!("raw SYN: {e}"))?;
            thread::sleep(Duration::from_millis(300));
            record(request(&stream, &mut reader, target, "/", true));
        }
        // Forged connect timeouts: SYNs with a bad checksum (the backend's stack drops them,
        // so nothing answers) from `--requests` ports starting at `--source-port`, each
        // repeated with the same ISN `--repeat-after-ms` later, past the connect timeout.
        "unanswerable-syn" => {
            let first = port()?;
            let count = u16::try_from(flags.num("--requests", Some(8))?)
                .ok()
                .filter(|&n| first.checked_add(n).is_some())
                .ok_or("--requests: the ports must fit below 65536")?;
            let wait = flags.num("--repeat-after-ms", Some(1500))?;
            for round in 0..2 {
                if round == 1 {
                    thread::sleep(Duration::from_millis(wait));
                }
                for port in first..first + count {
                    raw_tcp_segment(target, port, TCP_SYN, Checksum::Corrupt)
                        .map_err(|e| format!("raw SYN: {e}"))?;
                }
            }
        }
        other => return Err(format!("--attack: unknown attack {other:?}")),
    }
    print_json(&json!({ "responses": seen }));
    Ok(())
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;

/// Whether a hand-made segment carries its real checksum.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checksum {
    Valid,
    /// Off by one: the receiving stack drops the segment as corrupt.
    Corrupt,
}

/// Sends one hand-made TCP segment (no payload) from this host's address and `source_port`
/// to `target`, through a raw socket: the kernel adds the IP header.
fn raw_tcp(target: SocketAddr, source_port: u16, flags: u8) -> io::Result<()> {
    raw_tcp_segment(target, source_port, flags, Checksum::Valid)
}

fn raw_tcp_segment(
    target: SocketAddr,
    source_port: u16,
    flags: u8,
    checksum_kind: Checksum,
) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let SocketAddr::V4(target4) = target else {
        return Err(io::Error::other("raw segments are IPv4 only"));
    };
    // The source address the kernel will use toward the target.
    let probe = UdpSocket::bind("0.0.0.0:0")?;
    probe.connect(target)?;
    let SocketAddr::V4(local) = probe.local_addr()? else {
        return Err(io::Error::other("no IPv4 source address"));
    };
    let mut segment = Vec::with_capacity(20);
    segment.extend(source_port.to_be_bytes());
    segment.extend(target4.port().to_be_bytes());
    segment.extend(0x1234_5678u32.to_be_bytes()); // sequence number
    segment.extend(0u32.to_be_bytes()); // acknowledgement
    segment.push(5 << 4); // data offset: 5 words
    segment.push(flags);
    segment.extend(64240u16.to_be_bytes()); // window
    segment.extend([0, 0, 0, 0]); // checksum (below), urgent pointer
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend(local.ip().octets());
    pseudo.extend(target4.ip().octets());
    pseudo.extend([0, 6]);
    pseudo.extend((segment.len() as u16).to_be_bytes());
    pseudo.extend(&segment);
    let mut checksum = internet_checksum(&pseudo);
    if checksum_kind == Checksum::Corrupt {
        checksum = checksum.wrapping_add(1);
    }
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    socket.send_to(&segment, &target.into())?;
    Ok(())
}

/// RFC 1071.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------- pool ---

/// A service client as Go's and Java's HTTP clients are: a pool of keep-alive connections used
/// in turn. A request that fails on a connection (reset, closed) is an error and the connection
/// is replaced; a response of any status keeps it. Reports every request's outcome with its
/// time, so a test can see what clients saw through a failover and where they ended up.
fn run_pool(flags: &Flags) -> Result<(), String> {
    let target = flags.target()?;
    let size = flags.num("--connections", None)? as usize;
    let duration = Duration::from_millis(flags.num("--duration-ms", None)?);
    let interval = Duration::from_millis(flags.num("--interval-ms", Some(10))?);
    let timeout = flags.timeout()?;
    // Ends early once this file exists (a test ends the run when its scenario is over).
    let stop_file = flags.0.get("--stop-file").map(std::path::PathBuf::from);
    let mut pool: Vec<Option<TcpStream>> = (0..size).map(|_| None).collect();
    let mut timeline = Vec::new();
    let started = Instant::now();
    let mut turn = 0;
    while started.elapsed() < duration && !stop_file.as_ref().is_some_and(|f| f.exists()) {
        let slot = &mut pool[turn % size];
        turn += 1;
        if slot.is_none() {
            match connect(target, timeout) {
                Ok(s) => *slot = Some(s),
                Err(e) => {
                    timeline.push(json!({"ms": started.elapsed().as_millis() as u64, "error": format!("connect: {e}")}));
                    thread::sleep(interval);
                    continue;
                }
            }
        }
        let stream = slot.as_ref().expect("connected above");
        let mut reader = Reader::new(stream);
        let at = started.elapsed().as_millis() as u64;
        match request(stream, &mut reader, target, "/", false) {
            Ok(r) => {
                timeline.push(json!({"ms": at, "status": r.status, "backend": r.backend}));
                if r.close {
                    *slot = None;
                }
            }
            Err(e) => {
                timeline.push(json!({"ms": at, "error": e.to_string()}));
                *slot = None;
            }
        }
        thread::sleep(interval);
    }
    print_json(&json!({ "timeline": timeline }));
    Ok(())
}
