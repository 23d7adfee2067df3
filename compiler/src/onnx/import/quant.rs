//! Quantization ONNX ops: `QuantizeLinear`, `DequantizeLinear`, `DynamicQuantizeLinear`,
//! `MatMulInteger`, `QLinearMatMul`, and `com.microsoft` `MatMulNBits`.
//!
//! Rounding follows the ONNX reference implementation (`onnx/reference/ops/op_*.py`):
//! - QuantizeLinear divides `x / scale` in the promoted float type of the two (f32 unless both
//!   are f16 or both bf16; the `precision` attribute overrides it), rounds half to even, adds the
//!   zero point as an integer and saturates. An integer (int32) `x` is converted to f32 first
//!   (the reference divides in f64: the two agree unless `|x| >= 2^24` or the quotient lies
//!   within an f32 rounding of a half).
//! - QLinearMatMul computes `C = (a - a_zero) @ (b - b_zero)` exactly in i32, the factor
//!   `a_scale * b_scale / y_scale` in the scales' type, then `rint(C * factor + y_zero)` with
//!   the zero point added *before* rounding (as the reference does; onnxruntime rounds first and
//!   adds after, which differs on exact ties with an odd zero point), and saturates. The
//!   reference multiplies in f64; Tessera multiplies in f32, which is the same whenever
//!   `|C| < 2^24` and the f32 product `C * factor` is exact (always for f16 scales and
//!   `|C| < 2^13`); otherwise a result whose exact value lies within one f32 rounding of a half
//!   may differ by one.
//! - MatMulNBits keeps its weight packed: `B` (`[N, k_blocks, blob]`, i.e. transposed) is
//!   repacked at import into a `[K, N]` u4 (or u8) constant with a blocked `quant` type along
//!   axis 0 (scale and zero point `[k_blocks, N]`), and lowered to `qmatmul`.

use super::ctx::{Ctx, Lowered, Node, Val};
use super::table::LowerFn;
use crate::onnx::tensor_io::onnx_dtype;
use tessera_ir::types::normalize_axis;
use tessera_ir::{
    BinaryOp, Blob, ConstData, DType, Op, Quant, QuantGranularity, Shape, TargetDim, Tensor, TensorType, Value,
};

/// Default-domain ops.
pub fn lookup(op: &str) -> Option<LowerFn> {
    Some(match op {
        "QuantizeLinear" => quantize_linear,
        "DequantizeLinear" => dequantize_linear,
        "DynamicQuantizeLinear" => dynamic_quantize_linear,
        "MatMulInteger" => matmul_integer,
        "QLinearMatMul" => qlinear_matmul,
        _ => return None,
    })
}

/// `com.microsoft` ops.
pub fn lookup_microsoft(op: &str) -> Option<LowerFn> {
    Some(match op {
        "MatMulNBits" => matmul_nbits,
        _ => return None,
    })
}

/// The integer types QuantizeLinear can produce in Tessera.
fn quantized_dtype(d: DType) -> bool {
    matches!(d, DType::U8 | DType::I8 | DType::I16 | DType::U4 | DType::I4)
}

/// An optional dtype attribute (0 or absent: None).
fn dtype_attr(n: &Node, name: &str) -> Result<Option<DType>, String> {
    match n.int(name, 0) {
        0 => Ok(None),
        code => onnx_dtype(code as i32).map(Some).map_err(|u| format!("{name} = {} is not supported", u.name)),
    }
}

/// The IR `(axis, block)` of a quantization parameter: per tensor when the scale has one
/// element, blocked when `block_size > 0`, else per axis.
fn granularity(x: &TensorType, scale: &TensorType, axis: i64, block_size: i64) -> Result<(i64, u64), String> {
    if block_size < 0 {
        return Err(format!("block_size must not be negative, got {block_size}"));
    }
    let check_axis =
        || normalize_axis(axis, x.rank()).ok_or_else(|| format!("axis {axis} is out of range for rank {}", x.rank()));
    if block_size > 0 {
        check_axis()?;
        return Ok((axis, block_size as u64));
    }
    if scale.shape.static_numel() == Some(1) {
        return Ok((0, 0));
    }
    if scale.rank() != 1 {
        return Err(format!("a scale of shape {} needs a block_size (blocked quantization)", scale.shape));
    }
    check_axis()?;
    Ok((axis, 0))
}

