//! Whole-row routines written with `std::arch` (AVX-512, 16 lanes) and called from JIT code,
//! as the inner tiles of [`crate::ukernel`] are: a softmax row for attention, the whole of
//! `dynamic_quantize`, and a GELU over each tile a product kernel stored (the epilogue's last
//! step, which in Cranelift's 4 lanes cost as much as the product itself). Both compute what the Cranelift code beside them computes (the same exp
//! polynomial, the same division and rounding), sixteen lanes at a time; the softmax sums in a
//! different order, so its results differ from the Cranelift code's by rounding only, while the
//! quantized bytes are identical.
//!
//! Chosen when the kernel is compiled, only with [`crate::Ukernels::Auto`] on a host with
//! AVX512F; elsewhere the kernels keep their Cranelift code.

use crate::Ukernels;

/// `softmax_row(row, n, mask) -> inv`: for `j < n`, `x_j = row[j] (+ mask[j] when mask is not
/// null)`, `m = max x`, `row[j] = exp(x_j - m)` (the polynomial of `math::exp_nonpositive`),
/// and the result is `1 / sum row` (0 when `m` is -inf: a row whose every key is masked).
pub type SoftmaxRow = unsafe extern "C" fn(*mut f32, i64, *const f32) -> f32;

/// `dynamic_quantize(x, n, y, scale, zero)`: ONNX DynamicQuantizeLinear over `n` floats, as the
/// interpreter defines it: the range of the values and 0 (NaN skipped), the scale and zero point
/// from [`crate::host`]'s `dq_scale`/`dq_zero`, then `y = saturate(round_half_even(x / scale) +
/// zero)` as u8 (NaN quantizes to the zero point).
pub type DynamicQuantize = unsafe extern "C" fn(*const f32, i64, *mut u8, *mut f32, *mut u8);

/// `gelu_tile(p, rows, cols, ld)`: `p[r * ld + c] = gelu(p[r * ld + c])` for `r < rows`, `c <
/// cols`, in place: the erf form of `math::gelu` (the same rational erf, clamp and rounding
/// steps), which a product kernel applies to each tile it stored instead of in its 4-lane
/// epilogue.
pub type GeluTile = unsafe extern "C" fn(*mut f32, i64, i64, i64);

/// The GELU tile routine, if this host has it and `mode` allows it.
pub fn gelu_tile(mode: Ukernels) -> Option<GeluTile> {
    (mode == Ukernels::Auto).then(imp::gelu_tile).flatten()
}

/// The softmax row routine, if this host has it and `mode` allows it.
pub fn softmax_row(mode: Ukernels) -> Option<SoftmaxRow> {
    (mode == Ukernels::Auto).then(imp::softmax_row).flatten()
}

