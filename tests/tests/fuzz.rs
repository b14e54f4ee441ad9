//! Differential packet fuzzer: random and mutated packets through the real programs
//! (BPF_PROG_TEST_RUN), each compared with a reference model of the data path written from the
//! README's rules — not from the kernel code:
//!
//! - only IPv4 TCP/UDP to a service VIP:port is steered; everything else passes untouched,
//!   except malformed IPv4 or a stray later fragment addressed to a VIP, which is dropped;
//! - a flow (client:port → VIP:port) keeps one backend (Maglev, keyed hash: while the table does
//!   not change, a tuple always lands on the same backend), DNAT rewrites only the destination
//!   address and port and their checksums;
//! - replies of a steered flow leave from VIP:port; a pure SYN from the client's port straight to
//!   that backend ends the reverse NAT (a new direct connection), and the flow's next packet
//!   through the VIP brings it back;
//! - an ICMP error about a steered flow is translated (quoted packet, outer address when the
//!   backend or the VIP is an end); a later fragment follows its datagram's first fragment;
//! - XDP does what TC ingress does, except that it hands ICMP and fragments to the stack
//!   untouched (and passes translated packets on when no redirect target is vouched for).
//!
//! For every packet: the verdict, every byte of the output (only the fields a rule rewrites may
//! change), every checksum (recomputed here: a valid one stays valid, a broken one stays
//! broken), and periodically the kernel's conntrack pairs against the model's flows.
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

use std::{collections::HashMap, net::Ipv4Addr};

use geosteer_common::{DIR_ORIGINAL, DIR_REPLY, PROTO_TCP, PROTO_UDP, csum, program_names};
use packets::*;

const CLIENTS: [Ipv4Addr; 3] = [
    CLIENT,
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 0, 4),
];
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FIRST_PORT: u16 = 30_000;
const PORTS: u16 = 600;
const PROTO_ICMP: u8 = 1;

/// A flow as the model knows it: (proto, client, client port).
type Tuple = (u8, Ipv4Addr, u16);

