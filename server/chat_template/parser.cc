// A recursive-descent parser for jinja2's statements and expressions, with jinja2's
// precedence: condition < or < and < not < comparison < + - < ~ < * / // % < ** < unary, then
// postfix (.attr [item] (call)) and filters/tests on the unary operand.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <set>
#include <string_view>

#include "chat_template/ast.h"
#include "chat_template/lexer.h"

namespace gqa::chat::internal {
namespace {

constexpr int kMaxNesting = 100;    // nested expressions and blocks: bounds the parser's stack
constexpr int kMaxExprDepth = 200;  // the depth of one expression tree (left-deep chains too)

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  std::unique_ptr<Template> Run() {
    auto tmpl = std::make_unique<Template>();
    std::string end_tag;
    tmpl->body = ParseBody({}, end_tag);
    return tmpl;
  }

 private:
  // --- statements ---

  // Statements until a block tag named in `ends` (its name is stored in `found`, the block begin
  // and name consumed) or the end of input (only when `ends` is empty).
  Body ParseBody(const std::set<std::string>& ends, std::string& found) {
    Nest nest(this);
    Body body;
    while (true) {
      const Token& token = Peek();
      if (token.kind == TokenKind::kEnd) {
        if (!ends.empty()) {
          throw TemplateError("unexpected end of template, expected '" + *ends.begin() + "'",
                              token.line);
        }
        return body;
      }
      if (token.kind == TokenKind::kData) {
        body.push_back(MakeStmt(StmtKind::kText, token.line));
        body.back()->text = Next().text;
      } else if (token.kind == TokenKind::kVarBegin) {
        Next();
        auto stmt = MakeStmt(StmtKind::kOutput, token.line);
        stmt->expr = ParseExpression();
        Expect(TokenKind::kVarEnd, "end of print statement");
        body.push_back(std::move(stmt));
      } else {
        Next();  // {%
        const Token& name = Expect(TokenKind::kName, "a statement name");
        if (ends.count(name.text)) {
          found = name.text;
          return body;
        }
        body.push_back(ParseStatement(name));
      }
    }
  }

  std::unique_ptr<Stmt> ParseStatement(const Token& name) {
    const std::string& n = name.text;
    if (n == "if") return ParseIf(name.line);
    if (n == "for") return ParseFor(name.line);
    if (n == "set") return ParseSet(name.line);
    if (n == "macro") return ParseMacro(name.line);
    if (n == "break" || n == "continue") {
      EndBlock();
      return MakeStmt(n == "break" ? StmtKind::kBreak : StmtKind::kContinue, name.line);
    }
    if (n == "generation") {
      EndBlock();
      auto stmt = MakeStmt(StmtKind::kBlock, name.line);
      std::string found;
      stmt->body = ParseBody({"endgeneration"}, found);
      EndBlock();
      return stmt;
    }
    static const std::set<std::string> kKnownUnsupported = {
        "raw",     "call",  "filter", "include", "import",     "from",
        "extends", "block", "with",   "do",      "autoescape", "trans"};
    if (kKnownUnsupported.count(n)) {
      throw TemplateError("the '{% " + n + " %}' statement is not supported", name.line);
    }
    throw TemplateError("unknown tag '" + n + "'", name.line);
  }

  std::unique_ptr<Stmt> ParseIf(int line) {
    auto stmt = MakeStmt(StmtKind::kIf, line);
    auto condition = ParseExpression();
    EndBlock();
    while (true) {
      std::string found;
      Body body = ParseBody({"elif", "else", "endif"}, found);
      stmt->branches.emplace_back(std::move(condition), std::move(body));
      if (found == "elif") {
        condition = ParseExpression();
        EndBlock();
        continue;
      }
      EndBlock();
      if (found == "else") {
        stmt->else_body = ParseBody({"endif"}, found);
        EndBlock();
      }
      return stmt;
    }
  }

  std::unique_ptr<Stmt> ParseFor(int line) {
    auto stmt = MakeStmt(StmtKind::kFor, line);
    stmt->targets = ParseTargets();
    ExpectName("in");
    stmt->expr = ParseOr(/*allow_condition=*/false);
    if (PeekName("if")) {
      Next();
      stmt->filter = ParseOr(false);
    }
    if (PeekName("recursive")) throw TemplateError("recursive for loops are not supported", line);
    EndBlock();
    std::string found;
    stmt->body = ParseBody({"else", "endfor"}, found);
    EndBlock();
    if (found == "else") {
      stmt->else_body = ParseBody({"endfor"}, found);
      EndBlock();
    }
    return stmt;
  }

