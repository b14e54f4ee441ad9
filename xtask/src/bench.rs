//! `cargo xtask bench [--quick]`: measures the data path and writes BENCHMARKS.md.
//!
//! 1. The kernel programs' cost per packet, through BPF_PROG_TEST_RUN
//!    (`tests/benches/datapath.rs`, which explains its two timing methods).
//! 2. HTTP with wrk from a client namespace, in the same lab topology and the same run: through
//!    the VIP with geosteer, straight to one backend, and through the VIP with iptables
//!    statistic-mode DNAT and nftables `numgen` DNAT (kube-proxy's two modes), at 4 and 64
//!    backends, with keep-alive and with a new connection per request, over interleaved rounds
//!    (5; 2 with `--quick`), with the CPU time each request cost.
//!
//! Everything it starts lives in lab namespaces that are deleted on drop (including the
//! iptables and nftables rules, which live in the node namespace), so it leaves nothing behind.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use geosteer_tests::agent::{Agent, PinDir};
use geosteer_tests::profile::PartKind;
use geosteer_tests::{Lab, LabSpec};
use serde::Deserialize;

use crate::bench_policy::median;
use crate::{install, run_cmd, workspace_root};

const VIP: &str = "198.19.0.10";
const BACKEND_PORT: u16 = 8080;
const BACKEND_COUNTS: [u8; 2] = [4, 64];
/// wrk: two threads (one per core of the reference machine), 64 connections.
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "64";

pub(crate) fn run(quick: bool) -> Result<()> {
    let started = Instant::now();
    install::all()?;
    let root = workspace_root();
    // Release builds of the agent and the lab programs: the numbers are about the data path,
    // not about debug-build user space.
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "geosteer",
        "-p",
        "geosteer-tests",
        "--bins",
    ]))?;
    let kernel = kernel_bench(&root, quick)?;

    // The lab helpers find `geosteer`, `lab-backend` and `lab-client` through this variable.
    // SAFETY: set before this process starts any thread that could read the environment.
    unsafe { std::env::set_var("GEOSTEER_BIN_DIR", root.join("target/release")) };
    let seconds = if quick { 3 } else { 10 };
    let rounds = if quick { 2 } else { 5 };
    let mut http = Vec::new();
    for backends in BACKEND_COUNTS {
        http.push(http_bench(backends, seconds, rounds)?);
    }

    let machine = Machine::probe();
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    write_charts(&root.join(CHARTS_DIR), &kernel, &http)?;
    let text = render(
        command,
        &machine,
        &kernel,
        &http,
        seconds,
        started.elapsed(),
    );
    let text = text + &crate::bench_policy::run(quick)?;
    std::fs::write(root.join("BENCHMARKS.md"), &text).context("writing BENCHMARKS.md")?;
    println!("{text}");
    Ok(())
}

// ------------------------------------------------------------------ kernel programs ---

#[derive(Deserialize)]
struct KernelReport {
    bpf_stats_enabled: String,
    batched_repeat: u32,
    single_calls: u32,
    cases: Vec<KernelCase>,
    /// Where the batched established-flow cases spend their time (perf samples).
    #[serde(default)]
    profiles: Vec<KernelProfile>,
}

#[derive(Deserialize)]
struct KernelProfile {
    name: String,
    samples: u64,
    parts: Vec<KernelProfilePart>,
    /// The program's own samples by source line (`file:line: text`), as shares of all.
    #[serde(default)]
    lines: Vec<(String, f64)>,
}

#[derive(Deserialize)]
struct KernelProfilePart {
    /// Absent in the reports of earlier benches.
    #[serde(default)]
    kind: Option<PartKind>,
    part: String,
    share: f64,
    functions: Vec<(String, f64)>,
}

#[derive(Deserialize)]
struct KernelCase {
    method: String,
    name: String,
    program: String,
    reps: u32,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    floor_ns: f64,
    verdict: String,
}

fn kernel_bench(root: &Path, quick: bool) -> Result<KernelReport> {
    let out = root.join("target/bench-datapath.json");
    let _ = std::fs::remove_file(&out);
    run_cmd(
        Command::new("cargo")
            .current_dir(root)
            .args(["bench", "-p", "geosteer-tests", "--bench", "datapath"])
            .env("GEOSTEER_BENCH_OUT", &out)
            .env("GEOSTEER_BENCH_QUICK", if quick { "1" } else { "0" })
            .env("GEOSTEER_BENCH_PROFILE", "1"),
    )?;
    let json =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    serde_json::from_str(&json).context("parsing the datapath bench report")
}

// ----------------------------------------------------------------------------- HTTP ---

/// One wrk run's results.
struct Wrk {
    requests_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
    non_2xx: u64,
    /// connect, read, write, timeout.
    socket_errors: [u64; 4],
    /// CPU time of the whole machine during the run (/proc/stat): all of it but idle, and of
    /// that the kernel's (system, irq, softirq), in seconds.
    cpu_busy_s: f64,
    cpu_kernel_s: f64,
}

impl Wrk {
    /// CPU µs per request: the machine's busy time over the run (wrk and backends included,
    /// which cost every target the same), and of it the kernel's.
    fn cpu_per_request_us(&self) -> (f64, f64) {
        let n = self.requests.max(1) as f64;
        (self.cpu_busy_s * 1e6 / n, self.cpu_kernel_s * 1e6 / n)
    }
}

