//! Comparing tensors the way the ONNX backend tests do: `|actual - expected| <= atol + rtol * |expected|`
//! for floats (NaN matches NaN), exact equality for integers and bools.

use crate::tensor::Tensor;
use std::fmt;

/// The result of comparing two tensors of the same dtype and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub elements: usize,
    pub mismatches: usize,
    pub max_abs_error: f64,
    /// The first mismatch: element index, actual, expected.
    pub first_mismatch: Option<(usize, f64, f64)>,
    /// Cosine similarity of the two tensors as vectors (1 when both are zero).
    pub cosine: f64,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} elements differ, max abs error {:.3e}, cosine {:.7}",
            self.mismatches, self.elements, self.max_abs_error, self.cosine
        )?;
        if let Some((i, a, e)) = self.first_mismatch {
            write!(f, "; first at element {i}: got {a}, expected {e}")?;
        }
        Ok(())
    }
}

/// Compares `actual` against `expected`; Err when dtypes or shapes differ.
pub fn compare(actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) -> Result<Comparison, String> {
    if actual.dtype() != expected.dtype() {
        return Err(format!("dtype is {} but {} was expected", actual.dtype(), expected.dtype()));
    }
    if actual.shape() != expected.shape() {
        return Err(format!("shape is {:?} but {:?} was expected", actual.shape(), expected.shape()));
    }
    let exact = !actual.dtype().is_float();
    let (a, e) = (actual.to_f64_vec(), expected.to_f64_vec());
    let mut c = Comparison { elements: a.len(), mismatches: 0, max_abs_error: 0.0, first_mismatch: None, cosine: 1.0 };
    let (mut dot, mut na, mut ne) = (0.0, 0.0, 0.0);
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let same = if exact {
            x == y
        } else if x.is_nan() || y.is_nan() {
            x.is_nan() && y.is_nan()
        } else if x.is_infinite() || y.is_infinite() {
            x == y
        } else {
            (x - y).abs() <= atol + rtol * y.abs()
        };
        if x.is_finite() && y.is_finite() {
            c.max_abs_error = c.max_abs_error.max((x - y).abs());
            dot += x * y;
            na += x * x;
            ne += y * y;
        }
        if !same {
            c.mismatches += 1;
            c.first_mismatch.get_or_insert((i, x, y));
        }
    }
    if na > 0.0 || ne > 0.0 {
        c.cosine = dot / (na.sqrt() * ne.sqrt()).max(f64::MIN_POSITIVE);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn tolerances_follow_numpy_allclose() {
        let e = Tensor::from_f32(DType::F32, &[3], vec![1.0, f32::NAN, 100.0]).unwrap();
        let a = Tensor::from_f32(DType::F32, &[3], vec![1.0005, f32::NAN, 100.05]).unwrap();
        let c = compare(&a, &e, 1e-3, 1e-7).unwrap();
        assert!(c.passed(), "{c}");
        let a = Tensor::from_f32(DType::F32, &[3], vec![1.01, f32::NAN, 100.0]).unwrap();
        let c = compare(&a, &e, 1e-3, 1e-7).unwrap();
        assert_eq!(c.mismatches, 1);
        assert_eq!(c.first_mismatch.map(|m| m.0), Some(0));
    }

    #[test]
    fn integers_compare_exactly_and_shapes_must_agree() {
        let e = Tensor::from_i64(DType::I8, &[2], vec![1, 2]).unwrap();
        let a = Tensor::from_i64(DType::I8, &[2], vec![1, 3]).unwrap();
        assert_eq!(compare(&a, &e, 1.0, 1.0).unwrap().mismatches, 1);
        let b = Tensor::from_i64(DType::I8, &[1, 2], vec![1, 2]).unwrap();
        assert!(compare(&b, &e, 0.0, 0.0).is_err());
    }
}
