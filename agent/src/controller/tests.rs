//! The controller against the in-memory data path: what it writes, in which order, and what
//! it makes of the kernel's events — no root, no kernel.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use geosteer_common::{EVENT_EJECTED, KernelEvent, PROTO_TCP};

use super::*;
use crate::dataplane::memory::{MemoryDataplane, Write};

/// Two regions, two endpoints each, failover from the local one, as the demo runs it; the port
/// is `port_name` (its protocol follows from the name).
fn config(port_name: &str) -> Config {
    let yaml = format!(
        "node: {{name: n1, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: c1}}
dataplane: {{tc: [cl0], pinPath: /tmp/unused}}
services:
  - name: reviews
    namespace: default
    vip: 198.19.0.10
    ports: [{{name: {port_name}, port: 80, targetPort: 8080, protocol: TCP}}]
    endpoints:
      - {{ip: 198.18.11.2, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: c1}}
      - {{ip: 198.18.12.2, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: c1}}
      - {{ip: 198.18.21.2, region: cn-shanghai, zone: cn-shanghai-a, cluster: c2}}
      - {{ip: 198.18.22.2, region: cn-shanghai, zone: cn-shanghai-a, cluster: c2}}
    trafficPolicy:
      loadBalancer:
        localityLbSetting:
          failover: [{{from: cn-hangzhou, to: cn-shanghai}}]
      outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 10s, maxEjectionPercent: 100}}
"
    );
    config::parse(&yaml).expect("test config parses")
}

fn key() -> Frontend {
    Frontend::new(Ipv4Addr::new(198, 19, 0, 10), 80, PROTO_TCP)
}

/// `198.18.<a>.<b>`.
fn endpoint_addr(a: u8, b: u8) -> IpAddr {
    Ipv4Addr::new(198, 18, a, b).into()
}

fn started(port_name: &str) -> (Controller, MemoryDataplane) {
    started_with(config(port_name))
}

fn started_with(config: Config) -> (Controller, MemoryDataplane) {
    let mut dp = MemoryDataplane::new();
    let mut controller = Controller::new(config, Programmer::new(16, 64, 1 << 16));
    controller.apply_all(&mut dp).expect("apply");
    (controller, dp)
}

fn backend_id(controller: &Controller, a: u8) -> u32 {
    backend_of(controller, &key(), a)
}

/// The kernel id of endpoint 198.18.`a`.2:8080 of service `key`.
fn backend_of(controller: &Controller, key: &Frontend, a: u8) -> u32 {
    controller
        .programmer
        .backend_id(key, endpoint_addr(a, 2), 8080u16.to_be())
        .expect("backend live")
}

/// Backend ids the live table of the service hands new flows to.
fn steered_to(dp: &MemoryDataplane) -> BTreeSet<u32> {
    let value = dp.services[&key()];
    crate::dataplane::KernelTable::read(dp, &value)
        .expect("table")
        .slots
        .into_iter()
        .map(|id| id.expect("a slot names a backend"))
        .collect()
}

fn events(controller: &Controller, kind: EventKind) -> Vec<String> {
    controller
        .events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.what.clone())
        .collect()
}

/// The kernel's flag and count for backend `id` of service `key`, as the kernel sets them when
/// it ejects (the ring event is the caller's business).
fn kernel_ejects(controller: &Controller, dp: &mut MemoryDataplane, key: &Frontend, id: u32) {
    dp.backend_state.insert(
        id,
        BackendState {
            ejected: 1,
            ..BackendState::default()
        },
    );
    let service_id = controller.programmer.service(key).unwrap().id;
    dp.service_state.entry(service_id).or_default().ejections += 1;
}

/// [`kernel_ejects`], then the kernel's report of it reaching the agent at `at` seconds.
fn kernel_ejects_and_reports(
    controller: &mut Controller,
    dp: &mut MemoryDataplane,
    key: &Frontend,
    id: u32,
    at: u64,
) {
    kernel_ejects(controller, dp, key, id);
    controller
        .on_kernel_ejection(dp, &ejection_event(id), Duration::from_secs(at))
        .unwrap();
}

