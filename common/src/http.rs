//! HTTP/1.x status-line recognition at the start of a TCP payload: the reply-path signal the
//! kernel counts per backend. Only the first 12 bytes are looked at ("HTTP/1.x NNN"); anything
//! else — other protocols, HTTP/2, a short segment, a body segment — is "not a status line".

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
    fn gateway_errors() {
        assert!(is_gateway_error(502) && is_gateway_error(503) && is_gateway_error(504));
        assert!(!is_gateway_error(500) && !is_gateway_error(501) && !is_gateway_error(505));
    }
}
