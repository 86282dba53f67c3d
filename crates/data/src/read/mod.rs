//! Turns a JSONL, CSV or Parquet file into [`Example`]s: applies `data.filter`, joins
//! `data.text_fields` into one text (and `data.pair_fields` into its pair) and maps the label
//! field to a [`Target`]. Every rejected row
//! is reported with its [`Location`]: file and 1-based line (a Parquet file's 1-based row).
//! A path `hf://datasets/{org}/{name}[@{revision}]/{file}` reads that file of a Hub dataset
//! through the local Hugging Face cache (`wick_hub::dataset`).

mod csv;
mod parquet;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::clean::CleanStats;
use crate::config::{DataConfig, Format, OtherLabels};
use crate::error::{Error, Location, Result, Unit};

/// What the model should predict for one example.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Single-label: the label id, an index into `data.labels`.
    Single(u32),
    /// Multi-label: a multi-hot vector of length `data.labels.len()` (1.0 = label present).
    Multi(Vec<f32>),
    /// Unlabelled (prediction input from [`read_unlabelled`]).
    None,
}

/// One data row, ready for tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The non-empty `data.text_fields` joined by `data.text_separator`, then `data.clean`ed.
    pub text: String,
    /// The second text of a pair: `data.pair_fields` joined and cleaned the same way; `None`
    /// when the config reads single texts.
    pub pair: Option<String>,
    /// The label(s) of the row.
    pub target: Target,
    /// 1-based line where the row starts in its file.
    pub line: usize,
    /// All fields of the row (CSV values are strings), e.g. to echo ids next to predictions.
    pub fields: Map<String, Value>,
}

impl Example {
    /// What the tokenizer reads: the text, and the pair's second text if there is one (what
    /// [`crate::TextTokenizer::encode_pairs`] takes; also what tells two rows' inputs apart).
    pub fn input(&self) -> (&str, Option<&str>) {
        (self.text.as_str(), self.pair.as_deref())
    }
}

/// The examples of one file and how many rows `data.filter` dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOutcome {
    /// Kept rows in file order.
    pub examples: Vec<Example>,
    /// Rows dropped by `data.filter`.
    pub filtered_out: usize,
    /// Single-label rows left out for holding none of `data.labels` (only with
    /// `data.other_labels = "ignore"`).
    pub without_label: usize,
    /// What `data.clean` removed from the kept rows' texts (nothing counted when it is off).
    pub cleaned: CleanStats,
}

/// Reads labelled examples (training, validation, test). A row without the label field is an
/// error, as is a label outside `cfg.labels`.
pub fn read_examples(path: &Path, cfg: &DataConfig) -> Result<ReadOutcome> {
    read(path, cfg, true)
}

/// Reads `path`, a file of variants of `originals` (the rows [`read_examples`] kept of the
/// training file at `train`) row for row, as `data.augment` gives them: read as `cfg` reads the
/// training file, its k-th kept row is a variant of `originals[k]`. A file that keeps another
/// number of rows, or a row labelled otherwise than the row it varies, is refused, naming the
/// first row out of step in both files.
pub fn read_variants(
    path: &Path,
    cfg: &DataConfig,
    train: &Path,
    originals: &[Example],
) -> Result<Vec<Example>> {
    let variants = read_examples(path, cfg)?.examples;
    let at = |file: &Path, row: &Example| -> Result<Location> {
        Ok(Location::new(file, cfg.format_of(file)?.unit(), row.line))
    };
    let out_of_step = variants
        .iter()
        .zip(originals)
        .find(|(variant, original)| variant.target != original.target);
    if let Some((variant, original)) = out_of_step {
        return Err(Error::BadRow {
            at: at(path, variant)?,
            reason: format!(
                "data.augment: a variant of {} (the row in the same place among the kept rows), \
                 but labelled {}, not {}",
                at(train, original)?,
                target_names(&variant.target, &cfg.labels),
                target_names(&original.target, &cfg.labels),
            ),
        });
    }
    if variants.len() != originals.len() {
        let first_extra = match variants.get(originals.len()) {
            Some(row) => format!(", the first extra one at {}", at(path, row)?),
            None => format!(
                ", none for {} and after",
                at(train, &originals[variants.len()])?
            ),
        };
        return Err(Error::Config {
            key: "data.augment".into(),
            reason: format!(
                "{} keeps {} rows but {} keeps {}: a file of variants holds one for each row, \
                 in the same order{first_extra}",
                path.display(),
                variants.len(),
                train.display(),
                originals.len(),
            ),
        });
    }
    Ok(variants)
}

