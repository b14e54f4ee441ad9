//! The programmer's write order against the in-memory data path: a table is complete before
//! the entry that makes it live, a retired table's words are reused only after a grace period,
//! and so are the ids of removed services and backends.

use std::net::Ipv4Addr;

use geosteer_common::PROTO_TCP;

use super::*;
use crate::dataplane::memory::{MemoryDataplane, Write};

fn key(port: u16) -> Frontend {
    Frontend::new(Ipv4Addr::new(198, 19, 0, 10), port, PROTO_TCP)
}

/// A service on `port` with one backend per weight, at 198.18.0.<i + 1>:8080.
fn service(port: u16, weights: &[u32]) -> DesiredService {
    DesiredService {
        name: format!("svc:{port}"),
        key: key(port),
        key6: None,
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| DesiredBackend {
                addr: Ipv4Addr::new(198, 18, 0, i as u8 + 1).into(),
                port: 8080u16.to_be(),
                weight,
                ..Default::default()
            })
            .collect(),
        settings: ServiceSettings::default(),
    }
}

fn position(log: &[Write], write: &Write) -> usize {
    log.iter()
        .position(|w| w == write)
        .unwrap_or_else(|| panic!("{write:?} not in {log:?}"))
}

#[test]
fn a_swap_writes_a_new_table_then_points_the_service_at_it() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let first = dp.services[&key(80)];
    dp.take_log();
    programmer.apply(&mut dp, &[service(80, &[1, 3])]).unwrap();
    let second = dp.services[&key(80)];
    assert_eq!(second.id, first.id);
    let (old, new) = (
        first.table_start..first.table_start + first.table_chunks(),
        second.table_start..second.table_start + second.table_chunks(),
    );
    assert!(
        old.end <= new.start || new.end <= old.start,
        "{old:?} and {new:?} overlap"
    );
    let log = dp.take_log();
    assert!(
        position(&log, &Write::Table(second.table_start))
            < position(&log, &Write::Service(key(80)))
    );
    assert!(
        !log.contains(&Write::Table(first.table_start)),
        "the live table was rewritten: {log:?}"
    );
    // Unchanged: nothing written.
    programmer.apply(&mut dp, &[service(80, &[1, 3])]).unwrap();
    assert_eq!(dp.take_log(), []);
}

#[test]
fn tables_are_sized_to_the_service() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 64, 1 << 16);
    let services = [
        service(80, &[1, 1]),
        service(81, &[1; 10]),
        service(82, &[1; 11]),
        service(83, &[0, 0]),
    ];
    programmer.apply(&mut dp, &services).unwrap();
    let sizes: Vec<(u32, u32)> = (80..84)
        .map(|port| {
            let entry = dp.services[&key(port)];
            (entry.table_size, entry.backend_count)
        })
        .collect();
    // No backend takes new flows: no slots, the list kept (for the CLI and a restart).
    assert_eq!(sizes, [(1_021, 2), (1_021, 10), (2_039, 11), (0, 2)]);
    for port in 80..84 {
        let entry = dp.services[&key(port)];
        let table = crate::dataplane::KernelTable::read(&dp, &entry).unwrap();
        let ids: BTreeMap<u32, usize> = table.backends.iter().map(|&id| (id, 0)).collect();
        assert_eq!(
            ids.len(),
            entry.backend_count as usize,
            "{port}: distinct ids"
        );
        assert_eq!(table.slots.len(), entry.table_size as usize);
        // Every slot names one of the service's own backends, each about equally often.
        let mut counts = ids;
        for id in &table.slots {
            let id = id.expect("a slot names a backend of the list");
            *counts.get_mut(&id).expect("a backend of the service") += 1;
        }
        if entry.table_size > 0 {
            let fair = entry.table_size as usize / counts.len();
            assert!(
                counts.values().all(|&c| c.abs_diff(fair) <= 1),
                "{port}: {counts:?}"
            );
        }
    }
    // Ids 16 to a chunk, slots 32 to a chunk: 1 + 32, 1 + 32, 1 + 64, and 1.
    let (used, capacity) = programmer.table_chunks_used();
    assert_eq!((used, capacity), (33 + 33 + 65 + 1, 1 << 16));
}

#[test]
fn a_retired_tables_words_are_reused_only_after_a_grace_period() {
    let mut dp = MemoryDataplane::new();
    dp.background_grace = false;
    // Room for two tables of two backends (2 ids and 1,021 slots: 33 chunks each).
    let mut programmer = Programmer::new(4, 16, 2 * 33);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let first = dp.services[&key(80)];
    programmer.apply(&mut dp, &[service(80, &[1, 2])]).unwrap();
    dp.take_log();
    // The third version fits only in the first one's chunks, which packets may still read
    // until a grace period has passed since the flip that retired them.
    programmer.apply(&mut dp, &[service(80, &[1, 3])]).unwrap();
    let log = dp.take_log();
    assert_eq!(dp.services[&key(80)].table_start, first.table_start);
    assert!(
        position(&log, &Write::GracePeriod) < position(&log, &Write::Table(first.table_start)),
        "{log:?}"
    );
    // With background grace periods done, no synchronous wait.
    dp.background_grace = true;
    programmer.apply(&mut dp, &[service(80, &[1, 4])]).unwrap();
    programmer.apply(&mut dp, &[service(80, &[1, 5])]).unwrap();
    assert!(!dp.take_log().contains(&Write::GracePeriod));
}

