// The tree-walking evaluator: statements write to one output string; expressions evaluate to
// Values. Every node and loop iteration is a step against the budget.
#include "chat_template/evaluator.h"

#include <cmath>
#include <ctime>
#include <unordered_map>

namespace gqa::chat::internal {
namespace {

enum class Flow { kNormal, kBreak, kContinue };

bool CheckedAdd(int64_t a, int64_t b, int64_t& out) { return !__builtin_add_overflow(a, b, &out); }
bool CheckedSub(int64_t a, int64_t b, int64_t& out) { return !__builtin_sub_overflow(a, b, &out); }
bool CheckedMul(int64_t a, int64_t b, int64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

bool IsIntLike(const Value& v) { return v.kind == Kind::kInt || v.kind == Kind::kBool; }
int64_t IntOf(const Value& v) { return v.kind == Kind::kBool ? v.boolean : v.integer; }

Value Namespace(const CallArgs& args) {
  Value ns = Value::MakeDict();
  ns.dict->is_namespace = true;
  for (const Value& positional : args.positional) {
    if (positional.kind != Kind::kDict)
      throw TemplateError("namespace() takes a mapping or keywords");
    for (const auto& [k, v] : positional.dict->entries) ns.dict->Set(k, v);
  }
  for (const auto& [k, v] : args.keyword) ns.dict->Set(k, v);
  for (const auto& entry : ns.dict->entries) {
    if (ContainsNamespace(entry.second))
      throw TemplateError("a namespace inside a namespace is not supported");
  }
  UpdateNesting(ns);
  return ns;
}

std::string StrftimeNow(const std::string& format) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[256];
  const size_t n = std::strftime(buf, sizeof(buf), format.c_str(), &local);
  return std::string(buf, n);
}

class Evaluator {
 public:
  Evaluator(const Dict& globals, const RenderLimits& limits) : budget_(limits) {
    scopes_.emplace_back();
    for (const auto& [k, v] : globals.entries) scopes_.back()[k] = v;
    AddBuiltinGlobals();
    scopes_.emplace_back();  // the template's own variables
  }

  std::string Run(const Template& tmpl) {
    std::string out;
    Exec(tmpl.body, out);
    return out;
  }

 private:
  void AddBuiltinGlobals() {
    auto& g = scopes_.front();
    g["raise_exception"] = Value::Function([](const CallArgs& args) -> Value {
      TemplateError error(ToStr(args.Get(0, "message", Value())));
      error.raised = true;
      throw error;
    });
    g["strftime_now"] = Value::Function([](const CallArgs& args) {
      return Value::String(StrftimeNow(ToStr(args.Get(0, "format", Value()))));
    });
    g["namespace"] = Value::Function(Namespace);
    g["range"] = Value::Function([this](const CallArgs& args) { return Range(args); });
    g["dict"] = Value::Function([](const CallArgs& args) {
      Value d = Value::MakeDict();
      for (const auto& [k, v] : args.keyword) d.dict->Set(k, v);
      return d;
    });
  }

  Value Range(const CallArgs& args) {
    std::vector<int64_t> a;
    for (const Value& v : args.positional) {
      if (!IsIntLike(v)) throw TemplateError("range() takes integers");
      a.push_back(IntOf(v));
    }
    if (a.empty() || a.size() > 3) throw TemplateError("range() takes 1 to 3 arguments");
    const int64_t start = a.size() == 1 ? 0 : a[0], stop = a.size() == 1 ? a[0] : a[1];
    const int64_t step = a.size() == 3 ? a[2] : 1;
    if (step == 0) throw TemplateError("range() arg 3 must not be zero");
    List out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      out.push_back(Value::Int(i));
      budget_.CheckValueSize(out.size(), 0);
      if (i > INT64_MAX - std::abs(step) || i < INT64_MIN + std::abs(step)) break;
    }
    return Value::MakeList(std::move(out));
  }

