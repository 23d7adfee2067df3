//! Integer matrix products: `matmul_integer` of u8 activations by a constant 8-bit weight.
//!
//! The weight is packed at compile time into panels of 8 columns holding groups of 4 `k` per
//! column (`[N/8][K/4][8][4]` bytes), as i8; a u8 weight is stored as `b - 128` and the
//! difference is added back from the row sums. The inner step is the portable
//! widen-multiply-pairwise-add tree on i8x16 x u8x16, which Cranelift folds into one
//! `vpdpbusd` on VNNI hosts (not yet checked in the emitted code); a 4x8 block keeps 8 i32x4
//! accumulators.
//! Exact: `sum (a - za)(b - zb) = sum a b - zb sum a - za sum b + K za zb`, column sums of the
//! weight precomputed. When the region casts the product to f32 the cast is folded and the
//! epilogue (scale, bias, activation, residual) runs on the accumulators.

use std::borrow::Cow;

use cranelift_codegen::ir::{types, InstBuilder, Value};
use tessera_ir::{DType, Dim, Graph, Node, NodeData, Op, ValueDef};

use crate::fx::{mem, Fx, F4};
use crate::gemm::{EpiAddr, Epilogue};
use crate::lower::{dims, BufRef, Build, Lowered};
use crate::{ew, CpuError};

const MR: usize = 4;