/// A target as its label names: `"bug"`, `"[bug, docs]"`, or `"no label"`.
fn target_names(target: &Target, labels: &[String]) -> String {
    let name = |id: usize| labels.get(id).map_or("?", String::as_str);
    match target {
        Target::Single(id) => format!("{:?}", name(*id as usize)),
        Target::Multi(hot) => {
            let names: Vec<&str> = (0..hot.len()).filter(|&i| hot[i] > 0.5).map(name).collect();
            format!("[{}]", names.join(", "))
        }
        Target::None => "no label".into(),
    }
}

/// Reads examples for prediction: the label field is ignored, every target is [`Target::None`].
pub fn read_unlabelled(path: &Path, cfg: &DataConfig) -> Result<ReadOutcome> {
    read(path, cfg, false)
}

/// An example for prediction from one JSON object that is not a row of a file (a line of
/// `predict`'s stdin, an input of a request to `serve`), `at` naming it in errors: its string
/// field `text`, when it has one, is the text as it is; otherwise `cfg.text_fields` are joined
/// as a file's row's are (dotted names included), so a record of the training file's schema
/// (an issue's `title` and `body`) reads as training read it. Under `data.pair_fields` the
/// pair is its string field `text_pair` (as a Hugging Face pipeline takes pairs), else those
/// fields joined. Then `data.clean` applies. `data.filter` does not: the caller chose this
/// record. Other fields stay in [`Example::fields`].
pub fn unlabelled_record(
    fields: Map<String, Value>,
    cfg: &DataConfig,
    at: &Location,
) -> Result<Example> {
    let reader = RowReader {
        path: &at.path,
        unit: at.unit,
        cfg,
        label_ids: HashMap::new(),
    };
    // Names the other way in too: the record may have meant to give its text whole.
    let given = |whole: &'static str, key: &'static str, names: &[String]| match fields.get(whole) {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => reader.join(at.number, &fields, names).map_err(|e| match e {
            Error::MissingField { at, field, present } if field != whole => Error::BadRow {
                at,
                reason: format!(
                    "no string field `{whole}`, and no field `{field}` of {key} (fields \
                     present: {})",
                    present.join(", ")
                ),
            },
            other => other,
        }),
    };
    let text = given("text", "data.text_fields", &cfg.text_fields)?;
    let pair = if cfg.pair_fields.is_empty() {
        if fields.contains_key("text_pair") {
            return Err(Error::BadRow {
                at: at.clone(),
                reason: "has a field `text_pair`, but this model reads single texts (its \
                         data.pair_fields is empty)"
                    .into(),
            });
        }
        None
    } else {
        Some(given("text_pair", "data.pair_fields", &cfg.pair_fields)?)
    };
    Ok(Example {
        text: cfg.clean.apply(&text).into_owned(),
        pair: pair.map(|pair| cfg.clean.apply(&pair).into_owned()),
        target: Target::None,
        line: at.number,
        fields,
    })
}

