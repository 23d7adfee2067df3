//! One module per subcommand.

pub mod bench;
pub mod bench_llm;
pub mod calibrate;
pub mod compile;
pub mod conformance;
pub mod demo;
pub mod explain;
pub mod generate;
pub mod inspect;
pub mod ir;
pub mod run;

use anyhow::{bail, Context};
use std::path::Path;
use tessera_ir::{parse_file, verify, Graph};

/// `--ukernel`: whether the CPU target may call its `std::arch` inner tiles.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum UkernelArg {
    /// The widest routines this CPU has: AVX2+FMA tiles, or on AVX-512 the 512-bit f32 tile,
    /// the AVX512-VNNI integer tile and the row routines (softmax, dynamic quantization, GELU).
    /// Cranelift emits the rest.
    Auto,
    /// The 256-bit (AVX2) routines only, even on an AVX-512 CPU: what an AVX2 host runs.
    Avx2,
    /// Cranelift-emitted code only.
    Off,
}

impl From<UkernelArg> for tessera_target_cpu::Ukernels {
    fn from(u: UkernelArg) -> Self {
        match u {
            UkernelArg::Auto => tessera_target_cpu::Ukernels::Auto,
            UkernelArg::Avx2 => tessera_target_cpu::Ukernels::Avx2,
            UkernelArg::Off => tessera_target_cpu::Ukernels::Off,
        }
    }
}

/// Loads and verifies a graph from a file, choosing the reader by extension.
pub fn load_graph(path: &Path) -> anyhow::Result<Graph> {
    load_graph_with(path, &tessera_compiler::onnx::ImportOptions::default())
}

/// `load_graph` with ONNX import options.
pub fn load_graph_with(path: &Path, options: &tessera_compiler::onnx::ImportOptions) -> anyhow::Result<Graph> {
    crate::must_exist(path, "the model file")?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("tir") => {}
        Some("onnx") => {
            return tessera_compiler::onnx::import_file_with(path, options).map_err(|e| anyhow::anyhow!("{e}"))
        }
        Some("gguf") => {
            let g = tessera_compiler::gguf::Gguf::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let m = tessera_compiler::llm::lower(
                &g,
                &tessera_compiler::llm::LowerOptions::new(tessera_compiler::llm::Logits::Last),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(m.graph);
        }
        _ => bail!("{}: unknown file type (expected .tir, .onnx or .gguf)", path.display()),
    }
    let g = parse_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    verify(&g).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())).context("the graph does not verify")?;
    Ok(g)
}
