//! Classification metrics and the metrics log.
//!
//! This module owns two things:
//! - [`ClassificationReport`]: accuracy, per-class precision/recall/F1, macro-F1 and the confusion
//!   matrix of one evaluation, for single-label and multi-label tasks, with the JSON schema that
//!   scripts read and the human table the CLI prints. The numbers follow scikit-learn's
//!   `classification_report` / `f1_score(average="macro")` with `zero_division=0`, so results can
//!   be checked against it.
//! - [`MetricsLog`]: the append-only `<run>/metrics.jsonl` file of training and evaluation records
//!   that [`crate::plot`] draws.
//!
//! Pure Rust on purpose: nothing here knows about tensors, so the evaluator hands over plain ids.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Precision, recall and F1 of one class, and how many examples truly belong to it.
///
/// A ratio whose denominator is zero is `0.0` (scikit-learn's `zero_division=0`), never NaN, so a
/// class that is never predicted gets precision 0 rather than poisoning the macro average.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassStats {
    /// `tp / (tp + fp)`.
    pub precision: f64,
    /// `tp / (tp + fn)`.
    pub recall: f64,
    /// `2 tp / (2 tp + fp + fn)`, the harmonic mean of precision and recall.
    pub f1: f64,
    /// Number of examples whose true label set contains this class (`tp + fn`).
    pub support: usize,
}

impl ClassStats {
    /// Stats from the binary counts of one class. `f1` uses the count form
    /// `2tp / (2tp + fp + fn)`, which equals `2pr / (p + r)` whenever that is defined and is 0
    /// otherwise, exactly as scikit-learn computes it.
    fn from_counts(tp: usize, fp: usize, fn_: usize) -> Self {
        Self {
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, tp + fn_),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
            support: tp + fn_,
        }
    }
}

/// `num / den`, or `0.0` when `den == 0` (scikit-learn's `zero_division=0`).
fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// The result of evaluating a classifier on one split.
///
/// Built with [`ClassificationReport::single_label`] or [`ClassificationReport::multi_label`].
/// `labels`, `per_class` and the rows of `confusion` are all indexed by label id.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationReport {
    /// Label names, indexed by label id. Length `n`.
    pub labels: Vec<String>,
    /// Single-label: fraction of examples predicted correctly. Multi-label: fraction whose
    /// predicted label set equals the true set exactly (scikit-learn's subset accuracy).
    pub accuracy: f64,
    /// Unweighted mean of `per_class[i].f1` over all `n` labels, including labels that never occur
    /// (scikit-learn's `f1_score(average="macro", labels=all)`). `0.0` when `n == 0`.
    pub macro_f1: f64,
    /// Per-label stats, length `n`.
    pub per_class: Vec<ClassStats>,
    /// Single-label: `(n, n)`, `confusion[true][predicted]` counts examples.
    /// Multi-label: `(n, 4)`, one row per label holding that label's binary confusion matrix
    /// `[[tn, fp], [fn, tp]]` flattened row-major as `[tn, fp, fn, tp]`.
    pub confusion: Vec<Vec<usize>>,
    /// Mean loss over the split, when the caller computed one.
    pub loss: Option<f64>,
    /// Number of examples the statistics were computed on.
    pub examples: usize,
    /// Expected calibration error of the probabilities
    /// ([`crate::calibration::expected_calibration_error`]), when the caller had them.
    pub ece: Option<f64>,
}

