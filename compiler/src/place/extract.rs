//! A subgraph of kernels as a graph of its own: what one unit compiles and runs.

use std::collections::HashMap;

use tessera_ir::{Bindings, Dim, Graph, Node, Shape, Tensor, TensorType, Value, ValueDef};

/// Nodes of a parent graph made into a graph.
#[derive(Clone, Debug)]
pub struct Extracted {
    pub graph: Graph,
    /// The parent's values the graph's first inputs stand for, in order.
    pub inputs: Vec<Value>,
    /// Symbols no input's shape carries but the nodes use (a slice to `sequence_length` of a
    /// constant): each is one more input, `u8[sym, 0]`, after `inputs`, whose shape binds it.
    pub carriers: Vec<String>,
    /// The parent's values the graph's outputs are, in order.
    pub outputs: Vec<Value>,
}

impl Extracted {
    /// The graph's inputs from the parent's values and the bindings (for the carriers).
    pub fn gather(&self, values: &[Option<Tensor>], b: &Bindings) -> Result<Vec<Tensor>, String> {
        let mut out = Vec::with_capacity(self.inputs.len() + self.carriers.len());
        for v in &self.inputs {
            out.push(values[v.index()].clone().ok_or_else(|| format!("{v} is not computed yet"))?);
        }
        for s in &self.carriers {
            let size = b.get(s).ok_or_else(|| format!("symbol {s} is not bound"))?;
            out.push(Tensor::zeros(tessera_ir::DType::U8, &[size, 0]).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    /// Zeros for every input at the parent's shapes (for pricing runs).
    pub fn zero_inputs(&self, parent: &Graph, shapes: &[Vec<usize>], b: &Bindings) -> Result<Vec<Tensor>, String> {
        let mut values = vec![None; parent.n_values()];
        for v in &self.inputs {
            values[v.index()] =
                Some(Tensor::zeros(parent.ty(*v).dtype, &shapes[v.index()]).map_err(|e| e.to_string())?);
        }
        self.gather(&values, b)
    }
}

/// Symbols of the parent's inputs.
fn input_symbols(g: &Graph) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, v) in g.inputs() {
        for d in g.ty(*v).shape.dims() {
            if let Dim::Sym(s) = d {
                if !out.iter().any(|o| **o == **s) {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

/// Makes `nodes` of `g` (in `g`'s order) a graph: values from outside become inputs (constants
/// stay constants, sharing their bytes), values read outside or graph outputs become outputs.
pub fn extract(g: &Graph, nodes: &[Node]) -> Extracted {
    let inside: std::collections::HashSet<Node> = nodes.iter().copied().collect();
    let mut order: Vec<Node> = g.nodes().map(|(n, _)| n).filter(|n| inside.contains(n)).collect();
    order.dedup();
    let produced_inside = |v: Value| matches!(g.value(v).def, ValueDef::Result(n, _) if inside.contains(&n));
    // Values read, and quant parameters of every value involved.
    let mut used: Vec<Value> = Vec::new();
    let push = |v: Value, used: &mut Vec<Value>| {
        if !used.contains(&v) {
            used.push(v);
        }
    };
    for &n in &order {
        for &v in &g.node(n).inputs {
            push(v, &mut used);
        }
        for &v in &g.node(n).outputs {
            push(v, &mut used);
        }
    }
    let mut i = 0;
    while i < used.len() {
        if let Some(q) = &g.ty(used[i]).quant {
            for p in [Some(q.scale), q.zero_point, q.offset].into_iter().flatten() {
                push(p, &mut used);
            }
        }
        i += 1;
    }
    let mut sub = Graph::new(&g.name);
    let mut map: HashMap<Value, Value> = HashMap::new();
    let mut inputs = Vec::new();
    for &v in used.iter().filter(|&&v| !produced_inside(v)) {
        if let Some(data) = g.const_data(v) {
            map.insert(v, sub.add_const(g.ty(v).clone(), data.clone()));
        } else {
            map.insert(v, sub.add_input(&format!("v{}", v.index()), g.ty(v).clone()));
            inputs.push(v);
        }
    }
    let users = g.users();
    let graph_outputs: Vec<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
    let mut outputs = Vec::new();
    for &n in &order {
        let nd = g.node(n);
        let ins = nd.inputs.iter().map(|v| map[v]).collect();
        let types = nd.outputs.iter().map(|v| g.ty(*v).clone()).collect();
        let new = sub.add_node(nd.op.clone(), ins, types);
        sub.node_mut(new).body = nd.body.clone();
        sub.node_mut(new).placement = nd.placement;
        for (old, nv) in nd.outputs.iter().zip(sub.node(new).outputs.clone()) {
            map.insert(*old, nv);
            let read_outside = users[old.index()].iter().any(|u| !inside.contains(u));
            if read_outside || graph_outputs.contains(old) {
                outputs.push(*old);
            }
        }
    }
    if outputs.is_empty() {
        outputs = order.iter().flat_map(|&n| g.node(n).outputs.clone()).collect();
    }
    for &v in &outputs {
        sub.add_output(&format!("v{}", v.index()), map[&v]);
    }
    // Quant references follow the renumbering.
    for (&old, &new) in &map {
        if let Some(q) = &g.ty(old).quant {
            let mut ty: TensorType = g.ty(old).clone();
            let mut q = (**q).clone();
            q.scale = map[&q.scale];
            q.zero_point = q.zero_point.map(|z| map[&z]);
            q.offset = q.offset.map(|o| map[&o]);
            ty.quant = Some(Box::new(q));
            sub.value_mut(new).ty = ty;
        }
    }
    // Symbols the nodes use that no input carries.
    let text = tessera_ir::print(&sub);
    let mut carriers = Vec::new();
    for s in input_symbols(g) {
        let carried = sub
            .inputs()
            .iter()
            .any(|(_, v)| sub.ty(*v).shape.dims().iter().any(|d| matches!(d, Dim::Sym(x) if **x == *s)));
        if !carried && mentions(&text, &s) {
            let ty = TensorType::new(tessera_ir::DType::U8, Shape(vec![Dim::sym(&s), Dim::Static(0)]));
            sub.add_input(&format!("__sym_{s}"), ty);
            carriers.push(s);
        }
    }
    Extracted { graph: sub, inputs, carriers, outputs }
}
