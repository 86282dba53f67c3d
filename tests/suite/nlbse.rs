//! The NLBSE protocol example (`examples/nlbse.rs`) on a small CSV of the competition's schema
//! with the tiny random model: an ensemble of two configs is the mean of the two configs run
//! apart, `--match-priors` scores the probabilities matched to the training rows' label shares,
//! configs that would validate on different rows are refused, and projects run apart score as in
//! a whole run, each distilling from its own out-of-fold teachers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::common::{self, argmax, assert_fails_naming, assert_ok, command, path_str};

const PROJECTS: [&str; 5] = [
    "facebook/react",
    "tensorflow/tensorflow",
    "microsoft/vscode",
    "bitcoin/bitcoin",
    "opencv/opencv",
];

/// The example's binary: `cargo build --examples` (which `make test` runs first) and a plain
/// `cargo test` build it beside the tests; `cargo test --all-targets` builds examples as test
/// harnesses only, so on its own it runs the example as last built (`make test` never does).
fn nlbse_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("nlbse{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build the examples first (`cargo build --examples`, as `make test` \
         does)",
        path.display()
    );
    path
}

fn run_nlbse(args: &[&str]) -> Output {
    command(nlbse_example()).args(args).output().unwrap()
}

/// 6 issues per project and label: the title names the kind of issue in words of its own, the
/// body varies in length.
fn write_issues(path: &Path) {
    let kinds = [
        (
            "bug",
            [
                "crash",
                "panic",
                "regression",
                "broken",
                "segfault",
                "wrong output",
            ],
        ),
        (
            "feature",
            [
                "support",
                "add option",
                "allow",
                "new api",
                "enhancement",
                "proposal",
            ],
        ),
        (
            "question",
            [
                "how do i",
                "why does",
                "is it possible",
                "help",
                "what is",
                "where",
            ],
        ),
    ];
    let mut csv = String::from("repo,created_at,label,title,body\n");
    for (p, project) in PROJECTS.iter().enumerate() {
        for (label, words) in kinds {
            for (i, word) in words.iter().enumerate() {
                let body = "details of the report, ".repeat(1 + (i + p) % 4);
                csv.push_str(&format!(
                    "{project},2023-0{}-1{i}T10:00:00Z,{label},\"{word} in module {p}{i}\",\"{body}\"\"quoted\"\" end\"\n",
                    1 + p
                ));
            }
        }
    }
    std::fs::write(path, csv).unwrap();
}

/// A project's `<file>` rows: line -> (label, probabilities in label order).
fn read_predictions(path: &Path) -> HashMap<u64, (String, Vec<f64>)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let probs = ["bug", "feature", "question"]
                .iter()
                .map(|l| row["probs"][l].as_f64().unwrap())
                .collect();
            (
                row["line"].as_u64().unwrap(),
                (row["label"].as_str().unwrap().to_string(), probs),
            )
        })
        .collect()
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Macro-F1 over bug/feature/question of the rows' most probable labels.
fn macro_f1(rows: &HashMap<u64, (String, Vec<f64>)>) -> f64 {
    let labels = ["bug", "feature", "question"];
    let pairs: Vec<(usize, usize)> = rows
        .values()
        .map(|(label, p)| (labels.iter().position(|l| l == label).unwrap(), argmax(p)))
        .collect();
    common::macro_f1(&pairs, labels.len())
}

/// Sinkhorn's scaling: columns to `shares` (of the row count), rows to 1, in turn.
fn sinkhorn(probs: &[Vec<f64>], shares: &[f64]) -> Vec<Vec<f64>> {
    let total: f64 = shares.iter().sum();
    let n = probs.len() as f64;
    let mut q: Vec<Vec<f64>> = probs
        .iter()
        .map(|r| r.iter().map(|p| p.max(1e-12)).collect())
        .collect();
    for _ in 0..5000 {
        for c in 0..shares.len() {
            let column: f64 = q.iter().map(|r| r[c]).sum();
            for r in q.iter_mut() {
                r[c] *= n * shares[c] / total / column;
            }
        }
        for r in q.iter_mut() {
            let sum: f64 = r.iter().sum();
            r.iter_mut().for_each(|p| *p /= sum);
        }
    }
    q
}