impl ClassificationReport {
    /// Report for a single-label task: one class id per example.
    ///
    /// `labels` has `n` names; `truth` and `predicted` hold one id in `0..n` per example and have
    /// the same length. These are preconditions, not user input: the evaluator produces ids from
    /// the label map and an argmax over `n` logits. They are checked with `debug_assert!`; in
    /// release builds an out-of-range pair (or the tail of the longer slice) is left out of every
    /// statistic instead of panicking.
    pub fn single_label(
        labels: &[String],
        truth: &[u32],
        predicted: &[u32],
        loss: Option<f64>,
    ) -> Self {
        let n = labels.len();
        debug_assert_eq!(
            truth.len(),
            predicted.len(),
            "truth and predicted lengths differ"
        );
        let mut confusion = vec![vec![0usize; n]; n];
        let mut examples = 0usize;
        let mut correct = 0usize;
        for (&t, &p) in truth.iter().zip(predicted) {
            let (t, p) = (t as usize, p as usize);
            debug_assert!(
                t < n && p < n,
                "label id out of range: truth {t}, predicted {p}, {n} labels"
            );
            if let Some(cell) = confusion.get_mut(t).and_then(|row| row.get_mut(p)) {
                *cell += 1;
                examples += 1;
                correct += usize::from(t == p);
            }
        }
        let per_class: Vec<ClassStats> = (0..n)
            .map(|i| {
                let tp = confusion[i][i];
                let support: usize = confusion[i].iter().sum();
                let predicted_as_i: usize = confusion.iter().map(|row| row[i]).sum();
                ClassStats::from_counts(tp, predicted_as_i - tp, support - tp)
            })
            .collect();
        Self {
            labels: labels.to_vec(),
            accuracy: ratio(correct, examples),
            macro_f1: macro_mean(&per_class),
            per_class,
            confusion,
            loss,
            examples,
            ece: None,
        }
    }

    /// Report for a multi-label task: a set of labels per example, as `n` booleans.
    ///
    /// `truth` and `predicted` have one `Vec<bool>` of length `n = labels.len()` per example and
    /// the same length (checked with `debug_assert!`; in release builds a missing entry counts as
    /// `false` and the tail of the longer slice is ignored). Each label is scored as its own binary
    /// problem; `support` is the number of examples where the label is truly present.
    pub fn multi_label(
        labels: &[String],
        truth: &[Vec<bool>],
        predicted: &[Vec<bool>],
        loss: Option<f64>,
    ) -> Self {
        let n = labels.len();
        debug_assert_eq!(
            truth.len(),
            predicted.len(),
            "truth and predicted lengths differ"
        );
        // counts[j] = [tn, fp, fn, tp] for label j, the layout documented on `confusion`.
        let mut counts = vec![vec![0usize; 4]; n];
        let mut examples = 0usize;
        let mut exact = 0usize;
        for (t, p) in truth.iter().zip(predicted) {
            debug_assert!(
                t.len() == n && p.len() == n,
                "label set width differs from {n} labels"
            );
            let mut all_match = true;
            for (j, row) in counts.iter_mut().enumerate() {
                let t = t.get(j).copied().unwrap_or(false);
                let p = p.get(j).copied().unwrap_or(false);
                row[usize::from(t) * 2 + usize::from(p)] += 1;
                all_match &= t == p;
            }
            examples += 1;
            exact += usize::from(all_match);
        }
        let per_class: Vec<ClassStats> = counts
            .iter()
            .map(|c| ClassStats::from_counts(c[3], c[1], c[2]))
            .collect();
        Self {
            labels: labels.to_vec(),
            accuracy: ratio(exact, examples),
            macro_f1: macro_mean(&per_class),
            per_class,
            confusion: counts,
            loss,
            examples,
            ece: None,
        }
    }

