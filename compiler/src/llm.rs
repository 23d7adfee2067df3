//! Decoder LLMs from GGUF: the `gemma3` and `llama` architectures lowered into one IR graph
//! that serves prefill (many tokens) and decode (one token) alike.
//!
//! The graph (`seq` new tokens after `past` cached ones, `kv = past + seq`):
//! - inputs: `tokens: i64[seq]`, `positions: i64[seq]`, `mask: f32[seq, kv]` (0 where a query
//!   may see a key, -inf elsewhere: causal), for models with sliding-window layers `mask_swa`
//!   (the same, within the window), then per layer `l` the cached keys and values `cache.k.l`,
//!   `cache.v.l`: `f32[past, kv_heads, head_dim]` (position-major, so the first rows of a cache
//!   preallocated to the context length are one contiguous range). Key column `j` of the masks
//!   is cache row `j` for `j < past` and new token `j - past` after: the masks alone say what
//!   is visible, so a runtime may pass more cache rows than it filled (padding, masked out) to
//!   keep shapes, and the compiled plans for them, the same across decode steps;
//! - outputs: `logits: f32[seq or 1, vocab]` (only the last position's with
//!   [`Logits::Last`]), then per layer the new rows `k.l`, `v.l`: `f32[seq, kv_heads,
//!   head_dim]`, which the runtime appends to its cache.
//!
//! Weights stay quantized: each GGUF matrix (`[n_out, k]`, k contiguous) becomes one `[k,
//! n_out]` constant of its narrowest code type (i4, u4, i8 or ternary; see
//! [`crate::gguf::Codes`]) with a blocked `quant` along axis 0 (scale and, for the K-quants and
//! `_1` formats, offset per block), used by `qmatmul`; its dequantized values are exactly
//! ggml's. The token embedding is read by `gather` from the same codes and scales (no f32
//! copy); a tied output projection reuses that constant.
//!
//! Semantics follow llama.cpp's graphs (`src/models/gemma3.cpp`, `llama.cpp`'s llama graph):
//! gemma3 scales the embedding by `sqrt(n_embd)`, normalizes q and k per head (RMSNorm), uses
//! NEOX-style RoPE with base 10000 on its sliding-window layers and the file's base on every
//! sixth (global) layer, scales q by `1/sqrt(head_dim)`, normalizes each sub-layer's output
//! again before the residual add, and gates the FFN with tanh-GELU; llama uses interleaved
//! (`NORM`) RoPE, SiLU gating and no extra norms.

use crate::gguf::{self, GgmlType, Gguf, GgufError, MetaValue, TensorInfo};
use std::collections::HashMap;
use tessera_ir::{
    BinaryOp, ConstData, DType, Dim, FakeQuantFormat, Graph, Op, Quant, QuantGranularity, Shape, TargetDim, TensorType,
    UnaryOp, Value,
};

/// Why a GGUF model could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("architecture {0:?} is not supported (gemma3 and llama are)")]
    Architecture(String),
    #[error("metadata {key:?}: {message}")]
    Metadata { key: String, message: String },
    #[error("tensor {name:?}: {message}")]
    Tensor { name: String, message: String },
    #[error("building the graph: {0}")]
    Build(String),
}

/// The architecture family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    Gemma3,
    Llama,
}

/// What a model's metadata says, as the lowering uses it (stored in artifacts as JSON).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlmConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// The context length the model was trained for.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Linear RoPE scaling of the global layers (`1 / rope.scaling.factor`; 1 without one).
    pub rope_scale: f32,
    /// RoPE base of the sliding-window layers.
    pub rope_base_swa: f32,
    /// Sliding window (0: none) and which layers use it.
    pub window: usize,
    pub swa_layers: Vec<bool>,
    /// The factor applied to q before attention.
    pub attn_scale: f32,
    /// Final logit soft-capping (`cap * tanh(x / cap)`), when the metadata sets one.
    pub softcap: Option<f32>,
}

fn meta_key<'a>(g: &'a Gguf, key: &str) -> Result<&'a MetaValue, LlmError> {
    g.get(key).ok_or_else(|| LlmError::Metadata { key: key.into(), message: "missing".into() })
}

fn meta_u(g: &Gguf, key: &str) -> Result<usize, LlmError> {
    meta_key(g, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| LlmError::Metadata { key: key.into(), message: "is not an unsigned integer".into() })
}

fn meta_f(g: &Gguf, key: &str) -> Result<f32, LlmError> {
    meta_key(g, key)?
        .as_f64()
        .map(|v| v as f32)
        .ok_or_else(|| LlmError::Metadata { key: key.into(), message: "is not a number".into() })
}

