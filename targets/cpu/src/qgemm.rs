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

use crate::gemm::{for_panel_pairs, EpiAddr, Epilogue, TILE_MR};
use crate::lower::{dims, BufRef, Build, Lowered};
use crate::program::{DimSpec, ParamSpec};
use crate::ukernel;
use crate::{ew, CpuError};

const MR: usize = 4;

/// `matmul_integer a, b[, a_zero, b_zero]` on any 8-bit operands, exact, one output element
/// at a time: batch dims broadcast as in `matmul` (a missing or size-1 dim repeats), zero
/// points a scalar or one per row of `a` / column of `b`. For the shapes the packed kernel
/// refuses; not fast.
pub(crate) fn lower_general(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let (a, b, y) = (nd.inputs[0], nd.inputs[1], nd.outputs[0]);
    let (at, bt) = (g.ty(a), g.ty(b));
    for t in [at, bt] {
        if !matches!(t.dtype, DType::U8 | DType::I8) || t.rank() < 2 {
            return Err(CpuError::Unsupported(format!("matmul_integer on {t}")));
        }
    }
    let (ad, bd, yd) = (dims(g, a), dims(g, b), dims(g, y));
    let (ra, rb, ry) = (ad.len(), bd.len(), yd.len());
    // Batch dims of each operand, right-aligned to the result's, None where it repeats.
    let batch = |d: &[Dim], r: usize| -> Vec<Option<Dim>> {
        (0..ry - 2)
            .map(|i| {
                let j = (i + r).checked_sub(ry)?;
                (j < r - 2 && d[j] != Dim::Static(1)).then(|| d[j].clone())
            })
            .collect()
    };
    let (ab, bb) = (batch(&ad, ra), batch(&bd, rb));
    let zero = |i: usize, per: &Dim| -> Result<Option<(tessera_ir::Value, DType, bool)>, CpuError> {
        let Some(&z) = nd.inputs.get(i) else { return Ok(None) };
        let zt = g.ty(z);
        match zt.shape.static_numel() {
            Some(1) => Ok(Some((z, zt.dtype, false))),
            _ if zt.rank() == 1 && zt.shape.dims()[0] == *per => Ok(Some((z, zt.dtype, true))),
            _ => Err(CpuError::Unsupported(format!("matmul_integer zero point {zt}"))),
        }
    };
    let za = zero(2, &ad[ra - 2])?;
    let zb = zero(3, &bd[rb - 1])?;
    let (adt, bdt) = (at.dtype, bt.dtype);
    let mut bufs = crate::lower::values(&[a, b, y]);
    if let Some((z, ..)) = za {
        bufs.push(BufRef::Value(z));
    }
    if let Some((z, ..)) = zb {
        bufs.push(BufRef::Value(z));
    }
    let load8 = |fx: &mut Fx, dt: DType, p: Value, i: Value| -> Value {
        let addr = fx.b.ins().iadd(p, i);
        if dt == DType::I8 {
            fx.b.ins().sload8(types::I64, mem(), addr, 0)
        } else {
            fx.b.ins().uload8(types::I64, mem(), addr, 0)
        }
    };
    Ok(Lowered::new(
        "matmul_integer_general",
        bufs,
        Box::new(move |fx| {
            let (ap, bp, yp) = (fx.buf(0), fx.buf(1), fx.buf(2));
            let zap = za.map(|_| fx.buf(3));
            let zbp = zb.map(|_| fx.buf(3 + usize::from(za.is_some())));
            let m = fx.dim(&ad[ra - 2])?;
            let k = fx.dim(&ad[ra - 1])?;
            let nn = fx.dim(&bd[rb - 1])?;
            let mk = fx.b.ins().imul(m, k);
            let kn = fx.b.ins().imul(k, nn);
            let mn = fx.b.ins().imul(m, nn);
            let yb: Vec<Value> = yd[..ry - 2].iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
            let batches = fx.numel(&yd[..ry - 2])?;
            fx.for_n(batches, |fx, bi| {
                // Offsets of this batch in a and b: digits of bi, times each operand's strides.
                let zero = fx.iconst(0);
                let (mut aoff, mut boff, mut rest) = (zero, zero, bi);
                let (mut astride, mut bstride) = (mk, kn);
                for d in (0..ry - 2).rev() {
                    let digit = fx.b.ins().urem(rest, yb[d]);
                    rest = fx.b.ins().udiv(rest, yb[d]);
                    if let Some(dim) = &ab[d] {
                        let t = fx.b.ins().imul(digit, astride);
                        aoff = fx.b.ins().iadd(aoff, t);
                        let dv = fx.dim(dim)?;
                        astride = fx.b.ins().imul(astride, dv);
                    }
                    if let Some(dim) = &bb[d] {
                        let t = fx.b.ins().imul(digit, bstride);
                        boff = fx.b.ins().iadd(boff, t);
                        let dv = fx.dim(dim)?;
                        bstride = fx.b.ins().imul(bstride, dv);
                    }
                }
                let yoff = fx.b.ins().imul(bi, mn);
                fx.for_n(m, |fx, i| {
                    let zai = match (za, zap) {
                        (Some((_, dt, per_row)), Some(p)) => {
                            let at_ = if per_row { i } else { fx.iconst(0) };
                            load8(fx, dt, p, at_)
                        }
                        _ => fx.iconst(0),
                    };
                    fx.for_n(nn, |fx, j| {
                        let zbj = match (zb, zbp) {
                            (Some((_, dt, per_col)), Some(p)) => {
                                let at_ = if per_col { j } else { fx.iconst(0) };
                                load8(fx, dt, p, at_)
                            }
                            _ => fx.iconst(0),
                        };
                        let z0 = fx.iconst(0);
                        let acc = fx.var(types::I64, z0);
                        fx.for_n(k, |fx, kk| {
                            let ai = fx.b.ins().imul(i, k);
                            let ai = fx.b.ins().iadd(ai, kk);
                            let ai = fx.b.ins().iadd(ai, aoff);
                            let av = load8(fx, adt, ap, ai);
                            let bi_ = fx.b.ins().imul(kk, nn);
                            let bi_ = fx.b.ins().iadd(bi_, j);
                            let bi_ = fx.b.ins().iadd(bi_, boff);
                            let bv = load8(fx, bdt, bp, bi_);
                            let av = fx.b.ins().isub(av, zai);
                            let bv = fx.b.ins().isub(bv, zbj);
                            let p = fx.b.ins().imul(av, bv);
                            let s = fx.b.use_var(acc);
                            let s = fx.b.ins().iadd(s, p);
                            fx.b.def_var(acc, s);
                            Ok(())
                        })?;
                        let yi = fx.b.ins().imul(i, nn);
                        let yi = fx.b.ins().iadd(yi, j);
                        let yi = fx.b.ins().iadd(yi, yoff);
                        let ya = fx.addr(yp, yi, 4);
                        let s = fx.b.use_var(acc);
                        fx.b.ins().istore32(mem(), s, ya, 0);
                        Ok(())
                    })
                })
            })
        }),
    ))
}

