//! HTTP/1.x recognition for the kernel's health signals: a status line where a response starts
//! (the reply path reads only the first 12 bytes, "HTTP/1.x NNN"), and a request line where a
//! request starts (Istio's protocol sniffing: the client's first bytes are an HTTP method).
//! The kernel calls these only at a known message start; they never search a payload.

/// Bytes the kernel copies from the payload start.
pub const STATUS_PREFIX_LEN: usize = 12;

/// The status code if `p` starts with `HTTP/1.<digit> <3 digits>`.
#[inline(always)]
pub fn parse_status(p: &[u8; STATUS_PREFIX_LEN]) -> Option<u16> {
    if p[0] != b'H' || p[1] != b'T' || p[2] != b'T' || p[3] != b'P' || p[4] != b'/' {
        return None;
    }
    if p[5] != b'1' || p[6] != b'.' || !p[7].is_ascii_digit() || p[8] != b' ' {
        return None;
    }
    let (a, b, c) = (p[9], p[10], p[11]);
    if !(b'1'..=b'5').contains(&a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return None;
    }
    Some((a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16)
}

/// Bytes of a message head (response or request) the kernel copies to learn where the message
/// ends: a head longer than this (or not whole in the segment that starts it) leaves the end
/// unknown. Request heads with bearer tokens and trace headers pass 1 KiB.
pub const HEAD_MAX: usize = 4096;

/// Longest message followed to its end. Sequence numbers wrap at 4 GiB; a longer body (a
/// large download) leaves the next response's start unknown.
pub const MAX_RESPONSE_LEN: u32 = 1 << 30;

const CONTENT_LENGTH: &[u8; 14] = b"content-length";
const TRANSFER_ENCODING: &[u8; 17] = b"transfer-encoding";

/// What the header field being read is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Field {
    Name,
    ContentLength,
    TransferEncoding,
    Other,
}

/// Where a Content-Length value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Digits {
    Before,
    In,
    After,
}

/// A message head (response or request) read until its blank line ([`HeadScan::advance`], a step at a time), for
/// [`HeadScan::length`]. The kernel steps it from a `bpf_loop` callback (one verified step
/// instead of a loop the verifier would walk byte by byte); [`response_length`] from a slice.
/// No padding (`repr(C)`, sized to 32 bytes): the verifier refuses a read of bytes never
/// written.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct HeadScan {
    /// The first line's last eight bytes (little-endian: the last byte highest), once it ended.
    first_line_tail: u64,
    /// The next byte to read.
    pos: u32,
    /// Bytes of the head once its blank line was read (0: not yet).
    head_len: u32,
    column: u32,
    value: u32,
    content_length: u32,
    has_content_length: bool,
    /// Refused: a head a lenient parser might read differently from this one.
    refused: bool,
    in_status_line: bool,
    after_cr: bool,
    field: Field,
    is_content_length: bool,
    is_transfer_encoding: bool,
    digits: Digits,
    transfer_encoding: bool,
    _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<HeadScan>() == 40);

impl Default for HeadScan {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadScan {
    pub const fn new() -> Self {
        Self {
            first_line_tail: 0,
            pos: 0,
            head_len: 0,
            column: 0,
            value: 0,
            content_length: 0,
            has_content_length: false,
            refused: false,
            in_status_line: true,
            after_cr: false,
            field: Field::Name,
            is_content_length: true,
            is_transfer_encoding: true,
            digits: Digits::Before,
            transfer_encoding: false,
            _pad: [0; 3],
        }
    }

