//! Types shared by the kernel programs (`geosteer-ebpf`) and the agent: map names, map keys and
//! values, and the few pure functions both sides must compute identically (flow hash, checksum
//! arithmetic, HTTP status-line parsing).
//!
//! Every struct that crosses the kernel boundary is `#[repr(C)]` with explicit padding and a size
//! assertion, so the two sides can never disagree on a layout.
#![no_std]

pub mod csum;
pub mod http;

/// Map names: the kernel program declares them, the agent opens and pins them by these names.
pub mod map_names {
    pub const SERVICES: &str = "GS_SERVICES";
    pub const VIPS: &str = "GS_VIPS";
    /// Every service's Maglev table and backend list, at the place its `ServiceValue` names.
    pub const TABLE_CHUNKS: &str = "GS_TABLE_CHUNKS";
    pub const BACKENDS: &str = "GS_BACKENDS";
    pub const BACKEND_STATE: &str = "GS_BACKEND_STATE";
    pub const CONNTRACK: &str = "GS_CONNTRACK";
    pub const SERVICE_STATS: &str = "GS_SERVICE_STATS";
    pub const BACKEND_STATS: &str = "GS_BACKEND_STATS";
    pub const BACKEND_SIGNALS: &str = "GS_BACKEND_SIGNALS";
    pub const DROPS: &str = "GS_DROPS";
    pub const SETTINGS: &str = "GS_SETTINGS";
    pub const SERVICE_STATE: &str = "GS_SERVICE_STATE";
    pub const EVENTS: &str = "GS_KERNEL_EVENTS";
    pub const SERVICE_CONFIG: &str = "GS_SERVICE_CONFIG";
    pub const CT_STATS: &str = "GS_CT_STATS";
    pub const FRAGMENTS: &str = "GS_FRAGMENTS";
    pub const XDP_TARGETS: &str = "GS_XDP_TARGETS";
    pub const AFFINITY: &str = "GS_AFFINITY";
    /// The IPv6 counterparts of `SERVICES`, `VIPS`, `CONNTRACK` and `AFFINITY` (their keys
    /// hold 16-byte addresses; the IPv4 keys stay small), and each IPv6 backend's address by
    /// backend id (`BACKENDS` holds the rest of every backend, of either family).
    pub const SERVICES6: &str = "GS_SERVICES6";
    pub const VIPS6: &str = "GS_VIPS6";
    pub const CONNTRACK6: &str = "GS_CONNTRACK6";
    pub const AFFINITY6: &str = "GS_AFFINITY6";
    pub const BACKEND_ADDRS6: &str = "GS_BACKEND_ADDRS6";
    /// IPv6's `FRAGMENTS`: its datagram ids are 32 bits, in a fragment header.
    pub const FRAGMENTS6: &str = "GS_FRAGMENTS6";
    /// The IPv6 programs the attached TC programs tail-call for IPv6 frames (a program array,
    /// slot 0 ingress, 1 egress; the agent fills it). Pinned with the others: a program array
    /// whose last user reference closes is emptied, which would leave IPv6 unsteered between
    /// an agent's exit and its successor's start.
    pub const TAIL_CALLS: &str = "GS_TAIL_CALLS";
    /// `TAIL_CALLS` for XDP: the IPv6 XDP program, in slot 0.
    pub const XDP_TAIL_CALLS: &str = "GS_XDP_TAIL_CALLS";
    /// aya-log's ring of kernel log records (the name is aya-log's). Pinned with the others
    /// (its memory counted, `geosteer uninstall` removes it), but made anew with every load.
    pub const LOGS: &str = "AYA_LOGS";

    /// Every map, for pinning and cleanup.
    pub const ALL: [&str; 27] = [
        SERVICES,
        VIPS,
        TABLE_CHUNKS,
        BACKENDS,
        BACKEND_STATE,
        CONNTRACK,
        SERVICE_STATS,
        BACKEND_STATS,
        DROPS,
        SETTINGS,
        SERVICE_STATE,
        EVENTS,
        SERVICE_CONFIG,
        CT_STATS,
        BACKEND_SIGNALS,
        FRAGMENTS,
        XDP_TARGETS,
        AFFINITY,
        SERVICES6,
        VIPS6,
        CONNTRACK6,
        AFFINITY6,
        BACKEND_ADDRS6,
        FRAGMENTS6,
        TAIL_CALLS,
        XDP_TAIL_CALLS,
        LOGS,
    ];

    /// Maps of earlier builds: their pins are removed once the new programs are attached (and
    /// by `geosteer uninstall`). `GS_TABLES` held two fixed 16,381-slot tables per service;
    /// `GS_EVENTS` was the ring's name before it carried more than ejections.
    pub const RETIRED: [&str; 2] = ["GS_TABLES", "GS_EVENTS"];
}

/// Program names (the function names in `ebpf/src/main.rs`).
pub mod program_names {
    pub const TC_INGRESS: &str = "geosteer_tc_ingress";
    pub const TC_EGRESS: &str = "geosteer_tc_egress";
    pub const XDP: &str = "geosteer_xdp";
    /// Never attached: the agent runs it (BPF_PROG_TEST_RUN) to count connect timeouts it has
    /// confirmed, so they go through the kernel's own atomic bookkeeping.
    pub const COUNT_TIMEOUTS: &str = "geosteer_count_timeouts";
    /// Never attached: tail-called by `TC_INGRESS` / `TC_EGRESS` for IPv6 frames, from slots
    /// [`TAIL_TC_INGRESS6`] / [`TAIL_TC_EGRESS6`] of `GS_TAIL_CALLS`.
    pub const TC_INGRESS6: &str = "geosteer_tc_ingress6";
    pub const TC_EGRESS6: &str = "geosteer_tc_egress6";
    pub const TAIL_TC_INGRESS6: u32 = 0;
    pub const TAIL_TC_EGRESS6: u32 = 1;
    /// Never attached: tail-called by `XDP` for IPv6 frames, from slot [`TAIL_XDP6`] of
    /// `GS_XDP_TAIL_CALLS` (a program array holds programs of one type).
    pub const XDP6: &str = "geosteer_xdp6";
    pub const TAIL_XDP6: u32 = 0;
}

