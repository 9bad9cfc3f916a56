// gqa-loadgen's parts without a network (client/loadgen/): percentiles against numpy's 'linear'
// method, client figures from hand-made request records, the arrival schedule, workloads, the
// Prometheus text reader and the server figures from two hand-written scrapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "loadgen/prometheus_text.h"
#include "loadgen/report.h"
#include "loadgen/server_view.h"
#include "loadgen/stats.h"
#include "loadgen/workload.h"

namespace gqa::loadgen {
namespace {

// ------------------------------------------------------------------------------ percentiles

TEST(PercentileTest, OneToTenMatchesNumpyLinear) {
  std::vector<double> x(10);
  std::iota(x.begin(), x.end(), 1.0);
  // numpy.percentile(np.arange(1, 11), [0, 25, 50, 90, 99, 100]) (method='linear')
  EXPECT_DOUBLE_EQ(Percentile(x, 0), 1.0);
  EXPECT_DOUBLE_EQ(Percentile(x, 25), 3.25);
  EXPECT_DOUBLE_EQ(Percentile(x, 50), 5.5);
  EXPECT_DOUBLE_EQ(Percentile(x, 90), 9.1);
  EXPECT_DOUBLE_EQ(Percentile(x, 99), 9.91);
  EXPECT_DOUBLE_EQ(Percentile(x, 100), 10.0);
}

TEST(PercentileTest, OneElementAndEmpty) {
  const std::vector<double> one = {7.0};
  for (double p : {0.0, 50.0, 90.0, 99.0, 100.0}) EXPECT_DOUBLE_EQ(Percentile(one, p), 7.0);
  EXPECT_TRUE(std::isnan(Percentile(std::vector<double>{}, 50)));
  const Summary s = Summarize({});
  EXPECT_TRUE(std::isnan(s.mean) && std::isnan(s.p50) && std::isnan(s.p90) && std::isnan(s.p99) &&
              std::isnan(s.min) && std::isnan(s.max));
}

TEST(PercentileTest, SummarizeSortsFirst) {
  const Summary s = Summarize({3.0, 1.0, 2.0, 10.0});  // sorted 1 2 3 10
  EXPECT_DOUBLE_EQ(s.mean, 4.0);
  EXPECT_DOUBLE_EQ(s.p50, 2.5);
  EXPECT_DOUBLE_EQ(s.p90, 7.9);   // h = 2.7: 3 + 0.7 * 7
  EXPECT_DOUBLE_EQ(s.p99, 9.79);  // h = 2.97: 3 + 0.97 * 7
  EXPECT_DOUBLE_EQ(s.min, 1.0);
  EXPECT_DOUBLE_EQ(s.max, 10.0);
}

// ---------------------------------------------------------------------------- client figures

RequestRecord Completed(int64_t prompt, double send, std::vector<double> msgs,
                        std::vector<int> tokens, double done) {
  RequestRecord r;
  r.ok = true;
  r.prompt_tokens = prompt;
  r.send_s = send;
  r.token_message_s = std::move(msgs);
  r.token_message_tokens = std::move(tokens);
  r.final_s = r.token_message_s.back();
  r.done_s = done;
  r.output_tokens =
      std::accumulate(r.token_message_tokens.begin(), r.token_message_tokens.end(), 0);
  return r;
}

std::vector<RequestRecord> FakeRun() {
  std::vector<RequestRecord> records;
  // TTFT 0.5, E2E 1.0, TPOT 0.5 / 3, ITL 0.2 and 0.3 (the second message carries 2 tokens).
  records.push_back(Completed(4, 0.0, {0.5, 0.7, 1.0}, {1, 2, 1}, 1.0));
  // One token: TTFT = E2E = 0.2, no TPOT, no ITL.
  records.push_back(Completed(6, 1.0, {1.2}, {1}, 1.25));
  RequestRecord failed;
  failed.send_s = 0.5;
  failed.done_s = 3.0;  // the last finish: the run lasts 3 s
  failed.prompt_tokens = 100;
  failed.error = "RESOURCE_EXHAUSTED";
  records.push_back(failed);
  // TTFT 0.4, E2E 0.5, TPOT 0.1 / 4, ITL 0.1.
  records.push_back(Completed(10, 2.0, {2.4, 2.5}, {3, 2}, 2.5));
  return records;
}

TEST(ClientStatsTest, FiguresOfAFixedSetOfRecords) {
  const ClientStats s = ComputeClientStats(FakeRun());
  EXPECT_EQ(s.num_requests, 4);
  EXPECT_EQ(s.completed, 3);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.errors, (std::map<std::string, int64_t>{{"RESOURCE_EXHAUSTED", 1}}));
  EXPECT_DOUBLE_EQ(s.duration_s, 3.0);
  EXPECT_EQ(s.input_tokens, 20);  // the failed request's 100 do not count
  EXPECT_EQ(s.output_tokens, 10);
  EXPECT_DOUBLE_EQ(s.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(s.output_token_throughput, 10.0 / 3.0);
  EXPECT_DOUBLE_EQ(s.total_token_throughput, 10.0);

  EXPECT_DOUBLE_EQ(s.ttft_s.mean, (0.5 + 0.2 + 0.4) / 3);
  EXPECT_NEAR(s.ttft_s.p50, 0.4, 1e-12);
  EXPECT_NEAR(s.ttft_s.min, 0.2, 1e-12);
  EXPECT_DOUBLE_EQ(s.ttft_s.max, 0.5);
  EXPECT_NEAR(s.tpot_s.mean, (0.5 / 3 + 0.1 / 4) / 2, 1e-12);
  EXPECT_NEAR(s.tpot_s.min, 0.025, 1e-12);
  EXPECT_NEAR(s.tpot_s.max, 0.5 / 3, 1e-12);
  EXPECT_NEAR(s.itl_s.mean, 0.2, 1e-12);  // 0.2, 0.3, 0.1
  EXPECT_NEAR(s.itl_s.min, 0.1, 1e-12);
  EXPECT_NEAR(s.itl_s.max, 0.3, 1e-12);
  EXPECT_NEAR(s.e2e_s.mean, (1.0 + 0.2 + 0.5) / 3, 1e-12);
  EXPECT_NEAR(s.e2e_s.p90, 0.9, 1e-12);  // sorted 0.2 0.5 1.0, h = 1.8
}

TEST(ClientStatsTest, NoRecordsGiveNullFiguresInTheReport) {
  const ClientStats s = ComputeClientStats({});
  EXPECT_EQ(s.completed, 0);
  EXPECT_TRUE(std::isnan(s.duration_s));
  EXPECT_TRUE(std::isnan(s.request_throughput));
  RunInfo run;
  run.label = "empty";
  const nlohmann::ordered_json j = ReportJson(run, s, std::nullopt);
  EXPECT_TRUE(j["duration_s"].is_null());
  EXPECT_TRUE(j["request_throughput"].is_null());
  EXPECT_TRUE(j["ttft_s"]["p99"].is_null());
  EXPECT_TRUE(j["server"].is_null());
  EXPECT_TRUE(j["errors"].is_object() && j["errors"].empty());
}

TEST(ReportTest, JsonHasTheContractKeys) {
  RunInfo run{"kv8", LoopMode::kOpen, 0, 20.0, 0};
  const nlohmann::ordered_json server = {{"steps", 3}};
  const nlohmann::ordered_json j = ReportJson(run, ComputeClientStats(FakeRun()), server);
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "label", "mode", "concurrency", "request_rate", "num_requests", "completed",
                      "failed", "errors", "duration_s", "input_tokens", "output_tokens",
                      "request_throughput", "output_token_throughput", "total_token_throughput",
                      "ttft_s", "tpot_s", "itl_s", "e2e_s", "server"}));
  EXPECT_EQ(j["label"], "kv8");
  EXPECT_EQ(j["mode"], "open");
  EXPECT_TRUE(j["concurrency"].is_null());
  EXPECT_EQ(j["request_rate"], 20.0);
  EXPECT_EQ(j["errors"]["RESOURCE_EXHAUSTED"], 1);
  EXPECT_EQ(j["output_tokens"], 10);
  EXPECT_EQ(j["server"]["steps"], 3);
  for (const char* k : {"mean", "p50", "p90", "p99", "min", "max"}) {
    EXPECT_TRUE(j["e2e_s"][k].is_number()) << k;
  }
  const nlohmann::ordered_json closed =
      ReportJson({"c", LoopMode::kClosed, 4, 0, 0}, ComputeClientStats(FakeRun()), std::nullopt);
  EXPECT_EQ(closed["mode"], "closed");
  EXPECT_EQ(closed["concurrency"], 4);
  EXPECT_TRUE(closed["request_rate"].is_null());
}

