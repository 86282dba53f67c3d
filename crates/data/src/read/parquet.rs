//! Parquet rows, as Hugging Face `datasets` writes them (`Dataset.to_parquet`) or pyarrow does.
//! Each row becomes the JSON object a JSONL line would hold; its "line" is the 1-based row
//! number.
//!
//! A `ClassLabel` column stores label ids; the file's `huggingface` schema metadata names them.
//! Such a column (or a list of them) reads as its names, as `dataset.features[column].int2str`
//! gives them in Python, so `data.labels` and `data.filter` use names whatever the file stores.
//! The id -1 (`datasets`' "no label", as in unlabelled test splits) reads as null.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use parquet::errors::ParquetError;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};

use super::Row;
use crate::config::DataConfig;
use crate::error::{Error, Location, Result};

/// Every row of the Parquet file `file`, in file order. A file that cannot be opened is named
/// as it is on disk; its contents are named `path` (the data path as given, which differs for a
/// file of the Hub cache).
pub(super) fn rows(file: &Path, path: &Path, cfg: &DataConfig) -> Result<Vec<Row>> {
    let file = File::open(file).map_err(|cause| Error::Io {
        path: file.to_owned(),
        cause,
    })?;
    let parquet_error = |cause| Error::Parquet {
        path: path.to_owned(),
        cause,
    };
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    let class_labels = class_labels(path, &reader)?;
    let mut rows = Vec::new();
    for (index, row) in reader
        .get_row_iter(None)
        .map_err(parquet_error)?
        .enumerate()
    {
        let number = index + 1;
        let row = row.map_err(parquet_error)?;
        let mut fields = Map::new();
        for (name, field) in row.get_column_iter() {
            let value = match class_labels.get(name.as_str()) {
                Some(names) => label_names(path, number, name, field, names)?,
                None => field_value(path, number, name, field, cfg)?,
            };
            fields.insert(name.clone(), value);
        }
        rows.push((number, fields));
    }
    Ok(rows)
}

/// A top-level field as JSON. Binary without a string annotation is taken as text when it is
/// UTF-8 (the Parquet crate would give base64); other bytes are refused in a column the config
/// reads (a text field, the label, the filter) and kept as the crate's base64 elsewhere, so an
/// image column does not stop a file from being read.
fn field_value(
    path: &Path,
    number: usize,
    name: &str,
    field: &Field,
    cfg: &DataConfig,
) -> Result<Value> {
    let Field::Bytes(bytes) = field else {
        return Ok(field.to_json_value());
    };
    if let Ok(text) = std::str::from_utf8(bytes.data()) {
        return Ok(Value::String(text.to_owned()));
    }
    let read = cfg
        .text_fields
        .iter()
        .chain(&cfg.pair_fields)
        .any(|f| f == name)
        || cfg.label_field == name
        || cfg.filter.as_ref().is_some_and(|f| f.column == name);
    if read {
        return Err(Error::BadField {
            at: Location::row(path, number),
            field: name.to_owned(),
            reason: "holds binary data that is not UTF-8 text".into(),
        });
    }
    Ok(field.to_json_value())
}

/// A `ClassLabel` field (an id, or a list of ids) as its names; -1 and null as null.
fn label_names(
    path: &Path,
    number: usize,
    column: &str,
    field: &Field,
    names: &[String],
) -> Result<Value> {
    let name_of = |field: &Field| -> Result<Value> {
        let id = match field {
            Field::Null => return Ok(Value::Null),
            Field::Byte(n) => i128::from(*n),
            Field::Short(n) => i128::from(*n),
            Field::Int(n) => i128::from(*n),
            Field::Long(n) => i128::from(*n),
            Field::UByte(n) => i128::from(*n),
            Field::UShort(n) => i128::from(*n),
            Field::UInt(n) => i128::from(*n),
            Field::ULong(n) => i128::from(*n),
            other => {
                return Err(Error::BadField {
                    at: Location::row(path, number),
                    field: column.to_owned(),
                    reason: format!(
                        "is a ClassLabel column in the file's metadata but holds {}",
                        other.to_json_value()
                    ),
                })
            }
        };
        if id == -1 {
            return Ok(Value::Null);
        }
        usize::try_from(id)
            .ok()
            .and_then(|i| names.get(i))
            .map(|name| Value::String(name.clone()))
            .ok_or_else(|| Error::BadField {
                at: Location::row(path, number),
                field: column.to_owned(),
                reason: format!(
                    "label id {id} is outside the ClassLabel's {} names (0..{}) in the file's metadata",
                    names.len(),
                    names.len()
                ),
            })
    };
    match field {
        Field::ListInternal(list) => list
            .elements()
            .iter()
            .map(name_of)
            .collect::<Result<Vec<_>>>()
            .map(Value::Array),
        single => name_of(single),
    }
}

/// The names of every `ClassLabel` column (or list of them) in the file's `huggingface`
/// metadata, by column. A file without that metadata has none.
fn class_labels<R: FileReader>(path: &Path, reader: &R) -> Result<HashMap<String, Vec<String>>> {
    let metadata = reader.metadata().file_metadata().key_value_metadata();
    let Some(json) = metadata
        .into_iter()
        .flatten()
        .find(|kv| kv.key == "huggingface")
        .and_then(|kv| kv.value.as_deref())
    else {
        return Ok(HashMap::new());
    };
    let bad = |reason: String| Error::Parquet {
        path: path.to_owned(),
        cause: ParquetError::General(format!("the `huggingface` schema metadata {reason}")),
    };
    let value: Value = serde_json::from_str(json).map_err(|e| bad(format!("is not JSON: {e}")))?;
    let Some(features) = value.pointer("/info/features").and_then(Value::as_object) else {
        return Ok(HashMap::new());
    };
    let mut labels = HashMap::new();
    for (column, feature) in features {
        let Some(names) = class_label_names(feature) else {
            continue;
        };
        let names = names
            .iter()
            .map(|name| name.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                bad(format!(
                    "lists a ClassLabel name of column `{column}` that is not a string"
                ))
            })?;
        labels.insert(column.clone(), names);
    }
    Ok(labels)
}

/// The `names` of a `ClassLabel` feature, directly or as the element of a list feature:
/// `{"_type": "List" | "Sequence", "feature": {...}}` (`List` from datasets 4 on, 5.2.0's in
/// the fixtures) or `[{...}]` (an older form).
fn class_label_names(feature: &Value) -> Option<&Vec<Value>> {
    let is_class_label = |f: &Value| f.get("_type").and_then(Value::as_str) == Some("ClassLabel");
    let element = match feature {
        Value::Array(items) if items.len() == 1 => &items[0],
        Value::Object(map) if !is_class_label(feature) => map.get("feature")?,
        _ => feature,
    };
    if is_class_label(element) {
        element.get("names").and_then(Value::as_array)
    } else {
        None
    }
}
