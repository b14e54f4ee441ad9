//! The pure in-memory index: what the watchers saw, per cluster, turned into the same [`Config`]
//! the file feeds.
//!
//! Watch events go into [`Store`]s, one per kind and cluster. [`Index::desired`] reads them and
//! builds the services (VIP and ports from this cluster's Services, endpoints from every
//! cluster's EndpointSlices, locality from Node labels), the DestinationRules and this node's
//! locality, merges them with the file and validates the result. A source that would make the
//! config invalid is left out on its own (a TrafficPolicy, a DestinationRule, cluster-weight
//! annotations, as a last resort the service), so one bad object never holds back the others;
//! every TrafficPolicy gets a [`Verdict`] for its status.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ::kube::{
    Resource, ResourceExt as _,
    api::{DynamicObject, PartialObjectMeta},
    runtime::watcher,
};
use geosteer_common::MAX_BACKENDS_PER_SERVICE;
use k8s_openapi::{
    api::{
        core::v1::{Node, ObjectReference, Pod, Service as K8sService},
        discovery::v1::{EndpointConditions, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
};

use super::crd::{ServicePolicy, TrafficPolicy};
use crate::config::{
    self, Config, Endpoint, FieldError, LoadedDestinationRule, Node as ConfigNode, Protocol,
    Service, ServicePart, ServicePort, Subject,
};

/// Namespace and name; the namespace is empty for cluster-scoped objects (Nodes).
pub type ObjectKey = (String, String);

/// Node labels that give a locality (the well-known ones, then their deprecated forms).
const REGION_LABELS: [&str; 2] = [
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/region",
];
const ZONE_LABELS: [&str; 2] = [
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];
/// The pod label keys some failoverPriority of `config` (a desired state: the file's and the
/// clusters' policies in effect) names, beyond the topology labels every endpoint has anyway:
/// the Pod watch runs only while there are some, and keeps only these keys. The desired state
/// does not wait for the Pods (a slow or forbidden Pod list must not freeze every other change):
/// endpoints lack pod labels until they are listed, and `geosteer status` shows a Pod watch
/// that fails.
pub fn pod_label_keys(config: &Config) -> BTreeSet<String> {
    let policies = std::iter::once(config.defaults.traffic_policy.as_ref())
        .chain(config.services.iter().map(|s| s.traffic_policy.as_ref()))
        .chain(
            config
                .loaded_destination_rules
                .iter()
                .map(|r| r.traffic_policy.as_ref()),
        );
    policies
        .flatten()
        .filter_map(config::TrafficPolicy::locality_lb_setting)
        .flat_map(|setting| &setting.failover_priority)
        .map(|entry| entry.split('=').next().unwrap_or_default().to_string())
        .filter(|key| !key.is_empty() && !NOT_POD_LABELS.contains(&key.as_str()))
        .collect()
}

/// Labels every endpoint carries from its locality and node: failoverPriority on these needs
/// no Pod.
const NOT_POD_LABELS: [&str; 5] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    SUBZONE_LABEL,
    "topology.istio.io/cluster",
    config::HOSTNAME_LABEL,
];
/// Istio's subzone label, on Nodes.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Per-cluster weight annotations on a Service; the first prefix wins when both name a cluster.
pub const CLUSTER_WEIGHT_ANNOTATIONS: [&str; 2] = [
    "geosteer.io/cluster-weight.",
    "alb.ingress.kubernetes.io/cluster-weight.",
];
/// The `file` of DestinationRules read from the cluster, as errors and warnings name them:
/// `kubernetes: DestinationRule default/reviews`.
pub const CLUSTER_RULES_SOURCE: &str = "kubernetes";

/// One kind of object from one cluster, as its watcher reported it.
#[derive(Debug, Clone)]
pub struct Store<K> {
    objects: BTreeMap<ObjectKey, K>,
    /// Objects of a relist in progress; they replace `objects` at its end, so a relist never
    /// shows a half-empty store.
    relist: Option<BTreeMap<ObjectKey, K>>,
    synced: bool,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: Resource> Store<K> {
    /// Applies one watch event; returns whether the visible objects changed.
    pub fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(object) => {
                self.objects.insert(key(&object), object);
                true
            }
            watcher::Event::Delete(object) => self.objects.remove(&key(&object)).is_some(),
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                self.relist
                    .get_or_insert_default()
                    .insert(key(&object), object);
                false
            }
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
        }
    }

    /// A complete list, as a finished relist leaves the store (for tests and tools that have
    /// the objects without a watch).
    pub fn replace(&mut self, objects: Vec<K>) {
        self.objects = objects.into_iter().map(|o| (key(&o), o)).collect();
        self.relist = None;
        self.synced = true;
    }

    /// For a kind the API server does not serve (its CRD is not installed): known to be empty.
    pub fn set_absent(&mut self) -> bool {
        let changed = !self.objects.is_empty();
        self.objects.clear();
        self.relist = None;
        self.synced = true;
        changed
    }

    /// Whether a full list has been seen.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&K> {
        self.objects.get(&(namespace.to_string(), name.to_string()))
    }

    /// In namespace/name order.
    pub fn values(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

fn key<K: Resource>(object: &K) -> ObjectKey {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Oldest first, then by namespace/name: who wins when two objects claim the same Service.
fn age_order<K: Resource>(object: &K) -> (Option<Time>, ObjectKey) {
    (object.meta().creation_timestamp.clone(), key(object))
}

/// Everything watched in one cluster. Remote clusters fill only `slices` and `nodes`.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// The cluster id endpoints are tagged with.
    pub name: String,
    /// Region of endpoints whose Node has no region label.
    pub region: String,
    pub services: Store<K8sService>,
    pub slices: Store<EndpointSlice>,
    pub nodes: Store<PartialObjectMeta<Node>>,
    /// Pod metadata (labels only, and only the keys a failoverPriority names), watched while
    /// some policy needs pod labels.
    pub pods: Store<PartialObjectMeta<Pod>>,
    pub policies: Store<TrafficPolicy>,
    pub rules: Store<DynamicObject>,
    /// The API server has been unreachable for longer than `staleTtl`: its endpoints are left
    /// out until it answers and relists.
    pub expired: bool,
}

impl ClusterState {
    pub fn new(name: &str, region: &str) -> Self {
        ClusterState {
            name: name.to_string(),
            region: region.to_string(),
            ..ClusterState::default()
        }
    }

    /// The subzone label of a Node of this cluster.
    fn node_subzone(&self, node_name: &str) -> Option<&str> {
        let node = self.nodes.get("", node_name)?;
        node.labels().get(SUBZONE_LABEL).map(String::as_str)
    }

    /// The labels of the Pod behind an endpoint (its `targetRef`), as watched: only the keys
    /// some failoverPriority names.
    fn pod_labels(&self, target: Option<&ObjectReference>) -> BTreeMap<String, String> {
        target
            .filter(|t| t.kind.as_deref() == Some("Pod"))
            .and_then(|t| self.pods.get(t.namespace.as_deref()?, t.name.as_deref()?))
            .map(|pod| pod.labels().clone())
            .unwrap_or_default()
    }

    /// Region and zone labels of a Node of this cluster.
    fn node_locality(&self, node_name: &str) -> (Option<&str>, Option<&str>) {
        let Some(node) = self.nodes.get("", node_name) else {
            return (None, None);
        };
        let label = |keys: &[&str]| {
            keys.iter()
                .find_map(|key| node.labels().get(*key))
                .map(String::as_str)
                .filter(|value| !value.is_empty())
        };
        (label(&REGION_LABELS), label(&ZONE_LABELS))
    }

    /// EndpointSlices of Service `namespace/name` of one family (`addressType` `IPv4` or
    /// `IPv6`), in name order.
    fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        family: Family,
    ) -> impl Iterator<Item = &'a EndpointSlice> {
        self.slices.values().filter(move |slice| {
            slice.metadata.namespace.as_deref() == Some(namespace)
                && slice.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                && slice.address_type == family.address_type()
        })
    }
}

