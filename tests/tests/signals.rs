//! The health signals on adversarial packets, through the real programs (BPF_PROG_TEST_RUN):
//! benign traffic must not trip them and a client must not forge them (docs/SEMANTICS.md, "What
//! counts as an error"). Each case is one rule.
//!
//! Needs root (CAP_BPF); run through `cargo xtask test`.

mod packets;

use std::net::Ipv4Addr;

use geosteer::{dataplane::Dataplane as _, programmer::ServiceSettings};
use geosteer_common::{
    APP_PROTOCOL_DETECT, APP_PROTOCOL_HTTP1, APP_PROTOCOL_OPAQUE, BackendState, ON_EJECT_AUTO,
    ON_EJECT_KEEP, PROTO_TCP, PROTO_UDP, Settings,
};
use packets::*;

const SECOND: u64 = 1_000_000_000;

fn http() -> ServiceSettings {
    ServiceSettings {
        app_protocol: APP_PROTOCOL_HTTP1,
        connect_timeout_ns: 10 * SECOND,
        max_ejected: 3,
        on_eject: ON_EJECT_AUTO,
        affinity_timeout_s: 0,
    }
}

fn runs(rig: &Rig, backend: Ipv4Addr) -> (u64, u64) {
    let s = rig.state(backend);
    (s.consecutive_5xx, s.consecutive_gateway)
}

#[test]
fn a_body_segment_that_looks_like_a_503_is_not_a_status() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 50000);
    conn.send(&mut rig, b"GET /capture.txt HTTP/1.1\r\n\r\n");
    conn.reply(
        &mut rig,
        b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\nfirst part of the body",
    );
    // The next body segment happens to start like a status line.
    conn.reply(
        &mut rig,
        b"HTTP/1.1 503 Service Unavailable\r\n\r\n(captured)",
    );
    conn.reply(&mut rig, b"HTTP/1.0 502 Bad Gateway\r\n");
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    let c = rig.counters(conn.backend);
    assert_eq!(c.responses, [0, 1, 0, 0, 0], "one response, a 200");
}

#[test]
fn a_retransmitted_response_start_counts_once() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 50010);
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    let start = conn.backend_seq;
    conn.reply(&mut rig, UNAVAILABLE_503);
    conn.reply_at(&mut rig, start, UNAVAILABLE_503);
    conn.reply_at(&mut rig, start, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1));
    // The client retransmits its request: it re-arms nothing.
    conn.client_seq -= 18;
    conn.send_acking(&mut rig, b"GET / HTTP/1.1\r\n\r\n", start);
    conn.reply_at(&mut rig, start, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1));
    assert_eq!(rig.counters(conn.backend).responses[4], 1);
}

#[test]
fn keep_alive_requests_each_read_their_own_status() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 50020);
    for _ in 0..3 {
        conn.exchange(&mut rig, UNAVAILABLE_503);
    }
    assert_eq!(runs(&rig, conn.backend), (3, 3));
    // A response in two segments, then the next request.
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 500 Int"); // body bytes
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1));
}

#[test]
fn interim_responses_are_not_final() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 50030);
    conn.send(
        &mut rig,
        b"POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n",
    );
    conn.reply(&mut rig, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.send(&mut rig, b"body data"); // not a request start
    conn.reply(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1), "the final 503 counts");
    let c = rig.counters(conn.backend);
    assert_eq!((c.responses[0], c.responses[4]), (1, 1));
}

#[test]
fn unknown_boundaries_are_skipped_and_counted() {
    let mut rig = Rig::with_settings(http());

    // Pipelining: the second request goes out before the first response.
    let mut conn = Conn::open(&mut rig, 50040);
    conn.send(&mut rig, b"GET /a HTTP/1.1\r\n\r\n");
    conn.send(&mut rig, b"GET /b HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, OK_200);
    conn.reply(&mut rig, UNAVAILABLE_503); // the second response: its start was not known
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(rig.counters(conn.backend).http_skipped, 1);

    // A request sent while the backend still had bytes in flight (the client acknowledges
    // less than the backend sent).
    let mut conn = Conn::open(&mut rig, 50041);
    conn.exchange(&mut rig, OK_200);
    conn.reply(&mut rig, b"unsolicited bytes");
    let acked = conn.backend_seq - 17;
    let before = rig.counters(conn.backend).http_skipped;
    conn.send_acking(&mut rig, b"GET / HTTP/1.1\r\n\r\n", acked);
    conn.reply(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(rig.counters(conn.backend).http_skipped, before + 1);

    // A status line split across segments.
    let mut conn = Conn::open(&mut rig, 50042);
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    let before = rig.counters(conn.backend).http_skipped;
    conn.reply(&mut rig, b"HTTP/1.1 5");
    conn.reply(&mut rig, b"03 Service Unavailable\r\n\r\n");
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(rig.counters(conn.backend).http_skipped, before + 1);

    // The awaited start never passed (the segment starts past it).
    let mut conn = Conn::open(&mut rig, 50043);
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    let before = rig.counters(conn.backend).http_skipped;
    conn.reply_at(&mut rig, conn.backend_seq + 100, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(rig.counters(conn.backend).http_skipped, before + 1);
}

#[test]
fn a_response_start_inside_a_segment_is_found() {
    // A retransmission may carry old bytes and the awaited start together.
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 50050);
    conn.exchange(&mut rig, OK_200);
    let old = conn.backend_seq - 8;
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    let mut segment = OK_200[OK_200.len() - 8..].to_vec();
    segment.extend_from_slice(UNAVAILABLE_503);
    conn.reply_at(&mut rig, old, &segment);
    assert_eq!(runs(&rig, conn.backend), (1, 1));
}

#[test]
fn a_lost_syn_is_no_connect_failure() {
    let mut rig = Rig::with_settings(http());
    let (_, out) = rig.ingress(&syn(50100));
    let backend = verify(&out).dst;
    // Retransmitted after 1 s, 3 s (Linux), well inside the 10 s connect timeout.
    rig.ingress(&syn(50100));
    rig.ingress(&syn(50100));
    assert_eq!(rig.counters(backend).connect_failures, 0);
    assert_eq!(runs(&rig, backend), (0, 0));
}

#[test]
fn syn_with_other_flags_is_no_connection_attempt() {
    // A 1 ns connect timeout: any retransmitted SYN of a real attempt would count.
    let mut rig = Rig::with_settings(ServiceSettings {
        connect_timeout_ns: 1,
        ..http()
    });
    for (i, flags) in [SYN | FIN, SYN | RST, SYN | ACK, SYN | FIN | ACK]
        .into_iter()
        .enumerate()
    {
        let port = 50200 + i as u16;
        let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, port, VIP, VPORT, flags));
        let backend = verify(&out).dst;
        // The real SYN that follows is the first of its connection, not a retransmission.
        rig.ingress(&syn(port));
        assert_eq!(
            rig.counters(backend).connect_failures,
            0,
            "flags {flags:#04x} then SYN counted a connect failure"
        );
    }
    for b in BACKENDS {
        assert_eq!(runs(&rig, b), (0, 0));
    }
}

