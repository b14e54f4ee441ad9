//! geosteer's own custom resource, `TrafficPolicy` (geosteer.io/v1alpha1): the config file's
//! per-service `trafficPolicy`, `clusterWeights`, `healthCheck` and `resetOnEject`, attached to a
//! Service in the same namespace.
//!
//! The policy parts of the spec are the config file's own types: the CRD schema is derived from
//! them (`cargo xtask crdgen` writes it to `deploy/crds/`), and the agent reads them with the
//! file's parser and validation. The object keeps them as JSON until then, so that a spec the
//! agent cannot read still arrives, and its status can say why.

use std::collections::BTreeMap;

use ::kube::{CustomResource, CustomResourceExt as _};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{self, MAX_CLUSTER_WEIGHT, Service};

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
    #[schemars(with = "Option<config::TrafficPolicy>")]
    pub traffic_policy: Option<serde_json::Value>,
    /// Share of new connections per cluster id (0-100 each); clusters not listed get none.
    /// Takes precedence over the Service's cluster-weight annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_weights: Option<BTreeMap<String, u32>>,
    /// Active probes sent by every agent to every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<config::HealthCheck>")]
    pub health_check: Option<serde_json::Value>,
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

/// Whether the spec is valid, judged from the object alone, so that every agent computes the
/// same status (written by server-side apply under one field manager, only when it differs).
/// Whether a node applies the policy (its target exists, it names known regions, no older
/// policy claims the Service) is that node's fact: `geosteer status`, metrics and Events.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One condition, `Accepted`: `True`, or `False` (reason `Invalid`) with the errors.
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
    /// `Accepted` or `Invalid`.
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

/// The CRD, with what the API server expects of a structural schema beyond what the types
/// derive: no defaults (see [`without_defaults`]), `from` and `to` required in locality rules,
/// integer formats it knows (`int32`/`int64`; schemars' `uint32` makes `kubectl apply`
/// warn), 0-100 bounds on weight maps, `conditions` as a list map keyed by `type` (so
/// server-side apply merges conditions by type), and the failover/distribute exclusion as a
/// CEL rule, so that the API server refuses such an object before any agent sees it.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = TrafficPolicy::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let mut json = serde_json::to_value(&*schema).expect("a schema serializes");
        known_integer_formats(&mut json);
        without_defaults(&mut json);
        let spec = &mut json["properties"]["spec"]["properties"];
        spec["clusterWeights"]["additionalProperties"]["maximum"] = json!(MAX_CLUSTER_WEIGHT);
        let locality = &mut spec["trafficPolicy"]["properties"]["loadBalancer"]["properties"]["localityLbSetting"];
        locality["properties"]["distribute"]["items"]["properties"]["to"]["additionalProperties"]
            ["maximum"] = json!(100);
        // The file reads a missing `from` or `to` as empty and validation names it; the API
        // server can refuse it before.
        for rules in ["failover", "distribute"] {
            locality["properties"][rules]["items"]["required"] = json!(["from", "to"]);
        }
        locality["x-kubernetes-validations"] = json!([{
            "rule": "!(has(self.distribute) && size(self.distribute) > 0 && \
                     ((has(self.failover) && size(self.failover) > 0) || \
                      (has(self.failoverPriority) && size(self.failoverPriority) > 0)))",
            "message": "failover (or failoverPriority) and distribute are mutually exclusive; keep one",
        }]);
        let conditions = &mut json["properties"]["status"]["properties"]["conditions"];
        conditions["x-kubernetes-list-type"] = json!("map");
        conditions["x-kubernetes-list-map-keys"] = json!(["type"]);
        *schema = serde_json::from_value(json).expect("the fixed schema is a schema");
    }
    crd
}

