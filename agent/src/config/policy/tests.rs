use super::*;

fn policy(yaml: &str) -> TrafficPolicy {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|error| panic!("{yaml}: {error}"))
}

#[test]
fn outlier_detection_takes_istio_defaults() {
    // (yaml, expected)
    let cases = [
        ("{}", OutlierDetection::default()),
        (
            "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 1m}",
            OutlierDetection {
                consecutive_5xx_errors: 1,
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(60),
                ..OutlierDetection::default()
            },
        ),
        (
            "{consecutiveGatewayErrors: 3, consecutive5xxErrors: 0, maxEjectionPercent: 50, \
                 minHealthPercent: 20}",
            OutlierDetection {
                consecutive_5xx_errors: 0,
                consecutive_gateway_errors: 3,
                max_ejection_percent: 50,
                min_health_percent: 20,
                ..OutlierDetection::default()
            },
        ),
        // Istio cannot tell 0 from unset and keeps Envoy's 10.
        ("{maxEjectionPercent: 0}", OutlierDetection::default()),
    ];
    assert_eq!(
        OutlierDetection::default(),
        OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    );
    for (yaml, expected) in cases {
        let parsed = policy(&format!("{{outlierDetection: {yaml}}}"));
        assert_eq!(parsed.outlier_detection, Some(expected), "{yaml}");
    }
}

#[test]
fn health_check_defaults() {
    let check: HealthCheck = serde_yaml_ng::from_str("{}").unwrap();
    assert_eq!(
        check,
        HealthCheck {
            kind: HealthCheckKind::Http,
            path: "/".into(),
            port: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    );
    let tcp: HealthCheck = serde_yaml_ng::from_str("{type: TCP, port: 9080}").unwrap();
    assert_eq!((tcp.kind, tcp.port), (HealthCheckKind::Tcp, Some(9080)));
}

#[test]
fn records_fields_it_does_not_act_on() {
    // (yaml, ignored fields in order)
    let cases = [
        ("{}", vec![]),
        (
            "{connectionPool: {http: {maxRequestsPerConnection: 1}}, tls: {mode: ISTIO_MUTUAL}}",
            vec!["connectionPool.http", "tls"],
        ),
        (
            "{loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}}",
            vec!["loadBalancer.simple"],
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true}}}",
            vec!["loadBalancer.consistentHash"],
        ),
        (
            "{outlierDetection: {splitExternalLocalOriginErrors: true, \
                 consecutiveLocalOriginFailures: 3}}",
            vec![
                "outlierDetection.splitExternalLocalOriginErrors",
                "outlierDetection.consecutiveLocalOriginFailures",
            ],
        ),
        (
            "{portLevelSettings: [{port: {number: 80}}], tunnel: {targetHost: x, \
                 targetPort: 1}, proxyProtocol: {version: V2}}",
            vec!["portLevelSettings", "tunnel", "proxyProtocol"],
        ),
        (
            "{loadBalancer: {localityLbSetting: {failovr: []}}}",
            vec!["loadBalancer.localityLbSetting.failovr"],
        ),
        (
            "{connectionPool: {tcp: {connectTimeout: 1s, maxConnections: 5}}}",
            vec!["connectionPool.tcp.maxConnections"],
        ),
        // An ignored field's own contents are not listed again.
        (
            "{portLevelSettings: [{port: {number: 80}, outlierDetection: {x: 1}}]}",
            vec!["portLevelSettings"],
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(policy(yaml).ignored, expected, "{yaml}");
    }
}

#[test]
fn ignored_field_messages() {
    let cases = [
        (
            "connectionPool.http",
            "accepted but not acted on (geosteer steers at L4; of connectionPool only \
                 tcp.connectTimeout applies)",
        ),
        (
            "loadBalancer.simple",
            "accepted but not acted on (geosteer picks endpoints by weighted consistent \
                 hashing)",
        ),
        ("conectionPool", "not an Istio trafficPolicy field; ignored"),
    ];
    for (field, expected) in cases {
        assert_eq!(ignored_field_message(field), expected, "{field}");
    }
}

