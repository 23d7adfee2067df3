//! The ONNX frontend against real references: onnx 1.22.0's backend node tests, and the real
//! models of ../shared/MODELS.md against onnxruntime's outputs. Both need the data that
//! `scripts/fetch_models.sh` puts in `.cache/` (the README's test command runs it first).

use std::path::{Path, PathBuf};
use tessera_compiler::conformance::{cases, run_case, run_case_by, run_case_on, run_case_with, Backend, Outcome};
use tessera_compiler::onnx::{import_file, read_tensor_pb};
use tessera_ir::compare::compare;

fn cache() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache");
    if dir.join("models/MANIFEST.txt").exists() && dir.join("onnx-node-tests").exists() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok() {
        panic!("{} lacks the models and node tests: CI must run scripts/fetch_models.sh first", dir.display());
    }
    eprintln!("\n*** SKIPPED: no .cache/models or .cache/onnx-node-tests; run scripts/fetch_models.sh ***\n");
    None
}

/// Transformer-set node tests that are expected to be unsupported, with the reason.
fn exceptions() -> Vec<(String, String)> {
    include_str!("conformance/transformer_exceptions.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, why) = l.split_once(' ').unwrap_or((l, ""));
            (name.to_string(), why.trim().to_string())
        })
        .collect()
}

#[test]
fn conformance_node_tests_on_the_interpreter() {
    let Some(cache) = cache() else { return };
    let dirs = cases(&cache.join("onnx-node-tests"), None).unwrap();
    assert!(dirs.len() > 1700, "only {} node tests found", dirs.len());
    let exceptions = exceptions();
    let (mut passed, mut failed, mut unsupported) = (0, Vec::new(), 0);
    let mut transformer_problems = Vec::new();
    for d in &dirs {
        let r = run_case(d);
        let listed = exceptions.iter().any(|(n, _)| *n == r.name);
        match &r.outcome {
            Outcome::Passed => {
                passed += 1;
                if listed {
                    transformer_problems
                        .push(format!("{} passes now: remove it from transformer_exceptions.txt", r.name));
                }
            }
            Outcome::Failed(why) => failed.push(format!("{}: {why}", r.name)),
            Outcome::Unsupported(why) => {
                unsupported += 1;
                if r.is_transformer() && !listed {
                    transformer_problems.push(format!("{} is unsupported ({why}) but not a listed exception", r.name));
                }
            }
        }
    }
    println!("node tests: {passed} passed, {} failed, {unsupported} unsupported", failed.len());
    assert!(failed.is_empty(), "{} node tests failed:\n{}", failed.len(), failed.join("\n"));
    assert!(transformer_problems.is_empty(), "{}", transformer_problems.join("\n"));
}

/// Every pass preserves semantics: the node tests that pass as imported also pass after the
/// default pipeline.
#[test]
fn conformance_node_tests_after_the_default_pipeline() {
    let Some(cache) = cache() else { return };
    let mut problems = Vec::new();
    let mut passed = 0;
    for d in cases(&cache.join("onnx-node-tests"), None).unwrap() {
        if run_case(&d).outcome != Outcome::Passed {
            continue;
        }
        match run_case_with(&d, Some(tessera_compiler::passes::DEFAULT_PIPELINE)).outcome {
            Outcome::Passed => passed += 1,
            other => problems.push(format!("{}: {other:?}", d.display())),
        }
    }
    println!("{passed} node tests pass after the default pipeline");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn minilm_fp32_after_the_default_pipeline_matches_onnxruntime() {
    check_model_with("minilm-l3-fp32", 1e-4, 0.99999, Some(tessera_compiler::passes::DEFAULT_PIPELINE));
}

/// Runs every data set of a model and checks each output: max abs error and cosine.
fn check_model(name: &str, max_abs: f64, min_cosine: f64) {
    check_model_with(name, max_abs, min_cosine, None)
}

fn check_model_with(name: &str, max_abs: f64, min_cosine: f64, pipeline: Option<&str>) {
    check_model_with_options(name, max_abs, min_cosine, pipeline, &tessera_compiler::onnx::ImportOptions::default())
}

fn check_model_with_options(
    name: &str,
    max_abs: f64,
    min_cosine: f64,
    pipeline: Option<&str>,
    options: &tessera_compiler::onnx::ImportOptions,
) {
    let Some(cache) = cache() else { return };
    let model = cache.join(format!("models/{name}.onnx"));
    let mut g = tessera_compiler::onnx::import_file_with(&model, options).unwrap_or_else(|e| panic!("{e}"));
    if let Some(p) = pipeline {
        tessera_compiler::passes::Pipeline::parse(p).unwrap().run(&mut g, &mut |_| {}).unwrap();
    }
    let mut sets: Vec<PathBuf> =
        std::fs::read_dir(cache.join(format!("models/{name}"))).unwrap().flatten().map(|e| e.path()).collect();
    sets.sort();
    assert!(!sets.is_empty(), "no data sets for {name}");
    for set in sets {
        let inputs =
            (0..g.inputs().len()).map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).unwrap().tensor).collect();
        let outputs = tessera_ir::run(&g, inputs).unwrap_or_else(|e| panic!("{name} {}: {e}", set.display()));
        for (j, actual) in outputs.iter().enumerate() {
            let expected = read_tensor_pb(&set.join(format!("output_{j}.pb"))).unwrap().tensor;
            let c = compare(actual, &expected, 0.0, max_abs).unwrap_or_else(|e| panic!("{name} output {j}: {e}"));
            println!(
                "{name} {} output {j}: max abs error {:.2e}, cosine {:.8}",
                set.file_name().unwrap().to_string_lossy(),
                c.max_abs_error,
                c.cosine
            );
            assert!(c.passed() && c.cosine >= min_cosine, "{name} {} output {j}: {c}", set.display());
        }
    }
}

