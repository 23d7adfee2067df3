//! Decoder LLMs: a GGUF model compiled once, a KV cache owned by the model, prefill and
//! token-by-token decode through the same compiled graph, sampling, and streaming.
//!
//! ```no_run
//! use tessera_runtime::llm::{Llm, LlmOptions, Sampling};
//!
//! let mut llm = Llm::from_gguf("gemma-3-270m-q4_k_m.gguf", &LlmOptions::default())?;
//! let stats = llm.generate("The capital of France is", 32, &Sampling::greedy(), |text| {
//!     print!("{text}");
//!     true // keep going
//! })?;
//! eprintln!("\n{:.1} tokens/s", stats.decode_tokens_per_s());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The graph ([`tessera_compiler::llm`]) takes the new tokens, their positions, the sliding-
//! window mask and the cached keys and values, and returns the logits and the new keys and
//! values, which [`Llm`] appends to its cache. The cache is allocated once, to the context
//! length, as f32 `[context, kv_heads, head_dim]` per layer and per K/V.

use std::path::Path;
use std::time::Instant;

use tessera_compiler::gguf::Gguf;
use tessera_compiler::llm::{self as lower, LlmConfig, Logits, LowerOptions, Numerics};
use tessera_compiler::tokenizer::Tokenizer;
use tessera_ir::{DType, Tensor};

use crate::{Session, SessionError, SessionOptions, Target};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum LlmRunError {
    #[error(transparent)]
    Lower(#[from] lower::LlmError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the context holds {capacity} tokens; {need} are needed (raise --context, up to the model's {train})")]
    ContextFull { need: usize, capacity: usize, train: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// Options for [`Llm::from_gguf`].
#[derive(Clone, Debug)]
pub struct LlmOptions {
    pub target: Target,
    pub threads: usize,
    /// Passes before code generation (as [`SessionOptions::passes`]).
    pub passes: String,
    /// Tokens the KV cache holds (prompt and generated); at most the model's training context.
    pub context: usize,
    /// f32 throughout (the default) or rounded as llama.cpp's CPU backend rounds (8-bit
    /// activation blocks before quantized products, GELU from an f16 table); see [`Numerics`].
    pub numerics: Numerics,
}

impl Default for LlmOptions {
    fn default() -> Self {
        let s = SessionOptions::default();
        LlmOptions {
            target: s.target,
            threads: s.threads,
            passes: s.passes,
            context: 1024,
            numerics: Numerics::default(),
        }
    }
}

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities sum to `top_p` (1: all).
    pub top_p: f32,
    pub seed: u64,
    /// Extra stop tokens (the model's end-of-sequence tokens always stop).
    pub stop: Vec<u32>,
}

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, stop: Vec::new() }
    }
}

/// The figures of one generation.
#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated: Vec<u32>,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// Whether a stop token ended it (rather than the token count or the callback).
    pub stopped: bool,
}

impl GenerateStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s.max(1e-9)
    }

    /// Decode speed over the tokens after the first (whose logits come from the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated.len().saturating_sub(1) as f64 / self.decode_s.max(1e-9)
    }
}

/// How long loading took.
#[derive(Clone, Debug, Default)]
pub struct LlmStartup {
    /// Reading the GGUF file and lowering it (weights regrouped into the IR's layout).
    pub load_ms: f64,
    /// Passes and code generation.
    pub compile_ms: f64,
}

/// What an artifact of a decoder model says about it (section `llm.config`).
#[derive(serde::Serialize, serde::Deserialize)]
struct ArtifactLlm {
    config: LlmConfig,
    file_bytes: u64,
    matrix_bytes: u64,
}

/// Named artifact sections.
pub(crate) type Sections = Vec<(String, Vec<u8>)>;

