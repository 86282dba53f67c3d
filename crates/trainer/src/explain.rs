//! Why a checkpoint gives a text its label: integrated gradients (Sundararajan et al. 2017,
//! <https://arxiv.org/abs/1703.01365>) of one label's probability with respect to the word
//! embeddings, as Captum's `LayerIntegratedGradients` on `embeddings.word_embeddings` computes
//! them. Each token's score is `(x - x') . ∫_0^1 ∇F(x' + α (x - x')) dα` for the text's word
//! embeddings `x` and a baseline `x'` (the same text with every content token replaced by the
//! pad token; the special tokens, positions and segments stay), the integral taken by
//! Gauss-Legendre quadrature (Captum's default). The scores add up to `F(x) - F(x')` (the
//! completeness axiom): how far they miss is each explanation's `delta`, which shrinks as the
//! steps grow. A text whose path turns sharply (a probability that jumps from 0.06 to 0.99 over
//! a short stretch) needs more points than most: the steps double until the gap is within a
//! tolerance of the change ([`Options::tolerance`]).

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Map, Value};
use wick_data::Token;
use wick_model::Classifier;

use crate::error::{Result, TrainError};
use crate::infer::{Ensemble, Predictor};

/// How attributions are computed.
#[derive(Debug, Clone)]
pub struct Options {
    /// Quadrature points on the path from the baseline to the text (Captum's `n_steps`).
    pub steps: usize,
    /// Points per forward and backward pass; 0: as many as fit in [`PASS_TOKENS`] tokens.
    pub batch: usize,
    /// Relative completeness tolerance: while `|delta|` is over `tolerance * max(|F(x) -
    /// F(x')|, 0.01)` the steps double ([`needs_more_steps`]), up to `max_steps`. 0: `steps`
    /// only.
    pub tolerance: f64,
    /// The most steps doubling may reach.
    pub max_steps: usize,
    /// The baseline's token in place of every content token; `None`: the tokenizer's pad token.
    pub baseline: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            steps: 50,
            batch: 0,
            tolerance: 0.05,
            max_steps: 400,
            baseline: None,
        }
    }
}

/// Token rows per pass when [`Options::batch`] is 0: for MiniLM at 128 tokens, 32 points.
pub const PASS_TOKENS: usize = 4096;

/// One token's share of an explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenScore {
    /// The vocabulary's piece.
    pub piece: String,
    /// Its byte range in the explained text (of a pair, the text `segment` names); `None` for a
    /// special token (whose score is 0: the baseline keeps it).
    pub span: Option<(usize, usize)>,
    /// 0: the text (and every special token); 1: the pair's second text.
    pub segment: usize,
    pub attribution: f64,
}

/// A word's share: the tokens whose byte ranges touch, summed (`--offline` is one word of three
/// tokens; the words are the text's runs without white space that the model kept).
#[derive(Debug, Clone, PartialEq)]
pub struct WordScore {
    pub word: String,
    /// Its byte range in the text `segment` names.
    pub span: (usize, usize),
    /// 0: the text; 1: the pair's second text.
    pub segment: usize,
    pub attribution: f64,
}

/// Why a text got (or did not get) one label.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The text as the model read it (the checkpoint's text fields joined and cleaned).
    pub text: String,
    /// The pair's second text, for a checkpoint of text pairs (`data.pair_fields`).
    pub pair: Option<String>,
    /// Every label's probability for the text (the ensemble's mean, calibrated as `predict`'s).
    pub probs: Vec<f32>,
    /// The explained label's index.
    pub label: usize,
    /// Its probability for the text, `F(x)`, as computed for the attribution (f32 weights).
    pub prob: f64,
    /// Its probability for the baseline, `F(x')`.
    pub baseline_prob: f64,
    pub tokens: Vec<TokenScore>,
    pub words: Vec<WordScore>,
    /// `sum(attributions) - (prob - baseline_prob)`: the quadrature's error.
    pub delta: f64,
    /// The quadrature points used: [`Options::steps`], doubled while the gap was over the
    /// tolerance.
    pub steps: usize,
    /// Whether the model saw the whole text (false: truncated to `max_len`; the words it cut
    /// have no score).
    pub whole: bool,
}

impl Explanation {
    pub fn sum(&self) -> f64 {
        self.tokens.iter().map(|t| t.attribution).sum()
    }