#[test]
fn minilm_fp32_matches_onnxruntime() {
    check_model("minilm-l3-fp32", 1e-4, 0.99999);
}

/// Importing keeps the weights in the memory-mapped file: no initializer is copied.
#[test]
fn minilm_weights_stay_memory_mapped() {
    let Some(cache) = cache() else { return };
    let g = import_file(&cache.join("models/minilm-l3-fp32.onnx")).unwrap();
    let (mut mapped, mut copied) = (0u64, 0u64);
    for c in g.constants() {
        match &c.data {
            tessera_ir::ConstData::Bytes(b) if b.is_mapped() => mapped += b.len() as u64,
            other => copied += other.byte_len(),
        }
    }
    println!("mapped {mapped} bytes, copied {copied} bytes");
    assert!(mapped > 60_000_000, "only {mapped} bytes of weights are mapped");
    assert!(copied < 100_000, "{copied} bytes of constants were copied (only small folded constants may be)");
}

#[test]
fn minilm_static64_matches_onnxruntime() {
    check_model("minilm-l3-static64", 1e-4, 0.99999);
}

#[test]
fn minilm_pruned_matches_onnxruntime() {
    check_model("minilm-l3-pruned", 1e-4, 0.99999);
}

/// Not within 1e-4 of onnxruntime, for a reason on onnxruntime's side: its x86 u8 x s8
/// MatMulInteger kernel sums pairs of products in saturating int16 (vpmaddubsw), so its outputs
/// are not the exact integer products the ONNX spec defines. Imported exactly (the default), the
/// int8 model is within 0.17 (cosine 0.997); imported with `onnxruntime_x86_matmul_integer`
/// (`matmul_integer {pair_saturate}`), data sets 0 and 2 match to 2.2e-6 and sets 1 and 3 (128 and
/// 51 rows) to 2.4e-2 and 8.9e-2 (cosine 0.9998). There every integer tensor matches onnxruntime
/// bit for bit until one quantized activation lands one step apart after the float attention path
/// (fp32 summation order, about 1e-5), which then cascades (`scripts/expose_intermediates.py`).
/// The bounds here are the measured ones, so a regression still fails.
///
/// That holds where onnxruntime (which made the reference outputs on this machine) takes its
/// AVX2 kernel. On a host with VNNI (AVX-VNNI or AVX512-VNNI) it takes `vpdpbusd`, which sums
/// the exact products: there the exact import is the one that matches (measured on an
/// AVX512-VNNI Xeon: 4.7e-3 on set 1, from the same one-step activation flips, cosine
/// 0.9999998), and the saturating one differs by up to 0.13.
#[test]
fn minilm_int8_dynamic_is_close_to_onnxruntime() {
    #[cfg(target_arch = "x86_64")]
    let ort_exact = std::arch::is_x86_feature_detected!("avxvnni") || std::arch::is_x86_feature_detected!("avx512vnni");
    #[cfg(not(target_arch = "x86_64"))]
    let ort_exact = true;
    if ort_exact {
        println!("this host has VNNI: onnxruntime's MatMulInteger sums exact products here");
        check_model("minilm-l3-int8-dynamic", 1e-2, 0.99999);
    } else {
        check_model("minilm-l3-int8-dynamic", 0.25, 0.995);
        let ort = tessera_compiler::onnx::ImportOptions { onnxruntime_x86_matmul_integer: true };
        check_model_with_options("minilm-l3-int8-dynamic", 0.1, 0.9998, None, &ort);
    }
}

