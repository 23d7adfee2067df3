//! Layout ops as copies: reshapes (a byte copy, or nothing when the plan put the result in
//! place), transposes, broadcasts and slices (one strided-box copy each), concat and split (row
//! copies), gather (bounds-checked row copies), and the shape ops.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use tessera_ir::{Dim, Graph, Node, Op, TargetDim};

use crate::fx::{broadcast_moves, broadcast_strides, elem_bytes, mem, Fx};
use crate::lower::{dims, values, BufRef, Lowered};
use crate::program::{DimSpec, ParamSpec, SliceBound};
use crate::{CpuError, KernelFault};

fn ebytes(g: &Graph, v: tessera_ir::Value) -> Result<i64, CpuError> {
    let d = g.ty(v).dtype;
    elem_bytes(d).ok_or_else(|| CpuError::Unsupported(format!("{d} data in a layout op")))
}

/// Copies `n` bytes (16 at a time, then byte by byte).
pub fn copy_bytes(fx: &mut Fx, src: Value, dst: Value, n: Value) -> Result<(), CpuError> {
    let zero = fx.iconst(0);
    let rest = fx.for_range(zero, n, 16, true, |fx, i| {
        let s = fx.b.ins().iadd(src, i);
        let d = fx.b.ins().iadd(dst, i);
        let v = fx.b.ins().load(types::I8X16, mem(), s, 0);
        fx.b.ins().store(mem(), v, d, 0);
        Ok(())
    })?;
    fx.for_range(rest, n, 1, false, |fx, i| {
        let s = fx.b.ins().iadd(src, i);
        let d = fx.b.ins().iadd(dst, i);
        let v = fx.b.ins().load(types::I8, mem(), s, 0);
        fx.b.ins().store(mem(), v, d, 0);
        Ok(())
    })?;
    Ok(())
}

fn int_type(e: i64) -> types::Type {
    match e {
        1 => types::I8,
        2 => types::I16,
        4 => types::I32,
        _ => types::I64,
    }
}

/// Copies a box: `dst` is contiguous with dims `dims`; source element `i` is at
/// `src + sum(i_j * sstrides_j)` (byte strides). With `inner_contiguous`, the source's
/// innermost stride is the element size and rows are copied as bytes.
pub fn strided_copy(
    fx: &mut Fx,
    src: Value,
    sstrides: &[Value],
    dst: Value,
    dims: &[Value],
    e: i64,
    inner_contiguous: bool,
) -> Result<(), CpuError> {
    let r = dims.len();
    if r == 0 {
        let n = fx.iconst(e);
        return copy_bytes(fx, src, dst, n);
    }
    let mut dstrides = vec![fx.iconst(e); r];
    for j in (0..r - 1).rev() {
        dstrides[j] = fx.b.ins().imul(dstrides[j + 1], dims[j + 1]);
    }
    nest(fx, 0, src, dst, sstrides, &dstrides, dims, e, inner_contiguous)
}

#[allow(clippy::too_many_arguments)]
fn nest(
    fx: &mut Fx,
    depth: usize,
    src: Value,
    dst: Value,
    ss: &[Value],
    ds: &[Value],
    dims: &[Value],
    e: i64,
    contiguous: bool,
) -> Result<(), CpuError> {
    let r = dims.len();
    if depth + 1 == r {
        if contiguous {
            let n = fx.imul_imm(dims[depth], e);
            return copy_bytes(fx, src, dst, n);
        }
        let ty = int_type(e);
        return fx.for_n(dims[depth], |fx, i| {
            let so = fx.b.ins().imul(i, ss[depth]);
            let s = fx.b.ins().iadd(src, so);
            let d = fx.addr(dst, i, e);
            let v = fx.b.ins().load(ty, mem(), s, 0);
            fx.b.ins().store(mem(), v, d, 0);
            Ok(())
        });
    }
    fx.for_n(dims[depth], |fx, i| {
        let so = fx.b.ins().imul(i, ss[depth]);
        let s = fx.b.ins().iadd(src, so);
        let dof = fx.b.ins().imul(i, ds[depth]);
        let d = fx.b.ins().iadd(dst, dof);
        nest(fx, depth + 1, s, d, ss, ds, dims, e, contiguous)
    })
}

