//! geosteer's kernel programs.
//!
//! - `geosteer_tc_ingress` (TC ingress on client-facing interfaces): a packet to a service
//!   VIP:port is DNATed to a backend chosen from the service's weighted Maglev table by the flow's
//!   5-tuple hash; the choice is recorded in conntrack so the flow keeps its backend.
//! - `geosteer_tc_egress` (TC egress on the same interfaces): replies that match a conntrack
//!   reply entry are reverse-NATed to VIP:port, and their TCP flags and HTTP/1.x status lines are
//!   counted per backend (the health signals the agent turns into outlier detection).
//! - `geosteer_xdp` (XDP on uplinks): the request direction at the driver, with a FIB lookup and
//!   redirect; replies still leave through TC egress.
//! - `geosteer_count_timeouts` (never attached): the agent runs it to count a connect timeout
//!   it confirmed.
//!
//! The programs only look things up and count: every decision that needs policy (weights,
//! ejection, failover) has already been made by the agent and written into the maps.
#![no_std]
#![no_main]
// Atomic add on shared map values (see steer::bump_consecutive).
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(
    internal_features,
    reason = "core_intrinsics is an internal feature: its atomic_xadd is the one BPF atomic add"
)]

mod steer;

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup, xdp_action,
    },
    helpers::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_skb_load_bytes, bpf_xdp_load_bytes,
    },
    macros::{classifier, xdp},
    maps::{PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use geosteer_common::{
    Addr6, DIR_ORIGINAL, DIR_REPLY, DropReason, FragmentKey6, PROTO_TCP, PROTO_UDP, csum, ct_stats,
    http::HEAD_MAX, program_names,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use steer::{Family, Flow, Nat, PacketBytes, Quoted, Verdict};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const ETH_HLEN: usize = EthHdr::LEN;
const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const TCP_CHECK_OFF: usize = 16;
const UDP_CHECK_OFF: usize = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const PROTO_ICMP: u8 = 1;
/// ICMP errors that quote the packet that caused them: destination unreachable (incl.
/// fragmentation needed), time exceeded, parameter problem.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// What the parser found in the first headers of a packet.
enum Parsed {
    /// Not IPv4 TCP/UDP or an ICMP error (ARP, echo, …): never touched.
    Other,
    /// An IPv6 frame: see [`parse6`].
    Ipv6,
    /// An IPv4 fragment other than the first: no ports; it follows its first fragment's
    /// translation (the fragment map).
    Fragment {
        saddr: u32,
        daddr: u32,
        id: u16,
        proto: u8,
    },
    /// The first fragment of a datagram: ports, so steered like any packet, and remembered for
    /// the fragments that follow.
    FirstFragment(Flow, u16),
    /// An ICMP error and the packet it quotes.
    IcmpError(IcmpError),
    /// IPv4 whose L3/L4 headers are cut short.
    Truncated {
        daddr: u32,
    },
    Flow(Flow),
}

#[classifier]
pub(crate) fn geosteer_tc_ingress(ctx: TcContext) -> i32 {
    match tc_ingress(&ctx) {
        Ok(IPV6_FRAME) => to_ipv6_program(&ctx, program_names::TAIL_TC_INGRESS6),
        result => tc_action(result),
    }
}

/// A TC path's action; a path that failed (a map or helper error) drops the packet, counted.
/// On the reply path this matters most: a reply we could not rewrite would reach the client
/// from the backend's address and be answered with a RST; dropping it lets TCP retransmit.
#[inline(always)]
fn tc_action(result: Result<i32, ()>) -> i32 {
    match result {
        Ok(action) => action,
        Err(()) => {
            steer::count_drop(DropReason::Internal);
            TC_ACT_SHOT as i32
        }
    }
}

#[classifier]
pub(crate) fn geosteer_tc_egress(ctx: TcContext) -> i32 {
    match tc_egress(&ctx) {
        Ok(IPV6_FRAME) => to_ipv6_program(&ctx, program_names::TAIL_TC_EGRESS6),
        result => tc_action(result),
    }
}

/// Never attached: run by the agent through BPF_PROG_TEST_RUN with a frame holding a
/// [`TimeoutCount`](geosteer_common::TimeoutCount) after its Ethernet header, to count a
/// connect timeout it confirmed.
#[classifier]
pub(crate) fn geosteer_count_timeouts(ctx: TcContext) -> i32 {
    match ctx.load::<geosteer_common::TimeoutCount>(ETH_HLEN) {
        Ok(request) => steer::count_confirmed_timeout(&request),
        Err(_) => 1,
    }
}

#[xdp]
pub(crate) fn geosteer_xdp(ctx: XdpContext) -> u32 {
    match xdp_request(&ctx) {
        Ok(XDP_IPV6_FRAME) => {
            // SAFETY: a tail call replaces this program; on failure execution continues here.
            unsafe { XDP_TAIL_CALLS.tail_call(&ctx, program_names::TAIL_XDP6) };
            // No IPv6 program in the slot: TC ingress steers the frame instead.
            xdp_action::XDP_PASS
        }
        Ok(action) => action,
        Err(()) => {
            steer::count_drop(DropReason::Internal);
            xdp_action::XDP_DROP
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TC: headers are read in place from the skb's linear part (bpf_skb_load_bytes where they are not
// in it: non-linear skbs) and rewritten with bpf_skb_store_bytes + the kernel's checksum helpers,
// which also handle CHECKSUM_PARTIAL skbs (locally generated packets whose L4 checksum is
// finished by the device).

/// An ICMP error: where its parts are, and the packet it quotes.
struct IcmpError {
    outer_saddr: u32,
    outer_daddr: u32,
    icmp_off: usize,
    inner_ip_off: usize,
    inner_l4_off: usize,
    quoted: Quoted,
}

/// The fragment fields of an IPv4 header: (offset, more fragments).
fn fragment_bits(ip: &Ipv4Hdr) -> (u16, bool) {
    /// "More fragments", the lowest of the three flag bits.
    const MF: u8 = 1;
    (ip.frag_offset(), ip.frag_flags() & MF != 0)
}

/// 802.1Q and 802.1ad tags.
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();
/// Where the IPv4 destination of a frame with one VLAN tag is.
const VLAN_IP_DST_OFF: usize = ETH_HLEN + 4 + 16;

/// A tagged frame to a VIP is counted, never silently ignored: the programs read untagged
/// Ethernet (devices usually take the tag off into metadata before TC and XDP see the frame).
fn count_vlan_bypass(ether_type: u16, inner_daddr: Option<u32>) {
    if (ether_type == ETH_P_8021Q_BE || ether_type == ETH_P_8021AD_BE)
        && inner_daddr.is_some_and(steer::is_vip)
    {
        steer::count_ct(ct_stats::VLAN_BYPASSED);
    }
}

/// Reads the headers of a frame for either program type: `bytes` reads in place where the
/// frame's linear part holds them, through the load helper where it does not. With
/// `ports_of_first_fragments` false (XDP, which hands every fragment to TC) a first fragment is
/// a [`Parsed::Fragment`] too, whatever its L4 header holds.
#[inline(always)]
fn parse(bytes: &impl PacketBytes, len: u32, ports_of_first_fragments: bool) -> Parsed {
    let Some(ether_type) = bytes.read::<u16>(core::mem::offset_of!(EthHdr, ether_type)) else {
        return Parsed::Other;
    };
    if ether_type != ETH_P_IP_BE {
        if ether_type == ETH_P_IPV6_BE {
            return Parsed::Ipv6;
        }
        count_vlan_bypass(ether_type, bytes.read::<u32>(VLAN_IP_DST_OFF));
        return Parsed::Other;
    }
    let Some(ip) = bytes.read::<Ipv4Hdr>(ETH_HLEN) else {
        return Parsed::Other; // too short to hold an address: cannot be for a VIP
    };
    let daddr = u32::from_ne_bytes(ip.dst_addr);
    let ihl = usize::from(ip.ihl());
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN {
        return Parsed::Truncated { daddr };
    }
    let (fragment_offset, more_fragments) = fragment_bits(&ip);
    if ip.proto == PROTO_ICMP {
        if fragment_offset != 0 || more_fragments {
            return Parsed::Other;
        }
        return parse_icmp(bytes, &ip, ETH_HLEN + ihl);
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Parsed::Other;
    }
    if fragment_offset != 0 || (more_fragments && !ports_of_first_fragments) {
        return Parsed::Fragment {
            saddr: u32::from_ne_bytes(ip.src_addr),
            daddr,
            id: u16::from_ne_bytes(ip.id),
            proto: ip.proto,
        };
    }
    let l4_off = ETH_HLEN + ihl;
    let mut flow = new_flow(&ip, daddr, l4_off, len);
    if ip.proto == PROTO_TCP {
        // The header as bytes: its data offset and flags (bytes 12 and 13) are a bitfield.
        let Some(tcp) = bytes.read::<[u8; TcpHdr::LEN]>(l4_off) else {
            return Parsed::Truncated { daddr };
        };
        set_tcp(&mut flow, ETH_HLEN as u32 + u32::from(ip.tot_len()), &tcp);
    } else {
        let Some(udp) = bytes.read::<UdpHdr>(l4_off) else {
            return Parsed::Truncated { daddr };
        };
        flow.sport = u16::from_ne_bytes(udp.src);
        flow.dport = u16::from_ne_bytes(udp.dst);
    }
    if more_fragments {
        flow.fragmented = true;
        return Parsed::FirstFragment(flow, u16::from_ne_bytes(ip.id));
    }
    Parsed::Flow(flow)
}

/// An ICMP error quoting an IPv4 TCP or UDP packet; anything else is `Other`.
fn parse_icmp(bytes: &impl PacketBytes, ip: &Ipv4Hdr, icmp_off: usize) -> Parsed {
    let Some([icmp_type, _code]) = bytes.read::<[u8; 2]>(icmp_off) else {
        return Parsed::Other;
    };
    if !matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return Parsed::Other;
    }
    let inner_ip_off = icmp_off + 8;
    let Some(inner) = bytes.read::<Ipv4Hdr>(inner_ip_off) else {
        return Parsed::Other;
    };
    let inner_ihl = usize::from(inner.ihl());
    if inner.version() != 4
        || inner_ihl < Ipv4Hdr::LEN
        || (inner.proto != PROTO_TCP && inner.proto != PROTO_UDP)
    {
        return Parsed::Other;
    }
    let inner_l4_off = inner_ip_off + inner_ihl;
    let Some(ports) = bytes.read::<[u8; 4]>(inner_l4_off) else {
        return Parsed::Other;
    };
    Parsed::IcmpError(IcmpError {
        outer_saddr: u32::from_ne_bytes(ip.src_addr),
        outer_daddr: u32::from_ne_bytes(ip.dst_addr),
        icmp_off,
        inner_ip_off,
        inner_l4_off,
        quoted: Quoted {
            saddr: u32::from_ne_bytes(inner.src_addr),
            daddr: u32::from_ne_bytes(inner.dst_addr),
            sport: u16::from_ne_bytes([ports[0], ports[1]]),
            dport: u16::from_ne_bytes([ports[2], ports[3]]),
            proto: inner.proto,
        },
    })
}

fn new_flow(ip: &Ipv4Hdr, daddr: u32, l4_off: usize, len: u32) -> Flow {
    Flow {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr,
        sport: 0,
        dport: 0,
        proto: ip.proto,
        tcp_flags: 0,
        l4_off: l4_off as u32,
        payload_off: 0,
        payload_len: 0,
        seq: 0,
        ack: 0,
        len,
        fragmented: false,
    }
}

/// Fills in the TCP fields from the header's bytes; `ip_end` is where the IP packet ends (from
/// its length field: frames shorter than 60 bytes carry Ethernet padding, which is no payload).
fn set_tcp<A>(flow: &mut Flow<A>, ip_end: u32, tcp: &[u8; TcpHdr::LEN]) {
    flow.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
    flow.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
    flow.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    flow.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    // Byte 12's high nibble is the data offset; byte 13 holds the flags (CWR..FIN).
    flow.tcp_flags = tcp[13];
    let header_len = ((tcp[12] >> 4) as u32) * 4;
    flow.payload_off = flow.l4_off + header_len;
    flow.payload_len = ip_end.saturating_sub(flow.payload_off);
}

/// Reads a `T` at `offset` in place when the bytes lie inside `start..end` (a frame's linear
/// part): a bounds check the verifier can follow and a copy, where a helper call would cost more
/// than the rest of the read.
#[inline(always)]
fn read_linear<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    // The verifier bounds a packet read only if it knows the read ends below 64 KiB.
    let size = core::mem::size_of::<T>();
    if offset > 0xffff - size || start + offset + size > end {
        return None;
    }
    // SAFETY: the check above keeps the read inside the packet; packet bytes have no alignment.
    Some(unsafe { ((start + offset) as *const T).read_unaligned() })
}

/// The length of a [`PacketBytes::copy`] destination, checked to 1..=HEAD_MAX where the
/// verifier sees it (LLVM may already know the range and drop a plain check).
#[inline(always)]
fn copy_len(dst: &[u8]) -> Option<u32> {
    let len = steer::opaque(dst.len() as u64);
    (len != 0 && len <= HEAD_MAX as u64).then_some(len as u32)
}

/// Packet bytes of an skb: in place from its linear part, else through bpf_skb_load_bytes
/// (non-linear skbs: headers in paged fragments after GRO or from some drivers).
struct TcBytes<'a>(&'a TcContext);

impl PacketBytes for TcBytes<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        read_linear(self.0.data(), self.0.data_end(), offset)
            .or_else(|| self.0.load::<T>(offset).ok())
    }

    #[inline(always)]
    fn copy(&self, offset: usize, dst: &mut [u8]) -> bool {
        let Some(len) = copy_len(dst) else {
            return false;
        };
        // SAFETY: the helper writes at most `len` bytes into `dst`, which holds them.
        unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const _,
                offset as u32,
                dst.as_mut_ptr() as *mut _,
                len,
            ) == 0
        }
    }
}

