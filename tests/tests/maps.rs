//! The agent's plan of its maps' kernel memory (`agent/src/memory.rs`) against the kernel's own
//! accounting (`memlock` in /proc/self/fdinfo of each map), for every map, at two sizes.
//!
//! Needs root (BPF); run through `cargo xtask test`.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::IterableMap as _;

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
            conntrack6: 1024,
            table_chunks: 64 * 36,
        },
        MapSizes {
            max_services: 1024,
            max_backends: 16384,
            conntrack: 262_144,
            conntrack6: geosteer_common::CONNTRACK6_SIZE,
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

/// The agent writes tables into the table map's memory (mapped, `BPF_F_MMAPABLE`): what it
/// writes there is what the map holds for the kernel's programs (read back with the map
/// syscalls), and a pin of the map made without the flag is migrated, its chunks kept.
#[test]
fn tables_written_through_the_mapping_are_what_the_map_holds() {
    use geosteer::{
        bpf_batch,
        dataplane::{BpfMaps, Dataplane as _},
    };
    use geosteer_common::{TableChunk, map_names};

    require_root();
    let sizes = MapSizes {
        max_services: 64,
        max_backends: 1024,
        conntrack: 4096,
        conntrack6: 1024,
        table_chunks: 64 * 36,
    };
    let pins = PinDir::new("gsmap").unwrap();
    let mut ebpf = loader::load(sizes, Some(&pins.pin_path())).expect("loads");
    let mut maps = BpfMaps::take(&mut ebpf).unwrap();
    assert!(maps.table_memory.is_some(), "the table map is mapped");
    let chunk = |seed: u32| TableChunk {
        words: std::array::from_fn(|i| seed.wrapping_mul(2_654_435_761) ^ i as u32),
    };
    let first: Vec<TableChunk> = (0..40).map(chunk).collect();
    let second: Vec<TableChunk> = (100..103).map(chunk).collect();
    maps.write_tables(&[(7, &first), (64 * 36 - 3, &second)])
        .unwrap();
    let read = |maps: &BpfMaps, start: u32, len: u32| -> Vec<TableChunk> {
        let fd = maps.table_chunks.map().fd().as_fd();
        bpf_batch::read_array_range(fd, start, len, size_of::<TableChunk>())
            .unwrap()
            .iter()
            .map(|bytes| TableChunk {
                words: std::array::from_fn(|i| {
                    u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
                }),
            })
            .collect()
    };
    assert_eq!(read(&maps, 7, 40), first);
    assert_eq!(read(&maps, 64 * 36 - 3, 3), second);
    assert_eq!(
        read(&maps, 6, 1),
        vec![TableChunk::default()],
        "nothing else written"
    );
    assert_eq!(maps.read_table(7, 40).unwrap(), first);
    let past_the_end = maps.write_tables(&[(64 * 36 - 2, &second)]);
    assert!(
        past_the_end.is_err(),
        "a table past the map's end is refused"
    );
    assert_eq!(read(&maps, 64 * 36 - 3, 3), second, "and writes nothing");
    drop(maps);
    drop(ebpf);

    // An agent of an earlier build pinned the table map without BPF_F_MMAPABLE: the map is
    // migrated (its chunks copied), and the new one is mapped.
    let copied = geosteer_tests::agent::pin_in_older_layout(
        &pins,
        map_names::TABLE_CHUNKS,
        size_of::<TableChunk>() as u32,
        0,
    )
    .unwrap();
    assert_eq!(copied, 64 * 36);
    let mut ebpf = loader::load(sizes, Some(&pins.pin_path())).expect("loads over the old pin");
    let maps = BpfMaps::take(&mut ebpf).unwrap();
    assert!(maps.table_memory.is_some(), "the migrated map is mapped");
    assert_eq!(maps.read_table(7, 40).unwrap(), first, "its chunks kept");
}

/// The verifier takes the programs with every kernel log statement on (the agent's `trace`
/// level for `geosteer::kernel`), not only at the default level the other tests load.
#[test]
fn loads_with_every_kernel_log_statement_on() {
    require_root();
    let sizes = MapSizes {
        max_services: 16,
        max_backends: 256,
        conntrack: 4096,
        conntrack6: 1024,
        table_chunks: 16 * 36,
    };
    for level in [loader::LevelFilter::TRACE, loader::LevelFilter::OFF] {
        loader::load_logging(sizes, None, level).unwrap_or_else(|e| panic!("{level}: {e:#}"));
    }
}
