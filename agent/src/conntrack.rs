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
    APP_PROTOCOL_HTTP1, DIR_ORIGINAL, DIR_REPLY, FlowKey, FlowValue, PROTO_TCP, TCP_CLOSED,
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
pub fn lifetime(
    proto: u8,
    original: &FlowValue,
    reply: Option<&FlowValue>,
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
pub fn is_expired(
    now_ns: u64,
    proto: u8,
    original: &FlowValue,
    reply: Option<&FlowValue>,
    t: &Timeouts,
) -> bool {
    let last = original
        .last_seen_ns
        .max(reply.map_or(0, |r| r.last_seen_ns));
    let lifetime = lifetime(proto, original, reply, t).as_nanos() as u64;
    now_ns.saturating_sub(last) > lifetime
}

/// The reply half's key of the flow whose original half is (`key`, `value`).
pub fn reply_key_of(key: &FlowKey, value: &FlowValue) -> FlowKey {
    FlowKey::new(
        value.nat_addr,
        key.saddr,
        value.nat_port,
        key.sport,
        key.proto,
        DIR_REPLY,
    )
}

/// The original half's key of the flow whose reply half is (`key`, `value`).
pub fn original_key_of(key: &FlowKey, value: &FlowValue) -> FlowKey {
    FlowKey::new(
        key.daddr,
        value.nat_addr,
        key.dport,
        value.nat_port,
        key.proto,
        DIR_ORIGINAL,
    )
}

/// Whether `reply` is the reply half of the flow whose original half is (`key`, `original`), not
/// another flow's that shares its key (one client port to two VIPs with the same backend).
fn is_partner(key: &FlowKey, original: &FlowValue, reply: &FlowValue) -> bool {
    reply.nat_addr == key.daddr
        && reply.nat_port == key.dport
        && reply.backend_id == original.backend_id
}

/// Entries of one batch, and the cursor of the next (`None`: the walk is complete).
pub type Batch = (Vec<(FlowKey, FlowValue)>, Option<u32>);

/// Conntrack as the GC reads it: batches that survive concurrent deletes, point lookups and
/// deletes.
pub trait FlowTable {
    /// Up to `max` entries from `cursor` (`None`: the start); the cursor of the next batch, or
    /// `None` when the walk is complete.
    fn batch(&mut self, cursor: Option<u32>, max: usize) -> Result<Batch>;
    fn get(&self, key: &FlowKey) -> Option<FlowValue>;
    /// Whether the entry was there.
    fn remove(&mut self, key: &FlowKey) -> bool;
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

    /// Works for at most `budget` (at least one batch); returns the report of a pass it
    /// completed.
    pub fn step(
        &mut self,
        table: &mut dyn FlowTable,
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
            let (batch, next) = table.batch(pass.cursor, BATCH)?;
            for (key, value) in &batch {
                visit(table, &mut pass.report, key, value, now_ns, &timeouts);
            }
            match next {
                Some(cursor) => pass.cursor = Some(cursor),
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
    pub fn run_forget(&mut self, table: &mut dyn FlowTable, now_ns: u64) -> Result<Vec<Forget>> {
        loop {
            if let Some(report) = self.step(table, now_ns, Duration::from_secs(3600))?
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

/// One entry of a pass.
fn visit(
    table: &mut dyn FlowTable,
    report: &mut PassReport,
    key: &FlowKey,
    value: &FlowValue,
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
        let reply_key = reply_key_of(key, value);
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
    let original_key = original_key_of(key, value);
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
pub fn lookup_batch(fd: BorrowedFd<'_>, cursor: Option<u32>, max: usize) -> Result<Batch> {
    let (key_size, value_size) = (size_of::<FlowKey>(), size_of::<FlowValue>());
    let cursor = cursor.map(|c| c.to_ne_bytes().to_vec());
    let (raw, next) = crate::bpf_batch::lookup(fd, key_size, value_size, &cursor, max)?;
    let entries = raw
        .iter()
        .map(|(key, value)| {
            // SAFETY: the kernel wrote whole keys and values of exactly these plain types.
            unsafe {
                (
                    std::ptr::read_unaligned(key.as_ptr().cast::<FlowKey>()),
                    std::ptr::read_unaligned(value.as_ptr().cast::<FlowValue>()),
                )
            }
        })
        .collect();
    let next = next.map(|token| u32::from_ne_bytes([token[0], token[1], token[2], token[3]]));
    Ok((entries, next))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use geosteer_common::{APP_PROTOCOL_OPAQUE, PROTO_UDP, TCP_ESTABLISHED, TCP_MIDSTREAM};

    use super::*;

    const S: u64 = 1_000_000_000;

    type SortKey = (u8, u32, u32, u16, u16, u8);

    /// An in-memory table. A walk reads the keys as they were when it started (the cursor an
    /// index into them), skipping those removed since: like the kernel's bucket cursor, deletes
    /// during a walk neither restart it nor make it skip.
    #[derive(Default)]
    struct Table(BTreeMap<SortKey, (FlowKey, FlowValue)>, Vec<SortKey>);

    fn sort_key(k: &FlowKey) -> (u8, u32, u32, u16, u16, u8) {
        (k.direction, k.saddr, k.daddr, k.sport, k.dport, k.proto)
    }

    impl Table {
        fn insert(&mut self, k: FlowKey, v: FlowValue) {
            self.0.insert(sort_key(&k), (k, v));
        }
        /// A flow client:port → VIP:80 on backend `id` (10.0.0.id:8080), both halves; the reply
        /// half last seen at `reply_seen_s`.
        fn flow(&mut self, port: u16, id: u32, proto: u8, original: FlowValue, reply_seen_s: u64) {
            let key = FlowKey::new(1, 100, port, 80, proto, DIR_ORIGINAL);
            let original = FlowValue {
                backend_id: id,
                nat_addr: 10 + id,
                nat_port: 8080,
                ..original
            };
            let reply = FlowValue {
                nat_addr: 100,
                nat_port: 80,
                last_seen_ns: reply_seen_s * S,
                fin_seen: 0,
                ..original
            };
            self.insert(reply_key_of(&key, &original), reply);
            self.insert(key, original);
        }
        fn ports(&self) -> Vec<u16> {
            self.0
                .values()
                .filter(|(k, _)| k.direction == DIR_ORIGINAL)
                .map(|(k, _)| k.sport)
                .collect()
        }
    }

    impl FlowTable for Table {
        fn batch(&mut self, cursor: Option<u32>, max: usize) -> Result<Batch> {
            if cursor.is_none() {
                self.1 = self.0.keys().copied().collect();
            }
            let start = cursor.unwrap_or(0) as usize;
            let end = (start + max).min(self.1.len());
            let next = (end < self.1.len()).then_some(end as u32);
            let batch = self.1[start.min(end)..end]
                .iter()
                .filter_map(|k| self.0.get(k).copied())
                .collect();
            Ok((batch, next))
        }
        fn get(&self, key: &FlowKey) -> Option<FlowValue> {
            self.0.get(&sort_key(key)).map(|(_, v)| *v)
        }
        fn remove(&mut self, key: &FlowKey) -> bool {
            self.0.remove(&sort_key(key)).is_some()
        }
    }

    fn value(state: u8, last_seen_s: u64) -> FlowValue {
        FlowValue {
            tcp_state: state,
            last_seen_ns: last_seen_s * S,
            ..FlowValue::default()
        }
    }

    #[test]
    fn lifetimes_follow_the_tcp_state_and_both_directions() {
        let t = Timeouts::default();
        // (case, proto, original, reply fin, expected)
        let fin = |v: FlowValue| FlowValue { fin_seen: 1, ..v };
        let cases = [
            (
                "SYN sent",
                PROTO_TCP,
                value(TCP_SYN_SENT, 0),
                false,
                t.tcp_syn,
            ),
            (
                "established",
                PROTO_TCP,
                value(TCP_ESTABLISHED, 0),
                false,
                t.tcp_established,
            ),
            (
                "mid-stream",
                PROTO_TCP,
                value(TCP_MIDSTREAM, 0),
                false,
                t.tcp_established,
            ),
            (
                "half-closed",
                PROTO_TCP,
                fin(value(TCP_ESTABLISHED, 0)),
                false,
                t.tcp_established,
            ),
            (
                "FIN both ways",
                PROTO_TCP,
                fin(value(TCP_ESTABLISHED, 0)),
                true,
                t.tcp_closing,
            ),
            (
                "reset",
                PROTO_TCP,
                value(TCP_CLOSED, 0),
                false,
                t.tcp_closing,
            ),
            ("udp", PROTO_UDP, value(0, 0), false, t.udp),
        ];
        for (case, proto, original, reply_fin, expected) in cases {
            let reply = FlowValue {
                fin_seen: reply_fin as u8,
                ..FlowValue::default()
            };
            assert_eq!(
                lifetime(proto, &original, Some(&reply), &t),
                expected,
                "{case}"
            );
        }
        assert_eq!(
            (t.tcp_syn, t.tcp_established, t.tcp_closing, t.udp),
            (
                Duration::from_secs(60),
                Duration::from_secs(6 * 3600),
                Duration::from_secs(10),
                Duration::from_secs(60)
            ),
            "Cilium's defaults (UDP: Envoy udp_proxy's idle timeout)"
        );
        // The later of the two halves' packets counts: a server streaming to a silent client.
        let original = value(TCP_ESTABLISHED, 0);
        let reply = value(TCP_ESTABLISHED, 21_000);
        assert!(!is_expired(
            22_000 * S,
            PROTO_TCP,
            &original,
            Some(&reply),
            &t
        ));
        assert!(is_expired(22_000 * S, PROTO_TCP, &original, None, &t));
    }

    #[test]
    fn a_pass_removes_expired_flows_with_both_halves_and_keeps_the_rest() {
        let mut table = Table::default();
        let now = 100_000 * S;
        table.flow(1, 1, PROTO_TCP, value(TCP_SYN_SENT, 100_000 - 61), 0); // SYN, expired
        table.flow(2, 1, PROTO_TCP, value(TCP_SYN_SENT, 100_000 - 30), 0); // SYN, alive
        table.flow(3, 1, PROTO_TCP, value(TCP_CLOSED, 100_000 - 11), 0); // closed, expired
        table.flow(4, 2, PROTO_TCP, value(TCP_ESTABLISHED, 1), 100_000 - 5); // reply alive
        table.flow(5, 2, PROTO_UDP, value(0, 100_000 - 61), 0); // udp, expired
        let mut sweeper = Sweeper::default();
        let report = sweeper
            .step(&mut table, now, Duration::from_secs(1))
            .unwrap()
            .expect("a small table is one step");
        assert_eq!(table.ports(), [2, 4]);
        assert_eq!(table.0.len(), 4, "no half left behind");
        assert_eq!((report.entries, report.flows, report.expired), (10, 5, 3));
        // The next pass waits for the interval.
        assert_eq!(
            sweeper
                .step(&mut table, now + S, Duration::from_secs(1))
                .unwrap(),
            None
        );
        assert!(
            sweeper
                .step(&mut table, now + 31 * S, Duration::from_secs(1))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn orphans_wait_for_their_partner_then_go() {
        let mut table = Table::default();
        table.flow(1, 1, PROTO_TCP, value(TCP_ESTABLISHED, 1000), 1000);
        table.flow(2, 1, PROTO_TCP, value(TCP_ESTABLISHED, 1000), 1000);
        // Flow 1 lost its original half, flow 2 its reply half.
        table.remove(&FlowKey::new(1, 100, 1, 80, PROTO_TCP, DIR_ORIGINAL));
        let original_2 = FlowKey::new(1, 100, 2, 80, PROTO_TCP, DIR_ORIGINAL);
        let value_2 = table.get(&original_2).unwrap();
        table.remove(&reply_key_of(&original_2, &value_2));
        let mut sweeper = Sweeper::default();
        let report = sweeper
            .step(&mut table, 1030 * S, Duration::from_secs(1))
            .unwrap()
            .unwrap();
        assert_eq!((report.orphans, table.0.len()), (0, 2), "idle 30 s: kept");
        sweeper.next_gc_ns = 0;
        let report = sweeper
            .step(&mut table, 1061 * S, Duration::from_secs(1))
            .unwrap()
            .unwrap();
        // The lone reply half goes after the orphan timeout; the lone original half is a flow
        // with its own (established) timeout.
        assert_eq!((report.orphans, table.ports()), (1, vec![2]));
    }

    #[test]
    fn forgetting_ends_a_backends_flows_in_bounded_steps_and_spares_http_when_asked() {
        let mut table = Table::default();
        let http = FlowValue {
            app_protocol: APP_PROTOCOL_HTTP1,
            ..value(TCP_ESTABLISHED, 1000)
        };
        let opaque = FlowValue {
            app_protocol: APP_PROTOCOL_OPAQUE,
            ..value(TCP_ESTABLISHED, 1000)
        };
        for port in 0..3000u16 {
            let id = 1 + u32::from(port % 2);
            table.flow(
                port,
                id,
                PROTO_TCP,
                if port % 4 == 0 { http } else { opaque },
                1000,
            );
        }
        let mut sweeper = Sweeper {
            next_gc_ns: u64::MAX, // no garbage collection due
            ..Sweeper::default()
        };
        assert_eq!(
            sweeper.step(&mut table, 1001 * S, Duration::ZERO).unwrap(),
            None
        );
        sweeper.forget(1, true);
        assert!(sweeper.busy());
        // A zero budget still moves one batch per step: 6000 entries take 6 steps.
        let mut steps = 0;
        let report = loop {
            steps += 1;
            if let Some(report) = sweeper.step(&mut table, 1001 * S, Duration::ZERO).unwrap() {
                break report;
            }
        };
        assert_eq!(steps, 6);
        assert!(!sweeper.busy());
        // Backend 1 has the even ports; a quarter of all ports (multiples of 4) are HTTP.
        assert_eq!(
            report.forgotten,
            [Forget {
                backend_id: 1,
                keep_http: true,
                flows: 750
            }]
        );
        assert_eq!(table.ports().len(), 2250);
        assert!(table.ports().iter().all(|p| p % 2 == 1 || p % 4 == 0));
        // Without keep_http, the rest of backend 1 goes too.
        sweeper.forget(1, false);
        assert_eq!(
            sweeper.run_forget(&mut table, 1001 * S).unwrap()[0].flows,
            750
        );
        assert!(table.ports().iter().all(|p| p % 2 == 1));
        assert_eq!(
            table.0.len(),
            3000,
            "both halves of each forgotten flow went"
        );
    }

    #[test]
    fn a_forget_request_restarts_a_garbage_pass_but_waits_for_another_forget() {
        let mut table = Table::default();
        for port in 0..3000u16 {
            table.flow(
                port,
                1 + u32::from(port % 3),
                PROTO_TCP,
                value(TCP_ESTABLISHED, 1000),
                1000,
            );
        }
        let mut sweeper = Sweeper::default();
        assert_eq!(
            sweeper.step(&mut table, 1001 * S, Duration::ZERO).unwrap(),
            None
        );
        sweeper.forget(1, false);
        // The garbage pass gives way: the forget pass covers the whole table.
        let report = loop {
            if let Some(r) = sweeper.step(&mut table, 1001 * S, Duration::ZERO).unwrap() {
                break r;
            }
        };
        assert_eq!(report.forgotten[0].flows, 1000);
        assert_eq!(report.flows, 3000);
        // A request during a forget pass waits for the next one.
        sweeper.forget(2, false);
        assert_eq!(
            sweeper.step(&mut table, 1001 * S, Duration::ZERO).unwrap(),
            None
        );
        sweeper.forget(3, false);
        let mut served = Vec::new();
        while served.len() < 2 {
            if let Some(r) = sweeper.step(&mut table, 1001 * S, Duration::ZERO).unwrap() {
                served.push(
                    r.forgotten
                        .iter()
                        .map(|f| (f.backend_id, f.flows))
                        .collect::<Vec<_>>(),
                );
            }
        }
        assert_eq!(served, [vec![(2, 1000)], vec![(3, 1000)]]);
        assert_eq!(sweeper.totals.forgotten, 3000);
        assert!(table.0.is_empty());
    }
}