fn read(path: &Path, cfg: &DataConfig, labelled: bool) -> Result<ReadOutcome> {
    let format = cfg.format_of(path)?;
    // An `hf://datasets/...` path reads its file in the Hub cache (downloaded when missing);
    // messages name rows by the path as given.
    let hub_file = wick_hub::dataset::local_data_file(path)?;
    let file = hub_file.as_ref().map_or(path, |hub| hub.path.as_path());
    let rows = match format {
        Format::Jsonl => {
            let text = read_text(file, path)?;
            match &cfg.json_field {
                Some(key) => json_field_rows(path, &text, key)?,
                None if text.trim_start().starts_with('[') => json_array_rows(path, &text, &text)?,
                None => jsonl_rows(path, &text).map_err(|e| one_object_hint(path, &text, e))?,
            }
        }
        other if cfg.json_field.is_some() => {
            return Err(Error::Config {
                key: "data.json_field".into(),
                reason: format!(
                    "picks the records of a JSON file; {} is read as {}",
                    path.display(),
                    other.name()
                ),
            });
        }
        Format::Csv => csv_rows(path, &read_text(file, path)?)?,
        Format::Parquet => parquet::rows(file, path, cfg)?,
    };
    if rows.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }

    let label_ids: HashMap<&str, u32> = cfg
        .labels
        .iter()
        .zip(0u32..)
        .map(|(label, id)| (label.as_str(), id))
        .collect();
    let row_reader = RowReader {
        path,
        unit: format.unit(),
        cfg,
        label_ids,
    };
    let mut examples = Vec::with_capacity(rows.len());
    let mut filtered_out = 0;
    let mut cleaned = CleanStats::default();
    let mut without_label = 0;
    for (line, fields) in rows {
        if !row_reader.keep(line, &fields)? {
            filtered_out += 1;
            continue;
        }
        let target = if labelled {
            match row_reader.target(line, &fields)? {
                Some(target) => target,
                None => {
                    without_label += 1;
                    continue;
                }
            }
        } else {
            Target::None
        };
        let mut clean = |joined: String| {
            if cfg.clean.is_off() {
                return joined;
            }
            let cut = match cfg.clean.apply(&joined) {
                Cow::Owned(cut) => Some(cut),
                Cow::Borrowed(_) => None,
            };
            cleaned.add(&joined, cut.as_deref().unwrap_or(&joined));
            cut.unwrap_or(joined)
        };
        let text = clean(row_reader.join(line, &fields, &cfg.text_fields)?);
        let pair = if cfg.pair_fields.is_empty() {
            None
        } else {
            Some(clean(row_reader.join(line, &fields, &cfg.pair_fields)?))
        };
        examples.push(Example {
            text,
            pair,
            target,
            line,
            fields,
        });
    }
    if examples.is_empty() && without_label > 0 {
        return Err(Error::NoKnownLabel {
            path: path.to_owned(),
            rows: without_label,
            known: cfg.labels.clone(),
        });
    }
    if examples.is_empty() {
        if let Some(filter) = &cfg.filter {
            return Err(Error::AllFiltered {
                path: path.to_owned(),
                column: filter.column.clone(),
                value: filter.equals.clone(),
                filtered_out,
            });
        }
    }
    Ok(ReadOutcome {
        examples,
        filtered_out,
        without_label,
        cleaned,
    })
}

type Row = (usize, Map<String, Value>);

/// The text of the JSONL or CSV file `file`, without a leading byte-order mark; a line of bad
/// UTF-8 is named in `path` (the data path as given, which differs for a file of the Hub cache).
fn read_text(file: &Path, path: &Path) -> Result<String> {
    let bytes = std::fs::read(file).map_err(|cause| Error::Io {
        path: file.to_owned(),
        cause,
    })?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let newlines = bytes[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Error::InvalidUtf8 {
            at: Location::line(path, 1 + newlines),
        }
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

fn jsonl_rows(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        let fields = json_object(raw, Location::line(path, line), "one JSON object per line")?;
        rows.push((line, fields));
    }
    Ok(rows)
}

/// The JSON object `raw` at `at`; `expected` says what the file should hold where it does not.
fn json_object(raw: &str, at: Location, expected: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(raw) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(value) => Err(Error::BadRow {
            reason: format!("expected {expected}, found {}", json_kind(&value)),
            at,
        }),
        Err(cause) => Err(Error::Json { at, cause }),
    }
}

