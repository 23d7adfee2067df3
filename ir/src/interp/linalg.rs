//! Matrix products: matmul, gemm, integer matmul and attention.

use super::{broadcast_shape, float_result, floats, int_result, ints, OpResult};
use crate::dtype::DType;
use crate::tensor::{Tensor, TensorData};
use ndarray::{ArrayD, IxDyn};

/// Batched `[.., m, k] x [.., k, n]` on row-major data with broadcast batch dims.
/// `acc` folds one product into the accumulator; products run in increasing `k`.
fn batched<T: Copy, A: Copy>(
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    zero: A,
    acc: impl Fn(A, T, T) -> A,
) -> OpResult<(Vec<usize>, Vec<A>, bool, bool)> {
    let (a_vec, b_vec) = (a.ndim() == 1, b.ndim() == 1);
    let a2 = if a_vec {
        a.view().into_shape_with_order(IxDyn(&[1, a.len()])).map_err(|e| e.to_string())?.to_owned()
    } else {
        a.to_owned()
    };
    let b2 = if b_vec {
        b.view().into_shape_with_order(IxDyn(&[b.len(), 1])).map_err(|e| e.to_string())?.to_owned()
    } else {
        b.to_owned()
    };
    if a2.ndim() < 2 || b2.ndim() < 2 {
        return Err("`matmul` operands must not be scalars".into());
    }
    let (ar, br) = (a2.ndim(), b2.ndim());
    let (m, k) = (a2.shape()[ar - 2], a2.shape()[ar - 1]);
    let (k2, n) = (b2.shape()[br - 2], b2.shape()[br - 1]);
    if k != k2 {
        return Err(format!("inner dims differ: {:?} and {:?}", a.shape(), b.shape()));
    }
    let batch = broadcast_shape(&a2.shape()[..ar - 2], &b2.shape()[..br - 2])?;
    let mut a_full = batch.clone();
    a_full.extend([m, k]);
    let mut b_full = batch.clone();
    b_full.extend([k, n]);
    let av: Vec<T> = a2.broadcast(IxDyn(&a_full)).ok_or("broadcast failed")?.iter().copied().collect();
    let bv: Vec<T> = b2.broadcast(IxDyn(&b_full)).ok_or("broadcast failed")?.iter().copied().collect();
    let n_batch: usize = batch.iter().product();
    let mut out = vec![zero; n_batch * m * n];
    for bi in 0..n_batch {
        let (ao, bo, oo) = (bi * m * k, bi * k * n, bi * m * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = zero;
                for p in 0..k {
                    s = acc(s, av[ao + i * k + p], bv[bo + p * n + j]);
                }
                out[oo + i * n + j] = s;
            }
        }
    }
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    Ok((shape, out, a_vec, b_vec))
}

/// Numpy matmul; floats accumulate in f32, integers exactly and wrap into `dtype`.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, dtype: DType) -> OpResult<Tensor> {
    match (a.data(), b.data()) {
        (TensorData::Float(x), TensorData::Float(y)) => {
            let (shape, out, ..) = batched(x, y, 0f32, |s, p, q| s + p * q)?;
            Ok(float_result(dtype, ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?))
        }
        (TensorData::Int(x), TensorData::Int(y)) => {
            let (shape, out, ..) = batched(x, y, 0i64, |s, p, q| s.wrapping_add(p.wrapping_mul(q)))?;
            Ok(int_result(dtype, ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?))
        }
        _ => Err(format!("`matmul` is not defined on {} x {}", a.dtype(), b.dtype())),
    }
}

fn transpose_2d(t: &Tensor) -> OpResult<Tensor> {
    super::layout::transpose(t, &[1, 0])
}

pub(crate) fn gemm(args: &[&Tensor], alpha: f32, beta: f32, trans_a: bool, trans_b: bool) -> OpResult<Tensor> {
    let a = if trans_a { transpose_2d(args[0])? } else { args[0].clone() };
    let b = if trans_b { transpose_2d(args[1])? } else { args[1].clone() };
    let dtype = args[0].dtype();
    let ab = matmul(&a, &b, DType::F32)?;
    let mut y = floats(&ab)?.mapv(|v| alpha * v);
    if let Some(c) = args.get(2) {
        let c = floats(c)?;
        let cv = c
            .broadcast(y.raw_dim())
            .ok_or_else(|| format!("bias {:?} does not broadcast to {:?}", c.shape(), y.shape()))?;
        y.zip_mut_with(&cv, |o, &c| *o += beta * c);
    }
    Ok(float_result(dtype, y))
}

