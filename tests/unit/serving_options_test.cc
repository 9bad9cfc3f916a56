// The options tree: gqa-server's flags fill each part once (ServingOptionsFromFlags), one function
// refuses bad values and combinations naming the flag (ValidateServingOptions), and the backend
// factory builds a backend from the tree's parts.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/flags/reflection.h"
#include "backend/factory.h"
#include "common/test_checkpoint.h"
#include "model/checkpoint.h"
#include "options/serving_flags.h"
#include "options/serving_options.h"

namespace gqa {
namespace {

// Sets flags by name, as the command line would; restored when the test ends.
class FlagsTest : public ::testing::Test {
 protected:
  void Set(const std::vector<std::pair<std::string, std::string>>& flags) {
    for (const auto& [name, value] : flags) {
      absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      ASSERT_NE(flag, nullptr) << "--" << name;
      std::string error;
      ASSERT_TRUE(flag->ParseFrom(value, &error)) << "--" << name << "=" << value << ": " << error;
    }
  }

 private:
  absl::FlagSaver saver_;
};

TEST_F(FlagsTest, EachFlagFillsItsPart) {
  Set({{"model", "/models/llama"},
       {"load_format", "dummy"},
       {"dummy_seed", "7"},
       {"max_num_seqs", "12"},
       {"max_num_batched_tokens", "512"},
       {"max_model_len", "1024"},
       {"max_waiting_requests", "5"},
       {"block_size", "32"},
       {"kv_cache_memory", "512MiB"},
       {"num_kv_blocks", "99"},
       {"gpu_memory_utilization", "0.5"},
       {"kv_cache_dtype", "fp8_e4m3"},
       {"enable_prefix_caching", "false"},
       {"backend", "cpu"},
       {"dtype", "float16"},
       {"deterministic", "true"},
       {"cpu_threads", "3"},
       {"step_profile_interval", "0"},
       {"async_scheduling", "off"},
       {"tensor_parallel_size", "4"},
       {"step_timeout_seconds", "30"},
       {"enforce_eager", "true"},
       {"host", "127.0.0.1"},
       {"port", "1"},
       {"metrics_port", "2"},
       {"metrics_host", "::1"},
       {"http_port", "-1"},
       {"http_connections", "9"},
       {"served_model_name", "m"},
       {"port_file", "/tmp/p"},
       {"tls_cert", "c.pem"},
       {"tls_key", "k.pem"},
       {"tls_client_ca", "ca.pem"},
       {"auth_token_file", "t"},
       {"expose_model_path", "true"},
       {"max_request_size", "2KiB"},
       {"max_streams_per_connection", "4"},
       {"default_max_new_tokens", "8"},
       {"drain_grace_seconds", "1"}});
  absl::StatusOr<ServingOptions> o = ServingOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model.dir, "/models/llama");
  EXPECT_EQ(o->model.load_format, "dummy");
  EXPECT_EQ(o->model.dummy_seed, 7u);

  EXPECT_EQ(o->scheduler.max_num_seqs, 12);
  EXPECT_EQ(o->scheduler.max_num_batched_tokens, 512);
  EXPECT_EQ(o->scheduler.max_model_len, 1024);
  EXPECT_EQ(o->scheduler.max_waiting_requests, 5);

  EXPECT_EQ(o->cache.block_size, 32);
  EXPECT_EQ(o->cache.kv_cache_bytes, 512u << 20);
  EXPECT_EQ(o->cache.num_kv_blocks, 99);
  EXPECT_EQ(o->cache.gpu_memory_utilization, 0.5);
  EXPECT_EQ(o->cache.kv_cache_dtype, "fp8_e4m3");
  EXPECT_FALSE(o->cache.enable_prefix_caching);

  EXPECT_EQ(o->backend.kind, BackendKind::kCpu);
  EXPECT_EQ(o->backend.dtype, "float16");
  EXPECT_TRUE(o->backend.deterministic);
  EXPECT_EQ(o->backend.cpu_threads, 3);
  EXPECT_EQ(o->backend.step_profile_interval, 0);
  EXPECT_EQ(o->backend.async_scheduling, AsyncScheduling::kOff);
  EXPECT_EQ(o->backend.tensor_parallel_size, 4);
  EXPECT_EQ(o->backend.step_timeout_seconds, 30);
  EXPECT_EQ(StepTimeoutSeconds(o->backend, "cpu"), 30);

