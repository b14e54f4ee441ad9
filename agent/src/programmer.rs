//! Turns the desired services into map writes: allocates service and backend ids, builds each
//! service's Maglev table into free chunks of the table map (sized to the service) and points
//! the service at it with one update.
//!
//! Invariants the kernel relies on:
//! - a table is fully written before the service entry points at it;
//! - the chunks of a table that was live are not reused until a grace period has passed since
//!   it was retired, so a packet that read the old entry never sees a half-written table;
//! - a backend id is not reused until a grace period has passed since it was retired, so a
//!   packet or conntrack entry holding the id never reads a different backend through it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use anyhow::{Context as _, Result, bail};
use geosteer_common::{
    Addr6, BACKEND_FLAG_ACTIVE, BACKEND_FLAG_NO_SHARE, Backend, BackendState,
    MAX_BACKENDS_PER_SERVICE, ServiceConfig, ServiceState, ServiceValue, TABLE_CHUNK_IDS,
    TABLE_CHUNK_SLOTS, TableChunk, table_chunks,
};
use range_alloc::RangeAllocator;
use rayon::prelude::*;

use tracing::debug;

use crate::{
    dataplane::Dataplane,
    frontend::Frontend,
    maglev::{MaglevBackend, build_table, table_size},
};

/// A service port as the data path sees it: VIP:port/proto → weighted backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredService {
    /// Human name, e.g. `default/reviews:80/TCP` (logs and diagnostics).
    pub name: String,
    pub key: Frontend,
    /// A dual-stack service's IPv6 frontend (`key` is then IPv4): a second service entry for
    /// the same table, so both families share the backends, their ids and health.
    pub key6: Option<Frontend>,
    pub backends: Vec<DesiredBackend>,
    pub settings: ServiceSettings,
}

impl DesiredService {
    /// Its frontends: `key`, then `key6`.
    pub fn frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        std::iter::once(self.key).chain(self.key6)
    }

    /// The IPv6 address its IPv6 table gives backend `b` (of `key`'s family, as
    /// [`Programmer`] checks), or None when it has no IPv6 table.
    fn ipv6_addr_of(&self, b: &DesiredBackend) -> Option<Addr6> {
        match (b.addr, self.key6) {
            (IpAddr::V6(ip), _) => Some(Addr6::from_ip(ip)),
            // Unset for an endpoint without an IPv6 address: the kernel skips it for IPv6
            // flows.
            (IpAddr::V4(_), Some(_)) => Some(b.addr6.map(Addr6::from_ip).unwrap_or_default()),
            (IpAddr::V4(_), None) => None,
        }
    }
}

/// The per-service settings the kernel reads ([`ServiceConfig`] without the agent's runtime
/// bookkeeping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSettings {
    /// `APP_PROTOCOL_*`.
    pub app_protocol: u8,
    /// 0 disables the connect timeout.
    pub connect_timeout_ns: u64,
    /// maxEjectionPercent of the host set, as a count (0: the kernel never ejects).
    pub max_ejected: u32,
    /// `ON_EJECT_*`.
    pub on_eject: u8,
    /// Session affinity timeout in seconds (0: off).
    pub affinity_timeout_s: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    /// Of the service's VIP's family (`key`'s).
    pub addr: IpAddr,
    /// Its IPv6 address in a dual-stack service (for `key6`).
    pub addr6: Option<Ipv6Addr>,
    /// Network byte order.
    pub port: u16,
    /// Relative weight for new flows; 0 = no new flows (existing ones keep going).
    pub weight: u32,
    /// Consecutive-error limits the kernel ejects at (0 = off).
    pub eject_after_5xx: u16,
    pub eject_after_gateway: u16,
    /// `BACKEND_FLAG_UNROUTABLE` and `BACKEND_FLAG_PANIC` (ACTIVE is the programmer's).
    pub flags: u8,
    /// Maglev apportions the table to groups first (the policy's priority levels), then to
    /// each group's members, so a level's share never rounds away with its members'.
    pub group: u32,
}

impl Default for DesiredBackend {
    fn default() -> Self {
        DesiredBackend {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            addr6: None,
            port: 0,
            weight: 0,
            eject_after_5xx: 0,
            eject_after_gateway: 0,
            flags: 0,
            group: 0,
        }
    }
}

impl DesiredBackend {
    /// The stable identity Maglev hashes: the same endpoint keeps its slots across rebuilds.
    fn identity(&self) -> String {
        SocketAddr::new(self.addr, u16::from_be(self.port)).to_string()
    }
}

/// A live service's backends: kernel id and what was last written, by (addr, port).
pub type LiveBackends = BTreeMap<(IpAddr, u16), (u32, DesiredBackend)>;

/// What the programmer knows about one live service.
#[derive(Clone, Debug)]
pub struct LiveService {
    pub name: String,
    pub id: u32,
    /// What the service entry holds: where the live table is.
    pub entry: ServiceValue,
    /// Read back from the pinned maps by a restarted agent, not written by this one: its table
    /// is kept if the first desired state builds the same one.
    recovered: bool,
    /// Backend ids by (addr, port), with what was last written for them.
    pub backends: LiveBackends,
    /// Outlier ejections of this service id that the agent has ended (the kernel counts the
    /// ones it made; the difference is how many are ejected now).
    pub ejections_released: i64,
    /// The IPv6 frontend's entry (`desired.key6`) names `entry`'s table; false after a failed
    /// write, or when a restarted agent found it naming another: the next change writes it.
    key6_written: bool,
    desired: DesiredService,
}

impl LiveService {
    /// Whether it is live as `desired` says, in every entry (nothing left to write).
    fn is_as(&self, desired: &DesiredService) -> bool {
        self.desired == *desired && self.key6_written
    }

    /// The kernel ids of its backends, leaving ones included.
    pub fn backend_ids(&self) -> Vec<u32> {
        self.backends.values().map(|(id, _)| *id).collect()
    }

    fn kernel_config(&self) -> ServiceConfig {
        config_entry(&self.desired.settings, self.ejections_released)
    }
}

fn config_entry(settings: &ServiceSettings, ejections_released: i64) -> ServiceConfig {
    ServiceConfig {
        connect_timeout_ns: settings.connect_timeout_ns,
        ejections_released,
        max_ejected: settings.max_ejected,
        app_protocol: settings.app_protocol,
        on_eject: settings.on_eject,
        _pad: [0; 2],
        affinity_timeout_s: settings.affinity_timeout_s,
        _pad2: 0,
    }
}

/// New services [`Programmer::apply_each`] writes together, at most: their tables are in
/// memory at once, so a group also ends at [`NEW_TABLE_CHUNKS_PER_BATCH`] chunks (4 MiB: 1,900
/// tables of 10 backends, or 16 of the largest).
const NEW_SERVICES_PER_BATCH: usize = 4096;
const NEW_TABLE_CHUNKS_PER_BATCH: u64 = 65_536;

