//! A BPF array map's values mapped into the agent's memory (`BPF_F_MMAPABLE`, kernel ≥ 5.5):
//! the table map is written with plain copies instead of a syscall per value, which was a
//! quarter of a full apply's time.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

use anyhow::{Context as _, Result, bail};

/// The values of an mmapable array map of `T`, mapped shared and writable.
pub struct MappedArray<T> {
    values: NonNull<T>,
    len: usize,
    mapped_bytes: usize,
}

// SAFETY: the mapping belongs to this value alone (no other reference to it exists in the
// process); moving it to another thread moves that ownership.
unsafe impl<T: Send> Send for MappedArray<T> {}

impl<T: aya::Pod> MappedArray<T> {
    /// Maps the `len` values of the array map `fd` (created with `BPF_F_MMAPABLE`), whose
    /// values are `T` (the caller's typed map has checked the value size).
    pub fn map(fd: BorrowedFd<'_>, len: u32) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).context("page size")?;
        let bytes = (len as usize)
            .checked_mul(size_of::<T>())
            .context("map size overflows")?
            .next_multiple_of(page);
        if bytes == 0 {
            bail!("an empty map cannot be mapped");
        }
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the flag, the
        // length against the map's size and the offset.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping the map's memory (created without BPF_F_MMAPABLE?)");
        }
        Ok(Self {
            values: NonNull::new(ptr.cast()).context("mmap returned a null pointer")?,
            len: len as usize,
            mapped_bytes: bytes,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `values` into the map from index `start` on. Programs see them once a later map
    /// update (a syscall, which orders the stores before it) points at them; the fence keeps
    /// the compiler from sinking the stores past that call. The caller makes sure no program
    /// reads these values meanwhile (free table chunks).
    pub fn write(&mut self, start: u32, values: &[T]) -> Result<()> {
        let start = start as usize;
        if start
            .checked_add(values.len())
            .is_none_or(|end| end > self.len)
        {
            bail!(
                "{} values at {start} do not fit the {} of the map",
                values.len(),
                self.len
            );
        }
        // SAFETY: `start..start + values.len()` is inside the mapping (checked above), which
        // `values` (a Rust slice) cannot overlap; `T` is plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.values.as_ptr().add(start),
                values.len(),
            );
        }
        fence(Ordering::Release);
        Ok(())
    }

    /// `len` values from index `start` on.
    pub fn read(&self, start: u32, len: u32) -> Result<Vec<T>> {
        let (start, len) = (start as usize, len as usize);
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            bail!(
                "{len} values at {start} are past the {} of the map",
                self.len
            );
        }
        let mut values = Vec::with_capacity(len);
        // SAFETY: the source is inside the mapping (checked above) and the destination is the
        // new vector's capacity, which it cannot overlap; copied without making a Rust
        // reference to memory another process could write. `T` is plain data, so every bit
        // pattern is a value.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.values.as_ptr().add(start),
                values.as_mut_ptr(),
                len,
            );
            values.set_len(len);
        }
        Ok(values)
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.values.as_ptr().cast(), self.mapped_bytes) };
    }
}
