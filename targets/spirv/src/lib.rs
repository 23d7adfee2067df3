//! Tessera's the GPU target: kernel regions lowered to SPIR-V compute shaders run through Vulkan.
//! Empty until its issue fills it. Targets depend on `passes` (and through it on `ir`) and
//! never on each other.

pub use tessera_passes as passes;
