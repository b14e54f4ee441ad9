//! Kubernetes mode end to end: the real `geosteer agent` in the lab's node namespace, against
//! two stand-in API server processes (`geosteer-fake-apiserver`: list and watch over HTTP) — this
//! cluster (ack-hangzhou: hz1, hz2) and a remote one (ack-shanghai: sh1, sh2) — steering real
//! connections from the client namespace.
//!
//! Needs root (netns, BPF); run through `cargo xtask test`.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use geosteer_tests::{
    HttpOptions, Lab, LabSpec, Netns,
    agent::{Agent, PinDir},
    bin_path, http_from, require_root,
};
use serde_json::{Value, json};

const REVIEWS: &str = "198.19.0.10:80";
const DNS: &str = "198.19.0.53:53";

/// A stand-in API server in `ns` on 127.0.0.1:`port`; killed on drop.
struct FakeApiServer {
    child: Child,
    port: u16,
}

impl FakeApiServer {
    fn start(ns: &Netns, port: u16) -> FakeApiServer {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin_path("geosteer-fake-apiserver"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("geosteer-fake-apiserver starts (cargo xtask test builds it)");
        let server = FakeApiServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.exec_ok(&["curl", "-sf", &server.url("/version")]) {
            assert!(
                Instant::now() < deadline,
                "the fake API server did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn apply(&self, ns: &Netns, object: Value) {
        let out = ns
            .exec(&[
                "curl",
                "-sf",
                "-X",
                "POST",
                "--data",
                &object.to_string(),
                &self.url("/_fake/apply"),
            ])
            .unwrap_or_else(|e| panic!("applying {object}: {e:#}"));
        assert!(out.contains("applied"), "{out}");
    }

    fn kubeconfig(&self, pins: &PinDir, name: &str) -> String {
        let path = pins.root.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: {name}, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: {name}, user: {{}}}}]\ncontexts: [{{name: {name}, context: {{cluster: {name}, user: {name}}}}}]\n\
                 current-context: {name}\n",
                self.url("")
            ),
        )
        .unwrap();
        path.display().to_string()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(name: &str, region: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
        "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone}}})
}

