//! Self-contained checkpoint directories, written atomically.
//!
//! A checkpoint holds everything `evaluate`, `predict` and `--resume` need:
//! `model.safetensors` (Hugging Face key names), `config.json` (the encoder's), `tokenizer.json`,
//! `config.toml` (the resolved run config, labels included), `trainer_state.json` (step,
//! data-order position, best metric, model id and resolved commit, metrics) and
//! `optimizer.safetensors` (AdamW moments). The directory is built aside and renamed into place,
//! so a kill at any moment leaves the previous checkpoint whole.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use wick_model::BertConfig;

use crate::calibration::Calibration;
use crate::config::RunConfig;
use crate::ema::WeightAverage;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::scaler::LossScaler;

pub const WEIGHTS: &str = "model.safetensors";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const BERT_CONFIG: &str = "config.json";
pub const RUN_CONFIG: &str = "config.toml";
pub const TOKENIZER: &str = "tokenizer.json";
pub const STATE: &str = "trainer_state.json";
/// A run directory's metrics log, its plot and its TensorBoard event files.
pub const METRICS: &str = "metrics.jsonl";
pub const PLOT: &str = "plot.svg";
pub const TENSORBOARD: &str = "tensorboard";
/// Knowledge distillation's targets, one JSON line per training row (`train.distill_from`).
pub const DISTILL_TARGETS: &str = "distill_targets.jsonl";

/// Where the loop stands: enough to continue exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch in progress (0-based).
    pub epoch: u64,
    /// Batches of that epoch already consumed (the data-order position; the order itself is a
    /// function of the seed and the epoch).
    pub batch_in_epoch: usize,
    /// Best value of the selection metric so far, and its step.
    pub best_metric: Option<f64>,
    pub best_step: Option<u64>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: usize,
}

/// Which encoder a checkpoint started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub model_id: String,
    pub revision: String,
    /// The resolved commit hash, when the model came from the Hub cache.
    pub commit: Option<String>,
    pub wick_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    state: TrainState,
    provenance: Provenance,
    labels: Vec<String>,
    /// The last evaluation at save time, if any.
    metrics: Option<serde_json::Value>,
    /// The temperature fitted on that evaluation (`eval.calibrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calibration: Option<Calibration>,
}

/// What a checkpoint is written from.
#[allow(missing_debug_implementations)] // VarMap has no Debug
pub struct Contents<'a> {
    pub varmap: &'a VarMap,
    pub optimizer: &'a AdamW,
    pub config: &'a RunConfig,
    pub bert: &'a BertConfig,
    pub tokenizer: &'a Path,
    pub state: &'a TrainState,
    pub provenance: &'a Provenance,
    /// The loss scaler of an f16 run (saved with the optimizer state).
    pub scaler: Option<&'a LossScaler>,
    /// The weight average (`train.ema_decay`), swapped in: the variables, so the model file,
    /// hold the averages, and the optimizer state gets the trained weights.
    pub average: Option<&'a WeightAverage>,
    pub metrics: Option<serde_json::Value>,
    /// The temperature fitted on the evaluation of these weights, if any.
    pub calibration: Option<&'a Calibration>,
}

/// A checkpoint read back from disk (weights and optimizer are loaded on demand).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub bert: BertConfig,
    pub labels: Vec<String>,
    pub state: TrainState,
    pub provenance: Provenance,
    pub metrics: Option<serde_json::Value>,
    /// The temperature `evaluate` and `predict` divide the logits by.
    pub calibration: Option<Calibration>,
}

fn bad(dir: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::File::create(path).map_err(TrainError::io(path))?;
    file.write_all(bytes).map_err(TrainError::io(path))?;
    file.sync_all().map_err(TrainError::io(path))
}

pub(crate) fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(TrainError::io(path))
}

