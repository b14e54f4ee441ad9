//! Golden-output tests: every command's table and JSON (and the metrics exposition) rendered
//! from fixed fixtures and compared with `agent/testdata/golden/`. After an intended change,
//! rewrite the files with `UPDATE_GOLDEN=1 cargo test -p geosteer golden` and review the diff.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use geosteer_common::{Backend, BackendCounters, BackendState, DropReason, TrafficCounters};

use super::{
    AgentLine, Output, Render, format,
    gather::{KernelBackend, backend_row, kernel_backend_row, service_row, top_frame},
    report::{
        BackendsReport, EventsReport, ExplainReport, ExplainVerdict, FlowRow, FlowsReport,
        LinkStatus, MapFill, ServiceBackends, ServiceRow, ServicesReport, StatusReport,
        SwapSummary, TrafficRow,
    },
};
use crate::{
    controller::{EventKind, SwapStats},
    metrics::{Readings, encode},
    state::{
        AgentInfo, AgentState, AttachmentInfo, BackendStatus, ConntrackInfo, EventInfo,
        LocalityStatus, PriorityStatus, ReloadInfo, ReloadResult, ServiceStatus,
    },
};

const UP: AgentLine = AgentLine {
    up: true,
    error: None,
};

fn down() -> AgentLine {
    AgentLine {
        up: false,
        error: Some(
            "no agent answers on /run/geosteer/admin.sock: Connection refused (os error 111)"
                .into(),
        ),
    }
}

fn backend(
    address: &str,
    id: u32,
    locality: &str,
    cluster: &str,
    share: f64,
    ejected_until: Option<&str>,
) -> BackendStatus {
    BackendStatus {
        address: address.into(),
        address6: None,
        backend_id: Some(id),
        locality: locality.into(),
        cluster: cluster.into(),
        weight: 1,
        share_percent: share,
        priority: Some(0),
        ejected: ejected_until.is_some(),
        ejected_until: ejected_until.map(str::to_string),
        ejections_total: ejected_until.is_some() as u64,
        active_healthy: None,
        routable: ejected_until.is_none(),
        draining: false,
    }
}

const HZ: &str = "cn-hangzhou/cn-hangzhou-b/";
const SH: &str = "cn-shanghai/cn-shanghai-a/";

