//! The GPU target on a real Vulkan driver (lavapipe in CI): each kernel kind against the
//! reference interpreter. Skips, loudly, only where no Vulkan device exists.

use tessera_ir::{BinaryOp, ConstData, DType, Graph, Op, Shape, TargetDim, Tensor, TensorType, UnaryOp};
use tessera_runtime::vulkan::{Fallback, GpuRunError, Vulkan};
use tessera_target_spirv::kernels::unary_supported;
use tessera_target_spirv::Spec;

fn vulkan() -> Option<Vulkan> {
    match Vulkan::new() {
        Ok(v) => Some(v),
        Err(GpuRunError::NoVulkan(why)) => {
            eprintln!("!!! SKIPPED: no Vulkan device here ({why}); install libvulkan1 mesa-vulkan-drivers");
            None
        }
        Err(e) => panic!("Vulkan failed to start: {e}"),
    }
}

fn f32_ty(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F32, Shape::from_static(shape))
}

/// Deterministic values in about [-3, 3], with a few exact zeros.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 11 == 0 {
                0.0
            } else {
                (x % 6000) as f32 / 1000.0 - 3.0
            }
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u32) -> Tensor {
    Tensor::from_f32(DType::F32, shape, values(shape.iter().product(), seed)).unwrap()
}

/// Runs `g` on the GPU and the interpreter and checks every output within `tol` (max abs).
fn check(vk: &Vulkan, g: &Graph, inputs: Vec<Tensor>, tol: f32) -> Vec<tessera_runtime::vulkan::KernelReport> {
    let want = tessera_ir::run(g, inputs.clone()).expect("interpreter");
    let (got, report) = vk.run(g, &inputs, Fallback::Fail).unwrap_or_else(|e| panic!("GPU run failed: {e}"));
    let reports = report.kernels;
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a.shape(), b.shape(), "output {i} shape");
        let (a, b) = (a.as_float().unwrap(), b.as_float().unwrap());
        let mut worst = 0f32;
        for (x, y) in a.iter().zip(b.iter()) {
            if x.is_nan() || y.is_nan() {
                assert!(x.is_nan() && y.is_nan(), "output {i}: NaN mismatch {x} vs {y}");
                continue;
            }
            if x.is_infinite() || y.is_infinite() {
                assert_eq!(x, y, "output {i}");
                continue;
            }
            worst = worst.max((x - y).abs());
        }
        assert!(worst <= tol, "output {i}: max abs error {worst} > {tol}");
    }
    reports
}

#[test]
fn elementwise_kernels_match_the_interpreter() {
    let Some(vk) = vulkan() else { return };
    eprintln!("device: {}", vk.name);
    // Binary ops with broadcasting, then a chain of unary ops.
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min] {
        for (sa, sb) in
            [(vec![2, 3, 70], vec![70]), (vec![2, 1, 5], vec![4, 1]), (vec![3, 4], vec![3, 4]), (vec![], vec![2, 2])]
        {
            let mut g = Graph::new("bin");
            let a = g.add_input("a", f32_ty(&sa));
            let b = g.add_input("b", f32_ty(&sb));
            let y = g.add_op(Op::Binary(op), vec![a, b]).unwrap()[0];
            g.add_output("y", y);
            check(&vk, &g, vec![tensor(&sa, 1), tensor(&sb, 2)], 1e-6);
        }
    }
    // pow as C defines it: negative bases with integer exponents, zero bases, y = 0.
    let mut g = Graph::new("pow");
    let x = g.add_input("x", f32_ty(&[7, 1]));
    let y = g.add_input("y", f32_ty(&[6]));
    let p = g.add_op(Op::Binary(BinaryOp::Pow), vec![x, y]).unwrap()[0];
    g.add_output("p", p);
    let xs = Tensor::from_f32(DType::F32, &[7, 1], vec![-2.0, -0.5, 0.0, 0.5, 3.0, -1.5, 2.0]).unwrap();
    let ys = Tensor::from_f32(DType::F32, &[6], vec![3.0, 2.0, -1.0, 0.0, 0.5, -2.0]).unwrap();
    check(&vk, &g, vec![xs, ys], 1e-5);
    // Every unary op with a shader but those defined for positive inputs only (below).
    let positive = [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Reciprocal];
    let unary = UnaryOp::ALL.into_iter().filter(|u| unary_supported(*u) && !positive.contains(u));
    for u in unary {
        let mut g = Graph::new("un");
        let x = g.add_input("x", f32_ty(&[3, 257]));
        let y = g.add_op(Op::Unary(u), vec![x]).unwrap()[0];
        g.add_output("y", y);
        let mut xs = values(3 * 257, 7);
        xs[1] = f32::NAN;
        check(&vk, &g, vec![Tensor::from_f32(DType::F32, &[3, 257], xs).unwrap()], 1e-4);
    }
    // Positive-only functions.
    for u in positive {
        let mut g = Graph::new("pos");
        let x = g.add_input("x", f32_ty(&[100]));
        let y = g.add_op(Op::Unary(u), vec![x]).unwrap()[0];
        g.add_output("y", y);
        let xs: Vec<f32> = (1..=100).map(|i| i as f32 * 0.37).collect();
        check(&vk, &g, vec![Tensor::from_f32(DType::F32, &[100], xs).unwrap()], 1e-4);
    }
}

