//! The kernels: strided elementwise (unary, binary with broadcasting, transpose and expand as
//! copies), a shared-memory tiled matmul, and one-workgroup-per-row softmax and norms.

use rspirv::spirv::Word;
use tessera_ir::{BinaryOp, DType, Graph, Node, Op, QuantGranularity, UnaryOp, Value};

use crate::sb::{Glsl, Sb};
use crate::{GpuError, Limits};

/// What a shader computes, independent of sizes (sizes arrive as push constants).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Spec {
    /// `out[i] = f(in_0[off_0(i)], ..)` over `rank` dims, each input with its own strides
    /// (0 where it broadcasts).
    Elementwise { f: EwFn, rank: u32 },
    /// `c[b] = alpha * a[b] @ b[b] (+ beta * bias)`, batch dims broadcast (`batch_rank` of
    /// them), operands read through strides (so Gemm's transposes cost nothing). `tiled`: 16x16
    /// tiles staged in shared memory (GPUs); else each invocation keeps a 1x4 block of results
    /// in registers and reads its operands directly (CPU Vulkan devices such as lavapipe,
    /// where a workgroup barrier is a context switch per invocation).
    MatMul { batch_rank: u32, bias: bool, tiled: bool },
    /// One workgroup per row of `cols` floats; reductions through subgroup arithmetic when
    /// `subgroups`.
    Rows { f: RowFn, subgroups: bool },
    /// `x @ dequantize(w)` with `w` a 2-D `[k, n]` weight of `bits`-bit integers (packed in u32
    /// words, unpacked in the shader) and its scales (and zero points, packed alike) per
    /// tensor, column, row or block; the matmul's tiling, the B tile dequantized as it loads.
    QMatMul { batch_rank: u32, bits: u32, signed: bool, zero: bool, tiled: bool },
    /// `data[.., indices[j], ..]` with i64 (`wide`) or i32 indices, checked in range by the
    /// executor before the dispatch; f32 data, or bytes (`bytes`: u8/i8, four results packed
    /// per word by each invocation).
    Gather { wide: bool, bytes: bool },
    /// `argmax` of f32 along one axis (the first maximum, or the last with `last`; the first
    /// NaN wins), one invocation per result, written as i64.
    ArgMax { last: bool },
    /// Elementwise ops with bool results (comparisons, logic), four results per invocation.
    Bytes { f: ByteFn, rank: u32 },
    /// ONNX DynamicQuantizeLinear in one workgroup: the min and max reduced, then scale, zero
    /// point and every u8 packed four to a word.
    DynQuant,
    /// `matmul_integer` on 8-bit operands, exact in 32-bit integers, one result per
    /// invocation; zero points for A scalar, for B scalar or per column; `pair` computes
    /// onnxruntime's x86 u8 x s8 pair saturation instead.
    MatMulInt { batch_rank: u32, a_signed: bool, b_signed: bool, a_zero: bool, b_zero: bool, pair: bool },
    /// `reduce_*` over `red_rank` dims, one invocation per result element combining in
    /// increasing index order (max and min propagate NaN).
    Reduce { op: tessera_ir::ReduceOp, out_rank: u32, red_rank: u32 },
    /// A fused kernel region of elementwise ops: `prog` evaluated per result element over the
    /// region's operands (`words[j]`: operand `j` is an integer type read as words and cast),
    /// each with its own broadcast strides; result `out` of the program is stored.
    Fused { prog: Vec<Step>, out: u32, words: Vec<bool>, rank: u32 },
    /// A fused region `matmul` then elementwise ops on its result (bias, residual, GELU):
    /// the matmul kernel with `prog` applied in its epilogue; `extra` further operands read at
    /// each result's coordinates.
    MatMulFused { batch_rank: u32, tiled: bool, prog: Vec<Step>, out: u32, extra: u32 },
    /// `split` into `outputs` results (up to 7) of `words`-word elements, one invocation per
    /// operand element.
    Split { outputs: u32, words: u32 },
    /// `concat` of `inputs` operands of `words`-word elements (f32 and i32 as one word, i64 as
    /// two), one invocation per result element.
    Concat { inputs: u32, words: u32 },
    /// `softmax(q @ k^T * scale + mask) @ v`, one workgroup per query row: the query row and
    /// the row's scores (up to `cap` keys) staged in shared memory, exact two-pass softmax.
    Attention { batch_rank: u32, mask: bool, causal: bool, cap: u32, subgroups: bool },
}

/// The function of an elementwise kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EwFn {
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// A strided copy of f32 (transpose, expand, slice).
    Copy,
    /// A strided copy of elements of `words` u32 words (i32, i64: index data moved as is).
    CopyWords {
        words: u32,
    },
    /// A conversion to f32 from an integer or bool type (read from u32 words; bytes and
    /// nibbles unpacked). i64 values beyond i32's range take two roundings (within 1 ulp).
    ToF32 {
        from: DType,
    },
    /// `(x - zero) * scale` from 8- or 4-bit integers `x` (and `zero`, when given), per tensor
    /// or per axis (the strides say which).
    Dequant {
        from: DType,
        zero: bool,
    },
    /// `where cond, a, b` with a bool (byte) condition and f32 values.
    Where,
}

/// An elementwise function with a bool (byte) result: each invocation computes four adjacent
/// results and writes them as one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteFn {
    /// An ordered comparison of two f32 operands (false when either is NaN, as in Rust).
    Cmp(BinaryOp),
    /// `and`, `or`, `xor` of two bools.
    Logic(BinaryOp),
    /// `not` of a bool.
    Not,
}

/// One step of a fused region's program; operands name earlier steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Region operand `j`, f32.
    Load(u32),
    /// Region operand `j` of integer or bool type `from`, cast to f32.
    LoadAs(u32, DType),
    /// The matmul's result (epilogues).
    Acc,
    Unary(UnaryOp, u32),
    Binary(BinaryOp, u32, u32),
}

/// The function of a row kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowFn {
    Softmax,
    LogSoftmax,
    /// `epsilon` as its bits (so the spec hashes), with or without a bias.
    LayerNorm {
        epsilon: u32,
        bias: bool,
    },
    RmsNorm {
        epsilon: u32,
    },
}

/// A compiled shader.
pub struct Kernel {
    pub spec: Spec,
    pub module: rspirv::dr::Module,
    pub words: Vec<u32>,
    /// Storage buffers: the inputs, then the output.
    pub buffers: usize,
    pub push_words: u32,
    pub local: [u32; 3],
    pub shared_bytes: u32,
}

/// How one node runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The output is the first input's buffer, reinterpreted (reshape, squeeze, ...).
    View,
    /// A dispatch of the kernel for `spec`, with `operands` bound to its buffers in order and
    /// the node's result after them.
    Dispatch {
        spec: Spec,
        operands: Vec<Value>,
        push: Vec<u32>,
        groups: [u32; 3],
        bytes_read: u64,
        bytes_written: u64,
        /// Floating-point operations (a multiply-add counts 2; exp, erf and the like count 8),
        /// for the cost model.
        flops: u64,
    },
}

const EW_LOCAL: u32 = 64;
/// The untiled matmul: 16 x 4 invocations, each with `DIRECT_COLS` results of one row,
/// 16 columns apart.
const DIRECT_LOCAL: [u32; 3] = [16, 4, 1];
const DIRECT_COLS: u32 = 4;
const TILE: u32 = 16;
const ROW_LOCAL: u32 = 64;

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// Plans node `n` of `g` with its inputs' shapes `ins` and its output's shape `out`.
pub fn plan(g: &Graph, n: Node, ins: &[&[usize]], out: &[usize], limits: &Limits) -> Result<Plan, GpuError> {
    let nd = g.node(n);
    let name = nd.op.name();
    if nd.outputs.len() != 1 && !matches!(nd.op, Op::DynamicQuantize | Op::Split { .. }) {
        return Err(GpuError::declined(name, "more than one result"));
    }
    if let Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } | Op::Identity = nd.op {
        if g.ty(nd.inputs[0]).dtype == g.ty(nd.outputs[0]).dtype {
            return Ok(Plan::View);
        }
    }
    // Every operand read as data must be f32, but for ops that move or convert other types
    // (and a qmatmul's weight and a gather's indices).
    let data_inputs = match nd.op {
        Op::Reshape { .. }
        | Op::Expand { .. }
        | Op::QMatMul
        | Op::Gather { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Cast { .. }
        | Op::DynamicQuantize
        | Op::MatMulInteger { .. }
        | Op::Dequantize { .. }
        | Op::Kernel { .. }
        | Op::Where
        | Op::Split { .. }
        | Op::ArgMax { .. }
        | Op::Unary(UnaryOp::Not) => 0,
        Op::Binary(b) if compare_op(b) || logic_op(b) => 0,
        _ => nd.inputs.len(),
    };
    // (The ops with their own dtype rules check their operands and results below.)
    let own_rules = data_inputs == 0;
    for &v in nd.inputs[..data_inputs].iter().chain(&nd.outputs).filter(|_| !own_rules) {
        let d = g.ty(v).dtype;
        if d != DType::F32 {
            return Err(GpuError::declined(name, format!("{d} operands (the GPU target is f32-only so far)")));
        }
    }
    if matches!(nd.op, Op::QMatMul | Op::DynamicQuantize) && g.ty(nd.inputs[0]).dtype != DType::F32 {
        return Err(GpuError::declined(name, format!("{} data", g.ty(nd.inputs[0]).dtype)));
    }
    // How a data-moving op copies its elements.
    let copy = match g.ty(nd.outputs[0]).dtype {
        DType::F32 => Some(EwFn::Copy),
        d if d.bits() == 32 => Some(EwFn::CopyWords { words: 1 }),
        d if d.bits() == 64 => Some(EwFn::CopyWords { words: 2 }),
        _ => None,
    };
    let copy_or_decline = || {
        copy.ok_or_else(|| {
            GpuError::declined(
                name,
                format!("{} elements (copies move 4- or 8-byte elements)", g.ty(nd.outputs[0]).dtype),
            )
        })
    };
    let bytes_out = g.ty(nd.outputs[0]).dtype.storage_bytes(numel(out)) as u64;
    let plan = match &nd.op {
        Op::Unary(UnaryOp::Not) => {
            if g.ty(nd.inputs[0]).dtype != DType::Bool {
                return Err(GpuError::declined(
                    name,
                    format!("{} operands (bool has a shader)", g.ty(nd.inputs[0]).dtype),
                ));
            }
            bytes_ew(ByteFn::Not, &[(ins[0], contiguous(ins[0]))], out, limits)?
        }
        Op::Unary(u) => {
            if !unary_supported(*u) {
                return Err(GpuError::declined(name, format!("no shader for {}", u.name())));
            }
            elementwise(EwFn::Unary(*u), &[(ins[0], contiguous(ins[0]))], out, limits)?
        }
        Op::Binary(b) if compare_op(*b) || logic_op(*b) => {
            let want = if compare_op(*b) { DType::F32 } else { DType::Bool };
            for &v in &nd.inputs {
                if g.ty(v).dtype != want {
                    return Err(GpuError::declined(name, format!("{} operands ({want} have shaders)", g.ty(v).dtype)));
                }
            }
            let f = if compare_op(*b) { ByteFn::Cmp(*b) } else { ByteFn::Logic(*b) };
            let a = (ins[0], broadcast_strides(ins[0], out));
            let c = (ins[1], broadcast_strides(ins[1], out));
            bytes_ew(f, &[a, c], out, limits)?
        }
        Op::ArgMax { axis, last, .. } => {
            if g.ty(nd.inputs[0]).dtype != DType::F32 {
                return Err(GpuError::declined(
                    name,
                    format!("{} operands (f32 has a shader)", g.ty(nd.inputs[0]).dtype),
                ));
            }
            let x = ins[0];
            let r = x.len() as i64;
            let ax = if *axis < 0 { axis + r } else { *axis };
            if !(0..r).contains(&ax) || x[ax as usize] == 0 {
                return Err(GpuError::declined(name, "an empty or out-of-range axis"));
            }
            let (n, inner) = (x[ax as usize], numel(&x[ax as usize + 1..]));
            let total = numel(x) / n;
            let groups = grid(total.div_ceil(EW_LOCAL as usize), limits, "argmax")?;
            Plan::Dispatch {
                spec: Spec::ArgMax { last: *last },
                operands: Vec::new(),
                push: vec![total as u32, groups[0] * EW_LOCAL, n as u32, inner as u32],
                groups,
                bytes_read: numel(x) as u64 * 4,
                bytes_written: 0,
                flops: 0,
            }
        }
        Op::Where => {
            let d = [
                g.ty(nd.inputs[0]).dtype,
                g.ty(nd.inputs[1]).dtype,
                g.ty(nd.inputs[2]).dtype,
                g.ty(nd.outputs[0]).dtype,
            ];
            if d != [DType::Bool, DType::F32, DType::F32, DType::F32] {
                return Err(GpuError::declined(
                    name,
                    format!("{d:?} operands (a bool condition and f32 values have a shader)"),
                ));
            }
            let ops: Vec<(&[usize], Vec<usize>)> = ins.iter().map(|s| (*s, broadcast_strides(s, out))).collect();
            elementwise(EwFn::Where, &ops, out, limits)?
        }
        Op::Binary(b) => {
            if !matches!(
                b,
                BinaryOp::Add
                    | BinaryOp::Sub
                    | BinaryOp::Mul
                    | BinaryOp::Div
                    | BinaryOp::Pow
                    | BinaryOp::Max
                    | BinaryOp::Min
            ) {
                return Err(GpuError::declined(name, format!("no shader for {}", b.name())));
            }
            let a = (ins[0], broadcast_strides(ins[0], out));
            let c = (ins[1], broadcast_strides(ins[1], out));
            elementwise(EwFn::Binary(*b), &[a, c], out, limits)?
        }
        Op::Expand { .. } => elementwise(copy_or_decline()?, &[(ins[0], broadcast_strides(ins[0], out))], out, limits)?,
        Op::Transpose { perm } => {
            let st = contiguous(ins[0]);
            let strides: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
            elementwise(copy_or_decline()?, &[(ins[0], strides)], out, limits)?
        }
        Op::Slice { starts, axes, steps, .. } => {
            if nd.inputs.len() > 1 {
                return Err(GpuError::declined(name, "bounds given as operands (known only at run time)"));
            }
            let x = ins[0];
            let st = contiguous(x);
            let r = x.len() as i64;
            let (mut base, mut strides) = (0i64, st.iter().map(|&s| s as i64).collect::<Vec<_>>());
            for (j, start) in starts.iter().enumerate() {
                let tessera_ir::TargetDim::Int(start) = start else {
                    return Err(GpuError::declined(name, "a symbolic start"));
                };
                let a = axes.get(j).copied().unwrap_or(j as i64);
                let a = if a < 0 { a + r } else { a } as usize;
                let step = steps.get(j).copied().unwrap_or(1);
                let dim = x[a] as i64;
                // ONNX Slice: negative starts count from the end, then clamp.
                let s0 = if *start < 0 { start + dim } else { *start };
                let s0 = if step > 0 { s0.clamp(0, dim) } else { s0.clamp(0, dim - 1) };
                if out[a] > 0 {
                    base += s0 * st[a] as i64;
                }
                strides[a] = st[a] as i64 * step;
            }
            // Negative strides wrap in u32 arithmetic and land on the right element.
            let strides: Vec<usize> = strides.iter().map(|&x| x as u32 as usize).collect();
            let mut p = elementwise(copy_or_decline()?, &[(x, strides)], out, limits)?;
            if let Plan::Dispatch { push, .. } = &mut p {
                push[2] = base as u32;
            }
            p
        }
        Op::Cast { to } => {
            let from = g.ty(nd.inputs[0]).dtype;
            if *to != DType::F32 {
                return Err(GpuError::declined(name, format!("casts to {to} (casts to f32 have shaders)")));
            }
            let f = match from {
                DType::F32 => EwFn::Copy,
                DType::I64 | DType::I32 | DType::U8 | DType::I8 | DType::U4 | DType::I4 | DType::Bool => {
                    EwFn::ToF32 { from }
                }
                d => return Err(GpuError::declined(name, format!("casts from {d}"))),
            };
            elementwise(f, &[(ins[0], contiguous(ins[0]))], out, limits)?
        }
        Op::Reduce { op, axes, .. } => {
            if nd.inputs.len() > 1 {
                return Err(GpuError::declined(name, "axes given as an operand (known only at run time)"));
            }
            reduce_plan(*op, ins[0], axes, out, limits)?
        }
        Op::Split { axis, sizes } => {
            if nd.inputs.len() > 1 {
                return Err(GpuError::declined(name, "sizes given as an operand (known only at run time)"));
            }
            let words = match copy_or_decline()? {
                EwFn::CopyWords { words } => words,
                _ => 1,
            };
            if sizes.len() + 1 > 8 {
                return Err(GpuError::declined(name, "more than 7 results (8 buffers per kernel)"));
            }
            let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize).collect();
            pieces(ins[0], *axis, &sizes, true, words, limits)?
        }
        Op::Concat { axis } => {
            let words = match copy_or_decline()? {
                EwFn::CopyWords { words } => words,
                _ => 1,
            };
            if ins.len() + 1 > 8 {
                return Err(GpuError::declined(name, "more than 7 operands (8 buffers per kernel)"));
            }
            let r = out.len() as i64;
            let ax = if *axis < 0 { axis + r } else { *axis };
            let sizes: Vec<usize> = ins.iter().map(|p| p.get(ax as usize).copied().unwrap_or(0)).collect();
            pieces(out, *axis, &sizes, false, words, limits)?
        }
        Op::MatMul => {
            let (a, b) = (ins[0], ins[1]);
            if a.len() < 2 || b.len() < 2 {
                return Err(GpuError::declined("matmul", "1-D operands"));
            }
            let (k, n) = (a[a.len() - 1], b[b.len() - 1]);
            matmul(a, b, None, out, [k, 1, n, 1], [1.0, 0.0], limits)?
        }
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            let (a, b) = (ins[0], ins[1]);
            let (m, n) = (out[0], out[1]);
            let k = if *trans_a { a[0] } else { a[1] };
            let sa = if *trans_a { [1, m] } else { [k, 1] };
            let sb = if *trans_b { [1, k] } else { [n, 1] };
            matmul(a, b, ins.get(2).copied(), out, [sa[0], sa[1], sb[0], sb[1]], [*alpha, *beta], limits)?
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let r = ins[0].len() as i64;
            let ax = if *axis < 0 { axis + r } else { *axis };
            if ax != r - 1 {
                return Err(GpuError::declined(name, "softmax along an axis other than the last"));
            }
            let f = if matches!(nd.op, Op::Softmax { .. }) { RowFn::Softmax } else { RowFn::LogSoftmax };
            rows(f, ins[0], ax as usize, 1, limits)?
        }
        Op::LayerNorm { axis, epsilon } | Op::RmsNorm { axis, epsilon } => {
            let r = ins[0].len() as i64;
            let ax = if *axis < 0 { axis + r } else { *axis };
            if !(0..r).contains(&ax) {
                return Err(GpuError::declined(name, "axis out of range"));
            }
            let cols = numel(&ins[0][ax as usize..]);
            if ins[1..].iter().any(|p| numel(p) != cols) {
                return Err(GpuError::declined(name, "scale or bias that broadcasts over the normalized dims"));
            }
            let f = match nd.op {
                Op::LayerNorm { .. } => RowFn::LayerNorm { epsilon: epsilon.to_bits(), bias: ins.len() > 2 },
                _ => RowFn::RmsNorm { epsilon: epsilon.to_bits() },
            };
            rows(f, ins[0], ax as usize, ins.len() - 1, limits)?
        }
        Op::Attention { scale, causal } => attention(ins, out, *scale, *causal, limits)?,
        Op::Kernel { name: region } => {
            let body = nd.body.as_deref().ok_or_else(|| GpuError::declined(name, "a kernel without a body"))?;
            fused(body, ins, out, limits)
                .map_err(|why| GpuError::declined(name, format!("region {region:?}: {why}")))?
        }
        Op::QMatMul => qmatmul(g, nd.inputs[0], nd.inputs[1], ins, out, limits)?,
        Op::Gather { axis } => gather(g.ty(nd.inputs[0]).dtype, g.ty(nd.inputs[1]).dtype, ins, *axis, out, limits)?,
        Op::DynamicQuantize => {
            if ROW_LOCAL > limits.max_invocations {
                return Err(GpuError::declined(name, "64-wide workgroups exceed the device's limit"));
            }
            let total = numel(ins[0]) as u64;
            Plan::Dispatch {
                spec: Spec::DynQuant,
                operands: Vec::new(),
                push: vec![total as u32],
                groups: [1, 1, 1],
                bytes_read: 2 * total * 4,
                bytes_written: 0,
                flops: 0,
            }
        }
        Op::MatMulInteger { pair_saturate } => matmul_int(g, nd, ins, out, *pair_saturate, limits)?,
        Op::Dequantize { axis, block } => {
            if nd.inputs.len() < 2 {
                return Err(GpuError::declined(name, "a dequantize of a quantized type (no shader yet)"));
            }
            if *block != 0 {
                return Err(GpuError::declined(name, "blocked scales (no shader yet)"));
            }
            let from = g.ty(nd.inputs[0]).dtype;
            if !matches!(from, DType::U8 | DType::I8 | DType::U4 | DType::I4) {
                return Err(GpuError::declined(name, format!("{from} values (8- and 4-bit integers have shaders)")));
            }
            if g.ty(nd.inputs[1]).dtype != DType::F32 || g.ty(nd.outputs[0]).dtype != DType::F32 {
                return Err(GpuError::declined(name, "scales or results that are not f32"));
            }
            if nd.inputs.len() > 2 && g.ty(nd.inputs[2]).dtype != from {
                return Err(GpuError::declined(name, "a zero point of another dtype"));
            }
            let r = out.len() as i64;
            let ax = if *axis < 0 { axis + r } else { *axis };
            // A scalar scale is per tensor; a 1-D one runs along `axis`.
            let along = |p: &[usize]| -> Vec<usize> {
                if numel(p) == 1 {
                    vec![0; out.len()]
                } else {
                    (0..out.len()).map(|d| if d as i64 == ax { 1 } else { 0 }).collect()
                }
            };
            if ins[1..].iter().any(|p| numel(p) != 1 && (p.len() != 1 || ax < 0 || ax >= r || p[0] != out[ax as usize]))
            {
                return Err(GpuError::declined(name, "scales that are neither per tensor nor per axis"));
            }
            let mut operands: Vec<(&[usize], Vec<usize>)> = vec![(ins[0], contiguous(ins[0]))];
            operands.extend(ins[1..].iter().map(|p| (*p, along(p))));
            elementwise(EwFn::Dequant { from, zero: nd.inputs.len() > 2 }, &operands, out, limits)?
        }
        _ => return Err(GpuError::declined(name, "no GPU kernel for this op yet")),
    };
    Ok(match plan {
        Plan::Dispatch { spec, mut operands, push, groups, bytes_read, .. } => {
            if push.len() as u32 * 4 > limits.max_push_bytes {
                return Err(GpuError::declined(name, format!("{} push-constant bytes needed", push.len() * 4)));
            }
            if operands.is_empty() {
                operands = match nd.op {
                    Op::Expand { .. } => vec![nd.inputs[0]],
                    _ => nd.inputs.clone(),
                };
            }
            let flops = flops(&spec, ins, out);
            Plan::Dispatch { spec, operands, push, groups, bytes_read, bytes_written: bytes_out, flops }
        }
        p => p,
    })
}

