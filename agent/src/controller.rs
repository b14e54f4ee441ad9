//! The control loop's state: desired services (from the config), each backend's health (passive
//! outlier detection fed by the kernel, active probes), and the policy that turns both into the
//! per-backend weights the data path gets. Every change recomputes only the services it touches
//! and applies each with one atomic swap (see `programmer`).
//!
//! One ejection truth: the kernel makes every passive ejection (atomically, within the
//! service's maxEjectionPercent) and the agent runs its clock; the agent's own routing decision
//! (active health, panic) lives in the backend entry's flags, which only the agent writes. Each
//! outlier interval a reconcile pass compares the kernel's flags with the agent's clocks and
//! repairs either side (a lost ring-buffer event, a restart), logging and counting each repair.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use geosteer_common::{
    BACKEND_FLAG_PANIC, BACKEND_FLAG_UNROUTABLE, BackendState, KernelEvent, ON_EJECT_AUTO,
    ON_EJECT_RESET,
};
use tracing::{info, warn};

use rayon::prelude::*;

use crate::{
    config::{self, Config},
    dataplane::Dataplane,
    frontend::Frontend,
    outlier, policy,
    probe::{ActiveHealth, ProbeKind, ProbeSpec},
    programmer::{Applied, DesiredBackend, DesiredService, Programmer, ServiceSettings},
    timeouts::{ConnectResult, ConnectTimeouts, Verdict},
};

/// One service port as the controller sees it.
#[derive(Clone, Debug)]
pub struct ServiceModel {
    pub name: String,
    /// `ON_EJECT_*`.
    pub on_eject: u8,
    pub key: Frontend,
    /// A dual-stack service's IPv6 frontend (`vip6`): the same service, table and health.
    pub key6: Option<Frontend>,
    pub endpoints: Vec<EndpointModel>,
    pub policy: config::EffectivePolicy,
    /// How the kernel reads the port's flows (Istio protocol selection).
    pub protocol: config::ProtocolChoice,
    /// The service's connectTimeout, or the node's default.
    pub connect_timeout: Duration,
    /// Why the service takes this cluster's endpoints only (Kubernetes), if it does.
    pub cluster_local: Option<String>,
    /// Session affinity (`sessionAffinity`), if on.
    pub affinity_timeout: Option<Duration>,
    /// Endpoints that are leaving: programmed without weight, so their open flows continue and
    /// no new one comes; not part of the policy.
    pub draining: Vec<EndpointModel>,
}

#[derive(Clone, Debug)]
pub struct EndpointModel {
    pub ip: IpAddr,
    /// Its IPv6 address in a dual-stack service (`ip6`).
    pub ip6: Option<Ipv6Addr>,
    pub port: u16,
    pub locality: policy::Locality,
    /// What failoverPriority matches besides the topology (a pod's labels, its node).
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
}

fn endpoint_model(e: &config::Endpoint, port: u16) -> EndpointModel {
    EndpointModel {
        ip: e.ip,
        ip6: match e.ip6 {
            Some(IpAddr::V6(ip6)) => Some(ip6),
            _ => None,
        },
        port,
        locality: policy::Locality {
            region: e.region.clone(),
            zone: e.zone.clone(),
            subzone: e.subzone.clone(),
            cluster: e.cluster.clone(),
        },
        labels: e.labels.clone(),
        weight: e.weight,
    }
}

impl EndpointModel {
    fn health_key(&self, service: &Frontend) -> HealthKey {
        (*service, self.ip, self.port.to_be())
    }
}

impl ServiceModel {
    /// Whether `addr:port` (network byte order) is one of its endpoints — in the host set, not
    /// leaving.
    fn has_endpoint(&self, addr: IpAddr, port: u16) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.health_key(&self.key) == (self.key, addr, port))
    }
}

/// (service, backend address, backend port), the last two in network byte order.
pub type HealthKey = (Frontend, IpAddr, u16);

/// The kernel's outlier books of some services as [`Controller::reconcile`] compares them, read
/// in this order: their ejection counts, their backends' states, then the counts again (a count
/// that moved was caught mid-change). Each part is one batch read of the whole map when the
/// services hold a good share of it, else a read per id.
///
/// A service's backend flags are read only where something may be ejected: its kernel count
/// differs from the slots the agent released, or the agent asks (it times an ejection there,
/// or it has not yet seen every flag since it started). The kernel sets a flag only after
/// taking a count slot and the agent moves both together, so a count equal to the released
/// slots means no flag — and an idle node reads one entry per service, not one per backend.
pub struct KernelHealth {
    ejections_before: HashMap<u32, i64>,
    backends: HashMap<u32, BackendState>,
    ejections_after: HashMap<u32, i64>,
}

/// What [`KernelHealth::read`] needs of one service.
pub struct ServiceBooks {
    pub service_id: u32,
    pub backend_ids: Vec<u32>,
    /// The ejection slots the agent has given back (the kernel's count minus these is the
    /// number of ejected backends).
    pub released: i64,
    /// Read the backends' flags whatever the count says.
    pub read_flags: bool,
}

impl KernelHealth {
    /// `capacity`: (maxServices, maxBackends).
    pub fn read(
        dp: &dyn Dataplane,
        services: &[ServiceBooks],
        capacity: (u32, u32),
    ) -> Result<Self> {
        let service_ids: Vec<u32> = services.iter().map(|s| s.service_id).collect();
        let ejections = |dp: &dyn Dataplane| -> Result<HashMap<u32, i64>> {
            let states = read_by_share(
                &service_ids,
                capacity.0,
                || dp.read_service_states(),
                |id| dp.read_service_state(id),
            )?;
            Ok(states
                .into_iter()
                .map(|(id, s)| (id, s.ejections))
                .collect())
        };
        let ejections_before = ejections(dp)?;
        let backend_ids: Vec<u32> = services
            .iter()
            .filter(|s| {
                s.read_flags
                    || ejections_before
                        .get(&s.service_id)
                        .copied()
                        .unwrap_or_default()
                        != s.released
            })
            .flat_map(|s| s.backend_ids.iter().copied())
            .collect();
        let backends = read_by_share(
            &backend_ids,
            capacity.1,
            || dp.read_backend_states(),
            |id| dp.read_backend_state(id),
        )?;
        let ejections_after = ejections(dp)?;
        Ok(Self {
            ejections_before,
            backends,
            ejections_after,
        })
    }

