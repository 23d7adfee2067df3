//! The transformer ops of opset 23: `RMSNormalization`, `GatherND` (opset 13), `RotaryEmbedding`
//! and `Attention` (with opset 24's `nonpad_kv_seqlen` input).
//!
//! `RMSNormalization` and `GatherND` become one IR op each. `RotaryEmbedding` and `Attention`
//! are decomposed into primitive IR ops in the order of the ONNX reference implementation
//! (onnx 1.22.0, `onnx/reference/ops/op_rotary_embedding.py` and `op_attention.py`), so that
//! every mode (softcap, masks, causal with a KV cache, the `qk_matmul_output` modes) has an exact
//! meaning; the optimizer fuses the attention pattern into the IR `attention` op where it fits.

use super::ctx::{Ctx, Lowered, Node, Val};
use super::table::LowerFn;
use crate::onnx::tensor_io::onnx_dtype;
use tessera_ir::infer::broadcast;
use tessera_ir::types::normalize_axis;
use tessera_ir::{BinaryOp, DType, Dim, Op, Shape, TargetDim, Tensor, UnaryOp, Value};

pub fn lookup(op: &str) -> Option<LowerFn> {
    Some(match op {
        "RMSNormalization" => rms_norm,
        "GatherND" => gather_nd,
        "RotaryEmbedding" => rotary_embedding,
        "Attention" => attention,
        _ => return None,
    })
}

type R<T> = Result<T, String>;

fn dims(ctx: &Ctx, v: Value) -> Vec<Dim> {
    ctx.g.ty(v).shape.0.clone()
}

fn unary(ctx: &mut Ctx, u: UnaryOp, x: Value) -> R<Value> {
    ctx.op(Op::Unary(u), vec![x])
}

fn binary(ctx: &mut Ctx, b: BinaryOp, x: Value, y: Value) -> R<Value> {
    ctx.op(Op::Binary(b), vec![x, y])
}

fn reshape(ctx: &mut Ctx, x: Value, target: Vec<TargetDim>) -> R<Value> {
    ctx.op(Op::Reshape { shape: Some(target) }, vec![x])
}

fn transpose(ctx: &mut Ctx, x: Value, perm: &[usize]) -> R<Value> {
    ctx.op(Op::Transpose { perm: perm.to_vec() }, vec![x])
}

fn unsqueeze(ctx: &mut Ctx, x: Value, axis: i64) -> R<Value> {
    ctx.op(Op::Unsqueeze { axes: vec![axis] }, vec![x])
}

fn concat(ctx: &mut Ctx, xs: Vec<Value>, axis: i64) -> R<Value> {
    ctx.op(Op::Concat { axis }, xs)
}

fn cast(ctx: &mut Ctx, x: Value, to: DType) -> R<Value> {
    if ctx.g.ty(x).dtype == to {
        return Ok(x);
    }
    ctx.op(Op::Cast { to }, vec![x])
}

/// `x[..., start:end:step]` on the last axis.
fn slice_last(ctx: &mut Ctx, x: Value, start: i64, end: i64, step: i64) -> R<Value> {
    let op = Op::Slice {
        starts: vec![TargetDim::Int(start)],
        ends: vec![TargetDim::Int(end)],
        axes: vec![-1],
        steps: vec![step],
    };
    ctx.op(op, vec![x])
}

/// The size of `axis` of `x` as an i64 scalar computed at run time.
fn dim_scalar(ctx: &mut Ctx, x: Value, axis: i64) -> R<Value> {
    let s = ctx.op(Op::ShapeOf, vec![x])?;
    let op = Op::Slice {
        starts: vec![TargetDim::Int(axis)],
        ends: vec![TargetDim::Int(axis + 1)],
        axes: vec![0],
        steps: vec![1],
    };
    let s = ctx.op(op, vec![s])?;
    reshape(ctx, s, vec![])
}

/// `x` (a 1-D `range` result) typed with the length `d` when that is known or a symbol.
fn with_len(ctx: &mut Ctx, x: Value, d: &Dim) -> R<Value> {
    match d {
        Dim::Unknown => Ok(x),
        d => reshape(ctx, x, vec![TargetDim::from(d)]),
    }
}

