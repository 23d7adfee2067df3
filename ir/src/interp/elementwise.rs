//! Elementwise ops: unary functions, broadcast binary ops, `where` and `cast`.

use super::{bools, broadcast_shape, float_result, int_result, OpResult};
use crate::dtype::{DType, Domain};
use crate::op::{BinaryOp, UnaryOp};
use crate::tensor::{Tensor, TensorData};
use ndarray::{ArrayD, IxDyn, Zip};

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// One float function, exactly as `op.rs` defines it.
pub(crate) fn unary_f32(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => libm::expf(x),
        UnaryOp::Log => libm::logf(x),
        UnaryOp::Sqrt => libm::sqrtf(x),
        UnaryOp::Rsqrt => 1.0 / libm::sqrtf(x),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Tanh => libm::tanhf(x),
        UnaryOp::Erf => libm::erff(x),
        UnaryOp::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
        UnaryOp::Relu => {
            if x > 0.0 || x.is_nan() {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        UnaryOp::GeluTanh => 0.5 * x * (1.0 + libm::tanhf(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))),
        UnaryOp::Silu => x / (1.0 + libm::expf(-x)),
        UnaryOp::Sin => libm::sinf(x),
        UnaryOp::Cos => libm::cosf(x),
        UnaryOp::Floor => libm::floorf(x),
        UnaryOp::Ceil => libm::ceilf(x),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Not | UnaryOp::IsNan | UnaryOp::IsInf => unreachable!("not a float-valued function"),
    }
}

pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> OpResult<Tensor> {
    let dtype = x.dtype();
    match (op, x.data()) {
        (UnaryOp::Not, TensorData::Bool(a)) => Ok(Tensor::from_data(DType::Bool, TensorData::Bool(a.mapv(|b| !b)))),
        (UnaryOp::IsNan, TensorData::Float(a)) => {
            Ok(Tensor::from_data(DType::Bool, TensorData::Bool(a.mapv(f32::is_nan))))
        }
        (UnaryOp::IsInf, TensorData::Float(a)) => {
            Ok(Tensor::from_data(DType::Bool, TensorData::Bool(a.mapv(f32::is_infinite))))
        }
        (_, TensorData::Float(a)) if !op.returns_bool() => Ok(float_result(dtype, a.mapv(|v| unary_f32(op, v)))),
        (UnaryOp::Neg, TensorData::Int(a)) => Ok(int_result(dtype, a.mapv(|v| v.wrapping_neg()))),
        (UnaryOp::Abs, TensorData::Int(a)) => Ok(int_result(dtype, a.mapv(|v| v.wrapping_abs()))),
        (UnaryOp::Relu, TensorData::Int(a)) => Ok(int_result(dtype, a.mapv(|v| v.max(0)))),
        (UnaryOp::Sign, TensorData::Int(a)) => Ok(int_result(dtype, a.mapv(i64::signum))),
        _ => Err(format!("`{}` is not defined on {dtype}", op.name())),
    }
}

/// Broadcasts two arrays to their common shape and combines them elementwise.
fn zip2<A: Clone, B: Clone, C>(a: &ArrayD<A>, b: &ArrayD<B>, f: impl Fn(A, B) -> C) -> OpResult<ArrayD<C>> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    Ok(Zip::from(&av).and(&bv).map_collect(|x, y| f(x.clone(), y.clone())))
}

fn float_binary(op: BinaryOp, x: f32, y: f32) -> f32 {
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => libm::powf(x, y),
        BinaryOp::Max => {
            if x.is_nan() || y.is_nan() {
                f32::NAN
            } else {
                x.max(y)
            }
        }
        BinaryOp::Min => {
            if x.is_nan() || y.is_nan() {
                f32::NAN
            } else {
                x.min(y)
            }
        }
        BinaryOp::Fmod => libm::fmodf(x, y),
        BinaryOp::Mod => {
            let r = libm::fmodf(x, y);
            if r != 0.0 && (r < 0.0) != (y < 0.0) {
                r + y
            } else {
                r
            }
        }
        _ => unreachable!("not arithmetic"),
    }
}

fn int_binary(op: BinaryOp, x: i64, y: i64) -> OpResult<i64> {
    Ok(match op {
        BinaryOp::Add => x.wrapping_add(y),
        BinaryOp::Sub => x.wrapping_sub(y),
        BinaryOp::Mul => x.wrapping_mul(y),
        BinaryOp::Div => {
            if y == 0 {
                return Err("integer division by zero".into());
            }
            x.wrapping_div(y)
        }
        BinaryOp::Pow => {
            if y < 0 {
                return Err(format!("integer power with negative exponent {y}"));
            }
            x.wrapping_pow(y.min(u32::MAX as i64) as u32)
        }
        BinaryOp::Max => x.max(y),
        BinaryOp::Min => x.min(y),
        BinaryOp::Mod | BinaryOp::Fmod => {
            if y == 0 {
                return Err("integer remainder by zero".into());
            }
            if op == BinaryOp::Mod {
                x.rem_euclid(y) + if y < 0 && x.rem_euclid(y) != 0 { y } else { 0 }
            } else {
                x.wrapping_rem(y)
            }
        }
        _ => unreachable!("not arithmetic"),
    })
}

