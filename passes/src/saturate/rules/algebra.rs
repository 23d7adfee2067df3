//! Algebra: identities that hold exactly in IEEE float (`x * 1`, `x + 0`, `x - 0`, `x / 1`,
//! `-(-x)`, `x - (-y)`, `x + (-y)`), each only where the matched op's type equals `x`'s (a
//! constant of higher rank would have broadcast `x`), and `x / c -> x * (1/c)` for an `f32[]`
//! constant `c` (not exact: within an ulp; it lets a division by a scale read as a multiply).

use super::{is_splat, same_type_as, splat, ty, var, Build, Rule};
use crate::saturate::lang::{Scalar, TensorLang};
use egg::rewrite;
use tessera_ir::{DType, TensorType};

pub fn rules() -> Vec<Rule> {
    vec![
        rewrite!("mul-one"; "(mul ?x ?c)" => "?x" if is_splat("?c", 1.0) if same_type_as("?x")),
        rewrite!("mul-one-left"; "(mul ?c ?x)" => "?x" if is_splat("?c", 1.0) if same_type_as("?x")),
        rewrite!("add-zero"; "(add ?x ?c)" => "?x" if is_splat("?c", 0.0) if same_type_as("?x")),
        rewrite!("add-zero-left"; "(add ?c ?x)" => "?x" if is_splat("?c", 0.0) if same_type_as("?x")),
        rewrite!("sub-zero"; "(sub ?x ?c)" => "?x" if is_splat("?c", 0.0) if same_type_as("?x")),
        rewrite!("div-one"; "(div ?x ?c)" => "?x" if is_splat("?c", 1.0) if same_type_as("?x")),
        rewrite!("neg-neg"; "(neg (neg ?x))" => "?x"),
        rewrite!("sub-neg"; "(sub ?x (neg ?y))" => "(add ?x ?y)"),
        rewrite!("add-neg"; "(add ?x (neg ?y))" => "(sub ?x ?y)"),
        rewrite!("div-const"; "(div ?x ?c)" => { div_to_mul() }),
    ]
}

/// `x / c -> x * (1/c)` for an `f32[]` constant with a finite, non-zero reciprocal.
fn div_to_mul() -> Build {
    let (x, c) = (var("?x"), var("?c"));
    Build::op(move |eg, _, s| {
        let v = splat(eg, s[c])?;
        if ty(eg, s[c]) != Some(&TensorType::scalar(DType::F32)) || ty(eg, s[x])?.dtype != DType::F32 {
            return None;
        }
        let r = 1.0 / v;
        if !r.is_finite() || r == 0.0 {
            return None;
        }
        let k = eg.add(TensorLang::Scalar(Scalar::new(r)));
        Some(eg.add(TensorLang::Mul([s[x], k])))
    })
}