  std::vector<std::string> ParseTargets() {
    std::vector<std::string> names;
    const bool parenthesized = PeekOperator("(");
    if (parenthesized) Next();
    do {
      names.push_back(Expect(TokenKind::kName, "a loop or assignment target").text);
    } while (PeekOperator(",") && (Next(), true));
    if (parenthesized) ExpectOperator(")");
    return names;
  }

  std::unique_ptr<Stmt> ParseSet(int line) {
    auto stmt = MakeStmt(StmtKind::kSet, line);
    stmt->targets = ParseTargets();
    if (PeekOperator(".")) {
      Next();
      if (stmt->targets.size() != 1) throw TemplateError("can't assign to a tuple attribute", line);
      stmt->attribute = Expect(TokenKind::kName, "an attribute name").text;
    }
    if (Peek().kind == TokenKind::kBlockEnd) {
      if (stmt->targets.size() != 1 || !stmt->attribute.empty()) {
        throw TemplateError("a block set assigns one name", line);
      }
      Next();
      stmt->kind = StmtKind::kSetBlock;
      std::string found;
      stmt->body = ParseBody({"endset"}, found);
      EndBlock();
      return stmt;
    }
    ExpectOperator("=");
    stmt->expr = ParseTupleOrExpression();
    EndBlock();
    return stmt;
  }

  std::unique_ptr<Stmt> ParseMacro(int line) {
    auto stmt = MakeStmt(StmtKind::kMacro, line);
    stmt->text = Expect(TokenKind::kName, "a macro name").text;
    ExpectOperator("(");
    while (!PeekOperator(")")) {
      if (!stmt->targets.empty()) ExpectOperator(",");
      stmt->targets.push_back(Expect(TokenKind::kName, "a macro parameter").text);
      if (PeekOperator("=")) {
        Next();
        stmt->defaults.push_back(ParseExpression());
      } else {
        stmt->defaults.push_back(nullptr);
      }
    }
    Next();
    EndBlock();
    std::string found;
    stmt->body = ParseBody({"endmacro"}, found);
    if (Peek().kind == TokenKind::kName) Next();  // {% endmacro name %}
    EndBlock();
    return stmt;
  }

  // --- expressions ---

  std::unique_ptr<Expr> ParseTupleOrExpression() {
    auto first = ParseExpression();
    if (!PeekOperator(",")) return first;
    auto tuple = MakeExpr(ExprKind::kList, first->line);
    tuple->children.push_back(std::move(first));
    while (PeekOperator(",")) {
      Next();
      tuple->children.push_back(ParseExpression());
    }
    return Deepen(std::move(tuple));
  }

  std::unique_ptr<Expr> ParseExpression() { return ParseOr(/*allow_condition=*/true); }

  std::unique_ptr<Expr> ParseOr(bool allow_condition) {
    Nest nest(this);
    auto left = ParseAnd();
    while (PeekName("or")) {
      Next();
      left = Binary(ExprKind::kOr, "or", std::move(left), ParseAnd());
    }
    if (allow_condition && PeekName("if")) {
      const int line = Next().line;
      auto cond = MakeExpr(ExprKind::kCondition, line);
      cond->children.push_back(ParseOr(false));
      cond->children.push_back(std::move(left));
      if (PeekName("else")) {
        Next();
        cond->children.push_back(ParseOr(true));
      } else {
        cond->children.push_back(nullptr);
      }
      return Deepen(std::move(cond));
    }
    return left;
  }

  std::unique_ptr<Expr> ParseAnd() {
    auto left = ParseNot();
    while (PeekName("and")) {
      Next();
      left = Binary(ExprKind::kAnd, "and", std::move(left), ParseNot());
    }
    return left;
  }

  std::unique_ptr<Expr> ParseNot() {
    if (PeekName("not")) {
      Nest nest(this);
      const int line = Next().line;
      auto e = MakeExpr(ExprKind::kNot, line);
      e->children.push_back(ParseNot());
      return Deepen(std::move(e));
    }
    return ParseCompare();
  }

  // a op b [op c ...]: one node, chained as in Python (a < b < c is a < b and b < c).
  std::unique_ptr<Expr> ParseCompare() {
    auto first = ParseArithmetic();
    std::unique_ptr<Expr> chain;
    while (true) {
      std::string op;
      if (Peek().kind == TokenKind::kOperator &&
          std::set<std::string>{"==", "!=", "<", "<=", ">", ">="}.count(Peek().text)) {
        op = Next().text;
      } else if (PeekName("in")) {
        Next();
        op = "in";
      } else if (PeekName("not") && PeekAt(1).kind == TokenKind::kName && PeekAt(1).text == "in") {
        Next();
        Next();
        op = "not in";
      } else {
        return chain ? Deepen(std::move(chain)) : std::move(first);
      }
      if (!chain) {
        chain = MakeExpr(ExprKind::kCompare, first->line);
        chain->children.push_back(std::move(first));
      }
      chain->keyword_names.push_back(op);
      chain->children.push_back(ParseArithmetic());
    }
  }

