//! ICMP errors and fragments of steered flows, end to end: `geosteer agent` in the node
//! namespace, real sockets in the client, real servers (and their kernels' ICMP) behind it.
//!
//! - a connected UDP socket to a VIP port whose backend has no listener gets ECONNREFUSED;
//! - a large UDP exchange (fragmented both ways) through the VIP arrives whole, from the VIP;
//! - path MTU discovery works for a large TCP response through a smaller-MTU hop behind the VIP;
//! - all three over IPv6 too (ICMPv6 port unreachable and Packet Too Big, IPv6 fragments).
//!
//! Needs root (netns, BPF); run through `cargo xtask test`.

use geosteer_tests::{
    Lab, LabSpec, Netns,
    agent::{Agent, PinDir, ct_event},
    lab_client_json, lab_ipv6, require_root, veth,
};

const VIP: &str = "198.19.0.10";
const VIP6: &str = "2001:db8:19::10";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn lab(prefix: &str) -> Lab {
    lab_of(LabSpec::simple(prefix, 2))
}

fn lab_of(spec: LabSpec) -> Lab {
    require_root();
    let mut lab = Lab::build(&spec).expect("lab builds");
    lab.start_backends(HTTP_PORT, Some(UDP_PORT))
        .expect("backends start");
    lab
}

/// VIP:80 → 8080 (HTTP), VIP:53 → 5353 (UDP echo), VIP:54 → 5999 (UDP, nothing listens).
fn config(lab: &Lab, pins: &PinDir) -> String {
    config_of(pins, VIP, lab.backends.iter().map(|b| b.ip.to_string()))
}

/// [`config`] over IPv6: `VIP6` and the backends' IPv6 addresses.
fn config6(lab: &Lab, pins: &PinDir) -> String {
    let addresses = lab
        .backends
        .iter()
        .map(|b| format!("\"{}\"", b.ip6.unwrap()));
    config_of(pins, &format!("\"{VIP6}\""), addresses)
}

fn config_of(pins: &PinDir, vip: &str, addresses: impl Iterator<Item = String>) -> String {
    let endpoints: String = addresses
        .map(|ip| format!("      - {{ip: {ip}, region: r}}\n"))
        .collect();
    format!(
        "node: {{name: lab-node, region: r}}\n\
         dataplane: {{tc: [cl0], pinPath: {}, maxServices: 16, maxBackends: 1024, conntrackSize: 65536, conntrackSize6: 65536}}\n\
         services:\n  - name: svc\n    vip: {vip}\n    ports:\n      - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n      - {{name: dns, port: 53, targetPort: {UDP_PORT}, protocol: UDP}}\n      - {{name: closed, port: 54, targetPort: 5999, protocol: UDP}}\n    endpoints:\n{endpoints}",
        pins.pin_path().display()
    )
}

#[test]
fn a_connected_udp_socket_to_a_port_without_listener_gets_econnrefused() {
    let lab = lab("gsi1");
    let pins = PinDir::new("gsi1").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config(&lab, &pins)).expect("agent starts");
    answered_then_refused(&lab.client, &format!("{VIP}:53"), &format!("{VIP}:54"));
    assert!(ct_event(&lab.node, &pins, "icmp_translated") >= 1);
}

/// A connected UDP socket to `open` gets its answer; one to `closed`, whose backend has no
/// listener, gets ECONNREFUSED: the backend's kernel answers port unreachable about the query
/// it received (client → backend:5999), and translated, the client's socket matches it.
fn answered_then_refused(client: &Netns, open: &str, closed: &str) {
    let answered = lab_client_json(client, &["udp-connected", "--target", open]).unwrap();
    assert_eq!(answered["outcome"], "reply", "{answered}");
    let refused = lab_client_json(
        client,
        &["udp-connected", "--target", closed, "--timeout-ms", "1500"],
    )
    .unwrap();
    assert_eq!(refused["outcome"], "refused", "{refused}");
}

#[test]
fn a_fragmented_udp_exchange_through_the_vip_arrives_whole_from_the_vip() {
    let lab = lab("gsi2");
    let pins = PinDir::new("gsi2").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config(&lab, &pins)).expect("agent starts");
    large_datagrams_arrive_whole(&lab.client, &format!("{VIP}:53"));
    // Two later fragments per datagram, each way.
    assert!(
        ct_event(&lab.node, &pins, "fragment_translated") >= 80,
        "{}",
        ct_event(&lab.node, &pins, "fragment_translated")
    );
}

/// 20 queries of 3000 bytes and their echoes: three fragments each way on 1500-byte links.
/// lab-client counts a reply from any address but the VIP as an error.
fn large_datagrams_arrive_whole(client: &Netns, target: &str) {
    let report = lab_client_json(
        client,
        &["udp", "--target", target, "--count", "20", "--size", "3000"],
    )
    .unwrap();
    assert_eq!(report["ok"], 20, "{report}");
    assert_eq!(report["backends"].as_object().unwrap().len(), 2, "{report}");
}