#[test]
fn a_table_that_does_not_fit_leaves_the_service_as_it_was() {
    let mut dp = MemoryDataplane::new();
    // Room to swap a 33-chunk table, not to swap in one of 65.
    let mut programmer = Programmer::new(4, 64, 70);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let before = dp.services[&key(80)];
    dp.take_log();
    // 11 backends need 1 + 64 chunks (2,039 slots).
    let error = programmer
        .apply(&mut dp, &[service(80, &[1; 11])])
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("svc:80"), "{message}");
    assert!(message.contains("dataplane.tableChunks"), "{message}");
    assert!(message.contains("65 chunks"), "{message}");
    assert_eq!(dp.services[&key(80)], before);
    assert!(
        dp.take_log()
            .iter()
            .all(|w| matches!(w, Write::GracePeriod)),
        "nothing written"
    );
    // The programmer still knows the live service: a change that fits goes through.
    assert_eq!(programmer.service(&key(80)).map(|s| s.entry), Some(before));
    programmer
        .apply(&mut dp, &[service(80, &[1, 2, 3])])
        .unwrap();
    assert_eq!(dp.services[&key(80)].backend_count, 3);
}

#[test]
fn a_restarted_programmer_adopts_live_tables_and_waits_before_reusing_other_chunks() {
    let mut dp = MemoryDataplane::new();
    dp.background_grace = false;
    let mut programmer = Programmer::new(4, 16, 4 * 33);
    programmer
        .apply(&mut dp, &[service(80, &[1, 1]), service(81, &[1, 1])])
        .unwrap();
    // A swap just before the agent died: its old table's chunks are retired, not yet free.
    let state = [service(80, &[1, 2]), service(81, &[1, 1])];
    programmer.apply(&mut dp, &state).unwrap();
    let live: Vec<ServiceValue> = [80, 81].map(|p| dp.services[&key(p)]).into();
    let mut recovered = Programmer::recover(&dp, 4, 16, 4 * 33).unwrap();
    assert_eq!(
        recovered.table_chunks_used(),
        (4 * 33, 4 * 33),
        "all taken until a grace"
    );
    // The same desired state: the live tables are what it builds, so they stay (no swap, no
    // table written, nothing waited for).
    dp.take_log();
    recovered.apply(&mut dp, &state).unwrap();
    let log = dp.take_log();
    assert!(
        !log.iter()
            .any(|w| matches!(w, Write::Table(_) | Write::Service(_) | Write::GracePeriod)),
        "{log:?}"
    );
    assert_eq!([80, 81].map(|p| dp.services[&key(p)]).to_vec(), live);
    // A change: its table goes into chunks freed by a grace period, never over a live one.
    recovered
        .apply(&mut dp, &[service(80, &[1, 3]), service(81, &[1, 1])])
        .unwrap();
    let log = dp.take_log();
    let table = log
        .iter()
        .position(|w| matches!(w, Write::Table(_)))
        .expect("the changed table written");
    assert!(position(&log, &Write::GracePeriod) < table, "{log:?}");
    for old in &live {
        assert!(
            !log.contains(&Write::Table(old.table_start)),
            "a live table was overwritten: {log:?}"
        );
    }
    // The backends kept their ids.
    for port in [80, 81] {
        let table = crate::dataplane::KernelTable::read(&dp, &dp.services[&key(port)]).unwrap();
        assert_eq!(table.backends.len(), 2);
    }
}

/// Everything a change needs is taken before anything is written: when backend ids run out,
/// the service keeps its table and books, and nothing leaks (the same change fits later).
#[test]
fn a_change_refused_for_want_of_ids_leaks_nothing() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 2, 4 * 33);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let before = dp.services[&key(80)];
    let used = programmer.table_chunks_used();
    dp.take_log();
    // A third endpoint needs a third backend id: there are two.
    let error = programmer
        .apply(&mut dp, &[service(80, &[1, 1, 1])])
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("dataplane.maxBackends"),
        "{error:#}"
    );
    assert!(dp.take_log().is_empty(), "nothing written");
    assert_eq!(dp.services[&key(80)], before);
    assert_eq!(programmer.table_chunks_used(), used, "no chunk leaked");
    assert_eq!(programmer.service(&key(80)).map(|s| s.entry), Some(before));
    // Repeatedly: still nothing leaks, and a change that fits goes through.
    for _ in 0..3 {
        assert!(
            programmer
                .apply(&mut dp, &[service(80, &[1, 1, 1])])
                .is_err()
        );
    }
    programmer.apply(&mut dp, &[service(80, &[1, 2])]).unwrap();
    assert_eq!(dp.services[&key(80)].backend_count, 2);
}

