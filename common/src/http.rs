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
