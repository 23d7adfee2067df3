//! End-to-end tests of the `tessera` command line: good input works, bad input gives a clear
//! error naming the place and a non-zero exit code, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(root()).output().expect("tessera runs")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Asserts failure with every `needle` in stderr and no panic.
fn fails_with(o: &Output, needles: &[&str]) {
    let (out, err) = text(o);
    assert!(!o.status.success(), "expected failure, got success\nstdout: {out}\nstderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n) || out.contains(n), "missing {n:?} in\nstdout: {out}\nstderr: {err}");
    }
}

const BLOCK: &str = "tests/filetests/run/transformer_block.tir";
const BLOCK_DATA: &str = "tests/filetests/run/transformer_block";

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn ir_prints_a_graph_that_parses_back() {
    let o = tessera(&["ir", BLOCK]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("graph @transformer_block {"), "{out}");
    assert!(out.contains("= attention v"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let again = write(dir.path(), "again.tir", &out);
    let o2 = tessera(&["ir", &again]);
    assert_eq!(text(&o2).0, out);
}

#[test]
fn run_check_passes_on_the_transformer_block() {
    let o = tessera(&["run", BLOCK, "--inputs", BLOCK_DATA, "--check"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("output 0 \"y\": f32[1, 5, 8] ok"), "{out}");
}

#[test]
fn sidecar_dump_runs_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("block.tir");
    let o = tessera(&["ir", BLOCK, "--weights", "sidecar", "-o", dump.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(dir.path().join("block.tir.weights").exists());
    let o = tessera(&["run", dump.to_str().unwrap(), "--inputs", BLOCK_DATA, "--check"]);
    assert!(o.status.success(), "{:?}", text(&o));
    // A summary dump is readable but refuses to run, saying why.
    let summary = dir.path().join("summary.tir");
    let big = "graph @g {\n  v0: f32[1, 5, 8] = input \"x\"\n  v1: f32[1, 5, 8] = const splat(1.0)\n  v2: f32[1, 5, 8] = add v0, v1\n  output \"y\" = v2\n}\n";
    let src = write(dir.path(), "big.tir", big);
    let o = tessera(&["ir", &src, "-o", summary.to_str().unwrap()]);
    assert!(o.status.success());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(root().join(BLOCK_DATA).join("test_data_set_0/input_0.pb"), data.join("input_0.pb")).unwrap();
    let o = tessera(&["run", summary.to_str().unwrap(), "--inputs", data.to_str().unwrap()]);
    fails_with(&o, &["holds only a summary"]);
}

#[test]
fn malformed_text_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.tir",
        "graph @g {\n  v0: f32[2] = input \"x\"\n  v1: f32[2] = nge v0\n  output \"y\" = v1\n}\n",
    );
    fails_with(&tessera(&["ir", &f]), &["bad.tir:3:", "unknown op `nge`"]);
    let f = write(dir.path(), "cut.tir", "graph @g {\n  v0: f32[2] = input \"x\"\n  v1: f32[2] = neg");
    fails_with(&tessera(&["ir", &f]), &["cut.tir:3:"]);
}

#[test]
fn ill_typed_graph_lists_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "typed.tir",
        "graph @g {\n  v0: f32[2, 3] = input \"x\"\n  v1: f32[3, 3] = add v0, v0\n  v2: f32[2, 3] = matmul v0, v0\n  output \"y\" = v2\n}\n",
    );
    fails_with(&tessera(&["ir", &f]), &["2 errors", "3:3: result type f32[3, 3]", "4:3:", "inner dims differ"]);
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Missing input file.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(&tessera(&["run", BLOCK, "--inputs", empty.to_str().unwrap()]), &["neither input_0.pb"]);
    // Wrong shape: a [1, 2, 3] input for x: f32[1, seq, 8].
    let shape_dir = dir.path().join("shape");
    std::fs::create_dir(&shape_dir).unwrap();
    let wrong = tessera_ir::Tensor::from_f32(tessera_ir::DType::F32, &[1, 2, 3], vec![0.0; 6]).unwrap();
    tessera_compiler::onnx::write_tensor_pb(&shape_dir.join("input_0.pb"), "x", &wrong).unwrap();
    fails_with(
        &tessera(&["run", BLOCK, "--inputs", shape_dir.to_str().unwrap()]),
        &["input \"x\" has shape [1, 2, 3]", "dim 2 is 3 where 8 was declared"],
    );
    // Wrong dtype.
    let dtype_dir = dir.path().join("dtype");
    std::fs::create_dir(&dtype_dir).unwrap();
    let ints = tessera_ir::Tensor::from_i64(tessera_ir::DType::I32, &[1, 2, 8], vec![0; 16]).unwrap();
    tessera_compiler::onnx::write_tensor_pb(&dtype_dir.join("input_0.pb"), "x", &ints).unwrap();
    fails_with(
        &tessera(&["run", BLOCK, "--inputs", dtype_dir.to_str().unwrap()]),
        &["input \"x\" is i32 but the graph takes f32"],
    );
    // A corrupt input file.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("input_0.pb"), [0xff, 0xff, 0xff]).unwrap();
    fails_with(&tessera(&["run", BLOCK, "--inputs", corrupt.to_str().unwrap()]), &["input_0.pb"]);
}

