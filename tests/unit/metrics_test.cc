#include "metrics/registry.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>

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

TEST(MetricsTest, LatencyBucketsResolveSubMillisecondSteps) {
  const auto b = LatencyBuckets();
  EXPECT_LE(b.front(), 100e-6);
  EXPECT_GE(std::count_if(b.begin(), b.end(), [](double x) { return x <= 2e-3; }), 10);
  EXPECT_GE(b.back(), 60.0);
}

}  // namespace
}  // namespace gqa
