//! The kernel programs on synthetic packets through BPF_PROG_TEST_RUN: each case sets up maps,
//! runs one packet through the real, verifier-loaded program and checks the verdict and the
//! output packet. Output checksums are verified by an independent parser (etherparse).
//!
//! Needs root (CAP_BPF); run through `cargo xtask test`.

mod packets;

use std::net::Ipv4Addr;

use aya::programs::SchedClassifier;
use etherparse::{Ipv4Header, UdpHeader};
use geosteer::frontend::Frontend;
use geosteer::programmer::{DesiredBackend, DesiredService, ServiceSettings};
use geosteer_common::{APP_PROTOCOL_HTTP1, DropReason, PROTO_TCP, PROTO_UDP, program_names};
use packets::*;

#[test]
fn tcp_dnat_then_reverse_nat_with_valid_checksums() {
    let mut rig = Rig::new();
    let (verdict, out) = rig.ingress(&syn(40000));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify(&out);
    assert!(
        BACKENDS.contains(&seen.dst),
        "DNAT target {} is a backend",
        seen.dst
    );
    assert_eq!((seen.src, seen.sport, seen.dport), (CLIENT, 40000, TPORT));

    let backend = seen.dst;
    let reply = Pkt::tcp(backend, TPORT, CLIENT, 40000, SYN | ACK);
    let (verdict, out) = rig.egress(&reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        verify(&out),
        Seen {
            src: VIP,
            dst: CLIENT,
            sport: VPORT,
            dport: 40000
        }
    );

    // The rest of the flow keeps its backend.
    let (_, out) = rig.ingress(
        &Pkt::tcp(CLIENT, 40000, VIP, VPORT, PSH_ACK).with_payload(b"GET / HTTP/1.1\r\n\r\n"),
    );
    assert_eq!(verify(&out).dst, backend);
}

#[test]
fn packets_not_for_a_vip_pass_untouched() {
    let mut rig = Rig::new();
    let cases = [
        ("other address", Pkt::tcp(CLIENT, 40001, OTHER, VPORT, SYN)),
        ("VIP, other port", Pkt::tcp(CLIENT, 40001, VIP, 81, SYN)),
        (
            "direct to a backend",
            Pkt::tcp(CLIENT, 40001, BACKENDS[0], TPORT, SYN),
        ),
        ("UDP to other port", Pkt::udp(CLIENT, 40001, VIP, 53, b"x")),
    ];
    for (name, pkt) in cases {
        let input = pkt.build();
        let (verdict, out) = rig.run_tc(program_names::TC_INGRESS, &input);
        assert_eq!((verdict, &out), (TC_ACT_OK, &input), "ingress: {name}");
    }
    // A direct client → backend connection's reply is not reverse-NATed, even when its
    // backend also serves the VIP (reverse NAT is keyed on the translated flow).
    let direct_reply = Pkt::tcp(BACKENDS[0], TPORT, CLIENT, 40002, SYN | ACK).build();
    let (verdict, out) = rig.run_tc(program_names::TC_EGRESS, &direct_reply);
    assert_eq!((verdict, out), (TC_ACT_OK, direct_reply));

    // The client reuses the source port of a finished VIP flow for a direct connection to the
    // same backend: the direct connection's replies must not be reverse-NATed to the VIP. (A
    // new connection has a new initial sequence number; the VIP flow's own SYN arriving here
    // after XDP translated it has the flow's, and keeps the entry.)
    let (_, out) = rig.ingress(&syn(40003));
    let backend = verify(&out).dst;
    let direct_syn = Pkt::tcp(CLIENT, 40003, backend, TPORT, SYN)
        .with_seq(90_000, 0)
        .build();
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &direct_syn),
        (TC_ACT_OK, direct_syn)
    );
    let direct_reply = Pkt::tcp(backend, TPORT, CLIENT, 40003, SYN | ACK).build();
    assert_eq!(
        rig.run_tc(program_names::TC_EGRESS, &direct_reply),
        (TC_ACT_OK, direct_reply)
    );
}

