//! Matrix products.
use tessera_ir::{Graph, Node};

use crate::lower::Lowered;
use crate::CpuError;

pub(crate) fn lower_region<'g>(
    _g: &'g Graph,
    _n: Node,
    _body: &'g Graph,
    _name: &str,
    _owned: &mut Vec<Vec<u8>>,
) -> Result<Lowered<'g>, CpuError> {
    Err(CpuError::Unsupported("todo".into()))
}
pub(crate) fn lower_single<'g>(_g: &'g Graph, _n: Node, _owned: &mut Vec<Vec<u8>>) -> Result<Lowered<'g>, CpuError> {
    Err(CpuError::Unsupported("todo".into()))
}
