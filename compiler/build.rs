//! Compiles `proto/onnx.proto` into Rust with protox (a pure-Rust protobuf compiler, so no
//! `protoc` binary is needed) and prost-build. The generated `onnx.rs` lands in `OUT_DIR` and is
//! included by `src/onnx/proto.rs`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let fds = protox::compile(["onnx.proto"], [manifest_dir.join("proto")])?;
    // Tensor bytes decode as `bytes::Bytes`: decoding from a memory-mapped model then slices the
    // map instead of copying every weight.
    prost_build::Config::new().bytes([".onnx.TensorProto.raw_data"]).compile_fds(fds)?;
    Ok(())
}