/// Byte strides of a row-major tensor.
fn row_major_strides(fx: &mut Fx, dims: &[Dim], e: i64) -> Result<Vec<Value>, CpuError> {
    let r = dims.len();
    let mut st = vec![fx.iconst(e); r];
    for j in (0..r.saturating_sub(1)).rev() {
        let d = fx.dim(&dims[j + 1])?;
        st[j] = fx.b.ins().imul(st[j + 1], d);
    }
    Ok(st)
}

/// Reshape, squeeze, unsqueeze, identity: the same bytes (skipped when in place).
pub(crate) fn lower_copy(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let (x, out) = (nd.inputs[0], nd.outputs[0]);
    let e = ebytes(g, x)?;
    let d = dims(g, out);
    let mut bufs = values(&nd.inputs[..1]);
    bufs.push(BufRef::Value(out));
    Ok(Lowered::new(
        nd.op.name(),
        bufs,
        Box::new(move |fx| {
            let src = fx.buf(0);
            let dst = fx.buf(1);
            let same = fx.b.ins().icmp(IntCC::Equal, src, dst);
            let differ = fx.b.ins().bxor_imm_s(same, 1);
            fx.if_then(differ, |fx| {
                let n = fx.numel(&d)?;
                let n = fx.imul_imm(n, e);
                copy_bytes(fx, src, dst, n)
            })
        }),
    ))
}