/// Packet bytes of an XDP frame: in place from its first buffer, else through
/// bpf_xdp_load_bytes (multi-buffer frames).
struct XdpBytes<'a>(&'a XdpContext);

impl PacketBytes for XdpBytes<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if let Some(value) = read_linear(self.0.data(), self.0.data_end(), offset) {
            return Some(value);
        }
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes into `value` or fails.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                offset as u32,
                value.as_mut_ptr() as *mut _,
                core::mem::size_of::<T>() as u32,
            )
        };
        // SAFETY: initialised by the successful helper call.
        (rc == 0).then(|| unsafe { value.assume_init() })
    }

    #[inline(always)]
    fn copy(&self, offset: usize, dst: &mut [u8]) -> bool {
        let Some(len) = copy_len(dst) else {
            return false;
        };
        // SAFETY: the helper writes at most `len` bytes into `dst`, which holds them.
        unsafe {
            bpf_xdp_load_bytes(self.0.ctx, offset as u32, dst.as_mut_ptr() as *mut _, len) == 0
        }
    }
}

/// What [`tc_ingress`] and [`tc_egress`] (IPv4) return for an IPv6 frame: the program then
/// tail-calls its IPv6 counterpart.
const IPV6_FRAME: i32 = i32::MIN;

fn tc_ingress(ctx: &TcContext) -> Result<i32, ()> {
    let (flow, fragment_id) = match parse(&TcBytes(ctx), ctx.len(), true) {
        Parsed::Other => return Ok(TC_ACT_OK as i32),
        Parsed::Ipv6 => return Ok(IPV6_FRAME),
        Parsed::Fragment {
            saddr,
            daddr,
            id,
            proto,
        } => {
            if !steer::is_vip(daddr) {
                return Ok(TC_ACT_OK as i32);
            }
            return match steer::fragment_translation(&steer::fragment_key(
                saddr,
                daddr,
                id,
                proto,
                DIR_ORIGINAL,
            )) {
                Some(backend) => {
                    tc_rewrite_addr(ctx, IP_DST_OFF, daddr, backend)?;
                    Ok(TC_ACT_OK as i32)
                }
                None => Ok(drop_if_vip(daddr, DropReason::Fragment)),
            };
        }
        Parsed::Truncated { daddr } => return Ok(drop_if_vip(daddr, DropReason::Truncated)),
        Parsed::IcmpError(error) => {
            tc_icmp_toward_backend(ctx, &error)?;
            return Ok(TC_ACT_OK as i32);
        }
        Parsed::FirstFragment(flow, id) => (flow, Some(id)),
        Parsed::Flow(flow) => (flow, None),
    };
    // Each arm forgets the fragment itself: a shared call before the match made LLVM carry the
    // (undefined) NAT payload of the other arms across it, a read the verifier refuses.
    match steer::request(&flow, &TcBytes(ctx)) {
        Verdict::Pass => {
            if let Some(id) = fragment_id {
                steer::forget_fragment(&steer::fragment_key(
                    flow.saddr,
                    flow.daddr,
                    id,
                    flow.proto,
                    DIR_ORIGINAL,
                ));
            }
            Ok(TC_ACT_OK as i32)
        }
        Verdict::Drop(reason) => {
            if let Some(id) = fragment_id {
                steer::forget_fragment(&steer::fragment_key(
                    flow.saddr,
                    flow.daddr,
                    id,
                    flow.proto,
                    DIR_ORIGINAL,
                ));
            }
            steer::note_drop(&flow, reason);
            Ok(TC_ACT_SHOT as i32)
        }
        Verdict::Nat(nat) => {
            tc_rewrite(ctx, &flow, Side::Destination, &nat)?;
            if let Some(id) = fragment_id {
                let key = steer::fragment_key(flow.saddr, flow.daddr, id, flow.proto, DIR_ORIGINAL);
                steer::remember_fragment(&key, nat.addr);
            }
            Ok(TC_ACT_OK as i32)
        }
    }
}

