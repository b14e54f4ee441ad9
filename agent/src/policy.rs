//! Steering policy arithmetic: the share of new flows each endpoint of a service receives, as
//! seen from one node (the client locality).
//!
//! Pure code, no IO. The rules are Istio's translation of `localityLbSetting` into Envoy
//! priorities and locality weights, followed by Envoy's steady-state load arithmetic over them,
//! so that a DestinationRule means the same thing here as in a sidecar. Sources (read from the
//! upstream repositories, file names given so the rules can be re-checked):
//!
//! - istio/istio `pilot/pkg/networking/core/loadbalancer/loadbalancer.go`
//!   (`GetLocalityLbSetting`, `ApplyLocalityLoadBalancer`, `applyLocalityFailover`,
//!   `applyFailoverPriorities`, `applyLocalityWeights`),
//!   `pilot/pkg/networking/util/util.go` (`LbPriority`, `LocalityMatch`),
//!   `pilot/pkg/networking/core/cluster_traffic_policy.go` (`applyLocalityLoadBalancer`),
//!   `pilot/pkg/xds/endpoints/endpoint_builder.go` (failover only with outlier detection),
//!   `pkg/config/mesh/mesh.go` (mesh default `localityLbSetting.enabled = true`),
//!   `pkg/config/validation/agent/validation.go` (`ValidateLocalityLbSetting`).
//! - envoyproxy/envoy `source/extensions/load_balancing_policies/common/load_balancer_impl.cc`
//!   (`recalculatePerPriorityState`, `distributeLoad`, `recalculatePerPriorityPanic`,
//!   `isHostSetInPanic`, `recalculateLoadInTotalPanic`, `hostSourceToUse`) and
//!   `source/common/upstream/upstream_impl.cc` (`HostSetImpl::effectiveLocalityWeight`).
//!
//! # Pinned behaviour
//!
//! 1. **Which setting applies** (`GetLocalityLbSetting`). `locality_lb: None` is Istio's mesh
//!    default, `{enabled: true}` with no rules; `enabled: false` turns locality LB off, which
//!    leaves [`Mode::Plain`].
//! 2. **Distribute wins over failover** (`ApplyLocalityLoadBalancer`: `if distribute … else if
//!    enableFailover`). Distribute applies with or without outlier detection.
//! 3. **Failover needs outlier detection** (`endpoint_builder.go`: `enableFailover` is "outlier
//!    detection is set"). Without it, failover and failoverPriority are ignored: [`Mode::Plain`].
//! 4. **Default failover.** With outlier detection and no rules, Istio still assigns priorities
//!    by `LbPriority`: P0 same region/zone/subzone, P1 same region/zone, P2 same region, P3 the
//!    rest ([`Mode::Failover`]).
//! 5. **Failover rules** (`applyLocalityFailover`). Only endpoints outside the client's region
//!    are affected. The first rule whose `from` equals the client's region decides: endpoints in
//!    its `to` region keep level 3, all others drop to level 4. A rule for another `from` region
//!    has no effect.
//! 6. **Empty levels are compacted** (`applyLocalityFailover` step 2, `applyFailoverPriorities`):
//!    levels are renumbered 0..N without gaps, so a priority never has zero hosts. Had one
//!    existed, Envoy would give it health 0 and therefore no load; compaction makes that moot.
//! 7. **failoverPriority** (`applyFailoverPriorityPerLocality`). With N labels, an endpoint's
//!    level is N − (index of the first label whose value differs from the client's), 0 if all
//!    match. A missing label counts as the empty string on either side. `key=value` entries
//!    compare the endpoint against `value` instead of the client's label. If the client has no
//!    labels at all, Istio skips the step and every endpoint stays at level 0.
//! 8. **failoverPriority together with failover.** Istio does not drop `failover`: it applies
//!    failoverPriority first and then, only if `failover` is non-empty, `applyLocalityFailover`
//!    on top, with level = failoverPriority level × 5 + locality level, then compacts. So the
//!    labels decide first and the region rules only order endpoints *within* one label level.
//!    Without `failover`, failoverPriority alone decides (no region/zone levels). This is the
//!    sense in which SEMANTICS.md's "overrides failover" holds: failoverPriority decides first,
//!    but `failover` is not discarded. Istio's validation rejects `failover` combined with
//!    region/zone/subzone labels in failoverPriority, the case where the two would conflict.
//! 9. **Locality weighting is on** only where Istio sets Envoy's `locality_weighted_lb_config`
//!    (`cluster_traffic_policy.go`): when `distribute` is set, or when failover is enabled and
//!    `failover` or `failoverPriority` is non-empty. The default failover of rule 4 balances
//!    over hosts within a priority, not over localities. Without a distribute rule, a
//!    locality's weight is the sum of its endpoints' weights (Istio's default
//!    `LocalityLbEndpoints.load_balancing_weight`). A group here is the endpoints of one
//!    `region/zone/subzone` within one priority, whatever their cluster.
//! 10. **Distribute** (`applyLocalityWeights`). The first rule, in list order, whose `from`
//!     matches the client applies; if none matches, nothing is changed (all endpoints in one
//!     priority, locality weighting still on per rule 9, [`Mode::Plain`]). Patterns are
//!     `region/zone/subzone` where `*` matches anything and a missing or empty zone/subzone
//!     matches anything (`LocalityMatch`). A `to` weight is split across the localities it
//!     matches in proportion to their endpoint-weight sums. Localities matched by no `to` entry
//!     lose their endpoints and get nothing. Istio rounds the split weight up to an integer
//!     (`math.Ceil`); here it stays a real number. Istio visits `to` in Go map order, which is
//!     unspecified; here the most specific pattern claims a locality first (ties: key order).
//!     Istio's validation rejects overlapping `to` patterns and zero weights, so this only
//!     decides configs Istio would refuse. A `to` weight of 0 gives nothing.
//! 11. **Cluster weights** (ALB `cluster-weight`, not an Istio field). All endpoints in one
//!     priority, locality weighting over the `cluster` dimension with the configured weights;
//!     clusters that are not listed, or listed with 0, lose their endpoints, as unlisted
//!     localities do under distribute. Takes precedence over `locality_lb` (the two are
//!     validated elsewhere to be exclusive).
//! 12. **Endpoint weight 0.** Envoy requires `load_balancing_weight` ≥ 1, so it never has such a
//!     host. An endpoint with weight 0 is left out of the host set before anything else: it
//!     counts towards no priority or locality and never receives new flows.
//! 13. **Priority health and load** (`recalculatePerPriorityState`, `distributeLoad`).
//!     health(P) = min(100, 140 × healthy/total), by host count (Envoy's default; weighted
//!     priority health is off). Load is poured into P0, P1, … each up to health × 100 / T, where
//!     T = min(100, Σ health). Envoy works in integer percent; here it is real-valued, which is
//!     what the reference vectors (71% healthy → 99.4 / 0.6) require.
//! 14. **Locality weight with availability** (`effectiveLocalityWeight`). effective(L) =
//!     weight(L) × min(1, 1.4 × healthy/total), renormalised within the priority. Then the
//!     locality's healthy endpoints share its part by endpoint weight. If every effective weight
//!     of a priority is 0, Envoy falls back to the priority's healthy hosts (`hostSourceToUse`).
//!     This is the locality-weighted rule of Envoy's default Istio policies (LEAST_REQUEST and
//!     ROUND_ROBIN); geosteer then realises the shares with Maglev.
//! 15. **Panic threshold** (`recalculatePerPriorityPanic`, `isHostSetInPanic`). threshold =
//!     min(100, `min_health_percent`). No priority panics when T = 100. Otherwise a priority
//!     panics when its raw healthy percentage (no 1.4 factor) is below the threshold, and a
//!     panicking priority sends its load to all its hosts by endpoint weight, ignoring health
//!     *and* locality weights (the panic check comes first in `hostSourceToUse`). If every
//!     priority panics, the load per priority is proportional to its host count
//!     (`recalculateLoadInTotalPanic`). A threshold of 0 never panics.
//! 16. **Nothing healthy, panic off.** Envoy puts 100% of the load on P0, but P0 has no healthy
//!     host, so nothing is picked ("no healthy upstream"). Here every share is 0, no level
//!     panics, and every `load_percent` is 0 (not Envoy's nominal 100 on P0), so that a level's
//!     `load_percent` always equals 100 × the sum of its endpoints' shares. With a threshold
//!     above 0 the same state is total panic (rule 15), so traffic goes to all hosts.
//! 17. **Not modelled**: degraded hosts (none exist here), Envoy zone-aware routing (needs a local
//!     cluster, which Istio does not configure), slow start, and Istio's `PreferClose`
//!     traffic distribution.

