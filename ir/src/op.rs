//! The op set. Each op's exact semantics is written where it is defined; the reference
//! interpreter (`interp/`) implements exactly this text, and every pass and target is tested
//! against it.
//!
//! Conventions that hold for every op:
//! - Broadcasting is numpy's: shapes align at the right, a dim of 1 stretches.
//! - Float math runs in f32. Results of f16/bf16 type are rounded to that type after the op.
//!   Transcendental functions come from the `libm` crate so results do not depend on the host.
//!   Sums accumulate in f32 in row-major order of the reduced elements.
//! - Integer math is exact in i64 and the result wraps into the result dtype (two's complement,
//!   as C and numpy do); quantization saturates instead (see `Quantize`).
//! - Axes may be negative (counted from the end).

use crate::dtype::DType;
use crate::shape::Dim;
use std::fmt;

/// The block formats of `fake_quant`: ggml's 8-bit activation formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeQuantFormat {
    /// `block_q8_0`: 32 values, an f16 scale (the activations of Q4_0, Q5_0 and Q8_0 weights).
    Q8_0,
    /// `block_q8_K`: 256 values, an f32 scale (the activations of K-quant and ternary weights).
    Q8K,
}

impl FakeQuantFormat {
    pub const ALL: [FakeQuantFormat; 2] = [FakeQuantFormat::Q8_0, FakeQuantFormat::Q8K];

    pub fn name(self) -> &'static str {
        match self {
            FakeQuantFormat::Q8_0 => "q8_0",
            FakeQuantFormat::Q8K => "q8_k",
        }
    }

    /// Values per block.
    pub fn block(self) -> usize {
        match self {
            FakeQuantFormat::Q8_0 => 32,
            FakeQuantFormat::Q8K => 256,
        }
    }

    /// A block's `(multiplier, d)` from its `amax`: each value becomes
    /// `round_half_even(x * multiplier) * d` (see `Op::FakeQuant`). Targets call this for the
    /// per-block scalars so that they round exactly as the interpreter does.
    pub fn block_params(self, amax: f32) -> (f32, f32) {
        match self {
            FakeQuantFormat::Q8_0 => {
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                (id, half::f16::from_f32(amax / 127.0).to_f32())
            }
            FakeQuantFormat::Q8K if amax == 0.0 => (0.0, 0.0),
            FakeQuantFormat::Q8K => {
                let iscale = 127.0 / amax;
                (iscale, 1.0 / iscale)
            }
        }
    }
}

/// Elementwise functions of one operand. The result has the operand's type unless noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `e^x`.
    Exp,
    /// Natural log; `log(0) = -inf`, negative gives NaN.
    Log,
    /// Square root.
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Reciprocal,
    Tanh,
    /// The error function.
    Erf,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `max(x, 0)`.
    Relu,
    /// Exact GELU: `0.5 * x * (1 + erf(x / sqrt(2)))`.
    Gelu,
    /// Tanh GELU: `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`.
    GeluTanh,
    /// `x * sigmoid(x)`.
    Silu,
    Sin,
    Cos,
    /// Round down.
    Floor,
    /// Round up.
    Ceil,
    /// Round half to even.
    Round,
    /// -1, 0 or +1 (0 for NaN).
    Sign,
    /// Logical not (bool only).
    Not,
    /// Bool result: whether the element is NaN.
    IsNan,
    /// Bool result: whether the element is +inf or -inf.
    IsInf,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 23] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Reciprocal,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Sign,
        UnaryOp::Not,
        UnaryOp::IsNan,
        UnaryOp::IsInf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Erf => "erf",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
            UnaryOp::Sign => "sign",
            UnaryOp::Not => "not",
            UnaryOp::IsNan => "is_nan",
            UnaryOp::IsInf => "is_inf",
        }
    }

    /// Ops defined on floats only (integers are rejected by the verifier).
    pub fn float_only(self) -> bool {
        !matches!(self, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sign | UnaryOp::Not)
    }

    /// Ops whose result is bool.
    pub fn returns_bool(self) -> bool {
        matches!(self, UnaryOp::IsNan | UnaryOp::IsInf | UnaryOp::Not)
    }
}