/// (busy, kernel) seconds of CPU time since boot, over all CPUs (the first line of /proc/stat).
fn cpu_seconds() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    ensure!(fields.len() >= 8, "short cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal
    let tick = 1.0 / clock_ticks_per_second();
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    let kernel = fields[2] + fields[5] + fields[6];
    Ok((busy as f64 * tick, kernel as f64 * tick))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

impl Wrk {
    fn errors(&self) -> String {
        let [connect, read, write, timeout] = self.socket_errors;
        if self.non_2xx == 0 && self.socket_errors == [0; 4] {
            return "0".into();
        }
        let mut parts = Vec::new();
        for (n, what) in [
            (self.non_2xx, "non-2xx"),
            (connect, "connect"),
            (read, "read"),
            (write, "write"),
            (timeout, "timeout"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        parts.join(", ")
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    Geosteer,
    Direct,
    Iptables,
    Nftables,
    Haproxy,
}

const TARGETS: [Target; 5] = [
    Target::Geosteer,
    Target::Direct,
    Target::Iptables,
    Target::Nftables,
    Target::Haproxy,
];

/// The peers geosteer is judged against (direct is a reference, not a peer).
const PEERS: [Target; 3] = [Target::Iptables, Target::Nftables, Target::Haproxy];

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Geosteer => "geosteer (TC, VIP)",
            Target::Direct => "direct to one backend",
            Target::Iptables => "iptables DNAT (VIP)",
            Target::Nftables => "nftables numgen DNAT (VIP)",
            Target::Haproxy => "HAProxy, TCP mode (VIP)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Target::Geosteer => "geosteer",
            Target::Direct => "direct",
            Target::Iptables => "iptables",
            Target::Nftables => "nftables",
            Target::Haproxy => "haproxy",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    KeepAlive,
    Close,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::Close => "new connection per request",
        }
    }
}

struct HttpRun {
    round: usize,
    target: Target,
    mode: Mode,
    wrk: Wrk,
}

/// A lab-client check before a wrk run through a VIP: requests ok, attempted, and how many
/// backends answered.
struct Spread {
    target: Target,
    ok: u64,
    attempted: u64,
    answered: usize,
}

struct HttpBench {
    backends: u8,
    runs: Vec<HttpRun>,
    spreads: Vec<Spread>,
}

/// Every target runs once per round, in an order rotated by one from the last round's (each
/// target goes first in turn), reversed after every full turn (so a target does not always
/// follow the same one): neither a drift of the machine nor state left by one target
/// (TIME_WAIT sockets, conntrack entries) favours one of them.
fn round_order(round: usize) -> Vec<Target> {
    let mut order = TARGETS.to_vec();
    order.rotate_left(round % TARGETS.len());
    if (round / TARGETS.len()) % 2 == 1 {
        order.reverse();
    }
    order
}

fn http_bench(backends: u8, seconds: u32, rounds: usize) -> Result<HttpBench> {
    let prefix = format!("gsb{backends}");
    eprintln!("\n=== HTTP, {backends} backends ===");
    let mut lab = Lab::build(&LabSpec::simple(&prefix, backends))?;
    // The lab turns TX checksum offload off for its XDP tests; a real deployment has it on.
    lab.set_tx_checksum_offload(true)?;
    lab.start_backends(BACKEND_PORT, None)?;
    // New-connection runs open tens of thousands of connections from one client address: give
    // the client the whole port range and let it reuse ports in TIME_WAIT, as load generators
    // are usually set up, so the client's port space is not what limits the run.
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        lab.client.exec(&["sysctl", "-q", "-w", setting])?;
    }
    let mut bench = HttpBench {
        backends,
        runs: Vec::new(),
        spreads: Vec::new(),
    };
    let vip_url = format!("http://{VIP}:80/");
    let direct_url = format!("http://{}:{BACKEND_PORT}/", lab.backends[0].ip);

    for round in 0..rounds {
        for target in round_order(round) {
            match target {
                Target::Geosteer => {
                    // A fresh pin directory: no conntrack state carried over from round 1.
                    let pins = PinDir::new(&prefix)?;
                    let mut agent = Agent::start(&lab.node, &pins, &agent_config(&lab, &pins))?;
                    bench.spreads.push(spread(&lab, target, round)?);
                    wrk_both(&lab, &vip_url, target, round, seconds, &mut bench.runs)?;
                    let status = agent.terminate()?;
                    ensure!(status.success(), "agent exited with {status}");
                    // A stop leaves the data path steering; the next round's peer needs the node clean.
                    geosteer_tests::agent::uninstall(&lab.node, &pins)?;
                }
                // No program attached, no netfilter NAT; one backend.
                Target::Direct => {
                    wrk_both(&lab, &direct_url, target, round, seconds, &mut bench.runs)?
                }
                Target::Iptables => {
                    iptables_install(&lab)?;
                    bench.spreads.push(spread(&lab, target, round)?);
                    wrk_both(&lab, &vip_url, target, round, seconds, &mut bench.runs)?;
                    iptables_remove(&lab)?;
                }
                Target::Nftables => {
                    nftables_install(&lab)?;
                    bench.spreads.push(spread(&lab, target, round)?);
                    wrk_both(&lab, &vip_url, target, round, seconds, &mut bench.runs)?;
                    nftables_remove(&lab)?;
                }
                Target::Haproxy => {
                    let proxy =
                        crate::bench_policy::Haproxy::start_with(&lab, &haproxy_tcp_config(&lab))?;
                    bench.spreads.push(spread(&lab, target, round)?);
                    wrk_both(&lab, &vip_url, target, round, seconds, &mut bench.runs)?;
                    proxy.stop();
                }
            }
        }
    }
    Ok(bench)
}

/// Agent config: VIP:80 → every backend's :8080, weight 1, TC on the client-facing interface.
fn agent_config(lab: &Lab, pins: &PinDir) -> String {
    let mut endpoints = String::new();
    for b in &lab.backends {
        let _ = writeln!(
            endpoints,
            "      - {{ip: {}, region: cn-hangzhou, weight: 1}}",
            b.ip
        );
    }
    format!(
        "node: {{name: bench-node, region: cn-hangzhou}}\n\
         dataplane:\n  tc: [cl0]\n  pinPath: {}\n\
         services:\n  - name: bench\n    vip: {VIP}\n    ports:\n      - {{name: http, port: 80, targetPort: {BACKEND_PORT}}}\n    endpoints:\n{endpoints}",
        pins.pin_path().display()
    )
}

/// The kube-proxy (iptables mode) way to spread a service over N endpoints: rule i of N jumps
/// with probability 1/(N-i), the last one always, which gives each endpoint 1/N. Loaded in one
/// iptables-restore, as kube-proxy does. (kube-proxy DNATs in a per-endpoint chain and marks
/// packets for masquerade: a jump or two more on a flow's first packet, none on the others,
/// which conntrack translates without walking the rules.)
fn iptables_install(lab: &Lab) -> Result<()> {
    let n = lab.backends.len();
    let mut rules = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:GS-SVC - [0:0]\n",
    );
    let _ = writeln!(
        rules,
        "-A PREROUTING -d {VIP}/32 -p tcp -m tcp --dport 80 -j GS-SVC"
    );
    for (i, b) in lab.backends.iter().enumerate() {
        let statistic = if i + 1 < n {
            format!(
                "-m statistic --mode random --probability {:.10} ",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            rules,
            "-A GS-SVC -p tcp {statistic}-j DNAT --to-destination {}:{BACKEND_PORT}",
            b.ip
        );
    }
    rules.push_str("COMMIT\n");
    let file = std::env::temp_dir().join(format!("geosteer-bench-{}.rules", std::process::id()));
    std::fs::write(&file, rules)?;
    let loaded = lab
        .node
        .exec(&["iptables-restore", file.to_str().context("temp path")?]);
    let _ = std::fs::remove_file(&file);
    loaded?;
    let listed = lab.node.exec(&["iptables", "-t", "nat", "-S", "GS-SVC"])?;
    ensure!(
        listed
            .lines()
            .filter(|l| l.starts_with("-A GS-SVC"))
            .count()
            == n,
        "iptables: expected {n} rules in GS-SVC:\n{listed}"
    );
    Ok(())
}

