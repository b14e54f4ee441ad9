//! The IPv6 programs on synthetic packets through BPF_PROG_TEST_RUN: the attached TC programs
//! tail-call them for IPv6 frames, they steer through the IPv6 maps with the same code as IPv4,
//! and every output checksum is verified by an independent parser (etherparse).
//!
//! Most cases write the IPv6 front of the rig's IPv4 services by hand (`GS_SERVICES6`,
//! `GS_VIPS6`, `GS_BACKEND_ADDRS6`), sharing their Maglev tables and backend ids as the agent
//! does for a dual-stack service; the last has the agent's programmer write an IPv6 service.
//! Fragments and ICMPv6 errors of steered flows are translated as IPv4's are (`icmp.rs`).
//!
//! Needs root (CAP_BPF); run through `cargo xtask test`.

mod packets;

use std::net::Ipv6Addr;

use etherparse::{Ipv6Header, TcpHeader, UdpHeader};
use geosteer_common::{
    Addr6, DropReason, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceKey6, ServiceValue, ct_stats,
    map_names, program_names,
};
use packets::{ACK, BACKENDS, PSH_ACK, Rig, SYN, TC_ACT_OK, TC_ACT_SHOT, TPORT, VIP, VPORT};

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x10);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 9);
/// The IPv6 address of each of the rig's backends (`BACKENDS[i]`).
const BACKENDS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 0x12, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 0x21, 0, 0, 0, 0, 2),
];

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_ICMPV6: u8 = 58;

/// A hand-built Ethernet + IPv6 (+ extension headers) + TCP/UDP/ICMPv6 frame.
#[derive(Clone)]
struct Pkt6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
    /// Extension headers before the L4 header: type and length field (8-byte units past the
    /// first 8; a fragment header is 8 bytes, offset 0, more fragments set).
    ext: Vec<(u8, u8)>,
    udp_zero_checksum: bool,
}

