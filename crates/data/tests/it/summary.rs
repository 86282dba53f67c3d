use tempfile::TempDir;
use wick_data::{DataSummary, Dataset, Target};

use crate::batch::example;
use crate::common::{tiny_tokenizer, TestResult};

#[test]
fn summary_counts_labels_lengths_and_truncation() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 8)?;
    // Untruncated lengths 3, 4, 8 (fits exactly), 12 and 22.
    let texts = [
        "a",
        "a b",
        "a b c a b c",
        "a b c a b c a b c a",
        &"a ".repeat(20),
    ];
    let examples: Vec<_> = texts
        .iter()
        .zip([0, 0, 1, 0, 2])
        .map(|(text, label)| example(text, Target::Single(label)))
        .collect();
    let dataset = Dataset::new(&examples, &tokenizer)?;
    let labels = [
        "bug".to_owned(),
        "feature".to_owned(),
        "question".to_owned(),
    ];
    let summary = DataSummary::new(&dataset, &labels, 7);
    assert_eq!(summary.examples, 5);
    assert_eq!(
        summary.per_label,
        [
            ("bug".to_owned(), 3),
            ("feature".to_owned(), 1),
            ("question".to_owned(), 1)
        ]
    );
    assert_eq!(
        (summary.p50, summary.p90, summary.p99, summary.max),
        (8, 22, 22, 22)
    );
    assert_eq!(
        (summary.truncated, summary.max_len, summary.filtered_out),
        (2, 8, 7)
    );
    let table = summary.to_string();
    assert!(table.contains("examples   5 (7 filtered out)"), "{table}");
    assert!(table.contains("bug") && table.contains("60.0%"), "{table}");
    assert!(
        table.contains("truncated  2 of 5 (40.0%) at max_len 8"),
        "{table}"
    );
    let table = summary.with_without_label(3).to_string();
    assert!(
        table.contains("examples   5 (7 filtered out, 3 with none of the labels)"),
        "{table}"
    );
    Ok(())
}

#[test]
fn multi_label_summary_counts_each_label_carried() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 8)?;
    let examples = [
        example("a", Target::Multi(vec![1.0, 0.0, 1.0])),
        example("b", Target::Multi(vec![1.0, 0.0, 0.0])),
    ];
    let dataset = Dataset::new(&examples, &tokenizer)?;
    let labels = [
        "bug".to_owned(),
        "feature".to_owned(),
        "question".to_owned(),
    ];
    let counts: Vec<usize> = DataSummary::new(&dataset, &labels, 0)
        .per_label
        .into_iter()
        .map(|(_, count)| count)
        .collect();
    assert_eq!(counts, [2, 0, 1]);
    Ok(())
}
