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
//!    sense in which failoverPriority "overrides" failover (docs/SEMANTICS.md, "Locality load
//!    balancing"): failoverPriority decides first, but `failover` is not discarded. Istio's validation rejects `failover` combined with
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

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
};

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

/// One backend of the service. Locality and labels are borrowed from the caller's model where
/// it has one: at 100,000 services a full apply builds a million of these, and cloning their
/// strings was most of the policy computation's time.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Endpoint<'a> {
    pub locality: Cow<'a, Locality>,
    /// Labels matched by failoverPriority (e.g. `version`); the topology labels come from
    /// `locality` and win over these (see [`Endpoint::label`]).
    pub labels: Cow<'a, BTreeMap<String, String>>,
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

/// The topology labels Istio derives from an endpoint's locality.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";

impl Locality {
    /// The value of a topology label (`key` one of the four above), None for any other key.
    pub fn topology_label(&self, key: &str) -> Option<&str> {
        match key {
            REGION_LABEL => Some(&self.region),
            ZONE_LABEL => Some(&self.zone),
            SUBZONE_LABEL => Some(&self.subzone),
            CLUSTER_LABEL => Some(&self.cluster),
            _ => None,
        }
    }
}

impl Endpoint<'_> {
    /// A label as failoverPriority matches it: the locality's topology label, else the
    /// endpoint's own, else empty.
    pub fn label(&self, key: &str) -> &str {
        self.locality
            .topology_label(key)
            .or_else(|| self.labels.get(key).map(String::as_str))
            .unwrap_or("")
    }
}

/// Everything the share computation depends on.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    pub client: &'a Locality,
    pub client_labels: &'a BTreeMap<String, String>,
    pub endpoints: &'a [Endpoint<'a>],
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
            ..e.locality.as_ref().clone()
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
        let actual = endpoint.label(key);
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
mod tests;
