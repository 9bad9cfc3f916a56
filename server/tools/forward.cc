// gqa-forward: runs a backend (--backend cpu|cuda) directly on one prompt and prints JSON for
// parity checks:
//   prefill_logits:  logits of the last prompt token, prompt computed in chunks of --chunk
//   position_logits: logits at every prompt position, the prompt fed one token per step
//   greedy:          --generate greedy tokens after the prompt, one decode step each
#include <algorithm>
#include <iostream>
#include <numeric>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "backend/factory.h"
#include "common/dashed_flags.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, ids, "", "comma-separated prompt token ids");
ABSL_FLAG(int, chunk, 0, "prefill chunk size (0: whole prompt at once)");
ABSL_FLAG(int, generate, 8, "greedy tokens to generate");
ABSL_FLAG(int, block_size, 16, "KV block size");
ABSL_FLAG(std::string, backend, "cpu", "cpu, cuda or auto");
ABSL_FLAG(std::string, dtype, "auto", "CUDA: auto, bfloat16 or float16");
ABSL_FLAG(bool, enforce_eager, false, "CUDA: no graphs");

namespace {

constexpr int kNumBlocks = 512;

// One sequence's view of the cache; blocks handed out from the top of the pool down, so the
// block table is not contiguous in ascending order.
struct Seq {
  std::vector<int32_t> tokens;
  std::vector<int32_t> blocks;
  int computed = 0;
};

absl::StatusOr<std::vector<float>> Run(gqa::Backend& backend, Seq& seq, int n, int block_size,
                                       int* next_block) {
  while (static_cast<int>(seq.blocks.size()) * block_size < seq.computed + n) {
    seq.blocks.push_back((*next_block)--);
  }
  gqa::ForwardSeq fs{std::span<const int32_t>(seq.tokens).subspan(seq.computed, n), seq.computed,
                     seq.blocks, true};
  if (auto st = backend.Forward({&fs, 1}); !st.ok()) return st;
  seq.computed += n;
  return backend.LogitsToHost();
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
  gqa::BackendOptions options;
  options.kind = *kind;
  options.dtype = absl::GetFlag(FLAGS_dtype);
  options.block_size = bs;
  options.num_kv_blocks = kNumBlocks;
  options.max_num_seqs = 1;
  options.max_num_batched_tokens = std::max<int>(2048, prompt.size());
  options.max_model_len = kNumBlocks * bs;
  options.enforce_eager = absl::GetFlag(FLAGS_enforce_eager);
  auto backend = gqa::CreateBackend(options, std::move(*ckpt));
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
  std::cout << out.dump() << "\n";
  return 0;
}
