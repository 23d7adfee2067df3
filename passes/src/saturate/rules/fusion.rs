//! Fusion: recognises activation and attention patterns as written by exporters and adds the
//! fused IR op to the matched class.
//!
//! Each pattern is matched in stages through marker nodes, so the orders an exporter may write
//! are covered by a few small rules instead of every combination:
//! - exact GELU `0.5 * x * (1 + erf(x / sqrt(2)))`: `1 + erf(x / sqrt(2))` (or `erf(x * 1/sqrt(2))`,
//!   either operand order of the add and mul) is marked `gelu-erf-factor x`; then any product tree
//!   of `x`, the factor and `0.5` is `gelu x`;
//! - tanh GELU `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))` with `pow x, 3` or
//!   `x * x * x` (marked `cube x`):
//!   `x + 0.044715 * x^3` is marked `gelu-tanh-poly x`, `1 + tanh(c * poly)` is marked
//!   `gelu-tanh-factor x`, and the same product trees give `gelu_tanh x`;
//! - SiLU `x * sigmoid(x)` either way round;
//! - attention `softmax(q @ transpose(k') * s + mask) @ v` (scale by `div c`, `mul c` or none;
//!   mask on either side of the add or none; softmax over the last dim): `q @ transpose(x, p)`
//!   with `p` swapping the last two dims of some perm `p'` is marked `attn-qk q, k` with
//!   `k = transpose(x, p')` (or `x` itself when `p'` is the identity), then `attn-scores`,
//!   `attn-probs`, and finally the IR `attention q, k, v[, mask] {scale, causal = false}` (f32 only).
//! - RMSNorm `x * rsqrt(mean(x^2) + eps) * w` (`pow x, 2` or `x * x`; `rsqrt`, `reciprocal(sqrt)`,
//!   `1 / sqrt` or `x / sqrt(..)`; `w` on either side), with `reduce_mean` over trailing dims with
//!   `keepdims`: `mean(x^2) + eps` is marked `rms-ms`, `x / sqrt(..)` is marked `rms-normed`, and
//!   `rms-normed * w` is the IR `rms_norm x, w {axis, epsilon}` (f32 only).
//!
//! - gated FFN (LLaMA's SwiGLU, Gemma's GeGLU) `matmul(mul(act(matmul(x, w1)), matmul(x, w3)), w2)`
//!   with `act` one of `silu`, `gelu_tanh` or `gelu` (as fused by the rules above; the product
//!   either way round): there is no IR op for it, so it becomes the e-node `gated_ffn` that
//!   extraction writes as a `kernel` region named `silu_gated_ffn`, `gelu_gated_ffn` (tanh GELU)
//!   or `gelu_erf_gated_ffn`, whose body is the five ops (`convert.rs`); f32 only. Its cost is
//!   the ops' FLOPs with only the operands and the result moved, so it wins over the open form.
//!
//! Constants are matched by value with a relative tolerance of 1e-4. Every fused op is unioned
//! only when its inferred type agrees with the matched class's type (see `Build`).

use super::{add_attr, attr, is_f32, is_scalar_const, pattern, splat, splat_near, ty, var, Build, Rule};
use crate::saturate::lang::{gated_ffn_name, Attr, TensorEGraph, TensorLang};
use egg::{rewrite, Id, Subst};
use tessera_ir::UnaryOp;

pub fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    rules.extend(gelu_erf_factor());
    rules.extend(gelu_tanh_factor());
    rules.extend(product_rules("gelu", "gelu-erf-factor", TensorLang::Gelu));
    rules.extend(product_rules("gelu-tanh", "gelu-tanh-factor", TensorLang::GeluTanh));
    rules.extend(silu());
    rules.extend(attention());
    rules.extend(rms_norm());
    rules.extend(gated_ffn());
    rules
}

