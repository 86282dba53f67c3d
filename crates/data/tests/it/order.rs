use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_data::{epoch_order, split_folds, split_train_valid, Example, Target};

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

/// K folds partition the rows: each row is held out by exactly one fold, each fold's training
/// set is the rest, and every label's count (and every fold's size) differs between folds by at
/// most one.
#[test]
fn folds_partition_the_rows_with_balanced_labels() {
    // 103 rows of three labels, 61 / 29 / 13: no count divides by the 5 folds.
    let labels: Vec<u32> = (0..103)
        .map(|i| match i % 8 {
            0..=4 => 0,
            5 | 6 => 1,
            _ => 2,
        })
        .collect();
    let counts: Vec<usize> = (0..3)
        .map(|l| labels.iter().filter(|&&x| x == l).count())
        .collect();
    assert_eq!(counts, [65, 26, 12]);
    let examples = labelled(&labels);
    let mut held_out = vec![0usize; labels.len()];
    let mut sizes = Vec::new();
    let mut per_label: Vec<Vec<usize>> = vec![Vec::new(); 3];
    for fold in 0..5 {
        let (train, valid) = split_folds(&examples, 5, fold, 9);
        assert_eq!(
            (train.clone(), valid.clone()),
            split_folds(&examples, 5, fold, 9)
        );
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        assert!(valid.windows(2).all(|w| w[0] < w[1]));
        let mut all = [train, valid.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>(), "fold {fold}");
        valid.iter().for_each(|&i| held_out[i] += 1);
        sizes.push(valid.len());
        for (label, column) in per_label.iter_mut().enumerate() {
            column.push(valid.iter().filter(|&&i| labels[i] == label as u32).count());
        }
    }
    assert!(held_out.iter().all(|&n| n == 1), "{held_out:?}");
    let spread = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap();
    assert!(spread(&sizes) <= 1, "fold sizes {sizes:?}");
    for (label, column) in per_label.iter().enumerate() {
        assert!(spread(column) <= 1, "label {label} per fold: {column:?}");
        assert_eq!(column.iter().sum::<usize>(), counts[label]);
    }
    // Another seed deals other rows to the folds.
    assert_ne!(
        split_folds(&examples, 5, 0, 9).1,
        split_folds(&examples, 5, 0, 10).1
    );
}

#[test]
#[should_panic(expected = "fold 3 of 3")]
fn a_fold_outside_the_folds_is_refused() {
    split_folds(&labelled(&[0, 1, 0, 1]), 3, 3, 0);
}
