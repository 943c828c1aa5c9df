#!/usr/bin/env bash
# Build the llama-cpp-2 test host: tests/hosts/llama-cpp-2, a Rust program on crates.io
# `llama-cpp-2` 0.1.160 with its `dynamic-backends` feature (which builds crates.io
# `llama-cpp-sys-2` 0.1.161's vendored llama.cpp, ggml 0.26.0, backend API 3, with upstream's
# CMake: GGML_BACKEND_DL=ON, GGML_CPU_ALL_VARIANTS=ON, shared libraries), as a user of the
# crate would build it: `cargo build --release --locked`. Versions come from the committed
# tests/hosts/llama-cpp-2/Cargo.lock (crates.io checksums).
#
# The crate's build needs cmake and libclang (bindgen); a fresh machine has neither, so both
# come from PyPI into the cache's venv (the one scripts/build-upstream.sh uses):
#   cmake==3.31.10, ninja==1.13.2       (same pins as build-upstream.sh)
#   libclang==18.1.1                    (wheel sha256-verified, --require-hashes)
# and bindgen gets the compiler's own include dir (stddef.h) through BINDGEN_EXTRA_CLANG_ARGS.
#
# Everything lives in the attnrot cache, keyed by the content of the host's sources:
#   $cache/crate-host/<key>/            copy of tests/hosts/llama-cpp-2 + target/ (key: its
#                                       Cargo.toml + Cargo.lock)
#   $dir/bin/test-backend-ops           the pin's tests/test-backend-ops.cpp (public ggml API
#                                       only) compiled against 0.26.0's headers and libraries
#   prints the path of $dir/run on stdout: the host binary run as `cargo run` runs it (the
#   crate's libraries from its OUT_DIR on LD_LIBRARY_PATH; the backends directory, with the 14
#   libggml-cpu-<variant>.so, is baked into the binary by the crate).
# One upstream build at a time on the machine (the lock of build-upstream.sh).
# First build: long (libllama + 14 CPU variants of ggml-cpu) — opt-in only
# (ATTNROT_TEST_GGML026=1: tests/llama_cpp_2.rs, tests/backend_ops.rs g026_*).
#
# Usage: scripts/build-crate-host.sh     ATTNROT_UPSTREAM_JOBS=N -> parallel jobs (default 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
CMAKE_VERSION=3.31.10
NINJA_VERSION=1.13.2
LIBCLANG_VERSION=18.1.1
# libclang-18.1.1-py2.py3-none-manylinux2010_x86_64.whl (PyPI)
LIBCLANG_SHA256=c533091d8a3bbf7460a00cb6c1a71da93bffe148f172c7d03b1c31fbf8aa2a0b
jobs=${ATTNROT_UPSTREAM_JOBS:-2}

log() { echo "attnrot: $*" >&2; }
cache="${ATTNROT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnrot}"
hostsrc="$root/tests/hosts/llama-cpp-2"
# The directory is keyed by the dependencies (a new lock file = a new llama.cpp build); the
# program and this script are checked by content (a change = an incremental cargo build).
key=$(cat "$hostsrc/Cargo.toml" "$hostsrc/Cargo.lock" | sha256sum | cut -c1-12)
stamp=$(cat "$0" "$hostsrc/src/main.rs" "$root/vendor/fetch.sh" | sha256sum | cut -c1-64)
dir="$cache/crate-host/$key"
bin="$dir/target/release/attnrot-llama-cpp-2-host"
run="$dir/run"
if [ -x "$run" ] && [ -x "$dir/bin/test-backend-ops" ] && [ "$(cat "$dir/.built" 2>/dev/null)" = "$stamp" ]; then
  echo "$run"
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || { log "the llama-cpp-2 host is built on x86_64 only"; exit 1; }
command -v cargo >/dev/null || { log "cargo is needed"; exit 1; }
mkdir -p "$cache/upstream-build"
exec 9>"$cache/upstream-build/.lock"
log "waiting for the upstream build lock"
flock 9

# --- cmake, ninja, libclang from PyPI in the cache's venv -------------------------------------
venv="$cache/venv"
py=$(command -v python3 || command -v python || true)
[ -n "$py" ] || { log "python3 is needed (cmake and libclang come from PyPI)"; exit 1; }
[ -x "$venv/bin/python" ] || { log "creating $venv"; "$py" -m venv "$venv"; }
if ! "$venv/bin/cmake" --version 2>/dev/null | grep -q "version $CMAKE_VERSION\$" ||
  [[ "$("$venv/bin/ninja" --version 2>/dev/null)" != "$NINJA_VERSION"* ]]; then
  log "installing cmake==$CMAKE_VERSION ninja==$NINJA_VERSION into $venv (pip)"
  "$venv/bin/python" -m pip install --quiet "cmake==$CMAKE_VERSION" "ninja==$NINJA_VERSION" >&2 ||
    { log "pip install cmake/ninja failed (offline?)"; exit 1; }
