//! `explain`: which words make a checkpoint give a text its label. Integrated gradients of the
//! label's probability with respect to the word embeddings (`wick_trainer::explain`), per token
//! and per word; the inputs are `predict`'s (arguments, `--data`, or JSONL on stdin).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Parser;
use serde_json::Value;
use wick_trainer::device::DeviceRequest;
use wick_trainer::explain::{self, Explanation, Method, Options, WordScore};
use wick_trainer::infer::Ensemble;

#[path = "../inputs.rs"]
mod inputs;

/// Show which words make a checkpoint give a text its label (integrated gradients, or
/// occlusion).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A checkpoint directory (or a run directory, meaning its best/). Repeat it for an
    /// ensemble: its members' scores are averaged (word by word where they tokenize the text
    /// differently).
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// The label to explain (by name); without it, each text's most probable label.
    #[arg(long)]
    label: Option<String>,
    /// How each token is scored: integrated gradients (`ig`), or occlusion (`occlusion`: what
    /// the label's probability loses when that token alone is replaced by the baseline's token;
    /// forward passes only, and its scores need not add up to the change; --steps, --tolerance
    /// and --max-steps do not apply).
    #[arg(long, default_value = "ig")]
    method: Method,
    /// Quadrature points on the path from the baseline to the text (Captum's n_steps). The
    /// scores' sum misses the change in probability by `delta`, which more steps shrink.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// While |delta| is over this share of the change in probability (at least 0.01), the
    /// steps double, up to --max-steps; 0 keeps --steps.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// The most steps doubling may reach.
    #[arg(long, default_value_t = 400)]
    max_steps: usize,
    /// Points (occluded texts) per pass (memory against speed); 0: as many as fit in 4096
    /// tokens.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// The token that replaces every word of the text in the baseline (default: the
    /// tokenizer's pad token, as in Captum's BERT tutorial).
    #[arg(long)]
    baseline: Option<String>,
    /// Words listed for and against the label in the text output.
    #[arg(long, default_value_t = 8)]
    top: usize,
    /// One JSON line per input instead of text: its fields, the label, probabilities, every
    /// word's and token's score with its byte range.
    #[arg(long)]
    json: bool,
    /// Also write an HTML page with every text's words shaded by their scores.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// A JSONL, CSV or Parquet file of the schema the checkpoint was trained on (its text
    /// fields and filter), as for `predict`.
    #[arg(long, conflicts_with = "texts")]
    data: Option<PathBuf>,
    /// With --data holding labels (single-label): explain only the rows the checkpoint gets
    /// wrong, each for the label it predicted, with the row's line and its own label.
    #[arg(long, conflicts_with = "label")]
    errors: bool,
    /// Texts to explain; without any (and without --data), JSONL objects on stdin, as for
    /// `predict`.
    texts: Vec<String>,
    /// For a checkpoint of text pairs (`data.pair_fields`): the second text of each text, in
    /// order (repeat it once per text).
    #[arg(long = "pair", value_name = "TEXT", conflicts_with = "data")]
    pairs: Vec<String>,
}

