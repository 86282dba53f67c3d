//! Issue-tracker exports as they come: a JSON array of issues (`gh issue list --json
//! number,title,body,labels`), labels as objects with a `name`, and labels outside
//! `data.labels` skipped with `data.other_labels = "ignore"`.

use std::path::Path;

use tempfile::TempDir;
use wick_data::{read_examples, DataConfig, Error, Location, OtherLabels, Target};

use crate::common::{config, read_error, write, TestResult};

/// Three issues as `gh issue list --json number,title,body,labels` prints them (pretty, two
/// spaces), with GitHub's label objects, one label outside bug/feature/question, and one issue
/// without any label.
const GH_EXPORT: &str = r#"[
  {
    "body": "Steps:\n1. open the app\n2. it crashes",
    "labels": [
      {"id": "LA_1", "name": "bug", "description": "Something isn't working", "color": "d73a4a"},
      {"id": "LA_2", "name": "needs-triage", "description": "", "color": "ededed"}
    ],
    "number": 12,
    "title": "Crash on start"
  },
  {
    "body": "",
    "labels": [],
    "number": 11,
    "title": "How do I configure the proxy?"
  },
  {
    "body": "It would help to have a dark theme.",
    "labels": [{"id": "LA_3", "name": "feature", "description": "", "color": "a2eeef"}],
    "number": 10,
    "title": "Dark theme"
  }
]
"#;

fn gh_config(path: &Path) -> DataConfig {
    let mut cfg = config(path);
    cfg.text_fields = vec!["title".into(), "body".into()];
    cfg.label_field = "labels".into();
    cfg.other_labels = OtherLabels::Ignore;
    cfg
}

#[test]
fn a_json_array_reads_its_objects_numbered_by_the_line_each_starts_on() -> TestResult {
    let dir = TempDir::new()?;
    let array = write(
        &dir,
        "issues.json",
        "[\n  {\"text\": \"a\", \"label\": \"bug\"},\n\n  {\"text\": \"b\",\n   \"label\": \"feature\"},\n  {\"text\": \"c\", \"label\": \"question\"}\n]\n",
    );
    let examples = read_examples(&array, &config(&array))?.examples;
    let got: Vec<(usize, &str, &Target)> = examples
        .iter()
        .map(|e| (e.line, e.text.as_str(), &e.target))
        .collect();
    assert_eq!(
        got,
        [
            (2, "a", &Target::Single(0)),
            (4, "b", &Target::Single(1)),
            (6, "c", &Target::Single(2))
        ]
    );
    // A bad object is named by its line; so is malformed JSON.
    let bad = write(
        &dir,
        "bad.json",
        "[\n  {\"text\": \"a\", \"label\": \"bug\"},\n  {\"text\": \"b\", \"label\": \"docs\"}\n]",
    );
    let err = read_error(&bad, &config(&bad))?;
    assert!(
        matches!(&err, Error::UnknownLabel { at, .. } if *at == Location::line(&bad, 3)),
        "{err:?}"
    );
    let broken = write(
        &dir,
        "broken.json",
        "[\n  {\"text\": \"a\"},\n  {\"text\": }\n]",
    );
    let err = read_error(&broken, &config(&broken))?;
    assert!(
        matches!(&err, Error::Json { at, .. } if at.number == 3),
        "{err:?}"
    );
    let numbers = write(&dir, "numbers.json", "[1, 2]");
    let err = read_error(&numbers, &config(&numbers))?;
    assert!(err.to_string().contains("found a number"), "{err}");
    Ok(())
}

#[test]
fn a_gh_export_trains_on_the_labels_it_knows() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "issues.json", GH_EXPORT);
    let outcome = read_examples(&path, &gh_config(&path))?;
    let got: Vec<(usize, &Target)> = outcome
        .examples
        .iter()
        .map(|e| (e.line, &e.target))
        .collect();
    // needs-triage is skipped; the unlabelled issue is left out and counted.
    assert_eq!(got, [(2, &Target::Single(0)), (17, &Target::Single(1))]);
    assert_eq!(outcome.without_label, 1);
    assert_eq!(
        outcome.examples[0].text,
        "Crash on start\n\nSteps:\n1. open the app\n2. it crashes"
    );

    // Multi-label: the known labels, nothing for the rest; no row is left out.
    let mut multi = gh_config(&path);
    multi.multi_label = true;
    let outcome = read_examples(&path, &multi)?;
    let targets: Vec<&Target> = outcome.examples.iter().map(|e| &e.target).collect();
    assert_eq!(
        targets,
        [
            &Target::Multi(vec![1.0, 0.0, 0.0]),
            &Target::Multi(vec![0.0, 0.0, 0.0]),
            &Target::Multi(vec![0.0, 1.0, 0.0])
        ]
    );
    assert_eq!(outcome.without_label, 0);
    Ok(())
}

