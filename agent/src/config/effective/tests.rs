use std::{path::Path, time::Duration};

use super::*;
use crate::config::{ConfigError, HealthCheckKind, load, load_with_warnings, parse::parse_with};

/// A config with one service, `reviews`, and four endpoints: two in cn-hangzhou
/// (ack-hangzhou), two in cn-shanghai (ack-shanghai). `top` is inserted at the top level,
/// `service` (indented by 4) at the end of the service, and `rules` is the content of the
/// one `destinationRules` file, dr.yaml.
fn parse_case(top: &str, service: &str, rules: &str) -> Result<Config, ConfigError> {
    let yaml = format!(
        "node: {{name: node-1, region: cn-hangzhou}}\n\
             destinationRules: [dr.yaml]\n\
             {top}\
             services:\n\
             \x20 - name: reviews\n\
             \x20   vip: 10.96.0.10\n\
             \x20   ports: [{{port: 80, targetPort: 9080}}]\n\
             \x20   endpoints:\n\
             \x20     - {{ip: 10.1.0.11, region: cn-hangzhou, cluster: ack-hangzhou}}\n\
             \x20     - {{ip: 10.1.0.12, region: cn-hangzhou, cluster: ack-hangzhou}}\n\
             \x20     - {{ip: 10.2.0.11, region: cn-shanghai, cluster: ack-shanghai}}\n\
             \x20     - {{ip: 10.2.0.12, region: cn-shanghai, cluster: ack-shanghai}}\n\
             {service}"
    );
    parse_with(&yaml, &|file| {
        assert_eq!(file, "dr.yaml");
        Ok(rules.to_string())
    })
}

/// A DestinationRule document for `host` with `spec` fields (a YAML flow map body).
fn rule(name: &str, host: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: {name}}}\nspec: {{host: {host}, {spec}}}\n---\n"
    )
}

fn valid(top: &str, service: &str, rules: &str) -> Config {
    parse_case(top, service, rules).unwrap_or_else(|error| panic!("{error}"))
}

