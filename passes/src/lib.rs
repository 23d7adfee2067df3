//! Tessera's graph passes: canonicalization, equality saturation, fusion into kernel regions,
//! scheduling and buffer planning. Empty until the optimizer issue fills it; it already sits
//! in the dependency chain `ir` <- `passes` <- `targets/*`.

pub use tessera_ir as ir;
