//! `tessera demo`: runs the committed int4 transformer block on the interpreter and checks it
//! against outputs computed independently with numpy (scripts/gen_transformer_block.py).

use std::collections::BTreeMap;
use std::process::ExitCode;
use tessera_compiler::onnx::decode_tensor;
use tessera_ir::compare::compare;
use tessera_ir::{parse, verify, Op};

const BLOCK: &str = include_str!("../../tests/filetests/run/transformer_block.tir");
const INPUT: &[u8] = include_bytes!("../../tests/filetests/run/transformer_block/test_data_set_0/input_0.pb");
const OUTPUT: &[u8] = include_bytes!("../../tests/filetests/run/transformer_block/test_data_set_0/output_0.pb");

pub fn run() -> anyhow::Result<ExitCode> {
    println!("Tessera demo: a transformer block with int4 block-quantized weights\n");
    let g = parse(BLOCK).map_err(|e| anyhow::anyhow!("the built-in block does not parse: {e}"))?;
    verify(&g).map_err(|e| anyhow::anyhow!("the built-in block does not verify: {e}"))?;
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, n) in g.nodes() {
        *ops.entry(n.op.name()).or_default() += 1;
    }
    let packed: u64 = g.constant_bytes();
    let unpacked: usize = g.constants().iter().map(|c| g.ty(c.value).shape.static_numel().unwrap_or(0) * 4).sum();
    let quantized = g.values().filter(|(_, v)| v.ty.quant.is_some()).count();
    println!(
        "graph @{}: {} nodes, {} constants ({} int4 weight matrices)",
        g.name,
        g.n_nodes(),
        g.constants().len(),
        quantized
    );
    println!("  ops: {}", ops.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "));
    println!("  weights: {packed} bytes as stored (packed), {unpacked} bytes if every constant were f32");
    let attn = g.nodes().filter(|(_, n)| matches!(n.op, Op::Attention { .. })).count();
    println!("  attention nodes: {attn}; sequence length symbolic (`seq`)\n");

    let x = decode_tensor(INPUT)?.tensor;
    let expected = decode_tensor(OUTPUT)?.tensor;
    let start = std::time::Instant::now();
    let out = tessera_ir::run(&g, vec![x.clone()])?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!("ran on the reference interpreter: input x {x} -> output y {} in {ms:.2} ms", out[0]);
    let c = compare(&out[0], &expected, 1e-4, 1e-5).map_err(|e| anyhow::anyhow!(e))?;
    println!("checked against numpy's float32 forward pass: {c}");
    println!("\nnext: `tessera ir tests/filetests/run/transformer_block.tir` prints the graph;");
    println!("      `tessera run tests/filetests/run/transformer_block.tir --inputs tests/filetests/run/transformer_block --check` runs and checks it.");
    Ok(if c.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
