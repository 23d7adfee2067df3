//! Data movement and shape ops: gather, concat, slice, split, reshape, transpose, expand,
//! squeeze, unsqueeze, range and constant_of_shape.

use super::{axis, broadcast_shape, float_result, ints, OpResult};
use crate::dtype::{DType, Domain};
use crate::infer::slice_bounds;
use crate::op::TargetDim;
use crate::shape::Bindings;
use crate::tensor::{checked_numel, Tensor, TensorData};
use ndarray::{ArrayD, Axis, IxDyn};

/// Applies the same generic array expression to whichever domain a tensor holds.
macro_rules! per_domain {
    ($t:expr, $a:ident => $body:expr) => {{
        let t: &Tensor = $t;
        let data = match t.data() {
            TensorData::Float($a) => TensorData::Float($body),
            TensorData::Int($a) => TensorData::Int($body),
            TensorData::Bool($a) => TensorData::Bool($body),
        };
        Tensor::from_data(t.dtype(), data)
    }};
}

/// Largest tensor the interpreter will make from computed shapes (guards hostile graphs).
const MAX_ELEMENTS: usize = 1 << 31;

fn check_size(shape: &[usize]) -> OpResult<()> {
    match checked_numel(shape) {
        Ok(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(format!("shape {shape:?} is too large")),
    }
}

fn reshaped<T: Clone>(a: &ArrayD<T>, shape: &[usize]) -> OpResult<ArrayD<T>> {
    a.as_standard_layout().into_owned().into_shape_with_order(IxDyn(shape)).map_err(|e| e.to_string())
}

pub(crate) fn gather(data: &Tensor, indices: &Tensor, ax: i64) -> OpResult<Tensor> {
    let a = axis(ax, data.shape().len())?;
    let n = data.shape()[a] as i64;
    let mut flat = Vec::with_capacity(indices.numel());
    for &i in ints(indices)?.iter() {
        let j = if i < 0 { i + n } else { i };
        if !(0..n).contains(&j) {
            return Err(format!("index {i} is out of range for dim {a} of size {n}"));
        }
        flat.push(j as usize);
    }
    let mut shape = data.shape()[..a].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&data.shape()[a + 1..]);
    let shape_ref = &shape;
    let flat_ref = &flat;
    Ok(per_domain!(data, x => reshaped(&x.select(Axis(a), flat_ref), shape_ref)?))
}

/// ONNX GatherND: each index tuple in the last dim of `indices` picks a slice of `data` below
/// the first `batch_dims` dims, which `data` and `indices` share.
pub(crate) fn gather_nd(data: &Tensor, indices: &Tensor, batch_dims: u64) -> OpResult<Tensor> {
    let (ds, is) = (data.shape(), indices.shape());
    let (r, q, b) = (ds.len(), is.len(), batch_dims as usize);
    if r == 0 || q == 0 || b >= r.min(q) {
        return Err(format!("batch_dims {b} must be less than the ranks of data {ds:?} and indices {is:?}"));
    }
    let k = is[q - 1];
    if k == 0 || k > r - b {
        return Err(format!("index tuples of {k} entries do not fit data {ds:?} below {b} batch dims"));
    }
    if ds[..b] != is[..b] {
        return Err(format!("the batch dims of data {ds:?} and indices {is:?} differ"));
    }
    let slice: usize = ds[b + k..].iter().product();
    let per_batch: usize = ds[b..].iter().product();
    let tuples_per_batch: usize = is[b..q - 1].iter().product();
    // The flat offset of each picked slice in row-major `data`.
    let mut offsets = Vec::with_capacity(indices.numel() / k);
    for (t, tuple) in ints(indices)?.as_standard_layout().as_slice().expect("standard layout").chunks(k).enumerate() {
        let mut off = 0usize;
        for (j, &i) in tuple.iter().enumerate() {
            let n = ds[b + j] as i64;
            let w = if i < 0 { i + n } else { i };
            if !(0..n).contains(&w) {
                return Err(format!("index {i} is out of range for dim {} of size {n}", b + j));
            }
            off = off * ds[b + j] + w as usize;
        }
        let batch = t.checked_div(tuples_per_batch).unwrap_or(0);
        offsets.push(batch * per_batch + off * slice);
    }
    let mut shape = is[..q - 1].to_vec();
    shape.extend_from_slice(&ds[b + k..]);
    fn pick<T: Clone>(x: &ArrayD<T>, offsets: &[usize], slice: usize, shape: &[usize]) -> OpResult<ArrayD<T>> {
        let flat = x.as_standard_layout();
        let flat = flat.as_slice().expect("standard layout");
        let mut out = Vec::with_capacity(offsets.len() * slice);
        for &o in offsets {
            out.extend_from_slice(&flat[o..o + slice]);
        }
        ArrayD::from_shape_vec(IxDyn(shape), out).map_err(|e| e.to_string())
    }
    let (offsets_ref, shape_ref) = (&offsets, &shape);
    Ok(per_domain!(data, x => pick(x, offsets_ref, slice, shape_ref)?))
}