fn tc_egress(ctx: &TcContext) -> Result<i32, ()> {
    let (flow, fragment_id) = match parse(&TcBytes(ctx), ctx.len(), true) {
        Parsed::Flow(flow) => (flow, None),
        Parsed::FirstFragment(flow, id) => (flow, Some(id)),
        Parsed::Fragment {
            saddr,
            daddr,
            id,
            proto,
        } => {
            if let Some(vip) = steer::fragment_translation(&steer::fragment_key(
                saddr, daddr, id, proto, DIR_REPLY,
            )) {
                tc_rewrite_addr(ctx, IP_SRC_OFF, saddr, vip)?;
            }
            return Ok(TC_ACT_OK as i32);
        }
        Parsed::IcmpError(error) => {
            tc_icmp_toward_client(ctx, &error)?;
            return Ok(TC_ACT_OK as i32);
        }
        Parsed::Other | Parsed::Truncated { .. } => return Ok(TC_ACT_OK as i32),
        Parsed::Ipv6 => return Ok(IPV6_FRAME),
    };
    let Some(nat) = steer::reply(&flow, &TcBytes(ctx)) else {
        if let Some(id) = fragment_id {
            steer::forget_fragment(&steer::fragment_key(
                flow.saddr, flow.daddr, id, flow.proto, DIR_REPLY,
            ));
        }
        return Ok(TC_ACT_OK as i32);
    };
    tc_rewrite(ctx, &flow, Side::Source, &nat)?;
    if let Some(id) = fragment_id {
        let key = steer::fragment_key(flow.saddr, flow.daddr, id, flow.proto, DIR_REPLY);
        steer::remember_fragment(&key, nat.addr);
    }
    Ok(TC_ACT_OK as i32)
}

/// Rewrites the outer IPv4 source or destination address alone (later fragments, ICMP errors:
/// no L4 pseudo-header to fix).
fn tc_rewrite_addr(ctx: &TcContext, addr_off: usize, old: u32, new: u32) -> Result<(), ()> {
    ctx.l3_csum_replace(IP_CHECK_OFF, old as u64, new as u64, 4)
        .map_err(|_| ())?;
    ctx.store(addr_off, &new, 0).map_err(|_| ())
}

/// Reply direction: the quoted request went client → backend; the client sent it to the VIP.
/// The quoted destination becomes VIP:port again, and an error the backend itself sent comes
/// from the VIP.
fn tc_icmp_toward_client(ctx: &TcContext, error: &IcmpError) -> Result<(), ()> {
    let Some(nat) = steer::icmp_toward_client(&error.quoted) else {
        return Ok(());
    };
    let q = &error.quoted;
    tc_rewrite_quoted(ctx, error, QUOTED_DST, q.daddr, q.dport, &nat)?;
    if error.outer_saddr == q.daddr {
        tc_rewrite_addr(ctx, IP_SRC_OFF, error.outer_saddr, nat.addr)?;
    }
    Ok(())
}

/// Request direction: the quoted reply went VIP → client; the backend sent it. The quoted
/// source becomes the backend again, and an error addressed to the VIP goes to the backend.
fn tc_icmp_toward_backend(ctx: &TcContext, error: &IcmpError) -> Result<(), ()> {
    let Some(nat) = steer::icmp_toward_backend(&error.quoted) else {
        return Ok(());
    };
    let q = &error.quoted;
    tc_rewrite_quoted(ctx, error, QUOTED_SRC, q.saddr, q.sport, &nat)?;
    if error.outer_daddr == q.saddr {
        tc_rewrite_addr(ctx, IP_DST_OFF, error.outer_daddr, nat.addr)?;
    }
    Ok(())
}

/// Which end of the quoted packet is rewritten: (address offset in its IP header, port offset
/// in its L4 header).
const QUOTED_SRC: (usize, usize) = (12, 0);
const QUOTED_DST: (usize, usize) = (16, 2);

/// Rewrites one end of the packet quoted in an ICMP error: its address, port, IP checksum and
/// (when quoted) L4 checksum, and the ICMP checksum over all of them. ICMP errors are whole
/// packets with complete checksums, so each is updated incrementally; the stores keep a
/// CHECKSUM_COMPLETE skb's sum in step. (Inlined: BPF calls take at most five arguments.)
#[inline(always)]
fn tc_rewrite_quoted(
    ctx: &TcContext,
    error: &IcmpError,
    (addr_field, port_field): (usize, usize),
    old_addr: u32,
    old_port: u16,
    nat: &Nat,
) -> Result<(), ()> {
    let flags = BPF_F_RECOMPUTE_CSUM as u64;
    let icmp_check_off = error.icmp_off + 2;
    let mut icmp_check: u16 = ctx.load(icmp_check_off).map_err(|_| ())?;
    // The quoted L4 checksum covers the addresses (pseudo-header) and the port; it is there
    // when the error quotes enough of the packet (Linux quotes up to 576 bytes).
    let udp = error.quoted.proto == PROTO_UDP;
    let l4_check_off = error.inner_l4_off + if udp { UDP_CHECK_OFF } else { TCP_CHECK_OFF };
    if let Ok(old) = ctx.load::<u16>(l4_check_off)
        && !(udp && old == 0)
    {
        let new = csum::replace16(csum::replace32(old, old_addr, nat.addr), old_port, nat.port);
        let new = if udp { csum::udp_mangled(new) } else { new };
        ctx.store(l4_check_off, &new, flags).map_err(|_| ())?;
        icmp_check = csum::replace16(icmp_check, old, new);
    }
    let ip_check_off = error.inner_ip_off + 10;
    let old_ip_check: u16 = ctx.load(ip_check_off).map_err(|_| ())?;
    let new_ip_check = csum::replace32(old_ip_check, old_addr, nat.addr);
    ctx.store(ip_check_off, &new_ip_check, flags)
        .map_err(|_| ())?;
    icmp_check = csum::replace16(icmp_check, old_ip_check, new_ip_check);
    ctx.store(error.inner_ip_off + addr_field, &nat.addr, flags)
        .map_err(|_| ())?;
    icmp_check = csum::replace32(icmp_check, old_addr, nat.addr);
    ctx.store(error.inner_l4_off + port_field, &nat.port, flags)
        .map_err(|_| ())?;
    icmp_check = csum::replace16(icmp_check, old_port, nat.port);
    ctx.store(icmp_check_off, &icmp_check, flags)
        .map_err(|_| ())
}

