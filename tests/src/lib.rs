//! Network-namespace lab for geosteer tests, demos and benchmarks.
//!
//! A [`Lab`] is a small routed topology of namespaces joined by veth pairs:
//! a client (and optionally a second "uplink" client) on one side, a
//! number of backends running `lab-backend` on the other, and a `node`
//! namespace in the middle where the load balancer runs. Everything is
//! torn down on drop, including on panic, so a failing test leaves nothing
//! behind.
//!
//! Addresses: all lab traffic stays inside 198.18.0.0/15 (RFC 2544
//! benchmarking space) within the lab's own namespaces. VIPs are expected in
//! 198.19.0.0/16 and are reached through the client's default route. A lab
//! built with [`LabSpec::ipv6`] is dual-stack: every link also carries
//! 2001:db8:18:N::/64 (documentation space, [`lab_ipv6`]), and IPv6 VIPs are
//! expected in 2001:db8:19::/48.

pub mod agent;
pub mod http;
pub mod profile;

pub use geosteer::bpf_run::{TestRunOutcome, prog_test_run, prog_test_run_repeat};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// How long a freshly spawned `lab-backend` gets to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for killed leftovers of a crashed run to go away.
const STALE_KILL_TIMEOUT: Duration = Duration::from_secs(3);

/// Panics unless running as root. Privileged tests call this first so that
/// they fail loudly, rather than pass vacuously, when they cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (CAP_NET_ADMIN, CAP_BPF): run it through `cargo xtask test`");
    }
}