    fn ejections_before(&self, service_id: u32) -> i64 {
        self.ejections_before
            .get(&service_id)
            .copied()
            .unwrap_or_default()
    }

    fn ejections_after(&self, service_id: u32) -> i64 {
        self.ejections_after
            .get(&service_id)
            .copied()
            .unwrap_or_default()
    }

    fn backend(&self, id: u32) -> BackendState {
        self.backends.get(&id).copied().unwrap_or_default()
    }
}

/// The values of `ids` in a map of `capacity` entries: one batch read of the whole map (`all`)
/// when they are at least a sixteenth of it, else a read per id (`one`).
fn read_by_share<T: Copy + Default>(
    ids: &[u32],
    capacity: u32,
    all: impl FnOnce() -> Result<Vec<T>>,
    one: impl Fn(u32) -> Result<T>,
) -> Result<HashMap<u32, T>> {
    if ids.len() as u64 * 16 >= u64::from(capacity) {
        let all = all()?;
        Ok(ids
            .iter()
            .map(|&id| (id, all.get(id as usize).copied().unwrap_or_default()))
            .collect())
    } else {
        ids.iter().map(|&id| Ok((id, one(id)?))).collect()
    }
}

/// The health keys of one service's endpoints: a range of the health map, which is ordered by
/// service first (a sweep visits one service's endpoints, not every endpoint of the node).
fn endpoints_of(key: &Frontend) -> std::ops::RangeInclusive<HealthKey> {
    (*key, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        ..=(*key, IpAddr::V6(Ipv6Addr::from_bits(u128::MAX)), u16::MAX)
}

#[derive(Clone, Debug, Default)]
pub struct BackendHealth {
    pub outlier: outlier::Host,
    pub active: ActiveHealth,
}

impl BackendHealth {
    pub fn routable(&self) -> bool {
        !self.outlier.is_ejected() && self.active.healthy
    }
}

/// What kind of thing happened, for filtering a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The agent started or became ready.
    Agent,
    /// A backend was ejected by outlier detection.
    Ejection,
    /// A backend's ejection time was over.
    Unejection,
    /// Flows pinned to an ejected backend were reset (`resetOnEject`).
    Reset,
    /// An active health check changed a backend's state.
    Health,
    /// New flows moved between priorities (failover and back), or into or out of panic.
    Failover,
    /// A configuration reload, applied or rejected.
    Reload,
    /// Connect timeouts the kernel suspected, counted or dismissed after the agent's own
    /// connection to the backend.
    ConnectTimeout,
}

/// Something an operator wants to see in a timeline.
#[derive(Clone, Debug)]
pub struct Event {
    /// Increases by one per event: `events --follow` asks for what came after the last it saw.
    pub seq: u64,
    pub at: SystemTime,
    pub kind: EventKind,
    pub what: String,
}

/// Buckets (upper bounds, seconds) of the swap latency histogram: a swap is a table write
/// (tens of µs) plus, rarely, a grace period (ms).
pub const SWAP_LATENCY_BUCKETS: [f64; 10] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25,
];

/// Swaps (applies that changed a service in the kernel) and how long each took.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SwapStats {
    pub count: u64,
    pub seconds_sum: f64,
    /// Cumulative counts for [`SWAP_LATENCY_BUCKETS`] (same order).
    pub buckets: Vec<u64>,
}

impl SwapStats {
    pub fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.count += 1;
        self.seconds_sum += seconds;
        self.buckets.resize(SWAP_LATENCY_BUCKETS.len(), 0);
        for (count, bound) in self.buckets.iter_mut().zip(SWAP_LATENCY_BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
    }
}

/// What the last policy computation said about a service (for logs and diagnostics).
#[derive(Clone, Debug)]
pub struct ServiceView {
    pub output: policy::PolicyOutput,
    pub computed_at: Instant,
}

pub struct Controller {
    /// The desired state; replaced only by [`Controller::reload`], which keeps what is derived
    /// from it (the client's labels, the reconcile period) in step.
    config: Config,
    /// Every client on this node, as the policy sees it (from `config.node`; set with it).
    client: Client,
    pub services: Vec<ServiceModel>,
    /// Position of each service in `services`: lookups by key stay O(log n) at 10k services.
    by_key: BTreeMap<Frontend, usize>,
    pub programmer: Programmer,
    /// Health of the endpoints that have any: an endpoint without an entry is healthy and was
    /// never ejected (a million entries at 100,000 services were a tenth of a full apply).
    pub health: BTreeMap<HealthKey, BackendHealth>,
    pub views: BTreeMap<Frontend, ServiceView>,
    pub events: VecDeque<Event>,
    pub swaps: SwapStats,
    /// Bumped by every change an operator could see (a recompute, an event), so the agent
    /// republishes its state only when something moved.
    pub revision: u64,
    next_event_seq: u64,
    /// The services with outlier state to time — an endpoint ejected, or one whose ejection
    /// backoff has yet to decay — and when each was last swept. Only these have anything for
    /// the `interval` sweep to do (Envoy's timer finds nothing to change on the others), so a
    /// node with 100,000 quiet services sweeps none of them. A service enters at an ejection
    /// (the kernel's report, or one the reconcile pass adopts) and leaves when its last
    /// endpoint's state has decayed.
    outlier_active: BTreeMap<Frontend, Duration>,
    /// Where the reconcile pass goes on from: it walks every service with outlierDetection in
    /// key order, [`RECONCILE_PER_PASS`] at a time, whether or not any is active (a lost ring
    /// event is exactly an ejection the agent does not know of).
    reconcile_cursor: Option<Frontend>,
    /// Services one reconcile pass reads at most ([`RECONCILE_PER_PASS`]; tests make it small).
    reconcile_budget: usize,
    /// Whether the reconcile pass has gone round every service since the agent began: until it
    /// has, it reads every backend flag (an agent that died between two writes may have left
    /// a flag the kernel's count does not hold).
    reconciled_every_service: bool,
    /// The next reconcile pass, and the time between two: the shortest outlier `interval` of
    /// any service (None: no service has outlierDetection).
    next_reconcile: Duration,
    reconcile_every: Option<Duration>,
    /// No sweep or reconcile is due before this (ZERO after a reload: look again).
    sweep_not_before: Duration,
    /// Disagreements between the kernel's ejection flags or books and the agent's clocks that
    /// the reconcile pass repaired.
    pub reconcile_repairs: u64,
    /// Suspected connect timeouts and the checks that confirm or dismiss them.
    pub connect_timeouts: ConnectTimeouts,
}

