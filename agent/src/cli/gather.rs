//! Builds the reports from the agent's state and the pinned maps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::links::{FdLink, LinkType, PinnedLink};
use geosteer_common::{
    Addr, Backend, BackendCounters, BackendState, DIR_ORIGINAL, DropReason, FlowKeyOf, FlowValueOf,
    PROTO_TCP, PROTO_UDP, ServiceValue, TCP_CLOSED, TCP_ESTABLISHED, TCP_MIDSTREAM, TCP_SYN_SENT,
    program_names,
};

use super::{
    Context, Output, format,
    report::{
        BackendRow, BackendsReport, CounterRow, EVENT_HEADERS, EventsReport, FlowRow, FlowsReport,
        LinkStatus, LocalityRow, MapFill, ServiceBackends, ServiceRow, ServicesReport,
        StatusReport, SwapSummary, TopFrame, TopRow, TrafficRow, event_row,
    },
    table,
};
use crate::{
    admin::{self, Request},
    agent::monotonic_now,
    dataplane::{BpfMaps, Dataplane as _},
    frontend::Frontend,
    loader,
    state::{self, BackendStatus, ServiceStatus},
};

/// A service as the kernel maps hold it.
pub struct KernelService {
    pub key: Frontend,
    pub value: ServiceValue,
    pub backends: Vec<KernelBackend>,
}

pub struct KernelBackend {
    pub id: u32,
    pub backend: Backend,
    /// The backend's address in its service's family (an IPv6 one is not in `backend`).
    pub addr: IpAddr,
    pub state: BackendState,
    pub counters: BackendCounters,
}

/// `addr:port` (`[addr]:port` for IPv6) of an address and port in network byte order.
pub fn endpoint<A: Addr>(addr: A, port: u16) -> String {
    SocketAddr::new(addr.to_ip_addr(), u16::from_be(port)).to_string()
}

impl KernelBackend {
    /// `addr:port` of the backend.
    pub fn endpoint(&self) -> String {
        SocketAddr::new(self.addr, u16::from_be(self.backend.port)).to_string()
    }
}

pub(super) fn open_maps(ctx: &Context) -> Result<BpfMaps> {
    BpfMaps::open_pinned(&ctx.pin_path).with_context(|| {
        format!(
            "reading the pinned maps under {} (is this the agent's dataplane.pinPath? \
             see --pin-path / --config)",
            ctx.pin_path.display()
        )
    })
}

/// Every service in the maps with its live generation's backends, sorted by frontend.
pub fn kernel_services(maps: &BpfMaps) -> Result<Vec<KernelService>> {
    let mut services = maps.read_services()?;
    services.sort_by_key(|(key, _)| *key);
    let mut out = Vec::new();
    for (key, value) in services {
        let table = crate::dataplane::KernelTable::read(maps, &value)?;
        let mut backends = Vec::new();
        for &id in &table.backends {
            backends.push(kernel_backend(maps, id, key.vip.is_ipv6())?);
        }
        out.push(KernelService {
            key,
            value,
            backends,
        });
    }
    Ok(out)
}

/// Backend `id` as the kernel has it; `ipv6`: its address is in `GS_BACKEND_ADDRS6`.
pub fn kernel_backend(maps: &BpfMaps, id: u32, ipv6: bool) -> Result<KernelBackend> {
    let backend = maps.read_backend(id)?;
    let addr = if ipv6 {
        let addr = maps
            .backend_addrs6
            .get(&id, 0)
            .with_context(|| format!("reading the IPv6 address of backend {id}"))?;
        IpAddr::V6(addr.to_ip())
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::from_be(backend.addr)))
    };
    Ok(KernelBackend {
        id,
        backend,
        addr,
        state: maps
            .backend_state
            .get(&id, 0)
            .with_context(|| format!("reading backend state {id}"))?,
        counters: maps.backend_counters(id)?,
    })
}

fn counter_row(c: &BackendCounters) -> CounterRow {
    CounterRow {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        reply_packets: c.reply_packets,
        reply_bytes: c.reply_bytes,
        responses: c
            .responses
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{}xx", i + 1), *n))
            .collect(),
        resets: c.resets,
        connect_failures: c.connect_failures,
    }
}

