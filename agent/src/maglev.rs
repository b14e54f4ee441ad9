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
mod tests;