/// Lowers a `matmul_integer` (the first node of `body`, whose operands are the body inputs
/// `ops`; [`crate::gemm`] resolves both) and its epilogue.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower<'g>(
    g: &'g Graph,
    n: Node,
    body: Cow<'g, Graph>,
    first: &NodeData,
    ops: &[usize],
    pair_saturate: bool,
    region: bool,
    name: String,
    owned: &mut Build,
) -> Result<Lowered<'g>, CpuError> {
    let nd = g.node(n);
    let out = nd.outputs[0];
    if pair_saturate {
        return Err(CpuError::Unsupported(
            "matmul_integer with onnxruntime's saturating pair sums (--match-onnxruntime): the CPU target computes it exactly".into(),
        ));
    }
    let (a_v, b_v) = (nd.inputs[ops[0]], nd.inputs[ops[1]]);
    let (a_t, b_t) = (g.ty(a_v), g.ty(b_v));
    if a_t.dtype != DType::U8 || !matches!(b_t.dtype, DType::I8 | DType::U8) {
        return Err(CpuError::Unsupported(format!("matmul_integer {} x {} (u8 x i8/u8 only)", a_t.dtype, b_t.dtype)));
    }
    if !matches!(g.value(b_v).def, ValueDef::Const(_)) || b_t.rank() != 2 || a_t.rank() < 2 {
        return Err(CpuError::Unsupported("matmul_integer with a run-time or batched weight".into()));
    }
    let bt = tessera_ir::const_value(g, b_v, false).map_err(|e| CpuError::Codegen(e.to_string()))?;
    let bi = bt.as_int().ok_or_else(|| CpuError::Codegen("integer weights".into()))?;
    let (k, nn) = (bi.shape()[0], bi.shape()[1]);
    if k % 4 != 0 || nn % 8 != 0 {
        return Err(CpuError::Unsupported(format!(
            "matmul_integer with K={k}, N={nn} (needs K % 4 == 0 and N % 8 == 0)"
        )));
    }
    // Zero points: a's must be a scalar (run time), b's a constant scalar or per column.
    let a_zero = ops.get(2).map(|&i| nd.inputs[i]);
    if let Some(z) = a_zero {
        if g.ty(z).shape.static_numel() != Some(1) {
            return Err(CpuError::Unsupported("per-row a zero points".into()));
        }
    }
    let zb: Vec<i64> = match ops.get(3).map(|&i| nd.inputs[i]) {
        None => vec![0; nn],
        Some(z) => {
            let t = tessera_ir::const_value(g, z, false)
                .map_err(|_| CpuError::Unsupported("run-time b zero point".into()))?;
            let v: Vec<i64> =
                t.as_int().ok_or_else(|| CpuError::Codegen("zero point".into()))?.iter().copied().collect();
            match v.len() {
                1 => vec![v[0]; nn],
                l if l == nn => v,
                _ => return Err(CpuError::Unsupported("b zero point shape".into())),
            }
        }
    };
    let shift = if b_t.dtype == DType::U8 { 128 } else { 0 };
    let flat: Vec<i64> = bi.iter().copied().collect();
    let mut packed = vec![0u8; nn * k];
    for p in 0..nn / 8 {
        for kg in 0..k / 4 {
            for j in 0..8 {
                for t in 0..4 {
                    let v = flat[(kg * 4 + t) * nn + p * 8 + j] - shift;
                    packed[((p * (k / 4) + kg) * 8 + j) * 4 + t] = v as i8 as u8;
                }
            }
        }
    }
    // Per column: c0 = -zb*K*za is run time; fixed part of the correction per column.
    // corr_n = sum_k b[k,n] (for -za * colsum) and coef_n = shift - zb_n (times the row sum).
    let colsum: Vec<i32> = (0..nn).map(|c| (0..k).map(|r| flat[r * nn + c]).sum::<i64>() as i32).collect();
    let coef: Vec<i32> = (0..nn).map(|c| (shift - zb[c]) as i32).collect();
    let zbv: Vec<i32> = zb.iter().map(|&z| z as i32).collect();
    let needs_rowsum = coef.iter().any(|&c| c != 0);
    let mut side = Vec::new();
    for v in colsum.iter().chain(&coef).chain(&zbv) {
        side.extend_from_slice(&v.to_le_bytes());
    }
    let packed_idx = owned.push(packed);
    let side_idx = owned.push(side);

    // Epilogue: fold the cast of the i32 product to f32.
    let product = first.outputs[0];
    let nodes: Vec<Node> = body.nodes().skip(1).map(|(x, _)| x).collect();
    let mut folded = Vec::new();
    if region {
        for &x in &nodes {
            let bn = body.node(x);
            if bn.inputs.contains(&product) {
                if !matches!(bn.op, Op::Cast { to: DType::F32 }) {
                    return Err(CpuError::Unsupported("an integer product used other than by a cast to f32".into()));
                }
                folded.push(bn.outputs[0]);
            } else {
                ew::body_op_supported(&body, &bn.op, &bn.inputs, body.ty(bn.outputs[0]).rank())
                    .map_err(CpuError::Unsupported)?;
            }
        }
    } else if g.ty(out).dtype != DType::I32 {
        return Err(CpuError::Codegen("matmul_integer result".into()));
    }
    if region && g.ty(out).dtype != DType::F32 {
        return Err(CpuError::Unsupported("an integer-product region whose result is not f32".into()));
    }
    let mut operands = Vec::new();
    for (i, (_, bv)) in body.inputs().iter().enumerate() {
        if nodes.iter().any(|&x| !folded.contains(&body.node(x).outputs[0]) && body.node(x).inputs.contains(bv)) {
            operands.push((i, g.ty(nd.inputs[i]).dtype, dims(g, nd.inputs[i]), Some(*bv)));
        }
    }
    let out_dims = dims(g, out);
    let epi = Epilogue {
        body,
        product: if region { Some(product) } else { None },
        nodes,
        operands,
        alpha: 1.0,
        c: None,
        out_dims: out_dims.clone(),
        folded_casts: folded,
    };
    let mut bufs: Vec<BufRef> = nd.inputs.iter().map(|v| BufRef::Value(*v)).collect();
    let out_buf = bufs.len();
    bufs.push(BufRef::Value(out));
    bufs.push(BufRef::Owned(packed_idx));
    bufs.push(BufRef::Owned(side_idx));
    let (pb, sb) = (out_buf + 1, out_buf + 2);
    let a_buf = ops[0];
    let za_buf = ops.get(2).copied();
    let rows_dims: Vec<Dim> = out_dims[..out_dims.len() - 1].to_vec();
    let int_out = !region;
    let cfg = Cfg { a_buf, za_buf, pb, sb, out_buf, k: k as i64, n: nn as i64, needs_rowsum, int_out };
    let mut lw = Lowered::new(format!("{name}_vnni"), bufs, Box::new(move |fx| emit(fx, &epi, &cfg, &rows_dims)));
    lw.par = Some((out_dims[..out_dims.len() - 1].to_vec(), MR as u64));
    Ok(lw)
}

