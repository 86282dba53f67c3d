//! Knowledge distillation (`train.distill_from`) end to end with the tiny model: a student that
//! learns from a teacher's probabilities ends nearer them than the same student trained on the
//! labels alone, and bad teachers or settings are refused by key.

use super::common::{
    assert_fails_naming, assert_ok, checkpoint_probs, path_str, repo_root, text, train_tiny,
};

/// The training texts of the tiny config.
fn training_texts() -> Vec<String> {
    let path = repo_root().join("tests/fixtures/tiny/train.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            row["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The mean over texts of `KL(teacher || student)`.
fn mean_kl(teacher: &[Vec<f64>], student: &[Vec<f64>]) -> f64 {
    let kl = |p: &[f64], q: &[f64]| -> f64 {
        p.iter()
            .zip(q)
            .map(|(p, q)| if *p > 0.0 { p * (p / q).ln() } else { 0.0 })
            .sum()
    };
    teacher
        .iter()
        .zip(student)
        .map(|(p, q)| kl(p, q))
        .sum::<f64>()
        / teacher.len() as f64
}

#[test]
fn a_distilled_student_learns_its_teachers_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    assert_ok(&train_tiny(&teacher, &["train.epochs=6"]), "teacher");
    let best = teacher.join("best");
    let from = format!("train.distill_from=['{}']", path_str(&best));
    // Another seed than the teacher's: another init, order and dropout.
    let student = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut sets = vec!["train.seed=11", "train.epochs=6"];
        sets.extend(extra);
        let output = train_tiny(&out, &sets);
        assert_ok(&output, name);
        (out, text(&output.stderr))
    };
    let (distilled, log) = student("distilled", &[&from, "train.distill_weight=1.0"]);
    assert!(
        log.contains("distillation: 1 teacher checkpoint(s)")
            && log.contains("predicted the 27 training rows at temperature 2"),
        "{log}"
    );
    assert!(log.contains("KL(teacher || model) at T = 2"), "{log}");
    let (plain, _) = student("plain", &[]);

    let texts = training_texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let probs = |run: &std::path::Path| checkpoint_probs(&run.join("last"), &texts);
    let target = checkpoint_probs(&best, &texts);
    let (near, far) = (
        mean_kl(&target, &probs(&distilled)),
        mean_kl(&target, &probs(&plain)),
    );
    assert!(
        near < 0.5 * far,
        "the distilled student is not nearer its teacher: KL {near} against {far} for the \
         student of the labels"
    );

    // A missing teacher, a teacher of other labels and a weight of 0 are refused by key.
    let refused = train_tiny(
        &dir.path().join("r1"),
        &["train.distill_from=['/nonexistent/teacher']"],
    );
    assert_fails_naming(&refused, &["train.distill_from", "/nonexistent/teacher"]);
    let other = dir.path().join("other");
    assert_ok(
        &train_tiny(
            &other,
            &["data.labels=['needs_test', 'needs_docs', 'needs_review']"],
        ),
        "teacher of other labels",
    );
    let from_other = format!("train.distill_from=['{}']", path_str(&other));
    let refused = train_tiny(&dir.path().join("r2"), &[&from_other]);
    assert_fails_naming(
        &refused,
        &["train.distill_from", "needs_test", "in that order"],
    );
    let refused = train_tiny(&dir.path().join("r3"), &[&from, "train.distill_weight=0"]);
    assert_fails_naming(&refused, &["train.distill_weight", "(0, 1]"]);
}
