#!/usr/bin/env python3
"""onnxruntime side of `tessera bench --vs onnxruntime`.

Usage: ort_bench.py MODEL INPUT_DIR THREADS
Creates one session (intra_op_num_threads=THREADS, spinning off so idle threads do not steal
the cores Tessera runs on between rounds), prints `created <ms>`, then answers each line
`run N` on stdin with `times <ms> <ms> ...` (one run each), until `quit`.
"""
import sys
import time

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort


def main():
    model, input_dir, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    created = (time.perf_counter() - t0) * 1e3
    feeds = {}
    for i, inp in enumerate(sess.get_inputs()):
        t = onnx.TensorProto()
        with open(f"{input_dir}/input_{i}.pb", "rb") as f:
            t.ParseFromString(f.read())
        feeds[inp.name] = onnx.numpy_helper.to_array(t)
    sess.run(None, feeds)  # warm-up
    print(f"created {created:.3f}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        n = int(cmd[1])
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        print("times " + " ".join(f"{t:.4f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
