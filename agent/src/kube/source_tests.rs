//! The source end to end against fake API servers (kube's mock-service pattern): watch events
//! in, `Config`s out; remote-cluster outage and staleTtl; status writes; boot from the
//! snapshot when no API server answers.

use std::time::Duration;

use ::kube::Client;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, watch},
    time::timeout,
};

use super::{
    KubeSource, Options, Origin, SourceStatus,
    fake_api::FakeApi,
    index::fixtures::{policy, rule, service, slice},
    snapshot,
    source::Connect,
};
use crate::config::{self, Config};

/// Generous: a loaded CI machine may be slow, and every wait ends as soon as it can.
const WAIT: Duration = Duration::from_secs(10);

fn options() -> Options {
    Options {
        debounce: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(200),
        rediscover_interval: Duration::from_millis(200),
        status_spread: Duration::from_millis(1),
        reconnect_jitter: Duration::from_millis(50),
        list_page_size: 500,
    }
}

fn file(dir: &std::path::Path, extra: &str) -> Config {
    config::parse(&format!(
        "node: {{name: from-env, region: cn-hangzhou, cluster: ack-hangzhou}}\n\
         dataplane: {{tc: [\"veth*\"]}}\n\
         kubernetes:\n  \
           startupTimeout: 500ms\n  \
           snapshotPath: {}/snapshot.yaml\n  \
           clusters: [{{name: ack-shanghai, kubeconfig: /unused, region: cn-shanghai}}]\n{extra}",
        dir.display()
    ))
    .unwrap()
}

fn to_json(object: impl serde::Serialize) -> Value {
    serde_json::to_value(object).unwrap()
}

fn node(name: &str, region: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "topology.kubernetes.io/region": region,
            "topology.kubernetes.io/zone": zone,
        }},
    })
}

/// Two clusters with the reviews service: two pods in Hangzhou (this cluster), one in Shanghai.
struct World {
    local: FakeApi,
    local_client: Client,
    remote: FakeApi,
    remote_client: Client,
    dir: tempfile::TempDir,
}

fn world() -> World {
    let (local, local_client) = FakeApi::new();
    let (remote, remote_client) = FakeApi::new();
    local.apply(node("hz-node-1", "cn-hangzhou", "cn-hangzhou-b"));
    local.apply(node("hz-node-2", "cn-hangzhou", "cn-hangzhou-h"));
    local.apply(to_json(service("reviews", "172.16.0.10")));
    local.apply(to_json(slice(
        "reviews",
        "reviews-hz",
        9080,
        &[
            ("10.0.0.11", "hz-node-1", true),
            ("10.0.0.12", "hz-node-2", true),
        ],
    )));
    remote.apply(node("sh-node-1", "cn-shanghai", "cn-shanghai-a"));
    remote.apply(to_json(slice(
        "reviews",
        "reviews-sh",
        9080,
        &[("10.1.0.11", "sh-node-1", true)],
    )));
    World {
        local,
        local_client,
        remote,
        remote_client,
        dir: tempfile::tempdir().unwrap(),
    }
}

struct Running {
    configs: mpsc::Receiver<Config>,
    status: watch::Receiver<SourceStatus>,
    _task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(world: &World, file: Config) -> Running {
    start_with(world, file, options())
}

fn start_with(world: &World, file: Config, options: Options) -> Running {
    // The source's log, shown for a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("geosteer=debug")
        .try_init();
    let source = KubeSource::with_clients(
        file,
        "hz-node-1",
        world.local_client.clone(),
        vec![(
            "ack-shanghai".to_string(),
            Connect::Client(world.remote_client.clone()),
        )],
        options,
    );
    let status = source.status();
    let (tx, configs) = mpsc::channel(16);
    Running {
        configs,
        status,
        _task: tokio::spawn(source.run(tx)),
    }
}

impl Running {
    async fn next(&mut self) -> Config {
        timeout(WAIT, self.configs.recv())
            .await
            .expect("a config within the wait")
            .expect("the source runs")
    }

    /// Nothing is sent for `quiet`.
    async fn none_for(&mut self, quiet: Duration) {
        if let Ok(config) = timeout(quiet, self.configs.recv()).await {
            panic!("unexpected config: {config:?}");
        }
    }

