//! Shapes: static dims, named symbolic dims (`batch`, `seq`) and unknown dims (`?`).

use std::fmt;
use std::sync::Arc;

/// One dimension of a tensor type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size known at compile time.
    Static(u64),
    /// A named size bound when the graph runs; every occurrence of a name has the same size.
    Sym(Arc<str>),
    /// A size the verifier could not infer (printed `?`); known only when the graph runs.
    Unknown,
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(Arc::from(name))
    }

    pub fn as_static(&self) -> Option<u64> {
        match self {
            Dim::Static(n) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Static(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A list of dims; rank 0 is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn from_static(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Static(d as u64)).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The dims as sizes when all are static.
    pub fn as_static(&self) -> Option<Vec<usize>> {
        self.0.iter().map(|d| d.as_static().map(|n| n as usize)).collect()
    }

    /// The element count when all dims are static.
    pub fn static_numel(&self) -> Option<usize> {
        self.as_static().map(|d| d.iter().product())
    }

    /// Whether a concrete shape fits this one, binding symbols consistently in `bindings`.
    /// Returns a description of the first mismatch.
    pub fn bind(&self, actual: &[usize], bindings: &mut Bindings) -> Result<(), String> {
        if actual.len() != self.rank() {
            return Err(format!("rank {} where {} was declared ({self})", actual.len(), self.rank()));
        }
        for (axis, (dim, &size)) in self.0.iter().zip(actual).enumerate() {
            match dim {
                Dim::Static(n) if *n as usize != size => {
                    return Err(format!("dim {axis} is {size} where {n} was declared ({self})"));
                }
                Dim::Sym(name) => match bindings.get(name) {
                    Some(bound) if bound != size => {
                        return Err(format!("dim {axis} is {size} but `{name}` is already bound to {bound} ({self})"));
                    }
                    Some(_) => {}
                    None => bindings.set(name, size),
                },
                _ => {}
            }
        }
        Ok(())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Sizes bound to symbolic dims for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings(Vec<(Arc<str>, usize)>);

impl Bindings {
    pub fn get(&self, name: &str) -> Option<usize> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| *v)
    }

    pub fn set(&mut self, name: &str, size: usize) {
        match self.0.iter_mut().find(|(n, _)| &**n == name) {
            Some(slot) => slot.1 = size,
            None => self.0.push((Arc::from(name), size)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.0.iter().map(|(n, v)| (&**n, *v))
    }

    /// The concrete size of a dim, if it is static or bound.
    pub fn resolve(&self, dim: &Dim) -> Option<usize> {
        match dim {
            Dim::Static(n) => Some(*n as usize),
            Dim::Sym(s) => self.get(s),
            Dim::Unknown => None,
        }
    }
}
