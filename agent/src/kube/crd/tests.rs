use std::time::Duration;

use super::*;
use crate::config::{
    ConnectionPool, DistributeRule, FailoverRule, HealthCheck, HealthCheckKind, LoadBalancer,
    LocalityLbSetting, OutlierDetection, TcpSettings,
};

/// Every field of a TrafficPolicy spec, as a user writes it.
const FULL_SPEC: &str = r#"
targetRef: {kind: Service, name: reviews}
trafficPolicy:
  loadBalancer:
    localityLbSetting:
      enabled: true
      failover: [{from: cn-hangzhou, to: cn-shanghai}]
      failoverPriority: [topology.kubernetes.io/region]
      distribute: [{from: "cn-hangzhou/*", to: {"cn-hangzhou/*": 90, "cn-shanghai/*": 10}}]
  outlierDetection:
    consecutive5xxErrors: 1
    consecutiveGatewayErrors: 2
    interval: 1s
    baseEjectionTime: 1m
    maxEjectionPercent: 100
    minHealthPercent: 50
  connectionPool: {tcp: {connectTimeout: 2s}}
clusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}
healthCheck:
  type: tcp
  path: /healthz
  port: 9080
  interval: 2s
  timeout: 500ms
  healthyThreshold: 1
  unhealthyThreshold: 2
resetOnEject: true
"#;

#[test]
fn every_spec_field_reaches_the_config_types() {
    let spec: TrafficPolicySpec = serde_yaml_ng::from_str(FULL_SPEC).unwrap();
    let policy = spec.to_service_policy().unwrap();
    let expected = ServicePolicy {
        traffic_policy: Some(config::TrafficPolicy {
            load_balancer: Some(LoadBalancer {
                locality_lb_setting: Some(LocalityLbSetting {
                    enabled: Some(true),
                    failover: vec![FailoverRule {
                        from: "cn-hangzhou".into(),
                        to: "cn-shanghai".into(),
                    }],
                    failover_priority: vec!["topology.kubernetes.io/region".into()],
                    distribute: vec![DistributeRule {
                        from: "cn-hangzhou/*".into(),
                        to: [("cn-hangzhou/*".into(), 90), ("cn-shanghai/*".into(), 10)].into(),
                    }],
                }),
            }),
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx_errors: 1,
                consecutive_gateway_errors: 2,
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(60),
                max_ejection_percent: 100,
                min_health_percent: 50,
            }),
            connection_pool: Some(ConnectionPool {
                tcp: Some(TcpSettings {
                    connect_timeout: Some(Duration::from_secs(2)),
                }),
            }),
            ignored: vec![],
        }),
        cluster_weights: Some([("ack-hangzhou".into(), 20), ("ack-shanghai".into(), 80)].into()),
        health_check: Some(HealthCheck {
            kind: HealthCheckKind::Tcp,
            path: "/healthz".into(),
            port: Some(9080),
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }),
        reset_on_eject: true,
        on_eject: None,
    };
    assert_eq!(policy, expected);
}

#[test]
fn config_policy_round_trips_through_the_spec() {
    // The config file's serialized policy reads as a spec, and back: the CRD can express
    // everything the file can.
    let spec: TrafficPolicySpec = serde_yaml_ng::from_str(FULL_SPEC).unwrap();
    let policy = spec.to_service_policy().unwrap();
    let file_json = serde_json::json!({
        "targetRef": {"name": "reviews"},
        "trafficPolicy": policy.traffic_policy,
        "clusterWeights": policy.cluster_weights,
        "healthCheck": policy.health_check,
        "resetOnEject": true,
    });
    let again: TrafficPolicySpec = serde_json::from_value(file_json).unwrap();
    assert_eq!(again.to_service_policy().unwrap(), policy);
}

#[test]
fn absent_fields_take_the_file_defaults() {
    let spec: TrafficPolicySpec = serde_yaml_ng::from_str(
        "targetRef: {name: reviews}\n\
             trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}\n\
             healthCheck: {}\n",
    )
    .unwrap();
    assert_eq!(spec.target_ref.kind, TargetKind::Service);
    let policy = spec.to_service_policy().unwrap();
    assert_eq!(
        policy.traffic_policy.unwrap().outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: 3,
            ..OutlierDetection::default()
        })
    );
    assert_eq!(policy.health_check, Some(HealthCheck::default()));
    assert!(!policy.reset_on_eject);
}

