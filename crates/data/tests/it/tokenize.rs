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

/// The ids the tokenizers library itself gives `text` when it truncates to `max_len` from
/// `direction` (Right cuts the end, Left the start).
fn library_cut(
    path: &Path,
    text: &str,
    max_len: usize,
    direction: TruncationDirection,
) -> Result<Vec<u32>, BoxError> {
    let mut tokenizer = Tokenizer::from_file(path)?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(Some(TruncationParams {
        direction,
        max_length: max_len,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
    }))?;
    Ok(tokenizer.encode(text, true)?.get_ids().to_vec())
}

/// Each truncation keeps what the tokenizers library's own cut keeps: the head as a cut from the
/// right, the tail as a cut from the left, and head_tail the first `head` content tokens of the one
/// followed by the rest of the other; the untruncated length is the same for all three.
fn check_truncations(path: &Path, text: &str, max_len: usize, head: usize) -> TestResult {
    let right = library_cut(path, text, max_len, TruncationDirection::Right)?;
    let left = library_cut(path, text, max_len, TruncationDirection::Left)?;
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
    let positions = wick_data::kept_positions(
        &[1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        6,
        Truncation::HeadTail { head: 1 },
    );
    assert_eq!(positions, [0, 1, 6, 7, 8, 9]);
    let all = wick_data::kept_positions(&[1, 0, 0, 1], 6, Truncation::Tail);
    assert_eq!(all, [0, 1, 2, 3], "a text that fits keeps every token");
    // A head larger than the room keeps the head only.
    let head =
        wick_data::kept_positions(&[1, 0, 0, 0, 0, 0, 1], 5, Truncation::HeadTail { head: 9 });
    assert_eq!(head, [0, 1, 2, 3, 6]);
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
            let tokenized = tokenizer.tokens(text)?;
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
        .tokens("add buttons?")?
        .tokens
        .into_iter()
        .map(|t| t.piece)
        .collect();
    assert_eq!(pieces, ["[CLS]", "add", "button", "##s", "?", "[SEP]"]);
    // Byte offsets: "ü" is two bytes.
    let spans: Vec<_> = tokenizer
        .tokens("Add büttons?")?
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