/// Elementwise functions of two broadcast operands of one dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Floats: IEEE division. Integers: truncating division; dividing by zero is an error.
    Div,
    /// `a^b`; for integers, `b` must be non-negative.
    Pow,
    /// Larger of the two (NaN if either is NaN).
    Max,
    /// Smaller of the two (NaN if either is NaN).
    Min,
    /// Remainder with the sign of the divisor (Python's `%`, ONNX Mod with fmod = 0);
    /// integers only; a zero divisor is an error.
    Mod,
    /// Remainder with the sign of the dividend (C's `fmod`, ONNX Mod with fmod = 1).
    Fmod,
    /// Logical and (bool only).
    And,
    /// Logical or (bool only).
    Or,
    /// Logical exclusive or (bool only).
    Xor,
    /// Bool result `a == b`.
    Equal,
    /// Bool result `a < b`.
    Less,
    /// Bool result `a <= b`.
    LessEqual,
    /// Bool result `a > b`.
    Greater,
    /// Bool result `a >= b`.
    GreaterEqual,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 17] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Mod,
        BinaryOp::Fmod,
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Xor,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::LessEqual,
        BinaryOp::Greater,
        BinaryOp::GreaterEqual,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Mod => "mod",
            BinaryOp::Fmod => "fmod",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Xor => "xor",
            BinaryOp::Equal => "equal",
            BinaryOp::Less => "less",
            BinaryOp::LessEqual => "less_equal",
            BinaryOp::Greater => "greater",
            BinaryOp::GreaterEqual => "greater_equal",
        }
    }

    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessEqual | BinaryOp::Greater | BinaryOp::GreaterEqual
        )
    }
}

/// How a reduction combines elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    /// Sum divided by the count of reduced elements (floats only).
    Mean,
    Max,
    Min,
    Prod,
}

impl ReduceOp {
    pub const ALL: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::Prod];

    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "reduce_sum",
            ReduceOp::Mean => "reduce_mean",
            ReduceOp::Max => "reduce_max",
            ReduceOp::Min => "reduce_min",
            ReduceOp::Prod => "reduce_prod",
        }
    }
}

/// A dim in a `reshape` or `expand` target: a size, a symbol, `0` (copy the input's dim at
/// this position, reshape only) or `-1` (infer from the element count, reshape only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetDim {
    Int(i64),
    Sym(std::sync::Arc<str>),
}

impl fmt::Display for TargetDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetDim::Int(n) => write!(f, "{n}"),
            TargetDim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<&Dim> for TargetDim {
    fn from(d: &Dim) -> TargetDim {
        match d {
            Dim::Static(n) => TargetDim::Int(*n as i64),
            Dim::Sym(s) => TargetDim::Sym(s.clone()),
            Dim::Unknown => TargetDim::Int(-1),
        }
    }
}

