//! End to end: `geosteer agent` in a node namespace steering real HTTP and UDP traffic from a
//! client namespace to backend namespaces running real servers.
//!
//! Needs root (netns, BPF); run through `cargo xtask test`.

use std::collections::BTreeMap;

use geosteer_tests::{
    HttpOptions, Lab, LabSpec,
    agent::{Agent, PinDir, ct_event},
    http_from, require_root,
};

const VIP: &str = "198.19.0.10";
const VIP6: &str = "2001:db8:19::10";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

/// A config for `lab` with one service on VIP:80 (TCP) and VIP:53 (UDP) over the given
/// backends (name, weight).
fn config(lab: &Lab, pins: &PinDir, weights: &[(&str, u32)], tc: &str, xdp: &str) -> String {
    let mut endpoints = String::new();
    for (name, weight) in weights {
        let b = lab.backend(name).unwrap();
        let region = if b.ip.octets()[2] >= 20 {
            "cn-shanghai"
        } else {
            "cn-hangzhou"
        };
        endpoints.push_str(&format!(
            "      - {{ip: {}, region: {region}, weight: {weight}}}\n",
            b.ip
        ));
    }
    format!(
        "node: {{name: lab-node, region: cn-hangzhou}}\n\
         dataplane:\n  tc: [{tc}]\n  xdp: [{xdp}]\n  pinPath: {}\n  maxServices: 16\n  maxBackends: 1024\n  conntrackSize: 65536\n\
         services:\n  - name: reviews\n    vip: {VIP}\n    ports:\n      - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n      - {{name: dns, port: 53, targetPort: {UDP_PORT}, protocol: UDP}}\n    endpoints:\n{endpoints}",
        pins.pin_path().display()
    )
}

fn lab(prefix: &str, backends: u8, uplink: bool) -> Lab {
    require_root();
    let mut spec = LabSpec::simple(prefix, backends);
    spec.with_uplink = uplink;
    let mut lab = Lab::build(&spec).expect("lab builds");
    lab.start_backends(HTTP_PORT, Some(UDP_PORT))
        .expect("backends start");
    lab
}

fn share(backends: &BTreeMap<String, u64>, name: &str) -> f64 {
    let total: u64 = backends.values().sum();
    *backends.get(name).unwrap_or(&0) as f64 / total as f64
}

#[test]
fn tcp_split_follows_weights_keepalive_sticks_and_direct_access_works() {
    let lab = lab("gsn1", 3, false);
    let pins = PinDir::new("gsn1").unwrap();
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &config(&lab, &pins, &[("b1", 1), ("b2", 1), ("b3", 2)], "cl0", ""),
    )
    .expect("agent starts");

    let report = lab.client_http(&format!("{VIP}:80"), 800, 1).unwrap();
    assert_eq!(
        report.ok, 800,
        "every request through the VIP succeeds: {report:?}"
    );
    for (name, expected) in [("b1", 0.25), ("b2", 0.25), ("b3", 0.5)] {
        let got = share(&report.backends, name);
        assert!(
            (got - expected).abs() < 0.06,
            "{name}: {got:.3} vs {expected}: {:?}",
            report.backends
        );
    }

    let keepalive =
        http_from(&lab.client, &format!("{VIP}:80"), &HttpOptions::new(30, 10)).unwrap();
    assert_eq!(keepalive.ok, 300, "{keepalive:?}");
    assert!(
        keepalive.per_connection_backends_consistent,
        "a keep-alive connection changed backend"
    );

    for b in &lab.backends {
        let direct = lab
            .client_http(&format!("{}:{HTTP_PORT}", b.ip), 20, 1)
            .unwrap();
        assert_eq!(direct.ok, 20, "direct access to {}: {direct:?}", b.name);
        assert_eq!(direct.backends.keys().collect::<Vec<_>>(), vec![&b.name]);
    }
}

#[test]
fn udp_request_response_through_the_vip() {
    let lab = lab("gsn2", 2, false);
    let pins = PinDir::new("gsn2").unwrap();
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &config(&lab, &pins, &[("b1", 1), ("b2", 1)], "cl0", ""),
    )
    .expect("agent starts");
    let report = lab.client_udp(&format!("{VIP}:53"), 200).unwrap();
    assert_eq!(report.ok, 200, "{report:?}");
    assert_eq!(report.backends.len(), 2, "both backends answer: {report:?}");
}