#[test]
fn udp_dnat_and_reverse_nat_including_zero_checksum() {
    let mut rig = Rig::new();
    let (verdict, out) = rig.ingress(&Pkt::udp(CLIENT, 5353, VIP, VPORT, b"ping"));
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify(&out);
    assert!(BACKENDS.contains(&seen.dst));
    assert_eq!(seen.dport, TPORT);
    let (verdict, out) = rig.egress(&Pkt::udp(seen.dst, TPORT, CLIENT, 5353, b"pong"));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        verify(&out),
        Seen {
            src: VIP,
            dst: CLIENT,
            sport: VPORT,
            dport: 5353
        }
    );

    // UDP checksum 0 ("none") must stay 0 (RFC 768), not become a wrong checksum.
    let mut no_sum = Pkt::udp(CLIENT, 5354, VIP, VPORT, b"ping");
    no_sum.udp_no_checksum = true;
    let (_, out) = rig.ingress(&no_sum);
    let (ip, rest) = Ipv4Header::from_slice(&out[14..]).unwrap();
    let (udp, _) = UdpHeader::from_slice(&rest[..ip.payload_len().unwrap() as usize]).unwrap();
    assert_eq!(udp.checksum, 0);
    assert_eq!(udp.destination_port, TPORT);
}

#[test]
fn ip_options_shift_the_l4_header_and_are_handled() {
    let mut rig = Rig::new();
    let mut pkt = syn(40010);
    pkt.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
    let (verdict, out) = rig.ingress(&pkt);
    assert_eq!(verdict, TC_ACT_OK);
    let seen = verify(&out);
    assert!(BACKENDS.contains(&seen.dst));
    assert_eq!((seen.sport, seen.dport), (40010, TPORT));
}

#[test]
fn fragments_and_truncated_packets_get_documented_verdicts() {
    let mut rig = Rig::new();
    // The first fragment of a datagram to a VIP carries the ports: steered like any packet;
    // a later fragment (no ports) follows it (icmp.rs has the details).
    let mut frag = syn(40020);
    frag.frag = 0x2000; // more fragments
    let (verdict, out) = rig.ingress(&frag);
    assert_eq!(verdict, TC_ACT_OK);
    let backend = verify(&out).dst;
    assert!(BACKENDS.contains(&backend));
    let mut later = frag.clone();
    later.frag = 0x0010; // offset 128, last fragment (its "TCP header" is payload to the kernel)
    let (verdict, out) = rig.ingress(&later);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        Ipv4Header::from_slice(&out[14..]).unwrap().0.destination,
        backend.octets()
    );
    // A later fragment whose first was never seen: no ports, no translation → dropped, counted.
    let mut stray = later.clone();
    stray.src = OTHER;
    let before = rig.drops(DropReason::Fragment);
    assert_eq!(rig.ingress(&stray).0, TC_ACT_SHOT);
    assert_eq!(rig.drops(DropReason::Fragment), before + 1);
    // A fragment to another address is not ours.
    let mut other = frag.clone();
    other.dst = OTHER;
    let input = other.build();
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &input),
        (TC_ACT_OK, input)
    );

    // TCP header cut short, to a VIP → dropped, never rewritten.
    let full = syn(40021).build();
    let cut = &full[..14 + 20 + 8];
    let before = rig.drops(DropReason::Truncated);
    assert_eq!(rig.run_tc(program_names::TC_INGRESS, cut).0, TC_ACT_SHOT);
    assert_eq!(rig.drops(DropReason::Truncated), before + 1);
    // An IPv4 header cut short cannot be matched to a VIP: passed on untouched (the stack
    // drops it as malformed).
    // (The kernel's TC test run refuses frames this short, so XDP shows the verdict.)
    let stub = &full[..14 + 12];
    assert_eq!(rig.run_xdp(stub), (XDP_PASS, stub.to_vec()));
    // IHL below 5 to a VIP: malformed → dropped.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(
        rig.run_tc(program_names::TC_INGRESS, &bad_ihl).0,
        TC_ACT_SHOT
    );
    // XDP hands fragments to TC ingress (attached beside it), which follows the fragment map.
    assert_eq!(rig.xdp(&frag).0, XDP_PASS);
}

