// The filters, tests and methods chat templates call, with Python's semantics on strings (code
// points, not bytes) and jinja2's on undefined values.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "chat_template/evaluator.h"
#include "utf8proc.h"

namespace gqa::chat::internal {
namespace {

// --- UTF-8 code points ---

// Byte offsets of each code point's start, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(const std::string& s) {
  std::vector<size_t> offsets;
  for (size_t i = 0; i < s.size();) {
    offsets.push_back(i);
    utf8proc_int32_t cp;
    const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                    static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    i += n > 0 ? static_cast<size_t>(n) : 1;
  }
  offsets.push_back(s.size());
  return offsets;
}

size_t CodePointCount(const std::string& s) { return CodePointOffsets(s).size() - 1; }

bool IsPythonSpace(int32_t cp) {
  return (cp >= 9 && cp <= 13) || (cp >= 28 && cp <= 32) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

struct CodePoint {
  int32_t value;
  size_t begin, end;
};

std::vector<CodePoint> Decode(const std::string& s) {
  std::vector<CodePoint> out;
  for (size_t i = 0; i < s.size();) {
    utf8proc_int32_t cp;
    auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                              static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    if (n <= 0) {
      n = 1;
      cp = 0xFFFD;
    }
    out.push_back({cp, i, i + static_cast<size_t>(n)});
    i += static_cast<size_t>(n);
  }
  return out;
}

std::string Encode(int32_t cp) {
  utf8proc_uint8_t buf[4];
  const auto n = utf8proc_encode_char(cp, buf);
  return std::string(reinterpret_cast<char*>(buf), static_cast<size_t>(n));
}

enum class Case { kUpper, kLower };
std::string MapCase(const std::string& s, Case c) {
  std::string out;
  for (const CodePoint& cp : Decode(s)) {
    if (cp.value < 0x80) {
      const char ch = static_cast<char>(cp.value);
      out += c == Case::kUpper ? static_cast<char>(std::toupper(ch))
                               : static_cast<char>(std::tolower(ch));
    } else {
      out += Encode(c == Case::kUpper ? utf8proc_toupper(cp.value) : utf8proc_tolower(cp.value));
    }
  }
  return out;
}

bool IsCased(int32_t cp) { return utf8proc_toupper(cp) != cp || utf8proc_tolower(cp) != cp; }

// Python's str.title(): a cased character after an uncased one starts a word.
std::string PythonTitle(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  for (const CodePoint& cp : Decode(s)) {
    const std::string one = s.substr(cp.begin, cp.end - cp.begin);
    out += MapCase(one, previous_cased ? Case::kLower : Case::kUpper);
    previous_cased = IsCased(cp.value);
  }
  return out;
}

std::string Capitalize(const std::string& s) {
  const auto cps = Decode(s);
  if (cps.empty()) return s;
  return MapCase(s.substr(0, cps[0].end), Case::kUpper) +
         MapCase(s.substr(cps[0].end), Case::kLower);
}

// Python's str.strip/lstrip/rstrip: `chars` (a str) or whitespace (None).
std::string Strip(const std::string& s, const Value& chars, bool left, bool right) {
  const auto cps = Decode(s);
  std::vector<int32_t> set;
  const bool whitespace = chars.kind == Kind::kNone || chars.IsUndefined();
  if (!whitespace) {
    if (chars.kind != Kind::kString) throw TemplateError("strip arg must be None or str");
    for (const CodePoint& cp : Decode(chars.text)) set.push_back(cp.value);
  }
  auto stripped = [&](int32_t cp) {
    return whitespace ? IsPythonSpace(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  size_t first = 0, last = cps.size();
  if (left) {
    while (first < last && stripped(cps[first].value)) ++first;
  }
  if (right) {
    while (last > first && stripped(cps[last - 1].value)) --last;
  }
  if (first == last) return "";
  return s.substr(cps[first].begin, cps[last - 1].end - cps[first].begin);
}

const std::string& RequireString(const Value& v, const std::string& what, int line) {
  if (v.kind != Kind::kString) {
    throw TemplateError(what + " expects a str, got " + std::string(KindName(v.kind)), line);
  }
  return v.text;
}

int64_t RequireInt(const Value& v, const std::string& what, int line) {
  if (v.kind == Kind::kInt) return v.integer;
  if (v.kind == Kind::kBool) return v.boolean;
  throw TemplateError(what + " expects an int, got " + std::string(KindName(v.kind)), line);
}

std::string Replace(const std::string& s, const std::string& from, const std::string& to,
                    int64_t count, Budget& budget, int line) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every code point
    const auto cps = Decode(s);
    int64_t done = 0;
    for (const CodePoint& cp : cps) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      out += s.substr(cp.begin, cp.end - cp.begin);
      budget.CheckValueSize(out.size(), line);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(from, pos);
    if (at == std::string::npos) break;
    out.append(s, pos, at - pos);
    out += to;
    budget.CheckValueSize(out.size(), line);
    pos = at + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

Value Split(const std::string& s, const Value& sep, int64_t max_split, Budget& budget, int line) {
  List parts;
  if (sep.kind == Kind::kNone || sep.IsUndefined()) {  // runs of whitespace, no empty parts
    const auto cps = Decode(s);
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && IsPythonSpace(cps[i].value)) ++i;
      if (i == cps.size()) break;
      size_t j = i;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        size_t end = cps.size();
        while (end > i && IsPythonSpace(cps[end - 1].value)) --end;
        parts.push_back(Value::String(s.substr(cps[i].begin, cps[end - 1].end - cps[i].begin)));
        break;
      }
      while (j < cps.size() && !IsPythonSpace(cps[j].value)) ++j;
      parts.push_back(Value::String(s.substr(cps[i].begin, cps[j - 1].end - cps[i].begin)));
      budget.CheckValueSize(parts.size(), line);
      i = j;
    }
    return Value::MakeList(std::move(parts));
  }
  const std::string& separator = RequireString(sep, "split", line);
  if (separator.empty()) throw TemplateError("split: empty separator", line);
  size_t pos = 0;
  while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
    const size_t at = s.find(separator, pos);
    if (at == std::string::npos) break;
    parts.push_back(Value::String(s.substr(pos, at - pos)));
    budget.CheckValueSize(parts.size(), line);
    pos = at + separator.size();
  }
  parts.push_back(Value::String(s.substr(pos)));
  return Value::MakeList(std::move(parts));
}

