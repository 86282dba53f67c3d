//! Tokenized datasets and dynamically padded batches: host-side [`Batch`] vectors, moved to a
//! device as [`TensorBatch`] only when the trainer asks.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::read::{Example, Target};
use crate::tokenize::{Encoding, TextTokenizer};

/// Targets of a dataset or batch, one kind for all examples.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Label ids, `(n,)`.
    Single(Vec<u32>),
    /// Multi-hot rows flattened row-major, `(n * num_labels,)`.
    Multi { values: Vec<f32>, num_labels: usize },
    /// Unlabelled data (prediction).
    None,
}

impl Targets {
    /// The targets of `examples`, which must all be of one kind (all single, all multi with the
    /// same length, or all unlabelled); no tokenizing.
    pub fn of(examples: &[Example]) -> Result<Self> {
        collect_targets(examples)
    }

    /// "single-label", "multi-label" or "unlabelled".
    fn kind(&self) -> &'static str {
        match self {
            Self::Single(_) => "single-label",
            Self::Multi { .. } => "multi-label",
            Self::None => "unlabelled",
        }
    }
}

/// One padded batch in host memory. All token vectors are `(batch_size * seq_len,)`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Token ids; padding positions hold the tokenizer's pad id.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Segment ids; 0 on padding.
    pub token_type_ids: Vec<u32>,
    /// Targets of the batch rows, in row order.
    pub targets: Targets,
    /// Number of rows.
    pub batch_size: usize,
    /// Longest encoding in the batch: every row is padded to it.
    pub seq_len: usize,
    /// Dataset index of each row.
    pub indices: Vec<usize>,
}

/// A batch on a device.
#[derive(Debug, Clone)]
pub struct TensorBatch {
    /// `(batch, seq)` u32.
    pub input_ids: Tensor,
    /// `(batch, seq)` u32, 1 = real token.
    pub attention_mask: Tensor,
    /// `(batch, seq)` u32.
    pub token_type_ids: Tensor,
    /// `(batch,)` u32 label ids, or `(batch, num_labels)` f32 multi-hot; `None` when unlabelled.
    pub labels: Option<Tensor>,
    /// A teacher's class probabilities `(batch, num_labels)` f32 to distill; `None` (as
    /// [`Batch::to_tensors`] leaves it) when not distilling.
    pub teacher: Option<Tensor>,
}

impl Batch {
    /// Copies the batch to `device`.
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<TensorBatch> {
        let shape = (self.batch_size, self.seq_len);
        let labels = match &self.targets {
            Targets::Single(ids) => Some(Tensor::from_vec(ids.clone(), self.batch_size, device)?),
            Targets::Multi { values, num_labels } => Some(Tensor::from_vec(
                values.clone(),
                (self.batch_size, *num_labels),
                device,
            )?),
            Targets::None => None,
        };
        Ok(TensorBatch {
            input_ids: Tensor::from_vec(self.input_ids.clone(), shape, device)?,
            attention_mask: Tensor::from_vec(self.attention_mask.clone(), shape, device)?,
            token_type_ids: Tensor::from_vec(self.token_type_ids.clone(), shape, device)?,
            labels,
            teacher: None,
        })
    }
}

/// Tokenized examples and their targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    encodings: Vec<Encoding>,
    targets: Targets,
    pad_id: u32,
    max_len: usize,
}