/// A reshape target for dims taken from a type: `?` becomes -1 (at most one may be `?`).
fn targets(ds: &[Dim]) -> R<Vec<TargetDim>> {
    if ds.iter().filter(|d| **d == Dim::Unknown).count() > 1 {
        return Err("more than one dynamic dim of unknown size is not supported here".into());
    }
    Ok(ds.iter().map(TargetDim::from).collect())
}

// ---------------------------------------------------------------------------------------------
// RMSNormalization

/// `Y = X / sqrt(mean(X^2 over axis..) + epsilon) * Scale`, Scale broadcast (numpy) against X.
fn rms_norm(ctx: &mut Ctx, n: &Node) -> Lowered {
    if n.int("stash_type", 1) != 1 {
        return Err("stash_type other than float32 is not supported".into());
    }
    let x = ctx.value(n.req(0)?)?;
    let scale = ctx.value(n.req(1)?)?;
    let (xt, st) = (ctx.g.ty(x).clone(), ctx.g.ty(scale).clone());
    let axis = n.int("axis", -1);
    let a =
        normalize_axis(axis, xt.rank()).ok_or_else(|| format!("axis {axis} is out of range for rank {}", xt.rank()))?;
    let epsilon = n.float("epsilon", 1e-5);
    let op = Op::RmsNorm { axis, epsilon };
    // The IR op takes a scale that broadcasts to the normalized dims `X[axis..]`; ONNX only asks
    // that it broadcasts to X, so a scale of higher rank (or another dtype) is multiplied after.
    let normalized = Shape(xt.shape.0[a..].to_vec());
    let fits = st.dtype == xt.dtype
        && st.rank() <= normalized.rank()
        && broadcast(&st.shape, &normalized).is_ok_and(|b| b.rank() == normalized.rank());
    if fits {
        return Ok(vec![Val::Ir(ctx.op(op, vec![x, scale])?)]);
    }
    let one = ctx.scalar(xt.dtype, 1.0)?;
    let y = ctx.op(op, vec![x, one])?;
    let y = cast(ctx, y, st.dtype)?;
    Ok(vec![Val::Ir(binary(ctx, BinaryOp::Mul, y, scale)?)])
}

// ---------------------------------------------------------------------------------------------
// GatherND

fn gather_nd(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (d, i) = (n.req(0)?, n.req(1)?);
    let it = ctx.dtype(i)?;
    if it != DType::I64 {
        return Err(format!("GatherND indices of type {it} are not supported (ONNX requires int64)"));
    }
    let batch_dims = n.int("batch_dims", 0);
    if batch_dims < 0 {
        return Err(format!("batch_dims {batch_dims} must not be negative"));
    }
    let (vd, vi) = (ctx.value(d)?, ctx.value(i)?);
    Ok(vec![Val::Ir(ctx.op(Op::GatherNd { batch_dims: batch_dims as u64 }, vec![vd, vi])?)])
}

// ---------------------------------------------------------------------------------------------
// RotaryEmbedding

