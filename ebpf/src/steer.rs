//! Map declarations and the steering logic shared by the TC and XDP programs: service lookup,
//! conntrack with per-flow TCP state, Maglev selection with the ejected-backend probe,
//! reverse-NAT lookup, counters and the reply-path health signals.
//!
//! What counts as a signal (docs/SEMANTICS.md, "What counts as an error"):
//! - only a pure SYN starts a connection and its connect timer; a SYN on an open tuple is not a
//!   new connection;
//! - HTTP/1.x statuses are read only where a response starts: the reply byte the client's
//!   request acknowledged, armed only where the last response ended by its own head's framing
//!   (Content-Length, or no body) with nothing else in flight, read once;
//! - opaque TCP: a completed connect is a success (Envoy tcp_proxy), a refused or timed-out
//!   connect is a gateway error;
//! - nothing is counted while the backend is ejected.

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::net::{Ipv4Addr, Ipv6Addr};

/// Adds one to a backend's shared signal counter `$field` (see [`BackendSignals`]).
macro_rules! count_signal {
    ($backend_id:expr, $field:ident) => {
        if let Some(signals) = BACKEND_SIGNALS.get_ptr_mut($backend_id) {
            // SAFETY: an 8-byte aligned u64 inside a live map value.
            unsafe { fetch_add(&raw mut (*signals).$field as *mut i64, 1) };
        }
    };
}

/// Atomic fetch-and-add on a map value, returning the old value. Written as the instruction
/// itself because rustc builds for the `generic` BPF CPU, where LLVM refuses to use the result
/// of an atomic add (BPF_FETCH arrived with CPU v3, kernel 5.12; this kernel has it).
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned i64 in a map value.
#[inline(always)]
unsafe fn fetch_add(ptr: *mut i64, delta: i64) -> i64 {
    let mut value = delta;
    // SAFETY: per the contract above.
    unsafe {
        core::arch::asm!(
            "{value} = atomic_fetch_add((u64 *)({ptr} + 0), {value})",
            ptr = in(reg) ptr,
            value = inout(reg) value,
        );
    }
    value
}

/// Atomic exchange on a map value, returning the old value (BPF_XCHG, CPU v3, as above).
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned u64 in a map value.
#[inline(always)]
unsafe fn exchange(ptr: *mut u64, new: u64) -> u64 {
    let mut value = new;
    // SAFETY: per the contract above.
    unsafe {
        core::arch::asm!(
            "{value} = xchg_64({ptr} + 0, {value})",
            ptr = in(reg) ptr,
            value = inout(reg) value,
        );
    }
    value
}

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    cty::c_void,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_loop},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use geosteer_common::{
    AFFINITY_SIZE, AFFINITY6_SIZE, APP_PROTOCOL_DETECT, APP_PROTOCOL_HTTP1, APP_PROTOCOL_OPAQUE,
    Addr, Addr6, AffinityKey, AffinityKey6, AffinityKeyOf, AffinityValue, BACKEND_FLAG_ACTIVE,
    BACKEND_FLAG_NO_SHARE, BACKEND_FLAG_PANIC, BACKEND_FLAG_UNROUTABLE, Backend, BackendSignals,
    BackendState, BackendTraffic, CONNTRACK6_SIZE, DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_SERVICES, DEFAULT_TABLE_CHUNKS_PER_SERVICE, DIR_ORIGINAL, DIR_REPLY, DropReason,
    EVENT_CONNECT_TIMEOUT, EVENT_EJECTED, FLOW_FLAG_CONNECT_FAILURE_COUNTED,
    FLOW_FLAG_CONNECT_OK_PENDING, FLOW_FLAG_CONNECT_REQUEST, FLOW_FLAG_HEAD_REQUEST,
    FLOW_FLAG_REQUESTS_FOLLOWED, FLOW_FLAG_REUSED_TUPLE, FRAGMENT_TIMEOUT_NS, FRAGMENT6_TIMEOUT_NS,
    FRAGMENTS_SIZE, FlowKey, FlowKey6, FlowKeyOf, FlowValue, FlowValue6, FlowValueOf, FragmentKey,
    FragmentKey6, FragmentValue, FragmentValue6, HTTP_AWAITING, HTTP_FRAMED, HTTP_UNFRAMED,
    KernelEvent, MAX_EJECTED_PROBE, ON_EJECT_AUTO, ON_EJECT_DRAIN, PROTO_TCP, PROTO_UDP,
    ServiceConfig, ServiceKey, ServiceKey6, ServiceKeyOf, ServiceState, ServiceValue, Settings,
    TCP_CLOSED, TCP_ESTABLISHED, TCP_MIDSTREAM, TCP_SYN_SENT, TIMEOUT_COUNTED, TIMEOUT_DISMISSED,
    TableChunk, TimeoutCount, TrafficCounters, XDP_TARGETS_SIZE, ct_stats, flow_hash,
    http::{
        HEAD_MAX, HeadScan, METHOD_PREFIX_LEN, STATUS_PREFIX_LEN, is_connect_request, is_final,
        is_gateway_error, is_head_request, is_request_start, parse_status,
    },
};

// Sizes here are defaults; the agent resizes the large maps at load time from its config.
#[map(name = "GS_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Every VIP address (value: number of service ports on it): lets fragments and malformed
/// packets to a VIP be dropped without knowing their port.
#[map(name = "GS_VIPS")]
static VIPS: HashMap<u32, u32> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Every service's backend list and Maglev table, where its `ServiceValue` says (see there).
/// Memory-mappable: the agent writes new tables straight into the map's memory (free chunks no
/// service points at), not through a syscall per chunk.
#[map(name = "GS_TABLE_CHUNKS")]
static TABLE_CHUNKS: Array<TableChunk> = Array::with_max_entries(
    DEFAULT_MAX_SERVICES * DEFAULT_TABLE_CHUNKS_PER_SERVICE,
    BPF_F_MMAPABLE,
);
#[map(name = "GS_BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map(name = "GS_BACKEND_STATE")]
static BACKEND_STATE: Array<BackendState> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map(name = "GS_CONNTRACK")]
static CONNTRACK: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_SIZE, 0);
#[map(name = "GS_SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map(name = "GS_BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<BackendTraffic> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
/// Shared by all CPUs: responses and connection events (atomic adds).
#[map(name = "GS_BACKEND_SIGNALS")]
static BACKEND_SIGNALS: Array<BackendSignals> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map(name = "GS_DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);
/// Kernel-owned, by service id (ejection count).
#[map(name = "GS_SERVICE_STATE")]
static SERVICE_STATE: Array<ServiceState> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Agent-owned, by service id (protocol, connect timeout, ejection limit).
#[map(name = "GS_SERVICE_CONFIG")]
static SERVICE_CONFIG: Array<ServiceConfig> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Kernel → agent notifications (ejections).
#[map(name = "GS_KERNEL_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);
#[map(name = "GS_SETTINGS")]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
/// The translation of datagrams being fragmented, from their first fragment.
#[map(name = "GS_FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentValue> =
    LruHashMap::with_max_entries(FRAGMENTS_SIZE, 0);
/// Interfaces XDP may redirect to (the agent writes the ones `dataplane.xdpRedirectTo` names):
/// a redirect to any other device could be dropped on the far side (a veth whose peer runs
/// neither GRO nor an XDP program drops XDP frames).
#[map(name = "GS_XDP_TARGETS")]
pub(crate) static XDP_TARGETS: DevMapHash = DevMapHash::with_max_entries(XDP_TARGETS_SIZE, 0);
/// Session affinity: the backend of each client's last new flow, per service.
#[map(name = "GS_AFFINITY")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(AFFINITY_SIZE, 0);
/// The IPv6 counterparts of the maps above whose keys hold addresses (see
/// `map_names::SERVICES6`); everything keyed by service or backend id is shared.
#[map(name = "GS_SERVICES6")]
static SERVICES6: HashMap<ServiceKey6, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map(name = "GS_VIPS6")]
static VIPS6: HashMap<Addr6, u32> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map(name = "GS_CONNTRACK6")]
static CONNTRACK6: LruHashMap<FlowKey6, FlowValue6> =
    LruHashMap::with_max_entries(CONNTRACK6_SIZE, 0);
#[map(name = "GS_AFFINITY6")]
static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue> =
    LruHashMap::with_max_entries(AFFINITY6_SIZE, 0);
/// An IPv6 backend's address, by backend id (its `GS_BACKENDS` entry holds the rest).
#[map(name = "GS_BACKEND_ADDRS6")]
static BACKEND_ADDRS6: Array<Addr6> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map(name = "GS_FRAGMENTS6")]
static FRAGMENTS6: LruHashMap<FragmentKey6, FragmentValue6> =
    LruHashMap::with_max_entries(FRAGMENTS_SIZE, 0);

/// An address family as the steering code sees it: its address type and the maps keyed by it.
/// The request and reply paths are written once over it; each family gets its own compiled
/// copy, so the IPv4 copy is what it was before IPv6 existed.
pub(crate) trait Family: Addr + 'static {
    /// Whether a new flow is steered, and an evicted reply half rebuilt, in BPF functions of
    /// their own: their keys and entries are the request path's largest locals, and IPv6's do
    /// not fit the program's 512-byte stack beside the rest of the path. (IPv4's fit; the
    /// calls are saved there.)
    const OUTLINE_NEW_FLOWS: bool;
    /// Whether a drop's log line names the addresses: an IPv6 one's record takes more stack
    /// than the IPv6 path has left, so it names the ports (the drop is counted either way).
    const LOG_ADDRESSES: bool;
    fn services() -> &'static HashMap<ServiceKeyOf<Self>, ServiceValue>;
    fn vips() -> &'static HashMap<Self, u32>;
    fn conntrack() -> &'static LruHashMap<FlowKeyOf<Self>, FlowValueOf<Self>>;
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Self>, AffinityValue>;
    /// The address new flows to backend `id` are translated to (`backend` is its entry), or
    /// `None` when it has none of this family (IPv4's always has one).
    fn backend_addr(id: u32, backend: &Backend) -> Option<Self>;
    /// The address as the kernel log prints it.
    type Ip: aya_log_ebpf::macro_support::Argument + aya_log_ebpf::macro_support::DefaultFormatter;
    fn ip(self) -> Self::Ip;
}

impl Family for u32 {
    const OUTLINE_NEW_FLOWS: bool = false;
    const LOG_ADDRESSES: bool = true;
    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey, ServiceValue> {
        &SERVICES
    }
    #[inline(always)]
    fn vips() -> &'static HashMap<u32, u32> {
        &VIPS
    }
    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<FlowKey, FlowValue> {
        &CONNTRACK
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKey, AffinityValue> {
        &AFFINITY
    }
    #[inline(always)]
    fn backend_addr(_id: u32, backend: &Backend) -> Option<u32> {
        Some(backend.addr)
    }
    type Ip = Ipv4Addr;
    #[inline(always)]
    fn ip(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self))
    }
}

