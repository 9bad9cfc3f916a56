// gqa-forward: runs a backend (--backend cpu|cuda) directly on one prompt and prints JSON for
// parity checks:
//   prefill_logits:  logits of the last prompt token, prompt computed in chunks of --chunk
//   position_logits: logits at every prompt position, the prompt fed one token per step
//   greedy:          --generate greedy tokens after the prompt, one decode step each
//   engine:          with --logprobs K: the prompt through the engine (chunks of --chunk, on a
//                    second backend): its greedy tokens, their logprobs and the prompt logprobs,
//                    each {token, logprob, top: [[id, logprob], ...]} (the first prompt token's
//                    logprob is 0)
#include <algorithm>
#include <iostream>
#include <numeric>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "backend/factory.h"
#include "common/dashed_flags.h"
#include "engine/engine.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, ids, "", "comma-separated prompt token ids");
ABSL_FLAG(int, chunk, 0, "prefill chunk size (0: whole prompt at once)");
ABSL_FLAG(int, generate, 8, "greedy tokens to generate");
ABSL_FLAG(int, block_size, 16, "KV block size");
ABSL_FLAG(std::string, backend, "cpu", "cpu, cuda or auto");
ABSL_FLAG(std::string, dtype, "auto", "CUDA: auto, bfloat16 or float16");
ABSL_FLAG(std::string, kv_cache_dtype, "auto", "auto (the compute dtype) or fp8_e4m3");
ABSL_FLAG(bool, enforce_eager, false, "CUDA: no graphs");
ABSL_FLAG(int, logprobs, -1, "also run the engine with this many top logprobs (-1: don't)");

namespace {

constexpr int kNumBlocks = 512;

// One sequence's view of the cache; blocks handed out from the top of the pool down, so the
// block table is not contiguous in ascending order.
struct Seq {
  uint64_t id = 1;
  uint64_t replaces = 0;  // a sequence whose row its first step removes
  std::vector<int32_t> tokens;
  std::vector<int32_t> blocks;
  int computed = 0;
  int blocks_sent = 0;  // blocks the backend's table holds
};

absl::StatusOr<std::vector<float>> Run(gqa::Backend& backend, Seq& seq, int n, int block_size,
                                       int* next_block) {
  while (static_cast<int>(seq.blocks.size()) * block_size < seq.computed + n) {
    seq.blocks.push_back((*next_block)--);
  }
  gqa::StepPlan plan;
  if (seq.blocks_sent == 0 && seq.replaces != 0) plan.tables.removed.push_back(seq.replaces);
  if (static_cast<int>(seq.blocks.size()) > seq.blocks_sent) {
    plan.tables.rows.push_back(
        {seq.id, seq.blocks_sent,
         std::vector<int32_t>(seq.blocks.begin() + seq.blocks_sent, seq.blocks.end())});
    seq.blocks_sent = static_cast<int>(seq.blocks.size());
  }
  gqa::ScheduledSeq step;
  step.seq_id = seq.id;
  step.chunk = std::span<const int32_t>(seq.tokens).subspan(seq.computed, n);
  step.start_pos = seq.computed;
  step.samples = true;
  // Token by token (position_logits, greedy) through the decode kernel, as the tool always did.
  step.is_decode = n == 1 && seq.computed > 0;
  plan.seqs.push_back(step);
  if (auto out = backend.ExecuteStep(plan); !out.ok()) return out.status();
  seq.computed += n;
  return backend.LogitsToHost();
}

nlohmann::json ToJson(const std::vector<gqa::TokenLogprob>& logprobs) {
  nlohmann::json list = nlohmann::json::array();
  for (const gqa::TokenLogprob& lp : logprobs) {
    list.push_back({{"token", lp.token}, {"logprob", lp.logprob}, {"top", lp.top}});
  }
  return list;
}

// The prompt through the engine with logprobs: greedy, `generate` tokens, chunks of `chunk`.
absl::StatusOr<nlohmann::json> RunEngine(std::unique_ptr<gqa::Backend> backend,
                                         const std::vector<int32_t>& prompt, int chunk,
                                         int generate, int top, int vocab,
                                         const gqa::ServingOptions& options) {
  gqa::EngineConfig config;
  config.scheduler = {options.cache.block_size, options.scheduler.max_num_seqs, chunk};
  config.limits = {vocab, options.scheduler.max_model_len};
  config.step_profile_interval = 0;
  gqa::Engine engine(config, std::move(backend), nullptr);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<gqa::TokenLogprob> logprobs, prompt_logprobs;
  std::vector<int32_t> tokens;
  absl::Status error;
  bool done = false;
  gqa::Request request;
  request.prompt = prompt;
  request.stopping.max_new_tokens = generate;
  request.stopping.ignore_eos = true;
  request.logprobs = {.top_logprobs = top, .prompt_top_logprobs = top};
  request.sink = [&](gqa::TokenEvent e) {
    std::lock_guard lock(mu);
    tokens.insert(tokens.end(), e.new_tokens.begin(), e.new_tokens.end());
    logprobs.insert(logprobs.end(), e.logprobs.begin(), e.logprobs.end());
    prompt_logprobs.insert(prompt_logprobs.end(), e.prompt_logprobs.begin(),
                           e.prompt_logprobs.end());
    if (!e.error.ok()) error = e.error;
    done = done || e.finish.has_value() || !e.error.ok();
    cv.notify_all();
  };
  engine.Start();
  if (auto id = engine.Submit(std::move(request)); !id.ok()) return id.status();
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!error.ok()) return error;
  return nlohmann::json{{"tokens", tokens},
                        {"logprobs", ToJson(logprobs)},
                        {"prompt_logprobs", ToJson(prompt_logprobs)}};
}

int Argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

int main(int argc, char** argv) {
  gqa::ShowProgramFlagsInHelp();
  gqa::AcceptDashedFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::warn);  // stdout carries only the JSON
  auto ckpt = gqa::Checkpoint::Load(absl::GetFlag(FLAGS_model), gqa::LoadFormat::kSafetensors);
  if (!ckpt.ok()) {
    std::cerr << ckpt.status().message() << "\n";
    return 1;
  }
  std::vector<int32_t> prompt;
  for (auto piece : absl::StrSplit(absl::GetFlag(FLAGS_ids), ',', absl::SkipEmpty())) {
    int id;
    if (!absl::SimpleAtoi(piece, &id)) return 2;
    prompt.push_back(id);
  }
  const int bs = absl::GetFlag(FLAGS_block_size);
  auto kind = gqa::ParseBackendKind(absl::GetFlag(FLAGS_backend));
  std::string device;
  if (kind.ok()) kind = gqa::ResolveBackendKind(*kind, &device);
  if (!kind.ok()) {
    std::cerr << kind.status().message() << "\n";
    return 2;
  }
  gqa::ServingOptions options;
  options.backend.dtype = absl::GetFlag(FLAGS_dtype);
  options.cache.kv_cache_dtype = absl::GetFlag(FLAGS_kv_cache_dtype);
  options.cache.block_size = bs;
  options.cache.num_kv_blocks = kNumBlocks;
  options.scheduler.max_num_seqs = 1;
  options.scheduler.max_num_batched_tokens = std::max<int>(2048, prompt.size());
  options.scheduler.max_model_len = kNumBlocks * bs;
  options.cuda.enforce_eager = absl::GetFlag(FLAGS_enforce_eager);
  const int vocab = (*ckpt)->config().vocab_size;
  auto backend = gqa::CreateBackend(options, *kind, std::move(*ckpt));
  if (!backend.ok()) {
    std::cerr << backend.status().message() << "\n";
    return 2;
  }
  if (prompt.empty()) return 2;
  int next_block = kNumBlocks - 1;
  nlohmann::json out;

  Seq chunked;
  chunked.tokens = prompt;
  const int chunk = absl::GetFlag(FLAGS_chunk) > 0 ? absl::GetFlag(FLAGS_chunk) : prompt.size();
  std::vector<float> logits;
  while (chunked.computed < static_cast<int>(prompt.size())) {
    const int n = std::min<int>(chunk, prompt.size() - chunked.computed);
    auto l = Run(**backend, chunked, n, bs, &next_block);
    if (!l.ok()) return 1;
    logits = *l;
  }
  out["prefill_logits"] = logits;

  Seq stepped;
  stepped.id = 2;
  stepped.replaces = chunked.id;
  stepped.tokens = prompt;
  out["position_logits"] = nlohmann::json::array();
  for (size_t i = 0; i < prompt.size(); ++i) {
    auto l = Run(**backend, stepped, 1, bs, &next_block);
    if (!l.ok()) return 1;
    out["position_logits"].push_back(*l);
    logits = *l;
  }
  std::vector<int> greedy;
  for (int g = 0; g < absl::GetFlag(FLAGS_generate); ++g) {
    greedy.push_back(Argmax(logits));
    stepped.tokens.push_back(greedy.back());
    auto l = Run(**backend, stepped, 1, bs, &next_block);
    if (!l.ok()) return 1;
    logits = *l;
  }
  out["greedy"] = greedy;
  if (absl::GetFlag(FLAGS_logprobs) >= 0) {
    backend->reset();  // one model on the device at a time
    auto engine_ckpt =
        gqa::Checkpoint::Load(absl::GetFlag(FLAGS_model), gqa::LoadFormat::kSafetensors);
    if (!engine_ckpt.ok()) return 1;
    options.scheduler.max_num_seqs =
        8;  // logits rows per step: prompt logprobs come 8 at a time at most
    auto engine_backend = gqa::CreateBackend(options, *kind, std::move(*engine_ckpt));
    if (!engine_backend.ok()) {
      std::cerr << engine_backend.status().message() << "\n";
      return 2;
    }
    auto engine =
        RunEngine(std::move(*engine_backend), prompt, chunk, absl::GetFlag(FLAGS_generate),
                  absl::GetFlag(FLAGS_logprobs), vocab, options);
    if (!engine.ok()) {
      std::cerr << engine.status().message() << "\n";
      return 1;
    }
    out["engine"] = *engine;
  }
  std::cout << out.dump() << "\n";
  return 0;
}
