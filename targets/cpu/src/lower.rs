//! Chooses the kernel for each node: fused elementwise regions, matmul regions with their
//! epilogue, layout copies, normalizations, attention, reductions and quantization.

use std::borrow::Cow;

use tessera_ir::{Dim, Graph, Node, Op, TensorType, Value};

use crate::ew::{self, EwKernel};
use crate::fx::Fx;
use crate::program::ParamSpec;
use crate::{gemm, layout, nn, reduce, CpuError};

pub(crate) use crate::program::BufRef;

/// What lowering builds besides kernels: bytes the program owns (packed weights), and the
/// options that choose kernels.
#[derive(Default)]
pub(crate) struct Build {
    pub owned: Vec<Vec<u8>>,
    pub ukernels: crate::Ukernels,
    /// Narrow weights packed so far ([`crate::blocked::packed`]), None where one cannot be:
    /// every kernel reading a weight shares its one packed copy.
    pub packs: std::collections::HashMap<Value, Option<crate::blocked::Packed>>,
}

impl Build {
    /// Keeps `bytes` for the program's lifetime; returns its [`BufRef::Owned`] index.
    pub fn push(&mut self, bytes: Vec<u8>) -> usize {
        self.owned.push(bytes);
        self.owned.len() - 1
    }
}

pub(crate) type Emit<'g> = Box<dyn FnOnce(&mut Fx) -> Result<(), CpuError> + 'g>;

pub(crate) struct Lowered<'g> {
    pub name: String,
    pub bufs: Vec<BufRef>,
    pub par: Option<(Vec<Dim>, u64)>,
    pub params: Option<ParamSpec>,
    pub scratch: Option<ParamSpec>,
    /// Run the whole parallel range in one call (never split across threads).
    pub serial: bool,
    pub emit: Emit<'g>,
}

impl<'g> Lowered<'g> {
    pub fn new(name: impl Into<String>, bufs: Vec<BufRef>, emit: Emit<'g>) -> Lowered<'g> {
        Lowered { name: name.into(), bufs, par: None, params: None, scratch: None, serial: false, emit }
    }
}

pub(crate) fn values(vs: &[Value]) -> Vec<BufRef> {
    vs.iter().map(|v| BufRef::Value(*v)).collect()
}

pub(crate) fn dims(g: &Graph, v: Value) -> Vec<Dim> {
    g.ty(v).shape.dims().to_vec()
}

/// A one-node body for a single op, so single ops and fused regions share one code path.
/// Operand types are plain: quantized types name values of the outer graph.
pub(crate) fn single_body(g: &Graph, op: &Op, inputs: &[Value], result: &TensorType) -> Graph {
    let mut body = Graph::new("single");
    let ins: Vec<Value> =
        inputs.iter().enumerate().map(|(i, v)| body.add_input(&format!("p{i}"), g.ty(*v).plain())).collect();
    let n = body.add_node(op.clone(), ins, vec![result.clone()]);
    let r = body.node(n).outputs[0];
    body.add_output("r", r);
    body
}

pub(crate) fn lower<'g>(g: &'g Graph, n: Node, owned: &mut Build) -> Result<Lowered<'g>, CpuError> {
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
            let all_ew = body
                .nodes()
                .all(|(_, bn)| ew::body_op_supported(body, &bn.op, &bn.inputs, body.ty(bn.outputs[0]).rank()).is_ok());
            if all_ew {
                return Ok(elementwise(g, n, Cow::Borrowed(body), name.clone()));
            }
            head_and_epilogue(g, n, body, name, owned)
        }
        Op::Cast { to } if to.is_sub_byte() || g.ty(nd.inputs[0]).dtype.is_sub_byte() => ew::lower_subbyte_cast(g, n),
        Op::Quantize { .. } | Op::Dequantize { .. }
            if ew::body_op_supported(g, &nd.op, &nd.inputs, g.ty(out).rank()).is_err() && g.ty(out).quant.is_none() =>
        {
            ew::lower_quant_general(g, n)
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
        Op::Gather { .. } => match crate::blocked::lower_gather(g, n, owned) {
            Some(l) => Ok(l),
            None => layout::lower_gather(g, n),
        },
        Op::GatherNd { .. } => layout::lower_gather_nd(g, n),
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } => nn::lower_norm(g, n),
        Op::Attention { .. } => nn::lower_attention(g, n, owned.ukernels),
        Op::Reduce { .. } | Op::ArgMax { .. } => reduce::lower_reduce(g, n),
        Op::DynamicQuantize => nn::lower_dynamic_quantize(g, n, owned.ukernels),
        Op::FakeQuant { format } => nn::lower_fake_quant(g, n, *format),
        Op::MatMul | Op::Gemm { .. } | Op::MatMulInteger { .. } | Op::QMatMul | Op::Dequantize { .. } => {
            gemm::lower_single(g, n, owned)
        }
        Op::ShapeOf | Op::Range | Op::ConstantOfShape { .. } => layout::lower_shape_ops(g, n),
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

