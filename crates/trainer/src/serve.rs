//! Serving a checkpoint (or an ensemble) over HTTP. `POST /predict` takes a text, a record of the
//! training file's schema, or a list of them, and answers for each what `predict` writes;
//! `POST /explain` takes the same and answers what `explain --json` writes; `GET /info`
//! describes the model and what was served, `GET /health` says the server is up. With an
//! [`ApiKey`] every route but `GET /health` needs `Authorization: Bearer <key>`.
//!
//! One thread owns the model: it opens it, so the model never crosses threads, and runs every
//! forward pass. Request threads parse, queue their inputs to it and wait. When it is free it
//! takes the first queued request and every one queued behind it (up to
//! [`ServeOptions::max_batch`] inputs) into one call, so concurrent requests share forward
//! passes (dynamic batching, as text-embeddings-inference does) and a request to an idle server
//! waits for no company.

use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tiny_http::{Header, Method, Request, Response};
use wick_data::{json_kind, unlabelled_record, DataConfig, Example, Location, Targets, Unit};

use crate::error::{Result, TrainError};
use crate::eval::prediction_record;
use crate::explain::{self, Explanation};
use crate::infer::Ensemble;

/// How the server batches, reads requests and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// The most inputs one model call takes from the queue; a request with more runs alone.
    pub max_batch: usize,
    /// Request threads: how many requests are read, parsed and waited on at once.
    pub workers: usize,
    /// The largest request body read, in bytes; a larger one gets 413.
    pub max_body_bytes: usize,
    /// As `predict --min-prob`: no label below this top probability (single-label), or the
    /// labels at or above it (multi-label).
    pub min_prob: Option<f64>,
    /// When set, every request but `GET /health` must carry `Authorization: Bearer <key>`;
    /// others get 401.
    pub api_key: Option<ApiKey>,
}

/// The secret a client must send as `Authorization: Bearer <key>`. Its `Debug` does not show it,
/// and it is compared in time that does not depend on where a guess goes wrong.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key of visible ASCII characters (what an HTTP header carries), at least one.
    pub fn new(key: &str) -> std::result::Result<Self, String> {
        if key.is_empty() {
            return Err("the API key is empty".into());
        }
        if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the API key holds {c:?}: only visible ASCII characters (no spaces) can travel \
                 in an Authorization header"
            ));
        }
        Ok(Self(key.to_string()))
    }

    /// Whether an `Authorization` header value is `Bearer <this key>` (the scheme in any case).
    fn admits(&self, authorization: &str) -> bool {
        let Some((scheme, token)) = authorization.trim().split_once(' ') else {
            return false;
        };
        let (token, key) = (token.trim().as_bytes(), self.0.as_bytes());
        // Every byte is compared whatever the first difference: the answer's timing tells a
        // guesser nothing but the key's length.
        scheme.eq_ignore_ascii_case("bearer")
            && token.len() == key.len()
            && token
                .iter()
                .zip(key)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_batch: 64,
            workers: 8,
            max_body_bytes: 16 << 20,
            min_prob: None,
            api_key: None,
        }
    }
}

/// One answered request, for the caller's access log.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Inputs labelled or explained (0 for other routes and refused requests).
    pub inputs: usize,
    /// From the request's arrival at a request thread to its answer being written.
    pub elapsed: Duration,
}

/// What the server has done since it started (in `GET /info` under `"served"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Requests answered, refused ones included.
    pub requests: u64,
    /// Requests answered with a 4xx or 5xx status.
    pub errors: u64,
    /// Inputs labelled by `POST /predict`.
    pub inputs: u64,
    /// Model calls: `inputs / batches` is the mean batch.
    pub batches: u64,
    /// The most inputs one model call took.
    pub largest_batch: u64,
    /// Inputs explained (`POST /explain`, answered), not counted in `batches`.
    pub explained: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    inputs: AtomicU64,
    batches: AtomicU64,
    largest_batch: AtomicU64,
    explained: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::SeqCst),
            errors: self.errors.load(Ordering::SeqCst),
            inputs: self.inputs.load(Ordering::SeqCst),
            batches: self.batches.load(Ordering::SeqCst),
            largest_batch: self.largest_batch.load(Ordering::SeqCst),
            explained: self.explained.load(Ordering::SeqCst),
        }
    }
}

