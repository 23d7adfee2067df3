//! Round trips of the text format on hand-written graphs, and parse errors with locations.

use tessera_ir::{parse, print, print_inline, run, verify, DType, Tensor};

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

/// Fuzz finding (parse_text): the printer writes names with `{:?}`, which escapes NUL and CR as
/// `\0` and `\r`, and the lexer rejected both escapes ("bad escape in string").
#[test]
fn names_with_control_characters_round_trip() {
    let text = r#"graph @g {
  v0: f32[2] = input "in\u{0}\r\u{1}\u{7f}\u{ad}"
  v1: f32[2] = kernel v0 {name = "k\u{0}\r\t\n\"\\"} region {
    v0: f32[2] = input "a\u{0}"
    output "b\r" = v0
  }
  output "out\u{0}\r" = v1
}
"#;
    let g = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.inputs()[0].0, "in\0\r\u{1}\u{7f}\u{ad}");
    assert_eq!(g.outputs()[0].0, "out\0\r");
    for printed in [print(&g), print_inline(&g)] {
        let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(print(&again), print(&g));
        assert_eq!(again.inputs(), g.inputs());
        assert_eq!(again.outputs(), g.outputs());
    }
}

/// Fuzz finding (run_graph): a negative-step `slice` of an empty dim panicked in
/// `infer::slice_bounds` (`clamp(0, -1)`), and steps near i64::MIN / i64::MAX overflowed in
/// `infer::slice_len` and in the interpreter's slice loop.
#[test]
fn slices_of_empty_dims_and_extreme_steps_verify_and_run() {
    let text = r#"graph @g {
  v0: f32[2, 0] = input "x"
  v1: f32[2, 0] = slice v0 {starts = [-1], ends = [-5], axes = [1], steps = [-2]}
  v2: f32[3] = input "y"
  v3: f32[1] = slice v2 {starts = [1], ends = [3], axes = [0], steps = [9223372036854775807]}
  v4: f32[1] = slice v2 {starts = [2], ends = [-9223372036854775808], axes = [0], steps = [-9223372036854775808]}
  output "a" = v1
  output "b" = v3
  output "c" = v4
}
"#;
    let g = parse(text).unwrap_or_else(|e| panic!("{e}"));
    verify(&g).unwrap_or_else(|e| panic!("{e}"));
    let x = Tensor::zeros(DType::F32, &[2, 0]).unwrap();
    let y = Tensor::from_f32(DType::F32, &[3], vec![1.0, 2.0, 3.0]).unwrap();
    let out = run(&g, vec![x, y]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0].shape(), &[2, 0]);
    assert_eq!(out[1].to_f64_vec(), vec![2.0]);
    assert_eq!(out[2].to_f64_vec(), vec![3.0]);
}
