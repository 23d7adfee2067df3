//! `tessera explain`: where each kernel of a model runs on a phone profile, and why.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tessera_compiler::passes::profile::DeviceProfile;
use tessera_compiler::place::{self, Problem};

#[derive(Args)]
pub struct ExplainArgs {
    /// The model (.onnx, .gguf or .tir).
    pub model: PathBuf,
    /// The device profile: a built-in name (snapdragon-8-gen-3, dimensity-9300,
    /// snapdragon-8-gen-2), `host` (this machine, measured by `tessera calibrate`), or a .toml file.
    #[arg(long, default_value = "snapdragon-8-gen-3")]
    pub profile: String,
    /// Sizes of symbolic dims, NAME=SIZE (repeatable). Unbound batch dims are 1, others 128.
    #[arg(long, value_name = "NAME=SIZE")]
    pub bind: Vec<String>,
    /// Write a Graphviz picture of the kernels coloured by unit (render: dot -Tsvg FILE).
    #[arg(long, value_name = "FILE")]
    pub dot: Option<PathBuf>,
    /// Write the simulated timeline as Chrome-trace JSON (open in ui.perfetto.dev).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Also run the exact search (branch and bound) and report the partitioner's gap to it:
    /// on the whole graph when it has at most this many kernels, else on every window of this
    /// many consecutive kernels (half-overlapping).
    #[arg(long, value_name = "KERNELS")]
    pub exact: Option<usize>,
}

/// Loads, optimizes and prices a model on a profile.
fn price(model: &std::path::Path, profile: &str, binds: &[String]) -> anyhow::Result<Problem> {
    let p = DeviceProfile::load(profile).map_err(|e| anyhow::anyhow!("--profile: {e}"))?;
    let mut g = super::load_graph(model)?;
    // The rewrites extract by the same cost model the placement uses.
    tessera_compiler::passes::saturate::run_pipeline_for_profile(&mut g, tessera_runtime::HETERO_PIPELINE, &p)?;
    // --bind, then 1 for batch dims and 128 for the rest.
    let b = Problem::default_bindings(&g, &super::ir::parse_binds(binds)?);
    eprintln!("pricing {} kernels on the CPU, GPU and NPU of {} ...", g.n_nodes(), p.name);
    let t = std::time::Instant::now();
    let problem = Problem::build(&g, &b, &p)?;
    eprintln!("priced in {:.1} s (NPU kernels compiled and simulated)", t.elapsed().as_secs_f64());
    Ok(problem)
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let problem = price(&args.model, &args.profile, &args.bind)?;
    let placement = place::partition(&problem)?;
    print!("{}", place::report::explain(&problem, &placement));
    if let Some(limit) = args.exact {
        let n = problem.kernels.len();
        if n > limit {
            let (solved, tried, worst) = place::partition::check_windows(&problem, limit, 5_000_000);
            println!(
                "exact search: {n} kernels, more than {limit}; on its {tried} windows of {limit} consecutive kernels it solved {solved}, where the partitioner is at most {:.2}% above the optimum",
                100.0 * worst
            );
        } else {
            match place::exact(&problem, 50_000_000) {
                Some((s, expanded)) => println!(
                    "exact search: optimum {:.1} us ({expanded} states); the partitioner is {:.2}% above it",
                    s.makespan,
                    100.0 * (placement.schedule.makespan / s.makespan - 1.0)
                ),
                None => println!("exact search: not solved within 50M states"),
            }
        }
    }
    if let Some(path) = &args.dot {
        std::fs::write(path, place::report::dot(&problem, &placement.schedule))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("placement picture: {} (render: dot -Tsvg {} -o placement.svg)", path.display(), path.display());
    }
    if let Some(path) = &args.trace {
        let spans = place::report::schedule_spans(
            &problem,
            &placement.schedule,
            &format!("{} (simulated)", problem.profile.name),
        );
        std::fs::write(path, place::report::chrome_trace(&spans))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("timeline: {} (open in https://ui.perfetto.dev)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
