//! Tessera's NPU target: integer kernels compiled to a command stream for a simulated mobile
//! NPU (a MAC array fed by DMA from DRAM into on-chip SRAM, like Arm's Ethos-U), a validator
//! that rejects unsafe streams before they run, and a simulator that runs them bit-exactly
//! against the IR's semantics while counting cycles.
//!
//! - [`device`]: the NPU as data, from a device profile's `[npu]` section.
//! - [`stream`]: the command stream, its binary encoding and its disassembly.
//! - [`validate`]: the checks every stream passes before it runs.
//! - [`sim`]: execution and the timing model.
//! - [`compile`]: tiling and stream emission for integer matrix products.
//! - [`exec`]: runs a graph with the kernels the NPU accepts on the simulator and the rest on
//!   the host (the reference interpreter), and reports both.
//!
//! Targets depend on `passes` (and through it on `ir`) and never on each other.

pub mod compile;
pub mod device;
pub mod exec;
pub mod sim;
pub mod stream;
pub mod validate;

pub use compile::{compile, Compiled, Decline, MatMulKernel};
pub use device::Device;
pub use exec::{NpuError, NpuModel, NpuReport};
pub use sim::Stats;
pub use stream::Stream;
pub use tessera_passes as passes;
