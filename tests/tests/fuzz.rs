//! Differential packet fuzzer: random and mutated packets through the real programs
//! (BPF_PROG_TEST_RUN), each compared with a reference model of the data path written from the
//! README's rules — not from the kernel code:
//!
//! - only TCP/UDP to a service VIP:port is steered, over IPv4 or IPv6 (the rig's IPv6 front:
//!   `VIP6` serves what `VIP` does, over the same backends); everything else passes untouched,
//!   except a malformed packet or a stray later fragment addressed to a VIP, which is dropped
//!   (IPv6: a wrong version, a frame that ends in its extension chain or a chain longer than
//!   the four headers walked, a routing header with segments left, a short L4 header); a UDP
//!   datagram without checksum (0) keeps none, over either family;
//! - a flow (client:port → VIP:port) keeps one backend (Maglev, keyed hash: while the table does
//!   not change, a tuple always lands on the same backend), DNAT rewrites only the destination
//!   address and port and their checksums;
//! - replies of a steered flow leave from VIP:port; a pure SYN from the client's port straight to
//!   that backend ends the reverse NAT (a new direct connection), and the flow's next packet
//!   through the VIP brings it back;
//! - an ICMP error about a steered flow is translated (quoted packet, outer address when the
//!   backend or the VIP is an end); a later fragment follows its datagram's first fragment;
//! - XDP does what TC ingress does, except that it hands ICMP errors and fragments to the stack
//!   untouched (and passes translated packets on when no redirect target is vouched for).
//! - IPv6 fragments are keyed by their fragment header's 32-bit id; ICMPv6 errors (types 1–4)
//!   are translated as ICMP's, their checksum covering the outer addresses.
//!
//! For every packet: the verdict, every byte of the output (only the fields a rule rewrites may
//! change), every checksum (recomputed here: a valid one stays valid, a broken one stays
//! broken), and periodically the kernel's conntrack pairs (both families) against the model's
//! flows. A third of the packets are IPv6, and every outcome must be reached in each family.
//!
//! `GEOSTEER_FUZZ_PACKETS` (default 50,000) and `GEOSTEER_FUZZ_SEED` (default: random, printed)
//! make a run reproducible; `cargo xtask fuzz` runs 1,000,000. A mismatch panics with the seed,
//! the packet's index and the packet itself.
//!
//! Generator constraints that keep the model simple (and are stated here, not hidden): client
//! ports come from a small pool (no LRU eviction in a 65,536-entry table), SYNs through the VIP
//! carry even sequence numbers and direct SYNs odd ones (so a direct SYN is never mistaken for
//! the flow's own SYN arriving after XDP translated it), and no backend is ever ejected (the
//! rig's services allow no ejection).
//!
//! Needs root (BPF); run through `cargo xtask test`.

mod packets;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use geosteer_common::{DIR_ORIGINAL, DIR_REPLY, PROTO_TCP, PROTO_UDP, csum, program_names};
use packets::{
    v6::{
        self, BACKENDS6, CLIENT6, FIRST_FRAGMENT_ID, NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP,
        NEXTHDR_ICMPV6, NEXTHDR_ROUTING, OTHER6, Pkt6, ROUTER6, VIP6, icmp6_error,
    },
    *,
};

const CLIENTS: [Ipv4Addr; 3] = [
    CLIENT,
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 0, 4),
];
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENTS6: [Ipv6Addr; 3] = [
    CLIENT6,
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 4),
];
const FIRST_PORT: u16 = 30_000;
const PORTS: u16 = 600;
const PROTO_ICMP: u8 = 1;

/// A flow as the model knows it: (proto, client, client port), of either family.
type Tuple = (u8, IpAddr, u16);

#[derive(Default)]
struct Model {
    /// The backend each tuple was steered to, and whether its reply half (reverse NAT) is there.
    flows: HashMap<Tuple, (IpAddr, bool)>,
    /// Later fragments follow the first: (src, dst, id, proto, direction) → new address. (An
    /// IPv6 datagram's id is 32 bits and unique per source and destination: its proto is 0.)
    fragments: HashMap<(IpAddr, IpAddr, u32, u8, u8), IpAddr>,
}

/// The IPv4 header of a frame as the model reads it (None: no complete IPv4 header).
#[derive(Clone, Copy, Debug)]
struct Ip {
    ihl: usize,
    version: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    offset: u16,
    more: bool,
    tot_len: usize,
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn parse_ip(frame: &[u8]) -> Option<Ip> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let h = &frame[14..34];
    let frags = be16(&h[6..8]);
    Some(Ip {
        ihl: usize::from(h[0] & 0x0f) * 4,
        version: h[0] >> 4,
        proto: h[9],
        src: addr(&h[12..16]),
        dst: addr(&h[16..20]),
        id: be16(&h[4..6]),
        offset: frags & 0x1fff,
        more: frags & 0x2000 != 0,
        tot_len: usize::from(be16(&h[2..4])),
    })
}

/// What the model says a program does with a packet.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Unchanged,
    Drop,
    /// Destination (ingress) or source (egress) address and port rewritten; `to` None: any
    /// backend (a new flow).
    Nat {
        to: Option<IpAddr>,
        port: u16,
        source: bool,
    },
    /// A later fragment: the address alone.
    Address {
        to: IpAddr,
        source: bool,
    },
    /// An ICMP error: the quoted packet's source (toward the backend) or destination (toward
    /// the client) becomes `to:port`; the outer address where it was the translated end.
    Icmp {
        to: IpAddr,
        port: u16,
        quoted_source: bool,
        outer: Option<IpAddr>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    TcIngress,
    TcEgress,
    Xdp,
}

