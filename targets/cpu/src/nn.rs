//! Normalizations, softmax, attention, reductions and dynamic quantization.
//!
//! - `layer_norm`/`rms_norm`: one row (the normalized dims, contiguous) at a time, f32x4 with a
//!   scalar tail, two passes (mean, then the squared deviations) as the interpreter computes;
//!   parallel over rows.
//! - `softmax`/`log_softmax` over the last axis: max, exp-sum, scale; parallel over rows.
//! - `attention`: per leading index (batch x head), K^T and V are packed into panels of 8 in
//!   per-thread scratch; then per block of 6 query rows, the scores come from the same inner
//!   tiles as the packed GEMM (Q rows x K^T panels), masks are applied, softmax runs in place
//!   (max, exp, sum), and the weighted values come from tiles of the probabilities x V panels,
//!   scaled by 1/sum on the way out. Parallel over the flattened leading dims.
//! - `reduce_*`: a loop nest over the kept dims with the reduced dims inside (scalar).
//! - `dynamic_quantize`: a min/max pass, then the interpreter's scale and zero point, then a
//!   quantize pass.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Value};
use tessera_ir::{DType, Dim, FakeQuantFormat, Graph, Node, Op};

use crate::fx::{broadcast_moves, broadcast_strides, mem, mem_ro, Fx, F4};
use crate::gemm::{for_panel_pairs, TileEmitter, TILE_MR};
use crate::lower::{dims, values, BufRef, Lowered};
use crate::program::{DimSpec, ParamSpec};
use crate::{math, CpuError};

fn f32_only(g: &Graph, vs: &[tessera_ir::Value], what: &str) -> Result<(), CpuError> {
    for v in vs {
        if g.ty(*v).dtype != DType::F32 {
            return Err(CpuError::Unsupported(format!("{} {what}", g.ty(*v).dtype)));
        }
    }
    Ok(())
}

/// Folds a row of `n` f32 with `combine`: `item(fx, i, vector)` gives the f32x4 at element `i`
/// (lane 0 only when `!vector`); four lanes at a time, then the lanes, then the scalar tail.
fn row_fold(
    fx: &mut Fx,
    n: Value,
    init: f32,
    item: &dyn Fn(&mut Fx, Value, bool) -> Value,
    combine: &dyn Fn(&mut Fx, Value, Value) -> Value,
) -> Result<Value, CpuError> {
    let init = fx.fsplat(init);
    let acc = fx.var(F4, init);
    let zero = fx.iconst(0);
    let rest = fx.for_range(zero, n, 4, true, |fx, i| {
        let x = item(fx, i, true);
        let a = fx.b.use_var(acc);
        let a = combine(fx, a, x);
        fx.b.def_var(acc, a);
        Ok(())
    })?;
    let v = fx.b.use_var(acc);
    let mut h = {
        let l = fx.b.ins().extractlane(v, 0);
        fx.b.ins().splat(F4, l)
    };
    for lane in 1..4u8 {
        let l = fx.b.ins().extractlane(v, lane);
        let l = fx.b.ins().splat(F4, l);
        h = combine(fx, h, l);
    }
    let tot = fx.var(F4, h);
    fx.for_range(rest, n, 1, false, |fx, i| {
        let x = item(fx, i, false);
        let t = fx.b.use_var(tot);
        let t = combine(fx, t, x);
        fx.b.def_var(tot, t);
        Ok(())
    })?;
    let t = fx.b.use_var(tot);
    Ok(fx.b.ins().extractlane(t, 0))
}

/// Sum of `f` over a contiguous row.
fn row_sum(fx: &mut Fx, p: Value, n: Value, f: &dyn Fn(&mut Fx, Value) -> Value) -> Result<Value, CpuError> {
    row_fold(
        fx,
        n,
        0.0,
        &|fx, i, vector| {
            let x = load_param(fx, p, i, vector, false);
            f(fx, x)
        },
        &|fx, a, b| fx.b.ins().fadd(a, b),
    )
}

/// Max of a contiguous row (NaN-propagating, as `fmax`).
fn row_max(fx: &mut Fx, p: Value, n: Value) -> Result<Value, CpuError> {
    row_fold(fx, n, f32::NEG_INFINITY, &|fx, i, vector| load_param(fx, p, i, vector, false), &|fx, a, b| {
        fx.b.ins().fmax(a, b)
    })
}

/// `out[i] = f(x[i], i)` over a row, f32x4 + tail (`f` gets the element index of lane 0).
fn row_map(
    fx: &mut Fx,
    x: Value,
    out: Value,
    n: Value,
    f: &dyn Fn(&mut Fx, Value, Value, bool) -> Value,
) -> Result<(), CpuError> {
    let zero = fx.iconst(0);
    let rest = fx.for_range(zero, n, 4, true, |fx, i| {
        let a = fx.addr(x, i, 4);
        let v = fx.b.ins().load(F4, mem(), a, 0);
        let y = f(fx, v, i, true);
        let o = fx.addr(out, i, 4);
        fx.b.ins().store(mem(), y, o, 0);
        Ok(())
    })?;
    fx.for_range(rest, n, 1, false, |fx, i| {
        let a = fx.addr(x, i, 4);
        let v = fx.b.ins().load(types::F32, mem(), a, 0);
        let v = fx.b.ins().splat(F4, v);
        let y = f(fx, v, i, false);
        let y = fx.b.ins().extractlane(y, 0);
        let o = fx.addr(out, i, 4);
        fx.b.ins().store(mem(), y, o, 0);
        Ok(())
    })?;
    Ok(())
}

/// Loads 4 (or lane 0 of) f32 at element `i` of `p`, or splats element 0 when `single`.
fn load_param(fx: &mut Fx, p: Value, i: Value, vector: bool, single: bool) -> Value {
    if single {
        let s = fx.b.ins().load(types::F32, mem(), p, 0);
        return fx.b.ins().splat(F4, s);
    }
    let a = fx.addr(p, i, 4);
    if vector {
        fx.b.ins().load(F4, mem(), a, 0)
    } else {
        let s = fx.b.ins().load(types::F32, mem(), a, 0);
        fx.b.ins().splat(F4, s)
    }
}