impl Family for Addr6 {
    const OUTLINE_NEW_FLOWS: bool = true;
    const LOG_ADDRESSES: bool = false;
    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey6, ServiceValue> {
        &SERVICES6
    }
    #[inline(always)]
    fn vips() -> &'static HashMap<Addr6, u32> {
        &VIPS6
    }
    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<FlowKey6, FlowValue6> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKey6, AffinityValue> {
        &AFFINITY6
    }
    /// `None` where the agent wrote the unspecified address or nothing (an endpoint without
    /// an IPv6 address).
    #[inline(always)]
    fn backend_addr(id: u32, _backend: &Backend) -> Option<Addr6> {
        BACKEND_ADDRS6
            .get(id)
            .copied()
            .filter(|addr| *addr != Addr6::default())
    }
    type Ip = Ipv6Addr;
    #[inline(always)]
    fn ip(self) -> Ipv6Addr {
        Ipv6Addr::from(self.octets())
    }
}

/// Per-CPU room for a message head and its scan (the stack has 512 bytes in all). Every program
/// that uses it (TC egress for responses, TC ingress and XDP for requests) runs with bottom
/// halves off, so none interrupts another on its CPU: one slot per CPU is enough.
#[map(name = "GS_HEAD_SCRATCH")]
static HEAD_SCRATCH: PerCpuArray<HeadScratch> = PerCpuArray::with_max_entries(1, 0);

/// A message head being read. The scan lives in the map rather than on the stack: the
/// verifier knows nothing of a map value's contents, so the `bpf_loop` callback's state is the
/// same on every call and is verified once; scan state on the stack would be tracked value by
/// value, call after call, past the verifier's limit.
#[repr(C)]
struct HeadScratch {
    head: [u8; HEAD_MAX],
    /// Bytes of `head` copied from the packet.
    len: u32,
    scan: HeadScan,
}
/// `ct_stats::*` event counters.
#[map(name = "GS_CT_STATS")]
static CT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ct_stats::COUNT, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;

/// A parsed TCP/UDP packet of either family (`A`: its address type). Addresses and ports in
/// network byte order, sequence numbers in host order.
pub(crate) struct Flow<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub l4_off: u32,
    /// Start of the TCP payload (0 for UDP).
    pub payload_off: u32,
    /// TCP payload bytes (from the IP total length, so Ethernet padding is not counted).
    pub payload_len: u32,
    pub seq: u32,
    pub ack: u32,
    pub len: u32,
    /// The first fragment of a fragmented segment: its payload goes on in other packets.
    pub fragmented: bool,
}

/// Reads bytes of the packet at an offset (TC: bpf_skb_load_bytes; XDP: bpf_xdp_load_bytes),
/// so the steering logic works on either without knowing the context.
pub(crate) trait PacketBytes {
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
    /// Copies `dst.len()` bytes (1 to [`HEAD_MAX`]) from `offset`; false if the packet is shorter.
    fn copy(&self, offset: usize, dst: &mut [u8]) -> bool;
}

/// The address and port to write (destination on requests, source on replies).
pub(crate) struct Nat<A = u32> {
    pub addr: A,
    pub port: u16,
}

pub(crate) enum Verdict<A = u32> {
    /// Not a service packet: leave it alone.
    Pass,
    Drop(DropReason),
    Nat(Nat<A>),
}

pub(crate) fn is_vip<A: Family>(addr: A) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { A::vips().get(&addr).is_some() }
}

pub(crate) fn count_drop(reason: DropReason) {
    if let Some(counter) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Counts a dropped packet of `flow` and, as far as the agent's log level asks (set at load),
/// says which and why: aya-log, forwarded by the agent into its own log. Drops are counted
/// always; a line per drop is for debugging, except a failing map (conntrack full), which is
/// worth a warning; at most [`LOG_RECORDS_PER_SECOND`] lines per CPU. Not inlined, so that the
/// record is built in a frame of its own.
#[inline(never)]
pub(crate) fn note_drop<A: Family>(flow: &Flow<A>, reason: DropReason) {
    count_drop(reason);
    if !may_log() {
        return;
    }
    let (client_port, vip_port) = (u16::from_be(flow.sport), u16::from_be(flow.dport));
    let proto = flow.proto;
    if !A::LOG_ADDRESSES {
        aya_log_ebpf::debug!(
            &(),
            target: "geosteer::kernel",
            "dropped an IPv6 packet from port {} to port {} (proto {}): {}",
            client_port,
            vip_port,
            proto,
            reason.name()
        );
        return;
    }
    let (client, vip) = (flow.saddr.ip(), flow.daddr.ip());
    // The context argument of aya-log's macros is unused (kept for later versions).
    match reason {
        DropReason::Internal => aya_log_ebpf::warn!(
            &(),
            target: "geosteer::kernel",
            "dropped {}:{} -> {}:{} (proto {}): a map update failed (conntrack full?)",
            client,
            client_port,
            vip,
            vip_port,
            proto
        ),
        _ => aya_log_ebpf::debug!(
            &(),
            target: "geosteer::kernel",
            "dropped {}:{} -> {}:{} (proto {}): {}",
            client,
            client_port,
            vip,
            vip_port,
            proto,
            reason.name()
        ),
    }
}

/// Log records a CPU may write per second. A flood of drops (a client aiming at a VIP
/// without endpoints) then costs the log ring, its lock, the agent and its log no more than
/// this; the drop counters still count every drop.
const LOG_RECORDS_PER_SECOND: u32 = 100;

/// A CPU's log records in the current second.
#[derive(Clone, Copy)]
#[repr(C)]
struct LogBudget {
    window_start_ns: u64,
    records: u32,
}

#[map(name = "GS_LOG_BUDGET")]
static LOG_BUDGET: PerCpuArray<LogBudget> = PerCpuArray::with_max_entries(1, 0);

/// Whether this CPU may write one more log record this second (and counts it).
fn may_log() -> bool {
    let Some(budget) = LOG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    let now = last_seen_now_ns();
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    unsafe {
        if now.wrapping_sub((*budget).window_start_ns) >= 1_000_000_000 {
            (*budget).window_start_ns = now;
            (*budget).records = 0;
        }
        if (*budget).records >= LOG_RECORDS_PER_SECOND {
            return false;
        }
        (*budget).records += 1;
    }
    true
}

pub(crate) fn count_ct(index: u32) {
    if let Some(counter) = CT_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Hides a value's origin from LLVM so that a following bounds check is kept: the verifier
/// needs that explicit check, but LLVM would drop it as redundant after an arithmetic bound it
/// can see through (the verifier does not track ranges through every operation).
#[inline(always)]
pub(crate) fn opaque(v: u64) -> u64 {
    // SAFETY: reading a local through a valid pointer.
    unsafe { core::ptr::read_volatile(&v) }
}

fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The same clock (CLOCK_MONOTONIC) as of the last tick (1/HZ, ≤ 4 ms here): for the time a
/// packet of a tracked flow was seen, which only idle timeouts of seconds read. It reads a value
/// the kernel keeps, where [`now_ns`] reads the clock source (about 8 % of an established
/// packet's time in the profile before it was used). Never compared with [`now_ns`] finer than a tick (UDP flows,
/// whose idle timeout is judged per datagram, keep the exact clock).
fn last_seen_now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or_default()
}

#[inline(always)]
fn is_pure_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN
}

/// The key of the packet's own tuple in `direction`.
#[inline(always)]
fn packet_key<A: Family>(flow: &Flow<A>, direction: u8) -> FlowKeyOf<A> {
    FlowKeyOf::new(
        flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, direction,
    )
}

/// The reply-direction key of a flow from `client:client_port` translated to
/// `backend:backend_port`.
#[inline(always)]
fn reply_key<A: Family>(
    backend: A,
    backend_port: u16,
    client: A,
    client_port: u16,
    proto: u8,
) -> FlowKeyOf<A> {
    FlowKeyOf::new(backend, client, backend_port, client_port, proto, DIR_REPLY)
}

/// Request direction: client → VIP:port. A packet of a tracked flow follows its entry
/// ([`follow_tracked`]); a new flow, or one that must move, is steered ([`steer_new`]).
pub(crate) fn request<A: Family>(flow: &Flow<A>, bytes: &impl PacketBytes) -> Verdict<A> {
    let key = ServiceKeyOf::new(flow.daddr, flow.dport, flow.proto);
    // SAFETY: read-only lookup; the value is copied out.
    let Some(service) = (unsafe { A::services().get(&key) }).copied() else {
        forget_superseded_nat(flow);
        return Verdict::Pass;
    };
    let ct_key = packet_key(flow, DIR_ORIGINAL);
    // Whether an entry is under the tuple: the one a new connection on it replaces.
    let tracked = match A::conntrack().get_ptr_mut(&ct_key) {
        Some(entry) => {
            // SAFETY: LRU map values stay valid during the program run; fields are plain data.
            if let Some(nat) = follow_tracked(flow, &service, unsafe { &mut *entry }, bytes) {
                return Verdict::Nat(nat);
            }
            true
        }
        None => false,
    };
    if A::OUTLINE_NEW_FLOWS {
        steer_new_outlined(flow, &service, &ct_key, tracked)
    } else {
        steer_new(flow, &service, &ct_key, tracked)
    }
}

/// [`steer_new`] in a frame of its own: see [`Family::OUTLINE_NEW_FLOWS`].
#[inline(never)]
fn steer_new_outlined<A: Family>(
    flow: &Flow<A>,
    service: &ServiceValue,
    ct_key: &FlowKeyOf<A>,
    tracked: bool,
) -> Verdict<A> {
    steer_new(flow, service, ct_key, tracked)
}

