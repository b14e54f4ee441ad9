//! Builds the kernel programs (`ebpf/`) with the nightly toolchain and bpf-linker and places the
//! object in OUT_DIR, where `src/lib.rs` embeds it. `AYA_BUILD_SKIP=1` skips the kernel build for
//! pure-code work: an empty object is written so the crate still compiles; loading it then fails
//! with a clear error.
//!
//! On a fresh machine the kernel build's tools (nightly's rust-src, bpf-linker) are not there yet:
//! `cargo xtask` itself links this crate (through the lab library) and installs them only once it
//! runs. So a missing tool is a warning and an empty object, never a build failure, and the script
//! runs again as soon as the tool appears (cargo re-runs a build script whose watched file is
//! missing or newer).
use std::{env, fs, path::PathBuf};

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
                "cargo:warning=kernel programs not built: {} is missing (`cargo xtask install` adds it); the agent cannot load until it is there",
                tool.display()
            );
            println!("cargo:rerun-if-changed={}", tool.display());
        }
        println!("cargo:rerun-if-changed=../ebpf");
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

/// The files the kernel build needs that are not on this machine: nightly's standard library
/// sources (`-Z build-std`) and bpf-linker.
fn missing_tools() -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let home = env::var_os("HOME").map(PathBuf::from);
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|home| home.join(".rustup")));
    let host = env::var("HOST").unwrap_or_default();
    if let Some(rustup_home) = rustup_home {
        let std_sources = rustup_home.join(format!(
            "toolchains/nightly-{host}/lib/rustlib/src/rust/library/Cargo.lock"
        ));
        if !std_sources.exists() {
            missing.push(std_sources);
        }
    }
    let linker = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.map(|home| home.join(".cargo")))
        .map(|home| home.join("bin/bpf-linker"));
    let on_path = env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join("bpf-linker").exists()));
    if let Some(linker) = linker
        && !on_path
        && !linker.exists()
    {
        missing.push(linker);
    }
    missing
}