#[test]
fn a_syn_on_an_established_tuple_neither_moves_nor_resets_it() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 50300);
    let id = rig.backend_id(conn.backend, PROTO_TCP);
    rig.eject(conn.backend, PROTO_TCP);
    let (_, out) = rig.ingress(&syn(50300));
    assert_eq!(verify(&out).dst, conn.backend);
    rig.maps
        .write_backend_state(id, &BackendState::default())
        .unwrap();
    // The flow's state survived: its next request is still tracked.
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1));
}

#[test]
fn refused_and_timed_out_connects_are_gateway_errors_that_count_once() {
    let mut rig = Rig::with_settings(ServiceSettings {
        connect_timeout_ns: 1,
        ..http()
    });
    let (_, out) = rig.ingress(&syn(50400));
    let refused = verify(&out).dst;
    rig.egress(&refusal(refused, 50400));
    rig.egress(&refusal(refused, 50400));
    assert_eq!(runs(&rig, refused), (1, 1));
    assert_eq!(rig.counters(refused).connect_failures, 1);

    // Timed out: a SYN retransmitted past the timeout (1 ns here), counted once.
    let port = (50401..50500)
        .find(|&p| {
            let (_, out) = rig.ingress(&syn(p));
            verify(&out).dst != refused
        })
        .unwrap();
    let (_, out) = rig.ingress(&syn(port));
    let timed_out = verify(&out).dst;
    rig.ingress(&syn(port));
    rig.ingress(&syn(port));
    // Reported once, and not counted until the agent's own connection fails too.
    assert_eq!(
        rig.suspected_timeouts(),
        [rig.backend_id(timed_out, PROTO_TCP)]
    );
    assert_eq!(rig.counters(timed_out).connect_failures, 0);
    assert!(rig.confirm_timeouts(timed_out, 1));
    assert_eq!(rig.counters(timed_out).connect_failures, 1);
    assert_eq!(runs(&rig, timed_out), (1, 1), "a gateway error");
}

/// A SYN the backend drops (crafted with a bad checksum) and repeated past the connect timeout
/// looks like a timeout to the kernel; only the agent's check can tell. Until it counts, the
/// backend's counters do not move; a count for an endpoint the id no longer names is refused.
#[test]
fn a_suspected_connect_timeout_counts_only_when_confirmed() {
    let mut rig = Rig::with_settings(ServiceSettings {
        connect_timeout_ns: 1,
        ..http()
    });
    let (_, out) = rig.ingress(&syn(50600));
    let backend = verify(&out).dst;
    rig.ingress(&syn(50600));
    assert_eq!(rig.suspected_timeouts().len(), 1);
    assert_eq!(runs(&rig, backend), (0, 0));
    assert_eq!(rig.counters(backend).connect_failures, 0);
    // Three suspicions confirmed by one check: three errors (in one test run, repeated).
    assert!(rig.confirm_timeouts(backend, 3));
    assert_eq!(rig.counters(backend).connect_failures, 3);
    assert_eq!(runs(&rig, backend), (3, 3));
    // The id with another endpoint: nothing counted.
    let id = rig.backend_id(backend, PROTO_TCP);
    let other = Ipv4Addr::new(198, 51, 100, 99);
    assert!(
        !rig.maps
            .count_connect_timeouts(id, other.into(), TPORT.to_be(), 1)
            .unwrap()
    );
    assert!(
        !rig.maps
            .count_connect_timeouts(9999, backend.into(), TPORT.to_be(), 1)
            .unwrap()
    );
    assert_eq!(rig.counters(backend).connect_failures, 3);

    // Dismissed (the backend accepted the agent's connection): an accepted connection to the
    // kernel, so a SYN sent before it raises no suspicion when repeated.
    let earlier = (50601..50900)
        .find(|&p| {
            let (_, out) = rig.ingress(&syn(p));
            verify(&out).dst == backend
        })
        .unwrap();
    assert!(
        rig.maps
            .dismiss_connect_timeouts(id, backend.into(), TPORT.to_be())
            .unwrap()
    );
    assert!(rig.state(backend).last_accept_ns > 0);
    rig.suspected_timeouts();
    rig.ingress(&syn(earlier));
    assert_eq!(rig.suspected_timeouts(), Vec::<u32>::new());
    assert_eq!(rig.counters(backend).connect_failures, 3);
}

