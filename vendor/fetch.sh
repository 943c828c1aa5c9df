#!/usr/bin/env bash
# Fetch the pinned upstream llama.cpp tree into vendor/llama.cpp (git-ignored).
#
# Source: the PyPI sdist llama-cpp-python==0.3.36, whose vendor/llama.cpp is
# ggml-org/llama.cpp@0c1e57098 (ggml 0.25.3). Downloaded with pip, verified by
# sha256, cached in ${ATTNROT_CACHE:-~/.cache/attnrot}; only vendor/llama.cpp is
# unpacked. Idempotent and safe to run concurrently (atomic rename).
#
# Usage: vendor/fetch.sh            -> prints the path of the tree
# Offline: set ATTNROT_LLAMA_CPP_DIR to an existing checkout of that commit.
set -euo pipefail

PKG=llama-cpp-python
VER=0.3.36
SDIST=llama_cpp_python-${VER}.tar.gz
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest="$here/llama.cpp"

if [ -n "${ATTNROT_LLAMA_CPP_DIR:-}" ]; then
  if [ ! -f "$ATTNROT_LLAMA_CPP_DIR/ggml/include/ggml.h" ]; then
    echo "attnrot: ATTNROT_LLAMA_CPP_DIR=$ATTNROT_LLAMA_CPP_DIR has no ggml/include/ggml.h" >&2
    exit 1
  fi
  echo "$ATTNROT_LLAMA_CPP_DIR"
  exit 0
fi

if [ -f "$dest/.attnrot-pin" ] && [ "$(cat "$dest/.attnrot-pin")" = "$SHA256" ]; then
  echo "$dest"
  exit 0
fi

cache="${ATTNROT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnrot}"
mkdir -p "$cache"
tarball="$cache/$SDIST"

verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if ! verify "$tarball"; then
  echo "attnrot: downloading $PKG==$VER (sdist) through pip into $cache" >&2
  tmpd=$(mktemp -d "$cache/dl.XXXXXX")
  trap 'rm -rf "$tmpd"' EXIT
  py=$(command -v python3 || command -v python || true)
  if [ -z "$py" ]; then
    echo "attnrot: python3 with pip is needed to fetch the pinned llama.cpp (or set ATTNROT_LLAMA_CPP_DIR)" >&2
    exit 1
  fi
  # --no-binary for this one package only (":all:" would rebuild its build backend from source).
  if ! "$py" -m pip download --quiet --no-deps --no-binary "$PKG" "$PKG==$VER" -d "$tmpd" >&2; then
    echo "attnrot: could not download $PKG==$VER from PyPI (offline?). Set ATTNROT_LLAMA_CPP_DIR to a llama.cpp checkout of commit 0c1e57098, or put $SDIST into $cache." >&2
    exit 1
  fi
  if ! verify "$tmpd/$SDIST"; then
    echo "attnrot: checksum mismatch for $SDIST (expected sha256 $SHA256)" >&2
    exit 1
  fi
  mv -f "$tmpd/$SDIST" "$tarball"
fi

stage=$(mktemp -d "$here/.unpack.XXXXXX")
tar -xzf "$tarball" -C "$stage" "llama_cpp_python-$VER/vendor/llama.cpp"
echo "$SHA256" > "$stage/llama_cpp_python-$VER/vendor/llama.cpp/.attnrot-pin"
if [ -e "$dest" ] && [ ! -f "$dest/.attnrot-pin" ]; then rm -rf "$dest"; fi
mv -T "$stage/llama_cpp_python-$VER/vendor/llama.cpp" "$dest" 2>/dev/null || true
rm -rf "$stage"
echo "$dest"
