//! Type and shape inference for every op, shared by the verifier and `Graph::add_op`.
//! Symbolic dims flow through; where a dim cannot be derived it becomes `?` and the
//! interpreter checks it when the graph runs.

use crate::dtype::DType;
use crate::entity::Value;
use crate::graph::{Graph, ValueDef};
use crate::op::{BinaryOp, Op, TargetDim, UnaryOp};
use crate::shape::{Dim, Shape};
use crate::tensor::Tensor;
use crate::types::{normalize_axis, QuantGranularity, TensorType};

type R<T> = Result<T, String>;

/// Infers the result types of `op` applied to operands of `inputs` types.
/// `body` is the region of a `kernel` node.
pub fn infer_types(g: &Graph, op: &Op, operands: &[Value], body: Option<&Graph>) -> R<Vec<TensorType>> {
    let inputs: Vec<&TensorType> = operands.iter().map(|&v| g.ty(v)).collect();
    let inputs = &inputs[..];
    let (lo, hi) = op.arity();
    if inputs.len() < lo || hi.is_some_and(|hi| inputs.len() > hi) {
        let want = match hi {
            Some(hi) if hi == lo => format!("{lo}"),
            Some(hi) => format!("{lo} to {hi}"),
            None => format!("at least {lo}"),
        };
        return Err(format!("`{}` takes {want} operands, got {}", op.name(), inputs.len()));
    }
    let x = inputs.first().copied();
    let one = |dtype: DType, shape: Shape| Ok(vec![TensorType::new(dtype, shape)]);
    match op {
        Op::Unary(u) => {
            let x = x.expect("arity");
            match u {
                UnaryOp::Not if x.dtype != DType::Bool => return Err(format!("`not` needs bool, got {}", x.dtype)),
                UnaryOp::Not => {}
                _ if u.float_only() && !x.dtype.is_float() => {
                    return Err(format!("`{}` needs a float operand, got {}", u.name(), x.dtype))
                }
                _ if x.dtype == DType::Bool => return Err(format!("`{}` is not defined on bool", u.name())),
                _ => {}
            }
            one(if u.returns_bool() { DType::Bool } else { x.dtype }, x.shape.clone())
        }
        Op::Binary(b) => {
            let (a, c) = (inputs[0], inputs[1]);
            same_dtype(b.name(), a, c)?;
            if b.is_logical() != (a.dtype == DType::Bool) {
                return Err(if b.is_logical() {
                    format!("`{}` needs bool operands, got {}", b.name(), a.dtype)
                } else {
                    format!("`{}` is not defined on bool", b.name())
                });
            }
            let shape = broadcast(&a.shape, &c.shape)?;
            let dtype = if b.is_comparison() || b.is_logical() { DType::Bool } else { a.dtype };
            if *b == BinaryOp::Equal || !b.is_comparison() || a.dtype != DType::Bool {
                one(dtype, shape)
            } else {
                Err(format!("`{}` is not defined on bool", b.name()))
            }
        }
        Op::Where => {
            let (cond, a, b) = (inputs[0], inputs[1], inputs[2]);
            if cond.dtype != DType::Bool {
                return Err(format!("the condition of `where` must be bool, got {}", cond.dtype));
            }
            same_dtype("where", a, b)?;
            one(a.dtype, broadcast(&broadcast(&cond.shape, &a.shape)?, &b.shape)?)
        }
        Op::Cast { to } => one(*to, x.expect("arity").shape.clone()),
        Op::MatMul => {
            let (a, b) = (inputs[0], inputs[1]);
            same_dtype("matmul", a, b)?;
            if a.dtype == DType::Bool {
                return Err("`matmul` is not defined on bool".into());
            }
            one(a.dtype, matmul_shape(&a.shape, &b.shape)?)
        }
        Op::Gemm { trans_a, trans_b, .. } => {
            let (a, b) = (inputs[0], inputs[1]);
            same_dtype("gemm", a, b)?;
            need_float("gemm", a)?;
            if a.rank() != 2 || b.rank() != 2 {
                return Err(format!("`gemm` needs 2-D operands, got {} and {}", a.shape, b.shape));
            }
            let (m, ka) = if *trans_a { (&a.shape.0[1], &a.shape.0[0]) } else { (&a.shape.0[0], &a.shape.0[1]) };
            let (kb, n) = if *trans_b { (&b.shape.0[1], &b.shape.0[0]) } else { (&b.shape.0[0], &b.shape.0[1]) };
            merge_dim(ka, kb).map_err(|_| format!("`gemm` inner dims differ: {ka} and {kb}"))?;
            let out = Shape(vec![m.clone(), n.clone()]);
            if let Some(c) = inputs.get(2) {
                same_dtype("gemm", a, c)?;
                let b = broadcast(&c.shape, &out)?;
                if b.rank() != 2 {
                    return Err(format!("the bias of `gemm` does not broadcast to {out}"));
                }
            }
            one(a.dtype, out)
        }
        Op::MatMulInteger { pair_saturate } => {
            let (a, b) = (inputs[0], inputs[1]);
            if *pair_saturate
                && (a.dtype != DType::U8
                    || b.dtype != DType::I8
                    || b.rank() != 2
                    || inputs[2..].iter().any(|z| z.shape.static_numel() != Some(1)))
            {
                return Err(format!(
                    "`matmul_integer` with pair_saturate needs u8 a, 2-D i8 b and scalar zero points, got {a} and {b}"
                ));
            }
            for (what, t) in [("a", a), ("b", b)] {
                if !matches!(t.dtype, DType::I8 | DType::U8 | DType::I4 | DType::U4) {
                    return Err(format!("`matmul_integer` needs 8-bit or 4-bit integers, got {} for {what}", t.dtype));
                }
            }
            for (i, zp) in inputs.iter().enumerate().skip(2) {
                let owner = inputs[i - 2];
                if zp.dtype != owner.dtype {
                    return Err(format!("zero point {} must have its operand's dtype {}", zp.dtype, owner.dtype));
                }
                if zp.rank() > 1 {
                    return Err(format!("zero point must be a scalar or 1-D, got {}", zp.shape));
                }
            }
            one(DType::I32, matmul_shape(&a.shape, &b.shape)?)
        }
        Op::QMatMul => {
            let (xt, w) = (inputs[0], inputs[1]);
            need_float("qmatmul", xt)?;
            if !w.dtype.is_int() || w.quant.is_none() {
                return Err(format!("`qmatmul` needs a weight of quantized integer type, got {w}"));
            }
            one(DType::F32, matmul_shape(&xt.shape, &w.shape)?)
        }
        Op::Quantize { axis, block, to } => {
            let (xt, scale) = (inputs[0], inputs[1]);
            need_float("quantize", xt)?;
            need_float("quantize (scale)", scale)?;
            if !to.is_int() {
                return Err(format!("`quantize` produces integers, not {to}"));
            }
            if let Some(zp) = inputs.get(2) {
                if zp.dtype != *to {
                    return Err(format!("zero point is {} but `to` is {to}", zp.dtype));
                }
                check_qparam_shape("zero point", &xt.shape, &zp.shape, *axis, *block)?;
            }
            check_qparam_shape("scale", &xt.shape, &scale.shape, *axis, *block)?;
            one(*to, xt.shape.clone())
        }
        Op::Dequantize { axis, block } => {
            let xt = inputs[0];
            if !xt.dtype.is_int() {
                return Err(format!("`dequantize` needs integers, got {}", xt.dtype));
            }
            if inputs.len() == 1 {
                let Some(q) = &xt.quant else {
                    return Err("`dequantize` with one operand needs a quantized operand type".into());
                };
                let scale = g.ty(q.scale);
                return one(scale.dtype, xt.shape.clone());
            }
            let scale = inputs[1];
            need_float("dequantize (scale)", scale)?;
            check_qparam_shape("scale", &xt.shape, &scale.shape, *axis, *block)?;
            if let Some(zp) = inputs.get(2) {
                if zp.dtype != xt.dtype {
                    return Err(format!("zero point is {} but the operand is {}", zp.dtype, xt.dtype));
                }
                check_qparam_shape("zero point", &xt.shape, &zp.shape, *axis, *block)?;
            }
            one(scale.dtype, xt.shape.clone())
        }
        Op::DynamicQuantize => {
            let xt = x.expect("arity");
            if xt.dtype != DType::F32 {
                return Err(format!("`dynamic_quantize` needs f32, got {}", xt.dtype));
            }
            Ok(vec![
                TensorType::new(DType::U8, xt.shape.clone()),
                TensorType::scalar(DType::F32),
                TensorType::scalar(DType::U8),
            ])
        }
        Op::FakeQuant { format } => {
            let xt = x.expect("arity");
            if xt.dtype != DType::F32 {
                return Err(format!("`fake_quant` needs f32, got {}", xt.dtype));
            }
            let b = format.block() as u64;
            match xt.shape.0.last().map(|d| d.as_static()) {
                Some(Some(n)) if n.is_multiple_of(b) => one(DType::F32, xt.shape.clone()),
                Some(Some(n)) => Err(format!(
                    "`fake_quant {{format = {}}}` needs a last dim that is a multiple of {b}, got {n}",
                    format.name()
                )),
                _ => Err(format!("`fake_quant` needs a static last dim (a multiple of {b})")),
            }
        }
        Op::Reduce { op: r, axes, keepdims } => {
            let xt = x.expect("arity");
            if xt.dtype == DType::Bool || (*r == crate::op::ReduceOp::Mean && !xt.dtype.is_float()) {
                return Err(format!("`{}` is not defined on {}", r.name(), xt.dtype));
            }
            if let Some(at) = inputs.get(1) {
                // Axes known only at run time: which dims go is unknown, how many is the operand's length.
                if !axes.is_empty() || at.dtype != DType::I64 || at.rank() != 1 {
                    return Err(format!(
                        "the axes operand of `{}` must be 1-D i64 (with no `axes` attribute)",
                        r.name()
                    ));
                }
                let k = at.shape.0[0].as_static().ok_or("the axes operand needs a static length")? as usize;
                // An empty axes operand reduces every axis.
                let rank = match (*keepdims, k) {
                    (true, _) => xt.rank(),
                    (false, 0) => 0,
                    (false, k) => xt.rank().saturating_sub(k),
                };
                return one(xt.dtype, Shape(vec![Dim::Unknown; rank]));
            }
            let axes = norm_axes(axes, xt.rank())?;
            let all = axes.is_empty();
            let dims = xt
                .shape
                .0
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match (all || axes.contains(&i), keepdims) {
                    (true, true) => Some(Dim::Static(1)),
                    (true, false) => None,
                    (false, _) => Some(d.clone()),
                })
                .collect();
            one(xt.dtype, Shape(dims))
        }
        Op::ArgMax { axis, keepdims, .. } => {
            let xt = x.expect("arity");
            let a = axis_of(*axis, xt.rank())?;
            let mut dims = xt.shape.0.clone();
            if *keepdims {
                dims[a] = Dim::Static(1);
            } else {
                dims.remove(a);
            }
            one(DType::I64, Shape(dims))
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            let xt = x.expect("arity");
            need_float(op.name(), xt)?;
            axis_of(*axis, xt.rank())?;
            one(xt.dtype, xt.shape.clone())
        }
        Op::LayerNorm { axis, .. } | Op::RmsNorm { axis, .. } => {
            let xt = inputs[0];
            need_float(op.name(), xt)?;
            let a = axis_of(*axis, xt.rank())?;
            let normalized = Shape(xt.shape.0[a..].to_vec());
            for p in &inputs[1..] {
                same_dtype(op.name(), xt, p)?;
                let b = broadcast(&p.shape, &normalized)?;
                if b.rank() != normalized.rank() {
                    return Err(format!(
                        "scale/bias {} does not broadcast to the normalized dims {normalized}",
                        p.shape
                    ));
                }
            }
            one(xt.dtype, xt.shape.clone())
        }
        Op::Attention { .. } => {
            let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
            for t in [q, k, v] {
                need_float("attention", t)?;
                if t.rank() < 2 {
                    return Err(format!("`attention` operands need rank >= 2, got {}", t.shape));
                }
            }
            same_dtype("attention", q, k)?;
            same_dtype("attention", q, v)?;
            let (qr, kr, vr) = (q.rank(), k.rank(), v.rank());
            merge_dim(&q.shape.0[qr - 1], &k.shape.0[kr - 1])
                .map_err(|_| format!("`attention` head dims of q {} and k {} differ", q.shape, k.shape))?;
            merge_dim(&k.shape.0[kr - 2], &v.shape.0[vr - 2])
                .map_err(|_| format!("`attention` key counts of k {} and v {} differ", k.shape, v.shape))?;
            let batch = broadcast(
                &broadcast(&Shape(q.shape.0[..qr - 2].to_vec()), &Shape(k.shape.0[..kr - 2].to_vec()))?,
                &Shape(v.shape.0[..vr - 2].to_vec()),
            )?;
            let mut dims = batch.0;
            dims.push(q.shape.0[qr - 2].clone());
            dims.push(v.shape.0[vr - 1].clone());
            if let Some(mask) = inputs.get(3) {
                if mask.dtype != DType::Bool && mask.dtype != q.dtype {
                    return Err(format!("the mask of `attention` must be bool or {}, got {}", q.dtype, mask.dtype));
                }
                let scores = Shape([&dims[..dims.len() - 1], &[k.shape.0[kr - 2].clone()]].concat());
                let b = broadcast(&mask.shape, &scores)?;
                if b.rank() != scores.rank() {
                    return Err(format!("the mask {} does not broadcast to the scores {scores}", mask.shape));
                }
            }
            one(q.dtype, Shape(dims))
        }
        Op::Gather { axis } => {
            let (data, idx) = (inputs[0], inputs[1]);
            if !matches!(idx.dtype, DType::I64 | DType::I32) {
                return Err(format!("`gather` indices must be i32 or i64, got {}", idx.dtype));
            }
            let a = axis_of(*axis, data.rank())?;
            let dims = [&data.shape.0[..a], &idx.shape.0[..], &data.shape.0[a + 1..]].concat();
            one(data.dtype, Shape(dims))
        }
        Op::GatherNd { batch_dims } => {
            let (data, idx) = (inputs[0], inputs[1]);
            if idx.dtype != DType::I64 {
                return Err(format!("`gather_nd` indices must be i64, got {}", idx.dtype));
            }
            let (r, q, b) = (data.rank(), idx.rank(), *batch_dims as usize);
            if r == 0 || q == 0 {
                return Err(format!(
                    "`gather_nd` needs data and indices of rank >= 1, got {} and {}",
                    data.shape, idx.shape
                ));
            }
            if b >= r.min(q) {
                return Err(format!("`gather_nd` batch_dims {b} must be less than the ranks {r} and {q}"));
            }
            let k = match idx.shape.0[q - 1] {
                Dim::Static(k) => k as usize,
                ref d => return Err(format!("the last dim of `gather_nd` indices must be static, got {d}")),
            };
            if k == 0 || k > r - b {
                return Err(format!(
                    "`gather_nd` index tuples have {k} entries; data {} allows 1 to {}",
                    data.shape,
                    r - b
                ));
            }
            let mut dims = Vec::with_capacity(q - 1 + r - b - k);
            for (i, (d, e)) in idx.shape.0[..q - 1].iter().zip(&data.shape.0).enumerate() {
                dims.push(if i < b {
                    merge_dim(d, e).map_err(|_| format!("`gather_nd` batch dim {i} differs: indices {d}, data {e}"))?
                } else {
                    d.clone()
                });
            }
            dims.extend_from_slice(&data.shape.0[b + k..]);
            one(data.dtype, Shape(dims))
        }
        Op::Concat { axis } => {
            let first = inputs[0];
            let a = axis_of(*axis, first.rank())?;
            let mut dims = first.shape.0.clone();
            let mut total = Some(0u64);
            for (i, t) in inputs.iter().enumerate() {
                same_dtype("concat", first, t)?;
                if t.rank() != first.rank() {
                    return Err(format!("`concat` operand {i} has rank {}, operand 0 has {}", t.rank(), first.rank()));
                }
                for (j, (d, e)) in dims.iter_mut().zip(&t.shape.0).enumerate() {
                    if j != a {
                        *d = merge_dim(d, e)
                            .map_err(|_| format!("`concat` operand {i} has dim {j} = {e}, expected {d}"))?;
                    }
                }
                total = total.zip(t.shape.0[a].as_static()).map(|(s, n)| s + n);
            }
            dims[a] = match total {
                Some(n) => Dim::Static(n),
                None if inputs.len() == 1 => first.shape.0[a].clone(),
                None => Dim::Unknown,
            };
            one(first.dtype, Shape(dims))
        }
        Op::Slice { starts, .. } if starts.is_empty() => {
            let xt = inputs[0];
            for (i, t) in inputs.iter().enumerate().skip(1) {
                if !matches!(t.dtype, DType::I64 | DType::I32) || t.rank() != 1 {
                    return Err(format!("`slice` operand {i} must be a 1-D integer tensor, got {t}"));
                }
            }
            one(xt.dtype, Shape(vec![Dim::Unknown; xt.rank()]))
        }
        Op::Slice { starts, ends, axes, steps } => {
            let xt = x.expect("arity");
            if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                return Err("`slice` needs starts, ends, axes and steps of one length".into());
            }
            let mut dims = xt.shape.0.clone();
            let mut seen = Vec::new();
            for i in 0..starts.len() {
                let a = axis_of(axes[i], xt.rank())?;
                if seen.contains(&a) {
                    return Err(format!("`slice` names axis {a} twice"));
                }
                seen.push(a);
                if steps[i] == 0 {
                    return Err("`slice` steps must not be 0".into());
                }
                dims[a] = match (&dims[a], &starts[i], &ends[i]) {
                    (Dim::Static(n), TargetDim::Int(s), TargetDim::Int(e)) => {
                        Dim::Static(slice_len(*n as i64, *s, *e, steps[i]) as u64)
                    }
                    (d, TargetDim::Int(0), TargetDim::Int(e)) if *e >= i64::MAX / 2 && steps[i] == 1 => d.clone(),
                    // `x[0:sym]` has the symbol's size (the interpreter checks it fits the dim).
                    (_, TargetDim::Int(0), TargetDim::Sym(s)) if steps[i] == 1 => Dim::Sym(s.clone()),
                    _ => Dim::Unknown,
                };
            }
            one(xt.dtype, Shape(dims))
        }
        Op::Split { axis, sizes } => {
            let xt = x.expect("arity");
            let a = axis_of(*axis, xt.rank())?;
            if sizes.is_empty() {
                return Err("`split` needs at least one size".into());
            }
            if let Some(st) = inputs.get(1) {
                // Sizes known only at run time: each result's dim along the axis is unknown.
                if st.dtype != DType::I64
                    || st.rank() != 1
                    || st.shape.0[0].as_static().is_some_and(|k| k as usize != sizes.len())
                {
                    return Err(format!(
                        "the sizes operand of `split` must be 1-D i64 with {} entries, got {st}",
                        sizes.len()
                    ));
                }
                if sizes.iter().any(|&s| s != 0) {
                    return Err(
                        "with a sizes operand, the `sizes` attribute only counts the results and must hold zeros"
                            .into(),
                    );
                }
                let mut dims = xt.shape.0.clone();
                dims[a] = Dim::Unknown;
                return Ok(vec![TensorType::new(xt.dtype, Shape(dims)); sizes.len()]);
            }
            let sum: u64 = sizes.iter().sum();
            if let Some(n) = xt.shape.0[a].as_static() {
                if n != sum {
                    return Err(format!("`split` sizes sum to {sum} but dim {a} is {n}"));
                }
            }
            Ok(sizes
                .iter()
                .map(|&s| {
                    let mut dims = xt.shape.0.clone();
                    dims[a] = Dim::Static(s);
                    TensorType::new(xt.dtype, Shape(dims))
                })
                .collect())
        }
        Op::Reshape { shape } => {
            let xt = inputs[0];
            let target = match shape {
                Some(t) => t.clone(),
                None => match target_from_operand(g, operands[1], "reshape")? {
                    Ok(t) => t,
                    Err(rank) => return one(xt.dtype, Shape(vec![Dim::Unknown; rank])),
                },
            };
            one(xt.dtype, reshape_shape(&xt.shape, &target)?)
        }
        Op::Transpose { perm } => {
            let xt = x.expect("arity");
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..xt.rank()).collect::<Vec<_>>() {
                return Err(format!("`transpose` perm {perm:?} is not a permutation of 0..{}", xt.rank()));
            }
            one(xt.dtype, Shape(perm.iter().map(|&p| xt.shape.0[p].clone()).collect()))
        }
        Op::Expand { shape } => {
            let xt = inputs[0];
            let target = match shape {
                Some(t) => t.clone(),
                None => match target_from_operand(g, operands[1], "expand")? {
                    Ok(t) => t,
                    Err(rank) => return one(xt.dtype, Shape(vec![Dim::Unknown; rank.max(xt.rank())])),
                },
            };
            let mut dims = Vec::new();
            for t in &target {
                dims.push(match t {
                    TargetDim::Int(n) if *n >= 0 => Dim::Static(*n as u64),
                    TargetDim::Int(n) => return Err(format!("`expand` dim {n} is negative")),
                    TargetDim::Sym(s) => Dim::Sym(s.clone()),
                });
            }
            one(xt.dtype, broadcast(&xt.shape, &Shape(dims))?)
        }
        Op::Squeeze { axes } | Op::Unsqueeze { axes } if inputs.len() == 2 => {
            let (xt, at) = (inputs[0], inputs[1]);
            if !axes.is_empty() || at.dtype != DType::I64 || at.rank() != 1 {
                return Err(format!("the axes operand of `{}` must be 1-D i64 (with no `axes` attribute)", op.name()));
            }
            let k = at.shape.0[0].as_static().ok_or("the axes operand needs a static length")? as usize;
            let rank = if matches!(op, Op::Squeeze { .. }) {
                xt.rank().checked_sub(k).ok_or("more axes than dims")?
            } else {
                xt.rank() + k
            };
            one(xt.dtype, Shape(vec![Dim::Unknown; rank]))
        }
        Op::Squeeze { axes } => {
            let xt = x.expect("arity");
            let axes = norm_axes(axes, xt.rank())?;
            let mut dims = Vec::new();
            for (i, d) in xt.shape.0.iter().enumerate() {
                let listed = axes.contains(&i);
                if listed && matches!(d, Dim::Static(n) if *n != 1) {
                    return Err(format!("`squeeze` axis {i} has size {d}, not 1"));
                }
                let drop = if axes.is_empty() { *d == Dim::Static(1) } else { listed };
                if !drop {
                    dims.push(d.clone());
                }
            }
            one(xt.dtype, Shape(dims))
        }
        Op::Unsqueeze { axes } => {
            let xt = x.expect("arity");
            let rank = xt.rank() + axes.len();
            let axes = norm_axes(axes, rank)?;
            let mut rest = xt.shape.0.iter();
            let dims = (0..rank)
                .map(|i| if axes.contains(&i) { Dim::Static(1) } else { rest.next().expect("counted").clone() })
                .collect();
            one(xt.dtype, Shape(dims))
        }
        Op::ShapeOf => one(DType::I64, Shape(vec![Dim::Static(x.expect("arity").rank() as u64)])),
        Op::Range => {
            let (s, l, d) = (inputs[0], inputs[1], inputs[2]);
            for t in [s, l, d] {
                same_dtype("range", s, t)?;
                if t.rank() != 0 {
                    return Err(format!("`range` operands must be scalars, got {}", t.shape));
                }
            }
            if s.dtype == DType::Bool {
                return Err("`range` is not defined on bool".into());
            }
            // Constant bounds name the length, computed as the interpreter computes it.
            let consts: Option<Vec<Tensor>> = operands.iter().map(|&v| const_tensor(g, v)).collect();
            let len = match consts.as_deref() {
                Some([a, b, d]) if s.dtype.is_float() => {
                    let f = |t: &Tensor| t.as_float().and_then(|x| x.iter().next().copied());
                    match (f(a), f(b), f(d)) {
                        (Some(a), Some(b), Some(d)) if d != 0.0 => {
                            let n = ((b - a) / d).ceil().max(0.0);
                            if n.is_finite() {
                                Dim::Static(n as u64)
                            } else {
                                Dim::Unknown
                            }
                        }
                        _ => Dim::Unknown,
                    }
                }
                Some([a, b, d]) => {
                    let i = |t: &Tensor| t.as_int().and_then(|x| x.iter().next().copied()).map(|v| v as i128);
                    match (i(a), i(b), i(d)) {
                        (Some(a), Some(b), Some(d)) if d != 0 => {
                            Dim::Static((((b - a) + d - d.signum()) / d).max(0) as u64)
                        }
                        _ => Dim::Unknown,
                    }
                }
                _ => Dim::Unknown,
            };
            one(s.dtype, Shape(vec![len]))
        }
        Op::ConstantOfShape { dtype, .. } => {
            let st = x.expect("arity");
            if st.dtype != DType::I64 || st.rank() != 1 {
                return Err(format!("`constant_of_shape` needs a 1-D i64 shape, got {st}"));
            }
            match target_from_operand(g, operands[0], "constant_of_shape")? {
                Ok(t) => {
                    let dims = t
                        .iter()
                        .map(|d| match d {
                            TargetDim::Int(n) if *n >= 0 => Ok(Dim::Static(*n as u64)),
                            other => Err(format!("`constant_of_shape` dim {other} is invalid")),
                        })
                        .collect::<R<Vec<_>>>()?;
                    one(*dtype, Shape(dims))
                }
                Err(rank) => one(*dtype, Shape(vec![Dim::Unknown; rank])),
            }
        }
        Op::Identity => Ok(vec![x.expect("arity").clone()]),
        Op::Kernel { .. } => {
            let body = body.ok_or("`kernel` needs a region")?;
            if body.inputs().len() != inputs.len() {
                return Err(format!(
                    "the kernel body takes {} inputs, the node gives {}",
                    body.inputs().len(),
                    inputs.len()
                ));
            }
            for (i, ((_, bv), t)) in body.inputs().iter().zip(inputs).enumerate() {
                let bt = body.ty(*bv);
                if bt.dtype != t.dtype || !dims_compatible(&t.shape, &bt.shape) {
                    return Err(format!("kernel operand {i} is {t} but the body takes {bt}"));
                }
            }
            Ok(body.outputs().iter().map(|(_, v)| body.ty(*v).plain()).collect())
        }
    }
}

