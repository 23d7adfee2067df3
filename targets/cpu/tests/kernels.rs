//! CPU kernels against the reference interpreter on small graphs.

use tessera_ir::{parse, verify, DType, Tensor};
use tessera_target_cpu::{compile, CpuOptions};

fn run_both(src: &str, inputs: Vec<Tensor>) -> (Vec<Tensor>, Vec<Tensor>) {
    let g = parse(src).unwrap_or_else(|e| panic!("{e}"));
    verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let p = compile(&g, &CpuOptions { threads: 2, min_split_bytes: 0, ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"));
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

fn const_list(n: usize, f: impl Fn(usize) -> f32) -> String {
    let v: Vec<String> = (0..n).map(|i| format!("{:?}", f(i))).collect();
    v.join(", ")
}

/// The names of the kernels the CPU target makes for the graph `src`.
fn kernel_names(src: &str, mode: tessera_target_cpu::Ukernels) -> Vec<String> {
    let g = parse(src).unwrap();
    tessera_target_cpu::listing(&g, &[], mode).unwrap().into_iter().map(|(name, _, _)| name).collect()
}

/// Runs `src` with the widest `std::arch` routines, with the 256-bit ones only (on an AVX-512
/// host, the other family) and without any; all must match the interpreter.
fn both_ways(src: &str, inputs: Vec<Tensor>, tol: f64) {
    use tessera_target_cpu::Ukernels;
    let g = parse(src).unwrap_or_else(|e| panic!("{e}"));
    verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let want = tessera_ir::run(&g, inputs.clone()).unwrap();
    for ukernels in [Ukernels::Auto, Ukernels::Avx2, Ukernels::Off] {
        for threads in [1, 2] {
            let p = compile(&g, &CpuOptions { threads, ukernels, min_split_bytes: 0, ..Default::default() })
                .unwrap_or_else(|e| panic!("{e}"));
            let got = p.run(&inputs).unwrap_or_else(|e| panic!("{e}"));
            for (a, b) in got.iter().zip(&want) {
                let err = max_abs(a, b);
                assert!(err <= tol, "{ukernels:?}, {threads} threads: max abs error {err:e}");
            }
        }
    }
}

/// Packed GEMM with odd sizes: a last panel of 3 columns, row blocks with a tail, and an
/// epilogue; an odd number of panels exercises the single-panel tile.
#[test]
fn packed_gemm_with_ragged_sizes_matches_the_interpreter_both_ways() {
    for (m, k, n) in [(13, 40, 27), (7, 9, 16), (1, 3, 5), (20, 64, 40), (9, 384, 100), (1, 300, 64), (8, 521, 72)] {
        let src = format!(
            "graph @g {{
  v0: f32[{m}, {k}] = input \"a\"
  v1: f32[{k}, {n}] = const [{}]
  v2: f32[{n}] = const [{}]
  v3: f32[{m}, {n}] = matmul v0, v1
  v4: f32[{m}, {n}] = add v3, v2
  v5: f32[{m}, {n}] = gelu v4
  output \"y\" = v5
}}
",
            const_list(k * n, |i| ((i * 7 % 23) as f32 - 11.0) * 0.05),
            const_list(n, |i| i as f32 * 0.1 - 1.0)
        );
        let a = Tensor::from_f32(DType::F32, &[m, k], (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
        both_ways(&src, vec![a], 1e-4);
    }
}

/// Attention with sizes that are not multiples of the tiles (11 keys, head dim 10, value dim
/// 12), an additive mask broadcast over heads and rows, and the causal variant.
#[test]
fn attention_with_ragged_sizes_matches_the_interpreter_both_ways() {
    for causal in [false, true] {
        let src = format!(
            "graph @g {{
  v0: f32[1, 2, 11, 10] = input \"q\"
  v1: f32[1, 2, 11, 10] = input \"k\"
  v2: f32[1, 2, 11, 12] = input \"v\"
  v3: f32[1, 1, 1, 11] = input \"mask\"
  v4: f32[1, 2, 11, 12] = attention v0, v1, v2, v3 {{scale = 0.3, causal = {causal}}}
  output \"y\" = v4
}}
"
        );
        let t = |n: usize, s: f32| (0..n).map(|i| (i as f32 * s).sin()).collect::<Vec<f32>>();
        let q = Tensor::from_f32(DType::F32, &[1, 2, 11, 10], t(220, 0.31)).unwrap();
        let k = Tensor::from_f32(DType::F32, &[1, 2, 11, 10], t(220, 0.17)).unwrap();
        let v = Tensor::from_f32(DType::F32, &[1, 2, 11, 12], t(264, 0.23)).unwrap();
        // A masked key and graded finite values: a mask added twice, or not at all, shows.
        let mask: Vec<f32> = (0..11).map(|j| if j == 9 { -10000.0 } else { -0.4 * j as f32 }).collect();
        let mask = Tensor::from_f32(DType::F32, &[1, 1, 1, 11], mask).unwrap();
        both_ways(&src, vec![q, k, v, mask], 1e-5);
    }
}

/// On a CPU with AVX-VNNI, the integer GEMM's widen-multiply-pairwise-add tree becomes
/// `vpdpbusd` (listed, not run: this host may lack the feature). With the host's own flags it
/// appears only where the host has VNNI (AVX-VNNI, or AVX512-VNNI with its EVEX form).
#[cfg(target_arch = "x86_64")]
#[test]
fn integer_gemm_folds_to_vpdpbusd_for_a_vnni_cpu() {
    let src = format!(
        "graph @g {{
  v0: u8[6, 16] = input \"a\"
  v1: i8[16, 8] = const [{}]
  v2: u8[] = const [3]
  v3: i8[] = const [0]
  v4: i32[6, 8] = matmul_integer v0, v1, v2, v3
  output \"y\" = v4
}}
",
        (0..128i32).map(|i| (i * 5 % 17 - 8).to_string()).collect::<Vec<_>>().join(", ")
    );
    let g = parse(&src).unwrap_or_else(|e| panic!("{e}"));
    let flags = [("has_avx_vnni".to_string(), "true".to_string())];
    let listing = tessera_target_cpu::listing(&g, &flags, tessera_target_cpu::Ukernels::Off).unwrap();
    let asm: String = listing.iter().map(|(_, _, a)| a.as_str()).collect();
    assert!(asm.contains("vpdpbusd"), "no vpdpbusd in:\n{asm}");
    let plain = tessera_target_cpu::listing(&g, &[], tessera_target_cpu::Ukernels::Off).unwrap();
    let host_vnni = std::arch::is_x86_feature_detected!("avxvnni") || std::arch::is_x86_feature_detected!("avx512vnni");
    assert!(!plain.iter().any(|(_, _, a)| a.contains("vpdpbusd")) || host_vnni);
}

