#!/usr/bin/env python3
"""The Python onnxruntime side of examples/local_bench.rs: the same greedy loop, same model file,
same thread count. Prints one JSON object on stdout.

    <home>/tools/venv/bin/python scripts/bench_python.py --model-dir DIR --threads 2 \
        --system "You are a helpful assistant." --prompt "..." --max-new-tokens 128 --runs 3
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_greedy import Greedy  # noqa: E402


def vm_hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--system", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--spin", type=int, default=0, help="1: let ORT threads busy-wait (as the Rust side)")
    args = ap.parse_args()

    g = Greedy(args.model_dir, args.threads, spin=bool(args.spin))
    t = g.manifest["chat_template"]
    text = (
        f"{t['turn_start']}system\n{args.system}{t['turn_end']}\n"
        f"{t['turn_start']}user\n{args.prompt}{t['turn_end']}\n{t['turn_start']}assistant\n"
    )
    ids = g.tokenizer.encode(text, add_special_tokens=False).ids
    g.generate(ids, 8)  # warm-up
    ttfts, tps, counts = [], [], []
    cpu0 = time.process_time()
    for _ in range(args.runs):
        stamps = []
        start = time.perf_counter()
        out = g.generate(ids, args.max_new_tokens, on_token=lambda _t: stamps.append(time.perf_counter()))
        end = time.perf_counter()
        ttft = stamps[0] - start
        ttfts.append(ttft * 1000.0)
        tps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan"))
        counts.append(len(out))
        del end
    cpu_ms_per_token = (time.process_time() - cpu0) * 1000.0 / max(1, sum(counts))
    print(
        json.dumps(
            {
                "prompt_tokens": len(ids),
                "generated_tokens": counts[-1],
                "ttft_ms": statistics.median(ttfts),
                "decode_tokens_per_s": statistics.median(tps),
                "cpu_ms_per_token": cpu_ms_per_token,
                "peak_rss_mb": vm_hwm_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
