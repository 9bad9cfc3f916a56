// A hostile client: a corpus of malformed and extreme requests, one after another against one
// server. Each gets its documented status (with a message naming the field and quoting the value
// where it is a value), the server answers a normal request correctly after each, and its memory
// after the whole corpus stays within a stated bound of where it started.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/test_checkpoint.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "server_process.h"
#include "tokenizer/train_bpe.h"

namespace gqa::testing {
namespace {

namespace pb = gqa::v1;

// Resident memory of a process, in MiB: now (VmRSS) or at its peak (VmHWM).
double RssMib(pid_t pid, const std::string& field = "VmRSS:") {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(field.size())) / 1024.0;
  }
  return -1;
}

struct Reply {
  grpc::Status status;
  std::vector<uint32_t> tokens;
};

Reply Send(pb::Generation::Stub& stub, const pb::GenerateRequest& request,
           int deadline_ms = 60000) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
  auto reader = stub.Generate(&context, request);
  Reply reply;
  pb::GenerateResponse r;
  while (reader->Read(&r))
    reply.tokens.insert(reply.tokens.end(), r.token_ids().begin(), r.token_ids().end());
  reply.status = reader->Finish();
  return reply;
}

// Sends raw bytes as a Generate request (what a broken or hostile client may send) and returns
// the call's status.
grpc::Status RawGenerate(const std::string& address, const std::string& bytes) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&context, "/gqa.v1.Generation/Generate", &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  call->WriteLast(request, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  return status;
}

pb::GenerateRequest Normal() {
  pb::GenerateRequest req;
  req.set_text("Once upon a time");
  req.mutable_stopping()->set_max_new_tokens(8);
  req.mutable_stopping()->set_ignore_eos(true);
  return req;
}

struct Case {
  std::string name;
  std::function<void(pb::GenerateRequest&)> edit;
  grpc::StatusCode code;
  std::string message_prefix;  // the field, and the value where there is one
};

