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

mod effective;
mod istio;
mod policy;
mod protocol;

pub use effective::{EffectivePolicy, effective_traffic_policy, warnings};
pub use istio::{DESTINATION_RULE_API_VERSIONS, LoadedDestinationRule, bound_destination_rule};
pub use policy::{
    ConnectionPool, DEFAULT_BASE_EJECTION_TIME, DEFAULT_CONSECUTIVE_5XX_ERRORS,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_OUTLIER_INTERVAL, Defaults, DistributeRule, FailoverRule,
    HEALTH_CHECK_INTERVAL_RANGE, HEALTH_CHECK_THRESHOLD_RANGE, HealthCheck, HealthCheckKind,
    LoadBalancer, LocalityLbSetting, MAX_CLUSTER_WEIGHT, MAX_CONSECUTIVE_ERRORS,
    OUTLIER_DURATION_RANGE, OutlierDetection, TcpSettings, TrafficPolicy, format_duration,
    parse_duration,
};
pub use protocol::{AppProtocol, ProtocolChoice, app_protocol};

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use geosteer_common::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, MAX_BACKENDS_PER_SERVICE,
    PROTO_TCP, PROTO_UDP,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// The built-in demo configuration, used when no config file is given.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default-config.yaml");

/// Accepted range of `dataplane.conntrackSize`.
pub const CONNTRACK_SIZE_RANGE: (u32, u32) = (1024, 16_777_216);
/// Accepted range of `dataplane.maxServices`.
pub const MAX_SERVICES_RANGE: (u32, u32) = (1, 262_144);
/// Accepted range of `dataplane.maxBackends`.
pub const MAX_BACKENDS_RANGE: (u32, u32) = (16, 1_048_576);
/// Accepted range of `dataplane.tableChunks` (64 B each: up to 1 GiB of tables).
pub const TABLE_CHUNKS_RANGE: (u32, u32) = (16, 1 << 24);
/// Largest endpoint weight; keeps weight sums far from overflowing.
pub const MAX_ENDPOINT_WEIGHT: u32 = 1_000_000;

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the terminating NUL).
const MAX_INTERFACE_NAME_LEN: usize = 15;
/// Longest DNS-1123 label, the format of Kubernetes names and namespaces.
const MAX_DNS_LABEL_LEN: usize = 63;

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default)]
    pub admin: Admin,
    /// Policy for services that set none of their own (and no DestinationRule does).
    #[serde(default, skip_serializing_if = "Defaults::is_empty")]
    pub defaults: Defaults,
    /// Files of Istio DestinationRule documents, relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<String>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Desired state from Kubernetes (this cluster and remote ones), merged with this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeSettings>,
    /// The DestinationRules read from `destination_rules` by [`load`] or [`parse`].
    #[serde(skip)]
    pub loaded_destination_rules: Vec<LoadedDestinationRule>,
}

/// Where this agent runs; locality-aware steering compares it with each endpoint's locality.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    pub region: String,
    #[serde(default)]
    pub zone: String,
    /// Istio's `topology.istio.io/subzone` (from the Node's label in Kubernetes mode).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subzone: String,
    #[serde(default)]
    pub cluster: String,
    /// The labels `failoverPriority` compares endpoints with: every client on this node is
    /// taken to carry them (from the Node's labels in Kubernetes mode). The topology labels
    /// (region, zone, subzone, cluster) and `kubernetes.io/hostname` come from the fields above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// How the kernel programs are attached and sized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Dataplane {
    /// Interface names or globs that get the TC programs: ingress steers requests, egress
    /// rewrites replies.
    pub tc: Vec<String>,
    /// Interface names or globs (uplinks) that get the XDP request path.
    pub xdp: Vec<String>,
    /// Interface names or globs XDP may redirect translated requests to: devices that accept
    /// XDP frames (a NIC whose driver implements XDP transmit; a veth whose peer runs GRO or an
    /// XDP program). Requests to any other next hop are translated in XDP and handed to the
    /// stack to forward. Empty (the default): XDP never redirects.
    pub xdp_redirect_to: Vec<String>,
    pub xdp_mode: XdpMode,
    pub conntrack_size: u32,
    /// Capacity of the service map; every port of every service takes one entry.
    pub max_services: u32,
    /// Capacity of the global backend arrays; every (endpoint, service port) takes one slot.
    pub max_backends: u32,
    /// Capacity of the map that holds every service's Maglev table, in 64-byte chunks. A
    /// service port with N backends takes a table of the smallest prime of at least 100·N
    /// slots (1,021, 2,039, … 131,071), 32 slots per chunk, plus its N backend ids, 16 per
    /// chunk: 33 chunks (2.1 KiB) for up to 10 backends; twice that for a moment while its
    /// table is swapped. Default: 36 per `maxServices`, and room for two of the largest tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_chunks: Option<u32>,
    /// bpffs directory where the maps are pinned, so state survives an agent restart.
    pub pin_path: PathBuf,
    /// Node-wide default of Istio's `connectionPool.tcp.connectTimeout` (MeshConfig
    /// `connectTimeout`, 10 s): a SYN still unanswered this long after the first is a connect
    /// timeout. A service's own `connectionPool.tcp.connectTimeout` wins. Zero disables it.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub connect_timeout: Duration,
    pub conntrack: ConntrackTimeouts,
    /// Kernel memory the maps may take (a Kubernetes quantity: `400Mi`), plus a reserve for the
    /// agent itself; the agent refuses to start past it. Unset: the limit of the agent's memory
    /// cgroup (the pod's `resources.limits.memory`), if any.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_quantity",
        deserialize_with = "deserialize_quantity"
    )]
    pub memory_limit: Option<u64>,
}