impl Model {
    fn expect(&self, path: Path, frame: &[u8]) -> Expect {
        if is_ipv6(frame) {
            return self.expect6(path, frame);
        }
        let Some(ip) = parse_ip(frame) else {
            return Expect::Unchanged;
        };
        let to_vip = ip.dst == VIP;
        let ingress = path != Path::TcEgress;
        if ip.version != 4 || ip.ihl < 20 {
            return if ingress && to_vip {
                Expect::Drop
            } else {
                Expect::Unchanged
            };
        }
        let l4 = 14 + ip.ihl;
        if ip.proto == PROTO_ICMP {
            if path == Path::Xdp || ip.offset != 0 || ip.more {
                return Expect::Unchanged;
            }
            return self.expect_icmp(path, frame, &ip, l4);
        }
        if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
            return Expect::Unchanged;
        }
        if ip.offset != 0 {
            if path == Path::Xdp {
                return Expect::Unchanged;
            }
            let direction = if ingress { DIR_ORIGINAL } else { DIR_REPLY };
            let known = self.fragments.get(&(
                ip.src.into(),
                ip.dst.into(),
                ip.id.into(),
                ip.proto,
                direction,
            ));
            return match (known, ingress) {
                (Some(to), true) if to_vip => Expect::Address {
                    to: *to,
                    source: false,
                },
                (Some(to), false) => Expect::Address {
                    to: *to,
                    source: true,
                },
                (None, true) if to_vip => Expect::Drop,
                _ => Expect::Unchanged,
            };
        }
        if path == Path::Xdp && ip.more {
            return Expect::Unchanged; // XDP leaves every fragment to TC
        }
        let header = if ip.proto == PROTO_TCP { 20 } else { 8 };
        if frame.len() < l4 + header {
            return if ingress && to_vip {
                Expect::Drop
            } else {
                Expect::Unchanged
            };
        }
        let (sport, dport) = (be16(&frame[l4..]), be16(&frame[l4 + 2..]));
        self.expect_flow(
            ingress,
            ip.proto,
            (ip.src.into(), sport),
            (ip.dst.into(), dport),
            VIP.into(),
        )
    }

    /// A steerable TCP/UDP packet of either family (its VIP `vip`): to the VIP's port, a
    /// request, DNATed (to its flow's backend, if it has one); from a flow's backend to its
    /// client while the reverse NAT is there, a reply, from the VIP.
    fn expect_flow(
        &self,
        ingress: bool,
        proto: u8,
        (src, sport): (IpAddr, u16),
        (dst, dport): (IpAddr, u16),
        vip: IpAddr,
    ) -> Expect {
        if ingress {
            if !(dst == vip && dport == VPORT) {
                return Expect::Unchanged;
            }
            let to = self.flows.get(&(proto, src, sport)).map(|f| f.0);
            Expect::Nat {
                to,
                port: TPORT,
                source: false,
            }
        } else {
            match self.flows.get(&(proto, dst, dport)) {
                Some((backend, true)) if *backend == src && sport == TPORT => Expect::Nat {
                    to: Some(vip),
                    port: VPORT,
                    source: true,
                },
                _ => Expect::Unchanged,
            }
        }
    }

    fn expect_icmp(&self, path: Path, frame: &[u8], outer: &Ip, icmp: usize) -> Expect {
        if frame.len() < icmp + 8 || !matches!(frame[icmp], 3 | 11 | 12) {
            return Expect::Unchanged;
        }
        let q = icmp + 8;
        if frame.len() < q + 20 {
            return Expect::Unchanged;
        }
        let (version, ihl, proto) = (
            frame[q] >> 4,
            usize::from(frame[q] & 0x0f) * 4,
            frame[q + 9],
        );
        if version != 4 || ihl < 20 || (proto != PROTO_TCP && proto != PROTO_UDP) {
            return Expect::Unchanged;
        }
        let ql4 = q + ihl;
        if frame.len() < ql4 + 4 {
            return Expect::Unchanged;
        }
        let (qsrc, qdst) = (addr(&frame[q + 12..]), addr(&frame[q + 16..]));
        let (qsport, qdport) = (be16(&frame[ql4..]), be16(&frame[ql4 + 2..]));
        self.expect_quoted(
            path,
            proto,
            [(qsrc.into(), qsport), (qdst.into(), qdport)],
            (outer.src.into(), outer.dst.into()),
            VIP.into(),
        )
    }

    /// An ICMP error of either family quoting `[source, destination]` (addresses and ports)
    /// of protocol `proto`, its own addresses `outer`.
    fn expect_quoted(
        &self,
        path: Path,
        proto: u8,
        [(qsrc, qsport), (qdst, qdport)]: [(IpAddr, u16); 2],
        (outer_src, outer_dst): (IpAddr, IpAddr),
        vip: IpAddr,
    ) -> Expect {
        if path == Path::TcIngress {
            // About a reply VIP:port → client: to the backend that sent it.
            match self.flows.get(&(proto, qdst, qdport)) {
                Some((backend, _)) if qsrc == vip && qsport == VPORT => Expect::Icmp {
                    to: *backend,
                    port: TPORT,
                    quoted_source: true,
                    outer: (outer_dst == vip).then_some(*backend),
                },
                _ => Expect::Unchanged,
            }
        } else {
            // About a request client → backend:port: to the client, from the VIP.
            match self.flows.get(&(proto, qsrc, qsport)) {
                Some((backend, true)) if *backend == qdst && qdport == TPORT => Expect::Icmp {
                    to: vip,
                    port: VPORT,
                    quoted_source: false,
                    outer: (*backend == outer_src).then_some(vip),
                },
                _ => Expect::Unchanged,
            }
        }
    }

    /// What the packet did to the model's state (after the kernel's output matched).
    fn update(&mut self, path: Path, frame: &[u8], out: &[u8], expect: &Expect) {
        if is_ipv6(frame) {
            return self.update6(path, frame, out, expect);
        }
        let Some(ip) = parse_ip(frame) else { return };
        if ip.ihl < 20 || ip.version != 4 {
            return;
        }
        let l4 = 14 + ip.ihl;
        // A first fragment TC did not translate: an older datagram's translation with the same
        // id must not apply to this one's later fragments.
        let header = if ip.proto == PROTO_TCP { 20 } else { 8 };
        let first_fragment = ip.more
            && ip.offset == 0
            && (ip.proto == PROTO_TCP || ip.proto == PROTO_UDP)
            && frame.len() >= l4 + header;
        if first_fragment && !matches!(expect, Expect::Nat { .. }) && path != Path::Xdp {
            let direction = if path == Path::TcEgress {
                DIR_REPLY
            } else {
                DIR_ORIGINAL
            };
            self.fragments.remove(&(
                ip.src.into(),
                ip.dst.into(),
                ip.id.into(),
                ip.proto,
                direction,
            ));
        }
        match (path, expect) {
            (Path::TcIngress | Path::Xdp, Expect::Nat { .. }) => {
                let backend = parse_ip(out).expect("NAT output is IPv4").dst.into();
                let sport = be16(&frame[l4..]);
                self.flows
                    .insert((ip.proto, ip.src.into(), sport), (backend, true));
                if ip.more {
                    let key = (ip.src.into(), ip.dst.into(), ip.id.into(), ip.proto);
                    self.fragments
                        .insert((key.0, key.1, key.2, key.3, DIR_ORIGINAL), backend);
                }
            }
            (Path::TcEgress, Expect::Nat { .. }) if ip.more => {
                let key = (ip.src.into(), ip.dst.into(), ip.id.into(), ip.proto);
                self.fragments
                    .insert((key.0, key.1, key.2, key.3, DIR_REPLY), VIP.into());
            }
            (Path::TcIngress | Path::Xdp, Expect::Unchanged)
                if ip.proto == PROTO_TCP
                    && ip.offset == 0
                    && !(path == Path::Xdp && ip.more)
                    && frame.len() >= l4 + 20
                    && frame[l4 + 13] & 0x17 == SYN =>
            {
                // A pure SYN straight to a backend from a steered flow's port: a new direct
                // connection; the flow's reverse NAT from that backend ends. (A first fragment
                // has the flags too; XDP hands fragments on without looking.)
                let (sport, dport) = (be16(&frame[l4..]), be16(&frame[l4 + 2..]));
                if let Some((backend, reply)) =
                    self.flows.get_mut(&(PROTO_TCP, ip.src.into(), sport))
                    && *backend == ip.dst
                    && dport == TPORT
                {
                    *reply = false;
                }
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------------ IPv6 ---
//
// The same rules over IPv6, with its own: at most four extension headers are walked (a longer
// chain, a frame that ends inside it, a routing header with segments left, a wrong version or
// a short L4 header make a packet unsteerable: dropped when addressed to the VIP); a zero UDP
// checksum stays zero; fragments are announced by a fragment header and keyed by its 32-bit
// id; ICMPv6 errors are types 1 to 4.

fn is_ipv6(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x86, 0xdd]
}

fn addr6(b: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).expect("16 bytes"))
}

/// What a fragment header on the chain said.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Frag6 {
    Whole,
    First(u32),
    /// Offset past 0: what follows is data.
    Later(u32),
}

