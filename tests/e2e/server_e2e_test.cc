// Black-box tests of the built gqa-server binary over gRPC on loopback.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/generate_client.h"
#include "common/test_checkpoint.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server_process.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/train_bpe.h"

namespace gqa::testing {
namespace {

namespace pb = gqa::v1;

using Outcome = GenerateOutcome;

Outcome Generate(pb::Generation::Stub& stub, const pb::GenerateRequest& request) {
  return GenerateAll(stub, request);
}

pb::GenerateRequest MakeRequest(int prompt_len, int max_new, uint32_t salt = 0) {
  std::vector<uint32_t> prompt;
  for (int i = 0; i < prompt_len; ++i) prompt.push_back(2 + (i * 11 + salt * 7) % 120);
  return TokenIdRequest(prompt, max_new);
}

grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& address) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckResponse response;
  if (!stub->Check(&context, {}, &response).ok())
    return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return response.status();
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new TempDir();
    WriteRandomCheckpoint(model_->path(), E2eConfig(2), std::random_device{}());
    server_ = new ServerProcess(model_->path(), {});
    ASSERT_TRUE(server_->started()) << server_->Log();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete model_;
  }
  void SetUp() override { ASSERT_TRUE(server_->started()); }

  static TempDir* model_;
  static ServerProcess* server_;
};
TempDir* ServerTest::model_ = nullptr;
ServerProcess* ServerTest::server_ = nullptr;

TEST_F(ServerTest, StreamsTokensThenOneFinalMessage) {
  auto stub = server_->Stub();
  // 200 tokens: event delivery merges a request's tokens while its stream is still writing, so
  // a short request can arrive as one message when the machine is loaded (12 tokens did, once,
  // in a CI run on 2 cores); 200 take long enough to stream in several.
  auto req = MakeRequest(5, 200);
  req.set_request_id("my-request");
  Outcome out = Generate(*stub, req);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_GE(out.messages.size(), 2u);
  EXPECT_EQ(out.tokens.size(), 200u);
  for (size_t i = 0; i < out.messages.size(); ++i) {
    EXPECT_EQ(out.messages[i].request_id(), "my-request");
    const bool last = i + 1 == out.messages.size();
    EXPECT_EQ(out.messages[i].finish_reason() != pb::FINISH_REASON_UNSPECIFIED, last) << i;
  }
  const auto& f = out.final_message();
  EXPECT_EQ(f.finish_reason(), pb::FINISH_REASON_LENGTH);
  EXPECT_EQ(f.usage().prompt_tokens(), 5u);
  EXPECT_EQ(f.usage().completion_tokens(), 200u);
  EXPECT_GT(f.timing().total_seconds(), 0.0);
  EXPECT_LE(f.timing().time_to_first_token_seconds(), f.timing().total_seconds());
  EXPECT_LE(f.timing().queue_seconds(), f.timing().time_to_first_token_seconds());
}

TEST_F(ServerTest, ConcurrentRequestsMatchTheirOutputsAlone) {
  auto stub = server_->Stub();
  const int n = 20;
  std::vector<pb::GenerateRequest> requests;
  std::vector<std::vector<uint32_t>> alone(n), batched(n);
  for (int i = 0; i < n; ++i) {
    requests.push_back(MakeRequest(1 + 4 * i, 4 + (i * 5) % 17, i));
    if (i % 3 == 1) {
      requests[i].mutable_sampling()->set_temperature(0.9f);
      requests[i].mutable_sampling()->set_top_p(0.9f);
      requests[i].mutable_sampling()->set_seed(1000 + i);
    }
    Outcome out = Generate(*stub, requests[i]);
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    alone[i] = out.tokens;
  }
  std::vector<std::thread> threads;
  std::vector<grpc::Status> statuses(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      Outcome out = Generate(*stub, requests[i]);
      statuses[i] = out.status;
      batched[i] = out.tokens;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i;
    EXPECT_EQ(batched[i].size(), requests[i].stopping().max_new_tokens()) << i;
    EXPECT_EQ(batched[i], alone[i]) << "request " << i;
  }
  // The engine batched them: some step ran more than one sequence.
  EXPECT_GT(server_->Metric("gqa_step_batch_size_bucket{le=\"1\"}"), 0);
  EXPECT_LT(server_->Metric("gqa_step_batch_size_bucket{le=\"1\"}"),
            server_->Metric("gqa_step_batch_size_count"));
}

