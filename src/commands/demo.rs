//! `tessera demo`, the README's first command: runs the committed int4 transformer block on the
//! interpreter against numpy; fetches the real models if they are missing (scripts/fetch_models.sh,
//! with a progress bar); checks paraphrase-MiniLM-L3-v2 (fp32 and int4) against onnxruntime;
//! then deploys the int4 model: compiles it ahead of time for this machine and for a phone
//! (arm64, placed on the phone profile's CPU, GPU and NPU), runs the host artifact against
//! onnxruntime's outputs, and writes the phone's simulated timeline (SVG) and placement picture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_compiler::onnx::{decode_tensor, import_file, read_tensor_pb};
use tessera_ir::compare::compare;
use tessera_ir::{parse, verify, Graph, Op};

#[derive(Args)]
pub struct DemoArgs {
    /// Where to write the artifacts and pictures.
    #[arg(long, default_value = "tessera-demo")]
    pub out: PathBuf,
    /// The phone profile to compile for and place on (snapdragon-8-gen-3, dimensity-9300,
    /// snapdragon-8-gen-2, or a .toml file).
    #[arg(long, default_value = "snapdragon-8-gen-3")]
    pub profile: String,
}

/// The model the demo deploys: MiniLM-L3 with int4 block-quantized weights (QDQ, block 32).
const DEFAULT_MODEL: &str = "minilm-l3-qdq-int4-b32";
const MODELS: &str = ".cache/models";

const BLOCK: &str = include_str!("../../tests/filetests/run/transformer_block.tir");
const INPUT: &[u8] = include_bytes!("../../tests/filetests/run/transformer_block/test_data_set_0/input_0.pb");
const OUTPUT: &[u8] = include_bytes!("../../tests/filetests/run/transformer_block/test_data_set_0/output_0.pb");

