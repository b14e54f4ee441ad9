//! Loading the kernel object (maps pinned under the configured bpffs directory) and attaching
//! the programs to the interfaces the config names.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use geosteer_common::{map_names, program_names};
/// The levels [`load_logging`] takes.
pub use tracing::level_filters::LevelFilter;
use tracing::{info, warn};

use crate::{
    config::{Dataplane as DataplaneConfig, XdpMode},
    migrate::{self, Migration},
};

/// The kernel object built from `ebpf/` (see build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/geosteer"));

/// Sizes of the resizable maps.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub max_services: u32,
    pub max_backends: u32,
    pub conntrack: u32,
    /// `GS_CONNTRACK6` (`dataplane.conntrackSize6`).
    pub conntrack6: u32,
    /// Chunks of the Maglev table map (`dataplane.tableChunks`).
    pub table_chunks: u32,
}

impl From<&DataplaneConfig> for MapSizes {
    fn from(d: &DataplaneConfig) -> Self {
        Self {
            max_services: d.max_services,
            max_backends: d.max_backends,
            conntrack: d.conntrack_size,
            conntrack6: d.conntrack_size6,
            table_chunks: d.table_chunks(),
        }
    }
}

/// Loads the object. With `pin_dir`, every map is pinned there, and maps already pinned there
/// (by an earlier run) are reused — conntrack survives an agent restart. A pinned map of an
/// older layout is migrated into its replacement right away (for tools and tests; the agent
/// uses [`load_migrating`] to finish the migration after its programs attach).
pub fn load(sizes: MapSizes, pin_dir: Option<&Path>) -> Result<Ebpf> {
    let (ebpf, migrations) = load_migrating(sizes, pin_dir)?;
    if let Some(dir) = pin_dir {
        finish_migrations(migrations, dir)?;
    }
    Ok(ebpf)
}

/// Copies what the old maps gained since the first copy (the old programs kept running until
/// now) and removes them. Call once the new programs are attached.
pub fn finish_migrations(migrations: Vec<Migration>, pin_dir: &Path) -> Result<()> {
    for mut migration in migrations {
        if migration.kernel_written() {
            let new = aya::maps::MapData::from_pin(pin_dir.join(migration.name))
                .with_context(|| format!("opening the new {}", migration.name))?;
            migration.copy(&new, true)?;
        }
        migration.finish();
    }
    // Maps an earlier build pinned and this one does not use: no program reads them now.
    for name in map_names::RETIRED {
        let path = pin_dir.join(name);
        if path.exists() {
            remove_pin(&path)?;
            info!(
                map = name,
                "removed the pin of a map this build no longer uses"
            );
        }
    }
    Ok(())
}

/// [`load`], returning the migrations of maps whose pinned layout was older, after their
/// first copy.
pub fn load_migrating(sizes: MapSizes, pin_dir: Option<&Path>) -> Result<(Ebpf, Vec<Migration>)> {
    load_logging(sizes, pin_dir, kernel_log_level())
}

/// The most verbose level the agent's log takes for the kernel's records (target
/// `geosteer::kernel`): the programs write nothing above it.
pub fn kernel_log_level() -> LevelFilter {
    use tracing::Level;
    macro_rules! kernel_enabled {
        ($level:expr) => {
            tracing::enabled!(target: "geosteer::kernel", $level)
        };
    }
    if kernel_enabled!(Level::TRACE) {
        LevelFilter::TRACE
    } else if kernel_enabled!(Level::DEBUG) {
        LevelFilter::DEBUG
    } else if kernel_enabled!(Level::INFO) {
        LevelFilter::INFO
    } else if kernel_enabled!(Level::WARN) {
        LevelFilter::WARN
    } else if kernel_enabled!(Level::ERROR) {
        LevelFilter::ERROR
    } else {
        LevelFilter::OFF
    }
}

