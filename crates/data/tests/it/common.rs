//! Shared fixtures: temp files, a config with three labels, and a tiny WordPiece tokenizer so
//! no test needs a download.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;
use wick_data::{read_examples, DataConfig, Error, TextTokenizer};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), BoxError>;

/// `[PAD]` is deliberately not id 0, so tests prove the pad id is looked up.
pub const VOCAB: &[&str] = &[
    "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "the", "bug", "crash", "app", "feature", "add",
    "button", "how", "do", "i", "a", "b", "c", "fix", "when", "open", "file", ".", ",", "?", "##s",
];
pub const CLS: u32 = 1;
pub const SEP: u32 = 2;
pub const PAD: u32 = 4;

pub fn id(token: &str) -> u32 {
    VOCAB.iter().position(|t| *t == token).unwrap_or(0) as u32
}

pub fn write(dir: &TempDir, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// The error reading `path` as labelled examples with `cfg` gives; an error when it reads.
pub fn read_error(path: &Path, cfg: &DataConfig) -> Result<Error, BoxError> {
    read_examples(path, cfg)
        .err()
        .ok_or_else(|| format!("expected {} to be refused", path.display()).into())
}

pub fn config(path: &Path) -> DataConfig {
    let mut cfg = DataConfig::new(path);
    cfg.labels = vec!["bug".into(), "feature".into(), "question".into()];
    cfg
}

/// Saves a BERT-style WordPiece tokenizer over [`VOCAB`] into `dir` and returns its path.
pub fn tiny_tokenizer_file(dir: &TempDir) -> Result<PathBuf, BoxError> {
    let vocab_path = write(dir, "vocab.txt", VOCAB.join("\n"));
    let vocab_str = vocab_path.to_str().ok_or("temp path is not UTF-8")?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .build()?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), SEP),
            ("[CLS]".into(), CLS),
        )));
    let path = dir.path().join("tokenizer.json");
    tokenizer.save(&path, false)?;
    Ok(path)
}

pub fn tiny_tokenizer(dir: &TempDir, max_len: usize) -> Result<TextTokenizer, BoxError> {
    let path = tiny_tokenizer_file(dir)?;
    Ok(TextTokenizer::from_file(&path, max_len)?)
}

/// The real MiniLM tokenizer, when a Hugging Face cache holds it.
pub fn minilm_tokenizer() -> Option<PathBuf> {
    let hub = std::env::var_os("HF_HOME")
        .map(|home| PathBuf::from(home).join("hub"))
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub"))
        })?;
    let snapshots = hub
        .join("models--sentence-transformers--all-MiniLM-L6-v2")
        .join("snapshots");
    std::fs::read_dir(snapshots)
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().join("tokenizer.json"))
        .find(|path| path.exists())
}