/// With checksum offload off on every link (TX: the sender computes full checksums; RX: the
/// receiver verifies them instead of trusting the veth), a wrong rewrite would show as
/// InCsumErrors and failed requests.
#[test]
fn receivers_verify_every_checksum() {
    let lab = lab("gsn3", 2, false);
    for ns in lab.namespaces() {
        let links = ns.exec(&["ls", "/sys/class/net"]).unwrap();
        for dev in links.split_whitespace().filter(|d| *d != "lo") {
            ns.exec(&["ethtool", "-K", dev, "tx", "off", "rx", "off"])
                .unwrap();
        }
    }
    let pins = PinDir::new("gsn3").unwrap();
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &config(&lab, &pins, &[("b1", 1), ("b2", 1)], "cl0", ""),
    )
    .expect("agent starts");
    let http = lab.client_http(&format!("{VIP}:80"), 200, 3).unwrap();
    assert_eq!(http.ok, 600, "{http:?}");
    let udp = lab.client_udp(&format!("{VIP}:53"), 100).unwrap();
    assert_eq!(udp.ok, 100, "{udp:?}");
    for ns in lab.namespaces() {
        let out = ns
            .exec(&[
                "nstat",
                "-az",
                "TcpInCsumErrors",
                "UdpInCsumErrors",
                "IpInHdrErrors",
            ])
            .unwrap();
        for line in out.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.get(1), Some(&"0"), "{}: {line}", ns.name);
        }
    }
}

/// `xdp: [up0]` with the default `xdpMode: auto` on a veth whose peer keeps its default TX
/// checksum offload, and backends' veths with default GRO (off): native XDP there would corrupt
/// partial checksums and have its redirects dropped. Auto steers the veth with TC ingress, says
/// so, and every connection works.
#[test]
fn xdp_auto_on_a_veth_with_default_offloads_steers_every_connection_with_tc() {
    let lab = lab("gsn4", 2, true);
    lab.set_tx_checksum_offload(true).unwrap(); // the kernel's defaults
    let pins = PinDir::new("gsn4").unwrap();
    let agent = Agent::start(
        &lab.node,
        &pins,
        &config(&lab, &pins, &[("b1", 1), ("b2", 1)], "cl0", "up0"),
    )
    .expect("agent starts");
    assert!(
        agent.log_contains("xdpMode auto: a virtual device"),
        "{:?}",
        agent.log()
    );
    assert!(!agent.log_contains("xdp-native"), "{:?}", agent.log());
    let uplink = lab.uplink_client.as_ref().unwrap();
    let report = http_from(uplink, &format!("{VIP}:80"), &HttpOptions::new(200, 2)).unwrap();
    assert_eq!(report.ok, 400, "{report:?}");
    assert_eq!(report.backends.len(), 2, "{report:?}");
}

/// Native XDP (asked for explicitly) redirects only to interfaces vouched for in
/// `dataplane.xdpRedirectTo`; without them it translates and hands requests to the stack, so a
/// veth whose peer drops XDP frames (GRO off, the default) never blackholes a connection.
#[test]
fn xdp_native_redirects_only_to_vouched_targets_and_never_blackholes() {
    let lab = lab("gsn7", 2, true);
    let pins = PinDir::new("gsn7").unwrap();
    let uplink = lab.uplink_client.as_ref().unwrap();
    let native = config(&lab, &pins, &[("b1", 1), ("b2", 1)], "cl0", "up0")
        .replace("  xdp: [up0]\n", "  xdp: [up0]\n  xdpMode: native\n");
    let passed = |pins: &PinDir| ct_event(&lab.node, pins, "xdp_passed_to_stack");

    // No target vouched for, backends' GRO off: translated in XDP, forwarded by the stack.
    let mut agent = Agent::start(&lab.node, &pins, &native).expect("agent starts");
    assert!(agent.log_contains("xdp-native"), "{:?}", agent.log());
    let report = http_from(uplink, &format!("{VIP}:80"), &HttpOptions::new(100, 2)).unwrap();
    assert_eq!(report.ok, 200, "{report:?}");
    let handed_over = passed(&pins);
    assert!(handed_over >= 100, "{handed_over}");
    assert!(agent.terminate().unwrap().success());

    // The backends' veths can take XDP frames (GRO on their peers) and are vouched for:
    // redirected, none handed to the stack.
    for b in &lab.backends {
        b.ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
    }
    let vouched = native.replace(
        "  xdpMode: native\n",
        "  xdpMode: native\n  xdpRedirectTo: [\"bk*\"]\n",
    );
    let agent = Agent::start(&lab.node, &pins, &vouched).expect("agent starts");
    assert!(
        agent.log_contains("XDP may redirect to this interface"),
        "{:?}",
        agent.log()
    );
    let report = http_from(uplink, &format!("{VIP}:80"), &HttpOptions::new(100, 2)).unwrap();
    assert_eq!(report.ok, 200, "{report:?}");
    assert_eq!(report.backends.len(), 2, "{report:?}");
    assert_eq!(passed(&pins), handed_over, "every request redirected");
}