impl Dataset {
    /// Tokenizes `examples` (each text with its pair, if it has one); their targets must all be
    /// of one kind (all single, all multi with the same length, or all unlabelled).
    pub fn new(examples: &[Example], tokenizer: &TextTokenizer) -> Result<Self> {
        let inputs: Vec<(&str, Option<&str>)> = examples.iter().map(Example::input).collect();
        let encodings = tokenizer.encode_pairs(&inputs)?;
        let targets = Targets::of(examples)?;
        Ok(Self {
            encodings,
            targets,
            pad_id: tokenizer.pad_id(),
            max_len: tokenizer.max_len(),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.encodings.len()
    }

    /// True when the dataset holds no examples.
    pub fn is_empty(&self) -> bool {
        self.encodings.is_empty()
    }

    /// Truncated token length of every example, `(n,)`: the input of [`crate::epoch_order`].
    pub fn lengths(&self) -> Vec<usize> {
        self.encodings.iter().map(|e| e.ids.len()).collect()
    }

    /// The encodings, in example order.
    pub fn encodings(&self) -> &[Encoding] {
        &self.encodings
    }

    /// The targets, in example order.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Maximum tokens per example the dataset was tokenized with.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The examples at `indices`, in that order (e.g. the two sides of a train/valid split).
    ///
    /// # Panics
    /// If an index is `>= self.len()`: indices come from [`crate::split_train_valid`] or
    /// [`crate::epoch_order`], never from user input.
    pub fn subset(&self, indices: &[usize]) -> Self {
        Self {
            encodings: indices.iter().map(|&i| self.encodings[i].clone()).collect(),
            targets: select_targets(&self.targets, indices),
            pad_id: self.pad_id,
            max_len: self.max_len,
        }
    }

    /// This dataset's examples followed by `other`'s (the variants of `data.augment` after the
    /// rows they vary, say); an error when their targets are of different kinds.
    ///
    /// # Panics
    /// If the two were tokenized otherwise (another padding id or `max_len`): they come from one
    /// tokenizer, never from user input.
    pub fn concat(&self, other: &Self) -> Result<Self> {
        assert_eq!(
            (self.pad_id, self.max_len),
            (other.pad_id, other.max_len),
            "datasets of different tokenizers concatenated"
        );
        let mismatch = |expected: &'static str, found: &'static str| Error::MixedTargets {
            index: self.len(),
            expected,
            found,
        };
        let targets = match (&self.targets, &other.targets) {
            (Targets::Single(a), Targets::Single(b)) => Targets::Single([&a[..], b].concat()),
            (
                Targets::Multi {
                    values: a,
                    num_labels,
                },
                Targets::Multi {
                    values: b,
                    num_labels: n,
                },
            ) if num_labels == n => Targets::Multi {
                values: [&a[..], b].concat(),
                num_labels: *num_labels,
            },
            (Targets::None, Targets::None) => Targets::None,
            (a, b) => return Err(mismatch(a.kind(), b.kind())),
        };
        Ok(Self {
            encodings: [&self.encodings[..], &other.encodings].concat(),
            targets,
            pad_id: self.pad_id,
            max_len: self.max_len,
        })
    }

    /// Pads the examples at `indices` to their longest length.
    ///
    /// # Panics
    /// If an index is `>= self.len()` (see [`Dataset::subset`]).
    pub fn batch(&self, indices: &[usize]) -> Batch {
        let batch_size = indices.len();
        let seq_len = indices
            .iter()
            .map(|&i| self.encodings[i].ids.len())
            .max()
            .unwrap_or(0);
        let mut input_ids = Vec::with_capacity(batch_size * seq_len);
        let mut attention_mask = Vec::with_capacity(batch_size * seq_len);
        let mut token_type_ids = Vec::with_capacity(batch_size * seq_len);
        for &i in indices {
            let encoding = &self.encodings[i];
            let pad = seq_len - encoding.ids.len();
            input_ids.extend_from_slice(&encoding.ids);
            input_ids.extend(std::iter::repeat_n(self.pad_id, pad));
            attention_mask.extend(std::iter::repeat_n(1, encoding.ids.len()));
            attention_mask.extend(std::iter::repeat_n(0, pad));
            token_type_ids.extend_from_slice(&encoding.type_ids);
            token_type_ids.extend(std::iter::repeat_n(0, pad));
        }
        Batch {
            input_ids,
            attention_mask,
            token_type_ids,
            targets: select_targets(&self.targets, indices),
            batch_size,
            seq_len,
            indices: indices.to_vec(),
        }
    }
}

fn select_targets(targets: &Targets, indices: &[usize]) -> Targets {
    match targets {
        Targets::Single(ids) => Targets::Single(indices.iter().map(|&i| ids[i]).collect()),
        Targets::Multi { values, num_labels } => Targets::Multi {
            values: indices
                .iter()
                .flat_map(|&i| &values[i * num_labels..(i + 1) * num_labels])
                .copied()
                .collect(),
            num_labels: *num_labels,
        },
        Targets::None => Targets::None,
    }
}

fn kind(target: &Target) -> &'static str {
    match target {
        Target::Single(_) => "single-label",
        Target::Multi(_) => "multi-label",
        Target::None => "unlabelled",
    }
}

fn collect_targets(examples: &[Example]) -> Result<Targets> {
    let Some(first) = examples.first() else {
        return Ok(Targets::None);
    };
    let mismatch = |index: usize, found: &Target| Error::MixedTargets {
        index,
        expected: kind(&first.target),
        found: kind(found),
    };
    match &first.target {
        Target::Single(_) => examples
            .iter()
            .enumerate()
            .map(|(index, e)| match e.target {
                Target::Single(id) => Ok(id),
                _ => Err(mismatch(index, &e.target)),
            })
            .collect::<Result<_>>()
            .map(Targets::Single),
        Target::Multi(first_hot) => {
            let num_labels = first_hot.len();
            let mut values = Vec::with_capacity(examples.len() * num_labels);
            for (index, e) in examples.iter().enumerate() {
                match &e.target {
                    Target::Multi(hot) if hot.len() == num_labels => values.extend(hot),
                    other => return Err(mismatch(index, other)),
                }
            }
            Ok(Targets::Multi { values, num_labels })
        }
        Target::None => match examples.iter().position(|e| e.target != Target::None) {
            Some(index) => Err(mismatch(index, &examples[index].target)),
            None => Ok(Targets::None),
        },
    }
}
