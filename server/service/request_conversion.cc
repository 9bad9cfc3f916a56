#include "service/request_conversion.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/validation.h"

namespace gqa {

namespace pb = gqa::v1;

absl::Status LogprobsFromProto(const pb::LogprobsParams& proto, LogprobsParams* params) {
  if (proto.has_top_logprobs()) {
    RETURN_IF_ERROR(CheckTopLogprobs("logprobs.top_logprobs", proto.top_logprobs()));
    params->top_logprobs = static_cast<int>(proto.top_logprobs());
  }
  if (proto.has_prompt_top_logprobs()) {
    RETURN_IF_ERROR(CheckTopLogprobs("logprobs.prompt_top_logprobs", proto.prompt_top_logprobs()));
    params->prompt_top_logprobs = static_cast<int>(proto.prompt_top_logprobs());
  }
  return absl::OkStatus();
}

void AddLogprobsToProto(const std::vector<TokenLogprob>& logprobs,
                        google::protobuf::RepeatedPtrField<pb::TokenLogprob>* into) {
  for (const TokenLogprob& lp : logprobs) {
    pb::TokenLogprob* entry = into->Add();
    entry->set_token_id(static_cast<uint32_t>(lp.token));
    entry->set_logprob(lp.logprob);
    for (const auto& [id, logprob] : lp.top) {
      pb::TopLogprob* top = entry->add_top();
      top->set_token_id(static_cast<uint32_t>(id));
      top->set_logprob(logprob);
    }
  }
}

namespace {

// prompt.messages rendered with the model's chat template, then tokenized without adding special
// tokens (the template writes them), as transformers' apply_chat_template(tokenize=True) does.
absl::StatusOr<std::vector<int32_t>> ChatPrompt(const pb::ChatMessages& chat,
                                                const RequestDefaults& defaults) {
  if (defaults.tokenizer == nullptr || defaults.chat_template == nullptr) {
    return absl::InvalidArgumentError(
        "prompt.messages: this model has no chat template (tokenizer_config.json's "
        "chat_template); send prompt.text");
  }
  if (chat.messages_size() == 0) {
    return absl::InvalidArgumentError("prompt.messages.messages: the conversation is empty");
  }
  if (chat.messages_size() > kMaxChatMessages) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt.messages.messages: ", chat.messages_size(), " messages; at most ",
                     kMaxChatMessages));
  }
  std::vector<chat::ChatMessage> messages;
  messages.reserve(chat.messages_size());
  for (const pb::ChatMessage& m : chat.messages()) messages.push_back({m.role(), m.content()});
  const bool add_generation_prompt =
      chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true;
  absl::StatusOr<std::string> text =
      defaults.chat_template->Render(std::move(messages), add_generation_prompt);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt.messages: the chat template refused it: ", text.status().message()));
  }
  std::vector<int32_t> ids = defaults.tokenizer->Encode(*text);
  if (static_cast<int64_t>(ids.size()) >= defaults.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt.messages: the conversation renders to ", ids.size(),
        " tokens, which leave no room to generate under max_model_len ", defaults.max_model_len));
  }
  if (ids.empty()) {
    return absl::InvalidArgumentError("prompt.messages: the chat template rendered nothing");
  }
  return ids;
}

}  // namespace

absl::StatusOr<Request> RequestFromProto(const pb::GenerateRequest& proto,
                                         const RequestDefaults& defaults,
                                         const std::string& generated_id, uint64_t random_seed) {
  Request r;
  if (proto.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("request_id: ", proto.request_id().size(),
                                                   " bytes; at most ", kMaxRequestIdBytes));
  }
  r.id = proto.request_id().empty() ? generated_id : proto.request_id();
  switch (proto.prompt_case()) {
    case pb::GenerateRequest::kText:
      if (defaults.tokenizer == nullptr) {
        return absl::InvalidArgumentError(
            "prompt.text: this model has no tokenizer.json; send prompt.token_ids");
      }
      if (proto.text().empty())
        return absl::InvalidArgumentError("prompt.text: the prompt is empty");
      r.prompt = defaults.tokenizer->EncodePrompt(proto.text());
      if (static_cast<int64_t>(r.prompt.size()) >= defaults.max_model_len) {
        return absl::InvalidArgumentError(
            absl::StrCat("prompt.text: ", proto.text().size(), " bytes encode to ", r.prompt.size(),
                         " tokens, which leave no room to generate under max_model_len ",
                         defaults.max_model_len));
      }
      break;
    case pb::GenerateRequest::kTokenIds:
      r.prompt.assign(proto.token_ids().ids().begin(), proto.token_ids().ids().end());
      break;
    case pb::GenerateRequest::kMessages: {
      absl::StatusOr<std::vector<int32_t>> ids = ChatPrompt(proto.messages(), defaults);
      if (!ids.ok()) return ids.status();
      r.prompt = *std::move(ids);
      break;
    }
    default:
      return absl::InvalidArgumentError(
          "prompt: set prompt.token_ids (or prompt.text, or prompt.messages)");
  }
  const auto& s = proto.sampling();
  r.sampling.temperature = s.temperature();
  r.sampling.top_p = s.top_p() == 0.0f ? 1.0f : s.top_p();
  r.sampling.top_k = s.top_k();
  r.sampling.seed = s.has_seed() ? s.seed() : random_seed;
  const auto& st = proto.stopping();
  if (st.stop_size() > 0 && defaults.tokenizer == nullptr) {
    return absl::InvalidArgumentError(
        "stopping.stop: stop strings need a tokenizer, which this model does not have; use "
        "stopping.stop_token_ids");
  }
  if (st.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.stop: ", st.stop_size(),
                                                   " stop strings; at most ", kMaxStopStrings));
  }
  for (int i = 0; i < st.stop_size(); ++i) {
    if (st.stop(i).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop[", i, "]: empty string"));
    }
    if (st.stop(i).size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stopping.stop[", i, "]: ", st.stop(i).size(),
                                                     " bytes; at most ", kMaxStopStringBytes));
    }
  }
  r.stopping.stop_strings.assign(st.stop().begin(), st.stop().end());
  const int max_len = defaults.max_model_len;
  if (st.has_max_new_tokens()) {
    if (st.max_new_tokens() > static_cast<uint32_t>(max_len)) {  // quote what was sent
      return absl::InvalidArgumentError(absl::StrCat(
          "stopping.max_new_tokens: ", st.max_new_tokens(), " exceeds max_model_len ", max_len));
    }
    r.stopping.max_new_tokens = static_cast<int>(st.max_new_tokens());
  } else {
    r.stopping.max_new_tokens = std::max(
        1, std::min(defaults.default_max_new_tokens, max_len - static_cast<int>(r.prompt.size())));
  }
  r.stopping.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  r.stopping.ignore_eos = st.ignore_eos();
  if (absl::Status lp = LogprobsFromProto(proto.logprobs(), &r.logprobs); !lp.ok()) return lp;
  return r;
}

}  // namespace gqa
