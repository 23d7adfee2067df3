"""A GGUF file's copy with every tensor dequantized to F32 (the gguf package's dequantization,
bit-exact with ggml's), same metadata: llama.cpp then computes with the same weight values and
f32 activations, the reference for Tessera's ternary (TQ1_0/TQ2_0) kernels. llama.cpp's own
TQ kernels quantize activations to 8 bits, and on a model whose weights were not trained
ternary that changes the greedy text from the first token (see README).

Usage: .cache/venv/bin/python scripts/gguf_f32.py IN.gguf OUT.gguf
"""
import sys, numpy as np, gguf
from gguf import GGUFReader, GGUFWriter, GGUFValueType
src, dst = sys.argv[1], sys.argv[2]
r = GGUFReader(src)
arch = r.fields["general.architecture"].contents()
w = GGUFWriter(dst, arch)
for name, f in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        w.add_key_value(name, f.contents(), t, sub_type=f.types[-1])
    else:
        w.add_key_value(name, f.contents(), t)
for t in r.tensors:
    x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = list(reversed([int(d) for d in t.shape]))
    w.add_tensor(t.name, x.reshape(shape))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", dst)