/// Most backends one service may have.
pub const MAX_BACKENDS_PER_SERVICE: usize = 1024;
/// Default capacity of the table map, in chunks per service slot: a 10-backend table takes 33
/// (10 ids in one, 1,021 Maglev slots in 32), and a tenth more leaves room for tables being
/// swapped and for larger services.
pub const DEFAULT_TABLE_CHUNKS_PER_SERVICE: u32 = 36;
/// Default capacity of the service map; the agent may override it at load time.
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
/// Default capacity of the global backend arrays (backend ids are indexes into them).
pub const DEFAULT_MAX_BACKENDS: u32 = 16384;
/// Default conntrack capacity (LRU, two entries per flow: original and reply direction).
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262144;
/// How many following slots selection tries when a slot's backend is ejected. Bounded so the
/// verifier accepts the loop and a packet's cost stays constant; the control plane rebuilds the
/// table without the ejected backend right after, so long runs of ejected slots are short-lived.
pub const MAX_EJECTED_PROBE: u32 = 16;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An address as the kernel reads it from a packet: IPv4's four bytes as one `u32`, IPv6's
/// sixteen as an [`Addr6`] (network byte order in memory either way). The map keys and values
/// that hold addresses are generic over it, so the IPv4 ones keep their small layout and the
/// kernel's steering code is written once for both families (monomorphised per family).
pub trait Addr: Copy + Default + PartialEq + Eq + PartialOrd + Ord + core::hash::Hash {
    /// Padding after a [`FlowValueOf`]'s address and port that keeps its 8-byte fields aligned
    /// without hidden bytes: none for IPv4, four bytes for IPv6.
    type Pad: Copy + Default + PartialEq + Eq + core::fmt::Debug;
    /// Mixes the address into a [`flow_hash`] state.
    fn mix_into(self, h: u32) -> u32;
    /// The address as the standard library has it.
    fn to_ip_addr(self) -> core::net::IpAddr;
}

impl Addr for u32 {
    type Pad = ();
    #[inline(always)]
    fn mix_into(self, h: u32) -> u32 {
        mix(h ^ self)
    }
    fn to_ip_addr(self) -> core::net::IpAddr {
        core::net::IpAddr::V4(core::net::Ipv4Addr::from_bits(u32::from_be(self)))
    }
}

/// An IPv6 address as it is on the wire: its sixteen bytes as four words in memory order (each
/// read with `from_ne_bytes`, as the IPv4 `u32` is), so the kernel loads and compares it four
/// bytes at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Addr6(pub [u32; 4]);
const _: () = assert!(core::mem::size_of::<Addr6>() == 16);

impl Addr6 {
    pub const fn from_octets(o: [u8; 16]) -> Self {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            words[i] = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
            i += 1;
        }
        Addr6(words)
    }

    pub const fn octets(self) -> [u8; 16] {
        let mut o = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = self.0[i].to_ne_bytes();
            o[i * 4] = b[0];
            o[i * 4 + 1] = b[1];
            o[i * 4 + 2] = b[2];
            o[i * 4 + 3] = b[3];
            i += 1;
        }
        o
    }

    pub const fn from_ip(ip: core::net::Ipv6Addr) -> Self {
        Self::from_octets(ip.octets())
    }

    pub const fn to_ip(self) -> core::net::Ipv6Addr {
        core::net::Ipv6Addr::from_bits(u128::from_be_bytes(self.octets()))
    }
}

impl Addr for Addr6 {
    type Pad = [u8; 4];
    #[inline(always)]
    fn mix_into(self, h: u32) -> u32 {
        let [a, b, c, d] = self.0;
        mix(mix(mix(mix(h ^ a) ^ b) ^ c) ^ d)
    }
    fn to_ip_addr(self) -> core::net::IpAddr {
        core::net::IpAddr::V6(self.to_ip())
    }
}

/// A service: virtual IP, port and protocol. Address and port in network byte order, as they
/// appear in the packet, so the kernel compares without conversions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKeyOf<A> {
    pub addr: A,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
/// An IPv4 service (`GS_SERVICES`).
pub type ServiceKey = ServiceKeyOf<u32>;
/// An IPv6 service (`GS_SERVICES6`).
pub type ServiceKey6 = ServiceKeyOf<Addr6>;
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 20);