pub(crate) fn lower(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let x = nd.inputs[0];
    let e = ebytes(g, x)?;
    let in_dims = dims(g, x);
    let out = nd.outputs[0];
    let out_dims = dims(g, out);
    let mut bufs = values(&nd.inputs);
    bufs.extend(values(&nd.outputs));
    match &nd.op {
        Op::Transpose { perm } => {
            let perm = perm.clone();
            let contiguous = perm.last().is_none_or(|&p| p + 1 == perm.len());
            Ok(Lowered::new(
                "transpose",
                bufs,
                Box::new(move |fx| {
                    let src = fx.buf(0);
                    let dst = fx.buf(nd_inputs(g, n));
                    let st = row_major_strides(fx, &in_dims, e)?;
                    let ss: Vec<Value> = perm.iter().map(|&p| st[p]).collect();
                    let dv: Vec<Value> = out_dims.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
                    strided_copy(fx, src, &ss, dst, &dv, e, contiguous)
                }),
            ))
        }
        Op::Expand { .. } => {
            let r = out_dims.len();
            let moves = broadcast_moves(&in_dims, &out_dims)?;
            let contiguous = r > 0 && moves[r - 1];
            Ok(Lowered::new(
                "expand",
                bufs,
                Box::new(move |fx| {
                    let src = fx.buf(0);
                    let dst = fx.buf(nd_inputs(g, n));
                    let zero = fx.iconst(0);
                    let ss: Vec<Value> =
                        broadcast_strides(fx, &in_dims, &out_dims, e)?.into_iter().map(|s| s.unwrap_or(zero)).collect();
                    let dv: Vec<Value> = out_dims.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
                    strided_copy(fx, src, &ss, dst, &dv, e, contiguous)
                }),
            ))
        }
        Op::Slice { starts, ends, axes, steps } => {
            if nd.inputs.len() > 1 {
                return Err(CpuError::Unsupported("slice bounds given at run time".into()));
            }
            let r = in_dims.len();
            let mut ax_norm = Vec::new();
            for &a in axes {
                ax_norm.push(
                    tessera_ir::types::normalize_axis(a, r)
                        .ok_or_else(|| CpuError::Codegen(format!("slice axis {a}")))?,
                );
            }
            let mut step_of = vec![1i64; r];
            for (i, &a) in ax_norm.iter().enumerate() {
                step_of[a] = steps.get(i).copied().unwrap_or(1);
            }
            let contiguous = r == 0 || step_of[r - 1] == 1;
            // Run-time parameters: the clamped start of each axis.
            let bound = |d: &TargetDim| match d {
                TargetDim::Int(v) => SliceBound::Int(*v),
                TargetDim::Sym(s) => SliceBound::Sym(s.to_string()),
            };
            let params = ParamSpec::SliceStarts {
                in_dims: in_dims.iter().map(DimSpec::of).collect(),
                axes: ax_norm.clone(),
                starts: starts.iter().map(bound).collect(),
                ends: ends.iter().map(bound).collect(),
                steps: step_of.clone(),
            };
            let mut lw = Lowered::new(
                "slice",
                bufs,
                Box::new(move |fx| {
                    let src = fx.buf(0);
                    let dst = fx.buf(1);
                    let st = row_major_strides(fx, &in_dims, e)?;
                    let mut base = src;
                    let mut ss = Vec::new();
                    for j in 0..r {
                        let s0 = fx.param(j);
                        let off = fx.b.ins().imul(s0, st[j]);
                        base = fx.b.ins().iadd(base, off);
                        ss.push(fx.imul_imm(st[j], step_of[j]));
                    }
                    let dv: Vec<Value> = out_dims.iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
                    strided_copy(fx, base, &ss, dst, &dv, e, contiguous)
                }),
            );
            lw.params = Some(params);
            Ok(lw)
        }
        Op::Concat { axis } => {
            let r = out_dims.len();
            let a =
                tessera_ir::types::normalize_axis(*axis, r).ok_or_else(|| CpuError::Codegen("concat axis".into()))?;
            let parts: Vec<Vec<Dim>> = nd.inputs.iter().map(|v| dims(g, *v)).collect();
            let k = parts.len();
            Ok(Lowered::new(
                "concat",
                bufs,
                Box::new(move |fx| {
                    let dst = fx.buf(k);
                    let outer = fx.numel(&out_dims[..a])?;
                    let inner = fx.numel(&out_dims[a + 1..])?;
                    let out_row = {
                        let d = fx.dim(&out_dims[a])?;
                        let x = fx.b.ins().imul(d, inner);
                        fx.imul_imm(x, e)
                    };
                    let mut acc = fx.iconst(0);
                    for (i, p) in parts.iter().enumerate() {
                        let src = fx.buf(i);
                        let d = fx.dim(&p[a])?;
                        let row = fx.b.ins().imul(d, inner);
                        let row = fx.imul_imm(row, e);
                        let at = acc;
                        fx.for_n(outer, |fx, o| {
                            let so = fx.b.ins().imul(o, row);
                            let s = fx.b.ins().iadd(src, so);
                            let dof = fx.b.ins().imul(o, out_row);
                            let dd = fx.b.ins().iadd(dst, dof);
                            let dd = fx.b.ins().iadd(dd, at);
                            copy_bytes(fx, s, dd, row)
                        })?;
                        acc = fx.b.ins().iadd(acc, row);
                    }
                    Ok(())
                }),
            ))
        }
        Op::Split { axis, .. } => {
            let r = in_dims.len();
            let a =
                tessera_ir::types::normalize_axis(*axis, r).ok_or_else(|| CpuError::Codegen("split axis".into()))?;
            let parts: Vec<Vec<Dim>> = nd.outputs.iter().map(|v| dims(g, *v)).collect();
            let k = nd.inputs.len();
            Ok(Lowered::new(
                "split",
                bufs,
                Box::new(move |fx| {
                    let src = fx.buf(0);
                    let outer = fx.numel(&in_dims[..a])?;
                    let inner = fx.numel(&in_dims[a + 1..])?;
                    let in_row = {
                        let d = fx.dim(&in_dims[a])?;
                        let x = fx.b.ins().imul(d, inner);
                        fx.imul_imm(x, e)
                    };
                    let mut acc = fx.iconst(0);
                    for (i, p) in parts.iter().enumerate() {
                        let dst = fx.buf(k + i);
                        let d = fx.dim(&p[a])?;
                        let row = fx.b.ins().imul(d, inner);
                        let row = fx.imul_imm(row, e);
                        let at = acc;
                        fx.for_n(outer, |fx, o| {
                            let so = fx.b.ins().imul(o, in_row);
                            let s = fx.b.ins().iadd(src, so);
                            let s = fx.b.ins().iadd(s, at);
                            let dof = fx.b.ins().imul(o, row);
                            let dd = fx.b.ins().iadd(dst, dof);
                            copy_bytes(fx, s, dd, row)
                        })?;
                        acc = fx.b.ins().iadd(acc, row);
                    }
                    Ok(())
                }),
            ))
        }
        other => Err(CpuError::Unsupported(format!("`{}` is not a layout op", other.name()))),
    }
}

