//! The steering policy of a service: Istio's `trafficPolicy` (the parts geosteer acts on), active
//! health checks and ALB-style per-cluster weights. Data model, parsing and the checks that need
//! only one policy; precedence between policies is in `effective.rs`.
//!
//! These types are the one model of the policy: the config file, DestinationRule files and
//! objects, and the TrafficPolicy custom resource (whose schema is derived from them) all read
//! through them.
//!
//! A `trafficPolicy` is read leniently: DestinationRules copied from a mesh carry fields that
//! make no sense at L4 (connection pools, TLS, ...), and rejecting them would make users edit
//! files they share with Istio. Unknown keys are kept by path in [`TrafficPolicy::ignored`] and
//! reported as warnings instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::Duration,
};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    FieldError, Service,
    duration::{self, format as format_duration},
    model::parse_text,
};

/// Istio's default `outlierDetection.consecutive5xxErrors`.
pub const DEFAULT_CONSECUTIVE_5XX_ERRORS: u32 = 5;
/// Istio's default `outlierDetection.interval`.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Istio's default `outlierDetection.baseEjectionTime`.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_percent`, which Istio leaves in place.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Largest consecutive-error count accepted; far above any useful value, it only catches typos.
pub const MAX_CONSECUTIVE_ERRORS: u32 = 10_000;
/// Accepted range of the outlier `interval` and `baseEjectionTime` (Istio: "MUST BE >=1ms").
pub const OUTLIER_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(24 * 3600));
/// Accepted range of `healthCheck.interval`.
pub const HEALTH_CHECK_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// Accepted range of the health-check thresholds.
pub const HEALTH_CHECK_THRESHOLD_RANGE: (u32, u32) = (1, 100);
/// Largest per-cluster weight, as in ALB's `cluster-weight` annotation.
pub const MAX_CLUSTER_WEIGHT: u32 = 100;

/// The mesh-wide policy for services that set none of their own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Defaults {
    /// What ASM sets on its console ("Geolocation-based Load Balancing") for the whole mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

impl Defaults {
    pub(super) fn is_empty(&self) -> bool {
        self.traffic_policy.is_none()
    }
}

/// Istio DestinationRule `spec.trafficPolicy`, reduced to what geosteer acts on.
// `remote = "Self"` keeps the derived code as inherent functions, so that the trait impls
// below can wrap it: reading records every key nothing below took, at any depth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    remote = "Self",
    default,
    rename_all = "camelCase",
    expecting = "a trafficPolicy map"
)]
pub struct TrafficPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Only `tcp.connectTimeout` is acted on; the rest is reported as ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Fields present in the file that geosteer does not act on, as paths below
    /// `trafficPolicy` (e.g. `connectionPool.http`, `loadBalancer.simple`). Not serialized:
    /// only their names are kept, for the warnings.
    #[serde(skip)]
    pub ignored: Vec<String>,
}

impl<'de> Deserialize<'de> for TrafficPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut ignored = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| ignored.push(field_path(&path));
        let mut policy = TrafficPolicy::deserialize(serde_ignored::Deserializer::new(
            deserializer,
            &mut record,
        ))?;
        policy.ignored = no_duplicates(ignored)?;
        Ok(policy)
    }
}

/// The derived code refuses a known key written twice; this refuses an ignored one (YAML
/// allows it, and the second would silently win in another reader).
pub(super) fn no_duplicates<E: serde::de::Error>(ignored: Vec<String>) -> Result<Vec<String>, E> {
    let mut seen = BTreeSet::new();
    match ignored.iter().find(|path| !seen.insert(path.as_str())) {
        Some(path) => Err(E::custom(format!("duplicate field `{path}`"))),
        None => Ok(ignored),
    }
}

impl Serialize for TrafficPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TrafficPolicy::serialize(self, serializer)
    }
}

/// A path `serde_ignored` reports, written as the config file's paths are:
/// `loadBalancer.simple`, `subsets[1].trafficPolicy`.
pub(super) fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

impl TrafficPolicy {
    /// `loadBalancer.localityLbSetting`, if set.
    pub fn locality_lb_setting(&self) -> Option<&LocalityLbSetting> {
        self.load_balancer.as_ref()?.locality_lb_setting.as_ref()
    }
}

/// `trafficPolicy.connectionPool`, reduced to what an L4 data path can honour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase", expecting = "a connectionPool map")]
pub struct ConnectionPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
}

