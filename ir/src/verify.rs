//! The verifier: checks a graph's types, shapes, SSA order, constants and quantization, and
//! reports every error it finds, each with its location and the offending text.

use crate::graph::{Graph, Span, ValueDef};
use crate::infer::{check_quant, infer_types};
use crate::shape::Dim;
use crate::types::TensorType;
use crate::write::describe_def;
use crate::{Node, Value};
use std::collections::HashSet;
use std::fmt;

/// What an error is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Location {
    Graph,
    /// The graph output at this position.
    Output(usize),
    Node(Node),
    Value(Value),
    /// An error inside the body of a kernel node: the kernel, then the location in its body.
    InKernel(Node, Box<Location>),
}

/// One verifier error.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    pub location: Location,
    /// Line and column in the parsed text, when the graph came from text.
    pub span: Option<Span>,
    /// The offending text (the source line, or a description of the node).
    pub context: String,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(span) = self.span {
            write!(f, "{span}: ")?;
        }
        write!(f, "{}", self.message)?;
        if !self.context.is_empty() {
            write!(f, "\n  | {}", self.context)?;
        }
        Ok(())
    }
}

/// Every error the verifier found.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "the graph has {n} error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Verifies a graph; Ok when it is well formed.
pub fn verify(g: &Graph) -> Result<(), VerifyErrors> {
    let mut errors = Vec::new();
    verify_into(g, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(errors))
    }
}

fn verify_into(g: &Graph, errors: &mut Vec<VerifyError>) {
    let node_err = |errors: &mut Vec<VerifyError>, n: Node, message: String| {
        let span = g.node_span(n);
        let context = span
            .and_then(|s| g.source.as_ref()?.line_text(s).map(str::to_string))
            .unwrap_or_else(|| format!("{n} ({})", g.node(n).op.name()));
        errors.push(VerifyError { location: Location::Node(n), span, context, message });
    };
    let value_err = |errors: &mut Vec<VerifyError>, v: Value, message: String| {
        let span = g.value_span(v);
        let context = span
            .and_then(|s| g.source.as_ref()?.line_text(s).map(str::to_string))
            .unwrap_or_else(|| format!("{v} ({})", describe_def(g, v)));
        errors.push(VerifyError { location: Location::Value(v), span, context, message });
    };
    let graph_err = |errors: &mut Vec<VerifyError>, message: String| {
        errors.push(VerifyError {
            location: Location::Graph,
            span: None,
            context: format!("graph @{}", g.name),
            message,
        });
    };

    // Names.
    let mut seen = HashSet::new();
    for (name, v) in g.inputs() {
        if !seen.insert(name.as_str()) {
            value_err(errors, *v, format!("input name {name:?} is used twice"));
        }
    }
    let output_err = |errors: &mut Vec<VerifyError>, i: usize, message: String| {
        let span = g.source.as_ref().and_then(|s| s.outputs.get(i).copied());
        let context = span
            .and_then(|s| g.source.as_ref()?.line_text(s).map(str::to_string))
            .unwrap_or_else(|| format!("output {:?}", g.outputs()[i].0));
        errors.push(VerifyError { location: Location::Output(i), span, context, message });
    };
    let mut seen = HashSet::new();
    for (i, (name, v)) in g.outputs().iter().enumerate() {
        if !seen.insert(name.as_str()) {
            output_err(errors, i, format!("output name {name:?} is used twice"));
        }
        if !g.contains(*v) {
            output_err(errors, i, format!("output {name:?} names {v}, which does not exist"));
        }
    }
    if g.outputs().is_empty() {
        graph_err(errors, "the graph has no outputs".into());
    }

    // Types of every value: quant annotations and constants.
    for (v, data) in g.values() {
        if let Err(e) = check_quant(g, &data.ty) {
            value_err(errors, v, e);
        }
        if let ValueDef::Const(id) = data.def {
            let Some(dims) = data.ty.shape.as_static() else {
                value_err(errors, v, format!("constant type {} must have a static shape", data.ty));
                continue;
            };
            let expected = crate::tensor::checked_numel(&dims).map(|n| data.ty.dtype.storage_bytes(n));
            let actual = g.constant(id).data.byte_len();
            match expected {
                Ok(e) if e as u64 == actual => {}
                Ok(e) => {
                    value_err(errors, v, format!("constant of type {} needs {e} bytes, it holds {actual}", data.ty))
                }
                Err(e) => value_err(errors, v, e.to_string()),
            }
        }
    }

    // Nodes in order: operands defined earlier, arity, results.
    let mut defined: HashSet<Value> =
        g.inputs().iter().map(|(_, v)| *v).chain(g.constants().iter().map(|c| c.value)).collect();
    for (n, node) in g.nodes() {
        let mut operands_ok = true;
        for &v in &node.inputs {
            if !g.contains(v) {
                node_err(errors, n, format!("operand {v} does not exist"));
                operands_ok = false;
            } else if !defined.contains(&v) {
                node_err(errors, n, format!("operand {v} is used before it is defined"));
                operands_ok = false;
            }
        }
        if let Some(body) = &node.body {
            let mut inner = Vec::new();
            verify_into(body, &mut inner);
            for e in inner {
                errors.push(VerifyError {
                    location: Location::InKernel(n, Box::new(e.location)),
                    span: e.span,
                    context: e.context,
                    message: format!("in kernel {n}: {}", e.message),
                });
            }
        }
        if operands_ok {
            match infer_types(g, &node.op, &node.inputs, node.body.as_deref()) {
                Ok(types) if types.len() != node.outputs.len() => node_err(
                    errors,
                    n,
                    format!(
                        "`{}` defines {} results, {} are declared",
                        node.op.name(),
                        types.len(),
                        node.outputs.len()
                    ),
                ),
                Ok(types) => {
                    for (i, (inferred, &r)) in types.iter().zip(&node.outputs).enumerate() {
                        let declared = g.ty(r);
                        if !fits(inferred, declared) {
                            let which = if types.len() > 1 { format!("result {i} type") } else { "result type".into() };
                            node_err(errors, n, format!("{which} {declared} does not match the inferred {inferred}"));
                        }
                    }
                }
                Err(e) => node_err(errors, n, e),
            }
        }
        defined.extend(node.outputs.iter().copied());
    }
}

/// Whether a declared type agrees with the inferred one (`?` on either side matches any dim).
fn fits(inferred: &TensorType, declared: &TensorType) -> bool {
    inferred.dtype == declared.dtype
        && inferred.rank() == declared.rank()
        && inferred
            .shape
            .0
            .iter()
            .zip(&declared.shape.0)
            .all(|(i, d)| i == d || *i == Dim::Unknown || *d == Dim::Unknown)
}