#[test]
fn check_reports_mismatch_with_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join(BLOCK_DATA).join("test_data_set_0/input_0.pb"), dir.path().join("input_0.pb")).unwrap();
    let wrong = tessera_ir::Tensor::from_f32(tessera_ir::DType::F32, &[1, 5, 8], vec![0.5; 40]).unwrap();
    tessera_compiler::onnx::write_tensor_pb(&dir.path().join("output_0.pb"), "y", &wrong).unwrap();
    let o = tessera(&["run", BLOCK, "--inputs", dir.path().to_str().unwrap(), "--check"]);
    fails_with(&o, &["MISMATCH", "40 of 40 elements differ", "did not match"]);
}

#[test]
fn unsupported_formats_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "model.onnx", "not really");
    fails_with(&tessera(&["ir", &f]), &["model.onnx is not a valid ONNX model"]);
    let f = write(dir.path(), "model.gguf", "GGUF");
    fails_with(&tessera(&["ir", &f]), &["model.gguf", "truncated at byte 4"]);
    fails_with(&tessera(&["ir", "no/such/file.tir"]), &["does not exist"]);
}

#[test]
fn demo_runs_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let o = tessera(&["demo", "--out", out_dir]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("0 of 40 elements differ"), "{out}");
    assert!(out.contains("ok   host artifact: 4 reference data sets match onnxruntime"), "{out}");
    assert!(out.contains("arm64 NEON code for aarch64-linux-android"), "{out}");
    for f in [
        "minilm-l3-qdq-int4-b32.host.tsa",
        "minilm-l3-qdq-int4-b32.aarch64-android.tsa",
        "placement.dot",
        "timeline.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f} not written:\n{out}");
    }
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<title>").count() > 50, "{svg}");
    // The phone artifact holds the placement.
    let o = tessera(&["inspect", &format!("{out_dir}/minilm-l3-qdq-int4-b32.aarch64-android.tsa")]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("aarch64"), "{out}");
}

#[test]
fn ir_prints_the_gpu_plan_and_spirv() {
    let o = tessera(&["ir", BLOCK, "--target", "gpu", "--emit", "spirv-asm"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("OpEntryPoint GLCompute"), "{out}");
    assert!(out.contains("attention: Attention {"), "{out}");
    assert!(out.lines().last().unwrap_or("").contains(" kernels, "), "{out}");
}

#[test]
fn run_checks_on_the_gpu_target_with_a_per_kernel_report() {
    let o = tessera(&["run", BLOCK, "--inputs", BLOCK_DATA, "--check", "--target", "gpu", "--kernel-times"]);
    let (out, err) = text(&o);
    if err.contains("no Vulkan") {
        eprintln!("!!! SKIPPED: no Vulkan device here: {err}");
        return;
    }
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("ran on the GPU target"), "{out}");
    assert!(out.contains("output 0 \"y\": f32[1, 5, 8] ok"), "{out}");
    assert!(out.contains("host: 0 nodes"), "{out}");
    assert!(out.contains("est us") && out.contains("estimated") && out.contains("Adreno 740"), "{out}");
    // An unknown phone profile is an error naming the built-in ones.
    let o = tessera(&[
        "run",
        BLOCK,
        "--inputs",
        BLOCK_DATA,
        "--target",
        "gpu",
        "--kernel-times",
        "--device-profile",
        "pixel-99",
    ]);
    fails_with(&o, &["pixel-99", "snapdragon-8-gen-2"]);
}

