// Renders a parsed template over a dict of globals, within RenderLimits; and the builtins
// (filters, tests, methods of str/dict/list) the evaluator calls.
#pragma once

#include <optional>
#include <string>

#include "chat_template/ast.h"
#include "chat_template/chat_template.h"
#include "chat_template/value.h"

namespace gqa::chat::internal {

// What one render has spent against its limits.
class Budget {
 public:
  explicit Budget(const RenderLimits& limits) : limits_(limits) {}
  void Step(int line, size_t cost = 1);
  // A value just built or about to be walked: its footprint against max_value_bytes, and
  // footprint / 64 steps (so copying and scanning large values counts as work).
  const Value& Charge(const Value& v, int line);
  // A value (string or list) of `size` bytes/items about to be built.
  void CheckValueSize(size_t size, int line) const;
  void CheckOutputSize(size_t size, int line) const;
  const RenderLimits& limits() const { return limits_; }

 private:
  const RenderLimits& limits_;
  size_t steps_ = 0;
};

// `text` rendered with `globals` (name -> value); TemplateError from raise_exception, undefined
// operations and exceeded limits.
std::string Render(const Template& tmpl, const Dict& globals, const RenderLimits& limits);

// The builtins (builtins.cc). Each throws TemplateError naming itself on bad arguments.
Value ApplyFilter(const std::string& name, const Value& target, const CallArgs& args,
                  Budget& budget, int line);
bool ApplyTest(const std::string& name, const Value& target, const CallArgs& args, int line);
// receiver.name(args) for the str/dict methods templates use; nullopt when there is none.
std::optional<Value> CallMethod(const Value& receiver, const std::string& name,
                                const CallArgs& args, Budget& budget, int line);
// jinja2's getattr(obj, name) / obj[key]: dict item, list index, string index (by code point);
// Undefined when absent.
Value GetAttribute(const Value& target, const std::string& name);
Value GetItem(const Value& target, const Value& key, int line);
Value Slice(const Value& target, const Value& start, const Value& stop, const Value& step,
            int line);
// The names ChatTemplate::Compile accepts (the builtins above implement exactly these).
bool IsSupportedFilter(const std::string& name);
bool IsSupportedTest(const std::string& name);
bool IsSupportedMethod(const std::string& name);
// Items of a for loop / list(): list items, dict keys, string characters.
List Iterate(const Value& v, int line);
size_t Length(const Value& v, int line);

}  // namespace gqa::chat::internal
