// gqa-make-checkpoint: writes a random Llama-family checkpoint (config.json,
// generation_config.json, safetensors) for tests, demos and benchmarks.
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/dashed_flags.h"
#include "convert/checkpoint_writer.h"
#include "model/checkpoint.h"
#include "nlohmann/json.hpp"
#include "tokenizer/train_bpe.h"

ABSL_FLAG(std::string, out, "", "output directory");
ABSL_FLAG(std::string, arch, "llama", "llama, mistral or qwen2");
ABSL_FLAG(int, layers, 2, "num_hidden_layers");
ABSL_FLAG(int, hidden, 64, "hidden_size");
ABSL_FLAG(int, heads, 8, "num_attention_heads");
ABSL_FLAG(int, kv_heads, 2, "num_key_value_heads");
ABSL_FLAG(int, head_dim, 0, "head_dim (0: hidden / heads)");
ABSL_FLAG(int, intermediate, 128, "intermediate_size");
ABSL_FLAG(int, vocab, 256, "vocab_size");
ABSL_FLAG(int, max_position, 2048, "max_position_embeddings");
ABSL_FLAG(std::string, dtype, "bf16", "f32, f16 or bf16");
ABSL_FLAG(bool, tie, false, "tie_word_embeddings");
ABSL_FLAG(bool, attention_bias, false, "Llama attention_bias (q, k, v, o biases)");
ABSL_FLAG(std::string, rope_scaling, "none", "none, linear or llama3");
ABSL_FLAG(double, rope_theta, 10000.0, "rope_theta");
ABSL_FLAG(int, sliding_window, 0, "Mistral sliding_window (0: none)");
ABSL_FLAG(int, eos, 1, "eos_token_id (-1: none)");
ABSL_FLAG(int, bos, 0, "bos_token_id (-1: none)");
ABSL_FLAG(uint64_t, seed, 0, "random seed");
ABSL_FLAG(uint64_t, max_shard_bytes, 0, "shard the weights into files of at most this size");
ABSL_FLAG(bool, tokenizer, false,
          "also write a byte-level BPE tokenizer.json trained on a built-in text (<s> = 0, "
          "</s> = 1)");

namespace {

gqa::ModelConfig ConfigFromFlags() {
  gqa::ModelConfig c;
  const std::string arch = absl::GetFlag(FLAGS_arch);
  c.architecture = arch == "qwen2"     ? gqa::Architecture::kQwen2
                   : arch == "mistral" ? gqa::Architecture::kMistral
                                       : gqa::Architecture::kLlama;
  c.architecture_name = arch == "qwen2"     ? "Qwen2ForCausalLM"
                        : arch == "mistral" ? "MistralForCausalLM"
                                            : "LlamaForCausalLM";
  c.num_layers = absl::GetFlag(FLAGS_layers);
  c.hidden_size = absl::GetFlag(FLAGS_hidden);
  c.num_heads = absl::GetFlag(FLAGS_heads);
  c.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  c.head_dim = absl::GetFlag(FLAGS_head_dim) > 0 ? absl::GetFlag(FLAGS_head_dim)
                                                 : c.hidden_size / c.num_heads;
  c.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  c.vocab_size = absl::GetFlag(FLAGS_vocab);
  c.max_position_embeddings = absl::GetFlag(FLAGS_max_position);
  c.rope_theta = static_cast<float>(absl::GetFlag(FLAGS_rope_theta));
  c.rms_norm_eps = 1e-5f;
  c.tie_word_embeddings = absl::GetFlag(FLAGS_tie);
  c.qkv_bias = c.architecture == gqa::Architecture::kQwen2 || absl::GetFlag(FLAGS_attention_bias);
  c.o_bias = c.architecture != gqa::Architecture::kQwen2 && absl::GetFlag(FLAGS_attention_bias);
  const std::string scaling = absl::GetFlag(FLAGS_rope_scaling);
  if (scaling == "linear") c.rope_scaling = {gqa::kernels::RopeScalingType::kLinear, 2.0f};
  if (scaling == "llama3") {
    c.rope_scaling = {gqa::kernels::RopeScalingType::kLlama3, 8.0f, 1.0f, 4.0f, 64};
  }
  if (absl::GetFlag(FLAGS_sliding_window) > 0)
    c.sliding_window = absl::GetFlag(FLAGS_sliding_window);
  if (absl::GetFlag(FLAGS_bos) >= 0) c.bos_token_id = absl::GetFlag(FLAGS_bos);
  if (absl::GetFlag(FLAGS_eos) >= 0) c.eos_token_ids = {absl::GetFlag(FLAGS_eos)};
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("gqa-make-checkpoint --out DIR [shape flags]");
  gqa::ShowProgramFlagsInHelp();
  gqa::AcceptDashedFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_out).empty()) {
    std::cerr << "gqa-make-checkpoint: --out is required\n";
    return 2;
  }
  gqa::ModelConfig config = ConfigFromFlags();
  const auto dtype = gqa::ParseDTypeName(absl::GetFlag(FLAGS_dtype));
  if (!dtype) {
    std::cerr << "gqa-make-checkpoint: --dtype must be f32, f16 or bf16\n";
    return 2;
  }
  config.dtype = *dtype;
  // Round-trip through the parser so that only valid configs are written.
  auto checked = gqa::ParseModelConfig(gqa::ModelConfigToJson(config), "--flags");
  if (!checked.ok()) {
    std::cerr << "gqa-make-checkpoint: " << checked.status().message() << "\n";
    return 2;
  }
  std::vector<std::vector<std::byte>> storage;
  std::vector<gqa::TensorToWrite> tensors;
  for (const gqa::TensorSpec& spec : gqa::ExpectedTensors(config)) {
    storage.push_back(
        gqa::RandomTensorBytes(spec, config, config.dtype, absl::GetFlag(FLAGS_seed)));
    tensors.push_back(
        {spec.name, config.dtype, spec.shape, storage.back().data(), storage.back().size()});
  }
  gqa::CheckpointWriteOptions options;
  options.max_shard_bytes = absl::GetFlag(FLAGS_max_shard_bytes);
  options.metadata["gqa_random_seed"] = std::to_string(absl::GetFlag(FLAGS_seed));
  if (auto st = gqa::WriteCheckpoint(absl::GetFlag(FLAGS_out), config, tensors, options);
      !st.ok()) {
    std::cerr << "gqa-make-checkpoint: " << st.message() << "\n";
    return 1;
  }
  if (absl::GetFlag(FLAGS_tokenizer)) {
    if (auto st = gqa::WriteTrainedTokenizer(absl::GetFlag(FLAGS_out), config.vocab_size);
        !st.ok()) {
      std::cerr << "gqa-make-checkpoint: " << st.message() << "\n";
      return 1;
    }
  }
  return 0;
}