    /// A named scalar for early stopping and best-checkpoint selection: `"accuracy"`,
    /// `"macro_f1"`, `"loss"` (`None` when no loss was computed) or `"f1:<label>"` (`None` for an
    /// unknown label). Any other name gives `None`, so the caller can report it with the valid
    /// names.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "accuracy" => Some(self.accuracy),
            "macro_f1" => Some(self.macro_f1),
            "loss" => self.loss,
            _ => {
                let label = name.strip_prefix("f1:")?;
                let index = self.labels.iter().position(|l| l == label)?;
                self.per_class.get(index).map(|s| s.f1)
            }
        }
    }

    /// Whether a larger value of metric `name` is better: false only for `"loss"`.
    pub fn higher_is_better(name: &str) -> bool {
        name != "loss"
    }

    /// The report as JSON, in the schema scripts rely on:
    ///
    /// ```json
    /// {"labels": ["bug", ...], "accuracy": 0.8, "macro_f1": 0.78,
    ///  "per_class": {"bug": {"precision": 0.9, "recall": 0.7, "f1": 0.79, "support": 12}, ...},
    ///  "confusion": [[...], ...], "loss": 0.41, "ece": 0.05, "examples": 60}
    /// ```
    ///
    /// `loss` and `ece` are `null` when absent; a non-finite float is written as `null` (JSON has no NaN).
    pub fn to_json(&self) -> Value {
        let per_class: Map<String, Value> = self
            .labels
            .iter()
            .zip(&self.per_class)
            .map(|(label, s)| {
                let stats = json!({
                    "precision": s.precision,
                    "recall": s.recall,
                    "f1": s.f1,
                    "support": s.support,
                });
                (label.clone(), stats)
            })
            .collect();
        json!({
            "labels": self.labels,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": per_class,
            "confusion": self.confusion,
            "loss": self.loss,
            "ece": self.ece,
            "examples": self.examples,
        })
    }

    /// A human-readable table in the layout of scikit-learn's `classification_report`: one row
    /// per label, then accuracy, macro and weighted averages and the loss, then the confusion
    /// matrix with label names (cut to 14 characters) as row and column headers.
    pub fn table(&self) -> String {
        let names: Vec<String> = self
            .labels
            .iter()
            .map(|l| truncate(l, LABEL_WIDTH))
            .collect();
        let name_width = names
            .iter()
            .map(|n| n.chars().count())
            .chain(std::iter::once("weighted avg".len()))
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        out.push_str(&format!(
            "{:>name_width$}  {:>9}  {:>9}  {:>9}  {:>9}\n\n",
            "", "precision", "recall", "f1-score", "support"
        ));
        for (name, s) in names.iter().zip(&self.per_class) {
            out.push_str(&format!(
                "{:>name_width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>9}\n",
                pad_chars(name, name_width),
                s.precision,
                s.recall,
                s.f1,
                s.support
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:>name_width$}  {:>9}  {:>9}  {:>9.4}  {:>9}\n",
            "accuracy", "", "", self.accuracy, self.examples
        ));
        let total_support: usize = self.per_class.iter().map(|s| s.support).sum();
        let count = self.per_class.len().max(1) as f64;
        let macro_avg =
            |f: fn(&ClassStats) -> f64| self.per_class.iter().map(f).sum::<f64>() / count;
        // Weighted by support, as scikit-learn; with no support at all the weights are undefined
        // and the row is 0 (zero_division=0).
        let weighted_avg = |f: fn(&ClassStats) -> f64| {
            let weighted: f64 = self.per_class.iter().map(|s| f(s) * s.support as f64).sum();
            if total_support == 0 {
                0.0
            } else {
                weighted / total_support as f64
            }
        };
        let stats: [fn(&ClassStats) -> f64; 3] = [|s| s.precision, |s| s.recall, |s| s.f1];
        let rows = [
            ("macro avg", stats.map(macro_avg)),
            ("weighted avg", stats.map(weighted_avg)),
        ];
        for (row, [precision, recall, f1]) in rows {
            out.push_str(&format!(
                "{row:>name_width$}  {precision:>9.4}  {recall:>9.4}  {f1:>9.4}  {total_support:>9}\n"
            ));
        }
        match self.loss {
            Some(loss) => out.push_str(&format!("{:>name_width$}  {:>9.4}\n", "loss", loss)),
            None => out.push_str(&format!("{:>name_width$}  {:>9}\n", "loss", "-")),
        }
        if let Some(ece) = self.ece {
            out.push_str(&format!("{:>name_width$}  {:>9.4}\n", "ECE", ece));
        }
        out.push('\n');
        out.push_str(&self.confusion_table(&names));
        out
    }

    /// The confusion part of [`Self::table`]. `names` are the truncated label names.
    fn confusion_table(&self, names: &[String]) -> String {
        let (title, columns): (&str, Vec<String>) = if self.is_multi_label() {
            (
                "confusion per label (binary counts)",
                ["tn", "fp", "fn", "tp"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        } else {
            (
                "confusion (rows = true label, columns = predicted)",
                names.to_vec(),
            )
        };
        let row_width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        let widest_count = self
            .confusion
            .iter()
            .flatten()
            .map(|c| c.to_string().len())
            .max()
            .unwrap_or(1);
        let col_width = columns
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0)
            .max(widest_count);
        let mut out = format!("{title}\n");
        out.push_str(&" ".repeat(row_width));
        for column in &columns {
            out.push_str("  ");
            out.push_str(&pad_chars(column, col_width));
        }
        out.push('\n');
        for (name, row) in names.iter().zip(&self.confusion) {
            out.push_str(&pad_chars_left(name, row_width));
            for count in row {
                out.push_str(&format!("  {count:>col_width$}"));
            }
            out.push('\n');
        }
        out
    }

    /// Whether `confusion` holds per-label binary counts (`(n, 4)`, see the field docs) rather
    /// than an `(n, n)` matrix. Decided from the data so the struct carries no extra flag: with
    /// `n != 4` the row width tells; with `n == 4` every multi-label row sums to `examples`,
    /// while single-label rows sum to `examples` in total, so four rows summing to `examples > 0`
    /// each cannot be single-label. (With no examples both layouts are all zeros.)
    fn is_multi_label(&self) -> bool {
        let n = self.labels.len();
        let all_width_4 = self.confusion.iter().all(|row| row.len() == 4);
        if n != 4 {
            return n > 0 && all_width_4;
        }
        self.examples > 0
            && all_width_4
            && self
                .confusion
                .iter()
                .all(|row| row.iter().sum::<usize>() == self.examples)
    }
}

