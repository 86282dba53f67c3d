//! What every wick command does around its own work.

use std::fmt::Display;
use std::process::ExitCode;

/// Tunes the allocator ([`crate::alloc::keep_freed_memory`]), runs the command, and turns an
/// error into `error: <message>` on stderr (with its causes, for `anyhow`'s alternate form) and
/// a failing exit code.
pub fn run_main<E: Display>(run: impl FnOnce() -> Result<(), E>) -> ExitCode {
    crate::alloc::keep_freed_memory();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
