use tempfile::TempDir;
use wick_data::{read_examples, read_unlabelled, Error, Filter, Location, Target};

use crate::common::{config, read_error, write, TestResult};

#[test]
fn malformed_line_names_file_and_line() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        "{\"text\": \"a\", \"label\": \"bug\"}\n{\"text\": \"b\", \"label\": \"bug\"}\n{\"text\": oops}\n",
    );
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::Json { at, .. } if at.number == 3),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("{}:3:", path.display())),
        "{message}"
    );
    assert!(
        message.contains("expected value"),
        "serde's message is kept: {message}"
    );
    // ... in the message only, not also as a source: a printed chain says it once.
    assert!(std::error::Error::source(&err).is_none());
    Ok(())
}

#[test]
fn unknown_label_names_label_line_and_known_labels() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        "{\"text\": \"a\", \"label\": \"bug\"}\n\n{\"text\": \"b\", \"label\": \"docs\"}\n",
    );
    let err = read_error(&path, &config(&path))?;
    match &err {
        Error::UnknownLabel { at, label, known } => {
            assert_eq!((at, label.as_str()), (&Location::line(&path, 3), "docs"));
            assert_eq!(known, &["bug", "feature", "question"]);
        }
        other => return Err(format!("wrong error: {other:?}").into()),
    }
    let message = err.to_string();
    assert!(
        message.contains("\"docs\"") && message.contains("bug, feature, question"),
        "{message}"
    );
    assert!(!message.contains("not ids"), "{message}");
    Ok(())
}

/// `datasets`' `to_json` writes a ClassLabel column as ids: the error says to give names.
#[test]
fn a_label_id_in_place_of_a_name_is_refused_with_a_hint() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.jsonl", "{\"text\": \"a\", \"label\": 2}\n");
    let err = read_error(&path, &config(&path))?;
    let message = err.to_string();
    assert!(
        message.contains("unknown label \"2\"")
            && message.contains("2 would be \"question\"")
            && message.contains("to_parquet"),
        "{message}"
    );
    Ok(())
}

#[test]
fn missing_text_field_names_field_and_fields_present() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.jsonl", "{\"title\": \"a\", \"label\": \"bug\"}\n");
    let mut cfg = config(&path);
    cfg.text_fields = vec!["title".into(), "body".into()];
    let err = read_error(&path, &cfg)?;
    match &err {
        Error::MissingField { at, field, present } => {
            assert_eq!((at, field.as_str()), (&Location::line(&path, 1), "body"));
            assert_eq!(present, &["label", "title"]);
        }
        other => return Err(format!("wrong error: {other:?}").into()),
    }
    assert!(err.to_string().contains("`body`"), "{err}");
    Ok(())
}

#[test]
fn missing_label_is_an_error_for_training_but_not_for_prediction() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.jsonl", "{\"text\": \"a\"}\n");
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::MissingField { field, .. } if field == "label"),
        "{err:?}"
    );
    let outcome = read_unlabelled(&path, &config(&path))?;
    assert_eq!(outcome.examples[0].target, Target::None);
    Ok(())
}

#[test]
fn text_fields_are_joined_skipping_null_and_empty_and_numbers_are_stringified() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        concat!(
            "{\"title\": \"Crash\", \"body\": \"on open\", \"n\": 7, \"label\": \"bug\"}\n",
            "{\"title\": \"Add it\", \"body\": null, \"n\": 1.5, \"label\": \"feature\"}\n",
            "{\"title\": \"\", \"body\": \"how?\", \"n\": \"x\", \"label\": \"question\"}\n",
        ),
    );
    let mut cfg = config(&path);
    cfg.text_fields = vec!["title".into(), "body".into(), "n".into()];
    cfg.text_separator = " | ".into();
    let outcome = read_examples(&path, &cfg)?;
    let texts: Vec<&str> = outcome.examples.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["Crash | on open | 7", "Add it | 1.5", "how? | x"]);
    let targets: Vec<&Target> = outcome.examples.iter().map(|e| &e.target).collect();
    assert_eq!(
        targets,
        [&Target::Single(0), &Target::Single(1), &Target::Single(2)]
    );
    assert_eq!(
        outcome.examples[0].fields.get("n"),
        Some(&serde_json::json!(7))
    );
    Ok(())
}

