//! Round trips of the text format on hand-written graphs, and parse errors with locations.

use tessera_ir::{parse, print, print_inline, verify};

const BLOCK: &str = r#"
graph @mini {
  v0: f32[1, seq, 4] = input "x"
  v1: f32[4] = const [1.0, 1.0, 1.0, 1.0]
  v2: i4[4, 4] quant(block(axis=0, size=2), scale=v3, zero=v4) = const [1, -2, 3, -4, 5, -6, 7, -8, 0, 1, 2, 3, 4, 5, 6, 7]
  v3: f32[2, 4] = const splat(0.5)
  v4: i4[2, 4] = const splat(0)
  v5: f32[1, seq, 4] = layer_norm v0, v1 {axis = -1, epsilon = 1e-5} @cpu
  v6: f32[1, seq, 4] mem(arena=0, offset=64) = qmatmul v5, v2
  v7: f32[1, seq, 2], v8: f32[1, seq, 2] = split v6 {axis = 2, sizes = [2, 2]}
  v9: f32[1, seq, 2] = kernel v7, v8 {name = "add_gelu"} region {
    v0: f32[1, seq, 2] = input "a"
    v1: f32[1, seq, 2] = input "b"
    v2: f32[1, seq, 2] = add v0, v1
    v3: f32[1, seq, 2] = gelu v2
    output "r" = v3
  }
  output "y" = v9
}
"#;

#[test]
fn hand_written_block_round_trips_and_verifies() {
    let g = parse(BLOCK).unwrap_or_else(|e| panic!("{e}"));
    verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let once = print(&g);
    let twice = print(&parse(&once).unwrap_or_else(|e| panic!("{e}\n{once}")));
    assert_eq!(once, twice);
    let inline = print_inline(&g);
    assert_eq!(print_inline(&parse(&inline).unwrap()), inline);
    assert!(once.contains("v6: f32[1, seq, 4] mem(arena=0, offset=64) = qmatmul v5, v2"), "{once}");
}