fn aside(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Moves a fully written `staged` directory to `dir`, replacing what was there. A crash between
/// the two renames leaves the old copy at `.<name>.old`, which [`recover`] puts back.
pub(crate) fn replace_dir(staged: &Path, dir: &Path) -> Result<()> {
    let old = aside(dir, "old");
    if old.exists() {
        fs::remove_dir_all(&old).map_err(TrainError::io(&old))?;
    }
    if dir.exists() {
        fs::rename(dir, &old).map_err(TrainError::io(dir))?;
    }
    fs::rename(staged, dir).map_err(TrainError::io(dir))?;
    if let Some(parent) = dir.parent() {
        // Persist the renames themselves.
        let _ = fs::File::open(parent).and_then(|d| d.sync_all());
    }
    if old.exists() {
        fs::remove_dir_all(&old).map_err(TrainError::io(&old))?;
    }
    Ok(())
}

/// Restores `dir` from `.<name>.old` if a replacement was interrupted between its renames.
pub fn recover(dir: &Path) -> Result<()> {
    let old = aside(dir, "old");
    if !dir.exists() && old.exists() {
        fs::rename(&old, dir).map_err(TrainError::io(dir))?;
    }
    Ok(())
}

pub(crate) fn stage(dir: &Path) -> Result<PathBuf> {
    let staged = aside(dir, "tmp");
    if staged.exists() {
        fs::remove_dir_all(&staged).map_err(TrainError::io(&staged))?;
    }
    fs::create_dir_all(&staged).map_err(TrainError::io(&staged))?;
    Ok(staged)
}

/// Writes a checkpoint to `dir` atomically.
pub fn save(dir: &Path, contents: &Contents) -> Result<()> {
    let staged = stage(dir)?;
    let weights = staged.join(WEIGHTS);
    wick_model::weights::save_safetensors(contents.varmap, &weights)?;
    sync_file(&weights)?;
    if contents.config.train.save_optimizer {
        let optimizer = staged.join(OPTIMIZER);
        let mut state = contents.optimizer.state();
        if let Some(scaler) = contents.scaler {
            state.extend(scaler.state());
        }
        if let Some(average) = contents.average {
            state.extend(average.state()?);
        }
        candle_core::safetensors::save(&state, &optimizer)?;
        sync_file(&optimizer)?;
    }
    write_synced(
        &staged.join(BERT_CONFIG),
        to_json(contents.bert)?.as_bytes(),
    )?;
    write_synced(
        &staged.join(RUN_CONFIG),
        contents.config.to_toml()?.as_bytes(),
    )?;
    let tokenizer = fs::read(contents.tokenizer).map_err(TrainError::io(contents.tokenizer))?;
    write_synced(&staged.join(TOKENIZER), &tokenizer)?;
    let state = StateFile {
        state: contents.state.clone(),
        provenance: contents.provenance.clone(),
        labels: contents.config.data.labels.clone(),
        metrics: contents.metrics.clone(),
        calibration: contents.calibration.cloned(),
    };
    write_synced(&staged.join(STATE), to_json(&state)?.as_bytes())?;
    replace_dir(&staged, dir)
}

/// Makes `dst` a copy of the checkpoint `src` (hard links where the filesystem allows: files are
/// never modified in place, only replaced), atomically.
pub fn snapshot(src: &Path, dst: &Path) -> Result<()> {
    let staged = stage(dst)?;
    for entry in fs::read_dir(src).map_err(TrainError::io(src))? {
        let entry = entry.map_err(TrainError::io(src))?;
        let target = staged.join(entry.file_name());
        if fs::hard_link(entry.path(), &target).is_err() {
            fs::copy(entry.path(), &target).map_err(TrainError::io(&target))?;
        }
    }
    replace_dir(&staged, dst)
}

/// Keeps the newest `keep` directories named `checkpoint-<step>` in `run_dir`.
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<(u64, PathBuf)> = fs::read_dir(run_dir)
        .map_err(TrainError::io(run_dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for (_, path) in steps.into_iter().take(excess) {
        fs::remove_dir_all(&path).map_err(TrainError::io(&path))?;
    }
    Ok(())
}

/// What a run writes into its directory, found in `run_dir`: `best/`, `last/`,
/// `checkpoint-<step>/` (with their `.<name>.tmp` / `.<name>.old` stand-ins from an interrupted
/// write), `metrics.jsonl`, `plot.svg`, `tensorboard/` and the resolved `config.toml`. Other files
/// are not listed.
pub fn run_entries(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(run_dir)(e)),
    };
    let checkpoint_dir = |name: &str| {
        matches!(name, "best" | "last")
            || name
                .strip_prefix("checkpoint-")
                .is_some_and(|step| step.parse::<u64>().is_ok())
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stand_in = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".tmp").or_else(|| n.strip_suffix(".old")));
            [METRICS, PLOT, TENSORBOARD, RUN_CONFIG, DISTILL_TARGETS].contains(&name.as_str())
                || checkpoint_dir(&name)
                || stand_in.is_some_and(checkpoint_dir)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

fn read_text(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(|e| bad(dir, format!("cannot read {name}: {e}")))
}