/// The rows of a JSON array of objects, `array` (a slice of the file's `text`), each numbered by
/// the line of `text` its object starts on.
fn json_array_rows(path: &Path, text: &str, array: &str) -> Result<Vec<Row>> {
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(array).map_err(|cause| Error::Json {
            at: Location::line(path, cause.line().max(1)),
            cause,
        })?;
    let mut rows = Vec::with_capacity(items.len());
    let (mut line, mut counted) = (1, 0);
    for item in items {
        // The item is a slice of `text`: its offset gives its line.
        let start = item.get().as_ptr() as usize - text.as_ptr() as usize;
        line += text.as_bytes()[counted..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        counted = start;
        let at = Location::line(path, line);
        let fields = json_object(item.get(), at, "a JSON object in the file's array")?;
        rows.push((line, fields));
    }
    Ok(rows)
}

/// `error`, or, when the file that failed to read as JSON Lines is one JSON object spread over
/// lines (an API's export), an error saying so and naming its keys that hold lists, the
/// candidates for `data.json_field`.
fn one_object_hint(path: &Path, text: &str, error: Error) -> Error {
    let Ok(Value::Object(root)) = serde_json::from_str::<Value>(text) else {
        return error;
    };
    let lists: Vec<&str> = root
        .iter()
        .filter(|(_, v)| v.is_array())
        .map(|(k, _)| k.as_str())
        .collect();
    Error::BadRow {
        at: Location::line(path, 1),
        reason: format!(
            "the file holds one JSON object, not one per line: set data.json_field to the key \
             that lists the records (its keys holding lists: {})",
            if lists.is_empty() {
                "none".to_string()
            } else {
                lists.join(", ")
            }
        ),
    }
}

/// The rows of a JSON file holding one object whose key `key` lists the records
/// (`data.json_field`), numbered by line as [`json_array_rows`] numbers them.
fn json_field_rows(path: &Path, text: &str, key: &str) -> Result<Vec<Row>> {
    let bad = |reason: String| Error::Config {
        key: "data.json_field".into(),
        reason: format!("= {key:?}: {}: {reason}", path.display()),
    };
    type Object<'t> = std::collections::BTreeMap<String, &'t serde_json::value::RawValue>;
    let root: Object = serde_json::from_str(text).map_err(|cause| {
        bad(match serde_json::from_str::<Value>(text) {
            Ok(value) => format!("the file holds {}, not one JSON object", json_kind(&value)),
            Err(_) => format!(
                "the file must hold one JSON object: {cause} (at {})",
                Location::line(path, cause.line().max(1))
            ),
        })
    })?;
    let Some(records) = root.get(key) else {
        let keys: Vec<&str> = root.keys().map(String::as_str).collect();
        return Err(bad(format!(
            "the file's object has no key {key:?} (its keys: {})",
            keys.join(", ")
        )));
    };
    let array = records.get();
    if !array.starts_with('[') {
        let value: Value = serde_json::from_str(array).unwrap_or(Value::Null);
        return Err(bad(format!(
            "{key:?} holds {}, not a list of records",
            json_kind(&value)
        )));
    }
    json_array_rows(path, text, array)
}

fn csv_rows(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut records = csv::parse(path, text)?.into_iter();
    let Some(header) = records.next() else {
        return Ok(Vec::new());
    };
    for (i, name) in header.fields.iter().enumerate() {
        if header.fields[..i].contains(name) {
            return Err(Error::BadRow {
                at: Location::line(path, header.line),
                reason: format!("header names column {name:?} twice"),
            });
        }
    }
    records
        .map(|record| {
            if record.fields.len() != header.fields.len() {
                return Err(Error::FieldCount {
                    at: Location::line(path, record.line),
                    expected: header.fields.len(),
                    found: record.fields.len(),
                });
            }
            let fields = header
                .fields
                .iter()
                .cloned()
                .zip(record.fields.into_iter().map(Value::String))
                .collect();
            Ok((record.line, fields))
        })
        .collect()
}

/// Per-file context for turning a row's fields into text and target.
struct RowReader<'a> {
    path: &'a Path,
    /// Whether the file's row numbers count lines (text formats) or rows (Parquet).
    unit: Unit,
    cfg: &'a DataConfig,
    label_ids: HashMap<&'a str, u32>,
}