/// Lowers a `matmul_integer` (the first node of `body`, whose operands are the body inputs
/// `ops`; [`crate::gemm`] resolves both) and its epilogue into the packed kernel; what it
/// refuses, a lone exact product goes to [`lower_general`] (see `gemm::lower_mm`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_packed<'g>(
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
    let (a_v, b_v) = (nd.inputs[ops[0]], nd.inputs[ops[1]]);
    let (a_t, b_t) = (g.ty(a_v), g.ty(b_v));
    if pair_saturate && b_t.dtype != DType::I8 {
        return Err(CpuError::Codegen("matmul_integer {pair_saturate} with a u8 weight".into()));
    }
    if a_t.dtype != DType::U8 || !matches!(b_t.dtype, DType::I8 | DType::U8) {
        return Err(CpuError::Unsupported(format!("matmul_integer {} x {} (u8 x i8/u8 only)", a_t.dtype, b_t.dtype)));
    }
    if !matches!(g.value(b_v).def, ValueDef::Const(_)) || b_t.rank() != 2 || a_t.rank() < 2 {
        return Err(CpuError::Unsupported("matmul_integer with a run-time or batched weight".into()));
    }
    // The weight's bytes as stored (memory-mapped): one byte per element for i8 and u8.
    let ValueDef::Const(cid) = g.value(b_v).def else { unreachable!("checked above") };
    let raw = g.constant(cid).data.bytes().ok_or_else(|| {
        CpuError::Codegen(format!("weight {b_v} holds only a summary of its data: load the graph with its weights"))
    })?;
    let (k, nn) = match b_t.shape.as_static().as_deref() {
        Some(&[k, n]) if raw.len() == k * n => (k, n),
        _ => return Err(CpuError::Codegen(format!("weight {b_v}: {} bytes for {b_t}", raw.len()))),
    };
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
    // Every weight minus `shift`, in i8's range either way.
    let shifted: Vec<i8> = match b_t.dtype {
        DType::U8 => raw.iter().map(|&b| (b ^ 0x80) as i8).collect(),
        _ => raw.iter().map(|&b| b as i8).collect(),
    };
    // The exact product: with AVX512-VNNI on the raw bytes; else through the saturating tile
    // when few weight pairs could saturate (those pairs are clamped in the packed weight and
    // their remainders added after the tile).
    let vnni = if pair_saturate { None } else { Tiles::vnni(owned.ukernels) };
    let split = match (pair_saturate || vnni.is_some(), Tiles::new(owned.ukernels, true)) {
        (false, Some(t)) => split_outliers(&shifted, k, nn).map(|s| (t, s)),
        _ => None,
    };
    let (tiles, packed, outliers) = match (vnni, split) {
        (Some(t), _) => (Some(t), pack(&shifted, k, nn, false), None),
        (None, Some((t, (main, outliers)))) => (Some(t), pack(&main, k, nn, false), Some(outliers)),
        (None, None) => {
            let tiles = Tiles::new(owned.ukernels, pair_saturate);
            (tiles, pack(&shifted, k, nn, matches!(tiles, Some(Tiles::I16(_)))), None)
        }
    };
    // Per column: c0 = -zb*K*za is run time; fixed part of the correction per column.
    // corr_n = sum_k b[k,n] (for -za * colsum) and coef_n = shift - zb_n (times the row sum).
    let mut colsum: Vec<i32> = vec![(k as i64 * shift) as i32; nn];
    for row in shifted.chunks_exact(nn) {
        for (s, &w) in colsum.iter_mut().zip(row) {
            *s += w as i32;
        }
    }
    let coef: Vec<i32> = (0..nn).map(|c| (shift - zb[c]) as i32).collect();
    let zbv: Vec<i32> = zb.iter().map(|&z| z as i32).collect();
    let needs_rowsum = coef.iter().any(|&c| c != 0);
    let mut side = Vec::new();
    for v in colsum.iter().chain(&coef).chain(&zbv) {
        side.extend_from_slice(&v.to_le_bytes());
    }
    let packed_idx = owned.push(packed);
    let side_idx = owned.push(side);
    let outliers_idx = outliers.map(|o| owned.push(o));

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
    let mut epi = Epilogue {
        body,
        product: if region { Some(product) } else { None },
        nodes,
        operands,
        alpha: 1.0,
        c: None,
        out_dims: out_dims.clone(),
        folded_casts: folded,
        tail: None,
    };
    // Both kernels below apply a deferred tail after storing each tile.
    epi.defer_tail(owned.ukernels);
    let mut bufs: Vec<BufRef> = nd.inputs.iter().map(|v| BufRef::Value(*v)).collect();
    let out_buf = bufs.len();
    bufs.push(BufRef::Value(out));
    bufs.push(BufRef::Owned(packed_idx));
    bufs.push(BufRef::Owned(side_idx));
    let (pb, sb) = (out_buf + 1, out_buf + 2);
    let ob = outliers_idx.map(|i| {
        bufs.push(BufRef::Owned(i));
        bufs.len() - 1
    });
    let a_buf = ops[0];
    let za_buf = ops.get(2).copied();
    let rows_dims: Vec<Dim> = out_dims[..out_dims.len() - 1].to_vec();
    let int_out = !region;
    let scratch_buf = bufs.len();
    let cfg = Cfg {
        a_buf,
        za_buf,
        pb,
        sb,
        out_buf,
        scratch_buf,
        k: k as i64,
        n: nn as i64,
        needs_rowsum,
        int_out,
        saturate: pair_saturate,
        ob,
    };
    let Some(tiles) = tiles else {
        let suffix = if pair_saturate { "sat" } else { "vnni" };
        let mut lw =
            Lowered::new(format!("{name}_{suffix}"), bufs, Box::new(move |fx| emit(fx, &epi, &cfg, &rows_dims)));
        lw.par = Some((out_dims[..out_dims.len() - 1].to_vec(), MR as u64));
        return Ok(lw);
    };
    let scratch_rows = rows_dims.clone();
    // Per row: its i16 copy for the exact tile, and its sum when the corrections need it.
    let row_bytes = match tiles {
        Tiles::I16(_) => 2 * k as i64 + 4,
        Tiles::Sat(_) | Tiles::Vnni(_) => 4,
    };
    let suffix = match tiles {
        Tiles::I16(_) => "i16_ukernel",
        Tiles::Vnni(_) => "vnni_ukernel",
        Tiles::Sat(_) if pair_saturate => "sat_ukernel",
        Tiles::Sat(_) => "split_ukernel",
    };
    let mut lw = Lowered::new(
        format!("{name}_{suffix}"),
        bufs,
        Box::new(move |fx| emit_tiles(fx, &epi, &cfg, tiles, &rows_dims)),
    );
    lw.par = Some((out_dims[..out_dims.len() - 1].to_vec(), TILE_MR as u64));
    // Per chunk: the activation rows widened to i16, then their sums.
    lw.scratch =
        Some(ParamSpec::Product { dims: scratch_rows.iter().map(DimSpec::of).collect(), mul: row_bytes, add: 0 });
    Ok(lw)
}

