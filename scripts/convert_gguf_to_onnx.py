#!/usr/bin/env python3
"""Convert a llama-architecture GGUF (SmolLM2) to an ONNX decoder with a KV cache, no PyTorch.

Graph contract (what src/backend/local expects):
  inputs   input_ids                  int64   [batch, seq]
           past_key_values.{i}.key    float32 [batch, n_kv_heads, past, head_dim]   (i in 0..n_layers)
           past_key_values.{i}.value  float32 [batch, n_kv_heads, past, head_dim]
  outputs  logits                     float32 [batch, 1, vocab]   (last position only)
           present.{i}.key / .value   float32 [batch, n_kv_heads, past + seq, head_dim]
Positions are past .. past+seq-1 (computed in the graph from the past length); the attention is
causal. Opset 20, weights in external data, MatMul weights then quantized to 8 bits (block 32,
asymmetric) with onnxruntime's MatMulNBitsQuantizer.

Usage: convert_gguf_to_onnx.py GGUF OUT_DIR   (writes OUT_DIR/model.onnx, model.onnx.data,
tokenizer.json and prints a JSON summary of the model's metadata on stdout's last line).
Needs: gguf, onnx, onnx_ir, onnxruntime, numpy, tokenizers (scripts/setup.py installs them).
"""

import json
import os
import sys
import tempfile

import numpy as np

import gguf
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
ACCURACY_LEVEL = int(os.environ.get("EDGEROUTE_MATMUL_ACCURACY", "4"))


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load_weights(reader):
    """Dequantized float32 weights keyed by GGUF name, in HF layout ([out, in] for projections)."""
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))  # gguf lists dims fastest-first
        out[t.name] = np.ascontiguousarray(w.reshape(shape).astype(np.float32))
    return out


def unpermute(w, n_head):
    """Undo llama.cpp's Q/K row permutation (its RoPE pairs adjacent rows; HF rotates halves)."""
    rows = w.shape[0]
    return (
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


class Builder:
    def __init__(self):
        self.nodes = []
        self.inits = []
        self.n = 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type, inputs, base=None, outputs=None, **attrs):
        base = base or op_type.lower()
        outs = outputs or [self.name(base)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + base), **attrs))
        return outs[0] if len(outs) == 1 else outs