/// Runs a command and returns its stdout; on failure the error carries the
/// command line, exit status and stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `ip ARGS...` in the host network namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Names from `ip netns list`.
pub fn netns_list() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// PIDs of processes whose network namespace is `name`.
fn netns_pids(name: &str) -> Result<Vec<u32>> {
    Ok(ip(&["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// `(state, ppid)` from /proc/PID/stat, or `None` if the process is gone.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; the fields we
    // want follow the last ')'.
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

fn sigkill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: plain syscall; a stale pid just yields ESRCH, which we ignore.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    /// PIDs started through [`Netns::spawn`]; killed on drop if still ours.
    spawned: Mutex<Vec<u32>>,
}

impl Netns {
    /// Creates the namespace with `lo` up. A namespace of the same name left
    /// over from a crashed run is removed first, together with any processes
    /// still running in it.
    pub fn new(name: &str) -> Result<Netns> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!("invalid netns name {name:?}");
        }
        if netns_list()?.iter().any(|n| n == name) {
            remove_stale(name)?;
        }
        ip(&["netns", "add", name])?;
        // From here on, drop cleans up if anything below fails.
        let ns = Netns {
            name: name.to_string(),
            spawned: Mutex::new(Vec::new()),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip netns exec NAME ARGS...` and returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(&mut self.command(args))
    }

    /// Like [`Netns::exec`] but only reports success; output is discarded.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts a long-running process in the namespace with stdout piped and
    /// stderr inherited. The caller owns (and should reap) the child; if it
    /// is still running when the namespace is dropped, it is killed then.
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        let mut cmd = self.command(args);
        let line = command_line(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot spawn `{line}`"))?;
        // `ip netns exec` execs the program in place, so this PID is the
        // program itself.
        self.spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(child)
    }

    /// PIDs of all processes currently in this namespace.
    pub fn pids(&self) -> Result<Vec<u32>> {
        netns_pids(&self.name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let spawned = std::mem::take(self.spawned.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !spawned.is_empty() {
            let inside = self.pids().unwrap_or_default();
            let me = std::process::id();
            for pid in spawned {
                // Only a live, unreaped child of ours can still carry this
                // PID, and it must still be in this namespace: that rules
                // out killing an unrelated process that reused the number.
                let ours =
                    matches!(proc_state(pid), Some((state, ppid)) if ppid == me && state != 'Z');
                if ours && inside.contains(&pid) {
                    sigkill(pid);
                }
            }
        }
        // Deleting the namespace also destroys the veth ends inside it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Removes a namespace left behind by a crashed run. Its processes are
/// leftovers of that run (lab names are unique per lab), so they are killed
/// rather than left holding the namespace and its interfaces alive.
fn remove_stale(name: &str) -> Result<()> {
    let pids = netns_pids(name).unwrap_or_default();
    for &pid in &pids {
        sigkill(pid);
    }
    let deadline = Instant::now() + STALE_KILL_TIMEOUT;
    // Poll until the processes are gone (zombies count as gone), bounded.
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|&p| matches!(proc_state(p), Some((s, _)) if s != 'Z'))
    {
        thread::sleep(Duration::from_millis(20));
    }
    ip(&["netns", "del", name]).with_context(|| format!("removing stale netns {name}"))?;
    Ok(())
}

/// Creates a veth pair with end `a` in `ns_a` and end `b` in `ns_b`, assigns
/// the CIDR addresses and brings both ends up.
///
/// The pair is created directly inside the namespaces, so no interface ever
/// appears (or can be left behind) in the host namespace.
pub fn veth(
    ns_a: &Netns,
    a: &str,
    addr_a: &str,
    ns_b: &Netns,
    b: &str,
    addr_b: &str,
) -> Result<()> {
    ip(&[
        "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ])?;
    for (ns, dev, addr) in [(ns_a, a, addr_a), (ns_b, b, addr_b)] {
        ns.exec(&["ip", "addr", "add", addr, "dev", dev])?;
        ns.exec(&["ip", "link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Locates a helper binary (`lab-backend`, `lab-client`).
///
/// `GEOSTEER_BIN_DIR` wins if set. Otherwise the directory of the running
/// executable and its parent are searched: cargo puts test binaries in
/// `target/<profile>/deps` and regular binaries in `target/<profile>`. If
/// nothing is found the bare name is returned, leaving it to `PATH`.
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("GEOSTEER_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let candidate = d.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(name)
}

/// [`bin_path`] as a string, with an error that says how to fix it.
/// Runs `lab-client ARGS` in `ns` and parses the JSON it prints.
pub fn lab_client_json(ns: &Netns, args: &[&str]) -> Result<serde_json::Value> {
    let client = bin_arg("lab-client")?;
    let mut all = vec![client.as_str()];
    all.extend_from_slice(args);
    let out = ns.exec(&all)?;
    serde_json::from_str(out.trim()).with_context(|| format!("lab-client printed {out:?}"))
}

/// `lab-client pool` from `ns`: `connections` keep-alive connections to `target`, a request on
/// one of them every 20 ms, until `stop_file` exists (or a minute is over). Its timeline.
pub fn pool_until(
    ns: &Netns,
    target: &str,
    connections: u32,
    stop_file: &std::path::Path,
) -> Result<serde_json::Value> {
    let connections = connections.to_string();
    let stop_file = stop_file.to_str().context("stop file path")?;
    lab_client_json(
        ns,
        &[
            "pool",
            "--target",
            target,
            "--connections",
            &connections,
            "--duration-ms",
            "60000",
            "--interval-ms",
            "20",
            "--stop-file",
            stop_file,
        ],
    )
}

fn bin_arg(name: &str) -> Result<String> {
    let path = bin_path(name);
    if path.components().count() > 1 && !path.is_file() {
        bail!(
            "{} not found; build it with `cargo build -p geosteer-tests --bins` \
             or point GEOSTEER_BIN_DIR at the directory holding it",
            path.display()
        );
    }
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", path.display()))
}

// ------------------------------------------------------------- reports ---

/// Output of `lab-client http`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpReport {
    /// 2xx responses.
    pub ok: u64,
    /// Failed connects, timeouts and non-2xx responses. A broken connection
    /// counts all its unanswered requests, so `ok + errors` is the number
    /// of requests attempted.
    pub errors: u64,
    /// Responses per status code.
    pub status: BTreeMap<String, u64>,
    /// Responses per `X-Backend`.
    pub backends: BTreeMap<String, u64>,
    /// False if any single connection was answered by two backends.
    pub per_connection_backends_consistent: bool,
    pub connect_failures: u64,
    pub elapsed_ms: u64,
    /// The first error seen, to make assertion failures self-explanatory.
    #[serde(default)]
    pub first_error: Option<String>,
}

/// Output of `lab-client udp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpReport {
    pub ok: u64,
    pub errors: u64,
    pub backends: BTreeMap<String, u64>,
    #[serde(default)]
    pub first_error: Option<String>,
}

/// Knobs for [`http_from`]; see `lab-client http`.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub connections: u32,
    pub requests_per_connection: u32,
    pub concurrency: u32,
    pub timeout_ms: u64,
    /// Connect from this source port (needs `connections == 1`).
    pub source_port: Option<u16>,
}

impl HttpOptions {
    pub fn new(connections: u32, requests_per_connection: u32) -> Self {
        HttpOptions {
            connections,
            requests_per_connection,
            // A few parallel connections keep runs short when something
            // times out, without changing which source ports are used.
            concurrency: connections.clamp(1, 4),
            timeout_ms: 2000,
            source_port: None,
        }
    }
}

/// Runs `lab-client http` inside `ns` against `target` (`IP:PORT`).
pub fn http_from(ns: &Netns, target: &str, opts: &HttpOptions) -> Result<HttpReport> {
    let client = bin_arg("lab-client")?;
    let connections = opts.connections.to_string();
    let requests = opts.requests_per_connection.to_string();
    let concurrency = opts.concurrency.to_string();
    let timeout = opts.timeout_ms.to_string();
    let mut args = vec![
        client.as_str(),
        "http",
        "--target",
        target,
        "--connections",
        &connections,
        "--requests-per-connection",
        &requests,
        "--concurrency",
        &concurrency,
        "--timeout-ms",
        &timeout,
    ];
    let source_port = opts.source_port.map(|p| p.to_string());
    if let Some(port) = &source_port {
        args.extend(["--source-port", port.as_str()]);
    }
    let out = ns.exec(&args)?;
    serde_json::from_str(out.trim()).with_context(|| format!("parsing lab-client output {out:?}"))
}

/// Runs `lab-client udp` inside `ns` against `target` (`IP:PORT`).
pub fn udp_from(ns: &Netns, target: &str, count: u32, timeout_ms: u64) -> Result<UdpReport> {
    let client = bin_arg("lab-client")?;
    let out = ns.exec(&[
        &client,
        "udp",
        "--target",
        target,
        "--count",
        &count.to_string(),
        "--timeout-ms",
        &timeout_ms.to_string(),
    ])?;
    serde_json::from_str(out.trim()).with_context(|| format!("parsing lab-client output {out:?}"))
}

// ----------------------------------------------------------------- lab ---

/// What to build; see [`Lab::build`].
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Prefix of every namespace name. Labs that may exist at the same time
    /// must use different prefixes: building a lab removes any namespaces
    /// already carrying its names.
    pub prefix: String,
    pub backends: Vec<BackendSpec>,
    /// Adds a second client namespace, `{prefix}-up`, on its own link.
    pub with_uplink: bool,
    /// Dual-stack: every link also gets IPv6 (see [`lab_ipv6`]), the node forwards IPv6, and
    /// the backends listen on both families.
    pub ipv6: bool,
}

/// The IPv6 address `host` (1: the node side, 2: the leaf) of lab subnet `net`:
/// `2001:db8:18:<net>::<host>`, the IPv6 twin of `198.18.<net>.<host>`.
pub fn lab_ipv6(net: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x18, u16::from(net), 0, 0, 0, host)
}

/// A backend on subnet 198.18.<subnet_index>.0/24: the backend is `.2`, the
/// node side (`bk<subnet_index>`) is `.1`. Indexes 0 and 1 belong to the
/// clients.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    pub subnet_index: u8,
}

