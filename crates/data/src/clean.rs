//! `[data.clean]`: markup cut from each text before tokenization. GitHub issue and pull-request
//! bodies carry a lot the reader never sees or skims past: template instructions in HTML
//! comments, collapsed `<details>` sections (system information, extension lists, full logs) and
//! long pasted logs or stack traces in fenced code blocks. At 512 tokens a third of the NLBSE
//! issues are cut; cleaning leaves the model more of the author's own words. Measure before
//! adopting it: where the template an author picked tells the label (NLBSE: vscode's
//! `bug_report_template` comments, tensorflow's `<details>` in feature requests), the markup is
//! evidence, and removing it cost the NLBSE pipeline 0.029 macro-F1 (the README has the runs).
//!
//! Every option is off by default. The same cleaning runs on every text a checkpoint reads:
//! training, validation and test files and the texts given to `predict`.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What is removed from each text (after `data.text_fields` are joined).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clean {
    /// Remove HTML comments, `<!--` to the next `-->` (to the end of the text when none
    /// follows, as an HTML parser reads it).
    #[serde(default)]
    pub html_comments: bool,
    /// Remove `<details>` sections, summary included, to their matching `</details>` (nested
    /// ones counted; to the end of the text when unclosed).
    #[serde(default)]
    pub details: bool,
    /// Fenced code blocks (```` ``` ```` or `~~~`, CommonMark's rules) with more than this many
    /// lines keep their first `ceil(n/2)` and last `floor(n/2)` lines and a line
    /// `... (K lines)` in place of the K between. 0 keeps every block whole.
    #[serde(default)]
    pub code_lines: usize,
}

impl Clean {
    /// True when no option is on: texts pass through unchanged.
    pub fn is_off(&self) -> bool {
        *self == Self::default()
    }

    /// `text` with the configured markup removed (borrowed when nothing was removed).
    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let text = then(Cow::Borrowed(text), self.html_comments, strip_comments);
        let text = then(text, self.details, strip_details);
        then(text, self.code_lines > 0, |t| {
            shorten_code(t, self.code_lines)
        })
    }

    /// The options that are on, in words, e.g. `html_comments, details, code_lines = 8`.
    pub fn describe(&self) -> String {
        let mut on = Vec::new();
        if self.html_comments {
            on.push("html_comments".to_owned());
        }
        if self.details {
            on.push("details".to_owned());
        }
        if self.code_lines > 0 {
            on.push(format!("code_lines = {}", self.code_lines));
        }
        if on.is_empty() {
            "off".to_owned()
        } else {
            on.join(", ")
        }
    }
}

/// What `[data.clean]` did to the texts of one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Texts read.
    pub texts: usize,
    /// Texts that lost something.
    pub changed: usize,
    /// Characters of the texts before cleaning.
    pub chars_before: usize,
    /// Characters removed.
    pub chars_removed: usize,
}

impl CleanStats {
    /// Counts one text before and after cleaning.
    pub fn add(&mut self, before: &str, after: &str) {
        self.texts += 1;
        self.changed += usize::from(after != before);
        let (before, after) = (before.chars().count(), after.chars().count());
        self.chars_before += before;
        self.chars_removed += before.saturating_sub(after);
    }
}

impl fmt::Display for CleanStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let share = 100.0 * self.chars_removed as f64 / self.chars_before.max(1) as f64;
        write!(
            f,
            "{} of {} texts shortened, {share:.1}% of their characters removed",
            self.changed, self.texts
        )
    }
}

/// `text` after `step` when `on`; a step that removed nothing leaves `text` as it was.
fn then<'a>(text: Cow<'a, str>, on: bool, step: impl Fn(&str) -> Cow<'_, str>) -> Cow<'a, str> {
    if !on {
        return text;
    }
    let cut = match step(&text) {
        Cow::Owned(cut) => Some(cut),
        Cow::Borrowed(_) => None,
    };
    cut.map_or(text, Cow::Owned)
}

