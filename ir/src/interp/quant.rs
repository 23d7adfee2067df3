//! Quantization: quantize, dequantize (explicit parameters or the operand type's `quant`) and
//! dynamic_quantize and fake_quant.

use super::{axis, float_result, floats, ints, OpResult};
use crate::dtype::DType;
use crate::op::FakeQuantFormat;
use crate::tensor::{Tensor, TensorData};
use crate::types::{Quant, QuantGranularity};
use ndarray::{ArrayD, Axis, IxDyn};

/// Expands a quantization parameter to the full shape of `x`.
fn expand<T: Clone>(p: &ArrayD<T>, x_shape: &[usize], ax: i64, block: u64) -> OpResult<ArrayD<T>> {
    if block == 0 && p.len() == 1 {
        let v = p.iter().next().cloned().ok_or("empty parameter")?;
        return Ok(ArrayD::from_elem(IxDyn(x_shape), v));
    }
    let a = axis(ax, x_shape.len())?;
    let n = x_shape[a];
    if block == 0 {
        if p.ndim() != 1 || p.len() != n {
            return Err(format!("per-axis parameter {:?} does not match axis {a} of {x_shape:?}", p.shape()));
        }
        let mut shape = vec![1; x_shape.len()];
        shape[a] = n;
        let v = p.view().into_shape_with_order(IxDyn(&shape)).map_err(|e| e.to_string())?;
        return Ok(v.broadcast(IxDyn(x_shape)).ok_or("broadcast failed")?.to_owned());
    }
    let blocks = n.div_ceil(block as usize);
    let mut want = x_shape.to_vec();
    want[a] = blocks;
    if p.shape() != want.as_slice() {
        return Err(format!("blocked parameter has shape {:?}, expected {want:?}", p.shape()));
    }
    let picks: Vec<usize> = (0..n).map(|j| j / block as usize).collect();
    Ok(p.select(Axis(a), &picks))
}

pub(crate) fn quantize(args: &[&Tensor], ax: i64, block: u64, to: DType) -> OpResult<Tensor> {
    let x = floats(args[0])?;
    let scale = expand(floats(args[1])?, x.shape(), ax, block)?;
    let zero = match args.get(2) {
        Some(z) => expand(ints(z)?, x.shape(), ax, block)?,
        None => ArrayD::zeros(x.raw_dim()),
    };
    let mut out = ArrayD::zeros(x.raw_dim());
    ndarray::Zip::from(&mut out).and(x).and(&scale).and(&zero).for_each(|o, &v, &s, &z| {
        let q = (v / s).round_ties_even();
        // Saturate in float first so huge and infinite values do not wrap; NaN becomes 0.
        let q = if q.is_nan() { 0.0 } else { q.clamp(-1e15, 1e15) };
        *o = to.saturate_int(q as i64 + z);
    });
    Ok(Tensor::from_data(to, TensorData::Int(out)))
}

pub(crate) fn dequantize(args: &[&Tensor], ax: i64, block: u64) -> OpResult<Tensor> {
    let x = ints(args[0])?;
    let scale_t = args[1];
    let scale = expand(floats(scale_t)?, x.shape(), ax, block)?;
    let zero = match args.get(2) {
        Some(z) => Some(expand(ints(z)?, x.shape(), ax, block)?),
        None => None,
    };
    let zero = zero.unwrap_or_else(|| ArrayD::zeros(x.raw_dim()));
    let mut out = ArrayD::zeros(x.raw_dim());
    ndarray::Zip::from(&mut out).and(x).and(&scale).and(&zero).for_each(|o, &q, &s, &zp| *o = (q - zp) as f32 * s);
    Ok(float_result(scale_t.dtype(), out))
}

/// A quantized type's parameters, decoded.
pub(crate) struct TypeQuant<'a> {
    pub quant: &'a Quant,
    pub scale: &'a Tensor,
    pub zero: Option<&'a Tensor>,
    pub offset: Option<&'a Tensor>,
}

/// `real = (q - zero) * scale + offset`, from the operand type's `quant`.
pub(crate) fn dequantize_typed(x: &Tensor, p: &TypeQuant) -> OpResult<Tensor> {
    let (ax, block) = match p.quant.granularity {
        QuantGranularity::PerTensor => (0, 0),
        QuantGranularity::PerAxis { axis } => (axis, 0),
        QuantGranularity::PerBlock { axis, size } => (axis, size),
    };
    let mut args = vec![x, p.scale];
    args.extend(p.zero);
    let y = dequantize(&args, ax, block)?;
    let Some(offset) = p.offset else { return Ok(y) };
    let off = expand(floats(offset)?, x.shape(), ax, block)?;
    let mut yv = floats(&y)?.clone();
    yv.zip_mut_with(&off, |v, &o| *v += o);
    Ok(float_result(y.dtype(), yv))
}

/// ONNX DynamicQuantizeLinear.
pub(crate) fn dynamic_quantize(x: &Tensor) -> OpResult<Vec<Tensor>> {
    let a = floats(x)?;
    let lo = a.iter().copied().fold(0f32, f32::min);
    let hi = a.iter().copied().fold(0f32, f32::max);
    let mut scale = (hi - lo) / 255.0;
    if scale == 0.0 || !scale.is_finite() {
        scale = 1.0;
    }
    let zero = DType::U8.saturate_int((-lo / scale).round_ties_even() as i64);
    let scale_t = Tensor::from_f32(DType::F32, &[], vec![scale]).map_err(|e| e.to_string())?;
    let zero_t = Tensor::from_i64(DType::U8, &[], vec![zero]).map_err(|e| e.to_string())?;
    let y = quantize(&[x, &scale_t, &zero_t], 0, 0, DType::U8)?;
    Ok(vec![y, scale_t, zero_t])
}

/// `fake_quant`: each block of the last axis rounded to ggml's 8-bit activation values.
pub(crate) fn fake_quant(x: &Tensor, format: FakeQuantFormat) -> OpResult<Tensor> {
    let a = floats(x)?;
    let b = format.block();
    let mut out: Vec<f32> = a.iter().copied().collect();
    if !out.len().is_multiple_of(b) {
        return Err(format!("`fake_quant`: {} elements are not whole blocks of {b}", out.len()));
    }
    for block in out.chunks_mut(b) {
        let amax = block.iter().fold(0f32, |m, &v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) });
        let (mul, d) = format.block_params(amax);
        for v in block.iter_mut() {
            *v = (*v * mul).round_ties_even() * d;
        }
    }
    let shape: Vec<usize> = a.shape().to_vec();
    Tensor::from_f32(DType::F32, &shape, out).map_err(|e| e.to_string())
}