/// Matmul and Gemm with shared-memory tiles (GPUs) and with register blocks (CPU devices).
#[test]
fn matmul_and_gemm_match_the_interpreter_tiled_and_untiled() {
    let Some(mut vk) = vulkan() else { return };
    for tiled in [true, false] {
        vk.limits.fast_shared_memory = tiled;
        matmul_cases(&vk, tiled);
    }
}

fn matmul_cases(vk: &Vulkan, tiled: bool) {
    // Batched products with broadcast batches and ragged tiles.
    for (sa, sb) in [
        (vec![37, 20], vec![20, 45]),
        (vec![2, 3, 17, 33], vec![33, 5]),
        (vec![1, 3, 16, 16], vec![2, 1, 16, 31]),
        (vec![128, 384], vec![384, 64]),
    ] {
        let mut g = Graph::new("mm");
        let a = g.add_input("a", f32_ty(&sa));
        let b = g.add_input("b", f32_ty(&sb));
        let y = g.add_op(Op::MatMul, vec![a, b]).unwrap()[0];
        g.add_output("y", y);
        let reports = check(vk, &g, vec![tensor(&sa, 3), tensor(&sb, 4)], 2e-4);
        assert_eq!(reports[0].local, if tiled { [16, 16, 1] } else { [16, 4, 1] });
        assert_eq!(reports[0].shared_bytes, if tiled { 2048 } else { 0 });
    }
    // Gemm: every transpose combination, alpha and beta, bias broadcast along rows or full.
    for (ta, tb, bias) in
        [(false, false, vec![45]), (true, false, vec![37, 45]), (false, true, vec![37, 1]), (true, true, vec![])]
    {
        let mut g = Graph::new("gemm");
        let sa = if ta { vec![20, 37] } else { vec![37, 20] };
        let sb = if tb { vec![45, 20] } else { vec![20, 45] };
        let a = g.add_input("a", f32_ty(&sa));
        let b = g.add_input("b", f32_ty(&sb));
        let mut args = vec![a, b];
        let mut inputs = vec![tensor(&sa, 5), tensor(&sb, 6)];
        if !bias.is_empty() {
            args.push(g.add_input("c", f32_ty(&bias)));
            inputs.push(tensor(&bias, 7));
        }
        let y = g.add_op(Op::Gemm { alpha: 0.5, beta: 2.0, trans_a: ta, trans_b: tb }, args).unwrap()[0];
        g.add_output("y", y);
        let reports = check(vk, &g, inputs, 1e-4);
        assert_eq!(reports[0].op, "gemm");
    }
}

#[test]
fn transpose_and_rows_match_the_interpreter() {
    let Some(vk) = vulkan() else { return };
    // Transpose (attention's head split) then softmax, layer norm and RMS norm over rows.
    let mut g = Graph::new("rows");
    let x = g.add_input("x", f32_ty(&[2, 7, 4, 33]));
    let t = g.add_op(Op::Transpose { perm: vec![0, 2, 1, 3] }, vec![x]).unwrap()[0];
    let s = g.add_op(Op::Softmax { axis: -1 }, vec![t]).unwrap()[0];
    let ls = g.add_op(Op::LogSoftmax { axis: 3 }, vec![t]).unwrap()[0];
    let gamma =
        g.add_const(f32_ty(&[33]), ConstData::from_vec(values(33, 9).iter().flat_map(|v| v.to_le_bytes()).collect()));
    let beta =
        g.add_const(f32_ty(&[33]), ConstData::from_vec(values(33, 10).iter().flat_map(|v| v.to_le_bytes()).collect()));
    let ln = g.add_op(Op::LayerNorm { axis: -1, epsilon: 1e-5 }, vec![t, gamma, beta]).unwrap()[0];
    let rn = g.add_op(Op::RmsNorm { axis: -1, epsilon: 1e-6 }, vec![t, gamma]).unwrap()[0];
    for (name, v) in [("t", t), ("softmax", s), ("log_softmax", ls), ("layer_norm", ln), ("rms_norm", rn)] {
        g.add_output(name, v);
    }
    // Shared-memory tree reductions, then subgroup arithmetic where the device has it.
    let mut vk = vk;
    let with_subgroups = vk.limits.subgroup_arithmetic;
    eprintln!("subgroup arithmetic in compute: {with_subgroups}");
    for sg in [false, with_subgroups] {
        vk.limits.subgroup_arithmetic = sg;
        let reports = check(&vk, &g, vec![tensor(&[2, 7, 4, 33], 5)], 2e-5);
        assert_eq!(reports.len(), 5);
        assert!(reports.iter().skip(1).all(|r| matches!(r.spec, Spec::Rows { subgroups, .. } if subgroups == sg)));
    }
}

