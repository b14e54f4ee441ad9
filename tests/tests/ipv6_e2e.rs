//! IPv6 end to end: the real `geosteer` binary in a node namespace of a dual-stack lab, an IPv6
//! service from the config file beside an IPv4 one, real HTTP and UDP backends in two regions,
//! real clients — the split, failover on 503, direct access, the CLI, and a `kill -9` restart.
//!
//! Needs root (netns, BPF); run through `cargo xtask test`.

use std::{
    collections::BTreeMap,
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use geosteer_tests::{
    HttpOptions, HttpReport, Lab, LabBackend, LabSpec,
    agent::{Agent, PinDir, geosteer_json},
    http_from, region_share, require_root, udp_from, wait_until,
};

const VIP6: &str = "2001:db8:19::10";
const VIP4: &str = "198.19.0.10";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn target6(port: u16) -> String {
    format!("[{VIP6}]:{port}")
}

/// hz1, hz2 in cn-hangzhou; sh1, sh2 in cn-shanghai; every link dual-stack.
fn dual_stack_lab(prefix: &str) -> Lab {
    require_root();
    let mut spec = LabSpec::two_regions(prefix);
    spec.ipv6 = true;
    let mut lab = Lab::build(&spec).expect("lab builds");
    lab.start_backends(HTTP_PORT, Some(UDP_PORT))
        .expect("backends start");
    lab
}

const FAILOVER: &str = "    trafficPolicy:
      loadBalancer:
        localityLbSetting:
          failover: [{from: cn-hangzhou, to: cn-shanghai}]
      outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}
";

/// `reviews6` on `[VIP6]:80` (HTTP) and `:53` (UDP) over the lab's IPv6 backend addresses,
/// and `reviews` on `VIP4:80` over their IPv4 ones, both with `policy`.
fn config(lab: &Lab, pins: &PinDir, policy: &str) -> String {
    let v6 = endpoints(lab, |b| format!("\"{}\"", b.ip6.expect("a dual-stack lab")));
    let v4 = endpoints(lab, |b| b.ip.to_string());
    lab_config(
        pins,
        &format!(
            "  - name: reviews6\n    vip: \"{VIP6}\"\n    ports:\n      - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n      - {{name: dns, port: 53, targetPort: {UDP_PORT}, protocol: UDP}}\n    endpoints:\n{v6}{policy}\
             \x20 - name: reviews\n    vip: {VIP4}\n    ports:\n      - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n    endpoints:\n{v4}{policy}"
        ),
    )
}

/// The agent's config in the lab (this node in cn-hangzhou) with `services` (YAML list items).
fn lab_config(pins: &PinDir, services: &str) -> String {
    format!(
        "node: {{name: lab-node, region: cn-hangzhou, cluster: c-cn-hangzhou}}\n\
         dataplane:\n  tc: [cl0]\n  pinPath: {}\n  maxServices: 16\n  maxBackends: 1024\n  conntrackSize: 65536\n  conntrackSize6: 65536\n\
         services:\n{services}",
        pins.pin_path().display()
    )
}

/// An endpoint line per lab backend, its address as `address` writes it, in its backend's
/// region (hz: cn-hangzhou, sh: cn-shanghai).
fn endpoints(lab: &Lab, address: impl Fn(&LabBackend) -> String) -> String {
    let mut lines = String::new();
    for b in &lab.backends {
        let region = if b.name.starts_with("hz") {
            "cn-hangzhou"
        } else {
            "cn-shanghai"
        };
        lines.push_str(&format!(
            "      - {{ip: {}, region: {region}, cluster: c-{region}}}\n",
            address(b)
        ));
    }
    lines
}

fn parallel(lab: &Lab, target: &str, connections: u32) -> HttpReport {
    lab.client_http(target, connections, 1)
        .expect("client runs")
}

fn sequential(lab: &Lab, target: &str, connections: u32) -> HttpReport {
    let mut opts = HttpOptions::new(connections, 1);
    opts.concurrency = 1;
    http_from(&lab.client, target, &opts).expect("client runs")
}

