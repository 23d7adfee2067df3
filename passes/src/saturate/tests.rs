//! `start => goal` tests, one group of rules at a time: each start graph is written in the text
//! format, the pass runs, the printed result must contain the goal ops (and lose the ops the rules
//! remove), and the reference interpreter must give the same outputs before and after on
//! pseudo-random inputs (tolerance 1e-5).

use super::Saturate;
use crate::manager::{Pass, PassReport};
use tessera_ir::{parse, print, run, verify, DType, Graph, Tensor};

/// Deterministic inputs in [-3, 3] (masks of `mask` inputs in {0, -10000}).
fn inputs(g: &Graph) -> Vec<Tensor> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) as f32
    };
    g.inputs()
        .iter()
        .map(|(name, v)| {
            let shape = g.ty(*v).shape.as_static().expect("tests use static shapes");
            let n = shape.iter().product();
            let values: Vec<f32> = if name == "mask" {
                (0..n).map(|_| if next() < 0.25 { -10000.0 } else { 0.0 }).collect()
            } else {
                (0..n).map(|_| next() * 6.0 - 3.0).collect()
            };
            Tensor::from_f32(DType::F32, &shape, values).unwrap()
        })
        .collect()
}

fn assert_close(before: &[Tensor], after: &[Tensor]) {
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(after) {
        assert_eq!(b.shape(), a.shape());
        for (i, (x, y)) in b.to_f64_vec().iter().zip(a.to_f64_vec()).enumerate() {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "element {i}: {x} before, {y} after");
        }
    }
}

/// Runs `saturate` on `start`; the printed result must contain every `goal` string and none of
/// `gone`, and compute the same outputs.
fn rewrites(start: &str, goal: &[&str], gone: &[&str]) -> (Graph, PassReport) {
    let g0 = parse(start).unwrap();
    verify(&g0).unwrap();
    let mut g = g0.clone();
    let report = Saturate::default().run(&mut g).unwrap();
    verify(&g).unwrap_or_else(|e| panic!("{e}\n{}", print(&g)));
    let text = print(&g);
    for s in goal {
        assert!(text.contains(s), "`{s}` missing from\n{text}\n{report:?}");
    }
    for s in gone {
        assert!(!text.contains(s), "`{s}` still in\n{text}\n{report:?}");
    }
    let ins = inputs(&g0);
    assert_close(&run(&g0, ins.clone()).unwrap(), &run(&g, ins).unwrap());
    assert!(report.notes[0].starts_with("stop: "), "{report:?}");
    (g, report)
}

#[test]
fn registered() {
    assert_eq!(crate::lookup("saturate").unwrap().name(), "saturate");
}

#[test]
fn algebra() {
    // ((0 + x * 1) negated twice) / 4 => x * 0.25
    let start = "graph @algebra {
  v0: f32[4, 8] = input \"x\"
  v1: f32[] = const [1.0]
  v2: f32[] = const [0.0]
  v3: f32[] = const [4.0]
  v4: f32[4, 8] = mul v0, v1
  v5: f32[4, 8] = add v2, v4
  v6: f32[4, 8] = neg v5
  v7: f32[4, 8] = neg v6
  v8: f32[4, 8] = div v7, v3
  output \"y\" = v8
}";
    let (g, _) = rewrites(start, &["= mul v0, v1", "const [0.25]"], &["neg", "add", "div"]);
    assert_eq!(g.n_nodes(), 1);
}

#[test]
fn algebra_keeps_broadcasts() {
    // x * ones broadcasts x from [8] to [4, 8]: not an identity.
    let start = "graph @bcast {
  v0: f32[8] = input \"x\"
  v1: f32[4, 8] = const splat(1.0)
  v2: f32[4, 8] = mul v0, v1
  output \"y\" = v2
}";
    let (g, report) = rewrites(start, &["mul v0, v1"], &[]);
    assert_eq!(g.n_nodes(), 1);
    assert!(!report.changed);
}