bool AffixMatches(const std::string& s, const Value& affix, bool prefix, int line) {
  if (affix.kind == Kind::kList) {
    return std::any_of(affix.list->begin(), affix.list->end(),
                       [&](const Value& a) { return AffixMatches(s, a, prefix, line); });
  }
  const std::string& a = RequireString(affix, prefix ? "startswith" : "endswith", line);
  if (a.size() > s.size()) return false;
  return prefix ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
}

std::string Join(const List& items, const std::string& separator, Budget& budget, int line) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    out += ToStr(items[i]);
    budget.CheckValueSize(out.size(), line);
  }
  return out;
}

const Value kNoneValue = Value::None();
const Value kUndefinedValue;

std::optional<Value> StringMethod(const std::string& s, const std::string& name,
                                  const CallArgs& args, Budget& budget, int line) {
  const Value& a0 = args.Get(0, "", kNoneValue);
  if (name == "strip") return Value::String(Strip(s, a0, true, true));
  if (name == "lstrip") return Value::String(Strip(s, a0, true, false));
  if (name == "rstrip") return Value::String(Strip(s, a0, false, true));
  if (name == "upper") return Value::String(MapCase(s, Case::kUpper));
  if (name == "lower") return Value::String(MapCase(s, Case::kLower));
  if (name == "title") return Value::String(PythonTitle(s));
  if (name == "capitalize") return Value::String(Capitalize(s));
  if (name == "startswith" || name == "endswith") {
    return Value::Bool(
        AffixMatches(s, args.Get(0, "prefix", kUndefinedValue), name == "startswith", line));
  }
  if (name == "split" || name == "rsplit") {
    const Value& max = args.Get(1, "maxsplit", Value::Int(-1));
    if (name == "rsplit" && RequireInt(max, name, line) >= 0) {
      throw TemplateError("rsplit with maxsplit is not supported", line);
    }
    return Split(s, args.Get(0, "sep", kNoneValue), RequireInt(max, name, line), budget, line);
  }
  if (name == "replace") {
    return Value::String(Replace(s, RequireString(args.Get(0, "old", kUndefinedValue), name, line),
                                 RequireString(args.Get(1, "new", kUndefinedValue), name, line),
                                 RequireInt(args.Get(2, "count", Value::Int(-1)), name, line),
                                 budget, line));
  }
  if (name == "join") return Value::String(Join(Iterate(a0, line), s, budget, line));
  if (name == "find") {
    const size_t at = s.find(RequireString(a0, name, line));
    return Value::Int(
        at == std::string::npos ? -1 : static_cast<int64_t>(CodePointCount(s.substr(0, at))));
  }
  if (name == "count") {
    const std::string& sub = RequireString(a0, name, line);
    if (sub.empty()) return Value::Int(static_cast<int64_t>(CodePointCount(s)) + 1);
    int64_t n = 0;
    for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
    return Value::Int(n);
  }
  return std::nullopt;
}

