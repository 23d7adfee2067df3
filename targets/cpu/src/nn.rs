//! Normalizations, softmax, attention, reductions and dynamic quantization.
use tessera_ir::{Graph, Node};

use crate::lower::Lowered;
use crate::CpuError;

pub(crate) fn lower_norm(_g: &Graph, _n: Node) -> Result<Lowered<'_>, CpuError> {
    Err(CpuError::Unsupported("todo".into()))
}
pub(crate) fn lower_attention(_g: &Graph, _n: Node) -> Result<Lowered<'_>, CpuError> {
    Err(CpuError::Unsupported("todo".into()))
}
pub(crate) fn lower_reduce(_g: &Graph, _n: Node) -> Result<Lowered<'_>, CpuError> {
    Err(CpuError::Unsupported("todo".into()))
}
pub(crate) fn lower_dynamic_quantize(_g: &Graph, _n: Node) -> Result<Lowered<'_>, CpuError> {
    Err(CpuError::Unsupported("todo".into()))
}
