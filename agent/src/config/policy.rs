//! The steering policy of a service: Istio's `trafficPolicy` (the parts geosteer acts on), active
//! health checks and ALB-style per-cluster weights. Data model, parsing and the checks that need
//! only one policy; precedence between policies is in `effective.rs`.
//!
//! A `trafficPolicy` is read leniently: DestinationRules copied from a mesh carry fields that
//! make no sense at L4 (connection pools, TLS, ...), and rejecting them would make users edit
//! files they share with Istio. Unknown keys are kept by name in [`TrafficPolicy::ignored`] and
//! reported as warnings instead.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    marker::PhantomData,
    time::Duration,
};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{Error as _, IgnoredAny, MapAccess, Visitor},
};

use super::{FieldError, Service, model::parse_text};

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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Only `tcp.connectTimeout` is acted on; the rest is reported as ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Fields present in the file that geosteer does not act on, as paths below
    /// `trafficPolicy` (e.g. `connectionPool`, `loadBalancer.simple`). Not serialized: only
    /// their names are kept, for the warnings.
    #[serde(skip)]
    pub ignored: Vec<String>,
}

impl TrafficPolicy {
    /// `loadBalancer.localityLbSetting`, if set.
    pub fn locality_lb_setting(&self) -> Option<&LocalityLbSetting> {
        self.load_balancer.as_ref()?.locality_lb_setting.as_ref()
    }
}

/// `trafficPolicy.connectionPool`, reduced to what an L4 data path can honour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// A connect that sees no SYN-ACK this long is a gateway error (Istio's default is the mesh
    /// `connectTimeout`, 10 s).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_optional_duration"
    )]
    pub connect_timeout: Option<Duration>,
}

/// Accepted range of `connectionPool.tcp.connectTimeout` (Istio: "MUST BE >=1ms").
pub(super) const CONNECT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));

/// `trafficPolicy.loadBalancer`. `simple` and `consistentHash` are accepted but not acted on:
/// geosteer always picks endpoints by weighted consistent hashing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
}

/// `loadBalancer.localityLbSetting`: how load spreads over localities.
///
/// Like Istio, a setting replaces a less specific one in its entirety (no merging).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLbSetting {
    /// Unset means enabled (Istio's `BoolValue` default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<FailoverRule>,
    /// Label keys (or `key=value`), most significant first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<DistributeRule>,
}

impl LocalityLbSetting {
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// Clients in region `from` fail over to region `to` before any other region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverRule {
    pub from: String,
    pub to: String,
}

/// Clients in locality `from` send `to[locality]` percent of their load to each listed locality;
/// localities not listed get none. Patterns are `region[/zone[/subzone]]`, the last segment may
/// be `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributeRule {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

/// `trafficPolicy.outlierDetection`, with Istio's defaults for absent fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Eject an endpoint at this many consecutive 5xx (connect failures count over TCP); 0 = off.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: u32,
    /// Same for gateway errors (502/503/504, connect failures); 0 = off, the default.
    pub consecutive_gateway_errors: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub base_ejection_time: Duration,
    /// Pinned to Istio: a 0 in the file means the default 10, because Istio's proto3 `int32`
    /// cannot tell 0 from unset and it only passes values above 0 to Envoy.
    pub max_ejection_percent: u32,
    /// Panic threshold; 0 = panic off (Istio's default, Envoy's own is 50).
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

/// Active probes sent by the agent to every endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Request path of http checks.
    pub path: String,
    /// Unset: the service's first `targetPort` (filled in by `effective_traffic_policy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub interval: Duration,
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
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

// ---------------------------------------------------------------------------------------------
// Durations

/// Parses a duration as Istio and Kubernetes write them (Go's `time.ParseDuration`): a sequence
/// of decimal numbers, each with an optional fraction and a unit, e.g. `10s`, `1m`, `100ms`,
/// `1h30m`, `1.5s`. Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. A bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let expected = "expected a duration like 10s, 1m, 100ms or 1h30m";
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    if rest.is_empty() {
        return Err(expected.to_string());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(expected.to_string());
        }
        // Longest unit first, so "ms" is not read as "m".
        let Some((unit, size)) = UNITS
            .iter()
            .filter(|(unit, _)| after.starts_with(unit))
            .max_by_key(|(unit, _)| unit.len())
        else {
            return Err(format!("{expected} (missing or unknown unit)"));
        };
        let too_long = || "is too long".to_string();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut part = whole.checked_mul(*size).ok_or_else(too_long)?;
        // Digits beyond nanosecond precision are dropped, as Go does.
        let mut scale = *size;
        for digit in fraction.bytes().take(30) {
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        nanos = nanos.checked_add(part).ok_or_else(too_long)?;
        rest = &after[unit.len()..];
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| "is too long".to_string())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Writes a duration so that [`parse_duration`] reads it back exactly: the largest unit that
/// divides it, e.g. `1m`, `90s`, `1500ms`.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .expect("every duration is a whole number of nanoseconds");
    format!("{}{unit}", nanos / size)
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    parse_text(deserializer, parse_duration)
}

fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

fn serialize_optional_duration<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => serialize_duration(d, serializer),
        None => serializer.serialize_none(),
    }
}

