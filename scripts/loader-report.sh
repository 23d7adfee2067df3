#!/usr/bin/env bash
# What an app ships: builds the runtime without its compiler (release, `--no-default-features`:
# no Cranelift, egg or frontends) as a Rust program (runtime/examples/load_artifact.rs) and as
# the C library (libtessera.so), prints their stripped sizes beside the full JIT builds', and
# times open-to-end-of-first-run of MiniLM-L3 int8 (a fresh process each time; median of 9).
# Usage: scripts/loader-report.sh   (needs scripts/fetch_models.sh's models)
set -euo pipefail
cd "$(dirname "$0")/.."
lo=target/loader-only
cargo build --release --locked -q -p tessera-runtime --no-default-features --example load_artifact --target-dir "$lo"
cargo build --release --locked -q -p tessera-capi --no-default-features --target-dir "$lo"
cargo build --release --locked -q -p tessera -p tessera-capi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
size() { cp "$1" "$tmp/s"; strip "$tmp/s"; echo $(( $(stat -c %s "$tmp/s") / 1024 )); }
printf '%-46s %8s KiB (stripped)\n' \
  "loader-only Rust program (load_artifact)" "$(size $lo/release/examples/load_artifact)" \
  "loader-only C library (libtessera.so)" "$(size $lo/release/libtessera.so)" \
  "full C library with the JIT (libtessera.so)" "$(size target/release/libtessera.so)" \
  "tessera CLI (compiler, JIT, GPU, NPU)" "$(size target/release/tessera)"
model=.cache/models/minilm-l3-int8-dynamic.onnx
target/release/tessera compile "$model" -o "$tmp/m.tsa" >/dev/null
for _ in 1 2 3 4 5 6 7 8 9; do
  $lo/release/examples/load_artifact "$tmp/m.tsa" --dim batch_size=1 --dim sequence_length=12 | sed -nE 's/.*load \+ first run ([0-9.]+) ms/\1/p'
done | sort -n | awk '{v[NR]=$1} END {printf "MiniLM-L3 int8 artifact, seq 12: open to end of first run, median of %d processes: %.2f ms (min %.2f, max %.2f)\n", NR, v[int((NR+1)/2)], v[1], v[NR]}'
