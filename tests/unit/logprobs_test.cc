// Logprobs through the engine: a fake backend whose logits are a known function of the previous
// token, so every logprob can be checked against a log-softmax computed here; and the CPU
// backend's prompt logprobs against one unchunked forward of the whole prompt.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <numeric>
#include <random>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "common/fake_backend.h"
#include "common/test_checkpoint.h"
#include "engine/engine.h"

namespace gqa {
namespace {

constexpr int kVocab = 64;

// The fake model: the logits after token `prev` at position `pos`. Integer values in [0, 8), so
// most rows have ties, which the top lists must break by lower id.
std::vector<float> FakeLogits(int32_t prev, int32_t pos) {
  std::vector<float> row(kVocab);
  for (int v = 0; v < kVocab; ++v) {
    const uint32_t h = (uint32_t(prev) * 2654435761u) ^ (uint32_t(v) * 40503u) ^ uint32_t(pos);
    row[v] = static_cast<float>((h * 2246822519u >> 7) % 8);
  }
  return row;
}

// log_softmax in double, computed independently of the code under test.
std::vector<double> LogSoftmax(const std::vector<float>& row) {
  const double max = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float x : row) sum += std::exp(x - max);
  std::vector<double> out(row.size());
  for (size_t i = 0; i < row.size(); ++i) out[i] = row[i] - max - std::log(sum);
  return out;
}

// The k most likely ids: by logprob, then lower id.
std::vector<int32_t> TopIds(const std::vector<double>& logprobs, int k) {
  std::vector<int32_t> ids(logprobs.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return logprobs[a] > logprobs[b]; });
  ids.resize(k);
  return ids;
}

// Checks one position: the token's logprob and the top k after `prev` at `pos`.
void ExpectLogprob(const TokenLogprob& got, int32_t prev, int32_t pos, int k,
                   const std::string& where) {
  const std::vector<double> expected = LogSoftmax(FakeLogits(prev, pos));
  EXPECT_NEAR(got.logprob, expected[got.token], 1e-5) << where;
  ASSERT_EQ(static_cast<int>(got.top.size()), k) << where;
  const std::vector<int32_t> ids = TopIds(expected, k);
  for (int i = 0; i < k; ++i) {
    EXPECT_EQ(got.top[i].first, ids[i]) << where << " top " << i;
    EXPECT_NEAR(got.top[i].second, expected[ids[i]], 1e-5) << where << " top " << i;
  }
}

// Logits rows as step_plan.h lays them out, from FakeLogits; samples with the CPU sampler and
// answers logprobs with the CPU reference. Records the largest step it saw.
class LogitsFakeBackend : public testing::FakeBackendBase {
 public:
  explicit LogitsFakeBackend(int num_blocks) : FakeBackendBase(num_blocks) {}
  absl::StatusOr<std::vector<float>> LogitsToHost() override { return logits_; }

  std::atomic<int> max_rows_{0};
  std::atomic<int> all_logits_tokens_{0};
  std::atomic<int> logprobs_calls_{0};  // steps that computed logprobs

 private:
  absl::StatusOr<StepOutput> Run(const StepPlan& plan) override {
    const std::vector<int32_t> row_of_token = LogitsRowOfTokens(plan.seqs);
    const int rows = 1 + *std::max_element(row_of_token.begin(), row_of_token.end());
    logits_.assign(size_t(std::max(rows, 0)) * kVocab, 0.0f);
    size_t flat = 0;
    for (const ScheduledSeq& s : plan.seqs) {
      if (s.wants_all_logits()) all_logits_tokens_ += static_cast<int>(s.chunk.size());
      for (size_t i = 0; i < s.chunk.size(); ++i, ++flat) {
        if (row_of_token[flat] < 0) continue;
        const auto row = FakeLogits(s.chunk[i], s.start_pos + static_cast<int32_t>(i));
        std::copy(row.begin(), row.end(), logits_.begin() + size_t(row_of_token[flat]) * kVocab);
      }
    }
    max_rows_ = std::max(max_rows_.load(), rows);
    StepOutput out;
    for (const ScheduledSeq& s : plan.seqs) {
      if (!s.samples) continue;
      const size_t r = out.sampled.size();
      out.sampled.push_back(
          kernels::cpu::SampleToken(logits_.data() + r * kVocab, kVocab, s.sampling));
    }
    const StepLogprobsQueries asked = BuildLogprobsQueries(plan.seqs, out.sampled);
    if (asked.queries.empty()) return out;
    ++logprobs_calls_;
    std::vector<LogprobsResult> answers;
    for (const LogprobsQuery& q : asked.queries) {
      if ((q.row + 1) * size_t(kVocab) > logits_.size()) return absl::InternalError("row");
      answers.push_back(kernels::cpu::ComputeLogprobs(logits_.data() + q.row * kVocab, kVocab, q));
    }
    StoreLogprobs(asked, answers, plan.seqs.size(), out);
    return out;
  }

