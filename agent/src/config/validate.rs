//! Checks of a parsed configuration as a whole: every problem at once.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use geosteer_common::MAX_BACKENDS_PER_SERVICE;

use super::{
    FieldError, ServicePart, Subject,
    duration::format as format_duration,
    effective,
    error::about,
    istio,
    model::{
        Admin, CONNTRACK_SIZE_RANGE, Config, Dataplane, KubeSettings, MAX_AFFINITY_TIMEOUT,
        MAX_BACKENDS_RANGE, MAX_ENDPOINT_WEIGHT, MAX_SERVICES_RANGE, Node, OnEject, Protocol,
        Service, TABLE_CHUNKS_RANGE,
    },
    policy::{self, HealthCheck, TrafficPolicy},
};

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the terminating NUL).
const MAX_INTERFACE_NAME_LEN: usize = 15;
/// Longest DNS-1123 label, the format of Kubernetes names and namespaces.
const MAX_DNS_LABEL_LEN: usize = 63;

/// Checks the rules that span fields and services, returning every problem found. This
/// includes the DestinationRules in `config.loaded_destination_rules`.
pub fn validate(config: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let known_regions = effective::known_regions(config);
    validate_node(&config.node, &mut errors);
    validate_dataplane(&config.dataplane, &mut errors);
    if let Some(kubernetes) = &config.kubernetes {
        validate_kubernetes(kubernetes, &config.node, &mut errors);
    }
    validate_admin(&config.admin, &mut errors);
    if let Some(policy) = &config.defaults.traffic_policy {
        policy::validate_traffic_policy(
            policy,
            "defaults.trafficPolicy",
            Some(&known_regions),
            &mut errors,
        );
    }
    validate_services(config, &mut errors);
    for (s, service) in config.services.iter().enumerate() {
        let at = format!("services[{s}]");
        let part = |part| Subject::Service { index: s, part };
        if let Some(policy) = &service.traffic_policy {
            let from = errors.len();
            let at = format!("{at}.trafficPolicy");
            policy::validate_traffic_policy(policy, &at, Some(&known_regions), &mut errors);
            about(&mut errors, from, part(ServicePart::TrafficPolicy));
        }
        // (With the clusterWeights checks: it is about them, combined with distribute.)
        let from = errors.len();
        if let Some(weights) = &service.cluster_weights {
            let at = format!("{at}.clusterWeights");
            policy::validate_cluster_weights(weights, service, &at, &mut errors);
        }
        effective::validate_effective(config, s, &mut errors);
        about(&mut errors, from, part(ServicePart::ClusterWeights));
        if let Some(check) = &service.health_check {
            let from = errors.len();
            policy::validate_health_check(check, &format!("{at}.healthCheck"), &mut errors);
            about(&mut errors, from, part(ServicePart::HealthCheck));
        }
    }
    istio::validate_destination_rules(config, &known_regions, &mut errors);
    errors
}

/// Checks the policy parts of a service on their own, as a TrafficPolicy object carries them:
/// everything but what needs the cluster's state (region and cluster names). Paths start at
/// the part, e.g. `healthCheck.timeout`.
pub fn validate_policy_parts(
    traffic_policy: Option<&TrafficPolicy>,
    cluster_weights: Option<&BTreeMap<String, u32>>,
    health_check: Option<&HealthCheck>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(policy) = traffic_policy {
        policy::validate_traffic_policy(policy, "trafficPolicy", None, &mut errors);
    }
    if let Some(weights) = cluster_weights {
        policy::validate_cluster_weight_values(weights, "clusterWeights", &mut errors);
    }
    if let Some(check) = health_check {
        policy::validate_health_check(check, "healthCheck", &mut errors);
    }
    errors
}

fn validate_node(node: &Node, errors: &mut Vec<FieldError>) {
    if node.name.is_empty() {
        errors.push(FieldError::new("node.name", "must not be empty"));
    }
    if node.region.is_empty() {
        errors.push(FieldError::new("node.region", "must not be empty"));
    }
}

