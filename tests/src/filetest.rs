//! `.tir` filetests: one file holds a test header, the input graph and the expected output.
//!
//! ```text
//! ; free comments
//! test run                                  ; or: test print [weights=inline], test verify
//! ; input "x": f32[1, 4] = [1.0, 2.0, 3.0, 4.0]
//! graph @g {
//!   v0: f32[1, 4] = input "x"
//!   v1: f32[1, 4] = add v0, v0             ; error: ...   (verify tests: expected diagnostics)
//!   output "y" = v1
//! }
//! ; output "y": f32[1, 4]                   (everything after the closing `}` is the
//! ;   2.0, 4.0, 6.0, 8.0                     expected output, rewritten by TESSERA_BLESS=1)
//! ```
//!
//! Kinds:
//! - `print`: the graph parses and verifies; the expectation is the printed graph.
//! - `verify`: every error of the parser or verifier must be announced by `; error: TEXT` on
//!   the line it points at (TEXT is a substring of the message), and every announcement met.
//! - `run`: inputs come from `; input` lines; the expectation is every output's values.
//! - `pass NAMES`: runs the comma-separated passes (verifying after each); the expectation is
//!   the printed result. With `; input` lines, the outputs before and after must also agree
//!   (within 1e-5, relative 1e-5).
//!
//! Every test also checks the text round trip `print(parse(print(g))) == print(g)`.

use std::fmt::Write;
use std::path::Path;
use tessera_ir::graph::Span;
use tessera_ir::{parse, print, print_inline, verify, Graph, Tensor};

/// The outcome of one file.
pub enum Outcome {
    Pass,
    /// The expectation was rewritten (bless mode).
    Blessed,
    Fail(String),
}

/// Runs one filetest; with `bless`, rewrites its expected section in place.
pub fn run_file(path: &Path, bless: bool) -> Outcome {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(format!("cannot read: {e}")),
    };
    let lines: Vec<&str> = text.lines().collect();
    let Some(header) = lines.iter().find_map(|l| l.trim().strip_prefix("test ")) else {
        return Outcome::Fail("no `test KIND` header line".into());
    };
    let mut words = header.split_whitespace();
    let kind = words.next().unwrap_or("");
    let options: Vec<&str> = words.collect();
    // The expected section: the lines after the last line that closes the graph.
    let close = lines.iter().rposition(|l| l.trim_end() == "}").map(|i| i + 1).unwrap_or(lines.len());
    let input_text = lines[..close].join("\n") + "\n";
    // The parser sees the header line as a blank line, so line numbers stay true.
    let graph_text: String = lines[..close]
        .iter()
        .map(|l| if l.trim().starts_with("test ") { "\n".to_string() } else { format!("{l}\n") })
        .collect();
    let expected: String = lines[close..].iter().map(|l| format!("{l}\n")).collect();
    let actual = match kind {
        "print" => check_print(&graph_text, &options),
        "verify" => return check_verify(&graph_text),
        "run" => check_run(&graph_text, &lines[..close]),
        "pass" => check_pass(&graph_text, &lines[..close], &options),
        other => Err(format!("unknown test kind `{other}` (expected print, verify, run or pass)")),
    };
    let actual = match actual {
        Ok(a) => a,
        Err(e) => return Outcome::Fail(e),
    };
    let actual = comment_block(&actual);
    if actual.trim_end() == expected.trim_end() {
        return Outcome::Pass;
    }
    if bless {
        let new_text = format!("{input_text}{actual}");
        return match std::fs::write(path, new_text) {
            Ok(()) => Outcome::Blessed,
            Err(e) => Outcome::Fail(format!("cannot bless: {e}")),
        };
    }
    Outcome::Fail(format!(
        "expected output differs (rerun with TESSERA_BLESS=1 to accept):\n--- expected\n{expected}--- actual\n{actual}"
    ))
}

fn comment_block(text: &str) -> String {
    text.lines().map(|l| if l.is_empty() { ";\n".to_string() } else { format!("; {l}\n") }).collect()
}

fn parse_verified(text: &str) -> Result<Graph, String> {
    let g = parse(text).map_err(|e| format!("parse error: {e}"))?;
    verify(&g).map_err(|e| e.to_string())?;
    round_trip(&g)?;
    Ok(g)
}

/// `print(parse(print(g))) == print(g)`, with weights summarized and inline.
pub fn round_trip(g: &Graph) -> Result<(), String> {
    for (mode, printer) in [("summary", print as fn(&Graph) -> String), ("inline", print_inline)] {
        let once = printer(g);
        let reparsed = parse(&once).map_err(|e| format!("the printed graph ({mode}) does not parse: {e}\n{once}"))?;
        let twice = printer(&reparsed);
        if once != twice {
            return Err(format!("print/parse round trip ({mode}) differs:\n--- first\n{once}--- second\n{twice}"));
        }
    }
    Ok(())
}

fn check_print(text: &str, options: &[&str]) -> Result<String, String> {
    let g = parse_verified(text)?;
    Ok(if options.contains(&"weights=inline") { print_inline(&g) } else { print(&g) })
}

/// Expected diagnostics: `(line, text)` from `; error: TEXT` annotations.
fn annotations(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for part in line.split("; error:").skip(1) {
            out.push((i as u32 + 1, part.trim().to_string()));
        }
    }
    out
}