use std::collections::{BTreeMap, BTreeSet};

/// Envoy's default overprovisioning factor, in percent (`kDefaultOverProvisioningFactor`).
const OVERPROVISIONING_PERCENT: f64 = 140.0;

/// `applyLocalityFailover` produces at most five levels (0..=4), so it multiplies the
/// failoverPriority level by 5 to keep that level as the major key.
const LOCALITY_FAILOVER_LEVELS: usize = 5;

/// Istio's separator for `key=value` entries in failoverPriority
/// (`FailoverPriorityLabelDefaultSeparator`).
const FAILOVER_PRIORITY_SEPARATOR: char = '=';

/// Total of the integer weights returned by [`maglev_weights`].
pub const MAGLEV_WEIGHT_TOTAL: u32 = 1_000_000;

/// Tolerance for comparing real-valued percentages that Envoy keeps as integers.
const EPSILON: f64 = 1e-9;

/// region/zone/subzone + cluster of an endpoint or of the client (node).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
    pub cluster: String,
}

impl Locality {
    /// `region/zone/subzone`, the form Istio uses for a locality label and in `distribute`.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// One backend of the service.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub locality: Locality,
    /// Labels matched by failoverPriority (e.g. `topology.kubernetes.io/region`); the caller
    /// fills the topology labels from the locality too.
    pub labels: BTreeMap<String, String>,
    /// Endpoint weight (Istio default 1); 0 means it never receives new flows.
    pub weight: u32,
    /// Not ejected by outlier detection (and otherwise fit to serve).
    pub healthy: bool,
}

