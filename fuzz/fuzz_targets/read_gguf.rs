//! Reads arbitrary bytes as a GGUF file: any input must give a table or a typed `GgufError`,
//! never a panic or a huge allocation (every count is checked against the bytes left first).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = tessera_compiler::gguf::Gguf::parse(tessera_ir::Blob::from_vec(data.to_vec())) {
        // Whatever was read must be addressable.
        for t in &g.tensors {
            assert_eq!(g.tensor_data(t).len() as u64, t.bytes);
        }
    }
});
