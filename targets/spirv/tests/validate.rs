//! Every shader the GPU target can build passes `spirv-val` (Debian's spirv-tools) for Vulkan 1.1.

use tessera_ir::{BinaryOp, UnaryOp};
use tessera_target_spirv::{build, Spec};

fn all_specs() -> Vec<Spec> {
    use tessera_target_spirv::kernels::{EwFn, RowFn};
    let mut specs = Vec::new();
    let unary = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Reciprocal,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Floor,
        UnaryOp::Ceil,
    ];
    let binary =
        [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Pow, BinaryOp::Max, BinaryOp::Min];
    for rank in 0..5 {
        specs.extend(unary.iter().map(|&u| Spec::Elementwise { f: EwFn::Unary(u), rank }));
        specs.extend(binary.iter().map(|&b| Spec::Elementwise { f: EwFn::Binary(b), rank }));
        specs.push(Spec::Elementwise { f: EwFn::Copy, rank });
    }
    specs.extend((0..4).map(|batch_rank| Spec::MatMul { batch_rank }));
    let eps = 1e-5f32.to_bits();
    specs.extend([
        Spec::Rows(RowFn::Softmax),
        Spec::Rows(RowFn::LogSoftmax),
        Spec::Rows(RowFn::LayerNorm { epsilon: eps, bias: true }),
        Spec::Rows(RowFn::LayerNorm { epsilon: eps, bias: false }),
        Spec::Rows(RowFn::RmsNorm { epsilon: eps }),
    ]);
    specs
}

#[test]
fn every_shader_passes_spirv_val() {
    let dir = tempfile::tempdir().unwrap();
    let specs = all_specs();
    let mut failures = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let k = build(spec);
        let path = dir.path().join(format!("k{i}.spv"));
        let bytes: Vec<u8> = k.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        let out = match std::process::Command::new("spirv-val").arg("--target-env").arg("vulkan1.1").arg(&path).output()
        {
            Ok(o) => o,
            Err(e) => panic!("spirv-val did not run ({e}): install Debian's spirv-tools (scripts/test-all.sh does)"),
        };
        if !out.status.success() {
            failures.push(format!(
                "{spec:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} shaders fail spirv-val:\n{}",
        failures.len(),
        specs.len(),
        failures.join("\n")
    );
    eprintln!("{} shaders pass spirv-val", specs.len());
}
