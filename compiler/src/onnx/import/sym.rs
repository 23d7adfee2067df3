//! Symbolic integer tensors: the small integer tensors of ONNX shape computations
//! (`Shape -> Gather -> Concat -> Reshape`), evaluated at import with elements that are either
//! known integers or symbolic dims (`sequence_length`). They let one imported graph serve every
//! sequence length: a shape that ends in a `Reshape` becomes its symbolic target, with no
//! run-time shape arithmetic left in the graph.

use std::sync::Arc;
use tessera_ir::{DType, TargetDim};

/// Largest tensor tracked symbolically.
pub const MAX_SYM_ELEMENTS: usize = 64;

/// One element: a known integer or the size of a symbolic dim (which is never negative).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymInt {
    Int(i64),
    Dim(Arc<str>),
}

impl SymInt {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            SymInt::Int(n) => Some(*n),
            SymInt::Dim(_) => None,
        }
    }

    pub fn to_target(&self) -> TargetDim {
        match self {
            SymInt::Int(n) => TargetDim::Int(*n),
            SymInt::Dim(s) => TargetDim::Sym(s.clone()),
        }
    }
}

/// A small integer (or bool) tensor whose elements may be symbolic.
#[derive(Clone, Debug, PartialEq)]
pub struct SymTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub elems: Vec<SymInt>,
}

impl SymTensor {
    pub fn new(dtype: DType, shape: Vec<usize>, elems: Vec<SymInt>) -> Option<SymTensor> {
        (shape.iter().product::<usize>() == elems.len() && elems.len() <= MAX_SYM_ELEMENTS).then_some(SymTensor {
            dtype,
            shape,
            elems,
        })
    }

    pub fn ints(&self) -> Option<Vec<i64>> {
        self.elems.iter().map(SymInt::as_int).collect()
    }

    pub fn is_concrete(&self) -> bool {
        self.elems.iter().all(|e| e.as_int().is_some())
    }

    pub fn targets(&self) -> Vec<TargetDim> {
        self.elems.iter().map(SymInt::to_target).collect()
    }
}

/// Numpy broadcasting of several small tensors: the result shape and, for each tensor, the
/// flat index of its element at every result position.
fn broadcast_all(tensors: &[&SymTensor]) -> Option<(Vec<usize>, Vec<Vec<usize>>)> {
    let rank = tensors.iter().map(|t| t.shape.len()).max().unwrap_or(0);
    let padded: Vec<Vec<usize>> = tensors
        .iter()
        .map(|t| {
            let mut v = vec![1; rank - t.shape.len()];
            v.extend_from_slice(&t.shape);
            v
        })
        .collect();
    let mut shape = vec![1; rank];
    for p in &padded {
        for (d, &n) in shape.iter_mut().zip(p) {
            match (*d, n) {
                (x, y) if x == y => {}
                (1, y) => *d = y,
                (_, 1) => {}
                _ => return None,
            }
        }
    }
    let n: usize = shape.iter().product();
    let maps = padded
        .iter()
        .map(|s| {
            (0..n)
                .map(|mut flat| {
                    let (mut idx, mut stride) = (0, 1);
                    for d in (0..rank).rev() {
                        let coord = flat % shape[d];
                        flat /= shape[d];
                        if s[d] != 1 {
                            idx += coord * stride;
                        }
                        stride *= s[d];
                    }
                    idx
                })
                .collect()
        })
        .collect();
    Some((shape, maps))
}

/// Elementwise binary ops on symbolic integers, with numpy broadcasting; None when an element
/// cannot be known at import (the caller then emits real ops).
pub fn binary(
    a: &SymTensor,
    b: &SymTensor,
    out_dtype: DType,
    f: impl Fn(&SymInt, &SymInt) -> Option<SymInt>,
) -> Option<SymTensor> {
    let (shape, maps) = broadcast_all(&[a, b])?;
    let elems =
        (0..maps[0].len()).map(|i| f(&a.elems[maps[0][i]], &b.elems[maps[1][i]])).collect::<Option<Vec<_>>>()?;
    SymTensor::new(out_dtype, shape, elems)
}

