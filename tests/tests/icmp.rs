//! ICMP errors and IPv4 fragments of steered flows, through the real programs
//! (BPF_PROG_TEST_RUN): an error about a steered packet is translated like the flow itself —
//! the quoted packet, its checksums, the ICMP checksum and the outer address where the backend
//! or the VIP is an end — and a fragmented datagram's later fragments follow its first.
//! Every output is re-parsed and its checksums verified independently.
//!
//! Needs root (BPF); run through `cargo xtask test`.

mod packets;

use std::net::Ipv4Addr;

use geosteer_common::{DropReason, csum, ct_stats};
use packets::*;

const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// What a translated ICMP error says, after every checksum was verified: (outer src, outer
/// dst, quoted src:port, quoted dst:port).
#[derive(Debug, PartialEq)]
struct SeenIcmp {
    outer: (Ipv4Addr, Ipv4Addr),
    quoted_src: (Ipv4Addr, u16),
    quoted_dst: (Ipv4Addr, u16),
}

fn verify_icmp(frame: &[u8]) -> SeenIcmp {
    let ip = &frame[14..34];
    assert_eq!(csum::checksum(ip), 0, "outer IPv4 checksum");
    let icmp = &frame[34..];
    assert_eq!(csum::checksum(icmp), 0, "ICMP checksum");
    let quoted_ip = &icmp[8..28];
    assert_eq!(csum::checksum(quoted_ip), 0, "quoted IPv4 checksum");
    let proto = quoted_ip[9];
    let quoted_l4 = &icmp[28..];
    let mut pseudo = Vec::new();
    pseudo.extend(&quoted_ip[12..20]);
    pseudo.extend([0, proto]);
    pseudo.extend((quoted_l4.len() as u16).to_be_bytes());
    pseudo.extend(quoted_l4);
    assert_eq!(csum::checksum(&pseudo), 0, "quoted L4 checksum");
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    SeenIcmp {
        outer: (addr(&ip[12..16]), addr(&ip[16..20])),
        quoted_src: (addr(&quoted_ip[12..16]), port(&quoted_l4[0..2])),
        quoted_dst: (addr(&quoted_ip[16..20]), port(&quoted_l4[2..4])),
    }
}

#[test]
fn port_unreachable_from_the_backend_reaches_the_client_from_the_vip() {
    let mut rig = Rig::new();
    let query = Pkt::udp(CLIENT, 5353, VIP, VPORT, b"query");
    let (_, out) = rig.ingress(&query);
    let backend = verify(&out).dst;
    // The backend has no listener: its kernel answers the query as it received it.
    let received = Pkt::udp(CLIENT, 5353, backend, TPORT, b"query").build();
    let error = icmp_error(backend, CLIENT, 3, 3, &received);
    let (action, out) = rig.run_tc(geosteer_common::program_names::TC_EGRESS, &error);
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(
        verify_icmp(&out),
        SeenIcmp {
            outer: (VIP, CLIENT),
            quoted_src: (CLIENT, 5353),
            quoted_dst: (VIP, VPORT),
        },
        "what the client's socket (connected to the VIP) can match"
    );
    assert_eq!(rig.maps.ct_stat(ct_stats::ICMP_TRANSLATED).unwrap(), 1);
}

#[test]
fn an_error_from_a_router_on_the_backends_side_keeps_its_source() {
    let mut rig = Rig::new();
    let conn = Conn::open(&mut rig, 42000);
    let sent = Pkt::tcp(CLIENT, 42000, conn.backend, TPORT, ACK).build();
    let error = icmp_error(ROUTER, CLIENT, 11, 0, &sent);
    let (_, out) = rig.run_tc(geosteer_common::program_names::TC_EGRESS, &error);
    assert_eq!(
        verify_icmp(&out),
        SeenIcmp {
            outer: (ROUTER, CLIENT),
            quoted_src: (CLIENT, 42000),
            quoted_dst: (VIP, VPORT),
        }
    );
}

