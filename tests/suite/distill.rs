//! Knowledge distillation (`train.distill_from`) end to end with the tiny model: a student that
//! learns from a teacher's probabilities ends nearer them than the same student trained on the
//! labels alone, out-of-fold targets come from the teacher that held each row out, and bad
//! teachers or settings are refused by key.

use super::common::{
    assert_fails_naming, assert_ok, checkpoint_probs, path_str, repo_root, text,
    tiny_without_valid, train_config, train_tiny,
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
    // The teacher never saw the validation file.
    assert!(!log.contains("validation scores are optimistic"), "{log}");
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

    // A student validating on rows of the teacher's training file is told its validation
    // scores are not clean: the teacher trained on every one of them.
    let held = tiny_without_valid(dir.path(), "valid_fraction = 0.3");
    let output = train_config(&held, &dir.path().join("held"), &[&from, "train.epochs=1"]);
    assert_ok(&output, "student validating on the teacher's rows");
    let log = text(&output.stderr);
    let valid_rows = log
        .split("warning: the teachers trained on ")
        .nth(1)
        .and_then(|rest| rest.split(" validation rows").next())
        .unwrap_or_else(|| panic!("no warning about the validation rows:\n{log}"));
    let (seen, of) = valid_rows.split_once(" of the ").unwrap();
    assert_eq!(seen, of, "{log}");
    assert!(seen.parse::<usize>().unwrap() > 0, "{log}");
    assert!(
        log.contains("so its validation scores are optimistic"),
        "{log}"
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

/// The rows of `distill_targets.jsonl`: (line, label, probabilities in the tiny label order).
fn distill_targets(run: &std::path::Path) -> Vec<(u64, String, Vec<f64>)> {
    let path = run.join("distill_targets.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let probs = ["needs_docs", "needs_test", "needs_review"]
                .iter()
                .map(|l| row["probs"][l].as_f64().unwrap())
                .collect();
            let label = row["label"].as_str().unwrap().to_string();
            (row["line"].as_u64().unwrap(), label, probs)
        })
        .collect()
}

/// The three runs of `folds` (a config with `data.folds = 3`), fold k held out by run k, trained
/// into `dir/fold<k>` with the `extra` settings, and the `train.distill_from` setting naming them.
fn fold_teachers(
    dir: &std::path::Path,
    folds: &std::path::Path,
    extra: &[&str],
) -> (Vec<std::path::PathBuf>, String) {
    let teachers: Vec<std::path::PathBuf> = (0..3)
        .map(|k| {
            let out = dir.join(format!("fold{k}"));
            let fold = format!("data.fold={k}");
            let sets: Vec<&str> = std::iter::once(fold.as_str())
                .chain(extra.iter().copied())
                .collect();
            assert_ok(
                &train_config(folds, &out, &sets),
                &format!("teacher of fold {k}"),
            );
            out
        })
        .collect();
    let from = format!(
        "train.distill_from=[{}]",
        teachers
            .iter()
            .map(|t| format!("'{}'", path_str(t)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (teachers, from)
}

/// `train.distill_out_of_fold` with the three fold runs of the tiny data as teachers: each of the
/// 27 training rows is labelled by exactly the run that held it out (its probabilities at T = 1,
/// what `predict` gives for the row, within 1e-5), where plain distillation gives every row the
/// three runs' mean. Rows every teacher trained on, teachers that make texts another way and the
/// key without teachers are refused by key.
#[test]
fn out_of_fold_distillation_labels_each_row_by_the_run_that_held_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let folds = tiny_without_valid(dir.path(), "folds = 3");
    let (teachers, from) = fold_teachers(dir.path(), &folds, &[]);
    // The student trains on all 27 rows (the tiny config validates on its own file).
    let student = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut sets = vec![
            from.as_str(),
            "train.distill_temperature=1.0",
            "train.epochs=1",
        ];
        sets.extend(extra);
        let output = train_tiny(&out, &sets);
        (out, output)
    };
    let (oof, output) = student("oof", &["train.distill_out_of_fold=true"]);
    assert_ok(&output, "out-of-fold student");
    let log = text(&output.stderr);
    assert!(!log.contains("validation scores are optimistic"), "{log}");
    assert!(
        log.contains("predicted the 27 training rows out of fold (each by the 1 teacher(s) that"),
        "{log}"
    );
    let (plain, output) = student("plain", &[]);
    assert_ok(&output, "plain student");

    // Which teacher held each training text out, from each teacher's own prediction of its fold:
    // a text is in fold k when teacher k's probabilities for it are the out-of-fold target.
    let texts = training_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let per_teacher: Vec<Vec<Vec<f64>>> = teachers
        .iter()
        .map(|t| checkpoint_probs(&t.join("best"), &refs))
        .collect();
    let targets = distill_targets(&oof);
    let mean_targets = distill_targets(&plain);
    assert_eq!(targets.len(), 27);
    let fixture = repo_root().join("tests/fixtures/tiny/train.jsonl");
    let rows = wick_data::read_examples(
        &fixture,
        &wick_trainer::config::RunConfig::load(&folds, &[])
            .unwrap()
            .data,
    )
    .unwrap()
    .examples;
    let mut held_by = [0usize; 3];
    for (k, teacher) in teachers.iter().enumerate() {
        let config =
            wick_trainer::config::RunConfig::load(&teacher.join("best/config.toml"), &[]).unwrap();
        let (_, valid) = wick_trainer::fit::held_out(&config, &rows).unwrap();
        for i in valid {
            held_by[k] += 1;
            let row = &rows[i];
            let (_, label, target) = targets
                .iter()
                .find(|(line, _, _)| *line == row.line as u64)
                .unwrap_or_else(|| panic!("no target for line {}", row.line));
            let expected = &per_teacher[k][row.line - 1];
            for (a, b) in target.iter().zip(expected) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "line {} ({label}): target {target:?}, fold teacher {k} predicts {expected:?}",
                    row.line
                );
            }
            let mean: Vec<f64> = (0..3)
                .map(|j| per_teacher.iter().map(|p| p[row.line - 1][j]).sum::<f64>() / 3.0)
                .collect();
            let (_, _, plain_target) = mean_targets
                .iter()
                .find(|(line, _, _)| *line == row.line as u64)
                .unwrap();
            for (a, b) in plain_target.iter().zip(&mean) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "line {}: plain target {plain_target:?}, mean {mean:?}",
                    row.line
                );
            }
        }
    }
    assert_eq!(held_by.iter().sum::<usize>(), 27, "{held_by:?}");

    // A teacher that trained on every row leaves those rows without a target.
    let whole = dir.path().join("whole");
    assert_ok(
        &train_tiny(&whole, &["train.epochs=1"]),
        "teacher of all rows",
    );
    let from_whole = format!("train.distill_from=['{}']", path_str(&whole));
    let refused = train_tiny(
        &dir.path().join("r1"),
        &[&from_whole, "train.distill_out_of_fold=true"],
    );
    assert_fails_naming(
        &refused,
        &[
            "train.distill_out_of_fold",
            "27 of the 27",
            "(the first at tests/fixtures/tiny/train.jsonl:1)",
            "data.folds",
        ],
    );
    // Texts made another way cannot be matched.
    let refused = train_tiny(
        &dir.path().join("r2"),
        &[
            &from,
            "train.distill_out_of_fold=true",
            "data.text_separator=' | '",
        ],
    );
    assert_fails_naming(&refused, &["train.distill_out_of_fold", "must agree"]);
    let refused = train_tiny(&dir.path().join("r3"), &["train.distill_out_of_fold=true"]);
    assert_fails_naming(
        &refused,
        &["train.distill_out_of_fold", "train.distill_from"],
    );
}