/// `items` in consecutive groups of at most `max_items`, each ending before its `weight`
/// would pass `max_weight` (a group has one item at least, however heavy).
pub fn bounded_groups<T>(
    items: &[T],
    max_items: usize,
    max_weight: u64,
    weight: impl Fn(&T) -> u64,
) -> Vec<&[T]> {
    let mut groups = Vec::new();
    let (mut start, mut total) = (0, 0u64);
    for (n, item) in items.iter().enumerate() {
        let w = weight(item);
        if n > start && (n - start == max_items || total + w > max_weight) {
            groups.push(&items[start..n]);
            (start, total) = (n, 0);
        }
        total += w;
    }
    if start < items.len() {
        groups.push(&items[start..]);
    }
    groups
}

/// What [`Programmer::take_resources`] took for one change.
struct Taken {
    id: u32,
    /// `id` was allocated now (the service is new).
    new_service: bool,
    /// Backend ids in `desired.backends` order, and which of them were allocated now.
    ids: Vec<u32>,
    new_ids: Vec<u32>,
    /// New chunks and what goes into them (`None`: the live table is kept).
    table: Option<(Range<u32>, Vec<TableChunk>)>,
    size: u32,
}

/// What became of one service of [`Programmer::apply_each`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Already live as desired: nothing written.
    Unchanged,
    /// Written and live; `waits` grace periods were waited for (0 or 1).
    Written { waits: usize },
}

/// The map writes of one change up to and including its flip, worked out before any is made.
struct Plan {
    /// A new service id, whose state is zeroed (a reused id must not inherit ejections).
    service_state: Option<u32>,
    /// The service's settings, when new or changed.
    config: Option<(u32, ServiceConfig)>,
    /// Fresh health state for every new backend id (a reused id must not inherit counters),
    /// written before the entries.
    fresh_states: Vec<(u32, BackendState)>,
    /// Backend entries that are new or changed.
    entries: Vec<(u32, Backend)>,
    /// The IPv6 address of each of `entries` of an IPv6 service, written before them. Every
    /// backend an IPv6 service's table names has its address written this way, so a slot an
    /// earlier owner of the id left is never read.
    addrs6: Vec<(u32, Addr6)>,
    /// The update that makes the change live; `None` when the live table already is what
    /// this state builds (a restarted agent adopting its predecessor's tables): no swap.
    flip: Option<ServiceValue>,
    /// The IPv6 frontend's entry of a dual-stack service, written after `flip`, once the
    /// change is on the books (see [`Programmer::write_flip6`]): with every flip, and when the
    /// frontend is new or its entry was not written.
    flip6: Option<(Frontend, ServiceValue)>,
    /// The service entry live after the change, and its backends as written.
    entry: ServiceValue,
    backends: LiveBackends,
}

impl Plan {
    /// The table to write before the flip, if any.
    fn table<'t>(&self, taken: &'t Taken) -> Option<(u32, &'t [TableChunk])> {
        match (&self.flip, &taken.table) {
            (Some(_), Some((range, content))) if !content.is_empty() => {
                Some((range.start, content.as_slice()))
            }
            _ => None,
        }
    }

    /// The writes one by one, in the order the kernel relies on: settings, backend states and
    /// entries, the table, the service entry.
    fn write(&self, dp: &mut dyn Dataplane, key: &Frontend, taken: &Taken) -> Result<()> {
        if let Some(id) = self.service_state {
            dp.write_service_state(id, &ServiceState::default())?;
        }
        if let Some((id, config)) = &self.config {
            dp.write_service_config(*id, config)?;
        }
        dp.write_backend_states(&self.fresh_states)?;
        dp.write_backend_addrs6(&self.addrs6)?;
        dp.write_backends(&self.entries)?;
        if let Some((start, chunks)) = self.table(taken) {
            dp.write_table(start, chunks)?;
        }
        if let Some(entry) = &self.flip {
            dp.write_service(key, entry)?;
        }
        Ok(())
    }
}

/// The writes that take the service from `live` (if any) to `desired` with what `taken` holds.
fn plan(desired: &DesiredService, taken: &Taken, live: Option<&LiveService>) -> Plan {
    let id = taken.id;
    let config = (live.map(|l| l.desired.settings) != Some(desired.settings)).then(|| {
        let released = live.map_or(0, |l| l.ejections_released);
        (id, config_entry(&desired.settings, released))
    });
    let fresh_states = taken
        .new_ids
        .iter()
        .map(|&id| (id, BackendState::default()))
        .collect();
    let mut entries = Vec::new();
    let mut addrs6 = Vec::new();
    let mut backends = BTreeMap::new();
    // A service that gains its IPv6 table (vip6 added): every backend's slot is written, an
    // unchanged entry's too — its id's slot may hold what an earlier table gave it.
    let ipv6_table_is_new = desired.key6.is_some()
        && live.is_none_or(|l| l.desired.key6.is_none() && l.desired.key.vip.is_ipv4());
    for (b, &backend_id) in desired.backends.iter().zip(&taken.ids) {
        // `before.flags` are the kernel's (as written, or as read back from the pins by a
        // new agent, whose predecessor may not have set every flag).
        let unchanged = live
            .and_then(|l| l.backends.get(&(b.addr, b.port)))
            .is_some_and(|(_, before)| {
                (
                    before.eject_after_5xx,
                    before.eject_after_gateway,
                    before.flags,
                    before.addr6,
                ) == (
                    b.eject_after_5xx,
                    b.eject_after_gateway,
                    kernel_flags(b),
                    b.addr6,
                )
            });
        if !unchanged {
            entries.push((backend_id, backend_entry(desired, b, id)));
        }
        if (!unchanged || ipv6_table_is_new)
            && let Some(addr6) = desired.ipv6_addr_of(b)
        {
            addrs6.push((backend_id, addr6));
        }
        let written = DesiredBackend {
            flags: kernel_flags(b),
            ..b.clone()
        };
        backends.insert((b.addr, b.port), (backend_id, written));
    }
    let flip = taken.table.as_ref().map(|(range, _)| ServiceValue {
        id,
        _retired_generation: 0,
        table_start: range.start,
        table_size: taken.size,
        backend_count: taken.ids.len() as u32,
        _pad: 0,
    });
    let entry = match flip {
        Some(entry) => entry,
        None => live.expect("only a live table is kept").entry,
    };
    let key6_is_new = live.is_none_or(|l| l.desired.key6 != desired.key6 || !l.key6_written);
    let flip6 = desired
        .key6
        .filter(|_| flip.is_some() || key6_is_new)
        .map(|key6| (key6, entry));
    Plan {
        service_state: taken.new_service.then_some(id),
        config,
        fresh_states,
        entries,
        addrs6,
        flip,
        flip6,
        entry,
        backends,
    }
}

/// Result of one apply, for logs and measurements.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub grace_periods: usize,
}

impl ApplyReport {
    /// One service written: added (else updated), after `waits` grace periods.
    fn applied(&mut self, added: bool, waits: usize) {
        self.grace_periods += waits;
        if added {
            self.added += 1;
        } else {
            self.updated += 1;
        }
    }
}

