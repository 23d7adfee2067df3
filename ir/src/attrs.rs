//! Op attributes as text: one table that the printer and the parser both use, so every op
//! prints and parses the same way.

use crate::dtype::DType;
use crate::op::{BinaryOp, FakeQuantFormat, Op, ReduceOp, TargetDim, UnaryOp};
use crate::tensor::write_f32;
use std::fmt::Write;

/// An attribute value as written in `{key = value}`.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Str(String),
    /// A bare word: `true`, `false`, a dtype, a symbol.
    Word(String),
    List(Vec<Attr>),
}

impl Attr {
    pub fn write(&self, out: &mut String) {
        match self {
            Attr::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Attr::Float(x) => write_f32(out, *x as f32),
            Attr::Str(s) => {
                let _ = write!(out, "{s:?}");
            }
            Attr::Word(w) => out.push_str(w),
            Attr::List(items) => {
                out.push('[');
                for (i, a) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    a.write(out);
                }
                out.push(']');
            }
        }
    }
}

fn ints(v: &[i64]) -> Attr {
    Attr::List(v.iter().map(|&n| Attr::Int(n)).collect())
}

fn dims(v: &[TargetDim]) -> Attr {
    Attr::List(
        v.iter()
            .map(|d| match d {
                TargetDim::Int(n) => Attr::Int(*n),
                TargetDim::Sym(s) => Attr::Word(s.to_string()),
            })
            .collect(),
    )
}

fn word(b: bool) -> Attr {
    Attr::Word(if b { "true" } else { "false" }.into())
}