#[test]
fn layout() {
    // (a^T @ b^T)^T => b @ a, and transpose(transpose(x)) => one transpose.
    let start = "graph @layout {
  v0: f32[3, 5] = input \"a\"
  v1: f32[4, 3] = input \"b\"
  v2: f32[2, 3, 4] = input \"x\"
  v3: f32[5, 3] = transpose v0 {perm = [1, 0]}
  v4: f32[3, 4] = transpose v1 {perm = [1, 0]}
  v5: f32[5, 4] = matmul v3, v4
  v6: f32[4, 5] = transpose v5 {perm = [1, 0]}
  v7: f32[3, 2, 4] = transpose v2 {perm = [1, 0, 2]}
  v8: f32[3, 4, 2] = transpose v7 {perm = [0, 2, 1]}
  output \"y\" = v6
  output \"z\" = v8
}";
    let (g, _) = rewrites(start, &["= matmul v1, v0", "transpose v2 {perm = [1, 2, 0]}"], &[]);
    assert_eq!(g.n_nodes(), 2);
}

#[test]
fn fusion_gelu_erf_minilm_order() {
    // As MiniLM's exporter writes it: mul(mul(x, add(erf(div(x, 1.4142135)), 1)), 0.5).
    let start = "graph @gelu {
  v0: f32[2, 16] = input \"a\"
  v1: f32[16] = const splat(0.25)
  v2: f32[] = const [1.4142135]
  v3: f32[] = const [1.0]
  v4: f32[] = const [0.5]
  v5: f32[2, 16] = add v1, v0
  v6: f32[2, 16] = div v5, v2
  v7: f32[2, 16] = erf v6
  v8: f32[2, 16] = add v7, v3
  v9: f32[2, 16] = mul v5, v8
  v10: f32[2, 16] = mul v9, v4
  output \"y\" = v10
}";
    let (g, report) = rewrites(start, &["gelu v"], &["erf", "div", "mul"]);
    assert_eq!(g.n_nodes(), 2);
    assert!(report.notes.iter().any(|n| n.contains("gelu 1 (+1)")), "{report:?}");
}

#[test]
fn fusion_gelu_erf_other_orders() {
    // (0.5 * x) * (1 + erf(x * 0.70710677)) and x * (0.5 * (erf(0.70710677 * x) + 1)).
    let start = "graph @gelu2 {
  v0: f32[3, 8] = input \"x\"
  v1: f32[] = const [0.70710677]
  v2: f32[] = const [1.0]
  v3: f32[] = const [0.5]
  v4: f32[3, 8] = mul v3, v0
  v5: f32[3, 8] = mul v0, v1
  v6: f32[3, 8] = erf v5
  v7: f32[3, 8] = add v2, v6
  v8: f32[3, 8] = mul v4, v7
  v9: f32[3, 8] = mul v1, v0
  v10: f32[3, 8] = erf v9
  v11: f32[3, 8] = add v10, v2
  v12: f32[3, 8] = mul v3, v11
  v13: f32[3, 8] = mul v0, v12
  output \"y\" = v8
  output \"z\" = v13
}";
    let (g, _) = rewrites(start, &["gelu v0"], &["erf", "mul"]);
    // Both outputs read the same gelu node.
    assert_eq!(g.n_nodes(), 1);
}

#[test]
fn fusion_gelu_tanh() {
    // As the static64 export writes it (pow 3, Gemm-free).
    let start = "graph @gelu_tanh {
  v0: f32[4, 8] = input \"x\"
  v1: f32[] = const [0.5]
  v2: f32[] = const [3.0]
  v3: f32[] = const [0.044715]
  v4: f32[] = const [0.7978846]
  v5: f32[] = const [1.0]
  v6: f32[4, 8] = mul v0, v1
  v7: f32[4, 8] = pow v0, v2
  v8: f32[4, 8] = mul v7, v3
  v9: f32[4, 8] = add v0, v8
  v10: f32[4, 8] = mul v9, v4
  v11: f32[4, 8] = tanh v10
  v12: f32[4, 8] = add v11, v5
  v13: f32[4, 8] = mul v6, v12
  output \"y\" = v13
}";
    let (g, _) = rewrites(start, &["gelu_tanh v0"], &["pow", "= tanh", "mul"]);
    assert_eq!(g.n_nodes(), 1);
}

