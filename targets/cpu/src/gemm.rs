//! Matrix products with fused epilogues.
//!
//! - 4-bit `qmatmul` weights stay 4-bit: [`crate::blocked`].
//! - Packed path: any other constant 2-D right operand (f32 `matmul`/`gemm` weights, and 8-bit
//!   `qmatmul` weights dequantized once at compile time) is packed into panels of 8 columns
//!   (`[ceil(N/8)][K][8]`, zero-padded). A register-blocked 6x8 micro-kernel (12 f32x4
//!   accumulators, 2 B vectors, 1 broadcast A) walks K with FMAs; rows of the output are split
//!   across threads in blocks of 6. Panels are the outer loop of each thread, so one panel
//!   (K x 32 bytes) stays in L1/L2 while the thread's rows stream past it.
//! - General path: any strides (run-time right operand, batch broadcast, transposed gemm
//!   operands), one row at a time, 8 columns at a time when the right operand's rows are
//!   contiguous, scalar otherwise; parallel over rows.
//! - Integer path (`matmul_integer` with a constant 8-bit right operand): see [`crate::qgemm`].
//!
//! The epilogue (the elementwise ops of a fused region after the product, or gemm's
//! `alpha`/`beta * c`) runs on the accumulators before they are stored: bias, activation and
//! residual never make a round trip through memory.

use std::borrow::Cow;

use cranelift_codegen::ir::{types, InstBuilder, Value};
use tessera_ir::{DType, Dim, Graph, Node, Op, ValueDef};

use crate::ew::{self, Sv};
use crate::fx::{broadcast_strides, elem_bytes, mem, mem_pure, Fx, F4};
use crate::lower::{dims, BufRef, Build, Lowered};
use crate::{ukernel, CpuError};

/// Rows of the `std::arch` tile (and of the attention tiles).
const MR: usize = 6;
/// Rows of Cranelift's own tile: 4 rows x 8 columns is 8 f32x4 accumulators, which with the two
/// B vectors and the broadcasts fits x64's 16 vector registers without spilling (at 6 rows
/// two accumulators spill and their store-to-load round trip bounds every k step).
pub(crate) const CL_MR: usize = 4;

/// The elementwise tail of a matmul region, evaluated per (row, 4 columns).
pub(crate) struct Epilogue<'g> {
    pub body: Cow<'g, Graph>,
    /// The body value holding the product (None for a single op: the product is the result).
    pub product: Option<tessera_ir::Value>,
    /// Body nodes to evaluate after the product (in order).
    pub nodes: Vec<Node>,
    /// Kernel operands the epilogue reads: (kernel buffer index, dtype, dims, body value).
    pub operands: Vec<(usize, DType, Vec<Dim>, Option<tessera_ir::Value>)>,
    /// gemm: `alpha * product + beta * c` (c is `operands[i]`).
    pub alpha: f32,
    pub c: Option<(usize, f32)>,
    pub out_dims: Vec<Dim>,
    /// Body casts of an integer product to f32 that the kernel folds (the product enters as f32).
    pub folded_casts: Vec<tessera_ir::Value>,
    /// The host routine that applies the body's last node (a GELU) to each stored tile, when
    /// [`Epilogue::defer_tail`] handed it over: [`Epilogue::apply`] then stops before that node.
    pub tail: Option<usize>,
}

/// Per-kernel precomputed addressing of the epilogue operands.
pub(crate) struct EpiAddr {
    bases: Vec<Value>,
    /// Byte stride per leading output axis (None when broadcast).
    row_strides: Vec<Vec<Option<Value>>>,
    col_moves: Vec<bool>,
    lead: Vec<Value>,
    /// Every value of the epilogue is f32, so [`Epilogue::apply`] may work on four lanes at once
    /// (as the elementwise kernels do); a bool mask or an integer operand goes lane by lane.
    lanes_f32: bool,
}