#[test]
fn object_in_text_field_is_an_error_naming_the_field() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        "\n{\"text\": {\"a\": 1}, \"label\": \"bug\"}\n",
    );
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::BadField { at, field, .. } if at.number == 2 && field == "text"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn line_that_is_not_an_object_is_rejected() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.json", "[1, 2]\n");
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::BadRow { at, .. } if at.number == 1),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn blank_lines_are_skipped_and_lines_keep_their_file_numbers() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        "\n  \n{\"text\": \"a\", \"label\": \"bug\"}\r\n\n{\"text\": \"b\", \"label\": \"bug\"}",
    );
    let outcome = read_examples(&path, &config(&path))?;
    let lines: Vec<usize> = outcome.examples.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 5]);
    Ok(())
}

#[test]
fn multi_label_list_becomes_multi_hot() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        "{\"text\": \"a\", \"label\": [\"bug\", \"question\"]}\n{\"text\": \"b\", \"label\": []}\n{\"text\": \"c\", \"label\": \"feature, bug\"}\n",
    );
    let mut cfg = config(&path);
    cfg.multi_label = true;
    let outcome = read_examples(&path, &cfg)?;
    let targets: Vec<&Target> = outcome.examples.iter().map(|e| &e.target).collect();
    assert_eq!(
        targets,
        [
            &Target::Multi(vec![1.0, 0.0, 1.0]),
            &Target::Multi(vec![0.0, 0.0, 0.0]),
            &Target::Multi(vec![1.0, 1.0, 0.0]),
        ]
    );
    Ok(())
}

#[test]
fn unknown_label_inside_a_multi_label_list_is_an_error() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        "{\"text\": \"a\", \"label\": [\"bug\", \"docs\"]}\n",
    );
    let mut cfg = config(&path);
    cfg.multi_label = true;
    let err = read_error(&path, &cfg)?;
    assert!(
        matches!(&err, Error::UnknownLabel { label, .. } if label == "docs"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn label_list_without_multi_label_is_an_error() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.jsonl", "{\"text\": \"a\", \"label\": [\"bug\"]}\n");
    let err = read_error(&path, &config(&path))?;
    assert!(err.to_string().contains("multi_label"), "{err}");
    Ok(())
}

#[test]
fn filter_keeps_matching_rows_and_counts_the_rest() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        concat!(
            "{\"repo\": \"a/x\", \"text\": \"1\", \"label\": \"bug\"}\n",
            "{\"repo\": \"b/y\", \"text\": \"2\", \"label\": \"bug\"}\n",
            "{\"repo\": \"a/x\", \"text\": \"3\", \"label\": \"bug\"}\n",
            "{\"repo\": null, \"text\": \"4\", \"label\": \"bug\"}\n",
        ),
    );
    let mut cfg = config(&path);
    cfg.filter = Some(Filter {
        column: "repo".into(),
        equals: "a/x".into(),
    });
    let outcome = read_examples(&path, &cfg)?;
    let texts: Vec<&str> = outcome.examples.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["1", "3"]);
    assert_eq!(outcome.filtered_out, 2);

    cfg.filter = Some(Filter {
        column: "repo".into(),
        equals: "none/such".into(),
    });
    let err = read_error(&path, &cfg)?;
    assert!(
        matches!(
            err,
            Error::AllFiltered {
                filtered_out: 4,
                ..
            }
        ),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn empty_or_blank_file_has_no_examples() -> TestResult {
    let dir = TempDir::new()?;
    for (name, contents) in [("empty.jsonl", ""), ("blank.jsonl", "\n \n\r\n")] {
        let path = write(&dir, name, contents);
        let err = read_error(&path, &config(&path))?;
        assert_eq!(
            err.to_string(),
            format!("no examples in {}", path.display())
        );
    }
    Ok(())
}

#[test]
fn invalid_utf8_names_file_and_line() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        b"{\"text\": \"a\", \"label\": \"bug\"}\n{\"text\": \"\xff\", \"label\": \"bug\"}\n",
    );
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::InvalidUtf8 { at } if at.number == 2),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("{}:2", path.display())),
        "{err}"
    );
    Ok(())
}

#[test]
fn nonexistent_file_names_the_path() -> TestResult {
    let dir = TempDir::new()?;
    let path = dir.path().join("missing.jsonl");
    let err = read_error(&path, &config(&path))?;
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.jsonl"), "{err}");
    Ok(())
}

