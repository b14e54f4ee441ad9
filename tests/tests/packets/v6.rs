//! IPv6 frames for the packet tests: a builder, an independent parser that verifies the L4
//! checksum (etherparse), and the rig's IPv6 front (`VIP6` serving what `VIP` does).

use std::net::Ipv6Addr;

use etherparse::{Ipv6Header, TcpHeader, UdpHeader};
use geosteer_common::{
    Addr6, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceKey6, ServiceValue, program_names,
};

use super::{BACKENDS, Rig, VIP, VPORT};

pub(crate) const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub(crate) const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x10);
pub(crate) const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 9);
/// The IPv6 address of each of the rig's backends (`BACKENDS[i]`).
pub(crate) const BACKENDS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 0x12, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 0x21, 0, 0, 0, 0, 2),
];

pub(crate) const NEXTHDR_HOP: u8 = 0;
pub(crate) const NEXTHDR_ROUTING: u8 = 43;
pub(crate) const NEXTHDR_FRAGMENT: u8 = 44;
pub(crate) const NEXTHDR_DEST: u8 = 60;
pub(crate) const NEXTHDR_ICMPV6: u8 = 58;

/// A hand-built Ethernet + IPv6 (+ extension headers) + TCP/UDP/ICMPv6 frame.
#[derive(Clone)]
pub(crate) struct Pkt6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
    /// Extension headers before the L4 header: type and length field (8-byte units past the
    /// first 8; a fragment header is 8 bytes, offset 0, more fragments set).
    pub ext: Vec<(u8, u8)>,
    pub udp_zero_checksum: bool,
}

impl Pkt6 {
    pub(crate) fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Self {
        Pkt6 {
            src,
            dst,
            sport,
            dport,
            proto: PROTO_TCP,
            tcp_flags: flags,
            seq: 1000,
            ack: 0,
            payload: Vec::new(),
            ext: Vec::new(),
            udp_zero_checksum: false,
        }
    }

    pub(crate) fn udp(
        src: Ipv6Addr,
        sport: u16,
        dst: Ipv6Addr,
        dport: u16,
        payload: &[u8],
    ) -> Self {
        Pkt6 {
            proto: PROTO_UDP,
            payload: payload.to_vec(),
            ..Self::tcp(src, sport, dst, dport, 0)
        }
    }

    pub(crate) fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub(crate) fn with_seq(mut self, seq: u32, ack: u32) -> Self {
        self.seq = seq;
        self.ack = ack;
        self
    }

    /// 8-byte extension headers of these types.
    pub(crate) fn with_ext(mut self, ext: &[u8]) -> Self {
        self.ext = ext.iter().map(|kind| (*kind, 0)).collect();
        self
    }

