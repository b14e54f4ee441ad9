//! The `manifests` tier of `cargo xtask test`: every manifest under `deploy/` validated offline
//! against the Kubernetes OpenAPI schemas with PyPI's `kubernetes-validate` (its schemas are
//! bundled), strictly (an unknown field is an error), for the oldest and the newest Kubernetes
//! the install supports. TrafficPolicies are checked against the schema of the checked-in CRD.
//! The security properties are Rust tests (`tests/tests/kube_deploy.rs`).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{run_cmd, workspace_root};

/// Pinned: its bundled schemas are what the manifests are checked against.
const KUBERNETES_VALIDATE: &str = "1.37.0";
/// 1.30: the first with `securityContext.appArmorProfile`, which the DaemonSet sets.
const KUBERNETES_VERSIONS: &str = "1.30.0,1.37.0";
/// A virtualenv of its own: no system Python packages are touched (Debian forbids it anyway).
const VENV: &str = "target/kubeval-venv";

/// What the manifests tier counted.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

fn venv() -> PathBuf {
    workspace_root().join(VENV)
}

/// Installs kubernetes-validate into its virtualenv, unless the pinned version is there.
pub(crate) fn install() -> Result<()> {
    let python = venv().join("bin/python");
    let installed = Command::new(&python)
        .args(["-m", "pip", "show", "kubernetes-validate"])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == format!("Version: {KUBERNETES_VALIDATE}"))
        });
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing kubernetes-validate {KUBERNETES_VALIDATE} into {VENV}");
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(venv()))?;
    run_cmd(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
    ]))
}

/// Every YAML file under `dir`, sorted.
fn manifests(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(manifests(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Validates every manifest; prints one line per object and returns the counts.
pub(crate) fn run(filter: Option<&str>) -> Result<Outcome> {
    let root = workspace_root();
    let deploy = root.join("deploy");
    let files: Vec<PathBuf> = manifests(&deploy)?
        .into_iter()
        .map(|p| p.strip_prefix(&root).map(Path::to_path_buf).unwrap_or(p))
        .collect();
    let mut child = Command::new(venv().join("bin/python"))
        .current_dir(&root)
        .arg("-c")
        .arg(VALIDATE_PY)
        .arg(KUBERNETES_VERSIONS)
        .arg("deploy/crds/trafficpolicies.geosteer.io.yaml")
        .arg(filter.unwrap_or(""))
        .args(&files)
        .stdout(Stdio::piped())
        .spawn()
        .context("running kubernetes-validate (cargo xtask install sets it up)")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut outcome = Outcome::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with("ok ") {
            outcome.passed += 1;
        } else if line.starts_with("FAILED ") {
            outcome.failed += 1;
        } else if line.starts_with("skipped ") {
            outcome.skipped += 1;
        }
    }
    let status = child.wait()?;
    if !status.success() && outcome.failed == 0 {
        bail!("the manifest validator failed: {status}");
    }
    Ok(outcome)
}

/// argv: versions, CRD file, name filter, manifests. One line per object: `ok`, `FAILED` or
/// `skipped`, then `<file>: <kind>/<name>`.
const VALIDATE_PY: &str = r#"
import copy, sys
import jsonschema, yaml
from kubernetes_validate import utils

versions, crd_file, name_filter, files = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4:]

# Kinds with no schema offline, and why that is acceptable.
NO_SCHEMA = {
    "networking.istio.io": "Istio's schema is not bundled; tests/tests/kube_deploy.rs reads it with the agent's parser",
    "kustomize.config.k8s.io": "kustomize's own file, not applied to the cluster",
    "monitoring.coreos.com": "the Prometheus Operator's schema is not bundled; tests/tests/kube_deploy.rs checks the PodMonitor against the DaemonSet",
}

def strict(schema):
    # Structural CRD schemas prune unknown fields; treat them as errors instead, as kubectl's
    # strict field validation does.
    schema = copy.deepcopy(schema)
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    return schema

crds = {}
for crd in yaml.safe_load_all(open(crd_file)):
    group = crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"].update({
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object"},
        })
        crds[(group + "/" + version["name"], crd["spec"]["names"]["kind"])] = schema

failed = 0
for file in files:
    for doc in yaml.safe_load_all(open(file)):
        if not doc:
            continue
        name = "%s: %s/%s" % (file, doc.get("kind"), (doc.get("metadata") or {}).get("name", "-"))
        if name_filter and name_filter not in "manifests " + name:
            continue
        group = doc.get("apiVersion", "").split("/")[0]
        try:
            if (doc.get("apiVersion"), doc.get("kind")) in crds:
                jsonschema.validate(doc, crds[(doc["apiVersion"], doc["kind"])])
            elif group in NO_SCHEMA:
                print("skipped %s (%s)" % (name, NO_SCHEMA[group]))
                continue
            else:
                for version in versions:
                    utils.validate(doc, version, strict=True)
            print("ok %s" % name)
        except jsonschema.ValidationError as e:
            failed += 1
            where = ".".join(str(p) for p in e.absolute_path)
            print("FAILED %s: %s: %s" % (name, where, e.message))
        except Exception as e:
            failed += 1
            print("FAILED %s: %s" % (name, getattr(e, "message", None) or e))
sys.exit(1 if failed else 0)
"#;
