//! `serve`: label texts over HTTP with a checkpoint (or an ensemble of several) until stopped.
//! `POST /predict` takes a text, a record of the training file's schema or a list of them and
//! answers what `predict` writes for each; `POST /explain` answers what `explain --json` writes;
//! `GET /info` and `GET /health` describe the server. With `--api-key-file` (or `WICK_API_KEY`)
//! every route but `GET /health` needs `Authorization: Bearer <key>`.
//! Concurrent requests share model calls (`wick_trainer::serve`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::builder::RangedU64ValueParser;
use clap::Parser;
use wick_trainer::device::DeviceRequest;
use wick_trainer::infer::Ensemble;
use wick_trainer::serve::{ApiKey, ServeOptions, Served, Server};

/// The environment variable that holds the API key when no `--api-key-file` is given.
const KEY_VARIABLE: &str = "WICK_API_KEY";

/// Serve a trained checkpoint over HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A checkpoint directory (or a run directory, meaning its best/). Repeat it to serve an
    /// ensemble: the mean of the checkpoints' class probabilities.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// The address to listen on; 0.0.0.0 takes requests from other machines too.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// As `predict --min-prob`: no label below this top probability (single-label), the labels
    /// at or above it (multi-label).
    #[arg(long, value_name = "P", value_parser = wick_trainer::cli::probability)]
    min_prob: Option<f64>,
    /// The most inputs one model call takes from concurrent requests (1: no batching).
    #[arg(long, default_value_t = ServeOptions::default().max_batch, value_parser = at_least_one())]
    max_batch: usize,
    /// Requests read and waited on at once.
    #[arg(long, default_value_t = ServeOptions::default().workers, value_parser = at_least_one())]
    workers: usize,
    /// The largest request body taken, in MiB.
    #[arg(long, default_value_t = ServeOptions::default().max_body_bytes >> 20, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    max_body_mib: usize,
    /// A file holding the API key (one line): every request but `GET /health` must then carry
    /// `Authorization: Bearer <key>`. Without it the key comes from $WICK_API_KEY, if set.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// No line per request on stderr.
    #[arg(long)]
    quiet: bool,
}

/// The API key and where it came from: `--api-key-file`, else $WICK_API_KEY, else none.
fn api_key(file: Option<&std::path::Path>) -> Result<Option<(ApiKey, String)>> {
    let (key, source) = match file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the API key from {}", file.display()))?;
            (text, file.display().to_string())
        }
        None => match std::env::var(KEY_VARIABLE) {
            Ok(key) => (key, format!("${KEY_VARIABLE}")),
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(e) => anyhow::bail!("${KEY_VARIABLE}: {e}"),
        },
    };
    // A file's final line break is not part of the key.
    let key = key.strip_suffix('\n').unwrap_or(&key);
    let key = key.strip_suffix('\r').unwrap_or(key);
    let key = ApiKey::new(key).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok(Some((key, source)))
}

fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

fn run(args: Args) -> Result<()> {
    let key = api_key(args.api_key_file.as_deref())?;
    let options = ServeOptions {
        max_batch: args.max_batch,
        workers: args.workers,
        max_body_bytes: args.max_body_mib << 20,
        min_prob: args.min_prob,
        api_key: key.as_ref().map(|(key, _)| key.clone()),
    };
    let (checkpoints, device) = (args.checkpoint.clone(), args.device);
    let quiet = args.quiet;
    let address = format!("{}:{}", args.host, args.port);
    let server = Server::start(
        move || Ensemble::open(&checkpoints, device),
        address.as_str(),
        options,
        move |served: &Served| {
            if !quiet {
                eprintln!(
                    "{} {} {} {} input(s) {:.1} ms",
                    served.method,
                    served.path,
                    served.status,
                    served.inputs,
                    served.elapsed.as_secs_f64() * 1e3
                );
            }
        },
    )
    .with_context(|| format!("serving on {address}"))?;
    let info = server.info();
    eprintln!(
        "serving {} on {} (labels {}); POST /predict, POST /explain, GET /info, GET /health; Ctrl-C stops",
        joined(&info["checkpoints"]),
        info["device"].as_str().unwrap_or("?"),
        joined(&info["labels"]),
    );
    match &key {
        Some((_, source)) => eprintln!(
            "requests need `Authorization: Bearer <key>` with the key of {source}; GET /health is open"
        ),
        None if !server.addr().ip().is_loopback() => eprintln!(
            "warning: listening on {} without an API key: anyone who reaches this address can \
             use the model (--api-key-file or ${KEY_VARIABLE} sets one)",
            server.addr()
        ),
        None => {}
    }
    // On stdout, flushed: a script that started the server reads where it listens.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{}", server.addr())?;
    out.flush()?;
    drop(out);

    wick_trainer::cli::wait_for_signal().context("installing the signal handler")?;
    eprintln!("stopping: answering the requests in progress");
    let stats = server.shutdown();
    eprintln!(
        "stopped after {} request(s) ({} refused): {} input(s) in {} model call(s), the largest {}; \
         {} explained",
        stats.requests, stats.errors, stats.inputs, stats.batches, stats.largest_batch, stats.explained
    );
    Ok(())
}

/// The strings of a JSON list, comma-separated.
fn joined(list: &serde_json::Value) -> String {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn main() -> ExitCode {
    wick_trainer::cli::run_main(|| run(Args::parse()))
}
