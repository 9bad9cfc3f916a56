// gqa-bench decode: whole-model decode steps of the CUDA backend on Llama-3.2-1B- and
// Llama-3.1-8B-shaped models with random weights, each printed beside its bandwidth floor
// ((weight bytes + K/V bytes read) / the device-to-device copy bandwidth measured in the same
// run) and beside a PyTorch peer measured on the same GPU by client/bench/decode_peer.py.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/tensor_parallel_backend.h"
#include "backend/cuda/weights.h"
#include "backend/roofline.h"
#include "collectives_bench.h"
#include "copy_bandwidth.h"
#include "engine/engine.h"
#include "metrics/engine_metrics.h"
#include "model/config.h"
#include "model/tensor_parallel.h"

namespace gqa {
namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string model;  // "1b" or "8b"
  int kv_heads, batch, context;
};

ModelConfig ModelShape(const std::string& model, int kv_heads) {
  ModelConfig c;
  c.architecture_name = "LlamaForCausalLM";
  c.vocab_size = 128256;
  c.num_heads = 32;
  c.num_kv_heads = kv_heads;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 500000.0f;
  c.max_position_embeddings = 131072;
  if (model == "1b") {
    c.num_layers = 16, c.hidden_size = 2048, c.head_dim = 64, c.intermediate_size = 8192;
    c.tie_word_embeddings = true;
  } else {
    c.num_layers = 32, c.hidden_size = 4096, c.head_dim = 128, c.intermediate_size = 14336;
  }
  return c;
}

// Bytes one decode step must read: every weight matrix once (the embedding table only through
// the lm_head) plus the K/V of every sequence's context, bf16 weights and `kv_element_bytes` per
// K/V element (2: bf16, 1: FP8). The same terms as the server's gqa_step_read_bytes_total
// (backend/roofline.h).
double FloorBytes(const ModelConfig& c, int batch, int context, int kv_element_bytes = 2) {
  const double kv_bytes = double(batch) * context * 2 * c.num_layers * c.kv_size();
  return double(WeightBytesPerStep(c, 2)) + kv_element_bytes * kv_bytes;
}

// The bytes one rank of `world_size` reads in a step (its slices of the weights and its KV heads:
// one replica each when the ranks outnumber the KV heads), the tensor-parallel row's floor.
double RankFloorBytes(const ModelConfig& c, int world_size, int batch, int context) {
  const auto plan = PlanTensorParallelShard(c, /*rank=*/0, world_size);
  if (!plan.ok()) return NAN;
  return FloorBytes(cuda::ShardConfig(c, *plan), batch, context);
}

// Under a tensor-parallel row: its collectives alone, and their share of the step.
void PrintStepCollectives(const absl::StatusOr<bench::StepCollectivesTiming>& c, double step_ms) {
  if (!c.ok()) {
    std::printf("%27s | collectives alone: %s\n", "", std::string(c.status().message()).c_str());
    return;
  }
  std::printf(
      "%27s | collectives alone: %.3f ms per step, %.1f%% of it (%d all-reduces of %.1f "
      "KB, an all-gather of %.1f KB per rank; one graph)\n",
      "", c->ms, 100 * c->ms / step_ms, c->all_reduces, c->all_reduce_bytes / 1e3,
      c->all_gather_bytes / 1e3);
}