#[test]
fn opaque_tcp_connect_success_resets_both_counters() {
    let mut rig = Rig::with_settings(ServiceSettings {
        app_protocol: APP_PROTOCOL_OPAQUE,
        ..http()
    });
    let (_, out) = rig.ingress(&syn(50500));
    let backend = verify(&out).dst;
    rig.egress(&refusal(backend, 50500));
    assert_eq!(runs(&rig, backend), (1, 1));
    let port = (50501..50700)
        .find(|&p| {
            let (_, out) = rig.ingress(&syn(p));
            verify(&out).dst == backend
        })
        .unwrap();
    rig.egress(&Pkt::tcp(backend, TPORT, CLIENT, port, SYN | ACK));
    assert_eq!(
        runs(&rig, backend),
        (0, 0),
        "tcp_proxy: a connect is a success"
    );

    // HTTP/1.x: the router's connect success is no result; responses decide.
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 50600);
    conn.exchange(&mut rig, UNAVAILABLE_503);
    let b = conn.backend;
    let port = (50601..50800)
        .find(|&p| {
            let (_, out) = rig.ingress(&syn(p));
            verify(&out).dst == b
        })
        .unwrap();
    rig.egress(&Pkt::tcp(b, TPORT, CLIENT, port, SYN | ACK));
    assert_eq!(runs(&rig, b), (1, 1));
}

#[test]
fn undeclared_ports_detect_the_protocol_per_flow() {
    let mut rig = Rig::with_settings(ServiceSettings {
        app_protocol: APP_PROTOCOL_DETECT,
        ..http()
    });
    // HTTP/1.x from the first request bytes: the status counts, the connect does not.
    let mut web = Conn::open(&mut rig, 50700);
    web.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, web.backend), (1, 1));

    // A TLS ClientHello: opaque, so the pending connect success resets the counters, and a
    // later payload that looks like a 503 is never read.
    let mut tls = (50701..50790)
        .map(|port| Conn::open(&mut rig, port))
        .find(|conn| conn.backend == web.backend)
        .unwrap();
    assert_eq!(runs(&rig, web.backend), (1, 1), "not decided yet");
    tls.send(&mut rig, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert_eq!(runs(&rig, web.backend), (0, 0));
    tls.reply(&mut rig, UNAVAILABLE_503);
    tls.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    tls.reply(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, web.backend), (0, 0));

    // A server-first protocol (the backend speaks first): opaque.
    let mut banner = Conn::open(&mut rig, 50790);
    let before = rig.counters(banner.backend).responses;
    banner.reply(&mut rig, b"220 smtp.example ESMTP\r\n");
    banner.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    banner.reply(&mut rig, UNAVAILABLE_503);
    assert_eq!(rig.counters(banner.backend).responses, before);
}

#[test]
fn errors_from_an_ejected_backend_are_ignored() {
    // onEject keep: the connection stays on the ejected backend, whose answers are ignored.
    let mut rig = Rig::with_settings(ServiceSettings {
        on_eject: ON_EJECT_KEEP,
        ..http()
    });
    let mut conn = Conn::open(&mut rig, 50800);
    rig.eject(conn.backend, PROTO_TCP);
    conn.exchange(&mut rig, UNAVAILABLE_503);
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(rig.counters(conn.backend).ignored_while_ejected, 2);
}

#[test]
fn the_flow_hash_is_keyed_by_the_node_seed() {
    let mut rig = Rig::new();
    let placement = |rig: &mut Rig| -> Vec<Ipv4Addr> {
        (51000..51200u16)
            .map(|port| {
                let (_, out) = rig.ingress(&syn(port));
                let dst = verify(&out).dst;
                rig.forget_flow(&syn(port));
                dst
            })
            .collect()
    };
    let set_seed = |rig: &mut Rig, seed: u64| {
        rig.maps
            .write_settings(&Settings {
                hash_seed: seed,
                ..Default::default()
            })
            .unwrap();
    };
    set_seed(&mut rig, 0x0123_4567_89ab_cdef);
    let a = placement(&mut rig);
    assert_eq!(a, placement(&mut rig), "the same seed keeps placement");
    set_seed(&mut rig, 0xfedc_ba98_7654_3210);
    let b = placement(&mut rig);
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    // Three equal backends: about a third agree by chance.
    assert!(
        same < 110,
        "{same} of 200 flows kept their backend under another seed"
    );
}

#[test]
fn udp_flows_move_off_an_ejected_backend_and_idle_out() {
    let mut rig = Rig::new();
    let datagram = |port| Pkt::udp(CLIENT, port, VIP, VPORT, b"query");
    let (_, out) = rig.ingress(&datagram(52000));
    let first = verify(&out).dst;
    let id = rig.backend_id(first, PROTO_UDP);
    rig.eject(first, PROTO_UDP);
    let (_, out) = rig.ingress(&datagram(52000));
    let second = verify(&out).dst;
    assert_ne!(second, first, "the next datagram left the ejected backend");
    // Replies from the old backend are no longer rewritten into the flow.
    let late = Pkt::udp(first, TPORT, CLIENT, 52000, b"late");
    let (_, out) = rig.egress(&late);
    assert_eq!(verify(&out).src, first);

    // Idle timeout: with 1 ns every datagram finds its flow expired and is steered anew (by
    // the table, so to the same backend; the flow's creation time is new).
    rig.maps
        .write_backend_state(id, &BackendState::default())
        .unwrap();
    rig.maps
        .write_settings(&Settings {
            udp_timeout_ns: 1,
            ..Default::default()
        })
        .unwrap();
    let new_flows = |rig: &Rig| -> u64 {
        BACKENDS
            .iter()
            .map(|b| {
                let id = rig.backend_id(*b, PROTO_UDP);
                rig.maps.backend_counters(id).unwrap().new_flows
            })
            .sum()
    };
    let before = new_flows(&rig);
    rig.ingress(&datagram(52000));
    rig.ingress(&datagram(52000));
    let after = new_flows(&rig);
    assert_eq!(
        after - before,
        2,
        "each datagram after the idle timeout is a new flow"
    );
}