fn ejection_event(id: u32) -> KernelEvent {
    KernelEvent {
        kind: EVENT_EJECTED,
        backend_id: id,
        consecutive_5xx: 1,
        ..KernelEvent::default()
    }
}

#[test]
fn each_table_is_written_before_the_service_entry_that_makes_it_live() {
    let (controller, mut dp) = started("http");
    let log = dp.take_log();
    let flip = log
        .iter()
        .position(|w| *w == Write::Service(key()))
        .expect("service written");
    let table = dp.services[&key()].table_start;
    let written = log
        .iter()
        .position(|w| *w == Write::Table(table))
        .expect("table written");
    assert!(written < flip, "{log:?}");
    // Failover: only the local region takes new flows while it is healthy.
    let local: BTreeSet<u32> = [backend_id(&controller, 11), backend_id(&controller, 12)].into();
    assert_eq!(steered_to(&dp), local);
}

#[test]
fn a_kernel_ejection_moves_new_flows_and_ends_only_opaque_flows() {
    for (port_name, ends_flows) in [("http", false), ("tcp", true)] {
        let (mut controller, mut dp) = started(port_name);
        let hz1 = backend_id(&controller, 11);
        dp.take_log();
        let event = KernelEvent {
            kind: EVENT_EJECTED,
            backend_id: hz1,
            consecutive_5xx: 1,
            consecutive_gateway: 1,
            ..KernelEvent::default()
        };
        controller
            .on_kernel_ejection(&mut dp, &event, Duration::from_secs(100))
            .unwrap();
        assert!(!steered_to(&dp).contains(&hz1), "{port_name}");
        assert_eq!(events(&controller, EventKind::Ejection).len(), 1);
        let forgot = dp.take_log().contains(&Write::ForgetFlows {
            backend_id: hz1,
            keep_http: true,
        });
        // HTTP/1.x flows drain in the kernel; the agent resets the others.
        assert_eq!(forgot, ends_flows, "{port_name}");
        // The same event again (a duplicate ring record) changes nothing.
        controller
            .on_kernel_ejection(&mut dp, &event, Duration::from_secs(101))
            .unwrap();
        assert_eq!(events(&controller, EventKind::Ejection).len(), 1);
    }
}

#[test]
fn suspected_connect_timeouts_count_only_when_the_agents_connect_fails_too() {
    let (mut controller, mut dp) = started("http");
    let hz1 = backend_id(&controller, 11);
    let endpoint = SocketAddr::from((Ipv4Addr::new(198, 18, 11, 2), 8080));
    assert_eq!(controller.on_connect_timeout(hz1), Some(endpoint));
    assert_eq!(
        controller.on_connect_timeout(hz1),
        None,
        "one check at a time"
    );
    assert_eq!(controller.on_connect_timeout(9999), None, "unknown id");
    dp.take_log();
    controller
        .on_connect_check(&mut dp, hz1, endpoint, ConnectResult::Failed)
        .unwrap();
    assert_eq!(
        dp.take_log(),
        [Write::CountConnectTimeouts {
            backend_id: hz1,
            count: 2
        }]
    );
    // Dismissed: the backend accepted the agent's connection.
    assert_eq!(controller.on_connect_timeout(hz1), Some(endpoint));
    controller
        .on_connect_check(&mut dp, hz1, endpoint, ConnectResult::Accepted)
        .unwrap();
    assert_eq!(
        dp.take_log(),
        [Write::DismissConnectTimeouts { backend_id: hz1 }]
    );
    assert_eq!(
        (
            controller.connect_timeouts.confirmed,
            controller.connect_timeouts.dismissed
        ),
        (2, 1)
    );
    let said = events(&controller, EventKind::ConnectTimeout);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said[0].contains("2 connect timeout(s) of 198.18.11.2:8080 counted"));
    assert!(said[1].contains("not counted"));
    // A late answer about a check nobody runs decides nothing.
    controller
        .on_connect_check(&mut dp, hz1, endpoint, ConnectResult::Failed)
        .unwrap();
    assert_eq!(dp.take_log(), []);
    // A connection that failed on this node counts nothing either way.
    assert_eq!(controller.on_connect_timeout(hz1), Some(endpoint));
    controller
        .on_connect_check(&mut dp, hz1, endpoint, ConnectResult::Inconclusive)
        .unwrap();
    assert_eq!(dp.take_log(), []);
    assert_eq!(controller.connect_timeouts.inconclusive, 1);
}