[[noreturn]] void Die(const absl::Status& status) {
  std::fprintf(stderr, "gqa-bench decode: %s\n", std::string(status.message()).c_str());
  std::fflush(stdout);
  std::exit(1);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Timing {
  double step_ms = NAN;    // ExecuteStep, wall clock (what the engine waits for)
  double device_ms = NAN;  // the same steps profiled: first kernel to last, on the device
  bool fits = false;
};

// The bench's sequences in the backend's block tables: ids never reused, and the rows to
// remove when a measurement ends (the backend is handed to an engine afterwards).
struct BenchRows {
  uint64_t next_id = 1;
  std::vector<uint64_t> leaving;
};
BenchRows bench_rows;

// --cuda_profiler_step: one step of each row between cudaProfilerStart and Stop, after the
// warm-up, for a profiler started with collection off (`ncu --profile-from-start off ...`):
// every kernel of one served step and nothing of the startup.
bool cuda_profiler_step = false;
// --cuda_profiler_prefill: the same for one step of the 2048-token prefill (after three).
bool cuda_profiler_prefill = false;

// --temperature T [--top_p P]: every sequence samples with these (default greedy), so the
// sampler's cost at a served setting shows in the step.
SamplingRow bench_sampling;

// A plan of removals only: the backend frees the rows and computes nothing.
void ReleaseRows(Backend& backend) {
  StepPlan plan;
  plan.tables.removed = std::exchange(bench_rows.leaving, {});
  if (auto out = backend.ExecuteStep(plan); !out.ok()) Die(out.status());
}

// Decode steps of `batch` sequences at `context` tokens each, blocks interleaved across them
// (sent once, as the engine's deltas do); with `profiled`, every step is timed on the device
// (ProfileNextStep), as a server does one step in --step_profile_interval. The device time is
// the median of 10 more steps, profiled.
Timing TimeDecode(Backend& backend, int batch, int context, int steps, bool profiled = false) {
  const KvCacheSpec& kv = backend.kv_spec();
  const int blocks_per_seq = (context + kv.block_size - 1) / kv.block_size;
  Timing t;
  if (int64_t(batch) * blocks_per_seq > kv.num_blocks) return t;
  t.fits = true;
  StepPlan plan;
  plan.tables.removed = std::exchange(bench_rows.leaving, {});
  std::vector<int32_t> token(batch, 1);
  for (int s = 0; s < batch; ++s) {
    const uint64_t id = bench_rows.next_id++;
    bench_rows.leaving.push_back(id);
    BlockTableRow row{id, 0, {}};
    for (int b = 0; b < blocks_per_seq; ++b) row.blocks.push_back(b * batch + s);
    plan.tables.rows.push_back(std::move(row));
    ScheduledSeq seq;
    seq.seq_id = id;
    seq.chunk = std::span<const int32_t>(&token[s], 1);
    seq.start_pos = context - 1;
    seq.samples = true;
    seq.is_decode = true;
    seq.sampling = bench_sampling;
    seq.sampling.seed = id;
    plan.seqs.push_back(seq);
  }
  auto step = [&](bool timed) {
    if (timed) backend.ProfileNextStep();
    if (auto out = backend.ExecuteStep(plan); !out.ok()) Die(out.status());
    plan.tables = {};
  };
  for (int i = 0; i < 5; ++i) step(profiled);
  if (cuda_profiler_step) {
    cudaProfilerStart();
    step(false);
    cudaProfilerStop();
  }
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const auto start = Clock::now();
    step(profiled);
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  t.step_ms = Median(ms);
  std::vector<double> device;
  for (int i = 0; i < 10; ++i) {
    step(true);
    if (auto timing = backend.LastStepTiming()) device.push_back(timing->step_seconds * 1e3);
  }
  if (!device.empty()) t.device_ms = Median(device);
  ReleaseRows(backend);
  return t;
}

double TimePrefill(Backend& backend, int length) {
  const KvCacheSpec& kv = backend.kv_spec();
  std::vector<int32_t> tokens(length), table((length + kv.block_size - 1) / kv.block_size);
  for (int i = 0; i < length; ++i) tokens[i] = (i * 7919) % 128000;
  std::iota(table.begin(), table.end(), 0);
  std::vector<double> ms;
  for (int i = 0; i < 13; ++i) {
    StepPlan plan;  // a new sequence each time, the previous one removed
    plan.tables.removed = std::exchange(bench_rows.leaving, {});
    const uint64_t id = bench_rows.next_id++;
    bench_rows.leaving.push_back(id);
    plan.tables.rows.push_back({id, 0, table});
    ScheduledSeq seq;
    seq.seq_id = id;
    seq.chunk = tokens;
    seq.samples = true;
    plan.seqs.push_back(seq);
    const bool profiled = cuda_profiler_prefill && i == 3;
    if (profiled) cudaProfilerStart();
    const auto start = Clock::now();
    if (auto out = backend.ExecuteStep(plan); !out.ok()) Die(out.status());
    if (profiled) cudaProfilerStop();
    if (i >= 3)
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  ReleaseRows(backend);
  return length / (Median(ms) * 1e-3);
}

// "MODEL KV BATCH CTX" -> ms per step from the PyTorch peer.
std::map<std::string, double> RunPeer(const std::string& command, const std::vector<Row>& rows,
                                      double* prefill_tokens_per_s) {
  std::string args = " decode";
  for (const Row& r : rows) {
    args += " " + r.model + ":" + std::to_string(r.kv_heads) + ":" + std::to_string(r.batch) + ":" +
            std::to_string(r.context);
  }
  std::map<std::string, double> result;
  auto read = [&](const std::string& cmd) {
    FILE* pipe = popen(cmd.c_str(), "r");
    if (!pipe) return;
    char kind[32], model[8];
    int kv, batch, ctx;
    double value;
    while (std::fscanf(pipe, "%31s %7s %d %d", kind, model, &kv, &batch) == 4) {
      const std::string k = kind;
      if (k == "decode" && std::fscanf(pipe, "%d %lf", &ctx, &value) == 2) {
        result[std::string(model) + " " + std::to_string(kv) + " " + std::to_string(batch) + " " +
               std::to_string(ctx)] = value;
      } else if (k == "prefill" && std::fscanf(pipe, "%lf", &value) == 1) {
        *prefill_tokens_per_s = value;
      } else if (std::fscanf(pipe, "%lf", &value) != 1) {
        break;
      }
    }
    pclose(pipe);
  };
  read(command + args);
  read(command + " prefill 1b:8:2048");
  return result;
}

// Token arrival times of every request of an engine run.
class Arrivals {
 public:
  EventSink SinkFor(int request) {
    return [this, request](TokenEvent e) {
      std::lock_guard lock(mu_);
      for (size_t i = 0; i < e.new_tokens.size(); ++i) times_[request].push_back(Clock::now());
      if (e.finish) {
        ++finished_;
        done_.notify_all();
      }
    };
  }
  void WaitFor(int n) {
    std::unique_lock lock(mu_);
    done_.wait(lock, [&] { return finished_ >= n; });
  }
  // Median over requests of each one's median interval between consecutive tokens, skipping the
  // first `skip` tokens.
  double MedianIntervalMs(int skip) {
    std::lock_guard lock(mu_);
    std::vector<double> medians;
    for (const auto& [request, times] : times_) {
      std::vector<double> gaps;
      for (size_t i = skip + 1; i < times.size(); ++i) {
        gaps.push_back(std::chrono::duration<double, std::milli>(times[i] - times[i - 1]).count());
      }
      if (!gaps.empty()) medians.push_back(Median(gaps));
    }
    return Median(medians);
  }

 private:
  std::mutex mu_;
  std::condition_variable done_;
  std::map<int, std::vector<Clock::time_point>> times_;
  int finished_ = 0;
};

}  // namespace

// gqa-bench engine: the whole engine (scheduler, backend, sampling, events) decoding `batch`
// requests at once, against the backend's own decode step at the same shape: how much the
// engine's host work between steps adds to a step. --async_scheduling on (the server's default
// on the GPU) or off.
int EngineBenchMain(int argc, char** argv) {
  int batch = 64, prompt = 2048, new_tokens = 192;
  bool async = true;
  for (int i = 2; i + 1 < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--async_scheduling") async = std::string(argv[++i]) != "off";
    if (arg == "--batch") batch = std::atoi(argv[++i]);
    if (arg == "--prompt") prompt = std::atoi(argv[++i]);
    if (arg == "--new_tokens") new_tokens = std::atoi(argv[++i]);
  }
  const ModelConfig config = ModelShape("1b", 8);
  CudaBackendOptions o;
  o.scheduler.max_num_seqs = batch;
  o.scheduler.max_num_batched_tokens = 2048;
  o.max_model_len = prompt + new_tokens + 16;
  o.cache.kv_cache_bytes =
      uint64_t(batch) * (prompt + new_tokens + 16) * 2 * config.num_layers * config.kv_size() * 2;
  auto backend = CreateCudaBackendWithRandomWeights(o, config);
  if (!backend.ok()) Die(backend.status());
  // The backend alone at the mean context of the decode phase.
  const Timing alone = TimeDecode(**backend, batch, prompt + new_tokens / 2, 50);
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  EngineConfig ec;
  ec.scheduler = {(*backend)->kv_spec().block_size, batch, o.scheduler.max_num_batched_tokens};
  ec.scheduler.async_scheduling = async;
  ec.limits = {config.vocab_size, o.max_model_len};
  // As the server runs it: step metrics on, one step in 16 profiled.
  ec.cost = {(*backend)->weight_bytes_per_step(), KvBytesPerToken((*backend)->kv_spec()), 0};
  auto bandwidth = (*backend)->MeasureReadBandwidth();
  if (!bandwidth.ok()) Die(bandwidth.status());
  metrics.SetDeviceBandwidth(*bandwidth);
  Engine engine(ec, std::move(*backend), &metrics);
  engine.Start();
  Arrivals arrivals;
  for (int r = 0; r < batch; ++r) {
    Request request;
    request.id = std::to_string(r);
    for (int t = 0; t < prompt; ++t) request.prompt.push_back((r * 7919 + t * 131) % 128000);
    request.stopping.max_new_tokens = new_tokens;
    request.stopping.ignore_eos = true;
    request.sink = arrivals.SinkFor(r);
    if (auto id = engine.Submit(std::move(request)); !id.ok()) Die(id.status());
  }
  arrivals.WaitFor(batch);
  // The second half of each request's tokens: every request is decoding by then (the prompts
  // prefill one per step, so the first requests decode beside the last prefills for a while).
  const double engine_ms = arrivals.MedianIntervalMs(/*skip=*/new_tokens / 2);
  const Histogram* decode = metrics.step_duration[static_cast<int>(StepPhase::kDecode)];
  std::printf(
      "engine (async scheduling %s), 1b shape, 8 kv heads, %d requests of %d prompt + %d new "
      "tokens: %.3f ms between "
      "a request's tokens (median); engine decode step %.3f ms (mean of %llu); backend alone "
      "%.3f ms per step at context %d: the engine adds %.1f%%\n",
      async ? "on" : "off", batch, prompt, new_tokens, engine_ms,
      decode->sum() / decode->count() * 1e3, static_cast<unsigned long long>(decode->count()),
      alone.step_ms, prompt + new_tokens / 2, 100 * (engine_ms / alone.step_ms - 1));
  return 0;
}

// gqa-bench profile: what the step-explaining metrics cost. The device side: decode steps with
// every step profiled (timing events in the graph) against none, so the cost at the server's
// --step_profile_interval N is (profiled - plain) / N. The host side: describing a step and
// observing it into the metrics, per step.
int ProfileBenchMain(int argc, char** argv) {
  int interval = 16, steps = 200;
  std::vector<Row> rows = {{"1b", 8, 1, 512},
                           {"1b", 8, 1, 2048},
                           {"1b", 1, 1, 2048},
                           {"1b", 8, 64, 2048},
                           {"8b", 8, 1, 2048}};
  for (int i = 2; i + 1 < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--interval") interval = std::atoi(argv[++i]);
    if (arg == "--steps") steps = std::atoi(argv[++i]);
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s; profiling cost at --step_profile_interval %d (median of %d steps)\n",
              prop.name, interval, steps);
  std::printf("%5s %3s %5s %5s | %9s %9s %9s %9s | %9s\n", "model", "kv", "batch", "ctx",
              "plain_ms", "prof_ms", "per_prof", "at_N", "host_us");
  for (const Row& r : rows) {
    const ModelConfig config = ModelShape(r.model, r.kv_heads);
    CudaBackendOptions o;
    o.scheduler.max_num_seqs = std::max(8, r.batch);
    o.max_model_len = r.context + 64;
    o.cache.kv_cache_bytes =
        uint64_t(r.batch) * (r.context + 64) * 4 * config.num_layers * config.kv_size();
    auto backend = CreateCudaBackendWithRandomWeights(o, config);
    if (!backend.ok()) Die(backend.status());
    // Interleaved rounds, so clock drift hits both alike.
    std::vector<double> plain, profiled;
    for (int round = 0; round < 4; ++round) {
      plain.push_back(TimeDecode(**backend, r.batch, r.context, steps / 4).step_ms);
      profiled.push_back(TimeDecode(**backend, r.batch, r.context, steps / 4, true).step_ms);
    }
    const double plain_ms = Median(plain), profiled_ms = Median(profiled);
    // Host: DescribeStep + ObserveStep for this batch, as the engine does every step.
    MetricsRegistry registry;
    EngineMetrics metrics(registry);
    metrics.SetDeviceBandwidth(4e12);
    std::vector<std::unique_ptr<Sequence>> seqs;
    SchedulerOutput out;
    for (int b = 0; b < r.batch; ++b) {
      Request request;
      request.prompt.assign(r.context - 1, 5);
      seqs.push_back(std::make_unique<Sequence>(std::move(request), b));
      seqs.back()->tokens.push_back(6);
      seqs.back()->num_computed = r.context - 1;
      out.chunks.push_back({seqs.back().get(), 1});
    }
    const StepCostModel cost{WeightBytesPerStep(config, 2),
                             uint64_t(2) * config.num_layers * config.kv_size() * 2, 0};
    const int calls = 20000;
    const auto start = Clock::now();
    for (int i = 0; i < calls; ++i) {
      StepStats stats = DescribeStep(out, cost);
      stats.wall_seconds = 1e-3;
      metrics.ObserveStep(stats);
    }
    const double host_us =
        std::chrono::duration<double, std::micro>(Clock::now() - start).count() / calls;
    const double per_profiled = profiled_ms - plain_ms;
    std::printf("%5s %3d %5d %5d | %9.4f %9.4f %8.2f%% %8.3f%% | %9.2f (%.3f%%)\n", r.model.c_str(),
                r.kv_heads, r.batch, r.context, plain_ms, profiled_ms,
                100 * per_profiled / plain_ms, 100 * per_profiled / interval / plain_ms, host_us,
                100 * host_us * 1e-3 / plain_ms);
    std::fflush(stdout);
  }
  return 0;
}

int DecodeBenchMain(int argc, char** argv) {
  std::string peer;
  std::vector<Row> only;
  bool eager = false, deterministic = false, fp8 = false;
  int steps = 50;
  int tensor_parallel_size = 0;  // 0: no tensor-parallel rows
  int skinny_max_rows = CudaOptions().skinny_gemm_max_rows;
  int tensor_core_max_rows = CudaOptions().tensor_core_gemm_max_rows;
  int fused_max_rows = CudaOptions().fused_norm_max_rows;
  bool skinny_fusion = CudaOptions().skinny_fusion;
  bool programmatic_attention = CudaOptions().programmatic_attention;
  AttentionKernels attention_kernels = CudaOptions().attention_kernels;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--peer" && i + 1 < argc) peer = argv[++i];
    if (arg == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    if (arg == "--eager") eager = true;
    if (arg == "--tensor_parallel_size" && i + 1 < argc) {
      tensor_parallel_size = std::atoi(argv[++i]);
    }
    if (arg == "--deterministic") deterministic = true;
    if (arg == "--kv_cache_dtype" && i + 1 < argc) {
      const std::string value = argv[++i];
      if (value != "fp8_e4m3" && value != "bfloat16" && value != "auto") {
        std::fprintf(stderr, "--kv_cache_dtype=%s: expected auto, bfloat16 or fp8_e4m3\n",
                     value.c_str());
        return 2;
      }
      fp8 = value == "fp8_e4m3";
    }
    if (arg == "--skinny_max_rows" && i + 1 < argc) skinny_max_rows = std::atoi(argv[++i]);
    if (arg == "--tensor_core_max_rows" && i + 1 < argc) {
      tensor_core_max_rows = std::atoi(argv[++i]);
    }
    if (arg == "--fused_max_rows" && i + 1 < argc) fused_max_rows = std::atoi(argv[++i]);
    if (arg == "--cuda_profiler_step") cuda_profiler_step = true;
    if (arg == "--cuda_profiler_prefill") cuda_profiler_prefill = true;
    if (arg == "--temperature" && i + 1 < argc) bench_sampling.temperature = std::atof(argv[++i]);
    if (arg == "--top_p" && i + 1 < argc) bench_sampling.top_p = std::atof(argv[++i]);
    if (arg == "--skinny_fusion" && i + 1 < argc) skinny_fusion = std::string(argv[++i]) != "off";
    if (arg == "--attention_kernels" && i + 1 < argc) {
      const auto parsed = ParseAttentionKernels(argv[++i]);
      if (!parsed.ok()) {
        std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
        return 2;
      }
      attention_kernels = *parsed;
    }
    if (arg == "--programmatic_attention" && i + 1 < argc) {
      programmatic_attention = std::string(argv[++i]) != "off";
    }
    char model[8];
    Row r;
    if (arg == "--only" && i + 1 < argc &&
        std::sscanf(argv[++i], "%7[^:]:%d:%d:%d", model, &r.kv_heads, &r.batch, &r.context) == 4) {
      r.model = model;
      only.push_back(r);
    }
  }
  std::vector<Row> rows;
  for (const std::string model : {"1b", "8b"}) {
    for (int kv : {32, 8, 1}) {
      for (int batch : {1, 8, 64}) {
        const int b = model == "8b" && kv == 32 && batch == 64 ? 32 : batch;
        for (int ctx : {512, 2048, 8192}) rows.push_back({model, kv, b, ctx});
      }
    }
  }
  if (!only.empty()) rows = only;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const double bandwidth = CopyBandwidth();
  std::printf("device: %s; device-to-device copy %.0f GB/s (read + written)\n", prop.name,
              bandwidth / 1e9);
  double peer_prefill = NAN;
  const auto peers =
      peer.empty() ? std::map<std::string, double>{} : RunPeer(peer, rows, &peer_prefill);
  std::printf(
      "decode steps, bf16, random weights, %s; step = ExecuteStep (wall clock, median of %d); "
      "device = profiled steps, first kernel to last%s\n",
      eager ? "eager" : "CUDA graphs", steps,
      fp8 ? "; each row followed by the same step with an FP8 (E4M3) KV cache, its floor from "
            "1-byte K/V"
          : "");
  std::printf("%5s %3s %5s %5s | %8s %8s %8s %7s %9s | %8s %7s %7s\n", "model", "kv", "batch",
              "ctx", "step_ms", "dev_ms", "floor_ms", "of_flr", "tok/s", "peer_ms", "pr_flr",
              "vs_peer");
  std::map<std::pair<std::string, int>, std::vector<Row>> groups;
  for (const Row& r : rows) groups[{r.model, r.kv_heads}].push_back(r);
  double prefill = NAN;
  for (const auto& [key, group] : groups) {
    const ModelConfig config = ModelShape(key.first, key.second);
    CudaBackendOptions o;
    o.scheduler.max_num_seqs = 64;
    o.scheduler.max_num_batched_tokens = 2048;
    o.max_model_len = 8192 + 64;
    o.cuda.enforce_eager = eager;
    o.backend.deterministic = deterministic;
    o.cuda.skinny_gemm_max_rows = skinny_max_rows;
    o.cuda.tensor_core_gemm_max_rows = tensor_core_max_rows;
    o.cuda.fused_norm_max_rows = fused_max_rows;
    o.cuda.skinny_fusion = skinny_fusion;
    o.cuda.programmatic_attention = programmatic_attention;
    o.cuda.attention_kernels = attention_kernels;
    // The FP8 timings first (when asked), from their own backend: one holds the card at a time.
    std::vector<Timing> fp8_timings;
    if (fp8) {
      CudaBackendOptions fp8_options = o;
      fp8_options.kv_cache_dtype = KvCacheDType::kFp8E4M3;
      auto fp8_backend = CreateCudaBackendWithRandomWeights(fp8_options, config);
      if (!fp8_backend.ok()) {
        std::printf("%5s %3d fp8: %s\n", key.first.c_str(), key.second,
                    std::string(fp8_backend.status().message()).c_str());
      } else {
        for (const Row& r : group) {
          fp8_timings.push_back(TimeDecode(**fp8_backend, r.batch, r.context, steps));
        }
      }
    }
    // The tensor-parallel timings (when asked), from their own ranks, before the one-GPU backend.
    std::vector<Timing> tp_timings;
    if (tensor_parallel_size > 0) {
      CudaBackendOptions tp_options = o;
      tp_options.backend.tensor_parallel_size = tensor_parallel_size;
      auto tp_backend = CreateTensorParallelBackendWithRandomWeights(tp_options, config);
      if (!tp_backend.ok()) {
        std::printf("%5s %3d tp %d: %s\n", key.first.c_str(), key.second, tensor_parallel_size,
                    std::string(tp_backend.status().message()).c_str());
      } else {
        for (const Row& r : group) {
          tp_timings.push_back(TimeDecode(**tp_backend, r.batch, r.context, steps));
        }
      }
    }
    // The same steps' collectives alone (the tensor-parallel backend freed: their own
    // communicators and buffers).
    std::vector<absl::StatusOr<bench::StepCollectivesTiming>> tp_collectives;
    if (tensor_parallel_size > 0) {
      for (const Row& r : group) {
        tp_collectives.push_back(bench::TimeStepCollectives(
            config, o.dtype, tensor_parallel_size, r.batch, kernels::IsGreedy(bench_sampling), 50));
      }
    }
    auto backend = CreateCudaBackendWithRandomWeights(o, config);
    if (!backend.ok()) {
      std::printf("%5s %3d: %s\n", key.first.c_str(), key.second,
                  std::string(backend.status().message()).c_str());
      continue;
    }
    for (size_t i = 0; i < group.size(); ++i) {
      const Row& r = group[i];
      const Timing t = TimeDecode(**backend, r.batch, r.context, steps);
      if (!t.fits) {
        std::printf("%5s %3d %5d %5d | does not fit in the KV pool\n", r.model.c_str(), r.kv_heads,
                    r.batch, r.context);
        continue;
      }
      const double floor_ms = FloorBytes(config, r.batch, r.context) / bandwidth * 1e3;
      const auto it = peers.find(r.model + " " + std::to_string(r.kv_heads) + " " +
                                 std::to_string(r.batch) + " " + std::to_string(r.context));
      const double peer_ms = it != peers.end() ? it->second : NAN;
      std::printf("%5s %3d %5d %5d | %8.3f %8.3f %8.3f %6.1f%% %9.0f | %8.3f %6.1f%% %6.2fx\n",
                  r.model.c_str(), r.kv_heads, r.batch, r.context, t.step_ms, t.device_ms, floor_ms,
                  100 * floor_ms / t.step_ms, r.batch / t.step_ms * 1e3, peer_ms,
                  100 * floor_ms / peer_ms, peer_ms / t.step_ms);
      if (i < fp8_timings.size() && fp8_timings[i].fits) {
        const Timing& f = fp8_timings[i];
        const double fp8_floor_ms =
            FloorBytes(config, r.batch, r.context, /*kv_element_bytes=*/1) / bandwidth * 1e3;
        std::printf(
            "%5s %3s %5s %5s | %8.3f %8.3f %8.3f %6.1f%% %9.0f | fp8_e4m3: %.2fx the "
            "bf16 step\n",
            "", "", "", "fp8", f.step_ms, f.device_ms, fp8_floor_ms, 100 * fp8_floor_ms / f.step_ms,
            r.batch / f.step_ms * 1e3, t.step_ms / f.step_ms);
      }
      if (i < tp_timings.size() && tp_timings[i].fits) {
        const Timing& p = tp_timings[i];
        const double rank_floor_ms =
            RankFloorBytes(config, tensor_parallel_size, r.batch, r.context) / bandwidth * 1e3;
        std::printf(
            "%5s %3s %5s %5s | %8.3f %8.3f %8.3f %6.1f%% %9.0f | tp %d: %.2fx the one-GPU step "
            "(floor: one rank's bytes)\n",
            "", "", "", "tp", p.step_ms, p.device_ms, rank_floor_ms,
            100 * rank_floor_ms / p.step_ms, r.batch / p.step_ms * 1e3, tensor_parallel_size,
            t.step_ms / p.step_ms);
        PrintStepCollectives(tp_collectives[i], p.step_ms);
      }
      std::fflush(stdout);
    }
    if (key == std::make_pair(std::string("1b"), 8)) prefill = TimePrefill(**backend, 2048);
  }
  if (!std::isnan(prefill)) {
    std::printf("prefill, 1b shape, 8 kv heads, one 2048-token prompt: %.0f tokens/s (peer %.0f)\n",
                prefill, peer_prefill);
  }
  return 0;
}

}  // namespace gqa