fn cast(ctx: &mut Ctx, v: Value, to: DType) -> Result<Value, String> {
    if ctx.g.ty(v).dtype == to {
        Ok(v)
    } else {
        ctx.op(Op::Cast { to }, vec![v])
    }
}

/// A tensor of ones of `like`'s shape and `dtype` (computed from the shape at run time).
fn ones_like(ctx: &mut Ctx, like: Value, dtype: DType) -> Result<Value, String> {
    let shape = ctx.op(Op::ShapeOf, vec![like])?;
    ctx.op(Op::ConstantOfShape { value: 1.0, dtype }, vec![shape])
}

fn quantize_linear(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (xn, sn, zn) = (n.req(0)?, n.req(1)?, n.input(2));
    let (xt, st) = (ctx.ty(xn)?, ctx.ty(sn)?);
    let attr_dtype = dtype_attr(n, "output_dtype")?;
    let to = match zn {
        Some(z) => {
            let d = ctx.dtype(z)?;
            if attr_dtype.is_some_and(|a| a != d) {
                return Err(format!("output_dtype {} differs from the zero point's type {d}", attr_dtype.unwrap_or(d)));
            }
            d
        }
        None => attr_dtype.unwrap_or(DType::U8),
    };
    if !quantized_dtype(to) {
        return Err(format!("quantizing to {to} is not supported (u8, i8, i16, u4 and i4 are)"));
    }
    if !st.dtype.is_float() {
        return Err(format!("the scale must be float, got {}", st.dtype));
    }
    let (axis, block) = granularity(&xt, &st, n.int("axis", 1), n.int("block_size", 0))?;
    let mut x = ctx.value(xn)?;
    let mut scale = ctx.value(sn)?;
    let zero = zn.map(|z| ctx.value(z)).transpose()?;
    let x_float = match xt.dtype {
        d if d.is_float() => d,
        DType::I32 => {
            x = cast(ctx, x, DType::F32)?;
            DType::F32
        }
        d => return Err(format!("quantizing {d} is not supported (float or int32 inputs are)")),
    };
    // numpy divides in the promoted type: f16 / f16 stays f16 (bf16 likewise), anything mixed is f32.
    let div = match dtype_attr(n, "precision")? {
        Some(p) if p.is_float() => p,
        Some(p) => return Err(format!("precision {p} is not supported")),
        None if x_float == st.dtype => x_float,
        None => DType::F32,
    };
    if div != DType::F32 {
        // Divide in `div` (the IR rounds the quotient to it), then quantize the quotient by ones.
        x = cast(ctx, x, div)?;
        scale = cast(ctx, scale, div)?;
        let ones = ones_like(ctx, x, DType::I8)?;
        let full_scale = ctx.op(Op::Dequantize { axis, block }, vec![ones, scale])?;
        x = ctx.op(Op::Binary(BinaryOp::Div), vec![x, full_scale])?;
        scale = ones_like(ctx, scale, div)?;
    }
    let mut inputs = vec![x, scale];
    inputs.extend(zero);
    Ok(vec![Val::Ir(ctx.op(Op::Quantize { axis, block, to }, inputs)?)])
}

fn dequantize_linear(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (xn, sn, zn) = (n.req(0)?, n.req(1)?, n.input(2));
    let (xt, st) = (ctx.ty(xn)?, ctx.ty(sn)?);
    if !xt.dtype.is_int() || matches!(xt.dtype, DType::I64 | DType::Ternary | DType::Binary) {
        return Err(format!("dequantizing {} is not supported", xt.dtype));
    }
    if !st.dtype.is_float() {
        return Err(format!("the scale must be float, got {}", st.dtype));
    }
    let (axis, block) = granularity(&xt, &st, n.int("axis", 1), n.int("block_size", 0))?;
    let out = dtype_attr(n, "output_dtype")?.unwrap_or(st.dtype);
    if !out.is_float() {
        return Err(format!("output_dtype {out} is not supported"));
    }
    let x = ctx.value(xn)?;
    let mut scale = ctx.value(sn)?;
    if out != st.dtype {
        // Compute in f32 and round once to the requested type.
        scale = cast(ctx, scale, DType::F32)?;
    }
    let mut inputs = vec![x, scale];
    if let Some(z) = zn {
        inputs.push(ctx.value(z)?);
    }
    let y = ctx.op(Op::Dequantize { axis, block }, inputs)?;
    Ok(vec![Val::Ir(cast(ctx, y, out)?)])
}

