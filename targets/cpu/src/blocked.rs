//! Products with 4- and 8-bit weights (`qmatmul` on an i4/u4/i8/u8/ternary constant
//! quantized per tensor, per column or in blocks along K, with or without zero points and
//! offsets) that stay narrow in memory, over panel pairs and blocked along K.
//!
//! At compile time the codes are regrouped, not widened: panels of 8 columns, per `k` one u32
//! holding the panel's 8 nibbles (4-bit; i4 stored with its sign bit flipped so every nibble
//! reads as unsigned, the flip added to the zero point) or 8 signed bytes (8-bit; u8 stored as
//! `q - 128`, likewise; ternary as -1, 0, 1), and per panel and block of K the parameter lanes:
//! 8 scales, then 8 zero points when any is non-zero, then 8 offsets when the type has them
//! (`[ceil(N/8)][ceil(K/bs)][lanes][8]`), as f16 when every one of them is exactly an f16 and
//! the `std::arch` routines that read them are in use (GGUF's Q8_0 and Q5_0 scales are f16 in
//! the file), else as f32. MiniLM's q4 weights are 2.7 MB this way instead of 21 MB of f32
//! panels; gemma-3-270m's Q8_0/Q5_0 weights a byte and a sixteenth per weight (its Q6_K ones a
//! byte and a quarter: products of an f16 and an int8 scale are not f16) instead of four.
//!
//! A kernel call takes a range of panel pairs (16 columns; the threads split the columns, so no
//! weight is unpacked twice), and for each pair walks K in blocks of `kc` rows ([`k_block`]):
//! the pair's block is unpacked into a per-thread scratch (`kc * 64` bytes, L1; never a
//! full-size buffer), then the f32 tiles of [`crate::gemm`] run over every block of 6 rows,
//! adding into a per-thread accumulator of `rows x 16` floats; after the last block the fused
//! epilogue reads the accumulators and stores the result. Each weight is unpacked once per call
//! and used by every row: unpacking inside the FMA loop itself would redo it for every block of
//! 6 rows on the ports the FMAs need. The unpacking is a `std::arch` routine
//! ([`ukernel::QUnpack`]) or, with the tiles switched off, Cranelift code doing the same
//! arithmetic 4 lanes at a time; both give each weight as `(q - zero) as f32 * scale (+
//! offset)`, exactly the interpreter's value.

use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use tessera_ir::{DType, Dim, Graph};

use crate::fx::{mem, Fx, F4};
use crate::gemm::{store_tile, Epilogue, QuantWeight, TileEmitter};
use crate::lower::{BufRef, Build, Lowered};
use crate::program::{DimSpec, ParamSpec};
use crate::{ukernel, CpuError};

/// How a packed weight is laid out (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    k: usize,
    n: usize,
    bs: usize,
    /// Code width: 4 or 8.
    bits: usize,
    /// Which parameter lanes follow the scales.
    zero: bool,
    offset: bool,
    /// The parameters are f16 (else f32; f16 only with the `std::arch` routines).
    half: bool,
}

impl Layout {
    /// Parameter lanes per block: scales, then zero points and offsets where present.
    fn lanes(&self) -> usize {
        1 + self.zero as usize + self.offset as usize
    }

    /// Parameter blocks along K.
    fn blocks(&self) -> usize {
        self.k.div_ceil(self.bs)
    }

    /// Bytes per parameter.
    fn par_bytes(&self) -> i64 {
        if self.half {
            2
        } else {
            4
        }
    }

    /// Bytes between panels' codes, parameters between panels' parameters.
    fn strides(&self) -> (i64, i64) {
        ((self.k * self.bits) as i64, (self.blocks() * self.lanes() * 8) as i64)
    }

    /// `form` for [`ukernel::QUnpack`].
    fn form(&self) -> i64 {
        let bit = |on: bool, b: i64| if on { b } else { 0 };
        self.bits as i64
            | bit(self.zero, ukernel::ZERO)
            | bit(self.offset, ukernel::OFFSET)
            | bit(self.half, ukernel::HALF)
    }
}

