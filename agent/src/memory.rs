//! Kernel memory of the maps, planned before they are created. BPF map memory is charged to the
//! agent's memory cgroup (kernel ≥ 5.11), so a node whose maps outgrow the DaemonSet's limit has
//! its agent OOM-killed, or fails to load, on exactly the large nodes that need it most. The
//! agent computes what its maps will take on this node — per-CPU maps once per *possible* CPU —
//! logs it, shows it, and refuses to start with a clear error when it exceeds the limit.
//!
//! The formulas are the kernel's own accounting (`map_mem_usage` in kernel/bpf/arraymap.c,
//! hashtab.c, ringbuf.c, what `/proc/<pid>/fdinfo/<map fd>` reports as `memlock`); a privileged
//! test compares them with the kernel's figures for every map.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use geosteer_common::{
    AFFINITY_SIZE, AFFINITY6_SIZE, Addr6, AffinityKey, AffinityKey6, AffinityValue, Backend,
    BackendSignals, BackendState, BackendTraffic, DropReason, FRAGMENTS_SIZE, FlowKey, FlowKey6,
    FlowValue, FlowValue6, FragmentKey, FragmentKey6, FragmentValue, FragmentValue6, ServiceConfig,
    ServiceKey, ServiceKey6, ServiceState, ServiceValue, Settings, TableChunk, TrafficCounters,
    XDP_TARGETS_SIZE, ct_stats, map_names,
};
use serde::{Deserialize, Serialize};

use crate::loader::MapSizes;

/// Byte size of the events ring (`GS_KERNEL_EVENTS` in ebpf/src/steer.rs).
pub const EVENTS_RING_BYTES: u64 = 64 * 1024;
/// Byte size of aya-log's ring (`AYA_LOGS`, fixed by aya-log-ebpf; the privileged maps test
/// holds it to the kernel's figure).
pub const LOG_RING_BYTES: u64 = 128 * 1024;

/// Memory the agent process itself needs besides its maps (its heap: the config file or the
/// Kubernetes caches, the policy views and books of every endpoint, buffers), kept free under
/// the limit: a base and a share per backend slot. Measured by `cargo xtask bench` (the agent
/// run of section 3): about 1.7 KiB per endpoint once ready and 1.9 KiB at the peak of loading
/// a config file of 100,000 services × 10 endpoints; 2 KiB per `maxBackends` slot covers that
/// (96 MiB in all at the default 16,384). A fixed reserve let a large node pass this check and
/// then be OOM-killed.
pub fn agent_reserve(sizes: &MapSizes) -> u64 {
    (64 << 20) + 2048 * u64::from(sizes.max_backends)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Array,
    /// An array created with `BPF_F_MMAPABLE` (its values page-aligned, mappable by the agent).
    MmapArray,
    PerCpuArray,
    Hash,
    LruHash,
    RingBuf,
    DevMapHash,
    /// A program array (tail calls).
    ProgArray,
}

/// One map as created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Sized from the config (`maxServices`, `maxBackends`, `tableChunks`, `conntrackSize`).
    pub resizable: bool,
}

impl MapSpec {
    /// The creation flags [`crate::migrate`] compares with a pinned map's.
    pub fn map_flags(&self) -> u32 {
        match self.kind {
            Kind::MmapArray => crate::migrate::BPF_F_MMAPABLE,
            _ => 0,
        }
    }
}

