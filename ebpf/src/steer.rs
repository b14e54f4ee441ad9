//! Map declarations and the steering logic shared by the TC and XDP programs: service lookup,
//! conntrack, Maglev selection with the ejected-backend probe, reverse-NAT lookup, counters and
//! reply-path health signals.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

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

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use geosteer_common::{
    BACKEND_FLAG_ACTIVE, Backend, BackendCounters, BackendState, DEFAULT_CONNTRACK_SIZE,
    DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, DIR_ORIGINAL, DIR_REPLY, DropReason, EjectEvent,
    FLOW_FLAG_CONNECT_FAILURE_COUNTED, FlowKey, FlowValue, MAGLEV_TABLE_SIZE,
    MAX_BACKENDS_PER_SERVICE, MAX_EJECTED_PROBE, PROTO_TCP, ServiceKey, ServiceState, ServiceTable,
    ServiceValue, Settings, TCP_CLOSED, TCP_ESTABLISHED, TCP_SYN_SENT, TrafficCounters, flow_hash,
    http::{STATUS_PREFIX_LEN, is_gateway_error, parse_status},
};

// Sizes here are defaults; the agent resizes the large maps at load time from its config.
#[map(name = "GS_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Every VIP address (value: number of service ports on it): lets fragments and malformed
/// packets to a VIP be dropped without knowing their port.
#[map(name = "GS_VIPS")]
static VIPS: HashMap<u32, u32> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Two generations per service: index `id * 2 + generation`.
#[map(name = "GS_TABLES")]
static TABLES: Array<ServiceTable> = Array::with_max_entries(DEFAULT_MAX_SERVICES * 2, 0);
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
static BACKEND_STATS: PerCpuArray<BackendCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map(name = "GS_DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);
#[map(name = "GS_SERVICE_STATE")]
static SERVICE_STATE: Array<ServiceState> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Kernel → agent notifications (ejections).
#[map(name = "GS_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);
#[map(name = "GS_SETTINGS")]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A parsed IPv4 TCP/UDP packet. Addresses and ports in network byte order.
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub l4_off: u32,
    /// Start of the TCP payload (0 for UDP).
    pub payload_off: u32,
    pub len: u32,
}

/// The address and port to write (destination on requests, source on replies).
pub struct Nat {
    pub addr: u32,
    pub port: u16,
}

pub enum Verdict {
    /// Not a service packet: leave it alone.
    Pass,
    Drop(DropReason),
    Nat(Nat),
}

pub fn is_vip(addr: u32) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { VIPS.get(&addr).is_some() }
}

