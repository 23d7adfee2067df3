//! Tessera's runtime: the public API that loads a model or an ahead-of-time artifact, compiles
//! it, and runs it on the chosen units. Empty until the CPU-target issue fills it; today the CLI
//! runs graphs on the reference interpreter in `tessera-ir`.

pub use tessera_compiler as compiler;