    /// The JSON record `explain --json` writes and `serve`'s `/explain` answers: the input's
    /// `fields`, then `explained` (the label's name), `prob`, `baseline_prob`, `delta`, `steps`,
    /// `probs` (every label's), `truncated`, and every word's and token's `score` with its byte
    /// range (`start`, `end`; null for a special token), and for a pair its `segment` (0: the
    /// text, 1: the pair; the range is in that text).
    pub fn record(&self, fields: Map<String, Value>, labels: &[String]) -> Map<String, Value> {
        let mut record = fields;
        let probs: Map<String, Value> = labels
            .iter()
            .zip(&self.probs)
            .map(|(l, &p)| (l.clone(), json!(p)))
            .collect();
        // A pair's entries say which of its texts they are in.
        let with_segment = |mut entry: Value, segment: usize| {
            if self.pair.is_some() {
                entry["segment"] = json!(segment);
            }
            entry
        };
        let words: Vec<Value> = self
            .words
            .iter()
            .map(|w| {
                let entry = json!({"word": w.word, "start": w.span.0, "end": w.span.1, "score": w.attribution});
                with_segment(entry, w.segment)
            })
            .collect();
        let tokens: Vec<Value> = self
            .tokens
            .iter()
            .map(|t| {
                let entry = json!({
                    "token": t.piece,
                    "start": t.span.map(|s| s.0),
                    "end": t.span.map(|s| s.1),
                    "score": t.attribution,
                });
                with_segment(entry, t.segment)
            })
            .collect();
        let explained = labels.get(self.label).cloned().unwrap_or_default();
        for (key, value) in [
            ("explained", json!(explained)),
            ("prob", json!(self.prob)),
            ("baseline_prob", json!(self.baseline_prob)),
            ("delta", json!(self.delta)),
            ("steps", json!(self.steps)),
            ("probs", Value::Object(probs)),
            ("truncated", json!(!self.whole)),
            ("words", Value::Array(words)),
            ("tokens", Value::Array(tokens)),
        ] {
            record.insert(key.to_string(), value);
        }
        record
    }
}

/// Nodes and weights of `n`-point Gauss-Legendre quadrature moved to `[0, 1]`, the nodes
/// ascending: numpy's `leggauss(n)` mapped as Captum's `gausslegendre` maps it.
pub fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    // P_n(x) and its derivative, by the three-term recurrence.
    let legendre = |x: f64| {
        let (mut previous, mut current) = (1.0, x);
        for k in 2..=n {
            let k = k as f64;
            let next = ((2.0 * k - 1.0) * x * current - (k - 1.0) * previous) / k;
            previous = current;
            current = next;
        }
        let derivative = n as f64 * (x * current - previous) / (x * x - 1.0);
        (current, derivative)
    };
    let mut points = vec![(0.0, 0.0); n];
    for i in 0..n.div_ceil(2) {
        // The i-th largest root, from Tricomi's estimate, by Newton's method.
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        for _ in 0..100 {
            let (p, dp) = legendre(x);
            let step = p / dp;
            x -= step;
            if step.abs() < 1e-16 {
                break;
            }
        }
        let (_, dp) = legendre(x);
        let weight = 2.0 / ((1.0 - x * x) * dp * dp);
        points[i] = (0.5 * (1.0 - x), 0.5 * weight);
        points[n - 1 - i] = (0.5 * (1.0 + x), 0.5 * weight);
    }
    points
}