pub fn count_drop(reason: DropReason) {
    if let Some(counter) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Hides a value's origin from LLVM so that a following bounds check is kept: the verifier
/// needs that explicit check, but LLVM would drop it as redundant after `% MAGLEV_TABLE_SIZE`
/// (the verifier does not track ranges through modulo).
#[inline(always)]
fn opaque(v: u64) -> u64 {
    // SAFETY: reading a local through a valid pointer.
    unsafe { core::ptr::read_volatile(&v) }
}

fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Request direction: client → VIP:port.
pub fn request(flow: &Flow) -> Verdict {
    let key = ServiceKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        _pad: 0,
    };
    // SAFETY: read-only lookup; the value is copied out.
    let Some(service) = (unsafe { SERVICES.get(&key) }).copied() else {
        forget_superseded_nat(flow);
        return Verdict::Pass;
    };
    let now = now_ns();
    let ct_key = FlowKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        direction: DIR_ORIGINAL,
        _pad: 0,
    };
    if let Some(entry) = CONNTRACK.get_ptr_mut(&ct_key) {
        // SAFETY: LRU map values stay valid during the program run; fields are plain data.
        let entry = unsafe { &mut *entry };
        if backend_still_serves(entry.backend_id, entry.service_id)
            && !starts_a_new_connection(flow, entry)
        {
            entry.last_seen_ns = now;
            if flow.proto == PROTO_TCP {
                check_syn_retransmit(flow, entry, now);
            }
            count_request(service.id, entry.backend_id, flow.len, false);
            return Verdict::Nat(Nat {
                addr: entry.nat_addr,
                port: entry.nat_port,
            });
        }
        // The backend was removed from the service, or this SYN opens a new connection on the
        // 5-tuple of a finished one: steer it anew. The old reply entry goes, so a late packet
        // from the previous backend is not reverse-NATed into the new connection.
        let old_reply = FlowKey {
            saddr: entry.nat_addr,
            daddr: flow.saddr,
            sport: entry.nat_port,
            dport: flow.sport,
            proto: flow.proto,
            direction: DIR_REPLY,
            _pad: 0,
        };
        let _ = CONNTRACK.remove(&old_reply);
    }
    let Some((backend_id, backend)) = select(&service, flow) else {
        return Verdict::Drop(DropReason::NoBackend);
    };
    let tcp_state = if flow.proto != PROTO_TCP {
        0
    } else if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        TCP_SYN_SENT
    } else {
        // Mid-stream without conntrack (evicted entry, restart without pins): Maglev gives the
        // same backend as before if the table did not change.
        TCP_ESTABLISHED
    };
    let original = FlowValue {
        backend_id,
        service_id: service.id,
        nat_addr: backend.addr,
        nat_port: backend.port,
        tcp_state,
        flags: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    let reply_key = FlowKey {
        saddr: backend.addr,
        daddr: flow.saddr,
        sport: backend.port,
        dport: flow.sport,
        proto: flow.proto,
        direction: DIR_REPLY,
        _pad: 0,
    };
    let reply = FlowValue {
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        ..original
    };
    // Reply entry first: a reply can never arrive before the request is forwarded.
    if CONNTRACK.insert(&reply_key, &reply, 0).is_err()
        || CONNTRACK.insert(&ct_key, &original, 0).is_err()
    {
        return Verdict::Drop(DropReason::Internal);
    }
    count_request(service.id, backend_id, flow.len, true);
    Verdict::Nat(Nat {
        addr: backend.addr,
        port: backend.port,
    })
}

/// A client that opens a direct connection to a backend may reuse the source port of an earlier
/// (finished) connection through a VIP to that same backend. The earlier flow's reply entry would
/// then reverse-NAT the direct connection's SYN-ACK to the VIP and break it. The new SYN proves
/// the earlier flow is over (the client reused its port), so its reply entry goes.
fn forget_superseded_nat(flow: &Flow) {
    if flow.proto != PROTO_TCP || flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    let reply_key = FlowKey {
        saddr: flow.daddr,
        daddr: flow.saddr,
        sport: flow.dport,
        dport: flow.sport,
        proto: flow.proto,
        direction: DIR_REPLY,
        _pad: 0,
    };
    let _ = CONNTRACK.remove(&reply_key);
}

fn backend_still_serves(backend_id: u32, service_id: u32) -> bool {
    match BACKENDS.get(backend_id) {
        Some(b) => b.flags & BACKEND_FLAG_ACTIVE != 0 && b.service_id == service_id,
        None => false,
    }
}

/// Whether this packet opens a new connection on an existing entry's 5-tuple, which must be
/// steered by the current table (and ejections), not pinned to the previous connection's
/// backend: clients reuse source ports all the time (Linux walks its ephemeral range and reuses
/// a port once the previous connection to the same destination is closed).
/// - a SYN on a flow past the handshake (established or reset) is a new connection;
/// - a SYN retransmitted while still waiting for the SYN-ACK stays, unless its backend has been
///   ejected since: nothing is established there yet, so moving it is free.
fn starts_a_new_connection(flow: &Flow, entry: &FlowValue) -> bool {
    if flow.proto != PROTO_TCP || flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return false;
    }
    if entry.tcp_state != TCP_SYN_SENT {
        return true;
    }
    match BACKEND_STATE.get(entry.backend_id) {
        Some(state) => state.ejected != 0,
        None => false,
    }
}

/// A SYN seen again for a flow still waiting for its SYN-ACK, longer than the connect timeout
/// after the first: the backend did not answer in time. Counted once per flow.
fn check_syn_retransmit(flow: &Flow, entry: &mut FlowValue, now: u64) {
    if flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN
        || entry.tcp_state != TCP_SYN_SENT
        || entry.flags & FLOW_FLAG_CONNECT_FAILURE_COUNTED != 0
    {
        return;
    }
    let timeout = match SETTINGS.get(0) {
        Some(s) if s.connect_timeout_ns != 0 => s.connect_timeout_ns,
        _ => return,
    };
    if now.saturating_sub(entry.created_ns) >= timeout {
        entry.flags |= FLOW_FLAG_CONNECT_FAILURE_COUNTED;
        connect_failure(entry.backend_id);
    }
}