/// Integer GEMM with sizes off the tiles (K not a multiple of 16 so the widening has a tail, an
/// odd number of panels, row blocks with a tail), extreme 8-bit values, both weight types and
/// zero points per tensor and per column: exact, with and without the `std::arch` tile.
#[test]
fn integer_gemm_with_ragged_sizes_is_exact_both_ways() {
    for (m, k, n, wt) in [(13, 36, 24, "u8"), (7, 20, 8, "i8"), (1, 4, 16, "i8"), (20, 68, 40, "u8")] {
        let w = |i: usize| -> i64 {
            let v = match i % 7 {
                0 => 255,
                1 => 0,
                _ => (i * 37 % 256) as i64,
            };
            if wt == "i8" {
                v - 128
            } else {
                v
            }
        };
        let zb = if wt == "i8" {
            "-3".to_string()
        } else {
            (0..n).map(|j| (j * 11 % 256).to_string()).collect::<Vec<_>>().join(", ")
        };
        let zb_shape = if wt == "i8" { String::new() } else { n.to_string() };
        let src = format!(
            "graph @g {{
  v0: u8[{m}, {k}] = input \"a\"
  v1: {wt}[{k}, {n}] = const [{}]
  v2: u8[] = input \"za\"
  v3: {wt}[{zb_shape}] = const [{zb}]
  v4: i32[{m}, {n}] = matmul_integer v0, v1, v2, v3
  output \"y\" = v4
}}
",
            (0..k * n).map(|i| w(i).to_string()).collect::<Vec<_>>().join(", ")
        );
        let a: Vec<i64> = (0..m * k).map(|i| if i % 5 == 0 { 255 } else { (i * 53 % 256) as i64 }).collect();
        let a = Tensor::from_i64(DType::U8, &[m, k], a).unwrap();
        let za = Tensor::from_i64(DType::U8, &[], vec![131]).unwrap();
        both_ways(&src, vec![a, za], 0.0);
        // The exact product takes the AVX512-VNNI tile where the host has it, else the i16 one
        // (always the i16 one with the 256-bit routines only).
        let vnni = tessera_target_cpu::ukernel::vnni_tile(tessera_target_cpu::Ukernels::Auto, 6, 2).is_some();
        let auto = tessera_target_cpu::ukernel::i16_tile(tessera_target_cpu::Ukernels::Auto, 6, 2).is_some();
        let names = kernel_names(&src, tessera_target_cpu::Ukernels::Auto);
        assert_eq!(names.iter().any(|name| name.contains("vnni_ukernel")), vnni, "VNNI tile used iff available");
        assert_eq!(names.iter().any(|name| name.contains("i16_ukernel")), auto && !vnni, "i16 tile used iff no VNNI");
        let names = kernel_names(&src, tessera_target_cpu::Ukernels::Avx2);
        assert_eq!(names.iter().any(|name| name.contains("i16_ukernel")), auto, "--ukernel avx2: the i16 tile");
    }
}

/// Dynamic quantization over 16-wide steps and a tail, with a NaN (skipped by the range, mapped
/// to the zero point like the interpreter does) and values at both ends of the range.
#[test]
fn dynamic_quantize_matches_the_interpreter_with_nan_and_a_tail() {
    let n = 16 * 3 + 5;
    let src = format!(
        "graph @g {{
  v0: f32[{n}] = input \"x\"
  v1: u8[{n}], v2: f32[], v3: u8[] = dynamic_quantize v0
  output \"y\" = v1
  output \"s\" = v2
  output \"z\" = v3
}}
"
    );
    let mut xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.77).sin() * 3.0 - 0.5).collect();
    xs[7] = f32::NAN;
    xs[20] = 2.5;
    xs[n - 1] = -3.5;
    let x = Tensor::from_f32(DType::F32, &[n], xs).unwrap();
    let (got, want) = run_both(&src, vec![x]);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.to_f64_vec(), w.to_f64_vec());
    }
}

