//! Locality policy and 5xx-driven health end to end: the agent in a node namespace, real HTTP
//! backends in two regions whose status is switched to 503 live, real connections from a
//! client namespace.
//!
//! Needs root (netns, BPF); run through `cargo xtask test`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use geosteer_tests::{
    HttpOptions, HttpReport, Lab, LabSpec,
    agent::{Agent, PinDir, pin_in_older_layout, two_region_config as config},
    http_from, region_share, require_root, wait_until,
};

const VIP: &str = "198.19.0.10:80";

/// hz1, hz2 in cn-hangzhou (cluster ack-hangzhou); sh1, sh2 in cn-shanghai (ack-shanghai).
fn two_region_lab(prefix: &str) -> Lab {
    require_root();
    let mut lab = Lab::build(&LabSpec::two_regions(prefix)).expect("lab builds");
    lab.start_backends(8080, None).expect("backends start");
    lab
}

const FAILOVER: &str = "    trafficPolicy:
      loadBalancer:
        localityLbSetting:
          failover: [{from: cn-hangzhou, to: cn-shanghai}]
      outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}
";

/// One new connection at a time (so the errors before an ejection are exactly countable).
fn sequential(lab: &Lab, connections: u32) -> HttpReport {
    let mut opts = HttpOptions::new(connections, 1);
    opts.concurrency = 1;
    http_from(&lab.client, VIP, &opts).expect("client runs")
}

fn parallel(lab: &Lab, connections: u32) -> HttpReport {
    lab.client_http(VIP, connections, 1).expect("client runs")
}

#[test]
fn seed_failover_on_503_and_recovery_after_base_ejection_time() {
    let lab = two_region_lab("gsp1");
    let pins = PinDir::new("gsp1").unwrap();
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &config(&pins, &["hz1", "hz2", "sh1", "sh2"], FAILOVER),
    )
    .expect("agent starts");

    let before = parallel(&lab, 200);
    assert_eq!(before.ok, 200, "{before:?}");
    assert_eq!(
        region_share(&before.backends, "hz"),
        1.0,
        "all traffic stays local: {:?}",
        before.backends
    );

    // The local region starts failing.
    let failing_at = Instant::now();
    lab.set_status("hz1", 503).unwrap();
    lab.set_status("hz2", 503).unwrap();
    let during = sequential(&lab, 100);
    let errors = during.status.get("503").copied().unwrap_or(0);
    // consecutive5xxErrors = 1: at most one 5xx per local backend before it is ejected.
    assert!(
        errors <= 2,
        "{errors} client-visible 503s (≤ 1 per backend allowed): {during:?}"
    );
    assert_eq!(during.ok + errors, 100, "{during:?}");
    let after = parallel(&lab, 200);
    assert_eq!(after.ok, 200, "{after:?}");
    assert_eq!(
        region_share(&after.backends, "sh"),
        1.0,
        "everything failed over: {:?}",
        after.backends
    );

    // Healthy again: back after baseEjectionTime (3 s) and the next sweep (interval 1 s).
    lab.set_status("hz1", 200).unwrap();
    lab.set_status("hz2", 200).unwrap();
    wait_until(
        "traffic back in cn-hangzhou",
        Duration::from_secs(15),
        || region_share(&parallel(&lab, 20).backends, "hz") == 1.0,
    );
    assert!(
        failing_at.elapsed() >= Duration::from_secs(3),
        "came back before baseEjectionTime"
    );
}

