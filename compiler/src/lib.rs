//! Tessera compiler: frontends (ONNX; the GGUF reader), and later the pipeline, cost model, partitioner and
//! artifact writer.

pub mod conformance;
pub use tessera_passes as passes;
pub mod gguf;
pub mod llm;
pub mod onnx;
pub mod place;
pub mod tokenizer;
