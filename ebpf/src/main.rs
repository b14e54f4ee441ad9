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
//!
//! The programs only look things up and count: every decision that needs policy (weights,
//! ejection, failover) has already been made by the agent and written into the maps.
#![no_std]
#![no_main]
// Atomic add on shared map values (see steer::bump_consecutive).
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod steer;

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_xdp_load_bytes},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use geosteer_common::{DropReason, PROTO_TCP, PROTO_UDP, csum};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use steer::{Flow, Nat, PacketBytes, Verdict};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_HLEN: usize = EthHdr::LEN;
const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const TCP_CHECK_OFF: usize = 16;
const UDP_CHECK_OFF: usize = 6;
const AF_INET: u8 = 2;

/// What the parser found in the first headers of a packet.
enum Parsed {
    /// Not IPv4 TCP/UDP (ARP, IPv6, ICMP, …): never touched.
    Other,
    /// An IPv4 fragment: only the first carries ports, so none can be steered by 5-tuple.
    Fragment {
        daddr: u32,
    },
    /// IPv4 whose L3/L4 headers are cut short.
    Truncated {
        daddr: u32,
    },
    Flow(Flow),
}

#[classifier]
pub fn geosteer_tc_ingress(ctx: TcContext) -> i32 {
    match tc_ingress(&ctx) {
        Ok(action) => action,
        Err(()) => {
            steer::count_drop(DropReason::Internal);
            TC_ACT_SHOT as i32
        }
    }
}

#[classifier]
pub fn geosteer_tc_egress(ctx: TcContext) -> i32 {
    match tc_egress(&ctx) {
        Ok(action) => action,
        // A reply we could not rewrite would reach the client from the backend's address and be
        // answered with a RST; dropping it lets TCP retransmit instead.
        Err(()) => {
            steer::count_drop(DropReason::Internal);
            TC_ACT_SHOT as i32
        }
    }
}

#[xdp]
pub fn geosteer_xdp(ctx: XdpContext) -> u32 {
    match xdp_request(&ctx) {
        Ok(action) => action,
        Err(()) => {
            steer::count_drop(DropReason::Internal);
            xdp_action::XDP_DROP
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TC: headers are read with bpf_skb_load_bytes (works for non-linear skbs too) and rewritten with
// bpf_skb_store_bytes + the kernel's checksum helpers, which also handle CHECKSUM_PARTIAL skbs
// (locally generated packets whose L4 checksum is finished by the device).

fn tc_parse(ctx: &TcContext) -> Parsed {
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return Parsed::Other;
    };
    if eth.ether_type != ETH_P_IP_BE {
        return Parsed::Other;
    }
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN) else {
        return Parsed::Other; // too short to hold an address: cannot be for a VIP
    };
    let daddr = u32::from_ne_bytes(ip.dst_addr);
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Parsed::Truncated { daddr };
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Parsed::Other;
    }
    // More-fragments flag or a non-zero offset.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Parsed::Fragment { daddr };
    }
    let l4_off = ETH_HLEN + ihl;
    let mut flow = new_flow(&ip, daddr, l4_off, ctx.len());
    if ip.proto == PROTO_TCP {
        let Ok(tcp) = ctx.load::<TcpHdr>(l4_off) else {
            return Parsed::Truncated { daddr };
        };
        // Byte 13 of the TCP header holds the flags (CWR..FIN); byte 12's high nibble is doff.
        let Ok(flag_bytes) = ctx.load::<[u8; 2]>(l4_off + 12) else {
            return Parsed::Truncated { daddr };
        };
        set_tcp(&mut flow, &ip, &tcp, flag_bytes);
    } else {
        let Ok(udp) = ctx.load::<UdpHdr>(l4_off) else {
            return Parsed::Truncated { daddr };
        };
        flow.sport = u16::from_ne_bytes(udp.src);
        flow.dport = u16::from_ne_bytes(udp.dst);
    }
    Parsed::Flow(flow)
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
    }
}

/// Fills in the TCP fields; `flag_bytes` are header bytes 12 and 13 (data offset, flags).
fn set_tcp(flow: &mut Flow, ip: &Ipv4Hdr, tcp: &TcpHdr, flag_bytes: [u8; 2]) {
    flow.sport = u16::from_ne_bytes(tcp.source);
    flow.dport = u16::from_ne_bytes(tcp.dest);
    flow.seq = u32::from_be_bytes(tcp.seq);
    flow.ack = u32::from_be_bytes(tcp.ack_seq);
    flow.tcp_flags = flag_bytes[1];
    let header_len = ((flag_bytes[0] >> 4) as u32) * 4;
    let ip_header_len = flow.l4_off - ETH_HLEN as u32;
    flow.payload_off = flow.l4_off + header_len;
    // From the IP total length: frames shorter than 60 bytes carry Ethernet padding.
    flow.payload_len =
        (u16::from_be_bytes(ip.tot_len) as u32).saturating_sub(ip_header_len + header_len);
}

/// Packet bytes through bpf_skb_load_bytes (non-linear skbs included).
struct TcBytes<'a>(&'a TcContext);

impl PacketBytes for TcBytes<'_> {
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        self.0.load::<T>(offset).ok()
    }
}

/// Packet bytes through bpf_xdp_load_bytes (multi-buffer frames included).
struct XdpBytes<'a>(&'a XdpContext);

impl PacketBytes for XdpBytes<'_> {
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
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
}