impl<A: Copy> ServiceKeyOf<A> {
    /// The key of a service as the kernel looks it up: address and port as they are on the
    /// wire (network byte order).
    #[inline(always)]
    pub const fn new(addr: A, port: u16, proto: u8) -> Self {
        ServiceKeyOf {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

impl ServiceKey {
    /// The key of `vip:port` given in host terms.
    pub const fn for_vip(vip: core::net::Ipv4Addr, port: u16, proto: u8) -> Self {
        Self::new(vip.to_bits().to_be(), port.to_be(), proto)
    }
}

impl ServiceKey6 {
    /// The key of `[vip]:port` given in host terms.
    pub const fn for_vip(vip: core::net::Ipv6Addr, port: u16, proto: u8) -> Self {
        Self::new(Addr6::from_ip(vip), port.to_be(), proto)
    }
}

/// Where a service's live table is. The agent writes a new table into free chunks of
/// `GS_TABLE_CHUNKS`, then points the service at it with a single update of this value: a
/// packet sees the old table or the new one, never a mix. The old table's chunks are reused
/// only after an RCU grace period, so no packet that read the old value can still be using them.
///
/// From chunk `table_start` on: the service's `backend_count` global backend ids, 16 per chunk
/// (the fallback scan's list), then `table_size` Maglev slots, 32 per chunk, each an index into
/// that list (see [`TableChunk`]). `table_size` is a prime the agent picks from the backend
/// count and the shares (0: no backend takes new flows).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of the service (counters, settings, ejection budget).
    pub id: u32,
    /// Unused. Was which of two fixed tables was live; kept so that pinned values of that
    /// layout convert (fields are only appended).
    pub _retired_generation: u32,
    pub table_start: u32,
    pub table_size: u32,
    pub backend_count: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 24);

impl ServiceValue {
    /// Chunks the table takes in `GS_TABLE_CHUNKS`.
    pub const fn table_chunks(&self) -> u32 {
        table_chunks(self.table_size, self.backend_count)
    }

    /// The chunk that holds Maglev slot `slot` (below `table_size`), and its lane.
    pub const fn slot_chunk(&self, slot: u32) -> (u32, u32) {
        let first = self
            .table_start
            .wrapping_add(self.backend_count.div_ceil(TABLE_CHUNK_IDS));
        (
            first.wrapping_add(slot / TABLE_CHUNK_SLOTS),
            slot % TABLE_CHUNK_SLOTS,
        )
    }

    /// The chunk that holds the id of backend `index` (below `backend_count`), and its lane.
    pub const fn id_chunk(&self, index: u32) -> (u32, u32) {
        (
            self.table_start.wrapping_add(index / TABLE_CHUNK_IDS),
            index % TABLE_CHUNK_IDS,
        )
    }
}

/// Backend ids per [`TableChunk`].
pub const TABLE_CHUNK_IDS: u32 = 16;
/// Maglev slots per [`TableChunk`].
pub const TABLE_CHUNK_SLOTS: u32 = 32;

/// Chunks a table of `size` Maglev slots over `count` backends takes.
pub const fn table_chunks(size: u32, count: u32) -> u32 {
    count.div_ceil(TABLE_CHUNK_IDS) + size.div_ceil(TABLE_CHUNK_SLOTS)
}

/// 64 bytes of a service table: 16 backend ids, or 32 Maglev slots (each a `u16` index into
/// the service's backend list, two to a word, the even slot in the low half). Array map values
/// take at least 8 bytes each, so a table of single slots would cost four times its size.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TableChunk {
    pub words: [u32; 16],
}
const _: () = assert!(core::mem::size_of::<TableChunk>() == 64);

impl TableChunk {
    pub const fn id(&self, lane: u32) -> u32 {
        self.words[(lane % TABLE_CHUNK_IDS) as usize]
    }

    pub const fn slot(&self, lane: u32) -> u32 {
        let lane = lane % TABLE_CHUNK_SLOTS;
        (self.words[(lane / 2) as usize] >> ((lane & 1) * 16)) & 0xffff
    }

    pub const fn set_slot(&mut self, lane: u32, index: u16) {
        let lane = lane % TABLE_CHUNK_SLOTS;
        let word = &mut self.words[(lane / 2) as usize];
        let shift = (lane & 1) * 16;
        *word = (*word & !(0xffff << shift)) | ((index as u32) << shift);
    }
}

/// A backend endpoint, as the DNAT writes it (network byte order), with its outlier limits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_FLAG_*`.
    pub flags: u8,
    /// The service this backend belongs to (counters on the reply path, ejection budget).
    pub service_id: u32,
    /// Eject when `consecutive_5xx` reaches this (0 = never): Istio `consecutive5xxErrors`.
    pub eject_after_5xx: u16,
    /// Eject when `consecutive_gateway` reaches this (0 = never): `consecutiveGatewayErrors`.
    pub eject_after_gateway: u16,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 16);

/// Per-service state owned by the kernel: only the kernel writes it (with atomic adds), so the
/// agent can never overwrite it with a stale value. The agent writes zeros once, when it
/// allocates the service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceState {
    /// Ejections the kernel has made for this service id, ever. The number of backends
    /// currently ejected is `ejections − ServiceConfig::ejections_released`. Concurrent CPUs
    /// may take it one above the limit for an instant and give it back.
    pub ejections: i64,
}
const _: () = assert!(core::mem::size_of::<ServiceState>() == 8);

/// How a service port's bytes are read for health signals (Istio protocol selection).
pub const APP_PROTOCOL_DETECT: u8 = 0;
/// HTTP/1.x: one final status per request, parsed at the response start (Envoy router).
pub const APP_PROTOCOL_HTTP1: u8 = 1;
/// Anything else (TCP, TLS, HTTP/2, gRPC, databases): connect results only (Envoy tcp_proxy).
pub const APP_PROTOCOL_OPAQUE: u8 = 2;

/// Per-service settings owned by the agent, indexed by service id. The kernel only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceConfig {
    /// A SYN retransmitted this long after the first with no SYN-ACK seen is a connect timeout
    /// (Istio `connectionPool.tcp.connectTimeout`, default 10 s). 0 disables the check.
    pub connect_timeout_ns: u64,
    /// Ejections of this service that the agent has ended (ejection time over, endpoint gone).
    /// Only the agent writes it; see [`ServiceState::ejections`].
    pub ejections_released: i64,
    /// Most backends outlier detection may have ejected at once (maxEjectionPercent of the host
    /// set, Envoy's strict rule). 0: the kernel never ejects.
    pub max_ejected: u32,
    /// `APP_PROTOCOL_*` of the port.
    pub app_protocol: u8,
    /// `ON_EJECT_*`: what happens to a flow whose backend left rotation.
    pub on_eject: u8,
    pub _pad: [u8; 2],
    /// Session affinity (Kubernetes `sessionAffinity: ClientIP`): a client's new flows go to
    /// the backend its last flow went to, if that was within this many seconds and the backend
    /// still takes new flows. 0: off.
    pub affinity_timeout_s: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceConfig>() == 32);