/// One data set differs from onnxruntime by up to 1.8e-3 on 700 of 49,152 token-state elements:
/// a last-bit float difference flips a dynamically quantized activation by one step (the onnx
/// reference evaluator differs from onnxruntime by the same amount there).
#[test]
fn minilm_uint8_dynamic_perchannel_is_close_to_onnxruntime() {
    check_model("minilm-l3-uint8-dynamic-perchannel", 5e-3, 0.9999);
}

#[test]
fn minilm_matmulnbits_q4_matches_onnxruntime() {
    check_model("minilm-l3-matmulnbits-q4-b32", 1e-4, 0.99999);
}

#[test]
fn minilm_qdq_int4_matches_onnxruntime() {
    check_model("minilm-l3-qdq-int4-b32", 1e-4, 0.99999);
}

/// Counts op names in a graph and inside its kernel regions.
fn op_counts(g: &tessera_ir::Graph, counts: &mut std::collections::BTreeMap<String, usize>) {
    for (_, n) in g.nodes() {
        *counts.entry(n.op.name().to_string()).or_default() += 1;
        if let Some(body) = &n.body {
            op_counts(body, counts);
        }
    }
}

/// The optimizer finds every fused pattern in every MiniLM variant: 3 attention blocks, 3 GELUs,
/// 7 LayerNorms, and no leftover erf / softmax / tanh / pow chains.
#[test]
fn the_default_pipeline_fuses_every_pattern_of_minilm() {
    let Some(cache) = cache() else { return };
    for name in MINILM_VARIANTS {
        let mut g = import_file(&cache.join(format!("models/{name}.onnx"))).unwrap();
        tessera_compiler::passes::Pipeline::default_pipeline().run(&mut g, &mut |_| {}).unwrap();
        let mut counts = std::collections::BTreeMap::new();
        op_counts(&g, &mut counts);
        let n = |op: &str| counts.get(op).copied().unwrap_or(0);
        println!("{name}: {counts:?}");
        assert_eq!(n("attention"), 3, "{name}: {counts:?}");
        assert_eq!(n("gelu") + n("gelu_tanh"), 3, "{name}: {counts:?}");
        assert_eq!(n("layer_norm"), 7, "{name}: {counts:?}");
        for leftover in ["erf", "softmax", "tanh", "pow"] {
            assert_eq!(n(leftover), 0, "{name}: unfused {leftover} left: {counts:?}");
        }
    }
}

/// Every MiniLM-L3 form `scripts/fetch_models.sh` makes.
const MINILM_VARIANTS: [&str; 7] = [
    "minilm-l3-fp32",
    "minilm-l3-static64",
    "minilm-l3-pruned",
    "minilm-l3-int8-dynamic",
    "minilm-l3-uint8-dynamic-perchannel",
    "minilm-l3-matmulnbits-q4-b32",
    "minilm-l3-qdq-int4-b32",
];

/// Runs every node test that passes on the interpreter (after `pipeline`) on the CPU target
/// (after the same pipeline): (passed, unsupported, every other outcome), or None without the
/// test data.
fn cpu_against_interpreter(pipeline: Option<&str>) -> Option<(usize, usize, Vec<String>)> {
    let cache = cache()?;
    let (mut passed, mut unsupported) = (0, 0);
    let mut problems = Vec::new();
    for d in cases(&cache.join("onnx-node-tests"), None).unwrap() {
        if run_case_on(&d, pipeline, Backend::Interp).outcome != Outcome::Passed {
            continue;
        }
        match run_case_on(&d, pipeline, Backend::Cpu).outcome {
            Outcome::Passed => passed += 1,
            Outcome::Unsupported(_) => unsupported += 1,
            other => problems.push(format!("{}: {other:?}", d.display())),
        }
    }
    Some((passed, unsupported, problems))
}

