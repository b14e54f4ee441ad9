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
    pub const TABLES: &str = "GS_TABLES";
    pub const BACKENDS: &str = "GS_BACKENDS";
    pub const BACKEND_STATE: &str = "GS_BACKEND_STATE";
    pub const CONNTRACK: &str = "GS_CONNTRACK";
    pub const SERVICE_STATS: &str = "GS_SERVICE_STATS";
    pub const BACKEND_STATS: &str = "GS_BACKEND_STATS";
    pub const DROPS: &str = "GS_DROPS";
    pub const SETTINGS: &str = "GS_SETTINGS";
    pub const SERVICE_STATE: &str = "GS_SERVICE_STATE";
    pub const EVENTS: &str = "GS_EVENTS";

    /// Every map, for pinning and cleanup.
    pub const ALL: [&str; 12] = [
        SERVICES,
        VIPS,
        TABLES,
        BACKENDS,
        BACKEND_STATE,
        CONNTRACK,
        SERVICE_STATS,
        BACKEND_STATS,
        DROPS,
        SETTINGS,
        SERVICE_STATE,
        EVENTS,
    ];
}

/// Program names (the function names in `ebpf/src/main.rs`).
pub mod program_names {
    pub const TC_INGRESS: &str = "geosteer_tc_ingress";
    pub const TC_EGRESS: &str = "geosteer_tc_egress";
    pub const XDP: &str = "geosteer_xdp";
}

/// Size of every service's Maglev lookup table. A prime (Maglev needs M prime so every
/// backend's permutation visits every slot); 16381 is Cilium's default M, which keeps each of
/// 100 equal backends within ~1% of its share.
pub const MAGLEV_TABLE_SIZE: usize = 16381;
/// Most backends one service may have (one table's slots hold a `u16` index into its list).
pub const MAX_BACKENDS_PER_SERVICE: usize = 1024;
/// Default capacity of the service map; the agent may override it at load time.
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
/// Default capacity of the global backend arrays (backend ids are indexes into them).
pub const DEFAULT_MAX_BACKENDS: u32 = 65536;
/// Default conntrack capacity (LRU, two entries per flow: original and reply direction).
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262144;
/// How many following slots selection tries when a slot's backend is ejected. Bounded so the
/// verifier accepts the loop and a packet's cost stays constant; the control plane rebuilds the
/// table without the ejected backend right after, so long runs of ejected slots are short-lived.
pub const MAX_EJECTED_PROBE: u32 = 16;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A service: virtual IP, port and protocol. Address and port in network byte order, as they
/// appear in the packet, so the kernel compares without conversions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);

/// Which of the service's two tables is live. The agent writes the idle table, then flips
/// `generation` with a single update of this value: a packet sees the old table or the new one,
/// never a mix. The idle table is rewritten only after an RCU grace period, so no packet that
/// read the old generation can still be using it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of the service (counters; tables at `id * 2 + generation`).
    pub id: u32,
    /// 0 or 1.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);

impl ServiceValue {
    pub const fn table_index(&self) -> u32 {
        self.id * 2 + (self.generation & 1)
    }
}

/// One generation of a service's backend set and Maglev table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ServiceTable {
    pub backend_count: u32,
    pub _pad: u32,
    /// Global backend ids; `slots` index into this list.
    pub backends: [u32; MAX_BACKENDS_PER_SERVICE],
    pub slots: [u16; MAGLEV_TABLE_SIZE],
    pub _pad_tail: u16,
}
const _: () = assert!(
    core::mem::size_of::<ServiceTable>()
        == 8 + 4 * MAX_BACKENDS_PER_SERVICE + 2 * MAGLEV_TABLE_SIZE + 2
);

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

/// Per-service state the kernel reads and updates atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceState {
    /// How many more backends the kernel may eject on its own before the agent has looked
    /// (the agent sets it from maxEjectionPercent: floor(max% × total / 100) − ejected).
    /// Signed: concurrent CPUs may take it below zero for an instant and give it back.
    pub eject_budget: i64,
}
const _: () = assert!(core::mem::size_of::<ServiceState>() == 8);

/// The backend slot holds a live backend (ids are reused only after a grace period).
pub const BACKEND_FLAG_ACTIVE: u8 = 1;