TEST_F(ServerTest, PreemptionUnderASmallPoolKeepsOutputsIdentical) {
  ServerProcess small(model_->path(), SmallPoolArgs());
  ASSERT_TRUE(small.started()) << small.Log();
  auto big_stub = server_->Stub();
  auto small_stub = small.Stub();
  const int n = 16;
  std::vector<pb::GenerateRequest> requests;
  std::vector<std::vector<uint32_t>> expected(n), got(n);
  for (int i = 0; i < n; ++i) {
    requests.push_back(MakeRequest(6 + 2 * i, 24, 100 + i));
    if (i % 2) {
      requests[i].mutable_sampling()->set_temperature(1.0f);
      requests[i].mutable_sampling()->set_seed(i);
    }
    Outcome out = Generate(*big_stub, requests[i]);
    ASSERT_TRUE(out.status.ok());
    expected[i] = out.tokens;
  }
  std::vector<std::thread> threads;
  std::vector<uint32_t> preemptions(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      Outcome out = Generate(*small_stub, requests[i]);
      got[i] = out.tokens;
      if (!out.messages.empty()) preemptions[i] = out.final_message().usage().preemptions();
    });
  }
  for (auto& t : threads) t.join();
  // On the GPU a preempted request recomputes its tokens with the prefill kernel where it first
  // decoded them: bf16 rounds differently, so only its length is exact. The others run batched
  // differently on the two servers: deterministic mode keeps them identical.
  for (int i = 0; i < n; ++i) {
    if (E2eBackend() == "cpu" || preemptions[i] == 0) {
      EXPECT_EQ(got[i], expected[i]) << "request " << i;
    } else {
      EXPECT_EQ(got[i].size(), expected[i].size()) << "request " << i;
    }
  }
  EXPECT_GT(small.Metric("gqa_preemptions_total"), 0) << "the pool was meant to be too small";
  EXPECT_GT(std::accumulate(preemptions.begin(), preemptions.end(), 0u), 0u);
  EXPECT_EQ(small.Metric("gqa_requests_finished_total{finish_reason=\"length\"}"), n);
  EXPECT_EQ(small.Metric("gqa_kv_cache_usage_ratio"), 0);
}

TEST_F(ServerTest, BadInputGetsInvalidArgumentNamingTheField) {
  auto stub = server_->Stub();
  std::vector<std::pair<pb::GenerateRequest, std::string>> cases;
  auto add = [&](std::string field, auto edit) {
    pb::GenerateRequest req = MakeRequest(4, 8);
    edit(req);
    cases.emplace_back(req, field);
  };
  add("prompt.token_ids", [](auto& r) { r.mutable_token_ids()->clear_ids(); });
  add("prompt", [](auto& r) { r.clear_prompt(); });
  add("prompt.token_ids[2]", [](auto& r) { r.mutable_token_ids()->set_ids(2, 128); });
  add("prompt.token_ids[0]", [](auto& r) { r.mutable_token_ids()->set_ids(0, 4000000000u); });
  add("prompt.text", [](auto& r) { r.set_text("hello"); });
  add("stopping.max_new_tokens", [](auto& r) { r.mutable_stopping()->set_max_new_tokens(0); });
  add("stopping.max_new_tokens", [](auto& r) { r.mutable_stopping()->set_max_new_tokens(509); });
  add("stopping.stop", [](auto& r) { r.mutable_stopping()->add_stop("\n"); });
  add("stopping.stop_token_ids[0]", [](auto& r) { r.mutable_stopping()->add_stop_token_ids(999); });
  add("sampling.temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-1.0f); });
  add("sampling.temperature", [](auto& r) { r.mutable_sampling()->set_temperature(NAN); });
  add("sampling.top_p", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); });
  add("sampling.top_p", [](auto& r) { r.mutable_sampling()->set_top_p(-0.2f); });
  add("sampling.top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-3); });
  for (const auto& [req, field] : cases) {
    Outcome out = Generate(*stub, req);
    EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_EQ(out.status.error_message().rfind(field, 0), 0u)
        << field << ": " << out.status.error_message();
    EXPECT_TRUE(out.messages.empty());
  }
  Outcome ok = Generate(*stub, MakeRequest(4, 3));
  EXPECT_TRUE(ok.status.ok()) << "the server stopped serving after bad input";
}

