#!/usr/bin/env bash
# Build stock upstream llama.cpp with upstream's own CMake: GGML_BACKEND_DL=ON,
# BUILD_SHARED_LIBS=ON, CPU only, no network code. Two trees:
#   pin     (default) the pinned tree from vendor/fetch.sh (ggml 0.25.3, 0c1e57098)
#   v0.5.0  llama.cpp v0.5.0 (ggml 0.25.1) from node-llama-cpp's git bundle
#           (scripts/fetch-npm-llama.sh tree, commit de3ff81); it has the server sources, so
#           llama-server is built too (without the web UI: no npm build, no download)
#
# Everything lives in the attnrot cache, outside the checkout, keyed by the pin, so every clone
# (CI runs in a fresh one) and every target dir on the machine shares one build:
#   $cache = ${ATTNROT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/attnrot}
#   $cache/venv                              cmake + ninja from PyPI (pinned): needs only python3
#   $cache/upstream-src-<sha12>              a private copy of the pinned tree: cmake's build dir
#                                            remembers its source dir, so the build must not
#                                            depend on which clone's vendor/ it came from
#   $cache/upstream-build/<isa-tag>-<sha12>  the build; its bin/ is printed on stdout
# (<sha12> = the first 12 hex digits of the pinned sdist's sha256 in vendor/fetch.sh.)
#   v0.5.0: source $cache/llama.cpp-v0.5.0-de3ff81 (already a private copy in the cache),
#           build  $cache/upstream-build/<isa-tag>-v0.5.0-de3ff81
#
# Up to date = every product exists, is newer than the tree's pin stamp, and the build's stamp
# records this script's content (content, not mtime: a fresh clone's files are all new).
# Otherwise, under a lock (tests start in parallel): reconfigure if the configuration changed,
# then ninja (incremental: seconds when nothing changed). The source copy appears atomically
# (copied to a temporary directory, then renamed).
#
# ISA: GGML_NATIVE is refused by GGML_BACKEND_DL, and -march=native would turn AMX on (its
# ggml-cpu AMX path crashes llama-perplexity on this machine kind, see DESIGN.md). So the flags
# are given explicitly: each of AVX, AVX2, BMI2, FMA, F16C, AVX512, AVX512_VBMI, AVX512_VNNI,
# AVX512_BF16, AVX_VNNI is ON when /proc/cpuinfo has it, AMX is always OFF. That is the same
# set as the in-process reference (-march=native minus AMX), and a CI machine of another CPU
# never meets an instruction it lacks. One CPU variant (libggml-cpu.so), no ALL_VARIANTS.
# ATTNROT_UPSTREAM_ARCH=avx2 turns AVX512* and AVX_VNNI off too (upstream's haswell variant's
# set, SSE42 AVX AVX2 BMI2 FMA F16C, as far as the CPU has them): an AVX2-only llama.cpp on an
# AVX-512 machine, in its own build directory (the tag names the ISA flags).
#
# Targets: llama-completion (the classic CLI; llama-cli itself needs the server sources),
# llama-simple, llama-perplexity, llama-bench, test-backend-ops, and the ggml-cpu module;
# v0.5.0: llama-server, llama-completion, llama-perplexity, test-backend-ops, ggml-cpu.
# All builds share one lock: only one upstream build runs at a time on the machine.
#
# Usage: scripts/build-upstream.sh [pin|v0.5.0]  -> builds if needed, prints the bin directory
#        ATTNROT_UPSTREAM_ARCH=avx2         -> the AVX2-only build (default: every ISA the CPU has)
#        ATTNROT_UPSTREAM_JOBS=N            -> parallel jobs (default 2)
set -euo pipefail

CMAKE_VERSION=3.31.10
NINJA_VERSION=1.13.2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self="$root/scripts/build-upstream.sh"
jobs=${ATTNROT_UPSTREAM_JOBS:-2}
cache="${ATTNROT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnrot}"