#[test]
fn locality_lb_setting_fields() {
    let parsed = policy(
        r#"
loadBalancer:
  localityLbSetting:
    enabled: false
    failover: [{from: cn-hangzhou, to: cn-shanghai}]
    failoverPriority: [topology.kubernetes.io/region]
    distribute: [{from: "cn-hangzhou/*", to: {"cn-hangzhou/*": 90, "cn-shanghai/*": 10}}]
"#,
    );
    let setting = parsed.locality_lb_setting().unwrap();
    assert!(!setting.is_enabled());
    assert_eq!(
        setting.failover,
        [FailoverRule {
            from: "cn-hangzhou".into(),
            to: "cn-shanghai".into()
        }]
    );
    assert_eq!(setting.failover_priority, ["topology.kubernetes.io/region"]);
    assert_eq!(setting.distribute[0].to["cn-shanghai/*"], 10);

    let empty = policy("{loadBalancer: {localityLbSetting: {failover: }}}");
    assert!(empty.locality_lb_setting().unwrap().is_enabled());
    assert!(empty.locality_lb_setting().unwrap().failover.is_empty());
}

#[test]
fn locality_patterns() {
    // (text, fixed segments or None when rejected)
    let cases: [(&str, Option<&[&str]>); 11] = [
        ("*", Some(&[])),
        ("r", Some(&["r"])),
        ("r/*", Some(&["r"])),
        ("r/z", Some(&["r", "z"])),
        ("r/z/*", Some(&["r", "z"])),
        ("r/z/s", Some(&["r", "z", "s"])),
        ("", None),
        ("r//s", None),
        ("*/z", None),
        ("r/z*", None),
        ("r/z/s/x", None),
    ];
    for (text, expected) in cases {
        assert_eq!(locality_pattern(text).ok().as_deref(), expected, "{text}");
    }
    assert!(overlap(&["r"], &["r", "z"]));
    assert!(overlap(&[], &["r"]));
    assert!(!overlap(&["r", "a"], &["r", "b"]));
}