struct Cfg {
    a_buf: usize,
    za_buf: Option<usize>,
    pb: usize,
    sb: usize,
    out_buf: usize,
    k: i64,
    n: i64,
    needs_rowsum: bool,
    int_out: bool,
}

/// `acc + dot4(a_bytes, b_bytes)` per i32 lane, in the form Cranelift folds into `vpdpbusd`.
fn dot4(fx: &mut Fx, acc: Value, a_u8: Value, b_i8: Value) -> Value {
    let bl = fx.b.ins().swiden_low(b_i8);
    let al = fx.b.ins().uwiden_low(a_u8);
    let lo = fx.b.ins().imul(bl, al);
    let bh = fx.b.ins().swiden_high(b_i8);
    let ah = fx.b.ins().uwiden_high(a_u8);
    let hi = fx.b.ins().imul(bh, ah);
    let lo_l = fx.b.ins().swiden_low(lo);
    let lo_h = fx.b.ins().swiden_high(lo);
    let p1 = fx.b.ins().iadd_pairwise(lo_l, lo_h);
    let hi_l = fx.b.ins().swiden_low(hi);
    let hi_h = fx.b.ins().swiden_high(hi);
    let p2 = fx.b.ins().iadd_pairwise(hi_l, hi_h);
    let s = fx.b.ins().iadd_pairwise(p1, p2);
    fx.b.ins().iadd(s, acc)
}

fn emit(fx: &mut Fx, epi: &Epilogue, c: &Cfg, rows_dims: &[Dim]) -> Result<(), CpuError> {
    let a = fx.buf(c.a_buf);
    let b = fx.buf(c.pb);
    let side = fx.buf(c.sb);
    let out = fx.buf(c.out_buf);
    let za = match c.za_buf {
        Some(i) => {
            let p = fx.buf(i);
            let z = fx.b.ins().uload8(types::I32, mem(), p, 0);
            fx.b.ins().splat(types::I32X4, z)
        }
        None => {
            let z = fx.b.ins().iconst(types::I32, 0);
            fx.b.ins().splat(types::I32X4, z)
        }
    };
    let rows = fx.numel(rows_dims)?;
    let addr: EpiAddr = epi.prepare(fx)?;
    let nv = fx.iconst(c.n);
    let (r0, r1) = fx.par_rows(rows, MR);
    let np = fx.iconst(c.n / 8);
    fx.for_n(np, |fx, p| {
        let poff = fx.imul_imm(p, c.k * 8);
        let bp = fx.b.ins().iadd(b, poff);
        let n0 = fx.imul_imm(p, 8);
        fx.for_row_blocks(r0, r1, MR, |fx, m0, mr| block(fx, epi, &addr, c, a, bp, side, out, za, m0, mr, n0, nv))
    })
}

