#!/usr/bin/env bash
# The test command (README and CI): formatting, lints, every unit/property/integration test, and
# a short run of every fuzz target's seed corpus. Installs what it needs first.
# Budget: under 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "install dependencies"
scripts/install-deps.sh clang llvm libelf-dev zlib1g-dev pkg-config m4 \
  protobuf-compiler libprotobuf-dev etcd-server

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "done"