#[test]
fn ids_of_a_removed_service_are_reused_only_after_a_grace_period() {
    let mut dp = MemoryDataplane::new();
    dp.background_grace = false;
    let mut programmer = Programmer::new(1, 2, 4096);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let old = dp.services[&key(80)];
    let old_backends: Vec<u32> = dp.backends.keys().copied().collect();
    dp.take_log();
    // Replaced by another service: with one service slot and two backend slots, its ids are
    // the removed one's, which in-flight packets may still hold.
    programmer.apply(&mut dp, &[service(81, &[1, 1])]).unwrap();
    let log = dp.take_log();
    let new = dp.services[&key(81)];
    assert_eq!(new.id, old.id, "the only service id");
    let removed = position(&log, &Write::RemoveService(key(80)));
    let waited = position(&log, &Write::GracePeriod);
    assert!(removed < waited, "{log:?}");
    for id in old_backends {
        // The reused backend id gets fresh health state after the wait, before its entry.
        let reset = log
            .iter()
            .rposition(|w| *w == Write::BackendState(id))
            .expect("backend state reset");
        assert!(waited < reset, "{log:?}");
    }
    assert!(
        waited < position(&log, &Write::ServiceState(new.id)),
        "{log:?}"
    );
}

#[test]
fn a_backend_id_names_its_service_and_endpoint_while_it_is_live() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    programmer
        .apply(&mut dp, &[service(80, &[1, 1]), service(81, &[1])])
        .unwrap();
    let endpoint = |i: u8| IpAddr::from(Ipv4Addr::new(198, 18, 0, i));
    let second = programmer
        .backend_id(&key(80), endpoint(2), 8080u16.to_be())
        .unwrap();
    assert_eq!(
        programmer.backend_by_id(second),
        Some((key(80), endpoint(2), 8080u16.to_be()))
    );
    // The endpoint leaves its service, then the other service goes: their ids name nothing.
    let other = programmer
        .backend_id(&key(81), endpoint(1), 8080u16.to_be())
        .unwrap();
    programmer.apply(&mut dp, &[service(80, &[1])]).unwrap();
    assert_eq!(programmer.backend_by_id(second), None);
    assert_eq!(programmer.backend_by_id(other), None);
    let first = programmer
        .backend_id(&key(80), endpoint(1), 8080u16.to_be())
        .unwrap();
    assert_eq!(programmer.backend_by_id(first).map(|o| o.0), Some(key(80)));
}

/// A map write that fails before the flip leaves the service as it was: live in the kernel,
/// on the books, its chunks and ids accounted for; the same change goes through later.
#[test]
fn a_write_that_fails_before_the_flip_loses_nothing() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4 * 33);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let before = dp.services[&key(80)];
    let used = programmer.table_chunks_used();
    dp.fail_table_writes = true;
    let error = programmer
        .apply(&mut dp, &[service(80, &[1, 1, 1])])
        .unwrap_err();
    assert!(format!("{error:#}").contains("refused"), "{error:#}");
    assert_eq!(dp.services[&key(80)], before);
    assert_eq!(programmer.service(&key(80)).map(|s| s.entry), Some(before));
    assert_eq!(
        programmer.table_chunks_used(),
        used,
        "the new chunks are free again"
    );
    // The third endpoint's id may have been written: it is out of use, not live.
    let third = IpAddr::from(Ipv4Addr::new(198, 18, 0, 3));
    assert_eq!(
        programmer.backend_id(&key(80), third, 8080u16.to_be()),
        None
    );
    dp.fail_table_writes = false;
    programmer
        .apply(&mut dp, &[service(80, &[1, 1, 1])])
        .unwrap();
    assert_eq!(dp.services[&key(80)].backend_count, 3);
    let table = crate::dataplane::KernelTable::read(&dp, &dp.services[&key(80)]).unwrap();
    for id in &table.backends {
        assert_ne!(dp.backends[id], Backend::default(), "backend {id} is live");
    }
}

