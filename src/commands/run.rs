//! `tessera run`: run a graph on the interpreter with ONNX TensorProto inputs, and check outputs.

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
    /// Absolute tolerance for float outputs (ONNX's backend tests use 1e-7).
    #[arg(long, default_value_t = 1e-7)]
    pub atol: f64,
    /// Compute u8 x i8 MatMulInteger the way onnxruntime's x86 kernel does (adjacent products
    /// summed in saturating int16) instead of exactly, to compare with onnxruntime's outputs.
    #[arg(long)]
    pub match_onnxruntime: bool,
    /// Passes to run before interpreting, comma-separated (`canonicalize`), or `none`.
    #[arg(long, default_value = "none")]
    pub passes: String,
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
    let options = tessera_compiler::onnx::ImportOptions { onnxruntime_x86_matmul_integer: args.match_onnxruntime };
    let mut g = super::load_graph_with(&args.file, &options)?;
    tessera_compiler::passes::Pipeline::parse(&args.passes)?.run(&mut g, &mut |_| {})?;
    let mut failed = 0;
    for set in data_sets(&args.inputs)? {
        let inputs = read_inputs(&g, &set)?;
        let start = std::time::Instant::now();
        let outputs = tessera_ir::run(&g, inputs).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
        let elapsed = start.elapsed();
        println!("{}: ran on the interpreter in {:.2} ms", set.display(), elapsed.as_secs_f64() * 1e3);
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
            match compare(t, &expected, args.rtol, args.atol) {
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
        eprintln!("{failed} output(s) did not match (rtol {}, atol {})", args.rtol, args.atol);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The first few values of a tensor.
pub fn preview(t: &Tensor) -> String {
    let v = t.to_f64_vec();
    let shown: Vec<String> = v.iter().take(6).map(|x| format!("{x:.5}")).collect();
    format!("[{}{}]", shown.join(", "), if v.len() > 6 { ", ..." } else { "" })
}
