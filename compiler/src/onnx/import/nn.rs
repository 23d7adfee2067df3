//! Linear algebra, normalization and reduction ONNX ops: `MatMul`, `Gemm`, `Softmax`,
//! `LogSoftmax`, `LayerNormalization`, `ReduceSum/Mean/Max/Min/Prod`, `ArgMax`.

use super::ctx::{Ctx, Lowered, Node, Val};
use super::table::LowerFn;
use tessera_ir::types::normalize_axis;
use tessera_ir::DType;
use tessera_ir::{BinaryOp, Op, ReduceOp, TargetDim, UnaryOp};

pub fn lookup(op: &str) -> Option<LowerFn> {
    Some(match op {
        "MatMul" => matmul,
        "Gemm" => gemm,
        "Softmax" | "LogSoftmax" => softmax,
        "LayerNormalization" => layer_norm,
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" => reduce,
        "ArgMax" => argmax,
        _ => return None,
    })
}

fn matmul(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (a, b) = (ctx.value(n.req(0)?)?, ctx.value(n.req(1)?)?);
    Ok(vec![Val::Ir(ctx.op(Op::MatMul, vec![a, b])?)])
}

fn gemm(ctx: &mut Ctx, n: &Node) -> Lowered {
    let mut inputs = vec![ctx.value(n.req(0)?)?, ctx.value(n.req(1)?)?];
    if let Some(c) = n.input(2) {
        inputs.push(ctx.value(c)?);
    }
    let op = Op::Gemm {
        alpha: n.float("alpha", 1.0),
        beta: n.float("beta", 1.0),
        trans_a: n.int("transA", 0) != 0,
        trans_b: n.int("transB", 0) != 0,
    };
    Ok(vec![Val::Ir(ctx.op(op, inputs)?)])
}

fn softmax(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = ctx.value(n.req(0)?)?;
    let log = n.op_type() == "LogSoftmax";
    if n.opset >= 13 {
        let axis = n.int("axis", -1);
        let op = if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
        return Ok(vec![Val::Ir(ctx.op(op, vec![x])?)]);
    }
    // Before opset 13 the input is seen as 2-D: dims before `axis` are rows, the rest one row.
    let ty = ctx.g.ty(x).clone();
    let rank = ty.rank();
    let axis = normalize_axis(n.int("axis", 1), rank).ok_or("axis is out of range")?;
    let inner = ty.shape.0[axis..].iter().map(|d| d.as_static()).product::<Option<u64>>();
    let inner = inner.ok_or("softmax before opset 13 needs static dims from the axis on")?;
    let flat = ctx.op(Op::Reshape { shape: Some(vec![TargetDim::Int(-1), TargetDim::Int(inner as i64)]) }, vec![x])?;
    let y = ctx.op(if log { Op::LogSoftmax { axis: 1 } } else { Op::Softmax { axis: 1 } }, vec![flat])?;
    let back: Vec<TargetDim> = ty.shape.0.iter().map(TargetDim::from).collect();
    Ok(vec![Val::Ir(ctx.op(Op::Reshape { shape: Some(back) }, vec![y])?)])
}

fn layer_norm(ctx: &mut Ctx, n: &Node) -> Lowered {
    if n.int("stash_type", 1) != 1 {
        return Err("stash_type other than float32 is not supported".into());
    }
    let x = ctx.value(n.req(0)?)?;
    let mut inputs = vec![x, ctx.value(n.req(1)?)?];
    if let Some(b) = n.input(2) {
        inputs.push(ctx.value(b)?);
    }
    let (axis, epsilon) = (n.int("axis", -1), n.float("epsilon", 1e-5));
    let y = ctx.op(Op::LayerNorm { axis, epsilon }, inputs)?;
    let mut outs = vec![Val::Ir(y)];
    if n.wants_output(1) || n.wants_output(2) {
        // Mean and 1/sqrt(var + epsilon) over the normalized dims, kept as size-1 dims.
        let rank = ctx.g.ty(x).rank();
        let a = normalize_axis(axis, rank).ok_or("axis is out of range")?;
        let axes: Vec<i64> = (a as i64..rank as i64).collect();
        let mean = ctx.op(Op::Reduce { op: ReduceOp::Mean, axes: axes.clone(), keepdims: true }, vec![x])?;
        let d = ctx.op(Op::Binary(BinaryOp::Sub), vec![x, mean])?;
        let d2 = ctx.op(Op::Binary(BinaryOp::Mul), vec![d, d])?;
        let var = ctx.op(Op::Reduce { op: ReduceOp::Mean, axes, keepdims: true }, vec![d2])?;
        let eps = ctx.scalar(ctx.g.ty(x).dtype, epsilon as f64)?;
        let ve = ctx.op(Op::Binary(BinaryOp::Add), vec![var, eps])?;
        let inv = ctx.op(Op::Unary(UnaryOp::Rsqrt), vec![ve])?;
        outs.push(Val::Ir(mean));
        outs.push(Val::Ir(inv));
    }
    Ok(outs)
}

fn reduce(ctx: &mut Ctx, n: &Node) -> Lowered {
    let op = match n.op_type() {
        "ReduceSum" => ReduceOp::Sum,
        "ReduceMean" => ReduceOp::Mean,
        "ReduceMax" => ReduceOp::Max,
        "ReduceMin" => ReduceOp::Min,
        _ => ReduceOp::Prod,
    };
    let name = n.req(0)?;
    let rank = ctx.rank(name)?;
    let keepdims = n.int("keepdims", 1) != 0;
    let mut x = ctx.value(name)?;
    // Max and min of bools reduce as u8 (false < true), then cast back.
    let as_bool = ctx.g.ty(x).dtype == DType::Bool && matches!(op, ReduceOp::Max | ReduceOp::Min);
    if as_bool {
        x = ctx.op(Op::Cast { to: DType::U8 }, vec![x])?;
    }
    // Axes come as an input from opset 13 (ReduceSum) or 18 (the others), else as an attribute.
    let axes = match n.input(1) {
        Some(a) => match ctx.known_ints(a) {
            Some(axes) => Some(axes),
            None if ctx.ty(a)?.shape.static_numel() == Some(0) => Some(vec![]),
            None => None,
        },
        None => Some(n.ints("axes").unwrap_or_default()),
    };
    let y = match axes {
        // Axes computed at run time.
        None => {
            let av = ctx.value(n.req(1)?)?;
            ctx.op(Op::Reduce { op, axes: vec![], keepdims }, vec![x, av])?
        }
        Some(axes) if axes.is_empty() && n.int("noop_with_empty_axes", 0) != 0 => ctx.op(Op::Identity, vec![x])?,
        Some(axes) => {
            for &a in &axes {
                normalize_axis(a, rank).ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))?;
            }
            ctx.op(Op::Reduce { op, axes, keepdims }, vec![x])?
        }
    };
    let y = if as_bool { ctx.op(Op::Cast { to: DType::Bool }, vec![y])? } else { y };
    Ok(vec![Val::Ir(y)])
}

fn argmax(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = ctx.value(n.req(0)?)?;
    let op = Op::ArgMax {
        axis: n.int("axis", 0),
        keepdims: n.int("keepdims", 1) != 0,
        last: n.int("select_last_index", 0) != 0,
    };
    Ok(vec![Val::Ir(ctx.op(op, vec![x])?)])
}
