//! Policy apply latency and map memory at 100, 1 000, 10 000 and (full runs) 100 000 services:
//! how long the agent takes to put services into the kernel maps, to swap one service while
//! all the others are live, and how much kernel memory the maps take.
//!
//! Run by `cargo xtask bench` (needs root, CAP_BPF). Results go, as JSON, to the file named by
//! `GEOSTEER_BENCH_OUT`; `GEOSTEER_BENCH_QUICK=1` makes the runs shorter.
//!
//! Everything runs in this process against the real kernel object, loaded (not attached) with
//! maps sized for N services of 10 backends, exactly as the agent sizes them from its config
//! (`maxServices` N, `maxBackends` 10N, the default `tableChunks`):
//!
//! - **initial apply**: `Programmer::apply` of all N services into empty maps;
//! - **one service changed**: `Programmer::apply_one` with new weights for one service while N
//!   are live, which is what the controller calls on every health or policy change. Timed from
//!   the call to its return: the Maglev table build, the table write into free slots, the
//!   one update that makes it live, and any grace period it had to wait for;
//! - **one backend ejected**: `Controller::on_kernel_ejection`, the agent's handling of a kernel
//!   ejection event: outlier bookkeeping, the policy recompute of that service (locality
//!   failover), the swap, and the kernel health flags.
//!
//! Grace periods: the slots of a table that was live are only reused once no packet can still
//! be reading them. The programmer asks for that grace period in the background at every swap
//! and waits for it synchronously only when the slot map has no other room. A counting wrapper
//! around the maps records every synchronous wait.
//!
//! Map memory is compared with Cilium's design, computed: one 16,381-slot table of `u32`
//! backend ids per service (its default M), the rest of the maps as here.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use geosteer::{
    agent::monotonic_now,
    config,
    controller::Controller,
    dataplane::{BpfMaps, Dataplane},
    frontend::Frontend,
    loader::{self, MapSizes},
    programmer::{DesiredBackend, DesiredService, Programmer, build_table_chunks, table_size_for},
};
use geosteer_common::{
    Addr6, Backend, BackendState, KernelEvent, PROTO_TCP, ServiceConfig, ServiceState,
    ServiceValue, Settings, TableChunk,
};
use geosteer_tests::{
    Netns,
    agent::{Agent, PinDir},
};
use serde::Serialize;

const SERVICE_COUNTS: [u32; 3] = [100, 1_000, 10_000];
/// Full runs also load and apply this many (the largest `maxServices` this machine is sized
/// for in the terms: 100,000 services of 10 backends).
const LARGEST: u32 = 100_000;
const BACKENDS_PER_SERVICE: u32 = 10;
/// Cilium's default Maglev table size (`--bpf-lb-maglev-table-size`), one per service.
const CILIUM_TABLE_SIZE: u64 = 16_381;
/// The smallest conntrack the agent accepts: flows play no part here.
const CONNTRACK_SIZE: u32 = 1024;
const VPORT: u16 = 80;
const TPORT: u16 = 8080;
/// Steps through the services so that consecutive changes touch services far apart (and
/// every service once per N changes); coprime with every N above.
const STRIDE: u32 = 7_919;

#[derive(Serialize)]
struct Report {
    kernel: String,
    changes: usize,
    results: Vec<Scale>,
}

