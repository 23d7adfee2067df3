//! `fold-dequantize`: weight-only quantization kept packed. A `dequantize` of a constant integer
//! weight with constant scale (and zero point) that only feeds the right operand of `matmul`
//! nodes becomes a quantized type on the weight (`i4[384, 384] quant(block(axis=0, size=32),
//! scale=.., zero=..)`), and each such `matmul x, dequantize(w)` becomes `qmatmul x, w`. By the
//! definition of `qmatmul` the results are identical; targets then keep the weight packed and
//! dequantize in registers. Dequantizes with other users, or of non-constant data, are left alone.
//!
//! The same for weight-only quantization written with a cast (as some exporters and GPTQ/AWQ
//! conversions write it): `matmul x, mul(cast(w, f32), scale)` (the product either way round)
//! with a constant integer weight of at most 8 bits and a constant f32 scale that is a scalar
//! (per tensor) or one per output column of a 2-D weight (`[N]` or `[1, N]`: per axis 1) becomes
//! `qmatmul x, w` with `w` given that quantized type (no zero point). `cast(w) * scale` is
//! `(w - 0) * scale`, which is `dequantize` of the quantized type, so the results are identical.
//! The product must have the weight's shape and be read only as the right operand of matmuls.
//! (This is not a `saturate` rule: the weight's type changes, and the e-graph does not model
//! values of quantized type.)
//!
//! It runs `dce` afterwards to drop the folded dequantizes.

use crate::manager::{Pass, PassError, PassReport};
use tessera_ir::{ConstData, DType, Graph, Node, Op, Quant, QuantGranularity, Shape, TensorType, Value, ValueDef};

pub struct FoldDequantize;

fn is_const(g: &Graph, v: Value) -> bool {
    matches!(g.value(v).def, ValueDef::Const(_)) && g.ty(v).quant.is_none()
}

/// Whether `out` is read, and only as the right operand of matmuls (not also as the left one),
/// and is not a graph output.
fn only_matmul_weights(g: &Graph, users: &[Vec<Node>], out: Value) -> bool {
    let readers = &users[out.index()];
    !readers.is_empty()
        && readers
            .iter()
            .all(|&u| matches!(g.node(u).op, Op::MatMul) && g.node(u).inputs[1] == out && g.node(u).inputs[0] != out)
        && !g.outputs().iter().any(|(_, v)| *v == out)
}

/// For `mul` node `n` computing `cast(w, f32) * scale`: the constant integer weight `w` and the
/// quantized type that makes `dequantize w` the same product.
fn cast_scale_weight(g: &mut Graph, n: Node) -> Option<(Value, TensorType)> {
    let nd = g.node(n).clone();
    if !matches!(nd.op, Op::Binary(tessera_ir::BinaryOp::Mul)) || nd.inputs.len() != 2 {
        return None;
    }
    let (cast_v, scale) = [(nd.inputs[0], nd.inputs[1]), (nd.inputs[1], nd.inputs[0])].into_iter().find(
        |&(c, _)| matches!(g.value(c).def, ValueDef::Result(p, 0) if g.node(p).op == Op::Cast { to: DType::F32 }),
    )?;
    let ValueDef::Result(cast_n, _) = g.value(cast_v).def else { return None };
    let w = g.node(cast_n).inputs[0];
    let wt = g.ty(w).clone();
    let st = g.ty(scale).clone();
    if !is_const(g, w) || !wt.dtype.is_int() || wt.dtype.bits() > 8 || !is_const(g, scale) || st.dtype != DType::F32 {
        return None;
    }
    // The product has the weight's shape: the scale broadcast nothing.
    if g.ty(nd.outputs[0]).shape != wt.shape || g.ty(nd.outputs[0]).dtype != DType::F32 {
        return None;
    }
    let scale_numel = st.shape.static_numel()?;
    let (granularity, scale) = if scale_numel == 1 {
        (QuantGranularity::PerTensor, scale)
    } else {
        let dims = wt.shape.as_static()?;
        let per_column = dims.len() == 2
            && scale_numel == dims[1]
            && (st.rank() == 1 || (st.rank() == 2 && st.shape.as_static()?[0] == 1));
        if !per_column {
            return None;
        }
        // A per-axis scale is 1-D: `[1, N]` becomes a new `[N]` constant with the same bytes.
        let scale = if st.rank() == 1 {
            scale
        } else {
            let data = g.const_data(scale)?.clone();
            g.add_const(TensorType::new(DType::F32, Shape::from_static(&[dims[1]])), data)
        };
        (QuantGranularity::PerAxis { axis: 1 }, scale)
    };
    let mut ty = wt;
    ty.quant = Some(Box::new(Quant { granularity, scale, zero_point: None, offset: None }));
    tessera_ir::infer::check_quant(g, &ty).ok()?;
    Some((w, ty))
}

impl Pass for FoldDequantize {
    fn name(&self) -> &'static str {
        "fold-dequantize"
    }

    fn description(&self) -> &'static str {
        "turn matmul(x, dequantize(constant weight)) into qmatmul with a packed quantized weight"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let users = g.users();
        let mut folded = 0;
        let nodes: Vec<Node> = g.nodes().map(|(n, _)| n).collect();
        for n in nodes {
            let nd = g.node(n).clone();
            let Op::Dequantize { axis, block } = nd.op else { continue };
            if nd.inputs.len() < 2 || !nd.inputs.iter().all(|&v| is_const(g, v)) {
                continue;
            }
            let (w, scale, zero) = (nd.inputs[0], nd.inputs[1], nd.inputs.get(2).copied());
            if g.ty(nd.outputs[0]).dtype != tessera_ir::DType::F32 {
                continue;
            }
            let out = nd.outputs[0];
            let readers = &users[out.index()];
            if !only_matmul_weights(g, &users, out) {
                continue;
            }
            let scale_numel = g.ty(scale).shape.static_numel().unwrap_or(0);
            let granularity = if block > 0 {
                QuantGranularity::PerBlock { axis, size: block }
            } else if scale_numel == 1 {
                QuantGranularity::PerTensor
            } else {
                QuantGranularity::PerAxis { axis }
            };
            // The weight gets a quantized type: a new constant sharing the same bytes.
            let mut ty: TensorType = g.ty(w).clone();
            ty.quant = Some(Box::new(Quant { granularity, scale, zero_point: zero, offset: None }));
            let data = g.const_data(w).expect("constant").clone();
            let qw = g.add_const(ty, data);
            for &u in readers {
                let node = g.node_mut(u);
                node.op = Op::QMatMul;
                node.inputs[1] = qw;
            }
            folded += 1;
        }
        // `mul(cast(w, f32), scale)` read only as matmul weights.
        let nodes: Vec<Node> = g.nodes().map(|(n, _)| n).collect();
        for n in nodes {
            let [out] = g.node(n).outputs[..] else { continue };
            if !only_matmul_weights(g, &users, out) {
                continue;
            }
            let Some((w, ty)) = cast_scale_weight(g, n) else { continue };
            let data: ConstData = g.const_data(w).expect("constant").clone();
            let qw = g.add_const(ty, data);
            for &u in &users[out.index()] {
                let node = g.node_mut(u);
                node.op = Op::QMatMul;
                node.inputs[1] = qw;
            }
            folded += 1;
        }
        if folded > 0 {
            // The dequantizes and float-typed weight copies are dead now.
            crate::dce::Dce.run(g)?;
        }
        Ok(PassReport::changed(folded > 0).note(format!("{folded} weights kept packed")))
    }
}
