#!/usr/bin/env python3
"""The Python onnxruntime side of examples/local_bench.rs: the same greedy loop, same model file,
same thread count. Prints one JSON object on stdout. With --huge-pages and --bound-cache it also
does what LocalBackend does beyond the plain loop.

    <home>/tools/venv/bin/python scripts/bench_python.py --model-dir DIR --threads 2 \
        --system "You are a helpful assistant." --prompt "..." --max-new-tokens 128 --runs 3
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_greedy import Greedy  # noqa: E402


def vm_hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def collapse_to_huge_pages():
    """What LocalBackend does after opening its session (src/backend/local/hugepages.rs), done
    here with ctypes: MADV_COLLAPSE every 2 MiB chunk of private anonymous memory whose pages
    are all present and this process's own. Returns the bytes collapsed (0 where the system cannot)."""
    import ctypes

    huge, page, done = 2 << 20, os.sysconf("SC_PAGE_SIZE"), 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps.read().splitlines():
            f = line.split()
            if len(f) < 5 or f[4] != "0" or not f[1].startswith("rw") or not f[1].endswith("p"):
                continue
            if len(f) > 5 and f[5] != "[heap]":
                continue
            start, end = (int(x, 16) for x in f[0].split("-"))
            chunk = -(-start // huge) * huge
            while chunk + huge <= end:
                pagemap.seek(chunk // page * 8)
                entries = pagemap.read(huge // page * 8)
                # Bits 63 (present) and 56 (mapped by this process only), as the Rust side.
                own = all(entries[i + 7] & 0x81 == 0x81 for i in range(0, len(entries), 8))
                if own and libc.madvise(chunk, huge, 25) == 0:  # 25 = MADV_COLLAPSE
                    done += huge
                chunk += huge
    return done


class BoundCache:
    """What LocalBackend does with the KV cache (src/backend/local/decoder.rs), done here with
    ONNX Runtime's IO binding: one buffer per layer's keys and values, with room for the whole
    generation, bound as both the past and the present, so each run writes its new positions in
    place instead of copying the cache. The logits go to a bound buffer too."""

    def __init__(self, g, capacity):
        import onnxruntime as ort

        self.io = g.session.io_binding()
        self.len = 0
        self.buffers = []
        for i in range(g.layers):
            for kind in ("key", "value"):
                v = ort.OrtValue.ortvalue_from_numpy(np.empty((1, g.kv_heads, capacity, g.head_dim), np.float32))
                self.io.bind_ortvalue_input(f"past_key_values.{i}.{kind}", v)
                self.io.bind_ortvalue_output(f"present.{i}.{kind}", v)
                self.buffers.append(v)
        self.logits = np.empty((1, 1, g.manifest["architecture"]["vocab_size"]), np.float32)
        self.io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))

    def step(self, session, ids):
        self.len += len(ids)
        self.io.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        self.io.bind_cpu_input("attention_mask", np.ones((1, self.len), np.int64))
        session.run_with_iobinding(self.io)
        return self.logits[0, -1]


def bind_cache(g, capacity):
    """Makes `g` (a reference_greedy.Greedy) decode with a BoundCache of `capacity` positions."""
    g.empty_past = lambda: BoundCache(g, capacity)
    g.step = lambda ids, cache: (cache.step(g.session, ids), cache)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--system", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--spin", type=int, default=0, help="1: let ORT threads busy-wait (as the Rust side)")
    ap.add_argument("--huge-pages", type=int, default=0, help="1: move the session's memory to 2 MiB pages")
    ap.add_argument("--bound-cache", type=int, default=0,
                    help="1: keep the KV cache in buffers bound in place (as the Rust side) instead of the plain loop's")
    args = ap.parse_args()

    g = Greedy(args.model_dir, args.threads, spin=bool(args.spin))
    huge_page_bytes = collapse_to_huge_pages() if args.huge_pages else 0
    t = g.manifest["chat_template"]
    text = (
        f"{t['turn_start']}system\n{args.system}{t['turn_end']}\n"
        f"{t['turn_start']}user\n{args.prompt}{t['turn_end']}\n{t['turn_start']}assistant\n"
    )
    ids = g.tokenizer.encode(text, add_special_tokens=False).ids
    if args.bound_cache:
        bind_cache(g, len(ids) + args.max_new_tokens)
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
                "huge_page_mib": huge_page_bytes >> 20,
            }
        )
    )


if __name__ == "__main__":
    main()