fn errors(top: &str, service: &str, rules: &str) -> Vec<(String, String)> {
    match parse_case(top, service, rules) {
        Err(ConfigError::Invalid(errors)) => {
            errors.into_iter().map(|e| (e.path, e.message)).collect()
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn precedence_is_service_then_destination_rule_then_defaults_per_group() {
    const OD_SERVICE: &str = "outlierDetection: {interval: 1s}";
    const OD_RULE: &str = "outlierDetection: {interval: 2s}";
    const OD_DEFAULTS: &str = "outlierDetection: {interval: 3s}";
    const LB: &str = "loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, \
                          to: cn-shanghai}]}}";
    let by_service = "outlierDetection from services[0].trafficPolicy";
    let by_rule = "outlierDetection from DestinationRule default/reviews (dr.yaml)";
    let by_defaults = "outlierDetection from defaults.trafficPolicy";
    let lb_by_service = "localityLbSetting from services[0].trafficPolicy";
    let lb_by_rule = "localityLbSetting from DestinationRule default/reviews (dr.yaml)";
    let lb_by_defaults = "localityLbSetting from defaults.trafficPolicy";

    // (case, defaults policy, rule policy, service policy, expected interval in seconds,
    // expected sources)
    let cases: &[(&str, &str, &str, &str, Option<u64>, &[&str])] = &[
        (
            "the service wins both",
            &format!("{OD_DEFAULTS}, {LB}"),
            &format!("{OD_RULE}, {LB}"),
            &format!("{OD_SERVICE}, {LB}"),
            Some(1),
            &[by_service, lb_by_service],
        ),
        (
            "groups resolve independently",
            &format!("{OD_DEFAULTS}, {LB}"),
            LB,
            OD_SERVICE,
            Some(1),
            &[by_service, lb_by_rule],
        ),
        (
            "the ASM tutorial: rule for outliers, console for failover",
            LB,
            OD_RULE,
            "",
            Some(2),
            &[by_rule, lb_by_defaults],
        ),
        (
            "defaults fill in",
            &format!("{OD_DEFAULTS}, {LB}"),
            "",
            "",
            Some(3),
            &[by_defaults, lb_by_defaults],
        ),
        (
            "a loadBalancer without localityLbSetting does not set it",
            LB,
            "",
            "loadBalancer: {simple: ROUND_ROBIN}",
            None,
            &[lb_by_defaults],
        ),
        ("nothing anywhere", "", "", "", None, &[]),
    ];
    for (case, defaults, rule_policy, service_policy, interval, sources) in cases {
        let config = valid(
            &format!("defaults: {{trafficPolicy: {{{defaults}}}}}\n"),
            &format!("    trafficPolicy: {{{service_policy}}}\n"),
            &rule(
                "reviews",
                "reviews",
                &format!("trafficPolicy: {{{rule_policy}}}"),
            ),
        );
        let effective = effective_traffic_policy(&config, 0);
        assert_eq!(effective.sources, *sources, "{case}");
        assert_eq!(
            effective.outlier_detection.map(|o| o.interval),
            interval.map(Duration::from_secs),
            "{case}"
        );
    }
}

#[test]
fn a_rule_for_another_service_does_not_apply() {
    let config = valid(
        "defaults: {trafficPolicy: {outlierDetection: {interval: 3s}}}\n",
        "",
        &rule(
            "ratings",
            "ratings",
            "trafficPolicy: {outlierDetection: {interval: 2s}}",
        ),
    );
    assert_eq!(bound_rule(&config, 0), None);
    let effective = effective_traffic_policy(&config, 0);
    assert_eq!(
        effective.sources,
        ["outlierDetection from defaults.trafficPolicy"]
    );
}

#[test]
fn traffic_distribution_is_a_failover_priority_when_no_policy_sets_one() {
    let config = valid("", "    trafficDistribution: PreferClose\n", "");
    let effective = effective_traffic_policy(&config, 0);
    let locality = effective.locality_lb.unwrap();
    assert_eq!(
        locality.failover_priority,
        [
            "topology.kubernetes.io/region",
            "topology.kubernetes.io/zone",
            "topology.istio.io/subzone"
        ]
    );
    assert!(effective.locality_from_traffic_distribution);
    assert_eq!(
        effective.sources,
        [
            "localityLbSetting from services[0].trafficDistribution PreferClose \
              (failoverPriority [topology.kubernetes.io/region, topology.kubernetes.io/zone, \
              topology.istio.io/subzone])"
        ]
    );
    // The mesh-wide default gives way to the Service's field, as in Istio.
    let config = valid(
        "defaults: {trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: \
             cn-hangzhou, to: cn-shanghai}]}}}}\n",
        "    trafficDistribution: PreferClose\n",
        "",
    );
    let effective = effective_traffic_policy(&config, 0);
    assert!(effective.locality_from_traffic_distribution);
    assert!(effective.locality_lb.unwrap().failover.is_empty());
    let same_node = valid("", "    trafficDistribution: PreferSameNode\n", "");
    assert_eq!(
        effective_traffic_policy(&same_node, 0)
            .locality_lb
            .unwrap()
            .failover_priority
            .last()
            .map(String::as_str),
        Some("kubernetes.io/hostname")
    );
    // A policy's own localityLbSetting wins, as any other source would.
    let config = valid(
        "",
        "    trafficDistribution: PreferClose\n    \
             trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, \
             to: cn-shanghai}]}}}\n",
        "",
    );
    let effective = effective_traffic_policy(&config, 0);
    assert!(!effective.locality_from_traffic_distribution);
    assert!(effective.locality_lb.unwrap().failover_priority.is_empty());
}

#[test]
fn a_disabled_setting_still_wins() {
    let config = valid(
        "defaults: {trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: \
             cn-hangzhou, to: cn-shanghai}]}}}}\n",
        "    trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: false}}}\n",
        "",
    );
    let locality = effective_traffic_policy(&config, 0).locality_lb.unwrap();
    assert!(!locality.is_enabled());
    assert!(locality.failover.is_empty());
}

#[test]
fn health_check_and_cluster_weights_come_from_the_service() {
    let config = valid(
        "",
        "    clusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}\n    healthCheck: {}\n",
        "",
    );
    let effective = effective_traffic_policy(&config, 0);
    let check = effective.health_check.unwrap();
    assert_eq!(
        (check.kind, check.path.as_str(), check.port),
        (HealthCheckKind::Http, "/", Some(9080))
    );
    assert_eq!(
        effective.cluster_weights,
        Some(BTreeMap::from([
            ("ack-hangzhou".to_string(), 20),
            ("ack-shanghai".to_string(), 80)
        ]))
    );
    assert_eq!(
        effective.sources,
        [
            "clusterWeights from services[0].clusterWeights",
            "healthCheck from services[0].healthCheck"
        ]
    );

    let explicit = valid("", "    healthCheck: {type: tcp, port: 15021}\n", "");
    let check = effective_traffic_policy(&explicit, 0).health_check.unwrap();
    assert_eq!(
        (check.kind, check.port),
        (HealthCheckKind::Tcp, Some(15021))
    );
}

#[test]
fn rejects_conflicts_and_bad_values_across_sources() {
    let distribute = "loadBalancer: {localityLbSetting: {distribute: [{from: \"*\", to: \
                          {cn-hangzhou: 100}}]}}";
    let weights = "    clusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}\n";
    // (case, top-level yaml, service yaml, dr.yaml, expected errors)
    let cases: Vec<(&str, String, String, String, Vec<(&str, &str)>)> = vec![
        (
            "clusterWeights with the service's distribute",
            String::new(),
            format!("{weights}    trafficPolicy: {{{distribute}}}\n"),
            String::new(),
            vec![(
                "services[0].clusterWeights",
                "cannot be combined with localityLbSetting.distribute (set by \
                     services[0].trafficPolicy): both split the load by weight; keep one",
            )],
        ),
        (
            "clusterWeights with a rule's distribute",
            String::new(),
            weights.to_string(),
            rule(
                "reviews",
                "reviews",
                &format!("trafficPolicy: {{{distribute}}}"),
            ),
            vec![(
                "services[0].clusterWeights",
                "cannot be combined with localityLbSetting.distribute (set by \
                     DestinationRule default/reviews (dr.yaml)): both split the load by \
                     weight; keep one",
            )],
        ),
        (
            "clusterWeights with the defaults' distribute",
            format!("defaults: {{trafficPolicy: {{{distribute}}}}}\n"),
            weights.to_string(),
            String::new(),
            vec![(
                "services[0].clusterWeights",
                "cannot be combined with localityLbSetting.distribute (set by \
                     defaults.trafficPolicy): both split the load by weight; keep one",
            )],
        ),
        (
            "unknown cluster and weight above 100",
            String::new(),
            "    clusterWeights: {ack-hangzhou: 120, ack-beijing: 10}\n".to_string(),
            String::new(),
            vec![
                (
                    "services[0].clusterWeights.ack-beijing",
                    "no endpoint of default/reviews is in cluster \"ack-beijing\" (known \
                         clusters: ack-hangzhou, ack-shanghai)",
                ),
                (
                    "services[0].clusterWeights.ack-hangzhou",
                    "120 is above the maximum 100",
                ),
            ],
        ),
        (
            "all cluster weights 0",
            String::new(),
            "    clusterWeights: {ack-hangzhou: 0, ack-shanghai: 0}\n".to_string(),
            String::new(),
            vec![(
                "services[0].clusterWeights",
                "at least one cluster needs a weight above 0",
            )],
        ),
        (
            "service policy",
            String::new(),
            "    trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: \
                 cn-hangzhou, to: cn-beijing}]}}}\n"
                .to_string(),
            String::new(),
            vec![(
                "services[0].trafficPolicy.loadBalancer.localityLbSetting.failover[0].to",
                "\"cn-beijing\" is not a known region (the node's or an endpoint's: \
                     cn-hangzhou, cn-shanghai)",
            )],
        ),
        (
            "defaults policy",
            "defaults: {trafficPolicy: {outlierDetection: {minHealthPercent: 120}}}\n".to_string(),
            String::new(),
            String::new(),
            vec![(
                "defaults.trafficPolicy.outlierDetection.minHealthPercent",
                "120 is above 100",
            )],
        ),
        (
            "health check",
            String::new(),
            "    healthCheck: {path: healthz, interval: 1s, timeout: 2s}\n".to_string(),
            String::new(),
            vec![
                (
                    "services[0].healthCheck.path",
                    "\"healthz\" does not start with '/'",
                ),
                (
                    "services[0].healthCheck.timeout",
                    "2s is longer than the interval 1s",
                ),
            ],
        ),
        (
            "rule policy",
            String::new(),
            String::new(),
            rule(
                "reviews",
                "reviews",
                "trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}",
            ),
            vec![(
                "dr.yaml: DestinationRule default/reviews: \
                     spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                "150 is above 100",
            )],
        ),
        (
            "two rules select the service",
            String::new(),
            String::new(),
            rule("reviews", "reviews", "")
                + &rule("reviews-fqdn", "reviews.default.svc.cluster.local", ""),
            vec![(
                "dr.yaml: DestinationRule default/reviews-fqdn: spec.host",
                "\"reviews.default.svc.cluster.local\" selects services[0] \
                     (default/reviews), which DestinationRule default/reviews (dr.yaml) \
                     already selects; a service takes one DestinationRule",
            )],
        ),
        (
            "rule defined twice",
            String::new(),
            String::new(),
            rule("ratings", "ratings", "") + &rule("ratings", "details", ""),
            vec![(
                "dr.yaml: DestinationRule default/ratings: metadata.name",
                "default/ratings is already defined in dr.yaml (document 1)",
            )],
        ),
        (
            "rule without name and host",
            String::new(),
            String::new(),
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n".to_string(),
            vec![
                (
                    "dr.yaml: DestinationRule in document 1: metadata.name",
                    "must not be empty",
                ),
                (
                    "dr.yaml: DestinationRule in document 1: spec.host",
                    "must not be empty",
                ),
            ],
        ),
    ];
    for (case, top, service, rules, expected) in cases {
        let actual = errors(&top, &service, &rules);
        let actual: Vec<(&str, &str)> = actual
            .iter()
            .map(|(path, message)| (path.as_str(), message.as_str()))
            .collect();
        assert_eq!(actual, expected, "{case}");
    }
}

#[test]
fn accepts_cluster_weights_without_distribute() {
    // The defaults' distribute does not reach a service whose own setting wins.
    let config = valid(
        "defaults: {trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: \
             \"*\", to: {cn-hangzhou: 100}}]}}}}\n",
        "    clusterWeights: {ack-hangzhou: 100, ack-shanghai: 0}\n    trafficPolicy: \
             {loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, to: \
             cn-shanghai}]}}, outlierDetection: {maxEjectionPercent: 25}}\n",
        "",
    );
    assert_eq!(warnings(&config), []);
}

#[test]
fn parse_errors_in_new_fields_name_the_path() {
    // (case, service yaml, expected message start, text it must also contain)
    let cases = [
        (
            "negative percentage",
            "    trafficPolicy: {outlierDetection: {maxEjectionPercent: -5}}\n",
            "services[0].trafficPolicy.outlierDetection.maxEjectionPercent: ",
            "-5",
        ),
        (
            "bad interval",
            "    trafficPolicy: {outlierDetection: {interval: 10 seconds}}\n",
            "services[0].trafficPolicy.outlierDetection.interval: ",
            "invalid value \"10 seconds\"",
        ),
        (
            "bad health check type",
            "    healthCheck: {type: udp}\n",
            "services[0].healthCheck.type: ",
            "invalid value \"udp\": expected http or tcp",
        ),
        (
            "unknown health check field",
            "    healthCheck: {intervall: 1s}\n",
            "services[0].healthCheck.intervall: ",
            "unknown field `intervall`",
        ),
        (
            "negative cluster weight",
            "    clusterWeights: {ack-hangzhou: -1}\n",
            "services[0].clusterWeights.ack-hangzhou: ",
            "-1",
        ),
        (
            "unknown failover field",
            "    trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{form: a}]}}}\n",
            "services[0].trafficPolicy.loadBalancer.localityLbSetting.failover[0].form: ",
            "unknown field `form`",
        ),
    ];
    for (case, service, start, contained) in cases {
        let message = match parse_case("", service, "") {
            Err(ConfigError::Parse { message }) => message,
            other => panic!("{case}: expected a parse error, got {other:?}"),
        };
        assert!(message.starts_with(start), "{case}: {message:?}");
        assert!(message.contains(contained), "{case}: {message:?}");
        assert!(message.contains(" line "), "{case}: {message:?}");
    }
}

#[test]
fn warns_about_what_is_valid_but_not_meant() {
    let failover = "loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, to: \
                        cn-shanghai}]}}";
    // (case, top-level yaml, service yaml, dr.yaml, expected warnings)
    let cases: Vec<(&str, String, String, String, Vec<(&str, &str)>)> = vec![
        (
            "default maxEjectionPercent with 4 endpoints",
            String::new(),
            "    trafficPolicy: {outlierDetection: {}}\n".to_string(),
            String::new(),
            vec![(
                "services[0].trafficPolicy.outlierDetection.maxEjectionPercent",
                "10 with 4 endpoints never ejects any: needs ≥ 25",
            )],
        ),
        (
            "maxEjectionPercent from the defaults",
            "defaults: {trafficPolicy: {outlierDetection: {maxEjectionPercent: 24}}}\n".to_string(),
            String::new(),
            String::new(),
            vec![(
                "defaults.trafficPolicy.outlierDetection.maxEjectionPercent",
                "24 with 4 endpoints of services[0] (default/reviews) never ejects any: \
                     needs ≥ 25",
            )],
        ),
        (
            "enough to eject one, or detection off",
            "defaults: {trafficPolicy: {outlierDetection: {maxEjectionPercent: 10, \
                 consecutive5xxErrors: 0}}}\n"
                .to_string(),
            "    trafficPolicy: {outlierDetection: {maxEjectionPercent: 25}}\n".to_string(),
            String::new(),
            vec![],
        ),
        (
            "failover without outlier detection",
            String::new(),
            format!("    trafficPolicy: {{{failover}}}\n"),
            String::new(),
            vec![(
                "services[0].trafficPolicy.loadBalancer.localityLbSetting.failover",
                "has no effect without outlierDetection (Istio)",
            )],
        ),
        (
            "mesh-wide failoverPriority without outlier detection",
            "defaults: {trafficPolicy: {loadBalancer: {localityLbSetting: \
                 {failoverPriority: [topology.kubernetes.io/region]}}}}\n"
                .to_string(),
            String::new(),
            String::new(),
            vec![(
                "defaults.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority",
                "has no effect without outlierDetection (Istio); services[0] \
                     (default/reviews) has none",
            )],
        ),
        (
            "disabled failover",
            String::new(),
            "    trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: false, \
                 failover: [{from: cn-hangzhou, to: cn-shanghai}]}}}\n"
                .to_string(),
            String::new(),
            vec![],
        ),
        (
            "ignored fields, once per place",
            "defaults: {trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n".to_string(),
            "    trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}, \
                 loadBalancer: {simple: LEAST_REQUEST}, outlierDetection: \
                 {maxEjectionPercent: 50, splitExternalLocalOriginErrors: true}, \
                 outlierDetecton: {}}\n"
                .to_string(),
            rule(
                "reviews",
                "reviews",
                "workloadSelector: {matchLabels: {app: productpage}}, trafficPolicy: \
                     {portLevelSettings: []}, subsets: [{name: v1, trafficPolicy: {}}]",
            ),
            vec![
                (
                    "defaults.trafficPolicy.tls",
                    "accepted but not acted on (geosteer steers at L4)",
                ),
                (
                    "services[0].trafficPolicy.connectionPool.tcp.maxConnections",
                    "accepted but not acted on (geosteer steers at L4; of connectionPool \
                         only tcp.connectTimeout applies)",
                ),
                (
                    "services[0].trafficPolicy.loadBalancer.simple",
                    "accepted but not acted on (geosteer picks endpoints by weighted \
                         consistent hashing)",
                ),
                (
                    "services[0].trafficPolicy.outlierDetection.splitExternalLocalOriginErrors",
                    "accepted but not acted on (geosteer counts connect failures as 5xx, \
                         Istio's rule for TCP)",
                ),
                (
                    "services[0].trafficPolicy.outlierDetecton",
                    "not an Istio trafficPolicy field; ignored",
                ),
                (
                    "dr.yaml: DestinationRule default/reviews: \
                         spec.trafficPolicy.portLevelSettings",
                    "accepted but not acted on (geosteer applies one policy to every port)",
                ),
                (
                    "dr.yaml: DestinationRule default/reviews: spec.workloadSelector",
                    "accepted but not acted on (geosteer applies the rule to every client \
                         on the node)",
                ),
                (
                    "dr.yaml: DestinationRule default/reviews: spec.subsets[0].trafficPolicy",
                    "accepted but not acted on (geosteer has no subsets)",
                ),
            ],
        ),
        (
            "unused rules",
            String::new(),
            String::new(),
            rule("ratings", "ratings", "") + &rule("all", "\"*.default.svc.cluster.local\"", ""),
            vec![
                (
                    "dr.yaml: DestinationRule default/ratings: spec.host",
                    "\"ratings\" selects no service in this config; the rule is not used",
                ),
                (
                    "dr.yaml: DestinationRule default/all: spec.host",
                    "\"*.default.svc.cluster.local\" wildcard hosts select no service \
                         here; the rule is not used",
                ),
            ],
        ),
        (
            "a cluster without weight",
            String::new(),
            "    clusterWeights: {ack-hangzhou: 100}\n".to_string(),
            String::new(),
            vec![(
                "services[0].clusterWeights",
                "cluster \"ack-shanghai\" has endpoints but no weight; it gets no traffic",
            )],
        ),
    ];
    for (case, top, service, rules, expected) in cases {
        let config = valid(&top, &service, &rules);
        let actual = warnings(&config);
        let actual: Vec<(&str, &str)> = actual
            .iter()
            .map(|w| (w.path.as_str(), w.message.as_str()))
            .collect();
        assert_eq!(actual, expected, "{case}");
    }
}

#[test]
fn the_asm_tutorial_loads_verbatim() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/asm-config.yaml");
    let (config, warnings) = load_with_warnings(&path).unwrap();
    assert_eq!(config.loaded_destination_rules.len(), 4);

    let effective = effective_traffic_policy(&config, 0);
    assert_eq!(
        effective.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: 1,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(60),
            ..OutlierDetection::default()
        })
    );
    let locality = effective.locality_lb.unwrap();
    assert_eq!(
        locality
            .failover
            .iter()
            .map(|f| (f.from.as_str(), f.to.as_str()))
            .collect::<Vec<_>>(),
        [
            ("cn-hangzhou", "cn-shanghai"),
            ("cn-shanghai", "cn-hangzhou")
        ]
    );
    assert_eq!(
        effective.sources,
        [
            "outlierDetection from DestinationRule default/reviews (asm.yaml)",
            "localityLbSetting from defaults.trafficPolicy"
        ]
    );

    let warnings: Vec<String> = warnings.iter().map(FieldError::to_string).collect();
    assert_eq!(
        warnings,
        [
            "asm.yaml: DestinationRule default/reviews: spec.trafficPolicy.connectionPool.http: \
                 accepted but not acted on (geosteer steers at L4; of connectionPool only \
                 tcp.connectTimeout applies)",
            "asm.yaml: DestinationRule default/productpage: spec.host: \"productpage\" \
                 selects no service in this config; the rule is not used",
            "asm.yaml: DestinationRule default/ratings: spec.host: \"ratings\" selects no \
                 service in this config; the rule is not used",
            "asm.yaml: DestinationRule default/details: spec.host: \"details\" selects no \
                 service in this config; the rule is not used",
            "asm.yaml: DestinationRule default/reviews: \
                 spec.trafficPolicy.outlierDetection.maxEjectionPercent: 10 with 4 endpoints \
                 of services[0] (default/reviews) never ejects any: needs ≥ 25",
        ]
    );
    assert_eq!(load(&path).unwrap(), config);
}