/// The weight `flat` (`k` x `nn`, row-major, already shifted into i8) as panels of 8 columns: groups
/// of 4 `k` per column (`[N/8][K/4][8][4]`, Cranelift's `dot4`) or, for the `std::arch` tile,
/// pairs (`[N/8][K/2][8][2]`, see [`ukernel::I16Tile`]). Panels are packed in parallel.
fn pack(flat: &[i8], k: usize, nn: usize, pairs: bool) -> Vec<u8> {
    use rayon::prelude::*;
    let mut packed = vec![0u8; nn * k];
    let g = if pairs { 2 } else { 4 };
    packed.par_chunks_mut(8 * k).enumerate().for_each(|(p, panel)| {
        for kg in 0..k / g {
            for j in 0..8 {
                for t in 0..g {
                    panel[(kg * 8 + j) * g + t] = flat[(kg * g + t) * nn + p * 8 + j] as u8;
                }
            }
        }
    });
    packed
}

/// The `std::arch` integer tiles a kernel calls (host-function ids, `[rows 6 | 1][panels 2 |
/// 1]`), when the host has them: exact on i16-widened rows, onnxruntime's saturating pairs
/// on the raw bytes, or exact on the raw bytes with AVX512-VNNI.
#[derive(Clone, Copy)]
enum Tiles {
    I16([[usize; 2]; 2]),
    Sat([[usize; 2]; 2]),
    Vnni([[usize; 2]; 2]),
}

