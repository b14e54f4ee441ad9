//! Istio DestinationRule documents, read from the files listed in `destinationRules`, so a
//! mesh's own YAML (e.g. the `asm.yaml` of Alibaba ASM's tutorials) steers geosteer unchanged.
//!
//! Other kinds in the same files (Gateway, VirtualService, ...) are skipped. A DestinationRule
//! is read leniently: fields geosteer does not act on are accepted and reported as warnings.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Deserializer, de::IgnoredAny};

use super::{
    Config, ConfigError, FieldError, Service, Subject,
    error::about,
    parse::parse_error_message,
    policy::{TrafficPolicy, field_path, no_duplicates, validate_traffic_policy},
    validate::dns_label_problem,
};

/// The apiVersions under which Istio serves DestinationRule (all the same schema).
pub const DESTINATION_RULE_API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
];

/// The cluster DNS domain in fully qualified service names.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// A DestinationRule read from one of the `destinationRules` files.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDestinationRule {
    /// The file as listed in `destinationRules`.
    pub file: String,
    /// Position of the document in the file, counting from 1.
    pub document: usize,
    pub name: String,
    /// `metadata.namespace`, "default" when absent (as `kubectl apply` would do).
    pub namespace: String,
    /// `spec.host`.
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    /// Fields of `spec` that geosteer does not act on, as paths below `spec` (e.g.
    /// `workloadSelector`, `subsets[1].trafficPolicy`).
    pub ignored: Vec<String>,
}

impl LoadedDestinationRule {
    /// Whether `spec.host` names `service`. Accepted: the short name (taken in the rule's own
    /// namespace, as Istio does), `name.namespace`, `name.namespace.svc` and the FQDN
    /// `name.namespace.svc.cluster.local`. Istio itself takes a host with dots literally; the
    /// middle two forms are what Kubernetes DNS search paths resolve, so they are accepted too.
    /// Wildcard hosts select nothing.
    pub fn selects(&self, service: &Service) -> bool {
        let (name, namespace) = (service.name.as_str(), service.namespace.as_str());
        if self.host == name {
            return self.namespace == namespace;
        }
        let Some(rest) = self
            .host
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.strip_prefix(namespace))
        else {
            return false;
        };
        rest.is_empty() || rest == ".svc" || rest == format!(".svc.{CLUSTER_DOMAIN}")
    }

    /// How errors and warnings name this rule, e.g. `asm.yaml: DestinationRule default/reviews`.
    pub fn path(&self) -> String {
        format!("{}: {}", self.file, self.label())
    }

    /// The rule in words, e.g. `DestinationRule default/reviews (asm.yaml)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.label(), self.file)
    }

    fn label(&self) -> String {
        if self.name.is_empty() {
            format!("DestinationRule in document {}", self.document)
        } else {
            format!("DestinationRule {}/{}", self.namespace, self.name)
        }
    }
}

/// Enough of any Kubernetes object to tell whether it is a DestinationRule.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// A DestinationRule document; unknown top-level fields (`status`, ...) are skipped.
#[derive(Deserialize)]
struct DestinationRuleInFile {
    #[serde(default)]
    metadata: Metadata,
    spec: Option<Spec>,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    namespace: Option<String>,
}

/// `remote = "Self"`: the derived code is wrapped below to record the keys nothing took.
#[derive(Default, Deserialize)]
#[serde(
    remote = "Self",
    default,
    rename_all = "camelCase",
    expecting = "a DestinationRule spec map"
)]
struct Spec {
    host: String,
    traffic_policy: Option<TrafficPolicy>,
    /// Subsets only matter to routes that name them; a subset's own policy is the one thing in
    /// them that would change steering, so only that is reported (as ignored).
    subsets: Option<Vec<Subset>>,
    /// Visibility across namespaces; one config file is one mesh view.
    #[allow(dead_code, reason = "read only to be accepted silently")]
    export_to: Option<IgnoredAny>,
    /// Paths below `spec` of the fields geosteer does not act on.
    #[serde(skip)]
    ignored: Vec<String>,
}

impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut ignored = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| {
            let path = field_path(&path);
            // The policy reports its own ignored keys (below `trafficPolicy`); of a subset
            // only its policy is worth a warning.
            let reported = match path.split_once('.') {
                None => path != "exportTo",
                Some(("trafficPolicy", _)) => false,
                Some((subset, field)) if subset.starts_with("subsets[") => field == "trafficPolicy",
                Some(_) => true,
            };
            if reported {
                ignored.push(path);
            }
        };
        let mut spec =
            Spec::deserialize(serde_ignored::Deserializer::new(deserializer, &mut record))?;
        spec.ignored = no_duplicates(ignored)?;
        Ok(spec)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subset {
    #[allow(dead_code, reason = "read only to be reported as ignored")]
    traffic_policy: Option<IgnoredAny>,
}

/// Why a DestinationRule `spec` field is accepted but not acted on.
const SPEC_NOT_ACTED_ON: &[(&str, &str)] = &[
    (
        "workloadSelector",
        "geosteer applies the rule to every client on the node",
    ),
    ("subsets", "geosteer has no subsets"),
];