fn dynamic_quantize_linear(ctx: &mut Ctx, n: &Node) -> Lowered {
    let x = ctx.value(n.req(0)?)?;
    let outs = ctx.ops(Op::DynamicQuantize, vec![x])?;
    Ok(outs.into_iter().map(Val::Ir).collect())
}

/// A MatMulInteger zero point as the IR takes it (a scalar or 1-D: per row of `a`, per column
/// of `b`), or None when it has another shape.
fn flat_zero_point(ctx: &mut Ctx, z: Value, for_a: bool) -> Result<Option<Value>, String> {
    let zt = ctx.g.ty(z).clone();
    if zt.rank() <= 1 {
        return Ok(Some(z));
    }
    let Some(dims) = zt.shape.as_static() else { return Ok(None) };
    let n = dims.iter().product::<usize>();
    // [.., M, 1] for a and [.., 1, N] for b, with every other dim 1.
    let r = dims.len();
    let (keep, unit) = if for_a { (r - 2, r - 1) } else { (r - 1, r - 2) };
    let fits = n == 1 || dims.iter().enumerate().all(|(i, &d)| i == keep || d == 1) && dims[unit] == 1;
    if !fits {
        return Ok(None);
    }
    let target = if n == 1 { vec![] } else { vec![TargetDim::Int(n as i64)] };
    Ok(Some(ctx.op(Op::Reshape { shape: Some(target) }, vec![z])?))
}

/// `(a - a_zero) @ (b - b_zero)` exactly, as i32.
fn integer_product(ctx: &mut Ctx, a: Value, b: Value, za: Option<Value>, zb: Option<Value>) -> Result<Value, String> {
    let za_flat = za.map(|z| flat_zero_point(ctx, z, true)).transpose()?;
    let zb_flat = zb.map(|z| flat_zero_point(ctx, z, false)).transpose()?;
    if za_flat.as_ref().is_some_and(Option::is_none) || zb_flat.as_ref().is_some_and(Option::is_none) {
        // N-D zero points: subtract with broadcasting in i32 and multiply (exact, wraps like int32).
        let side = |ctx: &mut Ctx, v: Value, z: Option<Value>| -> Result<Value, String> {
            let v32 = cast(ctx, v, DType::I32)?;
            match z {
                Some(z) => {
                    let z32 = cast(ctx, z, DType::I32)?;
                    ctx.op(Op::Binary(BinaryOp::Sub), vec![v32, z32])
                }
                None => Ok(v32),
            }
        };
        let a32 = side(ctx, a, za)?;
        let b32 = side(ctx, b, zb)?;
        return ctx.op(Op::MatMul, vec![a32, b32]);
    }
    let mut inputs = vec![a, b];
    match (za_flat.flatten(), zb_flat.flatten()) {
        (None, None) => {}
        (Some(za), None) => inputs.push(za),
        (za, Some(zb)) => {
            let za = match za {
                Some(z) => z,
                None => ctx.scalar(ctx.g.ty(a).dtype, 0.0)?,
            };
            inputs.extend([za, zb]);
        }
    }
    let (ta, tb) = (ctx.g.ty(inputs[0]).clone(), ctx.g.ty(inputs[1]).clone());
    let scalar_zeros = inputs[2..].iter().all(|&z| ctx.g.ty(z).shape.static_numel() == Some(1));
    let pair_saturate = ctx.options.onnxruntime_x86_matmul_integer
        && ta.dtype == tessera_ir::DType::U8
        && tb.dtype == tessera_ir::DType::I8
        && tb.rank() == 2
        && scalar_zeros;
    ctx.op(Op::MatMulInteger { pair_saturate }, inputs)
}