/// ggml's activation rounding, both block formats, bit for bit: rows of varied magnitude (so
/// f16 scales and their rounding differ per block), an all-zero block, a block with a NaN
/// (NaN throughout, as the interpreter), and ties at `x * multiplier = k + 0.5`.
#[test]
fn fake_quant_matches_the_interpreter_bit_for_bit() {
    let (rows, width) = (5, 512);
    let mut xs: Vec<f32> =
        (0..rows * width).map(|i| (i as f32 * 0.731).sin() * (1.0 + (i / 97) as f32 * 0.37).powi(3)).collect();
    xs[width..width + 256].fill(0.0);
    xs[2 * width + 300] = f32::NAN;
    // amax 127 in the first q8_0 block of row 3: multiplier 1, so these are exact ties.
    xs[3 * width] = 127.0;
    xs[3 * width + 1..3 * width + 5].copy_from_slice(&[0.5, 1.5, -2.5, 3.5]);
    for (format, block) in [("q8_0", 32), ("q8_k", 256)] {
        let src = format!(
            "graph @g {{\n  v0: f32[{rows}, {width}] = input \"x\"\n  v1: f32[{rows}, {width}] = fake_quant v0 {{format = {format}}}\n  output \"y\" = v1\n}}\n"
        );
        let x = Tensor::from_f32(DType::F32, &[rows, width], xs.clone()).unwrap();
        let (got, want) = run_both(&src, vec![x]);
        let bits = |t: &Tensor| t.to_f64_vec().iter().map(|v| (*v as f32).to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got[0]), bits(&want[0]), "{format}");
        let w = want[0].to_f64_vec();
        let nan_block = 2 * width + 300 / block * block;
        assert!(w[nan_block..nan_block + block].iter().all(|v| v.is_nan()), "{format}: the NaN block");
        assert!(!w[nan_block - 1].is_nan() && !w[nan_block + block].is_nan(), "{format}: only that block");
        assert_ne!(w[..width], xs[..width].iter().map(|&v| v as f64).collect::<Vec<_>>()[..], "{format} rounds");
    }
}

/// onnxruntime's saturating pair sums (`pair_saturate`): weights and activations chosen so that
/// some pairs saturate at both ends, sizes off the tiles; equal to the interpreter both ways.
#[test]
fn saturating_integer_gemm_matches_the_interpreter_both_ways() {
    for (m, k, n, zb) in [(13, 36, 24, 0), (7, 20, 8, -3), (1, 4, 16, 5)] {
        let w = |i: usize| -> i64 { [127, 126, -128, -127, 3, (i * 37 % 256) as i64 - 128][i % 6] };
        let src = format!(
            "graph @g {{
  v0: u8[{m}, {k}] = input \"a\"
  v1: i8[{k}, {n}] = const [{}]
  v2: u8[] = input \"za\"
  v3: i8[] = const [{zb}]
  v4: i32[{m}, {n}] = matmul_integer v0, v1, v2, v3 {{pair_saturate = true}}
  output \"y\" = v4
}}
",
            (0..k * n).map(|i| w(i).to_string()).collect::<Vec<_>>().join(", ")
        );
        let a: Vec<i64> = (0..m * k).map(|i| if i % 3 != 2 { 255 } else { (i * 53 % 256) as i64 }).collect();
        let a = Tensor::from_i64(DType::U8, &[m, k], a).unwrap();
        let za = Tensor::from_i64(DType::U8, &[], vec![7]).unwrap();
        both_ways(&src, vec![a, za], 0.0);
    }
}