#[test]
fn conversion_errors_name_the_field_and_value() {
    // (case, spec yaml, expected message start, text it must contain)
    let cases = [
        (
            "bad duration",
            "healthCheck: {interval: 5 s}",
            "spec.healthCheck.interval: ",
            "invalid value \"5 s\"",
        ),
        (
            "bad outlier interval",
            "trafficPolicy: {outlierDetection: {interval: soon}}",
            "spec.trafficPolicy.outlierDetection.interval: ",
            "invalid value \"soon\"",
        ),
    ];
    for (case, body, start, contained) in cases {
        let spec: TrafficPolicySpec =
            serde_yaml_ng::from_str(&format!("targetRef: {{name: r}}\n{body}")).unwrap();
        let message = spec.to_service_policy().unwrap_err();
        assert!(message.starts_with(start), "{case}: {message}");
        assert!(message.contains(contained), "{case}: {message}");
    }
}

#[test]
fn the_crd_describes_the_resource() {
    let crd: serde_json::Value = serde_yaml_ng::from_str(&crd_yaml()).expect("the CRD is YAML");
    assert_eq!(crd["metadata"]["name"], "trafficpolicies.geosteer.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["targetRef"]));
    let outlier = &spec["properties"]["trafficPolicy"]["properties"]["outlierDetection"];
    assert_eq!(
        outlier["properties"]["interval"]["pattern"],
        config::DURATION_PATTERN
    );
}

#[test]
fn the_schema_is_what_the_api_server_expects() {
    let crd: serde_json::Value = serde_yaml_ng::from_str(&crd_yaml()).unwrap();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let text = root.to_string();
    assert!(
        !text.contains("\"uint"),
        "unsigned formats make the API server warn"
    );
    let spec = &root["properties"]["spec"]["properties"];
    assert_eq!(
        spec["clusterWeights"]["additionalProperties"]["maximum"].as_f64(),
        Some(100.0)
    );
    assert_eq!(spec["healthCheck"]["properties"]["port"]["format"], "int32");
    let conditions = &root["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let locality =
        &spec["trafficPolicy"]["properties"]["loadBalancer"]["properties"]["localityLbSetting"];
    let rule = locality["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .unwrap();
    assert!(rule.contains("self.distribute") && rule.contains("self.failoverPriority"));
}

#[test]
fn the_status_judges_the_object_alone_and_keeps_its_transition_time() {
    let mut policy: TrafficPolicy = serde_yaml_ng::from_str(
            "apiVersion: geosteer.io/v1alpha1\nkind: TrafficPolicy\n\
             metadata: {name: p, namespace: default, generation: 4}\n\
             spec:\n  targetRef: {name: reviews}\n  \
               trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: mars, to: venus}]}}}\n  \
               clusterWeights: {east: 0}\n  healthCheck: {interval: 1s, timeout: 5s}\n",
        )
        .unwrap();
    let earlier = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let status = policy.wanted_status(earlier);
    let condition = &status.conditions[0];
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Invalid")
    );
    // Unknown regions are each node's to judge; the rest is the object's.
    assert_eq!(
        condition.message,
        "spec.clusterWeights: at least one cluster needs a weight above 0; \
             spec.healthCheck.timeout: 5s is longer than the interval 1s"
    );
    assert_eq!(status.observed_generation, Some(4));
    assert!(!policy.status_is_current());
    policy.status = Some(status.clone());
    assert!(policy.status_is_current());
    // The same verdict later keeps the transition time: every node writes the same object.
    let later = earlier + Duration::from_secs(60);
    assert_eq!(policy.wanted_status(later), status);
    policy.metadata.generation = Some(5);
    assert!(
        !policy.status_is_current(),
        "a new generation is judged again"
    );
}

/// The CRD under deploy/ is what the types generate. `GEOSTEER_UPDATE_CRD=1` rewrites it
/// instead (that is what `cargo xtask crdgen` runs).
#[test]
fn checked_in_crd_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/crds/trafficpolicies.geosteer.io.yaml");
    let generated = crd_yaml();
    if std::env::var_os("GEOSTEER_UPDATE_CRD").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date: run `cargo xtask crdgen`",
        path.display()
    );
}
