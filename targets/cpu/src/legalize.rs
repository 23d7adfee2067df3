//! Half-precision products and normalizations: the interpreter computes every float op in f32
//! and rounds its results to the result's dtype, so a `matmul`, `gemm`, `attention`, `softmax`,
//! `log_softmax`, `layer_norm` or `rms_norm` on f16 or bf16 values is the same op on f32 values
//! between casts (f16 and bf16 values are exact in f32; the final cast rounds as the
//! interpreter does). The CPU target's kernels for those ops are f32, so `legalize` rewrites
//! them that way before lowering. It also puts back as separate nodes the regions the CPU target
//! has no single kernel for. Graphs with quantized types are left as they are.

use std::collections::HashMap;

use tessera_ir::{DType, Graph, Op, TensorType, Value, ValueDef};

fn half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

fn f32_only(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul
            | Op::Gemm { .. }
            | Op::Attention { .. }
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::LayerNorm { .. }
            | Op::RmsNorm { .. }
    )
}

/// A region the CPU target has no kernel for: its head is not a product and its result has
/// another shape than the head's (a reduction whose result a later op broadcasts back, as in
/// a softmax written out), so the tail cannot run in place over the head's result.
fn unfusable(g: &Graph, nd: &tessera_ir::NodeData) -> bool {
    let Some(body) = nd.body.as_deref() else { return false };
    let Some((_, head)) = body.nodes().next() else { return false };
    let product = matches!(head.op, Op::MatMul | Op::Gemm { .. } | Op::MatMulInteger { .. } | Op::QMatMul);
    !product && body.n_nodes() > 1 && !crate::lower::head_fits(body.ty(head.outputs[0]), g.ty(nd.outputs[0]))
}

