use std::{net::Ipv4Addr, path::Path, time::Duration};

use geosteer_common::MAX_BACKENDS_PER_SERVICE;

use super::*;

const EXAMPLE_YAML: &str = r#"
node: {name: node-1, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: ack-hangzhou}
dataplane:
  tc: [cl0, "veth*"]
  xdp: []
  xdpMode: auto
  conntrackSize: 262144
  maxServices: 1024
  maxBackends: 65536
  pinPath: /sys/fs/bpf/geosteer
  connectTimeout: 1s
  memoryLimit: 400Mi
services:
  - name: reviews
    namespace: default
    vip: 10.96.0.10
    ports: [{port: 80, targetPort: 9080, protocol: TCP}]
    endpoints:
      - {ip: 10.1.0.11, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: ack-hangzhou, weight: 1}
"#;

/// A valid config that the bad-input cases below break one line at a time.
const BASE_YAML: &str = r#"
node: {name: node-1, region: cn-hangzhou}
dataplane:
  tc: [cl0]
services:
  - name: reviews
    vip: 10.96.0.10
    ports: [{port: 80}]
    endpoints:
      - {ip: 10.1.0.11}
      - {ip: 10.1.0.12, weight: 3}
  - name: ratings
    vip: 10.96.0.11
    ports: [{port: 80}]
    endpoints:
      - {ip: 10.1.0.21}
"#;

fn base_with(from: &str, to: &str) -> String {
    assert!(BASE_YAML.contains(from), "{from:?} is not in BASE_YAML");
    BASE_YAML.replacen(from, to, 1)
}