#[test]
fn an_http_flow_of_an_ejected_backend_drains_at_its_next_request() {
    for (on_eject, moves) in [(ON_EJECT_AUTO, true), (ON_EJECT_KEEP, false)] {
        let mut rig = Rig::with_settings(ServiceSettings { on_eject, ..http() });
        let mut conn = Conn::open(&mut rig, 53000);
        conn.send(&mut rig, b"GET /big HTTP/1.1\r\n\r\n");
        conn.reply(&mut rig, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        rig.eject(conn.backend, PROTO_TCP);
        // The response in progress completes: the rest of the body still comes back through
        // the VIP, and the client's ACKs still reach the backend.
        let (_, out) = conn.reply(&mut rig, b"0123456789");
        assert_eq!(verify(&out).src, VIP);
        let (_, out) = rig.ingress(
            &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, ACK)
                .with_seq(conn.client_seq, conn.backend_seq),
        );
        assert_eq!(verify(&out).dst, conn.backend);
        // The next request ends the connection (steered anew, where a RST awaits) — or, with
        // onEject keep, stays.
        let (_, out) = conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            verify(&out).dst != conn.backend,
            moves,
            "on_eject {on_eject}: the next request went to {}",
            verify(&out).dst
        );
    }
}

/// Review findings: a RST that does not answer the SYN, and a "retransmission" with another
/// ISN, prove nothing about the backend.
#[test]
fn only_a_rst_answering_the_syn_is_a_refusal_and_only_the_same_isn_retransmits() {
    let mut rig = Rig::with_settings(ServiceSettings {
        connect_timeout_ns: 1,
        ..http()
    });
    // SYN (never answered), then a bare ACK whose RST from the backend acks nothing of ours.
    let (_, out) = rig.ingress(&syn(54000));
    let backend = verify(&out).dst;
    rig.ingress(&Pkt::tcp(CLIENT, 54000, VIP, VPORT, ACK).with_seq(1001, 5555));
    rig.egress(&Pkt::tcp(backend, TPORT, CLIENT, 54000, RST).with_seq(5555, 0));
    rig.egress(&Pkt::tcp(backend, TPORT, CLIENT, 54000, RST | ACK).with_seq(0, 9999));
    assert_eq!(rig.counters(backend).connect_failures, 0);
    // A SYN with another ISN on the waiting tuple is no retransmission.
    rig.ingress(&syn(54000).with_seq(424242, 0));
    assert_eq!(rig.counters(backend).connect_failures, 0);
    // The real retransmission (same ISN) past the timeout is a suspected timeout.
    assert_eq!(rig.suspected_timeouts(), Vec::<u32>::new());
    rig.ingress(&syn(54000));
    assert_eq!(
        rig.suspected_timeouts(),
        [rig.backend_id(backend, PROTO_TCP)]
    );
}

#[test]
fn an_interim_response_sharing_a_segment_with_the_final_headers_arms_nothing() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 54100);
    conn.send(
        &mut rig,
        b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    // 100 Continue and the final response's headers in one segment, then a body that reflects
    // something looking like a status line.
    conn.reply(
        &mut rig,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n",
    );
    conn.reply(&mut rig, b"HTTP/1.1 503 Service Unavailable\r\n\r\n....");
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(rig.counters(conn.backend).http_skipped, 1);
}

#[test]
fn draining_never_cuts_a_request_in_progress() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 54200);
    let request = b"GET / HTTP/1.1\r\n\r\n";
    let request_seq = conn.client_seq;
    conn.send(&mut rig, request);
    rig.eject(conn.backend, PROTO_TCP);
    // The request is retransmitted (its ACK was lost): the backend may be executing it.
    let (_, out) = rig.ingress(
        &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK)
            .with_payload(request)
            .with_seq(request_seq, conn.backend_seq),
    );
    assert_eq!(verify(&out).dst, conn.backend);
    // Its response completes; the next request drains the flow.
    conn.reply(&mut rig, OK_200);
    let (_, out) = conn.send(&mut rig, request);
    assert_ne!(verify(&out).dst, conn.backend);
}

#[test]
fn upgraded_connections_leave_http_on_both_entries_and_go_whole() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 54300);
    conn.send(&mut rig, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
    // WebSocket frames that happen to read like requests and statuses are not HTTP.
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    // onEject's default resets non-HTTP flows: both entries go.
    let id = rig.backend_id(conn.backend, PROTO_TCP);
    assert_eq!(rig.maps.forget_flows_now(id, true).unwrap(), 1);
    let late = Pkt::tcp(conn.backend, TPORT, CLIENT, conn.port, ACK).build();
    assert_eq!(
        rig.run_tc(geosteer_common::program_names::TC_EGRESS, &late),
        (TC_ACT_OK, late),
        "a half of the flow stayed behind"
    );
}

#[test]
fn a_flow_pinned_to_a_reused_backend_id_is_steered_anew() {
    let mut rig = Rig::with_settings(http());
    let conn = Conn::open(&mut rig, 54400);
    let id = rig.backend_id(conn.backend, PROTO_TCP);
    let mut backend = rig.maps.read_backend(id).unwrap();
    backend.addr = u32::from(Ipv4Addr::new(198, 18, 99, 99)).to_be();
    rig.maps.write_backend(id, &backend).unwrap();
    let (_, out) = rig.ingress(&Pkt::tcp(CLIENT, conn.port, VIP, VPORT, ACK));
    assert_ne!(
        verify(&out).dst,
        conn.backend,
        "the stale entry still steered"
    );
}

#[test]
fn a_flow_first_seen_mid_stream_drains_too() {
    let mut rig = Rig::with_settings(http());
    // No SYN seen (an evicted entry): the first packet is mid-stream data.
    let (_, out) = rig.ingress(
        &Pkt::tcp(CLIENT, 54500, VIP, VPORT, PSH_ACK)
            .with_payload(b"GET /a HTTP/1.1\r\n\r\n")
            .with_seq(100, 5000),
    );
    let backend = verify(&out).dst;
    rig.egress(
        &Pkt::tcp(backend, TPORT, CLIENT, 54500, PSH_ACK)
            .with_payload(OK_200)
            .with_seq(5000, 119),
    );
    rig.eject(backend, PROTO_TCP);
    let (_, out) = rig.ingress(
        &Pkt::tcp(CLIENT, 54500, VIP, VPORT, PSH_ACK)
            .with_payload(b"GET /b HTTP/1.1\r\n\r\n")
            .with_seq(119, 5000 + OK_200.len() as u32),
    );
    assert_ne!(verify(&out).dst, backend);
}