#[test]
fn a_reload_that_removes_the_service_retires_its_entry() {
    let (mut controller, mut dp) = started("http");
    let mut without = config("http");
    without.services.clear();
    dp.take_log();
    controller.reload(&mut dp, without).unwrap();
    assert!(dp.take_log().contains(&Write::RemoveService(key())));
    assert!(dp.services.is_empty());
}

/// The test config with no outlierDetection.
fn without_outlier_detection() -> Config {
    let mut config = config("http");
    config.services[0]
        .traffic_policy
        .as_mut()
        .unwrap()
        .outlier_detection = None;
    config
}

/// `count` copies of the test service on ports 80, 81, …; those at the ports in `without`
/// have no outlierDetection.
fn services_on_ports(count: u16, without: &[u16]) -> Config {
    let mut config = config("http");
    let template = config.services[0].clone();
    config.services.clear();
    for i in 0..count {
        let port = 80 + i;
        let mut service = template.clone();
        service.name = format!("reviews-{i}");
        service.ports[0].port = port;
        if without.contains(&port) {
            service.traffic_policy.as_mut().unwrap().outlier_detection = None;
        }
        config.services.push(service);
    }
    config
}

fn service_on(port: u16) -> Frontend {
    Frontend { port, ..key() }
}

/// Reconcile goes round every service with outlierDetection in key order, a slice at a time,
/// on from where it stopped and round to the start: each once per round, those without never.
#[test]
fn reconcile_goes_round_every_service_with_outlier_detection() {
    let controller = Controller::new(
        services_on_ports(10, &[82, 85]),
        Programmer::new(16, 64, 1 << 16),
    );
    let mut cursor = None;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let chosen = next_to_reconcile(&controller.services, &controller.by_key, cursor, 3);
        assert_eq!(chosen.len(), 3);
        cursor = chosen.last().copied();
        seen.extend(chosen);
    }
    // Eight services with outlierDetection, eighteen picks: the round twice, then two more.
    let ports: Vec<u16> = seen.iter().map(|k| k.port).collect();
    let round = [80, 81, 83, 84, 86, 87, 88, 89];
    let expected: Vec<u16> = round
        .iter()
        .chain(&round)
        .chain(&round[..2])
        .copied()
        .collect();
    assert_eq!(ports, expected);
    // Fewer than the budget: each once, not twice.
    let all = next_to_reconcile(
        &controller.services,
        &controller.by_key,
        Some(service_on(84)),
        100,
    );
    assert_eq!(all.len(), 8);
}

/// Only services with outlier state are swept: one enters at an ejection, is un-ejected when
/// its time is over, stays while its backoff decays (Envoy: one step per interval) and then
/// leaves; the others are never visited.
#[test]
fn only_services_with_outlier_state_are_swept_until_it_decays() {
    let (mut controller, mut dp) = started("http");
    controller.sweep(&mut dp, Duration::from_secs(50)).unwrap();
    assert!(
        controller.outlier_active.is_empty(),
        "nothing ejected, nothing to time"
    );
    let id = backend_id(&controller, 11);
    kernel_ejects_and_reports(&mut controller, &mut dp, &key(), id, 100);
    assert!(controller.outlier_active.contains_key(&key()));
    let host = |controller: &Controller| {
        controller.health[&(key(), endpoint_addr(11, 2), 8080u16.to_be())]
            .outlier
            .clone()
    };
    // Ejected for 10 s (backoff 1): out at 110 s, then one decay step brings the backoff to 0.
    for at in [105, 110] {
        controller.sweep(&mut dp, Duration::from_secs(at)).unwrap();
    }
    assert!(!host(&controller).is_ejected());
    assert_eq!(host(&controller).backoff, 1);
    assert_eq!(dp.backend_state[&id].ejected, 0);
    assert!(
        controller.outlier_active.contains_key(&key()),
        "its backoff is still to decay"
    );
    controller.sweep(&mut dp, Duration::from_secs(111)).unwrap();
    assert_eq!(host(&controller).backoff, 0);
    assert!(
        controller.outlier_active.is_empty(),
        "all decayed: nothing left to time"
    );
    assert_eq!(
        controller.sweep_not_before,
        Duration::from_secs(112),
        "the next reconcile"
    );
}

