//! Graph -> e-graph and back.
//!
//! To the e-graph: every node whose op the language models (one result, no placement, no region,
//! no quantized operand or result) becomes an e-node; every other value it reads (graph inputs,
//! constants, results of nodes not modelled) becomes an opaque `Leaf`. Nodes not modelled stay in
//! the graph as they are, so any graph round-trips. The roots are the values of modelled nodes read
//! from outside the e-graph: by nodes not modelled, or as graph outputs.
//!
//! Back: the cheapest term of each root's class is materialized (an op equal to an original node
//! on the same operands reuses that node), every use of the root is redirected to it, the nodes
//! are put back in a valid order and dead nodes removed. Each materialized value must have exactly
//! the type the analysis gave its class; otherwise nothing is changed. A `gated_ffn` e-node, which
//! no single IR op expresses, becomes a `kernel` node named by its attribute whose region holds
//! its five ops (`lang::gated_ffn_body`); kernel nodes are never modelled, so the result
//! round-trips.

use super::cost::{CostModel, Extract};
use super::lang::{compatible, gated_ffn_act, gated_ffn_body, Attr, TensorEGraph, TensorLang, TypeAnalysis, ValueRef};
use egg::{EGraph, Extractor, Id};
use std::collections::HashMap;
use tessera_ir::{ConstData, DType, Graph, Node, Tensor, TensorType, Value, ValueDef};

/// The largest constant checked for being a splat.
const MAX_SPLAT_ELEMENTS: usize = 4096;

/// A graph in e-graph form.
pub struct Converted {
    pub egraph: TensorEGraph,
    /// Values of modelled nodes read outside the e-graph, with their classes.
    pub roots: Vec<(Value, Id)>,
    /// How many nodes became e-nodes.
    pub modelled: usize,
}

/// Whether a node becomes an e-node.
pub fn is_modelled(g: &Graph, n: Node) -> bool {
    let nd = g.node(n);
    let dummy = vec![Id::from(0usize); nd.inputs.len()];
    nd.outputs.len() == 1
        && nd.placement.is_none()
        && nd.body.is_none()
        && nd.inputs.iter().chain(&nd.outputs).all(|&v| g.ty(v).quant.is_none())
        && TensorLang::from_ir(&nd.op, &dummy, |_| Id::from(0usize)).is_some()
}

/// The value of a float constant whose elements are all equal.
pub fn splat_of(g: &Graph, v: Value) -> Option<f32> {
    let ty = g.ty(v);
    if !matches!(ty.dtype, DType::F32 | DType::F16 | DType::BF16) || ty.quant.is_some() {
        return None;
    }
    let shape = ty.shape.as_static()?;
    if shape.iter().product::<usize>() > MAX_SPLAT_ELEMENTS {
        return None;
    }
    let t = Tensor::from_bytes(ty.dtype, &shape, g.const_data(v)?.bytes()?).ok()?;
    let a = t.as_float()?;
    let first = *a.iter().next()?;
    a.iter().all(|x| x.to_bits() == first.to_bits()).then_some(first)
}

pub fn to_egraph(g: &Graph) -> Converted {
    let mut analysis = TypeAnalysis::default();
    for (v, d) in g.values() {
        if d.ty.quant.is_none() {
            analysis.leaves.insert(v.index() as u32, (d.ty.clone(), splat_of(g, v)));
        }
    }
    let mut eg: TensorEGraph = EGraph::new(analysis);
    let mut class: HashMap<Value, Id> = HashMap::new();
    let mut modelled = vec![false; g.n_nodes()];
    for (n, nd) in g.nodes() {
        if !is_modelled(g, n) {
            continue;
        }
        modelled[n.index()] = true;
        let mut ids = Vec::with_capacity(nd.inputs.len());
        for &v in &nd.inputs {
            let id = match class.get(&v) {
                Some(&id) => id,
                None => {
                    let id = eg.add(TensorLang::Leaf(ValueRef(v.index() as u32)));
                    class.insert(v, id);
                    id
                }
            };
            ids.push(id);
        }
        let node = TensorLang::from_ir(&nd.op, &ids, |a| eg.add(TensorLang::Attr(a))).expect("modelled");
        let id = eg.add(node);
        // The declared type is the authority: it may know more than inference (`refine-types`).
        eg[id].data.ty = Some(g.ty(nd.outputs[0]).plain());
        class.insert(nd.outputs[0], id);
    }
    eg.rebuild();
    let mut external = vec![false; g.n_values()];
    for (n, nd) in g.nodes() {
        if !modelled[n.index()] {
            nd.inputs.iter().for_each(|v| external[v.index()] = true);
        }
    }
    for (_, v) in g.outputs() {
        external[v.index()] = true;
    }
    let roots = g
        .nodes()
        .filter(|(n, _)| modelled[n.index()])
        .map(|(_, nd)| nd.outputs[0])
        .filter(|v| external[v.index()])
        .map(|v| (v, eg.find(class[&v])))
        .collect();
    Converted { egraph: eg, roots, modelled: modelled.iter().filter(|&&m| m).count() }
}

struct Materializer<'a, 'b, M: CostModel> {
    eg: &'a TensorEGraph,
    extractor: Extractor<'a, Extract<'b, M>, TensorLang, TypeAnalysis>,
    reuse: HashMap<(String, Vec<Value>), Value>,
    memo: HashMap<Id, Value>,
    g: Graph,
    /// How many values the graph had before extraction.
    original: std::ops::Range<Value>,
}