TEST_F(ServerTest, LimitErrorsQuoteTheValueSentAndAreCounted) {
  auto stub = server_->Stub();
  const std::string rejected = "gqa_requests_rejected_total{reason=\"invalid_argument\"}";
  const double before = server_->Metric(rejected);
  pb::GenerateRequest huge = MakeRequest(4, 8);
  huge.mutable_stopping()->set_max_new_tokens(4294967295u);
  Outcome out = Generate(*stub, huge);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.status.error_message().rfind("stopping.max_new_tokens: 4294967295 ", 0), 0u)
      << out.status.error_message();
  pb::GenerateRequest long_id = MakeRequest(4, 8);
  long_id.set_request_id(std::string(257, 'x'));
  out = Generate(*stub, long_id);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.status.error_message().rfind("request_id: 257 bytes", 0), 0u)
      << out.status.error_message();
  EXPECT_EQ(server_->Metric(rejected), before + 2);
}

TEST_F(ServerTest, OversizedRequestIsRefusedAndServingGoesOn) {
  pb::GenerateRequest big = MakeRequest(4, 8);
  for (int i = 0; i < 2'000'000; ++i) big.mutable_token_ids()->add_ids(100'000);  // ~6 MB
  Outcome out = Generate(*server_->Stub(), big);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << out.status.error_message();
  EXPECT_TRUE(Generate(*server_->Stub(), MakeRequest(4, 3)).status.ok());
}

// A TCP connection to 127.0.0.1:port (or -1).
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST_F(ServerTest, ProbesAnswerWhateverOtherClientsDoToTheMetricsPort) {
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) idle.push_back(Connect(server_->metrics_port()));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(server_->HttpGet("/healthz").first, 200);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 2.0) << "64 idle connections delayed /healthz";
  // A 64 MiB POST is answered from its headers, not read first.
  const int post = Connect(server_->metrics_port());
  const std::string head = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n";
  ASSERT_EQ(write(post, head.data(), head.size()), static_cast<ssize_t>(head.size()));
  char reply[64] = {};
  timeval timeout{5, 0};
  setsockopt(post, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ASSERT_GT(read(post, reply, sizeof reply - 1), 0);
  EXPECT_EQ(std::string(reply).rfind("HTTP/1.1 413", 0), 0u) << reply;
  close(post);
  for (int fd : idle) close(fd);
}

TEST_F(ServerTest, PromptThatCanNeverFitTheCacheIsRefused) {
  ServerProcess small(model_->path(), {"--num_kv_blocks=4", "--block_size=16"});  // 64 tokens
  ASSERT_TRUE(small.started()) << small.Log();
  Outcome out = Generate(*small.Stub(), MakeRequest(40, 40));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(out.status.error_message().find("KV blocks"), std::string::npos);
  EXPECT_TRUE(Generate(*small.Stub(), MakeRequest(40, 20)).status.ok());
}

TEST_F(ServerTest, StopTokenAndEos) {
  auto stub = server_->Stub();
  Outcome probe = Generate(*stub, MakeRequest(6, 10, 3));
  ASSERT_EQ(probe.tokens.size(), 10u);
  auto req = MakeRequest(6, 10, 3);
  req.mutable_stopping()->add_stop_token_ids(probe.tokens[4]);
  Outcome stopped = Generate(*stub, req);
  const auto first = std::find(probe.tokens.begin(), probe.tokens.end(), probe.tokens[4]);
  EXPECT_EQ(stopped.tokens, std::vector<uint32_t>(probe.tokens.begin(), first + 1));
  EXPECT_EQ(stopped.final_message().finish_reason(), pb::FINISH_REASON_STOP_TOKEN);
  EXPECT_EQ(stopped.final_message().matched_stop(), probe.tokens[4]);
}