pub struct Programmer {
    max_services: u32,
    max_backends: u32,
    live: BTreeMap<Frontend, LiveService>,
    /// The service and endpoint of every live backend id (kernel events name only the id).
    backend_owners: BTreeMap<u32, (Frontend, IpAddr, u16)>,
    free_service_ids: VecDeque<u32>,
    next_service_id: u32,
    free_backend_ids: VecDeque<u32>,
    next_backend_id: u32,
    /// Ids retired since the last grace period: reusable after the next one.
    quarantined_services: Vec<u32>,
    quarantined_backends: Vec<u32>,
    /// Backend ids whose `GS_BACKEND_ADDRS6` slot may hold an address: zeroed when the id is
    /// free again, so a slot never outlives its backend.
    addressed6: BTreeSet<u32>,
    /// Chunks of the table map not holding a live or retired table.
    table_chunks: RangeAllocator<u32>,
    /// Tables no service points at any more, with the flip that retired them: their chunks are
    /// free once a grace period covers that flip.
    retired_tables: Vec<(u64, Range<u32>)>,
    flip_seq: u64,
    grace_seq: u64,
    vips: BTreeMap<IpAddr, u32>,
    /// VIPs whose kernel entry may differ from `vips` (not written yet, or a write failed):
    /// the next change writes them, whatever it is.
    vips_pending: BTreeSet<IpAddr>,
}

impl Programmer {
    pub fn new(max_services: u32, max_backends: u32, table_chunks: u32) -> Self {
        Self {
            max_services,
            max_backends,
            live: BTreeMap::new(),
            backend_owners: BTreeMap::new(),
            free_service_ids: VecDeque::new(),
            next_service_id: 0,
            free_backend_ids: VecDeque::new(),
            next_backend_id: 0,
            quarantined_services: Vec::new(),
            quarantined_backends: Vec::new(),
            addressed6: BTreeSet::new(),
            table_chunks: RangeAllocator::new(0..table_chunks),
            retired_tables: Vec::new(),
            flip_seq: 0,
            grace_seq: 0,
            vips: BTreeMap::new(),
            vips_pending: BTreeSet::new(),
        }
    }

    /// Rebuilds the programmer's books from what a previous agent left in the (pinned) maps, so
    /// a restarted agent neither reuses an id that live tables or conntrack entries still point
    /// at nor overwrites a table a packet may be reading. Weights are not stored in the kernel,
    /// so every recovered service differs from its desired state and gets one fresh swap on the
    /// first apply.
    pub fn recover(
        dp: &dyn Dataplane,
        max_services: u32,
        max_backends: u32,
        table_chunks: u32,
    ) -> Result<Self> {
        let mut p = Self::new(max_services, max_backends, table_chunks);
        let services = dp.read_services()?;
        if services.is_empty() {
            return Ok(p);
        }
        // Which backends are live, from the backend map itself: it names each one's service,
        // also when the table was written by a build that kept it elsewhere.
        let mut by_service: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for (id, b) in dp.read_backends()? {
            if b.flags & BACKEND_FLAG_ACTIVE != 0 {
                by_service.entry(b.service_id).or_default().push((id, b));
            }
        }
        let mut used_services = std::collections::BTreeSet::new();
        let mut used_backends = std::collections::BTreeSet::new();
        let mut used_tables = Vec::new();
        let addrs6 = if services.iter().any(|(key, _)| key.vip.is_ipv6()) {
            dp.read_backend_addrs6()?
        } else {
            Vec::new()
        };
        // A dual-stack service is two entries of one service id: its IPv4 frontend is the
        // service's key, the IPv6 one its key6.
        let mut key6_of: BTreeMap<u32, (Frontend, ServiceValue)> = BTreeMap::new();
        let ids_with_ipv4: BTreeSet<u32> = services
            .iter()
            .filter(|(key, _)| key.vip.is_ipv4())
            .map(|(_, value)| value.id)
            .collect();
        let services: Vec<(Frontend, ServiceValue)> = services
            .into_iter()
            .filter(|(key, value)| {
                let alias = key.vip.is_ipv6() && ids_with_ipv4.contains(&value.id);
                if alias {
                    key6_of.entry(value.id).or_insert((*key, *value));
                }
                !alias
            })
            .collect();
        for (key, value) in services {
            let key6 = key6_of.get(&value.id).map(|(key6, _)| *key6);
            // An agent stopped between a dual-stack service's two entries left the IPv6 one on
            // the old table: the first change writes it again.
            let key6_written = key6_of.get(&value.id).is_none_or(|(_, v6)| *v6 == value);
            let mut backends = BTreeMap::new();
            for (id, b) in by_service.remove(&value.id).unwrap_or_default() {
                used_backends.insert(id);
                let slot6 = addrs6
                    .get(id as usize)
                    .copied()
                    .filter(|a| *a != Addr6::default())
                    .map(Addr6::to_ip);
                let (addr, addr6) = match key.vip {
                    IpAddr::V4(_) => (
                        IpAddr::V4(Ipv4Addr::from(u32::from_be(b.addr))),
                        slot6.filter(|_| key6.is_some()),
                    ),
                    IpAddr::V6(_) => (IpAddr::V6(slot6.unwrap_or(Ipv6Addr::UNSPECIFIED)), None),
                };
                if slot6.is_some() {
                    p.addressed6.insert(id);
                }
                let desired = DesiredBackend {
                    addr,
                    addr6,
                    port: b.port,
                    weight: 0,
                    eject_after_5xx: b.eject_after_5xx,
                    eject_after_gateway: b.eject_after_gateway,
                    flags: b.flags & !BACKEND_FLAG_ACTIVE,
                    group: 0,
                };
                backends.insert((addr, b.port), (id, desired));
            }
            used_services.insert(value.id);
            let end = u64::from(value.table_start) + u64::from(value.table_chunks());
            if value.table_chunks() > 0 && end <= u64::from(table_chunks) {
                used_tables.push((
                    value.table_start..value.table_start + value.table_chunks(),
                    key,
                ));
            }
            let config = dp.read_service_config(value.id)?;
            let desired = DesiredService {
                name: String::new(),
                key,
                key6,
                backends: backends.values().map(|(_, b)| b.clone()).collect(),
                settings: ServiceSettings {
                    app_protocol: config.app_protocol,
                    connect_timeout_ns: config.connect_timeout_ns,
                    max_ejected: config.max_ejected,
                    on_eject: config.on_eject,
                    affinity_timeout_s: config.affinity_timeout_s,
                },
            };
            for (&(addr, port), &(id, _)) in &backends {
                p.backend_owners.insert(id, (key, addr, port));
            }
            p.live.insert(
                key,
                LiveService {
                    name: String::new(),
                    id: value.id,
                    entry: value,
                    // Set below for the tables whose chunks are reserved.
                    recovered: false,
                    backends,
                    ejections_released: config.ejections_released,
                    key6_written,
                    desired,
                },
            );
            for front in std::iter::once(key).chain(key6) {
                *p.vips.entry(front.vip).or_default() += 1;
            }
        }
        // What the VIP map holds is not checked: the first change writes every VIP again.
        p.vips_pending = p.vips.keys().copied().collect();
        // The previous agent may have retired tables and ids just before it died: wait one
        // grace period before reusing anything. Every chunk outside a live table counts as
        // retired at the first flip.
        p.flip_seq = 1;
        if table_chunks > 0 {
            let all = p.table_chunks.allocate_range(table_chunks).ok();
            debug_assert!(all.is_some(), "a fresh allocator has every word free");
            used_tables.sort_by_key(|(r, _)| r.start);
            let mut next = 0;
            for (table, key) in used_tables {
                // Overlapping tables cannot both be live: the later one is not reserved, and
                // its service is not `recovered`, so its first apply writes it a new table.
                if table.start < next {
                    continue;
                }
                if table.start > next {
                    p.retired_tables.push((1, next..table.start));
                }
                next = table.end;
                if let Some(live) = p.live.get_mut(&key) {
                    live.recovered = true;
                }
            }
            if next < table_chunks {
                p.retired_tables.push((1, next..table_chunks));
            }
        }
        p.next_service_id = used_services.last().map_or(0, |m| m + 1);
        p.next_backend_id = used_backends.last().map_or(0, |m| m + 1);
        p.quarantined_services = (0..p.next_service_id)
            .filter(|id| !used_services.contains(id))
            .collect();
        p.quarantined_backends = (0..p.next_backend_id)
            .filter(|id| !used_backends.contains(id))
            .collect();
        Ok(p)
    }

