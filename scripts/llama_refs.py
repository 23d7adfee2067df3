"""Reference token ids from llama.cpp (llama-cpp-python 0.3.36, see ../shared/MODELS.md for the
trimmed build) for the tokenizer test: each text of compiler/tests/tokenizer.rs tokenized with
the model's BOS, written to compiler/tests/data/gemma3_tokens.json (small, committed).

Usage: .cache/venv/bin/python scripts/llama_refs.py .cache/models/gemma-3-270m-q4_k_m.gguf
"""

import json
import sys

from llama_cpp import Llama

TEXTS = [
    "The capital of France is",
    "Hello, world! How are you today?",
    "  leading spaces and\ttabs\nand newlines",
    "Numbers 1234567890 and symbols #$%&*()",
    "Unicode: café, naïve, 東京, Привет, 🙂🚀",
    "",
]


def main() -> None:
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    refs = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=True, special=False)} for t in TEXTS]
    out = "compiler/tests/data/gemma3_tokens.json"
    with open(out, "w") as f:
        json.dump({"llama_cpp_python": "0.3.36", "model": "gemma-3-270m-q4_k_m.gguf", "texts": refs}, f, indent=1, ensure_ascii=False)
    print(f"[llama_refs] {len(refs)} texts -> {out}")


if __name__ == "__main__":
    main()