/// aya-log's value of `AYA_LOG_LEVEL` for `level`. Fixed at load (read-only data): the verifier
/// then drops the statements above it as dead code.
fn aya_log_level(level: LevelFilter) -> u8 {
    use aya_log::Level;
    match level {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => Level::Error as u8,
        LevelFilter::WARN => Level::Warn as u8,
        LevelFilter::INFO => Level::Info as u8,
        LevelFilter::DEBUG => Level::Debug as u8,
        _ => Level::Trace as u8,
    }
}

/// [`load_migrating`] with the kernel's log statements up to `level` on (the agent passes
/// [`kernel_log_level`]; a test loads the most verbose, which the verifier must take too).
pub fn load_logging(
    sizes: MapSizes,
    pin_dir: Option<&Path>,
    level: LevelFilter,
) -> Result<(Ebpf, Vec<Migration>)> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this binary carries no kernel programs: it was built with AYA_BUILD_SKIP=1, or where \
             the kernel build's tools (nightly's rust-src, bpf-linker) were missing (see the \
             build's warnings); run `cargo xtask install` and build again"
        );
    }
    let mut loader = EbpfLoader::new();
    let log_level = aya_log_level(level);
    loader.override_global("AYA_LOG_LEVEL", &log_level, true);
    for spec in crate::memory::maps(&sizes).iter().filter(|s| s.resizable) {
        loader.map_max_entries(spec.name, spec.max_entries);
    }
    let pins: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating pin directory {}", dir.display()))?;
            map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect()
        }
        None => Vec::new(),
    };
    let mut migrations = Vec::new();
    for spec in crate::memory::maps(&sizes) {
        if let Some((_, path)) = pins.iter().find(|(name, _)| *name == spec.name) {
            // Counters, the ring and the device map (the agent fills it) are rebuilt.
            let special = matches!(
                spec.kind,
                crate::memory::Kind::PerCpuArray
                    | crate::memory::Kind::RingBuf
                    | crate::memory::Kind::DevMapHash
                    | crate::memory::Kind::ProgArray
            );
            if spec.kind != crate::memory::Kind::RingBuf
                && let Some(migration) = migrate::prepare(
                    spec.name,
                    path,
                    (
                        spec.key_size,
                        spec.value_size,
                        spec.max_entries,
                        spec.map_flags(),
                    ),
                    special,
                )?
            {
                migrations.push(migration);
            }
        }
    }
    // The log ring starts empty with every load: records of other programs (another
    // aya-log version's format, another ring size) would not read.
    if let Some((_, path)) = pins.iter().find(|(name, _)| *name == map_names::LOGS)
        && path.exists()
    {
        remove_pin(path)?;
    }
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the kernel object")?;
    for name in [
        program_names::TC_INGRESS,
        program_names::TC_EGRESS,
        program_names::COUNT_TIMEOUTS,
        program_names::TC_INGRESS6,
        program_names::TC_EGRESS6,
    ] {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
        prog.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    for name in [program_names::XDP, program_names::XDP6] {
        let xdp: &mut Xdp = program(&mut ebpf, name)?.try_into()?;
        xdp.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    // The first copy, before any new program runs on the new maps.
    if let Some(dir) = pin_dir {
        for migration in &mut migrations {
            let new = aya::maps::MapData::from_pin(dir.join(migration.name))
                .with_context(|| format!("opening the new {}", migration.name))?;
            let copied = migration.copy(&new, false)?;
            info!(
                map = migration.name,
                entries = copied,
                "copied into the new layout"
            );
        }
    }
    Ok((ebpf, migrations))
}

/// Puts the IPv6 programs into the slots the attached programs tail-call. The array is pinned
/// and shared with the previous agent's attached programs, which tail-call whatever it holds:
/// so it is filled only by [`attach`], just before this run's programs take over the links —
/// after a migration's first copy, so the new IPv6 programs never run on maps still empty.
pub fn fill_tail_calls(ebpf: &mut Ebpf) -> Result<()> {
    for (map_name, slot, name) in [
        (
            map_names::TAIL_CALLS,
            program_names::TAIL_TC_INGRESS6,
            program_names::TC_INGRESS6,
        ),
        (
            map_names::TAIL_CALLS,
            program_names::TAIL_TC_EGRESS6,
            program_names::TC_EGRESS6,
        ),
        (
            map_names::XDP_TAIL_CALLS,
            program_names::TAIL_XDP6,
            program_names::XDP6,
        ),
    ] {
        let fd = match program(ebpf, name)? {
            aya::programs::Program::SchedClassifier(p) => p.fd(),
            aya::programs::Program::Xdp(p) => p.fd(),
            _ => bail!("program {name} has an unexpected type"),
        }
        .with_context(|| format!("{name} is not loaded"))?
        .try_clone()
        .context("duplicating a program fd")?;
        let map = ebpf
            .map_mut(map_name)
            .with_context(|| format!("the kernel object has no {map_name}"))?;
        aya::maps::ProgramArray::try_from(map)?
            .set(slot, &fd, 0)
            .with_context(|| format!("filling {map_name} slot {slot}"))?;
    }
    Ok(())
}

/// Where [`pin_programs`] pins each program: `<pinPath>/progs/<program name>`.
pub fn program_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("progs").join(name)
}

