//! Section 3 of `cargo xtask bench`: how fast new connections leave failing backends, and how
//! long a policy change takes to reach the kernel.
//!
//! 1. Failover, in a two-region lab: hz1 and hz2 in cn-hangzhou (the node's region), sh1 and
//!    sh2 in cn-shanghai. A client opens new connections back to back, one request each
//!    (`lab-client failover-probe`, which logs every connection); one second in, hz1 and hz2
//!    start answering 503. The same runs go through geosteer (locality failover and outlier
//!    detection), once more with the client using a fresh source port per connection, and
//!    through HAProxy set up for the equivalent passive health checking, on the same
//!    backends, at 1 and at 3 consecutive errors.
//! 2. Policy apply latency at 100, 1 000 and 10 000 services (`tests/benches/apply.rs`).
//!
//! `bench::run` calls [`run`] once it has built the release binaries and set
//! `GEOSTEER_BIN_DIR`. Everything started here is stopped before the next run starts, and the
//! lab's namespaces are deleted on drop.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use geosteer_tests::agent::{Agent, PinDir};
use geosteer_tests::{BackendSpec, Lab, LabSpec, bin_path};
use serde::Deserialize;

use crate::{run_cmd, workspace_root};

const PREFIX: &str = "gsf";
const VIP: &str = "198.19.0.10";
const BACKEND_PORT: u16 = 8080;
/// (name, subnet index, region): the layout of `tests/tests/policy_e2e.rs`.
const BACKENDS: [(&str, u8, &str); 4] = [
    ("hz1", 11, "cn-hangzhou"),
    ("hz2", 12, "cn-hangzhou"),
    ("sh1", 21, "cn-shanghai"),
    ("sh2", 22, "cn-shanghai"),
];
/// The backends switched to 503: the whole local region.
const FAILING: [&str; 2] = ["hz1", "hz2"];
/// Consecutive errors before a backend is taken out: `consecutive5xxErrors` for geosteer,
/// `error-limit` for HAProxy.
const ERROR_LIMITS: [u32; 2] = [1, 3];
/// The client runs this long before the switch (steady state, everything local) and after.
const BEFORE_SWITCH: Duration = Duration::from_millis(1000);
const AFTER_SWITCH: Duration = Duration::from_millis(2000);
/// A client connection that gets no answer in this time counts as failed.
const CLIENT_TIMEOUT_MS: u32 = 1000;
/// Source ports of the fresh-port runs: below Linux's default ephemeral range (32768-60999),
/// so they never meet a port the client's kernel picked for another connection.
const FRESH_PORTS_FIRST: &str = "1024";
const FRESH_PORTS_COUNT: &str = "31744";
/// "99% on cn-shanghai" is measured over this many consecutive connections.
const WINDOW: usize = 100;
const WINDOW_REMOTE: usize = 99;

pub(crate) fn run(quick: bool) -> Result<String> {
    let started = Instant::now();
    ensure!(
        std::env::var_os("GEOSTEER_BIN_DIR").is_some(),
        "bench_policy::run expects the release binaries in GEOSTEER_BIN_DIR (see bench::run)"
    );
    let root = workspace_root();
    let reps = if quick { 2 } else { 5 };
    let haproxy = haproxy_version()?;
    let logs = root.join("target/bench-failover");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let failover = failover_bench(reps, &logs)?;
    let apply = apply_bench(&root, quick)?;
    memory_chart(&root.join(crate::bench::CHARTS_DIR), &apply)?;
    timeline_chart(&root.join(crate::bench::CHARTS_DIR), &failover)?;
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    Ok(render(
        command,
        &haproxy,
        reps,
        &failover,
        &apply,
        started.elapsed(),
    ))
}

fn haproxy_version() -> Result<String> {
    let out = Command::new("haproxy")
        .arg("-v")
        .output()
        .context("running `haproxy -v` (apt-get install haproxy)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/" → up to the date.
    let line = text.lines().next().unwrap_or("").trim();
    Ok(line.split(" - ").next().unwrap_or(line).to_string())
}

// ------------------------------------------------------------------------- failover ---

#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// The client's kernel picks each source port, as for any client.
    Geosteer,
    /// The client binds a source port no earlier connection of the run used.
    GeosteerFreshPorts,
    Haproxy,
}

const TARGETS: [Target; 3] = [
    Target::Geosteer,
    Target::GeosteerFreshPorts,
    Target::Haproxy,
];

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Geosteer => "geosteer",
            Target::GeosteerFreshPorts => "geosteer, fresh source port per connection",
            Target::Haproxy => "HAProxy",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Target::Geosteer => "geosteer",
            Target::GeosteerFreshPorts => "geosteer-fresh-ports",
            Target::Haproxy => "haproxy",
        }
    }
}

/// One connection of the client's log (see `lab-client failover-probe`).
#[derive(Deserialize)]
struct Conn {
    /// Opened, µs since the client started.
    t_us: u64,
    /// Answer (or error) received.
    done_us: u64,
    /// Source port (absent if the connect failed before the kernel chose one).
    port: Option<u16>,
    backend: Option<String>,
    status: Option<u16>,
    error: Option<String>,
}

impl Conn {
    fn is_5xx(&self) -> bool {
        self.status.is_some_and(|s| s >= 500)
    }

    /// What the user of the service sees as a failure: a 5xx, or no answer at all.
    fn client_error(&self) -> bool {
        self.is_5xx() || self.error.is_some()
    }

    fn backend_is(&self, name: &str) -> bool {
        self.backend.as_deref() == Some(name)
    }

    fn region(&self) -> Option<&'static str> {
        let name = self.backend.as_deref()?;
        BACKENDS
            .iter()
            .find(|(b, _, _)| *b == name)
            .map(|(_, _, region)| *region)
    }
}

/// What one failing backend went through in one run.
struct BackendFailover {
    /// Connections it still got after the client saw its first 5xx.
    later: usize,
    /// Of which on a source port whose previous connection in the run had gone to this
    /// backend: the same 5-tuple as a finished connection to it.
    later_on_reused_port: usize,
    /// From the client receiving its first 5xx to the client receiving the answer of the first
    /// later connection that another backend answered.
    avoided_after_us: Option<u64>,
}