/// Reads the extension chain starting at `off` with a header of type `next`: (the header it
/// stops at, where that starts, the fragment header's word). The rules: at most four extension
/// headers are read; a later fragment's fragment header ends the chain (what follows is data);
/// None — unsteerable — when the frame ends inside one of them, a fifth would be needed, or a
/// routing header has segments left (its destination is a waypoint).
fn walk6(frame: &[u8], next: u8, off: usize) -> Option<(u8, usize, Frag6)> {
    let is_ext = |kind: u8| {
        matches!(
            kind,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
        )
    };
    // First the chain as the frame has it, up to four headers: (type, offset) of each.
    let mut chain: Vec<(u8, usize)> = Vec::new();
    let (mut kind, mut at) = (next, off);
    let mut later = None;
    while is_ext(kind) && chain.len() < 4 {
        let size = if kind == NEXTHDR_FRAGMENT { 8 } else { 4 };
        if frame.len() < at + size {
            return None;
        }
        chain.push((kind, at));
        if kind == NEXTHDR_FRAGMENT && be16(&frame[at + 2..]) >> 3 != 0 {
            later = Some(at);
            break;
        }
        let len = if kind == NEXTHDR_FRAGMENT {
            8
        } else {
            (usize::from(frame[at + 1]) + 1) * 8
        };
        (kind, at) = (frame[at], at + len);
    }
    // Then what it says.
    if chain
        .iter()
        .any(|&(k, o)| k == NEXTHDR_ROUTING && frame[o + 3] != 0)
    {
        return None;
    }
    if let Some(at) = later {
        return Some((frame[at], at + 8, Frag6::Later(id_at(frame, at))));
    }
    let frag = chain
        .iter()
        .rev()
        .find(|&&(k, o)| k == NEXTHDR_FRAGMENT && frame[o + 3] & 1 == 1)
        .map_or(Frag6::Whole, |&(_, o)| Frag6::First(id_at(frame, o)));
    Some((kind, at, frag))
}

/// The 32-bit id of the fragment header at `at`.
fn id_at(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(frame[at + 4..at + 8].try_into().expect("4 bytes"))
}

/// An IPv6 frame's fixed header and its walked chain (None: no complete fixed header).
struct Ip6 {
    version: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    payload_len: usize,
    chain: Option<(u8, usize, Frag6)>,
}

fn parse_ip6(frame: &[u8]) -> Option<Ip6> {
    if !is_ipv6(frame) || frame.len() < 54 {
        return None;
    }
    Some(Ip6 {
        version: frame[14] >> 4,
        src: addr6(&frame[22..]),
        dst: addr6(&frame[38..]),
        payload_len: usize::from(be16(&frame[18..])),
        chain: walk6(frame, frame[20], 54),
    })
}

/// The fragment map's key of an IPv6 datagram.
fn fragment_key6(ip: &Ip6, id: u32, direction: u8) -> (IpAddr, IpAddr, u32, u8, u8) {
    (ip.src.into(), ip.dst.into(), id, 0, direction)
}

/// Whether TC reads the frame as a TCP/UDP packet it can steer (`Some(first fragment id)`):
/// a whole chain, version 6, a complete L4 header.
fn steerable6(frame: &[u8], ip: &Ip6) -> Option<Option<u32>> {
    let (next, l4, frag) = ip.chain?;
    let header = match next {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return None,
    };
    let first = match frag {
        Frag6::Whole => None,
        Frag6::First(id) => Some(id),
        Frag6::Later(_) => return None,
    };
    (ip.version == 6 && frame.len() >= l4 + header).then_some(first)
}

impl Model {
    fn expect6(&self, path: Path, frame: &[u8]) -> Expect {
        let Some(ip) = parse_ip6(frame) else {
            return Expect::Unchanged;
        };
        let ingress = path != Path::TcEgress;
        let to_vip = ip.dst == VIP6;
        let unsteerable = if ingress && to_vip {
            Expect::Drop
        } else {
            Expect::Unchanged
        };
        if ip.version != 6 {
            return unsteerable;
        }
        let Some((next, l4, frag)) = ip.chain else {
            return unsteerable;
        };
        if let Frag6::Later(id) = frag {
            // A later fragment follows its datagram's translation, whatever follows its
            // fragment header; without one, a TCP or UDP datagram's to the VIP is dropped and
            // any other passes. XDP leaves fragments to TC.
            if path == Path::Xdp {
                return Expect::Unchanged;
            }
            let direction = if ingress { DIR_ORIGINAL } else { DIR_REPLY };
            let known = self.fragments.get(&fragment_key6(&ip, id, direction));
            let tcp_udp = next == PROTO_TCP || next == PROTO_UDP;
            return match (known, ingress) {
                (Some(to), true) if to_vip => Expect::Address {
                    to: *to,
                    source: false,
                },
                (Some(to), false) => Expect::Address {
                    to: *to,
                    source: true,
                },
                (None, true) if to_vip && tcp_udp => Expect::Drop,
                _ => Expect::Unchanged,
            };
        }
        match next {
            PROTO_TCP | PROTO_UDP => {}
            NEXTHDR_ICMPV6 if frag == Frag6::Whole => {
                if path == Path::Xdp {
                    return Expect::Unchanged; // translated in TC
                }
                return self.expect_icmp6(path, frame, &ip, l4);
            }
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT => return unsteerable,
            _ => return Expect::Unchanged,
        }
        if steerable6(frame, &ip).is_none() {
            return unsteerable;
        }
        if path == Path::Xdp && frag != Frag6::Whole {
            return Expect::Unchanged; // a first fragment, left to TC as its datagram's rest
        }
        let (sport, dport) = (be16(&frame[l4..]), be16(&frame[l4 + 2..]));
        self.expect_flow(
            ingress,
            next,
            (ip.src.into(), sport),
            (ip.dst.into(), dport),
            VIP6.into(),
        )
    }

    fn expect_icmp6(&self, path: Path, frame: &[u8], outer: &Ip6, icmp: usize) -> Expect {
        if frame.len() < icmp + 2 || !(1..=4).contains(&frame[icmp]) {
            return Expect::Unchanged;
        }
        let q = icmp + 8;
        if frame.len() < q + 40 || frame[q] >> 4 != 6 {
            return Expect::Unchanged;
        }
        let Some((proto, ql4, Frag6::Whole | Frag6::First(_))) = walk6(frame, frame[q + 6], q + 40)
        else {
            return Expect::Unchanged;
        };
        if (proto != PROTO_TCP && proto != PROTO_UDP) || frame.len() < ql4 + 4 {
            return Expect::Unchanged;
        }
        let (qsrc, qdst) = (addr6(&frame[q + 8..]), addr6(&frame[q + 24..]));
        let (qsport, qdport) = (be16(&frame[ql4..]), be16(&frame[ql4 + 2..]));
        self.expect_quoted(
            path,
            proto,
            [(qsrc.into(), qsport), (qdst.into(), qdport)],
            (outer.src.into(), outer.dst.into()),
            VIP6.into(),
        )
    }

