#include "convert/converter.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/json_file.h"
#include "common/status_macros.h"
#include "convert/checkpoint_writer.h"
#include "model/checkpoint.h"
#include "model/tensor_names.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;

// Files besides the weights that travel with a model.
constexpr const char* kCopiedFiles[] = {"generation_config.json",
                                        "tokenizer.json",
                                        "tokenizer_config.json",
                                        "special_tokens_map.json",
                                        "tokenizer.model",
                                        "vocab.json",
                                        "merges.txt",
                                        "added_tokens.json"};

bool IsPooled(const std::string& name) {
  for (const char* suffix :
       {tensor_names::kK, tensor_names::kV, tensor_names::kKBias, tensor_names::kVBias}) {
    if (absl::EndsWith(name, suffix)) return true;
  }
  return false;
}

// Mean of each group of `ratio` consecutive heads of a [heads * head_dim, cols] tensor.
void MeanPoolHeads(const TensorView& src, int head_dim, int out_heads, int ratio,
                   std::vector<std::byte>& out) {
  const size_t cols = src.shape.size() == 2 ? static_cast<size_t>(src.shape[1]) : 1;
  const size_t elem = DTypeSize(src.dtype);
  out.resize(size_t(out_heads) * head_dim * cols * elem);
  std::vector<float> row(cols), mean(cols);
  std::vector<double> sum(cols);
  for (int g = 0; g < out_heads; ++g) {
    for (int r = 0; r < head_dim; ++r) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int j = 0; j < ratio; ++j) {
        const size_t src_row = size_t(g * ratio + j) * head_dim + r;
        ConvertToFloat(src.dtype, src.data + src_row * cols * elem, cols, row.data());
        for (size_t c = 0; c < cols; ++c) sum[c] += row[c];
      }
      for (size_t c = 0; c < cols; ++c) mean[c] = static_cast<float>(sum[c] / ratio);
      ConvertFromFloat(src.dtype, mean.data(), cols,
                       out.data() + (size_t(g) * head_dim + r) * cols * elem);
    }
  }
}

absl::StatusOr<json> ReadJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  json doc = json::parse(text.str(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a JSON object"));
  }
  return doc;
}

absl::Status WriteConverted(const Checkpoint& source, const std::filesystem::path& src,
                            const std::filesystem::path& out, const ConvertOptions& options) {
  const ModelConfig& from = source.config();
  const int ratio = from.num_kv_heads / options.kv_heads;
  ModelConfig to = from;
  to.num_kv_heads = options.kv_heads;
  const json conversion = {{"method", "mean-pool"},
                           {"source_num_key_value_heads", from.num_kv_heads},
                           {"num_key_value_heads", options.kv_heads}};

  std::vector<TensorHeader> headers;
  for (const TensorSpec& spec : ExpectedTensors(to)) {
    headers.push_back({spec.name, source.Get(spec.name).dtype, spec.shape});
  }
  std::vector<std::byte> buffer;
  const TensorView* previous = nullptr;  // written: its mapped pages can go
  CheckpointWriteOptions write_options;
  write_options.max_shard_bytes = options.max_shard_bytes;
  write_options.metadata["gqa_conversion"] = conversion.dump();
  RETURN_IF_ERROR(WriteWeights(
      out, headers,
      [&](size_t i) -> absl::StatusOr<std::span<const std::byte>> {
        if (previous != nullptr) ReleaseMappedPages(*previous);
        const TensorView& view = source.Get(headers[i].name);
        previous = &view;
        if (!IsPooled(headers[i].name) || ratio == 1) {
          return std::span<const std::byte>(view.data, view.nbytes);
        }
        MeanPoolHeads(view, from.head_dim, options.kv_heads, ratio, buffer);
        return std::span<const std::byte>(buffer);
      },
      write_options));

  ASSIGN_OR_RETURN(json config, ReadJson(src / "config.json"));
  config["num_key_value_heads"] = options.kv_heads;
  config["gqa_conversion"] = conversion;
  RETURN_IF_ERROR(WriteJsonFile(out / "config.json", config));
  for (const char* name : kCopiedFiles) {
    std::error_code ec;
    if (!std::filesystem::exists(src / name)) continue;
    std::filesystem::copy_file(src / name, out / name, ec);
    if (ec) return absl::InternalError(absl::StrCat((src / name).string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ConvertToGqa(const std::filesystem::path& src, const std::filesystem::path& dst,
                          const ConvertOptions& options) {
  if (std::filesystem::exists(dst)) {
    return absl::AlreadyExistsError(absl::StrCat(dst.string(), ": already exists"));
  }
  ASSIGN_OR_RETURN(auto source, Checkpoint::Load(src, LoadFormat::kSafetensors));
  const int from = source->config().num_kv_heads;
  if (options.kv_heads < 1 || from % options.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-heads ", options.kv_heads, " does not divide the source's num_key_value_heads (",
        from, "); choose a divisor of ", from));
  }
  return WriteNewDirectory(dst, [&](const std::filesystem::path& partial) {
    return WriteConverted(*source, src, partial, options);
  });
}

}  // namespace gqa