impl RowReader<'_> {
    fn at(&self, line: usize) -> Location {
        Location::new(self.path, self.unit, line)
    }

    /// The row's field `name`: a key of the row, else, for a name with dots, the path through
    /// nested objects (`fields.summary`), where a null on the way reads as null (an absent
    /// optional object, such as Jira's unset `fields.parent`).
    fn field<'f>(
        &self,
        line: usize,
        fields: &'f Map<String, Value>,
        name: &str,
    ) -> Result<&'f Value> {
        static NULL: Value = Value::Null;
        if let Some(value) = fields.get(name) {
            return Ok(value);
        }
        let mut object = fields;
        let mut prefix = String::new();
        let mut parts = name.split('.').peekable();
        while let Some(part) = parts.next() {
            let Some(value) = object.get(part) else {
                break;
            };
            match value {
                _ if parts.peek().is_none() => return Ok(value),
                Value::Object(inner) => object = inner,
                Value::Null => return Ok(&NULL),
                other => {
                    return Err(self.bad_field(
                        line,
                        name,
                        format!(
                            "`{prefix}{part}` holds {}, not an object to look into",
                            json_kind(other)
                        ),
                    ))
                }
            }
            prefix.push_str(part);
            prefix.push('.');
        }
        Err(Error::MissingField {
            at: self.at(line),
            field: name.to_owned(),
            present: object.keys().map(|key| format!("{prefix}{key}")).collect(),
        })
    }

    fn bad_field(&self, line: usize, field: &str, reason: String) -> Error {
        Error::BadField {
            at: self.at(line),
            field: field.to_owned(),
            reason,
        }
    }

    fn keep(&self, line: usize, fields: &Map<String, Value>) -> Result<bool> {
        let Some(filter) = &self.cfg.filter else {
            return Ok(true);
        };
        let value = self.field(line, fields, &filter.column)?;
        Ok(scalar_text(value).as_deref() == Some(filter.equals.as_str()))
    }

    /// The non-empty `names` of the row joined by `data.text_separator`.
    fn join(&self, line: usize, fields: &Map<String, Value>, names: &[String]) -> Result<String> {
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            let value = self.field(line, fields, name)?;
            if matches!(value, Value::Array(_) | Value::Object(_)) {
                return Err(self.bad_field(
                    line,
                    name,
                    format!(
                        "holds {}; text fields must be strings or numbers",
                        json_kind(value)
                    ),
                ));
            }
            if let Some(part) = scalar_text(value) {
                if !part.trim().is_empty() {
                    parts.push(part);
                }
            }
        }
        Ok(parts.join(&self.cfg.text_separator))
    }

    /// The row's target; `None` when `data.other_labels = "ignore"` leaves a single-label row
    /// without a label.
    fn target(&self, line: usize, fields: &Map<String, Value>) -> Result<Option<Target>> {
        let name = &self.cfg.label_field;
        let value = self.field(line, fields, name)?;
        let ignore = self.cfg.other_labels == OtherLabels::Ignore;
        if !self.cfg.multi_label {
            let label = match value {
                // An issue tracker's labels: the one of `data.labels` among them.
                Value::Array(items) if ignore => {
                    let known = self.known_labels(line, items)?;
                    match known.as_slice() {
                        [] => return Ok(None),
                        [label] => label.clone(),
                        several => {
                            return Err(self.bad_field(
                                line,
                                name,
                                format!(
                                    "holds {} of data.labels ({}); a single-label row needs one \
                                     (or set data.multi_label = true)",
                                    several.len(),
                                    several.join(", ")
                                ),
                            ))
                        }
                    }
                }
                Value::Array(_) => {
                    return Err(self.bad_field(
                        line,
                        name,
                        "holds a list of labels but data.multi_label is false (with \
                         data.other_labels = \"ignore\" the one of data.labels among them is \
                         taken)"
                            .into(),
                    ))
                }
                // No label at all: left out like a label outside data.labels.
                Value::Null if ignore => return Ok(None),
                _ => self.label_text(line, value)?,
            };
            if ignore && !self.label_ids.contains_key(label.as_str()) {
                return Ok(None);
            }
            if label.is_empty() {
                return Err(self.bad_field(line, name, "empty label".into()));
            }
            return self
                .label_id(line, label)
                .map(|id| Some(Target::Single(id)));
        }
        let labels: Vec<String> = match value {
            Value::Array(items) => items
                .iter()
                .map(|item| self.label_text(line, item))
                .collect::<Result<_>>()?,
            other => self
                .label_text(line, other)?
                .split(',')
                .map(|part| part.trim().to_owned())
                .filter(|part| !part.is_empty())
                .collect(),
        };
        let mut multi_hot = vec![0.0; self.cfg.labels.len()];
        for label in labels {
            if ignore && !self.label_ids.contains_key(label.as_str()) {
                continue;
            }
            let id = self.label_id(line, label)?;
            multi_hot[id as usize] = 1.0;
        }
        Ok(Some(Target::Multi(multi_hot)))
    }

    /// The labels of `items` that are in `data.labels`, in the items' order.
    fn known_labels(&self, line: usize, items: &[Value]) -> Result<Vec<String>> {
        let mut known = Vec::new();
        for item in items {
            let label = self.label_text(line, item)?;
            if self.label_ids.contains_key(label.as_str()) && !known.contains(&label) {
                known.push(label);
            }
        }
        Ok(known)
    }

    fn label_text(&self, line: usize, value: &Value) -> Result<String> {
        // GitHub's and GitLab's label objects: {"name": "bug", "color": ..., ...}.
        if let Value::Object(object) = value {
            if let Some(Value::String(name)) = object.get("name") {
                return Ok(name.trim().to_owned());
            }
        }
        match scalar_text(value) {
            Some(text) => Ok(text.trim().to_owned()),
            None if value.is_null() => Err(self.bad_field(
                line,
                &self.cfg.label_field,
                "holds no label (null, or a Parquet ClassLabel's -1)".into(),
            )),
            None => Err(self.bad_field(
                line,
                &self.cfg.label_field,
                format!("holds {}; a label must be a string", json_kind(value)),
            )),
        }
    }

    fn label_id(&self, line: usize, label: String) -> Result<u32> {
        self.label_ids
            .get(label.as_str())
            .copied()
            .ok_or_else(|| Error::UnknownLabel {
                at: self.at(line),
                label,
                known: self.cfg.labels.clone(),
            })
    }
}

/// The text of a string, number or bool; `None` for null, lists and objects.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// What a JSON value is, for messages: "a number", "a list", "null", ...
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