/// An apply in which some tables shrink and others grow fits whenever the end state fits with
/// room to swap the largest table: the shrinking ones go first and give their chunks back.
#[test]
fn shrinking_tables_make_room_for_growing_ones_in_one_apply() {
    let mut dp = MemoryDataplane::new();
    dp.background_grace = false;
    // Large: 30 backends (2 + 128 chunks); small: 2 backends (1 + 32 chunks).
    let (large, small) = (vec![1; 30], vec![1, 1]);
    let mut programmer = Programmer::new(8, 256, 3 * 130 + 2 * 33);
    let before = [
        service(80, &large),
        service(81, &large),
        service(82, &small),
        service(83, &small),
    ];
    programmer.apply(&mut dp, &before).unwrap();
    // Listed growing ones first, as a config may list them.
    let after = [
        service(82, &large),
        service(83, &large),
        service(80, &small),
        service(81, &small),
    ];
    let report = programmer.apply(&mut dp, &after).unwrap();
    assert_eq!(report.updated, 4);
    for (port, count) in [(80, 2), (81, 2), (82, 30), (83, 30)] {
        assert_eq!(dp.services[&key(port)].backend_count, count, "{port}");
    }
}

/// A full apply writes its new services together (a batch per map) and leaves the kernel
/// exactly as adding them one at a time does, each table before the entry that points at it.
#[test]
fn new_services_are_written_together_with_each_table_before_its_entry() {
    let services = [
        service(80, &[1, 1]),
        service(81, &[1, 0, 3]),
        service(82, &[]),
        service(83, &[0, 0]),
    ];
    let mut batched = MemoryDataplane::new();
    let mut programmer = Programmer::new(8, 32, 1024);
    let report = programmer.apply(&mut batched, &services).unwrap();
    assert_eq!(report.added, 4);
    let log = batched.take_log();
    let last_table = log
        .iter()
        .rposition(|w| matches!(w, Write::Table(_)))
        .unwrap();
    let first_entry = log
        .iter()
        .position(|w| matches!(w, Write::Service(_)))
        .unwrap();
    assert!(last_table < first_entry, "{log:?}");

    let mut one_by_one = MemoryDataplane::new();
    let mut alone = Programmer::new(8, 32, 1024);
    let mut order: Vec<&DesiredService> = services.iter().collect();
    order.sort_by_key(|s| alone.table_growth(s));
    for s in order {
        assert!(alone.apply_one(&mut one_by_one, s).unwrap());
    }
    assert_eq!(batched.services, one_by_one.services);
    assert_eq!(batched.backends, one_by_one.backends);
    assert_eq!(batched.backend_state, one_by_one.backend_state);
    assert_eq!(batched.table_chunks, one_by_one.table_chunks);
    assert_eq!(batched.service_state, one_by_one.service_state);
    assert_eq!(batched.service_config, one_by_one.service_config);
    assert_eq!(batched.vips, one_by_one.vips);
    for s in &services {
        let live = programmer.service(&s.key).unwrap();
        assert_eq!(live.entry, batched.services[&s.key], "{}", s.name);
        for b in &s.backends {
            let id = programmer.backend_id(&s.key, b.addr, b.port).unwrap();
            assert_eq!(programmer.backend_by_id(id), Some((s.key, b.addr, b.port)));
        }
    }
}

/// Asserts 80 and 82 are live and 81 is not; returns the chunks their tables take.
fn only_80_and_82_live(programmer: &Programmer, dp: &MemoryDataplane) -> u32 {
    assert!(dp.services.contains_key(&key(80)));
    assert!(!dp.services.contains_key(&key(81)));
    assert!(dp.services.contains_key(&key(82)));
    assert_eq!(programmer.live_keys(), vec![key(80), key(82)]);
    [80, 82]
        .iter()
        .map(|&p| dp.services[&key(p)].table_chunks())
        .sum()
}

/// One new service that cannot have what it needs is refused alone: the others of the batch go
/// live, and it takes nothing.
#[test]
fn a_new_service_refused_in_a_batch_does_not_hold_back_the_others() {
    let mut dp = MemoryDataplane::new();
    // Room for three backends: 80 takes two, 81 finds one, 82 takes the last.
    let mut programmer = Programmer::new(8, 3, 1024);
    let error = programmer
        .apply(
            &mut dp,
            &[
                service(80, &[1, 1]),
                service(81, &[1, 1]),
                service(82, &[1]),
            ],
        )
        .unwrap_err();
    assert!(format!("{error:#}").contains("svc:81"), "{error:#}");
    let in_use = only_80_and_82_live(&programmer, &dp);
    assert_eq!(programmer.table_chunks_used().0, in_use);
}

/// A batch write that fails leaves no new service behind: nothing points at what was written,
/// the chunks are free at once, and the same apply succeeds once the map takes writes again.
#[test]
fn a_failed_batch_of_new_services_leaves_nothing_behind() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(8, 32, 1024);
    dp.fail_table_writes = true;
    let services = [service(80, &[1, 1]), service(81, &[1, 1, 1])];
    let error = programmer.apply(&mut dp, &services).unwrap_err();
    assert!(format!("{error:#}").contains("refused"), "{error:#}");
    assert!(dp.services.is_empty());
    assert!(programmer.live_keys().is_empty());
    assert_eq!(programmer.table_chunks_used().0, 0);
    assert!(dp.vips.is_empty());
    dp.fail_table_writes = false;
    let report = programmer.apply(&mut dp, &services).unwrap();
    assert_eq!(report.added, 2);
    for s in &services {
        let table = crate::dataplane::KernelTable::read(&dp, &dp.services[&s.key]).unwrap();
        for id in &table.backends {
            assert_ne!(dp.backends[id], Backend::default(), "backend {id} is live");
            assert_eq!(programmer.backend_by_id(*id).map(|(k, ..)| k), Some(s.key));
        }
    }
}

