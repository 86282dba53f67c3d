//! `serve`: the HTTP server answers what `predict` writes, for single inputs, lists, records of
//! the training file's schema and ensembles, batches concurrent requests, refuses bad requests
//! with a status and a message naming the input, answers only requests that carry its API key
//! when it has one, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use super::common::{
    assert_fails_naming, assert_ok, command, explained, path_str, run_bin, run_with_stdin, text,
    train_tiny,
};

/// A `serve` process, killed if the test ends without stopping it.
struct Serving {
    child: Option<Child>,
    addr: String,
}

impl Serving {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command(env!("CARGO_BIN_EXE_serve"))
            .args(["--port", "0", "--quiet"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let output = child.wait_with_output().unwrap();
            panic!(
                "serve did not start: stdout {line:?}, stderr:\n{}",
                text(&output.stderr)
            );
        };
        Self {
            addr: addr.to_string(),
            child: Some(child),
        }
    }

    /// One request on its own connection: the status, the headers (lowercased names) and the
    /// body as JSON.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String, Value) {
        self.request_with(method, path, "", body)
    }

    /// [`Self::request`] with `headers` (each line ending in `\r\n`) added.
    fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> (u16, String, Value) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            self.addr,
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let response = text(&response);
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {body}"));
        (status, head.to_ascii_lowercase(), body)
    }

    fn post(&self, body: &Value) -> (u16, Value) {
        let (status, _, body) = self.request("POST", "/predict", body.to_string().as_bytes());
        (status, body)
    }

    /// Sends SIGTERM and returns the exit status and stderr.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(command("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut child = child;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `predict`'s output objects for `args`.
fn predicted(args: &[&str], stdin: Option<&str>) -> Vec<Value> {
    let output = match stdin {
        None => run_bin("predict", args),
        Some(input) => run_with_stdin(env!("CARGO_BIN_EXE_predict"), args, input.as_bytes()),
    };
    assert_ok(&output, "predict");
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Asserts two prediction objects agree: the same fields and label, probabilities within 1e-5
/// (a request batched with others pads differently from `predict`'s batches).
fn assert_same_prediction(served: &Value, expected: &Value, what: &str) {
    let (Value::Object(served), Value::Object(expected)) = (served, expected) else {
        panic!("{what}: not objects: {served} / {expected}");
    };
    let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(served), keys(expected), "{what}: fields");
    for (key, value) in expected {
        if key == "probs" {
            for (label, p) in value.as_object().unwrap() {
                let q = served["probs"][label].as_f64().unwrap();
                assert!(
                    (q - p.as_f64().unwrap()).abs() < 1e-5,
                    "{what}: P({label}) {q} against predict's {p}"
                );
            }
        } else {
            assert_eq!(&served[key], value, "{what}: field {key}");
        }
    }
}

