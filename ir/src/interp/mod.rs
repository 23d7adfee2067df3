//! The reference interpreter: runs any verified graph, one node at a time, exactly as the op
//! documentation in `op.rs` says. It is the oracle every pass and target is tested against,
//! so it favours plain, obviously correct code over speed.

mod elementwise;
mod layout;
mod linalg;
mod nn;
mod quant;

use crate::dtype::DType;
use crate::entity::{Node, Value};
use crate::graph::{Graph, ValueDef};
use crate::op::Op;
use crate::shape::Bindings;
use crate::tensor::{Tensor, TensorData};
use ndarray::ArrayD;
use std::collections::HashMap;

/// Why a graph could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    #[error("missing input {name:?} (the graph takes {expected})")]
    MissingInput { name: String, expected: String },
    #[error("unknown input {name:?} (the graph takes {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("the graph takes {expected} inputs, {actual} were given")]
    InputCount { expected: usize, actual: usize },
    #[error("input {name:?} is {actual} but the graph takes {expected}")]
    InputDtype { name: String, expected: DType, actual: DType },
    #[error("input {name:?} has shape {actual:?}: {message}")]
    InputShape { name: String, actual: Vec<usize>, message: String },
    #[error("constant {value} holds only a summary of its data: print the graph with its weights (inline or sidecar) to run it")]
    SummaryConstant { value: Value },
    #[error("constant {value} is malformed: {message}")]
    BadConstant { value: Value, message: String },
    #[error("{node} ({op}): {message}")]
    Op { node: Node, op: &'static str, message: String },
    #[error("{node} ({op}) produced {actual} where its type says {expected}: {message}")]
    ResultType { node: Node, op: &'static str, actual: String, expected: String, message: String },
}

/// Errors inside one op; the caller attaches the node.
pub(crate) type OpResult<T> = Result<T, String>;

/// Checks inputs given in the graph's input order against its signature (count, dtypes,
/// shapes) and binds its symbolic dims: what every executor does before it runs anything.
pub fn bind_inputs(g: &Graph, inputs: &[Tensor]) -> Result<Bindings, InterpError> {
    if inputs.len() != g.inputs().len() {
        return Err(InterpError::InputCount { expected: g.inputs().len(), actual: inputs.len() });
    }
    let mut bindings = Bindings::default();
    for ((name, v), t) in g.inputs().iter().zip(inputs) {
        let ty = g.ty(*v);
        if t.dtype() != ty.dtype {
            return Err(InterpError::InputDtype { name: name.clone(), expected: ty.dtype, actual: t.dtype() });
        }
        ty.shape.bind(t.shape(), &mut bindings).map_err(|message| InterpError::InputShape {
            name: name.clone(),
            actual: t.shape().to_vec(),
            message,
        })?;
    }
    Ok(bindings)
}

/// Runs a graph on inputs given by name; returns the outputs in the graph's output order.
pub fn run_named(g: &Graph, mut inputs: HashMap<String, Tensor>) -> Result<Vec<Tensor>, InterpError> {
    let expected = || g.inputs().iter().map(|(n, _)| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    let mut ordered = Vec::with_capacity(g.inputs().len());
    for (name, _) in g.inputs() {
        let t = inputs
            .remove(name)
            .ok_or_else(|| InterpError::MissingInput { name: name.clone(), expected: expected() })?;
        ordered.push(t);
    }
    if let Some(name) = inputs.keys().next() {
        return Err(InterpError::UnknownInput { name: name.clone(), expected: expected() });
    }
    run(g, ordered)
}

/// Runs a graph on inputs given in the graph's input order.
pub fn run(g: &Graph, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InterpError> {
    let mut bindings = bind_inputs(g, &inputs)?;
    let mut env: Vec<Option<Tensor>> = vec![None; g.n_values()];
    for ((_, v), t) in g.inputs().iter().zip(inputs) {
        env[v.index()] = Some(t);
    }
    for c in g.constants() {
        env[c.value.index()] = Some(decode_const(g, c.value)?);
    }
    // Free each value after its last use, so big graphs run in bounded memory.
    let mut last_use: HashMap<Value, usize> = HashMap::new();
    for (i, (_, node)) in g.nodes().enumerate() {
        for &v in &node.inputs {
            last_use.insert(v, i);
        }
    }
    // Outputs and quant parameters are never freed.
    let mut keep: std::collections::HashSet<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
    keep.extend(
        g.values()
            .filter_map(|(_, d)| d.ty.quant.as_ref())
            .flat_map(|q| [Some(q.scale), q.zero_point, q.offset])
            .flatten(),
    );
    for (i, (n, node)) in g.nodes().enumerate() {
        let args: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|v| env[v.index()].as_ref().expect("verified graphs define operands before use"))
            .collect();
        let get = |v: Value| env[v.index()].as_ref();
        let results = run_node_with(g, n, &args, &mut bindings, &get)?;
        for (&v, t) in node.outputs.iter().zip(results) {
            env[v.index()] = Some(t);
        }
        for &v in &node.inputs {
            if last_use.get(&v) == Some(&i) && !keep.contains(&v) {
                env[v.index()] = None;
            }
        }
    }
    Ok(g.outputs().iter().map(|(_, v)| env[v.index()].clone().expect("outputs are defined")).collect())
}

/// Runs node `n` of `g` alone on `args` (its operands' values, in order), as [`run`] would;
/// `bindings` holds the graph's symbols (bound from the inputs' shapes) and learns any a result
/// shape binds. Targets use it to run a node they decline on the host.
pub fn run_node(g: &Graph, n: Node, args: &[&Tensor], bindings: &mut Bindings) -> Result<Vec<Tensor>, InterpError> {
    // Quantization parameters are constants: decode the ones the node's types name.
    let mut params: HashMap<Value, Tensor> = HashMap::new();
    for &v in &g.node(n).inputs {
        if let Some(q) = g.ty(v).quant.as_ref() {
            for p in [Some(q.scale), q.zero_point, q.offset].into_iter().flatten() {
                params.insert(p, decode_const(g, p)?);
            }
        }
    }
    run_node_with(g, n, args, bindings, &|v| params.get(&v))
}

/// One node; `get` finds the values of quantization parameters.
fn run_node_with<'t>(
    g: &Graph,
    n: Node,
    args: &[&Tensor],
    bindings: &mut Bindings,
    get: &dyn Fn(Value) -> Option<&'t Tensor>,
) -> Result<Vec<Tensor>, InterpError> {
    let node = g.node(n);
    let op_err = |message: String| InterpError::Op { node: n, op: node.op.name(), message };
    if args.len() != node.inputs.len() {
        return Err(op_err(format!("{} operands given, the node takes {}", args.len(), node.inputs.len())));
    }
    let results = match &node.op {
        Op::Kernel { .. } => {
            let body = node.body.as_ref().ok_or_else(|| op_err("kernel without a body".into()))?;
            run(body, args.iter().map(|t| (*t).clone()).collect()).map_err(|e| op_err(format!("in the body: {e}")))?
        }
        Op::QMatMul | Op::Dequantize { .. } if matches!(node.op, Op::QMatMul) || args.len() == 1 => {
            let w = node.inputs[node.inputs.len() - 1];
            let q = g.ty(w).quant.as_ref().ok_or_else(|| op_err(format!("{w} has no quantized type")))?;
            let param = |v: Value| get(v).ok_or_else(|| op_err(format!("quantization parameter {v} is not known")));
            let params = quant::TypeQuant {
                quant: q,
                scale: param(q.scale)?,
                zero: q.zero_point.map(param).transpose()?,
                offset: q.offset.map(param).transpose()?,
            };
            let deq = quant::dequantize_typed(args[args.len() - 1], &params).map_err(op_err)?;
            match node.op {
                Op::QMatMul => vec![linalg::matmul(args[0], &deq, DType::F32).map_err(op_err)?],
                _ => vec![deq],
            }
        }
        op => eval(op, args, bindings).map_err(op_err)?,
    };
    for (&v, t) in node.outputs.iter().zip(&results) {
        check_result(g, n, v, t, bindings)?;
    }
    Ok(results)
}

/// A constant's value, decoded; for a constant of a quantized type, its dequantized (real) value
/// exactly as the interpreter computes it. Targets use this to pack weights at compile time.
pub fn const_value(g: &Graph, v: Value, dequantized: bool) -> Result<Tensor, InterpError> {
    if !matches!(g.value(v).def, ValueDef::Const(_)) {
        return Err(InterpError::BadConstant { value: v, message: "not a constant".into() });
    }
    let t = decode_const(g, v)?;
    let Some(q) = g.ty(v).quant.as_ref().filter(|_| dequantized) else { return Ok(t) };
    let scale = decode_const(g, q.scale)?;
    let zero = q.zero_point.map(|z| decode_const(g, z)).transpose()?;
    let offset = q.offset.map(|o| decode_const(g, o)).transpose()?;
    let params = quant::TypeQuant { quant: q, scale: &scale, zero: zero.as_ref(), offset: offset.as_ref() };
    quant::dequantize_typed(&t, &params).map_err(|message| InterpError::BadConstant { value: v, message })
}

fn decode_const(g: &Graph, v: Value) -> Result<Tensor, InterpError> {
    let ValueDef::Const(id) = g.value(v).def else { unreachable!("called on constants") };
    let bytes = g.constant(id).data.bytes().ok_or(InterpError::SummaryConstant { value: v })?;
    let ty = g.ty(v);
    let dims = ty
        .shape
        .as_static()
        .ok_or_else(|| InterpError::BadConstant { value: v, message: "shape is not static".into() })?;
    Tensor::from_bytes(ty.dtype, &dims, bytes)
        .map_err(|e| InterpError::BadConstant { value: v, message: e.to_string() })
}

fn check_result(g: &Graph, n: Node, v: Value, t: &Tensor, bindings: &mut Bindings) -> Result<(), InterpError> {
    let ty = g.ty(v);
    let mismatch = |message: String| InterpError::ResultType {
        node: n,
        op: g.node(n).op.name(),
        actual: format!("{}{:?}", t.dtype(), t.shape()),
        expected: ty.to_string(),
        message,
    };
    if t.dtype() != ty.dtype {
        return Err(mismatch("dtype differs".into()));
    }
    ty.shape.bind(t.shape(), bindings).map_err(mismatch)
}

/// Evaluates one op (kernels and type-quantized operands are handled by the caller).
fn eval(op: &Op, args: &[&Tensor], bindings: &Bindings) -> OpResult<Vec<Tensor>> {
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Op::Unary(u) => one(elementwise::unary(*u, args[0])?),
        Op::Binary(b) => one(elementwise::binary(*b, args[0], args[1])?),
        Op::Where => one(elementwise::where_(args[0], args[1], args[2])?),
        Op::Cast { to } => one(elementwise::cast(args[0], *to)?),
        Op::MatMul => one(linalg::matmul(args[0], args[1], args[0].dtype())?),
        Op::Gemm { alpha, beta, trans_a, trans_b } => one(linalg::gemm(args, *alpha, *beta, *trans_a, *trans_b)?),
        Op::MatMulInteger { pair_saturate: false } => one(linalg::matmul_integer(args)?),
        Op::MatMulInteger { pair_saturate: true } => one(linalg::matmul_integer_pair_saturate(args)?),
        Op::QMatMul => Err("the weight of `qmatmul` has no quantized type".into()),
        Op::Quantize { axis, block, to } => one(quant::quantize(args, *axis, *block, *to)?),
        Op::Dequantize { axis, block } => {
            if args.len() == 1 {
                return Err("`dequantize` with one operand needs a quantized operand type".into());
            }
            one(quant::dequantize(args, *axis, *block)?)
        }
        Op::DynamicQuantize => quant::dynamic_quantize(args[0]),
        Op::FakeQuant { format } => one(quant::fake_quant(args[0], *format)?),
        Op::Reduce { op, axes, keepdims } => match args.get(1) {
            Some(a) => one(nn::reduce(*op, args[0], &ints(a)?.iter().copied().collect::<Vec<_>>(), *keepdims)?),
            None => one(nn::reduce(*op, args[0], axes, *keepdims)?),
        },
        Op::ArgMax { axis, keepdims, last } => one(nn::argmax(args[0], *axis, *keepdims, *last)?),
        Op::Softmax { axis } => one(nn::softmax(args[0], *axis, false)?),
        Op::LogSoftmax { axis } => one(nn::softmax(args[0], *axis, true)?),
        Op::LayerNorm { axis, epsilon } => one(nn::layer_norm(args, *axis, *epsilon)?),
        Op::RmsNorm { axis, epsilon } => one(nn::rms_norm(args, *axis, *epsilon)?),
        Op::Attention { scale, causal } => one(linalg::attention(args, *scale, *causal)?),
        Op::Gather { axis } => one(layout::gather(args[0], args[1], *axis)?),
        Op::GatherNd { batch_dims } => one(layout::gather_nd(args[0], args[1], *batch_dims)?),
        Op::Concat { axis } => one(layout::concat(args, *axis)?),
        Op::Slice { starts, .. } if starts.is_empty() => {
            let v = |i: usize| -> OpResult<Option<Vec<i64>>> {
                args.get(i).map(|t| ints(t).map(|a| a.iter().copied().collect())).transpose()
            };
            let (s, e) = (v(1)?.unwrap_or_default(), v(2)?.unwrap_or_default());
            let axes = v(3)?.unwrap_or_else(|| (0..s.len() as i64).collect());
            let steps = v(4)?.unwrap_or_else(|| vec![1; s.len()]);
            if e.len() != s.len() || axes.len() != s.len() || steps.len() != s.len() {
                return Err("starts, ends, axes and steps differ in length".into());
            }
            one(layout::slice(args[0], &s, &e, &axes, &steps)?)
        }
        Op::Slice { starts, ends, axes, steps } => {
            let resolve = |ds: &[crate::op::TargetDim]| -> OpResult<Vec<i64>> {
                ds.iter()
                    .map(|d| match d {
                        crate::op::TargetDim::Int(n) => Ok(*n),
                        crate::op::TargetDim::Sym(s) => {
                            bindings.get(s).map(|v| v as i64).ok_or_else(|| format!("symbol `{s}` is not bound"))
                        }
                    })
                    .collect()
            };
            one(layout::slice(args[0], &resolve(starts)?, &resolve(ends)?, axes, steps)?)
        }
        Op::Split { axis, sizes } => match args.get(1) {
            Some(s) => {
                let given: Vec<u64> = ints(s)?
                    .iter()
                    .map(|&v| u64::try_from(v).map_err(|_| format!("negative split size {v}")))
                    .collect::<OpResult<_>>()?;
                if given.len() != sizes.len() {
                    return Err(format!("{} split sizes for {} results", given.len(), sizes.len()));
                }
                layout::split(args[0], *axis, &given)
            }
            None => layout::split(args[0], *axis, sizes),
        },
        Op::Reshape { shape } => one(layout::reshape(args, shape.as_deref(), bindings)?),
        Op::Transpose { perm } => one(layout::transpose(args[0], perm)?),
        Op::Expand { shape } => one(layout::expand(args, shape.as_deref(), bindings)?),
        Op::Squeeze { axes } => match args.get(1) {
            Some(a) => one(layout::squeeze(args[0], &ints(a)?.iter().copied().collect::<Vec<_>>())?),
            None => one(layout::squeeze(args[0], axes)?),
        },
        Op::Unsqueeze { axes } => match args.get(1) {
            Some(a) => one(layout::unsqueeze(args[0], &ints(a)?.iter().copied().collect::<Vec<_>>())?),
            None => one(layout::unsqueeze(args[0], axes)?),
        },
        Op::ShapeOf => {
            let dims: Vec<i64> = args[0].shape().iter().map(|&d| d as i64).collect();
            one(Tensor::from_i64(DType::I64, &[dims.len()], dims).map_err(|e| e.to_string())?)
        }
        Op::Range => one(layout::range(args)?),
        Op::ConstantOfShape { value, dtype } => one(layout::constant_of_shape(args[0], *value, *dtype)?),
        Op::Identity => one(args[0].clone()),
        Op::Kernel { .. } => unreachable!("kernels are run by the caller"),
    }
}