#[test]
fn inspect_lists_a_gguf_file_and_names_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    // GGUF v3, no tensors, one metadata entry: general.architecture = "llama".
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    let key = "general.architecture";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(5u64.to_le_bytes());
    b.extend(b"llama");
    let good = dir.path().join("tiny.gguf");
    std::fs::write(&good, &b).unwrap();
    let o = tessera(&["inspect", good.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("GGUF v3: 1 metadata entries, 0 tensors") && out.contains("general.architecture = \"llama\""),
        "{out}"
    );
    // Lowering needs the architecture's metadata: the error names the missing key, and
    // `generate` says the same after naming the file.
    fails_with(&tessera(&["ir", good.to_str().unwrap()]), &["tiny.gguf", "\"llama.block_count\": missing"]);
    fails_with(
        &tessera(&["generate", good.to_str().unwrap(), "-p", "hi"]),
        &["loading", "tiny.gguf", "\"llama.block_count\": missing"],
    );
    // An architecture Tessera does not lower is named.
    let mut other = b.clone();
    let n = other.len();
    other[n - 5..].copy_from_slice(b"mamba");
    let other_path = dir.path().join("other.gguf");
    std::fs::write(&other_path, &other).unwrap();
    fails_with(
        &tessera(&["ir", other_path.to_str().unwrap()]),
        &["architecture \"mamba\" is not supported", "gemma3 and llama"],
    );
    // A truncated file names the place: its one metadata entry cannot fit in what is left.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &b[..30]).unwrap();
    fails_with(&tessera(&["inspect", cut.to_str().unwrap()]), &["cut.gguf", "at byte 24", "bytes left"]);
}

