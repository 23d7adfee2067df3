//! Elementwise ONNX ops: arithmetic, comparisons, logic, activations, `Where`, `Cast`, `Clip`,
//! `Identity` and `Constant`. Integer shape arithmetic stays symbolic where it can (`sym.rs`).

use super::ctx::{attr_tensor, Ctx, Lowered, Node, Val};
use super::sym::{self, SymInt};
use super::table::LowerFn;
use crate::onnx::tensor_io::onnx_dtype;
use std::rc::Rc;
use tessera_ir::{BinaryOp, DType, Op, Tensor, UnaryOp};

pub fn lookup(op: &str) -> Option<LowerFn> {
    Some(match op {
        "Neg" | "Abs" | "Exp" | "Log" | "Sqrt" | "Reciprocal" | "Tanh" | "Erf" | "Sigmoid" | "Relu" | "Floor"
        | "Ceil" | "Round" | "Sign" | "Sin" | "Cos" | "Not" | "IsNaN" => unary,
        "IsInf" => is_inf,
        "Gelu" => gelu,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "And" | "Or" | "Xor" | "Equal" | "Less" | "LessOrEqual" | "Greater"
        | "GreaterOrEqual" => binary,
        "Max" | "Min" | "Sum" | "Mean" => variadic,
        "Mod" => modulo,
        "Where" => where_,
        "Cast" | "CastLike" => cast,
        "Clip" => clip,
        "Identity" => identity,
        "Constant" => constant,
        _ => return None,
    })
}

fn unary(ctx: &mut Ctx, n: &Node) -> Lowered {
    let u = match n.op_type() {
        "Neg" => UnaryOp::Neg,
        "Abs" => UnaryOp::Abs,
        "Exp" => UnaryOp::Exp,
        "Log" => UnaryOp::Log,
        "Sqrt" => UnaryOp::Sqrt,
        "Reciprocal" => UnaryOp::Reciprocal,
        "Tanh" => UnaryOp::Tanh,
        "Erf" => UnaryOp::Erf,
        "Sigmoid" => UnaryOp::Sigmoid,
        "Relu" => UnaryOp::Relu,
        "Floor" => UnaryOp::Floor,
        "Ceil" => UnaryOp::Ceil,
        "Round" => UnaryOp::Round,
        "Sign" => UnaryOp::Sign,
        "Sin" => UnaryOp::Sin,
        "Cos" => UnaryOp::Cos,
        "Not" => UnaryOp::Not,
        _ => UnaryOp::IsNan,
    };
    let x = ctx.value(n.req(0)?)?;
    Ok(vec![Val::Ir(ctx.op(Op::Unary(u), vec![x])?)])
}

fn is_inf(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = ctx.value(n.req(0)?)?;
    let dtype = ctx.g.ty(x).dtype;
    let (pos, neg) = (n.int("detect_positive", 1) != 0, n.int("detect_negative", 1) != 0);
    let out = match (pos, neg) {
        (true, true) => ctx.op(Op::Unary(UnaryOp::IsInf), vec![x])?,
        (false, false) => {
            let f = ctx.scalar(DType::Bool, 0.0)?;
            let inf = ctx.op(Op::Unary(UnaryOp::IsInf), vec![x])?;
            ctx.op(Op::Binary(BinaryOp::And), vec![inf, f])?
        }
        (p, _) => {
            let target = ctx.scalar(dtype, if p { f64::INFINITY } else { f64::NEG_INFINITY })?;
            ctx.op(Op::Binary(BinaryOp::Equal), vec![x, target])?
        }
    };
    Ok(vec![Val::Ir(out)])
}

fn gelu(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = ctx.value(n.req(0)?)?;
    let u = match n.string("approximate").as_deref().unwrap_or("none") {
        "none" => UnaryOp::Gelu,
        "tanh" => UnaryOp::GeluTanh,
        other => return Err(format!("approximate = {other:?} is not supported")),
    };
    Ok(vec![Val::Ir(ctx.op(Op::Unary(u), vec![x])?)])
}