fn strip_comments(text: &str) -> Cow<'_, str> {
    if !text.contains("<!--") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("<!--") {
        out.push_str(&rest[..open]);
        let body = &rest[open + 4..];
        rest = match body.find("-->") {
            Some(close) => &body[close + 3..],
            None => "",
        };
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Byte offset of the next `<details>` or `</details>` tag (ASCII case-insensitive) at or after
/// `from`, and whether it closes.
fn next_details_tag(text: &str, from: usize) -> Option<(usize, usize, bool)> {
    let bytes = text.as_bytes();
    let mut i = from;
    while let Some(lt) = bytes[i..].iter().position(|&b| b == b'<') {
        let at = i + lt;
        let closing = bytes.get(at + 1) == Some(&b'/');
        let name_at = at + 1 + usize::from(closing);
        let name_end = name_at + "details".len();
        let is_details = bytes
            .get(name_at..name_end)
            .is_some_and(|name| name.eq_ignore_ascii_case(b"details"))
            && matches!(
                bytes.get(name_end),
                Some(b'>' | b' ' | b'\t' | b'\n' | b'\r' | b'/')
            );
        if is_details {
            let end = bytes[name_end..]
                .iter()
                .position(|&b| b == b'>')
                .map_or(text.len(), |gt| name_end + gt + 1);
            return Some((at, end, closing));
        }
        i = at + 1;
    }
    None
}

fn strip_details(text: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(text.len());
    let mut kept_from = 0;
    let mut depth = 0usize;
    let mut cursor = 0;
    let mut changed = false;
    while let Some((at, end, closing)) = next_details_tag(text, cursor) {
        match (closing, depth) {
            (false, 0) => {
                out.push_str(&text[kept_from..at]);
                depth = 1;
                changed = true;
            }
            (false, _) => depth += 1,
            (true, 0) => {} // a closing tag with nothing open stays in the text
            (true, 1) => {
                depth = 0;
                kept_from = end;
            }
            (true, _) => depth -= 1,
        }
        cursor = end;
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    if depth == 0 {
        out.push_str(&text[kept_from..]);
    }
    Cow::Owned(out)
}

/// An opening code fence (indented at most 3 spaces): its character and its length.
fn opening_fence(line: &str) -> Option<(u8, usize)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line.as_bytes()[indent..];
    let fence = *rest.first()?;
    if fence != b'`' && fence != b'~' {
        return None;
    }
    let len = rest.iter().take_while(|&&b| b == fence).count();
    // A backtick fence's info string holds no backtick (CommonMark 4.5).
    let info_ok = fence == b'~' || !rest[len..].contains(&b'`');
    (len >= 3 && info_ok).then_some((fence, len))
}

/// Whether `line` closes a block opened by `len` of `fence`.
fn closes(line: &str, fence: u8, len: usize) -> bool {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return false;
    }
    let rest = line[indent..].trim_end();
    rest.len() >= len && rest.bytes().all(|b| b == fence)
}

