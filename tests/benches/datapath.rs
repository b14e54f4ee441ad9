//! Per-packet cost of the kernel programs, measured with BPF_PROG_TEST_RUN: the real,
//! verifier-loaded programs run by the kernel on synthetic packets and timed by the kernel.
//!
//! Run by `cargo xtask bench` (needs root, CAP_BPF + CAP_NET_ADMIN). Results go, as JSON, to the
//! file named by `GEOSTEER_BENCH_OUT`; `GEOSTEER_BENCH_QUICK=1` makes the runs shorter.
//!
//! A test run executes the program `repeat` times on one packet buffer and reports the mean time
//! per execution, measured inside the kernel around the loop. Two ways of using it:
//!
//! - **batched**: one call with a large `repeat`. The per-call overhead is amortised away, but
//!   every iteration sees the packet as the previous one left it. That only measures what we
//!   want when the program leaves the packet as it found it: a passthrough, or a flow whose
//!   NAT target equals its original address (see [`SELF_PORT`]).
//! - **single**: `repeat = 1` per call with a fresh packet each time, many calls, averaging the
//!   kernel-reported times. This is the only way to give every run a new flow (a new source
//!   port), and it is what the XDP cases use (XDP decrements the TTL when it forwards, so it
//!   never leaves a packet unchanged). The kernel's clock reads around a single execution are
//!   part of each sample, so this method has a higher floor.
//!
//! With `GEOSTEER_BENCH_PROFILE=1` (and `perf` installed) the batched established-flow cases are
//! then run again under `perf record` (cpu-clock samples with call chains, whole machine), and
//! each program's samples are sorted by the kernel function they fell in: the program's own
//! instructions, hash-map lookups, the packet rewrite helpers, the clock. That is where the time
//! over the floor goes (the floor itself, the test-run harness, is outside the program).
//!
//! Each method runs a no-op program (`r0 = verdict; exit`, loaded with a raw `bpf(BPF_PROG_LOAD)`)
//! through the same syscall path, interleaved with the real cases: that floor is the cost of
//! the test-run harness itself, and "over floor" is what geosteer adds to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, RawFd};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use aya::Ebpf;
use geosteer::{
    dataplane::BpfMaps,
    frontend::Frontend,
    loader::{self, MapSizes},
    programmer::{DesiredBackend, DesiredService, Programmer},
};
use geosteer_common::{
    Addr6, DIR_ORIGINAL, FlowKey, FlowKey6, PROTO_TCP, ServiceKey, ServiceKey6, TCP_ESTABLISHED,
    program_names,
};
use geosteer_tests::profile::PartKind;
use serde::Serialize;

const TC_ACT_OK: u32 = 0;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 9);
/// The service port whose backends are real addresses.
/// The IPv6 twins of the client and VIP (the IPv6 cases: the same programs tail-call their
/// IPv6 counterparts).
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x10);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 9);
const VPORT: u16 = 80;
const TPORT: u16 = 8080;
/// A second service port whose only backend is VIP:SELF_PORT itself. Its DNAT rewrites a packet
/// into the same bytes (through the same helpers and checksum updates as any other rewrite), so
/// a batched run takes the full established-flow path on every iteration. With a real backend,
/// iteration 2 onwards would see a packet addressed to the backend, i.e. a passthrough.
const SELF_PORT: u16 = 81;
/// Backends of the VPORT service; selection is a Maglev table lookup, whose cost does not
/// depend on how many backends there are.
const BACKENDS: u8 = 64;
const CLIENT_PORT: u16 = 40000;

/// The batched established-flow cases, which the profile runs again (one name, one packet each).
const ESTABLISHED_CASE: &str = "TC ingress: established flow, a client ACK (conntrack hit, DNAT)";
const REPLY_CASE: &str = "TC egress: reply data (reverse NAT; no response start awaited)";
const ESTABLISHED_CASE6: &str = "TC ingress: IPv6 established flow, a client ACK (tail call)";
const REPLY_CASE6: &str = "TC egress: IPv6 reply data (tail call, reverse NAT)";

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 198.19.0.10\r\nUser-Agent: wrk\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nb1\n";
/// A response as nginx in front of an API sends it: a 179-byte head, then the body.
const RESPONSE_START: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: keep-alive\r\nCache-Control: no-store\r\n\r\n{\"status\":\"ok\"}\n";

/// One measured case, as written to the JSON report.
#[derive(Serialize)]
struct Case {
    /// "batched" or "single" (see the module docs).
    method: &'static str,
    name: String,
    program: &'static str,
    /// Executions per test-run call.
    repeat: u32,
    /// Test-run calls per repetition.
    calls: u32,
    /// Repetitions; the statistics are over their per-repetition means.
    reps: u32,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    /// The same method's no-op program median (of the same program type).
    floor_ns: f64,
    /// What the program answered, e.g. "TC_ACT_OK".
    verdict: String,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    bpf_stats_enabled: String,
    batched_repeat: u32,
    single_calls: u32,
    cases: Vec<Case>,
    /// Where the batched established-flow cases spend their time (GEOSTEER_BENCH_PROFILE=1).
    profiles: Vec<Profile>,
}

/// One case's perf samples inside its program, by what they were doing.
#[derive(Serialize)]
struct Profile {
    name: String,
    program: &'static str,
    /// Samples whose call chain runs through the program.
    samples: u64,
    /// Share of those samples per part, largest first.
    parts: Vec<ProfilePart>,
    /// Of the samples in the program's own instructions, the source lines they fell in, as
    /// shares of all samples, largest first.
    lines: Vec<(String, f64)>,
}

#[derive(Serialize)]
struct ProfilePart {
    kind: PartKind,
    part: &'static str,
    share: f64,
    /// The kernel functions that make up the part, with their own shares.
    functions: Vec<(String, f64)>,
}

fn main() -> Result<()> {
    geosteer_tests::require_root();
    let out_path = std::env::var_os("GEOSTEER_BENCH_OUT").context(
        "GEOSTEER_BENCH_OUT must name the output file (run through `cargo xtask bench`)",
    )?;
    let quick = std::env::var("GEOSTEER_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (batched_repeat, batched_reps) = if quick { (200_000, 3) } else { (1_000_000, 7) };
    let (single_calls, single_reps) = if quick { (5_000, 3) } else { (20_000, 5) };

    private_network()?;
    pin_to_one_cpu()?;
    let mut rig = Rig::new()?;
    let noop_tc = load_noop(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_OK)?;
    let noop_xdp = load_noop(BPF_PROG_TYPE_XDP, XDP_PASS)?;

    let mut cases = batched(&rig, &noop_tc, &noop_xdp, batched_repeat, batched_reps)?;
    cases.extend(single(
        &mut rig,
        &noop_tc,
        &noop_xdp,
        single_calls,
        single_reps,
    )?);

    let profiles = if std::env::var("GEOSTEER_BENCH_PROFILE").is_ok_and(|v| v == "1") {
        profile(&rig)?
    } else {
        Vec::new()
    };
    let report = Report {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?
            .trim()
            .to_string(),
        bpf_stats_enabled: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap_or_default()
            .trim()
            .to_string(),
        batched_repeat,
        single_calls,
        cases,
        profiles,
    };
    for c in &report.cases {
        eprintln!(
            "{:8} {:55} {:>8.1} ns (min {:.1}, max {:.1}, floor {:.1}) {}",
            c.method, c.name, c.median_ns, c.min_ns, c.max_ns, c.floor_ns, c.verdict
        );
    }
    for p in &report.profiles {
        eprintln!("profile  {} ({} samples)", p.name, p.samples);
        for part in &p.parts {
            eprintln!("         {:5.1}%  {}", 100.0 * part.share, part.part);
        }
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out_path.to_string_lossy()))?;
    Ok(())
}

/// Moves this process into a network namespace of its own, with a route and neighbour entries
/// for the backends, so that the XDP program's FIB lookup succeeds (and it redirects, as on a
/// real uplink) whatever the host's routing looks like. The namespace goes away with the
/// process. Test runs send nothing: the packets only exist in the kernel's test buffer.
fn private_network() -> Result<()> {
    // SAFETY: plain syscall; the process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    // Children inherit the namespace. Both veth ends stay here; the kernel has no dummy driver.
    let mut cmds: Vec<Vec<String>> = [
        "ip link set lo up",
        "ip link add gsb0 type veth peer name gsb1",
        "ip link set gsb0 up",
        "ip link set gsb1 up",
        "ip addr add 198.18.0.1/16 dev gsb0",
        // The test run's packets arrive on lo; bpf_fib_lookup wants forwarding on there.
        "sysctl -q -w net.ipv4.conf.all.forwarding=1",
        "sysctl -q -w net.ipv6.conf.all.forwarding=1",
        "ip -6 addr add 2001:db8:18::1/48 dev gsb0 nodad",
    ]
    .iter()
    .map(|c| c.split(' ').map(str::to_string).collect())
    .collect();
    for i in 1..=BACKENDS {
        for ip in [IpAddr::from(backend_ip(i)), backend_ip6(i).into()] {
            cmds.push(
                format!(
                    "ip neigh replace {ip} lladdr 02:00:00:00:00:{i:02x} dev gsb0 nud permanent"
                )
                .split(' ')
                .map(str::to_string)
                .collect(),
            );
        }
    }
    for cmd in cmds {
        let status = Command::new(&cmd[0]).args(&cmd[1..]).status()?;
        ensure!(status.success(), "`{}` failed: {status}", cmd.join(" "));
    }
    Ok(())
}

/// Keeps every run on one CPU: the per-CPU counters and the LRU map's per-CPU free lists then
/// behave the same in every call, and no migration lands inside a measurement.
fn pin_to_one_cpu() -> Result<()> {
    // SAFETY: sysconf and sched_setaffinity on our own process, with a zeroed cpu_set_t.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus - 1, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + i, 2)
}

/// Backend `i`'s IPv6 address (the VPORT service is dual-stack: see [`Rig::write_front6`]).
fn backend_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x18, 10 + u16::from(i), 0, 0, 0, 2)
}

