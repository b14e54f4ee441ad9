//! The configuration file's data model: what the YAML deserializes into, with its defaults.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use geosteer_common::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, PROTO_TCP, PROTO_UDP,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

use super::{
    istio::LoadedDestinationRule,
    policy::{Defaults, HealthCheck, TrafficPolicy},
};

/// The built-in demo configuration, used when no config file is given.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../default-config.yaml");

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
    /// The DestinationRules read from `destination_rules` by [`load`](super::load) or
    /// [`parse`](fn@super::parse).
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
    /// Capacity of the IPv6 conntrack (two entries per flow). Small by default, since the map
    /// is preallocated on every node; raise it where IPv6 services carry many flows.
    pub conntrack_size6: u32,
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
    #[serde(with = "super::duration")]
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
    #[serde(with = "super::duration")]
    pub udp_timeout: Duration,
    /// A connection attempt (SYN sent, no SYN-ACK), and a half of a flow whose other half is
    /// gone.
    #[serde(with = "super::duration")]
    pub tcp_syn_timeout: Duration,
    /// An established connection (also half-closed, or picked up mid-stream).
    #[serde(with = "super::duration")]
    pub tcp_established_timeout: Duration,
    /// A connection closed by a RST or by a FIN each way.
    #[serde(with = "super::duration")]
    pub tcp_closing_timeout: Duration,
    /// How often a GC pass starts (each pass works in steps of a few milliseconds).
    #[serde(with = "super::duration")]
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
            conntrack_size6: geosteer_common::CONNTRACK6_SIZE,
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
    /// IPv4 or IPv6; the endpoints are of the same family.
    #[serde(deserialize_with = "deserialize_ip")]
    pub vip: IpAddr,
    /// Dual stack: the service's IPv6 VIP beside its IPv4 `vip` (Kubernetes' second
    /// `clusterIPs` entry). One service on both: the same ports, policy and endpoints, whose
    /// `ip6` addresses it steers to, and one health state per endpoint whichever family its
    /// errors come from.
    #[serde(
        default,
        deserialize_with = "deserialize_some_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub vip6: Option<IpAddr>,
    // Missing ports are left to validation, which explains the problem better than serde's
    // "missing field".
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// An empty list is allowed: the data path drops the service's traffic and reports it.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Takes precedence over a DestinationRule and `defaults`; see
    /// [`effective_traffic_policy`](super::effective_traffic_policy).
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
    #[serde(default = "default_affinity_timeout", with = "super::duration")]
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

pub(super) fn default_namespace() -> String {
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
    #[serde(with = "super::duration")]
    pub stale_ttl: Duration,
    /// Last-known-good desired state: written on every change, read at boot when no API server
    /// answers within `startupTimeout`.
    pub snapshot_path: PathBuf,
    #[serde(with = "super::duration")]
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
    #[serde(deserialize_with = "deserialize_ip")]
    pub ip: IpAddr,
    /// A dual-stack service's endpoint's IPv6 address (its `ip` is the IPv4 one); an endpoint
    /// without one takes the service's IPv4 connections only.
    #[serde(
        default,
        deserialize_with = "deserialize_some_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip6: Option<IpAddr>,
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
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ip6: None,
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
pub(super) fn parse_text<'de, D, T, E>(
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

fn deserialize_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    parse_text(deserializer, str::parse::<IpAddr>)
}

fn deserialize_some_ip<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpAddr>, D::Error> {
    deserialize_ip(deserializer).map(Some)
}