impl LabSpec {
    /// `count` backends named `b1..` on subnets 11, 12, ...
    pub fn simple(prefix: &str, count: u8) -> LabSpec {
        LabSpec {
            prefix: prefix.to_string(),
            backends: (1..=count)
                .map(|i| BackendSpec {
                    name: format!("b{i}"),
                    subnet_index: 10 + i,
                })
                .collect(),
            with_uplink: false,
            ipv6: false,
        }
    }

    /// The two-region lab of the policy tests: hz1, hz2 (cn-hangzhou, subnets 11 and 12) and
    /// sh1, sh2 (cn-shanghai, subnets 21 and 22).
    pub fn two_regions(prefix: &str) -> LabSpec {
        LabSpec {
            prefix: prefix.to_string(),
            backends: [("hz1", 11), ("hz2", 12), ("sh1", 21), ("sh2", 22)]
                .into_iter()
                .map(|(name, subnet_index)| BackendSpec {
                    name: name.into(),
                    subnet_index,
                })
                .collect(),
            with_uplink: false,
            ipv6: false,
        }
    }
}

pub struct LabBackend {
    pub name: String,
    pub ns: Netns,
    /// The backend's address, 198.18.<subnet_index>.2.
    pub ip: Ipv4Addr,
    /// In a dual-stack lab, 2001:db8:18:<subnet_index>::2.
    pub ip6: Option<Ipv6Addr>,
    /// The node-side interface towards this backend, `bk<subnet_index>`.
    pub node_if: String,
    /// Holds the HTTP status the backend answers with (see [`Lab::set_status`]).
    pub status_file: PathBuf,
    process: Option<Child>,
}