    pub(crate) fn with_sized_ext(mut self, ext: &[(u8, u8)]) -> Self {
        self.ext = ext.to_vec();
        self
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        if self.proto == NEXTHDR_ICMPV6 {
            // Neighbour solicitation for the destination (type 135): its body is the target.
            l4.extend([135, 0, 0, 0, 0, 0, 0, 0]);
            l4.extend(self.dst.octets());
        } else {
            l4.extend(self.sport.to_be_bytes());
            l4.extend(self.dport.to_be_bytes());
            if self.proto == PROTO_TCP {
                l4.extend(self.seq.to_be_bytes());
                l4.extend(self.ack.to_be_bytes());
                l4.push(5 << 4);
                l4.push(self.tcp_flags);
                l4.extend(64240u16.to_be_bytes());
                l4.extend([0, 0, 0, 0]);
            } else {
                l4.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend([0, 0]);
            }
            l4.extend(&self.payload);
        }
        let check_at = match self.proto {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            _ => 2,
        };
        let mut pseudo = Vec::new();
        pseudo.extend(self.src.octets());
        pseudo.extend(self.dst.octets());
        pseudo.extend((l4.len() as u32).to_be_bytes());
        pseudo.extend([0, 0, 0, self.proto]);
        pseudo.extend(&l4);
        let c = geosteer_common::csum::checksum(&pseudo);
        if !(self.proto == PROTO_UDP && self.udp_zero_checksum) {
            let c = if self.proto == PROTO_UDP && c == 0 {
                0xffff
            } else {
                c
            };
            l4[check_at..check_at + 2].copy_from_slice(&c.to_ne_bytes());
        }
        // The chain: each extension header names the next one; the last names the L4 protocol.
        let mut chain = Vec::new();
        for (i, (kind, len)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |(k, _)| *k);
            if *kind == NEXTHDR_FRAGMENT {
                // Offset 0, more fragments: a first fragment.
                chain.extend([next, 0, 0, 1, 0, 0, 0x12, 0x34]);
            } else if *kind == NEXTHDR_ROUTING {
                // Next header, length, routing type 0, no segments left: the destination is
                // the packet's last.
                let size = (usize::from(*len) + 1) * 8;
                chain.extend([next, *len, 0, 0]);
                chain.extend(std::iter::repeat_n(0, size - 4));
            } else {
                // Next header, length, then one PadN option filling the rest.
                let size = (usize::from(*len) + 1) * 8;
                chain.extend([next, *len, 1, (size - 4) as u8]);
                chain.extend(std::iter::repeat_n(0, size - 4));
            }
        }
        let first = self.ext.first().map_or(self.proto, |(k, _)| *k);
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
        frame.extend([0x60, 0, 0, 0]);
        frame.extend(((chain.len() + l4.len()) as u16).to_be_bytes());
        frame.extend([first, 64]);
        frame.extend(self.src.octets());
        frame.extend(self.dst.octets());
        frame.extend(chain);
        frame.extend(l4);
        frame
    }
}

/// What an output frame says, after checksum verification.
#[derive(Debug, PartialEq)]
pub(crate) struct Seen6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
}

/// Parses an output frame (IPv6, through its extension headers) and asserts that its L4
/// checksum is right for its addresses.
pub(crate) fn verify6(frame: &[u8]) -> Seen6 {
    let (ip, _) = Ipv6Header::from_slice(&frame[14..]).expect("ipv6 header parses");
    let (proto, l4_off) = l4_of(frame);
    let l4 = &frame[l4_off..14 + 40 + ip.payload_length as usize];
    let (src, dst) = (Ipv6Addr::from(ip.source), Ipv6Addr::from(ip.destination));
    if proto == PROTO_TCP {
        let (tcp, data) = TcpHeader::from_slice(l4).expect("tcp header parses");
        let expected = tcp
            .calc_checksum_ipv6_raw(ip.source, ip.destination, data)
            .expect("tcp checksum");
        assert_eq!(tcp.checksum, expected, "TCP checksum");
        Seen6 {
            src,
            dst,
            sport: tcp.source_port,
            dport: tcp.destination_port,
        }
    } else {
        assert_eq!(proto, PROTO_UDP);
        let (udp, data) = UdpHeader::from_slice(l4).expect("udp header parses");
        let expected = udp
            .calc_checksum_ipv6_raw(ip.source, ip.destination, data)
            .expect("udp checksum");
        assert_eq!(udp.checksum, expected, "UDP checksum");
        Seen6 {
            src,
            dst,
            sport: udp.source_port,
            dport: udp.destination_port,
        }
    }
}

/// The L4 protocol of a frame and where its header starts (a first fragment's too).
pub(crate) fn l4_of(frame: &[u8]) -> (u8, usize) {
    let mut next = frame[14 + 6];
    let mut off = 14 + 40;
    while matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT
    ) {
        let len = if next == NEXTHDR_FRAGMENT {
            8
        } else {
            (usize::from(frame[off + 1]) + 1) * 8
        };
        next = frame[off];
        off += len;
    }
    (next, off)
}