#[test]
fn fusion_silu() {
    let start = "graph @silu {
  v0: f32[4, 8] = input \"x\"
  v1: f32[4, 8] = sigmoid v0
  v2: f32[4, 8] = mul v1, v0
  output \"y\" = v2
}";
    rewrites(start, &["silu v0"], &["sigmoid"]);
}

#[test]
fn fusion_attention_minilm_form() {
    // matmul(softmax(add(div(matmul(q, transpose(k', [0,2,3,1])), sqrt(d)), mask)), v).
    let start = "graph @attn {
  v0: f32[2, 6, 4, 8] = input \"q\"
  v1: f32[2, 6, 4, 8] = input \"k\"
  v2: f32[2, 6, 4, 8] = input \"v\"
  v3: f32[2, 1, 1, 6] = input \"mask\"
  v4: f32[] = const [2.828427]
  v5: f32[2, 4, 6, 8] = transpose v0 {perm = [0, 2, 1, 3]}
  v6: f32[2, 4, 8, 6] = transpose v1 {perm = [0, 2, 3, 1]}
  v7: f32[2, 4, 6, 8] = transpose v2 {perm = [0, 2, 1, 3]}
  v8: f32[2, 4, 6, 6] = matmul v5, v6
  v9: f32[2, 4, 6, 6] = div v8, v4
  v10: f32[2, 4, 6, 6] = add v9, v3
  v11: f32[2, 4, 6, 6] = softmax v10 {axis = -1}
  v12: f32[2, 4, 6, 8] = matmul v11, v7
  output \"y\" = v12
}";
    let (g, report) = rewrites(start, &["attention v", "transpose v1 {perm = [0, 2, 1, 3]}"], &["softmax", "matmul"]);
    assert!(report.notes.iter().any(|n| n.contains("attention 1 (+1)")), "{report:?}");
    assert!(print(&g).contains("causal = false"));
}

#[test]
fn fusion_attention_mul_scale_no_mask() {
    // softmax(mul(c, q @ k^T)) @ v with k given as [.., d, sk] already.
    let start = "graph @attn2 {
  v0: f32[3, 5, 8] = input \"q\"
  v1: f32[3, 8, 7] = input \"kt\"
  v2: f32[3, 7, 4] = input \"v\"
  v3: f32[] = const [0.35355338]
  v4: f32[3, 7, 8] = transpose v1 {perm = [0, 2, 1]}
  v5: f32[3, 8, 7] = transpose v4 {perm = [0, 2, 1]}
  v6: f32[3, 5, 7] = matmul v0, v5
  v7: f32[3, 5, 7] = mul v3, v6
  v8: f32[3, 5, 7] = softmax v7 {axis = 2}
  v9: f32[3, 5, 4] = matmul v8, v2
  output \"y\" = v9
}";
    rewrites(start, &["attention v0, v"], &["softmax", "matmul"]);
}

#[test]
fn fusion_attention_rejects_softmax_over_other_axis() {
    let start = "graph @attn3 {
  v0: f32[5, 8] = input \"q\"
  v1: f32[7, 8] = input \"k\"
  v2: f32[7, 4] = input \"v\"
  v3: f32[8, 7] = transpose v1 {perm = [1, 0]}
  v4: f32[5, 7] = matmul v0, v3
  v5: f32[5, 7] = softmax v4 {axis = 0}
  v6: f32[5, 4] = matmul v5, v2
  output \"y\" = v6
}";
    rewrites(start, &["softmax", "matmul"], &["attention"]);
}