#[test]
fn an_ipv6_service_splits_fails_over_and_leaves_direct_access_alone() {
    let lab = dual_stack_lab("gs6a");
    let pins = PinDir::new("gs6a").unwrap();
    let _agent =
        Agent::start(&lab.node, &pins, &config(&lab, &pins, FAILOVER)).expect("agent starts");

    // The split: the local region's two backends share new connections; the other region,
    // a failover target, takes none while the local one is healthy.
    let before = parallel(&lab, &target6(80), 400);
    assert_eq!(before.ok, 400, "{before:?}");
    assert_eq!(region_share(&before.backends, "hz"), 1.0, "{before:?}");
    for name in ["hz1", "hz2"] {
        let share = region_share(&before.backends, name);
        assert!(
            (share - 0.5).abs() < 0.12,
            "{name} took {share:.3} of the connections: {:?}",
            before.backends
        );
    }
    // Keep-alive connections stay on their backend.
    let mut opts = HttpOptions::new(20, 10);
    opts.concurrency = 4;
    let keepalive = http_from(&lab.client, &target6(80), &opts).unwrap();
    assert_eq!(keepalive.ok, 200, "{keepalive:?}");
    assert!(keepalive.per_connection_backends_consistent);

    // UDP: every reply comes back from the VIP (the client checks its source).
    let udp = udp_from(&lab.client, &target6(53), 100, 2000).unwrap();
    assert_eq!(udp.ok, 100, "{udp:?}");
    assert_eq!(region_share(&udp.backends, "hz"), 1.0, "{udp:?}");

    // Direct access to each backend's IPv6 address is not steered.
    for b in &lab.backends {
        let direct = lab
            .client_http(&format!("[{}]:{HTTP_PORT}", b.ip6.unwrap()), 10, 1)
            .unwrap();
        assert_eq!(direct.ok, 10, "direct to {}: {direct:?}", b.name);
        assert_eq!(direct.backends.keys().collect::<Vec<_>>(), vec![&b.name]);
    }
    // The IPv4 service beside it.
    let v4 = parallel(&lab, &format!("{VIP4}:80"), 100);
    assert_eq!(v4.ok, 100, "{v4:?}");
    assert_eq!(region_share(&v4.backends, "hz"), 1.0, "{v4:?}");

    // The CLI names the IPv6 frontend, its backends and its flows in IPv6 form.
    let services = geosteer_json(&lab.node, &pins, &["services"]).unwrap();
    let frontends: Vec<&str> = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frontend"].as_str().unwrap())
        .collect();
    for expected in [
        "[2001:db8:19::10]:80/TCP",
        "[2001:db8:19::10]:53/UDP",
        "198.19.0.10:80/TCP",
    ] {
        assert!(frontends.contains(&expected), "{frontends:?}");
    }
    let status = geosteer_json(&lab.node, &pins, &["status"]).unwrap();
    let conntrack6 = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["map"] == "conntrack6")
        .unwrap_or_else(|| panic!("{status}"));
    assert!(conntrack6["used"].as_u64().unwrap() > 0, "{conntrack6}");
    assert_eq!(conntrack6["capacity"], 65536, "dataplane.conntrackSize6");
    let backends =
        geosteer_json(&lab.node, &pins, &["backends", "[2001:db8:19::10]:80/TCP"]).unwrap();
    let addresses: Vec<&str> = backends["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert!(
        addresses.contains(&"[2001:db8:18:b::2]:8080"),
        "{addresses:?}"
    );
    let flows = geosteer_json(
        &lab.node,
        &pins,
        &["flows", "--service", "[2001:db8:19::10]:80"],
    )
    .unwrap();
    let flows = flows["flows"].as_array().unwrap();
    assert!(!flows.is_empty(), "the IPv6 flows just made are listed");
    for flow in flows {
        assert_eq!(flow["frontend"], "[2001:db8:19::10]:80/TCP", "{flow}");
        let client = flow["client"].as_str().unwrap();
        assert!(client.starts_with("[2001:db8:18::2]:"), "{flow}");
        let backend = flow["backend"].as_str().unwrap();
        assert!(
            backend == "[2001:db8:18:b::2]:8080" || backend == "[2001:db8:18:c::2]:8080",
            "{flow}"
        );
    }

    // The local region fails: at most one 503 per backend before its ejection, then
    // everything goes to cn-shanghai.
    let failing_at = Instant::now();
    lab.set_status("hz1", 503).unwrap();
    lab.set_status("hz2", 503).unwrap();
    let during = sequential(&lab, &target6(80), 100);
    let errors = during.status.get("503").copied().unwrap_or(0);
    assert!(errors <= 2, "{errors} client-visible 503s: {during:?}");
    assert_eq!(during.ok + errors, 100, "{during:?}");
    let after = parallel(&lab, &target6(80), 200);
    assert_eq!(after.ok, 200, "{after:?}");
    assert_eq!(region_share(&after.backends, "sh"), 1.0, "{after:?}");
    // The IPv4 service has its own books: its backends (the same pods) were not ejected by
    // the IPv6 service's errors, and it sees the 503s itself.
    let v4 = sequential(&lab, &format!("{VIP4}:80"), 20);
    assert!(
        v4.status.get("503").copied().unwrap_or(0) >= 1,
        "the IPv4 service meets the failing backends on its own: {v4:?}"
    );

    // Healthy again: back after baseEjectionTime and a sweep.
    lab.set_status("hz1", 200).unwrap();
    lab.set_status("hz2", 200).unwrap();
    wait_until(
        "IPv6 traffic back in cn-hangzhou",
        Duration::from_secs(15),
        || region_share(&parallel(&lab, &target6(80), 20).backends, "hz") == 1.0,
    );
    assert!(failing_at.elapsed() >= Duration::from_secs(3));
}

