use std::path::Path;

use tempfile::TempDir;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
use wick_data::{Error, TextTokenizer, Truncation};

use crate::common::{
    id, minilm_tokenizer, tiny_tokenizer, tiny_tokenizer_file, BoxError, TestResult, CLS, PAD, SEP,
    VOCAB,
};

#[test]
fn encode_wraps_text_in_cls_and_sep() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    let encodings = tokenizer.encode(&["The bug", "", "add buttons?"])?;
    assert_eq!(encodings[0].ids, [CLS, id("the"), id("bug"), SEP]);
    assert_eq!(encodings[0].type_ids, [0; 4]);
    assert_eq!(encodings[0].full_len, 4);
    assert_eq!(encodings[1].ids, [CLS, SEP]);
    assert_eq!(
        encodings[2].ids,
        [CLS, id("add"), id("button"), id("##s"), id("?"), SEP]
    );
    Ok(())
}

#[test]
fn truncation_counts_special_tokens_and_full_len_is_untruncated() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 8)?;
    let long = "a b c ".repeat(10);
    let encodings = tokenizer.encode(&[long.as_str(), "a b c d e f", "a b c a b c"])?;
    assert_eq!(encodings[0].ids.len(), 8);
    assert_eq!(encodings[0].ids.first(), Some(&CLS));
    assert_eq!(encodings[0].ids.last(), Some(&SEP));
    assert_eq!(encodings[0].full_len, 32);
    assert_eq!(encodings[1].full_len, 8, "unknown words are one [UNK] each");
    assert_eq!(
        encodings[2].ids.len(),
        8,
        "exactly max_len is not truncated"
    );
    assert_eq!(encodings[2].full_len, 8);
    Ok(())
}

#[test]
fn pad_id_comes_from_the_pad_token_and_vocab_size_counts_it() -> TestResult {
    let dir = TempDir::new()?;
    let tokenizer = tiny_tokenizer(&dir, 16)?;
    assert_eq!(tokenizer.pad_id(), PAD);
    assert_eq!(tokenizer.vocab_size(), VOCAB.len());
    Ok(())
}

#[test]
fn missing_tokenizer_file_names_the_path() -> TestResult {
    let dir = TempDir::new()?;
    let path = dir.path().join("nope").join("tokenizer.json");
    let err = TextTokenizer::from_file(&path, 16)
        .err()
        .ok_or("expected an error")?;
    assert!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    Ok(())
}

#[test]
fn real_minilm_tokenizer_truncates_and_pads_with_its_pad_token() -> TestResult {
    let Some(path) = minilm_tokenizer() else {
        println!("skipped: no all-MiniLM-L6-v2 tokenizer.json in the Hugging Face cache");
        return Ok(());
    };
    let tokenizer = TextTokenizer::from_file(&path, 16)?;
    assert_eq!(tokenizer.pad_id(), 0);
    assert_eq!(tokenizer.vocab_size(), 30_522);
    let long = "the app crashes when I open a file ".repeat(10);
    let encodings = tokenizer.encode(&["Hello world", long.as_str()])?;
    assert_eq!(encodings[0].ids, [101, 7592, 2088, 102]);
    assert_eq!(encodings[1].ids.len(), 16);
    assert!(encodings[1].full_len > 16);
    Ok(())
}

/// What the tokenizers library itself gives `input` (a text, or a `(text, pair)`) when it
/// truncates to `max_len` from `direction` (Right cuts the end, Left the start; a pair longest
/// first).
fn library_cut<'s>(
    path: &Path,
    input: impl Into<tokenizers::EncodeInput<'s>>,
    max_len: usize,
    direction: TruncationDirection,
) -> Result<tokenizers::Encoding, BoxError> {
    let mut tokenizer = Tokenizer::from_file(path)?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(Some(TruncationParams {
        direction,
        max_length: max_len,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    }))?;
    tokenizer.encode(input, true)
}

