//! `tessera conformance`: runs the ONNX backend node tests and prints a per-op table.

use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tessera_compiler::conformance::{cases, run_case_by, run_case_on, Backend, CaseResult, Outcome};

#[derive(Clone, Copy, ValueEnum)]
pub enum Target {
    /// The reference interpreter.
    Interp,
    /// The CPU target: every kernel JIT-compiled with Cranelift (one thread per test).
    Cpu,
    /// The GPU target through Vulkan (lavapipe where there is no GPU): a test with a node the
    /// GPU target declines counts as unsupported; floats compare with atol 1e-4.
    Gpu,
}

#[derive(Args)]
pub struct ConformanceArgs {
    /// Folder of node tests (each a folder with model.onnx and test_data_set_N/), e.g. the
    /// onnx 1.22.0 wheel's onnx/backend/test/data/node (scripts/fetch_models.sh extracts it to
    /// .cache/onnx-node-tests).
    pub dir: PathBuf,
    /// Where to run the tests.
    #[arg(long, value_enum, default_value_t = Target::Interp)]
    pub target: Target,
    /// Run only tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print every failed (and, with -v -v, unsupported) test with the reason.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Passes to run on each imported model before interpreting it (`canonicalize`), so the
    /// node tests check the passes too.
    #[arg(long, default_value = "none")]
    pub passes: String,
    /// Exit 1 if any test of the transformer op set fails or is unsupported.
    #[arg(long)]
    pub require_transformer_set: bool,
}

#[derive(Default)]
struct Row {
    passed: usize,
    failed: usize,
    unsupported: usize,
}

impl Row {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Unsupported(_) => self.unsupported += 1,
        }
    }
}

pub fn run(args: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let backend = match args.target {
        Target::Interp | Target::Gpu => Backend::Interp,
        Target::Cpu => Backend::Cpu,
    };
    let vk = match args.target {
        Target::Gpu => Some(tessera_runtime::vulkan::Vulkan::new()?),
        _ => None,
    };
    crate::must_exist(&args.dir, "the node-test folder")?;
    let dirs = cases(&args.dir, args.filter.as_deref())
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", args.dir.display()))?;
    anyhow::ensure!(!dirs.is_empty(), "{} holds no test folders with a model.onnx", args.dir.display());
    tessera_compiler::passes::Pipeline::parse(&args.passes)?;
    let pipeline = (args.passes != "none").then_some(args.passes.as_str());
    let results: Vec<CaseResult> = match &vk {
        Some(vk) => {
            let runner = |g: &tessera_ir::Graph, inputs: &[tessera_ir::Tensor]| {
                vk.run_case(g, inputs, tessera_runtime::vulkan::Fallback::Fail)
            };
            dirs.iter().map(|d| run_case_by(d, pipeline, 1e-4, &runner)).collect()
        }
        None => dirs.iter().map(|d| run_case_on(d, pipeline, backend)).collect(),
    };
    let mut table: BTreeMap<String, Row> = BTreeMap::new();
    let (mut all, mut transformer) = (Row::default(), Row::default());
    for r in &results {
        table.entry(r.category()).or_default().add(&r.outcome);
        all.add(&r.outcome);
        if r.is_transformer() {
            transformer.add(&r.outcome);
        }
    }
    println!("{:<28} {:>7} {:>7} {:>12}", "op", "passed", "failed", "unsupported");
    for (op, row) in &table {
        println!("{op:<28} {:>7} {:>7} {:>12}", row.passed, row.failed, row.unsupported);
    }
    for r in &results {
        match &r.outcome {
            Outcome::Failed(why) if args.verbose >= 1 => println!("FAILED {}: {why}", r.name),
            Outcome::Unsupported(why) if args.verbose >= 2 => println!("unsupported {}: {why}", r.name),
            _ => {}
        }
    }
    let t = &transformer;
    println!("transformer op set: {} passed, {} failed, {} unsupported", t.passed, t.failed, t.unsupported);
    println!("{} passed, {} failed, {} unsupported", all.passed, all.failed, all.unsupported);
    let bad = all.failed > 0 || (args.require_transformer_set && (t.failed > 0 || t.unsupported > 0));
    Ok(if bad { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
