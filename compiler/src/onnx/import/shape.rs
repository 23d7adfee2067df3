//! Shape and data-movement ONNX ops: `Shape`, `Reshape`, `Transpose`, `Slice`, `Concat`, `Split`,
//! `Squeeze`, `Unsqueeze`, `Expand`, `Gather`, `Range`, `ConstantOfShape`, `Flatten`, `Size`.
//! Each works on symbolic shape tensors at import when its operands are, and otherwise emits IR.

use super::ctx::{attr_tensor, shape_sym, Ctx, Lowered, Node, Val};
use super::sym::{SymInt, SymTensor};
use super::table::LowerFn;
use std::rc::Rc;
use tessera_ir::types::normalize_axis;
use tessera_ir::{DType, Dim, Op, ReduceOp, TargetDim, Tensor};

pub fn lookup(op: &str) -> Option<LowerFn> {
    Some(match op {
        "Shape" => shape,
        "Size" => size,
        "Reshape" => reshape,
        "Transpose" => transpose,
        "Slice" => slice,
        "Concat" => concat,
        "Split" => split,
        "Squeeze" => squeeze,
        "Unsqueeze" => unsqueeze,
        "Expand" => expand,
        "Gather" => gather,
        "Range" => range,
        "ConstantOfShape" => constant_of_shape,
        "Flatten" => flatten,
        _ => return None,
    })
}

fn axis_of(axis: i64, rank: usize) -> Result<usize, String> {
    normalize_axis(axis, rank).ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
}

fn shape(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let ty = ctx.ty(x)?;
    let rank = ty.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let (start, end) = (clamp(n.int("start", 0)), clamp(n.int("end", rank)));
    let end = end.max(start);
    if let Some(s) = shape_sym(&ty.shape) {
        let elems = s.elems[start..end].to_vec();
        return Ok(vec![Val::Sym(SymTensor { dtype: DType::I64, shape: vec![elems.len()], elems })]);
    }
    let v = ctx.value(x)?;
    let mut out = ctx.op(Op::ShapeOf, vec![v])?;
    if (start, end) != (0, rank as usize) {
        out = ctx.op(
            Op::Slice {
                starts: vec![TargetDim::Int(start as i64)],
                ends: vec![TargetDim::Int(end as i64)],
                axes: vec![0],
                steps: vec![1],
            },
            vec![out],
        )?;
    }
    Ok(vec![Val::Ir(out)])
}

fn size(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let ty = ctx.ty(x)?;
    if let Some(numel) = ty.shape.static_numel() {
        return Ok(vec![Val::Known(Rc::new(
            Tensor::from_i64(DType::I64, &[], vec![numel as i64]).map_err(|e| e.to_string())?,
        ))]);
    }
    let v = ctx.value(x)?;
    let s = ctx.op(Op::ShapeOf, vec![v])?;
    Ok(vec![Val::Ir(ctx.op(Op::Reduce { op: ReduceOp::Prod, axes: vec![], keepdims: false }, vec![s])?)])
}

/// Reshapes a symbolic tensor (its elements stay in order).
fn sym_reshape(s: SymTensor, shape: Vec<usize>) -> Option<SymTensor> {
    SymTensor::new(s.dtype, shape, s.elems)
}

/// Resolves an ONNX reshape target against a static input shape (0 copies, -1 infers).
fn static_reshape(input: &[usize], target: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let mut dims = Vec::new();
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        dims.push(match t {
            0 if !allowzero => *input.get(i)?,
            -1 => {
                infer = Some(i);
                1
            }
            t if t >= 0 => t as usize,
            _ => return None,
        });
    }
    // Products are checked: a hostile target must not overflow.
    let product = |ds: &[usize]| ds.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let total = product(input)?;
    if let Some(i) = infer {
        let known = product(&dims)?;
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        dims[i] = total / known;
    }
    (product(&dims)? == total).then_some(dims)
}

