//! Project tasks: `cargo xtask test | demo | bench | install | crdgen`.
//!
//! xtask depends on nothing that needs the eBPF toolchain, so it compiles on a fresh machine and
//! can install that toolchain before anything else is built.

mod bench;
mod bench_policy;
mod charts;
mod crdgen;
mod demo;
mod install;
mod kubeval;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing needs (idempotent): rust-src, bpf-linker, apt packages,
    /// kubernetes-validate.
    Install,
    /// Install, build, and run every test tier; ends with a summary line.
    Test {
        /// Only run the tests whose name contains this string (all tiers).
        filter: Option<String>,
    },
    /// Build, start a throwaway lab of network namespaces, run the agent, show the live split.
    Demo {
        /// Seconds for the 90/10 and failing phases together (recovery adds ~13 s).
        #[arg(long, default_value_t = 12)]
        seconds: u64,
    },
    /// Write deploy/crds/ from the TrafficPolicy types (agent/src/kube/crd.rs).
    Crdgen,
    /// The differential packet fuzzer (tests/tests/fuzz.rs), optimised, at scale.
    Fuzz {
        /// Packets to run.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Seed (default: random; printed, and printed again with any mismatch).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure the data path and write BENCHMARKS.md.
    Bench {
        /// Shorter runs (for a quick look; the checked-in numbers use the default).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Install => install::all(),
        Command::Test { filter } => test::run(filter.as_deref()),
        Command::Demo { seconds } => demo::run(seconds),
        Command::Bench { quick } => bench::run(quick),
        Command::Crdgen => crdgen::run(),
        Command::Fuzz { packets, seed } => fuzz(packets, seed),
    }
}

fn fuzz(packets: u64, seed: Option<u64>) -> Result<()> {
    install::all()?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args([
            "test",
            "--release",
            "-p",
            "geosteer-tests",
            "--test",
            "fuzz",
            "--",
            "--nocapture",
        ])
        .env("GEOSTEER_FUZZ_PACKETS", packets.to_string());
    if let Some(seed) = seed {
        cmd.env("GEOSTEER_FUZZ_SEED", seed.to_string());
    }
    run_cmd(&mut cmd)
}

/// Runs a command, streaming its output; fails with the command line if it fails.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
    if !status.success() {
        anyhow::bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}