/// The graph `Llm::from_gguf` compiles (last-position logits, f32 numerics) for a GGUF file,
/// with the artifact sections [`Llm::from_artifact`] reads back.
pub(crate) fn lower_for_artifact(path: &Path) -> Result<(tessera_ir::Graph, Sections), LlmRunError> {
    let gguf = Gguf::open(path).map_err(lower::LlmError::from)?;
    let m = lower::lower(&gguf, &LowerOptions { logits: Logits::Last, numerics: Numerics::default() })?;
    // The tokenizer must build from what the artifact keeps.
    let meta = gguf.metadata_only();
    let check = Gguf::parse(tessera_ir::Blob::from_vec(meta.clone())).map_err(lower::LlmError::from)?;
    Tokenizer::from_gguf(&check).map_err(|e| LlmRunError::Tokenizer(e.to_string()))?;
    let matrix_bytes =
        gguf.tensors.iter().filter(|t| t.ggml_dims.len() == 2 && t.ggml_dims[1] > 1).map(|t| t.bytes).sum();
    let info = ArtifactLlm { config: m.config, file_bytes: gguf.file_bytes(), matrix_bytes };
    let json = serde_json::to_vec(&info).expect("the configuration serializes");
    Ok((m.graph, vec![("llm.config".into(), json), ("llm.gguf".into(), meta)]))
}

