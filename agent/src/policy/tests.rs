use super::*;

const REGION: &str = REGION_LABEL;
const ZONE: &str = ZONE_LABEL;

/// Parses `region/zone/subzone` with an optional `@cluster` suffix.
fn loc(spec: &str) -> Locality {
    let (path, cluster) = spec.split_once('@').unwrap_or((spec, ""));
    let (region, zone, subzone) = split_pattern(path);
    Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: subzone.into(),
        cluster: cluster.into(),
    }
}

/// The topology labels the caller derives from a locality.
fn topology_labels(locality: &Locality) -> BTreeMap<String, String> {
    BTreeMap::from([
        (REGION.to_string(), locality.region.clone()),
        (ZONE.to_string(), locality.zone.clone()),
    ])
}

fn ep_w(spec: &str, weight: u32, healthy: bool) -> Endpoint<'static> {
    let locality = loc(spec);
    Endpoint {
        labels: Cow::Owned(topology_labels(&locality)),
        locality: Cow::Owned(locality),
        weight,
        healthy,
    }
}

fn ep(spec: &str, healthy: bool) -> Endpoint<'static> {
    ep_w(spec, 1, healthy)
}

fn labelled(mut endpoint: Endpoint<'static>, key: &str, value: &str) -> Endpoint<'static> {
    endpoint.labels.to_mut().insert(key.into(), value.into());
    endpoint
}

/// `count` endpoints in one locality, the first `healthy` of them healthy.
fn block(spec: &str, count: usize, healthy: usize) -> Vec<Endpoint<'static>> {
    (0..count).map(|i| ep(spec, i < healthy)).collect()
}

fn failover(from: &str, to: &str) -> LocalityLb {
    LocalityLb {
        failover: vec![Failover {
            from: from.into(),
            to: to.into(),
        }],
        ..LocalityLb::default()
    }
}

fn failover_priority(labels: &[&str]) -> LocalityLb {
    LocalityLb {
        failover_priority: labels.iter().map(|l| l.to_string()).collect(),
        ..LocalityLb::default()
    }
}

fn distribute(from: &str, to: &[(&str, u32)]) -> LocalityLb {
    LocalityLb {
        distribute: vec![Distribute {
            from: from.into(),
            to: to.iter().map(|&(k, w)| (k.to_string(), w)).collect(),
        }],
        ..LocalityLb::default()
    }
}

fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|&(k, w)| (k.to_string(), w)).collect()
}

/// One scenario: the client, the endpoints and the settings.
struct Scenario {
    client: &'static str,
    client_labels: Option<BTreeMap<String, String>>,
    endpoints: Vec<Endpoint<'static>>,
    lb: Option<LocalityLb>,
    outlier_detection: bool,
    cluster_weights: Option<BTreeMap<String, u32>>,
    min_health_percent: u32,
}

impl Scenario {
    fn new(client: &'static str, endpoints: Vec<Endpoint<'static>>) -> Self {
        Scenario {
            client,
            client_labels: None,
            endpoints,
            lb: None,
            outlier_detection: true,
            cluster_weights: None,
            min_health_percent: 0,
        }
    }
    fn lb(mut self, lb: LocalityLb) -> Self {
        self.lb = Some(lb);
        self
    }
    fn no_outlier_detection(mut self) -> Self {
        self.outlier_detection = false;
        self
    }
    fn client_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.client_labels = Some(labels);
        self
    }
    fn cluster_weights(mut self, w: BTreeMap<String, u32>) -> Self {
        self.cluster_weights = Some(w);
        self
    }
    fn min_health(mut self, percent: u32) -> Self {
        self.min_health_percent = percent;
        self
    }
    fn run(&self) -> PolicyOutput {
        let client = loc(self.client);
        let client_labels = self
            .client_labels
            .clone()
            .unwrap_or_else(|| topology_labels(&client));
        compute(&PolicyInput {
            client: &client,
            client_labels: &client_labels,
            endpoints: &self.endpoints,
            locality_lb: self.lb.as_ref(),
            outlier_detection: self.outlier_detection,
            cluster_weights: self.cluster_weights.as_ref(),
            min_health_percent: self.min_health_percent,
        })
    }
}

fn assert_close(case: &str, what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() < 1e-6,
        "{case}: {what}: got {got}, want {want}"
    );
}

fn assert_shares(case: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{case}: number of shares");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() < 1e-6,
            "{case}: share of endpoint {i}: got {g}, want {w} (all: {got:?})"
        );
    }
}