#[test]
fn unsupported_nodes_are_declined_with_the_op_and_why() {
    let Some(vk) = vulkan() else { return };
    let mut g = Graph::new("int");
    let x = g.add_input("x", TensorType::new(DType::I32, Shape::from_static(&[4])));
    let y = g.add_op(Op::Unary(UnaryOp::Neg), vec![x]).unwrap()[0];
    g.add_output("y", y);
    let t = Tensor::from_i64(DType::I32, &[4], vec![1, 2, 3, 4]).unwrap();
    let err = vk.run(&g, &[t], Fallback::Fail).unwrap_err().to_string();
    assert!(err.contains("declines neg") && err.contains("i32"), "{err}");
    let mut g = Graph::new("argmax");
    let x = g.add_input("x", TensorType::new(DType::I32, Shape::from_static(&[4, 5])));
    let y = g.add_op(Op::ArgMax { axis: 1, keepdims: false, last: false }, vec![x]).unwrap()[0];
    g.add_output("y", y);
    let t = Tensor::from_i64(DType::I32, &[4, 5], (0..20).collect()).unwrap();
    let err = vk.run(&g, &[t], Fallback::Fail).unwrap_err().to_string();
    assert!(err.contains("declines argmax") && err.contains("i32"), "{err}");
}

#[test]
fn argmax_matches_the_interpreter() {
    let Some(vk) = vulkan() else { return };
    for (axis, last, keepdims) in [(1, false, false), (-1, true, true), (0, false, true)] {
        let mut g = Graph::new("argmax");
        let x = g.add_input("x", f32_ty(&[5, 7, 3]));
        let y = g.add_op(Op::ArgMax { axis, keepdims, last }, vec![x]).unwrap()[0];
        g.add_output("y", y);
        // Ties (rounded values) and a NaN: first or last maximum, and the first NaN wins.
        let mut xs: Vec<f32> = values(105, 4).iter().map(|v| v.round()).collect();
        xs[10] = f32::NAN;
        let inputs = vec![Tensor::from_f32(DType::F32, &[5, 7, 3], xs).unwrap()];
        let want = tessera_ir::run(&g, inputs.clone()).unwrap();
        let (got, report) = vk.run(&g, &inputs, Fallback::Fail).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, want, "axis {axis} last {last}");
        assert_eq!(report.kernels[0].op, "argmax");
    }
}

#[test]
fn declined_nodes_run_on_the_host_between_gpu_kernels() {
    let Some(vk) = vulkan() else { return };
    // GPU softmax -> host cast to i32 (the GPU target casts to f32 only) -> reshape of a host
    // value -> GPU cast of the uploaded result -> GPU add of it and the softmax -> GPU exp.
    let mut g = Graph::new("mixed");
    let x = g.add_input("x", f32_ty(&[6, 9]));
    let s = g.add_op(Op::Softmax { axis: -1 }, vec![x]).unwrap()[0];
    let ten = g.add_const(f32_ty(&[]), ConstData::from_vec(10f32.to_le_bytes().to_vec()));
    let s10 = g.add_op(Op::Binary(BinaryOp::Mul), vec![s, ten]).unwrap()[0];
    let a = g.add_op(Op::Cast { to: DType::I32 }, vec![s10]).unwrap()[0];
    let r = g.add_op(Op::Reshape { shape: Some(vec![TargetDim::Int(54)]) }, vec![a]).unwrap()[0];
    let r = g.add_op(Op::Reshape { shape: Some(vec![TargetDim::Int(6), TargetDim::Int(9)]) }, vec![r]).unwrap()[0];
    let c = g.add_op(Op::Cast { to: DType::F32 }, vec![r]).unwrap()[0];
    let y = g.add_op(Op::Binary(BinaryOp::Add), vec![s, c]).unwrap()[0];
    let e = g.add_op(Op::Unary(UnaryOp::Exp), vec![y]).unwrap()[0];
    g.add_output("e", e);
    g.add_output("a", a);
    let inputs = vec![tensor(&[6, 9], 3)];
    let want = tessera_ir::run(&g, inputs.clone()).unwrap();
    let (got, report) = vk.run(&g, &inputs, Fallback::Host).unwrap();
    assert_eq!(got[1], want[1], "the i32 cast, computed on the host from the GPU's softmax");
    let (p, q) = (got[0].as_float().unwrap(), want[0].as_float().unwrap());
    let worst = p.iter().zip(q.iter()).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0f32, f32::max);
    assert!(worst < 1e-6, "max relative error {worst}");
    let host: Vec<&str> = report.host.iter().map(|h| h.op).collect();
    assert_eq!(host, ["cast"]);
    assert!(report.host[0].why.contains("casts to i32"), "{}", report.host[0].why);
    let gpu: Vec<&str> = report.kernels.iter().map(|k| k.op).collect();
    assert_eq!(gpu, ["softmax", "mul", "cast", "add", "exp"]);
    assert_eq!(report.views, 2);
    // The scaled softmax is read back for the host's cast, then cast, add and exp run in a
    // second submission.
    assert_eq!(report.submissions, 2);
    // The same graph with fallback off names the first declined node.
    let err = vk.run(&g, &inputs, Fallback::Fail).unwrap_err().to_string();
    assert!(err.contains("declines cast"), "{err}");
}

