//! The runtime without its compiler (`--no-default-features`): no Cranelift, egg or frontends
//! in the build, and an artifact still opens and runs, with the JIT-built runtime's outputs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    c
}

#[test]
fn loader_only_build_has_no_compiler() {
    let out = cargo()
        .args([
            "tree",
            "-p",
            "tessera-runtime",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--locked",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("tessera-target-cpu") && tree.contains("object"), "{tree}");
    for banned in
        ["cranelift", "egg ", "tessera-compiler", "tessera-target-spirv", "tessera-target-npu", "prost", "ash "]
    {
        assert!(!tree.lines().any(|l| l.starts_with(banned)), "{banned} is in the loader-only build:\n{tree}");
    }
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

#[test]
fn loader_only_example_runs_an_artifact_like_the_full_runtime() {
    use tessera_runtime::{compile_artifact, CompileOptions, DType, Session, Tensor};
    let Some(models) = models() else { return };
    // Its own target folder: the loader-only feature set builds its crates apart.
    let target = std::env::current_exe().unwrap().ancestors().nth(3).unwrap().join("loader-only");
    let out = cargo()
        .args(["build", "--locked", "-p", "tessera-runtime", "--no-default-features", "--example", "load_artifact"])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exe = target.join("debug/examples/load_artifact");

    let dir = tempfile::tempdir().unwrap();
    let model = models.join("minilm-l3-int8-dynamic.onnx");
    let (bytes, _) = compile_artifact(&model, &CompileOptions::default()).unwrap();
    let artifact = dir.path().join("minilm.tsa");
    std::fs::write(&artifact, bytes).unwrap();
    let run = Command::new(&exe)
        .arg(&artifact)
        .args(["--dim", "batch_size=1", "--dim", "sequence_length=9", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("load + first run"), "{stdout}");

    let full = Session::from_artifact(&artifact, 1).unwrap();
    let inputs: Vec<Tensor> =
        full.inputs().iter().map(|_| Tensor::from_i64(DType::I64, &[1, 9], vec![1; 9]).unwrap()).collect();
    for (j, t) in full.run(&inputs).unwrap().iter().enumerate() {
        let got = std::fs::read(dir.path().join(format!("output_{j}.bin"))).unwrap();
        assert_eq!(got, t.to_bytes(), "output {j}");
    }

    // A model file is refused with what to do instead.
    let run = Command::new(&exe).arg(&model).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("tessera compile"), "{stderr}");
}
