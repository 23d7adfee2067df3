//! Parses arbitrary UTF-8 as IR text; whatever parses must verify without panicking and
//! round-trip through both printers: `print(parse(print(g))) == print(g)`, same for `print_inline`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tessera_ir::{parse, print, print_inline, Graph};

/// Texts with a `splat` constant and a type of more elements than this are skipped: expanding
/// the splat is slow and memory-hungry by design (see `common::declares_huge_type`).
const SPLAT_LIMIT: u128 = 1 << 20;

/// Above this many constant bytes (kernel bodies included) the `print_inline` round trip is
/// skipped: its `hex"..."` text is twice the size and re-parsing it is slow, not wrong.
const INLINE_LIMIT: u64 = 1 << 20;

fn constant_bytes(g: &Graph) -> u64 {
    let bodies = g.nodes().filter_map(|(_, n)| n.body.as_deref()).map(constant_bytes);
    g.constant_bytes().saturating_add(bodies.fold(0, u64::saturating_add))
}

fn round_trip(which: &str, input: &str, g: &Graph, printer: fn(&Graph) -> String) {
    let once = printer(g);
    let again = match parse(&once) {
        Ok(again) => again,
        Err(e) => panic!("{which}(g) does not parse back: {e}\n--- input ---\n{input}\n--- {which}(g) ---\n{once}"),
    };
    let twice = printer(&again);
    if once != twice {
        panic!(
            "{which}(parse({which}(g))) != {which}(g)\n--- input ---\n{input}\n--- {which}(g) ---\n{once}\n--- {which}(parse({which}(g))) ---\n{twice}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.contains("splat") && common::declares_huge_type(text, SPLAT_LIMIT) {
        return;
    }
    let Ok(g) = parse(text) else { return };
    let _ = tessera_ir::verify(&g);
    round_trip("print", text, &g, print);
    if constant_bytes(&g) <= INLINE_LIMIT {
        round_trip("print_inline", text, &g, print_inline);
    }
});