impl Epilogue<'_> {
    /// Hands the body's last node to the AVX-512 GELU routine ([`crate::rows::GeluTile`]) when
    /// it is a GELU whose result is the body's, and the host has the routine. Only for kernels
    /// that store through [`store_tile`] (or call [`Epilogue::apply_tail`] after their own
    /// stores): the result is stored before the GELU, which the routine then applies in place
    /// while the tile is in L1.
    pub fn defer_tail(&mut self, mode: crate::Ukernels) {
        let (Some(f), Some(_), Some(&last)) = (crate::host::gelu_tile(mode), self.product, self.nodes.last()) else {
            return;
        };
        let nd = self.body.node(last);
        let is_result = self.body.outputs().first().is_some_and(|&(_, v)| v == nd.outputs[0]);
        if matches!(nd.op, Op::Unary(tessera_ir::UnaryOp::Gelu))
            && is_result
            && self.body.ty(nd.outputs[0]).dtype == DType::F32
            && !self.folded_casts.contains(&nd.outputs[0])
        {
            self.tail = Some(f);
        }
    }

    /// The deferred tail over the stored tile at rows `m0..m0 + rows`, columns `n0..` (at most
    /// `cols`, and not past `nv`) of `out` (`nv` floats a row). Nothing without a tail.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_tail(&self, fx: &mut Fx, out: Value, m0: Value, rows: usize, n0: Value, cols: usize, nv: Value) {
        let Some(f) = self.tail else { return };
        let rn = fx.b.ins().imul(m0, nv);
        let i = fx.b.ins().iadd(rn, n0);
        let p = fx.addr(out, i, 4);
        let left = fx.b.ins().isub(nv, n0);
        let cap = fx.iconst(cols as i64);
        let c = fx.b.ins().smin(left, cap);
        let r = fx.iconst(rows as i64);
        fx.call_host(f, &[types::I64; 4], None, &[p, r, c, nv]);
    }

    pub fn prepare(&self, fx: &mut Fx) -> Result<EpiAddr, CpuError> {
        let r = self.out_dims.len();
        let lead_dims = &self.out_dims[..r.saturating_sub(1)];
        let lead: Vec<Value> = lead_dims.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
        let mut bases = Vec::new();
        let mut row_strides = Vec::new();
        let mut col_moves = Vec::new();
        for (buf, dtype, od, _) in &self.operands {
            let eb = elem_bytes(*dtype).ok_or_else(|| CpuError::Unsupported(format!("{dtype} epilogue operand")))?;
            bases.push(fx.buf(*buf));
            let mut st = broadcast_strides(fx, od, &self.out_dims, eb)?;
            col_moves.push(r > 0 && st[r - 1].is_some());
            st.truncate(r.saturating_sub(1));
            row_strides.push(st);
        }
        let f32_here = |v: &tessera_ir::Value| {
            // The product (and its folded cast) is the f32 accumulator whatever its type.
            Some(*v) == self.product || self.folded_casts.contains(v) || self.body.ty(*v).dtype == DType::F32
        };
        let lanes_f32 = self.operands.iter().all(|(_, d, _, _)| *d == DType::F32)
            && self.nodes.iter().all(|&n| {
                let nd = self.body.node(n);
                self.folded_casts.contains(&nd.outputs[0]) || nd.outputs.iter().chain(&nd.inputs).all(f32_here)
            });
        Ok(EpiAddr { bases, row_strides, col_moves, lead, lanes_f32 })
    }

    /// Byte offsets of row `row` (flattened over the output's leading dims) in each operand.
    /// An operand broadcast over every leading axis is at offset 0, one moving along all of them
    /// at `row * stride` (its leading dims are the output's, row-major); only a mix needs the
    /// row split into its leading indices.
    pub fn row_offsets(&self, fx: &mut Fx, a: &EpiAddr, row: Value) -> Vec<Value> {
        let zero = fx.iconst(0);
        let mut offs = vec![zero; self.operands.len()];
        let mixed = |st: &Vec<Option<Value>>| st.iter().any(Option::is_some) && st.iter().any(Option::is_none);
        for (off, st) in offs.iter_mut().zip(&a.row_strides) {
            if !mixed(st) {
                if let Some(Some(s)) = st.last() {
                    *off = fx.b.ins().imul(row, *s);
                }
            }
        }
        if !a.row_strides.iter().any(mixed) {
            return offs;
        }
        let mut rest = row;
        for j in (0..a.lead.len()).rev() {
            let (idx, next) = if j == 0 {
                (rest, rest)
            } else {
                let q = fx.b.ins().udiv(rest, a.lead[j]);
                let m = fx.b.ins().imul(q, a.lead[j]);
                (fx.b.ins().isub(rest, m), q)
            };
            for (off, st) in offs.iter_mut().zip(&a.row_strides) {
                if let (true, Some(s)) = (mixed(st), st[j]) {
                    let o = fx.b.ins().imul(idx, s);
                    *off = fx.b.ins().iadd(*off, o);
                }
            }
            rest = next;
        }
        offs
    }

    /// Applies the epilogue to `acc` (f32x4; lane 0 only when `!vector`) at columns `col..`.
    pub fn apply(
        &self,
        fx: &mut Fx,
        a: &EpiAddr,
        row_offs: &[Value],
        col: Value,
        acc: Value,
        vector: bool,
    ) -> Result<Value, CpuError> {
        if vector && !a.lanes_f32 {
            let mut out = acc;
            for lane in 0..4u8 {
                let x = fx.b.ins().extractlane(acc, lane);
                let x = fx.b.ins().splat(F4, x);
                let c = fx.iadd_imm(col, lane as i64);
                let r = self.apply(fx, a, row_offs, c, x, false)?;
                let r = fx.b.ins().extractlane(r, 0);
                out = fx.b.ins().insertlane(out, r, lane);
            }
            return Ok(out);
        }
        let mut loaded: Vec<Sv> = Vec::new();
        for (k, (_, dtype, _, _)) in self.operands.iter().enumerate() {
            let mut addr = fx.b.ins().iadd(a.bases[k], row_offs[k]);
            if a.col_moves[k] {
                let eb = elem_bytes(*dtype).unwrap_or(4);
                let o = fx.imul_imm(col, eb);
                addr = fx.b.ins().iadd(addr, o);
            }
            loaded.push(ew::load(fx, *dtype, addr, vector, !a.col_moves[k]));
        }
        let mut x = acc;
        if self.alpha != 1.0 {
            let al = fx.fsplat(self.alpha);
            x = fx.b.ins().fmul(x, al);
        }
        if let Some((ci, beta)) = self.c {
            let Sv::F(c) = loaded[ci] else { return Err(CpuError::Unsupported("non-float gemm c".into())) };
            let bv = fx.fsplat(beta);
            x = fx.b.ins().fma(c, bv, x);
        }
        let Some(product) = self.product else { return Ok(x) };
        let body = &*self.body;
        let mut env: Vec<Option<Sv>> = vec![None; body.n_values()];
        env[product.index()] = Some(Sv::F(x));
        for v in &self.folded_casts {
            env[v.index()] = Some(Sv::F(x));
        }
        for ((_, _, _, bv), val) in self.operands.iter().zip(&loaded) {
            if let Some(bv) = bv {
                env[bv.index()] = Some(*val);
            }
        }
        let deferred = self.tail.and(self.nodes.last().copied());
        for &n in &self.nodes {
            let nd = body.node(n);
            if self.folded_casts.contains(&nd.outputs[0]) || Some(n) == deferred {
                continue;
            }
            let args: Vec<Sv> = nd
                .inputs
                .iter()
                .map(|v| {
                    env[v.index()].ok_or_else(|| CpuError::Codegen(format!("epilogue reads {v} before it is set")))
                })
                .collect::<Result<_, _>>()?;
            let r = ew::eval_op(fx, body, &nd.op, &nd.inputs, &args, body.ty(nd.outputs[0]).dtype)?;
            env[nd.outputs[0].index()] = Some(r);
        }
        let out = match deferred {
            Some(n) => body.node(n).inputs[0],
            None => body.outputs()[0].1,
        };
        match env[out.index()] {
            Some(Sv::F(v)) => Ok(v),
            _ => Err(CpuError::Unsupported("a matmul region whose result is not f32".into())),
        }
    }

    /// Stores the epilogue's result for 4 columns (or lane 0) at `out + (row*N + col)*4`.
    pub fn store(fx: &mut Fx, out: Value, row: Value, n: Value, col: Value, v: Value, vector: bool) {
        let rn = fx.b.ins().imul(row, n);
        let i = fx.b.ins().iadd(rn, col);
        let addr = fx.addr(out, i, 4);
        if vector {
            fx.b.ins().store(mem(), v, addr, 0);
        } else {
            let s = fx.b.ins().extractlane(v, 0);
            fx.b.ins().store(mem(), s, addr, 0);
        }
    }
}

