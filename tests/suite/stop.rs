//! `Trainer::fit` and its stop flag, through the library: a stop requested during a step ends the
//! run after that step with the step saved; one requested during the last step changes nothing.

use std::path::Path;

use wick_trainer::config::RunConfig;
use wick_trainer::device::DeviceRequest;
use wick_trainer::fit::{Outcome, RunOptions, Trainer};

use super::common::{saved_step, StopAt};

/// Trains configs/tiny.toml (3 epochs of 4 steps) into `out`, requesting a stop at step `at`.
fn train_stopping_at(out: &Path, at: usize) -> Outcome {
    let root = super::common::repo_root();
    let mut config = RunConfig::load(&root.join("configs/tiny.toml"), &[]).unwrap();
    for path in [&mut config.data.train, config.data.valid.as_mut().unwrap()] {
        *path = root.join(&*path);
    }
    let options = RunOptions {
        device: DeviceRequest::Cpu,
        out_dir: out.to_path_buf(),
        resume: None,
        overwrite: false,
    };
    let mut quiet = wick_trainer::fit::Silent;
    let mut trainer = Trainer::new(config, &options, &mut quiet).unwrap();
    assert!(!trainer.stop_flag().is_running());
    let mut reporter = StopAt {
        at,
        flag: trainer.stop_flag().clone(),
    };
    let outcome = trainer.fit(&mut reporter).unwrap();
    assert!(
        !trainer.stop_flag().is_running(),
        "fit left the flag running"
    );
    outcome
}

#[test]
fn a_stop_requested_mid_run_ends_it_after_that_step_with_the_step_saved() {
    let dir = tempfile::tempdir().unwrap();
    // Step 3 is mid-epoch and between the config's checkpoints (every 4 steps).
    let outcome = train_stopping_at(dir.path(), 3);
    assert!(outcome.interrupted);
    assert_eq!(outcome.steps, 3);
    assert_eq!(saved_step(&dir.path().join("last")), 3);
    assert!(
        !dir.path().join("best").exists(),
        "no evaluation ran, yet best/ was filled in"
    );
}

#[test]
fn a_stop_requested_in_the_last_step_lets_the_run_finish() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = train_stopping_at(dir.path(), 12);
    assert!(!outcome.interrupted);
    assert_eq!(outcome.steps, 12);
    assert!(outcome.best.is_some());
    assert_eq!(saved_step(&dir.path().join("last")), 12);
}
