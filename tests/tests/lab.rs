//! The namespace lab itself, without any BPF: topology, routing through the
//! node, the backend and client helpers, and cleanup.
//!
//! Needs root (CAP_NET_ADMIN); run through `cargo xtask test`. Every test
//! uses its own prefix, so they may also run in parallel.

use std::collections::BTreeMap;

use geosteer_tests::{HttpOptions, Lab, LabSpec, http_from, netns_list, require_root};

const PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;

fn lab3(prefix: &str) -> Lab {
    require_root();
    let mut lab = Lab::build(&LabSpec::simple(prefix, 3)).expect("build lab");
    lab.start_backends(PORT, Some(UDP_PORT))
        .expect("start backends");
    lab
}

fn only(name: &str, n: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([(name.to_string(), n)])
}

#[test]
fn http_reaches_each_backend_directly() {
    let lab = lab3("gslab-http");
    for (name, ip) in [
        ("b1", "198.18.11.2"),
        ("b2", "198.18.12.2"),
        ("b3", "198.18.13.2"),
    ] {
        let r = lab.client_http(&format!("{ip}:{PORT}"), 20, 1).unwrap();
        assert_eq!(r.ok, 20, "{name}: {r:?}");
        assert_eq!(r.errors, 0, "{name}: {r:?}");
        assert_eq!(r.connect_failures, 0, "{name}: {r:?}");
        assert_eq!(r.backends, only(name, 20), "{r:?}");
        assert_eq!(r.status, only("200", 20), "{r:?}");
        assert!(r.per_connection_backends_consistent);
    }
    assert_eq!(lab.backend("b2").unwrap().ip.to_string(), "198.18.12.2");
    assert_eq!(lab.backend("b3").unwrap().node_if, "bk13");
}

#[test]
fn udp_reaches_backend() {
    let lab = lab3("gslab-udp");
    let r = lab
        .client_udp(&format!("198.18.12.2:{UDP_PORT}"), 10)
        .unwrap();
    assert_eq!(r.ok, 10, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.backends, only("b2", 10));

    // Nothing listens on UDP there: every datagram times out, and the
    // client still exits successfully and says so in its report.
    let r = geosteer_tests::udp_from(&lab.client, "198.18.12.2:9001", 2, 200).unwrap();
    assert_eq!((r.ok, r.errors), (0, 2), "{r:?}");
}

#[test]
fn status_file_switches_backend_to_503_live() {
    let lab = lab3("gslab-503");
    let target = format!("198.18.11.2:{PORT}");

    lab.set_status("b1", 503).unwrap();
    let r = lab.client_http(&target, 5, 2).unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors, 10, "{r:?}");
    assert_eq!(r.status, only("503", 10), "{r:?}");
    assert_eq!(r.backends, only("b1", 10), "{r:?}");
    assert_eq!(r.connect_failures, 0);

    // Other backends are unaffected, and switching back takes effect at once.
    let other = lab
        .client_http(&format!("198.18.12.2:{PORT}"), 3, 1)
        .unwrap();
    assert_eq!(other.ok, 3, "{other:?}");
    lab.set_status("b1", 200).unwrap();
    let r = lab.client_http(&target, 5, 1).unwrap();
    assert_eq!(r.ok, 5, "{r:?}");

    assert!(lab.set_status("b1", 42).is_err());
    assert!(lab.set_status("nope", 503).is_err());
}

#[test]
fn keepalive_connections_stay_on_one_backend() {
    let lab = lab3("gslab-ka");
    let r = lab
        .client_http(&format!("198.18.13.2:{PORT}"), 10, 5)
        .unwrap();
    assert_eq!(r.ok, 50, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.backends, only("b3", 50));
    assert!(r.per_connection_backends_consistent);

    // Sequential run with a single worker gives the same answer.
    let opts = HttpOptions {
        concurrency: 1,
        ..HttpOptions::new(4, 5)
    };
    let r = http_from(&lab.client, &format!("198.18.13.2:{PORT}"), &opts).unwrap();
    assert_eq!(r.ok, 20, "{r:?}");
}

#[test]
fn refused_connections_are_reported_not_fatal() {
    let lab = lab3("gslab-refused");
    let r = lab.client_http("198.18.11.2:9", 3, 2).unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(r.errors, 6, "{r:?}");
    assert_eq!(r.connect_failures, 3, "{r:?}");
    assert!(r.first_error.is_some());
}

#[test]
fn backend_speaks_http10_and_reuses_connections_with_bodies() {
    let lab = lab3("gslab-curl");
    let url = format!("http://198.18.11.2:{PORT}/anything");

    let out = lab
        .client
        .exec(&["curl", "-sS", "-i", "--http1.0", "--max-time", "5", &url])
        .unwrap();
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    assert!(out.contains("X-Backend: b1\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nb1\n"), "{out}");

    // Two POSTs with bodies on one connection: curl reports one connect for
    // the first transfer and zero (reused) for the second.
    let out = lab
        .client
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-d",
            "some body",
            "-w",
            "[%{http_code} %{num_connects}]",
            &url,
            &url,
        ])
        .unwrap();
    assert_eq!(out, "b1\n[200 1]b1\n[200 0]", "{out}");

    let out = lab
        .client
        .exec(&[
            "curl",
            "-sS",
            "-i",
            "-H",
            "Connection: close",
            "--max-time",
            "5",
            &url,
        ])
        .unwrap();
    assert!(out.contains("Connection: close\r\n"), "{out}");
}

