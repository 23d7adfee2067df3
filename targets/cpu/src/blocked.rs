//! Products with 4-bit weights (`qmatmul` on an i4/u4 constant quantized per tensor, per column
//! or in blocks along K) that stay 4-bit in memory, over panel pairs and blocked along K.
//!
//! At compile time the nibbles are regrouped, not widened: panels of 8 columns, one u32 per `k`
//! holding the panel's 8 nibbles (`[ceil(N/8)][K]` u32, i4 stored with its sign bit flipped so
//! every nibble reads as unsigned), and per panel and block of K the 8 scales and 8 offsets
//! (zero point, +8 for i4) as f32 (`[ceil(N/8)][ceil(K/bs)][16]`): MiniLM's q4 weights are
//! 2.7 MB this way instead of 21 MB of f32 panels.
//!
//! A kernel call takes a range of panel pairs (16 columns; the threads split the columns, so no
//! weight is unpacked twice), and for each pair walks K in blocks of `kc` rows ([`k_block`]):
//! the pair's block is unpacked into a per-thread scratch (`kc * 64` bytes, L1; never a
//! full-size buffer), then the f32 tiles of [`crate::gemm`] run over every block of 6 rows,
//! adding into a per-thread accumulator of `rows x 16` floats; after the last block the fused
//! epilogue reads the accumulators and stores the result. Each weight is unpacked once per call
//! and used by every row: unpacking inside the FMA loop itself would redo it for every block of
//! 6 rows on the ports the FMAs need. The unpacking is a `std::arch` routine
//! ([`ukernel::Q4Unpack`]) or, with the tiles switched off, Cranelift code doing the same
//! arithmetic 4 lanes at a time; both give each weight as `(q - zero) as f32 * scale`, exactly
//! the interpreter's value.

use std::sync::Arc;

use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use tessera_ir::{DType, Dim, Graph};

use crate::fx::{mem, Fx, F4};
use crate::gemm::{store_tile, Epilogue, QuantWeight, TileEmitter};
use crate::lower::{BufRef, Build, Lowered};
use crate::{ukernel, CpuError};

/// A constant weight laid out for the kernel (see the module docs).
pub(crate) struct Pack {
    nib: Vec<u8>,
    par: Vec<u8>,
    k: usize,
    n: usize,
    bs: usize,
}

/// Rows of K multiplied at a time: a divisor of K that keeps a panel pair's block (`kc * 64`
/// bytes) and the tile rows' block of A in L1, a multiple of the quantization block `bs` so each
/// K block starts a parameter block; K itself when none fits.
fn k_block(k: usize, bs: usize) -> usize {
    if k <= 256 {
        return k;
    }
    (64..=256).rev().find(|kc| k.is_multiple_of(*kc) && (bs >= k || kc.is_multiple_of(bs))).unwrap_or(k)
}

/// The weight `v` (`K x N`, not transposed) regrouped, or None when it is not a 4-bit
/// [`QuantWeight`].
pub(crate) fn pack_q4(g: &Graph, v: tessera_ir::Value) -> Option<Pack> {
    use rayon::prelude::*;
    let w = QuantWeight::of(g, v)?;
    if !matches!(w.dtype, DType::I4 | DType::U4) || w.rows == 0 || w.cols == 0 {
        return None;
    }
    let (k, n, bs) = (w.rows, w.cols, w.block_rows);
    let nb = k.div_ceil(bs);
    let panels = n.div_ceil(8);
    let flip: u8 = if w.dtype == DType::I4 { 8 } else { 0 };
    let mut nib = vec![0u8; panels * k * 4];
    nib.par_chunks_mut(k * 4).enumerate().for_each(|(p, panel)| {
        for kk in 0..k {
            let mut word = 0u32;
            for j in 0..8.min(n - p * 8) {
                let i = kk * n + p * 8 + j;
                let q = ((w.raw[i / 2] >> ((i % 2) * 4)) & 15) ^ flip;
                word |= u32::from(q) << (4 * j);
            }
            panel[kk * 4..kk * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
    });
    // Padding columns get scale 0: their (unstored) results stay finite.
    let mut par = vec![0u8; panels * nb * 16 * 4];
    for p in 0..panels {
        for b in 0..nb {
            for j in 0..8.min(n - p * 8) {
                let at = (w.at)(b * bs, p * 8 + j);
                let o = ((p * nb + b) * 16 + j) * 4;
                par[o..o + 4].copy_from_slice(&w.scale[at].to_le_bytes());
                let off = (w.zero[at] + i64::from(flip)) as f32;
                par[o + 32..o + 36].copy_from_slice(&off.to_le_bytes());
            }
        }
    }
    Some(Pack { nib, par, k, n, bs })
}

/// The kernel for a product whose weight (operand `b_buf` of `bufs`) is `pack`: the packed
/// weight replaces the weight's buffer; 4-bit parameters and the scratch are appended.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower<'g>(
    pack: Pack,
    epi: Epilogue<'g>,
    mut bufs: Vec<BufRef>,
    a_buf: usize,
    b_buf: usize,
    out_buf: usize,
    rows_dims: Vec<Dim>,
    name: &str,
    owned: &mut Build,
) -> Lowered<'g> {
    let Pack { nib, par, k, n, bs } = pack;
    bufs[b_buf] = BufRef::Owned(owned.push(nib));
    bufs.push(BufRef::Owned(owned.push(par)));
    let par_buf = bufs.len() - 1;
    let scratch_buf = bufs.len();
    let mode = owned.ukernels;
    let units = n.div_ceil(16) as u64;
    let kc = k_block(k, bs);
    let cfg = Cfg {
        a_buf,
        nib_buf: b_buf,
        par_buf,
        out_buf,
        scratch_buf,
        k: k as i64,
        n: n as i64,
        bs: bs as i64,
        kc: kc as i64,
        mode,
    };
    let suffix = if ukernel::q4_unpack(mode).is_some() { "q4_ukernel" } else { "q4" };
    let scratch_rows = rows_dims.clone();
    let mut lw = Lowered::new(format!("{name}_{suffix}"), bufs, Box::new(move |fx| emit(fx, &epi, &cfg, &rows_dims)));
    lw.par = Some((vec![Dim::Static(units)], 1));
    // Per chunk: the unpacked block of a panel pair, then the pair's accumulators for every row.
    lw.scratch = Some(Arc::new(move |b| {
        let rows: i64 = scratch_rows.iter().map(|d| b.resolve(d).unwrap_or(0) as i64).product();
        vec![kc as i64 * 64 + rows * 64]
    }));
    lw
}