// ------------------------------------------------------------------------- arrival schedule

TEST(ArrivalTest, PoissonMeanGapAndOrder) {
  const std::vector<double> t = ArrivalOffsets(20000, 50.0, 1234);
  ASSERT_EQ(t.size(), 20000u);
  EXPECT_EQ(t[0], 0.0);
  for (size_t i = 1; i < t.size(); ++i) ASSERT_GT(t[i], t[i - 1]) << i;
  const double mean_gap = t.back() / static_cast<double>(t.size() - 1);
  EXPECT_NEAR(mean_gap, 0.02, 0.02 * 0.03);
  EXPECT_EQ(ArrivalOffsets(100, 50.0, 1234), ArrivalOffsets(100, 50.0, 1234));
  EXPECT_NE(ArrivalOffsets(100, 50.0, 1234), ArrivalOffsets(100, 50.0, 99));
}

TEST(ArrivalTest, InfiniteRateSendsAllAtOnce) {
  const std::vector<double> t = ArrivalOffsets(50, std::numeric_limits<double>::infinity(), 1);
  EXPECT_EQ(t, std::vector<double>(50, 0.0));
}

// -------------------------------------------------------------------------------- workloads

TEST(WorkloadTest, LengthRanges) {
  absl::StatusOr<LengthRange> r = ParseLengthRange("4:8");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->lo, 4);
  EXPECT_EQ(r->hi, 8);
  r = ParseLengthRange("5:5");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->lo, 5);
  EXPECT_EQ(r->hi, 5);
  for (const char* bad : {"8:4", "0:3", "-1:3", "a:b", "4", "4:8:9", "", "4:"}) {
    EXPECT_FALSE(ParseLengthRange(bad).ok()) << bad;
  }
}

