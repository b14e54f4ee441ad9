use std::collections::BTreeMap;

use geosteer_common::{
    APP_PROTOCOL_OPAQUE, FlowKey, FlowKey6, FlowValue, FlowValue6, PROTO_UDP, TCP_ESTABLISHED,
    TCP_MIDSTREAM,
};

use super::*;

const S: u64 = 1_000_000_000;

type SortKey<A> = (u8, A, A, u16, u16, u8);

/// An in-memory table of one family. A walk reads the keys as they were when it started (the
/// cursor an index into them), skipping those removed since: like the kernel's bucket cursor,
/// deletes during a walk neither restart it nor make it skip.
struct Table<A: Addr = u32>(Entries<A>, Vec<SortKey<A>>);

type Entries<A> = BTreeMap<SortKey<A>, (FlowKeyOf<A>, FlowValueOf<A>)>;

impl<A: Addr> Default for Table<A> {
    fn default() -> Self {
        Table(BTreeMap::new(), Vec::new())
    }
}

fn sort_key<A: Addr>(k: &FlowKeyOf<A>) -> SortKey<A> {
    (k.direction, k.saddr, k.daddr, k.sport, k.dport, k.proto)
}

/// Both families' tables for one step.
fn tables<'a>(v4: &'a mut Table, v6: &'a mut Table<Addr6>) -> FlowTables<'a> {
    FlowTables { v4, v6 }
}

impl<A: Addr> Table<A> {
    fn insert(&mut self, k: FlowKeyOf<A>, v: FlowValueOf<A>) {
        self.0.insert(sort_key(&k), (k, v));
    }
}

