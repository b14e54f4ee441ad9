//! geosteer's own custom resource, `TrafficPolicy` (geosteer.io/v1alpha1): the config file's
//! per-service `trafficPolicy`, `clusterWeights`, `healthCheck` and `resetOnEject`, attached to a
//! Service in the same namespace.
//!
//! The spec types here exist for the CRD schema (`cargo xtask crdgen` writes it to
//! `deploy/crds/`); the agent reads a spec by converting it into the config file's types, so the
//! two are parsed and validated by the same code.

use std::collections::BTreeMap;

use ::kube::{CustomResource, CustomResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{self, Service};

/// A Go-style duration as Istio writes them (`10s`, `1m`, `100ms`, `1h30m`).
const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

/// Steering policy for one Service: what the config file sets under `services[]`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "geosteer.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "TrafficPolicyStatus",
    shortname = "gstp",
    category = "geosteer",
    doc = "Steering policy (Istio trafficPolicy, ALB-style cluster weights, active health \
           checks) for the Service named by targetRef, in the same namespace.",
    printcolumn = r#"{"name": "Target", "type": "string", "jsonPath": ".spec.targetRef.name"}"#,
    printcolumn = r#"{"name": "Accepted", "type": "string",
                      "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string",
                      "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service this policy applies to (same namespace).
    pub target_ref: TargetRef,
    /// Istio DestinationRule `trafficPolicy` (the parts geosteer acts on). Takes precedence
    /// over a DestinationRule that selects the same Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<PolicySpec>,
    /// Share of new connections per cluster id (0-100 each); clusters not listed get none.
    /// Takes precedence over the Service's cluster-weight annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_weights: Option<BTreeMap<String, u32>>,
    /// Active probes sent by every agent to every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Reset the flows pinned to a backend when it is ejected (older spelling of
    /// `onEject: reset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_on_eject: Option<bool>,
    /// What happens to the open flows of a backend that leaves rotation: drain (HTTP/1.x flows
    /// end at their next request), reset or keep. Unset: drain HTTP/1.x, reset the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_eject: Option<config::OnEject>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub kind: TargetKind,
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TargetKind {
    #[default]
    Service,
}

/// `trafficPolicy`, as in an Istio DestinationRule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSettingSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLbSettingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Clients in region `from` fail over to region `to` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<FailoverSpec>,
    /// Label keys (or `key=value`), most significant first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Clients in locality `from` send `to[locality]` percent of their load to each locality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<DistributeSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct FailoverSpec {
    pub from: String,
    pub to: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DistributeSpec {
    /// `region[/zone[/subzone]]`; the last segment may be `*`.
    pub from: String,
    /// Locality pattern → percent (1-100).
    pub to: BTreeMap<String, u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    #[serde(
        rename = "consecutive5xxErrors",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub base_ejection_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub min_health_percent: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    #[serde(rename = "type", default)]
    pub kind: HealthCheckType,
    /// Request path of http checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Default: the Service's first target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// `GET path`; any 2xx or 3xx status passes.
    #[default]
    Http,
    /// A completed TCP handshake passes.
    Tcp,
}

/// What the agents decided about a TrafficPolicy. Every agent computes the same answer from
/// the same objects; only one that sees a different status writes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One condition, `Accepted`: `True`, or `False` with the reason and the errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PolicyCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    /// Always `Accepted`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`.
    pub status: String,
    /// `Accepted`, `Invalid`, `TargetNotFound` or `Conflicted`.
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The name of the only condition.
pub const ACCEPTED: &str = "Accepted";

/// The CRD manifest, as checked in under `deploy/crds/` (`cargo xtask crdgen`).
pub fn crd_yaml() -> String {
    let crd = TrafficPolicy::crd();
    let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD serializes to YAML");
    format!("# Generated from agent/src/kube/crd.rs by `cargo xtask crdgen`; do not edit.\n{yaml}")
}

/// The parts of a Service that a TrafficPolicy sets, in the config file's types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServicePolicy {
    pub traffic_policy: Option<config::TrafficPolicy>,
    pub cluster_weights: Option<BTreeMap<String, u32>>,
    pub health_check: Option<config::HealthCheck>,
    pub reset_on_eject: bool,
    pub on_eject: Option<config::OnEject>,
}

impl TrafficPolicySpec {
    /// Reads the spec with the config file's parser. The error names the field below `spec`
    /// and the value, e.g. `spec.healthCheck.interval: invalid value "5 s": ...`.
    pub fn to_service_policy(&self) -> Result<ServicePolicy, String> {
        fn convert<T: serde::de::DeserializeOwned>(
            at: &str,
            value: &impl Serialize,
        ) -> Result<T, String> {
            let json = serde_json::to_value(value).map_err(|e| format!("{at}: {e}"))?;
            serde_path_to_error::deserialize(json).map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    format!("{at}: {}", e.inner())
                } else {
                    format!("{at}.{path}: {}", e.inner())
                }
            })
        }
        Ok(ServicePolicy {
            traffic_policy: self
                .traffic_policy
                .as_ref()
                .map(|p| convert("spec.trafficPolicy", p))
                .transpose()?,
            cluster_weights: self.cluster_weights.clone(),
            health_check: self
                .health_check
                .as_ref()
                .map(|h| convert("spec.healthCheck", h))
                .transpose()?,
            reset_on_eject: self.reset_on_eject.unwrap_or(false),
            on_eject: self.on_eject,
        })
    }
}

impl ServicePolicy {
    /// Sets these fields on `service`.
    pub fn apply_to(&self, service: &mut Service) {
        service.traffic_policy = self.traffic_policy.clone();
        if self.cluster_weights.is_some() {
            service.cluster_weights = self.cluster_weights.clone();
        }
        service.health_check = self.health_check.clone();
        service.reset_on_eject = self.reset_on_eject;
        service.on_eject = self.on_eject;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{
        DistributeRule, FailoverRule, HealthCheck, HealthCheckKind, LoadBalancer,
        LocalityLbSetting, OutlierDetection,
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
                connection_pool: None,
                ignored: vec![],
            }),
            cluster_weights: Some(
                [("ack-hangzhou".into(), 20), ("ack-shanghai".into(), 80)].into(),
            ),
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
            DURATION_PATTERN
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
}