fn matmul_integer(ctx: &mut Ctx, n: &Node) -> Lowered {
    let (a, b) = (ctx.value(n.req(0)?)?, ctx.value(n.req(1)?)?);
    let za = n.input(2).map(|z| ctx.value(z)).transpose()?;
    let zb = n.input(3).map(|z| ctx.value(z)).transpose()?;
    Ok(vec![Val::Ir(integer_product(ctx, a, b, za, zb)?)])
}

fn qlinear_matmul(ctx: &mut Ctx, n: &Node) -> Lowered {
    let opt = |ctx: &mut Ctx, i: usize| n.input(i).map(|s| ctx.value(s)).transpose();
    let (a, a_scale, za) = (ctx.value(n.req(0)?)?, ctx.value(n.req(1)?)?, opt(ctx, 2)?);
    let (b, b_scale, zb) = (ctx.value(n.req(3)?)?, ctx.value(n.req(4)?)?, opt(ctx, 5)?);
    let (y_scale, zy) = (ctx.value(n.req(6)?)?, opt(ctx, 7)?);
    let to = match zy {
        Some(z) => ctx.g.ty(z).dtype,
        None => ctx.g.ty(a).dtype,
    };
    if !quantized_dtype(to) {
        return Err(format!("a {to} result is not supported"));
    }
    let c = integer_product(ctx, a, b, za, zb)?;
    // The factor a_scale * b_scale / y_scale, in the scales' type as the reference computes it.
    // A per-row a_scale ([M]) applies along the rows of the result.
    let mut a_scale = a_scale;
    let at = ctx.g.ty(a_scale).clone();
    if at.rank() == 1 && at.shape.static_numel() != Some(1) {
        a_scale = ctx.op(Op::Unsqueeze { axes: vec![1] }, vec![a_scale])?;
    }
    let st = ctx.g.ty(b_scale).dtype;
    let a_scale = cast(ctx, a_scale, st)?;
    let y_scale = cast(ctx, y_scale, st)?;
    let ab = ctx.op(Op::Binary(BinaryOp::Mul), vec![a_scale, b_scale])?;
    let factor = ctx.op(Op::Binary(BinaryOp::Div), vec![ab, y_scale])?;
    let factor = cast(ctx, factor, DType::F32)?;
    let cf = cast(ctx, c, DType::F32)?;
    let mut d = ctx.op(Op::Binary(BinaryOp::Mul), vec![cf, factor])?;
    if let Some(z) = zy {
        let zf = cast(ctx, z, DType::F32)?;
        d = ctx.op(Op::Binary(BinaryOp::Add), vec![d, zf])?;
    }
    // quantize by 1: round half to even and saturate into the result type.
    let one = ctx.scalar(DType::F32, 1.0)?;
    Ok(vec![Val::Ir(ctx.op(Op::Quantize { axis: 0, block: 0, to }, vec![d, one])?)])
}

/// A constant's type and packed bytes, when the value is an initializer or known at import.
fn const_bytes(ctx: &Ctx, name: &str) -> Option<(TensorType, Blob)> {
    match ctx.val(name).ok()? {
        Val::Init(init) => Some((init.0.clone(), init.1.clone())),
        Val::Known(t) => Some((TensorType::with_static(t.dtype(), t.shape()), Blob::from_vec(t.to_bytes()))),
        _ => None,
    }
}

/// A constant input decoded, for the small parameters of MatMulNBits.
fn const_input(ctx: &Ctx, n: &Node, i: usize, what: &str) -> Result<Tensor, String> {
    let name = n.req(i)?;
    let (ty, data) =
        const_bytes(ctx, name).ok_or_else(|| format!("{what} (input {i}, {name:?}) must be a constant initializer"))?;
    let dims = ty.shape.as_static().ok_or_else(|| format!("{what} must have a static shape"))?;
    Tensor::from_bytes(ty.dtype, &dims, &data).map_err(|e| format!("{what}: {e}"))
}

