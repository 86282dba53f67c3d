//! Downloads through hf-hub from a stand-in Hub: a loopback HTTP server that answers the two
//! requests the Hub's `resolve` endpoint gets for each file (a one-byte range for the metadata
//! headers, then the bytes), so the download path runs without the network. Also dataset files
//! already in the cache, and the errors when they are not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::error::Error;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tempfile::TempDir;
use wick_hub::dataset::{local_data_file, resolve_dataset_file, DatasetFile};
use wick_hub::{resolve_in, HubError, HubSettings, ModelSource, NotFoundCause, REQUIRED_FILES};

type TestResult = Result<(), Box<dyn Error>>;

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// A stand-in for the Hub: serves `files` (URL path -> bytes) with the headers hf-hub reads
/// (`x-repo-commit`, `etag`, `content-range`), 404 for anything else, and records every path
/// asked for.
struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn serve(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let mut start = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    let lower = header.to_ascii_lowercase();
                    if let Some(range) = lower.strip_prefix("range: bytes=") {
                        start = range.split('-').next().unwrap().trim().parse().unwrap();
                    }
                }
                seen.lock().unwrap().push(path.clone());
                let response = match files.get(&path) {
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                    Some(bytes) => {
                        let body = &bytes[start.min(bytes.len())..];
                        let mut head = format!(
                            "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {COMMIT}\r\n\
                             etag: \"etag-{}\"\r\ncontent-range: bytes {start}-{}/{}\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            path.replace('/', "_"),
                            bytes.len() - 1,
                            bytes.len(),
                            body.len()
                        )
                        .into_bytes();
                        head.extend_from_slice(body);
                        head
                    }
                };
                let _ = stream.write_all(&response);
            }
        });
        Self { endpoint, requests }
    }

    fn settings(&self, cache: &Path) -> HubSettings {
        HubSettings {
            endpoint: Some(self.endpoint.clone()),
            ..HubSettings::new(cache)
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn dataset_file(text: &str) -> DatasetFile {
    DatasetFile::parse(Path::new(text))
        .expect("an hf:// path")
        .expect("a well-formed path")
}

#[test]
fn a_dataset_file_is_downloaded_into_the_cache_then_read_offline() -> TestResult {
    let csv = b"title,label\nREADME is wrong,docs\n".to_vec();
    let hub = FakeHub::serve(HashMap::from([(
        "/datasets/acme/issues/resolve/refs%2Fconvert%2Fparquet/data/train.csv".to_string(),
        csv.clone(),
    )]));
    let cache = TempDir::new()?;
    let file = dataset_file("hf://datasets/acme/issues@refs%2Fconvert%2Fparquet/data/train.csv");

    let resolved = resolve_dataset_file(&file, &hub.settings(cache.path()))?;
    assert_eq!(resolved.commit, COMMIT);
    assert_eq!(fs::read(&resolved.path)?, csv);
    let repo = cache.path().join("datasets--acme--issues");
    assert_eq!(
        resolved.path,
        repo.join("snapshots").join(COMMIT).join("data/train.csv")
    );
    // The branch's ref is where Python's huggingface_hub keeps it.
    assert_eq!(
        fs::read_to_string(repo.join("refs/refs/convert/parquet"))?,
        COMMIT
    );
    let asked = hub.requests().len();
    assert!(asked >= 2, "{:?}", hub.requests());

    // Cached now: found again offline, and nothing more is asked of the Hub.
    let offline = HubSettings {
        offline: true,
        ..hub.settings(cache.path())
    };
    assert_eq!(resolve_dataset_file(&file, &offline)?, resolved);
    assert_eq!(hub.requests().len(), asked);
    Ok(())
}

#[test]
fn a_model_is_downloaded_file_by_file_into_one_snapshot() -> TestResult {
    let files: HashMap<String, Vec<u8>> = REQUIRED_FILES
        .iter()
        .map(|f| {
            (
                format!("/acme/tiny/resolve/main/{f}"),
                f.as_bytes().to_vec(),
            )
        })
        .collect();
    let hub = FakeHub::serve(files);
    let cache = TempDir::new()?;
    let resolved = resolve_in(
        &ModelSource::from_id("acme/tiny"),
        &hub.settings(cache.path()),
    )?;
    assert_eq!(resolved.commit.as_deref(), Some(COMMIT));
    assert_eq!(fs::read_to_string(&resolved.weights)?, "model.safetensors");
    assert_eq!(fs::read_to_string(&resolved.config)?, "config.json");
    assert_eq!(fs::read_to_string(&resolved.tokenizer)?, "tokenizer.json");
    Ok(())
}

#[test]
fn a_dataset_file_the_hub_lacks_names_the_path_the_failure_and_the_cache() -> TestResult {
    let hub = FakeHub::serve(HashMap::new());
    let cache = TempDir::new()?;
    let file = dataset_file("hf://datasets/acme/issues/missing.jsonl");
    let err = resolve_dataset_file(&file, &hub.settings(cache.path()))
        .expect_err("the stand-in Hub has no files");
    let HubError::DatasetFileNotFound(not_found) = &err else {
        panic!("wrong error: {err:?}");
    };
    assert!(
        matches!(&not_found.cause, NotFoundCause::Network { file, .. } if file == "missing.jsonl"),
        "{err:?}"
    );
    let message = err.to_string();
    for needle in [
        "hf://datasets/acme/issues@main/missing.jsonl",
        "downloading missing.jsonl from the Hub failed",
        &cache.path().display().to_string(),
        "give its local path",
    ] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    Ok(())
}

#[test]
fn a_cached_dataset_file_resolves_offline_and_an_uncached_one_says_offline() -> TestResult {
    let cache = TempDir::new()?;
    let repo = cache.path().join("datasets--acme--issues");
    let snapshot = repo.join("snapshots").join(COMMIT).join("split");
    fs::create_dir_all(&snapshot)?;
    fs::write(snapshot.join("test.parquet"), b"PAR1")?;
    fs::create_dir_all(repo.join("refs"))?;
    fs::write(repo.join("refs/main"), format!("{COMMIT}\n"))?;
    let offline = HubSettings {
        offline: true,
        ..HubSettings::new(cache.path())
    };

    let found = resolve_dataset_file(
        &dataset_file("hf://datasets/acme/issues/split/test.parquet"),
        &offline,
    )?;
    assert_eq!(found.path, snapshot.join("test.parquet"));
    assert_eq!(found.commit, COMMIT);
    // A commit hash as the revision needs no ref.
    let pinned = format!("hf://datasets/acme/issues@{COMMIT}/split/test.parquet");
    assert_eq!(
        resolve_dataset_file(&dataset_file(&pinned), &offline)?,
        found
    );

    let err = resolve_dataset_file(
        &dataset_file("hf://datasets/acme/issues/split/train.parquet"),
        &offline,
    )
    .expect_err("not cached, and offline");
    assert!(err.to_string().contains("offline mode is on"), "{err}");
    Ok(())
}

#[test]
fn a_local_data_path_is_left_alone() -> TestResult {
    assert_eq!(local_data_file(Path::new("data/triage/train.jsonl"))?, None);
    Ok(())
}
