//! `cargo xtask test`: install, build, run every tier, print one summary line.
//!
//! Tiers: pure unit tests (common, agent, xtask), then the privileged tier (tests/): kernel
//! programs through BPF_PROG_TEST_RUN and end-to-end runs in network namespaces. The privileged
//! tier runs on one thread (namespaces and interface names are shared resources) and needs
//! root: without it, its tests fail — they never pass by skipping. Last, the manifests tier
//! validates `deploy/` offline against the Kubernetes schemas (`kubeval.rs`).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::{install, run_cmd, workspace_root};

#[derive(Default, Debug)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

pub(crate) fn run(filter: Option<&str>) -> Result<()> {
    install::all()?;
    let root = workspace_root();
    // The agent binary and the lab binaries are spawned by the namespace tests.
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "geosteer",
        "-p",
        "geosteer-tests",
        "--bins",
    ]))?;
    // The stand-in API server the Kubernetes end-to-end tests run the agent against.
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "geosteer",
        "--bin",
        "geosteer-fake-apiserver",
        "--features",
        "fake-api",
    ]))?;

    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let tiers: [(&str, &[&str], &[&str]); 2] = [
        (
            "pure",
            &["-p", "geosteer-common", "-p", "geosteer", "-p", "xtask"],
            &[],
        ),
        (
            "privileged",
            &["-p", "geosteer-tests"],
            &["--test-threads=1"],
        ),
    ];
    for (tier, packages, harness_args) in tiers {
        eprintln!("\n=== {tier} tests ===");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root).arg("test").args(packages).arg("--");
        cmd.args(harness_args);
        if let Some(f) = filter {
            cmd.arg(f);
        }
        let ok = run_counting(&mut cmd, &mut tally)?;
        if !ok {
            failures.push(tier);
        }
    }
    eprintln!("\n=== manifests ===");
    let manifests = crate::kubeval::run(filter)?;
    tally.passed += manifests.passed;
    tally.failed += manifests.failed;
    tally.ignored += manifests.skipped;
    if manifests.failed > 0 {
        failures.push("manifests");
    }
    println!(
        "\nsummary: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    if !failures.is_empty() || tally.failed > 0 {
        bail!("test tiers failed: {}", failures.join(", "));
    }
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output and adding up its "test result:" lines.
fn run_counting(cmd: &mut Command, tally: &mut Tally) -> Result<bool> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            tally.passed += count(rest, "passed");
            tally.failed += count(rest, "failed");
            tally.ignored += count(rest, "ignored");
        }
    }
    Ok(child.wait()?.success())
}

/// "ok. 3 passed; 0 failed; 1 ignored; ..." → the number before `word`.
fn count(result: &str, word: &str) -> u64 {
    result
        .split(';')
        .filter_map(|part| {
            let mut it = part.split_whitespace().rev();
            let w = it.next()?;
            let n = it.next()?;
            (w == word).then(|| n.parse::<u64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_cargo_result_lines() {
        let line =
            "ok. 12 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(count(line, "passed"), 12);
        assert_eq!(count(line, "failed"), 1);
        assert_eq!(count(line, "ignored"), 3);
        assert_eq!(count("FAILED. 0 passed; 2 failed;", "failed"), 2);
    }
}