/// `failover: [{from, to}]`, region names.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Failover {
    pub from: String,
    pub to: String,
}

/// `distribute: [{from, to}]`: `region/zone/subzone` patterns with `*` wildcards, e.g.
/// `cn-hangzhou/*`; the `to` weights sum to 100 (validated elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Distribute {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

/// `trafficPolicy.loadBalancer.localityLbSetting`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityLb {
    /// The priorities apply without outlierDetection (rule 3 does not hold): set for a
    /// Service's `trafficDistribution`, which asks for closeness whatever the health policy.
    pub without_outlier_detection: bool,
    pub enabled: bool,
    pub failover: Vec<Failover>,
    pub failover_priority: Vec<String>,
    pub distribute: Vec<Distribute>,
}

impl Default for LocalityLb {
    /// Istio's mesh default (`pkg/config/mesh/mesh.go`): enabled, no rules.
    fn default() -> Self {
        LocalityLb {
            without_outlier_detection: false,
            enabled: true,
            failover: Vec::new(),
            failover_priority: Vec::new(),
            distribute: Vec::new(),
        }
    }
}

/// Everything the share computation depends on.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    pub client: &'a Locality,
    pub client_labels: &'a BTreeMap<String, String>,
    pub endpoints: &'a [Endpoint],
    /// None = Istio's mesh default (locality LB enabled, no rules).
    pub locality_lb: Option<&'a LocalityLb>,
    /// Whether outlierDetection is configured; failover needs it (Istio).
    pub outlier_detection: bool,
    /// ALB per-cluster weights; validated elsewhere to be exclusive with distribute.
    pub cluster_weights: Option<&'a BTreeMap<String, u32>>,
    /// Panic threshold in percent; 0 = panic off (Istio's default).
    pub min_health_percent: u32,
}

/// Which rule shaped the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// One priority, endpoint weights only (possibly locality-weighted, see rule 10).
    #[default]
    Plain,
    /// Region/zone/subzone priorities, with or without `failover` rules.
    Failover,
    /// failoverPriority labels (possibly refined by `failover`, see rule 8).
    FailoverPriority,
    /// A `distribute` rule matched the client.
    Distribute,
    /// ALB per-cluster weights.
    ClusterWeights,
}

/// One Envoy priority level.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PriorityView {
    pub level: usize,
    /// Indices into the input endpoints.
    pub endpoints: Vec<usize>,
    pub healthy: usize,
    pub total: usize,
    /// Envoy's "health": min(100, 140 × healthy/total).
    pub health_percent: f64,
    /// Share of new flows sent to this level, in percent.
    pub load_percent: f64,
    /// The level ignores health (panic threshold).
    pub panic: bool,
}