fn matmul_nbits(ctx: &mut Ctx, n: &Node) -> Lowered {
    let attr = |name: &str| -> Result<usize, String> {
        let v = n.int(name, -1);
        if v <= 0 {
            return Err(format!("attribute {name} must be given and positive, got {v}"));
        }
        Ok(v as usize)
    };
    let (k, nn, bs) = (attr("K")?, attr("N")?, attr("block_size")?);
    let bits = n.int("bits", 4);
    let dtype = match bits {
        4 => DType::U4,
        8 => DType::U8,
        b => return Err(format!("bits = {b} is not supported (4 and 8 are)")),
    };
    let bits = bits as usize;
    if n.int("weight_prepacked", 0) != 0 {
        return Err("prepacked weights (weight_prepacked != 0) are not supported".into());
    }
    if !(bs * bits).is_multiple_of(8) {
        return Err(format!("block_size {bs} does not fill whole bytes at {bits} bits"));
    }
    let k_blocks = k.div_ceil(bs);
    let blob = bs * bits / 8;
    let mask = ((1u32 << bits) - 1) as u8;

    // B: [N, k_blocks, blob] packed along K, repacked into W [K, N].
    let b_name = n.req(1)?;
    let (bt, b) =
        const_bytes(ctx, b_name).ok_or_else(|| format!("the weight B ({b_name:?}) must be a constant initializer"))?;
    if bt.dtype != DType::U8 || b.len() != nn * k_blocks * blob {
        return Err(format!(
            "the weight B must be uint8 [N={nn}, k_blocks={k_blocks}, blob={blob}], got {} {}",
            bt.dtype, bt.shape
        ));
    }
    let mut w = vec![0u8; dtype.storage_bytes(k * nn)];
    let b: &[u8] = &b;
    // Column by column (B is stored per column), in blocks of 64 columns so the written rows
    // of W stay in cache.
    for c0 in (0..nn).step_by(64) {
        for kk in 0..k {
            let (kb, bit) = (kk / bs, (kk % bs) * bits);
            for col in c0..(c0 + 64).min(nn) {
                let q = (b[col * k_blocks * blob + kb * blob + bit / 8] >> (bit % 8)) & mask;
                let e = kk * nn + col;
                match dtype {
                    DType::U4 => w[e / 2] |= q << (4 * (e % 2)),
                    _ => w[e] = q,
                }
            }
        }
    }

    // scales: [N, k_blocks] (or flat) -> [k_blocks, N].
    let scales = const_input(ctx, n, 2, "scales")?;
    let sv = scales.as_float().ok_or("scales must be float")?;
    if sv.len() != nn * k_blocks {
        return Err(format!("scales have {} elements, expected N * k_blocks = {}", sv.len(), nn * k_blocks));
    }
    let sv: Vec<f32> = sv.iter().copied().collect();
    let transpose = |v: &[f32]| (0..k_blocks * nn).map(|i| v[(i % nn) * k_blocks + i / nn]).collect::<Vec<f32>>();
    let scale_t = Tensor::from_f32(scales.dtype(), &[k_blocks, nn], transpose(&sv)).map_err(|e| e.to_string())?;

    // Zero points: packed uint8 [N, ceil(k_blocks * bits / 8)], float [N, k_blocks], or 2^(bits-1).
    let mut zeros = vec![1i64 << (bits - 1); k_blocks * nn];
    let mut offset = None;
    if n.input(3).is_some() {
        let zp = const_input(ctx, n, 3, "zero_points")?;
        if zp.dtype() == DType::U8 {
            let row = (k_blocks * bits).div_ceil(8);
            if zp.numel() != nn * row {
                return Err(format!("packed zero_points have {} elements, expected {}", zp.numel(), nn * row));
            }
            let zb: Vec<i64> = zp.as_int().ok_or("zero_points must be integers")?.iter().copied().collect();
            for (i, z) in zeros.iter_mut().enumerate() {
                let (kb, col) = (i / nn, i % nn);
                let bit = kb * bits;
                *z = (zb[col * row + bit / 8] >> (bit % 8)) & mask as i64;
            }
        } else if zp.dtype().is_float() {
            // (q - z) * s = q * s + (-z * s): a float zero point becomes an offset.
            let zv: Vec<f32> = zp.as_float().ok_or("zero_points must be float")?.iter().copied().collect();
            if zv.len() != nn * k_blocks {
                return Err(format!("float zero_points have {} elements, expected {}", zv.len(), nn * k_blocks));
            }
            let off: Vec<f32> =
                transpose(&zv).iter().zip(scale_t.as_float().expect("float").iter()).map(|(z, s)| -z * s).collect();
            let off_t = Tensor::from_f32(scales.dtype(), &[k_blocks, nn], off).map_err(|e| e.to_string())?;
            offset = Some(ctx.const_tensor(&off_t));
            zeros.fill(0);
        } else {
            return Err(format!("zero_points of type {} are not supported", zp.dtype()));
        }
    }
    if n.input(4).is_some() {
        let g = const_input(ctx, n, 4, "g_idx")?;
        let trivial =
            g.numel() == k && g.as_int().is_some_and(|a| a.iter().enumerate().all(|(i, &v)| v == (i / bs) as i64));
        if !trivial {
            return Err("a g_idx that reorders the blocks (act-order) is not supported".into());
        }
    }
    let zero_t = Tensor::from_i64(dtype, &[k_blocks, nn], zeros).map_err(|e| e.to_string())?;
    let scale = ctx.const_tensor(&scale_t);
    let zero = ctx.const_tensor(&zero_t);
    let quant = Quant {
        granularity: QuantGranularity::PerBlock { axis: 0, size: bs as u64 },
        scale,
        zero_point: Some(zero),
        offset,
    };
    let ty = TensorType { dtype, shape: Shape::from_static(&[k, nn]), quant: Some(Box::new(quant)) };
    let weight = ctx.g.add_const(ty, ConstData::from_vec(w));

    let a = ctx.value(n.req(0)?)?;
    let a_dtype = ctx.g.ty(a).dtype;
    let y = ctx.op(Op::QMatMul, vec![a, weight])?;
    let mut y = cast(ctx, y, a_dtype)?;
    if let Some(bias) = n.input(5) {
        let bias = ctx.value(bias)?;
        y = ctx.op(Op::Binary(BinaryOp::Add), vec![y, bias])?;
    }
    Ok(vec![Val::Ir(y)])
}

