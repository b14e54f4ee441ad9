//! The agent's plan of its maps' kernel memory (`agent/src/memory.rs`) against the kernel's own
//! accounting (`memlock` in /proc/self/fdinfo of each map), for every map, at two sizes.
//!
//! Needs root (BPF); run through `cargo xtask test`.

use std::os::fd::{AsFd as _, AsRawFd as _};

use geosteer::{
    loader::{self, MapSizes},
    memory,
};
use geosteer_tests::{agent::PinDir, require_root};

fn memlock(fd: i32) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .unwrap_or_else(|| panic!("no memlock in fdinfo: {info}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_memory_plan_matches_the_kernels_accounting_for_every_map() {
    require_root();
    let cpus = memory::possible_cpus().unwrap();
    for (round, sizes) in [
        MapSizes {
            max_services: 64,
            max_backends: 1024,
            conntrack: 4096,
            table_chunks: 64 * 36,
        },
        MapSizes {
            max_services: 1024,
            max_backends: 16384,
            conntrack: 262_144,
            table_chunks: 1024 * 36,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let pins = PinDir::new(&format!("gsm{round}")).unwrap();
        let ebpf = loader::load(sizes, Some(&pins.pin_path())).expect("loads");
        let mut planned_total = 0;
        let mut kernel_total = 0;
        for spec in memory::maps(&sizes) {
            let map = aya::maps::MapData::from_pin(pins.pin_path().join(spec.name)).unwrap();
            let kernel = memlock(map.fd().as_fd().as_raw_fd());
            let planned = memory::bytes(&spec, cpus);
            eprintln!(
                "{:<20} planned {planned:>12}  kernel {kernel:>12}",
                spec.name
            );
            // Within 2% or 8 KiB (struct headers, page rounding).
            let slack = (kernel / 50).max(8 << 10);
            assert!(
                planned.abs_diff(kernel) <= slack,
                "{}: planned {planned} B, the kernel accounts {kernel} B ({sizes:?})",
                spec.name
            );
            planned_total += planned;
            kernel_total += kernel;
        }
        eprintln!("total: planned {planned_total}, kernel {kernel_total}");
        drop(ebpf);
    }
}
