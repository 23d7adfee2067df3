//! The CPU target's arm64 code, run under qemu-user on this x86-64 machine.
//!
//! Each graph is compiled for `aarch64-linux-android` into an ELF object (Cranelift's aarch64
//! backend, NEON), linked by the cross compiler (`aarch64-linux-gnu-gcc`) into a static driver
//! (`arm64/driver.c`) with a generated table of its kernel symbols and the host functions in C
//! (`arm64/host.c`), and run by `qemu-aarch64` on a replay of the run
//! (`tessera_target_cpu::replay`). Outputs are compared against the reference interpreter and
//! against the same program JIT-compiled for this machine.
//!
//! Needs the Debian packages `qemu-user` and `gcc-aarch64-linux-gnu` (scripts/test-all.sh
//! installs them); without them the tests skip loudly, except under CI where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tessera_ir::compare::compare;
use tessera_ir::{parse, verify, Graph, Tensor};
use tessera_target_cpu::image::{describe_object, ImageMeta};
use tessera_target_cpu::{compile, compile_image, replay, CpuOptions, ObjectTarget};

const TRIPLE: &str = "aarch64-linux-android";

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The driver and host functions compiled once (object files), or None (skip) without the tools.
fn toolchain() -> Option<&'static (tempfile::TempDir, PathBuf, PathBuf)> {
    static T: OnceLock<Option<(tempfile::TempDir, PathBuf, PathBuf)>> = OnceLock::new();
    T.get_or_init(|| {
        let missing: Vec<&str> = ["aarch64-linux-gnu-gcc", "qemu-aarch64"].into_iter().filter(|t| !have(t)).collect();
        if !missing.is_empty() {
            let msg = format!(
                "{} missing: install the Debian packages gcc-aarch64-linux-gnu and qemu-user",
                missing.join(" and ")
            );
            if std::env::var("CI").is_ok() {
                panic!("{msg}");
            }
            eprintln!("\n*** SKIPPED arm64 tests: {msg} ***\n");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("arm64");
        let mut objects = Vec::new();
        for name in ["driver", "host"] {
            let obj = dir.path().join(format!("{name}.o"));
            cross_cc(&[
                "-O2".as_ref(),
                "-Wall".as_ref(),
                "-Werror".as_ref(),
                "-c".as_ref(),
                src.join(format!("{name}.c")).as_os_str(),
                "-o".as_ref(),
                obj.as_os_str(),
            ]);
            objects.push(obj);
        }
        let host = objects.pop().unwrap();
        let driver = objects.pop().unwrap();
        Some((dir, driver, host))
    })
    .as_ref()
}