/// The rig, with the IPv6 front of its IPv4 services written: `VIP6` serves what `VIP` does,
/// over the same backends (ids), each at its `BACKENDS6` address.
pub(crate) fn rig6() -> Rig {
    let mut rig = Rig::new();
    write_front6(&mut rig);
    rig
}

pub(crate) fn write_front6(rig: &mut Rig) {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let value: ServiceValue = rig
            .maps
            .services
            .get(&ServiceKey::for_vip(VIP, VPORT, proto), 0)
            .expect("the IPv4 service is live");
        rig.maps
            .services6
            .insert(ServiceKey6::for_vip(VIP6, VPORT, proto), value, 0)
            .unwrap();
        let ids: Vec<u32> = BACKENDS
            .iter()
            .map(|ip| rig.backend_id(*ip, proto))
            .collect();
        for (id, addr) in ids.iter().zip(BACKENDS6) {
            rig.maps
                .backend_addrs6
                .set(*id, Addr6::from_ip(addr), 0)
                .unwrap();
        }
    }
    rig.maps.vips6.insert(Addr6::from_ip(VIP6), 2, 0).unwrap();
}

pub(crate) fn ingress(rig: &mut Rig, pkt: &Pkt6) -> (u32, Vec<u8>) {
    rig.run_tc(program_names::TC_INGRESS, &pkt.build())
}

pub(crate) fn egress(rig: &mut Rig, pkt: &Pkt6) -> (u32, Vec<u8>) {
    rig.run_tc(program_names::TC_EGRESS, &pkt.build())
}

pub(crate) fn backend_index(addr: Ipv6Addr) -> usize {
    BACKENDS6
        .iter()
        .position(|b| *b == addr)
        .unwrap_or_else(|| panic!("{addr} is no backend"))
}

pub(crate) const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0xff, 0, 0, 0, 1);
pub(crate) const ICMPV6_DEST_UNREACH: u8 = 1;
pub(crate) const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub(crate) const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub(crate) const ICMPV6_ECHO_REQUEST: u8 = 128;

/// An Ethernet frame with an ICMPv6 message from `src` to `dst`: its type, code and 32-bit
/// word (a Packet Too Big's MTU), quoting as much of `about` (an Ethernet frame) after its
/// Ethernet header as fits the minimum MTU (RFC 4443 2.4 (c)), with a correct checksum.
pub(crate) fn icmp6_error(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    (kind, code, word): (u8, u8, u32),
    about: &[u8],
) -> Vec<u8> {
    let quoted = &about[14..about.len().min(14 + 1280 - 40 - 8)];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend(word.to_be_bytes());
    icmp.extend(quoted);
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend((icmp.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, NEXTHDR_ICMPV6]);
    pseudo.extend(&icmp);
    let c = geosteer_common::csum::checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    let mut frame = vec![
        0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    frame.extend((icmp.len() as u16).to_be_bytes());
    frame.extend([NEXTHDR_ICMPV6, 64]);
    frame.extend(src.octets());
    frame.extend(dst.octets());
    frame.extend(icmp);
    frame
}

/// A fragment of an IPv6 datagram: a fragment header (next header, offset in 8-byte units,
/// more fragments) with id `id`, then `data`.
pub(crate) fn fragment6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    (next, offset, more): (u8, u16, bool),
    id: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut frame = vec![
        0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    frame.extend(((8 + data.len()) as u16).to_be_bytes());
    frame.extend([NEXTHDR_FRAGMENT, 64]);
    frame.extend(src.octets());
    frame.extend(dst.octets());
    frame.extend([next, 0]);
    frame.extend((offset << 3 | u16::from(more)).to_be_bytes());
    frame.extend(id.to_be_bytes());
    frame.extend(data);
    frame
}

/// `Pkt6` builds a first fragment (offset 0, more fragments) with this id.
pub(crate) const FIRST_FRAGMENT_ID: u32 = 0x1234;
