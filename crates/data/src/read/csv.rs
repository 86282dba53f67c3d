//! A small RFC 4180 CSV parser: quoted fields with embedded newlines and doubled quotes, CRLF or
//! LF record ends, fields of any size. It tracks the physical line where each record starts so
//! errors point at the row a user sees in an editor.

use std::path::Path;

use crate::error::{Error, Location, Result};

/// One CSV record and the 1-based physical line where it starts.
#[derive(Debug)]
pub(crate) struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Splits `text` into records. Blank lines between records are skipped; a lone `"` inside an
/// unquoted field is kept literally, as most spreadsheet exports expect.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<Record>> {
    let bytes = text.as_bytes();
    let len = bytes.len();
    let mut records = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < len {
        let record_start = i;
        let start_line = line;
        let mut fields = Vec::new();
        loop {
            if bytes.get(i) == Some(&b'"') {
                i += 1;
                let mut field = String::new();
                loop {
                    let Some(offset) = bytes[i..].iter().position(|&b| b == b'"') else {
                        return Err(Error::UnterminatedQuote {
                            at: Location::line(path, start_line),
                        });
                    };
                    let quote = i + offset;
                    line += count_newlines(&bytes[i..quote]);
                    field.push_str(&text[i..quote]);
                    if bytes.get(quote + 1) == Some(&b'"') {
                        field.push('"');
                        i = quote + 2;
                    } else {
                        i = quote + 1;
                        break;
                    }
                }
                fields.push(field);
                match (bytes.get(i), bytes.get(i + 1)) {
                    (None, _) => break,
                    (Some(b','), _) => i += 1,
                    (Some(b'\n'), _) => {
                        i += 1;
                        line += 1;
                        break;
                    }
                    (Some(b'\r'), Some(b'\n')) => {
                        i += 2;
                        line += 1;
                        break;
                    }
                    _ => {
                        return Err(Error::BadRow {
                            at: Location::line(path, line),
                            reason: format!(
                                "unexpected text after the closing quote of field {} \
                                 (a quote inside a quoted field must be doubled: \"\")",
                                fields.len()
                            ),
                        })
                    }
                }
            } else {
                let start = i;
                while i < len && bytes[i] != b',' && bytes[i] != b'\n' {
                    i += 1;
                }
                let at_line_end = i == len || bytes[i] == b'\n';
                let end = if at_line_end && i > start && bytes[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                fields.push(text[start..end].to_owned());
                if i == len {
                    break;
                }
                i += 1;
                if at_line_end {
                    line += 1;
                    break;
                }
            }
        }
        let raw = &text[record_start..i];
        if !raw.trim_end_matches(['\r', '\n']).is_empty() {
            records.push(Record {
                line: start_line,
                fields,
            });
        }
    }
    Ok(records)
}

fn count_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<(usize, Vec<String>)> {
        parse(Path::new("t.csv"), text)
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.line, r.fields))
            .collect()
    }

    #[test]
    fn trailing_comma_gives_an_empty_last_field() {
        assert_eq!(
            fields("a,b,\n"),
            vec![(1, vec!["a".into(), "b".into(), String::new()])]
        );
    }

    #[test]
    fn blank_lines_are_skipped_but_counted() {
        let got = fields("a\r\n\r\n\nb\n");
        assert_eq!(got, vec![(1, vec!["a".into()]), (4, vec!["b".into()])]);
    }

    #[test]
    fn quoted_empty_field_is_a_record() {
        assert_eq!(fields("\"\"\n"), vec![(1, vec![String::new()])]);
    }

    #[test]
    fn text_after_closing_quote_is_an_error_on_its_line() {
        let err = parse(Path::new("t.csv"), "a\n\"x\ny\"z,1\n").err();
        assert!(
            matches!(&err, Some(Error::BadRow { at, .. }) if at.number == 3),
            "{err:?}"
        );
    }
}
