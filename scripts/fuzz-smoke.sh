#!/usr/bin/env bash
# Runs every cargo-fuzz target of `proto` for a short smoke time (default 30 s each).
#   scripts/fuzz-smoke.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The stable toolchain is told to accept the
# sanitizer flags with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
# New inputs that libFuzzer finds are added to proto/fuzz/corpus/<target>/, which the ordinary test
# suite replays (proto::fuzzing::tests::replay_corpus); commit the interesting ones.
set -euo pipefail
cd "$(dirname "$0")/../proto/fuzz"
secs=${1:-30}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "corpus/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096 2>&1 \
    | grep -E '^(Done|INFO: seed corpus|==[0-9]+==|SUMMARY)' || true
  if [ -n "$(ls artifacts/"$t" 2>/dev/null)" ]; then
    echo "crash found for $t: see proto/fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "all fuzz targets ran clean"
