//! `tessera`: the command-line front of the Tessera graph compiler.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Tessera compiles transformer graphs for phone SoCs (CPU, GPU, NPU).
///
/// Today it reads Tessera IR (`.tir` text), verifies it, prints it and runs it on the
/// reference interpreter. Model import, optimization and the device targets come next.
#[derive(Parser)]
#[command(name = "tessera", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, verify and print a graph.
    ///
    /// Reads a `.tir` file (a filetest's `test` lines are skipped), checks every type and
    /// shape, and prints the graph in canonical form. Verifier errors are all listed, each
    /// with its line and column.
    Ir(commands::ir::IrArgs),
    /// Run a model on the CPU target (default), the GPU target (Vulkan) or the reference interpreter.
    ///
    /// Inputs are ONNX TensorProto files in the backend-test layout: `DIR/input_0.pb`, ...
    /// in the graph's input order. With `--check`, outputs are compared against
    /// `DIR/output_0.pb`, ... and the exit code is 1 on any mismatch. DIR may also hold
    /// `test_data_set_N/` folders, each run in turn.
    Run(commands::run::RunArgs),
    /// Run the ONNX backend node tests and print a per-op table.
    ///
    /// The last line reads `N passed, M failed, K unsupported`; a test needing an op, opset or
    /// dtype Tessera lacks counts as unsupported, never as passed. Exit code 1 when any fails.
    Conformance(commands::conformance::ConformanceArgs),
    /// Time a model on Tessera's CPU target against onnxruntime (.onnx) or llama.cpp (.gguf), in the same run.
    ///
    /// For a .gguf model: a `--seq`-token prompt (prefill) and `--gen` greedy tokens (decode) on
    /// Tessera and llama.cpp (llama-cpp-python in .cache/venv) in alternating rounds; prints
    /// tokens/s and ratios, the memory bandwidth measured here and the decode ceiling it sets,
    /// startup and time to first token, and resident memory.
    ///
    /// For an .onnx model: alternating rounds on the same deterministic inputs (batch 1, `--seq` tokens), for each
    /// thread count; prints medians, the ratio tessera / onnxruntime, and startup times (import +
    /// passes + JIT compile against onnxruntime's session creation). Needs the Python
    /// environment scripts/fetch_models.sh makes (.cache/venv with onnxruntime).
    Bench(commands::bench::BenchArgs),
    /// Micro-benchmark the CPU target's inner kernels against this core's measured peak.
    ///
    /// Measures the clock (a chain of dependent adds), the FMA throughput of 128-bit and 256-bit
    /// vectors, then the f32 GEMM inner tile on L1-resident data (Cranelift's 6x8 f32x4 tile,
    /// and the AVX2 6x16 std::arch tile where the CPU has it) and whole packed GEMMs at
    /// MiniLM's shapes on one thread, each as GFLOP/s and as a percentage of the peak of its
    /// vector width. Medians of several repetitions; a shared host makes them vary.
    BenchKernels,
    /// List what a GGUF model or a Tessera artifact holds.
    ///
    /// A GGUF file is read as the importer reads it (every count, offset and size checked
    /// against the file): each metadata entry, bytes and bits per weight per tensor type, and
    /// the tensors with their row-major shapes. An artifact (.tsa) is checked as the runtime
    /// checks it (versions, bounds, checksums): its header, sections, kernels, imported host
    /// functions, relocations, the model's signature, the stored placement, and whether it
    /// loads on this machine (`--ir` prints the optimized graph it runs).
    Inspect(commands::inspect::InspectArgs),
    /// Compile a model ahead of time into an artifact (.tsa) for this machine or a phone.
    ///
    /// The artifact holds a versioned header (Tessera version, target triple, the CPU features
    /// the code needs, the source model's hash), the kernels as a relocatable ELF object
    /// (Cranelift's object backend), the schedule, the weights packed and aligned for mmap, the
    /// optimized IR, and a checksum per section. `tessera run FILE.tsa` and the runtime's
    /// `Session::from_artifact` load it without the compiler; `tessera inspect FILE.tsa` shows it.
    Compile(commands::compile::CompileArgs),
    /// Generate text with a GGUF decoder model (gemma3, llama), streamed to stdout.
    ///
    /// The model is lowered into Tessera IR (weights stay quantized) and JIT-compiled for this
    /// CPU; the prompt runs as one prefill, then one token at a time through a KV cache sized by
    /// `--context`. Greedy by default (`--temperature 0`); a temperature samples among the
    /// `--top-k` / `--top-p` candidates with `--seed`. Load, compile, prefill and decode
    /// figures go to stderr.
    Generate(commands::generate::GenerateArgs),
    /// Show where each kernel of a model runs on a phone's CPU, GPU and NPU, and why.
    ///
    /// The model is optimized as for running, then every kernel is priced on every unit of
    /// the profile: the CPU and GPU by the profile's roofline (FLOPs and bytes at its peaks and
    /// efficiencies, plus launch costs), the NPU by compiling the kernel and counting its cycles
    /// in the simulator. The partitioner assigns kernels to units by the makespan of the
    /// runtime's schedule, charging every hand-over between units (shared DRAM: a signal and
    /// cache maintenance, no copy). Prints per kernel the chosen unit, its cost on each unit,
    /// its hand-overs and why; then why units decline kernels, and the simulated latency of
    /// each unit alone against the partitioned graph.
    Explain(commands::explain::ExplainArgs),
    /// Measure this machine into the `host` device profile and check the cost model.
    ///
    /// Measures STREAM-triad memory bandwidth, the CPU target's f32 and int8 product
    /// throughput, the fixed cost of a kernel and a cross-thread hand-over, and writes them as a
    /// profile (`--profile host` reads it). Then compares the cost model's prediction of every
    /// CPU kernel of a real model with its measured time here, and the NPU roofline with the
    /// simulator's cycles, and prints the median absolute errors.
    Calibrate(commands::calibrate::CalibrateArgs),
    /// The demo: check, compile ahead of time and place a real int4 model.
    ///
    /// Runs the committed int4 transformer block against numpy; fetches the real models if
    /// they are missing (scripts/fetch_models.sh, run from a Tessera checkout); checks
    /// paraphrase-MiniLM-L3-v2 (fp32, int4) against onnxruntime on the interpreter and the CPU
    /// target; compiles the int4 model into artifacts for this machine and for a phone (arm64,
    /// placed on --profile), runs the host artifact on onnxruntime's reference data, and writes
    /// the phone's simulated timeline (SVG) and placement picture into --out.
    Demo(commands::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ir(args) => commands::ir::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Conformance(args) => commands::conformance::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::BenchKernels => commands::bench::kernels(),
        Command::Demo(args) => commands::demo::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::Calibrate(args) => commands::calibrate::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Compile(args) => commands::compile::run(args),
        Command::Generate(args) => commands::generate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The paths a command reads.
pub(crate) fn must_exist(path: &std::path::Path, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(path.exists(), "{what} {} does not exist", path.display());
    Ok(())
}