std::optional<Value> DictMethod(const Dict& d, const std::string& name, const CallArgs& args) {
  if (name == "get") {
    const Value& key = args.Get(0, "key", kUndefinedValue);
    const Value* found = key.kind == Kind::kString ? d.Find(key.text) : nullptr;
    return found ? *found : args.Get(1, "default", kNoneValue);
  }
  if (name == "items" || name == "keys" || name == "values") {
    List out;
    for (const auto& [k, v] : d.entries) {
      if (name == "items") out.push_back(Value::MakeList({Value::String(k), v}));
      if (name == "keys") out.push_back(Value::String(k));
      if (name == "values") out.push_back(v);
    }
    return Value::MakeList(std::move(out));
  }
  return std::nullopt;
}

// Python's slice indices over a sequence of n items.
std::vector<size_t> SliceIndices(int64_t n, const Value& start_v, const Value& stop_v,
                                 const Value& step_v, int line) {
  auto given = [](const Value& v) { return v.kind != Kind::kNone && !v.IsUndefined(); };
  const int64_t step = given(step_v) ? RequireInt(step_v, "slice", line) : 1;
  if (step == 0) throw TemplateError("slice step cannot be zero", line);
  auto clamp = [&](const Value& v, int64_t fallback) {
    if (!given(v)) return fallback;
    int64_t i = RequireInt(v, "slice", line);
    if (i < 0) i += n;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t start = clamp(start_v, step > 0 ? 0 : n - 1);
  const int64_t stop = clamp(stop_v, step > 0 ? n : -1);
  std::vector<size_t> out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
    out.push_back(static_cast<size_t>(i));
  return out;
}

Value Attr(const Value& item, const std::string& attribute) {
  Value v = item;
  size_t pos = 0;
  while (true) {  // "a.b" walks nested attributes, as jinja2's make_attrgetter
    const size_t dot = attribute.find('.', pos);
    v = GetAttribute(
        v, attribute.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos));
    if (dot == std::string::npos) return v;
    pos = dot + 1;
  }
}

CallArgs Rest(const CallArgs& args, size_t from) {
  CallArgs rest;
  for (size_t i = from; i < args.positional.size(); ++i)
    rest.positional.push_back(args.positional[i]);
  return rest;
}

Value SelectOrReject(const Value& target, const CallArgs& args, bool by_attribute, bool select,
                     int line) {
  List out;
  const size_t test_index = by_attribute ? 1 : 0;
  const std::string attribute =
      by_attribute ? RequireString(args.Get(0, "attribute", kUndefinedValue), "selectattr", line)
                   : "";
  const Value& test = args.Get(test_index, "", kUndefinedValue);
  const CallArgs test_args = Rest(args, test_index + 1);
  for (const Value& item : Iterate(target, line)) {
    const Value subject = by_attribute ? Attr(item, attribute) : item;
    const bool passed = test.IsUndefined() ? Truthy(subject)
                                           : ApplyTest(RequireString(test, "select", line), subject,
                                                       test_args, line);
    if (passed == select) out.push_back(item);
  }
  return Value::MakeList(std::move(out));
}

}  // namespace

void Budget::Step(int line, size_t cost) {
  steps_ += cost;
  if (steps_ > limits_.max_steps) {
    throw TemplateError("render limit exceeded: more than " + std::to_string(limits_.max_steps) +
                            " steps (max_steps)",
                        line);
  }
}

const Value& Budget::Charge(const Value& v, int line) {
  if (v.kind != Kind::kList && v.kind != Kind::kDict && v.kind != Kind::kString) return v;
  const size_t bytes = Footprint(v);
  Step(line, bytes / 64);
  CheckValueSize(bytes, line);
  return v;
}

void Budget::CheckValueSize(size_t size, int line) const {
  if (size > limits_.max_value_bytes) {
    throw TemplateError("render limit exceeded: a value of more than " +
                            std::to_string(limits_.max_value_bytes) + " bytes (max_value_bytes)",
                        line);
  }
}