/// A SYN crafted to be dropped (or lost) while its backend keeps accepting other connections
/// is no connect timeout: only a backend that answers nobody times out.
#[test]
fn a_syn_unanswered_while_the_backend_accepts_others_is_no_timeout() {
    let mut rig = Rig::with_settings(ServiceSettings {
        connect_timeout_ns: 1,
        ..http()
    });
    let (_, out) = rig.ingress(&syn(55000));
    let backend = verify(&out).dst;
    let other = (55001..55300)
        .find(|&p| {
            let (_, out) = rig.ingress(&syn(p));
            verify(&out).dst == backend
        })
        .unwrap();
    rig.egress(&Pkt::tcp(backend, TPORT, CLIENT, other, SYN | ACK).with_seq(0, 1001));
    rig.suspected_timeouts();
    rig.ingress(&syn(55000)); // retransmitted past the (1 ns) timeout
    assert_eq!(rig.suspected_timeouts(), Vec::<u32>::new());
    // A SYN sent after that acceptance, and unanswered, does time out.
    let late = (55300..55600)
        .find(|&p| {
            let (_, out) = rig.ingress(&syn(p));
            verify(&out).dst == backend
        })
        .unwrap();
    rig.ingress(&syn(late));
    assert_eq!(
        rig.suspected_timeouts(),
        [rig.backend_id(backend, PROTO_TCP)]
    );
}

/// The TCP state a flow's original entry holds.
fn tcp_state(rig: &Rig, conn: &Conn) -> u8 {
    original_entry(rig, conn).tcp_state
}

/// A flow's original (client → VIP) conntrack entry.
fn original_entry(rig: &Rig, conn: &Conn) -> geosteer_common::FlowValue {
    let key = geosteer_common::FlowKey::new(
        u32::from(CLIENT).to_be(),
        u32::from(VIP).to_be(),
        conn.port.to_be(),
        VPORT.to_be(),
        PROTO_TCP,
        geosteer_common::DIR_ORIGINAL,
    );
    rig.maps.conntrack.get(&key, 0).expect("flow tracked")
}

/// A client RST ends a flow only near the client's sequence (RFC 5961 asks the endpoints the
/// same): an off-path spoofer posing as the client must guess it, and cannot drag the window
/// first with a segment far ahead. The client's real RSTs still end the flow, and a backend's
/// RST is taken as it comes (a restarted backend answers with the client's acknowledgement,
/// which may trail far behind on a long path).
#[test]
fn a_client_rst_far_from_the_clients_sequence_ends_nothing() {
    let mut rig = Rig::with_settings(http());
    let ignored = |rig: &Rig| {
        rig.maps
            .ct_stat(geosteer_common::ct_stats::RST_IGNORED)
            .unwrap()
    };
    let mut conn = Conn::open(&mut rig, 55700);
    conn.exchange(&mut rig, OK_200);
    let far = conn.client_seq.wrapping_add(1 << 30);
    // Spoofed as the client: a segment far ahead (forwarded, but it moves nothing), then a RST
    // right after it.
    rig.ingress(
        &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK)
            .with_payload(b"xxxx")
            .with_seq(far, conn.backend_seq),
    );
    rig.ingress(&Pkt::tcp(CLIENT, conn.port, VIP, VPORT, RST).with_seq(far.wrapping_add(4), 0));
    assert_eq!(tcp_state(&rig, &conn), geosteer_common::TCP_ESTABLISHED);
    assert_eq!(ignored(&rig), 1);
    // The flow goes on; a restarted backend's RST, trailing its stream by 4 MiB, ends it.
    conn.exchange(&mut rig, OK_200);
    let before = rig.counters(conn.backend).resets;
    rig.egress(
        &Pkt::tcp(conn.backend, TPORT, CLIENT, conn.port, RST)
            .with_seq(conn.backend_seq.wrapping_sub(4 << 20), 0),
    );
    assert_eq!(tcp_state(&rig, &conn), geosteer_common::TCP_CLOSED);
    assert_eq!(rig.counters(conn.backend).resets, before + 1);

    // The client's own RST: at its next sequence, or trailing it by what is in flight.
    let mut conn = Conn::open(&mut rig, 55701);
    conn.send(&mut rig, &[b'a'; 1000]);
    rig.ingress(
        &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, RST)
            .with_seq(conn.client_seq.wrapping_sub(1000), 0),
    );
    assert_eq!(tcp_state(&rig, &conn), geosteer_common::TCP_CLOSED);
    assert_eq!(ignored(&rig), 1);
}

/// A client that shapes its receive window can pause a response right before bytes it made the
/// backend reflect, then send a request while nothing is in flight. The pause is inside the
/// body the response's head announced, so no response can start there: the reflected bytes are
/// not read as a status.
#[test]
fn a_response_paused_by_the_clients_window_arms_nothing() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 55800);
    conn.send(&mut rig, b"GET /echo?q=HTTP/1.1%20503 HTTP/1.1\r\n\r\n");
    let first = b"HTTP/1.1 200 OK\r\nContent-Length: 46\r\n\r\nyou said: ";
    rig.egress(
        &Pkt::tcp(conn.backend, TPORT, CLIENT, conn.port, ACK)
            .with_payload(first)
            .with_seq(conn.backend_seq, conn.client_seq),
    );
    conn.backend_seq = conn.backend_seq.wrapping_add(first.len() as u32);
    let skipped = rig.counters(conn.backend).http_skipped;
    // The window opens with a "request"; the rest of the write follows.
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
    assert_eq!(
        runs(&rig, conn.backend),
        (0, 0),
        "the reflected bytes were read"
    );
    let c = rig.counters(conn.backend);
    assert_eq!(c.responses, [0, 1, 0, 0, 0], "one response, the 200");
    assert_eq!(
        c.http_skipped,
        skipped + 1,
        "the unknown boundary is counted"
    );
    // The early "request" may be what the backend answers next: nothing more is read on this
    // connection (counted), and a new one reads again.
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(rig.counters(conn.backend).http_skipped, skipped + 2);
    read_on_a_new_connection(&mut rig, conn.backend, 55801);
}