#[test]
fn http_status_lines_are_counted_per_backend() {
    let mut rig = Rig::with_settings(ServiceSettings {
        app_protocol: APP_PROTOCOL_HTTP1,
        ..Default::default()
    });
    let mut conn = Conn::open(&mut rig, 40030);
    let backend = conn.backend;
    let state = |rig: &Rig| rig.state(backend);

    conn.exchange(
        &mut rig,
        b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    );
    conn.exchange(
        &mut rig,
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
    );
    let s = state(&rig);
    assert_eq!((s.consecutive_5xx, s.consecutive_gateway), (2, 2));
    conn.exchange(
        &mut rig,
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    );
    let s = state(&rig);
    assert_eq!(
        (s.consecutive_5xx, s.consecutive_gateway),
        (3, 0),
        "500 is not a gateway error"
    );
    conn.exchange(&mut rig, OK_200);
    assert_eq!(state(&rig).consecutive_5xx, 0, "a success ends the run");
    conn.exchange(
        &mut rig,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let c = rig.counters(backend);
    assert_eq!(c.responses, [0, 1, 0, 1, 3], "1xx..5xx");
    assert_eq!(c.http_skipped, 0);
}

#[test]
fn refused_and_timed_out_connects_count_as_connect_failures() {
    let mut rig = Rig::new();
    // Refused: RST in answer to the SYN.
    let (_, out) = rig.ingress(&syn(40040));
    let backend = verify(&out).dst;
    let id = rig.backend_id(backend, PROTO_TCP);
    rig.egress(&refusal(backend, 40040));
    let c = rig.maps.backend_counters(id).unwrap();
    assert_eq!((c.connect_failures, c.resets), (1, 0));
    assert_eq!(
        rig.maps
            .backend_state
            .get(&id, 0)
            .unwrap()
            .consecutive_gateway,
        1
    );

    // Established then reset: a reset, not a connect failure.
    let (_, out) = rig.ingress(&syn(40041));
    let b2 = verify(&out).dst;
    let id2 = rig.backend_id(b2, PROTO_TCP);
    let before = rig.maps.backend_counters(id2).unwrap();
    rig.egress(&Pkt::tcp(b2, TPORT, CLIENT, 40041, SYN | ACK));
    rig.egress(&Pkt::tcp(b2, TPORT, CLIENT, 40041, RST | ACK));
    let after = rig.maps.backend_counters(id2).unwrap();
    assert_eq!(
        (
            after.resets - before.resets,
            after.connect_failures - before.connect_failures
        ),
        (1, 0)
    );

    // SYN retransmitted after the connect timeout with no SYN-ACK: counted once.
    rig.settings.connect_timeout_ns = 1;
    rig.set_services(&[
        (VIP, VPORT, PROTO_TCP, &[1, 1, 1]),
        (VIP, VPORT, PROTO_UDP, &[1, 1, 1]),
    ]);
    let (_, out) = rig.ingress(&syn(40042));
    let b3 = verify(&out).dst;
    let id3 = rig.backend_id(b3, PROTO_TCP);
    let before = rig.maps.backend_counters(id3).unwrap().connect_failures;
    rig.suspected_timeouts();
    rig.ingress(&syn(40042));
    rig.ingress(&syn(40042));
    assert_eq!(rig.suspected_timeouts(), [id3], "reported once");
    assert!(rig.confirm_timeouts(b3, 1));
    assert_eq!(
        rig.maps.backend_counters(id3).unwrap().connect_failures,
        before + 1
    );
    // Answered in time: no failure.
    let (_, out) = rig.ingress(&syn(40043));
    let b4 = verify(&out).dst;
    let id4 = rig.backend_id(b4, PROTO_TCP);
    let before = rig.maps.backend_counters(id4).unwrap().connect_failures;
    rig.egress(&Pkt::tcp(b4, TPORT, CLIENT, 40043, SYN | ACK));
    rig.ingress(&syn(40043));
    assert_eq!(rig.suspected_timeouts(), Vec::<u32>::new());
    assert_eq!(
        rig.maps.backend_counters(id4).unwrap().connect_failures,
        before
    );
}

#[test]
fn ejected_backends_get_no_new_flows_and_keep_existing_ones() {
    let mut rig = Rig::new();
    let (_, out) = rig.ingress(&syn(41000));
    let pinned_backend = verify(&out).dst;
    let ejected = BACKENDS[0];
    rig.eject(ejected, PROTO_TCP);
    let mut seen = std::collections::BTreeMap::new();
    for port in 42000..42300 {
        let (_, out) = rig.ingress(&syn(port));
        *seen.entry(verify(&out).dst).or_insert(0) += 1;
    }
    assert!(
        !seen.contains_key(&ejected),
        "ejected backend got new flows: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "the other two share the load: {seen:?}");
    // An established flow keeps its backend even if that backend is ejected.
    let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, 41000, VIP, VPORT, ACK));
    assert_eq!(verify(&out).dst, pinned_backend);
}