fn deserialize_quantity<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    parse_text(deserializer, crate::memory::parse_quantity).map(Some)
}

fn serialize_quantity<S: Serializer>(
    bytes: &Option<u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => serializer.serialize_u64(*bytes),
        None => serializer.serialize_none(),
    }
}

/// Default `dataplane.connectTimeout` (Istio MeshConfig `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `dataplane.conntrack.udpTimeout` (Envoy udp_proxy `idle_timeout`).
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `dataplane.conntrack.gcInterval`.
pub const DEFAULT_CONNTRACK_GC_INTERVAL: Duration = Duration::from_secs(30);

/// How long flows live in conntrack after their last packet (either direction), by state, and
/// how often the agent's GC looks (Cilium's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConntrackTimeouts {
    /// A UDP flow idle this long is over: its next datagram is steered anew (and the GC removes
    /// it). Zero: never re-steered; the GC then uses `tcpEstablishedTimeout`.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub udp_timeout: Duration,
    /// A connection attempt (SYN sent, no SYN-ACK), and a half of a flow whose other half is
    /// gone.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub tcp_syn_timeout: Duration,
    /// An established connection (also half-closed, or picked up mid-stream).
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub tcp_established_timeout: Duration,
    /// A connection closed by a RST or by a FIN each way.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub tcp_closing_timeout: Duration,
    /// How often a GC pass starts (each pass works in steps of a few milliseconds).
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub gc_interval: Duration,
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        ConntrackTimeouts {
            udp_timeout: DEFAULT_UDP_TIMEOUT,
            tcp_syn_timeout: Duration::from_secs(60),
            tcp_established_timeout: Duration::from_secs(6 * 3600),
            tcp_closing_timeout: Duration::from_secs(10),
            gc_interval: DEFAULT_CONNTRACK_GC_INTERVAL,
        }
    }
}

/// The default of `dataplane.tableChunks` for `max_services`: 36 chunks per service (a
/// 10-backend table and a tenth more), and room for two of the largest tables.
pub fn default_table_chunks(max_services: u32) -> u32 {
    let largest = crate::maglev::table_chunks_for(geosteer_common::MAX_BACKENDS_PER_SERVICE);
    max_services
        .saturating_mul(geosteer_common::DEFAULT_TABLE_CHUNKS_PER_SERVICE)
        .max(2 * largest)
}

impl Dataplane {
    /// `tableChunks`, or its default for `maxServices`.
    pub fn table_chunks(&self) -> u32 {
        self.table_chunks
            .unwrap_or_else(|| default_table_chunks(self.max_services))
    }
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            tc: Vec::new(),
            xdp: Vec::new(),
            xdp_redirect_to: Vec::new(),
            xdp_mode: XdpMode::default(),
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            max_services: DEFAULT_MAX_SERVICES,
            max_backends: DEFAULT_MAX_BACKENDS,
            table_chunks: None,
            pin_path: PathBuf::from("/sys/fs/bpf/geosteer"),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            conntrack: ConntrackTimeouts::default(),
            memory_limit: None,
        }
    }
}