/// A constant weight packed for the kernel: codes and parameters.
struct Pack {
    codes: Vec<u8>,
    par: Vec<u8>,
    lay: Layout,
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

/// The weight `v` (`K x N`, not transposed) regrouped, or None when it is not a 4- or 8-bit
/// [`QuantWeight`]. `half_ok`: the kernel may read f16 parameters (the `std::arch` routines
/// are in use).
fn pack(g: &Graph, v: tessera_ir::Value, half_ok: bool) -> Option<Pack> {
    use rayon::prelude::*;
    let w = QuantWeight::of(g, v)?;
    let (bits, shift): (usize, i64) = match w.dtype {
        DType::U4 => (4, 0),
        DType::I4 => (4, 8),
        DType::I8 | DType::Ternary => (8, 0),
        DType::U8 => (8, -128),
        _ => return None,
    };
    if w.rows == 0 || w.cols == 0 {
        return None;
    }
    let (k, n, bs) = (w.rows, w.cols, w.block_rows);
    let panels = n.div_ceil(8);
    // Bytes per k per panel: 8 nibbles are 4, 8 bytes are 8.
    let word = bits;
    let mut codes = vec![0u8; panels * k * word];
    codes.par_chunks_mut(k * word).enumerate().for_each(|(p, panel)| {
        let cols = 8.min(n - p * 8);
        for kk in 0..k {
            let row = &mut panel[kk * word..(kk + 1) * word];
            let at = kk * n + p * 8;
            // A whole group of 8 straight from the stored bytes, copied rather than decoded code
            // by code (nearly all of a GGUF model's weights pack this way): signed bytes as they are, unsigned ones re-centred
            // (`u - 128` flips the top bit), nibbles 4 bytes at a time when the group starts
            // on a byte (low nibble first, as the panel stores them; `i4 + 8` flips each
            // nibble's top bit).
            match (w.dtype, cols == 8, at % 2 == 0) {
                (DType::I8, true, _) => row.copy_from_slice(&w.raw[at..at + 8]),
                (DType::U8, true, _) => row.iter_mut().zip(&w.raw[at..at + 8]).for_each(|(d, s)| *d = s ^ 0x80),
                (DType::U4, true, true) => row.copy_from_slice(&w.raw[at / 2..at / 2 + 4]),
                (DType::I4, true, true) => {
                    row.iter_mut().zip(&w.raw[at / 2..at / 2 + 4]).for_each(|(d, s)| *d = s ^ 0x88)
                }
                _ => {
                    for j in 0..cols {
                        let q = w.code(at + j) + shift;
                        if bits == 4 {
                            row[j / 2] |= ((q as u8) & 15) << (4 * (j % 2));
                        } else {
                            row[j] = q as i8 as u8;
                        }
                    }
                }
            }
        }
    });
    let zero = shift != 0 || w.zero.iter().any(|&z| z != 0);
    let mut lay = Layout { k, n, bs, bits, zero, offset: w.offset.is_some(), half: false };
    let (nb, lanes) = (lay.blocks(), lay.lanes());
    // Lane values per panel, block and column (padding columns get scale 0: their unstored
    // results stay finite).
    let mut vals = vec![0f32; panels * nb * lanes * 8];
    for p in 0..panels {
        for b in 0..nb {
            for j in 0..8.min(n - p * 8) {
                let at = (w.at)(b * bs, p * 8 + j);
                let o = (p * nb + b) * lanes * 8 + j;
                vals[o] = w.scale[at];
                if zero {
                    vals[o + 8] = (w.zero[at] + shift) as f32;
                }
                if let Some(off) = &w.offset {
                    vals[o + (lanes - 1) * 8] = off[at];
                }
            }
        }
    }
    lay.half = half_ok && vals.iter().all(|&x| half::f16::from_f32(x).to_f32() == x);
    let par: Vec<u8> = if lay.half {
        vals.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()
    } else {
        vals.iter().flat_map(|&x| x.to_le_bytes()).collect()
    };
    Some(Pack { codes, par, lay })
}

/// A packed weight the program holds: the [`crate::lower::Build::owned`] indices of its codes
/// and parameters, and their layout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Packed {
    codes: usize,
    par: usize,
    lay: Layout,
}

