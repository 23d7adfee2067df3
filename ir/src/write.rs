//! The printer: every graph prints to text that `parse` reads back, and
//! `print(parse(print(g))) == print(g)`. The grammar is in docs/ir.md.
//!
//! Values are numbered in print order (inputs, constants, then node results), so a printed
//! graph always has dense `v0, v1, ..` whatever the numbering inside the graph.

use crate::attrs::op_attrs;
use crate::constant::{fnv1a64, ConstData};
use crate::entity::Value;
use crate::graph::{Graph, ValueDef};
use crate::tensor::Tensor;
use crate::types::{QuantGranularity, TensorType};
use std::collections::HashMap;
use std::fmt::Write;

/// How constants are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMode {
    /// Every constant in the text: element lists up to the inline limit, `hex"..."` beyond.
    Inline,
    /// Constants above the inline limit as `summary(bytes=.., hash=..)`: readable, not runnable.
    Summary,
    /// Constants above the inline limit as `blob(offset=.., bytes=.., hash=..)` into a sidecar
    /// file named in the header; the printer returns the sidecar's bytes.
    Sidecar,
}

#[derive(Clone, Debug)]
pub struct PrintOptions {
    pub weights: WeightMode,
    /// Constants with at most this many elements are written as element lists.
    pub inline_elements: usize,
    /// The sidecar file name written in the header (Sidecar mode).
    pub sidecar_name: String,
}

impl Default for PrintOptions {
    fn default() -> PrintOptions {
        PrintOptions { weights: WeightMode::Summary, inline_elements: 16, sidecar_name: "weights.bin".into() }
    }
}

/// Alignment of blobs in a sidecar file, so a mapped sidecar gives aligned weights.
pub const SIDECAR_ALIGN: usize = 64;

/// Prints with the default options (small constants inline, large ones summarized).
pub fn print(g: &Graph) -> String {
    print_with(g, &PrintOptions::default()).0
}

/// Prints every constant in full (hex for large ones): the text alone can be run.
pub fn print_inline(g: &Graph) -> String {
    print_with(g, &PrintOptions { weights: WeightMode::Inline, ..PrintOptions::default() }).0
}

/// Prints and returns the sidecar bytes (empty unless `WeightMode::Sidecar`).
pub fn print_with(g: &Graph, opts: &PrintOptions) -> (String, Vec<u8>) {
    let mut p = Printer { opts, out: String::new(), sidecar: Vec::new() };
    p.graph(g, 0, true);
    (p.out, p.sidecar)
}

struct Printer<'a> {
    opts: &'a PrintOptions,
    out: String,
    sidecar: Vec<u8>,
}

/// Print-order numbering of a graph's values: the printer names value `v` `v{numbering[v]}`,
/// and the parser gives it that index when it reads the text back.
pub fn numbering(g: &Graph) -> HashMap<Value, usize> {
    let mut names = HashMap::new();
    let order = g.inputs().iter().map(|(_, v)| *v).chain(g.constants().iter().map(|c| c.value));
    for v in order.chain(g.nodes().flat_map(|(_, n)| n.outputs.iter().copied())) {
        let next = names.len();
        names.entry(v).or_insert(next);
    }
    names
}