fn nd_inputs(g: &Graph, n: Node) -> usize {
    g.node(n).inputs.len()
}

/// `gather data, indices {axis}`: bounds-checked row copies.
pub(crate) fn lower_gather(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let Op::Gather { axis } = nd.op else { unreachable!() };
    let (data, idx, out) = (nd.inputs[0], nd.inputs[1], nd.outputs[0]);
    let e = ebytes(g, data)?;
    let dd = dims(g, data);
    let id = dims(g, idx);
    let a = tessera_ir::types::normalize_axis(axis, dd.len()).ok_or_else(|| CpuError::Codegen("gather axis".into()))?;
    let idx_ty = index_type(g, idx, "gather")?;
    Ok(Lowered::new(
        "gather",
        vec![BufRef::Value(data), BufRef::Value(idx), BufRef::Value(out)],
        Box::new(move |fx| {
            let src = fx.buf(0);
            let ip = fx.buf(1);
            let dst = fx.buf(2);
            let outer = fx.numel(&dd[..a])?;
            let nrows = fx.dim(&dd[a])?;
            let inner = fx.numel(&dd[a + 1..])?;
            let row = fx.imul_imm(inner, e);
            let nidx = fx.numel(&id)?;
            let src_outer = fx.b.ins().imul(nrows, row);
            let dst_outer = fx.b.ins().imul(nidx, row);
            fx.for_n(outer, |fx, o| {
                let so = fx.b.ins().imul(o, src_outer);
                let sbase = fx.b.ins().iadd(src, so);
                let dof = fx.b.ins().imul(o, dst_outer);
                let dbase = fx.b.ins().iadd(dst, dof);
                fx.for_n(nidx, |fx, p| {
                    let i = checked_index(fx, ip, p, idx_ty, nrows);
                    let s_off = fx.b.ins().imul(i, row);
                    let s = fx.b.ins().iadd(sbase, s_off);
                    let d_off = fx.b.ins().imul(p, row);
                    let d = fx.b.ins().iadd(dbase, d_off);
                    copy_bytes(fx, s, d, row)
                })
            })
        }),
    ))
}

/// The Cranelift type of an index operand (i64 or i32).
pub(crate) fn index_type(g: &Graph, idx: tessera_ir::Value, op: &str) -> Result<types::Type, CpuError> {
    match g.ty(idx).dtype {
        tessera_ir::DType::I64 => Ok(types::I64),
        tessera_ir::DType::I32 => Ok(types::I32),
        d => Err(CpuError::Unsupported(format!("{d} {op} indices"))),
    }
}

