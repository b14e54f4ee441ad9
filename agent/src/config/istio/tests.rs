use std::time::Duration;

use super::*;
use crate::config::OutlierDetection;

fn rule(namespace: &str, host: &str) -> LoadedDestinationRule {
    LoadedDestinationRule {
        file: "dr.yaml".into(),
        document: 1,
        name: "r".into(),
        namespace: namespace.into(),
        host: host.into(),
        traffic_policy: None,
        ignored: Vec::new(),
    }
}

fn service(namespace: &str, name: &str) -> Service {
    let yaml = format!("{{name: {name}, namespace: {namespace}, vip: 10.96.0.1}}");
    serde_yaml_ng::from_str(&yaml).unwrap()
}

#[test]
fn host_binding() {
    // (rule namespace, host, service namespace, selects)
    let cases = [
        ("default", "reviews", "default", true),
        ("prod", "reviews", "default", false),
        ("prod", "reviews.default", "default", true),
        ("prod", "reviews.default.svc", "default", true),
        ("prod", "reviews.default.svc.cluster.local", "default", true),
        (
            "default",
            "reviews.prod.svc.cluster.local",
            "default",
            false,
        ),
        ("default", "reviews.default.svc.cluster", "default", false),
        (
            "default",
            "reviews.default.svc.cluster.local.",
            "default",
            false,
        ),
        ("default", "reviewsx", "default", false),
        ("default", "reviews.defaultx", "default", false),
        ("default", "*.default.svc.cluster.local", "default", false),
        ("default", "*", "default", false),
    ];
    for (rule_namespace, host, service_namespace, expected) in cases {
        assert_eq!(
            rule(rule_namespace, host).selects(&service(service_namespace, "reviews")),
            expected,
            "{host} from {rule_namespace}"
        );
    }
}

#[test]
fn reads_destination_rules_and_skips_other_kinds() {
    let yaml = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: bookinfo}
spec: {hosts: ["*"], http: [{route: [{destination: {host: productpage}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: prod, labels: {app: reviews}}
spec:
  host: reviews
  exportTo: "."
  workloadSelector: {matchLabels: {app: productpage}}
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}, trafficPolicy: {connectionPool: {}}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings}
spec: {host: ratings, subsetz: []}
status: {}
---
"#;
    let rules = parse_destination_rules("dr.yaml", yaml).unwrap();
    assert_eq!(
        rules,
        [
            LoadedDestinationRule {
                file: "dr.yaml".into(),
                document: 2,
                name: "reviews".into(),
                namespace: "prod".into(),
                host: "reviews".into(),
                traffic_policy: Some(TrafficPolicy {
                    outlier_detection: Some(OutlierDetection {
                        consecutive_5xx_errors: 2,
                        ..OutlierDetection::default()
                    }),
                    ..TrafficPolicy::default()
                }),
                ignored: vec!["workloadSelector".into(), "subsets[1].trafficPolicy".into()],
            },
            LoadedDestinationRule {
                file: "dr.yaml".into(),
                document: 3,
                name: "ratings".into(),
                namespace: "default".into(),
                host: "ratings".into(),
                traffic_policy: None,
                ignored: vec!["subsetz".into()],
            },
        ]
    );
    assert_eq!(
        ignored_spec_field_message("subsets[1].trafficPolicy"),
        "accepted but not acted on (geosteer has no subsets)"
    );
    assert_eq!(
        ignored_spec_field_message("subsetz"),
        "not a DestinationRule spec field; ignored"
    );
}

#[test]
fn parse_errors_name_the_file_and_document() {
    // (case, yaml, expected message start, text it must also contain)
    let cases = [
        (
            "unknown apiVersion",
            "kind: Gateway\n---\napiVersion: networking.istio.io/v2\nkind: DestinationRule\n",
            "dr.yaml: document 2: DestinationRule has apiVersion \
                 \"networking.istio.io/v2\"; expected one of networking.istio.io/v1alpha3, \
                 networking.istio.io/v1beta1, networking.istio.io/v1",
            "",
        ),
        (
            "negative percentage",
            "kind: Gateway\n---\napiVersion: networking.istio.io/v1\n\
                 kind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  \
                 trafficPolicy:\n    outlierDetection: {maxEjectionPercent: -1}\n",
            "dr.yaml: document 2: \
                 spec.trafficPolicy.outlierDetection.maxEjectionPercent: ",
            "line 9",
        ),
        (
            "bad duration",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 spec: {trafficPolicy: {outlierDetection: {interval: 1 second}}}\n",
            "dr.yaml: document 1: spec.trafficPolicy.outlierDetection.interval: ",
            "invalid value \"1 second\"",
        ),
        (
            "duplicate key",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 spec: {trafficPolicy: {tls: {}, tls: {}}}\n",
            "dr.yaml: document 1: spec.trafficPolicy",
            "duplicate",
        ),
        (
            "duplicate spec key",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                 spec: {workloadSelector: {}, workloadSelector: {}}\n",
            "dr.yaml: document 1: spec",
            "duplicate field `workloadSelector`",
        ),
        (
            "spec not a map",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nspec: x\n",
            "dr.yaml: document 1: spec",
            "a DestinationRule spec map",
        ),
        ("not yaml", "kind: [", "dr.yaml: document 1: ", "line 1"),
    ];
    for (case, yaml, start, contained) in cases {
        let message = match parse_destination_rules("dr.yaml", yaml) {
            Err(ConfigError::Parse { message }) => message,
            other => panic!("{case}: expected a parse error, got {other:?}"),
        };
        assert!(message.starts_with(start), "{case}: {message:?}");
        assert!(message.contains(contained), "{case}: {message:?}");
    }
}

#[test]
fn reads_the_seeds_asm_yaml() {
    let yaml = include_str!("../../../testdata/asm.yaml");
    let rules = parse_destination_rules("asm.yaml", yaml).unwrap();
    let names: Vec<(&str, &str, &str)> = rules
        .iter()
        .map(|r| (r.namespace.as_str(), r.name.as_str(), r.host.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("default", "productpage", "productpage"),
            ("default", "reviews", "reviews"),
            ("default", "ratings", "ratings"),
            ("default", "details", "details"),
        ]
    );
    let reviews = rules[1].traffic_policy.as_ref().unwrap();
    assert_eq!(
        reviews.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: 1,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(60),
            ..OutlierDetection::default()
        })
    );
    assert_eq!(reviews.ignored, ["connectionPool.http"]);
    assert!(rules.iter().all(|r| r.ignored.is_empty()));
}