fn validate_kubernetes(settings: &KubeSettings, node: &Node, errors: &mut Vec<FieldError>) {
    for (i, entry) in settings.service_settings.iter().enumerate() {
        if entry.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("kubernetes.serviceSettings[{i}].hosts"),
                "must name at least one host",
            ));
        }
        for (h, host) in entry.hosts.iter().enumerate() {
            if let Some(problem) = crate::kube::cluster_local::host_problem(host) {
                errors.push(FieldError::new(
                    format!("kubernetes.serviceSettings[{i}].hosts[{h}]"),
                    problem,
                ));
            }
        }
    }
    if settings.node_name_env.is_empty() {
        errors.push(FieldError::new(
            "kubernetes.nodeNameEnv",
            "must not be empty",
        ));
    }
    if !settings.snapshot_path.is_absolute() {
        errors.push(FieldError::new(
            "kubernetes.snapshotPath",
            format!("{:?} is not an absolute path", settings.snapshot_path),
        ));
    }
    if settings.startup_timeout.is_zero() {
        errors.push(FieldError::new(
            "kubernetes.startupTimeout",
            "0s is not a valid timeout",
        ));
    }
    if node.cluster.is_empty() {
        if !settings.clusters.is_empty() {
            errors.push(FieldError::new(
                "node.cluster",
                "must be set when kubernetes.clusters lists remote clusters: it tags this \
                 cluster's endpoints",
            ));
        }
    } else if let Some(message) = cluster_name_problem(&node.cluster) {
        errors.push(FieldError::new("node.cluster", message));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, cluster) in settings.clusters.iter().enumerate() {
        let at = format!("kubernetes.clusters[{i}]");
        if let Some(message) = cluster_name_problem(&cluster.name) {
            errors.push(FieldError::new(format!("{at}.name"), message));
        } else if cluster.name == node.cluster {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("{:?} is this cluster (node.cluster)", cluster.name),
            ));
        } else if let Some(first) = names.insert(&cluster.name, i) {
            names.insert(&cluster.name, first);
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "{:?} is already used by kubernetes.clusters[{first}]",
                    cluster.name
                ),
            ));
        }
        match (&cluster.kubeconfig, &cluster.kubeconfig_secret) {
            (Some(_), Some(_)) | (None, None) => errors.push(FieldError::new(
                at,
                "set exactly one of kubeconfig and kubeconfigSecret",
            )),
            (Some(path), None) if !path.is_absolute() => errors.push(FieldError::new(
                format!("{at}.kubeconfig"),
                format!("{path:?} is not an absolute path"),
            )),
            (None, Some(secret)) => {
                if let Some(message) = dns_label_problem(secret) {
                    errors.push(FieldError::new(format!("{at}.kubeconfigSecret"), message));
                }
            }
            _ => {}
        }
    }
}

/// Cluster ids end up in annotation keys (`geosteer.io/cluster-weight.<id>`), whose name part
/// is at most 63 characters of letters, digits, '-', '_' and '.'.
fn cluster_name_problem(name: &str) -> Option<String> {
    const MAX_LEN: usize = MAX_DNS_LABEL_LEN - "cluster-weight.".len();
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    let allowed = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let alphanumeric_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() > MAX_LEN || !allowed || !alphanumeric_ends {
        return Some(format!(
            "{name:?} is not a valid cluster id (at most {MAX_LEN} letters, digits, '-', '_' \
             and '.', starting and ending with a letter or digit)"
        ));
    }
    None
}