/// The same over IPv6 (a dual-stack lab, an IPv6 VIP): native XDP translates IPv6 requests
/// itself — handed to the stack without a vouched target, redirected with one — and every
/// connection works either way.
#[test]
fn xdp_native_steers_ipv6_and_redirects_only_to_vouched_targets() {
    require_root();
    let mut spec = LabSpec::simple("gsn9", 2);
    spec.with_uplink = true;
    spec.ipv6 = true;
    let mut lab = Lab::build(&spec).expect("lab builds");
    lab.start_backends(HTTP_PORT, None).expect("backends start");
    let pins = PinDir::new("gsn9").unwrap();
    let uplink = lab.uplink_client.as_ref().unwrap();
    let endpoints: String = lab
        .backends
        .iter()
        .map(|b| {
            format!(
                "      - {{ip: \"{}\", region: cn-hangzhou}}\n",
                b.ip6.unwrap()
            )
        })
        .collect();
    let native = format!(
        "node: {{name: lab-node, region: cn-hangzhou}}\n\
         dataplane:\n  tc: [cl0]\n  xdp: [up0]\n  xdpMode: native\n  pinPath: {}\n  maxServices: 16\n  maxBackends: 1024\n  conntrackSize6: 65536\n\
         services:\n  - name: reviews6\n    vip: \"{VIP6}\"\n    ports:\n      - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n    endpoints:\n{endpoints}",
        pins.pin_path().display()
    );
    let passed = |pins: &PinDir| ct_event(&lab.node, pins, "xdp_passed_to_stack");
    let target = format!("[{VIP6}]:80");

    let mut agent = Agent::start(&lab.node, &pins, &native).expect("agent starts");
    assert!(agent.log_contains("xdp-native"), "{:?}", agent.log());
    let report = http_from(uplink, &target, &HttpOptions::new(100, 2)).unwrap();
    assert_eq!(report.ok, 200, "{report:?}");
    assert_eq!(report.backends.len(), 2, "{report:?}");
    let handed_over = passed(&pins);
    assert!(handed_over >= 100, "translated in XDP: {handed_over}");
    assert!(agent.terminate().unwrap().success());

    for b in &lab.backends {
        b.ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
    }
    let vouched = native.replace(
        "  xdpMode: native\n",
        "  xdpMode: native\n  xdpRedirectTo: [\"bk*\"]\n",
    );
    let _agent = Agent::start(&lab.node, &pins, &vouched).expect("agent starts");
    let report = http_from(uplink, &target, &HttpOptions::new(100, 2)).unwrap();
    assert_eq!(report.ok, 200, "{report:?}");
    assert_eq!(report.backends.len(), 2, "{report:?}");
    assert_eq!(passed(&pins), handed_over, "every request redirected");
}

