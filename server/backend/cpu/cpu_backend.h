// The CPU backend: fp32 arithmetic over F32/F16/BF16 weights, an fp32 paged KV cache (or FP8
// E4M3 bytes with per-(layer, KV head) scales, --kv_cache_dtype=fp8_e4m3), the kernels/cpu
// reference ops. The weight matrices are used in place, memory-mapped from the
// checkpoint at their stored size (the ops widen each element to fp32 as they read it); only the
// norm weights and biases are copied to fp32.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "gqa/kernels/cpu_ops.h"
#include "model/checkpoint.h"

namespace gqa {

class CpuBackend final : public Backend {
 public:
  // Keeps `checkpoint` (its mapped files) for as long as the backend lives.
  // Its block tables hold `max_seqs` live sequences of up to `max_model_len` tokens.
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(
      std::shared_ptr<const Checkpoint> checkpoint, int block_size, int num_blocks,
      KvCacheDType cache_dtype = KvCacheDType::kCompute, int max_seqs = 256,
      int max_model_len = 4096);

  std::string_view name() const override { return "cpu"; }
  std::string device_name() const override { return "cpu"; }
  const KvCacheSpec& kv_spec() const override { return spec_; }
  absl::StatusOr<StepOutput> ExecuteStep(const StepPlan& plan) override;
  absl::StatusOr<std::vector<float>> LogitsToHost() override { return logits_; }
  uint64_t weight_bytes_per_step() const override;
  // A parallel read of a 128 MiB buffer (the CPU backend is compute-bound: far from this floor).
  absl::StatusOr<double> MeasureReadBandwidth() override;
  void ProfileNextStep() override { profile_next_ = true; }
  std::optional<StepTiming> LastStepTiming() const override { return last_timing_; }

 private:
  using WeightView = kernels::cpu::WeightView;
  struct Layer {
    WeightView q, k, v, o, gate, up, down;  // [out_features, in_features] as stored
    std::vector<float> input_norm, post_norm;
    std::vector<float> q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias;
    // [num_blocks, num_kv_heads, block_size, head_dim]: fp32, or FP8 bytes (the other is empty)
    std::vector<float> k_cache, v_cache;
    std::vector<uint8_t> k_cache8, v_cache8;
    std::vector<float> k_scale, v_scale;  // [num_kv_heads], FP8 only
  };
  // Per-step inputs, flattened over the plan; block_tables are the plan's rows of tables_.
  struct StepInputs {
    std::vector<int32_t> token_ids, positions, query_start, context_lens, block_tables;
    std::vector<int64_t> slots;
    std::vector<int32_t> logit_rows;  // token row of each logits row (LogitsRowOfTokens)
    int sample_rows = 0;              // the first of them, one per sampling sequence
    int max_blocks = 0;
  };
  // Activations for the step, sized for its token count.
  struct Activations {
    std::vector<float> residual, normed, q, k, v, attn, proj, gate, up;
  };

  CpuBackend(std::shared_ptr<const Checkpoint> checkpoint, BlockTables tables)
      : checkpoint_(std::move(checkpoint)),
        config_(checkpoint_->config()),
        tables_(std::move(tables)) {}
  void LoadWeights();
  absl::Status AllocateKvCache();
  uint64_t CountWeightBytes() const;
  WeightView Matrix(const std::string& name);
  absl::StatusOr<StepInputs> Flatten(const StepPlan& plan) const;
  void Forward(const StepInputs& in);
  std::vector<int32_t> Sample(const StepPlan& plan) const;
  absl::StatusOr<std::vector<LogprobsResult>> Logprobs(
      std::span<const LogprobsQuery> queries) const;
  void Attention(Layer& layer, const StepInputs& in, Activations& act, int num_tokens);
  void Mlp(const Layer& layer, Activations& act, int num_tokens);
  void ComputeLogits(const StepInputs& in, const Activations& act);

  std::shared_ptr<const Checkpoint> checkpoint_;  // owns the mapped weight matrices
  std::vector<int32_t> previous_sampled_;         // the last step's sampled tokens
  ModelConfig config_;
  KvCacheSpec spec_;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  WeightView embed_, lm_head_;   // [vocab, hidden]
  std::vector<float> final_norm_;
  std::vector<std::vector<float>> widened_;  // fp32 copies of matrices too misaligned to map
  std::vector<Layer> layers_;
  BlockTables tables_;         // one row per live sequence, kept by the plans' deltas
  std::vector<float> logits_;  // [rows, vocab] of the last Forward
  int logit_rows_ = 0;         // rows of logits_
  int sample_rows_ = 0;        // its first rows, one per sampling sequence
  // Profiling (ProfileNextStep): asked for the next step; this step is timed; its timing so far.
  bool profile_next_ = false;
  bool profiling_ = false;
  uint64_t weight_bytes_ = 0;  // read by every step
  StepTiming pending_timing_;  // this step's, until it completes
  std::optional<StepTiming> last_timing_;
};

}  // namespace gqa
