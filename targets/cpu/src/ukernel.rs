//! Optional ISA-specific inner tiles, written in Rust with `std::arch` and called from JIT code
//! (as IREE calls its microkernels). Cranelift's vectors are 128-bit and its x64 backend has
//! only the `vfmadd213` form (the accumulator is never the tied operand, so every FMA needs a
//! register copy); on an AVX2 host a 256-bit tile does twice the work per instruction. Cranelift
//! still emits everything around the tile: the loops over panels and rows, the thread split, the
//! fused epilogue and the stores.
//!
//! A tile is chosen when the kernel is compiled, from the CPU features detected then, and only
//! when [`Ukernels::Auto`] (the widest the CPU has) or [`Ukernels::Avx2`] (the 256-bit ones) is
//! asked for; [`Ukernels::Off`] keeps every instruction Cranelift's.

/// Whether compiled kernels may call the `std::arch` inner tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ukernels {
    /// Use them when the host has the features they need (AVX2 and FMA on x86-64), the widest
    /// the host has (AVX-512, AVX512-VNNI).
    #[default]
    Auto,
    /// The 256-bit routines only (AVX2, FMA, F16C), even on a CPU with AVX-512: what an AVX2
    /// host runs, to compare the two families on one machine and to test both.
    Avx2,
    /// Cranelift-emitted code only.
    Off,
}

/// Rows of one f32 tile call.
pub const F32_MR: usize = 6;
/// Columns of the tile buffer a call writes (two packed panels of 8).
pub const F32_TILE_COLS: usize = 16;

/// An f32 inner tile: `tile[r][c] = sum_k a[r * lda + k] * panel[c / 8][k][c % 8]` for `r < mr`,
/// `c < 8 * np`, where panel `p` starts at `b + p * k * 8` (the packed-weight layout of
/// [`crate::gemm`]). `tile` is row-major with [`F32_TILE_COLS`] columns. Arguments: `k`, `a`,
/// `lda` (elements), `b`, `tile`.
pub type F32Tile = unsafe extern "C" fn(i64, *const f32, i64, *const f32, *mut f32);

/// The f32 tile for `mr` rows (1..=6) and `np` panels (1 or 2), if this host has one and `mode`
/// allows it. With `acc` the tile adds to what `tile` holds (`tile[r][c] += ...`), for products
/// blocked along K.
pub fn f32_tile(mode: Ukernels, mr: usize, np: usize, acc: bool) -> Option<F32Tile> {
    if mode == Ukernels::Off || !(1..=F32_MR).contains(&mr) || !(1..=2).contains(&np) {
        return None;
    }
    match mode {
        Ukernels::Avx2 => imp::f32_tile_of(false, mr, np, acc),
        _ => imp::f32_tile(mr, np, acc),
    }
}

/// An integer inner tile on 16-bit operands, exact:
/// `tile[r][c] = sum_{j < kp} a[r * lda + 2j] * w(c, 2j) + a[r * lda + 2j + 1] * w(c, 2j + 1)`
/// for `r < mr`, `c < 8 * np`, where `w(c, k)` is the i8 at `b + (c / 8) * kp * 16 + (k / 2) * 16
/// + (c % 8) * 2 + k % 2` (panels of 8 columns holding pairs of `k`: the integer ukernel layout
/// of [`crate::qgemm`]). `a` is i16 (activations widened once per kernel call), `tile` i32,
/// row-major with [`F32_TILE_COLS`] columns. Arguments: `kp` (pairs of k), `a`, `lda`
/// (elements), `b`, `tile`. Every product and sum fits i32 for 8-bit sources and
/// `k < 2^16`, so the result is exact.
pub type I16Tile = unsafe extern "C" fn(i64, *const i16, i64, *const i8, *mut i32);

/// The integer tile for `mr` rows (1..=6) and `np` panels (1 or 2), if this host has one and
/// `mode` allows it.
pub fn i16_tile(mode: Ukernels, mr: usize, np: usize) -> Option<I16Tile> {
    if mode == Ukernels::Off || !(1..=F32_MR).contains(&mr) || !(1..=2).contains(&np) {
        return None;
    }
    imp::i16_tile(mr, np)
}

/// onnxruntime's x86 u8 x i8 product (`matmul_integer {pair_saturate}`): for `r < mr`,
/// `c < 8 * np`, `tile[r][c] = sum_{j < kq} sat16(a[r*lda + 4j] w(c, 4j) + a[.. 4j+1] w(c, 4j+1))
/// + sat16(a[.. 4j+2] w(c, 4j+2) + a[.. 4j+3] w(c, 4j+3))`, raw u8 `a` and the i8 weight in the
/// `[N/8][K/4][8][4]` layout of [`crate::qgemm`] (`w(c, k)` at `b + (c / 8) * kq * 32 + (k / 4)
/// * 32 + (c % 8) * 4 + k % 4`). `vpmaddubsw` computes each saturated pair exactly as defined,
/// `vpmaddwd` by ones adds two pairs exactly. Arguments: `kq` (groups of 4 k), `a`, `lda`
/// (bytes), `b`, `tile`.
pub type SatTile = unsafe extern "C" fn(i64, *const u8, i64, *const i8, *mut i32);

/// The pair-saturating tile for `mr` rows (1..=6) and `np` panels (1 or 2), if this host has one
/// and `mode` allows it.
pub fn sat_tile(mode: Ukernels, mr: usize, np: usize) -> Option<SatTile> {
    if mode == Ukernels::Off || !(1..=F32_MR).contains(&mr) || !(1..=2).contains(&np) {
        return None;
    }
    imp::sat_tile(mr, np)
}

/// The exact u8 x i8 product on the raw bytes with AVX512-VNNI (`vpdpbusd` sums four
/// products into i32 without intermediate saturation): `tile[r][c] = sum_{k < 4 kq} a[r * lda
/// + k] * w(c, k)`, the weight in [`SatTile`]'s `[N/8][K/4][8][4]` layout. Every sum fits i32 for
/// `k < 2^16`, so the result is exact. Arguments as [`SatTile`].
pub type VnniTile = SatTile;

/// The VNNI tile for `mr` rows (1..=6) and `np` panels (1 or 2), if this host has AVX512-VNNI
/// (with AVX512VL) and `mode` allows it.
pub fn vnni_tile(mode: Ukernels, mr: usize, np: usize) -> Option<VnniTile> {
    if mode != Ukernels::Auto || !(1..=F32_MR).contains(&mr) || !(1..=2).contains(&np) {
        return None;
    }
    imp::vnni_tile(mr, np)
}