#[test]
fn opaque_nodes_round_trip() {
    // Nodes the language does not model stay as they are; the graph is unchanged.
    let start = "graph @opaque {
  v0: f32[2, 8] = input \"x\"
  v1: f32[8] = const splat(1.0)
  v2: f32[2, 8] = layer_norm v0, v1 {axis = -1, epsilon = 1e-5}
  v3: f32[2, 8] = erf v2
  v4: f32[16] = reshape v3 {shape = [16]}
  v5: f32[] = reduce_sum v4 {axes = [], keepdims = false}
  output \"y\" = v5
  output \"z\" = v3
}";
    let g0 = parse(start).unwrap();
    let (g, report) = rewrites(start, &["layer_norm", "erf", "reshape", "reduce_sum"], &[]);
    assert!(!report.changed);
    assert_eq!(print(&g), print(&g0));
}

#[test]
fn fusion_rms_norm() {
    // LLaMA's export: w * (x * rsqrt(reduce_mean(pow(x, 2)) + eps)), and x / sqrt(mean(x * x) + eps) * w.
    let start = "graph @rms {
  v0: f32[2, 5, 8] = input \"x\"
  v1: f32[8] = input \"w\"
  v2: f32[] = const [2.0]
  v3: f32[] = const [1e-6]
  v4: f32[2, 5, 8] = pow v0, v2
  v5: f32[2, 5, 1] = reduce_mean v4 {axes = [-1], keepdims = true}
  v6: f32[2, 5, 1] = add v5, v3
  v7: f32[2, 5, 1] = rsqrt v6
  v8: f32[2, 5, 8] = mul v0, v7
  v9: f32[2, 5, 8] = mul v1, v8
  v10: f32[2, 5, 8] = mul v0, v0
  v11: f32[2, 5, 1] = reduce_mean v10 {axes = [2], keepdims = true}
  v12: f32[2, 5, 1] = add v3, v11
  v13: f32[2, 5, 1] = sqrt v12
  v14: f32[2, 5, 8] = div v0, v13
  v15: f32[2, 5, 8] = mul v14, v1
  output \"y\" = v9
  output \"z\" = v15
}";
    let (g, report) =
        rewrites(start, &["rms_norm v0, v1 {axis = -1, epsilon = 1e-6}"], &["reduce_mean", "sqrt", "pow"]);
    assert_eq!(g.n_nodes(), 1);
    assert!(report.notes.iter().any(|n| n.contains("rms_norm 1 (+1)")), "{report:?}");
}

#[test]
fn fusion_rms_norm_rejects_reduction_over_leading_dims() {
    let start = "graph @rms2 {
  v0: f32[4, 8] = input \"x\"
  v1: f32[8] = input \"w\"
  v2: f32[] = const [1e-6]
  v3: f32[4, 8] = mul v0, v0
  v4: f32[1, 8] = reduce_mean v3 {axes = [0], keepdims = true}
  v5: f32[1, 8] = add v4, v2
  v6: f32[1, 8] = rsqrt v5
  v7: f32[4, 8] = mul v0, v6
  v8: f32[4, 8] = mul v7, v1
  output \"y\" = v8
}";
    rewrites(start, &["reduce_mean", "rsqrt"], &["rms_norm"]);
}

const GELU: &str = "graph @gelu {
  v0: f32[2, 16] = input \"x\"
  v1: f32[] = const [1.4142135]
  v2: f32[] = const [1.0]
  v3: f32[] = const [0.5]
  v4: f32[2, 16] = div v0, v1
  v5: f32[2, 16] = erf v4
  v6: f32[2, 16] = add v5, v2
  v7: f32[2, 16] = mul v0, v6
  v8: f32[2, 16] = mul v7, v3
  output \"y\" = v8
}";

#[test]
fn bounded_run_reports_the_limit() {
    // One iteration only marks `1 + erf(..)`: no gelu yet, the graph stays correct.
    let g0 = parse(GELU).unwrap();
    let mut g = g0.clone();
    let report = Saturate { iter_limit: 1, ..Saturate::default() }.run(&mut g).unwrap();
    verify(&g).unwrap();
    assert!(report.notes[0].starts_with("stop: iteration limit (1); 1 iterations"), "{report:?}");
    assert!(!print(&g).contains("= gelu"));
    let ins = inputs(&g0);
    assert_close(&run(&g0, ins.clone()).unwrap(), &run(&g, ins).unwrap());
}

