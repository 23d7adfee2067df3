//! The graph: values in SSA form (each defined once), nodes in a valid execution order,
//! constants out of line, named inputs and outputs, and optional placement and buffer slots.

use crate::constant::ConstData;
use crate::entity::{ConstId, Node, Value};
use crate::op::Op;
use crate::types::TensorType;
use std::fmt;

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueDef {
    /// The graph input at this position.
    Input(usize),
    /// A constant.
    Const(ConstId),
    /// Result `index` of a node.
    Result(Node, usize),
}

/// The compute unit a node is placed on (`@cpu`, `@gpu`, `@npu` in the text format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Gpu,
    Npu,
}

impl Device {
    pub const ALL: [Device; 3] = [Device::Cpu, Device::Gpu, Device::Npu];

    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Npu => "npu",
        }
    }

    pub fn from_name(name: &str) -> Option<Device> {
        Device::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value's place in an activation arena, set by a buffer planner (`mem(arena=0, offset=64)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemSlot {
    pub arena: u32,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValueData {
    pub ty: TensorType,
    pub def: ValueDef,
    pub mem: Option<MemSlot>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeData {
    pub op: Op,
    pub inputs: Vec<Value>,
    pub outputs: Vec<Value>,
    pub placement: Option<Device>,
    /// The body of a `kernel` node.
    pub body: Option<Box<Graph>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConstantData {
    pub value: Value,
    pub data: ConstData,
}

/// A line and column (both from 1) in a text file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Where each value and node was defined in the parsed text, with the line's text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceMap {
    pub values: Vec<Option<Span>>,
    pub nodes: Vec<Option<Span>>,
    /// Where each `output` line is, by output position.
    pub outputs: Vec<Span>,
    /// The source text's lines, shared by a graph and its region bodies.
    pub lines: std::sync::Arc<[String]>,
}

impl SourceMap {
    pub fn line_text(&self, span: Span) -> Option<&str> {
        self.lines.get(span.line as usize - 1).map(|s| s.trim())
    }
}

/// A dataflow graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    values: Vec<ValueData>,
    nodes: Vec<NodeData>,
    constants: Vec<ConstantData>,
    inputs: Vec<(String, Value)>,
    outputs: Vec<(String, Value)>,
    /// Present when the graph came from text.
    pub source: Option<SourceMap>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph { name: name.to_string(), ..Graph::default() }
    }

    fn new_value(&mut self, ty: TensorType, def: ValueDef) -> Value {
        let v = Value::from_index(self.values.len());
        self.values.push(ValueData { ty, def, mem: None });
        v
    }

    /// Adds a named graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> Value {
        let v = self.new_value(ty, ValueDef::Input(self.inputs.len()));
        self.inputs.push((name.to_string(), v));
        v
    }

    /// Adds a constant holding packed bytes of its type (see `dtype.rs` for the layout).
    pub fn add_const(&mut self, ty: TensorType, data: ConstData) -> Value {
        let id = ConstId::from_index(self.constants.len());
        let v = self.new_value(ty, ValueDef::Const(id));
        self.constants.push(ConstantData { value: v, data });
        v
    }

    /// Appends a node with declared result types; the verifier checks them.
    pub fn add_node(&mut self, op: Op, inputs: Vec<Value>, result_types: Vec<TensorType>) -> Node {
        let node = Node::from_index(self.nodes.len());
        let outputs =
            result_types.into_iter().enumerate().map(|(i, ty)| self.new_value(ty, ValueDef::Result(node, i))).collect();
        self.nodes.push(NodeData { op, inputs, outputs, placement: None, body: None });
        node
    }

    /// Appends a node whose result types are inferred; fails with the inference error.
    pub fn add_op(&mut self, op: Op, inputs: Vec<Value>) -> Result<Vec<Value>, String> {
        let types = crate::infer::infer_types(self, &op, &inputs, None)?;
        let node = self.add_node(op, inputs, types);
        Ok(self.node(node).outputs.clone())
    }

    /// Marks a value as a graph output.
    pub fn add_output(&mut self, name: &str, value: Value) {
        self.outputs.push((name.to_string(), value));
    }

    pub fn value(&self, v: Value) -> &ValueData {
        &self.values[v.index()]
    }

    pub fn value_mut(&mut self, v: Value) -> &mut ValueData {
        &mut self.values[v.index()]
    }

    /// The type of a value.
    pub fn ty(&self, v: Value) -> &TensorType {
        &self.values[v.index()].ty
    }

    pub fn node(&self, n: Node) -> &NodeData {
        &self.nodes[n.index()]
    }

    pub fn node_mut(&mut self, n: Node) -> &mut NodeData {
        &mut self.nodes[n.index()]
    }

    /// Nodes in execution order.
    pub fn nodes(&self) -> impl Iterator<Item = (Node, &NodeData)> {
        self.nodes.iter().enumerate().map(|(i, n)| (Node::from_index(i), n))
    }

    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn n_values(&self) -> usize {
        self.values.len()
    }

    pub fn values(&self) -> impl Iterator<Item = (Value, &ValueData)> {
        self.values.iter().enumerate().map(|(i, v)| (Value::from_index(i), v))
    }

    pub fn constants(&self) -> &[ConstantData] {
        &self.constants
    }

    pub fn constant(&self, id: ConstId) -> &ConstantData {
        &self.constants[id.index()]
    }

    /// The constant behind a value, if it is one.
    pub fn const_data(&self, v: Value) -> Option<&ConstData> {
        match self.value(v).def {
            ValueDef::Const(id) => Some(&self.constant(id).data),
            _ => None,
        }
    }

    pub fn inputs(&self) -> &[(String, Value)] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[(String, Value)] {
        &self.outputs
    }

    /// Whether `v` is a valid value of this graph.
    pub fn contains(&self, v: Value) -> bool {
        v.index() < self.values.len()
    }

    /// Drops the bytes of every constant `keep` rejects, leaving its summary (size and content
    /// hash): for a target that has copied what it needs, so the weights are not held twice.
    /// The graph still prints and verifies; running it on the interpreter then fails with an
    /// error naming the constant. Returns the bytes dropped.
    pub fn release_constants(&mut self, keep: impl Fn(Value) -> bool) -> u64 {
        let chosen: Vec<usize> = (0..self.constants.len())
            .filter(|&i| matches!(self.constants[i].data, ConstData::Bytes(_)) && !keep(self.constants[i].value))
            .collect();
        let hashes = hash_constants(&self.constants, &chosen);
        let mut dropped = 0;
        for (&i, hash) in chosen.iter().zip(hashes) {
            let c = &mut self.constants[i];
            let bytes = c.data.byte_len();
            c.data = ConstData::Summary { bytes, hash };
            dropped += bytes;
        }
        dropped
    }

    /// Total bytes of constant data, as stored (packed).
    pub fn constant_bytes(&self) -> u64 {
        self.constants.iter().map(|c| c.data.byte_len()).sum()
    }

    /// Where a node was defined in the text it was parsed from.
    pub fn node_span(&self, n: Node) -> Option<Span> {
        self.source.as_ref()?.nodes.get(n.index()).copied().flatten()
    }

    /// Where a value was defined in the text it was parsed from.
    pub fn value_span(&self, v: Value) -> Option<Span> {
        self.source.as_ref()?.values.get(v.index()).copied().flatten()
    }
}