/// An operation. Operand lists are positional; optional operands may only be left off the end.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Elementwise function of one operand (see `UnaryOp`).
    Unary(UnaryOp),
    /// Elementwise function of two operands of one dtype, broadcast (see `BinaryOp`).
    Binary(BinaryOp),
    /// `where cond, a, b`: `a` where `cond` (bool) is true, else `b`; all three broadcast.
    Where,
    /// `cast x {to}`: float to int truncates toward zero and then wraps like int to int (as numpy
    /// and the ONNX reference do; NaN gives 0, values beyond i64 saturate first); int to int
    /// wraps (ternary saturates, binary takes the sign with 0 as +1); to bool tests `!= 0`;
    /// bool gives 0 or 1; float to f16/bf16 rounds to nearest even.
    Cast { to: DType },
    /// `matmul a, b`: numpy matmul. Rank-1 operands are promoted (a to `[1, k]`, b to `[k, 1]`)
    /// and the added dim removed again; leading dims broadcast. Floats accumulate in f32 in
    /// increasing `k`; integers accumulate exactly and wrap into the result dtype.
    MatMul,
    /// `gemm a, b[, c] {alpha, beta, trans_a, trans_b}`: `alpha * op(a) @ op(b) + beta * c`
    /// with 2-D `a` and `b` (transposed when asked) and `c` broadcast to the result.
    Gemm { alpha: f32, beta: f32, trans_a: bool, trans_b: bool },
    /// `matmul_integer a, b[, a_zero, b_zero]`: `(a - a_zero) @ (b - b_zero)` on 8-bit or 4-bit
    /// integers, exact, result i32 (ONNX MatMulInteger). `a_zero` is a scalar or one per row of
    /// `a`; `b_zero` is a scalar or one per column of `b`. Missing zero points are 0.
    ///
    /// With `pair_saturate` (u8 `a`, i8 2-D `b`, scalar zero points only) the op computes what
    /// onnxruntime's x86 u8 x s8 kernel computes instead of the exact product: the raw products
    /// of each pair of consecutive `k` (`2j`, `2j + 1`; an odd last `k` pairs with 0) are summed
    /// in saturating int16 before the int32 sum, and the zero points are corrected after, exactly:
    /// `sum_j sat16(a[2j] b[2j] + a[2j+1] b[2j+1]) - a_zero * colsum(b) - b_zero * rowsum(a)
    /// + k * a_zero * b_zero`. Only for matching onnxruntime's outputs; the ONNX spec is the default.
    MatMulInteger { pair_saturate: bool },
    /// `qmatmul x, w`: float `x` times a quantized weight `w` whose type carries its `quant`;
    /// defined as `matmul x, (dequantize w)`, without materializing the dequantized weight in
    /// targets. The result is f32.
    QMatMul,
    /// `quantize x, scale[, zero] {axis, block, to}`: `saturate(round_half_even(x / scale) + zero)`
    /// into `to` (the zero point's dtype when there is one). Granularity follows the scale's
    /// shape: a scalar is per tensor; 1-D with `block = 0` is per `axis`; with `block > 0` the
    /// scale has x's rank and dim `axis` is `ceil(n / block)`.
    Quantize { axis: i64, block: u64, to: DType },
    /// `dequantize x[, scale[, zero]] {axis, block}`: `(x - zero) * scale` as f32 (or the scale's
    /// float type), with granularity as in `Quantize`. With only `x`, its type's `quant`
    /// supplies scale, zero point and offset (`real = (q - zero) * scale + offset`).
    Dequantize { axis: i64, block: u64 },
    /// `dynamic_quantize x` -> `(y: u8, scale: f32[], zero: u8[])`, ONNX DynamicQuantizeLinear:
    /// `lo = min(0, min(x))`, `hi = max(0, max(x))`, `scale = (hi - lo) / 255` (1.0 when that
    /// is 0), `zero = saturate(round_half_even(-lo / scale))`, `y = quantize(x, scale, zero)`.
    DynamicQuantize,
    /// `fake_quant x {format}`: rounds f32 `x` to the values an 8-bit symmetric quantization of
    /// each block of consecutive elements along the last axis represents, as ggml (llama.cpp)
    /// quantizes a matrix product's activations before its integer dot products; the result is
    /// f32 `q * d`. The last dim must be static and a multiple of the block. For each block,
    /// `amax = max |x|` (a NaN in the block makes the whole block NaN):
    /// - `q8_0` (block 32, ggml's `quantize_row_q8_0` on x86): `q = round_half_even(x * id)` with
    ///   `id = 127 / amax` (0 when `amax` is 0), `d = f16(amax / 127)` (rounded to f16, nearest
    ///   even, as the block stores it).
    /// - `q8_k` (block 256, `quantize_row_q8_K`): `iscale = 127 / amax`,
    ///   `q = round_half_even(x * iscale)`, `d = 1 / iscale`; a block whose `amax` is 0 gives 0.
    ///   (ggml takes the sign of `iscale` from the element of largest magnitude; `q * d` does
    ///   not depend on it.)
    ///
    /// With these values `matmul (fake_quant x), w` equals ggml's quantized product up to the
    /// order of float sums.
    FakeQuant { format: FakeQuantFormat },
    /// `reduce_* x {axes, keepdims}`: reduce over `axes` (all axes when empty).
    /// `reduce_* x, axes {keepdims}` takes the axes as a 1-D i64 operand known only at run
    /// time (the attribute is then empty); an empty operand reduces all axes.
    Reduce { op: ReduceOp, axes: Vec<i64>, keepdims: bool },
    /// `argmax x {axis, keepdims, last}`: i64 index of the first maximum along `axis` (the
    /// last one with `last = true`).
    ArgMax { axis: i64, keepdims: bool, last: bool },
    /// `softmax x {axis}`: `exp(x - max) / sum(exp(x - max))` along `axis`.
    Softmax { axis: i64 },
    /// `log_softmax x {axis}`: `x - max - log(sum(exp(x - max)))` along `axis`.
    LogSoftmax { axis: i64 },
    /// `layer_norm x, scale[, bias] {axis, epsilon}`: over the dims from `axis` to the end,
    /// `mean = sum(x)/n`, `var = sum((x - mean)^2)/n`, `(x - mean) / sqrt(var + epsilon) * scale + bias`.
    LayerNorm { axis: i64, epsilon: f32 },
    /// `rms_norm x, scale {axis, epsilon}`: over the dims from `axis` to the end,
    /// `x / sqrt(sum(x^2)/n + epsilon) * scale`.
    RmsNorm { axis: i64, epsilon: f32 },
    /// `attention q, k, v[, mask] {scale, causal}`: `softmax(q @ k^T * scale + mask) @ v` over
    /// the last two dims (`q: [.., sq, d]`, `k: [.., sk, d]`, `v: [.., sk, dv]`), leading dims
    /// broadcast. A bool mask keeps where true (others get -inf); a float mask is added. With
    /// `causal`, query `i` sees keys `j <= i + (sk - sq)`. A row that sees no key is all zero.
    Attention { scale: f32, causal: bool },
    /// `gather data, indices {axis}`: picks slices of `data` along `axis`; the result shape is
    /// `data[..axis] ++ indices ++ data[axis+1..]`. Negative indices count from the end; an
    /// index out of range is an error.
    Gather { axis: i64 },
    /// `gather_nd data, indices {batch_dims}` (ONNX GatherND): with `b = batch_dims`, i64
    /// `indices` of shape `[i_0, .., i_{q-2}, k]` and `data` of rank `r`, where `1 <= k <= r - b`,
    /// `b < min(q, r)` and the first `b` dims of both agree: the result has shape
    /// `indices[..q-1] ++ data[b+k..]` and
    /// `result[n_0, .., n_{q-2}, ..rest] = data[n_0, .., n_{b-1}, t_0, .., t_{k-1}, ..rest]` with
    /// `t = indices[n_0, .., n_{q-2}, :]`. Negative indices count from the end of their dim; an
    /// index out of range is an error.
    GatherNd { batch_dims: u64 },
    /// `concat a, b, .. {axis}`: joins along `axis`; other dims must agree.
    Concat { axis: i64 },
    /// `slice x {starts, ends, axes, steps}`: ONNX Slice with bounds fixed when the graph runs
    /// (clamped to the dim, negative counts from the end, steps non-zero and possibly negative).
    /// A bound may be a symbol (`ends = [seq]`), which takes the symbol's bound size.
    /// `slice x, starts, ends[, axes[, steps]]` takes them as 1-D i64 operands instead (the
    /// attributes are then empty), known only at run time.
    Slice { starts: Vec<TargetDim>, ends: Vec<TargetDim>, axes: Vec<i64>, steps: Vec<i64> },
    /// `split x {axis, sizes}`: one result per size, in order; sizes sum to the dim.
    /// `split x, sizes {axis, sizes}` reads the sizes from a 1-D i64 operand at run time; the
    /// attribute then only says how many results there are (its values must be 0).
    Split { axis: i64, sizes: Vec<u64> },
    /// `reshape x {shape}` (or `reshape x, shape` with an i64 tensor): row-major reinterpretation.
    /// Target dims: a size, a symbol, `0` copies the input dim, one `-1` is inferred.
    Reshape { shape: Option<Vec<TargetDim>> },
    /// `transpose x {perm}`: result dim `i` is input dim `perm[i]`.
    Transpose { perm: Vec<usize> },
    /// `expand x {shape}` (or `expand x, shape`): broadcast to `shape` (numpy rules both ways,
    /// as ONNX Expand).
    Expand { shape: Option<Vec<TargetDim>> },
    /// `squeeze x {axes}`: removes the listed dims of size 1 (all of them when empty).
    /// `squeeze x, axes` takes them as a 1-D i64 operand known only at run time.
    Squeeze { axes: Vec<i64> },
    /// `unsqueeze x {axes}`: inserts dims of size 1 at the listed result positions.
    /// `unsqueeze x, axes` takes them as a 1-D i64 operand known only at run time.
    Unsqueeze { axes: Vec<i64> },
    /// `shape x`: the dims of `x` as an i64 vector.
    ShapeOf,
    /// `range start, limit, delta`: scalars of one dtype; `ceil((limit - start) / delta)` elements
    /// `start + i * delta` (0 when negative).
    Range,
    /// `constant_of_shape shape {value, dtype}`: a tensor of the shape held by the i64 operand,
    /// every element `value`.
    ConstantOfShape { value: f64, dtype: DType },
    /// `identity x`: `x`.
    Identity,
    /// `kernel x, .. {name}` with a region: a fused kernel whose body is a graph of its own.
    /// Body input `i` is operand `i`; body output `j` is result `j`. Targets lower a kernel as
    /// one unit; the interpreter runs the body.
    Kernel { name: String },
}

