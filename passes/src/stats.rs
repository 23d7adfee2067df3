//! Static statistics of a graph for one set of sizes ([`PlanOptions`]): op counts, kernels,
//! bytes moved per inference by simple accounting (each node reads each operand once and writes
//! each result once; weights, i.e. constants, apart from activations, i.e. graph inputs and node
//! results), and activation memory: the current plan's arena, the lower bound for the current
//! order, and TFLite's greedy-by-size for the same order. Kernel bodies count as one node each;
//! what happens inside them is not counted.

use crate::memory::{greedy_by_size, lower_bound, planned_bytes, sizes_with, PlanOptions};
use std::collections::BTreeMap;
use std::fmt;
use tessera_ir::{Bindings, Graph, Op, ValueDef};

/// See the module header.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub nodes: usize,
    /// Nodes by op name.
    pub op_counts: BTreeMap<&'static str, usize>,
    /// Nodes of op `kernel`.
    pub kernels: usize,
    /// The sizes the byte figures are for (defaults filled in).
    pub bindings: Bindings,
    /// Why the byte figures are missing (an unknown dim), if they are.
    pub size_error: Option<String>,
    /// Bytes of constants read by nodes (a constant read by two nodes counts twice).
    pub weight_bytes_read: u64,
    /// Bytes of graph inputs and node results read by nodes.
    pub activation_bytes_read: u64,
    /// Bytes of node results written.
    pub activation_bytes_written: u64,
    /// Bytes of constant data stored in the graph (as packed).
    pub weight_bytes_stored: u64,
    /// The arena bytes of the current `mem` slots, when every node result has one.
    pub planned_peak: Option<u64>,
    /// Peak live activation bytes for the current order (without in-place sharing).
    pub lower_bound: Option<u64>,
    /// The same with in-place sharing (what `plan-memory` can reach at best).
    pub lower_bound_inplace: Option<u64>,
    /// TFLite's greedy-by-size arena for the current order.
    pub greedy_by_size: Option<u64>,
}

impl Stats {
    /// All bytes moved per inference.
    pub fn bytes_moved(&self) -> u64 {
        self.weight_bytes_read + self.activation_bytes_read + self.activation_bytes_written
    }
}

/// Computes the statistics of `g` for the sizes of `opts`.
pub fn stats(g: &Graph, opts: &PlanOptions) -> Stats {
    let mut s = Stats { nodes: g.n_nodes(), bindings: opts.bindings_for(g), ..Stats::default() };
    for (_, nd) in g.nodes() {
        *s.op_counts.entry(nd.op.name()).or_default() += 1;
        if matches!(nd.op, Op::Kernel { .. }) {
            s.kernels += 1;
        }
    }
    s.weight_bytes_stored = g.constant_bytes();
    let sizes = match sizes_with(g, opts) {
        Ok(sz) => sz,
        Err(e) => {
            s.size_error = Some(e.to_string());
            return s;
        }
    };
    for (_, nd) in g.nodes() {
        for &v in &nd.inputs {
            match g.value(v).def {
                ValueDef::Const(_) => s.weight_bytes_read += sizes[v.index()],
                _ => s.activation_bytes_read += sizes[v.index()],
            }
        }
        s.activation_bytes_written += nd.outputs.iter().map(|r| sizes[r.index()]).sum::<u64>();
    }
    let order = crate::memory::current_order(g);
    s.planned_peak = planned_bytes(g, &sizes);
    s.lower_bound = Some(lower_bound(g, &order, &sizes, false));
    s.lower_bound_inplace = Some(lower_bound(g, &order, &sizes, true));
    s.greedy_by_size = Some(greedy_by_size(g, &order, &sizes).arena_bytes);
    s
}