#[test]
fn attention_matches_the_interpreter() {
    let Some(mut vk) = vulkan() else { return };
    let with_subgroups = vk.limits.subgroup_arithmetic;
    for sg in [false, with_subgroups] {
        vk.limits.subgroup_arithmetic = sg;
        attention_cases(&vk);
    }
}

fn attention_cases(vk: &Vulkan) {
    // (q, k, v, mask, causal): a BERT-style additive mask broadcast over heads and rows, a
    // causal decode step (sq < sk), broadcast batches, and a mask hiding every key of some rows.
    type Case = (Vec<usize>, Vec<usize>, Vec<usize>, Option<Vec<usize>>, bool);
    let cases: Vec<Case> = vec![
        (vec![1, 12, 20, 32], vec![1, 12, 20, 32], vec![1, 12, 20, 32], Some(vec![1, 1, 1, 20]), false),
        (vec![2, 3, 5, 16], vec![2, 3, 9, 16], vec![2, 3, 9, 24], None, true),
        (vec![4, 7, 8], vec![1, 70, 8], vec![1, 70, 5], Some(vec![7, 70]), false),
        (vec![3, 130, 64], vec![3, 130, 64], vec![3, 130, 64], None, false),
    ];
    for (i, (q, k, v, m, causal)) in cases.into_iter().enumerate() {
        let mut g = Graph::new("attn");
        let qv = g.add_input("q", f32_ty(&q));
        let kv = g.add_input("k", f32_ty(&k));
        let vv = g.add_input("v", f32_ty(&v));
        let mut args = vec![qv, kv, vv];
        let mut inputs = vec![tensor(&q, 11), tensor(&k, 12), tensor(&v, 13)];
        if let Some(ms) = &m {
            args.push(g.add_input("mask", f32_ty(ms)));
            let n: usize = ms.iter().product();
            // 0 or -inf-like (-1e30), and for case 2 the first row hides everything (-inf).
            let mut mv: Vec<f32> = (0..n).map(|j| if j % 5 == 3 { -1e30 } else { 0.0 }).collect();
            if i == 2 {
                mv[..ms[1]].fill(f32::NEG_INFINITY);
            }
            inputs.push(Tensor::from_f32(DType::F32, ms, mv).unwrap());
        }
        let y = g.add_op(Op::Attention { scale: 1.0 / (q[q.len() - 1] as f32).sqrt(), causal }, args).unwrap()[0];
        g.add_output("y", y);
        let reports = check(vk, &g, inputs, 2e-5);
        assert_eq!(reports.len(), 1, "case {i}: one kernel");
        assert_eq!(reports[0].op, "attention");
    }
}

/// `n` deterministic integers in `[lo, hi]`, as text.
fn ints(n: usize, lo: i64, hi: i64, seed: u64) -> String {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let v: Vec<String> = (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (lo + ((x >> 33) as i64).rem_euclid(hi - lo + 1)).to_string()
        })
        .collect();
    v.join(", ")
}

fn floats(n: usize, seed: u32) -> String {
    values(n, seed).iter().map(|v| format!("{:?}", v.abs() * 0.01 + 0.001)).collect::<Vec<_>>().join(", ")
}

#[test]
fn qmatmul_unpacks_packed_weights_in_the_shader() {
    let Some(mut vk) = vulkan() else { return };
    for tiled in [true, false] {
        vk.limits.fast_shared_memory = tiled;
        qmatmul_cases(&vk);
    }
}

