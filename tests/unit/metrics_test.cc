#include "metrics/registry.h"

#include <gtest/gtest.h>

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

TEST(MetricsTest, LatencyBucketsResolveSubMillisecondSteps) {
  const auto b = LatencyBuckets();
  EXPECT_LE(b.front(), 100e-6);
  EXPECT_GE(std::count_if(b.begin(), b.end(), [](double x) { return x <= 2e-3; }), 10);
  EXPECT_GE(b.back(), 60.0);
}

}  // namespace
}  // namespace gqa