/// Explains `example` (read with the checkpoint's field mapping, so its text is joined and
/// cleaned as in training) for `label` (`None`: the label of highest probability) with every
/// member of `ensemble`: each member's attributions, averaged (the ensemble's probability is the
/// members' mean, and integrated gradients are linear in it). The members must tokenize the text
/// alike.
pub fn explain(
    ensemble: &Ensemble,
    example: &wick_data::Example,
    label: Option<usize>,
    options: &Options,
) -> Result<Explanation> {
    if options.steps == 0 {
        return Err(TrainError::config("--steps", "at least 1 quadrature point"));
    }
    let (text, pair) = (example.text.clone(), example.pair.clone());
    let probs = ensemble
        .predict_examples(std::slice::from_ref(example), &wick_data::Targets::None)?
        .probs
        .pop()
        .unwrap_or_default();
    let label = match label {
        Some(label) => label,
        None => crate::eval::top(&probs),
    };
    let first = ensemble.first();
    let tokenized = first.tokenizer.tokens(&text, pair.as_deref())?;
    let whole = tokenized.whole();
    let tokens = tokenized.tokens;
    for member in &ensemble.members()[1..] {
        let own = member.tokenizer.tokens(&text, pair.as_deref())?.tokens;
        if own.iter().map(|t| t.id).ne(tokens.iter().map(|t| t.id)) {
            return Err(TrainError::Checkpoint {
                path: member.checkpoint.dir.clone(),
                reason: format!(
                    "it tokenizes the text otherwise than {}, the ensemble's first member (its \
                     tokenizer, max_len or truncation differ), so their token scores cannot be \
                     averaged: explain with each alone",
                    first.checkpoint.dir.display()
                ),
            });
        }
    }
    let mut steps = options.steps;
    let (sum, prob, baseline) = loop {
        let (sum, prob, baseline) =
            ensemble_attributions(ensemble, &tokens, label, steps, options)?;
        let delta = sum.iter().sum::<f64>() - (prob - baseline);
        if !needs_more_steps(delta, prob - baseline, options) || steps * 2 > options.max_steps {
            break (sum, prob, baseline);
        }
        steps *= 2;
    };
    let tokens: Vec<TokenScore> = tokens
        .into_iter()
        .zip(sum)
        .map(|(token, attribution)| TokenScore {
            piece: token.piece,
            span: token.span,
            segment: token.segment,
            attribution,
        })
        .collect();
    let words = words(&text, pair.as_deref(), &tokens);
    let total: f64 = tokens.iter().map(|t| t.attribution).sum();
    Ok(Explanation {
        text,
        pair,
        probs,
        label,
        prob,
        baseline_prob: baseline,
        tokens,
        words,
        delta: total - (prob - baseline),
        steps,
        whole,
    })
}

/// Whether the gap `delta` is over the tolerance for a change `change` in probability:
/// `|delta| > tolerance * max(|change|, 0.01)` (0.01: a label the text barely moves is not held
/// to a gap of a fraction of nothing).
pub fn needs_more_steps(delta: f64, change: f64, options: &Options) -> bool {
    options.tolerance > 0.0 && delta.abs() > options.tolerance * change.abs().max(0.01)
}

/// The members' mean token scores, `F(x)` and `F(x')` with `steps` points; every member
/// tokenizes the text as `tokens` (checked by [`explain`]).
fn ensemble_attributions(
    ensemble: &Ensemble,
    tokens: &[Token],
    label: usize,
    steps: usize,
    options: &Options,
) -> Result<(Vec<f64>, f64, f64)> {
    let options = Options {
        steps,
        ..options.clone()
    };
    let mut sums: Option<(Vec<f64>, f64, f64)> = None;
    for member in ensemble.members() {
        let (scores, prob, baseline) = member_attributions(member, tokens, label, &options)?;
        sums = Some(match sums {
            None => (scores, prob, baseline),
            Some((sum, p, b)) => (
                sum.iter().zip(&scores).map(|(a, b)| a + b).collect(),
                p + prob,
                b + baseline,
            ),
        });
    }
    let (sum, prob, baseline) = sums.unwrap_or_default();
    let n = ensemble.members().len() as f64;
    Ok((
        sum.into_iter().map(|s| s / n).collect(),
        prob / n,
        baseline / n,
    ))
}

/// One member's integrated gradients of label `label`'s probability for the text of `tokens`
/// (the member's own tokens), with the member's calibration temperature and `options`: a score
/// per token, `F(x)` and `F(x')` ([`integrated_gradients`]).
pub fn member_attributions(
    member: &Predictor,
    tokens: &[Token],
    label: usize,
    options: &Options,
) -> Result<(Vec<f64>, f64, f64)> {
    let labels = member.labels().len();
    if label >= labels {
        return Err(TrainError::config(
            "--label",
            format!("label index {label}, but the checkpoint has {labels} labels"),
        ));
    }
    let baseline_id = match &options.baseline {
        None => member.tokenizer.pad_id(),
        Some(token) => member.tokenizer.token_id(token).ok_or_else(|| {
            TrainError::config(
                "--baseline",
                format!(
                    "{token:?} is not in the vocabulary of {}",
                    member.checkpoint.tokenizer().display()
                ),
            )
        })?,
    };
    let temperature = member
        .checkpoint
        .calibration
        .as_ref()
        .map_or(1.0, |c| c.temperature);
    let path = Integration {
        baseline_id,
        temperature,
        steps: options.steps,
        batch: options.batch,
    };
    integrated_gradients(&member.model, &member.device, tokens, label, &path)
}

