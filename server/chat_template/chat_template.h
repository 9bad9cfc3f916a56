// Chat templates: the Jinja subset Hugging Face `chat_template`s use, rendered the way
// transformers' apply_chat_template does (jinja2 with trim_blocks and lstrip_blocks, the
// loopcontrols extension, a `tojson` filter with ensure_ascii=False, and the globals
// raise_exception and strftime_now). Our own small interpreter: a lexer, a parser to an AST
// and an evaluator over a JSON-like value, bounded in time and memory (see RenderLimits).
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace gqa::chat {

struct ChatMessage {
  std::string role;
  std::string content;
};

struct ChatRenderInput {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = true;
  std::string bos_token, eos_token;
};

// What one render may spend; exceeding any is an InvalidArgument naming the limit.
struct RenderLimits {
  size_t max_output_bytes = 16 << 20;  // the rendered text
  size_t max_steps = 10'000'000;       // evaluated nodes and loop iterations together
  size_t max_call_depth = 16;          // nested macro calls (each may nest its own expressions)
  size_t max_value_bytes = 16 << 20;   // one string or list built during the render
};

namespace internal {
struct Template;  // the parsed AST (chat_template_ast.h)
}

class ChatTemplate {
 public:
  // InvalidArgument naming the construct and its line when the source uses what we cannot
  // render (or does not parse).
  static absl::StatusOr<ChatTemplate> Compile(std::string_view source);
  // InvalidArgument for raise_exception (its message) and for limits exceeded.
  absl::StatusOr<std::string> Render(const ChatRenderInput& input) const;
  absl::StatusOr<std::string> Render(const ChatRenderInput& input,
                                     const RenderLimits& limits) const;

 private:
  explicit ChatTemplate(std::shared_ptr<const internal::Template> ast) : ast_(std::move(ast)) {}
  std::shared_ptr<const internal::Template> ast_;  // immutable, shared by copies
};

// A model's chat template with the special tokens it renders.
struct LoadedChatTemplate {
  ChatTemplate chat_template;
  std::string bos_token, eos_token;
  // Renders `input` with this model's bos/eos (those of `input` are replaced).
  absl::StatusOr<std::string> Render(std::vector<ChatMessage> messages,
                                     bool add_generation_prompt) const;
};

// The model's template: tokenizer_config.json's "chat_template" (a string, or a list of
// {name, template}: the one named "default"), with its bos_token/eos_token (strings or
// {"content": ...} objects). nullopt when the model has none (no file, or no chat_template);
// an error naming the file when it has one we cannot compile.
absl::StatusOr<std::optional<LoadedChatTemplate>> LoadChatTemplate(
    const std::filesystem::path& model_dir);

}  // namespace gqa::chat
