//! The daemon: load (or re-adopt) the kernel programs and pinned maps, program the services,
//! attach, then run the control loop until SIGINT/SIGTERM (which leave the programs attached:
//! see [`run`]):
//! - kernel ejection events → outlier bookkeeping and a recompute of that service;
//! - the outlier interval sweep → un-ejections;
//! - active probe results → health changes;
//! - SIGHUP or a change of the config file → reload (an invalid config is reported with its
//!   field path and the running state is kept).
//!
//! After every change it publishes a fresh [`AgentState`] to the admin socket and the metrics
//! endpoint (see `admin` and `metrics`), which serve the last one without waiting for the loop.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use geosteer_common::{EVENT_CONNECT_TIMEOUT, EVENT_EJECTED, KernelEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    admin,
    config::{self, Config},
    controller::{Controller, EventKind, HealthKey},
    dataplane::{BpfMaps, Dataplane as _},
    loader::{self, MapSizes},
    metrics, probe,
    programmer::Programmer,
    state::{self, AgentState, AttachmentInfo, ReloadInfo, ReloadResult, Runtime},
    timeouts,
};

/// How often the outlier sweep runs at most (each service's own interval decides).
const SWEEP_TICK: Duration = Duration::from_millis(100);
/// How often the config file is checked for changes.
const CONFIG_POLL: Duration = Duration::from_millis(500);
/// Time the conntrack sweep may take per tick: a pass over a large table is many ticks, so the
/// loop never waits long on it. More while flows are to be ended (an ejection).
const FLOW_SWEEP_BUDGET: Duration = Duration::from_millis(3);
const FLOW_SWEEP_BUDGET_BUSY: Duration = Duration::from_millis(20);

/// The kernel's clock (bpf_ktime_get_ns): CLOCK_MONOTONIC.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The published state and what goes into it besides the controller.
struct Publisher {
    runtime: Runtime,
    tx: watch::Sender<Arc<AgentState>>,
    published_revision: Option<u64>,
    statuses: state::StatusCache,
}

impl Publisher {
    /// Publishes a new snapshot if anything changed since the last one.
    fn publish(&mut self, controller: &Controller) {
        if self.published_revision == Some(controller.revision) {
            return;
        }
        self.force(controller);
    }

    fn force(&mut self, controller: &Controller) {
        let services = self.statuses.services(controller, monotonic_now());
        let snapshot = state::snapshot(controller, &self.runtime, services);
        self.tx.send_replace(Arc::new(snapshot));
        self.published_revision = Some(controller.revision);
    }
}

/// The Kubernetes source, when `kubernetes.enabled`: desired state arrives on `configs`; a
/// reloaded config file goes to the source (which merges it) instead of being applied.
struct KubeWiring {
    configs: mpsc::Receiver<Config>,
    file_updates: watch::Sender<Config>,
    status: watch::Receiver<crate::kube::SourceStatus>,
}

/// Starts the Kubernetes source and waits for its first desired state (live, or the snapshot
/// when no API server answers): programming the file's placeholder state first would overwrite
/// what a restarted agent re-adopted from its pins.
async fn start_kubernetes(file_config: &Config) -> Result<(Config, KubeWiring)> {
    let source = crate::kube::KubeSource::connect(file_config.clone()).await?;
    let (file_updates, file_rx) = watch::channel(file_config.clone());
    let source = source.with_file_updates(file_rx);
    let status = source.status();
    let (tx, mut configs) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(e) = source.run(tx).await {
            error!(error = %format!("{e:#}"), "kubernetes source stopped");
        }
    });
    let first = configs
        .recv()
        .await
        .context("the kubernetes source ended before its first desired state")?;
    info!(
        services = first.services.len(),
        "desired state from kubernetes"
    );
    Ok((
        first,
        KubeWiring {
            configs,
            file_updates,
            status,
        },
    ))
}

