//! The manifests in `deploy/`: the security properties the install promises, that the pieces
//! agree with each other (probes, mounts, paths, names), and that the examples reproduce the
//! seeds' scenarios when the agent's own code reads them. (Schema validation of every manifest
//! is the `manifests` tier of `cargo xtask test`.)
//!
//! Needs no privileges.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use geosteer::{
    config::{self, Config},
    controller, kube, policy,
};
use serde::Deserialize as _;
use serde_json::{Value, json};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The documents of a YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

/// The one object of `kind` named `name` in `file` (relative to deploy/).
fn object(file: &str, kind: &str, name: &str) -> Value {
    let found: Vec<Value> = documents(&deploy_dir().join(file))
        .into_iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name} in {file}");
    found.into_iter().next().unwrap()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn daemonset() -> Value {
    object("daemonset.yaml", "DaemonSet", "geosteer")
}

fn agent_container(daemonset: &Value) -> &Value {
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The config file the ConfigMap carries.
fn shipped_config() -> Config {
    let map = object("configmap.yaml", "ConfigMap", "geosteer-config");
    config::parse(map["data"]["config.yaml"].as_str().unwrap()).expect("a valid config")
}

#[test]
fn the_daemonset_runs_unprivileged_with_only_the_capabilities_it_needs() {
    let daemonset = daemonset();
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "attaches to the host's pod interfaces"
    );
    for field in ["hostPID", "hostIPC"] {
        assert!(pod[field].is_null() || pod[field] == false, "{field}");
    }
    let all: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod[*list].as_array().into_iter().flatten())
        .collect();
    let allowed: BTreeSet<&str> = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"].into();
    for container in all {
        let security = &container["securityContext"];
        assert_eq!(security["privileged"], false, "{}", container["name"]);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
        let added: BTreeSet<&str> = strings(&security["capabilities"]["add"])
            .into_iter()
            .collect();
        assert!(added.is_subset(&allowed), "{added:?}");
        assert!(
            added.contains("BPF") && added.contains("NET_ADMIN"),
            "{added:?}"
        );
        assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    }
}

#[test]
fn the_daemonset_agrees_with_its_config() {
    let daemonset = daemonset();
    let config = shipped_config();
    let settings = config.kubernetes.as_ref().expect("the kubernetes section");
    assert!(settings.enabled);
    let pod = &daemonset["spec"]["template"]["spec"];
    let agent = agent_container(&daemonset);

    // The config file the agent is told to read is the ConfigMap's.
    let args = strings(&agent["args"]);
    let config_path = Path::new(args[args.iter().position(|a| *a == "--config").unwrap() + 1]);
    let mounts: BTreeMap<&str, &Value> = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m))
        .collect();
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let volume_at = |path: &Path| {
        let (mount, m) = mounts
            .iter()
            .filter(|(mount, _)| path.starts_with(mount))
            .max_by_key(|(mount, _)| mount.len())
            .unwrap_or_else(|| panic!("nothing mounted at {}", path.display()));
        (*mount, volumes[m["name"].as_str().unwrap()])
    };
    assert_eq!(
        volume_at(config_path).1["configMap"]["name"],
        "geosteer-config"
    );
    assert_eq!(config_path.file_name().unwrap(), "config.yaml");

    // State that must outlive the pod lives on the node.
    for (what, path) in [
        ("pins", config.dataplane.pin_path.as_path()),
        ("admin socket", config.admin.socket.as_path()),
        ("snapshot", settings.snapshot_path.as_path()),
    ] {
        let (_, volume) = volume_at(path);
        assert!(volume["hostPath"].is_object(), "{what}: {volume}");
    }
    let (bpf_mount, bpffs) = volume_at(Path::new("/sys/fs/bpf/x"));
    assert_eq!(
        (bpf_mount, &bpffs["hostPath"]["path"]),
        ("/sys/fs/bpf", &json!("/sys/fs/bpf"))
    );
    let host_paths: BTreeSet<&str> = volumes
        .values()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        ["/run/geosteer", "/sys/fs/bpf", "/var/lib/geosteer"].into(),
        "only what the agent needs of the host"
    );

    // Probes reach the admin endpoint the config opens.
    let metrics = config
        .admin
        .metrics_address()
        .expect("the metrics endpoint is on");
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
    ] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], metrics.port(), "{probe}");
        assert_eq!(get["host"], metrics.ip().to_string(), "{probe}");
    }
    // The startup probe outlasts the wait for the API server before booting from the snapshot.
    let startup = &agent["startupProbe"];
    let patience =
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(
        patience > settings.startup_timeout.as_secs() + 10,
        "{patience}s"
    );

    // This node's name and the namespace come from the downward API.
    let env: BTreeMap<&str, &Value> = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        env[settings.node_name_env.as_str()]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    let resources = &agent["resources"];
    for field in ["cpu", "memory"] {
        assert!(resources["requests"][field].is_string(), "requests.{field}");
    }
    assert!(resources["limits"]["memory"].is_string());
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null()),
        "runs on every node"
    );
    assert_eq!(daemonset["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(pod["serviceAccountName"], "geosteer");
    object("rbac.yaml", "ServiceAccount", "geosteer");
}

/// (apiGroups, resources, verbs) of a Role or ClusterRole.
fn rules(role: &Value) -> Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                strings(&r["apiGroups"]),
                strings(&r["resources"]),
                strings(&r["verbs"]),
            )
        })
        .collect()
}

