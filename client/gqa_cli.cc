// gqa-cli: send one generate request (or ask for model info) and stream the answer.
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/dashed_flags.h"
#include "gqa/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, server, "localhost:50051", "gqa-server address");
ABSL_FLAG(std::string, ids, "", "prompt token ids, comma-separated");
ABSL_FLAG(std::string, text, "", "prompt text (needs a model with a tokenizer.json)");
ABSL_FLAG(std::string, chat, "",
          "send one user message, rendered with the model's chat template (prompt.messages)");
ABSL_FLAG(std::string, system, "", "with --chat: a system message before it");
ABSL_FLAG(std::string, messages, "",
          "a conversation as JSON, [{\"role\": \"user\", \"content\": \"...\"}, ...], "
          "rendered with the model's chat template");
ABSL_FLAG(bool, add_generation_prompt, true,
          "with --chat/--messages: end with the assistant header so the model answers");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma-separated");
ABSL_FLAG(int, max_new_tokens, -1, "tokens to generate (unset: the server's default)");
ABSL_FLAG(double, temperature, 0.0, "0 = greedy");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling mass in (0, 1]");
ABSL_FLAG(int, top_k, 0, "keep the k most likely tokens (0 = all)");
ABSL_FLAG(int64_t, seed, -1, "sampling seed (-1: the server picks one)");
ABSL_FLAG(std::string, stop_token_ids, "", "comma-separated token ids that end generation");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past EOS");
ABSL_FLAG(std::string, request_id, "", "request id (the server makes one when empty)");
ABSL_FLAG(int, logprobs, -1,
          "each generated token's logprob and its K most likely alternatives (K in [0, 20]; "
          "-1: off)");
ABSL_FLAG(int, prompt_logprobs, -1,
          "each prompt token's logprob given the tokens before it, and K alternatives (-1: off)");
ABSL_FLAG(bool, json, false, "print one JSON object per response message");
ABSL_FLAG(bool, info, false, "print the model info and exit");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the server's certificate: connect over TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for mutual TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "name the server's certificate must carry (default: the host of --server)");
ABSL_FLAG(std::string, auth_token_file, "",
          "send 'authorization: Bearer <token>' with the token read from this file");
ABSL_FLAG(bool, tokenize, false, "print the server's token ids of --text as a JSON list and exit");
ABSL_FLAG(double, timeout, 600, "deadline in seconds");

namespace pb = gqa::v1;

namespace {

bool ParseIds(const std::string& text, google::protobuf::RepeatedField<uint32_t>* out) {
  for (auto piece : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    uint32_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(piece), &id)) return false;
    out->Add(id);
  }
  return true;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "gqa-cli: cannot read " << path << "\n";
    std::exit(2);
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::shared_ptr<grpc::Channel> Connect() {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  if (ca.empty()) {
    return grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  }
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFileOrDie(ca);
  if (!absl::GetFlag(FLAGS_tls_cert).empty()) {
    tls.pem_cert_chain = ReadFileOrDie(absl::GetFlag(FLAGS_tls_cert));
    tls.pem_private_key = ReadFileOrDie(absl::GetFlag(FLAGS_tls_key));
  }
  grpc::ChannelArguments args;
  if (!absl::GetFlag(FLAGS_tls_server_name).empty()) {
    args.SetSslTargetNameOverride(absl::GetFlag(FLAGS_tls_server_name));
  }
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), grpc::SslCredentials(tls), args);
}

