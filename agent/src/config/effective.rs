//! Which policy applies to a service, and the warnings about a valid config.
//!
//! Precedence, per field group: the service's own `trafficPolicy`, else the DestinationRule that
//! selects the service, else `defaults.trafficPolicy`. `outlierDetection` and
//! `loadBalancer.localityLbSetting` are resolved independently: the first source that sets the
//! group wins it whole, with no merging inside a group (Istio's rule for localityLbSetting).
//! So a DestinationRule that sets only `outlierDetection` (the ASM tutorial) combines with the
//! mesh-wide failover set in `defaults`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{
    Config, FieldError,
    istio::{bound_rule, ignored_spec_field_message},
    policy::{
        HealthCheck, LocalityLbSetting, OutlierDetection, TrafficPolicy, ignored_field_message,
        service_clusters,
    },
};

/// The policy that applies to one service, with every source resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EffectivePolicy {
    pub outlier_detection: Option<OutlierDetection>,
    /// `None`: no source sets one, which in Istio means the mesh default: enabled, no rules
    /// (locality-prioritised failover when outlier detection is on). A setting with
    /// `enabled: false` is kept as is.
    pub locality_lb: Option<LocalityLbSetting>,
    pub cluster_weights: Option<BTreeMap<String, u32>>,
    /// With `port` filled in: the service's first `targetPort` when the file leaves it out.
    pub health_check: Option<HealthCheck>,
    /// `connectionPool.tcp.connectTimeout`; `None`: the node's `dataplane.connectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `locality_lb` stands for the Service's `trafficDistribution` (no policy set one): its
    /// priorities apply with or without outlier detection.
    pub locality_from_traffic_distribution: bool,
    /// Where each group came from, for people, e.g.
    /// "outlierDetection from DestinationRule default/reviews (asm.yaml)".
    pub sources: Vec<String>,
}

/// Where a trafficPolicy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `services[s].trafficPolicy`
    Service(usize),
    /// `loaded_destination_rules[r]`
    Rule(usize),
    Defaults,
}

impl Source {
    /// The field path of the trafficPolicy, as errors and warnings name it.
    fn path(self, config: &Config) -> String {
        match self {
            Source::Service(s) => format!("services[{s}].trafficPolicy"),
            Source::Rule(r) => format!(
                "{}: spec.trafficPolicy",
                config.loaded_destination_rules[r].path()
            ),
            Source::Defaults => "defaults.trafficPolicy".to_string(),
        }
    }

    fn describe(self, config: &Config) -> String {
        match self {
            Source::Rule(r) => config.loaded_destination_rules[r].describe(),
            _ => self.path(config),
        }
    }

    fn policy(self, config: &Config) -> Option<&TrafficPolicy> {
        match self {
            Source::Service(s) => config.services[s].traffic_policy.as_ref(),
            Source::Rule(r) => config.loaded_destination_rules[r].traffic_policy.as_ref(),
            Source::Defaults => config.defaults.traffic_policy.as_ref(),
        }
    }
}

/// The winning source of each field group of one service.
struct Resolved<'a> {
    outlier_detection: Option<(&'a OutlierDetection, Source)>,
    locality_lb: Option<(&'a LocalityLbSetting, Source)>,
    connect_timeout: Option<(Duration, Source)>,
}

fn resolve(config: &Config, s: usize) -> Resolved<'_> {
    let sources: Vec<(&TrafficPolicy, Source)> = [
        Some(Source::Service(s)),
        bound_rule(config, s).map(Source::Rule),
        Some(Source::Defaults),
    ]
    .into_iter()
    .flatten()
    .filter_map(|source| Some((source.policy(config)?, source)))
    .collect();
    Resolved {
        outlier_detection: sources
            .iter()
            .find_map(|&(policy, source)| Some((policy.outlier_detection.as_ref()?, source))),
        // Istio's order (`GetLocalityLbSetting`): a DestinationRule's (here also the service's
        // own) setting, then the Service's trafficDistribution, then the mesh default.
        locality_lb: sources
            .iter()
            .filter(|(_, source)| {
                *source != Source::Defaults || config.services[s].traffic_distribution.is_none()
            })
            .find_map(|&(policy, source)| Some((policy.locality_lb_setting()?, source))),
        connect_timeout: sources.iter().find_map(|&(policy, source)| {
            Some((policy.connection_pool.as_ref()?.connect_timeout()?, source))
        }),
    }
}

