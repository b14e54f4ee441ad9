//! `cargo xtask demo`: the main job on the built-in configuration.
//!
//! Builds, creates a throwaway lab of network namespaces (a client, the node, two regions with
//! two HTTP backends each — the addresses the built-in config names), starts `geosteer agent`
//! with no --config, sends a new connection to the VIP every few milliseconds and prints the live
//! per-backend split once a second. Everything is torn down at the end, also on Ctrl-C.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use geosteer_tests::{BackendSpec, Lab, LabSpec, agent::Agent, bin_path};

use crate::{install, run_cmd, workspace_root};

/// The built-in config's pin path (agent/src/default-config.yaml).
const PIN_PATH: &str = "/run/geosteer/bpf";
const VIP: &str = "198.19.0.10:80";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The lab's backends: names and subnets match the built-in config's endpoints.
fn backends() -> Vec<BackendSpec> {
    [("hz-1", 11), ("hz-2", 12), ("sh-1", 21), ("sh-2", 22)]
        .into_iter()
        .map(|(name, subnet_index)| BackendSpec {
            name: name.to_string(),
            subnet_index,
        })
        .collect()
}

pub fn run(seconds: u64) -> Result<()> {
    install::all()?;
    run_cmd(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "-p",
        "geosteer",
        "-p",
        "geosteer-tests",
        "--bins",
    ]))?;
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    println!(
        "\n== building the lab: client → node (geosteer) → cn-hangzhou {{hz-1, hz-2}}, cn-shanghai {{sh-1, sh-2}}"
    );
    let mut lab = Lab::build(&LabSpec {
        prefix: "gsdemo".into(),
        backends: backends(),
        with_uplink: false,
    })?;
    lab.start_backends(8080, None)?;
    let _pins = BpffsMount::new(PIN_PATH)?;

    println!("== starting `geosteer agent` (built-in config) in the node namespace");
    let agent = Agent::start_args(&lab.node, &["agent"])?;

    println!(
        "\n== a new connection to {VIP} every 10 ms for {seconds} s; live split per second (Ctrl-C stops)\n"
    );
    let result = watch(&lab, seconds);
    println!("\n== tearing down (agent, backends, namespaces, pins)");
    drop(agent);
    drop(lab);
    result
}

fn watch(lab: &Lab, seconds: u64) -> Result<()> {
    let client = bin_path("lab-client");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.client.name])
        .arg(&client)
        .args(["watch", "--target", VIP, "--duration-ms"])
        .arg((seconds * 1000).to_string())
        .args(["--interval-ms", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting lab-client watch")?;
    let stdout = child.stdout.take().expect("piped");
    let names: Vec<&str> = vec!["hz-1", "hz-2", "sh-1", "sh-2"];
    println!(
        "{:>4}  {}  {:>6}",
        "t(s)",
        names.iter().map(|n| format!("{n:>12}")).collect::<String>(),
        "errors"
    );
    let mut second: BTreeMap<String, u64> = BTreeMap::new();
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut total_errors = 0u64;
    let mut next_tick = 1000u64;
    let start = Instant::now();
    let print_row = |t: u64, counts: &BTreeMap<String, u64>, errors: u64| {
        let sum: u64 = counts.values().sum::<u64>().max(1);
        let cells: String = names
            .iter()
            .map(|n| {
                let c = counts.get(*n).copied().unwrap_or(0);
                format!("{:>5} ({:>3.0}%)", c, 100.0 * c as f64 / sum as f64)
            })
            .collect();
        println!("{t:>4}  {cells}  {errors:>6}");
    };
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let t = event["t_ms"].as_u64().unwrap_or(0);
        while t >= next_tick {
            print_row(next_tick / 1000, &second, errors);
            second.clear();
            errors = 0;
            next_tick += 1000;
        }
        match event["backend"].as_str() {
            Some(b) if event["error"].is_null() => {
                *second.entry(b.to_string()).or_default() += 1;
                *total.entry(b.to_string()).or_default() += 1;
            }
            _ => {
                errors += 1;
                total_errors += 1;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("\ntotal over {:.1} s:", start.elapsed().as_secs_f64());
    print_row(next_tick / 1000, &total, total_errors);
    println!("(the built-in config gives the four endpoints equal weight: ~25% each)");
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("interrupted");
    }
    if total.is_empty() {
        bail!("no request reached a backend");
    }
    Ok(())
}

/// A bpffs at `path` for the agent's pins, unmounted on drop.
struct BpffsMount {
    path: std::path::PathBuf,
}

impl BpffsMount {
    fn new(path: &str) -> Result<Self> {
        let path = std::path::PathBuf::from(path);
        let _ = Command::new("umount").arg(&path).output();
        std::fs::create_dir_all(&path)?;
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&path))?;
        Ok(Self { path })
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
