//! How many requests a checkpoint serves on this machine: `wick_trainer::serve::Server` started
//! in this process (as an application would embed it), driven over loopback HTTP by client
//! threads, each sending one text per request and waiting for the answer.
//!
//!     cargo run --release --example serve_load -- --checkpoint runs/default \
//!         [--data data/triage/test.jsonl] [--concurrency 1,4,16] [--max-batch 1,64] [--requests 256]
//!
//! For each max batch and concurrency: requests/s, and the latency a client saw (median, 90th and
//! 99th percentile, from writing the request to reading the whole answer), with the model calls
//! the server made and their mean size. Every round starts with an untimed warm-up of one
//! request per client; the server has already run one prediction before listening.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use wick_trainer::device::DeviceRequest;
use wick_trainer::infer::Ensemble;
use wick_trainer::serve::{ServeOptions, Server};

#[derive(Debug, Parser)]
struct Args {
    /// The checkpoint (or run directory) to serve.
    #[arg(long)]
    checkpoint: PathBuf,
    /// JSONL whose `text` fields are sent, one per request, in turn.
    #[arg(long, default_value = "data/triage/test.jsonl")]
    data: PathBuf,
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Client threads, comma-separated: one round each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// The server's `--max-batch`, comma-separated: 1 turns batching off.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    max_batch: Vec<usize>,
    /// Timed requests per round.
    #[arg(long, default_value_t = 256)]
    requests: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.concurrency.contains(&0) || args.max_batch.contains(&0) {
        bail!("--requests, --concurrency and --max-batch must be at least 1");
    }
    let bodies = request_bodies(&args.data)?;
    println!(
        "serve_load: {} on {} texts of {}; {} timed requests a round after a warm-up request per client",
        args.checkpoint.display(),
        bodies.len(),
        args.data.display(),
        args.requests
    );
    println!(
        "{:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>11} {:>10}",
        "max_batch",
        "concurrency",
        "requests/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "model calls",
        "mean batch"
    );
    for &max_batch in &args.max_batch {
        let (checkpoint, device) = (args.checkpoint.clone(), args.device);
        let options = ServeOptions {
            max_batch,
            workers: args.concurrency.iter().copied().max().unwrap_or(1),
            ..ServeOptions::default()
        };
        let server = Server::start(
            move || Ensemble::open(&[checkpoint], device),
            "127.0.0.1:0",
            options,
            |_| {},
        )
        .context("starting the server")?;
        for &clients in &args.concurrency {
            // Warm-up: one request per client, untimed.
            drive(server.addr(), &bodies, clients, clients)?;
            let before = server.stats();
            let started = Instant::now();
            let mut latencies = drive(server.addr(), &bodies, clients, args.requests)?;
            let elapsed = started.elapsed().as_secs_f64();
            let after = server.stats();
            latencies.sort();
            let quantile = |q: f64| {
                let index =
                    ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
                latencies[index - 1].as_secs_f64() * 1e3
            };
            let calls = after.batches - before.batches;
            println!(
                "{max_batch:>9} {clients:>11} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {calls:>11} {:>10.2}",
                latencies.len() as f64 / elapsed,
                quantile(0.5),
                quantile(0.9),
                quantile(0.99),
                (after.inputs - before.inputs) as f64 / calls.max(1) as f64,
            );
        }
        server.shutdown();
    }
    Ok(())
}

/// One JSON body per text of the file.
fn request_bodies(path: &PathBuf) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bodies = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", path.display(), index + 1))?;
        let Some(text) = row["text"].as_str() else {
            bail!("{}:{}: no string field \"text\"", path.display(), index + 1);
        };
        bodies.push(serde_json::Value::from(text).to_string());
    }
    if bodies.is_empty() {
        bail!("{} holds no texts", path.display());
    }
    Ok(bodies)
}

/// `total` requests from `clients` threads (request i sends text i mod the texts); the latency
/// of each.
fn drive(
    addr: SocketAddr,
    bodies: &[String],
    clients: usize,
    total: usize,
) -> Result<Vec<Duration>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || -> Result<Vec<Duration>> {
                    (client..total)
                        .step_by(clients)
                        .map(|i| post(addr, &bodies[i % bodies.len()]))
                        .collect()
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(total);
        for handle in handles {
            match handle.join() {
                Ok(result) => latencies.extend(result?),
                Err(_) => bail!("a client thread panicked"),
            }
        }
        Ok(latencies)
    })
}

/// One `POST /predict` on its own connection; its latency, after checking the status.
fn post(addr: SocketAddr, body: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let latency = started.elapsed();
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "the server answered: {}",
            String::from_utf8_lossy(&response[..response.len().min(200)])
        );
    }
    Ok(latency)
}