/// Writes what the kernel programs log (aya-log) into the agent's log, as it arrives: through
/// the `log` crate, which `tracing-subscriber` forwards; the records' target is
/// `geosteer::kernel` (e.g. `RUST_LOG=info,geosteer::kernel=debug` shows every drop).
async fn forward_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the AsyncFd owns the logger, which owns the ring's fd, for as long as it is
    // registered.
    let ring = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut ring = match ring {
        Ok(ring) => ring,
        Err(e) => {
            warn!(error = %e, "kernel log records will not be read");
            return;
        }
    };
    loop {
        match ring.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                warn!(error = %e, "reading kernel log records stopped");
                return;
            }
        }
    }
}

pub async fn run(config_path: Option<PathBuf>, config: Config) -> Result<()> {
    let (config, kube) = if config.kubernetes.as_ref().is_some_and(|k| k.enabled) {
        let (config, wiring) = start_kubernetes(&config).await?;
        (config, Some(wiring))
    } else {
        (config, None)
    };
    for warning in config::warnings(&config) {
        warn!("{warning}");
    }
    let dataplane = config.dataplane.clone();
    let admin_config = config.admin.clone();
    let (tx, rx) = watch::channel(Arc::new(AgentState::default()));
    let heartbeat = Arc::new(state::Heartbeat::default());
    let mut publisher = Publisher {
        runtime: Runtime {
            started_at: Some(SystemTime::now()),
            config_path: config_path.as_ref().map(|p| p.display().to_string()),
            pin_path: dataplane.pin_path.display().to_string(),
            generation: 1,
            ..Default::default()
        },
        tx,
        published_revision: None,
        statuses: state::StatusCache::default(),
    };
    // Up before the programs: /healthz answers and /readyz says "not yet" while loading.
    let _admin_socket = admin::serve(&admin_config.socket, rx.clone())?;
    let _metrics = match admin_config.metrics_address() {
        Some(address) => {
            let server =
                metrics::serve(address, rx, dataplane.pin_path.clone(), heartbeat.clone()).await?;
            info!(address = %server.address, "serving /metrics, /healthz, /readyz");
            Some(server)
        }
        None => None,
    };

    // Before any map exists: a node whose maps would outgrow the limit gets a clear error, not
    // an OOM kill half-way through loading.
    let sizes = MapSizes::from(&dataplane);
    let mut memory = crate::memory::plan(&sizes, crate::memory::possible_cpus()?);
    crate::memory::check(&mut memory, dataplane.memory_limit, &sizes)?;
    info!(
        total = %crate::memory::mib(memory.total),
        per_cpu_maps = %crate::memory::mib(memory.per_cpu),
        possible_cpus = memory.possible_cpus,
        limit = %memory.limit.map_or("none".to_string(), crate::memory::mib),
        limit_source = %memory.limit_source,
        "kernel memory of the maps"
    );
    publisher.runtime.memory = memory;
    let (mut ebpf, migrations) = loader::load_migrating(sizes, Some(&dataplane.pin_path))?;
    loader::pin_programs(&mut ebpf, &dataplane.pin_path)?;
    let mut maps = BpfMaps::take(&mut ebpf)?;
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => {
            tokio::spawn(forward_kernel_log(logger));
        }
        Err(e) => warn!(error = %e, "kernel log records will not be read"),
    }
    maps.sweeper = crate::conntrack::Sweeper::new(
        crate::conntrack::Timeouts::from(&dataplane.conntrack),
        dataplane.conntrack.gc_interval,
    );
    publisher.runtime.conntrack.gc_interval_s = dataplane.conntrack.gc_interval.as_secs_f64();
    let kept = maps.read_settings()?;
    let settings = crate::dataplane::node_settings(&kept, &dataplane)?;
    if kept.hash_seed == 0 {
        info!("created this node's flow-hash key (kept in the pinned settings map)");
    } else {
        info!("kept this node's flow-hash key from the pinned settings map");
    }
    maps.write_settings(&settings)?;

    let programmer = Programmer::recover(
        &maps,
        dataplane.max_services,
        dataplane.max_backends,
        dataplane.table_chunks(),
    )?;
    let recovered = programmer.live_keys().len();
    if recovered > 0 {
        info!(services = recovered, "re-adopted state from pinned maps");
    }
    let mut controller = Controller::new(config, programmer);
    let links_dir = dataplane.pin_path.join("links");
    // An upgrade that migrated maps: until the attach, the previous agent's programs run on the
    // maps moved aside and on the shared ones, so a table written now would land only in the
    // new table map while its flip in the shared service map would show it to them. The new
    // programs take over first, on the state copied into the new maps, then the config
    // applies. Otherwise the services go in first, so the first packet already finds them.
    let mut attached = None;
    let mut migrations = Some(migrations);
    if migrations.as_ref().is_some_and(|m| !m.is_empty()) {
        info!("maps were migrated: attaching before applying the config");
        attached = Some(attach_and_finish(
            &mut ebpf,
            &dataplane,
            &links_dir,
            migrations.take().unwrap_or_default(),
        )?);
    }
    let started = Instant::now();
    let changed = controller.apply_all(&mut maps)?;
    info!(
        services = controller.services.len(),
        changed,
        elapsed_us = started.elapsed().as_micros() as u64,
        "services programmed"
    );
    let attached = match attached {
        Some(attached) => attached,
        None => attach_and_finish(
            &mut ebpf,
            &dataplane,
            &links_dir,
            migrations.take().unwrap_or_default(),
        )?,
    };
    let mut attachments = attached?;
    // Only the devices the config vouches for now (the pinned map outlives restarts).
    let stale: Vec<u32> = maps.xdp_targets.keys().filter_map(|k| k.ok()).collect();
    for ifindex in stale {
        let _ = maps.set_xdp_target(ifindex, false);
    }
    for iface in loader::matching_interfaces(&dataplane.xdp_redirect_to)? {
        match loader::ifindex(&iface) {
            Ok(ifindex) => vouch_xdp_target(&mut maps, &iface, ifindex, true),
            Err(e) => warn!(iface, error = %format!("{e:#}"), "not an XDP target"),
        }
    }
    publisher.runtime.attachments = attachment_infos(&attachments);
    publisher.runtime.ready = true;
    controller.event(
        EventKind::Agent,
        "agent started: programs attached, config applied",
    );
    // Published before the log line, so whoever waits for "ready" finds it on the socket.
    publisher.force(&controller);
    info!(
        node = %controller.config().node.name,
        region = %controller.config().node.region,
        attachments = attachments.items.len(),
        pins = %dataplane.pin_path.display(),
        "ready"
    );

    // Interfaces that appear later (pods starting) are attached as they come.
    let (link_tx, link_rx) = mpsc::channel(256);
    let patterns: Vec<String> = dataplane
        .tc
        .iter()
        .chain(&dataplane.xdp)
        .chain(&dataplane.xdp_redirect_to)
        .cloned()
        .collect();
    let link_watcher = tokio::spawn(async move {
        if let Err(e) = crate::links::watch(patterns, link_tx).await {
            error!(error = %format!("{e:#}"), "link watcher stopped");
        }
    });
    let wiring = Wiring {
        config_path: config_path.as_deref(),
        publisher: &mut publisher,
        links: LinkWiring {
            ebpf: &mut ebpf,
            attachments: &mut attachments,
            dataplane: &dataplane,
            links_dir: &links_dir,
            events: link_rx,
        },
        kube,
        heartbeat: &heartbeat,
    };

    let result = control_loop(&mut controller, &mut maps, wiring).await;
    link_watcher.abort();
    // A stop is not an uninstall: SIGTERM is what every rolling update, `kubectl rollout
    // restart` and node drain sends, and the node's traffic must not notice. The links,
    // programs and maps stay pinned and keep steering (as after kill -9) until the next agent
    // re-adopts them; only `geosteer uninstall` removes them.
    drop(attachments);
    drop(maps);
    drop(ebpf);
    info!(
        pins = %dataplane.pin_path.display(),
        "stopped; the programs stay attached and keep steering (`geosteer uninstall` removes them)"
    );
    result
}