/// The arithmetic of a planned kernel (see [`Plan::Dispatch`]'s `flops`).
fn flops(spec: &Spec, ins: &[&[usize]], out: &[usize]) -> u64 {
    let n = numel(out) as u64;
    let mat = |s: &[usize]| -> (u64, u64) { (s[s.len() - 2] as u64, s[s.len() - 1] as u64) };
    match spec {
        Spec::Elementwise { f, .. } => match f {
            EwFn::Copy | EwFn::CopyWords { .. } => 0,
            EwFn::ToF32 { .. } => n,
            EwFn::Dequant { .. } => 2 * n,
            EwFn::Where => n,
            EwFn::Binary(BinaryOp::Pow) => 8 * n,
            EwFn::Binary(_) => n,
            EwFn::Unary(u) => {
                use UnaryOp::*;
                let per = match u {
                    Exp | Log | Tanh | Erf | Sigmoid | Silu | Sin | Cos => 8,
                    Gelu | GeluTanh => 12,
                    Sqrt | Rsqrt | Reciprocal => 4,
                    _ => 1,
                };
                per * n
            }
        },
        Spec::MatMul { bias, .. } => {
            let (_, k) = mat(ins[0]);
            2 * n * k + if *bias { 2 * n } else { 0 }
        }
        Spec::QMatMul { .. } => {
            let (m, k) = mat(ins[0]);
            let batches = n / (m * mat(out).1).max(1);
            // The product, and each B tile dequantized once per row of tiles.
            2 * n * k + 2 * k * mat(out).1 * m.div_ceil(TILE as u64) * batches
        }
        Spec::Rows { f, .. } => {
            let per = match f {
                RowFn::Softmax | RowFn::LogSoftmax => 12,
                RowFn::LayerNorm { .. } => 8,
                RowFn::RmsNorm { .. } => 5,
            };
            per * numel(ins[0]) as u64
        }
        Spec::Attention { .. } => {
            let (_, d) = mat(ins[0]);
            let sk = ins[1][ins[1].len() - 2] as u64;
            let rows = n / mat(out).1.max(1);
            rows * sk * (2 * d + 12) + 2 * n * sk
        }
        Spec::Gather { .. } => 0,
        Spec::DynQuant => 6 * numel(ins[0]) as u64,
        Spec::MatMulInt { .. } => 2 * n * ins[0][ins[0].len() - 1] as u64,
        Spec::Reduce { .. } => numel(ins[0]) as u64,
        Spec::Concat { .. } | Spec::Split { .. } => 0,
        Spec::Bytes { .. } => n,
        Spec::ArgMax { .. } => numel(ins[0]) as u64,
        Spec::Fused { prog, .. } => n * prog.len() as u64,
        Spec::MatMulFused { prog, .. } => {
            let (_, k) = mat(ins[0]);
            2 * n * k + n * prog.len() as u64
        }
    }
}

/// Plans `qmatmul x, w`: `w` a 2-D constant of 4- or 8-bit integers with its quantization
/// (scale, optional zero point) per tensor, per axis or per block; no offset.
fn qmatmul(g: &Graph, xv: Value, w: Value, ins: &[&[usize]], out: &[usize], limits: &Limits) -> Result<Plan, GpuError> {
    let no = |why: String| GpuError::declined("qmatmul", why);
    let ty = g.ty(w);
    let q = ty.quant.as_ref().ok_or_else(|| no("the weight has no quantized type".into()))?;
    let (bits, signed) = match ty.dtype {
        DType::I4 => (4, true),
        DType::U4 => (4, false),
        DType::I8 => (8, true),
        DType::U8 => (8, false),
        d => return Err(no(format!("{d} weights (4- and 8-bit integers have shaders)"))),
    };
    if q.offset.is_some() {
        return Err(no("a quantization offset (GGUF K-quants)".into()));
    }
    if g.ty(q.scale).dtype != DType::F32 {
        return Err(no(format!("{} scales", g.ty(q.scale).dtype)));
    }
    if let Some(z) = q.zero_point {
        if g.ty(z).dtype != ty.dtype {
            return Err(no(format!("a {} zero point for {} weights", g.ty(z).dtype, ty.dtype)));
        }
    }
    let (x, wsh) = (ins[0], ins[1]);
    if wsh.len() != 2 || x.len() < 2 {
        return Err(no("a weight that is not 2-D, or a 1-D input".into()));
    }
    let (k, n) = (wsh[0], wsh[1]);
    let axis = |a: i64| if a < 0 { a + 2 } else { a };
    // The scale of element (kk, col) is scale[(kk / div_k) * stride_k + (col / div_n) * stride_n].
    let [div_k, stride_k, div_n, stride_n] = match q.granularity {
        QuantGranularity::PerTensor => [1, 0, 1, 0],
        QuantGranularity::PerAxis { axis: a } if axis(a) == 0 => [1, 1, 1, 0],
        QuantGranularity::PerAxis { axis: a } if axis(a) == 1 => [1, 0, 1, 1],
        QuantGranularity::PerBlock { axis: a, size } if axis(a) == 0 => [size as usize, n, 1, 1],
        QuantGranularity::PerBlock { axis: a, size } if axis(a) == 1 => {
            [1, n.div_ceil(size as usize), size as usize, 1]
        }
        _ => return Err(no("a quantization axis out of range".into())),
    };
    let Plan::Dispatch { push: mut p, groups, .. } = matmul(x, &[k, n], None, out, [k, 1, n, 1], [1.0, 0.0], limits)?
    else {
        unreachable!("matmul plans a dispatch")
    };
    p.extend([div_k as u32, stride_k as u32, div_n as u32, stride_n as u32]);
    let mut operands = vec![xv, w, q.scale];
    operands.extend(q.zero_point);
    let nscale = numel(&g.ty(q.scale).shape.as_static().unwrap_or_default());
    let wbytes = ty.dtype.storage_bytes(k * n) as u64;
    let bytes_read = numel(x) as u64 * 4 + wbytes + nscale as u64 * 4;
    let batch_rank = (out.len() - 2) as u32;
    Ok(Plan::Dispatch {
        spec: Spec::QMatMul {
            batch_rank,
            bits,
            signed,
            zero: q.zero_point.is_some(),
            tiled: limits.fast_shared_memory,
        },
        operands,
        push: p,
        groups,
        bytes_read,
        bytes_written: 0,
        flops: 0,
    })
}

