//! Fusion: recognises activation and attention patterns as written by exporters and adds the
//! fused IR op to the matched class.
//!
//! Each pattern is matched in stages through marker nodes, so the orders an exporter may write
//! are covered by a few small rules instead of every combination:
//! - exact GELU `0.5 * x * (1 + erf(x / sqrt(2)))`: `1 + erf(x / sqrt(2))` (or `erf(x * 1/sqrt(2))`,
//!   either operand order of the add and mul) is marked `gelu-erf-factor x`; then any product tree
//!   of `x`, the factor and `0.5` is `gelu x`;
//! - tanh GELU `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))` with `pow x, 3`:
//!   `x + 0.044715 * x^3` is marked `gelu-tanh-poly x`, `1 + tanh(c * poly)` is marked
//!   `gelu-tanh-factor x`, and the same product trees give `gelu_tanh x`;
//! - SiLU `x * sigmoid(x)` either way round;
//! - attention `softmax(q @ transpose(k') * s + mask) @ v` (scale by `div c`, `mul c` or none;
//!   mask on either side of the add or none; softmax over the last dim): `q @ transpose(x, p)`
//!   with `p` swapping the last two dims of some perm `p'` is marked `attn-qk q, k` with
//!   `k = transpose(x, p')` (or `x` itself when `p'` is the identity), then `attn-scores`,
//!   `attn-probs`, and finally the IR `attention q, k, v[, mask] {scale, causal = false}` (f32 only).
//! Constants are matched by value with a relative tolerance of 1e-4. Every fused op is unioned
//! only when its inferred type equals the matched class's type.

use super::{add_attr, attr, is_f32, is_scalar_const, pattern, splat, splat_near, ty, var, Build, Rule};
use crate::saturate::lang::{Attr, TensorEGraph, TensorLang};
use egg::{rewrite, Id, Subst};

pub fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    rules.extend(gelu_erf_factor());
    rules.extend(gelu_tanh_factor());
    rules.extend(product_rules("gelu", "gelu-erf-factor", TensorLang::Gelu));
    rules.extend(product_rules("gelu-tanh", "gelu-tanh-factor", TensorLang::GeluTanh));
    rules.extend(silu());
    rules.extend(attention());
    rules
}

/// Every binary product tree of three factors (12 shapes).
fn products(a: &str, b: &str, c: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (x, y, z) in [(a, b, c), (a, c, b), (b, c, a)] {
        // `x * y` inner, `z` outer.
        out.push(format!("(mul (mul {x} {y}) {z})"));
        out.push(format!("(mul (mul {y} {x}) {z})"));
        out.push(format!("(mul {z} (mul {x} {y}))"));
        out.push(format!("(mul {z} (mul {y} {x}))"));
    }
    out
}

fn condition_ok(eg: &TensorEGraph, s: &Subst, checks: &[(&str, f64)]) -> bool {
    checks.iter().all(|(v, target)| splat_near(eg, s[var(v)], *target))
}

/// `1 + erf(x / sqrt(2))` in its written forms -> `gelu-erf-factor x`.
fn gelu_erf_factor() -> Vec<Rule> {
    let erfs = [
        ("(erf (div ?x ?s))", ("?s", std::f64::consts::SQRT_2)),
        ("(erf (mul ?x ?s))", ("?s", std::f64::consts::FRAC_1_SQRT_2)),
        ("(erf (mul ?s ?x))", ("?s", std::f64::consts::FRAC_1_SQRT_2)),
    ];
    let mut rules = Vec::new();
    for (i, (erf, check)) in erfs.into_iter().enumerate() {
        for (j, text) in [format!("(add {erf} ?one)"), format!("(add ?one {erf})")].into_iter().enumerate() {
            let name = format!("gelu-erf-factor-{}", i * 2 + j);
            let x = var("?x");
            rules.push(rewrite!(name; { pattern(&text) } => { Build::marker(move |eg, _, s| {
                condition_ok(eg, s, &[check, ("?one", 1.0)]).then(|| eg.add(TensorLang::GeluErfFactor(s[x])))
            }) }));
        }
    }
    rules
}

/// `x + 0.044715 * x^3` -> `gelu-tanh-poly x`; `1 + tanh(sqrt(2/pi) * poly)` -> `gelu-tanh-factor x`.
fn gelu_tanh_factor() -> Vec<Rule> {
    let x = var("?x");
    let mut rules = Vec::new();
    let cubes = ["(mul (pow ?x ?three) ?c)", "(mul ?c (pow ?x ?three))"];
    let mut k = 0;
    for cube in cubes {
        for text in [format!("(add ?x {cube})"), format!("(add {cube} ?x)")] {
            let name = format!("gelu-tanh-poly-{k}");
            k += 1;
            rules.push(rewrite!(name; { pattern(&text) } => { Build::marker(move |eg, _, s| {
                condition_ok(eg, s, &[("?three", 3.0), ("?c", 0.044715)]).then(|| eg.add(TensorLang::GeluTanhPoly(s[x])))
            }) }));
        }
    }
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let mut k = 0;
    for t in ["(tanh (mul (gelu-tanh-poly ?x) ?c))", "(tanh (mul ?c (gelu-tanh-poly ?x)))"] {
        for text in [format!("(add {t} ?one)"), format!("(add ?one {t})")] {
            let name = format!("gelu-tanh-factor-{k}");
            k += 1;
            rules.push(rewrite!(name; { pattern(&text) } => { Build::marker(move |eg, _, s| {
                condition_ok(eg, s, &[("?c", sqrt_2_over_pi), ("?one", 1.0)])
                    .then(|| eg.add(TensorLang::GeluTanhFactor(s[x])))
            }) }));
        }
    }
    rules
}