/// Where the agent answers operators: the admin socket (policy state for the `geosteer` CLI)
/// and the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Admin {
    /// `IP:PORT` of the HTTP endpoint; empty disables it. The default stays on loopback: the
    /// metrics name every backend, which is not for the whole network to read.
    pub metrics: String,
    /// Unix socket (mode 0600) the CLI asks for policy state.
    pub socket: PathBuf,
}

/// Default `admin.metrics`.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9595";
/// Default `admin.socket`.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/geosteer/admin.sock";

impl Default for Admin {
    fn default() -> Self {
        Admin {
            metrics: DEFAULT_METRICS_ADDRESS.to_string(),
            socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
        }
    }
}

impl Admin {
    /// The HTTP address, or `None` when `metrics` is empty (disabled). Validation has checked
    /// that it parses.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        if self.metrics.is_empty() {
            None
        } else {
            self.metrics.parse().ok()
        }
    }
}

/// How the XDP program is attached to the `xdp` interfaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Per device: a NIC gets native (driver) mode, falling back to generic mode where the
    /// driver lacks XDP support; a virtual device (veth) gets TC ingress instead.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(deserialize_with = "deserialize_ipv4")]
    pub vip: Ipv4Addr,
    // Missing ports are left to validation, which explains the problem better than serde's
    // "missing field".
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// An empty list is allowed: the data path drops the service's traffic and reports it.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Takes precedence over a DestinationRule and `defaults`; see [`effective_traffic_policy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// ALB-style share of new connections per cluster (0..=100 each); clusters not listed get
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_weights: Option<BTreeMap<String, u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Older spelling of `onEject: reset`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_on_eject: bool,
    /// What happens to the open flows of a backend that is ejected, fails its active checks
    /// or is removed. Unset: HTTP/1.x flows drain, other flows are reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_eject: Option<OnEject>,
    /// Set by the Kubernetes source: why this Service is kept to this cluster's endpoints
    /// (never merged with remote clusters' same-named Services), e.g. kube-system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_local: Option<String>,
    /// The Kubernetes Service field: prefer endpoints close to the client. Applied as Istio
    /// does, as a failoverPriority on the topology labels, when no policy sets a
    /// localityLbSetting; see [`TrafficDistribution`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<TrafficDistribution>,
    /// Kubernetes `sessionAffinity: ClientIP`: a client's new connections go to the backend
    /// its previous one went to, within `timeout` of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

/// `services[].sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Since the client's last new connection (Kubernetes' default 3h, at most 24h). A backend
    /// that stops taking new flows (ejected, failing its checks, draining, given no share by
    /// the policy) ends the affinity at once: it never holds a client on a failing region.
    #[serde(
        default = "default_affinity_timeout",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    pub timeout: Duration,
}

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);
/// The API server's maximum for it.
pub const MAX_AFFINITY_TIMEOUT: Duration = Duration::from_secs(86_400);

fn default_affinity_timeout() -> Duration {
    DEFAULT_AFFINITY_TIMEOUT
}

/// `spec.trafficDistribution` of a Kubernetes Service. kube-proxy implements it with the
/// EndpointSlice controller's hints (a same-zone endpoint set, all or nothing); geosteer, as
/// Istio does for `PreferClose`, turns it into priorities, so the closer endpoints take the
/// load while they are healthy and it spills over, by Envoy's priority arithmetic, as they
/// fail: health-aware, where hints are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficDistribution {
    /// Same zone first, then same region, then the rest (the deprecated name of
    /// `PreferSameZone` since Kubernetes 1.34).
    PreferClose,
    PreferSameZone,
    /// Same node first, then same zone, same region, the rest.
    PreferSameNode,
}

/// The label of an endpoint's node, and of this node, for `PreferSameNode`.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

impl TrafficDistribution {
    /// The failoverPriority it stands for, most significant first (Istio's for PreferClose:
    /// region, zone, subzone; its network label is left out, geosteer knows no networks).
    pub fn failover_priority(self) -> Vec<String> {
        let mut labels = vec![
            "topology.kubernetes.io/region".to_string(),
            "topology.kubernetes.io/zone".to_string(),
            "topology.istio.io/subzone".to_string(),
        ];
        if self == TrafficDistribution::PreferSameNode {
            labels.push(HOSTNAME_LABEL.to_string());
        }
        labels
    }
}

/// `services[].onEject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnEject {
    /// HTTP/1.x flows end at their next request: the response in progress completes, then the
    /// client's next request meets a RST and it reconnects to a healthy backend. Opaque flows
    /// have no such boundary and are kept.
    Drain,
    /// Every flow is reset at once: its next packet meets a RST.
    Reset,
    /// Open flows stay on their backend; only new flows avoid it.
    Keep,
}