    async fn status_until(&mut self, what: &str, ok: impl Fn(&SourceStatus) -> bool) {
        let waited = timeout(WAIT, self.status.wait_for(|s| ok(s))).await.is_ok();
        assert!(waited, "{what}: status stays {:?}", *self.status.borrow());
    }
}

fn addresses(config: &Config) -> Vec<String> {
    config.services[0]
        .endpoints
        .iter()
        .map(|e| format!("{}@{}", e.ip, e.cluster))
        .collect()
}

async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn watch_events_become_the_desired_state() {
    let world = world();
    let mut running = start(&world, file(world.dir.path(), ""));

    let config = running.next().await;
    assert_eq!(config.node.name, "hz-node-1");
    assert_eq!(
        config.node.zone, "cn-hangzhou-b",
        "this node's locality from its Node"
    );
    assert_eq!(config.services[0].vip.to_string(), "172.16.0.10");
    assert_eq!(config.services[0].ports[0].target_port, 9080);
    assert_eq!(
        addresses(&config),
        [
            "10.0.0.11@ack-hangzhou",
            "10.0.0.12@ack-hangzhou",
            "10.1.0.11@ack-shanghai"
        ]
    );
    assert_eq!(config::validate(&config), vec![]);

    // A pod goes away in the remote cluster, one is added here.
    world
        .remote
        .delete("EndpointSlice", "default", "reviews-sh");
    assert_eq!(
        addresses(&running.next().await),
        ["10.0.0.11@ack-hangzhou", "10.0.0.12@ack-hangzhou"]
    );
    world.local.apply(to_json(slice(
        "reviews",
        "reviews-hz",
        9080,
        &[
            ("10.0.0.11", "hz-node-1", true),
            ("10.0.0.12", "hz-node-2", true),
            ("10.0.0.13", "hz-node-2", true),
        ],
    )));
    let config = running.next().await;
    assert_eq!(config.services[0].endpoints.len(), 3);

    // An event that changes nothing sends nothing.
    world
        .local
        .apply(node("hz-node-3", "cn-hangzhou", "cn-hangzhou-h"));
    running.none_for(Duration::from_millis(400)).await;

    // Every change is on the node's disk.
    let path = world.dir.path().join("snapshot.yaml");
    let snapshot = snapshot::read(&path).unwrap().expect("a snapshot");
    assert_eq!(
        snapshot
            .config(&file(world.dir.path(), ""), "hz-node-1")
            .unwrap(),
        config
    );
    running
        .status_until("both clusters connected", |s| {
            s.origin == Origin::Cluster && s.clusters.iter().all(|c| c.connected)
        })
        .await;
}

#[tokio::test]
async fn destination_rules_and_traffic_policies_with_their_status() {
    let world = world();
    world.local.apply(to_json(rule(
        "default",
        "reviews",
        1,
        "host: reviews\ntrafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}",
    )));
    let mut running = start(&world, file(world.dir.path(), ""));
    let limit = |config: &Config| {
        config::effective_traffic_policy(config, 0)
            .outlier_detection
            .map(|o| o.consecutive_5xx_errors)
    };
    let config = running.next().await;
    assert_eq!(limit(&config), Some(1), "the DestinationRule binds by host");

    world.local.apply(to_json(policy(
        "reviews",
        2,
        "targetRef: {name: reviews}\n\
         trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}\n\
         clusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}",
    )));
    let config = running.next().await;
    assert_eq!(limit(&config), Some(3));
    assert_eq!(
        config.services[0].cluster_weights,
        Some([("ack-hangzhou".into(), 20), ("ack-shanghai".into(), 80)].into())
    );
    let condition = |local: &FakeApi| {
        local
            .object("TrafficPolicy", "default", "reviews")
            .map(|p| p["status"]["conditions"][0].clone())
            .unwrap_or_default()
    };
    eventually("the policy is marked accepted", || {
        condition(&world.local)["status"] == "True"
    })
    .await;
    assert_eq!(condition(&world.local)["reason"], "Accepted");
    assert_eq!(
        world
            .local
            .object("TrafficPolicy", "default", "reviews")
            .unwrap()["status"]["observedGeneration"],
        3
    );

    // A bad update is reported and changes nothing on the data path.
    world.local.apply(to_json(policy(
        "reviews",
        2,
        "targetRef: {name: reviews}\nhealthCheck: {interval: 1s, timeout: 5s}",
    )));
    eventually("the update is marked rejected", || {
        condition(&world.local)["status"] == "False"
    })
    .await;
    let rejected = condition(&world.local);
    assert_eq!(rejected["reason"], "Invalid");
    assert_eq!(
        rejected["message"], "spec.healthCheck.timeout: 5s is longer than the interval 1s",
        "the status judges the object alone"
    );
    running.none_for(Duration::from_millis(300)).await;
    // What the node does about it is the node's to say.
    running
        .status_until("the node reports the policy it keeps", |s| {
            s.policies_not_in_effect.len() == 1
                && s.policies_not_in_effect[0]
                    .message
                    .ends_with("the last accepted version stays in effect")
        })
        .await;
    eventually("the verdict is an Event", || {
        world
            .local
            .events()
            .iter()
            .any(|e| e["reason"] == "Invalid")
    })
    .await;

    // Once written, agents that agree do not write it again.
    let patches = world.local.patch_count();
    world
        .local
        .apply(node("hz-node-3", "cn-hangzhou", "cn-hangzhou-h"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.local.patch_count(), patches);
    assert_eq!(
        world.local.field_managers(),
        ["geosteer-agent".to_string()].into(),
        "server-side apply under one field manager"
    );
}

/// Two nodes that disagree about a policy (one has no remote cluster, so the failover target
/// region is unknown to it) write one status, once, and never flap; the node that does not
/// apply the policy says so in an Event of its own.
#[tokio::test]
async fn two_nodes_that_disagree_write_one_status_without_flapping() {
    // Spread so that the two write one after the other, as in production (2 s).
    let spread = Duration::from_secs(1);
    let (first, second) = (
        super::source::status_delay("hz-node-1", spread),
        super::source::status_delay("hz-node-2", spread),
    );
    assert!(
        first.abs_diff(second) >= Duration::from_millis(150),
        "{first:?} {second:?}"
    );
    let options = || Options {
        status_spread: spread,
        ..options()
    };
    let world = world();
    world.local.apply(to_json(policy(
        "reviews",
        1,
        "targetRef: {name: reviews}\n\
         trafficPolicy: {loadBalancer: {localityLbSetting: {failover: \
           [{from: cn-hangzhou, to: cn-shanghai}]}}}",
    )));
    let mut with_remote = start_with(&world, file(world.dir.path(), ""), options());
    let other_dir = tempfile::tempdir().unwrap();
    let alone = config::parse(&format!(
        "node: {{name: from-env, region: cn-hangzhou, cluster: ack-hangzhou}}\n\
         dataplane: {{tc: [\"veth*\"]}}\n\
         kubernetes: {{startupTimeout: 500ms, snapshotPath: {}/snapshot.yaml}}\n",
        other_dir.path().display()
    ))
    .unwrap();
    let source = KubeSource::with_clients(
        alone,
        "hz-node-2",
        world.local_client.clone(),
        vec![],
        options(),
    );
    let mut alone_status = source.status();
    let (tx, mut alone_configs) = mpsc::channel(16);
    let _alone = tokio::spawn(source.run(tx));

    let config = with_remote.next().await;
    assert!(
        config.services[0].traffic_policy.is_some(),
        "applied where cn-shanghai is known"
    );
    let config = timeout(WAIT, alone_configs.recv()).await.unwrap().unwrap();
    assert!(
        config.services[0].traffic_policy.is_none(),
        "left out where it is not"
    );
    let waited = timeout(
        WAIT,
        alone_status.wait_for(|s| {
            s.policies_not_in_effect
                .first()
                .is_some_and(|p| p.message.contains("cn-shanghai"))
        }),
    )
    .await
    .is_ok();
    assert!(waited, "{:?}", *alone_status.borrow());

    eventually("the status is written", || {
        world
            .local
            .object("TrafficPolicy", "default", "reviews")
            .unwrap()["status"]["conditions"][0]["status"]
            == "True"
    })
    .await;
    // Both nodes keep running through several rounds of events; the status stays as written.
    for i in 0..5 {
        world.local.apply(node(
            &format!("hz-extra-{i}"),
            "cn-hangzhou",
            "cn-hangzhou-h",
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(world.local.status_changes(), 1, "one write, no flapping");
    let events = world.local.events();
    let reasons: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or(""),
                e["reportingInstance"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        reasons.iter().filter(|(r, _)| *r == "Accepted").count(),
        1,
        "the verdict once: {reasons:?}"
    );
    assert!(
        reasons.contains(&("NotInEffect", "hz-node-2")),
        "the node that leaves it out says so: {reasons:?}"
    );
    assert!(
        !reasons
            .iter()
            .any(|(r, node)| *r == "NotInEffect" && *node == "hz-node-1"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_remote_outage_keeps_its_endpoints_and_says_so() {
    let world = world();
    let mut running = start(&world, file(world.dir.path(), ""));
    assert_eq!(running.next().await.services[0].endpoints.len(), 3);

    world.remote.set_reachable(false);
    running
        .status_until("the remote cluster is reported unreachable", |s| {
            !s.clusters[1].connected && s.clusters[0].connected
        })
        .await;
    running.none_for(Duration::from_millis(500)).await;
    running
        .status_until("the staleness is counted", |s| {
            s.clusters[1].stale_seconds >= 1
        })
        .await;
    let status = running.status.borrow().clone();
    assert_eq!(status.clusters[1].endpoints, 1, "its endpoints stay");
    assert!(
        status
            .metrics()
            .contains("geosteer_kube_cluster_connected{cluster=\"ack-shanghai\"} 0\n")
    );
    assert!(
        status.describe()[2].starts_with("cluster ack-shanghai (remote): UNREACHABLE, stale for"),
        "{:?}",
        status.describe()
    );

    // Changes elsewhere still flow, with the remote cluster's last known endpoints.
    world.local.delete("EndpointSlice", "default", "reviews-hz");
    assert_eq!(addresses(&running.next().await), ["10.1.0.11@ack-shanghai"]);

    // Back: it is listed again, and what changed meanwhile shows.
    world
        .remote
        .delete("EndpointSlice", "default", "reviews-sh");
    world.remote.set_reachable(true);
    let config = running.next().await;
    assert!(config.services[0].endpoints.is_empty(), "{config:?}");
    running
        .status_until("connected again", |s| s.clusters[1].connected)
        .await;
}

#[tokio::test]
async fn stale_ttl_drops_a_remote_clusters_endpoints() {
    let world = world();
    let mut running = start(&world, file(world.dir.path(), "  staleTtl: 1s\n"));
    assert_eq!(running.next().await.services[0].endpoints.len(), 3);

    world.remote.set_reachable(false);
    let config = running.next().await;
    assert_eq!(
        addresses(&config),
        ["10.0.0.11@ack-hangzhou", "10.0.0.12@ack-hangzhou"]
    );
    running
        .status_until("expired", |s| s.clusters[1].expired)
        .await;

    // Meanwhile a pod is added there: back, the cluster counts again only as listed afresh,
    // never with what it knew before the outage.
    world.remote.apply(to_json(slice(
        "reviews",
        "reviews-sh",
        9080,
        &[
            ("10.1.0.11", "sh-node-1", true),
            ("10.1.0.12", "sh-node-1", true),
        ],
    )));
    world.remote.set_reachable(true);
    assert_eq!(running.next().await.services[0].endpoints.len(), 4);
}

#[tokio::test]
async fn boots_from_the_snapshot_when_no_api_server_answers() {
    let world = world();
    let file = file(world.dir.path(), "");

    // A first run writes the snapshot.
    let mut first = start(&world, file.clone());
    let before = first.next().await;
    drop(first);

    // Both API servers are down at the next boot.
    world.local.set_reachable(false);
    world.remote.set_reachable(false);
    let mut running = start(&world, file.clone());
    let booted = running.next().await;
    assert_eq!(booted, before, "the same desired state, from the snapshot");
    assert_eq!(running.status.borrow().origin, Origin::Snapshot);
    running.none_for(Duration::from_millis(300)).await;

    // This cluster answers again (the other does not): its state, with the remote cluster's
    // endpoints as the snapshot knew them.
    world.local.delete("EndpointSlice", "default", "reviews-hz");
    world.local.set_reachable(true);
    let config = running.next().await;
    assert_eq!(addresses(&config), ["10.1.0.11@ack-shanghai"]);
    assert_eq!(running.status.borrow().origin, Origin::Cluster);
}

#[tokio::test]
async fn without_a_snapshot_the_file_alone_is_sent() {
    let world = world();
    world.local.set_reachable(false);
    let mut running = start(&world, file(world.dir.path(), ""));
    let config = running.next().await;
    assert!(config.services.is_empty());
    assert_eq!(config.node.name, "hz-node-1");
    assert_eq!(running.status.borrow().origin, Origin::File);
}

#[tokio::test]
async fn runs_without_the_optional_crds() {
    let world = world();
    world.local.unserve("geosteer.io/v1alpha1");
    world.local.unserve("networking.istio.io/v1");
    let mut running = start(&world, file(world.dir.path(), ""));
    let config = running.next().await;
    assert_eq!(config.services[0].endpoints.len(), 3);
    assert!(config.loaded_destination_rules.is_empty());
}

#[tokio::test]
async fn a_remote_cluster_from_a_kubeconfig_file_that_does_not_answer() {
    let world = world();
    // A real TLS client from a kubeconfig, towards a port where nothing listens.
    let kubeconfig = world.dir.path().join("ack-shanghai");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\n\
         clusters: [{name: sh, cluster: {server: \"https://127.0.0.1:1\", \
         insecure-skip-tls-verify: true}}]\n\
         users: [{name: reader, user: {token: t}}]\n\
         contexts: [{name: sh, context: {cluster: sh, user: reader}}]\n\
         current-context: sh\n",
    )
    .unwrap();
    let source = KubeSource::with_clients(
        file(world.dir.path(), ""),
        "hz-node-1",
        world.local_client.clone(),
        vec![(
            "ack-shanghai".to_string(),
            Connect::Kubeconfig {
                path: kubeconfig,
                context: None,
            },
        )],
        options(),
    );
    let mut status = source.status();
    let (tx, mut configs) = mpsc::channel(16);
    let _task = tokio::spawn(source.run(tx));
    let config = timeout(WAIT, configs.recv()).await.unwrap().unwrap();
    assert_eq!(
        addresses(&config),
        ["10.0.0.11@ack-hangzhou", "10.0.0.12@ack-hangzhou"],
        "this cluster does not wait for the other"
    );
    let reported = timeout(
        WAIT,
        status.wait_for(|s| s.clusters.len() == 2 && s.clusters[1].stale_seconds >= 1),
    )
    .await
    .is_ok();
    assert!(reported, "{:?}", *status.borrow());
    assert!(!status.borrow().clusters[1].connected);
}

// ---------------------------------------------------------------------------------------------
// Remote clusters that stay connected, against a fake API server that is honest about what
// bites in production: pagination, 410 Gone after compaction, bookmarks, 403, rotated tokens.

/// Remote endpoints in the last config, waiting until `ok` holds.
async fn until_addresses(running: &mut Running, what: &str, ok: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let config = timeout(
            deadline - tokio::time::Instant::now(),
            running.configs.recv(),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: no such config within the wait"))
        .expect("the source runs");
        if ok(&addresses(&config)) {
            return;
        }
    }
}

#[tokio::test]
async fn an_outage_resumes_the_watches_without_listing_again() {
    let world = world();
    let mut running = start(&world, file(world.dir.path(), ""));
    until_addresses(&mut running, "all three", |a| a.len() == 3).await;
    assert_eq!(world.remote.lists("EndpointSlice").len(), 1);

    world.remote.set_reachable(false);
    running
        .status_until("the outage is seen", |s| !s.clusters[1].connected)
        .await;
    // A pod is added there meanwhile.
    world.remote.apply(to_json(slice(
        "reviews",
        "reviews-sh",
        9080,
        &[
            ("10.1.0.11", "sh-node-1", true),
            ("10.1.0.12", "sh-node-1", true),
        ],
    )));
    world.remote.set_reachable(true);
    until_addresses(&mut running, "the pod added during the outage", |a| {
        a.contains(&"10.1.0.12@ack-shanghai".to_string())
    })
    .await;
    assert_eq!(
        world.remote.lists("EndpointSlice").len(),
        1,
        "the watch resumed from its resourceVersion: no second list"
    );
}

#[tokio::test]
async fn a_compacted_resource_version_lists_again_and_misses_nothing() {
    let world = world();
    let mut running = start(&world, file(world.dir.path(), ""));
    until_addresses(&mut running, "all three", |a| a.len() == 3).await;
    world.remote.set_reachable(false);
    running
        .status_until("the outage is seen", |s| !s.clusters[1].connected)
        .await;
    // During the outage the remote pod goes away and etcd compacts its history.
    world
        .remote
        .delete("EndpointSlice", "default", "reviews-sh");
    world.remote.compact();
    world.remote.set_reachable(true);
    until_addresses(&mut running, "the deletion seen through a new list", |a| {
        a.len() == 2
    })
    .await;
    assert_eq!(
        world.remote.lists("EndpointSlice").len(),
        2,
        "410 Gone: listed again"
    );
}

#[tokio::test]
async fn bookmarks_keep_a_quiet_watch_resumable_after_compaction() {
    let world = world();
    let mut running = start(&world, file(world.dir.path(), ""));
    until_addresses(&mut running, "all three", |a| a.len() == 3).await;
    // Other kinds move the resourceVersion on; the slices' watch hears only a bookmark.
    for i in 0..3 {
        world.remote.apply(node(
            &format!("sh-node-{}", i + 2),
            "cn-shanghai",
            "cn-shanghai-a",
        ));
    }
    world.remote.bookmark();
    tokio::time::sleep(Duration::from_millis(200)).await;
    world.remote.compact();
    world.remote.end_watches();
    // A change after the reconnect arrives, and the slices were not listed again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world.remote.apply(to_json(slice(
        "reviews",
        "reviews-sh",
        9080,
        &[("10.1.0.13", "sh-node-1", true)],
    )));
    until_addresses(&mut running, "the change after the reconnect", |a| {
        a.contains(&"10.1.0.13@ack-shanghai".to_string())
    })
    .await;
    assert_eq!(
        world.remote.lists("EndpointSlice").len(),
        1,
        "resumed from the bookmark: no relist"
    );
    assert_eq!(world.remote.lists("Node").len(), 1);
}

#[tokio::test]
async fn lists_come_in_pages() {
    let world = world();
    for i in 0..4 {
        world.remote.apply(to_json(slice(
            "reviews",
            &format!("reviews-sh-{i}"),
            9080,
            &[(&format!("10.1.1.{i}"), "sh-node-1", true)],
        )));
    }
    let mut running = start_with(
        &world,
        file(world.dir.path(), ""),
        Options {
            list_page_size: 2,
            ..options()
        },
    );
    until_addresses(&mut running, "all seven", |a| a.len() == 7).await;
    let pages = world.remote.lists("EndpointSlice");
    assert_eq!(pages.len(), 3, "5 slices in pages of 2: {pages:?}");
    assert!(
        pages.iter().all(|(limit, _)| *limit == Some(2)),
        "{pages:?}"
    );
    assert!(pages[0].1.is_none() && pages[1].1.is_some(), "{pages:?}");
}

#[tokio::test]
async fn a_forbidden_kind_is_reported_and_the_rest_is_steered() {
    let world = world();
    world.remote.forbid("EndpointSlice", true);
    let mut running = start(&world, file(world.dir.path(), ""));
    until_addresses(&mut running, "this cluster's two", |a| a.len() == 2).await;
    running
        .status_until("the 403 is reported for the remote cluster", |s| {
            s.clusters[1]
                .errors
                .iter()
                .any(|e| e.starts_with("EndpointSlices:") && e.contains("forbidden"))
        })
        .await;
    let lines = running.status.borrow().describe();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("cluster ack-shanghai: EndpointSlices:")),
        "{lines:?}"
    );
    // Granted: the endpoints arrive and the error is gone.
    world.remote.forbid("EndpointSlice", false);
    until_addresses(&mut running, "all three", |a| a.len() == 3).await;
    running
        .status_until("the error clears", |s| s.clusters[1].errors.is_empty())
        .await;
}

/// The remote cluster is a real HTTP server that checks a bearer token; its kubeconfig comes
/// from a Secret in this cluster. The token is rotated: the old one is revoked, the Secret
/// updated, and the agent reconnects with the new one.
#[tokio::test]
async fn rotated_credentials_in_a_secret_are_picked_up() {
    use k8s_openapi::{ByteString, api::core::v1::Secret};
    let world = world();
    let remote = FakeApi::standalone();
    remote.apply(node("sh-node-1", "cn-shanghai", "cn-shanghai-a"));
    remote.apply(to_json(slice(
        "reviews",
        "reviews-sh",
        9080,
        &[("10.1.0.11", "sh-node-1", true)],
    )));
    remote.require_token(Some("old-token"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(remote.clone().serve(listener));
    let secret = |token: &str| {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: sh, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: sh, user: {{token: {token}}}}}]\n\
             contexts: [{{name: sh, context: {{cluster: sh, user: sh}}}}]\n\
             current-context: sh\n"
        );
        let mut secret = Secret::default();
        secret.metadata.name = Some("ack-shanghai".into());
        secret.metadata.namespace = Some("geosteer-system".into());
        secret.data = Some(
            [(
                "kubeconfig".to_string(),
                ByteString(kubeconfig.into_bytes()),
            )]
            .into(),
        );
        let mut secret = to_json(secret);
        secret["apiVersion"] = json!("v1");
        secret["kind"] = json!("Secret");
        secret
    };
    world.local.apply(secret("old-token"));

    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("geosteer=debug")
        .try_init();
    let source = KubeSource::with_clients(
        file(world.dir.path(), ""),
        "hz-node-1",
        world.local_client.clone(),
        vec![(
            "ack-shanghai".to_string(),
            Connect::Secret {
                namespace: "geosteer-system".into(),
                name: "ack-shanghai".into(),
                context: None,
            },
        )],
        options(),
    );
    let status = source.status();
    let (tx, configs) = mpsc::channel(16);
    let mut running = Running {
        configs,
        status,
        _task: tokio::spawn(source.run(tx)),
    };
    until_addresses(&mut running, "the remote pod, with the old token", |a| {
        a.contains(&"10.1.0.11@ack-shanghai".to_string())
    })
    .await;

    // A broken kubeconfig in the Secret does not replace the working credentials: the remote
    // cluster's changes keep arriving over the old connection.
    let mut broken = secret("old-token");
    broken["data"]["kubeconfig"] = json!("bm90OiBbYSBrdWJlY29uZmln"); // "not: [a kubeconfig"
    world.local.apply(broken);
    remote.apply(to_json(slice(
        "reviews",
        "reviews-sh",
        9080,
        &[
            ("10.1.0.11", "sh-node-1", true),
            ("10.1.0.13", "sh-node-1", true),
        ],
    )));
    until_addresses(&mut running, "a change over the old connection", |a| {
        a.contains(&"10.1.0.13@ack-shanghai".to_string())
    })
    .await;

    // Rotation: the old token stops working, a pod is added, then the Secret is updated.
    remote.require_token(Some("new-token"));
    remote.apply(to_json(slice(
        "reviews",
        "reviews-sh",
        9080,
        &[
            ("10.1.0.11", "sh-node-1", true),
            ("10.1.0.12", "sh-node-1", true),
        ],
    )));
    running
        .status_until("the revoked token is reported", |s| {
            !s.clusters[1].connected && s.clusters[1].errors.iter().any(|e| e.contains("401"))
        })
        .await;
    world.local.apply(secret("new-token"));
    until_addresses(
        &mut running,
        "the pod added, seen with the new token",
        |a| a.contains(&"10.1.0.12@ack-shanghai".to_string()),
    )
    .await;
    running
        .status_until("connected again", |s| {
            s.clusters[1].connected && s.clusters[1].errors.is_empty()
        })
        .await;
}

// ---------------------------------------------------------------------------------------------
// Pod labels and subzone reach the policy.

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "reviews"}]},
        "status": {"phase": "Running"}})
}

