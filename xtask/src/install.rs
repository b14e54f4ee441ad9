//! Installs what the build and the tests need, only when missing, so it is cheap to run every
//! time. Pinned versions come from the toolchain notes: bpf-linker 0.10.4 matches the LLVM of the
//! machine's Rust toolchains; newer releases look for a system LLVM.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages the tests, demo and benchmarks use, with a binary that proves each present.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("ethtool", "/usr/sbin/ethtool"),
    ("iptables", "/usr/sbin/iptables"),
    ("nftables", "/usr/sbin/nft"),
    ("wrk", "/usr/bin/wrk"),
    ("haproxy", "/usr/sbin/haproxy"),
    ("tcpdump", "/usr/bin/tcpdump"),
    ("curl", "/usr/bin/curl"),
    ("iputils-ping", "/usr/bin/ping"),
    ("prometheus", "/usr/bin/promtool"),
    // The per-packet profile in `cargo xtask bench`.
    ("linux-perf", "/usr/bin/perf"),
];

pub(crate) fn all() -> Result<()> {
    rust_toolchain()?;
    bpf_linker()?;
    apt_packages()?;
    bpffs()?;
    crate::kubeval::install()?;
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_toolchain() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (kernel programs need -Z build-std)");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} (found: {:?})",
        version.trim()
    );
    run_cmd(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, bin)| !std::path::Path::new(bin).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // The haproxy package starts a system service; the benchmarks run their own instance.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "haproxy"])
        .output();
    Ok(())
}

/// bpffs at /sys/fs/bpf (pins, and the agent's default pin path's parent).
pub(crate) fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .context("mounting bpffs")?;
    if !status.success() {
        bail!("mount -t bpf bpf /sys/fs/bpf failed: {status}");
    }
    Ok(())
}