/// A service's frontends (two for a dual-stack one).
fn service_keys(s: &ServiceStatus) -> impl Iterator<Item = Frontend> + '_ {
    let proto = if s.protocol == "UDP" {
        PROTO_UDP
    } else {
        PROTO_TCP
    };
    s.vips().map(move |vip| Frontend::new(vip, s.port, proto))
}

// ------------------------------------------------------------------------------- status ---

pub fn status(ctx: &Context) -> StatusReport {
    let state = ctx.state();
    let mut report = StatusReport {
        agent: ctx.agent_line(),
        info: state.map(|s| s.agent.clone()),
        socket: ctx.socket.display().to_string(),
        pin_path: ctx.pin_path.display().to_string(),
        programs_pinned: loader::program_pin(&ctx.pin_path, program_names::TC_INGRESS).exists(),
        attachments: pinned_links(&ctx.pin_path.join("links")),
        swaps: state.map(|s| SwapSummary {
            count: s.swaps.count,
            mean_microseconds: if s.swaps.count == 0 {
                0.0
            } else {
                (s.swaps.seconds_sum / s.swaps.count as f64 * 1e6).round()
            },
        }),
        conntrack_gc: state.map(|s| s.conntrack.clone()),
        connect_timeouts: state.map(|s| s.connect_timeouts.clone()),
        memory: state.map(|s| s.memory.clone()),
        kubernetes: state.and_then(|s| s.kubernetes.clone()),
        ..Default::default()
    };
    // The agent knows the XDP mode; a link only says "xdp".
    if let Some(state) = state {
        for link in &mut report.attachments {
            if let Some(a) = state
                .attachments
                .iter()
                .find(|a| a.interface == link.interface && a.hook.starts_with(&link.hook))
            {
                link.hook = a.hook.clone();
            }
        }
    }
    match map_fill(ctx) {
        Ok((maps, drops, events)) => {
            report.maps = maps;
            report.drops = drops;
            report.conntrack_events = events;
        }
        Err(e) => report.maps_error = Some(format!("{e:#}")),
    }
    report
}

type Fill = (Vec<MapFill>, BTreeMap<String, u64>, BTreeMap<String, u64>);

fn map_fill(ctx: &Context) -> Result<Fill> {
    let maps = open_maps(ctx)?;
    let capacities = maps.capacities()?;
    let services = kernel_services(&maps)?;
    let backends: usize = services.iter().map(|s| s.backends.len()).sum();
    let fill = vec![
        MapFill {
            map: "services".into(),
            used: services.len() as u64,
            capacity: capacities.services as u64,
        },
        MapFill {
            map: "backends".into(),
            used: backends as u64,
            capacity: capacities.backends as u64,
        },
        MapFill {
            map: "conntrack".into(),
            used: maps.conntrack_entries() as u64,
            capacity: capacities.conntrack as u64,
        },
        MapFill {
            map: "conntrack6".into(),
            used: maps.conntrack6_entries() as u64,
            capacity: capacities.conntrack6 as u64,
        },
    ];
    let mut drops = BTreeMap::new();
    for reason in DropReason::ALL {
        drops.insert(reason.name().to_string(), maps.drops(reason)?);
    }
    let mut events = BTreeMap::new();
    for (index, name) in geosteer_common::ct_stats::NAMES {
        events.insert(name.to_string(), maps.ct_stat(index)?);
    }
    Ok((fill, drops, events))
}

/// The links pinned under `dir` (`<iface>_<hook>`), with what the kernel says about each.
fn pinned_links(dir: &Path) -> Vec<LinkStatus> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            // Interface names may contain '_'; the hook never does.
            let (interface, hook) = name.rsplit_once('_').unwrap_or((name.as_str(), ""));
            let mut status = LinkStatus {
                interface: interface.to_string(),
                hook: hook.to_string(),
                ..Default::default()
            };
            match PinnedLink::from_pin(dir.join(&name)).and_then(|pin| FdLink::from(pin).info()) {
                Ok(info) => {
                    status.program_id = Some(info.program_id());
                    status.link_type = match info.link_type() {
                        Ok(LinkType::Tcx) => "tcx".to_string(),
                        Ok(LinkType::Xdp) => "xdp".to_string(),
                        Ok(other) => format!("{other:?}").to_lowercase(),
                        Err(e) => format!("unknown ({e})"),
                    };
                }
                Err(e) => status.error = Some(e.to_string()),
            }
            status
        })
        .collect()
}