#[test]
fn connect_timeout_follows_the_policy_precedence_and_udp_outlier_detection_warns() {
    let yaml = "node: {name: n, region: r1}\n\
             defaults: {trafficPolicy: {connectionPool: {tcp: {connectTimeout: 3s}}, \
             outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}}}\n\
             services:\n\
             \x20 - name: web\n\
             \x20   vip: 10.96.0.10\n\
             \x20   ports: [{port: 80, name: http}]\n\
             \x20   trafficPolicy: {connectionPool: {tcp: {connectTimeout: 250ms, maxConnections: 9}}}\n\
             \x20   endpoints: [{ip: 10.1.0.1, region: r1}]\n\
             \x20 - name: dns\n\
             \x20   vip: 10.96.0.53\n\
             \x20   ports: [{port: 53, protocol: UDP}]\n\
             \x20   endpoints: [{ip: 10.1.0.2, region: r1}]\n";
    let config = parse_with(yaml, &|_| unreachable!()).unwrap();
    let web = effective_traffic_policy(&config, 0);
    assert_eq!(web.connect_timeout, Some(Duration::from_millis(250)));
    assert!(
        web.sources
            .contains(&"connectionPool.tcp.connectTimeout from services[0].trafficPolicy".into())
    );
    let dns = effective_traffic_policy(&config, 1);
    assert_eq!(dns.connect_timeout, Some(Duration::from_secs(3)));
    let warnings: Vec<String> = warnings(&config).iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "services[1].ports[0]: UDP port 53: \
                 outlierDetection (from defaults.trafficPolicy) has no passive signal"
        )),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "services[0].trafficPolicy.connectionPool.tcp.maxConnections: accepted but not"
        )),
        "{warnings:#?}"
    );

    let bad = yaml.replace("250ms", "0s");
    let error = parse_with(&bad, &|_| unreachable!())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "services[0].trafficPolicy.connectionPool.tcp.connectTimeout: 0s is out of range"
        ),
        "{error}"
    );
}

