//! Tensor types: dtype, shape and, for quantized tensors, how stored integers map to reals.

use crate::dtype::DType;
use crate::entity::Value;
use crate::shape::Shape;
use std::fmt;

/// Which elements share a scale (and zero point, and offset).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum QuantGranularity {
    /// One scale for the whole tensor; the scale is a scalar (or a 1-element tensor).
    PerTensor,
    /// One scale per index along `axis`; the scale is 1-D with that dim's size.
    PerAxis { axis: i64 },
    /// One scale per run of `size` consecutive elements along `axis` (ONNX blocked
    /// DequantizeLinear, MatMulNBits, GGUF blocks); the scale has the tensor's rank with
    /// dim `axis` equal to `ceil(n / size)`.
    PerBlock { axis: i64, size: u64 },
}

/// Quantization of a stored integer tensor: `real = (q - zero_point) * scale + offset`.
///
/// `scale`, `zero_point` and `offset` name constant values of the same graph; their shapes
/// follow the granularity. `offset` carries the float minimum of GGUF K-quants
/// (`d*sc*q - dmin*m`); ONNX models never set it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quant {
    pub granularity: QuantGranularity,
    pub scale: Value,
    pub zero_point: Option<Value>,
    pub offset: Option<Value>,
}

/// The type of a tensor value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
    pub quant: Option<Box<Quant>>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> TensorType {
        TensorType { dtype, shape, quant: None }
    }

    pub fn with_static(dtype: DType, dims: &[usize]) -> TensorType {
        TensorType::new(dtype, Shape::from_static(dims))
    }

    pub fn scalar(dtype: DType) -> TensorType {
        TensorType::new(dtype, Shape::default())
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// The type without its quantization annotation.
    pub fn plain(&self) -> TensorType {
        TensorType::new(self.dtype, self.shape.clone())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

/// Normalizes a possibly negative axis against a rank.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}
