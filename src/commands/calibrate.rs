//! `tessera calibrate`: measure this machine into the `host` device profile, and report how
//! well the cost model predicts measured CPU kernels and simulated NPU cycles.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tessera_compiler::passes::profile::{self, DeviceProfile};
use tessera_compiler::place::{self, Problem};
use tessera_ir::{DType, Graph, Op, Shape, Tensor, TensorType};

#[derive(Args)]
pub struct CalibrateArgs {
    /// Where to write the profile [default: $TESSERA_HOST_PROFILE, or ~/.cache/tessera/host.toml,
    /// which `--profile host` reads].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The model whose CPU kernels check the cost model against measured times (and whose
    /// integer products check the NPU roofline against the simulator).
    #[arg(long, default_value = ".cache/models/minilm-l3-int8-dynamic.onnx")]
    pub model: PathBuf,
    /// Sequence length for the check.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// The phone profile whose NPU the roofline check uses.
    #[arg(long, default_value = "snapdragon-8-gen-3")]
    pub npu_profile: String,
    /// Only check an existing host profile (no measuring).
    #[arg(long)]
    pub check_only: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// STREAM triad (a = b + s * c) over arrays far larger than the caches, on `threads` threads: GB/s.
fn triad_gbps(threads: usize) -> f64 {
    let n = 8 << 20; // 8M f32 per array: 3 x 32 MB
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut a = vec![0.0f32; n];
    let chunk = n.div_ceil(threads);
    let mut runs = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a.chunks_mut(chunk).zip(b.chunks(chunk)).zip(c.chunks(chunk)) {
                s.spawn(move || {
                    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + 3.0 * z;
                    }
                });
            }
        });
        runs.push((3 * n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    std::hint::black_box(&a);
    median(runs)
}

/// A product `[m, k] x [k, n]` with a constant weight, f32 or u8 x i8.
fn product_graph(m: usize, k: usize, n: usize, int8: bool) -> Graph {
    let mut g = Graph::new("calibrate");
    let (adt, wdt) = if int8 { (DType::U8, DType::I8) } else { (DType::F32, DType::F32) };
    let a = g.add_input("a", TensorType::new(adt, Shape::from_static(&[m, k])));
    let bytes: Vec<u8> = if int8 {
        // Weights of a real model's size (|w| < 64), so the integer tiles take their fast path.
        (0..k * n).map(|i| ((i * 7 % 127) as i32 - 63) as i8 as u8).collect()
    } else {
        (0..k * n).flat_map(|i| (((i * 7 % 251) as f32 - 125.0) / 125.0).to_le_bytes()).collect()
    };
    let w = g.add_const(TensorType::new(wdt, Shape::from_static(&[k, n])), tessera_ir::ConstData::from_vec(bytes));
    let out = if int8 {
        let za = g
            .add_const(TensorType::new(DType::U8, Shape::from_static(&[])), tessera_ir::ConstData::from_vec(vec![128]));
        let zb =
            g.add_const(TensorType::new(DType::I8, Shape::from_static(&[])), tessera_ir::ConstData::from_vec(vec![0]));
        g.add_op(Op::MatMulInteger { pair_saturate: false }, vec![a, w, za, zb]).expect("a valid product")[0]
    } else {
        g.add_op(Op::MatMul, vec![a, w]).expect("a valid product")[0]
    };
    g.add_output("y", out);
    g
}

/// Inputs for `g` with its symbols at `b`: token ids of 1 (i64), zeros otherwise.
fn inputs_at(g: &Graph, b: &tessera_ir::Bindings) -> Vec<Tensor> {
    g.inputs()
        .iter()
        .map(|(_, v)| {
            let ty = g.ty(*v);
            let shape: Vec<usize> = ty.shape.dims().iter().map(|d| b.resolve(d).unwrap_or(1)).collect();
            let numel = shape.iter().product();
            if ty.dtype == DType::I64 {
                Tensor::from_i64(DType::I64, &shape, vec![1; numel]).expect("ids")
            } else {
                Tensor::zeros(ty.dtype, &shape).expect("zeros")
            }
        })
        .collect()
}

/// A model file through a pipeline, with its bindings at `seq`.
fn optimized(model: &Path, pipeline: &str, seq: usize) -> anyhow::Result<(Graph, tessera_ir::Bindings)> {
    let mut g = super::load_graph(model)?;
    let mut p = tessera_compiler::passes::Pipeline::parse(pipeline)?;
    p.verify_each = false;
    p.run(&mut g, &mut |_| {})?;
    let b = Problem::default_bindings(&g, &[("sequence_length".into(), seq)]);
    Ok((g, b))
}

/// A compiled graph and its inputs, run with per-step times, sampled in rounds.
struct Timed {
    name: String,
    prog: tessera_target_cpu::Program,
    inputs: Vec<Tensor>,
    /// Per round, each step's microseconds.
    rounds: Vec<Vec<f64>>,
}

impl Timed {
    /// Compiles `g` with symbols at `b` (inputs: token ids of 1, else zeros).
    fn new(name: &str, g: &Graph, threads: usize, b: &tessera_ir::Bindings) -> anyhow::Result<Timed> {
        let opts = tessera_target_cpu::CpuOptions { threads, ..Default::default() };
        let prog = tessera_target_cpu::compile(g, &opts).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let inputs = inputs_at(g, b);
        let mut t = Timed { name: name.into(), prog, inputs, rounds: Vec::new() };
        t.sample()?; // warm up: plans, caches, pages
        t.rounds.clear();
        Ok(t)
    }

    fn sample(&mut self) -> anyhow::Result<()> {
        let opts = tessera_target_cpu::RunOptions { profile: true };
        let (_, steps) =
            self.prog.run_profiled(&self.inputs, &opts).map_err(|e| anyhow::anyhow!("{}: {e}", self.name))?;
        self.rounds.push(steps.into_iter().map(|s| s * 1e6).collect());
        Ok(())
    }

    /// The median over rounds of the steps' total, microseconds.
    fn total_us(&self) -> f64 {
        median(self.rounds.iter().map(|r| r.iter().sum()).collect())
    }

    /// Each step's median, microseconds.
    fn step_us(&self) -> Vec<f64> {
        let n = self.rounds.first().map_or(0, Vec::len);
        (0..n).map(|i| median(self.rounds.iter().map(|r| r[i]).collect())).collect()
    }
}

/// Small kernels as models have them: the scalar products of a dynamic quantization's scale
/// (the pattern of every dynamically quantized transformer), each group after a large
/// elementwise kernel that evicts the caches, with symbolic sizes (each kernel then computes
/// its sizes when it starts). The steps that write at most 4 elements give a kernel's fixed
/// cost. Symbols: `rows` 256.
fn fixed_cost_graph() -> Graph {
    let mut tiny = Graph::new("tiny");
    let big_ty = TensorType::new(DType::F32, Shape(vec![tessera_ir::Dim::sym("rows"), tessera_ir::Dim::Static(1024)]));
    let mut big = tiny.add_input("big", big_ty);
    for i in 0..8 {
        big = tiny.add_op(Op::Binary(tessera_ir::BinaryOp::Add), vec![big, big]).expect("add")[0];
        let dq = tiny.add_op(Op::DynamicQuantize, vec![big]).expect("dynamic_quantize");
        tiny.add_output(&format!("q{i}"), dq[0]);
        for j in 0..3 {
            let c = tiny.add_const(
                TensorType::new(DType::F32, Shape::from_static(&[])),
                tessera_ir::ConstData::from_vec((0.01f32 * (j + 1) as f32).to_le_bytes().to_vec()),
            );
            let y = tiny.add_op(Op::Binary(tessera_ir::BinaryOp::Mul), vec![dq[1], c]).expect("mul")[0];
            tiny.add_output(&format!("y{i}_{j}"), y);
        }
    }
    tiny.add_output("big", big);
    tiny
}

/// The median time of `t`'s steps that write at most 4 elements.
fn small_steps_us(t: &Timed, b: &tessera_ir::Bindings) -> f64 {
    let g = t.prog.graph();
    let small: Vec<bool> = t
        .prog
        .step_names()
        .iter()
        .map(|name| {
            let node = name.split_whitespace().next().unwrap_or("");
            g.nodes().find(|(n, _)| n.to_string() == node).is_some_and(|(_, nd)| {
                g.ty(nd.outputs[0]).shape.dims().iter().map(|d| b.resolve(d).unwrap_or(1)).product::<usize>() <= 4
            })
        })
        .collect();
    median(
        t.rounds
            .iter()
            .flat_map(|r| r.iter().zip(&small).filter(|(_, s)| **s).map(|(x, _)| *x).collect::<Vec<_>>())
            .collect(),
    )
}

/// The model optimized and compiled as a CPU session would, with its bindings at `seq`.
fn model_timed(model: &Path, seq: usize, threads: usize) -> anyhow::Result<(Timed, tessera_ir::Bindings)> {
    let (g, b) = optimized(model, "default", seq)?;
    Ok((Timed::new("model", &g, threads, &b)?, b))
}

/// Each of the model's CPU kernels: predicted by `host` against its measured median.
fn model_rows(host: &DeviceProfile, t: &Timed, b: &tessera_ir::Bindings) -> anyhow::Result<Rows> {
    let problem = Problem::build(t.prog.graph(), b, host)?;
    let mut rows = Vec::new();
    for (name, us) in t.prog.step_names().iter().zip(t.step_us()) {
        let node = name.split_whitespace().next().unwrap_or("");
        let Some(k) = problem.kernels.iter().find(|k| k.name.split_whitespace().next() == Some(node)) else { continue };
        let Some(pred) = k.us(tessera_ir::Device::Cpu) else { continue };
        rows.push((name.clone(), pred, us));
    }
    Ok(rows)
}

/// One cross-thread signal and wake-up, round trip halved: microseconds.
fn handoff_us() -> f64 {
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let (tx2, rx2) = std::sync::mpsc::channel::<u32>();
    let h = std::thread::spawn(move || {
        for v in rx {
            if tx2.send(v).is_err() {
                break;
            }
        }
    });
    let mut runs = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        let _ = tx.send(i);
        let _ = rx2.recv();
        runs.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    drop(tx);
    let _ = h.join();
    median(runs)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "this machine's CPU".into())
}

