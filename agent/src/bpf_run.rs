//! `BPF_PROG_TEST_RUN` on a program held by file descriptor. aya runs a program only through
//! the object that owns it (and needs `&mut` to it); the agent keeps a duplicate descriptor of
//! the one program it runs itself ([`geosteer_common::program_names::COUNT_TIMEOUTS`]) next to
//! its maps, and the packet tests run programs from threads that do not own the object.

use std::os::fd::{AsFd, AsRawFd as _};

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

/// What one BPF_PROG_TEST_RUN call reports.
pub struct TestRunOutcome {
    pub retval: u32,
    /// Mean ns per execution, as the kernel measured it.
    pub duration_ns: u32,
    /// Bytes written into the output buffer.
    pub out_len: usize,
}

/// Runs the program once on `data`; returns the output length written into `out`.
pub fn prog_test_run(prog: &impl AsFd, data: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    prog_test_run_repeat(prog, data, out, 1).map(|o| o.out_len)
}

/// Runs the program `repeat` times (at least once) on `data`. An empty `out` asks for no
/// output (the kernel would refuse a zero-sized buffer as too small).
pub fn prog_test_run_repeat(
    prog: &impl AsFd,
    data: &[u8],
    out: &mut [u8],
    repeat: u32,
) -> std::io::Result<TestRunOutcome> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: if out.is_empty() {
            0
        } else {
            out.as_mut_ptr() as u64
        },
        repeat: repeat.max(1),
        ..Default::default()
    };
    // SAFETY: the attr points at `data` and `out`, both alive for the call, with their sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TestRunOutcome {
        retval: attr.retval,
        duration_ns: attr.duration,
        out_len: attr.data_size_out as usize,
    })
}