  EXPECT_TRUE(o->cuda.enforce_eager);
  EXPECT_EQ(o->cuda.device_index, 0);

  const ServiceOptions& s = o->service;
  EXPECT_EQ(s.host, "127.0.0.1");
  EXPECT_EQ(s.port, 1);
  EXPECT_EQ(s.metrics_port, 2);
  EXPECT_EQ(s.metrics_host, "::1");
  EXPECT_EQ(s.http_port, -1);
  EXPECT_EQ(s.http_connections, 9);
  EXPECT_EQ(s.served_model_name, "m");
  EXPECT_EQ(s.port_file, "/tmp/p");
  EXPECT_EQ(s.tls_cert_file, "c.pem");
  EXPECT_EQ(s.tls_key_file, "k.pem");
  EXPECT_EQ(s.tls_client_ca_file, "ca.pem");
  EXPECT_EQ(s.auth_token_file, "t");
  EXPECT_TRUE(s.expose_model_path);
  EXPECT_EQ(s.max_request_bytes, 2048u);
  EXPECT_EQ(s.max_streams_per_connection, 4);
  EXPECT_EQ(s.default_max_new_tokens, 8);
  EXPECT_EQ(s.drain_grace_seconds, 1);
  o->backend.tensor_parallel_size = 1;  // --backend cpu runs one rank
  EXPECT_TRUE(ValidateServingOptions(*o).ok()) << ValidateServingOptions(*o);
}

// The flags' defaults are the tree's defaults: a component built from ServingOptions{} behaves
// as the server with no flags.
TEST_F(FlagsTest, DefaultsAreTheTreesDefaults) {
  absl::StatusOr<ServingOptions> o = ServingOptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  const ServingOptions d;
  EXPECT_EQ(o->model.load_format, d.model.load_format);
  EXPECT_EQ(o->scheduler.max_num_seqs, d.scheduler.max_num_seqs);
  EXPECT_EQ(o->scheduler.max_num_batched_tokens, d.scheduler.max_num_batched_tokens);
  EXPECT_EQ(o->scheduler.max_model_len, d.scheduler.max_model_len);
  EXPECT_EQ(o->scheduler.max_waiting_requests, d.scheduler.max_waiting_requests);
  EXPECT_EQ(o->cache.block_size, d.cache.block_size);
  EXPECT_EQ(o->cache.kv_cache_bytes, d.cache.kv_cache_bytes);
  EXPECT_EQ(o->cache.num_kv_blocks, d.cache.num_kv_blocks);
  EXPECT_EQ(o->cache.gpu_memory_utilization, d.cache.gpu_memory_utilization);
  EXPECT_EQ(o->cache.kv_cache_dtype, d.cache.kv_cache_dtype);
  EXPECT_EQ(o->cache.enable_prefix_caching, d.cache.enable_prefix_caching);
  EXPECT_EQ(o->backend.kind, d.backend.kind);
  EXPECT_EQ(o->backend.tensor_parallel_size, d.backend.tensor_parallel_size);
  EXPECT_EQ(d.backend.tensor_parallel_size, 1);
  EXPECT_EQ(o->backend.dtype, d.backend.dtype);
  EXPECT_EQ(o->backend.deterministic, d.backend.deterministic);
  EXPECT_EQ(o->backend.step_profile_interval, d.backend.step_profile_interval);
  EXPECT_EQ(o->backend.async_scheduling, d.backend.async_scheduling);
  EXPECT_EQ(o->cuda.enforce_eager, d.cuda.enforce_eager);
  EXPECT_EQ(o->service.host, d.service.host);
  EXPECT_EQ(o->service.port, d.service.port);
  EXPECT_EQ(o->service.metrics_port, d.service.metrics_port);
  EXPECT_EQ(o->service.http_port, d.service.http_port);
  EXPECT_EQ(o->service.http_connections, d.service.http_connections);
  EXPECT_EQ(o->service.max_request_bytes, d.service.max_request_bytes);
  EXPECT_EQ(o->service.max_streams_per_connection, d.service.max_streams_per_connection);
  EXPECT_EQ(o->service.default_max_new_tokens, d.service.default_max_new_tokens);
  EXPECT_EQ(o->service.drain_grace_seconds, d.service.drain_grace_seconds);
  EXPECT_EQ(ValidateServingOptions(*o).message(), "--model DIR is required");
}

TEST_F(FlagsTest, TextThatDoesNotParseNamesItsFlag) {
  const std::vector<std::pair<std::pair<std::string, std::string>, std::string>> cases = {
      {{"backend", "tpu"}, "--backend=tpu: expected auto, cpu or cuda"},
      {{"async_scheduling", "maybe"}, "--async_scheduling=maybe: expected auto, on or off"},
      {{"kv_cache_memory", "lots"}, "--kv_cache_memory: expected a size like 512MiB or 2GiB"},
      {{"max_request_size", "big"}, "--max_request_size: expected a size from 1KiB to 1GiB"},
  };
  for (const auto& [flag, message] : cases) {
    absl::FlagSaver saver;
    Set({flag});
    absl::StatusOr<ServingOptions> o = ServingOptionsFromFlags();
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << flag.first;
    EXPECT_EQ(o.status().message(), message);
  }
}

// The watchdog: auto is 120 s on the GPU and none on the CPU (a large model's prefill chunk may
// take minutes there); 0 turns it off anywhere.
TEST(StepTimeoutOption, AutoIs120SecondsOnTheGpuAndNoneOnTheCpu) {
  BackendOptions b;
  EXPECT_EQ(b.step_timeout_seconds, -1);
  EXPECT_EQ(StepTimeoutSeconds(b, "cuda"), 120);
  EXPECT_EQ(StepTimeoutSeconds(b, "cpu"), 0);
  b.step_timeout_seconds = 0;
  EXPECT_EQ(StepTimeoutSeconds(b, "cuda"), 0);
}

// auto: on where the device runs while the host works (the GPU), off on the CPU backend.
TEST(AsyncSchedulingOption, AutoIsOnForTheGpuOnly) {
  BackendOptions b;
  EXPECT_EQ(b.async_scheduling, AsyncScheduling::kAuto);
  EXPECT_TRUE(UsesAsyncScheduling(b, "cuda"));
  EXPECT_FALSE(UsesAsyncScheduling(b, "cpu"));
  b.async_scheduling = AsyncScheduling::kOn;
  EXPECT_TRUE(UsesAsyncScheduling(b, "cpu"));
  b.async_scheduling = AsyncScheduling::kOff;
  EXPECT_FALSE(UsesAsyncScheduling(b, "cuda"));
  EXPECT_EQ(*ParseAsyncScheduling("true"), AsyncScheduling::kOn);
  EXPECT_EQ(*ParseAsyncScheduling("false"), AsyncScheduling::kOff);
}

TEST(AttentionKernelsOption, ParsesTheThreeNamesAndRefusesOthers) {
  EXPECT_EQ(CudaOptions().attention_kernels, AttentionKernels::kAuto);
  EXPECT_EQ(*ParseAttentionKernels("mma_sync"), AttentionKernels::kMmaSync);
  EXPECT_EQ(*ParseAttentionKernels("warpgroup"), AttentionKernels::kWarpgroup);
  const auto bad = ParseAttentionKernels("wgmma");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--attention_kernels=wgmma"), std::string::npos);
}

ServingOptions Valid() {
  ServingOptions o;
  o.model.dir = "/models/llama";
  return o;
}

TEST(ValidateServingOptions, AcceptsTheDefaultsWithAModel) {
  EXPECT_TRUE(ValidateServingOptions(Valid()).ok());
  ServingOptions tls = Valid();
  tls.service.tls_cert_file = "c.pem";
  tls.service.tls_key_file = "k.pem";
  tls.service.tls_client_ca_file = "ca.pem";
  EXPECT_TRUE(ValidateServingOptions(tls).ok());
}

// Each refusal names its flag and, where it has one, quotes the value (the texts gqa-server has
// always printed).
TEST(ValidateServingOptions, RefusesNamingTheFlag) {
  struct Case {
    void (*change)(ServingOptions&);
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](ServingOptions& o) { o.model.dir.clear(); }, "--model DIR is required"},
      {[](ServingOptions& o) { o.model.load_format = "gguf"; },
       "--load_format must be auto or dummy"},
      {[](ServingOptions& o) { o.service.http_port = 65536; },
       "--http_port 65536 must be a port, 0 (off) or -1 (any free port)"},
      {[](ServingOptions& o) { o.service.http_port = -2; },
       "--http_port -2 must be a port, 0 (off) or -1 (any free port)"},
      {[](ServingOptions& o) { o.service.http_connections = 0; },
       "--http_connections 0 must be from 1 to 65536"},
      {[](ServingOptions& o) { o.service.max_request_bytes = 1023; },
       "--max_request_size: expected a size from 1KiB to 1GiB"},
      {[](ServingOptions& o) { o.service.max_request_bytes = (1u << 30) + 1; },
       "--max_request_size: expected a size from 1KiB to 1GiB"},
      {[](ServingOptions& o) { o.service.max_streams_per_connection = 0; },
       "--max_waiting_requests must be >= 0 and --max_streams_per_connection >= 1"},
      {[](ServingOptions& o) { o.scheduler.max_waiting_requests = -1; },
       "--max_waiting_requests must be >= 0 and --max_streams_per_connection >= 1"},
      {[](ServingOptions& o) { o.service.tls_cert_file = "c.pem"; },
       "--tls_cert and --tls_key go together"},
      {[](ServingOptions& o) { o.service.tls_key_file = "k.pem"; },
       "--tls_cert and --tls_key go together"},
      {[](ServingOptions& o) { o.service.tls_client_ca_file = "ca.pem"; },
       "--tls_client_ca needs --tls_cert and --tls_key"},
      {[](ServingOptions& o) { o.cache.gpu_memory_utilization = 1.0000001; },
       "--gpu_memory_utilization 1.0000001 must be in (0, 1]"},
      {[](ServingOptions& o) { o.cache.gpu_memory_utilization = 0; },
       "--gpu_memory_utilization 0 must be in (0, 1]"},
      {[](ServingOptions& o) { o.backend.step_profile_interval = -1; },
       "--step_profile_interval must be >= 0, got -1"},
      {[](ServingOptions& o) { o.backend.step_timeout_seconds = -2; },
       "--step_timeout_seconds must be >= 0 (or -1: auto), got -2"},
      {[](ServingOptions& o) { o.backend.tensor_parallel_size = 0; },
       "--tensor_parallel_size 0 must be >= 1"},
      {[](ServingOptions& o) { o.backend.tensor_parallel_size = -2; },
       "--tensor_parallel_size -2 must be >= 1"},
      {[](ServingOptions& o) {
         o.backend.kind = BackendKind::kCpu;
         o.backend.tensor_parallel_size = 2;
       },
       "--tensor_parallel_size 2: the CPU backend runs one rank (use --backend cuda)"},
      {[](ServingOptions& o) { o.cache.block_size = 0; },
       "--block_size, --max_num_seqs and --max_num_batched_tokens must be >= 1"},
      {[](ServingOptions& o) { o.scheduler.max_num_seqs = 0; },
       "--block_size, --max_num_seqs and --max_num_batched_tokens must be >= 1"},
      {[](ServingOptions& o) { o.scheduler.max_num_batched_tokens = 0; },
       "--block_size, --max_num_seqs and --max_num_batched_tokens must be >= 1"},
  };
  for (const Case& c : cases) {
    ServingOptions o = Valid();
    c.change(o);
    const absl::Status status = ValidateServingOptions(o);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(status.message(), c.message);
  }
}