/// All clusters' stores, plus what the last snapshot said about clusters not heard from yet.
#[derive(Debug, Clone)]
pub struct Index {
    /// This node's Node name.
    pub node_name: String,
    /// `clusters[0]` is this cluster, then the remote clusters in `kubernetes.clusters` order.
    pub clusters: Vec<ClusterState>,
    /// Services from the snapshot. A cluster whose EndpointSlices have not been listed yet
    /// (its API server has not answered since the agent started) keeps the endpoints the
    /// snapshot has for it.
    pub seed: BTreeMap<ObjectKey, Service>,
    /// The version of each TrafficPolicy last in effect ([`Desired::in_effect`]): an update
    /// that is rejected leaves it in place, as a rejected config file leaves the running one.
    pub last_accepted: BTreeMap<ObjectKey, ServicePolicy>,
}

/// Whether a TrafficPolicy is in effect, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    /// `Accepted`, `Invalid`, `TargetNotFound` or `Conflicted`.
    pub reason: &'static str,
    pub message: String,
    pub generation: Option<i64>,
}

/// What [`Index::desired`] builds.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Valid: [`config::validate`](fn@config::validate) reports nothing.
    pub config: Config,
    /// How many of `config.services` come from the file (they come first).
    pub file_services: usize,
    /// One per TrafficPolicy of this cluster.
    pub verdicts: BTreeMap<ObjectKey, Verdict>,
    /// The TrafficPolicies in effect, each in the version used: for [`Index::last_accepted`].
    pub in_effect: BTreeMap<ObjectKey, ServicePolicy>,
    /// What was left out or ignored, and why.
    pub warnings: Vec<String>,
}

/// A Service of this cluster as built from the stores, with the policy sources that may yet be
/// left out.
struct Built {
    service: Service,
    /// The TrafficPolicy targeting it (the oldest valid one).
    policy: Option<(ObjectKey, ServicePolicy)>,
    /// From the Service's cluster-weight annotations; a TrafficPolicy's weights win.
    annotation_weights: Option<BTreeMap<String, u32>>,
    /// The TrafficPolicy's spec sets `clusterWeights`.
    policy_sets_weights: bool,
    /// Notes for the policy's status (weights that had to be set aside).
    notes: Vec<String>,
    /// Why the policy's current version is rejected, when `policy` is its last accepted one.
    rejected_update: Option<String>,
    included: bool,
}