fn need_float(op: &str, t: &TensorType) -> R<()> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("`{op}` needs floats, got {}", t.dtype))
    }
}

fn same_dtype(op: &str, a: &TensorType, b: &TensorType) -> R<()> {
    if a.dtype == b.dtype {
        Ok(())
    } else {
        Err(format!("`{op}` operands have different dtypes: {} and {}", a.dtype, b.dtype))
    }
}

fn axis_of(axis: i64, rank: usize) -> R<usize> {
    normalize_axis(axis, rank).ok_or_else(|| format!("axis {axis} is out of range for rank {rank}"))
}

fn norm_axes(axes: &[i64], rank: usize) -> R<Vec<usize>> {
    let mut out = Vec::new();
    for &a in axes {
        let n = axis_of(a, rank)?;
        if out.contains(&n) {
            return Err(format!("axis {a} is listed twice"));
        }
        out.push(n);
    }
    Ok(out)
}

/// Merges two dims that must be equal.
fn merge_dim(a: &Dim, b: &Dim) -> R<Dim> {
    match (a, b) {
        (Dim::Static(x), Dim::Static(y)) if x != y => Err(format!("{x} != {y}")),
        (Dim::Unknown, d) | (d, Dim::Unknown) => Ok(d.clone()),
        (Dim::Static(_), _) => Ok(a.clone()),
        (_, Dim::Static(_)) => Ok(b.clone()),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => Ok(a.clone()),
        _ => Ok(Dim::Unknown),
    }
}