/// The CPU target against the interpreter on the node tests: every test that passes on the
/// interpreter passes on the CPU target, never wrong and never unsupported.
#[test]
fn conformance_node_tests_on_the_cpu_target() {
    let Some((passed, unsupported, problems)) = cpu_against_interpreter(None) else { return };
    println!("CPU target: {passed} node tests pass, {unsupported} unsupported, {} fail", problems.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every test the interpreter passes (806 with onnx 1.22.0's node tests) passes on the CPU
    // target too.
    assert_eq!(
        unsupported, 0,
        "{unsupported} node tests pass on the interpreter but are unsupported on the CPU target"
    );
    assert!(passed >= 800, "only {passed} node tests pass on the CPU target");
}

/// The same after the default pipeline (fused regions, attention and normalization kernels):
/// never a wrong result. Some regions the passes form are still unsupported by the CPU target
/// (measured 795 passing of the interpreter's 806).
#[test]
fn conformance_node_tests_on_the_cpu_target_after_the_default_pipeline() {
    let pipeline = Some(tessera_compiler::passes::DEFAULT_PIPELINE);
    let Some((passed, unsupported, problems)) = cpu_against_interpreter(pipeline) else { return };
    println!(
        "CPU target after the default pipeline: {passed} pass, {unsupported} unsupported, {} fail",
        problems.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(passed >= 795, "only {passed} node tests pass on the CPU target after the default pipeline");
}

/// Every real model compiles for the CPU target and gives the interpreter's outputs on every
/// data set, after the default pipeline: integers exactly, floats within 1e-4. The two
/// dynamic-quantization variants round their activations to 8 bits inside the model, so a
/// last-bit f32 difference (the CPU kernels sum in another order) can move one activation by a
/// whole quantization step, and the step then propagates (the same cascade measured against
/// onnxruntime in the ONNX issue). For them data set 0 (12 tokens, no flip) is held to 1e-4
/// like the rest, and the longer sets to cosine 0.999 and 0.1 (measured: up to 6.8e-2, cosine
/// 0.99967, on the uint8 per-channel model's set 2).
#[test]
fn every_minilm_variant_runs_on_the_cpu_target_like_the_interpreter() {
    variants_like_the_interpreter("CPU", tessera_compiler::passes::DEFAULT_PIPELINE, &mut |name, g| {
        let program = tessera_target_cpu::compile(
            g,
            &tessera_target_cpu::CpuOptions { threads: 2, min_split_bytes: 0, ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        Box::new(move |inputs| program.run(inputs).map_err(|e| e.to_string()))
    });
}

/// A compiled model: inputs to outputs, or why not.
type Runner = Box<dyn FnMut(&[tessera_ir::Tensor]) -> Result<Vec<tessera_ir::Tensor>, String>>;

/// Every MiniLM variant after `pipeline`, compiled by `compile`, against the interpreter on
/// every data set: integers exactly, floats within 1e-4, the dynamic-quantization variants'
/// longer sets to max abs 0.1 and cosine 0.999 (see the CPU test).
fn variants_like_the_interpreter(
    target: &str,
    pipeline: &str,
    compile: &mut dyn FnMut(&str, &tessera_ir::Graph) -> Runner,
) {
    let Some(cache) = cache() else { return };
    for name in MINILM_VARIANTS {
        let dynamic = name.contains("dynamic");
        let model = cache.join(format!("models/{name}.onnx"));
        let mut g = tessera_compiler::onnx::import_file(&model).unwrap_or_else(|e| panic!("{e}"));
        tessera_compiler::passes::Pipeline::parse(pipeline).unwrap().run(&mut g, &mut |_| {}).unwrap();
        let mut run = compile(name, &g);
        let mut sets: Vec<PathBuf> =
            std::fs::read_dir(cache.join(format!("models/{name}"))).unwrap().flatten().map(|e| e.path()).collect();
        sets.sort();
        for set in sets {
            let first = set.ends_with("test_data_set_0");
            let (max_abs, min_cosine) = if dynamic && !first { (0.1, 0.999) } else { (1e-4, 0.999999) };
            let inputs: Vec<tessera_ir::Tensor> = (0..g.inputs().len())
                .map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).unwrap().tensor)
                .collect();
            let want = tessera_ir::run(&g, inputs.clone()).unwrap();
            let got = run(&inputs).unwrap_or_else(|e| panic!("{name} {}: {e}", set.display()));
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                let c = compare(a, b, 0.0, max_abs).unwrap_or_else(|e| panic!("{name} output {j}: {e}"));
                println!(
                    "{name} {} output {j}: {target} vs interpreter max abs {:.2e}, cosine {:.8}",
                    set.display(),
                    c.max_abs_error,
                    c.cosine
                );
                assert!(c.passed() && c.cosine >= min_cosine, "{name} {} output {j}: {c}", set.display());
            }
        }
    }
}

/// A Vulkan device, or None (loudly) where the machine has none; CI installs lavapipe.
fn vulkan() -> Option<tessera_runtime::vulkan::Vulkan> {
    match tessera_runtime::vulkan::Vulkan::new() {
        Ok(v) => Some(v),
        Err(tessera_runtime::vulkan::GpuRunError::NoVulkan(why)) => {
            eprintln!("\n*** SKIPPED: no Vulkan device ({why}); install libvulkan1 mesa-vulkan-drivers ***\n");
            None
        }
        Err(e) => panic!("Vulkan failed to start: {e}"),
    }
}

/// The GPU target on the node tests: every test that passes on the interpreter either runs
/// wholly on the GPU and passes (floats within 1e-4), or has a node the GPU target declines
/// and passes with those nodes on the host; never a wrong result. Measured on lavapipe: 551 of the interpreter's 806.
#[test]
fn conformance_node_tests_on_the_gpu_target() {
    let Some(cache) = cache() else { return };
    let Some(vk) = vulkan() else { return };
    let runner = |g: &tessera_ir::Graph, inputs: &[tessera_ir::Tensor]| {
        vk.run_case(g, inputs, tessera_runtime::vulkan::Fallback::Fail)
    };
    // A test with a declined node runs again with those nodes on the host, as `tessera run
    // --target gpu` runs them: it must pass too.
    let with_host = |g: &tessera_ir::Graph, inputs: &[tessera_ir::Tensor]| {
        vk.run_case(g, inputs, tessera_runtime::vulkan::Fallback::Host)
    };
    let (mut passed, mut unsupported) = (0, 0);
    let mut problems = Vec::new();
    for d in cases(&cache.join("onnx-node-tests"), None).unwrap() {
        if run_case(&d).outcome != Outcome::Passed {
            continue;
        }
        match run_case_by(&d, None, 1e-4, &runner).outcome {
            Outcome::Passed => passed += 1,
            Outcome::Unsupported(_) => {
                unsupported += 1;
                match run_case_by(&d, None, 1e-4, &with_host).outcome {
                    Outcome::Passed => {}
                    other => problems.push(format!("{} (with the host): {other:?}", d.display())),
                }
            }
            other => problems.push(format!("{}: {other:?}", d.display())),
        }
    }
    println!(
        "GPU target ({}): {passed} node tests pass wholly on the GPU, {unsupported} with declined nodes (which pass with those on the host), {} fail",
        vk.name,
        problems.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(passed >= 551, "only {passed} node tests pass on the GPU target");
}

/// Every real model runs on the GPU target (nodes it declines on the host) and gives the
/// interpreter's outputs on every data set, after the GPU pipeline: integers exactly, floats
/// within 1e-4 (the dynamic-quantization variants as in the CPU test above, for the same
/// reason). Every node of every variant runs on the GPU, none on the host.
#[test]
fn every_minilm_variant_runs_on_the_gpu_target_like_the_interpreter() {
    let Some(vk) = vulkan() else { return };
    let vk = std::sync::Arc::new(vk);
    variants_like_the_interpreter("GPU", tessera_runtime::GPU_PIPELINE, &mut |name, g| {
        let gpu = tessera_runtime::vulkan::GpuModel::new(vk.clone(), g.clone());
        let name = name.to_string();
        Box::new(move |inputs| {
            let (got, report) = gpu.run(inputs, tessera_runtime::vulkan::Fallback::Host).map_err(|e| e.to_string())?;
            assert!(report.host.is_empty(), "{name}: {:?} ran on the host", report.host);
            Ok(got)
        })
    });
}

/// The NPU target on the node tests: every test that passes on the interpreter passes with
/// the NPU (integer products on the simulator, the rest on the host), with integer outputs
/// identical to the interpreter's; the integer products (MatMulInteger, QLinearMatMul in all
/// 2-D and 3-D, int8 and uint8 variants) run on the NPU.
#[test]
fn conformance_node_tests_on_the_npu_target() {
    let Some(cache) = cache() else { return };
    let dev = tessera_target_npu::Device::default_profile();
    let on_npu = std::cell::RefCell::new(Vec::<String>::new());
    let (mut passed, mut problems) = (0, Vec::new());
    for d in cases(&cache.join("onnx-node-tests"), None).unwrap() {
        if run_case(&d).outcome != Outcome::Passed {
            continue;
        }
        let name = d.file_name().unwrap().to_string_lossy().to_string();
        let runner = |g: &tessera_ir::Graph, inputs: &[tessera_ir::Tensor]| {
            let model = tessera_target_npu::NpuModel::new(g.clone(), dev.clone());
            let (got, report) =
                model.run(inputs).map_err(|e| tessera_compiler::conformance::RunnerError::Failed(e.to_string()))?;
            let want = tessera_ir::run(g, inputs.to_vec())
                .map_err(|e| tessera_compiler::conformance::RunnerError::Failed(e.to_string()))?;
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                if a.dtype() != b.dtype() || a.shape() != b.shape() || a.to_bytes() != b.to_bytes() {
                    return Err(tessera_compiler::conformance::RunnerError::Failed(format!(
                        "output {j} differs from the interpreter's bits"
                    )));
                }
            }
            if !report.kernels.is_empty() {
                on_npu.borrow_mut().push(name.clone());
            }
            Ok(got)
        };
        match run_case_by(&d, None, 1e-7, &runner).outcome {
            Outcome::Passed => passed += 1,
            other => problems.push(format!("{name}: {other:?}")),
        }
    }
    let on_npu = on_npu.into_inner();
    println!("NPU target: {passed} node tests pass, {} with kernels on the NPU: {on_npu:?}", on_npu.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for t in [
        "test_matmulinteger",
        "test_qlinearmatmul_2D_int8_float32",
        "test_qlinearmatmul_2D_uint8_float32",
        "test_qlinearmatmul_3D_int8_float32",
        "test_qlinearmatmul_3D_uint8_float32",
        "test_qlinearmatmul_2D_int8_float16",
        "test_qlinearmatmul_3D_uint8_float16",
    ] {
        assert!(on_npu.iter().any(|n| n == t), "{t} did not run on the NPU ({on_npu:?})");
    }
}

/// The integer variants of MiniLM-L3 with the NPU: the same outputs as the interpreter, bit for
/// bit, on every data set; every product of the int8 and uint8 per-channel models (18 each) on
/// the NPU. The 4-bit variants' products have float activations (QDQ weights, MatMulNBits):
/// the NPU declines them and says so.
#[test]
fn minilm_integer_variants_run_with_the_npu_like_the_interpreter() {
    let Some(cache) = cache() else { return };
    let dev = tessera_target_npu::Device::default_profile();
    for (name, products) in [
        ("minilm-l3-int8-dynamic", 18),
        ("minilm-l3-uint8-dynamic-perchannel", 18),
        ("minilm-l3-qdq-int4-b32", 0),
        ("minilm-l3-matmulnbits-q4-b32", 0),
    ] {
        let mut g = import_file(&cache.join(format!("models/{name}.onnx"))).unwrap();
        tessera_compiler::passes::Pipeline::parse(tessera_runtime::NPU_PIPELINE)
            .unwrap()
            .run(&mut g, &mut |_| {})
            .unwrap();
        let model = tessera_target_npu::NpuModel::new(g.clone(), dev.clone());
        let set = cache.join(format!("models/{name}/test_data_set_0"));
        let inputs: Vec<tessera_ir::Tensor> =
            (0..g.inputs().len()).map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).unwrap().tensor).collect();
        let want = tessera_ir::run(&g, inputs.clone()).unwrap();
        let (got, report) = model.run(&inputs).unwrap();
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bytes(), b.to_bytes(), "{name} output {j}");
        }
        let t = report.total();
        println!(
            "{name}: {} products on the NPU, {} host nodes; {} cycles, MAC utilization {:.1}%, DMA hidden {:.1}%",
            report.kernels.len(),
            report.host.len(),
            t.cycles,
            100.0 * t.mac_utilization(),
            100.0 * t.dma_hidden()
        );
        assert_eq!(report.kernels.len(), products, "{name}: {:?}", report.host_summary());
        if products == 0 {
            assert!(report.host.iter().any(|(_, why)| why.contains("float activations")), "{name}");
        }
    }
}