  std::vector<float> logits_;
};

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  std::vector<TokenLogprob> prompt_logprobs;
  int events_with_prompt_logprobs = 0;
  bool logprobs_match_tokens = true;  // every event: one logprob per new token (when asked)
  int preemptions = 0;
  bool done = false;
};

class Collector {
 public:
  EventSink SinkFor(const std::string& id, bool expect_logprobs) {
    return [this, id, expect_logprobs](TokenEvent e) {
      std::lock_guard lock(mu_);
      Outcome& o = outcomes_[id];
      o.tokens.insert(o.tokens.end(), e.new_tokens.begin(), e.new_tokens.end());
      if (expect_logprobs ? e.logprobs.size() != e.new_tokens.size() : !e.logprobs.empty()) {
        o.logprobs_match_tokens = false;
      }
      o.logprobs.insert(o.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      if (!e.prompt_logprobs.empty()) {
        ++o.events_with_prompt_logprobs;
        o.prompt_logprobs = e.prompt_logprobs;
      }
      if (e.finish) {
        o.done = true;
        o.preemptions = e.preemptions;
        cv_.notify_all();
      }
    };
  }
  Outcome Wait(const std::string& id) {
    std::unique_lock lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(60), [&] { return outcomes_[id].done; }));
    return outcomes_[id];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Outcome> outcomes_;
};

struct EngineSetup {
  int num_blocks = 256;
  SchedulerConfig scheduler{4, 64, 256};
};

class LogprobsEngineTest : public ::testing::Test {
 protected:
  // run = false: the engine is built but its loop not started, so that requests submitted
  // before engine.Start() meet in its first step whatever the machine's load.
  Engine& Start(const EngineSetup& setup, bool run = true) {
    auto backend = std::make_unique<LogitsFakeBackend>(setup.num_blocks);
    backend_ = backend.get();
    EngineConfig config;
    config.scheduler = setup.scheduler;
    config.limits = {kVocab, 512};
    engine_ = std::make_unique<Engine>(config, std::move(backend), nullptr);
    if (run) engine_->Start();
    return *engine_;
  }
  Request MakeRequest(const std::string& id, std::vector<int32_t> prompt, int max_new,
                      LogprobsParams logprobs) {
    Request r;
    r.id = id;
    r.prompt = std::move(prompt);
    r.stopping.max_new_tokens = max_new;
    r.stopping.ignore_eos = true;
    r.logprobs = logprobs;
    r.sink = collector_.SinkFor(id, logprobs.top_logprobs >= 0);
    return r;
  }
  static std::vector<int32_t> RandomPrompt(std::mt19937& rng, int n) {
    std::vector<int32_t> p(n);
    for (auto& t : p) t = static_cast<int32_t>(rng() % kVocab);
    return p;
  }
  // Every generated token's logprob follows the token before it (the prompt's last, then each
  // generated one in turn).
  static void ExpectGenerated(const Outcome& o, const std::vector<int32_t>& prompt, int k) {
    ASSERT_TRUE(o.logprobs_match_tokens);
    ASSERT_EQ(o.logprobs.size(), o.tokens.size());
    for (size_t i = 0; i < o.tokens.size(); ++i) {
      EXPECT_EQ(o.logprobs[i].token, o.tokens[i]);
      const int32_t prev = i == 0 ? prompt.back() : o.tokens[i - 1];
      const int32_t pos = static_cast<int32_t>(prompt.size() + i) - 1;
      ExpectLogprob(o.logprobs[i], prev, pos, k, "generated " + std::to_string(i));
    }
  }
  static void ExpectPrompt(const Outcome& o, const std::vector<int32_t>& prompt, int k) {
    ASSERT_EQ(o.events_with_prompt_logprobs, 1) << "prompt logprobs come once";
    ASSERT_EQ(o.prompt_logprobs.size(), prompt.size());
    EXPECT_EQ(o.prompt_logprobs[0].token, prompt[0]);
    EXPECT_EQ(o.prompt_logprobs[0].logprob, 0.0f) << "the first prompt token has no context";
    EXPECT_TRUE(o.prompt_logprobs[0].top.empty());
    for (size_t j = 1; j < prompt.size(); ++j) {
      EXPECT_EQ(o.prompt_logprobs[j].token, prompt[j]);
      ExpectLogprob(o.prompt_logprobs[j], prompt[j - 1], static_cast<int32_t>(j) - 1, k,
                    "prompt " + std::to_string(j));
    }
  }

