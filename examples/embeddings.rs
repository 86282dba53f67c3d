//! Pooled sentence embeddings and nearest neighbours with the encoder alone.
//!
//!     cargo run --release --example embeddings -- [MODEL_ID_OR_DIR]
//!
//! Loads a Hub model (default sentence-transformers/all-MiniLM-L6-v2) or a local directory (a
//! wick checkpoint works: it holds config.json, tokenizer.json and model.safetensors), embeds a
//! few developer texts by masked mean pooling and prints each one's nearest neighbour by cosine.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, D};
use wick_data::{Example, Target, TextTokenizer};
use wick_model::hub::{resolve, ModelSource};
use wick_model::weights::load_safetensors;
use wick_model::{BertConfig, Classifier, Task};

const TEXTS: [&str; 6] = [
    "The README still documents the old --out flag",
    "Docs: explain how to configure the cache directory",
    "CI fails on Windows: test_paths times out",
    "Add a regression test for the empty CSV crash",
    "Rebased on main and addressed review comments, PTAL",
    "Ready for review: new streaming parser",
];

fn main() -> Result<()> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| wick_model::hub::DEFAULT_MODEL_ID.to_string());
    let source = if PathBuf::from(&arg).is_dir() {
        ModelSource::from_path(&arg)
    } else {
        ModelSource::from_id(&arg)
    };
    let model = resolve(&source)?;
    let config = BertConfig::from_file(&model.config)?;
    let device = Device::Cpu;
    let (varmap, classifier) =
        Classifier::build(&config, 1, Task::SingleLabel, 0.0, DType::F32, &device, 0)?;
    load_safetensors(&varmap, &model.weights, false)?;

    let tokenizer = TextTokenizer::from_file(&model.tokenizer, 128)?;
    let examples: Vec<Example> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| Example {
            text: t.to_string(),
            pair: None,
            target: Target::None,
            line: i + 1,
            fields: Default::default(),
        })
        .collect();
    let dataset = wick_data::Dataset::new(&examples, &tokenizer)?;
    let indices: Vec<usize> = (0..TEXTS.len()).collect();
    let batch = dataset.batch(&indices).to_tensors(&device)?;
    let pooled = classifier.pooled(
        &batch.input_ids,
        &batch.token_type_ids,
        &batch.attention_mask,
        false,
    )?;
    println!("{}: pooled embeddings {:?}", model.id, pooled.dims());

    let unit = pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
    let cosine: Vec<Vec<f32>> = unit.matmul(&unit.t()?)?.to_vec2()?;
    for (i, row) in cosine.iter().enumerate() {
        let (j, score) =
            row.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold(
                    (i, f32::MIN),
                    |best, (j, &s)| if s > best.1 { (j, s) } else { best },
                );
        println!("{:<52} -> {:<52} cos {score:.3}", TEXTS[i], TEXTS[j]);
    }
    Ok(())
}