/// `kill -9` of the agent under IPv6 load, and a restart: the programs keep steering with no
/// agent, and the new one re-adopts the IPv6 services (their backends' addresses read back from
/// the pinned map) without a request lost.
#[test]
fn kill_9_and_restart_under_ipv6_load_loses_no_request() {
    let lab = dual_stack_lab("gs6b");
    let pins = PinDir::new("gs6b").unwrap();
    let yaml = config(&lab, &pins, "");
    let agent = Agent::start(&lab.node, &pins, &yaml).expect("agent starts");
    let ids = || -> BTreeMap<String, u64> {
        let backends = geosteer_json(&lab.node, &pins, &["backends", &target6(80)]).unwrap();
        backends["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let address = b["address"].as_str().unwrap().to_string();
                (address, b["backend_id"].as_u64().unwrap())
            })
            .collect()
    };
    let before = ids();
    assert_eq!(before.len(), 4, "{before:?}");
    let report = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            let mut opts = HttpOptions::new(1000, 3);
            opts.concurrency = 4;
            http_from(&lab.client, &target6(80), &opts).expect("client runs")
        });
        std::thread::sleep(Duration::from_millis(300));
        let pid = agent.pid().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        drop(agent);
        std::thread::sleep(Duration::from_millis(300));
        let restarted = Agent::start(&lab.node, &pins, &yaml).expect("agent restarts");
        // Three service ports: both of the IPv6 service and the IPv4 one.
        assert!(
            restarted.log().iter().any(
                |l| l.contains("re-adopted state from pinned maps") && l.contains("services=3")
            ),
            "{:?}",
            restarted.log()
        );
        let report = runner.join().unwrap();
        // The IPv6 backends were read back: each kept its id.
        assert_eq!(ids(), before);
        let after = parallel(&lab, &target6(80), 100);
        assert_eq!(after.ok, 100, "{after:?}");
        drop(restarted);
        report
    });
    assert_eq!(report.errors, 0, "requests failed: {report:?}");
    assert_eq!(report.ok, 3000);
    assert_eq!(report.backends.len(), 4, "{:?}", report.backends);
}

