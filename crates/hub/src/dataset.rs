//! Dataset files on the Hub, named the way `huggingface_hub`'s file system names them (and
//! pandas, polars and DuckDB through it): `hf://datasets/{org}/{name}[@{revision}]/{file}`,
//! e.g. `hf://datasets/dair-ai/emotion@refs%2Fconvert%2Fparquet/split/train/0000.parquet`.
//!
//! A file is looked up in the same Hub cache as models (`datasets--{org}--{name}/`), and
//! downloaded into it when missing and allowed, so a dataset file fetched once (by wick, by
//! Python's `huggingface_hub`, or laid out by hand) is read without network access after.

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::{bad_model_id, bad_revision, fetch, FetchError, HubError, HubSettings, NotFoundCause};

/// What every data path naming a Hub file starts with.
pub const SCHEME: &str = "hf://";
/// The only kind of Hub repository a data path can name.
const DATASETS: &str = "datasets/";
/// The form of a data path on the Hub, for error messages.
const FORM: &str = "hf://datasets/{org}/{name}[@{revision}]/{file}";

/// One file of a dataset repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetFile {
    /// `org/name`.
    pub id: String,
    /// Branch, tag or commit; `main` when the path names none. Percent-decoded, so
    /// `@refs%2Fconvert%2Fparquet` is the branch `refs/convert/parquet`.
    pub revision: String,
    /// The file's path inside the repository, e.g. `data/train-00000-of-00001.parquet`.
    pub file: String,
}

/// `hf://datasets/{id}@{revision}/{file}`, with a revision holding `/` percent-encoded.
impl fmt::Display for DatasetFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let revision = self.revision.replace('%', "%25").replace('/', "%2F");
        write!(f, "{SCHEME}{DATASETS}{}@{revision}/{}", self.id, self.file)
    }
}

impl DatasetFile {
    /// `None` when `path` does not start with `hf://` (a local path); otherwise the file it
    /// names, or why it names none.
    pub fn parse(path: &Path) -> Option<Result<Self, HubError>> {
        let text = path.to_str()?;
        let rest = text.strip_prefix(SCHEME)?;
        let bad = |reason: String| {
            Err(HubError::BadDatasetPath {
                path: text.to_string(),
                reason,
            })
        };
        let Some(rest) = rest.strip_prefix(DATASETS) else {
            return Some(bad(format!(
                "only dataset files can be read from the Hub: expected {FORM}"
            )));
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(org), Some(name_at), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Some(bad(format!(
                "expected {FORM}: the dataset id is org/name and a file inside the repository \
                 follows it"
            )));
        };
        let (name, revision) = match name_at.split_once('@') {
            Some((name, revision)) => match percent_decode(revision) {
                Some(revision) => (name, revision),
                None => {
                    return Some(bad(format!(
                        "revision {revision:?} is not percent-encoded text"
                    )))
                }
            },
            None => (name_at, crate::DEFAULT_REVISION.to_string()),
        };
        let id = format!("{org}/{name}");
        if let Some(reason) = bad_model_id(&id) {
            return Some(bad(format!("dataset id {id:?} {reason}")));
        }
        if let Some(reason) = bad_revision(&revision) {
            return Some(bad(format!("revision {revision:?} {reason}")));
        }
        if file
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Some(bad(format!(
                "file {file:?} has an empty, \".\" or \"..\" part: name a file inside the \
                 repository"
            )));
        }
        Some(Ok(Self {
            id,
            revision,
            file: file.to_string(),
        }))
    }
}

/// A dataset file found in (or downloaded into) the Hub cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFile {
    /// The commit the file belongs to: its snapshot directory's name.
    pub commit: String,
    /// The file on disk.
    pub path: PathBuf,
}

/// What was looked for, where, and why it could not be had; see [`HubError::DatasetFileNotFound`].
#[derive(Debug, thiserror::Error)]
#[error(
    "{file} is not in the Hugging Face cache at {}; {cause}. To get it: unset HF_HUB_OFFLINE with \
     network access (and HF_TOKEN for a gated or private dataset), or download the file and give \
     its local path",
    cache_dir.display()
)]
pub struct DatasetFileNotFound {
    pub file: DatasetFile,
    /// The cache directory searched.
    pub cache_dir: PathBuf,
    /// Why no download filled the gap.
    pub cause: NotFoundCause,
}

/// The file `file` names: from the cache when there, else downloaded into it unless offline.
pub fn resolve_dataset_file(
    file: &DatasetFile,
    settings: &HubSettings,
) -> Result<ResolvedFile, HubError> {
    let repo = Repo::with_revision(file.id.clone(), RepoType::Dataset, file.revision.clone());
    match fetch(&repo, &[file.file.as_str()], settings) {
        Ok((commit, snapshot)) => Ok(ResolvedFile {
            commit,
            path: snapshot.join(&file.file),
        }),
        Err(FetchError::Hub(e)) => Err(e),
        Err(FetchError::Missing(_, cause)) => Err(HubError::DatasetFileNotFound(Box::new(
            DatasetFileNotFound {
                file: file.clone(),
                cache_dir: settings.cache_dir.clone(),
                cause,
            },
        ))),
    }
}

/// For a data path: `None` when it is local; the cached (or downloaded) file when it is an
/// `hf://` path, with settings read from the environment ([`HubSettings::from_env`]).
pub fn local_data_file(path: &Path) -> Result<Option<ResolvedFile>, HubError> {
    match DatasetFile::parse(path) {
        None => Ok(None),
        Some(file) => resolve_dataset_file(&file?, &HubSettings::from_env()?).map(Some),
    }
}

/// `%XX` escapes decoded; `None` when an escape is malformed or the bytes are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Option<Result<DatasetFile, HubError>> {
        DatasetFile::parse(Path::new(text))
    }

    #[test]
    fn local_paths_are_not_hub_paths() {
        assert!(parse("data/triage/train.jsonl").is_none());
        assert!(parse("/abs/hf/datasets/x.csv").is_none());
    }

    #[test]
    fn parses_id_revision_and_file() {
        let file = parse("hf://datasets/dair-ai/emotion/split/train.parquet")
            .and_then(Result::ok)
            .expect("a dataset file");
        assert_eq!(
            file,
            DatasetFile {
                id: "dair-ai/emotion".into(),
                revision: "main".into(),
                file: "split/train.parquet".into(),
            }
        );
        let converted =
            parse("hf://datasets/org/name@refs%2Fconvert%2Fparquet/default/train/0000.parquet")
                .and_then(Result::ok)
                .expect("a dataset file");
        assert_eq!(converted.revision, "refs/convert/parquet");
        assert_eq!(converted.file, "default/train/0000.parquet");
        assert_eq!(
            converted.to_string(),
            "hf://datasets/org/name@refs%2Fconvert%2Fparquet/default/train/0000.parquet"
        );
    }

    #[test]
    fn malformed_hub_paths_say_what_is_wrong() {
        for (path, needle) in [
            ("hf://org/model/file.parquet", "only dataset files"),
            (
                "hf://datasets/org/name",
                "expected hf://datasets/{org}/{name}",
            ),
            ("hf://datasets/org/na me/f.csv", "may only contain"),
            ("hf://datasets/org/name/../f.csv", "\"..\" part"),
            ("hf://datasets/org/name@/f.csv", "revision \"\""),
            ("hf://datasets/org/name@%zz/f.csv", "percent-encoded"),
        ] {
            let err = parse(path).expect("a hub path").expect_err(path);
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("data path {path:?}")),
                "{message}"
            );
            assert!(message.contains(needle), "{path}: {message}");
        }
    }
}