const MAX_EVENTS: usize = 1000;
/// Most connect timeouts one check of the agent's counts (each a gateway error).
const MAX_TIMEOUTS_PER_CHECK: u32 = 64;

/// The data path's view of the config: one model per service port.
pub fn service_models(config: &Config) -> Vec<ServiceModel> {
    let mut out = Vec::new();
    for (index, service) in config.services.iter().enumerate() {
        let policy = config::effective_traffic_policy(config, index);
        for port in &service.ports {
            out.push(ServiceModel {
                name: format!(
                    "{}/{}:{}/{}",
                    service.namespace, service.name, port.port, port.protocol
                ),
                on_eject: service.on_eject_value(),
                key: Frontend::new(service.vip, port.port, port.protocol.number()),
                key6: service
                    .vip6
                    .map(|vip6| Frontend::new(vip6, port.port, port.protocol.number())),
                protocol: config::app_protocol(port),
                cluster_local: service.cluster_local.clone(),
                affinity_timeout: service.session_affinity.map(|a| a.timeout),
                connect_timeout: policy
                    .connect_timeout
                    .unwrap_or(config.dataplane.connect_timeout),
                endpoints: service
                    .endpoints
                    .iter()
                    .filter(|e| !e.draining)
                    .map(|e| endpoint_model(e, port.target_port))
                    .collect(),
                draining: service
                    .endpoints
                    .iter()
                    .filter(|e| e.draining)
                    .map(|e| endpoint_model(e, port.target_port))
                    .collect(),
                policy: policy.clone(),
            });
        }
    }
    out
}

/// Kubernetes/Istio topology labels of a locality, for `failoverPriority`.
pub fn locality_labels(l: &policy::Locality) -> BTreeMap<String, String> {
    [
        policy::REGION_LABEL,
        policy::ZONE_LABEL,
        policy::SUBZONE_LABEL,
        policy::CLUSTER_LABEL,
    ]
    .into_iter()
    .map(|key| {
        (
            key.to_string(),
            l.topology_label(key).unwrap_or_default().to_string(),
        )
    })
    .collect()
}

/// The node's locality and the labels of every client on it (see [`client_labels`]).
struct Client {
    locality: policy::Locality,
    labels: BTreeMap<String, String>,
}

impl Client {
    fn of(config: &Config) -> Self {
        let locality = node_locality(config);
        let labels = client_labels(config, &locality);
        Self { locality, labels }
    }
}

/// The labels every client on this node is taken to carry (docs/SEMANTICS.md, "Localities": the
/// source locality is the node's): the node's labels, its topology, and its name as
/// `kubernetes.io/hostname` (endpoints carry their node's name under that key, for
/// `PreferSameNode`).
fn client_labels(config: &Config, client: &policy::Locality) -> BTreeMap<String, String> {
    let mut labels = config.node.labels.clone();
    labels.extend(locality_labels(client));
    labels.insert(config::HOSTNAME_LABEL.to_string(), config.node.name.clone());
    labels
}

pub fn node_locality(config: &Config) -> policy::Locality {
    policy::Locality {
        region: config.node.region.clone(),
        zone: config.node.zone.clone(),
        subzone: config.node.subzone.clone(),
        cluster: config.node.cluster.clone(),
    }
}

fn outlier_settings(od: &config::OutlierDetection) -> outlier::Settings {
    outlier::Settings {
        interval: od.interval,
        base_ejection_time: od.base_ejection_time,
        max_ejection_percent: od.max_ejection_percent,
    }
}

/// The policy core's view of the service's locality setting: the one conversion from the
/// config types.
pub fn policy_locality_lb(policy: &config::EffectivePolicy) -> Option<policy::LocalityLb> {
    let s = policy.locality_lb.as_ref()?;
    Some(policy::LocalityLb {
        without_outlier_detection: policy.locality_from_traffic_distribution,
        enabled: s.enabled.unwrap_or(true),
        failover: s
            .failover
            .iter()
            .map(|f| policy::Failover {
                from: f.from.clone(),
                to: f.to.clone(),
            })
            .collect(),
        failover_priority: s.failover_priority.clone(),
        distribute: s
            .distribute
            .iter()
            .map(|d| policy::Distribute {
                from: d.from.clone(),
                to: d.to.clone(),
            })
            .collect(),
    })
}

/// Services a sweep reconciles at most (see [`Controller::sweep`]).
const RECONCILE_PER_PASS: usize = 4096;

/// The reconcile pass's period: the shortest outlier `interval` of any service.
fn shortest_outlier_interval(services: &[ServiceModel]) -> Option<Duration> {
    services
        .iter()
        .filter_map(|s| Some(s.policy.outlier_detection.as_ref()?.interval))
        .min()
}

/// The next `budget` services with outlierDetection after `cursor` in key order, going round
/// to the first after the last: every such service is reconciled once in every
/// ceil(n / budget) passes, and one a reload adds is reached within one round.
fn next_to_reconcile(
    services: &[ServiceModel],
    by_key: &BTreeMap<Frontend, usize>,
    cursor: Option<Frontend>,
    budget: usize,
) -> Vec<Frontend> {
    use std::ops::Bound::{Excluded, Unbounded};
    let after = match cursor {
        Some(c) => by_key.range((Excluded(c), Unbounded)),
        None => by_key.range(..),
    };
    let up_to = cursor.map(|c| by_key.range(..=c)).into_iter().flatten();
    after
        .chain(up_to)
        .filter(|(_, index)| services[**index].policy.outlier_detection.is_some())
        .map(|(key, _)| *key)
        .take(budget)
        .collect()
}

/// Services a full apply computes and applies at once, at most, and endpoints (their policy
/// outputs are in memory together).
const SERVICES_PER_APPLY: usize = 4096;
const ENDPOINTS_PER_APPLY: u64 = 65_536;

fn index_by_key(services: &[ServiceModel]) -> BTreeMap<Frontend, usize> {
    services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key, i))
        .collect()
}

