//! The control loop's state: desired services (from the config), each backend's health (passive
//! outlier detection fed by the kernel, active probes), and the policy that turns both into the
//! per-backend weights the data path gets. Every change recomputes only the services it touches
//! and applies each with one atomic swap (see `programmer`).
//!
//! The kernel ejected flag of a backend is kept equal to "not routable": passively ejected or
//! actively unhealthy — except while the service is in panic (below minHealthPercent), where
//! Envoy ignores health, so the flags are cleared.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use geosteer_common::{BackendState, EjectEvent, ServiceKey, ServiceState};
use tracing::{info, warn};

use crate::{
    config::{self, Config},
    dataplane::Dataplane,
    outlier, policy,
    probe::{ActiveHealth, ProbeKind, ProbeSpec},
    programmer::{DesiredBackend, DesiredService, Programmer},
};

/// One service port as the controller sees it.
#[derive(Clone, Debug)]
pub struct ServiceModel {
    pub name: String,
    pub reset_on_eject: bool,
    pub key: ServiceKey,
    pub endpoints: Vec<EndpointModel>,
    pub policy: config::EffectivePolicy,
}

#[derive(Clone, Debug)]
pub struct EndpointModel {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub locality: policy::Locality,
    pub weight: u32,
}

impl EndpointModel {
    fn health_key(&self, service: &ServiceKey) -> HealthKey {
        (*service, u32::from(self.ip).to_be(), self.port.to_be())
    }
}

/// (service, backend address, backend port), the last two in network byte order.
pub type HealthKey = (ServiceKey, u32, u16);

#[derive(Clone, Debug, Default)]
pub struct BackendHealth {
    pub outlier: outlier::Host,
    pub active: ActiveHealth,
    /// The ejected flag this agent last wrote. The kernel may set the flag on its own at any
    /// time; the agent only writes on a change of its own decision, so it never clears an
    /// ejection whose event it has not processed yet.
    pub flag_written: Option<bool>,
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
    pub config: Config,
    pub services: Vec<ServiceModel>,
    /// Position of each service in `services`: lookups by key stay O(log n) at 10k services.
    by_key: BTreeMap<ServiceKey, usize>,
    pub programmer: Programmer,
    pub health: BTreeMap<HealthKey, BackendHealth>,
    pub views: BTreeMap<ServiceKey, ServiceView>,
    pub events: VecDeque<Event>,
    pub swaps: SwapStats,
    /// Bumped by every change an operator could see (a recompute, an event), so the agent
    /// republishes its state only when something moved.
    pub revision: u64,
    next_event_seq: u64,
    last_sweep: BTreeMap<ServiceKey, Duration>,
}

const MAX_EVENTS: usize = 1000;

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
                reset_on_eject: service.reset_on_eject,
                key: ServiceKey {
                    addr: u32::from(service.vip).to_be(),
                    port: port.port.to_be(),
                    proto: port.protocol.number(),
                    _pad: 0,
                },
                endpoints: service
                    .endpoints
                    .iter()
                    .map(|e| EndpointModel {
                        ip: e.ip,
                        port: port.target_port,
                        locality: policy::Locality {
                            region: e.region.clone(),
                            zone: e.zone.clone(),
                            subzone: String::new(),
                            cluster: e.cluster.clone(),
                        },
                        weight: e.weight,
                    })
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
        ("topology.kubernetes.io/region", &l.region),
        ("topology.kubernetes.io/zone", &l.zone),
        ("topology.istio.io/subzone", &l.subzone),
        ("topology.istio.io/cluster", &l.cluster),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect()
}

pub fn node_locality(config: &Config) -> policy::Locality {
    policy::Locality {
        region: config.node.region.clone(),
        zone: config.node.zone.clone(),
        subzone: String::new(),
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

fn to_policy_locality_lb(s: &config::LocalityLbSetting) -> policy::LocalityLb {
    policy::LocalityLb {
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
    }
}

fn index_by_key(services: &[ServiceModel]) -> BTreeMap<ServiceKey, usize> {
    services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key, i))
        .collect()
}

