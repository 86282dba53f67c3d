//! Errors of the model crate that name the file or tensor at fault.

use std::path::PathBuf;

/// Errors from reading model configs and weights.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("weights file {path} lacks {count} tensor(s) the model needs, e.g. {examples:?}")]
    MissingWeights {
        path: PathBuf,
        count: usize,
        examples: Vec<String>,
    },
    #[error(
        "weights file {path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(
        "weights file {path} holds LoRA adapters (e.g. `{example}`) that its weights do not \
         include: it is a LoRA checkpoint, not a pretrained encoder; `export` it to get the merged \
         encoder and start from that"
    )]
    UnmergedAdapters { path: PathBuf, example: String },
    #[error("cannot read weights file {path}: {cause}")]
    Weights {
        path: PathBuf,
        cause: candle_core::Error,
    },
    /// The model cannot do what was asked of it (the message says what and why).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
