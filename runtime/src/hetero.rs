//! Heterogeneous execution: a graph placed across the CPU, GPU and NPU by the partitioner,
//! run with one queue per unit, each kernel run as soon as its operands are ready.
//!
//! The placement's runs of consecutive kernels on one unit become segments, each a graph of
//! its own compiled for its unit: the CPU target's JIT program, the Vulkan executor's
//! `GpuModel` (no host fallback: a node it declines fails the run, as placement never puts one
//! there), the NPU model on the simulator. A run starts one worker thread per unit; the
//! calling thread hands each segment to its unit's queue when the segments it reads have
//! finished, so units really overlap. Every segment's real start and end go in the report,
//! for the `--trace` timeline.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use tessera_compiler::passes::profile::DeviceProfile;
use tessera_compiler::place::{self, extract::Extracted, Placement, Problem, UnitCost};
use tessera_ir::{Bindings, Device as Unit, Graph, Node, Tensor};

use crate::vulkan;

/// Why a heterogeneous model could not be made or run.
#[derive(Debug, thiserror::Error)]
pub enum HeteroError {
    #[error("placement: {0}")]
    Place(#[from] place::PlaceError),
    #[error("segment {segment} on the {unit} ({kernels}): {message}")]
    Segment { segment: usize, unit: Unit, kernels: String, message: String },
    #[error(transparent)]
    Input(#[from] tessera_ir::InterpError),
    #[error("{0}")]
    Other(String),
}

enum Engine {
    Cpu(Box<tessera_target_cpu::Program>),
    Gpu(Box<vulkan::GpuModel>),
    Npu(Box<tessera_target_npu::NpuModel>),
}

/// A run of consecutive kernels on one unit.
pub struct Segment {
    pub unit: Unit,
    pub nodes: Vec<Node>,
    /// `n3 layer_norm, n4 dynamic_quantize, ...` (short).
    pub label: String,
    ex: Extracted,
    engine: Engine,
    /// Segments whose results it reads.
    deps: Vec<usize>,
}

/// A real span of one run: a segment on its unit.
#[derive(Clone, Debug)]
pub struct SegmentRun {
    pub segment: usize,
    pub unit: Unit,
    pub label: String,
    pub start_us: f64,
    pub end_us: f64,
    /// Its kernels, laid end to end from the segment's start: (name, microseconds, detail).
    /// CPU kernels with their measured times, GPU kernels with their device times where the
    /// queue has timestamps, NPU kernels with their share of the segment by simulated cycles.
    pub kernels: Vec<(String, f64, String)>,
}

/// What a segment's engine says it ran.
type Detail = Vec<(String, f64, String)>;

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct HeteroReport {
    pub spans: Vec<SegmentRun>,
    /// Work that ran somewhere other than its placement said (none expected).
    pub fallbacks: Vec<String>,
    pub total_us: f64,
}

impl HeteroReport {
    /// Microseconds during which at least two units were busy at once.
    pub fn overlap_us(&self) -> f64 {
        let mut edges: Vec<(f64, i32)> = Vec::new();
        for s in &self.spans {
            edges.push((s.start_us, 1));
            edges.push((s.end_us, -1));
        }
        edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut busy, mut last, mut overlap) = (0, 0.0, 0.0);
        for (t, d) in edges {
            if busy >= 2 {
                overlap += t - last;
            }
            busy += d;
            last = t;
        }
        overlap
    }
}

/// A graph placed on the units of a profile and compiled per segment.
pub struct HeteroModel {
    graph: Graph,
    pub problem: Problem,
    pub placement: Placement,
    pub segments: Vec<Segment>,
    /// Why a unit of the profile is not used on this machine (no Vulkan device).
    pub unavailable: Vec<String>,
}

fn label(g: &Graph, nodes: &[Node]) -> String {
    let names: Vec<String> = nodes
        .iter()
        .map(|&n| match &g.node(n).op {
            tessera_ir::Op::Kernel { name } => format!("{n} {name}"),
            op => format!("{n} {}", op.name()),
        })
        .collect();
    if names.len() <= 3 {
        names.join(", ")
    } else {
        format!("{}, ... {} ({} kernels)", names[0], names[names.len() - 1], names.len())
    }
}

impl HeteroModel {
    /// Places `graph` (optimized by [`crate::HETERO_PIPELINE`]) on `profile`'s units, pricing
    /// kernels at `bindings`, and compiles each segment. Without a Vulkan device here, the GPU
    /// is left out of the placement and that is recorded in `unavailable`.
    pub fn new(
        graph: Graph,
        profile: &DeviceProfile,
        bindings: &Bindings,
        cpu: &tessera_target_cpu::CpuOptions,
    ) -> Result<HeteroModel, HeteroError> {
        let mut problem = Problem::build(&graph, bindings, profile)?;
        let mut unavailable = Vec::new();
        let uses_gpu = problem.kernels.iter().any(|k| k.us(Unit::Gpu).is_some());
        let vk = if uses_gpu {
            match vulkan::Vulkan::new() {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    let why = format!("no GPU on this machine ({e})");
                    for k in &mut problem.kernels {
                        k.cost[1] = UnitCost::Declined(why.clone());
                    }
                    unavailable.push(format!("gpu: {why}"));
                    None
                }
            }
        } else {
            None
        };
        let placement = place::partition(&problem)?;
        Self::with_placement(graph, problem, placement, vk, cpu, unavailable)
    }