log() { echo "attnrot: $*" >&2; }

which=${1:-pin}
case "$which" in
pin)
  pin=$(sed -n 's/^SHA256=\([0-9a-f]\{64\}\)$/\1/p' "$root/vendor/fetch.sh")
  if [ -z "$pin" ]; then
    log "no SHA256=<64 hex> line in vendor/fetch.sh"
    exit 1
  fi
  key=${pin:0:12}
  src="$cache/upstream-src-$key"
  server=OFF
  targets=(llama-completion llama-simple llama-perplexity llama-bench test-backend-ops ggml-cpu)
  products=(llama-completion llama-simple llama-perplexity llama-bench test-backend-ops)
  ;;
v0.5.0)
  # The clone is made (and checked: bundle sha256, HEAD, ggml version) by fetch-npm-llama.sh;
  # its .attnrot-pin holds the commit.
  src=$("$root/scripts/fetch-npm-llama.sh" tree)
  pin=$(cat "$src/.attnrot-pin")
  key=v0.5.0-${pin:0:7}
  server=ON
  targets=(llama-server llama-completion llama-perplexity test-backend-ops ggml-cpu)
  products=(llama-server llama-completion llama-perplexity test-backend-ops)
  ;;
*)
  log "usage: $0 [pin|v0.5.0]"
  exit 2
  ;;
esac
products+=(libggml-cpu.so libggml-base.so libggml.so libllama.so)
script_sum=$(sha256sum "$self" | cut -d' ' -f1)

