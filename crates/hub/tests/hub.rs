//! Model resolution against temporary caches laid out like the Hugging Face Hub's, and local
//! dirs (dataset files and downloads: `download.rs`).
//!
//! Settings are passed explicitly (`resolve_in`), never through the process environment, so the
//! tests run in parallel and never reach the network (except one that aims at a closed port).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};
use tempfile::TempDir;
use wick_hub::{resolve_in, HubError, HubSettings, ModelSource, NotFoundCause, REQUIRED_FILES};

type TestResult = Result<(), Box<dyn Error>>;

const ID: &str = "acme/tiny-bert";
const MAIN_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const DEV_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// Writes a snapshot holding `files` (content = file name) and, when `branch` is given, a ref.
fn add_snapshot(cache: &Path, commit: &str, branch: Option<&str>, files: &[&str]) -> TestResult {
    let repo_dir = cache.join("models--acme--tiny-bert");
    let snapshot = repo_dir.join("snapshots").join(commit);
    fs::create_dir_all(&snapshot)?;
    for file in files {
        fs::write(snapshot.join(file), file)?;
    }
    if let Some(branch) = branch {
        let ref_path = repo_dir.join("refs").join(branch);
        fs::create_dir_all(ref_path.parent().ok_or("ref has no parent")?)?;
        fs::write(ref_path, commit)?;
    }
    Ok(())
}

fn offline(cache: &Path) -> HubSettings {
    HubSettings {
        offline: true,
        ..HubSettings::new(cache)
    }
}

fn source(revision: &str) -> ModelSource {
    ModelSource {
        revision: revision.to_string(),
        ..ModelSource::from_id(ID)
    }
}

fn snapshot_dir(cache: &Path, commit: &str) -> PathBuf {
    cache
        .join("models--acme--tiny-bert")
        .join("snapshots")
        .join(commit)
}

#[test]
fn finds_cached_model_through_refs_main() -> TestResult {
    let cache = TempDir::new()?;
    add_snapshot(cache.path(), MAIN_COMMIT, Some("main"), &REQUIRED_FILES)?;

    let resolved = resolve_in(&source("main"), &offline(cache.path()))?;

    let snapshot = snapshot_dir(cache.path(), MAIN_COMMIT);
    assert_eq!(resolved.id, ID);
    assert_eq!(resolved.revision, "main");
    assert_eq!(resolved.commit.as_deref(), Some(MAIN_COMMIT));
    assert_eq!(resolved.config, snapshot.join("config.json"));
    assert_eq!(resolved.tokenizer, snapshot.join("tokenizer.json"));
    assert_eq!(resolved.weights, snapshot.join("model.safetensors"));
    Ok(())
}

#[test]
fn cache_lookup_agrees_with_hf_hub_cache_repo_get() -> TestResult {
    let cache = TempDir::new()?;
    add_snapshot(cache.path(), MAIN_COMMIT, Some("main"), &REQUIRED_FILES)?;

    let resolved = resolve_in(&source("main"), &offline(cache.path()))?;

    let hf_repo = Cache::new(cache.path().to_path_buf()).repo(Repo::with_revision(
        ID.to_string(),
        RepoType::Model,
        "main".to_string(),
    ));
    assert_eq!(hf_repo.get("config.json"), Some(resolved.config));
    assert_eq!(hf_repo.get("tokenizer.json"), Some(resolved.tokenizer));
    assert_eq!(hf_repo.get("model.safetensors"), Some(resolved.weights));
    Ok(())
}

#[test]
fn branch_ref_selects_its_own_snapshot() -> TestResult {
    let cache = TempDir::new()?;
    add_snapshot(cache.path(), MAIN_COMMIT, Some("main"), &REQUIRED_FILES)?;
    add_snapshot(
        cache.path(),
        DEV_COMMIT,
        Some("feature/dev"),
        &REQUIRED_FILES,
    )?;

    let resolved = resolve_in(&source("feature/dev"), &offline(cache.path()))?;

    assert_eq!(resolved.commit.as_deref(), Some(DEV_COMMIT));
    assert_eq!(
        resolved.weights,
        snapshot_dir(cache.path(), DEV_COMMIT).join("model.safetensors")
    );
    Ok(())
}

#[test]
fn ref_with_trailing_newline_still_resolves() -> TestResult {
    let cache = TempDir::new()?;
    add_snapshot(cache.path(), MAIN_COMMIT, None, &REQUIRED_FILES)?;
    let refs = cache.path().join("models--acme--tiny-bert").join("refs");
    fs::create_dir_all(&refs)?;
    fs::write(refs.join("main"), format!("{MAIN_COMMIT}\n"))?;

    let resolved = resolve_in(&source("main"), &offline(cache.path()))?;

    assert_eq!(resolved.commit.as_deref(), Some(MAIN_COMMIT));
    Ok(())
}