TEST_F(ServerTest, ModelInfo) {
  auto stub = server_->Stub();
  grpc::ClientContext context;
  pb::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&context, {}, &info).ok());
  EXPECT_EQ(info.architecture(), "LlamaForCausalLM");
  EXPECT_EQ(info.num_attention_heads(), 8u);
  EXPECT_EQ(info.num_key_value_heads(), 2u);
  EXPECT_EQ(info.group_size(), 4u);
  EXPECT_EQ(info.head_dim(), static_cast<uint32_t>(E2eConfig(2).head_dim));
  EXPECT_EQ(info.vocab_size(), 128u);
  EXPECT_EQ(info.max_model_len(), 512u);
  EXPECT_EQ(info.kv_block_size(), 16u);
  EXPECT_GT(info.kv_blocks_total(), 0u);
  EXPECT_EQ(info.backend(), E2eBackend());
  EXPECT_EQ(info.dtype(), "float32");
  // GQA_E2E_TENSOR_PARALLEL_SIZE splits the model: each rank's pool holds its share of the
  // 2 KV heads (one replicated head past 2 ranks).
  const char* tp_env = std::getenv("GQA_E2E_TENSOR_PARALLEL_SIZE");
  const uint32_t tp = tp_env && *tp_env ? uint32_t(std::atoi(tp_env)) : 1u;
  EXPECT_EQ(info.tensor_parallel_size(), tp);
  EXPECT_EQ(info.kv_heads_per_rank(), std::max(2u / tp, 1u));
  if (E2eBackend() == "cpu") {
    EXPECT_EQ(info.device(), "cpu");
    EXPECT_EQ(info.compute_dtype(), "float32");
  } else {
    EXPECT_NE(info.device(), "cpu");
    EXPECT_EQ(info.compute_dtype(), "bfloat16");  // auto, for a float32 checkpoint
  }
}

TEST_F(ServerTest, TokenizeWithoutATokenizerIsInvalid) {
  grpc::ClientContext context;
  pb::TokenizeRequest request;
  request.set_text("hello");
  pb::TokenizeResponse response;
  const grpc::Status status = server_->Stub()->Tokenize(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message().rfind("text:", 0), 0u) << status.error_message();
}