#[test]
fn weights_are_followed_and_flows_survive_table_changes() {
    let mut rig = Rig::new();
    rig.set_services(&[(VIP, VPORT, PROTO_TCP, &[1, 1, 2])]);
    let mut first = std::collections::BTreeMap::new();
    let mut counts = std::collections::BTreeMap::new();
    for port in 20000..24000u16 {
        let (_, out) = rig.ingress(&syn(port));
        let dst = verify(&out).dst;
        first.insert(port, dst);
        *counts.entry(dst).or_insert(0u32) += 1;
    }
    let share = |ip: Ipv4Addr| counts[&ip] as f64 / 4000.0;
    assert!(
        (share(BACKENDS[2]) - 0.5).abs() < 0.04,
        "weight 2 of 4: {counts:?}"
    );
    assert!(
        (share(BACKENDS[0]) - 0.25).abs() < 0.04,
        "weight 1 of 4: {counts:?}"
    );

    // New weights: established flows (conntrack) keep their backend; new flows follow the
    // new table.
    rig.set_services(&[(VIP, VPORT, PROTO_TCP, &[1, 0, 0])]);
    for port in (20000..24000u16).step_by(97) {
        let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, port, VIP, VPORT, ACK));
        assert_eq!(
            verify(&out).dst,
            first[&port],
            "flow from port {port} moved"
        );
    }
    for port in 30000..30100u16 {
        let (_, out) = rig.ingress(&syn(port));
        assert_eq!(verify(&out).dst, BACKENDS[0]);
    }
    // A service with no backend that can take new flows drops them, and says why.
    rig.set_services(&[(VIP, VPORT, PROTO_TCP, &[])]);
    let before = rig.drops(DropReason::NoBackend);
    assert_eq!(rig.ingress(&syn(30500)).0, TC_ACT_SHOT);
    assert_eq!(rig.drops(DropReason::NoBackend), before + 1);
    // And a removed backend's flows are re-steered rather than sent to a dead address.
    rig.set_services(&[(VIP, VPORT, PROTO_TCP, &[0, 1, 0])]);
    let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, 30000, VIP, VPORT, ACK));
    assert_eq!(verify(&out).dst, BACKENDS[1]);
    rig.forget_flow(&syn(30000));
}

#[test]
fn xdp_dnat_with_valid_checksums() {
    let mut rig = Rig::new();
    // No FIB route in a test run (no ingress device): the rewritten packet is passed to the
    // stack, which routes it.
    let (verdict, out) = rig.xdp(&syn(43000));
    assert_eq!(verdict, XDP_PASS);
    let seen = verify(&out);
    assert!(BACKENDS.contains(&seen.dst));
    assert_eq!((seen.src, seen.sport, seen.dport), (CLIENT, 43000, TPORT));
    // Same flow through TC afterwards agrees (shared conntrack).
    let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, 43000, VIP, VPORT, ACK));
    assert_eq!(verify(&out).dst, seen.dst);
    // UDP, including a checksum-less datagram.
    let (verdict, out) = rig.xdp(&Pkt::udp(CLIENT, 5400, VIP, VPORT, b"hello"));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(verify(&out).dport, TPORT);
    // Not for a VIP: untouched.
    let pkt = Pkt::tcp(CLIENT, 43001, OTHER, VPORT, SYN);
    let (verdict, out) = rig.xdp(&pkt);
    assert_eq!((verdict, out), (XDP_PASS, pkt.build()));
}