def build_graph(cfg, w):
    L, H, KV, D = cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    E, V, eps, theta = cfg["hidden"], cfg["vocab"], cfg["rms_eps"], cfg["rope_theta"]
    rep = H // KV
    b = Builder()

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, V])]
    for i in range(L):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", TensorProto.FLOAT, ["batch", KV, "past", D]
                )
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", KV, "total", D]
                )
            )

    c = {
        "i0": b.const("c_i0", np.array([0], np.int64)),
        "i1": b.const("c_i1", np.array([1], np.int64)),
        "i2": b.const("c_i2", np.array([2], np.int64)),
        "im1": b.const("c_im1", np.array([-1], np.int64)),
        "imax": b.const("c_imax", np.array([np.iinfo(np.int64).max], np.int64)),
        "s0": b.const("c_s0", np.array(0, np.int64)),
        "s1": b.const("c_s1", np.array(1, np.int64)),
        "two": b.const("c_two", np.array(2.0, np.float32)),
        "eps": b.const("c_eps", np.array(eps, np.float32)),
        "scale": b.const("c_scale", np.array(1.0 / np.sqrt(D), np.float32)),
        "neg": b.const("c_neg", np.array(-3.0e38, np.float32)),
        "zero": b.const("c_zero", np.array(0.0, np.float32)),
    }

    def rmsnorm(x, weight_name, wt):
        g = b.const(weight_name, wt)
        p = b.op("Pow", [x, c["two"]])
        m = b.op("ReduceMean", [p, c["im1"]], keepdims=1)
        a = b.op("Add", [m, c["eps"]])
        s = b.op("Sqrt", [a])
        d = b.op("Div", [x, s])
        return b.op("Mul", [d, g])

    def matmul(x, weight_name, wt_out_in):
        return b.op("MatMul", [x, b.const(weight_name, np.ascontiguousarray(wt_out_in.T))], base="matmul")

    # shapes and positions
    ids_shape = b.op("Shape", ["input_ids"])
    batch = b.op("Gather", [ids_shape, c["i0"]], axis=0)  # [1]
    seq1 = b.op("Gather", [ids_shape, c["i1"]], axis=0)  # [1]
    seq = b.op("Squeeze", [seq1, c["i0"]])  # scalar
    past_shape = b.op("Shape", ["past_key_values.0.key"])
    past = b.op("Squeeze", [b.op("Gather", [past_shape, c["i2"]], axis=0), c["i0"]])  # scalar
    total = b.op("Add", [past, seq])
    pos = b.op("Range", [past, total, c["s1"]])  # [seq] int64
    kpos = b.op("Range", [c["s0"], total, c["s1"]])  # [total]

    # rotary tables [seq, D]
    inv_freq = (1.0 / (theta ** (np.arange(0, D, 2, dtype=np.float64) / D))).astype(np.float32)
    posf = b.op("Cast", [pos], to=TensorProto.FLOAT)
    freqs = b.op(
        "Mul",
        [b.op("Unsqueeze", [posf, c["i1"]]), b.const("rope_inv_freq", inv_freq.reshape(1, -1))],
    )
    emb = b.op("Concat", [freqs, freqs], axis=-1)
    cos = b.op("Cos", [emb])
    sin = b.op("Sin", [emb])

    # causal mask [seq, total]: key position > query position -> -inf
    mask_bool = b.op(
        "Greater", [b.op("Unsqueeze", [kpos, c["i0"]]), b.op("Unsqueeze", [pos, c["i1"]])]
    )
    mask = b.op("Where", [mask_bool, c["neg"], c["zero"]])

    half = D // 2
    c_half = b.const("c_half", np.array([half], np.int64))

    def rope(x):  # x [B, h, S, D]
        x1 = b.op("Slice", [x, c["i0"], c_half, b.const(b.name("ax"), np.array([3], np.int64))])
        x2 = b.op("Slice", [x, c_half, c["imax"], b.const(b.name("ax"), np.array([3], np.int64))])
        rot = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
        return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [rot, sin])])

    shape_bshd_q = b.op("Concat", [batch, seq1, b.const("c_hd_q", np.array([H, D], np.int64))], axis=0)
    shape_bshd_kv = b.op("Concat", [batch, seq1, b.const("c_hd_kv", np.array([KV, D], np.int64))], axis=0)
    shape_grouped_q = b.op(
        "Concat",
        [batch, b.const("c_kv_rep", np.array([KV, rep], np.int64)), seq1, b.const("c_d", np.array([D], np.int64))],
        axis=0,
    )
    shape_bse = b.op("Concat", [batch, seq1, b.const("c_e", np.array([E], np.int64))], axis=0)

    x = b.op("Gather", [b.const("embed_tokens", w["token_embd.weight"]), "input_ids"], axis=0)
    for i in range(L):
        p = f"blk.{i}."
        h = rmsnorm(x, f"l{i}.attn_norm", w[p + "attn_norm.weight"])
        q = matmul(h, f"l{i}.q_proj", unpermute(w[p + "attn_q.weight"], H))
        k = matmul(h, f"l{i}.k_proj", unpermute(w[p + "attn_k.weight"], KV))
        v = matmul(h, f"l{i}.v_proj", w[p + "attn_v.weight"])
        q = b.op("Transpose", [b.op("Reshape", [q, shape_bshd_q])], perm=[0, 2, 1, 3])
        k = b.op("Transpose", [b.op("Reshape", [k, shape_bshd_kv])], perm=[0, 2, 1, 3])
        v = b.op("Transpose", [b.op("Reshape", [v, shape_bshd_kv])], perm=[0, 2, 1, 3])
        q = rope(q)
        k = rope(k)
        k_all = b.op("Concat", [f"past_key_values.{i}.key", k], axis=2, outputs=[f"present.{i}.key"])
        v_all = b.op("Concat", [f"past_key_values.{i}.value", v], axis=2, outputs=[f"present.{i}.value"])
        # grouped-query attention by broadcasting: q [B, KV, rep, S, D] against k [B, KV, 1, T, D]
        qg = b.op("Reshape", [q, shape_grouped_q])
        kg = b.op("Unsqueeze", [k_all, c["i2"]])
        vg = b.op("Unsqueeze", [v_all, c["i2"]])
        kt = b.op("Transpose", [kg], perm=[0, 1, 2, 4, 3])
        scores = b.op("Mul", [b.op("MatMul", [qg, kt]), c["scale"]])
        probs = b.op("Softmax", [b.op("Add", [scores, mask])], axis=-1)
        attn = b.op("MatMul", [probs, vg])  # [B, KV, rep, S, D]
        attn = b.op("Reshape", [attn, b.op("Concat", [batch, b.const(b.name("c_h"), np.array([H], np.int64)), seq1, b.const(b.name("c_d"), np.array([D], np.int64))], axis=0)])
        attn = b.op("Reshape", [b.op("Transpose", [attn], perm=[0, 2, 1, 3]), shape_bse])
        x = b.op("Add", [x, matmul(attn, f"l{i}.o_proj", w[p + "attn_output.weight"])])
        h = rmsnorm(x, f"l{i}.ffn_norm", w[p + "ffn_norm.weight"])
        gate = matmul(h, f"l{i}.gate_proj", w[p + "ffn_gate.weight"])
        up = matmul(h, f"l{i}.up_proj", w[p + "ffn_up.weight"])
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
        x = b.op("Add", [x, matmul(act, f"l{i}.down_proj", w[p + "ffn_down.weight"])])

    x = rmsnorm(x, "final_norm", w["output_norm.weight"])
    last = b.op("Slice", [x, c["im1"], c["imax"], c["i1"]])  # [B, 1, E]
    head = w.get("output.weight", w["token_embd.weight"])  # tied embeddings
    b.op("MatMul", [last, b.const("lm_head", np.ascontiguousarray(head.T))], outputs=["logits"])

    graph = helper.make_graph(b.nodes, "edgeroute_llama", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeroute")
    model.ir_version = 10
    return model


def build_tokenizer(reader, path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if int(ty) == 3]
    tok.add_special_tokens(special)
    tok.save(path)


def model_config(reader):
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"unsupported architecture {arch!r} (only llama)")
    hidden = int(field(reader, "llama.embedding_length"))
    heads = int(field(reader, "llama.attention.head_count"))
    return {
        "n_layers": int(field(reader, "llama.block_count")),
        "hidden": hidden,
        "n_heads": heads,
        "n_kv_heads": int(field(reader, "llama.attention.head_count_kv")),
        "head_dim": hidden // heads,
        "ffn": int(field(reader, "llama.feed_forward_length")),
        "vocab": len(field(reader, "tokenizer.ggml.tokens")),
        "rms_eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
        "context_length": int(field(reader, "llama.context_length")),
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "chat_template": field(reader, "tokenizer.chat_template"),
        "matmul_accuracy_level": ACCURACY_LEVEL,
    }


