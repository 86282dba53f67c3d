//! How faithful and how fast `explain` is on a checkpoint and a file of its schema: for each text,
//! integrated gradients of its predicted label, then the text again with the `k` words of highest
//! score deleted, and with `k` words chosen at random (seeded) deleted: the more the model's
//! probability for the label falls without the words the explanation ranked first, against
//! random ones, the more the scores say what the model uses (the deletion test of Samek et al.
//! 2017, on words as Arras et al. 2017 ran it).
//!
//!     cargo run --release --example explain_check -- --checkpoint runs/default \
//!         [--data data/triage/test.jsonl] [--method ig|occlusion] [--steps 50] [--tolerance 0.05]
//!         [--k 1,3] [--limit N]
//!
//! Prints the time per explanation (the first one, a warm-up, untimed; every explanation ends in
//! a read of its scores to the host, so the clock is read after the device finished), the mean
//! and largest completeness gap |delta| relative to |F(x) - F(x')| (integrated gradients only:
//! occlusion's scores are not meant to add up), and per `k` the mean fall of the label's
//! probability for both deletions.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Parser;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use wick_trainer::device::DeviceRequest;
use wick_trainer::explain::{self, Explanation, Method, Options};
use wick_trainer::infer::Ensemble;

#[derive(Debug, Parser)]
struct Args {
    /// The checkpoint (or run directory) to explain.
    #[arg(long)]
    checkpoint: PathBuf,
    /// A file of the checkpoint's schema (its text fields and filter).
    #[arg(long, default_value = "data/triage/test.jsonl")]
    data: PathBuf,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// `explain --method`: `ig` (integrated gradients) or `occlusion`.
    #[arg(long, default_value = "ig")]
    method: Method,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// `explain --tolerance`: the steps double while the gap is over it (0: off).
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// Words deleted, comma-separated: one comparison each.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    k: Vec<usize>,
    /// Explain only the first N rows (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Seeds the random deletions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `text` without the words at `chosen` (indices into `e.words`).
fn without(e: &Explanation, chosen: &[usize]) -> String {
    let mut spans: Vec<(usize, usize)> = chosen.iter().map(|&i| e.words[i].span).collect();
    spans.sort_unstable();
    let mut out = String::with_capacity(e.text.len());
    let mut at = 0;
    for (start, end) in spans {
        out.push_str(&e.text[at..start]);
        at = end;
    }
    out.push_str(&e.text[at..]);
    out
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.k.contains(&0) || args.steps == 0 {
        bail!("--k and --steps must be at least 1");
    }
    let ensemble = Ensemble::open_as(&[&args.checkpoint], args.device, Some(DType::F32))?;
    let mut rows = ensemble.first().read_unlabelled(&args.data)?;
    if args.limit > 0 {
        rows.truncate(args.limit);
    }
    let options = Options {
        method: args.method,
        steps: args.steps,
        tolerance: args.tolerance,
        ..Options::default()
    };
    let device = &ensemble.first().device_name;
    // Warm-up: the first explanation allocates and (on an accelerator) compiles.
    let Some(first) = rows.first() else {
        bail!("{} has no rows", args.data.display())
    };
    explain::explain(&ensemble, first, None, &options)?;
    let start = Instant::now();
    let mut explanations = Vec::with_capacity(rows.len());
    for row in &rows {
        explanations.push(explain::explain(&ensemble, row, None, &options)?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = explanations
        .iter()
        .map(|e| e.tokens.len() + e.member_tokens.iter().map(Vec::len).sum::<usize>())
        .sum();
    println!(
        "explain_check: {} on {} rows of {} ({device}), {}: {:.1} ms per explanation ({:.0} tokens on average), {:.1} s in all",
        args.checkpoint.display(),
        rows.len(),
        args.data.display(),
        match args.method {
            Method::IntegratedGradients => format!("{} steps", args.steps),
            Method::Occlusion => "occlusion".to_string(),
        },
        1e3 * seconds / rows.len() as f64,
        tokens as f64 / rows.len() as f64,
        seconds
    );
    let gaps: Vec<f64> = explanations
        .iter()
        .map(|e| e.delta.abs() / (e.prob - e.baseline_prob).abs().max(1e-6))
        .collect();
    let over = gaps.iter().filter(|&&g| g > 0.05).count();
    let doubled = explanations.iter().filter(|e| e.steps > args.steps).count();
    if args.method == Method::IntegratedGradients {
        println!(
        "completeness: |delta| / |F(x) - F(x')| mean {:.4}, largest {:.4}; over 5% for {over} of {} texts; steps doubled for {doubled} (to {} at most)",
        gaps.iter().sum::<f64>() / gaps.len() as f64,
        gaps.iter().copied().fold(0.0, f64::max),
        gaps.len(),
        explanations.iter().map(|e| e.steps).max().unwrap_or(0)
    );
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    println!(
        "{:>3} {:>6} {:>14} {:>18} {:>18} {:>22}",
        "k", "texts", "mean prob", "drop: top words", "drop: random", "top drops more, texts"
    );
    for &k in &args.k {
        let mut texts = Vec::new();
        let mut kept = Vec::new();
        for (i, e) in explanations.iter().enumerate() {
            // Texts with more than k words, so that the deletion leaves something.
            if e.words.len() <= k {
                continue;
            }
            let mut order: Vec<usize> = (0..e.words.len()).collect();
            order.sort_by(|&a, &b| e.words[b].attribution.total_cmp(&e.words[a].attribution));
            texts.push(without(e, &order[..k]));
            order.shuffle(&mut rng);
            texts.push(without(e, &order[..k]));
            kept.push(i);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let probs = ensemble.predict_texts(&refs)?;
        let (mut top, mut random, mut wins, mut base) = (0.0, 0.0, 0, 0.0);
        for (j, &i) in kept.iter().enumerate() {
            let e = &explanations[i];
            let before = f64::from(e.probs[e.label]);
            let after_top = f64::from(probs[2 * j][e.label]);
            let after_random = f64::from(probs[2 * j + 1][e.label]);
            base += before;
            top += before - after_top;
            random += before - after_random;
            wins += usize::from(after_top < after_random);
        }
        let n = kept.len().max(1) as f64;
        println!(
            "{k:>3} {:>6} {:>14.4} {:>18.4} {:>18.4} {:>22}",
            kept.len(),
            base / n,
            top / n,
            random / n,
            format!("{wins} of {}", kept.len())
        );
    }
    Ok(())
}
