#!/usr/bin/env bash
# Fuzz the C API (fuzz/, cargo-fuzz + libFuzzer + AddressSanitizer) on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 600 s, every target)
#
# * Installs cargo-fuzz (pinned) when missing; RUSTC_BOOTSTRAP=1 lets the stable compiler
#   take cargo-fuzz's -Zsanitizer flags.
# * Runs the targets one at a time (the machine is shared), each on a scratch corpus in
#   $ATTNROT_FUZZ_WORK (default target/fuzz-work/<target>) seeded from fuzz/corpus/<target>.
# * Prints per target: executions, exec/s, coverage, corpus size and findings (crash, leak,
#   timeout, OOM artifacts are left in the work dir, named <target>-crash-<sha1> etc.).
# * ATTNROT_FUZZ_MERGE=1: afterwards, add inputs with new coverage to fuzz/corpus/<target>
#   (the regression corpus the normal test suite replays: tests/capi_fuzz_corpus.rs).
# ATTNROT_FUZZ_TARGET_DIR: cargo target dir for the fuzz build (default target/fuzz).
# Exit status: 0 when no target found anything.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECS=${1:-600}
shift || true
ALL=(capi_queries capi_quantize capi_dequantize capi_vec_dot capi_rotate capi_attention capi_ggml diff_quant)
TARGETS=("${@:-${ALL[@]}}")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${ATTNROT_FUZZ_TARGET_DIR:-$PWD/target/fuzz}
WORK=${ATTNROT_FUZZ_WORK:-$PWD/target/fuzz-work}
mkdir -p "$WORK"

(cd fuzz && cargo fuzz build -O) >&2
BIN="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

status=0
printf '%-16s %12s %9s %8s %8s %s\n' target execs exec/s cov corpus findings
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t" "fuzz/corpus/$t"
  log="$WORK/$t.log"
  set +e
  "$BIN/$t" "$WORK/$t" "fuzz/corpus/$t" -max_total_time="$SECS" -max_len=4096 -timeout=30 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$WORK/$t-" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)
  rate=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' | tail -1)
  line=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$line")
  corp=$(sed -n 's/.*corp: \([0-9]*\)\/.*/\1/p' <<<"$line")
  found=$(ls "$WORK" | grep -cE "^$t-(crash|leak|timeout|oom|slow-unit)-" || true)
  if [ "$rc" -ne 0 ]; then status=1; fi
  printf '%-16s %12s %9s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${corp:-?}" \
    "$([ "$rc" -eq 0 ] && echo "none (rc 0), artifacts: $found" || echo "rc $rc, artifacts: $found, see $log")"
  if [ "${ATTNROT_FUZZ_MERGE:-0}" = 1 ]; then
    "$BIN/$t" -merge=1 "fuzz/corpus/$t" "$WORK/$t" >"$WORK/$t.merge.log" 2>&1 || true
  fi
done
exit $status
