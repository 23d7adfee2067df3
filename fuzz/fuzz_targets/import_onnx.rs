//! Imports arbitrary bytes as an ONNX model: any input must give a verified graph or a typed
//! `ImportError`, never a panic or a huge allocation. A model that imports is also run through
//! the default pass pipeline, whose passes must accept every graph the importer makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_compiler::onnx::import_model;
use tessera_ir::Blob;

fuzz_target!(|data: &[u8]| {
    let Ok(mut g) = import_model(Blob::from_vec(data.to_vec()), "fuzz.onnx", "fuzz", None) else { return };
    // Keep the pass run bounded: skip graphs with large constants.
    if g.constant_bytes() > 1 << 20 {
        return;
    }
    let pipeline = tessera_compiler::passes::Pipeline::parse("canonicalize").expect("registered");
    if let Err(e) = pipeline.run(&mut g, &mut |_| {}) {
        // A pass may decline a graph, but never produce one that does not verify.
        assert!(!matches!(e, tessera_compiler::passes::PassError::Broken { .. }), "{e}");
    }
});