#[test]
fn cost_model_is_pluggable() {
    use super::cost::{CostModel, FlopsBytes};
    use super::lang::TensorLang;
    /// Makes fused GELU prohibitively expensive: extraction keeps the original ops.
    struct NoGelu;
    impl CostModel for NoGelu {
        fn op_cost(
            &self,
            node: &TensorLang,
            result: Option<&tessera_ir::TensorType>,
            operands: &[Option<&tessera_ir::TensorType>],
        ) -> f64 {
            let base = FlopsBytes::default().op_cost(node, result, operands);
            if matches!(node, TensorLang::Gelu(_)) {
                base * 1e6
            } else {
                base
            }
        }
    }
    let mut g = parse(GELU).unwrap();
    let report = Saturate::default().run_with(&mut g, &NoGelu).unwrap();
    assert!(!print(&g).contains("= gelu"), "{report:?}");
    let report = Saturate::default().run(&mut g).unwrap();
    assert!(print(&g).contains("= gelu v0"), "{report:?}");
}

#[test]
fn fusion_gelu_tanh_cube_by_muls() {
    // x * (0.5 * (1 + tanh((0.044715 * (x * x * x) + x) * 0.7978846))).
    let start = "graph @gt2 {
  v0: f32[4, 8] = input \"x\"
  v1: f32[] = const [0.5]
  v2: f32[] = const [0.044715]
  v3: f32[] = const [0.7978846]
  v4: f32[] = const [1.0]
  v5: f32[4, 8] = mul v0, v0
  v6: f32[4, 8] = mul v5, v0
  v7: f32[4, 8] = mul v2, v6
  v8: f32[4, 8] = add v7, v0
  v9: f32[4, 8] = mul v3, v8
  v10: f32[4, 8] = tanh v9
  v11: f32[4, 8] = add v4, v10
  v12: f32[4, 8] = mul v1, v11
  v13: f32[4, 8] = mul v0, v12
  output \"y\" = v13
}";
    let (g, _) = rewrites(start, &["gelu_tanh v0"], &["= tanh", "mul"]);
    assert_eq!(g.n_nodes(), 1);
}

#[test]
fn norms_layer_norm() {
    // BERT's export: (x - mean) / sqrt(mean(pow(x - mean, 2)) + eps) * gamma + beta; and
    // gamma * ((x - mean) * rsqrt(mean(d * d) + eps)) without beta.
    let start = "graph @ln {
  v0: f32[2, 5, 8] = input \"x\"
  v1: f32[8] = input \"gamma\"
  v2: f32[8] = input \"beta\"
  v3: f32[] = const [2.0]
  v4: f32[] = const [1e-5]
  v5: f32[2, 5, 1] = reduce_mean v0 {axes = [-1], keepdims = true}
  v6: f32[2, 5, 8] = sub v0, v5
  v7: f32[2, 5, 8] = pow v6, v3
  v8: f32[2, 5, 1] = reduce_mean v7 {axes = [-1], keepdims = true}
  v9: f32[2, 5, 1] = add v8, v4
  v10: f32[2, 5, 1] = sqrt v9
  v11: f32[2, 5, 8] = div v6, v10
  v12: f32[2, 5, 8] = mul v11, v1
  v13: f32[2, 5, 8] = add v12, v2
  v14: f32[2, 5, 8] = mul v6, v6
  v15: f32[2, 5, 1] = reduce_mean v14 {axes = [2], keepdims = true}
  v16: f32[2, 5, 1] = add v4, v15
  v17: f32[2, 5, 1] = rsqrt v16
  v18: f32[2, 5, 8] = mul v6, v17
  v19: f32[2, 5, 8] = mul v1, v18
  v20: f32[2, 5, 1] = reciprocal v10
  v21: f32[2, 5, 8] = mul v20, v6
  v22: f32[2, 5, 8] = mul v21, v1
  v23: f32[2, 5, 8] = add v2, v22
  output \"y\" = v13
  output \"z\" = v19
  output \"w\" = v23
}";
    let (g, report) = rewrites(
        start,
        &["layer_norm v0, v1, v2 {axis = -1, epsilon = 1e-5}", "layer_norm v0, v1 {axis = -1, epsilon = 1e-5}"],
        &["reduce_mean", "sqrt", "pow", "sub", "reciprocal"],
    );
    // `y` and `w` read the same layer_norm.
    assert_eq!(g.n_nodes(), 2);
    assert!(report.notes.iter().any(|n| n.contains("layer_norm 2 (+2)")), "{report:?}");
}