#[allow(clippy::too_many_arguments)]
fn block(
    fx: &mut Fx,
    epi: &Epilogue,
    addr: &EpiAddr,
    c: &Cfg,
    a: Value,
    bp: Value,
    side: Value,
    out: Value,
    za: Value,
    m0: Value,
    mr: usize,
    n0: Value,
    nv: Value,
) -> Result<(), CpuError> {
    let zi = fx.b.ins().iconst(types::I32, 0);
    let zero = fx.b.ins().splat(types::I32X4, zi);
    let accs: Vec<_> = (0..mr * 2).map(|_| fx.var(types::I32X4, zero)).collect();
    let sums: Vec<_> = (0..mr).map(|_| fx.var(types::I32X4, zero)).collect();
    let one8 = fx.b.ins().iconst(types::I8, 1);
    let ones = fx.b.ins().splat(types::I8X16, one8);
    let arow = fx.imul_imm(m0, c.k);
    let abase = fx.b.ins().iadd(a, arow);
    let z = fx.iconst(0);
    let kend = fx.iconst(c.k);
    fx.for_range(z, kend, 4, true, |fx, kk| {
        let boff = fx.imul_imm(kk, 8);
        let bk = fx.b.ins().iadd(bp, boff);
        let b0 = fx.b.ins().load(types::I8X16, mem(), bk, 0);
        let b1 = fx.b.ins().load(types::I8X16, mem(), bk, 16);
        let ak = fx.b.ins().iadd(abase, kk);
        for r in 0..mr {
            let w = fx.b.ins().load(types::I32, mem(), ak, (r as i64 * c.k) as i32);
            let wv = fx.b.ins().splat(types::I32X4, w);
            let av = fx.vcast(types::I8X16, wv);
            for h in 0..2 {
                let var = accs[r * 2 + h];
                let acc = fx.b.use_var(var);
                let bv = if h == 0 { b0 } else { b1 };
                let nacc = dot4(fx, acc, av, bv);
                fx.b.def_var(var, nacc);
            }
            if c.needs_rowsum {
                let s = fx.b.use_var(sums[r]);
                let ns = dot4(fx, s, av, ones);
                fx.b.def_var(sums[r], ns);
            }
        }
        Ok(())
    })?;
    let kz = fx.b.ins().iconst(types::I32, c.k);
    let kz = fx.b.ins().splat(types::I32X4, kz);
    let kza = fx.b.ins().imul(kz, za);
    for r in 0..mr {
        let row = fx.iadd_imm(m0, r as i64);
        let offs = epi.row_offsets(fx, addr, row);
        let rowsum = if c.needs_rowsum {
            let s = fx.b.use_var(sums[r]);
            // The A word is broadcast, so every lane summed the same 4 bytes: all lanes hold
            // the row sum.
            Some(s)
        } else {
            None
        };
        for h in 0..2 {
            let mut acc = fx.b.use_var(accs[r * 2 + h]);
            let col = fx.iadd_imm(n0, h as i64 * 4);
            let coff = fx.imul_imm(col, 4);
            let sc = fx.b.ins().iadd(side, coff);
            let colsum = fx.b.ins().load(types::I32X4, mem(), sc, 0);
            let coef = fx.b.ins().load(types::I32X4, mem(), sc, (c.n * 4) as i32);
            let zb = fx.b.ins().load(types::I32X4, mem(), sc, (c.n * 8) as i32);
            if let Some(s) = rowsum {
                let t = fx.b.ins().imul(coef, s);
                acc = fx.b.ins().iadd(acc, t);
            }
            // - za * colsum + K za zb
            let t = fx.b.ins().imul(za, colsum);
            acc = fx.b.ins().isub(acc, t);
            let t = fx.b.ins().imul(kza, zb);
            acc = fx.b.ins().iadd(acc, t);
            if c.int_out {
                let rn = fx.b.ins().imul(row, nv);
                let i = fx.b.ins().iadd(rn, col);
                let ad = fx.addr(out, i, 4);
                fx.b.ins().store(mem(), acc, ad, 0);
            } else {
                let f = fx.b.ins().fcvt_from_sint(F4, acc);
                let v = epi.apply(fx, addr, &offs, col, f, true)?;
                Epilogue::store(fx, out, row, nv, col, v, true);
            }
        }
    }
    Ok(())
}