impl Pkt6 {
    fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Self {
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

    fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Self {
        Pkt6 {
            proto: PROTO_UDP,
            payload: payload.to_vec(),
            ..Self::tcp(src, sport, dst, dport, 0)
        }
    }

    fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    fn with_seq(mut self, seq: u32, ack: u32) -> Self {
        self.seq = seq;
        self.ack = ack;
        self
    }

    /// 8-byte extension headers of these types.
    fn with_ext(mut self, ext: &[u8]) -> Self {
        self.ext = ext.iter().map(|kind| (*kind, 0)).collect();
        self
    }

    fn with_sized_ext(mut self, ext: &[(u8, u8)]) -> Self {
        self.ext = ext.to_vec();
        self
    }

    fn build(&self) -> Vec<u8> {
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
struct Seen6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
}

/// Parses an output frame (IPv6, through its extension headers) and asserts that its L4
/// checksum is right for its addresses.
fn verify6(frame: &[u8]) -> Seen6 {
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

/// The L4 protocol of a frame and where its header starts.
fn l4_of(frame: &[u8]) -> (u8, usize) {
    let (next, off, _) = walk(frame);
    (next, off)
}

/// `l4_of`, and whether a fragment header on the way says the frame is a fragment other than
/// the first (what follows is data, not a header). Only for frames whose chain is whole.
fn walk(frame: &[u8]) -> (u8, usize, bool) {
    let mut next = frame[14 + 6];
    let mut off = 14 + 40;
    while matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT
    ) {
        let len = if next == NEXTHDR_FRAGMENT {
            if u16::from_be_bytes([frame[off + 2], frame[off + 3]]) >> 3 != 0 {
                return (frame[off], off + 8, true);
            }
            8
        } else {
            (usize::from(frame[off + 1]) + 1) * 8
        };
        next = frame[off];
        off += len;
    }
    (next, off, false)
}

/// The rig, with the IPv6 front of its IPv4 services written: `VIP6` serves what `VIP` does,
/// over the same backends (ids), each at its `BACKENDS6` address.
fn rig6() -> Rig {
    let mut rig = Rig::new();
    write_front6(&mut rig);
    rig
}

fn write_front6(rig: &mut Rig) {
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

fn ingress(rig: &mut Rig, pkt: &Pkt6) -> (u32, Vec<u8>) {
    rig.run_tc(program_names::TC_INGRESS, &pkt.build())
}

fn egress(rig: &mut Rig, pkt: &Pkt6) -> (u32, Vec<u8>) {
    rig.run_tc(program_names::TC_EGRESS, &pkt.build())
}

fn backend_index(addr: Ipv6Addr) -> usize {
    BACKENDS6
        .iter()
        .position(|b| *b == addr)
        .unwrap_or_else(|| panic!("{addr} is no backend"))
}

#[test]
fn tcp_to_an_ipv6_vip_is_dnated_and_its_replies_reverse_natted() {
    let mut rig = rig6();
    let (verdict, out) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, 40000, VIP6, VPORT, SYN));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify6(&out);
    let backend = seen.dst;
    backend_index(backend);
    assert_eq!((seen.src, seen.sport, seen.dport), (CLIENT6, 40000, TPORT));

    let syn_ack = Pkt6::tcp(backend, TPORT, CLIENT6, 40000, SYN | ACK).with_seq(5000, 1001);
    let (verdict, out) = egress(&mut rig, &syn_ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        verify6(&out),
        Seen6 {
            src: VIP6,
            dst: CLIENT6,
            sport: VPORT,
            dport: 40000
        }
    );
    // The rest of the flow keeps its backend, and the same signals are read: a 503 from it is
    // counted against its backend id (shared with the IPv4 address).
    let ack = Pkt6::tcp(CLIENT6, 40000, VIP6, VPORT, ACK).with_seq(1001, 5001);
    assert_eq!(verify6(&ingress(&mut rig, &ack).1).dst, backend);
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let get = Pkt6::tcp(CLIENT6, 40000, VIP6, VPORT, PSH_ACK)
        .with_seq(1001, 5001)
        .with_payload(request);
    assert_eq!(verify6(&ingress(&mut rig, &get).1).dst, backend);
    let response = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    let reply = Pkt6::tcp(backend, TPORT, CLIENT6, 40000, PSH_ACK)
        .with_seq(5001, 1001 + request.len() as u32)
        .with_payload(response);
    let (verdict, out) = egress(&mut rig, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(verify6(&out).src, VIP6);
    let counters = rig.counters(BACKENDS[backend_index(backend)]);
    assert_eq!(counters.responses[4], 1, "one 5xx: {counters:?}");
    assert_eq!(counters.new_flows, 1);
}

#[test]
fn udp_to_an_ipv6_vip_is_steered_and_a_zero_checksum_is_dropped() {
    let mut rig = rig6();
    let (verdict, out) = ingress(&mut rig, &Pkt6::udp(CLIENT6, 5353, VIP6, VPORT, b"query"));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify6(&out);
    let backend = seen.dst;
    backend_index(backend);
    assert_eq!(seen.dport, TPORT);
    let answer = Pkt6::udp(backend, TPORT, CLIENT6, 5353, b"answer");
    let (verdict, out) = egress(&mut rig, &answer);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        verify6(&out),
        Seen6 {
            src: VIP6,
            dst: CLIENT6,
            sport: VPORT,
            dport: 5353
        }
    );

    // A 0 checksum is invalid over IPv6: a VIP's is dropped and counted, not forwarded with a
    // checksum the update cannot keep right.
    let before = rig.drops(DropReason::Truncated);
    let mut zero = Pkt6::udp(CLIENT6, 5354, VIP6, VPORT, b"query");
    zero.udp_zero_checksum = true;
    assert_eq!(ingress(&mut rig, &zero).0, TC_ACT_SHOT);
    assert_eq!(rig.drops(DropReason::Truncated), before + 1);
}

#[test]
fn ipv6_packets_not_for_a_vip_pass_untouched() {
    let mut rig = rig6();
    let mut solicitation = Pkt6::tcp(CLIENT6, 0, VIP6, 0, 0);
    solicitation.proto = NEXTHDR_ICMPV6;
    let cases = [
        (
            "other address",
            Pkt6::tcp(CLIENT6, 40001, OTHER6, VPORT, SYN),
        ),
        ("VIP, other port", Pkt6::tcp(CLIENT6, 40001, VIP6, 81, SYN)),
        (
            "direct to a backend",
            Pkt6::tcp(CLIENT6, 40001, BACKENDS6[0], TPORT, SYN),
        ),
        // Neighbour discovery for the VIP's own address is never touched.
        ("neighbour solicitation", solicitation),
        // The IPv4-mapped form of the IPv4 VIP is not the IPv4 service.
        (
            "IPv4-mapped VIP",
            Pkt6::tcp(CLIENT6, 40001, VIP.to_ipv6_mapped(), VPORT, SYN),
        ),
    ];
    for (name, pkt) in cases {
        let input = pkt.build();
        let (verdict, out) = rig.run_tc(program_names::TC_INGRESS, &input);
        assert_eq!((verdict, &out), (TC_ACT_OK, &input), "ingress: {name}");
    }
    // A direct client → backend connection's reply is not reverse-NATed.
    let direct = Pkt6::tcp(BACKENDS6[0], TPORT, CLIENT6, 40002, SYN | ACK).build();
    let (verdict, out) = rig.run_tc(program_names::TC_EGRESS, &direct);
    assert_eq!((verdict, out), (TC_ACT_OK, direct));
}

#[test]
fn extension_headers_are_walked_to_a_bound() {
    let mut rig = rig6();
    // Hop-by-hop and destination options before TCP: steered, the ports found behind them.
    let padded = Pkt6::tcp(CLIENT6, 40010, VIP6, VPORT, SYN).with_ext(&[NEXTHDR_HOP, NEXTHDR_DEST]);
    let (verdict, out) = ingress(&mut rig, &padded);
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify6(&out);
    backend_index(seen.dst);
    assert_eq!(seen.dport, TPORT);

    // Four are walked; a fifth hides the ports: dropped and counted, never passed unsteered.
    let four = Pkt6::tcp(CLIENT6, 40011, VIP6, VPORT, SYN).with_ext(&[NEXTHDR_DEST; 4]);
    let (verdict, out) = ingress(&mut rig, &four);
    assert_eq!(verdict, TC_ACT_OK);
    backend_index(verify6(&out).dst);
    let before = rig.drops(DropReason::Truncated);
    let five = Pkt6::tcp(CLIENT6, 40012, VIP6, VPORT, SYN).with_ext(&[NEXTHDR_DEST; 5]);
    assert_eq!(ingress(&mut rig, &five).0, TC_ACT_SHOT);
    assert_eq!(rig.drops(DropReason::Truncated), before + 1);
    // The same chain to another address is none of ours.
    let elsewhere = Pkt6::tcp(CLIENT6, 40012, OTHER6, VPORT, SYN)
        .with_ext(&[NEXTHDR_DEST; 5])
        .build();
    let (verdict, out) = rig.run_tc(program_names::TC_INGRESS, &elsewhere);
    assert_eq!((verdict, out), (TC_ACT_OK, elsewhere));

    // Longer headers and a routing header: their lengths are followed.
    let sized = Pkt6::tcp(CLIENT6, 40013, VIP6, VPORT, SYN).with_sized_ext(&[
        (NEXTHDR_HOP, 1),
        (NEXTHDR_ROUTING, 2),
        (NEXTHDR_DEST, 0),
    ]);
    let (verdict, out) = ingress(&mut rig, &sized);
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify6(&out);
    backend_index(seen.dst);
    assert_eq!((seen.sport, seen.dport), (40013, TPORT));

    // A header that is not IPv6's to a VIP: dropped as malformed.
    let before = rig.drops(DropReason::Truncated);
    let mut wrong_version = Pkt6::tcp(CLIENT6, 40014, VIP6, VPORT, SYN).build();
    wrong_version[14] = 0x40;
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &wrong_version).0,
        TC_ACT_SHOT
    );
    assert_eq!(rig.drops(DropReason::Truncated), before + 1);

    // A first fragment's ports are behind its fragment header: steered.
    let fragment = Pkt6::udp(CLIENT6, 5355, VIP6, VPORT, b"part").with_ext(&[NEXTHDR_FRAGMENT]);
    let (verdict, out) = ingress(&mut rig, &fragment);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(verify6(&out).dport, TPORT);
}