/// Maglev lookup. An ejected backend's slot falls through to the next slots (bounded), so the
/// agent can take a backend out at once, before it rebuilds the table without it.
fn select(service: &ServiceValue, flow: &Flow) -> Option<(u32, Backend)> {
    let table = TABLES.get(service.table_index())?;
    let count = table.backend_count;
    if count == 0 {
        return None;
    }
    let hash = flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto);
    let first = (hash % MAGLEV_TABLE_SIZE as u32) as u64;
    let mut fallback: Option<u32> = None;
    for probe in 0..MAX_EJECTED_PROBE as u64 {
        // 64-bit all the way: a 32-bit index is zero-extended with shifts that lose the bound
        // the verifier learned from the comparison.
        let slot = opaque((first + probe) % MAGLEV_TABLE_SIZE as u64);
        if slot >= MAGLEV_TABLE_SIZE as u64 {
            return None;
        }
        let index = table.slots[slot as usize] as u64;
        if index >= count as u64 || index >= MAX_BACKENDS_PER_SERVICE as u64 {
            continue;
        }
        let id = table.backends[index as usize];
        if fallback.is_none() {
            fallback = Some(id);
        }
        let ejected = match BACKEND_STATE.get(id) {
            Some(state) => state.ejected != 0,
            None => false,
        };
        if !ejected {
            return BACKENDS.get(id).map(|b| (id, *b));
        }
    }
    // Every probed slot is ejected — typically a whole priority failed a moment ago and the
    // agent has not swapped in the recomputed table yet. Any backend of the service that is not
    // ejected beats one that is known to fail: scan the backend list from a hash-chosen start.
    // (This may briefly pick an endpoint whose weight is 0; the recomputed table follows within
    // milliseconds.)
    let start = (hash as u64) % (count as u64);
    for step in 0..FALLBACK_SCAN {
        let index = opaque((start + step) % count as u64);
        if step >= count as u64 || index >= MAX_BACKENDS_PER_SERVICE as u64 {
            break;
        }
        let id = table.backends[index as usize];
        let ejected = match BACKEND_STATE.get(id) {
            Some(state) => state.ejected != 0,
            None => true,
        };
        if !ejected {
            return BACKENDS.get(id).map(|b| (id, *b));
        }
    }
    // Nothing left: better an ejected backend than a dropped connection (the agent's panic
    // threshold makes the same choice for the whole service).
    let id = fallback?;
    BACKENDS.get(id).map(|b| (id, *b))
}

/// How many entries of a service's backend list the fallback scan visits at most (bounded for
/// the verifier and for a constant worst-case cost per new flow).
const FALLBACK_SCAN: u64 = 256;

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
/// counting the reply's health signals. `load_status` reads the first payload bytes.
pub fn reply(
    flow: &Flow,
    load_status: impl Fn(usize) -> Option<[u8; STATUS_PREFIX_LEN]>,
) -> Option<Nat> {
    let key = FlowKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        direction: DIR_REPLY,
        _pad: 0,
    };
    // SAFETY: read-only lookup, copied out.
    let entry = (unsafe { CONNTRACK.get(&key) }).copied()?;
    let backend_id = entry.backend_id;
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).reply_packets += 1;
            (*c).reply_bytes += flow.len as u64;
        }
    }
    if flow.proto == PROTO_TCP {
        tcp_reply_signals(flow, &entry);
        if flow.payload_off != 0
            && flow.len >= flow.payload_off + STATUS_PREFIX_LEN as u32
            && let Some(prefix) = load_status(flow.payload_off as usize)
            && let Some(status) = parse_status(&prefix)
        {
            count_response(backend_id, status);
        }
    }
    Some(Nat {
        addr: entry.nat_addr,
        port: entry.nat_port,
    })
}

