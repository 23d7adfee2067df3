//! The ONNX importer: a `ModelProto` becomes a Tessera `Graph`.
//!
//! - The model file is memory-mapped and decoded with prost; initializers' `raw_data` are slices
//!   of the map, so weights are never copied (typed-field initializers are decoded). External
//!   data files are mapped too, and must lie inside the model's folder.
//! - Nodes are lowered in topological order by the functions in `table.rs`; before lowering,
//!   every node is checked against that table, and all unsupported ops are reported at once.
//! - Shape computations are evaluated symbolically at import (`sym.rs`), so dynamic sequence
//!   lengths stay symbolic (`sequence_length`) in the graph.
//! - Opsets: the default domain from 7 to 27 (see `OPSET_RANGE`), and `com.microsoft` version 1.

mod ctx;
mod elementwise;
mod nn;
mod opset23;
mod quant;
mod shape;
pub mod sym;
mod table;

pub use ctx::{Ctx, Lowered, Node, Val};

use crate::onnx::proto::{tensor_proto::DataLocation, ModelProto, TensorProto};
use crate::onnx::tensor_io::{onnx_dtype, tensor_from_proto, tensor_meta};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tessera_ir::{verify, Blob, Dim, Graph, Shape, TensorType};

/// The default-domain opsets the importer reads: 7 (numpy broadcasting) to 27 (the newest in
/// onnx 1.22.0's node tests). Ops whose semantics changed are lowered per version: Softmax and
/// LogSoftmax before 13 (2-D coercion), Slice before 10 and Clip before 11 (attributes), and the
/// attribute-or-input forms of Split, Squeeze, Unsqueeze and the reductions.
pub const OPSET_RANGE: std::ops::RangeInclusive<i64> = 7..=27;

/// An op the importer cannot lower, with where it occurs.
#[derive(Clone, Debug, PartialEq)]
pub struct UnsupportedOp {
    pub domain: String,
    pub op_type: String,
    pub count: usize,
    /// Up to five node names.
    pub nodes: Vec<String>,
}

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid ONNX model: {message}")]
    Decode { path: String, message: String },
    #[error("{path} uses opset {version} of domain {domain:?}; Tessera reads {supported}")]
    Opset { path: String, domain: String, version: i64, supported: String },
    #[error("{path} has {} unsupported op type(s):\n{}", .ops.len(), fmt_unsupported(.ops))]
    Unsupported { path: String, ops: Vec<UnsupportedOp> },
    #[error("{path}: initializer {name:?}: {message}")]
    Initializer { path: String, name: String, message: String },
    #[error("{path}: graph input {name:?}: {message}")]
    Input { path: String, name: String, message: String },
    #[error("{path}: {message}")]
    Graph { path: String, message: String },
    #[error("{path}: node {node:?} ({op}): {message}")]
    Node { path: String, node: String, op: String, message: String },
    #[error("{path}: the imported graph does not verify (an importer bug): {message}")]
    Verify { path: String, message: String },
}

impl ImportError {
    /// Whether the model needs something Tessera does not support (op, opset, dtype), as
    /// opposed to being malformed: the conformance runner counts these as unsupported.
    pub fn is_unsupported(&self) -> bool {
        match self {
            ImportError::Unsupported { .. } | ImportError::Opset { .. } => true,
            ImportError::Initializer { message, .. }
            | ImportError::Input { message, .. }
            | ImportError::Node { message, .. } => {
                message.contains("not supported")
                    || message.contains("does not support")
                    || message.contains("unsupported")
            }
            _ => false,
        }
    }
}

