#include "chat_template/lexer.h"

#include <algorithm>
#include <array>

#include "chat_template/value.h"

namespace gqa::chat::internal {
namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// jinja2 reads \r\n and \r as \n and drops one trailing newline (keep_trailing_newline=False).
std::string NormalizeNewlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {}

  std::vector<Token> Run() {
    while (pos_ < src_.size()) LexData();
    tokens_.push_back({TokenKind::kEnd, "", line_});
    return std::move(tokens_);
  }

 private:
  enum class Tag { kBlock, kVariable, kComment };

  // Text up to the next tag, with lstrip_blocks / `-` applied to its end; then the tag.
  void LexData() {
    size_t start = pos_, at = pos_;
    Tag tag = Tag::kBlock;
    for (;; ++at) {
      at = src_.find('{', at);
      if (at == std::string::npos || at + 1 >= src_.size()) {
        EmitData(src_.substr(start));
        pos_ = src_.size();
        return;
      }
      const char next = src_[at + 1];
      if (next == '%' || next == '{' || next == '#') {
        tag = next == '%' ? Tag::kBlock : next == '{' ? Tag::kVariable : Tag::kComment;
        break;
      }
    }
    std::string text = src_.substr(start, at - start);
    const char sign = at + 2 < src_.size() ? src_[at + 2] : '\0';
    if (sign == '-') {
      text.erase(std::find_if_not(text.rbegin(), text.rend(), IsSpace).base(), text.end());
    } else if (sign != '+' && tag != Tag::kVariable) {
      const size_t line_start = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
      if ((line_start > 0 || line_starting_) && line_start < text.size() &&
          std::all_of(text.begin() + line_start, text.end(), IsSpace)) {
        text.erase(line_start);
      }
    }
    line_ += static_cast<int>(std::count(src_.begin() + start, src_.begin() + at, '\n'));
    EmitData(std::move(text));
    pos_ = at + 2 + (sign == '-' || sign == '+' ? 1 : 0);
    line_starting_ = false;
    if (tag == Tag::kComment) {
      LexComment();
    } else {
      LexTag(tag);
    }
  }

  void EmitData(std::string text) {
    if (!text.empty()) tokens_.push_back({TokenKind::kData, std::move(text), line_});
  }

  void LexComment() {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) throw TemplateError("Missing end of comment tag", line_);
    const bool strip = end > pos_ && src_[end - 1] == '-';
    const bool keep = end > pos_ && src_[end - 1] == '+';
    line_ += static_cast<int>(std::count(src_.begin() + pos_, src_.begin() + end, '\n'));
    pos_ = end + 2;
    AfterTagEnd(strip, !keep);
  }

  // After a tag's end: `-` strips all following whitespace, else trim_blocks one newline.
  void AfterTagEnd(bool strip, bool trim_newline) {
    const size_t start = pos_;
    if (strip) {
      while (pos_ < src_.size() && IsSpace(src_[pos_])) ++pos_;
    } else if (trim_newline && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
    line_ += static_cast<int>(std::count(src_.begin() + start, src_.begin() + pos_, '\n'));
    line_starting_ = pos_ > start && src_[pos_ - 1] == '\n';
  }

  void LexTag(Tag tag) {
    const char* close = tag == Tag::kBlock ? "%}" : "}}";
    tokens_.push_back(
        {tag == Tag::kBlock ? TokenKind::kBlockBegin : TokenKind::kVarBegin, "", line_});
    std::vector<char> brackets;
    while (true) {
      while (pos_ < src_.size() && IsSpace(src_[pos_])) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= src_.size())
        throw TemplateError("unexpected end of template, tag not closed", line_);
      if (brackets.empty()) {
        const bool minus = src_.compare(pos_, 3, std::string("-") + close) == 0;
        const bool plus =
            tag == Tag::kBlock && src_.compare(pos_, 3, std::string("+") + close) == 0;
        if (minus || plus || src_.compare(pos_, 2, close) == 0) {
          pos_ += minus || plus ? 3 : 2;
          tokens_.push_back(
              {tag == Tag::kBlock ? TokenKind::kBlockEnd : TokenKind::kVarEnd, "", line_});
          AfterTagEnd(minus, tag == Tag::kBlock && !plus);
          return;
        }
      }
      LexToken(brackets);
    }
  }

  void LexToken(std::vector<char>& brackets) {
    const char c = src_[pos_];
    if (IsNameStart(c)) {
      size_t end = pos_;
      while (end < src_.size() && (IsNameStart(src_[end]) || IsDigit(src_[end]))) ++end;
      tokens_.push_back({TokenKind::kName, src_.substr(pos_, end - pos_), line_});
      pos_ = end;
    } else if (IsDigit(c)) {
      LexNumber();
    } else if (c == '\'' || c == '"') {
      LexString(c);
    } else {
      LexOperator(brackets);
    }
  }

  void LexNumber() {
    size_t end = pos_;
    auto digits = [&] {
      while (end < src_.size() && (IsDigit(src_[end]) || src_[end] == '_')) ++end;
    };
    digits();
    bool is_float = false;
    if (end + 1 < src_.size() && src_[end] == '.' && IsDigit(src_[end + 1])) {
      is_float = true;
      ++end;
      digits();
    }
    if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t e = end + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      if (e < src_.size() && IsDigit(src_[e])) {
        is_float = true;
        end = e;
        digits();
      }
    }
    std::string text = src_.substr(pos_, end - pos_);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    tokens_.push_back({is_float ? TokenKind::kFloat : TokenKind::kInt, text, line_});
    pos_ = end;
  }

  void LexString(char quote) {
    std::string out;
    const int start_line = line_;
    size_t i = pos_ + 1;
    for (; i < src_.size() && src_[i] != quote; ++i) {
      char c = src_[i];
      if (c == '\n') ++line_;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (++i >= src_.size()) break;
      switch (src_[i]) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case '\n':
          ++line_;
          break;
        default:
          out += '\\';
          out += src_[i];
      }
    }
    if (i >= src_.size()) throw TemplateError("unterminated string literal", start_line);
    tokens_.push_back({TokenKind::kString, std::move(out), start_line});
    pos_ = i + 1;
  }

  void LexOperator(std::vector<char>& brackets) {
    static constexpr std::array<std::string_view, 6> kTwo = {"//", "**", "==", "!=", "<=", ">="};
    for (std::string_view op : kTwo) {
      if (src_.compare(pos_, 2, op) == 0) {
        tokens_.push_back({TokenKind::kOperator, std::string(op), line_});
        pos_ += 2;
        return;
      }
    }
    const char c = src_[pos_];
    if (std::string_view("+-*/%~<>()[]{}.,:|=;").find(c) == std::string_view::npos) {
      throw TemplateError(std::string("unexpected char '") + c + "'", line_);
    }
    if (c == '(' || c == '[' || c == '{') brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty() || brackets.back() != c) {
        throw TemplateError(std::string("unexpected '") + c + "'", line_);
      }
      brackets.pop_back();
    }
    tokens_.push_back({TokenKind::kOperator, std::string(1, c), line_});
    ++pos_;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> Lex(std::string_view source) { return Lexer(NormalizeNewlines(source)).Run(); }

}  // namespace gqa::chat::internal
