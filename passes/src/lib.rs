//! Tessera's graph passes, one per file: each file's `//!` header says what the pass does, what
//! it assumes and what it refuses. `manager.rs` registers them by name and runs pipelines.

pub mod approx;
pub mod canonicalize;
pub mod cse;
pub mod dce;
pub mod fold_constants;
pub mod fold_dequantize;
pub mod fuse;
pub mod manager;
pub mod memory;
pub mod plan_memory;
pub mod profile;
pub mod refine_types;
#[cfg(feature = "saturate")]
pub mod saturate;
pub mod schedule;
pub mod simplify_layout;
pub mod stats;

pub use manager::{lookup, registry, Event, Pass, PassError, PassReport, Pipeline, DEFAULT_PIPELINE};
pub use tessera_ir as ir;