#[test]
fn other_labels_are_errors_unless_ignored() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "issues.json", GH_EXPORT);
    // The default: a list is refused for single-label, naming the way out.
    let mut strict = gh_config(&path);
    strict.other_labels = OtherLabels::Error;
    let err = read_error(&path, &strict)?;
    assert!(
        err.to_string().contains("data.other_labels = \"ignore\""),
        "{err}"
    );
    // Multi-label, strict: the first label outside data.labels is named.
    strict.multi_label = true;
    let err = read_error(&path, &strict)?;
    assert!(
        matches!(
            &err,
            Error::UnknownLabel { label, at, .. } if label == "needs-triage" && at.number == 2
        ),
        "{err:?}"
    );

    // Two known labels on a single-label row: refused, naming both.
    let two = write(
        &dir,
        "two.json",
        r#"[{"title": "x", "body": "", "labels": [{"name": "bug"}, {"name": "question"}]}]"#,
    );
    let err = read_error(&two, &gh_config(&two))?;
    assert!(
        err.to_string()
            .contains("holds 2 of data.labels (bug, question)"),
        "{err}"
    );

    // Nothing left at all (another label, a list of others, an empty label, null): said so,
    // with the count.
    let none = write(
        &dir,
        "none.jsonl",
        "{\"title\": \"x\", \"body\": \"\", \"labels\": \"wontfix\"}\n\
         {\"title\": \"y\", \"body\": \"\", \"labels\": [\"duplicate\"]}\n\
         {\"title\": \"z\", \"body\": \"\", \"labels\": \"\"}\n\
         {\"title\": \"w\", \"body\": \"\", \"labels\": null}\n",
    );
    let err = read_error(&none, &gh_config(&none))?;
    assert!(
        matches!(&err, Error::NoKnownLabel { rows: 4, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("none of its 4 rows holds one of data.labels"),
        "{err}"
    );
    Ok(())
}

/// Two issues as Jira's search API returns them (`/rest/api/2/search`): the records under
/// `issues`, every field nested under `fields`, an unset description as null.
const JIRA_EXPORT: &str = r#"{
  "expand": "schema,names",
  "startAt": 0,
  "maxResults": 50,
  "total": 2,
  "issues": [
    {
      "id": "10002",
      "key": "APP-2",
      "fields": {
        "summary": "Export button does nothing",
        "description": "Clicking *Export* logs a TypeError.",
        "issuetype": {"name": "Bug", "subtask": false},
        "project": {"key": "APP"},
        "labels": ["frontend"],
        "parent": null
      }
    },
    {
      "id": "10001",
      "key": "OPS-1",
      "fields": {
        "summary": "Add a CSV export",
        "description": null,
        "issuetype": {"name": "Story", "subtask": false},
        "project": {"key": "OPS"},
        "labels": [],
        "parent": null
      }
    }
  ]
}
"#;

fn jira_config(path: &Path) -> DataConfig {
    let mut cfg = config(path);
    cfg.json_field = Some("issues".into());
    cfg.text_fields = vec!["fields.summary".into(), "fields.description".into()];
    cfg.label_field = "fields.issuetype.name".into();
    cfg.labels = vec!["Bug".into(), "Story".into()];
    cfg
}