#[test]
fn fragmentation_needed_for_a_reply_goes_to_the_backend_that_sent_it() {
    let mut rig = Rig::new();
    let conn = Conn::open(&mut rig, 42100);
    // A large response segment as the client side saw it (from the VIP), too big for a hop.
    let reply = Pkt::tcp(VIP, VPORT, CLIENT, 42100, ACK)
        .with_payload(&[b'x'; 64])
        .build();
    for (sender, outer_dst) in [(ROUTER, conn.backend), (CLIENT, conn.backend)] {
        let error = icmp_error(sender, VIP, 3, 4, &reply);
        let (action, out) = rig.run_tc(geosteer_common::program_names::TC_INGRESS, &error);
        assert_eq!(action, TC_ACT_OK);
        assert_eq!(
            verify_icmp(&out),
            SeenIcmp {
                outer: (sender, outer_dst),
                quoted_src: (conn.backend, TPORT),
                quoted_dst: (CLIENT, 42100),
            },
            "the backend's TCP finds its connection and lowers its path MTU"
        );
    }
}

#[test]
fn errors_about_other_traffic_are_untouched() {
    let mut rig = Rig::new();
    let stranger = Pkt::udp(CLIENT, 6000, OTHER, 53, b"x").build();
    for program in [
        geosteer_common::program_names::TC_EGRESS,
        geosteer_common::program_names::TC_INGRESS,
    ] {
        let error = icmp_error(OTHER, CLIENT, 3, 3, &stranger);
        assert_eq!(rig.run_tc(program, &error), (TC_ACT_OK, error.clone()));
    }
    // An echo request to the VIP is no error: passed as it is.
    let mut echo = icmp_error(CLIENT, VIP, 8, 0, &stranger);
    echo.truncate(42);
    assert_eq!(
        rig.run_tc(geosteer_common::program_names::TC_INGRESS, &echo),
        (TC_ACT_OK, echo.clone())
    );
    assert_eq!(rig.maps.ct_stat(ct_stats::ICMP_TRANSLATED).unwrap(), 0);
}

fn ip_addrs(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    assert_eq!(csum::checksum(&frame[14..34]), 0, "IPv4 checksum");
    let a = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    (a(&frame[26..30]), a(&frame[30..34]))
}

#[test]
fn a_fragmented_reply_leaves_from_the_vip_fragment_by_fragment() {
    let mut rig = Rig::new();
    let (_, out) = rig.ingress(&Pkt::udp(CLIENT, 5400, VIP, VPORT, b"big answer please"));
    let backend = verify(&out).dst;
    // The backend's large answer in two fragments: the first carries the UDP header.
    let mut first = Pkt::udp(backend, TPORT, CLIENT, 5400, &[7; 64]);
    first.frag = 0x2000;
    let (_, out) = rig.egress(&first);
    assert_eq!(ip_addrs(&out), (VIP, CLIENT));
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), VPORT);
    let second = later_fragment(backend, CLIENT, 9, &[8; 40]);
    let (action, out) = rig.run_tc(geosteer_common::program_names::TC_EGRESS, &second);
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(ip_addrs(&out), (VIP, CLIENT));
    assert_eq!(&out[34..], &[8; 40], "payload untouched");
    assert_eq!(rig.maps.ct_stat(ct_stats::FRAGMENT_TRANSLATED).unwrap(), 1);
    // A fragment of another datagram (another id) is not ours to change.
    let mut other = later_fragment(backend, CLIENT, 9, &[8; 40]);
    other[18] = 0x99;
    let c = csum::checksum(&{
        let mut h = other[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    other[24..26].copy_from_slice(&c.to_ne_bytes());
    assert_eq!(
        rig.run_tc(geosteer_common::program_names::TC_EGRESS, &other),
        (TC_ACT_OK, other.clone())
    );
}

#[test]
fn a_fragmented_request_follows_its_first_fragment_and_strays_are_dropped() {
    let mut rig = Rig::new();
    let mut first = Pkt::udp(CLIENT, 5500, VIP, VPORT, &[1; 64]);
    first.frag = 0x2000;
    let (action, out) = rig.ingress(&first);
    assert_eq!(action, TC_ACT_OK);
    let (_, backend) = ip_addrs(&out);
    assert!(BACKENDS.contains(&backend));
    let second = later_fragment(CLIENT, VIP, 9, &[2; 40]);
    let (action, out) = rig.run_tc(geosteer_common::program_names::TC_INGRESS, &second);
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(ip_addrs(&out), (CLIENT, backend));
    // A later fragment whose first was never seen cannot be steered.
    let stray = later_fragment(OTHER, VIP, 9, &[3; 40]);
    let (action, _) = rig.run_tc(geosteer_common::program_names::TC_INGRESS, &stray);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(rig.drops(DropReason::Fragment), 1);
    assert_eq!(rig.maps.ct_stat(ct_stats::FRAGMENT_UNKNOWN).unwrap(), 1);
}
