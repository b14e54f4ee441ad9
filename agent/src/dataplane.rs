//! The map-writing edge: everything the agent writes into the kernel goes through the
//! [`Dataplane`] trait. [`BpfMaps`] is the real implementation over the loaded (and pinned) maps.

use std::{
    net::IpAddr,
    os::fd::AsFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray};
use geosteer_common::{
    Addr, Addr6, Backend, BackendCounters, BackendSignals, BackendState, BackendTraffic,
    DropReason, FlowKey6, FlowKeyOf, FlowValue6, FlowValueOf, ServiceConfig, ServiceKey,
    ServiceKey6, ServiceState, ServiceValue, Settings, TIMEOUT_CONFIRMED, TIMEOUT_DISMISSED,
    TableChunk, TimeoutCount, TrafficCounters, map_names, program_names,
};

pub use crate::bpf_batch::PartlyWritten;
use crate::conntrack::{Batch, FlowTable, FlowTables, Sweeper};
use crate::frontend::{Frontend, KernelKey};
use crate::mapped::MappedArray;

pub mod memory;

/// Writes the agent makes into the data path. Each call is one map operation, so the order in
/// which [`crate::programmer::Programmer`] calls them is the order the kernel observes.
pub trait Dataplane {
    fn write_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    /// Writes a backend's outlier state whole. Only safe while the kernel leaves it alone: a
    /// fresh backend id, or ending an ejection (the kernel ignores an ejected host's signals).
    fn write_backend_state(&mut self, id: u32, state: &BackendState) -> Result<()>;
    /// [`Dataplane::write_backend`] for each entry, in order (one batch where the map can).
    fn write_backends(&mut self, entries: &[(u32, Backend)]) -> Result<()> {
        for (id, backend) in entries {
            self.write_backend(*id, backend)?;
        }
        Ok(())
    }
    /// [`Dataplane::write_backend_state`] for each entry, in order (one batch where it can).
    fn write_backend_states(&mut self, entries: &[(u32, BackendState)]) -> Result<()> {
        for (id, state) in entries {
            self.write_backend_state(*id, state)?;
        }
        Ok(())
    }
    /// Writes a table (the backend list, then the Maglev slots) into free chunks of the table
    /// map, from `start` on: chunks no live service points at.
    fn write_table(&mut self, start: u32, chunks: &[TableChunk]) -> Result<()>;
    /// [`Dataplane::write_table`] for each `(start, chunks)`, in order (one batch where the
    /// map can).
    fn write_tables(&mut self, tables: &[(u32, &[TableChunk])]) -> Result<()> {
        for (start, chunks) in tables {
            self.write_table(*start, chunks)?;
        }
        Ok(())
    }
    /// IPv6 backends' addresses (`GS_BACKEND_ADDRS6`), by backend id: written before the
    /// backend entries and the table that name them.
    fn write_backend_addrs6(&mut self, entries: &[(u32, Addr6)]) -> Result<()>;
    /// The one update that makes a service (or its new table) live.
    fn write_service(&mut self, key: &Frontend, value: &ServiceValue) -> Result<()>;
    /// [`Dataplane::write_service`] for each entry, in order (one batch where it can); on an
    /// error, how many of them (the first) were written.
    fn write_services(
        &mut self,
        entries: &[(Frontend, ServiceValue)],
    ) -> std::result::Result<(), PartlyWritten> {
        for (written, (key, value)) in entries.iter().enumerate() {
            self.write_service(key, value)
                .map_err(|error| PartlyWritten { written, error })?;
        }
        Ok(())
    }
    fn remove_service(&mut self, key: &Frontend) -> Result<()>;
    fn write_vip(&mut self, addr: IpAddr, ports: u32) -> Result<()>;
    /// [`Dataplane::write_vip`] for each (address, ports) entry (one batch where it can; an
    /// error may leave some of them written).
    fn write_vips(&mut self, entries: &[(IpAddr, u32)]) -> Result<()> {
        for (addr, ports) in entries {
            self.write_vip(*addr, *ports)?;
        }
        Ok(())
    }
    fn remove_vip(&mut self, addr: IpAddr) -> Result<()>;
    fn write_settings(&mut self, settings: &Settings) -> Result<()>;
    /// Kernel-owned: written only to zero a newly allocated service id.
    fn write_service_state(&mut self, id: u32, state: &ServiceState) -> Result<()>;
    fn write_service_config(&mut self, id: u32, config: &ServiceConfig) -> Result<()>;
    /// [`Dataplane::write_service_state`] for each entry, in order (one batch where it can).
    fn write_service_states(&mut self, entries: &[(u32, ServiceState)]) -> Result<()> {
        for (id, state) in entries {
            self.write_service_state(*id, state)?;
        }
        Ok(())
    }
    /// [`Dataplane::write_service_config`] for each entry, in order (one batch where it can).
    fn write_service_configs(&mut self, entries: &[(u32, ServiceConfig)]) -> Result<()> {
        for (id, config) in entries {
            self.write_service_config(*id, config)?;
        }
        Ok(())
    }
    /// Waits until no packet that started before this call is still running a program, so a
    /// table retired before it can be rewritten.
    fn grace_period(&mut self) -> Result<()>;
    /// Starts a grace period in the background covering everything retired up to flip `seq`,
    /// so the next swap of a service rarely has to wait for one.
    fn request_grace(&mut self, _seq: u64) {}
    /// The highest flip sequence number a completed grace period covers.
    fn grace_completed(&self) -> u64 {
        0
    }

