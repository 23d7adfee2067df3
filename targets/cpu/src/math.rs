//! Vector math on f32x4 for the hot float functions (exp, erf, tanh and what is built on them),
//! and host functions for the rare ones (log, sin, cos, pow, fmod), which kernels call lane by
//! lane. Checked against the interpreter's libm by `tests/kernels.rs`
//! (`vector_math_matches_libm`).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

use crate::fx::{Fx, F4};

/// The shared middle of the exp forms: for `xc` (already clamped), `t = xc log2 e` rounded to
/// `n` by adding and removing 1.5 * 2^23 (the sum's low mantissa bits are n, returned as i32
/// lanes), and `e^(xc - n ln 2)` by Cephes' polynomial; the caller scales by 2^n.
fn exp_reduced(fx: &mut Fx, xc: Value) -> (Value, Value) {
    use tessera_passes::approx::{EXP_LN2_HI, EXP_LN2_LO, EXP_P, EXP_ROUND};
    let log2e = fx.fsplat(std::f32::consts::LOG2_E);
    let t = fx.b.ins().fmul(xc, log2e);
    let magic = fx.fsplat(EXP_ROUND);
    let tm = fx.b.ins().fadd(t, magic);
    let n = fx.b.ins().fsub(tm, magic);
    let c1 = fx.fsplat(EXP_LN2_HI);
    let c2 = fx.fsplat(EXP_LN2_LO);
    let nn = fx.b.ins().fneg(n);
    let r = fx.b.ins().fma(nn, c1, xc);
    let r = fx.b.ins().fma(nn, c2, r);
    let mut p = fx.fsplat(EXP_P[0]);
    for &c in &EXP_P[1..] {
        let cv = fx.fsplat(c);
        p = fx.b.ins().fma(p, r, cv);
    }
    let r2 = fx.b.ins().fmul(r, r);
    let one = fx.fsplat(1.0);
    let y = fx.b.ins().fadd(r, one);
    let y = fx.b.ins().fma(p, r2, y);
    let tmi = fx.vcast(types::I32X4, tm);
    let mi = fx.vcast(types::I32X4, magic);
    let ni = fx.b.ins().isub(tmi, mi);
    (y, ni)
}

/// `exp(x)` lane-wise (Cephes' single-precision polynomial after a range reduction by ln 2).
pub fn exp(fx: &mut Fx, x: Value) -> Value {
    let xc = clamp(fx, x, tessera_passes::approx::EXP_MIN_NORMAL, 88.376_26);
    let (y, ni) = exp_reduced(fx, xc);
    // 2^n through the exponent bits, in two halves so n = 128 does not overflow the field.
    let half = fx.b.ins().sshr_imm_s(ni, 1);
    let rest = fx.b.ins().isub(ni, half);
    let bias = fx.b.ins().iconst(types::I32, 127);
    let bias = fx.b.ins().splat(types::I32X4, bias);
    let e1 = fx.b.ins().iadd(half, bias);
    let e1 = fx.b.ins().ishl_imm_s(e1, 23);
    let e2 = fx.b.ins().iadd(rest, bias);
    let e2 = fx.b.ins().ishl_imm_s(e2, 23);
    let s1 = fx.vcast(F4, e1);
    let s2 = fx.vcast(F4, e2);
    let y = fx.b.ins().fmul(y, s1);
    let y = fx.b.ins().fmul(y, s2);
    // Beyond the clamp: +inf above, 0 below (x itself keeps NaN, which the clamp propagated).
    let inf = fx.fsplat(f32::INFINITY);
    let big = fx.fsplat(88.722_84);
    let over = fx.vfcmp(FloatCC::GreaterThan, x, big);
    let y = fx.vselect(over, inf, y);
    let tiny = fx.fsplat(-103.972_08);
    let zero = fx.fsplat(0.0);
    let under = fx.vfcmp(FloatCC::LessThan, x, tiny);
    fx.vselect(under, zero, y)
}

/// `exp(x)` for `x <= 0` (a softmax's `x - max`): no overflow to handle, and below -87.3 (where
/// exp is under f32's smallest normal) the result is exp(-87.3) ~ 1.2e-38 instead of a denormal
/// or 0, which no softmax sum can tell apart. NaN stays NaN. About two thirds of [`exp`]'s
/// instructions.
pub fn exp_nonpositive(fx: &mut Fx, x: Value) -> Value {
    let lo = fx.fsplat(tessera_passes::approx::EXP_MIN_NORMAL);
    let below = fx.vfcmp(FloatCC::LessThan, x, lo);
    let xc = fx.vselect(below, lo, x);
    let (y, ni) = exp_reduced(fx, xc);
    // n is in [-126, 0]: one exponent field holds 2^n.
    let bias = fx.b.ins().iconst(types::I32, 127);
    let bias = fx.b.ins().splat(types::I32X4, bias);
    let e = fx.b.ins().iadd(ni, bias);
    let e = fx.b.ins().ishl_imm_s(e, 23);
    let s = fx.vcast(F4, e);
    fx.b.ins().fmul(y, s)
}