/// docs/SEMANTICS.md "Priority load" vectors (Envoy `recalculatePerPriorityState`): P0 is the
/// client's subzone, P1 another region (level 3, compacted to 1), 100 endpoints each.
#[test]
fn priority_load_vectors() {
    let cases = [
        // (P0 healthy %, P1 healthy %, P0 load, P1 load)
        (100, 100, 100.0, 0.0),
        (72, 100, 100.0, 0.0),
        (71, 100, 99.4, 0.6),
        (50, 100, 70.0, 30.0),
        (25, 100, 35.0, 65.0),
        (0, 100, 0.0, 100.0),
        (20, 20, 50.0, 50.0),
    ];
    for (p0, p1, want0, want1) in cases {
        let case = format!("P0 {p0}% P1 {p1}% healthy");
        let mut endpoints = block("r1/z1/s1", 100, p0);
        endpoints.extend(block("r2/z1/s1", 100, p1));
        let out = Scenario::new("r1/z1/s1", endpoints).run();
        assert_eq!(out.mode, Mode::Failover, "{case}");
        assert_eq!(
            out.priorities.len(),
            2,
            "{case}: empty levels are compacted"
        );
        assert_close(&case, "P0 load", out.priorities[0].load_percent, want0);
        assert_close(&case, "P1 load", out.priorities[1].load_percent, want1);
        let p0_share: f64 = out.shares[..100].iter().sum();
        assert_close(&case, "P0 shares", p0_share, want0 / 100.0);
        assert!(!out.panic, "{case}");
    }
}

/// docs/SEMANTICS.md "Locality weights with availability" and "Per-cluster weights" vectors
/// (Envoy `effectiveLocalityWeight`).
#[test]
fn locality_weight_vectors() {
    struct Case {
        name: &'static str,
        scenario: Scenario,
        // (group name, effective weight %)
        want: Vec<(&'static str, f64)>,
    }
    let cases = [
        Case {
            name: "distribute 50/50, one locality half healthy",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    ep("r1/z1/s1", true),
                    ep("r1/z2/s1", true),
                    ep("r1/z2/s1", false),
                ],
            )
            .lb(distribute("r1", &[("r1/z1", 50), ("r1/z2", 50)])),
            want: vec![("r1/z1/s1", 58.823529), ("r1/z2/s1", 41.176471)],
        },
        Case {
            name: "cluster weights 20/80, all healthy",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![ep("r1/z1/s1@a", true), ep("r2/z1/s1@b", true)],
            )
            .cluster_weights(weights(&[("a", 20), ("b", 80)])),
            want: vec![("a", 20.0), ("b", 80.0)],
        },
        Case {
            name: "cluster weights 20/80, the 80 cluster down",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![ep("r1/z1/s1@a", true), ep("r2/z1/s1@b", false)],
            )
            .cluster_weights(weights(&[("a", 20), ("b", 80)])),
            want: vec![("a", 100.0), ("b", 0.0)],
        },
        Case {
            name: "cluster weights 20/80, the 80 cluster half healthy",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1@a", true),
                    ep("r2/z1/s1@b", true),
                    ep("r2/z1/s1@b", false),
                ],
            )
            .cluster_weights(weights(&[("a", 20), ("b", 80)])),
            // 20 vs 80 × 0.7 = 56.
            want: vec![("a", 100.0 * 20.0 / 76.0), ("b", 100.0 * 56.0 / 76.0)],
        },
    ];
    for case in cases {
        let out = case.scenario.run();
        assert!(out.locality_weighted, "{}", case.name);
        let got: Vec<(&str, f64)> = out
            .localities
            .iter()
            .map(|l| (l.name.as_str(), l.effective_weight_percent))
            .collect();
        assert_eq!(got.len(), case.want.len(), "{}: {got:?}", case.name);
        for ((name, pct), (want_name, want_pct)) in got.iter().zip(&case.want) {
            assert_eq!(name, want_name, "{}", case.name);
            assert_close(case.name, name, *pct, *want_pct);
        }
        // The shares of a group's endpoints add up to its effective weight.
        for view in &out.localities {
            let group_share: f64 = case
                .scenario
                .endpoints
                .iter()
                .zip(&out.shares)
                .filter(|(e, _)| e.locality.label() == view.name || e.locality.cluster == view.name)
                .map(|(_, s)| s)
                .sum();
            assert_close(
                case.name,
                &view.name,
                group_share * 100.0,
                view.effective_weight_percent,
            );
        }
    }
}