impl Built {
    /// The weights in effect: the TrafficPolicy's if it sets any (even when all of them had to
    /// be set aside), else the annotations'.
    fn weights(&self) -> Option<(WeightsFrom, &BTreeMap<String, u32>)> {
        match &self.policy {
            Some((_, policy)) if self.policy_sets_weights => policy
                .cluster_weights
                .as_ref()
                .map(|weights| (WeightsFrom::Policy, weights)),
            _ => self
                .annotation_weights
                .as_ref()
                .map(|weights| (WeightsFrom::Annotations, weights)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightsFrom {
    Policy,
    Annotations,
}

/// An endpoint before deduplication, with what topology-aware routing needs.
struct Candidate {
    endpoint: Endpoint,
    /// The endpoint's `targetRef` (the pod), which names it across the two families' slices.
    target: Option<(Option<String>, Option<String>, Option<String>)>,
    /// From this cluster's EndpointSlices.
    local: bool,
    /// The endpoint's `nodeName`.
    node: Option<String>,
    /// `hints.forZones`, when set and not empty.
    zone_hints: Option<Vec<String>>,
}

impl Index {
    /// An empty index for the clusters in `file.kubernetes`.
    pub fn new(file: &Config, node_name: &str) -> Index {
        let mut clusters = vec![ClusterState::new(&file.node.cluster, &file.node.region)];
        if let Some(settings) = &file.kubernetes {
            clusters.extend(
                settings
                    .clusters
                    .iter()
                    .map(|c| ClusterState::new(&c.name, &c.region)),
            );
        }
        Index {
            node_name: node_name.to_string(),
            clusters,
            seed: BTreeMap::new(),
            last_accepted: BTreeMap::new(),
        }
    }

    pub fn local(&self) -> &ClusterState {
        &self.clusters[0]
    }

    /// Whether this cluster has been listed in full: before that, a desired state would be
    /// missing services (and the agent would withdraw them).
    pub fn local_synced(&self) -> bool {
        let local = self.local();
        local.services.is_synced()
            && local.slices.is_synced()
            && local.nodes.is_synced()
            && local.policies.is_synced()
            && local.rules.is_synced()
    }

    /// This node as the config describes it: name from the environment, region and zone from
    /// its Node's labels (the file's values where a label is missing).
    pub fn node(&self, file: &ConfigNode) -> ConfigNode {
        let local = self.local();
        let (region, zone) = local.node_locality(&self.node_name);
        let labels = local
            .nodes
            .get("", &self.node_name)
            .map(|node| node.labels().clone())
            .unwrap_or_else(|| file.labels.clone());
        let subzone = labels
            .get(SUBZONE_LABEL)
            .cloned()
            .unwrap_or_else(|| file.subzone.clone());
        ConfigNode {
            name: self.node_name.clone(),
            region: region.unwrap_or(&file.region).to_string(),
            zone: zone.unwrap_or(&file.zone).to_string(),
            subzone,
            cluster: file.cluster.clone(),
            labels,
        }
    }

    /// The desired state: `file` (node, dataplane, defaults, its own services and
    /// DestinationRules) merged with what the clusters say. Fails only when the file's own
    /// parts are invalid with this node's locality.
    pub fn desired(&self, file: &Config) -> Result<Desired, Vec<FieldError>> {
        let mut warnings = Vec::new();
        let node = self.node(&file.node);
        let local = self.local();

        let service_settings = file
            .kubernetes
            .as_ref()
            .map_or(&[][..], |k| &k.service_settings[..]);
        let mut built: Vec<Built> = Vec::new();
        for k8s in local.services.values() {
            if let Some(service) = self.build_service(k8s, &node, service_settings, &mut warnings) {
                let annotation_weights = annotation_weights(k8s, &mut warnings);
                built.push(Built {
                    service,
                    policy: None,
                    annotation_weights,
                    policy_sets_weights: false,
                    notes: Vec::new(),
                    rejected_update: None,
                    included: true,
                });
            }
        }
        let position: BTreeMap<ObjectKey, usize> = built
            .iter()
            .enumerate()
            .map(|(b, built)| {
                let s = &built.service;
                ((s.namespace.clone(), s.name.clone()), b)
            })
            .collect();

        let mut verdicts = BTreeMap::new();
        let mut policies: Vec<&TrafficPolicy> = local.policies.values().collect();
        policies.sort_by_key(|p| age_order(*p));
        for policy in policies {
            let key = key(policy);
            let target = (key.0.clone(), policy.spec.target_ref.name.clone());
            let Some(&b) = position.get(&target) else {
                verdicts.insert(
                    key,
                    rejected(
                        "TargetNotFound",
                        format!(
                            "Service {}/{} does not exist or has no IPv4 cluster IP",
                            target.0, target.1
                        ),
                    ),
                );
                continue;
            };
            let mut rejected_update = None;
            let converted = match policy.spec.validate() {
                Ok(converted) => converted,
                Err(message) => match self.last_accepted.get(&key) {
                    Some(last) => {
                        rejected_update = Some(message);
                        last.clone()
                    }
                    None => {
                        verdicts.insert(key, rejected("Invalid", message));
                        continue;
                    }
                },
            };
            if let Some((winner, _)) = &built[b].policy {
                let message = format!(
                    "Service {}/{} already has TrafficPolicy {}/{}, which is older",
                    target.0, target.1, winner.0, winner.1
                );
                verdicts.insert(key, rejected("Conflicted", message));
                continue;
            }
            built[b].policy_sets_weights = converted.cluster_weights.is_some();
            built[b].policy = Some((key, converted));
            built[b].rejected_update = rejected_update;
        }

        let known_clusters: BTreeSet<&str> = self
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .filter(|name| !name.is_empty())
            .collect();
        for b in &mut built {
            set_aside_idle_weights(b, &known_clusters);
        }

        let mut rules = self.cluster_rules(file, &built, &mut warnings);
        trim_to_capacity(file, &mut built, &mut warnings);

        // Leave out whatever validation blames, one source at a time, until the config is valid.
        let config = loop {
            let (config, owners) = assemble(file, &node, &built, &rules);
            let errors = config::validate(&config);
            if errors.is_empty() {
                break config;
            }
            let file_rules = file.loaded_destination_rules.len();
            let Some(blamed) = errors
                .iter()
                .find_map(|error| blame(error, &owners, &built, file_rules, rules.len()))
            else {
                return Err(errors);
            };
            let mut left_out = LeftOut {
                built: &mut built,
                rules: &mut rules,
                file_rules,
                verdicts: &mut verdicts,
                warnings: &mut warnings,
            };
            left_out.leave_out(blamed, &errors, &owners, self, &known_clusters);
        };

        let mut in_effect = BTreeMap::new();
        for b in &built {
            let Some((key, policy)) = &b.policy else {
                continue;
            };
            if b.included {
                in_effect.insert(key.clone(), policy.clone());
            }
            let verdict = if let (true, Some(why)) = (b.included, &b.rejected_update) {
                rejected(
                    "Invalid",
                    format!("{why}; the last accepted version stays in effect"),
                )
            } else if b.included {
                Verdict {
                    accepted: true,
                    reason: "Accepted",
                    message: b.notes.join("; "),
                    generation: None,
                }
            } else {
                rejected(
                    "TargetNotFound",
                    format!(
                        "Service {}/{} is not steered (see the agent's log)",
                        b.service.namespace, b.service.name
                    ),
                )
            };
            verdicts.insert(key.clone(), verdict);
        }
        for ((namespace, name), verdict) in &mut verdicts {
            verdict.generation = local
                .policies
                .get(namespace, name)
                .and_then(|p| p.metadata.generation);
        }

        Ok(Desired {
            config,
            file_services: file.services.len(),
            verdicts,
            in_effect,
            warnings,
        })
    }

    /// A config Service for a Service of this cluster with a cluster IP, or `None` for those
    /// geosteer cannot steer (headless, ExternalName, no TCP/UDP port). A dual-stack Service
    /// (`clusterIPs` of both families) is one service: its IPv4 cluster IP is the `vip`, its
    /// IPv6 one the `vip6`, its endpoints those of its IPv4 EndpointSlices, each with the IPv6
    /// address its pod (`targetRef`) has in the IPv6 slices. kube-proxy runs a proxier per
    /// family instead; one service keeps one health state per pod whichever family fails.
    fn build_service(
        &self,
        k8s: &K8sService,
        node: &ConfigNode,
        service_settings: &[crate::config::ServiceSettingsEntry],
        warnings: &mut Vec<String>,
    ) -> Option<Service> {
        let namespace = k8s.metadata.namespace.clone().unwrap_or_default();
        let name = k8s.metadata.name.clone().unwrap_or_default();
        let spec = k8s.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        // Another proxy's Service (kube-proxy and Cilium leave these alone too).
        if let Some(proxy) = k8s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
            && proxy != SERVICE_PROXY_NAME
        {
            return None;
        }
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .collect();
        let vip4 = cluster_ips.iter().copied().find(IpAddr::is_ipv4);
        let vip6 = cluster_ips.iter().copied().find(IpAddr::is_ipv6);
        let (vip, vip6, family) = match (vip4, vip6) {
            (Some(vip4), vip6) => (vip4, vip6, Family::V4),
            (None, Some(vip6)) => (vip6, None, Family::V6),
            (None, None) => return None,
        };
        let seed = self.seed.get(&(namespace.clone(), name.clone()));
        let scope = super::cluster_local::scope(
            &namespace,
            &name,
            k8s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(super::cluster_local::ANNOTATION))
                .map(String::as_str),
            service_settings,
        );
        // A cluster-local Service takes this cluster's endpoints only (index 0).
        let clusters = if scope.cluster_local {
            &self.clusters[..1]
        } else {
            &self.clusters[..]
        };

        // (name, port, protocol, targetPort) of the TCP and UDP ports.
        let mut ports = Vec::new();
        for port in spec.ports.iter().flatten() {
            let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => continue,
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            ports.push((
                port.name.clone(),
                port.app_protocol.clone(),
                number,
                protocol,
                port.target_port.clone(),
            ));
        }
        if ports.is_empty() {
            return None;
        }

        // EndpointSlices name their ports after the Service's and carry the resolved number;
        // the first slice (this cluster first) that has a port decides its target port.
        let slices: Vec<(&ClusterState, &EndpointSlice)> = clusters
            .iter()
            .filter(|cluster| !cluster.expired)
            .flat_map(|cluster| {
                cluster
                    .slices_of(&namespace, &name, family)
                    .map(move |slice| (cluster, slice))
            })
            .collect();
        let service_ports: Vec<ServicePort> = ports
            .iter()
            .map(|(port_name, app_protocol, port, protocol, target)| {
                let from_slices = slices
                    .iter()
                    .find_map(|(_, slice)| slice_port(slice, port_name.as_deref(), *protocol));
                let from_seed = seed.and_then(|seed| {
                    seed.ports
                        .iter()
                        .find(|p| p.port == *port && p.protocol == *protocol)
                        .map(|p| p.target_port)
                });
                let from_spec = match target {
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
                    _ => None,
                };
                ServicePort {
                    name: port_name.clone(),
                    app_protocol: app_protocol.clone(),
                    port: *port,
                    target_port: from_slices.or(from_seed).or(from_spec).unwrap_or(*port),
                    protocol: *protocol,
                }
            })
            .collect();

        let mut candidates = Vec::new();
        for (c, cluster) in clusters.iter().enumerate() {
            if cluster.expired {
                continue;
            }
            if !cluster.slices.is_synced() {
                // Not heard from since the agent started: what the snapshot knew.
                let seeded = seed.iter().flat_map(|seed| &seed.endpoints);
                candidates.extend(
                    seeded
                        .filter(|e| e.cluster == cluster.name && c > 0)
                        .map(|e| Candidate {
                            endpoint: e.clone(),
                            target: None,
                            local: false,
                            node: None,
                            zone_hints: None,
                        }),
                );
                continue;
            }
            let this_cluster = candidates.len();
            for slice in cluster.slices_of(&namespace, &name, family) {
                if let Some(problem) = port_mismatch(slice, &service_ports) {
                    warnings.push(format!(
                        "EndpointSlice {namespace}/{} (cluster {:?}): {problem}; its endpoints \
                         are left out (a service port has one target port in every cluster)",
                        slice.metadata.name.as_deref().unwrap_or_default(),
                        cluster.name
                    ));
                    continue;
                }
                candidates.extend(slice_candidates(cluster, slice, c == 0, family));
            }
            // A dual-stack Service: each pod's IPv6 address, from the IPv6 slices.
            if vip6.is_some() {
                let ipv6_of: BTreeMap<_, IpAddr> = cluster
                    .slices_of(&namespace, &name, Family::V6)
                    .filter(|slice| port_mismatch(slice, &service_ports).is_none())
                    .flat_map(|slice| slice_candidates(cluster, slice, c == 0, Family::V6))
                    .filter_map(|v6| Some((v6.target?, v6.endpoint.ip)))
                    .collect();
                for candidate in &mut candidates[this_cluster..] {
                    candidate.endpoint.ip6 = candidate
                        .target
                        .as_ref()
                        .and_then(|target| ipv6_of.get(target))
                        .copied();
                }
            }
        }
        if spec.internal_traffic_policy.as_deref() == Some("Local") {
            // kube-proxy's rule: only endpoints on this node; none, and the traffic is dropped
            // (a service without endpoints), never sent elsewhere.
            candidates.retain(|c| c.local && c.node.as_deref() == Some(self.node_name.as_str()));
        }
        apply_zone_hints(&mut candidates, &node.zone);

        let mut seen = BTreeSet::new();
        let mut endpoints = Vec::new();
        for candidate in candidates {
            if seen.insert(candidate.endpoint.ip) {
                endpoints.push(candidate.endpoint);
            }
        }
        if endpoints.len() > MAX_BACKENDS_PER_SERVICE {
            warnings.push(format!(
                "Service {namespace}/{name}: {} endpoints, only the first \
                 {MAX_BACKENDS_PER_SERVICE} (this cluster's first) are used",
                endpoints.len()
            ));
            endpoints.truncate(MAX_BACKENDS_PER_SERVICE);
        }

        Some(Service {
            name,
            namespace,
            vip,
            vip6,
            ports: service_ports,
            endpoints,
            traffic_policy: None,
            cluster_weights: None,
            health_check: None,
            reset_on_eject: false,
            on_eject: None,
            cluster_local: scope.cluster_local.then_some(scope.why),
            traffic_distribution: traffic_distribution(k8s, warnings),
            session_affinity: session_affinity(k8s),
        })
    }

    /// This cluster's DestinationRules, after the file's: oldest first; a rule that cannot be
    /// read, or that selects a Service another rule already selects, is left out.
    fn cluster_rules(
        &self,
        file: &Config,
        built: &[Built],
        warnings: &mut Vec<String>,
    ) -> Vec<LoadedDestinationRule> {
        let mut objects: Vec<&DynamicObject> = self.local().rules.values().collect();
        objects.sort_by_key(|o| age_order(*o));
        let mut rules: Vec<LoadedDestinationRule> = Vec::new();
        for object in objects {
            let rule = match destination_rule(object) {
                Ok(rule) => rule,
                Err(message) => {
                    warnings.push(message);
                    continue;
                }
            };
            let taken = built.iter().map(|b| &b.service).find_map(|service| {
                if !rule.selects(service) {
                    return None;
                }
                file.loaded_destination_rules
                    .iter()
                    .chain(&rules)
                    .find(|other| other.selects(service))
                    .map(|other| (service, other))
            });
            if let Some((service, other)) = taken {
                warnings.push(format!(
                    "{}: left out: Service {}/{} is already selected by {} (a service takes \
                     one DestinationRule, the oldest)",
                    rule.path(),
                    service.namespace,
                    service.name,
                    other.describe()
                ));
                continue;
            }
            rules.push(rule);
        }
        rules
    }
}

/// The port number a slice has for the Service port `name`/`protocol`.
fn slice_port(slice: &EndpointSlice, name: Option<&str>, protocol: Protocol) -> Option<u16> {
    slice.ports.iter().flatten().find_map(|port| {
        let same_name = port.name.as_deref().unwrap_or("") == name.unwrap_or("");
        let same_protocol = port
            .protocol
            .as_deref()
            .unwrap_or("TCP")
            .eq_ignore_ascii_case(&protocol.to_string());
        if same_name && same_protocol {
            port.port.and_then(|n| u16::try_from(n).ok())
        } else {
            None
        }
    })
}

/// Why a slice's ports disagree with the chosen target ports, if they do.
fn port_mismatch(slice: &EndpointSlice, ports: &[ServicePort]) -> Option<String> {
    ports.iter().find_map(|port| {
        let number = slice_port(slice, port.name.as_deref(), port.protocol)?;
        (number != port.target_port).then(|| {
            format!(
                "port {:?} is {number}, other endpoints use {}",
                port.name.as_deref().unwrap_or(""),
                port.target_port
            )
        })
    })
}

/// Endpoints that take traffic, as kube-proxy decides: ready, or serving and not terminating.
/// An unset condition reads as the API documents it: `ready` and `serving` as true,
/// `terminating` as false.
pub fn takes_traffic(conditions: Option<&EndpointConditions>) -> bool {
    let Some(conditions) = conditions else {
        return true;
    };
    let ready = conditions.ready.unwrap_or(true);
    let serving = conditions.serving.unwrap_or(ready);
    let terminating = conditions.terminating.unwrap_or(false);
    ready || (serving && !terminating)
}

/// `spec.sessionAffinity: ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds`
/// (kube-proxy's default 10800 when unset; the API server bounds it to 1..=86400).
fn session_affinity(k8s: &K8sService) -> Option<config::SessionAffinity> {
    let spec = k8s.spec.as_ref()?;
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let seconds = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .map_or(config::DEFAULT_AFFINITY_TIMEOUT.as_secs(), |s| {
            u64::try_from(s).unwrap_or(1)
        })
        .clamp(1, config::MAX_AFFINITY_TIMEOUT.as_secs());
    Some(config::SessionAffinity {
        timeout: std::time::Duration::from_secs(seconds),
    })
}

/// `spec.trafficDistribution`; a value this version does not know is ignored, with a warning
/// (kube-proxy ignores it too).
fn traffic_distribution(
    k8s: &K8sService,
    warnings: &mut Vec<String>,
) -> Option<config::TrafficDistribution> {
    let value = k8s.spec.as_ref()?.traffic_distribution.as_deref()?;
    match value {
        "PreferClose" => Some(config::TrafficDistribution::PreferClose),
        "PreferSameZone" => Some(config::TrafficDistribution::PreferSameZone),
        "PreferSameNode" => Some(config::TrafficDistribution::PreferSameNode),
        other => {
            warnings.push(format!(
                "Service {}/{}: spec.trafficDistribution {other:?} is not known; ignored",
                k8s.namespace().unwrap_or_default(),
                k8s.name_any()
            ));
            None
        }
    }
}

/// `service.kubernetes.io/service-proxy-name`: a Service carrying it belongs to the proxy it
/// names; geosteer steers it only when that is [`SERVICE_PROXY_NAME`].
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const SERVICE_PROXY_NAME: &str = "geosteer";

/// A terminating endpoint (a pod shutting down in a rolling update) takes no new connections but
/// keeps the ones it has, to their end: Envoy drains a host removed from EDS, and Cilium keeps
/// terminating backends for their existing flows.
pub fn is_draining(conditions: Option<&EndpointConditions>) -> bool {
    conditions.is_some_and(|c| c.terminating == Some(true))
}

/// An address family of a Service's cluster IPs and EndpointSlices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// `text` as an address of this family (an address of the other family in a slice of
    /// this one is skipped, as one that does not parse).
    fn parse(self, text: &str) -> Option<IpAddr> {
        match self {
            Family::V4 => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            Family::V6 => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        }
    }
}

fn slice_candidates<'a>(
    cluster: &'a ClusterState,
    slice: &'a EndpointSlice,
    local: bool,
    family: Family,
) -> impl Iterator<Item = Candidate> + 'a {
    slice
        .endpoints
        .iter()
        .filter(|e| takes_traffic(e.conditions.as_ref()) || is_draining(e.conditions.as_ref()))
        .flat_map(move |e| {
            let draining =
                !takes_traffic(e.conditions.as_ref()) && is_draining(e.conditions.as_ref());
            let (node_region, node_zone) = e
                .node_name
                .as_deref()
                .map(|node| cluster.node_locality(node))
                .unwrap_or_default();
            let region = node_region.unwrap_or(&cluster.region).to_string();
            let zone = e.zone.as_deref().or(node_zone).unwrap_or("").to_string();
            let subzone = e
                .node_name
                .as_deref()
                .and_then(|node| cluster.node_subzone(node))
                .unwrap_or("")
                .to_string();
            let mut labels = cluster.pod_labels(e.target_ref.as_ref());
            if let Some(node) = &e.node_name {
                labels.insert(config::HOSTNAME_LABEL.to_string(), node.clone());
            }
            let zone_hints: Option<Vec<String>> = e
                .hints
                .as_ref()
                .and_then(|hints| hints.for_zones.as_ref())
                .filter(|zones| !zones.is_empty())
                .map(|zones| zones.iter().map(|z| z.name.clone()).collect());
            e.addresses.iter().filter_map(move |address| {
                Some(Candidate {
                    node: e.node_name.clone(),
                    target: e
                        .target_ref
                        .as_ref()
                        .map(|t| (t.kind.clone(), t.namespace.clone(), t.name.clone())),
                    endpoint: Endpoint {
                        ip: family.parse(address)?,
                        ip6: None,
                        region: region.clone(),
                        zone: zone.clone(),
                        subzone: subzone.clone(),
                        cluster: cluster.name.clone(),
                        labels: labels.clone(),
                        weight: 1,
                        draining,
                    },
                    local,
                    zone_hints: zone_hints.clone(),
                })
            })
        })
}