fn compare<T: PartialOrd>(op: BinaryOp, x: T, y: T) -> bool {
    match op {
        BinaryOp::Equal => x == y,
        BinaryOp::Less => x < y,
        BinaryOp::LessEqual => x <= y,
        BinaryOp::Greater => x > y,
        BinaryOp::GreaterEqual => x >= y,
        _ => unreachable!("not a comparison"),
    }
}

pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
    let dtype = a.dtype();
    if b.dtype() != dtype {
        return Err(format!("operands have different dtypes: {dtype} and {}", b.dtype()));
    }
    let bool_result = |arr: ArrayD<bool>| Ok(Tensor::from_data(DType::Bool, TensorData::Bool(arr)));
    match (a.data(), b.data()) {
        (TensorData::Float(x), TensorData::Float(y)) if op.is_comparison() => {
            bool_result(zip2(x, y, |p, q| compare(op, p, q))?)
        }
        (TensorData::Int(x), TensorData::Int(y)) if op.is_comparison() => {
            bool_result(zip2(x, y, |p, q| compare(op, p, q))?)
        }
        (TensorData::Bool(x), TensorData::Bool(y)) if op == BinaryOp::Equal => bool_result(zip2(x, y, |p, q| p == q)?),
        (TensorData::Bool(x), TensorData::Bool(y)) if op.is_logical() => bool_result(zip2(x, y, |p, q| match op {
            BinaryOp::And => p && q,
            BinaryOp::Or => p || q,
            _ => p ^ q,
        })?),
        (TensorData::Float(x), TensorData::Float(y)) if !op.is_logical() => {
            Ok(float_result(dtype, zip2(x, y, |p, q| float_binary(op, p, q))?))
        }
        (TensorData::Int(x), TensorData::Int(y)) if !op.is_logical() => {
            let r = zip2(x, y, |p, q| int_binary(op, p, q))?;
            let mut out = Vec::with_capacity(r.len());
            for v in r.iter() {
                out.push(v.clone()?);
            }
            let arr = ArrayD::from_shape_vec(r.raw_dim(), out).map_err(|e| e.to_string())?;
            Ok(int_result(dtype, arr))
        }
        _ => Err(format!("`{}` is not defined on {dtype}", op.name())),
    }
}

pub(crate) fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
    let c = bools(cond)?;
    let shape = broadcast_shape(&broadcast_shape(c.shape(), a.shape())?, b.shape())?;
    let cv = c.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    fn pick<T: Clone>(
        cv: &ndarray::ArrayViewD<bool>,
        x: &ArrayD<T>,
        y: &ArrayD<T>,
        shape: &[usize],
    ) -> OpResult<ArrayD<T>> {
        let xv = x.broadcast(IxDyn(shape)).ok_or("broadcast failed")?;
        let yv = y.broadcast(IxDyn(shape)).ok_or("broadcast failed")?;
        Ok(Zip::from(cv).and(&xv).and(&yv).map_collect(|&c, p, q| if c { p.clone() } else { q.clone() }))
    }
    let data = match (a.data(), b.data()) {
        (TensorData::Float(x), TensorData::Float(y)) => TensorData::Float(pick(&cv, x, y, &shape)?),
        (TensorData::Int(x), TensorData::Int(y)) => TensorData::Int(pick(&cv, x, y, &shape)?),
        (TensorData::Bool(x), TensorData::Bool(y)) => TensorData::Bool(pick(&cv, x, y, &shape)?),
        _ => return Err(format!("`where` branches have different dtypes: {} and {}", a.dtype(), b.dtype())),
    };
    Ok(Tensor::from_data(a.dtype(), data))
}

/// Float to integer: truncate toward zero (NaN gives 0 and values beyond i64 saturate, as
/// Rust's `as` does), then wrap into the dtype like an integer cast.
fn float_to_int(to: DType, x: f32) -> i64 {
    match to {
        DType::Binary => {
            if x < 0.0 {
                -1
            } else {
                1
            }
        }
        _ => to.wrap_int(x.trunc() as i64),
    }
}

pub(crate) fn cast(x: &Tensor, to: DType) -> OpResult<Tensor> {
    Ok(match (x.data(), to.domain()) {
        (TensorData::Float(a), Domain::Float) => float_result(to, a.clone()),
        (TensorData::Float(a), Domain::Int) => Tensor::from_data(to, TensorData::Int(a.mapv(|v| float_to_int(to, v)))),
        (TensorData::Float(a), Domain::Bool) => Tensor::from_data(to, TensorData::Bool(a.mapv(|v| v != 0.0))),
        (TensorData::Int(a), Domain::Float) => float_result(to, a.mapv(|v| v as f32)),
        (TensorData::Int(a), Domain::Int) => int_result(to, a.clone()),
        (TensorData::Int(a), Domain::Bool) => Tensor::from_data(to, TensorData::Bool(a.mapv(|v| v != 0))),
        (TensorData::Bool(a), Domain::Float) => float_result(to, a.mapv(|v| v as u8 as f32)),
        (TensorData::Bool(a), Domain::Int) => int_result(to, a.mapv(|v| v as i64)),
        (TensorData::Bool(a), Domain::Bool) => Tensor::from_data(to, TensorData::Bool(a.clone())),
    })
}