/// Every map of the kernel object, with the sizes `sizes` gives the resizable ones.
pub fn maps(sizes: &MapSizes) -> Vec<MapSpec> {
    use Kind::*;
    use std::mem::size_of;
    let spec = |name, kind, key: usize, value: usize, max_entries, resizable| MapSpec {
        name,
        kind,
        key_size: key as u32,
        value_size: value as u32,
        max_entries,
        resizable,
    };
    let (services, backends) = (sizes.max_services, sizes.max_backends);
    vec![
        spec(
            map_names::SERVICES,
            Hash,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            services,
            true,
        ),
        spec(map_names::VIPS, Hash, 4, 4, services, true),
        spec(
            map_names::TABLE_CHUNKS,
            MmapArray,
            4,
            size_of::<TableChunk>(),
            sizes.table_chunks,
            true,
        ),
        spec(
            map_names::SERVICE_STATS,
            PerCpuArray,
            4,
            size_of::<TrafficCounters>(),
            services,
            true,
        ),
        spec(
            map_names::SERVICE_STATE,
            Array,
            4,
            size_of::<ServiceState>(),
            services,
            true,
        ),
        spec(
            map_names::SERVICE_CONFIG,
            Array,
            4,
            size_of::<ServiceConfig>(),
            services,
            true,
        ),
        spec(
            map_names::BACKENDS,
            Array,
            4,
            size_of::<Backend>(),
            backends,
            true,
        ),
        spec(
            map_names::BACKEND_STATE,
            Array,
            4,
            size_of::<BackendState>(),
            backends,
            true,
        ),
        spec(
            map_names::BACKEND_STATS,
            PerCpuArray,
            4,
            size_of::<BackendTraffic>(),
            backends,
            true,
        ),
        spec(
            map_names::BACKEND_SIGNALS,
            Array,
            4,
            size_of::<BackendSignals>(),
            backends,
            true,
        ),
        spec(
            map_names::CONNTRACK,
            LruHash,
            size_of::<FlowKey>(),
            size_of::<FlowValue>(),
            sizes.conntrack,
            true,
        ),
        spec(
            map_names::FRAGMENTS,
            LruHash,
            size_of::<FragmentKey>(),
            size_of::<FragmentValue>(),
            FRAGMENTS_SIZE,
            false,
        ),
        spec(
            map_names::AFFINITY,
            LruHash,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
            AFFINITY_SIZE,
            false,
        ),
        spec(
            map_names::SERVICES6,
            Hash,
            size_of::<ServiceKey6>(),
            size_of::<ServiceValue>(),
            services,
            true,
        ),
        spec(map_names::VIPS6, Hash, 16, 4, services, true),
        spec(
            map_names::BACKEND_ADDRS6,
            Array,
            4,
            size_of::<Addr6>(),
            backends,
            true,
        ),
        spec(
            map_names::CONNTRACK6,
            LruHash,
            size_of::<FlowKey6>(),
            size_of::<FlowValue6>(),
            sizes.conntrack6,
            true,
        ),
        spec(
            map_names::FRAGMENTS6,
            LruHash,
            size_of::<FragmentKey6>(),
            size_of::<FragmentValue6>(),
            FRAGMENTS_SIZE,
            false,
        ),
        spec(
            map_names::AFFINITY6,
            LruHash,
            size_of::<AffinityKey6>(),
            size_of::<AffinityValue>(),
            AFFINITY6_SIZE,
            false,
        ),
        spec(map_names::TAIL_CALLS, ProgArray, 4, 4, 2, false),
        spec(map_names::XDP_TAIL_CALLS, ProgArray, 4, 4, 1, false),
        spec(
            map_names::XDP_TARGETS,
            DevMapHash,
            4,
            8,
            XDP_TARGETS_SIZE,
            false,
        ),
        spec(
            map_names::DROPS,
            PerCpuArray,
            4,
            8,
            DropReason::COUNT,
            false,
        ),
        spec(
            map_names::CT_STATS,
            PerCpuArray,
            4,
            8,
            ct_stats::COUNT,
            false,
        ),
        spec(
            map_names::SETTINGS,
            Array,
            4,
            size_of::<Settings>(),
            1,
            false,
        ),
        spec(
            map_names::EVENTS,
            RingBuf,
            0,
            0,
            EVENTS_RING_BYTES as u32,
            false,
        ),
        spec(map_names::LOGS, RingBuf, 0, 0, LOG_RING_BYTES as u32, false),
    ]
}

