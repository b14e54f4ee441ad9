//! Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016).
//!
//! The data path picks a backend with `table[hash(flow) % table.len()]`. Maglev fills that table
//! so that every backend gets a share of slots proportional to its weight, and so that adding or
//! removing one backend moves only about its own share of slots: most existing flows keep their
//! backend even when a packet misses the connection-tracking entry.
//!
//! This module is pure arithmetic: no IO, no kernel maps.

/// One backend as Maglev sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity such as `"10.1.0.11:9080"`. The slots a backend gets depend only on this
    /// name (and the other names), never on its position in the input.
    pub name: &'a str,
    /// Relative share of the table. Weight 0 means drained: no slots at all.
    pub weight: u32,
    /// Slots are apportioned to groups first (by their members' summed weight), then within
    /// each group: a group whose share is a slot or more gets one even when each of its members'
    /// is a fraction of one (a lower priority level spread over many endpoints).
    pub group: u32,
}

/// Builds a lookup table of `size` entries; each entry is an index into `backends`.
///
/// Backends with weight 0 get no slots. An empty input, or one where every weight is 0, gives an
/// empty table, which the data path treats as "no backend".
///
/// The result depends only on the set of (name, weight) pairs, not on their order, so every node
/// that sees the same endpoints builds the same table.
///
/// # Panics
///
/// If `size` is not prime (the permutations would not visit every slot), if `size` is not larger
/// than the number of backends, or if there are more backends than a `u16` can index.
pub fn build_table(backends: &[MaglevBackend], size: usize) -> Vec<u16> {
    assert!(is_prime(size), "maglev table size {size} is not prime");
    assert!(
        backends.len() < size,
        "maglev table size {size} must be larger than the number of backends ({})",
        backends.len()
    );
    assert!(
        backends.len() <= usize::from(u16::MAX) + 1,
        "{} backends do not fit in a u16 index",
        backends.len()
    );

    if backends.iter().all(|b| b.weight == 0) {
        return Vec::new();
    }

    // Taking turns in name order (rather than input order) makes ties between backends resolve
    // the same way however the caller happened to list them.
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    order.sort_by(|&a, &b| backends[a].name.cmp(backends[b].name).then(a.cmp(&b)));

    // Each backend's slot count first, by largest remainder: each group (see
    // [`MaglevBackend::group`]) gets its exact share of the table floored and the slots that
    // leaves over go to the largest remainders (ties in order of the first member's name);
    // then each group's count is shared among its members the same way. Every group and every
    // backend is within one slot of its share, so a share of a slot or more never rounds to
    // nothing (a turn-taking rule on the raw weights gave 100 endpoints sharing 0.6% of the
    // table 0 slots instead of 98).
    let mut groups: Vec<(u32, u64)> = Vec::new(); // (group, summed weight), first-seen order
    for &i in &order {
        let b = &backends[i];
        match groups.iter_mut().find(|(g, _)| *g == b.group) {
            Some((_, w)) => *w += u64::from(b.weight),
            None => groups.push((b.group, u64::from(b.weight))),
        }
    }
    let weights: Vec<u64> = groups.iter().map(|&(_, w)| w).collect();
    let group_quotas = apportion(&weights, size as u64);
    let mut quotas: Vec<(usize, u64)> = Vec::with_capacity(order.len());
    for (&(group, _), &group_quota) in groups.iter().zip(&group_quotas) {
        let members: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| backends[i].group == group)
            .collect();
        let weights: Vec<u64> = members
            .iter()
            .map(|&i| u64::from(backends[i].weight))
            .collect();
        quotas.extend(members.into_iter().zip(apportion(&weights, group_quota)));
    }

    let mut cursors: Vec<Cursor> = quotas
        .iter()
        .filter(|q| q.1 > 0)
        .map(|&(index, quota)| Cursor::new(index, &backends[index], quota, size))
        .collect();
    let max_quota = cursors.iter().map(|c| c.quota).max().unwrap_or(0);

    let mut table: Vec<Option<u16>> = vec![None; size];
    let mut filled = 0;
    // Every round the backends with the largest count claim one slot and the others a fraction
    // of one, carried over as credit: after `max_quota` rounds each has claimed exactly its
    // count, interleaved in proportion, and the table is full.
    loop {
        for cursor in &mut cursors {
            cursor.credit += cursor.quota;
            while cursor.credit >= max_quota {
                cursor.credit -= max_quota;
                cursor.claim_next_free_slot(&mut table);
                filled += 1;
                if filled == size {
                    return table
                        .into_iter()
                        .map(|slot| slot.expect("every slot is filled"))
                        .collect();
                }
            }
        }
    }
}