fn validate_dataplane(dataplane: &Dataplane, errors: &mut Vec<FieldError>) {
    // The same interface may appear in both lists: XDP then takes requests and TC replies.
    for (list, entries) in [
        ("tc", &dataplane.tc),
        ("xdp", &dataplane.xdp),
        ("xdpRedirectTo", &dataplane.xdp_redirect_to),
    ] {
        for (i, entry) in entries.iter().enumerate() {
            if let Some(message) = interface_problem(entry) {
                errors.push(FieldError::new(format!("dataplane.{list}[{i}]"), message));
            }
        }
    }
    let ranges = [
        (
            "conntrackSize",
            dataplane.conntrack_size,
            CONNTRACK_SIZE_RANGE,
        ),
        (
            "conntrackSize6",
            dataplane.conntrack_size6,
            CONNTRACK_SIZE_RANGE,
        ),
        ("maxServices", dataplane.max_services, MAX_SERVICES_RANGE),
        ("maxBackends", dataplane.max_backends, MAX_BACKENDS_RANGE),
        ("tableChunks", dataplane.table_chunks(), TABLE_CHUNKS_RANGE),
    ];
    for (field, value, (min, max)) in ranges {
        if value < min {
            errors.push(FieldError::new(
                format!("dataplane.{field}"),
                format!("{value} is below the minimum {min}"),
            ));
        } else if value > max {
            errors.push(FieldError::new(
                format!("dataplane.{field}"),
                format!("{value} is above the maximum {max}"),
            ));
        }
    }
    let ct = &dataplane.conntrack;
    for (field, value) in [
        ("tcpSynTimeout", ct.tcp_syn_timeout),
        ("tcpEstablishedTimeout", ct.tcp_established_timeout),
        ("tcpClosingTimeout", ct.tcp_closing_timeout),
        ("gcInterval", ct.gc_interval),
    ] {
        if value < Duration::from_secs(1) {
            errors.push(FieldError::new(
                format!("dataplane.conntrack.{field}"),
                format!("{} is below the minimum 1s", format_duration(value)),
            ));
        }
    }
    if !dataplane.pin_path.is_absolute() {
        errors.push(FieldError::new(
            "dataplane.pinPath",
            format!("{:?} is not an absolute path", dataplane.pin_path),
        ));
    }
}

fn validate_admin(admin: &Admin, errors: &mut Vec<FieldError>) {
    if !admin.metrics.is_empty()
        && let Err(error) = admin.metrics.parse::<std::net::SocketAddr>()
    {
        errors.push(FieldError::new(
            "admin.metrics",
            format!(
                "{:?} is not an IP:PORT address ({error}); use \"\" to disable",
                admin.metrics
            ),
        ));
    }
    if !admin.socket.is_absolute() {
        errors.push(FieldError::new(
            "admin.socket",
            format!("{:?} is not an absolute path", admin.socket),
        ));
    }
}

fn interface_problem(entry: &str) -> Option<String> {
    if entry.is_empty() {
        return Some("must not be empty".to_string());
    }
    if let Err(error) = glob::Pattern::new(entry) {
        return Some(format!(
            "{entry:?} is not a valid pattern: {} at position {}",
            error.msg, error.pos
        ));
    }
    // A pattern may be longer than any name it matches, so only plain names are length-checked.
    let is_pattern = entry.contains(['*', '?', '[']);
    if !is_pattern && entry.len() > MAX_INTERFACE_NAME_LEN {
        return Some(format!(
            "{entry:?} is longer than {MAX_INTERFACE_NAME_LEN} bytes, \
             the kernel's limit for interface names"
        ));
    }
    None
}

fn validate_services(config: &Config, errors: &mut Vec<FieldError>) {
    let mut names: HashMap<(&str, &str), usize> = HashMap::new();
    let mut frontends = Frontends::new();

    for s in 0..config.services.len() {
        let from = errors.len();
        validate_service(config, s, &mut names, &mut frontends, errors);
        let subject = Subject::Service {
            index: s,
            part: ServicePart::Service,
        };
        about(errors, from, subject);
    }

    let from = errors.len();
    validate_capacity(config, errors);
    about(errors, from, Subject::Capacity);
}