/// An ejection the agent never heard of (a lost ring event) in a service far down the key
/// order is adopted by the reconcile pass, found by the service's count, and from then on timed
/// like a reported one.
#[test]
fn a_lost_ejection_is_adopted_and_then_timed() {
    let (mut controller, mut dp) = started_with(services_on_ports(12, &[]));
    // Two quiet passes: every service seen, so from now on a service's flags are read only
    // where its count says an ejection may be there — as here, where the kernel took a slot.
    for at in [90, 91] {
        controller.sweep(&mut dp, Duration::from_secs(at)).unwrap();
    }
    assert!(controller.reconciled_every_service);
    let key = service_on(91);
    let id = backend_of(&controller, &key, 11);
    kernel_ejects(&controller, &mut dp, &key, id);
    controller.sweep(&mut dp, Duration::from_secs(100)).unwrap();
    assert!(controller.outlier_active.contains_key(&key), "adopted");
    assert_eq!(controller.outlier_active.len(), 1);
    assert_eq!(controller.reconcile_repairs, 1);
    // Adopted at 100 s for baseEjectionTime 10 s: back at the first sweep from 110 s.
    for at in 101..=110 {
        controller.sweep(&mut dp, Duration::from_secs(at)).unwrap();
    }
    assert_eq!(dp.backend_state[&id].ejected, 0);
    assert_eq!(events(&controller, EventKind::Unejection).len(), 1);
}

/// A kernel ejection reported after a reload removed the service's outlierDetection (the event
/// was on its way) is undone: the flag cleared and the budget slot given back, not left to keep
/// a healthy host out of rotation for good.
#[test]
fn an_ejection_reported_after_outlier_detection_was_removed_is_undone() {
    let (mut controller, mut dp) = started("http");
    let hz1 = backend_id(&controller, 11);
    controller
        .reload(&mut dp, without_outlier_detection())
        .unwrap();
    // The kernel ejected it just before the reload's entries reached it.
    kernel_ejects_and_reports(&mut controller, &mut dp, &key(), hz1, 100);
    assert_eq!(dp.backend_state[&hz1].ejected, 0);
    let live = controller.programmer.service(&key()).unwrap();
    assert_eq!(live.ejections_released, 1, "the budget slot is given back");
    assert!(events(&controller, EventKind::Ejection).is_empty());
}