/// Everything measured at one service count.
#[derive(Serialize)]
struct Scale {
    services: u32,
    backends: u32,
    /// Loading the object with maps of this size (the kernel allocates and zeroes them).
    load_ms: f64,
    /// Kernel memory charged for every map of the object (`memlock` in /proc/self/fdinfo).
    map_bytes: u64,
    /// Of which the Maglev tables (the table map, sized by the default `tableChunks`).
    table_bytes: u64,
    /// Chunks the initial apply's tables take (64 B each), and the table map's capacity.
    table_chunks_used: u32,
    table_chunks: u32,
    /// The same maps with Cilium's tables instead (computed, see the module comment).
    cilium_design_bytes: u64,
    initial_apply_ms: f64,
    initial_apply_grace_waits: usize,
    /// `Programmer::apply` again with nothing changed (a reload that changes nothing).
    unchanged_apply_ms: f64,
    /// New weights for a different service each time.
    spread: Latency,
    /// Of which building the Maglev table (median, no map access).
    maglev_build_us: f64,
    /// New weights for the same service each time, back to back.
    same_service: Latency,
    /// `Controller::apply_all` into fresh maps (policy computed for every service).
    controller_initial_ms: f64,
    /// This process's resident memory right after `Controller::apply_all` (`VmRSS`): the
    /// agent's books for N services (config, policy views, programmer), plus the bench's own.
    controller_rss_bytes: u64,
    ejection: Latency,
    /// The real agent on a config file of these services.
    agent: AgentRun,
}

/// `geosteer agent` (the release binary) started on a config file of N services in a private
/// network namespace, attached to one interface there; no traffic.
#[derive(Serialize)]
struct AgentRun {
    /// The config file's size.
    config_bytes: u64,
    /// From start to "ready": the file parsed and validated, the object loaded, every service
    /// applied, the programs attached.
    ready_ms: f64,
    /// The agent's resident memory once ready (`VmRSS`) and its peak so far (`VmHWM`), from
    /// /proc/<pid>/status. Includes the pages of the table map it has written (mapped).
    rss_bytes: u64,
    peak_rss_bytes: u64,
    /// Its CPU time (user + system, /proc/<pid>/stat) over 5 s from 1 s after ready, as a
    /// share of one CPU: the cost of its timers with nothing happening, while its first
    /// reconcile round (which reads every backend flag) is still going round the services.
    idle_cpu: f64,
    /// The same over 5 s once that round is over (ceil(N / 4096) passes, one a second): the
    /// cost of an idle agent from then on.
    steady_cpu: f64,
}

#[derive(Serialize)]
struct Latency {
    count: usize,
    median_us: f64,
    p99_us: f64,
    max_us: f64,
    /// Changes that waited for a grace period synchronously.
    grace_waits: usize,
}

/// The Maglev part of a swap alone (no map access), median over the changes.
fn maglev_build_us(changes: usize) -> f64 {
    let desired = service(0);
    let ids: Vec<u32> = (0..BACKENDS_PER_SERVICE).collect();
    let times = (0..changes)
        .map(|_| {
            let started = Instant::now();
            let size = table_size_for(&desired);
            std::hint::black_box(build_table_chunks(&desired, size, &ids));
            started.elapsed()
        })
        .collect();
    latency(times, 0).median_us
}

fn main() -> Result<()> {
    geosteer_tests::require_root();
    let out_path = std::env::var_os("GEOSTEER_BENCH_OUT").context(
        "GEOSTEER_BENCH_OUT must name the output file (run through `cargo xtask bench`)",
    )?;
    let quick = std::env::var("GEOSTEER_BENCH_QUICK").is_ok_and(|v| v == "1");
    let changes = if quick { 50 } else { 200 };

    let mut results = Vec::new();
    let counts = SERVICE_COUNTS
        .into_iter()
        .chain((!quick).then_some(LARGEST));
    for services in counts {
        eprintln!("apply bench: {services} services");
        let scale = measure(services, changes)?;
        eprintln!(
            "  load {:.0} ms, maps {:.0} MiB, initial apply {:.1} ms, one service changed: \
             median {:.0} us p99 {:.0} us, ejection: median {:.0} us p99 {:.0} us",
            scale.load_ms,
            scale.map_bytes as f64 / (1 << 20) as f64,
            scale.initial_apply_ms,
            scale.spread.median_us,
            scale.spread.p99_us,
            scale.ejection.median_us,
            scale.ejection.p99_us
        );
        results.push(scale);
    }
    let report = Report {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        changes,
        results,
    };
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out_path.to_string_lossy()))?;
    Ok(())
}

