//! Running `geosteer agent` inside a lab's node namespace.
//!
//! `ip netns exec` gives the agent a fresh /sys, so /sys/fs/bpf is not mounted there; its pins
//! go to a bpffs mounted (from outside) under /run/geosteer-lab/<prefix>, which the agent's
//! mount namespace inherits.
//!
//! Each agent gets its own admin socket next to its pins, so labs never share one; its metrics
//! endpoint is on the node namespace's own loopback ([`METRICS_ADDRESS`]).

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{Netns, bin_path};

/// `admin.metrics` of every lab agent: inside the node namespace, so reach it from there
/// (e.g. `ip netns exec <node> curl`).
pub const METRICS_ADDRESS: &str = "127.0.0.1:9595";

/// A bpffs mounted for one lab; unmounted and removed on drop.
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(prefix: &str) -> Result<PinDir> {
        let root = PathBuf::from("/run/geosteer-lab").join(prefix);
        let bpf = root.join("bpf");
        if bpf.exists() {
            let _ = Command::new("umount").arg(&bpf).status();
        }
        std::fs::create_dir_all(&bpf).with_context(|| format!("creating {}", bpf.display()))?;
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpf)
            .status()
            .context("mounting bpffs")?;
        if !status.success() {
            bail!("mount -t bpf bpf {} failed: {status}", bpf.display());
        }
        Ok(PinDir { root })
    }

    /// The agent's `dataplane.pinPath`.
    pub fn pin_path(&self) -> PathBuf {
        self.root.join("bpf")
    }

    /// The agent's `admin.socket`.
    pub fn socket_path(&self) -> PathBuf {
        self.root.join("admin.sock")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.pin_path()).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// How long [`Agent::start`] waits for the agent to say "ready".
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running agent; killed (SIGKILL) on drop unless it was terminated.
pub struct Agent {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
}

impl Agent {
    /// Writes `config_yaml` next to the pin dir, starts the agent in `ns` and waits for "ready".
    /// A config without an `admin:` section gets one: the socket next to the pins
    /// ([`PinDir::socket_path`]) and metrics on [`METRICS_ADDRESS`].
    pub fn start(ns: &Netns, pins: &PinDir, config_yaml: &str) -> Result<Agent> {
        Agent::start_with_env(ns, pins, config_yaml, &[])
    }

    /// [`Agent::start`] with extra environment variables (`NODE_NAME`, `KUBECONFIG`, …).
    pub fn start_with_env(
        ns: &Netns,
        pins: &PinDir,
        config_yaml: &str,
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        Agent::start_within(ns, pins, config_yaml, env, READY_WITHIN)
    }

    /// [`Agent::start_with_env`], waiting up to `ready_within` for "ready" (a config of many
    /// services takes longer than the usual 30 s).
    pub fn start_within(
        ns: &Netns,
        pins: &PinDir,
        config_yaml: &str,
        env: &[(&str, &str)],
        ready_within: Duration,
    ) -> Result<Agent> {
        let config_path = pins.root.join("config.yaml");
        std::fs::write(&config_path, with_admin(config_yaml, pins))?;
        let path = config_path.to_string_lossy().into_owned();
        let mut agent = Agent::spawn(ns, &["agent", "--config", &path], env, ready_within)?;
        agent.config_path = config_path;
        Ok(agent)
    }

    /// Starts `geosteer <args>` in `ns` and waits for "ready".
    pub fn start_args(ns: &Netns, args: &[&str]) -> Result<Agent> {
        Agent::spawn(ns, args, &[], READY_WITHIN)
    }

