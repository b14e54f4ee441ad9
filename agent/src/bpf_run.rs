//! `BPF_PROG_TEST_RUN` on a program held by file descriptor. aya runs a program only through
//! the `Ebpf` object that owns it; the agent keeps a duplicate descriptor of the one program it
//! runs itself ([`geosteer_common::program_names::COUNT_TIMEOUTS`]) next to its maps.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::{Context as _, Result, ensure};

/// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// The kernel rejects an attr whose bytes past the last field it knows are not zero: the
    /// tail padding is spelled out so it is.
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs the program `repeat` times (at least once) on `frame`; returns the last return value.
pub fn run(program: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<u32> {
    ensure!(
        frame.len() >= 14,
        "a test frame holds at least an Ethernet header"
    );
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: repeat.max(1),
        ..TestRunAttr::default()
    };
    // SAFETY: the attr points at `frame`, alive and unchanged for the call; no output buffers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN");
    }
    Ok(attr.retval)
}
