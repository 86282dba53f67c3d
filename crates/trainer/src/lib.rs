//! wick-trainer: the training loop, optimizer, schedules, checkpoints, evaluation metrics and
//! device choice. No printing: progress goes through the [`fit::Reporter`] trait.

pub mod adapt;
pub mod alloc;
pub mod budget;
pub mod calibration;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod device;
pub mod ema;
pub mod error;
pub mod eval;
pub mod explain;
pub mod export;
pub mod fit;
mod fused_adamw;
pub mod infer;
pub mod lr_find;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod priors;
pub mod scaler;
pub mod schedule;
pub mod serve;
pub mod stop;
pub mod sync;
pub mod tensorboard;

pub use error::{Result, TrainError};
