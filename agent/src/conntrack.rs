//! Conntrack lifecycle: the agent's garbage collector (Cilium's model: the kernel only looks up,
//! inserts and stamps `last_seen_ns`; userspace walks the table and removes what expired).
//!
//! A flow is two entries, one per direction. The GC decides per flow from its original entry and
//! removes both halves together; a half whose partner is gone (the kernel rebuilds a missing half
//! on its next packet, see `restore_reply_half` in `ebpf/src/steer.rs`) is removed once idle for
//! the orphan timeout. Ending the flows of an ejected backend (`onEject`) is the same walk with a
//! different predicate, so it shares the GC's passes.
//!
//! Every pass is cut into steps of bounded time (the control loop runs one per tick), over
//! `BPF_MAP_LOOKUP_BATCH`, whose cursor is a hash bucket: deletions during the walk neither
//! restart it nor make it skip, unlike `get_next_key` (which starts over when its key vanishes).

use std::{
    mem::size_of,
    os::fd::BorrowedFd,
    time::{Duration, Instant},
};

use anyhow::Result;
use geosteer_common::{
    APP_PROTOCOL_HTTP1, Addr, Addr6, DIR_ORIGINAL, FlowKeyOf, FlowValueOf, PROTO_TCP, TCP_CLOSED,
    TCP_SYN_SENT,
};

use crate::config::ConntrackTimeouts;

/// Entries read per batch (the kernel needs room for a whole hash bucket; buckets hold a few).
const BATCH: usize = 1024;

/// How long a flow lives after its last packet, by state (Cilium's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// SYN sent, no SYN-ACK yet.
    pub tcp_syn: Duration,
    /// Established (or picked up mid-stream), including half-closed.
    pub tcp_established: Duration,
    /// Closed by a RST, or by a FIN in each direction.
    pub tcp_closing: Duration,
    /// UDP (0 in the config: UDP flows are never re-steered; the GC then uses the
    /// established timeout).
    pub udp: Duration,
    /// A half whose partner is gone.
    pub orphan: Duration,
}

impl From<&ConntrackTimeouts> for Timeouts {
    fn from(c: &ConntrackTimeouts) -> Self {
        Timeouts {
            tcp_syn: c.tcp_syn_timeout,
            tcp_established: c.tcp_established_timeout,
            tcp_closing: c.tcp_closing_timeout,
            udp: if c.udp_timeout.is_zero() {
                c.tcp_established_timeout
            } else {
                c.udp_timeout
            },
            orphan: c.tcp_syn_timeout,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::from(&ConntrackTimeouts::default())
    }
}

/// How long the flow of `original` (with its reply half, if present) lives after its last
/// packet in either direction.
pub fn lifetime<A: Addr>(
    proto: u8,
    original: &FlowValueOf<A>,
    reply: Option<&FlowValueOf<A>>,
    t: &Timeouts,
) -> Duration {
    if proto != PROTO_TCP {
        return t.udp;
    }
    let both_fins = original.fin_seen != 0 && reply.is_some_and(|r| r.fin_seen != 0);
    match original.tcp_state {
        TCP_SYN_SENT => t.tcp_syn,
        TCP_CLOSED => t.tcp_closing,
        _ if both_fins => t.tcp_closing,
        _ => t.tcp_established,
    }
}

/// Whether the flow has been idle past its lifetime at `now_ns` (the kernel's clock).
pub fn is_expired<A: Addr>(
    now_ns: u64,
    proto: u8,
    original: &FlowValueOf<A>,
    reply: Option<&FlowValueOf<A>>,
    t: &Timeouts,
) -> bool {
    let last = original
        .last_seen_ns
        .max(reply.map_or(0, |r| r.last_seen_ns));
    let lifetime = lifetime(proto, original, reply, t).as_nanos() as u64;
    now_ns.saturating_sub(last) > lifetime
}

/// Whether `reply` is the reply half of the flow whose original half is (`key`, `original`), not
/// another flow's that shares its key (one client port to two VIPs with the same backend).
fn is_partner<A: Addr>(
    key: &FlowKeyOf<A>,
    original: &FlowValueOf<A>,
    reply: &FlowValueOf<A>,
) -> bool {
    reply.nat_addr == key.daddr
        && reply.nat_port == key.dport
        && reply.backend_id == original.backend_id
}

/// Entries of one batch, and the cursor of the next (`None`: the walk is complete).
pub type Batch<A = u32> = (Vec<(FlowKeyOf<A>, FlowValueOf<A>)>, Option<u32>);

/// Conntrack of one family (`GS_CONNTRACK`, `GS_CONNTRACK6`) as the GC reads it: batches that
/// survive concurrent deletes, point lookups and deletes.
pub trait FlowTable<A: Addr = u32> {
    /// Up to `max` entries from `cursor` (`None`: the start); the cursor of the next batch, or
    /// `None` when the walk is complete.
    fn batch(&mut self, cursor: Option<u32>, max: usize) -> Result<Batch<A>>;
    fn get(&self, key: &FlowKeyOf<A>) -> Option<FlowValueOf<A>>;
    /// Whether the entry was there.
    fn remove(&mut self, key: &FlowKeyOf<A>) -> bool;
}

/// Both families' conntrack: a pass walks the IPv4 table, then the IPv6 one.
pub struct FlowTables<'a> {
    pub v4: &'a mut dyn FlowTable<u32>,
    pub v6: &'a mut dyn FlowTable<Addr6>,
}