// Adds the bearer token, when one is configured, to a call.
void Authorize(grpc::ClientContext& context) {
  static const std::string token = [] {
    const std::string file = absl::GetFlag(FLAGS_auth_token_file);
    std::string text = file.empty() ? "" : ReadFileOrDie(file);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    return text;
  }();
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

int Fail(const grpc::Status& status) {
  std::cerr << "gqa-cli: error " << status.error_code() << ": " << status.error_message() << "\n";
  return 1;
}

nlohmann::json ToJson(const google::protobuf::RepeatedPtrField<pb::TokenLogprob>& logprobs) {
  nlohmann::json list = nlohmann::json::array();
  for (const pb::TokenLogprob& lp : logprobs) {
    nlohmann::json top = nlohmann::json::array();
    for (const pb::TopLogprob& t : lp.top()) top.push_back({t.token_id(), t.logprob()});
    list.push_back({{"token_id", lp.token_id()}, {"logprob", lp.logprob()}, {"top", top}});
  }
  return list;
}

// One line per token: id, logprob, then the alternatives as id:logprob.
void PrintLogprobs(const char* label,
                   const google::protobuf::RepeatedPtrField<pb::TokenLogprob>& logprobs) {
  for (const pb::TokenLogprob& lp : logprobs) {
    std::cout << label << " " << lp.token_id() << " " << lp.logprob();
    for (const pb::TopLogprob& t : lp.top()) std::cout << " " << t.token_id() << ":" << t.logprob();
    std::cout << "\n";
  }
}

nlohmann::json ToJson(const pb::GenerateResponse& r) {
  nlohmann::json j = {
      {"request_id", r.request_id()},
      {"token_ids", std::vector<uint32_t>(r.token_ids().begin(), r.token_ids().end())}};
  if (!r.text().empty()) j["text"] = r.text();
  if (r.logprobs_size() > 0) j["logprobs"] = ToJson(r.logprobs());
  if (r.prompt_logprobs_size() > 0) j["prompt_logprobs"] = ToJson(r.prompt_logprobs());
  if (r.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
    j["finish_reason"] = pb::FinishReason_Name(r.finish_reason());
    j["usage"] = {{"prompt_tokens", r.usage().prompt_tokens()},
                  {"completion_tokens", r.usage().completion_tokens()},
                  {"preemptions", r.usage().preemptions()},
                  {"cached_prompt_tokens", r.usage().cached_prompt_tokens()}};
    j["timing"] = {{"queue_seconds", r.timing().queue_seconds()},
                   {"time_to_first_token_seconds", r.timing().time_to_first_token_seconds()},
                   {"total_seconds", r.timing().total_seconds()}};
    if (r.finish_reason() == pb::FINISH_REASON_STOP_TOKEN ||
        r.finish_reason() == pb::FINISH_REASON_STOP_STRING) {
      j["matched_stop"] = r.matched_stop();
    }
  }
  return j;
}

int PrintInfo(pb::Generation::Stub& stub) {
  grpc::ClientContext context;
  Authorize(context);
  pb::ModelInfo info;
  grpc::Status status = stub.GetModelInfo(&context, pb::GetModelInfoRequest(), &info);
  if (!status.ok()) return Fail(status);
  std::string json;
  google::protobuf::util::MessageToJsonString(info, &json);
  std::cout << json << "\n";
  return 0;
}

int PrintTokens(pb::Generation::Stub& stub) {
  grpc::ClientContext context;
  Authorize(context);
  pb::TokenizeRequest request;
  request.set_text(absl::GetFlag(FLAGS_text));
  pb::TokenizeResponse response;
  grpc::Status status = stub.Tokenize(&context, request, &response);
  if (!status.ok()) return Fail(status);
  std::cout << nlohmann::json(std::vector<uint32_t>(response.ids().begin(), response.ids().end()))
            << "\n";
  return 0;
}

// --chat (with --system) or --messages as prompt.messages; false (with a message) on bad JSON.
bool BuildChatMessages(pb::ChatMessages* chat) {
  chat->set_add_generation_prompt(absl::GetFlag(FLAGS_add_generation_prompt));
  if (!absl::GetFlag(FLAGS_chat).empty()) {
    if (!absl::GetFlag(FLAGS_system).empty()) {
      auto* system = chat->add_messages();
      system->set_role("system");
      system->set_content(absl::GetFlag(FLAGS_system));
    }
    auto* user = chat->add_messages();
    user->set_role("user");
    user->set_content(absl::GetFlag(FLAGS_chat));
    return true;
  }
  const nlohmann::json messages =
      nlohmann::json::parse(absl::GetFlag(FLAGS_messages), nullptr, /*allow_exceptions=*/false);
  if (!messages.is_array()) {
    std::cerr << "--messages: expected a JSON list of {\"role\", \"content\"} objects\n";
    return false;
  }
  for (const nlohmann::json& m : messages) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      std::cerr << "--messages: every message needs string \"role\" and \"content\": " << m.dump()
                << "\n";
      return false;
    }
    auto* message = chat->add_messages();
    message->set_role(m["role"].get<std::string>());
    message->set_content(m["content"].get<std::string>());
  }
  return true;
}