TEST_F(ServerTest, HealthReflectionAndMetricsAnswer) {
  EXPECT_EQ(Health(server_->address()), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(server_->HttpGet("/healthz").first, 200);

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(
      grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = reflection->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::vector<std::string> services;
  for (const auto& s : resp.list_services_response().service()) services.push_back(s.name());
  EXPECT_NE(std::find(services.begin(), services.end(), "gqa.v1.Generation"), services.end());
  stream->WritesDone();
  while (stream->Read(&resp)) {
  }
  EXPECT_TRUE(stream->Finish().ok());

  Generate(*server_->Stub(), MakeRequest(3, 3));
  const std::string text = server_->HttpGet("/metrics").second;
  for (const char* name :
       {"gqa_time_to_first_token_seconds_bucket", "gqa_inter_token_latency_seconds_bucket",
        "gqa_e2e_request_latency_seconds_bucket", "gqa_request_queue_time_seconds_bucket",
        "gqa_step_duration_seconds_bucket{phase=\"prefill\",le=\"0.0001\"}",
        "gqa_step_duration_seconds_bucket{phase=\"decode\"", "gqa_step_batch_size_bucket",
        "gqa_requests_running", "gqa_requests_waiting", "gqa_kv_cache_usage_ratio",
        "gqa_kv_cache_blocks ", "gqa_prompt_tokens_total", "gqa_generation_tokens_total",
        "gqa_preemptions_total", "gqa_requests_finished_total{finish_reason=\"length\"}",
        "gqa_model_info{", "num_key_value_heads=\"2\"", "group_size=\"4\""}) {
    EXPECT_NE(text.find(name), std::string::npos) << name;
  }
  EXPECT_GT(server_->Metric("gqa_step_duration_seconds_count{phase=\"decode\"}"), 0);
  // gqa_kv_cache_blocks_total, its old name, stays one release, saying what replaces it.
  EXPECT_GT(server_->Metric("gqa_kv_cache_blocks"), 0);
  EXPECT_EQ(server_->Metric("gqa_kv_cache_blocks_total"), server_->Metric("gqa_kv_cache_blocks"));
  EXPECT_NE(text.find("# HELP gqa_kv_cache_blocks_total Deprecated: use gqa_kv_cache_blocks"),
            std::string::npos);
}

// --help lists each program's own flags (not "No flags matched"), and not Abseil's.
TEST(HelpTest, ListsTheProgramsOwnFlags) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> programs = {
      {ServerBin(), {"--port", "--metrics_port", "--drain_grace_seconds", "--model"}},
      {CliBin(), {"--server", "--max_new_tokens"}},
      {MakeCheckpointBin(), {"--out", "--kv_heads"}}};
  for (const auto& [bin, flags] : programs) {
    for (const char* help : {"--help", "--helpshort"}) {
      auto [code, output] = RunCommand({bin, help});
      EXPECT_EQ(code, 1) << bin << " " << help << ": " << output;  // absl's exit code for help
      EXPECT_EQ(output.find("No flags matched"), std::string::npos) << bin << ": " << output;
      for (const std::string& flag : flags) {
        EXPECT_NE(output.find(flag + " ("), std::string::npos)
            << bin << " " << help << ": " << flag;
      }
      EXPECT_EQ(output.find("--flagfile"), std::string::npos) << bin << ": " << output;
    }
  }
  auto [code, output] = RunCommand({ServerBin(), "--helpfull"});
  EXPECT_NE(output.find("--flagfile"), std::string::npos) << output;
  EXPECT_NE(output.find("--port ("), std::string::npos) << output;
}

TEST_F(ServerTest, CliStreamsJson) {
  auto [code, output] = RunCommand({CliBin(), "--server=" + server_->address(), "--ids=3,4,5",
                                    "--max_new_tokens=4", "--ignore_eos", "--json"});
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("\"finish_reason\":\"FINISH_REASON_LENGTH\""), std::string::npos) << output;
  EXPECT_NE(output.find("\"completion_tokens\":4"), std::string::npos) << output;
  auto [bad_code, bad_output] =
      RunCommand({CliBin(), "--server=" + server_->address(), "--ids=3,999"});
  EXPECT_NE(bad_code, 0);
  EXPECT_NE(bad_output.find("prompt.token_ids[1]"), std::string::npos) << bad_output;
}

// A model with a tokenizer.json: text in, text out, stop strings.
class TextServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new TempDir();
    ModelConfig config = E2eConfig(2);
    config.vocab_size = 400;
    WriteRandomCheckpoint(model_->path(), config, std::random_device{}());
    ASSERT_TRUE(WriteTrainedTokenizer(model_->path(), config.vocab_size).ok());
    tokenizer_ = Tokenizer::Load(model_->path())->release();
    server_ = new ServerProcess(model_->path(), {});
    ASSERT_TRUE(server_->started()) << server_->Log();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete tokenizer_;
    delete model_;
  }
  static pb::GenerateRequest TextRequest(const std::string& text, int max_new, uint64_t seed) {
    pb::GenerateRequest req;
    req.set_text(text);
    req.mutable_stopping()->set_max_new_tokens(max_new);
    req.mutable_stopping()->set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(1.0f);
    req.mutable_sampling()->set_seed(seed);
    return req;
  }
  static std::string Text(const Outcome& out) {
    std::string text;
    for (const auto& m : out.messages) text += m.text();
    return text;
  }

  static TempDir* model_;
  static Tokenizer* tokenizer_;
  static ServerProcess* server_;
};
TempDir* TextServerTest::model_ = nullptr;
Tokenizer* TextServerTest::tokenizer_ = nullptr;
ServerProcess* TextServerTest::server_ = nullptr;