fn tiny_texts() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/train.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn serve_answers_as_predict_does_batches_concurrent_requests_and_stops_on_sigterm() {
    let dir = TempDir::new().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &[]), "train");
    let run_arg = path_str(&run);
    let rows = tiny_texts();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    // `predict` on the same rows from stdin: text, label (kept as input_label) and an id.
    let stdin: String = rows
        .iter()
        .zip(0..)
        .map(|(row, id)| {
            format!(
                "{}\n",
                json!({"id": id, "text": row["text"], "label": row["label"]})
            )
        })
        .collect();
    let expected = predicted(&["--checkpoint", run_arg], Some(&stdin));
    assert_eq!(expected.len(), rows.len());

    let server = Serving::start(&["--checkpoint", run_arg, "--max-body-mib", "1"]);
    let (status, _, health) = server.request("GET", "/health", b"");
    assert_eq!((status, health), (200, json!({"status": "ok"})));

    // One text, as a JSON string.
    let (status, one) = server.post(&json!(texts[0]));
    assert_eq!(status, 200, "{one}");
    let mut bare = expected[0].clone();
    let bare_map = bare.as_object_mut().unwrap();
    bare_map.remove("id");
    bare_map.remove("input_label");
    assert_same_prediction(&one, &bare, "a JSON string");

    // `?min_prob=` is this request's --min-prob: the tiny model is never 90% sure.
    let (status, _, unsure) = server.request(
        "POST",
        "/predict?min_prob=0.9",
        json!(texts[0]).to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{unsure}");
    assert_eq!(unsure["label"], Value::Null, "{unsure}");
    assert_eq!(unsure["probs"], one["probs"]);
    let (status, _, refused) = server.request(
        "POST",
        "/predict?min_prob=2",
        json!(texts[0]).to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{refused}");

    // Every row as a list of records, fields passed through as predict passes them.
    let records: Vec<Value> = stdin
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (status, all) = server.post(&Value::Array(records.clone()));
    assert_eq!(status, 200, "{all}");
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), expected.len());
    for (i, (served, expected)) in all.iter().zip(&expected).enumerate() {
        assert_same_prediction(served, expected, &format!("list item {}", i + 1));
    }

    // Concurrent requests, one record each: every answer is its own input's.
    let threads = 6;
    let answers: Vec<(usize, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (server, records) = (&server, &records);
                scope.spawn(move || {
                    (t..records.len())
                        .step_by(threads)
                        .map(|i| {
                            let (status, answer) = server.post(&records[i]);
                            assert_eq!(status, 200, "{answer}");
                            (i, answer)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(answers.len(), records.len());
    for (i, answer) in &answers {
        assert_same_prediction(answer, &expected[*i], &format!("concurrent request {i}"));
    }

    // Refusals: status, message naming the input, nothing labelled.
    let refusals: [(&str, &str, Vec<u8>, u16, &str); 7] = [
        ("POST", "/predict", b"{not json".to_vec(), 400, "not JSON"),
        ("POST", "/predict", b"[]".to_vec(), 400, "empty list"),
        (
            "POST",
            "/predict",
            b"[\"ok\", 3]".to_vec(),
            400,
            "request item 2: expected a text or a JSON object, got a number",
        ),
        (
            "POST",
            "/predict",
            br#"{"title": "no text"}"#.to_vec(),
            400,
            "request item 1: missing field `text` (fields present: title)",
        ),
        (
            "GET",
            "/predict",
            Vec::new(),
            405,
            "/predict takes POST, not GET",
        ),
        ("GET", "/nope", Vec::new(), 404, "no route GET /nope"),
        (
            "POST",
            "/predict",
            json!("x".repeat(1 << 20)).to_string().into_bytes(),
            413,
            "over 1048576 bytes",
        ),
    ];
    for (method, path, body, want, needle) in &refusals {
        let (status, head, answer) = server.request(method, path, body);
        assert_eq!(status, *want, "{method} {path}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(needle), "{method} {path}: {message}");
        if *want == 405 {
            assert!(head.contains("allow: post"), "{head}");
        }
    }

    let (status, _, info) = server.request("GET", "/info", b"");
    assert_eq!(status, 200);
    assert_eq!(
        info["labels"],
        json!(["needs_docs", "needs_test", "needs_review"])
    );
    assert_eq!(info["multi_label"], json!(false));
    assert_eq!(info["text_fields"], json!(["text"]));
    let served = &info["served"];
    let inputs = 2 + 2 * rows.len() as u64;
    assert_eq!(served["inputs"], json!(inputs));
    // health, the string, the two with ?min_prob, the list, the concurrent ones, the refusals;
    // this /info is counted after it is answered.
    let requests = 5 + rows.len() as u64 + refusals.len() as u64;
    assert_eq!(served["requests"], json!(requests));
    assert_eq!(served["errors"], json!(refusals.len() + 1));
    let batches = served["batches"].as_u64().unwrap();
    assert!(
        (1..=3 + rows.len() as u64).contains(&batches),
        "{served}: one model call per batch, at most one per request"
    );
    assert_eq!(served["largest_batch"], json!(rows.len()));

    let (status, stderr) = server.terminate();
    assert!(status.success(), "serve exited with {status}:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "stopped after {} request(s) ({} refused): {inputs} input(s) in {batches} model call(s)",
            requests + 1,
            refusals.len() + 1
        )),
        "{stderr}"
    );
}

#[test]
fn serve_and_predict_read_records_of_the_training_schema_for_an_ensemble() {
    let dir = TempDir::new().unwrap();
    // The tiny rows as issues: a title (the first three words) and a body (the rest).
    let issues = dir.path().join("issues.jsonl");
    let rows: Vec<Value> = tiny_texts()
        .into_iter()
        .map(|row| {
            let words: Vec<&str> = row["text"].as_str().unwrap().split(' ').collect();
            let (title, body) = words.split_at(3.min(words.len()));
            json!({"title": title.join(" "), "body": body.join(" "), "label": row["label"]})
        })
        .collect();
    let lines: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&issues, &lines).unwrap();
    let issues_arg = path_str(&issues);
    let train_set = format!("data.train=\"{issues_arg}\"");
    let valid_set = format!("data.valid=\"{issues_arg}\"");
    let runs: Vec<_> = [7, 8]
        .iter()
        .map(|seed| {
            let run = dir.path().join(format!("seed-{seed}"));
            let seed_set = format!("train.seed={seed}");
            let sets = [
                train_set.as_str(),
                valid_set.as_str(),
                "data.text_fields=[\"title\", \"body\"]",
                seed_set.as_str(),
            ];
            assert_ok(&train_tiny(&run, &sets), "train on title and body");
            run
        })
        .collect();
    let checkpoints: Vec<&str> = runs
        .iter()
        .flat_map(|run| ["--checkpoint", path_str(run)])
        .collect();

    // `predict --data` joins title and body as training did: the reference.
    let expected = predicted(&[&checkpoints[..], &["--data", issues_arg]].concat(), None);
    // The same records on predict's stdin (no "text" field) give the same.
    let from_stdin = predicted(&checkpoints, Some(&lines));
    for (i, (a, b)) in from_stdin.iter().zip(&expected).enumerate() {
        assert_same_prediction(a, b, &format!("stdin record {}", i + 1));
    }
    // A record with neither a "text" nor the text fields is refused naming both.
    let output = run_with_stdin(
        env!("CARGO_BIN_EXE_predict"),
        &checkpoints,
        b"{\"title\": \"t\", \"body\": \"b\"}\n{\"title\": \"only\"}\n",
    );
    assert_fails_naming(
        &output,
        &["stdin:2: no string field `text`, and no field `body` of data.text_fields (fields present: title)"],
    );

    let server = Serving::start(&checkpoints);
    let (status, answer) = server.post(&Value::Array(rows.clone()));
    assert_eq!(status, 200, "{answer}");
    for (i, (served, expected)) in answer.as_array().unwrap().iter().zip(&expected).enumerate() {
        assert_same_prediction(served, expected, &format!("record {}", i + 1));
    }
    // A text given whole is read as it is, not looked up in the text fields.
    let joined = format!(
        "{}\n\n{}",
        rows[0]["title"].as_str().unwrap(),
        rows[0]["body"].as_str().unwrap()
    );
    let (status, whole) = server.post(&json!({ "text": joined }));
    assert_eq!(status, 200, "{whole}");
    for (label, p) in expected[0]["probs"].as_object().unwrap() {
        let q = whole["probs"][label].as_f64().unwrap();
        assert!(
            (q - p.as_f64().unwrap()).abs() < 1e-5,
            "P({label}) {q} against {p}"
        );
    }
    let (_, _, info) = server.request("GET", "/info", b"");
    assert_eq!(info["checkpoints"].as_array().unwrap().len(), 2);
    assert_eq!(info["text_fields"], json!(["title", "body"]));
    let (status, refused) = server.post(&json!([{"title": "only a title"}]));
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("request item 1: no string field `text`, and no field `body`"),
        "{refused}"
    );
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
}

/// Asserts two explanation records agree: the same fields, label, words and tokens, and numbers
/// within 1e-6.
fn assert_same_explanation(served: &Value, expected: &Value, what: &str) {
    fn close(a: &Value, b: &Value, path: &str) {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() < 1e-6, "{path}: {x} against explain's {y}");
            }
            (Value::Array(x), Value::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}: lengths");
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    close(x, y, &format!("{path}[{i}]"));
                }
            }
            (Value::Object(x), Value::Object(y)) => {
                let keys =
                    |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
                assert_eq!(keys(x), keys(y), "{path}: fields");
                for (key, y) in y {
                    close(&x[key], y, &format!("{path}.{key}"));
                }
            }
            _ => assert_eq!(a, b, "{path}"),
        }
    }
    close(served, expected, what);
}