/// Topology-aware routing, as kube-proxy applies it: when every endpoint of this cluster has
/// zone hints and some are for this node's zone, this cluster's other endpoints are not used.
/// Remote clusters' endpoints stay (their hints are about their own zones).
/// Draining endpoints take no part (the EndpointSlice controller hints ready endpoints only)
/// and are always kept, for their open connections.
fn apply_zone_hints(candidates: &mut Vec<Candidate>, node_zone: &str) {
    let for_this_zone = |c: &Candidate| {
        c.zone_hints
            .as_ref()
            .is_some_and(|zones| zones.iter().any(|z| z == node_zone))
    };
    let serving_here = |c: &Candidate| c.local && !c.endpoint.draining;
    let mut local = candidates.iter().filter(|c| serving_here(c)).peekable();
    if node_zone.is_empty() || local.peek().is_none() {
        return;
    }
    if !candidates
        .iter()
        .filter(|c| serving_here(c))
        .all(|c| c.zone_hints.is_some())
        || !candidates
            .iter()
            .any(|c| serving_here(c) && for_this_zone(c))
    {
        return;
    }
    candidates.retain(|c| !serving_here(c) || for_this_zone(c));
}

/// Weights from the Service's `cluster-weight.<id>` annotations. A value that is not a number
/// makes the whole set unusable: a partial set would send a cluster's share elsewhere.
fn annotation_weights(
    k8s: &K8sService,
    warnings: &mut Vec<String>,
) -> Option<BTreeMap<String, u32>> {
    let mut weights = BTreeMap::new();
    for prefix in CLUSTER_WEIGHT_ANNOTATIONS.iter().rev() {
        for (key, value) in k8s.annotations() {
            let Some(cluster) = key.strip_prefix(prefix) else {
                continue;
            };
            match value.trim().parse::<u32>() {
                Ok(weight) => {
                    weights.insert(cluster.to_string(), weight);
                }
                Err(_) => {
                    warnings.push(format!(
                        "Service {}/{}: metadata.annotations[{key:?}]: invalid value {value:?}: \
                         expected a whole number 0-100; the cluster-weight annotations are \
                         ignored",
                        k8s.metadata.namespace.as_deref().unwrap_or_default(),
                        k8s.metadata.name.as_deref().unwrap_or_default()
                    ));
                    return None;
                }
            }
        }
    }
    (!weights.is_empty()).then_some(weights)
}