/// One group used for locality weighting: a `region/zone/subzone` or, with cluster weights, a
/// cluster, within one priority.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LocalityView {
    pub priority: usize,
    pub name: String,
    pub configured_weight: f64,
    /// weight × min(1, 1.4 × healthy/total), renormalised within the priority, in percent.
    pub effective_weight_percent: f64,
    pub healthy: usize,
    pub total: usize,
}

/// The result of [`compute`].
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PolicyOutput {
    /// Share of new flows each endpoint (same order as input) receives; sums to 1.0, or all 0.0
    /// when no endpoint can take traffic (e.g. empty input).
    pub shares: Vec<f64>,
    pub mode: Mode,
    pub priorities: Vec<PriorityView>,
    /// Groups used for locality weighting; empty when locality weighting is off.
    pub localities: Vec<LocalityView>,
    /// Whether Envoy would have `locality_weighted_lb_config` on (rule 9).
    pub locality_weighted: bool,
    /// Some level that receives load is in panic, so unhealthy endpoints get flows.
    pub panic: bool,
}

/// Computes the share of new flows for every endpoint, as Istio + Envoy would.
pub fn compute(input: &PolicyInput) -> PolicyOutput {
    let plan = plan(input);
    let mut shares = vec![0.0; input.endpoints.len()];

    // Renumber the raw levels 0..N without gaps, as Istio does before handing them to Envoy.
    let raw_levels: BTreeSet<usize> = plan.members.iter().map(|m| m.raw_priority).collect();
    let raw_levels: Vec<usize> = raw_levels.into_iter().collect();
    let mut priorities: Vec<PriorityView> = (0..raw_levels.len())
        .map(|level| PriorityView {
            level,
            ..PriorityView::default()
        })
        .collect();
    let mut members_by_level: Vec<Vec<&Member>> = vec![Vec::new(); raw_levels.len()];
    for member in &plan.members {
        let level = raw_levels
            .binary_search(&member.raw_priority)
            .expect("every raw level was collected above");
        members_by_level[level].push(member);
        let view = &mut priorities[level];
        view.endpoints.push(member.index);
        view.total += 1;
        if input.endpoints[member.index].healthy {
            view.healthy += 1;
        }
    }
    for view in &mut priorities {
        view.health_percent = overprovisioned(view.healthy, view.total);
    }

    let (loads, panics) = priority_loads(&priorities, input.min_health_percent);
    let mut localities = Vec::new();
    for (level, members) in members_by_level.iter().enumerate() {
        priorities[level].load_percent = loads[level];
        priorities[level].panic = panics[level];
        let groups = if plan.weighting == Weighting::None {
            Vec::new()
        } else {
            group_views(level, members, input.endpoints, &plan.weighting)
        };
        let load = loads[level] / 100.0;
        if load > 0.0 {
            spread_over_level(
                load,
                panics[level],
                members,
                &groups,
                input.endpoints,
                &mut shares,
            );
        }
        localities.extend(groups.into_iter().map(|g| g.view));
    }

    // The arithmetic above already sums to 1; this only removes floating-point drift.
    let total: f64 = shares.iter().sum();
    if total > 0.0 {
        for share in &mut shares {
            *share /= total;
        }
    }

    let panic = priorities.iter().any(|p| p.panic && p.load_percent > 0.0);
    PolicyOutput {
        shares,
        mode: plan.mode,
        priorities,
        localities,
        locality_weighted: plan.weighting != Weighting::None,
        panic,
    }
}