/// One run: the client's log, reduced.
struct Run {
    connections: usize,
    /// Connections after the first 5xx.
    after_first: usize,
    per_second: f64,
    /// Share of the connections before the first 5xx answered in cn-hangzhou.
    local_before: f64,
    backends: Vec<BackendFailover>,
    /// From the first 5xx the client saw to the opening of the connection from which on every
    /// window of [`WINDOW`] consecutive connections, to the end of the run, has at least
    /// [`WINDOW_REMOTE`] answered in cn-shanghai. `None` if the last window has not.
    converged_after_us: Option<u64>,
    /// From the first client-visible error to the last one.
    last_error_after_us: u64,
    errors_5xx: usize,
    /// Connections with no answer (refused, reset, timed out).
    errors_failed: usize,
    /// The balancer reported taking out both failing backends (agent log / HAProxy log).
    both_taken_out: bool,
    /// HAProxy only: times a failing backend was put back in service during the run.
    came_back: usize,
    /// Around the first 5xx, per [`TIMELINE_BIN_US`] of answers: (seconds from the first 5xx,
    /// % of the connections answered in cn-shanghai, % that failed).
    timeline: Vec<(f64, f64, f64)>,
}

/// Width of one point of the failover timeline.
const TIMELINE_BIN_US: i64 = 100_000;
/// The timeline's span around the first 5xx, in bins before and after.
const TIMELINE_BINS: (i64, i64) = (10, 40);

struct Failover {
    target: Target,
    error_limit: u32,
    runs: Vec<Run>,
}

fn failover_bench(reps: usize, logs: &Path) -> Result<Vec<Failover>> {
    eprintln!("\n=== Failover: geosteer and HAProxy ===");
    let mut lab = Lab::build(&LabSpec {
        prefix: PREFIX.into(),
        backends: BACKENDS
            .iter()
            .map(|(name, subnet_index, _)| BackendSpec {
                name: (*name).into(),
                subnet_index: *subnet_index,
            })
            .collect(),
        with_uplink: false,
        ipv6: false,
    })?;
    // As in section 2: a real deployment has TX checksum offload on.
    lab.set_tx_checksum_offload(true)?;
    lab.start_backends(BACKEND_PORT, None)?;
    // The client keeps Linux's default ephemeral ports (32768-60999), which it walks through
    // and reuses within a run, as a busy client does; the fresh-port runs bind ports below
    // that range instead. Either may meet its own TIME_WAIT from an earlier run: allowed.
    lab.client
        .exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])?;

    let mut results: Vec<Failover> = Vec::new();
    for &error_limit in &ERROR_LIMITS {
        for target in TARGETS {
            results.push(Failover {
                target,
                error_limit,
                runs: Vec::new(),
            });
        }
    }
    for rep in 0..reps {
        for &error_limit in &ERROR_LIMITS {
            // Rotate which goes first, so a drift of the machine favours none.
            let mut order = TARGETS;
            order.rotate_left(rep % TARGETS.len());
            for target in order {
                let log = logs.join(format!(
                    "{}-errors{error_limit}-run{}.jsonl",
                    target.file_name(),
                    rep + 1
                ));
                let run = failover_run(&lab, target, error_limit, &log)?;
                eprintln!(
                    "{} error limit {error_limit} run {}: {} connections, errors {} 5xx + {} \
                     failed, later connections to the failing backends {:?}, 99% remote after \
                     {:?} us",
                    target.label(),
                    rep + 1,
                    run.connections,
                    run.errors_5xx,
                    run.errors_failed,
                    run.backends.iter().map(|b| b.later).collect::<Vec<_>>(),
                    run.converged_after_us
                );
                results
                    .iter_mut()
                    .find(|f| f.target == target && f.error_limit == error_limit)
                    .expect("every target and limit has an entry")
                    .runs
                    .push(run);
            }
        }
    }
    Ok(results)
}

/// Starts the balancer with healthy backends, runs the client, switches the local region to
/// 503 one second in, stops the balancer and reduces the client's log (kept in `log`).
fn failover_run(lab: &Lab, target: Target, error_limit: u32, log: &Path) -> Result<Run> {
    for name in FAILING {
        lab.set_status(name, 200)?;
    }
    let (text, both_taken_out, came_back) = match target {
        Target::Geosteer | Target::GeosteerFreshPorts => {
            // Fresh pins: no ejection or conntrack state from the previous run.
            let pins = PinDir::new(PREFIX)?;
            let mut agent = Agent::start(&lab.node, &pins, &agent_config(&pins, error_limit))?;
            let text = probe(lab, target == Target::GeosteerFreshPorts)?;
            let status = agent.terminate()?;
            ensure!(status.success(), "agent exited with {status}");
            // A stop leaves the data path steering; the next round's peer needs the node clean.
            geosteer_tests::agent::uninstall(&lab.node, &pins)?;
            let ejected = FAILING.iter().all(|name| {
                let ip = backend_ip(name);
                agent.log_contains(&format!("ejected {ip}:{BACKEND_PORT}"))
            });
            (text, ejected, 0)
        }
        Target::Haproxy => {
            let haproxy = Haproxy::start(lab, error_limit)?;
            let text = probe(lab, false)?;
            let lines = haproxy.stop();
            let down = FAILING.iter().all(|name| {
                lines
                    .iter()
                    .any(|l| l.contains(&format!("/{name} is DOWN")))
            });
            let up = lines
                .iter()
                .filter(|l| {
                    FAILING
                        .iter()
                        .any(|name| l.contains(&format!("/{name} is UP")))
                })
                .count();
            (text, down, up)
        }
    };
    std::fs::write(log, &text).with_context(|| format!("writing {}", log.display()))?;
    let conns = text
        .lines()
        .map(serde_json::from_str::<Conn>)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the client's log {}", log.display()))?;
    let mut run = reduce(&conns).with_context(|| format!("in {}", log.display()))?;
    run.both_taken_out = both_taken_out;
    run.came_back = came_back;
    Ok(run)
}

