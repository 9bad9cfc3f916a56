#include "backend/kv_scales.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "model/tensor_names.h"

namespace gqa {
namespace {

// Fills row [num_kv_heads] from the tensor `name` when present.
absl::Status ReadScale(const Checkpoint& checkpoint, const std::string& name, int num_kv_heads,
                       float* row, bool* found) {
  if (!checkpoint.Has(name)) return absl::OkStatus();
  *found = true;
  const TensorView& t = checkpoint.Get(name);
  const size_t n = t.numel();
  if (n != 1 && n != size_t(num_kv_heads)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" has ", n,
                                                   " elements: a KV cache scale holds 1 or ",
                                                   num_kv_heads, " (one per KV head)"));
  }
  std::vector<float> values(n);
  ConvertToFloat(t.dtype, t.data, n, values.data());
  for (int h = 0; h < num_kv_heads; ++h) {
    const float s = values[n == 1 ? 0 : h];
    if (!std::isfinite(s) || s <= 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\" holds the scale ", s, ": must be finite and > 0"));
    }
    row[h] = s;
  }
  return absl::OkStatus();
}

}  // namespace

KvScales UnitKvScales(const ModelConfig& c) {
  KvScales s;
  s.k.assign(size_t(c.num_layers) * c.num_kv_heads, 1.0f);
  s.v = s.k;
  return s;
}

absl::StatusOr<KvScales> LoadKvScales(const Checkpoint& checkpoint) {
  const ModelConfig& c = checkpoint.config();
  KvScales s = UnitKvScales(c);
  for (int l = 0; l < c.num_layers; ++l) {
    const size_t row = size_t(l) * c.num_kv_heads;
    if (absl::Status e = ReadScale(checkpoint, LayerTensorName(l, tensor_names::kKScale),
                                   c.num_kv_heads, s.k.data() + row, &s.from_checkpoint);
        !e.ok())
      return e;
    if (absl::Status e = ReadScale(checkpoint, LayerTensorName(l, tensor_names::kVScale),
                                   c.num_kv_heads, s.v.data() + row, &s.from_checkpoint);
        !e.ok())
      return e;
  }
  return s;
}

}  // namespace gqa