  // --- statements ---

  Flow Exec(const Body& body, std::string& out) {
    for (const auto& stmt : body) {
      const Flow flow = Exec(*stmt, out);
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  Flow Exec(const Stmt& s, std::string& out) {
    budget_.Step(s.line);
    switch (s.kind) {
      case StmtKind::kText:
        Append(out, s.text, s.line);
        return Flow::kNormal;
      case StmtKind::kOutput:
        Append(out, ToStr(Eval(*s.expr)), s.line);
        return Flow::kNormal;
      case StmtKind::kIf:
        for (const auto& [condition, body] : s.branches) {
          if (Truthy(Eval(*condition))) return Exec(body, out);
        }
        return Exec(s.else_body, out);
      case StmtKind::kFor:
        ExecFor(s, out);
        return Flow::kNormal;
      case StmtKind::kSet:
        ExecSet(s, Eval(*s.expr));
        return Flow::kNormal;
      case StmtKind::kSetBlock: {
        std::string captured;
        Exec(s.body, captured);
        Assign(s.targets[0], Value::String(std::move(captured)));
        return Flow::kNormal;
      }
      case StmtKind::kMacro:
        DefineMacro(s);
        return Flow::kNormal;
      case StmtKind::kBreak:
        return Flow::kBreak;
      case StmtKind::kContinue:
        return Flow::kContinue;
      case StmtKind::kBlock:
        return Exec(s.body, out);
    }
    return Flow::kNormal;
  }

  void Append(std::string& out, const std::string& text, int line) {
    budget_.CheckOutputSize(out.size() + text.size(), line);
    out += text;
  }

  void Assign(const std::string& name, Value v) { scopes_.back()[name] = std::move(v); }

  void AssignTargets(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      Assign(targets[0], v);
      return;
    }
    const List items = Iterate(v, line);
    if (items.size() != targets.size()) {
      throw TemplateError("cannot unpack " + std::to_string(items.size()) + " values into " +
                              std::to_string(targets.size()) + " names",
                          line);
    }
    for (size_t i = 0; i < targets.size(); ++i) Assign(targets[i], items[i]);
  }

  void ExecSet(const Stmt& s, const Value& v) {
    if (s.attribute.empty()) {
      AssignTargets(s.targets, v, s.line);
      return;
    }
    const Value ns = Lookup(s.targets[0]);
    if (ns.kind != Kind::kDict || !ns.dict->is_namespace) {
      throw TemplateError("cannot assign attribute on non-namespace object '" + s.targets[0] + "'",
                          s.line);
    }
    if (ContainsNamespace(budget_.Charge(v, s.line))) {
      throw TemplateError("assigning a namespace into a namespace is not supported", s.line);
    }
    if (v.nesting + 1 > kMaxValueNesting) {
      throw TemplateError("render limit exceeded: lists and dicts nested more than " +
                              std::to_string(kMaxValueNesting) + " deep",
                          s.line);
    }
    ns.dict->Set(s.attribute, v);
  }

  void ExecFor(const Stmt& s, std::string& out) {
    List items = Iterate(budget_.Charge(Eval(*s.expr), s.line), s.line);
    if (s.filter) {
      List kept;
      for (const Value& item : items) {
        budget_.Step(s.line);
        ScopeGuard scope(this);
        AssignTargets(s.targets, item, s.line);
        if (Truthy(Eval(*s.filter))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      Exec(s.else_body, out);
      return;
    }
    for (size_t i = 0; i < items.size(); ++i) {
      budget_.Step(s.line);
      ScopeGuard scope(this);
      AssignTargets(s.targets, items[i], s.line);
      Assign("loop", LoopObject(items, i));
      if (Exec(s.body, out) == Flow::kBreak) break;
    }
  }

  static Value LoopObject(const List& items, size_t i) {
    const int64_t n = static_cast<int64_t>(items.size()), index = static_cast<int64_t>(i);
    Value loop = Value::MakeDict();
    Dict& d = *loop.dict;
    d.Set("index", Value::Int(index + 1));
    d.Set("index0", Value::Int(index));
    d.Set("revindex", Value::Int(n - index));
    d.Set("revindex0", Value::Int(n - index - 1));
    d.Set("first", Value::Bool(i == 0));
    d.Set("last", Value::Bool(index == n - 1));
    d.Set("length", Value::Int(n));
    d.Set("depth", Value::Int(1));
    d.Set("depth0", Value::Int(0));
    if (i > 0) d.Set("previtem", items[i - 1]);
    if (index + 1 < n) d.Set("nextitem", items[i + 1]);
    d.Set("cycle", Value::Function([index](const CallArgs& args) {
            if (args.positional.empty()) throw TemplateError("no items for cycling given");
            return args.positional[static_cast<size_t>(index) % args.positional.size()];
          }));
    return loop;
  }

  void DefineMacro(const Stmt& s) {
    const Stmt* macro = &s;
    Assign(s.text, Value::Function(
                       [this, macro](const CallArgs& args) { return CallMacro(*macro, args); }));
  }

  Value CallMacro(const Stmt& macro, const CallArgs& args) {
    if (args.positional.size() > macro.targets.size()) {
      throw TemplateError("macro '" + macro.text + "' takes not more than " +
                              std::to_string(macro.targets.size()) + " argument(s)",
                          macro.line);
    }
    DepthGuard depth(this, macro.line);
    ScopeGuard scope(this);
    for (size_t i = 0; i < macro.targets.size(); ++i) {
      Value v = i < args.positional.size() ? args.positional[i] : Value();
      for (const auto& [k, kv] : args.keyword) {
        if (k == macro.targets[i]) v = kv;
      }
      if (v.IsUndefined() && i >= args.positional.size() && macro.defaults[i])
        v = Eval(*macro.defaults[i]);
      Assign(macro.targets[i], v);
    }
    std::string out;
    Exec(macro.body, out);
    return Value::String(std::move(out));
  }

  // --- expressions ---

  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    return Value();
  }

  Value Eval(const Expr& e) {
    budget_.Step(e.line);
    switch (e.kind) {
      case ExprKind::kLiteral:
        return e.value;
      case ExprKind::kName:
        return Lookup(e.name);
      case ExprKind::kList: {
        List items;
        for (const auto& child : e.children) items.push_back(Eval(*child));
        return budget_.Charge(Value::MakeList(std::move(items)), e.line);
      }
      case ExprKind::kDict: {
        Value d = Value::MakeDict();
        for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
          const Value key = Eval(*e.children[i]);
          if (key.kind != Kind::kString)
            throw TemplateError("dict keys must be strings here", e.line);
          d.dict->Set(key.text, Eval(*e.children[i + 1]));
        }
        UpdateNesting(d);
        return budget_.Charge(d, e.line);
      }
      case ExprKind::kAttr:
        return Attribute(Eval(*e.children[0]), e.name, e.line);
      case ExprKind::kItem: {
        const Value target = Eval(*e.children[0]);
        if (target.kind == Kind::kString) budget_.Step(e.line, target.text.size() / 64);
        return GetItem(target, Eval(*e.children[1]), e.line);
      }
      case ExprKind::kSlice: {
        auto part = [&](size_t i) { return e.children[i] ? Eval(*e.children[i]) : Value::None(); };
        const Value target = budget_.Charge(Eval(*e.children[0]), e.line);
        return Slice(target, part(1), part(2), part(3), e.line);
      }
      case ExprKind::kCall:
        return EvalCall(e);
      case ExprKind::kFilter: {
        const Value target = budget_.Charge(Eval(*e.children[0]), e.line);
        return budget_.Charge(ApplyFilter(e.name, target, Arguments(e, 1), budget_, e.line),
                              e.line);
      }
      case ExprKind::kTest:
        return Value::Bool(ApplyTest(e.name, Eval(*e.children[0]), Arguments(e, 1), e.line) !=
                           e.negated);
      case ExprKind::kNeg:
        return Negate(Eval(*e.children[0]), e.line);
      case ExprKind::kPos: {
        Value v = Eval(*e.children[0]);
        if (!v.IsNumber()) throw TemplateError("bad operand type for unary +", e.line);
        return v;
      }
      case ExprKind::kNot:
        return Value::Bool(!Truthy(Eval(*e.children[0])));
      case ExprKind::kAnd: {
        Value left = Eval(*e.children[0]);
        return Truthy(left) ? Eval(*e.children[1]) : left;
      }
      case ExprKind::kOr: {
        Value left = Eval(*e.children[0]);
        return Truthy(left) ? left : Eval(*e.children[1]);
      }
      case ExprKind::kBinary: {
        const Value a = Eval(*e.children[0]), b = Eval(*e.children[1]);
        budget_.Charge(a, e.line);
        budget_.Charge(b, e.line);
        return budget_.Charge(BinaryOp(e.name, a, b, e.line), e.line);
      }
      case ExprKind::kCompare: {
        Value left = budget_.Charge(Eval(*e.children[0]), e.line);
        for (size_t i = 1; i < e.children.size(); ++i) {
          Value right = budget_.Charge(Eval(*e.children[i]), e.line);
          if (!Compare(e.keyword_names[i - 1], left, right, e.line)) return Value::Bool(false);
          left = std::move(right);
        }
        return Value::Bool(true);
      }
      case ExprKind::kCondition:
        if (Truthy(Eval(*e.children[0]))) return Eval(*e.children[1]);
        return e.children[2] ? Eval(*e.children[2]) : Value();
    }
    return Value();
  }

  Value Attribute(const Value& target, const std::string& name, int line) {
    if (target.IsUndefined()) throw TemplateError("'" + name + "' of an undefined value", line);
    return GetAttribute(target, name);
  }

  CallArgs Arguments(const Expr& e, size_t first) {
    CallArgs args;
    const size_t keyword_start = e.children.size() - e.keyword_names.size();
    for (size_t i = first; i < e.children.size(); ++i) {
      Value v = Eval(*e.children[i]);
      if (i < keyword_start) {
        args.positional.push_back(std::move(v));
      } else {
        args.keyword.emplace_back(e.keyword_names[i - keyword_start], std::move(v));
      }
    }
    return args;
  }

  Value EvalCall(const Expr& e) {
    const Expr& callee = *e.children[0];
    if (callee.kind == ExprKind::kAttr) {
      const Value receiver = Eval(*callee.children[0]);
      if (receiver.IsUndefined())
        throw TemplateError("'" + callee.name + "' of an undefined value", e.line);
      const Value member = GetAttribute(receiver, callee.name);
      if (member.kind != Kind::kCallable) {
        const CallArgs args = Arguments(e, 1);
        budget_.Charge(receiver, e.line);
        if (auto result = CallMethod(receiver, callee.name, args, budget_, e.line)) {
          return budget_.Charge(*result, e.line);
        }
        throw TemplateError("'" + std::string(KindName(receiver.kind)) +
                                "' object has no method '" + callee.name + "'",
                            e.line);
      }
      return Invoke(member, Arguments(e, 1), e.line);
    }
    const Value fn = Eval(callee);
    if (fn.kind != Kind::kCallable) {
      const std::string what =
          callee.kind == ExprKind::kName ? "'" + callee.name + "'" : "the value";
      throw TemplateError(what + (fn.IsUndefined() ? " is undefined" : " is not callable"), e.line);
    }
    return Invoke(fn, Arguments(e, 1), e.line);
  }

  Value Invoke(const Value& fn, const CallArgs& args, int line) {
    try {
      return (*fn.callable)(args);
    } catch (TemplateError& error) {
      if (error.line == 0) error.line = line;
      throw;
    }
  }

  Value Negate(const Value& v, int line) {
    if (v.kind == Kind::kFloat) return Value::Float(-v.real);
    if (IsIntLike(v)) {
      if (IntOf(v) == INT64_MIN) throw TemplateError("integer overflow", line);
      return Value::Int(-IntOf(v));
    }
    throw TemplateError("bad operand type for unary -: '" + std::string(KindName(v.kind)) + "'",
                        line);
  }

  [[noreturn]] static void Unsupported(const std::string& op, const Value& a, const Value& b,
                                       int line) {
    if (a.IsUndefined() || b.IsUndefined())
      throw TemplateError("'" + op + "' with an undefined value", line);
    throw TemplateError("unsupported operand type(s) for " + op + ": '" +
                            std::string(KindName(a.kind)) + "' and '" +
                            std::string(KindName(b.kind)) + "'",
                        line);
  }

  Value Repeat(const Value& seq, int64_t times, int line) {
    const size_t n = times > 0 ? static_cast<size_t>(times) : 0;
    const size_t unit = seq.kind == Kind::kString ? seq.text.size() : seq.list->size();
    if (unit != 0 && n > budget_.limits().max_value_bytes / unit)
      budget_.CheckValueSize(SIZE_MAX, line);
    if (seq.kind == Kind::kString) {
      std::string out;
      for (size_t i = 0; i < n; ++i) out += seq.text;
      return Value::String(std::move(out));
    }
    List out;
    for (size_t i = 0; i < n; ++i) out.insert(out.end(), seq.list->begin(), seq.list->end());
    return Value::MakeList(std::move(out));
  }

  Value BinaryOp(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "~") {
      std::string out = ToStr(a) + ToStr(b);
      budget_.CheckValueSize(out.size(), line);
      return Value::String(std::move(out));
    }
    const bool ints = IsIntLike(a) && IsIntLike(b);
    const bool numbers = a.IsNumber() && b.IsNumber();
    int64_t r = 0;
    if (op == "+") {
      if (ints) {
        if (!CheckedAdd(IntOf(a), IntOf(b), r)) throw TemplateError("integer overflow", line);
        return Value::Int(r);
      }
      if (numbers) return Value::Float(a.AsDouble() + b.AsDouble());
      if (a.kind == Kind::kString && b.kind == Kind::kString) {
        budget_.CheckValueSize(a.text.size() + b.text.size(), line);
        return Value::String(a.text + b.text);
      }
      if (a.kind == Kind::kList && b.kind == Kind::kList) {
        budget_.CheckValueSize(a.list->size() + b.list->size(), line);
        List out = *a.list;
        out.insert(out.end(), b.list->begin(), b.list->end());
        return Value::MakeList(std::move(out));
      }
      Unsupported(op, a, b, line);
    }
    if (op == "-") {
      if (ints) {
        if (!CheckedSub(IntOf(a), IntOf(b), r)) throw TemplateError("integer overflow", line);
        return Value::Int(r);
      }
      if (numbers) return Value::Float(a.AsDouble() - b.AsDouble());
      Unsupported(op, a, b, line);
    }
    if (op == "*") {
      if (ints) {
        if (!CheckedMul(IntOf(a), IntOf(b), r)) throw TemplateError("integer overflow", line);
        return Value::Int(r);
      }
      if (numbers) return Value::Float(a.AsDouble() * b.AsDouble());
      if ((a.kind == Kind::kString || a.kind == Kind::kList) && IsIntLike(b))
        return Repeat(a, IntOf(b), line);
      if ((b.kind == Kind::kString || b.kind == Kind::kList) && IsIntLike(a))
        return Repeat(b, IntOf(a), line);
      Unsupported(op, a, b, line);
    }
    if (!numbers) Unsupported(op, a, b, line);
    if (op == "/") {
      if (b.AsDouble() == 0) throw TemplateError("division by zero", line);
      return Value::Float(a.AsDouble() / b.AsDouble());
    }
    if (op == "//" || op == "%") {
      if (b.AsDouble() == 0) throw TemplateError("integer division or modulo by zero", line);
      if (ints) {
        const int64_t x = IntOf(a), y = IntOf(b);
        if (x == INT64_MIN && y == -1) throw TemplateError("integer overflow", line);
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        return Value::Int(op == "//" ? q : m);
      }
      const double x = a.AsDouble(), y = b.AsDouble();
      const double m = std::fmod(x, y);
      const double mod = (m != 0 && ((m < 0) != (y < 0))) ? m + y : m;
      return Value::Float(op == "//" ? std::floor(x / y) : mod);
    }
    if (op == "**") {
      if (ints && IntOf(b) >= 0) {
        int64_t result = 1;
        for (int64_t i = 0; i < IntOf(b); ++i) {
          if (!CheckedMul(result, IntOf(a), result)) throw TemplateError("integer overflow", line);
          if (result == 0 || result == 1) break;
          budget_.Step(line);
        }
        if (result == 1 && IntOf(a) == -1 && IntOf(b) % 2 == 1) result = -1;
        return Value::Int(result);
      }
      return Value::Float(std::pow(a.AsDouble(), b.AsDouble()));
    }
    Unsupported(op, a, b, line);
  }

