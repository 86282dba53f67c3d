//! Parquet files as Hugging Face `datasets` and pyarrow write them (`tests/fixtures/`, made by
//! `make_parquet.py`): each reads as the same examples as its JSONL twin.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;
use wick_data::{
    read_examples, read_unlabelled, DataConfig, Error, Filter, Format, Location, Target, Unit,
};

use crate::common::{config, read_error, write, TestResult};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn title_body_config(path: &Path) -> DataConfig {
    let mut cfg = config(path);
    cfg.text_fields = vec!["title".into(), "body".into()];
    cfg
}

#[test]
fn class_label_ids_read_as_their_names_and_rows_equal_the_jsonl_twin() -> TestResult {
    let parquet = fixture("hf_classlabel.parquet");
    let jsonl = fixture("hf_classlabel.jsonl");
    let from_parquet = read_examples(&parquet, &title_body_config(&parquet))?;
    let from_jsonl = read_examples(&jsonl, &title_body_config(&jsonl))?;
    assert_eq!(from_parquet.examples.len(), 5);
    // Text, target, row number and every field (ints, bools, nulls, the ClassLabel `repo` as
    // its names) alike.
    assert_eq!(from_parquet, from_jsonl);
    // The file's ClassLabel lists question, bug, feature; data.labels bug, feature, question.
    let targets: Vec<&Target> = from_parquet.examples.iter().map(|e| &e.target).collect();
    assert_eq!(
        targets,
        [
            &Target::Single(0),
            &Target::Single(1),
            &Target::Single(2),
            &Target::Single(0),
            &Target::Single(1)
        ]
    );
    let first = &from_parquet.examples[0];
    assert_eq!(first.fields["label"], "bug");
    assert_eq!(first.fields["repo"], "acme/app");
    assert_eq!(first.fields["number"], 101);
    assert_eq!(first.fields["draft"], false);
    assert!(first.text.contains("panic at src/main.rs:12"));
    assert_eq!(from_parquet.examples[1].fields["body"], Value::Null);
    assert_eq!(from_parquet.examples[1].text, "Add a dark theme");
    Ok(())
}

#[test]
fn a_filter_compares_a_class_label_column_by_name() -> TestResult {
    let path = fixture("hf_classlabel.parquet");
    let mut cfg = title_body_config(&path);
    cfg.filter = Some(Filter {
        column: "repo".into(),
        equals: "acme/web".into(),
    });
    let outcome = read_examples(&path, &cfg)?;
    let lines: Vec<usize> = outcome.examples.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4]);
    assert_eq!(outcome.filtered_out, 3);
    Ok(())
}

#[test]
fn a_list_of_class_labels_is_a_multi_label_target() -> TestResult {
    let parquet = fixture("hf_multilabel.parquet");
    let jsonl = fixture("hf_multilabel.jsonl");
    let multi = |path: &Path| {
        let mut cfg = config(path);
        cfg.multi_label = true;
        cfg.label_field = "labels".into();
        cfg
    };
    let from_parquet = read_examples(&parquet, &multi(&parquet))?;
    assert_eq!(from_parquet, read_examples(&jsonl, &multi(&jsonl))?);
    assert_eq!(
        from_parquet.examples[0].target,
        Target::Multi(vec![1.0, 1.0, 0.0])
    );
    assert_eq!(
        from_parquet.examples[1].target,
        Target::Multi(vec![0.0, 0.0, 0.0])
    );
    assert_eq!(
        from_parquet.examples[4].target,
        Target::Multi(vec![1.0, 1.0, 1.0])
    );
    Ok(())
}

/// Every codec pyarrow offers, two rows per row group, a `large_string` text column and a
/// nullable float column.
#[test]
fn every_codec_and_row_group_layout_reads_the_same_rows() -> TestResult {
    let jsonl = fixture("codec.jsonl");
    let expected = read_examples(&jsonl, &config(&jsonl))?;
    for codec in ["none", "snappy", "gzip", "brotli", "lz4", "zstd"] {
        let path = fixture(&format!("codec_{codec}.parquet"));
        let got = read_examples(&path, &config(&path)).map_err(|e| format!("{codec}: {e}"))?;
        assert_eq!(got, expected, "{codec}");
    }
    Ok(())
}

/// `datasets`' unlabelled test splits store -1: fine for prediction, refused for training,
/// naming the file and row.
#[test]
fn a_class_label_of_minus_one_is_no_label() -> TestResult {
    let path = fixture("hf_unlabelled.parquet");
    let cfg = config(&path);
    let rows = read_unlabelled(&path, &cfg)?.examples;
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.fields["label"].is_null()));
    assert!(rows.iter().all(|r| r.target == Target::None));
    let err = read_error(&path, &cfg)?;
    assert!(
        matches!(&err, Error::BadField { at, .. } if *at == Location::row(&path, 1)),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("{} row 1:", path.display())),
        "{message}"
    );
    assert!(message.contains("holds no label"), "{message}");
    Ok(())
}