struct Cfg {
    a_buf: usize,
    nib_buf: usize,
    par_buf: usize,
    out_buf: usize,
    scratch_buf: usize,
    k: i64,
    n: i64,
    bs: i64,
    /// K per block ([`k_block`]).
    kc: i64,
    mode: crate::Ukernels,
}

fn emit(fx: &mut Fx, epi: &Epilogue, cfg: &Cfg, rows_dims: &[Dim]) -> Result<(), CpuError> {
    let (k, n, kc) = (cfg.k, cfg.n, cfg.kc);
    let a = fx.buf(cfg.a_buf);
    let nib = fx.buf(cfg.nib_buf);
    let par = fx.buf(cfg.par_buf);
    let out = fx.buf(cfg.out_buf);
    let scratch = fx.buf(cfg.scratch_buf);
    let acc = fx.iadd_imm(scratch, kc * 64);
    let rows = fx.numel(rows_dims)?;
    let addr = epi.prepare(fx)?;
    let nv = fx.iconst(n);
    let kv = fx.iconst(k);
    let kcv = fx.iconst(kc);
    let panels = (n + 7) / 8;
    let pairs = panels / 2;
    let units = fx.iconst((panels + 1) / 2);
    let (u0, u1) = fx.par_rows(units, 1);
    let tiles = TileEmitter::new(fx, cfg.mode);
    let unpack = Unpack::new(fx, cfg.mode);
    let zero = fx.iconst(0);
    // One block of K for panels `p..p + np`: unpack it, then add its product to every row's
    // accumulators (or set them, for the first block).
    let block = |fx: &mut Fx, p: Value, np: usize, kb: Value, first: bool| -> Result<(), CpuError> {
        let k0 = fx.imul_imm(kb, kc);
        unpack.emit(fx, np, p, kb, nib, par, scratch, cfg)?;
        fx.for_row_blocks(zero, rows, tiles.rows(), |fx, m0, mr| {
            let at = fx.imul_imm(m0, k);
            let at = fx.b.ins().iadd(at, k0);
            let arow = fx.addr(a, at, 4);
            let dst = fx.addr(acc, m0, 64);
            // The scratch is the kernel's own writes: plain loads.
            tiles.emit(fx, mr, np, kcv, arow, kv, scratch, mem(), dst, !first)
        })
    };
    // Panels `p..p + np` over every row.
    let pass = |fx: &mut Fx, p: Value, np: usize| -> Result<(), CpuError> {
        block(fx, p, np, zero, true)?;
        if k > kc {
            let one = fx.iconst(1);
            let nkb = fx.iconst(k / kc);
            fx.for_range(one, nkb, 1, false, |fx, kb| block(fx, p, np, kb, false))?;
        }
        let n0 = fx.imul_imm(p, 8);
        fx.for_row_blocks(zero, rows, tiles.rows(), |fx, m0, mr| {
            let base = fx.addr(acc, m0, 64);
            let load = |fx: &mut Fx, r: usize, h: usize| fx.b.ins().load(F4, mem(), base, (r * 64 + h * 16) as i32);
            store_tile(fx, epi, &addr, out, m0, mr, n0, nv, n, np * 2, &load)
        })
    };
    let pairs_v = fx.iconst(pairs);
    let pend = fx.b.ins().smin(u1, pairs_v);
    fx.for_range(u0, pend, 1, false, |fx, u| {
        let p = fx.imul_imm(u, 2);
        pass(fx, p, 2)
    })?;
    if panels % 2 == 1 {
        // The last unit is the odd panel alone.
        let starts = fx.b.ins().icmp(IntCC::SignedLessThanOrEqual, u0, pairs_v);
        let ends = fx.b.ins().icmp(IntCC::SignedGreaterThan, u1, pairs_v);
        let mine = fx.b.ins().band(starts, ends);
        fx.if_then(mine, |fx| {
            let p = fx.iconst(panels - 1);
            pass(fx, p, 1)
        })?;
    }
    Ok(())
}

