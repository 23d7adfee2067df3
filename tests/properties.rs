//! Property tests: random well-typed graphs print, parse back to the same text, verify, and
//! give bit-identical interpreter results before and after the text round trip.

use proptest::prelude::*;
use tessera_ir::{
    parse, print, print_inline, run, verify, BinaryOp, ConstData, DType, Graph, Op, Quant, QuantGranularity, ReduceOp,
    Tensor, TensorType, UnaryOp, Value,
};

/// A small deterministic generator for data, so a failing case reproduces from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn float(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n.max(1)
    }
}

fn f32_const(g: &mut Graph, rng: &mut Lcg, dims: &[usize]) -> Value {
    let n: usize = dims.iter().product();
    let t = Tensor::from_f32(DType::F32, dims, (0..n).map(|_| rng.float()).collect()).unwrap();
    g.add_const(TensorType::with_static(DType::F32, dims), ConstData::from_vec(t.to_bytes()))
}

fn dims_of(g: &Graph, v: Value) -> Vec<usize> {
    g.ty(v).shape.as_static().expect("static shapes only")
}

/// Builds a random graph from `steps`: each step picks an op and operands among the f32
/// values made so far; steps whose operands do not fit are skipped (add_op infers types).
fn build(seed: u64, steps: &[(u8, u8, u8)]) -> (Graph, Vec<Tensor>) {
    let mut rng = Lcg(seed);
    let mut g = Graph::new("random");
    let (m, n) = (1 + rng.below(3) as usize, 1 + rng.below(4) as usize);
    let x = g.add_input("x", TensorType::with_static(DType::F32, &[m, n]));
    let mut floats = vec![x];
    for &(kind, a, b) in steps {
        let pick = |i: u8, vals: &Vec<Value>| vals[i as usize % vals.len()];
        let (va, vb) = (pick(a, &floats), pick(b, &floats));
        let da = dims_of(&g, va);
        let made = match kind % 16 {
            0 => {
                let u = [
                    UnaryOp::Tanh,
                    UnaryOp::Gelu,
                    UnaryOp::GeluTanh,
                    UnaryOp::Silu,
                    UnaryOp::Erf,
                    UnaryOp::Neg,
                    UnaryOp::Relu,
                    UnaryOp::Sigmoid,
                ][b as usize % 8];
                g.add_op(Op::Unary(u), vec![va])
            }
            1 => {
                let op = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Max, BinaryOp::Min, BinaryOp::Div]
                    [kind as usize / 16 % 6];
                g.add_op(Op::Binary(op), vec![va, vb])
            }
            2 => g.add_op(Op::MatMul, vec![va, vb]),
            3 => {
                let k = *da.last().unwrap_or(&1);
                let w = f32_const(&mut g, &mut rng, &[k, 1 + b as usize % 4]);
                g.add_op(Op::MatMul, vec![va, w])
            }
            4 => g.add_op(Op::Softmax { axis: -1 }, vec![va]),
            5 => {
                let k = *da.last().unwrap_or(&1);
                let gamma = f32_const(&mut g, &mut rng, &[k]);
                let beta = f32_const(&mut g, &mut rng, &[k]);
                g.add_op(Op::LayerNorm { axis: -1, epsilon: 1e-5 }, vec![va, gamma, beta])
            }
            6 => g.add_op(Op::Reduce { op: ReduceOp::Sum, axes: vec![-1], keepdims: true }, vec![va]),
            7 if da.len() == 2 => g.add_op(Op::Transpose { perm: vec![1, 0] }, vec![va]),
            8 => g.add_op(Op::Reshape { shape: Some(vec![tessera_ir::TargetDim::Int(-1)]) }, vec![va]),
            9 => g.add_op(Op::Concat { axis: 0 }, vec![va, vb]),
            10 if !da.is_empty() && da[da.len() - 1] > 1 => {
                let last = da[da.len() - 1] as i64;
                g.add_op(
                    Op::Slice {
                        starts: vec![tessera_ir::TargetDim::Int(1)],
                        ends: vec![tessera_ir::TargetDim::Int(last)],
                        axes: vec![-1],
                        steps: vec![1],
                    },
                    vec![va],
                )
            }
            11 => {
                // Quantize then dequantize with a per-tensor scale.
                let s =
                    g.add_const(TensorType::scalar(DType::F32), ConstData::from_vec(0.05f32.to_le_bytes().to_vec()));
                let q = g.add_op(Op::Quantize { axis: 0, block: 0, to: DType::I8 }, vec![va, s]).unwrap()[0];
                g.add_op(Op::Dequantize { axis: 0, block: 0 }, vec![q, s])
            }
            12 => {
                // qmatmul with an int4 weight, blocks of 2 along the input dim.
                let k = *da.last().unwrap_or(&1);
                let cols = 1 + b as usize % 3;
                let blocks = k.div_ceil(2);
                let scale = f32_const(&mut g, &mut rng, &[blocks, cols]);
                let q: Vec<i64> = (0..k * cols).map(|_| rng.below(16) as i64 - 8).collect();
                let wt = Tensor::from_i64(DType::I4, &[k, cols], q).unwrap();
                let mut ty = TensorType::with_static(DType::I4, &[k, cols]);
                ty.quant = Some(Box::new(Quant {
                    granularity: QuantGranularity::PerBlock { axis: 0, size: 2 },
                    scale,
                    zero_point: None,
                    offset: None,
                }));
                let w = g.add_const(ty, ConstData::from_vec(wt.to_bytes()));
                g.add_op(Op::QMatMul, vec![va, w])
            }
            13 => {
                let h = g.add_op(Op::Cast { to: DType::F16 }, vec![va]).unwrap()[0];
                g.add_op(Op::Cast { to: DType::F32 }, vec![h])
            }
            14 if da.len() >= 2 => g.add_op(Op::Attention { scale: 0.5, causal: b % 2 == 0 }, vec![va, va, va]),
            15 => {
                let c = g.add_op(Op::Binary(BinaryOp::Greater), vec![va, vb]);
                match c {
                    Ok(c) => g.add_op(Op::Where, vec![c[0], va, vb]),
                    Err(e) => Err(e),
                }
            }
            _ => continue,
        };
        if let Ok(results) = made {
            floats.extend(results.into_iter().filter(|&r| g.ty(r).dtype == DType::F32));
        }
    }
    let last = *floats.last().unwrap();
    g.add_output("y", last);
    if floats.len() > 2 {
        g.add_output("mid", floats[floats.len() / 2]);
    }
    let input = Tensor::from_f32(DType::F32, &[m, n], (0..m * n).map(|_| rng.float() * 3.0).collect()).unwrap();
    (g, vec![input])
}