/// Exact integer GEMM through the saturating tile: small weights except a few pairs of one sign
/// that would saturate `vpmaddubsw` (127 + 127, -128 + -128, 100 + 60) with activations of 255,
/// in both panels of a pair and in a last odd panel; clamped and added back, so still exact.
#[test]
fn exact_integer_gemm_with_weight_outliers_uses_the_split_tile() {
    let (m, k, n) = (9, 400, 24);
    let mut w: Vec<i64> = (0..k * n).map(|i| (i * 13 % 41) as i64 - 20).collect();
    for (kk, c, v0, v1) in [(0, 0, 127, 127), (10, 5, -128, -128), (398, 23, 100, 60), (200, 17, 127, 100)] {
        w[kk * n + c] = v0;
        w[(kk + 1) * n + c] = v1;
    }
    let src = format!(
        "graph @g {{
  v0: u8[{m}, {k}] = input \"a\"
  v1: i8[{k}, {n}] = const [{}]
  v2: u8[] = input \"za\"
  v3: i8[] = const [2]
  v4: i32[{m}, {n}] = matmul_integer v0, v1, v2, v3
  output \"y\" = v4
}}
",
        w.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
    );
    let a: Vec<i64> = (0..m * k).map(|i| if i % 7 != 3 { 255 } else { (i * 53 % 256) as i64 }).collect();
    let a = Tensor::from_i64(DType::U8, &[m, k], a).unwrap();
    let za = Tensor::from_i64(DType::U8, &[], vec![9]).unwrap();
    both_ways(&src, vec![a, za], 0.0);
    // Where the host has AVX512-VNNI the exact product needs no split (`vpdpbusd` does not
    // saturate); elsewhere the split tile is used wherever the saturating one exists.
    let vnni = tessera_target_cpu::ukernel::vnni_tile(tessera_target_cpu::Ukernels::Auto, 6, 2).is_some();
    let sat = tessera_target_cpu::ukernel::sat_tile(tessera_target_cpu::Ukernels::Auto, 6, 2).is_some();
    let names = kernel_names(&src, tessera_target_cpu::Ukernels::Auto);
    assert_eq!(names.iter().any(|name| name.contains("split_ukernel")), sat && !vnni, "split tile used iff no VNNI");
    assert_eq!(names.iter().any(|name| name.contains("vnni_ukernel")), vnni, "VNNI tile used iff available");
    // With the 256-bit routines only, the split tile runs on every host that has it (both_ways
    // above checked its results).
    let names = kernel_names(&src, tessera_target_cpu::Ukernels::Avx2);
    assert_eq!(names.iter().any(|name| name.contains("split_ukernel")), sat, "--ukernel avx2: the split tile");
}

/// A graph whose shapes depend on an input's values (a reshape to a run-time shape, a slice
/// with run-time ends) runs on the CPU target compiled per value: two shape values, two
/// programs, each equal to the interpreter; a repeated value reuses its program.
#[test]
fn shapes_from_input_values_are_specialized_per_value() {
    let src = "graph @g {
  v0: f32[2, 6] = input \"x\"
  v1: i64[2] = input \"shape\"
  v2: f32[?, ?] = reshape v0, v1
  v3: i64[1] = input \"end\"
  v4: i64[1] = const [0]
  v5: i64[1] = const [1]
  v6: f32[?, ?] = slice v2, v4, v3, v5 {starts = [], ends = [], axes = [], steps = []}
  v7: f32[?, ?] = exp v6
  output \"y\" = v7
}
";
    let g = parse(src).unwrap_or_else(|e| panic!("{e}"));
    verify(&g).unwrap_or_else(|e| panic!("{e}"));
    assert!(tessera_target_cpu::specialize::shapes_depend_on_data(&g));
    let s = tessera_target_cpu::Specializing::new(&g, &CpuOptions { threads: 1, ..Default::default() }).unwrap();
    let x = Tensor::from_f32(DType::F32, &[2, 6], (0..12).map(|i| i as f32 * 0.1).collect()).unwrap();
    for (shape, end) in [([3, 4], 2), ([4, 3], 5), ([3, 4], 2)] {
        let inputs = vec![
            x.clone(),
            Tensor::from_i64(DType::I64, &[2], shape.to_vec()).unwrap(),
            Tensor::from_i64(DType::I64, &[1], vec![end]).unwrap(),
        ];
        let want = tessera_ir::run(&g, inputs.clone()).unwrap();
        let got = s.run(&inputs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got[0].shape(), want[0].shape());
        assert!(max_abs(&got[0], &want[0]) <= 1e-6);
    }
    assert_eq!(s.specializations(), 2);
}

/// Casts to and from 4-bit integers (two per byte), an odd count so the last byte is half
/// used, values that wrap (9.7 -> i4 is -7 after truncation to 9), negatives and NaN.
#[test]
fn four_bit_casts_match_the_interpreter() {
    let src = "graph @g {
  v0: f32[7] = input \"x\"
  v1: i4[7] = cast v0 {to = i4}
  v2: u4[7] = cast v0 {to = u4}
  v3: f32[7] = cast v1 {to = f32}
  v4: u8[7] = cast v2 {to = u8}
  v5: i64[7] = cast v1 {to = i64}
  output \"a\" = v1
  output \"b\" = v2
  output \"c\" = v3
  output \"d\" = v4
  output \"e\" = v5
}
";
    let x = Tensor::from_f32(DType::F32, &[7], vec![0.0, 1.5, -2.7, 7.9, 9.7, -8.0, f32::NAN]).unwrap();
    let (got, want) = run_both(src, vec![x]);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_f64_vec(), w.to_f64_vec(), "output {i}");
    }
}

/// The general integer product: i8 activations, a run-time u8 weight with a batch dim that
/// broadcasts, zero points per row of `a` and per column of `b`.
#[test]
fn general_integer_gemm_with_batches_and_vector_zero_points() {
    let src = "graph @g {
  v0: i8[2, 3, 5] = input \"a\"
  v1: u8[1, 5, 4] = input \"b\"
  v2: i8[3] = input \"za\"
  v3: u8[4] = input \"zb\"
  v4: i32[2, 3, 4] = matmul_integer v0, v1, v2, v3
  output \"y\" = v4
}
";
    let a = Tensor::from_i64(DType::I8, &[2, 3, 5], (0..30).map(|i| (i * 37 % 256) as i64 - 128).collect()).unwrap();
    let b = Tensor::from_i64(DType::U8, &[1, 5, 4], (0..20).map(|i| (i * 53 % 256) as i64).collect()).unwrap();
    let za = Tensor::from_i64(DType::I8, &[3], vec![-5, 0, 127]).unwrap();
    let zb = Tensor::from_i64(DType::U8, &[4], vec![0, 128, 255, 3]).unwrap();
    let (got, want) = run_both(src, vec![a, b, za, zb]);
    assert_eq!(got[0].to_f64_vec(), want[0].to_f64_vec());
}

