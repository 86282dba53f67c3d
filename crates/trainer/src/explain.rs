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
//!
//! [`Method::Occlusion`] scores each token instead by what the label's probability loses when
//! that token alone takes the baseline's embedding (Captum's `FeatureAblation` with the pad
//! token as baseline, one token a feature): forward passes only, and no completeness (the scores
//! need not add up to `F(x) - F(x')`; the words sum their tokens' scores all the same).

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Map, Value};
use wick_data::Token;
use wick_model::Classifier;

use crate::error::{Result, TrainError};
use crate::infer::{Ensemble, Predictor};

/// Which attribution a token gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// Integrated gradients, from the baseline to the text ([`integrated_gradients`]).
    #[default]
    IntegratedGradients,
    /// `F(x)` minus `F` of the text with that one token replaced by the baseline's token
    /// ([`occlusion`]).
    Occlusion,
}

impl Method {
    /// The name records carry: `"integrated_gradients"` or `"occlusion"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::IntegratedGradients => "integrated_gradients",
            Self::Occlusion => "occlusion",
        }
    }
}

/// `--method`'s values: `ig` (or `integrated_gradients`) and `occlusion`.
impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "ig" | "integrated_gradients" => Ok(Self::IntegratedGradients),
            "occlusion" => Ok(Self::Occlusion),
            other => Err(format!(
                "{other:?}: `ig` (integrated gradients) or `occlusion`"
            )),
        }
    }
}

/// How attributions are computed.
#[derive(Debug, Clone)]
pub struct Options {
    /// Integrated gradients (the default) or occlusion; occlusion takes no steps (it ignores
    /// `steps`, `tolerance` and `max_steps`).
    pub method: Method,
    /// Quadrature points on the path from the baseline to the text (Captum's `n_steps`).
    pub steps: usize,
    /// Points (occluded texts, for occlusion) per pass; 0: as many as fit in [`PASS_TOKENS`]
    /// tokens.
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
            method: Method::IntegratedGradients,
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
    /// The token scores: the members' mean, when they all tokenize the text alike; empty
    /// otherwise (then see `member_tokens`).
    pub tokens: Vec<TokenScore>,
    /// When the ensemble's members tokenize the text differently (other tokenizers, `max_len`
    /// or truncation), each member's own token scores, in member order; empty otherwise.
    pub member_tokens: Vec<Vec<TokenScore>>,
    /// The word scores: the members' mean (a word a member did not keep counts 0 for it).
    pub words: Vec<WordScore>,
    /// `sum(attributions) - (prob - baseline_prob)`: the quadrature's error (for occlusion, how
    /// far its scores are from adding up).
    pub delta: f64,
    /// How the scores were computed.
    pub method: Method,
    /// The quadrature points used: [`Options::steps`], doubled while the gap was over the
    /// tolerance; 0 for occlusion.
    pub steps: usize,
    /// Whether every member saw the whole text (false: truncated to `max_len`; the words none
    /// kept have no score).
    pub whole: bool,
}

impl Explanation {
    /// The scores' sum: the words', which hold every content token's score (a special token's
    /// is 0).
    pub fn sum(&self) -> f64 {
        self.words.iter().map(|w| w.attribution).sum()
    }

