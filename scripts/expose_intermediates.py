#!/usr/bin/env python3
"""Finds where Tessera and onnxruntime part ways inside a model.

Rewrites MODEL so that the outputs of every node of the given op types become graph outputs (in
graph order), runs onnxruntime on one data set, and writes the model, the inputs and
onnxruntime's outputs in the backend-test layout to OUT. Then compare, tensor by tensor:

    tessera run OUT/model.onnx --inputs OUT --check --atol 1e-5 --rtol 0 [--match-onnxruntime]

Usage (with the venv of scripts/fetch_models.sh):
    .cache/venv/bin/python scripts/expose_intermediates.py MODEL DATA_SET_DIR OUT [OP_TYPE ...]
OP_TYPE defaults to DynamicQuantizeLinear MatMulInteger MatMul LayerNormalization Softmax.
"""
import os
import sys

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    model_path, data_dir, out = sys.argv[1:4]
    ops = sys.argv[4:] or ["DynamicQuantizeLinear", "MatMulInteger", "MatMul", "LayerNormalization", "Softmax"]
    m = onnx.load(model_path)
    want = [n.output[0] for n in m.graph.node if n.op_type in ops]
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    del m.graph.output[:]
    for name in want:
        m.graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
    os.makedirs(out, exist_ok=True)
    onnx.save(m, os.path.join(out, "model.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(os.path.join(out, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for i, inp in enumerate(sess.get_inputs()):
        t = onnx.TensorProto()
        with open(os.path.join(data_dir, f"input_{i}.pb"), "rb") as fh:
            t.ParseFromString(fh.read())
        feeds[inp.name] = numpy_helper.to_array(t)
        with open(os.path.join(out, f"input_{i}.pb"), "wb") as fh:
            fh.write(t.SerializeToString())
    for j, (value, name) in enumerate(zip(sess.run(None, feeds), want)):
        with open(os.path.join(out, f"output_{j}.pb"), "wb") as fh:
            fh.write(numpy_helper.from_array(value, name).SerializeToString())
    print(f"{len(want)} intermediate outputs written to {out}")


if __name__ == "__main__":
    main()