/// Index `at` of an i64 or i32 index buffer, negative counting from the end of a dim of size
/// `n`; out of range stops the kernel with [`KernelFault::IndexOutOfRange`].
pub(crate) fn checked_index(fx: &mut Fx, ip: Value, at: Value, idx_ty: types::Type, n: Value) -> Value {
    let ia = fx.addr(ip, at, idx_ty.bytes() as i64);
    let raw = fx.b.ins().load(idx_ty, mem(), ia, 0);
    let i = if idx_ty == types::I64 { raw } else { fx.b.ins().sextend(types::I64, raw) };
    let neg = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, i, 0);
    let wrapped = fx.b.ins().iadd(i, n);
    let i = fx.b.ins().select(neg, wrapped, i);
    // Unsigned compare catches both i < 0 and i >= n.
    let bad = fx.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, i, n);
    fx.fail_if(bad, KernelFault::IndexOutOfRange);
    i
}

/// `gather_nd x, indices {batch_dims}` (ONNX GatherND): for each index tuple (the last dim of
/// `indices`, static), the slice of `x` it names within its batch is copied; negative indices
/// count from the end, and an index out of range stops the kernel with a fault code.
pub(crate) fn lower_gather_nd(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let Op::GatherNd { batch_dims } = nd.op else { unreachable!() };
    let (data, idx, out) = (nd.inputs[0], nd.inputs[1], nd.outputs[0]);
    let e = ebytes(g, data)?;
    let (ds, is) = (dims(g, data), dims(g, idx));
    let (r, q, b) = (ds.len(), is.len(), batch_dims as usize);
    let idx_ty = index_type(g, idx, "gather_nd")?;
    let k = match is.last() {
        Some(Dim::Static(k)) => *k as usize,
        _ => return Err(CpuError::Unsupported("gather_nd with index tuples of a run-time length".into())),
    };
    if r == 0 || q == 0 || b >= r.min(q) || k == 0 || k > r - b {
        return Err(CpuError::Codegen(format!("gather_nd shapes {ds:?} and {is:?} with batch_dims {b}")));
    }
    Ok(Lowered::new(
        "gather_nd",
        vec![BufRef::Value(data), BufRef::Value(idx), BufRef::Value(out)],
        Box::new(move |fx| {
            let (src, ip, dst) = (fx.buf(0), fx.buf(1), fx.buf(2));
            let slice = fx.numel(&ds[b + k..])?;
            let slice_bytes = fx.imul_imm(slice, e);
            let per_batch = fx.numel(&ds[b..])?;
            let per_batch_bytes = fx.imul_imm(per_batch, e);
            let tuples = fx.numel(&is[..q - 1])?;
            let per = fx.numel(&is[b..q - 1])?;
            let kd: Vec<Value> = ds[b..b + k].iter().map(|d| fx.dim(d)).collect::<Result<_, _>>()?;
            fx.for_n(tuples, |fx, t| {
                let zero = fx.iconst(0);
                let off = fx.var(types::I64, zero);
                for (j, &nj) in kd.iter().enumerate() {
                    let at = fx.imul_imm(t, k as i64);
                    let at = fx.iadd_imm(at, j as i64);
                    let i = checked_index(fx, ip, at, idx_ty, nj);
                    let o = fx.b.use_var(off);
                    let o = fx.b.ins().imul(o, nj);
                    let o = fx.b.ins().iadd(o, i);
                    fx.b.def_var(off, o);
                }
                // The batch of tuple t (every tuple is in batch 0 when there are none).
                let one = fx.iconst(1);
                let per1 = fx.b.ins().smax(per, one);
                let batch = fx.b.ins().udiv(t, per1);
                let so = fx.b.ins().imul(batch, per_batch_bytes);
                let o = fx.b.use_var(off);
                let o = fx.b.ins().imul(o, slice_bytes);
                let so = fx.b.ins().iadd(so, o);
                let s = fx.b.ins().iadd(src, so);
                let d_off = fx.b.ins().imul(t, slice_bytes);
                let d = fx.b.ins().iadd(dst, d_off);
                copy_bytes(fx, s, d, slice_bytes)
            })
        }),
    ))
}