pub(crate) fn lower_norm(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    f32_only(g, &nd.inputs, "normalization")?;
    f32_only(g, &nd.outputs, "normalization")?;
    let x = nd.inputs[0];
    let xd = dims(g, x);
    let r = xd.len();
    let axis = match nd.op {
        Op::LayerNorm { axis, .. } | Op::RmsNorm { axis, .. } | Op::Softmax { axis } | Op::LogSoftmax { axis } => axis,
        _ => unreachable!(),
    };
    let a = tessera_ir::types::normalize_axis(axis, r).ok_or_else(|| CpuError::Codegen("axis".into()))?;
    if matches!(nd.op, Op::Softmax { .. } | Op::LogSoftmax { .. }) && a + 1 != r {
        return softmax_strided(g, n, a);
    }
    let inner: Vec<Dim> = xd[a..].to_vec();
    let outer: Vec<Dim> = xd[..a].to_vec();
    // Scale and bias: the normalized shape, or one element.
    let mut single = Vec::new();
    for &p in &nd.inputs[1..] {
        let pd = dims(g, p);
        let n1 = g.ty(p).shape.static_numel() == Some(1);
        let full = pd.len() <= inner.len()
            && pd.iter().rev().zip(inner.iter().rev()).all(|(a, b)| a == b)
            && inner[..inner.len() - pd.len()].iter().all(|d| *d == Dim::Static(1));
        if !n1 && !full {
            return Err(CpuError::Unsupported(format!("normalization parameter of shape {}", g.ty(p).shape)));
        }
        single.push(n1);
    }
    let op = nd.op.clone();
    let k = nd.inputs.len();
    let mut bufs = values(&nd.inputs);
    bufs.push(BufRef::Value(nd.outputs[0]));
    let mut lw = Lowered::new(
        op.name(),
        bufs,
        Box::new(move |fx| {
            let xp = fx.buf(0);
            let params: Vec<Value> = (1..k).map(|i| fx.buf(i)).collect();
            let out = fx.buf(k);
            let nn = fx.numel(&inner)?;
            let nf = fx.b.ins().fcvt_from_sint(types::F32, nn);
            let row_bytes = fx.imul_imm(nn, 4);
            let (lo, hi) = (fx.lo, fx.hi);
            fx.for_range(lo, hi, 1, false, |fx, row| {
                let off = fx.b.ins().imul(row, row_bytes);
                let xr = fx.b.ins().iadd(xp, off);
                let orow = fx.b.ins().iadd(out, off);
                match op {
                    Op::LayerNorm { epsilon, .. } => {
                        let s = row_sum(fx, xr, nn, &|_, v| v)?;
                        let mean = fx.b.ins().fdiv(s, nf);
                        let mv = fx.b.ins().splat(F4, mean);
                        let ss = row_sum(fx, xr, nn, &|fx, v| {
                            let d = fx.b.ins().fsub(v, mv);
                            fx.b.ins().fmul(d, d)
                        })?;
                        let var = fx.b.ins().fdiv(ss, nf);
                        let eps = fx.fconst(epsilon);
                        let ve = fx.b.ins().fadd(var, eps);
                        let sd = fx.b.ins().sqrt(ve);
                        let sdv = fx.b.ins().splat(F4, sd);
                        let (sp, bp) = (params[0], params.get(1).copied());
                        let (s1, b1) = (single[0], single.get(1).copied().unwrap_or(true));
                        row_map(fx, xr, orow, nn, &|fx, v, i, vec| {
                            let d = fx.b.ins().fsub(v, mv);
                            let y = fx.b.ins().fdiv(d, sdv);
                            let sc = load_param(fx, sp, i, vec, s1);
                            let y = fx.b.ins().fmul(y, sc);
                            match bp {
                                Some(bp) => {
                                    let bv = load_param(fx, bp, i, vec, b1);
                                    fx.b.ins().fadd(y, bv)
                                }
                                None => y,
                            }
                        })
                    }
                    Op::RmsNorm { epsilon, .. } => {
                        let ss = row_sum(fx, xr, nn, &|fx, v| fx.b.ins().fmul(v, v))?;
                        let ms = fx.b.ins().fdiv(ss, nf);
                        let eps = fx.fconst(epsilon);
                        let ve = fx.b.ins().fadd(ms, eps);
                        let sd = fx.b.ins().sqrt(ve);
                        let sdv = fx.b.ins().splat(F4, sd);
                        let (sp, s1) = (params[0], single[0]);
                        row_map(fx, xr, orow, nn, &|fx, v, i, vec| {
                            let y = fx.b.ins().fdiv(v, sdv);
                            let sc = load_param(fx, sp, i, vec, s1);
                            fx.b.ins().fmul(y, sc)
                        })
                    }
                    _ => {
                        let log = matches!(op, Op::LogSoftmax { .. });
                        softmax_row(fx, xr, orow, nn, log)
                    }
                }
            })?;
            Ok(())
        }),
    );
    lw.par = Some((if outer.is_empty() { vec![Dim::Static(1)] } else { outer }, 1));
    Ok(lw)
}

