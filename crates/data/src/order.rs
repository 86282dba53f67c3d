//! Which examples go where: the deterministic batch order of each epoch and the stratified
//! train/validation split. Both are pure functions of their arguments, so a resumed run
//! recomputes exactly the order it was interrupted in.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::read::{Example, Target};

/// The RNG of one epoch; the odd multiplier (2^64 / golden ratio) spreads consecutive epochs
/// over unrelated seeds.
fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The batches of one epoch, as lists of example indices in `0..n`; every index appears exactly
/// once and the last batch may be smaller than `batch_size`.
///
/// - `shuffle == false`: sequential order, `[0..b), [b..2b), ...` (evaluation).
/// - `shuffle == true, bucket_window == 0`: a random permutation cut into batches.
/// - `shuffle == true, bucket_window > 0`: a random permutation cut into windows of
///   `bucket_window` examples, each window sorted by `lengths`, cut into batches, and the batch
///   order shuffled; batches then hold similar lengths and need less padding.
///
/// `lengths[i]` is the token length of example `i` (missing entries count as 0). A
/// `batch_size` of 0 is treated as 1.
pub fn epoch_order(
    n: usize,
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    bucket_window: usize,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..n).collect();
    if !shuffle {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut rng = epoch_rng(seed, epoch);
    order.shuffle(&mut rng);
    if bucket_window == 0 {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let length = |i: usize| lengths.get(i).copied().unwrap_or(0);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(n.div_ceil(batch_size));
    for window in order.chunks_mut(bucket_window) {
        // Stable sort: ties keep their shuffled order, so the result stays seed-dependent.
        window.sort_by_key(|&i| length(i));
        batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Splits example indices into `(train, valid)`, both sorted ascending and disjoint.
///
/// Stratified: the examples of each label (each label combination for multi-label) are shuffled
/// by an RNG seeded from `seed` and the label alone, and `round(fraction * count)` of them go to
/// validation, at least 1 and at most `count - 1` when `count >= 2`, none when `count == 1`.
/// The choice within one label therefore does not depend on the rows of other labels.
pub fn split_train_valid(
    examples: &[Example],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut train = Vec::with_capacity(examples.len());
    let mut valid = Vec::new();
    for members in strata(examples, seed) {
        let count = members.len();
        let take = if count >= 2 {
            ((fraction * count as f64).round() as usize).clamp(1, count - 1)
        } else {
            0
        };
        valid.extend_from_slice(&members[..take]);
        train.extend_from_slice(&members[take..]);
    }
    train.sort_unstable();
    valid.sort_unstable();
    (train, valid)
}

/// Splits example indices into `(train, valid)` for fold `fold` of a stratified `folds`-fold
/// cross-validation, both sorted ascending and disjoint; over `fold = 0..folds` every example is
/// in exactly one validation set.
///
/// The examples of each label (label combination for multi-label) are shuffled as in
/// [`split_train_valid`] and dealt round-robin to the folds, the deal going on from one label to
/// the next (labels in a fixed order). So each label's count in a fold differs from its count in
/// any other fold by at most one, and so do the folds' sizes.
///
/// # Panics
/// When `folds < 2` or `fold >= folds` (the config's validation rejects both first).
pub fn split_folds(
    examples: &[Example],
    folds: usize,
    fold: usize,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    assert!(
        folds >= 2 && fold < folds,
        "fold {fold} of {folds}: need folds >= 2 and fold < folds"
    );
    let mut train = Vec::with_capacity(examples.len());
    let mut valid = Vec::with_capacity(examples.len() / folds + 1);
    let mut dealt = 0;
    for members in strata(examples, seed) {
        for (j, &index) in members.iter().enumerate() {
            if (dealt + j) % folds == fold {
                valid.push(index);
            } else {
                train.push(index);
            }
        }
        dealt += members.len();
    }
    train.sort_unstable();
    valid.sort_unstable();
    (train, valid)
}

/// The example indices of each stratum (label or label combination), strata in key order and
/// each shuffled by an RNG seeded from `seed` and the stratum alone.
fn strata(examples: &[Example], seed: u64) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, example) in examples.iter().enumerate() {
        groups
            .entry(stratum(&example.target))
            .or_default()
            .push(index);
    }
    groups
        .into_iter()
        .map(|(key, mut members)| {
            members.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ key));
            members
        })
        .collect()
}

/// A stable key for the stratum of a target (FNV-1a, so it never changes between builds).
fn stratum(target: &Target) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    match target {
        Target::Single(id) => {
            feed(b"s");
            feed(&id.to_le_bytes());
        }
        Target::Multi(hot) => {
            feed(b"m");
            for value in hot {
                feed(&[u8::from(*value > 0.5)]);
            }
        }
        Target::None => feed(b"n"),
    }
    hash
}