fn measure(services: u32, changes: usize) -> Result<Scale> {
    let backends = services * BACKENDS_PER_SERVICE;
    let table_chunks = config::default_table_chunks(services);
    let sizes = MapSizes {
        max_services: services,
        max_backends: backends,
        conntrack: CONNTRACK_SIZE,
        conntrack6: geosteer_common::CONNTRACK6_SIZE,
        table_chunks,
    };

    // Programmer: the initial apply and single-service swaps.
    let started = Instant::now();
    let mut ebpf = loader::load(sizes, None).context("loading the kernel object")?;
    let load_ms = ms(started.elapsed());
    let (map_bytes, table_bytes) = map_memory(table_chunks)?;
    let cilium_design_bytes = map_bytes - table_bytes + u64::from(services) * CILIUM_TABLE_SIZE * 4;
    let mut maps = Counting::new(BpfMaps::take(&mut ebpf)?);
    let mut programmer = Programmer::new(services, backends, table_chunks);
    let mut desired: Vec<DesiredService> = (0..services).map(service).collect();

    let started = Instant::now();
    let report = programmer.apply(&mut maps, &desired)?;
    let initial_apply_ms = ms(started.elapsed());
    ensure!(report.added == services as usize, "{report:?}");
    let initial_apply_grace_waits = maps.take_waits();
    let (table_chunks_used, _) = programmer.table_chunks_used();

    let started = Instant::now();
    let report = programmer.apply(&mut maps, &desired)?;
    let unchanged_apply_ms = ms(started.elapsed());
    ensure!(report.unchanged == services as usize, "{report:?}");

    // Alternate each service between two weight sets, so every change is a real one.
    let mut flip = |programmer: &mut Programmer, maps: &mut Counting, index: u32| {
        let s = &mut desired[index as usize];
        s.backends[0].weight = if s.backends[0].weight == 1 { 3 } else { 1 };
        let started = Instant::now();
        let changed = programmer.apply_one(maps, s)?;
        let took = started.elapsed();
        ensure!(changed, "the weight change was not applied");
        Ok::<Duration, anyhow::Error>(took)
    };
    let mut times = Vec::new();
    for i in 0..changes {
        let index = (i as u64 * STRIDE as u64 % services as u64) as u32;
        times.push(flip(&mut programmer, &mut maps, index)?);
    }
    let spread = latency(times, maps.take_waits());
    let mut times = Vec::new();
    for _ in 0..changes {
        times.push(flip(&mut programmer, &mut maps, 0)?);
    }
    let same_service = latency(times, maps.take_waits());
    drop(programmer);
    drop(maps);
    drop(ebpf);

    // Controller: the same services with a locality failover policy, then ejections.
    let config = config::parse(&config_yaml(services, "")).context("bench config")?;
    let mut ebpf = loader::load(sizes, None).context("loading the kernel object")?;
    let mut maps = Counting::new(BpfMaps::take(&mut ebpf)?);
    let mut controller = Controller::new(config, Programmer::new(services, backends, table_chunks));
    let started = Instant::now();
    let applied = controller.apply_all(&mut maps)?;
    let controller_initial_ms = ms(started.elapsed());
    let controller_rss_bytes = rss_bytes()?;
    ensure!(applied == services as usize, "{applied} services applied");
    maps.take_waits();

    let mut times = Vec::new();
    for i in 0..changes {
        // The first pass over the services ejects their first cn-hangzhou endpoint (the rest
        // of the region takes 70%, cn-shanghai 30%), the second pass the other one (everything
        // fails over to cn-shanghai).
        let index = (i as u64 * STRIDE as u64 % services as u64) as u32;
        let endpoint = (i / services as usize) % 2;
        let key = service_key(index);
        let addr = backend_ip(index, endpoint as u32).into();
        let backend_id = controller
            .programmer
            .backend_id(&key, addr, TPORT.to_be())
            .context("backend id")?;
        let service_id = controller.programmer.service(&key).context("service")?.id;
        let now = monotonic_now();
        let event = KernelEvent {
            kind: geosteer_common::EVENT_EJECTED,
            backend_id,
            service_id,
            at_ns: now.as_nanos() as u64,
            consecutive_5xx: 1,
            consecutive_gateway: 1,
            ..KernelEvent::default()
        };
        let before = controller.swaps.count;
        let started = Instant::now();
        controller.on_kernel_ejection(&mut maps, &event, now)?;
        times.push(started.elapsed());
        ensure!(
            controller.swaps.count == before + 1,
            "the ejection did not swap the service's table"
        );
    }
    let ejection = latency(times, maps.take_waits());

    Ok(Scale {
        services,
        backends,
        load_ms,
        map_bytes,
        table_bytes,
        table_chunks_used,
        table_chunks,
        cilium_design_bytes,
        initial_apply_ms,
        initial_apply_grace_waits,
        unchanged_apply_ms,
        spread,
        maglev_build_us: maglev_build_us(changes),
        same_service,
        controller_initial_ms,
        controller_rss_bytes,
        ejection,
        agent: agent_run(services)?,
    })
}