impl ConnectionPool {
    /// `tcp.connectTimeout`, if set.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.tcp.as_ref()?.connect_timeout
    }
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    default,
    rename_all = "camelCase",
    expecting = "a connectionPool.tcp map"
)]
pub struct TcpSettings {
    /// A connect that sees no SYN-ACK this long is a gateway error (Istio's default is the mesh
    /// `connectTimeout`, 10 s).
    #[serde(skip_serializing_if = "Option::is_none", with = "duration::optional")]
    #[schemars(with = "Option<String>", regex(pattern = duration::PATTERN))]
    pub connect_timeout: Option<Duration>,
}

/// Accepted range of `connectionPool.tcp.connectTimeout` (Istio: "MUST BE >=1ms").
pub(super) const CONNECT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));

/// `trafficPolicy.loadBalancer`. `simple` and `consistentHash` are accepted but not acted on:
/// geosteer always picks endpoints by weighted consistent hashing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase", expecting = "a loadBalancer map")]
pub struct LoadBalancer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
}

/// `loadBalancer.localityLbSetting`: how load spreads over localities.
///
/// Like Istio, a setting replaces a less specific one in its entirety (no merging).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    default,
    rename_all = "camelCase",
    expecting = "a localityLbSetting map"
)]
pub struct LocalityLbSetting {
    /// Unset means enabled (Istio's `BoolValue` default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Clients in region `from` fail over to region `to` first.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub failover: Vec<FailoverRule>,
    /// Label keys (or `key=value`), most significant first.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub failover_priority: Vec<String>,
    /// Clients in locality `from` send `to[locality]` percent of their load to each locality.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub distribute: Vec<DistributeRule>,
}

impl LocalityLbSetting {
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// A key written with no value (`failover:`) reads as null; take it as empty.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Clients in region `from` fail over to region `to` before any other region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverRule {
    pub from: String,
    pub to: String,
}

/// Clients in locality `from` send `to[locality]` percent of their load to each listed locality;
/// localities not listed get none. Patterns are `region[/zone[/subzone]]`, the last segment may
/// be `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DistributeRule {
    /// `region[/zone[/subzone]]`; the last segment may be `*`.
    pub from: String,
    /// Locality pattern → percent (1-100).
    pub to: BTreeMap<String, u32>,
}

/// `trafficPolicy.outlierDetection`, with Istio's defaults for absent fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    default,
    rename_all = "camelCase",
    expecting = "an outlierDetection map"
)]
pub struct OutlierDetection {
    /// Eject an endpoint at this many consecutive 5xx (connect failures count over TCP); 0 = off.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: u32,
    /// Same for gateway errors (502/503/504, connect failures); 0 = off, the default.
    pub consecutive_gateway_errors: u32,
    #[serde(with = "duration")]
    #[schemars(with = "String", regex(pattern = duration::PATTERN))]
    pub interval: Duration,
    #[serde(with = "duration")]
    #[schemars(with = "String", regex(pattern = duration::PATTERN))]
    pub base_ejection_time: Duration,
    /// Pinned to Istio: a 0 in the file means the default 10, because Istio's proto3 `int32`
    /// cannot tell 0 from unset and it only passes values above 0 to Envoy.
    #[serde(deserialize_with = "zero_as_default_max_ejection_percent")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: u32,
    /// Panic threshold; 0 = panic off (Istio's default, Envoy's own is 50).
    #[schemars(range(max = 100))]
    pub min_health_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx_errors: DEFAULT_CONSECUTIVE_5XX_ERRORS,
            consecutive_gateway_errors: 0,
            interval: DEFAULT_OUTLIER_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            min_health_percent: 0,
        }
    }
}

fn zero_as_default_max_ejection_percent<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u32, D::Error> {
    Ok(match u32::deserialize(deserializer)? {
        0 => DEFAULT_MAX_EJECTION_PERCENT,
        percent => percent,
    })
}

/// Active probes sent by the agent to every endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Request path of http checks.
    pub path: String,
    /// Unset: the service's first target port.
    // Filled in by `effective_traffic_policy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    #[serde(with = "duration")]
    #[schemars(with = "String", regex(pattern = duration::PATTERN))]
    pub interval: Duration,
    #[serde(with = "duration")]
    #[schemars(with = "String", regex(pattern = duration::PATTERN))]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy endpoint healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthCheckKind::Http,
            path: "/".to_string(),
            port: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

// Read case-insensitively from the file; the custom resource's schema takes the lowercase
// names, as they are written back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// `GET path`; any 2xx or 3xx status passes.
    #[default]
    Http,
    /// A completed TCP handshake passes.
    Tcp,
}

impl fmt::Display for HealthCheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthCheckKind::Http => "http",
            HealthCheckKind::Tcp => "tcp",
        })
    }
}