/// New services' entries go in one batch; one the map refuses stops it there. Those before it
/// are live, it alone is refused (nothing points at its freed table), and those after it are
/// written one at a time — each entry after its own table, as ever.
#[test]
fn a_service_entry_refused_in_the_batch_costs_only_that_service() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(8, 32, 1024);
    let services = [
        service(80, &[1, 1]),
        service(81, &[1, 1]),
        service(82, &[1]),
    ];
    dp.fail_service_writes.insert(key(81));
    let desired: Vec<&DesiredService> = services.iter().collect();
    let results = programmer.apply_each(&mut dp, &desired);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let error = results[1].as_ref().unwrap_err();
    assert!(format!("{error:#}").contains("refused"), "{error:#}");
    let in_use = only_80_and_82_live(&programmer, &dp);
    assert_eq!(
        programmer.table_chunks_used().0,
        in_use,
        "81's chunks are free"
    );
    for port in [80, 82] {
        let entry = dp.services[&key(port)];
        let table = position(&dp.log, &Write::Table(entry.table_start));
        let flip = position(&dp.log, &Write::Service(key(port)));
        assert!(table < flip, "{port}: table at {table}, entry at {flip}");
    }
}

/// `service(port, weights)` on VIP 198.19.0.`vip` instead.
fn on_vip(vip: u8, port: u16, weights: &[u32]) -> DesiredService {
    let mut s = service(port, weights);
    s.key.vip = Ipv4Addr::new(198, 19, 0, vip).into();
    s.name = format!("vip{vip}:{port}");
    s
}

/// A VIP the kernel refuses costs only its own services: the other VIPs of the same apply are
/// written, its services are reported (live, but unreachable without it), and the next change
/// of any service writes it.
#[test]
fn a_vip_write_that_fails_is_written_by_the_next_change() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(8, 32, 1024);
    let (a, b) = (on_vip(1, 80, &[1]), on_vip(2, 80, &[1]));
    dp.fail_vip_writes.insert(a.key.vip);
    let results = programmer.apply_each(&mut dp, &[&a, &b]);
    let error = results[0].as_ref().unwrap_err();
    assert!(
        format!("{error:#}").contains("vip1:80: live, but its VIP"),
        "{error:#}"
    );
    assert_eq!(results[1].as_ref().unwrap(), &Applied::Written { waits: 0 });
    assert_eq!(
        dp.vips.get(&b.key.vip),
        Some(&1),
        "the other VIP is written"
    );
    assert_eq!(dp.vips.get(&a.key.vip), None);
    assert!(
        dp.services.contains_key(&a.key),
        "the service itself is live"
    );

    dp.fail_vip_writes.clear();
    // Another service's change (here: none at all) writes the pending VIP.
    assert!(!programmer.apply_one(&mut dp, &b).unwrap());
    assert_eq!(dp.vips.get(&a.key.vip), Some(&1));
    // And `apply` of the same state repairs it as well, from a fresh failure.
    dp.vips.clear();
    dp.fail_vip_writes.insert(a.key.vip);
    let c = on_vip(1, 81, &[1]);
    assert!(
        programmer
            .apply(&mut dp, &[a.clone(), b.clone(), c.clone()])
            .is_err()
    );
    dp.fail_vip_writes.clear();
    programmer
        .apply(&mut dp, &[a.clone(), b.clone(), c])
        .unwrap();
    assert_eq!(dp.vips.get(&a.key.vip), Some(&2), "two ports on it now");
}

/// A restarted programmer writes every VIP of the services it re-adopts again: a VIP its
/// predecessor failed to write is not left out for good.
#[test]
fn a_restarted_programmer_writes_every_vip_again() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(8, 32, 1024);
    let (a, b) = (on_vip(1, 80, &[1]), on_vip(2, 80, &[1]));
    programmer.apply(&mut dp, &[a.clone(), b.clone()]).unwrap();
    dp.vips.remove(&a.key.vip);
    let mut restarted = Programmer::recover(&dp, 8, 32, 1024).unwrap();
    restarted.apply(&mut dp, &[a.clone(), b]).unwrap();
    assert_eq!(dp.vips.get(&a.key.vip), Some(&1));
}