// ------------------------------------------------------------------------- programs ---

struct Rig {
    /// Owns the programs (and so their fds) for the whole run.
    _ebpf: Ebpf,
    maps: BpfMaps,
    programmer: Programmer,
    tc_ingress: RawFd,
    tc_egress: RawFd,
    xdp: RawFd,
}

impl Rig {
    fn new() -> Result<Rig> {
        let sizes = MapSizes {
            max_services: 16,
            max_backends: 256,
            // Room for every flow of a repetition (two entries each) without LRU eviction.
            conntrack: 262_144,
            conntrack6: 262_144, // the IPv6 XDP cases hold a repetition's flows too
            table_chunks: 1 << 12,
        };
        // At the agent's default log level, so the programs are the ones a node runs
        // (GEOSTEER_BENCH_KERNEL_LOG=off|debug|… to compare).
        let level = match std::env::var("GEOSTEER_BENCH_KERNEL_LOG") {
            Ok(level) => level
                .parse()
                .map_err(|e| anyhow::anyhow!("GEOSTEER_BENCH_KERNEL_LOG={level:?}: {e}"))?,
            Err(_) => loader::LevelFilter::INFO,
        };
        let (mut ebpf, _) = loader::load_logging(sizes, None, level)?;
        loader::fill_tail_calls(&mut ebpf)?;
        let maps = BpfMaps::take(&mut ebpf)?;
        let fd = |name: &str| -> Result<RawFd> {
            let prog = ebpf
                .program(name)
                .with_context(|| format!("no program {name}"))?;
            Ok(prog.fd()?.as_fd().as_raw_fd())
        };
        let (tc_ingress, tc_egress, xdp) = (
            fd(program_names::TC_INGRESS)?,
            fd(program_names::TC_EGRESS)?,
            fd(program_names::XDP)?,
        );
        let mut rig = Rig {
            _ebpf: ebpf,
            maps,
            programmer: Programmer::new(16, 256, 1 << 12),
            tc_ingress,
            tc_egress,
            xdp,
        };
        // The uplink XDP redirects to (private_network's veth), vouched for as
        // dataplane.xdpRedirectTo does.
        let target = geosteer::loader::ifindex("gsb0")?;
        geosteer::dataplane::Dataplane::set_xdp_target(&mut rig.maps, target, true)?;
        let real = (1..=BACKENDS).map(|i| (backend_ip(i), TPORT)).collect();
        rig.programmer.apply(
            &mut rig.maps,
            &[
                service(VPORT, real),
                service(SELF_PORT, vec![(VIP, SELF_PORT)]),
            ],
        )?;
        rig.write_self_nat6()?;
        rig.write_front6()?;
        Ok(rig)
    }

    /// The IPv6 front of the VPORT service, as the agent writes a dual-stack service:
    /// `[VIP6]:VPORT` shares its table, backend `i` at [`backend_ip6`].
    fn write_front6(&mut self) -> Result<()> {
        let live = self
            .programmer
            .service(&service_key(VPORT))
            .expect("service is live");
        for i in 1..=BACKENDS {
            let id = live.backends[&(backend_ip(i).into(), TPORT.to_be())].0;
            self.maps
                .backend_addrs6
                .set(id, Addr6::from_ip(backend_ip6(i)), 0)?;
        }
        let value = self
            .maps
            .services
            .get(&ServiceKey::for_vip(VIP, VPORT, PROTO_TCP), 0)?;
        self.maps
            .services6
            .insert(ServiceKey6::for_vip(VIP6, VPORT, PROTO_TCP), value, 0)?;
        Ok(())
    }

    /// The IPv6 front of the self-NAT service, written as the agent will write IPv6 services:
    /// `[VIP6]:SELF_PORT` shares the service's table, and its one backend's IPv6 address is
    /// `VIP6` (so its flows are translated into themselves, as the IPv4 self-NAT flow is).
    fn write_self_nat6(&mut self) -> Result<()> {
        let live = self
            .programmer
            .service(&service_key(SELF_PORT))
            .expect("service is live");
        let backend = live.backends[&(VIP.into(), SELF_PORT.to_be())].0;
        let value = self
            .maps
            .services
            .get(&ServiceKey::for_vip(VIP, SELF_PORT, PROTO_TCP), 0)?;
        self.maps
            .services6
            .insert(ServiceKey6::for_vip(VIP6, SELF_PORT, PROTO_TCP), value, 0)?;
        self.maps
            .backend_addrs6
            .set(backend, Addr6::from_ip(VIP6), 0)?;
        Ok(())
    }