/// The weight `v` packed once for the whole program (a later call returns the same buffers),
/// or None when it is not a 4- or 8-bit [`QuantWeight`].
pub(crate) fn packed(g: &Graph, v: tessera_ir::Value, owned: &mut Build) -> Option<Packed> {
    if let Some(p) = owned.packs.get(&v) {
        return *p;
    }
    let half_ok = crate::host::q_unpack(owned.ukernels).is_some() && crate::host::q_gemv(owned.ukernels).is_some();
    let p = pack(g, v, half_ok).map(|p| Packed { codes: owned.push(p.codes), par: owned.push(p.par), lay: p.lay });
    owned.packs.insert(v, p);
    p
}

/// What a gather reads from a packed weight.
#[derive(Clone, Copy)]
enum Part {
    /// The 8-bit codes (the gathered constant holds the same bytes as the weight).
    Codes,
    /// The scales: parameter lane 0.
    Scales,
    /// The offsets: the last parameter lane.
    Offsets,
}

/// `gather data, idx {axis = 1}` where `data` (`[rows, cols]`) is the codes, the scales or the
/// offsets of a narrow weight a product packs (a tied embedding: the token's column of the
/// output projection): the kernel reads the packed copy, so the program keeps no second one
/// (the constant, read by no other kernel, is dropped). gemma-3-270m's 168 MB of embedding codes
/// and 21 MB of scales were held twice before. None when `data` is not such a constant.
pub(crate) fn lower_gather<'g>(g: &'g Graph, n: tessera_ir::Node, owned: &mut Build) -> Option<Lowered<'g>> {
    use tessera_ir::{Op, ValueDef};
    let nd = g.node(n);
    let Op::Gather { axis } = nd.op else { return None };
    let (data, idx, out) = (nd.inputs[0], nd.inputs[1], nd.outputs[0]);
    let dt = g.ty(data);
    let &[rows, cols] = dt.shape.as_static()?.as_slice() else { return None };
    if tessera_ir::types::normalize_axis(axis, 2) != Some(1) || dt.quant.is_some() || rows == 0 || cols == 0 {
        return None;
    }
    if !matches!(g.value(data).def, ValueDef::Const(_)) {
        return None;
    }
    let bytes = g.const_data(data)?.bytes()?;
    let idx_ty = crate::layout::index_type(g, idx, "gather").ok()?;
    let (w, part) = g.values().find_map(|(w, vd)| {
        let q = vd.ty.quant.as_deref()?;
        if !matches!(vd.def, ValueDef::Const(_)) || w == data {
            return None;
        }
        let same_codes = || {
            let wb = g.const_data(w).and_then(|c| c.bytes());
            vd.ty.dtype == DType::I8
                && dt.dtype == DType::I8
                && vd.ty.shape.as_static().as_deref() == Some(&[rows, cols][..])
                && wb.is_some_and(|wb| wb.as_ptr() == bytes.as_ptr() && wb.len() == bytes.len())
        };
        if same_codes() {
            Some((w, Part::Codes))
        } else if dt.dtype == DType::F32 && q.scale == data {
            Some((w, Part::Scales))
        } else if dt.dtype == DType::F32 && q.offset == Some(data) {
            Some((w, Part::Offsets))
        } else {
            None
        }
    })?;
    let p = packed(g, w, owned)?;
    let lay = p.lay;
    let (nb, lanes) = (lay.blocks(), lay.lanes());
    let (src, ok) = match part {
        Part::Codes => (p.codes, lay.bits == 8 && lay.k == rows),
        Part::Scales | Part::Offsets => (p.par, nb == rows),
    };
    if !ok || lay.n != cols {
        return None;
    }
    let id = crate::lower::dims(g, idx);
    let emit = move |fx: &mut Fx| -> Result<(), CpuError> {
        let (ip, sp, dst) = (fx.buf(0), fx.buf(1), fx.buf(2));
        let nidx = fx.numel(&id)?;
        let ncols = fx.iconst(cols as i64);
        let rowsv = fx.iconst(rows as i64);
        fx.for_n(nidx, |fx, j| {
            let t = crate::layout::checked_index(fx, ip, j, idx_ty, ncols);
            // Column t lives in panel t / 8, lane t % 8.
            let panel = fx.b.ins().ushr_imm_u(t, 3);
            let lane = fx.b.ins().band_imm_u(t, 7);
            fx.for_n(rowsv, |fx, r| {
                let at = fx.b.ins().imul(r, nidx);
                let at = fx.b.ins().iadd(at, j);
                match part {
                    Part::Codes => {
                        // Byte (panel, r, lane) of `[panels][k][8]`.
                        let e = fx.imul_imm(panel, (lay.k * 8) as i64);
                        let e = fx.b.ins().iadd(e, lane);
                        let rr = fx.imul_imm(r, 8);
                        let e = fx.b.ins().iadd(e, rr);
                        let a = fx.b.ins().iadd(sp, e);
                        let c = fx.b.ins().load(types::I8, mem(), a, 0);
                        let d = fx.b.ins().iadd(dst, at);
                        fx.b.ins().store(mem(), c, d, 0);
                    }
                    Part::Scales | Part::Offsets => {
                        // Element ((panel * nb + r) * lanes + li) * 8 + lane.
                        let li = if matches!(part, Part::Scales) { 0 } else { lanes - 1 };
                        let e = fx.imul_imm(panel, nb as i64);
                        let e = fx.b.ins().iadd(e, r);
                        let e = fx.imul_imm(e, (lanes * 8) as i64);
                        let e = fx.iadd_imm(e, (li * 8) as i64);
                        let e = fx.b.ins().iadd(e, lane);
                        let v = if lay.half {
                            let a = fx.addr(sp, e, 2);
                            let h = fx.b.ins().uload16(types::I32, mem(), a, 0);
                            fx.call_host(
                                crate::host::id("tessera_host_f16_to_f32"),
                                &[types::I32],
                                Some(types::F32),
                                &[h],
                            )
                            .expect("f16_to_f32 returns a value")
                        } else {
                            let a = fx.addr(sp, e, 4);
                            fx.b.ins().load(types::F32, mem(), a, 0)
                        };
                        let d = fx.addr(dst, at, 4);
                        fx.b.ins().store(mem(), v, d, 0);
                    }
                }
                Ok(())
            })
        })
    };
    let name = match part {
        Part::Codes => "gather_packed_codes",
        Part::Scales | Part::Offsets => "gather_packed_params",
    };
    Some(Lowered::new(name, vec![BufRef::Value(idx), BufRef::Owned(src), BufRef::Value(out)], Box::new(emit)))
}