fn gather(
    data: DType,
    idx: DType,
    ins: &[&[usize]],
    axis: i64,
    out: &[usize],
    limits: &Limits,
) -> Result<Plan, GpuError> {
    let bytes = match data {
        DType::F32 => false,
        DType::U8 | DType::I8 => true,
        d => return Err(GpuError::declined("gather", format!("{d} data (f32 and bytes have shaders)"))),
    };
    let wide = match idx {
        DType::I64 => true,
        DType::I32 => false,
        d => return Err(GpuError::declined("gather", format!("{d} indices"))),
    };
    let (data, indices) = (ins[0], ins[1]);
    let r = data.len() as i64;
    let ax = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&ax) {
        return Err(GpuError::declined("gather", "axis out of range"));
    }
    let ax = ax as usize;
    let (dim, inner, nidx) = (data[ax], numel(&data[ax + 1..]), numel(indices));
    let total = numel(out);
    if total >= u32::MAX as usize || numel(data) >= u32::MAX as usize {
        return Err(GpuError::declined("gather", "more than 2^32 elements"));
    }
    // One invocation per result, or per word of four byte results.
    let threads = if bytes { total.div_ceil(4) } else { total };
    let groups = grid(threads.div_ceil(EW_LOCAL as usize), limits, "gather")?;
    let push = vec![total as u32, groups[0] * EW_LOCAL, nidx as u32, inner as u32, dim as u32];
    let elem = if bytes { 1 } else { 4 };
    let bytes_read = (total * elem + nidx * 4 * (1 + wide as usize)) as u64;
    Ok(Plan::Dispatch {
        spec: Spec::Gather { wide, bytes },
        operands: Vec::new(),
        push,
        groups,
        bytes_read,
        bytes_written: 0,
        flops: 0,
    })
}

fn matmul_int(
    g: &Graph,
    nd: &tessera_ir::NodeData,
    ins: &[&[usize]],
    out: &[usize],
    pair: bool,
    limits: &Limits,
) -> Result<Plan, GpuError> {
    let no = |why: &str| GpuError::declined("matmul_integer", why);
    let dt = |i: usize| g.ty(nd.inputs[i]).dtype;
    let signed = |d: DType| match d {
        DType::U8 => Ok(false),
        DType::I8 => Ok(true),
        d => Err(GpuError::declined("matmul_integer", format!("{d} operands (8-bit have shaders)"))),
    };
    let (a_signed, b_signed) = (signed(dt(0))?, signed(dt(1))?);
    let (a, b) = (ins[0], ins[1]);
    if a.len() < 2 || b.len() != 2 {
        return Err(no("operands other than [.., m, k] @ [k, n]"));
    }
    let (m, k, n) = (a[a.len() - 2], a[a.len() - 1], b[1]);
    let a_zero = nd.inputs.len() > 2;
    let b_zero = nd.inputs.len() > 3;
    if a_zero && (numel(ins[2]) != 1 || dt(2) != dt(0)) {
        return Err(no("an A zero point that is not one value of A's dtype"));
    }
    let b_zero_stride = if b_zero {
        if dt(3) != dt(1) {
            return Err(no("a B zero point of another dtype"));
        }
        match numel(ins[3]) {
            1 => 0,
            c if c == n => 1,
            _ => return Err(no("a B zero point that is neither one value nor one per column")),
        }
    } else {
        0
    };
    if pair && (a_signed || !b_signed || b_zero_stride != 0) {
        return Err(no("pair saturation needs u8 A, i8 B and scalar zero points"));
    }
    let batch = &out[..out.len() - 2];
    let batches = numel(batch);
    let mut push = vec![m as u32, n as u32, k as u32, k as u32, 1, n as u32, 1, 0, 0, b_zero_stride, 0];
    push.extend(batch.iter().map(|&d| d as u32));
    push.extend(batch_strides(&a[..a.len() - 2], m * k, batch));
    push.extend(batch_strides(&[], k * n, batch));
    let groups = [n.div_ceil(EW_LOCAL as usize).max(1) as u32, m.max(1) as u32, batches.max(1) as u32];
    if groups.iter().zip(&limits.max_groups).any(|(g, l)| g > l) {
        return Err(no("the product exceeds the device's grid"));
    }
    Ok(Plan::Dispatch {
        spec: Spec::MatMulInt { batch_rank: batch.len() as u32, a_signed, b_signed, a_zero, b_zero, pair },
        operands: Vec::new(),
        push,
        groups,
        bytes_read: (numel(a) + numel(b)) as u64,
        bytes_written: 0,
        flops: 0,
    })
}

/// Compiles a region body's elementwise nodes into a program. `acc`: the value the epilogue
/// receives (a matmul's result), whose node is skipped. Returns the program and the step of
/// the body's result.
fn compile_region(body: &Graph, acc: Option<Value>) -> Result<(Vec<Step>, u32), String> {
    let mut prog: Vec<Step> = Vec::new();
    let mut at: std::collections::HashMap<Value, u32> = std::collections::HashMap::new();
    let input = |v: Value| body.inputs().iter().position(|(_, x)| *x == v).map(|j| j as u32);
    let step =
        |prog: &mut Vec<Step>, at: &mut std::collections::HashMap<Value, u32>, v: Value| -> Result<u32, String> {
            if let Some(&i) = at.get(&v) {
                return Ok(i);
            }
            let s = if Some(v) == acc {
                Step::Acc
            } else if let Some(j) = input(v) {
                if body.ty(v).dtype != DType::F32 {
                    return Err(format!("a {} operand used as a float", body.ty(v).dtype));
                }
                Step::Load(j)
            } else {
                return Err(format!("{v} is not computed by the region's elementwise ops"));
            };
            prog.push(s);
            at.insert(v, prog.len() as u32 - 1);
            Ok(prog.len() as u32 - 1)
        };
    for (_, nd) in body.nodes() {
        if acc.is_some_and(|a| nd.outputs.contains(&a)) {
            continue;
        }
        let s = match &nd.op {
            Op::Unary(u) if unary_supported(*u) => Step::Unary(*u, step(&mut prog, &mut at, nd.inputs[0])?),
            Op::Binary(b) if binary_supported(*b) => {
                let x = step(&mut prog, &mut at, nd.inputs[0])?;
                let y = step(&mut prog, &mut at, nd.inputs[1])?;
                Step::Binary(*b, x, y)
            }
            Op::Cast { to: DType::F32 } => {
                let v = nd.inputs[0];
                let from = body.ty(v).dtype;
                match input(v) {
                    Some(j) if matches!(from, DType::I64 | DType::I32 | DType::U8 | DType::I8 | DType::Bool) => {
                        Step::LoadAs(j, from)
                    }
                    _ if from == DType::F32 => {
                        let i = step(&mut prog, &mut at, v)?;
                        at.insert(nd.outputs[0], i);
                        continue;
                    }
                    _ => return Err(format!("a cast from {from} inside the region")),
                }
            }
            op => return Err(format!("{} is not elementwise (or has no shader)", op.name())),
        };
        prog.push(s);
        at.insert(nd.outputs[0], prog.len() as u32 - 1);
    }
    let [(_, r)] = body.outputs() else { return Err("more than one result".into()) };
    let out = step(&mut prog, &mut at, *r)?;
    Ok((prog, out))
}

/// Plans a fused kernel region as one shader: elementwise ops, or a matmul whose result only
/// elementwise ops consume.
fn fused(body: &Graph, ins: &[&[usize]], out: &[usize], limits: &Limits) -> Result<Plan, String> {
    let fits =
        |s: &[usize]| s.len() <= out.len() && s.iter().rev().zip(out.iter().rev()).all(|(&a, &b)| a == 1 || a == b);
    let first = body.nodes().next().map(|(_, nd)| nd);
    if let Some(mm) = first.filter(|nd| matches!(nd.op, Op::MatMul)) {
        let pos = |v: Value| body.inputs().iter().position(|(_, x)| *x == v);
        let (Some(0), Some(1)) = (pos(mm.inputs[0]), pos(mm.inputs[1])) else {
            return Err("a matmul on operands other than the region's first two".into());
        };
        if body.nodes().skip(1).any(|(_, nd)| nd.inputs.contains(&mm.inputs[0]) || nd.inputs.contains(&mm.inputs[1])) {
            return Err("the matmul's operands used again in the epilogue".into());
        }
        if body.ty(mm.inputs[0]).dtype != DType::F32 || body.ty(mm.inputs[1]).dtype != DType::F32 {
            return Err("a matmul that is not f32".into());
        }
        let (prog, res) = compile_region(body, Some(mm.outputs[0]))?;
        if ins[2..].iter().any(|s| !fits(s)) {
            return Err("an operand that does not broadcast to the result".into());
        }
        let (a, b) = (ins[0], ins[1]);
        if a.len() < 2 || b.len() < 2 {
            return Err("1-D matmul operands".into());
        }
        let (k, n) = (a[a.len() - 1], b[b.len() - 1]);
        // The matmul's own result shape must be the region's (elementwise ops do not widen it).
        let mut mshape = out.to_vec();
        let r = mshape.len();
        mshape[r - 2] = a[a.len() - 2];
        if mshape != out {
            return Err("an epilogue that broadcasts the matmul's result".into());
        }
        let Plan::Dispatch { mut push, groups, bytes_read, .. } =
            matmul(a, b, None, out, [k, 1, n, 1], [1.0, 0.0], limits).map_err(|e| e.to_string())?
        else {
            unreachable!("matmul plans a dispatch")
        };
        for s in &ins[2..] {
            push.extend(broadcast_strides(s, out).iter().map(|&x| x as u32));
        }
        if push.len() as u32 * 4 > limits.max_push_bytes {
            return Err(format!("{} push-constant bytes needed", push.len() * 4));
        }
        let extra_bytes: u64 = ins[2..].iter().map(|s| numel(s) as u64 * 4).sum();
        return Ok(Plan::Dispatch {
            spec: Spec::MatMulFused {
                batch_rank: (out.len() - 2) as u32,
                tiled: limits.fast_shared_memory,
                prog,
                out: res,
                extra: ins.len() as u32 - 2,
            },
            operands: Vec::new(),
            push,
            groups,
            bytes_read: bytes_read + extra_bytes,
            bytes_written: 0,
            flops: 0,
        });
    }
    let (prog, res) = compile_region(body, None)?;
    if ins.iter().any(|s| !fits(s)) {
        return Err("an operand that does not broadcast to the result".into());
    }
    if ins.len() + 1 > 8 {
        return Err("more than 7 operands (8 buffers per kernel)".into());
    }
    let words: Vec<bool> =
        (0..ins.len() as u32).map(|j| prog.iter().any(|s| matches!(s, Step::LoadAs(i, _) if *i == j))).collect();
    let operands: Vec<(&[usize], Vec<usize>)> = ins.iter().map(|s| (*s, broadcast_strides(s, out))).collect();
    let Plan::Dispatch { spec: Spec::Elementwise { rank, .. }, push, groups, bytes_read, .. } =
        elementwise(EwFn::Copy, &operands, out, limits).map_err(|e| e.to_string())?
    else {
        unreachable!("elementwise plans an elementwise dispatch")
    };
    Ok(Plan::Dispatch {
        spec: Spec::Fused { prog, out: res, words, rank },
        operands: Vec::new(),
        push,
        groups,
        bytes_read,
        bytes_written: 0,
        flops: 0,
    })
}

/// Evaluates a fused program; `load(j, from)` reads region operand `j` (cast from `from`).
fn eval_prog(
    sb: &mut Sb,
    prog: &[Step],
    acc: Option<Word>,
    load: &mut dyn FnMut(&mut Sb, u32, Option<DType>) -> Word,
) -> Vec<Word> {
    let mut vals: Vec<Word> = Vec::with_capacity(prog.len());
    for st in prog {
        let v = match *st {
            Step::Load(j) => load(sb, j, None),
            Step::LoadAs(j, from) => load(sb, j, Some(from)),
            Step::Acc => acc.expect("epilogue programs receive the matmul's value"),
            Step::Unary(u, x) => unary(sb, u, vals[x as usize]),
            Step::Binary(b, x, y) => binary(sb, b, vals[x as usize], vals[y as usize]),
        };
        vals.push(v);
    }
    vals
}

/// Concat (parts into `whole`) or split (`whole` into parts) along `axis`, the parts having
/// `sizes` along it: one invocation per element of the whole.
fn pieces(
    whole: &[usize],
    axis: i64,
    sizes: &[usize],
    split: bool,
    words: u32,
    limits: &Limits,
) -> Result<Plan, GpuError> {
    let what = if split { "split" } else { "concat" };
    let r = whole.len() as i64;
    let ax = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&ax) {
        return Err(GpuError::declined(what, "axis out of range"));
    }
    let ax = ax as usize;
    let total = numel(whole);
    let groups = grid(total.div_ceil(EW_LOCAL as usize), limits, what)?;
    let mut push = vec![total as u32, groups[0] * EW_LOCAL, whole[ax] as u32, numel(&whole[ax + 1..]) as u32];
    let mut offset = 0;
    for &s in sizes {
        push.extend([offset as u32, s as u32]);
        offset += s;
    }
    let parts = sizes.len() as u32;
    Ok(Plan::Dispatch {
        spec: if split { Spec::Split { outputs: parts, words } } else { Spec::Concat { inputs: parts, words } },
        operands: Vec::new(),
        push,
        groups,
        bytes_read: total as u64 * 4 * words as u64,
        bytes_written: 0,
        flops: 0,
    })
}

fn compare_op(b: BinaryOp) -> bool {
    matches!(b, BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessEqual | BinaryOp::Greater | BinaryOp::GreaterEqual)
}

