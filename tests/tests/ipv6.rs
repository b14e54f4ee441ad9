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

use geosteer_common::{
    Addr6, DropReason, PROTO_TCP, PROTO_UDP, ct_stats, map_names, program_names,
};
use packets::{
    ACK, BACKENDS, PSH_ACK, Rig, SYN, TC_ACT_OK, TC_ACT_SHOT, TPORT, VIP, VPORT, XDP_DROP,
    XDP_PASS, v6::*,
};

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
fn udp_to_an_ipv6_vip_is_steered_and_a_zero_checksum_stays_zero() {
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

    // A 0 checksum (RFC 6935: a tunnel's UDP may carry none; a receiver that does not allow
    // it drops the datagram) is steered both ways and stays 0, as over IPv4: not dropped by
    // the balancer, and never given a checksum computed from nothing.
    let mut zero = Pkt6::udp(CLIENT6, 5354, VIP6, VPORT, b"query");
    zero.udp_zero_checksum = true;
    let (verdict, out) = ingress(&mut rig, &zero);
    assert_eq!(verdict, TC_ACT_OK);
    let backend = addrs6(&out).1;
    backend_index(backend);
    assert_eq!((udp_ports(&out), udp_check(&out)), ((5354, TPORT), 0));
    let mut answer = Pkt6::udp(backend, TPORT, CLIENT6, 5354, b"answer");
    answer.udp_zero_checksum = true;
    let (verdict, out) = egress(&mut rig, &answer);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs6(&out), (VIP6, CLIENT6));
    assert_eq!((udp_ports(&out), udp_check(&out)), ((VPORT, 5354), 0));
}

/// (source port, destination port) of a frame's UDP header right after the fixed header.
fn udp_ports(frame: &[u8]) -> (u16, u16) {
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    (port(54), port(56))
}

fn udp_check(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[60], frame[61]])
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

    // A routing header with segments left: the VIP would be a waypoint, not the destination
    // (and the L4 checksum is over the final one): dropped, counted, not steered.
    let before = rig.drops(DropReason::Truncated);
    let mut waypoint = Pkt6::tcp(CLIENT6, 40015, VIP6, VPORT, SYN)
        .with_ext(&[NEXTHDR_ROUTING])
        .build();
    waypoint[14 + 40 + 3] = 1;
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &waypoint).0,
        TC_ACT_SHOT
    );
    assert_eq!(rig.drops(DropReason::Truncated), before + 1);

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

/// (source, destination) of an output frame.
fn addrs6(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let addr = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap());
    (addr(&frame[22..38]), addr(&frame[38..54]))
}

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
    // Only TCP and UDP fragments are ours: a large ping's later fragment to the VIP passes.
    let ping = fragment6(CLIENT6, VIP6, (NEXTHDR_ICMPV6, 9, false), 78, &[4; 40]);
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &ping),
        (TC_ACT_OK, ping.clone())
    );
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

#[test]
fn xdp_steers_ipv6_requests_and_leaves_fragments_and_icmpv6_to_tc() {
    let mut rig = rig6();
    // No FIB route in a test run (no ingress device): the translated packet is passed to the
    // stack, which routes it.
    let (verdict, out) = rig.run_xdp(&Pkt6::tcp(CLIENT6, 43100, VIP6, VPORT, SYN).build());
    assert_eq!(verdict, XDP_PASS);
    let seen = verify6(&out);
    backend_index(seen.dst);
    assert_eq!((seen.src, seen.sport, seen.dport), (CLIENT6, 43100, TPORT));
    // The same flow through TC afterwards agrees (shared conntrack).
    let (_, out) = ingress(&mut rig, &Pkt6::tcp(CLIENT6, 43100, VIP6, VPORT, ACK));
    assert_eq!(verify6(&out).dst, seen.dst);
    // UDP behind an extension header.
    let udp = Pkt6::udp(CLIENT6, 5700, VIP6, VPORT, b"hi").with_ext(&[NEXTHDR_DEST]);
    let (verdict, out) = rig.run_xdp(&udp.build());
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(verify6(&out).dport, TPORT);

    // Fragments and ICMPv6 errors go on to TC untouched, as does what is not for a VIP.
    let reply = Pkt6::tcp(VIP6, VPORT, CLIENT6, 43100, ACK).build();
    for frame in [
        Pkt6::udp(CLIENT6, 5701, VIP6, VPORT, &[1; 64])
            .with_ext(&[NEXTHDR_FRAGMENT])
            .build(),
        fragment6(CLIENT6, VIP6, (PROTO_UDP, 9, false), 7, &[2; 40]),
        icmp6_error(ROUTER6, VIP6, (ICMPV6_PACKET_TOO_BIG, 0, 1280), &reply),
        Pkt6::tcp(CLIENT6, 43101, OTHER6, VPORT, SYN).build(),
    ] {
        assert_eq!(rig.run_xdp(&frame), (XDP_PASS, frame.clone()));
    }
    // A zero UDP checksum stays 0; a packet to a VIP that cannot be steered is dropped,
    // counted.
    let mut zero = Pkt6::udp(CLIENT6, 5702, VIP6, VPORT, b"x");
    zero.udp_zero_checksum = true;
    let (verdict, out) = rig.run_xdp(&zero.build());
    assert_eq!(verdict, XDP_PASS);
    assert_eq!((udp_ports(&out), udp_check(&out)), ((5702, TPORT), 0));
    let before = rig.drops(DropReason::Truncated);
    let mut waypoint = Pkt6::tcp(CLIENT6, 43103, VIP6, VPORT, SYN)
        .with_ext(&[NEXTHDR_ROUTING])
        .build();
    waypoint[14 + 40 + 3] = 2;
    assert_eq!(rig.run_xdp(&waypoint).0, XDP_DROP);
    assert_eq!(rig.drops(DropReason::Truncated), before + 1);

    // Without the IPv6 program in its slot, XDP passes IPv6 on untouched: TC steers it.
    let mut tails =
        aya::maps::ProgramArray::try_from(rig.ebpf.map_mut(map_names::XDP_TAIL_CALLS).unwrap())
            .unwrap();
    tails.clear_index(&program_names::TAIL_XDP6).unwrap();
    let syn = Pkt6::tcp(CLIENT6, 43102, VIP6, VPORT, SYN).build();
    assert_eq!(rig.run_xdp(&syn), (XDP_PASS, syn.clone()));
}
