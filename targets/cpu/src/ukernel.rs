//! Optional ISA-specific inner tiles, written in Rust with `std::arch` and called from JIT code
//! (as IREE calls its microkernels). Cranelift's vectors are 128-bit and its x64 backend has
//! only the `vfmadd213` form (the accumulator is never the tied operand, so every FMA needs a
//! register copy); on an AVX2 host a 256-bit tile does twice the work per instruction. Cranelift
//! still emits everything around the tile: the loops over panels and rows, the thread split, the
//! fused epilogue and the stores.
//!
//! A tile is chosen when the kernel is compiled, from the CPU features detected then, and only
//! when [`Ukernels::Auto`] is asked for; [`Ukernels::Off`] keeps every instruction Cranelift's.

/// Whether compiled kernels may call the `std::arch` inner tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ukernels {
    /// Use them when the host has the features they need (AVX2 and FMA on x86-64).
    #[default]
    Auto,
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
/// allows it.
pub fn f32_tile(mode: Ukernels, mr: usize, np: usize) -> Option<F32Tile> {
    if mode == Ukernels::Off || !(1..=F32_MR).contains(&mr) || !(1..=2).contains(&np) {
        return None;
    }
    imp::f32_tile(mr, np)
}

/// Which tile family this host would use (for reports), or None.
pub fn describe(mode: Ukernels) -> Option<&'static str> {
    f32_tile(mode, F32_MR, 2).map(|_| "avx2+fma 6x16 f32")
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::F32Tile;
    use std::arch::x86_64::*;

    pub fn f32_tile(mr: usize, np: usize) -> Option<F32Tile> {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return None;
        }
        let f: F32Tile = match (mr, np) {
            (1, 1) => tile::<1, 1>,
            (2, 1) => tile::<2, 1>,
            (3, 1) => tile::<3, 1>,
            (4, 1) => tile::<4, 1>,
            (5, 1) => tile::<5, 1>,
            (6, 1) => tile::<6, 1>,
            (1, 2) => tile::<1, 2>,
            (2, 2) => tile::<2, 2>,
            (3, 2) => tile::<3, 2>,
            (4, 2) => tile::<4, 2>,
            (5, 2) => tile::<5, 2>,
            (6, 2) => tile::<6, 2>,
            _ => return None,
        };
        Some(f)
    }

    /// # Safety
    /// `a` holds `mr` rows of `k` floats `lda` apart, `b` holds `np` panels of `k * 8` floats,
    /// `tile` holds `mr * 16` floats, and the CPU has AVX2 and FMA (checked by [`f32_tile`]).
    #[target_feature(enable = "avx2,fma")]
    unsafe extern "C" fn tile<const MR: usize, const NP: usize>(
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
    use super::F32Tile;

    pub fn f32_tile(_mr: usize, _np: usize) -> Option<F32Tile> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile shape against a plain loop over the same packed layout.
    #[test]
    fn tiles_match_a_plain_product() {
        let k = 37;
        for np in 1..=2 {
            for mr in 1..=F32_MR {
                let Some(f) = f32_tile(Ukernels::Auto, mr, np) else {
                    eprintln!("no f32 tile on this host; nothing to check");
                    return;
                };
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
                assert!(Ukernels::Off != Ukernels::Auto && f32_tile(Ukernels::Off, mr, np).is_none());
            }
        }
    }
}
