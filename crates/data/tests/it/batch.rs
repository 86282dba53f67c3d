use candle_core::{DType, Device};
use tempfile::TempDir;
use wick_data::{Dataset, Error, Example, Target, Targets};

use crate::common::{id, tiny_tokenizer, TestResult, CLS, PAD, SEP};

pub fn example(text: &str, target: Target) -> Example {
    Example {
        text: text.to_owned(),
        pair: None,
        target,
        line: 1,
        fields: serde_json::Map::new(),
    }
}

#[test]
fn batch_pads_to_the_longest_row_with_pad_id_and_zero_mask() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let examples = [
        example("bug", Target::Single(0)),
        example("add a button", Target::Single(1)),
        example("how", Target::Single(2)),
    ];
    let dataset = Dataset::new(&examples, &tokenizer)?;
    assert_eq!(dataset.lengths(), [3, 5, 3]);
    let batch = dataset.batch(&[2, 1]);
    assert_eq!((batch.batch_size, batch.seq_len), (2, 5));
    assert_eq!(
        batch.input_ids,
        [
            CLS,
            id("how"),
            SEP,
            PAD,
            PAD,
            CLS,
            id("add"),
            id("a"),
            id("button"),
            SEP
        ]
    );
    assert_eq!(batch.attention_mask, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
    assert_eq!(batch.token_type_ids, [0; 10]);
    assert_eq!(batch.targets, Targets::Single(vec![2, 1]));
    assert_eq!(batch.indices, [2, 1]);
    Ok(())
}

#[test]
fn to_tensors_gives_batch_by_seq_ids_and_label_vector() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let examples = [
        example("bug", Target::Single(0)),
        example("add a button", Target::Single(1)),
    ];
    let tensors = Dataset::new(&examples, &tokenizer)?
        .batch(&[0, 1])
        .to_tensors(&Device::Cpu)?;
    assert_eq!(tensors.input_ids.dims(), [2, 5]);
    assert_eq!(tensors.attention_mask.dims(), [2, 5]);
    assert_eq!(tensors.token_type_ids.dims(), [2, 5]);
    assert_eq!(tensors.input_ids.dtype(), DType::U32);
    let mask: Vec<Vec<u32>> = tensors.attention_mask.to_vec2()?;
    assert_eq!(mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]);
    let labels = tensors.labels.ok_or("labelled batch has labels")?;
    assert_eq!((labels.dims(), labels.dtype()), (&[2][..], DType::U32));
    assert_eq!(labels.to_vec1::<u32>()?, [0, 1]);
    Ok(())
}

#[test]
fn multi_label_batch_has_batch_by_labels_f32_targets() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let examples = [
        example("bug", Target::Multi(vec![1.0, 0.0, 1.0])),
        example("how", Target::Multi(vec![0.0, 1.0, 0.0])),
        example("fix", Target::Multi(vec![0.0, 0.0, 0.0])),
    ];
    let dataset = Dataset::new(&examples, &tokenizer)?;
    let batch = dataset.batch(&[1, 0]);
    assert_eq!(
        batch.targets,
        Targets::Multi {
            values: vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
            num_labels: 3
        }
    );
    let labels = batch
        .to_tensors(&Device::Cpu)?
        .labels
        .ok_or("labelled batch has labels")?;
    assert_eq!(labels.dtype(), DType::F32);
    assert_eq!(labels.to_vec2::<f32>()?, [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]);
    Ok(())
}

#[test]
fn unlabelled_batch_has_no_label_tensor() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let dataset = Dataset::new(&[example("bug", Target::None)], &tokenizer)?;
    let tensors = dataset.batch(&[0]).to_tensors(&Device::Cpu)?;
    assert!(tensors.labels.is_none());
    Ok(())
}

#[test]
fn mixed_target_kinds_are_rejected() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let examples = [
        example("bug", Target::Single(0)),
        example("how", Target::None),
    ];
    let err = Dataset::new(&examples, &tokenizer)
        .err()
        .ok_or("expected an error")?;
    assert!(
        matches!(err, Error::MixedTargets { index: 1, .. }),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn subset_keeps_encodings_and_targets_in_the_given_order() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let examples = [
        example("bug", Target::Single(0)),
        example("add a button", Target::Single(1)),
        example("how", Target::Single(2)),
    ];
    let dataset = Dataset::new(&examples, &tokenizer)?;
    let subset = dataset.subset(&[2, 0]);
    assert_eq!(subset.len(), 2);
    assert_eq!(subset.targets(), &Targets::Single(vec![2, 0]));
    assert_eq!(subset.encodings()[0], dataset.encodings()[2]);
    Ok(())
}

#[test]
fn concat_appends_encodings_and_targets_and_refuses_other_kinds() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let first = Dataset::new(
        &[
            example("bug", Target::Single(0)),
            example("how", Target::Single(2)),
        ],
        &tokenizer,
    )?;
    let second = Dataset::new(&[example("add a button", Target::Single(1))], &tokenizer)?;
    let both = first.concat(&second)?;
    assert_eq!(both.targets(), &Targets::Single(vec![0, 2, 1]));
    assert_eq!(both.encodings()[..2], first.encodings()[..]);
    assert_eq!(both.encodings()[2], second.encodings()[0]);

    let hot = |v: [f32; 3]| Target::Multi(v.to_vec());
    let multi = |rows: &[[f32; 3]]| {
        let examples: Vec<Example> = rows.iter().map(|&r| example("bug", hot(r))).collect();
        Dataset::new(&examples, &tokenizer)
    };
    let joined = multi(&[[1.0, 0.0, 1.0]])?.concat(&multi(&[[0.0, 1.0, 0.0]])?)?;
    assert_eq!(
        joined.targets(),
        &Targets::Multi {
            values: vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
            num_labels: 3
        }
    );
    let err = first
        .concat(&multi(&[[1.0, 0.0, 0.0]])?)
        .err()
        .ok_or("expected an error")?;
    assert!(
        matches!(
            err,
            Error::MixedTargets {
                index: 2,
                expected: "single-label",
                found: "multi-label"
            }
        ),
        "{err:?}"
    );
    Ok(())
}