const PAGE: u64 = 4096;
/// `sizeof(struct bpf_array)` and `sizeof(struct bpf_htab)` on this kernel generation (the
/// privileged test holds every figure to the kernel's within 2%).
const MAP_HEADER: u64 = 312;
const HTAB_HEADER: u64 = 832;
/// `sizeof(struct htab_elem)` on 64-bit kernels.
const HTAB_ELEM: u64 = 48;
/// `sizeof(struct bucket)`.
const HTAB_BUCKET: u64 = 16;
/// `HASHTAB_MAP_LOCK_COUNT`.
const HTAB_LOCKS: u64 = 8;

fn round8(n: u32) -> u64 {
    u64::from(n).div_ceil(8) * 8
}

/// The kernel's accounting for one map on a node with `cpus` possible CPUs.
pub fn bytes(spec: &MapSpec, cpus: u32) -> u64 {
    let cpus = u64::from(cpus);
    let entries = u64::from(spec.max_entries);
    let value = round8(spec.value_size);
    match spec.kind {
        Kind::Array => MAP_HEADER + entries * value,
        Kind::MmapArray => (MAP_HEADER.div_ceil(PAGE) + (entries * value).div_ceil(PAGE)) * PAGE,
        Kind::PerCpuArray => MAP_HEADER + entries * 8 + entries * value * cpus,
        Kind::Hash | Kind::LruHash => {
            let lru = spec.kind == Kind::LruHash;
            let elem = HTAB_ELEM + round8(spec.key_size) + value;
            // A plain preallocated hash keeps one spare element per CPU for updates.
            let elements = if lru { entries } else { entries + cpus };
            let mut usage = HTAB_HEADER
                + HTAB_BUCKET * entries.next_power_of_two()
                + 4 * cpus * HTAB_LOCKS
                + elem * elements;
            if !lru {
                usage += 8 * cpus;
            }
            usage
        }
        // Buckets; an element (~64 B) only per interface present.
        Kind::DevMapHash => MAP_HEADER + 8 * entries.next_power_of_two(),
        Kind::ProgArray => MAP_HEADER + 8 * entries,
        Kind::RingBuf => {
            // The data pages, the consumer/producer/header pages, and a page pointer per page
            // (the data is mapped twice).
            let pages = entries / PAGE + 3;
            entries + 3 * PAGE + pages * 8 * 2
        }
    }
}

/// What the maps will take on this node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    pub possible_cpus: u32,
    /// (map, bytes), largest first.
    pub maps: Vec<(String, u64)>,
    pub total: u64,
    /// Of `total`, what the per-CPU maps take.
    pub per_cpu: u64,
    /// The limit checked against, and where it came from.
    pub limit: Option<u64>,
    pub limit_source: String,
}

pub fn plan(sizes: &MapSizes, cpus: u32) -> MemoryPlan {
    let specs = maps(sizes);
    let mut maps: Vec<(String, u64)> = specs
        .iter()
        .map(|s| (s.name.to_string(), bytes(s, cpus)))
        .collect();
    maps.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let per_cpu = specs
        .iter()
        .filter(|s| s.kind == Kind::PerCpuArray)
        .map(|s| bytes(s, cpus))
        .sum();
    MemoryPlan {
        possible_cpus: cpus,
        total: maps.iter().map(|(_, b)| b).sum(),
        maps,
        per_cpu,
        limit: None,
        limit_source: String::new(),
    }
}

/// Possible CPUs (what per-CPU maps are sized by), from `/sys/devices/system/cpu/possible`.
pub fn possible_cpus() -> Result<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim())
        .with_context(|| format!("/sys/devices/system/cpu/possible: {:?}", text.trim()))
}

