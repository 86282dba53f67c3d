//! Stopping a run between steps. [`crate::fit::Trainer::fit`] reads its [`StopFlag`] after every
//! optimizer step; once it is raised the loop saves a checkpoint of that step in `last/` (with
//! the optimizer moments) and returns, so `--resume` continues without losing a step. The
//! commands raise it on Ctrl-C, SIGTERM or SIGHUP ([`crate::cli::stop_on_signal`]); a library
//! user raises it from any thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared request to stop after the current step. Clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<Flags>);

#[derive(Debug, Default)]
struct Flags {
    requested: AtomicBool,
    /// A `fit` reading this flag is in progress.
    running: AtomicBool,
}

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop after the step in progress.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Whether a `fit` is reading this flag now (a request would be seen after its step).
    pub fn is_running(&self) -> bool {
        self.0.running.load(Ordering::SeqCst)
    }

    /// Marks a `fit` as reading this flag until the guard drops.
    pub(crate) fn enter(&self) -> Running {
        self.0.running.store(true, Ordering::SeqCst);
        Running(self.clone())
    }
}

/// Clears [`StopFlag::is_running`] when the loop ends, however it ends.
pub(crate) struct Running(StopFlag);

impl Drop for Running {
    fn drop(&mut self) {
        self.0 .0.running.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_request_and_the_guard_clears_running() {
        let flag = StopFlag::new();
        let other = flag.clone();
        assert!(!flag.is_requested() && !flag.is_running());
        {
            let _running = flag.enter();
            assert!(other.is_running());
            other.request();
            assert!(flag.is_requested());
        }
        assert!(!other.is_running());
        assert!(other.is_requested());
    }
}