/// Synthetic kernels, one per class, at shapes unlike any model's: (class, graph text).
const CLASS_KERNELS: &[(&str, &str)] = &[
    ("attention", "v0: f32[1, 8, 200, 64] = input \"q\"\n v1: f32[1, 8, 200, 64] = input \"k\"\n v2: f32[1, 8, 200, 64] = input \"v\"\n v3: f32[1, 1, 1, 200] = input \"m\"\n v4: f32[1, 8, 200, 64] = attention v0, v1, v2, v3 {scale = 0.125, causal = false}"),
    ("layer_norm", "v0: f32[1, 200, 512] = input \"x\"\n v1: f32[512] = input \"s\"\n v2: f32[512] = input \"b\"\n v3: f32[1, 200, 512] = layer_norm v0, v1, v2 {axis = -1, epsilon = 1e-5}"),
    ("softmax", "v0: f32[1, 8, 200, 200] = input \"x\"\n v1: f32[1, 8, 200, 200] = softmax v0 {axis = -1}"),
    ("transpose", "v0: f32[1, 200, 8, 64] = input \"x\"\n v1: f32[1, 8, 200, 64] = transpose v0 {perm = [0, 2, 1, 3]}"),
    ("reshape", "v0: f32[1, 200, 512] = input \"x\"\n v1: f32[1, 200, 8, 64] = reshape v0 {shape = [1, 200, 8, 64]}"),
    ("add", "v0: f32[1, 200, 512] = input \"x\"\n v1: f32[1, 200, 512] = input \"y\"\n v2: f32[1, 200, 512] = add v0, v1"),
    ("mul", "v0: f32[1, 200, 512] = input \"x\"\n v1: f32[1, 200, 1] = input \"y\"\n v2: f32[1, 200, 512] = mul v0, v1"),
    ("dequantize", "v0: u8[1, 200, 512] = input \"x\"\n v1: f32[] = input \"s\"\n v2: u8[] = input \"z\"\n v3: f32[1, 200, 512] = dequantize v0, v1, v2 {axis = 0, block = 0}"),
    ("dynamic_quantize", "v0: f32[1, 200, 512] = input \"x\"\n v1: u8[1, 200, 512], v2: f32[], v3: u8[] = dynamic_quantize v0"),
    ("cast", "v0: i64[1, 200, 512] = input \"x\"\n v1: f32[1, 200, 512] = cast v0 {to = f32}"),
    ("reduce_sum", "v0: f32[1, 200, 512] = input \"x\"\n v1: f32[1, 512] = reduce_sum v0 {axes = [1], keepdims = false}"),
    ("gather", "v0: f32[4096, 512] = input \"t\"\n v1: i64[1, 200] = input \"i\"\n v2: f32[1, 200, 512] = gather v0, v1 {axis = 0}"),
];

