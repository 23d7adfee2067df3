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
        let sizes = match sizes_with(g, &self.opts) {
            Ok(s) => s,
            // A size known only at run time (a `?` dim): no static plan; say so and leave the graph.
            Err(e) => return Ok(PassReport::changed(false).note(format!("no plan: {e}"))),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::Pipeline;
    use crate::memory::testutil::random_dag;
    use crate::memory::{check_plan, planned_bytes};

    #[test]
    fn plans_are_valid_and_reported() {
        let text = r#"
graph @ffn {
  v0: f32[batch, seq, 8] = input "x"
  v1: f32[8, 32] = const splat(0.5)
  v2: f32[32, 8] = const splat(0.25)
  v3: f32[batch, seq, 32] = matmul v0, v1
  v4: f32[batch, seq, 32] = gelu v3
  v5: f32[batch, seq, 32] = mul v4, v3
  v6: f32[batch, seq, 8] = matmul v5, v2
  v7: f32[batch, seq, 8] = add v6, v0
  output "y" = v7
}
"#;
        let mut g = tessera_ir::parse(text).unwrap();
        let report = PlanMemory::default().run(&mut g).unwrap();
        assert!(report.changed);
        let s = sizes_with(&g, &PlanOptions::default()).unwrap();
        check_plan(&g, &s).unwrap();
        let arena = planned_bytes(&g, &s).unwrap();
        assert!(report.notes[0].starts_with(&format!("arena {arena} bytes")), "{report:?}");
        assert!(report.notes.iter().any(|n| n.starts_with("greedy-by-size")));
        // Printed and read back, the slots survive and stay valid.
        let back = tessera_ir::parse(&tessera_ir::print(&g)).unwrap();
        check_plan(&back, &s).unwrap();
        // Planning again changes nothing.
        assert!(!PlanMemory::default().run(&mut g).unwrap().changed);
        // Other sizes.
        let mut g2 = tessera_ir::parse(text).unwrap();
        let opts = PlanOptions::default().with("seq", 7).with("batch", 3);
        PlanMemory { opts: opts.clone() }.run(&mut g2).unwrap();
        check_plan(&g2, &sizes_with(&g2, &opts).unwrap()).unwrap();
    }

    #[test]
    fn pipelines_schedule_then_plan_random_dags() {
        let pipeline = Pipeline::parse("schedule,plan-memory").unwrap();
        for seed in 400..460u64 {
            let mut g = random_dag(seed, 10 + seed as usize % 30);
            let s = sizes_with(&g, &PlanOptions::default()).unwrap();
            let order = current_order(&g);
            let _ = greedy_by_size(&g, &order, &s);
            pipeline.run(&mut g, &mut |_| {}).unwrap();
            check_plan(&g, &s).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let after_order = current_order(&g);
            let base = greedy_by_size(&g, &after_order, &s).arena_bytes;
            assert!(planned_bytes(&g, &s).unwrap() <= base, "seed {seed}");
        }
    }

    /// A size known only at run time leaves the graph unplanned, with a note saying why.
    #[test]
    fn unknown_dims_leave_the_graph_unplanned() {
        let text = "graph @u {\n  v0: f32[?] = input \"x\"\n  v1: f32[?] = relu v0\n  output \"y\" = v1\n}\n";
        let mut g = tessera_ir::parse(text).unwrap();
        let report = PlanMemory::default().run(&mut g).unwrap();
        assert!(!report.changed);
        assert!(report.notes.iter().any(|n| n.contains("no plan") && n.contains("unknown dim")), "{:?}", report.notes);
        assert!(g.values().all(|(_, v)| v.mem.is_none()));
    }
}