/// Softmax (or log-softmax) along an axis that is not the last: each lane (stride = the size
/// of the dims after the axis) is gathered into a per-thread scratch row, normalized there by
/// [`softmax_row`], and scattered back. Parallel over the dims before the axis.
fn softmax_strided(g: &Graph, n: Node, a: usize) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let log = matches!(nd.op, Op::LogSoftmax { .. });
    let xd = dims(g, nd.inputs[0]);
    let (outer, lane, after) = (xd[..a].to_vec(), xd[a].clone(), xd[a + 1..].to_vec());
    let mut bufs = values(&nd.inputs);
    bufs.push(BufRef::Value(nd.outputs[0]));
    let scratch_lane = lane.clone();
    let mut lw = Lowered::new(
        if log { "log_softmax_strided" } else { "softmax_strided" },
        bufs,
        Box::new(move |fx| {
            let (xp, out, row) = (fx.buf(0), fx.buf(1), fx.buf(2));
            let l = fx.dim(&lane)?;
            let st = fx.numel(&after)?;
            let (lo, hi) = (fx.lo, fx.hi);
            fx.for_range(lo, hi, 1, false, |fx, o| {
                fx.for_n(st, |fx, i| {
                    // Element j of this lane: (o * l + j) * st + i.
                    let ol = fx.b.ins().imul(o, l);
                    let at = |fx: &mut Fx, j: Value| {
                        let t = fx.b.ins().iadd(ol, j);
                        let t = fx.b.ins().imul(t, st);
                        fx.b.ins().iadd(t, i)
                    };
                    fx.for_n(l, |fx, j| {
                        let e = at(fx, j);
                        let src = fx.addr(xp, e, 4);
                        let v = fx.b.ins().load(types::F32, mem(), src, 0);
                        let dst = fx.addr(row, j, 4);
                        fx.b.ins().store(mem(), v, dst, 0);
                        Ok(())
                    })?;
                    softmax_row(fx, row, row, l, log)?;
                    fx.for_n(l, |fx, j| {
                        let src = fx.addr(row, j, 4);
                        let v = fx.b.ins().load(types::F32, mem(), src, 0);
                        let e = at(fx, j);
                        let dst = fx.addr(out, e, 4);
                        fx.b.ins().store(mem(), v, dst, 0);
                        Ok(())
                    })
                })
            })?;
            Ok(())
        }),
    );
    lw.par = Some((if outer.is_empty() { vec![Dim::Static(1)] } else { outer }, 1));
    lw.scratch = Some(ParamSpec::Product { dims: vec![DimSpec::of(&scratch_lane)], mul: 4, add: 0 });
    Ok(lw)
}

/// Softmax (or log-softmax) of a contiguous row: `out` may be the scratch row itself.
fn softmax_row(fx: &mut Fx, x: Value, out: Value, n: Value, log: bool) -> Result<(), CpuError> {
    let m = row_max(fx, x, n)?;
    let mv = fx.b.ins().splat(F4, m);
    let s = row_sum(fx, x, n, &|fx, v| {
        let d = fx.b.ins().fsub(v, mv);
        math::exp(fx, d)
    })?;
    if log {
        let ls = fx.call_host(crate::host::id("tessera_host_log"), &[types::F32], Some(types::F32), &[s]).expect("ret");
        let lsv = fx.b.ins().splat(F4, ls);
        row_map(fx, x, out, n, &|fx, v, _, _| {
            let d = fx.b.ins().fsub(v, mv);
            fx.b.ins().fsub(d, lsv)
        })
    } else {
        let sv = fx.b.ins().splat(F4, s);
        row_map(fx, x, out, n, &|fx, v, _, _| {
            let d = fx.b.ins().fsub(v, mv);
            let e = math::exp(fx, d);
            fx.b.ins().fdiv(e, sv)
        })
    }
}

