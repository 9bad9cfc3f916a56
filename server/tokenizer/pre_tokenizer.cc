// Normalization and pre-tokenization: the normalizer steps over a text segment, then the
// pre-tokenizer steps splitting it into the words BPE encodes one by one.
#include <utf8proc.h>

#include <cstdlib>

#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/utf8.h"

namespace gqa {
namespace {

using tokenizer_internal::Regex;
using tokenizer_internal::ReplaceAll;
using tokenizer_internal::SplitBehavior;
using tokenizer_internal::Step;

// NFC/NFD/NFKC/NFKD through utf8proc; invalid UTF-8 is left as it is.
std::string UnicodeNormalize(const std::string& text, int options) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) return text;
  std::string result(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

// Splits pieces around the regex's matches.
std::vector<std::string> SplitPieces(const std::vector<std::string>& pieces, const Regex& regex,
                                     SplitBehavior behavior) {
  std::vector<std::string> out;
  for (const std::string& piece : pieces) {
    size_t last = 0;
    std::string pending;  // MergedWithNext: a match waiting for what follows
    auto emit_gap = [&](size_t begin, size_t end) {
      if (begin >= end) return;
      std::string gap = piece.substr(begin, end - begin);
      if (behavior == SplitBehavior::kMergedWithNext) {
        out.push_back(pending + gap);
        pending.clear();
      } else {
        out.push_back(std::move(gap));
      }
    };
    for (auto [begin, end] : regex.FindAll(piece)) {
      emit_gap(last, begin);
      std::string match = piece.substr(begin, end - begin);
      switch (behavior) {
        case SplitBehavior::kIsolated:
          out.push_back(std::move(match));
          break;
        case SplitBehavior::kRemoved:
          break;
        case SplitBehavior::kMergedWithPrevious:
          if (!out.empty() && last == begin && begin > 0) {
            out.back() += match;
          } else {
            out.push_back(std::move(match));
          }
          break;
        case SplitBehavior::kMergedWithNext:
          if (!pending.empty()) out.push_back(std::move(pending));
          pending = std::move(match);
          break;
      }
      last = end;
    }
    emit_gap(last, piece.size());
    if (!pending.empty()) out.push_back(std::move(pending));
  }
  return out;
}

// `tokenizers`' Digits pre-tokenizer: numeric characters (Rust's char::is_numeric, the Unicode
// categories Nd, Nl and No, as utf8proc classifies them; PCRE2's \p{N} follows an older Unicode)
// isolated one by one (individual) or run by run, the text between kept whole.
std::vector<std::string> SplitDigits(const std::vector<std::string>& pieces, bool individual) {
  std::vector<std::string> out;
  for (const std::string& piece : pieces) {
    std::string current;
    bool current_numeric = false;
    for (size_t pos = 0; pos < piece.size();) {
      utf8proc_int32_t cp = -1;
      utf8proc_ssize_t length =
          utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(piece.data() + pos),
                           static_cast<utf8proc_ssize_t>(piece.size() - pos), &cp);
      if (length <= 0) length = 1, cp = -1;  // invalid UTF-8: one byte, not a digit
      const utf8proc_category_t category = cp < 0 ? UTF8PROC_CATEGORY_CN : utf8proc_category(cp);
      const bool numeric = category == UTF8PROC_CATEGORY_ND || category == UTF8PROC_CATEGORY_NL ||
                           category == UTF8PROC_CATEGORY_NO;
      if (!current.empty() && (numeric != current_numeric || (numeric && individual))) {
        out.push_back(std::move(current));
        current.clear();
      }
      current.append(piece, pos, static_cast<size_t>(length));
      current_numeric = numeric;
      pos += static_cast<size_t>(length);
    }
    if (!current.empty()) out.push_back(std::move(current));
  }
  return out;
}

}  // namespace

std::vector<std::string> Tokenizer::Impl::PreTokenize(std::string text, bool first) const {
  for (const Step& s : normalizer) {
    if (text.empty()) break;
    if (s.kind == Step::Kind::kPrepend) {
      text = s.a + text;
    } else if (s.kind == Step::Kind::kUnicode) {
      text = UnicodeNormalize(text, s.unicode_options);
    } else if (s.regex) {
      std::string out;
      size_t last = 0;
      for (auto [b, e] : s.regex->FindAll(text))
        out.append(text, last, b - last).append(s.b), last = e;
      text = out + text.substr(last);
    } else {
      text = ReplaceAll(text, s.a, s.b);
    }
  }
  std::vector<std::string> pieces = {std::move(text)};
  for (const Step& s : pre_tokenizer) {
    switch (s.kind) {
      case Step::Kind::kSplit:
        pieces = SplitPieces(pieces, *s.regex, s.behavior);
        break;
      case Step::Kind::kDigits:
        pieces = SplitDigits(pieces, s.flag);
        break;
      case Step::Kind::kByteLevel:
        if (s.flag && !pieces.empty() && !pieces[0].empty() && pieces[0][0] != ' ') {
          pieces[0] = " " + pieces[0];
        }
        if (s.regex) pieces = SplitPieces(pieces, *s.regex, SplitBehavior::kIsolated);
        for (std::string& p : pieces) p = BytesToByteLevel(p);
        break;
      case Step::Kind::kMetaspace: {
        for (std::string& p : pieces) p = ReplaceAll(p, " ", s.a);
        const bool prepend = s.scheme == "always" || (s.scheme == "first" && first);
        if (prepend && !pieces.empty() && !pieces[0].empty() && pieces[0].rfind(s.a, 0) != 0) {
          pieces[0] = s.a + pieces[0];
        }
        if (s.flag) {
          std::vector<std::string> split;
          for (const std::string& p : pieces) {
            size_t begin = 0;
            for (size_t pos = p.find(s.a, 1); pos != std::string::npos;
                 pos = p.find(s.a, pos + 1)) {
              split.push_back(p.substr(begin, pos - begin));
              begin = pos;
            }
            split.push_back(p.substr(begin));
          }
          pieces = std::move(split);
        }
        break;
      }
      default:
        break;
    }
  }
  std::erase_if(pieces, [](const std::string& p) { return p.empty(); });
  return pieces;
}

}  // namespace gqa