fn check_verify(text: &str) -> Outcome {
    let expected = annotations(text);
    let graph_line = text.lines().position(|l| l.trim_start().starts_with("graph")).map(|i| i as u32 + 1).unwrap_or(1);
    let actual: Vec<(u32, String)> = match parse(text) {
        Err(e) => vec![(e.span.line, e.message)],
        Ok(g) => match verify(&g) {
            Ok(()) => {
                if let Err(e) = round_trip(&g) {
                    return Outcome::Fail(e);
                }
                vec![]
            }
            Err(errors) => {
                errors.0.into_iter().map(|e| (e.span.map(|s: Span| s.line).unwrap_or(graph_line), e.message)).collect()
            }
        },
    };
    let mut problems = String::new();
    let mut met = vec![false; expected.len()];
    for (line, message) in &actual {
        match expected.iter().enumerate().find(|(i, (l, t))| !met[*i] && l == line && message.contains(t.as_str())) {
            Some((i, _)) => met[i] = true,
            None => {
                let _ = writeln!(problems, "line {line}: unexpected error: {message}");
            }
        }
    }
    for ((line, t), ok) in expected.iter().zip(&met) {
        if !ok {
            let _ = writeln!(problems, "line {line}: expected an error containing {t:?}, none was reported there");
        }
    }
    if problems.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(problems)
    }
}

/// Reads `; input "NAME": TYPE = DATA` lines into tensors, using the IR's own constant syntax.
pub fn inputs_from_header(lines: &[&str]) -> Result<Vec<(String, Tensor)>, String> {
    let mut out = Vec::new();
    for line in lines {
        let Some(rest) = line.trim().strip_prefix("; input ") else { continue };
        let (name_part, def) = rest.split_once(':').ok_or_else(|| format!("bad input line: {line}"))?;
        let name = name_part.trim().trim_matches('"').to_string();
        let (ty, data) = def.split_once('=').ok_or_else(|| format!("bad input line (no `=`): {line}"))?;
        let g =
            parse(&format!("graph @input {{\n  v0: {} = const {}\n  output \"x\" = v0\n}}\n", ty.trim(), data.trim()))
                .map_err(|e| format!("bad input line `{line}`: {e}"))?;
        let outs = tessera_ir::run(&g, vec![]).map_err(|e| format!("bad input line `{line}`: {e}"))?;
        out.push((name, outs.into_iter().next().expect("one output")));
    }
    Ok(out)
}

fn check_run(text: &str, lines: &[&str]) -> Result<String, String> {
    let g = parse_verified(text)?;
    let inputs = inputs_from_header(lines)?;
    let outputs =
        tessera_ir::run_named(&g, inputs.clone().into_iter().collect()).map_err(|e| format!("run failed: {e}"))?;
    // The same graph read back from its inline print gives the same bits.
    let again = parse(&print_inline(&g)).map_err(|e| e.to_string())?;
    let outputs2 = tessera_ir::run_named(&again, inputs.into_iter().collect())
        .map_err(|e| format!("run after round trip failed: {e}"))?;
    if outputs != outputs2 {
        return Err("outputs differ after a print/parse round trip".into());
    }
    let mut s = String::new();
    for ((name, _), t) in g.outputs().iter().zip(&outputs) {
        let _ = writeln!(s, "output {name:?}: {t}");
        s.push_str(&format_values(t));
    }
    Ok(s)
}

fn check_pass(text: &str, lines: &[&str], options: &[&str]) -> Result<String, String> {
    let names = options.first().ok_or("`test pass` needs the pass names (`test pass canonicalize`)")?;
    let before = parse_verified(text)?;
    let mut after = before.clone();
    let mut pipeline = tessera_compiler::passes::Pipeline::parse(names).map_err(|e| e.to_string())?;
    pipeline.verify_each = true;
    pipeline.run(&mut after, &mut |_| {}).map_err(|e| e.to_string())?;
    round_trip(&after)?;
    let inputs = inputs_from_header(lines)?;
    if !inputs.is_empty() {
        let run = |g: &Graph| {
            tessera_ir::run_named(g, inputs.clone().into_iter().collect()).map_err(|e| format!("run failed: {e}"))
        };
        let (a, b) = (run(&before)?, run(&after)?);
        for (j, (x, y)) in a.iter().zip(&b).enumerate() {
            let c = tessera_ir::compare::compare(y, x, 1e-5, 1e-5).map_err(|e| format!("output {j}: {e}"))?;
            if !c.passed() {
                return Err(format!("output {j} changed under the passes: {c}"));
            }
        }
    }
    Ok(print(&after))
}

/// One line per row of the last dim (at most 8 values a line).
pub fn format_values(t: &Tensor) -> String {
    let mut all = String::new();
    t.write_elements(&mut all);
    let values: Vec<&str> = if all.is_empty() { vec![] } else { all.split(", ").collect() };
    let row = t.shape().last().copied().unwrap_or(1).clamp(1, 8);
    let mut s = String::new();
    for chunk in values.chunks(row) {
        let _ = writeln!(s, "  {}", chunk.join(", "));
    }
    s
}