/// Which operand roles the product node has.
struct Product {
    a: usize,
    b: usize,
    trans_a: bool,
    trans_b: bool,
}

pub(crate) const TILE_MR: usize = MR;

pub(crate) fn lower_region<'g>(
    g: &'g Graph,
    n: Node,
    body: &'g Graph,
    name: &str,
    owned: &mut Build,
) -> Result<Lowered<'g>, CpuError> {
    lower_mm(g, n, Cow::Borrowed(body), true, name.to_string(), owned)
}

pub(crate) fn lower_single<'g>(g: &'g Graph, n: Node, owned: &mut Build) -> Result<Lowered<'g>, CpuError> {
    let nd = g.node(n);
    if matches!(nd.op, Op::Dequantize { .. }) {
        return Err(CpuError::Unsupported(
            "dequantize of a quantized type or blocked parameters outside a matmul".into(),
        ));
    }
    let body = crate::lower::single_body(g, &nd.op, &nd.inputs, g.ty(nd.outputs[0]));
    lower_mm(g, n, Cow::Owned(body), false, nd.op.name().to_string(), owned)
}

fn lower_mm<'g>(
    g: &'g Graph,
    n: Node,
    body: Cow<'g, Graph>,
    region: bool,
    name: String,
    owned: &mut Build,
) -> Result<Lowered<'g>, CpuError> {
    let nd = g.node(n);
    let out = nd.outputs[0];
    let first_nd = body.nodes().next().ok_or_else(|| CpuError::Codegen("empty region".into()))?.1.clone();
    let pos = |v: tessera_ir::Value| body.inputs().iter().position(|(_, x)| *x == v);
    let op_inputs: Vec<usize> = first_nd
        .inputs
        .iter()
        .map(|v| {
            pos(*v).ok_or_else(|| CpuError::Unsupported("a product whose operands are computed in the region".into()))
        })
        .collect::<Result<_, _>>()?;
    let (prod, alpha, c) = match first_nd.op {
        Op::MatMul | Op::QMatMul => {
            (Product { a: op_inputs[0], b: op_inputs[1], trans_a: false, trans_b: false }, 1.0, None)
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => (
            Product { a: op_inputs[0], b: op_inputs[1], trans_a, trans_b },
            alpha,
            op_inputs.get(2).map(|&i| (i, beta)),
        ),
        Op::MatMulInteger { pair_saturate } => {
            let packed =
                crate::qgemm::lower_packed(g, n, body, &first_nd, &op_inputs, pair_saturate, region, name, owned);
            // A lone exact product the packed kernel cannot take (a run-time or batched weight,
            // i8 activations, sizes off its panels) runs on the general kernel.
            return match packed {
                Err(e) if e.is_unsupported() && !region && !pair_saturate => {
                    crate::qgemm::lower_general(g, n).map_err(|_| e)
                }
                other => other,
            };
        }
        _ => return Err(CpuError::Codegen("not a product".into())),
    };
    let a_v = nd.inputs[prod.a];
    let b_v = nd.inputs[prod.b];
    if g.ty(a_v).dtype != DType::F32 || g.ty(out).dtype != DType::F32 {
        return Err(CpuError::Unsupported(format!("{} matmul (f32 only on this path)", g.ty(a_v).dtype)));
    }
    // Epilogue.
    let product = first_nd.outputs[0];
    let nodes: Vec<Node> = body.nodes().skip(1).map(|(x, _)| x).collect();
    for &x in &nodes {
        let bn = body.node(x);
        ew::body_op_supported(&body, &bn.op, &bn.inputs, body.ty(bn.outputs[0]).rank())
            .map_err(CpuError::Unsupported)?;
    }
    let mut operands = Vec::new();
    let mut c_idx = None;
    for (i, (_, bv)) in body.inputs().iter().enumerate() {
        let used_by_epi = nodes.iter().any(|&x| body.node(x).inputs.contains(bv));
        let is_c = c.is_some_and(|(ci, _)| ci == i);
        if used_by_epi || is_c {
            if is_c {
                c_idx = Some((operands.len(), c.expect("c").1));
            }
            operands.push((
                i,
                g.ty(nd.inputs[i]).dtype,
                dims(g, nd.inputs[i]),
                if used_by_epi { Some(*bv) } else { None },
            ));
        }
    }
    let out_dims = dims(g, out);
    if region && out_dims.len() < 2 {
        return Err(CpuError::Unsupported("a fused product with a 1-D result".into()));
    }
    let epi = Epilogue {
        body,
        product: if region { Some(product) } else { None },
        nodes,
        operands,
        alpha,
        c: c_idx,
        out_dims: out_dims.clone(),
        folded_casts: Vec::new(),
        tail: None,
    };
    let a_dims = dims(g, a_v);
    let b_dims = dims(g, b_v);
    let out_buf = nd.inputs.len();
    let mut bufs: Vec<BufRef> = nd.inputs.iter().map(|v| BufRef::Value(*v)).collect();
    bufs.push(BufRef::Value(out));

    // Packed path: constant 2-D B, A rows contiguous.
    let b_const = matches!(g.value(b_v).def, ValueDef::Const(_));
    if b_const && b_dims.len() == 2 && !prod.trans_a && a_dims.len() >= 2 {
        // Both packed paths store through `store_tile`, which applies a deferred tail.
        let mut epi = epi;
        epi.defer_tail(owned.ukernels);
        if !prod.trans_b {
            if let Some(pack) = crate::blocked::packed(g, b_v, owned) {
                let rows_dims = out_dims[..out_dims.len() - 1].to_vec();
                return Ok(crate::blocked::lower(pack, epi, bufs, prod.a, prod.b, out_buf, rows_dims, &name, owned));
            }
        }
        let fast = dequantize_fast(g, b_v);
        let bt;
        let copied;
        let (flat, rows, cols): (&[f32], usize, usize) = match &fast {
            Some((v, r, c)) => (v, *r, *c),
            None => {
                bt = tessera_ir::const_value(g, b_v, true)
                    .map_err(|e| CpuError::Codegen(format!("weights {b_v}: {e}")))?;
                let bf = bt.as_float().ok_or_else(|| CpuError::Unsupported("non-float weights".into()))?;
                let (r, c) = (bf.shape()[0], bf.shape()[1]);
                match bf.as_slice() {
                    Some(s) => (s, r, c),
                    None => {
                        copied = bf.iter().copied().collect::<Vec<f32>>();
                        (&copied, r, c)
                    }
                }
            }
        };
        let (k, nn) = if prod.trans_b { (cols, rows) } else { (rows, cols) };
        let panels = nn.div_ceil(8);
        // One panel per task: packing MiniLM's 21 MB of fp32 weights is a visible part of startup.
        let mut bytes = vec![0u8; panels * k * 8 * 4];
        {
            use rayon::prelude::*;
            bytes.par_chunks_mut(k * 32).enumerate().for_each(|(p, panel)| {
                for kk in 0..k {
                    for j in 0..8 {
                        let col = p * 8 + j;
                        if col < nn {
                            let v = if prod.trans_b { flat[col * k + kk] } else { flat[kk * nn + col] };
                            let at = (kk * 8 + j) * 4;
                            panel[at..at + 4].copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            });
        }
        let owned_idx = owned.push(bytes);
        // The packed weights replace B's buffer.
        bufs[prod.b] = BufRef::Owned(owned_idx);
        let rows_dims: Vec<Dim> = out_dims[..out_dims.len() - 1].to_vec();
        let a_buf = prod.a;
        let (kk, nn) = (k as i64, nn as i64);
        let mode = owned.ukernels;
        let tiles = F32Tiles::new(mode, false).is_some();
        let suffix = if tiles { "packed_ukernel" } else { "packed" };
        let mut lw = Lowered::new(
            format!("{name}_{suffix}"),
            bufs,
            Box::new(move |fx| match tiles {
                true => emit_packed_tiles(fx, &epi, mode, a_buf, prod.b, out_buf, &rows_dims, kk, nn),
                false => emit_packed(fx, &epi, a_buf, prod.b, out_buf, &rows_dims, kk, nn),
            }),
        );
        lw.par = Some((out_dims[..out_dims.len() - 1].to_vec(), if tiles { MR } else { CL_MR } as u64));
        return Ok(lw);
    }
    if first_nd.op == Op::QMatMul {
        return Err(CpuError::Unsupported("qmatmul with a non-constant or batched weight".into()));
    }
    // General path.
    let general = General::new(&a_dims, &b_dims, &out_dims, prod.trans_a, prod.trans_b)?;
    let rows: Vec<Dim> = general.out_lead.clone();
    let (a_buf, b_buf) = (prod.a, prod.b);
    let mut lw = Lowered::new(
        format!("{name}_general"),
        bufs,
        Box::new(move |fx| general.emit(fx, &epi, a_buf, b_buf, out_buf)),
    );
    lw.par = Some((rows, 1));
    Ok(lw)
}

#[allow(clippy::too_many_arguments)]
fn emit_packed(
    fx: &mut Fx,
    epi: &Epilogue,
    a_buf: usize,
    b_buf: usize,
    out_buf: usize,
    rows_dims: &[Dim],
    k: i64,
    n: i64,
) -> Result<(), CpuError> {
    let a = fx.buf(a_buf);
    let b = fx.buf(b_buf);
    let out = fx.buf(out_buf);
    let rows = fx.numel(rows_dims)?;
    let addr = epi.prepare(fx)?;
    let nv = fx.iconst(n);
    let kv = fx.iconst(k);
    let (r0, r1) = fx.par_rows(rows, CL_MR);
    let panels = (n + 7) / 8;
    let np = fx.iconst(panels);
    let lda = k * 4;
    fx.for_n(np, |fx, p| {
        let poff = fx.imul_imm(p, k * 32);
        let bp = fx.b.ins().iadd(b, poff);
        let n0 = fx.imul_imm(p, 8);
        fx.for_row_blocks(r0, r1, CL_MR, |fx, m0, mr| block(fx, epi, &addr, a, bp, out, m0, mr, kv, lda, n0, nv, n))
    })
}

/// The `std::arch` tiles a packed kernel calls (host-function ids), when the host has them.
#[derive(Clone, Copy)]
struct F32Tiles {
    /// [rows 6 | 1][panels 2 | 1]
    f: [[usize; 2]; 2],
}

impl F32Tiles {
    /// The tiles that set their destination, or with `acc` add to it.
    fn new(mode: crate::Ukernels, acc: bool) -> Option<F32Tiles> {
        ukernel::table(MR, |mr, np| crate::host::f32_tile(mode, mr, np, acc)).map(|f| F32Tiles { f })
    }

    fn get(&self, mr: usize, np: usize) -> usize {
        self.f[usize::from(mr == 1)][usize::from(np == 1)]
    }
}

/// The packed product with the inner tile done by a `std::arch` routine: Cranelift walks panel
/// pairs (16 columns; a last odd panel alone) and blocks of 6 rows (then single rows), calls the
/// tile for each, and applies the epilogue to the tile it wrote to the stack.
#[allow(clippy::too_many_arguments)]
fn emit_packed_tiles(
    fx: &mut Fx,
    epi: &Epilogue,
    mode: crate::Ukernels,
    a_buf: usize,
    b_buf: usize,
    out_buf: usize,
    rows_dims: &[Dim],
    k: i64,
    n: i64,
) -> Result<(), CpuError> {
    let a = fx.buf(a_buf);
    let b = fx.buf(b_buf);
    let out = fx.buf(out_buf);
    let rows = fx.numel(rows_dims)?;
    let addr = epi.prepare(fx)?;
    let nv = fx.iconst(n);
    let kv = fx.iconst(k);
    let (r0, r1) = fx.par_rows(rows, MR);
    let tiles = TileEmitter::new(fx, mode);
    let panels = fx.iconst((n + 7) / 8);
    for_panel_pairs(fx, panels, |fx, p, np| {
        let boff = fx.imul_imm(p, k * 32);
        let bp = fx.b.ins().iadd(b, boff);
        let n0 = fx.imul_imm(p, 8);
        fx.for_row_blocks(r0, r1, MR, |fx, m0, mr| {
            let aoff = fx.imul_imm(m0, k * 4);
            let arow = fx.b.ins().iadd(a, aoff);
            tiles.emit(fx, mr, np, kv, arow, kv, bp, mem_pure(), tiles.stack(), false)?;
            store_tile(fx, epi, &addr, out, m0, mr, n0, nv, n, np * 2, &|fx, r, h| tiles.load(fx, r, h))
        })
    })
}

/// Packed panels `0..panels` two at a time (`body(fx, first panel, 2)`), then a last odd one
/// alone (`body(fx, panel, 1)`): the shapes the 16-column tiles take.
pub(crate) fn for_panel_pairs(
    fx: &mut Fx,
    panels: Value,
    body: impl Fn(&mut Fx, Value, usize) -> Result<(), CpuError>,
) -> Result<(), CpuError> {
    let pairs = fx.b.ins().ushr_imm_u(panels, 1);
    fx.for_n(pairs, |fx, pp| {
        let p = fx.imul_imm(pp, 2);
        body(fx, p, 2)
    })?;
    let odd = fx.b.ins().band_imm_u(panels, 1);
    fx.if_then(odd, |fx| {
        let p = fx.iadd_imm(panels, -1);
        body(fx, p, 1)
    })
}

/// Inner tiles for kernels that pack their own panels at run time (attention): the `std::arch`
/// tile when available, otherwise Cranelift FMAs; both write an `mr` x 16 f32 tile buffer on the
/// stack that the caller reads back with [`TileEmitter::load`].
pub(crate) struct TileEmitter {
    tiles: Option<(F32Tiles, F32Tiles)>,
    buf: Value,
}

impl TileEmitter {
    pub fn new(fx: &mut Fx, mode: crate::Ukernels) -> TileEmitter {
        let buf = fx.stack_buf((MR * ukernel::F32_TILE_COLS * 4) as u32, 5);
        let tiles = F32Tiles::new(mode, false).zip(F32Tiles::new(mode, true));
        TileEmitter { tiles, buf }
    }

    /// The stack tile (`MR` rows of [`ukernel::F32_TILE_COLS`] floats) that [`TileEmitter::load`]
    /// reads.
    pub fn stack(&self) -> Value {
        self.buf
    }

    /// Rows per block the emitter does best: the `std::arch` tile's 6, or Cranelift's 4 (with
    /// single rows after either).
    pub fn rows(&self) -> usize {
        if self.tiles.is_some() {
            MR
        } else {
            CL_MR
        }
    }

    /// `dst[r][c] = sum_{kk<k} a[r * lda + kk] * panel[c / 8][kk][c % 8]` for `r < mr` (6 or 1,
    /// or [`TileEmitter::rows`]) and `c < 8 * np` (np 1 or 2), panels of `k * 8` floats from
    /// `b`; `lda` in elements; `dst` has rows of [`ukernel::F32_TILE_COLS`] floats (the
    /// [`TileEmitter::stack`] tile, or the caller's); with `acc` the product is added to what
    /// `dst` holds. `flags` load A and B in Cranelift's tile ([`mem_pure`] only where the kernel
    /// writes neither).
    #[allow(clippy::too_many_arguments)]
    pub fn emit(
        &self,
        fx: &mut Fx,
        mr: usize,
        np: usize,
        k: Value,
        a: Value,
        lda: Value,
        b: Value,
        flags: cranelift_codegen::ir::MemFlagsData,
        dst: Value,
        acc: bool,
    ) -> Result<(), CpuError> {
        if let Some((set, add)) = &self.tiles {
            let f = if acc { add.get(mr, np) } else { set.get(mr, np) };
            fx.call_host(f, &[types::I64; 5], None, &[k, a, lda, b, dst]);
            return Ok(());
        }
        let lda_b = fx.imul_imm(lda, 4);
        let rows: Vec<(Value, i32)> = (0..mr)
            .map(|r| {
                let o = fx.imul_imm(lda_b, r as i64);
                (fx.b.ins().iadd(a, o), 0)
            })
            .collect();
        let panel_bytes = fx.imul_imm(k, 32);
        for p in 0..np {
            let po = fx.imul_imm(panel_bytes, p as i64);
            let bp = fx.b.ins().iadd(b, po);
            // CL_MR rows at a time: more would spill accumulators.
            for (c, chunk) in rows.chunks(CL_MR).enumerate() {
                let accs = accumulate(fx, chunk, bp, k, flags)?;
                for (i, v) in accs.into_iter().enumerate() {
                    let (r, h) = (c * CL_MR + i / 2, i % 2);
                    let off = ((r * ukernel::F32_TILE_COLS + p * 8 + h * 4) * 4) as i32;
                    let v = if acc {
                        let old = fx.b.ins().load(F4, mem(), dst, off);
                        fx.b.ins().fadd(old, v)
                    } else {
                        v
                    };
                    fx.b.ins().store(mem(), v, dst, off);
                }
            }
        }
        Ok(())
    }

    /// The f32x4 at `tile[r][4 * group ..]`.
    pub fn load(&self, fx: &mut Fx, r: usize, group: usize) -> Value {
        let off = (r * ukernel::F32_TILE_COLS + group * 4) * 4;
        fx.b.ins().load(F4, mem(), self.buf, off as i32)
    }
}

/// Cranelift's inner tile: `rows.len()` rows (row r of A at `rows[r].0 + rows[r].1 + 4 * kk`)
/// times one packed panel of 8 columns at `bp` over `k` steps, in `2 * rows` f32x4 accumulators
/// (returned as `[row][half]`, flattened). `flags` load A and B: [`mem_pure`] where neither
/// is written by the kernel.
pub(crate) fn accumulate(
    fx: &mut Fx,
    rows: &[(Value, i32)],
    bp: Value,
    k: Value,
    flags: cranelift_codegen::ir::MemFlagsData,
) -> Result<Vec<Value>, CpuError> {
    let zero = fx.fsplat(0.0);
    let accs: Vec<_> = (0..rows.len() * 2).map(|_| fx.var(F4, zero)).collect();
    // The second FMA of a row reads its broadcast through `base + 1` (made once, outside the
    // loop) at offset - 1: the same bytes, spelled differently so the e-graph keeps two loads.
    let bases: Vec<(Value, Value, i32)> = rows.iter().map(|&(base, off)| (base, fx.iadd_imm(base, 1), off)).collect();
    // One k step at byte offset `ao` into each A row (plus `dk` steps): the panel row is at
    // `bp + 8 * ao` (x64 folds the scale into the address), A at `base + ao` (folded too).
    let step = |fx: &mut Fx, ao: Value, dk: i32| {
        let bo = fx.b.ins().ishl_imm_u(ao, 3);
        let bk = fx.b.ins().iadd(bp, bo);
        for h in 0..2 {
            let bv = fx.b.ins().load(F4, flags, bk, 32 * dk + 16 * h as i32);
            for (r, &(base, base1, off)) in bases.iter().enumerate() {
                // One broadcast per FMA, each used once: Cranelift then folds the load into
                // `vbroadcastss mem`, and the FMA (x64 lowers only the 213 form, which
                // overwrites a multiplicand) consumes the broadcast instead of a copy of a
                // shared one.
                let (b, o) = if h == 0 { (base, off) } else { (base1, off - 1) };
                let addr = fx.b.ins().iadd(b, ao);
                let s = fx.b.ins().load(types::F32, flags, addr, o + 4 * dk);
                let av = fx.b.ins().splat(F4, s);
                let acc = fx.b.use_var(accs[r * 2 + h]);
                let nacc = fx.b.ins().fma(av, bv, acc);
                fx.b.def_var(accs[r * 2 + h], nacc);
            }
        }
    };
    // Two k steps per iteration, the loop counting A's bytes: half the loop overhead, and no
    // index arithmetic left in the body but the counter's add. (The e-graph places each
    // step-2 broadcast before the step-1 FMA that frees its accumulator's register, so the
    // allocator still ends the body with one register move per accumulator pair; those moves
    // are renamed away, and the loop reaches ~80% of the 128-bit FMA peak undisturbed.)
    let zero_i = fx.iconst(0);
    let kb = fx.imul_imm(k, 4);
    let rest = fx.for_range(zero_i, kb, 8, true, |fx, ao| {
        step(fx, ao, 0);
        step(fx, ao, 1);
        Ok(())
    })?;
    fx.for_range(rest, kb, 4, false, |fx, ao| {
        step(fx, ao, 0);
        Ok(())
    })?;
    Ok(accs.iter().map(|v| fx.b.use_var(*v)).collect())
}

/// One `mr` x 8 block of the packed product plus its epilogue.
#[allow(clippy::too_many_arguments)]
fn block(
    fx: &mut Fx,
    epi: &Epilogue,
    addr: &EpiAddr,
    a: Value,
    bp: Value,
    out: Value,
    m0: Value,
    mr: usize,
    k: Value,
    lda: i64,
    n0: Value,
    nv: Value,
    n: i64,
) -> Result<(), CpuError> {
    let arow = fx.imul_imm(m0, lda);
    let abase = fx.b.ins().iadd(a, arow);
    let rows: Vec<(Value, i32)> = (0..mr).map(|r| (abase, (r as i64 * lda) as i32)).collect();
    let accs = accumulate(fx, &rows, bp, k, mem_pure())?;
    store_tile(fx, epi, addr, out, m0, mr, n0, nv, n, 2, &|_, r, h| accs[r * 2 + h])
}

/// Applies the epilogue to an `mr` x `4 * groups` tile of accumulators (`acc(fx, row, group)`
/// gives an f32x4) at rows `m0..`, columns `n0..`, and stores it; columns past `n` (the zero
/// padding of the last panel) are not stored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_tile(
    fx: &mut Fx,
    epi: &Epilogue,
    addr: &EpiAddr,
    out: Value,
    m0: Value,
    mr: usize,
    n0: Value,
    nv: Value,
    n: i64,
    groups: usize,
    acc_at: &dyn Fn(&mut Fx, usize, usize) -> Value,
) -> Result<(), CpuError> {
    let full = n % 8 == 0;
    for r in 0..mr {
        let row = fx.iadd_imm(m0, r as i64);
        let offs = epi.row_offsets(fx, addr, row);
        for h in 0..groups {
            let acc = acc_at(fx, r, h);
            let col = fx.iadd_imm(n0, h as i64 * 4);
            if full {
                let v = epi.apply(fx, addr, &offs, col, acc, true)?;
                Epilogue::store(fx, out, row, nv, col, v, true);
            } else {
                // Columns past N exist only in the padded panel: store lane by lane there.
                let end = fx.iadd_imm(col, 4);
                let fits = fx.b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThanOrEqual, end, nv);
                let tail = fx.b.create_block();
                let whole = fx.b.create_block();
                let done = fx.b.create_block();
                fx.b.ins().brif(fits, whole, &[], tail, &[]);
                fx.b.switch_to_block(whole);
                let v = epi.apply(fx, addr, &offs, col, acc, true)?;
                Epilogue::store(fx, out, row, nv, col, v, true);
                fx.b.ins().jump(done, &[]);
                fx.b.switch_to_block(tail);
                for lane in 0..4u8 {
                    let c = fx.iadd_imm(col, lane as i64);
                    let inside = fx.b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, c, nv);
                    let e = fx.b.ins().extractlane(acc, lane);
                    let s = fx.b.ins().splat(F4, e);
                    fx.if_then(inside, |fx| {
                        let v = epi.apply(fx, addr, &offs, c, s, false)?;
                        Epilogue::store(fx, out, row, nv, c, v, false);
                        Ok(())
                    })?;
                }
                fx.b.ins().jump(done, &[]);
                fx.b.switch_to_block(done);
            }
        }
    }
    epi.apply_tail(fx, out, m0, mr, n0, groups * 4, nv);
    Ok(())
}