#[test]
fn an_ejected_backend_takes_no_new_ipv6_flows() {
    let mut rig = rig6();
    // Health is per backend id, shared by the families: ejected through its IPv4 identity,
    // the backend gets no IPv6 flow either.
    rig.eject(BACKENDS[0], PROTO_TCP);
    let mut used = std::collections::BTreeSet::new();
    for port in 41000..41064 {
        let (verdict, out) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, port, VIP6, VPORT, SYN));
        assert_eq!(verdict, TC_ACT_OK, "port {port}");
        used.insert(backend_index(verify6(&out).dst));
    }
    assert_eq!(
        used,
        [1, 2].into(),
        "the two backends in rotation, never the ejected one"
    );
}

#[test]
fn a_backend_without_an_ipv6_address_gets_no_ipv6_flows() {
    let mut rig = rig6();
    // The first backend has no IPv6 address (an IPv4-only endpoint of a dual-stack service).
    unaddress(&mut rig, BACKENDS[0]);
    let mut used = std::collections::BTreeSet::new();
    for port in 42000..42064 {
        let (verdict, out) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, port, VIP6, VPORT, SYN));
        assert_eq!(verdict, TC_ACT_OK, "port {port}");
        used.insert(backend_index(verify6(&out).dst));
    }
    assert_eq!(used, [1, 2].into());
    // With none addressed, nothing to steer to: dropped, counted, never sent to [::].
    unaddress(&mut rig, BACKENDS[1]);
    unaddress(&mut rig, BACKENDS[2]);
    let before = rig.drops(DropReason::NoBackend);
    let (verdict, _) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, 42100, VIP6, VPORT, SYN));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(rig.drops(DropReason::NoBackend), before + 1);
}

