//! The `[data]` config section: which files to read, how rows become text and targets, and how
//! examples are cut into batches. [`DataConfig::validate`] rejects bad values by key name before
//! any file is opened.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clean::Clean;
use crate::error::{Error, Result, Unit};
use crate::tokenize::Truncation;

/// On-disk format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line, or (a file whose first character is `[`) one JSON array of
    /// objects, as `datasets`' `to_json(lines=False)`, `gh issue list --json` and most APIs
    /// write, or (`data.json_field`) one object whose key lists the records.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// Apache Parquet (Hugging Face datasets' format); `ClassLabel` ids read as their names.
    Parquet,
}

impl Format {
    /// What a row's number counts in a file of this format: lines of text, or Parquet's rows.
    pub fn unit(self) -> Unit {
        match self {
            Self::Jsonl | Self::Csv => Unit::Line,
            Self::Parquet => Unit::Row,
        }
    }

    /// The format's name in configs (`data.format`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
}

/// `data.other_labels`: what a label outside `data.labels` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherLabels {
    /// Refuse the row, naming the label and the known ones.
    #[default]
    Error,
    /// Skip the label; a single-label row left without one is left out.
    Ignore,
}

/// Keep only rows whose `column` equals `equals` exactly (after number/bool stringification).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Column (CSV, Parquet) or key (JSONL) to compare, e.g. `repo`.
    pub column: String,
    /// Value a row must hold in `column` to be kept, e.g. `facebook/react`.
    pub equals: String,
}

/// `data.truncation`: which part of a text longer than `max_len` is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationSide {
    /// The first tokens.
    #[default]
    Head,
    /// The last tokens.
    Tail,
    /// `data.head_tokens` from the start, the rest from the end.
    HeadTail,
}

/// The `[data]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training file (`.jsonl`, `.json`, `.csv` or `.parquet`).
    pub train: PathBuf,
    /// Validation file; when absent, `valid_fraction` of `train` is held out instead.
    #[serde(default)]
    pub valid: Option<PathBuf>,
    /// Test file, evaluated once after training.
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Files of variants of `train`'s rows (back-translations, paraphrases), row for row: each
    /// is read as `train` is (fields, `filter`, labels, `clean`), its k-th kept row is a variant
    /// of `train`'s k-th kept row and carries the same label(s). The variants of the rows a run
    /// trains on join its training set; those of the rows it validates on (held out by
    /// `valid_fraction` or `folds`) are left out, so no run trains on a paraphrase of a row it
    /// validates on. Empty (the default): none. Not with `train.distill_from`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub augment: Vec<PathBuf>,
    /// File format; when absent it is chosen from each file's extension.
    #[serde(default)]
    pub format: Option<Format>,
    /// In a JSON file holding one object, the key whose list holds the records (Hugging Face
    /// `load_dataset("json", field=...)`'s `field`), e.g. `"issues"` for a Jira search export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_field: Option<String>,
    /// Fields joined (in this order) into the text the model reads, e.g. `["title", "body"]`.
    /// Here and in `label_field` and `filter.column`, a name with dots reaches into nested JSON
    /// objects and Parquet struct columns (`fields.summary`), as `Dataset.flatten()` names them.
    #[serde(default = "default_text_fields")]
    pub text_fields: Vec<String>,
    /// Placed between non-empty text fields.
    #[serde(default = "default_text_separator")]
    pub text_separator: String,
    /// Fields joined (by `text_separator`) into a second text read beside the first as a pair
    /// (`[CLS] text [SEP] pair [SEP]`, segment ids 0 then 1; `<s> text </s></s> pair </s>` for
    /// RoBERTa and MPNet), as `tokenizer(text, text_pair)` encodes sentence pairs: a question
    /// and an answer, two issues that may be duplicates, a title and its body. Empty (the
    /// default): one text. A long pair is cut longest first (the longer text loses tokens until
    /// both fit), each text keeping its tokens by `truncation`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pair_fields: Vec<String>,
    /// Markup removed from each joined text before tokenization (`[data.clean]`; all off by
    /// default): HTML comments, `<details>` sections, the middle of long code blocks.
    #[serde(default, skip_serializing_if = "Clean::is_off")]
    pub clean: Clean,
    /// Field holding the label (a string, or for `multi_label` a list / comma-separated string).
    /// A label that is an object with a string `name` (GitHub's and GitLab's label objects)
    /// reads as that name.
    #[serde(default = "default_label_field")]
    pub label_field: String,
    /// The label set in id order: label `labels[i]` has id `i`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Each row may carry several labels; targets become multi-hot vectors.
    #[serde(default)]
    pub multi_label: bool,
    /// What a label outside `labels` does: an error naming it (the default), or nothing
    /// (`ignore`: an issue tracker's other labels are skipped; a single-label row with none of
    /// `labels` is left out and counted).
    #[serde(default)]
    pub other_labels: OtherLabels,
    /// Keep only rows matching this filter (e.g. one repository of a multi-repo dataset).
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Maximum tokens per example, `[CLS]` and `[SEP]` included; longer texts are truncated.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Which tokens of a longer text are kept: `"head"` (the start), `"tail"` (the end) or
    /// `"head_tail"` (`head_tokens` from the start and the rest from the end).
    #[serde(default)]
    pub truncation: TruncationSide,
    /// Tokens kept from the start of a long text under `truncation = "head_tail"`.
    #[serde(default = "default_head_tokens")]
    pub head_tokens: usize,
    /// Share of each label held out for validation when `valid` is absent; in [0, 1). 0 holds
    /// nothing out: every row trains and there is no validation (a refit on all the data).
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// K-fold cross-validation (0 = off, else at least 2): the training file is dealt into this
    /// many stratified folds and fold `fold` is the validation set, in place of `valid_fraction`
    /// (`split_seed` seeds the deal). Not with `valid`.
    #[serde(default)]
    pub folds: usize,
    /// The fold held out for validation under `folds`, `0..folds`.
    #[serde(default)]
    pub fold: usize,
    /// Nested cross-validation: the folds are dealt from the rows that a `valid_fraction` split
    /// of the same `split_seed` trains on, and the rows that split validates on are left out of
    /// the run entirely. So a run with that split (no `folds`) validates on rows no fold run
    /// saw: a student distilled from the fold runs (`train.distill_out_of_fold`), say.
    #[serde(default)]
    pub nested_folds: bool,
    /// Seed of that held-out split; when absent the run's `train.seed` seeds it. Setting it keeps
    /// one validation split while `train.seed` varies (the members of an ensemble, say).
    #[serde(default)]
    pub split_seed: Option<u64>,
    /// Length-bucketing window in examples (0 = off): shuffled examples are sorted by length
    /// within windows of this size so batches hold similar lengths and pad less.
    #[serde(default)]
    pub bucket_window: usize,
}

