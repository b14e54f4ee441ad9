//! The last-known-good desired state, on the node's disk.
//!
//! Written after every change the Kubernetes source sends; read at boot when no API server
//! answers, so a node that restarts during a control-plane outage steers as it did before
//! (the seed's "back up the routing config to region 2", made automatic). It holds only what
//! came from the clusters: the file's own parts are read from the file again.

use std::{collections::BTreeMap, io::Write as _, path::Path, time::SystemTime};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    crd::ServicePolicy,
    index::{CLUSTER_RULES_SOURCE, ObjectKey},
};
use crate::config::{self, Config, LoadedDestinationRule, Node, Service, TrafficPolicy};

/// Format version; a snapshot of another version is not read.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Snapshot {
    pub version: u32,
    /// RFC 3339.
    pub written_at: String,
    /// This node's locality as its Node said.
    pub node: Node,
    /// When each cluster's API server last answered (RFC 3339), so that staleness and
    /// `staleTtl` count from then after a restart.
    #[serde(default)]
    pub last_contact: BTreeMap<String, String>,
    /// The services built from the clusters (not the file's).
    #[serde(default)]
    pub services: Vec<Service>,
    /// The clusters' DestinationRules.
    #[serde(default)]
    pub destination_rules: Vec<SnapshotRule>,
    /// The version of each TrafficPolicy last in effect: after a restart, a policy whose
    /// current version is invalid stays in effect as it was, as on the nodes that did not
    /// restart (an in-memory "last accepted" made restarted nodes disagree).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_policies: Vec<AcceptedPolicy>,
}

/// A TrafficPolicy's version in effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AcceptedPolicy {
    pub namespace: String,
    pub name: String,
    pub policy: ServicePolicy,
}

/// A DestinationRule as far as steering needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SnapshotRule {
    pub namespace: String,
    pub name: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

impl Snapshot {
    /// The cluster-made parts of `config`, whose first `file_services` services are the file's.
    pub fn of(
        config: &Config,
        file_services: usize,
        last_contact: &BTreeMap<String, SystemTime>,
        accepted: &BTreeMap<ObjectKey, ServicePolicy>,
        now: SystemTime,
    ) -> Snapshot {
        Snapshot {
            version: VERSION,
            written_at: rfc3339(now),
            node: config.node.clone(),
            last_contact: last_contact
                .iter()
                .map(|(cluster, at)| (cluster.clone(), rfc3339(*at)))
                .collect(),
            services: config.services[file_services..].to_vec(),
            destination_rules: config
                .loaded_destination_rules
                .iter()
                .filter(|rule| rule.file == CLUSTER_RULES_SOURCE)
                .map(|rule| SnapshotRule {
                    namespace: rule.namespace.clone(),
                    name: rule.name.clone(),
                    host: rule.host.clone(),
                    traffic_policy: rule.traffic_policy.clone(),
                })
                .collect(),
            accepted_policies: accepted
                .iter()
                .map(|((namespace, name), policy)| AcceptedPolicy {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    policy: policy.clone(),
                })
                .collect(),
        }
    }

    /// `accepted_policies`, by namespace/name.
    pub fn accepted(&self) -> BTreeMap<ObjectKey, ServicePolicy> {
        self.accepted_policies
            .iter()
            .map(|p| ((p.namespace.clone(), p.name.clone()), p.policy.clone()))
            .collect()
    }

    /// The desired state it describes, with the file's static parts; validated.
    pub fn config(&self, file: &Config, node_name: &str) -> Result<Config> {
        let mut config = file.clone();
        config.node = Node {
            name: node_name.to_string(),
            cluster: file.node.cluster.clone(),
            ..self.node.clone()
        };
        config.services.extend(self.services.iter().cloned());
        config
            .loaded_destination_rules
            .extend(self.destination_rules.iter().enumerate().map(|(i, rule)| {
                LoadedDestinationRule {
                    file: CLUSTER_RULES_SOURCE.to_string(),
                    document: i + 1,
                    name: rule.name.clone(),
                    namespace: rule.namespace.clone(),
                    host: rule.host.clone(),
                    traffic_policy: rule.traffic_policy.clone(),
                    ignored: Vec::new(),
                }
            }));
        let errors = config::validate(&config);
        if !errors.is_empty() {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            bail!(
                "the snapshot does not fit the config file:\n{}",
                errors.join("\n")
            );
        }
        Ok(config)
    }

    /// The services by namespace/name, to seed clusters not heard from yet.
    pub fn seed(&self) -> BTreeMap<ObjectKey, Service> {
        self.services
            .iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s.clone()))
            .collect()
    }

    /// `last_contact`, read back; unreadable times are skipped.
    pub fn last_contact(&self) -> BTreeMap<String, SystemTime> {
        self.last_contact
            .iter()
            .filter_map(|(cluster, at)| {
                Some((cluster.clone(), humantime::parse_rfc3339_weak(at).ok()?))
            })
            .collect()
    }
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Writes `snapshot` so that a crash leaves the old file or the new one, never a torn one: a
/// temporary file in the same directory, synced, then renamed over the old one.
pub fn write(path: &Path, snapshot: &Snapshot) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let yaml = serde_yaml_ng::to_string(snapshot).context("serializing the snapshot")?;
    let text = format!(
        "# geosteer: last-known-good desired state from Kubernetes, read at boot when no API \
         server answers.\n{yaml}"
    );
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = Path::new(&temporary);
    let mut file = std::fs::File::create(temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    Ok(())
}