# --- ISA flags from the running CPU (x86-64 only) -------------------------------------------
isa_args=()
tag=generic
if [ "$(uname -m)" = "x86_64" ]; then
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  has() { [[ "$flags" == *" $1 "* ]]; }
  arch=${ATTNROT_UPSTREAM_ARCH:-native}
  case "$arch" in
  native) ;;
  avx2) has() { [[ "$1" != avx512* && "$1" != avx_vnni && "$flags" == *" $1 "* ]]; } ;;
  *)
    log "ATTNROT_UPSTREAM_ARCH=$arch: use avx2 or native"
    exit 2
    ;;
  esac
  tag=""
  for pair in SSE42:sse4_2 AVX:avx AVX2:avx2 BMI2:bmi2 FMA:fma F16C:f16c AVX512:avx512f \
    AVX512_VBMI:avx512vbmi AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16 AVX_VNNI:avx_vnni; do
    opt=${pair%%:*}
    feat=${pair#*:}
    if has "$feat"; then
      isa_args+=("-DGGML_$opt=ON")
      tag="$tag${tag:+-}$(echo "$opt" | tr 'A-Z_' 'a-z-')"
    else
      isa_args+=("-DGGML_$opt=OFF")
    fi
  done
  isa_args+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  [ -n "$tag" ] || tag=x64
fi

build="$cache/upstream-build/$tag-$key"
bin="$build/bin"
done_stamp="$build/.attnrot-built"

# --- fast path: built by this script's content, products newer than the pin stamp ------------
up_to_date() {
  local p
  [ -f "$src/.attnrot-pin" ] && [ "$(cat "$src/.attnrot-pin")" = "$pin" ] || return 1
  [ -f "$done_stamp" ] && [ "$(cat "$done_stamp")" = "$script_sum" ] || return 1
  for p in "${products[@]}"; do
    [ -e "$bin/$p" ] || return 1
    [ "$bin/$p" -nt "$src/.attnrot-pin" ] || return 1
  done
}
if up_to_date; then
  echo "$bin"
  exit 0
fi

# Two builds may start at once (tests in parallel, several clones): serialize the whole build.
mkdir -p "$cache/upstream-build"
exec 9>"$cache/upstream-build/.lock"
flock 9
if up_to_date; then
  echo "$bin"
  exit 0
fi

# --- the pinned tree, copied once into the cache ---------------------------------------------
if [ "$which" = pin ] && { [ ! -f "$src/.attnrot-pin" ] || [ "$(cat "$src/.attnrot-pin")" != "$pin" ]; }; then
  tree=$("$root/vendor/fetch.sh")
  log "copying the pinned tree $tree to $src"
  stage=$(mktemp -d "$cache/.upstream-src.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  cp -a "$tree/." "$stage/"
  # The pin stamp of the copy is the pin this script checked (an ATTNROT_LLAMA_CPP_DIR tree
  # has none of its own); keep the original's mtime when it has one.
  echo "$pin" >"$stage/.attnrot-pin"
  [ -f "$tree/.attnrot-pin" ] && touch -r "$tree/.attnrot-pin" "$stage/.attnrot-pin"
  rm -rf "$src"
  mv -T "$stage" "$src"
  trap - EXIT
fi

# --- cmake + ninja from PyPI in the cache's venv ---------------------------------------------
venv="$cache/venv"
py=$(command -v python3 || command -v python || true)
if [ -z "$py" ]; then
  log "python3 is needed to obtain cmake (pip package cmake==$CMAKE_VERSION)"
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$py" -m venv "$venv"
fi
want="cmake==$CMAKE_VERSION ninja==$NINJA_VERSION"
if ! "$venv/bin/cmake" --version 2>/dev/null | grep -q "version $CMAKE_VERSION\$" ||
  [[ "$("$venv/bin/ninja" --version 2>/dev/null)" != "$NINJA_VERSION"* ]]; then
  log "installing $want into $venv (pip)"
  # shellcheck disable=SC2086
  if ! "$venv/bin/python" -m pip install --quiet $want >&2; then
    log "could not install $want through pip (offline?)"
    exit 1
  fi
fi
cmake="$venv/bin/cmake"
ninja="$venv/bin/ninja"

# --- configure (once) and build --------------------------------------------------------------
cfg=(
  -G Ninja "-DCMAKE_MAKE_PROGRAM=$ninja"
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=ON
  -DGGML_BACKEND_DL=ON
  -DGGML_NATIVE=OFF
  -DGGML_CPU_ALL_VARIANTS=OFF
  "${isa_args[@]}"
  -DGGML_CCACHE=OFF
  -DGGML_OPENMP=ON
  -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_RPC=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=ON
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_EXAMPLES=ON
  "-DLLAMA_BUILD_SERVER=$server"
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF
)
# v0.5.0's server embeds a web UI: never build it with npm nor download it (empty UI table).
[ "$server" = ON ] && cfg+=(-DLLAMA_USE_PREBUILT_UI=OFF)
stamp="$build/.attnrot-configure"
want_cfg="$(printf '%s\n' "${cfg[@]}" "$src" "$pin")"
start=$(date +%s)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_cfg" ]; then
  log "configuring upstream llama.cpp ($src) in $build"
  rm -rf "$build"
  mkdir -p "$build"
  "$cmake" -S "$src" -B "$build" "${cfg[@]}" >"$build/configure.log" 2>&1 || {
    tail -n 40 "$build/configure.log" >&2
    log "cmake configure failed (full log: $build/configure.log)"
    exit 1
  }
  printf '%s' "$want_cfg" >"$stamp"
fi
rm -f "$done_stamp"
log "building ${targets[*]} with -j$jobs in $build (first time: about 15-25 minutes on 2 cores)"
"$cmake" --build "$build" -j "$jobs" --target "${targets[@]}" >"$build/build.log" 2>&1 || {
  tail -n 40 "$build/build.log" >&2
  log "upstream build failed (full log: $build/build.log)"
  exit 1
}
for p in "${products[@]}"; do
  if [ ! -e "$bin/$p" ]; then
    log "build finished but $bin/$p is missing"
    exit 1
  fi
  touch "$bin/$p"
done
echo "$script_sum" >"$done_stamp"
log "upstream built in $(($(date +%s) - start)) s: $bin"
echo "$bin"