/// Weights for a known cluster that has no endpoints of the service right now (it is down, or
/// scaled to zero) change nothing: that cluster gets no traffic either way. They are set aside
/// so that validation, which rejects weights for clusters without endpoints, keeps the rest of
/// the policy. Weights for unknown clusters stay, for validation to report.
fn set_aside_idle_weights(built: &mut Built, known_clusters: &BTreeSet<&str>) {
    let present: BTreeSet<String> = built
        .service
        .endpoints
        .iter()
        .map(|e| e.cluster.clone())
        .collect();
    let set_aside = |weights: &mut Option<BTreeMap<String, u32>>| -> Vec<String> {
        let Some(map) = weights else {
            return Vec::new();
        };
        let idle: Vec<String> = map
            .keys()
            .filter(|c| known_clusters.contains(c.as_str()) && !present.contains(*c))
            .cloned()
            .collect();
        for cluster in &idle {
            map.remove(cluster);
        }
        if !idle.is_empty() && map.values().all(|&w| w == 0) {
            *weights = None;
        }
        idle
    };
    set_aside(&mut built.annotation_weights);
    if let Some((_, policy)) = &mut built.policy {
        let idle = set_aside(&mut policy.cluster_weights);
        if !idle.is_empty() {
            built.notes.push(format!(
                "clusterWeights for {} unused: no endpoints there now",
                idle.join(", ")
            ));
        }
        if built.policy_sets_weights && policy.cluster_weights.is_none() {
            built
                .notes
                .push("clusterWeights unused: no weighted cluster has endpoints".to_string());
        }
    }
}

