#include "chat_template/chat_template.h"

#include "absl/strings/str_cat.h"
#include "chat_template/ast.h"
#include "chat_template/evaluator.h"
#include "common/text_file.h"
#include "nlohmann/json.hpp"

namespace gqa::chat {
namespace {

using internal::Body;
using internal::Expr;
using internal::ExprKind;
using internal::TemplateError;

absl::Status ErrorStatus(const TemplateError& error) {
  if (error.line > 0 && !error.raised) {
    return absl::InvalidArgumentError(absl::StrCat(error.what(), " (line ", error.line, ")"));
  }
  return absl::InvalidArgumentError(error.what());
}

// Refuses, at compile time, the filters, tests and methods the evaluator does not have.
void CheckExpr(const Expr* e) {
  if (e == nullptr) return;
  if (e->kind == ExprKind::kFilter && !internal::IsSupportedFilter(e->name)) {
    throw TemplateError("the filter '" + e->name + "' is not supported", e->line);
  }
  if (e->kind == ExprKind::kTest && !internal::IsSupportedTest(e->name)) {
    throw TemplateError("the test '" + e->name + "' is not supported", e->line);
  }
  if (e->kind == ExprKind::kCall && e->children[0]->kind == ExprKind::kAttr &&
      !internal::IsSupportedMethod(e->children[0]->name)) {
    throw TemplateError("the method '." + e->children[0]->name + "()' is not supported", e->line);
  }
  for (const auto& child : e->children) CheckExpr(child.get());
}

void CheckBody(const Body& body) {
  for (const auto& s : body) {
    CheckExpr(s->expr.get());
    CheckExpr(s->filter.get());
    for (const auto& d : s->defaults) CheckExpr(d.get());
    for (const auto& [condition, branch] : s->branches) {
      CheckExpr(condition.get());
      CheckBody(branch);
    }
    CheckBody(s->body);
    CheckBody(s->else_body);
  }
}

internal::Value MessagesValue(const std::vector<ChatMessage>& messages) {
  internal::List list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    internal::Value message = internal::Value::MakeDict();
    message.dict->Set("role", internal::Value::String(m.role));
    message.dict->Set("content", internal::Value::String(m.content));
    list.push_back(std::move(message));
  }
  return internal::Value::MakeList(std::move(list));
}

// A special token in tokenizer_config.json: a string, or an AddedToken {"content": ...}.
std::string TokenText(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return "";
  const nlohmann::json& token = config[key];
  if (token.is_string()) return token.get<std::string>();
  if (token.is_object() && token.contains("content") && token["content"].is_string()) {
    return token["content"].get<std::string>();
  }
  return "";
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Compile(std::string_view source) {
  try {
    std::shared_ptr<const internal::Template> ast = internal::ParseTemplate(source);
    CheckBody(ast->body);
    return ChatTemplate(std::move(ast));
  } catch (const TemplateError& error) {
    return ErrorStatus(error);
  }
}

absl::StatusOr<std::string> ChatTemplate::Render(const ChatRenderInput& input) const {
  return Render(input, RenderLimits());
}

absl::StatusOr<std::string> ChatTemplate::Render(const ChatRenderInput& input,
                                                 const RenderLimits& limits) const {
  try {
    internal::Dict globals;
    globals.Set("messages", MessagesValue(input.messages));
    globals.Set("add_generation_prompt", internal::Value::Bool(input.add_generation_prompt));
    globals.Set("bos_token", internal::Value::String(input.bos_token));
    globals.Set("eos_token", internal::Value::String(input.eos_token));
    globals.Set("tools", internal::Value::None());
    globals.Set("documents", internal::Value::None());
    return internal::Render(*ast_, globals, limits);
  } catch (const TemplateError& error) {
    return ErrorStatus(error);
  }
}

absl::StatusOr<std::string> LoadedChatTemplate::Render(std::vector<ChatMessage> messages,
                                                       bool add_generation_prompt) const {
  ChatRenderInput input;
  input.messages = std::move(messages);
  input.add_generation_prompt = add_generation_prompt;
  input.bos_token = bos_token;
  input.eos_token = eos_token;
  return chat_template.Render(input);
}

absl::StatusOr<std::optional<LoadedChatTemplate>> LoadChatTemplate(
    const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  absl::StatusOr<std::string> text = ReadTextFile(path, 64 << 20);
  if (!text.ok()) return text.status();
  const nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a JSON object"));
  }
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return std::nullopt;
  const nlohmann::json& entry = config["chat_template"];
  std::string source;
  if (entry.is_string()) {
    source = entry.get<std::string>();
  } else if (entry.is_array()) {
    for (const nlohmann::json& named : entry) {
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string()) {
        source = named["template"].get<std::string>();
      }
    }
    if (source.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path.string(), ": chat_template is a list without a template named \"default\""));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": chat_template must be a string or a list of {name, template}"));
  }
  absl::StatusOr<ChatTemplate> compiled = ChatTemplate::Compile(source);
  if (!compiled.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": chat_template: ", compiled.status().message()));
  }
  return LoadedChatTemplate{*std::move(compiled), TokenText(config, "bos_token"),
                            TokenText(config, "eos_token")};
}

}  // namespace gqa::chat