#[test]
fn rejects_bad_policies() {
    let regions = BTreeSet::from(["cn-hangzhou", "cn-shanghai"]);
    // (case, yaml of a trafficPolicy, expected errors: (path below "tp", message))
    let cases: &[(&str, &str, &[(&str, &str)])] = &[
        (
            "failover with distribute",
            r#"{loadBalancer: {localityLbSetting: {
                    failover: [{from: cn-hangzhou, to: cn-shanghai}],
                    distribute: [{from: "*", to: {"cn-hangzhou": 100}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting",
                "failover and distribute are mutually exclusive (one orders localities by \
                     priority, the other splits load by weight); keep one",
            )],
        ),
        (
            "failoverPriority with distribute",
            r#"{loadBalancer: {localityLbSetting: {
                    failoverPriority: [topology.kubernetes.io/region],
                    distribute: [{from: "*", to: {"cn-hangzhou": 100}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting",
                "failoverPriority and distribute are mutually exclusive (one orders \
                     localities by priority, the other splits load by weight); keep one",
            )],
        ),
        (
            "unknown failover region",
            "{loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, to: \
                 cn-beijing}]}}}",
            &[(
                "tp.loadBalancer.localityLbSetting.failover[0].to",
                "\"cn-beijing\" is not a known region (the node's or an endpoint's: \
                     cn-hangzhou, cn-shanghai)",
            )],
        ),
        (
            "empty failover region",
            "{loadBalancer: {localityLbSetting: {failover: [{to: cn-shanghai}]}}}",
            &[(
                "tp.loadBalancer.localityLbSetting.failover[0].from",
                "must not be empty",
            )],
        ),
        (
            "failover to itself",
            "{loadBalancer: {localityLbSetting: {failover: [{from: cn-shanghai, to: \
                 cn-shanghai}]}}}",
            &[(
                "tp.loadBalancer.localityLbSetting.failover[0]",
                "from and to are both \"cn-shanghai\"; they must differ",
            )],
        ),
        (
            "empty failoverPriority label",
            "{loadBalancer: {localityLbSetting: {failoverPriority: [\"\"]}}}",
            &[(
                "tp.loadBalancer.localityLbSetting.failoverPriority[0]",
                "must not be empty",
            )],
        ),
        (
            "distribute weights do not sum to 100",
            r#"{loadBalancer: {localityLbSetting: {distribute: [
                    {from: "cn-hangzhou/*", to: {"cn-hangzhou/*": 80, "cn-shanghai/*": 10}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting.distribute[0].to",
                "weights sum to 90, not 100",
            )],
        ),
        (
            "distribute weight 0",
            r#"{loadBalancer: {localityLbSetting: {distribute: [
                    {from: "*", to: {"cn-hangzhou": 100, "cn-shanghai": 0}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting.distribute[0].to[\"cn-shanghai\"]",
                "0 is not allowed; leave the locality out to send it nothing",
            )],
        ),
        (
            "distribute weight above 100",
            r#"{loadBalancer: {localityLbSetting: {distribute: [
                    {from: "*", to: {"cn-hangzhou": 150}}]}}}"#,
            &[
                (
                    "tp.loadBalancer.localityLbSetting.distribute[0].to[\"cn-hangzhou\"]",
                    "150 is above 100",
                ),
                (
                    "tp.loadBalancer.localityLbSetting.distribute[0].to",
                    "weights sum to 150, not 100",
                ),
            ],
        ),
        (
            "bad distribute from",
            r#"{loadBalancer: {localityLbSetting: {distribute: [
                    {from: "*/b", to: {"cn-hangzhou": 100}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting.distribute[0].from",
                "\"*/b\" is not a locality: expected region[/zone[/subzone]], with '*' \
                     allowed as the last segment",
            )],
        ),
        (
            "empty distribute from and to",
            r#"{loadBalancer: {localityLbSetting: {distribute: [{from: ""}]}}}"#,
            &[
                (
                    "tp.loadBalancer.localityLbSetting.distribute[0].from",
                    "must not be empty",
                ),
                (
                    "tp.loadBalancer.localityLbSetting.distribute[0].to",
                    "must not be empty",
                ),
            ],
        ),
        (
            "bad distribute target",
            r#"{loadBalancer: {localityLbSetting: {distribute: [
                    {from: "*", to: {"cn-hangzhou//a": 100}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting.distribute[0].to[\"cn-hangzhou//a\"]",
                "\"cn-hangzhou//a\" is not a locality: expected region[/zone[/subzone]], \
                     with '*' allowed as the last segment",
            )],
        ),
        (
            "overlapping distribute sources",
            r#"{loadBalancer: {localityLbSetting: {distribute: [
                    {from: "cn-hangzhou/*", to: {"cn-hangzhou": 100}},
                    {from: "cn-hangzhou/cn-hangzhou-b", to: {"cn-hangzhou": 100}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting.distribute[1].from",
                "\"cn-hangzhou/cn-hangzhou-b\" overlaps distribute[0].from \
                     \"cn-hangzhou/*\"; a client locality must match one rule",
            )],
        ),
        (
            "overlapping distribute targets",
            r#"{loadBalancer: {localityLbSetting: {distribute: [
                    {from: "*", to: {"cn-hangzhou": 50, "cn-hangzhou/b": 50}}]}}}"#,
            &[(
                "tp.loadBalancer.localityLbSetting.distribute[0].to[\"cn-hangzhou/b\"]",
                "overlaps \"cn-hangzhou\"; each locality may get one weight",
            )],
        ),
        (
            "max ejection percent",
            "{outlierDetection: {maxEjectionPercent: 150}}",
            &[("tp.outlierDetection.maxEjectionPercent", "150 is above 100")],
        ),
        (
            "min health percent",
            "{outlierDetection: {minHealthPercent: 101}}",
            &[("tp.outlierDetection.minHealthPercent", "101 is above 100")],
        ),
        (
            "consecutive 5xx",
            "{outlierDetection: {consecutive5xxErrors: 10001}}",
            &[(
                "tp.outlierDetection.consecutive5xxErrors",
                "10001 is above the maximum 10000",
            )],
        ),
        (
            "consecutive gateway errors",
            "{outlierDetection: {consecutiveGatewayErrors: 20000}}",
            &[(
                "tp.outlierDetection.consecutiveGatewayErrors",
                "20000 is above the maximum 10000",
            )],
        ),
        (
            "zero interval",
            "{outlierDetection: {interval: 0s}}",
            &[(
                "tp.outlierDetection.interval",
                "0s is below the minimum 1ms",
            )],
        ),
        (
            "long base ejection time",
            "{outlierDetection: {baseEjectionTime: 25h}}",
            &[(
                "tp.outlierDetection.baseEjectionTime",
                "25h is above the maximum 24h",
            )],
        ),
    ];
    for (case, yaml, expected) in cases {
        let mut errors = Vec::new();
        validate_traffic_policy(&policy(yaml), "tp", Some(&regions), &mut errors);
        let actual: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(actual, *expected, "{case}");
    }
}