/// A packet of a tracked flow: its translation, with the flow's bookkeeping done — or `None`
/// when the flow must be steered anew (its own old reply half then already removed).
#[inline(always)]
fn follow_tracked<A: Family>(
    flow: &Flow<A>,
    service: &ServiceValue,
    entry: &mut FlowValueOf<A>,
    bytes: &impl PacketBytes,
) -> Option<Nat<A>> {
    // UDP's idle timeout is judged per datagram against this time: the exact clock there.
    let seen = if flow.proto == PROTO_UDP {
        now_ns()
    } else {
        last_seen_now_ns()
    };
    let resteer = must_resteer(flow, entry, seen)
        || (flow.proto == PROTO_TCP
            && is_pure_syn(flow.tcp_flags)
            && entry.tcp_state == TCP_ESTABLISHED
            && closed_both_ways(flow, entry));
    if !resteer {
        entry.last_seen_ns = seen;
        // The reply half is looked up once per packet: for its request bookkeeping and to
        // rebuild it if it was evicted.
        let reply = lookup_reply_half(flow, entry);
        let drained = flow.proto == PROTO_TCP && track_request(flow, entry, reply, bytes);
        if !drained {
            if reply.is_none() {
                if A::OUTLINE_NEW_FLOWS {
                    restore_reply_half_outlined(flow, entry, seen);
                } else {
                    restore_reply_half(flow, entry, seen);
                }
            }
            count_request(service.id, entry.backend_id, flow.len, false);
            return Some(Nat {
                addr: entry.nat_addr,
                port: entry.nat_port,
            });
        }
    }
    // The backend was removed (or, for a new connection, a drained HTTP/1.x connection's
    // next request or a UDP flow, is out of rotation), or this SYN opens a new connection
    // on the tuple of a finished one: steer it anew. (A mid-stream packet steered anew
    // meets a RST from its new backend, which makes the client reconnect.) The old reply
    // entry goes, so a late packet from the previous backend is not reverse-NATed into
    // the new flow.
    remove_own_reply_half(flow, entry);
    None
}

/// A new flow, or one steered anew (`tracked`: an entry is under its tuple, which the new one
/// replaces): choose a backend, record both halves, translate.
#[inline(always)]
fn steer_new<A: Family>(
    flow: &Flow<A>,
    service: &ServiceValue,
    ct_key: &FlowKeyOf<A>,
    tracked: bool,
) -> Verdict<A> {
    let now = now_ns();
    // The two fields it needs, not a copy of the whole value (stack).
    let (affinity_timeout_s, service_app_protocol) = SERVICE_CONFIG
        .get(service.id)
        .map_or((0, APP_PROTOCOL_DETECT), |c| {
            (c.affinity_timeout_s, c.app_protocol)
        });
    let Some((backend_id, backend)) = choose(service, flow, affinity_timeout_s, now) else {
        // Nowhere to go: a flow being moved must not stay behind on its old backend with its
        // replies no longer reverse-NATed.
        let _ = A::conntrack().remove(ct_key);
        return Verdict::Drop(DropReason::NoBackend);
    };
    let Some(backend_addr) = A::backend_addr(backend_id, &backend) else {
        // Every backend the table offers lacks an address of this family.
        let _ = A::conntrack().remove(ct_key);
        return Verdict::Drop(DropReason::NoBackend);
    };
    let tcp_state = if flow.proto != PROTO_TCP {
        0
    } else if is_pure_syn(flow.tcp_flags) {
        TCP_SYN_SENT
    } else if flow.tcp_flags & TCP_RST != 0 {
        // A stray RST (its flow already gone here): nothing open, nothing to hold.
        TCP_CLOSED
    } else {
        // Mid-stream without conntrack (evicted entry, restart without pins) or odd flags
        // (SYN|FIN is no connection attempt): Maglev gives the same backend as before if the
        // table did not change; no connect timer runs.
        count_ct(ct_stats::MIDSTREAM);
        TCP_MIDSTREAM
    };
    let app_protocol = if flow.proto == PROTO_TCP {
        service_app_protocol
    } else {
        APP_PROTOCOL_OPAQUE
    };
    // One value on the stack, written as the reply half, then completed into the original half
    // (two would not fit an IPv6 flow's frame).
    let mut entry = FlowValueOf {
        backend_id,
        service_id: service.id,
        // Reply half: the VIP:port replies leave from.
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        tcp_state,
        // Whether it replaces an entry on the tuple (the first lookup's answer), and whether
        // the client's requests can be followed from here (a plain SYN, no data on it).
        flags: if tracked { FLOW_FLAG_REUSED_TUPLE } else { 0 }
            | if is_pure_syn(flow.tcp_flags) && flow.payload_len == 0 && !flow.fragmented {
                FLOW_FLAG_REQUESTS_FOLLOWED
            } else {
                0
            },
        created_ns: now,
        last_seen_ns: now,
        app_protocol,
        ..FlowValueOf::default()
    };
    // Reply entry first: a reply can never arrive before the request is forwarded.
    let reply_key = reply_key(
        backend_addr,
        backend.port,
        flow.saddr,
        flow.sport,
        flow.proto,
    );
    if flow.proto == PROTO_TCP && translated_tuple_in_use(flow, &reply_key) {
        return Verdict::Drop(DropReason::TupleInUse);
    }
    if A::conntrack().insert(&reply_key, &entry, 0).is_err() {
        return Verdict::Drop(DropReason::Internal);
    }
    entry.nat_addr = backend_addr;
    entry.nat_port = backend.port;
    // Original entry: the client's initial sequence number (a RST that answers this SYN
    // acknowledges it; a retransmission repeats it), its next one, and where its first request
    // starts (after a plain SYN).
    entry.req_seq = flow.seq;
    entry.seq_nxt = segment_end(flow);
    entry.seq_nxt_known = (flow.proto == PROTO_TCP) as u8;
    entry.resp_seq = segment_end(flow);
    if A::conntrack().insert(ct_key, &entry, 0).is_err() {
        let _ = A::conntrack().remove(&reply_key);
        return Verdict::Drop(DropReason::Internal);
    }
    count_request(service.id, backend_id, flow.len, true);
    Verdict::Nat(Nat {
        addr: backend_addr,
        port: backend.port,
    })
}

/// Whether a live TCP connection of this client port through *another* VIP already owns the
/// translated tuple (see [`DropReason::TupleInUse`]). A reply half whose original is gone,
/// closed by a RST, or closed both ways is stale and may be taken over. Not inlined: its key
/// would otherwise take stack from the request path's frame, which has none to spare.
#[inline(never)]
fn translated_tuple_in_use<A: Family>(flow: &Flow<A>, reply_key: &FlowKeyOf<A>) -> bool {
    // SAFETY: read-only lookup of plain data, fields read in place (no copy on the stack,
    // which the callers have little of left).
    let Some(other) = (unsafe { A::conntrack().get(reply_key) }) else {
        return false;
    };
    if reply_half_of(other, flow) {
        return false; // this flow's own (a SYN on a closed tuple, steered anew)
    }
    let (vip, vport, reply_fin) = (other.nat_addr, other.nat_port, other.fin_seen);
    let other_key = FlowKeyOf::new(flow.saddr, vip, flow.sport, vport, flow.proto, DIR_ORIGINAL);
    // SAFETY: as above.
    let Some(original) = (unsafe { A::conntrack().get(&other_key) }) else {
        return false;
    };
    // Its partner (an original re-steered elsewhere leaves an orphan), and still open.
    if original.nat_addr != reply_key.saddr || original.nat_port != reply_key.sport {
        return false;
    }
    original.tcp_state != TCP_CLOSED && !(original.fin_seen != 0 && reply_fin != 0)
}

/// A fragment map's key (`GS_FRAGMENTS`, `GS_FRAGMENTS6`): its map, and the value it holds.
pub(crate) trait FragmentKeyed: Sized + 'static {
    type Addr: Copy;
    type Value: Copy;
    fn map() -> &'static LruHashMap<Self, Self::Value>;
    fn value(addr: Self::Addr, first_seen_ns: u64) -> Self::Value;
    /// The translated address and when the first fragment was seen.
    fn entry(value: &Self::Value) -> (Self::Addr, u64);
    fn direction(&self) -> u8;
    /// How long after its first fragment a later one is trusted to be the same datagram.
    const TIMEOUT_NS: u64;
}

impl FragmentKeyed for FragmentKey {
    type Addr = u32;
    type Value = FragmentValue;
    const TIMEOUT_NS: u64 = FRAGMENT_TIMEOUT_NS;
    #[inline(always)]
    fn map() -> &'static LruHashMap<FragmentKey, FragmentValue> {
        &FRAGMENTS
    }
    #[inline(always)]
    fn value(addr: u32, first_seen_ns: u64) -> FragmentValue {
        FragmentValue {
            addr,
            _pad: 0,
            first_seen_ns,
        }
    }
    #[inline(always)]
    fn entry(value: &FragmentValue) -> (u32, u64) {
        (value.addr, value.first_seen_ns)
    }
    #[inline(always)]
    fn direction(&self) -> u8 {
        self.direction
    }
}

impl FragmentKeyed for FragmentKey6 {
    type Addr = Addr6;
    type Value = FragmentValue6;
    const TIMEOUT_NS: u64 = FRAGMENT6_TIMEOUT_NS;
    #[inline(always)]
    fn map() -> &'static LruHashMap<FragmentKey6, FragmentValue6> {
        &FRAGMENTS6
    }
    #[inline(always)]
    fn value(addr: Addr6, first_seen_ns: u64) -> FragmentValue6 {
        FragmentValue6 {
            addr,
            first_seen_ns,
        }
    }
    #[inline(always)]
    fn entry(value: &FragmentValue6) -> (Addr6, u64) {
        (value.addr, value.first_seen_ns)
    }
    #[inline(always)]
    fn direction(&self) -> u8 {
        self.direction
    }
}

/// An IPv4 datagram's fragment key, as its fragments arrive (`direction`: of the flow they
/// belong to).
#[inline(always)]
pub(crate) fn fragment_key(
    saddr: u32,
    daddr: u32,
    id: u16,
    proto: u8,
    direction: u8,
) -> FragmentKey {
    FragmentKey {
        saddr,
        daddr,
        id,
        proto,
        direction,
    }
}

/// The first fragment of a datagram was translated, its address becoming `to`: the datagram's
/// other fragments (which carry no ports) get the same.
pub(crate) fn remember_fragment<K: FragmentKeyed>(key: &K, to: K::Addr) {
    let _ = K::map().insert(key, &K::value(to, now_ns()), 0);
}

/// A first fragment that was not translated: a translation an earlier datagram with the same
/// id left must not apply to this one's later fragments.
pub(crate) fn forget_fragment<K: FragmentKeyed>(key: &K) {
    let _ = K::map().remove(key);
}

/// The address a later fragment gets, if its datagram's first fragment was translated (within
/// the reassembly timeout: IP ids repeat).
pub(crate) fn fragment_translation<K: FragmentKeyed>(key: &K) -> Option<K::Addr> {
    // SAFETY: read-only lookup; the value is copied out.
    let Some(value) = (unsafe { K::map().get(key) }).copied() else {
        if key.direction() == DIR_ORIGINAL {
            count_ct(ct_stats::FRAGMENT_UNKNOWN);
        }
        return None;
    };
    let (addr, first_seen_ns) = K::entry(&value);
    if now_ns().saturating_sub(first_seen_ns) > K::TIMEOUT_NS {
        count_ct(ct_stats::FRAGMENT_UNKNOWN);
        return None;
    }
    count_ct(ct_stats::FRAGMENT_TRANSLATED);
    Some(addr)
}

