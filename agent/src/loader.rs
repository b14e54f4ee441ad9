//! Loading the kernel object (maps pinned under the configured bpffs directory) and attaching
//! the programs to the interfaces the config names.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode},
};
use geosteer_common::{map_names, program_names};
use tracing::{info, warn};

use crate::config::{Dataplane as DataplaneConfig, XdpMode};

/// The kernel object built from `ebpf/` (see build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/geosteer"));

/// Sizes of the resizable maps.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub max_services: u32,
    pub max_backends: u32,
    pub conntrack: u32,
}

impl From<&DataplaneConfig> for MapSizes {
    fn from(d: &DataplaneConfig) -> Self {
        Self {
            max_services: d.max_services,
            max_backends: d.max_backends,
            conntrack: d.conntrack_size,
        }
    }
}

/// Loads the object. With `pin_dir`, every map is pinned there, and maps already pinned there
/// (by an earlier run) are reused — conntrack survives an agent restart.
pub fn load(sizes: MapSizes, pin_dir: Option<&Path>) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP=1 and carries no kernel programs");
    }
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::SERVICES, sizes.max_services)
        .map_max_entries(map_names::VIPS, sizes.max_services)
        .map_max_entries(map_names::TABLES, sizes.max_services * 2)
        .map_max_entries(map_names::SERVICE_STATS, sizes.max_services)
        .map_max_entries(map_names::SERVICE_STATE, sizes.max_services)
        .map_max_entries(map_names::BACKENDS, sizes.max_backends)
        .map_max_entries(map_names::BACKEND_STATE, sizes.max_backends)
        .map_max_entries(map_names::BACKEND_STATS, sizes.max_backends)
        .map_max_entries(map_names::CONNTRACK, sizes.conntrack);
    let pins: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating pin directory {}", dir.display()))?;
            map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).context("loading the kernel object")?;
    for name in [
        program_names::TC_INGRESS,
        program_names::TC_EGRESS,
    ] {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("verifier rejected {name}"))?;
    }
    let xdp: &mut Xdp = program(&mut ebpf, program_names::XDP)?.try_into()?;
    xdp.load()
        .with_context(|| format!("verifier rejected {}", program_names::XDP))?;
    Ok(ebpf)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the kernel object"))
}

/// Where a program was attached, for logs and `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub hook: &'static str,
}

/// Interface names on this host (network namespace) matching a name or glob.
pub fn matching_interfaces(patterns: &[String]) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .context("listing /sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for pattern in patterns {
        let glob = glob::Pattern::new(pattern)
            .with_context(|| format!("interface pattern {pattern:?}"))?;
        let hits: Vec<&String> = names.iter().filter(|n| glob.matches(n)).collect();
        if hits.is_empty() {
            warn!(pattern, "no interface matches");
        }
        for name in hits {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    Ok(out)
}

/// Attaches TC ingress+egress to every `tc` interface, and XDP (plus TC egress for the replies)
/// to every `xdp` interface. Links live as long as `ebpf`: dropping it detaches everything.
pub fn attach(ebpf: &mut Ebpf, dataplane: &DataplaneConfig) -> Result<Vec<Attachment>> {
    let mut attached = Vec::new();
    let tc_ifaces = matching_interfaces(&dataplane.tc)?;
    let xdp_ifaces = matching_interfaces(&dataplane.xdp)?;
    for iface in &tc_ifaces {
        attach_tc(ebpf, iface, TcAttachType::Ingress, &mut attached)?;
    }
    for iface in tc_ifaces.iter().chain(&xdp_ifaces) {
        if attached
            .iter()
            .any(|a: &Attachment| &a.interface == iface && a.hook == "tc-egress")
        {
            continue;
        }
        attach_tc(ebpf, iface, TcAttachType::Egress, &mut attached)?;
    }
    for iface in &xdp_ifaces {
        let xdp: &mut Xdp = program(ebpf, program_names::XDP)?.try_into()?;
        let (mode, hook) = match dataplane.xdp_mode {
            XdpMode::Native => (AyaXdpMode::Driver, "xdp-native"),
            XdpMode::Generic => (AyaXdpMode::Skb, "xdp-generic"),
            XdpMode::Auto => (AyaXdpMode::Driver, "xdp-native"),
        };
        let result = xdp.attach(iface, mode);
        let hook = match (result, dataplane.xdp_mode) {
            (Ok(_), _) => hook,
            (Err(e), XdpMode::Auto) => {
                warn!(iface, error = %e, "native XDP unavailable, using generic mode");
                xdp.attach(iface, AyaXdpMode::Skb)
                    .with_context(|| format!("attaching XDP (generic) to {iface}"))?;
                "xdp-generic"
            }
            (Err(e), _) => {
                return Err(e).with_context(|| format!("attaching XDP to {iface}"));
            }
        };
        info!(iface, hook, "attached");
        attached.push(Attachment {
            interface: iface.clone(),
            hook,
        });
    }
    Ok(attached)
}

fn attach_tc(
    ebpf: &mut Ebpf,
    iface: &str,
    direction: TcAttachType,
    attached: &mut Vec<Attachment>,
) -> Result<()> {
    let (name, hook) = match direction {
        TcAttachType::Egress => (program_names::TC_EGRESS, "tc-egress"),
        _ => (program_names::TC_INGRESS, "tc-ingress"),
    };
    let prog: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
    prog.attach(iface, direction)
        .with_context(|| format!("attaching {name} to {iface} ({hook})"))?;
    info!(iface, hook, "attached");
    attached.push(Attachment {
        interface: iface.to_string(),
        hook,
    });
    Ok(())
}