/// What the control loop works with besides the controller and the maps.
struct Wiring<'a> {
    /// The config file to reload on SIGHUP and on change, if any.
    config_path: Option<&'a Path>,
    publisher: &'a mut Publisher,
    links: LinkWiring<'a>,
    kube: Option<KubeWiring>,
    heartbeat: &'a state::Heartbeat,
}

/// What the control loop needs to attach and detach programs as interfaces come and go.
struct LinkWiring<'a> {
    ebpf: &'a mut aya::Ebpf,
    attachments: &'a mut loader::Attachments,
    dataplane: &'a config::Dataplane,
    links_dir: &'a Path,
    events: mpsc::Receiver<crate::links::LinkEvent>,
}

/// Attaches the programs, then finishes the migrations: the previous agent's programs ran on
/// the previous maps until the attach, so what they added since the first copy is copied now,
/// then the old maps go — also when attaching failed part-way (returned inside), so a restart
/// does not resume a migration over live entries.
fn attach_and_finish(
    ebpf: &mut aya::Ebpf,
    dataplane: &crate::config::Dataplane,
    links_dir: &Path,
    migrations: Vec<crate::migrate::Migration>,
) -> Result<Result<loader::Attachments>> {
    let attached = loader::attach(ebpf, dataplane, links_dir);
    loader::finish_migrations(migrations, &dataplane.pin_path)?;
    Ok(attached)
}

