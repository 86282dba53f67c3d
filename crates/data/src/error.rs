//! The one error type of `wick-data`: every variant says which file, line, field or config key
//! went wrong, so a user can fix the input without reading the source. A variant wrapping
//! another error says it in its own message (its `cause`, which is not also a `source()`), so
//! printing the chain (`{:#}` with anyhow) shows each cause once.

use std::path::{Path, PathBuf};

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong between a data file on disk and a padded batch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `[data]` config key holds a value that cannot work.
    #[error("invalid config key `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// The file could not be opened or read.
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// `data.format` is unset and the extension does not say which format the file is in.
    #[error(
        "cannot tell the format of {} from its extension: use .jsonl, .json, .csv or .parquet, \
         or set data.format = \"jsonl\" | \"csv\" | \"parquet\"",
        path.display()
    )]
    UnknownFormat { path: PathBuf },

    /// The bytes of the file are not UTF-8; `line` is the 1-based line of the first bad byte.
    #[error("{}: invalid UTF-8", at(path, *line))]
    InvalidUtf8 { path: PathBuf, line: usize },

    /// A JSONL line is not valid JSON.
    #[error("{}: malformed JSON: {cause}", at(path, *line))]
    Json {
        path: PathBuf,
        line: usize,
        cause: serde_json::Error,
    },

    /// A row is well-formed but unusable (not a JSON object, a stray quote, a duplicate column...).
    #[error("{}: {reason}", at(path, *line))]
    BadRow {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A row lacks a field the config asks for.
    #[error(
        "{}: missing field `{field}` (fields present: {})",
        at(path, *line),
        present.join(", ")
    )]
    MissingField {
        path: PathBuf,
        line: usize,
        field: String,
        present: Vec<String>,
    },

    /// A field is present but holds a value of the wrong kind.
    #[error("{}: field `{field}`: {reason}", at(path, *line))]
    BadField {
        path: PathBuf,
        line: usize,
        field: String,
        reason: String,
    },

    /// A CSV record has a different number of fields than the header.
    #[error(
        "{}: record has {found} fields but the header has {expected}",
        at(path, *line)
    )]
    FieldCount {
        path: PathBuf,
        line: usize,
        expected: usize,
        found: usize,
    },

    /// A CSV quoted field is never closed; `line` is where its record begins.
    #[error(
        "{}: unterminated quoted field (the record starting here never closes its quote)",
        at(path, *line)
    )]
    UnterminatedQuote { path: PathBuf, line: usize },

    /// A label value is not in `data.labels`.
    #[error(
        "{}: unknown label {label:?} (known labels: {}){}",
        at(path, *line),
        known.join(", "),
        id_hint(label, known)
    )]
    UnknownLabel {
        path: PathBuf,
        line: usize,
        label: String,
        known: Vec<String>,
    },

    /// A Parquet file could not be read (not Parquet, damaged, or a type the reader lacks).
    #[error("cannot read Parquet file {}: {cause}", path.display())]
    Parquet {
        path: PathBuf,
        cause: parquet::errors::ParquetError,
    },

    /// The file holds no data rows at all.
    #[error("no examples in {}", path.display())]
    Empty { path: PathBuf },

    /// Every row was dropped by `data.filter`.
    #[error(
        "no examples in {} after data.filter ({column} = {value:?} dropped all {filtered_out} rows)",
        path.display()
    )]
    AllFiltered {
        path: PathBuf,
        column: String,
        value: String,
        filtered_out: usize,
    },

    /// The `tokenizers` crate failed to load or run the tokenizer in `path`.
    #[error("tokenizer {}: {cause}", path.display())]
    Tokenizer {
        path: PathBuf,
        cause: tokenizers::Error,
    },

    /// A dataset was built from examples whose targets are not all of one kind.
    #[error("examples mix target kinds: example {index} is {found}, example 0 is {expected}")]
    MixedTargets {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
}

/// Where a row is: `file:line` for text files, `file row N` for Parquet (1-based either way),
/// told apart by the `.parquet` extension.
fn at(path: &Path, line: usize) -> String {
    let parquet = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("parquet"));
    if parquet {
        format!("{} row {line}", path.display())
    } else {
        format!("{}:{line}", path.display())
    }
}

/// For an unknown label that reads as a label id (what `datasets`' `to_json` and `to_csv` write
/// for a `ClassLabel` column), how to give the names instead.
fn id_hint(label: &str, known: &[String]) -> String {
    match label.parse::<usize>() {
        Ok(id) if id < known.len() => format!(
            "; labels are read as names, not ids: write the names ({id} would be {:?} if the ids \
             follow data.labels), or save a Hugging Face dataset with `to_parquet`, whose \
             ClassLabel names wick reads",
            known[id]
        ),
        _ => String::new(),
    }
}