impl Serialize for HealthCheckKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HealthCheckKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_text(deserializer, |text| {
            if text.eq_ignore_ascii_case("http") {
                Ok(HealthCheckKind::Http)
            } else if text.eq_ignore_ascii_case("tcp") {
                Ok(HealthCheckKind::Tcp)
            } else {
                Err("expected http or tcp")
            }
        })
    }
}

/// Istio trafficPolicy fields that geosteer accepts but does not act on, and why.
const NOT_ACTED_ON: &[(&str, &str)] = &[
    ("tls", "geosteer steers at L4"),
    ("tunnel", "geosteer steers at L4"),
    ("proxyProtocol", "geosteer steers at L4"),
    ("retryBudget", "geosteer steers at L4"),
    (
        "portLevelSettings",
        "geosteer applies one policy to every port",
    ),
    (
        "loadBalancer.simple",
        "geosteer picks endpoints by weighted consistent hashing",
    ),
    (
        "loadBalancer.consistentHash",
        "geosteer picks endpoints by weighted consistent hashing",
    ),
    ("loadBalancer.warmup", "geosteer has no slow start"),
    (
        "loadBalancer.warmupDurationSecs",
        "geosteer has no slow start",
    ),
    (
        "outlierDetection.consecutiveErrors",
        "deprecated, Istio ignores it too; use consecutive5xxErrors",
    ),
    (
        "outlierDetection.splitExternalLocalOriginErrors",
        "geosteer counts connect failures as 5xx, Istio's rule for TCP",
    ),
    (
        "outlierDetection.consecutiveLocalOriginFailures",
        "geosteer counts connect failures as 5xx, Istio's rule for TCP",
    ),
];

/// The warning for a field listed in [`TrafficPolicy::ignored`].
pub(super) fn ignored_field_message(field: &str) -> String {
    if field == "connectionPool" || field.starts_with("connectionPool.") {
        return "accepted but not acted on (geosteer steers at L4; of connectionPool only \
                tcp.connectTimeout applies)"
            .to_string();
    }
    match NOT_ACTED_ON.iter().find(|(known, _)| *known == field) {
        Some((_, why)) => format!("accepted but not acted on ({why})"),
        None => "not an Istio trafficPolicy field; ignored".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of one policy

/// Checks one trafficPolicy found at `at` (e.g. `services[0].trafficPolicy`). `known_regions`
/// are the regions failover rules may name; `None` checks the policy on its own (a
/// TrafficPolicy object's status), where region names cannot be judged.
pub(super) fn validate_traffic_policy(
    policy: &TrafficPolicy,
    at: &str,
    known_regions: Option<&BTreeSet<&str>>,
    errors: &mut Vec<FieldError>,
) {
    if let Some(locality) = policy.locality_lb_setting() {
        let at = format!("{at}.loadBalancer.localityLbSetting");
        validate_locality_lb_setting(locality, &at, known_regions, errors);
    }
    if let Some(outlier) = &policy.outlier_detection {
        validate_outlier_detection(outlier, &format!("{at}.outlierDetection"), errors);
    }
    if let Some(timeout) = policy
        .connection_pool
        .as_ref()
        .and_then(ConnectionPool::connect_timeout)
    {
        let (min, max) = CONNECT_TIMEOUT_RANGE;
        if timeout < min || timeout > max {
            errors.push(FieldError::new(
                format!("{at}.connectionPool.tcp.connectTimeout"),
                format!(
                    "{} is out of range ({} to {})",
                    format_duration(timeout),
                    format_duration(min),
                    format_duration(max)
                ),
            ));
        }
    }
}

fn validate_locality_lb_setting(
    setting: &LocalityLbSetting,
    at: &str,
    known_regions: Option<&BTreeSet<&str>>,
    errors: &mut Vec<FieldError>,
) {
    // ASM: "Failover and traffic distribution are mutually exclusive"; Istio's validation too.
    if !setting.distribute.is_empty() {
        let mut with = Vec::new();
        if !setting.failover.is_empty() {
            with.push("failover");
        }
        if !setting.failover_priority.is_empty() {
            with.push("failoverPriority");
        }
        if !with.is_empty() {
            errors.push(FieldError::new(
                at,
                format!(
                    "{} and distribute are mutually exclusive (one orders localities by \
                     priority, the other splits load by weight); keep one",
                    with.join(", ")
                ),
            ));
        }
    }

    for (i, rule) in setting.failover.iter().enumerate() {
        let at = format!("{at}.failover[{i}]");
        for (field, region) in [("from", &rule.from), ("to", &rule.to)] {
            if region.is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.{field}"),
                    "must not be empty",
                ));
            } else if let Some(known) = known_regions
                && !known.contains(region.as_str())
            {
                errors.push(FieldError::new(
                    format!("{at}.{field}"),
                    format!(
                        "{region:?} is not a known region (the node's or an endpoint's: {})",
                        list_or_none(known)
                    ),
                ));
            }
        }
        if !rule.from.is_empty() && rule.from == rule.to {
            errors.push(FieldError::new(
                at,
                format!("from and to are both {:?}; they must differ", rule.from),
            ));
        }
    }

    for (i, label) in setting.failover_priority.iter().enumerate() {
        if label.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.failoverPriority[{i}]"),
                "must not be empty",
            ));
        }
    }

    let mut froms: Vec<(usize, Vec<&str>)> = Vec::new();
    for (i, rule) in setting.distribute.iter().enumerate() {
        let at = format!("{at}.distribute[{i}]");
        match locality_pattern(&rule.from) {
            Err(message) => errors.push(FieldError::new(format!("{at}.from"), message)),
            Ok(pattern) => {
                if let Some((first, _)) = froms.iter().find(|(_, other)| overlap(other, &pattern)) {
                    errors.push(FieldError::new(
                        format!("{at}.from"),
                        format!(
                            "{:?} overlaps distribute[{first}].from {:?}; a client locality \
                             must match one rule",
                            rule.from, setting.distribute[*first].from
                        ),
                    ));
                } else {
                    froms.push((i, pattern));
                }
            }
        }
        validate_distribute_targets(&rule.to, &at, errors);
    }
}