#[test]
fn serve_explains_as_explain_does() {
    let dir = TempDir::new().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &[]), "train");
    let run_arg = path_str(&run);
    let texts = ["Docs: explain --offline", "CI flakes on macOS", "ptal"];
    let expected = explained(&[&["--checkpoint", run_arg, "--"], &texts[..]].concat());
    let server = Serving::start(&["--checkpoint", run_arg, "--max-batch", "2"]);
    let post = |path: &str, body: &Value| {
        let (status, _, answer) = server.request("POST", path, body.to_string().as_bytes());
        (status, answer)
    };

    let (status, one) = post("/explain", &json!(texts[0]));
    assert_eq!(status, 200, "{one}");
    assert_same_explanation(&one, &expected[0], "a JSON string");

    // A list of records: fields pass through, one answer each, in order.
    let records = json!([{"id": 1, "text": texts[1]}, {"id": 2, "text": texts[2]}]);
    let (status, two) = post("/explain", &records);
    assert_eq!(status, 200, "{two}");
    for (i, (served, expected)) in two
        .as_array()
        .unwrap()
        .iter()
        .zip(&expected[1..])
        .enumerate()
    {
        assert_eq!(served["id"], json!(i + 1));
        let mut served = served.clone();
        served.as_object_mut().unwrap().remove("id");
        assert_same_explanation(&served, expected, &format!("list item {}", i + 1));
    }

    // Another label, as `explain --label` gives it.
    let (status, other) = post("/explain?label=needs_test", &json!(texts[0]));
    assert_eq!(status, 200, "{other}");
    let expected_other = explained(&["--checkpoint", run_arg, "--label", "needs_test", texts[0]]);
    assert_same_explanation(&other, &expected_other[0], "?label=needs_test");

    // Occlusion, as `explain --method occlusion` gives it.
    let (status, occluded) = post(
        "/explain?method=occlusion&label=needs_test",
        &json!(texts[1]),
    );
    assert_eq!(status, 200, "{occluded}");
    let expected_occluded = explained(&[
        "--checkpoint",
        run_arg,
        "--method",
        "occlusion",
        "--label",
        "needs_test",
        texts[1],
    ]);
    assert_eq!(occluded["method"], "occlusion");
    assert_same_explanation(&occluded, &expected_occluded[0], "?method=occlusion");

    // Refusals: 400 with an error that names the cause.
    let refuses = |path: &str, body: &Value, cause: &str| {
        let (status, refused) = post(path, body);
        assert_eq!(status, 400, "{path}: {refused}");
        let error = refused["error"].as_str().unwrap();
        assert!(error.contains(cause), "{path}: {error}");
    };
    refuses("/explain", &json!(texts), "at most 2 (--max-batch)");
    refuses(
        "/explain?label=bug",
        &json!(texts[0]),
        "\"bug\" is not one of the labels",
    );
    refuses(
        "/explain?method=lime",
        &json!(texts[0]),
        "query parameter method: \"lime\"",
    );
    let (status, head, refused) = server.request("GET", "/explain", b"");
    assert_eq!(status, 405, "{refused}");
    assert!(head.contains("allow: post"), "{head}");

    // Predictions still work beside explanations, and the counters keep them apart.
    let (status, predicted) = server.post(&json!(texts[0]));
    assert_eq!(status, 200, "{predicted}");
    assert_eq!(predicted["probs"], one["probs"]);
    let (_, _, info) = server.request("GET", "/info", b"");
    assert_eq!(info["served"]["explained"], json!(5), "{info}");
    assert_eq!(info["served"]["inputs"], json!(1), "{info}");
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("5 explained"), "{stderr}");
}

