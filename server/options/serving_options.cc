#include "options/serving_options.h"

#include <charconv>

#include "absl/strings/str_cat.h"

namespace gqa {
namespace {

// As given: the shortest text that reads back as the same double.
std::string ShortestText(double value) {
  char text[32];
  const auto end = std::to_chars(text, text + sizeof text, value).ptr;
  return std::string(text, end);
}

absl::Status Refuse(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

absl::Status ValidateModel(const ModelOptions& m) {
  if (m.dir.empty()) return Refuse("--model DIR is required");
  if (m.load_format != "auto" && m.load_format != "safetensors" && m.load_format != "dummy") {
    return Refuse("--load_format must be auto or dummy");
  }
  return absl::OkStatus();
}

absl::Status ValidateService(const ServiceOptions& s) {
  if (s.http_port < -1 || s.http_port > 65535) {
    return Refuse(absl::StrCat("--http_port ", s.http_port,
                               " must be a port, 0 (off) or -1 (any free port)"));
  }
  if (s.http_connections < 1 || s.http_connections > 65536) {
    return Refuse(
        absl::StrCat("--http_connections ", s.http_connections, " must be from 1 to 65536"));
  }
  if (s.max_request_bytes < 1024 || s.max_request_bytes > (1u << 30)) {
    return Refuse("--max_request_size: expected a size from 1KiB to 1GiB");
  }
  if (s.max_streams_per_connection < 1) {
    return Refuse("--max_waiting_requests must be >= 0 and --max_streams_per_connection >= 1");
  }
  if (s.tls_cert_file.empty() != s.tls_key_file.empty()) {
    return Refuse("--tls_cert and --tls_key go together");
  }
  if (s.tls_cert_file.empty() && !s.tls_client_ca_file.empty()) {
    return Refuse("--tls_client_ca needs --tls_cert and --tls_key");
  }
  return absl::OkStatus();
}

absl::Status ValidateCompute(const ServingOptions& o) {
  if (!(o.cache.gpu_memory_utilization > 0.0 && o.cache.gpu_memory_utilization <= 1.0)) {
    return Refuse(absl::StrCat("--gpu_memory_utilization ",
                               ShortestText(o.cache.gpu_memory_utilization), " must be in (0, 1]"));
  }
  if (o.backend.step_profile_interval < 0) {
    return Refuse(absl::StrCat("--step_profile_interval must be >= 0, got ",
                               o.backend.step_profile_interval));
  }
  if (o.backend.step_timeout_seconds < -1) {
    return Refuse(absl::StrCat("--step_timeout_seconds must be >= 0 (or -1: auto), got ",
                               o.backend.step_timeout_seconds));
  }
  if (o.backend.tensor_parallel_size < 1) {
    return Refuse(
        absl::StrCat("--tensor_parallel_size ", o.backend.tensor_parallel_size, " must be >= 1"));
  }
  if (o.backend.kind == BackendKind::kCpu && o.backend.tensor_parallel_size > 1) {
    return Refuse(absl::StrCat("--tensor_parallel_size ", o.backend.tensor_parallel_size,
                               ": the CPU backend runs one rank (use --backend cuda)"));
  }
  if (o.cache.block_size < 1 || o.scheduler.max_num_seqs < 1 ||
      o.scheduler.max_num_batched_tokens < 1) {
    return Refuse("--block_size, --max_num_seqs and --max_num_batched_tokens must be >= 1");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BackendKind> ParseBackendKind(std::string_view name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("--backend=", std::string(name), ": expected auto, cpu or cuda"));
}

absl::StatusOr<AsyncScheduling> ParseAsyncScheduling(std::string_view value) {
  if (value == "auto") return AsyncScheduling::kAuto;
  if (value == "on" || value == "true") return AsyncScheduling::kOn;
  if (value == "off" || value == "false") return AsyncScheduling::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("--async_scheduling=", std::string(value), ": expected auto, on or off"));
}

absl::StatusOr<AttentionKernels> ParseAttentionKernels(std::string_view value) {
  if (value == "auto") return AttentionKernels::kAuto;
  if (value == "mma_sync") return AttentionKernels::kMmaSync;
  if (value == "warpgroup") return AttentionKernels::kWarpgroup;
  return absl::InvalidArgumentError(absl::StrCat("--attention_kernels=", std::string(value),
                                                 ": expected auto, mma_sync or warpgroup"));
}

bool UsesAsyncScheduling(const BackendOptions& backend, std::string_view backend_name) {
  switch (backend.async_scheduling) {
    case AsyncScheduling::kOn:
      return true;
    case AsyncScheduling::kOff:
      return false;
    case AsyncScheduling::kAuto:
      break;
  }
  return backend_name == "cuda";
}

int StepTimeoutSeconds(const BackendOptions& backend, std::string_view backend_name) {
  if (backend.step_timeout_seconds >= 0) return backend.step_timeout_seconds;
  return backend_name == "cuda" ? 120 : 0;
}

std::string_view BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto:
      return "auto";
    case BackendKind::kCpu:
      return "cpu";
    case BackendKind::kCuda:
      return "cuda";
  }
  return "auto";
}

absl::Status ValidateServingOptions(const ServingOptions& o) {
  if (absl::Status s = ValidateModel(o.model); !s.ok()) return s;
  if (absl::Status s = ValidateService(o.service); !s.ok()) return s;
  if (o.scheduler.max_waiting_requests < 0) {
    return Refuse("--max_waiting_requests must be >= 0 and --max_streams_per_connection >= 1");
  }
  return ValidateCompute(o);
}

}  // namespace gqa