impl LlmConfig {
    /// Reads the configuration; an unknown architecture or a missing key is an error naming it.
    pub fn of(g: &Gguf) -> Result<LlmConfig, LlmError> {
        let arch_name = g.architecture().unwrap_or("(none)").to_string();
        let arch = match arch_name.as_str() {
            "gemma3" => Arch::Gemma3,
            "llama" => Arch::Llama,
            _ => return Err(LlmError::Architecture(arch_name)),
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_layer = meta_u(g, &k("block_count"))?;
        let n_embd = meta_u(g, &k("embedding_length"))?;
        let n_head = meta_u(g, &k("attention.head_count"))?;
        let n_head_kv = match g.get(&k("attention.head_count_kv")) {
            Some(_) => meta_u(g, &k("attention.head_count_kv"))?,
            None => n_head,
        };
        let head_dim = match g.get(&k("attention.key_length")) {
            Some(_) => meta_u(g, &k("attention.key_length"))?,
            None => n_embd / n_head.max(1),
        };
        if let Some(v) = g.get(&k("attention.value_length")) {
            if v.as_u64() != Some(head_dim as u64) {
                return Err(LlmError::Metadata {
                    key: k("attention.value_length"),
                    message: format!("{v} differs from the key length {head_dim} (not supported)"),
                });
            }
        }
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) || head_dim % 2 != 0 {
            return Err(LlmError::Metadata {
                key: k("attention.head_count_kv"),
                message: format!("{n_head} query heads cannot share {n_head_kv} KV heads of {head_dim}"),
            });
        }
        let emb = g
            .tensor("token_embd.weight")
            .ok_or_else(|| LlmError::Tensor { name: "token_embd.weight".into(), message: "missing".into() })?;
        let vocab = emb.shape()[0] as usize;
        let rope_base = match g.get(&k("rope.freq_base")) {
            Some(_) => meta_f(g, &k("rope.freq_base"))?,
            None => 10000.0,
        };
        let rope_scale = match g.get(&k("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => 1.0,
            Some("linear") => 1.0 / meta_f(g, &k("rope.scaling.factor"))?,
            Some(other) => {
                return Err(LlmError::Metadata {
                    key: k("rope.scaling.type"),
                    message: format!("{other:?} RoPE scaling is not supported (linear is)"),
                })
            }
        };
        let window = match g.get(&k("attention.sliding_window")) {
            Some(_) if arch == Arch::Gemma3 => meta_u(g, &k("attention.sliding_window"))?,
            _ => 0,
        };
        // llama.cpp's gemma3: every sixth layer is global, the others slide.
        let swa_layers = (0..n_layer).map(|l| window > 0 && l % 6 < 5).collect();
        let softcap = match g.get(&k("final_logit_softcapping")) {
            Some(_) => Some(meta_f(g, &k("final_logit_softcapping"))?).filter(|c| *c > 0.0),
            None => None,
        };
        let rms_key = k("attention.layer_norm_rms_epsilon");
        Ok(LlmConfig {
            arch,
            n_layer,
            n_embd,
            n_ff: meta_u(g, &k("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim,
            vocab,
            n_ctx_train: meta_u(g, &k("context_length"))?,
            rms_eps: meta_f(g, &rms_key)?,
            rope_base,
            rope_scale,
            rope_base_swa: 10000.0,
            window,
            swa_layers,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            softcap,
        })
    }

    pub fn has_swa(&self) -> bool {
        self.swa_layers.iter().any(|&s| s)
    }
}

/// Which positions' logits the graph computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every position's (for checking against references).
    All,
    /// The last position's only (generation): the output projection runs on one row.
    Last,
}

/// How closely the graph follows llama.cpp's CPU arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Numerics {
    /// f32 throughout: exact products of the activations with the weights' values, exact GELU
    /// (what the weights define; llama.cpp on an F32 copy of the weights agrees with it to
    /// 2e-4 of the logit range).
    #[default]
    Exact,
    /// llama.cpp's CPU arithmetic: each matrix product's activations rounded to the format
    /// ggml multiplies the weight's type with (`fake_quant q8_0` before Q4_0/Q5_0/Q8_0 weights,
    /// `q8_k` before K-quant and ternary ones, f16/bf16 before f16/bf16 weights; f32 weights
    /// take f32), and GELU read from ggml's f16 table (input and result rounded to f16; 0 at or
    /// below -10, the input at or above 10). Not reproduced: for Q4_1/Q5_1 weights ggml also
    /// rounds each activation block's sum to f16. The rounding makes the logits sensitive to
    /// the order of float sums (a value near a rounding boundary flips a whole 8-bit step):
    /// on gemma-3-270m the CPU target and the interpreter, both in this mode, differ by up to
    /// 2.5% of the logit range, as much as either differs from llama.cpp, so this mode gives
    /// llama.cpp's error statistics, not its exact text.
    Ggml,
}

impl Numerics {
    /// The activation rounding ggml applies before a product with a weight of type `ty`.
    fn rounding(self, ty: GgmlType) -> Option<Rounding> {
        use GgmlType as T;
        if self == Numerics::Exact {
            return None;
        }
        match ty {
            T::F16 => Some(Rounding::Cast(DType::F16)),
            T::BF16 => Some(Rounding::Cast(DType::BF16)),
            T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q8_0 | T::Q8_1 => Some(Rounding::Blocks(FakeQuantFormat::Q8_0)),
            T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K | T::Q8_K | T::TQ1_0 | T::TQ2_0 => {
                Some(Rounding::Blocks(FakeQuantFormat::Q8K))
            }
            T::F32 | T::F64 | T::I8 | T::I16 | T::I32 | T::I64 => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rounding {
    Cast(DType),
    Blocks(FakeQuantFormat),
}

/// How to lower a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowerOptions {
    pub logits: Logits,
    pub numerics: Numerics,
}

impl LowerOptions {
    pub fn new(logits: Logits) -> LowerOptions {
        LowerOptions { logits, numerics: Numerics::default() }
    }
}

/// A lowered model.
pub struct LlmGraph {
    pub config: LlmConfig,
    pub graph: Graph,
}

/// Lowers a GGUF decoder model into the IR (see the module docs for the graph's signature).
pub fn lower(g: &Gguf, opts: &LowerOptions) -> Result<LlmGraph, LlmError> {
    let cfg = LlmConfig::of(g)?;
    let mut b = Builder {
        gguf: g,
        g: Graph::new(g.get("general.name").and_then(|v| v.as_str()).unwrap_or("model")),
        numerics: opts.numerics,
        weight_types: HashMap::new(),
        rounded: HashMap::new(),
        scalars: HashMap::new(),
    };
    let graph = b.build(&cfg, opts.logits)?;
    Ok(LlmGraph { config: cfg, graph })
}

/// A weight matrix as [`Builder::decode_matrix`] reads it.
enum Matrix {
    /// A float matrix, already a constant.
    Plain(Value),
    Quantized(Decoded),
}

/// A block-quantized matrix `[k, n_out]`: codes row-major, block parameters `[k / block, n_out]`.
struct Decoded {
    codes: Vec<i8>,
    scale: Vec<f32>,
    offset: Option<Vec<f32>>,
    dtype: DType,
    block: usize,
    n_out: usize,
    k: usize,
    ty: GgmlType,
}

impl Decoded {
    /// Matrices of one form (code type, block, parameters) with the same `k`, as one matrix
    /// whose columns are theirs side by side.
    fn side_by_side(parts: &[&Decoded]) -> Decoded {
        let first = parts[0];
        let (k, nb) = (first.k, first.k / first.block);
        let n: usize = parts.iter().map(|d| d.n_out).sum();
        let mut codes = vec![0i8; k * n];
        let mut scale = vec![0f32; nb * n];
        let mut offset = first.offset.as_ref().map(|_| vec![0f32; nb * n]);
        let mut c0 = 0;
        for d in parts {
            let w = d.n_out;
            for kk in 0..k {
                codes[kk * n + c0..kk * n + c0 + w].copy_from_slice(&d.codes[kk * w..(kk + 1) * w]);
            }
            for b in 0..nb {
                scale[b * n + c0..b * n + c0 + w].copy_from_slice(&d.scale[b * w..(b + 1) * w]);
                if let (Some(o), Some(src)) = (offset.as_mut(), d.offset.as_ref()) {
                    o[b * n + c0..b * n + c0 + w].copy_from_slice(&src[b * w..(b + 1) * w]);
                }
            }
            c0 += w;
        }
        Decoded { codes, scale, offset, dtype: first.dtype, block: first.block, n_out: n, k, ty: first.ty }
    }
}

struct Builder<'a> {
    gguf: &'a Gguf,
    g: Graph,
    numerics: Numerics,
    /// The GGUF type of each weight constant, which says how its activations are rounded.
    weight_types: HashMap<Value, GgmlType>,
    /// Rounded activations already built, shared by the products that read them (q, k, v).
    rounded: HashMap<(Value, Rounding), Value>,
    /// Scalar constants by bit pattern ([`Builder::scalar`]).
    scalars: HashMap<u32, Value>,
}

fn sym(s: &str) -> Dim {
    Dim::sym(s)
}

/// The new tokens' count, as a target dim.
fn seq() -> TargetDim {
    TargetDim::Sym("seq".into())
}

fn t_int(v: i64) -> TargetDim {
    TargetDim::Int(v)
}

impl Builder<'_> {
    fn op(&mut self, op: Op, inputs: Vec<Value>) -> Result<Value, LlmError> {
        let name = op.name();
        let mut r = self.g.add_op(op, inputs).map_err(|e| LlmError::Build(format!("{name}: {e}")))?;
        Ok(r.remove(0))
    }