/// Removes the IPv6 address of the rig's TCP backend `ip`.
fn unaddress(rig: &mut Rig, ip: std::net::Ipv4Addr) {
    let id = rig.backend_id(ip, PROTO_TCP);
    rig.maps
        .backend_addrs6
        .set(id, Addr6::default(), 0)
        .unwrap();
}

#[test]
fn without_the_ipv6_programs_in_their_slots_ipv6_passes_and_is_counted() {
    let mut rig = rig6();
    let mut tails =
        aya::maps::ProgramArray::try_from(rig.ebpf.map_mut(map_names::TAIL_CALLS).unwrap())
            .unwrap();
    tails.clear_index(&program_names::TAIL_TC_INGRESS6).unwrap();
    let before = rig.maps.ct_stat(ct_stats::IPV6_UNSTEERED).unwrap();
    let input = Pkt6::tcp(CLIENT6, 43000, VIP6, VPORT, SYN).build();
    let (verdict, out) = rig.run_tc(program_names::TC_INGRESS, &input);
    assert_eq!((verdict, out), (TC_ACT_OK, input));
    let after = rig.maps.ct_stat(ct_stats::IPV6_UNSTEERED).unwrap();
    assert_eq!(after, before + 1);
}

/// Random and mutated IPv6 frames (TCP and UDP, random flags and payloads, extension chains up
/// to past the bound, fragments, zero UDP checksums, truncations, flipped bytes) through both
/// programs, holding what must be true of any of them: a verdict of pass or drop; a drop only
/// for a VIP; a frame not for a VIP untouched; a rewritten frame changed only in the
/// translated address, its port and the L4 checksum, translated to a backend (requests) or to
/// the VIP (replies), with a checksum still valid where it was valid. `GEOSTEER_FUZZ_SEED`
/// reproduces a run, `GEOSTEER_FUZZ_PACKETS` sizes it (default 20,000).
#[test]
fn random_and_mutated_ipv6_frames_keep_the_invariants() {
    let packets: u64 = std::env::var("GEOSTEER_FUZZ_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("GEOSTEER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("ipv6 fuzz: {packets} frames, seed {seed} (GEOSTEER_FUZZ_SEED={seed} reproduces)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rig = rig6();
    // Flows the programs translated: (client port, protocol, backend).
    let mut flows: Vec<(u16, u8, Ipv6Addr)> = Vec::new();
    let (mut rewritten, mut dropped) = (0u64, 0u64);
    for index in 0..packets {
        let egress = !flows.is_empty() && rng.u8(..3) == 0;
        let proto = if rng.bool() { PROTO_TCP } else { PROTO_UDP };
        let payload: Vec<u8> = (0..rng.usize(..40)).map(|_| rng.u8(..)).collect();
        let mut pkt = if egress {
            let (port, proto, backend) = flows[rng.usize(..flows.len())];
            let src = if rng.u8(..8) == 0 { OTHER6 } else { backend };
            Pkt6 {
                proto,
                ..Pkt6::tcp(src, TPORT, CLIENT6, port, rng.u8(..))
            }
        } else {
            let dst = match rng.u8(..8) {
                0 => OTHER6,
                1 => BACKENDS6[rng.usize(..3)],
                _ => VIP6,
            };
            let dport = if rng.u8(..8) == 0 { rng.u16(..) } else { VPORT };
            Pkt6 {
                proto,
                ..Pkt6::tcp(CLIENT6, 40000 + rng.u16(..2000), dst, dport, rng.u8(..))
            }
        };
        pkt = pkt
            .with_seq(rng.u32(..), rng.u32(..))
            .with_payload(&payload);
        if rng.u8(..4) == 0 {
            let kinds = [NEXTHDR_HOP, NEXTHDR_DEST, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT];
            let chain: Vec<(u8, u8)> = (0..rng.usize(..=5))
                .map(|_| (kinds[rng.usize(..4)], rng.u8(..3)))
                .collect();
            pkt = pkt.with_sized_ext(&chain);
        }
        pkt.udp_zero_checksum = proto == PROTO_UDP && rng.u8(..16) == 0;
        let mut frame = pkt.build();
        let mutated = rng.u8(..6) == 0;
        if mutated {
            if rng.bool() {
                frame.truncate(rng.usize(54..=frame.len()));
            } else {
                let at = rng.usize(14..frame.len());
                frame[at] ^= 1 << rng.u8(..8);
            }
        }
        let program = if egress {
            program_names::TC_EGRESS
        } else {
            program_names::TC_INGRESS
        };
        let context = || format!("frame {index} (seed {seed}): {frame:02x?}");
        let Ok((verdict, out)) = rig.try_run_tc(program, &frame) else {
            continue; // shorter than the kernel's test run takes
        };
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap());
        match verdict {
            TC_ACT_SHOT => {
                assert!(!egress, "a reply dropped: {}", context());
                assert_eq!(dst, VIP6, "a drop not for the VIP: {}", context());
                dropped += 1;
                continue;
            }
            TC_ACT_OK => {}
            other => panic!("verdict {other}: {}", context()),
        }
        if out == frame {
            continue;
        }
        rewritten += 1;
        assert!(
            egress || dst == VIP6,
            "a frame not for the VIP rewritten: {}",
            context()
        );
        assert_eq!(out.len(), frame.len(), "{}", context());
        // A fragment other than the first (a mutated offset) gets its address alone: it follows
        // its datagram's first fragment, whose translation the fragment map remembers.
        let (l4_proto, l4_off, later_fragment) = walk(&frame);
        let (addr, port) = if egress {
            (22, l4_off)
        } else {
            (38, l4_off + 2)
        };
        let check = l4_off + if l4_proto == PROTO_TCP { 16 } else { 6 };
        for (at, (a, b)) in frame.iter().zip(&out).enumerate() {
            let allowed = (addr..addr + 16).contains(&at)
                || !later_fragment
                    && ((port..port + 2).contains(&at) || (check..check + 2).contains(&at));
            assert!(a == b || allowed, "byte {at} changed: {}", context());
        }
        let moved = Ipv6Addr::from(<[u8; 16]>::try_from(&out[addr..addr + 16]).unwrap());
        if egress {
            assert_eq!(moved, VIP6, "{}", context());
        } else {
            backend_index(moved);
        }
        if later_fragment {
            continue;
        }
        let moved_port = u16::from_be_bytes([out[port], out[port + 1]]);
        let expected_port = if egress { VPORT } else { TPORT };
        assert_eq!(moved_port, expected_port, "{}", context());
        if !mutated {
            // Built with a valid checksum: it stays valid.
            verify6(&out);
            if !egress {
                let sport = u16::from_be_bytes([frame[l4_off], frame[l4_off + 1]]);
                flows.push((sport, l4_proto, moved));
            }
        }
    }
    eprintln!("ipv6 fuzz: {rewritten} rewritten, {dropped} dropped");
    assert!(
        rewritten > packets / 10,
        "too few frames were steered to mean much"
    );
}

/// An IPv6-only service as the agent programs it (the programmer, not the hand-written front of
/// the tests above): new flows go to its backends' IPv6 addresses, and the connect-timeout
/// program counts a backend's timeouts only when asked with the address its slot holds.
#[test]
fn an_ipv6_service_the_agent_programs_steers_and_counts_connect_timeouts_by_address() {
    use geosteer::{
        dataplane::Dataplane as _,
        frontend::Frontend,
        programmer::{DesiredBackend, DesiredService},
    };
    let mut rig = Rig::new();
    let key = Frontend::new(VIP6, VPORT, PROTO_TCP);
    let desired = DesiredService {
        name: "v6-only".into(),
        key,
        key6: None,
        backends: BACKENDS6
            .iter()
            .map(|ip| DesiredBackend {
                addr: (*ip).into(),
                port: TPORT.to_be(),
                weight: 1,
                ..Default::default()
            })
            .collect(),
        settings: Default::default(),
    };
    rig.programmer
        .apply_one(&mut rig.maps, &desired)
        .expect("programmed");
    let mut used = std::collections::BTreeSet::new();
    for port in 44000..44060u16 {
        let (verdict, out) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, port, VIP6, VPORT, SYN));
        assert_eq!(verdict, TC_ACT_OK);
        used.insert(backend_index(verify6(&out).dst));
    }
    assert_eq!(used.len(), 3, "{used:?}");

    let (ip, other) = (BACKENDS6[0], BACKENDS6[1]);
    let id = rig
        .programmer
        .backend_id(&key, ip.into(), TPORT.to_be())
        .unwrap();
    let failures = |rig: &Rig| rig.maps.backend_counters(id).unwrap().connect_failures;
    assert!(
        rig.maps
            .count_connect_timeouts(id, ip.into(), TPORT.to_be(), 2)
            .unwrap()
    );
    assert_eq!(failures(&rig), 2);
    // Another backend's address, or an IPv4 one (the entry's own address is 0): not counted.
    for wrong in [std::net::IpAddr::from(other), BACKENDS[0].into()] {
        assert!(
            !rig.maps
                .count_connect_timeouts(id, wrong, TPORT.to_be(), 1)
                .unwrap(),
            "{wrong}"
        );
    }
    assert_eq!(failures(&rig), 2);
    assert!(
        rig.maps
            .dismiss_connect_timeouts(id, ip.into(), TPORT.to_be())
            .unwrap()
    );
}