#[test]
fn groups_end_at_their_count_or_weight() {
    let weights = [3u64, 3, 3, 10, 1, 1, 1, 1];
    let groups = bounded_groups(&weights, 3, 6, |&w| w);
    assert_eq!(
        groups,
        vec![&[3, 3][..], &[3][..], &[10][..], &[1, 1, 1][..], &[1][..]]
    );
    assert!(bounded_groups(&[] as &[u64], 3, 6, |&w| w).is_empty());
}

/// `service(port, weights)` on VIP 2001:db8:19::10, its backends at 2001:db8:18::<i + 1>.
fn service6(port: u16, weights: &[u32]) -> DesiredService {
    let mut s = service(port, weights);
    s.key.vip = key6(port).vip;
    s.name = format!("v6:{port}");
    for (i, b) in s.backends.iter_mut().enumerate() {
        b.addr = backend6(i as u16 + 1);
    }
    s
}

fn key6(port: u16) -> Frontend {
    Frontend::new(
        "2001:db8:19::10".parse::<IpAddr>().unwrap(),
        port,
        PROTO_TCP,
    )
}

fn backend6(n: u16) -> IpAddr {
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, n).into()
}

/// An IPv6 service: each backend's address goes to the IPv6 address map before its entry (whose
/// IPv4 address is 0) and before the table that names it; its VIP to the VIP map; a restarted
/// programmer reads the addresses back and keeps the live table.
#[test]
fn an_ipv6_service_writes_its_backend_addresses_first_and_a_restart_reads_them_back() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    // New services together (one batch), an IPv4 one beside.
    programmer
        .apply(&mut dp, &[service(80, &[1, 1]), service6(80, &[1, 1])])
        .unwrap();
    let log = dp.take_log();
    let entry = dp.services[&key6(80)];
    for n in 1..=2 {
        let id = programmer
            .backend_id(&key6(80), backend6(n), 8080u16.to_be())
            .expect("live");
        assert_eq!(dp.backends[&id].addr, 0);
        assert_eq!(
            dp.backend_addrs6[&id].to_ip(),
            backend6(n),
            "{:?}",
            dp.backend_addrs6
        );
        let addr = position(&log, &Write::BackendAddr6(id));
        assert!(addr < position(&log, &Write::Backend(id)), "{log:?}");
        assert!(addr < position(&log, &Write::Table(entry.table_start)));
    }
    assert!(
        position(&log, &Write::Table(entry.table_start))
            < position(&log, &Write::Service(key6(80)))
    );
    assert_eq!(dp.vips[&key6(80).vip], 1);
    assert_eq!(dp.vips[&key(80).vip], 1);
    // The IPv4 service's backends have no IPv6 address written.
    let v4_id = programmer
        .backend_id(
            &key(80),
            Ipv4Addr::new(198, 18, 0, 1).into(),
            8080u16.to_be(),
        )
        .unwrap();
    assert!(!dp.backend_addrs6.contains_key(&v4_id));

    // A change one at a time: the new backend's address before its entry.
    programmer
        .apply(&mut dp, &[service(80, &[1, 1]), service6(80, &[1, 1, 1])])
        .unwrap();
    let log = dp.take_log();
    let third = programmer
        .backend_id(&key6(80), backend6(3), 8080u16.to_be())
        .unwrap();
    let entry = dp.services[&key6(80)];
    let addr = position(&log, &Write::BackendAddr6(third));
    assert!(addr < position(&log, &Write::Backend(third)), "{log:?}");
    assert!(
        addr < position(&log, &Write::Table(entry.table_start)),
        "{log:?}"
    );
    assert!(addr < position(&log, &Write::Service(key6(80))), "{log:?}");

    // Restarted: the same state builds the same tables, so nothing is rewritten.
    let state = [service(80, &[1, 1]), service6(80, &[1, 1, 1])];
    let mut recovered = Programmer::recover(&dp, 4, 16, 4096).unwrap();
    assert_eq!(
        recovered.backend_id(&key6(80), backend6(3), 8080u16.to_be()),
        Some(third)
    );
    recovered.apply(&mut dp, &state).unwrap();
    let log = dp.take_log();
    assert!(
        !log.iter()
            .any(|w| matches!(w, Write::Table(_) | Write::Service(_))),
        "{log:?}"
    );
    // Removed: its entry and its VIP go, the IPv4 one stays.
    recovered.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    assert!(!dp.services.contains_key(&key6(80)));
    assert!(!dp.vips.contains_key(&key6(80).vip));
    assert_eq!(dp.vips[&key(80).vip], 1);
}

/// A backend of the other family than its frontend is refused (the kernel would find an IPv4
/// backend of an IPv6 table unaddressed): the service stays as it was.
#[test]
fn a_backend_of_the_other_family_is_refused() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    let mut mixed = service6(80, &[1, 1]);
    mixed.backends[1].addr = Ipv4Addr::new(198, 18, 0, 2).into();
    let error = programmer.apply(&mut dp, &[mixed]).unwrap_err();
    assert!(
        format!("{error:#}").contains(
            "backend 198.18.0.2 is not of the family of its frontend [2001:db8:19::10]:80/TCP"
        ),
        "{error:#}"
    );
    assert!(dp.services.is_empty());
    let mut mixed = service(81, &[1]);
    mixed.backends[0].addr = backend6(1);
    assert!(programmer.apply(&mut dp, &[mixed]).is_err());
}