    fn spawn(
        ns: &Netns,
        args: &[&str],
        env: &[(&str, &str)],
        ready_within: Duration,
    ) -> Result<Agent> {
        let config_path = PathBuf::new();
        let bin = bin_path("geosteer");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&bin)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut agent = Agent {
            child: Some(child),
            log,
            config_path,
        };
        let deadline = Instant::now() + ready_within;
        loop {
            if agent.log_contains(" ready") {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "agent exited with {status} before it was ready:\n{}",
                    agent.log().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent not ready after {ready_within:?}:\n{}",
                    agent.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then wait up to 10 s for a clean exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("agent already stopped"))?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("agent did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `geosteer uninstall` for the agent of `pins` (run in `ns`, where its interfaces are): what a
/// lab's teardown, or a bench round that hands the node to a peer, runs once the agent stopped.
/// Returns its report line.
pub fn uninstall(ns: &Netns, pins: &PinDir) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin_path("geosteer"))
        .arg("uninstall")
        .arg("--pin-path")
        .arg(pins.pin_path())
        .arg("--socket")
        .arg(pins.socket_path())
        .output()
        .context("running geosteer uninstall")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "geosteer uninstall failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// `config_yaml` with an `admin:` section added at the end unless it has one.
pub fn with_admin(config_yaml: &str, pins: &PinDir) -> String {
    if config_yaml.starts_with("admin:") || config_yaml.contains("\nadmin:") {
        return config_yaml.to_string();
    }
    let mut yaml = config_yaml.trim_end().to_string();
    yaml.push_str(&format!(
        "\nadmin: {{metrics: \"{METRICS_ADDRESS}\", socket: {}}}\n",
        pins.socket_path().display()
    ));
    yaml
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Config with the four endpoints, the node in cn-hangzhou, and `policy` (YAML lines indented
/// for the service level) appended to the service.
pub fn two_region_config(pins: &PinDir, endpoints: &[&str], policy: &str) -> String {
    let mut eps = String::new();
    for name in endpoints {
        let (ip, region, zone, cluster) = match *name {
            "hz1" => (
                "198.18.11.2",
                "cn-hangzhou",
                "cn-hangzhou-b",
                "ack-hangzhou",
            ),
            "hz2" => (
                "198.18.12.2",
                "cn-hangzhou",
                "cn-hangzhou-b",
                "ack-hangzhou",
            ),
            "sh1" => (
                "198.18.21.2",
                "cn-shanghai",
                "cn-shanghai-a",
                "ack-shanghai",
            ),
            "sh2" => (
                "198.18.22.2",
                "cn-shanghai",
                "cn-shanghai-a",
                "ack-shanghai",
            ),
            other => panic!("unknown endpoint {other}"),
        };
        eps.push_str(&format!(
            "      - {{ip: {ip}, region: {region}, zone: {zone}, cluster: {cluster}}}\n"
        ));
    }
    format!(
        "node: {{name: lab-node, region: cn-hangzhou, zone: cn-hangzhou-b, cluster: ack-hangzhou}}\n\
         dataplane:\n  tc: [cl0]\n  pinPath: {}\n  maxServices: 16\n  maxBackends: 1024\n  conntrackSize: 65536\n\
         services:\n  - name: reviews\n    vip: 198.19.0.10\n    ports: [{{name: http, port: 80, targetPort: 8080}}]\n    endpoints:\n{eps}{policy}",
        pins.pin_path().display()
    )
}

/// `geosteer ARGS -o json` for the agent of `pins`, run in `ns`.
pub fn geosteer_json(ns: &Netns, pins: &PinDir, args: &[&str]) -> Result<serde_json::Value> {
    let bin = bin_path("geosteer");
    let pin_path = pins.pin_path();
    let socket = pins.socket_path();
    let mut all: Vec<&str> = vec![bin.to_str().context("binary path")?];
    all.extend_from_slice(args);
    all.extend([
        "-o",
        "json",
        "--pin-path",
        pin_path.to_str().context("pin path")?,
        "--socket",
        socket.to_str().context("socket path")?,
    ]);
    let out = ns.exec(&all)?;
    serde_json::from_str(out.trim()).with_context(|| format!("geosteer printed {out:?}"))
}

/// One of `geosteer status`'s conntrack event counters (`icmp_translated`,
/// `xdp_passed_to_stack`, …) of the agent pinned under `pins`.
pub fn ct_event(ns: &Netns, pins: &PinDir, name: &str) -> u64 {
    let status = geosteer_json(ns, pins, &["status"]).expect("geosteer status");
    status["conntrack_events"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// Replaces the pinned map `name` under `pins` by a copy in an older layout whose values are
/// `value_size` bytes (each entry's first bytes), created with `map_flags`: what an agent of a
/// release before the value grew (or the flags changed) left pinned. The programs attached meanwhile keep the map they hold. Returns how many
/// entries the copy has.
pub fn pin_in_older_layout(
    pins: &PinDir,
    name: &str,
    value_size: u32,
    map_flags: u32,
) -> anyhow::Result<usize> {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};
    let path = pins.pin_path().join(name);
    let current = aya::maps::MapData::from_pin(&path)?;
    let info = current.info()?;
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = CreateAttr {
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size,
        max_entries: info.max_entries(),
        map_flags,
    };
    const BPF_MAP_CREATE: libc::c_long = 0;
    // SAFETY: a valid attr prefix for BPF_MAP_CREATE; the kernel zero-extends the rest.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const CreateAttr,
            std::mem::size_of::<CreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .map_err(|e| anyhow::anyhow!("BPF_MAP_CREATE: {e}"));
    }
    // SAFETY: a new fd the kernel just returned to us.
    let older = aya::maps::MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) })?;
    let entries = geosteer::bpf_batch::lookup_all(
        current.fd().as_fd(),
        info.key_size() as usize,
        info.value_size() as usize,
    )?;
    for (key, value) in &entries {
        geosteer::migrate::update(&older, key, &value[..value_size as usize], false)?;
    }
    drop(current);
    std::fs::remove_file(&path)?;
    older.pin(&path)?;
    Ok(entries.len())
}