/// Pins the loaded programs, so `geosteer explain` can run the very programs that steer
/// traffic (BPF_PROG_TEST_RUN) from another process. A pin of an earlier run is replaced:
/// removing it does not detach anything (links hold their own reference).
pub fn pin_programs(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<()> {
    let dir = pin_dir.join("progs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in [
        program_names::TC_INGRESS,
        program_names::TC_EGRESS,
        program_names::XDP,
    ] {
        let path = program_pin(pin_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing old pin {}", path.display()));
            }
        }
        let pinned = match program(ebpf, name)? {
            aya::programs::Program::SchedClassifier(p) => p.pin(&path),
            aya::programs::Program::Xdp(p) => p.pin(&path),
            _ => bail!("program {name} has an unexpected type"),
        };
        pinned.with_context(|| format!("pinning program {}", path.display()))?;
    }
    Ok(())
}

/// What [`uninstall`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Pinned links (each one a program attached to an interface hook).
    pub links: Vec<String>,
    pub programs: usize,
    pub maps: usize,
}

/// Removes the data path an agent left under `pin_dir`: unpinning each link detaches its
/// program (no agent may be running: its own link handles would keep them attached), then the
/// program and map pins go, and with them conntrack, counters and the flow-hash key.
pub fn uninstall(pin_dir: &Path) -> Result<Uninstalled> {
    let mut out = Uninstalled::default();
    let links_dir = pin_dir.join("links");
    for path in pins_in(&links_dir)? {
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        let fd_link = link
            .unpin()
            .with_context(|| format!("unpinning {}", path.display()))?;
        drop(fd_link);
        out.links.push(file_name(&path));
    }
    for path in pins_in(&pin_dir.join("progs"))? {
        remove_pin(&path)?;
        out.programs += 1;
    }
    // Only the maps this build pins: a bpffs root also holds the kernel's own files
    // (maps.debug, progs.debug), which nobody may remove.
    for path in pins_in(pin_dir)? {
        let name = file_name(&path);
        let name = name.strip_suffix("_previous").unwrap_or(&name);
        if map_names::ALL.contains(&name) || map_names::RETIRED.contains(&name) {
            remove_pin(&path)?;
            out.maps += 1;
        }
    }
    for dir in [links_dir, pin_dir.join("progs"), pin_dir.to_path_buf()] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // A bpffs mount point (the directory itself) cannot be removed: harmless.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    Ok(out)
}