  // The arithmetic operators by level, loosest first, as Jinja's parser has them (parse_math1,
  // parse_concat, parse_math2, parse_pow): each level is left-associative, and its operands are
  // the next level's expressions (the last level's: unary expressions).
  static constexpr std::array<std::array<std::string_view, 4>, 4> kArithmeticLevels = {{
      {"+", "-"},
      {"~"},
      {"*", "/", "//", "%"},
      {"**"},
  }};

  std::unique_ptr<Expr> ParseArithmetic(size_t level = 0) {
    if (level == kArithmeticLevels.size()) return ParseUnary(true);
    auto left = ParseArithmetic(level + 1);
    while (IsOperatorOf(kArithmeticLevels[level])) {
      const std::string op = Next().text;
      left = Binary(ExprKind::kBinary, op, std::move(left), ParseArithmetic(level + 1));
    }
    return left;
  }

  // Whether the next token is one of `operators` (empty entries match nothing).
  bool IsOperatorOf(const std::array<std::string_view, 4>& operators) const {
    return Peek().kind == TokenKind::kOperator &&
           std::find(operators.begin(), operators.end(), Peek().text) != operators.end() &&
           !Peek().text.empty();
  }

  std::unique_ptr<Expr> ParseUnary(bool with_filter) {
    Nest nest(this);
    std::unique_ptr<Expr> node;
    if (PeekOperator("-") || PeekOperator("+")) {
      const Token& op = Next();
      node = MakeExpr(op.text == "-" ? ExprKind::kNeg : ExprKind::kPos, op.line);
      node->children.push_back(ParseUnary(false));
      node = Deepen(std::move(node));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFiltersAndTests(std::move(node));
    return node;
  }

  std::unique_ptr<Expr> ParsePrimary() {
    const Token& token = Next();
    switch (token.kind) {
      case TokenKind::kName: {
        if (token.text == "true" || token.text == "True")
          return Literal(Value::Bool(true), token.line);
        if (token.text == "false" || token.text == "False")
          return Literal(Value::Bool(false), token.line);
        if (token.text == "none" || token.text == "None") return Literal(Value::None(), token.line);
        auto e = MakeExpr(ExprKind::kName, token.line);
        e->name = token.text;
        return e;
      }
      case TokenKind::kString: {
        std::string text = token.text;
        while (Peek().kind == TokenKind::kString) text += Next().text;  // "a" "b" concatenates
        return Literal(Value::String(std::move(text)), token.line);
      }
      case TokenKind::kInt:
        return IntLiteral(token);
      case TokenKind::kFloat:
        return Literal(Value::Float(std::strtod(token.text.c_str(), nullptr)), token.line);
      case TokenKind::kOperator:
        if (token.text == "(") return ParseParenthesized(token.line);
        if (token.text == "[") return ParseListLiteral(token.line);
        if (token.text == "{") return ParseDictLiteral(token.line);
        [[fallthrough]];
      default:
        throw TemplateError("unexpected " + Describe(token), token.line);
    }
  }

  std::unique_ptr<Expr> ParseParenthesized(int line) {
    if (PeekOperator(")")) {
      Next();
      return MakeExpr(ExprKind::kList, line);  // () is an empty tuple
    }
    auto inner = ParseExpression();
    if (!PeekOperator(",")) {
      ExpectOperator(")");
      return inner;
    }
    auto tuple = MakeExpr(ExprKind::kList, line);
    tuple->children.push_back(std::move(inner));
    while (PeekOperator(",")) {
      Next();
      if (PeekOperator(")")) break;
      tuple->children.push_back(ParseExpression());
    }
    ExpectOperator(")");
    return Deepen(std::move(tuple));
  }

  std::unique_ptr<Expr> ParseListLiteral(int line) {
    auto list = MakeExpr(ExprKind::kList, line);
    while (!PeekOperator("]")) {
      if (!list->children.empty()) ExpectOperator(",");
      if (PeekOperator("]")) break;
      list->children.push_back(ParseExpression());
    }
    Next();
    return Deepen(std::move(list));
  }

  std::unique_ptr<Expr> ParseDictLiteral(int line) {
    auto dict = MakeExpr(ExprKind::kDict, line);
    while (!PeekOperator("}")) {
      if (!dict->children.empty()) ExpectOperator(",");
      if (PeekOperator("}")) break;
      dict->children.push_back(ParseExpression());
      ExpectOperator(":");
      dict->children.push_back(ParseExpression());
    }
    Next();
    return Deepen(std::move(dict));
  }

  std::unique_ptr<Expr> ParsePostfix(std::unique_ptr<Expr> node) {
    while (true) {
      if (PeekOperator(".")) {
        const int line = Next().line;
        const Token& name = Next();
        if (name.kind != TokenKind::kName && name.kind != TokenKind::kInt) {
          throw TemplateError("expected an attribute name after '.'", line);
        }
        auto attr =
            MakeExpr(name.kind == TokenKind::kName ? ExprKind::kAttr : ExprKind::kItem, line);
        attr->name = name.text;
        attr->children.push_back(std::move(node));
        if (name.kind == TokenKind::kInt) attr->children.push_back(IntLiteral(name));
        node = Deepen(std::move(attr));
      } else if (PeekOperator("[")) {
        node = Deepen(ParseSubscript(std::move(node)));
      } else if (PeekOperator("(")) {
        auto call = MakeExpr(ExprKind::kCall, Peek().line);
        call->children.push_back(std::move(node));
        ParseArguments(*call);
        node = Deepen(std::move(call));
      } else {
        return node;
      }
    }
  }

  std::unique_ptr<Expr> ParseSubscript(std::unique_ptr<Expr> node) {
    const int line = Next().line;  // [
    std::unique_ptr<Expr> parts[3];
    int colons = 0;
    while (!PeekOperator("]")) {
      if (PeekOperator(":")) {
        Next();
        if (++colons > 2) throw TemplateError("too many ':' in a slice", line);
        continue;
      }
      if (parts[colons]) throw TemplateError("expected ']' or ':' in a subscript", line);
      parts[colons] = ParseExpression();
    }
    Next();
    auto e = MakeExpr(colons == 0 ? ExprKind::kItem : ExprKind::kSlice, line);
    e->children.push_back(std::move(node));
    if (colons == 0) {
      if (!parts[0]) throw TemplateError("expected an expression in '[]'", line);
      e->children.push_back(std::move(parts[0]));
    } else {
      for (auto& part : parts) e->children.push_back(std::move(part));
    }
    return e;
  }

  // (positional..., name=value...) appended to `call`'s children.
  void ParseArguments(Expr& call) {
    ExpectOperator("(");
    bool first = true;
    while (!PeekOperator(")")) {
      if (!first) ExpectOperator(",");
      first = false;
      if (PeekOperator(")")) break;
      if (Peek().kind == TokenKind::kName && PeekAt(1).kind == TokenKind::kOperator &&
          PeekAt(1).text == "=") {
        call.keyword_names.push_back(Next().text);
        Next();
      } else if (!call.keyword_names.empty()) {
        throw TemplateError("a positional argument after keyword arguments", Peek().line);
      } else if (PeekOperator("*") || PeekOperator("**")) {
        throw TemplateError("'*args' and '**kwargs' in calls are not supported", Peek().line);
      }
      call.children.push_back(ParseExpression());
    }
    Next();
  }

  std::unique_ptr<Expr> ParseFiltersAndTests(std::unique_ptr<Expr> node) {
    while (true) {
      if (PeekOperator("|")) {
        const int line = Next().line;
        auto filter = MakeExpr(ExprKind::kFilter, line);
        filter->name = Expect(TokenKind::kName, "a filter name").text;
        filter->children.push_back(std::move(node));
        if (PeekOperator("(")) ParseArguments(*filter);
        node = Deepen(std::move(filter));
      } else if (PeekName("is")) {
        const int line = Next().line;
        auto test = MakeExpr(ExprKind::kTest, line);
        if (PeekName("not")) {
          Next();
          test->negated = true;
        }
        const Token& name = Next();
        if (name.kind != TokenKind::kName)
          throw TemplateError("expected a test name after 'is'", line);
        test->name = name.text;
        test->children.push_back(std::move(node));
        if (PeekOperator("(")) {
          ParseArguments(*test);
        } else if (StartsTestArgument()) {
          test->children.push_back(ParseUnary(false));  // `is divisibleby 3`, `is sameas none`
        }
        node = Deepen(std::move(test));
      } else if (PeekOperator("(")) {
        auto call = MakeExpr(ExprKind::kCall, Peek().line);
        call->children.push_back(std::move(node));
        ParseArguments(*call);
        node = Deepen(std::move(call));
      } else {
        return node;
      }
    }
  }

  bool StartsTestArgument() const {
    const Token& t = Peek();
    if (t.kind == TokenKind::kString || t.kind == TokenKind::kInt || t.kind == TokenKind::kFloat)
      return true;
    if (t.kind == TokenKind::kOperator) return t.text == "[" || t.text == "{" || t.text == "-";
    if (t.kind != TokenKind::kName) return false;
    static const std::set<std::string> kStop = {"else", "or", "and", "is", "in", "if", "not"};
    return kStop.count(t.text) == 0;
  }

  // --- helpers ---

  struct Nest {
    explicit Nest(Parser* p) : parser(p) {
      if (++parser->depth_ > kMaxNesting) {
        throw TemplateError(
            "template nested too deeply (more than " + std::to_string(kMaxNesting) + " levels)",
            parser->Peek().line);
      }
    }
    ~Nest() { --parser->depth_; }
    Parser* parser;
  };

  static std::unique_ptr<Stmt> MakeStmt(StmtKind kind, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = line;
    return s;
  }
  static std::unique_ptr<Expr> MakeExpr(ExprKind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }
  static std::unique_ptr<Expr> Literal(Value v, int line) {
    auto e = MakeExpr(ExprKind::kLiteral, line);
    e->value = std::move(v);
    return e;
  }
  static std::unique_ptr<Expr> IntLiteral(const Token& token) {
    errno = 0;
    const long long i = std::strtoll(token.text.c_str(), nullptr, 10);
    if (errno == ERANGE) throw TemplateError("integer literal out of range", token.line);
    return Literal(Value::Int(i), token.line);
  }
  static std::unique_ptr<Expr> Binary(ExprKind kind, std::string op, std::unique_ptr<Expr> a,
                                      std::unique_ptr<Expr> b) {
    auto e = MakeExpr(kind, a->line);
    e->name = std::move(op);
    e->children.push_back(std::move(a));
    e->children.push_back(std::move(b));
    return Deepen(std::move(e));
  }
  // Sets e's depth from its children's; a TemplateError past kMaxExprDepth, so that evaluating
  // and freeing the tree cannot exhaust the stack.
  static std::unique_ptr<Expr> Deepen(std::unique_ptr<Expr> e) {
    int depth = 0;
    for (const auto& child : e->children) {
      if (child) depth = std::max(depth, child->depth);
    }
    e->depth = depth + 1;
    if (e->depth > kMaxExprDepth) {
      throw TemplateError(
          "expression nested too deeply (more than " + std::to_string(kMaxExprDepth) + " levels)",
          e->line);
    }
    return e;
  }

  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case TokenKind::kData:
        return "text";
      case TokenKind::kBlockBegin:
        return "'{%'";
      case TokenKind::kBlockEnd:
        return "end of statement block";
      case TokenKind::kVarBegin:
        return "'{{'";
      case TokenKind::kVarEnd:
        return "end of print statement";
      case TokenKind::kEnd:
        return "end of template";
      case TokenKind::kString:
        return "string";
      default:
        return "'" + t.text + "'";
    }
  }

