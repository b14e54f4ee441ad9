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