/// The dynamic quantization routine, if this host has it and `mode` allows it.
pub fn dynamic_quantize(mode: Ukernels) -> Option<DynamicQuantize> {
    (mode == Ukernels::Auto).then(imp::dynamic_quantize).flatten()
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{DynamicQuantize, GeluTile, SoftmaxRow};
    use std::arch::x86_64::*;
    use tessera_passes::approx::{ERF_CLAMP, ERF_P, ERF_Q, EXP_LN2_HI, EXP_LN2_LO, EXP_MIN_NORMAL, EXP_P, EXP_ROUND};

    pub fn gelu_tile() -> Option<GeluTile> {
        has().then_some(gelu as GeluTile)
    }

    /// Horner's rule in `s` over coefficients from the constant term up, as `math::erf`.
    #[target_feature(enable = "avx512f")]
    fn horner(c: &[f32], s: __m512) -> __m512 {
        let mut acc = _mm512_set1_ps(c[c.len() - 1]);
        for &k in c[..c.len() - 1].iter().rev() {
            acc = _mm512_fmadd_ps(acc, s, _mm512_set1_ps(k));
        }
        acc
    }

    /// `math::gelu`, lane for lane: `0.5 x (1 + erf(x / sqrt 2))`, erf clamped by compare and
    /// select (NaN stays NaN).
    #[target_feature(enable = "avx512f")]
    fn gelu_lanes(x: __m512) -> __m512 {
        let xs = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let (hi, lo) = (_mm512_set1_ps(ERF_CLAMP), _mm512_set1_ps(-ERF_CLAMP));
        let xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(xs, hi), xs, hi);
        let xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(xc, lo), xc, lo);
        let s = _mm512_mul_ps(xc, xc);
        let e = _mm512_div_ps(_mm512_mul_ps(xc, horner(&ERF_P, s)), horner(&ERF_Q, s));
        _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5)), _mm512_add_ps(e, _mm512_set1_ps(1.0)))
    }

    /// # Safety
    /// `p` holds `rows` rows of `cols` floats `ld` apart, and the CPU has AVX512F (checked by
    /// [`gelu_tile`]).
    #[target_feature(enable = "avx512f")]
    unsafe extern "C" fn gelu(p: *mut f32, rows: i64, cols: i64, ld: i64) {
        let (rows, cols, ld) = (rows.max(0) as usize, cols.max(0) as usize, ld as usize);
        // SAFETY (whole body): every access is to lanes below cols of a row below rows.
        unsafe {
            for r in 0..rows {
                let row = p.add(r * ld);
                let mut j = 0;
                while j < cols {
                    let k = lanes(j, cols);
                    let x = _mm512_maskz_loadu_ps(k, row.add(j));
                    _mm512_mask_storeu_ps(row.add(j), k, gelu_lanes(x));
                    j += 16;
                }
            }
        }
    }

    fn has() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    pub fn softmax_row() -> Option<SoftmaxRow> {
        has().then_some(softmax as SoftmaxRow)
    }

    pub fn dynamic_quantize() -> Option<DynamicQuantize> {
        has().then_some(quantize as DynamicQuantize)
    }

    /// Lanes `j..j + 16` that are below `n`.
    fn lanes(j: usize, n: usize) -> __mmask16 {
        let left = n - j;
        if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as __mmask16
        }
    }

    /// `math::exp_nonpositive`, lane for lane.
    #[target_feature(enable = "avx512f")]
    fn exp_nonpositive(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(EXP_MIN_NORMAL);
        let xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo), x, lo);
        let magic = _mm512_set1_ps(EXP_ROUND);
        let tm = _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)), magic);
        let n = _mm512_sub_ps(tm, magic);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let ni = _mm512_sub_epi32(_mm512_castps_si512(tm), _mm512_castps_si512(magic));
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(e))
    }

    /// # Safety
    /// `row` holds `n` floats, `mask` is null or holds `n` floats, and the CPU has AVX512F
    /// (checked by [`softmax_row`]).
    #[target_feature(enable = "avx512f")]
    unsafe extern "C" fn softmax(row: *mut f32, n: i64, mask: *const f32) -> f32 {
        let n = n.max(0) as usize;
        // SAFETY (whole body): every access is to lanes below n, per the contract.
        unsafe {
            let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut mx = ninf;
            let mut j = 0;
            while j < n {
                let k = lanes(j, n);
                let mut x = _mm512_mask_loadu_ps(ninf, k, row.add(j));
                if !mask.is_null() {
                    x = _mm512_mask_add_ps(x, k, x, _mm512_maskz_loadu_ps(k, mask.add(j)));
                    _mm512_mask_storeu_ps(row.add(j), k, x);
                }
                mx = _mm512_max_ps(x, mx);
                j += 16;
            }
            let m = _mm512_reduce_max_ps(mx);
            let mv = _mm512_set1_ps(m);
            let mut sum = _mm512_setzero_ps();
            let mut j = 0;
            while j < n {
                let k = lanes(j, n);
                let x = _mm512_maskz_loadu_ps(k, row.add(j));
                let e = exp_nonpositive(_mm512_sub_ps(x, mv));
                _mm512_mask_storeu_ps(row.add(j), k, e);
                sum = _mm512_mask_add_ps(sum, k, sum, e);
                j += 16;
            }
            if m == f32::NEG_INFINITY {
                0.0
            } else {
                1.0 / _mm512_reduce_add_ps(sum)
            }
        }
    }

    /// # Safety
    /// `x` holds `n` floats, `y` `n` bytes, `scale` one float, `zero` one byte, and the CPU has
    /// AVX512F (checked by [`dynamic_quantize`]).
    #[target_feature(enable = "avx512f")]
    unsafe extern "C" fn quantize(x: *const f32, n: i64, y: *mut u8, scale: *mut f32, zero: *mut u8) {
        let n = n.max(0) as usize;
        // SAFETY (whole body): every access is to lanes below n, per the contract.
        unsafe {
            // The range of the values and 0; `min`/`max` return their second operand when the
            // first is NaN, so NaN is skipped, and a -0.0 never replaces the starting 0.0.
            let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut j = 0;
            while j < n {
                let v = _mm512_maskz_loadu_ps(lanes(j, n), x.add(j));
                lo = _mm512_min_ps(v, lo);
                hi = _mm512_max_ps(v, hi);
                j += 16;
            }
            let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
            let s = crate::host::host_dq_scale(lo, hi);
            let z = crate::host::host_dq_zero(lo, s);
            *scale = s;
            *zero = z as u8;
            let (sv, zv) = (_mm512_set1_ps(s), _mm512_set1_ps(z as f32));
            let (zero_f, top) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
            let mut j = 0;
            while j < n {
                let k = lanes(j, n);
                let v = _mm512_maskz_loadu_ps(k, x.add(j));
                let q = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_div_ps(v, sv));
                let q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(q, q), q, zero_f);
                let q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, zv), zero_f), top);
                _mm512_mask_cvtepi32_storeu_epi8(y.add(j) as *mut i8, k, _mm512_cvtps_epi32(q));
                j += 16;
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::{DynamicQuantize, GeluTile, SoftmaxRow};

    pub fn gelu_tile() -> Option<GeluTile> {
        None
    }

    pub fn softmax_row() -> Option<SoftmaxRow> {
        None
    }

    pub fn dynamic_quantize() -> Option<DynamicQuantize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routine against the definition: masks (one key masked to -inf), lengths around the
    /// 16-lane step, a row whose every key is masked.
    #[test]
    fn softmax_rows_match_the_definition() {
        let Some(f) = softmax_row(Ukernels::Auto) else {
            eprintln!("no AVX-512 softmax row on this host; nothing to check");
            return;
        };
        assert!(softmax_row(Ukernels::Off).is_none());
        for n in [1usize, 5, 16, 17, 31, 128, 130] {
            for masked in [false, true] {
                let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 * 0.7 - 8.0).collect();
                let mask: Vec<f32> =
                    (0..n).map(|i| if i % 7 == 3 { f32::NEG_INFINITY } else { -(i as f32) * 0.01 }).collect();
                let mut row = x.clone();
                let mp = if masked { mask.as_ptr() } else { std::ptr::null() };
                // SAFETY: n floats in row and mask.
                let inv = unsafe { f(row.as_mut_ptr(), n as i64, mp) };
                let xs: Vec<f64> = (0..n).map(|i| x[i] as f64 + if masked { mask[i] as f64 } else { 0.0 }).collect();
                let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = xs.iter().map(|v| (v - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                assert!(
                    ((inv as f64) - 1.0 / sum).abs() <= 1e-5 / sum,
                    "n {n} masked {masked}: {inv} vs {}",
                    1.0 / sum
                );
                for i in 0..n {
                    assert!(
                        (row[i] as f64 - e[i]).abs() <= 1e-6,
                        "n {n} masked {masked} [{i}]: {} vs {}",
                        row[i],
                        e[i]
                    );
                }
            }
        }
        let mut dead = [1.0f32; 20];
        let all = [f32::NEG_INFINITY; 20];
        // SAFETY: 20 floats in each.
        let inv = unsafe { f(dead.as_mut_ptr(), 20, all.as_ptr()) };
        assert_eq!(inv, 0.0, "a row with every key masked sums to nothing");
    }

    /// The GELU over a sub-tile (3 rows of 21 columns in rows of 40, values in [-6, 6)): the
    /// definition inside, nothing outside; NaN stays NaN.
    #[test]
    fn gelu_tiles_match_the_definition_and_stay_inside() {
        let Some(f) = gelu_tile(Ukernels::Auto) else {
            eprintln!("no AVX-512 GELU on this host; nothing to check");
            return;
        };
        let (rows, cols, ld) = (3usize, 21usize, 40usize);
        let x: Vec<f32> = (0..4 * ld).map(|i| if i == 5 { f32::NAN } else { (i as f32 - 60.0) * 0.1 }).collect();
        let mut y = x.clone();
        // SAFETY: 3 rows of 21 floats, 40 apart, inside y.
        unsafe { f(y.as_mut_ptr(), rows as i64, cols as i64, ld as i64) };
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let (r, c) = (i / ld, i % ld);
            if r >= rows || c >= cols {
                assert_eq!(a.to_bits(), b.to_bits(), "[{r}][{c}] outside the tile changed");
            } else if a.is_nan() {
                assert!(b.is_nan(), "NaN stays NaN");
            } else {
                let t = a as f64;
                let want = 0.5 * t * (1.0 + erf(t / std::f64::consts::SQRT_2));
                assert!(
                    (b as f64 - want).abs() <= 2e-6 * want.abs().max(1.0),
                    "[{r}][{c}] gelu({a}) = {b}, want {want}"
                );
            }
        }
    }

    /// The error function by its Taylor series: accurate to about 1e-9 for the |x| < 4.3 of
    /// the test above (cancellation grows with |x|).
    fn erf(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) && n < 400.0 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// The routine against the interpreter's `dynamic_quantize`: identical bytes, scale and zero
    /// point, for lengths around the step, NaN, ties and all-positive and all-negative data.
    #[test]
    fn dynamic_quantize_matches_the_interpreter() {
        use tessera_ir::{DType, Graph, Op, Shape, Tensor, TensorType};
        let Some(f) = dynamic_quantize(Ukernels::Auto) else {
            eprintln!("no AVX-512 dynamic_quantize on this host; nothing to check");
            return;
        };
        let cases: Vec<Vec<f32>> = vec![
            (0..37).map(|i| (i as f32 - 12.0) * 0.31).collect(),
            (0..64).map(|i| (i as f32) * 0.5 + 0.25).collect(),
            (0..16).map(|i| -(i as f32) * 1.5 - 0.5).collect(),
            (0..19).map(|i| if i == 4 { f32::NAN } else { (i as f32 - 9.0) * 2.0 }).collect(),
            (0..300).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0).collect(),
            vec![0.0; 5],
        ];
        for x in cases {
            let n = x.len();
            let mut g = Graph::new("dq");
            let xv = g.add_input("x", TensorType::new(DType::F32, Shape::from_static(&[n])));
            let node = g.add_node(
                Op::DynamicQuantize,
                vec![xv],
                vec![
                    TensorType::new(DType::U8, Shape::from_static(&[n])),
                    TensorType::new(DType::F32, Shape::from_static(&[])),
                    TensorType::new(DType::U8, Shape::from_static(&[])),
                ],
            );
            for (i, name) in ["y", "scale", "zero"].into_iter().enumerate() {
                let o = g.node(node).outputs[i];
                g.add_output(name, o);
            }
            let t = Tensor::from_f32(DType::F32, &[n], x.clone()).expect("tensor");
            let want = tessera_ir::interp::run(&g, vec![t]).expect("interpreter");
            let (mut y, mut s, mut z) = (vec![0u8; n], 0f32, 0u8);
            // SAFETY: n floats, n bytes, one scale, one zero point.
            unsafe { f(x.as_ptr(), n as i64, y.as_mut_ptr(), &mut s, &mut z) };
            let wy: Vec<u8> = want[0].as_int().expect("u8").iter().map(|&v| v as u8).collect();
            assert_eq!(y, wy, "bytes of {x:?}");
            let ws = want[1].as_float().expect("scale").iter().next().copied().expect("one");
            assert_eq!(s.to_bits(), ws.to_bits(), "scale of {x:?}");
            assert_eq!(z as i64, *want[2].as_int().expect("zero").iter().next().expect("one"), "zero point of {x:?}");
        }
    }
}
