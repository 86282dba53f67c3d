//! `wick-data`: developer text on disk -> labelled examples -> token ids -> padded batches.
//! Knows nothing of the model; the trainer only sees [`Batch`] / [`TensorBatch`].
//!
//! ```text
//! DataConfig --read_examples--> Vec<Example> --Dataset::new(TextTokenizer)--> Dataset
//!   Dataset + epoch_order(seed, epoch) --Dataset::batch--> Batch --to_tensors--> TensorBatch
//! ```

mod batch;
mod clean;
mod config;
mod error;
mod order;
mod read;
mod summary;
mod tokenize;

pub use batch::{Batch, Dataset, Targets, TensorBatch};
pub use clean::{Clean, CleanStats};
pub use config::{DataConfig, Filter, Format, OtherLabels, TruncationSide};
pub use error::{Error, Location, Result, Unit};
pub use order::{epoch_order, split_folds, split_train_valid};
pub use read::{
    json_kind, read_examples, read_unlabelled, read_variants, unlabelled_record, Example,
    ReadOutcome, Target,
};
pub use summary::DataSummary;
pub use tokenize::{
    kept_positions, pair_shares, Encoding, TextTokenizer, Token, Tokens, Truncation,
};