/// `shape_of`, `range`, `constant_of_shape` (when their result shapes follow from the inputs).
pub(crate) fn lower_shape_ops(g: &Graph, n: Node) -> Result<Lowered<'_>, CpuError> {
    let nd = g.node(n);
    let out = nd.outputs[0];
    let od = dims(g, out);
    let mut bufs = values(&nd.inputs);
    bufs.push(BufRef::Value(out));
    let k = nd.inputs.len();
    match &nd.op {
        Op::ShapeOf => {
            let xd = dims(g, nd.inputs[0]);
            Ok(Lowered::new(
                "shape_of",
                bufs,
                Box::new(move |fx| {
                    let dst = fx.buf(k);
                    for (j, d) in xd.iter().enumerate() {
                        let v = fx.dim(d)?;
                        fx.b.ins().store(mem(), v, dst, (j * 8) as i32);
                    }
                    Ok(())
                }),
            ))
        }
        Op::ConstantOfShape { value, dtype } => {
            let (value, dtype) = (*value, *dtype);
            let e = elem_bytes(dtype).ok_or_else(|| CpuError::Unsupported(format!("{dtype} constant_of_shape")))?;
            Ok(Lowered::new(
                "constant_of_shape",
                bufs,
                Box::new(move |fx| {
                    let dst = fx.buf(k);
                    let n = fx.numel(&od)?;
                    let v = match dtype {
                        tessera_ir::DType::F32 => fx.fconst(value as f32),
                        tessera_ir::DType::F16 => {
                            let bits = half::f16::from_f64(value).to_bits() as i64;
                            fx.b.ins().iconst(types::I16, bits)
                        }
                        tessera_ir::DType::BF16 => {
                            let bits = half::bf16::from_f64(value).to_bits() as i64;
                            fx.b.ins().iconst(types::I16, bits)
                        }
                        d => {
                            let t = int_type(elem_bytes(d).unwrap_or(8));
                            fx.b.ins().iconst(t, value as i64)
                        }
                    };
                    fx.for_n(n, |fx, i| {
                        let a = fx.addr(dst, i, e);
                        fx.b.ins().store(mem(), v, a, 0);
                        Ok(())
                    })
                }),
            ))
        }
        Op::Range => {
            let dt = g.ty(out).dtype;
            if !matches!(dt, tessera_ir::DType::F32 | tessera_ir::DType::I64 | tessera_ir::DType::I32) {
                return Err(CpuError::Unsupported(format!("{dt} range")));
            }
            Ok(Lowered::new(
                "range",
                bufs,
                Box::new(move |fx| {
                    let (s, d, dst) = (fx.buf(0), fx.buf(2), fx.buf(3));
                    let n = fx.numel(&od)?;
                    match dt {
                        tessera_ir::DType::F32 => {
                            let start = fx.b.ins().load(types::F32, mem(), s, 0);
                            let delta = fx.b.ins().load(types::F32, mem(), d, 0);
                            fx.for_n(n, |fx, i| {
                                let fi = fx.b.ins().fcvt_from_sint(types::F32, i);
                                let v = fx.b.ins().fma(fi, delta, start);
                                let a = fx.addr(dst, i, 4);
                                fx.b.ins().store(mem(), v, a, 0);
                                Ok(())
                            })
                        }
                        _ => {
                            let t = if dt == tessera_ir::DType::I64 { types::I64 } else { types::I32 };
                            let start = fx.b.ins().load(t, mem(), s, 0);
                            let delta = fx.b.ins().load(t, mem(), d, 0);
                            let eb = t.bytes() as i64;
                            fx.for_n(n, |fx, i| {
                                let it = if t == types::I64 { i } else { fx.b.ins().ireduce(t, i) };
                                let m = fx.b.ins().imul(it, delta);
                                let v = fx.b.ins().iadd(start, m);
                                let a = fx.addr(dst, i, eb);
                                fx.b.ins().store(mem(), v, a, 0);
                                Ok(())
                            })
                        }
                    }
                }),
            ))
        }
        other => Err(CpuError::Unsupported(format!("`{}`", other.name()))),
    }
}