fn fmt_unsupported(ops: &[UnsupportedOp]) -> String {
    ops.iter()
        .map(|u| {
            let domain = if u.domain.is_empty() { String::new() } else { format!("{}.", u.domain) };
            let more = if u.count > u.nodes.len() { ", ..." } else { "" };
            format!("  {domain}{} x{} (nodes {}{more})", u.op_type, u.count, u.nodes.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Choices that change what the imported graph computes.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Lower u8 x i8 MatMulInteger the way onnxruntime's x86 kernel computes it (adjacent
    /// products summed in saturating int16: `matmul_integer {pair_saturate = true}`), to compare
    /// with onnxruntime's outputs. Off by default: the exact product the ONNX spec defines.
    pub onnxruntime_x86_matmul_integer: bool,
}

/// Imports an ONNX file, memory-mapping it and any external data beside it.
pub fn import_file(path: &Path) -> Result<Graph, ImportError> {
    import_file_with(path, &ImportOptions::default())
}

/// `import_file` with options.
pub fn import_file_with(path: &Path, options: &ImportOptions) -> Result<Graph, ImportError> {
    let blob = Blob::map_file(path).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    import_model_with(blob, &path.display().to_string(), &name, path.parent(), options)
}

/// Imports an ONNX model held in `blob`; `path` names it in errors, `base_dir` holds its
/// external data files.
pub fn import_model(blob: Blob, path: &str, name: &str, base_dir: Option<&Path>) -> Result<Graph, ImportError> {
    import_model_with(blob, path, name, base_dir, &ImportOptions::default())
}

/// `import_model` with options.
pub fn import_model_with(
    blob: Blob,
    path: &str,
    name: &str,
    base_dir: Option<&Path>,
    options: &ImportOptions,
) -> Result<Graph, ImportError> {
    let p = || path.to_string();
    let bytes = bytes::Bytes::from_owner(blob.clone());
    let model = ModelProto::decode(bytes).map_err(|e| ImportError::Decode { path: p(), message: e.to_string() })?;
    let mut opsets: HashMap<String, i64> = HashMap::new();
    for o in &model.opset_import {
        let domain = match o.domain.as_deref().unwrap_or("") {
            "ai.onnx" => "",
            d => d,
        };
        opsets.insert(domain.to_string(), o.version.unwrap_or(1));
    }
    let default_opset = *opsets.get("").unwrap_or(&0);
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::Decode { path: p(), message: "the model has no graph".into() })?;
    let uses_default = graph.node.iter().any(|n| matches!(n.domain.as_deref().unwrap_or(""), "" | "ai.onnx"));
    if uses_default && !OPSET_RANGE.contains(&default_opset) {
        return Err(ImportError::Opset {
            path: p(),
            domain: "ai.onnx".into(),
            version: default_opset,
            supported: format!("versions {} to {}", OPSET_RANGE.start(), OPSET_RANGE.end()),
        });
    }
    let graph_name =
        graph.name.clone().filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !n.is_empty());
    let mut ctx = Ctx::new(&graph_name.unwrap_or_else(|| sanitize(name)));
    ctx.options = options.clone();

    // Initializers: zero-copy slices of the model map, or decoded typed fields, or external files.
    let mut initializer_names = HashSet::new();
    for init in &graph.initializer {
        let name = init.name.clone().unwrap_or_default();
        let err = |message: String| ImportError::Initializer { path: p(), name: name.clone(), message };
        let (ty, data) = initializer(init, &blob, base_dir).map_err(err)?;
        initializer_names.insert(name.clone());
        ctx.define(&name, Val::Init(Rc::new((ty, data))));
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(ImportError::Graph { path: p(), message: "sparse initializers are not supported".into() });
    }

    // Graph inputs (those that are not initializers).
    for input in &graph.input {
        let name = input.name.clone().unwrap_or_default();
        if initializer_names.contains(&name) {
            continue;
        }
        let ty = input_type(input, &name).map_err(|message| ImportError::Input {
            path: p(),
            name: name.clone(),
            message,
        })?;
        let v = ctx.g.add_input(&name, ty);
        ctx.define(&name, Val::Ir(v));
    }

    // Every node must be lowerable: report all unsupported ops at once.
    let mut unsupported: Vec<UnsupportedOp> = Vec::new();
    for n in &graph.node {
        let domain = match n.domain.as_deref().unwrap_or("") {
            "ai.onnx" => "",
            d => d,
        };
        let op = n.op_type.as_deref().unwrap_or("");
        let opset = opsets.get(domain).copied().unwrap_or(0);
        if table::lookup(domain, op, opset).is_none() {
            let node_name = n.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| format!("<{op} node>"));
            match unsupported.iter_mut().find(|u| u.domain == domain && u.op_type == op) {
                Some(u) => {
                    u.count += 1;
                    if u.nodes.len() < 5 {
                        u.nodes.push(node_name);
                    }
                }
                None => unsupported.push(UnsupportedOp {
                    domain: domain.into(),
                    op_type: op.into(),
                    count: 1,
                    nodes: vec![node_name],
                }),
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(ImportError::Unsupported { path: p(), ops: unsupported });
    }

    // Lower nodes in topological order.
    for i in topological_order(graph, &ctx).map_err(|message| ImportError::Graph { path: p(), message })? {
        let n = &graph.node[i];
        let domain = match n.domain.as_deref().unwrap_or("") {
            "ai.onnx" => "",
            d => d,
        };
        let opset = opsets.get(domain).copied().unwrap_or(0);
        let node = Node { proto: n, opset };
        let lower = table::lookup(domain, node.op_type(), opset).expect("checked above");
        let node_err = |message: String| ImportError::Node {
            path: p(),
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            message,
        };
        let vals = match fold(&ctx, &node, lower) {
            Some(vals) => vals,
            None => lower(&mut ctx, &node).map_err(node_err)?,
        };
        for (j, out) in n.output.iter().enumerate() {
            if out.is_empty() {
                continue;
            }
            match vals.get(j) {
                Some(v) => ctx.define(out, v.clone()),
                None => return Err(node_err(format!("output {j} ({out:?}) is not supported"))),
            }
        }
    }

    // Outputs.
    for out in &graph.output {
        let name = out.name.clone().unwrap_or_default();
        let v = ctx
            .value(&name)
            .map_err(|message| ImportError::Graph { path: p(), message: format!("output {name:?}: {message}") })?;
        ctx.g.add_output(&name, v);
    }
    verify(&ctx.g).map_err(|e| ImportError::Verify { path: p(), message: e.to_string() })?;
    Ok(ctx.g)
}

/// Largest constant folded at import.
const MAX_FOLD_ELEMENTS: usize = 1 << 16;

/// Constant folding at import: a node whose inputs are all small known constants is lowered
/// into a scratch graph and run on the interpreter, so shape arithmetic of any form (`Neg`,
/// `Size`, `Range`, ...) stays known. None when the node cannot be folded.
fn fold(ctx: &Ctx, node: &Node, lower: table::LowerFn) -> Option<Vec<Val>> {
    let names: Vec<&str> = node.proto.input.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    if names.is_empty() || node.op_type() == "Constant" {
        return None;
    }
    let mut scratch = Ctx::new("fold");
    for name in &names {
        let t = ctx.known_up_to(name, MAX_FOLD_ELEMENTS)?;
        scratch.define(name, Val::Known(Rc::new(t)));
    }
    let vals = lower(&mut scratch, node).ok()?;
    let mut irs = Vec::new();
    for v in &vals {
        if let Val::Ir(x) = v {
            scratch.g.add_output("r", *x);
            irs.push(*x);
        }
    }
    let mut results = tessera_ir::run(&scratch.g, vec![]).ok()?.into_iter();
    vals.into_iter()
        .map(|v| match v {
            Val::Ir(_) => results.next().filter(|t| t.numel() <= MAX_FOLD_ELEMENTS).map(|t| Val::Known(Rc::new(t))),
            other => Some(other),
        })
        .collect()
}

fn sanitize(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

/// A graph input's type: dtype and dims (`dim_param` becomes a symbol; a dim with neither a
/// value nor a name gets the symbol `{input}_dim{i}` so it can still be bound at run time).
fn input_type(input: &crate::onnx::proto::ValueInfoProto, name: &str) -> Result<TensorType, String> {
    use crate::onnx::proto::type_proto::Value as TypeValue;
    let tt = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t,
        Some(_) => return Err("sequence, map and optional inputs are not supported".into()),
        None => return Err("has no type".into()),
    };
    let code = tt.elem_type.unwrap_or(0);
    let dtype = onnx_dtype(code).map_err(|u| format!("element type {} is not supported", u.name))?;
    let shape = tt.shape.as_ref().ok_or("has no shape (rank unknown); Tessera needs the rank of every input")?;
    let mut dims = Vec::new();
    for (i, d) in shape.dim.iter().enumerate() {
        use crate::onnx::proto::tensor_shape_proto::dimension::Value as DimValue;
        dims.push(match &d.value {
            Some(DimValue::DimValue(n)) if *n >= 0 => Dim::Static(*n as u64),
            Some(DimValue::DimValue(n)) => return Err(format!("dim {i} is negative ({n})")),
            Some(DimValue::DimParam(s)) if !s.is_empty() => Dim::sym(&sanitize(s)),
            _ => Dim::sym(&format!("{}_dim{i}", sanitize(name))),
        });
    }
    Ok(TensorType::new(dtype, Shape(dims)))
}

/// An initializer's type and packed bytes.
fn initializer(t: &TensorProto, model: &Blob, base_dir: Option<&Path>) -> Result<(TensorType, Blob), String> {
    let meta = tensor_meta(t, None, true).map_err(|e| e.to_string())?;
    let ty = TensorType::with_static(meta.dtype, &meta.shape);
    let external = t.data_location == Some(DataLocation::External as i32);
    if external {
        let kv: HashMap<&str, &str> = t
            .external_data
            .iter()
            .map(|e| (e.key.as_deref().unwrap_or(""), e.value.as_deref().unwrap_or("")))
            .collect();
        let location = kv.get("location").ok_or("external data without a location")?;
        let rel = Path::new(location);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(format!(
                "external data location {location:?} must be a relative path inside the model's folder"
            ));
        }
        let dir = base_dir.ok_or("external data needs the model's folder (import from a file)")?;
        let file = Blob::map_file(&dir.join(rel))
            .map_err(|e| format!("cannot map external data {}: {e}", dir.join(rel).display()))?;
        let parse = |k: &str| {
            kv.get(k)
                .map(|v| v.parse::<usize>().map_err(|_| format!("external data {k} {v:?} is not a number")))
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?.unwrap_or(meta.n_bytes);
        if length != meta.n_bytes {
            return Err(format!(
                "external data length {length} does not match the {} bytes of its dims {:?}",
                meta.n_bytes, meta.shape
            ));
        }
        let data = file.slice(offset, length).ok_or_else(|| {
            format!("external data [{offset}, +{length}) lies outside {location:?} ({} bytes)", file.len())
        })?;
        return Ok((ty, data));
    }
    if let Some(raw) = &t.raw_data {
        if raw.len() != meta.n_bytes {
            return Err(format!(
                "{} dims {:?} need {} bytes of raw_data, got {}",
                meta.dtype,
                meta.shape,
                meta.n_bytes,
                raw.len()
            ));
        }
        // raw_data points into the model's map when decoded from it: share, do not copy.
        let base = model.as_ptr() as usize;
        let start = raw.as_ptr() as usize;
        if start >= base && start + raw.len() <= base + model.len() {
            if let Some(b) = model.slice(start - base, raw.len()) {
                return Ok((ty, b));
            }
        }
        return Ok((ty, Blob::from_vec(raw.to_vec())));
    }
    let tensor = tensor_from_proto(t).map_err(|e| e.to_string())?.tensor;
    Ok((ty, Blob::from_vec(tensor.to_bytes())))
}

/// Node indices in an order where every input is defined first; errors name dangling inputs
/// and cycles.
fn topological_order(graph: &crate::onnx::proto::GraphProto, ctx: &Ctx) -> Result<Vec<usize>, String> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), i).is_some() || ctx.is_defined(o) {
                return Err(format!(
                    "value {o:?} is defined more than once (node {:?})",
                    n.name.as_deref().unwrap_or("")
                ));
            }
        }
    }
    for n in &graph.node {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if !producer.contains_key(inp.as_str()) && !ctx.is_defined(inp) {
                return Err(format!(
                    "node {:?} ({}) reads {inp:?}, which no node, input or initializer defines",
                    n.name.as_deref().unwrap_or(""),
                    n.op_type.as_deref().unwrap_or("")
                ));
            }
        }
    }
    for out in &graph.output {
        let name = out.name.as_deref().unwrap_or("");
        if !producer.contains_key(name) && !ctx.is_defined(name) {
            return Err(format!("graph output {name:?} is not computed by any node"));
        }
    }
    // Kahn's algorithm, keeping the file's order among ready nodes.
    let mut indegree: Vec<usize> = graph
        .node
        .iter()
        .map(|n| n.input.iter().filter(|s| !s.is_empty()).filter(|s| producer.contains_key(s.as_str())).count())
        .collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); graph.node.len()];
    for (i, n) in graph.node.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(inp.as_str()) {
                users[p].push(i);
            }
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..graph.node.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(graph.node.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != graph.node.len() {
        let stuck: Vec<String> = (0..graph.node.len())
            .filter(|&i| indegree[i] > 0)
            .take(5)
            .map(|i| format!("{:?}", graph.node[i].name.as_deref().unwrap_or("")))
            .collect();
        return Err(format!("the graph has a cycle through nodes {}", stuck.join(", ")));
    }
    Ok(order)
}

impl fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} x{}", self.op_type, self.count)
    }
}
