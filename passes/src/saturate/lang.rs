//! The e-graph language of `saturate`: the IR ops the rules need, attribute leaves that carry
//! exactly what an IR op needs besides its operands (so extraction rebuilds exact IR ops), leaves
//! for graph values (inputs, constants and results of ops not modelled here), scalar literals made
//! by rules, and marker nodes (`gelu-erf-factor`, `attn-qk`, ..) that name partial matches of a
//! fusion pattern. Markers are never extracted (their cost is infinite). One e-node is not an IR
//! op: `gated_ffn` (a gated FFN, no IR op), which extraction writes as a `kernel` region.
//!
//! Every e-class carries a type analysis: the IR tensor type (inferred with `tessera_ir::infer`
//! from the children's types, so it is exactly what `Graph::add_op` would infer), the value of a
//! splat float constant (for matching constants by value), and the attribute of an attribute leaf.

use egg::{define_language, Analysis, DidMerge, EGraph, Id};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use tessera_ir::{BinaryOp, DType, Dim, Graph, Op, ReduceOp, TensorType, UnaryOp};

/// A graph value used as a leaf (`%12` is value 12 of the source graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueRef(pub u32);

impl fmt::Display for ValueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

impl FromStr for ValueRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix('%').and_then(|n| n.parse().ok()).map(ValueRef).ok_or_else(|| format!("not a value: {s}"))
    }
}

/// An f32 scalar literal made by a rule (`#0x3f000000`); it becomes an `f32[]` constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scalar(pub u32);

impl Scalar {
    pub fn new(x: f32) -> Scalar {
        Scalar(x.to_bits())
    }

    pub fn value(self) -> f32 {
        f32::from_bits(self.0)
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:#010x}", self.0)
    }
}

impl FromStr for Scalar {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix("#0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .map(Scalar)
            .ok_or_else(|| format!("not a scalar: {s}"))
    }
}

/// An attribute of an IR op, held as a leaf child of that op's e-node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attr {
    /// `transpose {perm}`: `perm=0,2,1,3`.
    Perm(Vec<usize>),
    /// `softmax {axis}`: `axis=-1`.
    Axis(i64),
    /// `attention {scale}` (f32 bits; `causal` is always false here): `scale=0x3e3504f3`.
    Scale(u32),
    /// `reduce_mean`, `reduce_sum`, `reduce_max {axes, keepdims}`: `mean=-1;keep` (or `;drop`;
    /// no axes: all axes).
    Mean(Vec<i64>, bool),
    /// `rms_norm`, `layer_norm {axis, epsilon}` (f32 bits): `norm=-1;0x358637bd`.
    Norm(i64, u32),
    /// `quantize {axis, block, to}` (`to` absent for `dequantize`): `quant=1;0;i8` (`quant=1;0;`).
    Quant(i64, u64, Option<DType>),
    /// The name of a kernel region built by extraction (`kernel=silu_gated_ffn`).
    Kernel(String),
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Perm(p) => {
                write!(f, "perm=")?;
                let parts: Vec<String> = p.iter().map(|x| x.to_string()).collect();
                f.write_str(&parts.join(","))
            }
            Attr::Axis(a) => write!(f, "axis={a}"),
            Attr::Scale(s) => write!(f, "scale={s:#010x}"),
            Attr::Mean(axes, keep) => {
                let parts: Vec<String> = axes.iter().map(|x| x.to_string()).collect();
                write!(f, "mean={};{}", parts.join(","), if *keep { "keep" } else { "drop" })
            }
            Attr::Norm(axis, eps) => write!(f, "norm={axis};{eps:#010x}"),
            Attr::Quant(axis, block, to) => write!(f, "quant={axis};{block};{}", to.map_or("", |d| d.name())),
            Attr::Kernel(name) => write!(f, "kernel={name}"),
        }
    }
}