/// The client from the client namespace through the VIP, with hz1 and hz2 switched to 503
/// after [`BEFORE_SWITCH`]. Returns its log, one JSON line per connection. With
/// `fresh_ports`, connection i binds source port 1024 + i, so none reuses an earlier one's;
/// the run stops early if it reaches the kernel's ephemeral range.
fn probe(lab: &Lab, fresh_ports: bool) -> Result<String> {
    let client = bin_path("lab-client");
    let duration = (BEFORE_SWITCH + AFTER_SWITCH).as_millis().to_string();
    let timeout = CLIENT_TIMEOUT_MS.to_string();
    let target = format!("{VIP}:80");
    let mut args = vec![
        client.to_str().context("non-UTF-8 binary path")?,
        "failover-probe",
        "--target",
        &target,
        "--duration-ms",
        &duration,
        "--timeout-ms",
        &timeout,
    ];
    if fresh_ports {
        args.extend([
            "--first-source-port",
            FRESH_PORTS_FIRST,
            "--max-connections",
            FRESH_PORTS_COUNT,
        ]);
    }
    let mut child = lab.client.spawn(&args)?;
    // Read while it runs: a full pipe would stall the client.
    let mut stdout = child.stdout.take().context("client stdout not piped")?;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    thread::sleep(BEFORE_SWITCH);
    for name in FAILING {
        lab.set_status(name, 503)?;
    }
    // The client stops by itself; its last connection may take up to its timeout.
    let deadline = Instant::now() + AFTER_SWITCH + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lab-client failover-probe did not finish in time");
        }
        thread::sleep(Duration::from_millis(20));
    };
    ensure!(status.success(), "lab-client exited with {status}");
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
        .context("reading the client's output")
}

fn reduce(conns: &[Conn]) -> Result<Run> {
    let first = conns
        .iter()
        .position(Conn::is_5xx)
        .context("no 5xx at all: the backends never failed")?;
    let first_at = conns[first].done_us;
    let before = &conns[..first];
    ensure!(!before.is_empty(), "no connection before the first 5xx");
    let local_before = before
        .iter()
        .filter(|c| c.region() == Some("cn-hangzhou"))
        .count() as f64
        / before.len() as f64;

    // The backend of the previous connection on each source port, as of connection i.
    let mut previous_on_port: Vec<Option<&str>> = Vec::with_capacity(conns.len());
    let mut last_backend = std::collections::HashMap::new();
    for c in conns {
        previous_on_port.push(c.port.and_then(|p| last_backend.get(&p).copied()));
        if let (Some(port), Some(backend)) = (c.port, c.backend.as_deref()) {
            last_backend.insert(port, backend);
        }
    }
    let mut backends = Vec::new();
    for name in FAILING {
        let Some(at) = conns.iter().position(|c| c.backend_is(name) && c.is_5xx()) else {
            bail!("{name} never answered 5xx");
        };
        let later: Vec<usize> = (at + 1..conns.len())
            .filter(|&i| conns[i].backend_is(name))
            .collect();
        backends.push(BackendFailover {
            later: later.len(),
            later_on_reused_port: later
                .iter()
                .filter(|&&i| previous_on_port[i] == Some(name))
                .count(),
            avoided_after_us: conns[at + 1..]
                .iter()
                .find(|c| c.backend.is_some() && !c.backend_is(name))
                .map(|c| c.done_us - conns[at].done_us),
        });
    }

    // Walk the windows back from the end of the run while they hold.
    let remote = |i: usize| {
        conns[i..i + WINDOW]
            .iter()
            .filter(|c| c.region() == Some("cn-shanghai"))
            .count()
            >= WINDOW_REMOTE
    };
    let mut converged = None;
    for i in (first + 1..conns.len().saturating_sub(WINDOW - 1)).rev() {
        if !remote(i) {
            break;
        }
        converged = Some(i);
    }
    let converged_after_us = converged.map(|i| conns[i].t_us - first_at);
    let last_error = conns
        .iter()
        .rposition(Conn::client_error)
        .expect("there is a 5xx");
    let seconds = conns.last().map_or(0, |c| c.done_us) as f64 / 1e6;
    let mut bins: std::collections::BTreeMap<i64, [u64; 3]> = Default::default();
    for c in conns {
        let bin = (c.done_us as i64 - first_at as i64).div_euclid(TIMELINE_BIN_US);
        if (-TIMELINE_BINS.0..TIMELINE_BINS.1).contains(&bin) {
            let counts = bins.entry(bin).or_default();
            counts[0] += 1;
            counts[1] += u64::from(!c.client_error() && c.region() == Some("cn-shanghai"));
            counts[2] += u64::from(c.client_error());
        }
    }
    let timeline = bins
        .into_iter()
        .map(|(bin, [all, remote, failed])| {
            let share = |n: u64| 100.0 * n as f64 / all as f64;
            (
                (bin * TIMELINE_BIN_US) as f64 / 1e6,
                share(remote),
                share(failed),
            )
        })
        .collect();
    Ok(Run {
        connections: conns.len(),
        after_first: conns.len() - first - 1,
        per_second: conns.len() as f64 / seconds,
        local_before,
        backends,
        converged_after_us,
        last_error_after_us: conns[last_error].done_us - first_at,
        errors_5xx: conns.iter().filter(|c| c.is_5xx()).count(),
        errors_failed: conns.iter().filter(|c| c.error.is_some()).count(),
        both_taken_out: false,
        came_back: 0,
        timeline,
    })
}

fn backend_ip(name: &str) -> String {
    let (_, subnet, _) = BACKENDS
        .iter()
        .find(|(b, _, _)| *b == name)
        .expect("known backend");
    format!("198.18.{subnet}.2")
}

