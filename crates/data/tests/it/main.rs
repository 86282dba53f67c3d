//! The integration tests of `wick-data`, one binary so it compiles once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod batch;
mod common;
mod config;
mod csv;
mod exports;
mod jsonl;
mod nlbse;
mod order;
mod parquet;
mod summary;
mod tokenize;