TEST_F(TextServerTest, TextPromptStreamsTextThatDecodesTheTokens) {
  auto stub = server_->Stub();
  const std::string prompt = "Once upon a time, the model said: héllo 😀";
  Outcome out = Generate(*stub, TextRequest(prompt, 40, 11));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.final_message().usage().prompt_tokens(), tokenizer_->EncodePrompt(prompt).size());
  std::vector<int32_t> generated;
  for (uint32_t id : out.tokens) {
    if (!tokenizer_->IsSpecial(int32_t(id))) generated.push_back(int32_t(id));
  }
  EXPECT_EQ(Text(out), tokenizer_->Decode(generated));
  grpc::ClientContext context;
  pb::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&context, {}, &info).ok());
  EXPECT_TRUE(info.has_tokenizer());
}

TEST_F(TextServerTest, TokenizeGivesThePromptIds) {
  auto stub = server_->Stub();
  for (const std::string text : {"Once upon a time, the model said: héllo 😀", "", "<s> 12 345"}) {
    grpc::ClientContext context;
    pb::TokenizeRequest request;
    request.set_text(text);
    pb::TokenizeResponse response;
    ASSERT_TRUE(stub->Tokenize(&context, request, &response).ok()) << text;
    const std::vector<int32_t> expected = tokenizer_->EncodePrompt(text);
    EXPECT_EQ(std::vector<int32_t>(response.ids().begin(), response.ids().end()), expected) << text;
  }
}

TEST_F(TextServerTest, StopStringEndsTheTextBeforeItAcrossChunks) {
  auto stub = server_->Stub();
  // Find a seed whose text is long enough to cut a stop string from its middle.
  std::string full;
  uint64_t seed = 0;
  for (seed = 1; seed < 50 && full.size() < 12; ++seed) {
    full = Text(Generate(*stub, TextRequest("The quick brown fox", 48, seed)));
  }
  --seed;
  ASSERT_GE(full.size(), 12u) << "no seed gave enough text";
  // A stop string of 3 bytes from the middle, on character boundaries.
  size_t begin = full.size() / 2;
  while (begin > 0 && (uint8_t(full[begin]) & 0xC0) == 0x80) --begin;
  size_t end = begin + 1;
  while (end < full.size() && (end - begin < 3 || (uint8_t(full[end]) & 0xC0) == 0x80)) ++end;
  const std::string stop = full.substr(begin, end - begin);
  const size_t first = full.find(stop);
  auto req = TextRequest("The quick brown fox", 48, seed);
  req.mutable_stopping()->add_stop("never appears \x01");
  req.mutable_stopping()->add_stop(stop);
  Outcome out = Generate(*stub, req);
  ASSERT_TRUE(out.status.ok());
  EXPECT_EQ(out.final_message().finish_reason(), pb::FINISH_REASON_STOP_STRING);
  EXPECT_EQ(out.final_message().matched_stop(), 1u);
  EXPECT_EQ(Text(out), full.substr(0, first)) << "stop " << stop;
  EXPECT_EQ(Text(out).find(stop), std::string::npos);
}

TEST_F(TextServerTest, StopStringsAreLimitedInNumberAndLength) {
  auto stub = server_->Stub();
  auto many = TextRequest("hi", 4, 1);
  for (int i = 0; i < 33; ++i) many.mutable_stopping()->add_stop(absl::StrCat("s", i));
  Outcome out = Generate(*stub, many);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.status.error_message().rfind("stopping.stop: 33 stop strings; at most 32", 0), 0u)
      << out.status.error_message();
  auto long_stop = TextRequest("hi", 4, 1);
  long_stop.mutable_stopping()->add_stop(std::string(513, 'a'));
  out = Generate(*stub, long_stop);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.status.error_message().rfind("stopping.stop[0]: 513 bytes", 0), 0u)
      << out.status.error_message();
}

