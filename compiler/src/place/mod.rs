//! Heterogeneous placement: what each kernel costs on each unit of a phone SoC, and which unit
//! runs it.
//!
//! A kernel is one top-level node of the optimized graph (a fused `kernel` region is one).
//! [`Problem::build`] prices every kernel on every unit with the device profile's cost model:
//! - CPU: the profile's roofline ([`DeviceProfile::cpu_estimate_us`]: f32 FLOPs, 8-bit integer
//!   operations and DRAM bytes at the profile's peaks and efficiencies, plus a fixed cost per
//!   kernel); the host profile's peaks are measured by `tessera calibrate`.
//! - GPU: the SPIR-V target plans the kernel (it declines what it has no shader for) and its
//!   FLOPs and bytes go through the profile's GPU roofline, one dispatch cost per shader.
//! - NPU: the NPU target compiles the kernel and its simulator counts the cycles (a kernel the
//!   NPU runs only in part is declined: no silent host fallback inside a unit).
//!
//! [`partition`](partition::partition) then assigns the kernels to units by the makespan of a
//! list schedule that charges every hand-over between units (shared DRAM: a signal plus cache
//! maintenance over the buffer, never a copy), and [`exact`](partition::exact) finds the
//! optimum of the same objective on small graphs.

pub mod extract;
pub mod partition;
pub mod report;

use std::collections::HashMap;

use tessera_ir::{Bindings, Device as Unit, Graph, Node, Op, Value};
use tessera_passes::profile::DeviceProfile;
use tessera_target_npu as npu;
use tessera_target_spirv as spirv;

pub use partition::{evaluate, exact, partition, Placement, Schedule};

/// The units in the order of a cost array's entries.
pub const UNITS: [Unit; 3] = [Unit::Cpu, Unit::Gpu, Unit::Npu];

pub fn unit_index(u: Unit) -> usize {
    match u {
        Unit::Cpu => 0,
        Unit::Gpu => 1,
        Unit::Npu => 2,
    }
}

/// A unit's verdict on one kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum UnitCost {
    /// Microseconds, and how they were found (roofline terms, simulated cycles).
    Runs { us: f64, how: String },
    /// The unit cannot run it, and why.
    Declined(String),
}

impl UnitCost {
    pub fn us(&self) -> Option<f64> {
        match self {
            UnitCost::Runs { us, .. } => Some(*us),
            UnitCost::Declined(_) => None,
        }
    }
}

/// One kernel to place.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub node: Node,
    /// `n12 matmul_integer_cast_mul_add`.
    pub name: String,
    /// The kernels whose results it reads, with the bytes it reads from each.
    pub preds: Vec<(usize, u64)>,
    /// Bytes it reads from the graph's inputs (which arrive in CPU memory).
    pub input_bytes: u64,
    /// Bytes of its results that are graph outputs (which the caller reads on the CPU).
    pub output_bytes: u64,
    pub flops: u64,
    pub int_ops: u64,
    pub bytes: u64,
    /// Its principal op (a region's first), for the CPU's per-class calibration.
    pub class: String,
    /// Costs on the CPU, GPU and NPU ([`UNITS`] order).
    pub cost: [UnitCost; 3],
}

impl Kernel {
    pub fn us(&self, u: Unit) -> Option<f64> {
        self.cost[unit_index(u)].us()
    }
}

/// Kernels in execution order, with their costs, and the profile that priced them.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kernels: Vec<Kernel>,
    pub profile: DeviceProfile,
    /// The sizes the symbolic dims were priced at.
    pub bindings: Bindings,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{value}: dim {dim} is not bound (give its size, e.g. --bind {dim}=128)")]
    Unbound { value: Value, dim: String },
    #[error("no unit can run kernel {kernel}: {why}")]
    NoUnit { kernel: String, why: String },
    #[error("{0}")]
    Other(String),
}

fn numel(s: &[usize]) -> u64 {
    s.iter().map(|&d| d as u64).product()
}

