//! `dce`: dead-code elimination. Removes nodes none of whose results reach a graph output, and
//! constants nothing uses. Assumes nodes have no side effects (true of every Tessera op).

use crate::manager::{Pass, PassError, PassReport};
use tessera_ir::{Graph, ValueDef};

pub struct Dce;

/// The live nodes: those whose results feed the outputs, directly or through other live nodes.
pub fn live_nodes(g: &Graph) -> Vec<bool> {
    let mut live_value = vec![false; g.n_values()];
    let mut live_node = vec![false; g.n_nodes()];
    let mut stack: Vec<tessera_ir::Value> = g.outputs().iter().map(|(_, v)| *v).collect();
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut live_value[v.index()], true) {
            continue;
        }
        if let Some(q) = &g.ty(v).quant {
            stack.extend([Some(q.scale), q.zero_point, q.offset].into_iter().flatten());
        }
        if let ValueDef::Result(n, _) = g.value(v).def {
            if !std::mem::replace(&mut live_node[n.index()], true) {
                stack.extend(g.node(n).inputs.iter().copied());
            }
        }
    }
    live_node
}

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn description(&self) -> &'static str {
        "remove nodes whose results reach no output, and unused constants"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let live = live_nodes(g);
        let before = (g.n_nodes(), g.constants().len());
        let compact = g.compacted(|n| live[n.index()]);
        let removed = (before.0 - compact.n_nodes(), before.1 - compact.constants().len());
        let changed = removed != (0, 0);
        if changed {
            *g = compact;
        }
        Ok(PassReport::changed(changed).note(format!("removed {} nodes and {} constants", removed.0, removed.1)))
    }
}
