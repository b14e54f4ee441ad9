//! Desired state from Kubernetes: a DaemonSet driven by the cluster.
//!
//! The edge is thin: kube-rs watchers (`source.rs`) feed a pure in-memory [`index`], which turns
//! Services, EndpointSlices, Nodes, geosteer's TrafficPolicies ([`crd`]) and Istio
//! DestinationRules, from this cluster and remote ones, into the same [`Config`] the file
//! feeds. Each change is sent to the agent, which applies it like a reloaded file, and written
//! to a [`snapshot`] on the node, from which the agent boots when no API server answers.
//!
//! Entry points: [`run`] (or [`KubeSource`] for its status and file reloads), and
//! [`crd_yaml`] for `cargo xtask crdgen`.

pub mod cluster_local;
pub mod crd;
pub mod events;
pub mod index;
pub mod snapshot;
mod source;
pub mod status;

#[cfg(any(test, feature = "fake-api"))]
pub mod fake_api;
#[cfg(test)]
mod source_tests;

pub use crd::crd_yaml;
pub use source::{Connect, KubeSource, Options, STATUS_FIELD_MANAGER};
pub use status::{ClusterStatus, Origin, PolicyReport, SourceStatus};
use tokio::sync::mpsc;

use crate::config::Config;

/// Runs the Kubernetes source for `file_config` (whose `kubernetes` section must be enabled)
/// until `tx` is closed, sending a fresh [`Config`] whenever the desired state changes. See
/// [`KubeSource::run`] for when the first one comes.
pub async fn run(file_config: Config, tx: mpsc::Sender<Config>) -> anyhow::Result<()> {
    KubeSource::connect(file_config).await?.run(tx).await
}

#[cfg(test)]
mod tests {
    //! The `kubernetes` section of the config file.

    use std::{path::Path, time::Duration};

    use crate::config::{self, ConfigError, KubeSettings, RemoteCluster};

    const BASE: &str = "node: {name: n, region: cn-hangzhou, cluster: ack-hangzhou}\n";

    #[test]
    fn reads_the_section_with_defaults() {
        let config = config::parse(&format!("{BASE}kubernetes: {{}}\n")).unwrap();
        assert_eq!(config.kubernetes, Some(KubeSettings::default()));
        let settings = config.kubernetes.unwrap();
        assert!(settings.enabled);
        assert_eq!(settings.node_name_env, "NODE_NAME");
        assert_eq!(settings.stale_ttl, Duration::ZERO);
        assert_eq!(settings.startup_timeout, Duration::from_secs(10));
        assert_eq!(
            settings.snapshot_path,
            Path::new("/var/lib/geosteer/snapshot.yaml")
        );
        assert_eq!(config::parse(BASE).unwrap().kubernetes, None);

        let config = config::parse(&format!(
            "{BASE}kubernetes:\n  staleTtl: 5m\n  clusters:\n    \
             - {{name: ack-shanghai, kubeconfig: /etc/geosteer/clusters/sh, region: cn-shanghai}}\n    \
             - {{name: c9f0a, kubeconfigSecret: geosteer-remote-c9f0a, context: admin}}\n"
        ))
        .unwrap();
        let settings = config.kubernetes.as_ref().unwrap();
        assert_eq!(settings.stale_ttl, Duration::from_secs(300));
        assert_eq!(
            settings.clusters,
            [
                RemoteCluster {
                    name: "ack-shanghai".into(),
                    kubeconfig: Some("/etc/geosteer/clusters/sh".into()),
                    kubeconfig_secret: None,
                    context: None,
                    region: "cn-shanghai".into(),
                },
                RemoteCluster {
                    name: "c9f0a".into(),
                    kubeconfig: None,
                    kubeconfig_secret: Some("geosteer-remote-c9f0a".into()),
                    context: Some("admin".into()),
                    region: String::new(),
                },
            ]
        );
        let yaml = serde_yaml_ng::to_string(&config).unwrap();
        assert_eq!(config::parse(&yaml).unwrap(), config, "{yaml}");
    }