/// The general product: `out[.., m, n] = sum_k A[.., m, k] B[.., k, n]` with any strides.
struct General {
    a_dims: Vec<Dim>,
    b_dims: Vec<Dim>,
    out_lead: Vec<Dim>,
    b_vec: bool,
    trans_a: bool,
    trans_b: bool,
}

impl General {
    fn new(a: &[Dim], b: &[Dim], out: &[Dim], trans_a: bool, trans_b: bool) -> Result<General, CpuError> {
        if a.is_empty() || b.is_empty() {
            return Err(CpuError::Unsupported("matmul of scalars".into()));
        }
        // 1-D operands as ONNX: A [K] is [1, K], B [K] is [K, 1].
        let a2: Vec<Dim> = if a.len() == 1 { vec![Dim::Static(1), a[0].clone()] } else { a.to_vec() };
        let b2: Vec<Dim> = if b.len() == 1 { vec![b[0].clone(), Dim::Static(1)] } else { b.to_vec() };
        // The output as [batch.., M, N].
        let m = if trans_a { a2[a2.len() - 1].clone() } else { a2[a2.len() - 2].clone() };
        let batch_rank = a2.len().max(b2.len()) - 2;
        let mut lead: Vec<Dim> = out[..out.len().min(batch_rank)].to_vec();
        lead.push(m);
        Ok(General { a_dims: a2, b_dims: b2, out_lead: lead, b_vec: !trans_b, trans_a, trans_b })
    }