TEST_F(TextServerTest, EmptyTextAndEmptyStopAreInvalid) {
  auto stub = server_->Stub();
  Outcome empty = Generate(*stub, TextRequest("", 4, 1));
  EXPECT_EQ(empty.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(empty.status.error_message().rfind("prompt.text", 0), 0u);
  auto req = TextRequest("hi", 4, 1);
  req.mutable_stopping()->add_stop("");
  Outcome bad_stop = Generate(*stub, req);
  EXPECT_EQ(bad_stop.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(bad_stop.status.error_message().rfind("stopping.stop[0]", 0), 0u);
}

// A model slow enough on one CPU thread (milliseconds per token) that a long request is still
// running when the test acts on it.
void WriteSlowModel(const std::filesystem::path& dir) {
  ModelConfig config = E2eConfig(2);
  config.num_layers = 8;
  config.hidden_size = 512;
  config.intermediate_size = 1024;
  config.head_dim = 64;
  WriteRandomCheckpoint(dir, config);
}

// Polls `done` every 5 ms for up to 10 s; returns its last answer.
bool WaitUntil(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

// A server on the slow model, one CPU thread.
class SlowServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteSlowModel(model_.path());
    server_ =
        std::make_unique<ServerProcess>(model_.path(), std::vector<std::string>{"--cpu_threads=1"});
    ASSERT_TRUE(server_->started()) << server_->Log();
  }

  TempDir model_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(SlowServerTest, CancellationFreesBlocks) {
  ServerProcess& server = *server_;
  auto stub = server.Stub();
  const double cancelled_before =
      server.Metric("gqa_requests_finished_total{finish_reason=\"cancelled\"}");
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, MakeRequest(8, 500));
  pb::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r));
  EXPECT_GT(server.Metric("gqa_kv_cache_usage_ratio"), 0);
  context.TryCancel();
  while (reader->Read(&r)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitUntil([&] { return server.Metric("gqa_requests_running") == 0; }));
  EXPECT_EQ(server.Metric("gqa_kv_cache_usage_ratio"), 0);
  EXPECT_EQ(server.Metric("gqa_requests_finished_total{finish_reason=\"cancelled\"}"),
            cancelled_before + 1);
}

TEST_F(SlowServerTest, SigtermDrainsRunningRequestsAndRefusesNewOnes) {
  ServerProcess& server = *server_;
  auto stub = server.Stub();
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, MakeRequest(8, 300));
  pb::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r));
  kill(server.pid(), SIGTERM);
  EXPECT_TRUE(WaitUntil([&] { return server.HttpGet("/healthz").first == 503; }));
  EXPECT_EQ(Health(server.address()), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  Outcome late = Generate(*stub, MakeRequest(4, 4));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  size_t tokens = r.token_ids_size();
  while (reader->Read(&r)) tokens += r.token_ids_size();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, 300u) << "the running request was cut short";
  EXPECT_EQ(r.finish_reason(), pb::FINISH_REASON_LENGTH);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// A client watching health (grpc.health.v1.Health/Watch, as load balancers and Kubernetes-style
// checkers do) sees NOT_SERVING when draining starts, then its stream ends, so SIGTERM does not
// wait for it: the server exits long before the grace period.
TEST(ServerLifecycleTest, AnOpenHealthWatchEndsAtDrainAndDoesNotDelayExit) {
  TempDir model;
  WriteRandomCheckpoint(model.path(), E2eConfig(2), std::random_device{}());
  ServerProcess server(model.path(), {"--drain_grace_seconds=30"});
  ASSERT_TRUE(server.started()) << server.Log();
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto watch = stub->Watch(&context, {});
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(watch->Read(&response));
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  const auto signalled = std::chrono::steady_clock::now();
  kill(server.pid(), SIGTERM);
  std::vector<grpc::health::v1::HealthCheckResponse::ServingStatus> seen;
  while (watch->Read(&response)) seen.push_back(response.status());
  const grpc::Status status = watch->Finish();
  const double stream_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
  ASSERT_FALSE(seen.empty()) << "the stream ended without NOT_SERVING: " << status.error_message();
  EXPECT_EQ(seen.back(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_LT(stream_seconds, 3.0) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
  const double exit_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
  std::cout << "watch ended after " << stream_seconds << " s (" << status.error_code() << " "
            << status.error_message() << "), exit after " << exit_seconds << " s\n";
  EXPECT_LT(exit_seconds, 3.0) << "an open Watch held up SIGTERM (grace 30 s)";
}

// Random weights for a model big enough that generating them takes about a second: the window
// in which the server listens but has no model yet.
void WriteSlowLoadingConfig(const std::filesystem::path& dir) {
  std::ofstream(dir / "config.json") << R"({"architectures": ["LlamaForCausalLM"],
    "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 12,
    "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"})";
}