impl Tiles {
    fn new(mode: crate::Ukernels, saturate: bool) -> Option<Tiles> {
        if saturate {
            ukernel::table(TILE_MR, |mr, np| crate::host::sat_tile(mode, mr, np)).map(Tiles::Sat)
        } else {
            ukernel::table(TILE_MR, |mr, np| crate::host::i16_tile(mode, mr, np)).map(Tiles::I16)
        }
    }

    fn vnni(mode: crate::Ukernels) -> Option<Tiles> {
        ukernel::table(TILE_MR, |mr, np| crate::host::vnni_tile(mode, mr, np)).map(Tiles::Vnni)
    }
}

struct Cfg {
    a_buf: usize,
    za_buf: Option<usize>,
    pb: usize,
    sb: usize,
    out_buf: usize,
    scratch_buf: usize,
    k: i64,
    n: i64,
    needs_rowsum: bool,
    int_out: bool,
    /// onnxruntime's saturating pair sums (`matmul_integer {pair_saturate}`).
    saturate: bool,
    /// The weight remainders the saturating tile leaves out (see [`split_outliers`]).
    ob: Option<usize>,
}

/// Most weights of an int8 matrix are small: a pair `w0, w1` of one column can make
/// `vpmaddubsw` saturate only when `|w0 + w1| > 128` (so both have one sign; with u8
/// activations, `255 * 128 = 32640` still fits i16). Such pairs are clamped to [-64, 64] in the
/// packed weight (`main`), and their remainders are listed per panel pair to be added to the
/// tile afterwards: the product stays exact. None when more than 1 pair in 200 would need it
/// (the widened i16 tile is then faster), e.g. for asymmetric per-channel u8 weights.
///
/// The list: `panel pairs + 1` i32 offsets (in entries), then entries of 3 i32: `k`, the
/// column within the panel pair (0..16), and the remainder.
fn split_outliers(flat: &[i8], k: usize, nn: usize) -> Option<(Vec<i8>, Vec<u8>)> {
    let mut main = flat.to_vec();
    let pairs = nn.div_ceil(16);
    let mut lists: Vec<Vec<[i32; 3]>> = vec![Vec::new(); pairs];
    let mut count = 0usize;
    // Row pairs outer, columns inner: both rows are read in order. Opposite signs never
    // exceed 128 together, so the test is just |w0 + w1| > 128; blocks of 16 columns are
    // screened without branches first.
    let over = |w0: i8, w1: i8| (w0 as i16 + w1 as i16).abs() > 128;
    for j in 0..k / 2 {
        let (r0, r1) = main[2 * j * nn..(2 * j + 2) * nn].split_at_mut(nn);
        for (b, (x0, x1)) in r0.chunks_mut(16).zip(r1.chunks_mut(16)).enumerate() {
            if !x0.iter().zip(x1.iter()).fold(false, |any, (&w0, &w1)| any | over(w0, w1)) {
                continue;
            }
            for (i, (s0, s1)) in x0.iter_mut().zip(x1.iter_mut()).enumerate() {
                if !over(*s0, *s1) {
                    continue;
                }
                count += 1;
                if count * 200 > nn * k / 2 {
                    return None;
                }
                let c = b * 16 + i;
                for (kk, slot) in [(2 * j, s0), (2 * j + 1, s1)] {
                    let w = *slot as i32;
                    let m = w.clamp(-64, 64);
                    if m != w {
                        lists[c / 16].push([kk as i32, (c % 16) as i32, w - m]);
                        *slot = m as i8;
                    }
                }
            }
        }
    }
    let mut bytes = Vec::new();
    let mut off = 0i32;
    for l in &lists {
        bytes.extend_from_slice(&off.to_le_bytes());
        off += l.len() as i32;
    }
    bytes.extend_from_slice(&off.to_le_bytes());
    for e in lists.iter().flatten() {
        for v in e {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    Some((main, bytes))
}

/// `acc + dot4(a_bytes, b_bytes)` per i32 lane, in the form Cranelift folds into `vpdpbusd`;
/// with `saturate`, each pair's sum is clamped to i16 first (onnxruntime's x86 product).
fn dot4(fx: &mut Fx, acc: Value, a_u8: Value, b_i8: Value, saturate: bool) -> Value {
    let bl = fx.b.ins().swiden_low(b_i8);
    let al = fx.b.ins().uwiden_low(a_u8);
    let lo = fx.b.ins().imul(bl, al);
    let bh = fx.b.ins().swiden_high(b_i8);
    let ah = fx.b.ins().uwiden_high(a_u8);
    let hi = fx.b.ins().imul(bh, ah);
    let lo_l = fx.b.ins().swiden_low(lo);
    let lo_h = fx.b.ins().swiden_high(lo);
    let mut p1 = fx.b.ins().iadd_pairwise(lo_l, lo_h);
    let hi_l = fx.b.ins().swiden_low(hi);
    let hi_h = fx.b.ins().swiden_high(hi);
    let mut p2 = fx.b.ins().iadd_pairwise(hi_l, hi_h);
    if saturate {
        let lo = fx.b.ins().iconst(types::I32, i16::MIN as i64);
        let lo = fx.b.ins().splat(types::I32X4, lo);
        let hi = fx.b.ins().iconst(types::I32, i16::MAX as i64);
        let hi = fx.b.ins().splat(types::I32X4, hi);
        for p in [&mut p1, &mut p2] {
            let t = fx.b.ins().smax(*p, lo);
            *p = fx.b.ins().smin(t, hi);
        }
    }
    let s = fx.b.ins().iadd_pairwise(p1, p2);
    fx.b.ins().iadd(s, acc)
}

/// A's zero point (u8, or 0) in every i32 lane.
fn zero_point_a(fx: &mut Fx, c: &Cfg) -> Value {
    let z = match c.za_buf {
        Some(i) => {
            let p = fx.buf(i);
            fx.b.ins().uload8(types::I32, mem(), p, 0)
        }
        None => fx.b.ins().iconst(types::I32, 0),
    };
    fx.b.ins().splat(types::I32X4, z)
}

fn emit(fx: &mut Fx, epi: &Epilogue, c: &Cfg, rows_dims: &[Dim]) -> Result<(), CpuError> {
    let a = fx.buf(c.a_buf);
    let b = fx.buf(c.pb);
    let side = fx.buf(c.sb);
    let out = fx.buf(c.out_buf);
    let za = zero_point_a(fx, c);
    let corr = column_corrections(fx, c, side, za)?;
    let rows = fx.numel(rows_dims)?;
    let addr: EpiAddr = epi.prepare(fx)?;
    let nv = fx.iconst(c.n);
    let (r0, r1) = fx.par_rows(rows, MR);
    let np = fx.iconst(c.n / 8);
    fx.for_n(np, |fx, p| {
        let poff = fx.imul_imm(p, c.k * 8);
        let bp = fx.b.ins().iadd(b, poff);
        let n0 = fx.imul_imm(p, 8);
        fx.for_row_blocks(r0, r1, MR, |fx, m0, mr| block(fx, epi, &addr, c, a, bp, side, out, corr, m0, mr, n0, nv))
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
    corr: Value,
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
                let nacc = dot4(fx, acc, av, bv, c.saturate);
                fx.b.def_var(var, nacc);
            }
            if c.needs_rowsum {
                let s = fx.b.use_var(sums[r]);
                let ns = dot4(fx, s, av, ones, false);
                fx.b.def_var(sums[r], ns);
            }
        }
        Ok(())
    })?;
    for r in 0..mr {
        let row = fx.iadd_imm(m0, r as i64);
        // The A word is broadcast, so every lane summed the same 4 bytes: all lanes hold the
        // row sum.
        let rowsum = if c.needs_rowsum { Some(fx.b.use_var(sums[r])) } else { None };
        let offs = epi.row_offsets(fx, addr, row);
        for h in 0..2 {
            let acc = fx.b.use_var(accs[r * 2 + h]);
            let col = fx.iadd_imm(n0, h as i64 * 4);
            finish(fx, epi, addr, c, &offs, side, out, corr, row, rowsum, col, nv, acc)?;
        }
    }
    epi.apply_tail(fx, out, m0, mr, n0, 8, nv);
    Ok(())
}