const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0xff, 0, 0, 0, 1);
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// An Ethernet frame with an ICMPv6 message from `src` to `dst`: its type, code and 32-bit
/// word (a Packet Too Big's MTU), quoting as much of `about` (an Ethernet frame) after its
/// Ethernet header as fits the minimum MTU (RFC 4443 2.4 (c)), with a correct checksum.
fn icmp6_error(
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

/// What a translated ICMPv6 error says, after its checksum and (when the error quotes all of
/// it) its quoted packet's L4 checksum were verified.
#[derive(Debug, PartialEq)]
struct SeenIcmp6 {
    outer: (Ipv6Addr, Ipv6Addr),
    /// Type, code and the 32-bit word (MTU, pointer).
    message: (u8, u8, u32),
    quoted_src: (Ipv6Addr, u16),
    quoted_dst: (Ipv6Addr, u16),
}

fn verify_icmp6(frame: &[u8]) -> SeenIcmp6 {
    let addr = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap());
    let (src, dst) = (addr(&frame[22..38]), addr(&frame[38..54]));
    assert_eq!(frame[20], NEXTHDR_ICMPV6);
    let icmp = &frame[54..];
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend((icmp.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, NEXTHDR_ICMPV6]);
    pseudo.extend(icmp);
    assert_eq!(
        geosteer_common::csum::checksum(&pseudo),
        0,
        "ICMPv6 checksum"
    );
    // The quoted packet as a frame of its own: when whole, its L4 checksum must verify.
    let mut quoted = frame[..14].to_vec();
    quoted.extend(&icmp[8..]);
    let whole = 14 + 40 + usize::from(u16::from_be_bytes([quoted[18], quoted[19]])) == quoted.len();
    let seen = if whole {
        verify6(&quoted)
    } else {
        let (_, l4) = l4_of(&quoted);
        let port = |at: usize| u16::from_be_bytes([quoted[at], quoted[at + 1]]);
        Seen6 {
            src: addr(&quoted[22..38]),
            dst: addr(&quoted[38..54]),
            sport: port(l4),
            dport: port(l4 + 2),
        }
    };
    SeenIcmp6 {
        outer: (src, dst),
        message: (
            icmp[0],
            icmp[1],
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        ),
        quoted_src: (seen.src, seen.sport),
        quoted_dst: (seen.dst, seen.dport),
    }
}