fn tcp_reply_signals(flow: &Flow, entry: &FlowValue) {
    let flags = flow.tcp_flags;
    if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == 0 {
        return;
    }
    let original_key = FlowKey {
        saddr: flow.daddr,
        daddr: entry.nat_addr,
        sport: flow.dport,
        dport: entry.nat_port,
        proto: flow.proto,
        direction: DIR_ORIGINAL,
        _pad: 0,
    };
    let Some(original) = CONNTRACK.get_ptr_mut(&original_key) else {
        return;
    };
    // SAFETY: LRU value valid for this run; plain data.
    let original = unsafe { &mut *original };
    if flags & TCP_RST != 0 {
        if original.tcp_state == TCP_SYN_SENT {
            // Refused: the backend answered the SYN with a RST.
            if original.flags & FLOW_FLAG_CONNECT_FAILURE_COUNTED == 0 {
                original.flags |= FLOW_FLAG_CONNECT_FAILURE_COUNTED;
                connect_failure(entry.backend_id);
            }
        } else if original.tcp_state == TCP_ESTABLISHED
            && let Some(c) = BACKEND_STATS.get_ptr_mut(entry.backend_id)
        {
            // SAFETY: per-CPU slot.
            unsafe { (*c).resets += 1 };
        }
        original.tcp_state = TCP_CLOSED;
    } else if flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK) {
        original.tcp_state = TCP_ESTABLISHED;
    }
}

fn connect_failure(backend_id: u32) {
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).connect_failures += 1 };
    }
    // Envoy maps a local-origin connect failure to a 503 when external and local-origin errors
    // are not split (Istio's setting): it counts toward both consecutive counters.
    bump_consecutive(backend_id, true, true);
}

fn count_response(backend_id: u32, status: u16) {
    let class = status / 100;
    // The verifier cannot see that parse_status only returns 100..=599 (LLVM can, and would drop
    // a plain range check), so the index goes through `opaque` before its bounds check.
    let index = opaque(class.wrapping_sub(1) as u64);
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id)
        && index < 5
    {
        // SAFETY: per-CPU slot; index checked above.
        unsafe { (*c).responses[index as usize] += 1 };
    }
    bump_consecutive(backend_id, class == 5, is_gateway_error(status));
}

/// Consecutive counters are shared by all CPUs: a failure increments atomically, a success
/// resets to zero (Envoy: any non-5xx response breaks the run). Reaching a limit ejects the
/// backend here and now, so the very next new connection avoids it; the agent follows with the
/// ejection time and the recomputed weights.
fn bump_consecutive(backend_id: u32, is_5xx: bool, is_gateway: bool) {
    let Some(state) = BACKEND_STATE.get_ptr_mut(backend_id) else {
        return;
    };
    // The BPF target has no `AtomicU64::fetch_add` (no compare-and-swap in its core), but LLVM
    // lowers the intrinsic to the BPF atomic add instruction. Resets are plain 8-byte stores,
    // which are single instructions and so never torn.
    // SAFETY: the pointers are to live, 8-byte aligned map value fields.
    let (run_5xx, run_gateway) = unsafe {
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
        (run_5xx, run_gateway)
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
    // SAFETY: reading a field of a live map value.
    if !reached || unsafe { core::ptr::read_volatile(&raw const (*state).ejected) } != 0 {
        return;
    }
    // maxEjectionPercent, enforced with a budget the agent keeps current: take one unit
    // atomically; if there was none, give it back and do not eject (Envoy's strict rule).
    let Some(service) = SERVICE_STATE.get_ptr_mut(backend.service_id) else {
        return;
    };
    // SAFETY: live, aligned map value field; i64 atomics as above.
    unsafe {
        let budget = &raw mut (*service).eject_budget;
        let before = fetch_add(budget, -1);
        if before < 1 {
            atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(budget, 1);
            return;
        }
        let at_ns = now_ns();
        core::ptr::write_volatile(&raw mut (*state).ejected_at_ns, at_ns);
        core::ptr::write_volatile(&raw mut (*state).ejected, 1);
        // If the ring is full the agent still finds the flag on its periodic scan.
        let _ = EVENTS.output::<EjectEvent>(
            EjectEvent {
                backend_id,
                service_id: backend.service_id,
                at_ns,
                consecutive_5xx: run_5xx,
                consecutive_gateway: run_gateway,
            },
            0,
        );
    }
}