fn default_text_fields() -> Vec<String> {
    vec!["text".to_owned()]
}
fn default_text_separator() -> String {
    "\n\n".to_owned()
}
fn default_label_field() -> String {
    "label".to_owned()
}
fn default_max_len() -> usize {
    128
}
fn default_head_tokens() -> usize {
    128
}
fn default_valid_fraction() -> f64 {
    0.1
}

/// Below this, `[CLS]` + `[SEP]` leave almost no room for text: surely a typo.
const MIN_MAX_LEN: usize = 8;

impl DataConfig {
    /// A config reading `train` with every other key at its default (labels still to be set).
    pub fn new(train: impl Into<PathBuf>) -> Self {
        Self {
            train: train.into(),
            valid: None,
            test: None,
            augment: Vec::new(),
            format: None,
            json_field: None,
            text_fields: default_text_fields(),
            text_separator: default_text_separator(),
            pair_fields: Vec::new(),
            clean: Clean::default(),
            label_field: default_label_field(),
            labels: Vec::new(),
            multi_label: false,
            other_labels: OtherLabels::Error,
            filter: None,
            max_len: default_max_len(),
            truncation: TruncationSide::Head,
            head_tokens: default_head_tokens(),
            valid_fraction: default_valid_fraction(),
            folds: 0,
            fold: 0,
            nested_folds: false,
            split_seed: None,
            bucket_window: 0,
        }
    }