fn run(args: Args) -> Result<()> {
    // Checked before the model loads or stdin is read.
    if !(0.0..1.0).contains(&args.tolerance) {
        bail!("--tolerance {}: a share in [0, 1)", args.tolerance);
    }
    if args.steps == 0 {
        bail!("--steps 0: at least 1 quadrature point");
    }
    if args.errors && args.data.is_none() {
        bail!("--errors needs --data: a labelled file of the checkpoint's schema");
    }
    let ensemble = Ensemble::open_as(&args.checkpoint, args.device, Some(DType::F32))?;
    let labels = ensemble.labels().to_vec();
    let label = match &args.label {
        None => None,
        Some(name) => match labels.iter().position(|l| l == name) {
            Some(i) => Some(i),
            None => bail!("--label {name:?}: the checkpoint's labels are {labels:?}"),
        },
    };
    // Each input with the heading of its report.
    let inputs: Vec<(String, wick_data::Example)> = match (&args.data, args.errors) {
        (Some(path), true) => misclassified(&ensemble, path)?,
        _ => inputs::read(&ensemble, &args.texts, &args.pairs, args.data.as_deref())?
            .into_iter()
            .enumerate()
            .map(|(i, example)| ((i + 1).to_string(), example))
            .collect(),
    };
    let options = Options {
        method: args.method,
        steps: args.steps,
        batch: args.batch,
        tolerance: args.tolerance,
        max_steps: args.max_steps,
        baseline: args.baseline.clone(),
    };
    let color = !args.json && std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut page = args.html.as_ref().map(|_| String::new());
    for (heading, example) in &inputs {
        let explanation = explain::explain(&ensemble, example, label, &options)
            .with_context(|| format!("input {heading}"))?;
        if args.json {
            let record = explanation.record(example.fields.clone(), &labels);
            writeln!(out, "{}", Value::Object(record))?;
        } else {
            write!(
                out,
                "{}",
                text_report(heading, &explanation, &labels, &options, args.top, color)
            )?;
        }
        if let Some(page) = &mut page {
            html_section(page, heading, &explanation, &labels);
        }
    }
    if let (Some(path), Some(page)) = (&args.html, page) {
        std::fs::write(path, html_page(&page))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The rows of a labelled file that the ensemble labels wrongly, headed by their line and own
/// label; what was found goes to stderr.
fn misclassified(ensemble: &Ensemble, path: &Path) -> Result<Vec<(String, wick_data::Example)>> {
    let data = &ensemble.first().checkpoint.config.data;
    if data.multi_label {
        bail!("--errors: for single-label checkpoints (a multi-label row is not right or wrong as a whole)");
    }
    let (rows, targets, predictions) = ensemble.predict_file(path)?;
    let wick_data::Targets::Single(gold) = targets else {
        bail!("--errors: {} has no single labels", path.display());
    };
    let labels = ensemble.labels();
    let predicted = wick_trainer::eval::argmax(&predictions.probs);
    let wrong: Vec<(String, wick_data::Example)> = rows
        .into_iter()
        .zip(gold)
        .zip(predicted)
        .filter(|&((_, g), p)| p != g)
        .map(|((row, g), _)| {
            let heading = format!(
                "{}:{}, labelled {}",
                path.display(),
                row.line,
                labels[g as usize]
            );
            (heading, row)
        })
        .collect();
    eprintln!(
        "{} of {} rows of {} are labelled wrongly; explaining the label each was given",
        wrong.len(),
        predictions.probs.len(),
        path.display()
    );
    Ok(wrong)
}

/// The text report of one input: the label, the check of completeness, the words most for and
/// against it, and (on a terminal) the text shaded by the scores.
fn text_report(
    heading: &str,
    e: &Explanation,
    labels: &[String],
    options: &Options,
    top: usize,
    color: bool,
) -> String {
    let mut s = String::new();
    let others: Vec<String> = labels
        .iter()
        .zip(&e.probs)
        .enumerate()
        .filter(|&(i, _)| i != e.label)
        .map(|(_, (l, p))| format!("{l} {p:.3}"))
        .collect();
    let _ = writeln!(
        s,
        "{heading}: {} {:.3} ({})",
        labels[e.label],
        e.probs[e.label],
        others.join(", ")
    );
    let truncated = if e.whole {
        ""
    } else {
        "; the text was truncated, cut words have no score"
    };
    let _ = match e.method {
        Method::IntegratedGradients => writeln!(
            s,
            "   scores sum to {:+.4} = {:.4} - {:.4} (the baseline's), delta {:+.1e} with {} \
             steps{truncated}",
            e.sum(),
            e.prob,
            e.baseline_prob,
            e.delta,
            e.steps,
        ),
        Method::Occlusion => writeln!(
            s,
            "   occlusion: a word scores the drops from {:.4} when each of its tokens alone is \
             replaced; the scores sum to {:+.4}, replacing every token drops it by \
             {:+.4}{truncated}",
            e.prob,
            e.sum(),
            e.prob - e.baseline_prob,
        ),
    };
    if e.method == Method::IntegratedGradients
        && explain::needs_more_steps(e.delta, e.prob - e.baseline_prob, options)
    {
        let _ = writeln!(
            s,
            "   the gap is over --tolerance {} of the change at --max-steps {}: read the scores \
             as rough, or raise --max-steps",
            options.tolerance, options.max_steps
        );
    }
    let mut ranked: Vec<&WordScore> = e.words.iter().collect();
    ranked.sort_by(|a, b| b.attribution.total_cmp(&a.attribution));
    let list = |words: Vec<&WordScore>| {
        if words.is_empty() {
            return "(no word)".to_string();
        }
        words
            .iter()
            .map(|w| {
                let pair = if w.segment == 1 { " (pair)" } else { "" };
                format!("{}{pair} {:+.3}", w.word, w.attribution)
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let positive: Vec<&WordScore> = ranked
        .iter()
        .copied()
        .filter(|w| w.attribution > 0.0)
        .take(top)
        .collect();
    let negative: Vec<&WordScore> = ranked
        .iter()
        .rev()
        .copied()
        .filter(|w| w.attribution < 0.0)
        .take(top)
        .collect();
    let _ = writeln!(s, "   for:     {}", list(positive));
    let _ = writeln!(s, "   against: {}", list(negative));
    if color {
        let _ = writeln!(s, "   {}", shaded(e));
    }
    s
}

/// The largest absolute word score (at least a tiny positive number).
fn scale(e: &Explanation) -> f64 {
    e.words
        .iter()
        .map(|w| w.attribution.abs())
        .fold(1e-12, f64::max)
}

/// Red-green shade of a score against `scale`: (r, g, b).
fn shade(score: f64, scale: f64) -> (u8, u8, u8) {
    let t = (score.abs() / scale).min(1.0);
    let fade = (255.0 * (1.0 - 0.6 * t)) as u8;
    if score >= 0.0 {
        (fade, 255, fade)
    } else {
        (255, fade, fade)
    }
}

/// The text (and a pair's second text, after a rule) with each word drawn by `word` (given its
/// shade) and the text between words by `plain`.
fn render(
    e: &Explanation,
    plain: impl Fn(&str) -> String,
    word: impl Fn(&WordScore, (u8, u8, u8)) -> String,
) -> String {
    let scale = scale(e);
    let mut s = String::new();
    for (segment, text) in std::iter::once(&e.text).chain(&e.pair).enumerate() {
        if segment > 0 {
            s.push_str(&plain("\n--- pair ---\n"));
        }
        let mut at = 0;
        for w in e.words.iter().filter(|w| w.segment == segment) {
            s.push_str(&plain(text.get(at..w.span.0).unwrap_or_default()));
            s.push_str(&word(w, shade(w.attribution, scale)));
            at = w.span.1;
        }
        s.push_str(&plain(text.get(at..).unwrap_or_default()));
    }
    s
}

/// The text with each word's background shaded (24-bit ANSI colours).
fn shaded(e: &Explanation) -> String {
    render(e, str::to_string, |w, (r, g, b)| {
        format!("\x1b[48;2;{r};{g};{b}m\x1b[30m{}\x1b[0m", w.word)
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_section(page: &mut String, heading: &str, e: &Explanation, labels: &[String]) {
    let _ = write!(
        page,
        "<section><h2>{}: {} {:.3}</h2><p class=\"sum\">{} scores sum to {:+.4} (probability \
         {:.4}, baseline {:.4}, delta {:+.1e}){}</p><pre>",
        escape(heading),
        escape(&labels[e.label]),
        e.probs[e.label],
        e.method.name().replace('_', " "),
        e.sum(),
        e.prob,
        e.baseline_prob,
        e.delta,
        if e.whole {
            ""
        } else {
            "; truncated: cut words have no score"
        }
    );
    page.push_str(&render(e, escape, |w, (r, g, b)| {
        format!(
            "<span style=\"background:rgb({r},{g},{b})\" title=\"{:+.4}\">{}</span>",
            w.attribution,
            escape(&w.word)
        )
    }));
    page.push_str("</pre></section>\n");
}

fn html_page(body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>wick explain</title><style>\
         body{{font-family:sans-serif;max-width:60em;margin:auto}}pre{{white-space:pre-wrap;\
         font-size:0.95em}}.sum{{color:#555}}</style></head><body>\n<p>Green words raise the \
         label's probability, red ones lower it (integrated gradients; hover for a word's \
         score).</p>\n{body}</body></html>\n"
    )
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
