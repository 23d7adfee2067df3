//! `refine-types`: re-infers every node's result types in order and replaces `?` dims the
//! inference can now name (after folding made a shape operand constant, say). It never changes
//! a known dim or a dtype; a declared type that disagrees with inference is the verifier's job.

use crate::manager::{Pass, PassError, PassReport};
use tessera_ir::infer::infer_types;
use tessera_ir::{Dim, Graph, Node};

pub struct RefineTypes;

impl Pass for RefineTypes {
    fn name(&self) -> &'static str {
        "refine-types"
    }

    fn description(&self) -> &'static str {
        "replace `?` dims that type inference can now name"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let mut refined = 0;
        let nodes: Vec<Node> = g.nodes().map(|(n, _)| n).collect();
        for n in nodes {
            let nd = g.node(n).clone();
            let Ok(types) = infer_types(g, &nd.op, &nd.inputs, nd.body.as_deref()) else { continue };
            for (v, inferred) in nd.outputs.iter().zip(types) {
                let declared = &mut g.value_mut(*v).ty;
                if declared.rank() != inferred.rank() || declared.dtype != inferred.dtype {
                    continue;
                }
                for (d, i) in declared.shape.0.iter_mut().zip(inferred.shape.0) {
                    if *d == Dim::Unknown && i != Dim::Unknown {
                        *d = i;
                        refined += 1;
                    }
                }
            }
        }
        Ok(PassReport::changed(refined > 0).note(format!("named {refined} dims")))
    }
}
