//! `saturate`: equality saturation with egg. The modelled part of the graph (elementwise
//! arithmetic, activations, matmul, softmax, transpose, reduce_mean/sum/max, attention, rms_norm,
//! layer_norm, quantize/dequantize with explicit parameters; see `lang.rs`) becomes an
//! e-graph, the rule groups in `rules/` (algebra, layout, fusion, norms, quant) run to saturation or to a bound
//! (iterations, e-nodes, time), and the cheapest equivalent of every value read outside the
//! e-graph is extracted with a pluggable cost model (`cost.rs`: FLOPs plus bytes moved) and
//! written back (`convert.rs`). Nodes the language does not model are left as they are.
//!
//! Assumes: a verified graph. Refuses nothing: when extraction cannot rebuild a value with
//! exactly its original type, the graph is left unchanged and the report says why.
//! Fusions (GELU, tanh GELU, SiLU, attention, RMSNorm, LayerNorm, softmax) and `x / c -> x * (1/c)`
//! are exact up to float rounding (a few ulps), not bit-exact. The gated FFN (SwiGLU, GeGLU) has no
//! IR op: it is extracted as a `kernel` region named `silu_gated_ffn` / `gelu_gated_ffn` whose body
//! is the same ops (bit-exact). Requantize folding is exact.
//! The report's notes give the stop reason, iterations, e-graph size, and the fused ops in the
//! result.

pub mod convert;
pub mod cost;
pub mod lang;
pub mod rules;
#[cfg(test)]
mod tests;

use crate::manager::{Pass, PassError, PassReport};
use std::time::Duration;
use tessera_ir::Graph;

/// The pass, with its bounds.
#[derive(Clone, Debug)]
pub struct Saturate {
    pub iter_limit: usize,
    pub node_limit: usize,
    pub time_limit: Duration,
}

impl Default for Saturate {
    fn default() -> Self {
        Saturate { iter_limit: 30, node_limit: 50_000, time_limit: Duration::from_secs(10) }
    }
}

/// The fused ops counted in the report (`gated_ffn`: kernels named `*_gated_ffn`).
pub const FUSED_OPS: [&str; 8] =
    ["gelu", "gelu_tanh", "silu", "attention", "rms_norm", "layer_norm", "softmax", "gated_ffn"];

/// How many nodes of each fused op the graph has.
pub fn fused_counts(g: &Graph) -> [usize; 8] {
    let mut counts = [0; 8];
    for (_, nd) in g.nodes() {
        let name = match &nd.op {
            tessera_ir::Op::Kernel { name } if name.ends_with("_gated_ffn") => "gated_ffn",
            op => op.name(),
        };
        if let Some(i) = FUSED_OPS.iter().position(|&f| f == name) {
            counts[i] += 1;
        }
    }
    counts
}

impl Saturate {
    /// Runs with another extraction cost model.
    pub fn run_with<M: cost::CostModel>(&self, g: &mut Graph, model: &M) -> Result<PassReport, PassError> {
        let nodes_before = g.n_nodes();
        let fused_before = fused_counts(g);
        let converted = convert::to_egraph(g);
        if converted.roots.is_empty() {
            return Ok(PassReport::changed(false).note("no modelled nodes"));
        }
        let rules = rules::all();
        let runner = egg::Runner::default()
            .with_egraph(converted.egraph)
            .with_iter_limit(self.iter_limit)
            .with_node_limit(self.node_limit)
            .with_time_limit(self.time_limit)
            .run(&rules);
        let stop = match &runner.stop_reason {
            Some(egg::StopReason::Saturated) => "saturated".to_string(),
            Some(egg::StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
            Some(egg::StopReason::NodeLimit(n)) => format!("node limit ({n})"),
            Some(egg::StopReason::TimeLimit(t)) => format!("time limit ({t:.1} s)"),
            Some(egg::StopReason::Other(s)) => s.clone(),
            None => "not run".to_string(),
        };
        let mut report = PassReport::changed(false).note(format!(
            "stop: {stop}; {} iterations, {} e-nodes, {} e-classes, {} rules, {} of {nodes_before} nodes modelled",
            runner.iterations.len(),
            runner.egraph.total_size(),
            runner.egraph.number_of_classes(),
            rules.len(),
            converted.modelled,
        ));
        match convert::from_egraph(g, &runner.egraph, &converted.roots, model) {
            Ok(changed) => report.changed = changed,
            Err(e) => return Ok(report.note(format!("extraction failed, graph left unchanged: {e}"))),
        }
        let after = fused_counts(g);
        let fused: Vec<String> = FUSED_OPS
            .iter()
            .zip(after.iter().zip(fused_before))
            .map(|(name, (&a, b))| format!("{name} {a} ({:+})", a as i64 - b as i64))
            .collect();
        Ok(report
            .note(format!("extracted: {}", fused.join(", ")))
            .note(format!("{nodes_before} -> {} nodes", g.n_nodes())))
    }
}

/// Runs a pipeline (`a,b,c`), with `saturate` extracting by `profile`'s cost model
/// ([`cost::ProfileCost`]) instead of FLOPs plus bytes: the optimization before placement.
pub fn run_pipeline_for_profile(
    g: &mut Graph,
    pipeline: &str,
    profile: &crate::profile::DeviceProfile,
) -> Result<Vec<PassReport>, PassError> {
    let model = cost::ProfileCost::new(profile.clone());
    let mut reports = Vec::new();
    for part in pipeline.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if part == "saturate" {
            reports.push(Saturate::default().run_with(g, &model)?);
        } else {
            let mut p = crate::Pipeline::parse(part)?;
            p.verify_each = false;
            reports.extend(p.run(g, &mut |_| {})?.into_iter().map(|(_, r, _)| r));
        }
    }
    Ok(reports)
}

impl Pass for Saturate {
    fn name(&self) -> &'static str {
        "saturate"
    }

    fn description(&self) -> &'static str {
        "equality saturation (egg): algebra, layout, fusion (GELU, SiLU, attention, RMSNorm, LayerNorm, softmax, gated FFN) and requantize rules, bounded"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        self.run_with(g, &cost::FlopsBytes::default())
    }
}
