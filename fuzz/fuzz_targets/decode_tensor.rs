//! Decodes arbitrary bytes as an ONNX `TensorProto`: any input must give a tensor or a typed
//! `TensorIoError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tessera_compiler::onnx::decode_tensor(data);
});
