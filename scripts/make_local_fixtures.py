#!/usr/bin/env python3
"""Write the tiny hand-made ONNX fixtures used by the local tier's fast unit tests.

    <home>/tools/venv/bin/python scripts/make_local_fixtures.py

tests/fixtures/local/tiny/         a 1-layer "decoder" with the real graph contract (input_ids,
                                   attention_mask, past_key_values.0.key/value -> logits,
                                   present.0.key/value), a 259-token byte-level tokenizer and a
                                   manifest. Its logits are a fixed next-token table: after "\n" it
                                   writes "Hi!é" (the "é" split over two byte tokens) then
                                   <|im_end|>; any other token is followed by "x". Its cache is
                                   kept by the real model's operator, GroupQueryAttention (one head
                                   of 8, no rotary embedding), fed each token id as its key and value
                                   ([id] * 8 per position), so a test can see the cache being written
                                   in place and fed back.
tests/fixtures/local/not_a_decoder.onnx   a valid model without the KV-cache signature.

Not written here: tests/fixtures/local/tiny_before_attention_mask.onnx is the tiny decoder as
this script wrote it before the graph contract gained attention_mask (manifest version 6), kept
to test the error an install converted by an older edgeroute gets.
"""

import hashlib
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "local")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    tiny = os.path.join(OUT, "tiny")
    os.makedirs(tiny, exist_ok=True)
    chars = byte_chars()
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for b in range(256):
        vocab[chars[b]] = len(SPECIALS) + b
    V = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(os.path.join(tiny, "tokenizer.json"))

    byte_id = lambda b: len(SPECIALS) + b  # noqa: E731
    nxt = {byte_id(ord("\n")): byte_id(ord("H")), byte_id(ord("H")): byte_id(ord("i")),
           byte_id(ord("i")): byte_id(ord("!")), byte_id(ord("!")): byte_id(0xC3),
           byte_id(0xC3): byte_id(0xA9), byte_id(0xA9): 2}
    table = np.array([nxt.get(i, byte_id(ord("x"))) for i in range(V)], np.int64)

    KV, D = 1, 8
    nodes = [
        helper.make_node("Gather", ["input_ids", "minus_one"], ["last"], axis=1),
        helper.make_node("Gather", ["table", "last"], ["next"], axis=0),
        helper.make_node("OneHot", ["next", "depth", "off_on"], ["rows"], axis=-1),
        helper.make_node("Unsqueeze", ["rows", "one"], ["logits"]),
        # packed query/key/value [batch, seq, 3 * D]: every element of a position is its id
        helper.make_node("Cast", ["input_ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["idsf", "minus_one_1d"], ["ids3"]),
        helper.make_node("Mul", ["ids3", "ones_qkv"], ["qkv"]),
        # as in the real graph: seqlens_k = sum(mask) - 1, total = width of the mask
        helper.make_node("ReduceSum", ["attention_mask", "one"], ["summed"], keepdims=0),
        helper.make_node("Sub", ["summed", "one"], ["seqlens64"]),
        helper.make_node("Cast", ["seqlens64"], ["seqlens"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "one"], ["width"], axis=0),
        helper.make_node("Cast", ["width"], ["width32"], to=TensorProto.INT32),
        helper.make_node("Squeeze", ["width32", "zero"], ["total"]),
        helper.make_node("GroupQueryAttention",
                         ["qkv", "", "", "past_key_values.0.key", "past_key_values.0.value", "seqlens", "total"],
                         ["attn", "present.0.key", "present.0.value"],
                         domain="com.microsoft", num_heads=1, kv_num_heads=KV),
    ]
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array(-1, np.int64), "minus_one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one_1d"),
        numpy_helper.from_array(np.array(V, np.int64), "depth"),
        numpy_helper.from_array(np.array([0.0, 10.0], np.float32), "off_on"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.ones(3 * D, np.float32), "ones_qkv"),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, V])]
    for kind in ("key", "value"):
        inputs.append(helper.make_tensor_value_info(f"past_key_values.0.{kind}", TensorProto.FLOAT, ["batch", KV, "past", D]))
        outputs.append(helper.make_tensor_value_info(f"present.0.{kind}", TensorProto.FLOAT, ["batch", KV, "present", D]))
    model = helper.make_model(helper.make_graph(nodes, "tiny_decoder", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="edgeroute-fixture")
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save_model(model, os.path.join(tiny, "model.onnx"))

    files = {}
    sizes = {}
    for n in ("model.onnx", "tokenizer.json"):
        p = os.path.join(tiny, n)
        files[n] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        sizes[n] = os.path.getsize(p)
    manifest = {
        "manifest_version": 3, "name": "tiny-fixture", "files": files, "sizes": sizes,
        "architecture": {"family": "fixture", "num_layers": 1, "hidden_size": 2, "num_heads": 1, "num_kv_heads": KV,
                         "head_dim": D, "vocab_size": V, "context_length": 64, "rope_theta": 0},
        "bos_token_id": 1, "eos_token_ids": [0, 2],
        "chat_template": {"kind": "chatml", "turn_start": "<|im_start|>", "turn_end": "<|im_end|>",
                          "default_system": "Be brief."},
    }
    with open(os.path.join(tiny, "edgeroute-model.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    other = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 20)])
    other.ir_version = 10
    onnx.save_model(other, os.path.join(OUT, "not_a_decoder.onnx"))
    for root, _, fs in os.walk(OUT):
        for f in fs:
            print(os.path.join(root, f), os.path.getsize(os.path.join(root, f)))


if __name__ == "__main__":
    main()
