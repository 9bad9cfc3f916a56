// The tensor-parallel split against a brute-force reference: every query head, KV head,
// intermediate column and vocabulary row owned as the plan says, for every divisor of the heads.
#include "model/tensor_parallel.h"

#include <gtest/gtest.h>

#include <vector>

namespace gqa {
namespace {

ModelConfig Shape(int heads, int kv_heads, int head_dim = 64, int intermediate = 8192,
                  int vocab = 32003) {
  ModelConfig c;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.hidden_size = heads * head_dim;
  c.intermediate_size = intermediate;
  c.vocab_size = vocab;
  return c;
}

std::vector<TensorParallelShard> PlanAll(const ModelConfig& c, int n) {
  std::vector<TensorParallelShard> shards;
  for (int r = 0; r < n; ++r) {
    auto s = PlanTensorParallelShard(c, r, n);
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) shards.push_back(*s);
  }
  return shards;
}

// Each index of [0, total) lies in exactly one rank's range.
void ExpectPartition(const std::vector<IndexRange>& ranges, int total, const char* what) {
  std::vector<int> owners(total, 0);
  for (const IndexRange& r : ranges) {
    ASSERT_LE(0, r.begin);
    ASSERT_LE(r.begin, r.end);
    ASSERT_LE(r.end, total);
    for (int i = r.begin; i < r.end; ++i) ++owners[i];
  }
  for (int i = 0; i < total; ++i) ASSERT_EQ(owners[i], 1) << what << " " << i;
}

TEST(TensorParallelTest, EveryDivisorOfTheHeadsSplitsEveryShape) {
  for (const int kv : {32, 8, 4, 2, 1}) {  // MHA, GQA and MQA under 32 query heads
    for (const int n : {1, 2, 4, 8, 16, 32}) {
      const ModelConfig c = Shape(32, kv);
      const auto shards = PlanAll(c, n);
      ASSERT_EQ(int(shards.size()), n);
      std::vector<IndexRange> q, inter, vocab;
      std::vector<int> kv_holders(kv, 0);
      for (const TensorParallelShard& s : shards) {
        q.push_back(s.query_heads);
        inter.push_back(s.intermediate);
        vocab.push_back(s.vocab);
        EXPECT_EQ(s.query_heads.size(), 32 / n);
        EXPECT_EQ(s.kv_heads.size(), n <= kv ? kv / n : 1);
        EXPECT_EQ(s.kv_replicas, n <= kv ? 1 : n / kv);
        // The reference: query head h reads KV head h / group; it must be one this rank holds.
        for (int h = s.query_heads.begin; h < s.query_heads.end; ++h) {
          const int needed = h / c.group_size();
          EXPECT_GE(needed, s.kv_heads.begin) << "kv " << kv << " n " << n << " head " << h;
          EXPECT_LT(needed, s.kv_heads.end) << "kv " << kv << " n " << n << " head " << h;
        }
        for (int k = s.kv_heads.begin; k < s.kv_heads.end; ++k) ++kv_holders[k];
        EXPECT_EQ(s.query_rows(c).size(), s.query_heads.size() * c.head_dim);
        EXPECT_EQ(s.kv_rows(c).begin, s.kv_heads.begin * c.head_dim);
      }
      ExpectPartition(q, 32, "query head");
      ExpectPartition(inter, c.intermediate_size, "intermediate column");
      ExpectPartition(vocab, c.vocab_size, "vocabulary row");
      for (int k = 0; k < kv; ++k) {
        EXPECT_EQ(kv_holders[k], n <= kv ? 1 : n / kv) << "kv " << kv << " n " << n;
      }
    }
  }
}

TEST(TensorParallelTest, TheKvPoolOfEachRankShrinksUntilHeadsReplicate) {
  // Per-rank KV heads (what sizes each rank's pool): 8 KV heads over 1, 2, 4, 8, 16 ranks.
  const ModelConfig c = Shape(32, 8);
  const std::vector<int> expected = {8, 4, 2, 1, 1};
  const std::vector<int> sizes = {1, 2, 4, 8, 16};
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(PlanTensorParallelShard(c, 0, sizes[i])->kv_heads.size(), expected[i]);
  }
}

TEST(TensorParallelTest, TheVocabularyIsSplitInCeilingParts) {
  const ModelConfig c = Shape(32, 8, 64, 8192, 10);
  const auto shards = PlanAll(c, 4);  // 3 + 3 + 3 + 1
  ASSERT_EQ(shards.size(), 4u);
  EXPECT_EQ(shards[0].vocab, (IndexRange{0, 3}));
  EXPECT_EQ(shards[3].vocab, (IndexRange{9, 10}));
  const auto tiny = PlanAll(Shape(32, 8, 64, 8192, 2), 4);  // ranks past the vocabulary: empty
  EXPECT_EQ(tiny[3].vocab.size(), 0);
}

TEST(TensorParallelTest, RefusalsNameTheFieldAndTheValues) {
  auto refused = [](const ModelConfig& c, int n) {
    const absl::Status s = CheckTensorParallelSize(c, n);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << n;
    return std::string(s.message());
  };
  EXPECT_NE(refused(Shape(32, 8), 3).find("does not divide num_attention_heads 32"),
            std::string::npos);
  EXPECT_NE(refused(Shape(24, 6), 4).find("num_key_value_heads 6"), std::string::npos);
  EXPECT_NE(refused(Shape(32, 8, 64, 1000), 16).find("intermediate_size 1000"), std::string::npos);
  EXPECT_NE(refused(Shape(32, 8), 0).find("at least 1"), std::string::npos);
  EXPECT_FALSE(PlanTensorParallelShard(Shape(32, 8), 2, 2).ok());   // rank past the size
  EXPECT_FALSE(PlanTensorParallelShard(Shape(32, 8), -1, 2).ok());  // negative rank
  EXPECT_TRUE(CheckTensorParallelSize(Shape(32, 8), 16).ok());      // KV heads replicated twice
}

}  // namespace
}  // namespace gqa