/// `K * za` in every lane.
fn k_za(fx: &mut Fx, c: &Cfg, za: Value) -> Value {
    let kz = fx.b.ins().iconst(types::I32, c.k);
    let kz = fx.b.ins().splat(types::I32X4, kz);
    fx.b.ins().imul(kz, za)
}

/// The zero-point terms that depend only on the column, `K za zb[c] - za colsum[c]`, computed
/// once per kernel call into a stack buffer of N i32 (`za` is known only at run time).
fn column_corrections(fx: &mut Fx, c: &Cfg, side: Value, za: Value) -> Result<Value, CpuError> {
    let buf = fx.stack_buf((c.n * 4) as u32, 4);
    let kza = k_za(fx, c, za);
    let zero = fx.iconst(0);
    let n = fx.iconst(c.n);
    fx.for_range(zero, n, 4, true, |fx, col| {
        let coff = fx.imul_imm(col, 4);
        let sc = fx.b.ins().iadd(side, coff);
        let colsum = fx.b.ins().load(types::I32X4, mem(), sc, 0);
        let zb = fx.b.ins().load(types::I32X4, mem(), sc, (c.n * 8) as i32);
        let t = fx.b.ins().imul(kza, zb);
        let u = fx.b.ins().imul(za, colsum);
        let v = fx.b.ins().isub(t, u);
        let d = fx.b.ins().iadd(buf, coff);
        fx.b.ins().store(mem(), v, d, 0);
        Ok(())
    })?;
    Ok(buf)
}

