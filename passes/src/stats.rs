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