/// Numpy broadcasting of two shapes.
pub fn broadcast(a: &Shape, b: &Shape) -> R<Shape> {
    let rank = a.rank().max(b.rank());
    let one = Dim::Static(1);
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = if i + a.rank() >= rank { &a.0[i + a.rank() - rank] } else { &one };
        let db = if i + b.rank() >= rank { &b.0[i + b.rank() - rank] } else { &one };
        dims.push(match (da, db) {
            (Dim::Static(1), d) | (d, Dim::Static(1)) => d.clone(),
            (Dim::Static(x), Dim::Static(y)) if x != y => {
                return Err(format!("shapes {a} and {b} do not broadcast (dims {x} and {y})"))
            }
            (Dim::Static(_), _) => da.clone(),
            (_, Dim::Static(_)) => db.clone(),
            (Dim::Sym(x), Dim::Sym(y)) if x == y => da.clone(),
            _ => Dim::Unknown,
        });
    }
    Ok(Shape(dims))
}

/// The result shape of numpy matmul.
pub fn matmul_shape(a: &Shape, b: &Shape) -> R<Shape> {
    if a.rank() == 0 || b.rank() == 0 {
        return Err("`matmul` operands must not be scalars".into());
    }
    let a2 = if a.rank() == 1 { Shape(vec![Dim::Static(1), a.0[0].clone()]) } else { a.clone() };
    let b2 = if b.rank() == 1 { Shape(vec![b.0[0].clone(), Dim::Static(1)]) } else { b.clone() };
    let (ar, br) = (a2.rank(), b2.rank());
    merge_dim(&a2.0[ar - 1], &b2.0[br - 2]).map_err(|_| format!("`matmul` inner dims differ: {a} and {b}"))?;
    let mut dims = broadcast(&Shape(a2.0[..ar - 2].to_vec()), &Shape(b2.0[..br - 2].to_vec()))?.0;
    if a.rank() > 1 {
        dims.push(a2.0[ar - 2].clone());
    }
    if b.rank() > 1 {
        dims.push(b2.0[br - 1].clone());
    }
    Ok(Shape(dims))
}