/// The demo's service after hz-1 failed: distribute 90/10, one local backend ejected.
fn agent_state() -> AgentState {
    let reviews = ServiceStatus {
        name: "default/reviews:80/TCP".into(),
        vip: Ipv4Addr::new(198, 19, 0, 10).into(),
        vip6: None,
        port: 80,
        protocol: "TCP".into(),
        service_id: Some(0),
        mode: "distribute".into(),
        locality_weighted: true,
        panic: false,
        load: "P0 100.0%".into(),
        priorities: vec![PriorityStatus {
            level: 0,
            healthy: 3,
            total: 4,
            health_percent: 100.0,
            load_percent: 100.0,
            panic: false,
        }],
        localities: vec![
            LocalityStatus {
                priority: 0,
                name: HZ.into(),
                configured_weight: 90.0,
                effective_weight_percent: 86.301,
                healthy: 1,
                total: 2,
            },
            LocalityStatus {
                priority: 0,
                name: SH.into(),
                configured_weight: 10.0,
                effective_weight_percent: 13.699,
                healthy: 2,
                total: 2,
            },
        ],
        backends: vec![
            backend(
                "198.18.11.2:8080",
                0,
                HZ,
                "ack-hangzhou",
                0.0,
                Some("2025-06-01T12:01:00.000Z"),
            ),
            backend("198.18.12.2:8080", 1, HZ, "ack-hangzhou", 86.301, None),
            backend("198.18.21.2:8080", 2, SH, "ack-shanghai", 6.849, None),
            backend("198.18.22.2:8080", 3, SH, "ack-shanghai", 6.849, None),
            // A terminating pod of a rolling update, keeping its connections.
            BackendStatus {
                weight: 0,
                priority: None,
                routable: false,
                draining: true,
                ..backend("198.18.13.2:8080", 6, HZ, "ack-hangzhou", 0.0, None)
            },
        ],
        sources: vec!["localityLbSetting from services[0].trafficPolicy".into()],
        signals: "http/1.x".into(),
        signals_reason: "port name \"http\"".into(),
        connect_timeout: "10s".into(),
        clusters: vec!["ack-hangzhou".into(), "ack-shanghai".into()],
        cluster_local: None,
        session_affinity: Some("3h".into()),
    };
    let dns = ServiceStatus {
        name: "kube-system/dns:53/UDP".into(),
        vip: Ipv4Addr::new(198, 19, 0, 53).into(),
        port: 53,
        protocol: "UDP".into(),
        service_id: Some(1),
        mode: "failover".into(),
        load: "P0 70.0%, P1 30.0%".into(),
        priorities: vec![
            PriorityStatus {
                level: 0,
                healthy: 1,
                total: 2,
                health_percent: 70.0,
                load_percent: 70.0,
                panic: false,
            },
            PriorityStatus {
                level: 1,
                healthy: 1,
                total: 1,
                health_percent: 100.0,
                load_percent: 30.0,
                panic: false,
            },
        ],
        backends: vec![
            BackendStatus {
                active_healthy: Some(false),
                routable: false,
                ..backend("198.18.11.2:5353", 4, HZ, "ack-hangzhou", 0.0, None)
            },
            BackendStatus {
                active_healthy: Some(true),
                ..backend("198.18.12.2:5353", 5, HZ, "ack-hangzhou", 70.0, None)
            },
            BackendStatus {
                active_healthy: Some(true),
                priority: Some(1),
                ..backend("198.18.21.2:5353", 6, SH, "ack-shanghai", 30.0, None)
            },
        ],
        signals: "opaque".into(),
        signals_reason: "UDP port".into(),
        clusters: vec!["ack-hangzhou".into()],
        cluster_local: Some(
            "Istio's default: \"*.kube-system.svc.cluster.local\" is cluster-local".into(),
        ),
        ..Default::default()
    };
    AgentState {
        agent: AgentInfo {
            version: "0.1.0".into(),
            pid: 4242,
            node: "lab-node".into(),
            region: "cn-hangzhou".into(),
            zone: "cn-hangzhou-b".into(),
            cluster: "ack-hangzhou".into(),
            started_at: "2025-06-01T12:00:00.000Z".into(),
            ready: true,
            config_path: Some("/etc/geosteer/config.yaml".into()),
            pin_path: "/sys/fs/bpf/geosteer".into(),
            generation: 2,
            last_reload: Some(ReloadInfo {
                at: "2025-06-01T12:00:30.000Z".into(),
                trigger: "SIGHUP".into(),
                result: ReloadResult::Applied,
                message: "1 services changed in 180 µs".into(),
            }),
        },
        attachments: vec![
            AttachmentInfo {
                interface: "cl0".into(),
                hook: "tc-ingress".into(),
            },
            AttachmentInfo {
                interface: "cl0".into(),
                hook: "tc-egress".into(),
            },
        ],
        services: vec![reviews, dns].into(),
        events: vec![
            event(
                1,
                "12:00:00.100",
                EventKind::Agent,
                "agent started: programs attached, config applied",
            ),
            event(
                2,
                "12:00:30.000",
                EventKind::Reload,
                "reload (SIGHUP): 1 services changed in 180 µs",
            ),
            event(
                3,
                "12:00:50.000",
                EventKind::Ejection,
                "default/reviews:80/TCP: ejected 198.18.11.2:8080 (1 consecutive 5xx) for 10s",
            ),
            event(
                4,
                "12:01:00.000",
                EventKind::Unejection,
                "default/reviews:80/TCP: un-ejected 198.18.11.2:8080 (ejection time over)",
            ),
        ],
        swaps: SwapStats {
            count: 3,
            seconds_sum: 0.000_42,
            buckets: vec![0, 1, 2, 3, 3, 3, 3, 3, 3, 3],
        },
        reconcile_repairs: 1,
        connect_timeouts: crate::state::ConnectTimeoutInfo {
            confirmed: 2,
            dismissed: 5,
            inconclusive: 0,
        },
        memory: crate::memory::MemoryPlan {
            possible_cpus: 2,
            maps: vec![
                ("GS_CONNTRACK".into(), 33_558_528),
                ("GS_TABLE_CHUNKS".into(), 2_359_296),
            ],
            total: 35_917_824,
            per_cpu: 1_400_000,
            limit: Some(512 << 20),
            limit_source: "cgroup /sys/fs/cgroup/memory.max".into(),
        },
        conntrack: ConntrackInfo {
            gc_interval_s: 30.0,
            last_pass_at: Some("2025-06-01T12:00:45.000Z".into()),
            last_pass_ms: 1.4,
            entries: 340,
            flows: 170,
            passes: 3,
            expired: 12,
            orphans: 1,
            ended: 4,
        },
        kubernetes: None,
    }
}