fn logic_op(b: BinaryOp) -> bool {
    matches!(b, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
}

/// Plans a bool-result elementwise kernel: the elementwise layout, a quarter of the threads.
fn bytes_ew(f: ByteFn, ins: &[(&[usize], Vec<usize>)], out: &[usize], limits: &Limits) -> Result<Plan, GpuError> {
    let Plan::Dispatch { spec: Spec::Elementwise { rank, .. }, mut push, bytes_read, .. } =
        elementwise(EwFn::Copy, ins, out, limits)?
    else {
        unreachable!("elementwise plans an elementwise dispatch")
    };
    let total = numel(out);
    let groups = grid(total.div_ceil(4).div_ceil(EW_LOCAL as usize), limits, "elementwise")?;
    push[1] = groups[0] * EW_LOCAL;
    let elem = if matches!(f, ByteFn::Cmp(_)) { 4 } else { 1 };
    Ok(Plan::Dispatch {
        spec: Spec::Bytes { f, rank },
        operands: Vec::new(),
        push,
        groups,
        bytes_read: bytes_read / 4 * elem,
        bytes_written: 0,
        flops: 0,
    })
}

/// Whether the GPU target has a shader for `u` (on f32).
pub fn unary_supported(u: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(
        u,
        Neg | Abs
            | Exp
            | Log
            | Sqrt
            | Rsqrt
            | Reciprocal
            | Tanh
            | Erf
            | Sigmoid
            | Relu
            | Gelu
            | GeluTanh
            | Silu
            | Sin
            | Cos
            | Floor
            | Ceil
    )
}

/// Whether the GPU target has a shader for `b` (on f32).
pub fn binary_supported(b: BinaryOp) -> bool {
    use BinaryOp::*;
    matches!(b, Add | Sub | Mul | Div | Pow | Max | Min)
}

fn contiguous(s: &[usize]) -> Vec<usize> {
    let mut st = vec![0; s.len()];
    let mut acc = 1;
    for i in (0..s.len()).rev() {
        st[i] = acc;
        acc *= s[i];
    }
    st
}

/// Strides of `s` read at the coordinates of `out` (numpy broadcasting: aligned at the right,
/// 0 where `s` has size 1 or lacks the dim).
fn broadcast_strides(s: &[usize], out: &[usize]) -> Vec<usize> {
    let st = contiguous(s);
    let lead = out.len() - s.len();
    (0..out.len()).map(|i| if i < lead || s[i - lead] == 1 { 0 } else { st[i - lead] }).collect()
}

/// A 1-D or 2-D grid of `total` workgroups within the device's limits.
fn grid(total: usize, limits: &Limits, what: &str) -> Result<[u32; 3], GpuError> {
    let gx = total.clamp(1, limits.max_groups[0] as usize);
    let gy = total.div_ceil(gx).max(1);
    if gy > limits.max_groups[1] as usize {
        return Err(GpuError::declined(what, format!("{total} workgroups exceed the device's grid")));
    }
    Ok([gx as u32, gy as u32, 1])
}

fn elementwise(f: EwFn, ins: &[(&[usize], Vec<usize>)], out: &[usize], limits: &Limits) -> Result<Plan, GpuError> {
    // Dims of size 1 carry no index: drop them.
    let keep: Vec<usize> = (0..out.len()).filter(|&d| out[d] != 1).collect();
    let rank = keep.len() as u32;
    let total = numel(out);
    let groups = grid(total.div_ceil(EW_LOCAL as usize), limits, "elementwise")?;
    // total, grid width, each input's base offset, dims, each input's strides.
    let mut push = vec![total as u32, groups[0] * EW_LOCAL];
    push.extend(ins.iter().map(|_| 0));
    push.extend(keep.iter().map(|&d| out[d] as u32));
    for (_, st) in ins {
        push.extend(keep.iter().map(|&d| st[d] as u32));
    }
    let elem_bytes = match f {
        EwFn::CopyWords { words } => 4 * words as u64,
        EwFn::ToF32 { from } | EwFn::Dequant { from, .. } => (from.bits() as u64).div_ceil(8),
        _ => 4,
    };
    let bytes_read = ins.iter().map(|(s, _)| numel(s) as u64 * elem_bytes).sum();
    Ok(Plan::Dispatch {
        spec: Spec::Elementwise { f, rank },
        operands: Vec::new(),
        push,
        groups,
        bytes_read,
        bytes_written: 0,
        flops: 0,
    })
}

/// `strides`: A's row and column strides, then B's (in elements, within one matrix).
fn matmul(
    a: &[usize],
    b: &[usize],
    bias: Option<&[usize]>,
    out: &[usize],
    strides: [usize; 4],
    [alpha, beta]: [f32; 2],
    limits: &Limits,
) -> Result<Plan, GpuError> {
    let (m, n) = (out[out.len() - 2], out[out.len() - 1]);
    let k = numel(a) / numel(&a[..a.len() - 2]).max(1) / m.max(1);
    let batch = &out[..out.len() - 2];
    let batches = numel(batch);
    if batches > limits.max_groups[2] as usize {
        return Err(GpuError::declined("matmul", format!("{batches} batches exceed the device's grid")));
    }
    if TILE * TILE > limits.max_invocations {
        return Err(GpuError::declined("matmul", "16x16 workgroups exceed the device's limit"));
    }
    let mut push = vec![m as u32, n as u32, k as u32];
    push.extend(strides.iter().map(|&s| s as u32));
    push.extend([alpha.to_bits(), beta.to_bits()]);
    match bias {
        Some(c) => {
            if c.len() > 2 {
                return Err(GpuError::declined("gemm", "a bias of rank above 2"));
            }
            let st = broadcast_strides(c, &[m, n]);
            push.extend([st[0] as u32, st[1] as u32]);
        }
        None => push.extend([0, 0]),
    }
    push.extend(batch.iter().map(|&d| d as u32));
    push.extend(batch_strides(&a[..a.len() - 2], m * k, batch));
    push.extend(batch_strides(&b[..b.len() - 2], k * n, batch));
    let groups = if limits.fast_shared_memory {
        [n.div_ceil(TILE as usize).max(1) as u32, m.div_ceil(TILE as usize).max(1) as u32, batches.max(1) as u32]
    } else {
        let (cols, rows) = (DIRECT_LOCAL[0] * DIRECT_COLS, DIRECT_LOCAL[1]);
        [n.div_ceil(cols as usize).max(1) as u32, m.div_ceil(rows as usize).max(1) as u32, batches.max(1) as u32]
    };
    if groups[0] > limits.max_groups[0] || groups[1] > limits.max_groups[1] {
        return Err(GpuError::declined("matmul", "the product exceeds the device's grid"));
    }
    let bytes_read = (numel(a) + numel(b) + bias.map_or(0, numel)) as u64 * 4;
    Ok(Plan::Dispatch {
        spec: Spec::MatMul { batch_rank: batch.len() as u32, bias: bias.is_some(), tiled: limits.fast_shared_memory },
        operands: Vec::new(),
        push,
        groups,
        bytes_read,
        bytes_written: 0,
        flops: 0,
    })
}

fn rows(f: RowFn, x: &[usize], axis: usize, params: usize, limits: &Limits) -> Result<Plan, GpuError> {
    let cols = numel(&x[axis..]);
    let nrows = numel(&x[..axis]);
    let groups = grid(nrows, limits, "row kernel")?;
    if ROW_LOCAL > limits.max_invocations {
        return Err(GpuError::declined("row kernel", "64-wide workgroups exceed the device's limit"));
    }
    let push = vec![nrows as u32, cols as u32, groups[0]];
    let bytes_read = (numel(x) + params * cols) as u64 * 4;
    Ok(Plan::Dispatch {
        spec: Spec::Rows { f, subgroups: limits.subgroup_arithmetic },
        operands: Vec::new(),
        push,
        groups,
        bytes_read,
        bytes_written: 0,
        flops: 0,
    })
}

/// Batch strides (in elements) of an operand with batch dims `sb` and `mat` elements per
/// matrix, read at the coordinates of `batch` (0 where it broadcasts).
fn batch_strides(sb: &[usize], mat: usize, batch: &[usize]) -> Vec<u32> {
    let st = contiguous(sb);
    let lead = batch.len() - sb.len();
    (0..batch.len()).map(|i| if i < lead || sb[i - lead] == 1 { 0 } else { (st[i - lead] * mat) as u32 }).collect()
}

fn attention(ins: &[&[usize]], out: &[usize], scale: f32, causal: bool, limits: &Limits) -> Result<Plan, GpuError> {
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    if q.len() < 2 || k.len() < 2 || v.len() < 2 {
        return Err(GpuError::declined("attention", "operands of rank below 2"));
    }
    let (sq, d, sk, dv) = (q[q.len() - 2], q[q.len() - 1], k[k.len() - 2], v[v.len() - 1]);
    let batch = &out[..out.len() - 2];
    let cap = sk.max(d).max(ROW_LOCAL as usize).next_power_of_two();
    let shared = (2 * cap + ROW_LOCAL as usize) * 4;
    if shared > limits.max_shared_bytes as usize {
        return Err(GpuError::declined(
            "attention",
            format!("{sk} keys need {shared} bytes of shared memory, the device has {}", limits.max_shared_bytes),
        ));
    }
    if ROW_LOCAL > limits.max_invocations {
        return Err(GpuError::declined("attention", "64-wide workgroups exceed the device's limit"));
    }
    let rows = numel(batch) * sq;
    let groups = grid(rows, limits, "attention")?;
    let mut push = vec![rows as u32, sq as u32, sk as u32, d as u32, dv as u32, scale.to_bits(), groups[0]];
    push.extend(batch.iter().map(|&x| x as u32));
    push.extend(batch_strides(&q[..q.len() - 2], sq * d, batch));
    push.extend(batch_strides(&k[..k.len() - 2], sk * d, batch));
    push.extend(batch_strides(&v[..v.len() - 2], sk * dv, batch));
    let mask = ins.len() > 3;
    if mask {
        let m = ins[3];
        let mut full = batch.to_vec();
        full.extend([sq, sk]);
        if m.len() > full.len() || m.iter().rev().zip(full.iter().rev()).any(|(&a, &b)| a != 1 && a != b) {
            return Err(GpuError::declined("attention", "a mask that does not broadcast to the scores"));
        }
        push.extend(broadcast_strides(m, &full).iter().map(|&x| x as u32));
    }
    let bytes_read = ins.iter().map(|s| numel(s) as u64 * 4).sum();
    Ok(Plan::Dispatch {
        spec: Spec::Attention {
            batch_rank: batch.len() as u32,
            mask,
            causal,
            cap: cap as u32,
            subgroups: limits.subgroup_arithmetic,
        },
        operands: Vec::new(),
        push,
        groups,
        bytes_read,
        bytes_written: 0,
        flops: 0,
    })
}

/// Builds the shader for `spec`.
pub fn build(spec: &Spec) -> Kernel {
    let (sb, buffers, push_words, local, shared) = match spec {
        Spec::Elementwise { f, rank } => {
            let n_in = match f {
                EwFn::Binary(_) => 2,
                EwFn::Dequant { zero, .. } => 2 + *zero as u32,
                EwFn::Where => 3,
                _ => 1,
            };
            let push_words = 2 + n_in + rank * (1 + n_in);
            let words = match f {
                EwFn::CopyWords { .. } => vec![true, true],
                EwFn::ToF32 { .. } => vec![true, false],
                EwFn::Where => vec![true, false, false, false],
                EwFn::Dequant { zero, .. } => {
                    let mut w = vec![true, false];
                    if *zero {
                        w.push(true);
                    }
                    w.push(false);
                    w
                }
                _ => vec![false; n_in as usize + 1],
            };
            let mut sb = Sb::typed(&words, push_words, [EW_LOCAL, 1, 1], 0);
            ew_body(&mut sb, *f, *rank, n_in);
            (sb, n_in as usize + 1, push_words, [EW_LOCAL, 1, 1], 0)
        }
        Spec::Fused { prog, out, words, rank } => {
            let n_in = words.len() as u32;
            let push_words = 2 + n_in + rank * (1 + n_in);
            let mut bufs = words.clone();
            bufs.push(false);
            let mut sb = Sb::typed(&bufs, push_words, [EW_LOCAL, 1, 1], 0);
            fused_body(&mut sb, prog, *out, words, *rank);
            (sb, bufs.len(), push_words, [EW_LOCAL, 1, 1], 0)
        }
        Spec::MatMulFused { batch_rank, tiled, prog, out, extra } => {
            let push_words = MM_FIXED + 3 * batch_rank + extra * (batch_rank + 2);
            let nbuf = 3 + *extra as usize;
            let ep = Epilogue { prog, out: *out, extra: *extra, batch_rank: *batch_rank };
            if *tiled {
                let mut sb = Sb::new(nbuf, push_words, [TILE, TILE, 1], 2 * TILE * TILE);
                matmul_body(&mut sb, *batch_rank, false, None, Some(&ep));
                (sb, nbuf, push_words, [TILE, TILE, 1], 2 * TILE * TILE * 4)
            } else {
                let mut sb = Sb::new(nbuf, push_words, DIRECT_LOCAL, 0);
                matmul_direct_body(&mut sb, *batch_rank, false, None, Some(&ep));
                (sb, nbuf, push_words, DIRECT_LOCAL, 0)
            }
        }
        Spec::Split { outputs, words } => {
            let n = *outputs as usize + 1;
            let push_words = 4 + 2 * outputs;
            let mut sb = Sb::typed(&vec![true; n], push_words, [EW_LOCAL, 1, 1], 0);
            pieces_body(&mut sb, *outputs, *words, true);
            (sb, n, push_words, [EW_LOCAL, 1, 1], 0)
        }
        Spec::Concat { inputs, words } => {
            let n = *inputs as usize + 1;
            let push_words = 4 + 2 * inputs;
            let mut sb = Sb::typed(&vec![true; n], push_words, [EW_LOCAL, 1, 1], 0);
            pieces_body(&mut sb, *inputs, *words, false);
            (sb, n, push_words, [EW_LOCAL, 1, 1], 0)
        }
        Spec::Reduce { op, out_rank, red_rank } => {
            let push_words = 3 + 2 * (out_rank + red_rank);
            let mut sb = Sb::new(2, push_words, [EW_LOCAL, 1, 1], 0);
            reduce_body(&mut sb, *op, *out_rank, *red_rank);
            (sb, 2, push_words, [EW_LOCAL, 1, 1], 0)
        }
        Spec::MatMul { batch_rank, bias, tiled } => {
            let push_words = MM_FIXED + 3 * batch_rank;
            let nbuf = 3 + *bias as usize;
            if *tiled {
                let mut sb = Sb::new(nbuf, push_words, [TILE, TILE, 1], 2 * TILE * TILE);
                matmul_body(&mut sb, *batch_rank, *bias, None, None);
                (sb, nbuf, push_words, [TILE, TILE, 1], 2 * TILE * TILE * 4)
            } else {
                let mut sb = Sb::new(nbuf, push_words, DIRECT_LOCAL, 0);
                matmul_direct_body(&mut sb, *batch_rank, *bias, None, None);
                (sb, nbuf, push_words, DIRECT_LOCAL, 0)
            }
        }
        Spec::Rows { f, subgroups } => {
            let params = match f {
                RowFn::Softmax | RowFn::LogSoftmax => 0,
                RowFn::LayerNorm { bias, .. } => 1 + *bias as usize,
                RowFn::RmsNorm { .. } => 1,
            };
            let mut sb = Sb::build(&vec![false; params + 2], 3, [ROW_LOCAL, 1, 1], ROW_LOCAL, *subgroups);
            rows_body(&mut sb, *f, params, *subgroups);
            (sb, params + 2, 3, [ROW_LOCAL, 1, 1], ROW_LOCAL * 4)
        }
        Spec::QMatMul { batch_rank, bits, signed, zero, tiled } => {
            let push_words = MM_FIXED + 3 * batch_rank + 4;
            let mut words = vec![false, true, false];
            if *zero {
                words.push(true);
            }
            words.push(false);
            let q = QLoad { bits: *bits, signed: *signed, zero: *zero, params: MM_FIXED + 3 * batch_rank };
            if *tiled {
                let mut sb = Sb::typed(&words, push_words, [TILE, TILE, 1], 2 * TILE * TILE);
                matmul_body(&mut sb, *batch_rank, false, Some(q), None);
                (sb, words.len(), push_words, [TILE, TILE, 1], 2 * TILE * TILE * 4)
            } else {
                let mut sb = Sb::typed(&words, push_words, DIRECT_LOCAL, 0);
                matmul_direct_body(&mut sb, *batch_rank, false, Some(q), None);
                (sb, words.len(), push_words, DIRECT_LOCAL, 0)
            }
        }
        Spec::Gather { wide, bytes } => {
            let mut sb = Sb::typed(&[*bytes, true, *bytes], 5, [EW_LOCAL, 1, 1], 0);
            gather_body(&mut sb, *wide, *bytes);
            (sb, 3, 5, [EW_LOCAL, 1, 1], 0)
        }
        Spec::ArgMax { last } => {
            let mut sb = Sb::typed(&[false, true], 4, [EW_LOCAL, 1, 1], 0);
            argmax_body(&mut sb, *last);
            (sb, 2, 4, [EW_LOCAL, 1, 1], 0)
        }
        Spec::Bytes { f, rank } => {
            let n_in: u32 = if matches!(f, ByteFn::Not) { 1 } else { 2 };
            let push_words = 2 + n_in + rank * (1 + n_in);
            let words = match f {
                ByteFn::Cmp(_) => vec![false, false, true],
                _ => vec![true; n_in as usize + 1],
            };
            let mut sb = Sb::typed(&words, push_words, [EW_LOCAL, 1, 1], 0);
            bytes_body(&mut sb, *f, *rank, n_in);
            (sb, words.len(), push_words, [EW_LOCAL, 1, 1], 0)
        }
        Spec::DynQuant => {
            let mut sb = Sb::typed(&[false, true, false, true], 1, [ROW_LOCAL, 1, 1], ROW_LOCAL);
            dyn_quant_body(&mut sb);
            (sb, 4, 1, [ROW_LOCAL, 1, 1], ROW_LOCAL * 4)
        }
        Spec::MatMulInt { batch_rank, a_signed, b_signed, a_zero, b_zero, pair } => {
            let push_words = MM_FIXED + 3 * batch_rank;
            let nbuf = 3 + *a_zero as usize + *b_zero as usize;
            let mut sb = Sb::typed(&vec![true; nbuf], push_words, [EW_LOCAL, 1, 1], 0);
            matmul_int_body(&mut sb, *batch_rank, [*a_signed, *b_signed], *a_zero, *b_zero, *pair);
            (sb, nbuf, push_words, [EW_LOCAL, 1, 1], 0)
        }
        Spec::Attention { batch_rank, mask, causal, cap, subgroups } => {
            let n_in = 3 + *mask as usize;
            let push_words = 7 + 4 * batch_rank + if *mask { batch_rank + 2 } else { 0 };
            let shared = 2 * cap + ROW_LOCAL;
            let mut sb = Sb::build(&vec![false; n_in + 1], push_words, [ROW_LOCAL, 1, 1], shared, *subgroups);
            attention_body(&mut sb, *batch_rank, *mask, *causal, *cap, *subgroups);
            (sb, n_in + 1, push_words, [ROW_LOCAL, 1, 1], shared * 4)
        }
    };
    let module = sb.finish();
    use rspirv::binary::Assemble;
    let words = module.assemble();
    Kernel { spec: spec.clone(), module, words, buffers, push_words, local, shared_bytes: shared }
}

/// The flat invocation index of a 1-D or 2-D grid of 1-D workgroups (`push[1]` invocations per
/// grid row).
fn flat_id(sb: &mut Sb) -> Word {
    let x = sb.global_id(0);
    let y = sb.global_id(1);
    let w = sb.push(1);
    let yw = sb.imul(y, w);
    sb.iadd(x, yw)
}

/// Each operand's element offset for result element `i` of the elementwise layout (push words:
/// total, grid width, `n_in` base offsets, `rank` dims, then `rank` strides per operand).
fn ew_offsets(sb: &mut Sb, i: Word, n_in: u32, rank: u32) -> Vec<Word> {
    let mut rem = i;
    let mut offs: Vec<Word> = (0..n_in).map(|j| sb.push(2 + j)).collect();
    let dims = 2 + n_in;
    for d in (0..rank).rev() {
        let dim = sb.push(dims + d);
        let c = sb.umod(rem, dim);
        rem = sb.udiv(rem, dim);
        for (j, off) in offs.iter_mut().enumerate() {
            let st = sb.push(dims + rank * (1 + j as u32) + d);
            let t = sb.imul(c, st);
            *off = sb.iadd(*off, t);
        }
    }
    offs
}

fn ew_body(sb: &mut Sb, f: EwFn, rank: u32, n_in: u32) {
    let i = flat_id(sb);
    let total = sb.push(0);
    let inside = sb.ult(i, total);
    sb.if_then(inside, |sb| {
        let offs = ew_offsets(sb, i, n_in, rank);
        let out = n_in as usize;
        match f {
            EwFn::CopyWords { words } => {
                let w = sb.cu(words);
                let src = sb.imul(offs[0], w);
                let dst = sb.imul(i, w);
                for k in 0..words {
                    let kw = sb.cu(k);
                    let s = sb.iadd(src, kw);
                    let d = sb.iadd(dst, kw);
                    let x = sb.load_u(0, s);
                    sb.store_u(out, d, x);
                }
                return;
            }
            EwFn::ToF32 { from } => {
                let y = to_f32(sb, 0, from, offs[0]);
                sb.store(out, i, y);
                return;
            }
            EwFn::Where => {
                let c = unpack_int(sb, 0, offs[0], 8, false);
                let zero = sb.cu(0);
                let t = sb.b.i_not_equal(sb.bool, None, c, zero).expect("ine");
                let a = sb.load(1, offs[1]);
                let b = sb.load(2, offs[2]);
                let y = sb.select(t, a, b, true);
                sb.store(out, i, y);
                return;
            }
            EwFn::Dequant { from, zero } => {
                let (bits, signed) = (from.bits() as u32, matches!(from, DType::I8 | DType::I4));
                let x = unpack(sb, 0, offs[0], bits, signed);
                let x = if zero {
                    let z = unpack(sb, 2, offs[2], bits, signed);
                    sb.fsub(x, z)
                } else {
                    x
                };
                let sc = sb.load(1, offs[1]);
                let y = sb.fmul(x, sc);
                sb.store(out, i, y);
                return;
            }
            _ => {}
        }
        let xs: Vec<Word> = offs.iter().enumerate().map(|(j, &o)| sb.load(j, o)).collect();
        let y = match f {
            EwFn::Unary(u) => unary(sb, u, xs[0]),
            EwFn::Binary(b) => binary(sb, b, xs[0], xs[1]),
            _ => xs[0],
        };
        sb.store(out, i, y);
    });
}

/// Element `e` of word buffer `buf`, of integer or bool type `from`, as f32.
fn to_f32(sb: &mut Sb, buf: usize, from: DType, e: Word) -> Word {
    match from {
        DType::I32 => {
            let x = sb.load_u(buf, e);
            sb.s2f(x)
        }
        DType::I64 => {
            let one = sb.cu(1);
            let lo_i = sb.shl(e, one);
            let hi_i = sb.iadd(lo_i, one);
            let lo = sb.load_u(buf, lo_i);
            let hi = sb.load_u(buf, hi_i);
            // Within i32's range the high word is the low word's sign: one exact rounding.
            let sh = sb.cu(31);
            let sign = sb.b.shift_right_arithmetic(sb.u32, None, lo, sh).expect("sra");
            let fits = sb.b.i_equal(sb.bool, None, hi, sign).expect("ieq");
            let small = sb.s2f(lo);
            let h = sb.s2f(hi);
            let two32 = sb.cf(4_294_967_296.0);
            let l = sb.u2f(lo);
            let big = sb.glsl(Glsl::Fma, &[h, two32, l]);
            sb.select(fits, small, big, true)
        }
        DType::U8 | DType::Bool => unpack(sb, buf, e, 8, false),
        DType::I8 => unpack(sb, buf, e, 8, true),
        DType::U4 => unpack(sb, buf, e, 4, false),
        DType::I4 => unpack(sb, buf, e, 4, true),
        d => unreachable!("the planner declines casts from {d}"),
    }
}

fn reduce_plan(
    op: tessera_ir::ReduceOp,
    x: &[usize],
    axes: &[i64],
    out: &[usize],
    limits: &Limits,
) -> Result<Plan, GpuError> {
    let r = x.len() as i64;
    let mut red: Vec<usize> = if axes.is_empty() {
        (0..x.len()).collect()
    } else {
        axes.iter().map(|&a| if a < 0 { a + r } else { a } as usize).collect()
    };
    red.sort_unstable();
    red.dedup();
    if red.iter().any(|&a| a >= x.len()) {
        return Err(GpuError::declined("reduce", "an axis out of range"));
    }
    let st = contiguous(x);
    let kept: Vec<usize> = (0..x.len()).filter(|a| !red.contains(a) && x[*a] != 1).collect();
    let red: Vec<usize> = red.into_iter().filter(|&a| x[a] != 1).collect();
    let total = numel(out);
    let count = red.iter().map(|&a| x[a]).product::<usize>();
    let groups = grid(total.div_ceil(EW_LOCAL as usize), limits, "reduce")?;
    let mut push = vec![total as u32, groups[0] * EW_LOCAL, (count as f32).to_bits()];
    push.extend(kept.iter().map(|&a| x[a] as u32));
    push.extend(kept.iter().map(|&a| st[a] as u32));
    push.extend(red.iter().map(|&a| x[a] as u32));
    push.extend(red.iter().map(|&a| st[a] as u32));
    Ok(Plan::Dispatch {
        spec: Spec::Reduce { op, out_rank: kept.len() as u32, red_rank: red.len() as u32 },
        operands: Vec::new(),
        push,
        groups,
        bytes_read: numel(x) as u64 * 4,
        bytes_written: 0,
        flops: 0,
    })
}

fn reduce_body(sb: &mut Sb, op: tessera_ir::ReduceOp, out_rank: u32, red_rank: u32) {
    use tessera_ir::ReduceOp::*;
    let i = flat_id(sb);
    let total = sb.push(0);
    let inside = sb.ult(i, total);
    sb.if_then(inside, |sb| {
        // The input offset of result element i (its kept coordinates).
        let mut rem = i;
        let mut base = sb.cu(0);
        for d in (0..out_rank).rev() {
            let dim = sb.push(3 + d);
            let c = sb.umod(rem, dim);
            rem = sb.udiv(rem, dim);
            let st = sb.push(3 + out_rank + d);
            let t = sb.imul(c, st);
            base = sb.iadd(base, t);
        }
        let count = {
            let mut n = sb.cu(1);
            for d in 0..red_rank {
                let dim = sb.push(3 + 2 * out_rank + d);
                n = sb.imul(n, dim);
            }
            n
        };
        let init = sb.cf(match op {
            Sum | Mean => 0.0,
            Prod => 1.0,
            Max => f32::NEG_INFINITY,
            Min => f32::INFINITY,
        });
        let acc = sb.var(true, init);
        let (zero, one) = (sb.cu(0), sb.cu(1));
        sb.for_range(zero, count, one, |sb, r| {
            let mut rem = r;
            let mut off = base;
            for d in (0..red_rank).rev() {
                let dim = sb.push(3 + 2 * out_rank + d);
                let c = sb.umod(rem, dim);
                rem = sb.udiv(rem, dim);
                let st = sb.push(3 + 2 * out_rank + red_rank + d);
                let t = sb.imul(c, st);
                off = sb.iadd(off, t);
            }
            let x = sb.load(0, off);
            let s = sb.get(acc, true);
            let s = match op {
                Sum | Mean => sb.fadd(s, x),
                Prod => sb.fmul(s, x),
                Max | Min => {
                    let pick = if op == Max { sb.fgt(x, s) } else { sb.flt(x, s) };
                    let r = sb.select(pick, x, s, true);
                    let xn = sb.is_nan(x);
                    let r = sb.select(xn, x, r, true);
                    let sn = sb.is_nan(s);
                    sb.select(sn, s, r, true)
                }
            };
            sb.set(acc, s);
        });
        let s = sb.get(acc, true);
        let y = if op == Mean {
            let n = sb.push(2);
            let n = sb.bits_to_f32(n);
            sb.fdiv(s, n)
        } else {
            s
        };
        sb.store(1, i, y);
    });
}

/// `erf(x)`: the fit the CPU target uses too ([`tessera_passes::approx::ERF_P`]).
fn erf(sb: &mut Sb, x: Word) -> Word {
    use tessera_passes::approx::{ERF_CLAMP, ERF_P as P, ERF_Q as Q};
    let lo = sb.cf(-ERF_CLAMP);
    let hi = sb.cf(ERF_CLAMP);
    let xc = sb.glsl(Glsl::FMax, &[x, lo]);
    let xc = sb.glsl(Glsl::FMin, &[xc, hi]);
    let s = sb.fmul(xc, xc);
    let horner = |sb: &mut Sb, c: &[f32]| {
        let mut acc = sb.cf(c[c.len() - 1]);
        for &k in c[..c.len() - 1].iter().rev() {
            let kv = sb.cf(k);
            acc = sb.glsl(Glsl::Fma, &[acc, s, kv]);
        }
        acc
    };
    let p = horner(sb, &P);
    let q = horner(sb, &Q);
    let xp = sb.fmul(xc, p);
    let y = sb.fdiv(xp, q);
    // NaN in, NaN out (the clamp may have replaced it).
    let nan = sb.is_nan(x);
    sb.select(nan, x, y, true)
}

fn sigmoid(sb: &mut Sb, x: Word) -> Word {
    let nx = sb.fneg(x);
    let e = sb.glsl(Glsl::Exp, &[nx]);
    let one = sb.cf(1.0);
    let d = sb.fadd(one, e);
    sb.fdiv(one, d)
}

fn tanh(sb: &mut Sb, x: Word) -> Word {
    // 1 - 2 / (exp(2x) + 1) on x clamped to [-9, 9]: no overflow, exact limits.
    let lo = sb.cf(-9.0);
    let hi = sb.cf(9.0);
    let xc = sb.glsl(Glsl::FMax, &[x, lo]);
    let xc = sb.glsl(Glsl::FMin, &[xc, hi]);
    let two = sb.cf(2.0);
    let x2 = sb.fmul(xc, two);
    let e = sb.glsl(Glsl::Exp, &[x2]);
    let one = sb.cf(1.0);
    let d = sb.fadd(e, one);
    let q = sb.fdiv(two, d);
    let y = sb.fsub(one, q);
    let nan = sb.is_nan(x);
    sb.select(nan, x, y, true)
}

fn unary(sb: &mut Sb, u: UnaryOp, x: Word) -> Word {
    use UnaryOp::*;
    match u {
        Neg => sb.fneg(x),
        Abs => sb.glsl(Glsl::FAbs, &[x]),
        Exp => sb.glsl(Glsl::Exp, &[x]),
        Log => sb.glsl(Glsl::Log, &[x]),
        Sqrt => sb.glsl(Glsl::Sqrt, &[x]),
        Rsqrt => sb.glsl(Glsl::InverseSqrt, &[x]),
        Reciprocal => {
            let one = sb.cf(1.0);
            sb.fdiv(one, x)
        }
        Tanh => tanh(sb, x),
        Erf => erf(sb, x),
        Sigmoid => sigmoid(sb, x),
        Relu => {
            let zero = sb.cf(0.0);
            let neg = sb.flt(x, zero);
            sb.select(neg, zero, x, true)
        }
        Gelu => {
            let k = sb.cf(std::f32::consts::FRAC_1_SQRT_2);
            let xs = sb.fmul(x, k);
            let e = erf(sb, xs);
            half_x_one_plus(sb, x, e)
        }
        GeluTanh => {
            let c = sb.cf(0.044_715);
            let k = sb.cf((2.0 / std::f32::consts::PI).sqrt());
            let x3 = sb.fmul(x, x);
            let x3 = sb.fmul(x3, x);
            let inner = sb.glsl(Glsl::Fma, &[c, x3, x]);
            let inner = sb.fmul(inner, k);
            let t = tanh(sb, inner);
            half_x_one_plus(sb, x, t)
        }
        Silu => {
            let s = sigmoid(sb, x);
            sb.fmul(x, s)
        }
        Sin => sb.glsl(Glsl::Sin, &[x]),
        Cos => sb.glsl(Glsl::Cos, &[x]),
        Floor => sb.glsl(Glsl::Floor, &[x]),
        Ceil => sb.glsl(Glsl::Ceil, &[x]),
        _ => unreachable!("checked by unary_supported"),
    }
}

fn half_x_one_plus(sb: &mut Sb, x: Word, t: Word) -> Word {
    let one = sb.cf(1.0);
    let half = sb.cf(0.5);
    let s = sb.fadd(one, t);
    let hx = sb.fmul(x, half);
    sb.fmul(hx, s)
}

fn binary(sb: &mut Sb, op: BinaryOp, x: Word, y: Word) -> Word {
    match op {
        BinaryOp::Add => sb.fadd(x, y),
        BinaryOp::Sub => sb.fsub(x, y),
        BinaryOp::Mul => sb.fmul(x, y),
        BinaryOp::Div => sb.fdiv(x, y),
        BinaryOp::Pow => pow(sb, x, y),
        BinaryOp::Max | BinaryOp::Min => {
            // NaN if either is NaN, as the interpreter does (GLSL's FMax leaves it undefined).
            let pick = if op == BinaryOp::Max { sb.fgt(x, y) } else { sb.flt(x, y) };
            let r = sb.select(pick, x, y, true);
            let xn = sb.is_nan(x);
            let r = sb.select(xn, x, r, true);
            let yn = sb.is_nan(y);
            sb.select(yn, y, r, true)
        }
        _ => unreachable!("checked by plan"),
    }
}

/// `x^y` as C's `powf` defines it where GLSL's `pow` leaves it undefined: a negative base
/// with an integer exponent (odd ones keep the sign, others give NaN), a zero base, `y = 0`.
fn pow(sb: &mut Sb, x: Word, y: Word) -> Word {
    let ax = sb.glsl(Glsl::FAbs, &[x]);
    let r = sb.glsl(Glsl::Pow, &[ax, y]);
    let (zero, one, half) = (sb.cf(0.0), sb.cf(1.0), sb.cf(0.5));
    let inf = sb.cf(f32::INFINITY);
    let nan = sb.cf(f32::NAN);
    // A zero base: 0 for y > 0, infinity for y < 0.
    let base0 = sb.b.f_ord_equal(sb.bool, None, ax, zero).expect("feq");
    let ypos = sb.fgt(y, zero);
    let z = sb.select(ypos, zero, inf, true);
    let r = sb.select(base0, z, r, true);
    // A negative base: only integer exponents have a real result.
    let fy = sb.glsl(Glsl::Floor, &[y]);
    let yint = sb.b.f_ord_equal(sb.bool, None, fy, y).expect("feq");
    let h = sb.fmul(y, half);
    let fh = sb.glsl(Glsl::Floor, &[h]);
    let odd = sb.b.f_ord_not_equal(sb.bool, None, fh, h).expect("fne");
    let nr = sb.fneg(r);
    let signed = sb.select(odd, nr, r, true);
    let neg_r = sb.select(yint, signed, nan, true);
    let neg = sb.flt(x, zero);
    let r = sb.select(neg, neg_r, r, true);
    // x^0 = 1, whatever x.
    let y0 = sb.b.f_ord_equal(sb.bool, None, y, zero).expect("feq");
    sb.select(y0, one, r, true)
}

/// `cond ? load() : 0`, the load made only when `cond`.
fn load_or_zero(sb: &mut Sb, cond: Word, load: &dyn Fn(&mut Sb) -> Word) -> Word {
    let fz = sb.cf(0.0);
    let v = sb.var(true, fz);
    sb.if_then(cond, |sb| {
        let x = load(sb);
        sb.set(v, x);
    });
    sb.get(v, true)
}

/// Push words before the batch dims: m, n, k, A's and B's row and column strides, alpha,
/// beta, the bias's row and column strides.
const MM_FIXED: u32 = 11;

/// How a quantized B tile loads: `bits`-bit integers packed little-endian in u32 words
/// (buffer 1), scales in buffer 2, zero points packed alike in buffer 3; the scale's index
/// parameters (`div_k, stride_k, div_n, stride_n`) at push word `params`.
#[derive(Clone, Copy)]
struct QLoad {
    bits: u32,
    signed: bool,
    zero: bool,
    params: u32,
}

/// Element `e` of a buffer of packed `bits`-bit integers, as f32.
fn unpack(sb: &mut Sb, buf: usize, e: Word, bits: u32, signed: bool) -> Word {
    let v = unpack_int(sb, buf, e, bits, signed);
    if signed {
        sb.s2f(v)
    } else {
        sb.u2f(v)
    }
}

/// Element `e` of a buffer of packed `bits`-bit integers, as a 32-bit integer (sign-extended
/// when `signed`).
fn unpack_int(sb: &mut Sb, buf: usize, e: Word, bits: u32, signed: bool) -> Word {
    let per_word = 32 / bits;
    let log = per_word.trailing_zeros();
    let lw = sb.cu(log);
    let word = sb.shr(e, lw);
    let lane_mask = sb.cu(per_word - 1);
    let lane = sb.band(e, lane_mask);
    let lb = sb.cu(bits.trailing_zeros());
    let shift = sb.shl(lane, lb);
    let w = sb.load_u(buf, word);
    let v = sb.shr(w, shift);
    let m = sb.cu((1 << bits) - 1);
    let v = sb.band(v, m);
    if signed {
        // Two's complement: subtract 2^bits when the sign bit is set.
        let sign = sb.cu(1 << (bits - 1));
        let sbit = sb.band(v, sign);
        let one = sb.cu(1);
        let twice = sb.shl(sbit, one);
        sb.isub(v, twice)
    } else {
        v
    }
}

/// A and B's offsets for batch index `bz`, and C's.
fn batch_offsets(sb: &mut Sb, br: u32, bz: Word) -> (Word, Word, Word) {
    let zero = sb.cu(0);
    let (mut aoff, mut boff) = (zero, zero);
    let mut rem = bz;
    for d in (0..br).rev() {
        let dim = sb.push(MM_FIXED + d);
        let c = sb.umod(rem, dim);
        rem = sb.udiv(rem, dim);
        let sa = sb.push(MM_FIXED + br + d);
        let sbb = sb.push(MM_FIXED + 2 * br + d);
        let ta = sb.imul(c, sa);
        aoff = sb.iadd(aoff, ta);
        let tb = sb.imul(c, sbb);
        boff = sb.iadd(boff, tb);
    }
    let (m, n) = (sb.push(0), sb.push(1));
    let mn = sb.imul(m, n);
    let coff = sb.imul(bz, mn);
    (aoff, boff, coff)
}

/// `A[row, kk]` (in range).
fn load_a(sb: &mut Sb, row: Word, kk: Word, aoff: Word) -> Word {
    let (a_rs, a_cs) = (sb.push(3), sb.push(4));
    let r = sb.imul(row, a_rs);
    let c = sb.imul(kk, a_cs);
    let i = sb.iadd(r, c);
    let i = sb.iadd(i, aoff);
    sb.load(0, i)
}

/// `B[kk, col]` (in range), dequantized for a qmatmul.
fn load_b(sb: &mut Sb, quant: Option<QLoad>, kk: Word, col: Word, boff: Word) -> Word {
    match quant {
        None => {
            let (b_rs, b_cs) = (sb.push(5), sb.push(6));
            let r = sb.imul(kk, b_rs);
            let c = sb.imul(col, b_cs);
            let i = sb.iadd(r, c);
            let i = sb.iadd(i, boff);
            sb.load(1, i)
        }
        Some(q) => {
            let n = sb.push(1);
            let r = sb.imul(kk, n);
            let e = sb.iadd(r, col);
            let w = unpack(sb, 1, e, q.bits, q.signed);
            let (dk, sk, dn, sn) =
                (sb.push(q.params), sb.push(q.params + 1), sb.push(q.params + 2), sb.push(q.params + 3));
            let a = sb.udiv(kk, dk);
            let a = sb.imul(a, sk);
            let c = sb.udiv(col, dn);
            let c = sb.imul(c, sn);
            let si = sb.iadd(a, c);
            let w = if q.zero {
                let z = unpack(sb, 3, si, q.bits, q.signed);
                sb.fsub(w, z)
            } else {
                w
            };
            let sc = sb.load(2, si);
            sb.fmul(w, sc)
        }
    }
}

/// `C[row, col] = alpha * s (+ beta * bias[row, col])`, or a fused epilogue of `s`.
#[allow(clippy::too_many_arguments)]
fn store_c(
    sb: &mut Sb,
    bias: bool,
    quant: Option<QLoad>,
    ep: Option<&Epilogue>,
    row: Word,
    col: Word,
    coff: Word,
    s: Word,
) {
    let n = sb.push(1);
    let rn = sb.imul(row, n);
    let i = sb.iadd(rn, col);
    let i = sb.iadd(i, coff);
    if let Some(ep) = ep {
        // Extra operand e at (batch coordinates, row, col) through its broadcast strides.
        let br = ep.batch_rank;
        let bz = sb.group_id(2);
        let mut coords = Vec::new();
        let mut rem = bz;
        for d in (0..br).rev() {
            let dim = sb.push(MM_FIXED + d);
            coords.push((d, sb.umod(rem, dim)));
            rem = sb.udiv(rem, dim);
        }
        let base = MM_FIXED + 3 * br;
        let mut load = |sb: &mut Sb, j: u32, _: Option<DType>| -> Word {
            let e = j - 2;
            let st0 = base + e * (br + 2);
            let mut off = sb.cu(0);
            for &(d, c) in &coords {
                let st = sb.push(st0 + d);
                let t = sb.imul(c, st);
                off = sb.iadd(off, t);
            }
            let (sr, sc) = (sb.push(st0 + br), sb.push(st0 + br + 1));
            let t = sb.imul(row, sr);
            off = sb.iadd(off, t);
            let t = sb.imul(col, sc);
            off = sb.iadd(off, t);
            sb.load(j as usize, off)
        };
        let vals = eval_prog(sb, ep.prog, Some(s), &mut load);
        sb.store(2 + ep.extra as usize, i, vals[ep.out as usize]);
        return;
    }
    let alpha = sb.push(7);
    let alpha = sb.bits_to_f32(alpha);
    let s = sb.fmul(alpha, s);
    let s = if bias {
        let beta = sb.push(8);
        let beta = sb.bits_to_f32(beta);
        let (c_rs, c_cs) = (sb.push(9), sb.push(10));
        let r = sb.imul(row, c_rs);
        let c = sb.imul(col, c_cs);
        let ci = sb.iadd(r, c);
        let cv = sb.load(2, ci);
        let bc = sb.fmul(beta, cv);
        sb.fadd(s, bc)
    } else {
        s
    };
    let out = match quant {
        Some(q) => 3 + q.zero as usize,
        None => 2 + bias as usize,
    };
    sb.store(out, i, s);
}

/// A fused region's epilogue after a matmul.
struct Epilogue<'a> {
    prog: &'a [Step],
    out: u32,
    extra: u32,
    batch_rank: u32,
}