TEST(ServerLifecycleTest, NotServingWhileTheModelLoadsThenServing) {
  TempDir model;
  WriteSlowLoadingConfig(model.path());
  ServerProcess server(model.path(), {"--load_format=dummy", "--kv_cache_memory=64MiB"},
                       ServerProcess::Until::kListening);
  ASSERT_TRUE(server.started()) << server.Log();
  EXPECT_EQ(Health(server.address()), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(server.HttpGet("/healthz").first, 503);
  Outcome early = Generate(*server.Stub(), MakeRequest(4, 4));
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(server.Log().find("serving "), std::string::npos)
      << "the model loaded before the checks ran: they proved nothing";
  ASSERT_TRUE(server.WaitUntilServing()) << server.Log();
  EXPECT_EQ(Health(server.address()), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(server.HttpGet("/healthz").first, 200);
  Outcome late = Generate(*server.Stub(), MakeRequest(4, 4));
  EXPECT_TRUE(late.status.ok()) << late.status.error_message();
  EXPECT_EQ(late.tokens.size(), 4u);
}

TEST(ServerLifecycleTest, BrokenCheckpointStopsStartupWithOneLineNamingTheFile) {
  TempDir model;
  WriteRandomCheckpoint(model.path(), E2eConfig(2));
  const auto file = model.path() / "model.safetensors";
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 64);
  auto [code, output] = RunCommand({ServerBin(), "--model=" + model.path().string(), "--port=0",
                                    "--metrics_port=0", "--http_port=0"});
  EXPECT_NE(code, 0);
  // Before the failure the log says where it listens; the failure itself is one error line,
  // naming the file.
  const std::vector<std::string> errors = ErrorLines(output);
  ASSERT_EQ(errors.size(), 1u) << output;
  EXPECT_NE(errors[0].find(file.string()), std::string::npos) << output;
  EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 2) << output;  // listening + error
}

TEST_F(SlowServerTest, WaitingRequestsBeyondTheLimitGetResourceExhausted) {
  ServerProcess server(model_.path(),
                       {"--cpu_threads=1", "--max_num_seqs=1", "--max_waiting_requests=2"});
  ASSERT_TRUE(server.started()) << server.Log();
  auto stub = server.Stub();
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>>> readers;
  for (int i = 0; i < 3; ++i) {  // one runs, then two wait
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub->Generate(contexts.back().get(), MakeRequest(8, 500, i)));
    // Until the first runs it counts as waiting too: only then send the others.
    if (i == 0) {
      ASSERT_TRUE(WaitUntil([&] { return server.Metric("gqa_requests_running") == 1; }));
    }
  }
  ASSERT_TRUE(WaitUntil([&] { return server.Metric("gqa_requests_waiting") == 2; }))
      << server.Metric("gqa_requests_waiting");
  Outcome refused = Generate(*stub, MakeRequest(8, 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("--max_waiting_requests"), std::string::npos)
      << refused.status.error_message();
  EXPECT_EQ(server.Metric("gqa_requests_rejected_total{reason=\"overloaded\"}"), 1);
  for (auto& context : contexts) context->TryCancel();
  pb::GenerateResponse r;
  for (auto& reader : readers) {
    while (reader->Read(&r)) {
    }
    reader->Finish();
  }
  EXPECT_TRUE(WaitUntil([&] { return server.Metric("gqa_requests_waiting") == 0; }));
  EXPECT_TRUE(Generate(*stub, MakeRequest(8, 4)).status.ok());
}

}  // namespace
}  // namespace gqa::testing