/// Lets XDP redirect to `iface` (or no longer), logging what it did.
fn vouch_xdp_target(maps: &mut BpfMaps, iface: &str, ifindex: u32, vouched: bool) {
    match maps.set_xdp_target(ifindex, vouched) {
        Ok(()) if vouched => info!(iface, ifindex, "XDP may redirect to this interface"),
        Ok(()) => {}
        Err(e) => error!(iface, error = %format!("{e:#}"), "updating the XDP targets"),
    }
}

impl LinkWiring<'_> {
    fn on_event(
        &mut self,
        event: crate::links::LinkEvent,
        publisher: &mut Publisher,
        maps: &mut BpfMaps,
    ) {
        let redirect_target = |name: &str| {
            self.dataplane
                .xdp_redirect_to
                .iter()
                .any(|p| glob::Pattern::new(p).is_ok_and(|g| g.matches(name)))
        };
        let attached = |name: &str| {
            self.dataplane
                .tc
                .iter()
                .chain(&self.dataplane.xdp)
                .any(|p| glob::Pattern::new(p).is_ok_and(|g| g.matches(name)))
        };
        match &event {
            crate::links::LinkEvent::Added(name, ifindex) if redirect_target(name) => {
                vouch_xdp_target(maps, name, *ifindex, true);
            }
            crate::links::LinkEvent::Removed(name, ifindex) if redirect_target(name) => {
                vouch_xdp_target(maps, name, *ifindex, false);
            }
            _ => {}
        }
        let name = match &event {
            crate::links::LinkEvent::Added(name, _) | crate::links::LinkEvent::Removed(name, _) => {
                name.clone()
            }
        };
        if !attached(&name) {
            return;
        }
        match event {
            crate::links::LinkEvent::Added(name, _) => {
                if let Err(e) = self.attachments.attach_interface(
                    self.ebpf,
                    self.dataplane,
                    &name,
                    self.links_dir,
                ) {
                    error!(iface = %name, error = %format!("{e:#}"), "attaching to a new interface");
                }
            }
            crate::links::LinkEvent::Removed(name, _) => {
                self.attachments.forget_interface(&name);
                info!(iface = %name, "interface gone, detached");
            }
        }
        publisher.runtime.attachments = attachment_infos(self.attachments);
        publisher.published_revision = None;
    }
}