    /// The TCP state of the original entry of the IPv6 self-NAT flow.
    fn tcp_state6(&self) -> Result<u8> {
        let key = FlowKey6::new(
            Addr6::from_ip(CLIENT6),
            Addr6::from_ip(VIP6),
            CLIENT_PORT.to_be(),
            SELF_PORT.to_be(),
            PROTO_TCP,
            DIR_ORIGINAL,
        );
        Ok(self.maps.conntrack6.get(&key, 0)?.tcp_state)
    }

    fn service_id(&self, port: u16) -> u32 {
        self.programmer
            .service(&service_key(port))
            .expect("service is live")
            .id
    }

    /// Packets the program counted for the service (every DNATed request is counted).
    fn service_packets(&self, port: u16) -> Result<u64> {
        Ok(self.maps.service_counters(self.service_id(port))?.packets)
    }

    /// Replies the program counted for the self-NAT service's one backend.
    fn self_nat_replies(&self) -> Result<u64> {
        let live = self
            .programmer
            .service(&service_key(SELF_PORT))
            .expect("service is live");
        let id = live.backends[&(VIP.into(), SELF_PORT.to_be())].0;
        Ok(self.maps.backend_counters(id)?.reply_packets)
    }

    /// 2xx responses read, over the VPORT service's backends.
    fn responses_2xx(&self) -> Result<u64> {
        let live = self
            .programmer
            .service(&service_key(VPORT))
            .expect("service is live");
        let mut total = 0;
        for &(id, _) in live.backends.values() {
            total += self.maps.backend_counters(id)?.responses[1];
        }
        Ok(total)
    }

    /// The TCP state of the original entry of the flow from `port` to VIP:`vport`.
    fn tcp_state(&self, port: u16, vport: u16) -> Result<u8> {
        let key = FlowKey::new(
            u32::from(CLIENT).to_be(),
            u32::from(VIP).to_be(),
            port.to_be(),
            vport.to_be(),
            PROTO_TCP,
            DIR_ORIGINAL,
        );
        Ok(self.maps.conntrack.get(&key, 0)?.tcp_state)
    }

    /// Empties conntrack, so every repetition of the new-flow cases starts from the same state.
    fn clear_conntrack(&mut self) -> Result<()> {
        let keys: Vec<FlowKey> = self.maps.conntrack.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.maps.conntrack.remove(&key)?;
        }
        let keys: Vec<FlowKey6> = self.maps.conntrack6.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.maps.conntrack6.remove(&key)?;
        }
        Ok(())
    }
}

fn service_key(port: u16) -> Frontend {
    Frontend::new(VIP, port, PROTO_TCP)
}