fn qmatmul_cases(vk: &Vulkan) {
    // (dtype, range, granularity, scale shape, zero point) on x [2, 5, 64] @ w [64, 24].
    let (k, n) = (64usize, 24usize);
    let cases = [
        ("i4", (-8, 7), "block(axis=0, size=32)", vec![2, n], true),
        ("u4", (0, 15), "block(axis=0, size=32)", vec![2, n], true),
        ("i4", (-8, 7), "block(axis=1, size=8)", vec![k, 3], false),
        ("u8", (0, 255), "axis(1)", vec![n], true),
        ("i8", (-128, 127), "tensor", vec![], false),
        ("i8", (-128, 127), "axis(0)", vec![k], true),
    ];
    for (i, (dt, (lo, hi), gran, sshape, zero)) in cases.into_iter().enumerate() {
        let ns: usize = sshape.iter().product();
        let sdims = sshape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        let zero_decl = if zero { ", zero=v3".to_string() } else { String::new() };
        let zero_const = if zero {
            format!("  v3: {dt}[{sdims}] = const [{}]\n", ints(ns, lo, hi, 100 + i as u64))
        } else {
            String::new()
        };
        let text = format!(
            "graph @q {{\n  v0: f32[2, 5, {k}] = input \"x\"\n  v1: {dt}[{k}, {n}] quant({gran}, scale=v2{zero_decl}) = const [{}]\n  v2: f32[{sdims}] = const [{}]\n{zero_const}  v4: f32[2, 5, {n}] = qmatmul v0, v1\n  output \"y\" = v4\n}}\n",
            ints(k * n, lo, hi, i as u64),
            floats(ns, 50 + i as u32),
        );
        let g = tessera_ir::parse(&text).unwrap_or_else(|e| panic!("case {i}: {e}\n{text}"));
        tessera_ir::verify(&g).unwrap_or_else(|e| panic!("case {i}: {e}\n{text}"));
        let reports = check(vk, &g, vec![tensor(&[2, 5, k], 20 + i as u32)], 1e-4);
        assert_eq!(reports[0].op, "qmatmul", "case {i} ({dt} {gran})");
        // The weight stays packed: 4-bit weights read half the bytes of 8-bit ones.
        let wbytes = if dt.ends_with('4') { k * n / 2 } else { k * n };
        assert_eq!(reports[0].bytes_read, (2 * 5 * k * 4 + wbytes + ns.max(1) * 4) as u64, "case {i}");
    }
}

#[test]
fn gather_reads_i64_and_i32_indices_and_leaves_bad_ones_to_the_host() {
    let Some(vk) = vulkan() else { return };
    for (dt, axis) in [("i64", 0), ("i32", 1), ("i64", -1)] {
        let text = format!(
            "graph @g {{\n  v0: f32[7, 6, 5] = input \"x\"\n  v1: {dt}[2, 3] = input \"i\"\n  v2: f32 = gather v0, v1 {{axis = {axis}}}\n  output \"y\" = v2\n}}\n"
        );
        // The result: data[..axis] ++ [2, 3] ++ data[axis+1..].
        let dims = match axis {
            0 => "2, 3, 6, 5",
            1 => "7, 2, 3, 5",
            _ => "7, 6, 2, 3",
        };
        let g = tessera_ir::parse(&text.replace("f32 = gather", &format!("f32[{dims}] = gather"))).unwrap();
        tessera_ir::verify(&g).unwrap();
        let dim = [7i64, 6, 5][if axis < 0 { 2 } else { axis as usize }];
        let idx = vec![0, dim - 1, -1, -dim, 2, 1];
        let d = if dt == "i64" { DType::I64 } else { DType::I32 };
        let inputs = vec![tensor(&[7, 6, 5], 30), Tensor::from_i64(d, &[2, 3], idx).unwrap()];
        let reports = check(&vk, &g, inputs.clone(), 0.0);
        assert_eq!(reports[0].op, "gather");
        // An index out of range: the run goes to the host, whose interpreter names it.
        let bad = vec![
            Tensor::from_f32(DType::F32, &[7, 6, 5], values(210, 1)).unwrap(),
            Tensor::from_i64(d, &[2, 3], vec![0, 1, 2, dim, 0, 0]).unwrap(),
        ];
        let err = vk.run(&g, &bad, Fallback::Host).unwrap_err().to_string();
        assert!(err.contains("out of range") || err.contains("range"), "{err}");
        let err = vk.run(&g, &bad, Fallback::Fail).unwrap_err().to_string();
        assert!(err.contains(&format!("index {dim} is out of range")), "{err}");
    }
}