/// A new connection to `backend` (from port `first` on) reads a 503.
fn read_on_a_new_connection(rig: &mut Rig, backend: std::net::Ipv4Addr, first: u16) {
    let before = runs(rig, backend).0;
    for port in first..first + 64 {
        let mut conn = Conn::open(rig, port);
        if conn.backend == backend {
            conn.exchange(rig, UNAVAILABLE_503);
            assert_eq!(runs(rig, backend).0, before + 1, "a new connection reads");
            return;
        }
    }
    panic!("no connection reached {backend}");
}

/// A refusal proves something only on a fresh tuple. A client can open a connection, close our
/// state with a RST the backend ignores (a bad checksum, a sequence outside the backend's
/// window), and SYN again on the same tuple: the backend, still holding the half-open
/// connection, answers with a RST that acknowledges the new SYN. Not counted.
#[test]
fn a_refusal_on_a_reused_tuple_is_not_counted() {
    let mut rig = Rig::with_settings(http());
    let (_, out) = rig.ingress(&syn(55900).with_seq(1_000, 0));
    let backend = verify(&out).dst;
    rig.egress(&Pkt::tcp(backend, TPORT, CLIENT, 55900, SYN | ACK).with_seq(40, 1_001));
    rig.ingress(&Pkt::tcp(CLIENT, 55900, VIP, VPORT, RST).with_seq(1_001, 0));
    let (_, out) = rig.ingress(&syn(55900).with_seq(1_001, 0));
    assert_eq!(verify(&out).dst, backend, "the same backend again");
    rig.egress(&Pkt::tcp(backend, TPORT, CLIENT, 55900, RST | ACK).with_seq(0, 1_002));
    assert_eq!(rig.counters(backend).connect_failures, 0);
    assert_eq!(runs(&rig, backend), (0, 0));
    // On a fresh tuple the same answer is a refusal.
    let (_, out) = rig.ingress(&syn(55901).with_seq(2_000, 0));
    let other = verify(&out).dst;
    rig.egress(&refusal(other, 55901).with_seq(0, 2_001));
    assert_eq!(rig.counters(other).connect_failures, 1);
}

/// A request start that armed nothing (the backend had data in flight) is still a request the
/// backend may be executing: its retransmission, once everything is acknowledged and the
/// backend ejected, must not drain the flow onto another backend.
#[test]
fn a_retransmitted_unarmed_request_is_never_cut() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56300);
    conn.exchange(&mut rig, OK_200);
    let acked = conn.backend_seq;
    conn.reply(&mut rig, b"late bytes");
    let request = b"POST /order HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    let seq = conn.client_seq;
    conn.send_acking(&mut rig, request, acked); // data in flight: not armed
    rig.eject(conn.backend, PROTO_TCP);
    let (_, out) = rig.ingress(
        &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK)
            .with_payload(request)
            .with_seq(seq, conn.backend_seq),
    );
    assert_eq!(verify(&out).dst, conn.backend, "the retransmission was cut");
}

/// The residual of reading at write boundaries: a server that writes a response's head and body
/// apart (Python's http.server) and reflects client bytes at the start of the body. The client
/// sends a "request" as soon as the head has arrived, acknowledging exactly the head: the body
/// is not a response start, because the head said how long the body is.
#[test]
fn a_write_boundary_inside_a_body_is_no_response_start() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56000);
    conn.send(&mut rig, b"GET /echo?q=HTTP/1.1%20503 HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 200 OK\r\nContent-Length: 36\r\n\r\n");
    let skipped = rig.counters(conn.backend).http_skipped;
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
    assert_eq!(
        runs(&rig, conn.backend),
        (0, 0),
        "the reflected body was read"
    );
    let c = rig.counters(conn.backend);
    assert_eq!(c.responses, [0, 1, 0, 0, 0], "one response, the 200");
    assert_eq!(c.http_skipped, skipped + 1, "the early request is counted");
    // The early "request" may be what the backend answers next (it is, here): nothing more is
    // read on this connection, and a new one reads again.
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    read_on_a_new_connection(&mut rig, conn.backend, 56001);
}

/// A response whose end its head does not give (chunked, or read until the connection closes):
/// nothing more is read on that connection, each later request counted as skipped — a missed
/// signal, never a body byte read as a status. A new connection reads again.
#[test]
fn after_a_response_of_unknown_length_nothing_more_is_read_on_the_connection() {
    let mut rig = Rig::with_settings(http());
    for (port, head) in [
        (
            56100,
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        ),
        (
            56101,
            &b"HTTP/1.1 200 OK\r\nServer: until-close\r\n\r\n"[..],
        ),
        (
            56102,
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
        ),
    ] {
        let mut conn = Conn::open(&mut rig, port);
        conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
        conn.reply(&mut rig, head);
        conn.reply(&mut rig, b"0\r\n\r\n");
        let skipped = rig.counters(conn.backend).http_skipped;
        conn.exchange(&mut rig, UNAVAILABLE_503);
        conn.exchange(&mut rig, UNAVAILABLE_503);
        assert_eq!(runs(&rig, conn.backend), (0, 0), "{port}");
        assert_eq!(
            rig.counters(conn.backend).http_skipped,
            skipped + 2,
            "{port}: each later request counted"
        );
    }
    let mut conn = Conn::open(&mut rig, 56103);
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1), "a new connection reads");
}