    /// Reads on in `head[..len]`: the next eight bytes at once where none of them can change
    /// anything (inside the status line or a field value no rule reads: no CR or LF; inside a
    /// field name that can no longer be Content-Length or Transfer-Encoding: no colon, white
    /// space or control byte), else the next byte. False once the head has ended, has been
    /// refused, or `len` bytes are read: later calls change nothing.
    #[inline(always)]
    pub fn advance(&mut self, head: &[u8; HEAD_MAX], len: u32) -> bool {
        let pos = self.pos as usize;
        if pos >= len as usize || pos >= HEAD_MAX || self.head_len != 0 || self.refused {
            return false;
        }
        if pos + 8 <= len as usize && pos <= HEAD_MAX - 8 && !self.after_cr {
            let mut word = [0u8; 8];
            word.copy_from_slice(&head[pos..pos + 8]);
            let word = u64::from_le_bytes(word);
            let skippable = match self.field {
                _ if self.in_status_line => !has_byte(word, b'\r') && !has_byte(word, b'\n'),
                Field::Other | Field::TransferEncoding => {
                    !has_byte(word, b'\r') && !has_byte(word, b'\n')
                }
                Field::Name => {
                    self.column != 0
                        && !self.is_content_length
                        && !self.is_transfer_encoding
                        && !has_byte(word, b':')
                        && !has_byte(word, 0x7f)
                        && !has_byte_below(word, b' ' + 1)
                }
                Field::ContentLength => false,
            };
            if skippable {
                self.pos += 8;
                if self.in_status_line {
                    self.first_line_tail = word;
                } else {
                    self.column += 8;
                }
                return true;
            }
        }
        self.pos += 1;
        self.step(pos as u32, head[pos])
    }

    /// Reads byte `i` of the head (the status line's first byte is 0). False once the head has
    /// ended or been refused: later bytes change nothing.
    #[inline(always)]
    fn step(&mut self, i: u32, b: u8) -> bool {
        if self.head_len != 0 || self.refused {
            return false;
        }
        let more = self.read(i, b);
        if !more && self.head_len == 0 {
            self.refused = true;
        }
        more
    }

    /// Gives up on the head: its length stays unknown.
    #[inline(always)]
    pub fn refuse(&mut self) {
        self.refused = true;
        self.head_len = 0;
    }

    /// One byte; false when the head ends (`head_len` set) or is refused.
    #[inline(always)]
    fn read(&mut self, i: u32, b: u8) -> bool {
        if self.after_cr {
            if b != b'\n' {
                return false; // a bare CR
            }
            self.after_cr = false;
            if !self.in_status_line && self.column == 0 {
                self.head_len = i + 1; // the blank line
                return false;
            }
            match self.field {
                Field::Name if !self.in_status_line => return false, // no colon
                Field::Name | Field::Other => {}
                Field::ContentLength => {
                    if self.digits == Digits::Before
                        || (self.has_content_length && self.content_length != self.value)
                    {
                        return false;
                    }
                    self.content_length = self.value;
                    self.has_content_length = true;
                }
                Field::TransferEncoding => self.transfer_encoding = true,
            }
            self.in_status_line = false;
            self.column = 0;
            self.field = Field::Name;
            self.is_content_length = true;
            self.is_transfer_encoding = true;
            self.digits = Digits::Before;
            self.value = 0;
            return true;
        }
        if b == b'\r' {
            self.after_cr = true;
            return true;
        }
        if b == b'\n' {
            return false; // a bare LF
        }
        if self.in_status_line {
            self.first_line_tail = (self.first_line_tail >> 8) | (b as u64) << 56;
            return true;
        }
        let column = self.column as usize;
        match self.field {
            Field::Name => {
                if b == b':' && column != 0 {
                    self.field = if self.is_content_length && column == CONTENT_LENGTH.len() {
                        Field::ContentLength
                    } else if self.is_transfer_encoding && column == TRANSFER_ENCODING.len() {
                        Field::TransferEncoding
                    } else {
                        Field::Other
                    };
                } else if b <= b' ' || b == 0x7f || b == b':' {
                    // White space (a folded line, a space before the colon) or a control byte.
                    return false;
                } else {
                    let lower = b.to_ascii_lowercase();
                    self.is_content_length &=
                        column < CONTENT_LENGTH.len() && CONTENT_LENGTH[column] == lower;
                    self.is_transfer_encoding &=
                        column < TRANSFER_ENCODING.len() && TRANSFER_ENCODING[column] == lower;
                }
            }
            Field::ContentLength => {
                let blank = b == b' ' || b == b'\t';
                if b.is_ascii_digit() && self.digits != Digits::After {
                    self.digits = Digits::In;
                    let Some(value) = self
                        .value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add((b - b'0') as u32))
                        .filter(|&v| v <= MAX_RESPONSE_LEN)
                    else {
                        return false;
                    };
                    self.value = value;
                } else if blank {
                    // White space before the digits is skipped; after them, it ends them.
                    if self.digits == Digits::In {
                        self.digits = Digits::After;
                    }
                } else {
                    return false; // a list, a sign, anything but digits
                }
            }
            Field::TransferEncoding | Field::Other => {}
        }
        self.column = self.column.saturating_add(1);
        true
    }