/// Table swaps under load: one thread flips the service between disjoint backend sets while
/// the other runs new flows through the program. Every packet must land on a backend of the
/// generation before or after the swap it raced with — never on a third set, never on a
/// half-written table.
#[test]
fn swaps_never_steer_outside_old_and_new_sets() {
    let mut rig = Rig::new();
    let sets: [&[u32]; 3] = [&[1, 0, 0], &[0, 1, 0], &[0, 0, 1]];
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Ipv4Addr)>();
    let swaps = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    rig.set_services(&[(VIP, VPORT, PROTO_TCP, sets[0])]);
    let prog_fd = {
        let prog: &mut SchedClassifier = rig
            .ebpf
            .program_mut(program_names::TC_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        prog.fd().unwrap().try_clone().unwrap()
    };
    let swaps_reader = swaps.clone();
    let packets = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let packets_writer = packets.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_reader = stop.clone();
    let runner = std::thread::spawn(move || {
        let mut results = Vec::new();
        let mut i = 0u32;
        while !stop_reader.load(std::sync::atomic::Ordering::SeqCst) && i < 2_000_000 {
            i += 1;
            let port = 1024 + (i % 60000) as u16;
            let pkt = Pkt::tcp(CLIENT, port, VIP, VPORT, SYN)
                .with_payload(&i.to_be_bytes())
                .build();
            let before = swaps_reader.load(std::sync::atomic::Ordering::SeqCst);
            let mut out = vec![0u8; pkt.len() + 64];
            let r = geosteer_tests::prog_test_run(&prog_fd, &pkt, &mut out).expect("test run");
            let after = swaps_reader.load(std::sync::atomic::Ordering::SeqCst);
            let dst = verify(&out[..r]).dst;
            results.push((before, after, dst));
            packets_writer.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        drop(tx);
        results
    });
    // At least 60 swaps and 20,000 packets: a swap rarely waits now (a new table goes into
    // free chunks), so the swaps go on until the packets have raced enough of them — and
    // the table map (4,096 chunks, 9 per table) is gone through several times, so retired
    // tables' chunks are reused after their grace periods while packets run.
    let mut n = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let enough = |n: u64| n >= 60 && packets.load(std::sync::atomic::Ordering::SeqCst) >= 20_000;
    while !enough(n) && std::time::Instant::now() < deadline {
        n += 1;
        // Announce the swap before making it: a packet that read `before = n` may see set n.
        swaps.store(n, std::sync::atomic::Ordering::SeqCst);
        rig.set_services(&[(VIP, VPORT, PROTO_TCP, sets[(n % 3) as usize])]);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let results = runner.join().unwrap();
    drop(rx);
    assert!(n >= 60, "only {n} swaps during the run");
    assert!(
        results.len() > 1000,
        "only {} packets ran during the swaps",
        results.len()
    );
    let racing = results.iter().filter(|(b, a, _)| a > b).count();
    eprintln!(
        "{} packets, {n} swaps, {racing} packets overlapped a swap",
        results.len()
    );
    let set_backend = |k: u64| BACKENDS[(k % 3) as usize];
    for (before, after, dst) in results {
        // Generation k (k = swap count) serves set k % 3; swap k+1 is announced before written.
        let allowed: Vec<Ipv4Addr> = (before.saturating_sub(1)..=after)
            .map(set_backend)
            .collect();
        assert!(
            allowed.contains(&dst),
            "packet between swaps {before}..{after} went to {dst}, allowed {allowed:?}"
        );
    }
}

/// Consecutive 5xx at the limit eject the backend in the kernel, at once, within the service's
/// ejection budget (maxEjectionPercent); beyond the budget nothing is ejected.
#[test]
fn consecutive_5xx_eject_in_the_kernel_within_the_budget() {
    let mut rig = Rig::new();
    let desired = DesiredService {
        name: "limits".into(),
        key: Frontend::new(VIP, VPORT, PROTO_TCP),
        key6: None,
        backends: BACKENDS
            .iter()
            .map(|ip| DesiredBackend {
                addr: (*ip).into(),
                addr6: None,
                port: TPORT.to_be(),
                weight: 1,
                eject_after_5xx: 2,
                eject_after_gateway: 0,
                flags: 0,
                group: 0,
            })
            .collect(),
        settings: ServiceSettings {
            app_protocol: APP_PROTOCOL_HTTP1,
            max_ejected: 1,
            ..Default::default()
        },
    };
    rig.programmer.apply(&mut rig.maps, &[desired]).unwrap();
    let service_id = rig.programmer.service(&desired_key()).unwrap().id;

    // Open one connection to each backend.
    let mut conns = std::collections::BTreeMap::new();
    for port in 44000..44300u16 {
        let conn = Conn::open(&mut rig, port);
        conns.entry(conn.backend).or_insert(conn);
    }
    assert_eq!(conns.len(), 3);
    let mut fail = |rig: &mut Rig, backend: Ipv4Addr| {
        conns
            .get_mut(&backend)
            .unwrap()
            .exchange(rig, UNAVAILABLE_503);
    };
    let state = |rig: &Rig, ip: Ipv4Addr| {
        rig.maps
            .backend_state
            .get(&rig.backend_id(ip, PROTO_TCP), 0)
            .unwrap()
    };

    fail(&mut rig, BACKENDS[0]);
    assert_eq!(
        state(&rig, BACKENDS[0]).ejected,
        0,
        "one 5xx is below the limit"
    );
    fail(&mut rig, BACKENDS[0]);
    let s = state(&rig, BACKENDS[0]);
    assert_eq!(s.ejected, 1, "second consecutive 5xx ejects");
    assert!(s.ejected_at_ns > 0);
    // The very next new connections avoid it.
    for port in 45000..45100u16 {
        let (_, out) = rig.ingress(&syn(port));
        assert_ne!(verify(&out).dst, BACKENDS[0]);
    }
    // Budget used up: another failing backend stays in (strict maxEjectionPercent).
    fail(&mut rig, BACKENDS[1]);
    fail(&mut rig, BACKENDS[1]);
    fail(&mut rig, BACKENDS[1]);
    assert_eq!(state(&rig, BACKENDS[1]).ejected, 0);
    assert_eq!(
        rig.maps
            .service_state
            .get(&service_id, 0)
            .unwrap()
            .ejections,
        1,
        "one ejection on the books"
    );
    // A refused ejection resets the counter (Envoy), so the run starts over.
    let s = state(&rig, BACKENDS[1]);
    assert!(
        s.consecutive_5xx < 2,
        "counter after refused ejections: {}",
        s.consecutive_5xx
    );
}

fn desired_key() -> Frontend {
    Frontend::new(VIP, VPORT, PROTO_TCP)
}

/// resetOnEject: the agent forgets an ejected backend's flows; their next packet is steered
/// anew (to a healthy backend, whose RST makes keep-alive clients reconnect).
#[test]
fn forgetting_an_ejected_backends_flows_re_steers_them() {
    let mut rig = Rig::new();
    let mut pinned = Vec::new();
    for port in 46000..46300u16 {
        let (_, out) = rig.ingress(&syn(port));
        if verify(&out).dst == BACKENDS[0] {
            pinned.push(port);
        }
    }
    assert!(
        pinned.len() > 50,
        "{} flows on the first backend",
        pinned.len()
    );
    let id = rig.backend_id(BACKENDS[0], PROTO_TCP);
    rig.eject(BACKENDS[0], PROTO_TCP);
    // Without forgetting, established flows stay put.
    let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, pinned[0], VIP, VPORT, ACK));
    assert_eq!(verify(&out).dst, BACKENDS[0]);
    let forgotten = rig.maps.forget_flows_now(id, false).unwrap();
    assert_eq!(forgotten, pinned.len());
    for port in pinned {
        let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, port, VIP, VPORT, ACK));
        assert_ne!(
            verify(&out).dst,
            BACKENDS[0],
            "flow from port {port} still pinned"
        );
    }
}