// ----------------------------------------------------------------------------- services ---

pub fn services(ctx: &Context) -> Result<ServicesReport> {
    let maps = open_maps(ctx);
    let mut report = ServicesReport {
        agent: ctx.agent_line(),
        services: Vec::new(),
    };
    match ctx.state() {
        Some(state) => {
            for s in state.services.iter() {
                let counters = match (&maps, s.service_id) {
                    (Ok(maps), Some(id)) => {
                        let c = maps.service_counters(id)?;
                        Some(TrafficRow {
                            packets: c.packets,
                            bytes: c.bytes,
                            new_flows: c.new_flows,
                        })
                    }
                    _ => None,
                };
                report.services.push(service_row(s, counters));
            }
        }
        None => {
            let maps = maps?;
            for s in kernel_services(&maps)? {
                let c = maps.service_counters(s.value.id)?;
                report.services.push(ServiceRow {
                    name: None,
                    frontend: s.key.to_string(),
                    service_id: Some(s.value.id),
                    healthy: s.backends.iter().filter(|b| b.state.ejected == 0).count(),
                    total: s.backends.len(),
                    counters: Some(TrafficRow {
                        packets: c.packets,
                        bytes: c.bytes,
                        new_flows: c.new_flows,
                    }),
                    ..Default::default()
                });
            }
        }
    }
    Ok(report)
}

/// One service from the agent's view: its priorities, and healthy/total per locality (with
/// the locality weights when locality weighting is on).
pub fn service_row(s: &ServiceStatus, counters: Option<TrafficRow>) -> ServiceRow {
    let localities = if s.localities.is_empty() {
        let mut groups: BTreeMap<(Option<usize>, &str), (usize, usize)> = BTreeMap::new();
        for b in &s.backends {
            let group = groups.entry((b.priority, &b.locality)).or_default();
            group.0 += b.routable as usize;
            group.1 += 1;
        }
        groups
            .into_iter()
            .map(|((priority, name), (healthy, total))| LocalityRow {
                priority,
                name: name.to_string(),
                weight: None,
                effective_percent: None,
                healthy,
                total,
            })
            .collect()
    } else {
        s.localities
            .iter()
            .map(|l| LocalityRow {
                priority: Some(l.priority),
                name: l.name.clone(),
                weight: Some(l.configured_weight),
                effective_percent: Some(l.effective_weight_percent),
                healthy: l.healthy,
                total: l.total,
            })
            .collect()
    };
    ServiceRow {
        signals: Some(s.signals.clone()).filter(|v| !v.is_empty()),
        signals_reason: Some(s.signals_reason.clone()).filter(|v| !v.is_empty()),
        clusters: s.clusters.clone(),
        cluster_local: s.cluster_local.clone(),
        session_affinity: s.session_affinity.clone(),
        connect_timeout: Some(s.connect_timeout.clone()).filter(|v| !v.is_empty()),
        name: Some(s.name.clone()),
        frontend: s.frontend(),
        service_id: s.service_id,
        mode: Some(s.mode.clone()),
        load: Some(s.load.clone()),
        panic: s.panic,
        healthy: s.backends.iter().filter(|b| b.routable).count(),
        // Draining endpoints are in no host set (as Envoy's draining hosts).
        total: s.backends.iter().filter(|b| !b.draining).count(),
        priorities: s.priorities.clone(),
        localities,
        counters,
    }
}

// ----------------------------------------------------------------------------- backends ---

