//! Norms: LayerNorm and softmax as exporters write them out, recognised as the IR ops.
//!
//! - LayerNorm `(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma [+ beta]`, with
//!   `reduce_mean` over trailing dims with `keepdims`: `x - mean(x)` is marked `ln-centered`;
//!   the rest is RMSNorm's normalisation of the centered value, so the RMSNorm markers of
//!   `fusion.rs` (`rms-ms`, `rms-normed`: `d * d` or `pow(d, 2)`; `rsqrt`, `reciprocal(sqrt)`,
//!   `1 / sqrt` or `d / sqrt`) are reused: `rms-normed(ln-centered x) * gamma [+ beta]` (either
//!   operand order) is the IR `layer_norm x, gamma[, beta] {axis, epsilon}` when both
//!   reductions cover the same dims (f32 only).
//! - softmax `exp(x - reduce_max(x)) / reduce_sum(exp(x - reduce_max(x)))` with both reductions
//!   over the same single axis with `keepdims` -> `softmax x {axis}`; without the max
//!   subtraction, `exp(x) / reduce_sum(exp(x))` -> `softmax x {axis}` too (the IR op subtracts
//!   the max, so it is the same function, and safer: the written-out form overflows for
//!   `x > 88`).
//!
//! Both are exact up to float rounding (a few ulps): LayerNorm's `rsqrt` forms round
//! differently from the IR op's division, softmax sums differently shifted terms.

use super::fusion::trailing_axis;
use super::{add_attr, attr, is_f32, ty, var, Build, Rule};
use crate::saturate::lang::{Attr, TensorEGraph, TensorLang};
use egg::{rewrite, Id, Subst, Var};

pub fn rules() -> Vec<Rule> {
    let mut rules = layer_norm();
    rules.extend(softmax());
    rules
}

fn layer_norm() -> Vec<Rule> {
    let (x, r, n, g, b) = (var("?x"), var("?r"), var("?n"), var("?g"), var("?b"));
    let centered = Build::marker(move |eg, _, s| {
        let xt = ty(eg, s[x])?;
        if xt.dtype != tessera_ir::DType::F32 {
            return None;
        }
        trailing_axis(&attr(eg, s[r])?, xt.rank())?;
        Some(eg.add(TensorLang::LnCentered([s[r], s[x]])))
    });
    // The variance's reduction (`?n`, from `rms-ms`) covers the mean's dims (`?r`).
    let same_dims = move |eg: &TensorEGraph, s: &Subst| {
        let rank = ty(eg, s[x]).map(|t| t.rank());
        match (attr(eg, s[r]), attr(eg, s[n]), rank) {
            (Some(mean), Some(Attr::Norm(axis, _)), Some(rank)) => trailing_axis(&mean, rank) == Some(axis),
            _ => false,
        }
    };
    let fuse = move |bias: bool| {
        Build::op(move |eg, _, s| {
            if !same_dims(eg, s) || !is_f32(eg, s[g]) || (bias && !is_f32(eg, s[b])) {
                return None;
            }
            Some(if bias {
                eg.add(TensorLang::LayerNorm([s[n], s[x], s[g], s[b]]))
            } else {
                eg.add(TensorLang::LayerNormNoBias([s[n], s[x], s[g]]))
            })
        })
    };
    let normed = "(rms-normed ?n (ln-centered ?r ?x))";
    vec![
        rewrite!("ln-centered"; "(sub ?x (reduce_mean ?r ?x))" => { centered }),
        rewrite!("layer-norm-nobias"; { super::pattern(&format!("(mul {normed} ?g)")) } => { fuse(false) }),
        rewrite!("layer-norm-nobias-left"; { super::pattern(&format!("(mul ?g {normed})")) } => { fuse(false) }),
        rewrite!("layer-norm"; { super::pattern(&format!("(add (mul {normed} ?g) ?b)")) } => { fuse(true) }),
        rewrite!("layer-norm-left"; { super::pattern(&format!("(add (mul ?g {normed}) ?b)")) } => { fuse(true) }),
        rewrite!("layer-norm-bias-left"; { super::pattern(&format!("(add ?b (mul {normed} ?g))")) } => { fuse(true) }),
        rewrite!("layer-norm-both-left"; { super::pattern(&format!("(add ?b (mul ?g {normed}))")) } => { fuse(true) }),
    ]
}

/// The one axis of a `reduce_* {axes = [a], keepdims = true}`.
fn single_axis(eg: &TensorEGraph, id: Id) -> Option<i64> {
    match attr(eg, id)? {
        Attr::Mean(axes, true) if axes.len() == 1 => Some(axes[0]),
        _ => None,
    }
}

/// `softmax x {axis}` when the reductions `reductions` are all over one and the same axis of `x`.
fn softmax_of(reductions: &'static [&'static str]) -> Build {
    let x = var("?x");
    let rs: Vec<Var> = reductions.iter().map(|r| var(r)).collect();
    Build::op(move |eg, _, s| {
        let rank = ty(eg, s[x])?.rank() as i64;
        if !is_f32(eg, s[x]) || rank == 0 {
            return None;
        }
        let norm = |a: i64| if a < 0 { a + rank } else { a };
        let axes: Vec<i64> = rs.iter().map(|&v| single_axis(eg, s[v])).collect::<Option<_>>()?;
        let axis = *axes.first()?;
        if !(0..rank).contains(&norm(axis)) || axes.iter().any(|&a| norm(a) != norm(axis)) {
            return None;
        }
        let a = add_attr(eg, Attr::Axis(axis));
        Some(eg.add(TensorLang::Softmax([a, s[x]])))
    })
}

fn softmax() -> Vec<Rule> {
    let shifted = "(exp (sub ?x (reduce_max ?m ?x)))";
    vec![
        rewrite!("softmax"; { super::pattern(&format!("(div {shifted} (reduce_sum ?s {shifted}))")) }
            => { softmax_of(&["?s", "?m"]) }),
        rewrite!("softmax-unshifted"; "(div (exp ?x) (reduce_sum ?s (exp ?x)))" => { softmax_of(&["?s"]) }),
    ]
}
