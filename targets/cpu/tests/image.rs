//! Ahead-of-time images: kernels compiled into an ELF object, loaded back (relocations applied,
//! host functions resolved by name) and run, against the JIT-compiled program.

use tessera_ir::{parse, verify, Blob, DType, Tensor};
use tessera_target_cpu::image::{load, load_code, LoadError, LoadOptions};
use tessera_target_cpu::{compile, compile_image, CpuOptions, ObjectTarget};

const SRC: &str = "graph @g {
  v0: f32[seq, 13] = input \"a\"
  v1: f32[13, 11] = const splat(0.25)
  v2: f32[seq, 11] = matmul v0, v1
  v3: f32[seq, 11] = log v2
  v4: f32[6, 11] = const splat(1.5)
  v5: f32[seq, 11] = slice v4 {starts = [0], ends = [seq], axes = [0], steps = [1]}
  v6: f32[seq, 11] = add v3, v5
  v7: f32[seq, 11] = pow v6, v5
  output \"y\" = v7
}
";

fn input(rows: usize) -> Tensor {
    Tensor::from_f32(DType::F32, &[rows, 13], (0..rows * 13).map(|i| 1.0 + (i as f32 * 0.37).sin().abs()).collect())
        .unwrap()
}

#[test]
fn loaded_image_computes_what_the_jit_computes() {
    let g = parse(SRC).unwrap();
    verify(&g).unwrap();
    let opts = CpuOptions { threads: 2, min_split_bytes: 0, ..Default::default() };
    let jit = compile(&g, &opts).unwrap();
    let image = compile_image(&g, &opts, &ObjectTarget::Host).unwrap();
    assert!(image.object.starts_with(b"\x7fELF"), "an ELF object");
    assert_eq!(image.meta.syms, vec!["seq".to_string()]);
    // log and pow are host calls: the object imports them by name.
    let text = String::from_utf8_lossy(&image.object);
    assert!(text.contains("tessera_host_log") && text.contains("tessera_host_pow"));
    let owned = image.owned.iter().map(|o| Blob::from_vec(o.clone())).collect();
    let loaded = load(&image.meta, &image.object, owned, image.graph.clone(), &LoadOptions { threads: 2 }).unwrap();
    for rows in [1, 4, 6] {
        let want = jit.run(&[input(rows)]).unwrap();
        let got = loaded.run(&[input(rows)]).unwrap();
        assert_eq!(got[0].to_bytes(), want[0].to_bytes(), "rows {rows}");
        let reference = tessera_ir::run(&g, vec![input(rows)]).unwrap();
        let err =
            got[0].to_f64_vec().iter().zip(reference[0].to_f64_vec()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "rows {rows}: {err}");
    }
    // A wrong shape is still the program's typed error.
    assert!(loaded.run(&[Tensor::from_f32(DType::F32, &[2, 12], vec![1.0; 24]).unwrap()]).is_err());
}

#[test]
fn damaged_objects_are_refused_before_anything_runs() {
    let g = parse(SRC).unwrap();
    let image = compile_image(&g, &CpuOptions::default(), &ObjectTarget::Host).unwrap();
    // Truncated.
    let err = load_code(&image.object[..image.object.len() / 2]).err().expect("truncated object refused");
    assert!(matches!(err, LoadError::Object(_)), "{err}");
    // An import renamed to a function the runtime does not provide.
    let mut renamed = image.object.clone();
    let at = renamed.windows(16).position(|w| w == b"tessera_host_log").unwrap();
    renamed[at..at + 16].copy_from_slice(b"tessera_host_XXX");
    let err = load_code(&renamed).err().expect("unknown import refused");
    assert!(matches!(&err, LoadError::MissingHostFunction { name, .. } if name == "tessera_host_XXX"), "{err}");
    // Steps naming values the graph lacks.
    let mut meta = image.meta.clone();
    meta.steps[0].bufs[0] = tessera_target_cpu::image::BufImage::V(9999);
    let owned = image.owned.iter().map(|o| Blob::from_vec(o.clone())).collect();
    let err = load(&meta, &image.object, owned, image.graph.clone(), &LoadOptions { threads: 1 }).err().unwrap();
    assert!(matches!(err, LoadError::Step { step: 0, .. }), "{err}");
    // Features this CPU lacks.
    let mut meta = image.meta.clone();
    meta.features.push("has_no_such_feature".into());
    let owned = image.owned.iter().map(|o| Blob::from_vec(o.clone())).collect();
    let err = load(&meta, &image.object, owned, image.graph.clone(), &LoadOptions { threads: 1 }).err().unwrap();
    assert!(matches!(err, LoadError::Features { .. }), "{err}");
}

#[test]
fn aarch64_objects_compile_and_are_refused_here() {
    let g = parse(SRC).unwrap();
    let image =
        compile_image(&g, &CpuOptions::default(), &ObjectTarget::Triple("aarch64-linux-android".into())).unwrap();
    assert!(image.meta.triple.starts_with("aarch64"), "{}", image.meta.triple);
    // EM_AARCH64 = 183 at offset 18 of the ELF header.
    assert_eq!(u16::from_le_bytes([image.object[18], image.object[19]]), 183);
    if cfg!(target_arch = "x86_64") {
        let err = load_code(&image.object).err().expect("arm64 code refused on x86-64");
        assert!(matches!(err, LoadError::Architecture { .. }), "{err}");
    }
}