/// Starts the real agent on `services` services (the controller's config, attached to one end of a
/// veth pair in a namespace of its own) and reads its memory once it is ready.
fn agent_run(services: u32) -> Result<AgentRun> {
    let ns = Netns::new("gs-bench-agent")?;
    ns.exec(&[
        "ip", "link", "add", "cl0", "type", "veth", "peer", "name", "cl1",
    ])?;
    ns.exec(&["ip", "link", "set", "cl0", "up"])?;
    let pins = PinDir::new("gsbench")?;
    let yaml = config_yaml(
        services,
        &format!("tc: [cl0], pinPath: {}, ", pins.pin_path().display()),
    );
    let started = Instant::now();
    let mut agent = Agent::start_within(&ns, &pins, &yaml, &[], Duration::from_secs(300))?;
    let ready_ms = ms(started.elapsed());
    let pid = agent.pid().context("agent pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let cpu_ticks = || -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command (which may hold spaces): utime and stime are the 12th and
        // 13th after its closing parenthesis.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("/proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        let field = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .context("/proc/<pid>/stat field")?
                .parse()
                .map_err(Into::into)
        };
        Ok(field(11)? + field(12)?)
    };
    let ready_at = Instant::now();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let window = Duration::from_secs(5);
    let cpu_over_window = || -> Result<f64> {
        let before = cpu_ticks()?;
        std::thread::sleep(window);
        Ok((cpu_ticks()? - before) as f64 / ticks_per_second / window.as_secs_f64())
    };
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu = cpu_over_window()?;
    // The first reconcile round: one pass a second (the config's interval), 4,096 services each.
    let first_round = Duration::from_secs(u64::from(services.div_ceil(4096)) + 2);
    std::thread::sleep(first_round.saturating_sub(ready_at.elapsed()));
    let steady_cpu = cpu_over_window()?;
    let run = AgentRun {
        config_bytes: yaml.len() as u64,
        ready_ms,
        rss_bytes: status_kib(&status, "VmRSS:")? * 1024,
        peak_rss_bytes: status_kib(&status, "VmHWM:")? * 1024,
        idle_cpu,
        steady_cpu,
    };
    agent.terminate()?;
    Ok(run)
}

/// Service `i`: VIP 198.19.0.0 + i, port 80, ten backends (from 10.0.0.0 on) at weight 1.
fn service(i: u32) -> DesiredService {
    DesiredService {
        name: format!("bench/svc-{i}:80/TCP"),
        key: service_key(i),
        key6: None,
        backends: (0..BACKENDS_PER_SERVICE)
            .map(|b| DesiredBackend {
                addr: backend_ip(i, b).into(),
                addr6: None,
                port: TPORT.to_be(),
                weight: 1,
                eject_after_5xx: 1,
                eject_after_gateway: 0,
                flags: 0,
                group: 0,
            })
            .collect(),
        settings: Default::default(),
    }
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i)
}

/// Distinct backend addresses for every service (198.18.0.0/16 holds 16 384 services' worth).
fn backend_ip(service: u32, backend: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + service * BACKENDS_PER_SERVICE + backend)
}