fn field_errors(yaml: &str) -> Vec<FieldError> {
    match parse(yaml) {
        Err(ConfigError::Invalid(errors)) => errors,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

fn parse_message(yaml: &str) -> String {
    match parse(yaml) {
        Err(ConfigError::Parse { message }) => message,
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn parses_the_example() {
    let expected = Config {
        node: Node {
            name: "node-1".into(),
            region: "cn-hangzhou".into(),
            zone: "cn-hangzhou-b".into(),
            cluster: "ack-hangzhou".into(),
            ..Node::default()
        },
        dataplane: Dataplane {
            tc: vec!["cl0".into(), "veth*".into()],
            xdp: vec![],
            xdp_redirect_to: vec![],
            xdp_mode: XdpMode::Auto,
            conntrack_size: 262_144,
            conntrack_size6: geosteer_common::CONNTRACK6_SIZE,
            max_services: 1024,
            max_backends: 65_536,
            table_chunks: None,
            pin_path: "/sys/fs/bpf/geosteer".into(),
            connect_timeout: Duration::from_secs(1),
            conntrack: ConntrackTimeouts::default(),
            memory_limit: Some(400 << 20),
        },
        admin: Admin::default(),
        defaults: Defaults::default(),
        destination_rules: vec![],
        services: vec![Service {
            name: "reviews".into(),
            namespace: "default".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10).into(),
            vip6: None,
            ports: vec![ServicePort {
                name: None,
                app_protocol: None,
                port: 80,
                target_port: 9080,
                protocol: Protocol::Tcp,
            }],
            endpoints: vec![Endpoint {
                ip: Ipv4Addr::new(10, 1, 0, 11).into(),
                region: "cn-hangzhou".into(),
                zone: "cn-hangzhou-b".into(),
                cluster: "ack-hangzhou".into(),
                weight: 1,
                ..Endpoint::default()
            }],
            traffic_policy: None,
            cluster_weights: None,
            health_check: None,
            reset_on_eject: false,
            cluster_local: None,
            traffic_distribution: None,
            session_affinity: None,
            on_eject: None,
        }],
        kubernetes: None,
        loaded_destination_rules: vec![],
    };
    assert_eq!(parse(EXAMPLE_YAML).unwrap(), expected);
}

#[test]
fn fills_in_defaults() {
    let config = parse(
        "node: {name: n, region: r}\n\
             services:\n  - {name: s, vip: 10.96.0.1, ports: [{port: 53, protocol: udp}], \
             endpoints: [{ip: 10.1.0.1}]}\n",
    )
    .unwrap();
    assert_eq!(config.node.zone, "");
    assert_eq!(config.node.cluster, "");
    assert_eq!(config.dataplane, Dataplane::default());
    assert_eq!(config.admin.metrics, "127.0.0.1:9595");
    assert_eq!(config.admin.socket, Path::new("/run/geosteer/admin.sock"));
    assert_eq!(
        config.admin.metrics_address(),
        Some("127.0.0.1:9595".parse().unwrap())
    );
    assert_eq!(config.dataplane.pin_path, Path::new("/sys/fs/bpf/geosteer"));
    let service = &config.services[0];
    assert_eq!(service.namespace, "default");
    assert_eq!(
        service.ports[0],
        ServicePort {
            name: None,
            app_protocol: None,
            port: 53,
            target_port: 53,
            protocol: Protocol::Udp
        }
    );
    assert_eq!(
        service.endpoints[0],
        Endpoint {
            ip: Ipv4Addr::new(10, 1, 0, 1).into(),
            region: String::new(),
            zone: String::new(),
            cluster: String::new(),
            weight: 1,
            ..Endpoint::default()
        }
    );

    let minimal = parse("node: {name: n, region: r}").unwrap();
    assert!(minimal.services.is_empty());
}

#[test]
fn session_affinity_and_traffic_distribution() {
    let with = |fields: &str| base_with("    endpoints:", &format!("    {fields}\n    endpoints:"));
    let config = parse(&with(
        "sessionAffinity: {}\n    trafficDistribution: PreferSameNode",
    ))
    .unwrap();
    let service = &config.services[0];
    assert_eq!(
        service.session_affinity,
        Some(SessionAffinity {
            timeout: DEFAULT_AFFINITY_TIMEOUT
        }),
        "Kubernetes' 3h by default"
    );
    assert_eq!(
        service.traffic_distribution,
        Some(TrafficDistribution::PreferSameNode)
    );
    for timeout in ["0s", "25h"] {
        let errors = field_errors(&with(&format!("sessionAffinity: {{timeout: {timeout}}}")));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "services[0].sessionAffinity.timeout");
        assert!(
            errors[0].message.contains("out of range (1s to 24h)"),
            "{errors:?}"
        );
    }
    let message = parse_message(&with("trafficDistribution: PreferFar"));
    assert!(
        message.contains("services[0].trafficDistribution") && message.contains("PreferFar"),
        "{message}"
    );
}

#[test]
fn on_eject_values_and_the_older_spelling() {
    let with = |fields: &str| base_with("    endpoints:", &format!("    {fields}\n    endpoints:"));
    let value = |yaml: &str| parse(yaml).unwrap().services[0].on_eject_value();
    assert_eq!(value(BASE_YAML), geosteer_common::ON_EJECT_AUTO);
    assert_eq!(
        value(&with("onEject: drain")),
        geosteer_common::ON_EJECT_DRAIN
    );
    assert_eq!(
        value(&with("onEject: keep")),
        geosteer_common::ON_EJECT_KEEP
    );
    assert_eq!(
        value(&with("resetOnEject: true")),
        geosteer_common::ON_EJECT_RESET
    );
    let errors = field_errors(&with("resetOnEject: true\n    onEject: keep"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "services[0].onEject");
    assert!(
        errors[0]
            .message
            .contains("keep contradicts resetOnEject: true"),
        "{errors:?}"
    );
    let message = parse_message(&with("onEject: later"));
    assert!(message.contains("services[0].onEject"), "{message}");
}

#[test]
fn accepts_what_the_rules_allow() {
    let cases = [
        ("zero endpoints", base_with("      - {ip: 10.1.0.21}\n", "")),
        ("drained endpoint", base_with("weight: 3", "weight: 0")),
        (
            "same interface for tc and xdp",
            base_with("tc: [cl0]", "tc: [cl0]\n  xdp: [cl0]"),
        ),
        (
            "long glob",
            base_with("tc: [cl0]", "tc: [\"a-very-long-interface-*\"]"),
        ),
        (
            "same vip and port, other protocol",
            base_with(
                "vip: 10.96.0.11\n    ports: [{port: 80}]",
                "vip: 10.96.0.10\n    ports: [{port: 80, protocol: UDP}]",
            ),
        ),
        (
            "disabled connect timeout",
            base_with("tc: [cl0]", "tc: [cl0]\n  connectTimeout: 0s"),
        ),
        ("generic xdp", base_with("tc: [cl0]", "xdpMode: generic")),
        (
            "admin endpoints",
            base_with(
                "dataplane:",
                "admin: {metrics: \"[::1]:9100\", socket: /tmp/gs.sock}\ndataplane:",
            ),
        ),
        (
            "metrics disabled",
            base_with("dataplane:", "admin: {metrics: \"\"}\ndataplane:"),
        ),
        (
            "a dual-stack service, one endpoint without IPv6",
            base_with(
                "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
                "vip: 10.96.0.11\n    vip6: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    \
                 endpoints:\n      - {ip: 10.1.0.21, ip6: \"2001:db8:1::21\"}\n      - {ip: 10.1.0.22}",
            ),
        ),
        (
            "an IPv6 service",
            base_with(
                "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
                "vip: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    endpoints:\n      \
                 - {ip: \"2001:db8:1::21\"}\n      - {ip: \"fd00::22\"}",
            ),
        ),
    ];
    for (case, yaml) in cases {
        if let Err(error) = parse(&yaml) {
            panic!("{case}: {error}");
        }
    }
}

#[test]
fn the_default_config_is_valid() {
    let config = default_config();
    assert_eq!(config.node.name, "lab-node");
    assert_eq!(config.dataplane.tc, ["cl0"]);
    assert_eq!(config.dataplane.pin_path, Path::new("/run/geosteer/bpf"));
    assert_eq!(config.services.len(), 1);
    assert_eq!(config.services[0].ports[0].target_port, 8080);
    assert_eq!(config.services[0].endpoints.len(), 4);
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/default-config.yaml");
    assert_eq!(load(&path).unwrap(), default_config());

    let missing = Path::new("/nonexistent/geosteer.yaml");
    let error = load(missing).unwrap_err();
    assert!(matches!(error, ConfigError::Io { .. }));
    assert!(error.to_string().contains("/nonexistent/geosteer.yaml"));
}

#[test]
fn serializing_round_trips() {
    for config in [default_config(), parse(EXAMPLE_YAML).unwrap()] {
        let yaml = serde_yaml_ng::to_string(&config).unwrap();
        assert_eq!(parse(&yaml).unwrap(), config, "{yaml}");
    }
}

#[test]
fn parse_errors_name_the_field_and_value() {
    // (case, yaml, path the message starts with, text it must also contain)
    let cases = [
        (
            "bad vip",
            base_with("10.96.0.10", "10.96.0.999"),
            "services[0].vip: ",
            "invalid value \"10.96.0.999\": invalid IP address syntax",
        ),
        (
            "bad endpoint ip",
            base_with("10.1.0.12", "10.1.0"),
            "services[0].endpoints[1].ip: ",
            "\"10.1.0\"",
        ),
        (
            "port too big",
            base_with("{port: 80}", "{port: 70000}"),
            "services[0].ports[0].port: ",
            "70000",
        ),
        (
            "unknown top-level field",
            base_with("services:", "servces:"),
            "servces: ",
            "unknown field `servces`",
        ),
        (
            "misspelled weight",
            base_with("weight: 3", "wieght: 3"),
            "services[0].endpoints[1].wieght: ",
            "unknown field `wieght`",
        ),
        (
            "unknown admin field",
            base_with("dataplane:", "admin: {metricz: \"\"}\ndataplane:"),
            "admin.metricz: ",
            "unknown field `metricz`",
        ),
        (
            "unknown port field",
            base_with("{port: 80}", "{port: 80, nodePort: 30080}"),
            "services[0].ports[0].nodePort: ",
            "unknown field `nodePort`",
        ),
        (
            "sctp",
            base_with("{port: 80}", "{port: 80, protocol: SCTP}"),
            "services[0].ports[0].protocol: ",
            "invalid value \"SCTP\": expected TCP or UDP",
        ),
        (
            "bad duration",
            base_with("tc: [cl0]", "connectTimeout: 1 parsec"),
            "dataplane.connectTimeout: ",
            "invalid value \"1 parsec\"",
        ),
        (
            "bad xdp mode",
            base_with("tc: [cl0]", "xdpMode: turbo"),
            "dataplane.xdpMode: ",
            "turbo",
        ),
        (
            "missing node name",
            base_with("{name: node-1, region", "{region"),
            "node: ",
            "missing field `name`",
        ),
        ("not yaml", "node: {name: [".to_string(), "", "line 1"),
    ];
    for (case, yaml, path, contained) in cases {
        let message = parse_message(&yaml);
        assert!(
            message.starts_with(path),
            "{case}: {message:?} does not start with {path:?}"
        );
        assert!(
            message.contains(contained),
            "{case}: {message:?} does not contain {contained:?}"
        );
        assert!(
            message.contains(" line "),
            "{case}: {message:?} has no line"
        );
    }
}

#[test]
fn validation_errors_name_the_field_and_value() {
    // (case, text in BASE_YAML, its replacement, path of the only error, text its message
    // must contain)
    let cases = [
        (
            "port 0",
            "{port: 80}",
            "{port: 0}",
            "services[0].ports[0].port",
            "0 is not a valid port",
        ),
        (
            "target port 0",
            "{port: 80}",
            "{port: 80, targetPort: 0}",
            "services[0].ports[0].targetPort",
            "0 is not a valid port",
        ),
        (
            "duplicate frontend across services",
            "vip: 10.96.0.11",
            "vip: 10.96.0.10",
            "services[1].ports[0]",
            "10.96.0.10:80/TCP is already used by services[0] (default/reviews)",
        ),
        (
            "an IPv6 endpoint of an IPv4 VIP",
            "{ip: 10.1.0.21}",
            "{ip: \"2001:db8::21\"}",
            "services[1].endpoints[0].ip",
            "2001:db8::21 is an IPv6 address and the service's vip 10.96.0.11 is IPv4",
        ),
        (
            "an IPv4 endpoint of an IPv6 VIP",
            "vip: 10.96.0.11",
            "vip: \"2001:db8:96::11\"",
            "services[1].endpoints[0].ip",
            "10.1.0.21 is an IPv4 address and the service's vip 2001:db8:96::11 is IPv6",
        ),
        (
            "an IPv4-mapped VIP",
            "vip: 10.96.0.11",
            "vip: \"::ffff:10.96.0.11\"",
            "services[1].vip",
            "::ffff:10.96.0.11 is an IPv4-mapped address: write 10.96.0.11",
        ),
        (
            "an IPv6 multicast endpoint",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: \"ff02::1\"}",
            "services[1].endpoints[0].ip",
            "ff02::1 is a multicast address",
        ),
        (
            "an IPv4 vip6",
            "vip: 10.96.0.11",
            "vip: 10.96.0.11\n    vip6: 10.96.0.12",
            "services[1].vip6",
            "10.96.0.12 is not an IPv6 address",
        ),
        (
            "a dual-stack service with an IPv6 vip",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: \"2001:db8:96::11\"\n    vip6: \"2001:db8:96::12\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: \"2001:db8::21\"}",
            "services[1].vip",
            "2001:db8:96::11 is IPv6: a dual-stack service's vip is its IPv4 address, vip6 its IPv6 one",
        ),
        (
            "an ip6 without a vip6",
            "{ip: 10.1.0.21}",
            "{ip: 10.1.0.21, ip6: \"2001:db8::21\"}",
            "services[1].endpoints[0].ip6",
            "2001:db8::21: the service has no vip6 to steer to it",
        ),
        (
            "a duplicate ip6",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: 10.96.0.11\n    vip6: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21, ip6: \"2001:db8::21\"}\n      - {ip: 10.1.0.22, ip6: \"2001:db8::21\"}",
            "services[1].endpoints[1].ip6",
            "2001:db8::21 is already listed at endpoints[0]",
        ),
        (
            "an IPv6 ip in a dual-stack service",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: 10.96.0.11\n    vip6: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: \"2001:db8::21\"}",
            "services[1].endpoints[0].ip",
            "(an endpoint's IPv6 address is its ip6)",
        ),
        (
            "an IPv4 ip6",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: 10.96.0.11\n    vip6: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21, ip6: 10.1.0.22}",
            "services[1].endpoints[0].ip6",
            "10.1.0.22 is not an IPv6 address",
        ),
        (
            "a vip6 frontend taken by another service",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: 10.96.0.11\n    vip6: \"2001:db8:96::10\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}\n  - name: other6\n    vip: \"2001:db8:96::10\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: \"2001:db8::31\"}",
            "services[2].ports[0]",
            "[2001:db8:96::10]:80/TCP is already used by services[1] (default/ratings)",
        ),
        (
            "an IPv6 link-local endpoint",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: \"fe80::21\"}",
            "services[1].endpoints[0].ip",
            "fe80::21 is a link-local address (fe80::/10): not routable through the node",
        ),
        (
            "the IPv6 loopback VIP",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: \"::1\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: \"2001:db8::21\"}",
            "services[1].vip",
            "::1 is the loopback address",
        ),
        (
            "duplicate IPv6 frontend",
            "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
            "vip: \"2001:db8:96::11\"\n    ports: [{port: 80}, {port: 80, targetPort: 81}]\n    \
             endpoints:\n      - {ip: \"2001:db8::21\"}",
            "services[1].ports[1]",
            "[2001:db8:96::11]:80/TCP is already used by services[1].ports[0]",
        ),
        (
            "duplicate frontend within a service",
            "{port: 80}",
            "{port: 80}, {port: 80, targetPort: 81}",
            "services[0].ports[1]",
            "10.96.0.10:80/TCP is already used by services[0].ports[0]",
        ),
        (
            "duplicate port name",
            "{port: 80}",
            "{name: web, port: 80}, {name: web, port: 81}",
            "services[0].ports[1].name",
            "\"web\" is already used by services[0].ports[0]",
        ),
        (
            "duplicate endpoint ip",
            "10.1.0.12",
            "10.1.0.11",
            "services[0].endpoints[1].ip",
            "10.1.0.11 is already listed at endpoints[0]",
        ),
        (
            "weight too big",
            "weight: 3",
            "weight: 5000000",
            "services[0].endpoints[1].weight",
            "5000000 is above the maximum 1000000",
        ),
        (
            "relative pin path",
            "tc: [cl0]",
            "pinPath: run/bpf",
            "dataplane.pinPath",
            "\"run/bpf\" is not an absolute path",
        ),
        (
            "conntrack too small",
            "tc: [cl0]",
            "conntrackSize: 10",
            "dataplane.conntrackSize",
            "10 is below the minimum 1024",
        ),
        (
            "max services too big",
            "tc: [cl0]",
            "maxServices: 300000",
            "dataplane.maxServices",
            "300000 is above the maximum 262144",
        ),
        (
            "max backends too small",
            "tc: [cl0]",
            "maxBackends: 15",
            "dataplane.maxBackends",
            "15 is below the minimum 16",
        ),
        (
            "table chunks too few",
            "tc: [cl0]",
            "tableChunks: 10",
            "dataplane.tableChunks",
            "10 is below the minimum 16",
        ),
        (
            "tables that do not fit",
            "tc: [cl0]",
            "tableChunks: 20",
            "services",
            "their Maglev tables need 99 chunks, above the 20 of dataplane.tableChunks",
        ),
        (
            "bad glob",
            "tc: [cl0]",
            "tc: [\"[\"]",
            "dataplane.tc[0]",
            "\"[\" is not a valid pattern",
        ),
        (
            "empty interface",
            "tc: [cl0]",
            "xdp: [\"\"]",
            "dataplane.xdp[0]",
            "must not be empty",
        ),
        (
            "interface name too long",
            "tc: [cl0]",
            "tc: [a-very-long-interface]",
            "dataplane.tc[0]",
            "\"a-very-long-interface\" is longer than 15 bytes",
        ),
        (
            "empty node name",
            "name: node-1",
            "name: \"\"",
            "node.name",
            "must not be empty",
        ),
        (
            "empty node region",
            "region: cn-hangzhou",
            "region: \"\"",
            "node.region",
            "must not be empty",
        ),
        (
            "bad service name",
            "name: reviews",
            "name: Reviews",
            "services[0].name",
            "\"Reviews\" is not a valid DNS-1123 label",
        ),
        (
            "bad namespace",
            "name: reviews",
            "name: reviews\n    namespace: -prod",
            "services[0].namespace",
            "\"-prod\"",
        ),
        (
            "duplicate service",
            "name: ratings",
            "name: reviews",
            "services[1].name",
            "default/reviews is already defined by services[0]",
        ),
        (
            "unspecified vip",
            "10.96.0.10",
            "0.0.0.0",
            "services[0].vip",
            "0.0.0.0 is the unspecified address",
        ),
        (
            "multicast vip",
            "10.96.0.10",
            "224.0.0.1",
            "services[0].vip",
            "224.0.0.1 is a multicast address",
        ),
        (
            "broadcast endpoint",
            "10.1.0.21",
            "255.255.255.255",
            "services[1].endpoints[0].ip",
            "255.255.255.255 is the broadcast address",
        ),
        (
            "no ports",
            "    ports: [{port: 80}]\n",
            "",
            "services[0].ports",
            "at least one port is required",
        ),
        (
            "metrics not an address",
            "dataplane:",
            "admin: {metrics: localhost:9595}\ndataplane:",
            "admin.metrics",
            "\"localhost:9595\" is not an IP:PORT address",
        ),
        (
            "metrics without port",
            "dataplane:",
            "admin: {metrics: 127.0.0.1}\ndataplane:",
            "admin.metrics",
            "\"127.0.0.1\" is not an IP:PORT address",
        ),
        (
            "relative admin socket",
            "dataplane:",
            "admin: {socket: run/admin.sock}\ndataplane:",
            "admin.socket",
            "\"run/admin.sock\" is not an absolute path",
        ),
        (
            "too many service ports",
            "tc: [cl0]",
            "maxServices: 1",
            "services",
            "2 service ports in all is above the maximum 1",
        ),
    ];
    for (case, from, to, path, contained) in cases {
        let errors = field_errors(&base_with(from, to));
        assert_eq!(errors.len(), 1, "{case}: {errors:?}");
        assert_eq!(errors[0].path, path, "{case}");
        assert!(
            errors[0].message.contains(contained),
            "{case}: {:?} does not contain {contained:?}",
            errors[0].message
        );
    }
}

/// IPv6 services on the small default IPv6 conntrack get a warning naming the field; one sized
/// like the IPv4 conntrack (or no IPv6 service) gets none.
#[test]
fn ipv6_services_on_a_small_ipv6_conntrack_warn() {
    let ipv6 = base_with(
        "vip: 10.96.0.11\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: 10.1.0.21}",
        "vip: \"2001:db8:96::11\"\n    ports: [{port: 80}]\n    endpoints:\n      - {ip: \"2001:db8::21\"}",
    );
    let conntrack6 = |yaml: &str| -> Vec<String> {
        warnings(&parse(yaml).unwrap())
            .into_iter()
            .filter(|w| w.path == "dataplane.conntrackSize6")
            .map(|w| w.message)
            .collect()
    };
    assert_eq!(
        conntrack6(&ipv6),
        [
            "16384 with 1 IPv6 service(s), below conntrackSize (262144): past 8192 IPv6 flows at \
          once the oldest are evicted and re-steered"
        ]
    );
    let sized = ipv6.replace("tc: [cl0]", "tc: [cl0]\n  conntrackSize6: 262144");
    assert_eq!(conntrack6(&sized), Vec::<String>::new());
    assert_eq!(parse(&sized).unwrap().dataplane.conntrack_size6, 262_144);
    assert_eq!(conntrack6(BASE_YAML), Vec::<String>::new());
    let out_of_range = ipv6.replace("tc: [cl0]", "tc: [cl0]\n  conntrackSize6: 100");
    assert_eq!(
        field_errors(&out_of_range)
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect::<Vec<_>>(),
        [("dataplane.conntrackSize6", "100 is below the minimum 1024")]
    );
}

#[test]
fn too_many_backends_names_the_total() {
    // 2 + 1 endpoints, each behind 6 ports.
    let six_ports =
        "ports: [{port: 80}, {port: 81}, {port: 82}, {port: 83}, {port: 84}, {port: 85}]";
    let yaml = base_with("tc: [cl0]", "maxBackends: 16").replace("ports: [{port: 80}]", six_ports);
    let errors = field_errors(&yaml);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "services");
    assert!(
        errors[0]
            .message
            .starts_with("18 backends in all is above the maximum 16"),
        "{errors:?}"
    );
}

#[test]
fn too_many_endpoints_names_the_limit() {
    let endpoints: String = (0..=MAX_BACKENDS_PER_SERVICE)
        .map(|i| format!("      - {{ip: 10.2.{}.{}}}\n", i / 250, i % 250 + 1))
        .collect();
    let yaml = base_with("      - {ip: 10.1.0.21}\n", &endpoints);
    let errors = field_errors(&yaml);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "services[1].endpoints");
    assert_eq!(
        errors[0].message,
        "1025 endpoints is above the maximum 1024 per service"
    );
}