/// `--target npu`: the product runs on the simulated NPU, checks against the interpreter's
/// outputs, and the summary names cycles, MAC utilization, DRAM bytes, SRAM peak and DMA hidden;
/// `ir --target npu --emit npu-asm` prints the command stream.
#[test]
fn run_checks_on_the_npu_target_and_ir_prints_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let weights: Vec<String> = (0..40 * 8).map(|i: i32| (i * 37 % 255 - 127).to_string()).collect();
    let model = write(
        dir.path(),
        "npu.tir",
        &format!(
            "graph @npu {{\n  v0: u8[4, 40] = input \"a\"\n  v1: i8[40, 8] = const [{}]\n  v2: u8[] = const [3]\n  v3: i8[] = const [-2]\n  v4: i32[4, 8] = matmul_integer v0, v1, v2, v3 {{pair_saturate = false}}\n  output \"y\" = v4\n}}\n",
            weights.join(", ")
        ),
    );
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let a =
        tessera_ir::Tensor::from_i64(tessera_ir::DType::U8, &[4, 40], (0..160).map(|i| i * 7 % 256).collect()).unwrap();
    tessera_compiler::onnx::write_tensor_pb(&data.join("input_0.pb"), "a", &a).unwrap();
    let data = data.to_str().unwrap();
    let o = tessera(&["run", &model, "--inputs", data, "--target", "interp", "--outputs", data]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = tessera(&["run", &model, "--inputs", data, "--check", "--target", "npu", "--kernel-times"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for needle in [
        "ran on the NPU target",
        "NPU: 1 kernels",
        "NPU summary: cycles",
        "MAC utilization",
        "DRAM bytes read",
        "SRAM peak",
        "DMA hidden",
        "ok (max abs error 0.00e0",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    let o = tessera(&["ir", &model, "--target", "npu", "--emit", "npu-asm"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for needle in ["; kernel n0 matmul_integer", "npu stream v1", "dma.load", "matmul", "dma.store", "stop"] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    let o = tessera(&["run", &model, "--inputs", data, "--target", "npu", "--device-profile", "no-such-phone"]);
    fails_with(&o, &["no built-in profile", "snapdragon-8-gen-2"]);
}

#[test]
fn explain_places_kernels_with_a_picture_a_timeline_and_the_exact_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let dot = dir.path().join("p.dot");
    let trace = dir.path().join("t.json");
    let (dot_s, trace_s) = (dot.to_str().unwrap(), trace.to_str().unwrap());
    let o = tessera(&[
        "explain",
        BLOCK,
        "--profile",
        "dimensity-9300",
        "--dot",
        dot_s,
        "--trace",
        trace_s,
        "--exact",
        "64",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for needle in [
        "profile dimensity-9300 (MediaTek Dimensity 9300)",
        "unit",
        "why units decline kernels:",
        "hand-overs:",
        "cpu-only",
        "gpu-only",
        "npu-only",
        "partitioned",
        "speed-up over the best single unit",
        "exact search: optimum",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    let gap: f64 = out
        .split("the partitioner is ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gap in\n{out}"));
    assert!(gap <= 3.0, "{gap}% above the optimum:\n{out}");
    let dot_text = std::fs::read_to_string(&dot).unwrap();
    assert!(dot_text.starts_with("digraph placement {") && dot_text.contains("fillcolor"), "{dot_text}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    assert!(events.iter().any(|e| e["ph"] == "X"), "no spans");
    assert!(events.iter().any(|e| e["args"]["name"] == "dimensity-9300 (simulated)"), "no process name");
    // A profile with a nonsensical field names it.
    let text_p = std::fs::read_to_string(root().join("profiles/dimensity-9300.toml")).unwrap();
    let bad = write(dir.path(), "bad.toml", &text_p.replace("bandwidth_gbps = 76.8", "bandwidth_gbps = -76.8"));
    fails_with(
        &tessera(&["explain", BLOCK, "--profile", &bad]),
        &["bad.toml", "dram.bandwidth_gbps must be a positive number"],
    );
    let bad = write(dir.path(), "bad2.toml", &text_p.replace("clock_mhz = 1000.0", "clock_mhz = 0.0"));
    fails_with(&tessera(&["explain", BLOCK, "--profile", &bad]), &["npu.clock_mhz must be a positive number"]);
    fails_with(&tessera(&["explain", BLOCK, "--profile", "pixel-99"]), &["no built-in profile", "snapdragon-8-gen-3"]);
}

#[test]
fn run_with_a_profile_runs_the_units_concurrently_and_writes_both_timelines() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.json");
    let o = tessera(&[
        "run",
        BLOCK,
        "--inputs",
        BLOCK_DATA,
        "--check",
        "--profile",
        "snapdragon-8-gen-3",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for needle in
        ["simulated latency on snapdragon-8-gen-3", "partitioned", "segments here", "output 0 \"y\": f32[1, 5, 8] ok"]
    {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let names: Vec<String> = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "process_name")
        .map(|e| e["args"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(names.contains(&"host (measured)".to_string()), "{names:?}");
    assert!(names.contains(&"snapdragon-8-gen-3 (simulated)".to_string()), "{names:?}");
    // Each segment's kernels on the row below it, with their measured times.
    let rows: Vec<&str> = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert!(rows.iter().any(|r| r.ends_with(" kernels")), "{rows:?}");
    // --trace needs a placement.
    let o = tessera(&["run", BLOCK, "--inputs", BLOCK_DATA, "--target", "cpu", "--trace", "x.json"]);
    fails_with(&o, &["--trace and --dot show a placement"]);
}

#[test]
fn calibrate_writes_a_host_profile_that_explain_reads() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["calibrate", "--model", "no-such-model.onnx"])
        .env("TESSERA_HOST_PROFILE", &host)
        .current_dir(root())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("cost model check skipped"), "{out}");
    let profile = std::fs::read_to_string(&host).unwrap();
    for needle in [
        "name = \"host\"",
        "bandwidth_gbps = ",
        "fp32_gflops = ",
        "int8_gops = ",
        "[cpu.class_efficiency]",
        "attention = ",
    ] {
        assert!(profile.contains(needle), "{needle:?} missing:\n{profile}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["explain", BLOCK, "--profile", "host"])
        .env("TESSERA_HOST_PROFILE", &host)
        .current_dir(root())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("gpu-only") && out.contains("profile host has no GPU"), "{out}");
    // No host profile yet: the error says how to make one.
    let o = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["explain", BLOCK, "--profile", "host"])
        .env("TESSERA_HOST_PROFILE", dir.path().join("none.toml"))
        .current_dir(root())
        .output()
        .unwrap();
    fails_with(&o, &["run `tessera calibrate`"]);
}

#[test]
fn compile_writes_an_artifact_that_inspect_shows_and_run_checks() {
    let dir = tempfile::tempdir().unwrap();
    let tsa = dir.path().join("block.tsa");
    let tsa_s = tsa.to_str().unwrap();
    let o = tessera(&["compile", BLOCK, "-o", tsa_s, "--profile", "snapdragon-8-gen-3"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("wrote") && out.contains("distinct kernels"), "{out}");
    let o = tessera(&["inspect", tsa_s]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for needle in [
        "Tessera artifact",
        "cpu.code",
        "cpu.packed",
        "ir.weights",
        "loads on this machine: yes",
        "placed for: snapdragon-8-gen-3",
        "placement",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    let o = tessera(&["run", tsa_s, "--inputs", BLOCK_DATA, "--check"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("from the artifact") && out.contains("output 0 \"y\": f32[1, 5, 8] ok"), "{out}");
    // Other targets cannot run an artifact; a damaged one is named.
    fails_with(&tessera(&["run", tsa_s, "--inputs", BLOCK_DATA, "--target", "gpu"]), &["CPU code only"]);
    let mut bytes = std::fs::read(&tsa).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    let bad = dir.path().join("bad.tsa");
    std::fs::write(&bad, &bytes).unwrap();
    fails_with(&tessera(&["run", bad.to_str().unwrap(), "--inputs", BLOCK_DATA]), &["fails its checksum", "corrupted"]);
    std::fs::write(&bad, &bytes[..n / 3]).unwrap();
    fails_with(&tessera(&["inspect", bad.to_str().unwrap()]), &["truncated artifact"]);
}