pub(crate) fn lower_attention(g: &Graph, n: Node, ukernels: crate::Ukernels) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let Op::Attention { scale, causal } = nd.op else { unreachable!() };
    f32_only(g, &nd.inputs[..3], "attention")?;
    let (q, k, v) = (nd.inputs[0], nd.inputs[1], nd.inputs[2]);
    let mask = nd.inputs.get(3).copied();
    let mask_bool = match mask.map(|m| g.ty(m).dtype) {
        None => false,
        Some(DType::F32) => false,
        Some(DType::Bool) => true,
        Some(d) => return Err(CpuError::Unsupported(format!("{d} attention mask"))),
    };
    let out = nd.outputs[0];
    let od = dims(g, out);
    let r = od.len();
    if r < 2 {
        return Err(CpuError::Unsupported("attention of rank < 2".into()));
    }
    let lead: Vec<Dim> = od[..r - 2].to_vec();
    let (qd, kd, vd) = (dims(g, q), dims(g, k), dims(g, v));
    let md = mask.map(|m| dims(g, m));
    let mut tq = lead.clone();
    tq.extend([qd[qd.len() - 2].clone(), qd[qd.len() - 1].clone()]);
    let mut tk = lead.clone();
    tk.extend([kd[kd.len() - 2].clone(), kd[kd.len() - 1].clone()]);
    let mut tv = lead.clone();
    tv.extend([vd[vd.len() - 2].clone(), vd[vd.len() - 1].clone()]);
    let mut ts = lead.clone();
    ts.extend([qd[qd.len() - 2].clone(), kd[kd.len() - 2].clone()]);
    // Refuse broadcasts decided only at run time now, not in code generation.
    for (d, t) in [(&qd, &tq), (&kd, &tk), (&vd, &tv)] {
        broadcast_moves(d, t)?;
    }
    if let Some(m) = &md {
        broadcast_moves(m, &ts)?;
    }
    let sk_dim = kd[kd.len() - 2].clone();
    let k_in = nd.inputs.len();
    let mut bufs = values(&nd.inputs);
    bufs.push(BufRef::Value(out));
    let scratch_dims = (sk_dim.clone(), qd[qd.len() - 1].clone(), vd[vd.len() - 1].clone());
    let par_dims = if lead.is_empty() { vec![Dim::Static(1)] } else { lead.clone() };
    let mut lw = Lowered::new(
        "attention",
        bufs,
        Box::new(move |fx| {
            let (qp, kp_in, vp_in) = (fx.buf(0), fx.buf(1), fx.buf(2));
            let mp = if mask.is_some() { Some(fx.buf(3)) } else { None };
            let op = fx.buf(k_in);
            let sp = fx.buf(k_in + 1);
            let sq_ = fx.dim(&tq[r - 2])?;
            let d_ = fx.dim(&tq[r - 1])?;
            let sk = fx.dim(&tk[r - 2])?;
            let dv = fx.dim(&tv[r - 1])?;
            let sq_st = broadcast_strides(fx, &qd, &tq, 4)?;
            let sk_st = broadcast_strides(fx, &kd, &tk, 4)?;
            let sv_st = broadcast_strides(fx, &vd, &tv, 4)?;
            let m_st = match &md {
                Some(m) => Some(broadcast_strides(fx, m, &ts, if mask_bool { 1 } else { 4 })?),
                None => None,
            };
            let leadv: Vec<Value> = lead.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
            let zero = fx.iconst(0);
            let (lo, hi) = (fx.lo, fx.hi);
            let scale_v = fx.fsplat(scale);
            let tiles = TileEmitter::new(fx, ukernels);
            let softmax_row = crate::host::softmax_row(ukernels);
            // Scratch: K^T packed in panels of 8 keys [kpan][d][8], V packed in panels of 8
            // columns [vpan][sk][8], then TILE_MR score rows of `sk_pad` (16-aligned) floats.
            let kpan = {
                let t = fx.iadd_imm(sk, 7);
                fx.b.ins().ushr_imm_u(t, 3)
            };
            let vpan = {
                let t = fx.iadd_imm(dv, 7);
                fx.b.ins().ushr_imm_u(t, 3)
            };
            let sk_pad = {
                let t = fx.iadd_imm(sk, 15);
                let t = fx.b.ins().ushr_imm_u(t, 4);
                fx.imul_imm(t, 16)
            };
            let kp = sp;
            let vp = {
                let n = fx.b.ins().imul(kpan, d_);
                let o = fx.imul_imm(n, 32);
                fx.b.ins().iadd(kp, o)
            };
            let srows = {
                let n = fx.b.ins().imul(vpan, sk);
                let o = fx.imul_imm(n, 32);
                fx.b.ins().iadd(vp, o)
            };
            let inv_slot = fx.stack_buf((TILE_MR * 4) as u32, 4);
            // The K and V offsets packed last in this chunk's scratch (-1: none yet). Heads that
            // share keys and values (grouped-query attention broadcasts one KV head over a group
            // of query heads) reuse the packed panels instead of packing them again.
            let none = fx.iconst(-1);
            // One query row (a decode step): scores straight from the rows of K, then the
            // weighted rows of V, without packing either (packing would cost more than the
            // product it serves).
            let direct = fx.b.ins().icmp_imm_s(IntCC::Equal, sq_, 1);
            let packs = fx.b.ins().bxor_imm_s(direct, 1);
            let packed_k = fx.var(types::I64, none);
            let packed_v = fx.var(types::I64, none);
            fx.for_range(lo, hi, 1, false, |fx, l| {
                // Leading offsets of q, k, v, mask and the output.
                let mut rest = l;
                let (mut oq, mut ok, mut ov, mut om) = (zero, zero, zero, zero);
                for j in (0..leadv.len()).rev() {
                    let (idx, next) = if j == 0 {
                        (rest, rest)
                    } else {
                        let qq = fx.b.ins().udiv(rest, leadv[j]);
                        let m = fx.b.ins().imul(qq, leadv[j]);
                        (fx.b.ins().isub(rest, m), qq)
                    };
                    for (acc, st) in [(&mut oq, &sq_st), (&mut ok, &sk_st), (&mut ov, &sv_st)] {
                        if let Some(s) = st[j] {
                            let o = fx.b.ins().imul(idx, s);
                            *acc = fx.b.ins().iadd(*acc, o);
                        }
                    }
                    if let Some(ms) = &m_st {
                        if let Some(s) = ms[j] {
                            let o = fx.b.ins().imul(idx, s);
                            om = fx.b.ins().iadd(om, o);
                        }
                    }
                    rest = next;
                }
                let qb = fx.b.ins().iadd(qp, oq);
                let kb = fx.b.ins().iadd(kp_in, ok);
                let vb = fx.b.ins().iadd(vp_in, ov);
                let ob = {
                    let rows = fx.b.ins().imul(l, sq_);
                    let e = fx.b.ins().imul(rows, dv);
                    fx.addr(op, e, 4)
                };
                let k_row = sk_st[r - 2].unwrap_or(zero);
                let v_row = sv_st[r - 2].unwrap_or(zero);
                let q_row = sq_st[r - 2].unwrap_or(zero);
                let pk = fx.b.use_var(packed_k);
                let pv = fx.b.use_var(packed_v);
                let k_moved = fx.b.ins().icmp(IntCC::NotEqual, pk, ok);
                let v_moved = fx.b.ins().icmp(IntCC::NotEqual, pv, ov);
                let moved = fx.b.ins().bor(k_moved, v_moved);
                let repack = fx.b.ins().band(moved, packs);
                fx.b.def_var(packed_k, ok);
                fx.b.def_var(packed_v, ov);
                fx.if_then(repack, |fx| {
                    // Pack K^T: kp[(j / 8) * d * 8 + dd * 8 + j % 8] = K[j][dd]; the last panel's
                    // missing keys are zero.
                    {
                        let last = fx.iadd_imm(kpan, -1);
                        let lo8 = fx.b.ins().imul(last, d_);
                        let lo8 = fx.imul_imm(lo8, 8);
                        let n8 = fx.imul_imm(d_, 8);
                        let z4 = fx.fsplat(0.0);
                        let zero_i = fx.iconst(0);
                        let last_p = fx.addr(kp, lo8, 4);
                        fx.for_range(zero_i, n8, 4, true, |fx, i| {
                            let a = fx.addr(last_p, i, 4);
                            fx.b.ins().store(mem(), z4, a, 0);
                            Ok(())
                        })?;
                    }
                    fx.for_n(sk, |fx, j| {
                        let kr = {
                            let o = fx.b.ins().imul(j, k_row);
                            fx.b.ins().iadd(kb, o)
                        };
                        let p = fx.b.ins().ushr_imm_u(j, 3);
                        let jj = fx.b.ins().band_imm_u(j, 7);
                        let pd = fx.b.ins().imul(p, d_);
                        let pd8 = fx.imul_imm(pd, 8);
                        let base = fx.b.ins().iadd(pd8, jj);
                        let dst = fx.addr(kp, base, 4);
                        fx.for_n(d_, |fx, dd| {
                            let src = fx.addr(kr, dd, 4);
                            let x = fx.b.ins().load(types::F32, mem_ro(), src, 0);
                            let o = fx.imul_imm(dd, 32);
                            let a = fx.b.ins().iadd(dst, o);
                            fx.b.ins().store(mem(), x, a, 0);
                            Ok(())
                        })
                    })?;
                    // Pack V: vp[(c / 8) * sk * 8 + j * 8 + c % 8] = V[j][c], missing columns zero.
                    fx.for_n(sk, |fx, j| {
                        let vr = {
                            let o = fx.b.ins().imul(j, v_row);
                            fx.b.ins().iadd(vb, o)
                        };
                        let dst = {
                            let o = fx.imul_imm(j, 32);
                            fx.b.ins().iadd(vp, o)
                        };
                        let panel_bytes = fx.imul_imm(sk, 32);
                        fx.for_n(vpan, |fx, p| {
                            let d0 = {
                                let o = fx.b.ins().imul(p, panel_bytes);
                                fx.b.ins().iadd(dst, o)
                            };
                            let c0 = fx.imul_imm(p, 8);
                            let end = fx.iadd_imm(c0, 8);
                            let whole = fx.b.ins().icmp(IntCC::SignedLessThanOrEqual, end, dv);
                            let src = fx.addr(vr, c0, 4);
                            let then_b = fx.b.create_block();
                            let else_b = fx.b.create_block();
                            let done = fx.b.create_block();
                            fx.b.ins().brif(whole, then_b, &[], else_b, &[]);
                            fx.b.switch_to_block(then_b);
                            for h in 0..2 {
                                let x = fx.b.ins().load(F4, mem_ro(), src, h * 16);
                                fx.b.ins().store(mem(), x, d0, h * 16);
                            }
                            fx.b.ins().jump(done, &[]);
                            fx.b.switch_to_block(else_b);
                            for cc in 0..8i64 {
                                let c = fx.iadd_imm(c0, cc);
                                let inside = fx.b.ins().icmp(IntCC::SignedLessThan, c, dv);
                                let zf = fx.fconst(0.0);
                                let v = fx.var(types::F32, zf);
                                fx.if_then(inside, |fx| {
                                    let x = fx.b.ins().load(types::F32, mem_ro(), src, (cc * 4) as i32);
                                    fx.b.def_var(v, x);
                                    Ok(())
                                })?;
                                let x = fx.b.use_var(v);
                                fx.b.ins().store(mem(), x, d0, (cc * 4) as i32);
                            }
                            fx.b.ins().jump(done, &[]);
                            fx.b.switch_to_block(done);
                            Ok(())
                        })
                    })
                })?;
                let q_lda = fx.b.ins().sshr_imm_u(q_row, 2);
                // Masks, then softmax per row (exp written in place), 1/sum kept per row, for
                // `mr` score rows from query row m0.
                let mask_softmax = |fx: &mut Fx, m0: Value, mr: usize| -> Result<(), CpuError> {
                    for rr in 0..mr {
                        let i = fx.iadd_imm(m0, rr as i64);
                        let row = {
                            let o = fx.imul_imm(sk_pad, rr as i64);
                            fx.addr(srows, o, 4)
                        };
                        // An additive f32 mask that moves along the keys (contiguous there) and no
                        // causal mask: four keys at a time.
                        let vector_mask = match (&m_st, mask_bool, causal) {
                            (Some(ms), false, false) => ms[r - 1].is_some(),
                            _ => false,
                        };
                        // The mask's row for query i (its keys follow at the mask's key stride).
                        let mask_row = match (mp, &m_st) {
                            (Some(mp), Some(ms)) => {
                                let mut a = fx.b.ins().iadd(mp, om);
                                if let Some(st) = ms[r - 2] {
                                    let o = fx.b.ins().imul(i, st);
                                    a = fx.b.ins().iadd(a, o);
                                }
                                Some(a)
                            }
                            _ => None,
                        };
                        match (mask_row, vector_mask, softmax_row) {
                            // The AVX-512 row routine adds an additive mask along the keys itself.
                            (Some(_), true, Some(_)) => {}
                            (Some(a), true, None) => row_map(fx, row, row, sk, &|fx, v, j, vector| {
                                let m = load_param(fx, a, j, vector, false);
                                fx.b.ins().fadd(v, m)
                            })?,
                            _ if mp.is_some() || causal => fx.for_n(sk, |fx, j| {
                                let sa = fx.addr(row, j, 4);
                                let mut s = fx.b.ins().load(types::F32, mem(), sa, 0);
                                if let (Some(mut a), Some(ms)) = (mask_row, &m_st) {
                                    if let Some(st) = ms[r - 1] {
                                        let o = fx.b.ins().imul(j, st);
                                        a = fx.b.ins().iadd(a, o);
                                    }
                                    if mask_bool {
                                        let keep = fx.b.ins().load(types::I8, mem(), a, 0);
                                        let ninf = fx.fconst(f32::NEG_INFINITY);
                                        s = fx.b.ins().select(keep, s, ninf);
                                    } else {
                                        let add = fx.b.ins().load(types::F32, mem(), a, 0);
                                        s = fx.b.ins().fadd(s, add);
                                    }
                                }
                                if causal {
                                    // j + sq > i + sk masks.
                                    let lhs = fx.b.ins().iadd(j, sq_);
                                    let rhs = fx.b.ins().iadd(i, sk);
                                    let hide = fx.b.ins().icmp(IntCC::SignedGreaterThan, lhs, rhs);
                                    let ninf = fx.fconst(f32::NEG_INFINITY);
                                    s = fx.b.ins().select(hide, ninf, s);
                                }
                                fx.b.ins().store(mem(), s, sa, 0);
                                Ok(())
                            })?,
                            _ => {}
                        }
                        if let Some(f) = softmax_row {
                            // Max, exp and sum in one AVX-512 routine (`crate::rows`), with the
                            // additive mask along the keys when there is one.
                            let mask_arg = mask_row.filter(|_| vector_mask).unwrap_or(zero);
                            let inv = fx
                                .call_host(f, &[types::I64; 3], Some(types::F32), &[row, sk, mask_arg])
                                .expect("returns");
                            fx.b.ins().store(mem(), inv, inv_slot, (rr * 4) as i32);
                            continue;
                        }
                        let m = row_max(fx, row, sk)?;
                        let ninf = fx.fconst(f32::NEG_INFINITY);
                        let dead = fx.b.ins().fcmp(FloatCC::Equal, m, ninf);
                        let mv = fx.b.ins().splat(F4, m);
                        row_map(fx, row, row, sk, &|fx, v, _, _| {
                            let d = fx.b.ins().fsub(v, mv);
                            math::exp_nonpositive(fx, d)
                        })?;
                        let sum = row_sum(fx, row, sk, &|_, v| v)?;
                        let one = fx.fconst(1.0);
                        let inv = fx.b.ins().fdiv(one, sum);
                        let zf = fx.fconst(0.0);
                        let inv = fx.b.ins().select(dead, zf, inv);
                        fx.b.ins().store(mem(), inv, inv_slot, (rr * 4) as i32);
                    }
                    Ok(())
                };
                // One block of `mr` query rows from row m0: scores, softmax, weighted values.
                let rows_block = |fx: &mut Fx, m0: Value, mr: usize| -> Result<(), CpuError> {
                    let qa = {
                        let o = fx.b.ins().imul(m0, q_row);
                        fx.b.ins().iadd(qb, o)
                    };
                    // Scores: tiles of 16 keys (a last panel of 8 alone), scaled, into srows.
                    let kpanel_bytes = fx.imul_imm(d_, 32);
                    let scores = |fx: &mut Fx, p: Value, np: usize| -> Result<(), CpuError> {
                        let bo = fx.b.ins().imul(p, kpanel_bytes);
                        let bp = fx.b.ins().iadd(kp, bo);
                        tiles.emit(fx, mr, np, d_, qa, q_lda, bp, mem(), tiles.stack(), false)?;
                        let c0 = fx.imul_imm(p, 8);
                        for rr in 0..mr {
                            let row = {
                                let o = fx.imul_imm(sk_pad, rr as i64);
                                let o = fx.b.ins().iadd(o, c0);
                                fx.addr(srows, o, 4)
                            };
                            for h in 0..2 * np {
                                let t = tiles.load(fx, rr, h);
                                let t = fx.b.ins().fmul(t, scale_v);
                                fx.b.ins().store(mem(), t, row, (h * 16) as i32);
                            }
                        }
                        Ok(())
                    };
                    for_panel_pairs(fx, kpan, scores)?;
                    mask_softmax(fx, m0, mr)?;
                    // Weighted values: tiles of 16 value columns over the sk probabilities.
                    let vpanel_bytes = fx.imul_imm(sk, 32);
                    let weighted = |fx: &mut Fx, p: Value, np: usize| -> Result<(), CpuError> {
                        let bo = fx.b.ins().imul(p, vpanel_bytes);
                        let bp = fx.b.ins().iadd(vp, bo);
                        tiles.emit(fx, mr, np, sk, srows, sk_pad, bp, mem(), tiles.stack(), false)?;
                        let c0 = fx.imul_imm(p, 8);
                        for rr in 0..mr {
                            let i = fx.iadd_imm(m0, rr as i64);
                            let inv = fx.b.ins().load(types::F32, mem(), inv_slot, (rr * 4) as i32);
                            let invv = fx.b.ins().splat(F4, inv);
                            let orow = {
                                let o = fx.b.ins().imul(i, dv);
                                fx.addr(ob, o, 4)
                            };
                            for h in 0..2 * np {
                                let t = tiles.load(fx, rr, h);
                                let t = fx.b.ins().fmul(t, invv);
                                let c = fx.iadd_imm(c0, h as i64 * 4);
                                let end = fx.iadd_imm(c, 4);
                                let whole = fx.b.ins().icmp(IntCC::SignedLessThanOrEqual, end, dv);
                                let then_b = fx.b.create_block();
                                let else_b = fx.b.create_block();
                                let done = fx.b.create_block();
                                fx.b.ins().brif(whole, then_b, &[], else_b, &[]);
                                fx.b.switch_to_block(then_b);
                                let oa = fx.addr(orow, c, 4);
                                fx.b.ins().store(mem(), t, oa, 0);
                                fx.b.ins().jump(done, &[]);
                                fx.b.switch_to_block(else_b);
                                for lane in 0..4u8 {
                                    let cl = fx.iadd_imm(c, lane as i64);
                                    let inside = fx.b.ins().icmp(IntCC::SignedLessThan, cl, dv);
                                    let e = fx.b.ins().extractlane(t, lane);
                                    fx.if_then(inside, |fx| {
                                        let oa = fx.addr(orow, cl, 4);
                                        fx.b.ins().store(mem(), e, oa, 0);
                                        Ok(())
                                    })?;
                                }
                                fx.b.ins().jump(done, &[]);
                                fx.b.switch_to_block(done);
                            }
                        }
                        Ok(())
                    };
                    for_panel_pairs(fx, vpan, weighted)
                };
                let direct_row = |fx: &mut Fx| -> Result<(), CpuError> {
                    fx.for_n(sk, |fx, j| {
                        let kr = {
                            let o = fx.b.ins().imul(j, k_row);
                            fx.b.ins().iadd(kb, o)
                        };
                        let dot = row_fold(
                            fx,
                            d_,
                            0.0,
                            &|fx, i, vector| {
                                let a = load_param(fx, qb, i, vector, false);
                                let b = load_param(fx, kr, i, vector, false);
                                fx.b.ins().fmul(a, b)
                            },
                            &|fx, a, b| fx.b.ins().fadd(a, b),
                        )?;
                        let sc = fx.fconst(scale);
                        let s = fx.b.ins().fmul(dot, sc);
                        let sa = fx.addr(srows, j, 4);
                        fx.b.ins().store(mem(), s, sa, 0);
                        Ok(())
                    })?;
                    mask_softmax(fx, zero, 1)?;
                    let zv = fx.fsplat(0.0);
                    row_map(fx, ob, ob, dv, &|_, _, _, _| zv)?;
                    fx.for_n(sk, |fx, j| {
                        let vr = {
                            let o = fx.b.ins().imul(j, v_row);
                            fx.b.ins().iadd(vb, o)
                        };
                        let pa = fx.addr(srows, j, 4);
                        let p = fx.b.ins().load(types::F32, mem(), pa, 0);
                        let pv = fx.b.ins().splat(F4, p);
                        row_map(fx, ob, ob, dv, &|fx, acc, i, vector| {
                            let v = load_param(fx, vr, i, vector, false);
                            fx.b.ins().fma(pv, v, acc)
                        })
                    })?;
                    let inv = fx.b.ins().load(types::F32, mem(), inv_slot, 0);
                    let invv = fx.b.ins().splat(F4, inv);
                    row_map(fx, ob, ob, dv, &|fx, v, _, _| fx.b.ins().fmul(v, invv))
                };
                let then_b = fx.b.create_block();
                let else_b = fx.b.create_block();
                let done = fx.b.create_block();
                fx.b.ins().brif(direct, then_b, &[], else_b, &[]);
                fx.b.switch_to_block(then_b);
                direct_row(fx)?;
                fx.b.ins().jump(done, &[]);
                fx.b.switch_to_block(else_b);
                fx.for_row_blocks(zero, sq_, TILE_MR, rows_block)?;
                fx.b.ins().jump(done, &[]);
                fx.b.switch_to_block(done);
                Ok(())
            })?;
            Ok(())
        }),
    );
    lw.par = Some((par_dims, 1));
    lw.scratch = Some(ParamSpec::AttentionScratch {
        sk: DimSpec::of(&scratch_dims.0),
        d: DimSpec::of(&scratch_dims.1),
        dv: DimSpec::of(&scratch_dims.2),
        mr: TILE_MR as i64,
    });
    Ok(lw)
}