/// What the model thread sends back for a job: its answers, or the error that stopped it.
type Reply<T> = Sender<std::result::Result<Vec<T>, String>>;

/// One request's inputs, queued to the model thread, and where their answers go.
enum Job {
    /// Probabilities: batched with the other predictions queued.
    Predict {
        examples: Vec<Example>,
        reply: Reply<Vec<f32>>,
    },
    /// Explanations of `label` (`None`: each input's most probable label): run alone, one
    /// input after another.
    Explain {
        examples: Vec<Example>,
        label: Option<usize>,
        method: explain::Method,
        reply: Reply<Explanation>,
    },
}

impl Job {
    /// Its weight against [`ServeOptions::max_batch`]: an explanation never shares a call.
    fn size(&self) -> usize {
        match self {
            Job::Predict { examples, .. } => examples.len(),
            Job::Explain { .. } => usize::MAX,
        }
    }
}

/// What the request threads know of the model, read once by the model thread.
#[derive(Debug, Clone)]
struct ModelInfo {
    /// The static part of `GET /info`.
    info: Map<String, Value>,
    labels: Vec<String>,
    data: DataConfig,
}

/// A running server; [`Server::shutdown`] (or dropping it) stops it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    model: Option<JoinHandle<()>>,
    context: Arc<Context>,
}

/// Everything a request thread reads.
struct Context {
    model: ModelInfo,
    options: ServeOptions,
    counters: Arc<Counters>,
    log: Box<dyn Fn(&Served) + Send + Sync>,
}

impl std::fmt::Debug for Context {
    // By hand: the access-log callback has no `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("model", &self.model)
            .field("options", &self.options)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `addr` (port 0 picks a free one), opens the model with `open` on the model thread,
    /// runs one warm-up prediction there, and starts answering. Returns once the model is ready
    /// to serve, or with the error that stopped it (the address taken, a bad checkpoint, ...).
    /// `log` is called once per answered request, from the request threads.
    pub fn start(
        open: impl FnOnce() -> Result<Ensemble> + Send + 'static,
        addr: impl ToSocketAddrs,
        options: ServeOptions,
        log: impl Fn(&Served) + Send + Sync + 'static,
    ) -> Result<Self> {
        if options.max_batch == 0 || options.workers == 0 || options.max_body_bytes == 0 {
            return Err(TrainError::Serve(format!(
                "max_batch, workers and max_body_bytes must be at least 1: {options:?}"
            )));
        }
        let http = tiny_http::Server::http(addr)
            .map_err(|e| TrainError::Serve(format!("cannot listen: {e}")))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| TrainError::Serve("the server has no IP address".into()))?;

