#!/usr/bin/env bash
# Runs every cargo-fuzz target of `proto` and `relay` for a short smoke time (default 30 s each).
#   scripts/fuzz-smoke.sh [SECONDS] [TARGET...]     (TARGET: e.g. proto/cell or relay/tls)
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The stable toolchain is told to accept the
# sanitizer flags with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
# New inputs that libFuzzer finds are added to <crate>/fuzz/corpus/<target>/, which the ordinary
# test suite replays (proto::fuzzing and relay::fuzzing replay_corpus tests); shrink a corpus with
# scripts/fuzz-minimize.py before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-30}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for crate in proto relay; do
    while read -r t; do targets+=("$crate/$t"); done < <(cd "$crate/fuzz" && RUSTC_BOOTSTRAP=1 cargo fuzz list)
  done
fi
for ct in "${targets[@]}"; do
  crate=${ct%%/*}
  t=${ct#*/}
  cd "$root/$crate/fuzz"
  echo "== fuzz $crate/$t for ${secs}s"
  mkdir -p "corpus/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096 2>&1 \
    | grep -E '^(Done|INFO: seed corpus|==[0-9]+==|SUMMARY)' || true
  if [ -n "$(ls artifacts/"$t" 2>/dev/null)" ]; then
    echo "crash found for $crate/$t: see $crate/fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "all fuzz targets ran clean"