fn drop_if_vip<A: Family>(daddr: A, reason: DropReason) -> i32 {
    if steer::is_vip(daddr) {
        steer::count_drop(reason);
        TC_ACT_SHOT as i32
    } else {
        TC_ACT_OK as i32
    }
}

/// Which end of a packet a translation rewrites: the destination of requests, the source of
/// replies.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// Rewrites one address and its port, with the L4 and IP checksums.
fn tc_rewrite(ctx: &TcContext, flow: &Flow, side: Side, nat: &Nat) -> Result<(), ()> {
    let l4_off = flow.l4_off as usize;
    let (old_addr, old_port) = match side {
        Side::Source => (flow.saddr, flow.sport),
        Side::Destination => (flow.daddr, flow.dport),
    };
    let (check_off, mangled) = if flow.proto == PROTO_TCP {
        (l4_off + TCP_CHECK_OFF, 0)
    } else {
        // UDP checksum 0 means "none": the helper leaves it 0 and writes a computed 0 as 0xffff.
        (l4_off + UDP_CHECK_OFF, BPF_F_MARK_MANGLED_0 as u64)
    };
    let (new_addr, new_port) = (nat.addr, nat.port);
    // A UDP datagram without checksum (0): the helpers below leave it 0, and nothing cancels
    // the port's change in a CHECKSUM_COMPLETE skb's sum, so its store adds it.
    let store_flags = if mangled != 0 && TcBytes(ctx).read::<u16>(check_off) == Some(0) {
        BPF_F_RECOMPUTE_CSUM as u64
    } else {
        0
    };
    // The L4 checksum through the helper: it knows how the skb's checksum is kept (a
    // CHECKSUM_PARTIAL one holds only the pseudo-header sum, which the port is not part of).
    ctx.l4_csum_replace(
        check_off,
        old_addr as u64,
        new_addr as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled | 4,
    )
    .map_err(|_| ())?;
    ctx.l4_csum_replace(check_off, old_port as u64, new_port as u64, mangled | 2)
        .map_err(|_| ())?;
    if l4_off == ETH_HLEN + Ipv4Hdr::LEN {
        // Without IP options the IP checksum, both addresses and both ports are one run of bytes:
        // one store instead of the IP checksum helper and two stores. The IP header's sum stays
        // what it was, so a CHECKSUM_COMPLETE skb's sum needs no change for it (nor did it with
        // the helper); the port's change is offset by the L4 checksum's, as before.
        let old_check: u16 = TcBytes(ctx).read(IP_CHECK_OFF).ok_or(())?;
        let check = csum::replace32(old_check, old_addr, new_addr);
        let (saddr, daddr, sport, dport) = match side {
            Side::Source => (new_addr, flow.daddr, new_port, flow.dport),
            Side::Destination => (flow.saddr, new_addr, flow.sport, new_port),
        };
        let run = NatRun {
            check: check.to_ne_bytes(),
            saddr: saddr.to_ne_bytes(),
            daddr: daddr.to_ne_bytes(),
            sport: sport.to_ne_bytes(),
            dport: dport.to_ne_bytes(),
        };
        return ctx.store(IP_CHECK_OFF, &run, store_flags).map_err(|_| ());
    }
    let (addr_off, port_field) = match side {
        Side::Source => (IP_SRC_OFF, 0),
        Side::Destination => (IP_DST_OFF, 2),
    };
    ctx.l3_csum_replace(IP_CHECK_OFF, old_addr as u64, new_addr as u64, 4)
        .map_err(|_| ())?;
    ctx.store(addr_off, &new_addr, 0).map_err(|_| ())?;
    ctx.store(l4_off + port_field, &new_port, store_flags)
        .map_err(|_| ())?;
    Ok(())
}

/// An IPv4 header without options from its checksum on, and the ports after it: the bytes a
/// translation changes, in wire order.
#[repr(C)]
#[derive(Clone, Copy)]
struct NatRun {
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
}

// ---------------------------------------------------------------------------------------------
// IPv6 (TC only: XDP passes IPv6 to the stack, and so to TC ingress). The same steering code as
// IPv4 (steer.rs, over the `Family` of the address), with its own maps, compiled into programs
// of their own that the attached ones tail-call for IPv6 frames (Cilium's layout): each
// program gets the verifier's whole budget and stack, and the IPv4 path stays as it was.