/// Columns `col..col + 4` of `row` from the raw product `acc` (`sum a b` with the weight
/// shifted): the zero-point corrections, then the i32 store or the cast and epilogue.
#[allow(clippy::too_many_arguments)]
fn finish(
    fx: &mut Fx,
    epi: &Epilogue,
    addr: &EpiAddr,
    c: &Cfg,
    offs: &[Value],
    side: Value,
    out: Value,
    corr: Value,
    row: Value,
    rowsum: Option<Value>,
    col: Value,
    nv: Value,
    mut acc: Value,
) -> Result<(), CpuError> {
    let coff = fx.imul_imm(col, 4);
    if let Some(s) = rowsum {
        let sc = fx.b.ins().iadd(side, coff);
        let coef = fx.b.ins().load(types::I32X4, mem(), sc, (c.n * 4) as i32);
        let t = fx.b.ins().imul(coef, s);
        acc = fx.b.ins().iadd(acc, t);
    }
    // - za * colsum + K za zb, per column for this call (see `column_corrections`).
    let ca = fx.b.ins().iadd(corr, coff);
    let cv = fx.b.ins().load(types::I32X4, mem(), ca, 0);
    acc = fx.b.ins().iadd(acc, cv);
    if c.int_out {
        let rn = fx.b.ins().imul(row, nv);
        let i = fx.b.ins().iadd(rn, col);
        let ad = fx.addr(out, i, 4);
        fx.b.ins().store(mem(), acc, ad, 0);
    } else {
        let f = fx.b.ins().fcvt_from_sint(F4, acc);
        let v = epi.apply(fx, addr, offs, col, f, true)?;
        Epilogue::store(fx, out, row, nv, col, v, true);
    }
    Ok(())
}