/// The files (pins) directly in `dir`, sorted; none when it does not exist.
fn pins_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| !t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn remove_pin(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing pin {}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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

/// Links pinned in bpffs: the programs stay attached when the agent stops (SIGTERM on a rolling
/// update, kill -9, OOM), so established flows keep being reverse-NATed and new ones steered
/// while no agent runs; only [`uninstall`] removes them. A new
/// agent re-adopts each pinned link and swaps its own program into it atomically
/// (BPF_LINK_UPDATE), so an upgrade never leaves an interface without a program.
pub struct Attachments {
    pub items: Vec<Attachment>,
    links: Vec<(PathBuf, PinnedLink)>,
}

/// Attaches TC ingress+egress to every `tc` interface, and XDP (plus TC ingress for what XDP
/// passes on and TC egress for the replies)
/// to every `xdp` interface, pinning each link under `links_dir`.
pub fn attach(
    ebpf: &mut Ebpf,
    dataplane: &DataplaneConfig,
    links_dir: &Path,
) -> Result<Attachments> {
    std::fs::create_dir_all(links_dir)
        .with_context(|| format!("creating {}", links_dir.display()))?;
    fill_tail_calls(ebpf)?;
    let mut out = Attachments {
        items: Vec::new(),
        links: Vec::new(),
    };
    let mut ifaces = matching_interfaces(&dataplane.tc)?;
    for iface in matching_interfaces(&dataplane.xdp)? {
        if !ifaces.contains(&iface) {
            ifaces.push(iface);
        }
    }
    for iface in &ifaces {
        out.attach_interface(ebpf, dataplane, iface, links_dir)?;
    }
    // Links an earlier agent pinned for interfaces this config no longer names (or that are
    // gone) would keep running its programs on its maps: detached.
    for path in pins_in(links_dir)? {
        if out.links.iter().any(|(p, _)| *p == path) {
            continue;
        }
        if let Some(link) = pinned_link(&path)? {
            drop(link);
        }
        info!(pin = %path.display(), "detached a link no longer configured");
    }
    Ok(out)
}

fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns
        .iter()
        .any(|p| glob::Pattern::new(p).is_ok_and(|g| g.matches(name)))
}

/// The interface's index in this network namespace (asked of the kernel: a sysfs mounted for
/// another namespace would answer for that one).
pub fn ifindex(iface: &str) -> Result<u32> {
    let name =
        std::ffi::CString::new(iface).with_context(|| format!("interface name {iface:?}"))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {iface} in this network namespace"));
    }
    Ok(index)
}

/// What an interface is, as far as attaching goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A NIC (a driver behind it).
    PhysicalEthernet,
    /// veth, bridge, bond, macvlan…: Ethernet frames, no hardware.
    VirtualEthernet,
    /// No Ethernet header (tun, WireGuard, IPIP, GRE, loopback): `ARPHRD_*` type and name.
    NotEthernet(u32, &'static str),
}

/// Reads the link type from sysfs (`type` is the `ARPHRD_*` value; physical devices have a
/// `device` link).
pub fn link_kind(iface: &str) -> Result<LinkKind> {
    let dir = Path::new("/sys/class/net").join(iface);
    let text = std::fs::read_to_string(dir.join("type"))
        .with_context(|| format!("reading the link type of {iface}"))?;
    let arphrd: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("link type of {iface}: {text:?}"))?;
    Ok(classify(arphrd, dir.join("device").exists()))
}

pub fn classify(arphrd: u32, has_device: bool) -> LinkKind {
    const ARPHRD_ETHER: u32 = 1;
    let name = match arphrd {
        ARPHRD_ETHER if has_device => return LinkKind::PhysicalEthernet,
        ARPHRD_ETHER => return LinkKind::VirtualEthernet,
        512 => "PPP",
        768 => "IPIP tunnel",
        769 => "IPv6-in-IPv6 tunnel",
        772 => "loopback",
        776 => "SIT tunnel",
        778 => "GRE tunnel",
        823 => "IPv6 GRE tunnel",
        65534 => "none: tun, WireGuard",
        _ => "not Ethernet",
    };
    LinkKind::NotEthernet(arphrd, name)
}