/// The frontends claimed so far: which service port first claimed each VIP:port/protocol.
type Frontends = HashMap<(IpAddr, u16, Protocol), (usize, usize)>;

/// Checks `config.services[s]` itself (not its policy parts); `names` and `frontends` hold
/// what the services before it claimed.
fn validate_service<'a>(
    config: &'a Config,
    s: usize,
    names: &mut HashMap<(&'a str, &'a str), usize>,
    frontends: &mut Frontends,
    errors: &mut Vec<FieldError>,
) {
    let service = &config.services[s];
    {
        let at = format!("services[{s}]");
        for (field, value) in [("name", &service.name), ("namespace", &service.namespace)] {
            if let Some(message) = dns_label_problem(value) {
                errors.push(FieldError::new(format!("{at}.{field}"), message));
            }
        }
        if let Some(first) = names.insert((&service.namespace, &service.name), s) {
            names.insert((&service.namespace, &service.name), first);
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!(
                    "{}/{} is already defined by services[{first}]",
                    service.namespace, service.name
                ),
            ));
        }
        if let Some(message) = address_problem(service.vip) {
            errors.push(FieldError::new(format!("{at}.vip"), message));
        }
        if let Some(vip6) = service.vip6 {
            if let Some(message) = ipv6_problem(vip6) {
                errors.push(FieldError::new(format!("{at}.vip6"), message));
            } else if service.vip.is_ipv6() {
                errors.push(FieldError::new(
                    format!("{at}.vip"),
                    format!(
                        "{} is IPv6: a dual-stack service's vip is its IPv4 address, vip6 its \
                         IPv6 one",
                        service.vip
                    ),
                ));
            }
        }
        validate_ports(config, s, frontends, errors);
        validate_endpoints(service, &at, errors);
        if let Some(affinity) = service.session_affinity
            && (affinity.timeout < Duration::from_secs(1)
                || affinity.timeout > MAX_AFFINITY_TIMEOUT)
        {
            errors.push(FieldError::new(
                format!("{at}.sessionAffinity.timeout"),
                format!(
                    "{} is out of range (1s to {})",
                    format_duration(affinity.timeout),
                    format_duration(MAX_AFFINITY_TIMEOUT)
                ),
            ));
        }
        if service.reset_on_eject
            && let Some(on_eject) = service.on_eject
            && on_eject != OnEject::Reset
        {
            errors.push(FieldError::new(
                format!("{at}.onEject"),
                format!(
                    "{} contradicts resetOnEject: true (which means onEject: reset); keep one",
                    match on_eject {
                        OnEject::Drain => "drain",
                        OnEject::Reset => "reset",
                        OnEject::Keep => "keep",
                    }
                ),
            ));
        }
    }
}

/// The services together against the data path's capacities.
fn validate_capacity(config: &Config, errors: &mut Vec<FieldError>) {
    let service_ports: usize = config.services.iter().map(|s| s.ports.len()).sum();
    if service_ports > config.dataplane.max_services as usize {
        errors.push(FieldError::new(
            "services",
            format!(
                "{service_ports} service ports in all is above the maximum {} \
                 (dataplane.maxServices; each port of each service takes one entry)",
                config.dataplane.max_services
            ),
        ));
    }
    let backends: usize = config
        .services
        .iter()
        .map(|s| s.ports.len() * s.endpoints.len())
        .sum();
    let needed = tables_needed(&config.services);
    let capacity = u64::from(config.dataplane.table_chunks());
    // (Below the minimum, the range error above says it.)
    let in_range = capacity >= u64::from(TABLE_CHUNKS_RANGE.0);
    if in_range && needed > capacity {
        // Blamed on `services`, as the other capacity limits: the Kubernetes source leaves
        // services out until the rest fits.
        errors.push(FieldError::new(
            "services",
            format!(
                "their Maglev tables need {needed} chunks, above the {capacity} of \
                 dataplane.tableChunks (each service port with N endpoints takes a table of at \
                 least 100·N slots, 32 to a chunk, and N ids, 16 to a chunk, plus room to swap \
                 the largest)"
            ),
        ));
    }
    if backends > config.dataplane.max_backends as usize {
        errors.push(FieldError::new(
            "services",
            format!(
                "{backends} backends in all is above the maximum {} \
                 (dataplane.maxBackends; each endpoint takes one backend per service port)",
                config.dataplane.max_backends
            ),
        ));
    }
}