#[derive(Default)]
struct Model {
    /// The backend each tuple was steered to, and whether its reply half (reverse NAT) is there.
    flows: HashMap<Tuple, (Ipv4Addr, bool)>,
    /// Later fragments follow the first: (src, dst, id, proto, direction) → new address.
    fragments: HashMap<(Ipv4Addr, Ipv4Addr, u16, u8, u8), Ipv4Addr>,
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
        to: Option<Ipv4Addr>,
        port: u16,
        source: bool,
    },
    /// A later fragment: the address alone.
    Address {
        to: Ipv4Addr,
        source: bool,
    },
    /// An ICMP error: the quoted packet's source (toward the backend) or destination (toward
    /// the client) becomes `to:port`; the outer address where it was the translated end.
    Icmp {
        to: Ipv4Addr,
        port: u16,
        quoted_source: bool,
        outer: Option<Ipv4Addr>,
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
            let known = self
                .fragments
                .get(&(ip.src, ip.dst, ip.id, ip.proto, direction));
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
        if ingress {
            if !(to_vip && dport == VPORT) {
                return Expect::Unchanged;
            }
            let to = self.flows.get(&(ip.proto, ip.src, sport)).map(|f| f.0);
            Expect::Nat {
                to,
                port: TPORT,
                source: false,
            }
        } else {
            match self.flows.get(&(ip.proto, ip.dst, dport)) {
                Some((backend, true)) if *backend == ip.src && sport == TPORT => Expect::Nat {
                    to: Some(VIP),
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
        if path == Path::TcIngress {
            // About a reply VIP:port → client: to the backend that sent it.
            match self.flows.get(&(proto, qdst, qdport)) {
                Some((backend, _)) if qsrc == VIP && qsport == VPORT => Expect::Icmp {
                    to: *backend,
                    port: TPORT,
                    quoted_source: true,
                    outer: (outer.dst == VIP).then_some(*backend),
                },
                _ => Expect::Unchanged,
            }
        } else {
            // About a request client → backend:port: to the client, from the VIP.
            match self.flows.get(&(proto, qsrc, qsport)) {
                Some((backend, true)) if qdst == *backend && qdport == TPORT => Expect::Icmp {
                    to: VIP,
                    port: VPORT,
                    quoted_source: false,
                    outer: (outer.src == *backend).then_some(VIP),
                },
                _ => Expect::Unchanged,
            }
        }
    }

    /// What the packet did to the model's state (after the kernel's output matched).
    fn update(&mut self, path: Path, frame: &[u8], out: &[u8], expect: &Expect) {
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
            self.fragments
                .remove(&(ip.src, ip.dst, ip.id, ip.proto, direction));
        }
        match (path, expect) {
            (Path::TcIngress | Path::Xdp, Expect::Nat { .. }) => {
                let backend = parse_ip(out).expect("NAT output is IPv4").dst;
                let sport = be16(&frame[l4..]);
                self.flows
                    .insert((ip.proto, ip.src, sport), (backend, true));
                if ip.more {
                    self.fragments
                        .insert((ip.src, ip.dst, ip.id, ip.proto, DIR_ORIGINAL), backend);
                }
            }
            (Path::TcEgress, Expect::Nat { .. }) if ip.more => {
                self.fragments
                    .insert((ip.src, ip.dst, ip.id, ip.proto, DIR_REPLY), VIP);
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
                if let Some((backend, reply)) = self.flows.get_mut(&(PROTO_TCP, ip.src, sport))
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
            match to {
                Some(to) if got != to => return Err(format!("translated to {got}, expected {to}")),
                None if !BACKENDS.contains(&got) => {
                    return Err(format!("new flow to {got}, not a backend"));
                }
                _ => {}
            }
            if be16(&out[port_at..]) != port {
                return Err(format!("port {}, expected {port}", be16(&out[port_at..])));
            }
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
            if addr(&out[qaddr..]) != to || be16(&out[qport..]) != port {
                return Err(format!(
                    "quoted end {}:{}, expected {to}:{port}",
                    addr(&out[qaddr..]),
                    be16(&out[qport..])
                ));
            }
            let outer_got = addr(&out[outer_at..]);
            let outer_expected = outer.unwrap_or(addr(&input[outer_at..]));
            if outer_got != outer_expected {
                return Err(format!("outer {outer_got}, expected {outer_expected}"));
            }
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
        let flags = self.tcp_flags();
        let mut seq = self.rng.u32(..);
        if flags & SYN != 0 {
            seq &= !1; // through the VIP: even (see the module docs)
        }
        Pkt::tcp(src, sport, dst, dport, flags)
            .with_payload(&payload)
            .with_seq(seq, self.rng.u32(..))
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
        let backend = match model.flows.get(&(proto, client, port)) {
            Some((b, _)) if self.rng.u8(..5) != 0 => *b,
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
        if !model.flows.is_empty() && self.rng.u8(..4) != 0 {
            let n = self.rng.usize(..model.flows.len());
            let (proto, client, port) = *model.flows.keys().nth(n).expect("in range");
            return (client, port, proto);
        }
        let (client, port) = self.client();
        (client, port, self.proto())
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

/// The kernel's conntrack against the model: every original half belongs to a flow the model
/// knows, on its backend, and has its reply half exactly when the model says so.
fn check_pairs(rig: &Rig, model: &Model) -> Result<(), String> {
    let entries: HashMap<_, _> = rig
        .maps
        .conntrack
        .iter()
        .map(|e| e.expect("conntrack entry"))
        .collect();
    for (key, value) in &entries {
        if key.direction != DIR_ORIGINAL {
            continue;
        }
        let tuple = (
            key.proto,
            Ipv4Addr::from(u32::from_be(key.saddr)),
            u16::from_be(key.sport),
        );
        let backend = Ipv4Addr::from(u32::from_be(value.nat_addr));
        let Some((expected, reply)) = model.flows.get(&tuple) else {
            return Err(format!("kernel flow {tuple:?} unknown to the model"));
        };
        if backend != *expected {
            return Err(format!(
                "{tuple:?}: kernel backend {backend}, model {expected}"
            ));
        }
        let reply_key = geosteer_common::FlowKey::new(
            value.nat_addr,
            key.saddr,
            value.nat_port,
            key.sport,
            key.proto,
            DIR_REPLY,
        );
        if entries.contains_key(&reply_key) != *reply {
            return Err(format!(
                "{tuple:?}: reply half present {}, model {reply}",
                !reply
            ));
        }
    }
    let originals = entries
        .keys()
        .filter(|k| k.direction == DIR_ORIGINAL)
        .count();
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
    let mut rig = Rig::new();
    let mut model = Model::default();
    let mut generator = Gen {
        rng: fastrand::Rng::with_seed(seed),
    };
    let mut by_expect: HashMap<&'static str, u64> = HashMap::new();
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
        let frame = match path {
            Path::TcEgress => generator.reply(&model),
            _ => generator.request(&model),
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
        *by_expect
            .entry(match expect {
                Expect::Unchanged => "unchanged",
                Expect::Drop => "dropped",
                Expect::Nat { .. } => "translated",
                Expect::Address { .. } => "fragment translated",
                Expect::Icmp { .. } => "icmp translated",
            })
            .or_default() += 1;
        if index % 5_000 == 4_999
            && let Err(why) = check_pairs(&rig, &model)
        {
            panic!("after packet {index} (seed {seed}): conntrack: {why}");
        }
    }
    check_pairs(&rig, &model).unwrap_or_else(|why| panic!("at the end (seed {seed}): {why}"));
    let mut kinds: Vec<_> = by_expect.into_iter().collect();
    kinds.sort();
    eprintln!("fuzz: all {packets} agree; by outcome: {kinds:?}");
    for kind in [
        "unchanged",
        "dropped",
        "translated",
        "fragment translated",
        "icmp translated",
    ] {
        assert!(
            kinds.iter().any(|(k, n)| *k == kind && *n > 0) || packets < 1_000,
            "no packet was {kind}: the generator does not reach that rule"
        );
    }
}