/// Bodiless responses end with their head, whatever Content-Length says: a HEAD request's
/// response and a 304. The next request's response is read, and a body that never comes is not
/// waited for.
#[test]
fn bodiless_responses_end_with_their_head() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56200);
    conn.send(&mut rig, b"HEAD /big HTTP/1.1\r\n\r\n");
    conn.reply(
        &mut rig,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
    );
    conn.exchange(
        &mut rig,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 700\r\n\r\n",
    );
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1));
    assert_eq!(rig.counters(conn.backend).responses, [0, 1, 1, 0, 1]);

    // A GET's response with the same head has a body: a "request" right after the head is
    // early, and the body is not read.
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56201);
    conn.send(&mut rig, b"GET /big HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 200 OK\r\nContent-Length: 36\r\n\r\n");
    conn.exchange(&mut rig, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
    assert_eq!(runs(&rig, conn.backend), (0, 0), "the body was read");
}

/// A CONNECT's 2xx opens a tunnel: what follows is opaque on both entries, never read.
#[test]
fn a_connect_tunnel_is_opaque() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56300);
    conn.send(&mut rig, b"CONNECT db:5432 HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 200 Connection established\r\n\r\n");
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
    assert_eq!(
        original_entry(&rig, &conn).app_protocol,
        APP_PROTOCOL_OPAQUE
    );
}

/// Two versions of the same request bytes: the agent saw a HEAD first, the backend (which
/// dropped that copy — a bad checksum) took the GET sent after it at the same sequence number.
/// The echo's head is not a HEAD response: its body follows, and a "request" sent once the
/// head is in must not have that body read as a status.
#[test]
fn a_second_version_of_a_request_makes_its_framing_unknown() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56400);
    let start = conn.client_seq;
    conn.send(&mut rig, b"HEAD /echo?q=HTTP/1.1%20503 HTTP/1.1\r\n\r\n");
    conn.client_seq = start;
    // As long as the HEAD, so the two frame differently only by their method.
    conn.send(&mut rig, b"GET /echo?q=HTTP/1.1%20503X HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 200 OK\r\nContent-Length: 36\r\n\r\n");
    conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    conn.reply(&mut rig, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
    assert_eq!(runs(&rig, conn.backend), (0, 0), "the echoed body was read");
    assert_eq!(rig.counters(conn.backend).responses, [0, 1, 0, 0, 0]);
}

/// A copy that repeats the request exactly (a retransmission) changes nothing: the next
/// request's response is read.
#[test]
fn a_retransmitted_request_keeps_its_framing() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56500);
    let request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    let start = conn.client_seq;
    conn.send(&mut rig, request);
    conn.client_seq = start;
    conn.send(&mut rig, request);
    conn.reply(&mut rig, OK_200);
    // A request whose body follows in a segment of its own, then its response.
    conn.send(&mut rig, b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
    conn.send(&mut rig, b"hello");
    conn.reply(&mut rig, OK_200);
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1));
    assert_eq!(rig.counters(conn.backend).http_skipped, 0);
}

/// Pipelining, seen or hidden in one segment: the client's second request may be answered
/// before anything it sends later (a HEAD sent while that response is held back would otherwise
/// frame it as bodiless). Nothing after the first response is read on the connection.
#[test]
fn after_pipelined_requests_nothing_more_is_read_on_the_connection() {
    for (port, hidden) in [(56600, false), (56601, true)] {
        let mut rig = Rig::with_settings(http());
        let mut conn = Conn::open(&mut rig, port);
        if hidden {
            conn.send(
                &mut rig,
                b"GET /a HTTP/1.1\r\n\r\nGET /echo?q=HTTP/1.1%20503 HTTP/1.1\r\n\r\n",
            );
        } else {
            conn.send(&mut rig, b"GET /a HTTP/1.1\r\n\r\n");
            conn.send(&mut rig, b"GET /echo?q=HTTP/1.1%20503 HTTP/1.1\r\n\r\n");
        }
        conn.reply(&mut rig, OK_200);
        conn.send(&mut rig, b"HEAD / HTTP/1.1\r\n\r\n");
        conn.reply(&mut rig, b"HTTP/1.1 200 OK\r\nContent-Length: 36\r\n\r\n");
        conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
        conn.reply(&mut rig, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(runs(&rig, conn.backend), (0, 0), "hidden: {hidden}");
        assert_eq!(
            rig.counters(conn.backend).responses,
            [0, 1, 0, 0, 0],
            "hidden: {hidden}: only the first response is read"
        );
    }
}

/// Bytes past the last response's end that no armed request asked for leave the next
/// response's start unknown, however many bytes later a request arrives (sequence numbers wrap:
/// an end kept forever would one day match again).
#[test]
fn bytes_past_a_responses_end_leave_the_next_start_unknown() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 56700);
    conn.exchange(&mut rig, OK_200);
    conn.reply(&mut rig, b"unsolicited");
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
}