/// The kernel with the `std::arch` tile: this call's rows of A are widened to i16 (and summed)
/// into scratch once, then Cranelift walks panel pairs and blocks of 6 rows, calls the tile for
/// each and corrects and stores the i32 tile it wrote to the stack.
fn emit_tiles(fx: &mut Fx, epi: &Epilogue, c: &Cfg, tiles: Tiles, rows_dims: &[Dim]) -> Result<(), CpuError> {
    let a = fx.buf(c.a_buf);
    let b = fx.buf(c.pb);
    let side = fx.buf(c.sb);
    let out = fx.buf(c.out_buf);
    let scratch = fx.buf(c.scratch_buf);
    let za = zero_point_a(fx, c);
    let corr = column_corrections(fx, c, side, za)?;
    let rows = fx.numel(rows_dims)?;
    let addr: EpiAddr = epi.prepare(fx)?;
    let nv = fx.iconst(c.n);
    let (r0, r1) = fx.par_rows(rows, TILE_MR);
    let (fs, widen) = match tiles {
        Tiles::I16(f) => (f, true),
        Tiles::Sat(f) | Tiles::Vnni(f) => (f, false),
    };
    let sums_off = fx.imul_imm(rows, if widen { c.k * 2 } else { 0 });
    let sums = fx.b.ins().iadd(scratch, sums_off);
    if widen || c.needs_rowsum {
        widen_rows(fx, c, a, scratch, sums, r0, r1, widen)?;
    }
    let tbuf = fx.stack_buf((TILE_MR * ukernel::F32_TILE_COLS * 4) as u32, 5);
    let np = fx.iconst(c.n / 8);
    // Pairs of k on i16 rows in scratch, or groups of 4 k on the bytes of A.
    let steps = fx.iconst(if widen { c.k / 2 } else { c.k / 4 });
    let lda = fx.iconst(c.k);
    for_panel_pairs(fx, np, |fx, p, npn| {
        let poff = fx.imul_imm(p, c.k * 8);
        let bp = fx.b.ins().iadd(b, poff);
        let n0 = fx.imul_imm(p, 8);
        fx.for_row_blocks(r0, r1, TILE_MR, |fx, m0, mr| {
            let i = fx.b.ins().isub(m0, r0);
            let at = if widen {
                let aoff = fx.imul_imm(i, c.k * 2);
                fx.b.ins().iadd(scratch, aoff)
            } else {
                let aoff = fx.imul_imm(m0, c.k);
                fx.b.ins().iadd(a, aoff)
            };
            let f = fs[usize::from(mr == 1)][usize::from(npn == 1)];
            fx.call_host(f, &[types::I64; 5], None, &[steps, at, lda, bp, tbuf]);
            if let Some(ob) = c.ob {
                add_outliers(fx, c, ob, p, a, m0, mr, tbuf)?;
            }
            for r in 0..mr {
                let row = fx.iadd_imm(m0, r as i64);
                let rowsum = if c.needs_rowsum {
                    let ir = fx.iadd_imm(i, r as i64);
                    let sa = fx.addr(sums, ir, 4);
                    let s = fx.b.ins().load(types::I32, mem(), sa, 0);
                    Some(fx.b.ins().splat(types::I32X4, s))
                } else {
                    None
                };
                let offs = epi.row_offsets(fx, &addr, row);
                for h in 0..npn * 2 {
                    let off = (r * ukernel::F32_TILE_COLS + h * 4) * 4;
                    let acc = fx.b.ins().load(types::I32X4, mem(), tbuf, off as i32);
                    let col = fx.iadd_imm(n0, h as i64 * 4);
                    finish(fx, epi, &addr, c, &offs, side, out, corr, row, rowsum, col, nv, acc)?;
                }
            }
            epi.apply_tail(fx, out, m0, mr, n0, npn * 8, nv);
            Ok(())
        })
    })
}