TEST(WorkloadTest, FixedLengthsAndTokenRange) {
  WorkloadSource source;
  source.input = {32, 32};
  source.output = {8, 8};
  const auto requests = BuildRequests(source, 50, 7, 10, 512);
  ASSERT_EQ(requests.size(), 50u);
  std::set<uint32_t> seen;
  for (const RequestSpec& r : requests) {
    EXPECT_EQ(r.prompt.size(), 32u);
    EXPECT_EQ(r.output_len, 8);
    for (uint32_t id : r.prompt) {
      EXPECT_GE(id, 10u);
      EXPECT_LT(id, 512u);
      seen.insert(id);
    }
  }
  EXPECT_GT(seen.size(), 300u);  // 1600 draws over 502 ids
  EXPECT_EQ(BuildRequests(source, 5, 7, 10, 512)[4].prompt, requests[4].prompt);
  EXPECT_NE(BuildRequests(source, 5, 8, 10, 512)[4].prompt, requests[4].prompt);
}

TEST(WorkloadTest, UniformLengthsCoverTheirRanges) {
  WorkloadSource source;
  source.input = {4, 8};
  source.output = {1, 3};
  std::set<int64_t> inputs, outputs;
  for (const RequestSpec& r : BuildRequests(source, 2000, 3, 0, 16)) {
    inputs.insert(static_cast<int64_t>(r.prompt.size()));
    outputs.insert(r.output_len);
  }
  EXPECT_EQ(inputs, (std::set<int64_t>{4, 5, 6, 7, 8}));
  EXPECT_EQ(outputs, (std::set<int64_t>{1, 2, 3}));
}

TEST(WorkloadTest, JsonlDataset) {
  absl::StatusOr<std::vector<DatasetEntry>> d = ParseDataset(
      "{\"prompt_len\": 5, \"output_len\": 3}\n"
      "\n"
      "  {\"prompt_token_ids\": [11, 12, 13], \"output_len\": 2}  \n");
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->size(), 2u);
  EXPECT_EQ((*d)[0].prompt_len, 5);
  EXPECT_TRUE((*d)[0].prompt_token_ids.empty());
  EXPECT_EQ((*d)[0].output_len, 3);
  EXPECT_EQ((*d)[1].prompt_token_ids, (std::vector<uint32_t>{11, 12, 13}));
  EXPECT_EQ((*d)[1].output_len, 2);

  WorkloadSource source;
  source.dataset = *d;
  const auto requests = BuildRequests(source, 5, 1, 10, 512);  // in order, cycled
  ASSERT_EQ(requests.size(), 5u);
  for (size_t i : {0u, 2u, 4u}) {
    EXPECT_EQ(requests[i].prompt.size(), 5u);
    EXPECT_EQ(requests[i].output_len, 3);
  }
  for (size_t i : {1u, 3u}) {
    EXPECT_EQ(requests[i].prompt, (std::vector<uint32_t>{11, 12, 13}));
    EXPECT_EQ(requests[i].output_len, 2);
  }
}