TEST(ValidateServingOptions, AcceptsTensorParallelRanksOnTheGpuOrAuto) {
  ServingOptions o = Valid();
  o.backend.tensor_parallel_size = 8;
  EXPECT_TRUE(ValidateServingOptions(o).ok());  // auto: the factory checks the GPUs
  o.backend.kind = BackendKind::kCuda;
  EXPECT_TRUE(ValidateServingOptions(o).ok());
}

// The checks that need the model and the machine, made when the backend is created: one line
// each, naming --tensor_parallel_size.
TEST(CheckTensorParallelPlacement, RefusesWhatCannotBeSplitOrPlaced) {
  ModelConfig c = testing::TinyConfig(/*kv_heads=*/2);
  c.num_heads = 8;
  c.intermediate_size = 512;
  EXPECT_TRUE(CheckTensorParallelPlacement(1, BackendKind::kCpu, c, 0).ok());
  EXPECT_TRUE(CheckTensorParallelPlacement(1, BackendKind::kCuda, c, 1).ok());
  EXPECT_TRUE(CheckTensorParallelPlacement(2, BackendKind::kCuda, c, 2).ok());
  EXPECT_TRUE(CheckTensorParallelPlacement(8, BackendKind::kCuda, c, 8).ok());  // KV replicated
  EXPECT_EQ(CheckTensorParallelPlacement(2, BackendKind::kCuda, c, 1).message(),
            "--tensor_parallel_size 2: only 1 GPU visible");
  EXPECT_EQ(CheckTensorParallelPlacement(4, BackendKind::kCuda, c, 3).message(),
            "--tensor_parallel_size 4: only 3 GPUs visible");
  EXPECT_EQ(CheckTensorParallelPlacement(3, BackendKind::kCuda, c, 8).message(),
            "--tensor_parallel_size 3 does not divide num_attention_heads 8");
  c.num_heads = 12;
  c.num_kv_heads = 4;
  EXPECT_EQ(CheckTensorParallelPlacement(6, BackendKind::kCuda, c, 8).message(),
            "--tensor_parallel_size 6 and num_key_value_heads 4: one must divide the other (KV "
            "heads are split, or replicated on tensor_parallel_size / num_key_value_heads ranks "
            "each)");
  const absl::Status cpu = CheckTensorParallelPlacement(2, BackendKind::kCpu, c, 0);
  EXPECT_EQ(cpu.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu.message(),
            "--tensor_parallel_size 2: the CPU backend runs one rank (tensor parallelism needs "
            "the CUDA backend and as many GPUs)");
}