    /// Whether XDP may redirect to the interface `ifindex` (`dataplane.xdpRedirectTo`).
    fn set_xdp_target(&mut self, ifindex: u32, vouched: bool) -> Result<()>;

    /// Ends the flows pinned to `backend_id` (with `keep_http`, all but HTTP/1.x flows): both
    /// conntrack entries of each go, so its next packet is steered anew. Queued: the next
    /// conntrack passes of [`Dataplane::sweep_flows`] do it.
    fn forget_flows(&mut self, backend_id: u32, keep_http: bool) -> Result<()>;

    /// Counts `count` connect timeouts of the backend the agent confirmed (each a connect
    /// failure, through the kernel's own atomic bookkeeping, which may eject it). Returns false
    /// when `backend_id` no longer names `addr:port` (network byte order): nothing counted.
    fn count_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
        count: u32,
    ) -> Result<bool>;

    /// The backend accepted the agent's own connection: its suspected connect timeouts are
    /// dismissed, and the kernel takes it as an accepted connection, so SYNs sent before now
    /// raise no more suspicions. Returns false when `backend_id` no longer names `addr:port`.
    fn dismiss_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
    ) -> Result<bool>;

    /// One bounded step of the conntrack GC (and of queued [`Dataplane::forget_flows`]); the
    /// report of a pass it completed.
    fn sweep_flows(
        &mut self,
        now_ns: u64,
        budget: std::time::Duration,
    ) -> Result<Option<crate::conntrack::PassReport>>;

    // Reads, for re-adopting the state a previous agent left in pinned maps.
    /// Both families' service maps.
    fn read_services(&self) -> Result<Vec<(Frontend, ServiceValue)>>;
    /// Every `GS_BACKEND_ADDRS6` slot, indexed by backend id.
    fn read_backend_addrs6(&self) -> Result<Vec<Addr6>>;
    /// `len` chunks of the table map from `start` on.
    fn read_table(&self, start: u32, len: u32) -> Result<Vec<TableChunk>>;
    fn read_backend(&self, id: u32) -> Result<Backend>;
    /// Every backend slot, by id (most are empty).
    fn read_backends(&self) -> Result<Vec<(u32, Backend)>>;
    fn read_backend_state(&self, id: u32) -> Result<BackendState>;
    /// Every backend id's state, indexed by id (one batch where the map can).
    fn read_backend_states(&self) -> Result<Vec<BackendState>>;
    fn read_service_state(&self, id: u32) -> Result<ServiceState>;
    /// Every service id's state, indexed by id (one batch where the map can).
    fn read_service_states(&self) -> Result<Vec<ServiceState>>;
    fn read_service_config(&self, id: u32) -> Result<ServiceConfig>;
}

/// The `len` values of an array map of `T`, indexed by key, in batches.
fn read_array<T: aya::Pod>(fd: std::os::fd::BorrowedFd<'_>, len: u32) -> Result<Vec<T>> {
    let values = crate::bpf_batch::read_array_range(fd, 0, len, size_of::<T>())?;
    Ok(values
        .iter()
        // SAFETY: each value holds `size_of::<T>()` bytes read from the map, and any bytes are
        // a valid `T` (`aya::Pod`: plain integers); read unaligned.
        .map(|value| unsafe { std::ptr::read_unaligned(value.as_ptr().cast::<T>()) })
        .collect())
}

/// A service's live table, read back from the table map and decoded as the kernel reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTable {
    /// Maglev slots, each the global id of the backend it names (`None`: an index past the
    /// list). Empty: no backend takes new flows.
    pub slots: Vec<Option<u32>>,
    /// The service's backend ids.
    pub backends: Vec<u32>,
}

impl KernelTable {
    pub fn read(dp: &dyn Dataplane, entry: &ServiceValue) -> Result<Self> {
        let chunks = dp.read_table(entry.table_start, entry.table_chunks())?;
        let chunk = |index: u32| chunks.get(index.wrapping_sub(entry.table_start) as usize);
        let backends: Vec<u32> = (0..entry.backend_count)
            .map_while(|i| {
                let (c, lane) = entry.id_chunk(i);
                chunk(c).map(|c| c.id(lane))
            })
            .collect();
        let slots = (0..entry.table_size)
            .map_while(|s| {
                let (c, lane) = entry.slot_chunk(s);
                chunk(c).map(|c| backends.get(c.slot(lane) as usize).copied())
            })
            .collect();
        Ok(Self { slots, backends })
    }