/// `0-127`, `0,2-5`: how many CPUs the list names.
pub fn parse_cpu_list(list: &str) -> Result<u32> {
    let mut count = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        count += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse()?, b.parse()?);
                if b < a {
                    bail!("range {part:?} runs backwards");
                }
                b - a + 1
            }
            None => {
                part.parse::<u32>()?;
                1
            }
        };
    }
    if count == 0 {
        bail!("no CPU listed");
    }
    Ok(count)
}

/// `dataplane.memoryLimit`: a Kubernetes quantity (`512Mi`, `1Gi`, `400M`, plain bytes).
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a quantity like 512Mi, 1Gi or 400M"))?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {suffix:?} (Ki, Mi, Gi, Ti, k, M, G, T)"
            ));
        }
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The memory limit of the cgroup this process runs in (cgroup v2 `memory.max`), if any.
pub fn cgroup_limit() -> Option<(u64, PathBuf)> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    // The nearest ancestor with a limit bounds this process too.
    loop {
        let file = dir.join("memory.max");
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(limit) = text.trim().parse::<u64>()
        {
            return Some((limit, file));
        }
        if !dir.pop() || dir == Path::new("/sys/fs") {
            return None;
        }
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Checks the plan against the limit (the configured one, else the cgroup's); fills in which.
pub fn check(plan: &mut MemoryPlan, configured: Option<u64>, sizes: &MapSizes) -> Result<()> {
    let (limit, source) = match configured {
        Some(limit) => (limit, "dataplane.memoryLimit".to_string()),
        None => match cgroup_limit() {
            Some((limit, file)) => (limit, format!("cgroup {}", file.display())),
            None => {
                plan.limit_source = "none (no dataplane.memoryLimit, no cgroup limit)".into();
                return Ok(());
            }
        },
    };
    plan.limit = Some(limit);
    plan.limit_source = source.clone();
    let reserve = agent_reserve(sizes);
    let needed = plan.total + reserve;
    if needed <= limit {
        return Ok(());
    }
    let largest: Vec<String> = plan
        .maps
        .iter()
        .take(3)
        .map(|(name, b)| format!("{name} {}", mib(*b)))
        .collect();
    let per_slot = bytes(
        &MapSpec {
            max_entries: 1,
            ..maps(sizes)
                .into_iter()
                .find(|s| s.name == map_names::BACKEND_STATS)
                .expect("the backend statistics map")
        },
        plan.possible_cpus,
    ) - MAP_HEADER;
    bail!(
        "the maps need {} of kernel memory on this node ({} possible CPUs; largest: {}), plus \
         {} for the agent itself: over the limit of {} ({source}). Lower dataplane.maxBackends \
         ({}; each slot costs {per_slot} B here, most of it per CPU), dataplane.maxServices ({}), \
         dataplane.tableChunks ({}; 64 B each), dataplane.conntrackSize ({}) or \
         dataplane.conntrackSize6 ({}), or raise the limit",
        mib(plan.total),
        plan.possible_cpus,
        largest.join(", "),
        mib(reserve),
        mib(limit),
        sizes.max_backends,
        sizes.max_services,
        sizes.table_chunks,
        sizes.conntrack,
        sizes.conntrack6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: MapSizes = MapSizes {
        max_services: geosteer_common::DEFAULT_MAX_SERVICES,
        max_backends: geosteer_common::DEFAULT_MAX_BACKENDS,
        conntrack: geosteer_common::DEFAULT_CONNTRACK_SIZE,
        conntrack6: geosteer_common::CONNTRACK6_SIZE,
        table_chunks: geosteer_common::DEFAULT_MAX_SERVICES
            * geosteer_common::DEFAULT_TABLE_CHUNKS_PER_SERVICE,
    };

    #[test]
    fn every_map_of_the_object_is_planned_once() {
        let names: Vec<&str> = maps(&DEFAULTS).iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for name in map_names::ALL {
            assert!(names.contains(&name), "{name} has no plan");
        }
    }

    #[test]
    fn the_default_sizes_fit_a_128_cpu_node_under_the_daemonsets_limit() {
        // deploy/daemonset.yaml: limits.memory 512Mi.
        let limit = 512 << 20;
        for cpus in [2, 16, 64, 128] {
            let mut plan = plan(&DEFAULTS, cpus);
            check(&mut plan, Some(limit), &DEFAULTS).unwrap_or_else(|e| panic!("{cpus} CPUs: {e}"));
        }
        let p = plan(&DEFAULTS, 128);
        assert!(p.total < 400 << 20, "{}", mib(p.total));
    }

    #[test]
    fn per_cpu_maps_grow_with_the_cpus_and_the_rest_does_not() {
        let two = plan(&DEFAULTS, 2);
        let many = plan(&DEFAULTS, 128);
        assert_eq!(
            many.total - two.total,
            many.per_cpu - two.per_cpu + {
                // The hash maps' per-CPU locks and spare elements.
                let hashes: u64 = maps(&DEFAULTS)
                    .iter()
                    .filter(|s| matches!(s.kind, Kind::Hash | Kind::LruHash))
                    .map(|s| bytes(s, 128) - bytes(s, 2))
                    .sum();
                hashes
            }
        );
        // 40 B per backend slot per CPU.
        let stats = maps(&DEFAULTS)
            .into_iter()
            .find(|s| s.name == map_names::BACKEND_STATS)
            .unwrap();
        assert_eq!(
            bytes(&stats, 128) - bytes(&stats, 1),
            127 * 40 * u64::from(DEFAULTS.max_backends)
        );
    }

    #[test]
    fn the_agents_reserve_grows_with_its_backend_slots() {
        assert_eq!(agent_reserve(&DEFAULTS), 96 << 20);
        let large = MapSizes {
            max_backends: 1_000_000,
            ..DEFAULTS
        };
        // The agent's measured peak on 100,000 services × 10 endpoints: 1,899 MiB.
        assert!(agent_reserve(&large) > 1_899 << 20);
        // A limit that held the maps and the old fixed reserve no longer passes.
        let mut p = plan(&large, 2);
        let limit = p.total + (96 << 20);
        let error = check(&mut p, Some(limit), &large).unwrap_err().to_string();
        assert!(error.contains("for the agent itself"), "{error}");
    }

    #[test]
    fn over_the_limit_the_error_names_the_fields_and_the_numbers() {
        let sizes = MapSizes {
            max_backends: 1 << 20,
            ..DEFAULTS
        };
        let mut p = plan(&sizes, 128);
        let error = check(&mut p, Some(512 << 20), &sizes)
            .unwrap_err()
            .to_string();
        assert!(error.contains("128 possible CPUs"), "{error}");
        assert!(error.contains("GS_BACKEND_STATS 5128.0 MiB"), "{error}");
        assert!(
            error.contains("over the limit of 512.0 MiB (dataplane.memoryLimit)"),
            "{error}"
        );
        assert!(
            error.contains("dataplane.maxBackends (1048576; each slot costs 5128 B"),
            "{error}"
        );
    }

    #[test]
    fn cpu_lists_and_quantities_parse() {
        for (list, n) in [
            ("0", 1),
            ("0-1", 2),
            ("0-127", 128),
            ("0,2-5", 5),
            ("0-3,8-11", 8),
        ] {
            assert_eq!(parse_cpu_list(list).unwrap(), n, "{list}");
        }
        for bad in ["", "a", "3-1"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        for (q, bytes) in [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("400M", 400_000_000),
            ("1048576", 1 << 20),
        ] {
            assert_eq!(parse_quantity(q), Ok(bytes), "{q}");
        }
        assert_eq!(
            parse_quantity("512MB"),
            Err("\"512MB\": unknown unit \"MB\" (Ki, Mi, Gi, Ti, k, M, G, T)".to_string())
        );
        assert!(parse_quantity("lots").is_err());
    }
}