/// The lab's addressing, as the tests above rely on it.
#[test]
fn lab_ipv6_addresses_are_the_ipv4_twins() {
    assert_eq!(
        geosteer_tests::lab_ipv6(11, 2),
        "2001:db8:18:b::2".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(
        geosteer_tests::lab_ipv6(0, 2),
        "2001:db8:18::2".parse::<Ipv6Addr>().unwrap()
    );
}

/// The IPv6 checksum rewrite against receivers that verify: with every offload off (the
/// senders compute full checksums, the receivers check them), and with the senders' TX offload
/// on (the node gets CHECKSUM_PARTIAL packets, rewrites them, and computes their checksums in
/// software on the way out, since its own TX offload is off) — a wrong pseudo-header update
/// would show as checksum errors and failed requests.
#[test]
fn ipv6_receivers_verify_every_checksum_with_and_without_partial_checksums() {
    let lab = dual_stack_lab("gs6c");
    let set = |ns: &geosteer_tests::Netns, tx: &str| {
        let links = ns.exec(&["ls", "/sys/class/net"]).unwrap();
        for dev in links.split_whitespace().filter(|d| *d != "lo") {
            ns.exec(&["ethtool", "-K", dev, "tx", tx, "rx", "off"])
                .unwrap();
        }
    };
    for ns in lab.namespaces() {
        set(ns, "off");
    }
    let pins = PinDir::new("gs6c").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config(&lab, &pins, "")).expect("agent starts");
    for partial in [false, true] {
        if partial {
            set(&lab.client, "on");
            for b in &lab.backends {
                set(&b.ns, "on");
            }
        }
        let http = lab.client_http(&target6(80), 200, 3).unwrap();
        assert_eq!(http.ok, 600, "partial checksums {partial}: {http:?}");
        let udp = udp_from(&lab.client, &target6(53), 100, 2000).unwrap();
        assert_eq!(udp.ok, 100, "partial checksums {partial}: {udp:?}");
        for ns in lab.namespaces() {
            let out = ns
                .exec(&["nstat", "-az", "TcpInCsumErrors", "Udp6InCsumErrors"])
                .unwrap();
            for line in out.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(
                    fields.get(1),
                    Some(&"0"),
                    "partial checksums {partial}: {}: {line}",
                    ns.name
                );
            }
        }
    }
}

/// `geosteer explain` for an IPv6 client: the program's verdict for a source port is the
/// backend a real connection from that port gets.
#[test]
fn explain_over_ipv6_agrees_with_real_connections() {
    let lab = dual_stack_lab("gs6d");
    let pins = PinDir::new("gs6d").unwrap();
    let _agent = Agent::start(&lab.node, &pins, &config(&lab, &pins, "")).expect("agent starts");
    let names: BTreeMap<String, &str> = lab
        .backends
        .iter()
        .map(|b| (format!("[{}]:{HTTP_PORT}", b.ip6.unwrap()), b.name.as_str()))
        .collect();
    let client = "2001:db8:18::2";
    let mut ports = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    while ports.len() < 40 {
        let explained = geosteer_json(
            &lab.node,
            &pins,
            &["explain", "--src", client, "--dst", &target6(80)],
        )
        .unwrap();
        let source = explained["source"].as_str().unwrap();
        assert!(source.starts_with("[2001:db8:18::2]:"), "{explained}");
        let port: u16 = source.rsplit_once(':').unwrap().1.parse().unwrap();
        if !ports.insert(port) {
            continue;
        }
        assert_eq!(explained["verdict"], "backend", "{explained}");
        assert_eq!(explained["frontend"], "[2001:db8:19::10]:80/TCP");
        assert_eq!(explained["service"], "default/reviews6:80/TCP");
        assert_eq!(explained["conntrack_entries_removed"], 2, "{explained}");
        let predicted = explained["backend"].as_str().unwrap().to_string();
        assert!(explained["slot_backend"].is_string(), "{explained}");

        let mut opts = HttpOptions::new(1, 1);
        opts.source_port = Some(port);
        let report = http_from(&lab.client, &target6(80), &opts).unwrap();
        assert_eq!(report.ok, 1, "port {port}: {report:?}");
        let got = report.backends.keys().next().unwrap();
        assert_eq!(
            names.get(&predicted).copied(),
            Some(got.as_str()),
            "source port {port}: explain said {predicted}, the connection got {got}"
        );
        seen.insert(got.clone());
    }
    assert!(seen.len() >= 3, "{seen:?}");
    // A client of the other family is refused, naming both.
    let error = geosteer_json(
        &lab.node,
        &pins,
        &["explain", "--src", "198.18.0.2", "--dst", &target6(80)],
    )
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("different families"),
        "{error:#}"
    );
}