#[test]
fn norms_layer_norm_rejects_other_dims() {
    // The variance over the last dim, the mean over the last two: not a LayerNorm.
    let start = "graph @ln2 {
  v0: f32[2, 5, 8] = input \"x\"
  v1: f32[8] = input \"gamma\"
  v2: f32[] = const [1e-5]
  v3: f32[2, 1, 1] = reduce_mean v0 {axes = [1, 2], keepdims = true}
  v4: f32[2, 5, 8] = sub v0, v3
  v5: f32[2, 5, 8] = mul v4, v4
  v6: f32[2, 5, 1] = reduce_mean v5 {axes = [-1], keepdims = true}
  v7: f32[2, 5, 1] = add v6, v2
  v8: f32[2, 5, 1] = rsqrt v7
  v9: f32[2, 5, 8] = mul v4, v8
  v10: f32[2, 5, 8] = mul v9, v1
  output \"y\" = v10
}";
    rewrites(start, &["reduce_mean v0 {axes = [1, 2]"], &["layer_norm"]);
}

#[test]
fn norms_softmax() {
    // exp(x - max) / sum(exp(x - max)) over axis 1, and exp(x) / sum(exp(x)) over the last axis.
    let start = "graph @sm {
  v0: f32[3, 6, 4] = input \"x\"
  v1: f32[3, 1, 4] = reduce_max v0 {axes = [1], keepdims = true}
  v2: f32[3, 6, 4] = sub v0, v1
  v3: f32[3, 6, 4] = exp v2
  v4: f32[3, 1, 4] = reduce_sum v3 {axes = [1], keepdims = true}
  v5: f32[3, 6, 4] = div v3, v4
  v6: f32[3, 6, 4] = exp v0
  v7: f32[3, 6, 1] = reduce_sum v6 {axes = [-1], keepdims = true}
  v8: f32[3, 6, 4] = div v6, v7
  output \"y\" = v5
  output \"z\" = v8
}";
    let (g, _) = rewrites(
        start,
        &["softmax v0 {axis = 1}", "softmax v0 {axis = -1}"],
        &["exp", "reduce_max", "reduce_sum", "div"],
    );
    assert_eq!(g.n_nodes(), 2);
}

#[test]
fn norms_softmax_mixed_axes() {
    // The max over another axis than the sum: not softmax(x), but still softmax over axis 1 of
    // the shifted value `x - max` (the unshifted rule), which the interpreter check confirms.
    let start = "graph @sm2 {
  v0: f32[3, 4, 4] = input \"x\"
  v1: f32[3, 4, 1] = reduce_max v0 {axes = [2], keepdims = true}
  v2: f32[3, 4, 4] = sub v0, v1
  v3: f32[3, 4, 4] = exp v2
  v4: f32[3, 1, 4] = reduce_sum v3 {axes = [1], keepdims = true}
  v5: f32[3, 4, 4] = div v3, v4
  output \"y\" = v5
}";
    rewrites(start, &["reduce_max v0 {axes = [2]", "softmax v2 {axis = 1}"], &["softmax v0", "reduce_sum"]);
}