/// The two-region service of `tests/tests/policy_e2e.rs`: traffic stays in cn-hangzhou while
/// it is healthy and fails over to cn-shanghai; a backend is ejected for 30 s after
/// `error_limit` consecutive 5xx.
fn agent_config(pins: &PinDir, error_limit: u32) -> String {
    let mut endpoints = String::new();
    for (name, _, region) in BACKENDS {
        let _ = writeln!(
            endpoints,
            "      - {{ip: {}, region: {region}, zone: {region}-a}}",
            backend_ip(name)
        );
    }
    format!(
        "node: {{name: bench-node, region: cn-hangzhou, zone: cn-hangzhou-a}}\n\
         dataplane:\n  tc: [cl0]\n  pinPath: {}\n  maxServices: 16\n  maxBackends: 1024\n  conntrackSize: 65536\n\
         services:\n  - name: reviews\n    vip: {VIP}\n    ports: [{{name: http, port: 80, targetPort: {BACKEND_PORT}}}]\n    endpoints:\n{endpoints}\
         \x20   trafficPolicy:\n\
         \x20     loadBalancer:\n\
         \x20       localityLbSetting:\n\
         \x20         failover: [{{from: cn-hangzhou, to: cn-shanghai}}]\n\
         \x20     outlierDetection: {{consecutive5xxErrors: {error_limit}, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}}\n",
        pins.pin_path().display()
    )
}

/// HAProxy's equivalent, in the node namespace on the VIP:
/// - `observe layer7 error-limit N on-error mark-down`: N consecutive error responses mark a
///   server down on the spot (`consecutive5xxErrors: N`). HAProxy counts 500, 502, 503, 504
///   and 506 and up as errors, not 501 and 505; Istio counts every 5xx. The backends answer
///   503, which both count, so the rule is the same here;
/// - `check inter 1s rise 30`: a plain TCP check, which a server answering 503 passes, so a
///   server marked down comes back after 30 passing checks, about 30 s, like
///   `baseEjectionTime: 30s` (with the default `rise 2` it would be back after about 2 s);
/// - sh1 and sh2 are `backup` servers, used only while no primary is up (priority failover),
///   all of them at once (`option allbackups`), as geosteer spreads over cn-shanghai;
/// - `option http-server-close` and `http-reuse never`: every client connection gets its own
///   server connection, as through geosteer; no retry on an error response (HAProxy's
///   default `retry-on` only retries failed connects), as geosteer does not retry either.
fn haproxy_config(error_limit: u32) -> String {
    let mut servers = String::new();
    for (name, _, region) in BACKENDS {
        let backup = if region == "cn-hangzhou" {
            ""
        } else {
            " backup"
        };
        let _ = writeln!(
            servers,
            "    server {name} {}:{BACKEND_PORT}{backup} check inter 1s rise 30 observe layer7 \
             error-limit {error_limit} on-error mark-down",
            backend_ip(name)
        );
    }
    format!(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    \
         timeout server 5s\n    option http-server-close\n    http-reuse never\n\n\
         frontend vip\n    bind {VIP}:80\n    default_backend reviews\n\n\
         backend reviews\n    balance roundrobin\n    option allbackups\n{servers}"
    )
}