/// The outlier sweep un-ejects each due service's endpoints once their time is over, each on
/// its own timer, and leaves the others as they are.
#[test]
fn the_sweep_unejects_each_services_endpoints_when_their_time_is_over() {
    let mut config = config("http");
    let template = config.services[0].clone();
    for (i, port) in [81u16, 82].into_iter().enumerate() {
        let mut service = template.clone();
        service.name = format!("reviews-{i}");
        service.ports[0].port = port;
        config.services.push(service);
    }
    let mut dp = MemoryDataplane::new();
    let mut controller = Controller::new(config, Programmer::new(16, 64, 1 << 16));
    controller.apply_all(&mut dp).expect("apply");
    let service = |port: u16| Frontend { port, ..key() };
    let eject = |controller: &mut Controller, dp: &mut MemoryDataplane, port: u16, at: u64| {
        let id = controller
            .programmer
            .backend_id(&service(port), endpoint_addr(11, 2), 8080u16.to_be())
            .expect("backend live");
        // As the kernel does before it reports: the flag and the budget slot.
        kernel_ejects(controller, dp, &service(port), id);
        let event = ejection_event(id);
        controller
            .on_kernel_ejection(dp, &event, Duration::from_secs(at))
            .unwrap();
        id
    };
    let first = eject(&mut controller, &mut dp, 81, 100);
    let second = eject(&mut controller, &mut dp, 82, 103);
    assert_eq!(events(&controller, EventKind::Ejection).len(), 2);
    let ejected = |controller: &Controller, port: u16| {
        controller
            .health
            .range(endpoints_of(&service(port)))
            .filter(|(_, h)| h.outlier.is_ejected())
            .count()
    };
    // baseEjectionTime 10 s: neither is over at 105 s; the first is at 111 s, the second at 113 s.
    for (at, first_out, second_out) in [(105, true, true), (111, false, true), (114, false, false)]
    {
        controller.sweep(&mut dp, Duration::from_secs(at)).unwrap();
        assert_eq!(ejected(&controller, 81), first_out as usize, "at {at} s");
        assert_eq!(ejected(&controller, 82), second_out as usize, "at {at} s");
        assert_eq!(
            dp.backend_state[&first].ejected, first_out as u64,
            "at {at} s"
        );
        assert_eq!(
            dp.backend_state[&second].ejected, second_out as u64,
            "at {at} s"
        );
        assert_eq!(ejected(&controller, 80), 0);
    }
    assert_eq!(events(&controller, EventKind::Unejection).len(), 2);
}

/// A reload that removes a service's outlierDetection while one of its hosts is ejected ends
/// the ejection at the next sweep: flag cleared, budget slot given back, host back in the table.
#[test]
fn removing_outlier_detection_ends_the_ejections_it_made() {
    let (mut controller, mut dp) = started("http");
    let id = backend_id(&controller, 11);
    kernel_ejects_and_reports(&mut controller, &mut dp, &key(), id, 100);
    assert!(!steered_to(&dp).contains(&id));
    let without = without_outlier_detection();
    controller.reload(&mut dp, without).unwrap();
    controller.sweep(&mut dp, Duration::from_secs(101)).unwrap();
    assert_eq!(dp.backend_state[&id].ejected, 0);
    let live = controller.programmer.service(&key()).unwrap();
    assert_eq!(live.ejections_released, 1, "the budget slot is given back");
    assert!(steered_to(&dp).contains(&id));
    assert!(controller.outlier_active.is_empty());
}

/// A reload that shortens the outlier interval (300 s → 1 s) does not leave an ejection made
/// after it waiting for the old interval: it ends after baseEjectionTime, as configured now.
#[test]
fn an_ejection_after_a_reload_that_shortened_the_interval_ends_on_time() {
    let slow = |interval: &str| {
        let mut config = config("http");
        let od = config.services[0]
            .traffic_policy
            .as_mut()
            .unwrap()
            .outlier_detection
            .as_mut()
            .unwrap();
        od.interval = config::parse_duration(interval).unwrap();
        config
    };
    let mut dp = MemoryDataplane::new();
    let mut controller = Controller::new(slow("300s"), Programmer::new(16, 64, 1 << 16));
    controller.apply_all(&mut dp).expect("apply");
    controller.sweep(&mut dp, Duration::from_secs(10)).unwrap();
    controller.reload(&mut dp, slow("1s")).unwrap();
    controller.sweep(&mut dp, Duration::from_secs(15)).unwrap();
    let id = backend_id(&controller, 11);
    kernel_ejects(&controller, &mut dp, &key(), id);
    controller
        .on_kernel_ejection(&mut dp, &ejection_event(id), Duration::from_secs(20))
        .unwrap();
    // baseEjectionTime 10 s: out until 30 s, swept every second.
    for at in 21..=31 {
        controller.sweep(&mut dp, Duration::from_secs(at)).unwrap();
    }
    assert_eq!(
        dp.backend_state[&id].ejected, 0,
        "un-ejected at 30 s, not 310 s"
    );
}