    /// Whether the first line, once read, ends like an HTTP/1.x request line (`HTTP/1.0` or
    /// `HTTP/1.1`). An HTTP/0.9 request (`GET /f`) is answered with the bare body: no status.
    #[inline(always)]
    pub fn is_http1_request_line(&self) -> bool {
        !self.in_status_line
            && (self.first_line_tail == u64::from_le_bytes(*b"HTTP/1.1")
                || self.first_line_tail == u64::from_le_bytes(*b"HTTP/1.0"))
    }

    /// How long the request is, head included: its Content-Length, no body without one (RFC
    /// 9112 section 6.3); 0 while unknown — a chunked body, or a head not read to its end.
    #[inline(always)]
    pub fn request_length(&self) -> u32 {
        if self.head_len == 0 || self.transfer_encoding {
            return 0;
        }
        let body = if self.has_content_length {
            self.content_length
        } else {
            0
        };
        // Both are at most MAX_RESPONSE_LEN (2^30): no overflow.
        let total = self.head_len + body;
        if total > MAX_RESPONSE_LEN { 0 } else { total }
    }

    /// How long the response is, head included (see [`response_length`]); 0 while unknown (a
    /// response is never empty). A plain number rather than an `Option`: the kernel must not
    /// see LLVM read the payload of a `None`, which the verifier refuses as uninitialised.
    #[inline(always)]
    pub fn length(&self, status: u16, head_request: bool) -> u32 {
        if self.head_len == 0 {
            return 0;
        }
        let body = if head_request || status < 200 || status == 204 || status == 304 {
            0
        } else if self.transfer_encoding || !self.has_content_length {
            return 0; // chunked, or read until close: not followed
        } else {
            self.content_length
        };
        // Both are at most MAX_RESPONSE_LEN (2^30): no overflow.
        let total = self.head_len + body;
        if total > MAX_RESPONSE_LEN { 0 } else { total }
    }
}

/// How long a response is, head included, so the next response's start is known (RFC 9112
/// section 6.3): no body after a HEAD request or a 1xx, 204 or 304 status; otherwise the
/// Content-Length. `None` — the end is unknown, and nothing after it is read — for a chunked
/// body (Transfer-Encoding), a body read until the connection closes (neither field), a head
/// not whole in `head`, and any head a lenient parser might read differently from this one: a
/// bare CR or LF, a folded line, a field name with white space or control bytes, Content-Length
/// values that are not plain digits or disagree. A wrong end would make a body byte read as a
/// status line; a missed one only misses a signal.
pub fn response_length(head: &[u8], status: u16, head_request: bool) -> Option<u32> {
    let len = head.len().min(HEAD_MAX);
    let mut copy = [0u8; HEAD_MAX];
    copy[..len].copy_from_slice(&head[..len]);
    let mut scan = HeadScan::new();
    while scan.advance(&copy, len as u32) {}
    Some(scan.length(status, head_request)).filter(|&length| length != 0)
}

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGH_BITS: u64 = u64::from_le_bytes([0x80; 8]);

/// Whether any byte of `word` is `b` (exact: a zero byte of `word ^ b…` sets its high bit in
/// `(x - 0x01…) & !x`, and no other byte's does unless a lower one was zero too).
#[inline(always)]
fn has_byte(word: u64, b: u8) -> bool {
    let x = word ^ (ONES * b as u64);
    x.wrapping_sub(ONES) & !x & HIGH_BITS != 0
}

/// Whether any byte of `word` is below `n` (exact for `n` up to 128).
#[inline(always)]
fn has_byte_below(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * n as u64) & !word & HIGH_BITS != 0
}

/// Bytes the kernel copies from a request's start.
pub const METHOD_PREFIX_LEN: usize = 8;