#[test]
fn rbac_reads_and_writes_only_trafficpolicy_status_and_events() {
    let role = object("rbac.yaml", "ClusterRole", "geosteer");
    let mut read = BTreeSet::new();
    for (groups, resources, verbs) in rules(&role) {
        for field in groups.iter().chain(&resources).chain(&verbs) {
            assert_ne!(*field, "*", "no wildcards");
        }
        if resources == ["trafficpolicies/status"] {
            assert_eq!((groups, verbs), (vec!["geosteer.io"], vec!["patch"]));
            continue;
        }
        if resources == ["events"] {
            assert_eq!((groups, verbs), (vec!["events.k8s.io"], vec!["create"]));
            continue;
        }
        assert_eq!(verbs, ["get", "list", "watch"], "{resources:?}");
        read.extend(resources.iter().map(|r| r.to_string()));
    }
    let watched: BTreeSet<String> = [
        "services",
        "nodes",
        "pods",
        "endpointslices",
        "trafficpolicies",
        "destinationrules",
    ]
    .map(String::from)
    .into();
    assert_eq!(read, watched);

    let binding = object("rbac.yaml", "ClusterRoleBinding", "geosteer");
    assert_eq!(binding["subjects"][0]["name"], "geosteer");

    // Secrets: read, in the agent's own namespace only.
    let secrets = object("rbac.yaml", "Role", "geosteer-remote-clusters");
    assert_eq!(secrets["metadata"]["namespace"], "geosteer-system");
    assert_eq!(
        rules(&secrets),
        [(vec![""], vec!["secrets"], vec!["get", "list", "watch"])]
    );

    // What remote clusters grant: endpoints and node labels, read-only.
    let remote = object(
        "remote/reader.yaml",
        "ClusterRole",
        "geosteer-remote-reader",
    );
    assert_eq!(
        rules(&remote),
        [
            (
                vec!["discovery.k8s.io"],
                vec!["endpointslices"],
                vec!["get", "list", "watch"]
            ),
            (
                vec![""],
                vec!["nodes", "pods"],
                vec!["get", "list", "watch"]
            ),
        ]
    );
}