/// Converts shares to integer Maglev weights summing to about [`MAGLEV_WEIGHT_TOTAL`]: the
/// largest-remainder method makes the sum exact, then every endpoint with a share > 0 is raised
/// to at least 1 so that it keeps a slot (the sum may then exceed the total by a few units).
/// A share of 0 (or a negative or non-finite one) gives 0.
pub fn maglev_weights(shares: &[f64]) -> Vec<u32> {
    let usable = |s: f64| if s.is_finite() && s > 0.0 { s } else { 0.0 };
    let total: f64 = shares.iter().map(|&s| usable(s)).sum();
    if total <= 0.0 {
        return vec![0; shares.len()];
    }
    let scale = f64::from(MAGLEV_WEIGHT_TOTAL);
    let exact: Vec<f64> = shares.iter().map(|&s| usable(s) / total * scale).collect();
    let mut weights: Vec<u32> = exact.iter().map(|&x| x.floor() as u32).collect();

    // Hand the units lost to flooring to the largest fractional parts (ties: lower index).
    let assigned: u32 = weights.iter().sum();
    let mut order: Vec<usize> = (0..shares.len()).filter(|&i| exact[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    let missing = MAGLEV_WEIGHT_TOTAL.saturating_sub(assigned) as usize;
    for &i in order.iter().take(missing) {
        weights[i] += 1;
    }

    for (weight, &x) in weights.iter_mut().zip(&exact) {
        if x > 0.0 && *weight == 0 {
            *weight = 1;
        }
    }
    weights
}

/// An endpoint that is part of Envoy's host set, with its raw (uncompacted) priority and the
/// group it is weighted in.
#[derive(Clone, Debug)]
struct Member {
    index: usize,
    raw_priority: usize,
    group: String,
}

/// How the groups of a priority are weighted against each other.
#[derive(Clone, Debug, PartialEq)]
enum Weighting {
    /// No locality weighting: healthy hosts of a priority by endpoint weight.
    None,
    /// Istio's default locality weight: the sum of the group's endpoint weights.
    EndpointSums,
    /// Configured weights by group name (distribute, cluster weights).
    Configured(BTreeMap<String, f64>),
}

struct Plan {
    mode: Mode,
    members: Vec<Member>,
    weighting: Weighting,
}

/// Decides the mode, the raw priority and group of every endpoint, and the group weights
/// (rules 1–12).
fn plan(input: &PolicyInput) -> Plan {
    // Rule 12: weight-0 endpoints are not hosts at all.
    let hosts: Vec<(usize, &Endpoint)> = input
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.weight > 0)
        .collect();
    let by_locality = |raw_priority: &dyn Fn(&Endpoint) -> usize| -> Vec<Member> {
        hosts
            .iter()
            .map(|&(index, e)| Member {
                index,
                raw_priority: raw_priority(e),
                group: e.locality.label(),
            })
            .collect()
    };

    // Rule 11.
    if let Some(cluster_weights) = input.cluster_weights {
        let configured: BTreeMap<String, f64> = cluster_weights
            .iter()
            .filter(|&(_, &w)| w > 0)
            .map(|(cluster, &w)| (cluster.clone(), f64::from(w)))
            .collect();
        let members = hosts
            .iter()
            .filter(|(_, e)| configured.contains_key(&e.locality.cluster))
            .map(|&(index, e)| Member {
                index,
                raw_priority: 0,
                group: e.locality.cluster.clone(),
            })
            .collect();
        return Plan {
            mode: Mode::ClusterWeights,
            members,
            weighting: Weighting::Configured(configured),
        };
    }

    // Rule 1.
    let mesh_default = LocalityLb::default();
    let lb = match input.locality_lb {
        None => &mesh_default,
        Some(lb) if lb.enabled => lb,
        Some(_) => {
            return Plan {
                mode: Mode::Plain,
                members: by_locality(&|_| 0),
                weighting: Weighting::None,
            };
        }
    };

    // Rules 2 and 10.
    if !lb.distribute.is_empty() {
        return match lb
            .distribute
            .iter()
            .find(|rule| locality_matches(input.client, &rule.from))
        {
            Some(rule) => distribute_plan(&hosts, rule),
            None => Plan {
                mode: Mode::Plain,
                members: by_locality(&|_| 0),
                weighting: Weighting::EndpointSums,
            },
        };
    }

    // Rule 3.
    if !input.outlier_detection && !lb.without_outlier_detection {
        return Plan {
            mode: Mode::Plain,
            members: by_locality(&|_| 0),
            weighting: Weighting::None,
        };
    }

    // Rules 7 and 8.
    if !lb.failover_priority.is_empty() {
        let members = by_locality(&|e| {
            let by_labels = failover_priority_level(input.client_labels, e, &lb.failover_priority);
            let by_region = if lb.failover.is_empty() {
                0
            } else {
                locality_failover_level(input.client, &e.locality, &lb.failover)
            };
            by_labels * LOCALITY_FAILOVER_LEVELS + by_region
        });
        return Plan {
            mode: Mode::FailoverPriority,
            members,
            weighting: Weighting::EndpointSums,
        };
    }

    // Rules 4, 5 and 9.
    Plan {
        mode: Mode::Failover,
        members: by_locality(&|e| locality_failover_level(input.client, &e.locality, &lb.failover)),
        weighting: if lb.failover.is_empty() {
            Weighting::None
        } else {
            Weighting::EndpointSums
        },
    }
}

/// Rule 10: one priority, a configured weight per locality; unmatched localities drop out.
fn distribute_plan(hosts: &[(usize, &Endpoint)], rule: &Distribute) -> Plan {
    // A locality's original weight in Istio is the sum of its endpoints' weights.
    let mut locality_sums: BTreeMap<Locality, f64> = BTreeMap::new();
    for (_, e) in hosts {
        let key = Locality {
            cluster: String::new(),
            ..e.locality.clone()
        };
        *locality_sums.entry(key).or_default() += f64::from(e.weight);
    }

    let mut targets: Vec<(&String, u32)> = rule.to.iter().map(|(k, &w)| (k, w)).collect();
    targets.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern_specificity(pattern)));

    let mut configured: BTreeMap<String, f64> = BTreeMap::new();
    let mut claimed: BTreeSet<&Locality> = BTreeSet::new();
    for (pattern, weight) in targets {
        let matched: Vec<(&Locality, f64)> = locality_sums
            .iter()
            .filter(|(l, _)| !claimed.contains(l) && locality_matches(l, pattern))
            .map(|(l, &sum)| (l, sum))
            .collect();
        let matched_total: f64 = matched.iter().map(|(_, sum)| sum).sum();
        for (locality, sum) in matched {
            claimed.insert(locality);
            let split = f64::from(weight) * sum / matched_total;
            if split > 0.0 {
                configured.insert(locality.label(), split);
            }
        }
    }

    let members = hosts
        .iter()
        .filter(|(_, e)| configured.contains_key(&e.locality.label()))
        .map(|&(index, e)| Member {
            index,
            raw_priority: 0,
            group: e.locality.label(),
        })
        .collect();
    Plan {
        mode: Mode::Distribute,
        members,
        weighting: Weighting::Configured(configured),
    }
}