/// The length ONNX Slice gives for one axis.
pub fn slice_len(n: i64, start: i64, end: i64, step: i64) -> i64 {
    let (s, e) = slice_bounds(n, start, end, step);
    let span = if step > 0 { e - s } else { s - e };
    // In u64, so that steps near i64::MIN and i64::MAX do not overflow.
    (span.max(0) as u64).div_ceil(step.unsigned_abs()) as i64
}

/// ONNX Slice's clamped start and end for one axis.
pub fn slice_bounds(n: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let fix = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (fix(start), fix(end));
    if step > 0 {
        (s.clamp(0, n), e.clamp(0, n))
    } else if n == 0 {
        // Nothing to pick (and `0..=n - 1` is no range to clamp to).
        (-1, -1)
    } else {
        (s.clamp(0, n - 1), e.clamp(-1, n - 1))
    }
}

fn check_qparam_shape(what: &str, x: &Shape, p: &Shape, axis: i64, block: u64) -> R<()> {
    let numel = p.static_numel();
    if block == 0 && (p.rank() == 0 || numel == Some(1)) {
        return Ok(());
    }
    let a = axis_of(axis, x.rank())?;
    if block == 0 {
        if p.rank() != 1 {
            return Err(format!("per-axis {what} must be 1-D, got {p}"));
        }
        merge_dim(&p.0[0], &x.0[a])
            .map_err(|_| format!("per-axis {what} has {} entries but axis {a} has {}", p.0[0], x.0[a]))?;
        return Ok(());
    }
    if p.rank() != x.rank() {
        return Err(format!("blocked {what} must have the operand's rank {}, got {p}", x.rank()));
    }
    for (i, (pd, xd)) in p.0.iter().zip(&x.0).enumerate() {
        let want = if i == a {
            xd.as_static().map(|n| Dim::Static(n.div_ceil(block))).unwrap_or(Dim::Unknown)
        } else {
            xd.clone()
        };
        merge_dim(pd, &want).map_err(|_| format!("blocked {what} dim {i} is {pd}, expected {want}"))?;
    }
    Ok(())
}

