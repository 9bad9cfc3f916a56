#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <limits>
#include <sstream>
#include <string>

#include "backend/kv_cache_spec.h"
#include "common/test_checkpoint.h"
#include "metrics/engine_metrics.h"
#include "metrics/process_metrics.h"
#include "metrics/registry.h"
#include "model/config.h"

namespace gqa {
namespace {

TEST(MetricsTest, RendersPrometheusText) {
  MetricsRegistry r;
  r.AddCounter("c_total", "A counter.", {{"reason", "eos"}})->Inc(3);
  r.AddCounter("c_total", "A counter.", {{"reason", "length"}})->Inc();
  r.AddGauge("g", "A gauge.")->Set(0.25);
  Histogram* h = r.AddHistogram("h_seconds", "A histogram.", {0.001, 0.01, 1});
  h->Observe(0.0005);
  h->Observe(0.001);  // on the bound: le is inclusive
  h->Observe(0.5);
  h->Observe(5);
  const std::string text = r.RenderText();
  EXPECT_NE(text.find("# TYPE c_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("c_total{reason=\"eos\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("c_total{reason=\"length\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("g 0.25\n"), std::string::npos);
  EXPECT_NE(text.find("h_seconds_bucket{le=\"0.001\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("h_seconds_bucket{le=\"0.01\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("h_seconds_bucket{le=\"1\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("h_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("h_seconds_count 4\n"), std::string::npos);
  EXPECT_EQ(text.find("# TYPE c_total"), text.rfind("# TYPE c_total"));  // one family header
}

// The Gateway API Inference Extension's model-server protocol: queued and running requests and KV
// utilisation (0..1) as gauges, and the cache-config info metric with vLLM's label names.
TEST(MetricsTest, ExportsTheModelServerProtocolGauges) {
  MetricsRegistry r;
  EngineMetrics metrics(r);
  KvCacheSpec kv;
  kv.block_size = 16;
  kv.num_blocks = 1234;
  metrics.SetModelInfo(testing::TinyConfig(), kv, "cpu");
  metrics.OnOccupancy({.running = 3, .waiting = 5, .kv_usage_ratio = 0.25});
  const std::string text = r.RenderText();
  for (const char* line : {"# TYPE gqa_requests_waiting gauge\ngqa_requests_waiting 5\n",
                           "# TYPE gqa_requests_running gauge\ngqa_requests_running 3\n",
                           "# TYPE gqa_kv_cache_usage_ratio gauge\ngqa_kv_cache_usage_ratio 0.25\n",
                           "# TYPE gqa_cache_config_info gauge\n"
                           "gqa_cache_config_info{block_size=\"16\",num_gpu_blocks=\"1234\"} 1\n",
                           "# TYPE gqa_tensor_parallel_size gauge\ngqa_tensor_parallel_size 1\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin\n" << text;
  }
}

// Under tensor parallelism the gauge says how many GPUs hold the model (the pool gauges and
// gqa_gpu_memory_bytes being one rank's).
TEST(MetricsTest, ExportsTheTensorParallelSize) {
  MetricsRegistry r;
  EngineMetrics metrics(r);
  KvCacheSpec kv;
  kv.block_size = 16;
  kv.num_blocks = 100;
  metrics.SetModelInfo(testing::TinyConfig(), kv, "cuda", "2 x NVIDIA H100 80GB HBM3",
                       {{"weights", 1000}}, 2);
  const std::string text = r.RenderText();
  EXPECT_NE(text.find("\ngqa_tensor_parallel_size 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gqa_gpu_memory_bytes{kind=\"weights\"} 1000\n"), std::string::npos) << text;
}

TEST(MetricsTest, BucketBoundsAreShortestRoundTripDecimals) {
  MetricsRegistry r;
  r.AddHistogram("h_seconds", "A histogram.", LatencyBuckets());
  r.AddGauge("g", "A gauge.")->Set(0.1 + 0.2);
  const std::string text = r.RenderText();
  // A query selecting le="0.1" must find the bucket (17 digits printed 0.10000000000000001).
  EXPECT_NE(text.find("h_seconds_bucket{le=\"0.1\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"0.15\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"0.3\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"7.5\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"60\"} 0\n"), std::string::npos) << text;
  const std::string buckets = text.substr(0, text.find("# HELP g "));
  EXPECT_EQ(buckets.find("0000000"), std::string::npos) << buckets;
  EXPECT_EQ(buckets.find("9999999"), std::string::npos) << buckets;
  // Values still round-trip exactly.
  EXPECT_NE(text.find("g 0.30000000000000004\n"), std::string::npos) << text;
  for (double b : LatencyBuckets()) EXPECT_EQ(std::stod(FormatValue(b)), b);
  EXPECT_EQ(FormatValue(50e-6), "5e-05");
  EXPECT_EQ(FormatValue(1e-4), "0.0001");
  EXPECT_EQ(FormatValue(1024), "1024");
  EXPECT_EQ(FormatValue(123456789012.0), "123456789012");
  EXPECT_EQ(FormatValue(1e22), "1e+22");
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
}

TEST(ProcessMetricsTest, ParsesProcStat) {
  // proc(5): pid (comm) state ppid ... utime(14) stime(15) ... starttime(22) vsize(23) rss(24)
  const std::string line =
      "4242 (gqa) server (x)) S 1 4242 4242 0 -1 4194560 9000 0 12 0 250 75 0 0 20 0 9 0 "
      "123456 987654321 4321 18446744073709551615 1 1 0 0 0 0 0 4096 17642 0 0 0 17 3 0 0";
  const auto stat = ParseProcStat(line);
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(stat->utime_ticks, 250u);
  EXPECT_EQ(stat->stime_ticks, 75u);
  EXPECT_EQ(stat->start_time_ticks, 123456u);
  EXPECT_EQ(stat->virtual_memory_bytes, 987654321u);
  EXPECT_EQ(stat->resident_pages, 4321);
  EXPECT_FALSE(ParseProcStat("4242 (gqa) S 1 2 3").has_value());
  EXPECT_FALSE(ParseProcStat("no parenthesis").has_value());
}

// The value of the sample line "name value" in the exposition text, or -1.
double Sample(const std::string& text, const std::string& name) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

TEST(ProcessMetricsTest, ExportsTheStandardSeriesOfThisProcess) {
  MetricsRegistry r;
  AddProcessMetrics(r);
  volatile double spin = 0;  // some CPU time to see
  for (int i = 0; i < 20'000'000; ++i) spin = spin + 1;
  const std::string text = r.RenderText();
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter\n"), std::string::npos);
  for (const char* gauge : {"process_resident_memory_bytes", "process_virtual_memory_bytes",
                            "process_start_time_seconds", "process_open_fds", "process_max_fds"}) {
    EXPECT_NE(text.find(std::string("# TYPE ") + gauge + " gauge\n"), std::string::npos) << gauge;
  }
  EXPECT_GT(Sample(text, "process_cpu_seconds_total"), 0);
  const double rss = Sample(text, "process_resident_memory_bytes");
  EXPECT_GT(rss, 1 << 20);
  EXPECT_GE(Sample(text, "process_virtual_memory_bytes"), rss);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const double start = Sample(text, "process_start_time_seconds");
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 3600);  // this test binary started less than an hour ago
  // stdin, stdout and stderr at least
  EXPECT_GE(Sample(text, "process_open_fds"), 3);
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(Sample(text, "process_max_fds"), static_cast<double>(limit.rlim_cur));
  // CPU time only grows between scrapes.
  EXPECT_GE(Sample(r.RenderText(), "process_cpu_seconds_total"),
            Sample(text, "process_cpu_seconds_total"));
}

TEST(MetricsTest, LatencyBucketsResolveSubMillisecondSteps) {
  const auto b = LatencyBuckets();
  EXPECT_LE(b.front(), 100e-6);
  EXPECT_GE(std::count_if(b.begin(), b.end(), [](double x) { return x <= 2e-3; }), 10);
  EXPECT_GE(b.back(), 60.0);
}

}  // namespace
}  // namespace gqa