/// A checkpoint of text pairs (`data.pair_fields`): `/predict` takes records with `text` and
/// `text_pair`, or of the training schema, and answers as `predict` does; a bare text is refused
/// naming `text_pair`; `/info` names the pair fields.
#[test]
fn serve_reads_text_pairs() {
    let dir = TempDir::new().unwrap();
    let issues = dir.path().join("issues.jsonl");
    super::pairs::pair_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/train.jsonl"),
        &issues,
    );
    let issues_arg = path_str(&issues);
    let run = dir.path().join("run");
    let sets = [
        format!("data.train=\"{issues_arg}\""),
        format!("data.valid=\"{issues_arg}\""),
        "data.text_fields=[\"title\"]".to_string(),
        "data.pair_fields=[\"body\"]".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    assert_ok(&train_tiny(&run, &sets), "train on pairs");
    let checkpoint = ["--checkpoint", path_str(&run)];
    let expected = predicted(&[&checkpoint[..], &["--data", issues_arg]].concat(), None);
    let rows: Vec<Value> = std::fs::read_to_string(&issues)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let pairs: Vec<Value> = rows
        .iter()
        .map(|r| json!({"text": r["title"], "text_pair": r["body"], "label": r["label"]}))
        .collect();

    let server = Serving::start(&checkpoint);
    for (what, body) in [("pairs", &pairs), ("records", &rows)] {
        let (status, answer) = server.post(&Value::Array(body.clone()));
        assert_eq!(status, 200, "{answer}");
        for (i, (served, want)) in answer.as_array().unwrap().iter().zip(&expected).enumerate() {
            for (label, p) in want["probs"].as_object().unwrap() {
                let q = served["probs"][label].as_f64().unwrap();
                assert!(
                    (q - p.as_f64().unwrap()).abs() < 1e-5,
                    "{what} {}: P({label}) {q} against predict's {p}",
                    i + 1
                );
            }
        }
    }
    let (status, refused) = server.post(&json!("a text without its pair"));
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("no string field `text_pair`, and no field `body` of data.pair_fields"),
        "{refused}"
    );
    let (_, _, info) = server.request("GET", "/info", b"");
    assert_eq!(info["pair_fields"], json!(["body"]));
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");
}

