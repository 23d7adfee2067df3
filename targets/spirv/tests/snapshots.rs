//! Snapshots of the SPIR-V disassembly of the kernels kernel developers read most: the tiled
//! matmul, the quantized (int4) matmul, the layer norm and the attention kernel. A change to
//! what the GPU target emits shows up as a diff here; review it, then bless the new text with
//! `INSTA_UPDATE=always cargo test -p tessera-target-spirv --test snapshots` (or `cargo insta
//! review`). CI runs with `CI=true`, where a differing snapshot fails.

use tessera_target_spirv::kernels::RowFn;
use tessera_target_spirv::{build, disassemble, Spec};

fn text(spec: Spec) -> String {
    let k = build(&spec);
    format!(
        "; {spec:?}\n; buffers {}, push words {}, workgroup {:?}, shared bytes {}\n{}",
        k.buffers,
        k.push_words,
        k.local,
        k.shared_bytes,
        disassemble(&k)
    )
}

#[test]
fn matmul() {
    insta::assert_snapshot!("matmul", text(Spec::MatMul { batch_rank: 1, bias: false, tiled: true }));
}

#[test]
fn matmul_untiled() {
    insta::assert_snapshot!("matmul_untiled", text(Spec::MatMul { batch_rank: 1, bias: false, tiled: false }));
}

#[test]
fn qmatmul_int4_blocked() {
    insta::assert_snapshot!(
        "qmatmul_i4",
        text(Spec::QMatMul { batch_rank: 1, bits: 4, signed: true, zero: false, tiled: true })
    );
}

#[test]
fn layer_norm() {
    let spec = Spec::Rows { f: RowFn::LayerNorm { epsilon: 1e-12f32.to_bits(), bias: true }, subgroups: false };
    insta::assert_snapshot!("layer_norm", text(spec));
}

#[test]
fn attention() {
    let spec = Spec::Attention { batch_rank: 2, mask: true, causal: false, cap: 128, subgroups: false };
    insta::assert_snapshot!("attention", text(spec));
}

#[test]
fn layer_norm_with_subgroup_reductions() {
    let spec = Spec::Rows { f: RowFn::LayerNorm { epsilon: 1e-12f32.to_bits(), bias: true }, subgroups: true };
    insta::assert_snapshot!("layer_norm_subgroups", text(spec));
}