/// Widest label name shown in [`ClassificationReport::table`], so long names keep the table
/// narrow enough for a terminal.
const LABEL_WIDTH: usize = 14;

/// Mean F1 over all classes; 0 for no classes rather than NaN.
fn macro_mean(per_class: &[ClassStats]) -> f64 {
    if per_class.is_empty() {
        0.0
    } else {
        per_class.iter().map(|s| s.f1).sum::<f64>() / per_class.len() as f64
    }
}

/// `text` cut to at most `max` characters (not bytes, so non-ASCII names are safe), ending in
/// `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Right-aligns `text` to `width` characters. `format!`'s width counts chars too, but going
/// through this keeps the intent explicit where names may be non-ASCII.
fn pad_chars(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{}{}", " ".repeat(width.saturating_sub(len)), text)
}

/// Left-aligns `text` to `width` characters.
fn pad_chars_left(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{}{}", text, " ".repeat(width.saturating_sub(len)))
}

/// The append-only JSON-lines log of a run, `<run>/metrics.jsonl`: one record per line.
///
/// Records are objects with a `"kind"`; the loop writes
/// `{"kind":"train","step":10,"epoch":1,"loss":0.9,"lr":2e-5,"grad_norm":1.3,"examples_per_s":12.1}`
/// and `{"kind":"eval","step":50,"epoch":1,"loss":0.7,"accuracy":0.8,"macro_f1":0.78}`.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
    /// Where the records also go as TensorBoard scalars, when asked.
    tensorboard: Option<crate::tensorboard::EventWriter>,
}