pb::GenerateRequest BuildRequest(bool* ok) {
  pb::GenerateRequest req;
  req.set_request_id(absl::GetFlag(FLAGS_request_id));
  *ok = true;
  if (!absl::GetFlag(FLAGS_chat).empty() || !absl::GetFlag(FLAGS_messages).empty()) {
    *ok = BuildChatMessages(req.mutable_messages());
  } else if (!absl::GetFlag(FLAGS_text).empty()) {
    req.set_text(absl::GetFlag(FLAGS_text));
  } else {
    *ok = ParseIds(absl::GetFlag(FLAGS_ids), req.mutable_token_ids()->mutable_ids());
  }
  auto* s = req.mutable_sampling();
  s->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  s->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  s->set_top_k(absl::GetFlag(FLAGS_top_k));
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(absl::GetFlag(FLAGS_seed));
  auto* st = req.mutable_stopping();
  if (absl::GetFlag(FLAGS_max_new_tokens) >= 0)
    st->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  st->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  *ok = *ok && ParseIds(absl::GetFlag(FLAGS_stop_token_ids), st->mutable_stop_token_ids());
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) st->add_stop(stop);
  // Negative: off; anything else goes as sent, so the server's refusal quotes it.
  if (absl::GetFlag(FLAGS_logprobs) >= 0) {
    req.mutable_logprobs()->set_top_logprobs(absl::GetFlag(FLAGS_logprobs));
  }
  if (absl::GetFlag(FLAGS_prompt_logprobs) >= 0) {
    req.mutable_logprobs()->set_prompt_top_logprobs(absl::GetFlag(FLAGS_prompt_logprobs));
  }
  return req;
}

// Streams the text as it arrives; a model without a tokenizer sends none, so then the token ids
// are printed instead.
// With --logprobs / --prompt_logprobs, their lines ("prompt_logprob ..." and "logprob ...")
// follow the final line.
void PrintHuman(const pb::GenerateResponse& r, std::vector<uint32_t>& ids, bool& printed_text,
                pb::GenerateResponse& logprobs) {
  ids.insert(ids.end(), r.token_ids().begin(), r.token_ids().end());
  logprobs.mutable_logprobs()->MergeFrom(r.logprobs());
  logprobs.mutable_prompt_logprobs()->MergeFrom(r.prompt_logprobs());
  if (!r.text().empty()) {
    std::cout << r.text() << std::flush;
    printed_text = true;
  }
  if (r.finish_reason() == pb::FINISH_REASON_UNSPECIFIED) return;
  if (!printed_text) {
    for (uint32_t id : ids) std::cout << id << " ";
  }
  const auto& u = r.usage();
  const auto& t = r.timing();
  std::cout << "\n[" << pb::FinishReason_Name(r.finish_reason()) << "] prompt " << u.prompt_tokens()
            << " tokens (" << u.cached_prompt_tokens() << " cached), generated "
            << u.completion_tokens() << " tokens; queue " << t.queue_seconds() * 1e3
            << " ms, first token " << t.time_to_first_token_seconds() * 1e3 << " ms, total "
            << t.total_seconds() * 1e3 << " ms" << (u.preemptions() ? " (preempted)" : "") << "\n";
  PrintLogprobs("prompt_logprob", logprobs.prompt_logprobs());
  PrintLogprobs("logprob", logprobs.logprobs());
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "gqa-cli --text \"Hello\" | --ids 1,2,3 [--max_new_tokens N] [--stop s] [--logprobs K] "
      "[--json] | --info | "
      "--tokenize --text \"Hello\"");
  gqa::ShowProgramFlagsInHelp();
  gqa::AcceptDashedFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  auto channel = Connect();
  auto stub = pb::Generation::NewStub(channel);
  if (absl::GetFlag(FLAGS_info)) return PrintInfo(*stub);
  if (absl::GetFlag(FLAGS_tokenize)) return PrintTokens(*stub);

  bool ok;
  pb::GenerateRequest req = BuildRequest(&ok);
  if (!ok) {
    std::cerr << "gqa-cli: --ids and --stop_token_ids take comma-separated non-negative integers\n";
    return 2;
  }
  grpc::ClientContext context;
  Authorize(context);
  context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout) * 1e3)));
  auto reader = stub->Generate(&context, req);
  pb::GenerateResponse response;
  std::vector<uint32_t> ids;
  bool printed_text = false;
  pb::GenerateResponse logprobs;
  while (reader->Read(&response)) {
    if (absl::GetFlag(FLAGS_json)) {
      std::cout << ToJson(response).dump() << "\n" << std::flush;
    } else {
      PrintHuman(response, ids, printed_text, logprobs);
    }
  }
  grpc::Status status = reader->Finish();
  return status.ok() ? 0 : Fail(status);
}
