//! Reductions and normalizations: reduce_*, argmax, softmax, layer_norm, rms_norm.

use super::{axis, float_result, floats, int_result, OpResult};
use crate::dtype::DType;
use crate::op::ReduceOp;
use crate::tensor::{Tensor, TensorData};
use ndarray::{ArrayD, Axis, IxDyn};

/// Moves the `reduced` axes last and returns the data row-major as `[kept, reduced]` rows,
/// with the kept dims.
fn rows<T: Clone>(a: &ArrayD<T>, reduced: &[usize]) -> (Vec<usize>, usize, Vec<T>) {
    let kept: Vec<usize> = (0..a.ndim()).filter(|i| !reduced.contains(i)).collect();
    let mut reduced_sorted = reduced.to_vec();
    reduced_sorted.sort_unstable();
    let perm: Vec<usize> = kept.iter().chain(&reduced_sorted).copied().collect();
    let p = a.view().permuted_axes(IxDyn(&perm));
    let inner: usize = reduced_sorted.iter().map(|&i| a.shape()[i]).product();
    (kept.iter().map(|&i| a.shape()[i]).collect(), inner, p.iter().cloned().collect())
}

fn reduced_axes(axes: &[i64], rank: usize) -> OpResult<Vec<usize>> {
    if axes.is_empty() {
        return Ok((0..rank).collect());
    }
    axes.iter().map(|&a| axis(a, rank)).collect()
}

fn result_shape(shape: &[usize], reduced: &[usize], keepdims: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (reduced.contains(&i), keepdims) {
            (true, true) => Some(1),
            (true, false) => None,
            (false, _) => Some(d),
        })
        .collect()
}

pub(crate) fn reduce(op: ReduceOp, x: &Tensor, axes: &[i64], keepdims: bool) -> OpResult<Tensor> {
    let rank = x.shape().len();
    let red = reduced_axes(axes, rank)?;
    let out_shape = result_shape(x.shape(), &red, keepdims);
    match x.data() {
        TensorData::Float(a) => {
            let (_, inner, data) = rows(a, &red);
            let out: Vec<f32> = if inner == 0 {
                let n = data.len().max(out_shape.iter().product());
                let empty = match op {
                    ReduceOp::Sum => 0.0,
                    ReduceOp::Prod => 1.0,
                    ReduceOp::Max => f32::NEG_INFINITY,
                    ReduceOp::Min => f32::INFINITY,
                    ReduceOp::Mean => f32::NAN,
                };
                vec![empty; n]
            } else {
                data.chunks(inner)
                    .map(|row| match op {
                        ReduceOp::Sum => row.iter().fold(0.0, |s, &v| s + v),
                        ReduceOp::Mean => row.iter().fold(0.0, |s, &v| s + v) / inner as f32,
                        ReduceOp::Prod => row.iter().fold(1.0, |s, &v| s * v),
                        ReduceOp::Max => row.iter().copied().fold(f32::NEG_INFINITY, |m, v| {
                            if v.is_nan() || m.is_nan() {
                                f32::NAN
                            } else {
                                m.max(v)
                            }
                        }),
                        ReduceOp::Min => row.iter().copied().fold(f32::INFINITY, |m, v| {
                            if v.is_nan() || m.is_nan() {
                                f32::NAN
                            } else {
                                m.min(v)
                            }
                        }),
                    })
                    .collect()
            };
            Ok(float_result(x.dtype(), ArrayD::from_shape_vec(IxDyn(&out_shape), out).map_err(|e| e.to_string())?))
        }
        TensorData::Int(a) => {
            if op == ReduceOp::Mean {
                return Err("`reduce_mean` needs floats".into());
            }
            let (lo, hi) = x.dtype().int_range().expect("integer");
            let (_, inner, data) = rows(a, &red);
            let out: Vec<i64> = if inner == 0 {
                let empty = match op {
                    ReduceOp::Sum => 0,
                    ReduceOp::Prod => 1,
                    ReduceOp::Max => lo,
                    _ => hi,
                };
                vec![empty; out_shape.iter().product()]
            } else {
                data.chunks(inner)
                    .map(|row| match op {
                        ReduceOp::Sum => row.iter().fold(0i64, |s, &v| s.wrapping_add(v)),
                        ReduceOp::Prod => row.iter().fold(1i64, |s, &v| s.wrapping_mul(v)),
                        ReduceOp::Max => row.iter().copied().max().unwrap_or(lo),
                        _ => row.iter().copied().min().unwrap_or(hi),
                    })
                    .collect()
            };
            Ok(int_result(x.dtype(), ArrayD::from_shape_vec(IxDyn(&out_shape), out).map_err(|e| e.to_string())?))
        }
        TensorData::Bool(_) => Err("reductions are not defined on bool".into()),
    }
}