/// Clients reuse source ports: a SYN on the 5-tuple of a finished connection is a new
/// connection and follows the current table and ejections, not the old flow's backend; the old
/// backend's late packets are no longer reverse-NATed into it.
#[test]
fn a_reused_source_port_is_a_new_connection() {
    let mut rig = Rig::new();
    let port = 47000;
    let (_, out) = rig.ingress(&syn(port));
    let first = verify(&out).dst;
    rig.egress(&Pkt::tcp(first, TPORT, CLIENT, port, SYN | ACK));
    rig.eject(first, PROTO_TCP);
    // Mid-connection packets stay with the (now ejected) backend, and so does a SYN on the
    // open tuple: it is no new connection while the flow is open.
    let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, port, VIP, VPORT, ACK));
    assert_eq!(verify(&out).dst, first);
    let (_, out) = rig.ingress(&syn(port));
    assert_eq!(verify(&out).dst, first, "a SYN on an open tuple moved it");
    // The connection closes (FIN both ways); the next connection from the same port is new.
    rig.ingress(&Pkt::tcp(CLIENT, port, VIP, VPORT, FIN | ACK));
    rig.egress(&Pkt::tcp(first, TPORT, CLIENT, port, FIN | ACK));
    let (_, out) = rig.ingress(&syn(port));
    let second = verify(&out).dst;
    assert_ne!(
        second, first,
        "a new connection went to the ejected backend"
    );
    let late = Pkt::tcp(first, TPORT, CLIENT, port, ACK).build();
    assert_eq!(
        rig.run_tc(program_names::TC_EGRESS, &late),
        (TC_ACT_OK, late),
        "old backend's packet rewritten"
    );
    let (_, out) = rig.egress(&Pkt::tcp(second, TPORT, CLIENT, port, SYN | ACK));
    assert_eq!(
        verify(&out),
        Seen {
            src: VIP,
            dst: CLIENT,
            sport: VPORT,
            dport: port
        }
    );

    // Not ejected: a reused port still follows the table (same Maglev slot, same backend), and
    // a retransmitted SYN keeps its backend.
    let port = 47001;
    let (_, out) = rig.ingress(&syn(port));
    let b = verify(&out).dst;
    let (_, out) = rig.ingress(&syn(port));
    assert_eq!(verify(&out).dst, b);
}