/// A text that occurs twice in the training file, its copies in different folds, was trained on
/// by every teacher: such a row learns from the teacher that held its own line out (the only
/// target left), says so, and every other row stays out of fold.
#[test]
fn a_repeated_text_in_another_fold_learns_from_the_teacher_of_its_line() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny training rows, then the first nine again (lines 28 to 36).
    let fixture =
        std::fs::read_to_string(repo_root().join("tests/fixtures/tiny/train.jsonl")).unwrap();
    let lines: Vec<&str> = fixture.lines().collect();
    let file = dir.path().join("repeated.jsonl");
    std::fs::write(&file, [&lines[..], &lines[..9]].concat().join("\n") + "\n").unwrap();
    let on_file = format!("data.train='{}'", path_str(&file));
    let folds = tiny_without_valid(dir.path(), "folds = 3");
    let (teachers, from) = fold_teachers(dir.path(), &folds, &[&on_file, "train.epochs=1"]);
    let student = dir.path().join("student");
    let output = train_tiny(
        &student,
        &[
            &from,
            &on_file,
            "train.distill_out_of_fold=true",
            "train.distill_temperature=1.0",
            "train.epochs=1",
        ],
    );
    assert_ok(&output, "student");

    // Which fold holds each line, and how many lines have their copy in another fold.
    let config =
        wick_trainer::config::RunConfig::load(&folds, std::slice::from_ref(&on_file)).unwrap();
    let rows = wick_data::read_examples(&file, &config.data)
        .unwrap()
        .examples;
    let mut fold_of = vec![usize::MAX; rows.len() + 1];
    for (k, teacher) in teachers.iter().enumerate() {
        let config =
            wick_trainer::config::RunConfig::load(&teacher.join("best/config.toml"), &[]).unwrap();
        let (_, valid) = wick_trainer::fit::held_out(&config, &rows).unwrap();
        for i in valid {
            fold_of[rows[i].line] = k;
        }
    }
    let split = (1..=9)
        .filter(|&line| fold_of[line] != fold_of[line + 27])
        .count();
    assert!(split > 0, "no repeated text has its copies in two folds");
    let log = text(&output.stderr);
    assert!(
        log.contains(&format!(
            "; {} of them (the first at {}:",
            2 * split,
            path_str(&file)
        )) && log.contains("they learn from the teachers that held their own line out"),
        "{log}"
    );

    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let per_teacher: Vec<Vec<Vec<f64>>> = teachers
        .iter()
        .map(|t| checkpoint_probs(&t.join("best"), &texts))
        .collect();
    let targets = distill_targets(&student);
    assert_eq!(targets.len(), 36);
    for (line, label, target) in &targets {
        let line = *line as usize;
        let expected = &per_teacher[fold_of[line]][line - 1];
        for (a, b) in target.iter().zip(expected) {
            assert!(
                (a - b).abs() < 1e-5,
                "line {line} ({label}): target {target:?}, the teacher of its fold predicts \
                 {expected:?}"
            );
        }
    }
}

