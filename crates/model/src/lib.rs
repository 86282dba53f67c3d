//! wick-model: a BERT encoder that trains, masked mean pooling and a classification head.
//!
//! Pure Candle modules. Every op used in training records its backward: layer norm, softmax and
//! the attention mask are written from primitive tensor ops (see [`ops`]) instead of candle-nn's
//! fused fast paths, which record no gradient. Dropout is real and seeded (see [`rng`]).

pub mod attention;
pub mod bert;
pub mod classifier;
pub mod config;
pub mod error;
pub mod fused;
pub mod hub;
pub mod loss;
pub mod matmul;
pub mod ops;
pub mod pointwise;
pub mod rng;
pub mod simd;
pub mod weights;

pub use bert::BertModel;
pub use classifier::{Classifier, Task};
pub use config::BertConfig;
pub use error::{ModelError, Result};
pub use rng::DropoutRng;
