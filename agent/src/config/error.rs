//! What is wrong with a configuration: the error types and where a problem is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file listed in `destinationRules` cannot be read.
    #[error("cannot read destinationRules file {}", path.display())]
    DestinationRulesIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML or a value has the wrong type or syntax. The message names
    /// the field path, the value and the position in the file.
    #[error("{message}")]
    Parse { message: String },
    /// The file parsed but breaks the rules checked by [`validate`](fn@super::validate); every
    /// problem is listed.
    #[error("{}", lines(.0))]
    Invalid(Vec<FieldError>),
}

fn lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(FieldError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One validation problem: where it is (e.g. `services[1].ports[0].port`), what is wrong, and
/// what it is about ([`Subject`]: typed, for code that acts on it; the path is for people).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
    pub subject: Subject,
}

impl FieldError {
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
            subject: Subject::Other,
        }
    }

    /// The path below the service the error is about (`trafficPolicy.outlierDetection.x` of
    /// `services[3].trafficPolicy.outlierDetection.x`); the whole path otherwise.
    pub fn service_field(&self) -> &str {
        match self.subject {
            Subject::Service { index, .. } => self
                .path
                .strip_prefix(&format!("services[{index}]"))
                .map_or(self.path.as_str(), |rest| rest.trim_start_matches('.')),
            _ => &self.path,
        }
    }
}

/// What a validation problem is about: what the Kubernetes source leaves out when the cluster
/// contributed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subject {
    /// The node, the data path, the admin endpoints, the defaults.
    #[default]
    Other,
    /// `services[index]`, in `part` of it.
    Service { index: usize, part: ServicePart },
    /// The services together: over a capacity (maxServices, maxBackends, tableChunks).
    Capacity,
    /// `loaded_destination_rules[index]`.
    Rule(usize),
}

/// The part of a service a problem is in: the policy parts come from a TrafficPolicy (or
/// annotations) in Kubernetes, the rest from the Service and its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicePart {
    Service,
    TrafficPolicy,
    ClusterWeights,
    HealthCheck,
}

/// Marks the errors from `from` on that no validator marked more precisely as about `subject`.
pub(super) fn about(errors: &mut [FieldError], from: usize, subject: Subject) {
    for error in &mut errors[from..] {
        if error.subject == Subject::Other {
            error.subject = subject;
        }
    }
}
