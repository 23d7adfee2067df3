//! `tessera compile`: a model compiled ahead of time into an artifact (`.tsa`) that the runtime
//! loads without the compiler.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct CompileArgs {
    /// The model file (.onnx, .tir, or .gguf: a decoder model with its tokenizer, for `tessera generate`).
    pub file: PathBuf,
    /// Where to write the artifact (default: the model's name with .tsa, in the current folder).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The CPU to compile for: a target triple (aarch64-linux-android, x86_64-linux) at that
    /// architecture's baseline features. Default: this machine, with all its CPU features (the
    /// artifact then needs them wherever it is loaded).
    #[arg(long)]
    pub triple: Option<String>,
    /// A phone profile (built-in name, `host`, or a .toml file) to place the model on; the
    /// placement is stored in the artifact for `tessera inspect`.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Passes to run before code generation (`default`, `none`, or a comma-separated list).
    #[arg(long, default_value = "default")]
    pub passes: String,
    /// Whether kernels may call the std::arch inner tiles (this machine's triple only).
    #[arg(long, value_enum, default_value_t = super::UkernelArg::Auto)]
    pub ukernel: super::UkernelArg,
    /// Compute u8 x i8 MatMulInteger the way onnxruntime's x86 kernel does.
    #[arg(long)]
    pub match_onnxruntime: bool,
}

pub fn run(args: CompileArgs) -> anyhow::Result<ExitCode> {
    crate::must_exist(&args.file, "the model file")?;
    let output = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(args.file.file_stem().map(|s| s.to_os_string()).unwrap_or_else(|| "model".into()))
            .with_extension("tsa")
    });
    let opts = tessera_runtime::CompileOptions {
        passes: args.passes.clone(),
        import: tessera_compiler::onnx::ImportOptions { onnxruntime_x86_matmul_integer: args.match_onnxruntime },
        triple: args.triple.clone(),
        ukernels: args.ukernel.into(),
        profile: args.profile.clone(),
    };
    let (bytes, r) = tessera_runtime::compile_artifact(&args.file, &opts)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    std::fs::write(&output, &bytes).with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "compiled {} for {}: {} kernel calls, {} distinct kernels, {} KiB of code, {:.1} MiB of packed weights",
        args.file.display(),
        r.triple,
        r.kernels,
        r.distinct_kernels,
        r.code_bytes / 1024,
        r.packed_weight_bytes as f64 / (1 << 20) as f64
    );
    if !r.features.is_empty() {
        println!(
            "  needs CPU features: {}",
            r.features.iter().map(|f| f.trim_start_matches("has_")).collect::<Vec<_>>().join(" ")
        );
    }
    println!(
        "  import {:.0} ms, passes {:.0} ms, code generation {:.0} ms",
        r.times.import_ms, r.times.passes_ms, r.times.codegen_ms
    );
    println!("wrote {} ({:.1} MiB)", output.display(), bytes.len() as f64 / (1 << 20) as f64);
    println!("next: tessera inspect {0}   |   tessera run {0} --inputs DIR --check", output.display());
    Ok(ExitCode::SUCCESS)
}
