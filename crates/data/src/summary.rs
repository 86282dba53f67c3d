//! What a dataset looks like before training: label counts and token lengths, so a user sees
//! class imbalance and how much text `max_len` cuts off.

use std::fmt;

use crate::batch::{Dataset, Targets};
use crate::clean::CleanStats;

/// Label counts and token-length statistics of one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSummary {
    /// Number of examples.
    pub examples: usize,
    /// `(label, examples carrying it)` in label-id order; empty for unlabelled data.
    pub per_label: Vec<(String, usize)>,
    /// Median untruncated token length (`[CLS]`/`[SEP]` included).
    pub p50: usize,
    /// 90th percentile of untruncated token length.
    pub p90: usize,
    /// 95th percentile of untruncated token length.
    pub p95: usize,
    /// 99th percentile of untruncated token length.
    pub p99: usize,
    /// Longest untruncated token length.
    pub max: usize,
    /// Examples longer than `max_len`, i.e. cut by truncation.
    pub truncated: usize,
    /// The truncation length.
    pub max_len: usize,
    /// Rows dropped by `data.filter` before this dataset was built.
    pub filtered_out: usize,
    /// Rows left out for holding none of `data.labels` (`data.other_labels = "ignore"`).
    pub without_label: usize,
    /// Rows neither trained nor validated on: the validation rows of the split that
    /// `data.nested_folds` deals its folds inside.
    pub set_aside: usize,
    /// What `data.clean` removed from the file's texts, when it is on.
    pub cleaned: Option<CleanStats>,
    /// Examples that are variants of others (`data.augment`), counted in `examples`.
    pub variants: usize,
}

impl DataSummary {
    /// Summarizes `dataset`; `labels` are the names in id order (`data.labels`).
    pub fn new(dataset: &Dataset, labels: &[String], filtered_out: usize) -> Self {
        let mut lengths: Vec<usize> = dataset.encodings().iter().map(|e| e.full_len).collect();
        lengths.sort_unstable();
        let max_len = dataset.max_len();
        let mut counts = vec![0usize; labels.len()];
        match dataset.targets() {
            Targets::Single(ids) => {
                for &id in ids {
                    if let Some(count) = counts.get_mut(id as usize) {
                        *count += 1;
                    }
                }
            }
            Targets::Multi { values, num_labels } => {
                for row in values.chunks(*num_labels) {
                    for (count, &value) in counts.iter_mut().zip(row) {
                        *count += usize::from(value > 0.5);
                    }
                }
            }
            Targets::None => counts.clear(),
        }
        let per_label = labels.iter().cloned().zip(counts).collect();
        Self {
            examples: dataset.len(),
            per_label,
            p50: percentile(&lengths, 50),
            p90: percentile(&lengths, 90),
            p95: percentile(&lengths, 95),
            p99: percentile(&lengths, 99),
            max: lengths.last().copied().unwrap_or(0),
            truncated: lengths.iter().filter(|&&len| len > max_len).count(),
            max_len,
            filtered_out,
            without_label: 0,
            set_aside: 0,
            cleaned: None,
            variants: 0,
        }
    }

    /// Adds the rows that `data.nested_folds` sets aside.
    pub fn with_set_aside(mut self, rows: usize) -> Self {
        self.set_aside = rows;
        self
    }

    /// Adds how many of the examples are variants of others (`data.augment`).
    pub fn with_variants(mut self, rows: usize) -> Self {
        self.variants = rows;
        self
    }

    /// Adds the rows left out for holding none of `data.labels`.
    pub fn with_without_label(mut self, rows: usize) -> Self {
        self.without_label = rows;
        self
    }

    /// Adds what `data.clean` did (shown as a `cleaned` line).
    pub fn with_cleaned(mut self, stats: CleanStats) -> Self {
        self.cleaned = Some(stats);
        self
    }
}

/// Nearest-rank percentile of ascending `sorted`; 0 when empty.
fn percentile(sorted: &[usize], pct: usize) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

impl fmt::Display for DataSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "examples   {}", self.examples)?;
        let mut notes = Vec::new();
        if self.variants > 0 {
            notes.push(format!(
                "{} of them variants from data.augment",
                self.variants
            ));
        }
        if self.filtered_out > 0 {
            notes.push(format!("{} filtered out", self.filtered_out));
        }
        if self.without_label > 0 {
            notes.push(format!("{} with none of the labels", self.without_label));
        }
        if self.set_aside > 0 {
            notes.push(format!("{} set aside by data.nested_folds", self.set_aside));
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        writeln!(f)?;
        if !self.per_label.is_empty() {
            let width = self
                .per_label
                .iter()
                .map(|(l, _)| l.len())
                .max()
                .unwrap_or(0);
            for (label, count) in &self.per_label {
                let share = 100.0 * *count as f64 / self.examples.max(1) as f64;
                writeln!(f, "  {label:<width$}  {count:>7}  {share:5.1}%")?;
            }
        }
        writeln!(
            f,
            "tokens     p50 {}  p90 {}  p95 {}  p99 {}  max {}",
            self.p50, self.p90, self.p95, self.p99, self.max
        )?;
        if let Some(cleaned) = &self.cleaned {
            writeln!(f, "cleaned    {cleaned}")?;
        }
        let share = 100.0 * self.truncated as f64 / self.examples.max(1) as f64;
        write!(
            f,
            "truncated  {} of {} ({share:.1}%) at max_len {}",
            self.truncated, self.examples, self.max_len
        )
    }
}