pub fn backends(ctx: &Context, service: Option<&str>) -> Result<BackendsReport> {
    let maps = open_maps(ctx);
    let mut report = BackendsReport {
        agent: ctx.agent_line(),
        services: Vec::new(),
    };
    match ctx.state() {
        Some(state) => {
            for s in state.services.iter() {
                if service.is_some_and(|q| !s.matches(q)) {
                    continue;
                }
                let mut rows = Vec::new();
                for b in &s.backends {
                    let kernel = match (&maps, b.backend_id) {
                        (Ok(maps), Some(id)) => Some(kernel_backend(maps, id, s.vip.is_ipv6())?),
                        _ => None,
                    };
                    rows.push(backend_row(b, kernel.as_ref()));
                }
                report.services.push(ServiceBackends {
                    service: Some(s.name.clone()),
                    frontend: s.frontend(),
                    backends: rows,
                });
            }
        }
        None => {
            for s in kernel_services(&maps?)? {
                let front = s.key.to_string();
                if service.is_some_and(|q| front != q && !front.starts_with(&format!("{q}/"))) {
                    continue;
                }
                let backends = s.backends.iter().map(kernel_backend_row).collect();
                report.services.push(ServiceBackends {
                    service: None,
                    frontend: front,
                    backends,
                });
            }
        }
    }
    if let Some(q) = service
        && report.services.is_empty()
    {
        bail!("no service matches {q:?} (give namespace/name, name, or VIP:port)");
    }
    Ok(report)
}

/// One backend from the agent's view, with the kernel's counters and flags when readable.
pub fn backend_row(b: &BackendStatus, kernel: Option<&KernelBackend>) -> BackendRow {
    BackendRow {
        address: b.address.clone(),
        address6: b.address6.clone(),
        backend_id: b.backend_id,
        locality: Some(b.locality.clone()),
        cluster: Some(b.cluster.clone()),
        weight: Some(b.weight),
        effective_percent: Some(b.share_percent),
        priority: b.priority,
        health: BackendRow::health_of(b),
        ejected_until: b.ejected_until.clone(),
        ejections_total: Some(b.ejections_total),
        active: b
            .active_healthy
            .map(|h| if h { "healthy" } else { "unhealthy" }.to_string()),
        kernel_ejected: kernel.map(|k| k.state.ejected != 0),
        consecutive_5xx: kernel.map(|k| k.state.consecutive_5xx),
        consecutive_gateway_errors: kernel.map(|k| k.state.consecutive_gateway),
        counters: kernel.map(|k| counter_row(&k.counters)),
    }
}

/// One backend from the maps alone (agent down).
pub fn kernel_backend_row(k: &KernelBackend) -> BackendRow {
    BackendRow {
        address: k.endpoint(),
        backend_id: Some(k.id),
        health: if k.state.ejected != 0 {
            "ejected"
        } else {
            "ok"
        }
        .to_string(),
        kernel_ejected: Some(k.state.ejected != 0),
        consecutive_5xx: Some(k.state.consecutive_5xx),
        consecutive_gateway_errors: Some(k.state.consecutive_gateway),
        counters: Some(counter_row(&k.counters)),
        ..Default::default()
    }
}

// -------------------------------------------------------------------------------- flows ---

pub fn flows(ctx: &Context, service: Option<&str>, backend: Option<&str>) -> Result<FlowsReport> {
    let maps = open_maps(ctx)?;
    let names: BTreeMap<Frontend, &ServiceStatus> = ctx
        .state()
        .map(|s| {
            s.services
                .iter()
                .flat_map(|s| service_keys(s).map(move |key| (key, s)))
                .collect()
        })
        .unwrap_or_default();
    let query = FlowQuery {
        names: &names,
        service,
        backend,
        now: monotonic_now().as_nanos() as u64,
    };
    let mut flows = Vec::new();
    query.collect(&maps.conntrack, &mut flows);
    query.collect(&maps.conntrack6, &mut flows);
    flows.sort_by(|a, b| {
        (&a.frontend, &a.backend, &a.client).cmp(&(&b.frontend, &b.backend, &b.client))
    });
    Ok(FlowsReport {
        agent: ctx.agent_line(),
        flows,
    })
}

/// What `geosteer flows` asks of each conntrack map.
struct FlowQuery<'a> {
    names: &'a BTreeMap<Frontend, &'a ServiceStatus>,
    service: Option<&'a str>,
    backend: Option<&'a str>,
    now: u64,
}