/// Shares per scenario; each case cites the rule it pins.
#[test]
fn conformance() {
    struct Case {
        name: &'static str,
        scenario: Scenario,
        mode: Mode,
        shares: Vec<f64>,
    }
    let w = 2.0 * 0.7; // weight 2 locality at 50% health (min(1, 1.4 × 0.5)).
    let cases = vec![
        Case {
            // applyLocalityFailover: r2 keeps level 3, r3 drops to 4.
            name: "failover picks region r2 before the rest",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r3/z1/s1", true),
                    ep("r2/z1/s1", true),
                ],
            )
            .lb(failover("r1", "r2")),
            mode: Mode::Failover,
            shares: vec![0.0, 0.0, 1.0],
        },
        Case {
            // LbPriority without rules: every other region is level 3.
            name: "default failover treats all other regions alike",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r3/z1/s1", true),
                    ep("r2/z1/s1", true),
                ],
            ),
            mode: Mode::Failover,
            shares: vec![0.0, 0.5, 0.5],
        },
        Case {
            // A rule applies only when the client's region equals `from`.
            name: "failover rule from r1 does not apply to a client in r2",
            scenario: Scenario::new(
                "r2/z1/s1",
                vec![
                    ep("r2/z1/s1", false),
                    ep("r3/z1/s1", true),
                    ep("r4/z1/s1", true),
                ],
            )
            .lb(failover("r1", "r3")),
            mode: Mode::Failover,
            shares: vec![0.0, 0.5, 0.5],
        },
        Case {
            // endpoint_builder.go: enableFailover only with outlier detection.
            name: "no outlier detection: failover ignored",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r3/z1/s1", true),
                    ep("r2/z1/s1", true),
                ],
            )
            .lb(failover("r1", "r2"))
            .no_outlier_detection(),
            mode: Mode::Plain,
            shares: vec![0.0, 0.5, 0.5],
        },
        Case {
            name: "no outlier detection: default failover ignored",
            scenario: Scenario::new("r1/z1/s1", vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)])
                .no_outlier_detection(),
            mode: Mode::Plain,
            shares: vec![0.5, 0.5],
        },
        Case {
            // Mesh default is enabled: the local subzone takes everything.
            name: "default locality LB keeps traffic local",
            scenario: Scenario::new("r1/z1/s1", vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)]),
            mode: Mode::Failover,
            shares: vec![1.0, 0.0],
        },
        Case {
            // GetLocalityLbSetting: enabled=false returns no setting.
            name: "locality LB disabled",
            scenario: Scenario::new("r1/z1/s1", vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)])
                .lb(LocalityLb {
                    enabled: false,
                    ..failover("r1", "r2")
                }),
            mode: Mode::Plain,
            shares: vec![0.5, 0.5],
        },
        Case {
            // The "half the local region failing → about 70/30 spillover": the
            // local region has 2 endpoints, one unhealthy → health 70.
            name: "half the local region failing spills 30% over",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    ep("r1/z1/s1", false),
                    ep("r2/z1/s1", true),
                    ep("r2/z1/s1", true),
                ],
            )
            .lb(failover("r1", "r2")),
            mode: Mode::Failover,
            shares: vec![0.7, 0.0, 0.15, 0.15],
        },
        Case {
            // Default failover: no locality weighting, healthy hosts share a level.
            name: "default failover: hosts of a level by endpoint weight",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r1/z2/s1", true),
                    ep("r1/z2/s1", false),
                    ep("r1/z3/s1", true),
                    ep("r1/z3/s1", true),
                ],
            ),
            mode: Mode::Failover,
            shares: vec![0.0, 1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0],
        },
        Case {
            // cluster_traffic_policy.go turns locality weighting on with explicit failover:
            // z2 (2 hosts, 1 healthy) weighs 2 × 0.7 against z3's 2.
            name: "explicit failover: localities of a level weighted by availability",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r1/z2/s1", true),
                    ep("r1/z2/s1", false),
                    ep("r1/z3/s1", true),
                    ep("r1/z3/s1", true),
                ],
            )
            .lb(failover("r1", "r2")),
            mode: Mode::Failover,
            shares: vec![0.0, w / (w + 2.0), 0.0, 1.0 / (w + 2.0), 1.0 / (w + 2.0)],
        },
        Case {
            // P0 matches region and zone, P1 region only, P2 neither.
            name: "failoverPriority with 2 labels, local zone down",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r1/z2/s1", true),
                    ep("r2/z1/s1", true),
                ],
            )
            .lb(failover_priority(&[REGION, ZONE])),
            mode: Mode::FailoverPriority,
            shares: vec![0.0, 1.0, 0.0],
        },
        Case {
            name: "failoverPriority with 2 labels, local region down",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r1/z2/s1", false),
                    ep("r2/z1/s1", true),
                ],
            )
            .lb(failover_priority(&[REGION, ZONE])),
            mode: Mode::FailoverPriority,
            shares: vec![0.0, 0.0, 1.0],
        },
        Case {
            // A later label only counts when the earlier ones match: r2/z1 matches the
            // zone but not the region, so it is last, with r3/z2.
            name: "failoverPriority: later labels need earlier ones",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", false),
                    ep("r2/z1/s1", true),
                    ep("r3/z2/s1", true),
                ],
            )
            .lb(failover_priority(&[REGION, ZONE])),
            mode: Mode::FailoverPriority,
            shares: vec![0.0, 0.5, 0.5],
        },
        Case {
            // Without outlierDetection Istio drops the priorities (rule 3)...
            name: "failoverPriority without outlierDetection: one level",
            scenario: Scenario::new("r1/z1/s1", vec![ep("r1/z1/s1", true), ep("r1/z2/s1", true)])
                .lb(failover_priority(&[REGION, ZONE]))
                .no_outlier_detection(),
            mode: Mode::Plain,
            shares: vec![0.5, 0.5],
        },
        Case {
            // ...but a Service's trafficDistribution asks for closeness in any case.
            name: "trafficDistribution's failoverPriority without outlierDetection",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    ep("r1/z2/s1", true),
                    ep("r1/z1/s1", false),
                ],
            )
            .lb(LocalityLb {
                without_outlier_detection: true,
                ..failover_priority(&[REGION, ZONE])
            })
            .no_outlier_detection(),
            mode: Mode::FailoverPriority,
            // P0 = the two same-zone endpoints, one unhealthy: health 70%, the rest spills.
            shares: vec![0.7, 0.3, 0.0],
        },
        Case {
            // applyFailoverPriorities returns early when the proxy has no labels.
            name: "failoverPriority with no client labels: one level",
            scenario: Scenario::new("r1/z1/s1", vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)])
                .lb(failover_priority(&[REGION]))
                .client_labels(BTreeMap::new()),
            mode: Mode::FailoverPriority,
            shares: vec![0.5, 0.5],
        },
        Case {
            // Without the early return, an endpoint lacking the label would match the
            // client's missing label ("" == "") and take everything.
            name: "failoverPriority with no client labels: missing labels do not match",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    labelled(ep("r1/z1/s1", true), "version", "v1"),
                ],
            )
            .lb(failover_priority(&["version"]))
            .client_labels(BTreeMap::new()),
            mode: Mode::FailoverPriority,
            shares: vec![0.5, 0.5],
        },
        Case {
            // A label missing on both sides counts as equal (Go map lookup gives "").
            name: "failoverPriority: label missing on client and endpoint matches",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    labelled(ep("r1/z1/s1", true), "version", "v1"),
                ],
            )
            .lb(failover_priority(&["version"])),
            mode: Mode::FailoverPriority,
            shares: vec![1.0, 0.0],
        },
        Case {
            // `key=value` compares endpoints with the value, not with the client.
            name: "failoverPriority key=value override",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    labelled(ep("r1/z1/s1", true), "version", "v1"),
                    labelled(ep("r2/z1/s1", true), "version", "v2"),
                ],
            )
            .lb(failover_priority(&["version=v2"]))
            .client_labels(BTreeMap::from([("version".into(), "v1".into())])),
            mode: Mode::FailoverPriority,
            shares: vec![0.0, 1.0],
        },
        Case {
            // Rule 8: labels first (v1 before v2), then failover r1→r2 within v1. The v1
            // endpoint in r2 comes before the one in r3.
            name: "failoverPriority + failover: region order within a label level",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    labelled(ep("r3/z1/s1", true), "version", "v1"),
                    labelled(ep("r1/z1/s1", true), "version", "v2"),
                    labelled(ep("r2/z1/s1", true), "version", "v1"),
                    labelled(ep("r1/z1/s1", false), "version", "v1"),
                ],
            )
            .lb(LocalityLb {
                failover_priority: vec!["version".into()],
                ..failover("r1", "r2")
            })
            .client_labels(BTreeMap::from([("version".into(), "v1".into())])),
            mode: Mode::FailoverPriority,
            shares: vec![0.0, 0.0, 1.0, 0.0],
        },
        Case {
            // ... and the label level still beats the client's own region.
            name: "failoverPriority + failover: label level beats region",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    labelled(ep("r3/z1/s1", true), "version", "v1"),
                    labelled(ep("r1/z1/s1", true), "version", "v2"),
                    labelled(ep("r2/z1/s1", false), "version", "v1"),
                    labelled(ep("r1/z1/s1", false), "version", "v1"),
                ],
            )
            .lb(LocalityLb {
                failover_priority: vec!["version".into()],
                ..failover("r1", "r2")
            })
            .client_labels(BTreeMap::from([("version".into(), "v1".into())])),
            mode: Mode::FailoverPriority,
            shares: vec![1.0, 0.0, 0.0, 0.0],
        },
        Case {
            name: "distribute 90/10 over 2+2 endpoints",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    ep("r1/z1/s1", true),
                    ep("r2/z1/s1", true),
                    ep("r2/z1/s1", true),
                ],
            )
            .lb(distribute("r1/z1/*", &[("r1/*", 90), ("r2/*", 10)])),
            mode: Mode::Distribute,
            shares: vec![0.45, 0.45, 0.05, 0.05],
        },
        Case {
            // applyLocalityWeights splits a wildcard's weight by endpoint-weight sums:
            // r1/z1 has 2 endpoints, r1/z2 has 1, so 60/30; r3 is not listed.
            name: "distribute splits a wildcard across localities, unlisted get 0",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    ep("r1/z1/s1", true),
                    ep("r1/z2/s1", true),
                    ep("r2/z1/s1", true),
                    ep("r3/z1/s1", true),
                ],
            )
            .lb(distribute("r1/z1/*", &[("r1/*", 90), ("r2/*", 10)])),
            mode: Mode::Distribute,
            shares: vec![0.3, 0.3, 0.3, 0.1, 0.0],
        },
        Case {
            // Istio rejects overlapping `to` patterns; here the most specific one claims
            // r1/z2 first and `r1/*` keeps only r1/z1.
            name: "distribute: overlapping patterns, most specific first",
            scenario: Scenario::new("r1/z1/s1", vec![ep("r1/z1/s1", true), ep("r1/z2/s1", true)])
                .lb(distribute("r1", &[("r1/*", 60), ("r1/z2/*", 40)])),
            mode: Mode::Distribute,
            shares: vec![0.6, 0.4],
        },
        Case {
            // Distribute wins over failover and needs no outlier detection.
            name: "distribute without outlier detection",
            scenario: Scenario::new("r1/z1/s1", vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)])
                .lb(distribute("*", &[("r1", 80), ("r2", 20)]))
                .no_outlier_detection(),
            mode: Mode::Distribute,
            shares: vec![0.8, 0.2],
        },
        Case {
            // The first matching `from` applies.
            name: "distribute: first matching rule",
            scenario: Scenario::new("r2/z1/s1", vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)])
                .lb(LocalityLb {
                    distribute: vec![
                        distribute("r1", &[("r1", 100)]).distribute.remove(0),
                        distribute("r2/z1", &[("r1", 30), ("r2", 70)])
                            .distribute
                            .remove(0),
                        distribute("*", &[("r1", 50), ("r2", 50)])
                            .distribute
                            .remove(0),
                    ],
                    ..LocalityLb::default()
                }),
            mode: Mode::Distribute,
            shares: vec![0.3, 0.7],
        },
        Case {
            // No `from` matches: Istio leaves the endpoints alone, but Envoy still weighs
            // localities (by endpoint count) with availability: 1.4 against 2.
            name: "distribute with no matching rule",
            scenario: Scenario::new(
                "r3/z1/s1",
                vec![
                    ep("r1/z1/s1", true),
                    ep("r1/z1/s1", false),
                    ep("r2/z1/s1", true),
                    ep("r2/z1/s1", true),
                ],
            )
            .lb(distribute("r1", &[("r1", 100)])),
            mode: Mode::Plain,
            shares: vec![w / (w + 2.0), 0.0, 1.0 / (w + 2.0), 1.0 / (w + 2.0)],
        },
        Case {
            name: "cluster weights 20/80 with 1+2 endpoints",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1@a", true),
                    ep("r2/z1/s1@b", true),
                    ep("r2/z1/s1@b", true),
                ],
            )
            .cluster_weights(weights(&[("a", 20), ("b", 80)])),
            mode: Mode::ClusterWeights,
            shares: vec![0.2, 0.4, 0.4],
        },
        Case {
            name: "cluster weights: the 80 cluster fails, the 20 one takes all",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1@a", true),
                    ep("r2/z1/s1@b", false),
                    ep("r2/z1/s1@b", false),
                ],
            )
            .cluster_weights(weights(&[("a", 20), ("b", 80)])),
            mode: Mode::ClusterWeights,
            shares: vec![1.0, 0.0, 0.0],
        },
        Case {
            // Cluster weights apply to every source and override locality failover.
            name: "cluster weights override locality LB; unlisted cluster gets 0",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1@a", true),
                    ep("r2/z1/s1@b", true),
                    ep("r1/z1/s1@c", true),
                ],
            )
            .lb(failover("r1", "r2"))
            .cluster_weights(weights(&[("a", 50), ("b", 50)])),
            mode: Mode::ClusterWeights,
            shares: vec![0.5, 0.5, 0.0],
        },
        Case {
            name: "endpoint weights within a level; weight 0 gets nothing",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep_w("r1/z1/s1", 0, true),
                    ep_w("r1/z1/s1", 1, true),
                    ep_w("r1/z1/s1", 3, true),
                ],
            ),
            mode: Mode::Failover,
            shares: vec![0.0, 0.25, 0.75],
        },
        Case {
            // A weight-0 endpoint is not a host: it does not keep P0 "healthy".
            name: "weight 0 endpoint does not count for priority health",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![ep_w("r1/z1/s1", 0, true), ep("r2/z1/s1", true)],
            ),
            mode: Mode::Failover,
            shares: vec![0.0, 1.0],
        },
        Case {
            name: "no endpoints",
            scenario: Scenario::new("r1/z1/s1", vec![]),
            mode: Mode::Failover,
            shares: vec![],
        },
    ];
    for case in cases {
        let out = case.scenario.run();
        assert_eq!(out.mode, case.mode, "{}", case.name);
        assert_shares(case.name, &out.shares, &case.shares);
    }
}

