//! The ONNX frontend: the protobuf types generated from `proto/onnx.proto` (onnx 1.22.0), the
//! reading and writing of `TensorProto` files (`input_0.pb`, `output_0.pb` of the ONNX
//! backend-test layout), and the model importer.

pub mod import;
pub mod proto;
pub mod tensor_io;

pub use import::{import_file, import_file_with, import_model, import_model_with, ImportError, ImportOptions};
pub use tensor_io::{
    decode_tensor, encode_tensor, onnx_code, onnx_dtype, read_tensor_pb, tensor_from_proto, tensor_meta,
    write_tensor_pb, NamedTensor, TensorIoError, TensorMeta, UnsupportedOnnxType,
};