/// `reviews` dual stack: `VIP4:80` and `[VIP6]:80`, over every backend's IPv4 address and, but
/// for sh2's, its IPv6 one.
fn dual_stack_config(lab: &Lab, pins: &PinDir, policy: &str) -> String {
    let endpoints = endpoints(lab, |b| match b.name.as_str() {
        "sh2" => b.ip.to_string(),
        _ => format!("{}, ip6: \"{}\"", b.ip, b.ip6.unwrap()),
    });
    lab_config(
        pins,
        &format!(
            "  - name: reviews\n    vip: {VIP4}\n    vip6: \"{VIP6}\"\n    ports:\n      - {{name: http, port: 80, targetPort: {HTTP_PORT}}}\n    endpoints:\n{endpoints}{policy}"
        ),
    )
}

/// A dual-stack service is one service: one table and one health state per endpoint, so 503s
/// seen over IPv6 eject the local region for IPv4 clients too; an endpoint without an IPv6
/// address takes IPv4 connections only.
#[test]
fn a_dual_stack_service_shares_its_endpoints_health_across_families() {
    let lab = dual_stack_lab("gs6e");
    let pins = PinDir::new("gs6e").unwrap();
    // Ejected for 30 s: longer than the whole check after the ejection takes.
    let policy = FAILOVER.replace("baseEjectionTime: 3s", "baseEjectionTime: 30s");
    let _agent = Agent::start(&lab.node, &pins, &dual_stack_config(&lab, &pins, &policy))
        .expect("agent starts");
    let target4 = format!("{VIP4}:80");
    for target in [target4.as_str(), &target6(80)] {
        let report = parallel(&lab, target, 200);
        assert_eq!(report.ok, 200, "{target}: {report:?}");
        assert_eq!(
            region_share(&report.backends, "hz"),
            1.0,
            "{target}: {report:?}"
        );
    }
    let services = geosteer_json(&lab.node, &pins, &["services"]).unwrap();
    let rows = services["services"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one service: {services}");
    assert_eq!(
        rows[0]["frontend"],
        "198.19.0.10:80/TCP + [2001:db8:19::10]:80/TCP"
    );
    // Each endpoint with both its addresses; sh2 has an IPv4 one only.
    let backends = geosteer_json(&lab.node, &pins, &["backends", "reviews"]).unwrap();
    let pairs: Vec<(String, Option<String>)> = backends["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let address = b["address"].as_str().unwrap().to_string();
            (address, b["address6"].as_str().map(str::to_string))
        })
        .collect();
    assert!(
        pairs.contains(&(
            "198.18.11.2:8080".to_string(),
            Some("[2001:db8:18:b::2]:8080".to_string())
        )),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("198.18.22.2:8080".to_string(), None)),
        "{pairs:?}"
    );

    // The local region fails, seen over IPv6 only.
    lab.set_status("hz1", 503).unwrap();
    lab.set_status("hz2", 503).unwrap();
    let during = sequential(&lab, &target6(80), 50);
    let errors = during.status.get("503").copied().unwrap_or(0);
    assert!(errors <= 2, "{errors} 503s: {during:?}");
    // IPv4 clients never meet the failing backends: they were ejected for the service.
    let v4 = sequential(&lab, &target4, 50);
    assert_eq!(v4.ok, 50, "{v4:?}");
    assert_eq!(region_share(&v4.backends, "sh"), 1.0, "{v4:?}");
    let v4 = parallel(&lab, &target4, 200);
    assert_eq!(
        (v4.ok, region_share(&v4.backends, "sh")),
        (200, 1.0),
        "{v4:?}"
    );
    assert!(v4.backends.contains_key("sh2"), "{v4:?}");
    // IPv6 clients go to the one cn-shanghai endpoint with an IPv6 address.
    let v6 = parallel(&lab, &target6(80), 200);
    assert_eq!(v6.ok, 200, "{v6:?}");
    assert_eq!(v6.backends.keys().collect::<Vec<_>>(), ["sh1"], "{v6:?}");
}