/// An interface without an Ethernet header (a tun device: WireGuard, most VPNs) is refused with
/// a clear error, not attached and misparsed.
#[test]
fn an_l3_device_is_refused_with_a_clear_error() {
    let lab = lab("gsn8", 1, false);
    lab.node
        .exec(&["ip", "tuntap", "add", "dev", "tun7", "mode", "tun"])
        .unwrap();
    lab.node.exec(&["ip", "link", "set", "tun7", "up"]).unwrap();
    let pins = PinDir::new("gsn8").unwrap();
    let error = match Agent::start(
        &lab.node,
        &pins,
        &config(&lab, &pins, &[("b1", 1)], "cl0, tun7", ""),
    ) {
        Ok(agent) => panic!("started: {:?}", agent.log()),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("tun7 is not an Ethernet device (link type 65534, none: tun, WireGuard)"),
        "{error}"
    );
}

/// SIGTERM (every rolling update sends it) stops the agent, not the data path: the VIP keeps
/// being steered with no agent running. `geosteer uninstall` is what removes it — refused while
/// an agent runs — and afterwards nothing steers, the backends answer directly, no pin is left.
#[test]
fn sigterm_keeps_steering_and_only_uninstall_removes_the_data_path() {
    let lab = lab("gsn5", 2, false);
    let pins = PinDir::new("gsn5").unwrap();
    let yaml = config(&lab, &pins, &[("b1", 1), ("b2", 1)], "cl0", "");
    let mut agent = Agent::start(&lab.node, &pins, &yaml).expect("agent starts");
    assert_eq!(lab.client_http(&format!("{VIP}:80"), 20, 1).unwrap().ok, 20);

    let refused = geosteer_tests::agent::uninstall(&lab.node, &pins).unwrap_err();
    assert!(
        format!("{refused:#}").contains("an agent is running"),
        "{refused:#}"
    );
    let status = agent.terminate().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(agent.log_contains("programs stay attached"));
    let during = lab.client_http(&format!("{VIP}:80"), 20, 1).unwrap();
    assert_eq!(during.ok, 20, "steered with no agent running: {during:?}");
    assert_eq!(during.backends.len(), 2, "{during:?}");

    let report = geosteer_tests::agent::uninstall(&lab.node, &pins).unwrap();
    assert!(
        report.contains("detached 2 (cl0_tc-egress, cl0_tc-ingress)"),
        "{report}"
    );
    let mut opts = HttpOptions::new(5, 1);
    opts.timeout_ms = 500;
    let after = http_from(&lab.client, &format!("{VIP}:80"), &opts).unwrap();
    assert_eq!(
        after.ok, 0,
        "nothing steers the VIP once uninstalled: {after:?}"
    );
    // Backends remain reachable directly.
    assert_eq!(
        lab.client_http(&format!("{}:{HTTP_PORT}", lab.backends[0].ip), 5, 1)
            .unwrap()
            .ok,
        5
    );
    let left: Vec<_> = std::fs::read_dir(pins.pin_path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".debug")) // the kernel's own (bpf_preload)
        .collect();
    assert!(left.is_empty(), "pins left behind: {left:?}");
    // Uninstalling twice is harmless.
    let again = geosteer_tests::agent::uninstall(&lab.node, &pins).unwrap();
    assert!(
        again.contains("detached 0 (nothing was attached)"),
        "{again}"
    );
}

