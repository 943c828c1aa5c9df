#!/usr/bin/env bash
# The project's test command (README): sets up everything it needs, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace
