//! What every wick command does around its own work.

use std::fmt::Display;
use std::process::ExitCode;
use std::sync::{Mutex, Once};

use crate::stop::StopFlag;

/// The exit code of a run stopped by a signal (128 + SIGINT, the shell's convention for Ctrl-C).
pub const INTERRUPTED: u8 = 130;

/// What a command's `run` returns on success: nothing (exit code 0) or a code of its own.
pub trait Completion {
    fn exit_code(self) -> ExitCode;
}

impl Completion for () {
    fn exit_code(self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

impl Completion for ExitCode {
    fn exit_code(self) -> ExitCode {
        self
    }
}

/// Tunes the allocator ([`crate::alloc::keep_freed_memory`]), runs the command, and turns an
/// error into `error: <message>` on stderr (with its causes, for `anyhow`'s alternate form) and
/// a failing exit code. A write to a closed pipe (`predict ... | head`) ends the command quietly
/// with success, as ripgrep does: the reader has what it wanted.
pub fn run_main<T, E>(run: impl FnOnce() -> Result<T, E>) -> ExitCode
where
    T: Completion,
    E: Display + AsRef<dyn std::error::Error + Send + Sync>,
{
    crate::alloc::keep_freed_memory();
    match run() {
        Ok(done) => done.exit_code(),
        Err(err) if is_broken_pipe(err.as_ref()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` or one of its causes is an I/O error of a closed pipe.
fn is_broken_pipe(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = err.source();
    }
    false
}

/// The flag the signals raise; `None` until [`stop_on_signal`] names one.
static TARGET: Mutex<Option<StopFlag>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// Makes Ctrl-C (SIGINT), SIGTERM and SIGHUP raise `flag` while a `fit` reads it: the run stops
/// after its current step with that step saved in `last/`. A second signal, or one while no `fit`
/// is running (set-up, the final evaluation), ends the process at once with [`INTERRUPTED`], as
/// without a handler. Calling it again (a sweep's next trial) moves the signals to the new flag.
pub fn stop_on_signal(flag: &StopFlag) -> Result<(), ctrlc::Error> {
    *TARGET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(flag.clone());
    let mut installed = Ok(());
    INSTALL.call_once(|| installed = ctrlc::set_handler(on_signal));
    installed
}

fn on_signal() {
    let target = TARGET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    match target {
        Some(flag) if flag.is_running() && !flag.is_requested() => {
            flag.request();
            eprintln!(
                "\nstopping after this step, which is saved for --resume \
                 (interrupt again to quit at once)"
            );
        }
        _ => std::process::exit(i32::from(INTERRUPTED)),
    }
}

/// Blocks until Ctrl-C (SIGINT), SIGTERM or SIGHUP, for a command that runs until stopped
/// (`serve`). Not with [`stop_on_signal`] in the same process: the handler is installed once.
pub fn wait_for_signal() -> Result<(), ctrlc::Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut installed = Ok(());
    INSTALL.call_once(|| {
        installed = ctrlc::set_handler(move || {
            let _ = tx.send(());
        })
    });
    installed?;
    // An error means the handler is gone, which it never is once installed.
    let _ = rx.recv();
    Ok(())
}

/// A probability threshold strictly between 0 and 1, as a command-line value parser
/// (`predict --min-prob`, `serve --min-prob`).
pub fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 1.0 => Ok(p),
        _ => Err(format!(
            "expected a probability between 0 and 1, got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::is_broken_pipe;
    use std::io::{Error, ErrorKind};

    /// An error with a cause, as `anyhow`'s context or a `thiserror` wrapper has.
    #[derive(Debug)]
    struct Wrapped(Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "writing stdout")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_closed_pipe_is_found_among_the_causes_and_nothing_else_is_one() {
        assert!(is_broken_pipe(&Error::from(ErrorKind::BrokenPipe)));
        assert!(is_broken_pipe(&Wrapped(Error::from(ErrorKind::BrokenPipe))));
        assert!(!is_broken_pipe(&Wrapped(Error::from(ErrorKind::NotFound))));
        assert!(!is_broken_pipe(&std::fmt::Error));
    }
}