#[test]
fn invalid_config_is_rejected_with_the_field_path() {
    require_root();
    let dir = std::env::temp_dir().join("geosteer-invalid-config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "node: {name: n, region: r}\nservices:\n  - name: web\n    vip: 10.96.0.999\n    ports: [{port: 80}]\n",
    )
    .unwrap();
    let bin = geosteer_tests::bin_path("geosteer");
    for args in [
        vec!["validate", file.to_str().unwrap()],
        vec!["agent", "--config", file.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains("services[0].vip"), "{args:?}: {stderr}");
        assert!(stderr.contains("10.96.0.999"), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Maps that would outgrow the memory limit stop the agent before it creates any, with the
/// numbers and the fields to change; nothing is left pinned.
#[test]
fn maps_over_the_memory_limit_are_refused_before_loading() {
    require_root();
    let dir = std::env::temp_dir().join("geosteer-memory-limit");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.yaml");
    std::fs::write(
        &file,
        format!(
            "node: {{name: n, region: r}}\ndataplane: {{maxBackends: 1048576, memoryLimit: 256Mi, pinPath: {}}}\nadmin: {{metrics: \"\", socket: {}}}\nservices: []\n",
            dir.join("pins").display(),
            dir.join("admin.sock").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(geosteer_tests::bin_path("geosteer"))
        .args(["agent", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in [
        "over the limit of 256.0 MiB (dataplane.memoryLimit)",
        "GS_BACKEND_STATS",
        "Lower dataplane.maxBackends (1048576",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!dir.join("pins").exists(), "nothing was created");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A pod interface that appears after the agent started (matching a `dataplane.tc` glob) is
/// attached within a second; its clients reach the VIP. When it goes away, so does the link.
#[test]
fn new_interfaces_matching_the_globs_are_attached_as_they_appear() {
    let lab = lab("gsn6", 2, false);
    let pins = PinDir::new("gsn6").unwrap();
    let agent = Agent::start(
        &lab.node,
        &pins,
        &config(&lab, &pins, &[("b1", 1), ("b2", 1)], "cl0, \"pod*\"", ""),
    )
    .expect("agent starts");
    let pod = geosteer_tests::Netns::new("gsn6-pod").unwrap();
    geosteer_tests::veth(
        &pod,
        "eth0",
        "198.18.5.2/24",
        &lab.node,
        "pod5",
        "198.18.5.1/24",
    )
    .unwrap();
    pod.exec(&["ip", "route", "add", "default", "via", "198.18.5.1"])
        .unwrap();
    pod.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    let created = std::time::Instant::now();
    let deadline = created + std::time::Duration::from_secs(1);
    while !agent.log_contains("iface=\"pod5\"") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        agent.log_contains("iface=\"pod5\" hook=\"tc-ingress\""),
        "not attached within 1 s: {:?}",
        agent.log()
    );
    let mut opts = HttpOptions::new(40, 1);
    opts.timeout_ms = 1000;
    let report = http_from(&pod, &format!("{VIP}:80"), &opts).unwrap();
    assert_eq!(report.ok, 40, "{report:?}");
    assert!(pins.pin_path().join("links/pod5_tc-ingress").exists());

    lab.node.exec(&["ip", "link", "del", "pod5"]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while pins.pin_path().join("links/pod5_tc-ingress").exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !pins.pin_path().join("links/pod5_tc-ingress").exists(),
        "pin of a removed interface stays"
    );
    assert!(agent.log_contains("interface gone"));
}

/// What the kernel programs log (aya-log) reaches the agent's own log, under the target
/// `geosteer::kernel`: with `RUST_LOG=info,geosteer::kernel=debug` every dropped packet is
/// named with its tuple and reason (here SYNs to a service without endpoints), which also
/// shows that the verifier takes the programs with their debug statements on.
#[test]
fn kernel_drops_reach_the_agent_log_at_debug() {
    let lab = lab("gsnk", 1, false);
    let pins = PinDir::new("gsnk").unwrap();
    let empty = "  - name: empty\n    vip: 198.19.0.11\n    ports: [{port: 80, targetPort: 8080}]\n    endpoints: []\n";
    let yaml = format!("{}{empty}", config(&lab, &pins, &[("b1", 1)], "cl0", ""));
    let agent = Agent::start_with_env(
        &lab.node,
        &pins,
        &yaml,
        &[("RUST_LOG", "info,geosteer::kernel=debug")],
    )
    .expect("agent starts");
    let mut opts = HttpOptions::new(2, 1);
    opts.timeout_ms = 500;
    let report = http_from(&lab.client, "198.19.0.11:80", &opts).unwrap();
    assert_eq!(report.ok, 0, "{report:?}");
    let wanted = "-> 198.19.0.11:80 (proto 6): no_backend";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !agent.log_contains(wanted) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = agent.log();
    let line = log.iter().find(|l| l.contains(wanted));
    assert!(
        line.is_some_and(|l| l.contains("DEBUG") && l.contains("geosteer::kernel")),
        "no kernel drop record in the agent's log: {log:?}"
    );
    // Traffic that is steered logs nothing of the kind.
    let steered = lab.client_http(&format!("{VIP}:80"), 20, 1).unwrap();
    assert_eq!(steered.ok, 20, "{steered:?}");
    assert!(
        !agent
            .log()
            .iter()
            .any(|l| l.contains(&format!("-> {VIP}:80"))),
        "{:?}",
        agent.log()
    );
}
