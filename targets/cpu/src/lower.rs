//! Chooses the kernel for each node: fused elementwise regions, matmul regions with their
//! epilogue, layout copies, normalizations, attention, reductions and quantization.

use std::borrow::Cow;

use tessera_ir::{Dim, Graph, Node, Op, TensorType, Value};

use crate::ew::{self, EwKernel};
use crate::fx::Fx;
use crate::program::ParamFn;
use crate::{gemm, layout, nn, CpuError};

/// Where a kernel buffer comes from.
#[derive(Clone, Debug)]
pub(crate) enum BufRef {
    Value(Value),
    /// Bytes the program owns (packed weights).
    Owned(usize),
}

pub(crate) type Emit<'g> = Box<dyn FnOnce(&mut Fx) -> Result<(), CpuError> + 'g>;

pub(crate) struct Lowered<'g> {
    pub name: String,
    pub bufs: Vec<BufRef>,
    pub par: Option<(Vec<Dim>, u64)>,
    pub params: Option<ParamFn>,
    pub scratch: Option<ParamFn>,
    pub emit: Emit<'g>,
}

impl<'g> Lowered<'g> {
    pub fn new(name: impl Into<String>, bufs: Vec<BufRef>, emit: Emit<'g>) -> Lowered<'g> {
        Lowered { name: name.into(), bufs, par: None, params: None, scratch: None, emit }
    }
}

pub(crate) fn values(vs: &[Value]) -> Vec<BufRef> {
    vs.iter().map(|v| BufRef::Value(*v)).collect()
}

pub(crate) fn dims(g: &Graph, v: Value) -> Vec<Dim> {
    g.ty(v).shape.dims().to_vec()
}

/// A one-node body for an elementwise op, so single ops and fused regions share one code path.
fn single_body(g: &Graph, op: &Op, inputs: &[Value], result: &TensorType) -> Graph {
    let mut body = Graph::new("single");
    let ins: Vec<Value> =
        inputs.iter().enumerate().map(|(i, v)| body.add_input(&format!("p{i}"), g.ty(*v).clone())).collect();
    let n = body.add_node(op.clone(), ins, vec![result.clone()]);
    let r = body.node(n).outputs[0];
    body.add_output("r", r);
    body
}

pub(crate) fn lower<'g>(g: &'g Graph, n: Node, owned: &mut Vec<Vec<u8>>) -> Result<Lowered<'g>, CpuError> {
    let nd = g.node(n);
    if let Some(p) = nd.placement {
        if p != tessera_ir::Device::Cpu {
            return Err(CpuError::Unsupported(format!("placed on {}", p.name())));
        }
    }
    let out = nd.outputs[0];
    match &nd.op {
        Op::Kernel { name } => {
            let body = nd.body.as_deref().ok_or_else(|| CpuError::Codegen("kernel without a body".into()))?;
            if body.outputs().len() != 1 || nd.outputs.len() != 1 {
                return Err(CpuError::Unsupported("kernel regions with several results".into()));
            }
            let first = body.nodes().next().map(|(_, b)| &b.op);
            if matches!(first, Some(Op::MatMul | Op::Gemm { .. } | Op::MatMulInteger { .. } | Op::QMatMul)) {
                return gemm::lower_region(g, n, body, name, owned);
            }
            for (_, bn) in body.nodes() {
                let rank = body.ty(bn.outputs[0]).rank();
                ew::body_op_supported(body, &bn.op, &bn.inputs, rank).map_err(CpuError::Unsupported)?;
            }
            Ok(elementwise(g, n, Cow::Borrowed(body), name.clone()))
        }
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast { .. } | Op::Quantize { .. } => {
            ew::body_op_supported(g, &nd.op, &nd.inputs, g.ty(out).rank()).map_err(CpuError::Unsupported)?;
            let body = single_body(g, &nd.op, &nd.inputs, g.ty(out));
            Ok(elementwise(g, n, Cow::Owned(body), nd.op.name().to_string()))
        }
        Op::Dequantize { .. }
            if nd.inputs.len() >= 2 && ew::body_op_supported(g, &nd.op, &nd.inputs, g.ty(out).rank()).is_ok() =>
        {
            let body = single_body(g, &nd.op, &nd.inputs, g.ty(out));
            Ok(elementwise(g, n, Cow::Owned(body), "dequantize".to_string()))
        }
        Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Identity => layout::lower_copy(g, n),
        Op::Transpose { .. } | Op::Expand { .. } | Op::Slice { .. } | Op::Concat { .. } | Op::Split { .. } => {
            layout::lower(g, n)
        }
        Op::Gather { .. } => layout::lower_gather(g, n),
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } => nn::lower_norm(g, n),
        Op::Attention { .. } => nn::lower_attention(g, n),
        Op::Reduce { .. } | Op::ArgMax { .. } => nn::lower_reduce(g, n),
        Op::DynamicQuantize => nn::lower_dynamic_quantize(g, n),
        Op::MatMul | Op::Gemm { .. } | Op::MatMulInteger { .. } | Op::QMatMul | Op::Dequantize { .. } => {
            gemm::lower_single(g, n, owned)
        }
        Op::ShapeOf | Op::Range | Op::ConstantOfShape { .. } => layout::lower_shape_ops(g, n),
        other => Err(CpuError::Unsupported(format!("no CPU kernel for `{}` yet", other.name()))),
    }
}

fn elementwise<'g>(g: &'g Graph, n: Node, body: Cow<'g, Graph>, name: String) -> Lowered<'g> {
    let nd = g.node(n);
    let out = nd.outputs[0];
    let k = EwKernel {
        body,
        out_dims: dims(g, out),
        out_dtype: g.ty(out).dtype,
        operands: nd.inputs.iter().map(|v| (g.ty(*v).dtype, dims(g, *v))).collect(),
    };
    let mut bufs = values(&nd.inputs);
    bufs.push(BufRef::Value(out));
    Lowered::new(name, bufs, Box::new(move |fx| k.emit(fx)))
}