/// Removes the rules. With no NAT rule left, netfilter conntrack stops tracking in the
/// namespace, so the targets that run afterwards do not pay for it.
/// kube-proxy's nftables mode: the service chain picks an endpoint chain with
/// `numgen random mod N vmap`, and each endpoint chain DNATs to its endpoint. One `nft -f`.
fn nftables_install(lab: &Lab) -> Result<()> {
    let n = lab.backends.len();
    let mut rules = String::from("table ip gs_bench {\n");
    let mut picks = Vec::new();
    for (i, b) in lab.backends.iter().enumerate() {
        let _ = writeln!(
            rules,
            "  chain endpoint_{i} {{\n    meta l4proto tcp dnat to {}:{BACKEND_PORT}\n  }}",
            b.ip
        );
        picks.push(format!("{i} : goto endpoint_{i}"));
    }
    let _ = writeln!(
        rules,
        "  chain service {{\n    numgen random mod {n} vmap {{ {} }}\n  }}\n  chain prerouting \
         {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} \
         tcp dport 80 goto service\n  }}\n}}",
        picks.join(", ")
    );
    let file = std::env::temp_dir().join(format!("geosteer-bench-{}.nft", std::process::id()));
    std::fs::write(&file, rules)?;
    let loaded = lab
        .node
        .exec(&["nft", "-f", file.to_str().context("temp path")?]);
    let _ = std::fs::remove_file(&file);
    loaded?;
    let listed = lab
        .node
        .exec(&["nft", "list", "chain", "ip", "gs_bench", "service"])?;
    ensure!(
        listed.contains(&format!("mod {n}")),
        "nftables: the service chain does not pick among {n}:\n{listed}"
    );
    Ok(())
}

/// HAProxy as an L4 balancer: TCP mode, round robin over every backend, listening on the VIP
/// in the node namespace (a user-space proxy: two connections per client connection).
fn haproxy_tcp_config(lab: &Lab) -> String {
    let mut servers = String::new();
    for (i, b) in lab.backends.iter().enumerate() {
        let _ = writeln!(servers, "    server b{i} {}:{BACKEND_PORT}", b.ip);
    }
    format!(
        "defaults\n    mode tcp\n    timeout connect 2s\n    \
         timeout client 30s\n    timeout server 30s\n\nfrontend vip\n    bind {VIP}:80\n    \
         default_backend service\n\nbackend service\n    balance roundrobin\n{servers}"
    )
}

fn nftables_remove(lab: &Lab) -> Result<()> {
    lab.node
        .exec(&["nft", "delete", "table", "ip", "gs_bench"])?;
    Ok(())
}

fn iptables_remove(lab: &Lab) -> Result<()> {
    lab.node.exec(&["iptables", "-t", "nat", "-F"])?;
    lab.node.exec(&["iptables", "-t", "nat", "-X"])?;
    Ok(())
}

/// A short lab-client run through the VIP before wrk, to show the path works and spreads: wrk
/// cannot tell which backend answered.
fn spread(lab: &Lab, target: Target, round: usize) -> Result<Spread> {
    let requests = 20 * lab.backends.len() as u32;
    let report = lab.client_http(&format!("{VIP}:80"), requests, 1)?;
    eprintln!(
        "round {} {}: {} of {requests} ok, {} backends answered",
        round + 1,
        target.label(),
        report.ok,
        report.backends.len()
    );
    Ok(Spread {
        target,
        ok: report.ok,
        attempted: report.ok + report.errors,
        answered: report.backends.len(),
    })
}

/// A short warm-up, then keep-alive and new-connection runs.
fn wrk_both(
    lab: &Lab,
    url: &str,
    target: Target,
    round: usize,
    seconds: u32,
    runs: &mut Vec<HttpRun>,
) -> Result<()> {
    wrk(lab, url, Mode::KeepAlive, 1)?;
    for mode in [Mode::KeepAlive, Mode::Close] {
        let result = wrk(lab, url, mode, seconds)?;
        eprintln!(
            "round {} {:24} {:26} {:>9.0} req/s  p50 {:>8.0} us  p99 {:>8.0} us  errors: {}",
            round + 1,
            target.label(),
            mode.label(),
            result.requests_per_sec,
            result.p50_us,
            result.p99_us,
            result.errors()
        );
        runs.push(HttpRun {
            round,
            target,
            mode,
            wrk: result,
        });
    }
    Ok(())
}

fn wrk(lab: &Lab, url: &str, mode: Mode, seconds: u32) -> Result<Wrk> {
    let duration = format!("{seconds}s");
    let mut args = vec![
        "wrk",
        "-t",
        WRK_THREADS,
        "-c",
        WRK_CONNECTIONS,
        "-d",
        &duration,
        "--timeout",
        "2s",
        "--latency",
    ];
    if mode == Mode::Close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let before = cpu_seconds()?;
    let out = lab.client.exec(&args)?;
    let after = cpu_seconds()?;
    let mut wrk = parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))?;
    wrk.cpu_busy_s = after.0 - before.0;
    wrk.cpu_kernel_s = after.1 - before.1;
    Ok(wrk)
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut wrk = Wrk {
        requests_per_sec: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        requests: 0,
        non_2xx: 0,
        socket_errors: [0; 4],
        cpu_busy_s: 0.0,
        cpu_kernel_s: 0.0,
    };
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => wrk.requests_per_sec = n.parse()?,
            ["50%", t] => wrk.p50_us = micros(t)?,
            ["99%", t] => wrk.p99_us = micros(t)?,
            [n, "requests", "in", ..] => wrk.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => wrk.non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for (slot, name) in ["connect", "read", "write", "timeout"].iter().enumerate() {
                    let at = rest
                        .iter()
                        .position(|w| w == name)
                        .with_context(|| format!("no {name} count"))?;
                    wrk.socket_errors[slot] = rest[at + 1].trim_end_matches(',').parse()?;
                }
            }
            _ => {}
        }
    }
    ensure!(
        wrk.requests_per_sec.is_finite() && wrk.p50_us.is_finite() && wrk.p99_us.is_finite(),
        "missing Requests/sec or latency percentiles"
    );
    Ok(wrk)
}

/// wrk's latency format ("812.00us", "1.23ms", "2.00s") in microseconds.
fn micros(t: &str) -> Result<f64> {
    for (suffix, scale) in [("us", 1.0), ("ms", 1e3), ("s", 1e6), ("m", 60e6)] {
        if let Some(n) = t.strip_suffix(suffix) {
            return Ok(n.parse::<f64>()? * scale);
        }
    }
    bail!("unknown latency {t:?}")
}

// ---------------------------------------------------------------------------- report ---