#[test]
fn reports_every_problem_at_once() {
    let yaml = base_with("name: node-1", "name: \"\"")
        .replace("tc: [cl0]", "conntrackSize: 10")
        .replace("weight: 3", "weight: 5000000");
    let error = parse(&yaml).unwrap_err();
    let ConfigError::Invalid(errors) = &error else {
        panic!("expected validation errors, got {error:?}");
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "node.name",
            "dataplane.conntrackSize",
            "services[0].endpoints[1].weight"
        ]
    );
    assert_eq!(
        error.to_string(),
        "node.name: must not be empty\n\
             dataplane.conntrackSize: 10 is below the minimum 1024\n\
             services[0].endpoints[1].weight: 5000000 is above the maximum 1000000"
    );
}

#[test]
fn protocol_numbers_and_names() {
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
    assert_eq!(Protocol::Tcp.to_string(), "TCP");
    assert_eq!(Protocol::Udp.to_string(), "UDP");
    for (text, expected) in [
        ("TCP", Protocol::Tcp),
        ("tcp", Protocol::Tcp),
        ("UDP", Protocol::Udp),
        ("udp", Protocol::Udp),
    ] {
        let port: ServicePort =
            serde_yaml_ng::from_str(&format!("{{port: 1, protocol: {text}}}")).unwrap();
        assert_eq!(port.protocol, expected, "{text}");
    }
}