/// A retired IPv6 backend's address slot is zeroed once its id is free again (after a grace
/// period), before any other backend can take the id.
#[test]
fn a_retired_ipv6_backends_address_goes_when_its_id_is_free() {
    let mut dp = MemoryDataplane::new();
    // Two backend ids in all: the third backend below needs a retired one.
    let mut programmer = Programmer::new(4, 2, 4096);
    programmer.apply(&mut dp, &[service6(80, &[1, 1])]).unwrap();
    let second = programmer
        .backend_id(&key6(80), backend6(2), 8080u16.to_be())
        .unwrap();
    programmer.apply(&mut dp, &[service6(80, &[1])]).unwrap();
    assert_eq!(
        dp.backend_addrs6[&second].to_ip(),
        backend6(2),
        "in quarantine: still readable by a packet that read the old table"
    );
    dp.take_log();
    // An IPv4 service takes the id: after the grace period, and after the slot is zeroed.
    programmer
        .apply(&mut dp, &[service6(80, &[1]), service(81, &[1])])
        .unwrap();
    let log = dp.take_log();
    let v4 = programmer
        .backend_id(
            &key(81),
            Ipv4Addr::new(198, 18, 0, 1).into(),
            8080u16.to_be(),
        )
        .unwrap();
    assert_eq!(v4, second, "the retired id is reused");
    assert_eq!(dp.backend_addrs6[&second], Addr6::default());
    let grace = position(&log, &Write::GracePeriod);
    let zeroed = position(&log, &Write::BackendAddr6(second));
    assert!(
        grace < zeroed && zeroed < position(&log, &Write::Backend(second)),
        "{log:?}"
    );
}

/// `service(port, weights)` dual-stack: key6 [2001:db8:19::10]:port, and each backend but the
/// last with an IPv6 address 2001:db8:18::<i + 1>.
fn dual(port: u16, weights: &[u32]) -> DesiredService {
    let mut s = service(port, weights);
    s.key6 = Some(key6(port));
    let last = s.backends.len() - 1;
    for (i, b) in s.backends.iter_mut().enumerate() {
        if i < last {
            b.addr6 = Some(match backend6(i as u16 + 1) {
                IpAddr::V6(ip) => ip,
                IpAddr::V4(_) => unreachable!(),
            });
        }
    }
    s
}

/// A dual-stack service: both frontends name one table (one service id, one set of backend
/// ids), an endpoint without IPv6 gets a zero address for the IPv6 path, both VIPs are in the
/// VIP map; a restarted programmer recovers it as one service; a change of its IPv6 frontend
/// retires the old one; removing it removes both.
#[test]
fn a_dual_stack_service_is_one_table_under_two_frontends() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    programmer.apply(&mut dp, &[dual(80, &[1, 1, 1])]).unwrap();
    let log = dp.take_log();
    assert_eq!(dp.services[&key(80)], dp.services[&key6(80)]);
    let entry = dp.services[&key(80)];
    assert!(
        position(&log, &Write::Table(entry.table_start))
            < position(&log, &Write::Service(key6(80)))
    );
    let ids: Vec<u32> = (1..=3)
        .map(|i| {
            programmer
                .backend_id(
                    &key(80),
                    Ipv4Addr::new(198, 18, 0, i).into(),
                    8080u16.to_be(),
                )
                .unwrap()
        })
        .collect();
    assert_eq!(dp.backend_addrs6[&ids[0]].to_ip(), backend6(1));
    assert_eq!(dp.backend_addrs6[&ids[1]].to_ip(), backend6(2));
    assert_eq!(
        dp.backend_addrs6[&ids[2]],
        Addr6::default(),
        "no IPv6 address: written as none, whatever the id held before"
    );
    assert_eq!(
        dp.backends[&ids[0]].addr,
        u32::from(Ipv4Addr::new(198, 18, 0, 1)).to_be()
    );
    assert_eq!((dp.vips[&key(80).vip], dp.vips[&key6(80).vip]), (1, 1));

    // Restarted: one service again, the same table kept.
    let mut recovered = Programmer::recover(&dp, 4, 16, 4096).unwrap();
    assert_eq!(recovered.live_keys(), [key(80)]);
    dp.take_log();
    recovered.apply(&mut dp, &[dual(80, &[1, 1, 1])]).unwrap();
    let log = dp.take_log();
    assert!(
        !log.iter()
            .any(|w| matches!(w, Write::Table(_) | Write::Service(_))),
        "{log:?}"
    );

    // Another IPv6 frontend: the old entry goes, the VIP map follows.
    let mut moved = dual(80, &[1, 1, 1]);
    moved.key6 = Some(Frontend::new(
        "2001:db8:19::20".parse::<IpAddr>().unwrap(),
        80,
        PROTO_TCP,
    ));
    recovered.apply(&mut dp, &[moved.clone()]).unwrap();
    assert!(!dp.services.contains_key(&key6(80)));
    assert_eq!(dp.services[&moved.key6.unwrap()], dp.services[&key(80)]);
    assert!(!dp.vips.contains_key(&key6(80).vip));
    assert_eq!(dp.vips[&moved.key6.unwrap().vip], 1);

    // An endpoint's IPv6 address changes: its slot is rewritten.
    let mut readdressed = moved.clone();
    readdressed.backends[2].addr6 = Some("2001:db8:18::33".parse().unwrap());
    recovered.apply(&mut dp, &[readdressed]).unwrap();
    assert_eq!(
        dp.backend_addrs6[&ids[2]].to_ip(),
        "2001:db8:18::33".parse::<std::net::Ipv6Addr>().unwrap()
    );

    recovered.apply(&mut dp, &[]).unwrap();
    assert!(dp.services.is_empty(), "{:?}", dp.services);
    assert!(dp.vips.is_empty(), "{:?}", dp.vips);
}