impl<M: CostModel> Materializer<'_, '_, M> {
    fn value(&mut self, id: Id) -> Result<Value, String> {
        let id = self.eg.find(id);
        if let Some(&v) = self.memo.get(&id) {
            return Ok(v);
        }
        let node = self.extractor.find_best_node(id).clone();
        let v = match &node {
            TensorLang::Leaf(r) => Value::from_index(r.0 as usize),
            TensorLang::Scalar(s) => {
                let bytes = s.value().to_le_bytes().to_vec();
                self.g.add_const(TensorType::scalar(DType::F32), ConstData::from_vec(bytes))
            }
            TensorLang::GatedFfn([a, kids @ ..]) => {
                let Some(Attr::Kernel(name)) = self.eg[*a].data.attr.clone() else {
                    return Err(format!("`{node}` has no kernel name"));
                };
                let inputs = kids.iter().map(|&k| self.value(k)).collect::<Result<Vec<_>, _>>()?;
                self.gated_ffn(&name, inputs)?
            }
            _ => {
                let (op, kids) =
                    node.to_ir(|c| self.eg[c].data.attr.clone()).ok_or_else(|| format!("cannot extract `{node}`"))?;
                let inputs = kids.iter().map(|&k| self.value(k)).collect::<Result<Vec<_>, _>>()?;
                let key = (format!("{op:?}"), inputs.clone());
                match self.reuse.get(&key) {
                    Some(&v) => v,
                    None => {
                        let out = self.g.add_op(op, inputs)?;
                        self.reuse.insert(key, out[0]);
                        out[0]
                    }
                }
            }
        };
        let have = self.g.ty(v).plain();
        match self.eg[id].data.ty.as_ref() {
            Some(want) if *want == have => {}
            // A new node whose inferred type has `?` where the class's type knows the size.
            Some(want) if compatible(want, &have) && !self.original.contains(&v) => {
                self.g.value_mut(v).ty = want.clone()
            }
            want => return Err(format!("`{node}` has type {have} where its class has {want:?}")),
        }
        self.memo.insert(id, v);
        Ok(v)
    }
}

impl<M: CostModel> Materializer<'_, '_, M> {
    /// A `kernel` region named `name` computing a gated FFN of `x, w1, w3, w2`.
    fn gated_ffn(&mut self, name: &str, inputs: Vec<Value>) -> Result<Value, String> {
        let act = gated_ffn_act(name).ok_or_else(|| format!("unknown kernel `{name}`"))?;
        let mut body = Graph::new("body");
        let mut vals: Vec<Value> = ["x", "w1", "w3", "w2"]
            .iter()
            .zip(&inputs)
            .map(|(n, &v)| body.add_input(n, self.g.ty(v).plain()))
            .collect();
        for (op, [a, b]) in gated_ffn_body(act) {
            let operands = if matches!(op, tessera_ir::Op::Unary(_)) { vec![vals[a]] } else { vec![vals[a], vals[b]] };
            vals.push(body.add_op(op, operands)?[0]);
        }
        let result = *vals.last().expect("a result");
        body.add_output("y", result);
        let ty = body.ty(result).clone();
        let kn = self.g.add_node(tessera_ir::Op::Kernel { name: name.to_string() }, inputs, vec![ty]);
        self.g.node_mut(kn).body = Some(Box::new(body));
        Ok(self.g.node(kn).outputs[0])
    }
}

/// Nodes in an order where each comes after the producers of its operands.
fn topological_order(g: &Graph) -> Vec<Node> {
    let mut state = vec![0u8; g.n_nodes()]; // 0 new, 1 open, 2 done
    let mut order = Vec::with_capacity(g.n_nodes());
    for (start, _) in g.nodes() {
        if state[start.index()] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start.index()] = 1;
        while let Some((n, i)) = stack.pop() {
            let inputs = &g.node(n).inputs;
            if i < inputs.len() {
                stack.push((n, i + 1));
                if let ValueDef::Result(p, _) = g.value(inputs[i]).def {
                    if state[p.index()] == 0 {
                        state[p.index()] = 1;
                        stack.push((p, 0));
                    }
                }
            } else {
                state[n.index()] = 2;
                order.push(n);
            }
        }
    }
    order
}

/// Rewrites `g` with the cheapest term of every root; Ok(false) when every root keeps its value.
pub fn from_egraph<M: CostModel>(
    g: &mut Graph,
    eg: &TensorEGraph,
    roots: &[(Value, Id)],
    model: &M,
) -> Result<bool, String> {
    let mut reuse = HashMap::new();
    for (n, nd) in g.nodes() {
        if is_modelled(g, n) {
            reuse.entry((format!("{:?}", nd.op), nd.inputs.clone())).or_insert(nd.outputs[0]);
        }
    }
    let extractor = Extractor::new(eg, Extract { egraph: eg, model });
    let mut m = Materializer {
        eg,
        extractor,
        reuse,
        memo: HashMap::new(),
        g: g.clone(),
        original: Value::from_index(0)..Value::from_index(g.n_values()),
    };
    let mut replaced = Vec::new();
    for &(root, id) in roots {
        let v = m.value(id)?;
        if v != root {
            replaced.push((root, v));
        }
    }
    if replaced.is_empty() {
        return Ok(false);
    }
    let mut ng = m.g;
    for (from, to) in replaced {
        ng.replace_uses(from, to);
    }
    let order = topological_order(&ng);
    ng.set_order(&order);
    let live = crate::dce::live_nodes(&ng);
    *g = ng.compacted(|n| live[n.index()]);
    Ok(true)
}