/// The first round of reconcile after the agent starts reads every backend flag, also in the
/// slice that goes round past the end: a flag the kernel's count does not hold (an agent that
/// died between two writes) is found wherever its service falls.
#[test]
fn the_first_reconcile_round_reads_every_flag_to_the_end() {
    let (mut controller, mut dp) = started_with(services_on_ports(5, &[]));
    controller.reconcile_budget = 3;
    controller.sweep(&mut dp, Duration::from_secs(100)).unwrap();
    assert!(!controller.reconciled_every_service, "three of five seen");
    // A flag without its count slot, in the last service by key order.
    let last = service_on(84);
    let id = backend_of(&controller, &last, 11);
    dp.backend_state.insert(
        id,
        BackendState {
            ejected: 1,
            ..BackendState::default()
        },
    );
    controller.sweep(&mut dp, Duration::from_secs(101)).unwrap();
    assert!(controller.reconciled_every_service);
    assert!(
        controller.outlier_active.contains_key(&last),
        "the flag was read and adopted"
    );
}

/// An ejected endpoint that leaves (draining) is out of the host set: reconcile clears its flag
/// and gives its slot back; when it comes back it is a new host, in rotation at once.
#[test]
fn an_ejected_endpoint_that_leaves_and_comes_back_is_a_new_host() {
    let (mut controller, mut dp) = started("http");
    let id = backend_id(&controller, 11);
    kernel_ejects(&controller, &mut dp, &key(), id);
    controller
        .on_kernel_ejection(&mut dp, &ejection_event(id), Duration::from_secs(100))
        .unwrap();
    let mut leaving = config("http");
    leaving.services[0].endpoints[0].draining = true;
    controller.reload(&mut dp, leaving).unwrap();
    assert_eq!(backend_id(&controller, 11), id, "kept while it drains");
    for at in [101, 102] {
        controller.sweep(&mut dp, Duration::from_secs(at)).unwrap();
    }
    assert_eq!(dp.backend_state[&id].ejected, 0, "flag cleared");
    let service_id = controller.programmer.service(&key()).unwrap().id;
    let live = controller.programmer.service(&key()).unwrap();
    assert_eq!(
        dp.service_state[&service_id].ejections - live.ejections_released,
        0,
        "no ejection left on the books"
    );
    controller.reload(&mut dp, config("http")).unwrap();
    assert!(steered_to(&dp).contains(&backend_id(&controller, 11)));
}

/// A leaving endpoint's own flows tripping the kernel's limit eject nothing: the flag is cleared
/// and the slot given back at once, and the agent times nothing for it.
#[test]
fn a_leaving_endpoint_tripped_by_its_own_flows_is_not_ejected() {
    let (mut controller, mut dp) = started("http");
    let mut leaving = config("http");
    leaving.services[0].endpoints[0].draining = true;
    controller.reload(&mut dp, leaving).unwrap();
    let id = backend_id(&controller, 11);
    kernel_ejects(&controller, &mut dp, &key(), id);
    controller
        .on_kernel_ejection(&mut dp, &ejection_event(id), Duration::from_secs(100))
        .unwrap();
    assert_eq!(dp.backend_state[&id].ejected, 0);
    let live = controller.programmer.service(&key()).unwrap();
    assert_eq!(live.ejections_released, 1);
    assert!(controller.outlier_active.is_empty());
    assert!(events(&controller, EventKind::Ejection).is_empty());
}

/// A service that loses its outlierDetection in a reload while the kernel holds a flag the agent
/// never heard of (a lost ring event) gets it cleared at the next sweep.
#[test]
fn losing_outlier_detection_clears_flags_the_agent_never_heard_of() {
    let (mut controller, mut dp) = started("http");
    let id = backend_id(&controller, 11);
    kernel_ejects(&controller, &mut dp, &key(), id);
    let without = without_outlier_detection();
    controller.reload(&mut dp, without).unwrap();
    controller.sweep(&mut dp, Duration::from_secs(100)).unwrap();
    assert_eq!(dp.backend_state[&id].ejected, 0);
    assert_eq!(
        controller
            .programmer
            .service(&key())
            .unwrap()
            .ejections_released,
        1
    );
}