fn reshape(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (x, s) = (n.req(0)?, n.req(1)?);
    let allowzero = n.int("allowzero", 0) != 0;
    if let (Some(sx), Some(target)) = (ctx.sym(x), ctx.known_ints(s)) {
        if let Some(shape) = static_reshape(&sx.shape, &target, allowzero) {
            if let Some(r) = sym_reshape(sx, shape) {
                return Ok(vec![Val::Sym(r)]);
            }
        }
    }
    let v = ctx.value(x)?;
    match ctx.targets(s) {
        Some(targets) => {
            if allowzero && targets.contains(&TargetDim::Int(0)) {
                // With allowzero, 0 is a real size; Tessera's reshape reads 0 as "copy the dim".
                return Err("reshape with allowzero and a zero dim is not supported".into());
            }
            Ok(vec![Val::Ir(ctx.op(Op::Reshape { shape: Some(targets) }, vec![v])?)])
        }
        None if allowzero => Err("reshape with allowzero and a shape known only at run time is not supported".into()),
        None => {
            let sv = ctx.value(s)?;
            Ok(vec![Val::Ir(ctx.op(Op::Reshape { shape: None }, vec![v, sv])?)])
        }
    }
}

fn transpose(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let rank = ctx.rank(x)?;
    let perm = match n.ints("perm") {
        Some(p) => p.iter().map(|&a| axis_of(a, rank)).collect::<Result<Vec<_>, _>>()?,
        None => (0..rank).rev().collect(),
    };
    let v = ctx.value(x)?;
    Ok(vec![Val::Ir(ctx.op(Op::Transpose { perm }, vec![v])?)])
}