    /// Chunks of the table map in live or retired tables, and its capacity.
    pub fn table_chunks_used(&self) -> (u32, u32) {
        let capacity = self.table_chunks.initial_range().end;
        (capacity - self.table_chunks.total_available(), capacity)
    }

    pub fn live(&self) -> impl Iterator<Item = &LiveService> {
        self.live.values()
    }

    pub fn service(&self, key: &Frontend) -> Option<&LiveService> {
        self.live.get(key)
    }

    /// Applies one service's new desired state (a no-op if unchanged). Returns whether it was
    /// written.
    pub fn apply_one(&mut self, dp: &mut dyn Dataplane, desired: &DesiredService) -> Result<bool> {
        if self
            .live
            .get(&desired.key)
            .is_some_and(|live| live.is_as(desired))
        {
            self.write_pending_vips(dp)?;
            return Ok(false);
        }
        let added = !self.live.contains_key(&desired.key);
        self.upsert(dp, desired)?;
        // Only a new service changes the port count of its VIPs (a changed key6, `commit`).
        if added {
            for front in desired.frontends() {
                self.count_vip_port(front.vip, 1);
            }
        }
        self.write_pending_vips(dp)?;
        Ok(true)
    }

    /// A service port on `addr` came (`+1`) or went (`-1`); the kernel entry is written by
    /// [`Self::write_pending_vips`].
    fn count_vip_port(&mut self, addr: IpAddr, change: i32) {
        let ports = self.vips.entry(addr).or_default();
        *ports = ports.saturating_add_signed(change);
        if *ports == 0 {
            self.vips.remove(&addr);
        }
        self.vips_pending.insert(addr);
    }

