//! The health signal end to end, with the seed's settings (`consecutive5xxErrors: 1`,
//! failover from the local region): the real agent in the node namespace, real backends, real
//! and hostile clients. Benign traffic that used to eject healthy backends — body segments that
//! look like a 503, lost SYNs, SYN|FIN then SYN, a SYN on an open connection, source ports aimed
//! at one backend, SYNs crafted to go unanswered — must eject nothing; real 503s, refused
//! connects and connect timeouts still eject, each after exactly N errors.
//!
//! Needs root (netns, BPF, iptables); run through `cargo xtask test`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use geosteer::dataplane::{BpfMaps, Dataplane as _};
use geosteer_common::{PROTO_TCP, ServiceKey, flow_hash};
use geosteer_tests::{
    HttpOptions, HttpReport, Lab, LabSpec,
    agent::{Agent, PinDir, two_region_config},
    http_from, lab_client_json, require_root,
};

const VIP: &str = "198.19.0.10:80";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The seed's outlier settings (asm.yaml: consecutive5xxErrors 1) with failover to the other
/// region; a long ejection so nothing comes back mid-test.
const SEED_POLICY: &str = "    trafficPolicy:
      loadBalancer:
        localityLbSetting:
          failover: [{from: cn-hangzhou, to: cn-shanghai}]
      outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
";

fn lab(prefix: &str) -> Lab {
    require_root();
    let mut lab = Lab::build(&LabSpec::two_regions(prefix)).expect("lab builds");
    lab.start_backends(8080, None).expect("backends start");
    lab
}

fn ejections(agent: &Agent) -> Vec<String> {
    agent
        .log()
        .into_iter()
        .filter(|l| l.contains(": ejected "))
        .collect()
}

fn parallel(lab: &Lab, connections: u32) -> HttpReport {
    lab.client_http(VIP, connections, 1).expect("client runs")
}

fn sequential(lab: &Lab, connections: u32, timeout_ms: u64) -> HttpReport {
    let mut opts = HttpOptions::new(connections, 1);
    opts.concurrency = 1;
    opts.timeout_ms = timeout_ms;
    http_from(&lab.client, VIP, &opts).expect("client runs")
}

/// Runs `attack` of `requests` requests and checks that every one was answered 200 (`what`
/// names them in the failure).
fn all_answered(lab: &Lab, attack: &str, requests: usize, what: &str) {
    let count = requests.to_string();
    let report = adversary(lab, &["--attack", attack, "--requests", &count]);
    let responses = report["responses"].as_array().unwrap();
    assert_eq!(responses.len(), requests, "{report}");
    assert!(
        responses.iter().all(|r| r["status"] == 200),
        "{what} failed: {report}"
    );
}

fn adversary(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["adversary", "--target", VIP];
    all.extend_from_slice(args);
    lab_client_json(&lab.client, &all).expect("lab-client adversary runs")
}

/// A backend's kernel counters, read from the agent's pinned maps.
fn kernel_counters(pins: &PinDir, ip: Ipv4Addr) -> geosteer_common::BackendCounters {
    let maps = BpfMaps::open_pinned(&pins.pin_path()).expect("pinned maps");
    let addr = u32::from(ip).to_be();
    let id = (0..1024u32)
        .find(|id| {
            maps.read_backend(*id).is_ok_and(|b| {
                b.addr == addr && b.flags & geosteer_common::BACKEND_FLAG_ACTIVE != 0
            })
        })
        .expect("backend programmed");
    maps.backend_counters(id).unwrap()
}

fn all_local(report: &HttpReport) -> bool {
    report.backends.keys().all(|b| b.starts_with("hz"))
}