impl Service {
    /// The kernel's `ON_EJECT_*` for this service (`resetOnEject: true` is `reset`).
    pub fn on_eject_value(&self) -> u8 {
        match (self.on_eject, self.reset_on_eject) {
            (Some(OnEject::Drain), _) => geosteer_common::ON_EJECT_DRAIN,
            (Some(OnEject::Reset), _) | (None, true) => geosteer_common::ON_EJECT_RESET,
            (Some(OnEject::Keep), _) => geosteer_common::ON_EJECT_KEEP,
            (None, false) => geosteer_common::ON_EJECT_AUTO,
        }
    }
}

fn default_namespace() -> String {
    "default".to_string()
}

/// Default `kubernetes.snapshotPath`: on the node's disk (a hostPath), so it outlives the pod and
/// a reboot of the node, unlike `/run`.
pub const DEFAULT_SNAPSHOT_PATH: &str = "/var/lib/geosteer/snapshot.yaml";

/// The `kubernetes` section: desired state from this cluster's Services, EndpointSlices, Nodes,
/// TrafficPolicies and Istio DestinationRules, plus the endpoints of remote clusters. It is
/// merged with the rest of this file: `node.cluster` names this cluster, and `dataplane`,
/// `defaults` and any `services` listed here stay as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeSettings {
    pub enabled: bool,
    /// Environment variable with this node's name (the downward API's `spec.nodeName`). It
    /// replaces `node.name`; that Node's region and zone labels replace `node.region`/`zone`.
    pub node_name_env: String,
    /// Remote clusters whose endpoints merge with this cluster's, by namespace/name.
    pub clusters: Vec<RemoteCluster>,
    /// Drop a remote cluster's endpoints once its API server has not answered for this long.
    /// Zero (the default) keeps them until it answers again.
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub stale_ttl: Duration,
    /// Last-known-good desired state: written on every change, read at boot when no API server
    /// answers within `startupTimeout`.
    pub snapshot_path: PathBuf,
    #[serde(
        serialize_with = "serialize_duration",
        deserialize_with = "deserialize_duration"
    )]
    pub startup_timeout: Duration,
    /// Which Services stay cluster-local (Istio MeshConfig `serviceSettings`): entries mark
    /// hosts (`*.ns.svc.cluster.local`, `name.ns.svc.cluster.local`, `*`) cluster-local or not;
    /// the most specific host wins. Without a match, Istio's default applies: kube-system is
    /// cluster-local. `kubernetes.default` is always cluster-local.
    pub service_settings: Vec<ServiceSettingsEntry>,
}

/// `kubernetes.serviceSettings[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSettingsEntry {
    pub settings: ServiceSettingsFlags,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSettingsFlags {
    pub cluster_local: bool,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            enabled: true,
            node_name_env: "NODE_NAME".to_string(),
            clusters: Vec::new(),
            stale_ttl: Duration::ZERO,
            snapshot_path: PathBuf::from(DEFAULT_SNAPSHOT_PATH),
            startup_timeout: Duration::from_secs(10),
            service_settings: Vec::new(),
        }
    }
}

/// A remote cluster, reached with a kubeconfig from a file or from a Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RemoteCluster {
    /// Cluster id: its endpoints carry it, cluster weights name it.
    pub name: String,
    /// A kubeconfig file, e.g. a mounted Secret (kubelet refreshes it when the Secret changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Or a Secret in the agent's namespace ($POD_NAMESPACE) holding the kubeconfig under the
    /// key `kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret: Option<String>,
    /// Context to use; default: the kubeconfig's current context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Region of the cluster's endpoints whose Node has no region label. Failover rules may name
    /// it even while the cluster has no endpoints (e.g. during its outage).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "ServicePortInFile",
    deny_unknown_fields,
    rename_all = "camelCase"
)]
pub struct ServicePort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kubernetes `appProtocol` (e.g. `http`, `kubernetes.io/h2c`): with `name`, decides how the
    /// health signals read the port (see `protocol.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}

/// A service port as written in the file, where `targetPort` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServicePortInFile {
    name: Option<String>,
    app_protocol: Option<String>,
    port: u16,
    target_port: Option<u16>,
    #[serde(default)]
    protocol: Protocol,
}