    /// The JSON record `explain --json` writes and `serve`'s `/explain` answers: the input's
    /// `fields`, then `explained` (the label's name), `method`, `prob`, `baseline_prob`, `delta`,
    /// `steps`, `probs` (every label's), `truncated`, and every word's and token's `score` with
    /// its byte range (`start`, `end`; null for a special token), and for a pair its `segment`
    /// (0: the text, 1: the pair; the range is in that text). For an ensemble whose members
    /// tokenize the text differently `tokens` is empty and `member_tokens` holds each member's
    /// list.
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
        let tokens = |tokens: &[TokenScore]| -> Value {
            tokens
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
                .collect()
        };
        let explained = labels.get(self.label).cloned().unwrap_or_default();
        for (key, value) in [
            ("explained", json!(explained)),
            ("method", json!(self.method.name())),
            ("prob", json!(self.prob)),
            ("baseline_prob", json!(self.baseline_prob)),
            ("delta", json!(self.delta)),
            ("steps", json!(self.steps)),
            ("probs", Value::Object(probs)),
            ("truncated", json!(!self.whole)),
            ("words", Value::Array(words)),
            ("tokens", tokens(&self.tokens)),
        ] {
            record.insert(key.to_string(), value);
        }
        if !self.member_tokens.is_empty() {
            let lists = self.member_tokens.iter().map(|list| tokens(list)).collect();
            record.insert("member_tokens".into(), Value::Array(lists));
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
/// member of `ensemble`: the members' mean attributions (the ensemble's probability is the
/// members' mean, and integrated gradients are linear in it). Members that tokenize the text
/// alike share token scores; members that do not (other tokenizers, `max_len` or truncation)
/// are averaged word by word, each member's token scores kept apart.
pub fn explain(
    ensemble: &Ensemble,
    example: &wick_data::Example,
    label: Option<usize>,
    options: &Options,
) -> Result<Explanation> {
    let occluding = options.method == Method::Occlusion;
    if options.steps == 0 && !occluding {
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
    let mut whole = true;
    let mut tokenized = Vec::with_capacity(ensemble.members().len());
    for member in ensemble.members() {
        let own = member.tokenizer.tokens(&text, pair.as_deref())?;
        whole &= own.whole();
        tokenized.push(own.tokens);
    }
    let ids = |tokens: &[Token]| tokens.iter().map(|t| t.id).collect::<Vec<_>>();
    let alike = tokenized.windows(2).all(|w| ids(&w[0]) == ids(&w[1]));
    if alike {
        tokenized.truncate(1);
    }
    let mut steps = if occluding { 0 } else { options.steps };
    let (scores, prob, baseline) = loop {
        let (scores, prob, baseline) =
            ensemble_attributions(ensemble, &tokenized, label, steps, options)?;
        let sum = scores.iter().flatten().sum::<f64>() / scores.len() as f64;
        let delta = sum - (prob - baseline);
        if occluding
            || !needs_more_steps(delta, prob - baseline, options)
            || steps * 2 > options.max_steps
        {
            break (scores, prob, baseline);
        }
        steps *= 2;
    };
    let scored = |tokens: Vec<Token>, scores: Vec<f64>| -> Vec<TokenScore> {
        tokens
            .into_iter()
            .zip(scores)
            .map(|(token, attribution)| TokenScore {
                piece: token.piece,
                span: token.span,
                segment: token.segment,
                attribution,
            })
            .collect()
    };
    let n = scores.len() as f64;
    let (tokens, member_tokens, words) = if alike {
        let mean = (0..tokenized[0].len())
            .map(|i| scores.iter().map(|s| s[i]).sum::<f64>() / n)
            .collect();
        let tokens = scored(tokenized.remove(0), mean);
        let words = words(&text, pair.as_deref(), &tokens);
        (tokens, Vec::new(), words)
    } else {
        let member_tokens: Vec<Vec<TokenScore>> = tokenized
            .into_iter()
            .zip(scores)
            .map(|(tokens, scores)| scored(tokens, scores))
            .collect();
        let words = mean_words(&text, pair.as_deref(), &member_tokens);
        (Vec::new(), member_tokens, words)
    };
    let total: f64 = words.iter().map(|w| w.attribution).sum();
    Ok(Explanation {
        text,
        pair,
        probs,
        label,
        prob,
        baseline_prob: baseline,
        tokens,
        member_tokens,
        words,
        delta: total - (prob - baseline),
        method: options.method,
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

/// Each member's token scores and the members' mean `F(x)` and `F(x')`, with `steps` points:
/// `tokens` holds one tokenization shared by every member, or each member's own.
fn ensemble_attributions(
    ensemble: &Ensemble,
    tokens: &[Vec<Token>],
    label: usize,
    steps: usize,
    options: &Options,
) -> Result<(Vec<Vec<f64>>, f64, f64)> {
    let options = Options {
        steps,
        ..options.clone()
    };
    let (mut scores, mut prob, mut baseline) = (Vec::new(), 0.0, 0.0);
    for (i, member) in ensemble.members().iter().enumerate() {
        let own = &tokens[if tokens.len() == 1 { 0 } else { i }];
        let (s, p, b) = member_attributions(member, own, label, &options)?;
        scores.push(s);
        prob += p;
        baseline += b;
    }
    let n = scores.len().max(1) as f64;
    Ok((scores, prob / n, baseline / n))
}

/// One member's attributions of label `label`'s probability for the text of `tokens` (the
/// member's own tokens), with the member's calibration temperature and `options`: a score per
/// token, `F(x)` and `F(x')` ([`integrated_gradients`], or [`occlusion`] by `options.method`).
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
    match options.method {
        Method::IntegratedGradients => {
            integrated_gradients(&member.model, &member.device, tokens, label, &path)
        }
        Method::Occlusion => occlusion(&member.model, &member.device, tokens, label, &path),
    }
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
    let text = Text::new(tokens, label, temperature);
    let table = model.encoder().word_embeddings().detach();
    let x = table.index_select(&Tensor::new(text.ids.as_slice(), device)?, 0)?;
    let base = text.baseline(tokens, baseline_id);
    let baseline = table.index_select(&Tensor::new(base.as_slice(), device)?, 0)?;
    let difference = (&x - &baseline)?;
    let width = x.dim(1)?;
    let probability = |words: &Tensor, m: usize| text.probability(model, words, m);
    let points = gauss_legendre(path.steps);
    let per_pass = per_pass(path.batch, n);
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
    let mut values = crate::sync::vector(&Tensor::cat(&[&scores, &ends], 0)?)?;
    let ends = values.split_off(n);
    Ok((values, ends[0], ends[1]))
}

/// Texts a pass of `n` tokens each: `batch`, or when it is 0 as many as fit in [`PASS_TOKENS`].
fn per_pass(batch: usize, n: usize) -> usize {
    if batch > 0 {
        batch
    } else {
        (PASS_TOKENS / n.max(1)).max(1)
    }
}

/// The text an attribution explains: its token ids (which give the positions), segment ids,
/// and the label whose probability at `temperature` is explained.
struct Text {
    ids: Vec<u32>,
    types: Vec<u32>,
    label: usize,
    temperature: f64,
}

impl Text {
    fn new(tokens: &[Token], label: usize, temperature: f64) -> Self {
        Self {
            ids: tokens.iter().map(|t| t.id).collect(),
            types: tokens.iter().map(|t| t.type_id).collect(),
            label,
            temperature,
        }
    }

    /// The baseline's ids: `baseline_id` in place of every content token of `tokens` (this
    /// text's), the special tokens kept.
    fn baseline(&self, tokens: &[Token], baseline_id: u32) -> Vec<u32> {
        tokens
            .iter()
            .zip(&self.ids)
            .map(|(t, &id)| if t.span.is_some() { baseline_id } else { id })
            .collect()
    }

    /// The label's probability for `m` texts of this one's length, whose word embeddings are
    /// `words` `(m * n, width)` (the positions, segments and mask stay the text's): `(m,)`.
    fn probability(&self, model: &Classifier, words: &Tensor, m: usize) -> Result<Tensor> {
        let device = words.device();
        let n = self.ids.len();
        let rows = |values: &[u32]| -> Result<Tensor> {
            Ok(Tensor::new(values, device)?.unsqueeze(0)?.repeat((m, 1))?)
        };
        let logits = model.forward_words(
            words,
            &rows(&self.ids)?,
            &rows(&self.types)?,
            &rows(&vec![1; n])?,
        )?;
        // The model's softmax or sigmoid (candle-nn's softmax records no backward).
        let probs = model.probabilities(&(logits.to_dtype(DType::F32)? / self.temperature)?)?;
        Ok(probs.narrow(1, self.label, 1)?.squeeze(1)?)
    }
}

/// Occlusion of `model`'s probability for `label` (at `path.temperature`) for the text of
/// `tokens`: each content token's score is `F(x)` minus `F` of the text whose word embedding at
/// that place is the baseline token's (`path.baseline_id`; positions and segments stay the
/// text's, as in [`integrated_gradients`]); a special token's is 0. Also `F(x)` and `F(x')`
/// (every content token replaced). The occluded texts go through the model `path.batch` at a
/// time (0: [`PASS_TOKENS`] tokens' worth), forward only; the host reads the probabilities once,
/// at the end. `path.steps` is not used.
pub fn occlusion(
    model: &Classifier,
    device: &Device,
    tokens: &[Token],
    label: usize,
    path: &Integration,
) -> Result<(Vec<f64>, f64, f64)> {
    let n = tokens.len();
    let text = Text::new(tokens, label, path.temperature);
    let content: Vec<usize> = (0..n).filter(|&i| tokens[i].span.is_some()).collect();
    // The words of each text to run: the text, the baseline, then one per content token.
    let mut texts = vec![text.ids.clone(), text.baseline(tokens, path.baseline_id)];
    for &i in &content {
        let mut occluded = text.ids.clone();
        occluded[i] = path.baseline_id;
        texts.push(occluded);
    }
    let table = model.encoder().word_embeddings().detach();
    let mut probs = Vec::new();
    for chunk in texts.chunks(per_pass(path.batch, n)) {
        let words = table.index_select(&Tensor::new(chunk.concat().as_slice(), device)?, 0)?;
        probs.push(text.probability(model, &words, chunk.len())?);
    }
    // Sync point: one read of the member's probabilities.
    let probs = crate::sync::vector(&Tensor::cat(&probs, 0)?)?;
    let (text, baseline) = (probs[0], probs[1]);
    let mut scores = vec![0.0; n];
    for (k, &i) in content.iter().enumerate() {
        scores[i] = text - probs[2 + k];
    }
    Ok((scores, text, baseline))
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

/// The members' mean word scores when they tokenize the text differently: each member's words
/// ([`words`]) go to the run of non-white-space characters of their text that holds them, and
/// each run scores the sum of its members' words over the number of members (a member that cut
/// the run adds 0). A run's range is the union of its members' words.
pub fn mean_words(text: &str, pair: Option<&str>, members: &[Vec<TokenScore>]) -> Vec<WordScore> {
    let source = |segment: usize| {
        if segment == 0 {
            text
        } else {
            pair.unwrap_or_default()
        }
    };
    // The run of non-white-space characters holding byte `at` of `source`: its start.
    let run_start = |source: &str, at: usize| {
        let mut at = at.min(source.len());
        while !source.is_char_boundary(at) {
            at -= 1;
        }
        source[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8())
    };
    let mut runs: std::collections::BTreeMap<(usize, usize), WordScore> = Default::default();
    let n = members.len().max(1) as f64;
    for tokens in members {
        for word in words(text, pair, tokens) {
            let start = run_start(source(word.segment), word.span.0);
            let run = runs.entry((word.segment, start)).or_insert(WordScore {
                word: String::new(),
                span: word.span,
                segment: word.segment,
                attribution: 0.0,
            });
            run.span = (run.span.0.min(word.span.0), run.span.1.max(word.span.1));
            run.attribution += word.attribution / n;
        }
    }
    runs.into_values()
        .map(|mut run| {
            run.word = source(run.segment)
                .get(run.span.0..run.span.1)
                .unwrap_or_default()
                .to_string();
            run
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_words_average_members_that_split_the_text_differently() {
        let token = |span: Option<(usize, usize)>, segment: usize, attribution: f64| TokenScore {
            piece: String::new(),
            span,
            segment,
            attribution,
        };
        // "Docs: naïve fix" / pair "ok": one member splits "Docs:" in three pieces and keeps
        // the pair, another in two (a byte-level piece inside "ï" shares its range), and a third
        // cut the text after "Docs:" and drops the colon as its normalizer might.
        let (text, pair) = ("Docs: naïve fix", Some("ok"));
        let members = vec![
            vec![
                token(None, 0, 0.0),
                token(Some((0, 3)), 0, 0.3),
                token(Some((3, 4)), 0, 0.1),
                token(Some((4, 5)), 0, 0.2),
                token(Some((6, 12)), 0, -0.3),
                token(Some((13, 16)), 0, 0.6),
                token(Some((0, 2)), 1, 0.9),
            ],
            vec![
                token(Some((0, 4)), 0, 0.5),
                token(Some((4, 5)), 0, 0.1),
                token(Some((6, 8)), 0, 0.05),
                token(Some((8, 10)), 0, 0.05),
                token(Some((8, 10)), 0, 0.05),
                token(Some((10, 12)), 0, -0.45),
                token(Some((13, 16)), 0, 0.3),
            ],
            vec![token(Some((0, 4)), 0, 0.3), token(None, 0, 0.0)],
        ];
        let words = mean_words(text, pair, &members);
        let got: Vec<(&str, usize, f64)> = words
            .iter()
            .map(|w| (w.word.as_str(), w.segment, w.attribution))
            .collect();
        let want = [
            ("Docs:", 0, (0.6 + 0.6 + 0.3) / 3.0),
            ("naïve", 0, (-0.3 - 0.3) / 3.0),
            ("fix", 0, (0.6 + 0.3) / 3.0),
            ("ok", 1, 0.9 / 3.0),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((word, segment, score), (w, s, a)) in got.iter().zip(want) {
            assert_eq!((*word, *segment), (w, s));
            assert!((score - a).abs() < 1e-12, "{word}: {score} vs {a}");
        }
        // The members' sums, averaged, are the words' sum.
        let mean: f64 = members.iter().flatten().map(|t| t.attribution).sum::<f64>() / 3.0;
        let sum: f64 = words.iter().map(|w| w.attribution).sum();
        assert!((sum - mean).abs() < 1e-12);
    }

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
