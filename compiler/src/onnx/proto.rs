//! Rust types for the messages of `onnx.proto` (package `onnx`), generated at build time by
//! prost-build from the descriptors protox compiles (see `build.rs`).

#![allow(clippy::all, clippy::pedantic, clippy::nursery)]
#![allow(missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