impl From<ServicePortInFile> for ServicePort {
    fn from(port: ServicePortInFile) -> Self {
        ServicePort {
            name: port.name,
            app_protocol: port.app_protocol,
            port: port.port,
            // Like Kubernetes: a backend listens on the service port unless told otherwise.
            target_port: port.target_port.unwrap_or(port.port),
            protocol: port.protocol,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as the data path sees it in packets.
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    /// Accepts any letter case: Kubernetes writes "TCP", people often type "tcp".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_text(deserializer, |text| {
            if text.eq_ignore_ascii_case("tcp") {
                Ok(Protocol::Tcp)
            } else if text.eq_ignore_ascii_case("udp") {
                Ok(Protocol::Udp)
            } else {
                Err("expected TCP or UDP")
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(deserialize_with = "deserialize_ipv4")]
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subzone: String,
    #[serde(default)]
    pub cluster: String,
    /// Labels `failoverPriority` matches (a pod's labels in Kubernetes mode, from its
    /// EndpointSlice `targetRef`); the topology labels come from the locality fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Relative share of new connections; 0 drains the endpoint.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Leaving (a terminating pod): no new connections, and no part in the policy (it is
    /// neither a healthy nor an unhealthy host), while its open connections carry on to their
    /// end — as Envoy drains a host removed from EDS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

fn default_weight() -> u32 {
    1
}

impl Default for Endpoint {
    /// What the file's defaults give an endpoint with only an address (here 0.0.0.0).
    fn default() -> Self {
        Endpoint {
            ip: Ipv4Addr::UNSPECIFIED,
            region: String::new(),
            zone: String::new(),
            subzone: String::new(),
            cluster: String::new(),
            labels: BTreeMap::new(),
            weight: default_weight(),
            draining: false,
        }
    }
}

/// Parses a YAML string with `parse`, naming the bad value in the error: the standard
/// implementations (e.g. for `Ipv4Addr`) only say what is wrong, not with which text.
fn parse_text<'de, D, T, E>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(|error| D::Error::custom(format!("invalid value {text:?}: {error}")))
}

fn deserialize_ipv4<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ipv4Addr, D::Error> {
    parse_text(deserializer, str::parse::<Ipv4Addr>)
}

fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    parse_text(deserializer, humantime::parse_duration)
}

fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

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
    /// The file parsed but breaks the rules checked by [`validate`]; every problem is listed.
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
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
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
fn about(errors: &mut [FieldError], from: usize, subject: Subject) {
    for error in &mut errors[from..] {
        if error.subject == Subject::Other {
            error.subject = subject;
        }
    }
}

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
fn parse_with(
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
fn parse_error_message(error: serde_path_to_error::Error<serde_yaml_ng::Error>) -> String {
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
                format!(
                    "{} is below the minimum 1s",
                    humantime::format_duration(value)
                ),
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
type Frontends = HashMap<(Ipv4Addr, u16, Protocol), (usize, usize)>;

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
                    humantime::format_duration(affinity.timeout),
                    humantime::format_duration(MAX_AFFINITY_TIMEOUT)
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
        let frontend = (service.vip, port.port, port.protocol);
        if let Some(&(first_s, first_p)) = frontends.get(&frontend) {
            let owner = if first_s == s {
                format!("services[{s}].ports[{first_p}]")
            } else {
                let first = &config.services[first_s];
                format!("services[{first_s}] ({}/{})", first.namespace, first.name)
            };
            errors.push(FieldError::new(
                at,
                format!(
                    "{}:{}/{} is already used by {owner}",
                    service.vip, port.port, port.protocol
                ),
            ));
        } else {
            frontends.insert(frontend, (s, p));
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
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (e, endpoint) in service.endpoints.iter().enumerate() {
        let at = format!("{at}.endpoints[{e}]");
        if let Some(message) = address_problem(endpoint.ip) {
            errors.push(FieldError::new(format!("{at}.ip"), message));
        }
        if let Some(first) = ips.insert(endpoint.ip, e) {
            ips.insert(endpoint.ip, first);
            errors.push(FieldError::new(
                format!("{at}.ip"),
                format!("{} is already listed at endpoints[{first}]", endpoint.ip),
            ));
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
fn dns_label_problem(value: &str) -> Option<String> {
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

/// Addresses that can never be a single host's unicast address.
fn address_problem(ip: Ipv4Addr) -> Option<String> {
    if ip.is_unspecified() {
        Some(format!("{ip} is the unspecified address"))
    } else if ip.is_broadcast() {
        Some(format!("{ip} is the broadcast address"))
    } else if ip.is_multicast() {
        Some(format!("{ip} is a multicast address"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