#[test]
fn uplink_client_and_watch() {
    require_root();
    let mut spec = LabSpec::simple("gslab-up", 2);
    spec.with_uplink = true;
    let mut lab = Lab::build(&spec).unwrap();
    lab.start_backends(PORT, None).unwrap();
    assert_eq!(lab.node_interfaces(), ["cl0", "up0", "bk11", "bk12"]);

    let up = lab.uplink_client.as_ref().unwrap();
    let r = http_from(up, &format!("198.18.12.2:{PORT}"), &HttpOptions::new(4, 2)).unwrap();
    assert_eq!(r.ok, 8, "{r:?}");
    assert_eq!(r.backends, only("b2", 8));

    let client = geosteer_tests::bin_path("lab-client");
    let out = lab
        .client
        .exec(&[
            client.to_str().unwrap(),
            "watch",
            "--target",
            &format!("198.18.11.2:{PORT}"),
            "--duration-ms",
            "300",
            "--interval-ms",
            "100",
        ])
        .unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!((2..=4).contains(&lines.len()), "{out}");
    for l in &lines {
        assert_eq!(l["backend"], "b1", "{out}");
        assert_eq!(l["status"], 200, "{out}");
        assert!(l["error"].is_null(), "{out}");
    }

    // A stopped backend shows up as an error line, a restarted one answers.
    lab.stop_backend("b1").unwrap();
    let r = lab
        .client_http(&format!("198.18.11.2:{PORT}"), 2, 1)
        .unwrap();
    assert_eq!(r.connect_failures, 2, "{r:?}");
    lab.start_backend("b1").unwrap();
    let r = lab
        .client_http(&format!("198.18.11.2:{PORT}"), 2, 1)
        .unwrap();
    assert_eq!(r.ok, 2, "{r:?}");
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let lab = lab3("gslab-drop");
    let names: Vec<String> = lab.namespaces().iter().map(|n| n.name.clone()).collect();
    assert_eq!(names.len(), 5);
    let pids: Vec<u32> = lab
        .backends
        .iter()
        .flat_map(|b| b.ns.pids().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "one lab-backend per backend namespace");
    let listed = netns_list().unwrap();
    for n in &names {
        assert!(listed.contains(n), "{n} missing from {listed:?}");
    }

    drop(lab);

    let listed = netns_list().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} survived the drop: {listed:?}");
    }
    for pid in pids {
        assert!(!is_lab_backend(pid), "lab-backend {pid} survived the drop");
    }
}

#[test]
fn drop_cleans_up_after_a_panic() {
    require_root();
    let result = std::panic::catch_unwind(|| {
        let _lab = lab3("gslab-panic");
        panic!("boom");
    });
    assert!(result.is_err());
    let listed = netns_list().unwrap();
    assert!(
        !listed.iter().any(|n| n.starts_with("gslab-panic-")),
        "{listed:?}"
    );
}

#[test]
fn stale_lab_from_a_crashed_run_is_replaced() {
    let crashed = lab3("gslab-stale");
    let old_pids: Vec<u32> = crashed
        .backends
        .iter()
        .flat_map(|b| b.ns.pids().unwrap())
        .collect();
    // Simulate a crash: nothing gets cleaned up.
    std::mem::forget(crashed);
    assert!(
        netns_list()
            .unwrap()
            .contains(&"gslab-stale-node".to_string())
    );

    let lab = lab3("gslab-stale");
    let r = lab
        .client_http(&format!("198.18.11.2:{PORT}"), 5, 1)
        .unwrap();
    assert_eq!(r.ok, 5, "{r:?}");
    for pid in old_pids {
        assert!(!is_lab_backend(pid), "stale lab-backend {pid} still runs");
    }
    drop(lab);
    assert!(
        !netns_list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("gslab-stale-"))
    );
}

#[test]
fn invalid_specs_are_rejected() {
    require_root();
    let mut spec = LabSpec::simple("gslab-bad", 2);
    spec.backends[1].subnet_index = spec.backends[0].subnet_index;
    assert!(Lab::build(&spec).is_err());
    let mut spec = LabSpec::simple("gslab-bad", 1);
    spec.backends[0].subnet_index = 1;
    assert!(Lab::build(&spec).is_err());
    assert!(
        !netns_list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("gslab-bad-"))
    );
}

/// True if `pid` is a live (non-zombie) lab-backend process.
fn is_lab_backend(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !zombie && String::from_utf8_lossy(&cmdline).contains("lab-backend")
}