#[test]
fn a_jira_export_reads_its_records_and_nested_fields() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "jira.json", JIRA_EXPORT);
    let examples = read_examples(&path, &jira_config(&path))?.examples;
    let got: Vec<(usize, &str, &Target)> = examples
        .iter()
        .map(|e| (e.line, e.text.as_str(), &e.target))
        .collect();
    assert_eq!(
        got,
        [
            (
                7,
                "Export button does nothing\n\nClicking *Export* logs a TypeError.",
                &Target::Single(0)
            ),
            // The null description adds nothing.
            (19, "Add a CSV export", &Target::Single(1)),
        ]
    );
    // A dotted filter column, and a null object on the way read as null.
    let mut cfg = jira_config(&path);
    cfg.filter = Some(wick_data::Filter {
        column: "fields.project.key".into(),
        equals: "OPS".into(),
    });
    let outcome = read_examples(&path, &cfg)?;
    assert_eq!((outcome.examples.len(), outcome.filtered_out), (1, 1));
    cfg.filter = None;
    cfg.text_fields = vec!["fields.summary".into(), "fields.parent.summary".into()];
    let examples = read_examples(&path, &cfg)?.examples;
    assert_eq!(examples[0].text, "Export button does nothing");
    // A key holding a dot is found as it is first.
    let literal = write(
        &dir,
        "dotted.jsonl",
        "{\"a.b\": \"literal\", \"a\": {\"b\": \"nested\"}, \"label\": \"bug\"}\n",
    );
    let mut cfg = config(&literal);
    cfg.text_fields = vec!["a.b".into()];
    assert_eq!(read_examples(&literal, &cfg)?.examples[0].text, "literal");
    Ok(())
}

#[test]
fn bad_records_keys_and_nested_fields_are_named() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "jira.json", JIRA_EXPORT);
    let config_error =
        |path: &Path, cfg: &DataConfig| -> Result<(String, String), crate::common::BoxError> {
            match read_error(path, cfg)? {
                Error::Config { key, reason } => Ok((key, reason)),
                other => Err(format!("expected a config error, got {other}").into()),
            }
        };
    let mut cfg = jira_config(&path);
    cfg.json_field = Some("results".into());
    let (key, reason) = config_error(&path, &cfg)?;
    assert_eq!(key, "data.json_field");
    assert!(
        reason
            .contains("no key \"results\" (its keys: expand, issues, maxResults, startAt, total)"),
        "{reason}"
    );
    cfg.json_field = Some("total".into());
    let (_, reason) = config_error(&path, &cfg)?;
    assert!(
        reason.contains("\"total\" holds a number, not a list of records"),
        "{reason}"
    );
    // An array, JSON Lines and a CSV file have no records key.
    let files: [(&str, &str, &[&str]); 3] = [
        (
            "array.json",
            "[{\"text\": \"a\", \"label\": \"bug\"}]\n",
            &["holds a list, not one JSON object"],
        ),
        (
            "lines.jsonl",
            "{\"text\": \"a\", \"label\": \"bug\"}\n{\"text\": \"b\", \"label\": \"bug\"}\n",
            &["must hold one JSON object", "lines.jsonl:2)"],
        ),
        (
            "issues.csv",
            "text,label\na,bug\n",
            &["issues.csv is read as csv"],
        ),
    ];
    for (name, contents, needles) in files {
        let file = write(&dir, name, contents);
        let (key, reason) = config_error(&file, &jira_config(&file))?;
        assert_eq!(key, "data.json_field");
        for needle in needles {
            assert!(reason.contains(needle), "{name}: {reason}");
        }
    }

    // Without data.json_field the object is not JSON Lines: the error says what to set.
    let mut cfg = jira_config(&path);
    cfg.json_field = None;
    let error = read_error(&path, &cfg)?.to_string();
    assert!(
        error.contains(
            "jira.json:1: the file holds one JSON object, not one per line: set \
             data.json_field to the key that lists the records (its keys holding lists: issues)"
        ),
        "{error}"
    );

    // A nested field that is missing lists the keys beside it; one through a string is refused.
    let mut cfg = jira_config(&path);
    cfg.text_fields = vec!["fields.title".into()];
    match read_error(&path, &cfg)? {
        Error::MissingField { at, field, present } => {
            assert_eq!(at, Location::line(&path, 7));
            assert_eq!(field, "fields.title");
            assert!(
                present.contains(&"fields.summary".to_string()),
                "{present:?}"
            );
        }
        other => return Err(format!("expected a missing field, got {other}").into()),
    }
    cfg.text_fields = vec!["fields.summary.text".into()];
    let error = read_error(&path, &cfg)?.to_string();
    assert!(
        error.contains("`fields.summary` holds a string, not an object to look into"),
        "{error}"
    );
    Ok(())
}