#[test]
fn commit_hash_revision_reads_snapshot_without_a_ref() -> TestResult {
    let cache = TempDir::new()?;
    // No refs/ at all: Python's huggingface_hub writes none for a download pinned to a commit.
    add_snapshot(cache.path(), DEV_COMMIT, None, &REQUIRED_FILES)?;

    let resolved = resolve_in(&source(DEV_COMMIT), &offline(cache.path()))?;

    assert_eq!(resolved.revision, DEV_COMMIT);
    assert_eq!(resolved.commit.as_deref(), Some(DEV_COMMIT));
    assert_eq!(
        resolved.config,
        snapshot_dir(cache.path(), DEV_COMMIT).join("config.json")
    );
    Ok(())
}

#[test]
fn offline_missing_model_error_names_id_cache_dir_and_make_model() -> TestResult {
    let cache = TempDir::new()?;

    let Err(err) = resolve_in(&source("main"), &offline(cache.path())) else {
        panic!("resolving an empty cache offline must fail");
    };

    let message = err.to_string();
    assert!(message.contains(ID), "{message}");
    assert!(message.contains("revision main"), "{message}");
    assert!(
        message.contains(&cache.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    assert!(message.contains("make model"), "{message}");
    assert!(message.contains("model.path"), "{message}");
    let HubError::NotFound(not_found) = &err else {
        panic!("expected NotFound, got {err:?}");
    };
    assert_eq!(not_found.cause, NotFoundCause::Offline);
    assert_eq!(not_found.missing, REQUIRED_FILES.to_vec());
    Ok(())
}

#[test]
fn offline_partial_snapshot_names_only_the_missing_file() -> TestResult {
    let cache = TempDir::new()?;
    add_snapshot(
        cache.path(),
        MAIN_COMMIT,
        Some("main"),
        &["config.json", "model.safetensors"],
    )?;

    let Err(err) = resolve_in(&source("main"), &offline(cache.path())) else {
        panic!("a snapshot without tokenizer.json must not resolve");
    };

    let HubError::NotFound(not_found) = &err else {
        panic!("expected NotFound, got {err:?}");
    };
    assert_eq!(not_found.missing, vec!["tokenizer.json"]);
    assert!(err.to_string().contains("tokenizer.json missing"), "{err}");
    Ok(())
}

#[test]
fn unreachable_hub_error_reports_the_network_failure() -> TestResult {
    let cache = TempDir::new()?;
    // Port 1 on loopback refuses connections at once: a network failure without the network.
    let settings = HubSettings {
        endpoint: Some("http://127.0.0.1:1".to_string()),
        ..HubSettings::new(cache.path())
    };

    let Err(err) = resolve_in(&source("main"), &settings) else {
        panic!("a closed endpoint cannot serve the model");
    };

    let message = err.to_string();
    assert!(
        message.contains("downloading config.json from the Hub failed"),
        "{message}"
    );
    assert!(
        message.contains(&cache.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("make model"), "{message}");
    Ok(())
}

#[test]
fn corrupt_ref_is_reported_with_its_path() -> TestResult {
    let cache = TempDir::new()?;
    let refs = cache.path().join("models--acme--tiny-bert").join("refs");
    fs::create_dir_all(&refs)?;
    fs::write(refs.join("main"), "../../etc")?;

    let Err(err) = resolve_in(&source("main"), &offline(cache.path())) else {
        panic!("a ref that is not a commit hash must be refused");
    };

    assert!(matches!(err, HubError::CorruptRef { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&refs.join("main").display().to_string()),
        "{err}"
    );
    Ok(())
}

#[test]
fn local_path_with_all_files_resolves() -> TestResult {
    let dir = TempDir::new()?;
    for file in REQUIRED_FILES {
        fs::write(dir.path().join(file), file)?;
    }

    let resolved = resolve_in(
        &ModelSource::from_path(dir.path()),
        // The cache must not matter for a local path, even offline and nonexistent.
        &offline(&dir.path().join("no-cache-here")),
    )?;

    let canonical = dir.path().canonicalize()?;
    assert_eq!(resolved.id, canonical.display().to_string());
    assert_eq!(resolved.commit, None);
    assert_eq!(resolved.config, canonical.join("config.json"));
    assert_eq!(resolved.tokenizer, canonical.join("tokenizer.json"));
    assert_eq!(resolved.weights, canonical.join("model.safetensors"));
    Ok(())
}

#[test]
fn local_path_missing_weights_names_the_file_and_pytorch_hint() -> TestResult {
    let dir = TempDir::new()?;
    fs::write(dir.path().join("config.json"), "{}")?;
    fs::write(dir.path().join("tokenizer.json"), "{}")?;
    fs::write(dir.path().join("pytorch_model.bin"), "pickle")?;

    let Err(err) = resolve_in(&ModelSource::from_path(dir.path()), &offline(dir.path())) else {
        panic!("a dir without model.safetensors must not resolve");
    };

    let message = err.to_string();
    assert!(message.contains("lacks model.safetensors"), "{message}");
    assert!(!message.contains("config.json"), "{message}");
    assert!(message.contains("pytorch_model.bin"), "{message}");
    Ok(())
}

#[test]
fn local_path_that_does_not_exist_names_model_path() -> TestResult {
    let dir = TempDir::new()?;
    let missing_dir = dir.path().join("nope");

    let Err(err) = resolve_in(&ModelSource::from_path(&missing_dir), &offline(dir.path())) else {
        panic!("a nonexistent model.path must not resolve");
    };

    let message = err.to_string();
    assert!(message.starts_with("model.path"), "{message}");
    assert!(
        message.contains(&missing_dir.display().to_string()),
        "{message}"
    );
    Ok(())
}

#[test]
fn validate_requires_exactly_one_of_id_and_path() {
    let both = ModelSource {
        path: Some(PathBuf::from("/models/x")),
        ..ModelSource::from_id(ID)
    };
    let neither = ModelSource {
        id: None,
        ..ModelSource::from_id(ID)
    };
    for source in [both, neither] {
        let Err(err) = source.validate() else {
            panic!("{source:?} must be invalid");
        };
        let message = err.to_string();
        assert!(message.contains("model.id"), "{message}");
        assert!(message.contains("model.path"), "{message}");
    }
}

#[test]
fn validate_refuses_ids_and_revisions_that_escape_the_cache() {
    for (id, revision) in [
        ("../etc", "main"),
        ("a/b/c", "main"),
        ("", "main"),
        ("acme/tiny bert", "main"),
        (ID, "../../x"),
        (ID, ""),
        (ID, "/abs"),
    ] {
        let source = ModelSource {
            revision: revision.to_string(),
            ..ModelSource::from_id(id)
        };
        assert!(source.validate().is_err(), "{source:?} must be invalid");
    }
    assert!(ModelSource::from_id("bert-base-uncased").validate().is_ok());
    assert!(source("refs/pr/1").validate().is_ok());
}

#[test]
fn validate_refuses_revision_with_local_path() {
    let source = ModelSource {
        revision: "v2".to_string(),
        ..ModelSource::from_path("/models/x")
    };
    let Err(err) = source.validate() else {
        panic!("a revision with model.path must be refused");
    };
    assert!(err.to_string().contains("model.revision"), "{err}");
}

#[test]
fn model_source_defaults_revision_and_rejects_unknown_keys() -> TestResult {
    let parsed: ModelSource = serde_json::from_str(r#"{"id": "acme/tiny-bert"}"#)?;
    assert_eq!(parsed, ModelSource::from_id(ID));

    let Err(err) = serde_json::from_str::<ModelSource>(r#"{"id": "x", "revison": "dev"}"#) else {
        panic!("a misspelt key must be rejected");
    };
    assert!(err.to_string().contains("revison"), "{err}");
    Ok(())
}

#[test]
fn settings_follow_hf_hub_cache_then_hf_home_then_home() -> TestResult {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    };

    let all = HubSettings::from_vars(vars(&[
        ("HF_HUB_CACHE", "/c"),
        ("HF_HOME", "/h"),
        ("HOME", "/home/u"),
    ]))?;
    assert_eq!(all.cache_dir, PathBuf::from("/c"));

    let home = HubSettings::from_vars(vars(&[("HF_HUB_CACHE", ""), ("HF_HOME", "/h")]))?;
    assert_eq!(home.cache_dir, PathBuf::from("/h/hub"));

    let user = HubSettings::from_vars(vars(&[("HOME", "/home/u")]))?;
    assert_eq!(
        user.cache_dir,
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );
    assert!(!user.offline);

    assert!(matches!(
        HubSettings::from_vars(vars(&[])),
        Err(HubError::NoCacheDir)
    ));
    Ok(())
}

#[test]
fn settings_accept_1_true_yes_for_offline() -> TestResult {
    for (value, expected) in [
        ("1", true),
        ("true", true),
        ("YES", true),
        ("0", false),
        ("false", false),
        ("", false),
    ] {
        let settings = HubSettings::from_vars(|name| match name {
            "HOME" => Some("/home/u".to_string()),
            "HF_HUB_OFFLINE" => Some(value.to_string()),
            _ => None,
        })?;
        assert_eq!(settings.offline, expected, "HF_HUB_OFFLINE={value:?}");
    }
    Ok(())
}

#[test]
fn settings_debug_never_shows_the_token() -> TestResult {
    let settings = HubSettings {
        token: Some("hf_secret".to_string()),
        ..HubSettings::new("/c")
    };
    assert!(!format!("{settings:?}").contains("hf_secret"));
    Ok(())
}

/// Needs `make model` first (`make test` runs it).
#[test]
fn default_model_resolves_from_the_real_cache_offline() -> TestResult {
    let settings = HubSettings {
        offline: true,
        ..HubSettings::from_env()?
    };
    let resolved = resolve_in(&ModelSource::default(), &settings)?;
    assert!(resolved.weights.is_file());
    assert!(resolved.commit.is_some());
    Ok(())
}
