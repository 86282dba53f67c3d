//! Wraps a Hugging Face `tokenizer.json`: truncation to `max_len` (special tokens included) that
//! keeps the head of a long text, its tail, or both ([`Truncation`]); no padding (batches pad
//! dynamically); and the untruncated length of every text for the summary.

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

/// One token of a text ([`TextTokenizer::tokens`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub type_id: u32,
    /// The vocabulary's piece (`##ing`, `Ġthe`, `[CLS]`).
    pub piece: String,
    /// The byte range of the text the token came from; `None` for a special token.
    pub span: Option<(usize, usize)>,
}

/// The kept tokens of one text ([`TextTokenizer::tokens`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub tokens: Vec<Token>,
    /// As [`Encoding::full_len`]: the length without truncation, special tokens included.
    pub full_len: usize,
}

impl Tokens {
    /// Whether every token of the text was kept.
    pub fn whole(&self) -> bool {
        self.tokens.len() == self.full_len
    }
}

/// Which tokens of a text longer than `max_len` are kept. The special tokens around the text
/// (`[CLS]` ... `[SEP]`, `<s>` ... `</s>`) always stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// The first tokens (the end is cut), as the tokenizers library cuts by default.
    #[default]
    Head,
    /// The last tokens (the start is cut), e.g. for logs whose error comes last.
    Tail,
    /// `head` tokens from the start and the rest from the end (the middle is cut): a title with
    /// the end of a long body, such as its stack trace or closing question (Sun et al. 2019, "How
    /// to Fine-Tune BERT for Text Classification?", found 128 + 382 best on long reviews).
    HeadTail { head: usize },
}

/// A tokenizer that truncates to a fixed maximum length.
pub struct TextTokenizer {
    truncating: Tokenizer,
    /// Same tokenizer without truncation, used only to measure texts that hit `max_len`.
    untruncated: Tokenizer,
    path: PathBuf,
    max_len: usize,
    truncation: Truncation,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .field("truncation", &self.truncation)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and sets truncation to `max_len` tokens, keeping the head of a long
    /// text ([`TextTokenizer::with_truncation`] chooses otherwise).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let wrap = |cause| Error::Tokenizer {
            path: path.to_owned(),
            cause,
        };
        let mut untruncated = Tokenizer::from_file(path).map_err(wrap)?;
        // Read before padding is disabled: the file's padding section names the pad token;
        // without one (roberta-base's file has none), BERT's or RoBERTa's pad token.
        let pad_id = untruncated
            .get_padding()
            .map(|padding| padding.pad_id)
            .or_else(|| untruncated.token_to_id("[PAD]"))
            .or_else(|| untruncated.token_to_id("<pad>"))
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
            truncation: Truncation::Head,
            pad_id,
        })
    }

    /// Which tokens of a long text to keep.
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
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
        // Only a text that fills max_len can have been cut; encode just those a second time,
        // whole, to measure them and (unless the head is kept) to take the tokens to keep.
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
                if self.truncation != Truncation::Head {
                    let keep = kept_positions(
                        encoding.get_special_tokens_mask(),
                        self.max_len,
                        self.truncation,
                    );
                    out[i].ids = keep.iter().map(|&k| encoding.get_ids()[k]).collect();
                    out[i].type_ids = keep.iter().map(|&k| encoding.get_type_ids()[k]).collect();
                }
            }
        }
        Ok(out)
    }

    /// The tokens [`Self::encode`] gives `text`, one per id in order (the same truncation), each
    /// with its piece of the vocabulary and the byte range of `text` it came from (`None` for the
    /// special tokens): what an attribution shows a score against; and the length untruncated.
    pub fn tokens(&self, text: &str) -> Result<Tokens> {
        let whole = self
            .untruncated
            .encode(text, true)
            .map_err(|cause| Error::Tokenizer {
                path: self.path.clone(),
                cause,
            })?;
        let special = whole.get_special_tokens_mask();
        let keep = kept_positions(special, self.max_len, self.truncation);
        let tokens = keep
            .into_iter()
            .map(|k| Token {
                id: whole.get_ids()[k],
                type_id: whole.get_type_ids()[k],
                piece: whole.get_tokens()[k].clone(),
                span: (special[k] == 0).then(|| whole.get_offsets()[k]),
            })
            .collect();
        Ok(Tokens {
            tokens,
            full_len: whole.len(),
        })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.truncating.get_vocab_size(true)
    }

    /// The id of `token` in the vocabulary (added tokens included), if it is there.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.truncating.token_to_id(token)
    }

    /// Id used to pad batches: the file's padding token, else `[PAD]`, else `<pad>`, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Maximum tokens per encoding, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn truncation(&self) -> Truncation {
        self.truncation
    }
}

/// The positions of a whole encoding (given by its special-tokens mask) that a cut to `max_len`
/// keeps: the special tokens leading and closing it, and between them the content tokens that
/// `truncation` chooses, in order. All positions when the encoding fits.
pub fn kept_positions(special: &[u32], max_len: usize, truncation: Truncation) -> Vec<usize> {
    let n = special.len();
    if n <= max_len {
        return (0..n).collect();
    }
    let lead = special.iter().take_while(|&&s| s == 1).count();
    let trail = special[lead..]
        .iter()
        .rev()
        .take_while(|&&s| s == 1)
        .count();
    let room = max_len.saturating_sub(lead + trail);
    let head = match truncation {
        Truncation::Head => room,
        Truncation::Tail => 0,
        Truncation::HeadTail { head } => head.min(room),
    };
    let tail = room - head;
    (0..lead + head).chain(n - trail - tail..n).collect()
}