    /// Writes every pending VIP (its port count, or its removal); one that fails stays pending
    /// for the next change, and the others are written anyway.
    fn write_pending_vips(&mut self, dp: &mut dyn Dataplane) -> Result<()> {
        // Those with services in one batch (a full apply has a VIP per service); if that
        // fails, each alone below, so that only those that fail stay pending.
        let writes: Vec<(IpAddr, u32)> = self
            .vips_pending
            .iter()
            .filter_map(|addr| Some((*addr, *self.vips.get(addr)?)))
            .collect();
        if writes.len() > 1 {
            match dp.write_vips(&writes) {
                Ok(()) => {
                    for (addr, _) in &writes {
                        self.vips_pending.remove(addr);
                    }
                }
                Err(e) => debug!(
                    error = %format!("{e:#}"),
                    "VIPs: batch failed, writing them one at a time"
                ),
            }
        }
        let mut first_error = None;
        for addr in std::mem::take(&mut self.vips_pending) {
            let written = match self.vips.get(&addr) {
                Some(&ports) => dp.write_vip(addr, ports),
                None => dp.remove_vip(addr),
            };
            if let Err(e) = written {
                self.vips_pending.insert(addr);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// (maxServices, maxBackends): the id spaces.
    pub fn capacity(&self) -> (u32, u32) {
        (self.max_services, self.max_backends)
    }

    pub fn live_keys(&self) -> Vec<Frontend> {
        self.live.keys().copied().collect()
    }

    /// Takes one service out of the data path.
    pub fn remove_one(&mut self, dp: &mut dyn Dataplane, key: &Frontend) -> Result<()> {
        let Some(live) = self.live.get(key) else {
            return Ok(());
        };
        let frontends: Vec<Frontend> = live.desired.frontends().collect();
        self.remove(dp, key)?;
        for front in frontends {
            self.count_vip_port(front.vip, -1);
        }
        self.write_pending_vips(dp)
    }

    /// Ends `count` of the service's outlier ejections on the kernel's books (ejection time
    /// over), so maxEjectionPercent lets that many more hosts go.
    pub fn release_ejections(
        &mut self,
        dp: &mut dyn Dataplane,
        key: &Frontend,
        count: i64,
    ) -> Result<()> {
        let Some(live) = self.live.get_mut(key) else {
            return Ok(());
        };
        live.ejections_released += count;
        dp.write_service_config(live.id, &live.kernel_config())
    }

    /// Sets the released count outright (the reconcile pass repairs the books with it).
    pub fn set_ejections_released(
        &mut self,
        dp: &mut dyn Dataplane,
        key: &Frontend,
        released: i64,
    ) -> Result<()> {
        let Some(live) = self.live.get_mut(key) else {
            return Ok(());
        };
        live.ejections_released = released;
        dp.write_service_config(live.id, &live.kernel_config())
    }

    /// The service and endpoint behind a kernel backend id.
    pub fn backend_by_id(&self, backend_id: u32) -> Option<(Frontend, IpAddr, u16)> {
        self.backend_owners.get(&backend_id).copied()
    }

    /// A live backend's kernel id.
    pub fn backend_id(&self, key: &Frontend, addr: IpAddr, port: u16) -> Option<u32> {
        self.live
            .get(key)?
            .backends
            .get(&(addr, port))
            .map(|(id, _)| *id)
    }

    /// Makes the data path match `desired`: changed services get a new generation, removed ones
    /// are taken out, unchanged ones are not touched.
    pub fn apply(
        &mut self,
        dp: &mut dyn Dataplane,
        desired: &[DesiredService],
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let wanted: BTreeMap<Frontend, &DesiredService> =
            desired.iter().map(|s| (s.key, s)).collect();
        let frontends: Vec<Frontend> = desired.iter().flat_map(DesiredService::frontends).collect();
        if frontends.iter().collect::<BTreeSet<_>>().len() != frontends.len() {
            bail!("two desired services share one VIP:port/protocol");
        }
        let removed: Vec<Frontend> = self
            .live
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in removed {
            self.remove(dp, &key)?;
            report.removed += 1;
        }
        // Tables that shrink first, so the chunks they give back make room for those that
        // grow; a change refused for want of room is tried again once the others are in.
        let mut order: Vec<&DesiredService> = desired.iter().collect();
        order.sort_by_key(|s| self.table_growth(s));
        let added: Vec<bool> = order
            .iter()
            .map(|s| !self.live.contains_key(&s.key))
            .collect();
        let results = self.apply_each(dp, &order);
        let mut refused = Vec::new();
        for ((service, added), result) in order.into_iter().zip(added).zip(results) {
            match result {
                Ok(Applied::Unchanged) => report.unchanged += 1,
                Ok(Applied::Written { waits }) => report.applied(added, waits),
                Err(e) => refused.push((service, added, e)),
            }
        }
        let mut first_error = None;
        for (service, added, first) in refused {
            match self.upsert(dp, service) {
                Ok(waits) => report.applied(added, waits),
                Err(_) => {
                    first_error.get_or_insert(first);
                }
            }
        }
        self.sync_vips(dp)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Applies each of `desired` (nothing for one that is unchanged) and says, in the same
    /// order, what became of it; the VIP map counts the new services. New services are
    /// written together (see [`Self::insert_new`]), changes one at a time, in order.
    pub fn apply_each(
        &mut self,
        dp: &mut dyn Dataplane,
        desired: &[&DesiredService],
    ) -> Vec<Result<Applied>> {
        self.write_pending_vips(dp).ok(); // (still pending if not: tried again below)
        let mut results: Vec<Option<Result<Applied>>> = desired.iter().map(|_| None).collect();
        let mut new = Vec::new();
        for (i, service) in desired.iter().enumerate() {
            match self.live.get(&service.key) {
                Some(live) if live.is_as(service) => results[i] = Some(Ok(Applied::Unchanged)),
                Some(_) => {
                    results[i] = Some(
                        self.upsert(dp, service)
                            .map(|waits| Applied::Written { waits }),
                    );
                }
                None => new.push(i),
            }
        }
        // In groups, so that the tables being written are never all in memory at once.
        let groups = bounded_groups(
            &new,
            NEW_SERVICES_PER_BATCH,
            NEW_TABLE_CHUNKS_PER_BATCH,
            |&i| u64::from(crate::maglev::table_chunks_for(desired[i].backends.len())),
        );
        for group in groups {
            let services: Vec<&DesiredService> = group.iter().map(|&i| desired[i]).collect();
            for (&i, result) in group.iter().zip(self.insert_new(dp, &services)) {
                if result.is_ok() {
                    // Only a new service changes the port count of its VIPs.
                    for front in desired[i].frontends() {
                        self.count_vip_port(front.vip, 1);
                    }
                }
                results[i] = Some(result.map(|waits| Applied::Written { waits }));
            }
        }
        // A VIP that could not be written leaves its services unreachable: they are live,
        // but reported as failed (and the VIP is written again by the next change).
        if let Err(e) = self.write_pending_vips(dp) {
            for (service, result) in desired.iter().zip(&mut results) {
                if service
                    .frontends()
                    .any(|front| self.vips_pending.contains(&front.vip))
                    && matches!(result, Some(Ok(Applied::Written { .. })))
                {
                    *result = Some(Err(anyhow::anyhow!("{e:#}").context(format!(
                        "{}: live, but its VIP is not in the VIP map",
                        service.name
                    ))));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every service has a result"))
            .collect()
    }

    /// Services with nothing live yet, written together: each takes its ids and chunks as in
    /// [`Self::upsert`] (one that cannot is refused alone), then the writes before the flips go
    /// in one batch per map, then each service's flip. The kernel sees what it sees from
    /// [`Self::upsert`] — a service entry only once its table and backends are written — in
    /// a few syscalls instead of a handful per service. The Maglev tables are built first, on
    /// every CPU. Returns the grace periods each waited.
    fn insert_new(
        &mut self,
        dp: &mut dyn Dataplane,
        services: &[&DesiredService],
    ) -> Vec<Result<usize>> {
        let mut results: Vec<Option<Result<usize>>> = services.iter().map(|_| None).collect();
        self.start_change(dp);
        let slots: Vec<Vec<TableChunk>> = services
            .par_iter()
            .map(|desired| maglev_slots(desired))
            .collect();
        let mut ready = Vec::new();
        for ((i, desired), slots) in services.iter().enumerate().zip(slots) {
            let mut grace = 0;
            match self
                .take_resources(dp, desired, None, slots, &mut grace)
                .map_err(|e| not_changed(e, desired))
            {
                Ok(taken) => {
                    let plan = plan(desired, &taken, None);
                    ready.push((i, taken, plan, grace));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let written = {
            let plans = || ready.iter().map(|(_, _, plan, _)| plan);
            let states: Vec<(u32, ServiceState)> = plans()
                .filter_map(|p| p.service_state.map(|id| (id, ServiceState::default())))
                .collect();
            let configs: Vec<(u32, ServiceConfig)> = plans().filter_map(|p| p.config).collect();
            let fresh: Vec<(u32, BackendState)> = plans()
                .flat_map(|p| p.fresh_states.iter().copied())
                .collect();
            let entries: Vec<(u32, Backend)> =
                plans().flat_map(|p| p.entries.iter().copied()).collect();
            let addrs6: Vec<(u32, Addr6)> =
                plans().flat_map(|p| p.addrs6.iter().copied()).collect();
            self.addressed6.extend(addrs6.iter().map(|(id, _)| *id));
            let tables: Vec<(u32, &[TableChunk])> = ready
                .iter()
                .filter_map(|(_, taken, plan, _)| plan.table(taken))
                .collect();
            dp.write_service_states(&states)
                .and_then(|()| dp.write_service_configs(&configs))
                .and_then(|()| dp.write_backend_states(&fresh))
                .and_then(|()| dp.write_backend_addrs6(&addrs6))
                .and_then(|()| dp.write_backends(&entries))
                .and_then(|()| dp.write_tables(&tables))
        };
        // Every flip in one batch once every table is in; those the batch did not write (it
        // stops at the first failure), one at a time, so that each service gets its own answer.
        // Every primary entry, then every IPv6 one of a dual-stack service (one batch per
        // family, and no IPv6 entry before its service's primary one).
        let flips: Vec<(Frontend, ServiceValue)> = ready
            .iter()
            .filter_map(|(i, _, plan, _)| Some((services[*i].key, plan.flip?)))
            .chain(ready.iter().filter_map(|(_, _, plan, _)| plan.flip6))
            .collect();
        let flipped_together: BTreeSet<Frontend> = match &written {
            Err(_) => BTreeSet::new(),
            Ok(()) => {
                let written = match dp.write_services(&flips) {
                    Ok(()) => flips.len(),
                    Err(partly) => {
                        debug!(
                            written = partly.written,
                            of = flips.len(),
                            error = %format!("{:#}", partly.error),
                            "service entries: batch stopped, writing the rest one at a time"
                        );
                        partly.written
                    }
                };
                flips[..written].iter().map(|(key, _)| *key).collect()
            }
        };
        for (i, taken, plan, grace) in ready {
            let desired = services[i];
            let flipped = match (&written, &plan.flip) {
                (Err(e), _) => Err(anyhow::anyhow!("{e:#}")),
                (Ok(()), Some(_)) if flipped_together.contains(&desired.key) => Ok(()),
                (Ok(()), Some(entry)) => dp.write_service(&desired.key, entry),
                (Ok(()), None) => Ok(()),
            };
            let flip6 = plan
                .flip6
                .filter(|(key6, _)| !flipped_together.contains(key6));
            results[i] = Some(match flipped {
                // Live from here on (the table and its entry are in): an IPv6 entry that
                // fails to go in is written by the next change, never undone with the rest.
                Ok(()) => self
                    .commit(dp, desired, &taken, plan, None)
                    .and_then(|()| self.write_flip6(dp, desired, flip6))
                    .map(|()| grace),
                Err(e) => {
                    self.abandon(dp, desired, None, taken);
                    Err(not_changed(e, desired))
                }
            });
        }
        results
            .into_iter()
            .map(|r| r.expect("every service has a result"))
            .collect()
    }

    /// How many more table chunks `desired` needs than its live table takes (all of them for a
    /// new service; negative when it shrinks).
    pub fn table_growth(&self, desired: &DesiredService) -> i64 {
        let needed = table_chunks(table_size_for(desired), desired.backends.len() as u32);
        let live = self
            .live
            .get(&desired.key)
            .map_or(0, |l| l.entry.table_chunks());
        i64::from(needed) - i64::from(live)
    }

    /// Number of grace periods waited (0 or 1).
    ///
    /// First everything that can run out is taken (service id, backend ids, table chunks)
    /// without writing a map, and given back if something does: a refused change leaves the
    /// service as it was, in the kernel and in these books. Then the writes, in the order the
    /// kernel relies on.
    fn upsert(&mut self, dp: &mut dyn Dataplane, desired: &DesiredService) -> Result<usize> {
        let mut grace = 0;
        self.start_change(dp);
        let existing = self.live.remove(&desired.key);
        let slots = maglev_slots(desired);
        let taken = match self
            .take_resources(dp, desired, existing.as_ref(), slots, &mut grace)
            .map_err(|e| not_changed(e, desired))
        {
            Ok(taken) => taken,
            Err(e) => {
                if let Some(live) = existing {
                    self.live.insert(desired.key, live);
                }
                return Err(e);
            }
        };
        let plan = plan(desired, &taken, existing.as_ref());
        self.addressed6
            .extend(plan.addrs6.iter().map(|(id, _)| *id));
        if let Err(e) = plan.write(dp, &desired.key, &taken) {
            self.abandon(dp, desired, existing, taken);
            return Err(not_changed(e, desired));
        }
        let flip6 = plan.flip6;
        self.commit(dp, desired, &taken, plan, existing)?;
        self.write_flip6(dp, desired, flip6)?;
        Ok(grace)
    }

    /// Writes a dual-stack service's IPv6 entry after its change is live and on the books: a
    /// failure leaves the IPv4 side live (its table is never undone under it), and marks the
    /// entry for the next change to write.
    fn write_flip6(
        &mut self,
        dp: &mut dyn Dataplane,
        desired: &DesiredService,
        flip6: Option<(Frontend, ServiceValue)>,
    ) -> Result<()> {
        let written = match flip6 {
            Some((key6, entry)) => dp.write_service(&key6, &entry),
            None => Ok(()),
        };
        if let Some(live) = self.live.get_mut(&desired.key) {
            live.key6_written = written.is_ok();
        }
        written.with_context(|| {
            format!(
                "{}: live over IPv4, its IPv6 frontend not yet (written with the next change)",
                desired.name
            )
        })
    }

    /// Before a change takes anything: tables a completed grace period covers are free again.
    fn start_change(&mut self, dp: &mut dyn Dataplane) {
        // (Usually the background grace period requested at earlier flips has long finished,
        // and their tables' chunks are free again.)
        self.grace_seq = self.grace_seq.max(dp.grace_completed());
        self.release_retired_tables();
        // Retired chunks no grace period has been asked for yet (a restart's, or a request a
        // failed background grace period dropped): ask now, in the background.
        if let Some(newest) = self.retired_tables.iter().map(|(seq, _)| *seq).max() {
            dp.request_grace(newest);
        }
    }

    /// The books once a change is live (its flip done, or its table kept), then the backends
    /// it no longer has taken out of use.
    fn commit(
        &mut self,
        dp: &mut dyn Dataplane,
        desired: &DesiredService,
        taken: &Taken,
        plan: Plan,
        existing: Option<LiveService>,
    ) -> Result<()> {
        let id = taken.id;
        // A dual-stack service whose IPv6 frontend changed: the VIP map counts the change, and
        // the old entry goes below, once the books are updated.
        let departed6 = existing
            .as_ref()
            .and_then(|live| live.desired.key6)
            .filter(|old6| Some(*old6) != desired.key6);
        if existing
            .as_ref()
            .is_some_and(|live| live.desired.key6 != desired.key6)
        {
            if let Some(old6) = departed6 {
                self.count_vip_port(old6.vip, -1);
            }
            if let Some(new6) = desired.key6 {
                self.count_vip_port(new6.vip, 1);
            }
        }
        let (old_entry, mut old_backends, mut ejections_released) = match existing {
            Some(live) => (Some(live.entry), live.backends, live.ejections_released),
            None => (None, BTreeMap::new(), 0),
        };
        for key in plan.backends.keys() {
            old_backends.remove(key);
        }
        if taken.table.is_some() {
            self.flip_seq += 1;
            if let Some(old) = old_entry {
                // Its chunks are free once no packet can still be reading them: ask for that
                // grace period now, in the background (a new service retires nothing, so a
                // full apply of new services asks for none).
                self.retire_table(&old);
                dp.request_grace(self.flip_seq);
            }
        }

        // Backends no longer desired: flows pinned to them are re-steered by the kernel once
        // the slot is inactive; the id waits out a grace period before reuse. An ejection of a
        // removed backend is over: it no longer counts against maxEjectionPercent, and the
        // endpoint, if it comes back, is a new host with a new id.
        // The change is live: on the books first, so that a failure below loses nothing.
        for (&(addr, port), &(backend_id, _)) in &plan.backends {
            self.backend_owners
                .insert(backend_id, (desired.key, addr, port));
        }
        self.live.insert(
            desired.key,
            LiveService {
                name: desired.name.clone(),
                id,
                entry: plan.entry,
                recovered: false,
                backends: plan.backends,
                ejections_released,
                key6_written: true,
                desired: desired.clone(),
            },
        );
        let released_before = ejections_released;
        let mut first_error = None;
        // Unless another service took that frontend in the same apply (a swap of vip6s).
        if let Some(old6) = departed6
            && !self
                .live
                .values()
                .any(|l| l.desired.frontends().any(|front| front == old6))
            && let Err(e) = dp.remove_service(&old6)
        {
            first_error.get_or_insert(e);
        }
        for (backend_id, _) in old_backends.into_values() {
            // No longer in the table: taken out of use, and its id waits out a grace period
            // whatever happens to these writes.
            self.backend_owners.remove(&backend_id);
            self.quarantined_backends.push(backend_id);
            let cleared = dp
                .write_backend(backend_id, &Backend::default())
                .and_then(|()| dp.read_backend_state(backend_id));
            match cleared {
                Ok(state) => ejections_released += i64::from(state.ejected != 0),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if ejections_released != released_before {
            if let Some(live) = self.live.get_mut(&desired.key) {
                live.ejections_released = ejections_released;
            }
            dp.write_service_config(id, &config_entry(&desired.settings, ejections_released))?;
        }
        match first_error {
            Some(e) => Err(e.context(format!("{}: removing its old backends", desired.name))),
            None => Ok(()),
        }
    }

    /// A change that failed before its flip: the service stays as it was on the books (the
    /// kernel still points at its old table), the new chunks are free at once (nothing points
    /// at them), and ids that may have been written wait out a grace period.
    fn abandon(
        &mut self,
        dp: &mut dyn Dataplane,
        desired: &DesiredService,
        live: Option<LiveService>,
        taken: Taken,
    ) {
        if let Some(live) = live {
            self.live.insert(desired.key, live);
        }
        if let Some((range, _)) = taken.table
            && !range.is_empty()
        {
            self.table_chunks.free_range(range);
        }
        for backend_id in taken.new_ids {
            // Best effort: an entry written before the failure is taken out of use.
            let _ = dp.write_backend(backend_id, &Backend::default());
            self.quarantined_backends.push(backend_id);
        }
        if taken.new_service {
            self.quarantined_services.push(taken.id);
        }
    }

    /// The ids and table chunks `desired` needs, all or none: what was taken is given back
    /// when the next one runs out. No map is written. `slots` are its Maglev slots
    /// ([`maglev_slots`]).
    fn take_resources(
        &mut self,
        dp: &mut dyn Dataplane,
        desired: &DesiredService,
        live: Option<&LiveService>,
        slots: Vec<TableChunk>,
        grace: &mut usize,
    ) -> Result<Taken> {
        if desired.backends.len() > MAX_BACKENDS_PER_SERVICE {
            bail!(
                "{}: {} backends, more than the {} a service can have",
                desired.name,
                desired.backends.len(),
                MAX_BACKENDS_PER_SERVICE
            );
        }
        // The kernel reads an IPv6 table's backends' addresses from GS_BACKEND_ADDRS6 alone:
        // an IPv4 backend there would be unaddressed, an IPv6 one in an IPv4 table sent to 0.
        if let Some(b) = desired
            .backends
            .iter()
            .find(|b| b.addr.is_ipv4() != desired.key.vip.is_ipv4())
        {
            bail!(
                "{}: backend {} is not of the family of its frontend {}",
                desired.name,
                b.addr,
                desired.key
            );
        }
        if let Some(key6) = desired.key6
            && (key6.vip.is_ipv4() || desired.key.vip.is_ipv6())
        {
            bail!(
                "{}: a dual-stack service's frontends are IPv4 ({}) and IPv6 ({key6})",
                desired.name,
                desired.key
            );
        }
        let (id, new_service) = match live {
            Some(live) => (live.id, false),
            None => (self.allocate_service_id(dp, grace)?, true),
        };
        let mut ids = Vec::with_capacity(desired.backends.len());
        let mut new_ids = Vec::new();
        let mut failed = None;
        for b in &desired.backends {
            match live.and_then(|l| l.backends.get(&(b.addr, b.port))) {
                Some(&(backend_id, _)) => ids.push(backend_id),
                None => match self.allocate_backend_id(dp, grace) {
                    Ok(backend_id) => {
                        ids.push(backend_id);
                        new_ids.push(backend_id);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
            }
        }
        let size = table_size_for(desired);
        let table = match failed {
            Some(e) => Err(e),
            None => self.table_for(dp, live, size, &ids, slots, grace),
        };
        match table {
            Ok(table) => Ok(Taken {
                id,
                new_service,
                ids,
                new_ids,
                table,
                size,
            }),
            Err(e) => {
                // Never written: reusable at once, first in line.
                for backend_id in new_ids.into_iter().rev() {
                    self.free_backend_ids.push_front(backend_id);
                }
                if new_service {
                    self.free_service_ids.push_front(id);
                }
                Err(e)
            }
        }
    }

    /// Chunks for `desired`'s table and its content; `None` when the live table of a
    /// recovered service already is that content.
    fn table_for(
        &mut self,
        dp: &mut dyn Dataplane,
        live: Option<&LiveService>,
        size: u32,
        ids: &[u32],
        slots: Vec<TableChunk>,
        grace: &mut usize,
    ) -> Result<Option<(Range<u32>, Vec<TableChunk>)>> {
        let mut content = id_chunks(ids);
        content.extend(slots);
        if let Some(live) = live.filter(|l| l.recovered) {
            let same_shape =
                (live.entry.table_size, live.entry.backend_count) == (size, ids.len() as u32);
            if same_shape
                && dp.read_table(live.entry.table_start, live.entry.table_chunks())? == content
            {
                return Ok(None);
            }
        }
        let range = self.allocate_table(dp, content.len() as u32, grace)?;
        Ok(Some((range, content)))
    }

    fn remove(&mut self, dp: &mut dyn Dataplane, key: &Frontend) -> Result<()> {
        let Some(live) = self.live.remove(key) else {
            return Ok(());
        };
        if let Some(key6) = live.desired.key6 {
            dp.remove_service(&key6)?;
        }
        dp.remove_service(key)?;
        self.flip_seq += 1;
        self.retire_table(&live.entry);
        dp.request_grace(self.flip_seq);
        for (backend_id, _) in live.backends.into_values() {
            dp.write_backend(backend_id, &Backend::default())?;
            self.backend_owners.remove(&backend_id);
            self.quarantined_backends.push(backend_id);
        }
        self.quarantined_services.push(live.id);
        Ok(())
    }

    /// The VIP map as the live services make it (see [`Self::write_pending_vips`]).
    fn sync_vips(&mut self, dp: &mut dyn Dataplane) -> Result<()> {
        let mut wanted: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for front in self.live.values().flat_map(|l| l.desired.frontends()) {
            *wanted.entry(front.vip).or_default() += 1;
        }
        for addr in self.vips.keys().chain(wanted.keys()) {
            if self.vips.get(addr) != wanted.get(addr) {
                self.vips_pending.insert(*addr);
            }
        }
        self.vips = wanted;
        self.write_pending_vips(dp)
    }

    /// Chunks for a table of `chunks`; waits for a grace period when only retired tables'
    /// chunks would make room.
    fn allocate_table(
        &mut self,
        dp: &mut dyn Dataplane,
        chunks: u32,
        grace: &mut usize,
    ) -> Result<Range<u32>> {
        if chunks == 0 {
            return Ok(0..0);
        }
        loop {
            match self.table_chunks.allocate_range(chunks) {
                Ok(range) => return Ok(range),
                Err(_) if !self.retired_tables.is_empty() => {
                    self.wait_grace(dp)?;
                    *grace += 1;
                }
                Err(e) => {
                    let (used, capacity) = self.table_chunks_used();
                    bail!(
                        "a table of {chunks} chunks does not fit: {used} of the {capacity} \
                         table chunks are in use, {} free but not in one piece \
                         (dataplane.tableChunks)",
                        e.fragmented_free_length
                    )
                }
            }
        }
    }

    /// The chunks of a table no service points at any more (as of the current flip).
    fn retire_table(&mut self, entry: &ServiceValue) {
        let chunks = entry.table_chunks();
        if chunks > 0 {
            self.retired_tables
                .push((self.flip_seq, entry.table_start..entry.table_start + chunks));
        }
    }

    /// Frees the retired tables a completed grace period covers.
    fn release_retired_tables(&mut self) {
        let grace_seq = self.grace_seq;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired_tables)
            .into_iter()
            .partition(|(seq, _)| *seq <= grace_seq);
        self.retired_tables = waiting;
        for (_, range) in done {
            self.table_chunks.free_range(range);
        }
    }

    fn wait_grace(&mut self, dp: &mut dyn Dataplane) -> Result<()> {
        dp.grace_period()?;
        self.grace_seq = self.flip_seq;
        self.release_retired_tables();
        // No packet reads the retired ids any more: their IPv6 addresses go with them.
        let zeroed: Vec<(u32, Addr6)> = self
            .quarantined_backends
            .iter()
            .filter(|id| self.addressed6.contains(id))
            .map(|&id| (id, Addr6::default()))
            .collect();
        dp.write_backend_addrs6(&zeroed)?;
        for (id, _) in &zeroed {
            self.addressed6.remove(id);
        }
        self.free_backend_ids
            .extend(self.quarantined_backends.drain(..));
        self.free_service_ids
            .extend(self.quarantined_services.drain(..));
        Ok(())
    }

    fn allocate_service_id(&mut self, dp: &mut dyn Dataplane, grace: &mut usize) -> Result<u32> {
        if self.next_service_id < self.max_services {
            self.next_service_id += 1;
            return Ok(self.next_service_id - 1);
        }
        if self.free_service_ids.is_empty() && !self.quarantined_services.is_empty() {
            self.wait_grace(dp)?;
            *grace += 1;
        }
        self.free_service_ids.pop_front().with_context(|| {
            format!(
                "no free service slot: all {} are in use (dataplane.maxServices)",
                self.max_services
            )
        })
    }

    /// Fresh ids first, then the oldest retired one: reuse is as late as possible.
    fn allocate_backend_id(&mut self, dp: &mut dyn Dataplane, grace: &mut usize) -> Result<u32> {
        if self.next_backend_id < self.max_backends {
            self.next_backend_id += 1;
            return Ok(self.next_backend_id - 1);
        }
        if self.free_backend_ids.is_empty() && !self.quarantined_backends.is_empty() {
            self.wait_grace(dp)?;
            *grace += 1;
        }
        self.free_backend_ids.pop_front().with_context(|| {
            format!(
                "no free backend slot: all {} are in use (dataplane.maxBackends)",
                self.max_backends
            )
        })
    }
}

/// The backend's flags as the kernel gets them: a weight of 0 (no slot in the table) is also
/// `BACKEND_FLAG_NO_SHARE`, so session affinity does not bring a client back to it.
fn kernel_flags(b: &DesiredBackend) -> u8 {
    if b.weight == 0 {
        b.flags | BACKEND_FLAG_NO_SHARE
    } else {
        b.flags & !BACKEND_FLAG_NO_SHARE
    }
}

/// An IPv6 backend's entry has address 0: its address is in `GS_BACKEND_ADDRS6` (see
/// [`Plan::addrs6`]).
fn backend_entry(service: &DesiredService, b: &DesiredBackend, service_id: u32) -> Backend {
    Backend {
        addr: match b.addr {
            IpAddr::V4(ip) => ip.to_bits().to_be(),
            IpAddr::V6(_) => 0,
        },
        port: b.port,
        proto: service.key.proto,
        flags: BACKEND_FLAG_ACTIVE | kernel_flags(b),
        service_id,
        eject_after_5xx: b.eject_after_5xx,
        eject_after_gateway: b.eject_after_gateway,
    }
}

/// The Maglev backends of `desired`, by identity (what the table is built from).
fn maglev_input(desired: &DesiredService) -> (Vec<String>, Vec<(u32, u32)>) {
    let names = desired
        .backends
        .iter()
        .map(DesiredBackend::identity)
        .collect();
    let shares = desired
        .backends
        .iter()
        .map(|b| (b.weight, b.group))
        .collect();
    (names, shares)
}

fn maglev_backends<'a>(names: &'a [String], shares: &[(u32, u32)]) -> Vec<MaglevBackend<'a>> {
    names
        .iter()
        .zip(shares)
        .map(|(name, &(weight, group))| MaglevBackend {
            name,
            weight,
            group,
        })
        .collect()
}

/// The size of `desired`'s Maglev table: 0 when no backend may take new flows (none, or all
/// weight 0), else [`table_size`].
pub fn table_size_for(desired: &DesiredService) -> u32 {
    if desired.backends.iter().all(|b| b.weight == 0) {
        return 0;
    }
    table_size(desired.backends.len()) as u32
}

/// The kernel's table (see [`ServiceValue`]): the backend ids `ids` (in `desired.backends`
/// order), 16 to a chunk, then `size` Maglev slots, each an index into them, 32 to a chunk.
pub fn build_table_chunks(desired: &DesiredService, size: u32, ids: &[u32]) -> Vec<TableChunk> {
    let mut chunks = id_chunks(ids);
    chunks.extend(slot_chunks(desired, size));
    chunks
}

/// The backend-id part of a table: 16 ids to a chunk.
fn id_chunks(ids: &[u32]) -> Vec<TableChunk> {
    let mut chunks = Vec::with_capacity(table_chunks(0, ids.len() as u32) as usize);
    for part in ids.chunks(TABLE_CHUNK_IDS as usize) {
        let mut chunk = TableChunk::default();
        chunk.words[..part.len()].copy_from_slice(part);
        chunks.push(chunk);
    }
    chunks
}

/// `e` of a change that left `desired`'s service as it was.
fn not_changed(e: anyhow::Error, desired: &DesiredService) -> anyhow::Error {
    e.context(format!("{}: not changed", desired.name))
}

/// A change's Maglev slots ([`slot_chunks`] at its size); none for a service with more backends
/// than a table can index, which [`Programmer::take_resources`] refuses.
fn maglev_slots(desired: &DesiredService) -> Vec<TableChunk> {
    if desired.backends.len() > MAX_BACKENDS_PER_SERVICE {
        return Vec::new();
    }
    slot_chunks(desired, table_size_for(desired))
}

/// The Maglev part of a table: `size` slots over `desired.backends`, 32 to a chunk (none for
/// size 0). Depends on `desired` alone, so it can be built anywhere, ahead of the ids.
fn slot_chunks(desired: &DesiredService, size: u32) -> Vec<TableChunk> {
    if size == 0 {
        return Vec::new();
    }
    let (names, shares) = maglev_input(desired);
    let slots = build_table(&maglev_backends(&names, &shares), size as usize);
    slots
        .chunks(TABLE_CHUNK_SLOTS as usize)
        .map(|part| {
            let mut chunk = TableChunk::default();
            for (lane, &index) in part.iter().enumerate() {
                chunk.set_slot(lane as u32, index);
            }
            chunk
        })
        .collect()
}

#[cfg(test)]
mod tests;
