//! Half-precision products and normalizations: the interpreter computes every float op in f32
//! and rounds its results to the result's dtype, so a `matmul`, `gemm`, `attention`, `softmax`,
//! `log_softmax`, `layer_norm` or `rms_norm` on f16 or bf16 values is the same op on f32 values
//! between casts (f16 and bf16 values are exact in f32; the final cast rounds as the
//! interpreter does). The CPU target's kernels for those ops are f32, so `half_to_f32` rewrites
//! them that way before lowering. Graphs with regions or quantized types are left as they are
//! (their half ops stay unsupported).

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

/// The graph with every f32-only op on half values computed in f32 between casts, or None when
/// there is nothing to rewrite (or the graph is outside what the rewrite handles).
pub(crate) fn half_to_f32(g: &Graph) -> Option<Graph> {
    let needs =
        g.nodes().any(|(_, nd)| f32_only(&nd.op) && nd.inputs.iter().chain(&nd.outputs).any(|v| half(g.ty(*v).dtype)));
    let simple = g.nodes().all(|(_, nd)| nd.body.is_none()) && g.values().all(|(_, vd)| vd.ty.quant.is_none());
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