/// The node's locality is read again on a reload: moved to the other region, its new flows go
/// to that region's endpoints. And a full apply records no health for endpoints that have none.
#[test]
fn a_reload_that_moves_the_node_moves_its_traffic() {
    let (mut controller, mut dp) = started("http");
    assert!(controller.health.is_empty(), "no state, no entry");
    let hangzhou = BTreeSet::from([backend_id(&controller, 11), backend_id(&controller, 12)]);
    assert_eq!(steered_to(&dp), hangzhou);
    let mut moved = config("http");
    moved.node.region = "cn-shanghai".into();
    moved.node.zone = "cn-shanghai-a".into();
    controller.reload(&mut dp, moved).unwrap();
    let shanghai = BTreeSet::from([backend_id(&controller, 21), backend_id(&controller, 22)]);
    assert_eq!(steered_to(&dp), shanghai);
}

/// The test config with the service on IPv6: VIP 2001:db8:19::10, endpoints
/// 2001:db8:18:<a>::2.
fn ipv6_config() -> Config {
    let mut config = config("http");
    let service = &mut config.services[0];
    service.vip = "2001:db8:19::10".parse().unwrap();
    for e in &mut service.endpoints {
        let IpAddr::V4(v4) = e.ip else {
            panic!("IPv4 test config")
        };
        e.ip = ipv6_endpoint(v4.octets()[2]);
    }
    config
}

fn ipv6_endpoint(a: u8) -> IpAddr {
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, u16::from(a), 0, 0, 0, 2).into()
}

/// An IPv6 service through the controller: its endpoints' health is kept by IPv6 address, a
/// kernel ejection names the IPv6 endpoint, and a suspected connect timeout is checked against
/// that endpoint and counted through its address.
#[test]
fn an_ipv6_services_endpoints_are_checked_ejected_and_timed_by_address() {
    let (mut controller, mut dp) = started_with(ipv6_config());
    let key6 = Frontend::new("2001:db8:19::10".parse::<IpAddr>().unwrap(), 80, PROTO_TCP);
    assert!(dp.services.contains_key(&key6));
    let id = controller
        .programmer
        .backend_id(&key6, ipv6_endpoint(11), 8080u16.to_be())
        .expect("backend live");
    assert_eq!(dp.backends[&id].addr, 0);
    assert_eq!(
        IpAddr::V6(dp.backend_addrs6[&id].to_ip()),
        ipv6_endpoint(11)
    );

    let endpoint = SocketAddr::new(ipv6_endpoint(11), 8080);
    assert_eq!(controller.on_connect_timeout(id), Some(endpoint));
    dp.take_log();
    controller
        .on_connect_check(&mut dp, id, endpoint, ConnectResult::Failed)
        .unwrap();
    assert_eq!(
        dp.take_log(),
        [Write::CountConnectTimeouts {
            backend_id: id,
            count: 1
        }]
    );
    // The id no longer naming that address (another backend's slot): nothing counted.
    dp.backend_addrs6.insert(
        id,
        geosteer_common::Addr6::from_ip("2001:db8::99".parse().unwrap()),
    );
    assert_eq!(controller.on_connect_timeout(id), Some(endpoint));
    controller
        .on_connect_check(&mut dp, id, endpoint, ConnectResult::Failed)
        .unwrap();
    assert_eq!(dp.take_log(), []);

    kernel_ejects_and_reports(&mut controller, &mut dp, &key6, id, 100);
    let said = events(&controller, EventKind::Ejection);
    assert!(
        said.iter().any(|e| e.contains("[2001:db8:18:b::2]:8080")),
        "{said:?}"
    );
    // Its health is kept under its IPv6 address, in the service's range of the health map.
    let in_range: Vec<&HealthKey> = controller
        .health
        .range(endpoints_of(&key6))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(in_range, [&(key6, ipv6_endpoint(11), 8080u16.to_be())]);
    assert!(controller.health[in_range[0]].outlier.is_ejected());
}