    /// Compiles the segments of a given placement.
    pub fn with_placement(
        graph: Graph,
        problem: Problem,
        placement: Placement,
        vk: Option<Arc<vulkan::Vulkan>>,
        cpu: &tessera_target_cpu::CpuOptions,
        unavailable: Vec<String>,
    ) -> Result<HeteroModel, HeteroError> {
        let assign = &placement.schedule.assign;
        let mut runs: Vec<(Unit, Vec<Node>)> = Vec::new();
        for (k, kern) in problem.kernels.iter().enumerate() {
            match runs.last_mut() {
                Some((u, nodes)) if *u == assign[k] => nodes.push(kern.node),
                _ => runs.push((assign[k], vec![kern.node])),
            }
        }
        let mut segment_of: HashMap<Node, usize> = HashMap::new();
        for (i, (_, nodes)) in runs.iter().enumerate() {
            for &n in nodes {
                segment_of.insert(n, i);
            }
        }
        let npu_dev = tessera_target_npu::Device::from_profile(&problem.profile);
        let mut segments = Vec::new();
        for (i, (unit, nodes)) in runs.into_iter().enumerate() {
            let ex = place::extract::extract(&graph, &nodes);
            let label = label(&graph, &nodes);
            let err = |message: String| HeteroError::Segment { segment: i, unit, kernels: label.clone(), message };
            let engine = match unit {
                Unit::Cpu => {
                    Engine::Cpu(Box::new(tessera_target_cpu::compile(&ex.graph, cpu).map_err(|e| err(e.to_string()))?))
                }
                Unit::Gpu => {
                    let vk =
                        vk.clone().ok_or_else(|| err("placed on the GPU, but there is no Vulkan device".into()))?;
                    Engine::Gpu(Box::new(vulkan::GpuModel::new(vk, ex.graph.clone())))
                }
                Unit::Npu => {
                    let dev = npu_dev.clone().ok_or_else(|| err("the profile has no NPU".into()))?;
                    Engine::Npu(Box::new(tessera_target_npu::NpuModel::new(ex.graph.clone(), dev)))
                }
            };
            let mut deps: Vec<usize> = Vec::new();
            for v in &ex.inputs {
                if let tessera_ir::ValueDef::Result(n, _) = graph.value(*v).def {
                    let d = segment_of[&n];
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
            }
            segments.push(Segment { unit, nodes, label, ex, engine, deps });
        }
        Ok(HeteroModel { graph, problem, placement, segments, unavailable })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn run_segment(&self, s: &Segment, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<String>, Detail), String> {
        match &s.engine {
            Engine::Cpu(p) => {
                let opts = tessera_target_cpu::RunOptions { profile: true };
                let (o, times) = p.run_profiled(inputs, &opts).map_err(|e| e.to_string())?;
                let detail = p.step_names().into_iter().zip(times).map(|(n, t)| (n, t * 1e6, String::new())).collect();
                Ok((o, Vec::new(), detail))
            }
            Engine::Gpu(m) => {
                let (o, r) = m.run(inputs, vulkan::Fallback::Fail).map_err(|e| e.to_string())?;
                let detail = r
                    .kernels
                    .iter()
                    .filter_map(|k| {
                        k.device_us
                            .map(|us| (format!("n{} {}", k.node, k.op), us, format!("{:?} x {:?}", k.groups, k.local)))
                    })
                    .collect();
                Ok((o, Vec::new(), detail))
            }
            Engine::Npu(m) => {
                let (o, report) = m.run(inputs).map_err(|e| e.to_string())?;
                let fallbacks = report
                    .host
                    .iter()
                    .map(|(op, why)| format!("{op} of segment {} ran on the host: {why}", s.label))
                    .collect();
                let detail = report
                    .kernels
                    .iter()
                    .map(|k| {
                        let us = k.stats.cycles as f64 / m.device().clock_mhz;
                        (
                            format!("{} {}", k.place, k.what),
                            us,
                            format!(
                                "{} cycles, MAC {:.0}%, DMA hidden {:.0}% (simulated phone time)",
                                k.stats.cycles,
                                100.0 * k.stats.mac_utilization(),
                                100.0 * k.stats.dma_hidden()
                            ),
                        )
                    })
                    .collect();
                Ok((o, fallbacks, detail))
            }
        }
    }

    /// Runs on inputs in the graph's input order: one worker thread per unit, segments queued
    /// on their unit as soon as the segments they read have finished.
    pub fn run(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, HeteroReport), HeteroError> {
        let g = &self.graph;
        let b = tessera_ir::bind_inputs(g, inputs)?;
        let mut values: Vec<Option<Tensor>> = vec![None; g.n_values()];
        for ((_, v), t) in g.inputs().iter().zip(inputs) {
            values[v.index()] = Some(t.clone());
        }
        let t0 = Instant::now();
        let mut report = HeteroReport::default();
        let n = self.segments.len();
        let mut waiting: Vec<usize> = self.segments.iter().map(|s| s.deps.len()).collect();
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, s) in self.segments.iter().enumerate() {
            for &d in &s.deps {
                readers[d].push(i);
            }
        }
        type Done = (usize, Result<(Vec<Tensor>, Vec<String>, Detail), String>, f64, f64);
        let result: Result<(), HeteroError> = std::thread::scope(|scope| {
            let (done_tx, done_rx) = mpsc::channel::<Done>();
            let mut queues: HashMap<Unit, mpsc::Sender<(usize, Vec<Tensor>)>> = HashMap::new();
            for unit in place::UNITS {
                if !self.segments.iter().any(|s| s.unit == unit) {
                    continue;
                }
                let (tx, rx) = mpsc::channel::<(usize, Vec<Tensor>)>();
                queues.insert(unit, tx);
                let done = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("tessera-{unit}"))
                    .spawn_scoped(scope, move || {
                        for (i, ins) in rx {
                            let start = t0.elapsed().as_secs_f64() * 1e6;
                            let r = self.run_segment(&self.segments[i], &ins);
                            let end = t0.elapsed().as_secs_f64() * 1e6;
                            if done.send((i, r, start, end)).is_err() {
                                break;
                            }
                        }
                    })
                    .map_err(|e| HeteroError::Other(format!("cannot start the {unit} queue: {e}")))?;
            }
            drop(done_tx);
            let submit = |i: usize, values: &[Option<Tensor>]| -> Result<(), HeteroError> {
                let s = &self.segments[i];
                let ins = s.ex.gather(values, &b).map_err(|message| HeteroError::Segment {
                    segment: i,
                    unit: s.unit,
                    kernels: s.label.clone(),
                    message,
                })?;
                queues[&s.unit].send((i, ins)).map_err(|_| HeteroError::Other(format!("the {} queue stopped", s.unit)))
            };
            for (i, w) in waiting.iter().enumerate() {
                if *w == 0 {
                    submit(i, &values)?;
                }
            }
            let mut finished = 0;
            while finished < n {
                let (i, r, start, end) =
                    done_rx.recv().map_err(|_| HeteroError::Other("a unit's queue stopped".into()))?;
                let s = &self.segments[i];
                let (outs, fallbacks, kernels) = r.map_err(|message| HeteroError::Segment {
                    segment: i,
                    unit: s.unit,
                    kernels: s.label.clone(),
                    message,
                })?;
                report.fallbacks.extend(fallbacks);
                report.spans.push(SegmentRun {
                    segment: i,
                    unit: s.unit,
                    label: s.label.clone(),
                    start_us: start,
                    end_us: end,
                    kernels,
                });
                for (v, t) in s.ex.outputs.iter().zip(outs) {
                    values[v.index()] = Some(t);
                }
                finished += 1;
                for &r in &readers[i] {
                    waiting[r] -= 1;
                    if waiting[r] == 0 {
                        submit(r, &values)?;
                    }
                }
            }
            Ok(())
            // Dropping the queues ends the workers.
        });
        result?;
        report.total_us = t0.elapsed().as_secs_f64() * 1e6;
        let outputs = g
            .outputs()
            .iter()
            .map(|(name, v)| {
                values[v.index()].clone().ok_or_else(|| HeteroError::Other(format!("output {name:?} was not computed")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((outputs, report))
    }

    /// The run's real spans as timeline spans (process `host (measured)`): each segment on its
    /// unit's row, its kernels on the row below, fallbacks and units left out on their own rows.
    pub fn spans(&self, report: &HeteroReport) -> Vec<place::report::Span> {
        let host = "host (measured)".to_string();
        let mut v = Vec::new();
        for s in &report.spans {
            v.push(place::report::Span {
                process: host.clone(),
                row: s.unit.to_string(),
                name: s.label.clone(),
                start_us: s.start_us,
                dur_us: s.end_us - s.start_us,
                args: vec![("segment".into(), s.segment.to_string())],
            });
            let mut t = s.start_us;
            for (name, us, detail) in &s.kernels {
                let mut args = Vec::new();
                if !detail.is_empty() {
                    args.push(("detail".to_string(), detail.clone()));
                }
                v.push(place::report::Span {
                    process: host.clone(),
                    row: format!("{} kernels", s.unit),
                    name: name.clone(),
                    start_us: t,
                    dur_us: *us,
                    args,
                });
                t += us;
            }
        }
        for (row, items) in [("fallback", &report.fallbacks), ("not used here", &self.unavailable)] {
            for f in items {
                v.push(place::report::Span {
                    process: host.clone(),
                    row: row.into(),
                    name: f.clone(),
                    start_us: 0.0,
                    dur_us: 0.0,
                    args: Vec::new(),
                });
            }
        }
        v
    }
}