/// The local reviews slice with `targetRef`s to pods `reviews-a` (10.0.0.11) and `reviews-b`
/// (10.0.0.12), and the nodes' subzones.
fn with_pods(world: &World, a_version: &str) {
    let mut object = to_json(slice(
        "reviews",
        "reviews-hz",
        9080,
        &[
            ("10.0.0.11", "hz-node-1", true),
            ("10.0.0.12", "hz-node-2", true),
        ],
    ));
    for (endpoint, pod) in object["endpoints"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(["reviews-a", "reviews-b"])
    {
        endpoint["targetRef"] = json!({"kind": "Pod", "namespace": "default", "name": pod});
    }
    world.local.apply(object);
    world.local.apply(pod(
        "reviews-a",
        json!({"app": "reviews", "version": a_version, "pod-template-hash": "x"}),
    ));
    world
        .local
        .apply(pod("reviews-b", json!({"app": "reviews", "version": "v2"})));
    let mut node = node("hz-node-2", "cn-hangzhou", "cn-hangzhou-h");
    node["metadata"]["labels"]["topology.istio.io/subzone"] = json!("rack-7");
    world.local.apply(node);
}

#[tokio::test]
async fn pods_are_watched_only_for_a_failover_priority_on_their_labels() {
    let world = world();
    with_pods(&world, "v1");
    let mut running = start(&world, file(world.dir.path(), ""));
    let config = running.next().await;
    let endpoint = |config: &Config, ip: &str| {
        config.services[0]
            .endpoints
            .iter()
            .find(|e| e.ip.to_string() == ip)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        endpoint(&config, "10.0.0.12").subzone,
        "rack-7",
        "subzone from the Node"
    );
    assert_eq!(
        endpoint(&config, "10.0.0.12").labels,
        [(
            "kubernetes.io/hostname".to_string(),
            "hz-node-2".to_string()
        )]
        .into(),
        "no pod labels while no policy needs them"
    );
    assert!(world.local.lists("Pod").is_empty(), "Pods are not watched");

    // A policy ranks endpoints by the pods' version label: the Pod watch starts, and keeps
    // that key only.
    world.local.apply(to_json(policy(
        "reviews",
        2,
        "targetRef: {name: reviews}\n\
         trafficPolicy:\n  \
           outlierDetection: {consecutive5xxErrors: 5}\n  \
           loadBalancer: {localityLbSetting: {failoverPriority: [version=v2]}}",
    )));
    let deadline = tokio::time::Instant::now() + WAIT;
    let config = loop {
        let config = running.next().await;
        if endpoint(&config, "10.0.0.11")
            .labels
            .contains_key("version")
        {
            break config;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod labels never arrived"
        );
    };
    assert_eq!(
        endpoint(&config, "10.0.0.11").labels,
        [
            (
                "kubernetes.io/hostname".to_string(),
                "hz-node-1".to_string()
            ),
            ("version".to_string(), "v1".to_string()),
        ]
        .into(),
        "only the key a failoverPriority names"
    );
    assert!(!world.local.lists("Pod").is_empty());
    // A pod relabelled: its endpoint follows.
    world
        .local
        .apply(pod("reviews-a", json!({"app": "reviews", "version": "v2"})));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let config = running.next().await;
        if endpoint(&config, "10.0.0.11")
            .labels
            .get("version")
            .map(String::as_str)
            == Some("v2")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relabel never arrived"
        );
    }
}

