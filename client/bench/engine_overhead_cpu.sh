#!/usr/bin/env bash
# The engine's own time per decode step on the CPU backend: the server's mean decode step (wall,
# gqa_step_duration_seconds) minus its mean device time (gqa_step_device_seconds, every step
# profiled), from gqa-loadgen's JSON, for gRPC and HTTP clients on one server. A tiny random model
# keeps the compute small, so that what the engine thread does around it (scheduling, sampling
# bookkeeping, handing events to the clients) shows.
#
#   client/bench/engine_overhead_cpu.sh <build dir> [streams=64] [runs=3]
# Prints, per protocol and run: the decode step, the device step and their difference in ms.
# GQA_SERVER=<path> runs another gqa-server binary (an older commit's) with the same tools.
set -euo pipefail
build=${1:?usage: engine_overhead_cpu.sh <build dir> [streams] [runs]}
streams=${2:-64}
runs=${3:-3}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT

"$build/server/gqa-make-checkpoint" --out "$work/model" --layers 1 --hidden 64 --heads 8 \
  --kv_heads 2 --intermediate 128 --vocab 256 --seed 1 >/dev/null
"${GQA_SERVER:-$build/server/gqa-server}" --model "$work/model" --backend cpu --cpu_threads 1 --port 0 \
  --metrics_port 0 --http_port -1 --step_profile_interval 1 --max_num_seqs "$streams" \
  --port_file "$work/ports" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.1; done
read -r grpc metrics http <"$work/ports"
common=(--server "localhost:$grpc" --metrics_url "http://localhost:$metrics/metrics"
  --concurrency "$streams" --num_requests $((streams * 8)) --warmup_requests "$streams"
  --input_len 16 --output_len 128)
for run in $(seq "$runs"); do  # alternating, so that drift hits both alike
  "$build/client/gqa-loadgen" "${common[@]}" --json "$work/grpc-$run.json" >/dev/null
  "$build/client/gqa-loadgen" "${common[@]}" --http_url "http://localhost:$http" \
    --json "$work/http-$run.json" >/dev/null
done
python3 - "$work" "$runs" <<'PY'
import json, sys
work, runs = sys.argv[1], int(sys.argv[2])
for proto in ("grpc", "http"):
    for r in range(1, runs + 1):
        s = json.load(open(f"{work}/{proto}-{r}.json"))["server"]
        step, device = s["decode_step_s_mean"] * 1e3, s["decode_device_step_s_mean"] * 1e3
        print(f"{proto} run {r}: decode step {step:.3f} ms, device {device:.3f} ms, "
              f"engine {step - device:.3f} ms, mean batch {s['decode_mean_batch']:.1f}")
PY
