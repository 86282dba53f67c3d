use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_data::{epoch_order, split_train_valid, Example, Target};

use crate::batch::example;

fn assert_covers_each_index_once(batches: &[Vec<usize>], n: usize) {
    let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
}

fn random_lengths(n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..n).map(|_| rng.gen_range(3..=128)).collect()
}

#[test]
fn epoch_order_is_deterministic_for_the_same_seed_and_epoch() {
    let lengths = random_lengths(103);
    for window in [0, 32] {
        let a = epoch_order(103, &lengths, 8, 42, 3, true, window);
        let b = epoch_order(103, &lengths, 8, 42, 3, true, window);
        assert_eq!(a, b);
    }
}

#[test]
fn epoch_order_differs_across_epochs_and_seeds() {
    let lengths = random_lengths(103);
    let e0 = epoch_order(103, &lengths, 8, 42, 0, true, 0);
    assert_ne!(e0, epoch_order(103, &lengths, 8, 42, 1, true, 0));
    assert_ne!(e0, epoch_order(103, &lengths, 8, 43, 0, true, 0));
}

#[test]
fn epoch_order_covers_every_index_once_and_keeps_the_last_partial_batch() {
    let lengths = random_lengths(103);
    for (shuffle, window) in [(false, 0), (true, 0), (true, 16), (true, 1000)] {
        let batches = epoch_order(103, &lengths, 8, 1, 0, shuffle, window);
        assert_covers_each_index_once(&batches, 103);
        assert_eq!(batches.len(), 13, "shuffle {shuffle} window {window}");
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 8));
    }
}

#[test]
fn epoch_order_without_shuffle_is_sequential() {
    let batches = epoch_order(5, &[], 2, 9, 4, false, 16);
    assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn epoch_order_of_nothing_is_no_batches() {
    assert!(epoch_order(0, &[], 4, 0, 0, true, 8).is_empty());
}

#[test]
fn length_bucketing_reduces_padding() {
    let n = 2000;
    let lengths = random_lengths(n);
    let padding = |batches: Vec<Vec<usize>>| -> usize {
        batches
            .iter()
            .map(|b| {
                let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                b.iter().map(|&i| longest - lengths[i]).sum::<usize>()
            })
            .sum()
    };
    let plain = padding(epoch_order(n, &lengths, 16, 5, 0, true, 0));
    let bucketed = padding(epoch_order(n, &lengths, 16, 5, 0, true, 256));
    assert!(bucketed * 4 < plain, "bucketed {bucketed} vs plain {plain}");
}

fn labelled(labels: &[u32]) -> Vec<Example> {
    labels
        .iter()
        .map(|&l| example("x", Target::Single(l)))
        .collect()
}

#[test]
fn split_is_deterministic_disjoint_and_complete() {
    let labels: Vec<u32> = (0..200).map(|i| [0, 0, 0, 1, 2][i % 5]).collect();
    let examples = labelled(&labels);
    let (train, valid) = split_train_valid(&examples, 0.2, 11);
    assert_eq!(
        (train.clone(), valid.clone()),
        split_train_valid(&examples, 0.2, 11)
    );
    assert_ne!(valid, split_train_valid(&examples, 0.2, 12).1);
    assert!(valid.iter().all(|i| !train.contains(i)));
    assert_eq!(train.len() + valid.len(), 200);
    let count = |label: u32| valid.iter().filter(|&&i| labels[i] == label).count();
    assert_eq!((count(0), count(1), count(2)), (24, 8, 8));
}

#[test]
fn split_of_one_label_ignores_rows_of_other_labels() {
    let a_only = labelled(&[0; 30]);
    // The same 30 label-0 rows, interleaved with label-1 rows.
    let mixed_labels: Vec<u32> = (0..60).map(|i| (i % 2) as u32).collect();
    let mixed = labelled(&mixed_labels);
    let (_, valid_a) = split_train_valid(&a_only, 0.3, 5);
    let (_, valid_mixed) = split_train_valid(&mixed, 0.3, 5);
    let a_in_mixed: Vec<usize> = valid_mixed
        .iter()
        .filter(|&&i| i % 2 == 0)
        .map(|&i| i / 2)
        .collect();
    assert_eq!(valid_a, a_in_mixed);
}

#[test]
fn split_keeps_singletons_in_train_and_takes_one_of_two() {
    let examples = labelled(&[0, 1, 1]);
    let (train, valid) = split_train_valid(&examples, 0.1, 0);
    assert!(train.contains(&0));
    assert_eq!(valid.len(), 1);
    assert_eq!(train.len(), 2);
}
