#!/usr/bin/env python3
"""Regenerate tests/fixtures/local/reference_greedy.json: greedy outputs of Python onnxruntime.

The Rust tests (tests/local_model.rs) check that LocalBackend produces the same token ids for the
same prompts on the same model file. Run with the set-up tools' interpreter:

    python3 scripts/setup.py   # once
    <home>/tools/venv/bin/python scripts/reference_greedy.py [--home DIR] [--out FILE]

The greedy loop here (ChatML prompt with the model's default system prompt, prefill, KV-cache
decode, repetition penalty on tokens generated 3+ times among the last 64, stop on an end-of-sequence id or
after MAX_NEW_TOKENS) is the contract LocalBackend implements; scripts/bench_python.py times
this same loop.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from setup import default_home  # noqa: E402  (one definition of the edgeroute home)

MAX_NEW_TOKENS = 48
# edgeroute::request::{DEFAULT_REPETITION_PENALTY, REPETITION_WINDOW, REPETITION_MIN_COUNT}.
REPETITION_PENALTY = 1.1
REPETITION_WINDOW = 64
REPETITION_MIN_COUNT = 3
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    # These two run on under pure greedy decoding ("1. **1011111…", "8. Monday 9. Tuesday…"):
    # they check the repetition penalty.
    "Give me three tips for learning to cook at home.",
    "List the days of the week.",
    # 727 tokens: the prompt runs in three parts (src/backend/local/mod.rs, PREFILL_CHUNK)
    # and fills more than the prompt cache keeps by default.
    "Here are my notes from the week:\n"
    + "".join(f"{i}. Met team {'ABCDEFGH'[i % 8]} about project {i * 7 % 13}; next step: {['review', 'draft', 'call', 'ship'][i % 4]}.\n" for i in range(1, 41))
    + "Which team did I meet most often?",
]


def chat_prompt(manifest, user):
    """The ChatML prompt, with the model's default system prompt, ending with the assistant header."""
    t = manifest["chat_template"]
    return (
        f"{t['turn_start']}system\n{t['default_system']}{t['turn_end']}\n"
        f"{t['turn_start']}user\n{user}{t['turn_end']}\n"
        f"{t['turn_start']}assistant\n"
    )


class Greedy:
    """Python onnxruntime greedy decoder on an edgeroute model directory."""

    def __init__(self, model_dir, threads=2, spin=False):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        with open(os.path.join(model_dir, "edgeroute-model.json")) as f:
            self.manifest = json.load(f)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # Same default as LocalBackend: no busy-waiting between operators.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.add_session_config_entry("session.force_spinning_stop", "1" if spin else "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        a = self.manifest["architecture"]
        self.layers, self.kv_heads, self.head_dim = a["num_layers"], a["num_kv_heads"], a["head_dim"]
        # The reply ends at an end-of-turn id or any other special token, as in LocalBackend.
        self.eos = set(self.manifest["eos_token_ids"]) | {
            i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special
        }

    def encode(self, user):
        return self.tokenizer.encode(chat_prompt(self.manifest, user), add_special_tokens=False).ids

    def empty_past(self):
        z = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        feed = {}
        for i in range(self.layers):
            feed[f"past_key_values.{i}.key"] = z
            feed[f"past_key_values.{i}.value"] = z
        return feed

    def step(self, ids, past):
        feed = dict(past)
        feed["input_ids"] = np.asarray([ids], np.int64)
        # One 1 per position: the past's and the new ones (the past is exactly as long as it is).
        seen = next(iter(past.values())).shape[2]
        feed["attention_mask"] = np.ones((1, seen + len(ids)), np.int64)
        names = ["logits"] + [f"present.{i}.{k}" for i in range(self.layers) for k in ("key", "value")]
        outs = self.session.run(names, feed)
        new_past = {}
        for j, name in enumerate(names[1:]):
            new_past[name.replace("present.", "past_key_values.")] = outs[j + 1]
        return outs[0][0, -1], new_past

    def generate(self, prompt_ids, max_new_tokens, on_token=None, repetition_penalty=REPETITION_PENALTY):
        penalty = np.float32(repetition_penalty)
        logits, past = self.step(prompt_ids, self.empty_past())
        out = []
        while len(out) < max_new_tokens:
            scores = logits
            ids, counts = np.unique(np.asarray(out[-REPETITION_WINDOW:], dtype=np.int64), return_counts=True)
            recurring = ids[counts >= REPETITION_MIN_COUNT]
            if penalty != 1 and len(recurring):
                # float32 arithmetic, like the Rust sampler: positive logits divided, negative
                # ones multiplied, each recurring token once.
                scores = logits.copy()
                v = logits[recurring]
                scores[recurring] = np.where(v > 0, v / penalty, v * penalty)
            tok = int(np.argmax(scores))
            if on_token:
                on_token(tok)
            if tok in self.eos:
                break
            out.append(tok)
            if len(out) == max_new_tokens:
                break
            logits, past = self.step([tok], past)
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=default_home())
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY)
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "local", "reference_greedy.json"),
    )
    args = ap.parse_args()
    model_dir = os.path.join(args.home, "models", args.model)
    g = Greedy(model_dir, args.threads)
    cases = []
    for p in PROMPTS:
        ids = g.encode(p)
        out = g.generate(ids, MAX_NEW_TOKENS, repetition_penalty=args.repetition_penalty)
        text = g.tokenizer.decode(out, skip_special_tokens=True)
        print(f"{p!r} -> {text!r}", file=sys.stderr)
        cases.append({"prompt": p, "prompt_ids": ids, "output_ids": out, "text": text})
    doc = {
        "model": args.model,
        "model_sha256": g.manifest["files"]["model.onnx.data"],
        "max_new_tokens": MAX_NEW_TOKENS,
        "repetition_penalty": args.repetition_penalty,
        "threads": args.threads,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
