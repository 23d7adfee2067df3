//! Quantization: requantize folding.
//!
//! `quantize(dequantize(q, s, z), s, z) -> q` (and without zero points) when both read the same
//! scale and zero-point classes (the same constants), with the same axis and block, the
//! quantize's `to` is `q`'s dtype (so its type is the matched class's), and the scale is an f32
//! splat constant that is finite, normal and non-zero. Exact: `dequantize` gives
//! `(q - z) * s` in f32, where `q - z` is an integer of at most 17 bits; dividing by `s` again
//! is within an ulp of that integer, so rounding half to even gives it back exactly, adding `z`
//! gives `q`, and `q` is in range so nothing saturates. Scales that are not splats (per-axis
//! with different values, blocked) are not checked element by element here and are left alone.
//!
//! The other order, `dequantize(quantize(x, s, z), s, z)`, is NOT folded: it rounds `x` to the
//! grid of `s` and clamps it to the dtype's range, so it is a different function of `x` (lossy);
//! folding it would change results (and remove the quantization a model was calibrated with).
//!
//! Weight-only `matmul(x, mul(cast(w, f32), scale))` -> `qmatmul` is not a rule here: it gives
//! the weight a quantized type, which the e-graph does not model (values of quantized type are
//! opaque leaves); it is in the plain pass `fold-dequantize`.

use super::{attr, splat, ty, var, Rule};
use crate::saturate::lang::{Attr, TensorEGraph};
use egg::{rewrite, Id, Subst};
use tessera_ir::DType;

pub fn rules() -> Vec<Rule> {
    vec![
        rewrite!("requantize"; "(quantize ?qa (dequantize ?da ?q ?s ?z) ?s ?z)" => "?q" if requantize_ok()),
        rewrite!("requantize-no-zero"; "(quantize ?qa (dequantize ?da ?q ?s) ?s)" => "?q" if requantize_ok()),
    ]
}

fn requantize_ok() -> impl Fn(&mut TensorEGraph, Id, &Subst) -> bool {
    let (qa, da, q, s) = (var("?qa"), var("?da"), var("?q"), var("?s"));
    move |eg, root, sub| {
        let (Some(Attr::Quant(qaxis, qblock, Some(to))), Some(Attr::Quant(daxis, dblock, None))) =
            (attr(eg, sub[qa]), attr(eg, sub[da]))
        else {
            return false;
        };
        let scale_ok =
            ty(eg, sub[s]).is_some_and(|t| t.dtype == DType::F32) && splat(eg, sub[s]).is_some_and(|v| v.is_normal());
        let q_ty = ty(eg, sub[q]);
        qaxis == daxis
            && qblock == dblock
            && scale_ok
            && q_ty.is_some_and(|t| t.dtype == to && t.dtype.bits() <= 16)
            && ty(eg, root).is_some()
            && ty(eg, root) == q_ty
    }
}