/// Softmax and log-softmax over the first and middle axes (strided lanes), at 1 and 2 threads.
#[test]
fn softmax_over_an_inner_axis_matches_the_interpreter() {
    let src = "graph @g {
  v0: f32[3, 5, 4] = input \"x\"
  v1: f32[3, 5, 4] = softmax v0 {axis = 1}
  v2: f32[3, 5, 4] = log_softmax v0 {axis = 0}
  output \"a\" = v1
  output \"b\" = v2
}
";
    let x = Tensor::from_f32(DType::F32, &[3, 5, 4], (0..60).map(|i| (i as f32 * 0.7).sin() * 4.0).collect()).unwrap();
    both_ways(src, vec![x], 1e-6);
}

/// Quantization with parameters along an inner axis, per block, and to/from 4 bits, with NaN,
/// saturation and an odd element count.
#[test]
fn quantize_and_dequantize_per_axis_per_block_and_four_bit_match_the_interpreter() {
    let src = "graph @g {
  v0: f32[3, 5] = input \"x\"
  v1: f32[3] = const [0.5, 0.25, 2.0]
  v2: u8[3] = const [10, 128, 250]
  v3: u8[3, 5] = quantize v0, v1, v2 {axis = 0, block = 0, to = u8}
  v4: f32[3, 5] = dequantize v3, v1, v2 {axis = 0, block = 0}
  v5: f32[3, 3] = const [0.5, 1.0, 0.75, 0.3, 0.2, 0.1, 1.5, 2.5, 3.5]
  v6: i4[3, 3] = const [1, -2, 0, 3, 7, -8, 0, 1, 2]
  v7: i4[3, 5] = quantize v0, v5, v6 {axis = 1, block = 2, to = i4}
  v8: f32[3, 5] = dequantize v7, v5, v6 {axis = 1, block = 2}
  output \"a\" = v3
  output \"b\" = v4
  output \"c\" = v7
  output \"d\" = v8
}
";
    let mut xs: Vec<f32> = (0..15).map(|i| (i as f32 * 1.3).sin() * 6.0).collect();
    xs[4] = f32::NAN;
    xs[9] = 1e9;
    let x = Tensor::from_f32(DType::F32, &[3, 5], xs).unwrap();
    let (got, want) = run_both(src, vec![x]);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (g.to_f64_vec(), w.to_f64_vec());
        assert!(g.iter().zip(&w).all(|(a, b)| a == b || (a.is_nan() && b.is_nan())), "output {i}: {g:?} vs {w:?}");
    }
}

/// GatherND with a batch dim, negative indices, and an out-of-range index (a kernel fault, as
/// the interpreter's error, not a read outside the data).
#[test]
fn gather_nd_matches_the_interpreter_and_faults_out_of_range() {
    let src = "graph @g {
  v0: f32[2, 3, 4] = input \"x\"
  v1: i64[2, 2, 1] = input \"i\"
  v2: f32[2, 2, 4] = gather_nd v0, v1 {batch_dims = 1}
  output \"y\" = v2
}
";
    let x = Tensor::from_f32(DType::F32, &[2, 3, 4], (0..24).map(|i| i as f32).collect()).unwrap();
    let i = Tensor::from_i64(DType::I64, &[2, 2, 1], vec![2, -3, 0, 1]).unwrap();
    let (got, want) = run_both(src, vec![x.clone(), i]);
    assert_eq!(got[0].to_f64_vec(), want[0].to_f64_vec());
    let g = parse(src).unwrap();
    let p = compile(&g, &CpuOptions { threads: 1, ..Default::default() }).unwrap();
    let bad = Tensor::from_i64(DType::I64, &[2, 2, 1], vec![0, 3, 0, 0]).unwrap();
    let e = p.run(&[x, bad]).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}

/// A product whose epilogue selects with a broadcast bool mask (what the default pipeline makes
/// of a causal attention written out): the mask is applied per element, not one byte per four
/// lanes (this returned wrong values before).
#[test]
fn product_epilogue_with_a_bool_mask_matches_the_interpreter() {
    let src = "graph @g {
  v0: f32[2, 3, 4, 8] = input \"a\"
  v1: f32[2, 3, 8, 6] = input \"b\"
  v2: bool[4, 6] = input \"m\"
  v3: f32[] = const [-1000.0]
  v4: f32[2, 3, 4, 6] = kernel v0, v1, v2, v3 {name = \"matmul_where\"} region {
    v0: f32[2, 3, 4, 8] = input \"p0\"
    v1: f32[2, 3, 8, 6] = input \"p1\"
    v2: bool[4, 6] = input \"p2\"
    v3: f32[] = input \"p3\"
    v4: f32[2, 3, 4, 6] = matmul v0, v1
    v5: f32[2, 3, 4, 6] = where v2, v4, v3
    output \"r\" = v5
  }
  output \"y\" = v4
}
";
    let t = |n: usize, s: f32| (0..n).map(|i| (i as f32 * s).sin()).collect::<Vec<f32>>();
    let a = Tensor::from_f32(DType::F32, &[2, 3, 4, 8], t(192, 0.37)).unwrap();
    let b = Tensor::from_f32(DType::F32, &[2, 3, 8, 6], t(288, 0.23)).unwrap();
    let m = Tensor::from_bool(&[4, 6], (0..24).map(|i| i % 6 <= i / 6).collect()).unwrap();
    both_ways(src, vec![a, b, m], 1e-5);
}

