// The one place that knows which backends exist: picks one (--backend auto|cpu|cuda), sizes its
// KV pool from a byte budget in its own dtype, and builds it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "model/checkpoint.h"
#include "options/serving_options.h"

namespace gqa {

// auto: CUDA when this build has it and a GPU is visible, else CPU. cuda: an error saying why
// when it cannot be used. `device` receives the device's name.
absl::StatusOr<BackendKind> ResolveBackendKind(BackendKind kind, std::string* device);

// The longest sequence served: --max_model_len, or the model's maximum (0). A sliding window that
// the backends do not apply (Qwen2's, in only some layers) caps it at the window (where every key
// is inside the window anyway); Mistral's is applied by both backends.
int ServedMaxModelLen(const SchedulerOptions& scheduler, const ModelConfig& config);

// The CUDA serving dtype for `option` ("auto", "bfloat16", "float16") and a checkpoint stored
// as `stored`: auto keeps a 16-bit checkpoint's type and takes bfloat16 for float32.
absl::StatusOr<DType> ServingDType(std::string_view option, DType stored);

// Whether `world_size` ranks (--tensor_parallel_size) can serve `config` on the resolved backend
// `kind` with `visible_gpus` GPUs: OK, or the one-line refusal naming the flag (the CPU backend
// runs one rank; CheckTensorParallelSize's reasons; more ranks than visible GPUs).
absl::Status CheckTensorParallelPlacement(int world_size, BackendKind kind,
                                          const ModelConfig& config, int visible_gpus);

// Builds the backend `kind` names (resolved: not kAuto) from the tree's scheduler, cache, backend
// and CUDA parts (validated: ValidateServingOptions).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const ServingOptions& options, BackendKind kind, std::shared_ptr<const Checkpoint> checkpoint);

}  // namespace gqa
