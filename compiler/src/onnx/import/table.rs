//! Which function lowers each ONNX op: one lookup shared by the support check and the lowering.

use super::ctx::{Ctx, Lowered, Node};

/// A lowering function.
pub type LowerFn = fn(&mut Ctx, &Node) -> Lowered;

/// The lowering of `op_type` in `domain` at `opset`, if Tessera has one.
pub fn lookup(domain: &str, op_type: &str, opset: i64) -> Option<LowerFn> {
    match domain {
        "" => super::elementwise::lookup(op_type)
            .or_else(|| super::shape::lookup(op_type))
            .or_else(|| super::nn::lookup(op_type))
            .or_else(|| super::quant::lookup(op_type))
            .or_else(|| super::opset23::lookup(op_type))
            .filter(|_| super::OPSET_RANGE.contains(&opset)),
        "com.microsoft" => super::quant::lookup_microsoft(op_type).filter(|_| opset == 1),
        _ => None,
    }
}