/// Panic threshold (Envoy `recalculatePerPriorityPanic`, `isHostSetInPanic`,
/// `recalculateLoadInTotalPanic`) and the nothing-healthy case.
#[test]
fn panic_threshold() {
    struct Case {
        name: &'static str,
        scenario: Scenario,
        panic: bool,
        loads: Vec<f64>,
        shares: Vec<f64>,
    }
    let p0_p1 = |p0: (usize, usize), p1: (usize, usize)| {
        let mut endpoints = block("r1/z1/s1", p0.0, p0.1);
        endpoints.extend(block("r2/z1/s1", p1.0, p1.1));
        endpoints
    };
    let cases = vec![
        Case {
            name: "one level below the threshold routes to all hosts",
            scenario: Scenario::new("r1/z1/s1", block("r1/z1/s1", 4, 1)).min_health(50),
            panic: true,
            loads: vec![100.0],
            shares: vec![0.25; 4],
        },
        Case {
            name: "one level above the threshold keeps to healthy hosts",
            scenario: Scenario::new("r1/z1/s1", block("r1/z1/s1", 4, 1)).min_health(20),
            panic: false,
            loads: vec![100.0],
            shares: vec![1.0, 0.0, 0.0, 0.0],
        },
        Case {
            name: "threshold 0 never panics",
            scenario: Scenario::new("r1/z1/s1", block("r1/z1/s1", 4, 1)),
            panic: false,
            loads: vec![100.0],
            shares: vec![1.0, 0.0, 0.0, 0.0],
        },
        Case {
            // 75% healthy < 100% threshold, but health 105 caps at 100: no panic.
            name: "no panic when total health is 100",
            scenario: Scenario::new("r1/z1/s1", block("r1/z1/s1", 4, 3)).min_health(100),
            panic: false,
            loads: vec![100.0],
            shares: vec![1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0],
        },
        Case {
            // P0 25% (health 35) is below 50, but P1 brings the total to 100.
            name: "a sick level is not in panic when others cover the load",
            scenario: Scenario::new("r1/z1/s1", p0_p1((4, 1), (4, 4))).min_health(50),
            panic: false,
            loads: vec![35.0, 65.0],
            shares: vec![0.35, 0.0, 0.0, 0.0, 0.1625, 0.1625, 0.1625, 0.1625],
        },
        Case {
            // Health 35 + 35 = 70 < 100 and both levels are 25% < 50: total panic, load by
            // host count.
            name: "every level in panic: load by host count",
            scenario: Scenario::new("r1/z1/s1", p0_p1((4, 1), (4, 1))).min_health(50),
            panic: true,
            loads: vec![50.0, 50.0],
            shares: vec![0.125; 8],
        },
        Case {
            // P0 20% (health 28) < 30 panics; P1 30% (health 42) does not. Loads stay by
            // health: 28/70 and 42/70.
            name: "one level in panic, the other not",
            scenario: Scenario::new("r1/z1/s1", p0_p1((5, 1), (10, 3))).min_health(30),
            panic: true,
            loads: vec![40.0, 60.0],
            shares: [vec![0.08; 5], vec![0.2; 3], vec![0.0; 7]].concat(),
        },
        Case {
            name: "nothing healthy, threshold > 0: total panic",
            scenario: Scenario::new("r1/z1/s1", p0_p1((1, 0), (3, 0))).min_health(50),
            panic: true,
            loads: vec![25.0, 75.0],
            shares: vec![0.25; 4],
        },
        Case {
            // Envoy assigns 100% to P0 but finds no healthy host there.
            name: "nothing healthy, panic off: no endpoint takes traffic",
            scenario: Scenario::new("r1/z1/s1", p0_p1((1, 0), (3, 0))),
            panic: false,
            loads: vec![0.0, 0.0],
            shares: vec![0.0; 4],
        },
        Case {
            // Panic ignores locality weights (hostSourceToUse checks panic first).
            name: "panic ignores cluster weights",
            scenario: Scenario::new(
                "r1/z1/s1",
                vec![
                    ep("r1/z1/s1@a", false),
                    ep("r2/z1/s1@b", true),
                    ep("r2/z1/s1@b", false),
                    ep("r2/z1/s1@b", false),
                ],
            )
            .cluster_weights(weights(&[("a", 90), ("b", 10)]))
            .min_health(50),
            panic: true,
            loads: vec![100.0],
            shares: vec![0.25; 4],
        },
    ];
    for case in cases {
        let out = case.scenario.run();
        assert_eq!(out.panic, case.panic, "{}: panic", case.name);
        let loads: Vec<f64> = out.priorities.iter().map(|p| p.load_percent).collect();
        assert_shares(case.name, &loads, &case.loads);
        assert_shares(case.name, &out.shares, &case.shares);
    }
}