fn attachment_infos(attachments: &loader::Attachments) -> Vec<AttachmentInfo> {
    attachments
        .items
        .iter()
        .map(|a| AttachmentInfo {
            interface: a.interface.clone(),
            hook: a.hook.to_string(),
        })
        .collect()
}

async fn control_loop(
    controller: &mut Controller,
    maps: &mut BpfMaps,
    wiring: Wiring<'_>,
) -> Result<()> {
    let Wiring {
        config_path,
        publisher,
        mut links,
        mut kube,
        heartbeat,
    } = wiring;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let ring_fd = std::os::fd::AsFd::as_fd(&maps.events).try_clone_to_owned()?;
    // SAFETY: the OwnedFd is a dup of the ring buffer's fd, owned by the AsyncFd for its whole
    // life, so it stays open and refers to the same ring.
    let events_fd =
        unsafe { AsyncFd::register_with_interest(ring_fd, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the events ring: {e}"))?;
    let mut sweep = tokio::time::interval(SWEEP_TICK);
    let mut config_poll = tokio::time::interval(CONFIG_POLL);
    let mut config_stamp = config_path.and_then(file_stamp);
    let (probers, mut probe_rx) = Probers::start(controller);
    let mut node = Node {
        controller,
        maps,
        probers,
    };
    // The agent's own connections that confirm or dismiss suspected connect timeouts.
    let (check_tx, mut check_rx) = mpsc::channel::<(u32, SocketAddr, probe::ConnectResult)>(1024);
    let mut kube_status = kube.as_ref().map(|k| k.status.clone());

    loop {
        heartbeat.beat(monotonic_now());
        publisher.publish(node.controller);
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                if let Some(path) = config_path {
                    let outcome = match &kube {
                        Some(k) => forward_file(node.controller, path, "SIGHUP", &k.file_updates),
                        None => node.reload_file(path, "SIGHUP"),
                    };
                    publisher.runtime.record_reload(outcome);
                    config_stamp = file_stamp(path);
                }
            }
            _ = config_poll.tick() => {
                if let Some(path) = config_path {
                    let stamp = file_stamp(path);
                    if stamp != config_stamp {
                        config_stamp = stamp;
                        let outcome = match &kube {
                            Some(k) => forward_file(node.controller, path, "file change", &k.file_updates),
                            None => node.reload_file(path, "file change"),
                        };
                        publisher.runtime.record_reload(outcome);
                    }
                }
            }
            Some(status) = kube_status_change(&mut kube_status) => {
                publisher.runtime.kubernetes = Some(status);
                publisher.force(node.controller);
            }
            Some(config) = recv_kube(&mut kube) => {
                let outcome = node.apply_config(config, "kubernetes", Instant::now());
                publisher.runtime.record_reload(outcome);
            }
            Some(event) = links.events.recv() => {
                links.on_event(event, publisher, node.maps);
            }
            guard = events_fd.readable() => {
                let mut guard = guard?;
                let mut events = Vec::new();
                while let Some(item) = node.maps.events.next() {
                    if item.len() >= std::mem::size_of::<KernelEvent>() {
                        // SAFETY: the kernel wrote a KernelEvent (repr(C), plain data); the
                        // item is at least that long; read_unaligned copes with any alignment.
                        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const KernelEvent) });
                    }
                }
                guard.clear_ready();
                for event in events {
                    match event.kind {
                        EVENT_EJECTED => {
                            if let Err(e) = node.controller.on_kernel_ejection(node.maps, &event, monotonic_now()) {
                                error!(error = %format!("{e:#}"), "handling a kernel ejection");
                            }
                        }
                        EVENT_CONNECT_TIMEOUT => {
                            if let Some(endpoint) = node.controller.on_connect_timeout(event.backend_id) {
                                let tx = check_tx.clone();
                                let backend_id = event.backend_id;
                                tokio::spawn(async move {
                                    let result = probe::try_connect(endpoint, timeouts::CHECK_DEADLINE).await;
                                    let _ = tx.send((backend_id, endpoint, result)).await;
                                });
                            }
                        }
                        other => warn!(kind = other, "unknown kernel event"),
                    }
                }
            }
            Some((backend_id, endpoint, result)) = check_rx.recv() => {
                if let Err(e) = node.controller.on_connect_check(node.maps, backend_id, endpoint, result) {
                    error!(error = %format!("{e:#}"), "counting confirmed connect timeouts");
                }
            }
            _ = sweep.tick() => {
                if let Err(e) = node.controller.sweep(node.maps, monotonic_now()) {
                    error!(error = %format!("{e:#}"), "outlier sweep");
                }
                sweep_flows(node.controller, node.maps, publisher);
            }
            Some((key, result)) = probe_rx.recv() => {
                if let Err(e) = node.controller.on_probe(node.maps, key, result) {
                    error!(error = %format!("{e:#}"), "handling a probe result");
                }
            }
        }
    }
    Ok(())
}