fn tc_ingress(ctx: &TcContext) -> Result<i32, ()> {
    let flow = match tc_parse(ctx) {
        Parsed::Other => return Ok(TC_ACT_OK as i32),
        Parsed::Fragment { daddr } => return Ok(drop_if_vip(daddr, DropReason::Fragment)),
        Parsed::Truncated { daddr } => return Ok(drop_if_vip(daddr, DropReason::Truncated)),
        Parsed::Flow(flow) => flow,
    };
    match steer::request(&flow, &TcBytes(ctx)) {
        Verdict::Pass => Ok(TC_ACT_OK as i32),
        Verdict::Drop(reason) => {
            steer::count_drop(reason);
            Ok(TC_ACT_SHOT as i32)
        }
        Verdict::Nat(nat) => {
            tc_rewrite(ctx, &flow, IP_DST_OFF, flow.daddr, flow.dport, &nat, 2)?;
            Ok(TC_ACT_OK as i32)
        }
    }
}

fn tc_egress(ctx: &TcContext) -> Result<i32, ()> {
    let Parsed::Flow(flow) = tc_parse(ctx) else {
        return Ok(TC_ACT_OK as i32);
    };
    let Some(nat) = steer::reply(&flow, &TcBytes(ctx)) else {
        return Ok(TC_ACT_OK as i32);
    };
    tc_rewrite(ctx, &flow, IP_SRC_OFF, flow.saddr, flow.sport, &nat, 0)?;
    Ok(TC_ACT_OK as i32)
}

fn drop_if_vip(daddr: u32, reason: DropReason) -> i32 {
    if steer::is_vip(daddr) {
        steer::count_drop(reason);
        TC_ACT_SHOT as i32
    } else {
        TC_ACT_OK as i32
    }
}

/// Rewrites one address and its port (destination on requests, source on replies).
/// `port_field` is the port's offset inside the L4 header (2 = destination, 0 = source).
fn tc_rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: u32,
    old_port: u16,
    nat: &Nat,
    port_field: usize,
) -> Result<(), ()> {
    let l4_off = flow.l4_off as usize;
    let (check_off, mangled) = if flow.proto == PROTO_TCP {
        (l4_off + TCP_CHECK_OFF, 0)
    } else {
        // UDP checksum 0 means "none": the helper leaves it 0 and writes a computed 0 as 0xffff.
        (l4_off + UDP_CHECK_OFF, BPF_F_MARK_MANGLED_0 as u64)
    };
    let (new_addr, new_port) = (nat.addr, nat.port);
    ctx.l4_csum_replace(
        check_off,
        old_addr as u64,
        new_addr as u64,
        BPF_F_PSEUDO_HDR as u64 | mangled | 4,
    )
    .map_err(|_| ())?;
    ctx.l4_csum_replace(check_off, old_port as u64, new_port as u64, mangled | 2)
        .map_err(|_| ())?;
    ctx.l3_csum_replace(IP_CHECK_OFF, old_addr as u64, new_addr as u64, 4)
        .map_err(|_| ())?;
    ctx.store(addr_off, &new_addr, 0).map_err(|_| ())?;
    ctx.store(l4_off + port_field, &new_port, 0)
        .map_err(|_| ())?;
    Ok(())
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

fn xdp_parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Other;
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return Parsed::Other;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Parsed::Other;
    };
    // SAFETY: as above.
    let ip = unsafe { &*ip };
    let daddr = u32::from_ne_bytes(ip.dst_addr);
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Parsed::Truncated { daddr };
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Parsed::Other;
    }
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Parsed::Fragment { daddr };
    }
    let l4_off = ETH_HLEN + ihl;
    let mut flow = new_flow(ip, daddr, l4_off, (ctx.data_end() - ctx.data()) as u32);
    if ip.proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
            return Parsed::Truncated { daddr };
        };
        // Data offset and flags are bytes 12 and 13 of the header, read through the pointer
        // that was bounds-checked (a second check on a recomputed pointer gets merged away by
        // LLVM, and the verifier then rejects the access).
        // SAFETY: as above; 13 < size_of::<TcpHdr>().
        unsafe {
            let flag_bytes = [*(tcp as *const u8).add(12), *(tcp as *const u8).add(13)];
            set_tcp(&mut flow, ip, &*tcp, flag_bytes);
        }
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, l4_off) else {
            return Parsed::Truncated { daddr };
        };
        // SAFETY: as above.
        let udp = unsafe { &*udp };
        flow.sport = u16::from_ne_bytes(udp.src);
        flow.dport = u16::from_ne_bytes(udp.dst);
    }
    Parsed::Flow(flow)
}

fn xdp_request(ctx: &XdpContext) -> Result<u32, ()> {
    let flow = match xdp_parse(ctx) {
        Parsed::Other => return Ok(xdp_action::XDP_PASS),
        Parsed::Fragment { daddr } => return Ok(xdp_drop_if_vip(daddr, DropReason::Fragment)),
        Parsed::Truncated { daddr } => return Ok(xdp_drop_if_vip(daddr, DropReason::Truncated)),
        Parsed::Flow(flow) => flow,
    };
    let nat = match steer::request(&flow, &XdpBytes(ctx)) {
        Verdict::Pass => return Ok(xdp_action::XDP_PASS),
        Verdict::Drop(reason) => {
            steer::count_drop(reason);
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
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid starting state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = flow.proto;
    params.sport = flow.sport;
    params.dport = 0;
    // SAFETY: ctx.ctx is the xdp_md the program was called with.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    params.__bindgen_anon_1.tot_len = (flow.len as usize - ETH_HLEN) as u16;
    params.__bindgen_anon_3.ipv4_src = flow.saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: params lives on this stack frame for the duration of the call.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
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
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
        bpf_redirect(params.ifindex, 0) as u32
    }
}

fn xdp_drop_if_vip(daddr: u32, reason: DropReason) -> u32 {
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