/// `sessionAffinity: ClientIP`: every new connection of a client goes to the backend of its
/// previous one, other clients still spread; a backend that leaves rotation (ejected) or gets
/// no share (weight 0) ends the affinity; it expires `timeout` after the client's last new
/// connection.
#[test]
fn session_affinity_keeps_a_client_on_a_backend_that_takes_new_flows() {
    let backend_of = |rig: &mut Rig, src: Ipv4Addr, port: u16| {
        let (_, out) = rig.ingress(&Pkt::tcp(src, port, VIP, VPORT, SYN));
        verify(&out).dst
    };
    let spread = |rig: &mut Rig, src: Ipv4Addr, ports: std::ops::Range<u16>| {
        ports
            .map(|port| backend_of(rig, src, port))
            .collect::<std::collections::BTreeSet<_>>()
    };
    // Control: without affinity the same client's connections spread.
    let mut plain = Rig::new();
    assert_eq!(spread(&mut plain, CLIENT, 40000..40060).len(), 3);

    let mut rig = Rig::with_settings(ServiceSettings {
        affinity_timeout_s: 1,
        ..Default::default()
    });
    let first = backend_of(&mut rig, CLIENT, 41000);
    assert_eq!(
        spread(&mut rig, CLIENT, 41001..41060),
        [first].into(),
        "one client, one backend"
    );
    let others: std::collections::BTreeSet<Ipv4Addr> = (1..=60u8)
        .map(|i| backend_of(&mut rig, Ipv4Addr::new(198, 18, 1, i), 42000))
        .collect();
    assert_eq!(others.len(), 3, "other clients still spread: {others:?}");

    // Its backend is ejected: the client moves, and sticks to its new backend.
    rig.eject(first, PROTO_TCP);
    let second = backend_of(&mut rig, CLIENT, 43000);
    assert_ne!(second, first);
    assert_eq!(spread(&mut rig, CLIENT, 43001..43030), [second].into());

    // The policy gives that backend no share (a table without it): the client moves again.
    let weights: Vec<u32> = BACKENDS.iter().map(|b| u32::from(*b != second)).collect();
    rig.set_services(&[
        (VIP, VPORT, PROTO_TCP, &weights),
        (VIP, VPORT, PROTO_UDP, &[1, 1, 1]),
    ]);
    let third = backend_of(&mut rig, CLIENT, 44000);
    assert_ne!(third, second, "weight 0 ends the affinity");

    // Quiet for longer than the timeout: a new connection is steered afresh (a port whose
    // Maglev pick, as a rig without affinity shows it, is another backend).
    let mut timed = Rig::with_settings(ServiceSettings {
        affinity_timeout_s: 1,
        ..Default::default()
    });
    let affine = backend_of(&mut timed, CLIENT, 46000);
    let (port, elsewhere) = (46001..46100)
        .map(|port| (port, backend_of(&mut plain, CLIENT, port)))
        .find(|(_, b)| *b != affine)
        .expect("some port hashes to another backend");
    assert_eq!(
        backend_of(&mut timed, CLIENT, port + 1000),
        affine,
        "still affine"
    );
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(
        backend_of(&mut timed, CLIENT, port),
        elsewhere,
        "after the timeout the hash decides"
    );
}

