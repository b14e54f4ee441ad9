//! Incremental Internet checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), for the XDP
//! path where the kernel's `bpf_l3/l4_csum_replace` helpers are not available. Values are taken
//! exactly as they sit in the packet (network byte order read as native integers): one's
//! complement sums are byte-order independent as long as every operand uses the same order.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// New checksum after a 32-bit field (an IPv4 address) changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32) + ((!old) & 0xffff) + ((!old) >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// New checksum after a 128-bit field (an IPv6 address, as its four words) changed from `old`
/// to `new`.
#[inline(always)]
pub fn replace128(check: u16, old: [u32; 4], new: [u32; 4]) -> u16 {
    let mut check = check;
    for i in 0..4 {
        check = replace32(check, old[i], new[i]);
    }
    check
}

/// UDP's "no checksum" is 0; a computed 0 is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn udp_mangled(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

/// Full checksum over `data` (tests and userspace verification).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_ne_bytes([*last, 0]) as u32;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(addr: [u8; 4], port: [u8; 2]) -> [u8; 20] {
        // A toy header with a checksum field at bytes 10..12.
        let mut h = [
            0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 2, 0, 0, 0, 0,
        ];
        h[16..20].copy_from_slice(&addr);
        h[4..6].copy_from_slice(&port);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        h
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let cases = [
            ([198, 19, 0, 10], [0, 80], [198, 18, 10, 2], [0x23, 0x80]),
            ([0, 0, 0, 0], [0, 0], [255, 255, 255, 255], [255, 255]),
            ([255, 255, 255, 255], [255, 255], [0, 0, 0, 1], [0, 1]),
            ([10, 96, 0, 10], [0x1f, 0x90], [10, 1, 0, 11], [0x23, 0x80]),
        ];
        for (a0, p0, a1, p1) in cases {
            let before = header(a0, p0);
            let expected = header(a1, p1);
            let check = u16::from_ne_bytes([before[10], before[11]]);
            let check = replace32(check, u32::from_ne_bytes(a0), u32::from_ne_bytes(a1));
            let check = replace16(check, u16::from_ne_bytes(p0), u16::from_ne_bytes(p1));
            let mut after = expected;
            after[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(checksum(&after), 0, "{a0:?}->{a1:?}: header must verify");
            assert_eq!(after, expected, "{a0:?}->{a1:?}: same as full recompute");
        }
    }

    #[test]
    fn a_sixteen_byte_field_updates_as_a_full_recompute_does() {
        let words = |o: [u8; 16]| crate::Addr6::from_octets(o).0;
        let cases = [
            (
                [0x20, 1, 0xd, 0xb8, 0, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
                [0xfe; 16],
            ),
            ([0; 16], [0xff; 16]),
            ([0xff; 16], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ];
        for (old, new) in cases {
            let mut data = [0x5au8; 40];
            data[8..24].copy_from_slice(&old);
            data[2..4].copy_from_slice(&[0, 0]);
            let c = checksum(&data);
            data[2..4].copy_from_slice(&c.to_ne_bytes());
            let check = replace128(c, words(old), words(new));
            data[8..24].copy_from_slice(&new);
            data[2..4].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(checksum(&data), 0, "{old:?} -> {new:?}");
        }
    }

    #[test]
    fn udp_zero_becomes_all_ones() {
        assert_eq!(udp_mangled(0), 0xffff);
        assert_eq!(udp_mangled(0x1234), 0x1234);
    }
}