/// Chunks of the table map one port of `service` takes (its size depends on the endpoint
/// count alone; a service whose endpoints all have weight 0 may take fewer).
pub fn table_chunks_at_least(service: &Service) -> u64 {
    u64::from(crate::maglev::table_chunks_for(service.endpoints.len()))
}

/// Chunks of the table map `services` need at least: every port's table, and room to swap the
/// largest.
pub fn tables_needed(services: &[Service]) -> u64 {
    let tables = services.iter().map(table_chunks_at_least);
    let largest = tables.clone().max().unwrap_or(0);
    let ports = services.iter().map(|s| s.ports.len() as u64);
    tables.zip(ports).map(|(t, p)| t * p).sum::<u64>() + largest
}

/// Checks the ports of `config.services[s]`; `frontends` remembers which service port first
/// claimed each VIP:port/protocol, because the data path can steer it to only one service.
fn validate_ports(
    config: &Config,
    s: usize,
    frontends: &mut Frontends,
    errors: &mut Vec<FieldError>,
) {
    let service = &config.services[s];
    if service.ports.is_empty() {
        errors.push(FieldError::new(
            format!("services[{s}].ports"),
            "at least one port is required",
        ));
    }
    let mut port_names: HashMap<&str, usize> = HashMap::new();
    for (p, port) in service.ports.iter().enumerate() {
        let at = format!("services[{s}].ports[{p}]");
        if let Some(name) = &port.name
            && let Some(first) = port_names.insert(name, p)
        {
            port_names.insert(name, first);
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("{name:?} is already used by services[{s}].ports[{first}]"),
            ));
        }
        if port.port == 0 {
            // Reported once: not again for the target port (which defaults to it), nor as a
            // duplicate of another port 0.
            errors.push(FieldError::new(
                format!("{at}.port"),
                "0 is not a valid port",
            ));
            continue;
        }
        if port.target_port == 0 {
            errors.push(FieldError::new(
                format!("{at}.targetPort"),
                "0 is not a valid port",
            ));
        }
        for vip in std::iter::once(service.vip).chain(service.vip6) {
            let frontend = (vip, port.port, port.protocol);
            if let Some(&(first_s, first_p)) = frontends.get(&frontend) {
                let owner = if first_s == s {
                    format!("services[{s}].ports[{first_p}]")
                } else {
                    let first = &config.services[first_s];
                    format!("services[{first_s}] ({}/{})", first.namespace, first.name)
                };
                errors.push(FieldError::new(
                    at.clone(),
                    format!(
                        "{}/{} is already used by {owner}",
                        std::net::SocketAddr::new(vip, port.port),
                        port.protocol
                    ),
                ));
            } else {
                frontends.insert(frontend, (s, p));
            }
        }
    }
}