impl Attachments {
    /// Attaches whatever the config wants on `iface` that is not attached yet: TC ingress for
    /// `tc` names, XDP for `xdp` names, TC egress (replies) for both. Idempotent, so the link
    /// watcher may report an interface that is already attached.
    ///
    /// Refuses interfaces without an Ethernet header (the programs parse Ethernet frames), and
    /// with `xdpMode: auto` steers a virtual device's requests with TC ingress instead of XDP:
    /// XDP on a veth cannot fix the partial checksums its peer's TX offload leaves, and frames
    /// it redirects into a veth whose peer runs neither GRO nor XDP are dropped.
    pub fn attach_interface(
        &mut self,
        ebpf: &mut Ebpf,
        dataplane: &DataplaneConfig,
        iface: &str,
        links_dir: &Path,
    ) -> Result<()> {
        let kind = link_kind(iface)?;
        if let LinkKind::NotEthernet(arphrd, name) = kind {
            bail!(
                "{iface} is not an Ethernet device (link type {arphrd}, {name}): geosteer's \
                 programs read Ethernet frames; attach them to the pods' Ethernet (veth) \
                 interfaces instead"
            );
        }
        let xdp_wanted = matches_any(&dataplane.xdp, iface);
        let xdp = xdp_wanted
            && !(dataplane.xdp_mode == XdpMode::Auto && kind == LinkKind::VirtualEthernet);
        if xdp_wanted && !xdp && !self.items.iter().any(|a| a.interface == iface) {
            info!(
                iface,
                "xdpMode auto: a virtual device, so TC ingress steers its requests (XDP here \
                 cannot fix a peer's partial checksums, and its redirects need GRO on every \
                 peer)"
            );
        }
        // XDP interfaces get TC ingress too: XDP hands ICMP errors and fragments to the stack,
        // where TC translates them (it sees only what XDP passed, never what it redirected).
        let tc = matches_any(&dataplane.tc, iface) || xdp_wanted;
        let has = |out: &Attachments, hook: &str| {
            out.items
                .iter()
                .any(|a| a.interface == iface && a.hook.starts_with(hook))
        };
        if tc && !has(self, "tc-ingress") {
            attach_tc(ebpf, iface, TcAttachType::Ingress, links_dir, self)?;
        }
        if (tc || xdp) && !has(self, "tc-egress") {
            attach_tc(ebpf, iface, TcAttachType::Egress, links_dir, self)?;
        }
        if xdp && !has(self, "xdp") {
            attach_xdp(ebpf, iface, dataplane.xdp_mode, links_dir, self)?;
        }
        // A hook a previous agent attached that this config does not want is detached by the
        // sweep at the end of `attach` (the only time such a pin can exist).
        Ok(())
    }

    /// Forgets an interface that went away: the kernel detached its links with it; their pins
    /// go too, so a later interface of the same name is attached afresh, not "re-adopted" into
    /// a dead link.
    pub fn forget_interface(&mut self, iface: &str) {
        self.items.retain(|a| a.interface != iface);
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.links)
                .into_iter()
                .partition(|(path, _)| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.rsplit_once('_').is_some_and(|(name, _)| name == iface))
                });
        self.links = kept;
        for (path, link) in gone {
            if let Err(e) = link.unpin() {
                warn!(path = %path.display(), error = %e, "unpinning link");
            }
        }
    }
}

// bpffs refuses names with a dot (EPERM), hence `cl0_tc-ingress`.
fn pinned_link(path: &Path) -> Result<Option<FdLink>> {
    if !path.exists() {
        return Ok(None);
    }
    let link = PinnedLink::from_pin(path)
        .with_context(|| format!("opening pinned link {}", path.display()))?;
    // The pin is re-created after the update; the old one would keep a second reference.
    let fd_link = link
        .unpin()
        .with_context(|| format!("unpinning {}", path.display()))?;
    Ok(Some(fd_link))
}