struct Machine {
    cpus: String,
    cpu_model: String,
    kernel: String,
    date: String,
    wrk: String,
    iptables: String,
}

impl Machine {
    fn probe() -> Machine {
        let cmd = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .output()
                .map(|o| {
                    let text = if o.stdout.is_empty() {
                        o.stderr
                    } else {
                        o.stdout
                    };
                    String::from_utf8_lossy(&text)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .unwrap_or_else(|_| "unknown".into())
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let wrk = cmd(&["wrk", "-v"]);
        Machine {
            cpus: cmd(&["nproc"]),
            cpu_model,
            kernel: cmd(&["uname", "-r"]),
            date: cmd(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
            // "wrk debian/4.1.0-3+b2 [epoll] Copyright ..." → up to the copyright.
            wrk: wrk.split(" Copyright").next().unwrap_or(&wrk).to_string(),
            iptables: cmd(&["iptables", "--version"]),
        }
    }
}

fn render(
    command: &str,
    m: &Machine,
    kernel: &KernelReport,
    http: &[HttpBench],
    seconds: u32,
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `{command}` (needs root) on {}, in {:.1} minutes.\n",
        m.date,
        elapsed.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        w,
        "Machine: {} CPUs ({}), kernel {}. Tools: {}, {}.\n",
        m.cpus, m.cpu_model, m.kernel, m.wrk, m.iptables
    );
    render_kernel(w, kernel);
    render_http(w, kernel, http, seconds);
    s
}

/// Where the charts go, relative to the workspace root (and to BENCHMARKS.md).
pub(crate) const CHARTS_DIR: &str = "docs/bench";

/// The per-packet and HTTP charts, from the same run's data.
fn write_charts(dir: &Path, kernel: &KernelReport, http: &[HttpBench]) -> Result<()> {
    use crate::charts::{Series, Spread, spreads};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Per packet: each case's cost over its method's floor.
    let mut names: Vec<String> = Vec::new();
    // (The floors themselves are 0 over the floor: left out.)
    for c in kernel.cases.iter().filter(|c| !c.name.starts_with("no-op")) {
        let short = c.name.split(" (").next().unwrap_or(&c.name).to_string();
        if !names.contains(&short) {
            names.push(short);
        }
    }
    let series: Vec<Series> = ["batched", "single"]
        .iter()
        .map(|method| Series {
            name: format!("{method} (over its floor)"),
            values: names
                .iter()
                .map(|name| {
                    kernel
                        .cases
                        .iter()
                        .find(|c| c.method == *method && c.name.split(" (").next() == Some(name))
                        .map(|c| Spread {
                            median: (c.median_ns - c.floor_ns).max(0.0),
                            min: (c.min_ns - c.floor_ns).max(0.0),
                            max: (c.max_ns - c.floor_ns).max(0.0),
                        })
                })
                .collect(),
        })
        .collect();
    let labels: Vec<String> = names
        .iter()
        .map(|n| {
            n.replace("TC ingress: ", "TC in: ")
                .replace("TC egress: ", "TC out: ")
        })
        .collect();
    spreads(
        &dir.join("per-packet.svg"),
        "Kernel programs: ns per packet over the no-op floor (median, range)",
        "ns",
        &labels,
        &series,
    )?;
    // HTTP: requests/s and CPU per request per target, a series per backend count and mode.
    let categories: Vec<String> = TARGETS.iter().map(|t| t.short().to_string()).collect();
    let per = |f: &dyn Fn(&Wrk) -> f64| -> Vec<Series> {
        http.iter()
            .flat_map(|b| {
                [Mode::KeepAlive, Mode::Close].map(|mode| Series {
                    name: format!("{} backends, {}", b.backends, mode.label()),
                    values: TARGETS
                        .iter()
                        .map(|&t| {
                            let v: Vec<f64> = b
                                .runs
                                .iter()
                                .filter(|r| r.target == t && r.mode == mode)
                                .map(|r| f(&r.wrk))
                                .collect();
                            (!v.is_empty()).then(|| Spread {
                                median: median(&v),
                                min: min(&v),
                                max: max(&v),
                            })
                        })
                        .collect(),
                })
            })
            .collect()
    };
    spreads(
        &dir.join("http-rps.svg"),
        "HTTP through the VIP: requests/s (median, range over the rounds)",
        "requests/s",
        &categories,
        &per(&|w| w.requests_per_sec),
    )?;
    spreads(
        &dir.join("http-cpu.svg"),
        "HTTP through the VIP: CPU µs per request (median, range over the rounds)",
        "µs of CPU per request",
        &categories,
        &per(&|w| w.cpu_per_request_us().0),
    )
}

fn render_kernel(w: &mut String, k: &KernelReport) {
    let reps = |method: &str| {
        k.cases
            .iter()
            .find(|c| c.method == method)
            .map_or(0, |c| c.reps)
    };
    let _ = writeln!(w, "## 1. Kernel programs: cost per packet\n");
    let _ = writeln!(
        w,
        "The real, verifier-loaded programs run by the kernel on synthetic packets through \
         `BPF_PROG_TEST_RUN`, timed by the kernel (`tests/benches/datapath.rs`; the process is \
         pinned to one CPU). The service has 64 backends (selection is one Maglev table lookup, \
         whatever the count). A test run executes a program `repeat` times on one packet \
         buffer and reports the mean time per execution, so two methods are used, each beside \
         its own floor: a no-op program (`r0 = verdict; exit`, loaded with a raw \
         `bpf(BPF_PROG_LOAD)`) run through the same syscall path. \"Over floor\" is the \
         program's own cost.\n"
    );
    let _ = writeln!(
        w,
        "**Batched**: one call with `repeat = {}`, median of {} calls. This is only valid when \
         the program leaves the packet as it found it, which a DNAT does not: the \
         established-flow and reply cases use a service port whose only backend is the VIP:port \
         itself (its handshake went through both programs first: the flow is established; the \
         client sends an ACK, the backend data), so the rewrite goes through the same helpers and checksum updates but yields \
         the same bytes. The bench checks that the packet came out unchanged and that the \
         program counted every iteration, so each took the full path. Everything is in warm \
         caches: a lower bound.\n",
        k.batched_repeat,
        reps("batched")
    );
    let _ = writeln!(
        w,
        "![Per-packet cost over the floor]({CHARTS_DIR}/per-packet.svg)\n"
    );
    kernel_table(w, k, "batched");
    let _ = writeln!(
        w,
        "**One call at a time**: `repeat = 1` with a fresh packet per call, {} calls per \
         repetition, median over {} repetitions of the mean kernel-reported time, after one \
         unrecorded repetition (a conntrack map that has never held entries hands them out in \
         memory order, which is faster than a used map). Each new flow has its own source port; \
         the backends' SYN-ACKs (not measured) establish them; the established cases then send \
         each flow a client ACK (the \"one flow\" cases only the first flow) and the reply case \
         a backend's data. Conntrack is emptied between repetitions, so \
         each starts from the same state and the map never evicts. The kernel's clock reads \
         around a single execution are inside each sample, hence the higher floor. This is the \
         only way to give every run a new flow, and the only way to measure XDP, which \
         decrements the TTL when it forwards. The XDP program's FIB lookup succeeds (the bench \
         runs in a private network namespace with a route and neighbour entries for the \
         backends), so the XDP cases include the redirect.\n",
        k.single_calls,
        reps("single")
    );
    kernel_table(w, k, "single");

    let over = |method: &str, prefix: &str| {
        k.cases
            .iter()
            .find(|c| c.method == method && c.name.starts_with(prefix))
            .map_or(f64::NAN, |c| c.median_ns - c.floor_ns)
    };
    let _ = writeln!(
        w,
        "Reading it: at TC ingress, an established flow costs {:.0} ns when one packet runs back \
         to back, {:.0} ns one call at a time on one flow, and {:.0} ns one call at a time over \
         {} distinct flows. That is the same work with less and less of it in warm caches (a \
         syscall and a fresh skb between executions, then also a different conntrack entry each \
         time); a node interleaving many flows is likely nearer the last figure. A new flow \
         (Maglev selection, two conntrack inserts) costs {:.0} ns, a packet for no VIP {:.0} ns, \
         and a reply (reverse NAT; no response start awaited) {:.0} ns batched, {:.0} ns over distinct \
         flows. XDP does the request work before an skb exists: {:.0} ns for a new flow and \
         {:.0} ns for an established one ({:.0} ns on one flow), FIB lookup and redirect \
         included. These are the \
         programs alone; the rest of the stack's per-packet work is not in them (section 2 \
         measures the whole path). `kernel.bpf_stats_enabled` was {} during the run (1 would \
         add timing to every program run).\n",
        over("batched", "TC ingress: established"),
        over("single", "TC ingress: established, one flow"),
        over("single", "TC ingress: established flow"),
        k.single_calls,
        over("single", "TC ingress: new flow"),
        over("batched", "TC ingress: not for a VIP"),
        over("batched", "TC egress"),
        over("single", "TC egress"),
        over("single", "XDP: new flow"),
        over("single", "XDP: established flow"),
        over("single", "XDP: established, one flow"),
        k.bpf_stats_enabled
    );
    render_profiles(w, k);
}

/// Where an established packet's time goes: each profiled case's perf samples inside its
/// program, by part, as shares and as ns of the batched median over the floor.
fn render_profiles(w: &mut String, k: &KernelReport) {
    if k.profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "**Where the time goes.** Each batched established-flow case run alone for a few \
         seconds under `perf record -e cpu-clock -a -g` (software clock samples with call \
         chains: this machine has no hardware counters), its samples inside the program sorted \
         by the kernel function they fell in. The ns column spreads the batched median over the \
         floor by those shares. Reproduce: `GEOSTEER_BENCH_PROFILE=1 GEOSTEER_BENCH_QUICK=1 \
         GEOSTEER_BENCH_OUT=f.json target/release/deps/datapath-<hash> --bench` (root, perf).\n"
    );
    for p in &k.profiles {
        let over = k
            .cases
            .iter()
            .find(|c| c.method == "batched" && c.name == p.name)
            .map_or(f64::NAN, |c| c.median_ns - c.floor_ns);
        let _ = writeln!(
            w,
            "{} ({} samples, {over:.0} ns over the floor):\n",
            p.name, p.samples
        );
        let _ = writeln!(w, "| Part | Share | ≈ ns | Largest functions |");
        let _ = writeln!(w, "|---|---:|---:|---|");
        for part in &p.parts {
            let functions: Vec<String> = part
                .functions
                .iter()
                .take(4)
                .map(|(f, share)| format!("`{f}` {:.0}%", 100.0 * share))
                .collect();
            let _ = writeln!(
                w,
                "| {} | {:.0}% | {:.0} | {} |",
                part.part,
                100.0 * part.share,
                part.share * over,
                functions.join(", ")
            );
        }
        let _ = writeln!(w);
        render_profile_lines(w, p, over);
        render_against_target(w, k, p, over);
    }
}

/// The issue's per-packet targets (ns over the floor, batched) for the profiled cases.
const INGRESS_TARGET_NS: f64 = 150.0;
const REPLY_TARGET_NS: f64 = 120.0;

/// A profiled case against its target: how much of its time is in parts every packet of a
/// tracked, translated flow pays before any bookkeeping of the flow's own.
fn render_against_target(w: &mut String, k: &KernelReport, p: &KernelProfile, over: f64) {
    let ingress = p.name.starts_with("TC ingress: established flow");
    let reply = p.name.starts_with("TC egress: reply data");
    if !(ingress || reply) || p.parts.iter().all(|part| part.kind.is_none()) {
        return;
    }
    let ns = |kind: PartKind| -> f64 {
        p.parts
            .iter()
            .filter(|part| part.kind == Some(kind))
            .map(|part| part.share * over)
            .sum()
    };
    let (hash, rewrite, clock) = (
        ns(PartKind::HashLookups),
        ns(PartKind::Rewrite),
        ns(PartKind::Clock),
    );
    let target = if ingress {
        INGRESS_TARGET_NS
    } else {
        REPLY_TARGET_NS
    };
    let _ = write!(
        w,
        "**Against the target of {target:.0} ns** (issue 11: TC ingress established ≤ \
         {INGRESS_TARGET_NS:.0} ns, TC egress reply ≤ {REPLY_TARGET_NS:.0} ns over the floor): \
         this case takes {over:.0} ns, {:.0} ns {}. ",
        (over - target).abs(),
        if over > target { "over" } else { "under" }
    );
    if ingress {
        let passthrough = k
            .cases
            .iter()
            .find(|c| c.method == "batched" && c.name.starts_with("TC ingress: not for a VIP"))
            .map_or(f64::NAN, |c| c.median_ns - c.floor_ns);
        // The hash part holds three lookups: the service's (already in the passthrough
        // figure, with the parse) and the flow's two conntrack entries.
        let conntrack = hash * 2.0 / 3.0;
        let required = passthrough + conntrack + rewrite + clock;
        let _ = writeln!(
            w,
            "Parsing and the service lookup, which a packet for no VIP pays too, take \
             {passthrough:.0} ns; the two conntrack lookups ≈ {conntrack:.0} ns (two thirds of \
             the hash lookups, by count: the third is the service's, already counted); the \
             rewrite helpers {rewrite:.0} ns; the clock {clock:.0} ns. That is {required:.0} ns \
             before the flow's own bookkeeping (the backend check, the client's sequence \
             tracking, the counters, the conntrack keys), which is the remaining {:.0} ns. The \
             packet is a client ACK: a request start's tracking is not in it (it is the \
             single-call case above). Each of those parts is needed: the rewrite goes through \
             the kernel's checksum helpers because a TC program's context (`__sk_buff`) does \
             not say whether the L4 checksum is partial and the helpers handle both kinds \
             (Cilium's `lib/csum.h` uses them too); the second conntrack lookup is the flow's \
             other half, which every packet touches so that the LRU map keeps the two halves \
             together and rebuilds one evicted alone, and which a request start arms (Cilium's \
             per-packet service translation, too, reads a per-connection service entry, \
             CT_SERVICE in `lib/lb.h` `lb4_local`, besides the connection's own conntrack \
             entry); the clock stamps the entry for the idle timeouts.\n",
            (over - required).max(0.0)
        );
    } else {
        let required = hash + rewrite + clock;
        let _ = writeln!(
            w,
            "The two conntrack lookups (the reply entry, and the flow's other half, touched and \
             rebuilt as at ingress) take {hash:.0} ns, the rewrite helpers {rewrite:.0} ns and \
             the clock {clock:.0} ns: {required:.0} ns besides the parse; the remaining {:.0} ns \
             are the parse, the reply's TCP and response bookkeeping and the counters.\n",
            (over - required).max(0.0)
        );
    }
}

/// Source lines taking at least this share of a case's samples are listed.
const LINE_SHARE_LISTED: f64 = 0.01;

/// The program's own instructions by source line: where its part of the time goes.
fn render_profile_lines(w: &mut String, p: &KernelProfile, over: f64) {
    let listed: Vec<&(String, f64)> = p
        .lines
        .iter()
        .filter(|(_, share)| *share >= LINE_SHARE_LISTED)
        .collect();
    if listed.is_empty() {
        return;
    }
    let own: f64 = p.lines.iter().map(|(_, share)| share).sum();
    let _ = writeln!(
        w,
        "Of its own instructions ({:.0}% of the samples), the source lines with at least {:.0}% \
         each, by the kernel's line info for the JIT image (the rest is spread over {} more \
         lines):\n",
        100.0 * own,
        100.0 * LINE_SHARE_LISTED,
        p.lines.len() - listed.len()
    );
    let _ = writeln!(w, "| Source line | Share | ≈ ns |");
    let _ = writeln!(w, "|---|---:|---:|");
    for (line, share) in listed {
        // A double-backtick span holds single backticks; a table cell needs `|` escaped.
        let line = line.replace('|', "\\|").replace("``", "` `");
        let _ = writeln!(
            w,
            "| `` {line} `` | {:.1}% | {:.0} |",
            100.0 * share,
            share * over
        );
    }
    let _ = writeln!(w);
}

fn kernel_table(w: &mut String, k: &KernelReport, method: &str) {
    let _ = writeln!(
        w,
        "| Case | Program | ns/packet (median) | min – max | over no-op floor | Verdict |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---|");
    for c in k.cases.iter().filter(|c| c.method == method) {
        let over = if c.program.starts_with("noop") {
            "—".to_string()
        } else {
            format!("{:.0}", c.median_ns - c.floor_ns)
        };
        let _ = writeln!(
            w,
            "| {} | `{}` | {:.1} | {:.1} – {:.1} | {} | {} |",
            c.name, c.program, c.median_ns, c.min_ns, c.max_ns, over, c.verdict
        );
    }
    let _ = writeln!(w);
}

fn render_http(w: &mut String, kernel: &KernelReport, http: &[HttpBench], seconds: u32) {
    let rounds = http
        .first()
        .map_or(0, |b| b.runs.iter().map(|r| r.round + 1).max().unwrap_or(0));
    let _ = writeln!(
        w,
        "## 2. HTTP through the VIP: geosteer vs direct vs iptables and nftables DNAT\n"
    );
    let _ = writeln!(
        w,
        "![Requests/s per target]({CHARTS_DIR}/http-rps.svg)\n\n\
         ![CPU per request per target]({CHARTS_DIR}/http-cpu.svg)\n"
    );
    let _ = writeln!(
        w,
        "Lab of network namespaces (`tests/src/lib.rs`): a client, a node that routes, and N \
         backends running `lab-backend` (release build, one process per backend, a thread per \
         connection) on :{BACKEND_PORT}, each on its own veth link, TX checksum offload on. \
         From the client namespace, `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s \
         --latency`, after a 1 s warm-up, against:\n"
    );
    let _ = writeln!(
        w,
        "- **geosteer**: `http://{VIP}:80/`, the agent (release build, default map sizes) \
         attached with TC to the client-facing interface, every backend at weight 1;\n\
         - **direct**: `http://198.18.11.2:{BACKEND_PORT}/`, one backend, nothing in the path \
         but routing. It is a reference, not a floor: it is not load-balanced, and one backend \
         process serves all connections instead of N sharing them, which changes the backends' \
         share of the CPU;\n\
         - **iptables**: `http://{VIP}:80/` with the agent stopped and kube-proxy's iptables \
         method in the node namespace: `PREROUTING -d {VIP} -p tcp --dport 80 -j GS-SVC`, and \
         in GS-SVC one `-m statistic --mode random --probability 1/(N-i) -j DNAT` rule per \
         backend, the last without `statistic`;\n\
         - **nftables**: the same with kube-proxy's nftables method: a `prerouting` nat chain \
         sends `ip daddr {VIP} tcp dport 80` to a service chain whose `numgen random mod N \
         vmap` jumps to one of N endpoint chains, each `dnat to` its backend;\n\
         - **HAProxy**: `haproxy` in TCP mode listening on `{VIP}:80` in the node namespace \
         (the VIP on its `lo`), round robin over the N backends: a user-space L4 proxy, two \
         connections per client connection.\n\n\
         netfilter conntrack keeps the per-flow state of the two netfilter peers; their rules \
         are removed after their runs, which stops netfilter's NAT, so it does not run during \
         the other targets' runs.\n"
    );
    let _ = writeln!(
        w,
        "Each target is run with keep-alive (many requests per connection: per-packet cost) \
         and with `-H \"Connection: close\"` (one request per connection: per-flow cost, i.e. \
         conntrack setup and backend selection, on top of the TCP handshake), in {rounds} \
         rounds; each round runs the targets in an order rotated by one from the last (each \
         goes first in turn), reversed after every full turn. Cells show the median of the rounds and, in brackets, their \
         range. *CPU/request* is the machine's busy CPU time during the run (/proc/stat: \
         everything but idle, over all CPUs — wrk and the backends included, which cost every \
         target alike) divided by the requests served, and of it the kernel's share (system, \
         irq, softirq: the forwarding, NAT and TCP work); unlike requests/s it does not depend \
         on how the client's threads were scheduled. The client may reuse TIME_WAIT ports and \
         has the full port range. The machine has only 2 CPUs, shared by wrk, the backends and \
         the kernel's forwarding. A verdict \"ahead\" or \"behind\" is given only where the \
         ranges of the rounds do not overlap. \"Errors\" is wrk's non-2xx responses plus socket \
         errors over all rounds, reported as measured.\n"
    );
    for bench in http {
        let _ = writeln!(w, "### {} backends\n", bench.backends);
        let _ = writeln!(
            w,
            "| Target | Mode | Requests/s | p50 latency | p99 latency | CPU/request (kernel) | \
             Errors |"
        );
        let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---|");
        for target in TARGETS {
            for mode in [Mode::KeepAlive, Mode::Close] {
                let runs: Vec<&Wrk> = bench
                    .runs
                    .iter()
                    .filter(|r| r.target == target && r.mode == mode)
                    .map(|r| &r.wrk)
                    .collect();
                let values =
                    |f: &dyn Fn(&Wrk) -> f64| runs.iter().map(|r| f(r)).collect::<Vec<_>>();
                let rps = values(&|r| r.requests_per_sec);
                let cpu = values(&|r| r.cpu_per_request_us().0);
                let kernel = values(&|r| r.cpu_per_request_us().1);
                let errors: Vec<String> = runs
                    .iter()
                    .map(|r| r.errors())
                    .filter(|e| e != "0")
                    .collect();
                let _ = writeln!(
                    w,
                    "| {} | {} | {:.0} ({:.0}–{:.0}) | {} | {} | {:.1} µs ({:.1}–{:.1}; kernel \
                     {:.1}) | {} |",
                    target.label(),
                    mode.label(),
                    median(&rps),
                    min(&rps),
                    max(&rps),
                    latency(median(&values(&|r| r.p50_us))),
                    latency(median(&values(&|r| r.p99_us))),
                    median(&cpu),
                    min(&cpu),
                    max(&cpu),
                    median(&kernel),
                    if errors.is_empty() {
                        "0".to_string()
                    } else {
                        errors.join("; ")
                    }
                );
            }
        }
        let _ = writeln!(w);
        let answered: Vec<String> = TARGETS
            .iter()
            .filter_map(|&t| {
                let s: Vec<&Spread> = bench.spreads.iter().filter(|s| s.target == t).collect();
                (!s.is_empty()).then(|| {
                    format!(
                        "{}: {} of {} ok, {}–{} of {} backends answered",
                        t.short(),
                        s.iter().map(|s| s.ok).sum::<u64>(),
                        s.iter().map(|s| s.attempted).sum::<u64>(),
                        s.iter().map(|s| s.answered).min().unwrap_or(0),
                        s.iter().map(|s| s.answered).max().unwrap_or(0),
                        bench.backends
                    )
                })
            })
            .collect();
        let _ = writeln!(
            w,
            "Before each VIP run, one request per connection with `lab-client` (wrk cannot tell \
             which backend answered), over all rounds: {}.\n",
            answered.join("; ")
        );
        for mode in [Mode::KeepAlive, Mode::Close] {
            let g = median(&bench.rps(Target::Geosteer, mode));
            let verdicts: Vec<String> = PEERS
                .iter()
                .map(|&peer| {
                    format!(
                        "{} {:.0} req/s (×{:.2}: {}; CPU/request {})",
                        peer.short(),
                        median(&bench.rps(peer, mode)),
                        g / median(&bench.rps(peer, mode)),
                        bench.versus(peer, mode, Measure::Throughput).describe(),
                        bench.versus(peer, mode, Measure::Cpu).describe(),
                    )
                })
                .collect();
            let _ = writeln!(
                w,
                "- {}, medians: geosteer {g:.0} req/s; {}; direct {:.0} req/s.",
                mode.label(),
                verdicts.join("; "),
                median(&bench.rps(Target::Direct, mode)),
            );
        }
        let _ = writeln!(w);
    }

    let runs: Vec<&HttpRun> = http.iter().flat_map(|b| &b.runs).collect();
    let failed = runs.iter().filter(|r| r.wrk.errors() != "0").count();
    let mut tally = Vec::new();
    for peer in PEERS {
        for measure in [Measure::Throughput, Measure::Cpu] {
            let (mut ahead, mut behind, mut total) = (0, 0, 0);
            for b in http {
                for mode in [Mode::KeepAlive, Mode::Close] {
                    total += 1;
                    match b.versus(peer, mode, measure) {
                        Versus::Ahead => ahead += 1,
                        Versus::Behind => behind += 1,
                        Versus::Overlap => {}
                    }
                }
            }
            tally.push(format!(
                "vs {} in {}: ahead in {ahead}, behind in {behind}, within the noise in {} of \
                 {total}",
                peer.short(),
                measure.name(),
                total - ahead - behind
            ));
        }
    }
    // What the programs cost per request (a request and a response packet, section 1's
    // distinct-flow numbers) next to the whole CPU time a request takes in this lab.
    let over = |prefix: &str| {
        kernel
            .cases
            .iter()
            .find(|c| c.method == "single" && c.name.starts_with(prefix))
            .map_or(f64::NAN, |c| c.median_ns - c.floor_ns)
    };
    let programs_us = (over("TC ingress: established flow") + over("TC egress")) / 1000.0;
    let keepalive_cpu = http.first().map_or(f64::NAN, |b| {
        median(&b.cpu(Target::Geosteer, Mode::KeepAlive))
    });
    let _ = writeln!(
        w,
        "**Summary**, geosteer against kube-proxy's two methods, by the ranges of the rounds: \
         {}. {failed} of {} wrk runs had errors. For scale: with keep-alive at {} backends a \
         request costs the machine {keepalive_cpu:.0} µs of CPU in all (geosteer), wrk and \
         backends included, while a client packet and a backend's packet of an established \
         flow cost the programs about {programs_us:.1} µs (section 1, one call at a time over \
         distinct flows).\n",
        tally.join("; "),
        runs.len(),
        http.first().map_or(0, |b| b.backends),
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Measure {
    /// Requests/s: higher is better.
    Throughput,
    /// CPU per request: lower is better.
    Cpu,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Throughput => "throughput",
            Measure::Cpu => "CPU per request",
        }
    }
}

/// geosteer against a peer over the rounds: only a lead in every round counts.
#[derive(PartialEq)]
enum Versus {
    Ahead,
    Behind,
    Overlap,
}

impl Versus {
    fn describe(&self) -> &'static str {
        match self {
            Versus::Ahead => "geosteer ahead in every round",
            Versus::Behind => "geosteer behind in every round",
            Versus::Overlap => "within the noise",
        }
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

impl HttpBench {
    /// geosteer against `peer` in one mode: ahead or behind only when every round of one is
    /// better than every round of the other.
    fn versus(&self, peer: Target, mode: Mode, measure: Measure) -> Versus {
        let (g, p) = match measure {
            Measure::Throughput => (self.rps(Target::Geosteer, mode), self.rps(peer, mode)),
            // Lower is better: negated, so that "more" is better for both.
            Measure::Cpu => (
                self.cpu(Target::Geosteer, mode)
                    .iter()
                    .map(|v| -v)
                    .collect(),
                self.cpu(peer, mode).iter().map(|v| -v).collect(),
            ),
        };
        if g.is_empty() || p.is_empty() {
            Versus::Overlap
        } else if min(&g) > max(&p) {
            Versus::Ahead
        } else if min(&p) > max(&g) {
            Versus::Behind
        } else {
            Versus::Overlap
        }
    }