    /// Byte strides of an operand's batch dims against the output's batch dims (0 = broadcast).
    fn batch_strides(fx: &mut Fx, od: &[Dim], lead: &[Dim]) -> Result<Vec<Value>, CpuError> {
        // Broadcast against the output's batch dims followed by the operand's own matrix dims.
        let br = lead.len() - 1;
        let mut target = lead[..br].to_vec();
        target.extend_from_slice(&od[od.len() - 2..]);
        let st = broadcast_strides(fx, od, &target, 4)?;
        let zero = fx.iconst(0);
        Ok(st[..br].iter().map(|s| s.unwrap_or(zero)).collect())
    }

    fn emit(&self, fx: &mut Fx, epi: &Epilogue, a_buf: usize, b_buf: usize, out_buf: usize) -> Result<(), CpuError> {
        let a = fx.buf(a_buf);
        let b = fx.buf(b_buf);
        let out = fx.buf(out_buf);
        let ar = self.a_dims.len();
        let br = self.b_dims.len();
        let (a_rows, a_cols) = (fx.dim(&self.a_dims[ar - 2])?, fx.dim(&self.a_dims[ar - 1])?);
        let (b_rows, b_cols) = (fx.dim(&self.b_dims[br - 2])?, fx.dim(&self.b_dims[br - 1])?);
        let k = if self.trans_a { a_rows } else { a_cols };
        let n = if self.trans_b { b_rows } else { b_cols };
        // Element strides (bytes) of A over (m, k) and B over (k, n).
        let four = fx.iconst(4);
        let a_row = fx.imul_imm(a_cols, 4);
        let (a_m, a_k) = if self.trans_a { (four, a_row) } else { (a_row, four) };
        let b_row = fx.imul_imm(b_cols, 4);
        let (b_k, b_n) = if self.trans_b { (four, b_row) } else { (b_row, four) };
        let a_bs = Self::batch_strides(fx, &self.a_dims, &self.out_lead)?;
        let b_bs = Self::batch_strides(fx, &self.b_dims, &self.out_lead)?;
        let lead: Vec<Value> = self.out_lead.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
        let addr = epi.prepare(fx)?;
        let (lo, hi) = (fx.lo, fx.hi);
        let b_vec = self.b_vec;
        fx.for_range(lo, hi, 1, false, |fx, row| {
            // Decompose the row into (batch.., m).
            let mut rest = row;
            let mut a_off = fx.iconst(0);
            let mut b_off = fx.iconst(0);
            for j in (0..lead.len()).rev() {
                let (idx, next) = if j == 0 {
                    (rest, rest)
                } else {
                    let q = fx.b.ins().udiv(rest, lead[j]);
                    let mm = fx.b.ins().imul(q, lead[j]);
                    (fx.b.ins().isub(rest, mm), q)
                };
                if j == lead.len() - 1 {
                    let o = fx.b.ins().imul(idx, a_m);
                    a_off = fx.b.ins().iadd(a_off, o);
                } else {
                    let o = fx.b.ins().imul(idx, a_bs[j]);
                    a_off = fx.b.ins().iadd(a_off, o);
                    let o = fx.b.ins().imul(idx, b_bs[j]);
                    b_off = fx.b.ins().iadd(b_off, o);
                }
                rest = next;
            }
            let abase = fx.b.ins().iadd(a, a_off);
            let bbase = fx.b.ins().iadd(b, b_off);
            let offs = epi.row_offsets(fx, &addr, row);
            let zero = fx.iconst(0);
            let start = if b_vec {
                fx.for_range(zero, n, 4, true, |fx, col| {
                    let zf = fx.fsplat(0.0);
                    let acc = fx.var(F4, zf);
                    let cb = fx.imul_imm(col, 4);
                    let bcol = fx.b.ins().iadd(bbase, cb);
                    let z = fx.iconst(0);
                    fx.for_range(z, k, 1, false, |fx, kk| {
                        let ao = fx.b.ins().imul(kk, a_k);
                        let aa = fx.b.ins().iadd(abase, ao);
                        let s = fx.b.ins().load(types::F32, mem(), aa, 0);
                        let av = fx.b.ins().splat(F4, s);
                        let bo = fx.b.ins().imul(kk, b_k);
                        let ba = fx.b.ins().iadd(bcol, bo);
                        let bv = fx.b.ins().load(F4, mem(), ba, 0);
                        let x = fx.b.use_var(acc);
                        let y = fx.b.ins().fma(av, bv, x);
                        fx.b.def_var(acc, y);
                        Ok(())
                    })?;
                    let x = fx.b.use_var(acc);
                    let v = epi.apply(fx, &addr, &offs, col, x, true)?;
                    Epilogue::store(fx, out, row, n, col, v, true);
                    Ok(())
                })?
            } else {
                zero
            };
            fx.for_range(start, n, 1, false, |fx, col| {
                let zf = fx.fconst(0.0);
                let acc = fx.var(types::F32, zf);
                let cb = fx.b.ins().imul(col, b_n);
                let bcol = fx.b.ins().iadd(bbase, cb);
                let z = fx.iconst(0);
                fx.for_range(z, k, 1, false, |fx, kk| {
                    let ao = fx.b.ins().imul(kk, a_k);
                    let aa = fx.b.ins().iadd(abase, ao);
                    let s = fx.b.ins().load(types::F32, mem(), aa, 0);
                    let bo = fx.b.ins().imul(kk, b_k);
                    let ba = fx.b.ins().iadd(bcol, bo);
                    let bv = fx.b.ins().load(types::F32, mem(), ba, 0);
                    let x = fx.b.use_var(acc);
                    let y = fx.b.ins().fma(s, bv, x);
                    fx.b.def_var(acc, y);
                    Ok(())
                })?;
                let x = fx.b.use_var(acc);
                let xv = fx.b.ins().splat(F4, x);
                let v = epi.apply(fx, &addr, &offs, col, xv, false)?;
                Epilogue::store(fx, out, row, n, col, v, false);
                Ok(())
            })?;
            Ok(())
        })?;
        Ok(())
    }
}