/// `x * factor(x) * 0.5` in any product tree -> `fused x`.
fn product_rules(prefix: &str, factor: &str, fused: fn(Id) -> TensorLang) -> Vec<Rule> {
    let x = var("?x");
    products("?x", &format!("({factor} ?x)"), "?h")
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let name = format!("{prefix}-{i}");
            rewrite!(name; { pattern(&text) } => { Build::op(move |eg, _, s| {
                condition_ok(eg, s, &[("?h", 0.5)]).then(|| eg.add(fused(s[x])))
            }) })
        })
        .collect()
}

fn silu() -> Vec<Rule> {
    let x = var("?x");
    let build = move || Build::op(move |eg, _, s| Some(eg.add(TensorLang::Silu(s[x]))));
    vec![
        rewrite!("silu"; "(mul ?x (sigmoid ?x))" => { build() }),
        rewrite!("silu-left"; "(mul (sigmoid ?x) ?x)" => { build() }),
    ]
}

fn attention() -> Vec<Rule> {
    let (q, k, p, x, c, sc, m, a, v) =
        (var("?q"), var("?k"), var("?p"), var("?x"), var("?c"), var("?s"), var("?m"), var("?a"), var("?v"));
    // `q @ transpose(x, p)`: `p` is `p'` with its last two entries swapped, `k = transpose(x, p')`.
    let qk = Build::marker(move |eg, _, s| {
        let Some(Attr::Perm(perm)) = attr(eg, s[p]) else { return None };
        if perm.len() < 2 || ty(eg, s[q])?.rank() < 2 {
            return None;
        }
        let mut inner = perm.clone();
        let r = inner.len();
        inner.swap(r - 1, r - 2);
        let kid = if inner == (0..r).collect::<Vec<_>>() {
            s[x]
        } else {
            let a = add_attr(eg, Attr::Perm(inner));
            eg.add(TensorLang::Transpose([a, s[x]]))
        };
        Some(eg.add(TensorLang::AttnQk([s[q], kid])))
    });
    let scaled = |invert: bool| {
        Build::marker(move |eg, _, s| {
            if !is_scalar_const(eg, s[c]) {
                return None;
            }
            let value = splat(eg, s[c])?;
            let scale = if invert { 1.0 / value } else { value };
            if !scale.is_finite() {
                return None;
            }
            let a = add_attr(eg, Attr::Scale(scale.to_bits()));
            Some(eg.add(TensorLang::AttnScores([a, s[q], s[k]])))
        })
    };
    let unscaled = Build::marker(move |eg, _, s| {
        let a = add_attr(eg, Attr::Scale(1f32.to_bits()));
        Some(eg.add(TensorLang::AttnScores([a, s[q], s[k]])))
    });
    // Softmax over the last dim of the scores.
    let last_axis = move |eg: &TensorEGraph, root: Id, s: &Subst| {
        let rank = ty(eg, root).map(|t| t.rank() as i64);
        matches!((attr(eg, s[a]), rank), (Some(Attr::Axis(ax)), Some(r)) if ax == -1 || ax == r - 1)
    };
    let probs = move |masked: bool| {
        Build::marker(move |eg, root, s| {
            if !last_axis(eg, root, s) {
                return None;
            }
            Some(if masked {
                if !is_f32(eg, s[m]) {
                    return None;
                }
                eg.add(TensorLang::AttnProbs([s[sc], s[q], s[k], s[m]]))
            } else {
                eg.add(TensorLang::AttnProbsNoMask([s[sc], s[q], s[k]]))
            })
        })
    };
    let fuse = move |masked: bool| {
        Build::op(move |eg, _, s| {
            let all_f32 = [q, k, v].iter().all(|&w| is_f32(eg, s[w])) && (!masked || is_f32(eg, s[m]));
            let ranks_ok = [q, k, v].iter().all(|&w| ty(eg, s[w]).is_some_and(|t| t.rank() >= 2));
            if !all_f32 || !ranks_ok {
                return None;
            }
            Some(if masked {
                eg.add(TensorLang::Attention([s[sc], s[q], s[k], s[v], s[m]]))
            } else {
                eg.add(TensorLang::AttentionNoMask([s[sc], s[q], s[k], s[v]]))
            })
        })
    };
    vec![
        rewrite!("attn-qk"; "(matmul ?q (transpose ?p ?x))" => { qk }),
        rewrite!("attn-scale-div"; "(div (attn-qk ?q ?k) ?c)" => { scaled(true) }),
        rewrite!("attn-scale-mul"; "(mul (attn-qk ?q ?k) ?c)" => { scaled(false) }),
        rewrite!("attn-scale-mul-left"; "(mul ?c (attn-qk ?q ?k))" => { scaled(false) }),
        rewrite!("attn-scale-none"; "(attn-qk ?q ?k)" => { unscaled }),
        rewrite!("attn-probs-mask"; "(softmax ?a (add (attn-scores ?s ?q ?k) ?m))" => { probs(true) }),
        rewrite!("attn-probs-mask-left"; "(softmax ?a (add ?m (attn-scores ?s ?q ?k)))" => { probs(true) }),
        rewrite!("attn-probs"; "(softmax ?a (attn-scores ?s ?q ?k))" => { probs(false) }),
        rewrite!("attention"; "(matmul (attn-probs ?s ?q ?k ?m) ?v)" => { fuse(true) }),
        rewrite!("attention-nomask"; "(matmul (attn-probs ?s ?q ?k) ?v)" => { fuse(false) }),
    ]
}
