#include "chat_template/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace gqa::chat::internal {

Value Value::Bool(bool b) {
  Value v = WithKind(Kind::kBool);
  v.boolean = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v = WithKind(Kind::kInt);
  v.integer = i;
  return v;
}
Value Value::Float(double d) {
  Value v = WithKind(Kind::kFloat);
  v.real = d;
  return v;
}
Value Value::String(std::string s) {
  Value v = WithKind(Kind::kString);
  v.text = std::move(s);
  return v;
}
Value Value::MakeList(List items) {
  Value v = WithKind(Kind::kList);
  v.list = std::make_shared<List>(std::move(items));
  UpdateNesting(v);
  return v;
}
Value Value::MakeDict() {
  Value v = WithKind(Kind::kDict);
  v.dict = std::make_shared<Dict>();
  v.nesting = 1;
  return v;
}
Value Value::Function(Callable fn) {
  Value v = WithKind(Kind::kCallable);
  v.callable = std::make_shared<const Callable>(std::move(fn));
  return v;
}

double Value::AsDouble() const {
  switch (kind) {
    case Kind::kBool:
      return boolean ? 1 : 0;
    case Kind::kInt:
      return static_cast<double>(integer);
    case Kind::kFloat:
      return real;
    default:
      throw TemplateError("a " + std::string(KindName(kind)) + " is not a number");
  }
}

const Value* Dict::Find(std::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Dict::Set(const std::string& key, Value value) {
  for (auto& [k, v] : entries) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  entries.emplace_back(key, std::move(value));
}

Value CallArgs::Get(size_t index, std::string_view name, const Value& fallback) const {
  if (index < positional.size()) return positional[index];
  for (const auto& [k, v] : keyword) {
    if (k == name) return v;
  }
  return fallback;
}

std::string_view KindName(Kind kind) {
  switch (kind) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kCallable:
      return "function";
  }
  return "?";
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return v.boolean;
    case Kind::kInt:
      return v.integer != 0;
    case Kind::kFloat:
      return v.real != 0;
    case Kind::kString:
      return !v.text.empty();
    case Kind::kList:
      return !v.list->empty();
    case Kind::kDict:
      return !v.dict->entries.empty();
    case Kind::kCallable:
      return true;
  }
  return false;
}

bool Equal(const Value& a, const Value& b) {
  if (a.IsNumber() && b.IsNumber()) {
    if (a.kind != Kind::kFloat && b.kind != Kind::kFloat) return a.AsDouble() == b.AsDouble();
    return a.AsDouble() == b.AsDouble();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return a.text == b.text;
    case Kind::kList: {
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        if (!Equal((*a.list)[i], (*b.list)[i])) return false;
      }
      return true;
    }
    case Kind::kDict: {
      if (a.dict->entries.size() != b.dict->entries.size()) return false;
      for (const auto& [k, v] : a.dict->entries) {
        const Value* other = b.dict->Find(k);
        if (other == nullptr || !Equal(v, *other)) return false;
      }
      return true;
    }
    case Kind::kCallable:
      return a.callable == b.callable;
    default:
      return false;
  }
}

bool Less(const Value& a, const Value& b) {
  if (a.IsNumber() && b.IsNumber()) {
    if (a.kind != Kind::kFloat && b.kind != Kind::kFloat) {
      return (a.kind == Kind::kBool ? a.boolean : a.integer) <
             (b.kind == Kind::kBool ? b.boolean : b.integer);
    }
    return a.AsDouble() < b.AsDouble();
  }
  if (a.kind == Kind::kString && b.kind == Kind::kString) return a.text < b.text;
  if (a.kind == Kind::kList && b.kind == Kind::kList) {
    const List &x = *a.list, &y = *b.list;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!Equal(x[i], y[i])) return Less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  throw TemplateError("'<' not supported between instances of '" + std::string(KindName(a.kind)) +
                      "' and '" + std::string(KindName(b.kind)) + "'");
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // The shortest round-trip digits, laid out as Python's repr: fixed for 1e-4 <= |d| < 1e16.
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, end);
  const size_t e_pos = sci.find('e');
  const int exponent = std::stoi(sci.substr(e_pos + 1));
  std::string mantissa = sci.substr(0, e_pos);
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  std::string out;
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out = "0." + std::string(-exponent - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exponent + 1) {
      out = digits + std::string(exponent + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) {
      out += '.';
      out.append(digits, 1, std::string::npos);
    }
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+',
                  std::abs(exponent));
    out += exp_buf;
  }
  return negative ? "-" + out : out;
}