impl Op {
    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Where => "where",
            Op::Cast { .. } => "cast",
            Op::MatMul => "matmul",
            Op::Gemm { .. } => "gemm",
            Op::MatMulInteger { .. } => "matmul_integer",
            Op::QMatMul => "qmatmul",
            Op::Quantize { .. } => "quantize",
            Op::Dequantize { .. } => "dequantize",
            Op::DynamicQuantize => "dynamic_quantize",
            Op::FakeQuant { .. } => "fake_quant",
            Op::Reduce { op, .. } => op.name(),
            Op::ArgMax { .. } => "argmax",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Attention { .. } => "attention",
            Op::Gather { .. } => "gather",
            Op::GatherNd { .. } => "gather_nd",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Split { .. } => "split",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Expand { .. } => "expand",
            Op::Squeeze { .. } => "squeeze",
            Op::Unsqueeze { .. } => "unsqueeze",
            Op::ShapeOf => "shape",
            Op::Range => "range",
            Op::ConstantOfShape { .. } => "constant_of_shape",
            Op::Identity => "identity",
            Op::Kernel { .. } => "kernel",
        }
    }

    /// The allowed operand counts, inclusive (None: any count from the minimum up).
    pub fn arity(&self) -> (usize, Option<usize>) {
        match self {
            Op::Unary(_) | Op::Cast { .. } | Op::DynamicQuantize | Op::ArgMax { .. } | Op::FakeQuant { .. } => {
                (1, Some(1))
            }
            Op::Reduce { .. } => (1, Some(2)),
            Op::Slice { starts, .. } if starts.is_empty() => (3, Some(5)),
            Op::Split { .. } => (1, Some(2)),
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::Slice { .. } => (1, Some(1)),
            Op::Squeeze { .. } | Op::Unsqueeze { .. } => (1, Some(2)),
            Op::Transpose { .. } | Op::ShapeOf | Op::Identity => (1, Some(1)),
            Op::Binary(_) | Op::MatMul | Op::QMatMul | Op::Gather { .. } | Op::RmsNorm { .. } => (2, Some(2)),
            Op::GatherNd { .. } => (2, Some(2)),
            Op::Where | Op::Range => (3, Some(3)),
            Op::Gemm { .. } => (2, Some(3)),
            Op::MatMulInteger { .. } => (2, Some(4)),
            Op::Quantize { .. } => (2, Some(3)),
            Op::Dequantize { .. } => (1, Some(3)),
            Op::LayerNorm { .. } => (2, Some(3)),
            Op::Attention { .. } => (3, Some(4)),
            Op::Concat { .. } => (1, None),
            Op::Reshape { shape } | Op::Expand { shape } => {
                if shape.is_some() {
                    (1, Some(1))
                } else {
                    (2, Some(2))
                }
            }
            Op::ConstantOfShape { .. } => (1, Some(1)),
            Op::Kernel { .. } => (0, None),
        }
    }

    /// How many results the op defines (None: as many as its region or attributes say).
    pub fn result_count(&self) -> Option<usize> {
        match self {
            Op::DynamicQuantize => Some(3),
            Op::Split { sizes, .. } => Some(sizes.len()),
            Op::Kernel { .. } => None,
            _ => Some(1),
        }
    }
}