def quantize(src, dst):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(src, load_external_data=True)
    # Asymmetric on purpose: the GGUF weights are Q4_1 (asymmetric, blocks of 32), and a symmetric
    # 8-bit grid re-quantizes them with about twice the error -- enough to flip close greedy choices
    # (measured: "What is the capital of France?" answered "L'Étoile..." instead of "The capital
    # of France is Paris."; the float32 graph and the asymmetric 8-bit graph both say Paris).
    #
    # accuracy_level 4 (int8 activations, MLAS's int8 kernels) is ~15x faster than the default
    # float path for 8-bit weights on x86 (measured 26 vs 385 ms/token, 1 thread); the float path
    # stays available with EDGEROUTE_MATMUL_ACCURACY=0 (setup.py --exact-matmul).
    q = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=False, accuracy_level=ACCURACY_LEVEL)
    q.process()
    for f in (dst, dst + ".data"):
        if os.path.exists(f):
            os.remove(f)
    q.model.save_model_to_file(dst, use_external_data_format=True)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    reader = gguf.GGUFReader(src)
    cfg = model_config(reader)
    print(f"  reading and dequantizing {len(reader.tensors)} tensors", file=sys.stderr, flush=True)
    w = load_weights(reader)
    print("  building the ONNX graph", file=sys.stderr, flush=True)
    model = build_graph(cfg, w)
    del w
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        f32 = os.path.join(tmp, "model_f32.onnx")
        onnx.save_model(model, f32, save_as_external_data=True, all_tensors_to_one_file=True, location="model_f32.onnx.data")
        del model
        onnx.checker.check_model(f32)
        qpath = os.path.join(tmp, "model.onnx")
        if os.environ.get("EDGEROUTE_CONVERT_F32") == "1":  # debugging aid: keep float32 weights
            onnx.save_model(onnx.load(f32), qpath, save_as_external_data=True, location="model.onnx.data")
        else:
            print("  quantizing MatMul weights to 8 bits (block 32, asymmetric)", file=sys.stderr, flush=True)
            quantize(f32, qpath)
        # the quantizer names the data file after the model; move both into place
        data = [f for f in os.listdir(tmp) if f.startswith("model.onnx") and f != "model.onnx"]
        if data != ["model.onnx.data"]:
            raise SystemExit(f"unexpected quantizer output files: {data}")
        os.replace(os.path.join(tmp, "model.onnx.data"), os.path.join(out, "model.onnx.data"))
        os.replace(qpath, os.path.join(out, "model.onnx"))
    print("  building tokenizer.json from the GGUF vocabulary and merges", file=sys.stderr, flush=True)
    build_tokenizer(reader, os.path.join(out, "tokenizer.json"))
    print(json.dumps(cfg))


if __name__ == "__main__":
    main()