fn binary_op(op: &str) -> BinaryOp {
    match op {
        "Add" | "Sum" | "Mean" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Pow" => BinaryOp::Pow,
        "And" => BinaryOp::And,
        "Or" => BinaryOp::Or,
        "Xor" => BinaryOp::Xor,
        "Equal" => BinaryOp::Equal,
        "Less" => BinaryOp::Less,
        "LessOrEqual" => BinaryOp::LessEqual,
        "Greater" => BinaryOp::Greater,
        "GreaterOrEqual" => BinaryOp::GreaterEqual,
        "Max" => BinaryOp::Max,
        _ => BinaryOp::Min,
    }
}

/// Symbolic evaluation of integer arithmetic and comparisons, when every element stays known.
fn binary_sym(ctx: &Ctx, op: &str, a: &str, b: &str) -> Option<Val> {
    let (sa, sb) = (ctx.sym(a)?, ctx.sym(b)?);
    if sa.dtype != sb.dtype || sa.dtype == DType::Bool {
        return None;
    }
    let out = match op {
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" => sym::binary(&sa, &sb, sa.dtype, |x, y| sym::arith(op, x, y))?,
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
            sym::binary(&sa, &sb, DType::Bool, |x, y| sym::compare(op, x, y))?
        }
        _ => return None,
    };
    // Keep the element values inside the dtype (i32 shape math wraps like the real op).
    let elems = out.elems.iter().map(|e| match e {
        SymInt::Int(v) if out.dtype != DType::Bool => SymInt::Int(out.dtype.wrap_int(*v)),
        e => e.clone(),
    });
    Some(Val::Sym(sym::SymTensor { elems: elems.collect(), ..out }))
}

fn binary(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (a, b) = (n.req(0)?, n.req(1)?);
    if let Some(v) = binary_sym(ctx, n.op_type(), a, b) {
        return Ok(vec![v]);
    }
    let va = ctx.value(a)?;
    let mut vb = ctx.value(b)?;
    // Pow takes an exponent of another type; Tessera's pow takes one dtype.
    if n.op_type() == "Pow" && ctx.g.ty(vb).dtype != ctx.g.ty(va).dtype {
        vb = ctx.op(Op::Cast { to: ctx.g.ty(va).dtype }, vec![vb])?;
    }
    Ok(vec![Val::Ir(ctx.op(Op::Binary(binary_op(n.op_type())), vec![va, vb])?)])
}

fn variadic(ctx: &mut Ctx, n: &Node) -> Lowered {
    let names: Vec<&str> = (0..n.n_inputs()).filter_map(|i| n.input(i)).collect();
    if names.is_empty() {
        return Err("needs at least one input".into());
    }
    let op = n.op_type();
    // Symbolic max/min of shapes.
    if matches!(op, "Max" | "Min") && names.len() == 2 {
        if let Some(v) = binary_sym(ctx, op, names[0], names[1]) {
            return Ok(vec![v]);
        }
    }
    let mut acc = ctx.value(names[0])?;
    for name in &names[1..] {
        let v = ctx.value(name)?;
        acc = ctx.op(Op::Binary(binary_op(op)), vec![acc, v])?;
    }
    if op == "Mean" {
        let count = ctx.scalar(ctx.g.ty(acc).dtype, names.len() as f64)?;
        acc = ctx.op(Op::Binary(BinaryOp::Div), vec![acc, count])?;
    }
    if names.len() == 1 {
        acc = ctx.op(Op::Identity, vec![acc])?;
    }
    Ok(vec![Val::Ir(acc)])
}

fn modulo(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (a, b) = (n.req(0)?, n.req(1)?);
    let fmod = n.int("fmod", 0) != 0;
    let (va, vb) = (ctx.value(a)?, ctx.value(b)?);
    if !fmod && ctx.g.ty(va).dtype.is_float() {
        return Err("Mod of floats needs fmod = 1".into());
    }
    let op = if fmod { BinaryOp::Fmod } else { BinaryOp::Mod };
    Ok(vec![Val::Ir(ctx.op(Op::Binary(op), vec![va, vb])?)])
}