/// What happens to the open flows of a backend that was ejected, failed its active checks or
/// was removed. Default: HTTP/1.x flows drain, other flows are reset (by the agent).
pub const ON_EJECT_AUTO: u8 = 0;
/// HTTP/1.x flows end at the next request: the response in progress completes, the next
/// request on the connection is steered anew and the healthy backend's RST makes the client
/// reconnect. Opaque flows are kept.
pub const ON_EJECT_DRAIN: u8 = 1;
/// Every flow is reset at once (the agent forgets them; their next packet meets a RST).
pub const ON_EJECT_RESET: u8 = 2;
/// Open flows stay on their backend (only new flows avoid it).
pub const ON_EJECT_KEEP: u8 = 3;

/// The backend slot holds a live backend (ids are reused only after a grace period).
pub const BACKEND_FLAG_ACTIVE: u8 = 1;
/// The agent takes the backend out of new flows (failing active checks, or an outlier ejection
/// the agent tracks), whatever the kernel's outlier flag says.
pub const BACKEND_FLAG_UNROUTABLE: u8 = 2;
/// The service is in panic (below minHealthPercent): route to the backend even while it is
/// outlier-ejected (Envoy ignores health in panic; outlier detection itself carries on).
pub const BACKEND_FLAG_PANIC: u8 = 4;
/// The policy gives the backend no new flows (weight 0: a draining endpoint, a priority that
/// gets no load): session affinity does not bring a client back to it.
pub const BACKEND_FLAG_NO_SHARE: u8 = 8;

/// Session affinity: a client of a service (`GS_AFFINITY`, an LRU map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityKeyOf<A> {
    pub service_id: u32,
    /// Network byte order.
    pub client: A,
}
/// An IPv4 client (`GS_AFFINITY`).
pub type AffinityKey = AffinityKeyOf<u32>;
/// An IPv6 client (`GS_AFFINITY6`).
pub type AffinityKey6 = AffinityKeyOf<Addr6>;
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityKey6>() == 20);

/// The backend a client's last new flow went to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Default IPv6 conntrack capacity (`GS_CONNTRACK6`, an LRU map; `dataplane.conntrackSize6`)
/// and the IPv6 clients remembered for session affinity (`GS_AFFINITY6`, fixed). Small by
/// default: the maps are preallocated, and at the IPv4 sizes would cost every node without
/// IPv6 services tens of MiB for nothing.
pub const CONNTRACK6_SIZE: u32 = 16384;
pub const AFFINITY6_SIZE: u32 = 4096;

/// Clients remembered for session affinity, over all services (an LRU map: the least recently
/// seen client goes first when it is full, as in Cilium's `LB4_AFFINITY_MAP`).
pub const AFFINITY_SIZE: u32 = 65536;

/// Per-backend outlier state (not per-CPU: the consecutive counters must see every CPU's
/// responses in order, so they are updated atomically). The kernel writes it with atomics; the
/// agent writes it whole only when nothing else can (a fresh backend id, or ending an ejection,
/// while the kernel ignores the backend's signals).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendState {
    /// Non-zero while outlier detection has the backend ejected: new flows skip it (unless the
    /// service is in panic) and its errors and successes are ignored (Envoy). Set by the kernel
    /// with an atomic exchange when a consecutive-error limit is reached within the service's
    /// maxEjectionPercent; cleared by the agent when the ejection time is over.
    pub ejected: u64,
    /// Consecutive 5xx responses (connect failures count too: Istio's rule for opaque TCP).
    /// 64-bit because the BPF target's atomic add is 64-bit only.
    pub consecutive_5xx: u64,
    /// Consecutive gateway errors: 502, 503, 504 and connect failures.
    pub consecutive_gateway: u64,
    /// When the kernel ejected it (ns since boot, CLOCK_MONOTONIC); 0 if the agent did.
    pub ejected_at_ns: u64,
    /// When the backend last accepted a connection (its SYN-ACK passed; ns, CLOCK_MONOTONIC).
    /// A SYN that went unanswered while the backend accepted others was lost on the way (or
    /// never meant to be answered), not refused by a dead backend: no connect timeout.
    pub last_accept_ns: u64,
}
const _: () = assert!(core::mem::size_of::<BackendState>() == 40);

/// [`KernelEvent::kind`]: the kernel ejected a backend, so the agent can start the ejection
/// clock and recompute weights without polling every backend.
pub const EVENT_EJECTED: u32 = 1;
/// [`KernelEvent::kind`]: a connection attempt to the backend went unanswered past its connect
/// timeout while the backend accepted no other connection. Not yet an error: a client can
/// craft a SYN the backend drops (a bad checksum), so the agent first tries to connect itself
/// and counts the timeout (through [`program_names::COUNT_TIMEOUTS`]) only if that fails too.
pub const EVENT_CONNECT_TIMEOUT: u32 = 2;

/// Sent by the kernel through the events ring (`EVENT_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelEvent {
    pub kind: u32,
    pub backend_id: u32,
    pub service_id: u32,
    pub _pad: u32,
    pub at_ns: u64,
    /// `EVENT_EJECTED`: the runs that reached the limit.
    pub consecutive_5xx: u64,
    pub consecutive_gateway: u64,
}
const _: () = assert!(core::mem::size_of::<KernelEvent>() == 40);

/// What [`program_names::COUNT_TIMEOUTS`] reads after an Ethernet header: the verdict of the
/// agent's own connection on this backend's suspected connect timeouts (`TIMEOUT_*`). The
/// endpoint is checked against the backend id, which may have been reused since the agent
/// looked it up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TimeoutCount {
    pub backend_id: u32,
    /// Network byte order, as in [`Backend`].
    pub addr: u32,
    pub port: u16,
    pub verdict: u16,
}
/// [`TimeoutCount::verdict`]: the agent's connection failed too; count one connect failure per
/// run of the program.
pub const TIMEOUT_CONFIRMED: u16 = 0;
/// [`TimeoutCount::verdict`]: the backend accepted the agent's connection. It counts as an
/// accepted connection ([`BackendState::last_accept_ns`]), so SYNs sent before it can no longer
/// raise suspicions: forged ones cost one check per connect timeout, not one each.
pub const TIMEOUT_DISMISSED: u16 = 1;
const _: () = assert!(core::mem::size_of::<TimeoutCount>() == 12);
/// [`program_names::COUNT_TIMEOUTS`] returns this when it counted, anything else when the
/// backend id no longer names that endpoint.
pub const TIMEOUT_COUNTED: i32 = 0;

