//! The ONNX frontend: the protobuf types generated from `proto/onnx.proto` (onnx 1.22.0) and the
//! reading and writing of `TensorProto` files (`input_0.pb`, `output_0.pb` of the ONNX
//! backend-test layout).

pub mod proto;
pub mod tensor_io;

pub use tensor_io::{
    decode_tensor, encode_tensor, onnx_code, onnx_dtype, read_tensor_pb, write_tensor_pb, NamedTensor, TensorIoError,
    UnsupportedOnnxType,
};