#[test]
fn benign_and_hostile_traffic_ejects_nothing() {
    let lab = lab("gse1");
    let pins = PinDir::new("gse1").unwrap();
    let all = ["hz1", "hz2", "sh1", "sh2"];
    let agent = Agent::start(
        &lab.node,
        &pins,
        &two_region_config(&pins, &all, SEED_POLICY),
    )
    .expect("agent starts");

    // Downloads of captured HTTP exchanges: body segments that begin with `HTTP/1.1 503`.
    for _ in 0..4 {
        all_answered(&lab, "capture", 6, "capture downloads");
    }
    assert_eq!(
        ejections(&agent),
        Vec::<String>::new(),
        "a body segment ejected"
    );

    // An echo whose body (a 503 status line the client chose) follows its head in a write of
    // its own, with the client's next request sent in between.
    for _ in 0..3 {
        all_answered(&lab, "echo-early-request", 4, "echo requests");
    }
    assert_eq!(
        ejections(&agent),
        Vec::<String>::new(),
        "a reflected body ejected"
    );

    // Lost SYNs: every other SYN dropped at the local backends (a full accept queue looks
    // the same). Each lost SYN is retransmitted after 1 s and then served.
    let rule = [
        "-p",
        "tcp",
        "--syn",
        "-m",
        "statistic",
        "--mode",
        "nth",
        "--every",
        "2",
        "--packet",
        "0",
        "-j",
        "DROP",
    ];
    for b in ["hz1", "hz2"] {
        let mut args = vec!["iptables", "-I", "INPUT"];
        args.extend_from_slice(&rule);
        lab.backend(b)
            .unwrap()
            .ns
            .exec(&args)
            .expect("iptables rule");
    }
    let lossy = sequential(&lab, 8, 5000);
    for b in ["hz1", "hz2"] {
        let mut args = vec!["iptables", "-D", "INPUT"];
        args.extend_from_slice(&rule);
        lab.backend(b)
            .unwrap()
            .ns
            .exec(&args)
            .expect("iptables rule removed");
    }
    assert_eq!(lossy.ok, 8, "{lossy:?}");
    assert!(
        lossy.elapsed_ms >= 1000,
        "no SYN was lost ({} ms): the test proved nothing",
        lossy.elapsed_ms
    );
    assert!(all_local(&lossy), "{lossy:?}");
    assert_eq!(
        ejections(&agent),
        Vec::<String>::new(),
        "a lost SYN ejected"
    );

    // SYN|FIN then, 1.2 s later, a real SYN from the same port.
    for port in ["41001", "41002", "41003"] {
        let report = adversary(
            &lab,
            &["--attack", "synfin-then-syn", "--source-port", port],
        );
        assert_eq!(report["responses"][0]["status"], 200, "{report}");
    }
    assert_eq!(
        ejections(&agent),
        Vec::<String>::new(),
        "SYN|FIN then SYN ejected"
    );

    // A SYN injected into an open keep-alive connection: no new connection, no move.
    for port in ["41011", "41012"] {
        let report = adversary(&lab, &["--attack", "syn-on-open", "--source-port", port]);
        let r = &report["responses"];
        assert_eq!(
            (&r[0]["status"], &r[1]["status"]),
            (&200.into(), &200.into()),
            "{report}"
        );
        assert_eq!(
            r[0]["backend"], r[1]["backend"],
            "the connection moved: {report}"
        );
    }
    assert_eq!(
        ejections(&agent),
        Vec::<String>::new(),
        "a SYN on an open tuple ejected"
    );

    let after = parallel(&lab, 100);
    assert_eq!(after.ok, 100, "{after:?}");
    assert!(
        all_local(&after),
        "traffic left the healthy region: {after:?}"
    );
}

