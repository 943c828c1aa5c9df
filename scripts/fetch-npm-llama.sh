#!/usr/bin/env bash
# llama.cpp v0.5.0 (ggml 0.25.1, backend API 2) as npm ships it, through the ordinary npm client,
# pinned and sha256-verified, cached outside the repository (nothing of it is committed):
#
#   node-llama-cpp@3.22.1               JS library + llama/gitRelease.bundle (the llama.cpp tree
#                                       as one squashed git commit, de3ff81, of tag v0.5.0 = 0ad4a86)
#   @node-llama-cpp/linux-x64@3.22.1    prebuilt shared libraries of that tree (dynamic backends,
#                                       one libggml-cpu-<family>.so per CPU family), built by
#                                       node-llama-cpp's CI, not by us
#
# $cache = ${ATTNROT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/attnrot}
#   $cache/npm/<package>-3.22.1.tgz       the verified tarballs (`npm pack`)
#   $cache/llama.cpp-v0.5.0-de3ff81       `git clone` of the bundle (mode: tree)
#   $cache/npm-3.22.1                     node_modules with node-llama-cpp + the prebuilt (mode: install)
#
# Install: `npm install --ignore-scripts --omit=optional` of the two verified tarballs (their JS
# dependencies come from the registry); node-llama-cpp's postinstall, which may download or
# build llama.cpp from GitHub, never runs, and its optional GPU packages are not fetched. At
# run time set NODE_LLAMA_CPP_SKIP_DOWNLOAD=true and use getLlama({build: "never"}).
#
# Usage: scripts/fetch-npm-llama.sh [install|tree|tarballs]   -> prints the directory on stdout
set -euo pipefail

VER=3.22.1
MAIN=node-llama-cpp
MAIN_TGZ=node-llama-cpp-$VER.tgz
MAIN_SHA256=a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f
PREBUILT=@node-llama-cpp/linux-x64
PREBUILT_TGZ=node-llama-cpp-linux-x64-$VER.tgz
PREBUILT_SHA256=0d953e1503d5ab4608d8ed5b739132308c81ac05ffeb760d2a7f30e08a9f90e0
BUNDLE_SHA256=5f5d1105d5df040738d87b8290e5d17e7362131cdcfdb0831618e0ea528b4a51
BUNDLE_HEAD=de3ff815ea7d559ee917f063901b8986f038abc6
GGML_VERSION=0.25.1

mode=${1:-install}
log() { echo "attnrot: $*" >&2; }
cache="${ATTNROT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnrot}"
mkdir -p "$cache/npm"
exec 9>"$cache/npm/.lock"
flock 9
verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

need() {
  command -v "$1" >/dev/null || {
    log "$1 is needed ($2)"
    exit 1
  }
}

# --- the two tarballs -----------------------------------------------------------------------
fetch() { # spec file sha256
  local out="$cache/npm/$2" tmpd
  verify "$out" "$3" && return 0
  need npm "npm pack $1"
  tmpd=$(mktemp -d "$cache/npm/dl.XXXXXX")
  log "npm pack $1 into $cache/npm"
  if ! (cd "$tmpd" && npm pack --silent "$1" >/dev/null); then
    rm -rf "$tmpd"
    log "could not fetch $1 from the npm registry (offline?). Put $2 (sha256 $3) into $cache/npm and retry."
    exit 1
  fi
  if ! verify "$tmpd/$2" "$3"; then
    log "checksum mismatch for $2: got $(sha256sum "$tmpd/$2" | cut -d' ' -f1), expected $3"
    rm -rf "$tmpd"
    exit 1
  fi
  mv -f "$tmpd/$2" "$out"
  rm -rf "$tmpd"
}
fetch "$MAIN@$VER" "$MAIN_TGZ" "$MAIN_SHA256"
fetch "$PREBUILT@$VER" "$PREBUILT_TGZ" "$PREBUILT_SHA256"

case "$mode" in
tarballs)
  echo "$cache/npm"
  ;;
tree)
  tree="$cache/llama.cpp-v0.5.0-${BUNDLE_HEAD:0:7}"
  if [ ! -f "$tree/.attnrot-pin" ] || [ "$(cat "$tree/.attnrot-pin")" != "$BUNDLE_HEAD" ]; then
    need git "git clone of llama/gitRelease.bundle"
    stage=$(mktemp -d "$cache/.npm-tree.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    tar -xzf "$cache/npm/$MAIN_TGZ" -C "$stage" package/llama/gitRelease.bundle
    bundle="$stage/package/llama/gitRelease.bundle"
    if ! verify "$bundle" "$BUNDLE_SHA256"; then
      log "gitRelease.bundle checksum mismatch"
      exit 1
    fi
    git clone -q "$bundle" "$stage/tree" 2>/dev/null
    head=$(git -C "$stage/tree" rev-parse HEAD)
    if [ "$head" != "$BUNDLE_HEAD" ]; then
      log "bundle HEAD is $head, expected $BUNDLE_HEAD"
      exit 1
    fi
    if ! grep -q "^set(GGML_VERSION_PATCH ${GGML_VERSION##*.})" "$stage/tree/ggml/CMakeLists.txt"; then
      log "the bundle's ggml is not $GGML_VERSION"
      exit 1
    fi
    echo "$BUNDLE_HEAD" >"$stage/tree/.attnrot-pin"
    rm -rf "$tree"
    mv -T "$stage/tree" "$tree"
    rm -rf "$stage"
    trap - EXIT
    log "llama.cpp v0.5.0 tree (ggml $GGML_VERSION) ready: $tree"
  fi
  echo "$tree"
  ;;
install)
  dir="$cache/npm-$VER"
  stamp="$dir/.attnrot-installed"
  want="$MAIN_SHA256 $PREBUILT_SHA256 $(node --version 2>/dev/null || echo no-node)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] ||
    [ ! -f "$dir/node_modules/$MAIN/package.json" ] ||
    [ ! -f "$dir/node_modules/$PREBUILT/bins/linux-x64/libggml-base.so" ]; then
    need node "node-llama-cpp needs Node >= 20"
    need npm "npm install"
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '{"name":"attnrot-npm-host","private":true}\n' >"$dir/package.json"
    log "npm install $MAIN@$VER + $PREBUILT@$VER into $dir (scripts off, optional GPU packages omitted)"
    if ! (cd "$dir" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --silent --no-audit --no-fund \
      --ignore-scripts --omit=optional "$cache/npm/$MAIN_TGZ" "$cache/npm/$PREBUILT_TGZ" >&2); then
      log "npm install failed (offline? the JS dependencies of $MAIN come from the registry)"
      exit 1
    fi
    echo "$want" >"$stamp"
  fi
  echo "$dir"
  ;;
*)
  log "usage: $0 [install|tree|tarballs]"
  exit 2
  ;;
esac