impl FlowQuery<'_> {
    /// The flows of one family's conntrack map that the query selects.
    fn collect<A: Addr>(
        &self,
        conntrack: &aya::maps::HashMap<aya::maps::MapData, FlowKeyOf<A>, FlowValueOf<A>>,
        flows: &mut Vec<FlowRow>,
    ) where
        FlowKeyOf<A>: aya::Pod,
        FlowValueOf<A>: aya::Pod,
    {
        for entry in conntrack.iter() {
            // An entry may vanish during the walk (LRU eviction, flow end): skip it.
            let Ok((key, value)) = entry else { continue };
            if key.direction != DIR_ORIGINAL {
                continue;
            }
            let service_key =
                Frontend::new(key.daddr.to_ip_addr(), u16::from_be(key.dport), key.proto);
            // The backend's FIN is recorded on the reply entry.
            let backend_fin = || {
                let reply = key.reply_half(&value);
                conntrack.get(&reply, 0).is_ok_and(|r| r.fin_seen != 0)
            };
            if let Some(row) = self.row(
                service_key,
                endpoint(key.saddr, key.sport),
                endpoint(value.nat_addr, value.nat_port),
                &value,
                backend_fin,
            ) {
                flows.push(row);
            }
        }
    }

    fn row<A: Addr>(
        &self,
        service_key: Frontend,
        client: String,
        target: String,
        value: &FlowValueOf<A>,
        backend_fin: impl FnOnce() -> bool,
    ) -> Option<FlowRow> {
        let front = service_key.to_string();
        let status = self.names.get(&service_key);
        if let Some(q) = self.service {
            let matched = match status {
                Some(s) => s.matches(q),
                None => front == q || front.starts_with(&format!("{q}/")),
            };
            if !matched {
                return None;
            }
        }
        if let Some(b) = self.backend
            && target != b
            && !target
                .parse::<SocketAddr>()
                .is_ok_and(|target| target.ip().to_string() == b)
        {
            return None;
        }
        let now = self.now;
        let closed_both_ways = value.fin_seen != 0 && backend_fin();
        Some(FlowRow {
            client,
            frontend: front,
            service: status.map(|s| s.name.clone()),
            backend: target,
            backend_id: value.backend_id,
            state: match (service_key.proto, value.tcp_state) {
                (PROTO_TCP, TCP_SYN_SENT) => "syn-sent",
                (PROTO_TCP, TCP_ESTABLISHED) if closed_both_ways => "closed",
                (PROTO_TCP, TCP_ESTABLISHED) if value.fin_seen != 0 => "closing",
                (PROTO_TCP, TCP_ESTABLISHED) => "established",
                (PROTO_TCP, TCP_CLOSED) => "closed",
                (PROTO_TCP, TCP_MIDSTREAM) => "mid-stream",
                _ => "-",
            }
            .to_string(),
            age_seconds: millis(now.saturating_sub(value.created_ns)),
            idle_seconds: millis(now.saturating_sub(value.last_seen_ns)),
        })
    }
}

/// Nanoseconds as seconds rounded to the millisecond.
fn millis(ns: u64) -> f64 {
    (ns / 1_000_000) as f64 / 1000.0
}

// ------------------------------------------------------------------------------- events ---

/// How often `events --follow` asks for news.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

pub fn events(ctx: &Context, follow: bool, output: Output) -> Result<()> {
    let Some(state) = ctx.state() else {
        bail!(
            "agent: down ({}); events live in the agent only",
            ctx.agent_line().error.unwrap_or_default()
        );
    };
    let report = EventsReport {
        agent: ctx.agent_line(),
        events: state.events.clone(),
    };
    if !follow {
        return super::print(&report, output);
    }
    // Following: one event per line as it comes (JSON/YAML: one document per event).
    let print_event = |e: &state::EventInfo| -> Result<()> {
        let text = match output {
            Output::Table => {
                let row = event_row(e);
                format!("{}  {}  {}\n", row[0], row[1], row[2])
            }
            Output::Json => serde_json::to_string(e)? + "\n",
            Output::Yaml => format!("---\n{}", serde_yaml_ng::to_string(e)?),
        };
        print!("{text}");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        Ok(())
    };
    if output == Output::Table {
        print!("{}", table::render(&EVENT_HEADERS, &[]));
    }
    let mut last = 0;
    for e in &report.events {
        print_event(e)?;
        last = e.seq;
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let reply = admin::query(
            &ctx.socket,
            &Request::Events { since: last },
            super::QUERY_TIMEOUT,
        )
        .context("following events")?;
        for e in reply.events.unwrap_or_default() {
            print_event(&e)?;
            last = last.max(e.seq);
        }
    }
}