/// Checks a quant annotation against its tensor's type.
pub fn check_quant(g: &Graph, ty: &TensorType) -> R<()> {
    let Some(q) = &ty.quant else { return Ok(()) };
    if !ty.dtype.is_int() {
        return Err(format!("only integer types can be quantized, not {}", ty.dtype));
    }
    let (axis, block) = match q.granularity {
        QuantGranularity::PerTensor => (0, 0),
        QuantGranularity::PerAxis { axis } => (axis, 0),
        QuantGranularity::PerBlock { axis, size } => {
            if size == 0 {
                return Err("quant block size must be positive".into());
            }
            (axis, size)
        }
    };
    if let QuantGranularity::PerAxis { axis } | QuantGranularity::PerBlock { axis, .. } = q.granularity {
        axis_of(axis, ty.rank())?;
    }
    let params = [("scale", Some(q.scale)), ("zero point", q.zero_point), ("offset", q.offset)];
    for (what, v) in params {
        let Some(v) = v else { continue };
        if !g.contains(v) {
            return Err(format!("quant {what} {v} is not defined"));
        }
        if !matches!(g.value(v).def, ValueDef::Const(_)) {
            return Err(format!("quant {what} {v} must be a constant"));
        }
        let pt = g.ty(v);
        match what {
            "zero point" if pt.dtype != ty.dtype => {
                return Err(format!("quant zero point {v} is {} but the tensor is {}", pt.dtype, ty.dtype))
            }
            "scale" | "offset" if !pt.dtype.is_float() => {
                return Err(format!("quant {what} {v} must be float, got {}", pt.dtype))
            }
            _ => {}
        }
        check_qparam_shape(what, &ty.shape, &pt.shape, axis, block)?;
    }
    Ok(())
}