/// Direction of a conntrack entry's key.
pub const DIR_ORIGINAL: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// Conntrack key: the 5-tuple as seen on the wire, plus direction. Original direction is
/// client → VIP; reply direction is backend → client. Reverse NAT is keyed on the reply entry of
/// the translated flow (not on the backend address alone), so direct client → backend traffic is
/// never rewritten.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: u16,
}
/// An IPv4 flow's key (`GS_CONNTRACK`).
pub type FlowKey = FlowKeyOf<u32>;
/// An IPv6 flow's key (`GS_CONNTRACK6`).
pub type FlowKey6 = FlowKeyOf<Addr6>;
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

impl<A: Addr> FlowKeyOf<A> {
    /// The key of a tuple as seen on the wire (network byte order), in `direction`.
    #[inline(always)]
    pub const fn new(saddr: A, daddr: A, sport: u16, dport: u16, proto: u8, direction: u8) -> Self {
        FlowKeyOf {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            direction,
            _pad: 0,
        }
    }

    /// The key of the reply half of the flow whose original half is (`self`, `original`): the
    /// backend's answers to the client, as `original`'s translation makes them.
    pub const fn reply_half(&self, original: &FlowValueOf<A>) -> Self {
        Self::new(
            original.nat_addr,
            self.saddr,
            original.nat_port,
            self.sport,
            self.proto,
            DIR_REPLY,
        )
    }

    /// The key of the original half of the flow whose reply half is (`self`, `reply`).
    pub const fn original_half(&self, reply: &FlowValueOf<A>) -> Self {
        Self::new(
            self.daddr,
            reply.nat_addr,
            self.dport,
            reply.nat_port,
            self.proto,
            DIR_ORIGINAL,
        )
    }
}

/// TCP connection state of a flow (original entry), as far as signals and re-steering need it.
/// Only a pure SYN (no ACK, FIN or RST) starts `SYN_SENT`.
pub const TCP_SYN_SENT: u8 = 1;
/// The backend answered the SYN with a SYN-ACK. A SYN on this tuple is not a new connection.
pub const TCP_ESTABLISHED: u8 = 2;
/// RST seen: the tuple may be reused by a new connection (so may one with a FIN seen in both
/// directions: `FlowValue::fin_seen` of both entries).
pub const TCP_CLOSED: u8 = 3;
/// First seen mid-stream (no pure SYN: an evicted entry, a restart without pins, a packet with
/// odd flags). No connect timer runs; a pure SYN on it is a new connection.
pub const TCP_MIDSTREAM: u8 = 4;

/// `FlowValue::flags`: a connect failure has been counted for this flow already.
pub const FLOW_FLAG_CONNECT_FAILURE_COUNTED: u8 = 1;
/// Original entry: this connection's SYN reused the tuple of an earlier one still tracked here.
/// Its refusal proves nothing: a backend still holding the earlier (half-open) connection
/// answers the new SYN with a RST, and a client can arrange exactly that (open, close our state
/// with a RST the backend drops, reopen), so it is not counted.
pub const FLOW_FLAG_REUSED_TUPLE: u8 = 2;
/// The connect succeeded while the protocol was still being detected: counted as a success once
/// the flow turns out to be opaque TCP (an HTTP flow's successes are its responses).
pub const FLOW_FLAG_CONNECT_OK_PENDING: u8 = 8;

/// Original entry: every byte the client sent so far is accounted for — requests one at a time,
/// each framed by its head, and no second versions of bytes the backend may have taken instead.
/// Set only on a connection opened here by a plain SYN (no data in it); cleared for good by
/// anything the agent cannot follow exactly (a request sent early or pipelined, one of unknown
/// length or an HTTP/0.9 line, a copy of request bytes that frames differently, bytes past the
/// armed request that arm nothing, data on a SYN, an urgent pointer, an IP fragment, a segment
/// ahead of a gap or out of reach, a SYN-ACK for another ISN). While it is clear, no response
/// start is armed.
pub const FLOW_FLAG_REQUESTS_FOLLOWED: u8 = 64;
/// Reply entry: the awaited response answers a HEAD request (no body, whatever its fields say).
pub const FLOW_FLAG_HEAD_REQUEST: u8 = 16;
/// Reply entry: the awaited response answers a CONNECT request (a 2xx opens a tunnel).
pub const FLOW_FLAG_CONNECT_REQUEST: u8 = 32;

/// `FlowValue::http_state` (reply entry of an HTTP/1.x flow): where the next response starts.
/// Unknown (a flow first seen mid-stream, a response whose end its head does not say — chunked,
/// read until close — or one whose start was missed): nothing more is read on this connection.
pub const HTTP_UNFRAMED: u8 = 0;
/// A request was sent once the last response had ended: the reply byte at `resp_seq` starts
/// its response.
pub const HTTP_AWAITING: u8 = 1;
/// The last response (or the handshake) ends at `resp_seq`, known from its head: a request
/// sent once the backend has sent exactly that much is answered at `resp_seq`.
pub const HTTP_FRAMED: u8 = 2;