fn cross_cc(args: &[&std::ffi::OsStr]) {
    let out = Command::new("aarch64-linux-gnu-gcc").args(args).output().expect("aarch64-linux-gnu-gcc runs");
    assert!(out.status.success(), "aarch64-linux-gnu-gcc {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A compiled arm64 program: the static driver linked with its kernels.
struct Arm64 {
    dir: tempfile::TempDir,
    exe: PathBuf,
    meta: ImageMeta,
    graph: Graph,
    owned: Vec<Vec<u8>>,
}

impl Arm64 {
    fn link(meta: ImageMeta, object: &[u8], graph: Graph, owned: Vec<Vec<u8>>) -> Arm64 {
        let (_, driver, host) = toolchain().expect("checked by the caller");
        let summary = describe_object(object).unwrap();
        assert!(summary.architecture.contains("Aarch64"), "{}", summary.architecture);
        let dir = tempfile::tempdir().unwrap();
        let obj = dir.path().join("kernels.o");
        std::fs::write(&obj, object).unwrap();
        let mut names: Vec<&str> = meta.steps.iter().map(|s| s.kernel.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut table = String::from(
            "#include <stddef.h>\n#include <stdint.h>\n\
             typedef int32_t (*kernel_fn)(uint8_t *const *, const int64_t *, int64_t, int64_t);\n\
             struct kernel_entry { const char *name; kernel_fn fn; };\n",
        );
        for (i, n) in names.iter().enumerate() {
            table += &format!(
                "extern int32_t k{i}(uint8_t *const *, const int64_t *, int64_t, int64_t) __asm__(\"{n}\");\n"
            );
        }
        table += "const struct kernel_entry tessera_kernels[] = {\n";
        for (i, n) in names.iter().enumerate() {
            table += &format!("  {{\"{n}\", k{i}}},\n");
        }
        table += &format!("  {{0, 0}}}};\nconst size_t tessera_kernel_count = {};\n", names.len());
        let table_c = dir.path().join("kernels.c");
        std::fs::write(&table_c, table).unwrap();
        let exe = dir.path().join("driver");
        cross_cc(&[
            "-static".as_ref(),
            "-O1".as_ref(),
            table_c.as_os_str(),
            driver.as_os_str(),
            host.as_os_str(),
            obj.as_os_str(),
            "-lm".as_ref(),
            "-o".as_ref(),
            exe.as_os_str(),
        ]);
        Arm64 { dir, exe, meta, graph, owned }
    }

    fn run(&self, inputs: &[Tensor]) -> Vec<Tensor> {
        let owned: Vec<&[u8]> = self.owned.iter().map(|o| o.as_slice()).collect();
        let plan = replay::plan(&self.meta, &self.graph, &owned, inputs).unwrap();
        let (script, result) = (self.dir.path().join("replay.bin"), self.dir.path().join("result.bin"));
        std::fs::write(&script, plan.encode()).unwrap();
        let out = Command::new("qemu-aarch64").arg(&self.exe).arg(&script).arg(&result).output().unwrap();
        assert!(
            out.status.success(),
            "the arm64 driver failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        plan.outputs_from(&std::fs::read(&result).unwrap()).unwrap()
    }
}

/// Compiles `g` for arm64; runs it, `host` (the same graph compiled for this machine) and the
/// interpreter on `inputs`. Returns how many outputs were bit-identical to this machine's.
fn check_graph(what: &str, g: &Graph, host: &tessera_target_cpu::Program, inputs: &[Tensor]) -> (usize, usize) {
    let opts = CpuOptions { threads: 1, ..Default::default() };
    let image = compile_image(g, &opts, &ObjectTarget::Triple(TRIPLE.into())).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(image.meta.triple, "aarch64-linux-android", "{what}");
    let arm = Arm64::link(image.meta, &image.object, image.graph, image.owned);
    let got = arm.run(inputs);
    let want = tessera_ir::run(g, inputs.to_vec()).unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
    let host = host.run(inputs).unwrap();
    let mut same = 0;
    for (j, ((a, w), h)) in got.iter().zip(&want).zip(&host).enumerate() {
        let c = compare(a, w, 1e-4, 1e-4).unwrap_or_else(|e| panic!("{what} output {j}: {e}"));
        assert!(c.passed(), "{what} output {j}: arm64 against the interpreter: {c}");
        same += usize::from(a.to_bytes() == h.to_bytes());
    }
    (same, got.len())
}

/// Every `run` filetest graph (attention, elementwise, gather, integer and quantized matmuls,
/// reductions, a transformer block...) runs on arm64 like the interpreter.
#[test]
fn filetest_graphs_run_on_arm64() {
    if toolchain().is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("filetests/run");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tir"))
        .collect();
    files.sort();
    let (mut checked, mut same, mut outputs) = (0, 0, 0);
    let mut declined = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let close = lines.iter().rposition(|l| l.trim_end() == "}").map_or(lines.len(), |i| i + 1);
        let graph_text: String = lines[..close]
            .iter()
            .map(|l| if l.trim().starts_with("test ") { "\n" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let g = parse(&graph_text).unwrap();
        verify(&g).unwrap();
        let named = tessera_tests::filetest::inputs_from_header(&lines[..close]).unwrap();
        let inputs: Vec<Tensor> = g
            .inputs()
            .iter()
            .map(|(n, _)| {
                named.iter().find(|(m, _)| m == n).map(|(_, t)| t.clone()).expect("every input in the header")
            })
            .collect();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // Graphs this machine's CPU target declines are declined on arm64 too.
        let host = match compile(&g, &CpuOptions { threads: 1, ..Default::default() }) {
            Ok(p) => p,
            Err(e) => {
                let arm = compile_image(&g, &CpuOptions::default(), &ObjectTarget::Triple(TRIPLE.into()));
                assert!(arm.is_err(), "{name}: declined on this machine ({e}) but compiled for arm64");
                declined.push(name);
                continue;
            }
        };
        let (s, n) = check_graph(&name, &g, &host, &inputs);
        checked += 1;
        same += s;
        outputs += n;
    }
    eprintln!(
        "arm64: {checked} filetest graphs pass under qemu ({same} of {outputs} outputs bit-identical to x86-64); declined by the CPU target: {declined:?}"
    );
    assert!(checked >= 10, "only {checked} graphs checked");
}

fn models() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models");
    if dir.join("MANIFEST.txt").exists() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok() {
        panic!("{} lacks the models: CI must run scripts/fetch_models.sh first", dir.display());
    }
    eprintln!("\n*** SKIPPED: no .cache/models; run scripts/fetch_models.sh ***\n");
    None
}

/// Real models compiled for arm64 as artifacts (`tessera compile --triple
/// aarch64-linux-android`) run under qemu like the same model JIT-compiled for this machine
/// (which the ONNX tests check against onnxruntime).
#[test]
fn minilm_artifacts_for_arm64_run_under_qemu() {
    use tessera_runtime::artifact::Artifact;
    use tessera_runtime::{compile_artifact, CompileOptions, Session, SessionOptions};
    if toolchain().is_none() {
        return;
    }
    let Some(models) = models() else { return };
    for name in ["minilm-l3-fp32", "minilm-l3-int8-dynamic", "minilm-l3-qdq-int4-b32", "minilm-l3-matmulnbits-q4-b32"] {
        let model = models.join(format!("{name}.onnx"));
        let opts = CompileOptions { triple: Some(TRIPLE.into()), ..Default::default() };
        let (bytes, report) = compile_artifact(&model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.triple, "aarch64-linux-android");
        let a = Artifact::from_blob(tessera_ir::Blob::from_vec(bytes)).unwrap();
        // This runtime refuses to map arm64 code: a typed error, not a crash.
        let err = a.cpu_program(1).err().expect("arm64 code refused on x86-64");
        assert!(err.to_string().contains("compile the model for this machine"), "{err}");
        let owned = a.cpu_packed().unwrap().iter().map(|b| b.to_vec()).collect();
        let arm = Arm64::link(a.cpu_meta().unwrap(), a.cpu_code().unwrap(), a.graph().unwrap(), owned);
        let host = Session::from_file(&model, &SessionOptions { threads: 1, ..Default::default() }).unwrap();
        let set = models.join(format!("{name}/test_data_set_0"));
        let read = |f: String| tessera_runtime::compiler::onnx::read_tensor_pb(&set.join(f)).unwrap().tensor;
        let inputs: Vec<Tensor> = (0..host.inputs().len()).map(|i| read(format!("input_{i}.pb"))).collect();
        let got = arm.run(&inputs);
        let want = host.run(&inputs).unwrap();
        let mut worst = 0f64;
        for (j, (a, h)) in got.iter().zip(&want).enumerate() {
            let c = compare(a, h, 1e-4, 1e-4).unwrap_or_else(|e| panic!("{name} output {j}: {e}"));
            assert!(c.passed(), "{name} output {j}: arm64 against x86-64: {c}");
            worst = worst.max(c.max_abs_error);
        }
        eprintln!("arm64 {name}: {} kernel calls, max abs difference from x86-64 {worst:.2e}", arm.meta.steps.len());
    }
}

/// The ONNX backend node tests of the transformer set (the ops transformers use) after the
/// default pipeline, on arm64 under qemu: every one that passes on the interpreter passes on
/// arm64, or is unsupported by the CPU target as on x86-64, or has shapes that follow from
/// input values (the JIT compiles those per value at run time; ahead of time they are declined,
/// on any triple); none is wrong.
#[test]
fn transformer_node_tests_on_arm64() {
    use tessera_compiler::conformance::{cases, run_case_by, run_case_on, Backend, Outcome, RunnerError};
    if toolchain().is_none() {
        return;
    }
    let Some(models) = models() else { return };
    let dir = models.join("../onnx-node-tests");
    let pipeline = Some(tessera_compiler::passes::DEFAULT_PIPELINE);
    let runner = |g: &Graph, inputs: &[Tensor]| -> Result<Vec<Tensor>, RunnerError> {
        let image =
            compile_image(g, &CpuOptions { threads: 1, ..Default::default() }, &ObjectTarget::Triple(TRIPLE.into()))
                .map_err(|e| {
                    if e.is_unsupported() {
                        RunnerError::Unsupported(e.to_string())
                    } else {
                        RunnerError::Failed(e.to_string())
                    }
                })?;
        let arm = Arm64::link(image.meta, &image.object, image.graph, image.owned);
        Ok(arm.run(inputs))
    };
    let t0 = std::time::Instant::now();
    let (mut passed, mut unsupported, mut per_value, mut problems) = (0, 0, 0, Vec::new());
    for d in cases(&dir, None).unwrap() {
        let on_interp = run_case_on(&d, pipeline, Backend::Interp);
        if on_interp.outcome != Outcome::Passed || !on_interp.is_transformer() {
            continue;
        }
        let on_arm = run_case_by(&d, pipeline, 1e-7, &runner).outcome;
        if on_arm == Outcome::Passed {
            passed += 1;
            continue;
        }
        // Not passed on arm64: how this machine's CPU target fares says whether that is a bug.
        match (on_arm, run_case_on(&d, pipeline, Backend::Cpu).outcome) {
            (Outcome::Unsupported(_), Outcome::Unsupported(_)) => unsupported += 1,
            (Outcome::Unsupported(why), Outcome::Passed) if why.contains("known only from data") => per_value += 1,
            (arm, host) => problems.push(format!("{}: arm64 {arm:?}, x86-64 {host:?}", d.display())),
        }
    }
    eprintln!(
        "arm64: {passed} transformer-set node tests pass under qemu, {unsupported} unsupported (as on x86-64), {per_value} with shapes from input values (JIT only), {} differ, in {:.0} s",
        problems.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(passed >= 350, "only {passed} node tests ran on arm64");
}
