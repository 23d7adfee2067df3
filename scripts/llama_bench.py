#!/usr/bin/env python3
"""llama.cpp side of `tessera bench model.gguf --vs llama.cpp` (llama-cpp-python 0.3.36 in
.cache/venv; see ../shared/MODELS.md for the trimmed build).

Usage: llama_bench.py MODEL THREADS CONTEXT
Loads the model (n_threads and n_threads_batch = THREADS, default KV cache and attention),
prints `loaded <ms>`, then answers each stdin line `round GEN ID ID ...` by clearing the cache,
running the prompt ids as one batch (prefill) and then GEN greedy tokens one at a time (decode),
printing `times <prefill ms> <decode ms> <tokens decoded> <first token id>`, until `quit`.
Greedy picks the argmax of the last logits with numpy, as Tessera's bench does in Rust.
"""
import sys
import time

import numpy as np
from llama_cpp import Llama


def main():
    model, threads, ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    t0 = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=ctx, n_batch=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    print(f"loaded {(time.perf_counter() - t0) * 1e3:.3f}", flush=True)
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        gen, ids = int(cmd[1]), [int(x) for x in cmd[2:]]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t = int(np.argmax(last_logits()))
        prefill = (time.perf_counter() - t0) * 1e3
        first = t
        t0 = time.perf_counter()
        for _ in range(gen - 1):
            llm.eval([t])
            t = int(np.argmax(last_logits()))
        decode = (time.perf_counter() - t0) * 1e3
        print(f"times {prefill:.4f} {decode:.4f} {gen - 1} {first}", flush=True)


if __name__ == "__main__":
    main()