fn event(seq: u64, time: &str, kind: EventKind, message: &str) -> EventInfo {
    EventInfo {
        seq,
        at: format!("2025-06-01T{time}Z"),
        kind,
        message: message.into(),
    }
}

fn counters(new_flows: u64, fives: u64) -> BackendCounters {
    BackendCounters {
        packets: new_flows * 6,
        bytes: new_flows * 420,
        new_flows,
        reply_packets: new_flows * 5,
        reply_bytes: new_flows * 900,
        responses: [0, new_flows - fives, 0, 0, fives],
        resets: 0,
        connect_failures: 0,
        http_skipped: 0,
        ignored_while_ejected: 0,
    }
}

fn kernel(id: u32, addr: [u8; 4], port: u16, ejected: bool, c: BackendCounters) -> KernelBackend {
    KernelBackend {
        id,
        addr: Ipv4Addr::from(addr).into(),
        backend: Backend {
            addr: u32::from(Ipv4Addr::from(addr)).to_be(),
            port: port.to_be(),
            ..Default::default()
        },
        state: BackendState {
            ejected: ejected as u64,
            consecutive_5xx: ejected as u64,
            ..Default::default()
        },
        counters: c,
    }
}

fn kernel_backends() -> Vec<KernelBackend> {
    vec![
        kernel(0, [198, 18, 11, 2], 8080, true, counters(41, 1)),
        kernel(1, [198, 18, 12, 2], 8080, false, counters(63, 0)),
        kernel(2, [198, 18, 21, 2], 8080, false, counters(7, 0)),
        kernel(3, [198, 18, 22, 2], 8080, false, counters(9, 0)),
    ]
}