fn validate_distribute_targets(to: &BTreeMap<String, u32>, at: &str, errors: &mut Vec<FieldError>) {
    if to.is_empty() {
        errors.push(FieldError::new(format!("{at}.to"), "must not be empty"));
        return;
    }
    let mut targets: Vec<(&str, Vec<&str>)> = Vec::new();
    for (locality, &weight) in to {
        let at = format!("{at}.to[{locality:?}]");
        match locality_pattern(locality) {
            Err(message) => errors.push(FieldError::new(&at, message)),
            Ok(pattern) => {
                if let Some((other, _)) = targets.iter().find(|(_, p)| overlap(p, &pattern)) {
                    errors.push(FieldError::new(
                        &at,
                        format!("overlaps {other:?}; each locality may get one weight"),
                    ));
                } else {
                    targets.push((locality, pattern));
                }
            }
        }
        // Istio accepts 1..=100 only; a locality that should get nothing is left out.
        if weight == 0 {
            errors.push(FieldError::new(
                &at,
                "0 is not allowed; leave the locality out to send it nothing",
            ));
        } else if weight > 100 {
            errors.push(FieldError::new(&at, format!("{weight} is above 100")));
        }
    }
    let sum: u64 = to.values().map(|&w| u64::from(w)).sum();
    if sum != 100 {
        errors.push(FieldError::new(
            format!("{at}.to"),
            format!("weights sum to {sum}, not 100"),
        ));
    }
}

/// The fixed segments of a locality pattern: `region[/zone[/subzone]]` where the last segment
/// may be `*`. As in Istio, a pattern matches every locality it is a prefix of, so `r` and
/// `r/*` both mean "region r"; `*` alone matches everything.
fn locality_pattern(text: &str) -> Result<Vec<&str>, String> {
    if text.is_empty() {
        return Err("must not be empty".to_string());
    }
    let segments: Vec<&str> = text.split('/').collect();
    let last = segments.len() - 1;
    let valid = segments.len() <= 3
        && segments
            .iter()
            .enumerate()
            .all(|(i, s)| !s.is_empty() && (!s.contains('*') || (*s == "*" && i == last)));
    if !valid {
        return Err(format!(
            "{text:?} is not a locality: expected region[/zone[/subzone]], \
             with '*' allowed as the last segment"
        ));
    }
    Ok(segments.into_iter().filter(|s| *s != "*").collect())
}

