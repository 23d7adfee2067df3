//! `fold-constants`: a node whose operands are all constants (with their data, not summaries)
//! is run on the reference interpreter and its results become constants, when each result has
//! at most 65,536 elements (folding must not blow up the weights). Kernels are not folded.
//! Shape subgraphs left by import (`shape` of a static value, arithmetic on it) fold away here.

use crate::manager::{Pass, PassError, PassReport};
use tessera_ir::{ConstData, Graph, Node, Op, TensorType, ValueDef};

pub struct FoldConstants;

/// Largest result folded.
pub const MAX_FOLDED_ELEMENTS: usize = 1 << 16;

fn foldable(g: &Graph, n: Node) -> bool {
    let nd = g.node(n);
    if nd.body.is_some() || matches!(nd.op, Op::Kernel { .. }) {
        return false;
    }
    let operands_constant = nd.inputs.iter().all(|&v| {
        matches!(g.value(v).def, ValueDef::Const(_))
            && g.const_data(v).is_some_and(|d| d.bytes().is_some())
            && g.ty(v).quant.is_none()
    });
    let results_small = nd
        .outputs
        .iter()
        .all(|&v| g.ty(v).shape.static_numel().is_some_and(|n| n <= MAX_FOLDED_ELEMENTS) && g.ty(v).quant.is_none());
    // A shape-of a static value needs no constant operand.
    let static_shape_of = matches!(nd.op, Op::ShapeOf) && g.ty(nd.inputs[0]).shape.as_static().is_some();
    (operands_constant || static_shape_of) && results_small
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold-constants"
    }

    fn description(&self) -> &'static str {
        "evaluate nodes whose operands are all constants (results up to 65,536 elements)"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let mut folded = 0;
        let nodes: Vec<Node> = g.nodes().map(|(n, _)| n).collect();
        for n in nodes {
            if !foldable(g, n) {
                continue;
            }
            let nd = g.node(n).clone();
            let results = if let Op::ShapeOf = nd.op {
                let dims: Vec<i64> =
                    g.ty(nd.inputs[0]).shape.as_static().expect("checked").iter().map(|&d| d as i64).collect();
                vec![tessera_ir::Tensor::from_i64(tessera_ir::DType::I64, &[dims.len()], dims).expect("i64 dims")]
            } else {
                // Run the node alone on its constant operands.
                let mut scratch = Graph::new("fold");
                let ins = nd
                    .inputs
                    .iter()
                    .map(|&v| scratch.add_const(g.ty(v).clone(), g.const_data(v).expect("constant").clone()))
                    .collect();
                let types = nd.outputs.iter().map(|&v| g.ty(v).clone()).collect();
                let sn = scratch.add_node(nd.op.clone(), ins, types);
                for &o in &scratch.node(sn).outputs.clone() {
                    scratch.add_output("r", o);
                }
                match tessera_ir::run(&scratch, vec![]) {
                    Ok(r) => r,
                    // An op that fails on constants (say, an out-of-range gather) is left for run time.
                    Err(_) => continue,
                }
            };
            for (&old, t) in nd.outputs.iter().zip(results) {
                let c = g.add_const(TensorType::with_static(t.dtype(), t.shape()), ConstData::from_vec(t.to_bytes()));
                g.replace_uses(old, c);
            }
            folded += 1;
        }
        Ok(PassReport::changed(folded > 0).note(format!("folded {folded} nodes")))
    }
}
