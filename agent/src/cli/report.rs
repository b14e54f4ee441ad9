//! The reports of the diagnostics commands and their human tables. Pure: the golden-output
//! tests render fixtures of every report here.
//!
//! The serialized reports are what `-o json` / `-o yaml` print, so their field names are kept
//! stable for scripts (fields are only ever added).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{AgentLine, Render, table};
use crate::state::{AgentInfo, BackendStatus, EventInfo, LocalityStatus, PriorityStatus};

fn or_dash<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or("-".to_string(), T::to_string)
}

fn percent(value: f64) -> String {
    format!("{value:.1}%")
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// 1536 → "1.5 KiB": byte counts an operator reads at a glance.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "2025-01-01T12:03:04.567Z" → "12:03:04Z": the time of day, enough within one ejection.
fn time_of_day(rfc3339: &str) -> String {
    match rfc3339.get(11..19) {
        Some(t) => format!("{t}Z"),
        None => rfc3339.to_string(),
    }
}

fn seconds(value: f64) -> String {
    if value < 60.0 {
        format!("{value:.1}s")
    } else {
        humantime::format_duration(std::time::Duration::from_secs(value as u64)).to_string()
    }
}

fn priority_name(level: Option<usize>) -> String {
    level.map_or("-".to_string(), |l| format!("P{l}"))
}

// ------------------------------------------------------------------------------- status ---

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatusReport {
    pub agent: AgentLine,
    /// The agent's own account, when it is up.
    pub info: Option<AgentInfo>,
    pub socket: String,
    pub pin_path: String,
    /// Whether `explain` can run the live program (its pin exists).
    pub programs_pinned: bool,
    pub attachments: Vec<LinkStatus>,
    pub maps: Vec<MapFill>,
    pub drops: BTreeMap<String, u64>,
    pub swaps: Option<SwapSummary>,
    /// The agent's conntrack GC.
    pub conntrack_gc: Option<crate::state::ConntrackInfo>,
    /// Connect timeouts the kernel suspected, and what the agent's own connection said.
    pub connect_timeouts: Option<crate::state::ConnectTimeoutInfo>,
    /// Kernel memory of the maps, as the agent planned and checked it.
    pub memory: Option<crate::memory::MemoryPlan>,
    /// Kernel conntrack events (`partner_restored`, `midstream`).
    pub conntrack_events: BTreeMap<String, u64>,
    /// Why the maps could not be read, if so.
    pub maps_error: Option<String>,
    /// The Kubernetes source, in Kubernetes mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kube::SourceStatus>,
}

/// A program link pinned under `<pinPath>/links`: attached for as long as the pin exists.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkStatus {
    pub interface: String,
    /// As the agent reports it (`tc-ingress`, `tc-egress`, `xdp-native`, `xdp-generic`), or
    /// from the pin's name when the agent is down.
    pub hook: String,
    /// The kernel's link type: `tcx` or `xdp`.
    pub link_type: String,
    pub program_id: Option<u32>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MapFill {
    pub map: String,
    pub used: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SwapSummary {
    pub count: u64,
    pub mean_microseconds: f64,
}

impl Render for StatusReport {
    fn table(&self) -> String {
        let mut fields: Vec<(&str, String)> = Vec::new();
        match (&self.info, &self.agent.error) {
            (Some(info), _) => {
                fields.push((
                    "agent",
                    format!(
                        "up, pid {}, version {}, since {}",
                        info.pid, info.version, info.started_at
                    ),
                ));
                fields.push((
                    "node",
                    format!(
                        "{} ({}/{}, cluster {})",
                        info.node,
                        info.region,
                        info.zone,
                        if info.cluster.is_empty() {
                            "-"
                        } else {
                            &info.cluster
                        }
                    ),
                ));
                fields.push(("ready", yes_no(info.ready).to_string()));
                fields.push((
                    "config",
                    format!(
                        "{}, generation {}",
                        info.config_path.as_deref().unwrap_or("built-in"),
                        info.generation
                    ),
                ));
                fields.push((
                    "last reload",
                    match &info.last_reload {
                        Some(r) => format!(
                            "{} ({}): {} — {}",
                            r.at,
                            r.trigger,
                            serde_json::to_value(r.result)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_default(),
                            r.message
                        ),
                        None => "none".to_string(),
                    },
                ));
            }
            (None, error) => fields.push((
                "agent",
                format!("down ({})", error.as_deref().unwrap_or("no answer")),
            )),
        }
        fields.push(("admin socket", self.socket.clone()));
        fields.push((
            "pin path",
            format!(
                "{} (programs pinned: {})",
                self.pin_path,
                yes_no(self.programs_pinned)
            ),
        ));
        if let Some(swaps) = &self.swaps {
            fields.push((
                "swaps",
                format!("{}, mean {:.0} µs", swaps.count, swaps.mean_microseconds),
            ));
        }
        if let Some(t) = &self.connect_timeouts {
            fields.push((
                "timeouts",
                format!(
                    "connect timeouts: {} counted (the agent's own connect failed too), {} \
                     dismissed (the backend accepted it), {} inconclusive",
                    t.confirmed, t.dismissed, t.inconclusive
                ),
            ));
        }
        if let Some(memory) = &self.memory
            && memory.possible_cpus > 0
        {
            fields.push((
                "map memory",
                format!(
                    "{} on {} possible CPUs (per-CPU maps {}); limit {}",
                    crate::memory::mib(memory.total),
                    memory.possible_cpus,
                    crate::memory::mib(memory.per_cpu),
                    match memory.limit {
                        Some(limit) =>
                            format!("{} ({})", crate::memory::mib(limit), memory.limit_source),
                        None => memory.limit_source.clone(),
                    }
                ),
            ));
        }
        // One line (the labels above set the column width).
        let mut conntrack = Vec::new();
        if let Some(gc) = &self.conntrack_gc {
            conntrack.push(match &gc.last_pass_at {
                Some(at) => format!(
                    "GC every {}s, last pass {at} ({:.1} ms, {} entries); removed since start: \
                     {} expired, {} orphans, {} ended",
                    gc.gc_interval_s, gc.last_pass_ms, gc.entries, gc.expired, gc.orphans, gc.ended
                ),
                None => format!("GC every {}s, no pass yet", gc.gc_interval_s),
            });
        }
        if !self.conntrack_events.is_empty() {
            conntrack.push(
                self.conntrack_events
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        if !conntrack.is_empty() {
            fields.push(("conntrack", conntrack.join("; ")));
        }
        if let Some(kubernetes) = &self.kubernetes {
            for (i, line) in kubernetes.describe().into_iter().enumerate() {
                fields.push((if i == 0 { "kubernetes" } else { "" }, line));
            }
        }
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
        let mut out: String = fields
            .iter()
            .map(|(k, v)| {
                // An empty label continues the field above.
                let label = if k.is_empty() {
                    String::new()
                } else {
                    format!("{k}:")
                };
                format!("{label:<width$} {v}\n")
            })
            .collect();

        out.push('\n');
        if self.attachments.is_empty() {
            out.push_str("attachments: none (no pinned links: nothing is steered)\n");
        } else {
            // The error column only when a pin could not be read.
            let errors = self.attachments.iter().any(|a| a.error.is_some());
            let headers = ["INTERFACE", "HOOK", "LINK", "PROGRAM ID", "ERROR"];
            let rows: Vec<Vec<String>> = self
                .attachments
                .iter()
                .map(|a| {
                    let mut row = vec![
                        a.interface.clone(),
                        a.hook.clone(),
                        a.link_type.clone(),
                        or_dash(&a.program_id),
                    ];
                    if errors {
                        row.push(a.error.clone().unwrap_or_default());
                    }
                    row
                })
                .collect();
            out.push_str(&table::render(
                &headers[..if errors { 5 } else { 4 }],
                &rows,
            ));
        }
        out.push('\n');
        if let Some(error) = &self.maps_error {
            out.push_str(&format!("maps: cannot be read: {error}\n"));
            return out;
        }
        let rows: Vec<Vec<String>> = self
            .maps
            .iter()
            .map(|m| {
                let fill = if m.capacity == 0 {
                    0.0
                } else {
                    m.used as f64 * 100.0 / m.capacity as f64
                };
                vec![
                    m.map.clone(),
                    m.used.to_string(),
                    m.capacity.to_string(),
                    percent(fill),
                ]
            })
            .collect();
        out.push_str(&table::render(&["MAP", "USED", "CAPACITY", "FILL"], &rows));
        let drops: Vec<String> = self
            .drops
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        out.push_str(&format!("\ndrops: {}\n", drops.join(", ")));
        out
    }
}

// ----------------------------------------------------------------------------- services ---

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServicesReport {
    pub agent: AgentLine,
    pub services: Vec<ServiceRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceRow {
    /// `namespace/name:port/PROTOCOL` (None with the agent down: the maps hold no names).
    pub name: Option<String>,
    /// `VIP:port/PROTOCOL`.
    pub frontend: String,
    pub service_id: Option<u32>,
    pub mode: Option<String>,
    pub load: Option<String>,
    pub panic: bool,
    /// Backends that may take new flows (with the agent down: not ejected in the kernel).
    pub healthy: usize,
    pub total: usize,
    pub priorities: Vec<PriorityStatus>,
    pub localities: Vec<LocalityRow>,
    pub counters: Option<TrafficRow>,
    /// How the kernel reads the flows (`http/1.x`, `opaque`, `detect`) and why; None with the
    /// agent down.
    pub signals: Option<String>,
    pub signals_reason: Option<String>,
    /// The clusters the endpoints come from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Why the service is kept to this cluster, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_local: Option<String>,
    pub connect_timeout: Option<String>,
    /// Session affinity timeout, when on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LocalityRow {
    pub priority: Option<usize>,
    pub name: String,
    /// Configured locality weight, when locality weighting is on.
    pub weight: Option<f64>,
    /// Weight after availability, renormalised within the priority, in percent.
    pub effective_percent: Option<f64>,
    pub healthy: usize,
    pub total: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrafficRow {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl Render for ServicesReport {
    fn table(&self) -> String {
        let mut out = self.agent.banner();
        if self.services.is_empty() {
            out.push_str("no services\n");
            return out;
        }
        let rows: Vec<Vec<String>> = self
            .services
            .iter()
            .map(|s| {
                vec![
                    or_dash(&s.name),
                    s.frontend.clone(),
                    or_dash(&s.signals),
                    or_dash(&s.mode),
                    or_dash(&s.load),
                    format!("{}/{}", s.healthy, s.total),
                    or_dash(&s.counters.as_ref().map(|c| c.new_flows)),
                    or_dash(&s.counters.as_ref().map(|c| c.packets)),
                    or_dash(&s.counters.as_ref().map(|c| human_bytes(c.bytes as f64))),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                "SERVICE",
                "FRONTEND",
                "SIGNALS",
                "MODE",
                "LOAD",
                "HEALTHY",
                "NEW FLOWS",
                "PACKETS",
                "BYTES",
            ],
            &rows,
        ));
        for s in &self.services {
            if s.priorities.is_empty() && s.localities.is_empty() {
                continue;
            }
            out.push('\n');
            out.push_str(&format!(
                "{}{}\n",
                s.name.as_deref().unwrap_or(&s.frontend),
                if s.panic {
                    " (panic: health ignored)"
                } else {
                    ""
                }
            ));
            if let (Some(signals), Some(reason)) = (&s.signals, &s.signals_reason) {
                out.push_str(&format!(
                    "  signals: {signals} ({reason}); connect timeout {}\n",
                    or_dash(&s.connect_timeout)
                ));
            }
            if let Some(timeout) = &s.session_affinity {
                out.push_str(&format!(
                    "  session affinity: ClientIP, {timeout} since a client's last new connection\n"
                ));
            }
            match (&s.cluster_local, s.clusters.len()) {
                (Some(why), _) => out.push_str(&format!(
                    "  clusters: {} only: cluster-local ({why})\n",
                    or_dash(&s.clusters.first())
                )),
                (None, 2..) => out.push_str(&format!(
                    "  clusters: {} (merged by namespace/name)\n",
                    s.clusters.join(", ")
                )),
                _ => {}
            }
            let rows: Vec<Vec<String>> = s
                .priorities
                .iter()
                .map(|p| {
                    vec![
                        format!("P{}", p.level),
                        percent(p.load_percent),
                        percent(p.health_percent),
                        format!("{}/{}", p.healthy, p.total),
                        yes_no(p.panic).to_string(),
                    ]
                })
                .collect();
            out.push_str(&table::indent(
                &table::render(&["PRIORITY", "LOAD", "HEALTH", "HEALTHY", "PANIC"], &rows),
                "  ",
            ));
            let rows: Vec<Vec<String>> = s
                .localities
                .iter()
                .map(|l| {
                    vec![
                        l.name.clone(),
                        priority_name(l.priority),
                        l.weight.map_or("-".to_string(), |w| format!("{w}")),
                        l.effective_percent.map_or("-".to_string(), percent),
                        format!("{}/{}", l.healthy, l.total),
                    ]
                })
                .collect();
            out.push_str(&table::indent(
                &table::render(
                    &["LOCALITY", "PRIORITY", "WEIGHT", "EFFECTIVE", "HEALTHY"],
                    &rows,
                ),
                "  ",
            ));
        }
        out
    }
}

// ----------------------------------------------------------------------------- backends ---

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackendsReport {
    pub agent: AgentLine,
    pub services: Vec<ServiceBackends>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceBackends {
    pub service: Option<String>,
    pub frontend: String,
    pub backends: Vec<BackendRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackendRow {
    /// `ip:port`.
    pub address: String,
    /// A dual-stack endpoint's `[ip6]:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
    pub backend_id: Option<u32>,
    pub locality: Option<String>,
    pub cluster: Option<String>,
    /// Configured weight.
    pub weight: Option<u32>,
    /// Share of the service's new flows now, in percent.
    pub effective_percent: Option<f64>,
    pub priority: Option<usize>,
    /// `ok`, `ejected`, `unhealthy` (active checks), `ejected,unhealthy`, or `draining` (a
    /// terminating endpoint: its open flows carry on, no new ones).
    pub health: String,
    pub ejected_until: Option<String>,
    pub ejections_total: Option<u64>,
    /// Active health check verdict: `healthy` or `unhealthy`; None without a check.
    pub active: Option<String>,
    /// The kernel's ejected flag (new flows skip the backend).
    pub kernel_ejected: Option<bool>,
    pub consecutive_5xx: Option<u64>,
    pub consecutive_gateway_errors: Option<u64>,
    pub counters: Option<CounterRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CounterRow {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// By status class: `1xx` … `5xx`.
    pub responses: BTreeMap<String, u64>,
    pub resets: u64,
    pub connect_failures: u64,
}

impl BackendRow {
    /// The health column, from the agent's view.
    pub fn health_of(status: &BackendStatus) -> String {
        if status.draining {
            return "draining".to_string();
        }
        match (status.ejected, status.active_healthy == Some(false)) {
            (false, false) => "ok",
            (true, false) => "ejected",
            (false, true) => "unhealthy",
            (true, true) => "ejected,unhealthy",
        }
        .to_string()
    }
}

impl Render for BackendsReport {
    fn table(&self) -> String {
        let mut out = self.agent.banner();
        if self.services.is_empty() {
            out.push_str("no services\n");
            return out;
        }
        for (i, s) in self.services.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            match &s.service {
                Some(name) => out.push_str(&format!("{name} ({})\n", s.frontend)),
                None => out.push_str(&format!("{}\n", s.frontend)),
            }
            let rows: Vec<Vec<String>> = s
                .backends
                .iter()
                .map(|b| {
                    let count = |f: fn(&CounterRow) -> u64| or_dash(&b.counters.as_ref().map(f));
                    let class = |class: &'static str| {
                        or_dash(
                            &b.counters
                                .as_ref()
                                .map(|c| c.responses.get(class).copied().unwrap_or(0)),
                        )
                    };
                    vec![
                        match &b.address6 {
                            Some(address6) => format!("{} {address6}", b.address),
                            None => b.address.clone(),
                        },
                        or_dash(&b.locality),
                        or_dash(&b.cluster),
                        or_dash(&b.weight),
                        b.effective_percent.map_or("-".to_string(), percent),
                        priority_name(b.priority),
                        b.health.clone(),
                        or_dash(&b.active),
                        b.ejected_until
                            .as_deref()
                            .map_or("-".to_string(), time_of_day),
                        or_dash(&b.ejections_total),
                        count(|c| c.new_flows),
                        count(|c| c.packets),
                        or_dash(&b.counters.as_ref().map(|c| human_bytes(c.bytes as f64))),
                        class("2xx"),
                        class("4xx"),
                        class("5xx"),
                        count(|c| c.resets),
                        count(|c| c.connect_failures),
                    ]
                })
                .collect();
            out.push_str(&table::render(
                &[
                    "ENDPOINT",
                    "LOCALITY",
                    "CLUSTER",
                    "WEIGHT",
                    "EFFECTIVE",
                    "PRIO",
                    "HEALTH",
                    "ACTIVE",
                    "EJECTED UNTIL",
                    "EJECTIONS",
                    "NEW FLOWS",
                    "PACKETS",
                    "BYTES",
                    "2XX",
                    "4XX",
                    "5XX",
                    "RESETS",
                    "CONNECT FAIL",
                ],
                &rows,
            ));
        }
        out
    }
}

// -------------------------------------------------------------------------------- flows ---

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlowsReport {
    pub agent: AgentLine,
    pub flows: Vec<FlowRow>,
}

/// One flow: the original-direction conntrack entry (its reply entry is implied).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlowRow {
    pub client: String,
    /// `VIP:port/PROTOCOL`.
    pub frontend: String,
    pub service: Option<String>,
    /// The DNAT target, `ip:port`.
    pub backend: String,
    pub backend_id: u32,
    /// TCP: `syn-sent`, `established`, `closed`; UDP: `-`.
    pub state: String,
    pub age_seconds: f64,
    pub idle_seconds: f64,
}

impl Render for FlowsReport {
    fn table(&self) -> String {
        let mut out = self.agent.banner();
        let rows: Vec<Vec<String>> = self
            .flows
            .iter()
            .map(|f| {
                vec![
                    f.client.clone(),
                    f.frontend.clone(),
                    or_dash(&f.service),
                    f.backend.clone(),
                    f.state.clone(),
                    seconds(f.age_seconds),
                    seconds(f.idle_seconds),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                "CLIENT", "FRONTEND", "SERVICE", "BACKEND", "STATE", "AGE", "IDLE",
            ],
            &rows,
        ));
        out.push_str(&format!(
            "{} flow{}\n",
            self.flows.len(),
            if self.flows.len() == 1 { "" } else { "s" }
        ));
        out
    }
}

// ------------------------------------------------------------------------------ explain ---

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExplainVerdict {
    /// The program DNATed the synthetic packet to `backend`.
    #[default]
    Backend,
    /// This 5-tuple already has a flow in conntrack; its packets (a new connection from the
    /// same port included) go to `backend`. The program was not run, so the flow is left alone.
    ExistingFlow,
    /// The program dropped the packet (no backend can take new flows).
    Dropped,
    /// No service has this VIP:port/protocol; the programs leave such packets alone.
    NotAService,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExplainReport {
    pub agent: AgentLine,
    /// `ip:port` of the synthetic client.
    pub source: String,
    /// The source port was not given and was picked at random.
    pub source_port_random: bool,
    /// `VIP:port/PROTOCOL`.
    pub frontend: String,
    pub service: Option<String>,
    pub verdict: ExplainVerdict,
    pub backend: Option<String>,
    pub backend_id: Option<u32>,
    /// The program that was run (BPF_PROG_TEST_RUN) and what it returned.
    pub program: Option<String>,
    pub return_code: Option<u32>,
    /// The conntrack entries the run created and explain removed again.
    pub conntrack_entries_removed: usize,
    pub flow_hash: Option<u32>,
    /// Maglev slot of the flow hash, out of `table_size`.
    pub slot: Option<u32>,
    pub table_size: u32,
    /// The backend the slot itself holds.
    pub slot_backend: Option<String>,
    /// How many following slots (holding ejected backends) selection went past.
    pub probed_past_ejected: Option<u32>,
    /// Every probed slot was ejected: selection fell back to scanning the backend list.
    pub fallback_scan: bool,
    pub mode: Option<String>,
    pub locality_weighted: Option<bool>,
    pub panic: Option<bool>,
    pub priority: Option<PriorityStatus>,
    pub locality: Option<LocalityStatus>,
    pub backend_status: Option<BackendStatus>,
    pub kernel_ejected: Option<bool>,
    /// How the kernel reads this service's flows for health signals, and why.
    pub signals: Option<String>,
}

impl Render for ExplainReport {
    fn table(&self) -> String {
        let mut out = String::new();
        if !self.agent.up {
            out.push_str(&format!(
                "agent: down ({}); the verdict below comes from the pinned programs and maps, \
                 without policy context\n",
                self.agent.error.as_deref().unwrap_or("no answer")
            ));
        }
        out.push_str(&format!(
            "{} → {}{}\n",
            self.source,
            self.frontend,
            if self.source_port_random {
                "  (source port picked at random)"
            } else {
                ""
            }
        ));
        let service = self
            .service
            .as_deref()
            .map_or(String::new(), |s| format!(", service {s}"));
        match self.verdict {
            ExplainVerdict::NotAService => {
                out.push_str("verdict:  not a service: the programs pass such packets untouched\n");
                return out;
            }
            ExplainVerdict::Dropped => {
                out.push_str(&format!(
                    "verdict:  dropped{service}: no backend can take new flows\n"
                ));
            }
            ExplainVerdict::ExistingFlow => {
                out.push_str(&format!(
                    "verdict:  existing flow → {}{service}\n\
                     why:      this 5-tuple is in conntrack, so its packets (a new connection \
                     from this port included) keep that backend; the program was not run, to \
                     leave the flow alone\n",
                    or_dash(&self.backend)
                ));
                return out;
            }
            ExplainVerdict::Backend => {
                out.push_str(&format!(
                    "verdict:  {} (backend id {}){service}\n",
                    or_dash(&self.backend),
                    or_dash(&self.backend_id)
                ));
            }
        }
        let has_why = self.slot.is_some()
            || self.priority.is_some()
            || self.locality.is_some()
            || self.locality_weighted == Some(false)
            || self.backend_status.is_some();
        if has_why {
            out.push_str("why:\n");
        }
        if let (Some(slot), Some(hash)) = (self.slot, self.flow_hash) {
            let mut line = format!(
                "  table slot {slot} of {} (flow hash {hash:#010x}) holds {}",
                self.table_size,
                or_dash(&self.slot_backend)
            );
            if self.fallback_scan {
                line.push_str(&format!(
                    "; all {} probed slots ejected: fallback scan of the backend list",
                    geosteer_common::MAX_EJECTED_PROBE
                ));
            } else if let Some(k) = self.probed_past_ejected {
                line.push_str(&format!(" (probed past {k} ejected)"));
            }
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(p) = &self.priority {
            out.push_str(&format!(
                "  priority P{}: {} of new flows (health {}, {}/{} healthy{})\n",
                p.level,
                percent(p.load_percent),
                percent(p.health_percent),
                p.healthy,
                p.total,
                if p.panic {
                    ", in panic: health ignored"
                } else {
                    ", no panic"
                }
            ));
        }
        match (&self.locality, self.locality_weighted) {
            (Some(l), _) => out.push_str(&format!(
                "  locality {}: weight {}, effective {} of P{} ({}/{} healthy)\n",
                l.name,
                l.configured_weight,
                percent(l.effective_weight_percent),
                l.priority,
                l.healthy,
                l.total
            )),
            (None, Some(false)) => out.push_str(&format!(
                "  locality weighting off (mode {}): the level's backends share by weight\n",
                or_dash(&self.mode)
            )),
            _ => {}
        }
        if let Some(signals) = &self.signals {
            out.push_str(&format!("  signals: {signals}\n"));
        }
        if let Some(b) = &self.backend_status {
            out.push_str(&format!(
                "  backend: weight {}, {} of the service's new flows, health {}, {} ejections\n",
                b.weight,
                percent(b.share_percent),
                BackendRow::health_of(b),
                b.ejections_total
            ));
        }
        if let Some(program) = &self.program {
            let returned = match self.return_code {
                Some(0) => "TC_ACT_OK".to_string(),
                Some(2) => "TC_ACT_SHOT".to_string(),
                other => or_dash(&other),
            };
            let cleanup = match self.conntrack_entries_removed {
                0 => "it created no conntrack entry".to_string(),
                n => format!("the {n} conntrack entries it created were removed"),
            };
            out.push_str(&format!(
                "verdict from BPF_PROG_TEST_RUN of the live {program} (returned {returned}); \
                 {cleanup}\n"
            ));
        }
        out
    }
}

// ------------------------------------------------------------------------------- events ---

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EventsReport {
    pub agent: AgentLine,
    pub events: Vec<EventInfo>,
}

/// One event as a table line (also used by `events --follow`).
pub fn event_row(e: &EventInfo) -> Vec<String> {
    vec![
        e.at.clone(),
        serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        e.message.clone(),
    ]
}

pub const EVENT_HEADERS: [&str; 3] = ["TIME", "KIND", "MESSAGE"];

impl Render for EventsReport {
    fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self.events.iter().map(event_row).collect();
        table::render(&EVENT_HEADERS, &rows)
    }
}

// ---------------------------------------------------------------------------------- top ---

/// One refresh of `top`: rates over the last interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TopFrame {
    pub agent: AgentLine,
    pub at: String,
    pub interval_seconds: f64,
    pub rows: Vec<TopRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TopRow {
    pub service: String,
    pub backend: String,
    pub locality: Option<String>,
    pub new_flows_per_second: f64,
    /// This backend's part of the service's new flows in the interval, in percent.
    pub flow_share_percent: f64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    pub reply_bytes_per_second: f64,
    pub responses_5xx_per_second: f64,
}

impl Render for TopFrame {
    fn table(&self) -> String {
        let mut out = self.agent.banner();
        out.push_str(&format!(
            "geosteer top — {}, rates over {:.1}s\n",
            self.at, self.interval_seconds
        ));
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.service.clone(),
                    r.backend.clone(),
                    or_dash(&r.locality),
                    format!("{:.1}", r.new_flows_per_second),
                    percent(r.flow_share_percent),
                    format!("{:.1}", r.packets_per_second),
                    format!("{}/s", human_bytes(r.bytes_per_second)),
                    format!("{}/s", human_bytes(r.reply_bytes_per_second)),
                    format!("{:.1}", r.responses_5xx_per_second),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                "SERVICE",
                "BACKEND",
                "LOCALITY",
                "NEW FLOWS/S",
                "SHARE",
                "PACKETS/S",
                "IN",
                "OUT",
                "5XX/S",
            ],
            &rows,
        ));
        out
    }
}