#[test]
fn unknown_extension_without_format_names_the_file() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.txt", "{\"text\": \"a\", \"label\": \"bug\"}\n");
    let err = read_error(&path, &config(&path))?;
    assert!(matches!(err, Error::UnknownFormat { .. }), "{err:?}");
    assert!(err.to_string().contains("d.txt"), "{err}");
    let mut cfg = config(&path);
    cfg.format = Some(wick_data::Format::Jsonl);
    assert_eq!(read_examples(&path, &cfg)?.examples.len(), 1);
    Ok(())
}

/// `data.pair_fields` read a second text beside the first, joined and cleaned alike; a record
/// for prediction may give it as `text_pair`.
#[test]
fn pair_fields_read_a_second_text() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.jsonl",
        concat!(
            "{\"title\": \"Crash\", \"body\": \"on <!-- x -->open\", \"q\": \"dup?\", \"n\": 7, \"label\": \"bug\"}\n",
            "{\"title\": \"Theme\", \"body\": null, \"q\": \"\", \"n\": null, \"label\": \"feature\"}\n",
        ),
    );
    let mut cfg = config(&path);
    cfg.text_fields = vec!["title".into()];
    cfg.pair_fields = vec!["body".into(), "q".into(), "n".into()];
    cfg.clean.html_comments = true;
    let examples = read_examples(&path, &cfg)?.examples;
    assert_eq!(examples[0].text, "Crash");
    assert_eq!(examples[0].pair.as_deref(), Some("on open\n\ndup?\n\n7"));
    assert_eq!(
        examples[1].pair.as_deref(),
        Some(""),
        "empty and null fields are skipped, as in a text"
    );
    // Single-text configs have no pair.
    cfg.pair_fields.clear();
    assert_eq!(read_examples(&path, &cfg)?.examples[0].pair, None);

    // A missing pair field is named like a missing text field.
    cfg.pair_fields = vec!["answer".into()];
    let err = read_error(&path, &cfg)?;
    assert!(
        matches!(&err, Error::MissingField { at, field, .. } if at.number == 1 && field == "answer"),
        "{err:?}"
    );

    // Prediction records: `text_pair`, else the pair fields; a pair given to a single-text
    // model is refused.
    cfg.pair_fields = vec!["body".into()];
    let at = Location::line(std::path::Path::new("stdin"), 4);
    let record = |json: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).unwrap()
    };
    let given = wick_data::unlabelled_record(
        record(r#"{"text": "Is it a dup?", "text_pair": "Same <!-- y -->crash"}"#),
        &cfg,
        &at,
    )?;
    assert_eq!(
        (given.text.as_str(), given.pair.as_deref()),
        ("Is it a dup?", Some("Same crash"))
    );
    let schema = wick_data::unlabelled_record(record(r#"{"title": "T", "body": "B"}"#), &cfg, &at)?;
    assert_eq!(
        (schema.text.as_str(), schema.pair.as_deref()),
        ("T", Some("B"))
    );
    let missing = wick_data::unlabelled_record(record(r#"{"text": "T"}"#), &cfg, &at).unwrap_err();
    let message = missing.to_string();
    assert!(
        message.contains("stdin:4")
            && message.contains("no string field `text_pair`")
            && message.contains("`body` of data.pair_fields"),
        "{message}"
    );
    cfg.pair_fields.clear();
    let refused =
        wick_data::unlabelled_record(record(r#"{"text": "T", "text_pair": "P"}"#), &cfg, &at)
            .unwrap_err()
            .to_string();
    assert!(
        refused.contains("`text_pair`") && refused.contains("single texts"),
        "{refused}"
    );
    Ok(())
}

#[test]
fn pair_fields_must_not_share_a_field_with_the_text_or_the_label() {
    let mut cfg = config(std::path::Path::new("d.jsonl"));
    cfg.text_fields = vec!["title".into(), "body".into()];
    cfg.pair_fields = vec!["body".into()];
    let message = cfg.validate().unwrap_err().to_string();
    assert!(
        message.contains("data.pair_fields") && message.contains("\"body\""),
        "{message}"
    );
    cfg.pair_fields = vec!["label".into()];
    let message = cfg.validate().unwrap_err().to_string();
    assert!(
        message.contains("data.pair_fields") && message.contains("label field"),
        "{message}"
    );
    cfg.pair_fields = vec!["answer".into()];
    assert!(cfg.validate().is_ok());
    cfg.text_fields = vec!["title".into(), "label".into()];
    let message = cfg.validate().unwrap_err().to_string();
    assert!(
        message.contains("data.text_fields") && message.contains("label field"),
        "{message}"
    );
}
