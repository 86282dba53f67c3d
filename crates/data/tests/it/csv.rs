use serde_json::Value;
use tempfile::TempDir;
use wick_data::{read_examples, read_variants, Error, Filter, Location, Target};

use crate::common::{config, read_error, write, TestResult};

fn field<'a>(example: &'a wick_data::Example, name: &str) -> Option<&'a str> {
    example.fields.get(name).and_then(Value::as_str)
}

#[test]
fn quoted_newlines_doubled_quotes_and_crlf_parse_to_the_right_fields() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.csv",
        concat!(
            "title,body,label\r\n",
            "\"Crash, on open\",\"line one\r\nline \"\"two\"\"\nline three\",bug\r\n",
            "plain,,feature\r\n",
            "\"\"\"quoted\"\"\",\"\",question",
        ),
    );
    let mut cfg = config(&path);
    cfg.text_fields = vec!["title".into(), "body".into()];
    let examples = read_examples(&path, &cfg)?.examples;
    assert_eq!(examples.len(), 3);
    assert_eq!(field(&examples[0], "title"), Some("Crash, on open"));
    assert_eq!(
        field(&examples[0], "body"),
        Some("line one\r\nline \"two\"\nline three")
    );
    assert_eq!(field(&examples[1], "body"), Some(""));
    assert_eq!(field(&examples[2], "title"), Some("\"quoted\""));
    assert_eq!(
        examples[1].text, "plain",
        "empty body is skipped, no trailing separator"
    );
    let lines: Vec<usize> = examples.iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        [2, 5, 6],
        "line numbers are where each record starts"
    );
    let targets: Vec<&Target> = examples.iter().map(|e| &e.target).collect();
    assert_eq!(
        targets,
        [&Target::Single(0), &Target::Single(1), &Target::Single(2)]
    );
    Ok(())
}

#[test]
fn header_bom_is_ignored() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.csv", "\u{feff}text,label\nhello,bug\n");
    let examples = read_examples(&path, &config(&path))?.examples;
    assert_eq!(examples[0].text, "hello");
    Ok(())
}

#[test]
fn field_over_128_kib_is_read_whole() -> TestResult {
    let dir = TempDir::new()?;
    let big = "word \"\"x\"\"\n".repeat(20_000);
    let path = write(
        &dir,
        "d.csv",
        format!("text,label\n\"{big}\",bug\nsmall,bug\n"),
    );
    let examples = read_examples(&path, &config(&path))?.examples;
    assert_eq!(examples[0].text.len(), big.len() - 2 * 20_000);
    assert!(examples[0].text.len() > 128 * 1024);
    assert_eq!(examples[1].line, 3 + 20_000);
    Ok(())
}

#[test]
fn wrong_field_count_names_file_and_line() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.csv", "text,label\n\"a\nb\",bug\nc,bug,extra\n");
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(
            &err,
            Error::FieldCount {
                at,
                expected: 2,
                found: 3,
            } if *at == Location::line(&path, 4)
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("{}:4", path.display())),
        "{err}"
    );
    Ok(())
}

#[test]
fn unterminated_quote_names_the_line_where_the_record_began() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(
        &dir,
        "d.csv",
        "text,label\nok,bug\n\"never closed,bug\nmore\nlines\n",
    );
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::UnterminatedQuote { at, .. } if at.number == 3),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn header_only_or_empty_file_has_no_examples() -> TestResult {
    let dir = TempDir::new()?;
    for (name, contents) in [
        ("empty.csv", ""),
        ("header.csv", "text,label\r\n"),
        ("blank.csv", "\n\n"),
    ] {
        let path = write(&dir, name, contents);
        let err = read_error(&path, &config(&path))?;
        assert!(matches!(err, Error::Empty { .. }), "{name}: {err:?}");
        assert!(err.to_string().starts_with("no examples in"), "{err}");
    }
    Ok(())
}

#[test]
fn invalid_utf8_inside_a_quoted_field_names_its_physical_line() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.csv", b"text,label\n\"a\nb\xc3\x28\",bug\n");
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::InvalidUtf8 { at } if at.number == 3),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn multi_label_csv_splits_on_commas() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.csv", "text,label\na,\"bug, question\"\nb,\n");
    let mut cfg = config(&path);
    cfg.multi_label = true;
    let examples = read_examples(&path, &cfg)?.examples;
    assert_eq!(examples[0].target, Target::Multi(vec![1.0, 0.0, 1.0]));
    assert_eq!(examples[1].target, Target::Multi(vec![0.0, 0.0, 0.0]));
    Ok(())
}

#[test]
fn duplicate_header_column_is_an_error() -> TestResult {
    let dir = TempDir::new()?;
    let path = write(&dir, "d.csv", "text,text,label\na,b,bug\n");
    let err = read_error(&path, &config(&path))?;
    assert!(
        matches!(&err, Error::BadRow { at, .. } if at.number == 1),
        "{err:?}"
    );
    Ok(())
}

/// `data.augment`'s files pair row for row with the training file's kept rows (`data.filter`
/// applied to both); another count, or a variant labelled otherwise, names the rows in both.
#[test]
fn variants_pair_with_the_kept_rows_and_out_of_step_ones_are_named() -> TestResult {
    let dir = TempDir::new()?;
    let header = "repo,label,title,body\n";
    let train = write(
        &dir,
        "train.csv",
        format!(
            "{header}a,bug,crash,\"two\nlines\"\nb,feature,add,x\na,question,how,y\na,bug,fails,z\n"
        ),
    );
    let mut cfg = config(&train);
    cfg.text_fields = vec!["title".into(), "body".into()];
    cfg.filter = Some(Filter {
        column: "repo".into(),
        equals: "a".into(),
    });
    let originals = read_examples(&train, &cfg)?.examples;
    assert_eq!(originals.len(), 3);

    let good = write(
        &dir,
        "good.csv",
        format!("{header}a,bug,a crash,\"2\nlines\"\nb,feature,adds,x\na,question,how?,y\na,bug,it fails,z\n"),
    );
    let variants = read_variants(&good, &cfg, &train, &originals)?;
    let texts: Vec<&str> = variants.iter().map(|v| v.text.as_str()).collect();
    assert_eq!(texts, ["a crash\n\n2\nlines", "how?\n\ny", "it fails\n\nz"]);
    assert_eq!(variants[1].target, Target::Single(2));

    // The variant of the second kept row (line 5, a question) is labelled feature.
    let relabelled = write(
        &dir,
        "relabelled.csv",
        format!("{header}a,bug,a crash,\"2\nlines\"\na,feature,how?,y\na,bug,it fails,z\n"),
    );
    let err = read_variants(&relabelled, &cfg, &train, &originals)
        .err()
        .ok_or("expected a refusal")?;
    assert_eq!(
        err.to_string(),
        format!(
            "{}:4: data.augment: a variant of {}:5 (the row in the same place among the kept \
             rows), but labelled \"feature\", not \"question\"",
            relabelled.display(),
            train.display()
        )
    );

    // The variant of the last row is in another repository, so the filter drops it.
    let short = write(
        &dir,
        "short.csv",
        format!("{header}a,bug,a crash,\"2\nlines\"\na,question,how?,y\nb,bug,it fails,z\n"),
    );
    let err = read_variants(&short, &cfg, &train, &originals)
        .err()
        .ok_or("expected a refusal")?;
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "data.augment"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!(
            "{} keeps 2 rows but {} keeps 3: a file of variants holds one for each row, in the \
             same order, none for {}:6 and after",
            short.display(),
            train.display(),
            train.display()
        )),
        "{err}"
    );
    Ok(())
}