#[test]
fn the_kustomization_installs_every_manifest() {
    let kustomization = &documents(&deploy_dir().join("kustomization.yaml"))[0];
    let listed: BTreeSet<&str> = strings(&kustomization["resources"]).into_iter().collect();
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(deploy_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    present.insert("crds/trafficpolicies.geosteer.io.yaml".to_string());
    assert_eq!(listed, present.iter().map(String::as_str).collect());
    // The checked-in CRD is the generated one (`cargo xtask crdgen`).
    let crd = std::fs::read_to_string(deploy_dir().join("crds/trafficpolicies.geosteer.io.yaml"))
        .unwrap();
    assert!(
        crd == kube::crd_yaml(),
        "deploy/crds is out of date: run `cargo xtask crdgen`"
    );
}

// ---------------------------------------------------------------------------------------------
// The examples, read by the agent's own code

/// An object of the type the store holds, from its JSON.
fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// Two clusters as in the seed: ack-hangzhou (this one) and ack-shanghai, reviews in both.
fn seed_world(example: &[&str]) -> Config {
    let mut file = shipped_config();
    let settings = file.kubernetes.as_mut().unwrap();
    settings.clusters = vec![config::RemoteCluster {
        name: "ack-shanghai".into(),
        kubeconfig: Some("/etc/geosteer/clusters/ack-shanghai".into()),
        kubeconfig_secret: None,
        context: None,
        region: "cn-shanghai".into(),
    }];
    let mut index = kube::index::Index::new(&file, "hz-node-1");
    let node = |name: &str, region: &str, zone: &str| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone}}})
    };
    let slice = |name: &str, ips: &[&str], node: &str| {
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
    };

    // Every object of the example files, the Service with the cluster IP the API server gives.
    let mut objects: Vec<Value> = ["reviews.yaml"]
        .iter()
        .chain(example)
        .flat_map(|f| documents(&deploy_dir().join("examples").join(f)))
        .collect();
    let mut services = BTreeMap::new();
    let (mut policies, mut rules) = (Vec::new(), Vec::new());
    for object in objects.drain(..) {
        match object["kind"].as_str().unwrap() {
            "Service" => {
                let mut service = object.clone();
                service["spec"]["clusterIP"] = json!("172.16.0.10");
                services.insert(object["metadata"]["name"].to_string(), service);
            }
            "TrafficPolicy" => policies.push(from(object)),
            "DestinationRule" => rules.push(from(object)),
            "Deployment" => {}
            other => panic!("unexpected kind {other}"),
        }
    }
    let local = &mut index.clusters[0];
    local
        .services
        .replace(services.into_values().map(from).collect());
    local.policies.replace(policies);
    local.rules.replace(rules);
    local.nodes.replace(vec![from(node(
        "hz-node-1",
        "cn-hangzhou",
        "cn-hangzhou-b",
    ))]);
    local.slices.replace(vec![from(slice(
        "reviews-hz",
        &["10.0.0.11", "10.0.0.12"],
        "hz-node-1",
    ))]);
    let remote = &mut index.clusters[1];
    remote.nodes.replace(vec![from(node(
        "sh-node-1",
        "cn-shanghai",
        "cn-shanghai-a",
    ))]);
    remote.slices.replace(vec![from(slice(
        "reviews-sh",
        &["10.1.0.11", "10.1.0.12"],
        "sh-node-1",
    ))]);

    let desired = index.desired(&file).expect("a desired state");
    assert!(desired.warnings.is_empty(), "{:?}", desired.warnings);
    assert!(
        desired.verdicts.values().all(|v| v.accepted),
        "{:?}",
        desired.verdicts
    );
    assert_eq!(config::validate(&desired.config), vec![]);
    desired.config
}

/// Share of new connections per region, for a client on this node, with the endpoints of
/// `down` (a region) ejected.
fn shares(config: &Config, down: Option<&str>) -> BTreeMap<String, f64> {
    let model = &controller::service_models(config)[0];
    let client = controller::node_locality(config);
    let endpoints: Vec<policy::Endpoint> = model
        .endpoints
        .iter()
        .map(|e| policy::Endpoint {
            locality: std::borrow::Cow::Borrowed(&e.locality),
            labels: std::borrow::Cow::Borrowed(&e.labels),
            weight: e.weight,
            healthy: Some(e.locality.region.as_str()) != down,
        })
        .collect();
    let locality_lb = controller::policy_locality_lb(&model.policy);
    let output = policy::compute(&policy::PolicyInput {
        client: &client,
        client_labels: &controller::locality_labels(&client),
        endpoints: &endpoints,
        locality_lb: locality_lb.as_ref(),
        outlier_detection: model.policy.outlier_detection.is_some(),
        cluster_weights: model.policy.cluster_weights.as_ref(),
        min_health_percent: 0,
    });
    let mut by_region = BTreeMap::new();
    for (endpoint, share) in model.endpoints.iter().zip(output.shares) {
        *by_region
            .entry(endpoint.locality.region.clone())
            .or_insert(0.0) += share;
    }
    by_region.retain(|_, share| *share > 1e-9);
    by_region
}