void Budget::CheckOutputSize(size_t size, int line) const {
  if (size > limits_.max_output_bytes) {
    throw TemplateError("render limit exceeded: output of more than " +
                            std::to_string(limits_.max_output_bytes) + " bytes (max_output_bytes)",
                        line);
  }
}

List Iterate(const Value& v, int line) {
  switch (v.kind) {
    case Kind::kUndefined:
      return {};
    case Kind::kList:
      return *v.list;
    case Kind::kDict: {
      List keys;
      for (const auto& entry : v.dict->entries) keys.push_back(Value::String(entry.first));
      return keys;
    }
    case Kind::kString: {
      List chars;
      for (const CodePoint& cp : Decode(v.text))
        chars.push_back(Value::String(v.text.substr(cp.begin, cp.end - cp.begin)));
      return chars;
    }
    default:
      throw TemplateError("'" + std::string(KindName(v.kind)) + "' object is not iterable", line);
  }
}

size_t Length(const Value& v, int line) {
  switch (v.kind) {
    case Kind::kUndefined:
      return 0;
    case Kind::kString:
      return CodePointCount(v.text);
    case Kind::kList:
      return v.list->size();
    case Kind::kDict:
      return v.dict->entries.size();
    default:
      throw TemplateError("object of type '" + std::string(KindName(v.kind)) + "' has no len()",
                          line);
  }
}

Value GetAttribute(const Value& target, const std::string& name) {
  if (target.kind == Kind::kDict) {
    const Value* found = target.dict->Find(name);
    return found ? *found : Value();
  }
  if (target.IsUndefined()) throw TemplateError("'" + name + "' of an undefined value");
  return Value();
}

Value GetItem(const Value& target, const Value& key, int line) {
  if (target.IsUndefined()) {
    throw TemplateError("an undefined value has no item " + Repr(key), line);
  }
  if (target.kind == Kind::kDict) {
    if (key.kind != Kind::kString) return Value();
    const Value* found = target.dict->Find(key.text);
    return found ? *found : Value();
  }
  if ((target.kind == Kind::kList || target.kind == Kind::kString) &&
      (key.kind == Kind::kInt || key.kind == Kind::kBool)) {
    const int64_t n = static_cast<int64_t>(target.kind == Kind::kList ? target.list->size()
                                                                      : Length(target, line));
    int64_t i = key.kind == Kind::kInt ? key.integer : key.boolean;
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value();
    if (target.kind == Kind::kList) return (*target.list)[static_cast<size_t>(i)];
    const auto offsets = CodePointOffsets(target.text);
    return Value::String(target.text.substr(offsets[i], offsets[i + 1] - offsets[i]));
  }
  if (key.kind == Kind::kString) return GetAttribute(target, key.text);
  return Value();
}

Value Slice(const Value& target, const Value& start, const Value& stop, const Value& step,
            int line) {
  if (target.kind == Kind::kList) {
    List out;
    for (size_t i :
         SliceIndices(static_cast<int64_t>(target.list->size()), start, stop, step, line)) {
      out.push_back((*target.list)[i]);
    }
    return Value::MakeList(std::move(out));
  }
  if (target.kind == Kind::kString) {
    const auto offsets = CodePointOffsets(target.text);
    std::string out;
    for (size_t i :
         SliceIndices(static_cast<int64_t>(offsets.size() - 1), start, stop, step, line)) {
      out.append(target.text, offsets[i], offsets[i + 1] - offsets[i]);
    }
    return Value::String(std::move(out));
  }
  throw TemplateError("'" + std::string(KindName(target.kind)) + "' object is not subscriptable",
                      line);
}

std::optional<Value> CallMethod(const Value& receiver, const std::string& name,
                                const CallArgs& args, Budget& budget, int line) {
  if (receiver.kind == Kind::kString) return StringMethod(receiver.text, name, args, budget, line);
  if (receiver.kind == Kind::kDict && !receiver.dict->is_namespace)
    return DictMethod(*receiver.dict, name, args);
  if (receiver.kind == Kind::kList && (name == "append" || name == "pop" || name == "extend" ||
                                       name == "insert" || name == "remove" || name == "clear")) {
    throw TemplateError("access to attribute '" + name + "' of 'list' object is unsafe", line);
  }
  return std::nullopt;
}