    fn update6(&mut self, path: Path, frame: &[u8], out: &[u8], expect: &Expect) {
        let Some(ip) = parse_ip6(frame) else { return };
        let Some(first) = steerable6(frame, &ip) else {
            return;
        };
        if path == Path::Xdp && first.is_some() {
            return; // passed to TC untouched
        }
        let (next, l4, _) = ip.chain.expect("steerable");
        let direction = if path == Path::TcEgress {
            DIR_REPLY
        } else {
            DIR_ORIGINAL
        };
        match (first, expect) {
            (Some(id), Expect::Nat { .. }) => {
                let to = if path == Path::TcEgress {
                    VIP6
                } else {
                    addr6(&out[38..])
                };
                self.fragments
                    .insert(fragment_key6(&ip, id, direction), to.into());
            }
            // A first fragment TC did not translate: an older datagram's translation with the
            // same id must not apply to this one's later fragments.
            (Some(id), _) => {
                self.fragments.remove(&fragment_key6(&ip, id, direction));
            }
            (None, _) => {}
        }
        let sport = be16(&frame[l4..]);
        match (path, expect) {
            (Path::TcIngress | Path::Xdp, Expect::Nat { .. }) => {
                let backend = addr6(&out[38..]);
                self.flows
                    .insert((next, ip.src.into(), sport), (backend.into(), true));
            }
            (Path::TcIngress | Path::Xdp, Expect::Unchanged)
                if next == PROTO_TCP && frame[l4 + 13] & 0x17 == SYN =>
            {
                // A direct SYN to a backend from a steered flow's port (as over IPv4).
                let dport = be16(&frame[l4 + 2..]);
                if let Some((backend, reply)) =
                    self.flows.get_mut(&(PROTO_TCP, ip.src.into(), sport))
                    && *backend == ip.dst
                    && dport == TPORT
                {
                    *reply = false;
                }
            }
            _ => {}
        }
    }
}

/// The L4 (or ICMPv6) checksum of a whole, unfragmented IPv6 packet starting at `l4` with
/// protocol `proto`: Some(valid), or None when it cannot be judged.
fn l4_check6(frame: &[u8], proto: u8, l4: usize) -> Option<bool> {
    let ip = parse_ip6(frame)?;
    if frame.len() != 54 + ip.payload_len || l4 > frame.len() {
        return None;
    }
    let segment = &frame[l4..];
    if proto == PROTO_UDP && (segment.len() < 8 || be16(&segment[6..]) == 0) {
        return None; // no checksum to judge
    }
    let mut pseudo = Vec::with_capacity(40 + segment.len());
    pseudo.extend(ip.src.octets());
    pseudo.extend(ip.dst.octets());
    pseudo.extend((segment.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, proto]);
    pseudo.extend(segment);
    Some(ones_sum_ok(&pseudo))
}

fn check6(expect: &Expect, input: &[u8], out: &[u8]) -> Result<(), String> {
    let ip = parse_ip6(input).expect("rewritten packets are IPv6");
    let (next, l4, frag) = ip.chain.expect("rewritten packets have a whole chain");
    match *expect {
        Expect::Nat { to, port, source } => {
            let (addr_at, port_at) = if source { (22, l4) } else { (38, l4 + 2) };
            let check_at = l4 + if next == PROTO_UDP { 6 } else { 16 };
            assert_only_changed(input, out, &[(addr_at, 16), (port_at, 2), (check_at, 2)])?;
            let got = addr6(&out[addr_at..]);
            let backends = BACKENDS6.map(IpAddr::from);
            check_end(got.into(), be16(&out[port_at..]), (to, port), &backends)?;
            if next == PROTO_UDP && be16(&input[check_at..]) == 0 && be16(&out[check_at..]) != 0 {
                return Err("a UDP datagram without checksum got one".into());
            }
            let whole = |f| {
                (frag == Frag6::Whole)
                    .then(|| l4_check6(f, next, l4))
                    .flatten()
            };
            if whole(input) != whole(out) {
                return Err(format!(
                    "L4 checksum validity {:?} became {:?}",
                    whole(input),
                    whole(out)
                ));
            }
        }
        Expect::Address { to, source } => {
            let addr_at = if source { 22 } else { 38 };
            assert_only_changed(input, out, &[(addr_at, 16)])?;
            let got = addr6(&out[addr_at..]);
            if got != to {
                return Err(format!("fragment to {got}, expected {to}"));
            }
        }
        Expect::Icmp {
            to,
            port,
            quoted_source,
            outer,
        } => {
            let icmp = l4;
            let q = icmp + 8;
            let (qproto, ql4, _) = walk6(input, input[q + 6], q + 40).expect("a whole quote");
            let (qaddr, qport) = if quoted_source {
                (q + 8, ql4)
            } else {
                (q + 24, ql4 + 2)
            };
            let qcheck = ql4 + if qproto == PROTO_UDP { 6 } else { 16 };
            let outer_at = if quoted_source { 38 } else { 22 };
            assert_only_changed(
                input,
                out,
                &[
                    (outer_at, 16),
                    (icmp + 2, 2),
                    (qaddr, 16),
                    (qport, 2),
                    (qcheck, 2),
                ],
            )?;
            let quoted = addr6(&out[qaddr..]).into();
            check_end(quoted, be16(&out[qport..]), (Some(to), port), &[])?;
            let (outer_in, outer_out) = (addr6(&input[outer_at..]), addr6(&out[outer_at..]));
            check_outer(outer_in.into(), outer_out.into(), outer)?;
            let valid = |f| l4_check6(f, NEXTHDR_ICMPV6, icmp);
            if valid(input) != valid(out) {
                return Err(format!(
                    "ICMPv6 checksum validity {:?} became {:?}",
                    valid(input),
                    valid(out)
                ));
            }
            // The quoted packet, as a frame of its own: where the error quotes all of it, its
            // L4 checksum's validity is kept too (over its rewritten addresses); a UDP one
            // without checksum keeps none.
            let quoted = |f: &[u8]| [&f[..14], &f[q..]].concat();
            let quoted_valid = |f: &[u8]| l4_check6(&quoted(f), qproto, ql4 - q + 14);
            if quoted_valid(input) != quoted_valid(out) {
                return Err(format!(
                    "quoted L4 checksum validity {:?} became {:?}",
                    quoted_valid(input),
                    quoted_valid(out)
                ));
            }
            let zero = |f: &[u8]| f.len() >= qcheck + 2 && be16(&f[qcheck..]) == 0;
            if qproto == PROTO_UDP && zero(input) && !zero(out) {
                return Err("a quoted UDP datagram without checksum got one".into());
            }
        }
        Expect::Unchanged | Expect::Drop => unreachable!(),
    }
    Ok(())
}

// ------------------------------------------------------------------------ checking ---

fn ones_sum_ok(data: &[u8]) -> bool {
    csum::checksum(data) == 0
}

/// Whether the IPv4 header checksum of `frame` is right.
fn ip_check_ok(frame: &[u8], ihl: usize) -> bool {
    frame.len() >= 14 + ihl && ones_sum_ok(&frame[14..14 + ihl])
}

/// The L4 checksum of a whole, unfragmented datagram: Some(valid), or None when it cannot be
/// judged (cut short, a fragment, UDP without checksum).
fn l4_check(frame: &[u8]) -> Option<bool> {
    let ip = parse_ip(frame)?;
    let l4 = 14 + ip.ihl;
    if ip.more || ip.offset != 0 || ip.tot_len < ip.ihl || frame.len() != 14 + ip.tot_len {
        return None;
    }
    let segment = &frame[l4..];
    if ip.proto == PROTO_UDP && (segment.len() < 8 || be16(&segment[6..]) == 0) {
        return None;
    }
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend(ip.src.octets());
    pseudo.extend(ip.dst.octets());
    pseudo.extend([0, ip.proto]);
    pseudo.extend((segment.len() as u16).to_be_bytes());
    pseudo.extend(segment);
    Some(ones_sum_ok(&pseudo))
}