/// Istio `LocalityMatch`: `*` matches any value, and an empty or missing zone/subzone in the
/// pattern matches any value; anything else must be equal.
fn locality_matches(locality: &Locality, pattern: &str) -> bool {
    let (region, zone, subzone) = split_pattern(pattern);
    let matches = |rule: &str, value: &str, empty_is_wildcard: bool| {
        rule == "*" || (empty_is_wildcard && rule.is_empty()) || rule == value
    };
    matches(region, &locality.region, false)
        && matches(zone, &locality.zone, true)
        && matches(subzone, &locality.subzone, true)
}

/// Istio `SplitLocality`: up to three `/`-separated segments, the rest kept in the subzone.
fn split_pattern(pattern: &str) -> (&str, &str, &str) {
    let mut parts = pattern.splitn(3, '/');
    let region = parts.next().unwrap_or("");
    let zone = parts.next().unwrap_or("");
    let subzone = parts.next().unwrap_or("");
    (region, zone, subzone)
}

/// Number of literal (non-wildcard) segments of a `distribute` pattern.
fn pattern_specificity(pattern: &str) -> usize {
    let (region, zone, subzone) = split_pattern(pattern);
    [region, zone, subzone]
        .iter()
        .filter(|s| !s.is_empty() && **s != "*")
        .count()
}

/// Istio `LbPriority` followed by the `failover` rules of `applyLocalityFailover` (rules 4, 5).
fn locality_failover_level(client: &Locality, endpoint: &Locality, failover: &[Failover]) -> usize {
    if client.region == endpoint.region {
        if client.zone == endpoint.zone {
            if client.subzone == endpoint.subzone {
                return 0;
            }
            return 1;
        }
        return 2;
    }
    match failover.iter().find(|rule| rule.from == client.region) {
        Some(rule) if rule.to != endpoint.region => 4,
        _ => 3,
    }
}

/// Istio `applyFailoverPriorityPerLocality` (rule 7).
fn failover_priority_level(
    client_labels: &BTreeMap<String, String>,
    endpoint: &Endpoint,
    failover_priority: &[String],
) -> usize {
    // Istio skips failoverPriority entirely when the proxy has no labels.
    if client_labels.is_empty() {
        return 0;
    }
    let lowest = failover_priority.len();
    for (j, entry) in failover_priority.iter().enumerate() {
        // Like Go's strings.Split: a value override only when there is exactly one separator.
        let parts: Vec<&str> = entry.split(FAILOVER_PRIORITY_SEPARATOR).collect();
        let key = parts[0];
        let wanted = if parts.len() == 2 {
            parts[1]
        } else {
            client_labels.get(key).map(String::as_str).unwrap_or("")
        };
        let actual = endpoint.labels.get(key).map(String::as_str).unwrap_or("");
        if wanted != actual {
            return lowest - j;
        }
    }
    0
}

