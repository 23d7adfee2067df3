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