/// MiniLM placed across the CPU, GPU and NPU of the phone profiles: the segments run
/// concurrently here (the units overlap), and the outputs are the interpreter's (integers
/// exact, floats within the GPU's 1e-4), the same on every run.
#[test]
fn minilm_placed_across_units_runs_concurrently_like_the_interpreter() {
    let Some(cache) = cache() else { return };
    for (name, profile) in
        [("minilm-l3-int8-dynamic", "snapdragon-8-gen-3"), ("minilm-l3-qdq-int4-b32", "dimensity-9300")]
    {
        let path = cache.join(format!("models/{name}.onnx"));
        let opts = tessera_runtime::SessionOptions {
            target: tessera_runtime::Target::Hetero,
            device_profile: profile.into(),
            ..Default::default()
        };
        let session = tessera_runtime::Session::from_file(&path, &opts).unwrap();
        let m = session.hetero_model().unwrap();
        let units: std::collections::HashSet<_> = m.segments.iter().map(|s| s.unit).collect();
        assert!(units.len() >= 2 || !m.unavailable.is_empty(), "{name}: one unit only: {units:?}");
        let pl = &m.placement;
        let (best_unit, best) = pl.best_single().unwrap();
        assert!(pl.schedule.makespan <= best + 1e-6, "{name}: worse than the {best_unit} alone");
        let set = cache.join(format!("models/{name}/test_data_set_0"));
        let inputs: Vec<tessera_ir::Tensor> = (0..session.inputs().len())
            .map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).unwrap().tensor)
            .collect();
        let want = tessera_ir::run(session.graph(), inputs.clone()).unwrap();
        let (got, report) = m.run(&inputs).unwrap();
        let (again, _) = m.run(&inputs).unwrap();
        for (j, ((a, b), c)) in got.iter().zip(&want).zip(&again).enumerate() {
            assert_eq!(a.to_bytes(), c.to_bytes(), "{name} output {j} differs between runs");
            let cmp = tessera_ir::compare::compare(a, b, 0.0, 1e-4).unwrap();
            assert!(cmp.passed(), "{name} output {j}: {cmp}");
        }
        assert!(report.fallbacks.is_empty(), "{name}: {:?}", report.fallbacks);
        println!(
            "{name} on {profile}: {} segments on {units:?}, two or more units at once for {:.1} of {:.1} ms",
            report.spans.len(),
            report.overlap_us() / 1e3,
            report.total_us / 1e3
        );
        if units.len() >= 2 && m.segments.len() > 2 {
            assert!(report.overlap_us() > 0.0, "{name}: the units never overlapped: {:?}", report.spans);
        }
    }
}