fn service_key(i: u32) -> Frontend {
    Frontend::new(vip(i), VPORT, PROTO_TCP)
}

/// The same services as [`service`] as an agent config: two endpoints in cn-hangzhou (the
/// node's region) and two in cn-shanghai, failover between them, and outlier detection.
/// The controller's services; `dataplane` opens the dataplane section's flow mapping.
fn config_yaml(services: u32, dataplane: &str) -> String {
    let mut yaml = format!(
        "node: {{name: bench, region: cn-hangzhou, zone: cn-hangzhou-b}}\n\
         dataplane: {{{dataplane}maxServices: {services}, maxBackends: {}, conntrackSize: {CONNTRACK_SIZE}}}\n\
         services:\n",
        services * BACKENDS_PER_SERVICE
    );
    for i in 0..services {
        yaml.push_str(&format!(
            "  - name: svc-{i}\n    vip: {}\n    ports: [{{port: {VPORT}, targetPort: {TPORT}}}]\n    endpoints:\n",
            vip(i)
        ));
        for b in 0..BACKENDS_PER_SERVICE {
            let (region, zone) = if b < 2 {
                ("cn-hangzhou", "cn-hangzhou-b")
            } else {
                ("cn-shanghai", "cn-shanghai-a")
            };
            yaml.push_str(&format!(
                "      - {{ip: {}, region: {region}, zone: {zone}}}\n",
                backend_ip(i, b)
            ));
        }
        yaml.push_str(
            "    trafficPolicy:\n      loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, to: cn-shanghai}]}}\n      outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n",
        );
    }
    yaml
}

/// `VmRSS` of this process, in bytes.
fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(status_kib(&status, "VmRSS:")? * 1024)
}

/// A `/proc/<pid>/status` figure in kB (`field` with its colon).
fn status_kib(status: &str, field: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in a process status"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latency(mut times: Vec<Duration>, grace_waits: usize) -> Latency {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(times[((times.len() - 1) as f64 * q).round() as usize]);
    Latency {
        count: times.len(),
        median_us: at(0.5),
        p99_us: at(0.99),
        max_us: at(1.0),
        grace_waits,
    }
}

/// Kernel memory of every BPF map this process holds (only the object loaded here), and of
/// the Maglev table map among them (`table_chunks` entries), from each map's fdinfo.
fn map_memory(table_chunks: u32) -> Result<(u64, u64)> {
    let mut total = 0;
    let mut tables = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let is_map = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let memlock = field("memlock:").context("no memlock in a map's fdinfo")?;
        total += memlock;
        // The table map: an array (type 2) of 64-byte chunks with `tableChunks` entries.
        if field("map_type:") == Some(2)
            && field("value_size:") == Some(64)
            && field("max_entries:") == Some(u64::from(table_chunks))
        {
            tables += memlock;
        }
    }
    ensure!(total > 0, "no BPF map found among this process's files");
    Ok((total, tables))
}

/// The real maps, counting the grace periods waited synchronously.
struct Counting {
    maps: BpfMaps,
    waits: usize,
}

impl Counting {
    fn new(maps: BpfMaps) -> Self {
        Self { maps, waits: 0 }
    }

    fn take_waits(&mut self) -> usize {
        std::mem::take(&mut self.waits)
    }
}

impl Dataplane for Counting {
    fn grace_period(&mut self) -> Result<()> {
        self.waits += 1;
        self.maps.grace_period()
    }

