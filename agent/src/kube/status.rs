//! What the Kubernetes source reports about itself: per-cluster connectivity and staleness, and
//! where the desired state came from. Serializable, to ride along in the agent's state on the
//! admin socket; [`SourceStatus::describe`] is for `geosteer status`, [`SourceStatus::metrics`]
//! for `/metrics`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Where the last desired state sent to the agent came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Nothing sent yet: waiting for this cluster's API server.
    #[default]
    Waiting,
    /// No API server answered at boot: the snapshot on the node's disk.
    Snapshot,
    /// No API server answered at boot and there is no snapshot: the config file alone.
    File,
    /// This cluster's API server (and the remote clusters').
    Cluster,
}

impl Origin {
    pub const ALL: [Origin; 4] = [
        Origin::Waiting,
        Origin::Snapshot,
        Origin::File,
        Origin::Cluster,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Origin::Waiting => "waiting",
            Origin::Snapshot => "snapshot",
            Origin::File => "file",
            Origin::Cluster => "cluster",
        }
    }
}

/// The field names are an interface (the CLI of another version may read them): only add.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub origin: Origin,
    /// When the last desired state was sent (RFC 3339).
    #[serde(default)]
    pub last_change: Option<String>,
    /// `clusters[0]` is this cluster.
    #[serde(default)]
    pub clusters: Vec<ClusterStatus>,
    #[serde(default)]
    pub policies_accepted: usize,
    #[serde(default)]
    pub policies_rejected: usize,
    /// Each TrafficPolicy this node does not apply, and why: node facts (target missing,
    /// conflict, unknown region) that the object's status, the same for every node, leaves out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies_not_in_effect: Vec<PolicyReport>,
}