        let counters = Arc::new(Counters::default());
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        let model_counters = Arc::clone(&counters);
        let max_batch = options.max_batch;
        let model = std::thread::Builder::new()
            .name("wick-serve-model".into())
            .spawn(move || {
                let opened = open().and_then(|ensemble| {
                    warm_up(&ensemble)?;
                    let info = model_info(&ensemble);
                    Ok((ensemble, info))
                });
                match opened {
                    Ok((ensemble, info)) => {
                        let _ = ready_tx.send(Ok(info));
                        run_model(&ensemble, &queue, max_batch, &model_counters);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| TrainError::Serve(format!("cannot start the model thread: {e}")))?;
        let model_info = match ready.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(TrainError::Serve("the model thread ended at start".into())),
        };

        let context = Arc::new(Context {
            model: model_info,
            options,
            counters,
            log: Box::new(log),
        });
        let http = Arc::new(http);
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Self {
            addr,
            stop: Arc::clone(&stop),
            workers: Vec::with_capacity(context.options.workers),
            model: Some(model),
            context: Arc::clone(&context),
        };
        for index in 0..context.options.workers {
            let (http, stop, context, sender) = (
                Arc::clone(&http),
                Arc::clone(&stop),
                Arc::clone(&context),
                jobs.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("wick-serve-{index}"))
                .spawn(move || {
                    // Polled, so that a stop is seen within one period; a request is taken as
                    // soon as it arrives.
                    while !stop.load(Ordering::SeqCst) {
                        match http.recv_timeout(Duration::from_millis(50)) {
                            Ok(Some(request)) => handle(request, &context, &sender),
                            Ok(None) => {}
                            // A connection that failed before its request was read.
                            Err(_) => {}
                        }
                    }
                });
            match spawned {
                Ok(worker) => server.workers.push(worker),
                Err(e) => {
                    // The model thread ends once every sender is gone: this one first, then
                    // the started workers' as `server` drops (stopping and joining them).
                    drop(jobs);
                    return Err(TrainError::Serve(format!(
                        "cannot start a request thread: {e}"
                    )));
                }
            }
        }
        Ok(server)
    }

    /// The address bound (with the port chosen when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The model's description, as `GET /info` gives it without `"served"`.
    pub fn info(&self) -> &Map<String, Value> {
        &self.context.model.info
    }

    pub fn stats(&self) -> Stats {
        self.context.counters.snapshot()
    }

    /// Stops taking requests, answers those already taken, ends the threads and returns what
    /// was served. Dropping the server does the same.
    pub fn shutdown(mut self) -> Stats {
        self.stop_and_join();
        self.context.counters.snapshot()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        // The request threads held the queue's senders: with them gone the model thread ends.
        if let Some(model) = self.model.take() {
            let _ = model.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The model's side of `GET /info`, and what request threads need to read inputs.
fn model_info(ensemble: &Ensemble) -> ModelInfo {
    let first = ensemble.first();
    let config = &first.checkpoint.config;
    let model = match (&config.model.id, &config.model.path) {
        (Some(id), _) => Value::from(id.clone()),
        (None, Some(path)) => Value::from(path.display().to_string()),
        (None, None) => Value::Null,
    };
    let members = ensemble.members();
    let info = Map::from_iter(
        [
            (
                "checkpoints",
                json!(members
                    .iter()
                    .map(|m| m.checkpoint.dir.display().to_string())
                    .collect::<Vec<_>>()),
            ),
            ("model", model),
            ("labels", json!(first.labels())),
            ("multi_label", json!(config.data.multi_label)),
            ("text_fields", json!(config.data.text_fields)),
            ("text_separator", json!(config.data.text_separator)),
            ("pair_fields", json!(config.data.pair_fields)),
            (
                "max_len",
                json!(members
                    .iter()
                    .map(|m| m.checkpoint.config.data.max_len)
                    .collect::<Vec<_>>()),
            ),
            (
                "temperature",
                json!(members
                    .iter()
                    .map(|m| m.checkpoint.calibration.as_ref().map(|c| c.temperature))
                    .collect::<Vec<_>>()),
            ),
            ("device", json!(first.device_name)),
        ]
        .map(|(key, value)| (key.to_string(), value)),
    );
    ModelInfo {
        info,
        labels: first.labels().to_vec(),
        data: config.data.clone(),
    }
}

/// One prediction before the first request, so that it does not pay for first use (kernel
/// compilation, buffer pools), and so that a model that cannot predict fails at start.
fn warm_up(ensemble: &Ensemble) -> Result<()> {
    let data = &ensemble.first().checkpoint.config.data;
    let example = wick_data::Example {
        text: "warm-up".into(),
        pair: (!data.pair_fields.is_empty()).then(|| "warm-up".into()),
        target: wick_data::Target::None,
        line: 1,
        fields: Default::default(),
    };
    ensemble.predict_examples(&[example], &wick_data::Targets::None)?;
    Ok(())
}

/// The model thread's loop: one model call per batch of queued predictions, and each
/// explanation job on its own, until every sender is gone.
fn run_model(ensemble: &Ensemble, queue: &Receiver<Job>, max_batch: usize, counters: &Counters) {
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        if let Job::Explain {
            examples,
            label,
            method,
            reply,
        } = first
        {
            let options = explain::Options {
                method,
                ..explain::Options::default()
            };
            let explained = examples
                .iter()
                .map(|example| explain::explain(ensemble, example, label, &options))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| e.to_string());
            if let Ok(done) = &explained {
                counters
                    .explained
                    .fetch_add(done.len() as u64, Ordering::SeqCst);
            }
            let _ = reply.send(explained);
            continue;
        }
        let batch = gather(first, queue, max_batch, Job::size, &mut held);
        let mut replies = Vec::with_capacity(batch.len());
        let mut examples = Vec::new();
        for job in batch {
            if let Job::Predict {
                examples: mut own,
                reply,
            } = job
            {
                replies.push((reply, own.len()));
                examples.append(&mut own);
            }
        }
        let result = ensemble.predict_examples(&examples, &Targets::None);
        counters.batches.fetch_add(1, Ordering::SeqCst);
        counters
            .largest_batch
            .fetch_max(examples.len() as u64, Ordering::SeqCst);
        match result {
            Ok(predictions) => {
                let mut rows = predictions.probs.into_iter();
                for (reply, size) in replies {
                    let _ = reply.send(Ok(rows.by_ref().take(size).collect()));
                }
            }
            Err(e) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// `first` and the items queued behind it, taken while their sizes fit in `max` together; the
/// first that does not fit is `held` for the next call. Never waits: what is queued now goes.
fn gather<T>(
    first: T,
    queue: &Receiver<T>,
    max: usize,
    size: impl Fn(&T) -> usize,
    held: &mut Option<T>,
) -> Vec<T> {
    let mut total = size(&first);
    let mut batch = vec![first];
    while total < max {
        match queue.try_recv() {
            Ok(item) if total.saturating_add(size(&item)) <= max => {
                total += size(&item);
                batch.push(item);
            }
            Ok(item) => {
                *held = Some(item);
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// A refusal or a failure: its status and `{"error": message}`.
struct Failure(u16, String);

/// Answers one request; never panics on what the client sent.
fn handle(mut request: Request, context: &Context, jobs: &Sender<Job>) {
    let start = Instant::now();
    let method = request.method().to_string();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let mut inputs = 0;
    let mut allow = None;
    let answer = match refuse_unauthorized(&request, &path, context.options.api_key.as_ref()) {
        Some(failure) => Err(failure),
        None => route(&mut request, &path, context, jobs, &mut inputs, &mut allow),
    };
    let (status, body) = match answer {
        Ok(body) => (200, body),
        Err(Failure(status, message)) => (status, json!({ "error": message })),
    };
    let counters = &context.counters;
    counters.requests.fetch_add(1, Ordering::SeqCst);
    if status >= 400 {
        counters.errors.fetch_add(1, Ordering::SeqCst);
    } else if path == "/predict" {
        counters.inputs.fetch_add(inputs as u64, Ordering::SeqCst);
    }
    let mut response = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"));
    if let Some(allow) = allow {
        response = response.with_header(header("Allow", allow));
    }
    if status == 401 {
        response = response.with_header(header("WWW-Authenticate", "Bearer"));
    }
    // A client that hung up gets no answer; nothing else to do.
    let _ = request.respond(response);
    (context.log)(&Served {
        method,
        path,
        status,
        inputs,
        elapsed: start.elapsed(),
    });
}

/// The answer of the route `request` asks for (`path` is its URL without the query): sets
/// `inputs` to the inputs labelled or explained, and `allow` to the method a 405 names.
fn route(
    request: &mut Request,
    path: &str,
    context: &Context,
    jobs: &Sender<Job>,
    inputs: &mut usize,
    allow: &mut Option<&'static str>,
) -> std::result::Result<Value, Failure> {
    let method = request.method().to_string();
    match (request.method(), path) {
        (Method::Get, "/health") => Ok(json!({"status": "ok"})),
        (Method::Get, "/info") => {
            let mut info = context.model.info.clone();
            info.insert("max_batch".into(), Value::from(context.options.max_batch));
            info.insert("min_prob".into(), json!(context.options.min_prob));
            info.insert("api_key".into(), json!(context.options.api_key.is_some()));
            info.insert("served".into(), json!(context.counters.snapshot()));
            Ok(Value::Object(info))
        }
        (Method::Post, "/predict") => predict(request, context, jobs).map(|(value, count)| {
            *inputs = count;
            value
        }),
        (Method::Post, "/explain") => explain(request, context, jobs).map(|(value, count)| {
            *inputs = count;
            value
        }),
        (_, "/health" | "/info") => {
            *allow = Some("GET");
            Err(Failure(405, format!("{path} takes GET, not {method}")))
        }
        (_, "/predict" | "/explain") => {
            *allow = Some("POST");
            Err(Failure(405, format!("{path} takes POST, not {method}")))
        }
        _ => Err(Failure(
            404,
            format!(
                "no route {method} {path}; the routes: POST /predict, POST /explain, GET /info, \
                 GET /health"
            ),
        )),
    }
}

/// 401 for a request without the key, when the server has one; `GET /health` stays open, for
/// load balancers and scripts that wait for the server.
fn refuse_unauthorized(request: &Request, path: &str, key: Option<&ApiKey>) -> Option<Failure> {
    let key = key?;
    if *request.method() == Method::Get && path == "/health" {
        return None;
    }
    let authorization = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    match authorization {
        Some(value) if key.admits(value) => None,
        Some(_) => Some(Failure(
            401,
            "the Authorization header does not hold this server's API key (`Bearer <key>`)".into(),
        )),
        None => Some(Failure(
            401,
            "this server needs an API key: send the header `Authorization: Bearer <key>`".into(),
        )),
    }
}

fn header(name: &str, value: &str) -> Header {
    // Both are ASCII constants of this file, which `from_bytes` accepts.
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| unreachable!("header {name}: {value} is not ASCII"))
}

/// The request's query parameters, decoded, each one of `allowed` (another is refused by
/// name, so that a misspelt one does not go unnoticed).
fn query(url: &str, allowed: &[&str]) -> std::result::Result<Vec<(String, String)>, Failure> {
    let (route, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (decode(key), decode(value));
        if !allowed.contains(&key.as_str()) {
            return Err(Failure(
                400,
                format!(
                    "unknown query parameter {key:?}; {route} takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// A query component with `%XX` escapes and `+` (a space) decoded; a malformed escape stays as
/// it is.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's `?min_prob=P` (this request's `--min-prob`).
fn query_min_prob(url: &str) -> std::result::Result<Option<f64>, Failure> {
    let mut min_prob = None;
    for (_, value) in query(url, &["min_prob"])? {
        let p = crate::cli::probability(&value)
            .map_err(|e| Failure(400, format!("query parameter min_prob: {e}")))?;
        min_prob = Some(p);
    }
    Ok(min_prob)
}

/// The request's `?label=NAME` (the label to explain, as an index into `labels`) and
/// `?method=ig|occlusion` (`explain --method`; integrated gradients without it), the only
/// parameters `POST /explain` takes.
fn explain_query(
    url: &str,
    labels: &[String],
) -> std::result::Result<(Option<usize>, explain::Method), Failure> {
    let (mut label, mut method) = (None, explain::Method::default());
    for (key, value) in query(url, &["label", "method"])? {
        if key == "label" {
            let index = labels.iter().position(|l| *l == value).ok_or_else(|| {
                Failure(
                    400,
                    format!("query parameter label: {value:?} is not one of the labels {labels:?}"),
                )
            })?;
            label = Some(index);
        } else {
            method = value
                .parse()
                .map_err(|e| Failure(400, format!("query parameter method: {e}")))?;
        }
    }
    Ok((label, method))
}

/// A request body's inputs (a text, a record or a list of them) read as examples of the
/// checkpoint's schema, with their fields taken out, and whether it held one input (not a
/// list).
type Inputs = (Vec<Example>, Vec<Map<String, Value>>, bool);

/// Reads the body of a `POST /predict` or `/explain`.
fn read_inputs(request: &mut Request, context: &Context) -> std::result::Result<Inputs, Failure> {
    let limit = context.options.max_body_bytes;
    let too_large = || Failure(413, format!("the request body is over {limit} bytes"));
    if request.body_length().is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Failure(400, format!("cannot read the request body: {e}")))?;
    if body.len() > limit {
        return Err(too_large());
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            400,
            format!(
                "the request body is not JSON: {e}; send a text, a record (a JSON object with \
                 a \"text\" field or the checkpoint's text fields, and for a model of text \
                 pairs \"text_pair\" or its pair fields) or a list of them"
            ),
        )
    })?;
    let (items, one) = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(Failure(400, "the request holds an empty list".into()))
        }
        Value::Array(items) => (items, false),
        other => (vec![other], true),
    };
    let data = &context.model.data;
    let request_name = Path::new("request");
    let mut examples = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let at = Location::new(request_name, Unit::Item, index + 1);
            let fields = match item {
                Value::String(text) => Map::from_iter([("text".to_string(), Value::from(text))]),
                Value::Object(fields) => fields,
                other => {
                    return Err(Failure(
                        400,
                        format!(
                            "{at}: expected a text or a JSON object, got {}",
                            json_kind(&other)
                        ),
                    ))
                }
            };
            unlabelled_record(fields, data, &at).map_err(|e| Failure(400, e.to_string()))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // The fields come back with the answers; the model thread needs only the texts.
    let fields = examples
        .iter_mut()
        .map(|example| std::mem::take(&mut example.fields))
        .collect();
    Ok((examples, fields, one))
}

/// Queues `job` and waits for its answers, which `reply` receives.
fn answers<T>(
    jobs: &Sender<Job>,
    job: Job,
    answer: &Receiver<std::result::Result<Vec<T>, String>>,
    what: &str,
) -> std::result::Result<Vec<T>, Failure> {
    let gone = || Failure(503, "the model thread has stopped".into());
    jobs.send(job).map_err(|_| gone())?;
    answer
        .recv()
        .map_err(|_| gone())?
        .map_err(|e| Failure(500, format!("{what} failed: {e}")))
}

/// One answer object per input, or the one object of a request that was not a list.
fn respond(records: impl Iterator<Item = Map<String, Value>>, one: bool) -> Value {
    let mut records = records.map(Value::Object);
    if one {
        records.next().unwrap_or(Value::Null)
    } else {
        Value::Array(records.collect())
    }
}

/// `POST /predict`: the predictions for the body's inputs, and how many there were.
fn predict(
    request: &mut Request,
    context: &Context,
    jobs: &Sender<Job>,
) -> std::result::Result<(Value, usize), Failure> {
    let min_prob = query_min_prob(request.url())?.or(context.options.min_prob);
    let (examples, fields, one) = read_inputs(request, context)?;
    let count = examples.len();
    let (reply, answer) = mpsc::channel();
    let probs = answers(
        jobs,
        Job::Predict { examples, reply },
        &answer,
        "prediction",
    )?;
    let (labels, multi) = (&context.model.labels, context.model.data.multi_label);
    let records = fields
        .into_iter()
        .zip(&probs)
        .map(|(fields, p)| prediction_record(fields, labels, p, multi, min_prob));
    Ok((respond(records, one), count))
}

/// `POST /explain`: `explain --json`'s record for each of the body's inputs (`?label=NAME`: that
/// label's; else each input's most probable one; `?method=occlusion`: `explain --method
/// occlusion`'s), and how many there were. At most [`ServeOptions::max_batch`] inputs: the model
/// thread runs them one after another.
fn explain(
    request: &mut Request,
    context: &Context,
    jobs: &Sender<Job>,
) -> std::result::Result<(Value, usize), Failure> {
    let labels = &context.model.labels;
    let (label, method) = explain_query(request.url(), labels)?;
    let (examples, fields, one) = read_inputs(request, context)?;
    let count = examples.len();
    let most = context.options.max_batch;
    if count > most {
        return Err(Failure(
            400,
            format!(
                "{count} inputs to explain; /explain takes at most {most} (--max-batch) a request"
            ),
        ));
    }
    let (reply, answer) = mpsc::channel();
    let job = Job::Explain {
        examples,
        label,
        method,
        reply,
    };
    let explained = answers(jobs, job, &answer, "explanation")?;
    let records = fields
        .into_iter()
        .zip(&explained)
        .map(|(fields, e)| e.record(fields, labels));
    Ok((respond(records, one), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_admits_only_itself_as_a_bearer_token() {
        let key = ApiKey::new("s3cret-Key_0").unwrap();
        assert!(key.admits("Bearer s3cret-Key_0"));
        assert!(
            key.admits("bearer s3cret-Key_0"),
            "the scheme is case-insensitive"
        );
        assert!(key.admits("  Bearer   s3cret-Key_0 "));
        for refused in [
            "",
            "s3cret-Key_0",
            "Basic s3cret-Key_0",
            "Bearer s3cret-key_0",
            "Bearer s3cret-Key_",
            "Bearer s3cret-Key_00",
            "Bearer",
        ] {
            assert!(!key.admits(refused), "{refused:?}");
        }
        assert_eq!(format!("{key:?}"), "ApiKey(..)");
        assert_eq!(ApiKey::new("").unwrap_err(), "the API key is empty");
        assert!(ApiKey::new("two words").unwrap_err().contains("' '"));
        assert!(ApiKey::new("tab\there").unwrap_err().contains("'\\t'"));
    }

    /// A queue holding `sizes`, as a batch's jobs would be queued behind its first.
    fn queued(sizes: &[usize]) -> Receiver<usize> {
        let (tx, rx) = mpsc::channel();
        for &size in sizes {
            tx.send(size).unwrap_or_else(|_| unreachable!());
        }
        rx
    }

    #[test]
    fn gather_takes_what_is_queued_up_to_the_limit_and_holds_the_first_that_does_not_fit() {
        let queue = queued(&[2, 3, 4, 1]);
        let mut held = None;
        // 1 + 2 + 3 = 6 fit in 8; 4 would make 10, so it waits for the next call.
        assert_eq!(gather(1, &queue, 8, |&n| n, &mut held), vec![1, 2, 3]);
        assert_eq!(held, Some(4));
        // The next call starts from the held item and takes the rest.
        let first = held.take().unwrap_or_else(|| unreachable!());
        assert_eq!(gather(first, &queue, 8, |&n| n, &mut held), vec![4, 1]);
        assert_eq!(held, None);
    }

    #[test]
    fn the_query_gives_min_prob_and_nothing_else() {
        let min_prob = |url: &str| query_min_prob(url).map_err(|Failure(status, m)| (status, m));
        assert_eq!(min_prob("/predict"), Ok(None));
        assert_eq!(min_prob("/predict?min_prob=0.9"), Ok(Some(0.9)));
        let (status, message) = min_prob("/predict?min_prob=1.5").unwrap_err();
        assert_eq!(status, 400);
        assert!(
            message.contains("between 0 and 1, got \"1.5\""),
            "{message}"
        );
        let (_, message) = min_prob("/predict?minprob=0.5").unwrap_err();
        assert!(
            message.contains("unknown query parameter \"minprob\""),
            "{message}"
        );
    }

    #[test]
    fn the_explain_query_gives_a_label_by_name_decoded() {
        let labels = ["needs_docs".to_string(), "needs review".to_string()];
        let parsed =
            |url: &str| explain_query(url, &labels).map_err(|Failure(status, m)| (status, m));
        let label = |url: &str| parsed(url).map(|(label, _)| label);
        assert_eq!(label("/explain"), Ok(None));
        assert_eq!(label("/explain?label=needs_docs"), Ok(Some(0)));
        assert_eq!(label("/explain?label=needs%20review"), Ok(Some(1)));
        assert_eq!(label("/explain?label=needs+review"), Ok(Some(1)));
        let (status, message) = label("/explain?label=bug").unwrap_err();
        assert_eq!(status, 400);
        assert!(
            message.contains("\"bug\" is not one of the labels"),
            "{message}"
        );
        let (_, message) = label("/explain?min_prob=0.5").unwrap_err();
        assert!(
            message.contains("unknown query parameter \"min_prob\"; /explain takes label, method"),
            "{message}"
        );
        assert_eq!(decode("a%2Fb%zz%4"), "a/b%zz%4", "malformed escapes stay");

        // `?method=`, beside `?label=` or alone.
        let method = |url: &str| parsed(url).map(|(_, method)| method);
        assert_eq!(method("/explain"), Ok(explain::Method::IntegratedGradients));
        assert_eq!(
            method("/explain?method=ig"),
            Ok(explain::Method::IntegratedGradients)
        );
        let both = "/explain?label=needs_docs&method=occlusion";
        assert_eq!(method(both), Ok(explain::Method::Occlusion));
        assert_eq!(label(both), Ok(Some(0)));
        let (status, message) = method("/explain?method=shap").unwrap_err();
        assert_eq!(status, 400);
        assert!(
            message.contains(
                "query parameter method: \"shap\": `ig` (integrated gradients) or `occlusion`"
            ),
            "{message}"
        );
    }

    #[test]
    fn gather_runs_an_oversized_item_alone_and_never_waits_on_an_empty_queue() {
        let queue = queued(&[1]);
        let mut held = None;
        assert_eq!(gather(9, &queue, 8, |&n| n, &mut held), vec![9]);
        assert_eq!(held, None, "a full first item takes nothing more");
        assert_eq!(gather(2, &queue, 8, |&n| n, &mut held), vec![2, 1]);
        let empty = queued(&[]);
        assert_eq!(gather(3, &empty, 8, |&n| n, &mut held), vec![3]);
    }
}
