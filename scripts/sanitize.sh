#!/usr/bin/env bash
# Run the C API's C/C++ programs and the fuzz regression corpus under AddressSanitizer and
# UndefinedBehaviorSanitizer.
#
#   scripts/sanitize.sh
#
# 1. Installs what is missing from Debian's packages (gcc, g++ with libasan/libubsan).
# 2. ffi/tests/api_check.c (C and C++) and the examples ffi/examples/kv_attention.c and
#    ggml_plugin.cpp, built by the normal tests with ATTNROT_SANITIZE=1, i.e.
#    -fsanitize=address,undefined -fno-sanitize-recover=all (any report aborts the program
#    and fails the test). The Rust library itself is not instrumented by gcc; ASan still
#    checks every access the C code makes and intercepts the allocator.
# 3. The regression corpus fuzz/corpus/<target>/ replayed by the cargo-fuzz binaries, which
#    are built with rustc's AddressSanitizer (library and harness instrumented), via
#    scripts/fuzz.sh's toolchain (installs cargo-fuzz if needed).
# Prints a summary; exit status 0 when everything is clean.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=0
for tool in gcc g++; do command -v "$tool" >/dev/null || need_install=1; done
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'int main(void){return 0;}\n' >"$probe/p.c"
if [ $need_install = 0 ] && ! gcc -fsanitize=address,undefined "$probe/p.c" -o "$probe/p" 2>/dev/null; then
  need_install=1
fi
if [ $need_install = 1 ]; then
  echo "sanitize.sh: installing gcc, g++ (libasan, libubsan) from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq gcc g++ >/dev/null
  gcc -fsanitize=address,undefined "$probe/p.c" -o "$probe/p"
fi
"$probe/p"

export CC=${CC:-gcc} CXX=${CXX:-g++}
export ATTNROT_SANITIZE=1
# Leak checking is on (ASan default); abort on the first UBSan report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

echo "== C/C++ programs under ASan+UBSan (gcc) =="
mkdir -p target
cargo test --release --test capi_header --test capi_examples 2>&1 | tee target/sanitize-c.log | grep -E '^test |test result'

echo "== fuzz regression corpus under ASan (rustc) =="
export RUSTC_BOOTSTRAP=1
FUZZ_TARGET_DIR=${ATTNROT_FUZZ_TARGET_DIR:-$PWD/target/fuzz}
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
(cd fuzz && CARGO_TARGET_DIR="$FUZZ_TARGET_DIR" cargo fuzz build -O) >&2
BIN="$FUZZ_TARGET_DIR/x86_64-unknown-linux-gnu/release"
fails=0
for dir in fuzz/corpus/*/; do
  t=$(basename "$dir")
  n=$(ls "$dir" | wc -l)
  if "$BIN/$t" -runs=0 "$dir" >"$FUZZ_TARGET_DIR/$t.replay.log" 2>&1; then
    echo "$t: $n inputs replayed under ASan: clean"
  else
    echo "$t: FAILED (see $FUZZ_TARGET_DIR/$t.replay.log)"
    fails=$((fails + 1))
  fi
done
echo "sanitize.sh: $fails corpus replay failures"
[ $fails -eq 0 ]
