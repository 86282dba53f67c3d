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

    /// An `hf://datasets/...` data path names no file, or its file is neither in the Hugging
    /// Face cache nor downloadable (the message names the path, the cache and why).
    #[error(transparent)]
    Hub(#[from] wick_hub::HubError),

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

    /// The bytes of the file are not UTF-8; `at` is the line of the first bad byte.
    #[error("{at}: invalid UTF-8")]
    InvalidUtf8 { at: Location },

    /// A JSONL line is not valid JSON.
    #[error("{at}: malformed JSON: {cause}")]
    Json {
        at: Location,
        cause: serde_json::Error,
    },

    /// A row is well-formed but unusable (not a JSON object, a stray quote, a duplicate column...).
    #[error("{at}: {reason}")]
    BadRow { at: Location, reason: String },

    /// A row lacks a field the config asks for.
    #[error("{at}: missing field `{field}` (fields present: {})", present.join(", "))]
    MissingField {
        at: Location,
        field: String,
        present: Vec<String>,
    },

    /// A field is present but holds a value of the wrong kind.
    #[error("{at}: field `{field}`: {reason}")]
    BadField {
        at: Location,
        field: String,
        reason: String,
    },

    /// A CSV record has a different number of fields than the header.
    #[error("{at}: record has {found} fields but the header has {expected}")]
    FieldCount {
        at: Location,
        expected: usize,
        found: usize,
    },

    /// A CSV quoted field is never closed; `at` is where its record begins.
    #[error("{at}: unterminated quoted field (the record starting here never closes its quote)")]
    UnterminatedQuote { at: Location },

    /// A label value is not in `data.labels`.
    #[error(
        "{at}: unknown label {label:?} (known labels: {}){}",
        known.join(", "),
        id_hint(label, known)
    )]
    UnknownLabel {
        at: Location,
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

    /// With `data.other_labels = "ignore"`, no row holds a label of `data.labels`.
    #[error(
        "no examples in {}: none of its {rows} rows holds one of data.labels ({}), and \
         data.other_labels = \"ignore\" left them all out",
        path.display(),
        known.join(", ")
    )]
    NoKnownLabel {
        path: PathBuf,
        rows: usize,
        known: Vec<String>,
    },

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

/// Where a row is in its file, 1-based: a line of a text file (JSONL, CSV: where the record
/// starts, as an editor shows it) or a row of a Parquet file. The unit comes from the format the
/// file was read as, not from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub unit: Unit,
    /// 1-based line, row or item.
    pub number: usize,
}

/// What [`Location::number`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A physical line of a text file.
    Line,
    /// A row of a columnar file, which has no lines.
    Row,
    /// An input of a request (a prediction server's), which is no file: its `path` names the
    /// request.
    Item,
}

impl Location {
    /// Line `number` (1-based) of the text file at `path`.
    pub fn line(path: &Path, number: usize) -> Self {
        Self::new(path, Unit::Line, number)
    }

    /// Row `number` (1-based) of the columnar file at `path`.
    pub fn row(path: &Path, number: usize) -> Self {
        Self::new(path, Unit::Row, number)
    }

    pub fn new(path: &Path, unit: Unit, number: usize) -> Self {
        Self {
            path: path.to_owned(),
            unit,
            number,
        }
    }
}

/// "line", "row" or "item".
impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Line => "line",
            Self::Row => "row",
            Self::Item => "item",
        })
    }
}

/// `file:line` as compilers and editors write it; `file row N` for a row, `request item N` for
/// an input of a request.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit {
            Unit::Line => write!(f, "{}:{}", self.path.display(), self.number),
            Unit::Row => write!(f, "{} row {}", self.path.display(), self.number),
            Unit::Item => write!(f, "{} item {}", self.path.display(), self.number),
        }
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