    /// The backend at `slot` (taken modulo the table size, as the kernel does).
    pub fn slot(&self, slot: u32) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        self.slots[slot as usize % self.slots.len()]
    }
}

/// Waits for an RCU grace period. TC and XDP programs run inside RCU read-side sections, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is documented to call `synchronize_rcu()` on SMP kernels
/// (kernel/sched/membarrier.c); on one CPU the syscall itself is a quiescent state.
pub fn synchronize_rcu() -> Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: plain syscall with integer arguments.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
    Ok(())
}

/// Background grace periods: one thread at a time runs `synchronize_rcu` for the newest
/// requested flip sequence number and publishes what it covered.
#[derive(Default)]
pub struct BackgroundGrace {
    requested: AtomicU64,
    completed: AtomicU64,
    running: AtomicBool,
}

impl BackgroundGrace {
    pub fn request(self: &Arc<Self>, seq: u64) {
        self.requested.fetch_max(seq, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let grace = self.clone();
        std::thread::spawn(move || {
            loop {
                let target = grace.requested.load(Ordering::SeqCst);
                if synchronize_rcu().is_err() {
                    grace.running.store(false, Ordering::SeqCst);
                    return;
                }
                grace.completed.fetch_max(target, Ordering::SeqCst);
                if grace.requested.load(Ordering::SeqCst) == target {
                    grace.running.store(false, Ordering::SeqCst);
                    // A request that slipped in between the load and the store starts a new
                    // round, unless another thread already took over.
                    if grace.requested.load(Ordering::SeqCst) == target
                        || grace.running.swap(true, Ordering::SeqCst)
                    {
                        return;
                    }
                }
            }
        });
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }
}

/// The kernel maps, taken out of the loaded object (or opened from their pins).
pub struct BpfMaps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub vips: HashMap<MapData, u32, u32>,
    pub services6: HashMap<MapData, ServiceKey6, ServiceValue>,
    pub vips6: HashMap<MapData, Addr6, u32>,
    pub backend_addrs6: Array<MapData, Addr6>,
    pub table_chunks: Array<MapData, TableChunk>,
    /// The table map's memory, where the agent writes tables (`None` in a reader that opened
    /// the pins, or where the map cannot be mapped: then through batched syscalls).
    pub table_memory: Option<MappedArray<TableChunk>>,
    pub backends: Array<MapData, Backend>,
    pub backend_state: Array<MapData, BackendState>,
    pub conntrack:
        aya::maps::HashMap<MapData, geosteer_common::FlowKey, geosteer_common::FlowValue>,
    pub conntrack6: aya::maps::HashMap<MapData, FlowKey6, FlowValue6>,
    pub service_stats: PerCpuArray<MapData, TrafficCounters>,
    pub backend_stats: PerCpuArray<MapData, BackendTraffic>,
    pub backend_signals: Array<MapData, BackendSignals>,
    pub xdp_targets: aya::maps::DevMapHash<MapData>,
    pub drops: PerCpuArray<MapData, u64>,
    pub ct_stats: PerCpuArray<MapData, u64>,
    pub settings: Array<MapData, Settings>,
    pub service_state: Array<MapData, ServiceState>,
    pub service_config: Array<MapData, ServiceConfig>,
    pub events: aya::maps::RingBuf<MapData>,
    /// The never-attached program that counts confirmed connect timeouts (not held by maps
    /// opened from their pins, which only read).
    pub count_timeouts: Option<aya::programs::ProgramFd>,
    pub grace: Arc<BackgroundGrace>,
    /// The conntrack GC (its timeouts are set from the config after loading).
    pub sweeper: Sweeper,
}

/// A conntrack map (either family's) as the GC reads it.
struct ConntrackTable<'a, A: Addr>(&'a mut HashMap<MapData, FlowKeyOf<A>, FlowValueOf<A>>);

impl<A: Addr> FlowTable<A> for ConntrackTable<'_, A>
where
    FlowKeyOf<A>: aya::Pod,
    FlowValueOf<A>: aya::Pod,
{
    fn batch(&mut self, cursor: Option<u32>, max: usize) -> Result<Batch<A>> {
        crate::conntrack::lookup_batch(self.0.map().fd().as_fd(), cursor, max)
    }

    fn get(&self, key: &FlowKeyOf<A>) -> Option<FlowValueOf<A>> {
        self.0.get(key, 0).ok()
    }

    fn remove(&mut self, key: &FlowKeyOf<A>) -> bool {
        self.0.remove(key).is_ok()
    }
}

