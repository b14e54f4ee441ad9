//! Upgrades that change a map's layout, without losing what the map holds.
//!
//! The programs of the previous agent keep running, on the previous maps, until the new agent
//! swaps its programs into the pinned links. So an incompatible pin is not removed: it is moved
//! aside (`<name>_previous`), the new map is created in its place, and the entries are copied
//! over converted — once before the new programs attach, and once more right after (entries the
//! old programs created in between; existing ones are not overwritten). Only then does the old
//! map go. A connection through the VIP keeps its conntrack entries, so its backend and reverse
//! NAT, across an upgrade that changed `FlowValue`.
//!
//! A map whose capacity changed (`conntrackSize`, `maxBackends`, … in the config, or a fixed
//! map that grew in a new build) is migrated the same way: a pinned map keeps the capacity it was
//! created with, so reusing it would silently ignore the new size.
//!
//! The rule that makes this possible, for every map value shared with the kernel
//! (`common/src/lib.rs`): **fields are only ever appended.** A value that grew is copied with
//! its new tail zeroed (every field's zero means "nothing known yet"). A key that changed, a
//! value that shrank, a per-CPU map (counters) or the ring buffer cannot be converted: such a
//! map is rebuilt empty, and the log says so.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::maps::MapData;
use std::os::fd::{AsFd as _, AsRawFd as _};
use tracing::{info, warn};

/// A pinned map moved aside for its replacement.
pub struct Migration {
    pub name: &'static str,
    old: MapData,
    old_path: PathBuf,
    old_layout: Layout,
    /// Picked up from an interrupted upgrade: the new map may already hold live entries,
    /// which the old ones must not overwrite.
    resumed: bool,
    /// Entries copied so far.
    pub copied: usize,
}

/// Key size, value size, capacity, and the creation flags that change how the map is used
/// ([`LAYOUT_FLAGS`]).
pub type Layout = (u32, u32, u32, u32);

/// Creation flags a pinned map must share with the new one: a table map without
/// `BPF_F_MMAPABLE` cannot be mapped by the agent.
pub const LAYOUT_FLAGS: u32 = BPF_F_MMAPABLE;

/// `BPF_F_MMAPABLE` (include/uapi/linux/bpf.h).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Whether a map of layout `old` can be converted into `new` (see the module comment).
pub fn convertible(old: Layout, new: Layout, per_cpu_or_ring: bool) -> bool {
    !per_cpu_or_ring && old.0 == new.0 && old.1 <= new.1 && old.1 > 0
}

/// `value` (of the old layout) in a new layout of `new_size` bytes: the old bytes, then zeros.
pub fn convert(value: &[u8], new_size: usize) -> Vec<u8> {
    let mut out = vec![0; new_size];
    out[..value.len()].copy_from_slice(value);
    out
}

/// Moves the pin at `path` aside when its layout differs from `expected`: into a migration when
/// the layout can be converted, else (the pin removed) to be rebuilt empty. A leftover
/// `<name>_previous` from an interrupted upgrade is picked up again.
pub fn prepare(
    name: &'static str,
    path: &Path,
    expected: Layout,
    per_cpu_or_ring: bool,
) -> Result<Option<Migration>> {
    let old_path = previous_path(path);
    if let Ok(old) = MapData::from_pin(&old_path) {
        let layout = layout(&old)?;
        // Interrupted between pinning aside and removing: `path` is still the old map.
        if MapData::from_pin(path).is_ok_and(|m| self::layout(&m).is_ok_and(|l| l != expected)) {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
        info!(map = name, "resuming an interrupted migration");
        return Ok(Some(Migration {
            name,
            old,
            old_path,
            old_layout: layout,
            resumed: true,
            copied: 0,
        }));
    }
    let Ok(old) = MapData::from_pin(path) else {
        return Ok(None); // no pin (a first start), or not a map: the loader reports the latter
    };
    let old_layout = layout(&old)?;
    if old_layout == expected {
        return Ok(None);
    }
    let shown = |(k, v, n, f): Layout| format!("key {k} B, value {v} B, {n} entries, flags {f:#x}");
    if !convertible(old_layout, expected, per_cpu_or_ring) {
        warn!(
            map = name,
            pinned = shown(old_layout),
            expected = shown(expected),
            "pinned map has another layout that cannot be converted: rebuilding it empty"
        );
        drop(old);
        std::fs::remove_file(path)
            .with_context(|| format!("removing the incompatible pin {}", path.display()))?;
        return Ok(None);
    }
    old.pin(&old_path)
        .with_context(|| format!("pinning {} aside", old_path.display()))?;
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    info!(
        map = name,
        pinned = shown(old_layout),
        expected = shown(expected),
        "pinned map has an older layout: migrating its entries (new fields zero)"
    );
    Ok(Some(Migration {
        name,
        old,
        old_path,
        old_layout,
        resumed: false,
        copied: 0,
    }))
}

/// `<name>_previous` (bpffs refuses dots in names).
fn previous_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("_previous");
    path.with_file_name(name)
}