/// The partitioner against the branch-and-bound optimum on real kernels: every window of 24
/// consecutive kernels of MiniLM int8 and int4, priced on the phone profiles.
#[test]
fn the_partitioner_is_within_three_percent_of_the_optimum_on_windows_of_minilm() {
    let Some(cache) = cache() else { return };
    for name in ["minilm-l3-int8-dynamic", "minilm-l3-qdq-int4-b32"] {
        let g = import_file(&cache.join(format!("models/{name}.onnx"))).unwrap();
        for profile in ["snapdragon-8-gen-3", "dimensity-9300"] {
            let p = tessera_compiler::passes::profile::DeviceProfile::builtin(profile).unwrap();
            let mut g = g.clone();
            tessera_compiler::passes::saturate::run_pipeline_for_profile(&mut g, tessera_runtime::HETERO_PIPELINE, &p)
                .unwrap();
            let b = tessera_compiler::place::Problem::default_bindings(&g, &[]);
            let problem = tessera_compiler::place::Problem::build(&g, &b, &p).unwrap();
            let (solved, tried, worst) = tessera_compiler::place::partition::check_windows(&problem, 24, 5_000_000);
            println!("{name} on {profile}: {solved} of {tried} windows solved, worst gap {:.2}%", 100.0 * worst);
            assert_eq!(solved, tried, "{name} on {profile}");
            assert!(worst <= 0.03, "{name} on {profile}: {:.2}% above the optimum", 100.0 * worst);
        }
    }
}