/// One bounded step of the conntrack GC; a completed pass is logged and published.
fn sweep_flows(controller: &mut Controller, maps: &mut BpfMaps, publisher: &mut Publisher) {
    let budget = if maps.sweeper.busy() {
        FLOW_SWEEP_BUDGET_BUSY
    } else {
        FLOW_SWEEP_BUDGET
    };
    let report = match maps.sweep_flows(monotonic_now().as_nanos() as u64, budget) {
        Ok(Some(report)) => report,
        Ok(None) => return,
        Err(e) => {
            error!(error = %format!("{e:#}"), "conntrack sweep");
            return;
        }
    };
    for forget in &report.forgotten {
        controller.event(
            EventKind::Reset,
            format!(
                "ended {} {}flows of backend id {}",
                forget.flows,
                if forget.keep_http { "non-HTTP " } else { "" },
                forget.backend_id
            ),
        );
    }
    if report.expired + report.orphans > 0 || !report.forgotten.is_empty() {
        info!(
            entries = report.entries,
            expired = report.expired,
            orphans = report.orphans,
            ended = report.forgotten.iter().map(|f| f.flows).sum::<usize>(),
            took_ms = report.took.as_millis() as u64,
            "conntrack pass"
        );
    }
    let totals = maps.sweeper.totals;
    let info = &mut publisher.runtime.conntrack;
    info.last_pass_at = Some(state::timestamp(SystemTime::now()));
    info.last_pass_ms = report.took.as_secs_f64() * 1000.0;
    info.entries = report.entries as u64;
    info.flows = report.flows as u64;
    info.passes = totals.passes;
    info.expired = totals.expired;
    info.orphans = totals.orphans;
    info.ended = totals.forgotten;
    publisher.published_revision = None;
}

/// Modification time and length: enough to notice an edited or replaced file.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Runtime {
    fn record_reload(&mut self, outcome: ReloadInfo) {
        if outcome.result == ReloadResult::Applied {
            self.generation += 1;
        }
        self.last_reload = Some(outcome);
    }
}

fn reload_outcome(why: &str, result: ReloadResult, message: String) -> ReloadInfo {
    ReloadInfo {
        at: state::timestamp(SystemTime::now()),
        trigger: why.to_string(),
        result,
        message,
    }
}

/// Reads and validates the config file; an invalid one is reported and nothing changes.
fn load_file(controller: &mut Controller, path: &Path, why: &str) -> Result<Config, ReloadInfo> {
    config::load(path).map_err(|e| {
        error!(
            trigger = why,
            "config rejected, keeping the running state:\n{e}"
        );
        let message = one_line(&e.to_string());
        controller.event(
            EventKind::Reload,
            format!("reload ({why}) rejected: {message}"),
        );
        reload_outcome(why, ReloadResult::Rejected, message)
    })
}

