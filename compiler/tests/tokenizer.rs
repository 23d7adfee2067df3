//! The GGUF SentencePiece tokenizer on gemma-3-270m: round trips, byte fallback, and (where
//! scripts/llama_refs.py has run llama.cpp) the exact ids llama.cpp gives.

use std::path::PathBuf;
use tessera_compiler::gguf::Gguf;
use tessera_compiler::tokenizer::Tokenizer;

fn gemma() -> Option<Gguf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/gemma-3-270m-q4_k_m.gguf");
    if !p.exists() {
        eprintln!("\n*** SKIPPED: no .cache/models/gemma-3-270m-q4_k_m.gguf; run scripts/fetch_models.sh ***\n");
        return None;
    }
    Some(Gguf::open(&p).unwrap())
}

const TEXTS: [&str; 6] = [
    "The capital of France is",
    "Hello, world! How are you today?",
    "  leading spaces and\ttabs\nand newlines",
    "Numbers 1234567890 and symbols #$%&*()",
    "Unicode: café, naïve, 東京, Привет, 🙂🚀",
    "",
];

#[test]
fn round_trips_and_starts_with_bos() {
    let Some(g) = gemma() else { return };
    let t = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(t.vocab_size(), 262_144);
    assert_eq!((t.bos, t.eos, t.add_bos), (Some(2), Some(1), true));
    for text in TEXTS {
        let ids = t.encode(text, true);
        assert_eq!(ids[0], 2, "{text:?}: BOS first");
        assert_eq!(t.decode(&ids), text, "{text:?}: {ids:?}");
    }
    // Whole words are single tokens: "▁capital" rather than characters.
    let ids = t.encode("The capital of France is", false);
    let pieces: Vec<&str> = ids.iter().map(|&i| t.token(i).unwrap()).collect();
    assert_eq!(pieces, ["The", "▁capital", "▁of", "▁France", "▁is"]);
}

/// The ids llama.cpp gives for the same texts (compiler/tests/data/gemma3_tokens.json, made by
/// scripts/llama_refs.py with llama-cpp-python 0.3.36).
#[test]
fn ids_match_llama_cpp() {
    let Some(g) = gemma() else { return };
    let t = Tokenizer::from_gguf(&g).unwrap();
    let refs = include_str!("data/gemma3_tokens.json");
    let mut checked = 0;
    for text in TEXTS {
        // The JSON holds each text (escaped as JSON) followed by its ids.
        let key = format!("\"text\": {}", json_string(text));
        let at = refs.find(&key).unwrap_or_else(|| panic!("no reference for {text:?}"));
        let rest = &refs[at..];
        let open = rest.find('[').unwrap();
        let close = rest.find(']').unwrap();
        let want: Vec<u32> = rest[open + 1..close]
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        assert_eq!(t.encode(text, true), want, "{text:?}");
        checked += 1;
    }
    assert_eq!(checked, TEXTS.len());
}

/// A JSON string literal as Python's json.dump(ensure_ascii=False) writes it.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
