pub type Result<T> = std::result::Result<T, TrainError>; #[derive(Debug, thiserror::Error)] pub enum TrainError { #[error("x")] X }
