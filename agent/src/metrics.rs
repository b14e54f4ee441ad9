//! Prometheus metrics and the agent's HTTP endpoint (`admin.metrics`): `/metrics`, `/healthz`,
//! `/readyz`.
//!
//! The kernel keeps its counters in per-CPU maps; a scrape opens the pinned maps, sums them
//! ([`read_maps`]) and encodes them together with the agent's published state ([`encode`]),
//! so there is no second copy of any counter to keep in step.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use geosteer_common::{BackendCounters, DropReason, TrafficCounters};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::warn;

use crate::{
    controller::SWAP_LATENCY_BUCKETS,
    dataplane::BpfMaps,
    state::{AgentState, ReloadResult},
};

/// What a scrape read from the kernel maps, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    /// By service id.
    pub services: BTreeMap<u32, TrafficCounters>,
    /// By backend id.
    pub backends: BTreeMap<u32, BackendCounters>,
    pub drops: Vec<(DropReason, u64)>,
    /// (IPv4, IPv6); None when the maps could not be read.
    pub conntrack_entries: Option<(u64, u64)>,
    pub conntrack_capacity: Option<(u64, u64)>,
    /// `ct_stats` counters by name.
    pub ct_events: Vec<(&'static str, u64)>,
}

/// Reads the counters of every programmed service and backend in `state`.
pub fn read_maps(pin_path: &Path, state: &AgentState) -> Result<Readings> {
    let maps = BpfMaps::open_pinned(pin_path)?;
    let mut readings = Readings::default();
    for service in state.services.iter() {
        if let Some(id) = service.service_id {
            readings.services.insert(id, maps.service_counters(id)?);
        }
        for backend in &service.backends {
            if let Some(id) = backend.backend_id {
                readings.backends.insert(id, maps.backend_counters(id)?);
            }
        }
    }
    for reason in DropReason::ALL {
        readings.drops.push((reason, maps.drops(reason)?));
    }
    readings.conntrack_entries = Some((
        maps.conntrack_entries() as u64,
        maps.conntrack6_entries() as u64,
    ));
    let capacities = maps.capacities()?;
    readings.conntrack_capacity = Some((
        u64::from(capacities.conntrack),
        u64::from(capacities.conntrack6),
    ));
    for (index, name) in geosteer_common::ct_stats::NAMES {
        readings.ct_events.push((name, maps.ct_stat(index)?));
    }
    Ok(readings)
}

/// The Prometheus text exposition (format 0.0.4) of `state` and `readings`.
pub fn encode(state: &AgentState, readings: &Readings) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition {
        state: state.clone(),
        readings: readings.clone(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    if let Some(kubernetes) = &state.kubernetes {
        // The source's gauges, before the end marker (if the format has one).
        let end = out.rfind("# EOF").unwrap_or(out.len());
        out.insert_str(end, &kubernetes.metrics());
    }
    out
}

/// One scrape's data; encoded once, then dropped.
#[derive(Debug)]
struct Exposition {
    state: AgentState,
    readings: Readings,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: name (counters without `_total`, which the encoder adds), help, type,
/// and its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Labels, value: impl Into<f64>) {
        self.samples.push((labels, value.into()));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, value) in &self.samples {
            let family = metric.encode_family(labels)?;
            match self.kind {
                // Counters here are integer counts; keep them integers in the text.
                MetricType::Counter => ConstCounter::new(*value as u64).encode(family)?,
                _ => ConstGauge::new(*value).encode(family)?,
            }
        }
        Ok(())
    }
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.families() {
            family.encode(&mut encoder)?;
        }
        self.encode_swap_histogram(&mut encoder)
    }
}

