//! Fits of float functions that every target evaluates the same way (the CPU target with
//! Cranelift f32x4 code, the GPU target in SPIR-V), so their results agree with each other.
//! Not a pass: it lives here because every target depends on `passes` and never on another.

/// `erf(x) = x P(x^2) / Q(x^2)` on `x` clamped to `[ERF_CLAMP, -ERF_CLAMP]` (erf(4) is 1 within
/// 2e-8): a rational fit of degrees 6 and 5 in `x^2` made for Tessera (weighted least squares on
/// 8000 points, then Lawson reweighting towards minimax), 1.5e-9 in exact arithmetic and 3.4e-7
/// in f32. Coefficients from the constant term up; evaluate each by Horner's rule in `x^2`.
pub const ERF_P: [f32; 7] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    0.184_709_83,
    0.054_332_275,
    0.003_839_476,
    3.826_808_5e-4,
    4.780_241_4e-6,
    -1.366_517e-8,
];

/// The denominator of [`ERF_P`]'s fit.
pub const ERF_Q: [f32; 6] = [1.0, 0.497_028_38, 0.113_825_87, 0.015_453_369, 1.309_553e-3, 6.400_647e-5];

/// The clamp of [`ERF_P`]'s fit: `x` is limited to `[-ERF_CLAMP, ERF_CLAMP]` first.
pub const ERF_CLAMP: f32 = 4.0;

/// `exp(x)` (Cephes' single-precision form): `n = round(x log2 e)` by adding and subtracting
/// [`EXP_ROUND`], `r = x - n ln 2` with ln 2 split in [`EXP_LN2_HI`] + [`EXP_LN2_LO`], then
/// `exp(r) = 1 + r + r^2 P(r)` with [`EXP_P`] (highest degree first, Horner's rule), times `2^n`
/// from the exponent bits. The CPU target's Cranelift code and its AVX-512 routines both use
/// these, so they agree.
pub const EXP_P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// `1.5 * 2^23`: adding then subtracting it rounds an f32 of magnitude below 2^22 to an integer
/// (ties to even), and the sum's low mantissa bits hold that integer.
pub const EXP_ROUND: f32 = 12_582_912.0;

/// The high part of ln 2 (exact in few bits, so `n * EXP_LN2_HI` is exact for the `n` exp sees).
pub const EXP_LN2_HI: f32 = 0.693_359_4;

/// ln 2 - [`EXP_LN2_HI`].
pub const EXP_LN2_LO: f32 = -2.121_944_4e-4;

/// The least `x` whose `exp(x)` is a normal f32 (about 1.2e-38); a softmax's `exp(x - max)`
/// clamps to it.
pub const EXP_MIN_NORMAL: f32 = -87.336_54;

#[cfg(test)]
mod tests {
    #[test]
    fn the_erf_fit_is_within_4e7_of_libm() {
        let erf = |x: f32| {
            let x = x.clamp(-super::ERF_CLAMP, super::ERF_CLAMP);
            let s = x * x;
            let h = |c: &[f32]| c.iter().rev().fold(0f32, |acc, &k| acc.mul_add(s, k));
            x * h(&super::ERF_P) / h(&super::ERF_Q)
        };
        let worst =
            (-6000..=6000).map(|i| i as f32 / 1000.0).map(|x| (erf(x) - libm::erff(x)).abs()).fold(0f32, f32::max);
        assert!(worst < 4e-7, "{worst}");
    }
}