fn matmul_body(sb: &mut Sb, br: u32, bias: bool, quant: Option<QLoad>, ep: Option<&Epilogue>) {
    let (m, n, k) = (sb.push(0), sb.push(1), sb.push(2));
    let lx = sb.local_id(0);
    let ly = sb.local_id(1);
    let wx = sb.group_id(0);
    let wy = sb.group_id(1);
    let bz = sb.group_id(2);
    let tile = sb.cu(TILE);
    let col = {
        let t = sb.imul(wx, tile);
        sb.iadd(t, lx)
    };
    let row = {
        let t = sb.imul(wy, tile);
        sb.iadd(t, ly)
    };
    let (aoff, boff, coff) = batch_offsets(sb, br, bz);
    let zero = sb.cu(0);
    let fz = sb.cf(0.0);
    let acc = sb.var(true, fz);
    let ly16 = sb.imul(ly, tile);
    let slot = sb.iadd(ly16, lx);
    let tile_sq = sb.cu(TILE * TILE);
    let bslot = sb.iadd(slot, tile_sq);
    let tiles = {
        let t = sb.cu(TILE - 1);
        let t = sb.iadd(k, t);
        sb.udiv(t, tile)
    };
    let one = sb.cu(1);
    let row_in = sb.ult(row, m);
    let col_in = sb.ult(col, n);
    sb.for_range(zero, tiles, one, |sb, t| {
        let t16 = sb.imul(t, tile);
        // A tile: As[ly][lx] = A[row][t16 + lx].
        let ka = sb.iadd(t16, lx);
        let ka_in = sb.ult(ka, k);
        let ok = sb.b.logical_and(sb.bool, None, row_in, ka_in).expect("and");
        let x = load_or_zero(sb, ok, &|sb| load_a(sb, row, ka, aoff));
        sb.store_shared(slot, x);
        // B tile: Bs[ly][lx] = B[t16 + ly][col].
        let kb = sb.iadd(t16, ly);
        let kb_in = sb.ult(kb, k);
        let ok = sb.b.logical_and(sb.bool, None, kb_in, col_in).expect("and");
        let x = load_or_zero(sb, ok, &|sb| load_b(sb, quant, kb, col, boff));
        sb.store_shared(bslot, x);
        sb.barrier();
        let zero = sb.cu(0);
        let tile = sb.cu(TILE);
        let one = sb.cu(1);
        sb.for_range(zero, tile, one, |sb, kk| {
            let ai = sb.iadd(ly16, kk);
            let a = sb.load_shared(ai);
            let bi = sb.imul(kk, tile);
            let bi = sb.iadd(bi, lx);
            let bi = sb.iadd(bi, tile_sq);
            let b = sb.load_shared(bi);
            let s = sb.get(acc, true);
            let s = sb.glsl(Glsl::Fma, &[a, b, s]);
            sb.set(acc, s);
        });
        sb.barrier();
    });
    let ok = sb.b.logical_and(sb.bool, None, row_in, col_in).expect("and");
    sb.if_then(ok, |sb| {
        let s = sb.get(acc, true);
        store_c(sb, bias, quant, ep, row, col, coff, s);
    });
}

