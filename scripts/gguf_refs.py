"""Reference dequantizations for the GGUF reader's tests, made with the `gguf` package (pip,
pinned in scripts/fetch_models.sh): for the smallest tensor of each type in the model, its
element count, the first 8 values, and a hash of all its f32 values (little-endian bytes) with
the word-wise FNV-1a that compiler/tests/gguf.rs computes too. Then, for every block format
Tessera dequantizes, three blocks of seeded random bytes (with finite f16 scales) and the hash
of their dequantization: formats the model does not use are checked too.

Usage: .cache/venv/bin/python scripts/gguf_refs.py MODEL.gguf OUT.json
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def fnv_words(data: bytes) -> int:
    """FNV-1a over 8-byte little-endian words, then the remaining bytes (tessera_ir's fnv1a64)."""
    prime, mask = 0x100000001B3, (1 << 64) - 1
    h = 0xCBF29CE484222325
    n = len(data) // 8 * 8
    for (w,) in np.frombuffer(data[:n], dtype="<u8").reshape(-1, 1).tolist():
        h = ((h ^ w) * prime) & mask
    for b in data[n:]:
        h = ((h ^ b) * prime) & mask
    return h


def main() -> None:
    model, out = sys.argv[1], sys.argv[2]
    reader = GGUFReader(model)
    smallest = {}
    for t in reader.tensors:
        name = t.tensor_type.name
        if name not in smallest or t.n_elements < smallest[name].n_elements:
            smallest[name] = t
    refs = []
    for type_name, t in sorted(smallest.items()):
        values = dequantize(t.data, t.tensor_type).astype("<f4").reshape(-1)
        refs.append(
            {
                "name": t.name,
                "type": type_name,
                "elements": int(values.size),
                "first": [float(v) for v in values[:8]],
                "fnv": f"{fnv_words(values.tobytes()):016x}",
            }
        )
    synthetic = []
    rng = np.random.RandomState(20261121)
    # type name -> byte offsets of its f16 scale fields within a block.
    f16_fields = {
        "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
        "Q2_K": [80, 82], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
        "TQ1_0": [52], "TQ2_0": [64],
    }
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    for name, fields in f16_fields.items():
        qtype = GGMLQuantizationType[name]
        block, size = GGML_QUANT_SIZES[qtype]
        data = rng.randint(0, 256, size=(3, size)).astype(np.uint8)
        for off in fields:
            data[:, off:off + 2] = np.frombuffer(rng.uniform(-2, 2, 3).astype(np.float16).tobytes(), dtype=np.uint8).reshape(3, 2)
        flat = data.reshape(1, -1)
        values = dequantize(flat, qtype).astype("<f4").reshape(-1)
        synthetic.append(
            {
                "type": name,
                "hex": flat.tobytes().hex(),
                "elements": int(values.size),
                "first": [float(v) for v in values[:4]],
                "fnv": f"{fnv_words(values.tobytes()):016x}",
            }
        )
    with open(out, "w") as f:
        json.dump({"model": model.split("/")[-1], "tensors": refs, "synthetic": synthetic}, f, indent=1)
    print(f"[gguf_refs] {len(refs)} tensors -> {out}")


if __name__ == "__main__":
    main()