/// The policy that applies to `config.services[service_index]`; see the module docs for the
/// precedence. Panics if there is no such service.
pub fn effective_traffic_policy(config: &Config, service_index: usize) -> EffectivePolicy {
    let service = &config.services[service_index];
    let resolved = resolve(config, service_index);
    let mut sources = Vec::new();
    if let Some((_, source)) = resolved.outlier_detection {
        sources.push(format!("outlierDetection from {}", source.describe(config)));
    }
    if let Some((_, source)) = resolved.locality_lb {
        sources.push(format!(
            "localityLbSetting from {}",
            source.describe(config)
        ));
    }
    if let Some((_, source)) = resolved.connect_timeout {
        sources.push(format!(
            "connectionPool.tcp.connectTimeout from {}",
            source.describe(config)
        ));
    }
    let at = format!("services[{service_index}]");
    if service.cluster_weights.is_some() {
        sources.push(format!("clusterWeights from {at}.clusterWeights"));
    }
    let health_check = service.health_check.clone().map(|mut check| {
        check.port = check
            .port
            .or_else(|| service.ports.first().map(|port| port.target_port));
        sources.push(format!("healthCheck from {at}.healthCheck"));
        check
    });
    // `resolve` left the mesh default out when the Service has a trafficDistribution.
    let mut locality_lb = resolved.locality_lb.map(|(l, _)| l.clone());
    let locality_from_traffic_distribution = locality_lb.is_none()
        && match service.traffic_distribution {
            Some(distribution) => {
                let labels = distribution.failover_priority();
                sources.push(format!(
                    "localityLbSetting from {at}.trafficDistribution {distribution:?} \
                     (failoverPriority [{}])",
                    labels.join(", ")
                ));
                locality_lb = Some(LocalityLbSetting {
                    failover_priority: labels,
                    ..LocalityLbSetting::default()
                });
                true
            }
            None => false,
        };
    EffectivePolicy {
        outlier_detection: resolved.outlier_detection.map(|(o, _)| o.clone()),
        locality_lb,
        locality_from_traffic_distribution,
        cluster_weights: service.cluster_weights.clone(),
        health_check,
        connect_timeout: resolved.connect_timeout.map(|(t, _)| t),
        sources,
    }
}

/// Checks that need the resolved policy of `config.services[s]`.
pub(super) fn validate_effective(config: &Config, s: usize, errors: &mut Vec<FieldError>) {
    let service = &config.services[s];
    let resolved = resolve(config, s);
    // Both set each locality's (or cluster's) share of the load; there is no rule for which
    // one wins, so the config must choose.
    if service.cluster_weights.is_some()
        && let Some((locality, source)) = resolved.locality_lb
        && locality.is_enabled()
        && !locality.distribute.is_empty()
    {
        errors.push(FieldError::new(
            format!("services[{s}].clusterWeights"),
            format!(
                "cannot be combined with localityLbSetting.distribute (set by {}): both \
                 split the load by weight; keep one",
                source.describe(config)
            ),
        ));
    }
}

/// The regions failover rules may name: the node's, every endpoint's and those declared for
/// remote clusters (which stay nameable while a cluster is down).
pub(super) fn known_regions(config: &Config) -> BTreeSet<&str> {
    let endpoints = config.services.iter().flat_map(|s| &s.endpoints);
    let remote_clusters = config.kubernetes.iter().flat_map(|k| &k.clusters);
    std::iter::once(config.node.region.as_str())
        .chain(endpoints.map(|e| e.region.as_str()))
        .chain(remote_clusters.map(|c| c.region.as_str()))
        .filter(|region| !region.is_empty())
        .collect()
}