/// The graph with every f32-only op on half values computed in f32 between casts, and every
/// region the CPU target cannot run as one kernel (see `unfusable`) put back as its nodes; None
/// when there is nothing to rewrite (or the graph is outside what the rewrite handles: quantized
/// types, half values inside regions).
pub(crate) fn legalize(g: &Graph) -> Option<Graph> {
    let needs = g.nodes().any(|(_, nd)| {
        unfusable(g, nd) || (f32_only(&nd.op) && nd.inputs.iter().chain(&nd.outputs).any(|v| half(g.ty(*v).dtype)))
    });
    let simple = g.values().all(|(_, vd)| vd.ty.quant.is_none());
    if !needs || !simple {
        return None;
    }
    let mut out = Graph::new(&g.name);
    let mut map: HashMap<Value, Value> = HashMap::new();
    for (name, v) in g.inputs() {
        map.insert(*v, out.add_input(name, g.ty(*v).clone()));
    }
    for c in g.constants() {
        map.insert(c.value, out.add_const(g.ty(c.value).clone(), c.data.clone()));
    }
    for (_, nd) in g.nodes() {
        let ins: Vec<Value> = nd.inputs.iter().map(|v| map.get(v).copied()).collect::<Option<_>>()?;
        if unfusable(g, nd) {
            // The body's nodes in place of the region (regions do not nest).
            let body = nd.body.as_deref()?;
            let mut inner: HashMap<Value, Value> = HashMap::new();
            for ((_, bv), &outer) in body.inputs().iter().zip(&ins) {
                inner.insert(*bv, outer);
            }
            for (_, bn) in body.nodes() {
                if bn.body.is_some() {
                    return None;
                }
                let bins: Vec<Value> = bn.inputs.iter().map(|v| inner.get(v).copied()).collect::<Option<_>>()?;
                let n = out.add_node(bn.op.clone(), bins, bn.outputs.iter().map(|v| body.ty(*v).clone()).collect());
                for (old, new) in bn.outputs.iter().zip(out.node(n).outputs.clone()) {
                    inner.insert(*old, new);
                }
            }
            for ((_, bv), old) in body.outputs().iter().zip(&nd.outputs) {
                map.insert(*old, *inner.get(bv)?);
            }
            continue;
        }
        if nd.body.is_some() {
            // Regions are copied whole; half values inside them are not rewritten.
            let n = out.add_node(nd.op.clone(), ins, nd.outputs.iter().map(|v| g.ty(*v).clone()).collect());
            out.node_mut(n).body = nd.body.clone();
            for (old, new) in nd.outputs.iter().zip(out.node(n).outputs.clone()) {
                map.insert(*old, new);
            }
            continue;
        }
        let wrap = f32_only(&nd.op) && nd.inputs.iter().chain(&nd.outputs).any(|v| half(g.ty(*v).dtype));
        if !wrap {
            let n = out.add_node(nd.op.clone(), ins, nd.outputs.iter().map(|v| g.ty(*v).clone()).collect());
            for (old, new) in nd.outputs.iter().zip(out.node(n).outputs.clone()) {
                map.insert(*old, new);
            }
            continue;
        }
        let mut wide = Vec::with_capacity(ins.len());
        for (&old, &new) in nd.inputs.iter().zip(&ins) {
            let t = g.ty(old);
            wide.push(if half(t.dtype) {
                let ty = TensorType::new(DType::F32, t.shape.clone());
                let c = out.add_node(Op::Cast { to: DType::F32 }, vec![new], vec![ty]);
                out.node(c).outputs[0]
            } else {
                new
            });
        }
        let types: Vec<TensorType> = nd
            .outputs
            .iter()
            .map(|v| {
                let t = g.ty(*v);
                if half(t.dtype) {
                    TensorType::new(DType::F32, t.shape.clone())
                } else {
                    t.clone()
                }
            })
            .collect();
        let n = out.add_node(nd.op.clone(), wide, types);
        for (old, new) in nd.outputs.iter().zip(out.node(n).outputs.clone()) {
            let t = g.ty(*old);
            let v = if half(t.dtype) {
                let c = out.add_node(Op::Cast { to: t.dtype }, vec![new], vec![t.clone()]);
                out.node(c).outputs[0]
            } else {
                new
            };
            map.insert(*old, v);
        }
    }
    for (name, v) in g.outputs() {
        out.add_output(name, *map.get(v)?);
    }
    debug_assert!(g.values().all(|(v, vd)| !matches!(vd.def, ValueDef::Result(..)) || map.contains_key(&v)));
    Some(out)
}

