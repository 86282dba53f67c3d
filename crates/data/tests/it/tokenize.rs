use tempfile::TempDir;
use wick_data::{Error, TextTokenizer};

use crate::common::{id, minilm_tokenizer, tiny_tokenizer, TestResult, CLS, PAD, SEP, VOCAB};

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