pub(crate) fn concat(args: &[&Tensor], ax: i64) -> OpResult<Tensor> {
    let first = args[0];
    let a = axis(ax, first.shape().len())?;
    macro_rules! join {
        ($variant:ident) => {{
            let mut views = Vec::new();
            for t in args {
                match t.data() {
                    TensorData::$variant(x) => views.push(x.view()),
                    _ => return Err("`concat` operands have different dtypes".into()),
                }
            }
            TensorData::$variant(
                ndarray::concatenate(Axis(a), &views).map_err(|e| format!("shapes do not concatenate: {e}"))?,
            )
        }};
    }
    let data = match first.data() {
        TensorData::Float(_) => join!(Float),
        TensorData::Int(_) => join!(Int),
        TensorData::Bool(_) => join!(Bool),
    };
    Ok(Tensor::from_data(first.dtype(), data))
}

pub(crate) fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> OpResult<Tensor> {
    let mut out = x.clone();
    for i in 0..starts.len() {
        let a = axis(axes[i], x.shape().len())?;
        let step = steps[i];
        if step == 0 {
            return Err("slice step is 0".into());
        }
        let n = x.shape()[a] as i64;
        let (s, e) = slice_bounds(n, starts[i], ends[i], step);
        let mut picks = Vec::new();
        let mut j = s;
        while (step > 0 && j < e) || (step < 0 && j > e) {
            picks.push(j as usize);
            j = match j.checked_add(step) {
                Some(next) => next,
                None => break,
            };
        }
        let picks_ref = &picks;
        out = per_domain!(&out, v => v.select(Axis(a), picks_ref));
    }
    Ok(out)
}

pub(crate) fn split(x: &Tensor, ax: i64, sizes: &[u64]) -> OpResult<Vec<Tensor>> {
    let a = axis(ax, x.shape().len())?;
    let total: u64 = sizes.iter().sum();
    if total != x.shape()[a] as u64 {
        return Err(format!("sizes sum to {total} but dim {a} is {}", x.shape()[a]));
    }
    let mut start = 0i64;
    let mut out = Vec::new();
    for &s in sizes {
        let end = start + s as i64;
        out.push(slice(x, &[start], &[end], &[a as i64], &[1])?);
        start = end;
    }
    Ok(out)
}

/// Resolves `reshape`/`expand` target dims against bindings (and, for reshape, 0 and -1).
fn resolve_target(x: &Tensor, target: &[TargetDim], bindings: &Bindings, reshape: bool) -> OpResult<Vec<usize>> {
    let mut dims = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        dims.push(match t {
            TargetDim::Int(0) if reshape => {
                *x.shape().get(i).ok_or_else(|| format!("dim {i} copies a dim the input lacks"))?
            }
            TargetDim::Int(-1) if reshape => {
                if infer_at.replace(i).is_some() {
                    return Err("more than one -1".into());
                }
                1
            }
            TargetDim::Int(n) if *n >= 0 => *n as usize,
            TargetDim::Int(n) => return Err(format!("invalid target dim {n}")),
            TargetDim::Sym(s) => bindings.get(s).ok_or_else(|| format!("symbol `{s}` is not bound"))?,
        });
    }
    if let Some(at) = infer_at {
        let known: usize = dims.iter().product();
        if known == 0 || !x.numel().is_multiple_of(known) {
            return Err(format!("cannot reshape {:?} to {target:?}", x.shape()));
        }
        dims[at] = x.numel() / known;
    }
    Ok(dims)
}

fn target_from(args: &[&Tensor], shape: Option<&[TargetDim]>) -> OpResult<Vec<TargetDim>> {
    match shape {
        Some(s) => Ok(s.to_vec()),
        None => Ok(ints(args[1])?.iter().map(|&n| TargetDim::Int(n)).collect()),
    }
}

pub(crate) fn reshape(args: &[&Tensor], shape: Option<&[TargetDim]>, bindings: &Bindings) -> OpResult<Tensor> {
    let x = args[0];
    let dims = resolve_target(x, &target_from(args, shape)?, bindings, true)?;
    check_size(&dims)?;
    if dims.iter().product::<usize>() != x.numel() {
        return Err(format!("cannot reshape {:?} ({} elements) to {dims:?}", x.shape(), x.numel()));
    }
    let dims_ref = &dims;
    Ok(per_domain!(x, v => reshaped(v, dims_ref)?))
}