    /// A node whose result type is declared where inference can only say `?` (a concat of
    /// `past` and `seq` rows is `kv` rows; the last row of `seq` is one): the verifier accepts
    /// a declared dim where it infers `?`, and the run checks it against the bound symbol.
    fn op_typed(&mut self, op: Op, inputs: Vec<Value>, ty: TensorType) -> Result<Value, LlmError> {
        let name = op.name();
        let inferred = tessera_ir::infer::infer_types(&self.g, &op, &inputs, None)
            .map_err(|e| LlmError::Build(format!("{name}: {e}")))?;
        if inferred.len() != 1 || inferred[0].rank() != ty.rank() || inferred[0].dtype != ty.dtype {
            return Err(LlmError::Build(format!("{name}: declared {ty}, inferred {:?}", inferred)));
        }
        let n = self.g.add_node(op, inputs, vec![ty]);
        Ok(self.g.node(n).outputs[0])
    }

    fn bin(&mut self, op: BinaryOp, a: Value, b: Value) -> Result<Value, LlmError> {
        self.op(Op::Binary(op), vec![a, b])
    }

    fn un(&mut self, op: UnaryOp, a: Value) -> Result<Value, LlmError> {
        self.op(Op::Unary(op), vec![a])
    }

    fn reshape(&mut self, x: Value, dims: &[TargetDim]) -> Result<Value, LlmError> {
        self.op(Op::Reshape { shape: Some(dims.to_vec()) }, vec![x])
    }

