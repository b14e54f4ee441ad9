//! Reading a configuration: YAML into [`Config`], then validation.

use std::path::Path;

use super::{
    ConfigError, FieldError, istio,
    istio::LoadedDestinationRule,
    model::{Config, DEFAULT_CONFIG_YAML},
    validate::validate,
    warnings,
};

/// Reads, parses and validates a config file and the DestinationRule files it lists.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_in(&yaml, path.parent().unwrap_or(Path::new("")))
}

/// [`load`], plus the [`warnings`] about the config, for commands that show them.
pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<FieldError>), ConfigError> {
    let config = load(path)?;
    let warnings = warnings(&config);
    Ok((config, warnings))
}

/// Parses and validates a config; `destinationRules` files are read relative to the current
/// directory.
pub fn parse(yaml: &str) -> Result<Config, ConfigError> {
    parse_in(yaml, Path::new(""))
}

/// Reads the DestinationRules of a YAML text that is not a file (the Kubernetes source hands
/// over each object it watches); `source` names it in errors and in the rules' `file`.
pub fn parse_destination_rules(
    source: &str,
    yaml: &str,
) -> Result<Vec<LoadedDestinationRule>, ConfigError> {
    istio::parse_destination_rules(source, yaml)
}

/// Parses and validates a config whose `destinationRules` files are relative to `base_dir`.
pub fn parse_in(yaml: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    parse_with(yaml, &|file| {
        let path = base_dir.join(file);
        std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::DestinationRulesIo { path, source })
    })
}

/// Parses and validates a config, getting the text of each `destinationRules` file from
/// `read_rules` (tests give it files that exist only in memory).
pub(super) fn parse_with(
    yaml: &str,
    read_rules: &dyn Fn(&str) -> Result<String, ConfigError>,
) -> Result<Config, ConfigError> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(yaml);
    let mut config: Config =
        serde_path_to_error::deserialize(deserializer).map_err(|error| ConfigError::Parse {
            message: parse_error_message(error),
        })?;
    let mut rules = Vec::new();
    for file in &config.destination_rules {
        rules.extend(istio::parse_destination_rules(file, &read_rules(file)?)?);
    }
    config.loaded_destination_rules = rules;
    let errors = validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// The built-in demo configuration.
pub fn default_config() -> Config {
    parse(DEFAULT_CONFIG_YAML).expect("the built-in configuration is valid")
}

/// The message of a parse error: the field path, then serde's text (value and position).
pub(super) fn parse_error_message(
    error: serde_path_to_error::Error<serde_yaml_ng::Error>,
) -> String {
    let path = error.path().to_string();
    let mut detail = error.into_inner().to_string();
    // serde_yaml_ng prefixes its own idea of the path, which for an unknown field stops at the
    // enclosing map. Keep only the more precise path from serde_path_to_error.
    if let Some((prefix, rest)) = detail.split_once(": ")
        && is_path_prefix(prefix, &path)
    {
        detail = rest.to_string();
    }
    if path == "." {
        detail
    } else {
        format!("{path}: {detail}")
    }
}

/// Whether `prefix` is `path` or one of its ancestors, e.g. `services[0]` of `services[0].vip`.
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}