Value ApplyFilter(const std::string& name, const Value& target, const CallArgs& args,
                  Budget& budget, int line) {
  const Value& a0 = args.Get(0, "", kUndefinedValue);
  if (name == "trim")
    return Value::String(Strip(ToStr(target), args.Get(0, "chars", kNoneValue), true, true));
  if (name == "tojson") {
    const Value& indent = args.Get(1, "indent", kNoneValue);
    const int indent_spaces =
        indent.kind == Kind::kNone ? -1 : static_cast<int>(RequireInt(indent, "tojson", line));
    return Value::String(
        ToJson(target, indent_spaces, Truthy(args.Get(3, "sort_keys", Value::Bool(false)))));
  }
  if (name == "length" || name == "count")
    return Value::Int(static_cast<int64_t>(Length(target, line)));
  if (name == "upper") return Value::String(MapCase(ToStr(target), Case::kUpper));
  if (name == "lower") return Value::String(MapCase(ToStr(target), Case::kLower));
  if (name == "capitalize") return Value::String(Capitalize(ToStr(target)));
  if (name == "default" || name == "d") {
    const bool boolean = Truthy(args.Get(1, "boolean", Value::Bool(false)));
    const bool use_default = target.IsUndefined() || (boolean && !Truthy(target));
    return use_default ? args.Get(0, "default_value", Value::String("")) : target;
  }
  if (name == "first" || name == "last") {
    const List items = Iterate(target, line);
    if (items.empty()) return Value();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    List items = Iterate(target, line);
    const Value& attribute = args.Get(1, "attribute", kNoneValue);
    if (attribute.kind == Kind::kString) {
      for (Value& item : items) item = Attr(item, attribute.text);
    }
    const Value& sep = args.Get(0, "d", Value::String(""));
    return Value::String(Join(items, ToStr(sep), budget, line));
  }
  if (name == "replace") {
    return Value::String(
        Replace(ToStr(target), ToStr(a0), ToStr(args.Get(1, "new", kUndefinedValue)),
                RequireInt(args.Get(2, "count", Value::Int(-1)), name, line), budget, line));
  }
  if (name == "items") {
    if (target.IsUndefined()) return Value::MakeList();
    if (target.kind != Kind::kDict) throw TemplateError("items filter expects a mapping", line);
    return *DictMethod(*target.dict, "items", {});
  }
  if (name == "list") return Value::MakeList(Iterate(target, line));
  if (name == "string") return Value::String(ToStr(target));
  if (name == "safe") return target;
  if (name == "title") {  // jinja2's: words begin after spaces, '-', and opening brackets
    std::string out;
    bool begin = true;
    for (const CodePoint& cp : Decode(ToStr(target))) {
      const std::string one = ToStr(target).substr(cp.begin, cp.end - cp.begin);
      const bool separator =
          IsPythonSpace(cp.value) || std::string_view("-([{<").find(one) != std::string_view::npos;
      out += separator ? one : MapCase(one, begin ? Case::kUpper : Case::kLower);
      begin = separator;
    }
    return Value::String(out);
  }
  if (name == "int") {
    if (target.kind == Kind::kInt) return target;
    if (target.kind == Kind::kFloat) return Value::Int(static_cast<int64_t>(target.real));
    if (target.kind == Kind::kBool) return Value::Int(target.boolean);
    if (target.kind == Kind::kString) {
      try {
        size_t used = 0;
        const long long v = std::stoll(Strip(target.text, kNoneValue, true, true), &used);
        return Value::Int(v);
      } catch (const std::exception&) {
      }
    }
    return args.Get(0, "default", Value::Int(0));
  }
  if (name == "float") {
    if (target.IsNumber()) return Value::Float(target.AsDouble());
    return args.Get(0, "default", Value::Float(0));
  }
  if (name == "abs") {
    if (target.kind == Kind::kInt)
      return Value::Int(target.integer < 0 ? -target.integer : target.integer);
    return Value::Float(std::fabs(target.AsDouble()));
  }
  if (name == "reverse") {
    if (target.kind == Kind::kString) {
      std::string out;
      const auto cps = Decode(target.text);
      for (auto it = cps.rbegin(); it != cps.rend(); ++it)
        out += target.text.substr(it->begin, it->end - it->begin);
      return Value::String(out);
    }
    List items = Iterate(target, line);
    std::reverse(items.begin(), items.end());
    return Value::MakeList(std::move(items));
  }
  if (name == "map") {
    List out;
    const Value& attribute = args.Get(99, "attribute", kUndefinedValue);
    for (const Value& item : Iterate(target, line)) {
      if (attribute.kind == Kind::kString) {
        out.push_back(Attr(item, attribute.text));
      } else {
        out.push_back(
            ApplyFilter(RequireString(a0, "map", line), item, Rest(args, 1), budget, line));
      }
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "select" || name == "reject")
    return SelectOrReject(target, args, false, name == "select", line);
  if (name == "selectattr" || name == "rejectattr") {
    return SelectOrReject(target, args, true, name == "selectattr", line);
  }
  throw TemplateError("the filter '" + name + "' is not supported", line);
}

bool ApplyTest(const std::string& name, const Value& target, const CallArgs& args, int line) {
  const Value& a0 = args.Get(0, "", kUndefinedValue);
  if (name == "defined") return !target.IsUndefined();
  if (name == "undefined") return target.IsUndefined();
  if (name == "none") return target.kind == Kind::kNone;
  if (name == "string") return target.kind == Kind::kString;
  if (name == "number") return target.IsNumber();
  if (name == "integer") return target.kind == Kind::kInt;
  if (name == "float") return target.kind == Kind::kFloat;
  if (name == "boolean") return target.kind == Kind::kBool;
  if (name == "true") return target.kind == Kind::kBool && target.boolean;
  if (name == "false") return target.kind == Kind::kBool && !target.boolean;
  if (name == "mapping") return target.kind == Kind::kDict;
  if (name == "sequence")
    return target.kind == Kind::kList || target.kind == Kind::kString || target.kind == Kind::kDict;
  if (name == "iterable")
    return target.kind == Kind::kList || target.kind == Kind::kString || target.kind == Kind::kDict;
  if (name == "callable") return target.kind == Kind::kCallable;
  if (name == "odd" || name == "even") {
    const int64_t i = RequireInt(target, name, line);
    return (i % 2 != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    const int64_t d = RequireInt(a0, name, line);
    if (d == 0) throw TemplateError("integer division or modulo by zero", line);
    return RequireInt(target, name, line) % d == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return Equal(target, a0);
  if (name == "ne" || name == "!=") return !Equal(target, a0);
  if (name == "lt" || name == "lessthan" || name == "<") return Less(target, a0);
  if (name == "gt" || name == "greaterthan" || name == ">") return Less(a0, target);
  if (name == "le" || name == "<=") return !Less(a0, target);
  if (name == "ge" || name == ">=") return !Less(target, a0);
  if (name == "in") {
    for (const Value& v : Iterate(a0, line)) {
      if (a0.kind == Kind::kString
              ? ToStr(target).empty() || a0.text.find(ToStr(target)) != std::string::npos
              : Equal(v, target)) {
        return true;
      }
    }
    return a0.kind == Kind::kString && target.kind == Kind::kString && target.text.empty();
  }
  if (name == "sameas")
    return (target.kind == Kind::kNone && a0.kind == Kind::kNone) ||
           (target.kind == Kind::kBool && a0.kind == Kind::kBool && target.boolean == a0.boolean);
  if (name == "lower")
    return target.kind == Kind::kString && MapCase(target.text, Case::kLower) == target.text;
  if (name == "upper")
    return target.kind == Kind::kString && MapCase(target.text, Case::kUpper) == target.text;
  throw TemplateError("the test '" + name + "' is not supported", line);
}

bool IsSupportedFilter(const std::string& name) {
  static const std::set<std::string> kFilters = {
      "trim",    "tojson", "length", "count",  "upper",      "lower",     "capitalize",
      "default", "d",      "first",  "last",   "join",       "replace",   "items",
      "list",    "string", "safe",   "title",  "int",        "float",     "abs",
      "reverse", "map",    "select", "reject", "selectattr", "rejectattr"};
  return kFilters.count(name) > 0;
}

bool IsSupportedTest(const std::string& name) {
  static const std::set<std::string> kTests = {
      "defined",  "undefined", "none",        "string", "number",      "integer",
      "float",    "boolean",   "true",        "false",  "mapping",     "sequence",
      "iterable", "callable",  "odd",         "even",   "divisibleby", "eq",
      "equalto",  "==",        "ne",          "!=",     "lt",          "lessthan",
      "<",        "gt",        "greaterthan", ">",      "le",          "<=",
      "ge",       ">=",        "in",          "sameas", "lower",       "upper"};
  return kTests.count(name) > 0;
}

bool IsSupportedMethod(const std::string& name) {
  static const std::set<std::string> kMethods = {
      "strip",      "lstrip",   "rstrip", "upper",  "lower",   "title", "capitalize",
      "startswith", "endswith", "split",  "rsplit", "replace", "join",  "find",
      "count",      "get",      "items",  "keys",   "values",  "cycle"};
  return kMethods.count(name) > 0;
}

}  // namespace gqa::chat::internal