#[test]
fn distribute_90_10_over_a_thousand_connections() {
    let lab = two_region_lab("gsp2");
    let pins = PinDir::new("gsp2").unwrap();
    let policy = "    trafficPolicy:
      loadBalancer:
        localityLbSetting:
          distribute:
            - from: cn-hangzhou/*
              to: {\"cn-hangzhou/*\": 90, \"cn-shanghai/*\": 10}
";
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &config(&pins, &["hz1", "hz2", "sh1", "sh2"], policy),
    )
    .expect("agent starts");
    let report = parallel(&lab, 1200);
    assert_eq!(report.ok, 1200, "{report:?}");
    let hz = region_share(&report.backends, "hz");
    assert!(
        (hz - 0.90).abs() <= 0.03,
        "cn-hangzhou share {hz:.3}: {:?}",
        report.backends
    );
}

#[test]
fn half_the_local_region_failing_spills_about_30_percent() {
    let lab = two_region_lab("gsp3");
    let pins = PinDir::new("gsp3").unwrap();
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &config(&pins, &["hz1", "hz2", "sh1", "sh2"], FAILOVER),
    )
    .expect("agent starts");
    lab.set_status("hz1", 503).unwrap();
    let probe = sequential(&lab, 20);
    assert!(
        probe.status.get("503").copied().unwrap_or(0) <= 1,
        "{probe:?}"
    );
    // P0 50% healthy → health 70 → 70% local, 30% to the failover region (Envoy, factor 1.4).
    let report = parallel(&lab, 1200);
    assert_eq!(report.ok, 1200, "{report:?}");
    let hz = region_share(&report.backends, "hz");
    assert!(
        (hz - 0.70).abs() <= 0.04,
        "local share {hz:.3}: {:?}",
        report.backends
    );
    assert_eq!(
        report.backends.get("hz1"),
        None,
        "the ejected backend gets nothing"
    );
}

#[test]
fn cluster_weights_20_80_and_the_shift_when_a_cluster_fails() {
    let lab = two_region_lab("gsp4");
    let pins = PinDir::new("gsp4").unwrap();
    let policy = "    clusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
";
    let _agent = Agent::start(
        &lab.node,
        &pins,
        &config(&pins, &["hz1", "hz2", "sh1", "sh2"], policy),
    )
    .expect("agent starts");
    let report = parallel(&lab, 1200);
    assert_eq!(report.ok, 1200, "{report:?}");
    let hz = region_share(&report.backends, "hz");
    assert!(
        (hz - 0.20).abs() <= 0.03,
        "ack-hangzhou share {hz:.3}: {:?}",
        report.backends
    );

    lab.set_status("sh1", 503).unwrap();
    lab.set_status("sh2", 503).unwrap();
    let during = sequential(&lab, 60);
    assert!(
        during.status.get("503").copied().unwrap_or(0) <= 2,
        "{during:?}"
    );
    let after = parallel(&lab, 300);
    assert_eq!(after.ok, 300, "{after:?}");
    assert_eq!(
        region_share(&after.backends, "hz"),
        1.0,
        "ack-shanghai's share moved: {:?}",
        after.backends
    );
}

#[test]
fn removing_a_regions_endpoints_fails_over_and_a_bad_reload_keeps_serving() {
    let lab = two_region_lab("gsp5");
    let pins = PinDir::new("gsp5").unwrap();
    let agent = Agent::start(
        &lab.node,
        &pins,
        &config(&pins, &["hz1", "hz2", "sh1", "sh2"], FAILOVER),
    )
    .expect("agent starts");
    assert_eq!(region_share(&parallel(&lab, 100).backends, "hz"), 1.0);

    // The local region's endpoints disappear from the config (file change → reload).
    std::fs::write(&agent.config_path, config(&pins, &["sh1", "sh2"], FAILOVER)).unwrap();
    wait_until("traffic in cn-shanghai", Duration::from_secs(10), || {
        let r = parallel(&lab, 20);
        r.ok == 20 && region_share(&r.backends, "sh") == 1.0
    });

    // An invalid config under traffic: rejected with the field path, traffic unaffected.
    let traffic = std::thread::scope(|scope| {
        let runner = scope.spawn(|| parallel(&lab, 600));
        std::thread::sleep(Duration::from_millis(200));
        let bad = config(&pins, &["sh1", "sh2"], FAILOVER)
            .replace("maxEjectionPercent: 100", "maxEjectionPercent: 150");
        std::fs::write(&agent.config_path, bad).unwrap();
        runner.join().unwrap()
    });
    assert_eq!(traffic.ok, 600, "{traffic:?}");
    wait_until(
        "the rejection in the agent log",
        Duration::from_secs(5),
        || agent.log_contains("maxEjectionPercent") && agent.log_contains("150"),
    );
    assert!(agent.log_contains("keeping the running state"));
    let after = parallel(&lab, 100);
    assert_eq!(
        (after.ok, region_share(&after.backends, "sh")),
        (100, 1.0),
        "{after:?}"
    );
}

#[test]
fn kill_9_and_restart_under_load_loses_no_request() {
    let lab = two_region_lab("gsp6");
    let pins = PinDir::new("gsp6").unwrap();
    let yaml = config(&pins, &["hz1", "hz2", "sh1", "sh2"], "");
    let agent = Agent::start(&lab.node, &pins, &yaml).expect("agent starts");
    let report = std::thread::scope(|scope| {
        // Keep-alive and new connections through the VIP the whole time.
        let runner = scope.spawn(|| {
            let mut opts = HttpOptions::new(1500, 3);
            opts.concurrency = 4;
            http_from(&lab.client, VIP, &opts).expect("client runs")
        });
        std::thread::sleep(Duration::from_millis(300));
        let pid = agent.pid().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        drop(agent);
        std::thread::sleep(Duration::from_millis(300));
        let restarted = Agent::start(&lab.node, &pins, &yaml).expect("agent restarts");
        assert!(
            restarted.log_contains("re-adopted"),
            "{:?}",
            restarted.log()
        );
        let report = runner.join().unwrap();
        drop(restarted);
        report
    });
    assert_eq!(
        report.errors, 0,
        "requests failed across the restart: {report:?}"
    );
    assert_eq!(report.ok, 4500);
    let per_backend: BTreeMap<_, _> = report.backends.clone();
    assert_eq!(per_backend.len(), 4, "{per_backend:?}");
}

/// A DaemonSet rolling update: SIGTERM to the agent, its successor 2 s later, under load —
/// new connections (several requests each) and a pool of keep-alive connections opened before
/// the stop that must carry requests through it. Nothing may fail: the programs keep steering
/// with no agent running, and the new agent adopts them and the conntrack they filled.
#[test]
fn sigterm_rollout_under_load_loses_no_request_and_no_connection() {
    let lab = two_region_lab("gsp8");
    let pins = PinDir::new("gsp8").unwrap();
    let yaml = config(&pins, &["hz1", "hz2", "sh1", "sh2"], "");
    let mut agent = Agent::start(&lab.node, &pins, &yaml).expect("agent starts");
    let started = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // The pooled connections run until the scenario is over, however long the restart takes.
    let stop_file = pins.root.join("stop-pool");
    let (rounds, pool, restarted_at) = std::thread::scope(|scope| {
        // Rounds of 200 new connections (3 requests each) until 1 s after the new agent is up.
        let runner = scope.spawn(|| {
            let mut rounds = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut opts = HttpOptions::new(200, 3);
                opts.concurrency = 4;
                rounds.push(http_from(&lab.client, VIP, &opts).expect("client runs"));
            }
            rounds
        });
        let pool = scope.spawn(|| {
            geosteer_tests::pool_until(&lab.client, VIP, 2, &stop_file).expect("pool client runs")
        });
        std::thread::sleep(Duration::from_millis(500));
        let status = agent.terminate().expect("agent stops");
        assert!(status.success(), "clean exit on SIGTERM: {status}");
        std::thread::sleep(Duration::from_secs(2));
        let restarted = Agent::start(&lab.node, &pins, &yaml).expect("agent restarts");
        let restarted_at = started.elapsed();
        assert!(
            restarted.log_contains("re-adopted"),
            "{:?}",
            restarted.log()
        );
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        std::fs::write(&stop_file, b"").unwrap();
        (runner.join().unwrap(), pool.join().unwrap(), restarted_at)
    });
    let requests: u64 = rounds.iter().map(|r| r.ok + r.errors).sum();
    let failed: Vec<_> = rounds.iter().filter(|r| r.errors > 0).collect();
    eprintln!(
        "rollout: {requests} requests on new connections in {} rounds, {} failed",
        rounds.len(),
        failed.iter().map(|r| r.errors).sum::<u64>()
    );
    assert!(
        failed.is_empty(),
        "requests failed across the rollout: {failed:?}"
    );
    assert!(rounds.len() >= 5, "{} rounds", rounds.len());
    let per_backend: BTreeMap<String, u64> =
        rounds
            .iter()
            .flat_map(|r| r.backends.clone())
            .fold(BTreeMap::new(), |mut all, (b, n)| {
                *all.entry(b).or_default() += n;
                all
            });
    assert_eq!(per_backend.len(), 4, "{per_backend:?}");
    let timeline = pool["timeline"].as_array().unwrap();
    let failed: Vec<_> = timeline
        .iter()
        .filter(|r| r.get("error").is_some() || r["status"].as_u64() != Some(200))
        .collect();
    assert!(
        failed.is_empty(),
        "keep-alive requests failed across the rollout: {failed:?}"
    );
    let after = timeline
        .iter()
        .filter(|r| {
            r["ms"]
                .as_u64()
                .is_some_and(|ms| ms > restarted_at.as_millis() as u64)
        })
        .count();
    assert!(
        timeline.len() > 100 && after > 10,
        "{} pooled requests, {after} after the new agent was ready",
        timeline.len()
    );
}

/// An upgrade whose conntrack layout changed (the pinned map is replaced by one in an older,
/// shorter layout while no agent runs): the new agent migrates the entries instead of starting
/// empty. The keep-alive connections opened before keep their entries — same age, established —
/// and carry requests all through; new connections before and after the upgrade all succeed.
///
/// New connections pause while the stand-in old map is pinned: in a real upgrade the old
/// programs write to the very map that is pinned (and the migration's catch-up copies what they
/// added), but here they keep writing to the map they were loaded with, which the stand-in does
/// not follow — an artifact of the simulation, not of the upgrade.
#[test]
fn rollout_across_a_conntrack_layout_change_keeps_every_connection() {
    let lab = two_region_lab("gsp9");
    let pins = PinDir::new("gsp9").unwrap();
    let yaml = config(&pins, &["hz1", "hz2", "sh1", "sh2"], "");
    let mut agent = Agent::start(&lab.node, &pins, &yaml).expect("agent starts");
    let stop = std::sync::atomic::AtomicBool::new(false);
    // The pooled connections run until the scenario is over, however long the restart takes.
    let stop_file = pins.root.join("stop-pool");
    let paused = std::sync::atomic::AtomicBool::new(false);
    let (rounds, pool, flows) = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            let mut rounds = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if paused.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                rounds.push(
                    http_from(&lab.client, VIP, &HttpOptions::new(20, 2)).expect("client runs"),
                );
            }
            rounds
        });
        let pool = scope.spawn(|| {
            geosteer_tests::pool_until(&lab.client, VIP, 2, &stop_file).expect("pool client runs")
        });
        std::thread::sleep(Duration::from_millis(500));
        paused.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300)); // the round in flight ends
        assert!(agent.terminate().expect("agent stops").success());
        let copied =
            pin_in_older_layout(&pins, "GS_CONNTRACK", 40, 0).expect("older layout pinned");
        assert!(copied >= 4, "{copied} entries");
        std::thread::sleep(Duration::from_millis(500));
        let upgraded = Agent::start(&lab.node, &pins, &yaml).expect("new agent starts");
        assert!(
            upgraded.log_contains("older layout: migrating") && upgraded.log_contains("migrated"),
            "{:?}",
            upgraded.log()
        );
        // Until the attach, the previous programs run on the maps moved aside and on the shared
        // ones: the new programs take over before anything is written.
        let log = upgraded.log();
        let line = |needle: &str| {
            log.iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {log:?}"))
        };
        assert!(
            line("attached iface") < line("services programmed"),
            "{log:?}"
        );
        let flows =
            geosteer_tests::agent::geosteer_json(&lab.node, &pins, &["flows"]).expect("flows");
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        std::fs::write(&stop_file, b"").unwrap();
        (runner.join().unwrap(), pool.join().unwrap(), flows)
    });
    let failed: Vec<_> = rounds.iter().filter(|r| r.errors > 0).collect();
    assert!(
        failed.is_empty(),
        "requests failed across the upgrade: {failed:?}"
    );
    let timeline = pool["timeline"].as_array().unwrap();
    let pool_failed: Vec<_> = timeline
        .iter()
        .filter(|r| r.get("error").is_some() || r["status"].as_u64() != Some(200))
        .collect();
    assert!(
        pool_failed.is_empty(),
        "keep-alive requests failed: {pool_failed:?}"
    );
    // The pooled connections' entries came through: established, as old as the connections.
    let kept: Vec<_> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["state"] == "established" && f["age_seconds"].as_f64().unwrap() >= 0.9)
        .collect();
    assert!(kept.len() >= 2, "{flows}");
}

#[test]
fn active_health_checks_take_a_dead_endpoint_out_and_bring_it_back() {
    let mut lab = two_region_lab("gsp7");
    let pins = PinDir::new("gsp7").unwrap();
    let policy = "    healthCheck: {type: http, path: /healthz, interval: 200ms, timeout: 200ms, healthyThreshold: 2, unhealthyThreshold: 2}
";
    let agent = Agent::start(
        &lab.node,
        &pins,
        &config(&pins, &["hz1", "hz2", "sh1", "sh2"], policy),
    )
    .expect("agent starts");
    let before = parallel(&lab, 200);
    assert_eq!(before.backends.len(), 4, "{before:?}");

    lab.stop_backend("hz1").unwrap();
    wait_until(
        "hz1 failing its active checks",
        Duration::from_secs(10),
        || agent.log_contains("198.18.11.2:8080 fails active checks"),
    );
    let during = parallel(&lab, 400);
    assert_eq!(
        during.ok, 400,
        "no connection goes to the dead endpoint: {during:?}"
    );
    assert_eq!(during.backends.get("hz1"), None);

    lab.start_backend("hz1").unwrap();
    wait_until(
        "hz1 passing its active checks again",
        Duration::from_secs(10),
        || agent.log_contains("198.18.11.2:8080 passes active checks"),
    );
    let after = parallel(&lab, 400);
    assert_eq!(after.ok, 400, "{after:?}");
    assert!(
        after.backends.get("hz1").copied().unwrap_or(0) > 40,
        "{after:?}"
    );
}