/// The IPv6 programs, by slot (the agent fills the map after loading them).
#[aya_ebpf::macros::map(name = "GS_TAIL_CALLS")]
static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Runs the IPv6 program in `slot`, which does not return here. If the slot is empty (an agent
/// that never filled it), the frame passes unsteered and is counted.
#[inline(always)]
fn to_ipv6_program(ctx: &TcContext, slot: u32) -> i32 {
    // SAFETY: a tail call replaces this program; on failure execution continues here.
    unsafe { TAIL_CALLS.tail_call(ctx, slot) };
    steer::count_ct(ct_stats::IPV6_UNSTEERED);
    TC_ACT_OK as i32
}

#[classifier]
pub(crate) fn geosteer_tc_ingress6(ctx: TcContext) -> i32 {
    tc_action(tc_ingress6(&ctx))
}

#[classifier]
pub(crate) fn geosteer_tc_egress6(ctx: TcContext) -> i32 {
    tc_action(tc_egress6(&ctx))
}

const IP6_SRC_OFF: usize = ETH_HLEN + 8;
const IP6_DST_OFF: usize = ETH_HLEN + 24;
/// Extension headers walked before the L4 header (Cilium's `IPV6_MAX_HEADERS`): more is a
/// counted drop when addressed to a VIP, never a pass — padding headers must not carry a
/// client to a backend unsteered.
const IPV6_MAX_EXT_HEADERS: usize = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// `BPF_F_IPV6` (Linux 6.16): tells bpf_l4_csum_replace that a pseudo-header change belongs to
/// IPv6, whose header has no checksum to absorb it in a CHECKSUM_COMPLETE skb's sum. Older
/// kernels refuse the flag; the rewrite then fixes the sum another way (see [`tc_rewrite6`]).
const BPF_F_IPV6: u64 = 1 << 7;

const PROTO_ICMPV6: u8 = 58;
/// ICMPv6 errors (RFC 4443: destination unreachable, packet too big, time exceeded, parameter
/// problem): types 1 to 4, each quoting the packet that caused it.
const ICMPV6_ERRORS: core::ops::RangeInclusive<u8> = 1..=4;

/// What [`parse6`] found.
enum Parsed6 {
    /// A TCP or UDP packet: the flow is filled in.
    Flow,
    /// The first fragment of a datagram (its 32-bit id): ports, so steered like any packet,
    /// and remembered for the fragments that follow (`flow.fragmented` is set).
    FirstFragment { id: u32 },
    /// A fragment other than the first: no ports; it follows its first fragment's translation.
    /// Without one, a TCP or UDP datagram's (`tcp_udp`, its fragment header's next header) to a
    /// VIP cannot be steered; another protocol's passes. The flow's addresses are filled in.
    Fragment { id: u32, tcp_udp: bool },
    /// An ICMPv6 error whose header starts at this offset; the flow's addresses are the
    /// error's own.
    IcmpError { icmp_off: u32 },
    /// Not TCP/UDP (neighbour discovery, echo, AH, ESP, …): never touched.
    Other,
    /// A packet that cannot be steered: dropped for this reason when addressed to a VIP (the
    /// flow's `daddr`), else left alone.
    Unsteerable(DropReason),
}

/// Reads an IPv6 TCP or UDP packet's headers into `flow`, through up to
/// [`IPV6_MAX_EXT_HEADERS`] extension headers (hop-by-hop, routing, fragment, destination
/// options). Not inlined, and writing into the caller's flow: the IPv6 path's stack has no room
/// for a second copy of the flow or for the header copies made here.
#[inline(never)]
fn parse6(bytes: &impl PacketBytes, flow: &mut Flow<Addr6>) -> Parsed6 {
    // The fixed header in three reads (version to hop limit, source, destination).
    let Some(daddr) = bytes.read::<Addr6>(IP6_DST_OFF) else {
        return Parsed6::Other; // too short to hold an address: cannot be for a VIP
    };
    flow.daddr = daddr;
    let Some(head) = bytes.read::<[u8; 8]>(ETH_HLEN) else {
        return Parsed6::Other;
    };
    let Some(saddr) = bytes.read::<Addr6>(IP6_SRC_OFF) else {
        return Parsed6::Other;
    };
    flow.saddr = saddr;
    let truncated = Parsed6::Unsteerable(DropReason::Truncated);
    if head[0] >> 4 != 6 {
        return truncated;
    }
    let Some((next, l4_off, first_fragment)) =
        walk_ext_headers(bytes, head[6], ETH_HLEN + Ipv6Hdr::LEN)
    else {
        return truncated;
    };
    let first_fragment = match first_fragment {
        Fragmentation::Whole => None,
        Fragmentation::First(id) => Some(id),
        Fragmentation::Later(id) => {
            return Parsed6::Fragment {
                id,
                tcp_udp: next == PROTO_TCP || next == PROTO_UDP,
            };
        }
    };
    match next {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMPV6 if first_fragment.is_none() => {
            // Type and code (a one-byte read's bounds check compiles to a form the verifier
            // does not follow).
            let Some([icmp_type, _code]) = bytes.read::<[u8; 2]>(l4_off) else {
                return Parsed6::Other;
            };
            if !ICMPV6_ERRORS.contains(&icmp_type) {
                return Parsed6::Other;
            }
            return Parsed6::IcmpError {
                icmp_off: l4_off as u32,
            };
        }
        // More extension headers than the walk takes.
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT => return truncated,
        _ => return Parsed6::Other,
    }
    flow.proto = next;
    flow.l4_off = l4_off as u32;
    if next == PROTO_TCP {
        let Some(tcp) = bytes.read::<[u8; TcpHdr::LEN]>(l4_off) else {
            return truncated;
        };
        // A payload length of 0 with TCP behind it is a GRO packet past 64 KiB (BIG TCP, which
        // leaves the field 0): it ends with the frame.
        let payload_len = u32::from(u16::from_be_bytes([head[4], head[5]]));
        let ip_end = if payload_len == 0 {
            flow.len
        } else {
            (ETH_HLEN + Ipv6Hdr::LEN) as u32 + payload_len
        };
        set_tcp(flow, ip_end, &tcp);
    } else {
        let Some(udp) = bytes.read::<UdpHdr>(l4_off) else {
            return truncated;
        };
        flow.sport = u16::from_ne_bytes(udp.src);
        flow.dport = u16::from_ne_bytes(udp.dst);
    }
    match first_fragment {
        Some(id) => {
            flow.fragmented = true;
            Parsed6::FirstFragment { id }
        }
        None => Parsed6::Flow,
    }
}

/// Whether an IPv6 packet is a fragment, and which (by its datagram's id).
enum Fragmentation {
    /// No fragment header, or an atomic fragment (offset 0, no more fragments: RFC 6946 has
    /// it handled as the whole datagram it is).
    Whole,
    First(u32),
    /// Offset past 0: the L4 header is in another fragment.
    Later(u32),
}

/// Walks up to [`IPV6_MAX_EXT_HEADERS`] extension headers from `off`, where a header of type
/// `next` starts: the type of the header it stops at (the L4 protocol, unless the chain is
/// longer), where that starts, and what a fragment header on the way said. `None` when the
/// packet ends inside the chain or a routing header has segments left. Stops at a later
/// fragment's fragment header (nothing after it is a header).
#[inline(always)]
fn walk_ext_headers(
    bytes: &impl PacketBytes,
    mut next: u8,
    mut off: usize,
) -> Option<(u8, usize, Fragmentation)> {
    let mut fragmentation = Fragmentation::Whole;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                // Next header, length; a routing header's type and segments left.
                let [next_hdr, ext_len, _, segments_left] = bytes.read::<[u8; 4]>(off)?;
                if next == NEXTHDR_ROUTING && segments_left != 0 {
                    // The destination is a waypoint, not where the packet ends: its L4
                    // checksum is over the final one (RFC 8200 8.1), and a VIP is no router.
                    return None;
                }
                next = next_hdr;
                off += (usize::from(ext_len) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                // Next header, reserved, offset (13 bits) and flags (M is the lowest), id.
                let header = bytes.read::<[u8; 8]>(off)?;
                let id = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
                if u16::from_be_bytes([header[2], header[3]]) & !7 != 0 {
                    return Some((header[0], off + 8, Fragmentation::Later(id)));
                }
                if header[3] & 1 != 0 {
                    fragmentation = Fragmentation::First(id);
                }
                next = header[0];
                off += 8;
            }
            _ => break,
        }
    }
    Some((next, off, fragmentation))
}

/// Per-CPU room for the IPv6 flow being handled (slot 0 TC ingress, 1 TC egress, 2 XDP): on
/// the stack it would not leave the rest of the path enough of the program's 512 bytes. Every
/// program runs with bottom halves off, so nothing else uses a CPU's slot meanwhile (as
/// `HEAD_SCRATCH`).
#[aya_ebpf::macros::map(name = "GS_FLOW6_SCRATCH")]
static FLOW6_SCRATCH: PerCpuArray<Flow<Addr6>> = PerCpuArray::with_max_entries(3, 0);
const FLOW6_XDP: u32 = 2;

/// This CPU's IPv6 flow slot, reset for a packet of `len` bytes (every other field is written
/// by [`parse6`] or stays 0).
#[inline(always)]
fn flow6_slot(slot: u32, len: u32) -> Result<&'static mut Flow<Addr6>, ()> {
    let flow = FLOW6_SCRATCH.get_ptr_mut(slot).ok_or(())?;
    // SAFETY: this CPU's slot, used by one program run at a time (see FLOW6_SCRATCH).
    let flow = unsafe { &mut *flow };
    *flow = Flow {
        saddr: Addr6::default(),
        daddr: Addr6::default(),
        sport: 0,
        dport: 0,
        proto: 0,
        tcp_flags: 0,
        l4_off: 0,
        payload_off: 0,
        payload_len: 0,
        seq: 0,
        ack: 0,
        len,
        fragmented: false,
    };
    Ok(flow)
}