impl Controller {
    pub fn new(config: Config, programmer: Programmer) -> Self {
        let services = service_models(&config);
        Self {
            by_key: index_by_key(&services),
            config,
            services,
            programmer,
            health: BTreeMap::new(),
            views: BTreeMap::new(),
            events: VecDeque::new(),
            swaps: SwapStats::default(),
            revision: 0,
            next_event_seq: 1,
            last_sweep: BTreeMap::new(),
        }
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

    fn model(&self, key: &ServiceKey) -> Option<&ServiceModel> {
        self.by_key.get(key).map(|&i| &self.services[i])
    }

    /// Policy output for one service given the current health.
    pub fn compute(&self, service: &ServiceModel) -> policy::PolicyOutput {
        let client = node_locality(&self.config);
        let client_labels = locality_labels(&client);
        let endpoints: Vec<policy::Endpoint> = service
            .endpoints
            .iter()
            .map(|e| policy::Endpoint {
                locality: e.locality.clone(),
                labels: locality_labels(&e.locality),
                weight: e.weight,
                healthy: self
                    .health
                    .get(&e.health_key(&service.key))
                    .is_none_or(BackendHealth::routable),
            })
            .collect();
        let locality_lb = service
            .policy
            .locality_lb
            .as_ref()
            .map(to_policy_locality_lb);
        let od = service.policy.outlier_detection.as_ref();
        policy::compute(&policy::PolicyInput {
            client: &client,
            client_labels: &client_labels,
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
        DesiredService {
            name: service.name.clone(),
            key: service.key,
            backends: service
                .endpoints
                .iter()
                .zip(weights)
                .map(|(e, weight)| DesiredBackend {
                    addr: u32::from(e.ip).to_be(),
                    port: e.port.to_be(),
                    weight,
                    eject_after_5xx: od.map_or(0, |od| limit(od.consecutive_5xx_errors)),
                    eject_after_gateway: od.map_or(0, |od| limit(od.consecutive_gateway_errors)),
                })
                .collect(),
        }
    }

    /// Recomputes one service and applies it (one swap if anything changed), then brings the
    /// kernel's ejected flags and ejection budget in line.
    pub fn refresh(&mut self, dp: &mut dyn Dataplane, key: &ServiceKey) -> Result<bool> {
        let Some(service) = self.model(key).cloned() else {
            return Ok(false);
        };
        let output = self.compute(&service);
        let previous_mode = self.views.get(key).map(|v| describe_load(&v.output));
        let desired = self.desired(&service, &output);
        let started = Instant::now();
        let changed = self.programmer.apply_one(dp, &desired)?;
        if changed {
            self.swaps.observe(started.elapsed());
        }
        self.sync_kernel_health(dp, &service, output.panic)?;
        self.revision += 1;
        let now_mode = describe_load(&output);
        if previous_mode.as_deref() != Some(now_mode.as_str()) && previous_mode.is_some() {
            self.event(
                EventKind::Failover,
                format!("{}: traffic now {now_mode}", service.name),
            );
        }
        self.views.insert(
            *key,
            ServiceView {
                output,
                computed_at: Instant::now(),
            },
        );
        Ok(changed)
    }

    /// Full apply: every service (used at start and on reload).
    pub fn apply_all(&mut self, dp: &mut dyn Dataplane) -> Result<usize> {
        let wanted: Vec<ServiceKey> = self.services.iter().map(|s| s.key).collect();
        let wanted_set: std::collections::BTreeSet<ServiceKey> = wanted.iter().copied().collect();
        let stale: Vec<ServiceKey> = self
            .programmer
            .live_keys()
            .into_iter()
            .filter(|k| !wanted_set.contains(k))
            .collect();
        for key in &stale {
            self.programmer.remove_one(dp, key)?;
            self.views.remove(key);
        }
        self.health.retain(|(k, _, _), _| wanted_set.contains(k));
        let mut changed = 0;
        for key in wanted {
            changed += self.refresh(dp, &key)? as usize;
        }
        Ok(changed)
    }

    /// Writes each backend's ejected flag and the service's ejection budget.
    fn sync_kernel_health(
        &mut self,
        dp: &mut dyn Dataplane,
        service: &ServiceModel,
        panic: bool,
    ) -> Result<()> {
        let mut passive_ejected = 0;
        for e in &service.endpoints {
            let key = e.health_key(&service.key);
            let health = self.health.entry(key).or_default();
            passive_ejected += health.outlier.is_ejected() as usize;
            let Some(id) = self.programmer.backend_id(&service.key, key.1, key.2) else {
                continue;
            };
            let flag = !panic && !health.routable();
            if health.flag_written != Some(flag) {
                dp.set_ejected(id, flag)?;
                health.flag_written = Some(flag);
            }
        }
        let budget = match &service.policy.outlier_detection {
            Some(od) => outlier::ejection_budget(
                service.endpoints.len(),
                passive_ejected,
                od.max_ejection_percent,
            ),
            None => 0,
        };
        if let Some(live) = self.programmer.service(&service.key) {
            dp.write_service_state(
                live.id,
                &ServiceState {
                    eject_budget: budget as i64,
                },
            )?;
        }
        Ok(())
    }

    /// The kernel ejected a backend (consecutive errors reached the limit).
    pub fn on_kernel_ejection(
        &mut self,
        dp: &mut dyn Dataplane,
        event: &EjectEvent,
        now: Duration,
    ) -> Result<()> {
        let Some((key, addr, port)) = self.programmer.backend_by_id(event.backend_id) else {
            return Ok(());
        };
        let Some(service) = self.model(&key).cloned() else {
            return Ok(());
        };
        let Some(od) = service.policy.outlier_detection.clone() else {
            return Ok(());
        };
        let health = self.health.entry((key, addr, port)).or_default();
        if health.outlier.is_ejected() {
            return Ok(());
        }
        let length = health.outlier.eject(now, &outlier_settings(&od));
        health.flag_written = Some(true);
        // Envoy resets the consecutive counters on ejection.
        dp.write_backend_state(
            event.backend_id,
            &BackendState {
                ejected: 1,
                ejected_at_ns: event.at_ns,
                ..Default::default()
            },
        )?;
        let endpoint = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr)), u16::from_be(port));
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
        if service.reset_on_eject {
            let flows = dp.forget_flows(event.backend_id)?;
            self.event(
                EventKind::Reset,
                format!("{}: reset {flows} flows pinned to {endpoint}", service.name),
            );
        }
        Ok(())
    }