/// A request to end the flows pinned to one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forget {
    pub backend_id: u32,
    /// Spare HTTP/1.x flows (the kernel drains them between requests).
    pub keep_http: bool,
    /// Flows ended so far.
    pub flows: usize,
}

/// What one complete pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Entries (both halves) seen: the table's fill.
    pub entries: usize,
    /// Flows (original halves) seen.
    pub flows: usize,
    /// Flows removed because they were idle past their timeout.
    pub expired: usize,
    /// Halves without a partner removed (idle past the orphan timeout, or of a forgotten
    /// backend).
    pub orphans: usize,
    /// The forget requests this pass served, with their counts.
    pub forgotten: Vec<Forget>,
    /// Wall time from the first step to the last.
    pub took: Duration,
}

/// Totals since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepTotals {
    pub passes: u64,
    pub expired: u64,
    pub orphans: u64,
    pub forgotten: u64,
}

struct Pass {
    /// Walking the IPv6 table (the IPv4 one is done).
    in_v6: bool,
    cursor: Option<u32>,
    started: Instant,
    report: PassReport,
}

/// The GC: runs a pass every `gc_interval`, or at once when flows are to be forgotten, one
/// bounded step at a time.
pub struct Sweeper {
    pub timeouts: Timeouts,
    pub gc_interval: Duration,
    pass: Option<Pass>,
    waiting: Vec<Forget>,
    next_gc_ns: u64,
    pub last: Option<PassReport>,
    pub totals: SweepTotals,
}

impl Default for Sweeper {
    fn default() -> Self {
        Sweeper::new(
            Timeouts::default(),
            crate::config::DEFAULT_CONNTRACK_GC_INTERVAL,
        )
    }
}

impl Sweeper {
    pub fn new(timeouts: Timeouts, gc_interval: Duration) -> Sweeper {
        Sweeper {
            timeouts,
            gc_interval,
            pass: None,
            waiting: Vec::new(),
            next_gc_ns: 0,
            last: None,
            totals: SweepTotals::default(),
        }
    }

    /// Ends the flows of `backend_id` in the next pass (which starts at the next step).
    pub fn forget(&mut self, backend_id: u32, keep_http: bool) {
        if let Some(f) = self.waiting.iter_mut().find(|f| f.backend_id == backend_id) {
            f.keep_http &= keep_http;
            return;
        }
        self.waiting.push(Forget {
            backend_id,
            keep_http,
            flows: 0,
        });
    }

    /// Whether forget requests are queued or being served.
    pub fn busy(&self) -> bool {
        !self.waiting.is_empty()
            || self
                .pass
                .as_ref()
                .is_some_and(|p| !p.report.forgotten.is_empty())
    }