fn status_up() -> StatusReport {
    let state = agent_state();
    StatusReport {
        agent: UP,
        info: Some(state.agent),
        socket: "/run/geosteer/admin.sock".into(),
        pin_path: "/sys/fs/bpf/geosteer".into(),
        programs_pinned: true,
        attachments: vec![
            LinkStatus {
                interface: "cl0".into(),
                hook: "tc-egress".into(),
                link_type: "tcx".into(),
                program_id: Some(1089),
                error: None,
            },
            LinkStatus {
                interface: "cl0".into(),
                hook: "tc-ingress".into(),
                link_type: "tcx".into(),
                program_id: Some(1088),
                error: None,
            },
            LinkStatus {
                interface: "up0".into(),
                hook: "xdp-native".into(),
                link_type: "xdp".into(),
                program_id: Some(1090),
                error: None,
            },
        ],
        maps: vec![
            MapFill {
                map: "services".into(),
                used: 2,
                capacity: 1024,
            },
            MapFill {
                map: "backends".into(),
                used: 7,
                capacity: 65536,
            },
            MapFill {
                map: "conntrack".into(),
                used: 240,
                capacity: 262144,
            },
        ],
        drops: DropReason::ALL
            .iter()
            .map(|r| {
                (
                    r.name().to_string(),
                    (*r == DropReason::NoBackend) as u64 * 3,
                )
            })
            .collect(),
        swaps: Some(SwapSummary {
            count: 3,
            mean_microseconds: 140.0,
        }),
        conntrack_gc: Some(state.conntrack.clone()),
        connect_timeouts: Some(state.connect_timeouts.clone()),
        memory: Some(state.memory.clone()),
        conntrack_events: BTreeMap::from([
            ("midstream".to_string(), 5),
            ("partner_restored".to_string(), 2),
        ]),
        maps_error: None,
        kubernetes: Some(crate::kube::SourceStatus {
            origin: crate::kube::Origin::Cluster,
            last_change: Some("2025-01-01T11:58:00Z".into()),
            clusters: vec![
                crate::kube::ClusterStatus {
                    name: "ack-hangzhou".into(),
                    connected: true,
                    last_contact: Some("2025-01-01T12:00:00Z".into()),
                    synced: true,
                    endpoints: 2,
                    ..Default::default()
                },
                crate::kube::ClusterStatus {
                    name: "ack-shanghai".into(),
                    connected: true,
                    last_contact: Some("2025-01-01T12:00:00Z".into()),
                    synced: true,
                    endpoints: 2,
                    ..Default::default()
                },
            ],
            policies_accepted: 1,
            policies_rejected: 1,
            policies_not_in_effect: vec![crate::kube::PolicyReport {
                namespace: "default".into(),
                name: "ratings".into(),
                reason: "TargetNotFound".into(),
                message: "Service default/ratings does not exist or has no IPv4 cluster IP".into(),
            }],
        }),
    }
}

fn status_down() -> StatusReport {
    StatusReport {
        agent: down(),
        info: None,
        socket: "/run/geosteer/admin.sock".into(),
        pin_path: "/sys/fs/bpf/geosteer".into(),
        programs_pinned: false,
        maps_error: Some(
            "reading the pinned maps under /sys/fs/bpf/geosteer: opening pinned map \
             /sys/fs/bpf/geosteer/GS_SERVICES: No such file or directory"
                .into(),
        ),
        ..Default::default()
    }
}

fn services_up() -> ServicesReport {
    let state = agent_state();
    let traffic = [
        TrafficRow {
            packets: 720,
            bytes: 50_400,
            new_flows: 120,
        },
        TrafficRow {
            packets: 50,
            bytes: 2_900,
            new_flows: 50,
        },
    ];
    ServicesReport {
        agent: UP,
        services: state
            .services
            .iter()
            .zip(traffic)
            .map(|(s, t)| service_row(s, Some(t)))
            .collect(),
    }
}

fn services_down() -> ServicesReport {
    ServicesReport {
        agent: down(),
        services: vec![ServiceRow {
            name: None,
            frontend: "198.19.0.10:80/TCP".into(),
            service_id: Some(0),
            healthy: 3,
            total: 4,
            counters: Some(TrafficRow {
                packets: 720,
                bytes: 50_400,
                new_flows: 120,
            }),
            ..Default::default()
        }],
    }
}

fn backends_up() -> BackendsReport {
    let state = agent_state();
    let kernel = kernel_backends();
    let reviews = &state.services[0];
    BackendsReport {
        agent: UP,
        services: vec![ServiceBackends {
            service: Some(reviews.name.clone()),
            frontend: "198.19.0.10:80/TCP".into(),
            backends: reviews
                .backends
                .iter()
                .map(|b| backend_row(b, kernel.iter().find(|k| Some(k.id) == b.backend_id)))
                .collect(),
        }],
    }
}