/// Unpacks 4- or 8-bit weight panels into f32 panels for [`F32Tile`]: for panel `p < np` (1 or
/// 2) and `kk < k`, `out[p * k * 8 + kk * 8 + j] = (u - zero) * scale (+ offset)` where `u` is code `j` of row
/// `kk` of panel `p` and `scale`, `zero`, `offset` are lane `j` of the parameter block of `kk`:
/// the layout of [`crate::blocked`]. Codes are 4-bit (`bits = 4`: nibble `j` of the u32 at
/// `codes + p * ldc + kk * 4`, unsigned) or 8-bit (`bits = 8`: byte `j` of the 8 at
/// `codes + p * ldc + kk * 8`, signed). Parameters: per block of `bs` rows, `lanes` groups of
/// 8 values at element `p * ldp + (kk / bs) * lanes * 8` of `par`: the scales, then the zero
/// points (`form & ZERO`), then the offsets (`form & OFFSET`); a missing zero point is 0 and a
/// missing offset is not added. The values are f32, or f16 with `form & HALF` (exact: the
/// packer chooses f16 only when every value is one). `u - zero` is an exact small integer, so
/// each weight is rounded as the interpreter rounds it. Arguments: `k`, `bs`, `np`, `codes`,
/// `ldc` (bytes), `par`, `ldp` (elements), `out`, `form` (`bits | ZERO | OFFSET | HALF`).
pub type QUnpack = unsafe extern "C" fn(i64, i64, i64, *const u8, i64, *const u8, i64, *mut f32, i64);

/// One activation row times the weights of `np` (1 or 2) panels, the weights as [`QUnpack`]
/// defines them: `acc[q * 8 + j] = sum_kk a[kk] * w(kk, q, j)`, summed per parameter block as
/// `scale * (sum a * u - zero * sum a) + offset * sum a` (f32 FMA on the codes, k in two
/// interleaved partial sums; one parameter step per block, not per weight). For decoding one
/// token, where unpacking into a scratch and reading it back costs more than the product. Arguments as [`QUnpack`], with `a` (`k`
/// floats) and `acc` in place of `out`.
pub type QGemv = unsafe extern "C" fn(i64, i64, i64, *const u8, i64, *const u8, i64, *const f32, *mut f32, i64);

/// The one-row routine, if this host has one and `mode` allows it.
pub fn q_gemv(mode: Ukernels) -> Option<QGemv> {
    match mode {
        Ukernels::Off => None,
        Ukernels::Avx2 => imp::q_gemv_of(false),
        Ukernels::Auto => imp::q_gemv(),
    }
}

/// The one-row routine of the given family (`avx512`: 8-bit codes in 512-bit registers), if
/// this host has it: for tests, which check the two give the same bits. [`q_gemv`] picks the
/// widest the host has.
pub fn q_gemv_of(avx512: bool) -> Option<QGemv> {
    imp::q_gemv_of(avx512)
}

/// `form` bit: the parameter blocks hold zero points.
pub const ZERO: i64 = 0x100;
/// `form` bit: the parameter blocks hold offsets.
pub const OFFSET: i64 = 0x200;
/// `form` bit: the parameters are f16, not f32.
pub const HALF: i64 = 0x400;

/// The unpacking routine, if this host has one and `mode` allows it.
pub fn q_unpack(mode: Ukernels) -> Option<QUnpack> {
    if mode == Ukernels::Off {
        return None;
    }
    imp::q_unpack()
}

/// The host-function ids ([`crate::host`]) of a tile family for the two shapes packed kernels
/// call, `[rows mr | 1][panels 2 | 1]` (a block of `mr` rows, then the leftover rows one by one;
/// panel pairs, then a last odd panel), when the host has all four. `tile(mr, np)` is one of
/// `host`'s tile lookups.
pub fn table(mr: usize, tile: impl Fn(usize, usize) -> Option<usize>) -> Option<[[usize; 2]; 2]> {
    Some([[tile(mr, 2)?, tile(mr, 1)?], [tile(1, 2)?, tile(1, 1)?]])
}

/// Which tile family this host would use (for reports), or None.
pub fn describe(mode: Ukernels) -> Option<&'static str> {
    f32_tile(mode, F32_MR, 2, false)?;
    Some(match (imp::has_avx512() && mode == Ukernels::Auto, vnni_tile(mode, F32_MR, 2).is_some()) {
        (true, true) => "avx512f 6x16 f32 and avx512-vnni 6x16 u8 x i8 (vpdpbusd)",
        (true, false) => "avx512f 6x16 f32 and avx2 6x16 i16 (vpmaddwd)",
        (false, true) => "avx2+fma 6x16 f32 and avx512-vnni 6x16 u8 x i8 (vpdpbusd)",
        (false, false) => "avx2+fma 6x16 f32 and avx2 6x16 i16 (vpmaddwd)",
    })
}