/// Keeps the service ports and backends within the data path's capacity, leaving out services
/// from the end (namespace/name order) so that the same ones are left out every time.
fn trim_to_capacity(file: &Config, built: &mut [Built], warnings: &mut Vec<String>) {
    let load = |s: &Service| {
        let ports = s.ports.len() as u64;
        let tables = ports * crate::config::table_chunks_at_least(s);
        (ports, ports * s.endpoints.len() as u64, tables)
    };
    let (mut ports, mut backends, mut tables) = file
        .services
        .iter()
        .map(load)
        .fold((0, 0, 0), |(p, b, t), (sp, sb, st)| {
            (p + sp, b + sb, t + st)
        });
    // Room to swap the largest table (of any service, included or not: a bound).
    let swap_room = file
        .services
        .iter()
        .chain(built.iter().map(|b| &b.service))
        .map(crate::config::table_chunks_at_least)
        .max()
        .unwrap_or(0);
    for b in built.iter().filter(|b| b.included) {
        let (p, e, t) = load(&b.service);
        ports += p;
        backends += e;
        tables += t;
    }
    let max_ports = u64::from(file.dataplane.max_services);
    let max_backends = u64::from(file.dataplane.max_backends);
    let max_tables = u64::from(file.dataplane.table_chunks());
    for b in built.iter_mut().rev() {
        if ports <= max_ports && backends <= max_backends && tables + swap_room <= max_tables {
            break;
        }
        if !b.included {
            continue;
        }
        let (p, e, t) = load(&b.service);
        ports -= p;
        backends -= e;
        tables -= t;
        b.included = false;
        warnings.push(format!(
            "Service {}/{}: left out: over dataplane.maxServices ({max_ports} ports), \
             dataplane.maxBackends ({max_backends}) or dataplane.tableChunks ({max_tables})",
            b.service.namespace, b.service.name
        ));
    }
}