/// exp on non-positive inputs (the softmax form) against libm, relative, down to where it stops
/// following exp (below -87.3 it returns about 1.2e-38, not a denormal).
#[test]
fn softmax_attention_exp_matches_libm_on_non_positive_inputs() {
    // Attention over one key per row: the probability is exactly 1; over two keys with a score
    // gap d, p = 1 / (1 + exp(-d)) exercises exp on [-80, 0].
    let n = 81;
    let src = format!(
        "graph @g {{
  v0: f32[1, 1, {n}, 1] = input \"q\"
  v1: f32[1, 1, 2, 1] = input \"k\"
  v2: f32[1, 1, 2, 1] = input \"v\"
  v3: f32[1, 1, {n}, 1] = attention v0, v1, v2 {{scale = 1.0, causal = false}}
  output \"y\" = v3
}}
"
    );
    let q = Tensor::from_f32(DType::F32, &[1, 1, n, 1], (0..n).map(|i| i as f32).collect()).unwrap();
    let k = Tensor::from_f32(DType::F32, &[1, 1, 2, 1], vec![0.0, 1.0]).unwrap();
    let v = Tensor::from_f32(DType::F32, &[1, 1, 2, 1], vec![1.0, 0.0]).unwrap();
    let (got, want) = run_both(&src, vec![q, k, v]);
    for (a, b) in got[0].to_f64_vec().iter().zip(want[0].to_f64_vec()) {
        assert!((a - b).abs() <= 2e-7 * b.abs().max(1e-30) + 1e-37, "{a} vs {b}");
    }
}

/// A 4-bit block-quantized product followed by a bias add and GELU runs as one kernel on the
/// CPU target (the `fuse` pass leaves products of quantized weights alone), equal to the
/// interpreter.
#[test]
fn quantized_product_chains_become_one_kernel() {
    let (k, n) = (8, 8);
    let w: Vec<String> = (0..k * n).map(|i| (i * 7 % 16).to_string()).collect();
    let scale: Vec<String> = (0..2 * n).map(|i| format!("{:?}", 0.05 + i as f32 * 0.01)).collect();
    let zero: Vec<String> = (0..2 * n).map(|i| (i % 16).to_string()).collect();
    let src = format!(
        "graph @g {{
  v0: f32[3, {k}] = input \"x\"
  v1: f32[2, {n}] = const [{}]
  v2: u4[2, {n}] = const [{}]
  v3: u4[{k}, {n}] quant(block(axis=0, size=4), scale=v1, zero=v2) = const [{}]
  v4: f32[{n}] = const [{}]
  v5: f32[3, {n}] = qmatmul v0, v3
  v6: f32[3, {n}] = add v5, v4
  v7: f32[3, {n}] = gelu v6
  output \"y\" = v7
}}
",
        scale.join(", "),
        zero.join(", "),
        w.join(", "),
        (0..n).map(|i| format!("{:?}", i as f32 * 0.1 - 0.3)).collect::<Vec<_>>().join(", ")
    );
    let x = Tensor::from_f32(DType::F32, &[3, k], (0..3 * k).map(|i| (i as f32 * 0.41).sin()).collect()).unwrap();
    both_ways(&src, vec![x], 1e-5);
    let names = kernel_names(&src, tessera_target_cpu::Ukernels::Auto);
    assert!(names.iter().any(|name| name.contains("qmatmul_add_gelu")), "{names:?}");
}

