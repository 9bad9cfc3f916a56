#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and fuzzes each parser for SECONDS, starting
# from seeds made from the project's own fixtures. Prints one line per target (executions,
# coverage, corpus, crashes) and exits non-zero on any crash, leak, timeout or sanitizer report;
# the input that caused it is kept under BUILD/fuzz-artifacts/ (turn it into a unit test).
#
#   bash tests/fuzz/run.sh 60                 # the CI smoke run: 60 s per target
#   bash tests/fuzz/run.sh 600                # the documented long run (10 minutes each)
#   FUZZ_JOBS=2 bash tests/fuzz/run.sh 60     # two targets at a time (default: nproc, at most 2)
#
# Needs clang and libclang-rt-14-dev (deploy/install-deps.sh --fuzz) and, for the seeds, a normal
# build with gqa-make-checkpoint ($GQA_SEED_BUILD, default build-cpu or build).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
build=${GQA_FUZZ_BUILD:-build-fuzz}
seed_build=${GQA_SEED_BUILD:-$([ -x build-cpu/server/gqa-make-checkpoint ] && echo build-cpu || echo build)}
python=${GQA_PYTHON:-.venv/bin/python}
jobs=${FUZZ_JOBS:-$(( $(nproc) < 2 ? 1 : 2 ))}
targets=(fuzz_safetensors fuzz_checkpoint fuzz_gguf fuzz_tokenizer_json fuzz_tokenizer_text
         fuzz_generate_request fuzz_openai_request fuzz_chat_template)

echo "== configure and build the fuzz targets in $build (clang, ASan + UBSan)"
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGQA_CUDA=OFF -DGQA_BUILD_TESTS=OFF -DGQA_FUZZ=ON >/dev/null
cmake --build "$build" --target fuzzers -j "$(nproc)"

echo "== seeds from the project's fixtures"
seeds=$build/fuzz-seeds
rm -rf "$seeds" && mkdir -p "$seeds"
for t in "${targets[@]}"; do mkdir -p "$seeds/$t"; done
model=$seeds/model
"$seed_build/server/gqa-make-checkpoint" --out "$model" --layers 1 --hidden 32 --heads 4 \
  --kv_heads 2 --intermediate 64 --vocab 300 --tokenizer --seed 1 >/dev/null
cp "$model/model.safetensors" "$seeds/fuzz_safetensors/tiny.safetensors"
printf '%s\n#--\n%s\n#--\n{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "a.safetensors"}}\n' \
  "$(cat "$model/config.json")" "$(cat "$model/generation_config.json" 2>/dev/null || echo '{}')" \
  >"$seeds/fuzz_checkpoint/model-dir.txt"
cp "$model/tokenizer.json" "$seeds/fuzz_tokenizer_json/trained.json"
if "$python" -c "import tokenizers" 2>/dev/null; then
  "$python" tests/tokenizer/make_fixtures.py "$seeds/fixtures" --seed 1 >/dev/null
  for f in "$seeds"/fixtures/*/tokenizer.json; do
    cp "$f" "$seeds/fuzz_tokenizer_json/$(basename "$(dirname "$f")").json"
  done
fi
split -l 1 tests/tokenizer/corpus.txt "$seeds/fuzz_tokenizer_text/line-"
if "$python" -c "import gguf" 2>/dev/null; then
  "$python" tests/fuzz/make_gguf_seeds.py "$seeds/fuzz_gguf"
fi
for text in 'text: "Hello" stopping { max_new_tokens: 8 stop: "\n" }' \
  'token_ids { ids: [1, 2, 3] } sampling { temperature: 0.7 top_p: 0.9 top_k: 5 seed: 1 }' \
  'request_id: "r1" text: "12 + 34 =" stopping { stop_token_ids: [1] ignore_eos: true }'; do
  echo "$text" | protoc --encode=gqa.v1.GenerateRequest -I proto proto/gqa/v1/generation.proto \
    >"$seeds/fuzz_generate_request/$(echo "$text" | md5sum | cut -c1-8).bin"
done

for body in '0{"model": "model", "prompt": "Hello", "max_tokens": 8, "stop": ["\n"], "n": 2}' \
  '0{"prompt": [[1, 2, 3]], "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 1, "echo": true}' \
  '0{"prompt": "x", "stream": true, "stream_options": {"include_usage": true}, "logprobs": 2}' \
  '1{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 4}' \
  '1{"model": "model", "messages": [{"role": "assistant", "content": null}], "logprobs": true, "top_logprobs": 2, "add_generation_prompt": false}'; do
  printf '%s' "$body" >"$seeds/fuzz_openai_request/$(printf '%s' "$body" | md5sum | cut -c1-8).json"
done
# Chat templates: every fixture family's template with a short conversation after it.
for config in tests/chat_template/fixtures/*/tokenizer_config.json; do
  "$python" -c 'import json, sys
t = json.load(open(sys.argv[1]))["chat_template"]
sys.stdout.write(t + "\n#--\nBe brief.\n#--\nHello there\n#--\nHi!\n#--\nWhat is 2 + 2?")' \
    "$config" >"$seeds/fuzz_chat_template/$(basename "$(dirname "$config")").txt"
done

echo "== fuzzing each target for $seconds s ($jobs at a time)"
mkdir -p "$build/fuzz-artifacts" "$build/fuzz-logs"
rm -f "$build"/fuzz-logs/*.failed
run_one() {
  local t=$1 corpus=$build/fuzz-corpus/$1
  mkdir -p "$corpus"
  "$build/tests/fuzz/$t" "$corpus" "$seeds/$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 \
    -dict=tests/fuzz/dictionary.txt -artifact_prefix="$build/fuzz-artifacts/$t-" \
    >"$build/fuzz-logs/$t.log" 2>&1
}
export -f run_one
export build seeds seconds
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {} || touch "$build/fuzz-logs/{}.failed"' || true

failed=0
printf '%-24s %12s %9s %7s %7s %8s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
  log=$build/fuzz-logs/$t.log
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo ?)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo ?)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo ?)
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo ?)
  corp=$(echo "$last" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*' || echo ?)
  result=ok
  if [ -f "$build/fuzz-logs/$t.failed" ]; then
    result="FAILED: $(grep -m1 -E 'ERROR|SUMMARY' "$log" || echo 'see log') ($log)"
    failed=1
  fi
  printf '%-24s %12s %9s %7s %7s %8s  %s\n' "$t" "$execs" "$speed" "$cov" "$ft" "$corp" "$result"
done
rm -f "$build"/fuzz-logs/*.failed
if [ $failed = 1 ]; then
  echo "== fuzzing found a failure; inputs in $build/fuzz-artifacts/"
  exit 1
fi
echo "== fuzzing: no crash, leak, timeout or sanitizer report"