    /// Works for at most `budget` (at least one batch, and the first IPv6 batch after the last
    /// IPv4 one); returns the report of a pass it completed.
    pub fn step(
        &mut self,
        tables: FlowTables<'_>,
        now_ns: u64,
        budget: Duration,
    ) -> Result<Option<PassReport>> {
        let forget_waits = !self.waiting.is_empty();
        let restart_for_forget = forget_waits
            && self
                .pass
                .as_ref()
                .is_some_and(|p| p.report.forgotten.is_empty());
        if self.pass.is_none() || restart_for_forget {
            if !forget_waits && now_ns < self.next_gc_ns {
                return Ok(None);
            }
            // A pass that only collects garbage gives way to one that also forgets: what it
            // removed so far stays removed.
            self.pass = Some(Pass {
                in_v6: false,
                cursor: None,
                started: Instant::now(),
                report: PassReport {
                    forgotten: std::mem::take(&mut self.waiting),
                    ..PassReport::default()
                },
            });
        }
        let deadline = Instant::now() + budget;
        let timeouts = self.timeouts;
        let pass = self.pass.as_mut().expect("a pass runs");
        loop {
            let next = if pass.in_v6 {
                walk_batch(&mut *tables.v6, pass, now_ns, &timeouts)?
            } else {
                walk_batch(&mut *tables.v4, pass, now_ns, &timeouts)?
            };
            match next {
                Some(cursor) => pass.cursor = Some(cursor),
                // On to the IPv6 table in the same step: its first batch (usually its only
                // one: few nodes carry IPv6 flows) adds no step to a pass.
                None if !pass.in_v6 => {
                    pass.in_v6 = true;
                    pass.cursor = None;
                    continue;
                }
                None => {
                    let mut pass = self.pass.take().expect("a pass runs");
                    pass.report.took = pass.started.elapsed();
                    self.next_gc_ns = now_ns + self.gc_interval.as_nanos() as u64;
                    self.totals.passes += 1;
                    self.totals.expired += pass.report.expired as u64;
                    self.totals.orphans += pass.report.orphans as u64;
                    self.totals.forgotten += pass
                        .report
                        .forgotten
                        .iter()
                        .map(|f| f.flows as u64)
                        .sum::<u64>();
                    self.last = Some(pass.report.clone());
                    return Ok(Some(pass.report));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Runs passes until the forget requests queued now are served (tests and tools; the
    /// agent steps from its control loop instead).
    pub fn run_forget(&mut self, tables: FlowTables<'_>, now_ns: u64) -> Result<Vec<Forget>> {
        loop {
            let tables = FlowTables {
                v4: &mut *tables.v4,
                v6: &mut *tables.v6,
            };
            if let Some(report) = self.step(tables, now_ns, Duration::from_secs(3600))?
                && !report.forgotten.is_empty()
            {
                return Ok(report.forgotten);
            }
            if !self.busy() {
                return Ok(Vec::new());
            }
        }
    }
}

/// One batch of `table` from the pass's cursor; the cursor of the next batch.
fn walk_batch<A: Addr>(
    table: &mut dyn FlowTable<A>,
    pass: &mut Pass,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Result<Option<u32>> {
    let (batch, next) = table.batch(pass.cursor, BATCH)?;
    for (key, value) in &batch {
        visit(table, &mut pass.report, key, value, now_ns, timeouts);
    }
    Ok(next)
}

/// One entry of a pass.
fn visit<A: Addr>(
    table: &mut dyn FlowTable<A>,
    report: &mut PassReport,
    key: &FlowKeyOf<A>,
    value: &FlowValueOf<A>,
    now_ns: u64,
    t: &Timeouts,
) {
    report.entries += 1;
    let forget = report.forgotten.iter_mut().find(|f| {
        f.backend_id == value.backend_id
            && !(f.keep_http && value.app_protocol == APP_PROTOCOL_HTTP1)
    });
    if key.direction == DIR_ORIGINAL {
        report.flows += 1;
        let reply_key = key.reply_half(value);
        let reply = table
            .get(&reply_key)
            .filter(|reply| is_partner(key, value, reply));
        let remove = match forget {
            Some(f) => {
                f.flows += 1;
                true
            }
            None if is_expired(now_ns, key.proto, value, reply.as_ref(), t) => {
                report.expired += 1;
                true
            }
            None => false,
        };
        if remove {
            // Reply half first: a reply in between finds no entry rather than rebuilding
            // the original half just removed.
            if reply.is_some() {
                table.remove(&reply_key);
            }
            table.remove(key);
        }
        return;
    }
    // A reply half: handled with its original, unless that is gone.
    let original_key = key.original_half(value);
    let has_original = table
        .get(&original_key)
        .is_some_and(|original| is_partner(&original_key, &original, value));
    if has_original {
        return;
    }
    let idle = now_ns.saturating_sub(value.last_seen_ns) > t.orphan.as_nanos() as u64;
    if (forget.is_some() || idle) && table.remove(key) {
        report.orphans += 1;
    }
}

/// One batch of conntrack entries (see [`crate::bpf_batch`]); the cursor is the kernel's
/// bucket index.
pub fn lookup_batch<A: Addr>(
    fd: BorrowedFd<'_>,
    cursor: Option<u32>,
    max: usize,
) -> Result<Batch<A>> {
    let (key_size, value_size) = (size_of::<FlowKeyOf<A>>(), size_of::<FlowValueOf<A>>());
    let cursor = cursor.map(|c| c.to_ne_bytes().to_vec());
    let (raw, next) = crate::bpf_batch::lookup(fd, key_size, value_size, &cursor, max)?;
    let entries = raw
        .iter()
        .map(|(key, value)| {
            // SAFETY: the kernel wrote whole keys and values of exactly these plain types.
            unsafe {
                (
                    std::ptr::read_unaligned(key.as_ptr().cast::<FlowKeyOf<A>>()),
                    std::ptr::read_unaligned(value.as_ptr().cast::<FlowValueOf<A>>()),
                )
            }
        })
        .collect();
    let next = next.map(|token| u32::from_ne_bytes([token[0], token[1], token[2], token[3]]));
    Ok((entries, next))
}

#[cfg(test)]
mod tests;