impl MetricsLog {
    /// Opens `path` for appending, creating it (and its parent directory) if needed, so a resumed
    /// run continues the same file.
    ///
    /// If the file ends in a partial line (the process died mid-write), that fragment is cut off
    /// first: appending after it would glue the next record onto it and make both unreadable.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        drop_partial_last_line(&mut file)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            tensorboard: None,
        })
    }

    /// Also writes every record to a new TensorBoard event file in `dir`: each numeric field of
    /// a record but `step` and `epoch` becomes the scalar `<kind>/<field>` at the record's step
    /// (`train/loss`, `eval/macro_f1`, ...).
    pub fn with_tensorboard(mut self, dir: &Path) -> io::Result<Self> {
        self.tensorboard = Some(crate::tensorboard::EventWriter::create(dir)?);
        Ok(self)
    }

    /// Appends `record` as one line and flushes it, so a crash loses at most the record being
    /// written and `plot` can read the file while training runs.
    pub fn write(&mut self, record: &Value) -> io::Result<()> {
        let mut line = serde_json::to_string(record).map_err(io::Error::other)?;
        line.push('\n');
        // One write call per record: with O_APPEND the line lands whole at the end of the file.
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        if let Some(events) = &mut self.tensorboard {
            let (Some(kind), Some(step), Some(fields)) = (
                record["kind"].as_str(),
                record["step"].as_i64(),
                record.as_object(),
            ) else {
                return Ok(());
            };
            let scalars: Vec<(String, f64)> = fields
                .iter()
                .filter(|(key, _)| !matches!(key.as_str(), "kind" | "step" | "epoch"))
                .filter_map(|(key, value)| Some((format!("{kind}/{key}"), value.as_f64()?)))
                .collect();
            events.scalars(step, &scalars).map_err(|e| {
                io::Error::new(e.kind(), format!("{}: {e}", events.path().display()))
            })?;
        }
        Ok(())
    }

    /// The file this log appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Truncates `file` after its last `'\n'` (or to empty if it has none). Metrics files are small
/// (one short line per logging step), so reading it whole is fine.
fn drop_partial_last_line(file: &mut File) -> io::Result<()> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    file.set_len(keep as u64)
}