impl Table {
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
        self.insert(key.reply_half(&original), reply);
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

impl<A: Addr> FlowTable<A> for Table<A> {
    fn batch(&mut self, cursor: Option<u32>, max: usize) -> Result<Batch<A>> {
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
    fn get(&self, key: &FlowKeyOf<A>) -> Option<FlowValueOf<A>> {
        self.0.get(&sort_key(key)).map(|(_, v)| *v)
    }
    fn remove(&mut self, key: &FlowKeyOf<A>) -> bool {
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
        .step(
            tables(&mut table, &mut Table::default()),
            now,
            Duration::from_secs(1),
        )
        .unwrap()
        .expect("a small table is one step");
    assert_eq!(table.ports(), [2, 4]);
    assert_eq!(table.0.len(), 4, "no half left behind");
    assert_eq!((report.entries, report.flows, report.expired), (10, 5, 3));
    // The next pass waits for the interval.
    assert_eq!(
        sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                now + S,
                Duration::from_secs(1)
            )
            .unwrap(),
        None
    );
    assert!(
        sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                now + 31 * S,
                Duration::from_secs(1)
            )
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
    table.remove(&original_2.reply_half(&value_2));
    let mut sweeper = Sweeper::default();
    let report = sweeper
        .step(
            tables(&mut table, &mut Table::default()),
            1030 * S,
            Duration::from_secs(1),
        )
        .unwrap()
        .unwrap();
    assert_eq!((report.orphans, table.0.len()), (0, 2), "idle 30 s: kept");
    sweeper.next_gc_ns = 0;
    let report = sweeper
        .step(
            tables(&mut table, &mut Table::default()),
            1061 * S,
            Duration::from_secs(1),
        )
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
        sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                1001 * S,
                Duration::ZERO
            )
            .unwrap(),
        None
    );
    sweeper.forget(1, true);
    assert!(sweeper.busy());
    // A zero budget still moves one batch per step: 6000 entries take 6 steps.
    let mut steps = 0;
    let report = loop {
        steps += 1;
        if let Some(report) = sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                1001 * S,
                Duration::ZERO,
            )
            .unwrap()
        {
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
        sweeper
            .run_forget(tables(&mut table, &mut Table::default()), 1001 * S)
            .unwrap()[0]
            .flows,
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
        sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                1001 * S,
                Duration::ZERO
            )
            .unwrap(),
        None
    );
    sweeper.forget(1, false);
    // The garbage pass gives way: the forget pass covers the whole table.
    let report = loop {
        if let Some(r) = sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                1001 * S,
                Duration::ZERO,
            )
            .unwrap()
        {
            break r;
        }
    };
    assert_eq!(report.forgotten[0].flows, 1000);
    assert_eq!(report.flows, 3000);
    // A request during a forget pass waits for the next one.
    sweeper.forget(2, false);
    assert_eq!(
        sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                1001 * S,
                Duration::ZERO
            )
            .unwrap(),
        None
    );
    sweeper.forget(3, false);
    let mut served = Vec::new();
    while served.len() < 2 {
        if let Some(r) = sweeper
            .step(
                tables(&mut table, &mut Table::default()),
                1001 * S,
                Duration::ZERO,
            )
            .unwrap()
        {
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

/// A flow [2001:db8::1]:port → [2001:db8::100]:80 on backend `id` ([2001:db8::10:id]:8080),
/// both halves, last seen at `seen_s`.
fn flow6(table: &mut Table<Addr6>, port: u16, id: u32, seen_s: u64) -> FlowKey6 {
    let ip = |text: &str| Addr6::from_ip(text.parse().unwrap());
    let key = FlowKey6::new(
        ip("2001:db8::1"),
        ip("2001:db8::100"),
        port,
        80,
        PROTO_TCP,
        DIR_ORIGINAL,
    );
    let original = FlowValue6 {
        backend_id: id,
        nat_addr: ip(&format!("2001:db8::10:{id}")),
        nat_port: 8080,
        tcp_state: TCP_ESTABLISHED,
        last_seen_ns: seen_s * S,
        ..FlowValue6::default()
    };
    let reply = FlowValue6 {
        nat_addr: ip("2001:db8::100"),
        nat_port: 80,
        ..original
    };
    table.insert(key.reply_half(&original), reply);
    table.insert(key, original);
    key
}

fn original_ports(table: &Table<Addr6>) -> Vec<u16> {
    table
        .0
        .values()
        .filter(|(k, _)| k.direction == DIR_ORIGINAL)
        .map(|(k, _)| k.sport)
        .collect()
}

#[test]
fn a_pass_walks_the_ipv6_table_after_the_ipv4_one() {
    let mut v4 = Table::default();
    let mut v6: Table<Addr6> = Table::default();
    let t = Timeouts::default();
    let idle = t.tcp_established.as_secs();
    v4.flow(1, 1, PROTO_TCP, value(TCP_ESTABLISHED, 1000), 1000);
    flow6(&mut v6, 1, 1, 1000);
    flow6(&mut v6, 2, 1, 1000 + idle);
    let mut sweeper = Sweeper::default();
    let report = sweeper
        .step(
            tables(&mut v4, &mut v6),
            1001 * S + idle * S,
            Duration::from_secs(1),
        )
        .unwrap()
        .expect("one step completes both small tables");
    // The IPv4 flow and the first IPv6 flow were idle past the established timeout.
    assert_eq!((report.entries, report.flows, report.expired), (6, 3, 2));
    assert_eq!(v4.0.len(), 0);
    assert_eq!(
        (v6.0.len(), original_ports(&v6)),
        (2, vec![2]),
        "the live IPv6 flow keeps both halves"
    );

    // Forgetting a backend ends its flows in both tables, in one pass (later, and all of them
    // fresh: none expires meanwhile).
    let later = 1001 + idle + 10;
    v4.flow(3, 1, PROTO_TCP, value(TCP_ESTABLISHED, later), later);
    flow6(&mut v6, 4, 2, later);
    sweeper.forget(1, false);
    let served = sweeper
        .run_forget(tables(&mut v4, &mut v6), (later + 1) * S)
        .unwrap();
    assert_eq!(
        served[0].flows, 2,
        "one IPv4 and one IPv6 flow of backend 1"
    );
    assert_eq!(v4.0.len(), 0);
    assert_eq!(
        (v6.0.len(), original_ports(&v6)),
        (2, vec![4]),
        "backend 2's flow stays, both halves"
    );
}

/// A walk of the IPv6 table starts at its own beginning, whatever cursor the IPv4 walk ended
/// with: with more IPv4 entries than one batch, in zero-budget steps, every IPv6 flow is still
/// visited.
#[test]
fn the_ipv6_walk_starts_from_its_own_beginning() {
    let mut v4 = Table::default();
    let mut v6: Table<Addr6> = Table::default();
    // 1,500 flows: 3,000 entries, three batches.
    for port in 0..1500u16 {
        v4.flow(port, 1, PROTO_TCP, value(TCP_ESTABLISHED, 1000), 1000);
    }
    for port in 0..700u16 {
        flow6(&mut v6, port, 2, 1000);
    }
    let mut sweeper = Sweeper::default();
    sweeper.forget(2, false);
    let mut steps = 0;
    let report = loop {
        steps += 1;
        if let Some(report) = sweeper
            .step(tables(&mut v4, &mut v6), 1001 * S, Duration::ZERO)
            .unwrap()
        {
            break report;
        }
    };
    // Three IPv4 batches, the last with the first IPv6 batch (1,024 of its 1,400 entries: the
    // 700 original halves first, whose ends take their reply halves with them), then the rest
    // (gone by then).
    assert_eq!(steps, 4);
    assert_eq!((report.entries, report.flows), (3000 + 1024, 1500 + 700));
    assert_eq!(
        report.forgotten[0].flows, 700,
        "every IPv6 flow of backend 2"
    );
    assert_eq!(v6.0.len(), 0);
    assert_eq!(v4.0.len(), 3000);
}
