//! The configuration file: its data model, parsing and validation.
//!
//! Parsing turns YAML into [`Config`] and stops at the first value it cannot read; its error
//! names the field path, the bad value and the YAML position. Validation then checks the parsed
//! config as a whole and reports every problem at once, so an operator fixes a file in one pass.
//! [`warnings`] points out what is valid but probably not meant.
//!
//! Steering policy follows Istio's DestinationRule `trafficPolicy` (`policy.rs`), which may also
//! come from DestinationRule files (`istio.rs`) or mesh-wide defaults; `effective.rs` decides
//! which one applies to a service.

mod duration;
mod effective;
mod error;
mod istio;
mod model;
mod parse;
mod policy;
mod protocol;
mod validate;

pub use duration::{
    PATTERN as DURATION_PATTERN, format as format_duration, parse as parse_duration,
};
pub use effective::{EffectivePolicy, effective_traffic_policy, warnings};
pub use istio::{DESTINATION_RULE_API_VERSIONS, LoadedDestinationRule, bound_destination_rule};
pub use policy::{
    ConnectionPool, DEFAULT_BASE_EJECTION_TIME, DEFAULT_CONSECUTIVE_5XX_ERRORS,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_OUTLIER_INTERVAL, Defaults, DistributeRule, FailoverRule,
    HEALTH_CHECK_INTERVAL_RANGE, HEALTH_CHECK_THRESHOLD_RANGE, HealthCheck, HealthCheckKind,
    LoadBalancer, LocalityLbSetting, MAX_CLUSTER_WEIGHT, MAX_CONSECUTIVE_ERRORS,
    OUTLIER_DURATION_RANGE, OutlierDetection, TcpSettings, TrafficPolicy,
};
pub use protocol::{AppProtocol, ProtocolChoice, app_protocol};

pub use error::{ConfigError, FieldError, ServicePart, Subject};
pub use model::*;
pub use parse::{
    default_config, load, load_with_warnings, parse, parse_destination_rules, parse_in,
};
pub use validate::{table_chunks_at_least, tables_needed, validate, validate_policy_parts};

#[cfg(test)]
mod tests;