std::vector<Case> Corpus(int vocab) {
  using C = grpc::StatusCode;
  const C bad = C::INVALID_ARGUMENT;
  // Every lambda below captures by value: they run after Corpus returns.
  auto ids = [](pb::GenerateRequest& r, std::vector<uint32_t> v) {
    r.mutable_token_ids();  // selects the oneof even when v is empty
    for (uint32_t id : v) r.mutable_token_ids()->add_ids(id);
  };
  auto sampling = [](pb::GenerateRequest& r) { return r.mutable_sampling(); };
  auto stopping = [](pb::GenerateRequest& r) { return r.mutable_stopping(); };
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<Case> cases = {
      {"no prompt", [](auto& r) { r.clear_prompt(); }, bad, "prompt:"},
      {"empty text", [](auto& r) { r.set_text(""); }, bad, "prompt.text: the prompt is empty"},
      {"empty ids", [=](auto& r) { ids(r, {}); }, bad, "prompt.token_ids: the prompt is empty"},
      {"1M-token prompt", [=](auto& r) { ids(r, std::vector<uint32_t>(1'000'000, 5)); }, bad,
       "prompt.token_ids: 1000000 tokens"},
      {"a 200k-character text prompt", [](auto& r) { r.set_text(std::string(200'000, 'a')); }, bad,
       "prompt.text: 200000 bytes encode to "},
      {"id = vocab",
       [=](auto& r) {
         ids(r, {1, uint32_t(vocab)});
       },
       bad, "prompt.token_ids[1]: " + std::to_string(vocab)},
      {"id 2^32-1", [=](auto& r) { ids(r, {4294967295u}); }, bad,
       "prompt.token_ids[0]: 4294967295"},
      {"temperature NaN", [=](auto& r) { sampling(r)->set_temperature(NAN); }, bad,
       "sampling.temperature: nan"},
      {"temperature +inf", [=](auto& r) { sampling(r)->set_temperature(inf); }, bad,
       "sampling.temperature: inf"},
      {"temperature -inf", [=](auto& r) { sampling(r)->set_temperature(-inf); }, bad,
       "sampling.temperature: -inf"},
      {"temperature -1", [=](auto& r) { sampling(r)->set_temperature(-1); }, bad,
       "sampling.temperature: -1"},
      {"temperature 1e30", [=](auto& r) { sampling(r)->set_temperature(1e30f); }, C::OK, ""},
      {"temperature 1e-30", [=](auto& r) { sampling(r)->set_temperature(1e-30f); }, C::OK, ""},
      {"temperature denormal", [=](auto& r) { sampling(r)->set_temperature(1e-45f); }, C::OK, ""},
      {"top_p 1.5", [=](auto& r) { sampling(r)->set_top_p(1.5f); }, bad, "sampling.top_p: 1.5"},
      {"top_p -0.2", [=](auto& r) { sampling(r)->set_top_p(-0.2f); }, bad, "sampling.top_p: -0.2"},
      {"top_p 1.0000001", [=](auto& r) { sampling(r)->set_top_p(1.0000001f); }, bad,
       "sampling.top_p: 1.0000001 must be in (0, 1]"},
      {"temperature -1e-45", [=](auto& r) { sampling(r)->set_temperature(-1e-45f); }, bad,
       "sampling.temperature: -1e-45 must be"},
      {"top_p NaN", [=](auto& r) { sampling(r)->set_top_p(NAN); }, bad, "sampling.top_p: nan"},
      {"top_p 1e-30", [=](auto& r) { sampling(r)->set_top_p(1e-30f); }, C::OK, ""},
      {"top_k -3", [=](auto& r) { sampling(r)->set_top_k(-3); }, bad, "sampling.top_k: -3"},
      {"top_k 2^31-1", [=](auto& r) { sampling(r)->set_top_k(2147483647); }, C::OK, ""},
      {"top_k 1", [=](auto& r) { sampling(r)->set_top_k(1); }, C::OK, ""},
      {"seed 2^64-1", [=](auto& r) { sampling(r)->set_seed(~0ull); }, C::OK, ""},
      {"max_new_tokens 0", [=](auto& r) { stopping(r)->set_max_new_tokens(0); }, bad,
       "stopping.max_new_tokens: 0"},
      {"max_new_tokens 2^32-1", [=](auto& r) { stopping(r)->set_max_new_tokens(4294967295u); }, bad,
       "stopping.max_new_tokens: 4294967295"},
      {"max_new_tokens 2^31", [=](auto& r) { stopping(r)->set_max_new_tokens(2147483648u); }, bad,
       "stopping.max_new_tokens: 2147483648"},
      {"max_new_tokens past max_model_len", [=](auto& r) { stopping(r)->set_max_new_tokens(600); },
       bad, "stopping.max_new_tokens: 600"},
      {"stop id past the vocabulary",
       [=](auto& r) { stopping(r)->add_stop_token_ids(uint32_t(vocab) + 7); }, bad,
       "stopping.stop_token_ids[0]: " + std::to_string(vocab + 7)},
      {"10k stop strings",
       [=](auto& r) {
         for (int i = 0; i < 10'000; ++i) stopping(r)->add_stop(absl::StrCat("s", i));
       },
       bad, "stopping.stop: 10000 stop strings"},
      {"a 1 MB stop string", [=](auto& r) { stopping(r)->add_stop(std::string(1 << 20, 'x')); },
       bad, "stopping.stop[0]: 1048576 bytes"},
      {"an empty stop string", [=](auto& r) { stopping(r)->add_stop(""); }, bad,
       "stopping.stop[0]: empty string"},
      {"a stop string of one emoji", [=](auto& r) { stopping(r)->add_stop("😀"); }, C::OK, ""},
      {"a 1 MB request_id", [](auto& r) { r.set_request_id(std::string(1 << 20, 'r')); }, bad,
       "request_id: 1048576 bytes"},
      {"a request_id with NULs", [](auto& r) { r.set_request_id(std::string("a\0b", 3)); }, C::OK,
       ""},
      {"a 5 MB request", [](auto& r) { r.set_text(std::string(5 << 20, 'a')); },
       C::RESOURCE_EXHAUSTED, ""},
      {"special tokens in text", [](auto& r) { r.set_text("<s></s><s>"); }, C::OK, ""},
      {"control characters in text", [](auto& r) { r.set_text(std::string("\0\x01\x7f\n", 4)); },
       C::OK, ""},
      {"a text of combining marks",
       [](auto& r) {
         std::string t = "a";
         for (int i = 0; i < 100; ++i) t += "\xcc\x81";
         r.set_text(t);
       },
       C::OK, ""},
      {"ignore_eos with max_new_tokens 1", [=](auto& r) { stopping(r)->set_max_new_tokens(1); },
       C::OK, ""},
  };
  return cases;
}

class HostileClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = E2eConfig(2);
    config_.vocab_size = 400;
    WriteRandomCheckpoint(model_.path(), config_, std::random_device{}());
    ASSERT_TRUE(WriteTrainedTokenizer(model_.path(), config_.vocab_size).ok());
  }
  ModelConfig config_;
  TempDir model_;
};

TEST_F(HostileClientTest, EveryMalformedOrExtremeRequestGetsItsStatusAndTheServerServesOn) {
  ServerProcess server(model_.path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  auto stub = server.Stub();
  const Reply reference = Send(*stub, Normal());
  ASSERT_TRUE(reference.status.ok()) << reference.status.error_message() << server.Log();
  const double rss_before = RssMib(server.pid());
  int cases = 0;
  auto check_serving = [&](const std::string& after) {
    const Reply again = Send(*stub, Normal());
    EXPECT_TRUE(again.status.ok()) << "after " << after << ": " << again.status.error_message();
    EXPECT_EQ(again.tokens, reference.tokens) << "after " << after;
  };
  for (const Case& c : Corpus(config_.vocab_size)) {
    ++cases;
    pb::GenerateRequest request = Normal();
    c.edit(request);
    const Reply reply = Send(*stub, request);
    EXPECT_EQ(reply.status.error_code(), c.code) << c.name << ": " << reply.status.error_message();
    EXPECT_EQ(reply.status.error_message().rfind(c.message_prefix, 0), 0u)
        << c.name << ": " << reply.status.error_message();
    check_serving(c.name);
  }

  // Messages that do not parse: INVALID_ARGUMENT saying so (gRPC alone would answer
  // UNIMPLEMENTED with no message).
  for (const auto& [name, bytes] : std::vector<std::pair<std::string, std::string>>{
           {"invalid UTF-8 in prompt.text", std::string("\x12\x05\xff\xfe\xfd\xfc\xfb", 7)},
           {"a truncated message", std::string("\x1a\x10\x08", 3)}}) {
    const grpc::Status status = RawGenerate(server.address(), bytes);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
    EXPECT_EQ(status.error_message().rfind("request: not a valid gqa.v1.GenerateRequest", 0), 0u)
        << name << ": " << status.error_message();
    check_serving(name);
    ++cases;
  }
  // A gzip-compressed request that inflates to 64 MiB: refused before it is inflated (the
  // server takes no compressed requests; gRPC would inflate it whole before the size check).
  {
    const double peak_before = RssMib(server.pid(), "VmHWM:");
    grpc::ClientContext context;
    context.set_compression_algorithm(GRPC_COMPRESS_GZIP);
    pb::GenerateRequest bomb = Normal();
    bomb.set_text(std::string(64 << 20, 'a'));
    auto reader = stub->Generate(&context, bomb);
    pb::GenerateResponse r;
    while (reader->Read(&r)) {
    }
    const grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << status.error_message();
    const double peak_after = RssMib(server.pid(), "VmHWM:");
    std::cout << "gzip bomb: " << status.error_message() << "; server peak RSS " << peak_before
              << " -> " << peak_after << " MiB\n";
    EXPECT_LT(peak_after - peak_before, 16.0) << "the compressed request was inflated";
    check_serving("a gzip bomb");
    ++cases;
  }
  // A 100 KB metadata header. gRPC 1.51 treats it as an error of the whole connection, so only
  // that client's own calls fail: another client's stream, on its own connection, runs on.
  {
    auto own_connection = [&] {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      return pb::Generation::NewStub(
          grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args));
    };
    auto victim = own_connection();
    grpc::ClientContext victim_context;
    pb::GenerateRequest long_one = Normal();
    long_one.mutable_stopping()->set_max_new_tokens(300);
    auto reader = victim->Generate(&victim_context, long_one);
    pb::GenerateResponse r;
    ASSERT_TRUE(reader->Read(&r));
    auto attacker = own_connection();
    grpc::ClientContext context;
    context.AddMetadata("x-big", std::string(100 << 10, 'a'));
    pb::ModelInfo info;
    EXPECT_FALSE(attacker->GetModelInfo(&context, {}, &info).ok());
    size_t tokens = r.token_ids_size();
    while (reader->Read(&r)) tokens += r.token_ids_size();
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(tokens, 300u) << "another client's oversized header cut this stream";
    check_serving("a 100 KB metadata header");
    ++cases;
  }
  // Duplicate request ids in flight: ids are the client's labels, both are served.
  {
    pb::GenerateRequest twin = Normal();
    twin.set_request_id("twin");
    Reply a, b;
    std::thread first([&] { a = Send(*stub, twin); });
    b = Send(*stub, twin);
    first.join();
    EXPECT_TRUE(a.status.ok() && b.status.ok());
    EXPECT_EQ(a.tokens, reference.tokens);
    EXPECT_EQ(b.tokens, reference.tokens);
    cases += 1;
  }
  // A 1 ms deadline: DEADLINE_EXCEEDED for the client, nothing left behind.
  {
    pb::GenerateRequest slow = Normal();
    slow.mutable_stopping()->set_max_new_tokens(200);
    const Reply late = Send(*stub, slow, 1);
    EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    check_serving("a 1 ms deadline");
    cases += 1;
  }
  // Disconnects mid-stream: a client reads one chunk and goes away, 20 times.
  for (int i = 0; i < 20; ++i) {
    auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
    auto own_stub = pb::Generation::NewStub(channel);
    grpc::ClientContext context;
    pb::GenerateRequest long_one = Normal();
    long_one.mutable_stopping()->set_max_new_tokens(200);
    auto reader = own_stub->Generate(&context, long_one);
    pb::GenerateResponse r;
    reader->Read(&r);
    context.TryCancel();
  }
  cases += 1;
  // 300 streams opened and abandoned without reading.
  {
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    std::vector<std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>>> readers;
    for (int i = 0; i < 300; ++i) {
      contexts.push_back(std::make_unique<grpc::ClientContext>());
      pb::GenerateRequest req = Normal();
      req.mutable_stopping()->set_max_new_tokens(100);
      readers.push_back(stub->Generate(contexts.back().get(), req));
    }
    for (auto& c : contexts) c->TryCancel();
    for (auto& reader : readers) reader->Finish();
    cases += 1;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (server.Metric("gqa_kv_cache_usage_ratio") != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(server.Metric("gqa_kv_cache_usage_ratio"), 0) << "abandoned streams kept KV blocks";
  check_serving("300 abandoned streams");
  const double rss_after = RssMib(server.pid());
  std::cout << "hostile corpus: " << cases << " cases; RSS " << rss_before << " MiB before, "
            << rss_after << " MiB after\n";
  EXPECT_GE(cases, 40);
  // The bound: what a few maximal requests may leave in the allocator's caches.
  EXPECT_LT(rss_after - rss_before, 128.0) << "RSS grew by " << rss_after - rss_before << " MiB";
  EXPECT_EQ(server.Terminate(), 0);
}

}  // namespace
}  // namespace gqa::testing