/// Why this node does not apply a TrafficPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub namespace: String,
    pub name: String,
    /// `Invalid`, `TargetNotFound` or `Conflicted`.
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    /// Whether the API server answered the last probe.
    pub connected: bool,
    /// When the API server last answered (RFC 3339; from the snapshot before the first answer).
    #[serde(default)]
    pub last_contact: Option<String>,
    /// How old its state is: 0 while it answers; since the last answer (or since the agent
    /// started, if it never answered) while it does not.
    #[serde(default)]
    pub stale_seconds: u64,
    /// Whether its EndpointSlices have been listed since the agent started.
    #[serde(default)]
    pub synced: bool,
    /// Unreachable for longer than `staleTtl`: its endpoints are left out.
    #[serde(default)]
    pub expired: bool,
    /// Its endpoints in the desired state.
    #[serde(default)]
    pub endpoints: usize,
    /// What fails now: the probe, or a watch (e.g. `EndpointSlices: ... 403 Forbidden`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl SourceStatus {
    /// Lines for `geosteer status`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "desired state: {}{}; TrafficPolicies: {} in effect, {} not in effect on this node",
            match self.origin {
                Origin::Waiting => "waiting for this cluster's API server",
                Origin::Snapshot => "from the snapshot (no API server answered at boot)",
                Origin::File => "from the config file only (no API server, no snapshot)",
                Origin::Cluster => "from Kubernetes",
            },
            self.last_change
                .as_ref()
                .map(|at| format!(", last change {at}"))
                .unwrap_or_default(),
            self.policies_accepted,
            self.policies_rejected
        )];
        for policy in &self.policies_not_in_effect {
            lines.push(format!(
                "TrafficPolicy {}/{} not in effect on this node ({}): {}",
                policy.namespace, policy.name, policy.reason, policy.message
            ));
        }
        for (i, cluster) in self.clusters.iter().enumerate() {
            let role = if i == 0 { "this cluster" } else { "remote" };
            let state = if cluster.connected {
                "connected".to_string()
            } else {
                let since = cluster
                    .last_contact
                    .as_ref()
                    .map(|at| format!("last answer {at}"))
                    .unwrap_or_else(|| "never answered".to_string());
                format!(
                    "UNREACHABLE, stale for {}s ({since})",
                    cluster.stale_seconds
                )
            };
            let endpoints = if cluster.expired {
                "endpoints dropped (staleTtl)".to_string()
            } else {
                format!("{} endpoints", cluster.endpoints)
            };
            let listed = if cluster.synced {
                ""
            } else {
                ", not listed yet"
            };
            lines.push(format!(
                "cluster {} ({role}): {state}, {endpoints}{listed}",
                cluster.name
            ));
            for error in &cluster.errors {
                lines.push(format!("cluster {}: {error}", cluster.name));
            }
        }
        lines
    }

    /// Prometheus text exposition of the source's gauges (it can follow the agent's own).
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let per_cluster = |value: &dyn Fn(&ClusterStatus) -> f64| {
            self.clusters
                .iter()
                .map(|c| (format!("cluster=\"{}\"", c.name), value(c)))
                .collect::<Vec<_>>()
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        gauge(
            "geosteer_kube_cluster_connected",
            "Whether the cluster's API server answered the last probe.",
            per_cluster(&|c| flag(c.connected)),
        );
        gauge(
            "geosteer_kube_cluster_stale_seconds",
            "Age of the cluster's state while its API server does not answer (0 while it does).",
            per_cluster(&|c| c.stale_seconds as f64),
        );
        gauge(
            "geosteer_kube_cluster_expired",
            "Whether the cluster's endpoints are dropped because it has been stale past staleTtl.",
            per_cluster(&|c| flag(c.expired)),
        );
        gauge(
            "geosteer_kube_cluster_endpoints",
            "Endpoints from the cluster in the desired state.",
            per_cluster(&|c| c.endpoints as f64),
        );
        gauge(
            "geosteer_kube_desired_state_origin",
            "Where the desired state in use came from (1 for the current origin).",
            Origin::ALL
                .iter()
                .map(|o| (format!("origin=\"{}\"", o.name()), flag(*o == self.origin)))
                .collect(),
        );
        gauge(
            "geosteer_kube_traffic_policies",
            "TrafficPolicies of this cluster by whether this node applies them.",
            vec![
                ("accepted=\"true\"".into(), self.policies_accepted as f64),
                ("accepted=\"false\"".into(), self.policies_rejected as f64),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> SourceStatus {
        SourceStatus {
            origin: Origin::Cluster,
            last_change: Some("2026-05-28T20:25:40Z".into()),
            clusters: vec![
                ClusterStatus {
                    name: "ack-hangzhou".into(),
                    connected: true,
                    last_contact: Some("2026-05-28T20:26:40Z".into()),
                    stale_seconds: 0,
                    synced: true,
                    expired: false,
                    endpoints: 2,
                    errors: vec![],
                },
                ClusterStatus {
                    name: "ack-shanghai".into(),
                    connected: false,
                    last_contact: Some("2026-05-28T20:25:10Z".into()),
                    stale_seconds: 90,
                    synced: true,
                    expired: false,
                    endpoints: 1,
                    errors: vec!["API server: no answer within the probe timeout".into()],
                },
            ],
            policies_accepted: 1,
            policies_rejected: 1,
            policies_not_in_effect: vec![PolicyReport {
                namespace: "default".into(),
                name: "ratings".into(),
                reason: "TargetNotFound".into(),
                message: "Service default/ratings does not exist".into(),
            }],
        }
    }

    #[test]
    fn describes_staleness_for_people() {
        assert_eq!(
            status().describe(),
            [
                "desired state: from Kubernetes, last change 2026-05-28T20:25:40Z; \
                 TrafficPolicies: 1 in effect, 1 not in effect on this node",
                "TrafficPolicy default/ratings not in effect on this node (TargetNotFound): \
                 Service default/ratings does not exist",
                "cluster ack-hangzhou (this cluster): connected, 2 endpoints",
                "cluster ack-shanghai (remote): UNREACHABLE, stale for 90s (last answer \
                 2026-05-28T20:25:10Z), 1 endpoints",
                "cluster ack-shanghai: API server: no answer within the probe timeout",
            ]
        );
    }

    #[test]
    fn exports_staleness_as_metrics() {
        let text = status().metrics();
        for line in [
            "geosteer_kube_cluster_connected{cluster=\"ack-shanghai\"} 0",
            "geosteer_kube_cluster_stale_seconds{cluster=\"ack-hangzhou\"} 0",
            "geosteer_kube_cluster_stale_seconds{cluster=\"ack-shanghai\"} 90",
            "geosteer_kube_cluster_endpoints{cluster=\"ack-hangzhou\"} 2",
            "geosteer_kube_desired_state_origin{origin=\"cluster\"} 1",
            "geosteer_kube_desired_state_origin{origin=\"snapshot\"} 0",
            "# TYPE geosteer_kube_cluster_expired gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn round_trips_as_json() {
        let json = serde_json::to_value(status()).unwrap();
        assert_eq!(json["origin"], "cluster");
        assert_eq!(json["clusters"][1]["staleSeconds"], 90);
        let back: SourceStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status());
    }
}