/// `haproxy -f CONFIG -db` in the node namespace, with the VIP on the node's `lo` (the client
/// already routes the VIP to the node). Stopped, and the address removed, on drop.
pub(crate) struct Haproxy<'a> {
    lab: &'a Lab,
    child: Option<Child>,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl<'a> Haproxy<'a> {
    fn start(lab: &'a Lab, error_limit: u32) -> Result<Haproxy<'a>> {
        Self::start_with(lab, &haproxy_config(error_limit))
    }

    /// HAProxy with the configuration `text`, which binds `{VIP}:80`.
    pub(crate) fn start_with(lab: &'a Lab, text: &str) -> Result<Haproxy<'a>> {
        let config =
            std::env::temp_dir().join(format!("geosteer-bench-haproxy-{}.cfg", std::process::id()));
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut haproxy = Haproxy {
            lab,
            child: None,
            config,
            log: Arc::default(),
        };
        lab.node
            .exec(&["ip", "addr", "replace", &format!("{VIP}/32"), "dev", "lo"])?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.node.name, "haproxy", "-db", "-f"])
            .arg(&haproxy.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting haproxy")?;
        // Its warnings (a server marked down, backups in use) are the mechanism check.
        let stderr = child.stderr.take().context("haproxy stderr not piped")?;
        haproxy.child = Some(child);
        let sink = haproxy.log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[haproxy] {line}");
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let listening = format!("{VIP}:80");
        loop {
            let sockets = lab.node.exec(&["ss", "-Hltn"])?;
            if sockets.contains(&listening) {
                return Ok(haproxy);
            }
            if let Some(child) = haproxy.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("haproxy exited with {status} before listening");
            }
            if Instant::now() > deadline {
                bail!("haproxy not listening on {listening} after 5 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it and returns what it logged.
    pub(crate) fn stop(mut self) -> Vec<String> {
        self.kill();
        // The reader thread ends at EOF, right after the process is gone.
        thread::sleep(Duration::from_millis(50));
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Haproxy<'_> {
    fn drop(&mut self) {
        self.kill();
        let _ = self
            .lab
            .node
            .exec(&["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
        let _ = std::fs::remove_file(&self.config);
    }
}

// ---------------------------------------------------------------------------- apply ---

#[derive(Deserialize)]
struct ApplyReport {
    changes: usize,
    results: Vec<ApplyScale>,
}

#[derive(Deserialize)]
struct ApplyScale {
    services: u32,
    backends: u32,
    load_ms: f64,
    map_bytes: u64,
    table_bytes: u64,
    table_chunks_used: u32,
    table_chunks: u32,
    cilium_design_bytes: u64,
    initial_apply_ms: f64,
    initial_apply_grace_waits: usize,
    unchanged_apply_ms: f64,
    spread: Latency,
    maglev_build_us: f64,
    same_service: Latency,
    controller_initial_ms: f64,
    /// Absent in reports of older builds.
    #[serde(default)]
    controller_rss_bytes: u64,
    ejection: Latency,
    /// Absent in reports of older builds.
    #[serde(default)]
    agent: Option<AgentRun>,
}

#[derive(Deserialize)]
struct AgentRun {
    config_bytes: u64,
    ready_ms: f64,
    rss_bytes: u64,
    peak_rss_bytes: u64,
    /// Absent in reports of older builds.
    #[serde(default)]
    idle_cpu: Option<f64>,
    #[serde(default)]
    steady_cpu: Option<f64>,
}

#[derive(Deserialize)]
struct Latency {
    count: usize,
    median_us: f64,
    p99_us: f64,
    max_us: f64,
    grace_waits: usize,
}

fn apply_bench(root: &Path, quick: bool) -> Result<ApplyReport> {
    eprintln!("\n=== Policy apply latency ===");
    let out = root.join("target/bench-apply.json");
    let _ = std::fs::remove_file(&out);
    run_cmd(
        Command::new("cargo")
            .current_dir(root)
            .args(["bench", "-p", "geosteer-tests", "--bench", "apply"])
            .env("GEOSTEER_BENCH_OUT", &out)
            .env("GEOSTEER_BENCH_QUICK", if quick { "1" } else { "0" }),
    )?;
    let json =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    serde_json::from_str(&json).context("parsing the apply bench report")
}

// --------------------------------------------------------------------------- report ---

fn render(
    command: &str,
    haproxy: &str,
    reps: usize,
    failover: &[Failover],
    apply: &ApplyReport,
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "## 3. Failover and policy apply latency\n");
    let _ = writeln!(
        w,
        "Also generated by `{command}`; this section took {:.1} minutes, which the time at the \
         top does not include. {haproxy}.\n",
        elapsed.as_secs_f64() / 60.0
    );
    render_failover(w, reps, failover);
    render_apply(w, apply);
    render_agent_runs(w, apply);
    // One newline at the end, whatever the last paragraph left.
    s.truncate(s.trim_end().len());
    s.push('\n');
    s
}

fn render_failover(w: &mut String, reps: usize, failover: &[Failover]) {
    let _ = writeln!(w, "### Failover: time and client-visible errors\n");
    let _ = writeln!(
        w,
        "![Share of new connections per region around the failure]({}/failover-timeline.svg)\n",
        crate::bench::CHARTS_DIR
    );
    let _ = writeln!(
        w,
        "Lab as in section 2 with four backends in two regions: hz1 and hz2 in cn-hangzhou, the \
         node's region, and sh1 and sh2 in cn-shanghai. From the client namespace, \
         `lab-client failover-probe` opens new connections to `{VIP}:80` back to back, one at a \
         time, one request each (`Connection: close`), for {} s, and logs every connection: \
         when it was opened, when its answer arrived, its source port, which backend answered, \
         the status. {} s in, hz1 and hz2 start answering every request with 503 (the status \
         file of `Lab::set_status`). Each configuration ran {reps} times, interleaved with the \
         others; the logs of every run are in `target/bench-failover/`.\n",
        (BEFORE_SWITCH + AFTER_SWITCH).as_secs_f64(),
        BEFORE_SWITCH.as_secs_f64(),
    );
    let _ = writeln!(
        w,
        "- **geosteer**: the agent (release build) with TC on the client-facing interface, \
         `failover: [{{from: cn-hangzhou, to: cn-shanghai}}]` and `outlierDetection: \
         {{consecutive5xxErrors: N, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: \
         100}}`, a fresh agent and pin directory per run. The client's kernel picks each \
         source port from Linux's default range (32768-60999), as for any client; at this \
         rate the client walks through the range and comes back to ports it used earlier in \
         the run. The row *fresh source port per connection* is the same with the client \
         binding port 1024 + i for its i-th connection (below the kernel's range; a run would \
         end early if it used up the ports to 32767), so that no connection of a run shares \
         its 5-tuple with an earlier one.\n\
         - **HAProxy**: the agent stopped, HAProxy in the node namespace bound to the VIP \
         (added to the node's `lo`), `mode http`, `balance roundrobin`, hz1 and hz2 as servers \
         and sh1 and sh2 as `backup` servers with `option allbackups` (used only while no \
         primary is up: priority failover), each server with `check inter 1s rise 30 observe \
         layer7 error-limit N on-error mark-down`, and `option http-server-close` with \
         `http-reuse never`, so that every client connection is one server connection; a \
         fresh process per run, the client as for geosteer. How the two are pinned to the \
         same rule: `error-limit` counts consecutive errors like `consecutive5xxErrors`. \
         HAProxy's `observe layer7` takes 500, 502, 503, 504 and 506 and up as errors but not \
         501 and 505, where Istio counts every 5xx; the backends answer 503, which both count. \
         The health check is a TCP connect, which a backend answering 503 passes: `rise 30` \
         keeps a marked-down server out for 30 s, like `baseEjectionTime: 30s` (with the \
         default `rise 2` HAProxy would put it back after about 2 s, and it would fail again). \
         Neither retries a request that got an error response (HAProxy's default `retry-on` \
         only retries failed connects).\n"
    );
    let _ = writeln!(
        w,
        "Columns, each the median / max over the runs (the per-backend columns pool hz1 and \
         hz2, so {} values):\n\n\
         - *later connections*: connections a failing backend still got after the client \
         received its first 5xx;\n\
         - *to avoidance*: from the client receiving a backend's first 5xx to the client \
         receiving the answer of the first later connection answered by another backend (one \
         connection's round trip is the floor);\n\
         - *to 99% remote*: from the first 5xx of the run to the opening of the connection \
         from which on, to the end of the run, every {WINDOW} consecutive connections have at \
         least {WINDOW_REMOTE} answered in cn-shanghai (\"never\": the end of the run was not \
         there);\n\
         - *errors to last*: from the first client-visible error to the last one;\n\
         - *client errors*: 5xx responses plus connections without an answer, per run.\n",
        2 * reps
    );
    let _ = writeln!(
        w,
        "| Load balancer | Consecutive errors to eject | Later connections | To avoidance | To 99% \
         remote | Errors to last | Client errors per run | Connections/s |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for f in failover {
        let pooled = |get: &dyn Fn(&BackendFailover) -> Option<f64>| -> Vec<Option<f64>> {
            f.runs
                .iter()
                .flat_map(|r| r.backends.iter().map(get))
                .collect()
        };
        let per_run = |get: &dyn Fn(&Run) -> Option<f64>| -> Vec<Option<f64>> {
            f.runs.iter().map(get).collect()
        };
        let rate: Vec<f64> = f.runs.iter().map(|r| r.per_second).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            f.target.label(),
            f.error_limit,
            median_max(&pooled(&|b| Some(b.later as f64)), &count),
            median_max(
                &pooled(&|b| b.avoided_after_us.map(|v| v as f64)),
                &duration_us
            ),
            median_max(
                &per_run(&|r| r.converged_after_us.map(|v| v as f64)),
                &duration_us
            ),
            median_max(
                &per_run(&|r| Some(r.last_error_after_us as f64)),
                &duration_us
            ),
            median_max(
                &per_run(&|r| Some((r.errors_5xx + r.errors_failed) as f64)),
                &count
            ),
            median(&rate)
        );
    }
    let _ = writeln!(w);

    // Checks that each run measured what it claims to.
    let all = || failover.iter().flat_map(|f| &f.runs);
    let of = |targets: &'static [Target]| {
        failover
            .iter()
            .filter(move |f| targets.contains(&f.target))
            .flat_map(|f| &f.runs)
    };
    const GEOSTEER: &[Target] = &[Target::Geosteer, Target::GeosteerFreshPorts];
    const HAPROXY: &[Target] = &[Target::Haproxy];
    let local_before = all().map(|r| r.local_before).fold(1f64, f64::min);
    let failed: usize = all().map(|r| r.errors_failed).sum();
    let _ = writeln!(
        w,
        "Checks: before the first 5xx, at least {:.1}% of each run's connections were answered \
         in cn-hangzhou. The agent logged the ejection of both hz1 and hz2 in {} of {} \
         geosteer runs; HAProxy logged both as DOWN in {} of {} runs and put one back UP {} \
         times. Connections without an answer, over all runs: {failed}.\n",
        100.0 * local_before,
        of(GEOSTEER).filter(|r| r.both_taken_out).count(),
        of(GEOSTEER).count(),
        of(HAPROXY).filter(|r| r.both_taken_out).count(),
        of(HAPROXY).count(),
        of(HAPROXY).map(|r| r.came_back).sum::<usize>(),
    );
    interpret_failover(w, failover);
}

/// The reading of the table, from its own numbers.
fn interpret_failover(w: &mut String, failover: &[Failover]) {
    let find = |t: Target, n: u32| {
        failover
            .iter()
            .find(|f| f.target == t && f.error_limit == n)
    };
    let errors = |f: &Failover| -> String {
        let mut e: Vec<usize> = f
            .runs
            .iter()
            .map(|r| r.errors_5xx + r.errors_failed)
            .collect();
        e.sort();
        match (e.first(), e.last()) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a} to {b}"),
            _ => "none".into(),
        }
    };
    let later_max = |f: &Failover| {
        f.runs
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| b.later))
            .max()
            .unwrap_or(0)
    };
    let mut lines = Vec::new();
    for &n in &ERROR_LIMITS {
        let (Some(g), Some(fresh), Some(h)) = (
            find(Target::Geosteer, n),
            find(Target::GeosteerFreshPorts, n),
            find(Target::Haproxy, n),
        ) else {
            continue;
        };
        lines.push(format!(
            "with a limit of {n}, {} client errors per run are unavoidable ({n} per failing \
             backend); the runs had {} (HAProxy), {} (geosteer, fresh source ports) and {} \
             (geosteer), and a failing backend got at most {}, {} and {} connections after its \
             first 5xx",
            FAILING.len() * n as usize,
            errors(h),
            errors(fresh),
            errors(g),
            later_max(h),
            later_max(fresh),
            later_max(g),
        ));
    }
    let _ = writeln!(
        w,
        "Reading it: {}.\n\n\
         Both take the backend out on the response that reaches the limit. In geosteer that is \
         the kernel: the TC program reads the status line where each response starts (the \
         reply byte its request acknowledged) on its way to the client and sets the backend's \
         ejected flag before the client has read the response, \
         so a new connection opened after it is steered elsewhere (at 1 error, \"to \
         avoidance\" is one connection's round trip). Until the agent has recomputed the \
         weights, the Maglev lookup skips ejected backends, and with the whole region ejected \
         it falls back to the service's other backends, i.e. cn-shanghai; the agent's \
         recompute (failover to cn-shanghai) follows the ejection event and does not gate the \
         first avoided connection. HAProxy marks the server down when the error response \
         passes through it (`on-error mark-down`), and with both primaries down the backups \
         take the traffic. With one connection at a time neither can do better than N errors \
         per failing backend; concurrent clients would add, for both, the requests already in \
         flight to a backend when it is taken out. HAProxy's lower connection rate is that of \
         a proxy: it accepts each client connection and opens a second one to the server.\n",
        lines.join("; ")
    );

    // A failing backend that got more connections after its first 5xx than its error limit
    // explains is a defect; the runs where that happened, with how many of those connections
    // reused the 5-tuple of an earlier connection to the same backend.
    for target in [Target::Geosteer, Target::GeosteerFreshPorts] {
        let runs: Vec<&Failover> = failover.iter().filter(|f| f.target == target).collect();
        let total: usize = runs.iter().map(|f| f.runs.len()).sum();
        let over: Vec<&Run> = runs
            .iter()
            .flat_map(|f| {
                f.runs.iter().filter(|r| {
                    r.backends
                        .iter()
                        .any(|b| b.later + 1 > f.error_limit as usize)
                })
            })
            .collect();
        if over.is_empty() {
            continue;
        }
        let backends = || over.iter().flat_map(|r| &r.backends);
        let later: usize = backends().map(|b| b.later).sum();
        let reused: usize = backends().map(|b| b.later_on_reused_port).sum();
        let after: usize = over.iter().map(|r| r.after_first).sum();
        let _ = writeln!(
            w,
            "**Defect: connections to ejected backends.** In {} of {total} runs of \
             *{}*, a failing backend got more connections after its first 5xx than its \
             error limit explains: {later} of the {after} connections opened after the first \
             5xx in those runs ({:.0}%) went to hz1 or hz2. {reused} of these {later} used a \
             source port whose previous connection in the run had gone to that same backend: \
             the 5-tuple of a finished connection, whose SYN must be steered as a new \
             connection (`request()` in `ebpf/src/steer.rs`).\n",
            over.len(),
            target.label(),
            100.0 * later as f64 / after.max(1) as f64,
        );
    }
}

