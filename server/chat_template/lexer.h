// Splits a template into tokens the way jinja2's lexer does with trim_blocks and lstrip_blocks:
// text, {% %} and {{ }} delimiters with the names, literals and operators between them.
// Comments are dropped; whitespace control ({%- -%} {%+ +%}) is applied to the text here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace gqa::chat::internal {

enum class TokenKind {
  kData,
  kBlockBegin,
  kBlockEnd,
  kVarBegin,
  kVarEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOperator,
  kEnd
};

struct Token {
  TokenKind kind;
  std::string text;  // data, name, operator, the decoded string literal, the number's digits
  int line;
};

// TemplateError (with its line) on an unterminated tag, comment or string, or an unknown
// character inside a tag.
std::vector<Token> Lex(std::string_view source);

}  // namespace gqa::chat::internal