/// The config for the current choice of sources; `owners[i]` is the position in `built` of
/// `config.services[i]` (`None` for the file's services).
fn assemble(
    file: &Config,
    node: &ConfigNode,
    built: &[Built],
    rules: &[LoadedDestinationRule],
) -> (Config, Vec<Option<usize>>) {
    let mut config = file.clone();
    config.node = node.clone();
    config
        .loaded_destination_rules
        .extend(rules.iter().cloned());
    let mut owners = vec![None; config.services.len()];
    for (b, built) in built.iter().enumerate().filter(|(_, b)| b.included) {
        let mut service = built.service.clone();
        if let Some((_, policy)) = &built.policy {
            policy.apply_to(&mut service);
        }
        service.cluster_weights = built.weights().map(|(_, w)| w.clone());
        config.services.push(service);
        owners.push(Some(b));
    }
    (config, owners)
}

/// What a validation error is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// The TrafficPolicy of `built[b]`.
    Policy(usize),
    /// The cluster-weight annotations of `built[b]`.
    Annotations(usize),
    /// `built[b]` itself.
    Service(usize),
    /// The last included service (the config is over a capacity limit).
    LastService,
    /// `rules[r]`.
    Rule(usize),
}

/// The source `error` is about, if it is one the cluster contributed. The config's rules are
/// the file's `file_rules` first, then the cluster's `cluster_rules`.
fn blame(
    error: &FieldError,
    owners: &[Option<usize>],
    built: &[Built],
    file_rules: usize,
    cluster_rules: usize,
) -> Option<Blame> {
    match error.subject {
        Subject::Service { index, part } => {
            // `None`: one of the file's services, not ours to leave out.
            let b = owners.get(index).copied().flatten()?;
            let weights_from = built[b].weights().map(|(from, _)| from);
            let has_policy = built[b].policy.is_some();
            Some(match part {
                ServicePart::ClusterWeights if weights_from == Some(WeightsFrom::Annotations) => {
                    Blame::Annotations(b)
                }
                ServicePart::TrafficPolicy
                | ServicePart::ClusterWeights
                | ServicePart::HealthCheck
                    if has_policy =>
                {
                    Blame::Policy(b)
                }
                _ => Blame::Service(b),
            })
        }
        Subject::Capacity => Some(Blame::LastService),
        Subject::Rule(r) => r
            .checked_sub(file_rules)
            .filter(|&r| r < cluster_rules)
            .map(Blame::Rule),
        Subject::Other => None,
    }
}

/// What [`Index::desired`] may leave out.
struct LeftOut<'a> {
    built: &'a mut [Built],
    /// The cluster's rules, which come after the file's `file_rules` in the config.
    rules: &'a mut Vec<LoadedDestinationRule>,
    file_rules: usize,
    verdicts: &'a mut BTreeMap<ObjectKey, Verdict>,
    warnings: &'a mut Vec<String>,
}