/// Mutation, for passes. Each keeps the graph well formed as long as the caller keeps the
/// order valid (the verifier checks).
impl Graph {
    /// Makes every use of `from` (node operands, outputs, quant parameters) use `to` instead.
    pub fn replace_uses(&mut self, from: Value, to: Value) {
        for n in &mut self.nodes {
            for v in &mut n.inputs {
                if *v == from {
                    *v = to;
                }
            }
        }
        for (_, v) in &mut self.outputs {
            if *v == from {
                *v = to;
            }
        }
        for d in &mut self.values {
            if let Some(q) = &mut d.ty.quant {
                for p in [Some(&mut q.scale), q.zero_point.as_mut(), q.offset.as_mut()].into_iter().flatten() {
                    if *p == from {
                        *p = to;
                    }
                }
            }
        }
    }

    /// Reorders the nodes: `order` lists every node exactly once, in the new execution order.
    pub fn set_order(&mut self, order: &[Node]) {
        assert_eq!(order.len(), self.nodes.len(), "set_order needs every node once");
        let mut new_index = vec![usize::MAX; self.nodes.len()];
        for (i, n) in order.iter().enumerate() {
            new_index[n.index()] = i;
        }
        let mut old: Vec<Option<NodeData>> = std::mem::take(&mut self.nodes).into_iter().map(Some).collect();
        self.nodes = order.iter().map(|n| old[n.index()].take().expect("each node once")).collect();
        for d in &mut self.values {
            if let ValueDef::Result(n, i) = d.def {
                d.def = ValueDef::Result(Node::from_index(new_index[n.index()]), i);
            }
        }
        if let Some(src) = &mut self.source {
            let nodes = std::mem::take(&mut src.nodes);
            src.nodes = order.iter().map(|n| nodes.get(n.index()).copied().flatten()).collect();
        }
    }

