#include "model/checkpoint.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/tensor_names.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;

// Tensors some checkpoints carry that the model recomputes.
bool IsIgnorable(const std::string& name) { return absl::EndsWith(name, ".rotary_emb.inv_freq"); }

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t HashName(const std::string& name, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

// (center, half width) of the uniform distribution a tensor's values are drawn from.
std::pair<float, float> InitRange(const TensorSpec& spec, const ModelConfig& c) {
  const float sqrt3 = std::sqrt(3.0f);
  if (absl::EndsWith(spec.name, "norm.weight")) return {1.0f, 0.2f};
  if (absl::EndsWith(spec.name, ".bias")) return {0.0f, 0.2f * sqrt3};
  if (spec.name == tensor_names::kEmbed) return {0.0f, sqrt3};
  if (spec.name == tensor_names::kLmHead)
    return {0.0f, 3.0f / std::sqrt(float(c.hidden_size)) * sqrt3};
  const float fan_in = static_cast<float>(spec.shape.back());
  return {0.0f, sqrt3 / std::sqrt(fan_in)};
}

}  // namespace

std::string LayerTensorName(int layer, const char* suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), inter = c.intermediate_size;
  std::vector<TensorSpec> specs = {{tensor_names::kEmbed, {c.vocab_size, h}}};
  for (int l = 0; l < c.num_layers; ++l) {
    auto add = [&](const char* suffix, std::vector<int64_t> shape) {
      specs.push_back({LayerTensorName(l, suffix), std::move(shape)});
    };
    add(tensor_names::kInputNorm, {h});
    add(tensor_names::kQ, {q, h});
    add(tensor_names::kK, {kv, h});
    add(tensor_names::kV, {kv, h});
    add(tensor_names::kO, {h, q});
    if (c.qkv_bias) {
      add(tensor_names::kQBias, {q});
      add(tensor_names::kKBias, {kv});
      add(tensor_names::kVBias, {kv});
    }
    if (c.o_bias) add(tensor_names::kOBias, {h});
    add(tensor_names::kPostNorm, {h});
    add(tensor_names::kGate, {inter, h});
    add(tensor_names::kUp, {inter, h});
    add(tensor_names::kDown, {h, inter});
    if (c.mlp_bias) {
      add(tensor_names::kGateBias, {inter});
      add(tensor_names::kUpBias, {inter});
      add(tensor_names::kDownBias, {h});
    }
  }
  specs.push_back({tensor_names::kFinalNorm, {h}});
  if (!c.tie_word_embeddings) specs.push_back({tensor_names::kLmHead, {c.vocab_size, h}});
  return specs;
}

std::vector<std::byte> RandomTensorBytes(const TensorSpec& spec, const ModelConfig& config,
                                         DType dtype, uint64_t seed) {
  int64_t numel = 1;
  for (int64_t d : spec.shape) numel *= d;
  const auto [center, half_width] = InitRange(spec, config);
  std::vector<float> values(numel);
  uint64_t state = HashName(spec.name, seed);
  for (auto& v : values) {
    const double u = static_cast<double>(SplitMix64(state) >> 11) * 0x1.0p-53;  // [0, 1)
    v = center + half_width * static_cast<float>(2.0 * u - 1.0);
  }
  std::vector<std::byte> bytes(numel * DTypeSize(dtype));
  ConvertFromFloat(dtype, values.data(), values.size(), bytes.data());
  return bytes;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Load(const std::filesystem::path& dir,
                                                             LoadFormat format, uint64_t seed) {
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = dir;
  ASSIGN_OR_RETURN(ckpt->config_, LoadModelConfig(dir));
  if (format == LoadFormat::kDummy) {
    ckpt->FillRandom(seed);
  } else {
    RETURN_IF_ERROR(ckpt->LoadSafetensors());
  }
  RETURN_IF_ERROR(ckpt->CheckTensors());
  return ckpt;
}

uint64_t Checkpoint::weight_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, view] : tensors_) total += view.nbytes;
  return total;
}

