# gqa-serve images. Two targets in this one file:
#
# CPU image (Debian 12), the default target (the last stage of this file):
#   Build:               docker build -t gqa-serve:0.1.0 .   (the tag deploy/kubernetes uses)
#   Run the demo model:  docker run --rm -p 50051:50051 -p 50052:50052 -p 8000:8000 gqa-serve
#   Serve your own:      docker run --rm -v /models/m:/model -p 50051:50051 gqa-serve --model /model
#
# CUDA image (CUDA 13.0 on Ubuntu 24.04), the target `cuda`:
#   Build:               docker build --target cuda -t gqa-serve:0.1.0-cuda .
#   Also for A100:       docker build --target cuda --build-arg CUDA_ARCHS="80;90a" -t gqa-serve:cuda .
#   Run the demo model:  docker run --rm --gpus all -p 50051:50051 -p 50052:50052 -p 8000:8000 gqa-serve:cuda
#   Serve your own:      docker run --rm --gpus all -v /models/m:/model -p 50051:50051 -p 50052:50052 \
#                          gqa-serve:cuda --model /model --backend cuda --gpu_memory_utilization 0.9
#   The host needs the NVIDIA driver (one that supports CUDA 13.0) and the NVIDIA Container
#   Toolkit, which mounts the driver (libcuda) into the container for --gpus.
#   Build arguments:
#     CUDA_ARCHS    CMAKE_CUDA_ARCHITECTURES of the kernels, default "90a" (H100/H200, the
#                   only GPUs tested); "80;90a" adds A100 (sm_80: not yet built or run).
#     CUDA_VERSION  tag prefix of the nvidia/cuda base images, default 13.0.0.
#
# Targets build only the stages they need with BuildKit (the default builder since Docker 23), so
# the CPU build never pulls the CUDA images. The CPU runtime stage must stay the LAST stage: a
# build without --target produces the last stage.
#
# The runtime images run as the unprivileged user gqa (uid and gid 10001, no home, no shell), the
# user deploy/kubernetes asks for (runAsNonRoot).
#
# Apt packages are not pinned to versions (hadolint DL3008, ignored below on purpose): Debian's
# and Ubuntu's mirrors keep only the current version of a package in a suite, so a pin such as
# libgrpc++1.51=1.51.1-3+b1 stops building at the next point release or security update: of the
# CPU image's 9 runtime packages, 5 have already moved within Debian 12 (libprotobuf32
# 3.21.12-3+deb12u1, libcpp-httplib0.11 0.11.4+ds-1+deb12u1, libabsl20220623 20220623.1-1+deb12u2,
# libpcre2-8-0 10.42-1+deb12u2, ca-certificates 20250419~deb12u2, as apt-cache policy reports
# them in December 2026), and each move would have broken a pinned build. The
# package names pin the ABI (libgrpc++1.51, libabsl20220623, ...) and the base images' tags pin
# the release (debian:12, CUDA 13.0 on Ubuntu 24.04); pin a base image by digest for builds
# that must be byte-for-byte reproducible.

ARG CUDA_VERSION=13.0.0

# ---- CPU build (Debian 12) -------------------------------------------------------------------
FROM debian:12 AS build
# hadolint ignore=DL3008
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      build-essential cmake ninja-build pkg-config libgrpc++-dev protobuf-compiler-grpc \
      libprotobuf-dev protobuf-compiler libabsl-dev libspdlog-dev libgtest-dev nlohmann-json3-dev \
      libcpp-httplib-dev libpcre2-dev libutf8proc-dev ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proto proto
COPY kernels kernels
COPY server server
COPY client client
COPY tests tests
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGQA_CUDA=OFF -DGQA_BUILD_TESTS=OFF \
 && cmake --build build --target gqa-server gqa-cli gqa-convert gqa-make-checkpoint demo-model

# ---- CUDA build (CUDA 13.0 devel, Ubuntu 24.04) ----------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS cuda-build
ARG CUDA_ARCHS="90a"
# The same libraries as the CPU build, under Ubuntu 24.04's names (the -dev names are the same).
# hadolint ignore=DL3008
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      build-essential cmake ninja-build pkg-config libgrpc++-dev protobuf-compiler-grpc \
      libprotobuf-dev protobuf-compiler libabsl-dev libspdlog-dev nlohmann-json3-dev \
      libcpp-httplib-dev libpcre2-dev libutf8proc-dev ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proto proto
COPY kernels kernels
COPY server server
COPY client client
COPY tests tests
# gqa-bench exists only when CMake found the CUDA toolkit, so asking for it also asserts that.
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGQA_CUDA=ON -DGQA_BUILD_TESTS=OFF \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS}" \
 && cmake --build build --target gqa-server gqa-cli gqa-convert gqa-make-checkpoint demo-model gqa-bench

# ---- CUDA runtime: docker build --target cuda -t gqa-serve:cuda . ----------------------------
# The runtime image already has the CUDA runtime and math libraries (libcudart, libcublas).
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS cuda
# hadolint ignore=DL3008
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51t64 libgrpc29t64 libprotobuf32t64 libspdlog1.12 libcpp-httplib0.14t64 \
      libabsl20220623t64 libpcre2-8-0 libutf8proc3 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=cuda-build /src/build/server/gqa-server /src/build/client/gqa-cli /src/build/server/gqa-convert \
     /src/build/server/gqa-make-checkpoint /src/build/client/gqa-bench /usr/local/bin/
COPY --from=cuda-build /src/build/demo-model /opt/gqa/demo-model
# Fail the build if a shared library is missing; the driver's libraries (libcuda, libnvidia-*)
# are absent here on purpose: the NVIDIA Container Toolkit mounts them at `docker run --gpus`.
# hadolint ignore=DL4006
RUN missing="$(ldd /usr/local/bin/gqa-* | grep 'not found' | grep -v -e 'libcuda\.so' -e 'libnvidia-' || true)"; \
    if [ -n "$missing" ]; then echo "missing shared libraries:"; echo "$missing"; exit 1; fi
RUN groupadd --system --gid 10001 gqa \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gqa
USER 10001:10001
EXPOSE 50051 50052 8000
ENTRYPOINT ["gqa-server"]
CMD ["--model", "/opt/gqa/demo-model", "--backend", "cuda"]

# ---- CPU runtime: the default target, keep it last --------------------------------------------
FROM debian:12-slim AS cpu
# hadolint ignore=DL3008
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libspdlog1.10 libcpp-httplib0.11 \
      libabsl20220623 libpcre2-8-0 libutf8proc2 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/server/gqa-server /src/build/client/gqa-cli /src/build/server/gqa-convert \
     /src/build/server/gqa-make-checkpoint /usr/local/bin/
COPY --from=build /src/build/demo-model /opt/gqa/demo-model
RUN groupadd --system --gid 10001 gqa \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gqa
USER 10001:10001
EXPOSE 50051 50052 8000
ENTRYPOINT ["gqa-server"]
CMD ["--model", "/opt/gqa/demo-model", "--kv_cache_memory", "256MiB"]