#[cfg(test)]
mod tests {
    use crate::onnx::proto::attribute_proto::AttributeType;
    use crate::onnx::proto::tensor_proto::DataType;
    use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
    use crate::onnx::proto::{
        type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
        TensorShapeProto, TypeProto, ValueInfoProto,
    };
    use prost::Message;
    use tessera_ir::{Blob, DType, Graph, Tensor};

    /// A deterministic byte stream (64-bit LCG) for test data.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        /// Uniform in [lo, hi).
        fn float(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * (self.next() as f32 / (1u64 << 31) as f32)
        }
    }

    fn int_attr(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            i: Some(v),
            r#type: Some(AttributeType::Int as i32),
            ..Default::default()
        }
    }

    fn init(name: &str, dt: DataType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            data_type: Some(dt as i32),
            dims: dims.to_vec(),
            raw_data: Some(raw.into()),
            ..Default::default()
        }
    }

    fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        init(name, DataType::Float, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    fn value_info(name: &str, dt: DataType, dims: &[i64]) -> ValueInfoProto {
        let dim = dims.iter().map(|&d| Dimension { value: Some(dimension::Value::DimValue(d)), ..Default::default() });
        let tt =
            type_proto::Tensor { elem_type: Some(dt as i32), shape: Some(TensorShapeProto { dim: dim.collect() }) };
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tt)), ..Default::default() }),
            ..Default::default()
        }
    }

    /// One-node model: `inputs` are graph inputs, `inits` initializers, output "y".
    fn import(node: NodeProto, inputs: Vec<ValueInfoProto>, inits: Vec<TensorProto>, opsets: &[(&str, i64)]) -> Graph {
        let graph = GraphProto {
            name: Some("t".into()),
            node: vec![node],
            input: inputs,
            initializer: inits,
            output: vec![ValueInfoProto { name: Some("y".into()), ..Default::default() }],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(10),
            opset_import: opsets
                .iter()
                .map(|&(d, v)| OperatorSetIdProto { domain: Some(d.into()), version: Some(v) })
                .collect(),
            graph: Some(graph),
            ..Default::default()
        };
        crate::onnx::import_model(Blob::from_vec(model.encode_to_vec()), "test.onnx", "t", None)
            .unwrap_or_else(|e| panic!("import failed: {e}"))
    }

    fn node(op: &str, domain: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            domain: Some(domain.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute: attrs,
            ..Default::default()
        }
    }

    /// MatMulNBits against a dequantize-then-matmul computed here from the same packed bytes.
    fn check_nbits(bits: usize, with_zero_points: bool, flat_scales: bool, with_bias: bool) {
        let (m, k, n, bs) = (3usize, 37usize, 5usize, 16usize);
        let k_blocks = k.div_ceil(bs);
        let blob = bs * bits / 8;
        let mut rng = Lcg(bits as u64 * 7 + with_zero_points as u64 * 3 + flat_scales as u64 + 11);
        let b: Vec<u8> = (0..n * k_blocks * blob).map(|_| rng.byte()).collect();
        let scales: Vec<f32> = (0..n * k_blocks).map(|_| rng.float(0.01, 0.2)).collect();
        let zp_row = (k_blocks * bits).div_ceil(8);
        let zps: Vec<u8> = (0..n * zp_row).map(|_| rng.byte()).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.float(-1.0, 1.0)).collect();
        let a: Vec<f32> = (0..m * k).map(|_| rng.float(-2.0, 2.0)).collect();

        // Independent reference: unpack B[n][kb][..] bit-field by bit-field.
        let field = |bytes: &[u8], base: usize, idx: usize| -> f32 {
            let bit = idx * bits;
            let v = (bytes[base + bit / 8] as u32) >> (bit % 8);
            (v & ((1 << bits) - 1)) as f32
        };
        let mut expected = vec![0f32; m * n];
        for row in 0..m {
            for col in 0..n {
                let mut acc = 0f32;
                for kk in 0..k {
                    let kb = kk / bs;
                    let q = field(&b, (col * k_blocks + kb) * blob, kk % bs);
                    let z = if with_zero_points { field(&zps, col * zp_row, kb) } else { (1 << (bits - 1)) as f32 };
                    let w = (q - z) * scales[col * k_blocks + kb];
                    acc += a[row * k + kk] * w;
                }
                expected[row * n + col] = acc + if with_bias { bias[col] } else { 0.0 };
            }
        }

        let mut inputs = vec!["a", "b", "scales"];
        let scale_dims: Vec<i64> =
            if flat_scales { vec![(n * k_blocks) as i64] } else { vec![n as i64, k_blocks as i64] };
        let mut inits = vec![
            init("b", DataType::Uint8, &[n as i64, k_blocks as i64, blob as i64], b.clone()),
            f32_init("scales", &scale_dims, &scales),
        ];
        if with_zero_points {
            inputs.push("zp");
            inits.push(init("zp", DataType::Uint8, &[n as i64, zp_row as i64], zps.clone()));
        }
        if with_bias {
            if !with_zero_points {
                inputs.push("");
            }
            inputs.extend(["", "bias"]);
            inits.push(f32_init("bias", &[n as i64], &bias));
        }
        let attrs = vec![
            int_attr("K", k as i64),
            int_attr("N", n as i64),
            int_attr("bits", bits as i64),
            int_attr("block_size", bs as i64),
            int_attr("accuracy_level", 0),
        ];
        let g = import(
            node("MatMulNBits", "com.microsoft", &inputs, attrs),
            vec![value_info("a", DataType::Float, &[m as i64, k as i64])],
            inits,
            &[("", 21), ("com.microsoft", 1)],
        );
        // The weight stays packed: one quantized [K, N] constant of the weight's bit width.
        let w = g.values().find(|(_, d)| d.ty.quant.is_some()).map(|(_, d)| d.ty.clone()).expect("a quantized weight");
        assert_eq!(w.dtype, if bits == 4 { DType::U4 } else { DType::U8 });
        assert_eq!(w.shape.as_static(), Some(vec![k, n]));
        assert!(g.nodes().any(|(_, nd)| matches!(nd.op, tessera_ir::Op::QMatMul)));

        let x = Tensor::from_f32(DType::F32, &[m, k], a).unwrap();
        let y = tessera_ir::run(&g, vec![x]).unwrap().remove(0);
        assert_eq!(y.shape(), &[m, n]);
        let got = y.as_float().unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "element {i}: got {g}, expected {e}");
        }
    }

    #[test]
    fn matmul_nbits_4bit_with_zero_points_and_bias() {
        check_nbits(4, true, false, true);
    }

    #[test]
    fn matmul_nbits_4bit_default_zero_point_flat_scales() {
        check_nbits(4, false, true, false);
        check_nbits(4, false, false, true);
    }

    #[test]
    fn matmul_nbits_8bit() {
        check_nbits(8, true, false, false);
        check_nbits(8, false, true, true);
    }

    /// QLinearMatMul adds the zero point before rounding, as the ONNX reference does:
    /// 1 * 1 * (0.5 * 1 / 1) + 1 = 1.5 rounds (half to even) to 2, where rounding first gives 1.
    #[test]
    fn qlinear_matmul_adds_zero_point_before_rounding() {
        let u8s = |name: &str, v: u8| init(name, DataType::Uint8, &[1], vec![v]);
        let inits = vec![
            init("a", DataType::Uint8, &[1, 1], vec![1]),
            f32_init("sa", &[1], &[0.5]),
            u8s("za", 0),
            init("b", DataType::Uint8, &[1, 1], vec![1]),
            f32_init("sb", &[1], &[1.0]),
            u8s("zb", 0),
            f32_init("sy", &[1], &[1.0]),
            u8s("zy", 1),
        ];
        let g = import(
            node("QLinearMatMul", "", &["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], vec![]),
            vec![],
            inits,
            &[("", 21)],
        );
        let y = tessera_ir::run(&g, vec![]).unwrap().remove(0);
        assert_eq!(y.dtype(), DType::U8);
        assert_eq!(y.as_int().unwrap().iter().copied().collect::<Vec<_>>(), vec![2]);
    }

    /// f16 x and f16 scale divide in f16 (numpy's promotion), per axis: 123.5625 / 0.203003 is
    /// 608.5 in f16, which rounds to 608, but 608.67 in f32, which would round to 609.
    #[test]
    #[allow(clippy::excessive_precision)] // 0.2030029296875 is an exact f16 value, written in full
    fn quantize_f16_divides_in_f16() {
        let f16s = |v: &[f32]| Tensor::from_f32(DType::F16, &[v.len()], v.to_vec()).unwrap().to_bytes();
        let g = import(
            node("QuantizeLinear", "", &["x", "s", "z"], vec![int_attr("axis", 1)]),
            vec![value_info("x", DataType::Float16, &[1, 2])],
            vec![
                init("s", DataType::Float16, &[2], f16s(&[0.2030029296875, 2.0])),
                init("z", DataType::Int16, &[2], vec![0, 0, 3, 0]),
            ],
            &[("", 21)],
        );
        let x = Tensor::from_f32(DType::F16, &[1, 2], vec![123.5625, 7.0]).unwrap();
        let y = tessera_ir::run(&g, vec![x]).unwrap().remove(0);
        assert_eq!(y.dtype(), DType::I16);
        // 7 / 2 = 3.5 rounds to 4, plus the zero point 3.
        assert_eq!(y.as_int().unwrap().iter().copied().collect::<Vec<_>>(), vec![608, 7]);
    }

    #[test]
    fn float8_outputs_are_unsupported() {
        let graph = GraphProto {
            name: Some("t".into()),
            node: vec![node(
                "QuantizeLinear",
                "",
                &["x", "s"],
                vec![int_attr("output_dtype", DataType::Float8e4m3fn as i64)],
            )],
            input: vec![value_info("x", DataType::Float, &[2])],
            initializer: vec![f32_init("s", &[], &[1.0])],
            output: vec![ValueInfoProto { name: Some("y".into()), ..Default::default() }],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(10),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(21) }],
            graph: Some(graph),
            ..Default::default()
        };
        let err = crate::onnx::import_model(Blob::from_vec(model.encode_to_vec()), "test.onnx", "t", None).unwrap_err();
        assert!(err.is_unsupported() && err.to_string().contains("not supported"), "{err}");
    }
}
