//! Wraps a Hugging Face `tokenizer.json`: truncation to `max_len` (special tokens included) that
//! keeps the head of a long text, its tail, or both ([`Truncation`]); text pairs cut longest
//! first, as the tokenizers library cuts them; no padding (batches pad dynamically); and the
//! untruncated length of every text for the summary.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// Token ids of one text or pair, at most `max_len` long, `[CLS]` and `[SEP]` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, `(len,)` with `len <= max_len`.
    pub ids: Vec<u32>,
    /// Segment ids, `(len,)`: all 0 for single texts; for a pair 0 then 1 where the tokenizer
    /// marks segments (BERT's `[CLS] a [SEP] b [SEP]`; RoBERTa's and MPNet's stay 0).
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
    /// Which text of a pair `span` is in: 0 for the first (and for every token of a single
    /// text and every special token), 1 for the pair's second.
    pub segment: usize,
}

/// The kept tokens of one text or pair ([`TextTokenizer::tokens`]).
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
    /// to Fine-Tune BERT for Text Classification?", found 128 + 382 best on long reviews). In a
    /// pair, each text keeps up to `head` tokens of its start within its share.
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
        let inputs: Vec<(&str, Option<&str>)> = texts.iter().map(|&t| (t, None)).collect();
        self.encode_pairs(&inputs)
    }

    /// Encodes texts and pairs (`(text, Some(pair))`) in parallel, one [`Encoding`] per input,
    /// in order. A pair longer than `max_len` is cut longest first: the tokenizers library's
    /// `longest_first` shares, each text keeping its tokens by the truncation.
    pub fn encode_pairs(&self, inputs: &[(&str, Option<&str>)]) -> Result<Vec<Encoding>> {
        let wrap = |cause| Error::Tokenizer {
            path: self.path.clone(),
            cause,
        };
        let encodings = self
            .truncating
            .encode_batch_fast(inputs.iter().map(|&i| input(i)).collect(), true)
            .map_err(wrap)?;
        let mut out: Vec<Encoding> = encodings
            .iter()
            .map(|e| Encoding {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                full_len: e.len(),
            })
            .collect();
        // Only an input that fills max_len can have been cut; encode just those a second time,
        // whole, to measure them and (unless the head is kept) to take the tokens to keep.
        let cut: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].ids.len() >= self.max_len)
            .collect();
        if !cut.is_empty() {
            let whole: Vec<_> = cut.iter().map(|&i| input(inputs[i])).collect();
            let full = self
                .untruncated
                .encode_batch_fast(whole, true)
                .map_err(wrap)?;
            for (&i, encoding) in cut.iter().zip(&full) {
                out[i].full_len = encoding.len();
                if self.truncation != Truncation::Head {
                    let keep =
                        kept_positions(&encoding.get_sequence_ids(), self.max_len, self.truncation);
                    out[i].ids = keep.iter().map(|&k| encoding.get_ids()[k]).collect();
                    out[i].type_ids = keep.iter().map(|&k| encoding.get_type_ids()[k]).collect();
                }
            }
        }
        Ok(out)
    }

    /// The tokens [`Self::encode_pairs`] gives `text` (and its `pair`), one per id in order
    /// (the same truncation), each with its piece of the vocabulary and the byte range of its
    /// text it came from (`None` for the special tokens): what an attribution shows a score
    /// against; and the length untruncated.
    pub fn tokens(&self, text: &str, pair: Option<&str>) -> Result<Tokens> {
        let whole = self
            .untruncated
            .encode(input((text, pair)), true)
            .map_err(|cause| Error::Tokenizer {
                path: self.path.clone(),
                cause,
            })?;
        let sequences = whole.get_sequence_ids();
        let keep = kept_positions(&sequences, self.max_len, self.truncation);
        let tokens = keep
            .into_iter()
            .map(|k| Token {
                id: whole.get_ids()[k],
                type_id: whole.get_type_ids()[k],
                piece: whole.get_tokens()[k].clone(),
                span: sequences[k].map(|_| whole.get_offsets()[k]),
                segment: sequences[k].unwrap_or(0),
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

fn input<'s>((text, pair): (&'s str, Option<&'s str>)) -> tokenizers::EncodeInput<'s> {
    match pair {
        None => text.into(),
        Some(pair) => (text, pair).into(),
    }
}

/// The positions of a whole encoding (given by its sequence ids: `Some(0)` for the tokens of
/// the text, `Some(1)` for those of its pair, `None` for special tokens) that a cut to
/// `max_len` keeps: every special token, and of each text the content tokens that `truncation`
/// chooses within its share, in order. A single text's share is all the room the special tokens
/// leave; a pair's two shares are the tokenizers library's `longest_first` ones
/// ([`pair_shares`]). All positions when the encoding fits.
pub fn kept_positions(
    sequences: &[Option<usize>],
    max_len: usize,
    truncation: Truncation,
) -> Vec<usize> {
    let n = sequences.len();
    if n <= max_len {
        return (0..n).collect();
    }
    let length = |s| sequences.iter().filter(|&&q| q == Some(s)).count();
    let (first, second) = (length(0), length(1));
    let room = max_len.saturating_sub(n - first - second);
    let shares = if second == 0 {
        [room.min(first), 0]
    } else {
        let (a, b) = pair_shares(first, second, room);
        [a, b]
    };
    let lengths = [first, second];
    // Each text's content positions are numbered 0.. in order; keep the chosen ones.
    let mut seen = [0usize; 2];
    (0..n)
        .filter(|&k| match sequences[k] {
            None => true,
            Some(s) => {
                let s = s.min(1);
                let (index, len, share) = (seen[s], lengths[s], shares[s]);
                seen[s] += 1;
                let head = match truncation {
                    Truncation::Head => share,
                    Truncation::Tail => 0,
                    Truncation::HeadTail { head } => head.min(share),
                };
                index < head || index >= len - (share - head)
            }
        })
        .collect()
}

/// How many content tokens each text of a pair of `first` and `second` tokens keeps in `room`,
/// as the tokenizers library's `longest_first` truncation shares it: the shorter text stays
/// whole when it fits in half the room (or the longer one fits in what it leaves), else each
/// gets half (the longer one the odd token).
pub fn pair_shares(first: usize, second: usize, room: usize) -> (usize, usize) {
    if first + second <= room {
        return (first, second);
    }
    let swap = first > second;
    let (short, long) = if swap {
        (second, first)
    } else {
        (first, second)
    };
    let mut shares = if short > room {
        (short, short)
    } else {
        (short, long.min((room - short).max(short)))
    };
    if shares.0 + shares.1 > room {
        shares = (room / 2, room / 2 + room % 2);
    }
    if swap {
        (shares.1, shares.0)
    } else {
        shares
    }
}