fn describe(g: &Graph) {
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, n) in g.nodes() {
        *ops.entry(n.op.name()).or_default() += 1;
    }
    let quantized = g.values().filter(|(_, v)| v.ty.quant.is_some()).count();
    println!(
        "graph @{}: {} nodes, {} constants ({} quantized weights), {:.1} MB of weights as stored",
        g.name,
        g.n_nodes(),
        g.constants().len(),
        quantized,
        g.constant_bytes() as f64 / 1e6
    );
    println!("  ops: {}", ops.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "));
    let inputs: Vec<String> = g.inputs().iter().map(|(n, v)| format!("{n}: {}", g.ty(*v))).collect();
    println!("  inputs: {}", inputs.join(", "));
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    println!("Tessera demo\n\n1. a transformer block with int4 block-quantized weights (tests/filetests/run/transformer_block.tir)");
    let g = parse(BLOCK).map_err(|e| anyhow::anyhow!("the built-in block does not parse: {e}"))?;
    verify(&g).map_err(|e| anyhow::anyhow!("the built-in block does not verify: {e}"))?;
    describe(&g);
    let attn = g.nodes().filter(|(_, n)| matches!(n.op, Op::Attention { .. })).count();
    println!("  attention nodes: {attn}; the sequence length is symbolic (`seq`)");
    let x = decode_tensor(INPUT)?.tensor;
    let expected = decode_tensor(OUTPUT)?.tensor;
    let start = std::time::Instant::now();
    let out = tessera_ir::run(&g, vec![x.clone()])?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!("  ran on the reference interpreter: x {x} -> y {} in {ms:.2} ms", out[0]);
    let c = compare(&out[0], &expected, 1e-4, 1e-5).map_err(|e| anyhow::anyhow!(e))?;
    println!("  against numpy's float32 forward pass: {c}");
    let block_ok = c.passed();

    ensure_models()?;
    let models = Path::new(MODELS);
    println!("\n2. paraphrase-MiniLM-L3-v2 imported from ONNX, run on the interpreter and on the CPU target, against onnxruntime");
    let mut minilm_ok = true;
    for name in ["minilm-l3-fp32", DEFAULT_MODEL] {
        let path = models.join(format!("{name}.onnx"));
        let start = std::time::Instant::now();
        let mut g = import_file(&path)?;
        println!("\n{} (imported in {:.0} ms)", path.display(), start.elapsed().as_secs_f64() * 1e3);
        describe(&g);
        // The real sentences: batch 3, padded to 17 tokens.
        let set = models.join(name).join("test_data_set_3");
        let inputs = (0..g.inputs().len())
            .map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).map(|t| t.tensor))
            .collect::<Result<Vec<_>, _>>()?;
        let start = std::time::Instant::now();
        let outputs = tessera_ir::run(&g, inputs)?;
        println!("  ran 3 real sentences (batch 3, seq 17) in {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
        for (j, ((out_name, _), t)) in g.outputs().iter().zip(&outputs).enumerate() {
            let expected = read_tensor_pb(&set.join(format!("output_{j}.pb")))?.tensor;
            let c = compare(t, &expected, 0.0, 1e-4).map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "  output {out_name:?} {t}: max abs error {:.2e}, cosine {:.7} vs onnxruntime",
                c.max_abs_error, c.cosine
            );
            minilm_ok &= c.passed();
        }
        minilm_ok &= optimize_and_check(&mut g, &set)?;
    }

    let (deploy_ok, lines) = deploy(&args)?;
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    println!("\nsummary");
    println!("  {} int4 transformer block on the interpreter against numpy", mark(block_ok));
    println!("  {} MiniLM-L3 fp32 and int4 against onnxruntime (interpreter, optimized, JIT)", mark(minilm_ok));
    println!("  {} {}", mark(deploy_ok), lines.first().map(String::as_str).unwrap_or(""));
    for l in lines.iter().skip(1) {
        println!("       {l}");
    }
    let out = args.out.display();
    println!("\nnext:");
    println!("  open {out}/timeline.svg                        which unit runs each kernel on the phone, over time");
    println!("  tessera inspect {out}/{DEFAULT_MODEL}.aarch64-android.tsa    what a phone artifact holds");
    println!("  tessera run {out}/{DEFAULT_MODEL}.host.tsa --inputs {MODELS}/{DEFAULT_MODEL}/test_data_set_0 --check");
    println!(
        "  tessera explain {MODELS}/{DEFAULT_MODEL}.onnx --profile {}    where each kernel runs and why",
        args.profile
    );
    println!("  tessera bench {MODELS}/{DEFAULT_MODEL}.onnx      Tessera against onnxruntime, in the same run");
    println!("  tessera ir {MODELS}/{DEFAULT_MODEL}.onnx --stats  what the optimizer does");
    Ok(if block_ok && minilm_ok && deploy_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]").expect("a valid template"));
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs scripts/fetch_models.sh when the default model is missing, with a progress bar that
/// shows the script's current step; its whole output goes to .cache/fetch_models.log.
fn ensure_models() -> anyhow::Result<()> {
    let models = Path::new(MODELS);
    if models.join("MANIFEST.txt").exists() && models.join(format!("{DEFAULT_MODEL}.onnx")).exists() {
        return Ok(());
    }
    let script = Path::new("scripts/fetch_models.sh");
    if !script.exists() {
        anyhow::bail!(
            "the real models are not in {MODELS} and scripts/fetch_models.sh is not here: run the demo from a Tessera checkout"
        );
    }
    println!("\nfetching the real models (pinned versions and checksums; about a minute the first time)");
    std::fs::create_dir_all(".cache")?;
    let log_path = Path::new(".cache/fetch_models.log");
    let mut child = std::process::Command::new("bash")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run bash {}: {e}", script.display()))?;
    let pb = ProgressBar::new(0);
    pb.set_style(ProgressStyle::with_template("  {spinner} [{elapsed}] {wide_msg}").expect("a valid template"));
    pb.enable_steady_tick(Duration::from_millis(120));
    // Both streams into one channel: the bar shows the latest line, the log keeps them all.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        })
    })
    .collect();
    drop(tx);
    let mut log = String::new();
    for line in rx {
        if !line.trim().is_empty() {
            pb.set_message(line.trim().chars().take(100).collect::<String>());
        }
        log.push_str(&line);
        log.push('\n');
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait()?;
    pb.finish_and_clear();
    std::fs::write(log_path, &log)?;
    if !status.success() {
        let tail: Vec<&str> = log.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        anyhow::bail!(
            "scripts/fetch_models.sh failed ({status}); its last lines:\n{}\n(whole log: {})",
            tail.join("\n"),
            log_path.display()
        );
    }
    println!("  done (log: {})", log_path.display());
    Ok(())
}