/// Reads every record of a metrics log written by [`MetricsLog`], skipping blank lines.
///
/// An invalid line gives an [`io::ErrorKind::InvalidData`] error naming the path and the 1-based
/// line number.
pub fn read_records(path: impl AsRef<Path>) -> io::Result<Vec<Value>> {
    let path = path.as_ref();
    let text = fs::read_to_string(path)?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}:{}: invalid JSON record: {err}",
                    path.display(),
                    index + 1
                ),
            )
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Checked against scikit-learn:
    /// ```python
    /// from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
    /// y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
    /// y_pred = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0]
    /// confusion_matrix(y_true, y_pred)           # [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    /// precision_recall_fscore_support(y_true, y_pred)
    /// # precision [0.75, 0.5, 0.75], recall [0.75, 0.5, 0.75], f1 [0.75, 0.5, 0.75], support [4, 2, 4]
    /// f1_score(y_true, y_pred, average="macro")  # 0.6666666666666666
    /// ```
    #[test]
    fn single_label_matches_hand_computed_sklearn_numbers() {
        let labels = names(&["bug", "feature", "question"]);
        // truth:     bug bug bug feat feat q  q  q  q  bug
        // predicted: bug feat bug feat q  q  q  bug q  bug
        let truth = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0];
        let predicted = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0];
        let r = ClassificationReport::single_label(&labels, &truth, &predicted, Some(0.5));
        // Confusion (rows = true): bug -> [3 bug, 1 feat, 0 q]; feature -> [0, 1, 1];
        // question -> [1, 0, 3].
        assert_eq!(
            r.confusion,
            vec![vec![3, 1, 0], vec![0, 1, 1], vec![1, 0, 3]]
        );
        // bug:      tp 3, predicted 3+0+1 = 4, support 4: P 0.75, R 0.75, F1 0.75
        // feature:  tp 1, predicted 1+1+0 = 2, support 2: P 0.5,  R 0.5,  F1 0.5
        // question: tp 3, predicted 0+1+3 = 4, support 4: P 0.75, R 0.75, F1 0.75
        // macro F1 = (0.75 + 0.5 + 0.75) / 3 = 2/3; accuracy = 7/10.
        let expected = [
            (0.75, 0.75, 0.75, 4),
            (0.5, 0.5, 0.5, 2),
            (0.75, 0.75, 0.75, 4),
        ];
        for (s, (p, rc, f, n)) in r.per_class.iter().zip(expected) {
            assert!(
                close(s.precision, p) && close(s.recall, rc) && close(s.f1, f),
                "{s:?}"
            );
            assert_eq!(s.support, n);
        }
        assert!(close(r.accuracy, 0.7));
        assert!(close(r.macro_f1, 2.0 / 3.0));
        assert_eq!(r.examples, 10);
        assert_eq!(r.loss, Some(0.5));
    }

    /// An unbalanced case where precision and recall differ, checked with scikit-learn:
    /// ```python
    /// y_true = [0, 0, 0, 0, 1, 1, 2]
    /// y_pred = [0, 0, 1, 2, 1, 0, 2]
    /// precision_recall_fscore_support(y_true, y_pred)
    /// # precision [0.6667, 0.5, 0.5], recall [0.5, 0.5, 1.0], f1 [0.5714, 0.5, 0.6667]
    /// f1_score(y_true, y_pred, average="macro")  # 0.5793650793650794
    /// ```
    #[test]
    fn single_label_precision_and_recall_differ_when_unbalanced() {
        let labels = names(&["a", "b", "c"]);
        let r = ClassificationReport::single_label(
            &labels,
            &[0, 0, 0, 0, 1, 1, 2],
            &[0, 0, 1, 2, 1, 0, 2],
            None,
        );
        // a: tp 2, predicted 3, support 4 -> P 2/3, R 1/2, F1 = 4/(3+4) = 4/7
        // b: tp 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 = 2/4 = 1/2
        // c: tp 1, predicted 2, support 1 -> P 1/2, R 1,   F1 = 2/3
        let f1 = [4.0 / 7.0, 0.5, 2.0 / 3.0];
        assert!(close(r.per_class[0].precision, 2.0 / 3.0));
        assert!(close(r.per_class[0].recall, 0.5));
        assert!(close(r.per_class[2].recall, 1.0));
        for (s, f) in r.per_class.iter().zip(f1) {
            assert!(close(s.f1, f), "{s:?}");
        }
        assert!(close(r.macro_f1, (4.0 / 7.0 + 0.5 + 2.0 / 3.0) / 3.0));
        assert!(close(r.macro_f1, 0.5793650793650794));
        assert!(close(r.accuracy, 4.0 / 7.0));
    }

    #[test]
    fn perfect_predictions_score_one_everywhere() {
        let labels = names(&["x", "y"]);
        let ids = [0, 1, 1, 0, 1];
        let r = ClassificationReport::single_label(&labels, &ids, &ids, None);
        assert_eq!(r.accuracy, 1.0);
        assert_eq!(r.macro_f1, 1.0);
        assert!(r
            .per_class
            .iter()
            .all(|s| s.precision == 1.0 && s.recall == 1.0 && s.f1 == 1.0));
        assert_eq!(r.confusion, vec![vec![2, 0], vec![0, 3]]);
    }

    #[test]
    fn class_never_predicted_gets_zero_precision_not_nan() {
        let labels = names(&["common", "rare", "absent"]);
        // "rare" occurs but is never predicted; "absent" neither occurs nor is predicted.
        let r = ClassificationReport::single_label(&labels, &[0, 0, 1], &[0, 0, 0], None);
        let rare = &r.per_class[1];
        assert_eq!(
            (rare.precision, rare.recall, rare.f1, rare.support),
            (0.0, 0.0, 0.0, 1)
        );
        let absent = &r.per_class[2];
        assert_eq!(
            (absent.precision, absent.recall, absent.f1, absent.support),
            (0.0, 0.0, 0.0, 0)
        );
        // common: P 2/3, R 1, F1 = 4/5. Macro over all three labels, like sklearn with
        // labels=[0,1,2]: 0.8 / 3.
        assert!(close(r.per_class[0].f1, 0.8));
        assert!(close(r.macro_f1, 0.8 / 3.0));
        assert!(r.to_json().to_string().find("NaN").is_none());
    }

    #[test]
    fn empty_evaluation_gives_zeros_not_nan() {
        let r = ClassificationReport::single_label(&names(&["a"]), &[], &[], None);
        assert_eq!((r.accuracy, r.macro_f1, r.examples), (0.0, 0.0, 0));
        let none = ClassificationReport::single_label(&[], &[], &[], None);
        assert_eq!(none.macro_f1, 0.0);
        assert!(none.table().contains("accuracy"));
    }

    /// Checked with scikit-learn:
    /// ```python
    /// Y_true = [[1,0,1],[0,1,0],[1,1,0],[0,0,1]]
    /// Y_pred = [[1,0,0],[0,1,0],[1,0,0],[0,1,1]]
    /// accuracy_score(Y_true, Y_pred)                 # 0.25 (only row 1 matches exactly)
    /// f1_score(Y_true, Y_pred, average=None)         # [1.0, 0.5, 0.6667]
    /// f1_score(Y_true, Y_pred, average="macro")      # 0.7222222222222222
    /// multilabel_confusion_matrix(Y_true, Y_pred)    # [[[2,0],[0,2]], [[1,1],[1,1]], [[2,0],[1,1]]]
    /// ```
    #[test]
    fn multi_label_scores_each_label_as_binary_and_accuracy_as_exact_match() {
        let labels = names(&["a", "b", "c"]);
        let t = |v: [u8; 3]| v.iter().map(|&x| x == 1).collect::<Vec<bool>>();
        let truth = vec![t([1, 0, 1]), t([0, 1, 0]), t([1, 1, 0]), t([0, 0, 1])];
        let predicted = vec![t([1, 0, 0]), t([0, 1, 0]), t([1, 0, 0]), t([0, 1, 1])];
        let r = ClassificationReport::multi_label(&labels, &truth, &predicted, Some(0.3));
        // a: tp 2, fp 0, fn 0, tn 2 -> P 1, R 1, F1 1, support 2
        // b: tp 1, fp 1, fn 1, tn 1 -> P 1/2, R 1/2, F1 1/2, support 2
        // c: tp 1, fp 0, fn 1, tn 2 -> P 1, R 1/2, F1 2/3, support 2
        assert_eq!(
            r.confusion,
            vec![vec![2, 0, 0, 2], vec![1, 1, 1, 1], vec![2, 0, 1, 1]]
        );
        assert!(close(r.per_class[1].precision, 0.5));
        assert!(close(r.per_class[2].precision, 1.0));
        assert!(close(r.per_class[2].recall, 0.5));
        assert!(close(r.per_class[2].f1, 2.0 / 3.0));
        assert!(r.per_class.iter().all(|s| s.support == 2));
        assert!(close(r.macro_f1, (1.0 + 0.5 + 2.0 / 3.0) / 3.0));
        assert!(close(r.accuracy, 0.25));
        assert_eq!(r.examples, 4);
        let table = r.table();
        assert!(table.contains("tn") && table.contains("tp"), "{table}");
    }

    #[test]
    fn multi_label_table_with_four_labels_uses_binary_layout() {
        let labels = names(&["a", "b", "c", "d"]);
        let rows = vec![
            vec![true, false, false, true],
            vec![false, true, false, false],
        ];
        let r = ClassificationReport::multi_label(&labels, &rows, &rows, None);
        assert!(r.is_multi_label());
        let single =
            ClassificationReport::single_label(&labels, &[0, 1, 2, 3], &[0, 1, 2, 2], None);
        assert!(!single.is_multi_label());
    }

    #[test]
    fn metric_looks_up_named_scalars_and_per_label_f1() {
        let labels = names(&["bug", "feature"]);
        let r = ClassificationReport::single_label(&labels, &[0, 1, 1], &[0, 1, 0], Some(0.25));
        assert_eq!(r.metric("accuracy"), Some(r.accuracy));
        assert_eq!(r.metric("macro_f1"), Some(r.macro_f1));
        assert_eq!(r.metric("loss"), Some(0.25));
        assert_eq!(r.metric("f1:feature"), Some(r.per_class[1].f1));
        assert_eq!(r.metric("f1:nope"), None);
        assert_eq!(r.metric("bogus"), None);
        assert!(!ClassificationReport::higher_is_better("loss"));
        assert!(ClassificationReport::higher_is_better("macro_f1"));
        assert!(ClassificationReport::higher_is_better("f1:bug"));
    }

    #[test]
    fn to_json_has_exactly_the_documented_schema() {
        let labels = names(&["bug", "feature"]);
        let r = ClassificationReport::single_label(&labels, &[0, 1, 1], &[0, 1, 0], None);
        let json = r.to_json();
        let object = json.as_object().expect("report JSON is an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "accuracy",
                "confusion",
                "ece",
                "examples",
                "labels",
                "loss",
                "macro_f1",
                "per_class"
            ]
        );
        assert_eq!(json["labels"], json!(["bug", "feature"]));
        assert_eq!(json["loss"], Value::Null);
        assert_eq!(json["examples"], json!(3));
        assert_eq!(json["confusion"], json!([[1, 0], [1, 1]]));
        let bug = json["per_class"]["bug"]
            .as_object()
            .expect("per-class entry is an object");
        let mut stat_keys: Vec<&str> = bug.keys().map(String::as_str).collect();
        stat_keys.sort_unstable();
        assert_eq!(stat_keys, ["f1", "precision", "recall", "support"]);
        assert_eq!(json["per_class"]["feature"]["support"], json!(2));
        assert_eq!(json["per_class"]["feature"]["recall"], json!(0.5));
    }

    #[test]
    fn table_lists_every_label_averages_and_confusion() {
        let labels = names(&["bug", "feature", "a-very-long-label-name-indeed"]);
        let r =
            ClassificationReport::single_label(&labels, &[0, 1, 2, 2], &[0, 2, 2, 1], Some(0.75));
        let table = r.table();
        for needle in [
            "bug",
            "feature",
            "a-very-long-l…",
            "accuracy",
            "macro avg",
            "weighted avg",
            "loss",
            "0.7500",
        ] {
            assert!(table.contains(needle), "missing {needle:?} in\n{table}");
        }
        assert!(!table.contains("a-very-long-label-name-indeed"), "{table}");
        // The row for "feature" in the confusion part: 0 bug, 0 feature, 1 predicted as long label.
        let confusion_row = table
            .lines()
            .rev()
            .find(|l| l.starts_with("feature"))
            .expect("confusion row for feature");
        let counts: Vec<&str> = confusion_row.split_whitespace().skip(1).collect();
        assert_eq!(counts, ["0", "0", "1"]);
    }

    #[test]
    fn metrics_log_appends_across_reopen_and_reads_back() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("run").join("metrics.jsonl");
        let first = json!({"kind":"train","step":10,"epoch":1,"loss":0.9,"lr":2e-5,"grad_norm":1.3,"examples_per_s":12.1});
        let second =
            json!({"kind":"eval","step":50,"epoch":1,"loss":0.7,"accuracy":0.8,"macro_f1":0.78});
        MetricsLog::create(&path)?.write(&first)?;
        // A resumed run reopens the same file and continues it.
        let mut log = MetricsLog::create(&path)?;
        log.write(&second)?;
        assert_eq!(log.path(), path);
        assert_eq!(read_records(&path)?, vec![first, second]);
        Ok(())
    }

    #[test]
    fn metrics_log_drops_a_torn_last_line_before_appending() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("metrics.jsonl");
        fs::write(&path, "{\"kind\":\"train\",\"step\":1}\n{\"kind\":\"tra")?;
        MetricsLog::create(&path)?.write(&json!({"kind":"train","step":2}))?;
        let steps: Vec<Value> = read_records(&path)?
            .iter()
            .map(|r| r["step"].clone())
            .collect();
        assert_eq!(steps, [json!(1), json!(2)]);
        Ok(())
    }

    #[test]
    fn read_records_skips_blank_lines_and_names_the_bad_line() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("metrics.jsonl");
        fs::write(&path, "{\"step\":1}\n\n   \n{\"step\":2}\n")?;
        assert_eq!(read_records(&path)?.len(), 2);
        fs::write(&path, "{\"step\":1}\n\n{not json}\n")?;
        let err = read_records(&path).expect_err("line 3 is invalid");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("metrics.jsonl:3:"), "{err}");
        Ok(())
    }
}
