//! Tessera's the NPU target: kernel regions compiled to a command stream for a simulated mobile NPU.
//! Empty until its issue fills it. Targets depend on `passes` (and through it on `ir`) and
//! never on each other.

pub use tessera_passes as passes;