fi
clang_dir() { "$venv/bin/python" -c 'import clang, os; print(os.path.join(os.path.dirname(clang.__file__), "native"))' 2>/dev/null; }
if [ "$("$venv/bin/python" -m pip show libclang 2>/dev/null | sed -n 's/^Version: //p')" != "$LIBCLANG_VERSION" ]; then
  log "installing libclang==$LIBCLANG_VERSION into $venv (pip, hash-checked)"
  req=$(mktemp)
  echo "libclang==$LIBCLANG_VERSION --hash=sha256:$LIBCLANG_SHA256" >"$req"
  "$venv/bin/python" -m pip install --quiet --no-deps --require-hashes -r "$req" >&2 ||
    { rm -f "$req"; log "pip install libclang failed (offline?)"; exit 1; }
  rm -f "$req"
fi
libclang=$(clang_dir)
[ -f "$libclang/libclang.so" ] || { log "libclang.so not in $libclang"; exit 1; }

# --- the host ----------------------------------------------------------------------------------
mkdir -p "$dir/src"
cp "$hostsrc/Cargo.toml" "$hostsrc/Cargo.lock" "$dir/"
cp "$hostsrc/src/main.rs" "$dir/src/"
log "building the llama-cpp-2 host in $dir (cargo build --release --locked; long the first time)"
# The crate forwards every GGML_* and CMAKE_* variable to CMake: start from none of ours.
unset $(env | sed -n 's/^\(GGML_[A-Za-z0-9_]*\)=.*/\1/p; s/^\(CMAKE_[A-Za-z0-9_]*\)=.*/\1/p') 2>/dev/null || true
gcc_inc=$(gcc -print-file-name=include)
if ! (cd "$dir" &&
  PATH="$venv/bin:$PATH" \
    LIBCLANG_PATH="$libclang" \
    BINDGEN_EXTRA_CLANG_ARGS="-I$gcc_inc" \
    CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
    CARGO_TARGET_DIR="$dir/target" \
    RUSTFLAGS="" \
    nice -n 10 cargo build --release --locked -j "$jobs" >"$dir/build.log" 2>&1); then
  tail -n 30 "$dir/build.log" >&2
  log "llama-cpp-2 host build failed (full log: $dir/build.log)"
  exit 1
fi
# The crate links libllama/libggml dynamically from its OUT_DIR (no rpath): `cargo run` puts
# that directory on LD_LIBRARY_PATH, and so does this launcher.
lib=$(dirname "$(ls "$dir"/target/release/build/llama-cpp-sys-2-*/out/lib/libllama.so.0 | head -n1)")
[ -d "$lib" ] || { log "libllama.so.0 not found under $dir/target/release/build"; exit 1; }
cat >"$run" <<RUN
#!/bin/sh
# as \`cargo run --release\` runs it: the crate's libraries on LD_LIBRARY_PATH
LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$bin" "\$@"
RUN
chmod +x "$run"

# --- test-backend-ops against these libraries --------------------------------------------------
# The crate's tree has no tests/. The pin's tests/test-backend-ops.cpp uses ggml's public
# headers only (ggml.h, ggml-alloc.h, ggml-backend.h, ggml-cpp.h), so it is compiled against
# 0.26.0's headers and linked to the crate's libggml/libggml-base (rpath): the pin's test
# cases, run by 0.26.0's ggml, compared with 0.26.0's CPU backend (found through the backends
# directory the crate compiled into libggml).
pin_tree=$("$root/vendor/fetch.sh")
inc="$lib/../include" # the crate's CMake install of 0.26.0's public headers
[ -f "$inc/ggml-backend.h" ] || { log "no ggml headers in $inc"; exit 1; }
mkdir -p "$dir/bin"
log "compiling the pin's test-backend-ops against ggml 0.26.0 ($inc)"
if ! nice -n 10 g++ -std=c++17 -O2 -I"$inc" "$pin_tree/tests/test-backend-ops.cpp" \
  -o "$dir/bin/test-backend-ops.tmp" -L"$lib" -lggml -lggml-base -Wl,-rpath,"$lib" -pthread \
  >"$dir/test-backend-ops.log" 2>&1; then
  tail -n 20 "$dir/test-backend-ops.log" >&2
  log "test-backend-ops build failed (full log: $dir/test-backend-ops.log)"
  exit 1
fi
mv "$dir/bin/test-backend-ops.tmp" "$dir/bin/test-backend-ops"

echo "$stamp" >"$dir/.built"
log "llama-cpp-2 host ready: $run (and $dir/bin/test-backend-ops)"
echo "$run"
