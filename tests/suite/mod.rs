mod adamw_reference;
mod cli;
mod common;
mod minilm_training;