/// Each truncation keeps what the tokenizers library's own cut keeps: the head as a cut from the
/// right, the tail as a cut from the left, and head_tail the first `head` content tokens of the one
/// followed by the rest of the other; the untruncated length is the same for all three.
fn check_truncations(path: &Path, text: &str, max_len: usize, head: usize) -> TestResult {
    let right = library_cut(path, text, max_len, TruncationDirection::Right)?
        .get_ids()
        .to_vec();
    let left = library_cut(path, text, max_len, TruncationDirection::Left)?
        .get_ids()
        .to_vec();
    assert_eq!(right.len(), max_len, "the text must be longer than max_len");
    assert_ne!(right, left);
    let mut both = right[..1 + head].to_vec();
    both.extend(&left[1 + head..]);
    let full_len = TextTokenizer::from_file(path, 4096)?.encode(&[text])?[0]
        .ids
        .len();
    for (truncation, expected) in [
        (Truncation::Head, &right),
        (Truncation::Tail, &left),
        (Truncation::HeadTail { head }, &both),
    ] {
        let tokenizer = TextTokenizer::from_file(path, max_len)?.with_truncation(truncation);
        let encoding = &tokenizer.encode(&[text, "fix the bug"])?;
        assert_eq!(&encoding[0].ids, expected, "{truncation:?}");
        assert_eq!(encoding[0].type_ids, vec![0; max_len], "{truncation:?}");
        assert_eq!(encoding[0].full_len, full_len, "{truncation:?}");
        let short = TextTokenizer::from_file(path, max_len)?.encode(&["fix the bug"])?;
        assert_eq!(encoding[1], short[0], "a short text is cut: {truncation:?}");
    }
    Ok(())
}

#[test]
fn truncation_keeps_the_head_the_tail_or_both_as_the_library_cuts() -> TestResult {
    let dir = TempDir::new()?;
    let text = "how do i add a button ? the app crash when i open a file , fix the bug .";
    check_truncations(&tiny_tokenizer_file(&dir)?, text, 10, 3)?;
    match minilm_tokenizer() {
        Some(path) => {
            let long = "Crash on open\n\nSteps: open the settings file. ".repeat(8)
                + "Traceback: KeyError: 'theme' in loader.py line 42. Is this a bug?";
            check_truncations(&path, &long, 32, 8)?;
        }
        None => println!("skipped MiniLM: no all-MiniLM-L6-v2 tokenizer.json in the Hub cache"),
    }
    Ok(())
}

#[test]
fn head_tail_keeps_the_special_tokens_and_the_order_of_both_parts() -> TestResult {
    // Sequence ids: `None` for a special token, `Some(0)` for the text's, `Some(1)` the pair's.
    let single = |content: usize| {
        let mut ids = vec![None];
        ids.extend(std::iter::repeat_n(Some(0), content));
        ids.push(None);
        ids
    };
    let positions = wick_data::kept_positions(&single(8), 6, Truncation::HeadTail { head: 1 });
    assert_eq!(positions, [0, 1, 6, 7, 8, 9]);
    let all = wick_data::kept_positions(&single(2), 6, Truncation::Tail);
    assert_eq!(all, [0, 1, 2, 3], "a text that fits keeps every token");
    // A head larger than the room keeps the head only.
    let head = wick_data::kept_positions(&single(5), 5, Truncation::HeadTail { head: 9 });
    assert_eq!(head, [0, 1, 2, 3, 6]);
    // A pair: [CLS] a a a a [SEP] b b b b b b [SEP] in 9 keeps 3 of each, head 1 then tail 2.
    let mut pair = single(4);
    pair.extend(std::iter::repeat_n(Some(1), 6));
    pair.push(None);
    let positions = wick_data::kept_positions(&pair, 9, Truncation::HeadTail { head: 1 });
    assert_eq!(positions, [0, 1, 3, 4, 5, 6, 10, 11, 12]);
    Ok(())
}