/// `full.toml` in `dir`: the tiny random model on `issues`, facebook/react's rows, a quarter of
/// them for validation, two epochs.
fn write_config(dir: &Path, issues: &Path) -> PathBuf {
    let path = dir.join("full.toml");
    std::fs::write(
        &path,
        format!(
            r#"[data]
train = "{}"
text_fields = ["title", "body"]
label_field = "label"
labels = ["bug", "feature", "question"]
filter = {{ column = "repo", equals = "facebook/react" }}
valid_fraction = 0.25
max_len = 32

[model]
id = "sentence-transformers/all-MiniLM-L6-v2"
init = "random"
layers = 2
hidden_size = 32
heads = 4
intermediate_size = 64

[train]
epochs = 2
batch_size = 4
lr = 1e-3
seed = 7
log_every = 2
"#,
            path_str(issues)
        ),
    )
    .unwrap();
    path
}

#[test]
fn an_ensemble_of_two_configs_is_the_mean_of_the_two_run_apart() {
    let dir = tempfile::tempdir().unwrap();
    let issues = dir.path().join("issues.csv");
    write_issues(&issues);
    let base = write_config(dir.path(), &issues);
    // The variant states only its changes: LoRA on a frozen encoder, another rate.
    let lora = dir.path().join("lora.toml");
    std::fs::write(
        &lora,
        "extends = \"full.toml\"\n[model.lora]\nrank = 2\n[train]\nlr = 5e-3\n",
    )
    .unwrap();
    let out = |name: &str| dir.path().join(name);
    let run = |configs: &[&Path], name: &str, extra: &[&str]| {
        let mut args = vec!["--device", "cpu", "--ensemble", "2", "--json"];
        let dest = out(name);
        args.extend(["--out", path_str(&dest)]);
        for c in configs {
            args.extend(["--config", path_str(c)]);
        }
        args.extend(extra);
        let output = run_nlbse(&args);
        assert_ok(&output, name);
        output
    };
    run(&[&base], "full", &[]);
    run(&[&lora], "lora", &[]);
    let both = run(
        &[&base, &lora],
        "both",
        &["--test", path_str(&issues), "--match-priors"],
    );
    let stdout = String::from_utf8_lossy(&both.stdout);
    assert!(
        stdout.contains("full.toml alone (2 members)") && stdout.contains("lora.toml alone"),
        "{stdout}"
    );
    assert!(
        stdout.contains("<- without matching the label priors"),
        "{stdout}"
    );

    let (full, lora_run, mixed) = (
        json_of(&out("full/nlbse.json")),
        json_of(&out("lora/nlbse.json")),
        json_of(&out("both/nlbse.json")),
    );
    // Each config's members score together, inside the mixed run, what they score run alone.
    for (run, key) in [(&full, base.display()), (&lora_run, lora.display())] {
        let alone = run["valid"]["overall_f1"].as_f64().unwrap();
        let inside = mixed["config_valid"][key.to_string()]["overall_f1"]
            .as_f64()
            .unwrap();
        assert!((alone - inside).abs() < 1e-9, "{key}: {alone} vs {inside}");
    }
    assert_eq!(
        mixed["member_valid_f1"]["facebook/react"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    for project in PROJECTS {
        let slug = project.replace('/', "__");
        let file =
            |run: &str| read_predictions(&out(run).join(&slug).join("valid_predictions.jsonl"));
        let (a, b, ab) = (file("full"), file("lora"), file("both"));
        assert!(ab.len() >= 3, "{project}: {} validation rows", ab.len());
        assert_eq!(ab.len(), a.len());
        for (line, (label, probs)) in &ab {
            let (label_a, pa) = &a[line];
            let (_, pb) = &b[line];
            assert_eq!(label, label_a);
            for k in 0..3 {
                let mean = (pa[k] + pb[k]) / 2.0;
                assert!(
                    (probs[k] - mean).abs() < 1e-6,
                    "{project} line {line}: {probs:?} is not the mean of {pa:?} and {pb:?}"
                );
            }
        }
        // Members live under their config's name; the test rows are all the project's.
        for member in ["full-seed-7", "full-seed-8", "lora-seed-7", "lora-seed-8"] {
            assert!(out("both").join(&slug).join(member).join("best").is_dir());
        }
        let test = read_predictions(&out("both").join(&slug).join("test_predictions.jsonl"));
        assert_eq!(test.len(), 18, "{project}");
    }
    assert!(mixed["test"]["overall_f1"].as_f64().is_some());

    // --match-priors: each split is scored on the probabilities moved to the label shares of the
    // project's training rows, checked here by Sinkhorn's alternating scaling of the written
    // (unmatched) probabilities; the unmatched scores are kept beside them.
    for (split, file) in [
        ("valid", "valid_predictions.jsonl"),
        ("test", "test_predictions.jsonl"),
    ] {
        let mut changed = false;
        for project in PROJECTS {
            let slug = project.replace('/', "__");
            let valid = read_predictions(&out("both").join(&slug).join("valid_predictions.jsonl"));
            // 6 rows per label per project; the training rows are those not validated on.
            let shares: Vec<f64> = ["bug", "feature", "question"]
                .iter()
                .map(|l| 6.0 - valid.values().filter(|(label, _)| label == l).count() as f64)
                .collect();
            let rows = read_predictions(&out("both").join(&slug).join(file));
            let plain = macro_f1(&rows);
            let probs: Vec<Vec<f64>> = rows.values().map(|(_, p)| p.clone()).collect();
            let moved: HashMap<u64, (String, Vec<f64>)> = rows
                .iter()
                .zip(sinkhorn(&probs, &shares))
                .map(|((&line, (label, _)), p)| (line, (label.clone(), p)))
                .collect();
            let matched = macro_f1(&moved);
            let reported = |v: &serde_json::Value| v.as_f64().unwrap();
            let unmatched = reported(&mixed["unmatched"][split]["projects"][project]);
            assert!(
                (unmatched - plain).abs() < 1e-9,
                "{project} {split}: {unmatched} vs {plain}"
            );
            let scored = reported(&mixed[split]["projects"][project]["macro_f1"]);
            assert!(
                (scored - matched).abs() < 1e-9,
                "{project} {split}: {scored} vs {matched}"
            );
            changed |= (matched - plain).abs() > 1e-9;
        }
        assert!(
            changed,
            "{split}: matching the priors changed no project's score"
        );
    }

    // A config that validates on other rows cannot join, and two configs need two names.
    let other_split = dir.path().join("other.toml");
    std::fs::write(
        &other_split,
        "extends = \"full.toml\"\n[data]\nsplit_seed = 99\n",
    )
    .unwrap();
    let refused = run_nlbse(&[
        "--device",
        "cpu",
        "--out",
        path_str(&out("refused")),
        "--config",
        path_str(&base),
        "--config",
        path_str(&other_split),
    ]);
    assert_fails_naming(
        &refused,
        &["other.toml", "validates on other rows", "split_seed"],
    );
    assert!(
        !out("refused").join("facebook__react").exists(),
        "members were trained before the configs were compared"
    );
    std::fs::create_dir(dir.path().join("again")).unwrap();
    let twin = dir.path().join("again/full.toml");
    std::fs::write(&twin, "extends = \"../full.toml\"\n").unwrap();
    let refused = run_nlbse(&["--config", path_str(&base), "--config", path_str(&twin)]);
    assert_fails_naming(&refused, &["two configs are named full"]);
}

#[test]
fn projects_run_apart_and_each_distils_from_its_own_out_of_fold_teachers() {
    let dir = tempfile::tempdir().unwrap();
    let issues = dir.path().join("issues.csv");
    write_issues(&issues);
    let config = write_config(dir.path(), &issues);
    let out = |name: &str| dir.path().join(name);
    let run = |name: &str, extra: &[&str]| {
        let dest = out(name);
        let mut args = vec!["--device", "cpu", "--json", "--config", path_str(&config)];
        args.extend(["--out", path_str(&dest)]);
        args.extend(extra);
        let output = run_nlbse(&args);
        assert_ok(&output, name);
        output
    };
    // Three cross-validation teachers per project, once for all five and once for two projects
    // (named out of the protocol's order).
    run("all", &["--folds", "3"]);
    let two = run(
        "two",
        &[
            "--folds",
            "3",
            "--project",
            "bitcoin/bitcoin",
            "--project",
            "facebook/react",
        ],
    );
    let stdout = String::from_utf8_lossy(&two.stdout);
    assert!(
        stdout.contains("mean macro-F1 of the 2 projects run, not the protocol score"),
        "{stdout}"
    );
    let summary = json_of(&out("two/nlbse.json"));
    assert_eq!(
        summary["projects"],
        serde_json::json!(["facebook/react", "bitcoin/bitcoin"])
    );
    let mut f1s = Vec::new();
    for project in PROJECTS {
        let slug = project.replace('/', "__");
        let ran = ["facebook/react", "bitcoin/bitcoin"].contains(&project);
        assert_eq!(out("two").join(&slug).exists(), ran, "{project}");
        if ran {
            let file = "valid_predictions.jsonl";
            let apart = read_predictions(&out("two").join(&slug).join(file));
            assert_eq!(
                apart,
                read_predictions(&out("all").join(&slug).join(file)),
                "{project}: run apart, its out-of-fold predictions differ from the whole run's"
            );
            assert_eq!(
                apart.len(),
                18,
                "{project}: every row validates one teacher"
            );
            f1s.push(
                summary["valid"]["projects"][project]["macro_f1"]
                    .as_f64()
                    .unwrap(),
            );
        }
    }
    let mean = summary["valid"]["overall_f1"].as_f64().unwrap();
    assert!(
        (mean - (f1s[0] + f1s[1]) / 2.0).abs() < 1e-12,
        "{mean} vs {f1s:?}"
    );

    // A student of one project distils from that project's teachers ({project} in --set), each
    // training row from the teacher that held it out: at temperature 1 its targets are the
    // teachers' out-of-fold predictions of those rows.
    let teachers: Vec<String> = (7..10)
        .map(|seed| format!("'{}/{{project}}/seed-{seed}'", path_str(&out("all"))))
        .collect();
    let from = format!("train.distill_from=[{}]", teachers.join(", "));
    let student = |name: &str, from: &str| {
        let output = run(
            name,
            &[
                "--project",
                "bitcoin/bitcoin",
                "--set",
                from,
                "--set",
                "train.distill_out_of_fold=true",
                "--set",
                "train.distill_temperature=1",
            ],
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let log = student("student", &from);
    // These teachers trained on the student's validation rows.
    assert!(log.contains("validation scores are optimistic"), "{log}");
    let targets = read_predictions(
        &out("student")
            .join("bitcoin__bitcoin")
            .join("distill_targets.jsonl"),
    );
    let oof = read_predictions(&out("all/bitcoin__bitcoin/valid_predictions.jsonl"));
    let student_valid = read_predictions(&out("student/bitcoin__bitcoin/valid_predictions.jsonl"));
    assert_eq!(targets.len() + student_valid.len(), 18);
    let assert_targets_are = |targets: &HashMap<u64, (String, Vec<f64>)>,
                              oof: &HashMap<u64, (String, Vec<f64>)>| {
        for (line, (label, probs)) in targets {
            let (teacher_label, teacher) = &oof[line];
            assert_eq!(label, teacher_label, "line {line}");
            for (p, q) in probs.iter().zip(teacher) {
                assert!(
                    (p - q).abs() < 1e-5,
                    "line {line}: {probs:?} vs {teacher:?}"
                );
            }
        }
    };
    assert_targets_are(&targets, &oof);

    // Teachers dealt inside the student's held-out split (data.nested_folds): their out-of-fold
    // predictions cover exactly the student's training rows, and no teacher saw its validation
    // rows, so the student is not warned.
    run(
        "nested",
        &[
            "--folds",
            "3",
            "--project",
            "bitcoin/bitcoin",
            "--set",
            "data.nested_folds=true",
        ],
    );
    let nested_oof = read_predictions(&out("nested/bitcoin__bitcoin/valid_predictions.jsonl"));
    let sorted = |rows: &HashMap<u64, (String, Vec<f64>)>| {
        let mut lines: Vec<u64> = rows.keys().copied().collect();
        lines.sort_unstable();
        lines
    };
    assert_eq!(sorted(&nested_oof), sorted(&targets));
    let nested_from = from.replace(path_str(&out("all")), path_str(&out("nested")));
    let log = student("clean-student", &nested_from);
    assert!(!log.contains("validation scores are optimistic"), "{log}");
    let clean_targets = read_predictions(
        &out("clean-student")
            .join("bitcoin__bitcoin")
            .join("distill_targets.jsonl"),
    );
    assert_eq!(sorted(&clean_targets), sorted(&targets));
    assert_targets_are(&clean_targets, &nested_oof);

    for (args, needles) in [
        (
            &["--project", "facebook/reakt"][..],
            &[
                "--project facebook/reakt",
                "not a project",
                "bitcoin/bitcoin",
            ][..],
        ),
        (
            &["--project", "opencv/opencv", "--project", "opencv/opencv"],
            &["--project opencv/opencv is given twice"],
        ),
    ] {
        assert_fails_naming(&run_nlbse(args), needles);
    }
}
