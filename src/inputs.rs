//! The inputs `predict` and `explain` share (each includes this file as a module): texts from
//! the arguments, records of a file of the checkpoint's schema (`--data`), or JSONL records on
//! stdin.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use wick_data::Unit;
use wick_trainer::infer::Ensemble;

/// The examples to label: `data`'s kept rows, else `texts` (each with its `pairs` entry as the
/// second text of a pair, for a checkpoint of text pairs), else stdin's records; every one read
/// with the first checkpoint's field mapping ([`wick_data::unlabelled_record`]).
pub fn read(
    ensemble: &Ensemble,
    texts: &[String],
    pairs: &[String],
    data: Option<&Path>,
) -> Result<Vec<wick_data::Example>> {
    let config = &ensemble.first().checkpoint.config.data;
    let dir = ensemble.first().checkpoint.dir.display();
    let reads_pairs = !config.pair_fields.is_empty();
    if !pairs.is_empty() {
        if !reads_pairs {
            bail!("--pair: {dir} reads single texts (its data.pair_fields is empty)");
        }
        if pairs.len() != texts.len() {
            bail!(
                "--pair given {} time(s) for {} text(s): one second text per text, in order",
                pairs.len(),
                texts.len()
            );
        }
    }
    match data {
        Some(path) => Ok(ensemble.first().read_unlabelled(path)?),
        None if texts.is_empty() => read_stdin(config),
        None if reads_pairs && pairs.is_empty() => bail!(
            "{dir} reads text pairs (data.pair_fields = {:?}): give each text its second text \
             with --pair, or JSONL records with `text` and `text_pair` (or the training file's \
             fields) on stdin or in --data",
            config.pair_fields
        ),
        None => Ok(texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut fields = Map::from_iter([("text".to_string(), Value::from(text.as_str()))]);
                if let Some(pair) = pairs.get(i) {
                    fields.insert("text_pair".to_string(), Value::from(pair.as_str()));
                }
                let at = wick_data::Location::new(Path::new("argument"), Unit::Item, i + 1);
                wick_data::unlabelled_record(fields, config, &at)
            })
            .collect::<Result<_, _>>()?),
    }
}

/// Reads stdin JSONL: each line an object, its text its string field `text` or else the
/// checkpoint's text fields ([`wick_data::unlabelled_record`]).
fn read_stdin(data: &wick_data::DataConfig) -> Result<Vec<wick_data::Example>> {
    let stdin = Path::new("stdin");
    let mut examples = Vec::new();
    for (index, line) in std::io::stdin().lock().lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("stdin line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("stdin:{number}: not JSON"))?;
        let Value::Object(object) = value else {
            bail!("stdin:{number}: expected a JSON object")
        };
        let at = wick_data::Location::line(stdin, number);
        examples.push(wick_data::unlabelled_record(object, data, &at)?);
    }
    Ok(examples)
}
