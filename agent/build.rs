//! Builds the kernel programs (`ebpf/`) with the nightly toolchain and bpf-linker and places the
//! object in OUT_DIR, where `src/lib.rs` embeds it. `AYA_BUILD_SKIP=1` skips the kernel build for
//! pure-code work: an empty object is written so the crate still compiles; loading it then fails
//! with a clear error.
//!
//! On a fresh machine the kernel build's tools (nightly's rust-src, bpf-linker) are not there yet:
//! `cargo xtask` itself links this crate (through the lab library) and installs them only once it
//! runs. So a tool that is known to be missing is a warning and an empty object (the loader's
//! error then names the cause), never a build failure; the script then runs again on every build
//! until the tools are there. Where it cannot tell (no rustup), aya-build decides, as before.
use std::{env, fs, path::PathBuf, process::Command};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out_dir.join("geosteer");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip && !object.exists() {
        fs::write(&object, [])?;
    }
    let missing = missing_tools();
    if !skip && !missing.is_empty() {
        for tool in &missing {
            println!(
                "cargo:warning=kernel programs not built: {tool} is missing (`cargo xtask install` adds it); the agent cannot load until it is there"
            );
        }
        // A file that never exists: cargo runs this script again on every build, so the kernel
        // programs are built as soon as the tools are installed, whatever their files' mtimes.
        println!(
            "cargo:rerun-if-changed={}",
            out_dir.join("kernel-tools-were-missing").display()
        );
        fs::write(&object, [])?;
        return Ok(());
    }
    let ebpf = aya_build::Package {
        name: "geosteer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}

/// The kernel build's tools that are known to be missing: nightly's standard library sources
/// (`-Z build-std`), asked of the nightly toolchain aya-build will use, and bpf-linker.
fn missing_tools() -> Vec<String> {
    // Without rustup (a toolchain from elsewhere) nothing is judged: aya-build reports.
    let Some(toolchains) = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .ok()
        .filter(|out| out.status.success())
    else {
        return Vec::new();
    };
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|line| line.starts_with("nightly"))
    {
        return vec!["the nightly toolchain".to_string()];
    }
    let Some(sysroot) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    if !sysroot
        .join("lib/rustlib/src/rust/library/Cargo.lock")
        .exists()
    {
        missing.push("the nightly toolchain's rust-src component".to_string());
    }
    let on_path = env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join("bpf-linker").exists()));
    let in_cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .is_some_and(|home| home.join("bin/bpf-linker").exists());
    if !on_path && !in_cargo_home {
        missing.push("bpf-linker".to_string());
    }
    missing
}