/// Compiles the default model ahead of time for this machine and for the phone, runs the host
/// artifact on every reference data set against onnxruntime, and places the model on the
/// phone: the simulated timeline (SVG) and the placement (Graphviz). Returns whether the
/// checks passed and the summary lines.
fn deploy(args: &DemoArgs) -> anyhow::Result<(bool, Vec<String>)> {
    use tessera_runtime::{compile_artifact, CompileOptions, Session};
    let model = Path::new(MODELS).join(format!("{DEFAULT_MODEL}.onnx"));
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.out.display()))?;
    let mut summary = Vec::new();
    let mib = |n: usize| n as f64 / (1 << 20) as f64;

    println!("\n3. {DEFAULT_MODEL} compiled ahead of time, for this machine and for a phone ({})", args.profile);
    let pb = spinner("compiling for this machine");
    let (host_bytes, host) = compile_artifact(&model, &CompileOptions::default())?;
    pb.set_message(format!(
        "compiling for aarch64-linux-android, placed on {} (NPU kernels compiled and simulated to price them)",
        args.profile
    ));
    let phone_opts = CompileOptions {
        triple: Some("aarch64-linux-android".into()),
        profile: Some(args.profile.clone()),
        ..Default::default()
    };
    let (phone_bytes, phone) = compile_artifact(&model, &phone_opts)?;
    pb.finish_and_clear();
    let host_path = args.out.join(format!("{DEFAULT_MODEL}.host.tsa"));
    let phone_path = args.out.join(format!("{DEFAULT_MODEL}.aarch64-android.tsa"));
    std::fs::write(&host_path, &host_bytes)?;
    std::fs::write(&phone_path, &phone_bytes)?;
    for (path, bytes, r) in [(&host_path, &host_bytes, &host), (&phone_path, &phone_bytes, &phone)] {
        println!(
            "  {}: {:.1} MiB, {} for {}: {} kernel calls ({} distinct, {:.0} KiB of code), compiled in {:.0} ms",
            path.display(),
            mib(bytes.len()),
            if r.triple.starts_with("aarch64") { "arm64 NEON code" } else { "machine code" },
            r.triple,
            r.kernels,
            r.distinct_kernels,
            r.code_bytes as f64 / 1024.0,
            r.times.total_ms()
        );
    }

    println!("\n4. the host artifact loaded (no compiler runs) and run on onnxruntime's reference data");
    let session = Session::from_artifact(&host_path, std::thread::available_parallelism().map_or(1, |n| n.get()))?;
    println!("  opened, checked and mapped in {:.1} ms", session.startup.load_ms);
    let mut ok = true;
    let mut worst = 0f64;
    let mut sets = 0;
    for set in 0.. {
        let dir = Path::new(MODELS).join(DEFAULT_MODEL).join(format!("test_data_set_{set}"));
        if !dir.exists() {
            break;
        }
        let inputs = (0..session.inputs().len())
            .map(|i| read_tensor_pb(&dir.join(format!("input_{i}.pb"))).map(|t| t.tensor))
            .collect::<Result<Vec<_>, _>>()?;
        let t = std::time::Instant::now();
        let outputs = session.run(&inputs)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let mut set_worst = 0f64;
        for (j, out) in outputs.iter().enumerate() {
            let expected = read_tensor_pb(&dir.join(format!("output_{j}.pb")))?.tensor;
            let c = compare(out, &expected, 0.0, 1e-4).map_err(|e| anyhow::anyhow!(e))?;
            set_worst = set_worst.max(c.max_abs_error);
            ok &= c.passed();
        }
        worst = worst.max(set_worst);
        sets += 1;
        println!(
            "  test_data_set_{set}: inputs {}, ran in {ms:.2} ms, max abs error {set_worst:.2e} vs onnxruntime",
            inputs.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    summary.push(format!(
        "host artifact: {sets} reference data sets {} onnxruntime (max abs error {worst:.1e}); opened in {:.1} ms",
        if ok { "match" } else { "DO NOT match" },
        session.startup.load_ms
    ));

    println!("\n5. {DEFAULT_MODEL} placed on the {} (CPU, GPU and NPU by the cost model)", args.profile);
    // The phone compile placed the model already (its summary is in the phone artifact).
    let tessera_runtime::Placed { problem, placement } =
        phone.placed.as_ref().ok_or_else(|| anyhow::anyhow!("the phone compile returned no placement"))?;
    let p = &problem.profile;
    let b = &problem.bindings;
    let bound: Vec<String> = b.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    println!("  (symbolic dims priced at {})", bound.join(", "));
    let text = tessera_compiler::place::report::summary(problem, placement);
    for line in text.lines() {
        println!("  {line}");
    }
    let spans = tessera_compiler::place::report::schedule_spans(
        problem,
        &placement.schedule,
        &format!("{} (simulated)", p.name),
    );
    let svg = args.out.join("timeline.svg");
    std::fs::write(
        &svg,
        tessera_compiler::place::report::timeline_svg(
            &spans,
            &format!("{DEFAULT_MODEL} on {}: simulated timeline ({})", p.name, bound.join(", ")),
        ),
    )?;
    let trace = args.out.join("timeline.json");
    std::fs::write(&trace, tessera_compiler::place::report::chrome_trace(&spans))?;
    let dot = args.out.join("placement.dot");
    std::fs::write(&dot, tessera_compiler::place::report::dot(problem, &placement.schedule))?;
    let rendered = args.out.join("placement.svg");
    let have_dot = std::process::Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot)
        .arg("-o")
        .arg(&rendered)
        .status()
        .is_ok_and(|s| s.success());
    println!("  timeline: {} (open in a browser; {} for ui.perfetto.dev)", svg.display(), trace.display());
    if have_dot {
        println!("  placement picture: {}", rendered.display());
    } else {
        println!(
            "  placement picture: {} (Graphviz is not installed: apt install graphviz, then dot -Tsvg {} -o {})",
            dot.display(),
            dot.display(),
            rendered.display()
        );
    }
    if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("partitioned")) {
        summary.push(format!("phone placement on {}: {}", p.name, line.trim()));
    }
    summary.push(format!(
        "artifacts: {} ({:.1} MiB, this machine) and {} ({:.1} MiB, arm64)",
        host_path.display(),
        mib(host_bytes.len()),
        phone_path.display(),
        mib(phone_bytes.len())
    ));
    summary.push(format!(
        "pictures: {} and {}",
        svg.display(),
        if have_dot { rendered.display() } else { dot.display() }
    ));
    Ok((ok, summary))
}