impl Printer<'_> {
    fn graph(&mut self, g: &Graph, indent: usize, top: bool) {
        let names = numbering(g);
        let name = |v: Value| match names.get(&v) {
            Some(n) => format!("v{n}"),
            None => format!("<invalid {v}>"),
        };
        let pad = "  ".repeat(indent + 1);
        if top {
            let _ = write!(self.out, "graph @{}", ident(&g.name));
            if self.opts.weights == WeightMode::Sidecar {
                let _ = write!(self.out, " weights {:?}", self.opts.sidecar_name);
            }
            self.out.push_str(" {\n");
        }
        for (input_name, v) in g.inputs() {
            let _ = writeln!(self.out, "{pad}{}: {} = input {input_name:?}", name(*v), self.ty(g.ty(*v), &name));
        }
        for c in g.constants() {
            let mut line = format!("{pad}{}: {}", name(c.value), self.ty(g.ty(c.value), &name));
            self.mem(g, c.value, &mut line);
            line.push_str(" = const ");
            self.const_data(g.ty(c.value), &c.data, &mut line);
            self.out.push_str(&line);
            self.out.push('\n');
        }
        for (_, node) in g.nodes() {
            let mut line = pad.clone();
            for (i, &r) in node.outputs.iter().enumerate() {
                if i > 0 {
                    line.push_str(", ");
                }
                let _ = write!(line, "{}: {}", name(r), self.ty(g.ty(r), &name));
                self.mem(g, r, &mut line);
            }
            let _ = write!(line, " = {}", node.op.name());
            for (i, &v) in node.inputs.iter().enumerate() {
                line.push_str(if i == 0 { " " } else { ", " });
                line.push_str(&name(v));
            }
            let attrs = op_attrs(&node.op);
            if !attrs.is_empty() {
                line.push_str(" {");
                for (i, (k, a)) in attrs.iter().enumerate() {
                    if i > 0 {
                        line.push_str(", ");
                    }
                    let _ = write!(line, "{k} = ");
                    a.write(&mut line);
                }
                line.push('}');
            }
            if let Some(p) = node.placement {
                let _ = write!(line, " @{p}");
            }
            self.out.push_str(&line);
            match &node.body {
                Some(body) => {
                    self.out.push_str(" region {\n");
                    self.graph(body, indent + 1, false);
                    let _ = writeln!(self.out, "{pad}}}");
                }
                None => self.out.push('\n'),
            }
        }
        for (output_name, v) in g.outputs() {
            let _ = writeln!(self.out, "{pad}output {output_name:?} = {}", name(*v));
        }
        if top {
            self.out.push_str("}\n");
        }
    }

    fn ty(&self, t: &TensorType, name: &dyn Fn(Value) -> String) -> String {
        let mut s = t.to_string();
        if let Some(q) = &t.quant {
            s.push_str(" quant(");
            match q.granularity {
                QuantGranularity::PerTensor => s.push_str("tensor"),
                QuantGranularity::PerAxis { axis } => {
                    let _ = write!(s, "axis({axis})");
                }
                QuantGranularity::PerBlock { axis, size } => {
                    let _ = write!(s, "block(axis={axis}, size={size})");
                }
            }
            let _ = write!(s, ", scale={}", name(q.scale));
            if let Some(z) = q.zero_point {
                let _ = write!(s, ", zero={}", name(z));
            }
            if let Some(o) = q.offset {
                let _ = write!(s, ", offset={}", name(o));
            }
            s.push(')');
        }
        s
    }

    fn mem(&self, g: &Graph, v: Value, line: &mut String) {
        if let Some(m) = g.value(v).mem {
            let _ = write!(line, " mem(arena={}, offset={})", m.arena, m.offset);
        }
    }

    fn const_data(&mut self, ty: &TensorType, data: &ConstData, line: &mut String) {
        let bytes = match data {
            ConstData::Summary { bytes, hash } => {
                let _ = write!(line, "summary(bytes={bytes}, hash=0x{hash:016x})");
                return;
            }
            ConstData::Bytes(b) => b,
        };
        let dims = ty.shape.as_static();
        let numel = dims.as_ref().map(|d| d.iter().product::<usize>());
        if numel.is_some_and(|n| n <= self.opts.inline_elements) {
            if let Ok(t) = Tensor::from_bytes(ty.dtype, dims.as_deref().unwrap_or(&[]), bytes) {
                line.push('[');
                t.write_elements(line);
                line.push(']');
                return;
            }
        }
        match self.opts.weights {
            WeightMode::Inline => {
                line.push_str("hex\"");
                for b in bytes.iter() {
                    let _ = write!(line, "{b:02x}");
                }
                line.push('"');
            }
            WeightMode::Summary => {
                let _ = write!(line, "summary(bytes={}, hash=0x{:016x})", bytes.len(), fnv1a64(bytes));
            }
            WeightMode::Sidecar => {
                let offset = self.sidecar.len().next_multiple_of(SIDECAR_ALIGN);
                self.sidecar.resize(offset, 0);
                self.sidecar.extend_from_slice(bytes);
                let _ = write!(line, "blob(offset={offset}, bytes={}, hash=0x{:016x})", bytes.len(), fnv1a64(bytes));
            }
        }
    }
}

/// The text of a value's definition kind, for messages (`input "x"`, `const`, `add`).
pub fn describe_def(g: &Graph, v: Value) -> String {
    match &g.value(v).def {
        ValueDef::Input(i) => format!("input {:?}", g.inputs()[*i].0),
        ValueDef::Const(_) => "const".into(),
        ValueDef::Result(n, _) => g.node(*n).op.name().to_string(),
    }
}

/// A graph name as the text format's identifier (`[A-Za-z_][A-Za-z0-9_.]*`): other characters
/// become `_` (a GGUF model's `general.name` is free text such as `Gemma 3 270m`).
fn ident(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }).collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_text_graph_names_print_as_identifiers_that_parse_back() {
        for (name, printed) in [("Gemma 3 270m", "Gemma_3_270m"), ("3-layer", "_3_layer"), ("ok_name.v2", "ok_name.v2")]
        {
            let mut g = crate::Graph::new(name);
            let x = g.add_input("x", crate::TensorType::with_static(crate::DType::F32, &[2]));
            g.add_output("y", x);
            let text = crate::print(&g);
            assert!(text.starts_with(&format!("graph @{printed} {{")), "{text}");
            let back = crate::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(crate::print(&back), text);
        }
    }
}
