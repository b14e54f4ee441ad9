//! The node diagnostics end to end: `geosteer agent` in a node namespace with real HTTP
//! backends in two regions, and every CLI command (`status`, `services`, `backends`, `flows`,
//! `explain`, `events`, `top`), the admin socket and the metrics endpoint checked against the
//! traffic actually sent.
//!
//! Needs root (netns, BPF); run through `cargo xtask test`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use geosteer_tests::{
    HttpOptions, Lab, LabSpec,
    agent::{Agent, METRICS_ADDRESS, PinDir},
    bin_path, http_from, require_root, wait_until,
};
use serde_json::Value;

const VIP: &str = "198.19.0.10";
const CLIENT: &str = "198.18.0.2";

/// hz1, hz2 in cn-hangzhou; sh1, sh2 in cn-shanghai; HTTP on 8080, UDP on 5353.
fn two_region_lab(prefix: &str) -> Lab {
    require_root();
    let mut lab = Lab::build(&LabSpec::two_regions(prefix)).expect("lab builds");
    lab.start_backends(8080, Some(5353))
        .expect("backends start");
    lab
}

/// The service on VIP:80 (TCP) and VIP:53 (UDP) over the four backends, with `policy`
/// (service-level YAML lines) appended.
fn config(pins: &PinDir, policy: &str) -> String {
    format!(
        "node: {{name: lab-node, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: ack-hangzhou}}
dataplane:
  tc: [cl0]
  pinPath: {}
  maxServices: 16
  maxBackends: 1024
  conntrackSize: 65536
services:
  - name: reviews
    vip: {VIP}
    ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}]
    endpoints:
      - {{ip: 198.18.11.2, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: ack-hangzhou}}
      - {{ip: 198.18.12.2, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: ack-hangzhou}}
      - {{ip: 198.18.21.2, region: cn-shanghai, zone: cn-shanghai-a, cluster: ack-shanghai}}
      - {{ip: 198.18.22.2, region: cn-shanghai, zone: cn-shanghai-a, cluster: ack-shanghai}}
{policy}",
        pins.pin_path().display()
    )
}

