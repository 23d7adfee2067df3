//! The GGUF reader on the real gemma-3-270m file and on crafted bad files: every malformed
//! input is a typed error naming the place, never a panic or a giant allocation.

use std::path::PathBuf;
use tessera_compiler::gguf::{GgmlType, Gguf, GgufError, MetaValue};
use tessera_ir::Blob;

fn gemma() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/gemma-3-270m-q4_k_m.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("\n*** SKIPPED: no .cache/models/gemma-3-270m-q4_k_m.gguf; run scripts/fetch_models.sh ***\n");
        None
    }
}

#[test]
fn reads_gemma_3_270m() {
    let Some(path) = gemma() else { return };
    let g = Gguf::open(&path).unwrap();
    assert_eq!((g.version, g.alignment, g.tensors.len()), (3, 32, 236));
    assert_eq!(g.architecture(), Some("gemma3"));
    // MODELS.md: 18 blocks, width 640, FFN 2048, 4 query heads sharing 1 KV head of 256,
    // RoPE base 1e6, sliding window 512, vocabulary 262,144.
    let arch = |k: &str| g.arch_u64(k).unwrap();
    assert_eq!(arch("block_count"), 18);
    assert_eq!(arch("embedding_length"), 640);
    assert_eq!(arch("feed_forward_length"), 2048);
    assert_eq!(arch("attention.head_count"), 4);
    assert_eq!(arch("attention.head_count_kv"), 1);
    assert_eq!(arch("attention.key_length"), 256);
    assert_eq!(arch("attention.sliding_window"), 512);
    assert_eq!(g.get("gemma3.rope.freq_base").and_then(MetaValue::as_f64), Some(1e6));
    match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(t)) => {
            assert_eq!(t.len(), 262_144);
            assert_eq!(t[2].as_str(), Some("<bos>"));
        }
        other => panic!("tokens: {other:?}"),
    }
    let mut types: Vec<GgmlType> = g.tensors.iter().map(|t| t.ty).collect();
    types.sort_by_key(|t| t.name());
    types.dedup();
    assert_eq!(types, [GgmlType::F32, GgmlType::Q4_K, GgmlType::Q5_0, GgmlType::Q6_K, GgmlType::Q8_0]);
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!((emb.ty, emb.shape()), (GgmlType::Q8_0, vec![262_144, 640]));
    assert_eq!(emb.bytes, 262_144 * 640 / 32 * 34);
    // Tensors lie in the file, in order, without overlapping.
    let mut spans: Vec<(u64, u64)> = g.tensors.iter().map(|t| (t.offset, t.offset + t.bytes)).collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    assert!(spans.last().unwrap().1 <= g.file_bytes());
    assert_eq!(g.tensor_data(emb).len() as u64, emb.bytes);
}

/// A small GGUF image: metadata `entries` (already encoded) and `tensors` (name, dims, type id,
/// offset), with `data` bytes after the aligned data section start.
fn image(version: u32, entries: &[Vec<u8>], tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((entries.len() as u64).to_le_bytes());
    for e in entries {
        b.extend(e);
    }
    for (name, dims, ty, off) in tensors {
        b.extend(string(name));
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(vec![7u8; data]);
    b
}

fn string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn entry(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = string(key);
    b.extend(ty.to_le_bytes());
    b.extend(value);
    b
}

fn parse(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
    Gguf::parse(Blob::from_vec(bytes))
}

fn good() -> Vec<u8> {
    let arch = entry("general.architecture", 8, &string("llama"));
    let mut arr = 8u32.to_le_bytes().to_vec();
    arr.extend(2u64.to_le_bytes());
    arr.extend(string("a"));
    arr.extend(string("b"));
    let toks = entry("tokenizer.ggml.tokens", 9, &arr);
    let n = entry("llama.block_count", 4, &3u32.to_le_bytes());
    // A 2x32 Q8_0 tensor (2 blocks of 34 bytes) and a 4-float F32 one after it.
    image(3, &[arch, toks, n], &[("w", &[32, 2], 8, 0), ("b", &[4], 0, 96)], 96 + 16)
}

#[test]
fn reads_a_crafted_file() {
    let g = parse(good()).unwrap();
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.arch_u64("block_count").unwrap(), 3);
    assert_eq!(g.tensors[0].shape(), vec![2, 32]);
    assert_eq!(g.tensors[0].bytes, 68);
    assert_eq!(g.tensors[1].bytes, 16);
    assert_eq!(format!("{}", g.get("tokenizer.ggml.tokens").unwrap()), "[2 values: \"a\", \"b\"]");
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = good();
    for cut in 0..bytes.len() {
        match parse(bytes[..cut].to_vec()) {
            Err(GgufError::Truncated { .. } | GgufError::OutOfFile { .. } | GgufError::TooMany { .. }) => {}
            Err(GgufError::BadMagic { .. }) if cut < 4 => {}
            other => panic!("cut at {cut}: {:?}", other.map(|g| g.tensors.len())),
        }
    }
}