/// Runs the default pipeline, prints what it saved, and checks the optimized graph against
/// onnxruntime's outputs in `set` again.
fn optimize_and_check(g: &mut Graph, set: &Path) -> anyhow::Result<bool> {
    use tessera_compiler::passes::{memory::PlanOptions, stats::stats, stats::Stats, Pipeline, DEFAULT_PIPELINE};
    let opts = PlanOptions::default();
    let before = stats(g, &opts);
    let start = std::time::Instant::now();
    Pipeline::default_pipeline().run(g, &mut |_| {})?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let after = stats(g, &opts);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let moved = |s: &Stats| mib(s.activation_bytes_read + s.activation_bytes_written);
    println!(
        "  optimized in {ms:.0} ms ({DEFAULT_PIPELINE}): {} -> {} nodes, {} kernels",
        before.nodes, after.nodes, after.kernels
    );
    println!(
        "    at seq 128: activation bytes moved per inference {:.1} -> {:.1} MiB; activation arena {:.2} MiB (greedy-by-size before: {:.2} MiB)",
        moved(&before),
        moved(&after),
        mib(after.planned_peak.unwrap_or(0)),
        mib(before.greedy_by_size.unwrap_or(0))
    );
    let inputs = (0..g.inputs().len())
        .map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).map(|t| t.tensor))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = tessera_ir::run(g, inputs)?;
    let (mut worst, mut ok) = (0f64, true);
    for (j, t) in outputs.iter().enumerate() {
        let expected = read_tensor_pb(&set.join(format!("output_{j}.pb")))?.tensor;
        let c = compare(t, &expected, 0.0, 1e-4).map_err(|e| anyhow::anyhow!(e))?;
        worst = worst.max(c.max_abs_error);
        ok &= c.passed();
    }
    println!("    the optimized graph still matches onnxruntime on the interpreter: max abs error {worst:.2e}");
    // The same optimized graph JIT-compiled for this CPU.
    let start = std::time::Instant::now();
    let program = tessera_target_cpu::compile(g, &tessera_target_cpu::CpuOptions::default())
        .map_err(|e| anyhow::anyhow!("the CPU target: {e}"))?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let inputs = (0..g.inputs().len())
        .map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).map(|t| t.tensor))
        .collect::<Result<Vec<_>, _>>()?;
    program.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?; // plans the arena for this shape
    let start = std::time::Instant::now();
    let outputs = program.run(&inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut worst = 0f64;
    for (j, t) in outputs.iter().enumerate() {
        let expected = read_tensor_pb(&set.join(format!("output_{j}.pb")))?.tensor;
        let c = compare(t, &expected, 0.0, 1e-4).map_err(|e| anyhow::anyhow!(e))?;
        worst = worst.max(c.max_abs_error);
        ok &= c.passed();
    }
    println!(
        "  CPU target: {} kernels JIT-compiled with Cranelift for {} in {compile_ms:.0} ms; ran the sentences in {run_ms:.2} ms ({} threads): max abs error {worst:.2e} vs onnxruntime",
        program.stats.kernels,
        program.stats.isa,
        program.threads()
    );
    Ok(ok)
}
