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

pub(crate) fn run(seconds: u64) -> Result<()> {
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
        ipv6: false,
    })?;
    lab.start_backends(8080, None)?;
    let _pins = BpffsMount::new(PIN_PATH)?;

    println!(
        "== starting `geosteer agent` (built-in config: distribute 90/10, outlierDetection consecutive5xxErrors 1, baseEjectionTime 10s)"
    );
    let agent = Agent::start_args(&lab.node, &["agent"])?;

    let phase = seconds.max(2) * 1000 / 2;
    let plan = Plan {
        fail_at_ms: phase,
        heal_at_ms: 2 * phase,
        // Recovery takes baseEjectionTime (10 s) after the ejection, plus one sweep.
        end_ms: 2 * phase + 13_000,
    };
    println!(
        "\n== a new connection to {VIP} every 10 ms; live split per second (Ctrl-C stops)\n   \
         at {:.1} s cn-hangzhou starts answering 503; at {:.1} s it is healthy again\n",
        plan.fail_at_ms as f64 / 1000.0,
        plan.heal_at_ms as f64 / 1000.0
    );
    let result = watch(&lab, &plan);
    println!("\n== what the agent recorded");
    for line in agent.log().iter().filter(|l| l.contains("event=")) {
        println!("   {}", line.split("event=").nth(1).unwrap_or(line));
    }
    println!("\n== tearing down (agent, data path, backends, namespaces, pins)");
    let mut agent = agent;
    agent.terminate()?;
    // Stopping the agent leaves the programs steering (as on a rolling update); this removes them.
    let uninstall = std::process::Command::new(bin_path("geosteer"))
        .args(["uninstall", "--pin-path", PIN_PATH])
        .output()?;
    print!("   {}", String::from_utf8_lossy(&uninstall.stdout));
    drop(agent);
    drop(lab);
    result
}

struct Plan {
    fail_at_ms: u64,
    heal_at_ms: u64,
    end_ms: u64,
}

const NAMES: [&str; 4] = ["hz-1", "hz-2", "sh-1", "sh-2"];

fn print_row(label: &str, counts: &BTreeMap<String, u64>, errors: u64) {
    let sum: u64 = counts.values().sum::<u64>().max(1);
    let cells: String = NAMES
        .iter()
        .map(|n| {
            let c = counts.get(*n).copied().unwrap_or(0);
            format!("{:>5} ({:>3.0}%)", c, 100.0 * c as f64 / sum as f64)
        })
        .collect();
    let hz: u64 = counts
        .iter()
        .filter(|(k, _)| k.starts_with("hz"))
        .map(|(_, v)| v)
        .sum();
    println!(
        "{label:>5}  {cells}  {:>4.0}% / {:>3.0}%  {errors:>6}",
        100.0 * hz as f64 / sum as f64,
        100.0 * (sum.min(counts.values().sum()) - hz) as f64 / sum as f64
    );
}

