// The values a chat template computes with: Python's None, bool, int, float, str, list and dict
// (insertion-ordered, string keys), jinja2's Undefined, and callables (globals, macros, the
// namespace() object is a dict marked assignable). Lists and dicts are shared by reference, as
// in Python, so `ns.attr = x` changes the namespace every name of it sees.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gqa::chat::internal {

// The one error type inside the interpreter: thrown where jinja2 raises, caught at the boundary
// (ChatTemplate::Compile / Render) and returned as an absl::Status. `line` is 0 when unknown.
struct TemplateError : std::runtime_error {
  TemplateError(const std::string& message, int line_number = 0)
      : std::runtime_error(message), line(line_number) {}
  int line;
  bool raised = false;  // by the template's raise_exception(): its message alone reaches the user
};

struct Value;
using List = std::vector<Value>;
struct Dict;
struct CallArgs;
using Callable = std::function<Value(const CallArgs&)>;

// How deeply lists and dicts may nest (so printing, comparing and freeing recurse boundedly).
inline constexpr uint32_t kMaxValueNesting = 64;

enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };

struct Value {
  Kind kind = Kind::kUndefined;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<const Callable> callable;
  uint32_t nesting = 0;  // lists and dicts inside (1 for a flat list); bounded by kMaxNesting

  static Value None() { return WithKind(Kind::kNone); }
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double d);
  static Value String(std::string s);
  static Value MakeList(List items = {});
  static Value MakeDict();
  static Value Function(Callable fn);

  bool IsUndefined() const { return kind == Kind::kUndefined; }
  bool IsNumber() const {
    return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool;
  }
  double AsDouble() const;

 private:
  static Value WithKind(Kind k) {
    Value v;
    v.kind = k;
    return v;
  }
};

struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  bool is_namespace = false;  // namespace(): attributes may be assigned with `set ns.x = ...`
  const Value* Find(std::string_view key) const;
  void Set(const std::string& key, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  // The argument at `index`, or the keyword `name`, or `fallback`.
  Value Get(size_t index, std::string_view name, const Value& fallback) const;
};

std::string_view KindName(Kind kind);  // Python's type name: 'str', 'list', 'NoneType', ...
bool Truthy(const Value& v);
bool Equal(const Value& a, const Value& b);
// a < b, Python ordering for numbers, strings and lists; TemplateError otherwise.
bool Less(const Value& a, const Value& b);
// Python's str(v) (what {{ v }} prints); Undefined prints as "".
std::string ToStr(const Value& v);
// Python's repr(v).
std::string Repr(const Value& v);
// json.dumps(v, ensure_ascii=False, indent=indent (negative: None), sort_keys=sort_keys).
std::string ToJson(const Value& v, int indent, bool sort_keys);
std::string FloatRepr(double d);  // Python's repr(float)
// Bytes a value holds, containers and strings included (what the render limits count).
size_t Footprint(const Value& v);
// Sets a container's nesting from its items; TemplateError past kMaxValueNesting.
void UpdateNesting(Value& container);
bool ContainsNamespace(const Value& v);

}  // namespace gqa::chat::internal