pub(crate) fn transpose(x: &Tensor, perm: &[usize]) -> OpResult<Tensor> {
    let mut sorted = perm.to_vec();
    sorted.sort_unstable();
    if sorted != (0..x.shape().len()).collect::<Vec<_>>() {
        return Err(format!("{perm:?} is not a permutation of the {} dims", x.shape().len()));
    }
    Ok(per_domain!(x, v => v.view().permuted_axes(IxDyn(perm)).as_standard_layout().into_owned()))
}

pub(crate) fn expand(args: &[&Tensor], shape: Option<&[TargetDim]>, bindings: &Bindings) -> OpResult<Tensor> {
    let x = args[0];
    let target = resolve_target(x, &target_from(args, shape)?, bindings, false)?;
    let out = broadcast_shape(x.shape(), &target)?;
    check_size(&out)?;
    let out_ref = &out;
    Ok(per_domain!(x, v => v.broadcast(IxDyn(out_ref)).ok_or("broadcast failed")?.to_owned()))
}

pub(crate) fn squeeze(x: &Tensor, axes: &[i64]) -> OpResult<Tensor> {
    let rank = x.shape().len();
    let listed: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<OpResult<_>>()?;
    let mut dims = Vec::new();
    for (i, &d) in x.shape().iter().enumerate() {
        if listed.contains(&i) && d != 1 {
            return Err(format!("axis {i} has size {d}, not 1"));
        }
        let drop = if listed.is_empty() { d == 1 } else { listed.contains(&i) };
        if !drop {
            dims.push(d);
        }
    }
    let dims_ref = &dims;
    Ok(per_domain!(x, v => reshaped(v, dims_ref)?))
}

pub(crate) fn unsqueeze(x: &Tensor, axes: &[i64]) -> OpResult<Tensor> {
    let rank = x.shape().len() + axes.len();
    let listed: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<OpResult<_>>()?;
    let mut rest = x.shape().iter();
    let dims: Vec<usize> =
        (0..rank).map(|i| if listed.contains(&i) { 1 } else { *rest.next().unwrap_or(&1) }).collect();
    let dims_ref = &dims;
    Ok(per_domain!(x, v => reshaped(v, dims_ref)?))
}

pub(crate) fn range(args: &[&Tensor]) -> OpResult<Tensor> {
    let dtype = args[0].dtype();
    match dtype.domain() {
        Domain::Float => {
            let v: Vec<f32> = args
                .iter()
                .map(|t| t.as_float().and_then(|a| a.iter().next().copied()))
                .collect::<Option<_>>()
                .ok_or("`range` needs scalars")?;
            let (start, limit, delta) = (v[0], v[1], v[2]);
            if delta == 0.0 {
                return Err("`range` delta is 0".into());
            }
            let n = ((limit - start) / delta).ceil().max(0.0);
            if n.is_nan() || n > MAX_ELEMENTS as f32 {
                return Err(format!("`range` would make {n} elements"));
            }
            let out: Vec<f32> = (0..n as usize).map(|i| start + i as f32 * delta).collect();
            Ok(float_result(dtype, ArrayD::from_shape_vec(IxDyn(&[out.len()]), out).map_err(|e| e.to_string())?))
        }
        Domain::Int => {
            let v: Vec<i64> = args
                .iter()
                .map(|t| t.as_int().and_then(|a| a.iter().next().copied()))
                .collect::<Option<_>>()
                .ok_or("`range` needs scalars")?;
            let (start, limit, delta) = (v[0] as i128, v[1] as i128, v[2] as i128);
            if delta == 0 {
                return Err("`range` delta is 0".into());
            }
            let n = ((limit - start) + delta - delta.signum()) / delta;
            let n = n.max(0);
            if n > MAX_ELEMENTS as i128 {
                return Err(format!("`range` would make {n} elements"));
            }
            let out: Vec<i64> = (0..n).map(|i| (start + i * delta) as i64).collect();
            Tensor::from_i64(dtype, &[out.len()], out).map_err(|e| e.to_string())
        }
        Domain::Bool => Err("`range` is not defined on bool".into()),
    }
}

pub(crate) fn constant_of_shape(shape: &Tensor, value: f64, dtype: DType) -> OpResult<Tensor> {
    let dims: Vec<usize> = ints(shape)?
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dim {d}")))
        .collect::<OpResult<_>>()?;
    check_size(&dims)?;
    let n: usize = dims.iter().product();
    match dtype.domain() {
        Domain::Float => Tensor::from_f32(dtype, &dims, vec![value as f32; n]),
        Domain::Int => Tensor::from_i64(dtype, &dims, vec![value as i64; n]),
        Domain::Bool => Tensor::from_bool(&dims, vec![value != 0.0; n]),
    }
    .map_err(|e| e.to_string())
}