/// Mutable per-backend health state shared by kernel and agent (not per-CPU: the consecutive
/// counters must see every CPU's responses in order, so they are updated atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendState {
    /// Non-zero: new flows skip this backend. Set by the kernel when a consecutive-error limit
    /// is reached (and the service's ejection budget allows), or by the agent (active health
    /// checks); cleared only by the agent when the ejection time is over.
    pub ejected: u32,
    pub _pad: u32,
    /// Consecutive 5xx responses (connect failures count too: Istio's rule for opaque TCP).
    /// 64-bit because the BPF target's atomic add is 64-bit only.
    pub consecutive_5xx: u64,
    /// Consecutive gateway errors: 502, 503, 504 and connect failures.
    pub consecutive_gateway: u64,
    /// When the kernel ejected it (ns since boot, CLOCK_MONOTONIC); 0 if the agent did.
    pub ejected_at_ns: u64,
}
const _: () = assert!(core::mem::size_of::<BackendState>() == 32);

/// Sent by the kernel through the events ring when it ejects a backend, so the agent can
/// start the ejection clock and recompute weights without polling every backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EjectEvent {
    pub backend_id: u32,
    pub service_id: u32,
    pub at_ns: u64,
    pub consecutive_5xx: u64,
    pub consecutive_gateway: u64,
}
const _: () = assert!(core::mem::size_of::<EjectEvent>() == 32);

/// Direction of a conntrack entry's key.
pub const DIR_ORIGINAL: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// Conntrack key: the 5-tuple as seen on the wire, plus direction. Original direction is
/// client → VIP; reply direction is backend → client. Reverse NAT is keyed on the reply entry of
/// the translated flow (not on the backend address alone), so direct client → backend traffic is
/// never rewritten.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// TCP connection state as far as the signals need it.
pub const TCP_SYN_SENT: u8 = 1;
pub const TCP_ESTABLISHED: u8 = 2;
pub const TCP_CLOSED: u8 = 3;

/// `FlowValue::flags`: a connect failure has been counted for this flow already.
pub const FLOW_FLAG_CONNECT_FAILURE_COUNTED: u8 = 1;

/// Conntrack value. For the original entry `nat_addr:nat_port` is the backend (DNAT target);
/// for the reply entry it is the VIP:port (SNAT source restored on replies).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_id: u32,
    pub service_id: u32,
    pub nat_addr: u32,
    pub nat_port: u16,
    pub tcp_state: u8,
    pub flags: u8,
    /// When the flow's first SYN was seen (ns, CLOCK_MONOTONIC/boot).
    pub created_ns: u64,
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 32);

/// Per-CPU traffic counters (services and backends).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);

/// Per-CPU backend counters: request direction traffic plus the reply-path signals.
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
}
const _: () = assert!(core::mem::size_of::<BackendCounters>() == 96);

/// Why a packet was dropped (index into the per-CPU drop counters).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The service has no backend.
    NoBackend = 0,
    /// An IPv4 fragment addressed to a VIP: ports are unknown, so it cannot be steered.
    Fragment = 1,
    /// A packet addressed to a VIP whose headers are cut short.
    Truncated = 2,
    /// A map or helper failed (e.g. conntrack insert, checksum helper).
    Internal = 3,
}

impl DropReason {
    pub const COUNT: u32 = 4;
    pub const ALL: [DropReason; 4] = [
        DropReason::NoBackend,
        DropReason::Fragment,
        DropReason::Truncated,
        DropReason::Internal,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no_backend",
            DropReason::Fragment => "fragment",
            DropReason::Truncated => "truncated",
            DropReason::Internal => "internal",
        }
    }
}

/// Global settings written by the agent (single-entry array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// A SYN retransmitted this long after the first, with no SYN-ACK seen, is a connect
    /// failure. 0 disables the check.
    pub connect_timeout_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 8);

/// The flow hash both selection (kernel) and diagnostics use. Inputs in network byte order, as
/// read from the packet. A finaliser-mixed combination (murmur3 fmix32) so that neighbouring
/// source ports land on unrelated slots.
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x9e37_79b9u32 ^ (proto as u32);
    h = mix(h ^ saddr);
    h = mix(h ^ daddr);
    h = mix(h ^ (((sport as u32) << 16) | dport as u32));
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
    // SAFETY: all of these are #[repr(C)], Copy, contain no pointers and have explicit padding.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for ServiceTable {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for BackendState {}
    unsafe impl aya::Pod for ServiceState {}
    unsafe impl aya::Pod for EjectEvent {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for TrafficCounters {}
    unsafe impl aya::Pod for BackendCounters {}
    unsafe impl aya::Pod for Settings {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_spreads_neighbouring_ports() {
        // 4096 consecutive source ports into 16 buckets: every bucket within 25% of the mean.
        let mut buckets = [0u32; 16];
        for port in 30000u16..34096 {
            let h = flow_hash(
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
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }
}