/// `fake_quant`: parallel over rows; per block of the last axis, `amax` in f32x4 lanes (the
/// NaN-propagating `fmax`, as the interpreter's fold), the block's multiplier and scale from
/// [`FakeQuantFormat::block_params`] (a host call per block, so f16 rounding is the
/// interpreter's), then `nearest(x * multiplier) * d` four lanes at a time.
pub(crate) fn lower_fake_quant(g: &Graph, n: Node, format: FakeQuantFormat) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    f32_only(g, &nd.inputs, "fake_quant")?;
    let xd = dims(g, nd.inputs[0]);
    let (outer, last) = xd.split_at(xd.len().saturating_sub(1));
    let width = last
        .first()
        .and_then(Dim::as_static)
        .ok_or_else(|| CpuError::Unsupported("fake_quant of a scalar or a dynamic last dim".into()))?
        as i64;
    let block = format.block() as i64;
    if width % block != 0 {
        return Err(CpuError::Codegen(format!("fake_quant row of {width} is not whole blocks of {block}")));
    }
    let host = crate::host::id(match format {
        FakeQuantFormat::Q8_0 => "tessera_host_fake_quant_q8_0",
        FakeQuantFormat::Q8K => "tessera_host_fake_quant_q8_k",
    });
    let mut bufs = values(&nd.inputs);
    bufs.push(BufRef::Value(nd.outputs[0]));
    let mut lw = Lowered::new(
        "fake_quant",
        bufs,
        Box::new(move |fx| {
            let (xp, yp) = (fx.buf(0), fx.buf(1));
            let params = fx.stack_buf(8, 3);
            let (lo, hi) = (fx.lo, fx.hi);
            let b0 = fx.imul_imm(lo, width / block);
            let b1 = fx.imul_imm(hi, width / block);
            fx.for_range(b0, b1, 1, false, |fx, b| {
                let off = fx.imul_imm(b, block * 4);
                let xb = fx.b.ins().iadd(xp, off);
                let yb = fx.b.ins().iadd(yp, off);
                let mut acc = fx.fsplat(0.0);
                for j in 0..block / 4 {
                    let v = fx.b.ins().load(F4, mem(), xb, (j * 16) as i32);
                    let a = fx.b.ins().fabs(v);
                    acc = fx.b.ins().fmax(acc, a);
                }
                let mut amax = fx.b.ins().extractlane(acc, 0);
                for lane in 1..4u8 {
                    let e = fx.b.ins().extractlane(acc, lane);
                    amax = fx.b.ins().fmax(amax, e);
                }
                fx.call_host(host, &[types::F32, types::I64], None, &[amax, params]);
                let m = fx.b.ins().load(types::F32, mem(), params, 0);
                let d = fx.b.ins().load(types::F32, mem(), params, 4);
                let mv = fx.b.ins().splat(F4, m);
                let dv = fx.b.ins().splat(F4, d);
                for j in 0..block / 4 {
                    let v = fx.b.ins().load(F4, mem(), xb, (j * 16) as i32);
                    let q = fx.b.ins().fmul(v, mv);
                    let q = fx.b.ins().nearest(q);
                    let y = fx.b.ins().fmul(q, dv);
                    fx.b.ins().store(mem(), y, yb, (j * 16) as i32);
                }
                Ok(())
            })?;
            Ok(())
        }),
    );
    lw.par = Some((if outer.is_empty() { vec![Dim::Static(1)] } else { outer.to_vec() }, 1));
    Ok(lw)
}

