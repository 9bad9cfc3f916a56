#!/bin/bash
# The profiles that explain issue 17's attention shortfalls (kernels/BENCHMARKS.md step 32), in one
# run on one GPU: the served decode kernel at forced split counts, ncu sections of the prefill
# kernel (head_dim 128 and 64), of MQA decode at batch 64 and of FP8 decode, and the pipeline
# each is bound by. Read the rates beside the copy figure gqa-bench prints in the same run.
#
# Usage: client/bench/profile_shortfalls.sh [GQA_BENCH] [OUT_DIR] [PARTS]
#   GQA_BENCH  the gqa-bench binary (default build-cuda/client/gqa-bench)
#   OUT_DIR    where the full logs go (default a new temporary directory)
#   PARTS      comma-separated parts to run (default all): sweep, prefill128, prefill64,
#              mqa_decode, fp8_decode, bf16_decode
# Needs ncu (Nsight Compute) and a GPU; ncu runs each kernel alone with the L2 flushed and
# clocks as they are (--clock-control none), so its durations run above a graph replay's.
# The step profiles are client/bench/step_profile.sh's (--prefill, and 1b:1:64:2048 1b:32:64:2048).
set -uo pipefail
bench=${1:-build-cuda/client/gqa-bench}
out=${2:-$(mktemp -d)}
parts=${3:-sweep,prefill128,prefill64,mqa_decode,fp8_decode,bf16_decode}
mkdir -p "$out"
wanted() { [[ ",$parts," == *",$1,"* ]]; }
sections=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats
          --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis
          --section SchedulerStats)
rows=(--only 1,64,2048 --only 1,1,32768 --only 8,1,32768 --only 1,32,8192 --only 8,64,2048)
key='Duration|DRAM Throughput|Compute \(SM\) Throughput|Issue Slots Busy|No Eligible|'
key+='Active Warps Per Scheduler|Eligible Warps Per Scheduler|Registers Per Thread|'
key+='Achieved Occupancy|Grid Size|Waves Per SM|highest-utilized'

if wanted sweep; then
  echo "== split sweep, head_dim 128 and 64 (graph us per forced split count; p3: the served kernel)"
  for hd in 128 64; do
    "$bench" kernels --sweep-splits --head_dim $hd "${rows[@]}" > "$out/sweep_$hd.log" 2>&1
    grep -E "copy|^kv|p3" "$out/sweep_$hd.log"
  done
fi

profile() {  # NAME KERNEL_REGEX gqa-bench-arguments...
  local name=$1 kernel=$2
  shift 2
  wanted "$name" || return 0
  ncu --clock-control none --kernel-name-base demangled --kernel-name "regex:$kernel" -c 1 \
      "${sections[@]}" "$bench" kernels "$@" > "$out/ncu_$name.log" 2>&1
  echo "== ncu $name ($*)"
  grep -E "$key" "$out/ncu_$name.log" | sed 's/^ *//' | cut -c1-100
}
profile prefill128 ProducerPrefillKernel --prefill --only 32,1,4096
profile prefill64 ProducerPrefillKernel --prefill --head_dim 64 --only 32,1,4096
profile mqa_decode ProducerDecodeKernel --only 1,64,2048
# FP8 decode (the mma.sync kernel, its KV type the E4M3 byte) beside bf16 at the same row: the
# FP8 kernel reads half the bytes, so its DRAM throughput at equal duration would be half.
profile fp8_decode 'DecodeKernel<.*__nv_fp8' --kv_cache_dtype fp8_e4m3 --only 32,32,4096
profile bf16_decode ProducerDecodeKernel --only 32,32,4096
echo "(full logs in $out)"