fn watch(lab: &Lab, plan: &Plan) -> Result<()> {
    let client = bin_path("lab-client");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.client.name])
        .arg(&client)
        .args(["watch", "--target", VIP, "--duration-ms"])
        .arg(plan.end_ms.to_string())
        .args(["--interval-ms", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting lab-client watch")?;
    let stdout = child.stdout.take().expect("piped");
    println!(
        "{:>5}  {}  {:>13}  {:>6}",
        "t(s)",
        NAMES.iter().map(|n| format!("{n:>12}")).collect::<String>(),
        "hz / sh",
        "errors"
    );
    let mut second: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut next_tick = 1000u64;
    let mut failed_at: Option<u64> = None;
    let mut healed_at: Option<u64> = None;
    let mut first_error: Option<u64> = None;
    let mut last_error: Option<u64> = None;
    let mut client_errors = 0u64;
    let mut last_hz_while_failing: Option<u64> = None;
    let mut back_at: Option<u64> = None;
    let mut answered = 0u64;
    // Per 250 ms of the client's time: (cn-hangzhou, cn-shanghai, errors), for the chart.
    let mut bins: BTreeMap<u64, [u64; 3]> = BTreeMap::new();
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
            print_row(&format!("{}", next_tick / 1000), &second, errors);
            second.clear();
            errors = 0;
            next_tick += 1000;
        }
        if failed_at.is_none() && t >= plan.fail_at_ms {
            lab.set_status("hz-1", 503)?;
            lab.set_status("hz-2", 503)?;
            failed_at = Some(t);
            println!(
                "  --- {:.3} s: hz-1 and hz-2 now answer 503",
                t as f64 / 1000.0
            );
        }
        if healed_at.is_none() && t >= plan.heal_at_ms {
            lab.set_status("hz-1", 200)?;
            lab.set_status("hz-2", 200)?;
            healed_at = Some(t);
            println!(
                "  --- {:.3} s: hz-1 and hz-2 healthy again (ejected until baseEjectionTime is over)",
                t as f64 / 1000.0
            );
        }
        let backend = event["backend"].as_str();
        let ok = event["error"].is_null() && event["status"].as_u64() == Some(200);
        let bin = bins.entry(t / TIMELINE_BIN_MS).or_default();
        match (ok, backend) {
            (false, _) => bin[2] += 1,
            (true, Some(b)) if b.starts_with("hz") => bin[0] += 1,
            (true, _) => bin[1] += 1,
        }
        if let Some(b) = backend {
            *second.entry(b.to_string()).or_default() += 1;
            answered += 1;
            if b.starts_with("hz") {
                if failed_at.is_some() && healed_at.is_none() {
                    last_hz_while_failing = Some(t);
                }
                if healed_at.is_some() && back_at.is_none() {
                    back_at = Some(t);
                }
            }
        }
        if !ok {
            if std::env::var_os("GEOSTEER_DEMO_DEBUG").is_some() {
                println!("  ! {line}");
            }
            errors += 1;
            if failed_at.is_some() {
                client_errors += 1;
                first_error.get_or_insert(t);
                last_error = Some(t);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("\ntimeline (client view, one new connection every 10 ms):");
    let ms =
        |t: Option<u64>| t.map_or("—".to_string(), |t| format!("{:.3} s", t as f64 / 1000.0));
    println!("  region cn-hangzhou starts failing  {}", ms(failed_at));
    println!("  first client-visible error         {}", ms(first_error));
    println!(
        "  last connection served by hz-*     {}",
        ms(last_hz_while_failing)
    );
    println!("  last client-visible error          {}", ms(last_error));
    if let (Some(f), Some(l)) = (failed_at, last_hz_while_failing.or(last_error)) {
        println!(
            "  traffic moved to cn-shanghai after {} ms",
            l.saturating_sub(f)
        );
    }
    println!(
        "  client-visible errors              {client_errors} of {answered} answered connections"
    );
    println!("  back in cn-hangzhou                {}", ms(back_at));
    let chart = workspace_root().join("target/demo-timeline.svg");
    let marks = [
        failed_at.map(|t| ("cn-hangzhou fails".to_string(), t as f64 / 1000.0)),
        healed_at.map(|t| ("cn-hangzhou healthy again".to_string(), t as f64 / 1000.0)),
    ];
    match timeline_chart(
        &chart,
        &bins,
        &marks.into_iter().flatten().collect::<Vec<_>>(),
    ) {
        Ok(()) => println!("  chart                              {}", chart.display()),
        Err(e) => println!("  chart not written: {e:#}"),
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("interrupted");
    }
    if answered == 0 {
        bail!("no request reached a backend");
    }
    Ok(())
}

/// Width of one point of the demo's timeline chart.
const TIMELINE_BIN_MS: u64 = 250;

/// Share of each region (and of errors) among the connections of each bin, over time.
fn timeline_chart(
    path: &std::path::Path,
    bins: &BTreeMap<u64, [u64; 3]>,
    marks: &[(String, f64)],
) -> Result<()> {
    let line = |name: &str, i: usize| crate::charts::Line {
        name: name.into(),
        points: bins
            .iter()
            .map(|(bin, counts)| {
                let all = counts.iter().sum::<u64>().max(1) as f64;
                (
                    (bin * TIMELINE_BIN_MS) as f64 / 1000.0,
                    100.0 * counts[i] as f64 / all,
                )
            })
            .collect(),
    };
    crate::charts::lines(
        path,
        "geosteer demo: where new connections went (per 250 ms)",
        ("seconds", "% of connections"),
        (0.0, 100.0),
        &[
            line("cn-hangzhou", 0),
            line("cn-shanghai", 1),
            line("client-visible errors", 2),
        ],
        marks,
    )
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