#[test]
fn port_unreachable_from_an_ipv6_backend_reaches_the_client_from_the_vip() {
    let mut rig = rig6();
    let (_, out) = ingress(&mut rig, &Pkt6::udp(CLIENT6, 5353, VIP6, VPORT, b"query"));
    let backend = verify6(&out).dst;
    // The backend has no listener: its kernel answers the query as it received it.
    let error = icmp6_error(backend, CLIENT6, (ICMPV6_DEST_UNREACH, 4, 0), &out);
    let (verdict, out) = rig.run_tc(program_names::TC_EGRESS, &error);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        verify_icmp6(&out),
        SeenIcmp6 {
            outer: (VIP6, CLIENT6),
            message: (ICMPV6_DEST_UNREACH, 4, 0),
            quoted_src: (CLIENT6, 5353),
            quoted_dst: (VIP6, VPORT),
        },
        "what the client's socket (connected to the VIP) can match"
    );
    assert_eq!(rig.maps.ct_stat(ct_stats::ICMP_TRANSLATED).unwrap(), 1);
}

#[test]
fn an_icmpv6_error_from_a_router_on_the_backends_side_keeps_its_source() {
    let mut rig = rig6();
    let (_, out) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, 42000, VIP6, VPORT, SYN));
    let backend = verify6(&out).dst;
    let error = icmp6_error(ROUTER6, CLIENT6, (ICMPV6_TIME_EXCEEDED, 0, 0), &out);
    let (_, out) = rig.run_tc(program_names::TC_EGRESS, &error);
    assert_eq!(
        verify_icmp6(&out),
        SeenIcmp6 {
            outer: (ROUTER6, CLIENT6),
            message: (ICMPV6_TIME_EXCEEDED, 0, 0),
            quoted_src: (CLIENT6, 42000),
            quoted_dst: (VIP6, VPORT),
        },
        "about the SYN the client sent to the VIP, not to {backend}"
    );
}

