//! The integration tests of `wick-data`, one binary so it compiles once.

mod batch;
mod common;
mod config;
mod csv;
mod jsonl;
mod nlbse;
mod order;
mod summary;
mod tokenize;