/// Whether a region's tail can run in place over its head's result (see [`head_and_epilogue`]):
/// the head's result `ht` has the region result's shape and element size.
pub(crate) fn head_fits(ht: &TensorType, ot: &TensorType) -> bool {
    ht.shape == ot.shape && ht.dtype.bits() == ot.dtype.bits()
}

/// A region `head; elementwise tail` whose head is not a product (a normalization, reduction,
/// softmax, ...): one function runs the head's kernel writing the region's result buffer, then
/// the tail in place over it (elementwise reads element i before writing it). Needs the head's
/// result to have the region result's shape and element size; runs on one thread.
fn head_and_epilogue<'g>(
    g: &'g Graph,
    n: Node,
    body: &'g Graph,
    name: &str,
    owned: &mut Build,
) -> Result<Lowered<'g>, CpuError> {
    let nd = g.node(n);
    let out = nd.outputs[0];
    let (hn, hnd) = body.nodes().next().ok_or_else(|| CpuError::Codegen("empty region".into()))?;
    let h_out = hnd.outputs[0];
    let (ht, ot) = (body.ty(h_out), g.ty(out));
    if !head_fits(ht, ot) {
        return Err(CpuError::Unsupported(format!(
            "region `{name}`: its head `{}` gives {ht} but the region gives {ot}",
            hnd.op.name()
        )));
    }
    let tail: Vec<Node> = body.nodes().skip(1).map(|(x, _)| x).collect();
    for &x in &tail {
        let bn = body.node(x);
        ew::body_op_supported(body, &bn.op, &bn.inputs, body.ty(bn.outputs[0]).rank())
            .map_err(CpuError::Unsupported)?;
    }
    let head = lower(body, hn, owned)?;
    if head.scratch.is_some() {
        return Err(CpuError::Unsupported(format!("region `{name}`: a head needing scratch memory")));
    }
    // Map the head's buffers from body values to the node's operands and result.
    let outer = |b: &BufRef| -> Result<BufRef, CpuError> {
        match b {
            BufRef::Value(v) if *v == h_out => Ok(BufRef::Value(out)),
            BufRef::Value(v) => match body.inputs().iter().position(|(_, x)| x == v) {
                Some(i) => Ok(BufRef::Value(nd.inputs[i])),
                None => {
                    Err(CpuError::Unsupported(format!("region `{name}`: head reads a value made inside the region")))
                }
            },
            other => Ok(*other),
        }
    };
    let mut bufs: Vec<BufRef> = head.bufs.iter().map(outer).collect::<Result<_, _>>()?;
    let head_len = bufs.len();
    // The tail as its own body: inputs are the head's result then the region inputs it reads.
    let mut tb = Graph::new("tail");
    let mut map: std::collections::HashMap<Value, Value> = std::collections::HashMap::new();
    map.insert(h_out, tb.add_input("h", ht.plain()));
    let mut operands = vec![(ot.dtype, dims(g, out))];
    bufs.push(BufRef::Value(out));
    for (i, (_, bv)) in body.inputs().iter().enumerate() {
        if tail.iter().any(|&x| body.node(x).inputs.contains(bv)) {
            map.insert(*bv, tb.add_input(&format!("p{i}"), body.ty(*bv).plain()));
            operands.push((g.ty(nd.inputs[i]).dtype, dims(g, nd.inputs[i])));
            bufs.push(BufRef::Value(nd.inputs[i]));
        }
    }
    for &x in &tail {
        let bn = body.node(x);
        let ins: Vec<Value> = bn
            .inputs
            .iter()
            .map(|v| {
                map.get(v).copied().ok_or_else(|| CpuError::Unsupported(format!("region `{name}`: tail reads {v}")))
            })
            .collect::<Result<_, _>>()?;
        let nn = tb.add_node(bn.op.clone(), ins, vec![body.ty(bn.outputs[0]).plain()]);
        map.insert(bn.outputs[0], tb.node(nn).outputs[0]);
    }
    let r = map[&body.outputs()[0].1];
    tb.add_output("r", r);
    bufs.push(BufRef::Value(out));
    let k = EwKernel { body: Cow::Owned(tb), out_dims: dims(g, out), out_dtype: ot.dtype, operands };
    let head_emit = head.emit;
    let mut lw = Lowered::new(
        name.to_string(),
        bufs,
        Box::new(move |fx| {
            // The head runs its whole range on this call.
            head_emit(fx)?;
            fx.buf_base = head_len;
            k.emit(fx)
        }),
    );
    lw.params = head.params;
    lw.par = head.par;
    lw.serial = true;
    Ok(lw)
}
