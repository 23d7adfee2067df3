//! The C example (`examples/run_model.c`) compiled against `include/tessera.h` and
//! `libtessera.so`, run on MiniLM-L3 as an artifact and as an ONNX file: its outputs are the
//! Rust API's, byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;
use tessera_runtime::{compile_artifact, CompileOptions, Session, SessionOptions};

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

/// The folder holding `libtessera.so` built for this test (cargo builds the cdylib with the
/// rlib this test links).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        if dir.join("libtessera.so").exists() {
            return dir.to_path_buf();
        }
    }
    panic!("libtessera.so is not beside {}", exe.display());
}

fn compile_example(out: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library_dir();
    let exe = out.join("run_model");
    let status = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(root.join("examples/run_model.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-ltessera")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success(), "compiling examples/run_model.c failed");
    exe
}

#[test]
fn header_compiles_as_c_and_cpp() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (compiler, lang) in [("cc", "c"), ("c++", "c++")] {
        let status = Command::new(compiler)
            .args(["-fsyntax-only", "-Wall", "-Werror", "-x", lang])
            .arg(root.join("include/tessera.h"))
            .status()
            .unwrap_or_else(|e| panic!("{compiler}: {e}"));
        assert!(status.success(), "include/tessera.h does not compile as {lang}");
    }
}

#[test]
fn c_example_runs_artifact_and_model_like_the_rust_api() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_example(dir.path());
    let name = "minilm-l3-int8-dynamic";
    let model = models.join(format!("{name}.onnx"));
    let (bytes, _) = compile_artifact(&model, &CompileOptions::default()).unwrap();
    let artifact = dir.path().join(format!("{name}.tsa"));
    std::fs::write(&artifact, &bytes).unwrap();

    let jit = Session::from_file(&model, &SessionOptions { threads: 2, ..Default::default() }).unwrap();
    let set = models.join(format!("{name}/test_data_set_0"));
    let inputs: Vec<_> = (0..jit.inputs().len())
        .map(|i| tessera_runtime::compiler::onnx::read_tensor_pb(&set.join(format!("input_{i}.pb"))).unwrap().tensor)
        .collect();
    let expected = jit.run(&inputs).unwrap();
    let mut args = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        let file = dir.path().join(format!("input_{i}.bin"));
        std::fs::write(&file, t.to_bytes()).unwrap();
        args.push(file.display().to_string());
        args.push(t.shape().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","));
    }

    for path in [&artifact, &model] {
        let out = dir.path().join(format!("out-{}", path.extension().unwrap().to_string_lossy()));
        std::fs::create_dir_all(&out).unwrap();
        let run = Command::new(&exe).arg(path).arg(&out).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{}: {stdout}{}", path.display(), String::from_utf8_lossy(&run.stderr));
        // The signature as the C API describes it, symbolic dims by name.
        for (i, (n, _)) in jit.inputs().iter().enumerate() {
            assert!(stdout.contains(&format!("input {i}: {n} i64[")), "{stdout}");
        }
        let refusal = format!("refused as expected: 0 inputs given; the model takes {}", jit.inputs().len());
        assert!(stdout.contains(&refusal), "{stdout}");
        for (j, t) in expected.iter().enumerate() {
            let got = std::fs::read(out.join(format!("output_{j}.bin"))).unwrap();
            assert_eq!(got, t.to_bytes(), "{}: output {j} differs from the Rust API's", path.display());
            let dims = t.shape().iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            assert!(stdout.contains(&format!("output_{j}: {}[{dims}]", t.dtype())), "{stdout}");
        }
    }

    // A truncated artifact: refused with a message, no crash.
    let truncated = dir.path().join("truncated.tsa");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let run = Command::new(&exe).arg(&truncated).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("run_model: open:") && stderr.contains("truncated"), "{stderr}");
}