impl FromStr for Attr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("not an attribute: {s}");
        if let Some(p) = s.strip_prefix("perm=") {
            let perm: Result<Vec<usize>, _> =
                if p.is_empty() { Ok(vec![]) } else { p.split(',').map(|x| x.parse::<usize>()).collect() };
            return perm.map(Attr::Perm).map_err(|_| bad());
        }
        if let Some(a) = s.strip_prefix("axis=") {
            return a.parse().map(Attr::Axis).map_err(|_| bad());
        }
        if let Some(h) = s.strip_prefix("scale=0x") {
            return u32::from_str_radix(h, 16).map(Attr::Scale).map_err(|_| bad());
        }
        if let Some((axes, keep)) = s.strip_prefix("mean=").and_then(|m| m.split_once(';')) {
            let axes: Result<Vec<i64>, _> =
                if axes.is_empty() { Ok(vec![]) } else { axes.split(',').map(|x| x.parse::<i64>()).collect() };
            let keep = match keep {
                "keep" => true,
                "drop" => false,
                _ => return Err(bad()),
            };
            return axes.map(|a| Attr::Mean(a, keep)).map_err(|_| bad());
        }
        if let Some((axis, eps)) = s.strip_prefix("norm=").and_then(|m| m.split_once(";0x")) {
            return match (axis.parse(), u32::from_str_radix(eps, 16)) {
                (Ok(a), Ok(e)) => Ok(Attr::Norm(a, e)),
                _ => Err(bad()),
            };
        }
        if let Some(q) = s.strip_prefix("quant=") {
            let parts: Vec<&str> = q.split(';').collect();
            let [axis, block, to] = parts[..] else { return Err(bad()) };
            let to = if to.is_empty() { None } else { Some(DType::from_name(to).ok_or_else(bad)?) };
            return match (axis.parse(), block.parse()) {
                (Ok(a), Ok(b)) => Ok(Attr::Quant(a, b, to)),
                _ => Err(bad()),
            };
        }
        if let Some(name) = s.strip_prefix("kernel=") {
            return Ok(Attr::Kernel(name.to_string()));
        }
        Err(bad())
    }
}

define_language! {
    /// The tensor-graph language.
    pub enum TensorLang {
        "add" = Add([Id; 2]),
        "sub" = Sub([Id; 2]),
        "mul" = Mul([Id; 2]),
        "div" = Div([Id; 2]),
        "pow" = Pow([Id; 2]),
        "neg" = Neg(Id),
        "reciprocal" = Reciprocal(Id),
        "sqrt" = Sqrt(Id),
        "rsqrt" = Rsqrt(Id),
        "exp" = Exp(Id),
        "erf" = Erf(Id),
        "tanh" = Tanh(Id),
        "sigmoid" = Sigmoid(Id),
        "gelu" = Gelu(Id),
        "gelu_tanh" = GeluTanh(Id),
        "silu" = Silu(Id),
        "matmul" = MatMul([Id; 2]),
        // [axis, x]
        "softmax" = Softmax([Id; 2]),
        // [perm, x]
        "transpose" = Transpose([Id; 2]),
        // [scale, q, k, v, mask]
        "attention" = Attention([Id; 5]),
        // [scale, q, k, v]
        "attention" = AttentionNoMask([Id; 4]),
        // [axes and keepdims, x]
        "reduce_mean" = ReduceMean([Id; 2]),
        // [axes and keepdims, x]
        "reduce_sum" = ReduceSum([Id; 2]),
        // [axes and keepdims, x]
        "reduce_max" = ReduceMax([Id; 2]),
        // [axis and epsilon, x, scale]
        "rms_norm" = RmsNorm([Id; 3]),
        // [axis and epsilon, x, scale, bias]
        "layer_norm" = LayerNorm([Id; 4]),
        // [axis and epsilon, x, scale]
        "layer_norm" = LayerNormNoBias([Id; 3]),
        // [axis, block and to, x, scale, zero]
        "quantize" = Quantize([Id; 4]),
        // [axis, block and to, x, scale]
        "quantize" = QuantizeNoZero([Id; 3]),
        // [axis and block, q, scale, zero]
        "dequantize" = Dequantize([Id; 4]),
        // [axis and block, q, scale]
        "dequantize" = DequantizeNoZero([Id; 3]),
        // [kernel name, x, w1, w3, w2]: `matmul(mul(act(matmul(x, w1)), matmul(x, w3)), w2)`,
        // extracted as a `kernel` region (see `gated_ffn_act` and `convert.rs`).
        "gated_ffn" = GatedFfn([Id; 5]),
        // Markers (partial fusion matches; never extracted).
        // `1 + erf(x / sqrt(2))`
        "gelu-erf-factor" = GeluErfFactor(Id),
        // `x * x * x`
        "cube" = Cube(Id),
        // `x + 0.044715 * x^3`
        "gelu-tanh-poly" = GeluTanhPoly(Id),
        // `1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))`
        "gelu-tanh-factor" = GeluTanhFactor(Id),
        // [q, k]: `q @ k^T` with `k` untransposed.
        "attn-qk" = AttnQk([Id; 2]),
        // [scale, q, k]: `q @ k^T * scale`.
        "attn-scores" = AttnScores([Id; 3]),
        // [scale, q, k, mask]: `softmax(q @ k^T * scale + mask)` over the last dim.
        "attn-probs" = AttnProbs([Id; 4]),
        // [scale, q, k]: `softmax(q @ k^T * scale)` over the last dim.
        "attn-probs" = AttnProbsNoMask([Id; 3]),
        // [norm, x]: `mean(x^2) + epsilon` over the dims from `axis` (kept as size 1).
        "rms-ms" = RmsMeanSquare([Id; 2]),
        // [norm, x]: `x / sqrt(mean(x^2) + epsilon)`.
        "rms-normed" = RmsNormed([Id; 2]),
        // [mean, x]: `x - reduce_mean(x)` over trailing dims (kept as size 1).
        "ln-centered" = LnCentered([Id; 2]),
        Attr(Attr),
        Scalar(Scalar),
        Leaf(ValueRef),
    }
}