/// `qmatmul` followed by elementwise ops (bias, GELU, residual) as one region, as the `fuse`
/// pass does for `matmul`: `fuse` leaves nodes that read a quantized value outside regions
/// (a region body cannot name the outer graph's quantization parameters), but the CPU target
/// resolves a region's weight from the outer graph, so the body only needs the weight's shape.
/// A chain grows through elementwise users while the value passed along has one user and is
/// not a graph output. None when there is no such chain.
pub(crate) fn fuse_qmatmul_chains(g: &Graph) -> Option<Graph> {
    let users = g.users();
    let outputs: Vec<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
    let elementwise = |op: &Op| matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast { .. });
    let mut chains: Vec<Vec<tessera_ir::Node>> = Vec::new();
    for (n, nd) in g.nodes() {
        if nd.op != Op::QMatMul || nd.body.is_some() || nd.outputs.len() != 1 {
            continue;
        }
        let mut chain = vec![n];
        let mut v = nd.outputs[0];
        while let [m] = users[v.index()].as_slice() {
            let md = g.node(*m);
            let plain = md.inputs.iter().all(|x| g.ty(*x).quant.is_none());
            // An elementwise op, or a region of them that `fuse` already formed.
            let ew_region = md.body.as_deref().is_some_and(|b| {
                b.outputs().len() == 1 && b.nodes().all(|(_, bn)| elementwise(&bn.op) && bn.body.is_none())
            });
            let ok = (elementwise(&md.op) && md.body.is_none()) || ew_region;
            if outputs.contains(&v) || !ok || md.outputs.len() != 1 || !plain {
                break;
            }
            chain.push(*m);
            v = md.outputs[0];
        }
        // A node joins one chain only (an add of two products would otherwise end both).
        let taken: Vec<tessera_ir::Node> = chains.iter().flatten().copied().collect();
        if let Some(cut) = chain.iter().position(|m| taken.contains(m)) {
            chain.truncate(cut);
        }
        if chain.len() > 1 {
            chains.push(chain);
        }
    }
    if chains.is_empty() {
        return None;
    }
    let mut out = g.clone();
    let mut region_at: HashMap<tessera_ir::Node, tessera_ir::Node> = HashMap::new();
    // The value each earlier region now gives in place of its chain's last value.
    let mut renamed: HashMap<Value, Value> = HashMap::new();
    for chain in &chains {
        let inside: Vec<Value> = chain.iter().flat_map(|&n| g.node(n).outputs.clone()).collect();
        let mut ext: Vec<Value> = Vec::new();
        for &n in chain {
            for &v in &g.node(n).inputs {
                if !inside.contains(&v) && !ext.contains(&v) {
                    ext.push(v);
                }
            }
        }
        let mut body = Graph::new("region");
        let mut map: HashMap<Value, Value> = HashMap::new();
        for (i, &v) in ext.iter().enumerate() {
            map.insert(v, body.add_input(&format!("p{i}"), g.ty(v).plain()));
        }
        for &n in chain {
            let nd = g.node(n);
            let ins: Vec<Value> = nd.inputs.iter().map(|v| map[v]).collect();
            match nd.body.as_deref() {
                // A region's nodes, its inputs bound to what the region reads.
                Some(inner) => {
                    let mut local: HashMap<Value, Value> = HashMap::new();
                    for ((_, bv), &x) in inner.inputs().iter().zip(&ins) {
                        local.insert(*bv, x);
                    }
                    for (_, bn) in inner.nodes() {
                        let bins: Vec<Value> = bn.inputs.iter().map(|v| local[v]).collect();
                        let types = bn.outputs.iter().map(|v| inner.ty(*v).plain()).collect();
                        let b = body.add_node(bn.op.clone(), bins, types);
                        local.insert(bn.outputs[0], body.node(b).outputs[0]);
                    }
                    map.insert(nd.outputs[0], local[&inner.outputs()[0].1]);
                }
                None => {
                    let b = body.add_node(nd.op.clone(), ins, nd.outputs.iter().map(|v| g.ty(*v).plain()).collect());
                    map.insert(nd.outputs[0], body.node(b).outputs[0]);
                }
            }
        }
        let last = g.node(*chain.last()?).outputs[0];
        body.add_output("r", map[&last]);
        let name: Vec<String> = chain
            .iter()
            .map(|&n| match &g.node(n).op {
                Op::Kernel { name } => name.clone(),
                op => op.name().to_string(),
            })
            .collect();
        let ext: Vec<Value> = ext.iter().map(|v| renamed.get(v).copied().unwrap_or(*v)).collect();
        let k = out.add_node(Op::Kernel { name: name.join("_") }, ext, vec![g.ty(last).clone()]);
        out.node_mut(k).body = Some(Box::new(body));
        let kv = out.node(k).outputs[0];
        out.replace_uses(last, kv);
        renamed.insert(last, kv);
        region_at.insert(*chain.last()?, k);
    }
    // The region runs where its chain's last node ran; the chain's nodes, now unused, go.
    let dead: std::collections::HashSet<tessera_ir::Node> = chains.iter().flatten().copied().collect();
    let mut order = Vec::with_capacity(out.n_nodes());
    for (n, _) in g.nodes() {
        order.push(n);
        if let Some(&k) = region_at.get(&n) {
            order.push(k);
        }
    }
    out.set_order(&order);
    // After set_order, nodes are renumbered by position: keep those not in a chain.
    let mut keep = vec![true; order.len()];
    for (i, n) in order.iter().enumerate() {
        keep[i] = !dead.contains(n) || region_at.values().any(|k| k == n);
    }
    Some(out.compacted(|n| keep[n.index()]))
}