#[test]
fn a_missing_rules_file_is_named() {
    let yaml = "node: {name: n, region: r}\ndestinationRules: [missing.yaml]\n";
    let error = crate::config::parse_in(yaml, Path::new("/nonexistent/dir")).unwrap_err();
    assert!(
        matches!(error, ConfigError::DestinationRulesIo { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "cannot read destinationRules file /nonexistent/dir/missing.yaml"
    );
}

#[test]
fn new_fields_round_trip_through_yaml() {
    let config = valid(
        "defaults: {trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: \
             \"cn-hangzhou/*\", to: {\"cn-hangzhou/*\": 90, \"cn-shanghai/*\": 10}}]}}}}\n",
        "    clusterWeights: {ack-hangzhou: 20, ack-shanghai: 80}\n    healthCheck: {type: \
             tcp, port: 9080, interval: 1500ms, timeout: 1s, healthyThreshold: 1}\n    \
             trafficPolicy: {outlierDetection: {consecutiveGatewayErrors: 3, interval: 1m30s, \
             baseEjectionTime: 1m, maxEjectionPercent: 50, minHealthPercent: 30}, \
             loadBalancer: {localityLbSetting: {enabled: true, failover: [{from: cn-hangzhou, \
             to: cn-shanghai}], failoverPriority: [topology.istio.io/cluster]}}}\n",
        "",
    );
    let yaml = serde_yaml_ng::to_string(&config).unwrap();
    let mut reparsed = parse_with(&yaml, &|_| Ok(String::new())).unwrap();
    reparsed.destination_rules = config.destination_rules.clone();
    assert_eq!(reparsed, config, "{yaml}");
}
