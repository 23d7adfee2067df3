//! `fuse`: producer-consumer fusion into kernel regions, so targets lower one kernel at a time
//! and intermediate tensors never reach memory. A group starts at any compute op (a matmul, a
//! normalization, an elementwise op) and grows through elementwise consumers (unary, binary,
//! `where`, `cast`) while the value passed along has exactly one user, is not a graph output,
//! and is not quantized. Groups of one node are left alone. The kernel's body is the group's
//! nodes; its operands are the values the group reads from outside; its one result is the last
//! node's. It takes the place of the group's last node, so every operand is already defined.
//! Layout ops, constants and existing kernels are never fused, nor (for now) nodes that read a
//! value of quantized type, whose parameters live in the outer graph.

use crate::manager::{Pass, PassError, PassReport};
use std::collections::HashMap;
use tessera_ir::{Graph, Node, Op, Value, ValueDef};

pub struct Fuse;

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast { .. })
}

fn can_start(op: &Op) -> bool {
    is_elementwise(op)
        || matches!(
            op,
            Op::MatMul
                | Op::Gemm { .. }
                | Op::QMatMul
                | Op::MatMulInteger { .. }
                | Op::Dequantize { .. }
                | Op::LayerNorm { .. }
                | Op::RmsNorm { .. }
                | Op::Softmax { .. }
                | Op::LogSoftmax { .. }
                | Op::Reduce { .. }
                | Op::Attention { .. }
        )
}

/// Groups of nodes to fuse, each in execution order.
pub fn find_groups(g: &Graph) -> Vec<Vec<Node>> {
    let users = g.users();
    let outputs: Vec<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
    let mut group_of: HashMap<Node, usize> = HashMap::new();
    let mut groups: Vec<Vec<Node>> = Vec::new();
    for (n, nd) in g.nodes() {
        // A kernel body is a graph of its own, without the outer constants that quantized types
        // name: nodes reading a quantized value stay outside kernels (for now).
        let reads_quantized = nd.inputs.iter().any(|&v| g.ty(v).quant.is_some());
        if nd.body.is_some() || nd.outputs.len() != 1 || reads_quantized {
            continue;
        }
        // Join the group of an operand's producer when that operand flows only here.
        let join = if is_elementwise(&nd.op) {
            nd.inputs.iter().find_map(|&v| match g.value(v).def {
                ValueDef::Result(p, 0) => {
                    let gi = *group_of.get(&p)?;
                    let last = *groups[gi].last()?;
                    let single = users[v.index()].len() == 1 && !outputs.contains(&v) && g.ty(v).quant.is_none();
                    (p == last && single).then_some(gi)
                }
                _ => None,
            })
        } else {
            None
        };
        match join {
            Some(gi) => {
                groups[gi].push(n);
                group_of.insert(n, gi);
            }
            None if can_start(&nd.op) => {
                group_of.insert(n, groups.len());
                groups.push(vec![n]);
            }
            None => {}
        }
    }
    groups.into_iter().filter(|grp| grp.len() > 1).collect()
}

impl Pass for Fuse {
    fn name(&self) -> &'static str {
        "fuse"
    }

    fn description(&self) -> &'static str {
        "fuse single-use elementwise consumers into their producer as kernel regions"
    }

    fn run(&self, g: &mut Graph) -> Result<PassReport, PassError> {
        let groups = find_groups(g);
        if groups.is_empty() {
            return Ok(PassReport::changed(false).note("no groups"));
        }
        let mut member: HashMap<Node, usize> = HashMap::new();
        for (gi, grp) in groups.iter().enumerate() {
            for &n in grp {
                member.insert(n, gi);
            }
        }
        // Rebuild: copy inputs and constants, then nodes in order, emitting each group at its last node.
        let mut out = Graph::new(&g.name);
        let mut map: Vec<Option<Value>> = vec![None; g.n_values()];
        for (name, v) in g.inputs() {
            map[v.index()] = Some(out.add_input(name, g.ty(*v).clone()));
        }
        for c in g.constants() {
            map[c.value.index()] = Some(out.add_const(g.ty(c.value).clone(), c.data.clone()));
        }
        let fix_quant = |out: &mut Graph, map: &[Option<Value>]| {
            for (old, new) in map.iter().enumerate().filter_map(|(i, m)| m.map(|m| (i, m))) {
                if let Some(q) = &g.values().nth(old).expect("value").1.ty.quant {
                    let mut q = q.clone();
                    q.scale = map[q.scale.index()].unwrap_or(q.scale);
                    q.zero_point = q.zero_point.map(|z| map[z.index()].unwrap_or(z));
                    q.offset = q.offset.map(|o| map[o.index()].unwrap_or(o));
                    out.value_mut(new).ty.quant = Some(q);
                }
            }
        };
        let mut names = Vec::new();
        for (n, nd) in g.nodes() {
            match member.get(&n) {
                Some(&gi) if *groups[gi].last().expect("non-empty") != n => continue,
                Some(&gi) => {
                    let grp = &groups[gi];
                    let inside: Vec<Value> = grp.iter().flat_map(|&m| g.node(m).outputs.clone()).collect();
                    let mut body = Graph::new("body");
                    let mut body_map: HashMap<Value, Value> = HashMap::new();
                    let mut operands = Vec::new();
                    for &m in grp {
                        for &v in &g.node(m).inputs {
                            if !inside.contains(&v) && !body_map.contains_key(&v) {
                                let bv = body.add_input(&format!("p{}", operands.len()), g.ty(v).plain());
                                body_map.insert(v, bv);
                                operands.push(map[v.index()].expect("defined before the group"));
                            }
                        }
                    }
                    let mut op_names = Vec::new();
                    for &m in grp {
                        let md = g.node(m);
                        let ins = md.inputs.iter().map(|v| body_map[v]).collect();
                        let types = md.outputs.iter().map(|v| g.ty(*v).plain()).collect();
                        let bn = body.add_node(md.op.clone(), ins, types);
                        for (o, bo) in md.outputs.iter().zip(body.node(bn).outputs.clone()) {
                            body_map.insert(*o, bo);
                        }
                        op_names.push(md.op.name());
                    }
                    let result = g.node(n).outputs[0];
                    body.add_output("r", body_map[&result]);
                    let name = op_names.join("_");
                    let kn = out.add_node(Op::Kernel { name: name.clone() }, operands, vec![g.ty(result).plain()]);
                    out.node_mut(kn).body = Some(Box::new(body));
                    out.node_mut(kn).placement = g.node(grp[0]).placement;
                    map[result.index()] = Some(out.node(kn).outputs[0]);
                    names.push(name);
                }
                None => {
                    let ins = nd.inputs.iter().map(|v| map[v.index()].expect("defined before use")).collect();
                    let types = nd.outputs.iter().map(|v| g.ty(*v).clone()).collect();
                    let nn = out.add_node(nd.op.clone(), ins, types);
                    out.node_mut(nn).placement = nd.placement;
                    out.node_mut(nn).body = nd.body.clone();
                    for (o, no) in nd.outputs.iter().zip(out.node(nn).outputs.clone()) {
                        map[o.index()] = Some(no);
                    }
                }
            }
        }
        for (name, v) in g.outputs() {
            out.add_output(name, map[v.index()].expect("outputs are defined"));
        }
        fix_quant(&mut out, &map);
        let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for n in &names {
            *counts.entry(n.as_str()).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        *g = out;
        Ok(PassReport::changed(true).note(format!("{} kernels: {}", names.len(), summary.join(", "))))
    }
}