#[test]
fn layout_casts_and_reductions_match_the_interpreter() {
    let Some(vk) = vulkan() else { return };
    // Index data moved as words (i64 expand and slice with negative steps, i32 transpose),
    // casts to f32 from every integer width (i64 beyond i32's range included), reductions.
    let text = r#"graph @moves {
  v0: i64[1, 6] = input "ids"
  v1: i32[3, 4] = input "small"
  v2: u8[2, 5] = input "bytes"
  v3: f32[2, 3, 4, 5] = input "x"
  v4: i64[3, 6] = expand v0 {shape = [3, 6]}
  v5: i64[3, 3] = slice v4 {starts = [-1, 5], ends = [-10, 0], axes = [0, 1], steps = [-1, -2]}
  v6: f32[3, 3] = cast v5 {to = f32}
  v7: i32[4, 3] = transpose v1 {perm = [1, 0]}
  v8: f32[4, 3] = cast v7 {to = f32}
  v9: f32[2, 5] = cast v2 {to = f32}
  v10: f32[2, 5] = reduce_sum v3 {axes = [1, 2], keepdims = false}
  v11: f32[1, 3, 1, 1] = reduce_mean v3 {axes = [0, 2, 3], keepdims = true}
  v12: f32[] = reduce_sum v3 {axes = [], keepdims = false}
  v13: f32[2, 3, 2, 5] = slice v3 {starts = [1], ends = [4], axes = [2], steps = [2]}
  v14: f32[2, 3, 2, 5] = concat v13 {axis = 1}
  v15: f32[2, 3, 8, 5] = concat v3, v13, v13 {axis = -2}
  v16: i64[3, 9] = concat v4, v5 {axis = 1}
  v17: f32[2, 4] = reduce_max v3 {axes = [1, 3], keepdims = false}
  v18: f32[1, 3, 4, 1] = reduce_min v3 {axes = [0, 3], keepdims = true}
  v19: f32[2, 3, 4] = reduce_prod v3 {axes = [3], keepdims = false}
  v20: f32[2, 1, 4, 5], v21: f32[2, 2, 4, 5] = split v3 {axis = 1, sizes = [1, 2]}
  v22: i64[3, 2], v23: i64[3, 1], v24: i64[3, 3] = split v4 {axis = -1, sizes = [2, 1, 3]}
  output "a" = v6
  output "b" = v8
  output "c" = v9
  output "d" = v10
  output "e" = v11
  output "f" = v12
  output "g" = v14
  output "h" = v5
  output "i" = v15
  output "j" = v16
  output "k" = v17
  output "l" = v18
  output "m" = v19
  output "s0" = v20
  output "s1" = v21
  output "t0" = v22
  output "t1" = v23
  output "t2" = v24
}
"#;
    let g = tessera_ir::parse(text).unwrap();
    tessera_ir::verify(&g).unwrap();
    let inputs = vec![
        Tensor::from_i64(
            DType::I64,
            &[1, 6],
            vec![0, -3, 5_000_000_000, -(1 << 40) - 7, 2_147_483_647, -2_147_483_648],
        )
        .unwrap(),
        Tensor::from_i64(DType::I32, &[3, 4], (0..12).map(|v| v * 1_000_003 - 5_000_000).collect()).unwrap(),
        Tensor::from_i64(DType::U8, &[2, 5], vec![0, 1, 127, 128, 255, 3, 9, 200, 17, 64]).unwrap(),
        tensor(&[2, 3, 4, 5], 40),
    ];
    let want = tessera_ir::run(&g, inputs.clone()).unwrap();
    let (got, report) = vk.run(&g, &inputs, Fallback::Fail).unwrap_or_else(|e| panic!("{e}"));
    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a.shape(), b.shape(), "output {j}");
        let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
        for (p, q) in x.iter().zip(&y) {
            // Sums of 12 or 40 terms in another order: 1e-5 relative.
            assert!((p - q).abs() <= 1e-5 * q.abs().max(1.0), "output {j}: {p} vs {q}\n{a}\n{b}");
        }
    }
    // The integer outputs and casts are exact.
    assert_eq!(got[0], want[0]);
    assert_eq!(got[1], want[1]);
    assert_eq!(got[2], want[2]);
    assert_eq!(got[7], want[7]);
    // Concats, max and min, and splits are exact too.
    for j in (8..12).chain(13..18) {
        assert_eq!(got[j], want[j], "output {j}");
    }
    assert_eq!(report.host.len(), 0);
}