fn where_(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (c, a, b) = (n.req(0)?, n.req(1)?, n.req(2)?);
    if let (Some(sc), Some(sa), Some(sb)) = (ctx.sym(c), ctx.sym(a), ctx.sym(b)) {
        if sa.dtype == sb.dtype {
            if let Some(p) = sym::select(&sc, &sa, &sb) {
                return Ok(vec![Val::Sym(p)]);
            }
        }
    }
    let (vc, va, vb) = (ctx.value(c)?, ctx.value(a)?, ctx.value(b)?);
    Ok(vec![Val::Ir(ctx.op(Op::Where, vec![vc, va, vb])?)])
}

fn cast(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = n.req(0)?;
    let to = if n.op_type() == "CastLike" {
        ctx.dtype(n.req(1)?)?
    } else {
        let code = n.int("to", 0) as i32;
        onnx_dtype(code).map_err(|u| format!("cast to {} is not supported", u.name))?
    };
    if let Some(s) = ctx.sym(x) {
        if to.is_int() && s.dtype.is_int() {
            let elems = s.elems.iter().map(|e| match e {
                SymInt::Int(v) => SymInt::Int(to.wrap_int(*v)),
                d => d.clone(),
            });
            return Ok(vec![Val::Sym(sym::SymTensor { dtype: to, elems: elems.collect(), shape: s.shape })]);
        }
    }
    let v = ctx.value(x)?;
    if ctx.g.ty(v).dtype == to {
        return Ok(vec![Val::Ir(v)]);
    }
    Ok(vec![Val::Ir(ctx.op(Op::Cast { to }, vec![v])?)])
}

fn clip(ctx: &mut Ctx, n: &Node) -> Lowered {
    let mut x = ctx.value(n.req(0)?)?;
    if n.opset < 11 {
        // Before opset 11 the bounds are attributes.
        let dtype = ctx.g.ty(x).dtype;
        let lo = ctx.scalar(dtype, n.float("min", f32::MIN) as f64)?;
        let hi = ctx.scalar(dtype, n.float("max", f32::MAX) as f64)?;
        let y = ctx.op(Op::Binary(BinaryOp::Max), vec![x, lo])?;
        return Ok(vec![Val::Ir(ctx.op(Op::Binary(BinaryOp::Min), vec![y, hi])?)]);
    }
    if let Some(lo) = n.input(1) {
        let lo = ctx.value(lo)?;
        x = ctx.op(Op::Binary(BinaryOp::Max), vec![x, lo])?;
    }
    if let Some(hi) = n.input(2) {
        let hi = ctx.value(hi)?;
        x = ctx.op(Op::Binary(BinaryOp::Min), vec![x, hi])?;
    }
    if n.input(1).is_none() && n.input(2).is_none() {
        x = ctx.op(Op::Identity, vec![x])?;
    }
    Ok(vec![Val::Ir(x)])
}

fn identity(ctx: &mut Ctx, n: &Node) -> Lowered {
    Ok(vec![ctx.val(n.req(0)?)?.clone()])
}

fn constant(_ctx: &mut Ctx, n: &Node) -> Lowered {
    let t = if let Some(t) = n.tensor("value") {
        attr_tensor(t)?
    } else if n.has_attr("value_float") {
        Tensor::from_f32(DType::F32, &[], vec![n.float("value_float", 0.0)]).map_err(|e| e.to_string())?
    } else if let Some(fs) = n.proto.attribute.iter().find(|a| a.name.as_deref() == Some("value_floats")) {
        Tensor::from_f32(DType::F32, &[fs.floats.len()], fs.floats.clone()).map_err(|e| e.to_string())?
    } else if n.has_attr("value_int") {
        Tensor::from_i64(DType::I64, &[], vec![n.int("value_int", 0)]).map_err(|e| e.to_string())?
    } else if let Some(is) = n.ints("value_ints") {
        Tensor::from_i64(DType::I64, &[is.len()], is).map_err(|e| e.to_string())?
    } else {
        return Err("only tensor, float(s) and int(s) constants are supported (not sparse or string)".into());
    };
    Ok(vec![Val::Known(Rc::new(t))])
}
