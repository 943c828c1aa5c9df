#!/usr/bin/env bash
# The project's test command (README, CI): sets up everything it needs on first use (pinned
# upstream tree, in-process reference build, stock llama.cpp programs, the model), then runs
# the whole suite in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
# `cargo test` does not put the cdylib at target/release/libattnrot.so; the backend and C API
# tests load that file, so build every target first.
cargo build --release --workspace
cargo test --release --workspace "$@"