impl Exposition {
    fn families(&self) -> Vec<Family> {
        let state = &self.state;
        let readings = &self.readings;
        let mut ready = Family::new(
            "geosteer_ready",
            "1 once the programs are attached and the first config is applied",
            GAUGE,
        );
        ready.add(vec![], state.agent.ready as u8);
        let mut attached = Family::new(
            "geosteer_attached",
            "Programs attached, by interface and hook (1 per attachment)",
            GAUGE,
        );
        for a in &state.attachments {
            attached.add(
                vec![("interface", a.interface.clone()), ("hook", a.hook.clone())],
                1,
            );
        }
        let mut generation = Family::new(
            "geosteer_config_generation",
            "Config generation: 1 at start, +1 per applied reload",
            GAUGE,
        );
        generation.add(vec![], state.agent.generation as f64);
        let mut last_reload = Family::new(
            "geosteer_config_last_reload_success",
            "1 if the last reload was applied, 0 if it was rejected or failed (absent before the first reload)",
            GAUGE,
        );
        if let Some(reload) = &state.agent.last_reload {
            last_reload.add(vec![], (reload.result == ReloadResult::Applied) as u8);
        }

        let mut service_packets = Family::new(
            "geosteer_service_packets",
            "Request packets steered, by service",
            COUNTER,
        );
        let mut service_bytes = Family::new(
            "geosteer_service_bytes",
            "Request bytes steered, by service",
            COUNTER,
        );
        let mut service_flows = Family::new(
            "geosteer_service_new_flows",
            "New flows steered, by service",
            COUNTER,
        );
        let mut backend_packets = Family::new(
            "geosteer_backend_packets",
            "Request packets sent to a backend",
            COUNTER,
        );
        let mut backend_bytes = Family::new(
            "geosteer_backend_bytes",
            "Request bytes sent to a backend",
            COUNTER,
        );
        let mut backend_flows = Family::new(
            "geosteer_backend_new_flows",
            "New flows sent to a backend",
            COUNTER,
        );
        let mut reply_packets = Family::new(
            "geosteer_backend_reply_packets",
            "Reply packets from a backend",
            COUNTER,
        );
        let mut reply_bytes = Family::new(
            "geosteer_backend_reply_bytes",
            "Reply bytes from a backend",
            COUNTER,
        );
        let mut responses = Family::new(
            "geosteer_backend_responses",
            "HTTP/1.x responses from a backend, by status class",
            COUNTER,
        );
        let mut resets = Family::new(
            "geosteer_backend_resets",
            "TCP resets from a backend on established flows",
            COUNTER,
        );
        let mut connect_failures = Family::new(
            "geosteer_backend_connect_failures",
            "Connects to a backend that were refused or timed out",
            COUNTER,
        );
        let mut http_skipped = Family::new(
            "geosteer_backend_http_unparsed_responses",
            "HTTP/1.x responses whose start could not be located exactly (pipelining, a request \
             before the last response ended, a split status line or head, and every later one on \
             a connection after a response or request of unknown length): not read, never \
             guessed",
            COUNTER,
        );
        let mut ignored = Family::new(
            "geosteer_backend_signals_ignored_while_ejected",
            "Results from a backend while it was ejected, ignored as Envoy does",
            COUNTER,
        );
        let mut ejections = Family::new(
            "geosteer_backend_ejections",
            "Outlier detection ejections of a backend",
            COUNTER,
        );
        let mut ejected = Family::new(
            "geosteer_backend_ejected",
            "1 while a backend is ejected by outlier detection",
            GAUGE,
        );
        let mut share = Family::new(
            "geosteer_backend_share_ratio",
            "Share of the service's new flows a backend gets now (0..1)",
            GAUGE,
        );
        let mut locality_packets = Family::new(
            "geosteer_locality_packets",
            "Request packets sent to a locality's backends",
            COUNTER,
        );
        let mut locality_bytes = Family::new(
            "geosteer_locality_bytes",
            "Request bytes sent to a locality's backends",
            COUNTER,
        );
        let mut locality_flows = Family::new(
            "geosteer_locality_new_flows",
            "New flows sent to a locality's backends",
            COUNTER,
        );
        let mut priority_load = Family::new(
            "geosteer_priority_load_ratio",
            "Share of a service's new flows sent to a priority level (0..1)",
            GAUGE,
        );
        let mut panic = Family::new(
            "geosteer_service_panic",
            "1 while a service is in panic (health ignored below minHealthPercent)",
            GAUGE,
        );

        for service in state.services.iter() {
            let name = || ("service", service.name.clone());
            if let Some(c) = service.service_id.and_then(|id| readings.services.get(&id)) {
                service_packets.add(vec![name()], c.packets as f64);
                service_bytes.add(vec![name()], c.bytes as f64);
                service_flows.add(vec![name()], c.new_flows as f64);
            }
            panic.add(vec![name()], service.panic as u8);
            for p in &service.priorities {
                priority_load.add(
                    vec![name(), ("priority", p.level.to_string())],
                    p.load_percent / 100.0,
                );
            }
            let mut by_locality: BTreeMap<&str, TrafficCounters> = BTreeMap::new();
            for b in &service.backends {
                let labels = || {
                    vec![
                        name(),
                        ("backend", b.address.clone()),
                        ("locality", b.locality.clone()),
                        ("cluster", b.cluster.clone()),
                    ]
                };
                ejections.add(labels(), b.ejections_total as f64);
                ejected.add(labels(), b.ejected as u8);
                share.add(labels(), b.share_percent / 100.0);
                let Some(c) = b.backend_id.and_then(|id| readings.backends.get(&id)) else {
                    continue;
                };
                backend_packets.add(labels(), c.packets as f64);
                backend_bytes.add(labels(), c.bytes as f64);
                backend_flows.add(labels(), c.new_flows as f64);
                reply_packets.add(labels(), c.reply_packets as f64);
                reply_bytes.add(labels(), c.reply_bytes as f64);
                for (class, count) in c.responses.iter().enumerate() {
                    let mut l = labels();
                    l.push(("class", format!("{}xx", class + 1)));
                    responses.add(l, *count as f64);
                }
                resets.add(labels(), c.resets as f64);
                connect_failures.add(labels(), c.connect_failures as f64);
                http_skipped.add(labels(), c.http_skipped as f64);
                ignored.add(labels(), c.ignored_while_ejected as f64);
                let sum = by_locality.entry(&b.locality).or_default();
                sum.packets += c.packets;
                sum.bytes += c.bytes;
                sum.new_flows += c.new_flows;
            }
            for (locality, c) in by_locality {
                let labels = || vec![name(), ("locality", locality.to_string())];
                locality_packets.add(labels(), c.packets as f64);
                locality_bytes.add(labels(), c.bytes as f64);
                locality_flows.add(labels(), c.new_flows as f64);
            }
        }

        let mut swaps = Family::new(
            "geosteer_map_swaps",
            "Atomic table swaps (a service's new generation made live)",
            COUNTER,
        );
        swaps.add(vec![], state.swaps.count as f64);
        let mut repairs = Family::new(
            "geosteer_reconcile_repairs",
            "Ejection flags or books the reconcile pass found out of step and repaired",
            COUNTER,
        );
        repairs.add(vec![], state.reconcile_repairs as f64);
        let mut timeouts = Family::new(
            "geosteer_connect_timeouts",
            "Connect timeouts the kernel suspected, by verdict: confirmed (the agent's own \
             connection failed too; counted as gateway errors), dismissed (the backend \
             accepted it) or inconclusive (it failed on this node; not counted)",
            COUNTER,
        );
        timeouts.add(
            vec![("verdict", "confirmed".to_string())],
            state.connect_timeouts.confirmed as f64,
        );
        timeouts.add(
            vec![("verdict", "dismissed".to_string())],
            state.connect_timeouts.dismissed as f64,
        );
        timeouts.add(
            vec![("verdict", "inconclusive".to_string())],
            state.connect_timeouts.inconclusive as f64,
        );
        // One map per family (Cilium's ct4/ct6), so one series per family.
        let family = |name: &str| vec![("family", name.to_string())];
        let mut conntrack = Family::new(
            "geosteer_conntrack_entries",
            "Conntrack entries in use (two per flow), by address family",
            GAUGE,
        );
        if let Some((v4, v6)) = readings.conntrack_entries {
            conntrack.add(family("ipv4"), v4 as f64);
            conntrack.add(family("ipv6"), v6 as f64);
        }
        let mut conntrack_capacity = Family::new(
            "geosteer_conntrack_capacity",
            "Conntrack entries available, by address family (dataplane.conntrackSize, conntrackSize6)",
            GAUGE,
        );
        if let Some((v4, v6)) = readings.conntrack_capacity {
            conntrack_capacity.add(family("ipv4"), v4 as f64);
            conntrack_capacity.add(family("ipv6"), v6 as f64);
        }
        let mut drops = Family::new(
            "geosteer_drops",
            "Packets to a VIP the data path dropped, by reason",
            COUNTER,
        );
        for (reason, count) in &readings.drops {
            drops.add(vec![("reason", reason.name().to_string())], *count as f64);
        }
        let mut map_memory = Family::new(
            "geosteer_map_memory_bytes",
            "Kernel memory of each map on this node (per-CPU maps: for every possible CPU)",
            GAUGE,
        );
        for (map, bytes) in &state.memory.maps {
            map_memory.add(vec![("map", map.clone())], *bytes as f64);
        }
        let mut memory_limit = Family::new(
            "geosteer_map_memory_limit_bytes",
            "The limit the maps were checked against at start (dataplane.memoryLimit, else the \
             memory cgroup's)",
            GAUGE,
        );
        if let Some(limit) = state.memory.limit {
            memory_limit.add(vec![], limit as f64);
        }
        let ct = &state.conntrack;
        let mut gc_removed = Family::new(
            "geosteer_conntrack_gc_removed",
            "Flows the conntrack GC removed: expired (idle past their timeout), orphan (a half \
             whose partner was gone), ended (onEject)",
            COUNTER,
        );
        for (why, count) in [
            ("expired", ct.expired),
            ("orphan", ct.orphans),
            ("ended", ct.ended),
        ] {
            gc_removed.add(vec![("reason", why.to_string())], count as f64);
        }
        let mut gc_passes = Family::new(
            "geosteer_conntrack_gc_passes",
            "Complete conntrack GC passes",
            COUNTER,
        );
        gc_passes.add(vec![], ct.passes as f64);
        let mut ct_events = Family::new(
            "geosteer_conntrack_events",
            "Kernel conntrack events: partner_restored (a flow's half was evicted, e.g. by a \
             full table, and rebuilt from the other), midstream (a TCP segment without a SYN \
             found no entry and was steered anew), icmp_translated (an ICMP error about a \
             steered flow), fragment_translated / fragment_unknown (later fragments of a \
             steered datagram, or of one whose first fragment was not seen)",
            COUNTER,
        );
        for (what, count) in &readings.ct_events {
            ct_events.add(vec![("event", what.to_string())], *count as f64);
        }

        vec![
            ready,
            attached,
            generation,
            last_reload,
            service_packets,
            service_bytes,
            service_flows,
            backend_packets,
            backend_bytes,
            backend_flows,
            reply_packets,
            reply_bytes,
            responses,
            resets,
            connect_failures,
            http_skipped,
            ignored,
            ejections,
            ejected,
            share,
            locality_packets,
            locality_bytes,
            locality_flows,
            priority_load,
            panic,
            swaps,
            repairs,
            timeouts,
            conntrack,
            conntrack_capacity,
            drops,
            gc_removed,
            gc_passes,
            ct_events,
            map_memory,
            memory_limit,
        ]
    }

