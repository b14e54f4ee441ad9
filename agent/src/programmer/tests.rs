//! The programmer's write order against the in-memory data path: a table is complete before
//! the entry that makes it live, an idle generation is rewritten only after a grace period, and
//! ids of removed services and backends are reused only after one.

use std::net::Ipv4Addr;

use geosteer_common::PROTO_TCP;

use super::*;
use crate::dataplane::memory::{MemoryDataplane, Write};

fn key(port: u16) -> ServiceKey {
    ServiceKey {
        addr: u32::from(Ipv4Addr::new(198, 19, 0, 10)).to_be(),
        port: port.to_be(),
        proto: PROTO_TCP,
        _pad: 0,
    }
}

/// A service on `port` with one backend per weight, at 198.18.0.<i + 1>:8080.
fn service(port: u16, weights: &[u32]) -> DesiredService {
    DesiredService {
        name: format!("svc:{port}"),
        key: key(port),
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| DesiredBackend {
                addr: u32::from(Ipv4Addr::new(198, 18, 0, i as u8 + 1)).to_be(),
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
fn a_swap_writes_the_idle_generation_then_flips() {
    let mut dp = MemoryDataplane::new();
    let mut programmer = Programmer::new(4, 16);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let first = dp.services[&key(80)];
    dp.take_log();
    programmer.apply(&mut dp, &[service(80, &[1, 3])]).unwrap();
    let second = dp.services[&key(80)];
    assert_eq!(second.id, first.id);
    assert_ne!(second.generation, first.generation, "the other generation");
    let log = dp.take_log();
    assert!(
        position(&log, &Write::Table(second.table_index()))
            < position(&log, &Write::Service(key(80)))
    );
    assert!(
        !log.contains(&Write::Table(first.table_index())),
        "the live table was rewritten: {log:?}"
    );
    // Unchanged: nothing written.
    programmer.apply(&mut dp, &[service(80, &[1, 3])]).unwrap();
    assert_eq!(dp.take_log(), []);
}

#[test]
fn an_idle_generation_is_rewritten_only_after_a_grace_period() {
    let mut dp = MemoryDataplane::new();
    dp.background_grace = false;
    let mut programmer = Programmer::new(4, 16);
    programmer.apply(&mut dp, &[service(80, &[1, 1])]).unwrap();
    let first = dp.services[&key(80)];
    programmer.apply(&mut dp, &[service(80, &[1, 2])]).unwrap();
    dp.take_log();
    // The third version goes back into the first generation, which packets may still read
    // until a grace period has passed since the last flip.
    programmer.apply(&mut dp, &[service(80, &[1, 3])]).unwrap();
    let log = dp.take_log();
    assert!(
        position(&log, &Write::GracePeriod) < position(&log, &Write::Table(first.table_index())),
        "{log:?}"
    );
    // With background grace periods done, no synchronous wait.
    dp.background_grace = true;
    programmer.apply(&mut dp, &[service(80, &[1, 4])]).unwrap();
    programmer.apply(&mut dp, &[service(80, &[1, 5])]).unwrap();
    assert!(!dp.take_log().contains(&Write::GracePeriod));
}

#[test]
fn ids_of_a_removed_service_are_reused_only_after_a_grace_period() {
    let mut dp = MemoryDataplane::new();
    dp.background_grace = false;
    let mut programmer = Programmer::new(1, 2);
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
