//! The SentencePiece-style BPE tokenizer GGUF models carry (`tokenizer.ggml.model = "llama"`,
//! as gemma and llama use): spaces become `▁`, the text starts as one symbol per UTF-8
//! character, and adjacent symbols merge while their concatenation is a vocabulary token,
//! highest score first (leftmost on ties), so every merged symbol is a token; a character no
//! token covers becomes its UTF-8 bytes as `<0xXX>` tokens. Before that, the text is split
//! around every occurrence of a user-defined token (type 4: gemma's runs of spaces and
//! newlines), longest first, and those become their own ids. This is llama.cpp's procedure,
//! so the ids match llama.cpp's for the same file.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::gguf::{Gguf, GgufError, MetaValue};

/// The vocabulary, stored flat (gemma's 262,144 tokens take 5 MB, where a `String` per token
/// and a `HashMap` from text to id took 27 MB of the process's resident memory): one string of
/// every token's text, the end of each, and the ids sorted by text for lookups.
struct Vocab {
    /// Every token's text, one after another: token `i` is `text[ends[i - 1]..ends[i]]`.
    text: String,
    ends: Vec<u32>,
    /// Token ids in order of their text (bytewise), equal texts by id: a lookup finds the
    /// first id of a duplicated text, as llama.cpp's map does.
    by_text: Vec<u32>,
}