/// What each error is about is typed at the validator that found it: the Kubernetes source
/// acts on it, never on the path's text.
#[test]
fn each_error_says_what_it_is_about() {
    let subject = |from: &str, to: &str| -> Vec<(String, Subject)> {
        field_errors(&base_with(from, to))
            .into_iter()
            .map(|e| (e.path, e.subject))
            .collect()
    };
    let service = |index, part| Subject::Service { index, part };
    assert_eq!(
        subject(
            "      - {ip: 10.1.0.21}",
            "      - {ip: 10.1.0.21, weight: 0}\n    healthCheck: {type: http, path: x}"
        ),
        [(
            "services[1].healthCheck.path".to_string(),
            service(1, ServicePart::HealthCheck)
        )]
    );
    let errors = subject(
        "    vip: 10.96.0.11",
        "    vip: 10.96.0.11\n    trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].1,
        service(1, ServicePart::TrafficPolicy),
        "{errors:?}"
    );
    let errors = subject("  - name: ratings", "  - name: Ratings");
    assert!(
        errors
            .iter()
            .all(|(_, s)| *s == service(1, ServicePart::Service)),
        "{errors:?}"
    );
    assert_eq!(
        subject("  tc: [cl0]", "  tc: [cl0]\n  maxServices: 1"),
        [("services".to_string(), Subject::Capacity)]
    );
    assert_eq!(
        subject("node: {name: node-1", "node: {name: \"\""),
        [("node.name".to_string(), Subject::Other)]
    );
}