fn approx(shares: BTreeMap<String, f64>) -> Vec<(String, u32)> {
    shares
        .into_iter()
        .map(|(region, share)| (region, (share * 100.0).round() as u32))
        .collect()
}

fn expect(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
    pairs.iter().map(|(r, p)| (r.to_string(), *p)).collect()
}

#[test]
fn the_failover_example_moves_traffic_when_a_region_fails() {
    let config = seed_world(&["failover.yaml"]);
    let policy = config::effective_traffic_policy(&config, 0);
    let outlier = policy
        .outlier_detection
        .expect("the DestinationRule's outlierDetection");
    assert_eq!(outlier.consecutive_5xx_errors, 1);
    assert_eq!(outlier.base_ejection_time.as_secs(), 60);
    // Normally local; with cn-hangzhou's reviews ejected, all of it to cn-shanghai.
    assert_eq!(
        approx(shares(&config, None)),
        expect(&[("cn-hangzhou", 100)])
    );
    assert_eq!(
        approx(shares(&config, Some("cn-hangzhou"))),
        expect(&[("cn-shanghai", 100)])
    );
    // The ASM fields geosteer does not act on are reported, not rejected.
    let warnings: Vec<String> = config::warnings(&config)
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("trafficPolicy.connectionPool")),
        "{warnings:?}"
    );
}

#[test]
fn the_distribute_example_splits_90_10() {
    let config = seed_world(&["failover.yaml", "distribute-90-10.yaml"]);
    assert_eq!(
        approx(shares(&config, None)),
        expect(&[("cn-hangzhou", 90), ("cn-shanghai", 10)])
    );
}

#[test]
fn the_cluster_weights_example_splits_20_80() {
    let config = seed_world(&["cluster-weights-20-80.yaml"]);
    assert_eq!(
        config.services[0].cluster_weights,
        Some([("ack-hangzhou".into(), 20), ("ack-shanghai".into(), 80)].into())
    );
    assert_eq!(
        approx(shares(&config, None)),
        expect(&[("cn-hangzhou", 20), ("cn-shanghai", 80)])
    );
}

// ---------------------------------------------------------------------------------------------
// The overlays and the monitoring, rendered offline

/// What `kustomize build DIR` gives, for the features the overlays use: resources (files and
/// directories), `configMapGenerator` from files, and inline patches merged into their target
/// (a JSON merge: the overlays patch ConfigMap data only).
fn render(dir: &Path) -> Vec<Value> {
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    let mut objects = Vec::new();
    for resource in strings(&kustomization["resources"]) {
        let path = dir.join(resource);
        if path.is_dir() {
            objects.extend(render(&path));
        } else {
            objects.extend(documents(&path));
        }
    }
    for generator in kustomization["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert_eq!(generator["options"]["disableNameSuffixHash"], true);
        let data: serde_json::Map<String, Value> = strings(&generator["files"])
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(dir.join(file)).unwrap();
                (file.to_string(), Value::String(text))
            })
            .collect();
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "namespace": generator["namespace"],
                "labels": generator["options"]["labels"]},
            "data": data}));
    }
    for patch in kustomization["patches"].as_array().into_iter().flatten() {
        let body: Value = serde_yaml_ng::from_str(patch["patch"].as_str().unwrap()).unwrap();
        let target = &patch["target"];
        let matching: Vec<&mut Value> = objects
            .iter_mut()
            .filter(|o| o["kind"] == target["kind"] && o["metadata"]["name"] == target["name"])
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "patch target {target} in {}",
            dir.display()
        );
        for object in matching {
            merge(object, &body);
        }
    }
    objects
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(into.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name}");
    found[0]
}

