//! Conntrack lifecycle on the real programs and the real map (BPF_PROG_TEST_RUN): a flow's two
//! halves are rebuilt from each other when the LRU evicts one, and the agent's GC removes both
//! halves of a flow idle past its state's timeout, over the batched walk.
//!
//! Needs root (BPF); run through `cargo xtask test`.

mod packets;

use std::time::Duration;

use geosteer::conntrack::{Sweeper, Timeouts};
use geosteer_common::{DIR_ORIGINAL, DIR_REPLY, FlowKey, ct_stats};
use packets::*;

fn entries(rig: &Rig) -> Vec<(FlowKey, geosteer_common::FlowValue)> {
    rig.maps.conntrack.iter().map(|e| e.unwrap()).collect()
}

fn half(rig: &Rig, direction: u8, client_port: u16) -> Option<FlowKey> {
    entries(rig).into_iter().map(|(k, _)| k).find(|k| {
        k.direction == direction
            && if direction == DIR_ORIGINAL {
                u16::from_be(k.sport) == client_port
            } else {
                u16::from_be(k.dport) == client_port
            }
    })
}

#[test]
fn an_evicted_reply_half_is_rebuilt_by_the_next_client_packet() {
    let mut rig = Rig::new();
    let mut conn = Conn::open(&mut rig, 41000);
    let reply = half(&rig, DIR_REPLY, 41000).expect("reply half");
    rig.maps.conntrack.remove(&reply).unwrap();
    conn.send(&mut rig, b"hello");
    assert!(half(&rig, DIR_REPLY, 41000).is_some(), "rebuilt");
    assert_eq!(rig.maps.ct_stat(ct_stats::PARTNER_RESTORED).unwrap(), 1);
    // The backend's answer leaves with the VIP's address, not its own.
    let (_, out) = conn.reply(&mut rig, b"world");
    let seen = verify(&out);
    assert_eq!((seen.src, seen.sport), (VIP, VPORT));
}

#[test]
fn an_evicted_original_half_is_rebuilt_by_a_reply_and_keeps_its_backend() {
    let mut rig = Rig::new();
    let mut conn = Conn::open(&mut rig, 41100);
    let original = half(&rig, DIR_ORIGINAL, 41100).expect("original half");
    rig.maps.conntrack.remove(&original).unwrap();
    conn.reply(&mut rig, b"server speaks first");
    assert!(half(&rig, DIR_ORIGINAL, 41100).is_some(), "rebuilt");
    assert_eq!(rig.maps.ct_stat(ct_stats::PARTNER_RESTORED).unwrap(), 1);
    // The client's next segment goes to the same backend, without a mid-stream re-steer.
    for port in 0..3 {
        let (_, out) = conn.send(&mut rig, format!("more {port}").as_bytes());
        assert_eq!(verify(&out).dst, conn.backend);
    }
    assert_eq!(rig.maps.ct_stat(ct_stats::MIDSTREAM).unwrap(), 0);
}

#[test]
fn the_gc_removes_both_halves_of_closed_and_idle_flows_and_keeps_live_ones() {
    let mut rig = Rig::new();
    // Three flows: one closed by a FIN each way, one reset, one established.
    let mut closed = Conn::open(&mut rig, 41200);
    closed.send(&mut rig, b"x");
    rig.ingress(
        &Pkt::tcp(CLIENT, 41200, VIP, VPORT, FIN | ACK)
            .with_seq(closed.client_seq, closed.backend_seq),
    );
    rig.egress(
        &Pkt::tcp(closed.backend, TPORT, CLIENT, 41200, FIN | ACK)
            .with_seq(closed.backend_seq, closed.client_seq + 1),
    );
    let reset = Conn::open(&mut rig, 41201);
    rig.ingress(&Pkt::tcp(CLIENT, 41201, VIP, VPORT, RST).with_seq(reset.client_seq, 0));
    let _live = Conn::open(&mut rig, 41202);
    assert_eq!(entries(&rig).len(), 6);

    // Timeouts short enough for a test: closing 50 ms, established 1 h.
    let timeouts = Timeouts {
        tcp_closing: Duration::from_millis(50),
        tcp_established: Duration::from_secs(3600),
        ..Timeouts::default()
    };
    rig.maps.sweeper = Sweeper::new(timeouts, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(100));
    let now = geosteer::agent::monotonic_now().as_nanos() as u64;
    let report =
        geosteer::dataplane::Dataplane::sweep_flows(&mut rig.maps, now, Duration::from_secs(1))
            .unwrap()
            .expect("one step covers a small table");
    assert_eq!((report.entries, report.flows, report.expired), (6, 3, 2));
    let left: Vec<u16> = entries(&rig)
        .iter()
        .map(|(k, _)| {
            if k.direction == DIR_ORIGINAL {
                u16::from_be(k.sport)
            } else {
                u16::from_be(k.dport)
            }
        })
        .collect();
    assert_eq!(left, [41202, 41202], "only the live flow's two halves");
    assert_eq!(rig.maps.conntrack_entries(), 2);
    // A SYN on the closed tuple is a new connection, steered as any other.
    let (_, out) = rig.ingress(&syn(41200).with_seq(9_000, 0));
    assert!(BACKENDS.contains(&verify(&out).dst));
}