/// 90/10 between the regions, and a 5xx ejects at once.
const DISTRIBUTE_AND_EJECT: &str = "    trafficPolicy:
      loadBalancer:
        localityLbSetting:
          distribute:
            - from: cn-hangzhou/*
              to: {\"cn-hangzhou/*\": 90, \"cn-shanghai/*\": 10}
      outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
";

/// The backend's name (`X-Backend`) → its `ip:8080`.
fn address_of(lab: &Lab, name: &str) -> String {
    format!("{}:8080", lab.backend(name).unwrap().ip)
}

/// Runs `geosteer ARGS --socket … --pin-path …` from the host namespace (the socket and the
/// pins are files, reachable from anywhere) and returns (success, stdout, stderr).
fn geosteer(pins: &PinDir, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_path("geosteer"))
        .args(args)
        .arg("--socket")
        .arg(pins.socket_path())
        .arg("--pin-path")
        .arg(pins.pin_path())
        .stdin(Stdio::null())
        .output()
        .expect("geosteer runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `geosteer ARGS`, which must succeed; its stdout.
fn run(pins: &PinDir, args: &[&str]) -> String {
    let (ok, stdout, stderr) = geosteer(pins, args);
    assert!(ok, "geosteer {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}

/// `geosteer ARGS -o json`, parsed.
fn json(pins: &PinDir, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let out = run(pins, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// `GET path` on the agent's HTTP endpoint, from inside the node namespace: (status, body).
fn http_get(lab: &Lab, path: &str) -> (u16, String) {
    let out = lab
        .node
        .exec(&[
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{METRICS_ADDRESS}{path}"),
        ])
        .expect("curl runs");
    let (body, code) = out.rsplit_once('\n').expect("curl printed a status");
    (
        code.trim().parse().expect("a status code"),
        body.to_string(),
    )
}

/// Samples of a Prometheus text exposition: (name, labels) → value.
fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.insert((name, labels), value.parse().expect("a number"));
    }
    out
}

/// The value of `name` whose labels include all of `labels` (0 if none).
fn sample(
    scrape: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    scrape
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn every_command_describes_the_running_agent() {
    let lab = two_region_lab("gsc1");
    let pins = PinDir::new("gsc1").unwrap();
    let agent =
        Agent::start(&lab.node, &pins, &config(&pins, DISTRIBUTE_AND_EJECT)).expect("agent starts");
    let traffic = lab.client_http(&format!("{VIP}:80"), 200, 1).unwrap();
    assert_eq!(traffic.ok, 200, "{traffic:?}");
    // hz1 answers 503 once and is ejected.
    lab.set_status("hz1", 503).unwrap();
    let mut one_at_a_time = HttpOptions::new(40, 1);
    one_at_a_time.concurrency = 1;
    http_from(&lab.client, &format!("{VIP}:80"), &one_at_a_time).unwrap();
    wait_until("hz1 ejected", Duration::from_secs(5), || {
        run(&pins, &["events"]).contains("ejected 198.18.11.2:8080")
    });

    // status: up, ready, attached with TCX on cl0, map fill levels.
    let status = run(&pins, &["status"]);
    for needle in [
        "agent:        up, pid",
        "node:         lab-node (cn-hangzhou/cn-hangzhou-b, cluster ack-hangzhou)",
        "ready:        yes",
        "generation 1",
        "programs pinned: yes",
    ] {
        assert!(status.contains(needle), "{needle:?} not in:\n{status}");
    }
    let attached: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("cl0 "))
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        attached,
        ["cl0 tc-egress tcx", "cl0 tc-ingress tcx"],
        "{status}"
    );
    let status_json = json(&pins, &["status"]);
    assert_eq!(status_json["agent"]["up"], true);
    assert_eq!(status_json["info"]["ready"], true);
    assert_eq!(
        status_json["info"]["config_path"],
        agent.config_path.display().to_string()
    );
    let fill: BTreeMap<String, (u64, u64)> = status_json["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["map"].as_str().unwrap().to_string(),
                (m["used"].as_u64().unwrap(), m["capacity"].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(fill["services"], (2, 16));
    assert_eq!(fill["backends"], (8, 1024));
    // Two entries per flow, for the 240 flows just made (LRU keeps them).
    assert_eq!(fill["conntrack"], (480, 65536));
    assert_eq!(fill["conntrack6"], (0, 16384));

    // services: policy mode, the priority load and locality weights after the ejection.
    let services = run(&pins, &["services"]);
    let tcp_row = services
        .lines()
        .find(|l| l.starts_with("default/reviews:80/TCP "))
        .unwrap_or_else(|| panic!("{services}"));
    let cells: Vec<&str> = tcp_row.split_whitespace().collect();
    assert_eq!(
        &cells[..7],
        [
            "default/reviews:80/TCP",
            "198.19.0.10:80/TCP",
            "http/1.x",
            "distribute",
            "P0",
            "100.0%",
            "3/4"
        ],
        "{services}"
    );
    assert!(
        services.contains("cn-hangzhou/cn-hangzhou-b/  P0        90      86.3%      1/2"),
        "availability lowers cn-hangzhou's effective weight (90 × 0.7 renormalised):\n{services}"
    );
    let services_json = json(&pins, &["services"]);
    let tcp = &services_json["services"][0];
    assert_eq!(tcp["name"], "default/reviews:80/TCP");
    assert_eq!(tcp["priorities"][0]["load_percent"], 100.0);
    assert_eq!(tcp["counters"]["new_flows"], 240);

    // backends: health, ejection deadline, counters per backend.
    let backends_json = json(&pins, &["backends", "reviews"]);
    let tcp_backends = backends_json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frontend"] == "198.19.0.10:80/TCP")
        .unwrap()["backends"]
        .as_array()
        .unwrap()
        .clone();
    let hz1 = tcp_backends
        .iter()
        .find(|b| b["address"] == "198.18.11.2:8080")
        .unwrap();
    assert_eq!(hz1["health"], "ejected");
    assert_eq!(hz1["kernel_ejected"], true);
    assert_eq!(hz1["ejections_total"], 1);
    assert_eq!(hz1["effective_percent"], 0.0);
    assert!(hz1["ejected_until"].as_str().unwrap().ends_with('Z'));
    assert!(hz1["counters"]["responses"]["5xx"].as_u64().unwrap() >= 1);
    let flows_total: u64 = tcp_backends
        .iter()
        .map(|b| b["counters"]["new_flows"].as_u64().unwrap())
        .sum();
    assert_eq!(flows_total, 240);
    let table = run(&pins, &["backends", "default/reviews"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("198.18.11.2:8080") && l.contains(" ejected ")),
        "{table}"
    );
    let (ok, _, stderr) = geosteer(&pins, &["backends", "ratings"]);
    assert!(
        !ok && stderr.contains("no service matches \"ratings\""),
        "{stderr}"
    );

    // flows: one line per connection, filters by service and backend.
    let flows = json(&pins, &["flows", "--service", "reviews"]);
    assert_eq!(flows["flows"].as_array().unwrap().len(), 240);
    let to_sh1 = json(&pins, &["flows", "--backend", "198.18.21.2"]);
    for flow in to_sh1["flows"].as_array().unwrap() {
        assert_eq!(flow["backend"], "198.18.21.2:8080");
        assert_eq!(
            flow["client"].as_str().unwrap().split(':').next(),
            Some(CLIENT)
        );
        // Each request closed its connection: FIN both ways.
        assert_eq!(flow["state"], "closed");
    }
    let flows_table = run(&pins, &["flows", "--backend", "198.18.21.2:8080"]);
    assert!(flows_table.ends_with(&format!(
        "{} flow{}\n",
        to_sh1["flows"].as_array().unwrap().len(),
        if to_sh1["flows"].as_array().unwrap().len() == 1 {
            ""
        } else {
            "s"
        }
    )));

    // explain: a random source port, the verdict from the program, the why from the agent.
    let explained = json(
        &pins,
        &["explain", "--src", CLIENT, "--dst", &format!("{VIP}:80")],
    );
    assert_eq!(explained["verdict"], "backend");
    assert_eq!(explained["source_port_random"], true);
    assert_eq!(explained["conntrack_entries_removed"], 2);
    assert_eq!(explained["priority"]["level"], 0);
    assert_ne!(
        explained["backend"], "198.18.11.2:8080",
        "never the ejected one"
    );
    assert!(
        explained["locality"]["name"]
            .as_str()
            .unwrap()
            .starts_with("cn-")
    );
    // A port outside the ephemeral range: no earlier connection used it.
    let text = run(
        &pins,
        &[
            "explain",
            "--src",
            &format!("{CLIENT}:20000"),
            "--dst",
            &format!("{VIP}:80"),
        ],
    );
    for needle in [
        "verdict:  198.18.",
        "table slot ",
        "priority P0: 100.0% of new flows",
        "locality cn-",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let udp = json(
        &pins,
        &[
            "explain",
            "--src",
            CLIENT,
            "--dst",
            &format!("{VIP}:53"),
            "--proto",
            "udp",
        ],
    );
    assert_eq!(udp["verdict"], "backend");
    assert!(udp["backend"].as_str().unwrap().ends_with(":5353"), "{udp}");
    let nothing = json(
        &pins,
        &["explain", "--src", CLIENT, "--dst", &format!("{VIP}:81")],
    );
    assert_eq!(nothing["verdict"], "not-a-service");

    // events: the timeline so far, and --follow streams a reload as it happens.
    let events = json(&pins, &["events"]);
    let kinds: BTreeSet<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains("agent") && kinds.contains("ejection"),
        "{events}"
    );
    let mut follow = Command::new(bin_path("geosteer"))
        .args(["events", "--follow", "-o", "json", "--socket"])
        .arg(pins.socket_path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    // A reader thread, so a missing event fails the test instead of hanging it.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::fs::write(
        &agent.config_path,
        std::fs::read_to_string(&agent.config_path).unwrap() + "# edited\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reload = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("events --follow printed the reload within 10 s");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["kind"] == "reload" {
            break event;
        }
    };
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert!(
        reload["message"]
            .as_str()
            .unwrap()
            .starts_with("reload (file change)"),
        "{reload}"
    );
    let status_json = json(&pins, &["status"]);
    assert_eq!(status_json["info"]["generation"], 2);
    assert_eq!(status_json["info"]["last_reload"]["result"], "applied");

    // top: rates over an interval with traffic in it.
    let top = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let mut opts = HttpOptions::new(1000, 1);
            opts.concurrency = 2;
            http_from(&lab.client, &format!("{VIP}:80"), &opts).unwrap()
        });
        let top = json(&pins, &["top", "--count", "1", "--interval", "1500ms"]);
        traffic.join().unwrap();
        top
    });
    let rate: f64 = top["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["new_flows_per_second"].as_f64().unwrap())
        .sum();
    assert!(rate > 0.0, "{top}");
    let table = run(&pins, &["top", "--count", "1", "--interval", "200ms"]);
    assert!(
        table.contains("NEW FLOWS/S") && table.contains("198.18.22.2:8080"),
        "{table}"
    );

    // YAML for scripts, too.
    let yaml = run(&pins, &["services", "-o", "yaml"]);
    assert!(yaml.contains("name: default/reviews:80/TCP"), "{yaml}");
}

#[test]
fn explain_agrees_with_real_connections_from_a_hundred_random_ports() {
    let lab = two_region_lab("gsc2");
    let pins = PinDir::new("gsc2").unwrap();
    let _agent =
        Agent::start(&lab.node, &pins, &config(&pins, DISTRIBUTE_AND_EJECT)).expect("agent starts");
    let names: BTreeMap<String, &str> = ["hz1", "hz2", "sh1", "sh2"]
        .into_iter()
        .map(|name| (address_of(&lab, name), name))
        .collect();

    let mut ports = BTreeSet::new();
    let mut backends_seen = BTreeSet::new();
    while ports.len() < 120 {
        // explain picks the source port at random; a repeat would meet its own first flow.
        let explained = json(
            &pins,
            &["explain", "--src", CLIENT, "--dst", &format!("{VIP}:80")],
        );
        let source = explained["source"].as_str().unwrap();
        let port: u16 = source.rsplit_once(':').unwrap().1.parse().unwrap();
        if !ports.insert(port) {
            continue;
        }
        assert_eq!(explained["verdict"], "backend", "{explained}");
        assert_eq!(explained["conntrack_entries_removed"], 2, "{explained}");
        let predicted = explained["backend"].as_str().unwrap().to_string();

        let mut opts = HttpOptions::new(1, 1);
        opts.source_port = Some(port);
        let report = http_from(&lab.client, &format!("{VIP}:80"), &opts).unwrap();
        assert_eq!(report.ok, 1, "port {port}: {report:?}");
        let got = report.backends.keys().next().unwrap();
        assert_eq!(
            names.get(&predicted).copied(),
            Some(got.as_str()),
            "source port {port}: explain said {predicted}, the connection got {got}"
        );
        backends_seen.insert(got.clone());
    }
    // 90/10 over four backends: 120 connections reach every one of them (P(miss) < 1e-2).
    assert!(backends_seen.len() >= 3, "{backends_seen:?}");
}

#[test]
fn metrics_count_the_traffic_sent_and_pass_promtool() {
    let lab = two_region_lab("gsc3");
    let pins = PinDir::new("gsc3").unwrap();
    let _agent =
        Agent::start(&lab.node, &pins, &config(&pins, DISTRIBUTE_AND_EJECT)).expect("agent starts");
    assert_eq!(http_get(&lab, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(&lab, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(http_get(&lab, "/nothing").0, 404);

    let (code, before) = http_get(&lab, "/metrics");
    assert_eq!(code, 200, "{before}");
    let before = samples(&before);
    let report = lab.client_http(&format!("{VIP}:80"), 300, 2).unwrap();
    assert_eq!(report.ok, 600, "{report:?}");
    let udp = lab.client_udp(&format!("{VIP}:53"), 50).unwrap();
    assert_eq!(udp.ok, 50, "{udp:?}");
    let (code, text) = http_get(&lab, "/metrics");
    assert_eq!(code, 200, "{text}");
    let after = samples(&text);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };

    let tcp = [("service", "default/reviews:80/TCP")];
    let dns = [("service", "default/reviews:53/UDP")];
    assert_eq!(delta("geosteer_service_new_flows_total", &tcp), 300.0);
    assert_eq!(delta("geosteer_service_new_flows_total", &dns), 50.0);
    for name in ["hz1", "hz2", "sh1", "sh2"] {
        let backend = address_of(&lab, name);
        let labels = [tcp[0], ("backend", backend.as_str())];
        // Each connection made two requests on one flow.
        let requests = report.backends.get(name).copied().unwrap_or(0) as f64;
        assert_eq!(
            delta("geosteer_backend_new_flows_total", &labels),
            requests / 2.0,
            "{name}"
        );
        let mut ok = labels.to_vec();
        ok.push(("class", "2xx"));
        assert_eq!(
            delta("geosteer_backend_responses_total", &ok),
            requests,
            "{name}"
        );
        let udp_backend = format!("{}:5353", lab.backend(name).unwrap().ip);
        let udp_labels = [dns[0], ("backend", udp_backend.as_str())];
        assert_eq!(
            delta("geosteer_backend_new_flows_total", &udp_labels),
            udp.backends.get(name).copied().unwrap_or(0) as f64,
            "{name} (UDP)"
        );
    }
    // Localities add up their backends.
    let hangzhou = [tcp[0], ("locality", "cn-hangzhou/cn-hangzhou-b/")];
    let expected = (report.backends.get("hz1").copied().unwrap_or(0)
        + report.backends.get("hz2").copied().unwrap_or(0)) as f64
        / 2.0;
    assert_eq!(
        delta("geosteer_locality_new_flows_total", &hangzhou),
        expected
    );
    assert!(delta("geosteer_service_packets_total", &tcp) >= 600.0);
    assert!(delta("geosteer_service_bytes_total", &tcp) > 0.0);
    assert_eq!(
        sample(
            &after,
            "geosteer_priority_load_ratio",
            &[tcp[0], ("priority", "0")]
        ),
        1.0
    );
    assert_eq!(sample(&after, "geosteer_ready", &[]), 1.0);
    assert_eq!(
        sample(
            &after,
            "geosteer_attached",
            &[("interface", "cl0"), ("hook", "tc-ingress")]
        ),
        1.0
    );
    let ipv4 = [("family", "ipv4")];
    let ipv6 = [("family", "ipv6")];
    assert_eq!(
        sample(&after, "geosteer_conntrack_capacity", &ipv4),
        65536.0
    );
    assert!(sample(&after, "geosteer_conntrack_entries", &ipv4) >= 700.0);
    // No IPv6 service: its conntrack is there, and empty.
    assert_eq!(
        sample(&after, "geosteer_conntrack_capacity", &ipv6),
        16384.0
    );
    assert_eq!(sample(&after, "geosteer_conntrack_entries", &ipv6), 0.0);
    assert!(sample(&after, "geosteer_map_swaps_total", &[]) >= 2.0);
    assert_eq!(
        sample(&after, "geosteer_map_swap_duration_seconds_count", &[]),
        sample(&after, "geosteer_map_swaps_total", &[])
    );
    assert_eq!(
        sample(&after, "geosteer_drops_total", &[("reason", "no_backend")]),
        0.0
    );

    // An ejection shows as a counter and as the currently-ejected gauge.
    lab.set_status("hz1", 503).unwrap();
    let mut one_at_a_time = HttpOptions::new(40, 1);
    one_at_a_time.concurrency = 1;
    http_from(&lab.client, &format!("{VIP}:80"), &one_at_a_time).unwrap();
    let hz1 = [tcp[0], ("backend", "198.18.11.2:8080")];
    wait_until("hz1 ejected in the metrics", Duration::from_secs(5), || {
        let now = samples(&http_get(&lab, "/metrics").1);
        sample(&now, "geosteer_backend_ejected", &hz1) == 1.0
            && sample(&now, "geosteer_backend_ejections_total", &hz1) == 1.0
    });

    // promtool's linter has nothing to say about the exposition.
    let file = pins.root.join("metrics.txt");
    std::fs::write(&file, http_get(&lab, "/metrics").1).unwrap();
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool runs (Debian package prometheus; `cargo xtask test` installs it)");
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn commands_read_the_pinned_maps_while_the_agent_is_down() {
    let lab = two_region_lab("gsc4");
    let pins = PinDir::new("gsc4").unwrap();
    let yaml = config(&pins, "");
    let agent = Agent::start(&lab.node, &pins, &yaml).expect("agent starts");
    assert_eq!(
        lab.client_http(&format!("{VIP}:80"), 100, 1).unwrap().ok,
        100
    );

    // kill -9: the programs stay attached and keep steering; the maps stay pinned.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid().unwrap() as i32, libc::SIGKILL) };
    drop(agent);
    let status = run(&pins, &["status"]);
    assert!(
        status.starts_with("agent:        down (no agent answers on"),
        "{status}"
    );
    assert!(status.contains("programs pinned: yes"), "{status}");
    assert!(status.contains("cl0        tc-ingress  tcx"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["services", "2"])),
        "{status}"
    );
    let services = run(&pins, &["services"]);
    assert!(services.starts_with("agent: down ("), "{services}");
    assert!(
        services
            .lines()
            .any(|l| l.starts_with("-        198.19.0.10:80/TCP") && l.contains(" 4/4 ")),
        "{services}"
    );
    let backends = json(&pins, &["backends", "198.19.0.10:80"]);
    assert_eq!(backends["agent"]["up"], false);
    let new_flows: u64 = backends["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["counters"]["new_flows"].as_u64().unwrap())
        .sum();
    assert_eq!(new_flows, 100);
    assert_eq!(
        json(&pins, &["flows"])["flows"].as_array().unwrap().len(),
        100
    );
    // explain still runs the program that is attached.
    let explained = json(
        &pins,
        &["explain", "--src", CLIENT, "--dst", &format!("{VIP}:80")],
    );
    assert_eq!(explained["verdict"], "backend");
    assert_eq!(explained["agent"]["up"], false);
    let top = run(&pins, &["top", "--count", "1", "--interval", "100ms"]);
    assert!(top.starts_with("agent: down ("), "{top}");
    let (ok, _, stderr) = geosteer(&pins, &["events"]);
    assert!(!ok && stderr.contains("agent: down"), "{stderr}");

    // A clean stop (SIGTERM) leaves the data path as kill -9 does; `uninstall` removes it,
    // and explain has nothing left to run.
    let mut agent = Agent::start(&lab.node, &pins, &yaml).expect("agent restarts");
    assert!(run(&pins, &["status"]).starts_with("agent:        up"));
    assert!(agent.terminate().unwrap().success());
    assert!(
        !pins.socket_path().exists(),
        "the socket is removed on exit"
    );
    let status = run(&pins, &["status"]);
    assert!(status.contains("programs pinned: yes"), "{status}");
    assert!(status.contains("cl0        tc-ingress  tcx"), "{status}");
    let removed = run(&pins, &["uninstall"]);
    assert!(removed.contains("detached 2"), "{removed}");
    let status = run(&pins, &["status"]);
    assert!(status.contains("programs pinned: no"), "{status}");
    assert!(status.contains("attachments: none"), "{status}");
    let (ok, _, stderr) = geosteer(
        &pins,
        &[
            "explain",
            "--src",
            &format!("{CLIENT}:20000"),
            "--dst",
            &format!("{VIP}:80"),
        ],
    );
    assert!(
        !ok && stderr.contains("reading the pinned maps"),
        "{stderr}"
    );
}

/// Conntrack through the real agent: closed connections leave the table within the closing
/// timeout (both halves), live ones stay, and `status` and `/metrics` account for it.
#[test]
fn closed_flows_leave_conntrack_within_the_closing_timeout() {
    let lab = two_region_lab("gsc5");
    let pins = PinDir::new("gsc5").unwrap();
    let yaml = config(&pins, "").replace(
        "  conntrackSize: 65536\n",
        "  conntrackSize: 65536\n  conntrack: {tcpClosingTimeout: 1s, gcInterval: 1s}\n",
    );
    let _agent = Agent::start(&lab.node, &pins, &yaml).expect("agent starts");
    let report = lab.client_http(&format!("{VIP}:80"), 100, 1).unwrap();
    assert_eq!(report.ok, 100, "{report:?}");
    assert_eq!(
        json(&pins, &["flows"])["flows"].as_array().unwrap().len(),
        100,
        "the closed flows are still there right after"
    );
    wait_until(
        "the closed flows are collected",
        Duration::from_secs(6),
        || {
            json(&pins, &["flows"])["flows"]
                .as_array()
                .unwrap()
                .is_empty()
        },
    );
    let status = json(&pins, &["status"]);
    let gc = &status["conntrack_gc"];
    assert!(gc["expired"].as_u64().unwrap() >= 100, "{gc}");
    assert_eq!(gc["orphans"], 0, "{gc}");
    assert_eq!(
        status["maps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["map"] == "conntrack")
            .unwrap()["used"],
        0,
        "no half left behind: {status}"
    );
    let metrics = lab
        .node
        .exec(&[
            "curl",
            "-s",
            &format!("http://{}/metrics", geosteer_tests::agent::METRICS_ADDRESS),
        ])
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("geosteer_conntrack_gc_removed_total{reason=\"expired\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    let ready = lab
        .node
        .exec(&[
            "curl",
            "-s",
            &format!("http://{}/readyz", geosteer_tests::agent::METRICS_ADDRESS),
        ])
        .unwrap();
    assert_eq!(ready.trim(), "ready");
}