    /// Checks every key whose value could only fail later; errors name the key (`data.labels`).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Error::Config {
            key: format!("data.{key}"),
            reason,
        };
        if self.train.as_os_str().is_empty() {
            return Err(bad("train", "must name a file".into()));
        }
        // A malformed `hf://` path is refused here, before anything is read or downloaded.
        let files = [
            ("train", Some(&self.train)),
            ("valid", self.valid.as_ref()),
            ("test", self.test.as_ref()),
        ]
        .into_iter()
        .chain(self.augment.iter().map(|p| ("augment", Some(p))));
        for (key, path) in files {
            if let Some(Err(cause)) = path.and_then(|p| wick_hub::dataset::DatasetFile::parse(p)) {
                return Err(bad(key, cause.to_string()));
            }
        }
        if self.labels.is_empty() {
            return Err(bad("labels", "must list at least one label".into()));
        }
        let mut seen = HashSet::new();
        for label in &self.labels {
            if label.is_empty() {
                return Err(bad("labels", "labels must be non-empty strings".into()));
            }
            if !seen.insert(label.as_str()) {
                return Err(bad("labels", format!("label {label:?} is listed twice")));
            }
            if self.multi_label && label.contains(',') {
                return Err(bad(
                    "labels",
                    format!("label {label:?} contains ',', the multi-label CSV separator"),
                ));
            }
        }
        if self.max_len < MIN_MAX_LEN {
            return Err(bad(
                "max_len",
                format!("must be at least {MIN_MAX_LEN}, got {}", self.max_len),
            ));
        }
        // `[CLS]` and `[SEP]` take two places; the tail must keep at least one token.
        if self.truncation == TruncationSide::HeadTail
            && !(1..self.max_len.saturating_sub(2)).contains(&self.head_tokens)
        {
            return Err(bad(
                "head_tokens",
                format!(
                    "with truncation = \"head_tail\" it must be at least 1 and below max_len - 2 \
                     = {}, got {}",
                    self.max_len.saturating_sub(2),
                    self.head_tokens
                ),
            ));
        }
        if !(self.valid_fraction >= 0.0 && self.valid_fraction < 1.0) {
            return Err(bad(
                "valid_fraction",
                format!(
                    "must be at least 0 and below 1, got {}",
                    self.valid_fraction
                ),
            ));
        }
        if self.folds == 1 {
            return Err(bad(
                "folds",
                "must be 0 (no cross-validation) or at least 2, got 1".into(),
            ));
        }
        if self.folds >= 2 {
            if let Some(valid) = &self.valid {
                return Err(bad(
                    "folds",
                    format!(
                        "cross-validation folds are cut from data.train, but data.valid is also \
                         set ({}): remove one of them",
                        valid.display()
                    ),
                ));
            }
            if self.fold >= self.folds {
                return Err(bad(
                    "fold",
                    format!(
                        "must be below data.folds = {} (folds count from 0), got {}",
                        self.folds, self.fold
                    ),
                ));
            }
        } else if self.fold != 0 {
            return Err(bad(
                "fold",
                format!("is {}, but data.folds is not set", self.fold),
            ));
        }
        if self.nested_folds && self.folds < 2 {
            return Err(bad(
                "nested_folds",
                "deals data.folds inside a valid_fraction split, but data.folds is not set".into(),
            ));
        }
        if self.nested_folds && self.valid_fraction == 0.0 {
            return Err(bad(
                "nested_folds",
                "leaves out the rows a valid_fraction split validates on, but \
                 data.valid_fraction is 0"
                    .into(),
            ));
        }
        if self.text_fields.is_empty() {
            return Err(bad("text_fields", "must list at least one field".into()));
        }
        if self.json_field.as_deref() == Some("") {
            return Err(bad("json_field", "must name a key (or be left out)".into()));
        }
        // Reading the answer as input would make any classifier look perfect.
        for (key, fields) in [
            ("text_fields", &self.text_fields),
            ("pair_fields", &self.pair_fields),
        ] {
            if fields.contains(&self.label_field) {
                return Err(bad(
                    key,
                    format!(
                        "contains the label field {:?} (data.label_field)",
                        self.label_field
                    ),
                ));
            }
        }
        if let Some(both) = self
            .pair_fields
            .iter()
            .find(|f| self.text_fields.contains(f))
        {
            return Err(bad(
                "pair_fields",
                format!(
                    "contains {both:?}, which data.text_fields also reads: a field belongs to \
                     one text of the pair"
                ),
            ));
        }
        if let Some(filter) = &self.filter {
            if filter.column.is_empty() {
                return Err(bad("filter.column", "must name a column".into()));
            }
        }
        Ok(())
    }

    /// Whether a run of this config has validation data: a `valid` file, a fold of `folds`, or a
    /// held-out `valid_fraction`.
    pub fn has_validation(&self) -> bool {
        self.valid.is_some() || self.folds >= 2 || self.valid_fraction > 0.0
    }

    /// What a run of this config validates on when it holds rows of `train` out: `fold 1 of 5`
    /// (`fold 1 of 5 (nested: the held-out 20% left out)`) or `held-out 10%`. `None` with a `valid` file or nothing held out.
    pub fn held_out_name(&self) -> Option<String> {
        if self.valid.is_some() {
            None
        } else if self.folds >= 2 && self.nested_folds {
            Some(format!(
                "fold {} of {} (nested: the held-out {:.0}% left out)",
                self.fold,
                self.folds,
                self.valid_fraction * 100.0
            ))
        } else if self.folds >= 2 {
            Some(format!("fold {} of {}", self.fold, self.folds))
        } else {
            (self.valid_fraction > 0.0)
                .then(|| format!("held-out {:.0}%", self.valid_fraction * 100.0))
        }
    }

    /// How the tokenizer truncates long texts under this config.
    pub fn truncation(&self) -> Truncation {
        match self.truncation {
            TruncationSide::Head => Truncation::Head,
            TruncationSide::Tail => Truncation::Tail,
            TruncationSide::HeadTail => Truncation::HeadTail {
                head: self.head_tokens,
            },
        }
    }

    /// The format of `path`: `format` when set, else from the extension.
    pub fn format_of(&self, path: &Path) -> Result<Format> {
        if let Some(format) = self.format {
            return Ok(format);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "json") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some("parquet") => Ok(Format::Parquet),
            _ => Err(Error::UnknownFormat {
                path: path.to_owned(),
            }),
        }
    }
}
