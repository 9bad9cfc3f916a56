// libFuzzer: a chat template's source and a conversation from the fuzz bytes, compiled and
// rendered under small limits. The input is the template, then "\n#--\n"-separated message
// contents (roles alternate user/assistant, the first of three is a system message). Any crash,
// sanitizer report, hang or unbounded allocation is a bug: every failure must be a Status.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "chat_template/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  constexpr std::string_view kSeparator = "\n#--\n";
  std::vector<std::string_view> parts;
  size_t pos = 0;
  while (true) {
    const size_t at = input.find(kSeparator, pos);
    parts.push_back(
        input.substr(pos, at == std::string_view::npos ? std::string_view::npos : at - pos));
    if (at == std::string_view::npos) break;
    pos = at + kSeparator.size();
  }
  absl::StatusOr<gqa::chat::ChatTemplate> compiled = gqa::chat::ChatTemplate::Compile(parts[0]);
  if (!compiled.ok()) return 0;
  gqa::chat::ChatRenderInput chat;
  chat.bos_token = "<s>";
  chat.eos_token = "</s>";
  chat.add_generation_prompt = size % 2 == 0;
  for (size_t i = 1; i < parts.size(); ++i) {
    const char* role = parts.size() > 3 && i == 1 ? "system" : (i % 2 ? "user" : "assistant");
    chat.messages.push_back({role, std::string(parts[i])});
  }
  gqa::chat::RenderLimits limits;
  limits.max_steps = 200'000;
  limits.max_output_bytes = 1 << 20;
  limits.max_value_bytes = 1 << 20;
  absl::StatusOr<std::string> out = compiled->Render(chat, limits);
  if (out.ok() && out->size() > limits.max_output_bytes) __builtin_trap();
  return 0;
}