/// Three downloads of 300 kB from `target`, each whole.
fn downloads_complete(client: &Netns, target: &str) {
    for round in 0..3 {
        let fetched = lab_client_json(
            client,
            &[
                "fetch",
                "--target",
                target,
                "--path",
                "/bytes/300000",
                "--timeout-ms",
                "5000",
            ],
        )
        .unwrap();
        assert_eq!(
            (fetched["status"].as_u64(), fetched["bytes"].as_u64()),
            (Some(200), Some(300_000)),
            "round {round}: {fetched}"
        );
    }
}

/// The client namespace becomes a router: a second client (`far`) sits behind it on a link
/// whose router side has MTU 1280, while `far` itself (MTU 1500) announces a 1460-byte MSS.
/// The backend's full-size segments leave the node from the VIP; the router answers
/// "fragmentation needed" to the VIP, and only a translated error reaches the backend, whose
/// TCP then lowers its segment size. Untranslated, the download stalls.
#[test]
fn path_mtu_discovery_works_through_a_smaller_mtu_hop_behind_the_vip() {
    let lab = lab("gsi3");
    let far = Netns::new("gsi3-far").unwrap();
    veth(
        &lab.client,
        "far0",
        "198.18.50.1/24",
        &far,
        "eth0",
        "198.18.50.2/24",
    )
    .unwrap();
    lab.client
        .exec(&["ip", "link", "set", "far0", "mtu", "1280"])
        .unwrap();
    lab.client
        .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        .unwrap();
    far.exec(&["ip", "route", "add", "default", "via", "198.18.50.1"])
        .unwrap();
    lab.node
        .exec(&["ip", "route", "add", "198.18.50.0/24", "via", "198.18.0.2"])
        .unwrap();
    let pins = PinDir::new("gsi3").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config(&lab, &pins)).expect("agent starts");

    downloads_complete(&far, &format!("{VIP}:80"));
    assert!(ct_event(&lab.node, &pins, "icmp_translated") >= 1);
}

/// The three cases above over IPv6, in one dual-stack lab: ICMPv6 port unreachable from a
/// backend reaches a connected socket as ECONNREFUSED; 3000-byte datagrams (fragmented by the
/// sending host, as IPv6 routers never fragment) arrive whole both ways, from the VIP; and a
/// far client behind a 1280-byte-MTU hop downloads through the VIP, the hop's Packet Too Big
/// reaching the backend that sent the segment.
#[test]
fn over_ipv6_icmpv6_errors_fragments_and_path_mtu_discovery_work_through_the_vip() {
    let mut spec = LabSpec::simple("gsi6", 2);
    spec.ipv6 = true;
    let lab = lab_of(spec);
    let far = Netns::new("gsi6-far").unwrap();
    let (router_side, far_side) = (lab_ipv6(50, 1), lab_ipv6(50, 2));
    veth(
        &lab.client,
        "far0",
        "198.18.50.1/24",
        &far,
        "eth0",
        "198.18.50.2/24",
    )
    .unwrap();
    for (ns, dev, addr) in [(&lab.client, "far0", router_side), (&far, "eth0", far_side)] {
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ])
        .unwrap();
    }
    lab.client
        .exec(&["ip", "link", "set", "far0", "mtu", "1280"])
        .unwrap();
    // The client namespace routes for `far`, and answers every too-big packet (ICMPv6 errors
    // are rate-limited per destination by default, and all of these go to the VIP).
    for key in [
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv6.icmp.ratelimit=0",
    ] {
        lab.client.exec(&["sysctl", "-q", "-w", key]).unwrap();
    }
    far.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &router_side.to_string(),
    ])
    .unwrap();
    lab.node
        .exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{}/64", lab_ipv6(50, 0)),
            "via",
            &lab_ipv6(0, 2).to_string(),
        ])
        .unwrap();
    let pins = PinDir::new("gsi6").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config6(&lab, &pins)).expect("agent starts");
    let target = |port: u16| format!("[{VIP6}]:{port}");

    answered_then_refused(&lab.client, &target(53), &target(54));
    let translated = ct_event(&lab.node, &pins, "icmp_translated");
    assert!(translated >= 1);

    large_datagrams_arrive_whole(&lab.client, &target(53));
    let fragments = ct_event(&lab.node, &pins, "fragment_translated");
    assert!(fragments >= 80, "{fragments}");

    downloads_complete(&far, &target(80));
    assert!(ct_event(&lab.node, &pins, "icmp_translated") > translated);
}