/// A service that stops and starts being dual-stack: when its IPv6 table comes back, every
/// backend's slot is written again — one whose `ip6` went meanwhile reads as none, not as the
/// address it had the first time.
#[test]
fn a_service_that_becomes_dual_stack_again_rewrites_every_slot() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    let first = dual(80, &[1, 1, 1]);
    programmer
        .apply(&mut dp, std::slice::from_ref(&first))
        .unwrap();
    let b1 = programmer
        .backend_id(
            &key(80),
            Ipv4Addr::new(198, 18, 0, 1).into(),
            8080u16.to_be(),
        )
        .unwrap();
    assert_eq!(dp.backend_addrs6[&b1].to_ip(), backend6(1));
    // IPv4 only: no ip6 anywhere.
    programmer
        .apply(&mut dp, &[service(80, &[1, 1, 1])])
        .unwrap();
    assert!(!dp.services.contains_key(&key6(80)));
    // Dual-stack again, the first backend without an IPv6 address now.
    let mut again = first;
    again.backends[0].addr6 = None;
    programmer.apply(&mut dp, &[again]).unwrap();
    assert_eq!(
        dp.backend_addrs6[&b1],
        Addr6::default(),
        "not {}",
        dp.backend_addrs6[&b1].to_ip()
    );
    assert_eq!(dp.services[&key6(80)], dp.services[&key(80)]);
}

/// Two services swap their IPv6 frontends in one apply: neither removes the entry the other
/// now has.
#[test]
fn two_services_swapping_their_ipv6_frontends_keep_both() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    let (x, y) = (key6(80), key6(81));
    let (mut a, mut b) = (dual(80, &[1, 1]), dual(81, &[1, 1]));
    programmer.apply(&mut dp, &[a.clone(), b.clone()]).unwrap();
    assert_eq!(dp.services[&x], dp.services[&key(80)]);
    (a.key6, b.key6) = (Some(y), Some(x));
    programmer.apply(&mut dp, &[a, b]).unwrap();
    assert_eq!(dp.services.get(&y), dp.services.get(&key(80)), "a's now");
    assert_eq!(dp.services.get(&x), dp.services.get(&key(81)), "b's now");
}

/// The IPv6 entry of a dual-stack service refused by the kernel: the IPv4 side stays live on
/// its new table (never freed under it), the error says so, and the next apply writes the
/// IPv6 entry.
#[test]
fn a_refused_ipv6_entry_leaves_the_ipv4_side_live_and_is_written_next_time() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16, 4096);
    dp.fail_service_writes.insert(key6(80));
    // New service (the batched path), then a change (one at a time).
    for weights in [&[1, 1][..], &[1, 2][..]] {
        let error = programmer.apply(&mut dp, &[dual(80, weights)]).unwrap_err();
        assert!(
            format!("{error:#}").contains("live over IPv4, its IPv6 frontend not yet"),
            "{error:#}"
        );
        let live = programmer.service(&key(80)).expect("live");
        assert_eq!(dp.services[&key(80)], live.entry);
        let table = crate::dataplane::KernelTable::read(&dp, &live.entry).unwrap();
        assert_eq!(table.backends.len(), 2);
        let (used, _) = programmer.table_chunks_used();
        assert!(used >= live.entry.table_chunks(), "its table is not freed");
    }
    dp.fail_service_writes.clear();
    programmer.apply(&mut dp, &[dual(80, &[1, 2])]).unwrap();
    assert_eq!(dp.services[&key6(80)], dp.services[&key(80)]);
}