#[test]
fn the_overlays_render_to_installs_the_agent_accepts() {
    for overlay in ["single-cluster", "multi-cluster"] {
        let objects = render(&deploy_dir().join("overlays").join(overlay));
        let mut seen = BTreeSet::new();
        for object in &objects {
            let key = (
                object["kind"].to_string(),
                object["metadata"]["namespace"].to_string(),
                object["metadata"]["name"].to_string(),
            );
            assert!(seen.insert(key.clone()), "{overlay}: {key:?} twice");
        }
        // The config parses and validates with the agent's own parser.
        let map = find(&objects, "ConfigMap", "geosteer-config");
        let config = config::parse(map["data"]["config.yaml"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{overlay}: {e}"));
        let metrics: std::net::SocketAddr = config.admin.metrics.parse().expect("metrics served");
        assert!(
            !metrics.ip().is_loopback(),
            "{overlay}: Prometheus must reach {metrics}"
        );

        // The PodMonitor scrapes the agents' metrics port, by name.
        let daemonset = find(&objects, "DaemonSet", "geosteer");
        let monitor = find(&objects, "PodMonitor", "geosteer");
        let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
        for (key, value) in monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(
                &pod_labels[key], value,
                "{overlay}: the selector matches the agents"
            );
        }
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        let port = agent_container(daemonset)["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("{overlay}: no container port {}", endpoint["port"]));
        assert_eq!(port["containerPort"], u64::from(metrics.port()));
        assert_eq!(endpoint["path"], "/metrics");

        let dashboard = find(&objects, "ConfigMap", "geosteer-dashboard");
        assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
        assert!(dashboard["data"]["grafana-dashboard.json"].is_string());

        let clusters = &config.kubernetes.as_ref().unwrap().clusters;
        if overlay == "single-cluster" {
            assert!(clusters.is_empty());
            continue;
        }
        // Multi-cluster: every remote cluster's kubeconfig is a key of the mounted Secret.
        assert!(!clusters.is_empty());
        let secret = find(&objects, "Secret", "geosteer-remote-clusters");
        let mount = agent_container(daemonset)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "remote-clusters")
            .expect("the remote clusters' Secret is mounted");
        for cluster in clusters {
            let path = cluster.kubeconfig.as_ref().expect("a kubeconfig file");
            let dir = Path::new(mount["mountPath"].as_str().unwrap());
            assert_eq!(path.parent(), Some(dir), "{}", cluster.name);
            let key = path.file_name().unwrap().to_str().unwrap();
            assert!(
                secret["stringData"][key].is_string(),
                "no key {key} in the Secret"
            );
        }
    }
}

/// Every query of the Grafana dashboard names metrics the agent exports, grouped by labels
/// those metrics carry (a renamed metric or label would leave a panel empty, silently).
#[test]
fn the_dashboard_queries_what_the_agent_exports() {
    let exported = {
        let golden = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/testdata/golden/metrics.txt"),
        )
        .unwrap();
        let source = kube::SourceStatus {
            clusters: vec![kube::ClusterStatus::default()],
            ..Default::default()
        };
        golden + &source.metrics()
    };
    let labels_of = |metric: &str| -> BTreeSet<String> {
        exported
            .lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .flat_map(|l| {
                let inside = &l[metric.len() + 1..l.find('}').unwrap()];
                inside
                    .split(',')
                    .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            queries += 1;
            let metrics: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("geosteer_"))
                .collect();
            assert!(!metrics.is_empty(), "{expr}");
            let grouped: Vec<&str> = expr
                .split("by (")
                .skip(1)
                .flat_map(|rest| rest.split(')').next().unwrap().split(','))
                .map(str::trim)
                .collect();
            for metric in metrics {
                let labels = labels_of(metric);
                assert!(!labels.is_empty(), "{metric} (in {expr}) is not exported");
                for label in &grouped {
                    assert!(
                        labels.contains(*label),
                        "{metric} has no label {label} (in {expr}): {labels:?}"
                    );
                }
            }
        }
    }
    assert!(queries >= 8, "{queries}");
}
