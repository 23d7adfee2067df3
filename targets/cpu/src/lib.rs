//! Tessera's CPU target: every IR op and every fused kernel region of a graph is lowered to
//! Cranelift IR and JIT-compiled for the host (ISA flags from `cranelift-native`), then run over
//! one activation arena planned by `tessera-passes`' memory planner.
//!
//! - [`compile`] turns a verified graph into a [`Program`]: one JIT kernel per node (a node's
//!   kernel region becomes one fused kernel), constant weights packed for the kernels that read
//!   them. Nodes the target cannot lower are all listed in one [`CpuError::Unsupported`].
//! - [`Program::run`] validates inputs against the graph's signature (names, dtypes, shapes
//!   with symbolic dims), binds the symbols, plans the arena for those sizes (cached per size),
//!   and calls the kernels in order; kernels with a parallel range are split across the
//!   program's thread pool (the split is fixed when the kernel is compiled).
//!
//! Kernels never see an unchecked shape: every dim they read is a constant or a symbol bound
//! from a validated input, and every data-dependent index (gather) is bounds-checked in the
//! kernel, which returns a [`KernelFault`] instead of reading out of bounds.

#[cfg(feature = "jit")]
mod blocked;
#[cfg(feature = "jit")]
mod compile;
#[cfg(feature = "jit")]
mod ew;
#[cfg(feature = "jit")]
mod fx;
#[cfg(feature = "jit")]
mod gemm;
pub mod host;
pub mod image;
#[cfg(feature = "jit")]
mod jit;
#[cfg(feature = "jit")]
mod layout;
#[cfg(feature = "jit")]
mod legalize;
#[cfg(feature = "jit")]
mod lower;
#[cfg(feature = "jit")]
mod math;
#[cfg(feature = "jit")]
pub mod microbench;
#[cfg(feature = "jit")]
mod nn;
mod pool;
mod program;
#[cfg(feature = "jit")]
mod qgemm;
#[cfg(feature = "jit")]
mod reduce;
pub mod replay;
pub mod rows;
#[cfg(feature = "jit")]
pub mod specialize;
pub mod ukernel;

/// The code generator's revision, raised whenever what kernels compile to changes within one
/// Tessera version (a new inner tile, another host routine): the runtime's JIT cache keys on it,
/// so a cache never serves code an earlier build generated. 2: the AVX-512 tiles and row
/// routines.
pub const CODEGEN_REVISION: u32 = 2;

#[cfg(feature = "jit")]
pub use compile::{compile_image, ObjectTarget};
#[cfg(feature = "jit")]
pub use jit::Listing;
pub use program::{check_output_count, copy_output, Program, ProgramStats, RunOptions};
#[cfg(feature = "jit")]
pub use specialize::Specializing;
pub use ukernel::Ukernels;

/// Options for [`compile`].
#[cfg(feature = "jit")]
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// Threads the program's kernels may use (1 = the calling thread only).
    pub threads: usize,
    /// Keep each kernel's Cranelift IR text and/or machine code listing (`Program::clif`,
    /// `Program::asm`).
    pub listing: Listing,
    /// Whether kernels may call the `std::arch` inner tiles of [`ukernel`] (AVX2 f32 GEMM tile).
    pub ukernels: Ukernels,
    /// A parallel kernel whose buffers (weights included) hold fewer bytes than this runs on
    /// the calling thread: handing it to the pool costs more than the work (a decoded token
    /// runs hundreds of such kernels: norms of one row, per-head copies). 0 splits every one
    /// (tests use it to exercise the split on small shapes).
    pub min_split_bytes: u64,
}

#[cfg(feature = "jit")]
impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            listing: Listing::default(),
            ukernels: Ukernels::Auto,
            min_split_bytes: 64 << 10,
        }
    }
}

/// A fault a kernel detected at run time (kernels return its code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum KernelFault {
    DivisionByZero = 1,
    NegativeExponent = 2,
    IndexOutOfRange = 3,
}

impl KernelFault {
    fn from_code(c: i32) -> Option<KernelFault> {
        Some(match c {
            1 => KernelFault::DivisionByZero,
            2 => KernelFault::NegativeExponent,
            3 => KernelFault::IndexOutOfRange,
            _ => return None,
        })
    }

    pub fn message(self) -> &'static str {
        match self {
            KernelFault::DivisionByZero => "integer division or remainder by zero",
            KernelFault::NegativeExponent => "integer power with a negative exponent",
            KernelFault::IndexOutOfRange => "an index is out of range",
        }
    }
}

/// Why a graph could not be compiled or run on the CPU target.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuError {
    #[error("the CPU target cannot compile {count} node(s):\n{list}")]
    UnsupportedNodes { count: usize, list: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("host ISA: {0}")]
    Isa(String),
    #[error("code generation: {0}")]
    Codegen(String),
    #[error("missing input {name:?} (the graph takes {expected})")]
    MissingInput { name: String, expected: String },
    #[error("unknown input {name:?} (the graph takes {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input {name:?} is {actual} but the graph takes {expected}")]
    InputDtype { name: String, expected: tessera_ir::DType, actual: tessera_ir::DType },
    #[error("input {name:?} has shape {actual:?}: {message}")]
    InputShape { name: String, actual: Vec<usize>, message: String },
    #[error("the graph takes {expected} inputs, {actual} were given")]
    InputCount { expected: usize, actual: usize },
    #[error("{node} ({op}): {message}")]
    Kernel { node: tessera_ir::Node, op: &'static str, message: String },
    #[error("memory: {0}")]
    Memory(String),
}

impl CpuError {
    /// Whether the error says the target does not support something (rather than a bug or bad input).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, CpuError::UnsupportedNodes { .. } | CpuError::Unsupported(_))
    }
}

#[cfg(feature = "jit")]
/// Compiles a verified graph for the host CPU.
pub fn compile(g: &tessera_ir::Graph, opts: &CpuOptions) -> Result<Program, CpuError> {
    compile::compile(g, opts)
}

#[cfg(feature = "jit")]
/// Compiles a graph for reading, not running: each kernel's Cranelift IR and machine code
/// listing, with extra Cranelift ISA flags (`("has_avx_vnni", "true")`) to see what the target
/// emits on a CPU with features this host lacks. Returns (kernel, clif, asm) triples.
pub fn listing(
    g: &tessera_ir::Graph,
    isa_flags: &[(String, String)],
    ukernels: Ukernels,
) -> Result<Vec<(String, String, String)>, CpuError> {
    compile::listing(g, isa_flags, ukernels)
}

#[cfg(feature = "jit")]
/// The ISA feature flags this CPU's code is compiled with (`has_avx2`, ...): part of the JIT
/// cache's key.
pub fn host_features() -> Result<Vec<String>, CpuError> {
    Ok(jit::enabled_features(&*jit::host_isa()?))
}

#[cfg(feature = "jit")]
/// The host's ISA as Cranelift sees it (triple and flags summary).
pub fn host_isa_name() -> Result<String, CpuError> {
    let isa = jit::host_isa()?;
    Ok(format!("{} ({})", isa.triple(), isa.name()))
}