impl TensorLang {
    /// Whether the node only names a partial match (never extracted).
    pub fn is_marker(&self) -> bool {
        matches!(
            self,
            TensorLang::GeluErfFactor(_)
                | TensorLang::Cube(_)
                | TensorLang::GeluTanhPoly(_)
                | TensorLang::GeluTanhFactor(_)
                | TensorLang::AttnQk(_)
                | TensorLang::AttnScores(_)
                | TensorLang::AttnProbs(_)
                | TensorLang::AttnProbsNoMask(_)
                | TensorLang::RmsMeanSquare(_)
                | TensorLang::RmsNormed(_)
                | TensorLang::LnCentered(_)
        )
    }

    /// The IR op of a modelled op node and its operand classes (attribute children resolved with
    /// `attr`); None for leaves, attributes and markers.
    pub fn to_ir(&self, attr: impl Fn(Id) -> Option<Attr>) -> Option<(Op, Vec<Id>)> {
        use TensorLang as T;
        let bin = |b: BinaryOp, c: &[Id; 2]| Some((Op::Binary(b), c.to_vec()));
        let un = |u: UnaryOp, c: Id| Some((Op::Unary(u), vec![c]));
        match self {
            T::Add(c) => bin(BinaryOp::Add, c),
            T::Sub(c) => bin(BinaryOp::Sub, c),
            T::Mul(c) => bin(BinaryOp::Mul, c),
            T::Div(c) => bin(BinaryOp::Div, c),
            T::Pow(c) => bin(BinaryOp::Pow, c),
            T::Neg(c) => un(UnaryOp::Neg, *c),
            T::Reciprocal(c) => un(UnaryOp::Reciprocal, *c),
            T::Sqrt(c) => un(UnaryOp::Sqrt, *c),
            T::Rsqrt(c) => un(UnaryOp::Rsqrt, *c),
            T::Exp(c) => un(UnaryOp::Exp, *c),
            T::Erf(c) => un(UnaryOp::Erf, *c),
            T::Tanh(c) => un(UnaryOp::Tanh, *c),
            T::Sigmoid(c) => un(UnaryOp::Sigmoid, *c),
            T::Gelu(c) => un(UnaryOp::Gelu, *c),
            T::GeluTanh(c) => un(UnaryOp::GeluTanh, *c),
            T::Silu(c) => un(UnaryOp::Silu, *c),
            T::MatMul(c) => Some((Op::MatMul, c.to_vec())),
            T::Softmax([a, x]) => match attr(*a)? {
                Attr::Axis(axis) => Some((Op::Softmax { axis }, vec![*x])),
                _ => None,
            },
            T::Transpose([p, x]) => match attr(*p)? {
                Attr::Perm(perm) => Some((Op::Transpose { perm }, vec![*x])),
                _ => None,
            },
            T::Attention([s, q, k, v, m]) => match attr(*s)? {
                Attr::Scale(bits) => {
                    Some((Op::Attention { scale: f32::from_bits(bits), causal: false }, vec![*q, *k, *v, *m]))
                }
                _ => None,
            },
            T::AttentionNoMask([s, q, k, v]) => match attr(*s)? {
                Attr::Scale(bits) => {
                    Some((Op::Attention { scale: f32::from_bits(bits), causal: false }, vec![*q, *k, *v]))
                }
                _ => None,
            },
            T::ReduceMean([a, x]) => match attr(*a)? {
                Attr::Mean(axes, keepdims) => Some((Op::Reduce { op: ReduceOp::Mean, axes, keepdims }, vec![*x])),
                _ => None,
            },
            T::ReduceSum([a, x]) => match attr(*a)? {
                Attr::Mean(axes, keepdims) => Some((Op::Reduce { op: ReduceOp::Sum, axes, keepdims }, vec![*x])),
                _ => None,
            },
            T::ReduceMax([a, x]) => match attr(*a)? {
                Attr::Mean(axes, keepdims) => Some((Op::Reduce { op: ReduceOp::Max, axes, keepdims }, vec![*x])),
                _ => None,
            },
            T::RmsNorm([a, x, w]) => match attr(*a)? {
                Attr::Norm(axis, eps) => Some((Op::RmsNorm { axis, epsilon: f32::from_bits(eps) }, vec![*x, *w])),
                _ => None,
            },
            T::LayerNorm([a, x, w, b]) => match attr(*a)? {
                Attr::Norm(axis, eps) => Some((Op::LayerNorm { axis, epsilon: f32::from_bits(eps) }, vec![*x, *w, *b])),
                _ => None,
            },
            T::LayerNormNoBias([a, x, w]) => match attr(*a)? {
                Attr::Norm(axis, eps) => Some((Op::LayerNorm { axis, epsilon: f32::from_bits(eps) }, vec![*x, *w])),
                _ => None,
            },
            T::Quantize([a, x, s, z]) => match attr(*a)? {
                Attr::Quant(axis, block, Some(to)) => Some((Op::Quantize { axis, block, to }, vec![*x, *s, *z])),
                _ => None,
            },
            T::QuantizeNoZero([a, x, s]) => match attr(*a)? {
                Attr::Quant(axis, block, Some(to)) => Some((Op::Quantize { axis, block, to }, vec![*x, *s])),
                _ => None,
            },
            T::Dequantize([a, q, s, z]) => match attr(*a)? {
                Attr::Quant(axis, block, None) => Some((Op::Dequantize { axis, block }, vec![*q, *s, *z])),
                _ => None,
            },
            T::DequantizeNoZero([a, q, s]) => match attr(*a)? {
                Attr::Quant(axis, block, None) => Some((Op::Dequantize { axis, block }, vec![*q, *s])),
                _ => None,
            },
            _ => None,
        }
    }