  Collector collector_;
  std::unique_ptr<Engine> engine_;
  LogitsFakeBackend* backend_ = nullptr;
};

TEST(LogitsLayoutTest, SamplingRowsFirstThenEveryOtherTokenOfAllLogitsChunks) {
  const std::vector<int32_t> a = {1, 2, 3}, b = {4}, c = {5, 6}, d = {7, 8};
  auto chunk = [](std::span<const int32_t> tokens, int start, bool samples, bool all_logits) {
    ScheduledSeq s;
    s.chunk = tokens;
    s.start_pos = start;
    s.samples = samples;
    s.prompt_top_logprobs = all_logits ? 0 : -1;
    return s;
  };
  const std::vector<ScheduledSeq> batch = {
      chunk(a, 0, /*samples=*/false, /*all_logits=*/true),
      chunk(b, 9, true, false),
      chunk(c, 0, true, true),
      chunk(d, 0, false, false),
  };
  // Sampling rows: b (0), c's last (1); then a's three tokens (2, 3, 4), c's first (5).
  EXPECT_EQ(LogitsRowOfTokens(batch), (std::vector<int32_t>{2, 3, 4, 0, 5, 1, -1, -1}));
}

TEST(LogprobsCpuReferenceTest, MatchesLogSoftmaxWithTiesByLowerId) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> row(kVocab);
    for (auto& x : row) x = static_cast<float>(rng() % 5) - 2.0f;  // many ties
    const int k = static_cast<int>(rng() % (kernels::kMaxLogprobsTopK + 1));
    const int32_t token = static_cast<int32_t>(rng() % kVocab);
    const auto got = kernels::cpu::ComputeLogprobs(row.data(), kVocab, {0, token, k});
    const auto expected = LogSoftmax(row);
    EXPECT_NEAR(got.token_logprob, expected[token], 1e-6);
    ASSERT_EQ(got.top_k, k);
    const auto ids = TopIds(expected, k);
    for (int i = 0; i < k; ++i) {
      EXPECT_EQ(got.top_ids[i], ids[i]);
      EXPECT_NEAR(got.top_logprobs[i], expected[ids[i]], 1e-6);
    }
  }
}

TEST_F(LogprobsEngineTest, GeneratedTokensCarryTheirLogprobAndTopK) {
  Engine& engine = Start({});
  std::mt19937 rng(1);
  const auto prompt = RandomPrompt(rng, 7);
  ASSERT_TRUE(engine.Submit(MakeRequest("k5", prompt, 12, {5, -1})).ok());
  const Outcome o = collector_.Wait("k5");
  ASSERT_EQ(o.tokens.size(), 12u);
  ExpectGenerated(o, prompt, 5);
  // Greedy: the sampled token is the most likely one, the first of the top list.
  for (const auto& lp : o.logprobs) EXPECT_EQ(lp.top[0].first, lp.token);
  EXPECT_TRUE(o.prompt_logprobs.empty());
}

TEST_F(LogprobsEngineTest, KZeroGivesTheSampledTokenOnlyAndOffGivesNothing) {
  Engine& engine = Start({});
  std::mt19937 rng(2);
  const auto prompt = RandomPrompt(rng, 5);
  ASSERT_TRUE(engine.Submit(MakeRequest("k0", prompt, 6, {0, -1})).ok());
  ASSERT_TRUE(engine.Submit(MakeRequest("off", prompt, 6, {})).ok());
  const Outcome k0 = collector_.Wait("k0");
  ExpectGenerated(k0, prompt, 0);
  const Outcome off = collector_.Wait("off");
  EXPECT_TRUE(off.logprobs_match_tokens) << "no logprobs when not asked";
  EXPECT_TRUE(off.logprobs.empty());
  EXPECT_EQ(off.tokens, k0.tokens);
}