/// Rotates the first `rotary_embedding_dim` features of each head by the angles whose cosines
/// and sines the caches hold (picked by `position_ids` when given), as the reference does.
/// The reference works in `[B, S, H, D]`; a 4-D input `[B, H, S, D]` is kept in its layout and
/// the caches broadcast over axis 1 instead, which is the same elementwise arithmetic.
fn rotary_embedding(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = ctx.value(n.req(0)?)?;
    let xt = ctx.g.ty(x).clone();
    let interleaved = n.int("interleaved", 0) != 0;
    let (x4, head_axis, hidden) = match xt.rank() {
        4 => (x, 1, None),
        3 => {
            let heads = n.int("num_heads", 0);
            if heads <= 0 {
                return Err("a 3-D input needs the num_heads attribute".into());
            }
            let hidden = xt.shape.0[2].as_static().ok_or("a 3-D input with a dynamic hidden size is not supported")?;
            if hidden % heads as u64 != 0 {
                return Err(format!("hidden size {hidden} is not a multiple of num_heads {heads}"));
            }
            let head = (hidden / heads as u64) as i64;
            let target = vec![TargetDim::Int(0), TargetDim::Int(0), TargetDim::Int(heads), TargetDim::Int(head)];
            (reshape(ctx, x, target)?, 2, Some(hidden as i64))
        }
        r => return Err(format!("an input of rank {r} is not supported (RotaryEmbedding takes 3-D or 4-D)")),
    };
    let d = dims(ctx, x4)[3].as_static().ok_or("a dynamic head size is not supported")? as i64;
    let rot = match n.int("rotary_embedding_dim", 0) {
        0 => d,
        r => r,
    };
    if rot <= 0 || rot > d || rot % 2 != 0 {
        return Err(format!("rotary_embedding_dim {rot} must be even and at most the head size {d}"));
    }
    let half = rot / 2;
    let (mut cos, mut sin) = (ctx.value(n.req(1)?)?, ctx.value(n.req(2)?)?);
    if let Some(p) = n.input(3) {
        let pos = ctx.value(p)?;
        cos = ctx.op(Op::Gather { axis: 0 }, vec![cos, pos])?;
        sin = ctx.op(Op::Gather { axis: 0 }, vec![sin, pos])?;
    }
    for (what, c) in [("cos_cache", cos), ("sin_cache", sin)] {
        let cd = dims(ctx, c);
        if cd.len() != 3 {
            return Err(format!(
                "{what} gives {} dims per token; expected [batch, sequence, {half}] (2-D caches need position_ids)",
                cd.len()
            ));
        }
        if cd[2].as_static().is_some_and(|l| l as i64 != half) {
            return Err(format!("the last dim of {what} is {}, expected rotary_embedding_dim / 2 = {half}", cd[2]));
        }
    }
    // [B, S, R/2] -> [B, S, 1, R/2] (3-D input) or [B, 1, S, R/2] (4-D input).
    let cos = unsqueeze(ctx, cos, head_axis)?;
    let sin = unsqueeze(ctx, sin, head_axis)?;
    let x_rot = if rot < d { slice_last(ctx, x4, 0, rot, 1)? } else { x4 };
    let (x1, x2) = if interleaved {
        (slice_last(ctx, x_rot, 0, rot, 2)?, slice_last(ctx, x_rot, 1, rot, 2)?)
    } else {
        (slice_last(ctx, x_rot, 0, half, 1)?, slice_last(ctx, x_rot, half, rot, 1)?)
    };
    // real = cos * x1 - sin * x2; imag = sin * x1 + cos * x2
    let (a, b) = (binary(ctx, BinaryOp::Mul, cos, x1)?, binary(ctx, BinaryOp::Mul, sin, x2)?);
    let real = binary(ctx, BinaryOp::Sub, a, b)?;
    let (a, b) = (binary(ctx, BinaryOp::Mul, sin, x1)?, binary(ctx, BinaryOp::Mul, cos, x2)?);
    let imag = binary(ctx, BinaryOp::Add, a, b)?;
    let rotated = if interleaved {
        // Put real and imag back at the even and odd positions.
        let (re, im) = (unsqueeze(ctx, real, -1)?, unsqueeze(ctx, imag, -1)?);
        let pairs = concat(ctx, vec![re, im], -1)?;
        let target = vec![TargetDim::Int(0), TargetDim::Int(0), TargetDim::Int(0), TargetDim::Int(rot)];
        reshape(ctx, pairs, target)?
    } else {
        concat(ctx, vec![real, imag], -1)?
    };
    let mut out = rotated;
    if rot < d {
        let pass = slice_last(ctx, x4, rot, d, 1)?;
        out = concat(ctx, vec![out, pass], -1)?;
    }
    if let Some(hidden) = hidden {
        out = reshape(ctx, out, vec![TargetDim::Int(0), TargetDim::Int(0), TargetDim::Int(hidden)])?;
    }
    Ok(vec![Val::Ir(out)])
}

// ---------------------------------------------------------------------------------------------
// Attention

/// `[B, S, H * D]` -> `[B, H, S, D]`.
fn split_heads(ctx: &mut Ctx, x: Value, heads: i64) -> R<Value> {
    let d = &dims(ctx, x)[2];
    let head = match d.as_static() {
        Some(h) if h % heads as u64 != 0 => return Err(format!("hidden size {h} is not a multiple of {heads} heads")),
        Some(h) => (h / heads as u64) as i64,
        None => -1,
    };
    let x = reshape(ctx, x, vec![TargetDim::Int(0), TargetDim::Int(0), TargetDim::Int(heads), TargetDim::Int(head)])?;
    transpose(ctx, x, &[0, 2, 1, 3])
}