    fn transpose(&mut self, x: Value, perm: &[usize]) -> Result<Value, LlmError> {
        self.op(Op::Transpose { perm: perm.to_vec() }, vec![x])
    }

    fn f32s(&mut self, dims: &[usize], v: &[f32]) -> Value {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.g.add_const(TensorType::with_static(DType::F32, dims), ConstData::from_vec(bytes))
    }

    /// An f32 scalar constant, one per value in the graph (GELU's clamps are used by every layer).
    fn scalar(&mut self, v: f32) -> Value {
        if let Some(&c) = self.scalars.get(&v.to_bits()) {
            return c;
        }
        let c = self.f32s(&[], &[v]);
        self.scalars.insert(v.to_bits(), c);
        c
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, LlmError> {
        self.gguf.tensor(name).ok_or_else(|| LlmError::Tensor { name: name.into(), message: "missing".into() })
    }

    /// A 1-D float tensor (norm weights) as an f32 constant of `n` elements.
    fn vector(&mut self, name: &str, n: usize) -> Result<Value, LlmError> {
        let t = self.info(name)?.clone();
        if t.elements() != n as u64 {
            return Err(LlmError::Tensor {
                name: name.into(),
                message: format!("has shape {:?}, expected [{n}]", t.shape()),
            });
        }
        let v = gguf::dequantize(t.ty, self.gguf.tensor_data(&t))
            .map_err(|m| LlmError::Tensor { name: name.into(), message: m })?;
        Ok(self.f32s(&[n], &v))
    }

    /// A weight matrix `[n_out, k]` as a `[k, n_out]` constant (quantized, see the module docs).
    fn matrix(&mut self, name: &str, n_out: usize, k: usize) -> Result<Value, LlmError> {
        match self.decode_matrix(name, n_out, k)? {
            Matrix::Plain(w) => Ok(w),
            Matrix::Quantized(d) => Ok(self.add_matrix(d)),
        }
    }

    /// `x @ w` for matrices read by the same activations (q, k and v; gate and up). When every
    /// one is block-quantized with the same code type, block and parameters and its activations
    /// are rounded alike, they become one `[k, sum n_out]` constant, their columns side by side,
    /// and one product split back into one result per matrix (fewer, larger kernels; each column
    /// is the same dot product); otherwise one product per matrix. Each matrix is decoded once.
    fn qmm_many(&mut self, x: Value, parts: &[(&str, usize)], k: usize) -> Result<Vec<Value>, LlmError> {
        let mut decoded = Vec::with_capacity(parts.len());
        for &(name, n_out) in parts {
            decoded.push(self.decode_matrix(name, n_out, k)?);
        }
        let quantized: Vec<&Decoded> = decoded
            .iter()
            .filter_map(|m| match m {
                Matrix::Quantized(d) => Some(d),
                Matrix::Plain(_) => None,
            })
            .collect();
        let alike = quantized.len() == decoded.len()
            && quantized.iter().all(|d| {
                let first = quantized[0];
                d.dtype == first.dtype
                    && d.block == first.block
                    && d.offset.is_some() == first.offset.is_some()
                    && self.numerics.rounding(d.ty) == self.numerics.rounding(first.ty)
            });
        if alike {
            let w = self.add_matrix(Decoded::side_by_side(&quantized));
            let y = self.qmm(x, w)?;
            let sizes = parts.iter().map(|p| p.1 as u64).collect();
            return self.g.add_op(Op::Split { axis: 1, sizes }, vec![y]).map_err(LlmError::Build);
        }
        let mut out = Vec::with_capacity(parts.len());
        for m in decoded {
            let w = match m {
                Matrix::Plain(w) => w,
                Matrix::Quantized(d) => self.add_matrix(d),
            };
            out.push(self.qmm(x, w)?);
        }
        Ok(out)
    }

    /// A quantized matrix as IR constants.
    fn add_matrix(&mut self, d: Decoded) -> Value {
        let nb = d.k / d.block;
        let scale = self.f32s(&[nb, d.n_out], &d.scale);
        let offset = d.offset.map(|o| self.f32s(&[nb, d.n_out], &o));
        let quant = Quant {
            granularity: QuantGranularity::PerBlock { axis: 0, size: d.block as u64 },
            scale,
            zero_point: None,
            offset,
        };
        let ty =
            TensorType { dtype: d.dtype, shape: Shape::from_static(&[d.k, d.n_out]), quant: Some(Box::new(quant)) };
        let w = self.g.add_const(ty, ConstData::from_vec(pack(d.dtype, &d.codes)));
        self.weight_types.insert(w, d.ty);
        w
    }

    /// A weight matrix `[n_out, k]` read from the file: an f32 constant (`[k, n_out]`) for
    /// float types, else its codes and block parameters transposed to `[k, n_out]`.
    fn decode_matrix(&mut self, name: &str, n_out: usize, k: usize) -> Result<Matrix, LlmError> {
        let t = self.info(name)?.clone();
        if t.shape() != [n_out as u64, k as u64] {
            return Err(LlmError::Tensor {
                name: name.into(),
                message: format!("has shape {:?}, expected [{n_out}, {k}]", t.shape()),
            });
        }
        let data = self.gguf.tensor_data(&t);
        let row_bytes = data.len() / n_out;
        let bad = |m: String| LlmError::Tensor { name: name.into(), message: m };
        if matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            let v = gguf::dequantize(t.ty, data).map_err(bad)?;
            let mut out = vec![0f32; v.len()];
            for (r, row) in v.chunks_exact(k).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    out[c * n_out + r] = x;
                }
            }
            let w = self.f32s(&[k, n_out], &out);
            self.weight_types.insert(w, t.ty);
            return Ok(Matrix::Plain(w));
        }
        // Codes and parameters transposed: rows of the file become columns. Tiles of 64 file
        // rows are decoded at once and keep the writes of each k row together.
        const TILE: usize = 64;
        let mut codes = vec![0i8; k * n_out];
        let (mut scale, mut offset, mut form) = (Vec::new(), None, None);
        for r0 in (0..n_out).step_by(TILE) {
            let rows = TILE.min(n_out - r0);
            let tile = gguf::decode(t.ty, &data[r0 * row_bytes..(r0 + rows) * row_bytes]).map_err(bad)?;
            let nb = k / tile.block;
            if form.is_none() {
                form = Some((tile.dtype, tile.block));
                scale = vec![0f32; nb * n_out];
                offset = tile.offset.as_ref().map(|_| vec![0f32; nb * n_out]);
            }
            for kk in 0..k {
                let dst = &mut codes[kk * n_out + r0..kk * n_out + r0 + rows];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = tile.codes[j * k + kk];
                }
            }
            for (i, &v) in tile.scale.iter().enumerate() {
                scale[(i % nb) * n_out + r0 + i / nb] = v;
            }
            if let (Some(o), Some(to)) = (offset.as_mut(), tile.offset.as_ref()) {
                for (i, &v) in to.iter().enumerate() {
                    o[(i % nb) * n_out + r0 + i / nb] = v;
                }
            }
        }
        let (dtype, block) = form.ok_or_else(|| bad("has no rows".into()))?;
        Ok(Matrix::Quantized(Decoded { codes, scale, offset, dtype, block, n_out, k, ty: t.ty }))
    }

    fn rms(&mut self, x: Value, name: &str, n: usize, eps: f32) -> Result<Value, LlmError> {
        let w = self.vector(name, n)?;
        self.op(Op::RmsNorm { axis: -1, epsilon: eps }, vec![x, w])
    }

    /// `x @ w`, with `x` rounded first as [`Numerics`] says for `w`'s GGUF type.
    fn qmm(&mut self, x: Value, w: Value) -> Result<Value, LlmError> {
        let rounding = self.weight_types.get(&w).and_then(|&ty| self.numerics.rounding(ty));
        let x = match rounding {
            None => x,
            Some(r) => match self.rounded.get(&(x, r)) {
                Some(&v) => v,
                None => {
                    let v = match r {
                        Rounding::Blocks(format) => self.op(Op::FakeQuant { format }, vec![x])?,
                        Rounding::Cast(to) => {
                            let h = self.op(Op::Cast { to }, vec![x])?;
                            self.op(Op::Cast { to: DType::F32 }, vec![h])?
                        }
                    };
                    self.rounded.insert((x, r), v);
                    v
                }
            },
        };
        self.op(Op::QMatMul, vec![x, w])
    }

    /// Tanh GELU; with [`Numerics::Ggml`] as ggml's f16 table gives it (`GGML_GELU_FP16`).
    fn gelu(&mut self, x: Value) -> Result<Value, LlmError> {
        if self.numerics == Numerics::Exact {
            return self.un(UnaryOp::GeluTanh, x);
        }
        let f16 = |b: &mut Self, v: Value| -> Result<Value, LlmError> {
            let h = b.op(Op::Cast { to: DType::F16 }, vec![v])?;
            b.op(Op::Cast { to: DType::F32 }, vec![h])
        };
        let xh = f16(self, x)?;
        let t = self.un(UnaryOp::GeluTanh, xh)?;
        let t = f16(self, t)?;
        let lo = self.scalar(-10.0);
        let hi = self.scalar(10.0);
        let zero = self.scalar(0.0);
        let below = self.bin(BinaryOp::LessEqual, x, lo)?;
        let t = self.op(Op::Where, vec![below, zero, t])?;
        let above = self.bin(BinaryOp::GreaterEqual, x, hi)?;
        self.op(Op::Where, vec![above, x, t])
    }

    /// `(cos, sin)` of `positions * freq` as `[seq, 1, half]` (broadcast over heads), the
    /// frequencies `base^(-2i/d)` built as ggml does (repeated products of `base^(-2/d)`).
    fn rope_tables(&mut self, pos: Value, half: usize, base: f32, scale: f32) -> Result<(Value, Value), LlmError> {
        let step = base.powf(-2.0 / (2 * half) as f32);
        let mut freq = Vec::with_capacity(half);
        let mut f = scale;
        for _ in 0..half {
            freq.push(f);
            f *= step;
        }
        let freq = self.f32s(&[1, half], &freq);
        let p = self.op(Op::Cast { to: DType::F32 }, vec![pos])?;
        let p = self.reshape(p, &[seq(), t_int(1)])?;
        let theta = self.bin(BinaryOp::Mul, p, freq)?;
        let theta = self.reshape(theta, &[seq(), t_int(1), t_int(half as i64)])?;
        let c = self.un(UnaryOp::Cos, theta)?;
        let s = self.un(UnaryOp::Sin, theta)?;
        Ok((c, s))
    }

    /// RoPE on `x: [seq, heads, d]`: NEOX rotates the pairs `(i, i + d/2)`, NORM `(2i, 2i+1)`.
    fn rope(&mut self, x: Value, cs: (Value, Value), heads: usize, d: usize, neox: bool) -> Result<Value, LlmError> {
        let seq = seq();
        let (h, dd) = (heads as i64, d as i64);
        let (c, s) = cs;
        let (x0, x1, axis) = if neox {
            let r = self.g.add_op(Op::Split { axis: 2, sizes: vec![d as u64 / 2; 2] }, vec![x]);
            let r = r.map_err(LlmError::Build)?;
            (r[0], r[1], 2)
        } else {
            let xr = self.reshape(x, &[seq.clone(), t_int(h), t_int(dd / 2), t_int(2)])?;
            let r = self.g.add_op(Op::Split { axis: 3, sizes: vec![1, 1] }, vec![xr]).map_err(LlmError::Build)?;
            (r[0], r[1], 3)
        };
        let (c, s) = if neox {
            (c, s)
        } else {
            let shape = [seq.clone(), t_int(1), t_int(dd / 2), t_int(1)];
            (self.reshape(c, &shape)?, self.reshape(s, &shape)?)
        };
        let a = self.bin(BinaryOp::Mul, x0, c)?;
        let b = self.bin(BinaryOp::Mul, x1, s)?;
        let o0 = self.bin(BinaryOp::Sub, a, b)?;
        let a = self.bin(BinaryOp::Mul, x0, s)?;
        let b = self.bin(BinaryOp::Mul, x1, c)?;
        let o1 = self.bin(BinaryOp::Add, a, b)?;
        let o = self.op(Op::Concat { axis }, vec![o0, o1])?;
        if neox {
            Ok(o)
        } else {
            self.reshape(o, &[seq, t_int(h), t_int(dd)])
        }
    }

    /// The token embedding `[seq, n_embd]` gathered from the quantized `[n_embd, vocab]`
    /// constant's codes and scales: `codes[:, t] * scale[:, t]` per block.
    fn embed(&mut self, emb: Value, tokens: Value, n_embd: usize) -> Result<Value, LlmError> {
        let seq = seq();
        let ty = self.g.ty(emb).clone();
        let Some(q) = ty.quant.clone() else {
            let rows = self.op(Op::Gather { axis: 1 }, vec![emb, tokens])?;
            return self.transpose(rows, &[1, 0]);
        };
        let QuantGranularity::PerBlock { size, .. } = q.granularity else {
            return Err(LlmError::Build("the embedding is not block-quantized".into()));
        };
        let nb = (n_embd as u64 / size) as i64;
        let data = self.g.const_data(emb).cloned().ok_or_else(|| LlmError::Build("embedding without data".into()))?;
        let codes = self.g.add_const(ty.plain(), data);
        let c = self.op(Op::Gather { axis: 1 }, vec![codes, tokens])?;
        let c = self.op(Op::Cast { to: DType::F32 }, vec![c])?;
        let c = self.reshape(c, &[t_int(nb), t_int(size as i64), seq.clone()])?;
        let s = self.op(Op::Gather { axis: 1 }, vec![q.scale, tokens])?;
        let s = self.reshape(s, &[t_int(nb), t_int(1), seq.clone()])?;
        let mut x = self.bin(BinaryOp::Mul, c, s)?;
        if let Some(off) = q.offset {
            let o = self.op(Op::Gather { axis: 1 }, vec![off, tokens])?;
            let o = self.reshape(o, &[t_int(nb), t_int(1), seq.clone()])?;
            x = self.bin(BinaryOp::Add, x, o)?;
        }
        let x = self.reshape(x, &[t_int(n_embd as i64), seq])?;
        self.transpose(x, &[1, 0])
    }

    fn build(&mut self, cfg: &LlmConfig, logits: Logits) -> Result<Graph, LlmError> {
        let (e, hd, h, kvh) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let gemma = cfg.arch == Arch::Gemma3;
        let seq = seq();
        let tokens = self.g.add_input("tokens", TensorType::new(DType::I64, Shape(vec![sym("seq")])));
        let pos = self.g.add_input("positions", TensorType::new(DType::I64, Shape(vec![sym("seq")])));
        let mask_ty = TensorType::new(DType::F32, Shape(vec![sym("seq"), sym("kv")]));
        let mask = self.g.add_input("mask", mask_ty.clone());
        let mask_swa = cfg.has_swa().then(|| self.g.add_input("mask_swa", mask_ty));
        let cache_ty =
            TensorType::new(DType::F32, Shape(vec![sym("past"), Dim::Static(kvh as u64), Dim::Static(hd as u64)]));
        let caches: Vec<(Value, Value)> = (0..cfg.n_layer)
            .map(|l| {
                (
                    self.g.add_input(&format!("cache.k.{l}"), cache_ty.clone()),
                    self.g.add_input(&format!("cache.v.{l}"), cache_ty.clone()),
                )
            })
            .collect();

        let emb = self.matrix("token_embd.weight", cfg.vocab, e)?;
        let mut x = self.embed(emb, tokens, e)?;
        if gemma {
            let s = self.scalar((e as f32).sqrt());
            x = self.bin(BinaryOp::Mul, x, s)?;
        }
        let half = hd / 2;
        let rope_global = self.rope_tables(pos, half, cfg.rope_base, cfg.rope_scale)?;
        let rope_swa = match cfg.has_swa() {
            true => Some(self.rope_tables(pos, half, cfg.rope_base_swa, 1.0)?),
            false => None,
        };
        let group = h / kvh;
        let mut new_kv = Vec::with_capacity(cfg.n_layer);
        for (l, &(ck, cv)) in caches.iter().enumerate() {
            let name = |s: &str| format!("blk.{l}.{s}.weight");
            let swa = cfg.swa_layers[l];
            let hn = self.rms(x, &name("attn_norm"), e, cfg.rms_eps)?;
            let qkv = self.qmm_many(
                hn,
                &[(&name("attn_q"), h * hd), (&name("attn_k"), kvh * hd), (&name("attn_v"), kvh * hd)],
                e,
            )?;
            let (q, k, v) = (qkv[0], qkv[1], qkv[2]);
            let mut q = self.reshape(q, &[seq.clone(), t_int(h as i64), t_int(hd as i64)])?;
            let mut k = self.reshape(k, &[seq.clone(), t_int(kvh as i64), t_int(hd as i64)])?;
            let v = self.reshape(v, &[seq.clone(), t_int(kvh as i64), t_int(hd as i64)])?;
            if gemma {
                q = self.rms(q, &name("attn_q_norm"), hd, cfg.rms_eps)?;
                k = self.rms(k, &name("attn_k_norm"), hd, cfg.rms_eps)?;
            }
            let tables = if swa { rope_swa.expect("swa tables") } else { rope_global };
            let q = self.rope(q, tables, h, hd, gemma)?;
            let k = self.rope(k, tables, kvh, hd, gemma)?;
            new_kv.push((k, v));
            // Keys and values of every position: [kv_heads, 1, kv, hd], shared by the group.
            let mut all = [ck, cv];
            for (slot, new) in all.iter_mut().zip([k, v]) {
                let kv_ty = TensorType::new(
                    DType::F32,
                    Shape(vec![sym("kv"), Dim::Static(kvh as u64), Dim::Static(hd as u64)]),
                );
                let c = self.op_typed(Op::Concat { axis: 0 }, vec![*slot, new], kv_ty)?;
                let c = self.transpose(c, &[1, 0, 2])?;
                *slot = self.op(Op::Unsqueeze { axes: vec![1] }, vec![c])?;
            }
            let q = self.reshape(q, &[seq.clone(), t_int(kvh as i64), t_int(group as i64), t_int(hd as i64)])?;
            let q = self.transpose(q, &[1, 2, 0, 3])?;
            let m = if swa { mask_swa.expect("a window") } else { mask };
            let a = self.op(Op::Attention { scale: cfg.attn_scale, causal: false }, vec![q, all[0], all[1], m])?;
            let a = self.transpose(a, &[2, 0, 1, 3])?;
            let a = self.reshape(a, &[seq.clone(), t_int((h * hd) as i64)])?;
            let wo = self.matrix(&name("attn_output"), e, h * hd)?;
            let mut o = self.qmm(a, wo)?;
            if gemma {
                o = self.rms(o, &name("post_attention_norm"), e, cfg.rms_eps)?;
            }
            x = self.bin(BinaryOp::Add, o, x)?;
            let hn = self.rms(x, &name("ffn_norm"), e, cfg.rms_eps)?;
            let gu = self.qmm_many(hn, &[(&name("ffn_gate"), cfg.n_ff), (&name("ffn_up"), cfg.n_ff)], e)?;
            let (gt, up) = (gu[0], gu[1]);
            let wd = self.matrix(&name("ffn_down"), e, cfg.n_ff)?;
            let act = if gemma { self.gelu(gt)? } else { self.un(UnaryOp::Silu, gt)? };
            let f = self.bin(BinaryOp::Mul, act, up)?;
            let mut d = self.qmm(f, wd)?;
            if gemma {
                d = self.rms(d, &name("post_ffw_norm"), e, cfg.rms_eps)?;
            }
            x = self.bin(BinaryOp::Add, d, x)?;
        }
        if logits == Logits::Last {
            x = self.op_typed(
                Op::Slice { starts: vec![t_int(-1)], ends: vec![t_int(i64::MAX)], axes: vec![0], steps: vec![1] },
                vec![x],
                TensorType::with_static(DType::F32, &[1, e]),
            )?;
        }
        let x = self.rms(x, "output_norm.weight", e, cfg.rms_eps)?;
        let out_w = match self.gguf.tensor("output.weight") {
            Some(_) => self.matrix("output.weight", cfg.vocab, e)?,
            None => emb,
        };
        let mut y = self.qmm(x, out_w)?;
        if let Some(cap) = cfg.softcap {
            let inv = self.scalar(1.0 / cap);
            let c = self.scalar(cap);
            y = self.bin(BinaryOp::Mul, y, inv)?;
            y = self.un(UnaryOp::Tanh, y)?;
            y = self.bin(BinaryOp::Mul, y, c)?;
        }
        self.g.add_output("logits", y);
        for (l, (k, v)) in new_kv.into_iter().enumerate() {
            self.g.add_output(&format!("k.{l}"), k);
            self.g.add_output(&format!("v.{l}"), v);
        }
        Ok(std::mem::take(&mut self.g))
    }
}

/// Codes packed as `dtype.rs` lays them out (i8: a byte each; i4/u4: two per byte, low nibble
/// first; ternary: four per byte, 0b00 = 0, 0b01 = +1, 0b11 = -1).
fn pack(dtype: DType, codes: &[i8]) -> Vec<u8> {
    match dtype {
        DType::I4 | DType::U4 => {
            let mut out = vec![0u8; codes.len().div_ceil(2)];
            for (i, &c) in codes.iter().enumerate() {
                out[i / 2] |= ((c as u8) & 15) << (4 * (i % 2));
            }
            out
        }
        DType::Ternary => {
            let mut out = vec![0u8; codes.len().div_ceil(4)];
            for (i, &c) in codes.iter().enumerate() {
                out[i / 4] |= ((c as u8) & 3) << (2 * (i % 4));
            }
            out
        }
        _ => codes.iter().map(|&c| c as u8).collect(),
    }
}