pub(crate) fn lower_dynamic_quantize(g: &Graph, n: Node, ukernels: crate::Ukernels) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    f32_only(g, &nd.inputs, "dynamic_quantize")?;
    let x = nd.inputs[0];
    let xd = dims(g, x);
    let mut bufs = values(&nd.inputs);
    bufs.extend(values(&nd.outputs));
    if let Some(f) = crate::host::dynamic_quantize(ukernels) {
        // The whole op in one AVX-512 routine (`crate::rows`), the same bytes as below.
        return Ok(Lowered::new(
            "dynamic_quantize_ukernel",
            bufs,
            Box::new(move |fx| {
                let (xp, yp, sp, zp) = (fx.buf(0), fx.buf(1), fx.buf(2), fx.buf(3));
                let nn = fx.numel(&xd)?;
                fx.call_host(f, &[types::I64; 5], None, &[xp, nn, yp, sp, zp]);
                Ok(())
            }),
        ));
    }
    Ok(Lowered::new(
        "dynamic_quantize",
        bufs,
        Box::new(move |fx| {
            let (xp, yp, sp, zp) = (fx.buf(0), fx.buf(1), fx.buf(2), fx.buf(3));
            let nn = fx.numel(&xd)?;
            // min/max folded from 0 (so the range always holds 0).
            let z4 = fx.fsplat(0.0);
            let lo4 = fx.var(F4, z4);
            let hi4 = fx.var(F4, z4);
            // The range takes in v by compare and select, as f32::min/max in the interpreter:
            // a NaN is skipped.
            let widen = |fx: &mut Fx, v: Value| {
                let l = fx.b.use_var(lo4);
                let below = fx.vfcmp(FloatCC::LessThan, v, l);
                let l = fx.vselect(below, v, l);
                fx.b.def_var(lo4, l);
                let h = fx.b.use_var(hi4);
                let above = fx.vfcmp(FloatCC::GreaterThan, v, h);
                let h = fx.vselect(above, v, h);
                fx.b.def_var(hi4, h);
            };
            let zero = fx.iconst(0);
            let rest = fx.for_range(zero, nn, 4, true, |fx, i| {
                let a = fx.addr(xp, i, 4);
                let v = fx.b.ins().load(F4, mem(), a, 0);
                widen(fx, v);
                Ok(())
            })?;
            fx.for_range(rest, nn, 1, false, |fx, i| {
                let a = fx.addr(xp, i, 4);
                let s = fx.b.ins().load(types::F32, mem(), a, 0);
                let v = fx.b.ins().splat(F4, s);
                widen(fx, v);
                Ok(())
            })?;
            let l = fx.b.use_var(lo4);
            let h = fx.b.use_var(hi4);
            let mut lo = fx.b.ins().extractlane(l, 0);
            let mut hi = fx.b.ins().extractlane(h, 0);
            for lane in 1..4u8 {
                let e = fx.b.ins().extractlane(l, lane);
                lo = fx.b.ins().fmin(lo, e);
                let e = fx.b.ins().extractlane(h, lane);
                hi = fx.b.ins().fmax(hi, e);
            }
            let scale = fx
                .call_host(
                    crate::host::id("tessera_host_dq_scale"),
                    &[types::F32, types::F32],
                    Some(types::F32),
                    &[lo, hi],
                )
                .expect("ret");
            let zpv = fx
                .call_host(
                    crate::host::id("tessera_host_dq_zero"),
                    &[types::F32, types::F32],
                    Some(types::I32),
                    &[lo, scale],
                )
                .expect("ret");
            fx.b.ins().store(mem(), scale, sp, 0);
            fx.b.ins().istore8(mem(), zpv, zp, 0);
            // y = saturate(round_half_even(x / scale) + zero) into u8.
            let sv = fx.b.ins().splat(F4, scale);
            let zf = fx.b.ins().fcvt_from_sint(types::F32, zpv);
            let zfv = fx.b.ins().splat(F4, zf);
            let lo_c = fx.fsplat(0.0);
            let hi_c = fx.fsplat(255.0);
            // `saturate(round_half_even(x / scale) + zero)` into [0, 255] as whole f32 values;
            // NaN quantizes to the zero point (q as NaN -> 0, then + zero).
            let quantize_u8 = |fx: &mut Fx, v: Value| {
                let q = fx.b.ins().fdiv(v, sv);
                let q = fx.b.ins().nearest(q);
                let nan = fx.vfcmp(FloatCC::Unordered, q, q);
                let zq = fx.fsplat(0.0);
                let q = fx.vselect(nan, zq, q);
                let q = fx.b.ins().fadd(q, zfv);
                let low = fx.vfcmp(FloatCC::LessThan, q, lo_c);
                let q = fx.vselect(low, lo_c, q);
                let high = fx.vfcmp(FloatCC::GreaterThan, q, hi_c);
                fx.vselect(high, hi_c, q)
            };
            let z = fx.iconst(0);
            // 16 at a time: four f32x4 quantized, then narrowed to one u8x16.
            let rest = fx.for_range(z, nn, 16, true, |fx, i| {
                let a = fx.addr(xp, i, 4);
                let mut words = Vec::with_capacity(4);
                for j in 0..4 {
                    let v = fx.b.ins().load(F4, mem(), a, j * 16);
                    let q = quantize_u8(fx, v);
                    // q is a whole number in [0, 255]: adding 2^23 puts it in the low
                    // mantissa bits.
                    let two23 = fx.fsplat(8_388_608.0);
                    let qb = fx.b.ins().fadd(q, two23);
                    let qb = fx.vcast(types::I32X4, qb);
                    let bias = fx.vcast(types::I32X4, two23);
                    words.push(fx.b.ins().isub(qb, bias));
                }
                let h0 = fx.b.ins().snarrow(words[0], words[1]);
                let h1 = fx.b.ins().snarrow(words[2], words[3]);
                let bytes = fx.b.ins().unarrow(h0, h1);
                let o = fx.b.ins().iadd(yp, i);
                fx.b.ins().store(mem(), bytes, o, 0);
                Ok(())
            })?;
            fx.for_range(rest, nn, 1, false, |fx, i| {
                let a = fx.addr(xp, i, 4);
                let s = fx.b.ins().load(types::F32, mem(), a, 0);
                let v = fx.b.ins().splat(F4, s);
                let q = quantize_u8(fx, v);
                let qs = fx.b.ins().extractlane(q, 0);
                let qi = fx.b.ins().fcvt_to_sint_sat(types::I32, qs);
                let o = fx.b.ins().iadd(yp, i);
                fx.b.ins().istore8(mem(), qi, o, 0);
                Ok(())
            })?;
            Ok(())
        }),
    ))
}