/// Things in a valid config that probably do not do what the author meant.
pub fn warnings(config: &Config) -> Vec<FieldError> {
    let mut warnings = Vec::new();

    // Fields accepted but not acted on: once per place they are written.
    let mut sources = vec![Source::Defaults];
    sources.extend((0..config.services.len()).map(Source::Service));
    sources.extend((0..config.loaded_destination_rules.len()).map(Source::Rule));
    for source in sources {
        if let Some(policy) = source.policy(config) {
            let at = source.path(config);
            for field in &policy.ignored {
                warnings.push(FieldError::new(
                    format!("{at}.{field}"),
                    ignored_field_message(field),
                ));
            }
        }
    }
    for rule in &config.loaded_destination_rules {
        let at = rule.path();
        for field in &rule.ignored {
            warnings.push(FieldError::new(
                format!("{at}: spec.{field}"),
                ignored_spec_field_message(field),
            ));
        }
        if !rule.host.is_empty() && !config.services.iter().any(|s| rule.selects(s)) {
            let why = if rule.host.contains('*') {
                "wildcard hosts select no service here"
            } else {
                "selects no service in this config"
            };
            warnings.push(FieldError::new(
                format!("{at}: spec.host"),
                format!("{:?} {why}; the rule is not used", rule.host),
            ));
        }
    }

    for s in 0..config.services.len() {
        service_warnings(config, s, &mut warnings);
    }
    let dataplane = &config.dataplane;
    let ipv6_services = config
        .services
        .iter()
        .filter(|s| s.vip.is_ipv6() || s.vip6.is_some())
        .count();
    if ipv6_services > 0 && dataplane.conntrack_size6 < dataplane.conntrack_size {
        warnings.push(FieldError::new(
            "dataplane.conntrackSize6",
            format!(
                "{} with {ipv6_services} IPv6 service(s), below conntrackSize ({}): past {} \
                 IPv6 flows at once the oldest are evicted and re-steered",
                dataplane.conntrack_size6,
                dataplane.conntrack_size,
                dataplane.conntrack_size6 / 2
            ),
        ));
    }
    warnings
}

fn service_warnings(config: &Config, s: usize, warnings: &mut Vec<FieldError>) {
    let service = &config.services[s];
    let resolved = resolve(config, s);
    // Named in the message when the policy is written elsewhere (defaults, a DestinationRule).
    let of_service = |source: Source| match source {
        Source::Service(_) => String::new(),
        _ => format!(" of services[{s}] ({}/{})", service.namespace, service.name),
    };

    if let Some((outlier, source)) = resolved.outlier_detection {
        // Envoy's udp_proxy feeds outlier detection nothing; neither can the kernel.
        for (i, port) in service.ports.iter().enumerate() {
            if port.protocol == super::Protocol::Udp {
                warnings.push(FieldError::new(
                    format!("services[{s}].ports[{i}]"),
                    format!(
                        "UDP port {}: outlierDetection (from {}) has no passive signal on UDP \
                         and ejects nothing here; a healthCheck takes failing endpoints out",
                        port.port,
                        source.describe(config)
                    ),
                ));
            }
        }
        let endpoints = service.endpoints.len() as u32;
        let detects = outlier.consecutive_5xx_errors > 0 || outlier.consecutive_gateway_errors > 0;
        // Envoy ejects only if (ejected + 1) / total ≤ max%, so one ejection needs
        // max% × n ≥ 100 (istio/istio#34605).
        let max = outlier.max_ejection_percent;
        if detects && endpoints > 0 && u64::from(max) * u64::from(endpoints) < 100 {
            let needs = 100u32.div_ceil(endpoints);
            warnings.push(FieldError::new(
                format!(
                    "{}.outlierDetection.maxEjectionPercent",
                    source.path(config)
                ),
                format!(
                    "{max} with {endpoints} endpoints{} never ejects any: needs ≥ {needs}",
                    of_service(source)
                ),
            ));
        }
    }

    if let Some((locality, source)) = resolved.locality_lb
        && locality.is_enabled()
        && resolved.outlier_detection.is_none()
    {
        let at = format!("{}.loadBalancer.localityLbSetting", source.path(config));
        for (field, set) in [
            ("failover", !locality.failover.is_empty()),
            ("failoverPriority", !locality.failover_priority.is_empty()),
        ] {
            if set {
                let message = match source {
                    Source::Service(_) => {
                        "has no effect without outlierDetection (Istio)".to_string()
                    }
                    _ => format!(
                        "has no effect without outlierDetection (Istio); services[{s}] \
                         ({}/{}) has none",
                        service.namespace, service.name
                    ),
                };
                warnings.push(FieldError::new(format!("{at}.{field}"), message));
            }
        }
    }

    // Like `distribute`, clusterWeights sends nothing to what it does not list.
    if let Some(weights) = &service.cluster_weights {
        for cluster in service_clusters(service) {
            if !weights.contains_key(cluster) {
                warnings.push(FieldError::new(
                    format!("services[{s}].clusterWeights"),
                    format!("cluster {cluster:?} has endpoints but no weight; it gets no traffic"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
