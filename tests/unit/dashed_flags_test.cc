#include "common/dashed_flags.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/flags/flag.h"

ABSL_FLAG(int, test_max_new_tokens, 0, "a flag for the test");
ABSL_FLAG(bool, test_ignore_eos, false, "a boolean flag for the test");

namespace gqa {
namespace {

std::vector<std::string> Rewrite(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  AcceptDashedFlags(static_cast<int>(argv.size()), argv.data());
  return args;
}

TEST(DashedFlagsTest, DefinedFlagsAcceptDashesAndNothingElseChanges) {
  EXPECT_EQ(
      Rewrite({"prog", "--test-max-new-tokens=5", "--test-max-new-tokens", "7",
               "--notest-ignore-eos", "--test_ignore_eos", "--not-a-flag=x-y", "pos-arg", "--text",
               "--", "--test-max-new-tokens=1"}),
      (std::vector<std::string>{"prog", "--test_max_new_tokens=5", "--test_max_new_tokens", "7",
                                "--notest_ignore_eos", "--test_ignore_eos", "--not-a-flag=x-y",
                                "pos-arg", "--text", "--", "--test-max-new-tokens=1"}));
}

}  // namespace
}  // namespace gqa