/// The packet quoted inside an ICMP error (RFC 792: its IP header and at least 8 bytes of its
/// L4 header), as it was sent. Addresses and ports in network byte order.
pub(crate) struct Quoted<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Reply direction: an ICMP error about a request that was steered (the quoted packet went
/// client → backend after DNAT), sent by the backend or a router on the way, on its way to the
/// client. The client knows that packet as client → VIP: returns the VIP:port to put back.
pub(crate) fn icmp_toward_client<A: Family>(quoted: &Quoted<A>) -> Option<Nat<A>> {
    icmp_translation(quoted, DIR_REPLY)
}

/// Request direction: an ICMP error about a reply that was reverse-NATed (the quoted packet went
/// VIP → client), sent by the client or a router on its side (e.g. fragmentation needed: path
/// MTU discovery), addressed to the VIP. The backend that sent the reply must get it: returns
/// the backend's address and port.
pub(crate) fn icmp_toward_backend<A: Family>(quoted: &Quoted<A>) -> Option<Nat<A>> {
    icmp_translation(quoted, DIR_ORIGINAL)
}

/// The quoted packet is the flow's packet seen from the other direction: its reversed tuple is
/// the key of the entry (in `direction`) that holds the translation.
fn icmp_translation<A: Family>(quoted: &Quoted<A>, direction: u8) -> Option<Nat<A>> {
    let key = FlowKeyOf::new(
        quoted.daddr,
        quoted.saddr,
        quoted.dport,
        quoted.sport,
        quoted.proto,
        direction,
    );
    // SAFETY: read-only lookup; the value is copied out.
    let entry = unsafe { A::conntrack().get(&key) }?;
    count_ct(ct_stats::ICMP_TRANSLATED);
    Some(Nat {
        addr: entry.nat_addr,
        port: entry.nat_port,
    })
}

/// The entry under the reply key of a tracked flow (its own reply half, or another VIP's that
/// took the translated tuple over: see [`reply_half_of`]).
#[inline(always)]
fn lookup_reply_half<A: Family>(
    flow: &Flow<A>,
    original: &FlowValueOf<A>,
) -> Option<*mut FlowValueOf<A>> {
    A::conntrack().get_ptr_mut(&translated_reply_key(flow, original))
}

/// The reply-direction key of a tracked flow: its client's tuple as translated by `original`.
#[inline(always)]
fn translated_reply_key<A: Family>(flow: &Flow<A>, original: &FlowValueOf<A>) -> FlowKeyOf<A> {
    reply_key(
        original.nat_addr,
        original.nat_port,
        flow.saddr,
        flow.sport,
        flow.proto,
    )
}

/// The two halves of a flow are separate LRU entries, and the LRU may evict one alone (a
/// flood of new flows, a full table). A packet that finds its half rebuilds the other from it,
/// so an established flow never loses its reverse NAT (replies leaving with the backend's
/// address) nor its backend (re-steered mid-stream). The rebuilt reply half does not know where
/// the next response starts (`HTTP_UNFRAMED`): no status is read on the connection again. Called when no entry is under the reply
/// key ([`lookup_reply_half`]).
#[inline(always)]
fn restore_reply_half<A: Family>(flow: &Flow<A>, original: &FlowValueOf<A>, now: u64) {
    let key = translated_reply_key(flow, original);
    let reply = FlowValueOf {
        backend_id: original.backend_id,
        service_id: original.service_id,
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        tcp_state: original.tcp_state,
        created_ns: original.created_ns,
        last_seen_ns: now,
        app_protocol: original.app_protocol,
        ..FlowValueOf::default()
    };
    // Only where still nothing is: another CPU may have made this half since the lookup.
    if A::conntrack()
        .insert(&key, &reply, BPF_NOEXIST as u64)
        .is_ok()
    {
        count_ct(ct_stats::PARTNER_RESTORED);
    }
}

/// [`restore_reply_half`] in a frame of its own (see [`Family::OUTLINE_NEW_FLOWS`]).
#[inline(never)]
fn restore_reply_half_outlined<A: Family>(flow: &Flow<A>, original: &FlowValueOf<A>, now: u64) {
    restore_reply_half(flow, original, now);
}

/// The original entry's key of a flow, from one of its reply packets and its reply entry (which
/// holds the VIP:port the client addressed).
#[inline(always)]
fn original_key_of<A: Family>(flow: &Flow<A>, reply: &FlowValueOf<A>) -> FlowKeyOf<A> {
    FlowKeyOf::new(
        flow.daddr,
        reply.nat_addr,
        flow.dport,
        reply.nat_port,
        flow.proto,
        DIR_ORIGINAL,
    )
}

/// The reply half's counterpart of [`restore_reply_half`]: the original half is rebuilt in the
/// mid-stream state (its TCP state went with it), pinned to the backend that answered.
#[inline(always)]
fn restore_original_half<A: Family>(flow: &Flow<A>, reply: &FlowValueOf<A>, now: u64) {
    let key = original_key_of(flow, reply);
    // SAFETY: read-only lookup.
    if unsafe { A::conntrack().get(&key) }.is_some() {
        return;
    }
    let original = FlowValueOf {
        backend_id: reply.backend_id,
        service_id: reply.service_id,
        nat_addr: flow.saddr,
        nat_port: flow.sport,
        tcp_state: if flow.proto == PROTO_TCP {
            TCP_MIDSTREAM
        } else {
            0
        },
        created_ns: reply.created_ns,
        last_seen_ns: now,
        app_protocol: reply.app_protocol,
        ..FlowValueOf::default()
    };
    // Only where still nothing is: another CPU may have made this half since the lookup.
    if A::conntrack()
        .insert(&key, &original, BPF_NOEXIST as u64)
        .is_ok()
    {
        count_ct(ct_stats::PARTNER_RESTORED);
    }
}

/// A client that opens a direct connection to a backend may reuse the source port of an earlier
/// (finished) connection through a VIP to that same backend. The earlier flow's reply entry would
/// then reverse-NAT the direct connection's SYN-ACK to the VIP and break it. The new SYN proves
/// the earlier flow is over (the client reused its port), so its reply entry goes — unless this
/// SYN *is* that flow's own (a first SYN or a retransmission, in any state of the flow: same
/// backend, same initial sequence number), already translated by XDP on its way here.
fn forget_superseded_nat<A: Family>(flow: &Flow<A>) {
    if flow.proto != PROTO_TCP || !is_pure_syn(flow.tcp_flags) {
        return;
    }
    let key = reply_key(flow.daddr, flow.dport, flow.saddr, flow.sport, flow.proto);
    // SAFETY: read-only lookups; values copied out.
    let Some(reply) = (unsafe { A::conntrack().get(&key) }).copied() else {
        return;
    };
    let original_key = FlowKeyOf::new(
        flow.saddr,
        reply.nat_addr,
        flow.sport,
        reply.nat_port,
        flow.proto,
        DIR_ORIGINAL,
    );
    // SAFETY: as above.
    let translated_here = unsafe { A::conntrack().get(&original_key) }.is_some_and(|o| {
        o.nat_addr == flow.daddr && o.nat_port == flow.dport && o.req_seq == flow.seq
    });
    if !translated_here {
        let _ = A::conntrack().remove(&key);
    }
}

/// Whether new flows avoid this backend: the agent took it out, or outlier detection ejected it
/// (unless the service is in panic).
fn out_of_rotation(backend_id: u32, backend: &Backend) -> bool {
    if backend.flags & BACKEND_FLAG_UNROUTABLE != 0 {
        return true;
    }
    if backend.flags & BACKEND_FLAG_PANIC != 0 {
        return false;
    }
    match BACKEND_STATE.get(backend_id) {
        Some(state) => state.ejected != 0,
        None => false,
    }
}

/// Whether this packet must be steered anew instead of following its conntrack entry.
/// - The entry's backend was removed from the service.
/// - UDP: the backend is out of rotation, or the flow was idle past the UDP timeout (Envoy
///   udp_proxy: a session ends at its idle timeout; a datagram to an unhealthy host moves).
/// - TCP, only for a pure SYN: on a closed tuple (RST, or FIN both ways) or one first seen
///   mid-stream it opens a new
///   connection (clients reuse ports all the time); a SYN retransmitted while the SYN-ACK is
///   awaited moves only if its backend left rotation since (nothing is established there);
///   a SYN on an established tuple is not a new connection (the backend answers it with a
///   challenge ACK), so it can neither move nor reset the flow.
fn must_resteer<A: Family>(flow: &Flow<A>, entry: &FlowValueOf<A>, now: u64) -> bool {
    let Some(backend) = BACKENDS.get(entry.backend_id) else {
        return true;
    };
    // The backend id may have been reused for another endpoint since (ids outlive nothing but
    // a grace period; conntrack entries live for hours).
    if backend.flags & BACKEND_FLAG_ACTIVE == 0
        || backend.service_id != entry.service_id
        || A::backend_addr(entry.backend_id, backend) != Some(entry.nat_addr)
        || backend.port != entry.nat_port
    {
        return true;
    }
    if flow.proto == PROTO_UDP {
        let timeout = settings().udp_timeout_ns;
        return out_of_rotation(entry.backend_id, backend)
            || (timeout != 0 && now.saturating_sub(entry.last_seen_ns) >= timeout);
    }
    if !is_pure_syn(flow.tcp_flags) {
        return false;
    }
    match entry.tcp_state {
        TCP_SYN_SENT => out_of_rotation(entry.backend_id, backend),
        // Over once closed both ways: see `closed_both_ways`, which the caller asks (called
        // from here its key would not fit this function's stack).
        TCP_ESTABLISHED => false,
        _ => true,
    }
}

/// Both directions sent their FIN (or the same client port through another VIP took the
/// tuple over): the connection is over and its tuple free for reuse. Not inlined: its key
/// would take stack from the request path.
#[inline(never)]
fn closed_both_ways<A: Family>(flow: &Flow<A>, entry: &FlowValueOf<A>) -> bool {
    if entry.fin_seen == 0 {
        return false;
    }
    let key = reply_key(
        entry.nat_addr,
        entry.nat_port,
        flow.saddr,
        flow.sport,
        flow.proto,
    );
    // SAFETY: read-only lookup of a plain value.
    match unsafe { A::conntrack().get(&key) } {
        // Taken over by the same client port through another VIP: this flow is over.
        Some(reply) if !reply_half_of(reply, flow) => true,
        Some(reply) => reply.fin_seen != 0,
        None => false,
    }
}

/// Whether a reply half under this flow's translated key is this flow's: it reverse-NATs to
/// the VIP:port the flow was sent to. The key can be another flow's: one of the same client
/// port through another VIP that took the tuple over after this one ended.
#[inline(always)]
fn reply_half_of<A: Family>(reply: &FlowValueOf<A>, flow: &Flow<A>) -> bool {
    reply.nat_addr == flow.daddr && reply.nat_port == flow.dport
}

/// Removes this flow's reply half, and only its own (see [`reply_half_of`]): a live flow of
/// another VIP may own the key. Not inlined: its key would take stack from the request path.
#[inline(never)]
fn remove_own_reply_half<A: Family>(flow: &Flow<A>, original: &FlowValueOf<A>) {
    let key = translated_reply_key(flow, original);
    // SAFETY: read-only lookup of a plain value.
    if unsafe { A::conntrack().get(&key) }.is_some_and(|reply| reply_half_of(reply, flow)) {
        let _ = A::conntrack().remove(&key);
    }
}

/// Request-direction TCP bookkeeping of a tracked flow: close flags, connect timer, and the
/// request starts that tell the reply path where a response begins. Returns true when this
/// packet starts a request on an HTTP/1.x flow that must drain (its backend left rotation):
/// the previous response is complete, so the connection ends here.
fn track_request<A: Family>(
    flow: &Flow<A>,
    entry: &mut FlowValueOf<A>,
    reply: Option<*mut FlowValueOf<A>>,
    bytes: &impl PacketBytes,
) -> bool {
    let flags = flow.tcp_flags;
    if flags & TCP_RST != 0 {
        if rst_in_window(flow, entry) {
            entry.tcp_state = TCP_CLOSED;
        }
        return false;
    }
    // Whether this segment starts at the client's next byte: new data, not a copy of bytes it
    // sent before (a retransmission — or a second version of them, which the backend may have
    // taken instead of the first if that one was dropped on the way: a bad checksum).
    let new_data = entry.seq_nxt_known != 0 && flow.seq == entry.seq_nxt;
    // Payload or not: a segment ahead of a gap (an empty one moves `seq_nxt` past bytes the
    // backend may get otherwise), an urgent pointer (the byte it points at leaves the stream the
    // backend reads, in this segment or a later one), a fragment (its bytes go on elsewhere).
    if entry.seq_nxt_known != 0 && (flow.seq.wrapping_sub(entry.seq_nxt) as i32) > 0
        || flags & TCP_URG != 0
        || flow.fragmented
    {
        unfollow(entry);
    }
    // (A SYN's sequence is the ISN the entry already holds, or a stray one.)
    if flags & TCP_SYN == 0 && !advance_seq_nxt(segment_end(flow), entry, RST_WINDOW) {
        // Bytes too far ahead to track, which the backend may still queue.
        unfollow(entry);
    }
    if flags & TCP_FIN != 0 {
        entry.fin_seen = 1;
    }
    if is_pure_syn(flags) && entry.tcp_state == TCP_SYN_SENT {
        // A retransmission repeats the ISN; a SYN with another one is some other packet.
        if flow.seq == entry.req_seq {
            check_syn_retransmit(entry, now_ns());
        }
        return false;
    }
    if flow.payload_len != 0
        && (entry.tcp_state == TCP_ESTABLISHED || entry.tcp_state == TCP_MIDSTREAM)
        && entry.app_protocol != APP_PROTOCOL_OPAQUE
    {
        let drained = request_payload(
            flow,
            entry,
            reply.unwrap_or(core::ptr::null_mut()),
            bytes,
            new_data,
        );
        if (segment_end(flow).wrapping_sub(entry.resp_seq) as i32) > 0 {
            // Bytes past the armed request (or past the one armed here): a request the agent
            // does not follow — too short to tell, not starting with a method it knows, or
            // hidden behind the armed one.
            unfollow(entry);
        }
        return drained;
    }
    false
}

/// One past the last sequence number of this segment (SYN and FIN count one).
#[inline(always)]
fn segment_end<A: Family>(flow: &Flow<A>) -> u32 {
    let control = (flow.tcp_flags & TCP_SYN != 0) as u32 + (flow.tcp_flags & TCP_FIN != 0) as u32;
    flow.seq
        .wrapping_add(flow.payload_len)
        .wrapping_add(control)
}

/// Keeps `seq_nxt` at one past the highest sequence number this entry's sender has sent (the
/// first segment seen sets it: a flow first seen mid-stream). A segment ending more than
/// `limit` ahead moves nothing: a spoofer must not drag it out of reach (the client's is
/// [`RST_WINDOW`], the backend's the looser [`REPLY_JUMP_LIMIT`]).
/// False for a segment ending more than `limit` ahead (ignored).
#[inline(always)]
fn advance_seq_nxt<A: Family>(end: u32, entry: &mut FlowValueOf<A>, limit: u32) -> bool {
    if entry.seq_nxt_known == 0 {
        entry.seq_nxt = end;
        entry.seq_nxt_known = 1;
        return true;
    }
    let ahead = end.wrapping_sub(entry.seq_nxt);
    if ahead != 0 && ahead <= limit {
        entry.seq_nxt = end;
    }
    // (A segment ending behind is a retransmission: `ahead` wraps past half the space.)
    ahead <= limit || (ahead as i32) < 0
}

/// How far from the client's next sequence number its RST may be and still end the flow. The
/// client's own RST carries its next sequence number (or, answering a segment, the
/// acknowledgement in it, which trails by what is in flight); this hook sits next to the
/// client, so nothing is lost before it. An off-path spoofer must guess within it: about 1 in
/// 2,000. (Backend RSTs are not checked: a backend that restarted answers with the client's
/// acknowledgement, which on a long path can trail by more than this.)
const RST_WINDOW: u32 = 1 << 20;

/// Furthest a backend's segment may end past its next sequence number and still advance it:
/// far looser than the client's, since a backend's stream may arrive here after a large loss
/// on a long path, yet a stray segment (a late one of an earlier connection on the tuple) must
/// not carry it out of reach, or no response start would ever be armed again.
const REPLY_JUMP_LIMIT: u32 = 64 << 20;

/// Whether a client RST is plausibly the client's (RFC 5961 makes endpoints check the same; a
/// RST the backend would ignore must not end our flow either). Unknown position: accepted.
fn rst_in_window<A: Family>(flow: &Flow<A>, entry: &FlowValueOf<A>) -> bool {
    if entry.seq_nxt_known == 0 {
        return true;
    }
    let distance = flow
        .seq
        .wrapping_sub(entry.seq_nxt.wrapping_sub(RST_WINDOW));
    if distance <= 2 * RST_WINDOW {
        return true;
    }
    count_ct(ct_stats::RST_IGNORED);
    false
}

/// Whether a request start on this HTTP/1.x flow ends it: its backend left rotation and the
/// service drains (the default for HTTP/1.x).
fn drains<A: Family>(entry: &FlowValueOf<A>) -> bool {
    let Some(backend) = BACKENDS.get(entry.backend_id) else {
        return false;
    };
    if !out_of_rotation(entry.backend_id, backend) {
        return false;
    }
    matches!(
        SERVICE_CONFIG.get(entry.service_id).map(|c| c.on_eject),
        Some(ON_EJECT_AUTO | ON_EJECT_DRAIN)
    )
}

/// A SYN seen again for a flow still waiting for its SYN-ACK, at least the service's connect
/// timeout after the first: the backend did not answer in time (a gateway error, as Envoy's
/// connect timeout, once the agent confirms it). A retransmission before the timeout is no
/// failure: networks lose SYNs and a busy backend drops them from a full accept queue.
/// Reported once per flow.
fn check_syn_retransmit<A: Family>(entry: &mut FlowValueOf<A>, now: u64) {
    if entry.flags & FLOW_FLAG_CONNECT_FAILURE_COUNTED != 0 {
        return;
    }
    let timeout = match SERVICE_CONFIG.get(entry.service_id) {
        Some(c) if c.connect_timeout_ns != 0 => c.connect_timeout_ns,
        _ => return,
    };
    if now.saturating_sub(entry.created_ns) < timeout {
        return;
    }
    // The backend accepted connections after this SYN was first sent: it is alive and
    // answering, and this SYN was lost before reaching it (a lossy network, a full accept
    // queue, a SYN crafted to be dropped). Envoy counts every connect timeout; here only those
    // of a backend that answers nobody, so no client can fake one on a backend in use.
    if BACKEND_STATE
        .get(entry.backend_id)
        .is_some_and(|state| state.last_accept_ns > entry.created_ns)
    {
        return;
    }
    entry.flags |= FLOW_FLAG_CONNECT_FAILURE_COUNTED;
    // Not counted yet: a client can send a SYN the backend drops (a bad checksum; TC cannot
    // tell it from a checksum left to offload) and repeat it past the timeout. The agent
    // connects to the backend itself and counts the timeout only if that fails too
    // ([`count_confirmed_timeout`]). If the ring is full the timeout goes uncounted: a missed
    // error, never a forged one.
    let _ = EVENTS.output::<KernelEvent>(
        KernelEvent {
            kind: EVENT_CONNECT_TIMEOUT,
            backend_id: entry.backend_id,
            service_id: entry.service_id,
            at_ns: now,
            ..KernelEvent::default()
        },
        0,
    );
}

/// The agent's verdict on a suspected connect timeout (see [`check_syn_retransmit`]): one it
/// confirmed counts as every other connect failure does, with the same atomic bookkeeping; a
/// dismissal counts as an accepted connection. Returns [`TIMEOUT_COUNTED`], or 1 when the
/// backend id no longer names that endpoint (removed, or reused since).
pub(crate) fn count_confirmed_timeout(request: &TimeoutCount) -> i32 {
    let Some(backend) = BACKENDS.get(request.backend_id) else {
        return 1;
    };
    if backend.flags & BACKEND_FLAG_ACTIVE == 0
        || backend.addr != request.addr
        || backend.port != request.port
    {
        return 1;
    }
    if request.verdict == TIMEOUT_DISMISSED {
        if let Some(state) = BACKEND_STATE.get_ptr_mut(request.backend_id) {
            // SAFETY: an aligned 8-byte field of a live map value: a single store.
            unsafe { core::ptr::write_volatile(&raw mut (*state).last_accept_ns, now_ns()) };
        }
        return TIMEOUT_COUNTED;
    }
    connect_failure(request.backend_id);
    TIMEOUT_COUNTED
}

/// Client payload on an established HTTP/1.x (or not yet detected) flow. Returns whether the
/// flow drains here (see [`track_request`]). `reply` is the reply entry, or null. Not inlined:
/// its locals and the head scan's stay off the main frame (the stack is 512 bytes in all,
/// callees included; five arguments at most, hence the raw pointer).
#[inline(never)]
fn request_payload<A: Family>(
    flow: &Flow<A>,
    entry: &mut FlowValueOf<A>,
    reply: *mut FlowValueOf<A>,
    bytes: &impl PacketBytes,
    new_data: bool,
) -> bool {
    if !new_data || flow.tcp_flags & (TCP_SYN | TCP_URG) != 0 || flow.fragmented {
        // Bytes the backend may see otherwise than the agent: a copy (the backend keeps one
        // version of each byte, not necessarily the one seen here first), a gap, data on a SYN
        // (dropped on an open connection), urgent data, a payload that goes on in other
        // fragments. None arms or drains anything; only an exact copy of the armed request
        // leaves its framing known (checked only while it is known: a head scan per copy).
        let exact_copy = !new_data
            && flow.tcp_flags & (TCP_SYN | TCP_URG) == 0
            && !flow.fragmented
            && entry.flags & FLOW_FLAG_REQUESTS_FOLLOWED != 0
            && is_copy_of_armed_request(flow, entry, reply, bytes);
        if !exact_copy {
            unfollow(entry);
        }
        return false;
    }
    // Shorter than a method and its space: neither a request start nor a verdict on the
    // protocol (Istio's sniffer also waits for more bytes).
    if flow.payload_len < METHOD_PREFIX_LEN as u32 {
        return false;
    }
    let Some(prefix) = bytes.read::<[u8; METHOD_PREFIX_LEN]>(flow.payload_off as usize) else {
        return false;
    };
    let starts_request = is_request_start(&prefix);
    if entry.app_protocol == APP_PROTOCOL_HTTP1 && !starts_request {
        return false; // a request body, or a request line's continuation
    }
    // Only this flow's own reply half (a live flow of another VIP may hold the key).
    // SAFETY: null or an LRU map value valid for this run; plain data.
    let Some(reply) = (unsafe { reply.as_mut() }) else {
        return false;
    };
    if !reply_half_of(reply, flow) {
        return false;
    }
    if entry.app_protocol == APP_PROTOCOL_DETECT {
        if reply.app_protocol == APP_PROTOCOL_DETECT {
            // Istio's sniffing: the client's first bytes decide.
            let detected = if starts_request {
                APP_PROTOCOL_HTTP1
            } else {
                APP_PROTOCOL_OPAQUE
            };
            reply.app_protocol = detected;
            if reply.flags & FLOW_FLAG_CONNECT_OK_PENDING != 0 {
                reply.flags &= !FLOW_FLAG_CONNECT_OK_PENDING;
                if detected == APP_PROTOCOL_OPAQUE {
                    connect_success(entry.backend_id);
                }
            }
        }
        // The reply path may have decided first (a server-first protocol).
        entry.app_protocol = reply.app_protocol;
        if entry.app_protocol != APP_PROTOCOL_HTTP1 {
            return false;
        }
    }
    // Drain only where a new exchange begins: the previous response is complete (nothing in
    // flight from the backend, nothing awaited) and this is not a retransmission of the last
    // request, which the backend may already be executing.
    if starts_request
        && reply.http_state != HTTP_AWAITING
        && reply.seq_nxt_known != 0
        && reply.seq_nxt == flow.ack
        && flow.seq != reply.req_seq
        && drains(entry)
    {
        return true;
    }
    arm_response(flow, entry, reply, bytes, &prefix);
    false
}

/// A request starts: its response begins at the reply byte this segment acknowledges — if the
/// last response ended exactly there (its head said where), the backend has sent nothing since,
/// and the request is the client's next bytes after the last armed request (nothing sent in
/// between that the backend may be answering first). Otherwise (pipelining, a response still
/// arriving, one whose end is unknown) the boundary is unknown: skipped and counted, never
/// guessed. The request's own length is read too (the original entry keeps where it ends): the
/// response's end is trusted only if the client sent nothing past it before the response came.
fn arm_response<A: Family>(
    flow: &Flow<A>,
    entry: &mut FlowValueOf<A>,
    reply: &mut FlowValueOf<A>,
    bytes: &impl PacketBytes,
    request: &[u8; METHOD_PREFIX_LEN],
) {
    reply.req_seq = flow.seq;
    if entry.flags & FLOW_FLAG_REQUESTS_FOLLOWED == 0
        || reply.http_state != HTTP_FRAMED
        || reply.seq_nxt_known == 0
        || reply.resp_seq != flow.ack
        || reply.seq_nxt != flow.ack
        || entry.resp_seq != flow.seq
    {
        // Pipelined (a response is awaited), or a client that pauses a response mid-body with
        // its receive window or sends a "request" in the middle of a body (it acknowledges
        // some other byte), or bytes between the last request and this one: a body byte it
        // chose is never read as a status line, and the requests are no longer followed.
        unfollow(entry);
        count_http_skipped(reply.backend_id);
        return;
    }
    let Some(scratch) = read_head(bytes, flow.payload_off, flow.payload_len) else {
        unfollow(entry);
        count_http_skipped(reply.backend_id);
        return;
    };
    if !scratch.scan.is_http1_request_line() {
        // HTTP/0.9 (`GET /f` and no version: answered with the bare body, no status line), or
        // a request line not whole in this segment: its response may not start with a status.
        unfollow(entry);
        count_http_skipped(reply.backend_id);
        return;
    }
    let length = scratch.scan.request_length();
    if length == 0 {
        // A chunked body, or a head not whole in this segment: its response start is known,
        // what follows it is not.
        unfollow(entry);
    }
    entry.resp_seq = flow.seq.wrapping_add(length);
    reply.http_state = HTTP_AWAITING;
    reply.flags &= !(FLOW_FLAG_HEAD_REQUEST | FLOW_FLAG_CONNECT_REQUEST);
    reply.flags |= request_kind(request);
}

/// The reply-entry flag for a request whose response frames differently (HEAD, CONNECT).
#[inline(always)]
fn request_kind(request: &[u8; METHOD_PREFIX_LEN]) -> u8 {
    if is_head_request(request) {
        FLOW_FLAG_HEAD_REQUEST
    } else if is_connect_request(request) {
        FLOW_FLAG_CONNECT_REQUEST
    } else {
        0
    }
}

/// Whether a client segment that repeats bytes it sent before is the armed request again,
/// framing the same: starting where it did (`req_seq` of the reply entry: while the requests
/// are followed, every request start seen was armed), the same kind
/// (HEAD, CONNECT, other) and the same length (to its `resp_seq`). The backend kept one version
/// of those bytes — the first, unless that one was dropped on the way (a bad checksum) — so
/// only then does the agent still know what it answers.
fn is_copy_of_armed_request<A: Family>(
    flow: &Flow<A>,
    entry: &FlowValueOf<A>,
    reply: *mut FlowValueOf<A>,
    bytes: &impl PacketBytes,
) -> bool {
    // SAFETY: null or an LRU map value valid for this run; plain data.
    let Some(reply) = (unsafe { reply.as_ref() }) else {
        return false;
    };
    if flow.seq != reply.req_seq
        || flow.payload_len < METHOD_PREFIX_LEN as u32
        || !reply_half_of(reply, flow)
    {
        return false;
    }
    let Some(scratch) = read_head(bytes, flow.payload_off, flow.payload_len) else {
        return false;
    };
    let Some(prefix) = scratch.head.first_chunk::<METHOD_PREFIX_LEN>() else {
        return false;
    };
    let kind = reply.flags & (FLOW_FLAG_HEAD_REQUEST | FLOW_FLAG_CONNECT_REQUEST);
    let length = scratch.scan.request_length();
    is_request_start(prefix)
        && request_kind(prefix) == kind
        && length != 0
        && reply.req_seq.wrapping_add(length) == entry.resp_seq
}

/// The client's requests are no longer followed (see [`FLOW_FLAG_REQUESTS_FOLLOWED`]): no
/// response start is armed on this connection again.
#[inline(always)]
fn unfollow<A: Family>(entry: &mut FlowValueOf<A>) {
    entry.flags &= !FLOW_FLAG_REQUESTS_FOLLOWED;
}

/// The backend of a new flow: the client's affine one (session affinity on when
/// `affinity_timeout_s` is not 0), else Maglev's pick.
#[inline(always)]
fn choose<A: Family>(
    service: &ServiceValue,
    flow: &Flow<A>,
    affinity_timeout_s: u32,
    now: u64,
) -> Option<(u32, Backend)> {
    if affinity_timeout_s == 0 {
        return select(service, flow, settings().hash_seed);
    }
    let chosen = match affine_backend(service, flow.saddr, affinity_timeout_s, now) {
        Some(affine) => affine,
        None => select(service, flow, settings().hash_seed)?,
    };
    remember_affinity(service.id, flow.saddr, chosen.0, now);
    Some(chosen)
}

/// Remembers the backend of a client's new flow, and when.
fn remember_affinity<A: Family>(service_id: u32, client: A, backend_id: u32, now: u64) {
    let key = AffinityKeyOf { service_id, client };
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_used_ns: now,
    };
    let _ = A::affinity().insert(&key, &value, 0);
}