/// Byte ranges a rule may change; every other byte must be as it came in.
fn assert_only_changed(input: &[u8], out: &[u8], allowed: &[(usize, usize)]) -> Result<(), String> {
    if input.len() != out.len() {
        return Err(format!("length {} became {}", input.len(), out.len()));
    }
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b && !allowed.iter().any(|(at, len)| i >= *at && i < at + len) {
            return Err(format!("byte {i} changed ({a:#04x} → {b:#04x})"));
        }
    }
    Ok(())
}

/// A translated end (address and port) against the rule's: its address (any of `backends`
/// for a new flow's `None`) and port.
fn check_end(
    got: IpAddr,
    got_port: u16,
    (to, port): (Option<IpAddr>, u16),
    backends: &[IpAddr],
) -> Result<(), String> {
    match to {
        Some(to) if got != to => return Err(format!("translated to {got}, expected {to}")),
        None if !backends.contains(&got) => {
            return Err(format!("new flow to {got}, not a backend"));
        }
        _ => {}
    }
    if got_port != port {
        return Err(format!("port {got_port}, expected {port}"));
    }
    Ok(())
}

/// An ICMP error's outer address on the translated side: `to` where the rule rewrites it,
/// else as it came.
fn check_outer(input: IpAddr, out: IpAddr, to: Option<IpAddr>) -> Result<(), String> {
    let expected = to.unwrap_or(input);
    if out != expected {
        return Err(format!("outer {out}, expected {expected}"));
    }
    Ok(())
}

fn check(
    path: Path,
    expect: &Expect,
    input: &[u8],
    verdict: u32,
    out: &[u8],
) -> Result<(), String> {
    let (pass, drop) = match path {
        Path::Xdp => (XDP_PASS, XDP_DROP),
        _ => (TC_ACT_OK, TC_ACT_SHOT),
    };
    if *expect == Expect::Drop {
        return if verdict == drop {
            Ok(())
        } else {
            Err(format!("verdict {verdict}, expected drop"))
        };
    }
    if verdict != pass {
        return Err(format!("verdict {verdict}, expected pass"));
    }
    if *expect == Expect::Unchanged {
        return if out == input {
            Ok(())
        } else {
            assert_only_changed(input, out, &[]).and(Err("changed".into()))
        };
    }
    if is_ipv6(input) {
        return check6(expect, input, out);
    }
    let ip = parse_ip(input).expect("rewritten packets are IPv4");
    let l4 = 14 + ip.ihl;
    let ip_valid = ip_check_ok(input, ip.ihl);
    if ip_check_ok(out, ip.ihl) != ip_valid {
        return Err(format!("IPv4 checksum validity changed (was {ip_valid})"));
    }
    let out_ip = parse_ip(out).expect("output is IPv4");
    match *expect {
        Expect::Nat { to, port, source } => {
            let udp = ip.proto == PROTO_UDP;
            let (addr_at, port_at) = if source { (26, l4) } else { (30, l4 + 2) };
            let check_at = l4 + if udp { 6 } else { 16 };
            assert_only_changed(
                input,
                out,
                &[(24, 2), (addr_at, 4), (port_at, 2), (check_at, 2)],
            )?;
            let got = if source { out_ip.src } else { out_ip.dst };
            let backends = BACKENDS.map(IpAddr::from);
            check_end(got.into(), be16(&out[port_at..]), (to, port), &backends)?;
            if udp && be16(&input[check_at..]) == 0 && be16(&out[check_at..]) != 0 {
                return Err("a UDP datagram without checksum got one".into());
            }
            if l4_check(input) != l4_check(out) {
                return Err(format!(
                    "L4 checksum validity {:?} became {:?}",
                    l4_check(input),
                    l4_check(out)
                ));
            }
        }
        Expect::Address { to, source } => {
            let addr_at = if source { 26 } else { 30 };
            assert_only_changed(input, out, &[(24, 2), (addr_at, 4)])?;
            let got = if source { out_ip.src } else { out_ip.dst };
            if got != to {
                return Err(format!("fragment to {got}, expected {to}"));
            }
        }
        Expect::Icmp {
            to,
            port,
            quoted_source,
            outer,
        } => {
            let icmp = l4;
            let q = icmp + 8;
            let qihl = usize::from(input[q] & 0x0f) * 4;
            let ql4 = q + qihl;
            let qproto = input[q + 9];
            let (qaddr, qport) = if quoted_source {
                (q + 12, ql4)
            } else {
                (q + 16, ql4 + 2)
            };
            let qcheck = ql4 + if qproto == PROTO_UDP { 6 } else { 16 };
            let outer_at = if quoted_source { 30 } else { 26 };
            assert_only_changed(
                input,
                out,
                &[
                    (24, 2),
                    (outer_at, 4),
                    (icmp + 2, 2),
                    (q + 10, 2),
                    (qaddr, 4),
                    (qport, 2),
                    (qcheck, 2),
                ],
            )?;
            let quoted = addr(&out[qaddr..]).into();
            check_end(quoted, be16(&out[qport..]), (Some(to), port), &[])?;
            let (outer_in, outer_out) = (addr(&input[outer_at..]), addr(&out[outer_at..]));
            check_outer(outer_in.into(), outer_out.into(), outer)?;
            let icmp_len = ip.tot_len.min(input.len() - 14).saturating_sub(ip.ihl);
            let icmp_valid = |f: &[u8]| ones_sum_ok(&f[icmp..icmp + icmp_len]);
            if ip.tot_len + 14 == input.len() && icmp_valid(input) != icmp_valid(out) {
                return Err("ICMP checksum validity changed".into());
            }
            if ones_sum_ok(&input[q..q + qihl]) != ones_sum_ok(&out[q..q + qihl]) {
                return Err("quoted IPv4 checksum validity changed".into());
            }
        }
        Expect::Unchanged | Expect::Drop => unreachable!(),
    }
    Ok(())
}

// ------------------------------------------------------------------------ generating ---

struct Gen {
    rng: fastrand::Rng,
}

impl Gen {
    fn client(&mut self) -> (Ipv4Addr, u16) {
        (
            CLIENTS[self.rng.usize(..CLIENTS.len())],
            FIRST_PORT + self.rng.u16(..PORTS),
        )
    }

    fn backend(&mut self) -> Ipv4Addr {
        BACKENDS[self.rng.usize(..BACKENDS.len())]
    }

