#!/usr/bin/env bash
# The llama.cpp tree (ggml 0.26.0, backend API 3) that crates.io `llama-cpp-sys-2` 0.1.161
# vendors, through the ordinary cargo client, pinned and sha256-verified, cached outside the
# repository (nothing of it is committed):
#
#   cargo fetch of a scratch manifest that depends on `llama-cpp-sys-2 = "=0.1.161"`
#   ($cache/crates-probe), then the verified .crate from cargo's registry cache is unpacked
#   into $cache/llama-cpp-sys-2-0.1.161 (its `llama.cpp/` subtree is the tree: ggml, src,
#   common, tools; no tests/).
#
# $cache = ${ATTNROT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/attnrot}
# Usage: scripts/fetch-crate-llama.sh   -> prints the llama.cpp tree's directory on stdout
set -euo pipefail

CRATE=llama-cpp-sys-2
VER=0.1.161
# crates.io checksum of llama-cpp-sys-2-0.1.161.crate (Cargo.lock `checksum`)
SHA256=e9bea77fde41bbc15a278891cd5edd2ba07c5260d162614b41080ba1f100b39b
GGML_VERSION=0.26.0

log() { echo "attnrot: $*" >&2; }
cache="${ATTNROT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnrot}"
dest="$cache/$CRATE-$VER"
tree="$dest/llama.cpp"
if [ -f "$dest/.attnrot-pin" ] && [ "$(cat "$dest/.attnrot-pin")" = "$SHA256" ]; then
  echo "$tree"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.crate-llama.lock"
flock 9
if [ -f "$dest/.attnrot-pin" ] && [ "$(cat "$dest/.attnrot-pin")" = "$SHA256" ]; then
  echo "$tree"
  exit 0
fi
command -v cargo >/dev/null || {
  log "cargo is needed (cargo fetch $CRATE $VER)"
  exit 1
}
probe="$cache/crates-probe"
mkdir -p "$probe/src"
cat >"$probe/Cargo.toml" <<EOF
[package]
name = "crates-probe"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$CRATE = "=$VER"
EOF
echo 'fn main() {}' >"$probe/src/main.rs"
log "cargo fetch $CRATE $VER"
if ! (cd "$probe" && cargo fetch -q >&2); then
  log "cargo fetch $CRATE $VER failed (offline?)"
  exit 1
fi
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
crate=$(ls "$cargo_home"/registry/cache/*/"$CRATE-$VER.crate" 2>/dev/null | head -n1 || true)
if [ -z "$crate" ]; then
  log "$CRATE-$VER.crate not in $cargo_home/registry/cache after cargo fetch"
  exit 1
fi
got=$(sha256sum "$crate" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  log "checksum mismatch for $crate: got $got, expected $SHA256"
  exit 1
fi
stage=$(mktemp -d "$cache/.crate-llama.XXXXXX")
trap 'rm -rf "$stage"' EXIT
tar -xzf "$crate" -C "$stage"
cm="$stage/$CRATE-$VER/llama.cpp/ggml/CMakeLists.txt"
if ! grep -q "^set(GGML_VERSION_MINOR $(echo "$GGML_VERSION" | cut -d. -f2))" "$cm" ||
  ! grep -q "^set(GGML_VERSION_PATCH ${GGML_VERSION##*.})" "$cm"; then
  log "the crate's ggml is not $GGML_VERSION"
  exit 1
fi
echo "$SHA256" >"$stage/$CRATE-$VER/.attnrot-pin"
rm -rf "$dest"
mv -T "$stage/$CRATE-$VER" "$dest"
rm -rf "$stage"
trap - EXIT
log "llama.cpp tree of $CRATE $VER (ggml $GGML_VERSION) ready: $tree"
echo "$tree"