/// The warning for a field listed in [`LoadedDestinationRule::ignored`].
pub(super) fn ignored_spec_field_message(field: &str) -> String {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    match SPEC_NOT_ACTED_ON.iter().find(|(known, _)| *known == top) {
        Some((_, why)) => format!("accepted but not acted on ({why})"),
        None => "not a DestinationRule spec field; ignored".to_string(),
    }
}

/// Reads the DestinationRules of one multi-document YAML file; `file` names it in errors.
pub(super) fn parse_destination_rules(
    file: &str,
    yaml: &str,
) -> Result<Vec<LoadedDestinationRule>, ConfigError> {
    let error = |document: usize, message: String| ConfigError::Parse {
        message: format!("{file}: document {document}: {message}"),
    };

    // First only the kind of each document, so that other kinds never have to parse as one.
    let mut wanted = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let meta: Option<TypeMeta> = serde_path_to_error::deserialize(document)
            .map_err(|e| error(index + 1, parse_error_message(e)))?;
        let Some(meta) = meta else {
            continue; // an empty document, e.g. after a trailing `---`
        };
        if meta.kind != "DestinationRule" {
            continue;
        }
        if !DESTINATION_RULE_API_VERSIONS.contains(&meta.api_version.as_str()) {
            return Err(error(
                index + 1,
                format!(
                    "DestinationRule has apiVersion {:?}; expected one of {}",
                    meta.api_version,
                    DESTINATION_RULE_API_VERSIONS.join(", ")
                ),
            ));
        }
        wanted.push(index);
    }

    let mut rules = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        if !wanted.contains(&index) {
            continue;
        }
        let rule: DestinationRuleInFile = serde_path_to_error::deserialize(document)
            .map_err(|e| error(index + 1, parse_error_message(e)))?;
        let spec = rule.spec.unwrap_or_default();
        rules.push(LoadedDestinationRule {
            file: file.to_string(),
            document: index + 1,
            name: rule.metadata.name,
            namespace: rule
                .metadata
                .namespace
                .unwrap_or_else(super::model::default_namespace),
            host: spec.host,
            traffic_policy: spec.traffic_policy,
            ignored: spec.ignored,
        });
    }
    Ok(rules)
}

/// The index of the DestinationRule that applies to `config.services[s]`: the first one that
/// selects it (validation rejects a second).
pub(super) fn bound_rule(config: &Config, s: usize) -> Option<usize> {
    let service = &config.services[s];
    config
        .loaded_destination_rules
        .iter()
        .position(|rule| rule.selects(service))
}

/// The DestinationRule that applies to `config.services[service_index]`, if any.
pub fn bound_destination_rule(
    config: &Config,
    service_index: usize,
) -> Option<&LoadedDestinationRule> {
    bound_rule(config, service_index).map(|r| &config.loaded_destination_rules[r])
}

/// Checks every loaded DestinationRule, and that no service is selected by two.
pub(super) fn validate_destination_rules(
    config: &Config,
    known_regions: &BTreeSet<&str>,
    errors: &mut Vec<FieldError>,
) {
    let mut names: HashMap<(&str, &str), usize> = HashMap::new();
    for (r, rule) in config.loaded_destination_rules.iter().enumerate() {
        let from = errors.len();
        let at = rule.path();
        if rule.name.is_empty() {
            errors.push(FieldError::new(
                format!("{at}: metadata.name"),
                "must not be empty",
            ));
        } else if let Some(&first) = names.get(&(&rule.namespace, &rule.name)) {
            let first = &config.loaded_destination_rules[first];
            errors.push(FieldError::new(
                format!("{at}: metadata.name"),
                format!(
                    "{}/{} is already defined in {} (document {})",
                    rule.namespace, rule.name, first.file, first.document
                ),
            ));
        } else {
            names.insert((&rule.namespace, &rule.name), r);
        }
        if let Some(message) = dns_label_problem(&rule.namespace) {
            errors.push(FieldError::new(
                format!("{at}: metadata.namespace"),
                message,
            ));
        }
        if rule.host.is_empty() {
            errors.push(FieldError::new(
                format!("{at}: spec.host"),
                "must not be empty",
            ));
        }
        if let Some(policy) = &rule.traffic_policy {
            let at = format!("{at}: spec.trafficPolicy");
            validate_traffic_policy(policy, &at, Some(known_regions), errors);
        }
        about(errors, from, Subject::Rule(r));
    }

    for (s, service) in config.services.iter().enumerate() {
        let mut selecting = config
            .loaded_destination_rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.selects(service));
        let Some((_, first)) = selecting.next() else {
            continue;
        };
        for (r, other) in selecting {
            let from = errors.len();
            errors.push(FieldError::new(
                format!("{}: spec.host", other.path()),
                format!(
                    "{:?} selects services[{s}] ({}/{}), which {} already selects; \
                     a service takes one DestinationRule",
                    other.host,
                    service.namespace,
                    service.name,
                    first.describe()
                ),
            ));
            about(errors, from, Subject::Rule(r));
        }
    }
}

#[cfg(test)]
mod tests;