/// A duration field read through [`MapAccess::next_value`].
struct IstioDuration(Duration);

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_duration(deserializer).map(IstioDuration)
    }
}

// ---------------------------------------------------------------------------------------------
// Lenient parsing

/// A map type that reads the keys it acts on and leaves the others to [`Lenient`].
pub(super) trait LenientFields: Default {
    const EXPECTING: &'static str;

    /// Reads the value of `key` if this type acts on it; `false` leaves the value unread, to be
    /// skipped and recorded as ignored. Nested lenient maps add their ignored keys, prefixed
    /// with `key.`, to `ignored`.
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        ignored: &mut Vec<String>,
    ) -> Result<bool, A::Error>;
}

/// A value read from a YAML map whose unknown keys were skipped; `ignored` names them.
///
/// Reading key by key (rather than with `#[serde(flatten)]`, which buffers the map) keeps the
/// field path and line number in error messages.
pub(super) struct Lenient<T> {
    pub value: T,
    pub ignored: Vec<String>,
}

impl<'de, T: LenientFields> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<T>(PhantomData<T>);

        impl<'de, T: LenientFields> Visitor<'de> for LenientVisitor<T> {
            type Value = Lenient<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient<T>, A::Error> {
                let mut value = T::default();
                let mut ignored = Vec::new();
                let mut seen = HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(A::Error::custom(format!("duplicate field `{key}`")));
                    }
                    if !value.read(&key, &mut map, &mut ignored)? {
                        map.next_value::<IgnoredAny>()?;
                        ignored.push(key);
                    }
                }
                Ok(Lenient { value, ignored })
            }
        }

        deserializer.deserialize_map(LenientVisitor(PhantomData))
    }
}

/// Reads the value of `key` as a nested lenient map (null counts as absent).
pub(super) fn read_nested<'de, T: LenientFields, A: MapAccess<'de>>(
    key: &str,
    map: &mut A,
    ignored: &mut Vec<String>,
) -> Result<Option<T>, A::Error> {
    let nested: Option<Lenient<T>> = map.next_value()?;
    Ok(nested.map(|nested| {
        ignored.extend(
            nested
                .ignored
                .into_iter()
                .map(|field| format!("{key}.{field}")),
        );
        nested.value
    }))
}

impl<'de> Deserialize<'de> for TrafficPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Lenient { mut value, ignored } = Lenient::<TrafficPolicy>::deserialize(deserializer)?;
        value.ignored = ignored;
        Ok(value)
    }
}

impl LenientFields for TrafficPolicy {
    const EXPECTING: &'static str = "a trafficPolicy map";

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        ignored: &mut Vec<String>,
    ) -> Result<bool, A::Error> {
        match key {
            "loadBalancer" => self.load_balancer = read_nested(key, map, ignored)?,
            "outlierDetection" => self.outlier_detection = read_nested(key, map, ignored)?,
            "connectionPool" => self.connection_pool = read_nested(key, map, ignored)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl LenientFields for ConnectionPool {
    const EXPECTING: &'static str = "a connectionPool map";

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        ignored: &mut Vec<String>,
    ) -> Result<bool, A::Error> {
        match key {
            "tcp" => self.tcp = read_nested(key, map, ignored)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl LenientFields for TcpSettings {
    const EXPECTING: &'static str = "a connectionPool.tcp map";

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        _ignored: &mut Vec<String>,
    ) -> Result<bool, A::Error> {
        match key {
            "connectTimeout" => {
                self.connect_timeout = map.next_value::<Option<IstioDuration>>()?.map(|d| d.0)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl LenientFields for LoadBalancer {
    const EXPECTING: &'static str = "a loadBalancer map";

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        ignored: &mut Vec<String>,
    ) -> Result<bool, A::Error> {
        match key {
            "localityLbSetting" => self.locality_lb_setting = read_nested(key, map, ignored)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl LenientFields for LocalityLbSetting {
    const EXPECTING: &'static str = "a localityLbSetting map";

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        _ignored: &mut Vec<String>,
    ) -> Result<bool, A::Error> {
        // A key written with no value (`failover:`) reads as null; take it as empty.
        match key {
            "enabled" => self.enabled = map.next_value()?,
            "failover" => self.failover = map.next_value::<Option<_>>()?.unwrap_or_default(),
            "failoverPriority" => {
                self.failover_priority = map.next_value::<Option<_>>()?.unwrap_or_default()
            }
            "distribute" => self.distribute = map.next_value::<Option<_>>()?.unwrap_or_default(),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl LenientFields for OutlierDetection {
    const EXPECTING: &'static str = "an outlierDetection map";

    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        _ignored: &mut Vec<String>,
    ) -> Result<bool, A::Error> {
        match key {
            "consecutive5xxErrors" => self.consecutive_5xx_errors = map.next_value()?,
            "consecutiveGatewayErrors" => self.consecutive_gateway_errors = map.next_value()?,
            "interval" => self.interval = map.next_value::<IstioDuration>()?.0,
            "baseEjectionTime" => self.base_ejection_time = map.next_value::<IstioDuration>()?.0,
            "maxEjectionPercent" => {
                self.max_ejection_percent = match map.next_value()? {
                    0 => DEFAULT_MAX_EJECTION_PERCENT,
                    percent => percent,
                }
            }
            "minHealthPercent" => self.min_health_percent = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
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
