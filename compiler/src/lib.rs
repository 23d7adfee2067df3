//! Tessera compiler: frontends (ONNX), and later the pipeline, cost model, partitioner and
//! artifact writer.

pub mod conformance;
pub use tessera_passes as passes;
pub mod onnx;