/// `[B, H, T, D]` -> `[B, H * r, T, D]`, each head repeated `r` times in place (`np.repeat`
/// along axis 1: h0, h0, h1, h1, ..).
fn repeat_heads(ctx: &mut Ctx, x: Value, heads: u64, r: u64) -> R<Value> {
    let d = dims(ctx, x);
    let u = unsqueeze(ctx, x, 2)?;
    let e = ctx.op(Op::Expand { shape: Some([1, 1, r as i64, 1, 1].map(TargetDim::Int).to_vec()) }, vec![u])?;
    let mut target = vec![TargetDim::Int(0), TargetDim::Int((heads * r) as i64)];
    target.extend(targets(&d[2..])?);
    reshape(ctx, e, target)
}

/// The causal mask of the reference (`_apply_causal`): query `i` sees key `j` when
/// `j <= i + past_sequence_length` (upper-left alignment of the new keys, shifted by the past).
/// A constant when the lengths are static, else computed at run time.
fn causal_keep(ctx: &mut Ctx, q: Value, k: Value, past: Option<Value>) -> R<Value> {
    let (sq, total) = (dims(ctx, q)[2].clone(), dims(ctx, k)[2].clone());
    let past_len = match past {
        Some(p) => dims(ctx, p)[2].clone(),
        None => Dim::Static(0),
    };
    if let (Some(sq), Some(t), Some(p)) = (sq.as_static(), total.as_static(), past_len.as_static()) {
        let keep = (0..sq).flat_map(|i| (0..t).map(move |j| j <= i + p)).collect();
        let t = Tensor::from_bool(&[sq as usize, t as usize], keep).map_err(|e| e.to_string())?;
        return Ok(ctx.const_tensor(&t));
    }
    let zero = ctx.scalar(DType::I64, 0.0)?;
    let one = ctx.scalar(DType::I64, 1.0)?;
    let sq_v = dim_scalar(ctx, q, 2)?;
    let total_v = dim_scalar(ctx, k, 2)?;
    let rows = ctx.op(Op::Range, vec![zero, sq_v, one])?;
    let rows = reshape(ctx, rows, vec![TargetDim::from(&sq), TargetDim::Int(1)])?;
    let cols = ctx.op(Op::Range, vec![zero, total_v, one])?;
    let cols = with_len(ctx, cols, &total)?;
    let limit = match past {
        Some(p) => {
            let p = dim_scalar(ctx, p, 2)?;
            binary(ctx, BinaryOp::Add, rows, p)?
        }
        None => rows,
    };
    binary(ctx, BinaryOp::LessEqual, cols, limit)
}

/// `[B, 1, 1, T]`: whether key `j` is below `lens[b]` (the `nonpad_kv_seqlen` input, `[B]`).
fn valid_keys(ctx: &mut Ctx, lens: Value, k: Value) -> R<Value> {
    let lt = ctx.g.ty(lens).clone();
    if lt.dtype != DType::I64 || lt.rank() != 1 {
        return Err(format!("nonpad_kv_seqlen must be a 1-D int64 tensor, got {lt}"));
    }
    let total = dims(ctx, k)[2].clone();
    let cols = match total.as_static() {
        Some(t) => ctx.i64s(&(0..t as i64).collect::<Vec<_>>()),
        None => {
            let zero = ctx.scalar(DType::I64, 0.0)?;
            let one = ctx.scalar(DType::I64, 1.0)?;
            let t = dim_scalar(ctx, k, 2)?;
            let r = ctx.op(Op::Range, vec![zero, t, one])?;
            with_len(ctx, r, &total)?
        }
    };
    let lens = reshape(ctx, lens, vec![TargetDim::Int(0), TargetDim::Int(1)])?;
    let valid = binary(ctx, BinaryOp::Less, cols, lens)?;
    reshape(ctx, valid, vec![TargetDim::Int(0), TargetDim::Int(1), TargetDim::Int(1), TargetDim::from(&total)])
}