#[test]
fn a_flow_that_lost_both_halves_is_picked_up_mid_stream_on_its_backend() {
    let mut rig = Rig::new();
    let mut conn = Conn::open(&mut rig, 41300);
    for (key, _) in entries(&rig) {
        rig.maps.conntrack.remove(&key).unwrap();
    }
    let (_, out) = conn.send(&mut rig, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(verify(&out).dst, conn.backend, "Maglev: the same backend");
    assert_eq!(rig.maps.ct_stat(ct_stats::MIDSTREAM).unwrap(), 1);
    let (_, out) = conn.reply(&mut rig, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(verify(&out).src, VIP);
}

/// On an XDP interface, TC ingress sees again what XDP translated and handed to the stack. A
/// retransmitted SYN (its SYN-ACK was lost after the flow became established) must not look
/// like a new direct connection to the backend and take the flow's reverse NAT away.
#[test]
fn a_syn_retransmitted_through_xdp_keeps_the_flows_reverse_nat() {
    let mut rig = Rig::new();
    let syn = syn(41400).with_seq(7_000, 0);
    let (_, out) = rig.xdp(&syn);
    let backend = verify(&out).dst;
    assert_eq!(
        rig.run_tc(geosteer_common::program_names::TC_INGRESS, &out)
            .0,
        TC_ACT_OK
    );
    let syn_ack = Pkt::tcp(backend, TPORT, CLIENT, 41400, SYN | ACK).with_seq(90_000, 7_001);
    let (_, answer) = rig.egress(&syn_ack);
    assert_eq!(verify(&answer).src, VIP);
    // The SYN-ACK was lost; the client sends its SYN again (same ISN).
    let (_, out) = rig.xdp(&syn);
    assert_eq!(verify(&out).dst, backend);
    rig.run_tc(geosteer_common::program_names::TC_INGRESS, &out);
    let (_, answer) = rig.egress(&syn_ack);
    assert_eq!(
        verify(&answer).src,
        VIP,
        "the repeated SYN-ACK still leaves from the VIP"
    );
    // A new direct connection from that port (another ISN) does end it.
    let direct = Pkt::tcp(CLIENT, 41400, backend, TPORT, SYN).with_seq(123_457, 0);
    rig.run_tc(geosteer_common::program_names::TC_INGRESS, &direct.build());
    let (_, answer) = rig.egress(&syn_ack);
    assert_eq!(verify(&answer).src, backend);
}

/// Linux reuses a source port for different destinations, so one client port can reach two
/// VIPs whose backend is the same: after translation both connections are one tuple. The
/// second waits (dropped, as netfilter drops a NAT clash) while the first lives — it neither
/// steals the first's replies nor reaches the backend as a SYN on its connection — and passes
/// once the first has ended.
#[test]
fn a_client_port_reused_toward_another_vip_of_the_same_backend_waits_for_the_first() {
    let mut rig = Rig::new();
    let vip2 = std::net::Ipv4Addr::new(198, 19, 0, 11);
    rig.set_services(&[
        (VIP, VPORT, geosteer_common::PROTO_TCP, &[1]),
        (vip2, VPORT, geosteer_common::PROTO_TCP, &[1]),
    ]);
    let mut conn = Conn::open(&mut rig, 56000);
    let second = Pkt::tcp(CLIENT, 56000, vip2, VPORT, SYN).with_seq(90_000, 0);
    let (rc, _) = rig.ingress(&second);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(rig.drops(geosteer_common::DropReason::TupleInUse), 1);
    // The first connection's replies still come from its own VIP.
    let (_, out) = conn.reply(&mut rig, OK_200);
    assert_eq!((verify(&out).src, verify(&out).sport), (VIP, VPORT));
    // It ends (the client's RST); the retransmitted SYN of the second now passes and its
    // replies come from the second VIP.
    rig.ingress(&Pkt::tcp(CLIENT, 56000, VIP, VPORT, RST).with_seq(conn.client_seq, 0));
    let (rc, out) = rig.ingress(&second);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(verify(&out).dst, BACKENDS[0]);
    let (_, out) =
        rig.egress(&Pkt::tcp(BACKENDS[0], TPORT, CLIENT, 56000, SYN | ACK).with_seq(5, 90_001));
    assert_eq!((verify(&out).src, verify(&out).sport), (vip2, VPORT));
    assert_eq!(rig.drops(geosteer_common::DropReason::TupleInUse), 1);
}

/// A flow re-steered on its tuple removes its old reply half only if that half is still its
/// own: after a clash resolved, the key may belong to a live flow of another VIP, whose replies
/// must keep their VIP.
#[test]
fn a_flow_steered_anew_leaves_another_vips_reply_half_alone() {
    let mut rig = Rig::new();
    let vip2 = std::net::Ipv4Addr::new(198, 19, 0, 11);
    rig.set_services(&[
        (VIP, VPORT, geosteer_common::PROTO_TCP, &[1]),
        (vip2, VPORT, geosteer_common::PROTO_TCP, &[1]),
    ]);
    let port = 56100;
    // A flow through vip2 ends by the client's RST; its entries stay for the closing timeout.
    rig.ingress(&Pkt::tcp(CLIENT, port, vip2, VPORT, SYN).with_seq(1_000, 0));
    rig.egress(&Pkt::tcp(BACKENDS[0], TPORT, CLIENT, port, SYN | ACK).with_seq(50, 1_001));
    rig.ingress(&Pkt::tcp(CLIENT, port, vip2, VPORT, RST).with_seq(1_001, 0));
    // The same port through VIP takes the translated tuple over.
    let mut conn = Conn::open(&mut rig, port);
    // A new SYN through vip2 (its old flow closed, so steered anew) must wait, not remove the
    // VIP flow's reply half.
    let (rc, _) = rig.ingress(&Pkt::tcp(CLIENT, port, vip2, VPORT, SYN).with_seq(90_000, 0));
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(rig.drops(geosteer_common::DropReason::TupleInUse), 1);
    let (_, out) = conn.reply(&mut rig, OK_200);
    assert_eq!((verify(&out).src, verify(&out).sport), (VIP, VPORT));
}

/// A stray RST (its flow already gone here) opens nothing, so it holds no tuple; an attempt
/// still waiting for its SYN-ACK does. And once a flow's tuple was taken over by the same port
/// through another VIP, a SYN through the first VIP is a new connection again.
#[test]
fn only_open_flows_hold_the_translated_tuple() {
    let mut rig = Rig::new();
    let vip2 = std::net::Ipv4Addr::new(198, 19, 0, 11);
    rig.set_services(&[
        (VIP, VPORT, geosteer_common::PROTO_TCP, &[1]),
        (vip2, VPORT, geosteer_common::PROTO_TCP, &[1]),
    ]);
    for (port, first, holds) in [
        (56200, Pkt::tcp(CLIENT, 56200, VIP, VPORT, SYN), true),
        (
            56201,
            Pkt::tcp(CLIENT, 56201, VIP, VPORT, RST).with_seq(5, 0),
            false,
        ),
    ] {
        rig.ingress(&first);
        let second = Pkt::tcp(CLIENT, port, vip2, VPORT, SYN).with_seq(90_000, 0);
        let (rc, _) = rig.ingress(&second);
        assert_eq!(rc == TC_ACT_SHOT, holds, "{port}");
    }
    // 56201's flow through vip2 goes on; when it ends, the first VIP can have the port back.
    rig.egress(&Pkt::tcp(BACKENDS[0], TPORT, CLIENT, 56201, SYN | ACK).with_seq(7, 90_001));
    rig.ingress(&Pkt::tcp(CLIENT, 56201, vip2, VPORT, RST).with_seq(90_001, 0));
    let (rc, out) = rig.ingress(&Pkt::tcp(CLIENT, 56201, VIP, VPORT, SYN).with_seq(3_000, 0));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(verify(&out).dst, BACKENDS[0]);
    let (_, out) =
        rig.egress(&Pkt::tcp(BACKENDS[0], TPORT, CLIENT, 56201, SYN | ACK).with_seq(9, 3_001));
    assert_eq!((verify(&out).src, verify(&out).sport), (VIP, VPORT));
}