/// A node that restarts while a TrafficPolicy's current version is invalid keeps the version
/// last in effect, as the nodes that did not restart do (it is in the snapshot).
#[tokio::test]
async fn a_restarted_node_keeps_the_last_accepted_version_of_a_policy() {
    let world = world();
    let weights = |config: &Config| config.services[0].cluster_weights.clone();
    let wanted = Some([("ack-hangzhou".into(), 20), ("ack-shanghai".into(), 80)].into());
    world.local.apply(to_json(policy(
        "reviews",
        2,
        "targetRef: {name: reviews}\nclusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}",
    )));
    let mut running = start(&world, file(world.dir.path(), ""));
    let config = running.next().await;
    assert_eq!(weights(&config), wanted);
    // An invalid update: this node keeps the accepted version.
    world.local.apply(to_json(policy(
        "reviews",
        2,
        "targetRef: {name: reviews}\nclusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}\n\
         healthCheck: {interval: 1s, timeout: 5s}",
    )));
    running
        .status_until("the update is set aside", |s| {
            s.policies_not_in_effect.len() == 1
        })
        .await;
    drop(running);

    // The restarted agent reads the snapshot: same decision.
    let mut restarted = start(&world, file(world.dir.path(), ""));
    let config = restarted.next().await;
    assert_eq!(
        weights(&config),
        wanted,
        "the last accepted version from the snapshot"
    );
    restarted
        .status_until("and says so", |s| {
            s.policies_not_in_effect.first().is_some_and(|p| {
                p.message
                    .ends_with("the last accepted version stays in effect")
            })
        })
        .await;
}