/// ONNX MatMulInteger: `(a - a_zero) @ (b - b_zero)` exactly, as i32.
pub(crate) fn matmul_integer(args: &[&Tensor]) -> OpResult<Tensor> {
    let a = ints(args[0])?;
    let b = ints(args[1])?;
    let mut a = a.clone();
    let mut b = b.clone();
    if let Some(za) = args.get(2) {
        let za = ints(za)?;
        if za.len() == 1 {
            let z = za.iter().next().copied().unwrap_or(0);
            a.mapv_inplace(|v| v - z);
        } else {
            // One zero point per row of a: shape [m] applies along dim -2.
            let m = a.shape()[a.ndim().saturating_sub(2)];
            if za.len() != m || a.ndim() < 2 {
                return Err(format!("a's zero point has {} entries for {m} rows", za.len()));
            }
            let z = za.view().into_shape_with_order(IxDyn(&[m, 1])).map_err(|e| e.to_string())?;
            let zb = z.broadcast(a.raw_dim()).ok_or("broadcast failed")?.to_owned();
            a = a - zb;
        }
    }
    if let Some(zb) = args.get(3) {
        let zb = ints(zb)?;
        if zb.len() == 1 {
            let z = zb.iter().next().copied().unwrap_or(0);
            b.mapv_inplace(|v| v - z);
        } else {
            let n = b.shape()[b.ndim() - 1];
            if zb.len() != n {
                return Err(format!("b's zero point has {} entries for {n} columns", zb.len()));
            }
            let zv = zb.broadcast(b.raw_dim()).ok_or("broadcast failed")?.to_owned();
            b = b - zv;
        }
    }
    let (shape, out, ..) = batched(&a, &b, 0i64, |s, p, q| s.wrapping_add(p.wrapping_mul(q)))?;
    Ok(int_result(DType::I32, ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?))
}

/// onnxruntime's x86 u8 x s8 MatMulInteger (see `Op::MatMulInteger`'s `pair_saturate`).
pub(crate) fn matmul_integer_pair_saturate(args: &[&Tensor]) -> OpResult<Tensor> {
    let a = ints(args[0])?;
    let b = ints(args[1])?;
    let scalar = |i: usize| -> OpResult<i64> {
        Ok(match args.get(i) {
            Some(t) => ints(t)?.iter().next().copied().ok_or("empty zero point")?,
            None => 0,
        })
    };
    let (za, zb) = (scalar(2)?, scalar(3)?);
    if b.ndim() != 2 || a.ndim() == 0 {
        return Err("pair_saturate needs a 2-D b".into());
    }
    let (k, n) = (b.shape()[0], b.shape()[1]);
    if a.shape()[a.ndim() - 1] != k {
        return Err(format!("inner dims differ: {:?} and {:?}", a.shape(), b.shape()));
    }
    let av: Vec<i64> = a.iter().copied().collect();
    let bv: Vec<i64> = b.iter().copied().collect();
    let m = av.len() / k.max(1);
    let colsum: Vec<i64> = (0..n).map(|j| (0..k).map(|p| bv[p * n + j]).sum()).collect();
    let sat16 = |v: i64| v.clamp(i16::MIN as i64, i16::MAX as i64);
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        let row = &av[i * k..(i + 1) * k];
        let rowsum: i64 = row.iter().sum();
        for j in 0..n {
            let mut s = 0i64;
            let mut p = 0;
            while p < k {
                let first = row[p] * bv[p * n + j];
                let second = if p + 1 < k { row[p + 1] * bv[(p + 1) * n + j] } else { 0 };
                s += sat16(first + second);
                p += 2;
            }
            out.push(s - za * colsum[j] - zb * rowsum + k as i64 * za * zb);
        }
    }
    let mut shape = a.shape()[..a.ndim() - 1].to_vec();
    shape.push(n);
    Ok(int_result(DType::I32, ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| e.to_string())?))
}

/// `softmax(q @ k^T * scale + mask) @ v`, causal if asked; rows that see no key are zero.
pub(crate) fn attention(args: &[&Tensor], scale: f32, causal: bool) -> OpResult<Tensor> {
    let (q, k, v) = (args[0], args[1], args[2]);
    let kr = k.shape().len();
    let mut perm: Vec<usize> = (0..kr).collect();
    perm.swap(kr - 1, kr - 2);
    let kt = super::layout::transpose(k, &perm)?;
    let scores = matmul(q, &kt, DType::F32)?;
    let mut s = floats(&scores)?.mapv(|x| x * scale);
    let rank = s.ndim();
    let (sq, sk) = (s.shape()[rank - 2], s.shape()[rank - 1]);
    if let Some(mask) = args.get(3) {
        let target = s.raw_dim();
        match mask.data() {
            TensorData::Bool(m) => {
                let mv = m.broadcast(target).ok_or("the mask does not broadcast to the scores")?;
                s.zip_mut_with(&mv, |x, &keep| {
                    if !keep {
                        *x = f32::NEG_INFINITY
                    }
                });
            }
            TensorData::Float(m) => {
                let mv = m.broadcast(target).ok_or("the mask does not broadcast to the scores")?;
                s.zip_mut_with(&mv, |x, &add| *x += add);
            }
            TensorData::Int(_) => return Err("the mask must be bool or float".into()),
        }
    }
    if causal {
        for (idx, x) in s.indexed_iter_mut() {
            let (i, j) = (idx[rank - 2], idx[rank - 1]);
            if j + sq > i + sk {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    for mut row in s.lanes_mut(ndarray::Axis(rank - 1)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        let mut sum = 0f32;
        row.mapv_inplace(|x| {
            let e = libm::expf(x - max);
            sum += e;
            e
        });
        row.mapv_inplace(|e| e / sum);
    }
    let p = Tensor::from_data(DType::F32, TensorData::Float(s));
    let out = matmul(&p, v, DType::F32)?;
    Ok(float_result(q.dtype(), floats(&out)?.clone()))
}