  bool Contains(const Value& container, const Value& item, int line) {
    switch (container.kind) {
      case Kind::kString:
        if (item.kind != Kind::kString) {
          throw TemplateError("'in <string>' requires string as left operand, not " +
                                  std::string(KindName(item.kind)),
                              line);
        }
        return container.text.find(item.text) != std::string::npos;
      case Kind::kList:
        for (const Value& v : *container.list) {
          if (Equal(v, item)) return true;
        }
        return false;
      case Kind::kDict:
        return item.kind == Kind::kString && container.dict->Find(item.text) != nullptr;
      case Kind::kUndefined:
        return false;
      default:
        throw TemplateError(
            "argument of type '" + std::string(KindName(container.kind)) + "' is not iterable",
            line);
    }
  }

  bool Compare(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "==") return Equal(a, b);
    if (op == "!=") return !Equal(a, b);
    if (op == "in") return Contains(b, a, line);
    if (op == "not in") return !Contains(b, a, line);
    try {
      if (op == "<") return Less(a, b);
      if (op == ">") return Less(b, a);
      if (op == "<=") return !Less(b, a);
      if (op == ">=") return !Less(a, b);
    } catch (TemplateError& error) {
      error.line = line;
      throw;
    }
    throw TemplateError("unknown comparison '" + op + "'", line);
  }

  struct ScopeGuard {
    explicit ScopeGuard(Evaluator* e) : evaluator(e) { evaluator->scopes_.emplace_back(); }
    ~ScopeGuard() { evaluator->scopes_.pop_back(); }
    Evaluator* evaluator;
  };

  struct DepthGuard {
    DepthGuard(Evaluator* e, int line) : evaluator(e) {
      if (++evaluator->call_depth_ > evaluator->budget_.limits().max_call_depth) {
        throw TemplateError("render limit exceeded: macro calls nested more than " +
                                std::to_string(evaluator->budget_.limits().max_call_depth) +
                                " deep (max_call_depth)",
                            line);
      }
    }
    ~DepthGuard() { --evaluator->call_depth_; }
    Evaluator* evaluator;
  };

  Budget budget_;
  std::vector<std::unordered_map<std::string, Value>> scopes_;
  size_t call_depth_ = 0;
};

}  // namespace

std::string Render(const Template& tmpl, const Dict& globals, const RenderLimits& limits) {
  return Evaluator(globals, limits).Run(tmpl);
}

}  // namespace gqa::chat::internal