TEST(WorkloadTest, SharedPrefixStartsEveryPrompt) {
  WorkloadSource source;
  source.input = {10, 10};
  source.output = {4, 4};
  source.shared_prefix = RandomTokens(20, 5, 10, 512);
  EXPECT_EQ(source.shared_prefix, RandomTokens(20, 5, 10, 512));
  const auto requests = BuildRequests(source, 8, 1, 10, 512);
  std::set<std::vector<uint32_t>> suffixes;
  for (const RequestSpec& r : requests) {
    ASSERT_EQ(r.prompt.size(), 30u);
    EXPECT_TRUE(
        std::equal(source.shared_prefix.begin(), source.shared_prefix.end(), r.prompt.begin()));
    suffixes.insert(std::vector<uint32_t>(r.prompt.begin() + 20, r.prompt.end()));
    EXPECT_EQ(r.after, -1);
  }
  EXPECT_EQ(suffixes.size(), 8u);  // each user turn its own
}

TEST(WorkloadTest, MultiTurnConversationsResendTheConversationAfterTheirPreviousTurn) {
  WorkloadSource source;
  source.input = {5, 5};
  source.output = {3, 3};
  source.shared_prefix = {1, 2, 3, 4};
  source.turns = 3;
  const auto requests = BuildRequests(source, 7, 2, 10, 512);  // 3 conversations, 7 turns
  ASSERT_EQ(requests.size(), 7u);
  for (size_t i = 0; i < 3; ++i) {  // first turns: system prompt + user turn
    EXPECT_EQ(requests[i].after, -1);
    EXPECT_EQ(requests[i].prompt.size(), 9u);
  }
  for (size_t i = 3; i < 7; ++i) {  // later turns: previous prompt + reply + user turn
    const RequestSpec& previous = requests[i - 3];
    EXPECT_EQ(requests[i].after, static_cast<int64_t>(i - 3));
    ASSERT_EQ(requests[i].prompt.size(), previous.prompt.size() + 3 + 5);
    EXPECT_TRUE(
        std::equal(previous.prompt.begin(), previous.prompt.end(), requests[i].prompt.begin()));
  }
  EXPECT_EQ(requests[6].prompt.size(), 25u);  // conversation 0's third turn
}

TEST(WorkloadTest, BadJsonlLinesAreNamed) {
  const std::string good = "{\"prompt_len\": 5, \"output_len\": 3}\n";
  for (const char* bad :
       {"{\"prompt_len\": 5", "{\"prompt_len\": 5}", "{\"prompt_len\": 5, \"output_len\": 0}",
        "{\"prompt_len\": 5, \"output_len\": 2.5}",
        "{\"prompt_len\": 5, \"prompt_token_ids\": [1], \"output_len\": 2}",
        "{\"prompt_token_ids\": [1, -2], \"output_len\": 2}",
        "{\"prompt_token_ids\": [], \"output_len\": 2}", "[1, 2]", "7"}) {
    const absl::StatusOr<std::vector<DatasetEntry>> d = ParseDataset(good + "\n" + bad + "\n");
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_NE(d.status().message().find("line 3"), absl::string_view::npos) << d.status();
  }
  EXPECT_FALSE(ParseDataset("\n\n").ok());
}

// ------------------------------------------------------------------------------ Prometheus