fn slice(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let rank = ctx.rank(x)?;
    if n.opset < 10 {
        // Before opset 10 the bounds are attributes.
        let starts: Vec<TargetDim> =
            n.ints("starts").ok_or("starts are required")?.into_iter().map(TargetDim::Int).collect();
        let ends: Vec<TargetDim> = n.ints("ends").ok_or("ends are required")?.into_iter().map(TargetDim::Int).collect();
        let axes = n.ints("axes").unwrap_or_else(|| (0..starts.len() as i64).collect());
        let axes: Vec<i64> = axes.iter().map(|&a| axis_of(a, rank).map(|a| a as i64)).collect::<Result<_, _>>()?;
        let steps = vec![1; starts.len()];
        let v = ctx.value(x)?;
        return Ok(vec![Val::Ir(ctx.op(Op::Slice { starts, ends, axes, steps }, vec![v])?)]);
    }
    let (starts, ends) = match (ctx.sym(n.req(1)?), ctx.sym(n.req(2)?)) {
        (Some(s), Some(e))
            if n.input(3).is_none_or(|a| ctx.known_ints(a).is_some())
                && n.input(4).is_none_or(|a| ctx.known_ints(a).is_some()) =>
        {
            (s, e)
        }
        _ => {
            // Bounds known only at run time: x, starts, ends[, axes[, steps]] as operands.
            let mut inputs = vec![ctx.value(x)?, ctx.value(n.req(1)?)?, ctx.value(n.req(2)?)?];
            match (n.input(3), n.input(4)) {
                (Some(a), steps) => {
                    inputs.push(ctx.value(a)?);
                    if let Some(st) = steps {
                        inputs.push(ctx.value(st)?);
                    }
                }
                (None, Some(st)) => {
                    let k = ctx.ty(n.req(1)?)?.shape.static_numel().ok_or("starts needs a static length")?;
                    let axes: Vec<i64> = (0..k as i64).collect();
                    inputs.push(ctx.i64s(&axes));
                    inputs.push(ctx.value(st)?);
                }
                (None, None) => {}
            }
            let op = Op::Slice { starts: vec![], ends: vec![], axes: vec![], steps: vec![] };
            return Ok(vec![Val::Ir(ctx.op(op, inputs)?)]);
        }
    };
    if starts.elems.len() != ends.elems.len() {
        return Err("starts and ends differ in length".into());
    }
    let k = starts.elems.len();
    let axes = match n.input(3) {
        Some(_) => ctx.const_ints(n, 3, "axes")?,
        None => (0..k as i64).collect(),
    };
    let steps = match n.input(4) {
        Some(_) => ctx.const_ints(n, 4, "steps")?,
        None => vec![1; k],
    };
    if axes.len() != k || steps.len() != k {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let axes: Vec<i64> = axes.iter().map(|&a| axis_of(a, rank).map(|a| a as i64)).collect::<Result<_, _>>()?;
    // A 1-D symbolic tensor sliced by known bounds stays symbolic.
    if let (Some(sx), Some(s), Some(e)) = (ctx.sym(x), starts.ints(), ends.ints()) {
        if sx.shape.len() == 1 && k == 1 && steps[0] != 0 {
            let len = sx.shape[0] as i64;
            let (lo, hi) = tessera_ir::infer::slice_bounds(len, s[0], e[0], steps[0]);
            let mut picked = Vec::new();
            let mut i = lo;
            while (steps[0] > 0 && i < hi) || (steps[0] < 0 && i > hi) {
                picked.push(sx.elems[i as usize].clone());
                i += steps[0];
            }
            return Ok(vec![Val::Sym(SymTensor { dtype: sx.dtype, shape: vec![picked.len()], elems: picked })]);
        }
    }
    let v = ctx.value(x)?;
    let op = Op::Slice { starts: starts.targets(), ends: ends.targets(), axes, steps };
    Ok(vec![Val::Ir(ctx.op(op, vec![v])?)])
}

fn concat(ctx: &mut Ctx, n: &Node) -> Lowered {
    let names: Vec<&str> = (0..n.n_inputs()).filter_map(|i| n.input(i)).collect();
    if names.is_empty() {
        return Err("needs at least one input".into());
    }
    let rank = ctx.rank(names[0])?;
    let axis = axis_of(n.int("axis", 0), rank)?;
    let syms: Option<Vec<SymTensor>> = names.iter().map(|s| ctx.sym(s)).collect();
    if let Some(syms) = syms {
        if rank == 1 && syms.iter().all(|s| s.dtype == syms[0].dtype) {
            let elems: Vec<SymInt> = syms.iter().flat_map(|s| s.elems.clone()).collect();
            if let Some(t) = SymTensor::new(syms[0].dtype, vec![elems.len()], elems) {
                return Ok(vec![Val::Sym(t)]);
            }
        }
    }
    let values = names.iter().map(|s| ctx.value(s)).collect::<Result<Vec<_>, _>>()?;
    Ok(vec![Val::Ir(ctx.op(Op::Concat { axis: axis as i64 }, values)?)])
}

fn split(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let ty = ctx.ty(x)?;
    let axis = axis_of(n.int("axis", 0), ty.rank())?;
    let n_out = n.proto.output.len();
    let sizes: Vec<u64> = if let Some(sizes) = n.input(1) {
        match ctx.known_ints(sizes) {
            Some(known) => known.into_iter().map(|s| s.max(0) as u64).collect(),
            None => {
                // Sizes known only at run time: one result per node output.
                let (v, sv) = (ctx.value(x)?, ctx.value(sizes)?);
                let outs = ctx.ops(Op::Split { axis: axis as i64, sizes: vec![0; n_out] }, vec![v, sv])?;
                return Ok(outs.into_iter().map(Val::Ir).collect());
            }
        }
    } else if let Some(s) = n.ints("split") {
        s.into_iter().map(|s| s.max(0) as u64).collect()
    } else {
        let dim = ty.shape.0[axis].as_static().ok_or("an even split needs a static dim")?;
        let parts = if n.has_attr("num_outputs") { n.int("num_outputs", 1) as u64 } else { n_out as u64 };
        if parts == 0 {
            return Err("num_outputs must be positive".into());
        }
        let chunk = dim.div_ceil(parts);
        (0..parts).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
    };
    let v = ctx.value(x)?;
    let outs = ctx.ops(Op::Split { axis: axis as i64, sizes }, vec![v])?;
    Ok(outs.into_iter().map(Val::Ir).collect())
}

/// Axes from the input (opset 13) or the attribute; Err(value) when they are known only at run time.
fn axes_input(ctx: &mut Ctx, n: &Node) -> Result<Result<Option<Vec<i64>>, tessera_ir::Value>, String> {
    match n.input(1) {
        Some(a) => match ctx.known_ints(a) {
            Some(axes) => Ok(Ok(Some(axes))),
            None => Ok(Err(ctx.value(a)?)),
        },
        None => Ok(Ok(n.ints("axes"))),
    }
}

fn squeeze(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let axes = match axes_input(ctx, n)? {
        Ok(axes) => axes.unwrap_or_default(),
        Err(av) => {
            let v = ctx.value(x)?;
            return Ok(vec![Val::Ir(ctx.op(Op::Squeeze { axes: vec![] }, vec![v, av])?)]);
        }
    };
    if let Some(s) = ctx.sym(x) {
        let rank = s.shape.len();
        let norm: Vec<usize> = axes.iter().map(|&a| axis_of(a, rank)).collect::<Result<_, _>>()?;
        let shape: Vec<usize> = s
            .shape
            .iter()
            .enumerate()
            .filter(|(i, d)| if norm.is_empty() { **d != 1 } else { !norm.contains(i) })
            .map(|(_, d)| *d)
            .collect();
        if let Some(r) = sym_reshape(s, shape) {
            return Ok(vec![Val::Sym(r)]);
        }
    }
    let v = ctx.value(x)?;
    Ok(vec![Val::Ir(ctx.op(Op::Squeeze { axes }, vec![v])?)])
}

fn unsqueeze(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let axes = match axes_input(ctx, n)? {
        Ok(axes) => axes.ok_or("axes are required")?,
        Err(av) => {
            let v = ctx.value(x)?;
            return Ok(vec![Val::Ir(ctx.op(Op::Unsqueeze { axes: vec![] }, vec![v, av])?)]);
        }
    };
    if let Some(s) = ctx.sym(x) {
        let rank = s.shape.len() + axes.len();
        let norm: Vec<usize> = axes.iter().map(|&a| axis_of(a, rank)).collect::<Result<_, _>>()?;
        let mut rest = s.shape.iter();
        let shape: Vec<usize> =
            (0..rank).map(|i| if norm.contains(&i) { 1 } else { *rest.next().unwrap_or(&1) }).collect();
        if let Some(r) = sym_reshape(s, shape) {
            return Ok(vec![Val::Sym(r)]);
        }
    }
    let v = ctx.value(x)?;
    Ok(vec![Val::Ir(ctx.op(Op::Unsqueeze { axes }, vec![v])?)])
}

fn expand(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (x, s) = (n.req(0)?, n.req(1)?);
    let v = ctx.value(x)?;
    match ctx.targets(s) {
        Some(t) => Ok(vec![Val::Ir(ctx.op(Op::Expand { shape: Some(t) }, vec![v])?)]),
        None => {
            let sv = ctx.value(s)?;
            Ok(vec![Val::Ir(ctx.op(Op::Expand { shape: None }, vec![v, sv])?)])
        }
    }
}

fn gather(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (data, idx) = (n.req(0)?, n.req(1)?);
    let rank = ctx.rank(data)?;
    let axis = axis_of(n.int("axis", 0), rank)?;
    if let (Some(sd), Some(ids)) = (ctx.sym(data), ctx.known(idx)) {
        if sd.shape.len() == 1 {
            let len = sd.shape[0] as i64;
            let ints = ctx.known_ints(idx).ok_or("indices must be integers")?;
            let picked: Option<Vec<SymInt>> = ints
                .iter()
                .map(|&i| if i < 0 { i + len } else { i })
                .map(|i| (0..len).contains(&i).then(|| sd.elems[i as usize].clone()))
                .collect();
            let picked = picked.ok_or_else(|| format!("index out of range for a shape of length {len}"))?;
            if let Some(t) = SymTensor::new(sd.dtype, ids.shape().to_vec(), picked) {
                return Ok(vec![Val::Sym(t)]);
            }
        }
    }
    let (vd, vi) = (ctx.value(data)?, ctx.value(idx)?);
    Ok(vec![Val::Ir(ctx.op(Op::Gather { axis: axis as i64 }, vec![vd, vi])?)])
}

fn range(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (s, l, d) = (n.req(0)?, n.req(1)?, n.req(2)?);
    // Known bounds fold at import (shape arithmetic such as `Range(0, rank)`).
    if let (Some(ks), Some(kl), Some(kd)) = (ctx.known(s), ctx.known(l), ctx.known(d)) {
        let mut g = tessera_ir::Graph::new("range");
        let ins: Vec<_> = [&ks, &kl, &kd]
            .iter()
            .map(|t| {
                let ty = tessera_ir::TensorType::with_static(t.dtype(), t.shape());
                g.add_const(ty, tessera_ir::ConstData::from_vec(t.to_bytes()))
            })
            .collect();
        if let Ok(out) = g.add_op(Op::Range, ins) {
            g.add_output("r", out[0]);
            if let Ok(mut r) = tessera_ir::run(&g, vec![]) {
                let t = r.remove(0);
                if t.numel() <= 1 << 16 {
                    return Ok(vec![Val::Known(Rc::new(t))]);
                }
            }
        }
    }
    let (vs, vl, vd) = (ctx.value(s)?, ctx.value(l)?, ctx.value(d)?);
    Ok(vec![Val::Ir(ctx.op(Op::Range, vec![vs, vl, vd])?)])
}

fn constant_of_shape(ctx: &mut Ctx, n: &Node) -> Lowered {
    let s = n.req(0)?;
    let value = match n.tensor("value") {
        Some(t) => attr_tensor(t)?,
        None => Tensor::from_f32(DType::F32, &[1], vec![0.0]).map_err(|e| e.to_string())?,
    };
    if value.numel() != 1 {
        return Err("value must hold one element".into());
    }
    let dtype = value.dtype();
    let x = value.to_f64_vec()[0];
    if let Some(dims) = ctx.known_ints(s) {
        let dims: Vec<usize> = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d}")))
            .collect::<Result<_, _>>()?;
        let numel = tessera_ir::tensor::checked_numel(&dims).map_err(|e| e.to_string())?;
        if numel <= 1 << 16 {
            let t = match dtype.domain() {
                tessera_ir::dtype::Domain::Float => Tensor::from_f32(dtype, &dims, vec![x as f32; numel]),
                tessera_ir::dtype::Domain::Int => Tensor::from_i64(dtype, &dims, vec![x as i64; numel]),
                tessera_ir::dtype::Domain::Bool => Tensor::from_bool(&dims, vec![x != 0.0; numel]),
            }
            .map_err(|e| e.to_string())?;
            return Ok(vec![Val::Known(Rc::new(t))]);
        }
    }
    let scalar = ctx.scalar(dtype, x)?;
    match ctx.targets(s) {
        Some(t) => Ok(vec![Val::Ir(ctx.op(Op::Expand { shape: Some(t) }, vec![scalar])?)]),
        None => {
            let sv = ctx.value(s)?;
            Ok(vec![Val::Ir(ctx.op(Op::ConstantOfShape { value: x, dtype }, vec![sv])?)])
        }
    }
}

fn flatten(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let ty = ctx.ty(x)?;
    let rank = ty.rank();
    let a = n.int("axis", 1);
    let a = if a < 0 { a + rank as i64 } else { a };
    if !(0..=rank as i64).contains(&a) {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    let (left, right) = ty.shape.0.split_at(a as usize);
    let prod = |ds: &[Dim]| ds.iter().map(|d| d.as_static()).product::<Option<u64>>();
    let target = match (prod(left), prod(right)) {
        (Some(l), Some(r)) => vec![TargetDim::Int(l as i64), TargetDim::Int(r as i64)],
        (None, Some(r)) => vec![TargetDim::Int(-1), TargetDim::Int(r as i64)],
        (Some(l), None) => vec![TargetDim::Int(l as i64), TargetDim::Int(-1)],
        (None, None) => return Err("flattening symbolic dims on both sides is not supported".into()),
    };
    let v = ctx.value(x)?;
    Ok(vec![Val::Ir(ctx.op(Op::Reshape { shape: Some(target) }, vec![v])?)])
}
