use std::path::Path;

use wick_data::{
    epoch_order, read_examples, split_train_valid, DataConfig, DataSummary, Dataset, Filter,
    Target, TextTokenizer,
};

use crate::common::{minilm_tokenizer, tiny_tokenizer, TestResult};

const NLBSE: &str = "/work/shared/data/nlbse24/issues_train.csv";

fn nlbse_config() -> Option<DataConfig> {
    if !Path::new(NLBSE).exists() {
        println!("skipped: {NLBSE} not present");
        return None;
    }
    let mut cfg = DataConfig::new(NLBSE);
    cfg.text_fields = vec!["title".into(), "body".into()];
    cfg.labels = vec!["bug".into(), "feature".into(), "question".into()];
    Some(cfg)
}

#[test]
fn nlbse_training_file_loads_all_rows_balanced() -> TestResult {
    let Some(cfg) = nlbse_config() else {
        return Ok(());
    };
    cfg.validate()?;
    let outcome = read_examples(&cfg.train, &cfg)?;
    assert_eq!((outcome.examples.len(), outcome.filtered_out), (1500, 0));
    for id in 0..3 {
        let count = outcome
            .examples
            .iter()
            .filter(|e| e.target == Target::Single(id))
            .count();
        assert_eq!(count, 500, "label {id}");
    }
    let first = &outcome.examples[0];
    let title =
        "[DevTools Bug] Cannot add node \"1\" because a node with that id is already in the Store.";
    let expected = format!("{title}\n\n### Website or app");
    assert!(first.text.starts_with(&expected), "{}", first.text);
    Ok(())
}

#[test]
fn nlbse_filter_keeps_the_300_react_rows() -> TestResult {
    let Some(mut cfg) = nlbse_config() else {
        return Ok(());
    };
    cfg.filter = Some(Filter {
        column: "repo".into(),
        equals: "facebook/react".into(),
    });
    let outcome = read_examples(&cfg.train, &cfg)?;
    assert_eq!((outcome.examples.len(), outcome.filtered_out), (300, 1200));
    assert!(outcome
        .examples
        .iter()
        .all(|e| e.fields.get("repo").and_then(|v| v.as_str()) == Some("facebook/react")));
    Ok(())
}

#[test]
fn nlbse_react_rows_tokenize_split_and_batch() -> TestResult {
    let Some(mut cfg) = nlbse_config() else {
        return Ok(());
    };
    cfg.filter = Some(Filter {
        column: "repo".into(),
        equals: "facebook/react".into(),
    });
    let dir = tempfile::TempDir::new()?;
    let tokenizer = match minilm_tokenizer() {
        Some(path) => TextTokenizer::from_file(&path, cfg.max_len)?,
        None => tiny_tokenizer(&dir, cfg.max_len)?,
    };
    let outcome = read_examples(&cfg.train, &cfg)?;
    let dataset = Dataset::new(&outcome.examples, &tokenizer)?;
    let summary = DataSummary::new(&dataset, &cfg.labels, outcome.filtered_out);
    println!("{summary}");
    assert_eq!(summary.per_label.iter().map(|(_, n)| n).sum::<usize>(), 300);
    assert!(summary.truncated > 0 && summary.max > cfg.max_len);
    assert!(dataset.lengths().iter().all(|&len| len <= cfg.max_len));

    let (train, valid) = split_train_valid(&outcome.examples, cfg.valid_fraction, 0);
    assert_eq!((train.len(), valid.len()), (270, 30));
    let train_set = dataset.subset(&train);
    let batches = epoch_order(train_set.len(), &train_set.lengths(), 32, 0, 0, true, 128);
    let tensors = train_set
        .batch(&batches[0])
        .to_tensors(&candle_core::Device::Cpu)?;
    assert_eq!(tensors.input_ids.dims()[0], batches[0].len());
    Ok(())
}
