#!/bin/bash
# Where one served decode step's GPU time goes, kernel by kernel (issue 16's "explained with
# profiles"): runs ncu on one step of each row (gqa-bench decode --cuda_profiler_step, so nothing
# of the startup is profiled) and prints client/bench/ncu_summary.py's table for each: calls,
# microseconds, share, DRAM megabytes and the bandwidth each kernel reached.
#
# Usage: client/bench/step_profile.sh [--prefill] [GQA_BENCH] [ROW...]
#   --prefill  one step of the 1B shape's 2048-token prefill instead (--cuda_profiler_prefill)
#   GQA_BENCH  the gqa-bench binary (default build-cuda/client/gqa-bench)
#   ROW        MODEL:KV:BATCH:CTX rows (default the issue's target rows)
# Needs ncu (Nsight Compute) and a GPU; ncu serialises the kernels and flushes the caches before
# each, so times run high against a graph-replayed step: read shares and bandwidths, not the sum.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
what=--cuda_profiler_step
if [ "${1:-}" = --prefill ]; then what=--cuda_profiler_prefill; shift; fi
bench=${1:-build-cuda/client/gqa-bench}
shift || true
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(1b:8:1:512 1b:8:64:2048 8b:8:1:512 8b:8:64:2048 1b:1:64:2048)
[ $what = --cuda_profiler_step ] || rows=(1b:8:1:512)  # the row that times the prefill
out=$(mktemp -d)
for row in "${rows[@]}"; do
  echo "== $row"
  ncu --profile-from-start off --clock-control none --csv \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      "$bench" decode --steps 3 $what --only "$row" > "$out/$row.csv"
  python3 "$here/ncu_summary.py" "$out/$row.csv"
done
echo "(ncu logs in $out)"