#[test]
fn int8_dynamic_quantization_runs_exactly_on_the_gpu() {
    let Some(vk) = vulkan() else { return };
    // DynamicQuantizeLinear, exact u8 x i8 and u8 x u8 matmul_integer (scalar and per-column
    // zero points, and onnxruntime's pair saturation), dequantize per tensor and per axis, and
    // a gather of bytes: the integer results equal the interpreter's bit for bit.
    let (k, n) = (37usize, 19usize);
    let text = format!(
        r#"graph @int8 {{
  v0: f32[2, 5, {k}] = input "x"
  v1: i64[3] = input "ids"
  v2: u8[2, 5, {k}], v3: f32[], v4: u8[] = dynamic_quantize v0
  v5: i8[{k}, {n}] = const [{w_i8}]
  v6: i8[] = const [3]
  v7: i32[2, 5, {n}] = matmul_integer v2, v5, v4, v6 {{pair_saturate = false}}
  v8: u8[{k}, {n}] = const [{w_u8}]
  v9: u8[{n}] = const [{z_u8}]
  v10: i32[2, 5, {n}] = matmul_integer v2, v8, v4, v9 {{pair_saturate = false}}
  v11: i32[2, 5, {n}] = matmul_integer v2, v5, v4, v6 {{pair_saturate = true}}
  v12: i32[2, 5, {n}] = matmul_integer v2, v5 {{pair_saturate = false}}
  v13: f32[2, 5, {n}] = cast v7 {{to = f32}}
  v14: f32[2, 5, {n}] = mul v13, v3
  v15: f32[{n}] = const [{scales}]
  v16: f32[{k}, {n}] = dequantize v8, v15, v9 {{axis = 1, block = 0}}
  v17: f32[2, 5, {k}] = dequantize v2, v3, v4 {{axis = 0, block = 0}}
  v18: u8[3, {n}] = gather v8, v1 {{axis = 0}}
  output "y" = v2
  output "scale" = v3
  output "zero" = v4
  output "mi" = v7
  output "mu" = v10
  output "pair" = v11
  output "nozero" = v12
  output "real" = v14
  output "dq_axis" = v16
  output "dq_x" = v17
  output "gathered" = v18
}}
"#,
        w_i8 = ints(k * n, -128, 127, 1),
        w_u8 = ints(k * n, 0, 255, 2),
        z_u8 = ints(n, 100, 155, 3),
        scales = floats(n, 4),
    );
    let g = tessera_ir::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    tessera_ir::verify(&g).unwrap();
    // Wide activations so the pairs of u8 x i8 products saturate int16 somewhere.
    let xs: Vec<f32> = values(2 * 5 * k, 9).iter().map(|v| v * 40.0).collect();
    let inputs = vec![
        Tensor::from_f32(DType::F32, &[2, 5, k], xs).unwrap(),
        Tensor::from_i64(DType::I64, &[3], vec![0, k as i64 - 1, -2]).unwrap(),
    ];
    let want = tessera_ir::run(&g, inputs.clone()).unwrap();
    let (got, report) = vk.run(&g, &inputs, Fallback::Fail).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.host.is_empty());
    let names = ["y", "scale", "zero", "mi", "mu", "pair", "nozero", "real", "dq_axis", "dq_x", "gathered"];
    for (j, name) in names.iter().enumerate() {
        assert_eq!(got[j], want[j], "{name}");
    }
    // The pair-saturated product differs from the exact one somewhere (the test exercises it).
    assert_ne!(want[5], want[3], "no pair saturated: widen the inputs");
}

#[test]
fn submissions_signal_the_timeline_semaphore() {
    let Some(vk) = vulkan() else { return };
    let Some((_, start)) = vk.timeline() else {
        eprintln!("!!! no timeline semaphores on {}: runs wait on fences", vk.name);
        return;
    };
    let mut g = Graph::new("t");
    let x = g.add_input("x", f32_ty(&[4, 8]));
    let s = g.add_op(Op::Softmax { axis: -1 }, vec![x]).unwrap()[0];
    let a = g.add_op(Op::ArgMax { axis: 1, keepdims: false, last: false }, vec![s]).unwrap()[0];
    g.add_output("a", a);
    let (_, r1) = vk.run(&g, &[tensor(&[4, 8], 1)], Fallback::Host).unwrap();
    let (_, r2) = vk.run(&g, &[tensor(&[4, 8], 2)], Fallback::Host).unwrap();
    // One submission each (the softmax, read back for the host's argmax), values in order.
    assert_eq!((r1.submissions, r2.submissions), (1, 1));
    assert_eq!(r1.timeline_value, Some(start + 1));
    assert_eq!(r2.timeline_value, Some(start + 2));
    assert_eq!(vk.timeline().unwrap().1, start + 2);
    // Reached values return at once; a value no submission signals times out.
    assert!(vk.wait_timeline(start + 2, 0).unwrap());
    assert!(!vk.wait_timeline(start + 3, 1_000_000).unwrap());
}