/// A small deterministic generator (SplitMix64) for sampling with a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks a token from logits: the first maximum when greedy, otherwise a draw from the
/// temperature-scaled softmax restricted by top-k then top-p.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    let argmax = || (0..logits.len()).fold(0, |b, j| if logits[j] > logits[b] { j } else { b }) as u32;
    if s.temperature <= 0.0 || logits.is_empty() {
        return argmax();
    }
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.top_k > 0 {
        cand.truncate(s.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|&(_, l)| (((l - max) / s.temperature) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|&p| {
                acc += p;
                acc >= s.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        cand.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.next_f64() * total;
    for (i, p) in probs.iter().enumerate() {
        if r < *p {
            return cand[i].0;
        }
        r -= p;
    }
    cand[cand.len() - 1].0
}

/// Cached rows are passed padded to a multiple of this (see [`Llm::inputs_for`]).
const PAD: usize = 64;

/// The KV cache: per layer, keys and values of every position so far. Each vector is
/// reserved for the whole context once (pages are touched as positions fill) and holds at
/// least the rows the next run passes; it moves into that run's input tensor and back, so the
/// cache is never copied to be read.
struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Floats per position (`kv_heads * head_dim`).
    row: usize,
    len: usize,
    capacity: usize,
}

/// A loaded, compiled decoder model with its KV cache.
pub struct Llm {
    pub config: LlmConfig,
    pub tokenizer: Tokenizer,
    /// The graph computing the last position's logits (prefill and decode).
    session: Session,
    cache: KvCache,
    eog: Vec<u32>,
    pub startup: LlmStartup,
    /// The file's size, for the memory figures.
    pub file_bytes: u64,
    /// Bytes of the file's weight matrices: what decoding one token reads from them.
    pub matrix_bytes: u64,
    /// A run's new key and value rows, per layer (k, v), as the program writes them (kept
    /// between decode steps, dropped after a prompt).
    step_kv: Vec<Vec<u8>>,
}

impl Llm {
    /// Reads, lowers and compiles a GGUF model, and allocates its KV cache.
    pub fn from_gguf(path: impl AsRef<Path>, opts: &LlmOptions) -> Result<Llm, LlmRunError> {
        let t0 = Instant::now();
        let gguf = Gguf::open(path.as_ref()).map_err(lower::LlmError::from)?;
        // The architecture and its metadata first: the most basic problem is the one reported.
        let m = lower::lower(&gguf, &LowerOptions { logits: Logits::Last, numerics: opts.numerics })?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| LlmRunError::Tokenizer(e.to_string()))?;
        // What a decoded token reads: every matrix as the file stores it (the tied embedding is
        // the output projection).
        let matrix_bytes =
            gguf.tensors.iter().filter(|t| t.ggml_dims.len() == 2 && t.ggml_dims[1] > 1).map(|t| t.bytes).sum();
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let file_bytes = gguf.file_bytes();
        // The file's mapping and parsed metadata (the vocabulary as 262,144 strings) go before
        // compiling: the lowered graph holds its own copies, and the memory the compiler frees
        // once it has packed the weights is handed back with them.
        drop(gguf);
        let t1 = Instant::now();
        let sopts = SessionOptions {
            target: opts.target,
            threads: opts.threads,
            passes: opts.passes.clone(),
            ..Default::default()
        };
        let session = Session::from_graph(m.graph, &sopts)?;
        let compile_ms = t1.elapsed().as_secs_f64() * 1e3;
        let startup = LlmStartup { load_ms, compile_ms };
        Llm::assemble(m.config, tokenizer, session, opts, startup, file_bytes, matrix_bytes)
    }

    /// Opens an artifact compiled from a GGUF file (`tessera compile model.gguf -o model.tsa`):
    /// its CPU program, configuration and tokenizer; no compiler runs. `opts.threads` and
    /// `opts.context` apply; the passes, target and numerics are the artifact's (f32 numerics).
    pub fn from_artifact(path: impl AsRef<Path>, opts: &LlmOptions) -> Result<Llm, LlmRunError> {
        let path = path.as_ref();
        let t0 = Instant::now();
        let a = crate::artifact::Artifact::open(path).map_err(SessionError::from)?;
        let not_llm = || {
            LlmRunError::Session(SessionError::Import(format!(
                "{}: not a decoder model's artifact (no llm.config section): compile a .gguf file with `tessera compile`",
                path.display()
            )))
        };
        let info: ArtifactLlm = serde_json::from_slice(a.section_bytes("llm.config").ok_or_else(not_llm)?)
            .map_err(|e| LlmRunError::Session(SessionError::Import(format!("{}: llm.config: {e}", path.display()))))?;
        let meta = a.section_bytes("llm.gguf").ok_or_else(not_llm)?;
        let gguf = Gguf::parse(tessera_ir::Blob::from_vec(meta.to_vec())).map_err(lower::LlmError::from)?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| LlmRunError::Tokenizer(e.to_string()))?;
        let session = Session::from_opened_artifact(&a, opts.threads, t0)?;
        let startup = LlmStartup { load_ms: t0.elapsed().as_secs_f64() * 1e3, compile_ms: 0.0 };
        Llm::assemble(info.config, tokenizer, session, opts, startup, info.file_bytes, info.matrix_bytes)
    }

    /// The KV cache and stop tokens around a compiled session.
    fn assemble(
        cfg: LlmConfig,
        tokenizer: Tokenizer,
        session: Session,
        opts: &LlmOptions,
        startup: LlmStartup,
        file_bytes: u64,
        matrix_bytes: u64,
    ) -> Result<Llm, LlmRunError> {
        if opts.context == 0 || opts.context > cfg.n_ctx_train {
            return Err(LlmRunError::ContextFull {
                need: opts.context,
                capacity: cfg.n_ctx_train,
                train: cfg.n_ctx_train,
            });
        }
        let row = cfg.n_head_kv * cfg.head_dim;
        let reserve = || (0..cfg.n_layer).map(|_| Vec::with_capacity(opts.context * row)).collect();
        let cache = KvCache { k: reserve(), v: reserve(), row, len: 0, capacity: opts.context };
        // End of generation: the end-of-sequence token and the chat turn ends the vocabulary has.
        let mut eog: Vec<u32> = tokenizer.eos.into_iter().collect();
        eog.extend(["<end_of_turn>", "<|eot_id|>", "<|im_end|>"].iter().filter_map(|t| tokenizer.id(t)));
        Ok(Llm { config: cfg, tokenizer, session, cache, eog, startup, file_bytes, matrix_bytes, step_kv: Vec::new() })
    }

    /// Tokens in the cache.
    pub fn position(&self) -> usize {
        self.cache.len
    }

    /// Forgets the cached tokens (the next call starts a new sequence).
    pub fn reset(&mut self) {
        self.cache.len = 0;
    }

    /// Bytes of the KV cache as allocated.
    pub fn cache_bytes(&self) -> usize {
        2 * self.config.n_layer * self.cache.capacity * self.cache.row * 4
    }

    /// The compiled session (for profiling its kernels with [`Llm::inputs_for`]).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The graph's inputs for running `tokens` after the cached ones (checked: context, vocabulary).
    /// The cache's rows are copied; [`Llm::eval`] moves them instead.
    pub fn inputs_for(&self, tokens: &[u32]) -> Result<Vec<Tensor>, LlmRunError> {
        let (mut inputs, rows) = self.leading_inputs(tokens)?;
        let (kvh, hd, row) = (self.config.n_head_kv, self.config.head_dim, self.cache.row);
        for l in 0..self.config.n_layer {
            for c in [&self.cache.k[l], &self.cache.v[l]] {
                let mut v = c[..c.len().min(rows * row)].to_vec();
                v.resize(rows * row, 0.0);
                inputs.push(Tensor::from_f32(DType::F32, &[rows, kvh, hd], v).expect("sizes agree"));
            }
        }
        Ok(inputs)
    }

    /// The inputs before the caches (tokens, positions, masks), and the cached rows to pass.
    fn leading_inputs(&self, tokens: &[u32]) -> Result<(Vec<Tensor>, usize), LlmRunError> {
        let (n, past) = (tokens.len(), self.cache.len);
        if n == 0 {
            return Err(LlmRunError::EmptyPrompt);
        }
        if past + n > self.cache.capacity {
            return Err(LlmRunError::ContextFull {
                need: past + n,
                capacity: self.cache.capacity,
                train: self.config.n_ctx_train,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(LlmRunError::BadToken { id, vocab: self.config.vocab });
        }
        let tensor = |dt, dims: &[usize], v: Vec<f32>| Tensor::from_f32(dt, dims, v).expect("sizes agree");
        let mut inputs = vec![
            Tensor::from_i64(DType::I64, &[n], tokens.iter().map(|&t| t as i64).collect()).expect("sizes agree"),
            Tensor::from_i64(DType::I64, &[n], (past..past + n).map(|p| p as i64).collect()).expect("sizes agree"),
        ];
        // The cached rows go in padded to a multiple of PAD (up to the capacity), so the shapes
        // stay the same over PAD decode steps and the compiled program reuses its run plan;
        // the masks hide the padding. Query i (position past + i) sees the key at position p
        // when p <= past + i (and, within a window, past + i - p < window).
        let rows = past.div_ceil(PAD).saturating_mul(PAD).min(self.cache.capacity).max(past);
        let kv = rows + n;
        let key_pos = |j: usize| -> Option<usize> {
            match j {
                j if j < past => Some(j),
                j if j < rows => None,
                j => Some(past + j - rows),
            }
        };
        let mask = |window: usize| -> Vec<f32> {
            (0..n * kv)
                .map(|e| {
                    let (q, j) = (past + e / kv, e % kv);
                    match key_pos(j) {
                        Some(p) if p <= q && q - p < window => 0.0,
                        _ => f32::NEG_INFINITY,
                    }
                })
                .collect()
        };
        inputs.push(tensor(DType::F32, &[n, kv], mask(usize::MAX)));
        if self.config.has_swa() {
            inputs.push(tensor(DType::F32, &[n, kv], mask(self.config.window)));
        }
        Ok((inputs, rows))
    }

    /// Runs `tokens` after the cached ones, appends their keys and values to the cache, and
    /// returns the logits of the last one.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<Vec<f32>, LlmRunError> {
        let mut logits = Vec::new();
        self.eval_into(tokens, &mut logits)?;
        Ok(logits)
    }

    /// [`Llm::eval`] into the caller's vector (resized to the vocabulary). A decode loop that
    /// keeps one vector allocates nothing per token: the outputs (the logits, each layer's new
    /// key and value rows) are written straight from the program's arena into `logits` and
    /// buffers the model keeps, instead of into fresh tensors (whose megabyte of logits, freed
    /// each step, stayed resident in the heap).
    pub fn eval_into(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<(), LlmRunError> {
        let (n, past) = (tokens.len(), self.cache.len);
        let (mut inputs, rows) = self.leading_inputs(tokens)?;
        let lead = inputs.len();
        let (kvh, hd, row) = (self.config.n_head_kv, self.config.head_dim, self.cache.row);
        for l in 0..self.config.n_layer {
            for c in [&mut self.cache.k[l], &mut self.cache.v[l]] {
                // Rows past the cached ones are padding the masks hide (zeros or an earlier
                // sequence's values: finite either way).
                let mut v = std::mem::take(c);
                v.resize(rows * row, 0.0);
                inputs.push(Tensor::from_f32(DType::F32, &[rows, kvh, hd], v).expect("sizes agree"));
            }
        }
        // Every output goes straight from the program's arena into `logits` and the model's
        // key/value buffers (no output tensors).
        logits.resize(self.config.vocab, 0.0);
        self.step_kv.resize(2 * self.config.n_layer, Vec::new());
        for b in &mut self.step_kv {
            b.resize(n * row * 4, 0);
        }
        let mut outs: Vec<&mut [u8]> = Vec::with_capacity(1 + self.step_kv.len());
        // SAFETY: the bytes of the logits' f32 elements, every bit pattern of which is an f32;
        // the slice borrows `logits` mutably for as long as `outs` lives.
        outs.push(unsafe { std::slice::from_raw_parts_mut(logits.as_mut_ptr().cast::<u8>(), logits.len() * 4) });
        outs.extend(self.step_kv.iter_mut().map(|b| b.as_mut_slice()));
        let result = self.session.run_into(&inputs, &mut outs);
        // The cache's vectors come back whatever the run did.
        for (i, t) in inputs.drain(lead..).enumerate() {
            let (l, j) = (i / 2, i % 2);
            let c = if j == 0 { &mut self.cache.k[l] } else { &mut self.cache.v[l] };
            *c = t.into_f32_vec().expect("f32 cache");
        }
        result?;
        for l in 0..self.config.n_layer {
            for (j, c) in [&mut self.cache.k[l], &mut self.cache.v[l]].into_iter().enumerate() {
                if c.len() < (past + n) * row {
                    c.resize((past + n) * row, 0.0);
                }
                let src = &self.step_kv[2 * l + j];
                for (d, b) in c[past * row..(past + n) * row].iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
        self.cache.len = past + n;
        if n > 1 {
            // A prompt's activation arena, its keys and values (megabytes, now copied into the
            // cache) go back to the system rather than stay resident through the decode that
            // follows, whose buffers are a fraction of the size.
            self.step_kv = Vec::new();
            if let Some(p) = self.session.cpu_program() {
                p.release_buffers();
            }
            crate::release_free_memory();
        }
        Ok(())
    }

    /// Generates up to `n` tokens after `prompt` (tokenized with the model's BOS; the cache is
    /// reset first), calling `on_text` with each piece of text as soon as it forms whole UTF-8
    /// characters; `on_text` returning false stops early.
    pub fn generate(
        &mut self,
        prompt: &str,
        n: usize,
        sampling: &Sampling,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerateStats, LlmRunError> {
        let ids = self.tokenizer.encode(prompt, true);
        self.generate_ids(&ids, n, sampling, on_text)
    }

    /// [`Llm::generate`] from token ids.
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        n: usize,
        sampling: &Sampling,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerateStats, LlmRunError> {
        self.reset();
        if prompt.len() + n.saturating_sub(1) > self.cache.capacity {
            return Err(LlmRunError::ContextFull {
                need: prompt.len() + n.saturating_sub(1),
                capacity: self.cache.capacity,
                train: self.config.n_ctx_train,
            });
        }
        let mut rng = Rng::new(sampling.seed);
        let mut stats = GenerateStats { prompt_tokens: prompt.len(), ..Default::default() };
        let t0 = Instant::now();
        let mut logits = Vec::new();
        self.eval_into(prompt, &mut logits)?;
        stats.prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut pending: Vec<u8> = Vec::new();
        for i in 0..n {
            let t = sample(&logits, sampling, &mut rng);
            if self.eog.contains(&t) || sampling.stop.contains(&t) {
                stats.stopped = true;
                break;
            }
            stats.generated.push(t);
            self.tokenizer.piece_bytes(t, &mut pending);
            let whole = match std::str::from_utf8(&pending) {
                Ok(s) => s.len(),
                Err(e) if e.error_len().is_some() => pending.len(), // invalid: print as replacement
                Err(e) => e.valid_up_to(),
            };
            if whole > 0 {
                let text = String::from_utf8_lossy(&pending[..whole]).into_owned();
                pending.drain(..whole);
                if !on_text(&text) {
                    break;
                }
            }
            if i + 1 < n {
                self.eval_into(&[t], &mut logits)?;
            }
        }
        if !pending.is_empty() {
            on_text(&String::from_utf8_lossy(&pending));
        }
        stats.decode_s = t1.elapsed().as_secs_f64();
        Ok(stats)
    }
}
