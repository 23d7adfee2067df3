//! `tessera run`: run a model on the CPU target, the GPU target, the NPU target (simulated) or the
//! interpreter with ONNX TensorProto inputs, and check outputs.

use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tessera_compiler::onnx::{read_tensor_pb, write_tensor_pb};
use tessera_ir::compare::compare;
use tessera_ir::{Graph, Tensor};

#[derive(Args)]
pub struct RunArgs {
    /// The graph to run (.tir).
    pub file: PathBuf,
    /// Folder with input_0.pb, input_1.pb, ... (or test_data_set_N/ folders holding them).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Compare against output_0.pb, ... in the same folder; exit 1 on a mismatch.
    #[arg(long)]
    pub check: bool,
    /// Write the outputs as output_0.pb, ... into this folder.
    #[arg(long)]
    pub outputs: Option<PathBuf>,
    /// Relative tolerance for float outputs (ONNX's backend tests use 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub rtol: f64,
    /// Absolute tolerance for float outputs [default: 1e-7 as ONNX's backend tests use; 1e-4
    /// on the GPU target, whose exp, erf and reductions round differently from the host's].
    #[arg(long)]
    pub atol: Option<f64>,
    /// Compute u8 x i8 MatMulInteger the way onnxruntime's x86 AVX2 kernel does (adjacent
    /// products summed in saturating int16) instead of exactly, to compare with onnxruntime's
    /// outputs on a host without VNNI (with AVX-VNNI or AVX512-VNNI onnxruntime is exact).
    #[arg(long)]
    pub match_onnxruntime: bool,
    /// Passes to run before code generation: `default` (the optimizer), `none`, or a
    /// comma-separated list (`canonicalize,fuse`).
    #[arg(long, default_value = "default")]
    pub passes: String,
    /// Where to run: the CPU target (JIT-compiled with Cranelift), the GPU target (SPIR-V through
    /// Vulkan), the NPU target (command streams on the simulated NPU of `--profile`), every unit
    /// placed by cost (`auto`), or the reference interpreter [default: cpu; auto when `--profile`
    /// is given].
    #[arg(long, value_enum)]
    pub target: Option<RunTarget>,
    /// Threads for the CPU target (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Whether the CPU target may call `std::arch` routines: `auto` uses the widest this CPU has
    /// (AVX2+FMA tiles; on AVX-512 the 512-bit f32 tile, the AVX512-VNNI integer tile and the
    /// softmax, dynamic-quantization and GELU row routines; Cranelift still emits the loops, the
    /// thread split and the fused epilogue around them); `avx2` the 256-bit ones only; `off`
    /// runs Cranelift-emitted code only.
    #[arg(long, value_enum, default_value_t = super::UkernelArg::Auto)]
    pub ukernel: super::UkernelArg,
    /// The device profile (snapdragon-8-gen-3, dimensity-9300, snapdragon-8-gen-2, `host`
    /// measured by `tessera calibrate`, or a .toml file; see profiles/): `--target auto` places
    /// kernels by its cost model, `--target npu` simulates its NPU, and the GPU report's
    /// estimates use its GPU.
    #[arg(long, visible_alias = "device-profile", value_name = "NAME")]
    pub profile: Option<String>,
    /// Print the time each kernel took (CPU target), slowest first; on the GPU target, every
    /// dispatched kernel with its workgroup, grid, shared memory, bytes read and written, MFLOP,
    /// its time on this device and the cost model's estimate on `--profile`; on the NPU, one
    /// line per kernel.
    #[arg(long)]
    pub kernel_times: bool,
    /// Use the JIT cache (CPU target): the model compiled once is stored as an artifact in DIR
    /// (default: $TESSERA_CACHE_DIR, else ~/.cache/tessera/jit), keyed by the model's bytes,
    /// the options, the Tessera version and this CPU's features; later runs load it instead of
    /// compiling.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "")]
    pub cache: Option<PathBuf>,
    /// Write a Chrome-trace JSON timeline (open in ui.perfetto.dev): with `--target auto`, each
    /// unit's real work on this machine and the simulated schedule on the profile's phone.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// With `--target auto`: write a Graphviz picture of the kernels coloured by unit.
    #[arg(long, value_name = "FILE")]
    pub dot: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RunTarget {
    /// The CPU target: every kernel JIT-compiled for this machine with Cranelift.
    Cpu,
    /// The reference interpreter (slow, the semantics every target is checked against).
    Interp,
    /// The GPU target: SPIR-V compute shaders through Vulkan (Mesa's lavapipe where there is
    /// no GPU). Nodes it declines run on the host; the report says which and why.
    Gpu,
    /// The NPU target: integer matrix products (and their requantization) compiled to command
    /// streams and run bit-exactly on the cycle-counting NPU simulator; the rest on the host
    /// (the interpreter). Prints the simulator's summary: cycles, MAC utilization, DRAM bytes,
    /// SRAM peak, DMA hidden behind compute (`--kernel-times`: per kernel).
    Npu,
    /// Every unit of `--profile`: the partitioner places each kernel on the CPU, GPU or NPU by
    /// the profile's cost model, and the segments run concurrently here (CPU JIT, Vulkan,
    /// NPU simulator), one queue per unit. Prints the placement and the overlap.
    Auto,
}

impl From<RunTarget> for tessera_runtime::Target {
    fn from(t: RunTarget) -> Self {
        match t {
            RunTarget::Cpu => tessera_runtime::Target::Cpu,
            RunTarget::Interp => tessera_runtime::Target::Interpreter,
            RunTarget::Gpu => tessera_runtime::Target::Gpu,
            RunTarget::Npu => tessera_runtime::Target::Npu,
            RunTarget::Auto => tessera_runtime::Target::Hetero,
        }
    }
}

/// The test-data folders to run: DIR itself, or its test_data_set_N children.
fn data_sets(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    crate::must_exist(dir, "the inputs folder")?;
    if dir.join("input_0.pb").exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")))
        .collect();
    sets.sort();
    if sets.is_empty() {
        bail!("{} holds neither input_0.pb nor test_data_set_N folders", dir.display());
    }
    Ok(sets)
}

fn read_inputs(g: &Graph, dir: &Path) -> anyhow::Result<Vec<Tensor>> {
    let mut inputs = Vec::new();
    for (i, (name, _)) in g.inputs().iter().enumerate() {
        let path = dir.join(format!("input_{i}.pb"));
        if !path.exists() {
            bail!("missing {} for graph input {i} ({name:?})", path.display());
        }
        inputs.push(read_tensor_pb(&path)?.tensor);
    }
    let extra = dir.join(format!("input_{}.pb", g.inputs().len()));
    if extra.exists() {
        bail!("{} exists but the graph takes only {} inputs", extra.display(), g.inputs().len());
    }
    Ok(inputs)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let is_artifact = args.file.extension().is_some_and(|e| e == "tsa");
    if is_artifact && !matches!(args.target, None | Some(RunTarget::Cpu)) {
        bail!("{} is an ahead-of-time artifact: it holds CPU code only (run it without --target, or run the model file on the other targets)", args.file.display());
    }
    let options = tessera_compiler::onnx::ImportOptions { onnxruntime_x86_matmul_integer: args.match_onnxruntime };
    let cache_dir = args.cache.as_ref().map(|d| {
        if d.as_os_str().is_empty() {
            tessera_runtime::default_cache_dir()
        } else {
            d.clone()
        }
    });
    let g = if is_artifact || cache_dir.is_some() {
        crate::must_exist(&args.file, "the model file")?;
        None
    } else {
        Some(super::load_graph_with(&args.file, &options)?)
    };
    let mut sopts = tessera_runtime::SessionOptions { passes: args.passes.clone(), ..Default::default() };
    let target = args.target.unwrap_or(if args.profile.is_some() { RunTarget::Auto } else { RunTarget::Cpu });
    sopts.target = target.into();
    if let Some(t) = args.threads {
        sopts.threads = t;
    }
    sopts.ukernels = args.ukernel.into();
    if let Some(p) = &args.profile {
        sopts.device_profile = p.clone();
    }
    if (args.trace.is_some() || args.dot.is_some()) && !matches!(target, RunTarget::Auto) {
        bail!("--trace and --dot show a placement: use them with --target auto (or --profile NAME)");
    }
    sopts.import = options;
    sopts.cache_dir = cache_dir;
    let session = match g {
        Some(g) => tessera_runtime::Session::from_graph(g, &sopts),
        None if is_artifact => tessera_runtime::Session::from_artifact(&args.file, sopts.threads),
        None => tessera_runtime::Session::from_file(&args.file, &sopts),
    }
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let where_ = match target {
        RunTarget::Cpu => format!("the CPU target ({} threads)", sopts.threads),
        RunTarget::Interp => "the interpreter".to_string(),
        RunTarget::Gpu => match session.gpu_model() {
            Some(m) => format!("the GPU target ({})", m.vulkan().name),
            None => "the GPU target".to_string(),
        },
        RunTarget::Npu => match session.npu_model() {
            Some(m) => format!("the NPU target ({}, simulated)", m.device().name),
            None => "the NPU target".to_string(),
        },
        RunTarget::Auto => format!("the CPU, GPU and NPU as placed for {}", sopts.device_profile),
    };
    if let Some(m) = session.hetero_model() {
        print!("{}", tessera_compiler::place::report::summary(&m.problem, &m.placement));
        for u in &m.unavailable {
            println!("  not used here: {u}");
        }
        if let Some(path) = &args.dot {
            std::fs::write(path, tessera_compiler::place::report::dot(&m.problem, &m.placement.schedule))
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("placement picture: {} (render: dot -Tsvg {} -o placement.svg)", path.display(), path.display());
        }
    }
    match &session.startup.cache {
        Some(tessera_runtime::CacheOutcome::Hit { path }) => {
            println!("JIT cache hit: {} loaded in {:.2} ms (nothing compiled)", path.display(), session.startup.load_ms)
        }
        Some(tessera_runtime::CacheOutcome::Miss { path }) => println!(
            "JIT cache miss: compiled in {:.0} ms (import {:.0}, passes {:.0}, code {:.0}) and stored as {}",
            session.startup.total_ms(),
            session.startup.import_ms,
            session.startup.passes_ms,
            session.startup.codegen_ms,
            path.display()
        ),
        Some(tessera_runtime::CacheOutcome::Replaced { path, reason }) => {
            println!("JIT cache: the stored {} did not load ({reason}); compiled and stored again", path.display())
        }
        Some(tessera_runtime::CacheOutcome::Bypassed { reason }) => println!("JIT cache not used: {reason}"),
        None => {}
    }
    let loaded = is_artifact || matches!(session.startup.cache, Some(tessera_runtime::CacheOutcome::Hit { .. }));
    if let (Some(p), true) = (session.cpu_program(), loaded) {
        println!(
            "loaded {} kernels ({} KiB of code) for {} from the artifact in {:.2} ms (no compiler)",
            p.stats.kernels,
            p.stats.code_bytes / 1024,
            p.stats.isa,
            session.startup.load_ms
        );
    } else if let Some(p) = session.cpu_program() {
        println!(
            "compiled {} kernels ({} KiB of code) for {} in {:.1} ms (passes {:.1} ms)",
            p.stats.kernels,
            p.stats.code_bytes / 1024,
            p.stats.isa,
            session.startup.codegen_ms,
            session.startup.passes_ms
        );
    }
    let device = match target {
        RunTarget::Gpu if args.kernel_times => Some(
            tessera_compiler::passes::profile::DeviceProfile::load(&sopts.device_profile)
                .map_err(|e| anyhow::anyhow!("--profile: {e}"))?,
        ),
        _ => None,
    };
    let g = session.graph();
    let atol = args.atol.unwrap_or(match target {
        RunTarget::Gpu | RunTarget::Auto => 1e-4,
        _ => 1e-7,
    });
    let mut failed = 0;
    for set in data_sets(&args.inputs)? {
        let inputs = read_inputs(g, &set)?;
        let start = std::time::Instant::now();
        let mut npu_report = None;
        let mut hetero_report = None;
        let (outputs, gpu_report) = match (session.gpu_model(), session.npu_model()) {
            _ if session.hetero_model().is_some() => {
                let m = session.hetero_model().expect("checked");
                let (o, r) = m.run(&inputs).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
                hetero_report = Some(r);
                (o, None)
            }
            (Some(m), _) => {
                let (o, r) = m
                    .run(&inputs, tessera_runtime::vulkan::Fallback::Host)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
                (o, Some(r))
            }
            (_, Some(m)) => {
                let (o, r) = m.run(&inputs).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
                npu_report = Some(r);
                (o, None)
            }
            _ => (session.run(&inputs).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?, None),
        };
        let elapsed = start.elapsed();
        if args.kernel_times {
            if let Some(p) = session.cpu_program() {
                let (_, times) = p.run_profiled(&inputs, &tessera_runtime::RunOptions { profile: true })?;
                let names = p.step_names();
                let total: f64 = times.iter().sum();
                let mut rows: Vec<(f64, &String)> = times.iter().copied().zip(&names).collect();
                rows.sort_by(|a, b| b.0.total_cmp(&a.0));
                println!("profile (one run, {:.2} ms in kernels):", total * 1e3);
                for (t, n) in rows.iter().take(15) {
                    println!("  {:7.3} ms {:5.1}%  {n}", t * 1e3, 100.0 * t / total.max(1e-12));
                }
            }
        }
        println!("{}: ran on {where_} in {:.2} ms", set.display(), elapsed.as_secs_f64() * 1e3);
        if let Some(r) = &gpu_report {
            print_gpu_report(r, device.as_ref());
        }
        if let (Some(r), Some(m)) = (&npu_report, session.npu_model()) {
            print_npu_report(r, m.device(), args.kernel_times);
        }
        if let (Some(r), Some(m)) = (&hetero_report, session.hetero_model()) {
            print_hetero_report(r, m, args.trace.as_deref())?;
        }
        for (j, ((name, _), t)) in g.outputs().iter().zip(&outputs).enumerate() {
            let expected_path = set.join(format!("output_{j}.pb"));
            let line = format!("  output {j} {name:?}: {t}");
            if !args.check {
                println!("{line} {}", preview(t));
                continue;
            }
            if !expected_path.exists() {
                bail!("--check needs {} for output {j} ({name:?})", expected_path.display());
            }
            let expected = read_tensor_pb(&expected_path)?.tensor;
            match compare(t, &expected, args.rtol, atol) {
                Ok(c) if c.passed() => {
                    println!("{line} ok (max abs error {:.2e}, cosine {:.7})", c.max_abs_error, c.cosine)
                }
                Ok(c) => {
                    failed += 1;
                    println!("{line} MISMATCH: {c}");
                }
                Err(e) => {
                    failed += 1;
                    println!("{line} MISMATCH: {e}");
                }
            }
        }
        if let Some(out_dir) = &args.outputs {
            std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
            for (j, ((name, _), t)) in g.outputs().iter().zip(&outputs).enumerate() {
                write_tensor_pb(&out_dir.join(format!("output_{j}.pb")), name, t)?;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} output(s) did not match (rtol {}, atol {atol})", args.rtol);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What ran where on this machine, how much the units overlapped, and the trace.
fn print_hetero_report(
    r: &tessera_runtime::hetero::HeteroReport,
    m: &tessera_runtime::hetero::HeteroModel,
    trace: Option<&Path>,
) -> anyhow::Result<()> {
    let mut busy = [0.0f64; 3];
    for s in &r.spans {
        busy[tessera_compiler::place::unit_index(s.unit)] += s.end_us - s.start_us;
    }
    println!(
        "  {} segments here: cpu busy {:.1} ms, gpu {:.1} ms, npu (simulator) {:.1} ms; two or more units at once for {:.1} ms of {:.1} ms",
        r.spans.len(),
        busy[0] / 1e3,
        busy[1] / 1e3,
        busy[2] / 1e3,
        r.overlap_us() / 1e3,
        r.total_us / 1e3
    );
    for f in &r.fallbacks {
        println!("  FALLBACK: {f}");
    }
    if let Some(path) = trace {
        let mut spans = m.spans(r);
        spans.extend(tessera_compiler::place::report::schedule_spans(
            &m.problem,
            &m.placement.schedule,
            &format!("{} (simulated)", m.problem.profile.name),
        ));
        std::fs::write(path, tessera_compiler::place::report::chrome_trace(&spans))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("  timeline: {} (open in https://ui.perfetto.dev)", path.display());
    }
    Ok(())
}

/// The first few values of a tensor.
pub fn preview(t: &Tensor) -> String {
    let v = t.to_f64_vec();
    let shown: Vec<String> = v.iter().take(6).map(|x| format!("{x:.5}")).collect();
    format!("[{}{}]", shown.join(", "), if v.len() > 6 { ", ..." } else { "" })
}

/// What ran where on the GPU target: kernel and host counts, host nodes grouped by op and
/// reason, and with a device profile (`--profile`) every kernel's shape, traffic and the cost
/// model's estimate on that phone.
fn print_gpu_report(
    r: &tessera_runtime::vulkan::RunReport,
    device: Option<&tessera_compiler::passes::profile::DeviceProfile>,
) {
    println!(
        "  GPU: {} kernels in {} submissions, {} views; host: {} nodes; {:.1} MiB uploaded, {:.1} MiB read back",
        r.kernels.len(),
        r.submissions,
        r.views,
        r.host.len(),
        r.uploaded as f64 / (1 << 20) as f64,
        r.downloaded as f64 / (1 << 20) as f64
    );
    let mut groups: Vec<((&str, &str), usize)> = Vec::new();
    for h in &r.host {
        match groups.iter_mut().find(|(k, _)| *k == (h.op, h.why.as_str())) {
            Some((_, n)) => *n += 1,
            None => groups.push(((h.op, h.why.as_str()), 1)),
        }
    }
    for ((op, why), n) in groups {
        println!("    on the host: {n} x {op} ({why})");
    }
    let Some(device) = device else { return };
    let gpu = device.gpu.as_ref().map_or("no GPU", |g| g.name.as_str());
    println!(
        "  {:>5} {:<12} {:>9} {:>12} {:>6} {:>10} {:>10} {:>11} {:>10} {:>9}",
        "node", "op", "workgroup", "groups", "shared", "read", "written", "MFLOP", "here us", "est us"
    );
    let (mut total, mut here) = (0.0, 0.0);
    for k in &r.kernels {
        let est = device.gpu_estimate_us(k.flops, k.bytes_read + k.bytes_written);
        total += est.unwrap_or(0.0);
        here += k.device_us.unwrap_or(0.0);
        println!(
            "  {:>5} {:<12} {:>9} {:>12} {:>6} {:>10} {:>10} {:>11.3} {:>10} {:>9}",
            format!("n{}", k.node),
            k.op,
            format!("{}x{}x{}", k.local[0], k.local[1], k.local[2]),
            format!("{}x{}x{}", k.groups[0], k.groups[1], k.groups[2]),
            k.shared_bytes,
            k.bytes_read,
            k.bytes_written,
            k.flops as f64 / 1e6,
            k.device_us.map_or("-".to_string(), |t| format!("{t:.1}")),
            est.map_or("-".to_string(), |e| format!("{e:.1}"))
        );
    }
    println!("  measured {:.2} ms in kernels on this device (timestamps around each dispatch)", here / 1e3);
    println!(
        "  estimated {:.2} ms on {} ({gpu}) by the roofline cost model of profiles/{}.toml (assumed efficiencies)",
        total / 1e3,
        device.soc,
        device.name
    );
}

/// The NPU simulator's summary (like Vela's per-pass summary): kernels and host nodes, then the
/// totals; with `--profile`, one line per kernel.
fn print_npu_report(r: &tessera_runtime::npu::NpuReport, dev: &tessera_runtime::npu::Device, per_kernel: bool) {
    println!(
        "  NPU: {} kernels ({}x{} MACs at {} MHz, {} KiB SRAM); host: {} nodes",
        r.kernels.len(),
        dev.mac_rows,
        dev.mac_cols,
        dev.clock_mhz,
        dev.sram_bytes / 1024,
        r.host.len()
    );
    for (op, why, n) in r.host_summary() {
        println!("    on the host: {n} x {op} ({why})");
    }
    if per_kernel && !r.kernels.is_empty() {
        println!(
            "  {:<10} {:<28} {:>16} {:>14} {:>9} {:>8} {:>9} {:>9} {:>9} {:>7}",
            "node", "what", "batch x MxKxN", "tile", "cycles", "MAC %", "read", "written", "SRAM", "DMA hid"
        );
        for k in &r.kernels {
            let s = &k.stats;
            println!(
                "  {:<10} {:<28} {:>16} {:>14} {:>9} {:>7.1}% {:>9} {:>9} {:>9} {:>6.1}%",
                k.place,
                k.what,
                format!("{}x{}x{}x{}", k.batch, k.m, k.k, k.n),
                format!(
                    "{}x{}x{}{}",
                    k.tiling.tm,
                    k.tiling.tn,
                    k.tiling.tk,
                    if k.tiling.order == tessera_runtime::npu::compile::Order::RowsOuter { " r" } else { " c" }
                ),
                s.cycles,
                100.0 * s.mac_utilization(),
                s.dram_read,
                s.dram_written,
                s.sram_peak,
                100.0 * s.dma_hidden()
            );
        }
    }
    let t = r.total();
    if r.kernels.is_empty() {
        println!("  NPU summary: no kernel ran on the NPU");
        return;
    }
    println!(
        "  NPU summary: cycles {} ({:.1} us at {} MHz), MAC utilization {:.1}%, DRAM bytes read {} written {}, SRAM peak {} KiB, DMA hidden {:.1}% (weights {:.1}%), bank-conflict stalls {} cycles",
        t.cycles,
        dev.micros(t.cycles),
        dev.clock_mhz,
        100.0 * t.mac_utilization(),
        t.dram_read,
        t.dram_written,
        t.sram_peak.div_ceil(1024),
        100.0 * t.dma_hidden(),
        100.0 * t.weight_dma_hidden(),
        t.bank_conflict_cycles
    );
}