/// The kernel for a product whose weight (operand `b_buf` of `bufs`) is `pack`: the packed
/// weight replaces the weight's buffer; 4-bit parameters and the scratch are appended.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower<'g>(
    pack: Packed,
    epi: Epilogue<'g>,
    mut bufs: Vec<BufRef>,
    a_buf: usize,
    b_buf: usize,
    out_buf: usize,
    rows_dims: Vec<Dim>,
    name: &str,
    owned: &mut Build,
) -> Lowered<'g> {
    let Packed { codes, par, lay } = pack;
    bufs[b_buf] = BufRef::Owned(codes);
    bufs.push(BufRef::Owned(par));
    let par_buf = bufs.len() - 1;
    let scratch_buf = bufs.len();
    let mode = owned.ukernels;
    let units = lay.n.div_ceil(16) as u64;
    let kc = k_block(lay.k, lay.bs);
    let cfg = Cfg { a_buf, codes_buf: b_buf, par_buf, out_buf, scratch_buf, lay, kc: kc as i64, mode };
    let suffix = format!(
        "q{}{}{}",
        lay.bits,
        if ukernel::q_unpack(mode).is_some() { "_ukernel" } else { "" },
        if lay.half { "_f16" } else { "" }
    );
    let scratch_rows = rows_dims.clone();
    let mut lw = Lowered::new(format!("{name}_{suffix}"), bufs, Box::new(move |fx| emit(fx, &epi, &cfg, &rows_dims)));
    lw.par = Some((vec![Dim::Static(units)], 1));
    // Per chunk: the unpacked block of a panel pair, then the pair's accumulators for every row.
    lw.scratch =
        Some(ParamSpec::Product { dims: scratch_rows.iter().map(DimSpec::of).collect(), mul: 64, add: kc as i64 * 64 });
    lw
}