/// Reads a snapshot; `None` if there is none.
pub fn read(path: &Path) -> Result<Option<Snapshot>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    earlier_affinity_timeouts(&mut value);
    let snapshot: Snapshot = serde_path_to_error::deserialize(value)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
    if snapshot.version != VERSION {
        bail!(
            "{}: version {} is not {VERSION}, the one this agent reads",
            path.display(),
            snapshot.version
        );
    }
    Ok(Some(snapshot))
}

/// Agents before the one duration grammar wrote a Service's `sessionAffinity.timeout` as
/// humantime does (`1day`, `1h 30m`); rewritten here so that such a snapshot, the node's state
/// when no API server answers, still reads after an upgrade.
fn earlier_affinity_timeouts(snapshot: &mut serde_yaml_ng::Value) {
    let Some(services) = snapshot
        .get_mut("services")
        .and_then(|s| s.as_sequence_mut())
    else {
        return;
    };
    for service in services {
        let Some(timeout) = service
            .get_mut("sessionAffinity")
            .and_then(|a| a.get_mut("timeout"))
        else {
            continue;
        };
        if let Some(text) = timeout.as_str()
            && config::parse_duration(text).is_err()
            && let Ok(duration) = humantime::parse_duration(text)
        {
            *timeout = config::format_duration(duration).into();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kube::index::fixtures::{desired, file, load, reviews_in_two_clusters, rule};

    #[test]
    fn round_trips_through_the_disk_to_the_same_config() {
        let mut index = reviews_in_two_clusters();
        load(
            &mut index.clusters[0].rules,
            vec![rule(
                "default",
                "reviews",
                1,
                "host: reviews\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 1, \
                 interval: 1s, baseEjectionTime: 1m}\n  connectionPool: {http: {}}",
            )],
        );
        let desired = desired(&index);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let contact = [("ack-shanghai".to_string(), now - Duration::from_secs(30))].into();
        let snapshot = Snapshot::of(
            &desired.config,
            desired.file_services,
            &contact,
            &desired.in_effect,
            now,
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geosteer/snapshot.yaml");
        assert!(read(&path).unwrap().is_none());
        write(&path, &snapshot).unwrap();
        let back = read(&path).unwrap().unwrap();
        assert_eq!(back.last_contact(), contact);

        let mut expected = desired.config.clone();
        // The warnings-only list of fields not acted on is not kept.
        for rule in &mut expected.loaded_destination_rules {
            rule.traffic_policy.as_mut().unwrap().ignored.clear();
        }
        assert_eq!(back.config(&file(), "hz-node-1").unwrap(), expected);
        assert!(!dir.path().join("geosteer/snapshot.yaml.tmp").exists());
    }

    #[test]
    fn a_snapshot_of_an_earlier_agent_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.yaml");
        let service = |timeout: &str| {
            format!(
                "  - {{name: s, vip: 10.96.0.1, ports: [{{port: 80}}], \
                 sessionAffinity: {{timeout: {timeout}}}}}\n"
            )
        };
        std::fs::write(
            &path,
            format!(
                "version: 1\nwrittenAt: x\nnode: {{name: n, region: r}}\nservices:\n{}{}{}",
                service("1day"),
                service("1h 30m"),
                service("3h")
            ),
        )
        .unwrap();
        let snapshot = read(&path).unwrap().unwrap();
        let timeouts: Vec<Duration> = snapshot
            .services
            .iter()
            .map(|s| s.session_affinity.as_ref().unwrap().timeout)
            .collect();
        assert_eq!(
            timeouts,
            [86_400, 5_400, 10_800].map(Duration::from_secs),
            "humantime's spellings of whole seconds"
        );
    }

    #[test]
    fn unreadable_snapshots_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.yaml");
        // (case, content, message it contains)
        let cases = [
            ("not yaml", "version: [", "snapshot.yaml"),
            (
                "other version",
                "version: 2\nwrittenAt: x\nnode: {name: n, region: r}\n",
                "version 2 is not 1",
            ),
            (
                "unknown field",
                "version: 1\nwrittenAt: x\nnode: {name: n, region: r}\nextra: 1\n",
                "unknown field `extra`",
            ),
        ];
        for (case, content, contained) in cases {
            std::fs::write(&path, content).unwrap();
            let message = format!("{:#}", read(&path).unwrap_err());
            assert!(message.contains(contained), "{case}: {message}");
        }
    }

    #[test]
    fn a_snapshot_that_no_longer_fits_the_file_is_refused() {
        let desired = desired(&reviews_in_two_clusters());
        let snapshot = Snapshot::of(
            &desired.config,
            0,
            &BTreeMap::new(),
            &BTreeMap::new(),
            SystemTime::now(),
        );
        let mut file = file();
        file.dataplane.max_backends = 16;
        file.dataplane.max_services = 1;
        file.services = desired.config.services.clone(); // same VIP again
        let message = format!("{:#}", snapshot.config(&file, "hz-node-1").unwrap_err());
        assert!(
            message.starts_with("the snapshot does not fit the config file:"),
            "{message}"
        );
        assert!(
            message.contains("172.16.0.10:80/TCP is already used"),
            "{message}"
        );
    }
}