/// Conntrack value. For the original entry `nat_addr:nat_port` is the backend (DNAT target);
/// for the reply entry it is the VIP:port (SNAT source restored on replies).
///
/// Layout rule for this and every other map value: fields are only ever appended (and their
/// zero means "nothing known yet"), so an upgrade can migrate pinned entries by copying them
/// into the longer value (`agent/src/migrate.rs`).
///
/// The original entry carries the TCP state (the request path reads it for every SYN); the
/// reply entry carries the response tracking (the reply path reads it for every packet), so
/// each direction's common case is one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValueOf<A: Addr> {
    pub backend_id: u32,
    pub service_id: u32,
    pub nat_addr: A,
    pub nat_port: u16,
    /// `TCP_*` (original entry).
    pub tcp_state: u8,
    /// `FLOW_FLAG_*`.
    pub flags: u8,
    /// Nothing for IPv4; keeps IPv6's `created_ns` aligned.
    pub _pad: A::Pad,
    /// When the flow's first SYN (or first packet) was seen (ns, CLOCK_MONOTONIC/boot).
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Reply entry: backend sequence number (host order) where the awaited response starts
    /// (`HTTP_AWAITING`), or where the last response ends (`HTTP_FRAMED`; ISN + 1 before the
    /// backend sent anything). Original entry: client sequence number where the last armed
    /// request ends (ISN + 1 before the first), where the next one must start.
    pub resp_seq: u32,
    /// The next sequence number (host order) of this entry's sender — the client in the
    /// original entry, the backend in the reply entry: one past the highest it has sent (SYN
    /// and FIN count one). Valid when `seq_nxt_known` is 1 (original: from its first packet;
    /// reply: from the SYN-ACK or first data on). Each direction's program writes its own.
    pub seq_nxt: u32,
    /// `APP_PROTOCOL_*`: the service's, then the detected one once the first payload is seen.
    pub app_protocol: u8,
    /// Reply entry: `HTTP_*`.
    pub http_state: u8,
    /// `seq_nxt` is valid.
    pub seq_nxt_known: u8,
    /// A FIN was seen in this entry's direction. Each direction's program writes only its own
    /// entry's byte: the two FINs of a close often cross on two CPUs, and a shared flags byte
    /// would lose one of them to the other's read-modify-write.
    pub fin_seen: u8,
    /// Original entry: the client's ISN (a retransmission repeats it, a refusal acknowledges
    /// it, a late SYN already translated by XDP carries it). Reply entry: client sequence number
    /// of the last request start seen — the armed request's while its requests are followed.
    pub req_seq: u32,
}
/// An IPv4 flow's entry (`GS_CONNTRACK`).
pub type FlowValue = FlowValueOf<u32>;
/// An IPv6 flow's entry (`GS_CONNTRACK6`): the same fields, a 16-byte NAT address.
pub type FlowValue6 = FlowValueOf<Addr6>;
const _: () = assert!(core::mem::size_of::<FlowValue>() == 48);
const _: () = assert!(core::mem::size_of::<FlowValue6>() == 64);
const _: () = assert!(core::mem::offset_of!(FlowValue, created_ns) == 16);

/// Per-CPU traffic counters (services and backends).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);

/// Per-CPU backend traffic (`GS_BACKEND_STATS`): counted on every packet, so each CPU has its
/// own copy and no cache line bounces between CPUs. Kept small, since it is paid once per
/// possible CPU: 40 B × `maxBackends` × CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendTraffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<BackendTraffic>() == 40);

/// Backend signal counters (`GS_BACKEND_SIGNALS`), one copy shared by all CPUs (atomic adds):
/// they count responses and connection events, far rarer than packets, so one copy costs
/// nothing measurable and saves 72 B × `maxBackends` per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendSignals {
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub responses: [u64; 5],
    /// TCP RST from the backend on an established flow.
    pub resets: u64,
    /// Connects that failed: RST in reply to a SYN (refused) or no SYN-ACK within the timeout.
    pub connect_failures: u64,
    /// HTTP/1.x responses whose start could not be located exactly (pipelined requests, a
    /// request before the last response ended, a status line or head split across segments,
    /// every request on a connection after a response or request of unknown length — chunked,
    /// read until close — or a second version of a request's bytes): not parsed, never guessed.
    pub http_skipped: u64,
    /// Signals that arrived while the backend was ejected and were ignored (Envoy).
    pub ignored_while_ejected: u64,
}
const _: () = assert!(core::mem::size_of::<BackendSignals>() == 72);

/// A backend's counters as the agent reads them: the per-CPU traffic summed, plus the signals.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub responses: [u64; 5],
    /// TCP RST from the backend on an established flow.
    pub resets: u64,
    /// Connects that failed: RST in reply to a SYN (refused) or no SYN-ACK within the timeout.
    pub connect_failures: u64,
    /// HTTP/1.x responses whose start could not be located exactly (pipelined requests, a
    /// request before the last response ended, a status line or head split across segments,
    /// every request on a connection after a response or request of unknown length — chunked,
    /// read until close — or a second version of a request's bytes): not parsed, never guessed.
    pub http_skipped: u64,
    /// Signals that arrived while the backend was ejected and were ignored (Envoy).
    pub ignored_while_ejected: u64,
}
const _: () = assert!(core::mem::size_of::<BackendCounters>() == 112);

impl BackendCounters {
    /// Adds one CPU's traffic.
    pub fn add_traffic(&mut self, t: &BackendTraffic) {
        self.packets += t.packets;
        self.bytes += t.bytes;
        self.new_flows += t.new_flows;
        self.reply_packets += t.reply_packets;
        self.reply_bytes += t.reply_bytes;
    }

    pub fn set_signals(&mut self, s: &BackendSignals) {
        self.responses = s.responses;
        self.resets = s.resets;
        self.connect_failures = s.connect_failures;
        self.http_skipped = s.http_skipped;
        self.ignored_while_ejected = s.ignored_while_ejected;
    }
}

/// Why a packet was dropped (index into the per-CPU drop counters).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The service has no backend.
    NoBackend = 0,
    /// An IPv4 fragment addressed to a VIP: ports are unknown, so it cannot be steered.
    Fragment = 1,
    /// A packet addressed to a VIP whose headers are cut short or cannot be steered (IPv6: a
    /// chain longer than the four extension headers walked, a routing header with segments
    /// left, a wrong version).
    Truncated = 2,
    /// A map or helper failed (e.g. conntrack insert, checksum helper).
    Internal = 3,
    /// A new TCP connection would become, after translation, the same tuple as a live one of
    /// the same client port through another VIP to the same backend (Linux reuses a source
    /// port for different destinations). The backend would take it for the live connection and
    /// the replies of one could be reverse-NATed to the other's VIP, so it waits, as netfilter
    /// drops a NAT clash, until the live one ends; the client's SYN retransmission then passes.
    TupleInUse = 4,
}

