#!/usr/bin/env bash
# Fills the git-ignored fuzz/corpus/ from what the repository already has:
# - parse_text and run_graph: fuzz/seeds/*.tir, every .tir under tests/filetests/, and the
#   graph texts written as raw strings (r#"..."#) in ir/tests/*.rs;
# - decode_tensor: every TensorProto file (*.pb) under tests/filetests/ and compiler/tests/;
# - import_onnx: the model.onnx of every ONNX node test in .cache/onnx-node-tests (when
#   scripts/fetch_models.sh has fetched them).
# Run it from anywhere; rerunning it only overwrites these copies, never what the fuzzer added.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
for target in parse_text run_graph; do
    dir="fuzz/corpus/$target"
    mkdir -p "$dir"
    for f in fuzz/seeds/*.tir; do
        cp "$f" "$dir/seed-$(basename "$f")"
    done
    find tests/filetests -name '*.tir' | sort | while read -r f; do
        name="${f#tests/filetests/}"
        cp "$f" "$dir/filetest-${name//\//-}"
    done
    for f in ir/tests/*.rs; do
        # Each raw string literal holding `graph @` becomes one file: <test file>-<n>.tir.
        awk -v out="$dir/$(basename "$f" .rs)-" '
            !inside && index($0, "r#\"") {
                inside = 1; text = substr($0, index($0, "r#\"") + 3)
                if (text != "") text = text "\n"
                next
            }
            inside && index($0, "\"#") {
                text = text substr($0, 1, index($0, "\"#") - 1)
                if (index(text, "graph @")) { n++; printf "%s", text > (out n ".tir"); close(out n ".tir") }
                inside = 0; text = ""
                next
            }
            inside { text = text $0 "\n" }
        ' "$f"
    done
    echo "$dir: $(find "$dir" -type f | wc -l) files"
done
dir="fuzz/corpus/decode_tensor"
mkdir -p "$dir"
find tests/filetests compiler/tests -name '*.pb' | sort | while read -r f; do
    name="${f//\//-}"
    cp "$f" "$dir/$name"
done
echo "$dir: $(find "$dir" -type f | wc -l) files"

# import_onnx: the node tests' models (small, one op each, every op type Tessera knows).
if [ -d .cache/onnx-node-tests ]; then
    mkdir -p fuzz/corpus/import_onnx
    for d in .cache/onnx-node-tests/*/; do
        cp "$d/model.onnx" "fuzz/corpus/import_onnx/$(basename "$d").onnx"
    done
fi

# load_artifact: the transformer block compiled into an artifact (small: 30 KiB).
if [ -x target/release/tessera ] || [ -x target/debug/tessera ]; then
    bin=target/release/tessera; [ -x "$bin" ] || bin=target/debug/tessera
    mkdir -p fuzz/corpus/load_artifact
    "$bin" compile tests/filetests/run/transformer_block.tir -o fuzz/corpus/load_artifact/block.tsa >/dev/null
    "$bin" compile tests/filetests/run/transformer_block.tir --triple aarch64-linux-android -o fuzz/corpus/load_artifact/block-arm64.tsa >/dev/null
    echo "fuzz/corpus/load_artifact: $(find fuzz/corpus/load_artifact -type f | wc -l) files"
fi