// --backend auto that resolved to the CPU (no GPU) refuses more than one rank at creation.
TEST(CreateBackendFromTheTree, RefusesTensorParallelRanksOnTheCpu) {
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), testing::TinyConfig());
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ServingOptions o = Valid();
  o.backend.tensor_parallel_size = 2;
  auto backend = CreateBackend(o, BackendKind::kCpu, std::move(*ckpt));
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(backend.status().message().find("--tensor_parallel_size 2: the CPU backend runs one"),
            std::string::npos);
}

// The factory takes the tree's parts as they are: the cache part sizes the pool, the scheduler
// part's max_model_len 0 means the model's maximum.
TEST(CreateBackendFromTheTree, TakesTheCacheAndSchedulerParts) {
  testing::TempDir dir;
  const ModelConfig config = testing::TinyConfig();
  testing::WriteRandomCheckpoint(dir.path(), config);
  auto ckpt = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ServingOptions o = Valid();
  o.cache.block_size = 8;
  o.cache.num_kv_blocks = 6;
  o.cache.kv_cache_dtype = "fp8_e4m3";
  EXPECT_EQ(ServedMaxModelLen(o.scheduler, (*ckpt)->config()),
            (*ckpt)->config().max_position_embeddings);
  o.scheduler.max_model_len = 40;
  EXPECT_EQ(ServedMaxModelLen(o.scheduler, (*ckpt)->config()), 40);
  auto backend = CreateBackend(o, BackendKind::kCpu, std::move(*ckpt));
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->kv_spec().block_size, 8);
  EXPECT_EQ((*backend)->kv_spec().num_blocks, 6);
  EXPECT_EQ((*backend)->kv_spec().cache_dtype, KvCacheDType::kFp8E4M3);
  EXPECT_EQ(CreateBackend(o, BackendKind::kAuto, nullptr).status().message(),
            "CreateBackend needs a resolved backend kind");
}

}  // namespace
}  // namespace gqa