TEST_F(LogprobsEngineTest, NoBackendCallWhenNoRequestAsks) {
  Engine& engine = Start({});
  ASSERT_TRUE(engine.Submit(MakeRequest("plain", {1, 2, 3}, 5, {})).ok());
  collector_.Wait("plain");
  EXPECT_EQ(backend_->logprobs_calls_.load(), 0);
  EXPECT_EQ(backend_->all_logits_tokens_.load(), 0);
}

TEST_F(LogprobsEngineTest, LogprobsAreOfTheRawLogitsWhateverTheTemperature) {
  Engine& engine = Start({});
  std::mt19937 rng(3);
  const auto prompt = RandomPrompt(rng, 4);
  Request r = MakeRequest("hot", prompt, 20, {3, -1});
  r.sampling = {.temperature = 1.7f, .top_p = 0.9f, .top_k = 10, .seed = 11};
  ASSERT_TRUE(engine.Submit(std::move(r)).ok());
  ExpectGenerated(collector_.Wait("hot"), prompt, 3);
}

TEST_F(LogprobsEngineTest, RefusesCountsOutsideZeroToTwenty) {
  Engine& engine = Start({});
  auto refused = [&](LogprobsParams p) {
    absl::StatusOr<uint64_t> id = engine.Submit(MakeRequest("bad", {1, 2}, 2, p));
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(id.status().message());
  };
  EXPECT_EQ(refused({21, -1}), "logprobs.top_logprobs: 21 must be in [0, 20]");
  EXPECT_EQ(refused({-2, -1}), "logprobs.top_logprobs: -2 must be in [0, 20]");
  EXPECT_EQ(refused({-1, 100}), "logprobs.prompt_top_logprobs: 100 must be in [0, 20]");
  ASSERT_TRUE(engine.Submit(MakeRequest("twenty", {1, 2}, 2, {20, 20})).ok());
  const Outcome o = collector_.Wait("twenty");
  ExpectGenerated(o, {1, 2}, 20);
  ExpectPrompt(o, {1, 2}, 20);
}

TEST_F(LogprobsEngineTest, PromptLogprobsAcrossChunkedPrefillWithBoundedRows) {
  // 8 tokens a step, at most 4 logits rows (max_num_seqs): a 37-token prompt takes many chunks.
  Engine& engine = Start({256, {4, 4, 8}});
  std::mt19937 rng(4);
  const auto long_prompt = RandomPrompt(rng, 37), short_prompt = RandomPrompt(rng, 3);
  ASSERT_TRUE(engine.Submit(MakeRequest("long", long_prompt, 5, {2, 4})).ok());
  ASSERT_TRUE(engine.Submit(MakeRequest("short", short_prompt, 30, {1, -1})).ok());
  ASSERT_TRUE(engine.Submit(MakeRequest("one", {9}, 3, {-1, 3})).ok());
  const Outcome long_o = collector_.Wait("long");
  ExpectPrompt(long_o, long_prompt, 4);
  ExpectGenerated(long_o, long_prompt, 2);
  const Outcome short_o = collector_.Wait("short");
  EXPECT_TRUE(short_o.prompt_logprobs.empty());
  ExpectGenerated(short_o, short_prompt, 1);
  const Outcome one = collector_.Wait("one");
  ExpectPrompt(one, {9}, 3);
  EXPECT_LE(backend_->max_rows_.load(), 4) << "logits rows per step stay within the bound";
}

TEST_F(LogprobsEngineTest, PromptLogprobsSurvivePreemption) {
  // 10 blocks of 4 tokens, 6 tokens a step. "decoder" (2 + 30 tokens) decodes while "prompt"
  // (36 + 3) prefills 5 tokens a step; the decoder's next block then preempts the prompt in the
  // middle of its prefill, which is recomputed from the start once blocks are free.
  Engine& engine = Start({10, {4, 8, 6}}, /*run=*/false);
  std::mt19937 rng(5);
  const auto short_prompt = RandomPrompt(rng, 2), long_prompt = RandomPrompt(rng, 36);
  ASSERT_TRUE(engine.Submit(MakeRequest("decoder", short_prompt, 30, {3, 2})).ok());
  ASSERT_TRUE(engine.Submit(MakeRequest("prompt", long_prompt, 3, {3, 2})).ok());
  engine.Start();  // both in its first step: the schedule below does not depend on timing
  const Outcome decoder = collector_.Wait("decoder");
  ExpectPrompt(decoder, short_prompt, 2);
  ExpectGenerated(decoder, short_prompt, 3);
  const Outcome prompt = collector_.Wait("prompt");
  ExpectPrompt(prompt, long_prompt, 2);
  ExpectGenerated(prompt, long_prompt, 3);
  EXPECT_GT(prompt.preemptions, 0) << "the test must preempt";
  EXPECT_GT(backend_->all_logits_tokens_.load(), 36 + 2)
      << "the prompt was preempted while its logprobs were computed, and recomputed";
}