TEST(PrometheusTextTest, ParsesSamplesLabelsAndSpecialValues) {
  const absl::StatusOr<std::vector<Sample>> s = ParsePrometheusText(
      "# HELP gqa_x Something.\n"
      "# TYPE gqa_x histogram\n"
      "gqa_x_bucket{phase=\"decode\",le=\"+Inf\"} 10\n"
      "gqa_x_sum{phase=\"decode\"} 0.5\n"
      "\n"
      "plain 3\n"
      "weird{path=\"a \\\"q\\\" \\\\ b\",x=\"1\",} NaN\n"
      "up +Inf\n"
      "down -2.5e-3 1700000000\n");
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->size(), 6u);
  EXPECT_EQ((*s)[0].name, "gqa_x_bucket");
  EXPECT_EQ((*s)[0].labels, (Labels{{"phase", "decode"}, {"le", "+Inf"}}));
  EXPECT_EQ((*s)[0].value, 10.0);
  EXPECT_EQ((*s)[2].name, "plain");
  EXPECT_TRUE((*s)[2].labels.empty());
  EXPECT_EQ((*s)[3].labels, (Labels{{"path", "a \"q\" \\ b"}, {"x", "1"}}));
  EXPECT_TRUE(std::isnan((*s)[3].value));
  EXPECT_TRUE(std::isinf((*s)[4].value) && (*s)[4].value > 0);
  EXPECT_DOUBLE_EQ((*s)[5].value, -2.5e-3);
}

TEST(PrometheusTextTest, BadLinesAreNamed) {
  for (const char* bad : {"x{a=\"1\" 3", "x{a=1} 3", "x", "x one", "x 1 2 3", "{a=\"1\"} 3"}) {
    const auto s = ParsePrometheusText(std::string("ok 1\n") + bad + "\n");
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.status().message().find("line 2"), absl::string_view::npos) << s.status();
  }
}

TEST(PrometheusTextTest, SumsSamplesWhoseLabelsIncludeASubset) {
  const auto s = ParsePrometheusText(
      "bytes{phase=\"decode\",kind=\"weights\"} 100\n"
      "bytes{phase=\"decode\",kind=\"kv\"} 20\n"
      "bytes{phase=\"prefill\",kind=\"kv\"} 3\n"
      "other 5\n");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(SumSamples(*s, "bytes"), 123.0);
  EXPECT_EQ(SumSamples(*s, "bytes", {{"phase", "decode"}}), 120.0);
  EXPECT_EQ(SumSamples(*s, "bytes", {{"kind", "kv"}}), 23.0);
  EXPECT_EQ(SumSamples(*s, "bytes", {{"phase", "decode"}, {"kind", "kv"}}), 20.0);
  EXPECT_EQ(SumSamples(*s, "bytes", {{"phase", "mixed"}}), 0.0);  // present, no such series
  EXPECT_FALSE(SumSamples(*s, "absent").has_value());
  EXPECT_TRUE(HasSample(*s, "other"));
  EXPECT_FALSE(HasSample(*s, "byte"));
}

// --------------------------------------------------------------------------- server figures

constexpr const char* kBefore = R"(
gqa_step_duration_seconds_sum{phase="prefill"} 1.0
gqa_step_duration_seconds_count{phase="prefill"} 2
gqa_step_duration_seconds_sum{phase="decode"} 2.0
gqa_step_duration_seconds_count{phase="decode"} 10
gqa_step_duration_seconds_sum{phase="mixed"} 0
gqa_step_duration_seconds_count{phase="mixed"} 0
gqa_step_device_seconds_sum{phase="decode"} 1.0
gqa_step_device_seconds_count{phase="decode"} 5
gqa_step_device_seconds_sum{phase="prefill"} 0.5
gqa_step_device_seconds_count{phase="prefill"} 1
gqa_step_read_bytes_total{phase="decode",kind="weights"} 1000
gqa_step_read_bytes_total{phase="decode",kind="kv"} 100
gqa_step_read_bytes_total{phase="prefill",kind="weights"} 200
gqa_step_read_bytes_total{phase="prefill",kind="kv"} 0
gqa_device_read_bandwidth_bytes_per_second 5e8
gqa_step_roofline_seconds_sum{phase="decode"} 0.1
gqa_step_roofline_seconds_count{phase="decode"} 10
gqa_step_roofline_seconds_sum{phase="prefill"} 0.05
gqa_step_roofline_seconds_count{phase="prefill"} 2
gqa_step_batch_size_sum 20
gqa_step_batch_size_count 12
gqa_step_sequences_sum{state="decoding"} 18
gqa_step_sequences_count{state="decoding"} 10
gqa_step_sequences_sum{state="prefilling"} 2
gqa_step_sequences_count{state="prefilling"} 12
gqa_preemptions_total 1
gqa_prompt_tokens_total 100
gqa_generation_tokens_total 50
gqa_prefix_cache_queries_tokens_total 1000
gqa_prefix_cache_hits_tokens_total 200
gqa_kv_cache_usage_ratio 0.1
)";