fn tc_ingress6(ctx: &TcContext) -> Result<i32, ()> {
    let flow = flow6_slot(0, ctx.len())?;
    let first_fragment = match parse6(&TcBytes(ctx), flow) {
        Parsed6::Flow => None,
        Parsed6::FirstFragment { id } => Some(id),
        Parsed6::Fragment { id, tcp_udp } => return tc_fragment6(ctx, id, DIR_ORIGINAL, tcp_udp),
        Parsed6::IcmpError { icmp_off } => {
            tc_icmp6(ctx, icmp_off, DIR_ORIGINAL)?;
            return Ok(TC_ACT_OK as i32);
        }
        Parsed6::Other => return Ok(TC_ACT_OK as i32),
        Parsed6::Unsteerable(reason) => return Ok(drop_if_vip(flow.daddr, reason)),
    };
    // Each arm deals with the fragment itself, as on the IPv4 path.
    match steer::request(flow, &TcBytes(ctx)) {
        Verdict::Pass => {
            if let Some(id) = first_fragment {
                forget_fragment6(ctx, id, DIR_ORIGINAL);
            }
            Ok(TC_ACT_OK as i32)
        }
        Verdict::Drop(reason) => {
            if let Some(id) = first_fragment {
                forget_fragment6(ctx, id, DIR_ORIGINAL);
            }
            steer::note_drop(flow, reason);
            Ok(TC_ACT_SHOT as i32)
        }
        Verdict::Nat(nat) => {
            // Remembered first: the key is read from the packet before it is rewritten.
            if let Some(id) = first_fragment {
                remember_fragment6(ctx, id, DIR_ORIGINAL, &nat.addr);
            }
            tc_rewrite6(ctx, flow, Side::Destination, &nat)?;
            Ok(TC_ACT_OK as i32)
        }
    }
}

fn tc_egress6(ctx: &TcContext) -> Result<i32, ()> {
    let flow = flow6_slot(1, ctx.len())?;
    let first_fragment = match parse6(&TcBytes(ctx), flow) {
        Parsed6::Flow => None,
        Parsed6::FirstFragment { id } => Some(id),
        Parsed6::Fragment { id, .. } => return tc_fragment6(ctx, id, DIR_REPLY, false),
        Parsed6::IcmpError { icmp_off } => {
            tc_icmp6(ctx, icmp_off, DIR_REPLY)?;
            return Ok(TC_ACT_OK as i32);
        }
        Parsed6::Other | Parsed6::Unsteerable(_) => return Ok(TC_ACT_OK as i32),
    };
    let Some(nat) = steer::reply(flow, &TcBytes(ctx)) else {
        if let Some(id) = first_fragment {
            forget_fragment6(ctx, id, DIR_REPLY);
        }
        return Ok(TC_ACT_OK as i32);
    };
    if let Some(id) = first_fragment {
        remember_fragment6(ctx, id, DIR_REPLY, &nat.addr);
    }
    tc_rewrite6(ctx, flow, Side::Source, &nat)?;
    Ok(TC_ACT_OK as i32)
}

/// The fragment map's key for the packet's datagram, its addresses as they are in the packet
/// (before any rewrite). These functions read the packet rather than take the flow: handed a
/// flow, LLVM passes its addresses by value, more arguments than a BPF call takes; and they
/// are not inlined, as the IPv6 path's stack has no room for a 40-byte key beside the rest.
#[inline(always)]
fn fragment_key6(ctx: &TcContext, id: u32, direction: u8) -> Option<FragmentKey6> {
    Some(FragmentKey6 {
        saddr: TcBytes(ctx).read(IP6_SRC_OFF)?,
        daddr: TcBytes(ctx).read(IP6_DST_OFF)?,
        id,
        direction,
        _pad: [0; 3],
    })
}

#[inline(never)]
fn remember_fragment6(ctx: &TcContext, id: u32, direction: u8, to: &Addr6) {
    if let Some(key) = fragment_key6(ctx, id, direction) {
        steer::remember_fragment(&key, *to);
    }
}

#[inline(never)]
fn forget_fragment6(ctx: &TcContext, id: u32, direction: u8) {
    if let Some(key) = fragment_key6(ctx, id, direction) {
        steer::forget_fragment(&key);
    }
}

/// A fragment other than the first: it gets its first fragment's translation (the backend as
/// destination, the VIP as source), whatever follows its fragment header (the first
/// fragment's chain decided). With none, a TCP or UDP datagram's to a VIP is dropped, counted
/// (it cannot be steered); another protocol's (a large ping's, as over IPv4) and a reply's
/// pass. IPv6 has no header checksum and a later fragment no L4
/// header: the address is all there is to change.
#[inline(never)]
fn tc_fragment6(ctx: &TcContext, id: u32, direction: u8, tcp_udp: bool) -> Result<i32, ()> {
    let key = fragment_key6(ctx, id, direction).ok_or(())?;
    let flags = BPF_F_RECOMPUTE_CSUM as u64;
    if direction == DIR_REPLY {
        if let Some(vip) = steer::fragment_translation(&key) {
            ctx.store(IP6_SRC_OFF, &vip, flags).map_err(|_| ())?;
        }
        return Ok(TC_ACT_OK as i32);
    }
    if !steer::is_vip(key.daddr) {
        return Ok(TC_ACT_OK as i32);
    }
    match steer::fragment_translation(&key) {
        Some(backend) => {
            ctx.store(IP6_DST_OFF, &backend, flags).map_err(|_| ())?;
            Ok(TC_ACT_OK as i32)
        }
        None if tcp_udp => {
            steer::count_drop(DropReason::Fragment);
            Ok(TC_ACT_SHOT as i32)
        }
        None => Ok(TC_ACT_OK as i32),
    }
}