/// `erf(x)`: the shared rational fit ([`tessera_passes::approx::ERF_P`]) on `x` clamped to
/// [-4, 4]. No exp, one division: about a fifth of the instructions of the exp-based forms.
pub fn erf(fx: &mut Fx, x: Value) -> Value {
    use tessera_passes::approx::{ERF_CLAMP, ERF_P as P, ERF_Q as Q};
    let xc = clamp(fx, x, -ERF_CLAMP, ERF_CLAMP);
    let s = fx.b.ins().fmul(xc, xc);
    let horner = |fx: &mut Fx, c: &[f32]| {
        let mut acc = fx.fsplat(c[c.len() - 1]);
        for &k in c[..c.len() - 1].iter().rev() {
            let kv = fx.fsplat(k);
            acc = fx.b.ins().fma(acc, s, kv);
        }
        acc
    };
    let p = horner(fx, &P);
    let q = horner(fx, &Q);
    let xp = fx.b.ins().fmul(xc, p);
    fx.b.ins().fdiv(xp, q)
}

/// `x` limited to `[lo, hi]` by compare and select (two instructions a side on x64, where
/// `fmin`/`fmax` with their NaN rules take seven); NaN stays NaN.
fn clamp(fx: &mut Fx, x: Value, lo: f32, hi: f32) -> Value {
    let h = fx.fsplat(hi);
    let above = fx.vfcmp(FloatCC::GreaterThan, x, h);
    let x = fx.vselect(above, h, x);
    let l = fx.fsplat(lo);
    let below = fx.vfcmp(FloatCC::LessThan, x, l);
    fx.vselect(below, l, x)
}

/// `tanh(x) = 1 - 2 / (exp(2x) + 1)`, with a short odd polynomial near 0 where that loses digits.
pub fn tanh(fx: &mut Fx, x: Value) -> Value {
    let xc = clamp(fx, x, -9.0, 9.0);
    let two = fx.fsplat(2.0);
    let x2 = fx.b.ins().fmul(xc, two);
    let e = exp(fx, x2);
    let one = fx.fsplat(1.0);
    let d = fx.b.ins().fadd(e, one);
    let q = fx.b.ins().fdiv(two, d);
    let big = fx.b.ins().fsub(one, q);
    // |x| < 0.0625: x - x^3/3 + 2x^5/15 (error below 1e-9 there).
    let xx = fx.b.ins().fmul(xc, xc);
    let c5 = fx.fsplat(2.0 / 15.0);
    let c3 = fx.fsplat(-1.0 / 3.0);
    let p = fx.b.ins().fma(c5, xx, c3);
    let p = fx.b.ins().fmul(p, xx);
    let small = fx.b.ins().fma(p, xc, xc);
    let ax = fx.b.ins().fabs(xc);
    let cut = fx.fsplat(0.0625);
    let is_small = fx.vfcmp(FloatCC::LessThan, ax, cut);
    fx.vselect(is_small, small, big)
}

/// `1 / (1 + exp(-x))`.
pub fn sigmoid(fx: &mut Fx, x: Value) -> Value {
    let nx = fx.b.ins().fneg(x);
    let e = exp(fx, nx);
    let one = fx.fsplat(1.0);
    let d = fx.b.ins().fadd(one, e);
    fx.b.ins().fdiv(one, d)
}

/// `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu(fx: &mut Fx, x: Value) -> Value {
    let k = fx.fsplat(std::f32::consts::FRAC_1_SQRT_2);
    let xs = fx.b.ins().fmul(x, k);
    let e = erf(fx, xs);
    half_x_one_plus(fx, x, e)
}

/// `0.5 x (1 + t)`, the tail both GELU forms share.
fn half_x_one_plus(fx: &mut Fx, x: Value, t: Value) -> Value {
    let one = fx.fsplat(1.0);
    let t1 = fx.b.ins().fadd(t, one);
    let half = fx.fsplat(0.5);
    let hx = fx.b.ins().fmul(x, half);
    fx.b.ins().fmul(hx, t1)
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh(fx: &mut Fx, x: Value) -> Value {
    let c = fx.fsplat(0.044715);
    let x2 = fx.b.ins().fmul(x, x);
    let x3 = fx.b.ins().fmul(x2, x);
    let inner = fx.b.ins().fma(c, x3, x);
    let k = fx.fsplat(0.797_884_6);
    let inner = fx.b.ins().fmul(inner, k);
    let t = tanh(fx, inner);
    half_x_one_plus(fx, x, t)
}