// No gqa_step_attention_seconds (an older server); new mixed-phase series.
constexpr const char* kAfter = R"(
gqa_step_duration_seconds_sum{phase="prefill"} 1.5
gqa_step_duration_seconds_count{phase="prefill"} 4
gqa_step_duration_seconds_sum{phase="decode"} 6.0
gqa_step_duration_seconds_count{phase="decode"} 30
gqa_step_duration_seconds_sum{phase="mixed"} 0.5
gqa_step_duration_seconds_count{phase="mixed"} 1
gqa_step_device_seconds_sum{phase="decode"} 3.0
gqa_step_device_seconds_count{phase="decode"} 9
gqa_step_device_seconds_sum{phase="prefill"} 0.7
gqa_step_device_seconds_count{phase="prefill"} 2
gqa_step_read_bytes_total{phase="decode",kind="weights"} 21000
gqa_step_read_bytes_total{phase="decode",kind="kv"} 2100
gqa_step_read_bytes_total{phase="prefill",kind="weights"} 1200
gqa_step_read_bytes_total{phase="prefill",kind="kv"} 500
gqa_step_read_bytes_total{phase="mixed",kind="weights"} 300
gqa_device_read_bandwidth_bytes_per_second 2e9
gqa_step_roofline_seconds_sum{phase="decode"} 1.1
gqa_step_roofline_seconds_count{phase="decode"} 30
gqa_step_roofline_seconds_sum{phase="prefill"} 0.15
gqa_step_roofline_seconds_count{phase="prefill"} 4
gqa_step_roofline_seconds_sum{phase="mixed"} 0.2
gqa_step_roofline_seconds_count{phase="mixed"} 1
gqa_step_batch_size_sum 100
gqa_step_batch_size_count 35
gqa_step_sequences_sum{state="decoding"} 98
gqa_step_sequences_count{state="decoding"} 30
gqa_step_sequences_sum{state="prefilling"} 4
gqa_step_sequences_count{state="prefilling"} 16
gqa_preemptions_total 1
gqa_prompt_tokens_total 164
gqa_generation_tokens_total 150
gqa_prefix_cache_queries_tokens_total 1400
gqa_prefix_cache_hits_tokens_total 500
gqa_kv_cache_usage_ratio 0.05
)";

std::vector<Sample> Parse(absl::string_view text) {
  absl::StatusOr<std::vector<Sample>> s = ParsePrometheusText(text);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::vector<Sample>{};
}

TEST(ServerFiguresTest, DeltasOfTwoScrapes) {
  const nlohmann::ordered_json j = ServerFigures(Parse(kBefore), Parse(kAfter), 0.3);
  EXPECT_EQ(j["steps"], 23);
  EXPECT_DOUBLE_EQ(j["step_s_mean"].get<double>(), 5.0 / 23);
  EXPECT_EQ(j["decode_steps"], 20);
  EXPECT_DOUBLE_EQ(j["decode_step_s_mean"].get<double>(), 0.2);
  EXPECT_EQ(j["prefill_steps"], 2);
  EXPECT_DOUBLE_EQ(j["prefill_step_s_mean"].get<double>(), 0.25);
  EXPECT_EQ(j["mixed_steps"], 1);
  EXPECT_TRUE(j["attention_share"].is_null());
  EXPECT_TRUE(j["decode_attention_share"].is_null());
  EXPECT_DOUBLE_EQ(j["decode_device_step_s_mean"].get<double>(), 0.5);
  EXPECT_EQ(j["read_bytes"], 23800);
  EXPECT_DOUBLE_EQ(j["decode_read_bytes_per_step"].get<double>(), 1100.0);
  EXPECT_DOUBLE_EQ(j["achieved_bandwidth_Bps"].get<double>(), 4760.0);
  EXPECT_DOUBLE_EQ(j["decode_achieved_bandwidth_Bps"].get<double>(), 5500.0);
  EXPECT_DOUBLE_EQ(j["device_bandwidth_Bps"].get<double>(), 2e9);
  EXPECT_NEAR(j["decode_roofline_s_mean"].get<double>(), 0.05, 1e-12);
  EXPECT_NEAR(j["roofline_fraction"].get<double>(), 0.26, 1e-12);
  EXPECT_NEAR(j["decode_roofline_fraction"].get<double>(), 0.25, 1e-12);
  EXPECT_DOUBLE_EQ(j["mean_batch"].get<double>(), 80.0 / 23);
  EXPECT_DOUBLE_EQ(j["decode_mean_batch"].get<double>(), 4.0);
  EXPECT_EQ(j["preemptions"], 0);
  EXPECT_EQ(j["prompt_tokens"], 64);
  EXPECT_EQ(j["generation_tokens"], 100);
  EXPECT_DOUBLE_EQ(j["prefix_cache_hit_rate"].get<double>(), 0.75);
  EXPECT_DOUBLE_EQ(j["peak_kv_usage"].get<double>(), 0.3);
  EXPECT_EQ(j["metric_names_missing"], nlohmann::ordered_json({"gqa_step_attention_seconds"}));
  // Without polls the peak is the larger of the two scrapes' gauges.
  EXPECT_DOUBLE_EQ(
      ServerFigures(Parse(kBefore), Parse(kAfter), std::nullopt)["peak_kv_usage"].get<double>(),
      0.1);
}