/// The f32 tile of the given family (`avx512`: the 512-bit tile for two panels; else the AVX2
/// one), if this host has it: for tests and the micro-benchmark, which compare the families
/// on one host. [`f32_tile`] picks the widest the host has.
pub fn f32_tile_of(avx512: bool, mr: usize, np: usize, acc: bool) -> Option<F32Tile> {
    if !(1..=F32_MR).contains(&mr) || !(1..=2).contains(&np) {
        return None;
    }
    imp::f32_tile_of(avx512, mr, np, acc)
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{F32Tile, I16Tile, QGemv, QUnpack, SatTile, VnniTile};
    use std::arch::x86_64::*;

    /// The 512-bit f32 tile's features (with AVX2 and FMA for the one-panel tiles).
    pub fn has_avx512() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }

    pub fn q_unpack() -> Option<QUnpack> {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return None;
        }
        Some(unpack)
    }

    pub fn q_gemv() -> Option<QGemv> {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")) {
            return None;
        }
        Some(if has_avx512() { gemv512 } else { gemv })
    }

    pub fn q_gemv_of(avx512: bool) -> Option<QGemv> {
        q_gemv()?;
        match avx512 {
            false => Some(gemv),
            true => has_avx512().then_some(gemv512 as QGemv),
        }
    }

    /// Calls `panels.$method::<FOUR, ZERO, OFFSET, NP>(args)` for a `form` and a panel count
    /// (1 or 2): one copy of each loop per form, so nothing is decided inside it.
    macro_rules! by_form {
        ($panels:ident . $method:ident ( $($arg:expr),* ), $form:expr, $np:expr) => {{
            let four = $form & 0xFF == 4;
            let (zero, offset) = ($form & super::ZERO != 0, $form & super::OFFSET != 0);
            match (four, zero, offset, $np) {
                (true, false, false, 1) => $panels.$method::<true, false, false, 1>($($arg),*),
                (true, true, false, 1) => $panels.$method::<true, true, false, 1>($($arg),*),
                (true, false, true, 1) => $panels.$method::<true, false, true, 1>($($arg),*),
                (true, true, true, 1) => $panels.$method::<true, true, true, 1>($($arg),*),
                (false, false, false, 1) => $panels.$method::<false, false, false, 1>($($arg),*),
                (false, true, false, 1) => $panels.$method::<false, true, false, 1>($($arg),*),
                (false, false, true, 1) => $panels.$method::<false, false, true, 1>($($arg),*),
                (false, true, true, 1) => $panels.$method::<false, true, true, 1>($($arg),*),
                (true, false, false, 2) => $panels.$method::<true, false, false, 2>($($arg),*),
                (true, true, false, 2) => $panels.$method::<true, true, false, 2>($($arg),*),
                (true, false, true, 2) => $panels.$method::<true, false, true, 2>($($arg),*),
                (true, true, true, 2) => $panels.$method::<true, true, true, 2>($($arg),*),
                (false, false, false, 2) => $panels.$method::<false, false, false, 2>($($arg),*),
                (false, true, false, 2) => $panels.$method::<false, true, false, 2>($($arg),*),
                (false, false, true, 2) => $panels.$method::<false, false, true, 2>($($arg),*),
                (false, true, true, 2) => $panels.$method::<false, true, true, 2>($($arg),*),
                _ => {}
            }
        }};
    }

    /// # Safety
    /// `codes` holds `np` (1 or 2) panels of `k * bits` bytes `ldc` apart, `par` holds `np`
    /// panels of `ceil(k / bs) * lanes * 8` values `ldp` apart (`lanes` = 1 + zero + offset;
    /// f16 with `form & HALF`, else f32), `out` holds `np * k * 8` floats, and the CPU has
    /// AVX2 and F16C (checked by [`q_unpack`]).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,f16c")]
    unsafe extern "C" fn unpack(
        k: i64,
        bs: i64,
        np: i64,
        codes: *const u8,
        ldc: i64,
        par: *const u8,
        ldp: i64,
        out: *mut f32,
        form: i64,
    ) {
        let p = Panels::new(k, bs, codes, ldc, par, ldp, form);
        // SAFETY: the caller's contract above.
        unsafe { by_form!(p.unpack(out), form, np) }
    }

    /// A one-row entry point ([`QGemv`]): `$method` of [`Panels`] for the form, compiled with
    /// `$features`.
    macro_rules! one_row {
        ($(#[$doc:meta])* $name:ident, $method:ident, $features:literal) => {
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $features)]
            unsafe extern "C" fn $name(
                k: i64,
                bs: i64,
                np: i64,
                codes: *const u8,
                ldc: i64,
                par: *const u8,
                ldp: i64,
                a: *const f32,
                acc: *mut f32,
                form: i64,
            ) {
                let p = Panels::new(k, bs, codes, ldc, par, ldp, form);
                // SAFETY: the caller's contract above.
                unsafe { by_form!(p.$method(a, acc), form, np) }
            }
        };
    }

    one_row!(
        /// # Safety
        /// As [`unpack`] for `codes` and `par`, `a` holds `k` floats, `acc` holds `np * 8`
        /// floats, and the CPU has AVX2, FMA and F16C (checked by [`q_gemv`]).
        gemv,
        gemv,
        "avx2,fma,f16c"
    );

    one_row!(
        /// The one-row routine with 8-bit codes in 512-bit registers (two k per register; the
        /// same sums in the same order as [`gemv`], so the same bits), 4-bit codes as [`gemv`].
        ///
        /// # Safety
        /// As [`gemv`], and the CPU has AVX512F and AVX512DQ (checked by [`q_gemv`]).
        gemv512,
        gemv512,
        "avx2,fma,f16c,avx512f,avx512dq"
    );

    /// Packed panels of [`crate::blocked`]: codes and parameter blocks.
    struct Panels {
        k: usize,
        bs: usize,
        codes: *const u8,
        ldc: usize,
        par: *const u8,
        /// Elements between panels' parameters.
        ldp: usize,
        /// The parameters are f16 (`HALF`), else f32.
        half: bool,
    }

    /// Bytes ahead of the codes being read that the one-row routine asks the caches for. It
    /// streams each weight once, and this machine's hardware prefetchers alone leave a core
    /// waiting on DRAM (gemma-3-270m's 189 MB output projection: about 10.5 ms without, 7.5
    /// ms with, 2 threads).
    const PREFETCH: usize = 12 << 10;

    impl Panels {
        fn new(k: i64, bs: i64, codes: *const u8, ldc: i64, par: *const u8, ldp: i64, form: i64) -> Panels {
            Panels {
                k: k.max(0) as usize,
                bs: bs.max(1) as usize,
                codes,
                ldc: ldc as usize,
                par,
                ldp: ldp as usize,
                half: form & super::HALF != 0,
            }
        }

        /// Bytes per parameter.
        fn par_bytes(&self) -> usize {
            if self.half {
                2
            } else {
                4
            }
        }

        /// Parameter block `b` of panel `q`: scales, zero points, offsets (0 where absent).
        ///
        /// # Safety
        /// The block lies in `par` (the callers' contracts).
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn params<const ZERO: bool, const OFFSET: bool>(&self, q: usize, b: usize) -> [__m256; 3] {
            let lanes = 1 + ZERO as usize + OFFSET as usize;
            let e = self.par_bytes();
            // SAFETY: as above.
            unsafe {
                let base = self.par.add((q * self.ldp + b * lanes * 8) * e);
                let load = |lane: usize| {
                    let p = base.add(lane * 8 * e);
                    if self.half {
                        _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()))
                    } else {
                        _mm256_loadu_ps(p.cast::<f32>())
                    }
                };
                let zero = if ZERO { load(1) } else { _mm256_setzero_ps() };
                let offset = if OFFSET { load(lanes - 1) } else { _mm256_setzero_ps() };
                [load(0), zero, offset]
            }
        }

        /// Asks the caches for the line `ahead` bytes past `p` (never dereferenced: a prefetch
        /// past the end of the weights does not fault).
        #[target_feature(enable = "avx2")]
        fn prefetch(p: *const u8, ahead: usize) {
            // A hint: it reads nothing the program sees, so it is safe even past the end.
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead).cast::<i8>())
        }

        /// The 8 weights of row `kk` of panel `q`, as the interpreter computes them:
        /// `(u - zero) * scale (+ offset)`, `u` a nibble (`FOUR`) or a signed byte.
        ///
        /// # Safety
        /// The row lies in `codes` (the callers' contracts).
        #[target_feature(enable = "avx2")]
        unsafe fn weights<const FOUR: bool, const ZERO: bool, const OFFSET: bool>(
            &self,
            q: usize,
            kk: usize,
            prm: &[__m256; 3],
        ) -> __m256 {
            // SAFETY: as above.
            unsafe {
                let mut d = self.codes_f32::<FOUR>(q, kk);
                if ZERO {
                    d = _mm256_sub_ps(d, prm[1]);
                }
                let w = _mm256_mul_ps(d, prm[0]);
                if OFFSET {
                    _mm256_add_ps(w, prm[2])
                } else {
                    w
                }
            }
        }

        /// `out[q * k * 8 + kk * 8 + j]`: every weight of the `NP` panels (see [`QUnpack`]).
        ///
        /// # Safety
        /// As [`unpack`].
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn unpack<const FOUR: bool, const ZERO: bool, const OFFSET: bool, const NP: usize>(
            &self,
            out: *mut f32,
        ) {
            // SAFETY: as above.
            unsafe {
                for q in 0..NP {
                    let outp = out.add(q * self.k * 8);
                    for b in 0..self.k.div_ceil(self.bs) {
                        let prm = self.params::<ZERO, OFFSET>(q, b);
                        for kk in b * self.bs..((b + 1) * self.bs).min(self.k) {
                            let w = self.weights::<FOUR, ZERO, OFFSET>(q, kk, &prm);
                            _mm256_storeu_ps(outp.add(kk * 8), w);
                        }
                    }
                }
            }
        }

        /// The 8 codes of row `kk` of panel `q` as f32 (a nibble when `FOUR`, else a signed byte).
        ///
        /// # Safety
        /// The row lies in `codes` (the callers' contracts).
        #[target_feature(enable = "avx2")]
        unsafe fn codes_f32<const FOUR: bool>(&self, q: usize, kk: usize) -> __m256 {
            // SAFETY: as above.
            unsafe {
                let cp = self.codes.add(q * self.ldc);
                let u = if FOUR {
                    let w = _mm256_set1_epi32(cp.add(kk * 4).cast::<u32>().read_unaligned() as i32);
                    let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
                    _mm256_and_si256(_mm256_srlv_epi32(w, shifts), _mm256_set1_epi32(15))
                } else {
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(cp.add(kk * 8).cast::<__m128i>()))
                };
                _mm256_cvtepi32_ps(u)
            }
        }

        /// Asks the caches for what parameter block `b` (rows `k0..k1`) of panels `0..np` reads
        /// [`PREFETCH`] bytes ahead: the lines past its codes, and proportionally past its
        /// parameters (an eighth as far: a block's parameters are 16 to 96 bytes against its
        /// codes' 128 to 256).
        #[target_feature(enable = "avx2")]
        fn prefetch_block<const FOUR: bool, const ZERO: bool, const OFFSET: bool>(
            &self,
            np: usize,
            b: usize,
            k0: usize,
            k1: usize,
        ) {
            let word = if FOUR { 4 } else { 8 };
            for q in 0..np {
                let cp = self.codes.wrapping_add(q * self.ldc);
                for line in (k0 * word..k1 * word).step_by(64) {
                    Self::prefetch(cp.wrapping_add(line), PREFETCH);
                }
                let lanes = 1 + ZERO as usize + OFFSET as usize;
                let pp = self.par.wrapping_add((q * self.ldp + b * lanes * 8) * self.par_bytes());
                Self::prefetch(pp, PREFETCH / 8);
            }
        }

        /// `sum` plus parameter block `b` of panel `q` applied to the block's code sums `t`
        /// (`sum_kk a[kk] * u`) and the block's `sum_kk a[kk]` in every lane (`asv`):
        /// `scale * (t - zero * asv) + offset * asv`.
        ///
        /// # Safety
        /// The block lies in `par` (the callers' contracts).
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn fold_block<const ZERO: bool, const OFFSET: bool>(
            &self,
            q: usize,
            b: usize,
            t: __m256,
            asv: __m256,
            sum: __m256,
        ) -> __m256 {
            // SAFETY: as above.
            let prm = unsafe { self.params::<ZERO, OFFSET>(q, b) };
            let tv = if ZERO { _mm256_fnmadd_ps(prm[1], asv, t) } else { t };
            let s = _mm256_fmadd_ps(prm[0], tv, sum);
            if OFFSET {
                _mm256_fmadd_ps(prm[2], asv, s)
            } else {
                s
            }
        }

        /// `acc[q * 8 + j] = sum_kk a[kk] * w(kk, q, j)` for the `NP` panels (see [`QGemv`]),
        /// factored by parameter block: `t = sum a[kk] * u` over the block's rows (codes as
        /// f32, no parameter per weight), then `scale * (t - zero * sum a) + offset * sum a`.
        ///
        /// # Safety
        /// As [`gemv`].
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn gemv<const FOUR: bool, const ZERO: bool, const OFFSET: bool, const NP: usize>(
            &self,
            a: *const f32,
            acc: *mut f32,
        ) {
            // SAFETY: as above.
            unsafe {
                let mut sum = [_mm256_setzero_ps(); NP];
                for b in 0..self.k.div_ceil(self.bs) {
                    // Two partial sums per panel (and of `a`), k steps alternating between them.
                    let mut t = [[_mm256_setzero_ps(); 2]; NP];
                    let mut asum = [_mm256_setzero_ps(); 2];
                    let mut step = |kk: usize, h: usize| {
                        let av = _mm256_set1_ps(a.add(kk).read());
                        if ZERO || OFFSET {
                            asum[h] = _mm256_add_ps(asum[h], av);
                        }
                        for (q, tq) in t.iter_mut().enumerate() {
                            tq[h] = _mm256_fmadd_ps(av, self.codes_f32::<FOUR>(q, kk), tq[h]);
                        }
                    };
                    let (k0, k1) = (b * self.bs, ((b + 1) * self.bs).min(self.k));
                    self.prefetch_block::<FOUR, ZERO, OFFSET>(NP, b, k0, k1);
                    let mut kk = k0;
                    while kk + 1 < k1 {
                        step(kk, 0);
                        step(kk + 1, 1);
                        kk += 2;
                    }
                    if kk < k1 {
                        step(kk, 0);
                    }
                    let asv = _mm256_add_ps(asum[0], asum[1]);
                    for (q, tq) in t.iter().enumerate() {
                        sum[q] = self.fold_block::<ZERO, OFFSET>(q, b, _mm256_add_ps(tq[0], tq[1]), asv, sum[q]);
                    }
                }
                for (q, s) in sum.iter().enumerate() {
                    _mm256_storeu_ps(acc.add(q * 8), *s);
                }
            }
        }
    }

    impl Panels {
        /// [`Panels::gemv`] for 8-bit codes with two k per 512-bit register: lanes 0-7 hold
        /// the even k's partial sums and lanes 8-15 the odd k's, exactly [`Panels::gemv`]'s two
        /// alternating partial sums, folded the same way (an odd last k joins the even sums
        /// first), so the result has the same bits. Half the vector instructions per weight.
        ///
        /// # Safety
        /// As [`gemv512`].
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512dq")]
        unsafe fn gemv512<const FOUR: bool, const ZERO: bool, const OFFSET: bool, const NP: usize>(
            &self,
            a: *const f32,
            acc: *mut f32,
        ) {
            // SAFETY (whole body): as above.
            unsafe {
                if FOUR {
                    return self.gemv::<FOUR, ZERO, OFFSET, NP>(a, acc);
                }
                let mut sum = [_mm256_setzero_ps(); NP];
                for b in 0..self.k.div_ceil(self.bs) {
                    let (k0, k1) = (b * self.bs, ((b + 1) * self.bs).min(self.k));
                    self.prefetch_block::<false, ZERO, OFFSET>(NP, b, k0, k1);
                    let mut t = [_mm512_setzero_ps(); NP];
                    let mut asum = _mm512_setzero_ps();
                    let mut kk = k0;
                    while kk + 1 < k1 {
                        let av = _mm512_insertf32x8::<1>(
                            _mm512_set1_ps(a.add(kk).read()),
                            _mm256_set1_ps(a.add(kk + 1).read()),
                        );
                        if ZERO || OFFSET {
                            asum = _mm512_add_ps(asum, av);
                        }
                        for (q, tq) in t.iter_mut().enumerate() {
                            let cp = self.codes.add(q * self.ldc + kk * 8);
                            let u = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(cp.cast::<__m128i>())));
                            *tq = _mm512_fmadd_ps(av, u, *tq);
                        }
                        kk += 2;
                    }
                    let mut even = [_mm256_setzero_ps(); NP];
                    let mut odd = [_mm256_setzero_ps(); NP];
                    for q in 0..NP {
                        even[q] = _mm512_castps512_ps256(t[q]);
                        odd[q] = _mm512_extractf32x8_ps::<1>(t[q]);
                    }
                    let mut asv = _mm512_castps512_ps256(asum);
                    if kk < k1 {
                        let av = _mm256_set1_ps(a.add(kk).read());
                        if ZERO || OFFSET {
                            asv = _mm256_add_ps(asv, av);
                        }
                        for (q, e) in even.iter_mut().enumerate() {
                            *e = _mm256_fmadd_ps(av, self.codes_f32::<false>(q, kk), *e);
                        }
                    }
                    let asv = _mm256_add_ps(asv, _mm512_extractf32x8_ps::<1>(asum));
                    for q in 0..NP {
                        sum[q] = self.fold_block::<ZERO, OFFSET>(q, b, _mm256_add_ps(even[q], odd[q]), asv, sum[q]);
                    }
                }
                for (q, s) in sum.iter().enumerate() {
                    _mm256_storeu_ps(acc.add(q * 8), *s);
                }
            }
        }
    }

    /// `f::<MR, NP>` for the tile shape asked for (rows 1..=6, panels 1 or 2), else `None`.
    macro_rules! shape {
        ($f:ident, $mr:expr, $np:expr) => {
            match ($mr, $np) {
                (1, 1) => $f::<1, 1>,
                (2, 1) => $f::<2, 1>,
                (3, 1) => $f::<3, 1>,
                (4, 1) => $f::<4, 1>,
                (5, 1) => $f::<5, 1>,
                (6, 1) => $f::<6, 1>,
                (1, 2) => $f::<1, 2>,
                (2, 2) => $f::<2, 2>,
                (3, 2) => $f::<3, 2>,
                (4, 2) => $f::<4, 2>,
                (5, 2) => $f::<5, 2>,
                (6, 2) => $f::<6, 2>,
                _ => return None,
            }
        };
    }

    /// `f::<MR>` for the rows asked for (1..=6), else `None`.
    macro_rules! rows {
        ($f:ident, $mr:expr) => {
            match $mr {
                1 => $f::<1>,
                2 => $f::<2>,
                3 => $f::<3>,
                4 => $f::<4>,
                5 => $f::<5>,
                6 => $f::<6>,
                _ => return None,
            }
        };
    }

    pub fn sat_tile(mr: usize, np: usize) -> Option<SatTile> {
        if !is_x86_feature_detected!("avx2") {
            return None;
        }
        let f: SatTile = shape!(stile, mr, np);
        Some(f)
    }

    /// # Safety
    /// `a` holds `mr` rows of `4 * kq` bytes `lda` apart, `b` holds `np` panels of `kq * 32`
    /// bytes, `tile` holds `mr * 16` i32, and the CPU has AVX2 (checked by [`sat_tile`]).
    #[target_feature(enable = "avx2")]
    unsafe extern "C" fn stile<const MR: usize, const NP: usize>(
        kq: i64,
        a: *const u8,
        lda: i64,
        b: *const i8,
        tile: *mut i32,
    ) {
        let (kq, lda) = (kq.max(0) as usize, lda as usize);
        let mut acc = [[_mm256_setzero_si256(); NP]; MR];
        let ones = _mm256_set1_epi16(1);
        // SAFETY (whole body): the caller's contract above bounds every offset.
        unsafe {
            let b1 = b.add(kq * 32 * (NP - 1));
            for j in 0..kq {
                let bv = [
                    _mm256_loadu_si256(b.add(j * 32) as *const __m256i),
                    _mm256_loadu_si256(b1.add(j * 32) as *const __m256i),
                ];
                for (r, row) in acc.iter_mut().enumerate() {
                    let quad = (a.add(r * lda + 4 * j) as *const i32).read_unaligned();
                    let av = _mm256_set1_epi32(quad);
                    for (p, c) in row.iter_mut().enumerate() {
                        let pairs = _mm256_maddubs_epi16(av, bv[p]);
                        *c = _mm256_add_epi32(*c, _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (p, c) in row.iter().enumerate() {
                    _mm256_storeu_si256(tile.add(r * super::F32_TILE_COLS + p * 8) as *mut __m256i, *c);
                }
            }
        }
    }

    pub fn i16_tile(mr: usize, np: usize) -> Option<I16Tile> {
        if !is_x86_feature_detected!("avx2") {
            return None;
        }
        let f: I16Tile = shape!(itile, mr, np);
        Some(f)
    }

    /// # Safety
    /// `a` holds `mr` rows of `2 * kp` i16 `lda` apart, `b` holds `np` panels of `kp * 16`
    /// bytes, `tile` holds `mr * 16` i32, and the CPU has AVX2 (checked by [`i16_tile`]).
    #[target_feature(enable = "avx2")]
    unsafe extern "C" fn itile<const MR: usize, const NP: usize>(
        kp: i64,
        a: *const i16,
        lda: i64,
        b: *const i8,
        tile: *mut i32,
    ) {
        let (kp, lda) = (kp.max(0) as usize, lda as usize);
        let mut acc = [[_mm256_setzero_si256(); NP]; MR];
        // SAFETY (whole body): the caller's contract above bounds every offset.
        unsafe {
            let b1 = b.add(kp * 16 * (NP - 1));
            for j in 0..kp {
                // 8 columns x 2 k as 16 i16: vpmovsxbw from memory.
                let bv = [
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(j * 16) as *const __m128i)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(b1.add(j * 16) as *const __m128i)),
                ];
                for (r, row) in acc.iter_mut().enumerate() {
                    // The pair a[2j], a[2j + 1] as one i32 broadcast to every lane.
                    let pair = (a.add(r * lda + 2 * j) as *const i32).read_unaligned();
                    let av = _mm256_set1_epi32(pair);
                    for (p, c) in row.iter_mut().enumerate() {
                        *c = _mm256_add_epi32(*c, _mm256_madd_epi16(av, bv[p]));
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (p, c) in row.iter().enumerate() {
                    _mm256_storeu_si256(tile.add(r * super::F32_TILE_COLS + p * 8) as *mut __m256i, *c);
                }
            }
        }
    }

    pub fn f32_tile(mr: usize, np: usize, acc: bool) -> Option<F32Tile> {
        f32_tile_of(has_avx512(), mr, np, acc)
    }

    pub fn f32_tile_of(avx512: bool, mr: usize, np: usize, acc: bool) -> Option<F32Tile> {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) || (avx512 && !has_avx512()) {
            return None;
        }
        // One panel stays 256-bit: a 512-bit register would be half empty.
        let f: F32Tile = match (avx512 && np == 2, acc) {
            (true, false) => rows!(ztile_set, mr),
            (true, true) => rows!(ztile_acc, mr),
            (false, false) => shape!(tile_set, mr, np),
            (false, true) => shape!(tile_acc, mr, np),
        };
        Some(f)
    }

    /// # Safety
    /// As [`ztile`].
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe extern "C" fn ztile_set<const MR: usize>(k: i64, a: *const f32, lda: i64, b: *const f32, t: *mut f32) {
        // SAFETY: the caller's contract is ztile's.
        unsafe { ztile::<MR, false>(k, a, lda, b, t) }
    }

    /// # Safety
    /// As [`ztile`].
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe extern "C" fn ztile_acc<const MR: usize>(k: i64, a: *const f32, lda: i64, b: *const f32, t: *mut f32) {
        // SAFETY: the caller's contract is ztile's.
        unsafe { ztile::<MR, true>(k, a, lda, b, t) }
    }

    /// The two-panel f32 tile in 512-bit registers: each k's two 8-float panel rows are joined
    /// into one register (`vinsertf32x8`), and even and odd k accumulate into separate registers
    /// (12 in flight for 6 rows, enough to cover the FMA latency on two ports), added at the end.
    ///
    /// # Safety
    /// `a` holds `mr` rows of `k` floats `lda` apart, `b` holds 2 panels of `k * 8` floats,
    /// `tile` holds `mr * 16` floats, and the CPU has AVX512F and AVX512DQ (checked by
    /// [`f32_tile_of`]). With `ACC` the tile's previous contents are added to.
    #[target_feature(enable = "avx512f,avx512dq")]
    #[inline]
    unsafe fn ztile<const MR: usize, const ACC: bool>(k: i64, a: *const f32, lda: i64, b: *const f32, tile: *mut f32) {
        let (k, lda) = (k.max(0) as usize, lda as usize);
        let mut even = [_mm512_setzero_ps(); MR];
        let mut odd = [_mm512_setzero_ps(); MR];
        // SAFETY (whole body): the caller's contract above bounds every offset.
        unsafe {
            if ACC {
                for (r, e) in even.iter_mut().enumerate() {
                    *e = _mm512_loadu_ps(tile.add(r * super::F32_TILE_COLS));
                }
            }
            let b1 = b.add(k * 8);
            let mut kk = 0;
            while kk + 2 <= k {
                let b0 = _mm512_insertf32x8::<1>(
                    _mm512_castps256_ps512(_mm256_loadu_ps(b.add(kk * 8))),
                    _mm256_loadu_ps(b1.add(kk * 8)),
                );
                let b1v = _mm512_insertf32x8::<1>(
                    _mm512_castps256_ps512(_mm256_loadu_ps(b.add(kk * 8 + 8))),
                    _mm256_loadu_ps(b1.add(kk * 8 + 8)),
                );
                for r in 0..MR {
                    let ar = a.add(r * lda + kk);
                    even[r] = _mm512_fmadd_ps(_mm512_set1_ps(*ar), b0, even[r]);
                    odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(*ar.add(1)), b1v, odd[r]);
                }
                kk += 2;
            }
            if kk < k {
                let b0 = _mm512_insertf32x8::<1>(
                    _mm512_castps256_ps512(_mm256_loadu_ps(b.add(kk * 8))),
                    _mm256_loadu_ps(b1.add(kk * 8)),
                );
                for (r, e) in even.iter_mut().enumerate() {
                    *e = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * lda + kk)), b0, *e);
                }
            }
            for r in 0..MR {
                _mm512_storeu_ps(tile.add(r * super::F32_TILE_COLS), _mm512_add_ps(even[r], odd[r]));
            }
        }
    }

    pub fn vnni_tile(mr: usize, np: usize) -> Option<VnniTile> {
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl"))
        {
            return None;
        }
        let f: VnniTile = shape!(vtile, mr, np);
        Some(f)
    }

    /// The exact u8 x i8 tile: `vpdpbusd` on the raw bytes, two panels joined into one 512-bit
    /// register (one panel: 256-bit), even and odd groups of 4 k in separate accumulators.
    ///
    /// # Safety
    /// `a` holds `mr` rows of `4 * kq` bytes `lda` apart, `b` holds `np` panels of `kq * 32`
    /// bytes, `tile` holds `mr * 16` i32, and the CPU has AVX512F, AVX512-VNNI and AVX512VL
    /// (checked by [`vnni_tile`]).
    #[target_feature(enable = "avx512f,avx512vnni,avx512vl")]
    unsafe extern "C" fn vtile<const MR: usize, const NP: usize>(
        kq: i64,
        a: *const u8,
        lda: i64,
        b: *const i8,
        tile: *mut i32,
    ) {
        let (kq, lda) = (kq.max(0) as usize, lda as usize);
        // SAFETY (whole body): the caller's contract above bounds every offset.
        unsafe {
            let quad = |r: usize, j: usize| (a.add(r * lda + 4 * j) as *const i32).read_unaligned();
            if NP == 2 {
                let mut even = [_mm512_setzero_si512(); MR];
                let mut odd = [_mm512_setzero_si512(); MR];
                let b1 = b.add(kq * 32);
                let join = |j: usize| {
                    _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_loadu_si256(b.add(j * 32) as *const __m256i)),
                        _mm256_loadu_si256(b1.add(j * 32) as *const __m256i),
                    )
                };
                let mut j = 0;
                while j + 2 <= kq {
                    let (w0, w1) = (join(j), join(j + 1));
                    for r in 0..MR {
                        even[r] = _mm512_dpbusd_epi32(even[r], _mm512_set1_epi32(quad(r, j)), w0);
                        odd[r] = _mm512_dpbusd_epi32(odd[r], _mm512_set1_epi32(quad(r, j + 1)), w1);
                    }
                    j += 2;
                }
                if j < kq {
                    let w0 = join(j);
                    for (r, e) in even.iter_mut().enumerate() {
                        *e = _mm512_dpbusd_epi32(*e, _mm512_set1_epi32(quad(r, j)), w0);
                    }
                }
                for r in 0..MR {
                    let v = _mm512_add_epi32(even[r], odd[r]);
                    _mm512_storeu_si512(tile.add(r * super::F32_TILE_COLS) as *mut __m512i, v);
                }
            } else {
                let mut even = [_mm256_setzero_si256(); MR];
                let mut odd = [_mm256_setzero_si256(); MR];
                let mut j = 0;
                while j + 2 <= kq {
                    let w0 = _mm256_loadu_si256(b.add(j * 32) as *const __m256i);
                    let w1 = _mm256_loadu_si256(b.add(j * 32 + 32) as *const __m256i);
                    for r in 0..MR {
                        even[r] = _mm256_dpbusd_epi32(even[r], _mm256_set1_epi32(quad(r, j)), w0);
                        odd[r] = _mm256_dpbusd_epi32(odd[r], _mm256_set1_epi32(quad(r, j + 1)), w1);
                    }
                    j += 2;
                }
                if j < kq {
                    let w0 = _mm256_loadu_si256(b.add(j * 32) as *const __m256i);
                    for (r, e) in even.iter_mut().enumerate() {
                        *e = _mm256_dpbusd_epi32(*e, _mm256_set1_epi32(quad(r, j)), w0);
                    }
                }
                for r in 0..MR {
                    let v = _mm256_add_epi32(even[r], odd[r]);
                    _mm256_storeu_si256(tile.add(r * super::F32_TILE_COLS) as *mut __m256i, v);
                }
            }
        }
    }

    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx2,fma")]
    unsafe extern "C" fn tile_set<const MR: usize, const NP: usize>(
        k: i64,
        a: *const f32,
        lda: i64,
        b: *const f32,
        t: *mut f32,
    ) {
        // SAFETY: the caller's contract is tile's.
        unsafe { tile::<MR, NP, false>(k, a, lda, b, t) }
    }

    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx2,fma")]
    unsafe extern "C" fn tile_acc<const MR: usize, const NP: usize>(
        k: i64,
        a: *const f32,
        lda: i64,
        b: *const f32,
        t: *mut f32,
    ) {
        // SAFETY: the caller's contract is tile's.
        unsafe { tile::<MR, NP, true>(k, a, lda, b, t) }
    }

    /// # Safety
    /// `a` holds `mr` rows of `k` floats `lda` apart, `b` holds `np` panels of `k * 8` floats,
    /// `tile` holds `mr * 16` floats, and the CPU has AVX2 and FMA (checked by [`f32_tile`]).
    /// With `ACC` the tile's previous contents are the accumulators' starting values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const MR: usize, const NP: usize, const ACC: bool>(
        k: i64,
        a: *const f32,
        lda: i64,
        b: *const f32,
        tile: *mut f32,
    ) {
        let (k, lda) = (k.max(0) as usize, lda as usize);
        let mut acc = [[_mm256_setzero_ps(); NP]; MR];
        // SAFETY (whole body): the caller's contract above bounds every offset.
        unsafe {
            if ACC {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (p, c) in row.iter_mut().enumerate() {
                        *c = _mm256_loadu_ps(tile.add(r * super::F32_TILE_COLS + p * 8));
                    }
                }
            }
            let b1 = b.add(k * 8);
            for kk in 0..k {
                let bv = [_mm256_loadu_ps(b.add(kk * 8)), _mm256_loadu_ps(b1.add(kk * 8 * (NP - 1)))];
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * lda + kk));
                    for (p, c) in row.iter_mut().enumerate() {
                        *c = _mm256_fmadd_ps(av, bv[p], *c);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (p, c) in row.iter().enumerate() {
                    _mm256_storeu_ps(tile.add(r * super::F32_TILE_COLS + p * 8), *c);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::{F32Tile, I16Tile, QGemv, QUnpack, SatTile, VnniTile};

    pub fn has_avx512() -> bool {
        false
    }

    pub fn f32_tile_of(_avx512: bool, _mr: usize, _np: usize, _acc: bool) -> Option<F32Tile> {
        None
    }

    pub fn vnni_tile(_mr: usize, _np: usize) -> Option<VnniTile> {
        None
    }

    pub fn q_gemv() -> Option<QGemv> {
        None
    }

    pub fn q_unpack() -> Option<QUnpack> {
        None
    }

    pub fn q_gemv_of(_avx512: bool) -> Option<QGemv> {
        None
    }

    pub fn sat_tile(_mr: usize, _np: usize) -> Option<SatTile> {
        None
    }

    pub fn i16_tile(_mr: usize, _np: usize) -> Option<I16Tile> {
        None
    }

    pub fn f32_tile(_mr: usize, _np: usize, _acc: bool) -> Option<F32Tile> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile shape of both families (AVX2, AVX-512) against a plain loop over the same
    /// packed layout; an odd `k` exercises the 512-bit tile's last single step.
    #[test]
    fn tiles_match_a_plain_product() {
        let k = 37;
        let Some(_) = f32_tile(Ukernels::Auto, 1, 1, false) else {
            eprintln!("no f32 tile on this host; nothing to check");
            return;
        };
        let mut families = 0;
        for (avx512, np, mr) in
            [false, true].into_iter().flat_map(|w| (1..=2).flat_map(move |np| (1..=F32_MR).map(move |mr| (w, np, mr))))
        {
            let Some(f) = f32_tile_of(avx512, mr, np, false) else {
                assert!(avx512, "the AVX2 tile exists where f32_tile found one");
                continue;
            };
            families |= 1 << u8::from(avx512);
            let lda = k + 3;
            let a: Vec<f32> = (0..mr * lda).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..np * k * 8).map(|i| ((i * 5) % 11) as f32 * 0.5 - 2.0).collect();
            let mut tile = vec![f32::NAN; mr * F32_TILE_COLS];
            // SAFETY: the buffers have the sizes the contract asks for.
            unsafe { f(k as i64, a.as_ptr(), lda as i64, b.as_ptr(), tile.as_mut_ptr()) };
            for r in 0..mr {
                for c in 0..8 * np {
                    let want: f32 = (0..k).map(|kk| a[r * lda + kk] * b[(c / 8) * k * 8 + kk * 8 + c % 8]).sum();
                    let got = tile[r * F32_TILE_COLS + c];
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "mr {mr} np {np} [{r}][{c}]: {got} vs {want}"
                    );
                }
            }
            assert!(Ukernels::Off != Ukernels::Auto && f32_tile(Ukernels::Off, mr, np, false).is_none());
            // The adding twin, from the first result: twice the product.
            let add = f32_tile_of(avx512, mr, np, true).expect("adding tile beside the setting one");
            let once = tile.clone();
            // SAFETY: as above.
            unsafe { add(k as i64, a.as_ptr(), lda as i64, b.as_ptr(), tile.as_mut_ptr()) };
            for r in 0..mr {
                for c in 0..8 * np {
                    let (got, want) = (tile[r * F32_TILE_COLS + c], 2.0 * once[r * F32_TILE_COLS + c]);
                    assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "acc mr {mr} np {np} [{r}][{c}]");
                }
            }
        }
        eprintln!("f32 tile families checked: avx2 {}, avx512 {}", families & 1 != 0, families & 2 != 0);
        assert_eq!(families & 2 != 0, imp::has_avx512(), "f32_tile_of(true) exists exactly on AVX-512 hosts");
    }

    /// The 512-bit one-row routine gives the AVX2 one's bits for 8-bit codes, every form (zero
    /// points, offsets, f16 and f32 parameters), one and two panels, blocks with an odd last
    /// k, and a partial last block.
    #[test]
    fn wide_one_row_products_have_the_same_bits() {
        let (Some(narrow), Some(wide)) = (q_gemv_of(false), q_gemv_of(true)) else {
            eprintln!("no 512-bit one-row routine on this host; nothing to check");
            return;
        };
        for (k, bs) in [(64usize, 32usize), (37, 9), (40, 40), (5, 2)] {
            for form_bits in [0, ZERO, OFFSET, ZERO | OFFSET] {
                for half in [false, true] {
                    for np in 1..=2usize {
                        let lanes = 1 + usize::from(form_bits & ZERO != 0) + usize::from(form_bits & OFFSET != 0);
                        let blocks = k.div_ceil(bs);
                        let ldc = k * 8 + 8;
                        let codes: Vec<u8> = (0..np * ldc).map(|i| (i * 97 % 256) as u8).collect();
                        let ldp = blocks * lanes * 8 + 3;
                        let vals: Vec<f32> = (0..np * ldp).map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.125).collect();
                        let par: Vec<u8> = if half {
                            vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
                        } else {
                            vals.iter().flat_map(|v| v.to_le_bytes()).collect()
                        };
                        let a: Vec<f32> = (0..k).map(|i| ((i * 7 % 19) as f32 - 9.0) * 0.37).collect();
                        let form = 8 | form_bits | if half { HALF } else { 0 };
                        let run = |f: QGemv| {
                            let mut acc = vec![f32::NAN; np * 8];
                            // SAFETY: codes, parameters, a and acc have the sizes the contract asks for.
                            unsafe {
                                f(
                                    k as i64,
                                    bs as i64,
                                    np as i64,
                                    codes.as_ptr(),
                                    ldc as i64,
                                    par.as_ptr(),
                                    ldp as i64,
                                    a.as_ptr(),
                                    acc.as_mut_ptr(),
                                    form,
                                )
                            };
                            acc
                        };
                        let (x, y) = (run(narrow), run(wide));
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&x), bits(&y), "k {k} bs {bs} form {form:#x} np {np}: {x:?} vs {y:?}");
                        assert!(x.iter().all(|v| v.is_finite()), "every column written");
                    }
                }
            }
        }
    }

    /// Every AVX512-VNNI tile shape against a plain loop, with the extreme products (255 x
    /// -128 in every place of some groups of 4, which `vpmaddubsw` would saturate): exact.
    #[test]
    fn vnni_tiles_are_exact() {
        let kq = 11;
        for np in 1..=2 {
            for mr in 1..=F32_MR {
                let Some(f) = vnni_tile(Ukernels::Auto, mr, np) else {
                    eprintln!("no AVX512-VNNI tile on this host; nothing to check");
                    return;
                };
                let lda = 4 * kq + 3;
                let a: Vec<u8> = (0..mr * lda).map(|i| if i % 8 < 4 { 255 } else { (i * 37 % 256) as u8 }).collect();
                let b: Vec<i8> =
                    (0..np * kq * 32).map(|i| if i % 64 < 32 { -128 } else { ((i * 29) % 256) as u8 as i8 }).collect();
                let mut tile = vec![i32::MIN; mr * F32_TILE_COLS];
                // SAFETY: the buffers have the sizes the contract asks for.
                unsafe { f(kq as i64, a.as_ptr(), lda as i64, b.as_ptr(), tile.as_mut_ptr()) };
                for r in 0..mr {
                    for c in 0..8 * np {
                        let want: i64 = (0..4 * kq)
                            .map(|k| {
                                a[r * lda + k] as i64 * b[(c / 8) * kq * 32 + (k / 4) * 32 + (c % 8) * 4 + k % 4] as i64
                            })
                            .sum();
                        assert_eq!(tile[r * F32_TILE_COLS + c] as i64, want, "mr {mr} np {np} [{r}][{c}]");
                    }
                }
                assert!(vnni_tile(Ukernels::Off, mr, np).is_none());
            }
        }
    }

    /// Every integer tile shape against a plain loop, with extreme 8-bit values (exact).
    #[test]
    fn integer_tiles_are_exact() {
        let kp = 29;
        for np in 1..=2 {
            for mr in 1..=F32_MR {
                let Some(f) = i16_tile(Ukernels::Auto, mr, np) else {
                    eprintln!("no integer tile on this host; nothing to check");
                    return;
                };
                let lda = 2 * kp + 4;
                let a: Vec<i16> =
                    (0..mr * lda).map(|i| if i % 3 == 0 { 255 } else { ((i * 37) % 256) as i16 }).collect();
                let b: Vec<i8> =
                    (0..np * kp * 16).map(|i| if i % 5 == 0 { -128 } else { ((i * 29) % 256) as u8 as i8 }).collect();
                let mut tile = vec![i32::MIN; mr * F32_TILE_COLS];
                // SAFETY: the buffers have the sizes the contract asks for.
                unsafe { f(kp as i64, a.as_ptr(), lda as i64, b.as_ptr(), tile.as_mut_ptr()) };
                for r in 0..mr {
                    for c in 0..8 * np {
                        let want: i64 = (0..2 * kp)
                            .map(|k| {
                                let w = b[(c / 8) * kp * 16 + (k / 2) * 16 + (c % 8) * 2 + k % 2];
                                a[r * lda + k] as i64 * w as i64
                            })
                            .sum();
                        assert_eq!(tile[r * F32_TILE_COLS + c] as i64, want, "mr {mr} np {np} [{r}][{c}]");
                    }
                }
                assert!(i16_tile(Ukernels::Off, mr, np).is_none());
            }
        }
    }

    /// Every pair-saturating tile shape against the definition, with pairs that saturate both
    /// ways and pairs that do not.
    #[test]
    fn saturating_tiles_match_their_definition() {
        let kq = 11;
        let sat16 = |v: i64| v.clamp(i16::MIN as i64, i16::MAX as i64);
        for np in 1..=2 {
            for mr in 1..=F32_MR {
                let Some(f) = sat_tile(Ukernels::Auto, mr, np) else {
                    eprintln!("no saturating tile on this host; nothing to check");
                    return;
                };
                let lda = 4 * kq + 3;
                let a: Vec<u8> = (0..mr * lda).map(|i| if i % 4 < 2 { 255 } else { (i * 37 % 256) as u8 }).collect();
                let b: Vec<i8> = (0..np * kq * 32)
                    .map(|i| [127, -128, 127, 5][i % 4].min(((i * 29) % 256) as u8 as i8 | 64))
                    .collect();
                let mut tile = vec![i32::MIN; mr * F32_TILE_COLS];
                // SAFETY: the buffers have the sizes the contract asks for.
                unsafe { f(kq as i64, a.as_ptr(), lda as i64, b.as_ptr(), tile.as_mut_ptr()) };
                let mut saturated = 0;
                for r in 0..mr {
                    for c in 0..8 * np {
                        let w = |k: usize| b[(c / 8) * kq * 32 + (k / 4) * 32 + (c % 8) * 4 + k % 4] as i64;
                        let want: i64 = (0..2 * kq)
                            .map(|j| {
                                let raw =
                                    a[r * lda + 2 * j] as i64 * w(2 * j) + a[r * lda + 2 * j + 1] as i64 * w(2 * j + 1);
                                saturated += usize::from(sat16(raw) != raw);
                                sat16(raw)
                            })
                            .sum();
                        assert_eq!(tile[r * F32_TILE_COLS + c] as i64, want, "mr {mr} np {np} [{r}][{c}]");
                    }
                }
                assert!(saturated > 0, "the data must make some pairs saturate");
                assert!(sat_tile(Ukernels::Off, mr, np).is_none());
            }
        }
    }
}