/// min(100, 140 × healthy/total), Envoy's health of a priority; 0 for an empty set.
fn overprovisioned(healthy: usize, total: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (OVERPROVISIONING_PERCENT * healthy as f64 / total as f64).min(100.0)
}

/// Per-level load in percent and panic flags (rules 13, 15, 16).
fn priority_loads(levels: &[PriorityView], min_health_percent: u32) -> (Vec<f64>, Vec<bool>) {
    let n = levels.len();
    let mut loads = vec![0.0; n];
    let mut panics = vec![false; n];
    if n == 0 {
        return (loads, panics);
    }

    let mut normalized_total: f64 = levels.iter().map(|l| l.health_percent).sum();
    if normalized_total > 100.0 - EPSILON {
        normalized_total = 100.0;
    }
    if normalized_total > 0.0 {
        // Envoy hands its integer rounding remainder to the first level with health; with
        // real numbers nothing remains.
        let mut remaining = 100.0;
        for (load, level) in loads.iter_mut().zip(levels) {
            *load = (level.health_percent * 100.0 / normalized_total).min(remaining);
            remaining -= *load;
        }
    }

    let threshold = f64::from(min_health_percent.min(100));
    if threshold == 0.0 && normalized_total == 0.0 {
        // Envoy nominally gives P0 100% here but then finds no healthy host in it; reporting
        // 0 everywhere keeps `load_percent` equal to what the level's endpoints receive.
        return (loads, panics);
    }
    for (panic, level) in panics.iter_mut().zip(levels) {
        let healthy_percent = 100.0 * level.healthy as f64 / level.total as f64;
        *panic = normalized_total < 100.0 && healthy_percent < threshold;
    }
    if panics.iter().all(|&p| p) {
        let hosts: usize = levels.iter().map(|l| l.total).sum();
        for (load, level) in loads.iter_mut().zip(levels) {
            *load = 100.0 * level.total as f64 / hosts as f64;
        }
    }
    (loads, panics)
}

/// A locality-weighting group of one level and its members' input indices.
struct Group {
    view: LocalityView,
    members: Vec<usize>,
}

/// Builds the groups of one level with configured and effective weights (rules 9–11, 14).
fn group_views(
    level: usize,
    members: &[&Member],
    endpoints: &[Endpoint],
    weighting: &Weighting,
) -> Vec<Group> {
    let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for member in members {
        by_name.entry(&member.group).or_default().push(member.index);
    }
    let mut groups: Vec<Group> = by_name
        .into_iter()
        .map(|(name, indices)| {
            let configured_weight = match weighting {
                Weighting::Configured(weights) => weights.get(name).copied().unwrap_or(0.0),
                _ => indices
                    .iter()
                    .map(|&i| f64::from(endpoints[i].weight))
                    .sum(),
            };
            let healthy = indices.iter().filter(|&&i| endpoints[i].healthy).count();
            Group {
                view: LocalityView {
                    priority: level,
                    name: name.to_string(),
                    configured_weight,
                    // Holds the raw effective weight until renormalised below.
                    effective_weight_percent: configured_weight
                        * overprovisioned(healthy, indices.len())
                        / 100.0,
                    healthy,
                    total: indices.len(),
                },
                members: indices,
            }
        })
        .collect();
    let effective_total: f64 = groups.iter().map(|g| g.view.effective_weight_percent).sum();
    for group in &mut groups {
        group.view.effective_weight_percent = if effective_total > 0.0 {
            100.0 * group.view.effective_weight_percent / effective_total
        } else {
            0.0
        };
    }
    groups
}

/// Splits one level's load (a fraction of all flows) over its endpoints (rules 14, 15).
fn spread_over_level(
    load: f64,
    panic: bool,
    members: &[&Member],
    groups: &[Group],
    endpoints: &[Endpoint],
    shares: &mut [f64],
) {
    let all: Vec<usize> = members.iter().map(|m| m.index).collect();
    if panic {
        by_weight(load, &all, endpoints, false, shares);
        return;
    }
    let weighted: f64 = groups.iter().map(|g| g.view.effective_weight_percent).sum();
    if weighted > 0.0 {
        for group in groups {
            let part = load * group.view.effective_weight_percent / weighted;
            by_weight(part, &group.members, endpoints, true, shares);
        }
    } else {
        by_weight(load, &all, endpoints, true, shares);
    }
}