/// `tile[r][col] += a[m0 + r][k] * rest` for each listed remainder of the panel pair at `p`.
#[allow(clippy::too_many_arguments)]
fn add_outliers(
    fx: &mut Fx,
    c: &Cfg,
    ob: usize,
    p: Value,
    a: Value,
    m0: Value,
    mr: usize,
    tbuf: Value,
) -> Result<(), CpuError> {
    let list = fx.buf(ob);
    let pp = fx.b.ins().ushr_imm_u(p, 1);
    let oa = fx.addr(list, pp, 4);
    let lo = fx.b.ins().sload32(mem(), oa, 0);
    let hi = fx.b.ins().sload32(mem(), oa, 4);
    let pairs = (c.n as usize).div_ceil(16) as i64;
    let entries = fx.iadd_imm(list, (pairs + 1) * 4);
    let arow = fx.imul_imm(m0, c.k);
    let abase = fx.b.ins().iadd(a, arow);
    fx.for_range(lo, hi, 1, false, |fx, e| {
        let eo = fx.imul_imm(e, 12);
        let ea = fx.b.ins().iadd(entries, eo);
        let kk = fx.b.ins().sload32(mem(), ea, 0);
        let col = fx.b.ins().sload32(mem(), ea, 4);
        let rest = fx.b.ins().load(types::I32, mem(), ea, 8);
        let ak = fx.b.ins().iadd(abase, kk);
        let ta = fx.addr(tbuf, col, 4);
        for r in 0..mr {
            let av = fx.b.ins().uload8(types::I32, mem(), ak, (r as i64 * c.k) as i32);
            let t = fx.b.ins().imul(av, rest);
            let off = (r * ukernel::F32_TILE_COLS * 4) as i32;
            let old = fx.b.ins().load(types::I32, mem(), ta, off);
            let new = fx.b.ins().iadd(old, t);
            fx.b.ins().store(mem(), new, ta, off);
        }
        Ok(())
    })
    .map(|_| ())
}

/// Rows `r0..r1` of the u8 activations `a` (`k` per row) as i16 rows at `dst` (row `r0` first)
/// when `widen`, and, when the corrections need them, each row's sum as i32 at `sums`.
#[allow(clippy::too_many_arguments)]
fn widen_rows(
    fx: &mut Fx,
    c: &Cfg,
    a: Value,
    dst: Value,
    sums: Value,
    r0: Value,
    r1: Value,
    widen: bool,
) -> Result<(), CpuError> {
    fx.for_range(r0, r1, 1, false, |fx, row| {
        let aoff = fx.imul_imm(row, c.k);
        let src = fx.b.ins().iadd(a, aoff);
        let i = fx.b.ins().isub(row, r0);
        let doff = fx.imul_imm(i, c.k * 2);
        let d = fx.b.ins().iadd(dst, doff);
        let zi = fx.b.ins().iconst(types::I32, 0);
        let zv = fx.b.ins().splat(types::I32X4, zi);
        let acc = fx.var(types::I32X4, zv);
        let tail = fx.var(types::I32, zi);
        let zero = fx.iconst(0);
        let kend = fx.iconst(c.k);
        let rest = fx.for_range(zero, kend, 16, true, |fx, kk| {
            let s = fx.b.ins().iadd(src, kk);
            let v = fx.b.ins().load(types::I8X16, mem(), s, 0);
            let lo = fx.b.ins().uwiden_low(v);
            let hi = fx.b.ins().uwiden_high(v);
            if widen {
                let da = fx.addr(d, kk, 2);
                fx.b.ins().store(mem(), lo, da, 0);
                fx.b.ins().store(mem(), hi, da, 16);
            }
            if c.needs_rowsum {
                let t = fx.b.ins().iadd(lo, hi);
                let t = fx.b.ins().iadd_pairwise(t, t);
                let t = fx.b.ins().swiden_low(t);
                let s = fx.b.use_var(acc);
                let s = fx.b.ins().iadd(s, t);
                fx.b.def_var(acc, s);
            }
            Ok(())
        })?;
        fx.for_range(rest, kend, 1, false, |fx, kk| {
            let s = fx.b.ins().iadd(src, kk);
            let v = fx.b.ins().uload8(types::I32, mem(), s, 0);
            if widen {
                let da = fx.addr(d, kk, 2);
                fx.b.ins().istore16(mem(), v, da, 0);
            }
            let t = fx.b.use_var(tail);
            let t = fx.b.ins().iadd(t, v);
            fx.b.def_var(tail, t);
            Ok(())
        })?;
        if c.needs_rowsum {
            let v = fx.b.use_var(acc);
            let mut s = fx.b.use_var(tail);
            for lane in 0..4u8 {
                let e = fx.b.ins().extractlane(v, lane);
                s = fx.b.ins().iadd(s, e);
            }
            let sa = fx.addr(sums, i, 4);
            fx.b.ins().store(mem(), s, sa, 0);
        }
        Ok(())
    })
    .map(|_| ())
}