impl DropReason {
    pub const COUNT: u32 = 5;
    pub const ALL: [DropReason; 5] = [
        DropReason::NoBackend,
        DropReason::Fragment,
        DropReason::Truncated,
        DropReason::Internal,
        DropReason::TupleInUse,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no_backend",
            DropReason::Fragment => "fragment",
            DropReason::Truncated => "truncated",
            DropReason::Internal => "internal",
            DropReason::TupleInUse => "tuple_in_use",
        }
    }
}

/// A datagram being fragmented: only its first fragment carries the ports, so the first one's
/// translation is remembered for the rest (Cilium's `IPV4_FRAG_DATAGRAMS` map), keyed as on the
/// wire (network byte order) with the direction of the flow they belong to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub direction: u8,
}
const _: () = assert!(core::mem::size_of::<FragmentKey>() == 12);

/// The address a datagram's later fragments get (the VIP as source for replies, the backend as
/// destination for requests), and when the first fragment was seen: a fragment arriving later
/// than [`FRAGMENT_TIMEOUT_NS`] after it (the kernel's reassembly timeout) is not trusted to be
/// the same datagram, since IP ids repeat.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentValue {
    pub addr: u32,
    pub _pad: u32,
    pub first_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragmentValue>() == 16);

/// An IPv6 datagram being fragmented ([`FragmentKey`]'s counterpart): its fragment header's
/// 32-bit identification, unique per source and destination while the datagram is in flight
/// (RFC 8200 4.5), so no protocol is needed beside it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey6 {
    pub saddr: Addr6,
    pub daddr: Addr6,
    pub id: u32,
    pub direction: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragmentKey6>() == 40);

/// [`FragmentValue`]'s IPv6 counterpart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentValue6 {
    pub addr: Addr6,
    pub first_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragmentValue6>() == 24);

/// Linux's `ipfrag_time` default.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;
/// Linux's `ip6frag_time` default (IPv6 reassembly waits twice as long).
pub const FRAGMENT6_TIMEOUT_NS: u64 = 60_000_000_000;
/// Datagrams being fragmented at once (an LRU map).
pub const FRAGMENTS_SIZE: u32 = 8192;
/// Interfaces XDP may redirect to (`dataplane.xdpRedirectTo`).
pub const XDP_TARGETS_SIZE: u32 = 256;

/// Per-CPU conntrack event counters (`GS_CT_STATS`), by index.
pub mod ct_stats {
    /// A packet found its flow's entry but not the other direction's (the LRU evicted it, or a
    /// flood displaced it): the missing half was rebuilt from the one present.
    pub const PARTNER_RESTORED: u32 = 0;
    /// A TCP packet that opens no connection (no SYN) had no entry: the flow was steered anew
    /// mid-stream (an entry lost to eviction or expiry, or a stray segment).
    pub const MIDSTREAM: u32 = 1;
    /// An ICMP error about a steered flow was translated (its quoted packet and, when the
    /// backend or the VIP sent or receives it, its outer address).
    pub const ICMP_TRANSLATED: u32 = 2;
    /// A fragment of a steered datagram (not the first) was translated through the fragment
    /// map.
    pub const FRAGMENT_TRANSLATED: u32 = 3;
    /// A fragment (not the first) came for which no first fragment had been seen: passed
    /// untranslated (replies) or dropped (requests to a VIP).
    pub const FRAGMENT_UNKNOWN: u32 = 4;
    /// A VLAN-tagged frame (its tag in the packet, not taken off by the device) to a VIP: the
    /// programs read untagged Ethernet, so it passed unsteered.
    pub const VLAN_BYPASSED: u32 = 5;
    /// XDP translated a request whose next hop is not a vouched redirect target
    /// (`dataplane.xdpRedirectTo`): handed to the stack to forward instead of redirected.
    pub const XDP_PASSED_TO_STACK: u32 = 6;
    /// A RST whose sequence number is nowhere near what its sender has sent: it closes
    /// nothing (an off-path spoofer must guess the sequence; RFC 5961 asks endpoints the same).
    pub const RST_IGNORED: u32 = 7;
    /// IPv6 frames that passed unsteered because the IPv6 program was not in its tail-call
    /// slot (an agent that did not fill `GS_TAIL_CALLS`).
    pub const IPV6_UNSTEERED: u32 = 8;
    pub const COUNT: u32 = 9;
    /// Every counter with its name (metrics label, `geosteer status`).
    pub const NAMES: [(u32, &str); COUNT as usize] = [
        (PARTNER_RESTORED, "partner_restored"),
        (MIDSTREAM, "midstream"),
        (ICMP_TRANSLATED, "icmp_translated"),
        (FRAGMENT_TRANSLATED, "fragment_translated"),
        (FRAGMENT_UNKNOWN, "fragment_unknown"),
        (VLAN_BYPASSED, "vlan_bypassed"),
        (XDP_PASSED_TO_STACK, "xdp_passed_to_stack"),
        (RST_IGNORED, "rst_ignored"),
        (IPV6_UNSTEERED, "ipv6_unsteered"),
    ];
}

/// Global settings written by the agent (single-entry array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// The node's secret flow-hash key: random, made on the first start and kept in the pinned
    /// map, so restarts keep flow placement and no client can choose source ports that land on
    /// one backend (Cilium seeds its Maglev hash the same way).
    pub hash_seed: u64,
    /// A UDP flow idle this long is over: its next datagram is steered anew (Envoy udp_proxy
    /// `idle_timeout`, 60 s). 0: never.
    pub udp_timeout_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 16);