/// Builds a result of `dtype` from values of its domain, rounding or wrapping into the type.
pub(crate) fn float_result(dtype: DType, mut a: ArrayD<f32>) -> Tensor {
    if dtype != DType::F32 {
        a.mapv_inplace(|x| crate::tensor::round_to(dtype, x));
    }
    Tensor::from_data(dtype, TensorData::Float(a))
}

pub(crate) fn int_result(dtype: DType, mut a: ArrayD<i64>) -> Tensor {
    a.mapv_inplace(|x| dtype.wrap_int(x));
    Tensor::from_data(dtype, TensorData::Int(a))
}

pub(crate) fn floats(t: &Tensor) -> OpResult<&ArrayD<f32>> {
    t.as_float().ok_or_else(|| format!("expected floats, got {}", t.dtype()))
}

pub(crate) fn ints(t: &Tensor) -> OpResult<&ArrayD<i64>> {
    t.as_int().ok_or_else(|| format!("expected integers, got {}", t.dtype()))
}

pub(crate) fn bools(t: &Tensor) -> OpResult<&ArrayD<bool>> {
    t.as_bool().ok_or_else(|| format!("expected bools, got {}", t.dtype()))
}

/// Numpy broadcast of concrete shapes.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> OpResult<Vec<usize>> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
            let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

pub(crate) fn axis(axis: i64, rank: usize) -> OpResult<usize> {
    crate::types::normalize_axis(axis, rank).ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
}