/// Path MTU discovery through the VIP: a hop on the client's side answers a reply that is too
/// big with Packet Too Big, sent to the VIP; the backend that sent the reply must get it, or
/// its TCP never lowers its segment size and the transfer stalls.
#[test]
fn packet_too_big_for_an_ipv6_reply_goes_to_the_backend_that_sent_it() {
    let mut rig = rig6();
    let (_, out) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, 42100, VIP6, VPORT, SYN));
    let backend = verify6(&out).dst;
    let syn_ack = Pkt6::tcp(backend, TPORT, CLIENT6, 42100, SYN | ACK).with_seq(5000, 1001);
    egress(&mut rig, &syn_ack);
    // A large response segment as the client's side saw it (from the VIP); once plain, once
    // behind a destination options header (the quoted chain is walked as the packet's is).
    for ext in [&[][..], &[NEXTHDR_DEST][..]] {
        let sent = Pkt6::tcp(backend, TPORT, CLIENT6, 42100, ACK)
            .with_seq(5001, 1001)
            .with_payload(&[b'x'; 1400])
            .with_ext(ext);
        let reply = Pkt6 {
            src: VIP6,
            sport: VPORT,
            ..sent.clone()
        }
        .build();
        for sender in [ROUTER6, CLIENT6] {
            let error = icmp6_error(sender, VIP6, (ICMPV6_PACKET_TOO_BIG, 0, 1280), &reply);
            let (verdict, out) = rig.run_tc(program_names::TC_INGRESS, &error);
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(out.len(), error.len());
            assert_eq!(
                verify_icmp6(&out),
                SeenIcmp6 {
                    outer: (sender, backend),
                    message: (ICMPV6_PACKET_TOO_BIG, 0, 1280),
                    quoted_src: (backend, TPORT),
                    quoted_dst: (CLIENT6, 42100),
                },
                "the backend's TCP finds its connection (ext {ext:?})"
            );
            // The error quotes the segment's first 1232 bytes, so its checksum cannot be
            // verified alone: the quote must be, byte for byte, what the backend sent.
            let quoted = &out[54 + 8..];
            assert_eq!(quoted, &sent.build()[14..14 + quoted.len()]);
        }
    }
    assert_eq!(rig.maps.ct_stat(ct_stats::ICMP_TRANSLATED).unwrap(), 4);
}

#[test]
fn icmpv6_about_other_traffic_and_informational_messages_pass_untouched() {
    let mut rig = rig6();
    let stranger = Pkt6::udp(CLIENT6, 6000, OTHER6, 53, b"x").build();
    for program in [program_names::TC_EGRESS, program_names::TC_INGRESS] {
        let error = icmp6_error(OTHER6, CLIENT6, (ICMPV6_DEST_UNREACH, 4, 0), &stranger);
        assert_eq!(rig.run_tc(program, &error), (TC_ACT_OK, error.clone()));
    }
    // An echo request to the VIP is no error; nor is a too-big whose quoted packet is a later
    // fragment (no ports to match).
    let echo = icmp6_error(CLIENT6, VIP6, (ICMPV6_ECHO_REQUEST, 0, 7), &stranger[..14]);
    let later = fragment6(VIP6, CLIENT6, (PROTO_TCP, 185, false), 7, &[0; 64]);
    let too_big = icmp6_error(ROUTER6, VIP6, (ICMPV6_PACKET_TOO_BIG, 0, 1280), &later);
    for frame in [echo, too_big] {
        assert_eq!(
            rig.run_tc(program_names::TC_INGRESS, &frame),
            (TC_ACT_OK, frame.clone())
        );
    }
    assert_eq!(rig.maps.ct_stat(ct_stats::ICMP_TRANSLATED).unwrap(), 0);
}

