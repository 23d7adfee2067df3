//! `simplify-layout`: removes layout ops that do nothing and merges chains: `identity`;
//! `cast` to the same dtype; `reshape`/`expand` to the operand's own type; `transpose` of a
//! `transpose` (one perm, or none when they cancel); a `transpose` that moves only unit axes
//! becomes a `reshape`; chains of `reshape`, `squeeze` and `unsqueeze` become one reshape to the
//! final type (when that type has no `?` dims, and for a final squeeze or unsqueeze at most one
//! symbolic dim, which the reshape infers); a reshape or expand by a constant shape operand
//! becomes the attribute form. Run `dce` after it.

use crate::manager::{Pass, PassError, PassReport};
use tessera_ir::{Dim, Graph, Node, Op, TargetDim, ValueDef};

pub struct SimplifyLayout;

fn producer(g: &Graph, v: tessera_ir::Value) -> Option<Node> {
    match g.value(v).def {
        ValueDef::Result(n, 0) if g.node(n).outputs.len() == 1 => Some(n),
        _ => None,
    }
}

impl Pass for SimplifyLayout {
    fn name(&self) -> &'static str {
        "simplify-layout"
    }

    fn description(&self) -> &'static str {
        "drop no-op reshapes, transposes, casts and identities; merge reshape and transpose chains"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let mut rewrites = 0;
        let nodes: Vec<Node> = g.nodes().map(|(n, _)| n).collect();
        for n in nodes {
            let nd = g.node(n).clone();
            let (x, y) = (nd.inputs.first().copied(), nd.outputs.first().copied());
            let (Some(x), Some(y)) = (x, y) else { continue };
            let same_type = g.ty(x).dtype == g.ty(y).dtype
                && g.ty(x).shape == g.ty(y).shape
                && !g.ty(y).shape.0.contains(&Dim::Unknown);
            let noop = match &nd.op {
                Op::Identity => true,
                Op::Cast { to } => *to == g.ty(x).dtype,
                Op::Reshape { shape: Some(_) }
                | Op::Expand { shape: Some(_) }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. } => nd.inputs.len() == 1 && same_type,
                Op::Transpose { perm } => perm.iter().enumerate().all(|(i, &p)| i == p),
                _ => false,
            };
            if noop && g.ty(x).quant.is_none() {
                g.replace_uses(y, x);
                rewrites += 1;
                continue;
            }
            // A reshape or expand by a constant shape operand takes the attribute form.
            if let (Op::Reshape { shape: None } | Op::Expand { shape: None }, Some(&s)) = (&nd.op, nd.inputs.get(1)) {
                if let Some(t) = tessera_ir::infer::const_tensor(g, s) {
                    if let Some(ints) = t.as_int() {
                        let target: Vec<TargetDim> = ints.iter().map(|&d| TargetDim::Int(d)).collect();
                        let node = g.node_mut(n);
                        node.op = if matches!(nd.op, Op::Reshape { .. }) {
                            Op::Reshape { shape: Some(target) }
                        } else {
                            Op::Expand { shape: Some(target) }
                        };
                        node.inputs.truncate(1);
                        rewrites += 1;
                        continue;
                    }
                }
            }
            // Axes, bounds and sizes given as constant operands take the attribute form, whose
            // result types inference can name.
            if let Some(op) = attribute_form(g, &nd.op, &nd.inputs) {
                let node = g.node_mut(n);
                node.op = op;
                node.inputs.truncate(1);
                rewrites += 1;
                continue;
            }
            // A transpose that moves only unit axes (the others keep their order) moves no data:
            // it is a reshape to its result type.
            if let Op::Transpose { perm } = &nd.op {
                let xd = &g.ty(x).shape.0;
                let moved: Vec<usize> = perm.iter().copied().filter(|&p| xd.get(p) != Some(&Dim::Static(1))).collect();
                if moved.windows(2).all(|w| w[0] < w[1]) {
                    if let Some(target) = reshape_target(&g.ty(y).shape.0) {
                        let node = g.node_mut(n);
                        node.op = Op::Reshape { shape: Some(target) };
                        rewrites += 1;
                        continue;
                    }
                }
            }
            match (&nd.op, producer(g, x)) {
                (Op::Transpose { perm: outer }, Some(m)) => {
                    if let Op::Transpose { perm: inner } = &g.node(m).op {
                        let composed: Vec<usize> = outer.iter().map(|&p| inner[p]).collect();
                        let src = g.node(m).inputs[0];
                        if composed.iter().enumerate().all(|(i, &p)| i == p) {
                            g.replace_uses(y, src);
                        } else {
                            let node = g.node_mut(n);
                            node.op = Op::Transpose { perm: composed };
                            node.inputs[0] = src;
                        }
                        rewrites += 1;
                    }
                }
                (Op::Reshape { shape: Some(_) } | Op::Squeeze { .. } | Op::Unsqueeze { .. }, Some(m))
                    if nd.inputs.len() == 1 =>
                {
                    // A chain of reshapes, squeezes and unsqueezes: one reshape to the final type.
                    let reinterprets = |op: &Op| {
                        matches!(op, Op::Reshape { shape: Some(_) } | Op::Squeeze { .. } | Op::Unsqueeze { .. })
                    };
                    let inner_is_reshape = reinterprets(&g.node(m).op) && g.node(m).inputs.len() == 1;
                    let target = match &nd.op {
                        Op::Reshape { .. } => {
                            g.ty(y).shape.0.iter().map(|d| (*d != Dim::Unknown).then(|| TargetDim::from(d))).collect()
                        }
                        _ => reshape_target(&g.ty(y).shape.0),
                    };
                    if let (true, Some(target)) = (inner_is_reshape, target) {
                        let src = g.node(m).inputs[0];
                        let node = g.node_mut(n);
                        node.op = Op::Reshape { shape: Some(target) };
                        node.inputs[0] = src;
                        rewrites += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(PassReport::changed(rewrites > 0).note(format!("{rewrites} rewrites")))
    }
}

/// A reshape target for a result type whose dims are static but for at most one (which the
/// reshape infers: `-1`); `None` otherwise.
fn reshape_target(dims: &[Dim]) -> Option<Vec<TargetDim>> {
    if dims.iter().filter(|d| !matches!(d, Dim::Static(_))).count() > 1 {
        return None;
    }
    Some(
        dims.iter()
            .map(|d| match d {
                Dim::Static(n) => TargetDim::Int(*n as i64),
                _ => TargetDim::Int(-1),
            })
            .collect(),
    )
}

/// The attribute form of a squeeze, unsqueeze, reduce, slice or split whose axes, bounds or
/// sizes operands are all constants (the two forms mean the same; see `tessera_ir::Op`).
fn attribute_form(g: &Graph, op: &Op, inputs: &[tessera_ir::Value]) -> Option<Op> {
    let operand_form = match op {
        Op::Squeeze { axes } | Op::Unsqueeze { axes } | Op::Reduce { axes, .. } => axes.is_empty(),
        Op::Slice { starts, .. } => starts.is_empty(),
        Op::Split { sizes, .. } => sizes.iter().all(|&s| s == 0),
        _ => false,
    };
    // Only short operands are read (never a weight).
    let short = |v: &tessera_ir::Value| g.ty(*v).shape.static_numel().is_some_and(|n| n <= 64);
    if !operand_form || inputs.len() < 2 || !inputs[1..].iter().all(short) {
        return None;
    }
    let ints = |v: tessera_ir::Value| -> Option<Vec<i64>> {
        let t = tessera_ir::infer::const_tensor(g, v)?;
        Some(t.as_int()?.iter().copied().collect())
    };
    let operands: Option<Vec<Vec<i64>>> = inputs[1..].iter().map(|&v| ints(v)).collect();
    let operands = operands?;
    Some(match op {
        Op::Squeeze { axes } if axes.is_empty() && !operands[0].is_empty() => Op::Squeeze { axes: operands[0].clone() },
        Op::Unsqueeze { axes } if axes.is_empty() && !operands[0].is_empty() => {
            Op::Unsqueeze { axes: operands[0].clone() }
        }
        Op::Reduce { op, axes, keepdims } if axes.is_empty() && !operands[0].is_empty() => {
            Op::Reduce { op: *op, axes: operands[0].clone(), keepdims: *keepdims }
        }
        Op::Slice { starts, .. } if starts.is_empty() && operands.len() >= 2 => {
            let n = operands[0].len();
            let axes = operands.get(2).cloned().unwrap_or_else(|| (0..n as i64).collect());
            let steps = operands.get(3).cloned().unwrap_or_else(|| vec![1; n]);
            if operands[1].len() != n || axes.len() != n || steps.len() != n {
                return None;
            }
            Op::Slice {
                starts: operands[0].iter().map(|&v| TargetDim::Int(v)).collect(),
                ends: operands[1].iter().map(|&v| TargetDim::Int(v)).collect(),
                axes,
                steps,
            }
        }
        Op::Split { axis, sizes } if sizes.iter().all(|&s| s == 0) && operands[0].len() == sizes.len() => {
            if operands[0].iter().any(|&s| s < 0) {
                return None;
            }
            Op::Split { axis: *axis, sizes: operands[0].iter().map(|&s| s as u64).collect() }
        }
        _ => return None,
    })
}