fn backends_down() -> BackendsReport {
    BackendsReport {
        agent: down(),
        services: vec![ServiceBackends {
            service: None,
            frontend: "198.19.0.10:80/TCP".into(),
            backends: kernel_backends().iter().map(kernel_backend_row).collect(),
        }],
    }
}

fn flows() -> FlowsReport {
    let flow = |client: &str, backend: &str, state: &str, age: f64, idle: f64| FlowRow {
        client: client.into(),
        frontend: "198.19.0.10:80/TCP".into(),
        service: Some("default/reviews:80/TCP".into()),
        backend: backend.into(),
        backend_id: 1,
        state: state.into(),
        age_seconds: age,
        idle_seconds: idle,
    };
    FlowsReport {
        agent: UP,
        flows: vec![
            flow(
                "198.18.0.2:40112",
                "198.18.12.2:8080",
                "established",
                12.345,
                0.5,
            ),
            flow("198.18.0.2:40113", "198.18.12.2:8080", "syn-sent", 1.2, 1.2),
            flow(
                "198.18.0.2:40114",
                "198.18.21.2:8080",
                "closed",
                3725.0,
                3600.0,
            ),
        ],
    }
}

fn explain_backend() -> ExplainReport {
    let state = agent_state();
    let reviews = &state.services[0];
    ExplainReport {
        agent: UP,
        source: "198.18.0.2:40123".into(),
        source_port_random: true,
        frontend: "198.19.0.10:80/TCP".into(),
        service: Some(reviews.name.clone()),
        verdict: ExplainVerdict::Backend,
        backend: Some("198.18.12.2:8080".into()),
        backend_id: Some(1),
        program: Some("geosteer_tc_ingress".into()),
        return_code: Some(0),
        conntrack_entries_removed: 2,
        flow_hash: Some(0x5e3f_13d1),
        slot: Some(75),
        table_size: 1021,
        slot_backend: Some("198.18.11.2:8080".into()),
        probed_past_ejected: Some(1),
        fallback_scan: false,
        mode: Some(reviews.mode.clone()),
        locality_weighted: Some(true),
        panic: Some(false),
        priority: Some(reviews.priorities[0].clone()),
        locality: Some(reviews.localities[0].clone()),
        backend_status: Some(reviews.backends[1].clone()),
        kernel_ejected: Some(false),
        signals: Some("http/1.x (port name \"http\"); connect timeout 10s".into()),
    }
}

fn explain_down() -> ExplainReport {
    ExplainReport {
        agent: down(),
        source: "198.18.0.2:40000".into(),
        source_port_random: false,
        frontend: "198.19.0.53:53/UDP".into(),
        verdict: ExplainVerdict::Backend,
        backend: Some("198.18.21.2:5353".into()),
        backend_id: Some(6),
        program: Some("geosteer_tc_ingress".into()),
        return_code: Some(0),
        conntrack_entries_removed: 2,
        flow_hash: Some(0x0efa_2a2a),
        slot: Some(571),
        table_size: 1021,
        slot_backend: Some("198.18.11.2:5353".into()),
        probed_past_ejected: None,
        fallback_scan: true,
        kernel_ejected: Some(false),
        ..Default::default()
    }
}

fn explain_other(verdict: ExplainVerdict) -> ExplainReport {
    ExplainReport {
        agent: UP,
        source: "198.18.0.2:40001".into(),
        frontend: "198.19.0.10:80/TCP".into(),
        service: Some("default/reviews:80/TCP".into()),
        verdict,
        backend: (verdict == ExplainVerdict::ExistingFlow).then(|| "198.18.22.2:8080".into()),
        backend_id: (verdict == ExplainVerdict::ExistingFlow).then_some(3),
        program: (verdict == ExplainVerdict::Dropped).then(|| "geosteer_tc_ingress".into()),
        return_code: (verdict == ExplainVerdict::Dropped).then_some(2),
        table_size: 1021,
        ..Default::default()
    }
}