/// Table sizes to choose from: primes just under powers of two (Cilium's list), from 1,021 on:
/// a slot is 0.1% of the smallest table, finer than any share the policy sets (Envoy's
/// priority loads and Istio's `distribute` are whole percents), so a share of a slot or more
/// never rounds to nothing, and each backend is within a slot of its share.
pub const TABLE_SIZES: [usize; 8] = [1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071];

/// Slots per backend a table gets at least: Maglev's guidance (M ≥ 100·N) for the
/// one-backend-moves-1/N property and even permutations.
const SLOTS_PER_BACKEND: u64 = 100;

/// The table size for `count` backends: the smallest of [`TABLE_SIZES`] with at least 100
/// slots per backend (the largest when none has). Only the count: weight-0 backends count too
/// and weights do not, so neither an ejection, a failover nor a drain changes the size, and
/// every node builds the same table. A change of the count that moves the size to another step
/// (10 → 11 backends, for one) places new flows anew; flows in conntrack keep their backend.
pub fn table_size(count: usize) -> usize {
    fitting(SLOTS_PER_BACKEND * count as u64)
}

/// Chunks of the kernel's table map a table for `count` backends takes (their ids and
/// [`table_size`] slots; none without backends).
pub fn table_chunks_for(count: usize) -> u32 {
    if count == 0 {
        return 0;
    }
    geosteer_common::table_chunks(table_size(count) as u32, count as u32)
}

fn fitting(needed: u64) -> usize {
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&size| size as u64 >= needed)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// Splits `total` among `weights` by largest remainder (Hamilton): each gets its exact share
/// floored, and the units left over go to the largest remainders, ties to the earlier one.
fn apportion(weights: &[u64], total: u64) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<(u64, u64)> = weights
        .iter()
        .map(|&w| {
            let scaled = u128::from(w) * u128::from(total);
            (
                (scaled / u128::from(sum)) as u64,
                (scaled % u128::from(sum)) as u64,
            )
        })
        .collect();
    let mut counts: Vec<u64> = exact.iter().map(|e| e.0).collect();
    let left = total - counts.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    by_remainder.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for &i in by_remainder.iter().take(left as usize) {
        counts[i] += 1;
    }
    counts
}

/// A backend's walk through its own permutation of the table slots.
struct Cursor {
    /// Index into the caller's `backends`, which is what the table stores.
    index: u16,
    /// Slots this backend gets.
    quota: u64,
    credit: u64,
    /// Next slot of the permutation `offset, offset + skip, offset + 2*skip, ... (mod size)`.
    /// Because `size` is prime and `0 < skip < size`, the walk visits every slot exactly once.
    position: usize,
    skip: usize,
}

impl Cursor {
    fn new(index: usize, backend: &MaglevBackend, quota: u64, size: usize) -> Self {
        let size_u64 = size as u64;
        let offset = hash(backend.name, OFFSET_SEED) % size_u64;
        let skip = hash(backend.name, SKIP_SEED) % (size_u64 - 1) + 1;
        Cursor {
            index: u16::try_from(index).expect("backend count checked against u16"),
            quota,
            credit: 0,
            position: offset as usize,
            skip: skip as usize,
        }
    }