/// The integral integrated gradients take: from which baseline, of which probability, and how.
#[derive(Debug, Clone)]
pub struct Integration {
    /// The baseline's id in place of every content token.
    pub baseline_id: u32,
    /// `F` is the label's probability at this temperature (softmax or sigmoid of logits / T).
    pub temperature: f64,
    /// Quadrature points ([`Options::steps`]).
    pub steps: usize,
    /// Points per pass ([`Options::batch`]).
    pub batch: usize,
}

/// Integrated gradients of `model`'s probability for `label` (at `path.temperature`) for the
/// text of `tokens`, from the baseline that puts `path.baseline_id` in place of every content
/// token (special tokens stay): a score per token, `F(x)` and `F(x')`. The path's points go
/// through the model `path.batch` at a time (0: [`PASS_TOKENS`] tokens' worth), each pass one
/// forward and one backward to the interpolated word embeddings; the host reads the results
/// once, at the end.
pub fn integrated_gradients(
    model: &Classifier,
    device: &Device,
    tokens: &[Token],
    label: usize,
    path: &Integration,
) -> Result<(Vec<f64>, f64, f64)> {
    let Integration {
        baseline_id,
        temperature,
        ..
    } = *path;
    if path.steps == 0 {
        return Err(TrainError::config("--steps", "at least 1 quadrature point"));
    }
    let n = tokens.len();
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let base: Vec<u32> = tokens
        .iter()
        .map(|t| if t.span.is_some() { baseline_id } else { t.id })
        .collect();
    let types: Vec<u32> = tokens.iter().map(|t| t.type_id).collect();
    let table = model.encoder().word_embeddings().detach();
    let x = table.index_select(&Tensor::new(ids.as_slice(), device)?, 0)?;
    let baseline = table.index_select(&Tensor::new(base.as_slice(), device)?, 0)?;
    let difference = (&x - &baseline)?;
    let width = x.dim(1)?;
    let rows = |m: usize, values: &[u32]| -> Result<Tensor> {
        Ok(Tensor::new(values, device)?.unsqueeze(0)?.repeat((m, 1))?)
    };
    // The label's probability for each of `m` interpolated texts `(m * n, width)`.
    let probability = |words: &Tensor, m: usize| -> Result<Tensor> {
        let logits = model.forward_words(
            words,
            &rows(m, &ids)?,
            &rows(m, &types)?,
            &rows(m, &vec![1; n])?,
        )?;
        // The model's softmax or sigmoid (candle-nn's softmax records no backward).
        let probs = model.probabilities(&(logits.to_dtype(DType::F32)? / temperature)?)?;
        Ok(probs.narrow(1, label, 1)?.squeeze(1)?)
    };
    let points = gauss_legendre(path.steps);
    let per_pass = if path.batch > 0 {
        path.batch
    } else {
        (PASS_TOKENS / n.max(1)).max(1)
    };
    let mut gradient: Option<Tensor> = None;
    for chunk in points.chunks(per_pass) {
        let m = chunk.len();
        let alphas: Vec<f32> = chunk.iter().map(|&(a, _)| a as f32).collect();
        let weights: Vec<f32> = chunk.iter().map(|&(_, w)| w as f32).collect();
        let alphas = Tensor::new(alphas.as_slice(), device)?.reshape((m, 1, 1))?;
        let interpolated = baseline
            .unsqueeze(0)?
            .broadcast_add(&difference.unsqueeze(0)?.broadcast_mul(&alphas)?)?
            .reshape((m * n, width))?;
        let interpolated = Var::from_tensor(&interpolated)?;
        let weighted = (probability(interpolated.as_tensor(), m)?
            * Tensor::new(weights.as_slice(), device)?)?
        .sum_all()?;
        let grads = weighted.backward()?;
        let g = grads
            .get(interpolated.as_tensor())
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "no gradient reached the word embeddings: an op without backward".into(),
                )
            })?
            .reshape((m, n, width))?
            .sum(0)?;
        gradient = Some(match gradient {
            None => g,
            Some(sum) => (sum + g)?,
        });
    }
    let Some(gradient) = gradient else {
        return Err(TrainError::config("--steps", "at least 1 quadrature point"));
    };
    let scores = (difference * gradient)?.sum(1)?;
    let ends = probability(&Tensor::cat(&[&x, &baseline], 0)?, 2)?;
    // Sync point: one read of the member's results, the scores then F(x) and F(x').
    let read = crate::sync::matrix(&Tensor::cat(&[&scores, &ends], 0)?.unsqueeze(0)?)?;
    let mut values: Vec<f64> = read.concat().into_iter().map(f64::from).collect();
    let ends = values.split_off(n);
    Ok((values, ends[0], ends[1]))
}