impl BpfMaps {
    /// Takes every map out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the kernel object"))
        };
        let table_chunks: Array<MapData, TableChunk> =
            Array::try_from(take(map_names::TABLE_CHUNKS)?)?;
        let table_memory =
            match MappedArray::map(table_chunks.map().fd().as_fd(), table_chunks.len()) {
                Ok(memory) => Some(memory),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "the table map cannot be mapped: tables are written through syscalls"
                    );
                    None
                }
            };
        Ok(Self {
            services: HashMap::try_from(take(map_names::SERVICES)?)?,
            vips: HashMap::try_from(take(map_names::VIPS)?)?,
            services6: HashMap::try_from(take(map_names::SERVICES6)?)?,
            vips6: HashMap::try_from(take(map_names::VIPS6)?)?,
            backend_addrs6: Array::try_from(take(map_names::BACKEND_ADDRS6)?)?,
            table_chunks,
            table_memory,
            backends: Array::try_from(take(map_names::BACKENDS)?)?,
            backend_state: Array::try_from(take(map_names::BACKEND_STATE)?)?,
            conntrack: HashMap::try_from(take(map_names::CONNTRACK)?)?,
            conntrack6: HashMap::try_from(take(map_names::CONNTRACK6)?)?,
            service_stats: PerCpuArray::try_from(take(map_names::SERVICE_STATS)?)?,
            backend_stats: PerCpuArray::try_from(take(map_names::BACKEND_STATS)?)?,
            backend_signals: Array::try_from(take(map_names::BACKEND_SIGNALS)?)?,
            xdp_targets: aya::maps::DevMapHash::try_from(take(map_names::XDP_TARGETS)?)?,
            drops: PerCpuArray::try_from(take(map_names::DROPS)?)?,
            ct_stats: PerCpuArray::try_from(take(map_names::CT_STATS)?)?,
            settings: Array::try_from(take(map_names::SETTINGS)?)?,
            service_state: Array::try_from(take(map_names::SERVICE_STATE)?)?,
            service_config: Array::try_from(take(map_names::SERVICE_CONFIG)?)?,
            events: aya::maps::RingBuf::try_from(take(map_names::EVENTS)?)?,
            count_timeouts: Some({
                let name = program_names::COUNT_TIMEOUTS;
                let program: &aya::programs::SchedClassifier = ebpf
                    .program(name)
                    .with_context(|| format!("program {name} missing from the kernel object"))?
                    .try_into()?;
                program
                    .fd()
                    .with_context(|| format!("program {name} is not loaded"))?
                    .try_clone()
                    .with_context(|| format!("duplicating the descriptor of {name}"))?
            }),
            grace: Arc::default(),
            sweeper: Sweeper::default(),
        })
    }

    /// Opens the maps pinned under `dir` by a running (or crashed) agent.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(match name {
                map_names::CONNTRACK
                | map_names::FRAGMENTS
                | map_names::FRAGMENTS6
                | map_names::AFFINITY
                | map_names::CONNTRACK6
                | map_names::AFFINITY6 => Map::LruHashMap(data),
                map_names::XDP_TARGETS => Map::DevMapHash(data),
                map_names::SERVICES | map_names::VIPS | map_names::SERVICES6 | map_names::VIPS6 => {
                    Map::HashMap(data)
                }
                map_names::SERVICE_STATS
                | map_names::BACKEND_STATS
                | map_names::DROPS
                | map_names::CT_STATS => Map::PerCpuArray(data),
                _ => Map::Array(data),
            })
        };
        Ok(Self {
            services: HashMap::try_from(open(map_names::SERVICES)?)?,
            vips: HashMap::try_from(open(map_names::VIPS)?)?,
            services6: HashMap::try_from(open(map_names::SERVICES6)?)?,
            vips6: HashMap::try_from(open(map_names::VIPS6)?)?,
            backend_addrs6: Array::try_from(open(map_names::BACKEND_ADDRS6)?)?,
            table_chunks: Array::try_from(open(map_names::TABLE_CHUNKS)?)?,
            table_memory: None,
            backends: Array::try_from(open(map_names::BACKENDS)?)?,
            backend_state: Array::try_from(open(map_names::BACKEND_STATE)?)?,
            conntrack: HashMap::try_from(open(map_names::CONNTRACK)?)?,
            conntrack6: HashMap::try_from(open(map_names::CONNTRACK6)?)?,
            service_stats: PerCpuArray::try_from(open(map_names::SERVICE_STATS)?)?,
            backend_stats: PerCpuArray::try_from(open(map_names::BACKEND_STATS)?)?,
            backend_signals: Array::try_from(open(map_names::BACKEND_SIGNALS)?)?,
            xdp_targets: aya::maps::DevMapHash::try_from(open(map_names::XDP_TARGETS)?)?,
            drops: PerCpuArray::try_from(open(map_names::DROPS)?)?,
            ct_stats: PerCpuArray::try_from(open(map_names::CT_STATS)?)?,
            settings: Array::try_from(open(map_names::SETTINGS)?)?,
            service_state: Array::try_from(open(map_names::SERVICE_STATE)?)?,
            service_config: Array::try_from(open(map_names::SERVICE_CONFIG)?)?,
            events: aya::maps::RingBuf::try_from(Map::RingBuf(
                MapData::from_pin(dir.join(map_names::EVENTS))
                    .context("opening pinned events ring")?,
            ))?,
            count_timeouts: None,
            grace: Arc::default(),
            sweeper: Sweeper::default(),
        })
    }

    /// Runs [`program_names::COUNT_TIMEOUTS`] `repeat` times with the agent's verdict on a
    /// backend's suspected connect timeouts; whether the backend id still names `addr:port`.
    ///
    /// The program compares the IPv4 address of the backend entry, which is 0 for an IPv6
    /// backend: its address is compared here first, in `GS_BACKEND_ADDRS6`.
    fn run_timeout_program(
        &self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
        verdict: u16,
        repeat: u32,
    ) -> Result<bool> {
        let addr = match addr {
            IpAddr::V4(ip) => ip.to_bits().to_be(),
            IpAddr::V6(ip) => {
                let slot = self.backend_addrs6.get(&backend_id, 0);
                if slot.ok() != Some(Addr6::from_ip(ip)) {
                    return Ok(false);
                }
                0
            }
        };
        let request = TimeoutCount {
            backend_id,
            addr,
            port,
            verdict,
        };
        // An Ethernet header the program skips (a local experimental EtherType, so the test
        // run treats the frame as no protocol it knows), then the request.
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        // SAFETY: TimeoutCount is repr(C) plain data without padding bytes.
        frame.extend_from_slice(unsafe {
            std::slice::from_raw_parts(
                (&raw const request).cast::<u8>(),
                std::mem::size_of::<TimeoutCount>(),
            )
        });
        let program = self
            .count_timeouts
            .as_ref()
            .context("maps opened from their pins cannot run the timeout program")?;
        let run = crate::bpf_run::prog_test_run_repeat(program, &frame, &mut [], repeat)
            .context("BPF_PROG_TEST_RUN")?;
        Ok(run.retval as i32 == geosteer_common::TIMEOUT_COUNTED)
    }

    /// A backend's counters: its per-CPU traffic summed, and its shared signal counters.
    pub fn backend_counters(&self, id: u32) -> Result<BackendCounters> {
        let mut counters = BackendCounters::default();
        for traffic in self.backend_stats.get(&id, 0)?.iter() {
            counters.add_traffic(traffic);
        }
        counters.set_signals(&self.backend_signals.get(&id, 0)?);
        Ok(counters)
    }

    pub fn service_counters(&self, id: u32) -> Result<TrafficCounters> {
        let per_cpu = self.service_stats.get(&id, 0)?;
        let mut total = TrafficCounters::default();
        for c in per_cpu.iter() {
            total.packets += c.packets;
            total.bytes += c.bytes;
            total.new_flows += c.new_flows;
        }
        Ok(total)
    }

    pub fn drops(&self, reason: DropReason) -> Result<u64> {
        let per_cpu = self.drops.get(&(reason as u32), 0)?;
        Ok(per_cpu.iter().sum())
    }

    /// Ends the flows of `backend_id` now, in complete passes (tests and tools; the agent
    /// queues with [`Dataplane::forget_flows`]). The number of flows ended.
    pub fn forget_flows_now(&mut self, backend_id: u32, keep_http: bool) -> Result<usize> {
        self.sweeper.forget(backend_id, keep_http);
        let now = crate::agent::monotonic_now().as_nanos() as u64;
        let tables = FlowTables {
            v4: &mut ConntrackTable(&mut self.conntrack),
            v6: &mut ConntrackTable(&mut self.conntrack6),
        };
        let served = self.sweeper.run_forget(tables, now)?;
        Ok(served.iter().map(|f| f.flows).sum())
    }

    /// A `ct_stats::*` counter summed over CPUs.
    pub fn ct_stat(&self, index: u32) -> Result<u64> {
        let per_cpu = self.ct_stats.get(&index, 0)?;
        Ok(per_cpu.iter().sum())
    }

    pub fn read_settings(&self) -> Result<Settings> {
        self.settings.get(&0, 0).context("reading settings")
    }

    /// How many entries the resizable maps were created with.
    pub fn capacities(&self) -> Result<Capacities> {
        let max_entries = |data: &MapData, name: &str| -> Result<u32> {
            Ok(data
                .info()
                .with_context(|| format!("reading the info of map {name}"))?
                .max_entries())
        };
        Ok(Capacities {
            services: max_entries(self.services.map(), map_names::SERVICES)?,
            backends: max_entries(self.backends.map(), map_names::BACKENDS)?,
            conntrack: max_entries(self.conntrack.map(), map_names::CONNTRACK)?,
            conntrack6: max_entries(self.conntrack6.map(), map_names::CONNTRACK6)?,
        })
    }

    /// IPv4 conntrack entries in use (both directions): a batched walk (a few syscalls per
    /// thousand entries), which neither restarts nor loops when entries come and go meanwhile.
    pub fn conntrack_entries(&self) -> usize {
        entries_in::<u32>(self.conntrack.map().fd().as_fd())
    }

    /// IPv6 conntrack entries in use, as [`Self::conntrack_entries`].
    pub fn conntrack6_entries(&self) -> usize {
        entries_in::<Addr6>(self.conntrack6.map().fd().as_fd())
    }
}

