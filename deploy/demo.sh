#!/usr/bin/env bash
# The first command of the README: install what is missing, build, start gqa-server on the
# embedded demo model and stream a generation to gqa-cli. Leaves the server running unless
# --no-serve is given (then it stops it after the demo).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build --target gqa-server gqa-cli demo-model

port=${GQA_PORT:-50051}
metrics_port=${GQA_METRICS_PORT:-9090}
log=build/demo-server.log
build/server/gqa-server --model build/demo-model --port "$port" --metrics_port "$metrics_port" \
  --kv_cache_memory 256MiB >"$log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q "serving" "$log" 2>/dev/null && break
  kill -0 $server_pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
cat "$log"
echo
echo "== gqa-cli --info"
build/client/gqa-cli --server "localhost:$port" --info
echo
echo "== gqa-cli --text \"Once upon a time\" --max_new_tokens 32 --temperature 0.8 --seed 42"
echo "   (random weights: the text is gibberish, but it is text, streamed as it is generated)"
build/client/gqa-cli --server "localhost:$port" --text "Once upon a time" --max_new_tokens 32 \
  --temperature 0.8 --seed 42 --ignore_eos
echo
echo "== metrics: curl -s localhost:$metrics_port/metrics | grep gqa_step_duration_seconds_count"
curl -s "localhost:$metrics_port/metrics" | grep "^gqa_step_duration_seconds_count" || true
if [ "${1:-}" = "--no-serve" ]; then
  kill -TERM $server_pid
  wait $server_pid
else
  echo
  echo "gqa-server (pid $server_pid) keeps serving on localhost:$port; metrics on :$metrics_port."
  echo "Try: build/client/gqa-cli --text \"Hello\" --max_new_tokens 16.  Stop it: kill $server_pid"
fi