fn validate_endpoints(service: &Service, at: &str, errors: &mut Vec<FieldError>) {
    if service.endpoints.len() > MAX_BACKENDS_PER_SERVICE {
        errors.push(FieldError::new(
            format!("{at}.endpoints"),
            format!(
                "{} endpoints is above the maximum {MAX_BACKENDS_PER_SERVICE} per service",
                service.endpoints.len()
            ),
        ));
    }
    let mut ips: HashMap<IpAddr, usize> = HashMap::new();
    for (e, endpoint) in service.endpoints.iter().enumerate() {
        let at = format!("{at}.endpoints[{e}]");
        if let Some(message) = address_problem(endpoint.ip) {
            errors.push(FieldError::new(format!("{at}.ip"), message));
        } else if endpoint.ip.is_ipv4() != service.vip.is_ipv4()
            && address_problem(service.vip).is_none()
        {
            // An endpoint of the other family would never be steered to; a dual-stack
            // service's endpoints give their IPv6 address as `ip6`.
            let hint = if service.vip6.is_some() {
                " (an endpoint's IPv6 address is its ip6)"
            } else {
                ""
            };
            errors.push(FieldError::new(
                format!("{at}.ip"),
                format!(
                    "{} is an {} address and the service's vip {} is {}: a service's \
                     endpoints are of its VIP's family{hint}",
                    endpoint.ip,
                    family_name(endpoint.ip),
                    service.vip,
                    family_name(service.vip)
                ),
            ));
        }
        if let Some(first) = ips.insert(endpoint.ip, e) {
            ips.insert(endpoint.ip, first);
            errors.push(FieldError::new(
                format!("{at}.ip"),
                format!("{} is already listed at endpoints[{first}]", endpoint.ip),
            ));
        }
        if let Some(ip6) = endpoint.ip6 {
            let problem = ipv6_problem(ip6).or_else(|| {
                service.vip6.is_none().then(|| {
                    format!(
                        "{ip6}: the service has no vip6 to steer to it (ip6 is a \
                             dual-stack service's)"
                    )
                })
            });
            if let Some(message) = problem {
                errors.push(FieldError::new(format!("{at}.ip6"), message));
            } else if let Some(first) = ips.insert(ip6, e) {
                ips.insert(ip6, first);
                errors.push(FieldError::new(
                    format!("{at}.ip6"),
                    format!("{ip6} is already listed at endpoints[{first}]"),
                ));
            }
        }
        if endpoint.weight > MAX_ENDPOINT_WEIGHT {
            errors.push(FieldError::new(
                format!("{at}.weight"),
                format!(
                    "{} is above the maximum {MAX_ENDPOINT_WEIGHT}",
                    endpoint.weight
                ),
            ));
        }
    }
}

/// Names and namespaces follow Kubernetes (DNS-1123 labels), so services map one-to-one.
pub(super) fn dns_label_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".to_string());
    }
    let allowed_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if value.len() > MAX_DNS_LABEL_LEN
        || !allowed_chars
        || value.starts_with('-')
        || value.ends_with('-')
    {
        return Some(format!(
            "{value:?} is not a valid DNS-1123 label (at most {MAX_DNS_LABEL_LEN} lowercase \
             letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    None
}

/// Addresses that can never be a single host's unicast address; IPv4 written as IPv6
/// (`::ffff:a.b.c.d` never appears on an IPv6 wire: such a VIP would be silently unsteered);
/// IPv6 loopback and link-local addresses, which a packet forwarded through the node cannot
/// reach (and the agent's own probes of a link-local endpoint, without a zone, cannot either).
fn address_problem(ip: IpAddr) -> Option<String> {
    if ip.is_unspecified() {
        Some(format!("{ip} is the unspecified address"))
    } else if ip.is_multicast() {
        Some(format!("{ip} is a multicast address"))
    } else if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some(format!("{ip} is the broadcast address"))
    } else if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        Some(format!("{ip} is an IPv4-mapped address: write {v4}"))
    } else if let IpAddr::V6(v6) = ip
        && v6.is_loopback()
    {
        Some(format!("{ip} is the loopback address"))
    } else if let IpAddr::V6(v6) = ip
        && v6.is_unicast_link_local()
    {
        Some(format!(
            "{ip} is a link-local address (fe80::/10): not routable through the node"
        ))
    } else {
        None
    }
}

/// [`address_problem`] of a field that holds an IPv6 address (`vip6`, `ip6`).
fn ipv6_problem(ip: IpAddr) -> Option<String> {
    address_problem(ip).or_else(|| ip.is_ipv4().then(|| format!("{ip} is not an IPv6 address")))
}

fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}
