//! wick's integration tests: one binary, one module per concern.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod suite;