/// Whether `p` starts with an HTTP/1.x request method and a space (RFC 9110's methods and
/// PATCH; Istio's sniffer accepts the same set). `PRI * HTTP/2.0` (the HTTP/2 preface) is not.
#[inline(always)]
pub fn is_request_start(p: &[u8; METHOD_PREFIX_LEN]) -> bool {
    match p[0] {
        b'G' => p[1] == b'E' && p[2] == b'T' && p[3] == b' ',
        b'H' => p[1] == b'E' && p[2] == b'A' && p[3] == b'D' && p[4] == b' ',
        b'P' => {
            (p[1] == b'O' && p[2] == b'S' && p[3] == b'T' && p[4] == b' ')
                || (p[1] == b'U' && p[2] == b'T' && p[3] == b' ')
                || (p[1] == b'A' && p[2] == b'T' && p[3] == b'C' && p[4] == b'H' && p[5] == b' ')
        }
        b'D' => {
            p[1] == b'E'
                && p[2] == b'L'
                && p[3] == b'E'
                && p[4] == b'T'
                && p[5] == b'E'
                && p[6] == b' '
        }
        b'O' => {
            p[1] == b'P'
                && p[2] == b'T'
                && p[3] == b'I'
                && p[4] == b'O'
                && p[5] == b'N'
                && p[6] == b'S'
                && p[7] == b' '
        }
        b'C' => {
            p[1] == b'O'
                && p[2] == b'N'
                && p[3] == b'N'
                && p[4] == b'E'
                && p[5] == b'C'
                && p[6] == b'T'
                && p[7] == b' '
        }
        b'T' => p[1] == b'R' && p[2] == b'A' && p[3] == b'C' && p[4] == b'E' && p[5] == b' ',
        _ => false,
    }
}

/// Whether a request's response has no body whatever its fields say (RFC 9112 section 6.3).
#[inline(always)]
pub fn is_head_request(p: &[u8; METHOD_PREFIX_LEN]) -> bool {
    p[..5] == *b"HEAD "
}

/// Whether a request asks for a tunnel: its 2xx response is followed by opaque bytes.
#[inline(always)]
pub fn is_connect_request(p: &[u8; METHOD_PREFIX_LEN]) -> bool {
    *p == *b"CONNECT "
}

/// Whether a status ends the exchange: 1xx are interim (100 Continue, 103 Early Hints) and a
/// final response follows; 101 Switching Protocols is final (the connection leaves HTTP/1.x).
#[inline(always)]
pub fn is_final(status: u16) -> bool {
    status >= 200 || status == 101
}