impl LeftOut<'_> {
    /// Leaves out what `blame` names; `errors` are all of this round's, for the messages.
    fn leave_out(
        &mut self,
        blame: Blame,
        errors: &[FieldError],
        owners: &[Option<usize>],
        index: &Index,
        known_clusters: &BTreeSet<&str>,
    ) {
        // Errors about built service `b`: the part they are in, the field below the service.
        let about = |b: usize| {
            errors.iter().filter_map(move |error| match error.subject {
                Subject::Service { index, part }
                    if owners.get(index).copied().flatten() == Some(b) =>
                {
                    Some((part, error.service_field(), error))
                }
                _ => None,
            })
        };
        let built = &mut *self.built;
        match blame {
            Blame::Policy(b) => {
                let message = about(b)
                    .filter(|(part, _, _)| *part != ServicePart::Service)
                    .map(|(_, field, error)| format!("spec.{field}: {}", error.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let built = &mut built[b];
                let (key, current) = built.policy.take().expect("blamed policy exists");
                built.notes.clear();
                let last = index
                    .last_accepted
                    .get(&key)
                    .filter(|last| **last != current);
                match (built.rejected_update.take(), last) {
                    // The current version fails: the last accepted one stays, if it still fits.
                    (None, Some(last)) => {
                        built.policy_sets_weights = last.cluster_weights.is_some();
                        built.policy = Some((key, last.clone()));
                        built.rejected_update = Some(message);
                        set_aside_idle_weights(built, known_clusters);
                    }
                    (Some(first), _) => {
                        let message =
                            format!("{first}; the last accepted version no longer fits: {message}");
                        self.verdicts.insert(key, rejected("Invalid", message));
                    }
                    (None, None) => {
                        self.verdicts.insert(key, rejected("Invalid", message));
                    }
                }
            }
            Blame::Annotations(b) => {
                built[b].annotation_weights = None;
                for (_, field, error) in
                    about(b).filter(|(part, _, _)| *part == ServicePart::ClusterWeights)
                {
                    self.warnings.push(format!(
                        "Service {}/{}: cluster-weight annotations ignored: {field}: {}",
                        built[b].service.namespace, built[b].service.name, error.message
                    ));
                }
            }
            Blame::Service(b) => {
                built[b].included = false;
                for (_, field, error) in about(b) {
                    self.warnings.push(format!(
                        "Service {}/{}: left out: {field}: {}",
                        built[b].service.namespace, built[b].service.name, error.message
                    ));
                }
            }
            Blame::LastService => {
                if let Some(last) = built.iter_mut().rev().find(|b| b.included) {
                    last.included = false;
                    self.warnings.push(format!(
                        "Service {}/{}: left out: over a dataplane capacity limit",
                        last.service.namespace, last.service.name
                    ));
                }
            }
            Blame::Rule(r) => {
                let rule = self.rules.remove(r);
                let subject = Subject::Rule(self.file_rules + r);
                for error in errors.iter().filter(|e| e.subject == subject) {
                    self.warnings
                        .push(format!("{}: left out: {error}", rule.describe()));
                }
            }
        }
    }
}

fn rejected(reason: &'static str, message: String) -> Verdict {
    Verdict {
        accepted: false,
        reason,
        message,
        generation: None,
    }
}

/// Reads a DestinationRule object with the config file's DestinationRule parser.
pub fn destination_rule(object: &DynamicObject) -> Result<LoadedDestinationRule, String> {
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    let api_version = object
        .types
        .as_ref()
        .map(|t| t.api_version.clone())
        .unwrap_or_else(|| config::DESTINATION_RULE_API_VERSIONS[2].to_string());
    let document = serde_json::json!({
        "apiVersion": api_version,
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": object.data.get("spec"),
    });
    let yaml = serde_yaml_ng::to_string(&document)
        .map_err(|e| format!("DestinationRule {namespace}/{name}: {e}"))?;
    let mut rules = config::parse_destination_rules(CLUSTER_RULES_SOURCE, &yaml)
        .map_err(|e| format!("DestinationRule {namespace}/{name}: left out: {e}"))?;
    rules
        .pop()
        .ok_or_else(|| format!("DestinationRule {namespace}/{name}: not a DestinationRule"))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small builders for the objects the index reads, in the shape the API server sends.

    use serde_json::json;

    use super::*;

    /// The file a cluster-driven agent runs with: this cluster is ack-hangzhou, one remote.
    pub(crate) const FILE: &str = r#"
node: {name: from-env, region: cn-hangzhou, cluster: ack-hangzhou}
dataplane: {tc: ["veth*"]}
kubernetes:
  clusters:
    - {name: ack-shanghai, kubeconfig: /etc/geosteer/clusters/ack-shanghai, region: cn-shanghai}
"#;

    pub(crate) fn file() -> Config {
        config::parse(FILE).unwrap()
    }

    /// Fills a store as a completed initial list does.
    pub(crate) fn load<K: Resource>(store: &mut Store<K>, objects: Vec<K>) {
        store.apply(watcher::Event::Init);
        for object in objects {
            store.apply(watcher::Event::InitApply(object));
        }
        store.apply(watcher::Event::InitDone);
    }

    /// An index on node `hz-node-1` (cn-hangzhou-b) with every store of both clusters listed
    /// and empty.
    pub(crate) fn index() -> Index {
        let mut index = Index::new(&file(), "hz-node-1");
        for cluster in &mut index.clusters {
            load(&mut cluster.services, vec![]);
            load(&mut cluster.slices, vec![]);
            load(&mut cluster.nodes, vec![]);
            load(&mut cluster.policies, vec![]);
            load(&mut cluster.rules, vec![]);
        }
        load(
            &mut index.clusters[0].nodes,
            vec![
                node("hz-node-1", "cn-hangzhou", "cn-hangzhou-b"),
                node("hz-node-2", "cn-hangzhou", "cn-hangzhou-h"),
            ],
        );
        load(
            &mut index.clusters[1].nodes,
            vec![node("sh-node-1", "cn-shanghai", "cn-shanghai-a")],
        );
        index
    }

    pub(crate) fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    pub(crate) fn node(name: &str, region: &str, zone: &str) -> PartialObjectMeta<Node> {
        from_json(json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {"name": name, "labels": {
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": zone,
            }},
        }))
    }

    /// A ClusterIP Service `default/NAME` with one TCP port `http` 80 → targetPort `http`.
    pub(crate) fn service(name: &str, vip: &str) -> K8sService {
        from_json(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "clusterIP": vip,
                "clusterIPs": [vip],
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        }))
    }

    pub(crate) fn with_annotations(
        mut service: K8sService,
        annotations: &[(&str, &str)],
    ) -> K8sService {
        service.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        service
    }

    /// An endpoint: address, node, ready.
    pub(crate) type Ep<'a> = (&'a str, &'a str, bool);

    /// EndpointSlice `default/SLICE` of Service `service`, port `http` = `port`.
    pub(crate) fn slice(service: &str, slice: &str, port: u16, endpoints: &[Ep]) -> EndpointSlice {
        let endpoints: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|(ip, node, ready)| {
                json!({
                    "addresses": [ip],
                    "nodeName": node,
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                })
            })
            .collect();
        from_json(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice,
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
    }

    /// TrafficPolicy `default/NAME`, created at `created` (seconds), with `spec` (YAML).
    pub(crate) fn policy(name: &str, created: u32, spec: &str) -> TrafficPolicy {
        let spec: serde_json::Value = serde_yaml_ng::from_str(spec).unwrap();
        from_json(json!({
            "apiVersion": "geosteer.io/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {
                "name": name,
                "namespace": "default",
                "generation": 3,
                "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
            },
            "spec": spec,
        }))
    }

    /// DestinationRule `NAMESPACE/NAME` created at `created` (seconds), with `spec` (YAML).
    pub(crate) fn rule(namespace: &str, name: &str, created: u32, spec: &str) -> DynamicObject {
        let spec: serde_json::Value = serde_yaml_ng::from_str(spec).unwrap();
        from_json(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
            },
            "spec": spec,
        }))
    }

    /// The reviews service in both clusters: two ready pods in Hangzhou, one in Shanghai.
    pub(crate) fn reviews_in_two_clusters() -> Index {
        let mut index = index();
        load(
            &mut index.clusters[0].services,
            vec![service("reviews", "172.16.0.10")],
        );
        load(
            &mut index.clusters[0].slices,
            vec![slice(
                "reviews",
                "reviews-hz",
                9080,
                &[
                    ("10.0.0.11", "hz-node-1", true),
                    ("10.0.0.12", "hz-node-2", true),
                ],
            )],
        );
        load(
            &mut index.clusters[1].slices,
            vec![slice(
                "reviews",
                "reviews-sh",
                9080,
                &[("10.1.0.11", "sh-node-1", true)],
            )],
        );
        index
    }

    /// Builds the desired state and checks the promise that it validates.
    pub(crate) fn desired(index: &Index) -> Desired {
        let desired = index.desired(&file()).expect("a desired state");
        assert_eq!(config::validate(&desired.config), vec![]);
        desired
    }

    /// `ip@cluster/region/zone` of each endpoint of the only service (` (draining)` when
    /// it is leaving).
    pub(crate) fn endpoints(desired: &Desired) -> Vec<String> {
        desired.config.services[0]
            .endpoints
            .iter()
            .map(|e| {
                let draining = if e.draining { " (draining)" } else { "" };
                format!("{}@{}/{}/{}{draining}", e.ip, e.cluster, e.region, e.zone)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
