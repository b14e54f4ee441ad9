//! What the agent tells operators: a snapshot of its policy and health state, published after
//! every change and served on the admin socket (JSON) and to the metrics endpoint.
//!
//! The serialized field names are an interface: the `geosteer` CLI of another version may read
//! them, so fields are only ever added.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    controller::{self, Controller, EventKind, SwapStats},
    policy,
};

/// Everything the admin socket serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectTimeoutInfo {
    pub confirmed: u64,
    pub dismissed: u64,
    #[serde(default)]
    pub inconclusive: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub agent: AgentInfo,
    pub attachments: Vec<AttachmentInfo>,
    /// Shared between snapshots while no service changed (see [`StatusCache`]).
    pub services: Arc<Vec<ServiceStatus>>,
    pub events: Vec<EventInfo>,
    pub swaps: SwapStats,
    /// Disagreements between the kernel's ejection books and the agent's that the reconcile
    /// pass repaired (a lost ring event, an agent restart).
    #[serde(default)]
    pub reconcile_repairs: u64,
    /// Connect timeouts the kernel suspected: counted after the agent's own connection
    /// failed too, or dismissed because the backend accepted it.
    #[serde(default)]
    pub connect_timeouts: ConnectTimeoutInfo,
    #[serde(default)]
    pub conntrack: ConntrackInfo,
    /// Kernel memory of the maps on this node, and the limit it was checked against.
    #[serde(default)]
    pub memory: crate::memory::MemoryPlan,
    /// The Kubernetes source, in Kubernetes mode: clusters, staleness, the TrafficPolicies this
    /// node does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kube::SourceStatus>,
}

/// The conntrack GC as the agent last saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConntrackInfo {
    /// Seconds between GC passes.
    pub gc_interval_s: f64,
    /// The last complete pass: when (RFC 3339), what it saw and removed.
    pub last_pass_at: Option<String>,
    pub last_pass_ms: f64,
    /// Entries (both halves) and flows the last pass saw.
    pub entries: u64,
    pub flows: u64,
    pub passes: u64,
    pub expired: u64,
    pub orphans: u64,
    /// Flows ended for `onEject`.
    pub ended: u64,
}

/// When the control loop last ran: `/readyz` turns red when it stops (a blocked loop applies no
/// config and ejects no one, while the kernel keeps steering on stale state).
#[derive(Debug, Default)]
pub struct Heartbeat(std::sync::atomic::AtomicU64);