#[test]
fn pair_shares_are_the_tokenizers_librarys_longest_first() {
    // The shorter text stays whole while the longer fits in what it leaves.
    assert_eq!(wick_data::pair_shares(3, 20, 10), (3, 7));
    assert_eq!(wick_data::pair_shares(20, 3, 10), (7, 3));
    // Both longer than half: halves, the longer text taking the odd token.
    assert_eq!(wick_data::pair_shares(8, 9, 11), (5, 6));
    assert_eq!(wick_data::pair_shares(9, 8, 11), (6, 5));
    assert_eq!(wick_data::pair_shares(30, 30, 10), (5, 5));
    assert_eq!(wick_data::pair_shares(2, 3, 10), (2, 3), "fits");
}

/// A pair is cut as the library cuts it: with `longest_first` shares, the head as a cut from
/// the right, the tail as a cut from the left, and head_tail each text's first `head` tokens of
/// the one followed by the rest of its share from the other; `tokens` keeps the same ids and
/// names each token's text.
fn check_pair_truncations(
    path: &Path,
    text: &str,
    pair: &str,
    max_len: usize,
    head: usize,
) -> TestResult {
    let what = format!("{text:?} + {pair:?} in {max_len}");
    let right = library_cut(path, (text, pair), max_len, TruncationDirection::Right)?;
    let left = library_cut(path, (text, pair), max_len, TruncationDirection::Left)?;
    assert_eq!(right.len(), max_len, "{what}: the pair must be longer");
    // Head and tail by text: each text's content tokens in the right cut, then the left cut.
    let content = |e: &tokenizers::Encoding, s: usize| -> Vec<u32> {
        let ids = e.get_sequence_ids();
        (0..e.len())
            .filter(|&k| ids[k] == Some(s))
            .map(|k| e.get_ids()[k])
            .collect()
    };
    let mut both = Vec::new();
    let mut next = [0usize; 2];
    for (k, sequence) in right.get_sequence_ids().into_iter().enumerate() {
        match sequence {
            None => both.push(right.get_ids()[k]),
            Some(s) => {
                let (r, l) = (content(&right, s), content(&left, s));
                let i = next[s];
                next[s] += 1;
                both.push(if i < head.min(r.len()) { r[i] } else { l[i] });
            }
        }
    }
    let full_len = TextTokenizer::from_file(path, 4096)?.encode_pairs(&[(text, Some(pair))])?[0]
        .ids
        .len();
    for (truncation, expected) in [
        (Truncation::Head, right.get_ids()),
        (Truncation::Tail, left.get_ids()),
        (Truncation::HeadTail { head }, &both[..]),
    ] {
        let tokenizer = TextTokenizer::from_file(path, max_len)?.with_truncation(truncation);
        let encodings = tokenizer.encode_pairs(&[(text, Some(pair)), ("fix the bug", None)])?;
        assert_eq!(encodings[0].ids, expected, "{what} {truncation:?}");
        assert_eq!(
            encodings[0].type_ids,
            right.get_type_ids(),
            "{what} {truncation:?}"
        );
        assert_eq!(encodings[0].full_len, full_len, "{what} {truncation:?}");
        assert_eq!(
            encodings[1],
            tokenizer.encode(&["fix the bug"])?[0],
            "a single text beside a pair"
        );
        let tokens = tokenizer.tokens(text, Some(pair))?;
        let ids: Vec<u32> = tokens.tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, expected, "{what} {truncation:?}: tokens");
        assert_eq!(tokens.full_len, full_len);
        for token in &tokens.tokens {
            if let Some((_, end)) = token.span {
                let source = [text, pair][token.segment];
                assert!(end <= source.len(), "{what}: a span past its text");
            }
        }
        let segments: Vec<usize> = tokens
            .tokens
            .iter()
            .filter(|t| t.span.is_some())
            .map(|t| t.segment)
            .collect();
        assert!(segments.windows(2).all(|w| w[0] <= w[1]), "{what}");
        assert_eq!(
            segments.iter().filter(|&&s| s == 1).count(),
            content(&right, 1).len()
        );
    }
    Ok(())
}