/// `data.nested_folds`: three fold teachers dealt inside the student's own held-out split (30%
/// of each label, split seed 5) never see the student's validation rows. Their folds together
/// are exactly the student's training rows, each row's target is the prediction of the teacher
/// that held it out, the student gets no warning about optimistic validation scores, and each
/// teacher says how many rows it set aside. The key is refused without folds or a held-out
/// share.
#[test]
fn nested_fold_teachers_never_see_the_students_validation_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (teacher_dir, student_dir) = (dir.path().join("t"), dir.path().join("s"));
    std::fs::create_dir_all(&teacher_dir).unwrap();
    std::fs::create_dir_all(&student_dir).unwrap();
    let split = "valid_fraction = 0.3\nsplit_seed = 5";
    let nested = tiny_without_valid(
        &teacher_dir,
        &format!("{split}\nfolds = 3\nnested_folds = true"),
    );
    let student_config = tiny_without_valid(&student_dir, split);
    let (teachers, from) = fold_teachers(&teacher_dir, &nested, &[]);

    let load = |path: &std::path::Path| wick_trainer::config::RunConfig::load(path, &[]).unwrap();
    let fixture = repo_root().join("tests/fixtures/tiny/train.jsonl");
    let rows = wick_data::read_examples(&fixture, &load(&student_config).data)
        .unwrap()
        .examples;
    let (student_train, student_valid) =
        wick_trainer::fit::held_out(&load(&student_config), &rows).unwrap();
    // round(0.3 x 11, 10, 6) = 3 + 3 + 2 rows.
    assert_eq!(student_valid.len(), 8);
    let mut dealt = Vec::new();
    for teacher in &teachers {
        let config = load(&teacher.join("best/config.toml"));
        let (train, valid) = wick_trainer::fit::held_out(&config, &rows).unwrap();
        assert_eq!(train.len() + valid.len(), 19, "{}", teacher.display());
        for i in train.iter().chain(&valid) {
            assert!(
                !student_valid.contains(i),
                "teacher saw the student's row {i}"
            );
        }
        dealt.extend(valid);
    }
    dealt.sort_unstable();
    assert_eq!(
        dealt, student_train,
        "the folds are the student's training rows"
    );

    let out = student_dir.join("run");
    let output = train_config(
        &student_config,
        &out,
        &[
            &from,
            "train.distill_out_of_fold=true",
            "train.distill_temperature=1.0",
            "train.epochs=1",
        ],
    );
    assert_ok(&output, "student of nested teachers");
    let log = text(&output.stderr);
    assert!(!log.contains("validation scores are optimistic"), "{log}");
    assert!(
        log.contains("predicted the 19 training rows out of fold (each by the 1 teacher(s) that"),
        "{log}"
    );
    let texts = training_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let targets = distill_targets(&out);
    assert_eq!(targets.len(), 19);
    for (k, teacher) in teachers.iter().enumerate() {
        let predicted = checkpoint_probs(&teacher.join("best"), &refs);
        let config = load(&teacher.join("best/config.toml"));
        let (_, valid) = wick_trainer::fit::held_out(&config, &rows).unwrap();
        for i in valid {
            let line = rows[i].line;
            let (_, _, target) = targets
                .iter()
                .find(|(l, _, _)| *l == line as u64)
                .unwrap_or_else(|| panic!("no target for line {line}"));
            for (a, b) in target.iter().zip(&predicted[line - 1]) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "line {line}: {target:?} against teacher {k}"
                );
            }
        }
    }

    // A teacher run's summary counts the rows it set aside.
    let again = train_config(&nested, &dir.path().join("again"), &[]);
    assert_ok(&again, "a nested fold run");
    assert!(
        text(&again.stderr).contains("examples   12 (8 set aside by data.nested_folds)"),
        "{}",
        text(&again.stderr)
    );
    let refused = train_tiny(&dir.path().join("r1"), &["data.nested_folds=true"]);
    assert_fails_naming(&refused, &["data.nested_folds", "data.folds is not set"]);
    let refused = train_config(&nested, &dir.path().join("r2"), &["data.valid_fraction=0"]);
    assert_fails_naming(&refused, &["data.nested_folds", "data.valid_fraction is 0"]);
}