/// Where a bad row is comes from the format the file was read as, not from its name: a Parquet
/// file under another extension still has rows, and a JSONL file named `.parquet` has lines.
#[test]
fn error_locations_follow_the_format_not_the_extension() -> TestResult {
    let dir = TempDir::new()?;
    let parquet = dir.path().join("issues.bin");
    std::fs::copy(fixture("hf_unlabelled.parquet"), &parquet)?;
    let mut cfg = config(&parquet);
    cfg.format = Some(Format::Parquet);
    let err = read_error(&parquet, &cfg)?;
    assert!(
        matches!(&err, Error::BadField { at, .. } if at.unit == Unit::Row && at.number == 1),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{} row 1:", parquet.display())),
        "{err}"
    );

    let jsonl = write(
        &dir,
        "named.parquet",
        "{\"text\": \"a\", \"label\": \"bug\"}\n\n{\"text\": \"b\", \"label\": \"docs\"}\n",
    );
    let mut cfg = config(&jsonl);
    cfg.format = Some(Format::Jsonl);
    let err = read_error(&jsonl, &cfg)?;
    assert!(
        matches!(&err, Error::UnknownLabel { at, .. } if *at == Location::line(&jsonl, 3)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3: unknown label", jsonl.display())),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_label_id_outside_the_class_label_names_is_refused() -> TestResult {
    let path = fixture("hf_bad_id.parquet");
    let err = read_error(&path, &config(&path))?;
    let message = err.to_string();
    assert!(
        message.contains(&format!("{} row 2: field `label`", path.display())),
        "{message}"
    );
    assert!(message.contains("label id 5 is outside"), "{message}");
    Ok(())
}

#[test]
fn binary_text_is_read_when_utf8_and_refused_otherwise() -> TestResult {
    let path = fixture("binary.parquet");
    let err = read_error(&path, &config(&path))?;
    let message = err.to_string();
    assert!(
        message.contains("row 2: field `text`: holds binary data that is not UTF-8"),
        "{message}"
    );
    // Columns the config does not read keep their bytes as base64; UTF-8 bytes are text.
    let mut cfg = config(&path);
    cfg.text_fields = vec!["label".into()];
    let rows = read_examples(&path, &cfg)?.examples;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].fields["text"], "plain bytes");
    assert_eq!(rows[1].fields["text"], "//4gbm90IHV0Zi04");
    assert_eq!(rows[0].fields["blob"], "iVBOR/8=");
    // As a text field it is refused.
    cfg.text_fields = vec!["blob".into()];
    let err = read_error(&path, &cfg)?;
    assert!(err.to_string().contains("row 1: field `blob`"), "{err}");
    Ok(())
}

#[test]
fn a_file_that_is_not_parquet_is_refused_naming_it() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "rows.parquet",
        "{\"text\": \"a\", \"label\": \"bug\"}\n",
    );
    let err = read_error(&path, &config(&path))?;
    assert!(matches!(err, Error::Parquet { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read Parquet file {}:", path.display())),
        "{err}"
    );
    Ok(())
}

/// `data.format = "parquet"` reads a file whose extension says nothing; the extension alone
/// picks Parquet otherwise.
#[test]
fn the_format_comes_from_the_key_or_the_extension() -> TestResult {
    let dir = TempDir::new()?;
    let path = dir.path().join("rows.bin");
    std::fs::copy(fixture("codec_zstd.parquet"), &path)?;
    let mut cfg = config(&path);
    assert!(matches!(
        read_examples(&path, &cfg),
        Err(Error::UnknownFormat { .. })
    ));
    cfg.format = Some(Format::Parquet);
    assert_eq!(read_examples(&path, &cfg)?.examples.len(), 5);
    assert_eq!(
        config(Path::new("x.PARQUET")).format_of(Path::new("x.PARQUET"))?,
        Format::Parquet
    );
    Ok(())
}

#[test]
fn struct_columns_read_with_dotted_names_as_the_jsonl_twin() -> TestResult {
    let read = |name: &str| {
        let path = fixture(name);
        let mut cfg = config(&path);
        cfg.text_fields = vec![
            "fields.summary".into(),
            "fields.description".into(),
            "fields.parent.key".into(),
        ];
        cfg.label_field = "fields.issuetype.name".into();
        read_examples(&path, &cfg)
    };
    let (from_parquet, from_jsonl) = (read("nested.parquet")?, read("nested.jsonl")?);
    assert_eq!(from_parquet, from_jsonl);
    let got: Vec<(&str, &Target)> = from_parquet
        .examples
        .iter()
        .map(|e| (e.text.as_str(), &e.target))
        .collect();
    assert_eq!(
        got,
        [
            (
                "Export button does nothing\n\nClicking Export logs a TypeError.\n\nAPP-1",
                &Target::Single(0)
            ),
            // A null description and a null parent struct add nothing.
            ("Add a CSV export", &Target::Single(1)),
        ]
    );
    Ok(())
}