std::string ToStr(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "";
    case Kind::kString:
      return v.text;
    default:
      return Repr(v);
  }
}

namespace {

std::string StringRepr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  return out;
}

void JsonString(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void JsonValue(const Value& v, int indent, bool sort_keys, int depth, std::string& out) {
  if (depth > 200) throw TemplateError("tojson: value nested too deeply");
  const std::string item_sep = indent < 0 ? ", " : ",";
  auto newline = [&](int level) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent) * static_cast<size_t>(level), ' ');
  };
  switch (v.kind) {
    case Kind::kNone:
      out += "null";
      return;
    case Kind::kBool:
      out += v.boolean ? "true" : "false";
      return;
    case Kind::kInt:
      out += std::to_string(v.integer);
      return;
    case Kind::kFloat:
      out += std::isnan(v.real)   ? "NaN"
             : std::isinf(v.real) ? (v.real > 0 ? "Infinity" : "-Infinity")
                                  : FloatRepr(v.real);
      return;
    case Kind::kString:
      JsonString(v.text, out);
      return;
    case Kind::kList: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i > 0) out += item_sep;
        newline(depth + 1);
        JsonValue((*v.list)[i], indent, sort_keys, depth + 1, out);
      }
      newline(depth);
      out += ']';
      return;
    }
    case Kind::kDict: {
      if (v.dict->entries.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& entry : v.dict->entries) entries.push_back(&entry);
      if (sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](auto* a, auto* b) { return a->first < b->first; });
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i > 0) out += item_sep;
        newline(depth + 1);
        JsonString(entries[i]->first, out);
        out += ": ";
        JsonValue(entries[i]->second, indent, sort_keys, depth + 1, out);
      }
      newline(depth);
      out += '}';
      return;
    }
    default:
      throw TemplateError("Object of type " + std::string(KindName(v.kind)) +
                          " is not JSON serializable");
  }
}

}  // namespace

std::string Repr(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.boolean ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.integer);
    case Kind::kFloat:
      return FloatRepr(v.real);
    case Kind::kString:
      return StringRepr(v.text);
    case Kind::kList: {
      std::string out = "[";
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i > 0) out += ", ";
        out += Repr((*v.list)[i]);
      }
      return out + "]";
    }
    case Kind::kDict: {
      std::string out = v.dict->is_namespace ? "<Namespace {" : "{";
      for (size_t i = 0; i < v.dict->entries.size(); ++i) {
        if (i > 0) out += ", ";
        out += StringRepr(v.dict->entries[i].first) + ": " + Repr(v.dict->entries[i].second);
      }
      return out + (v.dict->is_namespace ? "}>" : "}");
    }
    case Kind::kCallable:
      return "<function>";
  }
  return "";
}

size_t Footprint(const Value& v) {
  size_t bytes = sizeof(Value) + v.text.size();
  if (v.kind == Kind::kList) {
    for (const Value& item : *v.list) bytes += Footprint(item);
  } else if (v.kind == Kind::kDict) {
    for (const auto& [k, item] : v.dict->entries) bytes += k.size() + Footprint(item);
  }
  return bytes;
}

void UpdateNesting(Value& container) {
  uint32_t inner = 0;
  if (container.kind == Kind::kList) {
    for (const Value& item : *container.list) inner = std::max(inner, item.nesting);
  } else if (container.kind == Kind::kDict) {
    for (const auto& entry : container.dict->entries) inner = std::max(inner, entry.second.nesting);
  }
  container.nesting = inner + 1;
  if (container.nesting > kMaxValueNesting) {
    throw TemplateError("render limit exceeded: lists and dicts nested more than " +
                        std::to_string(kMaxValueNesting) + " deep");
  }
}

bool ContainsNamespace(const Value& v) {
  if (v.kind == Kind::kDict) {
    if (v.dict->is_namespace) return true;
    for (const auto& entry : v.dict->entries) {
      if (ContainsNamespace(entry.second)) return true;
    }
  } else if (v.kind == Kind::kList) {
    for (const Value& item : *v.list) {
      if (ContainsNamespace(item)) return true;
    }
  }
  return false;
}

std::string ToJson(const Value& v, int indent, bool sort_keys) {
  std::string out;
  JsonValue(v, indent, sort_keys, 0, out);
  return out;
}

}  // namespace gqa::chat::internal
