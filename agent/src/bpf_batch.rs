//! `BPF_MAP_LOOKUP_BATCH`, which aya does not wrap: a walk of a map in batches whose cursor
//! (a hash bucket, an array index) survives concurrent deletes — unlike `get_next_key`, which
//! starts over when its key vanishes. Used by the conntrack GC and by map migration.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::{Context as _, Result};

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The batch token of a walk: opaque bytes the kernel hands back (`None`: from the start).
pub type Cursor = Option<Vec<u8>>;

/// Raw (key, value) entries.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One batch of raw entries (`key_size`, `value_size` bytes each), and the cursor of the next
/// batch (`None`: the walk is complete). Not for per-CPU maps (their values are per CPU).
pub fn lookup(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    cursor: &Cursor,
    max: usize,
) -> Result<(Entries, Cursor)> {
    // Hash maps use a u32 bucket index, arrays a key: room for either.
    let token_size = key_size.max(8);
    let in_batch = cursor.clone().unwrap_or_default();
    let mut in_token = vec![0u8; token_size];
    in_token[..in_batch.len().min(token_size)]
        .copy_from_slice(&in_batch[..in_batch.len().min(token_size)]);
    let mut out_token = vec![0u8; token_size];
    let mut keys = vec![0u8; key_size * max];
    let mut values = vec![0u8; value_size * max];
    let mut attr = BatchAttr {
        in_batch: if cursor.is_some() {
            in_token.as_ptr() as u64
        } else {
            0
        },
        out_batch: out_token.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: max as u32,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the attr points at buffers of `max` keys and values of the map's sizes and at two
    // batch tokens big enough for any map type, all alive for the call.
    let done = if let Err(error) = unsafe { batch_command(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        if error.raw_os_error() != Some(libc::ENOENT) {
            return Err(error).context("BPF_MAP_LOOKUP_BATCH");
        }
        true
    } else {
        false
    };
    let count = (attr.count as usize).min(max);
    let entries = (0..count)
        .map(|i| {
            (
                keys[i * key_size..(i + 1) * key_size].to_vec(),
                values[i * value_size..(i + 1) * value_size].to_vec(),
            )
        })
        .collect();
    Ok((entries, if done { None } else { Some(out_token) }))
}

/// Every entry of a map, in batches of 1024.
pub fn lookup_all(fd: BorrowedFd<'_>, key_size: usize, value_size: usize) -> Result<Entries> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let (batch, next) = lookup(fd, key_size, value_size, &cursor, 1024)?;
        out.extend(batch);
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// One `bpf(cmd, attr)` batch command; the kernel updates `attr.count` (entries done).
///
/// # Safety
///
/// `attr`'s pointers must point at buffers the command may read and write, alive for the call.
unsafe fn batch_command(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: the caller vouches for the buffers; the attr itself is a valid `union bpf_attr`
    // prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A batch write that stopped part way: the first `written` entries are in the map (the
/// kernel writes them in order and stops at the first that fails).
#[derive(Debug)]
pub struct PartlyWritten {
    pub written: usize,
    pub error: anyhow::Error,
}

/// Writes `count` entries (`keys` and `values` hold them back to back) in one
/// `BPF_MAP_UPDATE_BATCH`; when it fails, says how many (the first) were written.
pub fn update(
    fd: BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: usize,
) -> std::result::Result<(), PartlyWritten> {
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: count as u32,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the attr points at `count` keys and values of the map's sizes, alive for the
    // call; the kernel only reads them.
    if let Err(error) = unsafe { batch_command(BPF_MAP_UPDATE_BATCH, &mut attr) } {
        let written = (attr.count as usize).min(count);
        return Err(PartlyWritten {
            written,
            error: anyhow::Error::new(error).context(format!(
                "BPF_MAP_UPDATE_BATCH ({written} of {count} entries written)"
            )),
        });
    }
    Ok(())
}

/// `len` values (`value_size` bytes each) of an array map from index `start` on (fewer past
/// the map's end).
pub fn read_array_range(
    fd: BorrowedFd<'_>,
    start: u32,
    len: u32,
    value_size: usize,
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(len as usize);
    // The batch cursor of an array is the index before the next one to read.
    let mut cursor: Cursor = start.checked_sub(1).map(|prev| prev.to_ne_bytes().to_vec());
    while out.len() < len as usize {
        let want = (len as usize - out.len()).min(4096);
        let (batch, next) = lookup(fd, 4, value_size, &cursor, want)?;
        let got = batch.len();
        // An array hands out its first index after one past its end: only the run of indexes
        // from `start` on counts.
        let expected = start as usize + out.len();
        for (i, (key, value)) in batch.into_iter().enumerate() {
            let index = u32::from_ne_bytes(key[..4].try_into().expect("4-byte keys"));
            if index as usize != expected + i {
                return Ok(out);
            }
            out.push(value);
        }
        match next {
            Some(next) if got > 0 => cursor = Some(next),
            _ => break,
        }
    }
    Ok(out)
}

/// The bytes of a kernel-boundary value, as the map stores them.
pub fn pod_bytes<T: aya::Pod>(value: &T) -> &[u8] {
    // SAFETY: `aya::Pod` types are `#[repr(C)]`, `Copy`, hold no pointers and spell out their
    // padding as fields (common's `pod!` macro), so all `size_of::<T>()` bytes are initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// `(key, value)` entries into a map, in one batch (an error may leave a prefix written).
pub fn write_entries<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(K, V)],
) -> Result<()> {
    write_entries_reporting(fd, entries).map_err(|partly| partly.error)
}

/// [`write_entries`], saying how many entries were written when it fails.
pub fn write_entries_reporting<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(K, V)],
) -> std::result::Result<(), PartlyWritten> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(entries.len() * size_of::<K>());
    let mut values = Vec::with_capacity(entries.len() * size_of::<V>());
    for (key, value) in entries {
        keys.extend_from_slice(pod_bytes(key));
        values.extend_from_slice(pod_bytes(value));
    }
    update(fd, &keys, &values, entries.len())
}