#[test]
fn real_failures_eject_after_exactly_n_errors() {
    let mut lab = lab("gse2");
    let pins = PinDir::new("gse2").unwrap();
    let policy = "    trafficPolicy:
      connectionPool: {tcp: {connectTimeout: 2s}}
      loadBalancer:
        localityLbSetting:
          failover: [{from: cn-hangzhou, to: cn-shanghai}]
      outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
";
    let all = ["hz1", "hz2", "sh1", "sh2"];
    let agent = Agent::start(&lab.node, &pins, &two_region_config(&pins, &all, policy))
        .expect("agent starts");

    // A real 503 from hz1: exactly 2 reach clients, then hz1 gets nothing.
    lab.set_status("hz1", 503).unwrap();
    let report = sequential(&lab, 60, 2000);
    assert_eq!(
        report.status.get("503").copied().unwrap_or(0),
        2,
        "{report:?}"
    );
    assert_eq!(ejections(&agent).len(), 1, "{:?}", ejections(&agent));

    // A refused connect (hz2's listener gone): exactly 2 refused, then hz2 is out.
    lab.stop_backend("hz2").unwrap();
    let report = sequential(&lab, 40, 2000);
    assert_eq!(report.connect_failures, 2, "{report:?}");
    let hz2 = kernel_counters(&pins, Ipv4Addr::new(198, 18, 12, 2));
    assert_eq!(hz2.connect_failures, 2);
    assert_eq!(ejections(&agent).len(), 2, "{:?}", ejections(&agent));
    assert!(
        report.backends.keys().all(|b| b.starts_with("sh")),
        "{report:?}"
    );

    // A connect timeout (sh1 black-holes SYNs): a SYN retransmitted 2 s or more after the first
    // is past the connectTimeout. Exactly 2 count; the second attempt's next retransmission
    // finds sh1 ejected and moves to sh2 (nothing was established), so clients see 1 or 2.
    lab.backend("sh1")
        .unwrap()
        .ns
        .exec(&[
            "iptables", "-I", "INPUT", "-p", "tcp", "--syn", "-j", "DROP",
        ])
        .expect("iptables rule");
    let started = Instant::now();
    let report = sequential(&lab, 24, 4000);
    assert!((1..=2).contains(&report.connect_failures), "{report:?}");
    assert_eq!(report.ok + report.connect_failures, 24, "{report:?}");
    let sh1 = kernel_counters(&pins, Ipv4Addr::new(198, 18, 21, 2));
    assert_eq!(sh1.connect_failures, 2, "timeouts counted");
    assert_eq!(ejections(&agent).len(), 3, "{:?}", ejections(&agent));
    assert_eq!(
        report.backends.keys().collect::<Vec<_>>(),
        ["sh2"],
        "{report:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Forged connect timeouts: SYNs the backends' stacks drop (a bad checksum), each repeated with
/// its ISN past the connect timeout, on backends nobody else connects to meanwhile — to the
/// kernel, exactly a backend that answers no one. With the seed's limit of 1 each used to eject
/// a healthy backend (both local ones: a regional failover on demand). The agent's own
/// connection to the backend succeeds, so the suspicions are dismissed, not counted.
#[test]
fn forged_connect_timeouts_on_idle_backends_eject_nothing() {
    let lab = lab("gse5");
    let pins = PinDir::new("gse5").unwrap();
    let policy = SEED_POLICY.replace(
        "    trafficPolicy:\n",
        "    trafficPolicy:\n      connectionPool: {tcp: {connectTimeout: 1s}}\n",
    );
    let all = ["hz1", "hz2", "sh1", "sh2"];
    let agent = Agent::start(&lab.node, &pins, &two_region_config(&pins, &all, &policy))
        .expect("agent starts");
    adversary(
        &lab,
        &[
            "--attack",
            "unanswerable-syn",
            "--source-port",
            "42100",
            "--requests",
            "12",
            "--repeat-after-ms",
            "1500",
        ],
    );
    let dismissed = |agent: &Agent| {
        agent
            .log()
            .into_iter()
            .filter(|l| l.contains("connect timeout(s) of") && l.contains("not counted"))
            .collect::<Vec<_>>()
    };
    // 12 ports over the two local backends: both get forged timeouts (all on one: p = 2^-11).
    let both_dismissed = |lines: &[String]| {
        ["198.18.11.2:8080", "198.18.12.2:8080"]
            .iter()
            .all(|b| lines.iter().any(|l| l.contains(b)))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !both_dismissed(&dismissed(&agent)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let dismissed = dismissed(&agent);
    assert!(
        both_dismissed(&dismissed),
        "each local backend's forged timeouts were suspected and dismissed: {dismissed:?}"
    );
    assert!(
        !agent
            .log()
            .iter()
            .any(|l| l.contains("counted: the agent's own connection failed too")),
        "a forged timeout was counted"
    );
    assert_eq!(
        ejections(&agent),
        Vec::<String>::new(),
        "a forged timeout ejected"
    );
    for ip in [Ipv4Addr::new(198, 18, 11, 2), Ipv4Addr::new(198, 18, 12, 2)] {
        assert_eq!(kernel_counters(&pins, ip).connect_failures, 0, "{ip}");
    }
    let after = parallel(&lab, 100);
    assert_eq!(after.ok, 100, "{after:?}");
    assert!(
        all_local(&after),
        "traffic left the healthy region: {after:?}"
    );
}

/// Source ports picked with the public, unkeyed hash to land on one backend spread over the
/// region like any others; the agent's key is random, non-zero and kept across a restart, and
/// the keyed hash predicts where each real connection went.
#[test]
fn source_ports_cannot_be_aimed_at_one_backend() {
    let lab = lab("gse3");
    let pins = PinDir::new("gse3").unwrap();
    let all = ["hz1", "hz2", "sh1", "sh2"];
    let config = two_region_config(&pins, &all, SEED_POLICY);
    let mut agent = Agent::start(&lab.node, &pins, &config).expect("agent starts");

    let maps = BpfMaps::open_pinned(&pins.pin_path()).expect("pinned maps");
    let seed = maps.read_settings().unwrap().hash_seed;
    assert_ne!(seed, 0, "the agent made no flow-hash key");
    let key = ServiceKey::for_vip(Ipv4Addr::new(198, 19, 0, 10), 80u16, PROTO_TCP);
    let service = maps.services.get(&key, 0).expect("service programmed");
    let table = geosteer::dataplane::KernelTable::read(&maps, &service).unwrap();
    let backend_at = |hash: u32| {
        let id = table.slot(hash).expect("a table with slots");
        let b = maps.read_backend(id).unwrap();
        Ipv4Addr::from(u32::from_be(b.addr))
    };
    let hash = |seed: u64, port: u16| {
        flow_hash(
            seed,
            u32::from(CLIENT_IP).to_be(),
            key.addr,
            port.to_be(),
            key.port,
            PROTO_TCP,
        )
    };
    let hz1 = Ipv4Addr::new(198, 18, 11, 2);
    let aimed: Vec<u16> = (42000..60000u16)
        .filter(|p| backend_at(hash(0, *p)) == hz1)
        .take(24)
        .collect();
    assert_eq!(aimed.len(), 24);

    let mut landed: BTreeMap<String, u32> = BTreeMap::new();
    for port in &aimed {
        let mut opts = HttpOptions::new(1, 1);
        opts.source_port = Some(*port);
        let report = http_from(&lab.client, VIP, &opts).expect("client runs");
        assert_eq!(report.ok, 1, "{report:?}");
        let backend = report.backends.keys().next().unwrap().clone();
        let predicted = match backend_at(hash(seed, *port)) {
            ip if ip == hz1 => "hz1",
            _ => "hz2",
        };
        assert_eq!(
            backend, predicted,
            "port {port}: the keyed hash mispredicted"
        );
        *landed.entry(backend).or_default() += 1;
    }
    let on_hz1 = landed.get("hz1").copied().unwrap_or(0);
    assert!(
        (4..=20).contains(&on_hz1),
        "{on_hz1} of 24 aimed connections on hz1: {landed:?}"
    );

    // The key survives a restart of the agent.
    drop(maps);
    agent.terminate().expect("agent stops");
    let _agent = Agent::start(&lab.node, &pins, &config).expect("agent restarts");
    let maps = BpfMaps::open_pinned(&pins.pin_path()).expect("pinned maps");
    assert_eq!(maps.read_settings().unwrap().hash_seed, seed);
}

/// A client with a pool of 4 keep-alive connections (how Go and Java clients talk) through a
/// regional failure, with the default `onEject`: at most N errors per failing backend plus one
/// per pooled connection, then only the remote region. (Before HTTP/1.x flows drained, such a
/// client kept its connections on the ejected backends and saw 503s for the whole run.)
#[test]
fn pooled_keep_alive_clients_fail_over_with_one_error_per_connection() {
    let lab = lab("gse4");
    let pins = PinDir::new("gse4").unwrap();
    let all = ["hz1", "hz2", "sh1", "sh2"];
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &two_region_config(&pins, &all, SEED_POLICY),
    )
    .expect("agent starts");

    let report = std::thread::scope(|s| {
        let client = s.spawn(|| {
            lab_client_json(
                &lab.client,
                &[
                    "pool",
                    "--target",
                    VIP,
                    "--connections",
                    "4",
                    "--duration-ms",
                    "4000",
                    "--interval-ms",
                    "10",
                ],
            )
            .expect("pool client runs")
        });
        std::thread::sleep(Duration::from_millis(1000));
        lab.set_status("hz1", 503).unwrap();
        lab.set_status("hz2", 503).unwrap();
        client.join().unwrap()
    });
    let timeline = report["timeline"].as_array().unwrap();
    let failed = |r: &serde_json::Value| {
        r.get("error").is_some() || r["status"].as_u64().is_some_and(|s| s >= 500)
    };
    let errors = timeline.iter().filter(|r| failed(r)).count();
    eprintln!(
        "pooled keep-alive client through the failover: {errors} failed of {} requests",
        timeline.len()
    );
    assert!(timeline.len() > 150, "{} requests", timeline.len());
    // consecutive5xxErrors 1 × 2 failing backends: at most 2 responses with a 5xx.
    let statuses_5xx = timeline
        .iter()
        .filter(|r| r["status"].as_u64().is_some_and(|s| s >= 500))
        .count();
    assert!(statuses_5xx <= 2, "{statuses_5xx} 5xx responses");
    // Plus one reset per pooled connection: the 4 it started with, and at most one
    // replacement that reconnected to the second failing region backend before that backend's
    // own first 503 ejected it (the first ejection moves load there: 70/30).
    assert!(
        errors <= 2 + 4 + 1,
        "{errors} of {} requests failed: {:?}",
        timeline.len(),
        timeline.iter().filter(|r| failed(r)).collect::<Vec<_>>()
    );
    let before: Vec<_> = timeline
        .iter()
        .filter(|r| r["ms"].as_u64() < Some(900))
        .collect();
    assert!(
        before
            .iter()
            .all(|r| r["backend"].as_str().is_some_and(|b| b.starts_with("hz")))
    );
    let late: Vec<_> = timeline
        .iter()
        .filter(|r| r["ms"].as_u64() > Some(2500))
        .collect();
    assert!(!late.is_empty());
    assert!(
        late.iter()
            .all(|r| !failed(r) && r["backend"].as_str().is_some_and(|b| b.starts_with("sh"))),
        "after the failover: {late:?}"
    );
}