fn service(port: u16, backends: Vec<(Ipv4Addr, u16)>) -> DesiredService {
    DesiredService {
        name: format!("bench:{port}"),
        key: service_key(port),
        key6: None,
        backends: backends
            .into_iter()
            .map(|(ip, port)| DesiredBackend {
                addr: ip.into(),
                port: port.to_be(),
                weight: 1,
                ..Default::default()
            })
            .collect(),
        settings: Default::default(),
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// The `BPF_PROG_LOAD` member of `union bpf_attr` (include/uapi/linux/bpf.h), up to the
/// fields used here; the kernel treats a shorter attr as zero-filled.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `struct bpf_insn`: opcode, dst/src registers, offset, immediate.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// A program that only returns `verdict` (`r0 = verdict; exit`): the test-run floor.
fn load_noop(prog_type: u32, verdict: u32) -> Result<std::os::fd::OwnedFd> {
    const ALU64_MOV_K: u8 = 0xb7;
    const JMP_EXIT: u8 = 0x95;
    let insns = [
        Insn {
            code: ALU64_MOV_K,
            regs: 0,
            off: 0,
            imm: verdict as i32,
        },
        Insn {
            code: JMP_EXIT,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..7].copy_from_slice(b"gs_noop");
    // The attr's insns and license outlive the call.
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of the no-op program")?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

struct Run {
    retval: u32,
    /// Mean ns per execution, as the kernel measured it.
    duration_ns: u32,
    out: Vec<u8>,
}

/// One BPF_PROG_TEST_RUN call. Every program, geosteer's and the no-op, goes through here.
fn test_run(fd: RawFd, data: &[u8], repeat: u32) -> Result<Run> {
    let mut out = vec![0u8; data.len() + 256];
    // SAFETY: `fd` is an open program fd owned by the caller for the duration of the call.
    let prog = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let outcome = geosteer_tests::prog_test_run_repeat(&prog, data, &mut out, repeat)
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(outcome.out_len);
    Ok(Run {
        retval: outcome.retval,
        duration_ns: outcome.duration_ns,
        out,
    })
}

// -------------------------------------------------------------------------- packets ---

/// The handshake's sequence numbers: the client's ISN is 1000, the backend's 1999.
const CLIENT_NEXT: u32 = 1001;
const BACKEND_NEXT: u32 = 2000;
/// The backend's next sequence number after its first data segment ([`RESPONSE`]).
const BACKEND_DATA_END: u32 = BACKEND_NEXT + RESPONSE.len() as u32;

/// The client's acknowledgement of the backend's first data segment on an established flow
/// from `port` to VIP:`vport`: the commonest client packet (a download's), no payload.
fn client_ack(port: u16, vport: u16) -> Vec<u8> {
    tcp_at(
        CLIENT,
        port,
        VIP,
        vport,
        ACK,
        (CLIENT_NEXT, BACKEND_DATA_END),
        &[],
    )
}

/// The client of the backend's family.
fn client_of(backend: IpAddr) -> IpAddr {
    match backend {
        IpAddr::V4(_) => CLIENT.into(),
        IpAddr::V6(_) => CLIENT6.into(),
    }
}

/// The backend's SYN-ACK to a client's SYN (seq 1000) from `port` (the client of its family).
fn syn_ack(backend: impl Into<IpAddr>, backend_port: u16, port: u16) -> Vec<u8> {
    let backend = backend.into();
    tcp_at(
        backend,
        backend_port,
        client_of(backend),
        port,
        SYN | ACK,
        (BACKEND_NEXT - 1, CLIENT_NEXT),
        &[],
    )
}

/// Data from a backend on an established flow, starting at `seq`: [`BACKEND_NEXT`] for the
/// first segment after its SYN-ACK (which also settles the flow's protocol: the server spoke
/// first, so it is opaque), [`BACKEND_DATA_END`] for the next one (the measured one: data of a
/// flow whose protocol is known).
fn backend_data(backend: impl Into<IpAddr>, backend_port: u16, port: u16, seq: u32) -> Vec<u8> {
    let backend = backend.into();
    tcp_at(
        backend,
        backend_port,
        client_of(backend),
        port,
        PSH_ACK,
        (seq, CLIENT_NEXT),
        RESPONSE,
    )
}

/// The ends of a self-NAT flow (see [`SELF_PORT`]) of one family: its client, and the VIP that
/// is also its backend.
#[derive(Clone, Copy)]
struct SelfNat {
    client: IpAddr,
    vip: IpAddr,
}

const SELF_NAT: SelfNat = SelfNat {
    client: IpAddr::V4(CLIENT),
    vip: IpAddr::V4(VIP),
};
const SELF_NAT6: SelfNat = SelfNat {
    client: IpAddr::V6(CLIENT6),
    vip: IpAddr::V6(VIP6),
};

impl SelfNat {
    /// A client packet to VIP:`SELF_PORT`.
    fn request(self, flags: u8, seq_ack: (u32, u32), payload: &[u8]) -> Vec<u8> {
        tcp_at(
            self.client,
            CLIENT_PORT,
            self.vip,
            SELF_PORT,
            flags,
            seq_ack,
            payload,
        )
    }

    /// A backend (VIP:`SELF_PORT`) packet to the client.
    fn reply(self, flags: u8, seq_ack: (u32, u32), payload: &[u8]) -> Vec<u8> {
        tcp_at(
            self.vip,
            SELF_PORT,
            self.client,
            CLIENT_PORT,
            flags,
            seq_ack,
            payload,
        )
    }

    /// The client's ACK on the established flow: DNATed into the same bytes.
    fn established_ack(self) -> Vec<u8> {
        self.request(ACK, (CLIENT_NEXT, BACKEND_DATA_END), &[])
    }

    /// The backend's second data segment: reverse-NATed into the same bytes.
    fn reply_data(self) -> Vec<u8> {
        self.reply(PSH_ACK, (BACKEND_DATA_END, CLIENT_NEXT), RESPONSE)
    }
}

/// Opens the self-NAT flow of `ends` and brings it to the state its measured packets find: its
/// SYN creates its conntrack entries (original and reply), the SYN-ACK and the ACK establish
/// it, the backend's first data settles its protocol. Every packet comes out unchanged.
fn establish_self_nat(rig: &Rig, ends: SelfNat) -> Result<()> {
    let steps = [
        (rig.tc_ingress, ends.request(SYN, (1000, 0), &[])),
        (
            rig.tc_egress,
            ends.reply(SYN | ACK, (BACKEND_NEXT - 1, CLIENT_NEXT), &[]),
        ),
        (
            rig.tc_ingress,
            ends.request(ACK, (CLIENT_NEXT, BACKEND_NEXT), &[]),
        ),
        (
            rig.tc_egress,
            ends.reply(PSH_ACK, (BACKEND_NEXT, CLIENT_NEXT), RESPONSE),
        ),
    ];
    for (fd, packet) in steps {
        let run = test_run(fd, &packet, 1)?;
        ensure!(
            run.retval == TC_ACT_OK && run.out == packet,
            "a packet opening the self-NAT flow from {} was not translated into itself",
            ends.client
        );
    }
    let state = match ends.client {
        IpAddr::V4(_) => rig.tcp_state(CLIENT_PORT, SELF_PORT)?,
        IpAddr::V6(_) => rig.tcp_state6()?,
    };
    ensure!(
        state == TCP_ESTABLISHED,
        "the self-NAT flow from {} is not established",
        ends.client
    );
    Ok(())
}

/// Ethernet + IPv4 + TCP with valid checksums, sequence number 1000 and (with ACK) 2000
/// acknowledged.
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let ack = if flags & ACK != 0 { 2000 } else { 0 };
    tcp_at(src, sport, dst, dport, flags, (1000, ack), payload)
}

/// Ethernet + IPv4 or IPv6 (the addresses' family) + TCP with valid checksums and the given
/// (sequence, acknowledgement).
fn tcp_at(
    src: impl Into<IpAddr>,
    sport: u16,
    dst: impl Into<IpAddr>,
    dport: u16,
    flags: u8,
    (seq, ack): (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(sport.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    l4.extend(seq.to_be_bytes());
    l4.extend(ack.to_be_bytes());
    l4.extend([5 << 4, flags]);
    l4.extend(64240u16.to_be_bytes());
    l4.extend([0, 0, 0, 0]); // checksum, urgent pointer
    l4.extend(payload);
    let (src, dst) = match (src.into(), dst.into()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => (src, dst),
        (IpAddr::V6(src), IpAddr::V6(dst)) => return tcp6_frame(src, dst, l4),
        _ => panic!("a frame's addresses are of one family"),
    };
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend([0, PROTO_TCP]);
    pseudo.extend((l4.len() as u16).to_be_bytes());
    pseudo.extend(&l4);
    let check = geosteer_common::csum::checksum(&pseudo);
    l4[16..18].copy_from_slice(&check.to_ne_bytes());

    let mut ip = vec![0x45, 0];
    ip.extend(((20 + l4.len()) as u16).to_be_bytes());
    ip.extend([0x12, 0x34, 0x40, 0x00, 64, PROTO_TCP, 0, 0]); // id, DF, TTL, proto, checksum
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let check = geosteer_common::csum::checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_ne_bytes());

    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend(ip);
    frame.extend(l4);
    frame
}

/// Ethernet + IPv6 around a TCP segment whose checksum is still 0.
fn tcp6_frame(src: Ipv6Addr, dst: Ipv6Addr, mut l4: Vec<u8>) -> Vec<u8> {
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend((l4.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, PROTO_TCP]);
    pseudo.extend(&l4);
    let check = geosteer_common::csum::checksum(&pseudo);
    l4[16..18].copy_from_slice(&check.to_ne_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    frame.extend([0x60, 0, 0, 0]);
    frame.extend((l4.len() as u16).to_be_bytes());
    frame.extend([PROTO_TCP, 64]);
    frame.extend(src.octets());
    frame.extend(dst.octets());
    frame.extend(l4);
    frame
}

fn src_of(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29])
}

fn dst_of(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

/// The source address of an IPv4 or IPv6 frame.
fn src_ip(frame: &[u8]) -> IpAddr {
    if frame[12..14] == [0x86, 0xdd] {
        Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap()).into()
    } else {
        src_of(frame).into()
    }
}

/// The destination address of an IPv4 or IPv6 frame.
fn dst_ip(frame: &[u8]) -> IpAddr {
    if frame[12..14] == [0x86, 0xdd] {
        Ipv6Addr::from(<[u8; 16]>::try_from(&frame[38..54]).unwrap()).into()
    } else {
        dst_of(frame).into()
    }
}

fn tc_verdict(v: u32) -> String {
    match v {
        0 => "TC_ACT_OK".into(),
        2 => "TC_ACT_SHOT".into(),
        v => format!("TC {v}"),
    }
}

fn xdp_verdict(v: u32) -> String {
    match v {
        1 => "XDP_DROP".into(),
        2 => "XDP_PASS".into(),
        4 => "XDP_REDIRECT".into(),
        v => format!("XDP {v}"),
    }
}

// --------------------------------------------------------------------------- batched ---

/// Median, min and max.
fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

/// A case of the batched method: a program, a packet the program must leave unchanged, the
/// verdict it must give, and which of the program's own counters must grow by one per
/// iteration (proof that every iteration took the intended path).
struct Batched {
    name: &'static str,
    program: &'static str,
    fd: RawFd,
    xdp: bool,
    packet: Vec<u8>,
    verdict: u32,
    counted: Counted,
}

#[derive(Clone, Copy)]
enum Counted {
    Nothing,
    /// Requests of the self-NAT service.
    Requests,
    /// Replies of the self-NAT service's backend.
    Replies,
}

impl Counted {
    fn read(self, rig: &Rig) -> Result<Option<u64>> {
        Ok(match self {
            Counted::Nothing => None,
            Counted::Requests => Some(rig.service_packets(SELF_PORT)?),
            Counted::Replies => Some(rig.self_nat_replies()?),
        })
    }
}

fn batched(
    rig: &Rig,
    noop_tc: &impl std::os::fd::AsRawFd,
    noop_xdp: &impl std::os::fd::AsRawFd,
    repeat: u32,
    reps: u32,
) -> Result<Vec<Case>> {
    establish_self_nat(rig, SELF_NAT)?;
    establish_self_nat(rig, SELF_NAT6)?;

    let specs = [
        Batched {
            name: "no-op TC program (floor)",
            program: "noop (SCHED_CLS)",
            fd: noop_tc.as_raw_fd(),
            packet: tcp(CLIENT, CLIENT_PORT, VIP, SELF_PORT, PSH_ACK, REQUEST),
            verdict: TC_ACT_OK,
            xdp: false,
            counted: Counted::Nothing,
        },
        Batched {
            name: ESTABLISHED_CASE,
            program: program_names::TC_INGRESS,
            fd: rig.tc_ingress,
            packet: SELF_NAT.established_ack(),
            verdict: TC_ACT_OK,
            xdp: false,
            counted: Counted::Requests,
        },
        Batched {
            name: "TC ingress: not for a VIP (passthrough)",
            program: program_names::TC_INGRESS,
            fd: rig.tc_ingress,
            packet: tcp(CLIENT, CLIENT_PORT, OTHER, VPORT, PSH_ACK, REQUEST),
            verdict: TC_ACT_OK,
            xdp: false,
            counted: Counted::Nothing,
        },
        Batched {
            name: REPLY_CASE,
            program: program_names::TC_EGRESS,
            fd: rig.tc_egress,
            packet: SELF_NAT.reply_data(),
            verdict: TC_ACT_OK,
            xdp: false,
            counted: Counted::Replies,
        },
        Batched {
            name: ESTABLISHED_CASE6,
            program: program_names::TC_INGRESS,
            fd: rig.tc_ingress,
            packet: SELF_NAT6.established_ack(),
            verdict: TC_ACT_OK,
            xdp: false,
            counted: Counted::Requests,
        },
        Batched {
            name: "TC ingress: IPv6, not for a VIP (passthrough)",
            program: program_names::TC_INGRESS,
            fd: rig.tc_ingress,
            packet: tcp_at(
                CLIENT6,
                CLIENT_PORT,
                OTHER6,
                VPORT,
                PSH_ACK,
                (1000, 2000),
                REQUEST,
            ),
            verdict: TC_ACT_OK,
            xdp: false,
            counted: Counted::Nothing,
        },
        Batched {
            name: REPLY_CASE6,
            program: program_names::TC_EGRESS,
            fd: rig.tc_egress,
            packet: SELF_NAT6.reply_data(),
            verdict: TC_ACT_OK,
            xdp: false,
            counted: Counted::Replies,
        },
        Batched {
            name: "no-op XDP program (floor)",
            program: "noop (XDP)",
            fd: noop_xdp.as_raw_fd(),
            packet: tcp(CLIENT, CLIENT_PORT, OTHER, VPORT, PSH_ACK, REQUEST),
            verdict: XDP_PASS,
            xdp: true,
            counted: Counted::Nothing,
        },
        Batched {
            name: "XDP: not for a VIP (passthrough)",
            program: program_names::XDP,
            fd: rig.xdp,
            packet: tcp(CLIENT, CLIENT_PORT, OTHER, VPORT, PSH_ACK, REQUEST),
            verdict: XDP_PASS,
            xdp: true,
            counted: Counted::Nothing,
        },
    ];

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); specs.len()];
    // Repetitions go round the cases, so a slow moment of the machine is spread over all.
    for _ in 0..reps {
        for (spec, samples) in specs.iter().zip(&mut samples) {
            let before = spec.counted.read(rig)?;
            let run = test_run(spec.fd, &spec.packet, repeat)?;
            ensure!(
                run.retval == spec.verdict && run.out == spec.packet,
                "{}: verdict {} or a changed packet: the iterations did not all take one path",
                spec.name,
                run.retval
            );
            if let (Some(before), Some(after)) = (before, spec.counted.read(rig)?) {
                let counted = after - before;
                ensure!(
                    counted == u64::from(repeat),
                    "{}: the program counted {counted} of {repeat} iterations",
                    spec.name
                );
            }
            samples.push(f64::from(run.duration_ns));
        }
    }

    let floor = |name: &str| {
        let i = specs
            .iter()
            .position(|s| s.name == name)
            .expect("floor case");
        stats(&samples[i]).0
    };
    let (tc_floor, xdp_floor) = (
        floor("no-op TC program (floor)"),
        floor("no-op XDP program (floor)"),
    );
    Ok(specs
        .iter()
        .zip(&samples)
        .map(|(spec, s)| {
            let (median_ns, min_ns, max_ns) = stats(s);
            Case {
                method: "batched",
                name: spec.name.to_string(),
                program: spec.program,
                repeat,
                calls: 1,
                reps,
                median_ns,
                min_ns,
                max_ns,
                floor_ns: if spec.xdp { xdp_floor } else { tc_floor },
                verdict: if spec.xdp {
                    xdp_verdict(spec.verdict)
                } else {
                    tc_verdict(spec.verdict)
                },
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------- single ---

/// Means per repetition of one single-call case.
#[derive(Default)]
struct Series {
    means: Vec<f64>,
    verdict: Option<u32>,
}

impl Series {
    /// Adds one repetition's durations; every call must have given the same verdict.
    fn add(&mut self, (durations, verdicts, _): &Calls, name: &str) -> Result<()> {
        let first = verdicts[0];
        if verdicts.iter().any(|&v| v != first) {
            bail!("{name}: the verdict changed between calls");
        }
        self.verdict = Some(first);
        let sum: u64 = durations.iter().map(|&d| u64::from(d)).sum();
        self.means.push(sum as f64 / durations.len() as f64);
        Ok(())
    }
}

/// Durations, verdicts and output packets of a series of single calls.
type Calls = (Vec<u32>, Vec<u32>, Vec<Vec<u8>>);

/// Runs a packet per port of the series (its argument) through a program, one call each.
type RunAll<'a> = dyn Fn(RawFd, &dyn Fn(u16) -> Vec<u8>) -> Result<Calls> + 'a;

// The single-call cases, by index.
const NOOP_TC: usize = 0;
const TC_NEW: usize = 1;
const TC_EST: usize = 2;
const TC_EST_ONE: usize = 3;
const TC_REPLY: usize = 4;
const TC_REQUEST_START: usize = 5;
const TC_RESPONSE_START: usize = 6;
const NOOP_XDP: usize = 7;
const XDP_NEW: usize = 8;
const XDP_EST: usize = 9;
const XDP_EST_ONE: usize = 10;
const XDP6_NEW: usize = 11;
const XDP6_EST: usize = 12;

fn single(
    rig: &mut Rig,
    noop_tc: &impl std::os::fd::AsRawFd,
    noop_xdp: &impl std::os::fd::AsRawFd,
    calls: u32,
    reps: u32,
) -> Result<Vec<Case>> {
    let ports: Vec<u16> = (0..calls as u16).map(|i| 10_000 + i).collect();
    let backends: Vec<Ipv4Addr> = (1..=BACKENDS).map(backend_ip).collect();
    let names = [
        ("no-op TC program (floor)", "noop (SCHED_CLS)"),
        (
            "TC ingress: new flow (SYN: Maglev, conntrack insert, DNAT)",
            program_names::TC_INGRESS,
        ),
        (ESTABLISHED_CASE, program_names::TC_INGRESS),
        (
            "TC ingress: established, one flow (same packet every call)",
            program_names::TC_INGRESS,
        ),
        (REPLY_CASE, program_names::TC_EGRESS),
        (
            "TC ingress: a request start (arms its response; 54-byte head scanned)",
            program_names::TC_INGRESS,
        ),
        (
            "TC egress: a response start (status line read, 179-byte head scanned)",
            program_names::TC_EGRESS,
        ),
        ("no-op XDP program (floor)", "noop (XDP)"),
        (
            "XDP: new flow (SYN: Maglev, conntrack insert, DNAT, FIB, redirect)",
            program_names::XDP,
        ),
        (
            "XDP: established flow (conntrack hit, DNAT, FIB, redirect)",
            program_names::XDP,
        ),
        (
            "XDP: established, one flow (same packet every call)",
            program_names::XDP,
        ),
        (
            "XDP: IPv6 new flow (tail call, Maglev, conntrack insert, DNAT, FIB, redirect)",
            program_names::XDP,
        ),
        (
            "XDP: IPv6 established flow (tail call, conntrack hit, DNAT, FIB, redirect)",
            program_names::XDP,
        ),
    ];
    let mut series: Vec<Series> = names.iter().map(|_| Series::default()).collect();

    // Runs `packet(port)` through `fd` once per port, one call each.
    let run_all = |fd: RawFd, packet: &dyn Fn(u16) -> Vec<u8>| -> Result<Calls> {
        let (mut d, mut v, mut o) = (Vec::new(), Vec::new(), Vec::new());
        for &port in &ports {
            let run = test_run(fd, &packet(port), 1)?;
            d.push(run.duration_ns);
            v.push(run.retval);
            o.push(run.out);
        }
        Ok((d, v, o))
    };
    let syn = |p| tcp(CLIENT, p, VIP, VPORT, SYN, &[]);
    let ack = |p| client_ack(p, VPORT);

    // One more repetition than recorded: the first runs on a conntrack map that has never held
    // an entry, whose free entries are handed out in memory order, which makes it faster than
    // any later one. A running node's map has long been used, so that one is dropped.
    for _ in 0..=reps {
        // TC: new flows, then the same flows established, then their replies.
        rig.clear_conntrack()?;
        series[NOOP_TC].add(&run_all(noop_tc.as_raw_fd(), &syn)?, names[NOOP_TC].0)?;

        let new = run_all(rig.tc_ingress, &syn)?;
        let chosen: Vec<Ipv4Addr> = new.2.iter().map(|o| dst_of(o)).collect();
        ensure!(
            chosen.iter().all(|b| backends.contains(b)),
            "a new flow was not DNATed to a backend"
        );
        series[TC_NEW].add(&new, names[TC_NEW].0)?;
        // The backends' SYN-ACKs establish the flows and their first data settles the flows'
        // protocol (not measured).
        let backend_of = |p: u16| chosen[usize::from(p - ports[0])];
        establish(rig, &run_all, &|p| backend_of(p).into())?;

        let est = run_all(rig.tc_ingress, &ack)?;
        ensure!(
            est.2.iter().zip(&chosen).all(|(o, b)| dst_of(o) == *b),
            "an established flow changed backend"
        );
        series[TC_EST].add(&est, names[TC_EST].0)?;

        // The same calls on one flow: what remains of the difference to the batched method is
        // the harness; what this adds over it is touching a different flow every time.
        let one = run_all(rig.tc_ingress, &|_| ack(ports[0]))?;
        ensure!(
            one.2.iter().all(|o| dst_of(o) == chosen[0]),
            "the one established flow changed backend"
        );
        series[TC_EST_ONE].add(&one, names[TC_EST_ONE].0)?;

        let replies = run_all(rig.tc_egress, &|p| {
            backend_data(backend_of(p), TPORT, p, BACKEND_DATA_END)
        })?;
        ensure!(
            replies.2.iter().all(|o| src_of(o) == VIP),
            "a reply was not reverse-NATed to the VIP"
        );
        series[TC_REPLY].add(&replies, names[TC_REPLY].0)?;

        // Response starts, on flows of their own (the replies above made these flows' protocol
        // opaque): handshake, a request that arms the start, then the measured response.
        let http_port = |p: u16| p + 20_000;
        let opened = run_all(rig.tc_ingress, &|p| {
            tcp(CLIENT, http_port(p), VIP, VPORT, SYN, &[])
        })?;
        let http_backends: Vec<Ipv4Addr> = opened.2.iter().map(|o| dst_of(o)).collect();
        let http_backend_of = |p: u16| http_backends[usize::from(p - ports[0])];
        run_all(rig.tc_egress, &|p| {
            syn_ack(http_backend_of(p), TPORT, http_port(p))
        })?;
        let requests = run_all(rig.tc_ingress, &|p| {
            tcp_at(
                CLIENT,
                http_port(p),
                VIP,
                VPORT,
                PSH_ACK,
                (CLIENT_NEXT, BACKEND_NEXT),
                REQUEST,
            )
        })?;
        series[TC_REQUEST_START].add(&requests, names[TC_REQUEST_START].0)?;
        let read_before = rig.responses_2xx()?;
        let starts = run_all(rig.tc_egress, &|p| {
            let ack = CLIENT_NEXT + REQUEST.len() as u32;
            tcp_at(
                http_backend_of(p),
                TPORT,
                CLIENT,
                http_port(p),
                PSH_ACK,
                (BACKEND_NEXT, ack),
                RESPONSE_START,
            )
        })?;
        ensure!(
            rig.responses_2xx()? - read_before == u64::from(calls),
            "not every response start was read"
        );
        series[TC_RESPONSE_START].add(&starts, names[TC_RESPONSE_START].0)?;

        // XDP, from an empty conntrack again.
        rig.clear_conntrack()?;
        series[NOOP_XDP].add(&run_all(noop_xdp.as_raw_fd(), &syn)?, names[NOOP_XDP].0)?;
        let new = run_all(rig.xdp, &syn)?;
        ensure!(
            new.2.iter().all(|o| backends.contains(&dst_of(o))),
            "an XDP new flow was not DNATed to a backend"
        );
        series[XDP_NEW].add(&new, names[XDP_NEW].0)?;
        establish(rig, &run_all, &|p| {
            dst_ip(&new.2[usize::from(p - ports[0])])
        })?;
        let est = run_all(rig.xdp, &ack)?;
        ensure!(
            est.2
                .iter()
                .zip(&new.2)
                .all(|(o, n)| dst_of(o) == dst_of(n)),
            "an XDP established flow changed backend"
        );
        series[XDP_EST].add(&est, names[XDP_EST].0)?;
        // As at TC: the same calls on one flow, its conntrack entries warm. (The TTL XDP
        // decrements is fresh in every call's packet, so the flow is forwarded every time.)
        let one = run_all(rig.xdp, &|_| ack(ports[0]))?;
        ensure!(
            one.2.iter().all(|o| dst_of(o) == dst_of(&new.2[0])),
            "the one XDP established flow changed backend"
        );
        series[XDP_EST_ONE].add(&one, names[XDP_EST_ONE].0)?;

        // XDP over IPv6 (the IPv6 program, tail-called), from an empty conntrack again.
        rig.clear_conntrack()?;
        let syn6 = |p| tcp_at(CLIENT6, p, VIP6, VPORT, SYN, (1000, 0), &[]);
        let new6 = run_all(rig.xdp, &syn6)?;
        let backends6: Vec<IpAddr> = (1..=BACKENDS).map(|i| backend_ip6(i).into()).collect();
        ensure!(
            new6.2.iter().all(|o| backends6.contains(&dst_ip(o))),
            "an XDP IPv6 new flow was not DNATed to a backend"
        );
        series[XDP6_NEW].add(&new6, names[XDP6_NEW].0)?;
        establish(rig, &run_all, &|p| {
            dst_ip(&new6.2[usize::from(p - ports[0])])
        })?;
        let ack6 = |p| {
            tcp_at(
                CLIENT6,
                p,
                VIP6,
                VPORT,
                ACK,
                (CLIENT_NEXT, BACKEND_DATA_END),
                &[],
            )
        };
        let est6 = run_all(rig.xdp, &ack6)?;
        ensure!(
            est6.2
                .iter()
                .zip(&new6.2)
                .all(|(o, n)| dst_ip(o) == dst_ip(n)),
            "an XDP IPv6 established flow changed backend"
        );
        series[XDP6_EST].add(&est6, names[XDP6_EST].0)?;
    }
    rig.clear_conntrack()?;
    for s in &mut series {
        s.means.remove(0);
    }

    for (i, expected) in [
        (TC_NEW, TC_ACT_OK),
        (TC_EST, TC_ACT_OK),
        (TC_EST_ONE, TC_ACT_OK),
        (TC_REPLY, TC_ACT_OK),
        (TC_REQUEST_START, TC_ACT_OK),
        (TC_RESPONSE_START, TC_ACT_OK),
        (XDP_NEW, XDP_REDIRECT),
        (XDP_EST, XDP_REDIRECT),
        (XDP_EST_ONE, XDP_REDIRECT),
        (XDP6_NEW, XDP_REDIRECT),
        (XDP6_EST, XDP_REDIRECT),
    ] {
        ensure!(
            series[i].verdict == Some(expected),
            "{}: verdict {:?}, expected {expected}",
            names[i].0,
            series[i].verdict
        );
    }
    let (tc_floor, xdp_floor) = (
        stats(&series[NOOP_TC].means).0,
        stats(&series[NOOP_XDP].means).0,
    );
    Ok(names
        .iter()
        .zip(&series)
        .enumerate()
        .map(|(i, ((name, program), s))| {
            let (median_ns, min_ns, max_ns) = stats(&s.means);
            let xdp = i >= NOOP_XDP;
            let verdict = s.verdict.unwrap_or_default();
            Case {
                method: "single",
                name: name.to_string(),
                program,
                repeat: 1,
                calls,
                reps,
                median_ns,
                min_ns,
                max_ns,
                floor_ns: if xdp { xdp_floor } else { tc_floor },
                verdict: if xdp {
                    xdp_verdict(verdict)
                } else {
                    tc_verdict(verdict)
                },
            }
        })
        .collect())
}

/// Establishes each flow of a single-call series, whose SYN went to `backend_of(port)`: the
/// backend's SYN-ACK, then its first data (which settles the flow's protocol), through TC
/// egress. Each must come out reverse-NATed: its reply half matched, so the SYN-ACK
/// established the flow.
fn establish(rig: &Rig, run_all: &RunAll<'_>, backend_of: &dyn Fn(u16) -> IpAddr) -> Result<()> {
    let src_is_vip = |calls: &Calls| {
        calls.1.iter().all(|&v| v == TC_ACT_OK)
            && calls
                .2
                .iter()
                .all(|o| matches!(src_ip(o), ip if ip == VIP || ip == VIP6))
    };
    let syn_acks = run_all(rig.tc_egress, &|p| syn_ack(backend_of(p), TPORT, p))?;
    let data = run_all(rig.tc_egress, &|p| {
        backend_data(backend_of(p), TPORT, p, BACKEND_NEXT)
    })?;
    ensure!(
        src_is_vip(&syn_acks) && src_is_vip(&data),
        "a SYN-ACK or a first data segment was not reverse-NATed"
    );
    Ok(())
}

// -------------------------------------------------------------------------- profile ---

/// Seconds each profiled case runs under perf.
const PROFILE_SECONDS: u64 = 4;

/// Runs each batched established-flow case alone for [`PROFILE_SECONDS`] under `perf record`
/// and sorts the samples that fell inside its program.
fn profile(rig: &Rig) -> Result<Vec<Profile>> {
    // The single-call cases emptied conntrack.
    establish_self_nat(rig, SELF_NAT)?;
    let cases = [
        (
            ESTABLISHED_CASE,
            program_names::TC_INGRESS,
            rig.tc_ingress,
            SELF_NAT.established_ack(),
        ),
        (
            REPLY_CASE,
            program_names::TC_EGRESS,
            rig.tc_egress,
            SELF_NAT.reply_data(),
        ),
    ];
    let dir = std::env::temp_dir().join(format!("geosteer-bench-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut profiles = Vec::new();
    for (name, program, fd, packet) in cases {
        // Without line info the profile is still worth its parts.
        let lines = SourceLines::of_program(fd).unwrap_or_else(|e| {
            eprintln!("profile of {program}: no source lines: {e:#}");
            SourceLines { starts: Vec::new() }
        });
        let data = dir.join("perf.data");
        let mut perf = Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "10000",
                "-a",
                "-g",
                "-o",
            ])
            .arg(&data)
            .args(["--", "sleep", &PROFILE_SECONDS.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting `perf record` (GEOSTEER_BENCH_PROFILE=1 needs perf)")?;
        // Until perf stops: it samples only while its `sleep` runs.
        while perf.try_wait()?.is_none() {
            test_run(fd, &packet, 100_000)?;
        }
        let script = Command::new("perf")
            .args(["script", "-F", "ip,sym", "-i"])
            .arg(&data)
            .output()
            .context("perf script")?;
        ensure!(script.status.success(), "perf script failed");
        let symbol = program.strip_prefix("geosteer_").unwrap_or(program);
        profiles.push(sort_samples(
            name,
            program,
            &String::from_utf8_lossy(&script.stdout),
            symbol,
            &lines,
        ));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(profiles)
}

/// The source line of each piece of a loaded program's JIT image, from the kernel: the
/// program's line info (instruction → file, line, text in its BTF) with the JIT address of
/// each record (BPF_OBJ_GET_INFO_BY_FD). A perf sample's address then names the line it ran.
struct SourceLines {
    /// (JIT address where the line's code starts, `file:line: text`), by address.
    starts: Vec<(u64, String)>,
}

impl SourceLines {
    fn of_program(fd: RawFd) -> Result<SourceLines> {
        use aya_obj::generated::{bpf_btf_info, bpf_line_info, bpf_prog_info};
        // SAFETY: plain C structs, valid when zeroed.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        object_info(fd, &mut info).context("program info")?;
        let (lines, jited) = (info.nr_line_info as usize, info.nr_jited_line_info as usize);
        ensure!(
            lines > 0 && lines == jited,
            "the program has {lines} line records and {jited} JIT addresses (root and BTF needed)"
        );
        ensure!(info.line_info_rec_size as usize == size_of::<bpf_line_info>());
        let btf_id = info.btf_id;
        // Each record: instruction offset, file name offset, line text offset, line << 10 | column.
        let mut line_info = vec![[0u32; 4]; lines];
        let mut addresses = vec![0u64; jited];
        // SAFETY: as above.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        info.nr_line_info = lines as u32;
        info.line_info_rec_size = size_of::<bpf_line_info>() as u32;
        info.line_info = line_info.as_mut_ptr() as u64;
        info.nr_jited_line_info = jited as u32;
        info.jited_line_info_rec_size = 8;
        info.jited_line_info = addresses.as_mut_ptr() as u64;
        object_info(fd, &mut info).context("program line info")?;
        // Without the right to see kernel addresses the kernel reports the count but no address.
        ensure!(
            info.jited_line_info != 0 && addresses.iter().any(|&a| a != 0),
            "the kernel gave no JIT addresses (kernel.kptr_restrict?)"
        );

        let btf_fd = bpf(BPF_BTF_GET_FD_BY_ID, &mut [btf_id, 0, 0]).context("the program's BTF")?;
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let btf_fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(btf_fd) };
        // SAFETY: as above.
        let mut btf_info: bpf_btf_info = unsafe { std::mem::zeroed() };
        object_info(btf_fd.as_raw_fd(), &mut btf_info).context("BTF size")?;
        let mut btf = vec![0u8; btf_info.btf_size as usize];
        // SAFETY: as above.
        let mut btf_info: bpf_btf_info = unsafe { std::mem::zeroed() };
        btf_info.btf = btf.as_mut_ptr() as u64;
        btf_info.btf_size = btf.len() as u32;
        object_info(btf_fd.as_raw_fd(), &mut btf_info).context("BTF")?;
        // The header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
        let word = |at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().unwrap()) as usize;
        let strings = &btf[word(4) + word(16)..][..word(20)];
        let text = |offset: u32| {
            let rest = &strings[offset as usize..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };
        let mut starts: Vec<(u64, String)> = line_info
            .iter()
            .zip(&addresses)
            .map(|(line, &address)| {
                let [_, file_name_off, line_off, line_col] = *line;
                let file = text(file_name_off);
                let file = file
                    .rsplit_once("/src/")
                    .map_or(file.as_str(), |(_, f)| f)
                    .to_string();
                let source = text(line_off);
                (
                    address,
                    format!("{file}:{}: {}", line_col >> 10, source.trim()),
                )
            })
            .collect();
        starts.sort_by_key(|(address, _)| *address);
        Ok(SourceLines { starts })
    }

    /// The line whose code holds `address`, if it is in the program.
    fn at(&self, address: u64) -> Option<&str> {
        let index = self.starts.partition_point(|(start, _)| *start <= address);
        index.checked_sub(1).map(|i| self.starts[i].1.as_str())
    }
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;

/// The `bpf(2)` syscall with `attr`, whose size the kernel checks.
fn bpf<T>(command: libc::c_long, attr: &mut T) -> Result<i32> {
    // SAFETY: `attr` is a live, writable struct of the given size.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            size_of::<T>() as u32,
        )
    };
    if result < 0 {
        bail!("bpf({command}): {}", std::io::Error::last_os_error());
    }
    Ok(result as i32)
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (a `bpf_*_info` struct).
fn object_info<T>(fd: RawFd, info: &mut T) -> Result<()> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd as u32,
        info_len: size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// Which part of a per-packet cost a kernel function is.
fn part_of(function: &str) -> PartKind {
    const HASH: &[&str] = &[
        "htab",
        "lookup_nulls_elem_raw",
        "lookup_elem_raw",
        "jhash",
        "memcmp",
    ];
    const REWRITE: &[&str] = &[
        "bpf_skb_store_bytes",
        "bpf_l3_csum_replace",
        "bpf_l4_csum_replace",
        "inet_proto_csum_replace",
        "skb_ensure_writable",
        "memcpy",
        "csum_partial",
    ];
    const CLOCK: &[&str] = &["read_tsc", "ktime_get", "bpf_ktime_get"];
    if function.starts_with("bpf_prog_") {
        PartKind::Program
    } else if HASH.iter().any(|h| function.contains(h)) {
        PartKind::HashLookups
    } else if REWRITE.iter().any(|h| function.contains(h)) {
        PartKind::Rewrite
    } else if CLOCK.iter().any(|h| function.contains(h)) {
        PartKind::Clock
    } else {
        PartKind::Other
    }
}

/// Sorts `perf script -F ip,sym` output: samples whose call chain passes through a JITed
/// program named `..._<symbol>`, by the part their innermost function belongs to.
fn sort_samples(
    name: &str,
    program: &'static str,
    script: &str,
    symbol: &str,
    source: &SourceLines,
) -> Profile {
    use std::collections::BTreeMap;
    let mut functions: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples = 0u64;
    for chain in script.split("\n\n") {
        // Each frame: its address and its symbol.
        let frames: Vec<(&str, &str)> = chain
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?, words.next()?))
            })
            .collect();
        let in_program = frames
            .iter()
            .any(|(_, f)| f.starts_with("bpf_prog_") && f.ends_with(symbol));
        let Some((address, leaf)) = frames.first().filter(|_| in_program) else {
            continue;
        };
        samples += 1;
        let leaf = if leaf.starts_with("bpf_prog_") {
            let line = u64::from_str_radix(address, 16)
                .ok()
                .and_then(|a| source.at(a))
                .unwrap_or("(no line)");
            *lines.entry(line.to_string()).or_default() += 1;
            "bpf_prog_*".to_string()
        } else {
            leaf.to_string()
        };
        *functions.entry(leaf).or_default() += 1;
    }
    let mut lines: Vec<(String, f64)> = lines
        .into_iter()
        .map(|(line, count)| (line, count as f64 / samples.max(1) as f64))
        .collect();
    lines.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut parts: BTreeMap<PartKind, ProfilePart> = BTreeMap::new();
    for (function, count) in functions {
        let share = count as f64 / samples.max(1) as f64;
        let kind = part_of(&function);
        let part = parts.entry(kind).or_insert(ProfilePart {
            kind,
            part: kind.describe(),
            share: 0.0,
            functions: Vec::new(),
        });
        part.share += share;
        part.functions.push((function, share));
    }
    let mut parts: Vec<ProfilePart> = parts.into_values().collect();
    parts.sort_by(|a, b| b.share.total_cmp(&a.share));
    for part in &mut parts {
        part.functions.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    Profile {
        name: name.to_string(),
        program,
        samples,
        parts,
        lines,
    }
}
