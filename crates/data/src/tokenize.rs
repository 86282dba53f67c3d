//! Wraps a Hugging Face `tokenizer.json`: truncation to `max_len` (special tokens included), no
//! padding (batches pad dynamically), and the untruncated length of every text for the summary.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// Token ids of one text, at most `max_len` long, `[CLS]` and `[SEP]` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, `(len,)` with `len <= max_len`.
    pub ids: Vec<u32>,
    /// Segment ids, `(len,)`; all 0 for single texts.
    pub type_ids: Vec<u32>,
    /// Length the text would have without truncation, special tokens included.
    pub full_len: usize,
}

/// A tokenizer that truncates to a fixed maximum length.
pub struct TextTokenizer {
    truncating: Tokenizer,
    /// Same tokenizer without truncation, used only to measure texts that hit `max_len`.
    untruncated: Tokenizer,
    path: PathBuf,
    max_len: usize,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and sets truncation to `max_len` tokens (longest-first).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let wrap = |cause| Error::Tokenizer {
            path: path.to_owned(),
            cause,
        };
        let mut untruncated = Tokenizer::from_file(path).map_err(wrap)?;
        // Read before padding is disabled: the file's padding section names the pad token.
        let pad_id = untruncated
            .get_padding()
            .map(|padding| padding.pad_id)
            .or_else(|| untruncated.token_to_id("[PAD]"))
            .unwrap_or(0);
        untruncated.with_padding(None);
        untruncated.with_truncation(None).map_err(wrap)?;
        let mut truncating = untruncated.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(wrap)?;
        Ok(Self {
            truncating,
            untruncated,
            path: path.to_owned(),
            max_len,
            pad_id,
        })
    }

    /// Encodes `texts` in parallel; the result has one [`Encoding`] per text, in order.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        let wrap = |cause| Error::Tokenizer {
            path: self.path.clone(),
            cause,
        };
        let encodings = self
            .truncating
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(wrap)?;
        let mut out: Vec<Encoding> = encodings
            .iter()
            .map(|e| Encoding {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                full_len: e.len(),
            })
            .collect();
        // Only a text that fills max_len can have been cut; measure just those a second time.
        let cut: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].ids.len() >= self.max_len)
            .collect();
        if !cut.is_empty() {
            let inputs: Vec<&str> = cut.iter().map(|&i| texts[i]).collect();
            let full = self
                .untruncated
                .encode_batch_fast(inputs, true)
                .map_err(wrap)?;
            for (&i, encoding) in cut.iter().zip(&full) {
                out[i].full_len = encoding.len();
            }
        }
        Ok(out)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.truncating.get_vocab_size(true)
    }

    /// Id used to pad batches: the file's padding token, else `[PAD]`, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Maximum tokens per encoding, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}