/// Groups scored tokens into words: runs of tokens of one text (`text`, or the `pair` for
/// segment 1) whose byte ranges touch or overlap (a byte-level tokenizer splits one character
/// into tokens of the same range).
pub fn words(text: &str, pair: Option<&str>, tokens: &[TokenScore]) -> Vec<WordScore> {
    let mut words: Vec<WordScore> = Vec::new();
    for token in tokens {
        let Some((start, end)) = token.span else {
            continue;
        };
        match words.last_mut() {
            Some(word) if word.segment == token.segment && start <= word.span.1 => {
                word.span.1 = word.span.1.max(end);
                word.attribution += token.attribution;
            }
            _ => words.push(WordScore {
                word: String::new(),
                span: (start, end),
                segment: token.segment,
                attribution: token.attribution,
            }),
        }
    }
    for word in &mut words {
        let source = if word.segment == 0 {
            text
        } else {
            pair.unwrap_or_default()
        };
        word.word = source
            .get(word.span.0..word.span.1)
            .unwrap_or_default()
            .to_string();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_matches_numpy_and_integrates_polynomials_exactly() {
        // numpy.polynomial.legendre.leggauss(3): nodes -sqrt(3/5), 0, sqrt(3/5); weights 5/9,
        // 8/9, 5/9; moved to [0, 1].
        let r = (0.6f64).sqrt();
        let expected = [
            (0.5 * (1.0 - r), 5.0 / 18.0),
            (0.5, 8.0 / 18.0),
            (0.5 * (1.0 + r), 5.0 / 18.0),
        ];
        for (got, want) in gauss_legendre(3).iter().zip(expected) {
            assert!((got.0 - want.0).abs() < 1e-14, "{got:?} {want:?}");
            assert!((got.1 - want.1).abs() < 1e-14, "{got:?} {want:?}");
        }
        for n in [1, 2, 7, 50, 128] {
            let points = gauss_legendre(n);
            assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "{n}");
            // Exact for degree 2n - 1: ∫_0^1 x^k dx = 1 / (k + 1).
            for k in [0, n, 2 * n - 1] {
                let integral: f64 = points.iter().map(|&(a, w)| w * a.powi(k as i32)).sum();
                assert!(
                    (integral - 1.0 / (k as f64 + 1.0)).abs() < 1e-12,
                    "n {n}, x^{k}: {integral}"
                );
            }
        }
    }

    #[test]
    fn words_join_touching_tokens_and_skip_special_ones() {
        let text = "Docs: explain --offline";
        let token = |piece: &str, span: Option<(usize, usize)>, attribution: f64| TokenScore {
            piece: piece.into(),
            span,
            segment: 0,
            attribution,
        };
        let tokens = [
            token("[CLS]", None, 0.0),
            token("docs", Some((0, 4)), 0.5),
            token(":", Some((4, 5)), 0.25),
            token("explain", Some((6, 13)), -0.125),
            token("-", Some((14, 15)), 0.0625),
            token("-", Some((15, 16)), 0.0625),
            token("offline", Some((16, 23)), 0.125),
            token("[SEP]", None, 0.0),
        ];
        let single = words(text, None, &tokens);
        let got: Vec<(&str, (usize, usize), f64)> = single
            .iter()
            .map(|w| (w.word.as_str(), w.span, w.attribution))
            .collect();
        assert_eq!(
            got,
            [
                ("Docs:", (0, 5), 0.75),
                ("explain", (6, 13), -0.125),
                ("--offline", (14, 23), 0.25)
            ]
        );
        // A pair: the second text's words start again from its own byte 0, and a word never
        // runs across the two texts even where their ranges touch.
        let mut pair = tokens[..3].to_vec();
        pair.push(token("[SEP]", None, 0.0));
        pair.push(TokenScore {
            segment: 1,
            ..token("no", Some((0, 2)), 0.5)
        });
        pair.push(TokenScore {
            segment: 1,
            ..token("pe", Some((2, 4)), 0.25)
        });
        let paired = words(text, Some("nope"), &pair);
        let got: Vec<(&str, usize, f64)> = paired
            .iter()
            .map(|w| (w.word.as_str(), w.segment, w.attribution))
            .collect();
        assert_eq!(got, [("Docs:", 0, 0.75), ("nope", 1, 0.75)]);
    }
}