/// Every MiniLM form compiled ahead of time into an artifact, written, opened (checked) and
/// loaded without the compiler, computes exactly what the JIT-compiled session computes.
#[test]
fn minilm_artifacts_run_like_the_jit() {
    use tessera_runtime::{compile_artifact, CompileOptions, Session, SessionOptions};
    let Some(cache) = cache() else { return };
    let dir = tempfile::tempdir().unwrap();
    for name in ["minilm-l3-int8-dynamic", "minilm-l3-qdq-int4-b32", "minilm-l3-static64"] {
        let model = cache.join(format!("models/{name}.onnx"));
        let (bytes, report) =
            compile_artifact(&model, &CompileOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.kernels > 0 && report.code_bytes > 0, "{name}: {report:?}");
        let path = dir.path().join(format!("{name}.tsa"));
        std::fs::write(&path, &bytes).unwrap();
        let aot = Session::from_artifact(&path, 2).unwrap_or_else(|e| panic!("{name}: {e}"));
        let jit = Session::from_file(&model, &SessionOptions { threads: 2, ..Default::default() }).unwrap();
        assert_eq!(aot.inputs(), jit.inputs(), "{name}");
        let set = cache.join(format!("models/{name}/test_data_set_0"));
        let inputs: Vec<_> = (0..jit.inputs().len())
            .map(|i| read_tensor_pb(&set.join(format!("input_{i}.pb"))).unwrap().tensor)
            .collect();
        let (a, j) = (aot.run(&inputs).unwrap(), jit.run(&inputs).unwrap());
        for (k, (x, y)) in a.iter().zip(&j).enumerate() {
            assert_eq!(x.to_bytes(), y.to_bytes(), "{name} output {k}: artifact and JIT differ");
        }
        // The same artifact opened from its bytes gives the same session inputs.
        let opened = tessera_runtime::artifact::Artifact::from_blob(tessera_ir::Blob::from_vec(bytes)).unwrap();
        assert_eq!(opened.header.model.inputs.len(), jit.inputs().len());
    }
}