fn service(namespace: &str, name: &str, vip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": [
            {"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn slice(namespace: &str, service: &str, suffix: &str, node: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| {
            json!({"addresses": [ip], "nodeName": node,
            "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-{suffix}"), "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints})
}

/// EndpointSlices of `namespace/name` in both clusters: hz1, hz2 on this cluster's lab node,
/// sh1, sh2 on the remote cluster's node.
fn apply_slices(
    ns: &Netns,
    local: &FakeApiServer,
    remote: &FakeApiServer,
    namespace: &str,
    name: &str,
) {
    local.apply(
        ns,
        slice(
            namespace,
            name,
            "hz",
            "lab-node",
            &["198.18.11.2", "198.18.12.2"],
        ),
    );
    remote.apply(
        ns,
        slice(
            namespace,
            name,
            "sh",
            "sh-node",
            &["198.18.21.2", "198.18.22.2"],
        ),
    );
}

/// The real agent in Kubernetes mode on the lab node, this cluster's API server `local` and
/// the remote cluster ack-shanghai's `remote`.
fn start_agent(ns: &Netns, pins: &PinDir, local: &FakeApiServer, remote: &FakeApiServer) -> Agent {
    let config = format!(
        "node: {{name: from-env, region: cn-hangzhou, cluster: ack-hangzhou}}\n\
         dataplane: {{tc: [cl0], pinPath: {}, maxServices: 16, maxBackends: 1024, conntrackSize: 65536}}\n\
         kubernetes:\n  snapshotPath: {}\n  clusters:\n    - {{name: ack-shanghai, kubeconfig: {}, region: cn-shanghai}}\n",
        pins.pin_path().display(),
        pins.root.join("snapshot.json").display(),
        remote.kubeconfig(pins, "ack-shanghai"),
    );
    let local_kubeconfig = local.kubeconfig(pins, "ack-hangzhou");
    Agent::start_with_env(
        ns,
        pins,
        &config,
        &[("NODE_NAME", "lab-node"), ("KUBECONFIG", &local_kubeconfig)],
    )
    .expect("agent starts in Kubernetes mode")
}

/// Backends that answered `connections` new connections to `target`.
fn answered_by(lab: &Lab, target: &str, connections: u32) -> Vec<String> {
    let report = http_from(&lab.client, target, &HttpOptions::new(connections, 1)).unwrap();
    assert_eq!(report.ok, u64::from(connections), "{target}: {report:?}");
    report.backends.keys().cloned().collect()
}

/// Same-named Services of the two clusters are one service — except kube-system's (Istio's
/// default) and the API server's, which keep to their own cluster's endpoints. Checked on live
/// connections and in `geosteer services`.
#[test]
fn remote_clusters_merge_applications_but_never_kube_system() {
    require_root();
    let mut lab = Lab::build(&LabSpec::two_regions("gsk1")).expect("lab builds");
    lab.start_backends(8080, None).expect("backends start");
    let local = FakeApiServer::start(&lab.node, 16443);
    let remote = FakeApiServer::start(&lab.node, 16444);
    let pins = PinDir::new("gsk1").unwrap();
    let ns = &lab.node;

    local.apply(ns, node("lab-node", "cn-hangzhou", "cn-hangzhou-b"));
    remote.apply(ns, node("sh-node", "cn-shanghai", "cn-shanghai-a"));
    for (namespace, name, vip, port) in [
        ("default", "reviews", "198.19.0.10", 80),
        ("kube-system", "kube-dns", "198.19.0.53", 53),
    ] {
        local.apply(ns, service(namespace, name, vip, port));
        remote.apply(ns, service(namespace, name, vip, port));
        apply_slices(ns, &local, &remote, namespace, name);
    }

    let agent = start_agent(ns, &pins, &local, &remote);
    assert!(
        agent.log_contains("desired state from kubernetes"),
        "{:?}",
        agent.log()
    );

    // The remote cluster's endpoints arrive once its watch has listed them.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let services = geosteer_tests::agent::geosteer_json(ns, &pins, &["services"]).unwrap();
        let reviews = services["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["frontend"]
                    .as_str()
                    .is_some_and(|f| f.starts_with(REVIEWS))
            })
            .cloned();
        if reviews
            .as_ref()
            .is_some_and(|r| r["clusters"].as_array().is_some_and(|c| c.len() == 2))
        {
            let dns = services["services"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["frontend"].as_str().is_some_and(|f| f.starts_with(DNS)))
                .cloned()
                .expect("kube-dns is steered");
            assert_eq!(dns["clusters"], json!(["ack-hangzhou"]), "{dns}");
            assert!(
                dns["cluster_local"]
                    .as_str()
                    .is_some_and(|why| why.contains("kube-system")),
                "{dns}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reviews never merged the remote cluster: {services}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let reviews = answered_by(&lab, REVIEWS, 200);
    assert_eq!(
        reviews,
        ["hz1", "hz2", "sh1", "sh2"],
        "merged across clusters"
    );
    let dns = answered_by(&lab, DNS, 200);
    assert_eq!(dns, ["hz1", "hz2"], "kube-dns never leaves its cluster");

    // A rolling update: the pods serving a client's keep-alive connections start terminating
    // (their EndpointSlice conditions say so). Their open connections carry on; no new
    // connection goes to them.
    let stop_file = pins.root.join("stop-pool");
    let (pool, during, pooled) = std::thread::scope(|scope| {
        let pool = scope.spawn(|| {
            geosteer_tests::pool_until(&lab.client, REVIEWS, 2, &stop_file)
                .expect("pool client runs")
        });
        // The pool's backends: the established flows (its timeline comes only at its end).
        std::thread::sleep(Duration::from_millis(500));
        let flows = geosteer_tests::agent::geosteer_json(ns, &pins, &["flows"]).unwrap();
        let pooled: Vec<String> = flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["state"] == "established")
            .map(|f| {
                f["backend"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(!pooled.is_empty(), "{flows}");
        for (server, suffix, node, ips) in [
            (&local, "hz", "lab-node", ["198.18.11.2", "198.18.12.2"]),
            (&remote, "sh", "sh-node", ["198.18.21.2", "198.18.22.2"]),
        ] {
            let mut object = slice("default", "reviews", suffix, node, &ips);
            for endpoint in object["endpoints"].as_array_mut().unwrap() {
                if pooled
                    .iter()
                    .any(|p| endpoint["addresses"][0] == p.as_str())
                {
                    endpoint["conditions"] =
                        json!({"ready": false, "serving": true, "terminating": true});
                }
            }
            server.apply(ns, object);
        }
        std::thread::sleep(Duration::from_secs(1));
        let during = answered_by(&lab, REVIEWS, 200);
        std::thread::sleep(Duration::from_secs(1));
        std::fs::write(&stop_file, b"").unwrap();
        (pool.join().unwrap(), during, pooled)
    });
    let timeline = pool["timeline"].as_array().unwrap();
    let failed: Vec<_> = timeline
        .iter()
        .filter(|r| r.get("error").is_some() || r["status"].as_u64() != Some(200))
        .collect();
    assert!(
        failed.is_empty() && timeline.len() > 50,
        "keep-alive connections to terminating pods broke: {failed:?}"
    );
    for name in &during {
        let ip = lab.backend(name).unwrap().ip.to_string();
        assert!(
            !pooled.contains(&ip),
            "a new connection went to terminating {name}: {during:?} (terminating: {pooled:?})"
        );
    }
    drop(agent);
    drop(remote);
    drop(local);
}

impl FakeApiServer {
    fn get(&self, ns: &Netns, path: &str) -> Value {
        let out = ns
            .exec(&["curl", "-sf", &self.url(path)])
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("GET {path}: {e}: {out}"))
    }

    fn traffic_policy(&self, ns: &Netns, name: &str) -> Value {
        let list = self.get(ns, "/apis/geosteer.io/v1alpha1/trafficpolicies");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no TrafficPolicy {name}: {list}"))
    }
}

fn traffic_policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "geosteer.io/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "default",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec})
}

/// Waits until `ok` holds for `what` (polling every 200 ms, up to 15 s).
fn wait_for(what: &str, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ok() {
            Ok(()) => return,
            Err(last) => assert!(Instant::now() < deadline, "{what}: {last}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TrafficPolicy steers live connections; its status is judged from the object alone and
/// written once by server-side apply under the agents' one field manager; a bad update keeps
/// the accepted version on the data path; what this node does not apply (a policy whose
/// Service does not exist) is in `geosteer status` and an Event, not in the object's status.
#[test]
fn traffic_policies_steer_live_traffic_with_one_status_and_node_facts_apart() {
    require_root();
    let mut lab = Lab::build(&LabSpec::two_regions("gsk2")).expect("lab builds");
    lab.start_backends(8080, None).expect("backends start");
    let local = FakeApiServer::start(&lab.node, 16445);
    let remote = FakeApiServer::start(&lab.node, 16446);
    let pins = PinDir::new("gsk2").unwrap();
    let ns = &lab.node;

    local.apply(ns, node("lab-node", "cn-hangzhou", "cn-hangzhou-b"));
    remote.apply(ns, node("sh-node", "cn-shanghai", "cn-shanghai-a"));
    local.apply(ns, service("default", "reviews", "198.19.0.10", 80));
    apply_slices(ns, &local, &remote, "default", "reviews");
    local.apply(
        ns,
        traffic_policy(
            "reviews",
            json!({"targetRef": {"name": "reviews"},
                   "clusterWeights": {"ack-hangzhou": 0, "ack-shanghai": 100}}),
        ),
    );

    let agent = start_agent(ns, &pins, &local, &remote);

    let condition = |name: &str| local.traffic_policy(ns, name)["status"]["conditions"][0].clone();
    wait_for("the policy's status is written", || {
        let c = condition("reviews");
        (c["status"] == "True" && c["reason"] == "Accepted")
            .then_some(())
            .ok_or_else(|| c.to_string())
    });
    // 100% to the remote cluster, on live connections (once its endpoints have arrived).
    wait_for("the weights steer new connections", || {
        let report = http_from(&lab.client, REVIEWS, &HttpOptions::new(100, 1)).unwrap();
        let backends: Vec<&String> = report.backends.keys().collect();
        (report.ok == 100 && backends == ["sh1", "sh2"])
            .then_some(())
            .ok_or_else(|| format!("{report:?}"))
    });

    // An invalid update: the status says why, from the object alone; the data path keeps the
    // accepted version.
    local.apply(
        ns,
        traffic_policy(
            "reviews",
            json!({"targetRef": {"name": "reviews"},
                   "clusterWeights": {"ack-hangzhou": 0, "ack-shanghai": 100},
                   "healthCheck": {"interval": "1s", "timeout": "5s"}}),
        ),
    );
    wait_for("the update is marked invalid", || {
        let c = condition("reviews");
        (c["status"] == "False"
            && c["message"] == "spec.healthCheck.timeout: 5s is longer than the interval 1s")
            .then_some(())
            .ok_or_else(|| c.to_string())
    });
    assert_eq!(
        local.traffic_policy(ns, "reviews")["status"]["observedGeneration"],
        2
    );
    assert_eq!(answered_by(&lab, REVIEWS, 100), ["sh1", "sh2"]);

    // A valid policy for a Service that does not exist: valid as an object, not in effect here.
    local.apply(
        ns,
        traffic_policy(
            "ratings",
            json!({"targetRef": {"name": "ratings"},
                   "clusterWeights": {"ack-hangzhou": 100}}),
        ),
    );
    wait_for("the node says what it does not apply", || {
        let status = geosteer_tests::agent::geosteer_json(ns, &pins, &["status"]).unwrap();
        let reports = &status["kubernetes"]["policiesNotInEffect"];
        let reasons: Vec<(String, String)> = reports
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let wanted = [
            ("ratings".to_string(), "TargetNotFound".to_string()),
            ("reviews".to_string(), "Invalid".to_string()),
        ];
        (reasons == wanted)
            .then_some(())
            .ok_or_else(|| status["kubernetes"].to_string())
    });
    wait_for("the ratings policy is valid as an object", || {
        let c = condition("ratings");
        (c["status"] == "True")
            .then_some(())
            .ok_or_else(|| c.to_string())
    });
    // trafficDistribution: PreferClose on a Service merged across the two clusters: the same
    // zone's endpoints (this cluster's, on the lab node's zone) take every new connection.
    let mut details = service("default", "details", "198.19.0.20", 80);
    details["spec"]["trafficDistribution"] = json!("PreferClose");
    local.apply(ns, details.clone());
    local.apply(
        ns,
        slice(
            "default",
            "details",
            "hz",
            "lab-node",
            &["198.18.11.2", "198.18.12.2"],
        ),
    );
    remote.apply(ns, details);
    remote.apply(
        ns,
        slice(
            "default",
            "details",
            "sh",
            "sh-node",
            &["198.18.21.2", "198.18.22.2"],
        ),
    );
    wait_for("details merged from both clusters", || {
        let services = geosteer_tests::agent::geosteer_json(ns, &pins, &["services"]).unwrap();
        let details = services["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["frontend"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("198.19.0.20:80"))
            })
            .cloned()
            .unwrap_or_default();
        (details["clusters"].as_array().is_some_and(|c| c.len() == 2))
            .then_some(())
            .ok_or_else(|| services.to_string())
    });
    assert_eq!(
        answered_by(&lab, "198.19.0.20:80", 200),
        ["hz1", "hz2"],
        "PreferClose keeps new connections in the client's zone while it is healthy"
    );

    // sessionAffinity: ClientIP: every new connection of the one client lands on one backend
    // (without it, the four share them).
    let mut sticky = service("default", "sticky", "198.19.0.30", 80);
    sticky["spec"]["sessionAffinity"] = json!("ClientIP");
    sticky["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
    local.apply(ns, sticky.clone());
    remote.apply(ns, sticky);
    apply_slices(ns, &local, &remote, "default", "sticky");
    wait_for("sticky is steered", || {
        match http_from(&lab.client, "198.19.0.30:80", &HttpOptions::new(1, 1)) {
            Ok(report) if report.ok == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let backends = answered_by(&lab, "198.19.0.30:80", 100);
    assert_eq!(backends.len(), 1, "one client, one backend: {backends:?}");

    // internalTrafficPolicy: Local keeps a Service to this node's endpoints (the remote
    // cluster's pods are on other nodes); a Service another proxy owns is left alone.
    let mut local_only = service("default", "local-only", "198.19.0.40", 80);
    local_only["spec"]["internalTrafficPolicy"] = json!("Local");
    let mut foreign = service("default", "foreign", "198.19.0.50", 80);
    foreign["metadata"]["labels"] =
        json!({"service.kubernetes.io/service-proxy-name": "another-proxy"});
    for object in [local_only.clone(), foreign.clone()] {
        local.apply(ns, object.clone());
        remote.apply(ns, object);
    }
    for name in ["local-only", "foreign"] {
        apply_slices(ns, &local, &remote, "default", name);
    }
    wait_for("local-only is steered", || {
        let services = geosteer_tests::agent::geosteer_json(ns, &pins, &["services"]).unwrap();
        let frontends: Vec<&str> = services["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["frontend"].as_str())
            .collect();
        (frontends.iter().any(|f| f.starts_with("198.19.0.40:80"))
            && !frontends.iter().any(|f| f.starts_with("198.19.0.50:80")))
        .then_some(())
        .ok_or_else(|| format!("{frontends:?}"))
    });
    assert_eq!(
        answered_by(&lab, "198.19.0.40:80", 100),
        ["hz1", "hz2"],
        "only this node's endpoints"
    );

    let fake = local.get(ns, "/_fake/patches");
    assert_eq!(fake["fieldManagers"], json!(["geosteer-agent"]), "{fake}");
    assert_eq!(
        fake["statusChanges"], 3,
        "reviews accepted, reviews invalid, ratings accepted: {fake}"
    );
    let events: Vec<(String, String)> = fake["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["regarding"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for wanted in [
        ("Accepted", "reviews"),
        ("Invalid", "reviews"),
        ("Accepted", "ratings"),
        ("NotInEffect", "ratings"),
    ] {
        assert!(
            events.contains(&(wanted.0.to_string(), wanted.1.to_string())),
            "{wanted:?} not in {events:?}"
        );
    }
    // And the metrics say it too.
    let metrics = ns
        .exec(&[
            "curl",
            "-sf",
            &format!("http://{}/metrics", geosteer_tests::agent::METRICS_ADDRESS),
        ])
        .expect("metrics answer");
    for line in [
        "geosteer_kube_traffic_policies{accepted=\"false\"} 2",
        "geosteer_kube_cluster_connected{cluster=\"ack-shanghai\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    drop(agent);
    drop(remote);
    drop(local);
}

/// A dual-stack Service (`clusterIPs` of both families, EndpointSlices of both address types,
/// one pod per endpoint through `targetRef`) from the stand-in API servers, in a dual-stack lab:
/// one service steered over IPv4 and IPv6, its remote cluster's pods included, and sh2, whose
/// pod has no IPv6 address, taking IPv4 connections only.
#[test]
fn a_dual_stack_service_from_kubernetes_is_steered_over_both_families() {
    require_root();
    let mut spec = LabSpec::two_regions("gsk3");
    spec.ipv6 = true;
    let mut lab = Lab::build(&spec).expect("lab builds");
    lab.start_backends(8080, None).expect("backends start");
    let local = FakeApiServer::start(&lab.node, 16447);
    let remote = FakeApiServer::start(&lab.node, 16448);
    let pins = PinDir::new("gsk3").unwrap();
    let ns = &lab.node;
    local.apply(ns, node("lab-node", "cn-hangzhou", "cn-hangzhou-b"));
    remote.apply(ns, node("sh-node", "cn-shanghai", "cn-shanghai-a"));
    let dual = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10", "2001:db8:19::10"],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}});
    let family_slice = |suffix: &str, family: &str, node: &str, pods: &[(String, String)]| {
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|(pod, ip)| {
                json!({"addresses": [ip], "nodeName": node,
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": pod},
                    "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("reviews-{suffix}"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": family,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints})
    };
    // (pod, address) of the lab's backends `names`.
    let addresses = |names: &[&str], v6: bool| -> Vec<(String, String)> {
        names
            .iter()
            .map(|name| {
                let b = lab.backend(name).unwrap();
                let ip = if v6 {
                    b.ip6.unwrap().to_string()
                } else {
                    b.ip.to_string()
                };
                (name.to_string(), ip)
            })
            .collect()
    };
    for (server, suffix, node, names, names6) in [
        (
            &local,
            "hz",
            "lab-node",
            &["hz1", "hz2"][..],
            &["hz1", "hz2"][..],
        ),
        (&remote, "sh", "sh-node", &["sh1", "sh2"][..], &["sh1"][..]),
    ] {
        server.apply(ns, dual.clone());
        server.apply(
            ns,
            family_slice(
                &format!("{suffix}-4"),
                "IPv4",
                node,
                &addresses(names, false),
            ),
        );
        server.apply(
            ns,
            family_slice(
                &format!("{suffix}-6"),
                "IPv6",
                node,
                &addresses(names6, true),
            ),
        );
    }
    let _agent = start_agent(ns, &pins, &local, &remote);

    // Both clusters' endpoints, over both families: every backend answers IPv4, all but sh2
    // answer IPv6.
    let target6 = "[2001:db8:19::10]:80";
    let backends = |target: &str| -> Result<Vec<String>, String> {
        let report = http_from(&lab.client, target, &HttpOptions::new(200, 1))
            .map_err(|e| format!("{e:#}"))?;
        if report.ok != 200 {
            return Err(format!("{target}: {report:?}"));
        }
        Ok(report.backends.keys().cloned().collect())
    };
    wait_for("both clusters over both families", || {
        let (v4, v6) = (backends(REVIEWS)?, backends(target6)?);
        if v4 == ["hz1", "hz2", "sh1", "sh2"] && v6 == ["hz1", "hz2", "sh1"] {
            Ok(())
        } else {
            Err(format!("IPv4 {v4:?}, IPv6 {v6:?}"))
        }
    });
    let services = geosteer_tests::agent::geosteer_json(ns, &pins, &["services"]).unwrap();
    let rows = services["services"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one service: {services}");
    assert_eq!(
        rows[0]["frontend"],
        "198.19.0.10:80/TCP + [2001:db8:19::10]:80/TCP"
    );
}
