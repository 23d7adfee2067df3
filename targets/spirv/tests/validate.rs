//! Every shader the GPU target can build passes `spirv-val` (Debian's spirv-tools) for Vulkan 1.1.

use tessera_ir::{BinaryOp, UnaryOp};
use tessera_target_spirv::{build, Spec};

fn all_specs() -> Vec<Spec> {
    use tessera_target_spirv::kernels::{binary_supported, unary_supported, EwFn, RowFn};
    let mut specs = Vec::new();
    let unary: Vec<UnaryOp> = UnaryOp::ALL.into_iter().filter(|&u| unary_supported(u)).collect();
    let binary: Vec<BinaryOp> = BinaryOp::ALL.into_iter().filter(|&b| binary_supported(b)).collect();
    for rank in 0..5 {
        specs.extend(unary.iter().map(|&u| Spec::Elementwise { f: EwFn::Unary(u), rank }));
        specs.extend(binary.iter().map(|&b| Spec::Elementwise { f: EwFn::Binary(b), rank }));
        specs.push(Spec::Elementwise { f: EwFn::Copy, rank });
        specs.extend([1, 2].map(|words| Spec::Elementwise { f: EwFn::CopyWords { words }, rank }));
        use tessera_ir::DType::*;
        specs.extend([I64, I32, U8, I8, U4, I4, Bool].map(|from| Spec::Elementwise { f: EwFn::ToF32 { from }, rank }));
        for from in [U8, I8, U4, I4] {
            specs.extend([false, true].map(|zero| Spec::Elementwise { f: EwFn::Dequant { from, zero }, rank }));
        }
    }
    for tiled in [false, true] {
        specs.extend((0..4).flat_map(|batch_rank| [false, true].map(|bias| Spec::MatMul { batch_rank, bias, tiled })));
    }
    let eps = 1e-5f32.to_bits();
    for subgroups in [false, true] {
        specs.extend(
            [
                RowFn::Softmax,
                RowFn::LogSoftmax,
                RowFn::LayerNorm { epsilon: eps, bias: true },
                RowFn::LayerNorm { epsilon: eps, bias: false },
                RowFn::RmsNorm { epsilon: eps },
            ]
            .map(|f| Spec::Rows { f, subgroups }),
        );
        for batch_rank in 0..4 {
            for (mask, causal) in [(false, false), (true, false), (false, true), (true, true)] {
                specs.push(Spec::Attention { batch_rank, mask, causal, cap: 128, subgroups });
            }
        }
        specs.push(Spec::Attention { batch_rank: 2, mask: true, causal: false, cap: 2048, subgroups });
    }
    for batch_rank in 0..3 {
        for bits in [4, 8] {
            for (signed, zero) in [(false, false), (false, true), (true, false), (true, true)] {
                specs.extend([false, true].map(|tiled| Spec::QMatMul { batch_rank, bits, signed, zero, tiled }));
            }
        }
    }
    for wide in [false, true] {
        specs.extend([false, true].map(|bytes| Spec::Gather { wide, bytes }));
    }
    specs.push(Spec::DynQuant);
    specs.extend([Spec::ArgMax { last: false }, Spec::ArgMax { last: true }]);
    {
        use tessera_target_spirv::kernels::ByteFn;
        for rank in 0..4 {
            for f in
                [ByteFn::Cmp(BinaryOp::Less), ByteFn::Cmp(BinaryOp::Equal), ByteFn::Logic(BinaryOp::Xor), ByteFn::Not]
            {
                specs.push(Spec::Bytes { f, rank });
            }
            specs.push(Spec::Elementwise { f: tessera_target_spirv::kernels::EwFn::Where, rank });
        }
    }
    {
        use tessera_ir::DType::*;
        use tessera_target_spirv::kernels::Step;
        // cast(p0: i64) -> sub(p1, .) -> mul(., p2); and matmul -> add bias -> gelu -> add residual.
        let prog = vec![
            Step::LoadAs(0, I64),
            Step::Load(1),
            Step::Binary(BinaryOp::Sub, 1, 0),
            Step::Load(2),
            Step::Binary(BinaryOp::Mul, 2, 3),
        ];
        for rank in 0..4 {
            specs.push(Spec::Fused { prog: prog.clone(), out: 4, words: vec![true, false, false], rank });
        }
        let ep = vec![
            Step::Acc,
            Step::Load(2),
            Step::Binary(BinaryOp::Add, 1, 0),
            Step::Unary(UnaryOp::Gelu, 2),
            Step::Load(3),
            Step::Binary(BinaryOp::Add, 3, 4),
        ];
        for batch_rank in 0..3 {
            for tiled in [false, true] {
                specs.push(Spec::MatMulFused { batch_rank, tiled, prog: ep.clone(), out: 5, extra: 2 });
            }
        }
    }
    for inputs in 1..8 {
        specs.extend([1, 2].map(|words| Spec::Concat { inputs, words }));
        specs.extend([1, 2].map(|words| Spec::Split { outputs: inputs, words }));
    }
    for batch_rank in 0..3 {
        for (a_signed, b_signed, pair) in
            [(false, true, false), (false, false, false), (true, true, false), (false, true, true)]
        {
            for (a_zero, b_zero) in [(false, false), (true, false), (true, true)] {
                specs.push(Spec::MatMulInt { batch_rank, a_signed, b_signed, a_zero, b_zero, pair });
            }
        }
    }
    for out_rank in 0..3 {
        for red_rank in 0..3 {
            use tessera_ir::ReduceOp::*;
            specs.extend([Sum, Mean, Max, Min, Prod].map(|op| Spec::Reduce { op, out_rank, red_rank }));
        }
    }
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