/// The synthetic class kernels' graphs ([`CLASS_KERNELS`]).
fn class_graphs() -> anyhow::Result<Vec<(String, Graph)>> {
    // Products are calibrated by the product rates themselves.
    let mut graphs: Vec<(String, Graph)> = Vec::new();
    for (class, body) in CLASS_KERNELS {
        let results = body.lines().last().unwrap_or("").split('=').next().unwrap_or("");
        let first = results.split(',').next().unwrap_or("").trim().split(':').next().unwrap_or("").trim();
        let text = format!("graph @c {{\n {body}\n output \"y\" = {first}\n}}\n");
        let g = tessera_ir::parse(&text).map_err(|e| anyhow::anyhow!("calibration kernel {class}: {e}\n{text}"))?;
        graphs.push((class.to_string(), g));
    }
    Ok(graphs)
}

/// Measures this machine in interleaved rounds (products, the fixed-cost graph, one kernel per
/// class, and the check model when given, each once per round, so that the host's drifting
/// speed moves them all alike); returns the profile's text and the model's rows.
fn measure(threads: usize, check: Option<(&Path, usize)>) -> anyhow::Result<(String, Option<Rows>)> {
    eprintln!("measuring memory bandwidth (STREAM triad, 3 x 32 MB, {threads} threads) ...");
    let bw = triad_gbps(threads);
    eprintln!("  {bw:.1} GB/s; a cross-thread hand-over ...");
    let hand = handoff_us();
    eprintln!("  {hand:.2} us");
    let none = tessera_ir::Bindings::default();
    let (m, k, n) = (256, 1536, 1536);
    let flops = 2.0 * (m * k * n) as f64;
    let mut f32_gemm = Timed::new("f32 product", &product_graph(m, k, n, false), threads, &none)?;
    let mut i8_gemm = Timed::new("int8 product", &product_graph(m, k, n, true), threads, &none)?;
    let mut tb = tessera_ir::Bindings::default();
    tb.set("rows", 256);
    let mut tiny = Timed::new("fixed cost", &fixed_cost_graph(), threads, &tb)?;
    let graphs = class_graphs()?;
    let mut classes: Vec<Timed> =
        graphs.iter().map(|(c, g)| Timed::new(c, g, threads, &none)).collect::<anyhow::Result<_>>()?;
    let mut model = match check {
        Some((path, seq)) => Some(model_timed(path, seq, threads)?),
        None => None,
    };
    const ROUNDS: usize = 11;
    eprintln!(
        "measuring the products (256 x 1536 x 1536), a kernel's fixed cost, {} kernel classes{} in {ROUNDS} interleaved rounds ...",
        classes.len(),
        if model.is_some() { " and the model" } else { "" }
    );
    for _ in 0..ROUNDS {
        f32_gemm.sample()?;
        i8_gemm.sample()?;
        for _ in 0..4 {
            tiny.sample()?;
        }
        for c in &mut classes {
            c.sample()?;
        }
        if let Some((t, _)) = &mut model {
            t.sample()?;
        }
    }
    let (gflops, gops) = (flops / f32_gemm.total_us() / 1e3, flops / i8_gemm.total_us() / 1e3);
    let kernel_us = small_steps_us(&tiny, &tb);
    eprintln!("  f32 {gflops:.1} GFLOP/s, int8 {gops:.1} GOP/s, kernel {kernel_us:.2} us");
    let ghz = tessera_target_cpu::microbench::clock_hz().map_or(0.0, |h| h / 1e9);
    let ghz = if ghz > 0.0 { ghz } else { 1.0 };
    let mut text = format!(
        r#"# This machine, measured by `tessera calibrate` on {date}. Figures are effective rates of
# the CPU target's own kernels (so the efficiencies are 1): the f32 and int8 throughput of a
# 256 x 1536 x 1536 product, STREAM-triad bandwidth, the run time of a small kernel, a
# cross-thread signal and wake-up, and per kernel class its speed against that roofline. No GPU
# or NPU section: Vulkan here is lavapipe, which runs on these same cores, and the NPU is a
# simulator.

name = "host"
soc = "{cpu}"

[[sources]]
url = "https://www.cs.virginia.edu/stream/ref.html"
what = "measured here: STREAM triad {bw:.1} GB/s; products f32 {gflops:.1} GFLOP/s, int8 {gops:.1} GOP/s on {threads} threads; kernel {kernel_us:.2} us; hand-over {hand:.2} us"

[dram]
bandwidth_gbps = {bw:.2}

[cpu]
name = "{cpu}"
clusters = [{{ core = "{cpu}", count = {threads}, ghz = {ghz:.2} }}]
simd_bits = 128            # the CPU target's vectors (Cranelift's 128-bit SIMD)
threads = {threads}
fp32_gflops = {gflops:.2}
int8_gops = {gops:.2}
compute_efficiency = 1.0
bandwidth_efficiency = 1.0
kernel_us = {kernel_us:.3}

[sync]
handoff_us = {hand:.3}
cache_gbps = {bw:.2}       # coherent caches: a hand-over costs at most re-reading the buffer
"#,
        date = chrono_free_date(),
        cpu = cpu_name().replace('"', "'"),
    );
    let base = DeviceProfile::parse(&text, "host.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    text.push_str(
        "\n[cpu.class_efficiency]\n# roofline / measured time of a synthetic kernel of each class (1: as predicted)\n",
    );
    for ((class, g), t) in graphs.iter().zip(&classes) {
        let problem = Problem::build(g, &none, &base)?;
        let Some(kern) = problem.kernels.last() else { continue };
        let pred = kern.us(tessera_ir::Device::Cpu).unwrap_or(0.0) - base.cpu.kernel_us;
        let meas = t.total_us() - base.cpu.kernel_us;
        if pred > 0.0 && meas > 0.0 {
            let e = (pred / meas).clamp(0.02, 50.0);
            eprintln!("  {class}: {e:.2}");
            text.push_str(&format!("{class} = {e:.3}\n"));
        }
    }
    let rows = match &model {
        Some((t, b)) => {
            let host = DeviceProfile::parse(&text, "host.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(model_rows(&host, t, b)?)
        }
        None => None,
    };
    Ok((text, rows))
}

/// Today's date from the system clock, as YYYY-MM-DD (UTC).
fn chrono_free_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The NPU roofline (corrected by a factor fitted on other shapes) against the simulator's
/// cycles for every integer product of `model` at `seq`.
/// Per kernel: its name, the predicted and the measured (or simulated) cost.
type Rows = Vec<(String, f64, f64)>;

fn check_npu(phone: &DeviceProfile, model: &Path, seq: usize) -> anyhow::Result<(f64, Rows)> {
    let dev = tessera_runtime::npu::Device::from_profile(phone)
        .ok_or_else(|| anyhow::anyhow!("profile {} has no NPU", phone.name))?;
    // Fit on shapes unlike the model's.
    let mut ratios = Vec::new();
    for &(m, k, n) in &[(64usize, 256usize, 256usize), (200, 512, 320), (96, 1024, 768), (256, 768, 128)] {
        let g = product_graph(m, k, n, true);
        let cycles = simulate(&g, &dev)?;
        ratios.push(cycles as f64 / place::npu_roofline_cycles(&dev, 1, m, k, n, 1, 4));
    }
    let factor = median(ratios);
    let (g, b) = optimized(model, tessera_runtime::NPU_PIPELINE, seq)?;
    let inputs = inputs_at(&g, &b);
    let model = tessera_runtime::npu::NpuModel::new(g, dev.clone());
    let (_, report) = model.run(&inputs)?;
    let rows = report
        .kernels
        .iter()
        .map(|k| {
            let out_bytes = if k.what.ends_with("quantize") { 1 } else { 4 };
            let pred = factor
                * place::npu_roofline_cycles(
                    &dev,
                    k.batch as usize,
                    k.m as usize,
                    k.k as usize,
                    k.n as usize,
                    1,
                    out_bytes,
                );
            (format!("{} {}", k.place, k.what), pred, k.stats.cycles as f64)
        })
        .collect();
    Ok((factor, rows))
}

/// The simulated cycles of a graph with static shapes.
fn simulate(g: &Graph, dev: &tessera_runtime::npu::Device) -> anyhow::Result<u64> {
    let inputs = inputs_at(g, &tessera_ir::Bindings::default());
    let model = tessera_runtime::npu::NpuModel::new(g.clone(), dev.clone());
    let (_, r) = model.run(&inputs)?;
    Ok(r.total().cycles)
}

fn print_errors(what: &str, rows: &[(String, f64, f64)], show: usize) -> f64 {
    let errs: Vec<f64> = rows.iter().map(|(_, p, m)| (p - m).abs() / m.max(1e-9)).collect();
    let med = median(errs.clone());
    let total: f64 = rows.iter().map(|r| r.2).sum();
    let weighted = rows.iter().map(|(_, p, m)| (p - m).abs()).sum::<f64>() / total.max(1e-9);
    let big: Vec<f64> =
        rows.iter().filter(|r| r.2 >= 0.01 * total).map(|(_, p, m)| (p - m).abs() / m.max(1e-9)).collect();
    println!(
        "{what}: median absolute error {:.1}% over {} kernels (target <= 15%); {:.1}% over the {} kernels each above 1% of the time; time-weighted {:.1}%; predicted total {:.0}, measured {:.0}",
        100.0 * med,
        rows.len(),
        100.0 * median(big.clone()),
        big.len(),
        100.0 * weighted,
        rows.iter().map(|r| r.1).sum::<f64>(),
        total
    );
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[b].2.total_cmp(&rows[a].2));
    let show = if std::env::var_os("TESSERA_CALIBRATE_ALL").is_some() { rows.len() } else { show };
    for &i in order.iter().take(show) {
        let (name, p, m) = &rows[i];
        println!("  {:>10.1} predicted {:>10.1} measured {:>+6.0}%  {name}", p, m, 100.0 * (p - m) / m.max(1e-9));
    }
    med
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let path = match &args.output {
        Some(p) => p.clone(),
        None => profile::host_profile_path().context("no home folder: give --output")?,
    };
    let check = args.model.exists().then_some((args.model.as_path(), args.seq));
    let rows = if args.check_only {
        let host = DeviceProfile::from_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        match check {
            Some((model, seq)) => {
                let (mut t, b) = model_timed(model, seq, threads)?;
                for _ in 0..11 {
                    t.sample()?;
                }
                Some(model_rows(&host, &t, &b)?)
            }
            None => None,
        }
    } else {
        let (text, rows) = measure(threads, check)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {} (use it with --profile host, or --profile {})", path.display(), path.display());
        rows
    };
    let Some(rows) = rows else {
        println!("cost model check skipped: {} is missing (scripts/fetch_models.sh fetches it)", args.model.display());
        return Ok(ExitCode::SUCCESS);
    };
    println!("cost model against this machine ({}, seq {}), microseconds:", args.model.display(), args.seq);
    print_errors("CPU kernels (roofline with the measured rates vs the JIT kernels' median times)", &rows, 12);
    let phone = DeviceProfile::load(&args.npu_profile).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (factor, rows) = check_npu(&phone, &args.model, args.seq)?;
    println!(
        "NPU roofline of {} (MACs at the array's rate or DRAM bytes at the DMA's, whichever is longer, x {factor:.3} fitted on four other shapes) vs the simulator's cycles:",
        phone.name
    );
    print_errors("NPU kernels", &rows, 6);
    Ok(ExitCode::SUCCESS)
}