#[test]
fn fusion_silu_gated_ffn() {
    // LLaMA's MLP: down(silu(gate(x)) * up(x)), SiLU written out as x * sigmoid(x).
    let start = "graph @swiglu {
  v0: f32[2, 3, 8] = input \"x\"
  v1: f32[8, 16] = input \"w1\"
  v2: f32[8, 16] = input \"w3\"
  v3: f32[16, 8] = input \"w2\"
  v4: f32[2, 3, 16] = matmul v0, v1
  v5: f32[2, 3, 16] = sigmoid v4
  v6: f32[2, 3, 16] = mul v4, v5
  v7: f32[2, 3, 16] = matmul v0, v2
  v8: f32[2, 3, 16] = mul v6, v7
  v9: f32[2, 3, 8] = matmul v8, v3
  output \"y\" = v9
}";
    let (g, report) = rewrites(
        start,
        &["kernel v0, v1, v2, v3 {name = \"silu_gated_ffn\"} region", "= silu v", "= mul v"],
        &["sigmoid"],
    );
    assert_eq!(g.n_nodes(), 1);
    assert!(report.notes.iter().any(|n| n.contains("gated_ffn 1 (+1)")), "{report:?}");
}

#[test]
fn fusion_gelu_gated_ffn() {
    // Gemma's GeGLU with the product the other way round.
    let start = "graph @geglu {
  v0: f32[4, 8] = input \"x\"
  v1: f32[8, 12] = input \"w1\"
  v2: f32[8, 12] = input \"w3\"
  v3: f32[12, 8] = input \"w2\"
  v4: f32[4, 12] = matmul v0, v1
  v5: f32[4, 12] = gelu_tanh v4
  v6: f32[4, 12] = matmul v0, v2
  v7: f32[4, 12] = mul v6, v5
  v8: f32[4, 8] = matmul v7, v3
  output \"y\" = v8
}";
    let (g, _) = rewrites(start, &["{name = \"gelu_gated_ffn\"} region", "= gelu_tanh v"], &[]);
    assert_eq!(g.n_nodes(), 1);
}

#[test]
fn quant_requantize() {
    // quantize(dequantize(q, s, z), s, z) is q; dequantize(quantize(x, s, z), s, z) stays (lossy).
    let start = "graph @rq {
  v0: f32[4] = input \"x\"
  v1: i8[4] = const [-128, -3, 5, 127]
  v2: f32[] = const [0.05]
  v3: i8[] = const [3]
  v4: f32[4] = dequantize v1, v2, v3 {axis = 0, block = 0}
  v5: i8[4] = quantize v4, v2, v3 {axis = 0, block = 0, to = i8}
  v6: f32[4] = dequantize v5, v2, v3 {axis = 0, block = 0}
  v7: f32[4] = mul v0, v6
  v8: i8[4] = quantize v0, v2, v3 {axis = 0, block = 0, to = i8}
  v9: f32[4] = dequantize v8, v2, v3 {axis = 0, block = 0}
  output \"y\" = v7
  output \"z\" = v9
}";
    let (g, _) = rewrites(
        start,
        &["dequantize v1, v2, v3", "quantize v0, v2, v3 {axis = 0, block = 0, to = i8}", "mul v0, v"],
        &[],
    );
    assert_eq!(g.n_nodes(), 4);
    assert_eq!(print(&g).matches("= quantize").count(), 1, "{}", print(&g));
}

#[test]
fn quant_requantize_needs_same_params() {
    // Another scale for the requantize: not folded.
    let start = "graph @rq2 {
  v0: i8[4] = const [-128, -3, 5, 127]
  v1: f32[] = const [0.05]
  v2: f32[] = const [0.1]
  v3: f32[4] = dequantize v0, v1 {axis = 0, block = 0}
  v4: i8[4] = quantize v3, v2 {axis = 0, block = 0, to = i8}
  v5: f32[4] = dequantize v4, v2 {axis = 0, block = 0}
  output \"y\" = v5
}";
    let (g, _) = rewrites(start, &["= quantize v"], &[]);
    assert_eq!(g.n_nodes(), 3);
}