fn shorten_code(text: &str, keep: usize) -> Cow<'_, str> {
    if !text.contains("```") && !text.contains("~~~") {
        return Cow::Borrowed(text);
    }
    // Lines with their terminators, so the text is rebuilt byte for byte where nothing is cut.
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        out.push_str(line);
        i += 1;
        let Some((fence, len)) = opening_fence(line.trim_end_matches(['\n', '\r'])) else {
            continue;
        };
        let body_start = i;
        while i < lines.len() && !closes(lines[i].trim_end_matches(['\n', '\r']), fence, len) {
            i += 1;
        }
        let body = &lines[body_start..i];
        if body.len() > keep {
            let head = keep.div_ceil(2);
            let tail = keep / 2;
            let cut = body.len() - head - tail;
            body[..head].iter().for_each(|l| out.push_str(l));
            if !out.ends_with('\n') {
                out.push('\n');
            }
            let plural = if cut == 1 { "" } else { "s" };
            out.push_str(&format!("... ({cut} line{plural})\n"));
            body[body.len() - tail..]
                .iter()
                .for_each(|l| out.push_str(l));
            changed = true;
        } else {
            body.iter().for_each(|l| out.push_str(l));
        }
        // The closing fence, when there is one, is consumed here so it cannot open a block.
        if i < lines.len() {
            out.push_str(lines[i]);
            i += 1;
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(code_lines: usize) -> Clean {
        Clean {
            html_comments: true,
            details: true,
            code_lines,
        }
    }

    #[test]
    fn off_leaves_text_borrowed() {
        let text = "<!-- a -->\n<details>x</details>\n```\n1\n2\n3\n```";
        assert!(matches!(Clean::default().apply(text), Cow::Borrowed(_)));
        assert_eq!(Clean::default().describe(), "off");
        assert!(Clean::default().is_off());
    }

    #[test]
    fn comments_are_removed_and_an_unclosed_one_runs_to_the_end() {
        let clean = Clean {
            html_comments: true,
            ..Clean::default()
        };
        assert_eq!(
            clean.apply("keep <!-- Please\nfill this in --> this <!--x-->and this"),
            "keep  this and this"
        );
        assert_eq!(clean.apply("a <!-- never closed"), "a ");
        assert_eq!(clean.apply("a --> b"), "a --> b");
        assert!(matches!(clean.apply("no comment"), Cow::Borrowed(_)));
    }

    #[test]
    fn details_are_removed_with_nesting_and_case() {
        let clean = Clean {
            details: true,
            ..Clean::default()
        };
        let text =
            "Bug here.\n<details>\n<summary>System Info</summary>\n|CPU|x|\n<DETAILS open>\n\
                    inner\n</details>\nstill outer\n</Details>\nAfter.";
        assert_eq!(clean.apply(text), "Bug here.\n\nAfter.");
        assert_eq!(clean.apply("a <details>open forever"), "a ");
        // A stray closing tag and look-alike tags stay.
        assert_eq!(
            clean.apply("a </details> <detailsx> b"),
            "a </details> <detailsx> b"
        );
        assert!(matches!(clean.apply("a </details> b"), Cow::Borrowed(_)));
        assert_eq!(clean.apply("x<details><details></details>y"), "x");
    }

    #[test]
    fn long_code_blocks_keep_their_ends() {
        let clean = Clean {
            code_lines: 3,
            ..Clean::default()
        };
        let text = "Crash:\n```python\nl1\nl2\nl3\nl4\nl5\nl6\n```\nthanks\n~~~\nshort\n~~~\n";
        assert_eq!(
            clean.apply(text),
            "Crash:\n```python\nl1\nl2\n... (3 lines)\nl6\n```\nthanks\n~~~\nshort\n~~~\n"
        );
        // Exactly `code_lines` lines: whole, and the text is not copied.
        let three = "```\na\nb\nc\n```";
        assert!(matches!(clean.apply(three), Cow::Borrowed(_)));
        // Unclosed: the block runs to the end of the text.
        assert_eq!(
            clean.apply("t\n````\n1\n2\n3\n4\n5"),
            "t\n````\n1\n2\n... (2 lines)\n5"
        );
        // A shorter fence does not close a longer one; a tilde fence does not close backticks.
        assert_eq!(
            clean.apply("````\n1\n```\n~~~\n2\n3\n````\nend"),
            "````\n1\n```\n... (2 lines)\n3\n````\nend"
        );
        // Indented four spaces: not a fence. Inline backticks in the info string: not a fence.
        let not_fences = "    ```\n1\n2\n3\n4\n5\n``` a`b\n1\n2\n3\n4\n5\n";
        assert!(matches!(clean.apply(not_fences), Cow::Borrowed(_)));
        // CRLF line ends are kept.
        assert_eq!(
            clean.apply("```\r\n1\r\n2\r\n3\r\n4\r\n```\r\n"),
            "```\r\n1\r\n2\r\n... (1 line)\n4\r\n```\r\n"
        );
    }

    #[test]
    fn stats_count_texts_and_characters_not_bytes() {
        let clean = all(0);
        let mut stats = CleanStats::default();
        for text in ["é <!-- ünïcödé -->", "plain", "<details>ab</details>"] {
            stats.add(text, &clean.apply(text));
        }
        // 18 + 5 + 21 characters, of which 16 and 21 are removed (the 18 are 23 bytes).
        assert_eq!(
            stats,
            CleanStats {
                texts: 3,
                changed: 2,
                chars_before: 44,
                chars_removed: 37,
            }
        );
        assert_eq!(
            stats.to_string(),
            "2 of 3 texts shortened, 84.1% of their characters removed"
        );
    }

    #[test]
    fn options_compose_in_order() {
        // A comment holding a fence or a details tag is gone before those are looked for.
        let text = "Title\n\n<!-- ```\n<details> -->\nbody\n<details>\n```\nlog\n```\n</details>\n\
                    ```\n1\n2\n3\n```";
        assert_eq!(
            all(2).apply(text),
            "Title\n\n\nbody\n\n```\n1\n... (1 line)\n3\n```"
        );
        assert_eq!(all(8).describe(), "html_comments, details, code_lines = 8");
    }
}
