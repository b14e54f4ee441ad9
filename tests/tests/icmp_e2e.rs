//! ICMP errors and fragments of steered flows, end to end: `geosteer agent` in the node
//! namespace, real sockets in the client, real servers (and their kernels' ICMP) behind it.
//!
//! - a connected UDP socket to a VIP port whose backend has no listener gets ECONNREFUSED;
//! - a large UDP exchange (fragmented both ways) through the VIP arrives whole, from the VIP;
//! - path MTU discovery works for a large TCP response through a smaller-MTU hop behind the VIP.
//!
//! Needs root (netns, BPF); run through `cargo xtask test`.

use geosteer_tests::{
    Lab, LabSpec, Netns,
    agent::{Agent, PinDir},
    lab_client_json, require_root, veth,
};

const VIP: &str = "198.19.0.10";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn lab(prefix: &str) -> Lab {
    require_root();
    let mut lab = Lab::build(&LabSpec::simple(prefix, 2)).expect("lab builds");
    lab.start_backends(HTTP_PORT, Some(UDP_PORT))
        .expect("backends start");
    lab
}

/// VIP:80 → 8080 (HTTP), VIP:53 → 5353 (UDP echo), VIP:54 → 5999 (UDP, nothing listens).
fn config(lab: &Lab, pins: &PinDir) -> String {
    let endpoints: String = lab
        .backends
        .iter()
        .map(|b| format!("      - {{ip: {}, region: r}}\n", b.ip))
        .collect();
    format!(
        "node: {{name: lab-node, region: r}}\n\
         dataplane: {{tc: [cl0], pinPath: {}, maxServices: 16, maxBackends: 1024, conntrackSize: 65536}}\n\
         services:\n  - name: svc\n    vip: {VIP}\n    ports:\n      - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n      - {{name: dns, port: 53, targetPort: {UDP_PORT}, protocol: UDP}}\n      - {{name: closed, port: 54, targetPort: 5999, protocol: UDP}}\n    endpoints:\n{endpoints}",
        pins.pin_path().display()
    )
}

fn ct_event(ns: &Netns, pins: &PinDir, name: &str) -> u64 {
    let status = geosteer_tests::agent::geosteer_json(ns, pins, &["status"]).unwrap();
    status["conntrack_events"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn a_connected_udp_socket_to_a_port_without_listener_gets_econnrefused() {
    let lab = lab("gsi1");
    let pins = PinDir::new("gsi1").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config(&lab, &pins)).expect("agent starts");
    let answered = lab_client_json(
        &lab.client,
        &["udp-connected", "--target", &format!("{VIP}:53")],
    )
    .unwrap();
    assert_eq!(answered["outcome"], "reply", "{answered}");
    // The backend's kernel answers port unreachable about the query it received
    // (client → backend:5999); translated, the client's socket (connected to VIP:54) matches it.
    let refused = lab_client_json(
        &lab.client,
        &[
            "udp-connected",
            "--target",
            &format!("{VIP}:54"),
            "--timeout-ms",
            "1500",
        ],
    )
    .unwrap();
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert!(ct_event(&lab.node, &pins, "icmp_translated") >= 1);
}

#[test]
fn a_fragmented_udp_exchange_through_the_vip_arrives_whole_from_the_vip() {
    let lab = lab("gsi2");
    let pins = PinDir::new("gsi2").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config(&lab, &pins)).expect("agent starts");
    // 3000-byte queries and echoes: three fragments each way on 1500-byte links. lab-client
    // counts a reply from any address but the VIP as an error.
    let report = lab_client_json(
        &lab.client,
        &[
            "udp",
            "--target",
            &format!("{VIP}:53"),
            "--count",
            "20",
            "--size",
            "3000",
        ],
    )
    .unwrap();
    assert_eq!(report["ok"], 20, "{report}");
    assert_eq!(report["backends"].as_object().unwrap().len(), 2, "{report}");
    // Two later fragments per datagram, each way.
    assert!(
        ct_event(&lab.node, &pins, "fragment_translated") >= 80,
        "{}",
        ct_event(&lab.node, &pins, "fragment_translated")
    );
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

    for round in 0..3 {
        let fetched = lab_client_json(
            &far,
            &[
                "fetch",
                "--target",
                &format!("{VIP}:80"),
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
    assert!(ct_event(&lab.node, &pins, "icmp_translated") >= 1);
}