/// 4- and 8-bit weights unpacked at run time: i4, u4, i8, u8 and ternary, per tensor, per
/// column and in blocks (with a last partial block), with and without zero points and offsets
/// (GGUF's K-quants), panel counts odd and even, a last panel of fewer than 8 columns, row
/// counts off the tile, one row, and an epilogue; both ways and on 1 and 2 threads (threads
/// split the columns).
#[test]
fn narrow_weight_products_match_the_interpreter_both_ways() {
    let cases = [
        ("u4", "block(axis=0, size=4)", 13usize, 10usize, 27usize, true, false),
        ("i4", "block(axis=0, size=32)", 7, 70, 16, true, false),
        ("i4", "axis(1)", 1, 9, 40, false, false),
        ("u4", "tensor", 20, 24, 8, true, false),
        ("i4", "block(axis=0, size=8)", 6, 16, 5, false, false),
        // Blocked along K: 384 in two blocks of 192, 320 per column in two of 160, 300 in
        // blocks of 32 that do not divide it (one K block, a partial last parameter block).
        ("u4", "block(axis=0, size=32)", 9, 384, 24, true, false),
        ("i4", "axis(1)", 8, 320, 17, true, false),
        ("u4", "block(axis=0, size=32)", 7, 300, 16, false, false),
        // Q4_K: u4 with offsets; Q8_0 / Q5_0 / Q6_K: i8 in blocks of 32 or 16; u8 with zero
        // points; TQ1_0 / TQ2_0: ternary in blocks of 256.
        ("u4", "block(axis=0, size=32)", 1, 320, 24, false, true),
        ("u4", "block(axis=0, size=32)", 5, 64, 13, true, true),
        ("i8", "block(axis=0, size=32)", 1, 640, 40, false, false),
        ("i8", "block(axis=0, size=16)", 7, 96, 17, false, true),
        ("u8", "block(axis=0, size=32)", 3, 64, 9, true, false),
        ("i8", "axis(1)", 2, 50, 8, true, false),
        ("ternary", "block(axis=0, size=256)", 1, 512, 16, false, false),
        ("ternary", "block(axis=0, size=256)", 6, 256, 11, false, true),
    ];
    // Parameters that are all exactly f16 (GGUF's Q8_0 and Q5_0 scales): stored as f16 when the
    // std::arch routines read them, one row (the one-row routine) and several (unpacking).
    let half_cases = [
        ("i8", "block(axis=0, size=32)", 1, 640, 40, false, false),
        ("i8", "block(axis=0, size=32)", 5, 96, 24, false, false),
        ("u4", "block(axis=0, size=32)", 1, 320, 24, true, true),
        ("u4", "block(axis=0, size=32)", 4, 64, 13, true, true),
        ("u8", "axis(1)", 1, 50, 9, true, false),
    ];
    let all = cases.iter().map(|c| (*c, false)).chain(half_cases.iter().map(|c| (*c, true)));
    for ((dt, gran, m, k, n, zero, offset), half) in all {
        let groups = match gran {
            "tensor" => 1,
            "axis(1)" => n,
            _ => k.div_ceil(gran.split("size=").nth(1).unwrap().trim_end_matches(')').parse::<usize>().unwrap()) * n,
        };
        let pshape = match gran {
            "tensor" => String::new(),
            "axis(1)" => format!("{n}"),
            _ => format!("{}, {n}", groups / n),
        };
        let code = |i: usize| match dt {
            "u4" => (i * 7 % 16) as i64,
            "i4" => (i * 7 % 16) as i64 - 8,
            "u8" => (i * 37 % 256) as i64,
            "i8" => (i * 37 % 256) as i64 - 128,
            _ => (i % 3) as i64 - 1,
        };
        let w: Vec<String> = (0..k * n).map(|i| code(i).to_string()).collect();
        let scale = if half {
            const_list(groups, |i| (1 + i % 5) as f32 / 64.0)
        } else {
            const_list(groups, |i| 0.02 + (i % 5) as f32 * 0.013)
        };
        let zp: Vec<String> = (0..groups).map(|i| code(i * 3 + 1).to_string()).collect();
        let (zline, zref) = if zero {
            (format!("  v2: {dt}[{pshape}] = const [{}]\n", zp.join(", ")), ", zero=v2".to_string())
        } else {
            (String::new(), String::new())
        };
        let (oline, oref) = if offset {
            (
                format!(
                    "  v8: f32[{pshape}] = const [{}]\n",
                    if half {
                        const_list(groups, |i| (i % 7) as f32 / 16.0 - 0.125)
                    } else {
                        const_list(groups, |i| (i % 7) as f32 * 0.05 - 0.15)
                    }
                ),
                ", offset=v8".to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        let src = format!(
            "graph @g {{
  v0: f32[{m}, {k}] = input \"x\"
  v1: f32[{pshape}] = const [{scale}]
{zline}{oline}  v3: {dt}[{k}, {n}] quant({gran}, scale=v1{zref}{oref}) = const [{}]
  v4: f32[{n}] = const [{}]
  v5: f32[{m}, {n}] = qmatmul v0, v3
  v6: f32[{m}, {n}] = add v5, v4
  output \"y\" = v6
}}
",
            w.join(", "),
            const_list(n, |i| i as f32 * 0.1 - 0.3)
        );
        let x = Tensor::from_f32(DType::F32, &[m, k], (0..m * k).map(|i| (i as f32 * 0.41).sin()).collect()).unwrap();
        // 8-bit codes make sums up to a few hundred: f32 rounding of the reordered sum is
        // ~1e-5 of that.
        let bits = if dt.ends_with('4') { "_q4" } else { "_q8" };
        both_ways(&src, vec![x], if bits == "_q4" { 1e-5 } else { 1e-4 });
        let names = kernel_names(&src, tessera_target_cpu::Ukernels::Off);
        assert!(names.iter().any(|name| name.ends_with(bits)), "{dt} {gran}: {names:?}");
        // f16 parameters exactly when every parameter is an f16 and the routines are there.
        if tessera_target_cpu::ukernel::q_gemv(tessera_target_cpu::Ukernels::Auto).is_some() {
            let names = kernel_names(&src, tessera_target_cpu::Ukernels::Auto);
            let f16 = names.iter().any(|name| name.ends_with("_f16"));
            assert_eq!(f16, half, "{dt} {gran}: {names:?}");
        }
    }
}