/// A built topology; see the crate docs. Dropping it kills every process it
/// started and deletes its namespaces.
pub struct Lab {
    pub client: Netns,
    pub node: Netns,
    pub backends: Vec<LabBackend>,
    pub uplink_client: Option<Netns>,
    /// Other processes whose lifetime is tied to the lab (see [`Lab::adopt`]).
    children: Vec<Child>,
    status_dir: PathBuf,
    /// Ports from the last [`Lab::start_backends`], for [`Lab::start_backend`].
    ports: Option<(u16, Option<u16>)>,
    ipv6: bool,
}

impl Lab {
    /// Builds the topology:
    ///
    /// - `{prefix}-cl`: `eth0` 198.18.0.2/24 ↔ node `cl0` 198.18.0.1/24
    /// - `{prefix}-up` (optional): `eth0` 198.18.1.2/24 ↔ node `up0` 198.18.1.1/24
    /// - `{prefix}-b{i}`: `eth0` 198.18.N.2/24 ↔ node `bkN` 198.18.N.1/24
    ///
    /// Every leaf has a default route via its node-side address; the node
    /// forwards with reverse-path filtering off, since replies from a VIP
    /// come back from backends.
    pub fn build(spec: &LabSpec) -> Result<Lab> {
        validate(spec)?;
        let p = &spec.prefix;
        let node = Netns::new(&format!("{p}-node"))?;
        let client = Netns::new(&format!("{p}-cl"))?;
        let uplink_client = if spec.with_uplink {
            Some(Netns::new(&format!("{p}-up"))?)
        } else {
            None
        };
        let mut backends = Vec::new();
        for (i, b) in spec.backends.iter().enumerate() {
            let ns = Netns::new(&format!("{p}-b{i}"))?;
            backends.push(LabBackend {
                name: b.name.clone(),
                ns,
                ip: Ipv4Addr::new(198, 18, b.subnet_index, 2),
                ip6: spec.ipv6.then(|| lab_ipv6(b.subnet_index, 2)),
                node_if: format!("bk{}", b.subnet_index),
                status_file: PathBuf::new(),
                process: None,
            });
        }
        let status_dir =
            std::env::temp_dir().join(format!("geosteer-lab-{p}-{}", std::process::id()));
        for b in &mut backends {
            b.status_file = status_dir.join(format!("{}.status", b.name));
        }
        // Assemble the Lab before configuring anything, so a failure below
        // still tears everything down through Drop.
        let lab = Lab {
            client,
            node,
            backends,
            uplink_client,
            children: Vec::new(),
            status_dir,
            ports: None,
            ipv6: spec.ipv6,
        };

        // `default` covers interfaces created afterwards; `all` is combined
        // with the per-interface value (the stricter wins), so both go to 0.
        for key in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            lab.node.exec(&["sysctl", "-q", "-w", key])?;
        }