/// The untiled matmul: no shared memory and no barriers; each invocation accumulates
/// `DIRECT_COLS` results of one row in registers, reading each A element once for
/// them (the same sums, in the same `k` order, as the tiled kernel).
fn matmul_direct_body(sb: &mut Sb, br: u32, bias: bool, quant: Option<QLoad>, ep: Option<&Epilogue>) {
    let (m, n, k) = (sb.push(0), sb.push(1), sb.push(2));
    let lx = sb.local_id(0);
    let ly = sb.local_id(1);
    let wx = sb.group_id(0);
    let wy = sb.group_id(1);
    let bz = sb.group_id(2);
    // Invocation lx of a workgroup's row takes columns lx, lx + 16, lx + 32, lx + 48 of its
    // 64: neighbouring invocations read neighbouring B elements (one vector load per step).
    let col0 = {
        let w = sb.cu(DIRECT_LOCAL[0] * DIRECT_COLS);
        let t = sb.imul(wx, w);
        sb.iadd(t, lx)
    };
    let row = {
        let h = sb.cu(DIRECT_LOCAL[1]);
        let t = sb.imul(wy, h);
        sb.iadd(t, ly)
    };
    let (aoff, boff, coff) = batch_offsets(sb, br, bz);
    let row_in = sb.ult(row, m);
    let col_in = sb.ult(col0, n);
    let ok = sb.b.logical_and(sb.bool, None, row_in, col_in).expect("and");
    sb.if_then(ok, |sb| {
        // Columns past the end read the last column (in range) and are not stored.
        let one = sb.cu(1);
        let last = sb.isub(n, one);
        let cols: Vec<Word> = (0..DIRECT_COLS)
            .map(|j| {
                let jw = sb.cu(j * DIRECT_LOCAL[0]);
                let c = sb.iadd(col0, jw);
                let past = sb.ult(last, c);
                sb.select(past, last, c, false)
            })
            .collect();
        let accs: Vec<Word> = (0..DIRECT_COLS)
            .map(|_| {
                let fz = sb.cf(0.0);
                sb.var(true, fz)
            })
            .collect();
        let zero = sb.cu(0);
        sb.for_range(zero, k, one, |sb, kk| {
            let a = load_a(sb, row, kk, aoff);
            for (&c, &acc) in cols.iter().zip(&accs) {
                let b = load_b(sb, quant, kk, c, boff);
                let s = sb.get(acc, true);
                let s = sb.glsl(Glsl::Fma, &[a, b, s]);
                sb.set(acc, s);
            }
        });
        for (j, &acc) in accs.iter().enumerate() {
            let jw = sb.cu(j as u32 * DIRECT_LOCAL[0]);
            let c = sb.iadd(col0, jw);
            let inside = sb.ult(c, n);
            sb.if_then(inside, |sb| {
                let s = sb.get(acc, true);
                store_c(sb, bias, quant, ep, row, c, coff, s);
            });
        }
    });
}