// ---------------------------------------------------------------------------------- top ---

/// Identity and counters of every backend, for one `top` sample.
struct Sample {
    at: Instant,
    rows: Vec<(String, String, Option<String>, BackendCounters)>,
}

fn sample(ctx: &Context, maps: &BpfMaps) -> Result<Sample> {
    let mut rows = Vec::new();
    match ctx.state() {
        Some(state) => {
            for s in state.services.iter() {
                for b in &s.backends {
                    if let Some(id) = b.backend_id {
                        rows.push((
                            s.name.clone(),
                            b.address.clone(),
                            Some(b.locality.clone()),
                            maps.backend_counters(id)?,
                        ));
                    }
                }
            }
        }
        None => {
            for s in kernel_services(maps)? {
                for b in &s.backends {
                    rows.push((s.key.to_string(), b.endpoint(), None, b.counters));
                }
            }
        }
    }
    Ok(Sample {
        at: Instant::now(),
        rows,
    })
}

/// Rates between two samples of the same backends.
pub fn top_frame(
    agent: super::AgentLine,
    at: SystemTime,
    elapsed: Duration,
    before: &[(String, String, Option<String>, BackendCounters)],
    after: &[(String, String, Option<String>, BackendCounters)],
) -> TopFrame {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let earlier: BTreeMap<(&str, &str), &BackendCounters> = before
        .iter()
        .map(|(s, b, _, c)| ((s.as_str(), b.as_str()), c))
        .collect();
    let delta = |now: u64, then: u64| now.saturating_sub(then) as f64;
    let mut rows: Vec<TopRow> = after
        .iter()
        .map(|(service, backend, locality, c)| {
            let zero = BackendCounters::default();
            let p = earlier
                .get(&(service.as_str(), backend.as_str()))
                .copied()
                .unwrap_or(&zero);
            TopRow {
                service: service.clone(),
                backend: backend.clone(),
                locality: locality.clone(),
                new_flows_per_second: delta(c.new_flows, p.new_flows) / secs,
                flow_share_percent: 0.0,
                packets_per_second: delta(c.packets, p.packets) / secs,
                bytes_per_second: delta(c.bytes, p.bytes) / secs,
                reply_bytes_per_second: delta(c.reply_bytes, p.reply_bytes) / secs,
                responses_5xx_per_second: delta(c.responses[4], p.responses[4]) / secs,
            }
        })
        .collect();
    let mut per_service: BTreeMap<String, f64> = BTreeMap::new();
    for r in &rows {
        *per_service.entry(r.service.clone()).or_default() += r.new_flows_per_second;
    }
    for r in &mut rows {
        let total = per_service[&r.service];
        if total > 0.0 {
            r.flow_share_percent = r.new_flows_per_second * 100.0 / total;
        }
    }
    TopFrame {
        agent,
        at: state::timestamp(at),
        interval_seconds: (secs * 10.0).round() / 10.0,
        rows,
    }
}

pub fn top(ctx: &Context, interval: Duration, count: Option<u64>, output: Output) -> Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let maps = open_maps(ctx)?;
    let terminal = std::io::stdout().is_terminal();
    let mut before = sample(ctx, &maps)?;
    let mut frames = 0;
    while count.is_none_or(|n| frames < n) {
        std::thread::sleep(interval);
        let after = sample(ctx, &maps)?;
        let frame = top_frame(
            ctx.agent_line(),
            SystemTime::now(),
            after.at - before.at,
            &before.rows,
            &after.rows,
        );
        let text = match output {
            Output::Json => serde_json::to_string(&frame)? + "\n",
            Output::Yaml => format!("---\n{}", serde_yaml_ng::to_string(&frame)?),
            Output::Table if terminal => format!("\x1b[H\x1b[2J{}", format(&frame, output)?),
            Output::Table => format!("{}\n", format(&frame, output)?),
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        before = after;
        frames += 1;
    }
    Ok(())
}
