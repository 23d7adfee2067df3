//! CPU kernels against the reference interpreter on small graphs.

use tessera_ir::{parse, verify, DType, Tensor};
use tessera_target_cpu::{compile, CpuOptions};

fn run_both(src: &str, inputs: Vec<Tensor>) -> (Vec<Tensor>, Vec<Tensor>) {
    let g = parse(src).unwrap_or_else(|e| panic!("{e}"));
    verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let p = compile(&g, &CpuOptions { threads: 2, ..Default::default() }).unwrap_or_else(|e| panic!("{e}"));
    let got = p.run(&inputs).unwrap_or_else(|e| panic!("{e}"));
    let want = tessera_ir::run(&g, inputs).unwrap();
    (got, want)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn vector_math_matches_libm() {
    // 1001 points over [-12, 12] (odd count: the scalar tail runs too).
    let xs: Vec<f32> = (0..1001).map(|i| -12.0 + 24.0 * i as f32 / 1000.0).collect();
    for (op, tol) in
        [("exp", 2e-7f64), ("erf", 4e-7), ("tanh", 3e-7), ("gelu", 2e-6), ("sigmoid", 2e-7), ("gelu_tanh", 3e-6)]
    {
        let src =
            format!("graph @g {{\n  v0: f32[1001] = input \"x\"\n  v1: f32[1001] = {op} v0\n  output \"y\" = v1\n}}\n");
        let x = Tensor::from_f32(DType::F32, &[1001], xs.clone()).unwrap();
        let (got, want) = run_both(&src, vec![x]);
        // exp is compared relative to its value.
        let err = if op == "exp" {
            got[0]
                .to_f64_vec()
                .iter()
                .zip(want[0].to_f64_vec())
                .map(|(a, b)| ((a - b) / b.max(1e-30)).abs())
                .fold(0.0, f64::max)
        } else {
            max_abs(&got[0], &want[0])
        };
        assert!(err <= tol, "{op}: error {err:e} above {tol:e}");
    }
}

#[test]
fn matmul_with_bias_and_gelu_epilogue() {
    let src = "graph @g {
  v0: f32[5, 13] = input \"a\"
  v1: f32[13, 11] = input \"b\"
  v2: f32[11] = input \"c\"
  v3: f32[5, 11] = matmul v0, v1
  v4: f32[5, 11] = add v3, v2
  v5: f32[5, 11] = gelu v4
  output \"y\" = v5
}
";
    let a = Tensor::from_f32(DType::F32, &[5, 13], (0..65).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
    let b = Tensor::from_f32(DType::F32, &[13, 11], (0..143).map(|i| (i as f32 * 0.11).cos()).collect()).unwrap();
    let c = Tensor::from_f32(DType::F32, &[11], (0..11).map(|i| i as f32 * 0.1).collect()).unwrap();
    let (got, want) = run_both(src, vec![a, b, c]);
    assert!(max_abs(&got[0], &want[0]) < 1e-5, "{} vs {}", got[0], want[0]);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let src = "graph @g {\n  v0: f32[seq, 4] = input \"x\"\n  v1: f32[seq, 4] = exp v0\n  output \"y\" = v1\n}\n";
    let g = parse(src).unwrap();
    let p = compile(&g, &CpuOptions::default()).unwrap();
    let wrong_dtype = Tensor::from_i64(DType::I64, &[2, 4], vec![0; 8]).unwrap();
    assert!(matches!(p.run(&[wrong_dtype]), Err(tessera_target_cpu::CpuError::InputDtype { .. })));
    let wrong_shape = Tensor::from_f32(DType::F32, &[2, 5], vec![0.0; 10]).unwrap();
    assert!(matches!(p.run(&[wrong_shape]), Err(tessera_target_cpu::CpuError::InputShape { .. })));
    assert!(matches!(p.run(&[]), Err(tessera_target_cpu::CpuError::InputCount { .. })));
    // Any sequence length runs with the same compiled code; NaN propagates.
    let x = Tensor::from_f32(DType::F32, &[3, 4], vec![f32::NAN; 12]).unwrap();
    assert!(p.run(&[x]).unwrap()[0].to_f64_vec().iter().all(|v| v.is_nan()));
}

#[test]
fn gather_out_of_range_is_a_kernel_error_not_a_read() {
    let src = "graph @g {
  v0: f32[4, 3] = input \"t\"
  v1: i64[2] = input \"i\"
  v2: f32[2, 3] = gather v0, v1 {axis = 0}
  output \"y\" = v2
}
";
    let g = parse(src).unwrap();
    let p = compile(&g, &CpuOptions { threads: 1, ..Default::default() }).unwrap();
    let t = Tensor::from_f32(DType::F32, &[4, 3], vec![1.0; 12]).unwrap();
    let i = Tensor::from_i64(DType::I64, &[2], vec![1, 9]).unwrap();
    let e = p.run(&[t, i]).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}