    // Everything else goes straight to the maps.
    fn write_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.maps.write_backend(id, backend)
    }
    fn write_backend_state(&mut self, id: u32, state: &BackendState) -> Result<()> {
        self.maps.write_backend_state(id, state)
    }
    fn write_backends(&mut self, entries: &[(u32, Backend)]) -> Result<()> {
        self.maps.write_backends(entries)
    }
    fn write_backend_states(&mut self, entries: &[(u32, BackendState)]) -> Result<()> {
        self.maps.write_backend_states(entries)
    }
    fn write_table(&mut self, start: u32, chunks: &[TableChunk]) -> Result<()> {
        self.maps.write_table(start, chunks)
    }
    fn write_tables(&mut self, tables: &[(u32, &[TableChunk])]) -> Result<()> {
        self.maps.write_tables(tables)
    }
    fn write_service_states(&mut self, entries: &[(u32, ServiceState)]) -> Result<()> {
        self.maps.write_service_states(entries)
    }
    fn write_service_configs(&mut self, entries: &[(u32, ServiceConfig)]) -> Result<()> {
        self.maps.write_service_configs(entries)
    }
    fn write_backend_addrs6(&mut self, entries: &[(u32, Addr6)]) -> Result<()> {
        self.maps.write_backend_addrs6(entries)
    }
    fn write_service(&mut self, key: &Frontend, value: &ServiceValue) -> Result<()> {
        self.maps.write_service(key, value)
    }
    fn remove_service(&mut self, key: &Frontend) -> Result<()> {
        self.maps.remove_service(key)
    }
    fn write_vip(&mut self, addr: IpAddr, ports: u32) -> Result<()> {
        self.maps.write_vip(addr, ports)
    }
    fn remove_vip(&mut self, addr: IpAddr) -> Result<()> {
        self.maps.remove_vip(addr)
    }
    fn write_settings(&mut self, settings: &Settings) -> Result<()> {
        self.maps.write_settings(settings)
    }
    fn write_service_state(&mut self, id: u32, state: &ServiceState) -> Result<()> {
        self.maps.write_service_state(id, state)
    }
    fn request_grace(&mut self, seq: u64) {
        self.maps.request_grace(seq)
    }
    fn grace_completed(&self) -> u64 {
        self.maps.grace_completed()
    }
    fn set_xdp_target(&mut self, ifindex: u32, vouched: bool) -> Result<()> {
        self.maps.set_xdp_target(ifindex, vouched)
    }
    fn forget_flows(&mut self, backend_id: u32, keep_http: bool) -> Result<()> {
        self.maps.forget_flows(backend_id, keep_http)
    }
    fn count_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
        count: u32,
    ) -> Result<bool> {
        self.maps
            .count_connect_timeouts(backend_id, addr, port, count)
    }
    fn dismiss_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
    ) -> Result<bool> {
        self.maps.dismiss_connect_timeouts(backend_id, addr, port)
    }
    fn sweep_flows(
        &mut self,
        now_ns: u64,
        budget: std::time::Duration,
    ) -> Result<Option<geosteer::conntrack::PassReport>> {
        self.maps.sweep_flows(now_ns, budget)
    }
    fn read_services(&self) -> Result<Vec<(Frontend, ServiceValue)>> {
        self.maps.read_services()
    }
    fn read_backend_addrs6(&self) -> Result<Vec<Addr6>> {
        self.maps.read_backend_addrs6()
    }
    fn read_table(&self, start: u32, len: u32) -> Result<Vec<TableChunk>> {
        self.maps.read_table(start, len)
    }
    fn read_backends(&self) -> Result<Vec<(u32, Backend)>> {
        self.maps.read_backends()
    }
    fn read_backend(&self, id: u32) -> Result<Backend> {
        self.maps.read_backend(id)
    }
    fn write_service_config(&mut self, id: u32, config: &ServiceConfig) -> Result<()> {
        self.maps.write_service_config(id, config)
    }
    fn read_backend_state(&self, id: u32) -> Result<BackendState> {
        self.maps.read_backend_state(id)
    }
    fn read_backend_states(&self) -> Result<Vec<BackendState>> {
        self.maps.read_backend_states()
    }
    fn read_service_states(&self) -> Result<Vec<ServiceState>> {
        self.maps.read_service_states()
    }
    fn read_service_state(&self, id: u32) -> Result<ServiceState> {
        self.maps.read_service_state(id)
    }
    fn read_service_config(&self, id: u32) -> Result<ServiceConfig> {
        self.maps.read_service_config(id)
    }
}