/// Translates an ICMPv6 error about a steered flow, as [`tc_icmp_toward_client`] (`direction`
/// reply) and [`tc_icmp_toward_backend`] (original) do for IPv4: the quoted packet's translated
/// end (address, port, its L4 checksum) and, where the backend sent the error or the VIP is to
/// receive it, the outer address. The ICMPv6 checksum covers all of it and the outer addresses
/// (a pseudo-header, unlike ICMPv4's), and is updated incrementally: an error is a whole
/// packet with a complete checksum. Every store keeps a CHECKSUM_COMPLETE skb's sum in step.
#[inline(never)]
fn tc_icmp6(ctx: &TcContext, icmp_off: u32, direction: u8) -> Result<(), ()> {
    let bytes = TcBytes(ctx);
    // A no-op (the header chain before it is at most 4 × 2 KiB long) that bounds the offsets
    // below for the verifier, which otherwise loses the bound of a read's check here.
    let icmp_off = (icmp_off & 0x3fff) as usize;
    let inner_ip_off = icmp_off + 8;
    let Some(head) = bytes.read::<[u8; 8]>(inner_ip_off) else {
        return Ok(());
    };
    let (Some(saddr), Some(daddr)) = (
        bytes.read::<Addr6>(inner_ip_off + 8),
        bytes.read::<Addr6>(inner_ip_off + 24),
    ) else {
        return Ok(());
    };
    if head[0] >> 4 != 6 {
        return Ok(());
    }
    // A quoted later fragment has no ports: nothing to match it with.
    let Some((proto, l4_off, Fragmentation::Whole | Fragmentation::First(_))) =
        walk_ext_headers(&bytes, head[6], inner_ip_off + Ipv6Hdr::LEN)
    else {
        return Ok(());
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(());
    }
    let Some([sport, dport]) = bytes.read::<[u16; 2]>(l4_off) else {
        return Ok(());
    };
    let quoted = Quoted {
        saddr,
        daddr,
        sport,
        dport,
        proto,
    };
    // The translation, the quoted end it replaces (address and port, and their offsets in the
    // quoted headers), and the outer address that may be the same end.
    let (nat, old_addr, old_port, addr_field, port_field, outer_off) = if direction == DIR_REPLY {
        let Some(nat) = steer::icmp_toward_client(&quoted) else {
            return Ok(());
        };
        (nat, daddr, dport, 24, 2, IP6_SRC_OFF)
    } else {
        let Some(nat) = steer::icmp_toward_backend(&quoted) else {
            return Ok(());
        };
        (nat, saddr, sport, 8, 0, IP6_DST_OFF)
    };
    let flags = BPF_F_RECOMPUTE_CSUM as u64;
    let icmp_check_off = icmp_off + 2;
    let mut icmp_check: u16 = ctx.load(icmp_check_off).map_err(|_| ())?;
    let udp = proto == PROTO_UDP;
    let l4_check_off = l4_off + if udp { UDP_CHECK_OFF } else { TCP_CHECK_OFF };
    if let Ok(old) = ctx.load::<u16>(l4_check_off)
        && !(udp && old == 0)
    {
        let new = csum::replace16(
            csum::replace128(old, old_addr.0, nat.addr.0),
            old_port,
            nat.port,
        );
        let new = if udp { csum::udp_mangled(new) } else { new };
        ctx.store(l4_check_off, &new, flags).map_err(|_| ())?;
        icmp_check = csum::replace16(icmp_check, old, new);
    }
    ctx.store(inner_ip_off + addr_field, &nat.addr, flags)
        .map_err(|_| ())?;
    icmp_check = csum::replace128(icmp_check, old_addr.0, nat.addr.0);
    ctx.store(l4_off + port_field, &nat.port, flags)
        .map_err(|_| ())?;
    icmp_check = csum::replace16(icmp_check, old_port, nat.port);
    if bytes.read::<Addr6>(outer_off) == Some(old_addr) {
        ctx.store(outer_off, &nat.addr, flags).map_err(|_| ())?;
        icmp_check = csum::replace128(icmp_check, old_addr.0, nat.addr.0);
    }
    ctx.store(icmp_check_off, &icmp_check, flags)
        .map_err(|_| ())
}

/// Rewrites one IPv6 address and its port, with the L4 checksum (IPv6 has no header checksum):
/// the address's change as one `bpf_csum_diff` of the 16 bytes, into the pseudo-header part
/// (Cilium `lib/lb.h` `lb6_xlate`).
#[inline(never)]
fn tc_rewrite6(
    ctx: &TcContext,
    flow: &Flow<Addr6>,
    side: Side,
    nat: &Nat<Addr6>,
) -> Result<(), ()> {
    let l4_off = flow.l4_off as usize;
    let (old_addr, old_port, addr_off, port_field) = match side {
        Side::Source => (flow.saddr, flow.sport, IP6_SRC_OFF, 0),
        Side::Destination => (flow.daddr, flow.dport, IP6_DST_OFF, 2),
    };
    let (check_off, mangled) = if flow.proto == PROTO_TCP {
        (l4_off + TCP_CHECK_OFF, 0)
    } else {
        // UDP checksum 0 (RFC 6935's zero-checksum UDP, a tunnel's): the helpers leave it 0,
        // as over IPv4, and a computed 0 is written as 0xffff.
        (l4_off + UDP_CHECK_OFF, BPF_F_MARK_MANGLED_0 as u64)
    };
    if mangled != 0 && TcBytes(ctx).read::<u16>(check_off) == Some(0) {
        // No checksum to carry the change: a CHECKSUM_COMPLETE skb's sum takes the address's
        // and the port's.
        let flags = BPF_F_RECOMPUTE_CSUM as u64;
        ctx.store(addr_off, &nat.addr, flags).map_err(|_| ())?;
        return ctx
            .store(l4_off + port_field, &nat.port, flags)
            .map_err(|_| ());
    }
    let (mut from, mut to) = (old_addr.0, nat.addr.0);
    // SAFETY: both buffers are 16 bytes on this stack frame, as the sizes say.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return Err(());
    }
    // A CHECKSUM_COMPLETE skb's sum covers the address and the L4 checksum, whose changes
    // cancel: with BPF_F_IPV6 the helper leaves the sum alone. A kernel without the flag (the
    // helper refuses it before touching anything) folds the checksum's change into the sum, so
    // the address is then stored with BPF_F_RECOMPUTE_CSUM, which adds the address's change.
    let flags = BPF_F_PSEUDO_HDR as u64 | mangled;
    let store_flags = if ctx
        .l4_csum_replace(check_off, 0, diff as u64, flags | BPF_F_IPV6)
        .is_ok()
    {
        0
    } else {
        ctx.l4_csum_replace(check_off, 0, diff as u64, flags)
            .map_err(|_| ())?;
        BPF_F_RECOMPUTE_CSUM as u64
    };
    ctx.l4_csum_replace(check_off, old_port as u64, nat.port as u64, mangled | 2)
        .map_err(|_| ())?;
    ctx.store(addr_off, &nat.addr, store_flags)
        .map_err(|_| ())?;
    ctx.store(l4_off + port_field, &nat.port, 0).map_err(|_| ())
}

// ---------------------------------------------------------------------------------------------
// XDP: direct packet access; checksums are updated incrementally here (no skb, no helpers).
// Packets reaching XDP from a wire carry complete checksums. (A veth peer with TX checksum
// offload hands over CHECKSUM_PARTIAL packets whose L4 checksum field is only the pseudo-header
// sum; the lab turns that offload off on XDP-facing veths.)

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

fn xdp_request(ctx: &XdpContext) -> Result<u32, ()> {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let flow = match parse(&XdpBytes(ctx), len, false) {
        Parsed::Ipv6 => return Ok(XDP_IPV6_FRAME),
        // ICMP errors are translated in TC.
        Parsed::Other | Parsed::IcmpError(_) => return Ok(xdp_action::XDP_PASS),
        // Fragments follow their first fragment through the fragment map, in TC: XDP leaves the
        // whole datagram to it.
        Parsed::FirstFragment(..) | Parsed::Fragment { .. } => return Ok(xdp_action::XDP_PASS),
        Parsed::Truncated { daddr } => return Ok(xdp_drop_if_vip(daddr, DropReason::Truncated)),
        Parsed::Flow(flow) => flow,
    };
    let nat = match steer::request(&flow, &XdpBytes(ctx)) {
        Verdict::Pass => return Ok(xdp_action::XDP_PASS),
        Verdict::Drop(reason) => {
            steer::note_drop(&flow, reason);
            return Ok(xdp_action::XDP_DROP);
        }
        Verdict::Nat(nat) => nat,
    };
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(())?;
    let l4_off = flow.l4_off as usize;
    // SAFETY: every pointer below was bounds-checked by ptr_at against data_end.
    unsafe {
        if flow.proto == PROTO_TCP {
            let tcp = ptr_at::<TcpHdr>(ctx, l4_off).ok_or(())?;
            let check = u16::from_ne_bytes((*tcp).check);
            let check = csum::replace32(check, flow.daddr, nat.addr);
            let check = csum::replace16(check, flow.dport, nat.port);
            (*tcp).check = check.to_ne_bytes();
            (*tcp).dest = nat.port.to_ne_bytes();
        } else {
            let udp = ptr_at::<UdpHdr>(ctx, l4_off).ok_or(())?;
            let check = u16::from_ne_bytes((*udp).check);
            if check != 0 {
                let check = csum::replace32(check, flow.daddr, nat.addr);
                let check = csum::replace16(check, flow.dport, nat.port);
                (*udp).check = csum::udp_mangled(check).to_ne_bytes();
            }
            (*udp).dst = nat.port.to_ne_bytes();
        }
        let check = u16::from_ne_bytes((*ip).check);
        (*ip).check = csum::replace32(check, flow.daddr, nat.addr).to_ne_bytes();
        (*ip).dst_addr = nat.addr.to_ne_bytes();
    }
    Ok(xdp_forward(ctx, &flow, nat.addr))
}