#[test]
fn accepts_good_policies() {
    let regions = BTreeSet::from(["cn-hangzhou", "cn-shanghai"]);
    let cases = [
        "{}",
        "{loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, to: \
             cn-shanghai}, {from: cn-shanghai, to: cn-hangzhou}]}}}",
        r#"{loadBalancer: {localityLbSetting: {distribute: [
                {from: "cn-hangzhou/*", to: {"cn-hangzhou/*": 90, "cn-shanghai/*": 10}},
                {from: "cn-shanghai/*", to: {"*": 100}}]}}}"#,
        "{loadBalancer: {localityLbSetting: {failover: [{from: cn-hangzhou, to: \
             cn-shanghai}], failoverPriority: [topology.istio.io/cluster]}}}",
        "{outlierDetection: {maxEjectionPercent: 100, minHealthPercent: 100, \
             consecutive5xxErrors: 10000, interval: 1ms, baseEjectionTime: 24h}}",
    ];
    for yaml in cases {
        let mut errors = Vec::new();
        validate_traffic_policy(&policy(yaml), "tp", Some(&regions), &mut errors);
        assert_eq!(errors, [], "{yaml}");
    }
}

#[test]
fn rejects_bad_health_checks() {
    // (case, yaml, path below "hc", message)
    let cases = [
        (
            "relative path",
            "{path: healthz}",
            "hc.path",
            "\"healthz\" does not start with '/'",
        ),
        ("port 0", "{port: 0}", "hc.port", "0 is not a valid port"),
        (
            "short interval",
            "{interval: 50ms, timeout: 10ms}",
            "hc.interval",
            "50ms is below the minimum 100ms",
        ),
        (
            "long interval",
            "{interval: 2h}",
            "hc.interval",
            "2h is above the maximum 1h",
        ),
        (
            "zero timeout",
            "{timeout: 0s}",
            "hc.timeout",
            "0s is not a valid timeout",
        ),
        (
            "timeout above interval",
            "{interval: 1s, timeout: 2s}",
            "hc.timeout",
            "2s is longer than the interval 1s",
        ),
        (
            "healthy threshold 0",
            "{healthyThreshold: 0}",
            "hc.healthyThreshold",
            "0 is below the minimum 1",
        ),
        (
            "unhealthy threshold 101",
            "{unhealthyThreshold: 101}",
            "hc.unhealthyThreshold",
            "101 is above the maximum 100",
        ),
    ];
    for (case, yaml, path, message) in cases {
        let check: HealthCheck = serde_yaml_ng::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        validate_health_check(&check, "hc", &mut errors);
        assert_eq!(errors, [FieldError::new(path, message)], "{case}");
    }

    // A tcp check has no path to get wrong.
    let tcp: HealthCheck = serde_yaml_ng::from_str("{type: tcp, path: x}").unwrap();
    let mut errors = Vec::new();
    validate_health_check(&tcp, "hc", &mut errors);
    assert_eq!(errors, []);
}

#[test]
fn null_and_zero_read_as_istio_does() {
    let policy = policy(
        "{loadBalancer: {localityLbSetting: {failover: , failoverPriority: , distribute: }}, \
          outlierDetection: {maxEjectionPercent: 0}, connectionPool: {tcp: {connectTimeout: }}}",
    );
    assert_eq!(
        policy.locality_lb_setting(),
        Some(&LocalityLbSetting::default())
    );
    assert_eq!(
        policy.outlier_detection.unwrap().max_ejection_percent,
        DEFAULT_MAX_EJECTION_PERCENT
    );
    assert_eq!(policy.connection_pool.unwrap().connect_timeout(), None);
}

#[test]
fn a_field_written_twice_is_refused() {
    for yaml in [
        "{tls: {}, tls: {}}",
        "{outlierDetection: {interval: 1s, interval: 2s}}",
        "{connectionPool: {http: {}, http: {}}}",
    ] {
        let error = serde_yaml_ng::from_str::<TrafficPolicy>(yaml).unwrap_err();
        assert!(
            error.to_string().contains("duplicate field"),
            "{yaml}: {error}"
        );
    }
}

#[test]
fn a_value_of_the_wrong_type_names_what_was_expected() {
    for (yaml, expected) in [
        ("[1]", "a trafficPolicy map"),
        ("{connectionPool: 1}", "a connectionPool map"),
        ("{outlierDetection: [x]}", "an outlierDetection map"),
    ] {
        let error = serde_yaml_ng::from_str::<TrafficPolicy>(yaml).unwrap_err();
        assert!(error.to_string().contains(expected), "{yaml}: {error}");
    }
}