/// A fragment of an IPv6 datagram: a fragment header (next header, offset in 8-byte units,
/// more fragments) with id `id`, then `data`.
fn fragment6(
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

/// (source, destination) of an output frame.
fn addrs6(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let addr = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap());
    (addr(&frame[22..38]), addr(&frame[38..54]))
}

/// `Pkt6` builds a first fragment (offset 0, more fragments) with this id.
const FIRST_FRAGMENT_ID: u32 = 0x1234;

#[test]
fn a_fragmented_ipv6_request_follows_its_first_fragment_and_strays_are_dropped() {
    let mut rig = rig6();
    let first = Pkt6::udp(CLIENT6, 5500, VIP6, VPORT, &[1; 64]).with_ext(&[NEXTHDR_FRAGMENT]);
    let (verdict, out) = ingress(&mut rig, &first);
    assert_eq!(verdict, TC_ACT_OK);
    let backend = verify6(&out).dst;
    backend_index(backend);
    let second = fragment6(
        CLIENT6,
        VIP6,
        (PROTO_UDP, 9, false),
        FIRST_FRAGMENT_ID,
        &[2; 40],
    );
    let (verdict, out) = rig.run_tc(program_names::TC_INGRESS, &second);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs6(&out), (CLIENT6, backend));
    assert_eq!(
        &out[54..],
        &second[54..],
        "fragment header and data untouched"
    );
    assert_eq!(rig.maps.ct_stat(ct_stats::FRAGMENT_TRANSLATED).unwrap(), 1);
    // A later fragment whose first was never seen (another id, another source) cannot be
    // steered: dropped and counted. One to another address is none of ours.
    for (src, id) in [
        (CLIENT6, FIRST_FRAGMENT_ID + 1),
        (OTHER6, FIRST_FRAGMENT_ID),
    ] {
        let stray = fragment6(src, VIP6, (PROTO_UDP, 9, false), id, &[3; 40]);
        assert_eq!(rig.run_tc(program_names::TC_INGRESS, &stray).0, TC_ACT_SHOT);
    }
    assert_eq!(rig.drops(DropReason::Fragment), 2);
    assert_eq!(rig.maps.ct_stat(ct_stats::FRAGMENT_UNKNOWN).unwrap(), 2);
    let elsewhere = fragment6(CLIENT6, OTHER6, (PROTO_UDP, 9, false), 77, &[3; 40]);
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &elsewhere),
        (TC_ACT_OK, elsewhere.clone())
    );
}

#[test]
fn a_fragmented_ipv6_reply_leaves_from_the_vip_fragment_by_fragment() {
    let mut rig = rig6();
    let (_, out) = ingress(
        &mut rig,
        &Pkt6::udp(CLIENT6, 5400, VIP6, VPORT, b"big please"),
    );
    let backend = verify6(&out).dst;
    let first = Pkt6::udp(backend, TPORT, CLIENT6, 5400, &[7; 64]).with_ext(&[NEXTHDR_FRAGMENT]);
    let (_, out) = egress(&mut rig, &first);
    let seen = verify6(&out);
    assert_eq!((seen.src, seen.sport), (VIP6, VPORT));
    let second = fragment6(
        backend,
        CLIENT6,
        (PROTO_UDP, 9, false),
        FIRST_FRAGMENT_ID,
        &[8; 40],
    );
    let (verdict, out) = rig.run_tc(program_names::TC_EGRESS, &second);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs6(&out), (VIP6, CLIENT6));
    assert_eq!(&out[54..], &second[54..]);
    // Another datagram's fragment (another id) is not ours to change.
    let other = fragment6(backend, CLIENT6, (PROTO_UDP, 9, false), 99, &[8; 40]);
    assert_eq!(
        rig.run_tc(program_names::TC_EGRESS, &other),
        (TC_ACT_OK, other.clone())
    );
}

#[test]
fn an_atomic_fragment_is_steered_as_the_whole_datagram_it_is() {
    // Offset 0 and no more fragments (RFC 6946): the UDP header and all its data are here.
    let mut rig = rig6();
    let udp = Pkt6::udp(CLIENT6, 5600, VIP6, VPORT, b"whole").build();
    let mut atomic = fragment6(CLIENT6, VIP6, (PROTO_UDP, 0, false), 5, &udp[54..]);
    let (verdict, out) = rig.run_tc(program_names::TC_INGRESS, &atomic);
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify6(&out);
    backend_index(seen.dst);
    assert_eq!(seen.dport, TPORT);
    // Nothing was remembered for later fragments: there are none.
    atomic[14 + 40 + 3] = 9 << 3;
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &atomic).0,
        TC_ACT_SHOT
    );
}