/// Whether two locality patterns match a common locality: one is a prefix of the other.
fn overlap(a: &[&str], b: &[&str]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

fn validate_outlier_detection(outlier: &OutlierDetection, at: &str, errors: &mut Vec<FieldError>) {
    for (field, percent) in [
        ("maxEjectionPercent", outlier.max_ejection_percent),
        ("minHealthPercent", outlier.min_health_percent),
    ] {
        if percent > 100 {
            errors.push(FieldError::new(
                format!("{at}.{field}"),
                format!("{percent} is above 100"),
            ));
        }
    }
    for (field, count) in [
        ("consecutive5xxErrors", outlier.consecutive_5xx_errors),
        (
            "consecutiveGatewayErrors",
            outlier.consecutive_gateway_errors,
        ),
    ] {
        if count > MAX_CONSECUTIVE_ERRORS {
            errors.push(FieldError::new(
                format!("{at}.{field}"),
                format!("{count} is above the maximum {MAX_CONSECUTIVE_ERRORS}"),
            ));
        }
    }
    for (field, duration) in [
        ("interval", outlier.interval),
        ("baseEjectionTime", outlier.base_ejection_time),
    ] {
        if let Some(message) = duration_range_problem(duration, OUTLIER_DURATION_RANGE) {
            errors.push(FieldError::new(format!("{at}.{field}"), message));
        }
    }
}

fn duration_range_problem(duration: Duration, (min, max): (Duration, Duration)) -> Option<String> {
    if duration < min {
        Some(format!(
            "{} is below the minimum {}",
            format_duration(duration),
            format_duration(min)
        ))
    } else if duration > max {
        Some(format!(
            "{} is above the maximum {}",
            format_duration(duration),
            format_duration(max)
        ))
    } else {
        None
    }
}

/// Checks `services[s].healthCheck`, found at `at`.
pub(super) fn validate_health_check(check: &HealthCheck, at: &str, errors: &mut Vec<FieldError>) {
    if check.kind == HealthCheckKind::Http && !check.path.starts_with('/') {
        errors.push(FieldError::new(
            format!("{at}.path"),
            format!("{:?} does not start with '/'", check.path),
        ));
    }
    if check.port == Some(0) {
        errors.push(FieldError::new(
            format!("{at}.port"),
            "0 is not a valid port",
        ));
    }
    if let Some(message) = duration_range_problem(check.interval, HEALTH_CHECK_INTERVAL_RANGE) {
        errors.push(FieldError::new(format!("{at}.interval"), message));
    }
    if check.timeout.is_zero() {
        errors.push(FieldError::new(
            format!("{at}.timeout"),
            "0s is not a valid timeout",
        ));
    } else if check.timeout > check.interval {
        // A probe must finish before the next one starts, or probes pile up on a slow endpoint.
        errors.push(FieldError::new(
            format!("{at}.timeout"),
            format!(
                "{} is longer than the interval {}",
                format_duration(check.timeout),
                format_duration(check.interval)
            ),
        ));
    }
    let (min, max) = HEALTH_CHECK_THRESHOLD_RANGE;
    for (field, threshold) in [
        ("healthyThreshold", check.healthy_threshold),
        ("unhealthyThreshold", check.unhealthy_threshold),
    ] {
        if threshold < min {
            errors.push(FieldError::new(
                format!("{at}.{field}"),
                format!("{threshold} is below the minimum {min}"),
            ));
        } else if threshold > max {
            errors.push(FieldError::new(
                format!("{at}.{field}"),
                format!("{threshold} is above the maximum {max}"),
            ));
        }
    }
}

/// Checks `service.clusterWeights`, found at `at`, against the service's clusters; the
/// conflict with `distribute` needs the effective policy and is checked in `effective.rs`.
pub(super) fn validate_cluster_weights(
    weights: &BTreeMap<String, u32>,
    service: &Service,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    let clusters = service_clusters(service);
    let known = list_or_none(&clusters);
    for cluster in weights.keys() {
        if !clusters.contains(cluster.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.{cluster}"),
                format!(
                    "no endpoint of {}/{} is in cluster {cluster:?} (known clusters: {known})",
                    service.namespace, service.name
                ),
            ));
        }
    }
    validate_cluster_weight_values(weights, at, errors);
}

/// The checks of `clusterWeights` that need nothing but the weights.
pub(super) fn validate_cluster_weight_values(
    weights: &BTreeMap<String, u32>,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    for (cluster, &weight) in weights {
        if weight > MAX_CLUSTER_WEIGHT {
            errors.push(FieldError::new(
                format!("{at}.{cluster}"),
                format!("{weight} is above the maximum {MAX_CLUSTER_WEIGHT}"),
            ));
        }
    }
    if weights.values().all(|&weight| weight == 0) {
        errors.push(FieldError::new(
            at,
            "at least one cluster needs a weight above 0",
        ));
    }
}

/// `a, b, c`, or `none`.
fn list_or_none(names: &BTreeSet<&str>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// The clusters the endpoints of `service` come from.
pub(super) fn service_clusters(service: &Service) -> BTreeSet<&str> {
    service
        .endpoints
        .iter()
        .map(|endpoint| endpoint.cluster.as_str())
        .filter(|cluster| !cluster.is_empty())
        .collect()
}

#[cfg(test)]
mod tests;