/// `Where` with a known condition.
pub fn select(c: &SymTensor, a: &SymTensor, b: &SymTensor) -> Option<SymTensor> {
    let (shape, maps) = broadcast_all(&[c, a, b])?;
    let elems = (0..maps[0].len())
        .map(|i| {
            Some(if c.elems[maps[0][i]].as_int()? != 0 {
                a.elems[maps[1][i]].clone()
            } else {
                b.elems[maps[2][i]].clone()
            })
        })
        .collect::<Option<Vec<_>>>()?;
    SymTensor::new(a.dtype, shape, elems)
}

/// Arithmetic that stays known: integer math, and the identities `d * 1`, `d + 0`, `d - 0`, `d / 1`.
pub fn arith(op: &str, x: &SymInt, y: &SymInt) -> Option<SymInt> {
    use SymInt::*;
    match (x, y) {
        (Int(a), Int(b)) => Some(Int(match op {
            "Add" => a.checked_add(*b)?,
            "Sub" => a.checked_sub(*b)?,
            "Mul" => a.checked_mul(*b)?,
            "Div" if *b != 0 => a.checked_div(*b)?,
            "Max" => *a.max(b),
            "Min" => *a.min(b),
            _ => return None,
        })),
        (Dim(d), Int(1)) if matches!(op, "Mul" | "Div") => Some(Dim(d.clone())),
        (Int(1), Dim(d)) if op == "Mul" => Some(Dim(d.clone())),
        (Dim(d), Int(0)) if matches!(op, "Add" | "Sub") => Some(Dim(d.clone())),
        (Int(0), Dim(d)) if op == "Add" => Some(Dim(d.clone())),
        (Dim(d), Dim(e)) if d == e && matches!(op, "Max" | "Min") => Some(Dim(d.clone())),
        _ => None,
    }
}

/// Comparisons that stay known: symbolic dims are never negative, and equal to themselves.
pub fn compare(op: &str, x: &SymInt, y: &SymInt) -> Option<SymInt> {
    use SymInt::*;
    let b = |v: bool| Some(Int(v as i64));
    match (x, y) {
        (Int(a), Int(c)) => b(match op {
            "Equal" => a == c,
            "Less" => a < c,
            "LessOrEqual" => a <= c,
            "Greater" => a > c,
            "GreaterOrEqual" => a >= c,
            _ => return None,
        }),
        (Dim(d), Dim(e)) if d == e => b(matches!(op, "Equal" | "LessOrEqual" | "GreaterOrEqual")),
        (Dim(_), Int(c)) if *c < 0 => b(matches!(op, "Greater" | "GreaterOrEqual")),
        (Int(c), Dim(_)) if *c < 0 => b(matches!(op, "Less" | "LessOrEqual")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(elems: Vec<SymInt>) -> SymTensor {
        let n = elems.len();
        SymTensor::new(DType::I64, vec![n], elems).unwrap()
    }

    #[test]
    fn dims_survive_identities_and_compare_against_negatives() {
        let seq = SymInt::Dim("seq".into());
        let a = st(vec![seq.clone(), SymInt::Int(4)]);
        let ones = st(vec![SymInt::Int(1)]);
        let m = binary(&a, &ones, DType::I64, |x, y| arith("Mul", x, y)).unwrap();
        assert_eq!(m.elems, vec![seq.clone(), SymInt::Int(4)]);
        let neg = st(vec![SymInt::Int(-1), SymInt::Int(-1)]);
        let e = binary(&a, &neg, DType::Bool, |x, y| compare("Equal", x, y)).unwrap();
        assert_eq!(e.ints(), Some(vec![0, 0]));
        assert!(binary(&a, &st(vec![SymInt::Int(2)]), DType::I64, |x, y| arith("Mul", x, y)).is_none());
    }
}