impl Controller {
    pub fn new(config: Config, programmer: Programmer) -> Self {
        let services = service_models(&config);
        let reconcile_every = shortest_outlier_interval(&services);
        Self {
            by_key: index_by_key(&services),
            client: Client::of(&config),
            config,
            services,
            programmer,
            health: BTreeMap::new(),
            views: BTreeMap::new(),
            events: VecDeque::new(),
            swaps: SwapStats::default(),
            revision: 0,
            next_event_seq: 1,
            outlier_active: BTreeMap::new(),
            reconcile_cursor: None,
            reconcile_budget: RECONCILE_PER_PASS,
            reconciled_every_service: false,
            next_reconcile: Duration::ZERO,
            reconcile_every,
            sweep_not_before: Duration::ZERO,
            reconcile_repairs: 0,
            connect_timeouts: ConnectTimeouts::default(),
        }
    }

    /// The desired state the controller applies.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn event(&mut self, kind: EventKind, what: impl Into<String>) {
        let what = what.into();
        info!(event = %what);
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            seq: self.next_event_seq,
            at: SystemTime::now(),
            kind,
            what,
        });
        self.next_event_seq += 1;
        self.revision += 1;
    }

    fn model(&self, key: &Frontend) -> Option<&ServiceModel> {
        self.by_key.get(key).map(|&i| &self.services[i])
    }

    /// Policy output for one service given the current health.
    pub fn compute(&self, service: &ServiceModel) -> policy::PolicyOutput {
        let endpoints: Vec<policy::Endpoint> = service
            .endpoints
            .iter()
            .map(|e| policy::Endpoint {
                locality: Cow::Borrowed(&e.locality),
                labels: Cow::Borrowed(&e.labels),
                weight: e.weight,
                healthy: self
                    .health
                    .get(&e.health_key(&service.key))
                    .is_none_or(BackendHealth::routable),
            })
            .collect();
        let locality_lb = policy_locality_lb(&service.policy);
        let od = service.policy.outlier_detection.as_ref();
        policy::compute(&policy::PolicyInput {
            client: &self.client.locality,
            client_labels: &self.client.labels,
            endpoints: &endpoints,
            locality_lb: locality_lb.as_ref(),
            outlier_detection: od.is_some(),
            cluster_weights: service.policy.cluster_weights.as_ref(),
            min_health_percent: od.map_or(0, |od| od.min_health_percent),
        })
    }

    fn desired(&self, service: &ServiceModel, output: &policy::PolicyOutput) -> DesiredService {
        let weights = policy::maglev_weights(&output.shares);
        let od = service.policy.outlier_detection.as_ref();
        let limit = |n: u32| n.min(u16::MAX as u32) as u16;
        // Envoy's host set is what this node can route to: `distribute` has already dropped
        // the localities it does not list, so they are not in any priority.
        let host_set: usize = output.priorities.iter().map(|p| p.total).sum();
        let max_ejected = od.map_or(0, |od| {
            outlier::ejection_budget(host_set, 0, od.max_ejection_percent) as u32
        });
        let flags = |e: &EndpointModel| {
            if output.panic {
                BACKEND_FLAG_PANIC
            } else if self
                .health
                .get(&e.health_key(&service.key))
                .is_some_and(|h| !h.routable())
            {
                BACKEND_FLAG_UNROUTABLE
            } else {
                0
            }
        };
        // Each endpoint's priority level, for Maglev to apportion level by level.
        let mut level = vec![0u32; service.endpoints.len()];
        for p in &output.priorities {
            for &i in &p.endpoints {
                if let Some(l) = level.get_mut(i) {
                    *l = p.level as u32;
                }
            }
        }
        let backend = |e: &EndpointModel, weight: u32, flags: u8, group: u32| DesiredBackend {
            addr: e.ip,
            addr6: e.ip6,
            port: e.port.to_be(),
            weight,
            eject_after_5xx: od.map_or(0, |od| limit(od.consecutive_5xx_errors)),
            eject_after_gateway: od.map_or(0, |od| limit(od.consecutive_gateway_errors)),
            flags,
            group,
        };
        DesiredService {
            name: service.name.clone(),
            key: service.key,
            key6: service.key6,
            backends: service
                .endpoints
                .iter()
                .zip(weights)
                .zip(&level)
                .map(|((e, weight), &group)| backend(e, weight, flags(e), group))
                // Leaving endpoints: no slot in the table, so no new flow; their open flows
                // are left alone (not drained nor reset: a terminating pod closes its own
                // connections as it shuts down gracefully, as Envoy leaves a draining host's).
                .chain(
                    service
                        .draining
                        .iter()
                        .filter(|d| !service.endpoints.iter().any(|e| e.ip == d.ip))
                        .map(|e| backend(e, 0, 0, 0)),
                )
                .collect(),
            settings: ServiceSettings {
                app_protocol: service.protocol.protocol.kernel_value(),
                connect_timeout_ns: service.connect_timeout.as_nanos().min(u64::MAX as u128) as u64,
                max_ejected,
                on_eject: service.on_eject,
                affinity_timeout_s: service
                    .affinity_timeout
                    .map_or(0, |t| t.as_secs().clamp(1, u64::from(u32::MAX)) as u32),
            },
        }
    }

    /// Recomputes one service and applies it (one swap if anything changed), then brings the
    /// kernel's ejected flags and ejection budget in line.
    pub fn refresh(&mut self, dp: &mut dyn Dataplane, key: &Frontend) -> Result<bool> {
        let Some(&index) = self.by_key.get(key) else {
            return Ok(false);
        };
        let output = self.compute(&self.services[index]);
        let desired = self.desired(&self.services[index], &output);
        let started = Instant::now();
        let changed = self.programmer.apply_one(dp, &desired)?;
        if changed {
            self.swaps.observe(started.elapsed());
        }
        self.applied(index, output);
        Ok(changed)
    }

    /// The books once `service`'s policy `output` is live.
    /// The books once the policy `output` of service `index` is live.
    fn applied(&mut self, index: usize, output: policy::PolicyOutput) {
        let service = &self.services[index];
        let key = service.key;
        let previous_mode = self.views.get(&key).map(|v| describe_load(&v.output));
        self.revision += 1;
        let now_mode = describe_load(&output);
        if previous_mode.as_deref() != Some(now_mode.as_str()) && previous_mode.is_some() {
            let message = format!("{}: traffic now {now_mode}", service.name);
            self.event(EventKind::Failover, message);
        }
        self.views.insert(
            key,
            ServiceView {
                output,
                computed_at: Instant::now(),
            },
        );
    }

    /// Full apply: every service (used at start and on reload).
    pub fn apply_all(&mut self, dp: &mut dyn Dataplane) -> Result<usize> {
        let wanted: Vec<Frontend> = self.services.iter().map(|s| s.key).collect();
        let wanted_set: std::collections::BTreeSet<Frontend> = wanted.iter().copied().collect();
        let stale: Vec<Frontend> = self
            .programmer
            .live_keys()
            .into_iter()
            .filter(|k| !wanted_set.contains(k))
            .collect();
        for key in &stale {
            self.programmer.remove_one(dp, key)?;
            self.views.remove(key);
        }
        // An endpoint that left is forgotten: if it comes back it is a new host (Envoy), with no
        // inherited ejection or backoff.
        if !self.health.is_empty() {
            let wanted_endpoints: std::collections::BTreeSet<HealthKey> = self
                .services
                .iter()
                .flat_map(|s| s.endpoints.iter().map(|e| e.health_key(&s.key)))
                .collect();
            self.health.retain(|key, _| wanted_endpoints.contains(key));
        }
        // Tables that shrink first, so the chunks they give back make room for those that
        // grow; a service refused for want of room is tried again once the others are in, and
        // one that still fails does not keep the rest from being applied.
        let growth = |s: &ServiceModel| {
            let needed = crate::maglev::table_chunks_for(s.endpoints.len());
            let live = self
                .programmer
                .service(&s.key)
                .map_or(0, |l| l.entry.table_chunks());
            i64::from(needed) - i64::from(live)
        };
        let mut order: Vec<(i64, usize)> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (growth(s), i))
            .collect();
        order.sort_by_key(|(g, _)| *g);
        let mut changed = 0;
        let mut refused = Vec::new();
        // In groups, each computed on every CPU and then applied at once, so that new services
        // are written together (one batch per map) and only a group's policies are in memory.
        let groups = crate::programmer::bounded_groups(
            &order,
            SERVICES_PER_APPLY,
            ENDPOINTS_PER_APPLY,
            |&(_, i)| self.services[i].endpoints.len() as u64,
        );
        for group in groups {
            let computed: Vec<(usize, policy::PolicyOutput, DesiredService)> = group
                .par_iter()
                .map(|&(_, i)| {
                    let service = &self.services[i];
                    let output = self.compute(service);
                    let desired = self.desired(service, &output);
                    (i, output, desired)
                })
                .collect();
            let desired: Vec<&DesiredService> = computed.iter().map(|(_, _, d)| d).collect();
            let started = Instant::now();
            let results = self.programmer.apply_each(dp, &desired);
            let written = results
                .iter()
                .filter(|r| matches!(r, Ok(Applied::Written { .. })))
                .count();
            if written > 0 {
                // One swap each, at the group's average cost.
                let each = started.elapsed() / written as u32;
                for _ in 0..written {
                    self.swaps.observe(each);
                }
            }
            for ((i, output, _), result) in computed.into_iter().zip(results) {
                match result {
                    Ok(applied) => {
                        changed += usize::from(applied != Applied::Unchanged);
                        self.applied(i, output);
                    }
                    Err(e) => refused.push((self.services[i].key, e)),
                }
            }
        }
        let mut first_error = None;
        for (key, first) in refused {
            match self.refresh(dp, &key) {
                Ok(c) => changed += c as usize,
                Err(_) => {
                    first_error.get_or_insert(first);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// The kernel suspects a connect timeout of `backend_id` (see [`crate::timeouts`]).
    /// Returns the endpoint to connect to when a check must start.
    pub fn on_connect_timeout(&mut self, backend_id: u32) -> Option<SocketAddr> {
        let (_, addr, port) = self.programmer.backend_by_id(backend_id)?;
        let endpoint = SocketAddr::new(addr, u16::from_be(port));
        self.connect_timeouts
            .suspect(backend_id, endpoint)
            .then_some(endpoint)
    }

    /// The agent's own connection to a backend with suspected connect timeouts ended: count
    /// them in the kernel if it failed too, dismiss them if the backend accepted it, leave them
    /// uncounted if it failed on this node.
    pub fn on_connect_check(
        &mut self,
        dp: &mut dyn Dataplane,
        backend_id: u32,
        endpoint: SocketAddr,
        result: ConnectResult,
    ) -> Result<()> {
        let Some(verdict) = self.connect_timeouts.checked(backend_id, endpoint, result) else {
            return Ok(());
        };
        let service = self
            .programmer
            .backend_by_id(backend_id)
            .and_then(|(key, _, _)| self.model(&key))
            .map_or_else(|| format!("backend id {backend_id}"), |m| m.name.clone());
        let (addr, port) = (endpoint.ip(), endpoint.port().to_be());
        match verdict {
            Verdict::Dismiss(n) => {
                dp.dismiss_connect_timeouts(backend_id, addr, port)?;
                self.event(
                    EventKind::ConnectTimeout,
                    format!(
                        "{service}: {n} connect timeout(s) of {endpoint} not counted: it \
                         accepted the agent's own connection (lost or crafted SYNs)"
                    ),
                );
            }
            Verdict::Inconclusive(n) => self.event(
                EventKind::ConnectTimeout,
                format!(
                    "{service}: {n} connect timeout(s) of {endpoint} not counted: the agent's \
                     own connection failed on this node (no local port, route or permission)"
                ),
            ),
            Verdict::Count(n) => {
                // Enough to reach any ejection limit in use; bounds the synchronous test run.
                let n = n.min(MAX_TIMEOUTS_PER_CHECK);
                if dp.count_connect_timeouts(backend_id, addr, port, n)? {
                    self.connect_timeouts.counted(n);
                    self.event(
                        EventKind::ConnectTimeout,
                        format!(
                            "{service}: {n} connect timeout(s) of {endpoint} counted: the \
                             agent's own connection failed too"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// The kernel ejected a backend (consecutive errors reached the limit).
    pub fn on_kernel_ejection(
        &mut self,
        dp: &mut dyn Dataplane,
        event: &KernelEvent,
        now: Duration,
    ) -> Result<()> {
        let Some((key, addr, port)) = self.programmer.backend_by_id(event.backend_id) else {
            return Ok(());
        };
        let Some(service) = self.model(&key).cloned() else {
            return Ok(());
        };
        let Some(od) = service.policy.outlier_detection.clone() else {
            // Ejected under outlier settings a reload has since removed (the event was on its
            // way): no ejection now, as for the service's other ejections (the orphan path of
            // the sweep), or the host would stay out of rotation for good.
            if dp.read_backend_state(event.backend_id)?.ejected != 0 {
                dp.write_backend_state(event.backend_id, &BackendState::default())?;
                self.programmer.release_ejections(dp, &key, 1)?;
            }
            return Ok(());
        };
        if !service.has_endpoint(addr, port) {
            // A leaving (draining) endpoint's own flows tripped it: it takes no new flows and
            // is out of the host set, so no ejection (the slot goes back, as for a removal).
            if dp.read_backend_state(event.backend_id)?.ejected != 0 {
                dp.write_backend_state(event.backend_id, &BackendState::default())?;
                self.programmer.release_ejections(dp, &key, 1)?;
            }
            return Ok(());
        }
        let health = self.health.entry((key, addr, port)).or_default();
        if health.outlier.is_ejected() {
            return Ok(());
        }
        // The kernel has already reset the consecutive counters (Envoy does on ejection).
        let length = health.outlier.eject(now, &outlier_settings(&od));
        self.outlier_state_began(key, now);
        let endpoint = SocketAddr::new(addr, u16::from_be(port));
        let reason = if event.consecutive_5xx >= od.consecutive_5xx_errors as u64
            && od.consecutive_5xx_errors != 0
        {
            format!("{} consecutive 5xx", event.consecutive_5xx)
        } else {
            format!("{} consecutive gateway errors", event.consecutive_gateway)
        };
        self.event(
            EventKind::Ejection,
            format!(
                "{}: ejected {endpoint} ({reason}) for {:?}",
                service.name, length
            ),
        );
        // New table first, so the reset flows find a healthy backend.
        self.refresh(dp, &key)?;
        self.end_flows(dp, &service, event.backend_id, endpoint)
    }

    /// The open flows of a backend that left rotation, per the service's `onEject`: `reset`
    /// forgets them all (their next packet is steered anew and meets a RST), the default
    /// forgets all but HTTP/1.x flows (which the kernel drains at their next request),
    /// `drain` and `keep` leave them to the kernel.
    fn end_flows(
        &mut self,
        dp: &mut dyn Dataplane,
        service: &ServiceModel,
        backend_id: u32,
        endpoint: SocketAddr,
    ) -> Result<()> {
        let keep_http = match service.on_eject {
            ON_EJECT_RESET => false,
            // A port declared HTTP/1.x has only HTTP/1.x flows to speak of (the kernel drains
            // them), so the walk over conntrack is skipped; a connection upgraded off HTTP
            // (WebSocket) stays, as it does through Envoy.
            ON_EJECT_AUTO if service.protocol.protocol == config::AppProtocol::Http1 => {
                return Ok(());
            }
            ON_EJECT_AUTO => true,
            _ => return Ok(()),
        };
        // Queued: the conntrack sweep ends them within a few control-loop ticks, in bounded
        // steps, and reports how many went.
        dp.forget_flows(backend_id, keep_http)?;
        self.event(
            EventKind::Reset,
            format!(
                "{}: ending the {}flows pinned to {endpoint}",
                service.name,
                if keep_http { "non-HTTP " } else { "" }
            ),
        );
        Ok(())
    }

    /// The outlier `interval` timer: reconcile the kernel's books with the agent's (a slice of
    /// the services at a time), then un-eject and decay in the services with outlier state.
    pub fn sweep(&mut self, dp: &mut dyn Dataplane, now: Duration) -> Result<()> {
        // Called every tick; does something only when a reconcile or a service is due.
        if now < self.sweep_not_before {
            return Ok(());
        }
        let mut reconciled = Ok(());
        if let Some(every) = self.reconcile_every
            && now >= self.next_reconcile
        {
            // Next time even if this one fails (no retry every tick); un-ejections go on.
            self.next_reconcile = now + every;
            reconciled = self.reconcile_pass(dp, now);
        }
        let swept = self.sweep_pass(dp, now);
        let next_sweep = self
            .outlier_active
            .iter()
            .map(|(key, last)| match self.outlier_settings_of(key) {
                Some(od) => *last + od.interval,
                None => now,
            })
            .min();
        let next_reconcile = self.reconcile_every.map(|_| self.next_reconcile);
        self.sweep_not_before = next_sweep
            .into_iter()
            .chain(next_reconcile)
            .min()
            .unwrap_or(Duration::MAX);
        reconciled.context("reconciling the kernel's ejections")?;
        swept
    }

    fn outlier_settings_of(&self, key: &Frontend) -> Option<&config::OutlierDetection> {
        self.model(key)?.policy.outlier_detection.as_ref()
    }

    /// A service now has outlier state to time (an endpoint was ejected); one that had already
    /// keeps the phase of its timer.
    fn outlier_state_began(&mut self, key: Frontend, now: Duration) {
        self.outlier_active.entry(key).or_insert(now);
        // Its first sweep may come before the one planned (a reload shortened the interval).
        self.sweep_not_before = self.sweep_not_before.min(now);
    }

    /// Compares the kernel's books with the agent's for the next [`RECONCILE_PER_PASS`]
    /// services with outlierDetection: bounded, so a pass stays cheap at 100,000 services, and
    /// every service is reached every ceil(N / RECONCILE_PER_PASS) passes.
    fn reconcile_pass(&mut self, dp: &mut dyn Dataplane, now: Duration) -> Result<()> {
        let chosen = next_to_reconcile(
            &self.services,
            &self.by_key,
            self.reconcile_cursor,
            self.reconcile_budget,
        );
        let books: Vec<ServiceBooks> = chosen
            .iter()
            .filter_map(|key| Some((key, self.programmer.service(key)?)))
            .map(|(key, live)| ServiceBooks {
                service_id: live.id,
                backend_ids: live.backend_ids(),
                released: live.ejections_released,
                read_flags: !self.reconciled_every_service
                    || self
                        .health
                        .range(endpoints_of(key))
                        .any(|(_, h)| h.outlier.is_ejected()),
            })
            .collect();
        let kernel = match books.is_empty() {
            true => None,
            false => Some(KernelHealth::read(dp, &books, self.programmer.capacity())?),
        };
        // Moved on only once the books are read (a failed read is tried again next time); a
        // slice that goes round past the end completes the first round, all of whose flags
        // were read, this slice's too.
        if let (Some(last), Some(cursor)) = (chosen.last(), self.reconcile_cursor)
            && *last <= cursor
        {
            self.reconciled_every_service = true;
        }
        self.reconcile_cursor = chosen.last().copied().or(self.reconcile_cursor);
        let Some(kernel) = kernel else {
            return Ok(());
        };
        for key in chosen {
            let Some(od) = self.outlier_settings_of(&key).cloned() else {
                continue;
            };
            if self.reconcile(dp, &key, &od, now, &kernel)? {
                self.refresh(dp, &key)?;
            }
        }
        Ok(())
    }

    /// The `interval` timer of each service with outlier state that is due (Envoy
    /// `OutlierDetectorImpl::onIntervalTimer`): un-eject the hosts whose time is over, decay
    /// the backoff of the others; a service whose state has all decayed leaves the set.
    fn sweep_pass(&mut self, dp: &mut dyn Dataplane, now: Duration) -> Result<()> {
        let due: Vec<Frontend> = self
            .outlier_active
            .iter()
            .filter(|(key, last)| {
                // A service gone from the config or without outlierDetection now: due at once.
                self.outlier_settings_of(key)
                    .is_none_or(|od| now >= **last + od.interval)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            if self.model(&key).is_none() {
                // Removed by a reload, its health books with it.
                self.outlier_active.remove(&key);
                continue;
            }
            if self.outlier_settings_of(&key).is_none() {
                self.drop_orphaned_ejections(dp, &key)?;
                self.outlier_active.remove(&key);
                continue;
            }
            let mut unejected = Vec::new();
            let mut state_left = false;
            for ((_, addr, port), health) in self.health.range_mut(endpoints_of(&key)) {
                if health.outlier.sweep(now) == outlier::SweepResult::Unejected {
                    unejected.push((*addr, *port));
                }
                state_left |= health.outlier.is_ejected() || health.outlier.backoff > 0;
            }
            if state_left {
                self.outlier_active.insert(key, now);
            } else {
                self.outlier_active.remove(&key);
            }
            if unejected.is_empty() {
                continue;
            }
            for (addr, port) in &unejected {
                if let Some(id) = self.programmer.backend_id(&key, *addr, *port) {
                    // The kernel ignores an ejected host's signals, so nothing races this write;
                    // counters start from zero (Envoy).
                    if dp.read_backend_state(id)?.ejected != 0 {
                        dp.write_backend_state(id, &BackendState::default())?;
                        self.programmer.release_ejections(dp, &key, 1)?;
                    }
                }
                let name = self.model(&key).map(|s| s.name.clone()).unwrap_or_default();
                let endpoint = SocketAddr::new(*addr, u16::from_be(*port));
                self.event(
                    EventKind::Unejection,
                    format!("{name}: un-ejected {endpoint} (ejection time over)"),
                );
            }
            self.refresh(dp, &key)?;
        }
        Ok(())
    }

    /// A service that lost its outlierDetection (a reload) keeps no ejection.
    fn drop_orphaned_ejections(&mut self, dp: &mut dyn Dataplane, key: &Frontend) -> Result<()> {
        for (_, health) in self.health.range_mut(endpoints_of(key)) {
            health.outlier = outlier::Host {
                ejections_total: health.outlier.ejections_total,
                ..outlier::Host::default()
            };
        }
        // Every flag of the service, also those the agent never heard of.
        let backend_ids: Vec<u32> = self
            .programmer
            .service(key)
            .map(crate::programmer::LiveService::backend_ids)
            .unwrap_or_default();
        let mut cleared = 0i64;
        for id in backend_ids {
            if dp.read_backend_state(id)?.ejected != 0 {
                dp.write_backend_state(id, &BackendState::default())?;
                cleared += 1;
            }
        }
        if cleared > 0 {
            self.programmer.release_ejections(dp, key, cleared)?;
        }
        self.refresh(dp, key)?;
        Ok(())
    }

    /// Compares the kernel's ejection flags and count with the agent's clocks for one service
    /// and repairs the difference: a kernel ejection the agent never heard of (a lost ring
    /// event, an agent restart) gets a clock; an ejection the agent is timing but the kernel
    /// lost gets its flag back; the kernel's count of current ejections is set to the number
    /// of flags. Returns whether anything was repaired.
    pub fn reconcile(
        &mut self,
        dp: &mut dyn Dataplane,
        key: &Frontend,
        od: &config::OutlierDetection,
        now: Duration,
        kernel: &KernelHealth,
    ) -> Result<bool> {
        let Some(&index) = self.by_key.get(key) else {
            return Ok(false);
        };
        let Some(live) = self.programmer.service(key) else {
            return Ok(false);
        };
        let service_id = live.id;
        let released = live.ejections_released;
        // Read before the flags: an ejection the kernel makes in between then shows in the flags
        // but not in this count, which errs on the side of ejecting less until the next pass.
        let ejections = kernel.ejections_before(service_id);
        // The common case, checked without a lookup per endpoint: nothing ejected on either
        // side and the kernel's count agrees (at 100,000 services this pass runs every second).
        let nothing_ejected = ejections == released
            && kernel.ejections_after(service_id) == ejections
            && !live
                .backends
                .values()
                .any(|(id, _)| kernel.backend(*id).ejected != 0)
            && !self
                .health
                .range(endpoints_of(key))
                .any(|(_, h)| h.outlier.is_ejected());
        if nothing_ejected {
            return Ok(false);
        }
        let mut repairs = Vec::new();
        let mut adopted = Vec::new();
        let mut flagged = 0i64;
        for e in &self.services[index].endpoints {
            let health_key = e.health_key(key);
            let Some(id) = self.programmer.backend_id(key, health_key.1, health_key.2) else {
                continue;
            };
            let state = kernel.backend(id);
            let health = self.health.entry(health_key).or_default();
            let endpoint = SocketAddr::new(e.ip, e.port);
            match (state.ejected != 0, health.outlier.is_ejected()) {
                (true, false) => {
                    let length = health.outlier.eject(now, &outlier_settings(od));
                    repairs.push(format!(
                        "kernel had ejected {endpoint} unknown to the agent: ejected for {length:?}"
                    ));
                    adopted.push((id, endpoint));
                }
                (false, true) => {
                    dp.write_backend_state(
                        id,
                        &BackendState {
                            ejected: 1,
                            ..BackendState::default()
                        },
                    )?;
                    repairs.push(format!(
                        "kernel had lost the ejection of {endpoint}: flag restored"
                    ));
                }
                _ => {}
            }
            flagged += (state.ejected != 0 || health.outlier.is_ejected()) as i64;
        }
        // A leaving (draining) endpoint is out of the host set: a flag on it is cleared and its
        // slot given back with the books below (if it comes back it is a new host, Envoy).
        let leaving: Vec<(IpAddr, u16, u32)> = self
            .programmer
            .service(key)
            .into_iter()
            .flat_map(|live| &live.backends)
            .filter(|((addr, port), _)| !self.services[index].has_endpoint(*addr, *port))
            .map(|((addr, port), (id, _))| (*addr, *port, *id))
            .collect();
        for (addr, port, id) in leaving {
            if kernel.backend(id).ejected != 0 {
                dp.write_backend_state(id, &BackendState::default())?;
                let endpoint = SocketAddr::new(addr, u16::from_be(port));
                repairs.push(format!(
                    "kernel had ejected leaving {endpoint}: flag cleared"
                ));
            }
        }
        // A count that moved while the flags were read was caught mid-change (an ejection, or a
        // refused attempt's slot given back): repair nothing on it; the next pass looks again.
        let settled = kernel.ejections_after(service_id) == ejections;
        if settled && ejections - released != flagged {
            self.programmer
                .set_ejections_released(dp, key, ejections - flagged)?;
            repairs.push(format!(
                "kernel counted {} current ejections, {flagged} hosts are ejected: books repaired",
                ejections - released
            ));
        }
        let repaired = !repairs.is_empty();
        if !repaired {
            return Ok(false);
        }
        let service = self.services[index].clone();
        for repair in repairs {
            warn!(service = %service.name, "reconcile: {repair}");
            self.reconcile_repairs += 1;
            self.event(
                EventKind::Ejection,
                format!("{}: reconcile: {repair}", service.name),
            );
        }
        // An adopted ejection gets what a reported one gets: the new table, then its flows end.
        if !adopted.is_empty() {
            self.outlier_state_began(*key, now);
            self.refresh(dp, key)?;
            for (id, endpoint) in adopted {
                self.end_flows(dp, &service, id, endpoint)?;
            }
        }
        Ok(repaired)
    }

    /// An active probe result.
    pub fn on_probe(
        &mut self,
        dp: &mut dyn Dataplane,
        key: HealthKey,
        result: Result<(), String>,
    ) -> Result<()> {
        let Some(service) = self.model(&key.0).cloned() else {
            return Ok(());
        };
        let Some(check) = service.policy.health_check.clone() else {
            return Ok(());
        };
        let health = self.health.entry(key).or_default();
        let Some(healthy) = health.active.record(
            result.is_ok(),
            check.healthy_threshold,
            check.unhealthy_threshold,
        ) else {
            return Ok(());
        };
        let endpoint = SocketAddr::new(key.1, u16::from_be(key.2));
        match (healthy, result) {
            (true, _) => self.event(
                EventKind::Health,
                format!("{}: {endpoint} passes active checks", service.name),
            ),
            (false, Err(why)) => self.event(
                EventKind::Health,
                format!("{}: {endpoint} fails active checks ({why})", service.name),
            ),
            (false, Ok(())) => {}
        }
        self.refresh(dp, &key.0)?;
        if !healthy && let Some(id) = self.programmer.backend_id(&key.0, key.1, key.2) {
            self.end_flows(dp, &service, id, endpoint)?;
        }
        Ok(())
    }

    /// Probes to run: one per endpoint of every service with a healthCheck.
    pub fn probe_specs(&self) -> Vec<(HealthKey, ProbeSpec, Duration)> {
        let mut out = Vec::new();
        for service in &self.services {
            let Some(check) = &service.policy.health_check else {
                continue;
            };
            for e in &service.endpoints {
                let kind = match check.kind {
                    config::HealthCheckKind::Tcp => ProbeKind::Tcp,
                    config::HealthCheckKind::Http => ProbeKind::Http {
                        path: check.path.clone(),
                    },
                };
                out.push((
                    e.health_key(&service.key),
                    ProbeSpec {
                        kind,
                        target: SocketAddr::new(e.ip, check.port.unwrap_or(e.port)),
                        timeout: check.timeout,
                    },
                    check.interval,
                ));
            }
        }
        out
    }

    /// Replaces the desired state; health of endpoints that stay is kept.
    pub fn reload(&mut self, dp: &mut dyn Dataplane, config: Config) -> Result<usize> {
        let had_outlier_detection: Vec<Frontend> = self
            .services
            .iter()
            .filter(|s| s.policy.outlier_detection.is_some())
            .map(|s| s.key)
            .collect();
        self.services = service_models(&config);
        self.by_key = index_by_key(&self.services);
        // A service that lost its outlierDetection has its ejections dropped at the next sweep,
        // also those the agent never heard of (the reconcile pass no longer visits it).
        for key in had_outlier_detection {
            if self.model(&key).is_some() && self.outlier_settings_of(&key).is_none() {
                self.outlier_active.entry(key).or_insert(Duration::ZERO);
            }
        }
        self.reconcile_every = shortest_outlier_interval(&self.services);
        self.next_reconcile = Duration::ZERO;
        self.sweep_not_before = Duration::ZERO;
        self.client = Client::of(&config);
        self.config = config;
        let changed = self.apply_all(dp)?;
        if changed > 0 {
            warn!(changed, "services changed on reload");
        }
        Ok(changed)
    }
}

/// "P0 100% (cn-hangzhou)" style summary of where new flows go.
pub fn describe_load(output: &policy::PolicyOutput) -> String {
    let mut parts: Vec<String> = output
        .priorities
        .iter()
        .filter(|p| p.load_percent > 0.05)
        .map(|p| format!("P{} {:.1}%", p.level, p.load_percent))
        .collect();
    if output.panic {
        parts.push("panic".into());
    }
    if parts.is_empty() {
        "nowhere (no routable endpoint)".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests;