/// Reads a shape operand: Ok(target) when it is a constant, Err(rank) otherwise.
fn target_from_operand(g: &Graph, v: Value, op: &str) -> R<Result<Vec<TargetDim>, usize>> {
    let st = g.ty(v);
    if st.dtype != DType::I64 || st.rank() != 1 {
        return Err(format!("the shape operand of `{op}` must be a 1-D i64 tensor, got {st}"));
    }
    if let Some(t) = const_tensor(g, v) {
        let ints = t.as_int().expect("i64 tensor");
        return Ok(Ok(ints.iter().map(|&n| TargetDim::Int(n)).collect()));
    }
    match st.shape.0[0].as_static() {
        Some(r) => Ok(Err(r as usize)),
        None => Err(format!("the shape operand of `{op}` must have a static length")),
    }
}

/// Reshape target resolution with 0 (copy) and -1 (infer).
pub fn reshape_shape(input: &Shape, target: &[TargetDim]) -> R<Shape> {
    let mut dims = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        dims.push(match t {
            TargetDim::Int(0) => input
                .0
                .get(i)
                .cloned()
                .ok_or_else(|| format!("reshape dim {i} copies a dim the input does not have"))?,
            TargetDim::Int(-1) => {
                if infer_at.replace(i).is_some() {
                    return Err("reshape has more than one -1".into());
                }
                Dim::Unknown
            }
            TargetDim::Int(n) if *n > 0 => Dim::Static(*n as u64),
            TargetDim::Int(n) => return Err(format!("reshape dim {n} is invalid")),
            TargetDim::Sym(s) => Dim::Sym(s.clone()),
        });
    }
    // Compare the element counts as (static product, symbols) to infer -1 or check equality.
    let count = |ds: &[Dim]| -> Option<(u64, Vec<std::sync::Arc<str>>)> {
        let mut prod = 1u64;
        let mut syms = Vec::new();
        for d in ds {
            match d {
                Dim::Static(n) => prod = prod.checked_mul(*n)?,
                Dim::Sym(s) => syms.push(s.clone()),
                Dim::Unknown => return None,
            }
        }
        syms.sort();
        Some((prod, syms))
    };
    let known: Vec<Dim> = dims.iter().filter(|d| **d != Dim::Unknown || infer_at.is_none()).cloned().collect();
    if let (Some((ip, isyms)), Some((op, osyms))) = (count(&input.0), count(&known)) {
        let mut rest = isyms.clone();
        let mut missing = false;
        for s in &osyms {
            match rest.iter().position(|r| r == s) {
                Some(p) => {
                    rest.remove(p);
                }
                None => missing = true,
            }
        }
        match infer_at {
            Some(at) if !missing && op != 0 && ip % op == 0 => {
                let n = ip / op;
                dims[at] = match (rest.len(), n) {
                    (0, n) => Dim::Static(n),
                    (1, 1) => Dim::Sym(rest[0].clone()),
                    _ => Dim::Unknown,
                };
            }
            Some(_) if !missing && isyms.is_empty() => {
                return Err(format!("cannot reshape {input} to {}", fmt_target(target)))
            }
            None if !missing && rest.is_empty() && ip != op => {
                return Err(format!("cannot reshape {input} ({ip} elements) to {} ({op})", fmt_target(target)))
            }
            _ => {}
        }
    }
    Ok(Shape(dims))
}

fn fmt_target(t: &[TargetDim]) -> String {
    format!("[{}]", t.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Whether an actual shape fits a declared one: equal dims, or either side `?`.
pub fn dims_compatible(actual: &Shape, declared: &Shape) -> bool {
    actual.rank() == declared.rank()
        && actual.0.iter().zip(&declared.0).all(|(a, d)| a == d || *a == Dim::Unknown || *d == Dim::Unknown)
}

/// Decodes a constant's value, for the verifier's checks and folding.
pub fn const_tensor(g: &Graph, v: Value) -> Option<Tensor> {
    let data = g.const_data(v)?.bytes()?;
    let dims = g.ty(v).shape.as_static()?;
    Tensor::from_bytes(g.ty(v).dtype, &dims, data).ok()
}