/// Bytes with a binary unit (`1.50 MiB`) and the exact count.
fn human(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let (mut x, mut u) = (b as f64 / 1024.0, 0);
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    format!("{x:.2} {} ({b} B)", UNITS[u])
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nodes: {} ({} kernels)", self.nodes, self.kernels)?;
        let ops: Vec<String> = self.op_counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
        writeln!(f, "ops: {}", ops.join(", "))?;
        let bound: Vec<String> = self.bindings.iter().map(|(n, v)| format!("{n}={v}")).collect();
        writeln!(f, "sizes for: {}", if bound.is_empty() { "static shapes".to_string() } else { bound.join(", ") })?;
        writeln!(f, "weights stored: {}", human(self.weight_bytes_stored))?;
        if let Some(e) = &self.size_error {
            return writeln!(f, "bytes: unknown ({e})");
        }
        writeln!(f, "bytes moved per inference: {}", human(self.bytes_moved()))?;
        writeln!(f, "  weights read:       {}", human(self.weight_bytes_read))?;
        writeln!(f, "  activations read:   {}", human(self.activation_bytes_read))?;
        writeln!(f, "  activations written: {}", human(self.activation_bytes_written))?;
        writeln!(f, "activation memory:")?;
        match self.planned_peak {
            Some(p) => writeln!(f, "  planned arena:      {}", human(p))?,
            None => writeln!(f, "  planned arena:      no plan (run plan-memory)")?,
        }
        let opt = |x: Option<u64>| x.map(human).unwrap_or_else(|| "-".to_string());
        writeln!(f, "  lower bound for the order: {}", opt(self.lower_bound))?;
        writeln!(f, "  lower bound with in-place: {}", opt(self.lower_bound_inplace))?;
        writeln!(f, "  greedy-by-size:     {}", opt(self.greedy_by_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::Pass;
    use crate::plan_memory::PlanMemory;
    use crate::schedule::Schedule;

    const BLOCK: &str = r#"
graph @block {
  v0: f32[batch, seq, 8] = input "x"
  v1: f32[8, 8] = const splat(0.5)
  v2: f32[batch, seq, 8] = matmul v0, v1
  v3: f32[batch, seq, 8] = relu v2
  v4: f32[batch, seq, 8] = kernel v3, v0 {name = "add"} region {
    v0: f32[batch, seq, 8] = input "a"
    v1: f32[batch, seq, 8] = input "b"
    v2: f32[batch, seq, 8] = add v0, v1
    output "r" = v2
  }
  output "y" = v4
}
"#;

    #[test]
    fn counts_bytes_and_memory() {
        let mut g = tessera_ir::parse(BLOCK).unwrap();
        let opts = PlanOptions::default().with("seq", 4);
        let s = stats(&g, &opts);
        assert_eq!(s.nodes, 3);
        assert_eq!(s.kernels, 1);
        assert_eq!(s.op_counts.get("matmul"), Some(&1));
        assert_eq!(s.op_counts.get("kernel"), Some(&1));
        let a = 4 * 8 * 4; // [1, 4, 8] f32
        assert_eq!(s.weight_bytes_read, 256);
        assert_eq!(s.activation_bytes_read, 4 * a); // x, v2, v3, x
        assert_eq!(s.activation_bytes_written, 3 * a);
        assert_eq!(s.bytes_moved(), 256 + 7 * a);
        assert_eq!(s.planned_peak, None);
        // Step 2: v3 and v4 live (v2 died at step 1).
        assert_eq!(s.lower_bound, Some(2 * a));
        assert_eq!(s.greedy_by_size, Some(2 * a));
        let text = s.to_string();
        assert!(text.contains("no plan"), "{text}");
        assert!(text.contains("seq=4"), "{text}");
        PlanMemory { opts: opts.clone() }.run(&mut g).unwrap();
        let s = stats(&g, &opts);
        assert!(s.planned_peak.unwrap() <= s.greedy_by_size.unwrap());
        assert!(s.planned_peak.unwrap() >= s.lower_bound_inplace.unwrap());
        assert!(s.to_string().contains("planned arena"));
    }

    #[test]
    fn unknown_sizes_leave_the_byte_figures_out() {
        let text = "graph @u {\n  v0: f32[?] = input \"x\"\n  v1: f32[?] = relu v0\n  output \"y\" = v1\n}\n";
        let g = tessera_ir::parse(text).unwrap();
        let s = stats(&g, &PlanOptions::default());
        assert_eq!(s.op_counts.get("relu"), Some(&1));
        assert!(s.size_error.is_some() && s.lower_bound.is_none());
        assert!(s.to_string().contains("unknown"));
    }

    /// Measures a real graph: `tessera ir MODEL.onnx --passes canonicalize --weights sidecar -o
    /// /tmp/minilm.tir`, then `TESSERA_STATS_GRAPH=/tmp/minilm.tir cargo test -p tessera-passes
    /// measure_graph -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_graph() {
        let path = std::env::var("TESSERA_STATS_GRAPH").unwrap_or_else(|_| "/tmp/minilm.tir".to_string());
        let mut g = tessera_ir::parse_file(std::path::Path::new(&path)).unwrap();
        let opts = PlanOptions::default();
        println!("== {path}, as read\n{}", stats(&g, &opts));
        let r = PlanMemory::default().run(&mut g).unwrap();
        println!("plan-memory: {}\n{}", r.notes.join("; "), stats(&g, &opts));
        let r = Schedule::default().run(&mut g).unwrap();
        println!("schedule: {}", r.notes.join("; "));
        let r = PlanMemory::default().run(&mut g).unwrap();
        println!("plan-memory: {}\n== after schedule,plan-memory\n{}", r.notes.join("; "), stats(&g, &opts));
        crate::memory::check_plan(&g, &crate::memory::sizes_with(&g, &opts).unwrap()).unwrap();
        tessera_ir::verify(&g).unwrap();
    }
}
