//! `data.augment`: variants of the training rows (back-translations, paraphrases) join the
//! training set beside the rows they vary; those of the rows a run validates on never do.

use std::path::Path;

use super::common::{
    assert_fails_naming, assert_ok, path_str, repo_root, saved_step, text, tiny_without_valid,
    train_config, TINY,
};

/// Writes a variant of every row of the tiny training file (its text with " again" appended,
/// its label unless `relabel` names a line to give another one) and returns the path.
fn variants(dir: &Path, name: &str, relabel: Option<usize>, drop_last: bool) -> std::path::PathBuf {
    let source =
        std::fs::read_to_string(repo_root().join("tests/fixtures/tiny/train.jsonl")).unwrap();
    let mut lines: Vec<String> = source
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            let again = format!("{} again", row["text"].as_str().unwrap());
            row["text"] = again.into();
            if relabel == Some(i + 1) {
                let other = if row["label"] == "needs_docs" {
                    "needs_test"
                } else {
                    "needs_docs"
                };
                row["label"] = other.into();
            }
            row.to_string()
        })
        .collect();
    if drop_last {
        lines.pop();
    }
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The label lines of a run's data summary, e.g. `needs_docs  12  31.6%`, by label.
fn label_counts(log: &str) -> Vec<(String, usize)> {
    log.lines()
        .skip_while(|l| !l.starts_with("examples   "))
        .skip(1)
        .take(3)
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words[0].to_string(), words[1].parse().unwrap())
        })
        .collect()
}

#[test]
fn variants_of_the_rows_trained_on_join_the_training_set_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_without_valid(dir.path(), "valid_fraction = 0.3\nsplit_seed = 5");
    let load = wick_trainer::config::RunConfig::load(&config, &[]).unwrap();
    let rows = wick_data::read_examples(
        &repo_root().join("tests/fixtures/tiny/train.jsonl"),
        &load.data,
    )
    .unwrap()
    .examples;
    let (train, valid) = wick_trainer::fit::held_out(&load, &rows).unwrap();
    assert_eq!((train.len(), valid.len()), (19, 8));
    let per_label = |indices: &[usize], times: usize| -> Vec<(String, usize)> {
        load.data
            .labels
            .iter()
            .enumerate()
            .map(|(id, label)| {
                let n = indices
                    .iter()
                    .filter(|&&i| rows[i].target == wick_data::Target::Single(id as u32))
                    .count();
                (label.clone(), n * times)
            })
            .collect()
    };
    let one = variants(dir.path(), "again.jsonl", None, false);
    let augment = format!("data.augment=['{}']", path_str(&one));

    // Without: 19 rows, 3 steps an epoch at batch 8. With: 19 + their 19 variants, 5 steps.
    let plain = train_config(&config, &dir.path().join("plain"), &["train.epochs=1"]);
    assert_ok(&plain, "a run without variants");
    assert_eq!(saved_step(&dir.path().join("plain/last")), 3);
    let out = dir.path().join("with");
    let with = train_config(&config, &out, &[&augment, "train.epochs=1"]);
    assert_ok(&with, "a run with variants");
    let log = text(&with.stderr);
    assert!(
        log.contains("examples   38 (19 of them variants from data.augment)"),
        "{log}"
    );
    assert_eq!(label_counts(&log), per_label(&train, 2), "{log}");
    assert_eq!(saved_step(&out.join("last")), 5);

    // Two files of variants: each adds the training rows' variants once more.
    let two = format!("data.augment=['{}', '{}']", path_str(&one), path_str(&one));
    let twice = train_config(&config, &dir.path().join("two"), &[&two, "train.epochs=1"]);
    assert_ok(&twice, "a run with two files of variants");
    assert!(
        text(&twice.stderr).contains("examples   57 (38 of them variants from data.augment)"),
        "{}",
        text(&twice.stderr)
    );

    // With a validation file nothing is held out of the training file: every row's variant joins.
    let whole = train_config(
        Path::new(TINY),
        &dir.path().join("whole"),
        &[&augment, "train.epochs=1"],
    );
    assert_ok(&whole, "a run with a validation file and variants");
    let log = text(&whole.stderr);
    assert!(
        log.contains("examples   54 (27 of them variants from data.augment)"),
        "{log}"
    );
    let every: Vec<usize> = (0..rows.len()).collect();
    assert_eq!(label_counts(&log), per_label(&every, 2), "{log}");
}

#[test]
fn variants_out_of_step_with_the_training_file_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let train = "tests/fixtures/tiny/train.jsonl";
    let run = |name: &str, set: &str| {
        train_config(
            Path::new(TINY),
            &dir.path().join(name),
            &[set, "train.epochs=1"],
        )
    };

    let short = variants(dir.path(), "short.jsonl", None, true);
    let refused = run("short", &format!("data.augment=['{}']", path_str(&short)));
    assert_fails_naming(
        &refused,
        &[
            "data.augment",
            &format!("{} keeps 26 rows but {train} keeps 27", path_str(&short)),
            &format!("none for {train}:27 and after"),
        ],
    );

    let relabelled = variants(dir.path(), "relabelled.jsonl", Some(4), false);
    let refused = run(
        "relabelled",
        &format!("data.augment=['{}']", path_str(&relabelled)),
    );
    assert_fails_naming(
        &refused,
        &[
            &format!(
                "{}:4: data.augment: a variant of {train}:4",
                path_str(&relabelled)
            ),
            "but labelled",
        ],
    );

    let missing = dir.path().join("missing.jsonl");
    let refused = run(
        "missing",
        &format!("data.augment=['{}']", path_str(&missing)),
    );
    assert_fails_naming(&refused, &[&format!("cannot read {}", path_str(&missing))]);

    let one = variants(dir.path(), "again.jsonl", None, false);
    let refused = train_config(
        Path::new(TINY),
        &dir.path().join("distilled"),
        &[
            &format!("data.augment=['{}']", path_str(&one)),
            "train.distill_from=['runs/none']",
        ],
    );
    assert_fails_naming(
        &refused,
        &["train.distill_from", "is not taken with data.augment"],
    );
}