        let mut links: Vec<(&Netns, String, u8)> = vec![(&lab.client, "cl0".into(), 0)];
        if let Some(up) = &lab.uplink_client {
            links.push((up, "up0".into(), 1));
        }
        for (b, spec) in lab.backends.iter().zip(&spec.backends) {
            links.push((&b.ns, b.node_if.clone(), spec.subnet_index));
        }
        for (leaf, node_if, net) in links {
            veth(
                leaf,
                "eth0",
                &format!("198.18.{net}.2/24"),
                &lab.node,
                &node_if,
                &format!("198.18.{net}.1/24"),
            )?;
            leaf.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{net}.1"),
            ])?;
            lab.node.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{node_if}.rp_filter=0"),
            ])?;
            if spec.ipv6 {
                lab.add_ipv6(leaf, &node_if, net)?;
            }
        }
        lab.set_tx_checksum_offload(false)?;
        Ok(lab)
    }

    /// IPv6 on one link: both ends addressed (without duplicate address detection, so the
    /// addresses are usable at once), the leaf's default route via the node, and the node
    /// forwarding.
    fn add_ipv6(&self, leaf: &Netns, node_if: &str, net: u8) -> Result<()> {
        self.node
            .exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        for (ns, dev, host) in [(leaf, "eth0", 2), (&self.node, node_if, 1)] {
            let addr = format!("{}/64", lab_ipv6(net, host));
            ns.exec(&["ip", "-6", "addr", "add", &addr, "dev", dev, "nodad"])?;
        }
        leaf.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &lab_ipv6(net, 1).to_string(),
        ])?;
        Ok(())
    }

    /// Turns TX checksum offload on every lab veth end on or off. The lab
    /// turns it off: with it on, veth hands packets over with only a partial
    /// checksum, which breaks XDP programs that rewrite addresses and patch
    /// checksums incrementally. Benchmarks may turn it back on.
    pub fn set_tx_checksum_offload(&self, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        for ns in self.leaf_namespaces() {
            ns.exec(&["ethtool", "-K", "eth0", "tx", state])?;
        }
        for node_if in self.node_interfaces() {
            self.node.exec(&["ethtool", "-K", &node_if, "tx", state])?;
        }
        Ok(())
    }

    /// Node-side interface names: `cl0`, `up0` (with uplink), `bkN`...
    pub fn node_interfaces(&self) -> Vec<String> {
        let mut v = vec!["cl0".to_string()];
        if self.uplink_client.is_some() {
            v.push("up0".into());
        }
        v.extend(self.backends.iter().map(|b| b.node_if.clone()));
        v
    }

    /// Every namespace of the lab, node first.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.node];
        v.extend(self.leaf_namespaces());
        v
    }

    fn leaf_namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client];
        v.extend(&self.uplink_client);
        v.extend(self.backends.iter().map(|b| &b.ns));
        v
    }

    pub fn backend(&self, name: &str) -> Result<&LabBackend> {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| anyhow!("no backend named {name:?}"))
    }

    /// Starts `lab-backend` in every backend namespace, listening on
    /// `0.0.0.0:port` (and UDP `udp_port`), and waits until each is ready.
    /// Backends already running are restarted. Every backend answers 200
    /// until [`Lab::set_status`] says otherwise.
    pub fn start_backends(&mut self, port: u16, udp_port: Option<u16>) -> Result<()> {
        std::fs::create_dir_all(&self.status_dir)
            .with_context(|| format!("creating {}", self.status_dir.display()))?;
        self.ports = Some((port, udp_port));
        let names: Vec<String> = self.backends.iter().map(|b| b.name.clone()).collect();
        for name in names {
            self.start_backend(&name)?;
        }
        Ok(())
    }

    /// (Re)starts one backend with the ports of the last
    /// [`Lab::start_backends`]; it answers 200 again.
    pub fn start_backend(&mut self, name: &str) -> Result<()> {
        let (port, udp_port) = self
            .ports
            .ok_or_else(|| anyhow!("start_backends has not been called"))?;
        let bin = bin_arg("lab-backend")?;
        // `[::]` takes both families (net.ipv6.bindv6only is 0).
        let any = if self.ipv6 { "[::]" } else { "0.0.0.0" };
        self.stop_backend(name)?;
        let b = self.backend_mut(name)?;
        match std::fs::remove_file(&b.status_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("resetting {}", b.status_file.display())),
        }
        let listen = format!("{any}:{port}");
        let status_file = b
            .status_file
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?
            .to_string();
        let mut args = vec![
            bin.as_str(),
            "--name",
            &b.name,
            "--listen",
            &listen,
            "--status-file",
            &status_file,
            "--exit-with-parent",
        ];
        let udp = udp_port.map(|u| format!("{any}:{u}"));
        if let Some(udp) = &udp {
            args.extend(["--udp", udp.as_str()]);
        }
        let mut child = b.ns.spawn(&args)?;
        let stdout = child.stdout.take();
        // Store the child first so it is killed even if it never gets ready.
        b.process = Some(child);
        wait_ready(stdout, &b.name)
    }

    /// Kills one backend (e.g. to test failover); a no-op if not running.
    pub fn stop_backend(&mut self, name: &str) -> Result<()> {
        let b = self.backend_mut(name)?;
        if let Some(child) = b.process.take() {
            reap(child);
        }
        Ok(())
    }

    fn backend_mut(&mut self, name: &str) -> Result<&mut LabBackend> {
        self.backends
            .iter_mut()
            .find(|b| b.name == name)
            .ok_or_else(|| anyhow!("no backend named {name:?}"))
    }

    /// Makes `backend` answer every following request with `status`.
    pub fn set_status(&self, backend: &str, status: u16) -> Result<()> {
        if !(100..=599).contains(&status) {
            bail!("status {status} is not an HTTP status");
        }
        let file = &self.backend(backend)?.status_file;
        std::fs::create_dir_all(&self.status_dir)?;
        // Write then rename, so the backend never reads a half-written file.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{status}\n"))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
        Ok(())
    }

    /// Hands a process (e.g. the agent) to the lab so it is killed and
    /// reaped when the lab is dropped, before the namespaces go away.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// `lab-client http` from the client namespace: `connections` new
    /// connections with `requests_per_connection` requests each.
    pub fn client_http(
        &self,
        target: &str,
        connections: u32,
        requests_per_connection: u32,
    ) -> Result<HttpReport> {
        http_from(
            &self.client,
            target,
            &HttpOptions::new(connections, requests_per_connection),
        )
    }

    /// `lab-client udp` from the client namespace: `count` datagrams, each
    /// from a new source port.
    pub fn client_udp(&self, target: &str, count: u32) -> Result<UdpReport> {
        udp_from(&self.client, target, count, 2000)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace only really disappears once nothing
        // runs in it. The Netns fields are dropped (deleted) after this.
        for child in self.children.drain(..) {
            reap(child);
        }
        for b in &mut self.backends {
            if let Some(child) = b.process.take() {
                reap(child);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.status_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: removing {}: {e}", self.status_dir.display());
        }
    }
}