/// The reference pads a mask shorter than the total key count with -inf (false for bool).
fn pad_mask(ctx: &mut Ctx, mask: Value, total: &Dim) -> R<Value> {
    let md = dims(ctx, mask);
    let (Some(m), Some(t)) = (md.last().and_then(Dim::as_static), total.as_static()) else {
        return Ok(mask);
    };
    if m >= t {
        return Ok(mask);
    }
    let mut shape = Shape(md[..md.len() - 1].to_vec())
        .as_static()
        .ok_or("padding an attention mask with dynamic leading dims is not supported")?;
    shape.push((t - m) as usize);
    let count = shape.iter().product();
    let dtype = ctx.g.ty(mask).dtype;
    let pad = if dtype == DType::Bool {
        Tensor::from_bool(&shape, vec![false; count])
    } else {
        Tensor::from_f32(dtype, &shape, vec![f32::NEG_INFINITY; count])
    }
    .map_err(|e| e.to_string())?;
    let pad = ctx.const_tensor(&pad);
    concat(ctx, vec![mask, pad], -1)
}

/// Scaled dot-product attention as the reference computes it:
///
/// ```text
/// present_key = concat(past_key, K), present_value = concat(past_value, V)   (axis 2)
/// K, V        = heads repeated to the query heads (grouped-query attention)
/// qk          = (Q * sqrt(scale)) @ (transpose(K) * sqrt(scale))
/// capped      = tanh(qk / softcap) * softcap                (softcap > 0, before the mask)
/// scores      = capped + float mask; where(bool mask and causal, scores, -inf)
/// Y           = softmax(scores in softmax_precision) @ V
/// ```
///
/// Opset 24 adds `nonpad_kv_seqlen` (input 6), which masks the keys past each batch's length.
fn attention(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (q_in, k_in, v_in) = (ctx.value(n.req(0)?)?, ctx.value(n.req(1)?)?, ctx.value(n.req(2)?)?);
    let dtype = ctx.g.ty(q_in).dtype;
    if !dtype.is_float() {
        return Err(format!("Attention on {dtype} is not supported"));
    }
    let rank = ctx.g.ty(q_in).rank();
    if ctx.g.ty(k_in).rank() != rank || ctx.g.ty(v_in).rank() != rank {
        return Err("Q, K and V must have one rank".into());
    }
    let (q, k, v) = match rank {
        4 => (q_in, k_in, v_in),
        3 => {
            let (hq, hkv) = (n.int("q_num_heads", 0), n.int("kv_num_heads", 0));
            if hq <= 0 || hkv <= 0 {
                return Err("3-D inputs need the q_num_heads and kv_num_heads attributes".into());
            }
            (split_heads(ctx, q_in, hq)?, split_heads(ctx, k_in, hkv)?, split_heads(ctx, v_in, hkv)?)
        }
        r => return Err(format!("inputs of rank {r} are not supported (Attention takes 3-D or 4-D)")),
    };

    // The KV cache.
    let (past_k, past_v) = match (n.input(4), n.input(5)) {
        (Some(pk), Some(pv)) => (Some(ctx.value(pk)?), Some(ctx.value(pv)?)),
        (None, None) => (None, None),
        _ => return Err("past_key and past_value must be given together".into()),
    };
    let present_k = match past_k {
        Some(p) => concat(ctx, vec![p, k], 2)?,
        None => k,
    };
    let present_v = match past_v {
        Some(p) => concat(ctx, vec![p, v], 2)?,
        None => v,
    };
    let (qd, kd) = (dims(ctx, q), dims(ctx, present_k));
    let total = kd[2].clone();

    // Grouped-query attention: repeat each KV head to its group of query heads.
    let (hq, hkv) = (qd[1].clone(), kd[1].clone());
    let (k_all, v_all) = if hq == hkv && hq != Dim::Unknown {
        (present_k, present_v)
    } else {
        match (hq.as_static(), hkv.as_static()) {
            (Some(a), Some(b)) if b > 0 && a % b == 0 => {
                (repeat_heads(ctx, present_k, b, a / b)?, repeat_heads(ctx, present_v, b, a / b)?)
            }
            (Some(a), Some(b)) => return Err(format!("{a} query heads are not a multiple of {b} key/value heads")),
            _ => return Err(format!("query heads {hq} and key/value heads {hkv} of dynamic size are not supported")),
        }
    };

    // Scores: Q and K^T are each scaled by sqrt(scale), as the reference does against overflow.
    let scale = if n.has_attr("scale") {
        n.float("scale", 1.0) as f64
    } else {
        let head = qd[3].as_static().ok_or("the default scale of a dynamic head size is not supported")?;
        1.0 / (head as f64).sqrt()
    };
    let s = ctx.scalar(dtype, scale.sqrt())?;
    let kt = transpose(ctx, k_all, &[0, 1, 3, 2])?;
    let qs = binary(ctx, BinaryOp::Mul, q, s)?;
    let ks = binary(ctx, BinaryOp::Mul, kt, s)?;
    let qk = ctx.op(Op::MatMul, vec![qs, ks])?;

    // Softcap comes before the mask, so masked scores stay -inf.
    let softcap = n.float("softcap", 0.0);
    let capped = if softcap > 0.0 {
        let c = ctx.scalar(dtype, softcap as f64)?;
        let t = binary(ctx, BinaryOp::Div, qk, c)?;
        let t = unary(ctx, UnaryOp::Tanh, t)?;
        binary(ctx, BinaryOp::Mul, t, c)?
    } else {
        qk
    };

    // Masks: a float mask is added; a bool mask (true = attend) and the causal mask select
    // between the score and -inf (the same as adding 0 or -inf).
    let mut scores = capped;
    let mut keep = None;
    if let Some(m) = n.input(3) {
        let mask = ctx.value(m)?;
        let mask = pad_mask(ctx, mask, &total)?;
        let mt = ctx.g.ty(mask).dtype;
        if mt == DType::Bool {
            keep = Some(mask);
        } else if mt.is_float() {
            let mask = cast(ctx, mask, dtype)?;
            scores = binary(ctx, BinaryOp::Add, scores, mask)?;
        } else {
            return Err(format!("an attention mask of type {mt} is not supported (only bool or float)"));
        }
    }
    if n.int("is_causal", 0) != 0 {
        let causal = causal_keep(ctx, q, present_k, past_k)?;
        keep = Some(match keep {
            Some(m) => binary(ctx, BinaryOp::And, m, causal)?,
            None => causal,
        });
    }
    if let Some(lens) = n.input(6) {
        // Opset 24: keys at or after `nonpad_kv_seqlen[b]` are padding in batch `b`.
        let lens = ctx.value(lens)?;
        let valid = valid_keys(ctx, lens, present_k)?;
        keep = Some(match keep {
            Some(m) => binary(ctx, BinaryOp::And, m, valid)?,
            None => valid,
        });
    }
    if let Some(keep) = keep {
        let neg_inf = ctx.scalar(dtype, f64::NEG_INFINITY)?;
        scores = ctx.op(Op::Where, vec![keep, scores, neg_inf])?;
    }

    let mode = n.int("qk_matmul_output_mode", 0);
    let qk_out = match mode {
        0 => Some(qk),
        1 => Some(capped),
        2 => Some(scores),
        3 => None,
        other => return Err(format!("qk_matmul_output_mode {other} is not supported")),
    };

    // Softmax, in softmax_precision when given.
    let mut sm_in = scores;
    if n.has_attr("softmax_precision") {
        let code = n.int("softmax_precision", 0) as i32;
        let p = onnx_dtype(code).map_err(|u| format!("softmax_precision {} is not supported", u.name))?;
        if !p.is_float() {
            return Err(format!("softmax_precision {p} is not supported"));
        }
        sm_in = cast(ctx, sm_in, p)?;
    }
    let probs = ctx.op(Op::Softmax { axis: -1 }, vec![sm_in])?;
    let probs = cast(ctx, probs, dtype)?;
    let qk_out = qk_out.unwrap_or(probs);

    let mut y = ctx.op(Op::MatMul, vec![probs, v_all])?;
    if rank == 3 {
        // [B, H, S, Dv] -> [B, S, H * Dv]
        let yd = dims(ctx, y);
        let hidden = match (yd[1].as_static(), yd[3].as_static()) {
            (Some(h), Some(dv)) => (h * dv) as i64,
            _ => -1,
        };
        y = transpose(ctx, y, &[0, 2, 1, 3])?;
        y = reshape(ctx, y, vec![TargetDim::Int(0), TargetDim::Int(0), TargetDim::Int(hidden)])?;
    }
    let mut outs = vec![Val::Ir(y), Val::Ir(present_k), Val::Ir(present_v)];
    if n.wants_output(3) {
        outs.push(Val::Ir(qk_out));
    }
    Ok(outs)
}