    fn claim_next_free_slot(&mut self, table: &mut [Option<u16>]) {
        loop {
            let slot = self.position;
            // `skip < size`, so one subtraction wraps it (a division per probe was most of a
            // build's time).
            self.position += self.skip;
            if self.position >= table.len() {
                self.position -= table.len();
            }
            if table[slot].is_none() {
                table[slot] = Some(self.index);
                return;
            }
        }
    }
}

// Two fixed seeds give the two independent hashes Maglev needs. They are constants (not
// `RandomState`) so that tables are identical across runs, restarts and machines.
const OFFSET_SEED: u64 = 0x6765_6f73_7465_6572;
const SKIP_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Seeded FNV-1a followed by the MurmurHash3 finalizer. FNV-1a alone mixes its last bytes
/// poorly, and names like "10.1.0.11:9080" and "10.1.0.12:9080" differ only near the end.
fn hash(name: &str, seed: u64) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET_BASIS ^ seed;
    for byte in name.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: usize = 16381;

    fn names(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("10.1.{}.{}:9080", i / 200, i % 200 + 1))
            .collect()
    }

    fn backends<'a>(names: &'a [String], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        names
            .iter()
            .zip(weights)
            .map(|(name, &weight)| MaglevBackend {
                name,
                weight,
                group: 0,
            })
            .collect()
    }

    /// The table translated from indices to names, so tables built from different inputs can
    /// be compared slot by slot.
    fn named_table<'a>(backends: &[MaglevBackend<'a>], size: usize) -> Vec<&'a str> {
        build_table(backends, size)
            .into_iter()
            .map(|index| backends[usize::from(index)].name)
            .collect()
    }

    fn slot_counts<'a>(table: &[&'a str]) -> HashMap<&'a str, usize> {
        let mut counts = HashMap::new();
        for name in table {
            *counts.entry(*name).or_default() += 1;
        }
        counts
    }

    fn changed_slots(before: &[&str], after: &[&str]) -> usize {
        before.iter().zip(after).filter(|(a, b)| a != b).count()
    }

    #[test]
    fn fills_every_slot_with_a_valid_index() {
        for count in [1, 2, 3, 10, 64, 1024] {
            let names = names(count);
            let table = build_table(&backends(&names, &vec![1; count]), M);
            assert_eq!(table.len(), M);
            assert!(table.iter().all(|&index| usize::from(index) < count));
        }
    }

    #[test]
    fn is_deterministic() {
        let names = names(10);
        let input = backends(&names, &[1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
        assert_eq!(build_table(&input, M), build_table(&input, M));
    }

    #[test]
    fn does_not_depend_on_input_order() {
        let names = names(10);
        let input = backends(&names, &[1, 2, 3, 4, 5, 1, 2, 3, 4, 5]);
        let mut reordered = input.clone();
        reordered.reverse();
        reordered.swap(2, 7);

        let before = named_table(&input, M);
        let after = named_table(&reordered, M);
        assert_eq!(slot_counts(&before), slot_counts(&after));
        assert_eq!(before, after);
    }

    #[test]
    fn respects_weights() {
        let cases: &[(&str, Vec<u32>)] = &[
            ("three equal", vec![1, 1, 1]),
            ("one to four", vec![1, 2, 3, 4]),
            ("ninety ten", vec![9, 1]),
            ("ninety ten over four", vec![45, 45, 5, 5]),
            ("sixty-four equal", vec![1; 64]),
            ("twenty eighty", vec![20, 80]),
            ("large weights", vec![1_000_000, 500_000, 250_000]),
        ];
        for (case, weights) in cases {
            let names = names(weights.len());
            let input = backends(&names, weights);
            let counts = slot_counts(&named_table(&input, M));
            let total_weight: u32 = weights.iter().sum();
            for backend in &input {
                let share = counts[backend.name] as f64 / M as f64;
                let ideal = f64::from(backend.weight) / f64::from(total_weight);
                assert!(
                    (share - ideal).abs() <= 0.01,
                    "{case}: {} has share {share:.4}, ideal {ideal:.4}",
                    backend.name
                );
            }
        }
    }

    /// Each backend gets its exact share of the table rounded down or up, so a share of a slot
    /// or more never rounds to nothing. The policy vector: 71 of 100 endpoints healthy in the
    /// local priority (99.4% of the load) and 100 in the next (0.6%, 98 slots of 16381).
    #[test]
    fn every_backend_is_within_one_slot_of_its_share() {
        let mut spill = vec![14_000u32; 71];
        spill.extend([60; 100]);
        let cases: &[(&str, Vec<u32>)] = &[
            ("priority spill", spill),
            ("one in a million", vec![1_000_000, 1]),
            ("one to four", vec![1, 2, 3, 4]),
            ("a thousand uneven", (1..=1000).collect()),
        ];
        for (case, weights) in cases {
            let names = names(weights.len());
            let input = backends(&names, weights);
            let counts = slot_counts(&named_table(&input, M));
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            for backend in &input {
                let exact = f64::from(backend.weight) / total * M as f64;
                let got = counts.get(backend.name).copied().unwrap_or(0) as f64;
                assert!(
                    got == exact.floor() || got == exact.ceil(),
                    "{case}: {} has {got} slots, exactly {exact:.2}",
                    backend.name
                );
            }
        }
        let names = names(171);
        let mut weights = vec![14_000u32; 71];
        weights.extend([60; 100]);
        let counts = slot_counts(&named_table(&backends(&names, &weights), M));
        let lower: usize = names[71..]
            .iter()
            .map(|n| counts.get(n.as_str()).copied().unwrap_or(0))
            .sum();
        // 98.3 slots exactly; each of its 100 endpoints 0.98 of one, so each gets one.
        assert!(
            (98..=100).contains(&lower),
            "the lower priority got {lower} slots"
        );
    }

    /// A group's share (a priority level) survives even when each member's is a fraction of a
    /// slot: 100 lower-level endpoints owed 17.7 slots between them get 17 or 18, not 0.
    #[test]
    fn every_group_is_within_one_slot_of_its_share() {
        let names = names(171);
        let input: Vec<MaglevBackend> = names
            .iter()
            .enumerate()
            .map(|(i, name)| MaglevBackend {
                name,
                weight: if i < 71 { 13_000 } else { 10 },
                group: u32::from(i >= 71),
            })
            .collect();
        let counts = slot_counts(&named_table(&input, M));
        let lower: usize = names[71..]
            .iter()
            .map(|n| counts.get(n.as_str()).copied().unwrap_or(0))
            .sum();
        assert!((17..=18).contains(&lower), "the lower level got {lower}");
        // Without groups each member's 0.18 of a slot rounds away.
        let ungrouped: Vec<MaglevBackend> = input
            .iter()
            .map(|b| MaglevBackend { group: 0, ..*b })
            .collect();
        let counts = slot_counts(&named_table(&ungrouped, M));
        let lower: usize = names[71..]
            .iter()
            .map(|n| counts.get(n.as_str()).copied().unwrap_or(0))
            .sum();
        assert_eq!(lower, 0);
    }

    #[test]
    fn table_size_grows_with_the_backend_count_only() {
        assert_eq!(table_size(0), 1_021);
        assert_eq!(table_size(1), 1_021);
        assert_eq!(table_size(10), 1_021);
        assert_eq!(table_size(11), 2_039);
        assert_eq!(table_size(100), 16_381);
        assert_eq!(table_size(1_024), 131_071);
        for size in TABLE_SIZES {
            assert!(is_prime(size), "{size}");
        }
    }

    /// A share of a slot or more never rounds to nothing at the smallest size, also behind a
    /// group that holds nearly everything (a lower priority level of 10 endpoints owed 0.6%).
    #[test]
    fn every_share_of_a_slot_or_more_gets_one_at_the_chosen_size() {
        let names = names(12);
        let cases: [&[u32]; 3] = [&[998, 2], &[5000, 5000, 11], &[70, 20, 7, 2, 1]];
        for weights in cases {
            let list = backends(&names[..weights.len()], weights);
            let size = table_size(list.len());
            let counts = slot_counts(&named_table(&list, size));
            for b in &list {
                assert!(
                    counts.get(b.name).copied().unwrap_or(0) >= 1,
                    "{weights:?}: {}",
                    b.name
                );
            }
        }
        let mut grouped = backends(&names[..12], &[1; 12]);
        for (i, b) in grouped.iter_mut().enumerate() {
            (b.weight, b.group) = if i < 2 { (497, 0) } else { (6, 1) };
        }
        let size = table_size(grouped.len());
        let counts = slot_counts(&named_table(&grouped, size));
        let lower: usize = grouped[2..]
            .iter()
            .map(|b| counts.get(b.name).copied().unwrap_or(0))
            .sum();
        // 60 / 1,054 of 2,039 slots: 116.
        assert!((115..=117).contains(&lower), "{lower}");
    }

    /// Maglev's property at the sizes actually chosen: one backend of N leaving or joining
    /// (within one size step) moves about 1/N of the slots.
    #[test]
    fn one_backend_moves_about_its_share_at_the_chosen_size() {
        for n in [4usize, 10, 20, 40] {
            let names = names(n);
            let all = backends(&names, &vec![1; n]);
            let size = table_size(n);
            let mut rest = all.clone();
            rest.pop();
            assert_eq!(table_size(n - 1), size, "{n}: same size step");
            let changed = changed_slots(&named_table(&all, size), &named_table(&rest, size));
            // 1/N moves by necessity; Maglev adds a little churn on top.
            let bound = size * 3 / (2 * n) + size / 100;
            assert!(
                changed <= bound,
                "{n} backends: {changed} of {size} slots moved"
            );
            assert!(
                changed >= size / n - 1,
                "{n} backends: only {changed} moved"
            );
        }
    }

    #[test]
    fn removing_a_backend_moves_about_its_share() {
        let names = names(10);
        let all = backends(&names, &[1; 10]);
        let before = named_table(&all, M);
        for removed in 0..all.len() {
            let mut rest = all.clone();
            rest.remove(removed);
            let changed = changed_slots(&before, &named_table(&rest, M));
            assert!(
                changed <= M * 15 / 100,
                "removing {removed}: {changed} slots changed"
            );
        }
    }

    #[test]
    fn adding_a_backend_moves_about_its_share() {
        let names = names(11);
        let ten = backends(&names[..10], &[1; 10]);
        let eleven = backends(&names, &[1; 11]);
        let changed = changed_slots(&named_table(&ten, M), &named_table(&eleven, M));
        assert!(changed <= M * 15 / 100, "{changed} slots changed");
    }

    #[test]
    fn doubling_one_weight_moves_a_bounded_share() {
        let names = names(10);
        let before = backends(&names, &[1; 10]);
        let mut after = before.clone();
        after[3].weight = 2;
        let changed = changed_slots(&named_table(&before, M), &named_table(&after, M));
        assert!(changed < M / 4, "{changed} slots changed");
    }

    #[test]
    fn zero_weight_backend_gets_no_slot() {
        let names = names(3);
        let table = build_table(&backends(&names, &[1, 0, 1]), M);
        assert!(!table.contains(&1));
    }

    #[test]
    fn single_backend_gets_every_slot() {
        let names = names(1);
        assert_eq!(build_table(&backends(&names, &[7]), M), vec![0; M]);
    }

    #[test]
    fn nothing_to_serve_gives_an_empty_table() {
        assert!(build_table(&[], M).is_empty());
        let names = names(2);
        assert!(build_table(&backends(&names, &[0, 0]), M).is_empty());
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn rejects_a_size_that_is_not_prime() {
        let names = names(2);
        build_table(&backends(&names, &[1, 1]), 16384);
    }

    #[test]
    fn small_primes() {
        assert_eq!(
            (0..30).filter(|&n| is_prime(n)).collect::<Vec<_>>(),
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
        );
        assert!(is_prime(M));
        assert!(is_prime(65537));
    }
}