TEST(ServerFiguresTest, HasEveryContractKey) {
  const nlohmann::ordered_json j = ServerFigures(Parse(kBefore), Parse(kAfter), std::nullopt);
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"steps",
                                            "step_s_mean",
                                            "decode_steps",
                                            "decode_step_s_mean",
                                            "prefill_steps",
                                            "prefill_step_s_mean",
                                            "mixed_steps",
                                            "attention_share",
                                            "decode_attention_share",
                                            "decode_device_step_s_mean",
                                            "read_bytes",
                                            "decode_read_bytes_per_step",
                                            "achieved_bandwidth_Bps",
                                            "decode_achieved_bandwidth_Bps",
                                            "device_bandwidth_Bps",
                                            "decode_roofline_s_mean",
                                            "roofline_fraction",
                                            "decode_roofline_fraction",
                                            "mean_batch",
                                            "decode_mean_batch",
                                            "preemptions",
                                            "prompt_tokens",
                                            "generation_tokens",
                                            "prefix_cache_hit_rate",
                                            "peak_kv_usage",
                                            "metric_names_missing"}));
}

TEST(ServerFiguresTest, ZeroDeltasGiveNullRatios) {
  const nlohmann::ordered_json j = ServerFigures(Parse(kAfter), Parse(kAfter), std::nullopt);
  EXPECT_EQ(j["steps"], 0);
  EXPECT_EQ(j["read_bytes"], 0);
  for (const char* k : {"step_s_mean", "decode_step_s_mean", "decode_device_step_s_mean",
                        "decode_read_bytes_per_step", "achieved_bandwidth_Bps", "roofline_fraction",
                        "mean_batch", "decode_mean_batch"}) {
    EXPECT_TRUE(j[k].is_null()) << k;
  }
  EXPECT_DOUBLE_EQ(j["device_bandwidth_Bps"].get<double>(), 2e9);  // a gauge, not a delta
}

TEST(ServerFiguresTest, MissingMetricsAreNullAndListed) {
  std::string before = kBefore, after = kAfter;
  for (std::string* text : {&before, &after}) {
    for (const char* name : {"gqa_preemptions_total", "gqa_kv_cache_usage_ratio",
                             "gqa_device_read_bandwidth_bytes_per_second"}) {
      const size_t at = text->find(name);
      ASSERT_NE(at, std::string::npos) << name;
      text->erase(at, text->find('\n', at) - at + 1);
    }
  }
  const nlohmann::ordered_json j = ServerFigures(Parse(before), Parse(after), std::nullopt);
  EXPECT_TRUE(j["preemptions"].is_null());
  EXPECT_TRUE(j["peak_kv_usage"].is_null());
  EXPECT_TRUE(j["device_bandwidth_Bps"].is_null());
  EXPECT_EQ(j["steps"], 23);  // what is there is still computed
  const auto missing = j["metric_names_missing"].get<std::vector<std::string>>();
  EXPECT_EQ(std::set<std::string>(missing.begin(), missing.end()),
            (std::set<std::string>{"gqa_step_attention_seconds",
                                   "gqa_device_read_bandwidth_bytes_per_second",
                                   "gqa_preemptions_total", "gqa_kv_cache_usage_ratio"}));
}

}  // namespace
}  // namespace gqa::loadgen