/// Reduces `v` (one value per invocation) across the workgroup, summing or (with `max`)
/// taking the maximum; every invocation gets the result. The scratch is `ROW_LOCAL` floats of
/// shared memory from `base`. With `subgroups`, each subgroup reduces in registers first
/// (subgroup arithmetic) and only one value per subgroup goes through shared memory.
fn reduce(sb: &mut Sb, base: u32, v: Word, max: bool, subgroups: bool) -> Word {
    let combine = |sb: &mut Sb, a: Word, b: Word| {
        if max {
            let g = sb.fgt(a, b);
            sb.select(g, a, b, true)
        } else {
            sb.fadd(a, b)
        }
    };
    let basew = sb.cu(base);
    if subgroups {
        let r = sb.subgroup_reduce(v, max);
        let [sid, lane, nsg] = sb.subgroup_ids();
        let zero = sb.cu(0);
        let first = sb.b.i_equal(sb.bool, None, lane, zero).expect("ieq");
        sb.if_then(first, |sb| {
            let slot = sb.iadd(basew, sid);
            sb.store_shared(slot, r);
        });
        sb.barrier();
        let acc = {
            let x = sb.load_shared(basew);
            sb.var(true, x)
        };
        let one = sb.cu(1);
        sb.for_range(one, nsg, one, |sb, i| {
            let slot = sb.iadd(basew, i);
            let x = sb.load_shared(slot);
            let a = sb.get(acc, true);
            let y = combine(sb, a, x);
            sb.set(acc, y);
        });
        let r = sb.get(acc, true);
        sb.barrier();
        return r;
    }
    let lid = sb.local_id(0);
    let slot = sb.iadd(lid, basew);
    sb.store_shared(slot, v);
    sb.barrier();
    let mut s = ROW_LOCAL / 2;
    while s > 0 {
        let sv = sb.cu(s);
        let active = sb.ult(lid, sv);
        sb.if_then(active, |sb| {
            let a = sb.load_shared(slot);
            let j = sb.iadd(slot, sv);
            let b = sb.load_shared(j);
            let r = combine(sb, a, b);
            sb.store_shared(slot, r);
        });
        sb.barrier();
        s /= 2;
    }
    let r = sb.load_shared(basew);
    sb.barrier();
    r
}

fn rows_body(sb: &mut Sb, f: RowFn, params: usize, subgroups: bool) {
    let nrows = sb.push(0);
    let cols = sb.push(1);
    let gx = sb.push(2);
    let wx = sb.group_id(0);
    let wy = sb.group_id(1);
    let row = {
        let t = sb.imul(wy, gx);
        sb.iadd(t, wx)
    };
    let lid = sb.local_id(0);
    let step = sb.cu(ROW_LOCAL);
    let out = params + 1;
    // The row index depends on the workgroup only: the barriers inside stay uniform.
    let inside = sb.ult(row, nrows);
    sb.if_then(inside, |sb| {
        let base = sb.imul(row, cols);
        let sum_of = |sb: &mut Sb, g: &dyn Fn(&mut Sb, Word) -> Word| -> Word {
            let fz = sb.cf(0.0);
            let acc = sb.var(true, fz);
            sb.for_range(lid, cols, step, |sb, j| {
                let i = sb.iadd(base, j);
                let x = sb.load(0, i);
                let y = g(sb, x);
                let s = sb.get(acc, true);
                let s = sb.fadd(s, y);
                sb.set(acc, s);
            });
            let s = sb.get(acc, true);
            reduce(sb, 0, s, false, subgroups)
        };
        let write = |sb: &mut Sb, g: &dyn Fn(&mut Sb, Word, Word) -> Word| {
            sb.for_range(lid, cols, step, |sb, j| {
                let i = sb.iadd(base, j);
                let x = sb.load(0, i);
                let y = g(sb, x, j);
                sb.store(out, i, y);
            });
        };
        let ncols = sb.u2f(cols);
        match f {
            RowFn::Softmax | RowFn::LogSoftmax => {
                let ninf = sb.cf(f32::NEG_INFINITY);
                let mx = sb.var(true, ninf);
                sb.for_range(lid, cols, step, |sb, j| {
                    let i = sb.iadd(base, j);
                    let x = sb.load(0, i);
                    let m = sb.get(mx, true);
                    let bigger = sb.fgt(x, m);
                    let m = sb.select(bigger, x, m, true);
                    sb.set(mx, m);
                });
                let m = sb.get(mx, true);
                let m = reduce(sb, 0, m, true, subgroups);
                let s = sum_of(sb, &|sb, x| {
                    let d = sb.fsub(x, m);
                    sb.glsl(Glsl::Exp, &[d])
                });
                if f == RowFn::Softmax {
                    write(sb, &|sb, x, _| {
                        let d = sb.fsub(x, m);
                        let e = sb.glsl(Glsl::Exp, &[d]);
                        sb.fdiv(e, s)
                    });
                } else {
                    let ls = sb.glsl(Glsl::Log, &[s]);
                    write(sb, &|sb, x, _| {
                        let d = sb.fsub(x, m);
                        sb.fsub(d, ls)
                    });
                }
            }
            RowFn::LayerNorm { epsilon, bias } => {
                let s = sum_of(sb, &|_, x| x);
                let mean = sb.fdiv(s, ncols);
                let v = sum_of(sb, &|sb, x| {
                    let d = sb.fsub(x, mean);
                    sb.fmul(d, d)
                });
                let var = sb.fdiv(v, ncols);
                let eps = sb.cf(f32::from_bits(epsilon));
                let ve = sb.fadd(var, eps);
                let sq = sb.glsl(Glsl::Sqrt, &[ve]);
                let one = sb.cf(1.0);
                let inv = sb.fdiv(one, sq);
                write(sb, &|sb, x, j| {
                    let d = sb.fsub(x, mean);
                    let y = sb.fmul(d, inv);
                    let g = sb.load(1, j);
                    let y = sb.fmul(y, g);
                    if bias {
                        let b = sb.load(2, j);
                        sb.fadd(y, b)
                    } else {
                        y
                    }
                });
            }
            RowFn::RmsNorm { epsilon } => {
                let s = sum_of(sb, &|sb, x| sb.fmul(x, x));
                let ms = sb.fdiv(s, ncols);
                let eps = sb.cf(f32::from_bits(epsilon));
                let ve = sb.fadd(ms, eps);
                let sq = sb.glsl(Glsl::Sqrt, &[ve]);
                let one = sb.cf(1.0);
                let inv = sb.fdiv(one, sq);
                write(sb, &|sb, x, j| {
                    let y = sb.fmul(x, inv);
                    let g = sb.load(1, j);
                    sb.fmul(y, g)
                });
            }
        }
    });
}

fn attention_body(sb: &mut Sb, br: u32, mask: bool, causal: bool, cap: u32, subgroups: bool) {
    let (nrows, sq, sk, d, dv) = (sb.push(0), sb.push(1), sb.push(2), sb.push(3), sb.push(4));
    let scale = {
        let bits = sb.push(5);
        sb.bits_to_f32(bits)
    };
    let gx = sb.push(6);
    let row = {
        let wx = sb.group_id(0);
        let wy = sb.group_id(1);
        let t = sb.imul(wy, gx);
        sb.iadd(t, wx)
    };
    let lid = sb.local_id(0);
    let step = sb.cu(ROW_LOCAL);
    let (zero, one) = (sb.cu(0), sb.cu(1));
    let capw = sb.cu(cap);
    let out_buf = 3 + mask as usize;
    // The row index depends on the workgroup only: the barriers inside stay uniform.
    let inside = sb.ult(row, nrows);
    sb.if_then(inside, |sb| {
        let b = sb.udiv(row, sq);
        let i = sb.umod(row, sq);
        // Each operand's offset for batch index b.
        let mut offs = [zero; 4];
        let mut rem = b;
        for dd in (0..br).rev() {
            let dim = sb.push(7 + dd);
            let c = sb.umod(rem, dim);
            rem = sb.udiv(rem, dim);
            for (j, off) in offs.iter_mut().enumerate().take(3 + mask as usize) {
                let st = sb.push(7 + br * (1 + j as u32) + dd);
                let t = sb.imul(c, st);
                *off = sb.iadd(*off, t);
            }
        }
        let [qoff, koff, voff, moff] = offs;
        // Stage the query row.
        let qrow = {
            let t = sb.imul(i, d);
            sb.iadd(qoff, t)
        };
        sb.for_range(lid, d, step, |sb, c| {
            let idx = sb.iadd(qrow, c);
            let x = sb.load(0, idx);
            sb.store_shared(c, x);
        });
        sb.barrier();
        // Scores, each invocation its keys; the running max.
        let ninf = sb.cf(f32::NEG_INFINITY);
        let mx = sb.var(true, ninf);
        sb.for_range(lid, sk, step, |sb, j| {
            let fz = sb.cf(0.0);
            let acc = sb.var(true, fz);
            let krow = {
                let t = sb.imul(j, d);
                sb.iadd(koff, t)
            };
            sb.for_range(zero, d, one, |sb, c| {
                let a = sb.load_shared(c);
                let idx = sb.iadd(krow, c);
                let kv = sb.load(1, idx);
                let s = sb.get(acc, true);
                let s = sb.glsl(Glsl::Fma, &[a, kv, s]);
                sb.set(acc, s);
            });
            let s = sb.get(acc, true);
            let mut s = sb.fmul(s, scale);
            if mask {
                let (mr, mc) = (sb.push(7 + 4 * br + br), sb.push(7 + 4 * br + br + 1));
                let t = sb.imul(i, mr);
                let idx = sb.iadd(moff, t);
                let t = sb.imul(j, mc);
                let idx = sb.iadd(idx, t);
                let m = sb.load(3, idx);
                s = sb.fadd(s, m);
            }
            if causal {
                // Query i sees key j when j + sq <= i + sk.
                let l = sb.iadd(j, sq);
                let r = sb.iadd(i, sk);
                let r1 = sb.iadd(r, one);
                let sees = sb.ult(l, r1);
                s = sb.select(sees, s, ninf, true);
            }
            let slot = sb.iadd(capw, j);
            sb.store_shared(slot, s);
            let m = sb.get(mx, true);
            let bigger = sb.fgt(s, m);
            let m = sb.select(bigger, s, m, true);
            sb.set(mx, m);
        });
        let m = sb.get(mx, true);
        let m = reduce(sb, 2 * cap, m, true, subgroups);
        // A row that sees no key is all zero.
        let none = sb.b.f_ord_equal(sb.bool, None, m, ninf).expect("feq");
        let fz = sb.cf(0.0);
        let sum = sb.var(true, fz);
        sb.for_range(lid, sk, step, |sb, j| {
            let slot = sb.iadd(capw, j);
            let x = sb.load_shared(slot);
            let dlt = sb.fsub(x, m);
            let e = sb.glsl(Glsl::Exp, &[dlt]);
            let fz = sb.cf(0.0);
            let e = sb.select(none, fz, e, true);
            sb.store_shared(slot, e);
            let t = sb.get(sum, true);
            let t = sb.fadd(t, e);
            sb.set(sum, t);
        });
        let t = sb.get(sum, true);
        let total = reduce(sb, 2 * cap, t, false, subgroups);
        sb.for_range(lid, sk, step, |sb, j| {
            let slot = sb.iadd(capw, j);
            let e = sb.load_shared(slot);
            let p = sb.fdiv(e, total);
            let fz = sb.cf(0.0);
            let p = sb.select(none, fz, p, true);
            sb.store_shared(slot, p);
        });
        sb.barrier();
        // out[row, c] = sum_j p_j v[j, c], each invocation its columns.
        let orow = sb.imul(row, dv);
        sb.for_range(lid, dv, step, |sb, c| {
            let fz = sb.cf(0.0);
            let acc = sb.var(true, fz);
            let vcol = sb.iadd(voff, c);
            sb.for_range(zero, sk, one, |sb, j| {
                let slot = sb.iadd(capw, j);
                let p = sb.load_shared(slot);
                let t = sb.imul(j, dv);
                let idx = sb.iadd(vcol, t);
                let x = sb.load(2, idx);
                let s = sb.get(acc, true);
                let s = sb.glsl(Glsl::Fma, &[p, x, s]);
                sb.set(acc, s);
            });
            let s = sb.get(acc, true);
            let idx = sb.iadd(orow, c);
            sb.store(out_buf, idx, s);
        });
    });
}

fn gather_body(sb: &mut Sb, wide: bool, bytes: bool) {
    let t = flat_id(sb);
    let total = sb.push(0);
    let (nidx, inner, dim) = (sb.push(2), sb.push(3), sb.push(4));
    // The source element of result element i.
    let source = |sb: &mut Sb, i: Word| -> Word {
        // i = (o * nidx + j) * inner + c
        let c = sb.umod(i, inner);
        let oj = sb.udiv(i, inner);
        let j = sb.umod(oj, nidx);
        let o = sb.udiv(oj, nidx);
        // The index's low word (the executor checked the range, so the high word is its sign).
        let word = if wide {
            let one = sb.cu(1);
            sb.shl(j, one)
        } else {
            j
        };
        let x = sb.load_u(1, word);
        let zero = sb.cu(0);
        let neg = sb.b.s_less_than(sb.bool, None, x, zero).expect("slt");
        let wrapped = sb.iadd(x, dim);
        let idx = sb.select(neg, wrapped, x, false);
        let od = sb.imul(o, dim);
        let row = sb.iadd(od, idx);
        let ri = sb.imul(row, inner);
        sb.iadd(ri, c)
    };
    if !bytes {
        let inside = sb.ult(t, total);
        sb.if_then(inside, |sb| {
            let src = source(sb, t);
            let v = sb.load(0, src);
            sb.store(2, t, v);
        });
        return;
    }
    // Four byte results per invocation, packed into one word.
    let four = sb.cu(4);
    let first = sb.imul(t, four);
    let inside = sb.ult(first, total);
    sb.if_then(inside, |sb| {
        let w = pack_bytes(sb, t, total, &mut |sb, i| {
            let src = source(sb, i);
            unpack_int(sb, 0, src, 8, false)
        });
        sb.store_u(2, t, w);
    });
}

/// The word holding byte results `4w .. 4w + 4` (those below `total`): `byte(i)` gives
/// element i's value (0..=255) as a u32.
fn pack_bytes(sb: &mut Sb, w: Word, total: Word, byte: &mut dyn FnMut(&mut Sb, Word) -> Word) -> Word {
    let zero = sb.cu(0);
    let word = sb.var(false, zero);
    let four = sb.cu(4);
    let first = sb.imul(w, four);
    for lane in 0..4u32 {
        let lw = sb.cu(lane);
        let i = sb.iadd(first, lw);
        let ok = sb.ult(i, total);
        sb.if_then(ok, |sb| {
            let b = byte(sb, i);
            let sh = sb.cu(8 * lane);
            let b = sb.shl(b, sh);
            let v = sb.get(word, false);
            let v = sb.bor(v, b);
            sb.set(word, v);
        });
    }
    sb.get(word, false)
}

