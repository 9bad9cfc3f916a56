#include "loadgen/prometheus_text.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gqa::loadgen {
namespace {

bool IsNameChar(char c, bool first) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
         (!first && std::isdigit(static_cast<unsigned char>(c)));
}

// Consumes a metric or label name from the front of `s`; empty when there is none.
absl::string_view TakeName(absl::string_view& s) {
  size_t n = 0;
  while (n < s.size() && IsNameChar(s[n], n == 0)) ++n;
  absl::string_view name = s.substr(0, n);
  s.remove_prefix(n);
  return name;
}

void SkipSpaces(absl::string_view& s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
}

// Consumes a quoted label value (the opening quote included) into `out`.
bool TakeQuoted(absl::string_view& s, std::string* out) {
  if (s.empty() || s.front() != '"') return false;
  s.remove_prefix(1);
  while (!s.empty()) {
    const char c = s.front();
    s.remove_prefix(1);
    if (c == '"') return true;
    if (c != '\\') {
      out->push_back(c);
      continue;
    }
    if (s.empty()) return false;
    const char e = s.front();
    s.remove_prefix(1);
    out->push_back(e == 'n' ? '\n' : e);  // \\ -> \, \" -> ", \n -> newline
  }
  return false;
}

// Consumes "{name="value",...}" (an optional trailing comma allowed).
bool TakeLabels(absl::string_view& s, Labels* labels) {
  s.remove_prefix(1);  // '{'
  while (true) {
    SkipSpaces(s);
    if (!s.empty() && s.front() == '}') {
      s.remove_prefix(1);
      return true;
    }
    absl::string_view name = TakeName(s);
    SkipSpaces(s);
    if (name.empty() || s.empty() || s.front() != '=') return false;
    s.remove_prefix(1);
    SkipSpaces(s);
    std::string value;
    if (!TakeQuoted(s, &value)) return false;
    labels->emplace_back(std::string(name), std::move(value));
    SkipSpaces(s);
    if (!s.empty() && s.front() == ',') {
      s.remove_prefix(1);
    } else if (s.empty() || s.front() != '}') {
      return false;
    }
  }
}

bool ParseValue(absl::string_view text, double* value) {
  const bool negative = !text.empty() && text.front() == '-';
  if (!text.empty() && (text.front() == '+' || negative)) text.remove_prefix(1);
  if (absl::EqualsIgnoreCase(text, "inf")) {
    *value = negative ? -std::numeric_limits<double>::infinity()
                      : std::numeric_limits<double>::infinity();
    return true;
  }
  if (absl::EqualsIgnoreCase(text, "nan")) {
    *value = std::numeric_limits<double>::quiet_NaN();
    return !negative;
  }
  if (text.empty() ||
      !(std::isdigit(static_cast<unsigned char>(text.front())) || text.front() == '.')) {
    return false;
  }
  if (!absl::SimpleAtod(text, value)) return false;
  if (negative) *value = -*value;
  return true;
}

bool ParseLine(absl::string_view line, Sample* sample) {
  sample->name = std::string(TakeName(line));
  if (sample->name.empty()) return false;
  SkipSpaces(line);
  if (!line.empty() && line.front() == '{' && !TakeLabels(line, &sample->labels)) return false;
  std::vector<absl::string_view> rest =
      absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (rest.empty() || rest.size() > 2) return false;  // value [timestamp]
  int64_t timestamp;
  if (rest.size() == 2 && !absl::SimpleAtoi(rest[1], &timestamp)) return false;
  return ParseValue(rest[0], &sample->value);
}

}  // namespace

absl::StatusOr<std::vector<Sample>> ParsePrometheusText(absl::string_view text) {
  std::vector<Sample> samples;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    Sample sample;
    if (!ParseLine(line, &sample)) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, " is not a Prometheus sample: ", line));
    }
    samples.push_back(std::move(sample));
  }
  return samples;
}

bool HasSample(const std::vector<Sample>& samples, absl::string_view name) {
  return std::any_of(samples.begin(), samples.end(),
                     [&](const Sample& s) { return s.name == name; });
}

std::optional<double> SumSamples(const std::vector<Sample>& samples, absl::string_view name,
                                 const Labels& subset) {
  std::optional<double> sum;
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    if (!sum) sum = 0.0;
    const bool match = std::all_of(subset.begin(), subset.end(), [&](const auto& want) {
      return std::find(s.labels.begin(), s.labels.end(), want) != s.labels.end();
    });
    if (match) *sum += s.value;
  }
  return sum;
}

}  // namespace gqa::loadgen