/// Share of new connections answered by the remote region around the failure, per balancer:
/// the first run of each at the lowest error limit measured.
fn timeline_chart(dir: &Path, failover: &[Failover]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let limit = failover.iter().map(|f| f.error_limit).min().unwrap_or(0);
    let mut lines = Vec::new();
    for f in failover.iter().filter(|f| f.error_limit == limit) {
        let Some(run) = f.runs.first() else { continue };
        lines.push(crate::charts::Line {
            name: format!("{}: answered in cn-shanghai", f.target.label()),
            points: run
                .timeline
                .iter()
                .map(|&(t, remote, _)| (t, remote))
                .collect(),
        });
        lines.push(crate::charts::Line {
            name: format!("{}: failed", f.target.label()),
            points: run
                .timeline
                .iter()
                .map(|&(t, _, failed)| (t, failed))
                .collect(),
        });
    }
    crate::charts::lines(
        &dir.join("failover-timeline.svg"),
        &format!("Failover: new connections per 100 ms around the first 5xx (error limit {limit})"),
        (
            "seconds from the first 5xx the client saw",
            "% of connections",
        ),
        (0.0, 100.0),
        &lines,
        &[("first 5xx".to_string(), 0.0)],
    )
}

/// Map memory against services: geosteer's maps as measured, and the same maps with Cilium's
/// design of tables.
fn memory_chart(dir: &Path, a: &ApplyReport) -> Result<()> {
    use crate::charts::{Line, log_lines};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let line = |name: &str, f: &dyn Fn(&ApplyScale) -> u64| Line {
        name: name.into(),
        points: a
            .results
            .iter()
            .map(|r| (f64::from(r.services), mib(f(r))))
            .collect(),
    };
    log_lines(
        &dir.join("map-memory.svg"),
        "Kernel map memory, services of 10 backends",
        "services",
        "MiB",
        &[
            line("geosteer (measured)", &|r| r.map_bytes),
            line("geosteer: Maglev tables", &|r| r.table_bytes),
            line("Cilium's design: one 16,381-slot table per service", &|r| {
                r.cilium_design_bytes
            }),
        ],
    )
}