/// Client bytes the backend may take otherwise than the agent saw them: data on a SYN (a
/// backend drops it on an open connection; without Fast Open it drops it on the opening SYN
/// too), urgent data (taken out of the stream), a segment out of reach or ahead of a gap, and a
/// copy that is not the armed request again (here, before any request: the protocol is still
/// being detected). After any of them no response is read on the connection — a HEAD seen by
/// the agent where the backend answered a GET would frame its body as the next response.
#[test]
fn client_bytes_the_backend_may_see_otherwise_stop_reading_the_connection() {
    const URG: u8 = 0x20;
    type Sends = fn(&mut Rig, &mut Conn);
    let cases: [(&str, u16, Sends); 5] = [
        ("data on a SYN", 56800, |rig, conn| {
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, SYN | ACK)
                    .with_payload(b"HEAD /f HTTP/1.1\r\n\r\n")
                    .with_seq(conn.client_seq, conn.backend_seq),
            );
        }),
        ("urgent data", 56801, |rig, conn| {
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK | URG)
                    .with_payload(b"HEAD /f HTTP/1.1\r\n\r\n")
                    .with_seq(conn.client_seq, conn.backend_seq),
            );
            conn.client_seq += 20;
        }),
        ("out of reach", 56802, |rig, conn| {
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK)
                    .with_payload(b"HEAD /f HTTP/1.1\r\n\r\n")
                    .with_seq(conn.client_seq + (2 << 20), conn.backend_seq),
            );
        }),
        ("ahead of a gap", 56803, |rig, conn| {
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK)
                    .with_payload(b"HEAD /f HTTP/1.1\r\n\r\n")
                    .with_seq(conn.client_seq + 100, conn.backend_seq),
            );
            conn.client_seq += 120;
        }),
        ("a copy while detecting", 56804, |rig, conn| {
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK)
                    .with_payload(b"GET")
                    .with_seq(conn.client_seq, conn.backend_seq),
            );
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, PSH_ACK)
                    .with_payload(b"HEAD /f HTTP/1.1\r\n\r\n")
                    .with_seq(conn.client_seq, conn.backend_seq),
            );
            conn.client_seq += 3;
        }),
    ];
    for (why, port, odd) in cases {
        let settings = if why == "a copy while detecting" {
            ServiceSettings {
                app_protocol: APP_PROTOCOL_DETECT,
                ..http()
            }
        } else {
            http()
        };
        let mut rig = Rig::with_settings(settings);
        let mut conn = Conn::open(&mut rig, port);
        odd(&mut rig, &mut conn);
        conn.exchange(&mut rig, UNAVAILABLE_503);
        conn.exchange(&mut rig, UNAVAILABLE_503);
        assert_eq!(runs(&rig, conn.backend), (0, 0), "{why}: a status was read");
    }
}

/// A SYN-ACK that answers another ISN than the one recorded (the recorded SYN may never have
/// reached the backend) leaves the client's byte positions unknown: nothing is read.
#[test]
fn a_syn_ack_for_another_isn_stops_reading_the_connection() {
    let mut rig = Rig::with_settings(http());
    let (_, out) = rig.ingress(&syn(56900).with_seq(7_000, 0));
    let backend = verify(&out).dst;
    rig.egress(
        &Pkt::tcp(backend, TPORT, CLIENT, 56900, SYN | ACK).with_seq(0x1000, 7_000 + (2 << 20) + 1),
    );
    let mut conn = Conn {
        port: 56900,
        backend,
        client_seq: 7_001,
        backend_seq: 0x1001,
    };
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (0, 0));
}

/// A body segment that begins like a request while a response is awaited is a request start
/// the agent cannot place (pipelined, or a body): nothing after the awaited response is read.
#[test]
fn a_request_start_while_a_response_is_awaited_stops_reading_after_it() {
    let mut rig = Rig::with_settings(http());
    let mut conn = Conn::open(&mut rig, 57000);
    conn.send(&mut rig, b"HEAD /f HTTP/1.1\r\nContent-Length: 8\r\n\r\n");
    conn.send(&mut rig, b"GET / HT");
    conn.reply(&mut rig, UNAVAILABLE_503);
    assert_eq!(
        runs(&rig, conn.backend),
        (1, 1),
        "the awaited response is read"
    );
    conn.exchange(&mut rig, UNAVAILABLE_503);
    assert_eq!(runs(&rig, conn.backend), (1, 1), "nothing after it");
}

/// Client segments with no payload that still change the bytes the backend reads: an urgent
/// pointer (the byte it points at, here or in a later segment, leaves the stream), a first
/// fragment whose data is all in later fragments, an empty segment ahead of a gap (moving the
/// agent's view of the client's next byte past bytes the backend may get otherwise). And bytes
/// past the armed request that arm nothing (too short to tell, or an HTTP/0.9 request line,
/// answered without a status). After any of them nothing is read on the connection.
#[test]
fn empty_segments_and_unarmed_bytes_that_move_the_stream_stop_reading() {
    const URG: u8 = 0x20;
    type Sends = fn(&mut Rig, &mut Conn);
    let cases: [(&str, u16, Sends); 5] = [
        ("an urgent pointer on an empty ACK", 57100, |rig, conn| {
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, ACK | URG)
                    .with_seq(conn.client_seq, conn.backend_seq),
            );
        }),
        ("a first fragment without payload", 57101, |rig, conn| {
            let mut first = Pkt::tcp(CLIENT, conn.port, VIP, VPORT, ACK)
                .with_seq(conn.client_seq, conn.backend_seq);
            first.frag = 0x2000;
            rig.ingress(&first);
        }),
        ("an empty segment ahead of a gap", 57102, |rig, conn| {
            rig.ingress(
                &Pkt::tcp(CLIENT, conn.port, VIP, VPORT, ACK)
                    .with_seq(conn.client_seq + 7, conn.backend_seq),
            );
            conn.client_seq += 7;
        }),
        ("a few bytes, too short to tell", 57103, |rig, conn| {
            conn.send(rig, b"\r\n");
        }),
        ("an HTTP/0.9 request", 57104, |rig, conn| {
            conn.send(rig, b"GET /file-that-starts-with-a-status\r\n\r\n");
            conn.reply(rig, UNAVAILABLE_503); // the file, answered without a status line
        }),
    ];
    for (why, port, odd) in cases {
        let mut rig = Rig::with_settings(http());
        let mut conn = Conn::open(&mut rig, port);
        odd(&mut rig, &mut conn);
        conn.exchange(&mut rig, UNAVAILABLE_503);
        conn.exchange(&mut rig, UNAVAILABLE_503);
        assert_eq!(runs(&rig, conn.backend), (0, 0), "{why}: a status was read");
    }
}
