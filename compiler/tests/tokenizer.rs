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