/// `matmul(mul(act(x @ w1), x @ w3), w2)` -> `gated_ffn {act's kernel} x, w1, w3, w2`.
fn gated_ffn() -> Vec<Rule> {
    let (x, w1, w3, w2) = (var("?x"), var("?w1"), var("?w3"), var("?w2"));
    let mut rules = Vec::new();
    for (act, op) in [("silu", UnaryOp::Silu), ("gelu_tanh", UnaryOp::GeluTanh), ("gelu", UnaryOp::Gelu)] {
        let name = gated_ffn_name(op).expect("a gated FFN kernel");
        let gate = format!("({act} (matmul ?x ?w1))");
        let texts = [
            format!("(matmul (mul {gate} (matmul ?x ?w3)) ?w2)"),
            format!("(matmul (mul (matmul ?x ?w3) {gate}) ?w2)"),
        ];
        for (i, text) in texts.into_iter().enumerate() {
            let rule_name = format!("{}-gated-ffn{}", act.replace('_', "-"), if i == 0 { "" } else { "-left" });
            rules.push(rewrite!(rule_name; { pattern(&text) } => { Build::op(move |eg, _, s| {
                if ![x, w1, w3, w2].iter().all(|&v| is_f32(eg, s[v])) {
                    return None;
                }
                let k = add_attr(eg, Attr::Kernel(name.to_string()));
                Some(eg.add(TensorLang::GatedFfn([k, s[x], s[w1], s[w3], s[w2]])))
            }) }));
        }
    }
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
    rules.push(rewrite!("cube"; "(mul (mul ?x ?x) ?x)" => { Build::marker(move |eg, _, s| Some(eg.add(TensorLang::Cube(s[x])))) }));
    rules.push(rewrite!("cube-right"; "(mul ?x (mul ?x ?x))" => { Build::marker(move |eg, _, s| Some(eg.add(TensorLang::Cube(s[x])))) }));
    let mut k = 0;
    for (cube, is_pow) in [("(pow ?x ?three)", true), ("(cube ?x)", false)] {
        for scaled in [format!("(mul {cube} ?c)"), format!("(mul ?c {cube})")] {
            for text in [format!("(add ?x {scaled})"), format!("(add {scaled} ?x)")] {
                let name = format!("gelu-tanh-poly-{k}");
                k += 1;
                let checks: &'static [(&'static str, f64)] =
                    if is_pow { &[("?three", 3.0), ("?c", 0.044715)] } else { &[("?c", 0.044715)] };
                rules.push(rewrite!(name; { pattern(&text) } => { Build::marker(move |eg, _, s| {
                    condition_ok(eg, s, checks).then(|| eg.add(TensorLang::GeluTanhPoly(s[x])))
                }) }));
            }
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

/// `reduce_mean {axes, keepdims = true}` over the trailing dims of a rank-`rank` tensor: the
/// first reduced dim, counted from the end (`-1` for the last dim alone).
pub fn trailing_axis(a: &Attr, rank: usize) -> Option<i64> {
    let Attr::Mean(axes, true) = a else { return None };
    let mut norm: Vec<i64> = if axes.is_empty() {
        (0..rank as i64).collect()
    } else {
        axes.iter().map(|&x| if x < 0 { x + rank as i64 } else { x }).collect()
    };
    norm.sort_unstable();
    norm.dedup();
    let start = *norm.first()?;
    let trailing =
        norm.iter().enumerate().all(|(i, &x)| x == start + i as i64) && norm.last() == Some(&(rank as i64 - 1));
    (start >= 0 && trailing).then_some(start - rank as i64)
}

fn rms_norm() -> Vec<Rule> {
    let (x, r, e, w, n) = (var("?x"), var("?r"), var("?e"), var("?w"), var("?n"));
    // `mean(x^2) + eps` -> `rms-ms {axis, eps} x`.
    let mean_square = move |square_is_pow: bool| {
        Build::marker(move |eg, _, s| {
            if square_is_pow && !splat_near(eg, s[var("?two")], 2.0) {
                return None;
            }
            let xt = ty(eg, s[x])?;
            if xt.dtype != tessera_ir::DType::F32 || !is_scalar_const(eg, s[e]) {
                return None;
            }
            let axis = trailing_axis(&attr(eg, s[r])?, xt.rank())?;
            let eps = splat(eg, s[e])?;
            let a = add_attr(eg, Attr::Norm(axis, eps.to_bits()));
            Some(eg.add(TensorLang::RmsMeanSquare([a, s[x]])))
        })
    };
    let normed = || Build::marker(move |eg, _, s| Some(eg.add(TensorLang::RmsNormed([s[n], s[x]]))));
    let one_over = || {
        Build::marker(move |eg, _, s| {
            if splat(eg, s[var("?one")]) != Some(1.0) {
                return None;
            }
            Some(eg.add(TensorLang::RmsNormed([s[n], s[x]])))
        })
    };
    let fuse = || Build::op(move |eg, _, s| Some(eg.add(TensorLang::RmsNorm([s[n], s[x], s[w]]))));
    vec![
        rewrite!("rms-ms-pow"; "(add (reduce_mean ?r (pow ?x ?two)) ?e)" => { mean_square(true) }),
        rewrite!("rms-ms-pow-left"; "(add ?e (reduce_mean ?r (pow ?x ?two)))" => { mean_square(true) }),
        rewrite!("rms-ms-mul"; "(add (reduce_mean ?r (mul ?x ?x)) ?e)" => { mean_square(false) }),
        rewrite!("rms-ms-mul-left"; "(add ?e (reduce_mean ?r (mul ?x ?x)))" => { mean_square(false) }),
        rewrite!("rms-normed-rsqrt"; "(mul ?x (rsqrt (rms-ms ?n ?x)))" => { normed() }),
        rewrite!("rms-normed-rsqrt-left"; "(mul (rsqrt (rms-ms ?n ?x)) ?x)" => { normed() }),
        rewrite!("rms-normed-recip"; "(mul ?x (reciprocal (sqrt (rms-ms ?n ?x))))" => { normed() }),
        rewrite!("rms-normed-recip-left"; "(mul (reciprocal (sqrt (rms-ms ?n ?x))) ?x)" => { normed() }),
        rewrite!("rms-normed-div"; "(div ?x (sqrt (rms-ms ?n ?x)))" => { normed() }),
        rewrite!("rms-normed-one-over"; "(mul ?x (div ?one (sqrt (rms-ms ?n ?x))))" => { one_over() }),
        rewrite!("rms-normed-one-over-left"; "(mul (div ?one (sqrt (rms-ms ?n ?x))) ?x)" => { one_over() }),
        rewrite!("rms-norm"; "(mul (rms-normed ?n ?x) ?w)" => { fuse() }),
        rewrite!("rms-norm-left"; "(mul ?w (rms-normed ?n ?x))" => { fuse() }),
    ]
}
