//! `tessera ir`: parse, verify and print.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_ir::{print_with, PrintOptions, WeightMode};

#[derive(Clone, Copy, ValueEnum)]
pub enum Weights {
    /// Large constants as `summary(bytes, hash)`: readable, not runnable.
    Summary,
    /// Every constant in the text (`hex"..."` for large ones): runnable, large.
    Inline,
    /// Large constants in a sidecar file next to `--output` (FILE.weights): runnable and compact.
    Sidecar,
}

#[derive(Args)]
pub struct IrArgs {
    /// The graph to read (.tir).
    pub file: PathBuf,
    /// How to write constants larger than 16 elements.
    #[arg(long, value_enum, default_value_t = Weights::Summary)]
    pub weights: Weights,
    /// Write the printed graph here instead of stdout (required for `--weights sidecar`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Print a report instead of the graph: ops and kernels before and after the passes, bytes
    /// moved per inference, planned peak activation memory, the lower bound for the order and
    /// what greedy-by-size (TFLite's arena planner) gives. Symbols take `--bind` sizes.
    #[arg(long)]
    pub stats: bool,
    /// Sizes for symbolic dims in `--stats`, e.g. `--bind sequence_length=128`
    /// (defaults: batch dims 1, others 128).
    #[arg(long, value_name = "NAME=SIZE")]
    pub bind: Vec<String>,
    /// Print what a target emits for the graph (after the passes) instead of the graph.
    #[arg(long, value_enum, requires = "emit")]
    pub target: Option<IrTarget>,
    /// What to print of the target's code: `clif` (Cranelift IR per kernel) or `asm` (machine
    /// code per kernel, as Cranelift lists it). Needs `--target`.
    #[arg(long, value_enum, requires = "target")]
    pub emit: Option<Emit>,
    /// Extra Cranelift ISA flags for `--emit`, to read the code for a CPU with features this host
    /// lacks, e.g. `--isa-flag has_avx_vnni=true` (such code is listed, never run).
    #[arg(long, value_name = "FLAG=VALUE")]
    pub isa_flag: Vec<String>,
    /// With `--emit`, only kernels whose name contains this text (e.g. `matmul`, `k42_`).
    #[arg(long)]
    pub kernel: Option<String>,
    /// The phone profile whose NPU `--target npu` compiles for (a built-in name or a .toml file).
    #[arg(long, default_value = "snapdragon-8-gen-2")]
    pub device_profile: String,
    /// With `--emit`: whether kernels call the `std::arch` inner tiles (see `tessera run --help`).
    #[arg(long, value_enum, default_value_t = super::UkernelArg::Auto)]
    pub ukernel: super::UkernelArg,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum IrTarget {
    /// The Cranelift CPU target.
    Cpu,
    /// The GPU target (SPIR-V compute shaders). It plans the graph after the passes `tessera
    /// run --target gpu` runs (the optimizer without `plan-memory`), whatever `--passes` says:
    /// one kernel per node or fused region, or why it is declined (a region the GPU has no
    /// single shader for runs its body node by node); symbolic dims take `--bind` sizes
    /// (default 128).
    Gpu,
    /// The NPU target (command streams for the simulated NPU of `--device-profile`). It runs
    /// the graph after the NPU pipeline on zero inputs (symbolic dims take `--bind` sizes:
    /// batch dims 1, others 128) and prints each kernel's tiling, simulated cycles and stream,
    /// then the nodes the NPU declines and why.
    Npu,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Emit {
    /// Cranelift IR of each kernel.
    Clif,
    /// Machine code of each kernel.
    Asm,
    /// SPIR-V assembly of each GPU kernel, with its workgroup size, shared memory and bytes moved
    /// (`--target gpu`).
    SpirvAsm,
    /// The NPU command stream of each kernel, disassembled (`--target npu`).
    NpuAsm,
}

/// How to choose and watch the passes.
#[derive(Args)]
pub struct PipelineArgs {
    /// Passes to run, comma-separated (`canonicalize,cse`), or `none` for the graph as read.
    #[arg(long, default_value = tessera_compiler::passes::DEFAULT_PIPELINE)]
    pub passes: String,
    /// Print the graph before the named pass (or `all`), to stderr.
    #[arg(long, value_name = "PASS")]
    pub print_ir_before: Option<String>,
    /// Print the graph after the named pass (or `all`), to stderr.
    #[arg(long, value_name = "PASS")]
    pub print_ir_after: Option<String>,
    /// Write the graph as read and after each pass to numbered files in DIR (00-input.tir,
    /// 01-canonicalize.tir, ...), to diff what each pass did.
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Print each pass's time and report to stderr.
    #[arg(long)]
    pub time_passes: bool,
    /// List the registered passes and exit.
    #[arg(long)]
    pub list_passes: bool,
}

impl PipelineArgs {
    /// Runs the chosen passes with the requested printing, dumping and timing.
    pub fn apply(&self, g: &mut tessera_ir::Graph) -> anyhow::Result<()> {
        use tessera_compiler::passes::{Event, Pipeline};
        let pipeline = Pipeline::parse(&self.passes)?;
        if let Some(dir) = &self.dump_dir {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            std::fs::write(dir.join("00-input.tir"), tessera_ir::print(g))?;
        }
        let wants = |sel: &Option<String>, pass: &str| sel.as_deref().is_some_and(|s| s == "all" || s == pass);
        let mut io_error = None;
        let reports = pipeline.run(g, &mut |e| match e {
            Event::Before { pass, graph, .. } if wants(&self.print_ir_before, pass) => {
                eprintln!("; IR before {pass}\n{}", tessera_ir::print(graph));
            }
            Event::After { pass, index, graph, report, elapsed } => {
                if wants(&self.print_ir_after, pass) {
                    eprintln!("; IR after {pass}\n{}", tessera_ir::print(graph));
                }
                if let Some(dir) = &self.dump_dir {
                    let text = format!(
                        "; after {pass} ({:.3} ms): {}\n{}",
                        elapsed.as_secs_f64() * 1e3,
                        report.notes.join("; "),
                        tessera_ir::print(graph)
                    );
                    if let Err(e) = std::fs::write(dir.join(format!("{:02}-{pass}.tir", index + 1)), text) {
                        io_error = Some(e);
                    }
                }
                if self.time_passes {
                    eprintln!("{pass:<20} {:>9.3} ms  {}", elapsed.as_secs_f64() * 1e3, report.notes.join("; "));
                }
            }
            _ => {}
        })?;
        if let Some(e) = io_error {
            anyhow::bail!("cannot write the dump: {e}");
        }
        let _ = reports;
        Ok(())
    }
}

pub fn run(args: IrArgs) -> anyhow::Result<ExitCode> {
    if args.pipeline.list_passes {
        for p in tessera_compiler::passes::registry() {
            println!("{:<18} {}", p.name(), p.description());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut g = super::load_graph(&args.file)?;
    if args.stats {
        let mut opts = tessera_compiler::passes::memory::PlanOptions::default();
        for (name, size) in parse_binds(&args.bind)? {
            opts = opts.with(&name, size);
        }
        let before = tessera_compiler::passes::stats::stats(&g, &opts);
        args.pipeline.apply(&mut g)?;
        let after = tessera_compiler::passes::stats::stats(&g, &opts);
        println!("== as read\n{before}\n== after the passes ({})\n{after}", args.pipeline.passes);
        return Ok(ExitCode::SUCCESS);
    }
    if let (Some(IrTarget::Gpu), Some(emit)) = (args.target, args.emit) {
        anyhow::ensure!(emit == Emit::SpirvAsm, "--target gpu emits spirv-asm");
        tessera_compiler::passes::Pipeline::parse(tessera_runtime::GPU_PIPELINE)?.run(&mut g, &mut |_| {})?;
        return emit_gpu(&g, &args);
    }
    anyhow::ensure!(args.emit != Some(Emit::SpirvAsm), "--emit spirv-asm needs --target gpu");
    if let (Some(IrTarget::Npu), Some(emit)) = (args.target, args.emit) {
        anyhow::ensure!(emit == Emit::NpuAsm, "--target npu emits npu-asm");
        tessera_compiler::passes::Pipeline::parse(tessera_runtime::NPU_PIPELINE)?.run(&mut g, &mut |_| {})?;
        return emit_npu(g, &args);
    }
    anyhow::ensure!(args.emit != Some(Emit::NpuAsm), "--emit npu-asm needs --target npu");
    args.pipeline.apply(&mut g)?;
    if let (Some(IrTarget::Cpu), Some(emit)) = (args.target, args.emit) {
        let flags: Vec<(String, String)> = args
            .isa_flag
            .iter()
            .map(|f| {
                f.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--isa-flag takes FLAG=VALUE, got {f:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let kernels = tessera_target_cpu::listing(&g, &flags, args.ukernel.into())
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
        let mut shown = 0;
        for (name, clif, asm) in &kernels {
            if args.kernel.as_deref().is_some_and(|k| !name.contains(k)) {
                continue;
            }
            shown += 1;
            println!("; kernel {name}");
            println!("{}", if emit == Emit::Clif { clif } else { asm });
        }
        anyhow::ensure!(
            shown > 0,
            "no kernel name contains {:?} (there are {})",
            args.kernel.unwrap_or_default(),
            kernels.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut opts = PrintOptions {
        weights: match args.weights {
            Weights::Summary => WeightMode::Summary,
            Weights::Inline => WeightMode::Inline,
            Weights::Sidecar => WeightMode::Sidecar,
        },
        ..PrintOptions::default()
    };
    if let (Weights::Sidecar, Some(out)) = (args.weights, &args.output) {
        let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        opts.sidecar_name = format!("{name}.weights");
    }
    let (text, sidecar) = print_with(&g, &opts);
    match &args.output {
        Some(out) => {
            std::fs::write(out, &text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            if matches!(args.weights, Weights::Sidecar) {
                let side = out.with_file_name(&opts.sidecar_name);
                std::fs::write(&side, &sidecar).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", side.display()))?;
                eprintln!("wrote {} and {} ({} bytes of weights)", out.display(), side.display(), sidecar.len());
            }
        }
        None => {
            anyhow::ensure!(
                !matches!(args.weights, Weights::Sidecar),
                "`--weights sidecar` needs `--output FILE` (the sidecar goes next to it)"
            );
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--bind NAME=SIZE` arguments.
pub(crate) fn parse_binds(binds: &[String]) -> anyhow::Result<Vec<(String, usize)>> {
    binds
        .iter()
        .map(|b| {
            let (name, size) = b.split_once('=').ok_or_else(|| anyhow::anyhow!("--bind takes NAME=SIZE, got {b:?}"))?;
            let size = size.parse().map_err(|_| anyhow::anyhow!("--bind {name}: {size:?} is not a size"))?;
            Ok((name.to_string(), size))
        })
        .collect()
}

/// `tessera ir FILE --target gpu --emit spirv-asm`: every node's GPU plan, and the SPIR-V of each
/// distinct kernel once.
fn emit_gpu(g: &tessera_ir::Graph, args: &IrArgs) -> anyhow::Result<ExitCode> {
    let mut bind = tessera_ir::Bindings::default();
    for (name, size) in parse_binds(&args.bind)? {
        bind.set(&name, size);
    }
    let shape = |v: tessera_ir::Value| -> Vec<usize> {
        g.ty(v)
            .shape
            .dims()
            .iter()
            .map(|d| match d {
                tessera_ir::Dim::Sym(s) => bind.get(s).unwrap_or(128),
                d => bind.resolve(d).unwrap_or(1),
            })
            .collect()
    };
    // The limits of this machine's Vulkan device when there is one, else Vulkan's minimums.
    let (limits, device) = match tessera_runtime::vulkan::Vulkan::new() {
        Ok(vk) => (vk.limits, vk.name.clone()),
        Err(_) => (tessera_target_spirv::Limits::default(), "Vulkan's minimum limits".to_string()),
    };
    let mut seen = std::collections::HashSet::new();
    let (mut dispatches, mut views, mut declined) = (0, 0, 0);
    for (n, nd) in g.nodes() {
        let ins: Vec<Vec<usize>> = nd.inputs.iter().map(|&v| shape(v)).collect();
        let refs: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
        let out = nd.outputs.first().map(|&o| shape(o)).unwrap_or_default();
        let name = format!("{n} {}", nd.op.name());
        if args.kernel.as_deref().is_some_and(|k| !name.contains(k)) {
            continue;
        }
        match tessera_target_spirv::plan(g, n, &refs, &out, &limits) {
            Ok(tessera_target_spirv::Plan::View) => {
                views += 1;
                println!("; {name}: a view of its input (no kernel)");
            }
            Ok(tessera_target_spirv::Plan::Dispatch { spec, groups, bytes_read, bytes_written, .. }) => {
                dispatches += 1;
                let k = tessera_target_spirv::build(&spec);
                println!(
                    "; {name}: {spec:?}, workgroup {:?}, groups {groups:?}, shared {} B, reads {bytes_read} B, writes {bytes_written} B",
                    k.local, k.shared_bytes
                );
                if seen.insert(spec) {
                    println!("{}", tessera_target_spirv::disassemble(&k));
                }
            }
            Err(e) => {
                declined += 1;
                println!("; {name}: {e}");
            }
        }
    }
    println!("; {dispatches} kernels, {views} views, {declined} declined (limits of {device})");
    Ok(ExitCode::SUCCESS)
}

/// `tessera ir FILE --target npu --emit npu-asm`: the NPU's kernels for the graph at `--bind`
/// shapes (found by running the graph on zero inputs), each with its tiling, simulated cycles and
/// command stream, then the declined nodes.
fn emit_npu(g: tessera_ir::Graph, args: &IrArgs) -> anyhow::Result<ExitCode> {
    let mut bind = tessera_ir::Bindings::default();
    for (name, size) in parse_binds(&args.bind)? {
        bind.set(&name, size);
    }
    let mut inputs = Vec::new();
    for (name, v) in g.inputs() {
        let ty = g.ty(*v);
        let shape: Vec<usize> = ty
            .shape
            .dims()
            .iter()
            .map(|d| match d {
                tessera_ir::Dim::Sym(s) => bind.get(s).unwrap_or(if s.contains("batch") { 1 } else { 128 }),
                d => bind.resolve(d).unwrap_or(1),
            })
            .collect();
        inputs.push(tessera_ir::Tensor::zeros(ty.dtype, &shape).map_err(|e| anyhow::anyhow!("input {name:?}: {e}"))?);
    }
    let p = tessera_compiler::passes::profile::DeviceProfile::load(&args.device_profile)?;
    let dev = tessera_runtime::npu::Device::from_profile(&p)
        .ok_or_else(|| anyhow::anyhow!("profile {:?} describes no NPU (no [npu] section)", p.name))?;
    let model = tessera_runtime::npu::NpuModel::new(g, dev);
    let (kernels, report) = model.compile_for(&inputs)?;
    for (place, c) in &kernels {
        let k = report.kernels.iter().find(|k| &k.place == place);
        let name = format!("{place} {}", k.map_or("", |k| k.what.as_str()));
        if args.kernel.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let s = &c.estimate;
        println!(
            "; kernel {name}: tile {}x{}x{} {:?}, {} cycles, MAC utilization {:.1}%, SRAM peak {} bytes, DMA hidden {:.1}% (weights {:.1}%)",
            c.tiling.tm,
            c.tiling.tn,
            c.tiling.tk,
            c.tiling.order,
            s.cycles,
            100.0 * s.mac_utilization(),
            s.sram_peak,
            100.0 * s.dma_hidden(),
            100.0 * s.weight_dma_hidden()
        );
        println!("{}", c.stream.disassemble());
    }
    println!("; {} kernels on the NPU ({}); on the host:", kernels.len(), model.device().name);
    for (op, why, n) in report.host_summary() {
        println!(";   {n} x {op}: {why}");
    }
    Ok(ExitCode::SUCCESS)
}
