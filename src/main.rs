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
    /// List what a GGUF model holds: metadata, tensor types and the tensor table.
    ///
    /// Reads the file as the importer does (every count, offset and size checked against the
    /// file) and prints each metadata entry, bytes and bits per weight per tensor type, and the
    /// tensors with their row-major shapes.
    Inspect(commands::inspect::InspectArgs),
    /// Generate text with a GGUF decoder model (gemma3, llama), streamed to stdout.
    ///
    /// The model is lowered into Tessera IR (weights stay quantized) and JIT-compiled for this
    /// CPU; the prompt runs as one prefill, then one token at a time through a KV cache sized by
    /// `--context`. Greedy by default (`--temperature 0`); a temperature samples among the
    /// `--top-k` / `--top-p` candidates with `--seed`. Load, compile, prefill and decode
    /// figures go to stderr.
    Generate(commands::generate::GenerateArgs),
    /// Run the built-in demo: a small int4-quantized transformer block on the interpreter.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ir(args) => commands::ir::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Conformance(args) => commands::conformance::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::BenchKernels => commands::bench::kernels(),
        Command::Demo => commands::demo::run(),
        Command::Inspect(args) => commands::inspect::run(args),
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