/// Sets (or with `None` removes) the temperature `evaluate` and `predict` use for the checkpoint
/// at `dir`. Only `trainer_state.json` changes, and it is replaced by a rename: a checkpoint that
/// shares its files with another (`best/` and `last/` of one step) keeps the other one as it was.
pub fn set_calibration(dir: &Path, calibration: Option<&Calibration>) -> Result<()> {
    let mut state: StateFile = serde_json::from_str(&read_text(dir, STATE)?)
        .map_err(|e| bad(dir, format!("{STATE}: {e}")))?;
    state.calibration = calibration.cloned();
    let staged = dir.join(format!(".{STATE}.tmp"));
    write_synced(&staged, to_json(&state)?.as_bytes())?;
    let target = dir.join(STATE);
    fs::rename(&staged, &target).map_err(TrainError::io(&target))?;
    let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// The checkpoint a path names: a checkpoint directory itself, or a run directory's `best/`.
pub fn resolve(dir: &Path) -> PathBuf {
    if dir.join(STATE).exists() || !dir.join("best").exists() {
        dir.to_path_buf()
    } else {
        dir.join("best")
    }
}

/// Reads a checkpoint's metadata and checks its files are there.
pub fn read(dir: &Path) -> Result<Checkpoint> {
    recover(dir)?;
    if !dir.is_dir() {
        return Err(bad(
            dir,
            "not a directory (expected a checkpoint such as runs/default/best)",
        ));
    }
    for name in [WEIGHTS, BERT_CONFIG, RUN_CONFIG, TOKENIZER, STATE] {
        if !dir.join(name).is_file() {
            return Err(bad(
                dir,
                format!("missing {name}: not a wick checkpoint, or an incomplete one"),
            ));
        }
    }
    let config = RunConfig::from_toml(
        &read_text(dir, RUN_CONFIG)?,
        &dir.join(RUN_CONFIG).display().to_string(),
        &[],
    )?;
    let bert: BertConfig = serde_json::from_str(&read_text(dir, BERT_CONFIG)?)
        .map_err(|e| bad(dir, format!("{BERT_CONFIG}: {e}")))?;
    let state: StateFile = serde_json::from_str(&read_text(dir, STATE)?)
        .map_err(|e| bad(dir, format!("{STATE}: {e}")))?;
    if let Some(c) = &state.calibration {
        if !(c.temperature.is_finite() && c.temperature > 0.0) {
            return Err(bad(
                dir,
                format!(
                    "{STATE}: calibration.temperature must be a positive number, got {}",
                    c.temperature
                ),
            ));
        }
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        config,
        bert,
        labels: state.labels,
        state: state.state,
        provenance: state.provenance,
        metrics: state.metrics,
        calibration: state.calibration,
    })
}

impl Checkpoint {
    /// Fills every variable (encoder and head) from the checkpoint's weights.
    pub fn load_weights(&self, varmap: &VarMap) -> Result<()> {
        wick_model::weights::load_safetensors(varmap, &self.dir.join(WEIGHTS), true)
            .map_err(|e| bad(&self.dir, e.to_string()))?;
        Ok(())
    }

    /// Restores the optimizer's moments and step count (and the loss scale of an f16 run, and
    /// the trained weights of a run with a weight average, leaving the average swapped in as the
    /// model file holds it).
    pub fn load_optimizer(
        &self,
        optimizer: &mut AdamW,
        scaler: Option<&mut LossScaler>,
        average: Option<&mut WeightAverage>,
    ) -> Result<()> {
        let path = self.dir.join(OPTIMIZER);
        if !path.exists() && !self.config.train.save_optimizer {
            return Err(bad(
                &self.dir,
                format!(
                    "no {OPTIMIZER}: the run saved weights only (train.save_optimizer = false), \
                     so it cannot be resumed; evaluate and predict read it as usual"
                ),
            ));
        }
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| bad(&self.dir, format!("{OPTIMIZER}: {e}")))?;
        if let Some(scaler) = scaler {
            scaler
                .load_state(&tensors)
                .map_err(|reason| bad(&self.dir, reason))?;
        }
        if let Some(average) = average {
            average
                .load_state(&tensors)
                .map_err(|reason| bad(&self.dir, reason))?;
        }
        optimizer
            .load_state(tensors, self.state.step)
            .map_err(|reason| bad(&self.dir, reason))
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join(TOKENIZER)
    }
}

/// Pretty JSON for the small metadata files.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::config("(checkpoint metadata)", e.to_string()))
}
