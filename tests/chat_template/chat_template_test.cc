// The interpreter construct by construct (expected strings are jinja2's, as transformers
// configures it), its limits, and its refusals naming the construct and line.
#include "chat_template/chat_template.h"

#include "gtest/gtest.h"

namespace gqa::chat {
namespace {

std::string RenderOr(std::string_view source, const ChatRenderInput& input = {},
                     const RenderLimits& limits = {}) {
  absl::StatusOr<ChatTemplate> compiled = ChatTemplate::Compile(source);
  if (!compiled.ok()) return "COMPILE: " + std::string(compiled.status().message());
  absl::StatusOr<std::string> out = compiled->Render(input, limits);
  if (!out.ok()) return "RENDER: " + std::string(out.status().message());
  return *out;
}

ChatRenderInput Conversation() {
  ChatRenderInput input;
  input.messages = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  input.bos_token = "<s>";
  input.eos_token = "</s>";
  return input;
}

TEST(ChatTemplateTest, TextAndOutput) {
  EXPECT_EQ(RenderOr("plain"), "plain");
  EXPECT_EQ(RenderOr("{{ 'a' + 'b' }}{{ 1 + 2 }}{{ none }}{{ true }}{{ 2.50 }}"), "ab3NoneTrue2.5");
  EXPECT_EQ(RenderOr("{{ bos_token }}x{{ eos_token }}", Conversation()), "<s>x</s>");
  EXPECT_EQ(RenderOr("a\n"), "a");  // jinja2 drops one trailing newline
  EXPECT_EQ(RenderOr("a\r\nb"), "a\nb");
}

TEST(ChatTemplateTest, WhitespaceControl) {
  EXPECT_EQ(RenderOr("a  {{- 'b' -}}  \n c"), "abc");
  EXPECT_EQ(RenderOr("{% if true %}\nx\n{% endif %}\ny"), "x\ny");  // trim_blocks
  EXPECT_EQ(RenderOr("  {% if true %}x{% endif %}"), "x");          // lstrip_blocks
  EXPECT_EQ(RenderOr("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(RenderOr("{% if true +%}\nx{% endif %}"), "\nx");
  EXPECT_EQ(RenderOr("a {# note #}\nb"), "a b");
  EXPECT_EQ(RenderOr("  {{ 'v' }}"), "  v");  // not for {{ }}
}

TEST(ChatTemplateTest, ForLoopVariables) {
  EXPECT_EQ(RenderOr("{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                     "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
                     Conversation()),
            "104TrueFalse4;213FalseFalse4;322FalseFalse4;431FalseTrue4;");
  EXPECT_EQ(RenderOr("{% for m in messages %}{{ loop.previtem.role if loop.previtem is defined }}"
                     "{% endfor %}",
                     Conversation()),
            "systemuserassistant");
  EXPECT_EQ(RenderOr("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(RenderOr("{% for x in [1,2,3,4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}"),
            "2242");
  EXPECT_EQ(RenderOr("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}"
                     "{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  EXPECT_EQ(RenderOr("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}"),
            "a1b2");
}

TEST(ChatTemplateTest, SetScopesAndNamespace) {
  EXPECT_EQ(RenderOr("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(RenderOr("{% set ns = namespace(x=1) %}{% for i in [1,2] %}{% set ns.x = ns.x + i %}"
                     "{% endfor %}{{ ns.x }}"),
            "4");
  EXPECT_EQ(RenderOr("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(RenderOr("{% set t %}in {{ 'block' }}{% endset %}[{{ t }}]"), "[in block]");
  EXPECT_EQ(RenderOr("{% set x = 1 %}{% set x.y = 2 %}"),
            "RENDER: cannot assign attribute on non-namespace object 'x' (line 1)");
}

TEST(ChatTemplateTest, Expressions) {
  EXPECT_EQ(RenderOr("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 8 }} {{ 1e20 }}"),
            "3 -4 2 3.5 256 1e+20");
  EXPECT_EQ(
      RenderOr("{{ 0.0001 }} {{ 0.00001 }} {{ 123456789012345678.0 }} {{ 1.5e-7 }} {{ -2.0 }}"),
      "0.0001 1e-05 1.2345678901234568e+17 1.5e-07 -2.0");
  EXPECT_EQ(RenderOr("{{ 'a' ~ 1 ~ none }} {{ 'ab' * 2 }} {{ [1] + [2] }}"), "a1None abab [1, 2]");
  EXPECT_EQ(RenderOr("{{ 3 > 2 > 1 }} {{ 1 < 3 < 2 }} {{ 'a' in 'cat' }} {{ 3 not in [1] }}"),
            "True False True True");
  EXPECT_EQ(
      RenderOr("{{ 'y' if false }}|{{ 'y' if false else 'n' }}|{{ none or 'd' }}|{{ 0 and 1 }}"),
      "|n|d|0");
  EXPECT_EQ(
      RenderOr("{{ messages[1:3] | map(attribute='role') | join(',') }} {{ messages[-1].content }}"
               " {{ messages[0]['role'] }} {{ 'héllo'[1] }} {{ 'héllo'[::-1] }}",
               Conversation()),
      "user,assistant Bye system é olléh");
  EXPECT_EQ(RenderOr("{{ {'k': [1, 'two', none]} }}"), "{'k': [1, 'two', None]}");
}

TEST(ChatTemplateTest, Tests) {
  EXPECT_EQ(
      RenderOr("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}"
               "{{ {} is mapping }}{{ 3 is odd }}{{ 4 is divisibleby 2 }}{{ x is not defined }}"),
      "FalseTrueTrueTrueTrueTrueTrueTrue");
}

TEST(ChatTemplateTest, Filters) {
  EXPECT_EQ(
      RenderOr("{{ '  a b  ' | trim }}|{{ 'aXb' | lower | upper }}|{{ 'hello world' | capitalize }}"
               "|{{ [1,2] | length }}|{{ x | default('d') }}|{{ [3,4] | first }}{{ [3,4] | last }}"
               "|{{ ['a','b'] | join('-') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 5 | string }}"),
      "a b|AXB|Hello world|2|d|34|a-b|bba|5");
  EXPECT_EQ(RenderOr("{{ {'a': 'é\"', 'b': [1, 2.5, none, true]} | tojson }}"),
            "{\"a\": \"é\\\"\", \"b\": [1, 2.5, null, true]}");
  EXPECT_EQ(RenderOr("{{ {'a': 1} | tojson(indent=2) }}"), "{\n  \"a\": 1\n}");
  EXPECT_EQ(RenderOr("{{ {'a': 1} | items | list }}"), "[['a', 1]]");
}

TEST(ChatTemplateTest, StringMethods) {
  EXPECT_EQ(RenderOr("{{ ' x '.strip() }}|{{ 'xxay'.lstrip('x') }}|{{ 'ayy'.rstrip('y') }}"
                     "|{{ 'a b  c'.split() }}|{{ 'a,b'.split(',') }}|{{ 'ab'.startswith('a') }}"
                     "|{{ 'ab'.endswith(('x', 'b')) }}|{{ 'ab'.upper() }}|{{ 'AB'.lower() }}"
                     "|{{ 'ab cd'.title() }}|{{ 'abab'.replace('b', 'c') }}"),
            "x|ay|a|['a', 'b', 'c']|['a', 'b']|True|True|AB|ab|Ab Cd|acac");
}

TEST(ChatTemplateTest, Macros) {
  EXPECT_EQ(
      RenderOr("{% macro m(a, b='d') %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(1, b=2) }}"),
      "[1d][12]");
}

TEST(ChatTemplateTest, RaiseExceptionIsInvalidArgumentWithItsMessage) {
  absl::StatusOr<ChatTemplate> t =
      ChatTemplate::Compile("{{ raise_exception('Roles must alternate') }}");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::string> out = t->Render({});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out.status().message(), "Roles must alternate");
}

TEST(ChatTemplateTest, StrftimeNow) {
  EXPECT_EQ(RenderOr("{{ strftime_now('%Y') | length }}"), "4");
}

TEST(ChatTemplateTest, RefusesWhatItCannotRenderNamingConstructAndLine) {
  EXPECT_EQ(RenderOr("a\n{% include 'x' %}"),
            "COMPILE: the '{% include %}' statement is not supported (line 2)");
  EXPECT_EQ(RenderOr("{{ x | wordwrap }}"),
            "COMPILE: the filter 'wordwrap' is not supported (line 1)");
  EXPECT_EQ(RenderOr("\n\n{{ x is sameas_nope }}"),
            "COMPILE: the test 'sameas_nope' is not supported (line 3)");
  EXPECT_EQ(RenderOr("{{ 'x'.format(1) }}"),
            "COMPILE: the method '.format()' is not supported (line 1)");
  EXPECT_EQ(RenderOr("{% for x in y recursive %}{% endfor %}"),
            "COMPILE: recursive for loops are not supported (line 1)");
  EXPECT_EQ(RenderOr("{% frobnicate %}"), "COMPILE: unknown tag 'frobnicate' (line 1)");
  EXPECT_EQ(RenderOr("{% if x %}"),
            "COMPILE: unexpected end of template, expected 'elif' (line 1)");
  EXPECT_EQ(RenderOr("{{ 'abc }}"), "COMPILE: unterminated string literal (line 1)");
  EXPECT_EQ(RenderOr("{# open"), "COMPILE: Missing end of comment tag (line 1)");
  EXPECT_EQ(RenderOr("{{ 99999999999999999999 }}"),
            "COMPILE: integer literal out of range (line 1)");
  EXPECT_EQ(RenderOr("{{ x.99999999999999999999 }}"),  // found by fuzz_chat_template
            "COMPILE: integer literal out of range (line 1)");
}

TEST(ChatTemplateTest, ErrorsAtRenderNameTheLine) {
  EXPECT_EQ(RenderOr("\n{{ x.y }}"), "RENDER: 'y' of an undefined value (line 2)");
  EXPECT_EQ(RenderOr("{{ 1 + 'a' }}"),
            "RENDER: unsupported operand type(s) for +: 'int' and 'str' (line 1)");
  EXPECT_EQ(RenderOr("{{ 1 // 0 }}"), "RENDER: integer division or modulo by zero (line 1)");
}

TEST(ChatTemplateTest, StepLimit) {
  RenderLimits limits;
  limits.max_steps = 1000;
  EXPECT_EQ(RenderOr("{% for i in range(10000) %}{% endfor %}", {}, limits)
                .rfind("RENDER: render limit exceeded", 0),
            0u);
  EXPECT_EQ(RenderOr("{% for i in range(3) %}{% endfor %}ok", {}, limits), "ok");
}

TEST(ChatTemplateTest, OutputLimit) {
  RenderLimits limits;
  limits.max_output_bytes = 100;
  EXPECT_EQ(
      RenderOr("{% for i in range(100) %}xx{% endfor %}", {}, limits),
      "RENDER: render limit exceeded: output of more than 100 bytes (max_output_bytes) (line 1)");
}

TEST(ChatTemplateTest, ValueLimit) {
  RenderLimits limits;
  limits.max_value_bytes = 1000;
  EXPECT_NE(RenderOr("{{ 'x' * 100000 }}", {}, limits).find("max_value_bytes"), std::string::npos);
  EXPECT_NE(
      RenderOr("{% set ns = namespace(s='x') %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}"
               "{% endfor %}",
               {}, limits)
          .find("max_value_bytes"),
      std::string::npos);
  EXPECT_NE(RenderOr("{{ range(100000) | length }}", {}, limits).find("max_value_bytes"),
            std::string::npos);
}

TEST(ChatTemplateTest, CallDepthLimit) {
  EXPECT_NE(
      RenderOr("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("max_call_depth"),
      std::string::npos);
}

TEST(ChatTemplateTest, NestingLimits) {
  std::string deep_parens(500, '(');
  EXPECT_NE(
      RenderOr("{{ " + deep_parens + "1" + std::string(500, ')') + " }}").find("nested too deeply"),
      std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_NE(RenderOr(chain + " }}").find("nested too deeply"), std::string::npos);
  EXPECT_NE(
      RenderOr("{% set ns = namespace(x=[]) %}{% for i in range(200) %}{% set ns.x = [ns.x] %}"
               "{% endfor %}")
          .find("nested more than"),
      std::string::npos);
  std::string blocks;
  for (int i = 0; i < 300; ++i) blocks += "{% if true %}";
  EXPECT_NE(RenderOr(blocks).find("nested too deeply"), std::string::npos);
}

TEST(ChatTemplateTest, ManyMessagesRenderWithinDefaultLimits) {
  ChatRenderInput input;
  for (int i = 0; i < 10000; ++i)
    input.messages.push_back({i % 2 ? "assistant" : "user", "message"});
  const std::string out = RenderOr(
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
      input);
  EXPECT_EQ(out.size(),
            10000u * std::string("<|im_start|>user\nmessage<|im_end|>\n").size() + 10000u / 2 * 5);
}

}  // namespace
}  // namespace gqa::chat