#[test]
fn bad_files_name_the_problem() {
    let err = |b: Vec<u8>| parse(b).err().map(|e| e.to_string()).unwrap_or_else(|| "no error".into());
    let mut b = good();
    b[0] = b'X';
    assert!(err(b).contains("not a GGUF file"));
    let mut b = good();
    b[4] = 1;
    assert!(err(b).contains("version 1"));
    // A tensor count no file could hold is refused before any allocation.
    let mut b = good();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(b).contains("the tensor count is 18446744073709551615"), "{}", err(good()));
    // An array longer than the file.
    let mut arr = 0u32.to_le_bytes().to_vec();
    arr.extend((1u64 << 40).to_le_bytes());
    let e = err(image(3, &[entry("x", 9, &arr)], &[], 0));
    assert!(e.contains("the length of \"x\""), "{e}");
    assert!(err(image(3, &[entry("x", 13, &[0])], &[], 0)).contains("value type 13"));
    assert!(err(image(3, &[entry("x", 7, &[2])], &[], 0)).contains("bool byte 2"));
    let e = err(image(3, &[entry("general.alignment", 4, &48u32.to_le_bytes())], &[], 0));
    assert!(e.contains("general.alignment") && e.contains("power of two"), "{e}");
    // Tensors: past the end, a dim not a whole number of blocks, a type Tessera lacks,
    // a misaligned offset.
    let e = err(image(3, &[], &[("w", &[32, 4], 8, 0)], 100));
    assert!(e.contains("\"w\" spans bytes") && e.contains("the file has"), "{e}");
    let e = err(image(3, &[], &[("w", &[33, 2], 8, 0)], 100));
    assert!(e.contains("not a multiple of Q8_0's 32-element blocks"), "{e}");
    let e = err(image(3, &[], &[("w", &[256], 16, 0)], 100));
    assert!(e.contains("\"w\"") && e.contains("IQ"), "{e}");
    let e = err(image(3, &[], &[("w", &[4], 0, 8)], 100));
    assert!(e.contains("not a multiple of the alignment"), "{e}");
}