    fn payload(&mut self) -> Vec<u8> {
        match self.rng.u8(..6) {
            0 => Vec::new(),
            1 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            2 => b"HTTP/1.1 503 Service Unavailable\r\n\r\n".to_vec(),
            3 => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            _ => (0..self.rng.usize(1..80))
                .map(|_| self.rng.u8(..))
                .collect(),
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        const COMMON: [u8; 8] = [SYN, SYN, ACK, PSH_ACK, FIN | ACK, RST, RST | ACK, SYN | FIN];
        if self.rng.u8(..8) == 0 {
            self.rng.u8(..)
        } else {
            COMMON[self.rng.usize(..COMMON.len())]
        }
    }

    /// A TCP or UDP packet `src:sport → dst:dport` with random flags, sequence numbers and
    /// payload.
    fn l4(&mut self, proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Pkt {
        let payload = self.payload();
        if proto == PROTO_UDP {
            let mut p = Pkt::udp(src, sport, dst, dport, &payload);
            p.udp_no_checksum = self.rng.u8(..10) == 0;
            return p;
        }
        let (flags, seq, ack) = self.tcp_fields();
        Pkt::tcp(src, sport, dst, dport, flags)
            .with_payload(&payload)
            .with_seq(seq, ack)
    }

    /// Random flags and sequence numbers; a SYN's even (through the VIP: see the module docs).
    fn tcp_fields(&mut self) -> (u8, u32, u32) {
        let flags = self.tcp_flags();
        let mut seq = self.rng.u32(..);
        if flags & SYN != 0 {
            seq &= !1;
        }
        (flags, seq, self.rng.u32(..))
    }

    fn proto(&mut self) -> u8 {
        if self.rng.bool() {
            PROTO_TCP
        } else {
            PROTO_UDP
        }
    }

    /// A packet for the request direction (TC ingress or XDP).
    fn request(&mut self, model: &Model) -> Vec<u8> {
        let (client, port) = self.client();
        let proto = self.proto();
        let mut frame = match self.rng.u8(..100) {
            0..=44 => self.l4(proto, client, port, VIP, VPORT).build(),
            45..=49 => self.l4(proto, client, port, VIP, VPORT + 1).build(),
            50..=54 => {
                // A direct SYN to a backend from a port a VIP flow may use (odd ISN).
                let seq = self.rng.u32(..) | 1;
                Pkt::tcp(client, port, self.backend(), TPORT, SYN)
                    .with_seq(seq, 0)
                    .build()
            }
            55..=62 => {
                // An ICMP error about a reply VIP → client, from the client or a router.
                let (client, port, proto) = self.known_or_random(model);
                let reply = self.l4(proto, VIP, VPORT, client, port).build();
                let sender = if self.rng.bool() { client } else { ROUTER };
                let dst = if self.rng.u8(..4) == 0 { OTHER } else { VIP };
                icmp_error(
                    sender,
                    dst,
                    [3, 11, 12, 8][self.rng.usize(..4)],
                    self.rng.u8(..16),
                    &reply,
                )
            }
            63..=70 => self.fragment(client, port, VIP, VPORT, proto),
            71..=74 => self.not_ipv4(),
            75..=79 => (0..self.rng.usize(14..120))
                .map(|_| self.rng.u8(..))
                .collect(),
            80..=84 => {
                // IPv4 garbage after a real Ethernet + IPv4 start.
                let mut f = self.l4(proto, client, port, VIP, VPORT).build();
                for b in f.iter_mut().skip(self.rng.usize(14..34)) {
                    *b = self.rng.u8(..);
                }
                f
            }
            _ => self.l4(proto, client, port, OTHER, VPORT).build(),
        };
        self.mutate(&mut frame);
        frame
    }

    /// A packet for the reply direction (TC egress).
    fn reply(&mut self, model: &Model) -> Vec<u8> {
        let (client, port, proto) = self.known_or_random(model);
        let backend = match model.flows.get(&(proto, client.into(), port)) {
            Some((IpAddr::V4(b), _)) if self.rng.u8(..5) != 0 => *b,
            _ => self.backend(),
        };
        let mut frame = match self.rng.u8(..100) {
            0..=59 => self.l4(proto, backend, TPORT, client, port).build(),
            60..=74 => {
                // An ICMP error about a request client → backend, from the backend or a router.
                let request = self.l4(proto, client, port, backend, TPORT).build();
                let sender = if self.rng.bool() { backend } else { ROUTER };
                icmp_error(
                    sender,
                    client,
                    [3, 11, 12, 0][self.rng.usize(..4)],
                    self.rng.u8(..16),
                    &request,
                )
            }
            75..=89 => self.fragment(backend, TPORT, client, port, proto),
            _ => self.not_ipv4(),
        };
        self.mutate(&mut frame);
        frame
    }

    fn known_or_random(&mut self, model: &Model) -> (Ipv4Addr, u16, u8) {
        if let Some((proto, IpAddr::V4(client), port)) = self.known(model, false) {
            return (client, port, proto);
        }
        let (client, port) = self.client();
        (client, port, self.proto())
    }

    /// Mostly one of the model's flows of the family, when it has any.
    fn known(&mut self, model: &Model, v6: bool) -> Option<Tuple> {
        let of_family: Vec<&Tuple> = model
            .flows
            .keys()
            .filter(|(_, client, _)| client.is_ipv6() == v6)
            .collect();
        if of_family.is_empty() || self.rng.u8(..4) == 0 {
            return None;
        }
        Some(*of_family[self.rng.usize(..of_family.len())])
    }

    /// A first fragment (with ports) or a later one (without), of one of a few datagram ids.
    fn fragment(
        &mut self,
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        proto: u8,
    ) -> Vec<u8> {
        let id = 0x1200 + u16::from(self.rng.u8(..8));
        let mut frame = if self.rng.bool() {
            let mut p = self.l4(proto, src, sport, dst, dport);
            p.frag = 0x2000;
            p.build()
        } else {
            let payload: Vec<u8> = (0..self.rng.usize(8..64))
                .map(|_| self.rng.u8(..))
                .collect();
            let mut f = later_fragment(src, dst, 1 + self.rng.u16(..100), &payload);
            f[23] = proto;
            f
        };
        frame[18..20].copy_from_slice(&id.to_be_bytes());
        fix_ip_checksum(&mut frame);
        frame
    }

    fn not_ipv4(&mut self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        match self.rng.u8(..4) {
            0 => f.extend([0x86, 0xdd]), // IPv6
            1 => f.extend([0x08, 0x06]), // ARP
            2 => {
                // 802.1Q-tagged IPv4 to the VIP.
                let inner = self.l4(PROTO_TCP, CLIENT, FIRST_PORT, VIP, VPORT).build();
                f.extend([0x81, 0x00, 0x00, 0x07]);
                f.extend(&inner[12..]);
                return f;
            }
            _ => f.extend([self.rng.u8(..), self.rng.u8(..)]),
        }
        f.extend((0..self.rng.usize(0..80)).map(|_| self.rng.u8(..)));
        f
    }

    /// Now and then: cut short, IP options, a bad IHL or version, a broken checksum, a wrong
    /// total length.
    fn mutate(&mut self, frame: &mut Vec<u8>) {
        if self.rng.u8(..5) != 0 || frame.len() < 34 {
            return;
        }
        match self.rng.u8(..6) {
            0 => frame.truncate(self.rng.usize(14..frame.len())),
            1 if frame[12..14] == [0x08, 0x00] && frame[14] == 0x45 => {
                // Four bytes of options (NOP NOP NOP EOL) after the 20-byte header.
                frame.splice(34..34, [1, 1, 1, 0]);
                frame[14] = 0x46;
                let tot = be16(&frame[16..]) + 4;
                frame[16..18].copy_from_slice(&tot.to_be_bytes());
                fix_ip_checksum(frame);
            }
            2 => {
                frame[14] = (frame[14] & 0xf0) | self.rng.u8(..5);
                fix_ip_checksum(frame);
            }
            3 => {
                let at = self.rng.usize(14..frame.len());
                frame[at] ^= 1 << self.rng.u8(..8);
            }
            4 => {
                let tot = self.rng.u16(..);
                frame[16..18].copy_from_slice(&tot.to_be_bytes());
                fix_ip_checksum(frame);
            }
            _ => frame[14] = (frame[14] & 0x0f) | (self.rng.u8(..16) << 4),
        }
    }
}

/// IPv6 frames, as `request` and `reply` make IPv4 ones.
impl Gen {
    fn client6(&mut self) -> (Ipv6Addr, u16) {
        (
            CLIENTS6[self.rng.usize(..CLIENTS6.len())],
            FIRST_PORT + self.rng.u16(..PORTS),
        )
    }

    fn backend6(&mut self) -> Ipv6Addr {
        BACKENDS6[self.rng.usize(..BACKENDS6.len())]
    }

    fn l4_6(&mut self, proto: u8, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Pkt6 {
        let payload = self.payload();
        if proto == PROTO_UDP {
            let mut p = Pkt6::udp(src, sport, dst, dport, &payload);
            p.udp_zero_checksum = self.rng.u8(..16) == 0;
            return p;
        }
        let (flags, seq, ack) = self.tcp_fields();
        Pkt6::tcp(src, sport, dst, dport, flags)
            .with_payload(&payload)
            .with_seq(seq, ack)
    }

    /// Now and then an extension chain (hop-by-hop, routing, destination options, a first
    /// fragment's header), up to one past the walked bound.
    fn chain6(&mut self, pkt: Pkt6) -> Vec<u8> {
        if self.rng.u8(..3) != 0 {
            return pkt.build();
        }
        let kinds = [NEXTHDR_HOP, NEXTHDR_DEST, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT];
        let chain: Vec<(u8, u8)> = (0..self.rng.usize(1..=5))
            .map(|_| (kinds[self.rng.usize(..4)], self.rng.u8(..3)))
            .collect();
        let mut frame = pkt.with_sized_ext(&chain).build();
        self.fragment_id6(&mut frame);
        // Now and then a routing header with segments left (its destination a waypoint).
        let (mut next, mut off) = (frame[20], 54);
        while matches!(next, NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING) {
            if next == NEXTHDR_ROUTING && self.rng.u8(..4) == 0 {
                frame[off + 3] = 1 + self.rng.u8(..3);
            }
            (next, off) = (frame[off], off + (usize::from(frame[off + 1]) + 1) * 8);
        }
        frame
    }

    /// Gives the frame's first fragment header (if any) one of a few datagram ids.
    fn fragment_id6(&mut self, frame: &mut [u8]) {
        let (mut next, mut off) = (frame[20], 54);
        while matches!(next, NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING) {
            (next, off) = (frame[off], off + (usize::from(frame[off + 1]) + 1) * 8);
        }
        if next == NEXTHDR_FRAGMENT {
            let id = FIRST_FRAGMENT_ID + u32::from(self.rng.u8(..4));
            frame[off + 4..off + 8].copy_from_slice(&id.to_be_bytes());
        }
    }

    /// A first fragment (with ports) or a later one (without), of one of a few datagram ids.
    fn fragment6(
        &mut self,
        (src, sport): (Ipv6Addr, u16),
        (dst, dport): (Ipv6Addr, u16),
        proto: u8,
    ) -> Vec<u8> {
        if self.rng.bool() {
            let pkt = self.l4_6(proto, src, sport, dst, dport);
            let mut frame = pkt.with_ext(&[NEXTHDR_FRAGMENT]).build();
            self.fragment_id6(&mut frame);
            return frame;
        }
        let data: Vec<u8> = (0..self.rng.usize(8..64))
            .map(|_| self.rng.u8(..))
            .collect();
        let id = FIRST_FRAGMENT_ID + u32::from(self.rng.u8(..4));
        let offset = 1 + self.rng.u16(..100);
        // Mostly the datagram's protocol; now and then a ping's, ESP's, or an extension
        // header that began the first fragment's fragmentable part.
        let next = match self.rng.u8(..8) {
            0 => [NEXTHDR_ICMPV6, 50, NEXTHDR_DEST, NEXTHDR_ROUTING][self.rng.usize(..4)],
            _ => proto,
        };
        v6::fragment6(src, dst, (next, offset, self.rng.bool()), id, &data)
    }

    fn request6(&mut self, model: &Model) -> Vec<u8> {
        let (client, port) = self.client6();
        let proto = self.proto();
        let mut frame = match self.rng.u8(..100) {
            0..=44 => {
                let pkt = self.l4_6(proto, client, port, VIP6, VPORT);
                self.chain6(pkt)
            }
            45..=49 => self.l4_6(proto, client, port, VIP6, VPORT + 1).build(),
            50..=54 => {
                let seq = self.rng.u32(..) | 1;
                Pkt6::tcp(client, port, self.backend6(), TPORT, SYN)
                    .with_seq(seq, 0)
                    .build()
            }
            55..=64 => {
                // An ICMPv6 message about a reply VIP → client, from the client or a router.
                let (client, port, proto) = self.known6_or_random(model);
                let reply = self.l4_6(proto, VIP6, VPORT, client, port);
                let reply = self.chain6(reply);
                let sender = if self.rng.bool() { client } else { ROUTER6 };
                let dst = if self.rng.u8(..4) == 0 { OTHER6 } else { VIP6 };
                let kind = [1, 2, 3, 4, 128][self.rng.usize(..5)];
                icmp6_error(sender, dst, (kind, self.rng.u8(..4), 1280), &reply)
            }
            65..=74 => self.fragment6((client, port), (VIP6, VPORT), proto),
            _ => self.l4_6(proto, client, port, OTHER6, VPORT).build(),
        };
        self.mutate6(&mut frame);
        frame
    }

    fn reply6(&mut self, model: &Model) -> Vec<u8> {
        let (client, port, proto) = self.known6_or_random(model);
        let backend = match model.flows.get(&(proto, client.into(), port)) {
            Some((IpAddr::V6(b), _)) if self.rng.u8(..5) != 0 => *b,
            _ => self.backend6(),
        };
        let mut frame = match self.rng.u8(..100) {
            0..=59 => {
                let pkt = self.l4_6(proto, backend, TPORT, client, port);
                self.chain6(pkt)
            }
            60..=79 => {
                // An ICMPv6 error about a request client → backend, from it or a router.
                let request = self.l4_6(proto, client, port, backend, TPORT);
                let request = self.chain6(request);
                let sender = if self.rng.bool() { backend } else { ROUTER6 };
                let kind = [1, 2, 3, 4, 129][self.rng.usize(..5)];
                icmp6_error(sender, client, (kind, self.rng.u8(..4), 0), &request)
            }
            _ => self.fragment6((backend, TPORT), (client, port), proto),
        };
        self.mutate6(&mut frame);
        frame
    }

    fn known6_or_random(&mut self, model: &Model) -> (Ipv6Addr, u16, u8) {
        if let Some((proto, IpAddr::V6(client), port)) = self.known(model, true) {
            return (client, port, proto);
        }
        let (client, port) = self.client6();
        (client, port, self.proto())
    }

    /// Now and then: cut short, a flipped bit, a wrong version, a wrong payload length.
    fn mutate6(&mut self, frame: &mut Vec<u8>) {
        if self.rng.u8(..5) != 0 {
            return;
        }
        match self.rng.u8(..4) {
            0 => frame.truncate(self.rng.usize(54..=frame.len())),
            1 => {
                let at = self.rng.usize(14..frame.len());
                frame[at] ^= 1 << self.rng.u8(..8);
            }
            2 => frame[14] = (frame[14] & 0x0f) | (self.rng.u8(..16) << 4),
            _ => {
                let len = self.rng.u16(..);
                frame[18..20].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
}

fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    if ihl < 20 || frame.len() < 14 + ihl {
        return;
    }
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = csum::checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&c.to_ne_bytes());
}

// ------------------------------------------------------------------------ the run ---

fn short_for_the_test_run(frame: &[u8]) -> bool {
    match frame[12..14] {
        [0x08, 0x00] => frame.len() < 34,
        [0x86, 0xdd] => frame.len() < 54,
        _ => false,
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// A conntrack entry of either family, as the pair check reads it.
struct Entry {
    tuple: Tuple,
    daddr: IpAddr,
    dport: u16,
    direction: u8,
    nat_addr: IpAddr,
    nat_port: u16,
}

/// The kernel's conntrack (both families) against the model: every original half belongs to a
/// flow the model knows, on its backend, and has its reply half exactly when the model says so.
fn check_pairs(rig: &Rig, model: &Model) -> Result<(), String> {
    let port = u16::from_be;
    let v4 = rig.maps.conntrack.iter().map(|e| {
        let (k, v) = e.expect("conntrack entry");
        let ip = |a: u32| IpAddr::from(Ipv4Addr::from(u32::from_be(a)));
        Entry {
            tuple: (k.proto, ip(k.saddr), port(k.sport)),
            daddr: ip(k.daddr),
            dport: port(k.dport),
            direction: k.direction,
            nat_addr: ip(v.nat_addr),
            nat_port: port(v.nat_port),
        }
    });
    let v6 = rig.maps.conntrack6.iter().map(|e| {
        let (k, v) = e.expect("conntrack6 entry");
        let ip = |a: geosteer_common::Addr6| IpAddr::from(a.to_ip());
        Entry {
            tuple: (k.proto, ip(k.saddr), port(k.sport)),
            daddr: ip(k.daddr),
            dport: port(k.dport),
            direction: k.direction,
            nat_addr: ip(v.nat_addr),
            nat_port: port(v.nat_port),
        }
    });
    let entries: Vec<Entry> = v4.chain(v6).collect();
    // Reply halves by their key: (proto, backend, backend port, client, client port).
    let replies: std::collections::HashSet<(u8, IpAddr, u16, IpAddr, u16)> = entries
        .iter()
        .filter(|e| e.direction == DIR_REPLY)
        .map(|e| (e.tuple.0, e.tuple.1, e.tuple.2, e.daddr, e.dport))
        .collect();
    let mut originals = 0;
    for e in entries.iter().filter(|e| e.direction == DIR_ORIGINAL) {
        originals += 1;
        let tuple = e.tuple;
        let Some((expected, reply)) = model.flows.get(&tuple) else {
            return Err(format!("kernel flow {tuple:?} unknown to the model"));
        };
        if e.nat_addr != *expected {
            return Err(format!(
                "{tuple:?}: kernel backend {}, model {expected}",
                e.nat_addr
            ));
        }
        let reply_key = (tuple.0, e.nat_addr, e.nat_port, tuple.1, tuple.2);
        if replies.contains(&reply_key) != *reply {
            return Err(format!(
                "{tuple:?}: reply half present {}, model {reply}",
                !reply
            ));
        }
    }
    if originals != model.flows.len() {
        return Err(format!(
            "{originals} flows in the kernel, {} in the model",
            model.flows.len()
        ));
    }
    Ok(())
}

#[test]
fn the_programs_agree_with_the_model_on_random_and_mutated_packets() {
    let packets: u64 = std::env::var("GEOSTEER_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let seed: u64 = std::env::var("GEOSTEER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fuzz: {packets} packets, seed {seed} (GEOSTEER_FUZZ_SEED={seed} reproduces)");
    let mut rig = v6::rig6();
    let mut model = Model::default();
    let mut generator = Gen {
        rng: fastrand::Rng::with_seed(seed),
    };
    let mut by_expect: HashMap<&'static str, u64> = HashMap::new();
    let mut by_expect6: HashMap<&'static str, u64> = HashMap::new();
    // Debugging a mismatch: every packet that carries this port (either end) is printed.
    let trace_port: Option<u16> = std::env::var("GEOSTEER_FUZZ_TRACE_PORT")
        .ok()
        .and_then(|v| v.parse().ok());
    for index in 0..packets {
        let path = match generator.rng.u8(..8) {
            0..=3 => Path::TcIngress,
            4 => Path::Xdp,
            _ => Path::TcEgress,
        };
        let ipv6 = generator.rng.u8(..3) == 0;
        let frame = match (path, ipv6) {
            (Path::TcEgress, false) => generator.reply(&model),
            (_, false) => generator.request(&model),
            (Path::TcEgress, true) => generator.reply6(&model),
            (_, true) => generator.request6(&model),
        };
        let expect = model.expect(path, &frame);
        let ran = match path {
            Path::TcIngress => rig.try_run_tc(program_names::TC_INGRESS, &frame),
            Path::TcEgress => rig.try_run_tc(program_names::TC_EGRESS, &frame),
            Path::Xdp => Ok(rig.run_xdp(&frame)),
        };
        let (verdict, out) = match ran {
            Ok(ran) => ran,
            // The kernel's skb test run refuses an IPv4 frame without room for an IP header
            // and an IPv6 frame without its fixed header (no real packet is that short).
            Err(_) if short_for_the_test_run(&frame) => {
                *by_expect.entry("refused by the test run").or_default() += 1;
                continue;
            }
            Err(e) => panic!(
                "packet {index} (seed {seed}): test run failed: {e}\n  in {}",
                hex(&frame)
            ),
        };
        if let Err(why) = check(path, &expect, &frame, verdict, &out) {
            panic!(
                "packet {index} (seed {seed}) through {path:?}: {why}\n  expected {expect:?}\n  in  {}\n  out {}",
                hex(&frame),
                hex(&out)
            );
        }
        if let Some(port) = trace_port
            && frame.windows(2).any(|w| w == port.to_be_bytes())
        {
            eprintln!(
                "trace {index} {path:?} {expect:?} verdict {verdict}\n  in  {}\n  out {}",
                hex(&frame),
                hex(&out)
            );
        }
        model.update(path, &frame, &out, &expect);
        let outcome = match expect {
            Expect::Unchanged => "unchanged",
            Expect::Drop => "dropped",
            Expect::Nat { .. } => "translated",
            Expect::Address { .. } => "fragment translated",
            Expect::Icmp { .. } => "icmp translated",
        };
        *by_expect.entry(outcome).or_default() += 1;
        if ipv6 {
            *by_expect6.entry(outcome).or_default() += 1;
        }
        if index % 5_000 == 4_999
            && let Err(why) = check_pairs(&rig, &model)
        {
            panic!("after packet {index} (seed {seed}): conntrack: {why}");
        }
    }
    check_pairs(&rig, &model).unwrap_or_else(|why| panic!("at the end (seed {seed}): {why}"));
    let mut kinds: Vec<_> = by_expect.into_iter().collect();
    kinds.sort();
    let mut kinds6: Vec<_> = by_expect6.into_iter().collect();
    kinds6.sort();
    eprintln!("fuzz: all {packets} agree; by outcome: {kinds:?}; of them IPv6: {kinds6:?}");
    for kind in [
        "unchanged",
        "dropped",
        "translated",
        "fragment translated",
        "icmp translated",
    ] {
        for (family, kinds) in [("", &kinds), (" IPv6", &kinds6)] {
            assert!(
                kinds.iter().any(|(k, n)| *k == kind && *n > 0) || packets < 1_000,
                "no{family} packet was {kind}: the generator does not reach that rule"
            );
        }
    }
}