fn events() -> EventsReport {
    EventsReport {
        agent: UP,
        events: agent_state().events,
    }
}

fn top() -> super::report::TopFrame {
    let row = |backend: &str, locality: &str, c: BackendCounters| {
        (
            "default/reviews:80/TCP".to_string(),
            backend.to_string(),
            Some(locality.to_string()),
            c,
        )
    };
    let before = vec![
        row("198.18.12.2:8080", HZ, counters(63, 0)),
        row("198.18.21.2:8080", SH, counters(7, 0)),
    ];
    let after = vec![
        row("198.18.12.2:8080", HZ, counters(153, 0)),
        row("198.18.21.2:8080", SH, counters(17, 2)),
    ];
    top_frame(
        UP,
        std::time::UNIX_EPOCH + Duration::from_secs(1_748_779_200),
        Duration::from_secs(2),
        &before,
        &after,
    )
}

fn metrics() -> String {
    let readings = Readings {
        services: BTreeMap::from([
            (
                0,
                TrafficCounters {
                    packets: 720,
                    bytes: 50_400,
                    new_flows: 120,
                },
            ),
            (
                1,
                TrafficCounters {
                    packets: 50,
                    bytes: 2_900,
                    new_flows: 50,
                },
            ),
        ]),
        backends: kernel_backends()
            .into_iter()
            .map(|k| (k.id, k.counters))
            .chain([
                (4, counters(0, 0)),
                (5, counters(35, 0)),
                (6, counters(15, 0)),
            ])
            .collect(),
        drops: DropReason::ALL.iter().map(|r| (*r, 0)).collect(),
        conntrack_entries: Some((340, 12)),
        conntrack_capacity: Some((262_144, 16_384)),
        ct_events: vec![("partner_restored", 2), ("midstream", 5)],
    };
    encode(&agent_state(), &readings)
}

/// Compares `actual` with the golden file `name`, or rewrites it under UPDATE_GOLDEN.
fn check(name: &str, actual: &str) -> Result<(), String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()))?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{name} differs from {} (UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ))
    }
}

/// The table and the JSON of a report.
fn both<R: Render>(report: R) -> (String, String) {
    (
        format(&report, Output::Table).unwrap(),
        format(&report, Output::Json).unwrap(),
    )
}

#[test]
fn every_command_renders_like_its_golden_file() {
    // (golden file stem, (table, JSON))
    let cases: Vec<(&str, (String, String))> = vec![
        ("status", both(status_up())),
        ("status-down", both(status_down())),
        ("services", both(services_up())),
        ("services-down", both(services_down())),
        ("backends", both(backends_up())),
        ("backends-down", both(backends_down())),
        ("flows", both(flows())),
        ("explain", both(explain_backend())),
        ("explain-down", both(explain_down())),
        (
            "explain-existing-flow",
            both(explain_other(ExplainVerdict::ExistingFlow)),
        ),
        (
            "explain-dropped",
            both(explain_other(ExplainVerdict::Dropped)),
        ),
        (
            "explain-not-a-service",
            both(explain_other(ExplainVerdict::NotAService)),
        ),
        ("events", both(events())),
        ("top", both(top())),
    ];
    let mut failures = Vec::new();
    for (stem, (table, json)) in &cases {
        for (name, text) in [
            (format!("{stem}.txt"), table),
            (format!("{stem}.json"), json),
        ] {
            if let Err(e) = check(&name, text) {
                failures.push(e);
            }
        }
    }
    if let Err(e) = check(
        "services.yaml",
        &format(&services_up(), Output::Yaml).unwrap(),
    ) {
        failures.push(e);
    }
    if let Err(e) = check("metrics.txt", &metrics()) {
        failures.push(e);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