/// The flow hash both selection (kernel) and diagnostics use. Inputs in network byte order, as
/// read from the packet; `seed` is [`Settings::hash_seed`]. A finaliser-mixed combination
/// (murmur3 fmix32) so that neighbouring source ports land on unrelated slots; the seed enters
/// first and last, so without it the slot of a tuple cannot be computed.
#[inline(always)]
pub fn flow_hash<A: Addr>(seed: u64, saddr: A, daddr: A, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x9e37_79b9u32 ^ (seed as u32) ^ (proto as u32);
    h = saddr.mix_into(h);
    h = daddr.mix_into(h);
    h = mix(h ^ (((sport as u32) << 16) | dport as u32));
    h = mix(h ^ ((seed >> 32) as u32));
    fmix32(h)
}

#[inline(always)]
fn mix(h: u32) -> u32 {
    h.wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593)
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    /// Marks the kernel-boundary types as plain old data for aya's maps.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: every type listed is #[repr(C)] and Copy, holds no pointers, and spells
            // out its padding as fields (the size asserts beside each type check there is no
            // hidden padding), so any byte pattern is a valid value and none is uninitialised.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        ServiceKey,
        ServiceValue,
        TableChunk,
        Backend,
        BackendState,
        ServiceState,
        KernelEvent,
        TimeoutCount,
        FlowKey,
        FlowValue,
        TrafficCounters,
        BackendCounters,
        BackendTraffic,
        BackendSignals,
        FragmentKey,
        FragmentValue,
        FragmentKey6,
        FragmentValue6,
        Settings,
        ServiceConfig,
        Addr6,
        ServiceKey6,
        FlowKey6,
        FlowValue6,
        AffinityKey,
        AffinityKey6,
        AffinityValue,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_its_ids_then_its_slots_in_whole_chunks() {
        let entry = ServiceValue {
            table_start: 100,
            table_size: 1_021,
            backend_count: 17,
            ..Default::default()
        };
        // 17 ids: two chunks; 1,021 slots: 32 chunks (the last one part full).
        assert_eq!(entry.table_chunks(), 2 + 32);
        assert_eq!(entry.id_chunk(0), (100, 0));
        assert_eq!(entry.id_chunk(16), (101, 0));
        assert_eq!(entry.slot_chunk(0), (102, 0));
        assert_eq!(entry.slot_chunk(33), (103, 1));
        assert_eq!(entry.slot_chunk(1_020), (133, 28));
        assert_eq!(table_chunks(0, 3), 1);
        assert_eq!(table_chunks(0, 0), 0);
    }

    #[test]
    fn slots_pack_two_to_a_word() {
        let mut chunk = TableChunk::default();
        for lane in 0..TABLE_CHUNK_SLOTS {
            chunk.set_slot(lane, 1_000 + lane as u16);
        }
        chunk.set_slot(5, u16::MAX);
        for lane in 0..TABLE_CHUNK_SLOTS {
            let want = if lane == 5 { 0xffff } else { 1_000 + lane };
            assert_eq!(chunk.slot(lane), want, "lane {lane}");
        }
        assert_eq!(chunk.words[0], 1_000 | 1_001 << 16);
    }

    #[test]
    fn flow_hash_spreads_neighbouring_ports() {
        // 4096 consecutive source ports into 16 buckets: every bucket within 25% of the mean.
        let mut buckets = [0u32; 16];
        for port in 30000u16..34096 {
            let h = flow_hash(
                0x1234_5678_9abc_def0,
                0x0a00_0001,
                0x0a60_000a,
                port.to_be(),
                80u16.to_be(),
                PROTO_TCP,
            );
            buckets[(h % 16) as usize] += 1;
        }
        for count in buckets {
            assert!((192..=320).contains(&count), "bucket count {count}");
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = flow_hash(7, 1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(7, 9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(7, 1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(7, 1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(7, 1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(7, 1, 2, 3, 4, 17));
        assert_ne!(base, flow_hash(8, 1, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(7 | (1 << 40), 1, 2, 3, 4, 6));
    }

    #[test]
    fn an_ipv6_address_keeps_its_wire_bytes_and_hashes_by_every_word() {
        let ip = core::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6);
        let addr = Addr6::from_ip(ip);
        assert_eq!(addr.octets(), ip.octets());
        assert_eq!(addr.to_ip(), ip);
        // In memory as on the wire, as the kernel reads it.
        assert_eq!(addr.0[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        let base = flow_hash(7, addr, addr, 3, 4, 6);
        for word in 0..4 {
            let mut other = addr;
            other.0[word] ^= 1;
            assert_ne!(
                base,
                flow_hash(7, other, addr, 3, 4, 6),
                "source word {word}"
            );
            assert_ne!(
                base,
                flow_hash(7, addr, other, 3, 4, 6),
                "destination word {word}"
            );
        }
        // The IPv4 hash is what it was (the agent's `explain` computes the same).
        assert_eq!(flow_hash(7, 1u32, 2u32, 3, 4, 6), {
            let mut h = 0x9e37_79b9u32 ^ 7 ^ 6;
            h = mix(h ^ 1);
            h = mix(h ^ 2);
            h = mix(h ^ ((3 << 16) | 4));
            h = mix(h ^ 0);
            fmix32(h)
        });
    }

    /// Ports a client picked to land on one slot under one seed scatter under another.
    #[test]
    fn flow_hash_aiming_does_not_survive_another_seed() {
        let slot = |seed: u64, port: u16| {
            flow_hash(
                seed,
                0x0a00_0001,
                0x0a60_000a,
                port.to_be(),
                80u16.to_be(),
                6,
            ) % 16
        };
        let aimed = (1024u16..60000).filter(|p| slot(1, *p) == 0).take(200);
        let still = aimed
            .filter(|p| slot(0xdead_beef_0bad_f00d, *p) == 0)
            .count();
        assert!(still < 30, "{still} of 200 aimed ports still on slot 0");
    }
}
