//! `tessera demo`: runs the committed int4 transformer block on the interpreter and checks it
//! against outputs computed independently with numpy (scripts/gen_transformer_block.py), then
//! imports the real paraphrase-MiniLM-L3-v2 (fp32 and its int4 QDQ variant, fetched by
//! scripts/fetch_models.sh) and checks it against onnxruntime.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use tessera_compiler::onnx::{decode_tensor, import_file, read_tensor_pb};
use tessera_ir::compare::compare;
use tessera_ir::{parse, verify, Graph, Op};

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

pub fn run() -> anyhow::Result<ExitCode> {
    let mut ok = true;
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
    ok &= c.passed();

    let models = Path::new(".cache/models");
    println!("\n2. paraphrase-MiniLM-L3-v2 imported from ONNX, run on the interpreter and on the CPU target, against onnxruntime");
    if !models.join("minilm-l3-fp32.onnx").exists() {
        println!("  skipped: run scripts/fetch_models.sh first (it downloads the models and onnxruntime's reference outputs)");
    }
    for name in ["minilm-l3-fp32", "minilm-l3-qdq-int4-b32"] {
        let path = models.join(format!("{name}.onnx"));
        if !path.exists() {
            continue;
        }
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
            ok &= c.passed();
        }
        ok &= optimize_and_check(&mut g, &set)?;
    }
    println!("\nnext: `tessera ir .cache/models/minilm-l3-fp32.onnx --stats` shows what the optimizer does;");
    println!("      `tessera conformance .cache/onnx-node-tests --target cpu` runs the ONNX backend node tests;");
    println!("      `tessera bench .cache/models/minilm-l3-fp32.onnx` times the CPU target against onnxruntime.");
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
