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
use rand_distr::{Distribution, Normal, Uniform};

use crate::classifier::HEAD_PREFIX;
use crate::config::ModelType;
use crate::error::{ModelError, Result};
use crate::lora::{self, is_lora};
use crate::mlm::is_lm_head;

/// What a load did, for the run log.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Variables filled from the file.
    pub loaded: usize,
    /// Tensors of the file the model does not use (e.g. `pooler.*`, `cls.*`).
    pub unused: Vec<String>,
}

/// DistilBERT's module names within a layer and BERT's, which this model uses.
const DISTILBERT_LAYER_NAMES: [(&str, &str); 8] = [
    ("attention.q_lin", "attention.self.query"),
    ("attention.k_lin", "attention.self.key"),
    ("attention.v_lin", "attention.self.value"),
    ("attention.out_lin", "attention.output.dense"),
    ("sa_layer_norm", "attention.output.LayerNorm"),
    ("ffn.lin1", "intermediate.dense"),
    ("ffn.lin2", "output.dense"),
    ("output_layer_norm", "output.LayerNorm"),
];

/// Maps a Hugging Face key to this model's variable name: drops a `bert.`, `mpnet.`,
/// `roberta.`, `distilbert.` or `electra.` prefix (the task models' encoder), renames the TensorFlow-era
/// `gamma`/`beta` of layer norms to `weight`/`bias`, and DistilBERT's layer names
/// (`transformer.layer.0.attention.q_lin.weight`) to BERT's
/// (`encoder.layer.0.attention.self.query.weight`).
pub fn canonical_name(key: &str) -> String {
    let key = ["bert.", "mpnet.", "roberta.", "distilbert.", "electra."]
        .iter()
        .find_map(|prefix| key.strip_prefix(prefix))
        .unwrap_or(key);
    let key = if let Some(stem) = key.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = key.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        key.to_string()
    };
    distilbert_layer_key(&key).unwrap_or(key)
}

/// `transformer.layer.<i>.<module>.<param>` of DistilBERT as BERT's name.
fn distilbert_layer_key(key: &str) -> Option<String> {
    map_layer_key(key, "transformer.layer.", "encoder.layer.", true)
}

/// `<from><i>.<module>.<param>` as `<to><i>.<partner>.<param>`, `partner` the module's partner in
/// [`DISTILBERT_LAYER_NAMES`]: DistilBERT's name to BERT's when `to_bert`, else back.
fn map_layer_key(key: &str, from: &str, to: &str, to_bert: bool) -> Option<String> {
    let rest = key.strip_prefix(from)?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let partner = DISTILBERT_LAYER_NAMES.iter().find_map(|&(theirs, ours)| {
        let (name, partner) = if to_bert {
            (theirs, ours)
        } else {
            (ours, theirs)
        };
        (name == module).then_some(partner)
    })?;
    Some(format!("{to}{layer}.{partner}.{param}"))
}

/// The name transformers gives an encoder variable of the family `model_type`: the variable's
/// own name, except DistilBERT's layers (the inverse of [`canonical_name`]'s mapping).
pub fn transformers_name(model_type: ModelType, name: &str) -> String {
    if model_type != ModelType::DistilBert {
        return name.to_string();
    }
    map_layer_key(name, "encoder.layer.", "transformer.layer.", false)
        .unwrap_or_else(|| name.to_string())
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

/// Whether a variable is new to a pretrained encoder: the head, a LoRA adapter or the
/// masked-LM head (which [`crate::mlm::load_lm_head`] fills from a file that has one).
pub fn is_new(name: &str) -> bool {
    is_head(name) || is_lora(name) || is_lm_head(name)
}

/// Fills variables from a safetensors file. With `include_head` false, only the pretrained
/// encoder's variables are required, not the head's or the LoRA adapters' ([`is_new`]); with
/// true, every variable is (a wick checkpoint).
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
        if !include_head && is_new(&name) {
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
    if !include_head {
        // Its encoder weights without the adapters would be a different model, silently.
        if let Some(example) = unused.iter().find(|name| is_lora(name)) {
            return Err(ModelError::UnmergedAdapters {
                path: path.to_path_buf(),
                example: example.clone(),
            });
        }
    }
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

/// PEFT's init of a LoRA `A` `(rank, in)`: `kaiming_uniform_(a = sqrt(5))`, which is
/// `U(-1/sqrt(in), 1/sqrt(in))`.
fn kaiming_uniform(var: &Var, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let bound = 1.0 / (var.dim(1)? as f32).sqrt();
    let uniform = Uniform::new_inclusive(-bound, bound);
    let values: Vec<f32> = (0..var.elem_count()).map(|_| uniform.sample(rng)).collect();
    Ok(Tensor::from_vec(values, var.shape(), &Device::Cpu)?
        .to_dtype(var.dtype())?
        .to_device(var.device())?)
}

/// Hugging Face's `_init_weights` for the variables `select` accepts, in name order from a
/// ChaCha stream seeded with `seed`: matrices and embeddings ~ N(0, std), biases 0, layer-norm
/// weights 1; PEFT's for LoRA adapters: `A` Kaiming-uniform, `B` 0 (so a fresh adapter changes
/// nothing until it trains).
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
        let value = if name.ends_with(lora::A_SUFFIX) {
            kaiming_uniform(&var, &mut rng)?
        } else if name.ends_with(lora::B_SUFFIX) {
            var.zeros_like()?
        } else if name.contains("LayerNorm.weight") {
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

/// Seeded random init of the masked-LM head only (an encoder whose file has no such head), from
/// a stream of its own.
pub fn init_lm_head(varmap: &VarMap, std: f64, seed: u64) -> Result<()> {
    // "MLM" in ASCII.
    init_selected(varmap, std, seed ^ 0x004d_4c4d, is_lm_head)
}

/// Seeded init of the LoRA adapters only (new adapters on a pretrained encoder); nothing
/// without adapters.
pub fn init_lora(varmap: &VarMap, seed: u64) -> Result<()> {
    // A stream of its own, not the head's: "LoRA" in ASCII.
    init_selected(varmap, 0.0, seed ^ 0x4c6f_5241, is_lora)
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

#[cfg(test)]
mod tests {
    use super::{canonical_name, transformers_name};
    use crate::config::ModelType;

    #[test]
    fn distilbert_names_map_to_bert_names_and_back() {
        let pairs = [
            (
                "distilbert.transformer.layer.3.attention.q_lin.weight",
                "encoder.layer.3.attention.self.query.weight",
            ),
            (
                "transformer.layer.0.sa_layer_norm.bias",
                "encoder.layer.0.attention.output.LayerNorm.bias",
            ),
            (
                "transformer.layer.5.ffn.lin2.weight",
                "encoder.layer.5.output.dense.weight",
            ),
            (
                "transformer.layer.5.output_layer_norm.weight",
                "encoder.layer.5.output.LayerNorm.weight",
            ),
            (
                "distilbert.embeddings.position_embeddings.weight",
                "embeddings.position_embeddings.weight",
            ),
        ];
        for (theirs, ours) in pairs {
            assert_eq!(canonical_name(theirs), ours);
            assert_eq!(
                transformers_name(ModelType::DistilBert, ours),
                theirs.trim_start_matches("distilbert.")
            );
            assert_eq!(transformers_name(ModelType::Bert, ours), ours);
        }
        // Not DistilBERT's: left alone.
        assert_eq!(
            canonical_name("vocab_transform.weight"),
            "vocab_transform.weight"
        );
        assert_eq!(
            canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma"),
            "encoder.layer.0.output.LayerNorm.weight"
        );
    }
}