fn render_apply(w: &mut String, a: &ApplyReport) {
    let _ = writeln!(w, "### Policy apply latency and map memory\n");
    let _ = writeln!(
        w,
        "![Map memory against services]({}/map-memory.svg)\n",
        crate::bench::CHARTS_DIR
    );
    let _ = writeln!(
        w,
        "In-process against the real kernel object (`tests/benches/apply.rs`): loaded (not \
         attached) with maps sized for N services of 10 backends (`maxServices` N, \
         `maxBackends` 10N, the default `tableChunks`, the smallest conntrack), then:\n\n\
         - *map memory*: the kernel's charge for every map (`memlock`), of which the Maglev \
         table map, and the same maps with Cilium's design instead (one 16,381-slot \
         table of `u32` per service, computed); *in use* is what the initial apply's \
         tables take of it;\n\
         - *initial apply*: `Programmer::apply` of all N services into the empty maps, total \
         and per service; *unchanged*: the same apply again, nothing to do (a reload that \
         changes nothing);\n\
         - *one service changed*: new weights for one service while N are live \
         (`Programmer::apply_one`, what the controller calls on every change): the Maglev \
         table build, the write into free slots, the one update that makes it live. \
         {} changes, each to a different service than the last (*spread*), then {} changes to \
         the same service back to back (*same service*). The slots of a table that was live \
         are reused only after an RCU grace period (`membarrier`, i.e. `synchronize_rcu`); the \
         programmer requests one in the background at every swap and waits synchronously only \
         when the table map has no other room. *Waits* counts the changes that waited;\n\
         - *ejection*: the agent's handling of a kernel ejection event \
         (`Controller::on_kernel_ejection`): outlier bookkeeping, the policy recompute of that \
         service (two endpoints per region, locality failover), the swap and the kernel \
         health flags; first one cn-hangzhou endpoint of each service (70/30 split), then the \
         other (all to cn-shanghai). *Controller initial*: `Controller::apply_all` of the same \
         N services into fresh maps, the agent's start and full reload path, and the \
         process's resident memory right after it (`VmRSS`: the agent's books for N services \
         and the bench's own data).\n",
        a.changes, a.changes
    );
    let _ = writeln!(
        w,
        "| Services | Map memory (Maglev tables; in use) | Cilium's design | Load | \
         Initial apply (per service) | \
         Unchanged | One service changed, spread: median / p99 / max (waits) | Same service: \
         median / p99 (waits) | Ejection: median / p99 / max (waits) | Controller initial \
         (RSS) |"
    );
    let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &a.results {
        let _ = writeln!(
            w,
            "| {} ({} backends) | {} ({}; {:.0}%) | {} | {:.0} ms | {} ({}){} | {} | {} / {} / {} \
             ({}) | {} / {} ({}) | {} / {} / {} ({}) | {} ({}) |",
            r.services,
            r.backends,
            mib(r.map_bytes),
            mib(r.table_bytes),
            100.0 * f64::from(r.table_chunks_used) / f64::from(r.table_chunks.max(1)),
            mib(r.cilium_design_bytes),
            r.load_ms,
            duration_us(r.initial_apply_ms * 1e3),
            duration_us(r.initial_apply_ms * 1e3 / r.services as f64),
            if r.initial_apply_grace_waits > 0 {
                format!(", {} waits", r.initial_apply_grace_waits)
            } else {
                String::new()
            },
            duration_us(r.unchanged_apply_ms * 1e3),
            duration_us(r.spread.median_us),
            duration_us(r.spread.p99_us),
            duration_us(r.spread.max_us),
            r.spread.grace_waits,
            duration_us(r.same_service.median_us),
            duration_us(r.same_service.p99_us),
            r.same_service.grace_waits,
            duration_us(r.ejection.median_us),
            duration_us(r.ejection.p99_us),
            duration_us(r.ejection.max_us),
            r.ejection.grace_waits,
            duration_us(r.controller_initial_ms * 1e3),
            mib(r.controller_rss_bytes),
        );
    }
    let _ = writeln!(w);
    let (Some(small), Some(large)) = (a.results.first(), a.results.last()) else {
        return;
    };
    let growth = large.spread.median_us / small.spread.median_us;
    let scaling = if growth > 1.25 {
        "part of each change grows with the number of live services"
    } else {
        "a change costs about the same whatever the number of live services"
    };
    let _ = writeln!(
        w,
        "Reading it: the Maglev tables are {} of the {} of kernel memory at {} services, {:.1}× \
         less in all than Cilium's design ({}); each service's table is sized to it (1,021 \
         slots, 2.1 KiB, for 10 backends) in one table map shared by all. Loading the object takes {:.1} \
         s. Building one service's table over its 10 backends takes {} of the {} a change \
         costs at {} services. At {} services \
         a change costs {} (median), {growth:.1}× as much: {scaling}. An ejection costs {} at \
         {} services and {} at {}. The controller's full apply takes {} at {} services and {} \
         at {}; its services have eight of their ten endpoints, cn-shanghai's, at weight 0 \
         while cn-hangzhou is healthy, so its tables are built over two backends. Changes to \
         the same service back to back cost {} (median); {} of {} waited for a grace period.\n",
        mib(large.table_bytes),
        mib(large.map_bytes),
        large.services,
        large.cilium_design_bytes as f64 / large.map_bytes as f64,
        mib(large.cilium_design_bytes),
        large.load_ms / 1e3,
        duration_us(small.maglev_build_us),
        duration_us(small.spread.median_us),
        small.services,
        large.services,
        duration_us(large.spread.median_us),
        duration_us(small.ejection.median_us),
        small.services,
        duration_us(large.ejection.median_us),
        large.services,
        duration_us(small.controller_initial_ms * 1e3),
        small.services,
        duration_us(large.controller_initial_ms * 1e3),
        large.services,
        duration_us(large.same_service.median_us),
        large.same_service.grace_waits,
        large.same_service.count,
    );
}

