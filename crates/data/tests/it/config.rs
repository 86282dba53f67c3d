use wick_data::{DataConfig, Error, Format, Truncation};

use crate::common::TestResult;

#[test]
fn defaults_fill_every_optional_key() -> TestResult {
    let cfg: DataConfig = serde_json::from_str(r#"{"train": "t.csv", "labels": ["a", "b"]}"#)?;
    assert_eq!(cfg.text_fields, ["text"]);
    assert_eq!(cfg.text_separator, "\n\n");
    assert_eq!(cfg.label_field, "label");
    assert_eq!(
        (cfg.max_len, cfg.valid_fraction, cfg.bucket_window),
        (128, 0.1, 0)
    );
    assert!(!cfg.multi_label && cfg.valid.is_none() && cfg.filter.is_none());
    assert_eq!(cfg.truncation(), Truncation::Head);
    cfg.validate()?;
    Ok(())
}

#[test]
fn head_tail_truncation_reads_its_head_and_rejects_one_that_leaves_no_tail() -> TestResult {
    let read = |extra: &str| -> Result<DataConfig, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"train": "t.csv", "labels": ["a"], "max_len": 64, {extra}}}"#
        ))
    };
    let cfg = read(r#""truncation": "head_tail", "head_tokens": 16"#)?;
    assert_eq!(cfg.truncation(), Truncation::HeadTail { head: 16 });
    cfg.validate()?;
    assert_eq!(
        read(r#""truncation": "tail""#)?.truncation(),
        Truncation::Tail
    );
    for head in [0, 62, 100] {
        let cfg = read(&format!(
            r#""truncation": "head_tail", "head_tokens": {head}"#
        ))?;
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("data.head_tokens") && err.contains("62"),
            "{head}: {err}"
        );
    }
    let err = read(r#""truncation": "middle""#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("middle") && err.contains("head_tail"), "{err}");
    Ok(())
}

#[test]
fn unknown_key_is_rejected_by_name() {
    let err = serde_json::from_str::<DataConfig>(r#"{"train": "t.csv", "lables": ["a"]}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("lables"), "{err}");
}

#[test]
fn format_and_filter_deserialize() -> TestResult {
    let cfg: DataConfig = serde_json::from_str(
        r#"{"train": "t.txt", "labels": ["a"], "format": "csv",
            "filter": {"column": "repo", "equals": "facebook/react"}}"#,
    )?;
    assert_eq!(cfg.format, Some(Format::Csv));
    assert_eq!(
        cfg.filter.map(|f| f.equals).as_deref(),
        Some("facebook/react")
    );
    Ok(())
}

fn rejected_key(edit: impl FnOnce(&mut DataConfig)) -> String {
    let mut cfg = DataConfig::new("t.csv");
    cfg.labels = vec!["a".into(), "b".into()];
    edit(&mut cfg);
    match cfg.validate() {
        Err(Error::Config { key, .. }) => key,
        other => format!("not a config error: {other:?}"),
    }
}

#[test]
fn validate_names_the_offending_key() {
    assert_eq!(rejected_key(|c| c.labels.clear()), "data.labels");
    assert_eq!(rejected_key(|c| c.labels.push("a".into())), "data.labels");
    assert_eq!(rejected_key(|c| c.max_len = 7), "data.max_len");
    assert_eq!(
        rejected_key(|c| c.valid_fraction = -0.1),
        "data.valid_fraction"
    );
    assert_eq!(
        rejected_key(|c| c.valid_fraction = 1.0),
        "data.valid_fraction"
    );
    assert_eq!(
        rejected_key(|c| c.valid_fraction = f64::NAN),
        "data.valid_fraction"
    );
    assert_eq!(rejected_key(|c| c.text_fields.clear()), "data.text_fields");
    assert_eq!(
        rejected_key(|c| c.json_field = Some(String::new())),
        "data.json_field"
    );
    assert_eq!(
        rejected_key(|c| c.text_fields.push("label".into())),
        "data.text_fields"
    );
    assert_eq!(
        rejected_key(|c| {
            c.multi_label = true;
            c.labels.push("x,y".into());
        }),
        "data.labels"
    );
    assert_eq!(rejected_key(|c| c.folds = 1), "data.folds");
    assert_eq!(
        rejected_key(|c| {
            c.folds = 5;
            c.valid = Some("v.csv".into());
        }),
        "data.folds"
    );
    assert_eq!(
        rejected_key(|c| {
            c.folds = 5;
            c.fold = 5;
        }),
        "data.fold"
    );
    assert_eq!(rejected_key(|c| c.fold = 1), "data.fold");
}