    /// Requests/s of each round for one target and mode.
    fn rps(&self, target: Target, mode: Mode) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.target == target && r.mode == mode)
            .map(|r| r.wrk.requests_per_sec)
            .collect()
    }

    /// CPU µs per request of each round for one target and mode.
    fn cpu(&self, target: Target, mode: Mode) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.target == target && r.mode == mode)
            .map(|r| r.wrk.cpu_per_request_us().0)
            .collect()
    }
}

fn latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::{
        KernelReport, TARGETS, median, micros, parse_wrk, render_against_target, round_order,
    };

    /// The target paragraph of `k`'s only profile, the case `over` ns over the floor.
    fn rendered(k: &KernelReport, over: f64) -> String {
        let mut w = String::new();
        render_against_target(&mut w, k, &k.profiles[0], over);
        w
    }

    /// A report with one batched passthrough case and the profile of `case` (`over` ns over
    /// a 30 ns floor), its parts as (kind, share).
    fn report(case: &str, over: f64, parts: &[(&str, f64)]) -> KernelReport {
        let parts: Vec<serde_json::Value> = parts
            .iter()
            .map(|(kind, share)| {
                serde_json::json!({"kind": kind, "part": kind, "share": share, "functions": []})
            })
            .collect();
        let case_json = |name: &str, over: f64| {
            serde_json::json!({"method": "batched", "name": name, "program": "p", "reps": 1,
                "median_ns": 30.0 + over, "min_ns": 0.0, "max_ns": 0.0, "floor_ns": 30.0,
                "verdict": "TC_ACT_OK"})
        };
        serde_json::from_value(serde_json::json!({
            "bpf_stats_enabled": "0", "batched_repeat": 1, "single_calls": 1,
            "cases": [case_json(case, over), case_json("TC ingress: not for a VIP (passthrough)", 50.0)],
            "profiles": [{"name": case, "samples": 1000, "parts": parts}],
        }))
        .unwrap()
    }

    #[test]
    fn ingress_target_counts_the_service_lookup_once() {
        let case = "TC ingress: established flow, a client ACK (conntrack hit, DNAT)";
        let k = report(
            case,
            200.0,
            &[
                ("program", 0.5),
                ("hash_lookups", 0.3),
                ("rewrite", 0.15),
                ("clock", 0.05),
            ],
        );
        let w = rendered(&k, 200.0);
        // 50 (passthrough) + 2/3 × 60 (conntrack) + 30 (rewrite) + 10 (clock) = 130; 70 remain.
        assert!(w.contains("target of 150 ns"), "{w}");
        assert!(w.contains("takes 200 ns, 50 ns over"), "{w}");
        assert!(w.contains("conntrack lookups ≈ 40 ns"), "{w}");
        assert!(w.contains("That is 130 ns"), "{w}");
        assert!(w.contains("remaining 70 ns"), "{w}");
    }

    #[test]
    fn reply_target_and_reports_without_kinds() {
        let case = "TC egress: reply data (reverse NAT; no response start awaited)";
        let k = report(case, 100.0, &[("program", 0.5), ("hash_lookups", 0.5)]);
        let w = rendered(&k, 100.0);
        assert!(w.contains("target of 120 ns"), "{w}");
        assert!(w.contains("takes 100 ns, 20 ns under"), "{w}");
        assert!(w.contains("take 50 ns"), "{w}");
        assert!(w.contains("remaining 50 ns"), "{w}");
        // A kind a later bench added is read, and counted in no named part.
        let later = report(case, 100.0, &[("hash_lookups", 0.5), ("tail_calls", 0.5)]);
        let w = rendered(&later, 100.0);
        assert!(w.contains("take 50 ns"), "{w}");
        // Only the two profiled cases have targets.
        let other = report("XDP: established flow", 100.0, &[("hash_lookups", 1.0)]);
        assert_eq!(rendered(&other, 100.0), "");
        // An earlier bench's report has no part kinds: nothing to weigh.
        let mut old: KernelReport = report(case, 100.0, &[]);
        old.profiles[0].parts = serde_json::from_value(
            serde_json::json!([{"part": "x", "share": 1.0, "functions": []}]),
        )
        .unwrap();
        assert_eq!(rendered(&old, 100.0), "");
    }

    #[test]
    fn every_round_runs_every_target_once_and_no_target_always_goes_first() {
        let firsts: Vec<_> = (0..5).map(|r| round_order(r)[0]).collect();
        for round in 0..5 {
            let order = round_order(round);
            assert_eq!(order.len(), TARGETS.len());
            for t in TARGETS {
                assert_eq!(
                    order.iter().filter(|&&o| o == t).count(),
                    1,
                    "{round}: {t:?}"
                );
            }
        }
        for t in TARGETS {
            assert!(
                firsts.iter().filter(|&&f| f == t).count() <= 2,
                "{firsts:?}"
            );
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn parses_wrk_output() {
        let out = "Running 10s test @ http://198.19.0.10:80/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   655.87us    1.20ms  30.11ms   93.12%
    Req/Sec    52.16k     3.01k   58.63k    71.50%
  Latency Distribution
     50%  458.00us
     75%  612.00us
     90%    0.92ms
     99%    6.19ms
  1038019 requests in 10.01s, 118.78MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 12
Requests/sec: 103700.55
Transfer/sec:     11.87MB
";
        let wrk = parse_wrk(out).unwrap();
        assert_eq!(wrk.requests_per_sec, 103700.55);
        assert_eq!(wrk.p50_us, 458.0);
        assert_eq!(wrk.p99_us, 6190.0);
        assert_eq!(wrk.requests, 1038019);
        assert_eq!(wrk.non_2xx, 12);
        assert_eq!(wrk.socket_errors, [1, 2, 3, 4]);
        assert_eq!(
            wrk.errors(),
            "12 non-2xx, 1 connect, 2 read, 3 write, 4 timeout"
        );
        assert_eq!(micros("2.00s").unwrap(), 2e6);
    }
}