pub fn layout(map: &MapData) -> Result<Layout> {
    let info = map.info().context("reading a pinned map's info")?;
    Ok((
        info.key_size(),
        info.value_size(),
        info.max_entries(),
        info.map_flags() & LAYOUT_FLAGS,
    ))
}

impl Migration {
    /// Copies the old map's entries into `new` (converted). `only_missing`: leave entries the
    /// new map already has (the catch-up after the new programs attached).
    /// (A resumed migration never overwrites: the new map may hold live entries.) Batch by
    /// batch, so a large table is never held in memory whole.
    pub fn copy(&mut self, new: &MapData, only_missing: bool) -> Result<usize> {
        let only_missing = only_missing || self.resumed;
        let new_layout = layout(new)?;
        let (key_size, value_size) = (self.old_layout.0 as usize, self.old_layout.1 as usize);
        let fd = self.old.fd().as_fd();
        let mut cursor = None;
        let mut copied = 0;
        loop {
            let (batch, next) = crate::bpf_batch::lookup(fd, key_size, value_size, &cursor, 1024)?;
            for (key, value) in batch {
                let value = convert(&value, new_layout.1 as usize);
                match update(new, &key, &value, only_missing) {
                    Ok(true) => copied += 1,
                    Ok(false) => {}
                    // A smaller map (an array index past its end, a full hash): what does not
                    // fit is left behind, as a smaller map must.
                    Err(e) if is_capacity_error(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        self.copied += copied;
        Ok(copied)
    }

    /// Whether the old programs write this map (the kernel's state, not the agent's), so what
    /// they added during the swap is worth catching up. The agent's own maps are copied once,
    /// before the agent re-adopts them: a catch-up would bring back what it deleted since.
    pub fn kernel_written(&self) -> bool {
        matches!(
            self.name,
            geosteer_common::map_names::CONNTRACK
                | geosteer_common::map_names::FRAGMENTS
                | geosteer_common::map_names::AFFINITY
                | geosteer_common::map_names::CONNTRACK6
                | geosteer_common::map_names::FRAGMENTS6
                | geosteer_common::map_names::AFFINITY6
        )
    }

    /// The old map is no longer needed (the new programs are attached): its pin goes.
    pub fn finish(self) {
        info!(map = self.name, entries = self.copied, "migrated");
        if let Err(e) = std::fs::remove_file(&self.old_path) {
            warn!(path = %self.old_path.display(), error = %e, "removing the migrated map's pin");
        }
    }
}

fn is_capacity_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|code| code == libc::E2BIG || code == libc::ENOSPC)
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// Writes one entry; false when `only_missing` and the key exists.
pub fn update(map: &MapData, key: &[u8], value: &[u8], only_missing: bool) -> Result<bool> {
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: if only_missing { BPF_NOEXIST } else { BPF_ANY },
    };
    // SAFETY: key and value buffers of the map's sizes, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &mut attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        let error = std::io::Error::last_os_error();
        if only_missing && error.raw_os_error() == Some(libc::EEXIST) {
            return Ok(false);
        }
        return Err(error).context("BPF_MAP_UPDATE_ELEM");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_appended_fields_convert() {
        // (old, new, per-CPU or ring, convertible)
        let cases = [
            ((16, 40, 100, 0), (16, 48, 100, 0), false, true),
            ((16, 48, 100, 0), (16, 48, 200, 0), false, true),
            ((16, 48, 200, 0), (16, 48, 100, 0), false, true),
            ((16, 48, 100, 0), (16, 40, 100, 0), false, false),
            ((8, 48, 100, 0), (16, 48, 100, 0), false, false),
            ((4, 40, 100, 0), (4, 112, 100, 0), true, false),
            // The table map gained BPF_F_MMAPABLE: same values, copied.
            ((4, 64, 100, 0), (4, 64, 100, BPF_F_MMAPABLE), false, true),
        ];
        for (old, new, special, expected) in cases {
            assert_eq!(
                convertible(old, new, special),
                expected,
                "{old:?} → {new:?}"
            );
        }
        assert_eq!(convert(&[1, 2, 3], 5), [1, 2, 3, 0, 0]);
    }
}