/// The backend a client's last new flow of this service went to, if that was within the
/// affinity timeout and the backend still takes new flows (kube-proxy's `ClientIP` affinity;
/// unlike kube-proxy, an ejected, failing, draining or no-longer-preferred backend ends it).
#[inline(always)]
fn affine_backend<A: Family>(
    service: &ServiceValue,
    client: A,
    timeout_s: u32,
    now: u64,
) -> Option<(u32, Backend)> {
    let key = AffinityKeyOf {
        service_id: service.id,
        client,
    };
    // SAFETY: read-only lookup; the value is copied out.
    let value = (unsafe { A::affinity().get(&key) }).copied()?;
    if now.saturating_sub(value.last_used_ns) > u64::from(timeout_s) * 1_000_000_000 {
        return None;
    }
    let backend = BACKENDS.get(value.backend_id)?;
    let takes_new_flows = backend.flags & BACKEND_FLAG_ACTIVE != 0
        && backend.flags & BACKEND_FLAG_NO_SHARE == 0
        && backend.service_id == service.id
        && A::backend_addr(value.backend_id, backend).is_some()
        && !out_of_rotation(value.backend_id, backend);
    takes_new_flows.then_some((value.backend_id, *backend))
}

/// Maglev lookup. An out-of-rotation backend's slot falls through to the next slots (bounded),
/// so the kernel can take a backend out at once, before the agent rebuilds the table without it.
#[inline(always)]
fn select<A: Family>(service: &ServiceValue, flow: &Flow<A>, seed: u64) -> Option<(u32, Backend)> {
    let id = select_id(service, flow, seed);
    if id == NO_BACKEND {
        return None;
    }
    BACKENDS.get(id).map(|b| (id, *b))
}

