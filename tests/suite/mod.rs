mod adamw_reference;
mod cli;
mod common;
mod ema;
mod export;
mod gpu;
mod minilm_training;
mod stop;
