#!/usr/bin/env bash
# The whole test suite (the README's second command; .ci/run calls it). Installs what is
# missing, builds the CPU-only configuration and, when a CUDA toolkit is present, the CUDA
# one, and runs every test: unit, end-to-end over gRPC, parity with transformers, and a fuzz
# smoke run of every parser (tests/fuzz/run.sh; $GQA_FUZZ_SECONDS per target, default 60).
# GPU tests skip with a visible message where no GPU exists.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

bash deploy/install-deps.sh --python

run_config() {  # build_dir, extra cmake args...
  local dir=$1
  shift
  echo "== configure and build $dir $*"
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGQA_PYTHON="$PWD/.venv/bin/python" "$@"
  cmake --build "$dir" -j "$jobs"
  echo "== test $dir"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs"
}

run_config build-cpu -DGQA_CUDA=OFF
echo "== fuzz smoke run: every parser for ${GQA_FUZZ_SECONDS:-60} s (ASan + UBSan)"
GQA_SEED_BUILD=build-cpu bash tests/fuzz/run.sh "${GQA_FUZZ_SECONDS:-60}"
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="$PATH:/usr/local/cuda/bin"
  run_config build-cuda -DGQA_CUDA=ON
  if ! nvidia-smi >/dev/null 2>&1; then
    echo "== no GPU on this machine: the CUDA kernel tests above were SKIPPED, not passed"
  fi
else
  echo "== no CUDA toolkit found: the CUDA configuration was not built"
fi
echo "== all tests passed"
