//! Runs every small graph that parses and verifies on the reference interpreter with all-zero
//! inputs: interpreter errors are fine, a panic is a bug.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tessera_ir::infer::infer_types;
use tessera_ir::{Dim, Graph, Shape, Tensor};

/// Largest total element count of the graph inputs.
const MAX_INPUT_ELEMENTS: u64 = 4096;
/// Largest static element count of any declared (or inferred) type, so runs stay fast.
const MAX_TYPE_ELEMENTS: u64 = 1 << 16;

/// The static element count of a shape, ignoring non-static dims; None on overflow.
fn static_numel(s: &Shape) -> Option<u64> {
    s.dims().iter().filter_map(Dim::as_static).try_fold(1u64, u64::checked_mul)
}

fn small(s: &Shape) -> bool {
    static_numel(s).is_some_and(|n| n <= MAX_TYPE_ELEMENTS)
}

/// Whether every declared type, and every inferred result type, of `g` and its kernel bodies
/// is small.
fn all_small(g: &Graph) -> bool {
    if !g.values().all(|(_, v)| small(&v.ty.shape)) {
        return false;
    }
    g.nodes().all(|(_, n)| {
        let inferred_ok = match infer_types(g, &n.op, &n.inputs, n.body.as_deref()) {
            Ok(types) => types.iter().all(|t| small(&t.shape)),
            Err(_) => false,
        };
        inferred_ok && n.body.as_deref().is_none_or(all_small)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Skip before parsing: a huge `splat` constant costs gigabytes in the parser already.
    if common::declares_huge_type(text, MAX_TYPE_ELEMENTS as u128) {
        return;
    }
    let Ok(g) = tessera_ir::parse(text) else { return };
    if tessera_ir::verify(&g).is_err() || !all_small(&g) {
        return;
    }
    let mut inputs = Vec::new();
    let mut total = 0u64;
    for (_, v) in g.inputs() {
        let ty = g.ty(*v);
        let Some(shape) = ty.shape.as_static() else { return };
        let Some(n) = static_numel(&ty.shape) else { return };
        total += n;
        if total > MAX_INPUT_ELEMENTS {
            return;
        }
        let Ok(t) = Tensor::zeros(ty.dtype, &shape) else { return };
        inputs.push(t);
    }
    let _ = tessera_ir::run(&g, inputs);
});
