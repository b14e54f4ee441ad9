//! Just enough HTTP/1.x framing for `lab-backend` and `lab-client`.
//!
//! Both sides only need message heads (start line + headers) and
//! Content-Length bodies, so this is a small buffered reader rather than a
//! full HTTP implementation. Chunked bodies are deliberately unsupported.

use std::io::{self, Read};

/// Largest head either side accepts; anything bigger is treated as garbage
/// instead of being buffered without limit.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The start line and headers of a request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True if the `Connection` header lists `token` (e.g. "close").
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Parsed `Content-Length`, `None` if absent.
    pub fn content_length(&self) -> io::Result<Option<usize>> {
        match self.header("content-length") {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| invalid(format!("bad Content-Length {v:?}"))),
        }
    }
}

/// A parsed request line: `METHOD TARGET VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    pub target: String,
    pub version: String,
}

pub fn parse_request_line(line: &str) -> io::Result<RequestLine> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && v.starts_with("HTTP/1.") => {
            Ok(RequestLine {
                method: m.to_string(),
                target: t.to_string(),
                version: v.to_string(),
            })
        }
        _ => Err(invalid(format!("bad request line {line:?}"))),
    }
}

/// Status code from a status line such as `HTTP/1.1 503 Service Unavailable`.
pub fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(invalid(format!("bad status line {line:?}")));
    }
    code.parse::<u16>()
        .map_err(|_| invalid(format!("bad status line {line:?}")))
}

/// Parses a head (without the terminating blank line).
pub fn parse_head(bytes: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_string();
    if start_line.is_empty() {
        return Err(invalid("empty start line".into()));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Head {
        start_line,
        headers,
    })
}

/// Reads heads and bodies from a stream, keeping bytes that arrived early
/// (pipelined requests, or a body sent together with its head).
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads the next head. `Ok(None)` means the peer closed cleanly between
    /// messages, which is how keep-alive connections normally end.
    pub fn read_head(&mut self) -> io::Result<Option<Head>> {
        let mut chunk = [0u8; 8192];
        // Each pass either finds the head or grows the buffer, and the buffer
        // is capped, so this ends; blocking reads are bounded by socket timeouts.
        loop {
            if let Some(end) = find_head_end(&self.buf) {
                let head = parse_head(&self.buf[..end - 4]);
                self.buf.drain(..end);
                return head.map(Some);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(invalid("head too large".into()));
            }
            let n = self.inner.read(&mut chunk)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a head",
                    ))
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads exactly `len` body bytes.
    pub fn read_body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let from_buf = len.min(self.buf.len());
        let mut body: Vec<u8> = self.buf.drain(..from_buf).collect();
        if body.len() < len {
            let start = body.len();
            body.resize(len, 0);
            self.inner.read_exact(&mut body[start..])?;
        }
        Ok(body)
    }

    /// Reads and drops `len` body bytes without holding them all in memory.
    pub fn discard_body(&mut self, len: usize) -> io::Result<()> {
        let from_buf = len.min(self.buf.len());
        self.buf.drain(..from_buf);
        let mut rest = (len - from_buf) as u64;
        let copied = io::copy(&mut (&mut self.inner).take(rest), &mut io::sink())?;
        rest -= copied;
        if rest > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a body",
            ));
        }
        Ok(())
    }
}

/// Index just past the `\r\n\r\n` that ends a head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reason phrase for the status codes tests are likely to use.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pipelined_requests_and_bodies() {
        let wire = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n";
        let mut r = Reader::new(&wire[..]);

        let h = r.read_head().unwrap().unwrap();
        assert_eq!(h.start_line, "POST /a HTTP/1.1");
        assert_eq!(h.header("HOST"), Some("x"));
        assert_eq!(h.content_length().unwrap(), Some(5));
        r.discard_body(5).unwrap();

        let h = r.read_head().unwrap().unwrap();
        let line = parse_request_line(&h.start_line).unwrap();
        assert_eq!(line.method, "GET");
        assert_eq!(line.version, "HTTP/1.1");
        assert!(h.connection_has("close"));
        assert!(h.connection_has("keep-alive"));

        assert!(r.read_head().unwrap().is_none());
    }

    #[test]
    fn reads_body_split_between_buffer_and_stream() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Backend: b1\r\n\r\nb1\nxyz";
        let mut r = Reader::new(&wire[..]);
        let h = r.read_head().unwrap().unwrap();
        assert_eq!(parse_status_line(&h.start_line).unwrap(), 200);
        assert_eq!(r.read_body(6).unwrap(), b"b1\nxyz");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_status_line("SSH-2.0-OpenSSH").is_err());
        assert!(parse_request_line("GET /").is_err());
        let mut r = Reader::new(&b"GET / HTTP/1.1\r\nno-colon\r\n\r\n"[..]);
        assert!(r.read_head().is_err());
        let mut r = Reader::new(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert_eq!(
            r.read_head().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut r = Reader::new(&b"HTTP/1.1 200 OK\r\n\r\nab"[..]);
        r.read_head().unwrap();
        assert!(r.read_body(5).is_err());
    }
}
