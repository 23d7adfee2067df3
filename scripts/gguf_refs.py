"""Reference dequantizations for the GGUF reader's tests, made with the `gguf` package (pip,
pinned in scripts/fetch_models.sh): for the smallest tensor of each type in the model, its
element count, the first 8 values, and a hash of all its f32 values (little-endian bytes) with
the word-wise FNV-1a that compiler/tests/gguf.rs computes too.

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
    with open(out, "w") as f:
        json.dump({"model": model.split("/")[-1], "tensors": refs}, f, indent=1)
    print(f"[gguf_refs] {len(refs)} tensors -> {out}")


if __name__ == "__main__":
    main()