#[test]
fn maglev_weights_rounding() {
    /// (name, shares, exact weights if they are pinned)
    type Case = (&'static str, Vec<f64>, Option<Vec<u32>>);
    let tiny = 1e-9;
    let cases: Vec<Case> = vec![
        ("halves", vec![0.5, 0.5], Some(vec![500_000, 500_000])),
        (
            "thirds",
            vec![1.0 / 3.0; 3],
            Some(vec![333_334, 333_333, 333_333]),
        ),
        ("zero stays zero", vec![0.0, 1.0], Some(vec![0, 1_000_000])),
        (
            "70/15/15",
            vec![0.7, 0.15, 0.15],
            Some(vec![700_000, 150_000, 150_000]),
        ),
        ("tiny share keeps a slot", vec![tiny, 1.0 - tiny], None),
        (
            "many tiny shares",
            vec![tiny, tiny, tiny, 1.0 - 3.0 * tiny],
            None,
        ),
        (
            "unnormalised input",
            vec![2.0, 6.0],
            Some(vec![250_000, 750_000]),
        ),
        ("empty", vec![], Some(vec![])),
        ("all zero", vec![0.0, 0.0], Some(vec![0, 0])),
        (
            "invalid shares are zero",
            vec![f64::NAN, -1.0, 0.5],
            Some(vec![0, 0, 1_000_000]),
        ),
    ];
    for (name, shares, want) in cases {
        let got = maglev_weights(&shares);
        assert_eq!(got.len(), shares.len(), "{name}");
        if let Some(want) = want {
            assert_eq!(got, want, "{name}");
        }
        let positive = shares.iter().filter(|s| s.is_finite() && **s > 0.0).count() as u32;
        let sum: u32 = got.iter().sum();
        if positive > 0 {
            assert!(
                (MAGLEV_WEIGHT_TOTAL..=MAGLEV_WEIGHT_TOTAL + positive).contains(&sum),
                "{name}: sum {sum}"
            );
        }
        for (s, w) in shares.iter().zip(&got) {
            let positive = s.is_finite() && *s > 0.0;
            assert_eq!(*w > 0, positive, "{name}: share {s} → weight {w}");
        }
    }
}

/// Invariants over a deterministic grid of inputs: shares are finite and non-negative, sum
/// to 1 or are all 0, weight-0 endpoints get nothing, a level's load equals its endpoints'
/// shares, and traffic is never dropped while a healthy (or, in panic, any) host exists in
/// the host set.
#[test]
fn shares_sum_to_one_or_zero() {
    // A small linear congruential generator keeps the grid reproducible.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let regions = ["r1", "r2", "r3"];
    let zones = ["z1", "z2"];
    let clusters = ["a", "b"];
    for round in 0..3000 {
        let count = next(9) as usize;
        let endpoints: Vec<Endpoint<'static>> = (0..count)
            .map(|_| {
                let spec = format!(
                    "{}/{}/s1@{}",
                    regions[next(3) as usize],
                    zones[next(2) as usize],
                    clusters[next(2) as usize]
                );
                ep_w(&spec, next(4) as u32, next(3) > 0)
            })
            .collect();
        let lb = match next(7) {
            0 => None,
            1 => Some(LocalityLb {
                enabled: false,
                ..LocalityLb::default()
            }),
            2 => Some(failover("r1", "r2")),
            3 => Some(failover_priority(&[REGION, ZONE])),
            4 => Some(LocalityLb {
                failover_priority: vec!["version".into()],
                ..failover("r1", "r3")
            }),
            5 => Some(distribute(
                "r1",
                &[("r1/z1", 60), ("r2", 30), ("r3/z2", 10)],
            )),
            _ => Some(distribute("r2/z2", &[("*", 100)])),
        };
        let cluster_weights = match next(4) {
            0 => Some(weights(&[("a", 20), ("b", 80)])),
            1 => Some(weights(&[("a", 100)])),
            _ => None,
        };
        let min_health = [0, 0, 30, 50, 70, 100, 150][next(7) as usize];
        let mut scenario = Scenario::new(
            ["r1/z1/s1", "r2/z2/s1", "r3/z1/s1"][next(3) as usize],
            endpoints,
        )
        .min_health(min_health);
        scenario.lb = lb;
        scenario.outlier_detection = next(2) == 0;
        scenario.cluster_weights = cluster_weights;
        let out = scenario.run();

        let case = format!("round {round}");
        assert_eq!(out.shares.len(), count, "{case}");
        assert!(
            out.shares.iter().all(|s| s.is_finite() && *s >= 0.0),
            "{case}: {:?}",
            out.shares
        );
        let sum: f64 = out.shares.iter().sum();
        assert!(
            sum.abs() < 1e-9 || (sum - 1.0).abs() < 1e-9,
            "{case}: shares sum to {sum}"
        );
        for (e, s) in scenario.endpoints.iter().zip(&out.shares) {
            if e.weight == 0 {
                assert_eq!(*s, 0.0, "{case}: weight-0 endpoint got traffic");
            }
        }
        for level in &out.priorities {
            let level_share: f64 = level.endpoints.iter().map(|&i| out.shares[i]).sum();
            assert!(
                (level.load_percent - 100.0 * level_share).abs() < 1e-6,
                "{case}: P{} load {} vs shares {level_share}",
                level.level,
                level.load_percent
            );
        }
        let hosts: Vec<&Endpoint> = out
            .priorities
            .iter()
            .flat_map(|p| &p.endpoints)
            .map(|&i| &scenario.endpoints[i])
            .collect();
        let reachable = hosts.iter().any(|e| e.healthy) || (min_health > 0 && !hosts.is_empty());
        assert_eq!(
            (sum - 1.0).abs() < 1e-9,
            reachable,
            "{case}: sum {sum} with {} hosts",
            hosts.len()
        );
    }
}

/// failoverPriority reads a topology label from the endpoint's locality, over a label of the
/// same key on the endpoint itself (Istio overwrites them from the locality), and any other key
/// from the endpoint's labels.
#[test]
fn topology_labels_come_from_the_locality() {
    let endpoint = labelled(
        labelled(ep("r1/z1/s1", true), REGION, "elsewhere"),
        "version",
        "v2",
    );
    assert_eq!(endpoint.label(REGION), "r1");
    assert_eq!(endpoint.label(SUBZONE_LABEL), "s1");
    assert_eq!(endpoint.label("version"), "v2");
    assert_eq!(endpoint.label("absent"), "");
}