    /// The e-node of an IR op (attribute leaves made with `add_attr`), when the op is modelled.
    pub fn from_ir(op: &Op, inputs: &[Id], mut add_attr: impl FnMut(Attr) -> Id) -> Option<TensorLang> {
        use TensorLang as T;
        let one = |f: fn(Id) -> TensorLang| (inputs.len() == 1).then(|| f(inputs[0]));
        let two = |f: fn([Id; 2]) -> TensorLang| (inputs.len() == 2).then(|| f([inputs[0], inputs[1]]));
        match op {
            Op::Binary(BinaryOp::Add) => two(T::Add),
            Op::Binary(BinaryOp::Sub) => two(T::Sub),
            Op::Binary(BinaryOp::Mul) => two(T::Mul),
            Op::Binary(BinaryOp::Div) => two(T::Div),
            Op::Binary(BinaryOp::Pow) => two(T::Pow),
            Op::Unary(UnaryOp::Neg) => one(T::Neg),
            Op::Unary(UnaryOp::Reciprocal) => one(T::Reciprocal),
            Op::Unary(UnaryOp::Sqrt) => one(T::Sqrt),
            Op::Unary(UnaryOp::Rsqrt) => one(T::Rsqrt),
            Op::Unary(UnaryOp::Exp) => one(T::Exp),
            Op::Unary(UnaryOp::Erf) => one(T::Erf),
            Op::Unary(UnaryOp::Tanh) => one(T::Tanh),
            Op::Unary(UnaryOp::Sigmoid) => one(T::Sigmoid),
            Op::Unary(UnaryOp::Gelu) => one(T::Gelu),
            Op::Unary(UnaryOp::GeluTanh) => one(T::GeluTanh),
            Op::Unary(UnaryOp::Silu) => one(T::Silu),
            Op::MatMul => two(T::MatMul),
            Op::Reduce { op: ReduceOp::Mean, axes, keepdims } if inputs.len() == 1 => {
                Some(T::ReduceMean([add_attr(Attr::Mean(axes.clone(), *keepdims)), inputs[0]]))
            }
            Op::Reduce { op: ReduceOp::Sum, axes, keepdims } if inputs.len() == 1 => {
                Some(T::ReduceSum([add_attr(Attr::Mean(axes.clone(), *keepdims)), inputs[0]]))
            }
            Op::Reduce { op: ReduceOp::Max, axes, keepdims } if inputs.len() == 1 => {
                Some(T::ReduceMax([add_attr(Attr::Mean(axes.clone(), *keepdims)), inputs[0]]))
            }
            Op::RmsNorm { axis, epsilon } if inputs.len() == 2 => {
                Some(T::RmsNorm([add_attr(Attr::Norm(*axis, epsilon.to_bits())), inputs[0], inputs[1]]))
            }
            Op::LayerNorm { axis, epsilon } => {
                let a = add_attr(Attr::Norm(*axis, epsilon.to_bits()));
                match inputs {
                    [x, w] => Some(T::LayerNormNoBias([a, *x, *w])),
                    [x, w, b] => Some(T::LayerNorm([a, *x, *w, *b])),
                    _ => None,
                }
            }
            Op::Quantize { axis, block, to } => {
                let a = add_attr(Attr::Quant(*axis, *block, Some(*to)));
                match inputs {
                    [x, s] => Some(T::QuantizeNoZero([a, *x, *s])),
                    [x, s, z] => Some(T::Quantize([a, *x, *s, *z])),
                    _ => None,
                }
            }
            // With one operand the parameters come from a quantized type: not modelled.
            Op::Dequantize { axis, block } => {
                let a = add_attr(Attr::Quant(*axis, *block, None));
                match inputs {
                    [q, s] => Some(T::DequantizeNoZero([a, *q, *s])),
                    [q, s, z] => Some(T::Dequantize([a, *q, *s, *z])),
                    _ => None,
                }
            }
            Op::Softmax { axis } if inputs.len() == 1 => Some(T::Softmax([add_attr(Attr::Axis(*axis)), inputs[0]])),
            Op::Transpose { perm } if inputs.len() == 1 => {
                Some(T::Transpose([add_attr(Attr::Perm(perm.clone())), inputs[0]]))
            }
            Op::Attention { scale, causal: false } => {
                let s = add_attr(Attr::Scale(scale.to_bits()));
                match inputs {
                    [q, k, v] => Some(T::AttentionNoMask([s, *q, *k, *v])),
                    [q, k, v, m] => Some(T::Attention([s, *q, *k, *v, *m])),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// What the analysis knows about an e-class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassData {
    /// The tensor type (None for attributes, markers, and ops whose type cannot be inferred).
    pub ty: Option<TensorType>,
    /// The value of a float constant whose elements are all equal.
    pub splat: Option<f32>,
    /// The attribute, for an attribute leaf.
    pub attr: Option<Attr>,
}

/// The type analysis; `leaves` holds what the source graph says of its leaf values.
#[derive(Debug, Default)]
pub struct TypeAnalysis {
    pub leaves: HashMap<u32, (TensorType, Option<f32>)>,
}

pub type TensorEGraph = EGraph<TensorLang, TypeAnalysis>;

/// Same dtype and rank, and every dim equal or unknown (`?`) on one side.
pub fn compatible(a: &TensorType, b: &TensorType) -> bool {
    a.dtype == b.dtype
        && a.rank() == b.rank()
        && a.shape.dims().iter().zip(b.shape.dims()).all(|(x, y)| x == y || *x == Dim::Unknown || *y == Dim::Unknown)
}

/// The type `Graph::add_op` would infer for `op` on operands of these types.
pub fn infer(op: &Op, types: &[TensorType]) -> Option<TensorType> {
    let mut scratch = Graph::new("infer");
    let inputs: Vec<_> =
        types.iter().enumerate().map(|(i, t)| scratch.add_input(&format!("i{i}"), t.plain())).collect();
    let mut out = tessera_ir::infer::infer_types(&scratch, op, &inputs, None).ok()?;
    (out.len() == 1).then(|| out.remove(0))
}

/// The gate activation of a gated-FFN kernel, by the kernel's name.
pub fn gated_ffn_act(name: &str) -> Option<UnaryOp> {
    match name {
        "silu_gated_ffn" => Some(UnaryOp::Silu),
        "gelu_gated_ffn" => Some(UnaryOp::GeluTanh),
        "gelu_erf_gated_ffn" => Some(UnaryOp::Gelu),
        _ => None,
    }
}

/// The kernel name of a gated FFN with this gate activation.
pub fn gated_ffn_name(act: UnaryOp) -> Option<&'static str> {
    ["silu_gated_ffn", "gelu_gated_ffn", "gelu_erf_gated_ffn"].into_iter().find(|n| gated_ffn_act(n) == Some(act))
}

/// The ops of a gated FFN's body on operands `x, w1, w3, w2` (values 0..4), each as (op, operand
/// indices): value 4 is `x @ w1`, 5 `x @ w3`, 6 `act(4)`, 7 `6 * 5`, 8 `7 @ w2` (the result).
pub fn gated_ffn_body(act: UnaryOp) -> [(Op, [usize; 2]); 5] {
    [
        (Op::MatMul, [0, 1]),
        (Op::MatMul, [0, 2]),
        (Op::Unary(act), [4, 4]),
        (Op::Binary(BinaryOp::Mul), [6, 5]),
        (Op::MatMul, [7, 3]),
    ]
}

/// The result type of a gated FFN (None when some op of its body does not type-check).
pub fn gated_ffn_type(
    act: UnaryOp,
    x: &TensorType,
    w1: &TensorType,
    w3: &TensorType,
    w2: &TensorType,
) -> Option<TensorType> {
    let mut types = vec![x.clone(), w1.clone(), w3.clone(), w2.clone()];
    for (op, [a, b]) in gated_ffn_body(act) {
        let operands =
            if matches!(op, Op::Unary(_)) { vec![types[a].clone()] } else { vec![types[a].clone(), types[b].clone()] };
        types.push(infer(&op, &operands)?);
    }
    types.pop()
}

impl Analysis<TensorLang> for TypeAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut TensorEGraph, enode: &TensorLang, _id: Id) -> ClassData {
        match enode {
            TensorLang::Attr(a) => ClassData { attr: Some(a.clone()), ..ClassData::default() },
            TensorLang::Scalar(s) => {
                ClassData { ty: Some(TensorType::scalar(DType::F32)), splat: Some(s.value()), attr: None }
            }
            TensorLang::Leaf(v) => match egraph.analysis.leaves.get(&v.0) {
                Some((ty, splat)) => ClassData { ty: Some(ty.clone()), splat: *splat, attr: None },
                None => ClassData::default(),
            },
            TensorLang::GatedFfn([a, x, w1, w3, w2]) => {
                let ty = |c: &Id| egraph[*c].data.ty.clone();
                let act = match &egraph[*a].data.attr {
                    Some(Attr::Kernel(name)) => gated_ffn_act(name),
                    _ => None,
                };
                let t = match (act, ty(x), ty(w1), ty(w3), ty(w2)) {
                    (Some(act), Some(x), Some(w1), Some(w3), Some(w2)) => gated_ffn_type(act, &x, &w1, &w3, &w2),
                    _ => None,
                };
                ClassData { ty: t, splat: None, attr: None }
            }
            _ => {
                let Some((op, kids)) = enode.to_ir(|c| egraph[c].data.attr.clone()) else {
                    return ClassData::default();
                };
                let types: Option<Vec<TensorType>> = kids.iter().map(|&c| egraph[c].data.ty.clone()).collect();
                ClassData { ty: types.and_then(|t| infer(&op, &t)), splat: None, attr: None }
            }
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        let mut changed_a = false;
        let mut b_differs = false;
        if a.ty.is_none() && b.ty.is_some() {
            a.ty = b.ty.clone();
            changed_a = true;
        } else if b.ty.is_none() && a.ty.is_some() {
            b_differs = true;
        }
        if a.splat.is_none() && b.splat.is_some() {
            a.splat = b.splat;
            changed_a = true;
        } else if b.splat.is_none() && a.splat.is_some() {
            b_differs = true;
        }
        if a.attr.is_none() && b.attr.is_some() {
            a.attr = b.attr.clone();
            changed_a = true;
        } else if b.attr.is_none() && a.attr.is_some() {
            b_differs = true;
        }
        DidMerge(changed_a, b_differs || *a != b)
    }
}
