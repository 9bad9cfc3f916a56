# gqa-serve, CPU build on Debian 12. Build:  docker build -t gqa-serve .
# Run the demo model:  docker run --rm -p 50051:50051 -p 9090:9090 gqa-serve
# Serve your own:      docker run --rm -v /models/m:/model -p 50051:50051 gqa-serve --model /model
FROM debian:12 AS build
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

FROM debian:12-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libspdlog1.10 libcpp-httplib0.11 \
      libabsl20220623 libpcre2-8-0 libutf8proc2 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/server/gqa-server /src/build/client/gqa-cli /src/build/server/gqa-convert \
     /src/build/server/gqa-make-checkpoint /usr/local/bin/
COPY --from=build /src/build/demo-model /opt/gqa/demo-model
EXPOSE 50051 9090
ENTRYPOINT ["gqa-server"]
CMD ["--model", "/opt/gqa/demo-model", "--kv_cache_memory", "256MiB"]