#[test]
fn pairs_are_cut_longest_first_as_the_library_cuts_them() -> TestResult {
    let dir = TempDir::new()?;
    let short = "fix the bug";
    let long = "how do i add a button ? the app crash when i open a file , fix the bug .";
    let other = "a b c the bug , a b c the app . add a file ? a b c";
    let tiny = tiny_tokenizer_file(&dir)?;
    for (text, pair) in [(short, long), (long, short), (long, other), (other, long)] {
        for max_len in [12, 13, 16] {
            check_pair_truncations(&tiny, text, pair, max_len, 2)?;
        }
    }
    match minilm_tokenizer() {
        Some(path) => {
            let body = "Steps: open the settings file. ".repeat(8)
                + "Traceback: KeyError: 'theme' in loader.py line 42. Is this a bug?";
            check_pair_truncations(&path, "Crash on open", &body, 32, 8)?;
            check_pair_truncations(&path, &body, &body.to_uppercase(), 33, 8)?;
            // Segment ids: 0 for [CLS] text [SEP], 1 for pair [SEP].
            let tokenizer = TextTokenizer::from_file(&path, 64)?;
            let encoding = &tokenizer.encode_pairs(&[("a b", Some("c d e"))])?[0];
            assert_eq!(encoding.type_ids, [0, 0, 0, 0, 1, 1, 1, 1]);
        }
        None => println!("skipped MiniLM: no all-MiniLM-L6-v2 tokenizer.json in the Hub cache"),
    }
    Ok(())
}

#[test]
fn tokens_are_encodes_ids_with_their_pieces_and_byte_spans() -> TestResult {
    let dir = TempDir::new()?;
    let text = "Add büttons? a b c a b c the bug";
    for truncation in [
        Truncation::Head,
        Truncation::Tail,
        Truncation::HeadTail { head: 2 },
    ] {
        for max_len in [6, 64] {
            let tokenizer = tiny_tokenizer(&dir, max_len)?.with_truncation(truncation);
            let tokenized = tokenizer.tokens(text, None)?;
            assert_eq!(tokenized.full_len, tokenizer.encode(&[text])?[0].full_len);
            assert_eq!(tokenized.whole(), max_len == 64, "{truncation:?} {max_len}");
            let tokens = tokenized.tokens;
            let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            assert_eq!(
                ids,
                tokenizer.encode(&[text])?[0].ids,
                "{truncation:?} {max_len}"
            );
            assert_eq!(
                tokens.first().map(|t| (t.span, t.piece.as_str())),
                Some((None, "[CLS]"))
            );
            assert_eq!(
                tokens.last().map(|t| (t.span, t.piece.as_str())),
                Some((None, "[SEP]"))
            );
            for token in &tokens[1..tokens.len() - 1] {
                let (start, end) = token.span.ok_or("a content token without a span")?;
                let source = text[start..end].to_lowercase();
                let piece = token.piece.trim_start_matches("##");
                assert!(
                    token.id == id("[UNK]") || !source.is_ascii() || source == piece,
                    "{source:?} for the piece {piece:?}"
                );
            }
        }
    }
    let tokenizer = tiny_tokenizer(&dir, 64)?;
    let pieces: Vec<String> = tokenizer
        .tokens("add buttons?", None)?
        .tokens
        .into_iter()
        .map(|t| t.piece)
        .collect();
    assert_eq!(pieces, ["[CLS]", "add", "button", "##s", "?", "[SEP]"]);
    // Byte offsets: "ü" is two bytes.
    let spans: Vec<_> = tokenizer
        .tokens("Add büttons?", None)?
        .tokens
        .into_iter()
        .map(|t| t.span)
        .collect();
    assert_eq!(
        spans,
        [
            None,
            Some((0, 3)),
            Some((4, 11)),
            Some((11, 12)),
            Some((12, 13)),
            None
        ]
    );
    Ok(())
}