/// tessera_ir's word-wise FNV-1a, as scripts/gguf_refs.py computes it.
fn fnv_words(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h ^= u64::from_le_bytes(w.try_into().unwrap());
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    for &b in words.remainder() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The smallest tensor of each type in gemma-3-270m dequantizes bit for bit as the `gguf`
/// package's reference does (references from scripts/gguf_refs.py, made by fetch_models.sh).
#[test]
fn dequantization_matches_the_gguf_reference_bit_for_bit() {
    let Some(path) = gemma() else { return };
    let refs = path.with_file_name("gemma-3-270m-q4_k_m.dequant.json");
    let Ok(text) = std::fs::read_to_string(&refs) else {
        eprintln!("\n*** SKIPPED: no {}; run scripts/fetch_models.sh ***\n", refs.display());
        return;
    };
    let g = Gguf::open(&path).unwrap();
    // A small JSON reader for this one file's shape: "name", "type", "elements", "fnv", "first".
    let field = |obj: &str, key: &str| -> String {
        let at = obj.find(&format!("\"{key}\": ")).unwrap_or_else(|| panic!("{key} in {obj}")) + key.len() + 4;
        let rest = &obj[at..];
        let end = if rest.starts_with('[') { rest.find(']').unwrap() + 1 } else { rest.find([',', '\n']).unwrap() };
        rest[..end].trim().trim_matches('"').to_string()
    };
    let (tensors, synthetic) = text.split_at(text.find("\"synthetic\"").expect("synthetic references"));
    let mut checked = Vec::new();
    for obj in tensors.split('{').skip(2) {
        let name = field(obj, "name");
        let t = g.tensor(&name).unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!(t.ty.name(), field(obj, "type"));
        let values = tessera_compiler::gguf::dequantize(t.ty, g.tensor_data(t)).unwrap();
        assert_eq!(values.len().to_string(), field(obj, "elements"), "{name}");
        let first: Vec<f32> = field(obj, "first")
            .trim_matches(['[', ']'])
            .split(',')
            .map(|v| v.trim().parse::<f64>().unwrap() as f32)
            .collect();
        assert_eq!(&values[..8], &first[..], "{name}");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(format!("{:016x}", fnv_words(&bytes)), field(obj, "fnv"), "{name} ({})", t.ty);
        checked.push(t.ty.name());
    }
    checked.sort();
    assert_eq!(checked, ["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]);
    // Seeded random blocks of every format Tessera dequantizes, the model's or not.
    let mut formats = Vec::new();
    for obj in synthetic.split('{').skip(1) {
        let ty = field(obj, "type");
        let t = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::TQ1_0,
            GgmlType::TQ2_0,
        ]
        .into_iter()
        .find(|t| t.name() == ty)
        .unwrap_or_else(|| panic!("unknown type {ty}"));
        let hex = field(obj, "hex");
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let values = tessera_compiler::gguf::dequantize(t, &bytes).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(values.len().to_string(), field(obj, "elements"), "{ty}");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(format!("{:016x}", fnv_words(&bytes)), field(obj, "fnv"), "{ty}: first {:?}", &values[..4]);
        formats.push(ty);
    }
    assert_eq!(formats.len(), 11, "{formats:?}");
}

/// The tokenizer on a crafted vocabulary: lookups by text find the first of duplicated texts
/// (as llama.cpp's map does), merges follow the scores of the ids found, and a character no
/// token covers falls back to its byte token.
#[test]
fn tokenizer_from_a_crafted_vocabulary() {
    let array = |ty: u32, items: &[Vec<u8>]| {
        let mut a = ty.to_le_bytes().to_vec();
        a.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|i| a.extend(i));
        a
    };
    let vocab = ["<unk>", "<s>", "</s>", "a", "b", "ab", "ab", "\u{2581}", "\u{2581}ab", "<0x63>"];
    let scores = [0.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 5.0, 0.0, 2.0, 0.0];
    let entries = [
        entry("general.architecture", 8, &string("llama")),
        entry("tokenizer.ggml.model", 8, &string("llama")),
        entry("tokenizer.ggml.tokens", 9, &array(8, &vocab.map(string))),
        entry("tokenizer.ggml.scores", 9, &array(6, &scores.map(|s| s.to_le_bytes().to_vec()))),
        entry("tokenizer.ggml.bos_token_id", 4, &1u32.to_le_bytes()),
    ];
    let t = tessera_compiler::tokenizer::Tokenizer::from_gguf(&parse(image(3, &entries, &[], 0)).unwrap()).unwrap();
    assert_eq!(t.vocab_size(), 10);
    assert_eq!((t.id("ab"), t.id("\u{2581}ab"), t.id("abc"), t.id("")), (Some(5), Some(8), None, None));
    assert_eq!(t.token(6), Some("ab"));
    assert_eq!(t.token(10), None);
    let ids = t.encode("ab abc", true);
    assert_eq!(ids, [1, 8, 8, 9]);
    assert_eq!(t.decode(&ids), " ab abc");
}
