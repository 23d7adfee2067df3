//! `plan-memory`: buffer planning. Gives every node result a slot `mem(arena=0, offset)` in one
//! activation arena, for the current node order and the sizes of [`PlanOptions`] (unbound
//! `batch*` symbols 1, others 128): offsets are multiples of 64 bytes, and two values live at a
//! common step never overlap, except an in-place result over an operand of the same size that
//! dies at that node (elementwise ops and reshapes; see `memory.rs`).
//!
//! Several heuristics are tried (greedy-by-size, greedy-by-breadth, by area and by start time,
//! first and best fit, with and without in-place sharing) and the smallest arena is kept; it is
//! never larger than TFLite's greedy-by-size without in-place sharing, which is computed as the
//! baseline. Graph inputs and constants get no slot. Kernel bodies are not planned.
//! Fails on graphs with unknown (`?`) dims: their sizes are known only at run time.

use crate::manager::{Pass, PassError, PassReport};
use crate::memory::{best_plan, current_order, greedy_by_size, lower_bound, sizes_with, PlanOptions};
use tessera_ir::Graph;

#[derive(Default)]
pub struct PlanMemory {
    pub opts: PlanOptions,
}

impl Pass for PlanMemory {
    fn name(&self) -> &'static str {
        "plan-memory"
    }

    fn description(&self) -> &'static str {
        "assign every node result an aligned slot in one arena (in-place where safe)"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let sizes =
            sizes_with(g, &self.opts).map_err(|e| PassError::Failed { pass: "plan-memory", message: e.to_string() })?;
        let order = current_order(g);
        let baseline = greedy_by_size(g, &order, &sizes);
        let plan = best_plan(g, &order, &sizes);
        debug_assert!(plan.arena_bytes <= baseline.arena_bytes);
        let before: Vec<_> = g.values().map(|(_, vd)| vd.mem).collect();
        plan.apply(g);
        let changed = g.values().map(|(_, vd)| vd.mem).ne(before);
        let bindings = self.opts.bindings_for(g);
        let bound: Vec<String> = bindings.iter().map(|(n, s)| format!("{n}={s}")).collect();
        Ok(PassReport::changed(changed)
            .note(format!("arena {} bytes ({})", plan.arena_bytes, plan.strategy))
            .note(format!("lower bound for the order {} bytes", lower_bound(g, &order, &sizes, false)))
            .note(format!("lower bound with in-place sharing {} bytes", lower_bound(g, &order, &sizes, true)))
            .note(format!("greedy-by-size {} bytes", baseline.arena_bytes))
            .note(format!(
                "sizes for {}",
                if bound.is_empty() { "static shapes".to_string() } else { bound.join(", ") }
            )))
    }
}