struct Cfg {
    a_buf: usize,
    codes_buf: usize,
    par_buf: usize,
    out_buf: usize,
    scratch_buf: usize,
    lay: Layout,
    /// K per block ([`k_block`]).
    kc: i64,
    mode: crate::Ukernels,
}

impl Cfg {
    /// Where panel `p`'s codes and parameters start.
    fn panel(&self, fx: &mut Fx, p: Value, codes: Value, par: Value) -> (Value, Value) {
        let (ldc, ldp) = self.lay.strides();
        let off = fx.imul_imm(p, ldc);
        let cp = fx.b.ins().iadd(codes, off);
        let off = fx.imul_imm(p, ldp * self.lay.par_bytes());
        (cp, fx.b.ins().iadd(par, off))
    }
}

fn emit(fx: &mut Fx, epi: &Epilogue, cfg: &Cfg, rows_dims: &[Dim]) -> Result<(), CpuError> {
    let (k, n, kc) = (cfg.lay.k as i64, cfg.lay.n as i64, cfg.kc);
    let a = fx.buf(cfg.a_buf);
    let codes = fx.buf(cfg.codes_buf);
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
        unpack.emit(fx, np, p, kb, codes, par, scratch, cfg)?;
        fx.for_row_blocks(zero, rows, tiles.rows(), |fx, m0, mr| {
            let at = fx.imul_imm(m0, k);
            let at = fx.b.ins().iadd(at, k0);
            let arow = fx.addr(a, at, 4);
            let dst = fx.addr(acc, m0, 64);
            // The scratch is the kernel's own writes: plain loads.
            tiles.emit(fx, mr, np, kcv, arow, kv, scratch, mem(), dst, !first)
        })
    };
    let gemv = crate::host::q_gemv(cfg.mode);
    // Panels `p..p + np` over every row.
    let pass = |fx: &mut Fx, p: Value, np: usize| -> Result<(), CpuError> {
        let blocks = |fx: &mut Fx| -> Result<(), CpuError> {
            block(fx, p, np, zero, true)?;
            if k > kc {
                let one = fx.iconst(1);
                let nkb = fx.iconst(k / kc);
                fx.for_range(one, nkb, 1, false, |fx, kb| block(fx, p, np, kb, false))?;
            }
            Ok(())
        };
        match gemv {
            // One row (a decoded token): the fused routine reads the codes once, no scratch.
            Some(f) => {
                let one = fx.b.ins().icmp_imm_s(IntCC::Equal, rows, 1);
                fx.if_then(one, |fx| {
                    let (cp, pp) = cfg.panel(fx, p, codes, par);
                    let (ldc, ldp) = cfg.lay.strides();
                    let args = [k, cfg.lay.bs as i64, np as i64, ldc, ldp, cfg.lay.form()].map(|v| fx.iconst(v));
                    fx.call_host(
                        f,
                        &[types::I64; 10],
                        None,
                        &[args[0], args[1], args[2], cp, args[3], pp, args[4], a, acc, args[5]],
                    );
                    Ok(())
                })?;
                let many = fx.b.ins().icmp_imm_s(IntCC::NotEqual, rows, 1);
                fx.if_then(many, blocks)?;
            }
            None => blocks(fx)?,
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
    /// Cranelift's 4-bit form: lane masks `0xF << 4i` and their inverse scales `16^-i`.
    lanes: Option<(Value, Value)>,
}

impl Unpack {
    fn new(fx: &mut Fx, mode: crate::Ukernels) -> Unpack {
        if let Some(f) = crate::host::q_unpack(mode) {
            return Unpack { host: Some(f), lanes: None };
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
        codes: Value,
        par: Value,
        out: Value,
        cfg: &Cfg,
    ) -> Result<(), CpuError> {
        let lay = &cfg.lay;
        let (k, kc, cbs) = (lay.k as i64, cfg.kc, lay.bs as i64);
        // Bytes per row of a panel (8 nibbles or 8 bytes), floats per parameter block; bytes
        // and floats between panels; the rows sharing a parameter block within this K block.
        let (word, blk) = (lay.bits as i64, lay.lanes() as i64 * 8);
        let (ldc, ldp) = lay.strides();
        let bs = cbs.min(kc);
        let (cp, parp) = cfg.panel(fx, p, codes, par);
        let k0 = fx.imul_imm(kb, kc);
        let cp = fx.addr(cp, k0, word);
        let parp = if cbs < k {
            // K blocks are whole parameter blocks (`k_block`).
            let b0 = fx.imul_imm(kb, kc / cbs);
            fx.addr(parp, b0, blk * lay.par_bytes())
        } else {
            parp
        };
        if let Some(f) = self.host {
            let args = [kc, bs, np as i64, ldc, ldp, lay.form()].map(|v| fx.iconst(v));
            fx.call_host(
                f,
                &[types::I64; 9],
                None,
                &[args[0], args[1], args[2], cp, args[3], parp, args[4], out, args[5]],
            );
            return Ok(());
        }
        let (masks, pows) = self.lanes.expect("Cranelift unpacking");
        // `pack` makes f16 parameters only for the std::arch routines.
        if lay.half {
            return Err(CpuError::Codegen("f16 weight parameters without the unpacking routine".into()));
        }
        for q in 0..np as i64 {
            let nbv = fx.iconst((kc + bs - 1) / bs);
            let kcv = fx.iconst(kc);
            fx.for_n(nbv, |fx, b| {
                let pa = fx.addr(parp, b, blk * 4);
                let ld = |fx: &mut Fx, o: i64| fx.b.ins().load(F4, mem(), pa, (q * ldp * 4 + o) as i32);
                let sc = [ld(fx, 0), ld(fx, 16)];
                let zr = if lay.zero { Some([ld(fx, 32), ld(fx, 48)]) } else { None };
                let last = (lay.lanes() as i64 - 1) * 32;
                let of = if lay.offset { Some([ld(fx, last), ld(fx, last + 16)]) } else { None };
                let kk0 = fx.imul_imm(b, bs);
                let kk1 = fx.iadd_imm(kk0, bs);
                let kk1 = fx.b.ins().smin(kk1, kcv);
                fx.for_range(kk0, kk1, 1, false, |fx, kk| {
                    let wa = fx.addr(cp, kk, word);
                    let oa = fx.addr(out, kk, 32);
                    // The row's codes as two i32x4 (lanes 0-3, 4-7).
                    let u = if lay.bits == 4 {
                        let word = fx.b.ins().load(types::I32, mem(), wa, (q * ldc) as i32);
                        let hi = fx.b.ins().ushr_imm_u(word, 16);
                        [word, hi].map(|w| {
                            let v = fx.b.ins().splat(types::I32X4, w);
                            let u = fx.b.ins().band(v, masks);
                            let u = fx.b.ins().fcvt_from_sint(F4, u);
                            fx.b.ins().fmul(u, pows)
                        })
                    } else {
                        let h = fx.b.ins().sload8x8(mem(), wa, (q * ldc) as i32);
                        let lo = fx.b.ins().swiden_low(h);
                        let hi = fx.b.ins().swiden_high(h);
                        [lo, hi].map(|v| fx.b.ins().fcvt_from_sint(F4, v))
                    };
                    for (h, u) in u.into_iter().enumerate() {
                        let d = match zr {
                            Some(z) => fx.b.ins().fsub(u, z[h]),
                            None => u,
                        };
                        let mut w = fx.b.ins().fmul(d, sc[h]);
                        if let Some(o) = of {
                            w = fx.b.ins().fadd(w, o[h]);
                        }
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