/// Envoy's gateway errors: 502, 503, 504.
#[inline(always)]
pub fn is_gateway_error(status: u16) -> bool {
    matches!(status, 502..=504)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &[u8]) -> [u8; STATUS_PREFIX_LEN] {
        let mut p = [0u8; STATUS_PREFIX_LEN];
        let n = s.len().min(STATUS_PREFIX_LEN);
        p[..n].copy_from_slice(&s[..n]);
        p
    }

    #[test]
    fn status_lines() {
        let cases: [(&[u8], Option<u16>); 11] = [
            (b"HTTP/1.0 503 Service Unavailable", Some(503)),
            (b"HTTP/1.1 200 OK\r\n", Some(200)),
            (b"HTTP/1.1 404 Not Found", Some(404)),
            (b"HTTP/1.1 101 Switching", Some(101)),
            (b"HTTP/2 200 ", None),
            (b"HTTP/1.1 600 Nope", None),
            (b"HTTP/1.1 20", None),
            (b"SSH-2.0-OpenSSH_9", None),
            (b"http/1.1 200 OK", None),
            (b"HTTP/1.1 2x0 OK", None),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00", None),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                parse_status(&prefix(payload)),
                expected,
                "{:?}",
                core::str::from_utf8(payload)
            );
        }
    }

    #[test]
    fn request_starts() {
        let yes: [&[u8]; 9] = [
            b"GET / HTTP/1.1",
            b"HEAD /x ",
            b"POST /a ",
            b"PUT /a H",
            b"PATCH /a",
            b"DELETE /",
            b"OPTIONS ",
            b"CONNECT ",
            b"TRACE / ",
        ];
        let no: [&[u8]; 8] = [
            b"PRI * HTTP/2.0",
            b"GETX / H",
            b"get / HT",
            b"HTTP/1.1",
            b"\x16\x03\x01\x02\x00\x01\x00\x01",
            b"POSTMAN ",
            b"OPTIONSX",
            b"\0\0\0\0\0\0\0\0",
        ];
        let prefix = |s: &[u8]| {
            let mut p = [0u8; METHOD_PREFIX_LEN];
            let n = s.len().min(METHOD_PREFIX_LEN);
            p[..n].copy_from_slice(&s[..n]);
            p
        };
        for s in yes {
            assert!(
                is_request_start(&prefix(s)),
                "{:?}",
                core::str::from_utf8(s)
            );
        }
        for s in no {
            assert!(!is_request_start(&prefix(s)), "{s:?}");
        }
    }

    fn length(wire: &[u8], status: u16, head_request: bool) -> Option<u32> {
        response_length(wire, status, head_request)
    }

    #[test]
    fn content_length_frames_the_response() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n";
        assert_eq!(length(head, 200, false), Some(head.len() as u32 + 5));
        // The body in the same bytes changes nothing.
        let whole = b"HTTP/1.1 503 Unavailable\r\ncontent-LENGTH:\t12 \r\n\r\nHTTP/1.1 200";
        assert_eq!(length(whole, 503, false), Some(whole.len() as u32));
        // Repeated with the same value (RFC 9110 section 8.6 lets a recipient accept it).
        let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(length(twice, 200, false), Some(twice.len() as u32 + 3));
        let zero = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(length(zero, 200, false), Some(zero.len() as u32));
    }

    #[test]
    fn bodiless_responses_end_with_their_head() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
        assert_eq!(length(head, 200, true), Some(head.len() as u32), "HEAD");
        for status in [100, 103, 204, 304] {
            let head = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 77\r\n\r\n";
            assert_eq!(
                length(head, status, false),
                Some(head.len() as u32),
                "{status}"
            );
        }
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(length(interim, 100, false), Some(interim.len() as u32));
        // Chunked or not, a 204 has no body.
        let chunked = b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(length(chunked, 204, false), Some(chunked.len() as u32));
    }

    #[test]
    fn an_end_not_known_from_the_head_is_none() {
        let cases: [(&str, &[u8]); 17] = [
            (
                "chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            (
                "chunked wins over a length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            ),
            ("read until close", b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n"),
            ("head goes on", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"),
            ("head cut mid-line", b"HTTP/1.1 200 OK\r\nContent-Len"),
            (
                "disagreeing lengths",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            ),
            ("a list", b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n"),
            ("a sign", b"HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n"),
            ("no digits", b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"),
            (
                "digits apart",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            ),
            (
                "too long",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            ),
            (
                "space before the colon",
                b"HTTP/1.1 200 OK\r\nContent-Length : 4\r\n\r\n",
            ),
            (
                "folded line",
                b"HTTP/1.1 200 OK\r\nX-A: b\r\n Content-Length: 4\r\n\r\n",
            ),
            ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 4\n\n"),
            (
                "bare CR",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\rX: y\r\n\r\n",
            ),
            ("no colon", b"HTTP/1.1 200 OK\r\nContent-Length 4\r\n\r\n"),
            (
                "empty name",
                b"HTTP/1.1 200 OK\r\n: 4\r\nContent-Length: 4\r\n\r\n",
            ),
        ];
        for (why, head) in cases {
            assert_eq!(length(head, 200, false), None, "{why}");
        }
    }

    #[test]
    fn a_field_that_only_starts_like_content_length_is_another_field() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Lengthy: 9\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(length(head, 200, false), Some(head.len() as u32 + 2));
        let head = b"HTTP/1.1 200 OK\r\nContent-Lengt: 9\r\n\r\n";
        assert_eq!(length(head, 200, false), None, "read until close");
    }

    #[test]
    fn a_head_longer_than_the_copy_is_unknown() {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: ".to_vec();
        head.resize(HEAD_MAX + 10, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(length(&head, 200, false), None);
    }

    /// The reference: every byte through `step`, none skipped.
    fn length_byte_by_byte(wire: &[u8], status: u16) -> Option<u32> {
        let mut scan = HeadScan::new();
        for (i, &b) in wire.iter().take(HEAD_MAX).enumerate() {
            if !scan.step(i as u32, b) {
                break;
            }
        }
        Some(scan.length(status, false)).filter(|&length| length != 0)
    }

    #[test]
    fn skipping_eight_bytes_at_a_time_reads_as_byte_by_byte() {
        let base = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nX-Long-Header-Name: v\r\nContent-Length: 16\r\nTransfer-Encodinx: a\r\n\r\n";
        assert_eq!(
            length_byte_by_byte(base, 200),
            response_length(base, 200, false)
        );
        assert!(response_length(base, 200, false).is_some());
        // Every byte replaced by each byte that matters, at every position.
        let specials = [
            b'\r', b'\n', b':', b' ', b'\t', 0x7f, 0, b'0', b'c', b'C', b'T', 0x80,
        ];
        let mut checked = 0;
        for at in 0..base.len() {
            for &b in &specials {
                let mut wire = base.to_vec();
                wire[at] = b;
                assert_eq!(
                    response_length(&wire, 200, false),
                    length_byte_by_byte(&wire, 200),
                    "byte {at} = {b:#x}: {:?}",
                    core::str::from_utf8(&wire)
                );
                checked += 1;
            }
        }
        assert!(checked > 1000);
    }

    #[test]
    fn bytes_that_matter_are_found_inside_a_skipped_word() {
        for n in 0..=128u8 {
            for lane in 0..8 {
                let mut word = [b'a'; 8];
                word[lane] = n;
                let word = u64::from_le_bytes(word);
                assert!(has_byte(word, n));
                assert_eq!(
                    has_byte_below(word, b' ' + 1),
                    n <= b' ',
                    "{n} in lane {lane}"
                );
            }
        }
        assert!(!has_byte(u64::from_le_bytes(*b"abcdefgh"), b':'));
        assert!(!has_byte_below(
            u64::from_le_bytes([0x21, 0x7e, 0x80, 0xff, 0x41, 0x5a, 0x61, 0x7a]),
            0x21
        ));
    }

    fn request_length(wire: &[u8]) -> u32 {
        let mut copy = [0u8; HEAD_MAX];
        copy[..wire.len()].copy_from_slice(wire);
        let mut scan = HeadScan::new();
        while scan.advance(&copy, wire.len() as u32) {}
        scan.request_length()
    }

    #[test]
    fn requests_are_framed_by_their_content_length() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(request_length(get), get.len() as u32);
        // A second request in the same bytes is not part of the first.
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(request_length(two), 19);
        let post = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(request_length(post), post.len() as u32 + 5);
        for unknown in [
            &b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
        ] {
            assert_eq!(
                request_length(unknown),
                0,
                "{:?}",
                core::str::from_utf8(unknown)
            );
        }
    }

    #[test]
    fn only_http1_request_lines_are_requests() {
        let scan = |wire: &[u8]| {
            let mut copy = [0u8; HEAD_MAX];
            copy[..wire.len()].copy_from_slice(wire);
            let mut scan = HeadScan::new();
            while scan.advance(&copy, wire.len() as u32) {}
            scan.is_http1_request_line()
        };
        assert!(scan(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(scan(
            b"GET /a-long-path-skipped-eight-at-a-time HTTP/1.0\r\nHost: x\r\n\r\n"
        ));
        assert!(!scan(b"GET /f\r\n\r\n"), "HTTP/0.9");
        assert!(!scan(b"GET / HTTP/2.0\r\n\r\n"));
        assert!(!scan(b"GET / HTTP/1.1"), "line not ended");
    }

    #[test]
    fn request_kinds() {
        assert!(is_head_request(b"HEAD / H"));
        assert!(!is_head_request(b"GET / HT"));
        assert!(is_connect_request(b"CONNECT "));
        assert!(!is_connect_request(b"CONNECTX"));
    }

    #[test]
    fn interim_statuses_are_not_final() {
        assert!(!is_final(100) && !is_final(103) && !is_final(199));
        assert!(is_final(101) && is_final(200) && is_final(503));
    }

    #[test]
    fn gateway_errors() {
        assert!(is_gateway_error(502) && is_gateway_error(503) && is_gateway_error(504));
        assert!(!is_gateway_error(500) && !is_gateway_error(501) && !is_gateway_error(505));
    }
}