pub(crate) fn argmax(x: &Tensor, ax: i64, keepdims: bool, last: bool) -> OpResult<Tensor> {
    let a = axis(ax, x.shape().len())?;
    if x.shape()[a] == 0 {
        return Err("`argmax` over an empty axis".into());
    }
    let values: ArrayD<f64> = match x.data() {
        TensorData::Float(v) => v.mapv(|e| e as f64),
        TensorData::Int(v) => v.mapv(|e| e as f64),
        TensorData::Bool(v) => v.mapv(|e| e as u8 as f64),
    };
    let (_, inner, data) = rows(&values, &[a]);
    let out: Vec<i64> = data
        .chunks(inner)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                let better = if last { v >= row[best] } else { v > row[best] };
                if better || (v.is_nan() && !row[best].is_nan()) {
                    best = i;
                }
            }
            best as i64
        })
        .collect();
    let shape = result_shape(x.shape(), &[a], keepdims);
    Ok(int_result(DType::I64, ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?))
}

pub(crate) fn softmax(x: &Tensor, ax: i64, log: bool) -> OpResult<Tensor> {
    let a = axis(ax, x.shape().len())?;
    let mut y = floats(x)?.clone();
    for mut lane in y.lanes_mut(Axis(a)) {
        let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in lane.iter() {
            sum += libm::expf(v - max);
        }
        if log {
            let ls = libm::logf(sum);
            lane.mapv_inplace(|v| v - max - ls);
        } else {
            lane.mapv_inplace(|v| libm::expf(v - max) / sum);
        }
    }
    Ok(float_result(x.dtype(), y))
}

/// Flattens `x` into `[outer, inner]` rows over the dims from `axis`, and broadcasts a
/// parameter to the `inner` dims.
fn norm_rows(x: &Tensor, ax: i64, params: &[&Tensor]) -> OpResult<(usize, Vec<f32>, Vec<Vec<f32>>)> {
    let a = axis(ax, x.shape().len())?;
    let inner_shape = &x.shape()[a..];
    let inner: usize = inner_shape.iter().product();
    let data: Vec<f32> = floats(x)?.iter().copied().collect();
    let mut ps = Vec::new();
    for p in params {
        let pv = floats(p)?;
        let b = pv
            .broadcast(IxDyn(inner_shape))
            .ok_or_else(|| format!("parameter {:?} does not broadcast to {inner_shape:?}", pv.shape()))?;
        ps.push(b.iter().copied().collect());
    }
    Ok((inner, data, ps))
}

pub(crate) fn layer_norm(args: &[&Tensor], ax: i64, epsilon: f32) -> OpResult<Tensor> {
    let x = args[0];
    let (inner, data, ps) = norm_rows(x, ax, &args[1..])?;
    let mut out = Vec::with_capacity(data.len());
    if inner > 0 {
        for row in data.chunks(inner) {
            let mean = row.iter().fold(0f32, |s, &v| s + v) / inner as f32;
            let var = row.iter().fold(0f32, |s, &v| s + (v - mean) * (v - mean)) / inner as f32;
            let inv = 1.0 / libm::sqrtf(var + epsilon);
            for (i, &v) in row.iter().enumerate() {
                let mut y = (v - mean) * inv * ps[0][i];
                if let Some(bias) = ps.get(1) {
                    y += bias[i];
                }
                out.push(y);
            }
        }
    }
    Ok(float_result(x.dtype(), ArrayD::from_shape_vec(IxDyn(x.shape()), out).map_err(|e| e.to_string())?))
}

pub(crate) fn rms_norm(args: &[&Tensor], ax: i64, epsilon: f32) -> OpResult<Tensor> {
    let x = args[0];
    let (inner, data, ps) = norm_rows(x, ax, &args[1..])?;
    let mut out = Vec::with_capacity(data.len());
    if inner > 0 {
        for row in data.chunks(inner) {
            let ms = row.iter().fold(0f32, |s, &v| s + v * v) / inner as f32;
            let inv = 1.0 / libm::sqrtf(ms + epsilon);
            out.extend(row.iter().enumerate().map(|(i, &v)| v * inv * ps[0][i]));
        }
    }
    Ok(float_result(x.dtype(), ArrayD::from_shape_vec(IxDyn(x.shape()), out).map_err(|e| e.to_string())?))
}
