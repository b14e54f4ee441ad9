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

    let config = format!(
        "node: {{name: from-env, region: cn-hangzhou, cluster: ack-hangzhou}}\n\
         dataplane: {{tc: [cl0], pinPath: {}, maxServices: 16, maxBackends: 1024, conntrackSize: 65536}}\n\
         kubernetes:\n  snapshotPath: {}\n  clusters:\n    - {{name: ack-shanghai, kubeconfig: {}, region: cn-shanghai}}\n",
        pins.pin_path().display(),
        pins.root.join("snapshot.json").display(),
        remote.kubeconfig(&pins, "ack-shanghai"),
    );
    let local_kubeconfig = local.kubeconfig(&pins, "ack-hangzhou");
    let agent = Agent::start_with_env(
        ns,
        &pins,
        &config,
        &[("NODE_NAME", "lab-node"), ("KUBECONFIG", &local_kubeconfig)],
    )
    .expect("agent starts in Kubernetes mode");
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