/// A 2-D quantized constant weight read straight from its stored bytes: 8/4-bit or ternary
/// integers with a per-tensor, per-column (axis 1) or per-block-along-rows (axis 0) f32 scale,
/// optional zero point and optional offset. Element `(r, c)` is `(code(r * cols + c) -
/// zero[at(r, c)]) as f32 * scale[at(r, c)] (+ offset[at(r, c)])`, as the interpreter computes
/// it; rows `block_rows` apart share their parameters.
/// The index of element `(r, c)`'s scale and zero point.
pub(crate) type ParamIndex = Box<dyn Fn(usize, usize) -> usize + Sync>;

pub(crate) struct QuantWeight<'a> {
    pub raw: &'a [u8],
    pub dtype: tessera_ir::DType,
    pub rows: usize,
    pub cols: usize,
    pub block_rows: usize,
    pub at: ParamIndex,
    pub scale: Vec<f32>,
    pub zero: Vec<i64>,
    pub offset: Option<Vec<f32>>,
}

impl<'a> QuantWeight<'a> {
    /// None for anything but the forms above (the caller then takes a slower general path).
    pub fn of(g: &'a tessera_ir::Graph, v: tessera_ir::Value) -> Option<QuantWeight<'a>> {
        use tessera_ir::QuantGranularity;
        let t = g.ty(v);
        let dims = t.shape.as_static()?;
        let &[rows, cols] = dims.as_slice() else { return None };
        let raw = g.const_data(v)?.bytes()?;
        let q = t.quant.as_deref()?;
        if !matches!(t.dtype, DType::I4 | DType::U4 | DType::I8 | DType::U8 | DType::Ternary) {
            return None;
        }
        if raw.len() != t.dtype.storage_bytes(rows * cols) {
            return None;
        }
        let (groups, block_rows, at): (usize, usize, ParamIndex) = match q.granularity {
            QuantGranularity::PerTensor => (1, rows.max(1), Box::new(|_, _| 0)),
            QuantGranularity::PerAxis { axis: 1 | -1 } => (cols, rows.max(1), Box::new(|_, c| c)),
            QuantGranularity::PerBlock { axis: 0 | -2, size } if size > 0 => {
                let bs = size as usize;
                (rows.div_ceil(bs) * cols, bs, Box::new(move |r, c| (r / bs) * cols + c))
            }
            _ => return None,
        };
        let st = g.ty(q.scale);
        let sb = g.const_data(q.scale)?.bytes()?;
        if st.dtype != DType::F32 || sb.len() != groups * 4 {
            return None;
        }
        let floats = |b: &[u8]| b.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let scale = floats(sb);
        let offset = match q.offset {
            None => None,
            Some(o) => {
                let (ot, ob) = (g.ty(o), g.const_data(o)?.bytes()?);
                if ot.dtype != DType::F32 || ob.len() != groups * 4 {
                    return None;
                }
                Some(floats(ob))
            }
        };
        let zero = match q.zero_point {
            None => vec![0; groups],
            Some(z) => {
                let zt = g.ty(z);
                let zb = g.const_data(z)?.bytes()?;
                if zt.dtype != t.dtype || zb.len() != t.dtype.storage_bytes(groups) {
                    return None;
                }
                (0..groups).map(|i| code(zb, zt.dtype, i)).collect()
            }
        };
        Some(QuantWeight { raw, dtype: t.dtype, rows, cols, block_rows, at, scale, zero, offset })
    }

    /// The stored integer of element `i` (row-major).
    pub fn code(&self, i: usize) -> i64 {
        code(self.raw, self.dtype, i)
    }
}

/// Element `i` of packed 8-bit, 4-bit (low nibble first) or ternary integers.
fn code(bytes: &[u8], dt: DType, i: usize) -> i64 {
    match dt {
        // 2-bit two's complement: 0b00 = 0, 0b01 = +1, 0b11 = -1.
        DType::Ternary => ((((bytes[i / 4] >> ((i % 4) * 2)) & 3) << 6) as i8 >> 6) as i64,
        DType::I8 => bytes[i] as i8 as i64,
        DType::U8 => bytes[i] as i64,
        DType::I4 => ((((bytes[i / 2] >> ((i % 2) * 4)) & 15) << 4) as i8 >> 4) as i64,
        _ => ((bytes[i / 2] >> ((i % 2) * 4)) & 15) as i64,
    }
}

/// A 2-D constant weight as f32, row-major, straight from its stored bytes: plain f32 or a
/// [`QuantWeight`]. None for anything else (the caller then goes through the interpreter's
/// `const_value`). Rows are decoded in parallel.
fn dequantize_fast(g: &tessera_ir::Graph, v: tessera_ir::Value) -> Option<(Vec<f32>, usize, usize)> {
    use rayon::prelude::*;
    let t = g.ty(v);
    if t.quant.is_none() {
        let dims = t.shape.as_static()?;
        let &[rows, cols] = dims.as_slice() else { return None };
        let raw = g.const_data(v)?.bytes()?;
        if t.dtype != DType::F32 || raw.len() != rows * cols * 4 {
            return None;
        }
        let out = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        return Some((out, rows, cols));
    }
    let w = QuantWeight::of(g, v)?;
    let (rows, cols) = (w.rows, w.cols);
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(cols.max(1)).enumerate().for_each(|(r, row)| {
        for (c, o) in row.iter_mut().enumerate() {
            let j = (w.at)(r, c);
            *o = (w.code(r * cols + c) - w.zero[j]) as f32 * w.scale[j];
            if let Some(off) = &w.offset {
                *o += off[j];
            }
        }
    });
    Some((out, rows, cols))
}