/// Entries of a conntrack map of family `A`.
fn entries_in<A: Addr>(fd: std::os::fd::BorrowedFd<'_>) -> usize {
    let mut cursor = None;
    let mut entries = 0;
    loop {
        match crate::conntrack::lookup_batch::<A>(fd, cursor, 1024) {
            Ok((batch, next)) => {
                entries += batch.len();
                match next {
                    Some(next) => cursor = Some(next),
                    None => return entries,
                }
            }
            Err(_) => return entries,
        }
    }
}

/// The node-wide kernel settings from the config, keeping the flow-hash key already in the
/// (pinned) map, or making one from the kernel's random source on the first start.
pub fn node_settings(kept: &Settings, dataplane: &crate::config::Dataplane) -> Result<Settings> {
    let hash_seed = if kept.hash_seed != 0 {
        kept.hash_seed
    } else {
        random_nonzero_u64()?
    };
    Ok(Settings {
        hash_seed,
        udp_timeout_ns: dataplane
            .conntrack
            .udp_timeout
            .as_nanos()
            .min(u64::MAX as u128) as u64,
    })
}

fn random_nonzero_u64() -> Result<u64> {
    loop {
        let mut bytes = [0u8; 8];
        // SAFETY: the buffer is valid for 8 bytes.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != bytes.len() as isize {
            return Err(std::io::Error::last_os_error()).context("getrandom for the flow-hash key");
        }
        let seed = u64::from_ne_bytes(bytes);
        if seed != 0 {
            return Ok(seed);
        }
    }
}