#[test]
fn serve_with_an_api_key_answers_only_requests_that_carry_it() {
    let dir = TempDir::new().unwrap();
    let run = dir.path().join("run");
    assert_ok(&train_tiny(&run, &[]), "train");
    let run_arg = path_str(&run);
    let expected = predicted(&["--checkpoint", run_arg, "ptal please"], None);
    let body = json!("ptal please").to_string();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "k3y-from-file\n").unwrap();

    let from_file = Serving::start(&[
        "--checkpoint",
        run_arg,
        "--api-key-file",
        path_str(&key_file),
    ]);
    let from_env = Serving::start_with_env(
        &["--checkpoint", run_arg],
        &[("WICK_API_KEY", "k3y-from-env")],
    );
    for (server, key) in [(&from_file, "k3y-from-file"), (&from_env, "k3y-from-env")] {
        let (status, head, answer) = server.request("POST", "/predict", body.as_bytes());
        assert_eq!(status, 401, "{answer}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("send the header `Authorization: Bearer <key>`"),
            "{answer}"
        );
        let (status, _, answer) = server.request_with(
            "POST",
            "/predict",
            "Authorization: Bearer k3y\r\n",
            body.as_bytes(),
        );
        assert_eq!(status, 401, "a prefix of the key: {answer}");
        assert!(answer["error"]
            .as_str()
            .unwrap()
            .contains("does not hold this server's API key"));
        let (status, _, info) = server.request("GET", "/info", b"");
        assert_eq!(status, 401, "{info}");
        let (status, _, health) = server.request("GET", "/health", b"");
        assert_eq!(
            (status, health),
            (200, json!({"status": "ok"})),
            "/health stays open"
        );

        let authorization = format!("Authorization: Bearer {key}\r\n");
        let (status, _, answer) =
            server.request_with("POST", "/predict", &authorization, body.as_bytes());
        assert_eq!(status, 200, "{answer}");
        assert_same_prediction(&answer, &expected[0], "with the key");
        let (status, _, info) = server.request_with("GET", "/info", &authorization, b"");
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["api_key"], json!(true));
        assert_eq!(
            info["served"]["errors"],
            json!(3),
            "the refusals are counted: {info}"
        );
    }
    drop(from_env);
    let (status, stderr) = from_file.terminate();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("(3 refused)"), "{stderr}");

    // Without a key the server says so in /info, and warns when it listens beyond loopback.
    let open = Serving::start(&["--checkpoint", run_arg]);
    let (status, _, info) = open.request("GET", "/info", b"");
    assert_eq!((status, &info["api_key"]), (200, &json!(false)));
    let (status, stderr) = open.terminate();
    assert!(status.success() && !stderr.contains("warning"), "{stderr}");
    let exposed = Serving::start(&["--checkpoint", run_arg, "--host", "0.0.0.0"]);
    let (status, stderr) = exposed.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("without an API key: anyone who reaches this address"),
        "{stderr}"
    );

    // A key file that holds no key, holds a key a header cannot carry, or cannot be read stops
    // the server at start, naming the file.
    let missing = dir.path().join("no-such-key");
    for (file, content, message) in [
        (&key_file, Some("\n"), "the API key is empty"),
        (&key_file, Some("two words\n"), "holds ' '"),
        (&missing, None, "reading the API key from"),
    ] {
        if let Some(content) = content {
            std::fs::write(file, content).unwrap();
        }
        let args = ["--checkpoint", run_arg, "--api-key-file", path_str(file)];
        assert_fails_naming(&run_bin("serve", &args), &[path_str(file), message]);
    }
}