/// DynamicQuantizeLinear in one workgroup (buffers: x, y words, scale, zero word).
fn dyn_quant_body(sb: &mut Sb) {
    let n = sb.push(0);
    let lid = sb.local_id(0);
    let step = sb.cu(ROW_LOCAL);
    let fz = sb.cf(0.0);
    // lo = min(0, min(x)), hi = max(0, max(x)); NaN never wins (as Rust's min and max).
    let (lo, hi) = (sb.var(true, fz), sb.var(true, fz));
    sb.for_range(lid, n, step, |sb, i| {
        let x = sb.load(0, i);
        let l = sb.get(lo, true);
        let less = sb.flt(x, l);
        let l = sb.select(less, x, l, true);
        sb.set(lo, l);
        let h = sb.get(hi, true);
        let more = sb.fgt(x, h);
        let h = sb.select(more, x, h, true);
        sb.set(hi, h);
    });
    let l = sb.get(lo, true);
    let nl = sb.fneg(l);
    let nlo = reduce(sb, 0, nl, true, false);
    let lo = sb.fneg(nlo);
    let h = sb.get(hi, true);
    let hi = reduce(sb, 0, h, true, false);
    // scale = (hi - lo) / 255, or 1 when that is 0 or not finite.
    let d = sb.fsub(hi, lo);
    let c255 = sb.cf(255.0);
    let s = sb.fdiv(d, c255);
    let one = sb.cf(1.0);
    let is0 = sb.b.f_ord_equal(sb.bool, None, s, fz).expect("feq");
    let inf = sb.b.is_inf(sb.bool, None, s).expect("isinf");
    let nan = sb.is_nan(s);
    let bad = sb.b.logical_or(sb.bool, None, is0, inf).expect("or");
    let bad = sb.b.logical_or(sb.bool, None, bad, nan).expect("or");
    let scale = sb.select(bad, one, s, true);
    // A float in [0, 255] after round-half-even (NaN as 0), as an integer.
    let sat = |sb: &mut Sb, q: Word| -> Word {
        let fz = sb.cf(0.0);
        let c255 = sb.cf(255.0);
        let nan = sb.is_nan(q);
        let q = sb.select(nan, fz, q, true);
        let q = sb.glsl(Glsl::FMax, &[q, fz]);
        let q = sb.glsl(Glsl::FMin, &[q, c255]);
        sb.b.convert_f_to_u(sb.u32, None, q).expect("f2u")
    };
    let nlo = sb.fneg(lo);
    let z = sb.fdiv(nlo, scale);
    let z = sb.glsl(Glsl::RoundEven, &[z]);
    let zero = sat(sb, z);
    let zf = sb.u2f(zero);
    let first = {
        let z = sb.cu(0);
        sb.b.i_equal(sb.bool, None, lid, z).expect("ieq")
    };
    sb.if_then(first, |sb| {
        let z = sb.cu(0);
        sb.store(2, z, scale);
        sb.store_u(3, z, zero);
    });
    // Four results per word.
    let three = sb.cu(3);
    let words = {
        let t = sb.iadd(n, three);
        let two = sb.cu(2);
        sb.shr(t, two)
    };
    sb.for_range(lid, words, step, |sb, w| {
        let v = pack_bytes(sb, w, n, &mut |sb, i| {
            let x = sb.load(0, i);
            let q = sb.fdiv(x, scale);
            let q = sb.glsl(Glsl::RoundEven, &[q]);
            let q = sb.fadd(q, zf);
            sat(sb, q)
        });
        sb.store_u(1, w, v);
    });
}

/// `matmul_integer`, one result per invocation (buffers: A, B, A's zero, B's zero, C; the
/// zero points only when given).
fn matmul_int_body(sb: &mut Sb, br: u32, signed: [bool; 2], a_zero: bool, b_zero: bool, pair: bool) {
    let (m, n, k) = (sb.push(0), sb.push(1), sb.push(2));
    let lx = sb.local_id(0);
    let wx = sb.group_id(0);
    let row = sb.group_id(1);
    let bz = sb.group_id(2);
    let col = {
        let w = sb.cu(EW_LOCAL);
        let t = sb.imul(wx, w);
        sb.iadd(t, lx)
    };
    let (aoff, boff, coff) = batch_offsets(sb, br, bz);
    let row_in = sb.ult(row, m);
    let col_in = sb.ult(col, n);
    let ok = sb.b.logical_and(sb.bool, None, row_in, col_in).expect("and");
    let za_buf = 2;
    let zb_buf = 2 + a_zero as usize;
    let out = 2 + a_zero as usize + b_zero as usize;
    sb.if_then(ok, |sb| {
        let zero = sb.cu(0);
        let one = sb.cu(1);
        let za = if a_zero { unpack_int(sb, za_buf, zero, 8, signed[0]) } else { zero };
        let zb = if b_zero {
            let st = sb.push(9);
            let e = sb.imul(col, st);
            unpack_int(sb, zb_buf, e, 8, signed[1])
        } else {
            zero
        };
        let arow = {
            let t = sb.imul(row, k);
            sb.iadd(aoff, t)
        };
        let a_at = |sb: &mut Sb, kk: Word| {
            let e = sb.iadd(arow, kk);
            unpack_int(sb, 0, e, 8, signed[0])
        };
        let b_at = |sb: &mut Sb, kk: Word| {
            let t = sb.imul(kk, n);
            let e = sb.iadd(t, col);
            let e = sb.iadd(e, boff);
            unpack_int(sb, 1, e, 8, signed[1])
        };
        let acc = sb.var(false, zero);
        if !pair {
            sb.for_range(zero, k, one, |sb, kk| {
                let a = a_at(sb, kk);
                let a = sb.isub(a, za);
                let b = b_at(sb, kk);
                let b = sb.isub(b, zb);
                let p = sb.imul(a, b);
                let s = sb.get(acc, false);
                let s = sb.iadd(s, p);
                sb.set(acc, s);
            });
        } else {
            // onnxruntime's x86 u8 x s8 kernel: raw products summed in pairs, saturated to
            // int16, then the zero points corrected exactly.
            let (rowsum, colsum) = (sb.var(false, zero), sb.var(false, zero));
            let pairs = {
                let t = sb.iadd(k, one);
                sb.shr(t, one)
            };
            sb.for_range(zero, pairs, one, |sb, j| {
                let k0 = sb.shl(j, one);
                let k1 = sb.iadd(k0, one);
                let a0 = a_at(sb, k0);
                let b0 = b_at(sb, k0);
                let has1 = sb.ult(k1, k);
                let zero = sb.cu(0);
                let (a1v, b1v) = (sb.var(false, zero), sb.var(false, zero));
                sb.if_then(has1, |sb| {
                    let a1 = a_at(sb, k1);
                    let b1 = b_at(sb, k1);
                    sb.set(a1v, a1);
                    sb.set(b1v, b1);
                });
                let (a1, b1) = (sb.get(a1v, false), sb.get(b1v, false));
                let p0 = sb.imul(a0, b0);
                let p1 = sb.imul(a1, b1);
                let p = sb.iadd(p0, p1);
                let lo = sb.cu((-32768i32) as u32);
                let hi = sb.cu(32767);
                let below = sb.b.s_less_than(sb.bool, None, p, lo).expect("slt");
                let p = sb.select(below, lo, p, false);
                let above = sb.b.s_greater_than(sb.bool, None, p, hi).expect("sgt");
                let p = sb.select(above, hi, p, false);
                let s = sb.get(acc, false);
                let s = sb.iadd(s, p);
                sb.set(acc, s);
                let ra = sb.iadd(a0, a1);
                let r = sb.get(rowsum, false);
                let r = sb.iadd(r, ra);
                sb.set(rowsum, r);
                let cb = sb.iadd(b0, b1);
                let c = sb.get(colsum, false);
                let c = sb.iadd(c, cb);
                sb.set(colsum, c);
            });
            let s = sb.get(acc, false);
            let cs = sb.get(colsum, false);
            let t = sb.imul(za, cs);
            let s = sb.isub(s, t);
            let rs = sb.get(rowsum, false);
            let t = sb.imul(zb, rs);
            let s = sb.isub(s, t);
            let kz = sb.imul(k, za);
            let kz = sb.imul(kz, zb);
            let s = sb.iadd(s, kz);
            sb.set(acc, s);
        }
        let idx = {
            let t = sb.imul(row, n);
            let t = sb.iadd(t, col);
            sb.iadd(t, coff)
        };
        let s = sb.get(acc, false);
        sb.store_u(out, idx, s);
    });
}

fn fused_body(sb: &mut Sb, prog: &[Step], out: u32, words: &[bool], rank: u32) {
    let i = flat_id(sb);
    let total = sb.push(0);
    let inside = sb.ult(i, total);
    let n_in = words.len() as u32;
    sb.if_then(inside, |sb| {
        let offs = ew_offsets(sb, i, n_in, rank);
        let mut load = |sb: &mut Sb, j: u32, from: Option<DType>| -> Word {
            match from {
                Some(from) => to_f32(sb, j as usize, from, offs[j as usize]),
                None => sb.load(j as usize, offs[j as usize]),
            }
        };
        let vals = eval_prog(sb, prog, None, &mut load);
        sb.store(n_in as usize, i, vals[out as usize]);
    });
}

/// Bool results, four per invocation packed into one word.
fn bytes_body(sb: &mut Sb, f: ByteFn, rank: u32, n_in: u32) {
    let t = flat_id(sb);
    let total = sb.push(0);
    let four = sb.cu(4);
    let first = sb.imul(t, four);
    let inside = sb.ult(first, total);
    sb.if_then(inside, |sb| {
        let w = pack_bytes(sb, t, total, &mut |sb, i| {
            let offs = ew_offsets(sb, i, n_in, rank);
            let zero = sb.cu(0);
            let truth = |sb: &mut Sb, j: usize| -> Word {
                let v = unpack_int(sb, j, offs[j], 8, false);
                sb.b.i_not_equal(sb.bool, None, v, zero).expect("ine")
            };
            let r = match f {
                ByteFn::Cmp(op) => {
                    let (x, y) = (sb.load(0, offs[0]), sb.load(1, offs[1]));
                    let bt = sb.bool;
                    match op {
                        BinaryOp::Equal => sb.b.f_ord_equal(bt, None, x, y),
                        BinaryOp::Less => sb.b.f_ord_less_than(bt, None, x, y),
                        BinaryOp::LessEqual => sb.b.f_ord_less_than_equal(bt, None, x, y),
                        BinaryOp::Greater => sb.b.f_ord_greater_than(bt, None, x, y),
                        _ => sb.b.f_ord_greater_than_equal(bt, None, x, y),
                    }
                    .expect("compare")
                }
                ByteFn::Logic(op) => {
                    let (a, b) = (truth(sb, 0), truth(sb, 1));
                    let bt = sb.bool;
                    match op {
                        BinaryOp::And => sb.b.logical_and(bt, None, a, b),
                        BinaryOp::Or => sb.b.logical_or(bt, None, a, b),
                        _ => sb.b.logical_not_equal(bt, None, a, b),
                    }
                    .expect("logic")
                }
                ByteFn::Not => {
                    let a = truth(sb, 0);
                    sb.b.logical_not(sb.bool, None, a).expect("not")
                }
            };
            let one = sb.cu(1);
            sb.select(r, one, zero, false)
        });
        sb.store_u(n_in as usize, t, w);
    });
}

fn argmax_body(sb: &mut Sb, last: bool) {
    let o = flat_id(sb);
    let total = sb.push(0);
    let inside = sb.ult(o, total);
    sb.if_then(inside, |sb| {
        let (n, inner) = (sb.push(2), sb.push(3));
        let outer = sb.udiv(o, inner);
        let c = sb.umod(o, inner);
        let base = {
            let t = sb.imul(outer, n);
            let t = sb.imul(t, inner);
            sb.iadd(t, c)
        };
        let zero = sb.cu(0);
        let one = sb.cu(1);
        let best = sb.var(false, zero);
        let x0 = sb.load(0, base);
        let bestv = sb.var(true, x0);
        sb.for_range(one, n, one, |sb, i| {
            let t = sb.imul(i, inner);
            let idx = sb.iadd(base, t);
            let v = sb.load(0, idx);
            let b = sb.get(bestv, true);
            let bt = sb.bool;
            let better = if last {
                sb.b.f_ord_greater_than_equal(bt, None, v, b).expect("ge")
            } else {
                sb.b.f_ord_greater_than(bt, None, v, b).expect("gt")
            };
            // The first NaN wins.
            let vn = sb.is_nan(v);
            let bn = sb.is_nan(b);
            let bnot = sb.b.logical_not(bt, None, bn).expect("not");
            let nan_first = sb.b.logical_and(bt, None, vn, bnot).expect("and");
            let take = sb.b.logical_or(bt, None, better, nan_first).expect("or");
            sb.if_then(take, |sb| {
                sb.set(best, i);
                sb.set(bestv, v);
            });
        });
        let two = sb.cu(2);
        let w = sb.imul(o, two);
        let bi = sb.get(best, false);
        sb.store_u(1, w, bi);
        let w1 = sb.iadd(w, one);
        sb.store_u(1, w1, zero);
    });
}

/// Concat and split: the whole tensor's element i = (o, a, c) over (outer, the axis, inner) is
/// part j's element (o, a - offset_j, c) where offset_j <= a < offset_j + size_j. Concat copies
/// parts (buffers 0..parts) into the whole (the last buffer); split copies the whole (buffer 0)
/// into the parts (buffers 1..=parts). One invocation per element of the whole.
fn pieces_body(sb: &mut Sb, parts: u32, words: u32, split: bool) {
    let i = flat_id(sb);
    let total = sb.push(0);
    let inside = sb.ult(i, total);
    sb.if_then(inside, |sb| {
        let (dim, inner) = (sb.push(2), sb.push(3));
        let c = sb.umod(i, inner);
        let oa = sb.udiv(i, inner);
        let a = sb.umod(oa, dim);
        let o = sb.udiv(oa, dim);
        let w = sb.cu(words);
        let whole = sb.imul(i, w);
        for j in 0..parts {
            let (off, size) = (sb.push(4 + 2 * j), sb.push(5 + 2 * j));
            let rel = sb.isub(a, off);
            // a - off < size, unsigned: also false when a < off (the difference wraps).
            let mine = sb.ult(rel, size);
            sb.if_then(mine, |sb| {
                let t = sb.imul(o, size);
                let t = sb.iadd(t, rel);
                let t = sb.imul(t, inner);
                let part = sb.iadd(t, c);
                let part = sb.imul(part, w);
                let (from, to) = if split { ((0, whole), (1 + j, part)) } else { ((j, part), (parts, whole)) };
                for k in 0..words {
                    let kw = sb.cu(k);
                    let s = sb.iadd(from.1, kw);
                    let d = sb.iadd(to.1, kw);
                    let x = sb.load_u(from.0 as usize, s);
                    sb.store_u(to.0 as usize, d, x);
                }
            });
        }
    });
}
