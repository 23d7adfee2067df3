//! The lowering context: what each ONNX value name stands for while nodes are lowered, and
//! helpers that lowering functions share (operands, attributes, constants).

use super::sym::{SymInt, SymTensor, MAX_SYM_ELEMENTS};
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::onnx::tensor_io::tensor_from_proto;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use tessera_ir::{Blob, ConstData, DType, Dim, Graph, Op, Shape, TargetDim, Tensor, TensorType, Value};

/// What an ONNX value name stands for.
#[derive(Clone, Debug)]
pub enum Val {
    /// A value of the IR graph.
    Ir(Value),
    /// An initializer not yet added to the graph (added on first use, so initializers that only
    /// feed shape computations never become constants).
    Init(Rc<(TensorType, Blob)>),
    /// A small constant known at import (Constant nodes, folded shape arithmetic).
    Known(Rc<Tensor>),
    /// A symbolic integer tensor (see `sym.rs`).
    Sym(SymTensor),
}

/// An ONNX node being lowered, with attribute access.
pub struct Node<'a> {
    pub proto: &'a NodeProto,
    /// The opset version of the node's domain.
    pub opset: i64,
}

/// Result of a lowering function: one `Val` per node output (trailing optional outputs may be
/// left off), or a message that the importer attaches to the node.
pub type Lowered = Result<Vec<Val>, String>;

