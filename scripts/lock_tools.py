#!/usr/bin/env python3
"""Refreshes the SHA-256 hashes in scripts/tools.lock, the conversion tools setup.py installs.

tools.lock is a pip requirements file: every package the converter imports, with its
dependencies, pinned to one version and to the hashes of that version's wheels for x86_64 Linux
(the only host setup.py serves). setup.py installs it with `--require-hashes --no-deps
--only-binary=:all:`, so pip installs exactly these files or stops. To change a version, edit
its `name==version` line and run this script; it asks PyPI's simple index (the JSON form of
the API pip itself reads) for the files and rewrites the hashes. Lines are kept in order and
comments are kept.

    python3 scripts/lock_tools.py            # rewrite scripts/tools.lock in place
    python3 scripts/lock_tools.py --check    # exit 1 if the lock's hashes differ from PyPI's
"""

import argparse
import json
import os
import re
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LOCK = os.path.join(HERE, "tools.lock")
INDEX = "https://pypi.org/simple/{}/"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)")


def normalize(name):
    """PEP 503's normal form of a project name (what the index and wheel names agree on)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted_wheel(filename, name, version):
    """True for a wheel of `name` `version` that can install on x86_64 Linux: pure Python, or
    built for manylinux/musllinux x86_64 (CPython or abi3)."""
    if not filename.endswith(".whl"):
        return False
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        return False
    if normalize(parts[0]) != normalize(name) or parts[1] != version:
        return False
    platforms = parts[-1].split(".")
    return any(p == "any" or (p.startswith(("manylinux", "musllinux", "linux")) and p.endswith("x86_64"))
               for p in platforms)


def parse_lock(text):
    """The lock's pins in order: [(name, version, [comment lines before it])]. Hash lines and
    continuations are dropped (they are regenerated). Raises ValueError on a line it cannot read."""
    pins, comments = [], []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(raw)
            continue
        if line.startswith("--hash="):
            continue
        m = PIN.match(line)
        if not m:
            raise ValueError(f"tools.lock line {n}: expected `name==version`, got {raw!r}")
        pins.append((m.group(1), m.group(2), comments))
        comments = []
    return pins, comments


def render(pins, trailing, hashes):
    out = []
    for name, version, comments in pins:
        out.extend(comments)
        digests = hashes[(name, version)]
        out.append(f"{name}=={version} \\")
        for i, d in enumerate(digests):
            out.append(f"    --hash=sha256:{d}" + (" \\" if i + 1 < len(digests) else ""))
    out.extend(trailing)
    return "\n".join(out) + "\n"


def index_files(name):
    req = urllib.request.Request(INDEX.format(normalize(name)),
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["files"]


def wheel_hashes(name, version, files):
    digests = sorted({f["hashes"]["sha256"] for f in files
                      if wanted_wheel(f["filename"], name, version) and "sha256" in f.get("hashes", {})})
    if not digests:
        raise ValueError(f"PyPI has no x86_64 Linux or pure-Python wheel of {name}=={version}")
    return digests


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the lock is stale")
    args = ap.parse_args()
    with open(LOCK) as f:
        old = f.read()
    try:
        pins, trailing = parse_lock(old)
        hashes = {}
        for name, version, _ in pins:
            hashes[(name, version)] = wheel_hashes(name, version, index_files(name))
            print(f"{name}=={version}: {len(hashes[(name, version)])} wheels", file=sys.stderr)
    except (ValueError, OSError) as e:
        sys.exit(f"lock_tools: {e}")
    new = render(pins, trailing, hashes)
    if args.check:
        sys.exit(0 if new == old else "lock_tools: scripts/tools.lock differs from PyPI's hashes")
    tmp = LOCK + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, LOCK)
    print(f"wrote {LOCK}", file=sys.stderr)


if __name__ == "__main__":
    main()