/// Every probed Maglev slot out (a whole priority failed a moment ago): the fallback scan of
/// the backend list finds the one in rotation; the verifier's work stays far under its limit.
#[test]
fn the_fallback_scan_finds_the_backend_in_rotation() {
    use aya::programs::SchedClassifier;
    let mut rig = Rig::new();
    rig.set_services(&[
        (VIP, VPORT, PROTO_TCP, &[1, 1, 0]),
        (VIP, VPORT, PROTO_UDP, &[1, 1, 1]),
    ]);
    rig.eject(BACKENDS[0], PROTO_TCP);
    rig.eject(BACKENDS[1], PROTO_TCP);
    for port in 47000..47020 {
        let (_, out) = rig.ingress(&syn(port));
        assert_eq!(
            verify(&out).dst,
            BACKENDS[2],
            "the only backend in rotation (it has no slot)"
        );
    }
    let program: &SchedClassifier = rig
        .ebpf
        .program(program_names::TC_INGRESS)
        .unwrap()
        .try_into()
        .unwrap();
    let verified = program
        .info()
        .unwrap()
        .verified_instruction_count()
        .expect("the kernel reports verified instructions");
    println!("verified instructions, tc ingress: {verified}");
    assert!(verified < 500_000, "{verified}");
}

/// Collects the kernel's log records (aya-log) as text.
#[derive(Clone, Default)]
struct Records(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// A flood of drops is counted in full but logged at most 100 times per second per CPU: a
/// client aiming at a VIP without endpoints costs the log ring, the agent and its log little.
#[test]
fn a_flood_of_drops_is_counted_in_full_and_logged_within_a_budget() {
    let mut rig = Rig::at_log_level(geosteer::loader::LevelFilter::DEBUG);
    let records = Records::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut rig.ebpf, records.clone())
        .expect("the log ring");
    rig.set_services(&[(VIP, VPORT, PROTO_TCP, &[])]);
    let before = rig.drops(DropReason::NoBackend);
    let started = std::time::Instant::now();
    for port in 40000..40300u16 {
        assert_eq!(rig.ingress(&syn(port)).0, TC_ACT_SHOT);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "the flood fits in one budget window"
    );
    assert_eq!(rig.drops(DropReason::NoBackend), before + 300);
    logger.flush();
    let records = records.0.lock().unwrap().clone();
    let cpus = geosteer::memory::possible_cpus().unwrap() as usize;
    assert!(
        (100..=100 * cpus).contains(&records.len()),
        "{} records for 300 drops on {cpus} CPUs",
        records.len()
    );
    assert!(
        records
            .iter()
            .all(|r| r.starts_with("DEBUG geosteer::kernel: dropped ")
                && r.ends_with(&format!(" -> {VIP}:{VPORT} (proto 6): no_backend"))),
        "{records:?}"
    );
}