    /// The outlier `interval` timer of every service that is due: un-eject and decay.
    pub fn sweep(&mut self, dp: &mut dyn Dataplane, now: Duration) -> Result<()> {
        let due: Vec<(ServiceKey, config::OutlierDetection)> = self
            .services
            .iter()
            .filter_map(|s| Some((s.key, s.policy.outlier_detection.clone()?)))
            .filter(|(key, od)| {
                self.last_sweep
                    .get(key)
                    .is_none_or(|last| now >= *last + od.interval)
            })
            .collect();
        for (key, _) in due {
            self.last_sweep.insert(key, now);
            let mut unejected = Vec::new();
            for ((k, addr, port), health) in self.health.iter_mut() {
                if *k == key && health.outlier.sweep(now) == outlier::SweepResult::Unejected {
                    unejected.push((*addr, *port));
                }
            }
            if unejected.is_empty() {
                continue;
            }
            for (addr, port) in &unejected {
                if let Some(id) = self.programmer.backend_id(&key, *addr, *port) {
                    dp.write_backend_state(id, &BackendState::default())?;
                    if let Some(h) = self.health.get_mut(&(key, *addr, *port)) {
                        h.flag_written = Some(false);
                    }
                }
                let name = self.model(&key).map(|s| s.name.clone()).unwrap_or_default();
                let endpoint =
                    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(*addr)), u16::from_be(*port));
                self.event(
                    EventKind::Unejection,
                    format!("{name}: un-ejected {endpoint} (ejection time over)"),
                );
            }
            self.refresh(dp, &key)?;
        }
        Ok(())
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
        let endpoint = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(key.1)), u16::from_be(key.2));
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
                        target: SocketAddrV4::new(e.ip, check.port.unwrap_or(e.port)),
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
        self.services = service_models(&config);
        self.by_key = index_by_key(&self.services);
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
