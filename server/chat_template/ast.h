// The parsed template: statements (text, output, if, for, set, macro, ...) over expressions.
// Every node keeps the line it starts on, for error messages.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "chat_template/value.h"

namespace gqa::chat::internal {

enum class ExprKind {
  kLiteral,   // value
  kName,      // name
  kList,      // children
  kDict,      // children: key, value, key, value, ...
  kAttr,      // children[0].name
  kItem,      // children[0][children[1]]
  kSlice,     // children[0][children[1]:children[2]:children[3]] (null: omitted)
  kCall,      // children[0](children[1..], keyword_names for the trailing keyword arguments)
  kFilter,    // children[0] | name(children[1..])
  kTest,      // children[0] is [not] name(children[1..]); negated
  kNeg,       // -children[0]
  kPos,       // +children[0]
  kNot,       // not children[0]
  kBinary,    // children[0] op children[1]: + - * / // % ** ~
  kAnd,       // children[0] and children[1]
  kOr,        // children[0] or children[1]
  kCompare,   // children[0] op[0] children[1] op[1] ...: ops (== != < <= > >= in, "not in") in
              // keyword_names, chained as in Python
  kCondition  // children[1] if children[0] else children[2] (children[2] null: undefined)
};

struct Expr {
  ExprKind kind;
  int line = 0;
  Value value;
  std::string name;  // name, attribute, filter, test or operator
  std::vector<std::unique_ptr<Expr>> children;
  std::vector<std::string> keyword_names;  // kCall/kFilter/kTest: names of the last arguments
  bool negated = false;
  int depth = 1;  // of the tree below (parser.cc bounds it)
};

enum class StmtKind {
  kText,      // text
  kOutput,    // {{ expr }}
  kIf,        // branches (condition, body); else_body
  kFor,       // for targets in expr [if filter]: body; else_body
  kSet,       // set targets (or target.attribute) = expr
  kSetBlock,  // set target %} body {% endset
  kMacro,     // macro name(params=defaults): body
  kBreak,
  kContinue,
  kBlock  // a body rendered in place ({% generation %})
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;
  std::unique_ptr<Expr> expr;                   // output, for iterable, set value
  std::unique_ptr<Expr> filter;                 // for ... if filter
  std::vector<std::string> targets;             // for/set names; macro parameters
  std::string attribute;                        // set ns.attribute
  std::vector<std::unique_ptr<Expr>> defaults;  // macro parameter defaults (or null)
  std::vector<std::pair<std::unique_ptr<Expr>, Body>> branches;  // if/elif
  Body body, else_body;
};

struct Template {
  Body body;
};

// Parses `source` (jinja2 with trim_blocks and lstrip_blocks); TemplateError naming the
// construct and its line.
std::unique_ptr<Template> ParseTemplate(std::string_view source);

}  // namespace gqa::chat::internal
