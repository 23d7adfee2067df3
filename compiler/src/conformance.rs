//! The ONNX backend node tests as a conformance suite: each test folder holds `model.onnx` and
//! `test_data_set_N/{input,output}_i.pb`. A case passes when every data set's outputs match
//! within ONNX's backend-test tolerances (rtol 1e-3, atol 1e-7); it is unsupported when the
//! model needs an op, opset or dtype Tessera does not support, and failed otherwise.

use crate::onnx::{import_file, read_tensor_pb, ImportError, TensorIoError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tessera_ir::compare::compare;
use tessera_ir::Graph;

/// The ops of a transformer, from the ONNX frontend issue: their node tests must all pass.
pub const TRANSFORMER_OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "LayerNormalization",
    "Softmax",
    "Erf",
    "Tanh",
    "Pow",
    "Gather",
    "Shape",
    "Reshape",
    "Transpose",
    "Slice",
    "Concat",
    "Unsqueeze",
    "Where",
    "Expand",
    "Cast",
    "ReduceSum",
    "ReduceMean",
    "Equal",
    "ConstantOfShape",
    "Clip",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "MatMulNBits",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sqrt",
    "Relu",
    "Sigmoid",
    "Gelu",
    "Split",
    "Squeeze",
    "Range",
    "Max",
    "Min",
    "Neg",
    "Not",
    "And",
    "Or",
    "IsNaN",
    "GatherND",
    "RMSNormalization",
    "RotaryEmbedding",
    "Attention",
    "Identity",
    "Constant",
];

/// What happened to one test.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Unsupported(String),
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    /// The op types of the model's nodes (with domain for non-default domains).
    pub ops: BTreeSet<String>,
    pub outcome: Outcome,
}

impl CaseResult {
    /// Whether every op of the test is in the transformer set.
    pub fn is_transformer(&self) -> bool {
        !self.ops.is_empty() && self.ops.iter().all(|o| TRANSFORMER_OPS.contains(&o.as_str()))
    }

    /// The op a test is filed under: its one op besides `Constant`, or the test's name for
    /// composite (expanded) tests.
    pub fn category(&self) -> String {
        let main: Vec<&String> = self.ops.iter().filter(|o| *o != "Constant").collect();
        match main.as_slice() {
            [one] => (*one).clone(),
            _ => "(composite)".into(),
        }
    }
}

/// The test folders under `dir` (those holding a model.onnx), sorted.
pub fn cases(dir: &Path, filter: Option<&str>) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").exists())
        .filter(|p| filter.is_none_or(|f| p.file_name().is_some_and(|n| n.to_string_lossy().contains(f))))
        .collect();
    out.sort();
    Ok(out)
}