impl Heartbeat {
    /// Records a turn of the loop at `now` (CLOCK_MONOTONIC).
    pub fn beat(&self, now: std::time::Duration) {
        self.0
            .store(now.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last turn (None before the first).
    pub fn age(&self, now: std::time::Duration) -> Option<std::time::Duration> {
        let last = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (last != 0).then(|| {
            std::time::Duration::from_millis((now.as_millis() as u64).saturating_sub(last))
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub node: String,
    pub region: String,
    pub zone: String,
    pub cluster: String,
    /// RFC 3339.
    pub started_at: String,
    /// Programs attached and the first config applied (what `/readyz` says).
    pub ready: bool,
    /// None: the built-in configuration.
    pub config_path: Option<String>,
    pub pin_path: String,
    /// 1 for the config the agent started with, +1 per applied reload.
    pub generation: u64,
    pub last_reload: Option<ReloadInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadResult {
    /// Applied: the running state follows the new file.
    Applied,
    /// The file is invalid; the running state was kept.
    Rejected,
    /// The file is valid but writing it into the kernel failed.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadInfo {
    pub at: String,
    /// "SIGHUP" or "file change".
    pub trigger: String,
    pub result: ReloadResult,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub interface: String,
    /// `tc-ingress`, `tc-egress`, `xdp-native`, `xdp-generic`, or `xdp` (re-adopted link, mode
    /// as before).
    pub hook: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `namespace/name:port/PROTOCOL`.
    pub name: String,
    pub vip: IpAddr,
    /// A dual-stack service's IPv6 VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip6: Option<IpAddr>,
    pub port: u16,
    pub protocol: String,
    /// Index of the service in the kernel maps (counters); None if not programmed.
    pub service_id: Option<u32>,
    /// Which rule shaped the shares: plain, failover, failover-priority, distribute,
    /// cluster-weights.
    pub mode: String,
    pub locality_weighted: bool,
    pub panic: bool,
    /// Where new flows go, e.g. "P0 70.0%, P1 30.0%".
    pub load: String,
    pub priorities: Vec<PriorityStatus>,
    /// Locality (or cluster) groups when locality weighting is on.
    pub localities: Vec<LocalityStatus>,
    pub backends: Vec<BackendStatus>,
    /// Where each part of the policy comes from.
    pub sources: Vec<String>,
    /// How the kernel reads the port's flows for health signals: `http/1.x`, `opaque` or
    /// `detect`, and the rule that chose it.
    #[serde(default)]
    pub signals: String,
    #[serde(default)]
    pub signals_reason: String,
    /// Connect timeout in force (Istio `connectionPool.tcp.connectTimeout`), e.g. `10s`.
    #[serde(default)]
    pub connect_timeout: String,
    /// The clusters the endpoints come from (this one first when it has any).
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Why the service is kept to this cluster (not merged with remote clusters), if it is.
    #[serde(default)]
    pub cluster_local: Option<String>,
    /// Session affinity timeout, e.g. `3h`, when the service has `sessionAffinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
}

impl Default for ServiceStatus {
    fn default() -> Self {
        ServiceStatus {
            name: String::new(),
            vip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            vip6: None,
            port: 0,
            protocol: String::new(),
            service_id: None,
            mode: String::new(),
            locality_weighted: false,
            panic: false,
            load: String::new(),
            priorities: Vec::new(),
            localities: Vec::new(),
            backends: Vec::new(),
            sources: Vec::new(),
            signals: String::new(),
            signals_reason: String::new(),
            connect_timeout: String::new(),
            clusters: Vec::new(),
            cluster_local: None,
            session_affinity: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PriorityStatus {
    pub level: usize,
    pub healthy: usize,
    pub total: usize,
    pub health_percent: f64,
    pub load_percent: f64,
    pub panic: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalityStatus {
    pub priority: usize,
    pub name: String,
    pub configured_weight: f64,
    pub effective_weight_percent: f64,
    pub healthy: usize,
    pub total: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `ip:port` (the DNAT target).
    pub address: String,
    /// A dual-stack service's endpoint's `[ip6]:port` (the IPv6 flows' DNAT target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
    /// Kernel backend id (counters); None if not programmed.
    pub backend_id: Option<u32>,
    /// `region/zone/subzone`.
    pub locality: String,
    pub cluster: String,
    /// Configured endpoint weight.
    pub weight: u32,
    /// Share of the service's new flows this backend gets now, in percent.
    pub share_percent: f64,
    /// Priority level; None when the endpoint is in no priority (weight 0, or dropped by a
    /// distribute / cluster-weight rule).
    pub priority: Option<usize>,
    pub ejected: bool,
    /// RFC 3339, while ejected.
    pub ejected_until: Option<String>,
    pub ejections_total: u64,
    /// Active health check verdict; None without a health check.
    pub active_healthy: Option<bool>,
    /// Not ejected and not failing active checks.
    pub routable: bool,
    /// Leaving (a terminating pod): keeps its open flows, takes no new ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventInfo {
    pub seq: u64,
    pub at: String,
    pub kind: EventKind,
    pub message: String,
}

/// What the agent knows beyond the controller: how it runs.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub started_at: Option<SystemTime>,
    pub ready: bool,
    pub config_path: Option<String>,
    pub pin_path: String,
    pub generation: u64,
    pub last_reload: Option<ReloadInfo>,
    pub attachments: Vec<AttachmentInfo>,
    pub conntrack: ConntrackInfo,
    pub memory: crate::memory::MemoryPlan,
    pub kubernetes: Option<crate::kube::SourceStatus>,
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

pub fn mode_name(mode: policy::Mode) -> &'static str {
    match mode {
        policy::Mode::Plain => "plain",
        policy::Mode::Failover => "failover",
        policy::Mode::FailoverPriority => "failover-priority",
        policy::Mode::Distribute => "distribute",
        policy::Mode::ClusterWeights => "cluster-weights",
    }
}

/// Rounded to 0.001: enough for percentages, and stable to read in JSON.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The services' part of the snapshot, built again only when the controller's revision moved
/// (every change to what it shows bumps it). The rest of a snapshot — conntrack passes, links,
/// the Kubernetes source — changes on its own clock, and at 100,000 services rebuilding every
/// service's status for each of those was most of an idle agent's CPU.
#[derive(Default)]
pub struct StatusCache {
    built_at_revision: Option<u64>,
    services: Arc<Vec<ServiceStatus>>,
}

impl StatusCache {
    /// Every service's status as of the controller's current revision. `monotonic_now`
    /// converts ejection deadlines (CLOCK_MONOTONIC) to wall clock time, which stays right for
    /// as long as the status is reused.
    pub fn services(
        &mut self,
        controller: &Controller,
        monotonic_now: Duration,
    ) -> Arc<Vec<ServiceStatus>> {
        if self.built_at_revision != Some(controller.revision) {
            let wall_now = SystemTime::now();
            self.services = Arc::new(
                controller
                    .services
                    .iter()
                    .map(|service| service_status(controller, service, wall_now, monotonic_now))
                    .collect(),
            );
            self.built_at_revision = Some(controller.revision);
        }
        Arc::clone(&self.services)
    }
}

/// Builds the snapshot around the services' statuses (from a [`StatusCache`]).
pub fn snapshot(
    controller: &Controller,
    runtime: &Runtime,
    services: Arc<Vec<ServiceStatus>>,
) -> AgentState {
    let config = &controller.config();
    let agent = AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        node: config.node.name.clone(),
        region: config.node.region.clone(),
        zone: config.node.zone.clone(),
        cluster: config.node.cluster.clone(),
        started_at: runtime.started_at.map(timestamp).unwrap_or_default(),
        ready: runtime.ready,
        config_path: runtime.config_path.clone(),
        pin_path: runtime.pin_path.clone(),
        generation: runtime.generation,
        last_reload: runtime.last_reload.clone(),
    };
    let events = controller
        .events
        .iter()
        .map(|e| EventInfo {
            seq: e.seq,
            at: timestamp(e.at),
            kind: e.kind,
            message: e.what.clone(),
        })
        .collect();
    AgentState {
        agent,
        attachments: runtime.attachments.clone(),
        services,
        events,
        swaps: controller.swaps.clone(),
        reconcile_repairs: controller.reconcile_repairs,
        connect_timeouts: ConnectTimeoutInfo {
            confirmed: controller.connect_timeouts.confirmed,
            dismissed: controller.connect_timeouts.dismissed,
            inconclusive: controller.connect_timeouts.inconclusive,
        },
        conntrack: runtime.conntrack.clone(),
        memory: runtime.memory.clone(),
        kubernetes: runtime.kubernetes.clone(),
    }
}

fn service_status(
    controller: &Controller,
    service: &controller::ServiceModel,
    wall_now: SystemTime,
    monotonic_now: Duration,
) -> ServiceStatus {
    let key = service.key;
    let view = controller.views.get(&key);
    let output = view.map(|v| &v.output);
    let live = controller.programmer.service(&key);
    let priority_of = |index: usize| {
        output?
            .priorities
            .iter()
            .find(|p| p.endpoints.contains(&index))
            .map(|p| p.level)
    };
    let backends = service
        .endpoints
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let addr = e.ip;
            let port = e.port.to_be();
            let health = controller.health.get(&(key, addr, port));
            let ejected_until = health
                .and_then(|h| h.outlier.ejected_until)
                .map(|until| wall_now + until.saturating_sub(monotonic_now));
            BackendStatus {
                address: SocketAddr::new(e.ip, e.port).to_string(),
                address6: e.ip6.map(|ip6| SocketAddr::from((ip6, e.port)).to_string()),
                backend_id: controller.programmer.backend_id(&key, addr, port),
                locality: e.locality.label(),
                cluster: e.locality.cluster.clone(),
                weight: e.weight,
                share_percent: round3(
                    output
                        .and_then(|o| o.shares.get(index))
                        .copied()
                        .unwrap_or(0.0)
                        * 100.0,
                ),
                priority: priority_of(index),
                ejected: ejected_until.is_some(),
                ejected_until: ejected_until.map(timestamp),
                ejections_total: health.map_or(0, |h| h.outlier.ejections_total),
                active_healthy: service
                    .policy
                    .health_check
                    .as_ref()
                    .map(|_| health.is_none_or(|h| h.active.healthy)),
                routable: health.is_none_or(|h| h.routable()),
                draining: false,
            }
        })
        .chain(
            service
                .draining
                .iter()
                .filter(|d| !service.endpoints.iter().any(|e| e.ip == d.ip))
                .map(|e| {
                    let (addr, port) = (e.ip, e.port.to_be());
                    BackendStatus {
                        address: SocketAddr::new(e.ip, e.port).to_string(),
                        address6: e.ip6.map(|ip6| SocketAddr::from((ip6, e.port)).to_string()),
                        backend_id: controller.programmer.backend_id(&key, addr, port),
                        locality: e.locality.label(),
                        cluster: e.locality.cluster.clone(),
                        weight: 0,
                        share_percent: 0.0,
                        priority: None,
                        ejected: false,
                        ejected_until: None,
                        ejections_total: 0,
                        active_healthy: None,
                        routable: false,
                        draining: true,
                    }
                }),
        )
        .collect();
    ServiceStatus {
        name: service.name.clone(),
        vip: key.vip,
        vip6: service.key6.map(|key6| key6.vip),
        port: key.port,
        protocol: match key.proto {
            geosteer_common::PROTO_UDP => "UDP".to_string(),
            _ => "TCP".to_string(),
        },
        service_id: live.map(|l| l.id),
        mode: output.map_or("plain", |o| mode_name(o.mode)).to_string(),
        locality_weighted: output.is_some_and(|o| o.locality_weighted),
        panic: output.is_some_and(|o| o.panic),
        load: output.map(controller::describe_load).unwrap_or_default(),
        priorities: output
            .map(|o| {
                o.priorities
                    .iter()
                    .map(|p| PriorityStatus {
                        level: p.level,
                        healthy: p.healthy,
                        total: p.total,
                        health_percent: round3(p.health_percent),
                        load_percent: round3(p.load_percent),
                        panic: p.panic,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        localities: output
            .map(|o| {
                o.localities
                    .iter()
                    .map(|l| LocalityStatus {
                        priority: l.priority,
                        name: l.name.clone(),
                        configured_weight: round3(l.configured_weight),
                        effective_weight_percent: round3(l.effective_weight_percent),
                        healthy: l.healthy,
                        total: l.total,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        backends,
        sources: service.policy.sources.clone(),
        signals: service.protocol.protocol.to_string(),
        signals_reason: service.protocol.reason.clone(),
        clusters: {
            let mut clusters: Vec<String> = Vec::new();
            for e in &service.endpoints {
                if !e.locality.cluster.is_empty() && !clusters.contains(&e.locality.cluster) {
                    clusters.push(e.locality.cluster.clone());
                }
            }
            clusters
        },
        cluster_local: service.cluster_local.clone(),
        session_affinity: service.affinity_timeout.map(crate::config::format_duration),
        connect_timeout: if key.proto == geosteer_common::PROTO_UDP {
            String::new()
        } else if service.connect_timeout.is_zero() {
            "off".to_string()
        } else {
            crate::config::format_duration(service.connect_timeout)
        },
    }
}

impl ServiceStatus {
    /// Whether an operator's `SERVICE` argument names this service: the full name
    /// (`default/reviews:80/TCP`), `namespace/name`, `name`, or `VIP:port`.
    pub fn matches(&self, query: &str) -> bool {
        let base = self.name.split(':').next().unwrap_or_default();
        let short = base.rsplit('/').next().unwrap_or_default();
        query == self.name
            || query == base
            || query == short
            || self.vips().any(|vip| {
                let address = SocketAddr::new(vip, self.port);
                query == address.to_string() || query == format!("{address}/{}", self.protocol)
            })
    }

    /// Its VIPs: `vip`, then a dual-stack service's `vip6`.
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.vip).chain(self.vip6)
    }

    /// `vip:port/PROTOCOL` (`[vip]:port/PROTOCOL` for IPv6), both joined by ` + ` for a
    /// dual-stack service.
    pub fn frontend(&self) -> String {
        self.vips()
            .map(|vip| format!("{}/{}", SocketAddr::new(vip, self.port), self.protocol))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_queries() {
        let service = ServiceStatus {
            name: "default/reviews:80/TCP".into(),
            vip: Ipv4Addr::new(198, 19, 0, 10).into(),
            port: 80,
            protocol: "TCP".into(),
            ..Default::default()
        };
        let cases = [
            ("default/reviews:80/TCP", true),
            ("default/reviews", true),
            ("reviews", true),
            ("198.19.0.10:80", true),
            ("198.19.0.10:80/TCP", true),
            ("ratings", false),
            ("198.19.0.10:81", false),
            ("other/reviews", false),
        ];
        for (query, expected) in cases {
            assert_eq!(service.matches(query), expected, "{query}");
        }
    }

    #[test]
    fn swap_histogram_is_cumulative() {
        let mut swaps = SwapStats::default();
        for micros in [30, 80, 3000, 400_000] {
            swaps.observe(Duration::from_micros(micros));
        }
        assert_eq!(swaps.count, 4);
        assert_eq!(swaps.buckets, [1, 2, 2, 2, 2, 2, 3, 3, 3, 3]);
        assert!((swaps.seconds_sum - 0.40311).abs() < 1e-9);
    }

    /// The services' statuses are built once per controller revision: snapshots in between
    /// share them, and the first change an operator could see builds them again.
    #[test]
    fn service_statuses_are_rebuilt_only_when_the_revision_moves() {
        let mut dp = crate::dataplane::memory::MemoryDataplane::new();
        let mut controller = Controller::new(
            crate::config::default_config(),
            crate::programmer::Programmer::new(16, 64, 1 << 16),
        );
        controller.apply_all(&mut dp).expect("apply");
        let mut cache = StatusCache::default();
        let first = cache.services(&controller, Duration::from_secs(1));
        assert!(!first.is_empty());
        let again = cache.services(&controller, Duration::from_secs(2));
        assert!(Arc::ptr_eq(&first, &again), "same revision: shared");
        controller.event(EventKind::Reload, "something an operator could see");
        let after = cache.services(&controller, Duration::from_secs(3));
        assert!(!Arc::ptr_eq(&first, &after), "revision moved: built again");
        assert_eq!(*first, *after, "nothing in the services changed");
    }
}