    /// A copy with only the kept nodes and the constants still in use, renumbered densely, in
    /// the same order. Values the kept nodes, outputs or quant annotations use must stay defined.
    pub fn compacted(&self, keep: impl Fn(Node) -> bool) -> Graph {
        let kept: Vec<Node> = self.nodes().map(|(n, _)| n).filter(|&n| keep(n)).collect();
        let mut used = vec![false; self.values.len()];
        for &n in &kept {
            for &v in &self.node(n).inputs {
                used[v.index()] = true;
            }
        }
        for (_, v) in &self.outputs {
            used[v.index()] = true;
        }
        // Quant parameters of used values are used too.
        let mut changed = true;
        while changed {
            changed = false;
            for (i, d) in self.values.iter().enumerate() {
                let node_result = matches!(d.def, ValueDef::Result(n, _) if kept.contains(&n));
                if !(used[i] || node_result) {
                    continue;
                }
                if let Some(q) = &d.ty.quant {
                    for p in [Some(q.scale), q.zero_point, q.offset].into_iter().flatten() {
                        if !used[p.index()] {
                            used[p.index()] = true;
                            changed = true;
                        }
                    }
                }
            }
        }
        let mut g = Graph::new(&self.name);
        let mut map: Vec<Option<Value>> = vec![None; self.values.len()];
        for (name, v) in &self.inputs {
            let nv = g.add_input(name, self.ty(*v).clone());
            map[v.index()] = Some(nv);
        }
        for c in &self.constants {
            if used[c.value.index()] {
                let nv = g.add_const(self.ty(c.value).clone(), c.data.clone());
                map[c.value.index()] = Some(nv);
            }
        }
        for &n in &kept {
            let nd = self.node(n);
            let inputs = nd.inputs.iter().map(|v| map[v.index()].expect("kept nodes read defined values")).collect();
            let types = nd.outputs.iter().map(|v| self.ty(*v).clone()).collect();
            let new = g.add_node(nd.op.clone(), inputs, types);
            let new_node = g.node_mut(new);
            new_node.placement = nd.placement;
            new_node.body = nd.body.clone();
            let outs = g.node(new).outputs.clone();
            for (old, nv) in nd.outputs.iter().zip(outs) {
                map[old.index()] = Some(nv);
            }
        }
        for (name, v) in &self.outputs {
            g.add_output(name, map[v.index()].expect("outputs are defined"));
        }
        // Quant references and buffer slots follow the renumbering.
        for (old, new) in map.iter().enumerate().filter_map(|(i, m)| m.map(|m| (i, m))) {
            let mut ty = self.values[old].ty.clone();
            if let Some(q) = &mut ty.quant {
                q.scale = map[q.scale.index()].expect("quant parameters are kept");
                q.zero_point = q.zero_point.map(|z| map[z.index()].expect("kept"));
                q.offset = q.offset.map(|o| map[o.index()].expect("kept"));
            }
            g.values[new.index()].ty = ty;
            g.values[new.index()].mem = self.values[old].mem;
        }
        g
    }

    /// The nodes that read each value.
    pub fn users(&self) -> Vec<Vec<Node>> {
        let mut users = vec![Vec::new(); self.values.len()];
        for (n, nd) in self.nodes() {
            for &v in &nd.inputs {
                if !users[v.index()].contains(&n) {
                    users[v.index()].push(n);
                }
            }
        }
        users
    }
}

/// The content hashes of `constants[i]` for each `i` of `chosen`, in that order, on up to one
/// thread per core when there is enough to hash (a model's weights: gemma-3-270m releases 270 MB,
/// about 0.2 s on one core), the constants split into runs of about equal bytes.
fn hash_constants(constants: &[ConstantData], chosen: &[usize]) -> Vec<u64> {
    let total: u64 = chosen.iter().map(|&i| constants[i].data.byte_len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || total < 16 << 20 {
        return chosen.iter().map(|&i| constants[i].data.hash()).collect();
    }
    // Cut `chosen` where the running byte count passes each thread's share.
    let share = total.div_ceil(threads as u64);
    let mut runs: Vec<&[usize]> = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (j, &i) in chosen.iter().enumerate() {
        acc += constants[i].data.byte_len();
        if acc >= share * (runs.len() as u64 + 1) {
            runs.push(&chosen[start..=j]);
            start = j + 1;
        }
    }
    runs.push(&chosen[start..]);
    std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|run| s.spawn(move || run.iter().map(|&i| constants[i].data.hash()).collect::<Vec<u64>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("hashing a constant does not panic")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Shape};

    /// Releasing more than the threaded threshold keeps each constant's own content hash, in
    /// order, and leaves the kept ones alone.
    #[test]
    fn released_constants_keep_their_own_hashes() {
        let mut g = Graph::new("g");
        let n = 1 << 20;
        let mut values = Vec::new();
        for c in 0..7u8 {
            let bytes: Vec<u8> = (0..4 * n).map(|i| (i as u8).wrapping_mul(c + 1) ^ c).collect();
            let ty = TensorType::new(DType::F32, Shape::from_static(&[n]));
            values.push((g.add_const(ty, ConstData::from_vec(bytes.clone())), crate::constant::fnv1a64(&bytes)));
        }
        let kept = values[3].0;
        let dropped = g.release_constants(|v| v == kept);
        assert_eq!(dropped, 6 * 4 * n as u64);
        for (i, c) in g.constants.iter().enumerate() {
            let (v, want) = values[i];
            assert_eq!(c.value, v);
            assert_eq!(c.data.hash(), want, "constant {i}");
            assert_eq!(matches!(c.data, ConstData::Bytes(_)), v == kept, "constant {i}");
        }
    }
}