/// With the Kubernetes source, the file is one input of the desired state: a valid file goes to
/// the source, whose merged result comes back through the `kubernetes` branch.
fn forward_file(
    controller: &mut Controller,
    path: &Path,
    why: &str,
    file_updates: &watch::Sender<Config>,
) -> ReloadInfo {
    match load_file(controller, path, why) {
        Ok(config) => {
            file_updates.send_replace(config);
            reload_outcome(
                why,
                ReloadResult::Applied,
                "passed to the kubernetes source".into(),
            )
        }
        Err(outcome) => outcome,
    }
}

/// The Kubernetes source's next status (None: none comes, the source is gone or absent).
async fn kube_status_change(
    status: &mut Option<watch::Receiver<crate::kube::SourceStatus>>,
) -> Option<crate::kube::SourceStatus> {
    match status {
        Some(status) => match status.changed().await {
            Ok(()) => Some(status.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn recv_kube(kube: &mut Option<KubeWiring>) -> Option<Config> {
    match kube {
        Some(k) => k.configs.recv().await,
        None => std::future::pending().await,
    }
}

fn one_line(s: &str) -> String {
    s.lines().collect::<Vec<_>>().join("; ")
}

/// One active check's result for one endpoint.
type ProbeResult = (HealthKey, Result<(), String>);

/// The active health checks: a task per endpoint of every service with a healthCheck, sending
/// results to the control loop; started again whenever the config changes; stopped on drop.
struct Probers {
    tx: mpsc::Sender<ProbeResult>,
    tasks: Vec<JoinHandle<()>>,
}

impl Probers {
    fn start(controller: &Controller) -> (Self, mpsc::Receiver<ProbeResult>) {
        let (tx, rx) = mpsc::channel(1024);
        let mut probers = Self {
            tx,
            tasks: Vec::new(),
        };
        probers.restart(controller);
        (probers, rx)
    }

    /// The checks of the controller's current config, in place of those running.
    fn restart(&mut self, controller: &Controller) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.tasks = controller
            .probe_specs()
            .into_iter()
            .map(|(key, spec, interval)| {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let result = probe::probe_once(&spec).await;
                        if tx.send((key, result)).await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
    }
}

impl Drop for Probers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the control loop changes: the controller, the maps it writes, and the health checks
/// that follow its config.
struct Node<'a> {
    controller: &'a mut Controller,
    maps: &'a mut BpfMaps,
    probers: Probers,
}

impl Node<'_> {
    /// Reads, validates and applies the config file; an invalid one changes nothing.
    fn reload_file(&mut self, path: &Path, why: &str) -> ReloadInfo {
        let started = Instant::now();
        match load_file(self.controller, path, why) {
            Ok(config) => self.apply_config(config, why, started),
            Err(outcome) => outcome,
        }
    }

    /// Applies a validated config (from the file or the Kubernetes source).
    fn apply_config(&mut self, config: Config, why: &str, started: Instant) -> ReloadInfo {
        let controller = &mut *self.controller;
        if config.dataplane != controller.config().dataplane
            || config.admin != controller.config().admin
        {
            warn!("dataplane or admin settings changed: they take effect at the next agent start");
        }
        for warning in config::warnings(&config) {
            warn!("{warning}");
        }
        let result = match controller.reload(self.maps, config) {
            Ok(changed) => {
                let elapsed_us = started.elapsed().as_micros() as u64;
                info!(trigger = why, changed, elapsed_us, "config reloaded");
                let message = format!("{changed} services changed in {elapsed_us} µs");
                controller.event(EventKind::Reload, format!("reload ({why}): {message}"));
                reload_outcome(why, ReloadResult::Applied, message)
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "applying the reloaded config");
                let message = format!("{e:#}");
                controller.event(
                    EventKind::Reload,
                    format!("reload ({why}) failed to apply: {message}"),
                );
                reload_outcome(why, ReloadResult::Failed, message)
            }
        };
        self.probers.restart(self.controller);
        result
    }
}
