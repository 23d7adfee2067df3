//! Tessera's the CPU target: kernel regions lowered to Cranelift IR and JIT-compiled.
//! Empty until its issue fills it. Targets depend on `passes` (and through it on `ir`) and
//! never on each other.

pub use tessera_passes as passes;