/// Adds `amount` to the shares of `indices` in proportion to endpoint weight, only over healthy
/// endpoints when `healthy_only`.
fn by_weight(
    amount: f64,
    indices: &[usize],
    endpoints: &[Endpoint],
    healthy_only: bool,
    shares: &mut [f64],
) {
    let eligible = |i: usize| !healthy_only || endpoints[i].healthy;
    let total: f64 = indices
        .iter()
        .filter(|&&i| eligible(i))
        .map(|&i| f64::from(endpoints[i].weight))
        .sum();
    if total <= 0.0 {
        return;
    }
    for &i in indices.iter().filter(|&&i| eligible(i)) {
        shares[i] += amount * f64::from(endpoints[i].weight) / total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION: &str = "topology.kubernetes.io/region";
    const ZONE: &str = "topology.kubernetes.io/zone";

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

    fn ep_w(spec: &str, weight: u32, healthy: bool) -> Endpoint {
        let locality = loc(spec);
        Endpoint {
            labels: topology_labels(&locality),
            locality,
            weight,
            healthy,
        }
    }

    fn ep(spec: &str, healthy: bool) -> Endpoint {
        ep_w(spec, 1, healthy)
    }

    fn labelled(mut endpoint: Endpoint, key: &str, value: &str) -> Endpoint {
        endpoint.labels.insert(key.into(), value.into());
        endpoint
    }

    /// `count` endpoints in one locality, the first `healthy` of them healthy.
    fn block(spec: &str, count: usize, healthy: usize) -> Vec<Endpoint> {
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
        endpoints: Vec<Endpoint>,
        lb: Option<LocalityLb>,
        outlier_detection: bool,
        cluster_weights: Option<BTreeMap<String, u32>>,
        min_health_percent: u32,
    }

    impl Scenario {
        fn new(client: &'static str, endpoints: Vec<Endpoint>) -> Self {
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

    /// SEMANTICS.md "Priority load" vectors (Envoy `recalculatePerPriorityState`): P0 is the
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

    /// SEMANTICS.md "Locality weights with availability" and "Per-cluster weights" vectors
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
                    .filter(|(e, _)| {
                        e.locality.label() == view.name || e.locality.cluster == view.name
                    })
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
                scenario: Scenario::new(
                    "r1/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)],
                )
                .no_outlier_detection(),
                mode: Mode::Plain,
                shares: vec![0.5, 0.5],
            },
            Case {
                // Mesh default is enabled: the local subzone takes everything.
                name: "default locality LB keeps traffic local",
                scenario: Scenario::new(
                    "r1/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)],
                ),
                mode: Mode::Failover,
                shares: vec![1.0, 0.0],
            },
            Case {
                // GetLocalityLbSetting: enabled=false returns no setting.
                name: "locality LB disabled",
                scenario: Scenario::new(
                    "r1/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)],
                )
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
                scenario: Scenario::new(
                    "r1/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r1/z2/s1", true)],
                )
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
                scenario: Scenario::new(
                    "r1/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)],
                )
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
                scenario: Scenario::new(
                    "r1/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r1/z2/s1", true)],
                )
                .lb(distribute("r1", &[("r1/*", 60), ("r1/z2/*", 40)])),
                mode: Mode::Distribute,
                shares: vec![0.6, 0.4],
            },
            Case {
                // Distribute wins over failover and needs no outlier detection.
                name: "distribute without outlier detection",
                scenario: Scenario::new(
                    "r1/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)],
                )
                .lb(distribute("*", &[("r1", 80), ("r2", 20)]))
                .no_outlier_detection(),
                mode: Mode::Distribute,
                shares: vec![0.8, 0.2],
            },
            Case {
                // The first matching `from` applies.
                name: "distribute: first matching rule",
                scenario: Scenario::new(
                    "r2/z1/s1",
                    vec![ep("r1/z1/s1", true), ep("r2/z1/s1", true)],
                )
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
            let endpoints: Vec<Endpoint> = (0..count)
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
            let reachable =
                hosts.iter().any(|e| e.healthy) || (min_health > 0 && !hosts.is_empty());
            assert_eq!(
                (sum - 1.0).abs() < 1e-9,
                reachable,
                "{case}: sum {sum} with {} hosts",
                hosts.len()
            );
        }
    }
}