/// No backend: the service takes no new flows.
const NO_BACKEND: u32 = u32::MAX;

/// [`select`]'s pick as a backend id, or [`NO_BACKEND`]. Its own BPF function (a scalar result
/// is returned in a register), so its locals live in its own stack frame, not in the
/// request path's, which is at the 512-byte limit with the packet parser's.
#[inline(never)]
fn select_id<A: Family>(service: &ServiceValue, flow: &Flow<A>, seed: u64) -> u32 {
    let size = service.table_size;
    let count = service.backend_count;
    if size == 0 || count == 0 {
        return NO_BACKEND;
    }
    let hash = flow_hash(
        seed, flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto,
    );
    // Chunk indexes come from the agent's entry; the array lookup bounds them, so an entry
    // the agent never wrote (or a torn read of one) finds some backend or none, never memory
    // outside the map.
    let first = hash % size;
    let mut fallback = NO_BACKEND;
    for probe in 0..MAX_EJECTED_PROBE {
        let mut slot = first + probe;
        if slot >= size {
            slot -= size;
        }
        let (chunk, lane) = service.slot_chunk(slot);
        let Some(slots) = TABLE_CHUNKS.get(chunk) else {
            return NO_BACKEND;
        };
        let id = backend_at(service, slots.slot(lane));
        if fallback == NO_BACKEND {
            fallback = id;
        }
        let Some(backend) = BACKENDS.get(id) else {
            continue;
        };
        if A::backend_addr(id, backend).is_none() {
            // No address of this family: not even a fallback.
            if fallback == id {
                fallback = NO_BACKEND;
            }
            continue;
        }
        if !out_of_rotation(id, backend) {
            return id;
        }
    }
    // Every probed slot is out — typically a whole priority failed a moment ago and the agent
    // has not swapped in the recomputed table yet. Any backend of the service in rotation beats
    // one that is known to fail: visit the backend list at FALLBACK_SCAN points spread evenly
    // over it from a hash-chosen start, so that a failed priority's block of backends, however
    // long, cannot hide the others. (This may briefly pick an endpoint whose weight is 0; the
    // recomputed table follows within milliseconds.) Unrolled, and short: the verifier walks
    // every step (the earlier 256 consecutive steps were 650k of the 798k instructions it
    // processed), and `bpf_loop`, which it walks once, needs a function pointer that kernels
    // before 5.13 refuse to load.
    let start = hash % count;
    let stride = (count / FALLBACK_SCAN).max(1);
    for step in 0..FALLBACK_SCAN {
        if step >= count {
            break;
        }
        let id = backend_at(service, (start + step * stride) % count);
        let Some(backend) = BACKENDS.get(id) else {
            continue;
        };
        if A::backend_addr(id, backend).is_some() && !out_of_rotation(id, backend) {
            return id;
        }
    }
    // Nothing left: better an ejected backend than a dropped connection (the agent's panic
    // threshold makes the same choice for the whole service).
    fallback
}