/// Forwards a DNATed packet straight to the next hop's interface when the FIB knows it; otherwise
/// hands it to the stack (which routes it, resolving the neighbour if needed).
fn xdp_forward(ctx: &XdpContext, flow: &Flow, daddr: u32) -> u32 {
    let mut params = fib_params(ctx, AF_INET, flow);
    params.__bindgen_anon_3.ipv4_src = flow.saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    if !vouched_next_hop(ctx, &mut params) {
        return xdp_action::XDP_PASS;
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked above.
    unsafe {
        if (*ip).ttl <= 1 {
            return xdp_action::XDP_PASS; // let the stack send ICMP time exceeded
        }
        // TTL and protocol share one 16-bit checksum word.
        let old = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        let check = u16::from_ne_bytes((*ip).check);
        (*ip).check = csum::replace16(check, old, new).to_ne_bytes();
    }
    redirect(eth, &params)
}

/// The FIB lookup's parameters for a translated request of `flow` (family `family`) arriving
/// on this device, but for its addresses.
#[inline(always)]
fn fib_params<A>(ctx: &XdpContext, family: u8, flow: &Flow<A>) -> bpf_fib_lookup {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid starting state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = family;
    params.l4_protocol = flow.proto;
    params.sport = flow.sport;
    params.dport = 0;
    // SAFETY: ctx.ctx is the xdp_md the program was called with.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    params.__bindgen_anon_1.tot_len = (flow.len as usize - ETH_HLEN) as u16;
    params
}

/// Looks the next hop up in the FIB: whether there is one XDP may redirect to. Only to a
/// device vouched for: the packet is translated either way, and the stack forwards what XDP
/// does not.
#[inline(always)]
fn vouched_next_hop(ctx: &XdpContext, params: &mut bpf_fib_lookup) -> bool {
    // SAFETY: params lives on the caller's stack frame for the duration of the call.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return false;
    }
    if steer::XDP_TARGETS.get(params.ifindex).is_none() {
        steer::count_ct(ct_stats::XDP_PASSED_TO_STACK);
        return false;
    }
    true
}

/// Sends the frame to the next hop [`vouched_next_hop`] found.
#[inline(always)]
fn redirect(eth: *mut EthHdr, params: &bpf_fib_lookup) -> u32 {
    // SAFETY: the caller bounds-checked the Ethernet header.
    unsafe {
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
    }
    steer::XDP_TARGETS
        .redirect(params.ifindex, 0)
        .unwrap_or(xdp_action::XDP_DROP)
}

/// What [`xdp_request`] returns for an IPv6 frame: the program then tail-calls its IPv6
/// counterpart.
const XDP_IPV6_FRAME: u32 = u32::MAX;

/// The IPv6 XDP program, in slot [`program_names::TAIL_XDP6`].
#[aya_ebpf::macros::map(name = "GS_XDP_TAIL_CALLS")]
static XDP_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub(crate) fn geosteer_xdp6(ctx: XdpContext) -> u32 {
    match xdp_request6(&ctx) {
        Ok(action) => action,
        Err(()) => {
            steer::count_drop(DropReason::Internal);
            xdp_action::XDP_DROP
        }
    }
}

/// IPv6 requests at the driver, as [`xdp_request`] does IPv4's: a TCP or UDP packet to a VIP
/// is translated here and forwarded; fragments and ICMPv6 go on to TC, which follows and
/// translates them.
fn xdp_request6(ctx: &XdpContext) -> Result<u32, ()> {
    let flow = flow6_slot(FLOW6_XDP, (ctx.data_end() - ctx.data()) as u32)?;
    match parse6(&XdpBytes(ctx), flow) {
        Parsed6::Flow => {}
        Parsed6::FirstFragment { .. }
        | Parsed6::Fragment { .. }
        | Parsed6::IcmpError { .. }
        | Parsed6::Other => return Ok(xdp_action::XDP_PASS),
        Parsed6::Unsteerable(reason) => return Ok(xdp_drop_if_vip(flow.daddr, reason)),
    }
    let nat = match steer::request(flow, &XdpBytes(ctx)) {
        Verdict::Pass => return Ok(xdp_action::XDP_PASS),
        Verdict::Drop(reason) => {
            steer::note_drop(flow, reason);
            return Ok(xdp_action::XDP_DROP);
        }
        Verdict::Nat(nat) => nat,
    };
    Ok(xdp_translate6(ctx, &nat))
}

/// Translates a request (its flow in this CPU's XDP slot) to `nat` and forwards it as
/// [`xdp_forward`] does IPv4's: the FIB's next hop, the hop limit lowered (no header checksum
/// to mend), redirected only to a vouched target. A call of its own: its locals (the lookup's
/// 64 bytes) beside the request path's frames would pass the 512-byte stack.
#[inline(never)]
fn xdp_translate6(ctx: &XdpContext, nat: &Nat<Addr6>) -> u32 {
    let Some(flow) = FLOW6_SCRATCH.get(FLOW6_XDP) else {
        return xdp_action::XDP_PASS;
    };
    if xdp_rewrite6(ctx, flow, nat).is_err() {
        steer::count_drop(DropReason::Internal);
        return xdp_action::XDP_DROP;
    }
    let mut params = fib_params(ctx, AF_INET6, flow);
    params.__bindgen_anon_3.ipv6_src = flow.saddr.0;
    params.__bindgen_anon_4.ipv6_dst = nat.addr.0;
    if !vouched_next_hop(ctx, &mut params) {
        return xdp_action::XDP_PASS;
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked above.
    unsafe {
        if (*ip).hop_limit <= 1 {
            return xdp_action::XDP_PASS; // let the stack send ICMPv6 time exceeded
        }
        (*ip).hop_limit -= 1;
    }
    redirect(eth, &params)
}

/// The destination address and port and the L4 checksum, in place.
#[inline(always)]
fn xdp_rewrite6(ctx: &XdpContext, flow: &Flow<Addr6>, nat: &Nat<Addr6>) -> Result<(), ()> {
    // A no-op (the chain is at most 4 × 2 KiB long) that bounds the offset for the verifier:
    // the flow is in a map, whose contents it knows nothing of.
    let l4_off = (flow.l4_off & 0x3fff) as usize;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).ok_or(())?;
    // SAFETY: every pointer below was bounds-checked by ptr_at against data_end.
    unsafe {
        // The L4 checksum covers the address (pseudo-header) and the port; a UDP checksum of
        // 0 (none) stays 0.
        let (check, port) = if flow.proto == PROTO_TCP {
            let tcp = ptr_at::<TcpHdr>(ctx, l4_off).ok_or(())?;
            (&mut (*tcp).check, &mut (*tcp).dest)
        } else {
            let udp = ptr_at::<UdpHdr>(ctx, l4_off).ok_or(())?;
            (&mut (*udp).check, &mut (*udp).dst)
        };
        if flow.proto == PROTO_TCP || *check != [0, 0] {
            let sum = csum::replace128(u16::from_ne_bytes(*check), flow.daddr.0, nat.addr.0);
            let sum = csum::replace16(sum, flow.dport, nat.port);
            *check = if flow.proto == PROTO_TCP {
                sum
            } else {
                csum::udp_mangled(sum)
            }
            .to_ne_bytes();
        }
        *port = nat.port.to_ne_bytes();
        (*ip).dst_addr = nat.addr.octets();
    }
    Ok(())
}

fn xdp_drop_if_vip<A: Family>(daddr: A, reason: DropReason) -> u32 {
    if steer::is_vip(daddr) {
        steer::count_drop(reason);
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