/// Shapes of every value of `g` (a model or a region's body) at `b`.
pub fn value_shapes(g: &Graph, b: &Bindings) -> Result<Vec<Vec<usize>>, PlaceError> {
    let mut out = vec![Vec::new(); g.n_values()];
    for (v, vd) in g.values() {
        out[v.index()] = vd
            .ty
            .shape
            .dims()
            .iter()
            .map(|d| b.resolve(d).ok_or_else(|| PlaceError::Unbound { value: v, dim: d.to_string() }))
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

fn bytes_of(g: &Graph, shapes: &[Vec<usize>], v: Value) -> u64 {
    (numel(&shapes[v.index()]) * g.ty(v).dtype.bits() as u64).div_ceil(8)
}

/// A kernel's class: its op, or for a region its first op (`matmul_integer` for
/// `matmul_integer_cast_mul_add`).
pub fn kernel_class(g: &Graph, n: Node) -> String {
    let nd = g.node(n);
    match &nd.body {
        Some(body) => body.nodes().next().map_or("kernel".into(), |(bn, _)| kernel_class(body, bn)),
        None => nd.op.name().to_string(),
    }
}

/// DRAM bytes a CPU kernel moves: its operands and results, except that a gather reads only
/// the rows it picks, and a dynamic quantization reads its input twice (range, then values).
fn cpu_bytes(g: &Graph, n: Node, shapes: &[Vec<usize>], read: u64, written: u64) -> u64 {
    let nd = g.node(n);
    match &nd.op {
        Op::Gather { .. } | Op::GatherNd { .. } => bytes_of(g, shapes, nd.inputs[1]) + 2 * written,
        Op::DynamicQuantize => 2 * read + written,
        _ => read + written,
    }
}

/// (f32 FLOPs, integer operations) of one node (a multiply-add counts 2; exp, erf and the like 8).
fn work(g: &Graph, n: Node, shapes: &[Vec<usize>], b: &Bindings) -> (u64, u64) {
    let nd = g.node(n);
    let out = |i: usize| numel(&shapes[nd.outputs[i].index()]);
    let dim = |v: Value, i: usize| shapes[v.index()].get(i).copied().unwrap_or(1) as u64;
    let last = |v: Value| shapes[v.index()].last().copied().unwrap_or(1) as u64;
    match &nd.op {
        Op::MatMul | Op::QMatMul => (2 * out(0) * last(nd.inputs[0]), 0),
        Op::MatMulInteger { .. } => (0, 2 * out(0) * last(nd.inputs[0])),
        Op::Gemm { trans_a, .. } => (2 * out(0) * dim(nd.inputs[0], if *trans_a { 0 } else { 1 }), 0),
        Op::Attention { .. } => {
            // q [b, h, s, d], k [b, h, t, d]: two products and a softmax over s x t scores.
            let q = &shapes[nd.inputs[0].index()];
            let t = shapes[nd.inputs[1].index()].iter().rev().nth(1).copied().unwrap_or(1) as u64;
            let d = last(nd.inputs[0]);
            let rows = numel(q) / d.max(1);
            (rows * t * (4 * d + 8), 0)
        }
        Op::Unary(u) => {
            use tessera_ir::UnaryOp as U;
            let per = match u {
                U::Exp | U::Log | U::Tanh | U::Erf | U::Sigmoid | U::Gelu | U::GeluTanh | U::Silu | U::Sin | U::Cos => {
                    8
                }
                U::Sqrt | U::Rsqrt | U::Reciprocal => 4,
                _ => 1,
            };
            (per * out(0), 0)
        }
        Op::Binary(_) | Op::Where | Op::Cast { .. } | Op::Quantize { .. } | Op::Dequantize { .. } => {
            let int = nd.outputs.iter().all(|&v| g.ty(v).dtype.is_int());
            if int {
                (0, out(0))
            } else {
                (out(0), 0)
            }
        }
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } => (8 * out(0), 0),
        Op::DynamicQuantize | Op::FakeQuant { .. } => (4 * numel(&shapes[nd.inputs[0].index()]), 0),
        Op::Reduce { .. } | Op::ArgMax { .. } => (numel(&shapes[nd.inputs[0].index()]), 0),
        Op::Kernel { .. } => {
            let Some(body) = &nd.body else { return (0, 0) };
            let Ok(bs) = value_shapes(body, b) else { return (0, 0) };
            body.nodes().fold((0, 0), |(f, i), (bn, _)| {
                let (bf, bi) = work(body, bn, &bs, b);
                (f + bf, i + bi)
            })
        }
        _ => (0, 0),
    }
}

/// The GPU profile's limits, for planning off the device.
fn gpu_limits(p: &DeviceProfile) -> Option<spirv::Limits> {
    let g = p.gpu.as_ref()?;
    Some(spirv::Limits {
        max_invocations: g.max_workgroup_invocations,
        max_shared_bytes: g.shared_memory_bytes,
        max_groups: [65535; 3],
        max_push_bytes: 128,
        subgroup_arithmetic: g.subgroup_size > 1,
        fast_shared_memory: true,
    })
}

/// Plans node `n` of `g` on the GPU: (dispatches, flops, bytes), or why not.
fn gpu_plan(
    g: &Graph,
    n: Node,
    shapes: &[Vec<usize>],
    b: &Bindings,
    limits: &spirv::Limits,
) -> Result<(u64, u64, u64), String> {
    let nd = g.node(n);
    if nd.outputs.len() == 1 {
        let ins: Vec<&[usize]> = nd.inputs.iter().map(|v| shapes[v.index()].as_slice()).collect();
        match spirv::kernels::plan(g, n, &ins, &shapes[nd.outputs[0].index()], limits) {
            Ok(spirv::kernels::Plan::View) => return Ok((0, 0, 0)),
            Ok(spirv::kernels::Plan::Dispatch { bytes_read, bytes_written, flops, .. }) => {
                return Ok((1, flops, bytes_read + bytes_written))
            }
            Err(e) if nd.body.is_none() => return Err(e.to_string()),
            Err(_) => {}
        }
    }
    // A region with no single shader runs its body node by node.
    let Some(body) = &nd.body else {
        return Err(format!(
            "{}: {} results (the GPU target plans single-result nodes)",
            nd.op.name(),
            nd.outputs.len()
        ));
    };
    let bs = value_shapes(body, b).map_err(|e| e.to_string())?;
    let mut total = (0, 0, 0);
    for (bn, _) in body.nodes() {
        let (d, f, y) = gpu_plan(body, bn, &bs, b, limits)?;
        total = (total.0 + d, total.1 + f, total.2 + y);
    }
    Ok(total)
}

/// Runs kernel `n` alone on the simulated NPU (zeros as its run-time operands): its cycles,
/// or why the NPU does not run all of it.
fn npu_cycles(
    g: &Graph,
    n: Node,
    shapes: &[Vec<usize>],
    b: &Bindings,
    dev: &npu::Device,
    cache: &mut HashMap<String, Result<(u64, String), String>>,
) -> Result<(u64, String), String> {
    let nd = g.node(n);
    if !contains_integer_product(nd) {
        let why = match &nd.op {
            Op::MatMul | Op::Gemm { .. } | Op::QMatMul | Op::Attention { .. } => {
                "float activations without quantization parameters: the NPU multiplies integers"
            }
            _ => "not an integer matrix product (the NPU target compiles matmul_integer and its output stage)",
        };
        return Err(why.into());
    }
    let ex = extract::extract(g, &[n]);
    // The same kernel at the same shapes (each layer's) is simulated once: weights' values do
    // not change the cycles.
    let key = format!(
        "{}|{:?}",
        tessera_ir::print(&ex.graph).lines().filter(|l| !l.contains("summary(")).collect::<Vec<_>>().join("\n"),
        ex.inputs.iter().map(|v| &shapes[v.index()]).collect::<Vec<_>>()
    );
    if let Some(r) = cache.get(&key) {
        return r.clone();
    }
    let r = (|| {
        let inputs = ex.zero_inputs(g, shapes, b)?;
        let model = npu::NpuModel::new(ex.graph.clone(), dev.clone());
        let (_, report) = model.run(&inputs).map_err(|e| e.to_string())?;
        if let Some((op, why)) = report.host.iter().find(|(op, _)| !is_view_name(op)) {
            return Err(format!("its {op} would run on the host: {why}"));
        }
        let t = report.total();
        Ok((t.cycles, format!("{} cycles, MAC {:.0}%", t.cycles, 100.0 * t.mac_utilization())))
    })();
    cache.insert(key, r.clone());
    r
}

fn is_view_name(op: &str) -> bool {
    matches!(op, "reshape" | "squeeze" | "unsqueeze" | "identity")
}

fn contains_integer_product(nd: &tessera_ir::NodeData) -> bool {
    matches!(nd.op, Op::MatMulInteger { .. })
        || nd.body.as_ref().is_some_and(|b| b.nodes().any(|(_, bn)| contains_integer_product(bn)))
}

impl Problem {
    /// Prices every top-level node of `g` (optimized, fused) on every unit of `profile`, with
    /// symbolic dims at `bindings`.
    pub fn build(g: &Graph, bindings: &Bindings, profile: &DeviceProfile) -> Result<Problem, PlaceError> {
        let shapes = value_shapes(g, bindings)?;
        let limits = gpu_limits(profile);
        let npu_dev = npu::Device::from_profile(profile);
        let mut npu_cache = HashMap::new();
        let mut producer: HashMap<Value, usize> = HashMap::new();
        let graph_inputs: Vec<Value> = g.inputs().iter().map(|(_, v)| *v).collect();
        let graph_outputs: Vec<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
        let mut kernels = Vec::new();
        for (n, nd) in g.nodes() {
            let i = kernels.len();
            let mut preds: Vec<(usize, u64)> = Vec::new();
            let mut input_bytes = 0;
            let mut read = 0;
            for &v in &nd.inputs {
                let by = bytes_of(g, &shapes, v);
                read += by;
                if let Some(&p) = producer.get(&v) {
                    match preds.iter_mut().find(|(q, _)| *q == p) {
                        Some(e) => e.1 += by,
                        None => preds.push((p, by)),
                    }
                } else if graph_inputs.contains(&v) {
                    input_bytes += by;
                }
            }
            let written: u64 = nd.outputs.iter().map(|&v| bytes_of(g, &shapes, v)).sum();
            let output_bytes =
                nd.outputs.iter().filter(|v| graph_outputs.contains(v)).map(|&v| bytes_of(g, &shapes, v)).sum();
            for &v in &nd.outputs {
                producer.insert(v, i);
            }
            let (flops, int_ops) = work(g, n, &shapes, bindings);
            let class = kernel_class(g, n);
            let bytes = cpu_bytes(g, n, &shapes, read, written);
            let cpu = UnitCost::Runs {
                us: profile.cpu_kernel_us(&class, flops, int_ops, bytes),
                how: format!(
                    "roofline: {:.2} MFLOP, {:.2} MOP int8, {:.1} KB",
                    flops as f64 / 1e6,
                    int_ops as f64 / 1e6,
                    bytes as f64 / 1e3
                ),
            };
            let gpu = match (&limits, &profile.gpu) {
                (Some(l), Some(gp)) => match gpu_plan(g, n, &shapes, bindings, l) {
                    Ok((0, _, _)) => UnitCost::Runs { us: 0.0, how: "a view: no dispatch".into() },
                    Ok((d, f, y)) => {
                        // One roofline term per kernel, a dispatch cost per shader.
                        let us = profile.gpu_estimate_us(f, y).unwrap_or(0.0) + (d - 1) as f64 * gp.dispatch_us;
                        UnitCost::Runs {
                            us,
                            how: format!("{d} shader(s), {:.2} MFLOP, {:.1} KB", f as f64 / 1e6, y as f64 / 1e3),
                        }
                    }
                    Err(why) => UnitCost::Declined(why),
                },
                _ => UnitCost::Declined(format!("profile {} has no GPU", profile.name)),
            };
            let npu = match &npu_dev {
                Some(dev) => match npu_cycles(g, n, &shapes, bindings, dev, &mut npu_cache) {
                    Ok((cycles, how)) => UnitCost::Runs { us: profile.npu_us(cycles).unwrap_or(0.0), how },
                    Err(why) => UnitCost::Declined(why),
                },
                None => UnitCost::Declined(format!("profile {} has no NPU", profile.name)),
            };
            let name = match &nd.op {
                Op::Kernel { name } => format!("{n} {name}"),
                op => format!("{n} {}", op.name()),
            };
            kernels.push(Kernel {
                node: n,
                name,
                preds,
                input_bytes,
                output_bytes,
                flops,
                int_ops,
                bytes,
                class,
                cost: [cpu, gpu, npu],
            });
        }
        Ok(Problem { kernels, profile: profile.clone(), bindings: bindings.clone() })
    }

    /// Bindings to price a graph at: the given sizes, then 1 for the symbols of the graph's
    /// inputs that name a batch and 128 for the others (a sequence length).
    pub fn default_bindings(g: &Graph, given: &[(String, usize)]) -> Bindings {
        let mut b = Bindings::default();
        for (name, size) in given {
            b.set(name, *size);
        }
        for (_, v) in g.inputs() {
            for d in g.ty(*v).shape.dims() {
                if let tessera_ir::Dim::Sym(s) = d {
                    if b.get(s).is_none() {
                        b.set(s, if s.contains("batch") { 1 } else { 128 });
                    }
                }
            }
        }
        b
    }
}

/// The NPU's roofline for a `batch x [m, k] x [k, n]` integer product: the MACs at the array's
/// full rate or the DRAM bytes (activations of `a_bytes`, weights as stored, results of
/// `out_bytes`) at the DMA's rate, whichever is longer, plus one array fill and one transfer
/// setup. The simulator's cycles correct it (`tessera calibrate` reports the error).
pub fn npu_roofline_cycles(
    dev: &npu::Device,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a_bytes: usize,
    out_bytes: usize,
) -> f64 {
    let macs = (batch * m * k * n) as f64;
    let compute = macs / (dev.mac_rows as f64 * dev.mac_cols as f64);
    // 8-bit weights (4-bit ones are half, but the products priced here are 8-bit).
    let weights = (k * n) as f64;
    let bytes = (batch * m * k * a_bytes) as f64 + weights + (batch * m * n * out_bytes) as f64;
    let dma = bytes / dev.dram_bytes_per_cycle;
    compute.max(dma) + dev.matmul_fill_cycles as f64 + dev.dma_setup_cycles as f64
}
