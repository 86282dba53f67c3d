//! Errors of the trainer, each naming the key, file or device at fault.

use std::path::PathBuf;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config {path}: {reason}")]
    ConfigFile { path: String, reason: String },
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("run directory {path}: {reason}")]
    RunDir { path: PathBuf, reason: String },
    #[error("export to {path}: {reason}")]
    Export { path: PathBuf, reason: String },
    #[error("ensemble: {0}")]
    Ensemble(String),
    #[error("serve: {0}")]
    Serve(String),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Data(#[from] wick_data::Error),
    #[error(transparent)]
    Model(#[from] wick_model::ModelError),
    #[error(transparent)]
    Hub(#[from] wick_model::hub::HubError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| Self::Io { path, cause }
    }

    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        Self::Config {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