/// Damaged artifacts are typed errors, found before any code is mapped.
#[test]
fn damaged_artifacts_are_refused() {
    use tessera_runtime::artifact::{reseal, Artifact, ArtifactError};
    use tessera_runtime::{compile_artifact, CompileOptions};
    let Some(cache) = cache() else { return };
    let model = cache.join("models/minilm-l3-qdq-int4-b32.onnx");
    let (bytes, _) = compile_artifact(&model, &CompileOptions::default()).unwrap();
    let open =
        |b: Vec<u8>| Artifact::from_blob(tessera_ir::Blob::from_vec(b)).and_then(|a| a.cpu_program(1).map(|_| ()));
    assert!(open(bytes.clone()).is_ok());
    // Not an artifact; truncated (header, then a section).
    assert!(matches!(open(b"PK\x03\x04 a zip file".to_vec()), Err(ArtifactError::NotAnArtifact)));
    assert!(matches!(open(bytes[..20].to_vec()), Err(ArtifactError::Truncated { .. })));
    assert!(matches!(open(bytes[..bytes.len() - 100].to_vec()), Err(ArtifactError::Truncated { .. })));
    // One flipped bit in the code section: its checksum.
    let a = Artifact::from_blob(tessera_ir::Blob::from_vec(bytes.clone())).unwrap();
    let code = a.section("cpu.code").unwrap().clone();
    let mut flipped = bytes.clone();
    flipped[code.offset as usize + 100] ^= 0x10;
    let err = open(flipped).err().unwrap();
    assert!(matches!(&err, ArtifactError::Checksum { section, .. } if section == "cpu.code"), "{err}");
    // And in each of the large sections (hashed on their own threads).
    for name in ["cpu.packed", "ir.weights"] {
        let s = a.section(name).unwrap().clone();
        assert!(s.bytes >= 1 << 20, "{name} is {} bytes: the threaded path is not exercised", s.bytes);
        let mut flipped = bytes.clone();
        flipped[(s.offset + s.bytes - 1) as usize] ^= 0x01;
        let err = open(flipped).err().unwrap();
        assert!(matches!(&err, ArtifactError::Checksum { section, .. } if section == name), "{err}");
    }
    // Another Tessera version, and another format version.
    let text = String::from_utf8_lossy(&bytes[24..]).to_string();
    let at = 24
        + text.find(&format!("\"tessera_version\":\"{}\"", tessera_runtime::artifact::TESSERA_VERSION)).unwrap()
        + 19;
    let mut other = bytes.clone();
    other[at] = b'9';
    let err = open(reseal(&other).unwrap()).err().unwrap();
    assert!(matches!(err, ArtifactError::TesseraVersion { .. }), "{err}");
    let mut other = bytes.clone();
    other[8] = 2;
    assert!(matches!(open(other), Err(ArtifactError::FormatVersion { found: 2, .. })));
    // A relocation moved outside the code, checksums fixed up: the CPU loader refuses it.
    let obj = &bytes[code.offset as usize..(code.offset + code.bytes) as usize];
    let rela = find_rela(obj).expect("the object has a .rela.text");
    // (u64::MAX - 3 made the loader's address arithmetic overflow: found by the fuzzer.)
    for at in [1u64 << 40, u64::MAX - 3] {
        let mut moved = bytes.clone();
        let r_offset = code.offset as usize + rela;
        moved[r_offset..r_offset + 8].copy_from_slice(&at.to_le_bytes());
        let err = open(reseal(&moved).unwrap()).err().unwrap();
        assert!(matches!(err, ArtifactError::Load(tessera_target_cpu::image::LoadError::Relocation { .. })), "{err}");
    }
}

/// The file offset of the first relocation entry of an ELF64 object's `.rela.text`.
fn find_rela(obj: &[u8]) -> Option<usize> {
    let u16_at = |o: usize| u16::from_le_bytes([obj[o], obj[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(obj[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(obj[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    (0..shnum).map(|i| shoff + i * shentsize).find(|&h| u32_at(h + 4) == 4 /* SHT_RELA */).map(|h| u64_at(h + 0x18))
}