/// Sizes of the maps an operator watches fill up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacities {
    pub services: u32,
    pub backends: u32,
    pub conntrack: u32,
    pub conntrack6: u32,
}

impl Dataplane for BpfMaps {
    fn write_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backends
            .set(id, backend, 0)
            .with_context(|| format!("writing backend {id}"))
    }

    fn write_backend_state(&mut self, id: u32, state: &BackendState) -> Result<()> {
        self.backend_state
            .set(id, state, 0)
            .with_context(|| format!("writing backend state {id}"))
    }

    fn write_backends(&mut self, entries: &[(u32, Backend)]) -> Result<()> {
        crate::bpf_batch::write_entries(self.backends.map().fd().as_fd(), entries)
            .with_context(|| format!("writing {} backends", entries.len()))
    }

    fn write_backend_states(&mut self, entries: &[(u32, BackendState)]) -> Result<()> {
        crate::bpf_batch::write_entries(self.backend_state.map().fd().as_fd(), entries)
            .with_context(|| format!("writing {} backend states", entries.len()))
    }

    fn write_table(&mut self, start: u32, chunks: &[TableChunk]) -> Result<()> {
        self.write_tables(&[(start, chunks)])
    }

    fn write_tables(&mut self, tables: &[(u32, &[TableChunk])]) -> Result<()> {
        if let Some(memory) = &mut self.table_memory {
            for &(start, chunks) in tables {
                memory.write(start, chunks)?;
            }
            return Ok(());
        }
        let entries: Vec<(u32, TableChunk)> = tables
            .iter()
            .flat_map(|&(start, chunks)| (start..).zip(chunks.iter().copied()))
            .collect();
        crate::bpf_batch::write_entries(self.table_chunks.map().fd().as_fd(), &entries)
            .with_context(|| format!("writing {} tables ({} chunks)", tables.len(), entries.len()))
    }

    fn write_backend_addrs6(&mut self, entries: &[(u32, Addr6)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        crate::bpf_batch::write_entries(self.backend_addrs6.map().fd().as_fd(), entries)
            .with_context(|| format!("writing {} IPv6 backend addresses", entries.len()))
    }

    fn write_service(&mut self, key: &Frontend, value: &ServiceValue) -> Result<()> {
        match key.kernel_key() {
            KernelKey::V4(key) => self.services.insert(key, value, 0),
            KernelKey::V6(key) => self.services6.insert(key, value, 0),
        }
        .with_context(|| format!("writing the service entry of {key}"))
    }

    /// One batch per run of services of one family (one batch on an IPv4-only node).
    fn write_services(
        &mut self,
        entries: &[(Frontend, ServiceValue)],
    ) -> std::result::Result<(), PartlyWritten> {
        let mut done = 0;
        for run in entries.chunk_by(|a, b| a.0.vip.is_ipv4() == b.0.vip.is_ipv4()) {
            let written = if run[0].0.vip.is_ipv4() {
                let keyed: Vec<(ServiceKey, ServiceValue)> = run
                    .iter()
                    .filter_map(|(key, value)| match key.kernel_key() {
                        KernelKey::V4(key) => Some((key, *value)),
                        KernelKey::V6(_) => None,
                    })
                    .collect();
                crate::bpf_batch::write_entries_reporting(self.services.map().fd().as_fd(), &keyed)
            } else {
                let keyed: Vec<(ServiceKey6, ServiceValue)> = run
                    .iter()
                    .filter_map(|(key, value)| match key.kernel_key() {
                        KernelKey::V6(key) => Some((key, *value)),
                        KernelKey::V4(_) => None,
                    })
                    .collect();
                crate::bpf_batch::write_entries_reporting(self.services6.map().fd().as_fd(), &keyed)
            };
            written.map_err(|partly| PartlyWritten {
                written: done + partly.written,
                error: partly.error,
            })?;
            done += run.len();
        }
        Ok(())
    }

    fn remove_service(&mut self, key: &Frontend) -> Result<()> {
        let removed = match key.kernel_key() {
            KernelKey::V4(key) => self.services.remove(&key),
            KernelKey::V6(key) => self.services6.remove(&key),
        };
        match removed {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the service entry of {key}")),
        }
    }

    fn write_vip(&mut self, addr: IpAddr, ports: u32) -> Result<()> {
        match addr {
            IpAddr::V4(ip) => self.vips.insert(ip.to_bits().to_be(), ports, 0),
            IpAddr::V6(ip) => self.vips6.insert(Addr6::from_ip(ip), ports, 0),
        }
        .with_context(|| format!("writing VIP {addr}"))
    }

    fn write_vips(&mut self, entries: &[(IpAddr, u32)]) -> Result<()> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for &(addr, ports) in entries {
            match addr {
                IpAddr::V4(ip) => v4.push((ip.to_bits().to_be(), ports)),
                IpAddr::V6(ip) => v6.push((Addr6::from_ip(ip), ports)),
            }
        }
        if !v4.is_empty() {
            crate::bpf_batch::write_entries(self.vips.map().fd().as_fd(), &v4)
                .with_context(|| format!("writing {} VIPs", v4.len()))?;
        }
        if !v6.is_empty() {
            crate::bpf_batch::write_entries(self.vips6.map().fd().as_fd(), &v6)
                .with_context(|| format!("writing {} IPv6 VIPs", v6.len()))?;
        }
        Ok(())
    }

    fn remove_vip(&mut self, addr: IpAddr) -> Result<()> {
        let removed = match addr {
            IpAddr::V4(ip) => self.vips.remove(&ip.to_bits().to_be()),
            IpAddr::V6(ip) => self.vips6.remove(&Addr6::from_ip(ip)),
        };
        match removed {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing VIP {addr}")),
        }
    }

    fn write_settings(&mut self, settings: &Settings) -> Result<()> {
        self.settings
            .set(0, settings, 0)
            .context("writing settings")
    }

    fn write_service_state(&mut self, id: u32, state: &ServiceState) -> Result<()> {
        self.service_state
            .set(id, state, 0)
            .with_context(|| format!("writing service state {id}"))
    }

    fn write_service_config(&mut self, id: u32, config: &ServiceConfig) -> Result<()> {
        self.service_config
            .set(id, config, 0)
            .with_context(|| format!("writing service config {id}"))
    }

    fn write_service_states(&mut self, entries: &[(u32, ServiceState)]) -> Result<()> {
        crate::bpf_batch::write_entries(self.service_state.map().fd().as_fd(), entries)
            .with_context(|| format!("writing {} service states", entries.len()))
    }

    fn write_service_configs(&mut self, entries: &[(u32, ServiceConfig)]) -> Result<()> {
        crate::bpf_batch::write_entries(self.service_config.map().fd().as_fd(), entries)
            .with_context(|| format!("writing {} service configs", entries.len()))
    }

    fn grace_period(&mut self) -> Result<()> {
        synchronize_rcu()
    }

    fn request_grace(&mut self, seq: u64) {
        self.grace.request(seq);
    }

    fn grace_completed(&self) -> u64 {
        self.grace.completed()
    }

    fn set_xdp_target(&mut self, ifindex: u32, vouched: bool) -> Result<()> {
        if vouched {
            self.xdp_targets
                .insert(ifindex, ifindex, None, 0)
                .with_context(|| format!("adding interface {ifindex} to the XDP targets"))
        } else {
            match self.xdp_targets.remove(ifindex) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("removing XDP target {ifindex}")),
            }
        }
    }

    fn forget_flows(&mut self, backend_id: u32, keep_http: bool) -> Result<()> {
        self.sweeper.forget(backend_id, keep_http);
        Ok(())
    }

    fn count_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
        count: u32,
    ) -> Result<bool> {
        self.run_timeout_program(backend_id, addr, port, TIMEOUT_CONFIRMED, count)
            .with_context(|| format!("counting connect timeouts of backend {backend_id}"))
    }

    fn dismiss_connect_timeouts(
        &mut self,
        backend_id: u32,
        addr: IpAddr,
        port: u16,
    ) -> Result<bool> {
        self.run_timeout_program(backend_id, addr, port, TIMEOUT_DISMISSED, 1)
            .with_context(|| format!("dismissing connect timeouts of backend {backend_id}"))
    }

    fn sweep_flows(
        &mut self,
        now_ns: u64,
        budget: std::time::Duration,
    ) -> Result<Option<crate::conntrack::PassReport>> {
        let tables = FlowTables {
            v4: &mut ConntrackTable(&mut self.conntrack),
            v6: &mut ConntrackTable(&mut self.conntrack6),
        };
        self.sweeper.step(tables, now_ns, budget)
    }

    fn read_services(&self) -> Result<Vec<(Frontend, ServiceValue)>> {
        let mut services: Vec<(Frontend, ServiceValue)> = self
            .services
            .iter()
            .map(|entry| entry.map(|(key, value)| (Frontend::from_key(&key), value)))
            .collect::<Result<_, _>>()
            .context("reading the service map")?;
        for entry in self.services6.iter() {
            let (key, value) = entry.context("reading the IPv6 service map")?;
            services.push((Frontend::from_key6(&key), value));
        }
        Ok(services)
    }

    fn read_backend_addrs6(&self) -> Result<Vec<Addr6>> {
        let fd = self.backend_addrs6.map().fd().as_fd();
        read_array(fd, self.backend_addrs6.len()).context("reading the IPv6 backend addresses")
    }

    fn read_table(&self, start: u32, len: u32) -> Result<Vec<TableChunk>> {
        if let Some(memory) = &self.table_memory {
            return memory.read(start, len);
        }
        let fd = self.table_chunks.map().fd().as_fd();
        let values = crate::bpf_batch::read_array_range(fd, start, len, size_of::<TableChunk>())
            .with_context(|| format!("reading a table of {len} chunks at {start}"))?;
        Ok(values
            .iter()
            .map(|value| {
                let mut chunk = TableChunk::default();
                for (word, bytes) in chunk.words.iter_mut().zip(value.chunks_exact(4)) {
                    *word = u32::from_ne_bytes(bytes.try_into().expect("4 bytes"));
                }
                chunk
            })
            .collect())
    }

    fn read_backends(&self) -> Result<Vec<(u32, Backend)>> {
        let size = std::mem::size_of::<Backend>();
        crate::bpf_batch::lookup_all(self.backends.map().fd().as_fd(), 4, size)
            .context("reading the backend map")?
            .into_iter()
            .map(|(key, value)| {
                let id = u32::from_ne_bytes(key[..4].try_into()?);
                // SAFETY: `value` holds `size_of::<Backend>()` bytes read from the map, and
                // any bytes are a valid `Backend` (plain integers); read unaligned.
                let backend = unsafe { std::ptr::read_unaligned(value.as_ptr().cast::<Backend>()) };
                Ok((id, backend))
            })
            .collect()
    }

    fn read_backend_states(&self) -> Result<Vec<BackendState>> {
        let fd = self.backend_state.map().fd().as_fd();
        read_array(fd, self.backend_state.len()).context("reading the backend states")
    }

    fn read_service_states(&self) -> Result<Vec<ServiceState>> {
        let fd = self.service_state.map().fd().as_fd();
        read_array(fd, self.service_state.len()).context("reading the service states")
    }

    fn read_backend(&self, id: u32) -> Result<Backend> {
        self.backends
            .get(&id, 0)
            .with_context(|| format!("reading backend {id}"))
    }

    fn read_backend_state(&self, id: u32) -> Result<BackendState> {
        self.backend_state
            .get(&id, 0)
            .with_context(|| format!("reading backend state {id}"))
    }

    fn read_service_state(&self, id: u32) -> Result<ServiceState> {
        self.service_state
            .get(&id, 0)
            .with_context(|| format!("reading service state {id}"))
    }

    fn read_service_config(&self, id: u32) -> Result<ServiceConfig> {
        self.service_config
            .get(&id, 0)
            .with_context(|| format!("reading service config {id}"))
    }
}