    fn encode_swap_histogram(
        &self,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let swaps = &self.state.swaps;
        // The state keeps cumulative bucket counts (as Prometheus shows them); the encoder
        // wants each bucket's own count.
        let mut previous = 0;
        let buckets: Vec<(f64, u64)> = SWAP_LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, bound)| {
                let cumulative = swaps.buckets.get(i).copied().unwrap_or(previous);
                let own = cumulative.saturating_sub(previous);
                previous = cumulative;
                (*bound, own)
            })
            .collect();
        let mut metric = encoder.encode_descriptor(
            "geosteer_map_swap_duration_seconds",
            "Time to apply one changed service (table write, flip, grace period if needed)",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(swaps.seconds_sum, swaps.count, &buckets, None)
    }
}

/// The HTTP endpoint; stops when dropped.
pub struct MetricsServer {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address`.
pub async fn serve(
    address: SocketAddr,
    state: watch::Receiver<Arc<AgentState>>,
    pin_path: PathBuf,
    heartbeat: Arc<crate::state::Heartbeat>,
) -> Result<MetricsServer> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding admin.metrics {address}"))?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            let pin_path = pin_path.clone();
            let heartbeat = heartbeat.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let stalled = heartbeat.age(crate::agent::monotonic_now());
                    respond(request, state.borrow().clone(), pin_path.clone(), stalled)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(MetricsServer { address, task })
}

async fn respond(
    request: Request<Incoming>,
    state: Arc<AgentState>,
    pin_path: PathBuf,
    loop_idle: Option<Duration>,
) -> Result<Response<http_body_util::Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
            .expect("static response parts are valid")
    };
    if request.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".to_string(),
        ));
    }
    Ok(match request.uri().path() {
        "/metrics" => {
            // Reading the maps is a few syscalls per counter (and a walk of conntrack): off
            // the async workers. Before the maps exist (agent still loading) the kernel's
            // counters are left out rather than shown as zeros.
            let scraped = tokio::task::spawn_blocking(move || {
                let readings = read_maps(&pin_path, &state).unwrap_or_else(|e| {
                    warn!(error = %format!("{e:#}"), "metrics: reading the pinned maps");
                    Readings::default()
                });
                encode(&state, &readings)
            })
            .await;
            match scraped {
                Ok(body) => Response::builder()
                    .header(
                        "content-type",
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    )
                    .body(body.into())
                    .expect("static response parts are valid"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        path => {
            let (status, body) = probe(path, &state, loop_idle);
            text(status, body)
        }
    })
}

/// A control loop that has not turned for this long is stuck (it turns at least every 100 ms).
pub const LOOP_STALL: Duration = Duration::from_secs(5);
/// Stuck for this long, the agent is not alive: `/healthz` fails and the kubelet restarts it,
/// which costs no connection (the data path stays pinned across a restart).
pub const LIVENESS_STALL: Duration = Duration::from_secs(30);

/// The answers that need no maps: liveness, readiness, and everything unknown. `loop_idle`:
/// how long since the control loop last turned.
pub fn probe(path: &str, state: &AgentState, loop_idle: Option<Duration>) -> (StatusCode, String) {
    match path {
        "/healthz" if loop_idle.is_some_and(|idle| idle > LIVENESS_STALL) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the control loop has not run for {:.1}s\n",
                loop_idle.unwrap_or_default().as_secs_f64()
            ),
        ),
        // The process answers and its loop turns: alive.
        "/healthz" => (StatusCode::OK, "ok\n".into()),
        "/readyz" if !state.agent.ready => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached or first config not applied yet\n".into(),
        ),
        "/readyz" if loop_idle.is_some_and(|idle| idle > LOOP_STALL) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the control loop has not run for {:.1}s (stuck)\n",
                loop_idle.unwrap_or_default().as_secs_f64()
            ),
        ),
        "/readyz" => (StatusCode::OK, "ready\n".into()),
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_readiness() {
        let mut state = AgentState::default();
        // (path, ready, control loop idle, status)
        let turning = Some(Duration::from_millis(80));
        let stuck = Some(Duration::from_secs(6));
        let wedged = Some(Duration::from_secs(31));
        let cases = [
            ("/healthz", false, None, StatusCode::OK),
            ("/healthz", true, stuck, StatusCode::OK),
            ("/healthz", true, wedged, StatusCode::SERVICE_UNAVAILABLE),
            ("/readyz", false, turning, StatusCode::SERVICE_UNAVAILABLE),
            ("/readyz", true, turning, StatusCode::OK),
            ("/readyz", true, stuck, StatusCode::SERVICE_UNAVAILABLE),
            ("/", true, None, StatusCode::NOT_FOUND),
            ("/metricz", true, None, StatusCode::NOT_FOUND),
        ];
        for (path, ready, idle, expected) in cases {
            state.agent.ready = ready;
            assert_eq!(
                probe(path, &state, idle).0,
                expected,
                "{path} ready={ready} idle={idle:?}"
            );
        }
        assert_eq!(
            probe("/readyz", &state, stuck).1,
            "not ready: the control loop has not run for 6.0s (stuck)\n"
        );
    }

    #[test]
    fn counters_end_in_total_and_gauges_do_not() {
        let text = encode(&AgentState::default(), &Readings::default());
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("geosteer_"), "{line}");
            assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
        }
    }
}