#[test]
fn norms_softmax_feeds_attention() {
    // Attention whose softmax is written out: the softmax rule lets the attention rules fire.
    let start = "graph @attn_sm {
  v0: f32[2, 5, 8] = input \"q\"
  v1: f32[2, 7, 8] = input \"k\"
  v2: f32[2, 7, 4] = input \"v\"
  v3: f32[] = const [0.35355338]
  v4: f32[2, 8, 7] = transpose v1 {perm = [0, 2, 1]}
  v5: f32[2, 5, 7] = matmul v0, v4
  v6: f32[2, 5, 7] = mul v5, v3
  v7: f32[2, 5, 1] = reduce_max v6 {axes = [-1], keepdims = true}
  v8: f32[2, 5, 7] = sub v6, v7
  v9: f32[2, 5, 7] = exp v8
  v10: f32[2, 5, 1] = reduce_sum v9 {axes = [-1], keepdims = true}
  v11: f32[2, 5, 7] = div v9, v10
  v12: f32[2, 5, 4] = matmul v11, v2
  output \"y\" = v12
}";
    let (g, _) = rewrites(start, &["attention v0, v1, v2"], &["exp", "softmax", "matmul"]);
    assert_eq!(g.n_nodes(), 1);
}

#[test]
fn the_placement_cost_model_extracts_the_same_fused_kernels() {
    // Rewrites and placement agree: extraction by a phone profile's roofline (each op at its
    // best unit, with per-kernel costs) picks the fused attention and GELU too.
    let start = "graph @attn {
  v0: f32[2, 6, 4, 8] = input \"q\"
  v1: f32[2, 6, 4, 8] = input \"k\"
  v2: f32[2, 6, 4, 8] = input \"v\"
  v3: f32[2, 1, 1, 6] = input \"mask\"
  v4: f32[] = const [2.828427]
  v5: f32[2, 4, 6, 8] = transpose v0 {perm = [0, 2, 1, 3]}
  v6: f32[2, 4, 8, 6] = transpose v1 {perm = [0, 2, 3, 1]}
  v7: f32[2, 4, 6, 8] = transpose v2 {perm = [0, 2, 1, 3]}
  v8: f32[2, 4, 6, 6] = matmul v5, v6
  v9: f32[2, 4, 6, 6] = div v8, v4
  v10: f32[2, 4, 6, 6] = add v9, v3
  v11: f32[2, 4, 6, 6] = softmax v10 {axis = -1}
  v12: f32[2, 4, 6, 8] = matmul v11, v7
  v13: f32[] = const [1.4142135]
  v14: f32[2, 4, 6, 8] = div v12, v13
  v15: f32[2, 4, 6, 8] = erf v14
  v16: f32[] = const [1.0]
  v17: f32[2, 4, 6, 8] = add v15, v16
  v18: f32[2, 4, 6, 8] = mul v12, v17
  v19: f32[] = const [0.5]
  v20: f32[2, 4, 6, 8] = mul v18, v19
  output \"y\" = v20
}";
    let g0 = parse(start).unwrap();
    let profile = crate::profile::DeviceProfile::builtin("snapdragon-8-gen-3").unwrap();
    let mut by_profile = g0.clone();
    super::Saturate::default().run_with(&mut by_profile, &super::cost::ProfileCost::new(profile.clone())).unwrap();
    let mut by_flops = g0.clone();
    Saturate::default().run(&mut by_flops).unwrap();
    verify(&by_profile).unwrap();
    let text = print(&by_profile);
    assert!(text.contains("= attention v") && text.contains("= gelu v"), "{text}");
    assert_eq!(super::fused_counts(&by_profile), super::fused_counts(&by_flops));
    let ins = inputs(&g0);
    assert_close(&run(&g0, ins.clone()).unwrap(), &run(&by_profile, ins).unwrap());
    // The pipeline helper runs the others by name around it.
    let mut g = g0.clone();
    let reports = super::run_pipeline_for_profile(&mut g, "canonicalize,saturate,fuse", &profile).unwrap();
    assert_eq!(reports.len(), 3);
    verify(&g).unwrap();
}