/// Reads the op types of a model without importing it.
fn model_ops(path: &Path) -> BTreeSet<String> {
    use prost::Message;
    let Ok(bytes) = std::fs::read(path) else { return BTreeSet::new() };
    let Ok(model) = crate::onnx::proto::ModelProto::decode(bytes.as_slice()) else { return BTreeSet::new() };
    model
        .graph
        .map(|g| {
            g.node
                .iter()
                .map(|n| {
                    let op = n.op_type.clone().unwrap_or_default();
                    match n.domain.as_deref().unwrap_or("") {
                        "" | "ai.onnx" => op,
                        d => format!("{d}.{op}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where a conformance case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter.
    Interp,
    /// The CPU target (Cranelift JIT), single-threaded.
    Cpu,
}

/// Why a [`Runner`] did not produce outputs.
#[derive(Debug)]
pub enum RunnerError {
    /// The engine has no way to run (part of) this graph: counted as unsupported.
    Unsupported(String),
    /// The engine failed: counted as a failure.
    Failed(String),
}

/// An engine outside this crate (the GPU target's Vulkan executor lives in the runtime):
/// runs an imported, optimized graph on inputs in its input order.
pub type Runner<'a> = &'a (dyn Fn(&Graph, &[tessera_ir::Tensor]) -> Result<Vec<tessera_ir::Tensor>, RunnerError> + 'a);

/// Runs one test on `runner` after the passes of `pipeline`, comparing float outputs with
/// relative tolerance 1e-3 and absolute tolerance `atol` (ONNX's tests use 1e-7; a GPU's exp
/// and reductions round differently).
pub fn run_case_by(dir: &Path, pipeline: Option<&str>, atol: f64, runner: Runner) -> CaseResult {
    run_case_in(dir, pipeline, Exec::Runner(runner), atol)
}

/// Runs one test on the reference interpreter.
pub fn run_case(dir: &Path) -> CaseResult {
    run_case_with(dir, None)
}

/// Runs one test on the reference interpreter after the passes of `pipeline`.
pub fn run_case_with(dir: &Path, pipeline: Option<&str>) -> CaseResult {
    run_case_on(dir, pipeline, Backend::Interp)
}

/// Runs one test on the reference interpreter after the passes of `pipeline` (text such as
/// `canonicalize`), so every pass is checked against the same references.
pub fn run_case_on(dir: &Path, pipeline: Option<&str>, backend: Backend) -> CaseResult {
    let exec = match backend {
        Backend::Interp => Exec::Interp,
        Backend::Cpu => Exec::Cpu,
    };
    run_case_in(dir, pipeline, exec, 1e-7)
}

#[derive(Clone, Copy)]
enum Exec<'a> {
    Interp,
    Cpu,
    Runner(Runner<'a>),
}

fn run_case_in(dir: &Path, pipeline: Option<&str>, exec: Exec, atol: f64) -> CaseResult {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let model = dir.join("model.onnx");
    let ops = model_ops(&model);
    let run = std::panic::AssertUnwindSafe(|| run_model(dir, &model, pipeline, exec, atol));
    let outcome = std::panic::catch_unwind(run).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Outcome::Failed(format!("panicked: {msg}"))
    });
    CaseResult { name, ops, outcome }
}

/// How a test runs on the CPU target: compiled once, or per value of shape-like inputs.
enum CpuRun {
    Program(Box<tessera_target_cpu::Program>),
    Specializing(Box<tessera_target_cpu::Specializing>),
}

impl CpuRun {
    fn run(&self, inputs: &[tessera_ir::Tensor]) -> Result<Vec<tessera_ir::Tensor>, tessera_target_cpu::CpuError> {
        match self {
            CpuRun::Program(p) => p.run(inputs),
            CpuRun::Specializing(s) => s.run(inputs),
        }
    }
}

fn run_model(dir: &Path, model: &Path, pipeline: Option<&str>, exec: Exec, atol: f64) -> Outcome {
    let mut g: Graph = match import_file(model) {
        Ok(g) => g,
        Err(e) if e.is_unsupported() => return Outcome::Unsupported(short(&e)),
        Err(e) => return Outcome::Failed(format!("import: {}", short(&e))),
    };
    // Shapes that follow from input values are known only per run: the CPU target then runs the
    // pipeline on each specialized graph instead.
    let unoptimized =
        (matches!(exec, Exec::Cpu) && tessera_target_cpu::specialize::shapes_depend_on_data(&g)).then(|| g.clone());
    if let Some(p) = pipeline {
        let result = tessera_passes::Pipeline::parse(p).and_then(|mut pl| {
            pl.verify_each = true;
            pl.run(&mut g, &mut |_| {})
        });
        if let Err(e) = result {
            return Outcome::Failed(format!("passes: {e}"));
        }
    }
    let program = match exec {
        Exec::Interp | Exec::Runner(_) => None,
        Exec::Cpu => {
            let opts = tessera_target_cpu::CpuOptions { threads: 1, ..Default::default() };
            // Shapes that depend on input values: compiled at the first run, per value.
            let compiled = if let Some(u) = &unoptimized {
                let spec = match pipeline {
                    Some(p) => tessera_target_cpu::Specializing::with_pipeline(u, &opts, p),
                    None => tessera_target_cpu::Specializing::new(u, &opts),
                };
                spec.map(|s| CpuRun::Specializing(Box::new(s)))
            } else if tessera_target_cpu::specialize::shapes_depend_on_data(&g) {
                tessera_target_cpu::Specializing::new(&g, &opts).map(|s| CpuRun::Specializing(Box::new(s)))
            } else {
                tessera_target_cpu::compile(&g, &opts).map(|p| CpuRun::Program(Box::new(p)))
            };
            match compiled {
                Ok(p) => Some(p),
                Err(e) if e.is_unsupported() => return Outcome::Unsupported(format!("cpu: {e}")),
                Err(e) => return Outcome::Failed(format!("cpu compile: {e}")),
            }
        }
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    sets.sort();
    if sets.is_empty() {
        return Outcome::Failed("no test_data_set folders".into());
    }
    for set in sets {
        let mut inputs = Vec::new();
        for i in 0..g.inputs().len() {
            match read_tensor_pb(&set.join(format!("input_{i}.pb"))) {
                Ok(t) => inputs.push(t.tensor),
                Err(e @ TensorIoError::UnsupportedDtype { .. }) => return Outcome::Unsupported(e.to_string()),
                Err(e) => return Outcome::Failed(format!("input {i}: {e}")),
            }
        }
        let outputs = match (&program, exec) {
            (None, Exec::Runner(r)) => match r(&g, &inputs) {
                Ok(o) => o,
                Err(RunnerError::Unsupported(why)) => return Outcome::Unsupported(why),
                Err(RunnerError::Failed(why)) => return Outcome::Failed(why),
            },
            (None, _) => match tessera_ir::run(&g, inputs) {
                Ok(o) => o,
                Err(e) => return Outcome::Failed(format!("run: {e}")),
            },
            (Some(p), _) => match p.run(&inputs) {
                Ok(o) => o,
                Err(e) if e.is_unsupported() => return Outcome::Unsupported(format!("cpu: {e}")),
                Err(e) => return Outcome::Failed(format!("cpu run: {e}")),
            },
        };
        for (j, actual) in outputs.iter().enumerate() {
            let expected = match read_tensor_pb(&set.join(format!("output_{j}.pb"))) {
                Ok(t) => t.tensor,
                Err(e @ TensorIoError::UnsupportedDtype { .. }) => return Outcome::Unsupported(e.to_string()),
                Err(e) => return Outcome::Failed(format!("output {j}: {e}")),
            };
            match compare(actual, &expected, 1e-3, atol) {
                Ok(c) if c.passed() => {}
                Ok(c) => return Outcome::Failed(format!("output {j}: {c}")),
                Err(e) => return Outcome::Failed(format!("output {j}: {e}")),
            }
        }
    }
    Outcome::Passed
}

fn short(e: &ImportError) -> String {
    let s = e.to_string();
    // Drop the model path: every case's model is called model.onnx.
    match s.split_once("model.onnx") {
        Some((_, rest)) => rest.trim_start_matches([':', ' ']).to_string(),
        None => s,
    }
}
