//! The `bench` binary's library: what to measure ([`cli`]), how to time it honestly
//! ([`timing`]), the measurements themselves ([`matmul`], [`model`]), their cost models
//! ([`flops`], [`memory`]) and how results are printed ([`report`]).
//!
//! Included by `src/bin/bench.rs` through `#[path]`: the root package has no library target, and
//! these modules serve only that binary.

pub mod cli;
pub mod flops;
pub mod matmul;
pub mod memory;
pub mod model;
pub mod report;
pub mod timing;