    #[test]
    fn a_remote_clusters_region_can_be_named_by_failover() {
        let yaml = format!(
            "{BASE}defaults:\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        \
             failover: [{{from: cn-hangzhou, to: cn-shanghai}}]\n\
             kubernetes:\n  clusters: [{{name: ack-shanghai, kubeconfig: /k, region: cn-shanghai}}]\n"
        );
        config::parse(&yaml).unwrap();
        let unknown = yaml.replace("region: cn-shanghai}", "}");
        assert!(config::parse(&unknown).is_err());
    }

    #[test]
    fn errors_name_the_field_and_value() {
        // (case, kubernetes section, node.cluster, path of the only error, text it contains)
        let cases = [
            (
                "relative snapshot path",
                "{snapshotPath: snap.yaml}",
                "ack-hangzhou",
                "kubernetes.snapshotPath",
                "\"snap.yaml\" is not an absolute path",
            ),
            (
                "empty node name variable",
                "{nodeNameEnv: \"\"}",
                "ack-hangzhou",
                "kubernetes.nodeNameEnv",
                "must not be empty",
            ),
            (
                "zero startup timeout",
                "{startupTimeout: 0s}",
                "ack-hangzhou",
                "kubernetes.startupTimeout",
                "0s is not a valid timeout",
            ),
            (
                "remote clusters need this cluster's id",
                "{clusters: [{name: b, kubeconfig: /k}]}",
                "",
                "node.cluster",
                "must be set when kubernetes.clusters lists remote clusters",
            ),
            (
                "bad cluster id",
                "{clusters: [{name: \"ack shanghai\", kubeconfig: /k}]}",
                "ack-hangzhou",
                "kubernetes.clusters[0].name",
                "\"ack shanghai\" is not a valid cluster id",
            ),
            (
                "this cluster again",
                "{clusters: [{name: ack-hangzhou, kubeconfig: /k}]}",
                "ack-hangzhou",
                "kubernetes.clusters[0].name",
                "\"ack-hangzhou\" is this cluster (node.cluster)",
            ),
            (
                "duplicate",
                "{clusters: [{name: b, kubeconfig: /k}, {name: b, kubeconfig: /l}]}",
                "ack-hangzhou",
                "kubernetes.clusters[1].name",
                "\"b\" is already used by kubernetes.clusters[0]",
            ),
            (
                "no kubeconfig",
                "{clusters: [{name: b}]}",
                "ack-hangzhou",
                "kubernetes.clusters[0]",
                "set exactly one of kubeconfig and kubeconfigSecret",
            ),
            (
                "both kubeconfigs",
                "{clusters: [{name: b, kubeconfig: /k, kubeconfigSecret: s}]}",
                "ack-hangzhou",
                "kubernetes.clusters[0]",
                "set exactly one of kubeconfig and kubeconfigSecret",
            ),
            (
                "relative kubeconfig",
                "{clusters: [{name: b, kubeconfig: k}]}",
                "ack-hangzhou",
                "kubernetes.clusters[0].kubeconfig",
                "\"k\" is not an absolute path",
            ),
            (
                "bad secret name",
                "{clusters: [{name: b, kubeconfigSecret: Remote_B}]}",
                "ack-hangzhou",
                "kubernetes.clusters[0].kubeconfigSecret",
                "\"Remote_B\" is not a valid DNS-1123 label",
            ),
        ];
        for (case, section, cluster, path, contained) in cases {
            let yaml = format!(
                "node: {{name: n, region: cn-hangzhou, cluster: \"{cluster}\"}}\nkubernetes: {section}\n"
            );
            let errors = match config::parse(&yaml) {
                Err(ConfigError::Invalid(errors)) => errors,
                other => panic!("{case}: expected validation errors, got {other:?}"),
            };
            assert_eq!(errors.len(), 1, "{case}: {errors:?}");
            assert_eq!(errors[0].path, path, "{case}");
            assert!(
                errors[0].message.contains(contained),
                "{case}: {:?}",
                errors[0].message
            );
        }
        let message = match config::parse(&format!("{BASE}kubernetes: {{stale: 1s}}\n")) {
            Err(ConfigError::Parse { message }) => message,
            other => panic!("expected a parse error, got {other:?}"),
        };
        assert!(
            message.starts_with("kubernetes.stale: unknown field `stale`"),
            "{message}"
        );
    }
}