fn same_bits(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.dtype() == y.dtype() && x.shape() == y.shape() && x.to_bytes() == y.to_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_round_trip_through_text(seed in any::<u64>(), steps in prop::collection::vec(any::<(u8, u8, u8)>(), 1..14)) {
        let (g, inputs) = build(seed, &steps);
        prop_assert!(verify(&g).is_ok(), "built graph does not verify: {:?}\n{}", verify(&g), print(&g));
        for printer in [print as fn(&Graph) -> String, print_inline] {
            let once = printer(&g);
            let back = parse(&once).map_err(|e| TestCaseError::fail(format!("{e}\n{once}")))?;
            prop_assert!(verify(&back).is_ok(), "{:?}", verify(&back));
            prop_assert_eq!(&once, &printer(&back));
        }
        let before = run(&g, inputs.clone()).map_err(|e| TestCaseError::fail(format!("{e}\n{}", print(&g))))?;
        let back = parse(&print_inline(&g)).unwrap();
        let after = run(&back, inputs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(same_bits(&before, &after), "results differ after the round trip\n{}", print_inline(&g));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Passes preserve semantics: the default pipeline keeps every output (within float tolerance).
    #[test]
    fn the_default_pipeline_preserves_results(seed in any::<u64>(), steps in prop::collection::vec(any::<(u8, u8, u8)>(), 1..14)) {
        let (g, inputs) = build(seed, &steps);
        let before = run(&g, inputs.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut after = g.clone();
        let mut pipeline = tessera_compiler::passes::Pipeline::default_pipeline();
        pipeline.verify_each = true;
        pipeline.run(&mut after, &mut |_| {}).map_err(|e| TestCaseError::fail(format!("{e}\n{}", print(&g))))?;
        let out = run(&after, inputs).map_err(|e| TestCaseError::fail(format!("{e}\n{}", print(&after))))?;
        for (x, y) in before.iter().zip(&out) {
            let c = tessera_ir::compare::compare(y, x, 1e-5, 1e-5).map_err(TestCaseError::fail)?;
            prop_assert!(c.passed(), "{c}\nbefore:\n{}after:\n{}", print(&g), print(&after));
        }
    }
}

/// Guards the generator against going vacuous: over fixed seeds it must make graphs of real
/// size that use every op family it knows.
#[test]
fn generator_covers_every_op_family() {
    let mut names = std::collections::BTreeSet::new();
    let mut nodes = 0;
    for seed in 0..200u64 {
        let mut rng = Lcg(seed ^ 0x9e37_79b9);
        let steps: Vec<(u8, u8, u8)> =
            (0..12).map(|_| (rng.next() as u8, rng.next() as u8, rng.next() as u8)).collect();
        let (g, inputs) = build(seed, &steps);
        nodes += g.n_nodes();
        names.extend(g.nodes().map(|(_, n)| n.op.name()));
        run(&g, inputs).unwrap();
    }
    for op in [
        "matmul",
        "qmatmul",
        "layer_norm",
        "softmax",
        "attention",
        "quantize",
        "dequantize",
        "where",
        "concat",
        "slice",
        "cast",
        "transpose",
        "reshape",
        "reduce_sum",
        "gelu",
    ] {
        assert!(names.contains(op), "no generated graph uses `{op}`: {names:?}");
    }
    assert!(nodes / 200 >= 6, "graphs average only {} nodes", nodes / 200);
}