/// The real agent on a config file of each size: its memory and its time to ready.
fn render_agent_runs(w: &mut String, a: &ApplyReport) {
    let runs: Vec<(&ApplyScale, &AgentRun)> = a
        .results
        .iter()
        .filter_map(|r| Some((r, r.agent.as_ref()?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\nThe agent itself: `geosteer agent` (release build) started on a config file of the \
         same services (their locality failover policy, 10 endpoints each) in a private network \
         namespace, attached to one veth there, no traffic. *Ready* is from start to its \
         \"ready\" line: the file parsed and validated, the object loaded, every service \
         applied, the programs attached. Its resident memory once ready (`VmRSS`) and the peak \
         so far (`VmHWM`), from `/proc/<pid>/status`; they include the pages of the table map \
         it wrote (mapped into the agent) but not the rest of the maps' kernel memory. *Idle \
         CPU*: its user and system time over 5 s, as a share of one CPU, with nothing \
         happening (every service has an outlier `interval: 1s`): from 1 s after ready, while \
         its first reconcile round still reads every backend flag (4,096 services a second), \
         and *steady* once that round is over.\n"
    );
    let _ = writeln!(
        w,
        "| Services | Config file | Ready in | Agent RSS once ready | Peak RSS | Idle CPU: first round | steady |"
    );
    let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|");
    for (r, run) in runs {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.services,
            mib(run.config_bytes),
            duration_us(run.ready_ms * 1e3),
            mib(run.rss_bytes),
            mib(run.peak_rss_bytes),
            cpu_share(run.idle_cpu),
            cpu_share(run.steady_cpu),
        );
    }
}

fn cpu_share(share: Option<f64>) -> String {
    share.map_or("—".to_string(), |c| format!("{:.1}% of a CPU", c * 100.0))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn duration_us(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// "median / max" of values that may be missing (a run where it never happened); missing
/// ones are counted after the figures.
fn median_max(values: &[Option<f64>], fmt: &dyn Fn(f64) -> String) -> String {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    let missing = values.len() - present.len();
    if present.is_empty() {
        return "never".to_string();
    }
    let figures = format!(
        "{} / {}",
        fmt(median(&present)),
        fmt(present.iter().copied().fold(f64::NEG_INFINITY, f64::max))
    );
    if missing > 0 {
        format!("{figures} ({missing} of {} never)", values.len())
    } else {
        figures
    }
}

/// A count, or a median of counts (which may fall between two).
fn count(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::{Conn, reduce};

    fn conn(i: u64, port: u16, backend: &str, status: u16) -> Conn {
        Conn {
            t_us: i * 100,
            done_us: i * 100 + 50,
            port: Some(port),
            backend: Some(backend.into()),
            status: Some(status),
            error: None,
        }
    }

    #[test]
    fn reduces_a_client_log() {
        let mut conns = vec![
            conn(0, 1, "hz1", 200),
            conn(1, 2, "hz2", 200),
            conn(2, 4, "hz1", 503),
            conn(3, 5, "hz2", 503),
        ];
        for i in 4..150 {
            conns.push(conn(i, 100 + i as u16, "sh1", 200));
        }
        // Port 1's previous connection went to hz1: the same 5-tuple.
        conns.push(conn(150, 1, "hz1", 503));
        for i in 151..300 {
            conns.push(conn(i, 1000 + i as u16, "sh2", 200));
        }
        let run = reduce(&conns).unwrap();
        assert_eq!(run.local_before, 1.0);
        assert_eq!(run.errors_5xx, 3);
        assert_eq!(run.errors_failed, 0);
        assert_eq!(
            (run.backends[0].later, run.backends[0].later_on_reused_port),
            (1, 1)
        );
        assert_eq!(
            (run.backends[1].later, run.backends[1].later_on_reused_port),
            (0, 0)
        );
        // hz2's first 5xx arrived at 350 µs; the next connection answered elsewhere at 450.
        assert_eq!(run.backends[1].avoided_after_us, Some(100));
        // No window of 100 holds more than one connection outside cn-shanghai, so the run is
        // there from the connection right after the first 5xx (opened at 300 µs, 50 µs after
        // that 5xx arrived).
        assert_eq!(run.converged_after_us, Some(50));
        assert_eq!(run.last_error_after_us, 150 * 100 + 50 - 250);
    }
}