// The CPU backend: prompt logprobs through chunked prefill equal the log-softmax of one forward
// of the whole prompt with logits at every position.
TEST(CpuBackendLogprobsTest, ChunkedPromptLogprobsEqualOneWholeForward) {
  testing::TempDir dir;
  testing::WriteRandomCheckpoint(dir.path(), testing::TinyConfig(2), 1234);
  auto loaded = Checkpoint::Load(dir.path(), LoadFormat::kSafetensors);
  ASSERT_TRUE(loaded.ok());
  const std::shared_ptr<const Checkpoint> ckpt = std::move(*loaded);
  const int vocab = ckpt->config().vocab_size;
  std::mt19937 rng(6);
  std::vector<int32_t> prompt(23);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % vocab);

  auto reference = CpuBackend::Create(ckpt, 4, 64);
  ASSERT_TRUE(reference.ok());
  std::vector<int32_t> blocks(8);
  std::iota(blocks.begin(), blocks.end(), 0);
  const WholeTableSeq whole{prompt, 0, blocks, /*samples=*/true, /*wants_all_logits=*/true};
  ASSERT_TRUE((*reference)->ExecuteStep(WholeTablePlanner().Plan({&whole, 1})).ok());
  auto logits = (*reference)->LogitsToHost();
  ASSERT_TRUE(logits.ok());
  ASSERT_EQ(logits->size(), prompt.size() * vocab);
  // Row 0 is the last token's (the sampling row); rows 1.. are tokens 0.. in order.
  auto row_of_position = [&](size_t pos) { return pos + 1 == prompt.size() ? 0 : pos + 1; };

  auto backend = CpuBackend::Create(ckpt, 4, 64);
  ASSERT_TRUE(backend.ok());
  EngineConfig config;
  config.scheduler = {4, 4, 5};
  config.limits = {vocab, 512};
  Engine engine(config, std::move(*backend), nullptr);
  engine.Start();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<TokenLogprob> prompt_logprobs, generated;
  bool done = false;
  Request r;
  r.prompt = prompt;
  r.stopping.max_new_tokens = 1;
  r.stopping.ignore_eos = true;
  r.logprobs = {.top_logprobs = 5, .prompt_top_logprobs = 5};
  r.sink = [&](TokenEvent e) {
    std::lock_guard lock(mu);
    prompt_logprobs.insert(prompt_logprobs.end(), e.prompt_logprobs.begin(),
                           e.prompt_logprobs.end());
    generated.insert(generated.end(), e.logprobs.begin(), e.logprobs.end());
    done = done || e.finish.has_value();
    cv.notify_all();
  };
  ASSERT_TRUE(engine.Submit(std::move(r)).ok());
  std::unique_lock lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return done; }));
  ASSERT_EQ(prompt_logprobs.size(), prompt.size());
  ASSERT_EQ(generated.size(), 1u);
  auto expect_position = [&](const TokenLogprob& got, size_t pos) {
    const float* row = logits->data() + row_of_position(pos) * vocab;
    const std::vector<double> expected = LogSoftmax(std::vector<float>(row, row + vocab));
    EXPECT_NEAR(got.logprob, expected[got.token], 1e-4) << "position " << pos;
    const std::vector<int32_t> ids = TopIds(expected, 5);
    ASSERT_EQ(got.top.size(), 5u);
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(got.top[i].first, ids[i]) << "position " << pos;
      EXPECT_NEAR(got.top[i].second, expected[ids[i]], 1e-4) << "position " << pos;
    }
  };
  for (size_t j = 1; j < prompt.size(); ++j) expect_position(prompt_logprobs[j], j - 1);
  expect_position(generated[0], prompt.size() - 1);
}

}  // namespace
}  // namespace gqa