/// The id of the service's backend `index` (from a Maglev slot or the fallback scan), or
/// [`NO_BACKEND`] when the index is past its list.
#[inline(always)]
fn backend_at(service: &ServiceValue, index: u32) -> u32 {
    if index >= service.backend_count {
        return NO_BACKEND;
    }
    let (chunk, lane) = service.id_chunk(index);
    TABLE_CHUNKS
        .get(chunk)
        .map_or(NO_BACKEND, |ids| ids.id(lane))
}

/// How many entries of a service's backend list the fallback scan visits at most.
const FALLBACK_SCAN: u32 = 16;

fn count_request(service_id: u32, backend_id: u32, len: u32, new_flow: bool) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
            (*c).new_flows += new_flow as u64;
        }
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
            (*c).new_flows += new_flow as u64;
        }
    }
}

/// Reply direction: backend → client. Returns the VIP:port to restore as the source, after
/// counting the reply's health signals.
///
/// The common case — an ACK or a data segment of a flow with no response awaited — costs one
/// conntrack lookup and no payload read.
pub(crate) fn reply<A: Family>(flow: &Flow<A>, bytes: &impl PacketBytes) -> Option<Nat<A>> {
    let key = packet_key(flow, DIR_REPLY);
    let entry = A::conntrack().get_ptr_mut(&key)?;
    // SAFETY: LRU map value valid for this run; plain data.
    let entry = unsafe { &mut *entry };
    // Both halves' activity decides when the agent's GC may end the flow: a server that
    // streams to a silent client keeps it alive.
    let now = last_seen_now_ns();
    entry.last_seen_ns = now;
    restore_original_half(flow, entry, now);
    let backend_id = entry.backend_id;
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).reply_packets += 1;
            (*c).reply_bytes += flow.len as u64;
        }
    }
    if flow.proto == PROTO_TCP {
        if flow.tcp_flags & TCP_FIN != 0 {
            entry.fin_seen = 1;
        }
        if flow.tcp_flags & (TCP_SYN | TCP_RST) != 0 {
            reply_control(flow, entry);
        }
        if flow.payload_len != 0 {
            reply_data(flow, entry, bytes);
        }
    }
    Some(Nat {
        addr: entry.nat_addr,
        port: entry.nat_port,
    })
}

/// SYN-ACK and RST from the backend: the connection's state and its connect result. (A FIN
/// only marks the reply entry, which the caller holds.)
fn reply_control<A: Family>(flow: &Flow<A>, reply: &mut FlowValueOf<A>) {
    let original_key = original_key_of(flow, reply);
    let Some(original) = A::conntrack().get_ptr_mut(&original_key) else {
        return;
    };
    // SAFETY: LRU value valid for this run; plain data.
    let original = unsafe { &mut *original };
    let flags = flow.tcp_flags;
    if flags & TCP_RST != 0 {
        // Refused: the backend's RST answers the SYN itself (RST|ACK acknowledging the ISN). A
        // RST to anything else (a bare ACK sent on a tuple whose SYN the backend never saw)
        // proves nothing about the backend.
        let answers_syn = flags & TCP_ACK != 0 && flow.ack == original.req_seq.wrapping_add(1);
        if original.tcp_state == TCP_SYN_SENT && !answers_syn {
            return; // not acceptable in SYN-SENT (RFC 9293 3.10.7.3): the attempt goes on
        }
        if original.tcp_state == TCP_SYN_SENT {
            if original.flags & (FLOW_FLAG_CONNECT_FAILURE_COUNTED | FLOW_FLAG_REUSED_TUPLE) == 0 {
                original.flags |= FLOW_FLAG_CONNECT_FAILURE_COUNTED;
                connect_failure(reply.backend_id);
            }
        } else if original.tcp_state == TCP_ESTABLISHED {
            count_signal!(reply.backend_id, resets);
        }
        original.tcp_state = TCP_CLOSED;
        reply.http_state = HTTP_UNFRAMED;
        return;
    }
    if flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK) {
        if original.tcp_state != TCP_SYN_SENT {
            return; // a retransmitted SYN-ACK, or one for a tuple we did not see open
        }
        original.tcp_state = TCP_ESTABLISHED;
        if flow.ack != original.req_seq.wrapping_add(1) {
            // It answers a SYN with another ISN than the one recorded (the recorded one may
            // never have reached the backend): where the client's bytes start is unknown.
            unfollow(original);
        }
        if let Some(state) = BACKEND_STATE.get_ptr_mut(reply.backend_id) {
            // SAFETY: an aligned 8-byte field of a live map value: a single store.
            unsafe { core::ptr::write_volatile(&raw mut (*state).last_accept_ns, now_ns()) };
        }
        reply.seq_nxt = flow.seq.wrapping_add(1);
        reply.seq_nxt_known = 1;
        // Nothing sent yet: the first response starts at the first byte.
        reply.resp_seq = reply.seq_nxt;
        // (Not for another ISN: the reply entry, which only this direction writes, keeps the
        // connection unread even if a racing write to the original's flags brought the
        // followed bit back.)
        if flow.ack == original.req_seq.wrapping_add(1) {
            reply.http_state = HTTP_FRAMED;
        }
        match reply.app_protocol {
            // tcp_proxy: a completed connect is a success and resets the consecutive counters.
            APP_PROTOCOL_OPAQUE => connect_success(reply.backend_id),
            // Known once the first payload is seen.
            APP_PROTOCOL_DETECT => reply.flags |= FLOW_FLAG_CONNECT_OK_PENDING,
            // The HTTP router's connect success is no result of its own (Envoy
            // `LocalOriginConnectSuccess` maps to no code): the response decides.
            _ => {}
        }
    }
}