/// SIGKILL and wait, so no zombie is left behind.
fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn validate(spec: &LabSpec) -> Result<()> {
    // The longest derived name must stay a sane file name; interface names
    // are fixed and short, so only namespace names depend on the prefix.
    if spec.prefix.is_empty() || spec.prefix.len() > 32 {
        bail!("lab prefix must be 1..=32 characters");
    }
    let mut names = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    for b in &spec.backends {
        if b.subnet_index < 2 || b.subnet_index == 255 {
            bail!(
                "backend {}: subnet_index {} is reserved (0 and 1 are the clients)",
                b.name,
                b.subnet_index
            );
        }
        if b.name.is_empty() || b.name.contains(|c: char| c.is_whitespace() || c == '/') {
            bail!("backend name {:?} must be a non-empty word", b.name);
        }
        if !names.insert(&b.name) {
            bail!("duplicate backend name {}", b.name);
        }
        if !subnets.insert(b.subnet_index) {
            bail!("duplicate subnet_index {}", b.subnet_index);
        }
    }
    Ok(())
}

/// Waits (bounded) for the `ready NAME` line from a just-spawned backend.
fn wait_ready(stdout: Option<std::process::ChildStdout>, name: &str) -> Result<()> {
    let stdout = stdout.ok_or_else(|| anyhow!("backend {name}: stdout not piped"))?;
    let (tx, rx) = mpsc::channel();
    // A reader thread lets us put a timeout on a blocking pipe read. It ends
    // once the line arrives or the backend dies (EOF).
    thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(result);
    });
    let expected = format!("ready {name}");
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) if line.trim_end() == expected => Ok(()),
        Ok(Ok(line)) if line.is_empty() => {
            bail!("backend {name} exited before becoming ready (see its stderr above)")
        }
        Ok(Ok(line)) => bail!("backend {name}: expected {expected:?}, got {line:?}"),
        Ok(Err(e)) => Err(e).context(format!("reading readiness of backend {name}")),
        Err(_) => bail!("backend {name} not ready after {READY_TIMEOUT:?}"),
    }
}

/// True if a namespace called `name` exists (handy in assertions).
/// The share of `backends` (answers by backend name) whose name starts with `prefix` (a
/// region's: `hz`, `sh`).
pub fn region_share(backends: &BTreeMap<String, u64>, prefix: &str) -> f64 {
    let total: u64 = backends.values().sum();
    let region: u64 = backends
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum();
    region as f64 / total.max(1) as f64
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}
