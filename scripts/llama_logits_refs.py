"""Reference logits and greedy tokens from llama.cpp (llama-cpp-python 0.3.36, trimmed build:
see ../shared/MODELS.md) for Tessera's gemma3 lowering test, written compactly to
compiler/tests/data/gemma3_logits.json (committed; a few hundred KB at most):

- the prompt's token ids (with BOS);
- at every prompt position: the argmax, the logit range (max - min over the whole vocabulary)
  and the top 32 (id, logit) pairs;
- the first 32 greedy tokens after the prompt, with their text, and at each step (llama.cpp's
  one-token decode) the logit range and top 32 pairs that chose the token: where two logits
  are within a few hundredths, another engine's f32 arithmetic may rightly pick the other one
  (llama.cpp's own batched prefill ranks the same candidates differently there), so the test
  checks the decode teacher-forced on these tokens and reports the margins.

llama.cpp runs with an f32 KV cache and without flash attention, so its attention is f32 like
Tessera's; its matrix products still quantize activations to 8 bits (Q8_0/Q8_K), which is where
most of the remaining logit difference comes from.

Usage: .cache/venv/bin/python scripts/llama_logits_refs.py MODEL.gguf OUT.json [PROMPT]
"""

import json
import sys

import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0
PROMPT = "The capital of France is"
TOP = 32
GREEDY = 32


def main() -> None:
    model, out = sys.argv[1], sys.argv[2]
    prompt = sys.argv[3] if len(sys.argv) > 3 else PROMPT
    llm = Llama(
        model_path=model,
        n_ctx=256,
        n_batch=256,
        logits_all=True,
        n_threads=2,
        n_threads_batch=2,
        flash_attn=False,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    llm.eval(ids)
    def summary(row):
        top = np.argsort(-row, kind="stable")[:TOP]
        return {
            "argmax": int(np.argmax(row)),
            "range": float(row.max() - row.min()),
            "top": [[int(i), float(row[i])] for i in top],
        }

    positions = [summary(np.array(llm.scores[p], dtype=np.float32)) for p in range(len(ids))]
    greedy, steps = [], []
    for _ in range(GREEDY):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        t = int(np.argmax(row))
        greedy.append(t)
        steps.append(summary(row))
        llm.eval([t])
    text = llm.detokenize(greedy).decode("utf-8", errors="replace")
    with open(out, "w") as f:
        json.dump(
            {
                "llama_cpp_python": "0.3.36",
                "model": model.rsplit("/", 1)[-1],
                "kv_cache": "f32",
                "prompt": prompt,
                "ids": ids,
                "positions": positions,
                "greedy": greedy,
                "steps": steps,
                "greedy_text": text,
            },
            f,
        )
    print(f"[llama_logits_refs] {len(ids)} prompt tokens, {len(greedy)} greedy tokens -> {out}: {text!r}")


if __name__ == "__main__":
    main()