/// Backend payload: track the backend's next sequence number, and read the status line if this
/// segment holds the awaited response start.
fn reply_data<A: Family>(flow: &Flow<A>, reply: &mut FlowValueOf<A>, bytes: &impl PacketBytes) {
    let end = flow.seq.wrapping_add(flow.payload_len);
    let _ = advance_seq_nxt(end, reply, REPLY_JUMP_LIMIT);
    if reply.app_protocol == APP_PROTOCOL_DETECT {
        // The backend spoke first: a server-first protocol (MySQL, SMTP, SSH), not HTTP.
        set_opaque(flow, reply);
        if reply.flags & FLOW_FLAG_CONNECT_OK_PENDING != 0 {
            reply.flags &= !FLOW_FLAG_CONNECT_OK_PENDING;
            connect_success(reply.backend_id);
        }
        return;
    }
    if reply.app_protocol != APP_PROTOCOL_HTTP1 {
        return;
    }
    if reply.http_state == HTTP_FRAMED && (reply.seq_nxt.wrapping_sub(reply.resp_seq) as i32) > 0 {
        // Bytes past the last response's end that no armed request asked for (a pipelined
        // request's response, or a backend that sent more than its head said): where they
        // end is unknown. (Not counted: the request they answer, if any, was.)
        reply.http_state = HTTP_UNFRAMED;
        return;
    }
    if reply.http_state != HTTP_AWAITING {
        return;
    }
    let offset = reply.resp_seq.wrapping_sub(flow.seq) as i32;
    if offset < 0 {
        // The segment starts past the awaited start: that byte went by unseen.
        unframe(reply);
        return;
    }
    let offset = offset as u32;
    if offset >= flow.payload_len {
        return; // older bytes (a retransmission of the previous response)
    }
    let rest = flow.payload_len - offset;
    if rest < STATUS_PREFIX_LEN as u32 {
        // The status line is split across segments.
        unframe(reply);
        return;
    }
    let Some(scratch) = read_head(bytes, flow.payload_off + offset, rest) else {
        unframe(reply);
        return;
    };
    let Some(status) = scratch
        .head
        .first_chunk::<STATUS_PREFIX_LEN>()
        .and_then(parse_status)
    else {
        // Not a status line where one must begin: not HTTP/1.x after all. Stop reading.
        unframe(reply);
        set_opaque(flow, reply);
        return;
    };
    count_status_class(reply.backend_id, status);
    let head_request = reply.flags & FLOW_FLAG_HEAD_REQUEST != 0;
    let length = scratch.scan.length(status, head_request);
    if !is_final(status) {
        // An interim response (100 Continue): the final one starts where its head ends. Read
        // when it starts a segment of its own; one sharing this segment is not looked for.
        if length == rest {
            reply.resp_seq = end;
        } else {
            unframe(reply);
        }
        return;
    }
    if status == 101 || (reply.flags & FLOW_FLAG_CONNECT_REQUEST != 0 && status / 100 == 2) {
        // Switching Protocols, or a tunnel: what follows is not HTTP/1.x.
        reply.http_state = HTTP_UNFRAMED;
        set_opaque(flow, reply);
    } else if length != 0 && client_sent_only_the_request(flow, reply) {
        reply.http_state = HTTP_FRAMED;
        reply.resp_seq = reply.resp_seq.wrapping_add(length);
    } else {
        // Chunked, read until close, a head this parser does not follow, or a client that sent
        // more than the request (a pipelined request, whose response may come first as far as
        // a HEAD is concerned): where the next response starts is unknown (each later request
        // is counted as skipped).
        reply.http_state = HTTP_UNFRAMED;
    }
    let class_5xx = status / 100 == 5;
    bump_consecutive(reply.backend_id, class_5xx, is_gateway_error(status));
}

/// Whether the client has sent exactly the armed request: its requests are still followed and
/// its next byte is where the original entry says that request ends.
fn client_sent_only_the_request<A: Family>(flow: &Flow<A>, reply: &FlowValueOf<A>) -> bool {
    let key = original_key_of(flow, reply);
    // SAFETY: read-only lookup.
    unsafe { A::conntrack().get(&key) }.is_some_and(|original| {
        original.flags & FLOW_FLAG_REQUESTS_FOLLOWED != 0
            && original.seq_nxt_known != 0
            && original.seq_nxt == original.resp_seq
    })
}

/// Copies the message head starting `offset` bytes into the packet (`len` bytes on in it) into
/// this CPU's `HEAD_SCRATCH` and reads it: its scan tells the message's length.
#[inline(always)]
fn read_head(bytes: &impl PacketBytes, offset: u32, len: u32) -> Option<&'static mut HeadScratch> {
    let scratch = HEAD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; nothing else runs on it during this program (see HEAD_SCRATCH).
    let scratch = unsafe { &mut *scratch };
    let copied = (len as usize).min(HEAD_MAX);
    // Bounded for the verifier; a real offset is at most a few segments' worth.
    let at = offset as usize & 0xffff;
    if !bytes.copy(at, &mut scratch.head[..copied]) {
        return None;
    }
    scan_head(scratch, copied as u32);
    Some(scratch)
}

/// Reads the first `len` bytes of the head in `scratch` through `bpf_loop`: the callback is
/// verified once, where a loop in this program would be walked by the verifier byte by byte
/// with every state the scan can be in. Not inlined: the verifier gives the frame that calls
/// bpf_loop 24 more bytes of stack, which the programs' main frames cannot spare (512 in all,
/// callees included).
#[inline(never)]
fn scan_head(scratch: &mut HeadScratch, len: u32) {
    scratch.scan = HeadScan::new();
    scratch.len = len;
    // SAFETY: the callback has bpf_loop's signature and takes no context.
    let looped = unsafe { bpf_loop(len, head_step as *mut c_void, core::ptr::null_mut(), 0) };
    if looped < 0 {
        scratch.scan.refuse();
    }
}

/// One step through this CPU's `HEAD_SCRATCH` head (`bpf_loop` callback: 0 goes on, 1 stops).
#[inline(never)]
extern "C" fn head_step(_: u64, _: *mut c_void) -> i64 {
    let Some(scratch) = HEAD_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, which scan_head (its only other user) is not touching while
    // bpf_loop runs.
    let scratch = unsafe { &mut *scratch };
    if scratch.scan.advance(&scratch.head, scratch.len) {
        0
    } else {
        1
    }
}

/// The awaited response's start or end was missed: nothing more is read on this connection.
fn unframe<A: Family>(reply: &mut FlowValueOf<A>) {
    reply.http_state = HTTP_UNFRAMED;
    count_http_skipped(reply.backend_id);
}

/// The flow turns out not to be (or no longer be) HTTP/1.x: both entries say so, so the
/// request path stops looking for requests and the agent treats the flow as one.
fn set_opaque<A: Family>(flow: &Flow<A>, reply: &mut FlowValueOf<A>) {
    reply.app_protocol = APP_PROTOCOL_OPAQUE;
    let original_key = original_key_of(flow, reply);
    if let Some(original) = A::conntrack().get_ptr_mut(&original_key) {
        // SAFETY: LRU value valid for this run; plain data.
        unsafe { (*original).app_protocol = APP_PROTOCOL_OPAQUE };
    }
}

fn count_http_skipped(backend_id: u32) {
    count_signal!(backend_id, http_skipped);
}

fn connect_failure(backend_id: u32) {
    count_signal!(backend_id, connect_failures);
    // Envoy maps a local-origin connect failure to a 503 (refused) or 504 (timeout) when
    // external and local-origin errors are not split (Istio's setting): a gateway error that
    // counts toward both consecutive counters.
    bump_consecutive(backend_id, true, true);
}

/// Envoy tcp_proxy reports `LocalOriginConnectSuccessFinal`, which maps to a 200.
fn connect_success(backend_id: u32) {
    bump_consecutive(backend_id, false, false);
}

fn count_status_class(backend_id: u32, status: u16) {
    let class = status / 100;
    // The verifier cannot see that parse_status only returns 100..=599 (LLVM can, and would drop
    // a plain range check), so the index goes through `opaque` before its bounds check.
    let index = opaque(class.wrapping_sub(1) as u64);
    if let Some(signals) = BACKEND_SIGNALS.get_ptr_mut(backend_id)
        && index < 5
    {
        // SAFETY: live map value; index checked above.
        unsafe {
            let slot = (&raw mut (*signals).responses)
                .cast::<u64>()
                .add(index as usize);
            fetch_add(slot as *mut i64, 1);
        }
    }
}

/// Consecutive counters are shared by all CPUs: a failure increments atomically, a success
/// resets to zero (Envoy: any non-5xx result breaks the run). Reaching a limit ejects the
/// backend here and now, so the very next new connection avoids it; the agent follows with the
/// ejection time and the recomputed weights.
///
/// Envoy's bookkeeping (outlier_detection_impl.cc): results from an ejected host are ignored;
/// an ejection refused by maxEjectionPercent still resets the counter; counters restart at zero
/// after an ejection.
fn bump_consecutive(backend_id: u32, is_5xx: bool, is_gateway: bool) {
    let Some(state) = BACKEND_STATE.get_ptr_mut(backend_id) else {
        return;
    };
    // SAFETY: the pointers are to live, 8-byte aligned map value fields. The BPF target has no
    // `AtomicU64::fetch_add` (no compare-and-swap in its core), but LLVM lowers the intrinsic to
    // the BPF atomic add instruction. Resets are plain 8-byte stores, single instructions that
    // are never torn.
    unsafe {
        if core::ptr::read_volatile(&raw const (*state).ejected) != 0 {
            if let Some(signals) = BACKEND_SIGNALS.get_ptr_mut(backend_id) {
                fetch_add(&raw mut (*signals).ignored_while_ejected as *mut i64, 1);
            }
            return;
        }
        let c5xx = &raw mut (*state).consecutive_5xx;
        let cgw = &raw mut (*state).consecutive_gateway;
        let run_5xx = if is_5xx {
            fetch_add(c5xx as *mut i64, 1) as u64 + 1
        } else {
            core::ptr::write_volatile(c5xx, 0);
            0
        };
        let run_gateway = if is_gateway {
            fetch_add(cgw as *mut i64, 1) as u64 + 1
        } else {
            core::ptr::write_volatile(cgw, 0);
            0
        };
        if run_5xx == 0 && run_gateway == 0 {
            return;
        }
        let Some(backend) = BACKENDS.get(backend_id) else {
            return;
        };
        let limit_5xx = backend.eject_after_5xx as u64;
        let limit_gateway = backend.eject_after_gateway as u64;
        let reached = (limit_5xx != 0 && run_5xx >= limit_5xx)
            || (limit_gateway != 0 && run_gateway >= limit_gateway);
        if !reached {
            return;
        }
        let (Some(config), Some(service)) = (
            SERVICE_CONFIG.get(backend.service_id),
            SERVICE_STATE.get_ptr_mut(backend.service_id),
        ) else {
            return;
        };
        // maxEjectionPercent (Envoy's strict rule): take a slot atomically; if that goes past
        // the limit, give it back and do not eject.
        let ejections = &raw mut (*service).ejections;
        let before = fetch_add(ejections, 1);
        if before - config.ejections_released >= config.max_ejected as i64 {
            atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(ejections, -1);
            core::ptr::write_volatile(c5xx, 0);
            core::ptr::write_volatile(cgw, 0);
            return;
        }
        // Two CPUs can reach the limit together: one exchange wins, the other gives its slot
        // back.
        if exchange(&raw mut (*state).ejected, 1) != 0 {
            atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(ejections, -1);
            return;
        }
        let at_ns = now_ns();
        core::ptr::write_volatile(&raw mut (*state).ejected_at_ns, at_ns);
        core::ptr::write_volatile(c5xx, 0);
        core::ptr::write_volatile(cgw, 0);
        // If the ring is full the agent finds the flag at its next reconcile pass.
        let _ = EVENTS.output::<KernelEvent>(
            KernelEvent {
                kind: EVENT_EJECTED,
                backend_id,
                service_id: backend.service_id,
                at_ns,
                consecutive_5xx: run_5xx,
                consecutive_gateway: run_gateway,
                ..KernelEvent::default()
            },
            0,
        );
    }
}