impl Node<'_> {
    pub fn op_type(&self) -> &str {
        self.proto.op_type.as_deref().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.proto.name.as_deref().unwrap_or("")
    }

    /// Input `i`, or None when absent or given as "" (an omitted optional input).
    pub fn input(&self, i: usize) -> Option<&str> {
        self.proto.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// Input `i`, which the op requires.
    pub fn req(&self, i: usize) -> Result<&str, String> {
        self.input(i).ok_or_else(|| format!("input {i} is required"))
    }

    pub fn n_inputs(&self) -> usize {
        self.proto.input.len()
    }

    /// Whether output `i` is requested (present and named).
    pub fn wants_output(&self, i: usize) -> bool {
        self.proto.output.get(i).is_some_and(|s| !s.is_empty())
    }

    fn attr(&self, name: &str) -> Option<&crate::onnx::proto::AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name.as_deref() == Some(name))
    }

    pub fn has_attr(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(|a| a.i).unwrap_or(default)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(|a| a.f).unwrap_or(default)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.attr(name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorProto> {
        self.attr(name).and_then(|a| a.t.as_ref())
    }
}

/// The state of one import.
pub struct Ctx {
    pub g: Graph,
    vals: HashMap<String, Val>,
    realized: HashMap<String, Value>,
    /// Where each symbol can be read at run time: a value and the axis whose size it is.
    sym_sources: HashMap<Arc<str>, (Value, usize)>,
    pub options: super::ImportOptions,
}

impl Ctx {
    pub fn new(name: &str) -> Ctx {
        Ctx {
            g: Graph::new(name),
            vals: HashMap::new(),
            realized: HashMap::new(),
            sym_sources: HashMap::new(),
            options: super::ImportOptions::default(),
        }
    }

    pub fn define(&mut self, name: &str, val: Val) {
        if let Val::Ir(v) = &val {
            self.note_sym_sources(*v);
        }
        self.realized.remove(name);
        self.vals.insert(name.to_string(), val);
    }

    /// Remembers which value carries each symbolic dim (graph inputs first).
    pub fn note_sym_sources(&mut self, v: Value) {
        for (axis, d) in self.g.ty(v).shape.0.clone().into_iter().enumerate() {
            if let Dim::Sym(s) = d {
                self.sym_sources.entry(s).or_insert((v, axis));
            }
        }
    }

    pub fn is_defined(&self, name: &str) -> bool {
        self.vals.contains_key(name)
    }

    pub fn val(&self, name: &str) -> Result<&Val, String> {
        self.vals.get(name).ok_or_else(|| format!("value {name:?} is not defined"))
    }

    /// The type of a named value.
    pub fn ty(&self, name: &str) -> Result<TensorType, String> {
        Ok(match self.val(name)? {
            Val::Ir(v) => self.g.ty(*v).clone(),
            Val::Init(init) => init.0.clone(),
            Val::Known(t) => TensorType::with_static(t.dtype(), t.shape()),
            Val::Sym(s) => TensorType::with_static(s.dtype, &s.shape),
        })
    }

    pub fn dtype(&self, name: &str) -> Result<DType, String> {
        Ok(self.ty(name)?.dtype)
    }

    pub fn rank(&self, name: &str) -> Result<usize, String> {
        Ok(self.ty(name)?.rank())
    }

    /// The value as an IR value, adding constants or shape ops on first use.
    pub fn value(&mut self, name: &str) -> Result<Value, String> {
        if let Some(&v) = self.realized.get(name) {
            return Ok(v);
        }
        let v = match self.val(name)?.clone() {
            Val::Ir(v) => return Ok(v),
            Val::Init(init) => self.g.add_const(init.0.clone(), ConstData::Bytes(init.1.clone())),
            Val::Known(t) => self.const_tensor(&t),
            Val::Sym(s) => self.materialize(&s)?,
        };
        self.realized.insert(name.to_string(), v);
        Ok(v)
    }

    /// A known constant's value (small initializers, Constant nodes, concrete symbolic tensors).
    pub fn known(&self, name: &str) -> Option<Tensor> {
        self.known_up_to(name, 1 << 20)
    }

    /// [`Ctx::known`] for values of at most `max` elements; a larger initializer is not decoded.
    pub fn known_up_to(&self, name: &str, max: usize) -> Option<Tensor> {
        match self.vals.get(name)? {
            Val::Known(t) => Some((**t).clone()).filter(|t| t.numel() <= max),
            Val::Init(init) => {
                let dims = init.0.shape.as_static()?;
                if dims.iter().product::<usize>() > max {
                    return None;
                }
                Tensor::from_bytes(init.0.dtype, &dims, &init.1).ok()
            }
            Val::Sym(s) => {
                let ints = s.ints()?;
                if s.dtype == DType::Bool {
                    Tensor::from_bool(&s.shape, ints.iter().map(|&v| v != 0).collect()).ok()
                } else {
                    Tensor::from_i64(s.dtype, &s.shape, ints.iter().map(|&v| s.dtype.wrap_int(v)).collect()).ok()
                }
            }
            Val::Ir(_) => None,
        }
    }

    /// A known integer tensor's values.
    pub fn known_ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.known(name)?;
        match t.data() {
            tessera_ir::TensorData::Int(a) => Some(a.iter().copied().collect()),
            tessera_ir::TensorData::Bool(a) => Some(a.iter().map(|&b| b as i64).collect()),
            tessera_ir::TensorData::Float(_) => None,
        }
    }

    /// Integers an op needs at import (axes, sizes, pads): an error naming the input otherwise.
    pub fn const_ints(&self, node: &Node, i: usize, what: &str) -> Result<Vec<i64>, String> {
        let name = node.req(i)?;
        self.known_ints(name).ok_or_else(|| format!("{what} (input {i}, {name:?}) must be a constant known at import"))
    }

    /// The value as a symbolic integer tensor, when it is one (or a small known integer tensor).
    pub fn sym(&self, name: &str) -> Option<SymTensor> {
        match self.vals.get(name)? {
            Val::Sym(s) => Some(s.clone()),
            Val::Ir(_) => None,
            _ => {
                let t = self.known(name)?;
                if t.numel() > MAX_SYM_ELEMENTS || t.dtype().is_float() {
                    return None;
                }
                let ints = self.known_ints(name)?;
                SymTensor::new(t.dtype(), t.shape().to_vec(), ints.into_iter().map(SymInt::Int).collect())
            }
        }
    }

    /// A 1-D shape operand as reshape/expand targets, when it is known or symbolic.
    pub fn targets(&self, name: &str) -> Option<Vec<TargetDim>> {
        let s = self.sym(name)?;
        (s.shape.len() == 1).then(|| s.targets())
    }

    /// Adds a constant holding a tensor.
    pub fn const_tensor(&mut self, t: &Tensor) -> Value {
        self.g.add_const(TensorType::with_static(t.dtype(), t.shape()), ConstData::from_vec(t.to_bytes()))
    }

    /// A scalar constant of a float dtype.
    pub fn scalar(&mut self, dtype: DType, x: f64) -> Result<Value, String> {
        let t = match dtype.domain() {
            tessera_ir::dtype::Domain::Float => Tensor::from_f32(dtype, &[], vec![x as f32]),
            tessera_ir::dtype::Domain::Int => Tensor::from_i64(dtype, &[], vec![dtype.saturate_int(x as i64)]),
            tessera_ir::dtype::Domain::Bool => Tensor::from_bool(&[], vec![x != 0.0]),
        }
        .map_err(|e| e.to_string())?;
        Ok(self.const_tensor(&t))
    }

    pub fn i64s(&mut self, values: &[i64]) -> Value {
        let t = Tensor::from_i64(DType::I64, &[values.len()], values.to_vec()).expect("i64 values fit");
        self.const_tensor(&t)
    }

    /// Adds an op with one result.
    pub fn op(&mut self, op: Op, inputs: Vec<Value>) -> Result<Value, String> {
        Ok(self.g.add_op(op, inputs)?[0])
    }

    /// Adds an op and returns all its results.
    pub fn ops(&mut self, op: Op, inputs: Vec<Value>) -> Result<Vec<Value>, String> {
        self.g.add_op(op, inputs)
    }

    /// Emits the ops that compute a symbolic tensor at run time.
    fn materialize(&mut self, s: &SymTensor) -> Result<Value, String> {
        if let Some(ints) = s.ints() {
            let t = if s.dtype == DType::Bool {
                Tensor::from_bool(&s.shape, ints.iter().map(|&v| v != 0).collect())
            } else {
                Tensor::from_i64(s.dtype, &s.shape, ints.iter().map(|&v| s.dtype.wrap_int(v)).collect())
            }
            .map_err(|e| e.to_string())?;
            return Ok(self.const_tensor(&t));
        }
        let mut parts = Vec::new();
        for e in &s.elems {
            parts.push(match e {
                SymInt::Int(n) => self.i64s(&[*n]),
                SymInt::Dim(d) => {
                    let &(src, axis) =
                        self.sym_sources.get(d).ok_or_else(|| format!("no value carries the symbolic dim `{d}`"))?;
                    let shape = self.op(Op::ShapeOf, vec![src])?;
                    let a = axis as i64;
                    self.op(
                        Op::Slice {
                            starts: vec![TargetDim::Int(a)],
                            ends: vec![TargetDim::Int(a + 1)],
                            axes: vec![0],
                            steps: vec![1],
                        },
                        vec![shape],
                    )?
                }
            });
        }
        let flat = if parts.len() == 1 { parts[0] } else { self.op(Op::Concat { axis: 0 }, parts)? };
        let shaped = self
            .op(Op::Reshape { shape: Some(s.shape.iter().map(|&d| TargetDim::Int(d as i64)).collect()) }, vec![flat])?;
        if s.dtype == DType::I64 {
            Ok(shaped)
        } else {
            self.op(Op::Cast { to: s.dtype }, vec![shaped])
        }
    }
}

/// The symbolic tensor of a shape (`Shape` of a value).
pub fn shape_sym(shape: &Shape) -> Option<SymTensor> {
    let elems = shape
        .0
        .iter()
        .map(|d| match d {
            Dim::Static(n) => Some(SymInt::Int(*n as i64)),
            Dim::Sym(s) => Some(SymInt::Dim(s.clone())),
            Dim::Unknown => None,
        })
        .collect::<Option<Vec<_>>>()?;
    SymTensor::new(DType::I64, vec![elems.len()], elems)
}

/// Decodes a TensorProto attribute (Constant's `value`, ConstantOfShape's `value`).
pub fn attr_tensor(t: &TensorProto) -> Result<Tensor, String> {
    tensor_from_proto(t).map(|n| n.tensor).map_err(|e| e.to_string())
}