fn attach_tc(
    ebpf: &mut Ebpf,
    iface: &str,
    direction: TcAttachType,
    links_dir: &Path,
    out: &mut Attachments,
) -> Result<()> {
    let (name, hook) = match direction {
        TcAttachType::Egress => (program_names::TC_EGRESS, "tc-egress"),
        _ => (program_names::TC_INGRESS, "tc-ingress"),
    };
    let path = links_dir.join(format!("{iface}_{hook}"));
    let prog: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
    let (link_id, how) = match pinned_link(&path)? {
        Some(old) => {
            let link: SchedClassifierLink = old.try_into()?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("updating the pinned {hook} link on {iface}"))?;
            (id, "re-adopted")
        }
        None => {
            let id = prog
                .attach(iface, direction)
                .with_context(|| format!("attaching {name} to {iface} ({hook})"))?;
            (id, "attached")
        }
    };
    let link: FdLink = prog.take_link(link_id)?.try_into()?;
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning link {}", path.display()))?;
    info!(iface, hook, how, "attached");
    out.items.push(Attachment {
        interface: iface.to_string(),
        hook,
    });
    out.links.push((path, pinned));
    Ok(())
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpMode,
    links_dir: &Path,
    out: &mut Attachments,
) -> Result<()> {
    let path = links_dir.join(format!("{iface}_xdp"));
    let xdp: &mut Xdp = program(ebpf, program_names::XDP)?.try_into()?;
    let (link_id, hook, how) = match pinned_link(&path)? {
        Some(old) => {
            let link: XdpLink = old.try_into()?;
            let id = xdp
                .attach_to_link(link)
                .with_context(|| format!("updating the pinned XDP link on {iface}"))?;
            (id, "xdp", "re-adopted")
        }
        None => {
            let (first, hook) = match mode {
                XdpMode::Generic => (AyaXdpMode::Skb, "xdp-generic"),
                XdpMode::Native | XdpMode::Auto => (AyaXdpMode::Driver, "xdp-native"),
            };
            if mode != XdpMode::Auto && link_kind(iface)? == LinkKind::VirtualEthernet {
                warn!(
                    iface,
                    "XDP on a virtual device: frames from a peer with TX checksum offload carry \
                     partial checksums XDP cannot fix (turn the offload off on the peer), and \
                     only dataplane.xdpRedirectTo devices get redirects; xdpMode: auto steers \
                     such devices with TC"
                );
            }
            match (xdp.attach(iface, first), mode) {
                (Ok(id), _) => (id, hook, "attached"),
                (Err(e), XdpMode::Auto) => {
                    warn!(iface, error = %e, "native XDP unavailable, using generic mode");
                    let id = xdp
                        .attach(iface, AyaXdpMode::Skb)
                        .with_context(|| format!("attaching XDP (generic) to {iface}"))?;
                    (id, "xdp-generic", "attached")
                }
                (Err(e), _) => return Err(e).with_context(|| format!("attaching XDP to {iface}")),
            }
        }
    };
    let link: FdLink = xdp.take_link(link_id)?.try_into()?;
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning link {}", path.display()))?;
    info!(iface, hook, how, "attached");
    out.items.push(Attachment {
        interface: iface.to_string(),
        hook,
    });
    out.links.push((path, pinned));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ethernet_devices_are_attachable_and_nics_are_told_from_virtual_ones() {
        assert_eq!(classify(1, true), LinkKind::PhysicalEthernet);
        assert_eq!(classify(1, false), LinkKind::VirtualEthernet);
        for (arphrd, name) in [
            (65534, "none: tun, WireGuard"),
            (768, "IPIP tunnel"),
            (772, "loopback"),
            (778, "GRE tunnel"),
        ] {
            assert_eq!(classify(arphrd, false), LinkKind::NotEthernet(arphrd, name));
        }
    }
}
