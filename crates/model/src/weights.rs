//! Filling the model's variables: pretrained encoders, checkpoints and seeded random init.
//!
//! The encoder and the head are filled separately: a pretrained file has no head, and
//! `VarMap::load` fails on any variable missing from the file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::classifier::HEAD_PREFIX;
use crate::error::{ModelError, Result};

/// What a load did, for the run log.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Variables filled from the file.
    pub loaded: usize,
    /// Tensors of the file the model does not use (e.g. `pooler.*`, `cls.*`).
    pub unused: Vec<String>,
}

/// Maps a Hugging Face key to this model's variable name: drops a `bert.`, `mpnet.` or `roberta.` prefix
/// (the task models' encoder) and renames the TensorFlow-era `gamma`/`beta` of layer norms to
/// `weight`/`bias`.
pub fn canonical_name(key: &str) -> String {
    let key = key
        .strip_prefix("bert.")
        .or_else(|| key.strip_prefix("mpnet."))
        .or_else(|| key.strip_prefix("roberta."))
        .unwrap_or(key);
    if let Some(stem) = key.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = key.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        key.to_string()
    }
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Whether a variable belongs to the classification head.
pub fn is_head(name: &str) -> bool {
    name.starts_with(&format!("{HEAD_PREFIX}."))
}

/// Fills variables from a safetensors file. With `include_head` false, only encoder variables are
/// required (a pretrained encoder); with true, every variable is (a wick checkpoint).
pub fn load_safetensors(varmap: &VarMap, path: &Path, include_head: bool) -> Result<LoadReport> {
    let weights_error = |cause| ModelError::Weights {
        path: path.to_path_buf(),
        cause,
    };
    let file = candle_core::safetensors::load(path, &Device::Cpu).map_err(weights_error)?;
    let mut tensors: HashMap<String, Tensor> = file
        .into_iter()
        .map(|(k, v)| (canonical_name(&k), v))
        .collect();
    let mut missing = Vec::new();
    let mut loaded = 0;
    for (name, var) in sorted_vars(varmap) {
        if !include_head && is_head(&name) {
            continue;
        }
        let Some(tensor) = tensors.remove(&name) else {
            missing.push(name);
            continue;
        };
        if tensor.dims() != var.dims() {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name,
                found: tensor.dims().to_vec(),
                expected: var.dims().to_vec(),
            });
        }
        let tensor = tensor.to_dtype(var.dtype())?.to_device(var.device())?;
        var.set(&tensor)?;
        loaded += 1;
    }
    if !missing.is_empty() {
        return Err(ModelError::MissingWeights {
            path: path.to_path_buf(),
            count: missing.len(),
            examples: missing.into_iter().take(5).collect(),
        });
    }
    let mut unused: Vec<String> = tensors.into_keys().collect();
    unused.sort();
    Ok(LoadReport { loaded, unused })
}

fn normal_tensor(var: &Var, std: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let normal =
        Normal::new(0.0f32, std as f32).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let values: Vec<f32> = (0..var.elem_count()).map(|_| normal.sample(rng)).collect();
    Ok(Tensor::from_vec(values, var.shape(), &Device::Cpu)?
        .to_dtype(var.dtype())?
        .to_device(var.device())?)
}

/// Hugging Face's `_init_weights` for the variables `select` accepts, in name order from a
/// ChaCha stream seeded with `seed`: matrices and embeddings ~ N(0, std), biases 0, layer-norm
/// weights 1.
fn init_selected(
    varmap: &VarMap,
    std: f64,
    seed: u64,
    select: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in sorted_vars(varmap) {
        if !select(&name) {
            continue;
        }
        let value = if name.contains("LayerNorm.weight") {
            var.ones_like()?
        } else if name.ends_with(".bias") {
            var.zeros_like()?
        } else {
            normal_tensor(&var, std, &mut rng)?
        };
        var.set(&value)?;
    }
    Ok(())
}

/// Seeded random init of the head only (a fresh head on a pretrained encoder).
pub fn init_head(varmap: &VarMap, std: f64, seed: u64) -> Result<()> {
    init_selected(varmap, std, seed, is_head)
}

/// Seeded random init of every variable (tiny test models, speed runs without weights).
pub fn init_all(varmap: &VarMap, std: f64, seed: u64) -> Result<()> {
    init_selected(varmap, std, seed, |_| true)
}

/// All variables by name, sorted: the order used by optimizers and checkpoints.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    sorted_vars(varmap)
}

/// Writes every variable to a safetensors file (f32, Hugging Face key names).
pub fn save_safetensors(varmap: &VarMap, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = sorted_vars(varmap)
        .into_iter()
        .map(|(name, var)| Ok((name, var.as_tensor().to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&tensors, path).map_err(|cause| ModelError::Weights {
        path: path.to_path_buf(),
        cause,
    })
}