/// Removes the `default`s schemars derives from the types' `Default`: the API server would
/// write them into every stored object, while the agent applies the same defaults to a
/// TrafficPolicy as to the file and to an Istio DestinationRule (which has none in its schema).
fn without_defaults(schema: &mut serde_json::Value) {
    let serde_json::Value::Object(map) = schema else {
        return;
    };
    map.remove("default");
    for (key, value) in map.iter_mut() {
        match (key.as_str(), value) {
            // Names of fields, each mapped to its schema.
            ("properties", serde_json::Value::Object(fields)) => {
                fields.values_mut().for_each(without_defaults)
            }
            (_, serde_json::Value::Array(items)) => items.iter_mut().for_each(without_defaults),
            (_, value) => without_defaults(value),
        }
    }
}

/// Rewrites schemars' unsigned formats to the ones Kubernetes knows.
fn known_integer_formats(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            if let Some(format) = map.get_mut("format") {
                match format.as_str() {
                    Some("uint8" | "uint16") => *format = json!("int32"),
                    Some("uint32" | "uint64" | "uint") => *format = json!("int64"),
                    _ => {}
                }
            }
            map.values_mut().for_each(known_integer_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(known_integer_formats),
        _ => {}
    }
}

/// The CRD manifest, as checked in under `deploy/crds/` (`cargo xtask crdgen`).
pub fn crd_yaml() -> String {
    let crd = crd();
    let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD serializes to YAML");
    format!("# Generated from agent/src/kube/crd.rs by `cargo xtask crdgen`; do not edit.\n{yaml}")
}

/// The parts of a Service that a TrafficPolicy sets, in the config file's types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
        fn convert<'a, T: Deserialize<'a>>(
            at: &str,
            value: &'a serde_json::Value,
        ) -> Result<T, String> {
            serde_path_to_error::deserialize(value).map_err(|e| {
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

impl TrafficPolicySpec {
    /// Reads and checks the spec on its own: what the object's status says, the same on every
    /// node. What needs the cluster's state (the target, region and cluster names, conflicts)
    /// is each node's to judge and report (`geosteer status`, Events), never the status.
    pub fn validate(&self) -> Result<ServicePolicy, String> {
        let policy = self.to_service_policy()?;
        let errors = config::validate_policy_parts(
            policy.traffic_policy.as_ref(),
            policy.cluster_weights.as_ref(),
            policy.health_check.as_ref(),
        );
        if errors.is_empty() {
            return Ok(policy);
        }
        let errors: Vec<String> = errors
            .iter()
            .map(|e| format!("spec.{}: {}", e.path, e.message))
            .collect();
        Err(errors.join("; "))
    }
}

impl TrafficPolicy {
    /// The status this object's spec asks for: `Accepted` from [`TrafficPolicySpec::validate`]
    /// and the generation it judged. The transition time is kept unless `status` flips, so
    /// every writer computes the same object.
    pub fn wanted_status(&self, now: std::time::SystemTime) -> TrafficPolicyStatus {
        let generation = self.metadata.generation;
        let (status, reason, message) = match self.spec.validate() {
            Ok(_) => ("True", "Accepted", String::new()),
            Err(message) => ("False", "Invalid", message),
        };
        let previous = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.kind == ACCEPTED));
        let last_transition_time = match previous {
            Some(previous) if previous.status == status => previous.last_transition_time.clone(),
            _ => Some(super::snapshot::rfc3339(now)),
        };
        TrafficPolicyStatus {
            observed_generation: generation,
            conditions: vec![PolicyCondition {
                kind: ACCEPTED.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                observed_generation: generation,
                last_transition_time,
            }],
        }
    }

    /// Whether the status already says what [`TrafficPolicy::wanted_status`] would: the
    /// generation judged and the `Accepted` condition (another writer's conditions or fields are
    /// not ours to compare, or every node would rewrite forever).
    pub fn status_is_current(&self) -> bool {
        // The transition time is taken from the current status unless the status flips.
        let wanted = self.wanted_status(std::time::SystemTime::UNIX_EPOCH);
        let ours = |status: &TrafficPolicyStatus| {
            (
                status.observed_generation,
                status
                    .conditions
                    .iter()
                    .find(|c| c.kind == ACCEPTED)
                    .cloned(),
            )
        };
        self.status
            .as_ref()
            .is_some_and(|current| ours(current) == ours(&wanted))
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
mod tests;