/// Unpacks panels into the scratch: the `std::arch` routine, or Cranelift code.
struct Unpack {
    host: Option<usize>,
    /// Cranelift's form: lane masks `0xF << 4i` and their inverse scales `16^-i`.
    lanes: Option<(Value, Value)>,
}

impl Unpack {
    fn new(fx: &mut Fx, mode: crate::Ukernels) -> Unpack {
        if let Some(f) = ukernel::q4_unpack(mode) {
            return Unpack { host: Some(f as usize), lanes: None };
        }
        let m0 = fx.b.ins().iconst(types::I32, 0xF);
        let mut masks = fx.b.ins().splat(types::I32X4, m0);
        let mut pows = fx.fsplat(1.0);
        for i in 1..4u8 {
            let m = fx.b.ins().iconst(types::I32, 0xF << (4 * i));
            masks = fx.b.ins().insertlane(masks, m, i);
            let p = fx.fconst(1.0 / (1u32 << (4 * i)) as f32);
            pows = fx.b.ins().insertlane(pows, p, i);
        }
        Unpack { host: None, lanes: Some((masks, pows)) }
    }

    /// Rows `kb * kc..(kb + 1) * kc` of panels `p..p + np` into `out` (`[np][kc][8]` f32).
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        fx: &mut Fx,
        np: usize,
        p: Value,
        kb: Value,
        nib: Value,
        par: Value,
        out: Value,
        cfg: &Cfg,
    ) -> Result<(), CpuError> {
        let (k, kc) = (cfg.k, cfg.kc);
        // Parameter blocks per panel, and the rows sharing one within this K block.
        let nb = (k + cfg.bs - 1) / cfg.bs;
        let bs = cfg.bs.min(kc);
        let noff = fx.imul_imm(p, k * 4);
        let nibp = fx.b.ins().iadd(nib, noff);
        let k0 = fx.imul_imm(kb, kc);
        let nibp = fx.addr(nibp, k0, 4);
        let poff = fx.imul_imm(p, nb * 64);
        let parp = fx.b.ins().iadd(par, poff);
        let parp = if cfg.bs < k {
            // K blocks are whole parameter blocks (`k_block`).
            let b0 = fx.imul_imm(kb, kc / cfg.bs);
            fx.addr(parp, b0, 64)
        } else {
            parp
        };
        if let Some(f) = self.host {
            let args = [kc, bs, np as i64, k, nb * 16].map(|v| fx.iconst(v));
            fx.call_host(f, &[types::I64; 8], None, &[args[0], args[1], args[2], nibp, args[3], parp, args[4], out]);
            return Ok(());
        }
        let (masks, pows) = self.lanes.expect("Cranelift unpacking");
        for q in 0..np as i64 {
            let nbv = fx.iconst((kc + bs - 1) / bs);
            let kcv = fx.iconst(kc);
            fx.for_n(nbv, |fx, b| {
                let pa = fx.addr(parp, b, 64);
                let ld = |fx: &mut Fx, o: i64| fx.b.ins().load(F4, mem(), pa, (q * nb * 64 + o) as i32);
                let sc = [ld(fx, 0), ld(fx, 16)];
                let of = [ld(fx, 32), ld(fx, 48)];
                let kk0 = fx.imul_imm(b, bs);
                let kk1 = fx.iadd_imm(kk0, bs);
                let kk1 = fx.b.ins().smin(kk1, kcv);
                fx.for_range(kk0, kk1, 1, false, |fx, kk| {
                    let wa = fx.addr(nibp, kk, 4);
                    let word = fx.b.ins().load(types::I32, mem(), wa, (q * k * 4) as i32);
                    let oa = fx.addr(out, kk, 32);
                    for (h, (s, o)) in sc.iter().zip(&of).enumerate() {
                        let wh = if h == 0 { word } else { fx.b.ins().ushr_imm_u(word, 16) };
                        let v = fx.b.ins().splat(types::I32X4, wh);
                        let u = fx.b.ins().band(v, masks);
                        let u = fx.b.ins().fcvt_from_sint(F4, u);
                        let u = fx.b.ins().fmul(u, pows);
                        let d = fx.b.ins().fsub(u, *o);
                        let w = fx.b.ins().fmul(d, *s);
                        fx.b.ins().store(mem(), w, oa, (q * kc * 32) as i32 + h as i32 * 16);
                    }
                    Ok(())
                })?;
                Ok(())
            })?;
        }
        Ok(())
    }
}