impl Vocab {
    fn new(text: String, ends: Vec<u32>) -> Vocab {
        let mut v = Vocab { text, ends, by_text: Vec::new() };
        let mut by_text: Vec<u32> = (0..v.ends.len() as u32).collect();
        by_text.sort_unstable_by(|&a, &b| v.piece(a).cmp(v.piece(b)).then(a.cmp(&b)));
        v.by_text = by_text;
        v
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The text of token `id` (< the vocabulary size).
    fn piece(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    fn id(&self, token: &str) -> Option<u32> {
        let k = self.by_text.partition_point(|&i| self.piece(i) < token);
        self.by_text.get(k).copied().filter(|&i| self.piece(i) == token)
    }
}

/// A tokenizer read from a GGUF file's `tokenizer.ggml.*` metadata.
pub struct Tokenizer {
    vocab: Vocab,
    scores: Vec<f32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    add_space_prefix: bool,
    /// `<0xXX>` byte tokens, by byte.
    bytes: Vec<Option<u32>>,
    /// User-defined tokens (matched in the raw text before merging), longest first.
    user_defined: Vec<u32>,
}

/// A candidate merge of the symbols at `left` and `right`.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Higher score first; on a tie, the leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

/// A symbol of the text being merged: a byte range, and its live neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, GgufError> {
        let bad = |key: &str, message: &str| GgufError::BadMetadata { key: key.into(), message: message.into() };
        let model = g.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
        if model != "llama" {
            return Err(bad(
                "tokenizer.ggml.model",
                &format!("{model:?}: only the SentencePiece \"llama\" tokenizer is supported"),
            ));
        }
        let Some(MetaValue::Array(toks)) = g.get("tokenizer.ggml.tokens") else {
            return Err(bad("tokenizer.ggml.tokens", "missing"));
        };
        let mut text = String::new();
        let mut ends = Vec::with_capacity(toks.len());
        for t in toks {
            text.push_str(t.as_str().ok_or_else(|| bad("tokenizer.ggml.tokens", "not all strings"))?);
            ends.push(u32::try_from(text.len()).map_err(|_| bad("tokenizer.ggml.tokens", "over 4 GiB of text"))?);
        }
        let vocab = Vocab::new(text, ends);
        let n = vocab.len();
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
            Some(MetaValue::Array(s)) if s.len() == n => s
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("tokenizer.ggml.scores", "not all numbers"))?,
            Some(_) => return Err(bad("tokenizer.ggml.scores", "not one number per token")),
            None => vec![0.0; n],
        };
        let bytes = (0..256).map(|b| vocab.id(&format!("<0x{b:02X}>"))).collect();
        let id = |key: &str| -> Result<Option<u32>, GgufError> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < n => Ok(Some(i as u32)),
                    _ => Err(bad(key, "not a token id")),
                },
            }
        };
        // Token types: 4 is user-defined.
        let mut user_defined: Vec<u32> = match g.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(t)) if t.len() == n => {
                (0..t.len() as u32).filter(|&i| t[i as usize].as_u64() == Some(4)).collect()
            }
            Some(_) => return Err(bad("tokenizer.ggml.token_type", "not one type per token")),
            None => Vec::new(),
        };
        user_defined.retain(|&i| !vocab.piece(i).is_empty());
        user_defined.sort_by_key(|&i| std::cmp::Reverse(vocab.piece(i).len()));
        let flag = |key: &str, default: bool| match g.get(key) {
            Some(MetaValue::Bool(b)) => *b,
            _ => default,
        };
        Ok(Tokenizer {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token", true),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
            vocab,
            scores,
            bytes,
            user_defined,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.vocab.len()).then(|| self.vocab.piece(id))
    }

    /// The ids of `text` (with BOS first when the model asks for it and `bos` is true).
    pub fn encode(&self, text: &str, bos: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if bos && self.add_bos {
            out.extend(self.bos);
        }
        // Split out user-defined tokens, longest first, each occurrence left to right.
        enum Frag<'t> {
            Text(&'t str),
            Token(u32),
        }
        let mut frags = vec![Frag::Text(text)];
        for &id in &self.user_defined {
            let pat = self.vocab.piece(id);
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                let Frag::Text(mut rest) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = rest.find(pat) {
                    if at > 0 {
                        next.push(Frag::Text(&rest[..at]));
                    }
                    next.push(Frag::Token(id));
                    rest = &rest[at + pat.len()..];
                }
                if !rest.is_empty() {
                    next.push(Frag::Text(rest));
                }
            }
            frags = next;
        }
        for (i, f) in frags.into_iter().enumerate() {
            match f {
                Frag::Token(id) => out.push(id),
                // The space prefix goes before the first fragment only.
                Frag::Text(t) => self.encode_text(t, i == 0 && self.add_space_prefix, &mut out),
            }
        }
        out
    }

    /// One fragment of text without user-defined tokens, merged into tokens.
    fn encode_text(&self, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut s = String::with_capacity(text.len() + 3);
        if space_prefix {
            s.push(' ');
        }
        s.push_str(text);
        let s = s.replace(' ', "\u{2581}");
        // One symbol per character.
        let mut syms: Vec<Symbol> = Vec::new();
        for (i, (start, c)) in s.char_indices().enumerate() {
            syms.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: None });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Bigram>, syms: &[Symbol], left: usize, right: usize| {
            let (a, b) = (syms[left], syms[right]);
            let piece = &s[a.start..b.start + b.len];
            if let Some(id) = self.id(piece) {
                heap.push(Bigram { left, right, score: self.scores[id as usize], len: piece.len() });
            }
        };
        for i in 1..syms.len() {
            push(&mut heap, &syms, i - 1, i);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            // Stale: one side changed since the bigram was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.len || l.next != Some(bg.right) {
                continue;
            }
            // The right symbol's text joins the left's; the right one disappears.
            syms[bg.left].len += r.len;
            syms[bg.left].next = r.next;
            syms[bg.right].len = 0;
            if let Some(n) = r.next {
                syms[n].prev = Some(bg.left);
            }
            if let Some(p) = syms[bg.left].prev {
                push(&mut heap, &syms, p, bg.left);
            }
            if let Some(n) = syms[bg.left].next {
                push(&mut heap, &syms, bg.left, n);
            }
        }
        // Every merged symbol is a token; a lone character that is not becomes its bytes.
        let mut i = if syms.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            let sym = syms[k];
            let piece = &s[sym.start..sym.start + sym.len];
            match self.id(piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.bytes[b as usize])),
            }
            i = sym.next;
        }
    }

    /// The text of `ids`: `▁` back to spaces, byte tokens back to bytes, control tokens
    /// dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.piece_bytes(id, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Appends the bytes token `id` stands for (see [`Tokenizer::decode`]); a byte token may be
    /// part of a multi-byte character, so a streaming caller prints only whole characters.
    pub fn piece_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(t) = self.token(id) else { return };
        if let Some(b) = self.bytes.iter().position(|x| *x == Some(id)) {
            out.push(b as u8);
        } else if Some(id) != self.bos && Some(id) != self.eos {
            out.extend(t.replace('\u{2581}', " ").as_bytes());
        }
    }

    /// The id of a token given by its text (`<end_of_turn>`), if the vocabulary has it.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.vocab.id(token)
    }
}