  const Token& Peek() const { return tokens_[pos_]; }
  const Token& PeekAt(size_t ahead) const {
    return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)];
  }
  const Token& Next() {
    const Token& t = tokens_[pos_];
    if (pos_ + 1 < tokens_.size()) ++pos_;
    return t;
  }
  bool PeekName(std::string_view name) const {
    return Peek().kind == TokenKind::kName && Peek().text == name;
  }
  bool PeekOperator(std::string_view op) const {
    return Peek().kind == TokenKind::kOperator && Peek().text == op;
  }
  const Token& Expect(TokenKind kind, const std::string& what) {
    if (Peek().kind != kind)
      throw TemplateError("expected " + what + ", got " + Describe(Peek()), Peek().line);
    return Next();
  }
  void ExpectOperator(const std::string& op) {
    if (!PeekOperator(op))
      throw TemplateError("expected '" + op + "', got " + Describe(Peek()), Peek().line);
    Next();
  }
  void ExpectName(const std::string& name) {
    if (!PeekName(name))
      throw TemplateError("expected '" + name + "', got " + Describe(Peek()), Peek().line);
    Next();
  }
  void EndBlock() { Expect(TokenKind::kBlockEnd, "end of statement block"); }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

std::unique_ptr<Template> ParseTemplate(std::string_view source) {
  return Parser(Lex(source)).Run();
}

}  // namespace gqa::chat::internal
