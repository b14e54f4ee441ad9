use std::time::Duration;

use serde_json::json;

use super::{fixtures::*, *};
use crate::config::OutlierDetection;

/// A Service `namespace/name` with one endpoint in each cluster, as a test needs it.
fn in_both_clusters(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Index {
    let mut index = index();
    let mut k8s = with_annotations(service(name, "172.16.0.53"), annotations);
    k8s.metadata.namespace = Some(namespace.into());
    load(&mut index.clusters[0].services, vec![k8s]);
    for (c, ip, node) in [(0, "10.0.0.53", "hz-node-1"), (1, "10.1.0.53", "sh-node-1")] {
        let mut slice = slice(name, &format!("{name}-{c}"), 53, &[(ip, node, true)]);
        slice.metadata.namespace = Some(namespace.into());
        load(&mut index.clusters[c].slices, vec![slice]);
    }
    index
}

#[test]
fn kube_system_and_the_api_server_stay_in_their_cluster_by_default() {
    let local = ["10.0.0.53@ack-hangzhou/cn-hangzhou/cn-hangzhou-b"];
    let merged = [
        "10.0.0.53@ack-hangzhou/cn-hangzhou/cn-hangzhou-b",
        "10.1.0.53@ack-shanghai/cn-shanghai/cn-shanghai-a",
    ];
    // (case, namespace, name, annotations, file serviceSettings, endpoints)
    let cases: [(&str, &str, &str, &[(&str, &str)], &str, &[&str]); 6] = [
        ("kube-dns", "kube-system", "kube-dns", &[], "", &local),
        ("the API server", "default", "kubernetes", &[], "", &local),
        ("an application", "default", "reviews", &[], "", &merged),
        (
            "kube-system merged on request",
            "kube-system",
            "kube-dns",
            &[],
            "  serviceSettings: [{settings: {clusterLocal: false}, hosts: [\"*.kube-system.svc.cluster.local\"]}]\n",
            &merged,
        ),
        (
            "the API server, even then",
            "default",
            "kubernetes",
            &[],
            "  serviceSettings: [{settings: {clusterLocal: false}, hosts: [\"*\"]}]\n",
            &local,
        ),
        (
            "a Service that asks",
            "default",
            "reviews",
            &[("geosteer.io/cluster-local", "true")],
            "",
            &local,
        ),
    ];
    for (case, namespace, name, annotations, settings, expected) in cases {
        let index = in_both_clusters(namespace, name, annotations);
        let file = config::parse(&format!("{FILE}{settings}")).unwrap();
        let desired = index.desired(&file).expect("a desired state");
        assert_eq!(endpoints(&desired), expected, "{case}");
        assert_eq!(
            desired.config.services[0].cluster_local.is_some(),
            expected.len() == 1,
            "{case}"
        );
    }
}

#[test]
fn internal_traffic_policy_local_keeps_this_nodes_endpoints_only() {
    let mut index = reviews_in_two_clusters();
    let mut reviews = service("reviews", "172.16.0.10");
    reviews.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
    load(&mut index.clusters[0].services, vec![reviews]);
    // hz-node-1 is this node; 10.0.0.12 runs on hz-node-2, 10.1.0.11 in Shanghai.
    assert_eq!(
        endpoints(&desired(&index)),
        ["10.0.0.11@ack-hangzhou/cn-hangzhou/cn-hangzhou-b"]
    );
    // No endpoint on this node: none at all (dropped, as kube-proxy does), not elsewhere.
    let mut index = reviews_in_two_clusters();
    index.node_name = "hz-node-9".into();
    let mut reviews = service("reviews", "172.16.0.10");
    reviews.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
    load(&mut index.clusters[0].services, vec![reviews]);
    assert_eq!(endpoints(&desired(&index)), Vec::<String>::new());
}

#[test]
fn services_of_another_proxy_are_left_alone() {
    for (proxy, steered) in [("other-proxy", false), ("geosteer", true)] {
        let mut index = reviews_in_two_clusters();
        let mut reviews = service("reviews", "172.16.0.10");
        reviews.metadata.labels =
            Some([(SERVICE_PROXY_NAME_LABEL.to_string(), proxy.to_string())].into());
        load(&mut index.clusters[0].services, vec![reviews]);
        assert_eq!(
            desired(&index).config.services.len(),
            usize::from(steered),
            "{proxy}"
        );
    }
}

#[test]
fn service_settings_hosts_are_validated() {
    let file = format!(
        "{FILE}  serviceSettings: [{{settings: {{clusterLocal: true}}, hosts: [\"kube-*.svc\"]}}]\n"
    );
    let error = config::parse(&file).unwrap_err().to_string();
    assert!(
        error.contains("kubernetes.serviceSettings[0].hosts[0]") && error.contains("kube-*.svc"),
        "{error}"
    );
}

#[test]
fn endpoint_conditions() {
    // (ready, serving, terminating, takes traffic)
    let cases = [
        (None, None, None, true),
        (Some(true), None, None, true),
        (Some(false), None, None, false),
        (Some(false), Some(true), Some(false), true),
        (Some(false), Some(true), Some(true), false),
        (Some(false), Some(false), Some(false), false),
        (Some(true), Some(true), Some(true), true),
    ];
    for (ready, serving, terminating, expected) in cases {
        let conditions = EndpointConditions {
            ready,
            serving,
            terminating,
        };
        assert_eq!(takes_traffic(Some(&conditions)), expected, "{conditions:?}");
    }
    assert!(takes_traffic(None));
}

#[test]
fn a_relist_replaces_the_store_at_its_end() {
    let mut store = Store::default();
    load(&mut store, vec![service("a", "172.16.0.1")]);
    assert!(store.is_synced());
    store.apply(watcher::Event::Init);
    store.apply(watcher::Event::InitApply(service("b", "172.16.0.2")));
    assert!(
        store.get("default", "a").is_some(),
        "old objects stay during a relist"
    );
    assert!(store.apply(watcher::Event::InitDone));
    assert!(store.get("default", "a").is_none());
    assert!(store.get("default", "b").is_some());
    assert!(store.apply(watcher::Event::Delete(service("b", "172.16.0.2"))));
    assert!(!store.apply(watcher::Event::Delete(service("b", "172.16.0.2"))));
    assert!(store.is_empty());
}

#[test]
fn builds_the_config_from_services_slices_and_nodes() {
    let desired = desired(&reviews_in_two_clusters());
    let config = &desired.config;
    assert_eq!(
        config.node,
        ConfigNode {
            name: "hz-node-1".into(),
            region: "cn-hangzhou".into(),
            zone: "cn-hangzhou-b".into(),
            subzone: String::new(),
            cluster: "ack-hangzhou".into(),
            labels: [
                ("topology.kubernetes.io/region", "cn-hangzhou"),
                ("topology.kubernetes.io/zone", "cn-hangzhou-b"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        }
    );
    assert_eq!(config.dataplane.tc, ["veth*"], "the file's parts stay");
    let service = &config.services[0];
    assert_eq!(
        (service.namespace.as_str(), service.name.as_str()),
        ("default", "reviews")
    );
    assert_eq!(service.vip, Ipv4Addr::new(172, 16, 0, 10));
    assert_eq!(
        service.ports,
        [ServicePort {
            name: Some("http".into()),
            app_protocol: None,
            port: 80,
            target_port: 9080,
            protocol: Protocol::Tcp,
        }]
    );
    assert_eq!(
        endpoints(&desired),
        [
            "10.0.0.11@ack-hangzhou/cn-hangzhou/cn-hangzhou-b",
            "10.0.0.12@ack-hangzhou/cn-hangzhou/cn-hangzhou-h",
            "10.1.0.11@ack-shanghai/cn-shanghai/cn-shanghai-a",
        ]
    );
    assert!(desired.warnings.is_empty(), "{:?}", desired.warnings);
}

#[test]
fn endpoint_locality_and_readiness() {
    // (case, endpoint json, expected endpoints)
    let cases = [
        (
            "zone field wins over the node label",
            json!({"addresses": ["10.0.0.21"], "nodeName": "hz-node-1", "zone": "cn-hangzhou-k"}),
            vec!["10.0.0.21@ack-hangzhou/cn-hangzhou/cn-hangzhou-k"],
        ),
        (
            "unknown node: the cluster's region",
            json!({"addresses": ["10.0.0.22"], "nodeName": "gone"}),
            vec!["10.0.0.22@ack-hangzhou/cn-hangzhou/"],
        ),
        (
            "every address",
            json!({"addresses": ["10.0.0.23", "10.0.0.24"]}),
            vec![
                "10.0.0.23@ack-hangzhou/cn-hangzhou/",
                "10.0.0.24@ack-hangzhou/cn-hangzhou/",
            ],
        ),
        (
            "not ready",
            json!({"addresses": ["10.0.0.25"], "conditions": {"ready": false}}),
            vec![],
        ),
        (
            "terminating: draining (its open connections go on, no new one comes)",
            json!({"addresses": ["10.0.0.26"],
                       "conditions": {"ready": false, "serving": true, "terminating": true}}),
            vec!["10.0.0.26@ack-hangzhou/cn-hangzhou/ (draining)"],
        ),
    ];
    for (case, endpoint, expected) in cases {
        let mut index = index();
        load(
            &mut index.clusters[0].services,
            vec![service("reviews", "172.16.0.10")],
        );
        let mut slice = slice("reviews", "reviews-1", 9080, &[]);
        slice.endpoints = vec![from_json(endpoint)];
        load(&mut index.clusters[0].slices, vec![slice]);
        assert_eq!(endpoints(&desired(&index)), expected, "{case}");
    }
}

#[test]
fn services_it_cannot_steer_are_skipped() {
    // (case, service spec)
    let cases = [
        (
            "headless",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
        (
            "external name",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        (
            "SCTP only",
            json!({"clusterIP": "172.16.0.10", "ports": [{"port": 80, "protocol": "SCTP"}]}),
        ),
    ];
    for (case, spec) in cases {
        let mut index = index();
        let service: K8sService = from_json(json!({
            "metadata": {"name": "s", "namespace": "default"},
            "spec": spec,
        }));
        load(&mut index.clusters[0].services, vec![service]);
        assert!(desired(&index).config.services.is_empty(), "{case}");
    }
}

#[test]
fn ports_map_by_name_and_dual_stack_takes_the_ipv4_address() {
    let mut index = index();
    let service: K8sService = from_json(json!({
        "metadata": {"name": "multi", "namespace": "default"},
        "spec": {
            "clusterIP": "fd00::10",
            "clusterIPs": ["fd00::10", "172.16.0.20"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
                {"name": "grpc", "port": 81, "targetPort": 9090, "appProtocol": "kubernetes.io/h2c"},
            ],
        },
    }));
    let slice: EndpointSlice = from_json(json!({
        "metadata": {"name": "multi-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "multi"}},
        "addressType": "IPv4",
        "ports": [
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "http", "port": 8080, "protocol": "TCP"},
        ],
        "endpoints": [{"addresses": ["10.0.0.31"]}],
    }));
    load(&mut index.clusters[0].services, vec![service]);
    load(&mut index.clusters[0].slices, vec![slice]);
    let desired = desired(&index);
    let service = &desired.config.services[0];
    assert_eq!(service.vip, Ipv4Addr::new(172, 16, 0, 20));
    assert_eq!(
        service.vip6,
        Some("fd00::10".parse().unwrap()),
        "dual stack"
    );
    let ports: Vec<(u16, u16, Protocol)> = service
        .ports
        .iter()
        .map(|p| (p.port, p.target_port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [
            (80, 8080, Protocol::Tcp),
            (53, 5353, Protocol::Udp),
            (81, 9090, Protocol::Tcp),
        ]
    );
    // appProtocol and the port name decide how health signals read the port (Istio).
    let protocols: Vec<crate::config::AppProtocol> = service
        .ports
        .iter()
        .map(|p| crate::config::app_protocol(p).protocol)
        .collect();
    use crate::config::AppProtocol::{Http1, Opaque};
    assert_eq!(protocols, [Http1, Opaque, Opaque]);
    assert_eq!(
        service.ports[2].app_protocol.as_deref(),
        Some("kubernetes.io/h2c")
    );
}

#[test]
fn slices_that_disagree_on_a_port_or_repeat_an_address() {
    let mut index = reviews_in_two_clusters();
    load(
        &mut index.clusters[1].slices,
        vec![
            slice(
                "reviews",
                "reviews-sh",
                9080,
                &[("10.1.0.11", "sh-node-1", true)],
            ),
            slice(
                "reviews",
                "reviews-sh-old",
                9081,
                &[("10.1.0.12", "sh-node-1", true)],
            ),
            // The same pod in a second slice while the controller moves it.
            slice(
                "reviews",
                "reviews-sh-x",
                9080,
                &[("10.1.0.11", "sh-node-1", true)],
            ),
        ],
    );
    let desired = desired(&index);
    assert_eq!(
        endpoints(&desired),
        [
            "10.0.0.11@ack-hangzhou/cn-hangzhou/cn-hangzhou-b",
            "10.0.0.12@ack-hangzhou/cn-hangzhou/cn-hangzhou-h",
            "10.1.0.11@ack-shanghai/cn-shanghai/cn-shanghai-a",
        ]
    );
    assert_eq!(desired.warnings.len(), 1, "{:?}", desired.warnings);
    assert!(
        desired.warnings[0].starts_with(
            "EndpointSlice default/reviews-sh-old (cluster \"ack-shanghai\"): port \"http\" \
                 is 9081, other endpoints use 9080"
        ),
        "{:?}",
        desired.warnings
    );
}

#[test]
fn a_service_only_in_a_remote_cluster_has_no_vip_here() {
    let mut index = index();
    load(
        &mut index.clusters[1].slices,
        vec![slice(
            "ratings",
            "ratings-sh",
            9080,
            &[("10.1.0.21", "sh-node-1", true)],
        )],
    );
    assert!(desired(&index).config.services.is_empty());
}

#[test]
fn zone_hints_as_kube_proxy_applies_them() {
    // (case, hints of 10.0.0.11 and 10.0.0.12, expected addresses)
    let cases = [
        (
            "no hints",
            [None, None],
            vec!["10.0.0.11", "10.0.0.12", "10.1.0.11"],
        ),
        (
            "hinted for our zone",
            [Some("cn-hangzhou-b"), Some("cn-hangzhou-h")],
            vec!["10.0.0.11", "10.1.0.11"],
        ),
        (
            "one endpoint without hints",
            [Some("cn-hangzhou-b"), None],
            vec!["10.0.0.11", "10.0.0.12", "10.1.0.11"],
        ),
        (
            "none for our zone",
            [Some("cn-hangzhou-h"), Some("cn-hangzhou-h")],
            vec!["10.0.0.11", "10.0.0.12", "10.1.0.11"],
        ),
    ];
    for (case, hints, expected) in cases {
        let mut index = reviews_in_two_clusters();
        let mut slice = slice(
            "reviews",
            "reviews-hz",
            9080,
            &[
                ("10.0.0.11", "hz-node-1", true),
                ("10.0.0.12", "hz-node-2", true),
            ],
        );
        for (endpoint, zone) in slice.endpoints.iter_mut().zip(hints) {
            endpoint.hints = zone.map(|zone| from_json(json!({"forZones": [{"name": zone}]})));
        }
        load(&mut index.clusters[0].slices, vec![slice]);
        let desired = desired(&index);
        let addresses: Vec<String> = desired.config.services[0]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(addresses, expected, "{case}");
    }
}

#[test]
fn cluster_weight_annotations() {
    let geosteer = "geosteer.io/cluster-weight.";
    let alb = "alb.ingress.kubernetes.io/cluster-weight.";
    // (case, annotations, expected weights, warning it must contain)
    type Case<'a> = (
        &'a str,
        Vec<(String, &'a str)>,
        Option<Vec<(&'a str, u32)>>,
        &'a str,
    );
    let cases: [Case; 6] = [
        (
            "geosteer form",
            vec![
                (format!("{geosteer}ack-hangzhou"), "20"),
                (format!("{geosteer}ack-shanghai"), "80"),
            ],
            Some(vec![("ack-hangzhou", 20), ("ack-shanghai", 80)]),
            "",
        ),
        (
            "ALB form, read the same way",
            vec![
                (format!("{alb}ack-hangzhou"), "20"),
                (format!("{alb}ack-shanghai"), " 80 "),
            ],
            Some(vec![("ack-hangzhou", 20), ("ack-shanghai", 80)]),
            "",
        ),
        (
            "geosteer form wins",
            vec![
                (format!("{alb}ack-hangzhou"), "50"),
                (format!("{geosteer}ack-hangzhou"), "20"),
                (format!("{alb}ack-shanghai"), "80"),
            ],
            Some(vec![("ack-hangzhou", 20), ("ack-shanghai", 80)]),
            "",
        ),
        (
            "not a number",
            vec![
                (format!("{geosteer}ack-hangzhou"), "twenty"),
                (format!("{geosteer}ack-shanghai"), "80"),
            ],
            None,
            "metadata.annotations[\"geosteer.io/cluster-weight.ack-hangzhou\"]: invalid \
                 value \"twenty\"",
        ),
        (
            "unknown cluster",
            vec![(format!("{geosteer}ack-beijing"), "100")],
            None,
            "cluster-weight annotations ignored: clusterWeights.ack-beijing: no endpoint",
        ),
        (
            "above 100",
            vec![(format!("{geosteer}ack-hangzhou"), "120")],
            None,
            "clusterWeights.ack-hangzhou: 120 is above the maximum 100",
        ),
    ];
    for (case, annotations, expected, warning) in cases {
        let mut index = reviews_in_two_clusters();
        let annotations: Vec<(&str, &str)> =
            annotations.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        load(
            &mut index.clusters[0].services,
            vec![with_annotations(
                service("reviews", "172.16.0.10"),
                &annotations,
            )],
        );
        let desired = desired(&index);
        let expected = expected.map(|weights| {
            weights
                .into_iter()
                .map(|(c, w)| (c.to_string(), w))
                .collect::<BTreeMap<_, _>>()
        });
        assert_eq!(
            desired.config.services[0].cluster_weights, expected,
            "{case}"
        );
        if warning.is_empty() {
            assert!(
                desired.warnings.is_empty(),
                "{case}: {:?}",
                desired.warnings
            );
        } else {
            assert!(
                desired.warnings.iter().any(|w| w.contains(warning)),
                "{case}: {:?}",
                desired.warnings
            );
        }
    }
}

#[test]
fn weights_of_a_cluster_without_endpoints_are_set_aside() {
    let mut index = reviews_in_two_clusters();
    load(
        &mut index.clusters[0].services,
        vec![with_annotations(
            service("reviews", "172.16.0.10"),
            &[
                ("geosteer.io/cluster-weight.ack-hangzhou", "20"),
                ("geosteer.io/cluster-weight.ack-shanghai", "80"),
            ],
        )],
    );
    load(&mut index.clusters[1].slices, vec![]);
    let desired = desired(&index);
    assert_eq!(
        desired.config.services[0].cluster_weights,
        Some([("ack-hangzhou".to_string(), 20)].into())
    );

    // From a TrafficPolicy, the status says so.
    load(
        &mut index.clusters[0].policies,
        vec![policy(
            "p",
            1,
            "targetRef: {name: reviews}\nclusterWeights: {ack-hangzhou: 0, ack-shanghai: 100}",
        )],
    );
    let desired = fixtures::desired(&index);
    assert_eq!(desired.config.services[0].cluster_weights, None);
    let verdict = &desired.verdicts[&("default".into(), "p".into())];
    assert_eq!(verdict.reason, "Accepted");
    assert_eq!(
        verdict.message,
        "clusterWeights for ack-shanghai unused: no endpoints there now; \
             clusterWeights unused: no weighted cluster has endpoints"
    );
}

const OUTLIER_RULE: &str = "host: reviews\n\
        trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1, interval: 1s}}";

#[test]
fn traffic_policy_verdicts() {
    // (case, policies (name, created, spec), expected verdicts (name, reason, message
    // contains), outlier 5xx limit in effect)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, u32, &'a str)>,
        Vec<(&'a str, &'a str, &'a str)>,
        u32,
    );
    let cases: Vec<Case> = vec![
        (
            "accepted",
            vec![(
                "p",
                1,
                "targetRef: {name: reviews}\n\
                     trafficPolicy: {outlierDetection: {consecutive5xxErrors: 7}}",
            )],
            vec![("p", "Accepted", "")],
            7,
        ),
        (
            "target not found",
            vec![("p", 1, "targetRef: {name: nope}")],
            vec![("p", "TargetNotFound", "Service default/nope does not exist")],
            1,
        ),
        (
            "spec that does not parse",
            vec![(
                "p",
                1,
                "targetRef: {name: reviews}\nhealthCheck: {interval: 5 s}",
            )],
            vec![(
                "p",
                "Invalid",
                "spec.healthCheck.interval: invalid value \"5 s\"",
            )],
            1,
        ),
        (
            "rejected by validation: the DestinationRule still applies",
            vec![(
                "p",
                1,
                "targetRef: {name: reviews}\n\
                     trafficPolicy: {outlierDetection: {consecutive5xxErrors: 7}}\n\
                     healthCheck: {interval: 1s, timeout: 2s}",
            )],
            vec![(
                "p",
                "Invalid",
                "spec.healthCheck.timeout: 2s is longer than the interval 1s",
            )],
            1,
        ),
        (
            "failover to an unknown region",
            vec![(
                "p",
                1,
                "targetRef: {name: reviews}\n\
                     trafficPolicy: {loadBalancer: {localityLbSetting: \
                     {failover: [{from: cn-hangzhou, to: cn-beijing}]}}}",
            )],
            vec![(
                "p",
                "Invalid",
                "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to: \
                     \"cn-beijing\" is not a known region",
            )],
            1,
        ),
        (
            "two policies: the older wins",
            vec![
                ("young", 9, "targetRef: {name: reviews}"),
                (
                    "old",
                    1,
                    "targetRef: {name: reviews}\n\
                         trafficPolicy: {outlierDetection: {consecutive5xxErrors: 4}}",
                ),
            ],
            vec![
                ("old", "Accepted", ""),
                (
                    "young",
                    "Conflicted",
                    "Service default/reviews already has TrafficPolicy default/old",
                ),
            ],
            4,
        ),
        (
            "cluster weights",
            vec![(
                "p",
                1,
                "targetRef: {name: reviews}\nclusterWeights: {ack-hangzhou: 100, ack-shanghai: 0}",
            )],
            vec![("p", "Accepted", "")],
            1,
        ),
    ];
    for (case, policies, expected, limit) in cases {
        let mut index = reviews_in_two_clusters();
        load(
            &mut index.clusters[0].policies,
            policies
                .iter()
                .map(|(name, created, spec)| policy(name, *created, spec))
                .collect(),
        );
        load(
            &mut index.clusters[0].rules,
            vec![rule("default", "reviews", 1, OUTLIER_RULE)],
        );
        let desired = desired(&index);
        let got: Vec<(&str, &str, &str)> = desired
            .verdicts
            .iter()
            .map(|((_, name), v)| (name.as_str(), v.reason, v.message.as_str()))
            .collect();
        assert_eq!(got.len(), expected.len(), "{case}: {got:?}");
        for ((name, reason, message), (e_name, e_reason, e_message)) in got.iter().zip(&expected) {
            assert_eq!((*name, *reason), (*e_name, *e_reason), "{case}: {got:?}");
            assert!(message.contains(e_message), "{case}: {message:?}");
        }
        for verdict in desired.verdicts.values() {
            assert_eq!(verdict.accepted, verdict.reason == "Accepted", "{case}");
            assert_eq!(verdict.generation, Some(3), "{case}");
        }
        let effective = crate::config::effective_traffic_policy(&desired.config, 0);
        assert_eq!(
            effective
                .outlier_detection
                .map(|o| o.consecutive_5xx_errors),
            Some(limit),
            "{case}"
        );
    }
}

#[test]
fn a_rejected_update_keeps_the_last_accepted_version() {
    let mut index = reviews_in_two_clusters();
    load(
        &mut index.clusters[0].rules,
        vec![rule("default", "reviews", 1, OUTLIER_RULE)],
    );
    let good = "targetRef: {name: reviews}\n\
                    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 7}}";
    load(&mut index.clusters[0].policies, vec![policy("p", 1, good)]);
    let first = desired(&index);
    index.last_accepted = first.in_effect.clone();
    let limit = |desired: &Desired| {
        crate::config::effective_traffic_policy(&desired.config, 0)
            .outlier_detection
            .map(|o| o.consecutive_5xx_errors)
    };
    assert_eq!(limit(&first), Some(7));

    // (case, updated spec, message start)
    let cases = [
        (
            "fails validation",
            "targetRef: {name: reviews}\nhealthCheck: {interval: 1s, timeout: 2s}",
            "spec.healthCheck.timeout: 2s is longer than the interval 1s",
        ),
        (
            "does not parse",
            "targetRef: {name: reviews}\nhealthCheck: {interval: 5 s}",
            "spec.healthCheck.interval: invalid value \"5 s\"",
        ),
    ];
    for (case, spec, message) in cases {
        load(&mut index.clusters[0].policies, vec![policy("p", 1, spec)]);
        let desired = desired(&index);
        assert_eq!(
            desired.config, first.config,
            "{case}: traffic is not disturbed"
        );
        let verdict = &desired.verdicts[&("default".into(), "p".into())];
        assert_eq!(verdict.reason, "Invalid", "{case}");
        assert!(verdict.message.starts_with(message), "{case}: {verdict:?}");
        assert!(
            verdict
                .message
                .ends_with("; the last accepted version stays in effect"),
            "{case}: {verdict:?}"
        );
        assert_eq!(desired.in_effect, first.in_effect, "{case}");
    }

    // Deleted: the service runs with its other sources.
    load(&mut index.clusters[0].policies, vec![]);
    let desired = desired(&index);
    assert_eq!(limit(&desired), Some(1));
    assert!(desired.in_effect.is_empty());
}

#[test]
fn policy_sets_the_service_fields() {
    let mut index = reviews_in_two_clusters();
    load(
        &mut index.clusters[0].policies,
        vec![policy(
            "reviews",
            1,
            "targetRef: {name: reviews}\n\
                 clusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}\n\
                 healthCheck: {type: tcp}\n\
                 resetOnEject: true",
        )],
    );
    // Annotations lose to the policy's weights.
    load(
        &mut index.clusters[0].services,
        vec![with_annotations(
            service("reviews", "172.16.0.10"),
            &[("geosteer.io/cluster-weight.ack-hangzhou", "100")],
        )],
    );
    let desired = desired(&index);
    let service = &desired.config.services[0];
    assert_eq!(
        service.cluster_weights,
        Some([("ack-hangzhou".into(), 20), ("ack-shanghai".into(), 80)].into())
    );
    assert_eq!(
        service.health_check.as_ref().map(|h| h.kind),
        Some(crate::config::HealthCheckKind::Tcp)
    );
    assert!(service.reset_on_eject);
    assert!(desired.verdicts.values().all(|v| v.accepted));
}

#[test]
fn policy_weights_that_conflict_with_distribute_are_rejected() {
    let mut index = reviews_in_two_clusters();
    load(
        &mut index.clusters[0].policies,
        vec![policy(
            "p",
            1,
            "targetRef: {name: reviews}\nclusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}",
        )],
    );
    load(
        &mut index.clusters[0].rules,
        vec![rule(
            "default",
            "reviews",
            1,
            "host: reviews\ntrafficPolicy: {loadBalancer: {localityLbSetting: {distribute: \
                 [{from: cn-hangzhou/*, to: {cn-hangzhou/*: 90, cn-shanghai/*: 10}}]}}}",
        )],
    );
    let desired = desired(&index);
    let verdict = &desired.verdicts[&("default".into(), "p".into())];
    assert_eq!(verdict.reason, "Invalid");
    assert!(
        verdict.message.starts_with(
            "spec.clusterWeights: cannot be combined with localityLbSetting.distribute"
        ),
        "{verdict:?}"
    );
    assert_eq!(desired.config.services[0].cluster_weights, None);
    let effective = crate::config::effective_traffic_policy(&desired.config, 0);
    assert!(
        effective.locality_lb.is_some(),
        "the rule's distribute stays"
    );
}

#[test]
fn destination_rules_bind_by_host() {
    // (case, rules (namespace, name, created, spec), rule in effect, warning it contains)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str, u32, &'a str)>,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "short host in the service's namespace",
            vec![("default", "reviews", 1, OUTLIER_RULE)],
            Some("kubernetes: DestinationRule default/reviews"),
            "",
        ),
        (
            "FQDN from another namespace",
            vec![(
                "istio-system",
                "reviews-global",
                1,
                "host: reviews.default.svc.cluster.local\n\
                     trafficPolicy: {outlierDetection: {}}",
            )],
            Some("kubernetes: DestinationRule istio-system/reviews-global"),
            "",
        ),
        (
            "short host from another namespace selects nothing",
            vec![("prod", "reviews", 1, OUTLIER_RULE)],
            None,
            "",
        ),
        (
            "two rules for one host: the older wins",
            vec![
                ("default", "b-young", 5, OUTLIER_RULE),
                ("default", "a-old", 2, OUTLIER_RULE),
            ],
            Some("kubernetes: DestinationRule default/a-old"),
            "kubernetes: DestinationRule default/b-young: left out: Service default/reviews \
                 is already selected by DestinationRule default/a-old",
        ),
        (
            "failover to an unknown region",
            vec![(
                "default",
                "reviews",
                1,
                "host: reviews\ntrafficPolicy: {loadBalancer: {localityLbSetting: \
                     {failover: [{from: cn-hangzhou, to: mars-1}]}}}",
            )],
            None,
            "DestinationRule default/reviews (kubernetes): left out: kubernetes: \
                 DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.\
                 localityLbSetting.failover[0].to: \"mars-1\" is not a known region",
        ),
        (
            "spec that does not parse",
            vec![(
                "default",
                "reviews",
                1,
                "host: reviews\ntrafficPolicy: {outlierDetection: {interval: soon}}",
            )],
            None,
            "DestinationRule default/reviews: left out: kubernetes: document 1: \
                 spec.trafficPolicy.outlierDetection.interval: invalid value \"soon\"",
        ),
    ];
    for (case, rules, bound, warning) in cases {
        let mut index = reviews_in_two_clusters();
        load(
            &mut index.clusters[0].rules,
            rules
                .iter()
                .map(|(namespace, name, created, spec)| rule(namespace, name, *created, spec))
                .collect(),
        );
        let desired = desired(&index);
        let got = crate::config::bound_destination_rule(&desired.config, 0).map(|r| r.path());
        assert_eq!(got.as_deref(), bound, "{case}");
        if warning.is_empty() {
            assert!(
                desired.warnings.is_empty(),
                "{case}: {:?}",
                desired.warnings
            );
        } else {
            assert!(
                desired.warnings.iter().any(|w| w.starts_with(warning)),
                "{case}: {:?}",
                desired.warnings
            );
        }
    }
}

#[test]
fn a_file_destination_rule_keeps_its_service() {
    let mut file = file();
    file.loaded_destination_rules = crate::config::parse_destination_rules(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {name: reviews-file}\nspec: {host: reviews}\n",
    )
    .unwrap();
    let mut index = reviews_in_two_clusters();
    load(
        &mut index.clusters[0].rules,
        vec![rule("default", "reviews", 1, OUTLIER_RULE)],
    );
    let desired = index.desired(&file).unwrap();
    assert_eq!(
        crate::config::bound_destination_rule(&desired.config, 0).map(|r| r.path()),
        Some("dr.yaml: DestinationRule default/reviews-file".to_string())
    );
}

#[test]
fn the_files_services_come_first_and_win_a_clash() {
    let yaml = format!(
        "{FILE}services:\n  - {{name: legacy, vip: 172.16.0.10, ports: [{{port: 80}}], \
             endpoints: [{{ip: 192.168.0.1}}]}}\n"
    );
    let file = crate::config::parse(&yaml).unwrap();
    let desired = reviews_in_two_clusters().desired(&file).unwrap();
    let names: Vec<&str> = desired
        .config
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["legacy"]);
    assert_eq!(desired.file_services, 1);
    assert!(
        desired.warnings[0].starts_with(
            "Service default/reviews: left out: ports[0]: 172.16.0.10:80/TCP is already \
                 used by services[0] (default/legacy)"
        ),
        "{:?}",
        desired.warnings
    );
}

#[test]
fn capacity_limits_leave_out_the_last_services() {
    let file = crate::config::parse(&FILE.replace(
        "dataplane: {tc: [\"veth*\"]}",
        "dataplane: {tc: [\"veth*\"], maxServices: 2}",
    ))
    .unwrap();
    let mut index = index();
    load(
        &mut index.clusters[0].services,
        ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| service(name, &format!("172.16.0.{}", i + 1)))
            .collect(),
    );
    let desired = index.desired(&file).unwrap();
    let names: Vec<&str> = desired
        .config
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(desired.warnings[0].starts_with("Service default/c: left out: over"));
}

/// The table map is a capacity too: services whose tables do not fit are left out from the
/// end, as over maxServices, and the rest are applied.
#[test]
fn services_whose_tables_do_not_fit_are_left_out_from_the_end() {
    let file = crate::config::parse(&FILE.replace(
        "dataplane: {tc: [\"veth*\"]}",
        "dataplane: {tc: [\"veth*\"], tableChunks: 100}",
    ))
    .unwrap();
    let mut index = index();
    let names = ["a", "b", "c"];
    load(
        &mut index.clusters[0].services,
        names
            .iter()
            .enumerate()
            .map(|(i, name)| service(name, &format!("172.16.0.{}", i + 1)))
            .collect(),
    );
    load(
        &mut index.clusters[0].slices,
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ip = format!("10.0.0.{}", i + 1);
                slice(
                    name,
                    &format!("{name}-1"),
                    9080,
                    &[(&ip, "hz-node-1", true)],
                )
            })
            .collect(),
    );
    let desired = index.desired(&file).unwrap();
    let names: Vec<&str> = desired
        .config
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    // Each takes 33 chunks (one id, 1,021 slots), and 33 more stay free to swap one: two fit.
    assert_eq!(names, ["a", "b"]);
    assert!(
        desired.warnings[0].starts_with("Service default/c: left out: over")
            && desired.warnings[0].contains("dataplane.tableChunks (100)"),
        "{:?}",
        desired.warnings
    );
    assert!(
        crate::config::tables_needed(&desired.config.services) <= 100,
        "what is applied fits"
    );
}

#[test]
fn remote_clusters_expire_and_seed() {
    // An expired cluster's endpoints are left out.
    let mut index = reviews_in_two_clusters();
    index.clusters[1].expired = true;
    assert_eq!(
        endpoints(&desired(&index)),
        [
            "10.0.0.11@ack-hangzhou/cn-hangzhou/cn-hangzhou-b",
            "10.0.0.12@ack-hangzhou/cn-hangzhou/cn-hangzhou-h",
        ]
    );

    // A remote cluster not listed yet keeps what the snapshot knew of it (and only it).
    let mut index = reviews_in_two_clusters();
    index.clusters[1].slices = Store::default();
    let mut seeded = desired(&reviews_in_two_clusters()).config.services[0].clone();
    seeded.endpoints[0].ip = Ipv4Addr::new(10, 0, 9, 9).into(); // a Hangzhou pod that has gone
    seeded.endpoints[2].ip = Ipv4Addr::new(10, 1, 9, 9).into();
    index
        .seed
        .insert(("default".into(), "reviews".into()), seeded);
    assert_eq!(
        endpoints(&desired(&index)),
        [
            "10.0.0.11@ack-hangzhou/cn-hangzhou/cn-hangzhou-b",
            "10.0.0.12@ack-hangzhou/cn-hangzhou/cn-hangzhou-h",
            "10.1.9.9@ack-shanghai/cn-shanghai/cn-shanghai-a",
        ]
    );
}

#[test]
fn a_failover_region_of_a_remote_cluster_stays_known_while_it_is_down() {
    let mut index = reviews_in_two_clusters();
    index.clusters[1].expired = true;
    load(
        &mut index.clusters[0].rules,
        vec![rule(
            "default",
            "reviews",
            1,
            "host: reviews\ntrafficPolicy:\n  outlierDetection: {interval: 1s}\n  \
                 loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, to: cn-shanghai}]}}",
        )],
    );
    let desired = desired(&index);
    let effective = crate::config::effective_traffic_policy(&desired.config, 0);
    assert_eq!(
        effective.outlier_detection,
        Some(OutlierDetection {
            interval: Duration::from_secs(1),
            ..OutlierDetection::default()
        })
    );
    assert!(desired.warnings.is_empty(), "{:?}", desired.warnings);
}

#[test]
fn local_sync_needs_every_kind() {
    let mut index = Index::new(&file(), "hz-node-1");
    assert!(!index.local_synced());
    let local = &mut index.clusters[0];
    load(&mut local.services, vec![]);
    load(&mut local.slices, vec![]);
    load(&mut local.nodes, vec![]);
    load(&mut local.policies, vec![]);
    assert!(!index.local_synced());
    index.clusters[0].rules.set_absent();
    assert!(index.local_synced(), "an absent kind counts as listed");
    // Without its Node, this node keeps the file's locality.
    let node = index.node(&file().node);
    assert_eq!(
        (node.name.as_str(), node.region.as_str()),
        ("hz-node-1", "cn-hangzhou")
    );
}

/// An IPv6 address in an IPv4 EndpointSlice is skipped (as an address that does not parse),
/// never put among an IPv4 service's endpoints, where validation would refuse the whole
/// desired state.
#[test]
fn an_ipv6_address_in_an_ipv4_slice_is_skipped() {
    let mut index = index();
    load(
        &mut index.clusters[0].services,
        vec![service("reviews", "172.16.0.10")],
    );
    load(
        &mut index.clusters[0].slices,
        vec![slice(
            "reviews",
            "reviews-0",
            9080,
            &[
                ("10.0.0.11", "hz-node-1", true),
                ("2001:db8::11", "hz-node-1", true),
            ],
        )],
    );
    assert_eq!(
        endpoints(&desired(&index)),
        ["10.0.0.11@ack-hangzhou/cn-hangzhou/cn-hangzhou-b"]
    );
}

/// A slice of `family` for Service `multi` with endpoints (address, pod).
fn family_slice(name: &str, family: &str, endpoints: &[(&str, &str)]) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(address, pod)| {
            json!({
                "addresses": [address],
                "targetRef": {"kind": "Pod", "namespace": "default", "name": pod},
            })
        })
        .collect();
    from_json(json!({
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "multi"}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

fn multi(cluster_ips: &[&str]) -> K8sService {
    from_json(json!({
        "metadata": {"name": "multi", "namespace": "default"},
        "spec": {
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ports": [{"name": "http", "port": 80, "targetPort": "web"}],
        },
    }))
}

/// An IPv6-only Service: its IPv6 cluster IP and the endpoints of its IPv6 slices.
#[test]
fn an_ipv6_only_service_takes_its_ipv6_slices() {
    let mut index = index();
    load(&mut index.clusters[0].services, vec![multi(&["fd00::10"])]);
    load(
        &mut index.clusters[0].slices,
        vec![
            family_slice(
                "multi-6",
                "IPv6",
                &[("fd00:1::41", "a"), ("fd00:1::42", "b")],
            ),
            family_slice("multi-4", "IPv4", &[("10.0.0.41", "a")]),
        ],
    );
    let desired = desired(&index);
    let service = &desired.config.services[0];
    assert_eq!(
        (service.vip, service.vip6),
        ("fd00::10".parse().unwrap(), None)
    );
    let ips: Vec<String> = service.endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["fd00:1::41", "fd00:1::42"]);
}

/// A dual-stack Service is one service: the IPv4 slices' endpoints, each with the IPv6 address
/// its pod has in the IPv6 slices (none for a pod without one); a pod in the IPv6 slices only
/// is left out (an endpoint of a dual-stack service has an IPv4 address).
#[test]
fn a_dual_stack_service_pairs_each_pods_addresses() {
    let mut index = index();
    load(
        &mut index.clusters[0].services,
        vec![multi(&["172.16.0.20", "fd00::10"])],
    );
    load(
        &mut index.clusters[0].slices,
        vec![
            family_slice("multi-4", "IPv4", &[("10.0.0.41", "a"), ("10.0.0.42", "b")]),
            family_slice(
                "multi-6",
                "IPv6",
                &[("fd00:1::41", "a"), ("fd00:1::43", "c")],
            ),
        ],
    );
    let desired = desired(&index);
    let service = &desired.config.services[0];
    assert_eq!(
        (service.vip, service.vip6),
        (
            "172.16.0.20".parse().unwrap(),
            Some("fd00::10".parse().unwrap())
        )
    );
    let pairs: Vec<(String, Option<String>)> = service
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.ip6.map(|ip| ip.to_string())))
        .collect();
    assert_eq!(
        pairs,
        [
            ("10.0.0.41".to_string(), Some("fd00:1::41".to_string())),
            ("10.0.0.42".to_string(), None),
        ]
    );
}