#[test]
fn fused_regions_run_as_one_kernel_or_node_by_node() {
    let Some(mut vk) = vulkan() else { return };
    // matmul + bias + GELU + residual, an elementwise chain over an i64 mask, and a reduction
    // region (no single shader: its body runs node by node inside the same command buffer).
    let text = r#"graph @regions {
  v0: f32[2, 9, 24] = input "x"
  v1: i64[2, 1, 9] = input "mask"
  v2: f32[24, 40] = const splat(0.03125)
  v3: f32[40] = const splat(0.5)
  v4: f32[2, 9, 40] = matmul v0, v2
  v5: f32[2, 9, 40] = add v4, v3
  v6: f32[2, 9, 40] = gelu v5
  v7: f32[40, 24] = const splat(-0.0625)
  v8: f32[2, 9, 24] = matmul v6, v7
  v9: f32[2, 9, 24] = add v8, v0
  v10: f32[2, 1, 9] = cast v1 {to = f32}
  v11: f32[] = const [1.0]
  v12: f32[2, 1, 9] = sub v11, v10
  v13: f32[] = const [-10000.0]
  v14: f32[2, 1, 9] = mul v12, v13
  v15: f32[2, 24] = reduce_sum v9 {axes = [1], keepdims = false}
  v16: f32[] = const [9.0]
  v17: f32[2, 24] = div v15, v16
  output "y" = v9
  output "m" = v14
  output "mean" = v17
}
"#;
    let g = tessera_ir::parse(text).unwrap();
    let mut fused = g.clone();
    tessera_runtime::compiler::passes::Pipeline::parse("canonicalize,fuse")
        .unwrap()
        .run(&mut fused, &mut |_| {})
        .unwrap();
    let regions = fused.nodes().filter(|(_, nd)| matches!(nd.op, Op::Kernel { .. })).count();
    assert!(regions >= 4, "the fuse pass formed {regions} regions:\n{}", tessera_ir::print(&fused));
    let mask = Tensor::from_i64(DType::I64, &[2, 1, 9], (0..18).map(|i| (i % 4 != 0) as i64).collect()).unwrap();
    let inputs = vec![tensor(&[2, 9, 24], 8), mask];
    let want = tessera_ir::run(&g, inputs.clone()).unwrap();
    for tiled in [true, false] {
        vk.limits.fast_shared_memory = tiled;
        let (got, report) = vk.run(&fused, &inputs, Fallback::Fail).unwrap_or_else(|e| panic!("{e}"));
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
            let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-4, "output {j}: max abs error {worst}");
        }
        let specs: Vec<&Spec> = report.kernels.iter().map(|k| &k.spec).collect();
        let fused_mm = specs.iter().filter(|s| matches!(s, Spec::MatMulFused { .. })).count();
        let fused_ew = specs.iter().filter(|s| matches!(s, Spec::Fused { .. })).count();
        assert_eq!((fused_mm, fused_ew), (2, 1), "{specs:?}");
        // One submission: the reduction region's body was recorded in the same command buffer.
        assert_eq!(report.submissions, 1);
        assert!(report.host.is_empty());
    }
}

#[test]
fn comparisons_logic_and_where_match_the_interpreter() {
    let Some(vk) = vulkan() else { return };
    // Bool results are written four to a word: odd sizes check the last partial word.
    let text = r#"graph @bools {
  v0: f32[3, 7] = input "x"
  v1: f32[7] = input "y"
  v2: bool[3, 7] = less v0, v1
  v3: bool[3, 7] = greater_equal v0, v1
  v4: bool[3, 7] = equal v0, v1
  v5: bool[3, 7] = xor v2, v4
  v6: bool[3, 7] = and v3, v5
  v7: bool[3, 7] = or v2, v6
  v8: bool[3, 7] = not v7
  v9: f32[3, 7] = where v8, v0, v1
  v10: bool[3, 7] = less_equal v0, v1
  v11: bool[3, 7] = greater v0, v1
  output "lt" = v2
  output "ge" = v3
  output "eq" = v4
  output "x" = v5
  output "a" = v6
  output "o" = v7
  output "n" = v8
  output "w" = v9
  output "le" = v10
  output "gt" = v11
}
"#;
    let g = tessera_ir::parse(text).unwrap();
    tessera_ir::verify(&g).unwrap();
    let mut xs = values(21, 6);
    xs[3] = f32::NAN;
    let mut ys = values(7, 6);
    ys[5] = xs[5]; // equal somewhere
    ys[1] = xs[1];
    let inputs =
        vec![Tensor::from_f32(DType::F32, &[3, 7], xs).unwrap(), Tensor::from_f32(DType::F32, &[7], ys).unwrap()];
    let want = tessera_ir::run(&g, inputs.clone()).unwrap();
    let (got, report) = vk.run(&g, &inputs, Fallback::Fail).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.host.is_empty());
    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
        if j == 7 {
            // where: NaN stays NaN; compare the bits.
            let (p, q) = (a.to_f64_vec(), b.to_f64_vec());
            assert!(p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()), "where: {a} vs {b}");
        } else {
            assert_eq!(a, b, "output {j}");
        }
    }
}