/// Kernels that differ only in the host function they call (log and sin at the same shape)
/// are not shared: the kernel deduplication compares the called functions too.
#[test]
fn kernels_calling_different_host_functions_stay_apart() {
    let src = "graph @g {\n  v0: f32[9] = input \"x\"\n  v1: f32[9] = log v0\n  v2: f32[9] = sin v0\n  v3: f32[9] = cos v0\n  output \"a\" = v1\n  output \"b\" = v2\n  output \"c\" = v3\n}\n";
    let x = Tensor::from_f32(DType::F32, &[9], (1..10).map(|i| i as f32 * 0.7).collect()).unwrap();
    let (got, want) = run_both(src, vec![x]);
    for (g, w) in got.iter().zip(&want) {
        assert!(max_abs(g, w) < 1e-6, "{g} vs {w}");
    }
}

/// A tied embedding: the token's column gathered from the codes and the scales of the weight
/// a product multiplies by (the codes constant shares the weight's bytes, as the GGUF builder
/// makes it). The gathers read the product's packed copy (`gather_packed_*`, with f16
/// parameters and with f32 ones), give the interpreter's values, and still refuse a token out
/// of range.
#[test]
fn gathers_from_a_packed_weight_match_the_interpreter() {
    use tessera_ir::{ConstData, Graph, Op, Quant, QuantGranularity, Shape, TensorType};
    use tessera_target_cpu::Ukernels;
    let (k, n, bs) = (64usize, 37usize, 32usize);
    let nb = k / bs;
    for half in [true, false] {
        let mut g = Graph::new("tied");
        let x = g.add_input("x", TensorType::with_static(DType::F32, &[1, k]));
        let tokens = g.add_input("tokens", TensorType::with_static(DType::I64, &[3]));
        let scales: Vec<f32> = (0..nb * n)
            .map(|i| if half { (1 + i % 7) as f32 / 128.0 } else { 0.011 + (i % 7) as f32 * 0.003 })
            .collect();
        let sbytes = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        let scale = g.add_const(TensorType::with_static(DType::F32, &[nb, n]), ConstData::from_vec(sbytes));
        let codes: Vec<u8> = (0..k * n).map(|i| ((i * 37 % 255) as i64 - 127) as i8 as u8).collect();
        let data = ConstData::from_vec(codes);
        let quant = Quant {
            granularity: QuantGranularity::PerBlock { axis: 0, size: bs as u64 },
            scale,
            zero_point: None,
            offset: None,
        };
        let wty = TensorType { dtype: DType::I8, shape: Shape::from_static(&[k, n]), quant: Some(Box::new(quant)) };
        let w = g.add_const(wty, data.clone());
        let plain = g.add_const(TensorType::with_static(DType::I8, &[k, n]), data);
        let logits = g.add_op(Op::QMatMul, vec![x, w]).unwrap()[0];
        let c = g.add_op(Op::Gather { axis: 1 }, vec![plain, tokens]).unwrap()[0];
        let c = g.add_op(Op::Cast { to: DType::F32 }, vec![c]).unwrap()[0];
        let s = g.add_op(Op::Gather { axis: 1 }, vec![scale, tokens]).unwrap()[0];
        g.add_output("logits", logits);
        g.add_output("codes", c);
        g.add_output("scales", s);
        verify(&g).unwrap_or_else(|e| panic!("{e}"));
        let xs = Tensor::from_f32(DType::F32, &[1, k], (0..k).map(|i| (i as f32 * 0.3).cos()).collect()).unwrap();
        let toks = Tensor::from_i64(DType::I64, &[3], vec![0, 36, -2]).unwrap();
        let want = tessera_ir::run(&g, vec![xs.clone(), toks.clone()]).unwrap();
        for ukernels in [Ukernels::Auto, Ukernels::Avx2, Ukernels::Off] {
            let names: Vec<String> =
                tessera_target_cpu::listing(&g, &[], ukernels).unwrap().into_iter().map(|(name, _, _)| name).collect();
            for kind in ["gather_packed_codes", "gather_packed_params"] {
                assert!(names.iter().any(|name| name.ends_with(kind)), "{ukernels:?}: {names:?}");
            }
            let p =
                compile(&g, &CpuOptions { threads: 2, ukernels, min_split_bytes: 0, ..Default::default() }).unwrap();
            let got = p.run(&[xs.clone(), toks.clone()]).unwrap();
            assert!(max_abs(&got[0], &want[0]) <= 1e-4, "{ukernels:?} half {half}: logits");
            // The gathered codes and scales are exact.
            assert_eq!(got[1].to_f64_vec(), want[1].to_f64_vec(), "{ukernels:?} half {half}: codes");
            assert_eq!(got[2].to_f64_vec(), want[2].to_f64_vec(), "{ukernels:?} half {half}: scales");
            let bad = Tensor::from_i64(DType::I64, &[3], vec![0, 37, 1]).unwrap();
            let e = p.run(&[xs.clone(), bad]).unwrap_err();
            assert!(e.to_string().contains("out of range"), "{e}");
        }
    }
}