void Checkpoint::FillRandom(uint64_t seed) {
  for (const TensorSpec& spec : ExpectedTensors(config_)) {
    owned_.push_back(RandomTensorBytes(spec, config_, config_.dtype, seed));
    const auto& bytes = owned_.back();
    tensors_[spec.name] = TensorView{config_.dtype, spec.shape, bytes.data(), bytes.size()};
    tensor_file_[spec.name] = "(random)";
  }
}

absl::Status Checkpoint::LoadSafetensors() {
  const auto index = dir_ / "model.safetensors.index.json";
  if (std::filesystem::exists(index)) return LoadShards(index);
  const auto single = dir_ / "model.safetensors";
  if (!std::filesystem::exists(single)) {
    return absl::NotFoundError(
        absl::StrCat(dir_.string(), ": no model.safetensors or model.safetensors.index.json"));
  }
  ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
  RETURN_IF_ERROR(AddFileTensors(*file));
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

absl::Status Checkpoint::LoadShards(const std::filesystem::path& index_path) {
  std::ifstream in(index_path);
  std::stringstream text;
  text << in.rdbuf();
  json index = json::parse(text.str(), nullptr, false);
  if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::DataLossError(absl::StrCat(index_path.string(), ": no \"weight_map\" object"));
  }
  std::map<std::string, std::string> weight_map;
  std::set<std::string> shard_names;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string()) {
      return absl::DataLossError(absl::StrCat(index_path.string(), ": bad entry for ", name));
    }
    weight_map[name] = file.get<std::string>();
    shard_names.insert(file.get<std::string>());
  }
  for (const auto& shard : shard_names) {
    if (shard.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": shard \"", shard, "\" is not a plain file name"));
    }
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir_ / shard));
    RETURN_IF_ERROR(AddFileTensors(*file));
    files_.push_back(std::move(file));
  }
  for (const auto& [name, shard] : weight_map) {
    auto it = tensor_file_.find(name);
    if (it == tensor_file_.end()) {
      return absl::NotFoundError(absl::StrCat((dir_ / shard).string(), ": tensor \"", name,
                                              "\" listed in the index is missing"));
    }
    if (it->second != (dir_ / shard).string()) {
      return absl::DataLossError(
          absl::StrCat(it->second, ": tensor \"", name, "\" is indexed under ", shard));
    }
  }
  return absl::OkStatus();
}

absl::Status Checkpoint::AddFileTensors(const SafetensorsFile& file) {
  for (const auto& [name, view] : file.tensors()) {
    if (IsIgnorable(name)) continue;
    if (tensors_.contains(name)) {
      return absl::DataLossError(absl::StrCat(file.path().string(), ": tensor \"", name,
                                              "\" also appears in ", tensor_file_[name]));
    }
    tensors_[name] = view;
    tensor_file_[name] = file.path().string();
  }
  return absl::OkStatus();
}

// model.layers.<l>.self_attn.k_scale or .v_scale of a layer the model has.
bool Checkpoint::IsKvCacheScale(const std::string& name) const {
  for (int l = 0; l < config_.num_layers; ++l) {
    if (name == LayerTensorName(l, tensor_names::kKScale) ||
        name == LayerTensorName(l, tensor_names::kVScale)) {
      return true;
    }
  }
  return false;
}

absl::Status Checkpoint::CheckTensors() const {
  std::set<std::string> expected;
  for (const TensorSpec& spec : ExpectedTensors(config_)) {
    expected.insert(spec.name);
    auto it = tensors_.find(spec.name);
    if (it == tensors_.end()) {
      return absl::NotFoundError(
          absl::StrCat(dir_.string(), ": missing tensor \"", spec.name, "\""));
    }
    if (it->second.shape != spec.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor_file_.at(spec.name), ": tensor \"", spec.name, "\" has shape ",
                       ShapeToString(it->second.shape), ", expected ", ShapeToString(spec.shape)));
    }
  }
  for (const auto& [name, view] : tensors_) {
    // Tied checkpoints sometimes still carry lm_head.weight; Hugging Face ignores it too.
    if (config_.tie_word_embeddings && name == tensor_names::kLmHead) continue;
    if (IsKvCacheScale(name)) continue;  // optional; backend/kv_scales.cc checks its shape
    if (!expected.contains(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(tensor_file_.at(name), ": unexpected tensor \"", name, "\""));
    }
  }
  return absl::OkStatus();
}

}  // namespace gqa
