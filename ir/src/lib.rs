//! Tessera's intermediate representation: tensor types, the graph, its text format, the
//! verifier and the reference interpreter that defines the semantics of every op.

pub mod constant;
pub mod dtype;
pub mod entity;
pub mod shape;
pub mod tensor;
pub mod types;

pub use constant::{Blob, ConstData};
pub use dtype::DType;
pub use entity::{ConstId, Node, Value};
pub use shape::{Bindings, Dim, Shape};
pub use tensor::{Tensor, TensorData, TensorError};
pub use types::{Quant, QuantGranularity, TensorType};
pub mod graph;
pub mod infer;
pub mod interp;
pub mod op;
pub use graph::{Device, Graph, MemSlot, NodeData, Span, ValueDef};
pub use op::{BinaryOp, FakeQuantFormat, Op, ReduceOp, TargetDim, UnaryOp};
pub mod attrs;
pub mod compare;
pub mod write;
pub use write::{print, print_inline, print_with, PrintOptions, WeightMode};
pub mod parse;
pub use parse::{parse, parse_file, parse_with, ParseError, ParseOptions};
pub mod verify;
pub use interp::{bind_inputs, const_value, run, run_named, run_node, InterpError};
pub use verify::{verify, VerifyError, VerifyErrors};
