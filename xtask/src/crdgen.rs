//! `cargo xtask crdgen`: writes `deploy/crds/` from the Rust types (`agent/src/kube/crd.rs`).
//!
//! The agent's test `checked_in_crd_is_current` compares the checked-in CRD with the generated
//! one; with `GEOSTEER_UPDATE_CRD` set it writes it instead. Running that test keeps xtask free
//! of the agent's dependencies (xtask must build before the eBPF toolchain is installed).

use std::process::Command;

use anyhow::Result;

use crate::{run_cmd, workspace_root};

const TEST: &str = "kube::crd::tests::checked_in_crd_is_current";

pub(crate) fn run() -> Result<()> {
    run_cmd(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["test", "-p", "geosteer", "--lib", TEST, "--", "--exact"])
            .env("GEOSTEER_UPDATE_CRD", "1"),
    )?;
    eprintln!("xtask: wrote deploy/crds/trafficpolicies.geosteer.io.yaml");
    Ok(())
}