/// The attributes of an op, in print order.
pub fn op_attrs(op: &Op) -> Vec<(&'static str, Attr)> {
    match op {
        Op::Cast { to } => vec![("to", Attr::Word(to.name().into()))],
        Op::Gemm { alpha, beta, trans_a, trans_b } => vec![
            ("alpha", Attr::Float(*alpha as f64)),
            ("beta", Attr::Float(*beta as f64)),
            ("trans_a", word(*trans_a)),
            ("trans_b", word(*trans_b)),
        ],
        Op::Quantize { axis, block, to } => {
            vec![("axis", Attr::Int(*axis)), ("block", Attr::Int(*block as i64)), ("to", Attr::Word(to.name().into()))]
        }
        Op::Dequantize { axis, block } => vec![("axis", Attr::Int(*axis)), ("block", Attr::Int(*block as i64))],
        Op::Reduce { axes, keepdims, .. } => vec![("axes", ints(axes)), ("keepdims", word(*keepdims))],
        Op::ArgMax { axis, keepdims, last } => {
            vec![("axis", Attr::Int(*axis)), ("keepdims", word(*keepdims)), ("last", word(*last))]
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Gather { axis } | Op::Concat { axis } => {
            vec![("axis", Attr::Int(*axis))]
        }
        Op::LayerNorm { axis, epsilon } | Op::RmsNorm { axis, epsilon } => {
            vec![("axis", Attr::Int(*axis)), ("epsilon", Attr::Float(*epsilon as f64))]
        }
        Op::GatherNd { batch_dims } => vec![("batch_dims", Attr::Int(*batch_dims as i64))],
        Op::Attention { scale, causal } => vec![("scale", Attr::Float(*scale as f64)), ("causal", word(*causal))],
        Op::Slice { starts, .. } if starts.is_empty() => vec![],
        Op::Slice { starts, ends, axes, steps } => {
            vec![("starts", dims(starts)), ("ends", dims(ends)), ("axes", ints(axes)), ("steps", ints(steps))]
        }
        Op::Split { axis, sizes } => {
            vec![
                ("axis", Attr::Int(*axis)),
                ("sizes", Attr::List(sizes.iter().map(|&s| Attr::Int(s as i64)).collect())),
            ]
        }
        Op::Reshape { shape } | Op::Expand { shape } => match shape {
            Some(s) => vec![("shape", dims(s))],
            None => vec![],
        },
        Op::Transpose { perm } => vec![("perm", Attr::List(perm.iter().map(|&p| Attr::Int(p as i64)).collect()))],
        Op::Squeeze { axes } | Op::Unsqueeze { axes } => vec![("axes", ints(axes))],
        Op::ConstantOfShape { value, dtype } => {
            vec![("value", Attr::Float(*value)), ("dtype", Attr::Word(dtype.name().into()))]
        }
        Op::Kernel { name } => vec![("name", Attr::Str(name.clone()))],
        Op::FakeQuant { format } => vec![("format", Attr::Word(format.name().into()))],
        Op::MatMulInteger { pair_saturate } => vec![("pair_saturate", word(*pair_saturate))],
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::MatMul | Op::QMatMul => vec![],
        Op::DynamicQuantize | Op::ShapeOf | Op::Range | Op::Identity => vec![],
    }
}

/// Attributes given to the parser, consumed by name.
pub struct AttrReader {
    items: Vec<(String, Attr)>,
}

impl AttrReader {
    pub fn new(items: Vec<(String, Attr)>) -> AttrReader {
        AttrReader { items }
    }

    fn take(&mut self, key: &str) -> Option<Attr> {
        let i = self.items.iter().position(|(k, _)| k == key)?;
        Some(self.items.remove(i).1)
    }

    fn int(&mut self, key: &str, default: Option<i64>) -> Result<i64, String> {
        match self.take(key) {
            Some(Attr::Int(n)) => Ok(n),
            Some(other) => Err(format!("attribute `{key}` must be an integer, got {other:?}")),
            None => default.ok_or_else(|| format!("missing attribute `{key}`")),
        }
    }

    fn uint(&mut self, key: &str, default: u64) -> Result<u64, String> {
        let n = self.int(key, Some(default as i64))?;
        u64::try_from(n).map_err(|_| format!("attribute `{key}` must not be negative"))
    }

    fn float(&mut self, key: &str, default: Option<f64>) -> Result<f64, String> {
        match self.take(key) {
            Some(Attr::Float(x)) => Ok(x),
            Some(Attr::Int(n)) => Ok(n as f64),
            Some(other) => Err(format!("attribute `{key}` must be a number, got {other:?}")),
            None => default.ok_or_else(|| format!("missing attribute `{key}`")),
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> Result<bool, String> {
        match self.take(key) {
            Some(Attr::Word(w)) if w == "true" => Ok(true),
            Some(Attr::Word(w)) if w == "false" => Ok(false),
            Some(other) => Err(format!("attribute `{key}` must be true or false, got {other:?}")),
            None => Ok(default),
        }
    }

    fn dtype(&mut self, key: &str, default: Option<DType>) -> Result<DType, String> {
        match self.take(key) {
            Some(Attr::Word(w)) => DType::from_name(&w).ok_or_else(|| format!("unknown dtype `{w}` in `{key}`")),
            Some(other) => Err(format!("attribute `{key}` must be a dtype, got {other:?}")),
            None => default.ok_or_else(|| format!("missing attribute `{key}`")),
        }
    }

    fn ints(&mut self, key: &str, default: Option<Vec<i64>>) -> Result<Vec<i64>, String> {
        match self.take(key) {
            Some(Attr::List(items)) => items
                .into_iter()
                .map(|a| match a {
                    Attr::Int(n) => Ok(n),
                    other => Err(format!("attribute `{key}` must list integers, got {other:?}")),
                })
                .collect(),
            Some(other) => Err(format!("attribute `{key}` must be a list, got {other:?}")),
            None => default.ok_or_else(|| format!("missing attribute `{key}`")),
        }
    }

    fn unsigned(&mut self, key: &str, default: Option<Vec<i64>>) -> Result<Vec<u64>, String> {
        self.ints(key, default)?
            .into_iter()
            .map(|n| u64::try_from(n).map_err(|_| format!("attribute `{key}` must not be negative")))
            .collect()
    }

    fn dims(&mut self, key: &str) -> Result<Option<Vec<TargetDim>>, String> {
        match self.take(key) {
            Some(Attr::List(items)) => items
                .into_iter()
                .map(|a| match a {
                    Attr::Int(n) => Ok(TargetDim::Int(n)),
                    Attr::Word(w) => Ok(TargetDim::Sym(w.into())),
                    other => Err(format!("attribute `{key}` must list dims, got {other:?}")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(format!("attribute `{key}` must be a list, got {other:?}")),
            None => Ok(None),
        }
    }

    fn finish(self, op: &str) -> Result<(), String> {
        match self.items.first() {
            Some((k, _)) => Err(format!("`{op}` has no attribute `{k}`")),
            None => Ok(()),
        }
    }
}

/// Builds an op from its text name and attributes.
pub fn op_from_text(name: &str, mut a: AttrReader) -> Result<Op, String> {
    let op = if let Some(u) = UnaryOp::ALL.into_iter().find(|u| u.name() == name) {
        Op::Unary(u)
    } else if let Some(b) = BinaryOp::ALL.into_iter().find(|b| b.name() == name) {
        Op::Binary(b)
    } else if let Some(r) = ReduceOp::ALL.into_iter().find(|r| r.name() == name) {
        Op::Reduce { op: r, axes: a.ints("axes", Some(vec![]))?, keepdims: a.bool("keepdims", true)? }
    } else {
        match name {
            "where" => Op::Where,
            "cast" => Op::Cast { to: a.dtype("to", None)? },
            "matmul" => Op::MatMul,
            "gemm" => Op::Gemm {
                alpha: a.float("alpha", Some(1.0))? as f32,
                beta: a.float("beta", Some(1.0))? as f32,
                trans_a: a.bool("trans_a", false)?,
                trans_b: a.bool("trans_b", false)?,
            },
            "matmul_integer" => Op::MatMulInteger { pair_saturate: a.bool("pair_saturate", false)? },
            "qmatmul" => Op::QMatMul,
            "quantize" => {
                Op::Quantize { axis: a.int("axis", Some(1))?, block: a.uint("block", 0)?, to: a.dtype("to", None)? }
            }
            "dequantize" => Op::Dequantize { axis: a.int("axis", Some(1))?, block: a.uint("block", 0)? },
            "dynamic_quantize" => Op::DynamicQuantize,
            "fake_quant" => {
                let format = match a.take("format") {
                    Some(Attr::Word(w)) => FakeQuantFormat::ALL
                        .into_iter()
                        .find(|f| f.name() == w)
                        .ok_or_else(|| format!("unknown `fake_quant` format `{w}` (known: q8_0, q8_k)"))?,
                    Some(other) => return Err(format!("attribute `format` must be q8_0 or q8_k, got {other:?}")),
                    None => return Err("missing attribute `format`".into()),
                };
                Op::FakeQuant { format }
            }
            "argmax" => Op::ArgMax {
                axis: a.int("axis", Some(0))?,
                keepdims: a.bool("keepdims", true)?,
                last: a.bool("last", false)?,
            },
            "softmax" => Op::Softmax { axis: a.int("axis", Some(-1))? },
            "log_softmax" => Op::LogSoftmax { axis: a.int("axis", Some(-1))? },
            "layer_norm" => {
                Op::LayerNorm { axis: a.int("axis", Some(-1))?, epsilon: a.float("epsilon", Some(1e-5))? as f32 }
            }
            "rms_norm" => {
                Op::RmsNorm { axis: a.int("axis", Some(-1))?, epsilon: a.float("epsilon", Some(1e-5))? as f32 }
            }
            "attention" => Op::Attention { scale: a.float("scale", None)? as f32, causal: a.bool("causal", false)? },
            "gather" => Op::Gather { axis: a.int("axis", Some(0))? },
            "gather_nd" => Op::GatherNd { batch_dims: a.uint("batch_dims", 0)? },
            "concat" => Op::Concat { axis: a.int("axis", None)? },
            "slice" => {
                let starts = a.dims("starts")?.unwrap_or_default();
                let n = starts.len();
                Op::Slice {
                    ends: a.dims("ends")?.unwrap_or_default(),
                    axes: a.ints("axes", Some((0..n as i64).collect()))?,
                    steps: a.ints("steps", Some(vec![1; n]))?,
                    starts,
                }
            }
            "split" => Op::Split { axis: a.int("axis", Some(0))?, sizes: a.unsigned("sizes", None)? },
            "reshape" => Op::Reshape { shape: a.dims("shape")? },
            "expand" => Op::Expand { shape: a.dims("shape")? },
            "transpose" => Op::Transpose { perm: a.unsigned("perm", None)?.into_iter().map(|p| p as usize).collect() },
            "squeeze" => Op::Squeeze { axes: a.ints("axes", Some(vec![]))? },
            "unsqueeze" => Op::Unsqueeze { axes: a.ints("axes", None)? },
            "shape" => Op::ShapeOf,
            "range" => Op::Range,
            "constant_of_shape" => {
                Op::ConstantOfShape { value: a.float("value", Some(0.0))?, dtype: a.dtype("dtype", Some(DType::F32))? }
            }
            "identity" => Op::Identity,
            "kernel" => match a.take("name") {
                Some(Attr::Str(s)) => Op::Kernel { name: s },
                Some(other) => return Err(format!("attribute `name` must be a string, got {other:?}")),
                None => return Err("missing attribute `name`".into()),
            },
            _ => return Err(format!("unknown op `{name}`")),
        }
    };
    a.finish(name)?;
    Ok(op)
}
