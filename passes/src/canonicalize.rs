//! `canonicalize`: `fold-constants`, `simplify-layout`, `refine-types`, `cse` and `dce` repeated until nothing
//! changes (at most 8 rounds; the report says how many ran and whether the bound was hit).

use crate::manager::{Pass, PassError, PassReport};
use tessera_ir::Graph;

pub struct Canonicalize;

/// Rounds before canonicalization stops even if something still changes.
pub const MAX_ROUNDS: usize = 8;

impl Pass for Canonicalize {
    fn name(&self) -> &'static str {
        "canonicalize"
    }

    fn description(&self) -> &'static str {
        "fold-constants, simplify-layout, cse and dce to a fixed point"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let passes: [&dyn Pass; 5] = [
            &crate::fold_constants::FoldConstants,
            &crate::simplify_layout::SimplifyLayout,
            &crate::refine_types::RefineTypes,
            &crate::cse::Cse,
            &crate::dce::Dce,
        ];
        let (nodes_before, consts_before) = (g.n_nodes(), g.constants().len());
        let mut changed_any = false;
        for round in 1..=MAX_ROUNDS {
            let mut changed = false;
            for p in passes {
                changed |= p.run(g)?.changed;
            }
            changed_any |= changed;
            if !changed {
                return Ok(PassReport::changed(changed_any).note(format!(
                    "{round} rounds: {nodes_before} -> {} nodes, {consts_before} -> {} constants",
                    g.n_nodes(),
                    g.constants().len()
                )));
            }
        }
        Ok(PassReport::changed(changed_any)
            .note(format!("stopped at the bound of {MAX_ROUNDS} rounds with changes left")))
    }
}
