//! Tessera's GPU target: IR ops lowered to SPIR-V compute shaders (built with `rspirv`), which
//! the runtime's Vulkan executor runs (on Mesa's lavapipe here, on a phone's Adreno or Mali
//! there).
//!
//! A kernel is planned in two steps. [`plan`] looks at one node and the concrete shapes of its
//! operands and returns a [`Plan`]: a [`Spec`] (what the shader computes, independent of sizes:
//! one module serves every sequence length) plus the push constants, the workgroup count and
//! the bytes it moves. [`build`] turns a `Spec` into a [`Kernel`]: SPIR-V words, workgroup
//! size, shared memory. The executor caches kernels by `Spec`.
//!
//! Floats are f32; other dtypes move as words or convert to f32 where [`plan`] says so, and
//! every other dtype or op is declined with a [`GpuError::Declined`] that names the op and why
//! (the executor then runs it on the host; the partitioner will place it elsewhere).
//! Targets depend on `passes` (and through it on `ir`) and never on each other.

pub mod kernels;
mod sb;

pub use kernels::{build, plan, Kernel, Plan, Spec};
pub use tessera_passes as passes;

/// Device limits the planner respects (read from the Vulkan driver by the executor).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `maxComputeWorkGroupInvocations`.
    pub max_invocations: u32,
    /// `maxComputeSharedMemorySize`, bytes.
    pub max_shared_bytes: u32,
    /// `maxComputeWorkGroupCount[0..3]`.
    pub max_groups: [u32; 3],
    /// `maxPushConstantsSize`, bytes.
    pub max_push_bytes: u32,
    /// Whether compute shaders have subgroup arithmetic (`VkPhysicalDeviceSubgroupProperties`:
    /// the compute stage and `SUBGROUP_FEATURE_ARITHMETIC`); reductions then use it.
    pub subgroup_arithmetic: bool,
    /// Whether workgroup memory and barriers are cheap (a GPU); false for CPU implementations
    /// of Vulkan (lavapipe), where matmuls then keep results in registers instead of tiling
    /// through shared memory.
    pub fast_shared_memory: bool,
}

impl Default for Limits {
    /// Vulkan's required minimums: what any conformant device offers.
    fn default() -> Limits {
        Limits {
            max_invocations: 128,
            max_shared_bytes: 16384,
            max_groups: [65535; 3],
            max_push_bytes: 128,
            subgroup_arithmetic: false,
            fast_shared_memory: true,
        }
    }
}

/// Why the GPU target cannot run a node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    /// The target has no kernel for this op, dtype or shape (or the device's limits are too
    /// small for it): run the node on another unit.
    #[error("the GPU target declines {op}: {why}")]
    Declined { op: String, why: String },
}

impl GpuError {
    pub fn declined(op: &str, why: impl Into<String>) -> GpuError {
        GpuError::Declined { op: op.to_string(), why: why.into() }
    }
}

/// The SPIR-V assembly text of a kernel (for `tessera ir --target gpu --emit spirv-asm`).
pub fn disassemble(k: &Kernel) -> String {
    use rspirv::binary::Disassemble;
    k.module.disassemble()
}
