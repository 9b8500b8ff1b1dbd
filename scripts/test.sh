#!/usr/bin/env bash
# Every test of the workspace: unit tests, published test vectors, property tests, the replay
# of the checked-in fuzz corpora, and the interop tests against a real C tor (`tor` on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
