// gqa-loadgen: drives gqa-server with many concurrent streaming Generate requests, closed loop
// (--concurrency C) or open loop (--request_rate R, Poisson arrivals), and reports client latencies
// (TTFT, TPOT, ITL, E2E as vLLM's benchmark_serving defines them) and, with --metrics_url, the
// server's own step figures from /metrics deltas over the measured part. See client/loadgen/*.h.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/dashed_flags.h"
#include "grpcpp/grpcpp.h"
#include "loadgen/http_runner.h"
#include "loadgen/metrics_scraper.h"
#include "loadgen/monitor.h"
#include "loadgen/prometheus_text.h"
#include "loadgen/report.h"
#include "loadgen/runner.h"
#include "loadgen/server_view.h"
#include "loadgen/workload.h"

// Numbers are read as text and checked here, so that a bad one is one line naming it and exit 2.
ABSL_FLAG(std::string, server, "localhost:50051", "gqa-server gRPC address host:port");
ABSL_FLAG(std::string, http_url, "",
          "drive the server's OpenAI-compatible HTTP API instead of gRPC: streaming "
          "/v1/completions at this base URL, e.g. http://localhost:8000 (--server still answers "
          "GetModelInfo)");
ABSL_FLAG(std::string, metrics_url, "",
          "gqa-server's /metrics, e.g. http://127.0.0.1:50052/metrics (empty: no server view)");
ABSL_FLAG(std::string, num_requests, "100", "measured requests");
ABSL_FLAG(std::string, warmup_requests, "0",
          "requests sent first and finished before the measured ones, excluded from every figure");
ABSL_FLAG(std::string, concurrency, "",
          "closed loop: this many streams, each sending its next request when one finishes");
ABSL_FLAG(std::string, request_rate, "",
          "open loop: requests per second, Poisson arrivals (inf: all at once)");
ABSL_FLAG(std::string, max_concurrency, "0", "open loop: most requests in flight (0: no cap)");
ABSL_FLAG(std::string, input_len, "", "prompt tokens of every request");
ABSL_FLAG(std::string, output_len, "", "generated tokens of every request");
ABSL_FLAG(std::string, input_len_range, "", "a:b: prompt lengths uniform in a..b");
ABSL_FLAG(std::string, output_len_range, "", "a:b: output lengths uniform in a..b");
ABSL_FLAG(std::string, dataset, "",
          "JSONL, one request a line: {\"prompt_len\": n, \"output_len\": m} or "
          "{\"prompt_token_ids\": [...], \"output_len\": m} (in order, cycled)");
ABSL_FLAG(std::string, shared_prefix_len, "0",
          "prefix caching: every request (every conversation) begins with the same this many "
          "random tokens, a system prompt, before its own --input_len tokens");
ABSL_FLAG(std::string, turns, "1",
          "multi-turn replay: conversations of this many turns, each turn resending the "
          "conversation so far (prompt, a reply of --output_len random tokens, a new user turn of "
          "--input_len) once its previous turn is done; --num_requests counts turns");
ABSL_FLAG(std::string, min_token_id, "10", "random prompt tokens are in [this, vocab_size)");
ABSL_FLAG(std::string, seed, "0", "seed of the prompts, lengths and arrival times");
ABSL_FLAG(std::string, timeout, "600", "deadline of each request in seconds");
ABSL_FLAG(std::string, num_connections, "0",
          "gRPC connections, requests spread round-robin (0: one per 128 that may be in flight)");
ABSL_FLAG(std::string, json, "", "write the JSON report here (-: stdout)");
ABSL_FLAG(std::string, save_metrics, "",
          "write the /metrics scrapes before and after the measured part to PREFIX.before.prom "
          "and PREFIX.after.prom");
ABSL_FLAG(std::string, label, "", "copied into the report");

namespace pb = gqa::v1;
namespace lg = gqa::loadgen;

namespace {

[[noreturn]] void BadFlag(absl::string_view flag, absl::string_view value, absl::string_view why) {
  std::cerr << "gqa-loadgen: --" << flag << "=" << value << ": " << why << "\n";
  std::exit(2);
}

[[noreturn]] void Die(absl::string_view message, int code) {
  std::cerr << "gqa-loadgen: " << message << "\n";
  std::exit(code);
}

int64_t IntFlag(absl::string_view flag, const std::string& text, int64_t min) {
  int64_t v;
  if (!absl::SimpleAtoi(text, &v) || v < min) {
    BadFlag(flag, text, absl::StrCat("must be an integer >= ", min));
  }
  return v;
}

double PositiveDouble(absl::string_view flag, const std::string& text, bool allow_inf) {
  double v;
  if (!absl::SimpleAtod(text, &v) || std::isnan(v) || v <= 0 || (std::isinf(v) && !allow_inf)) {
    BadFlag(flag, text, allow_inf ? "must be a number > 0 or inf" : "must be a finite number > 0");
  }
  return v;
}

struct Options {
  lg::RunInfo run;
  int64_t num_requests = 0;
  int64_t warmup_requests = 0;
  lg::WorkloadSource source;
  uint32_t min_token_id = 0;
  int64_t shared_prefix_len = 0;
  uint64_t seed = 0;
  double timeout_s = 0;
  int num_connections = 0;
};

std::string ReadFileOrDie(absl::string_view flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) BadFlag(flag, path, "cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// --input_len/--input_len_range (or --output_...): exactly one, unless a dataset gives lengths.
lg::LengthRange Lengths(const char* fixed_flag, const std::string& fixed, const char* range_flag,
                        const std::string& range) {
  if (!fixed.empty() && !range.empty()) {
    BadFlag(range_flag, range,
            absl::StrCat("give --", fixed_flag, " or --", range_flag, ", not both"));
  }
  if (range.empty()) {
    if (fixed.empty())
      Die(absl::StrCat("give --", fixed_flag, ", --", range_flag, " or --dataset"), 2);
    const int64_t n = IntFlag(fixed_flag, fixed, 1);
    return {n, n};
  }
  absl::StatusOr<lg::LengthRange> r = lg::ParseLengthRange(range);
  if (!r.ok()) BadFlag(range_flag, range, r.status().message());
  return *r;
}

lg::WorkloadSource ParseWorkload() {
  lg::WorkloadSource source;
  const std::string dataset = absl::GetFlag(FLAGS_dataset);
  if (dataset.empty()) {
    source.input = Lengths("input_len", absl::GetFlag(FLAGS_input_len), "input_len_range",
                           absl::GetFlag(FLAGS_input_len_range));
    source.output = Lengths("output_len", absl::GetFlag(FLAGS_output_len), "output_len_range",
                            absl::GetFlag(FLAGS_output_len_range));
    return source;
  }
  for (const auto& [flag, value] : {std::pair{"input_len", absl::GetFlag(FLAGS_input_len)},
                                    {"output_len", absl::GetFlag(FLAGS_output_len)},
                                    {"input_len_range", absl::GetFlag(FLAGS_input_len_range)},
                                    {"output_len_range", absl::GetFlag(FLAGS_output_len_range)}}) {
    if (!value.empty()) BadFlag(flag, value, "--dataset gives the lengths");
  }
  absl::StatusOr<std::vector<lg::DatasetEntry>> entries =
      lg::ParseDataset(ReadFileOrDie("dataset", dataset));
  if (!entries.ok()) BadFlag("dataset", dataset, entries.status().message());
  source.dataset = *std::move(entries);
  return source;
}

Options ParseOptions() {
  Options o;
  o.run.label = absl::GetFlag(FLAGS_label);
  o.num_requests = IntFlag("num_requests", absl::GetFlag(FLAGS_num_requests), 1);
  o.warmup_requests = IntFlag("warmup_requests", absl::GetFlag(FLAGS_warmup_requests), 0);
  const std::string concurrency = absl::GetFlag(FLAGS_concurrency);
  const std::string rate = absl::GetFlag(FLAGS_request_rate);
  const std::string max_concurrency = absl::GetFlag(FLAGS_max_concurrency);
  if (concurrency.empty() == rate.empty()) {
    Die("give exactly one of --concurrency (closed loop) and --request_rate (open loop)", 2);
  }
  if (!concurrency.empty()) {
    o.run.mode = lg::LoopMode::kClosed;
    o.run.concurrency = static_cast<int>(IntFlag("concurrency", concurrency, 1));
    if (IntFlag("max_concurrency", max_concurrency, 0) != 0) {
      BadFlag("max_concurrency", max_concurrency, "applies to --request_rate (open loop) only");
    }
  } else {
    o.run.mode = lg::LoopMode::kOpen;
    o.run.request_rate = PositiveDouble("request_rate", rate, /*allow_inf=*/true);
    o.run.max_concurrency = static_cast<int>(IntFlag("max_concurrency", max_concurrency, 0));
  }
  o.source = ParseWorkload();
  o.shared_prefix_len = IntFlag("shared_prefix_len", absl::GetFlag(FLAGS_shared_prefix_len), 0);
  o.source.turns = IntFlag("turns", absl::GetFlag(FLAGS_turns), 1);
  const std::string min_token = absl::GetFlag(FLAGS_min_token_id);
  o.min_token_id = static_cast<uint32_t>(IntFlag("min_token_id", min_token, 0));
  if (!absl::SimpleAtoi(absl::GetFlag(FLAGS_seed), &o.seed)) {
    BadFlag("seed", absl::GetFlag(FLAGS_seed), "must be an integer >= 0");
  }
  o.timeout_s = PositiveDouble("timeout", absl::GetFlag(FLAGS_timeout), /*allow_inf=*/false);
  o.num_connections =
      static_cast<int>(IntFlag("num_connections", absl::GetFlag(FLAGS_num_connections), 0));
  if (!absl::GetFlag(FLAGS_save_metrics).empty() && absl::GetFlag(FLAGS_metrics_url).empty()) {
    BadFlag("save_metrics", absl::GetFlag(FLAGS_save_metrics), "needs --metrics_url");
  }
  return o;
}

// Most requests that can be in flight at once.
int64_t MaxInFlight(const Options& o) {
  if (o.run.mode == lg::LoopMode::kClosed) return o.run.concurrency;
  return o.run.max_concurrency ? o.run.max_concurrency : o.num_requests;
}

// One channel per connection (a local subchannel pool each, so they do not share one), since the
// server caps the streams of a connection.
std::vector<std::unique_ptr<pb::Generation::Stub>> Connect(const Options& o) {
  int64_t n = o.num_connections;
  if (n == 0) n = std::clamp<int64_t>((MaxInFlight(o) + 127) / 128, 1, 64);
  std::vector<std::unique_ptr<pb::Generation::Stub>> stubs;
  for (int64_t i = 0; i < n; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stubs.push_back(pb::Generation::NewStub(grpc::CreateCustomChannel(
        absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials(), args)));
  }
  return stubs;
}

pb::ModelInfo GetModelInfoOrDie(pb::Generation::Stub& stub) {
  grpc::ClientContext context;
  context.set_wait_for_ready(true);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  pb::ModelInfo info;
  const grpc::Status status = stub.GetModelInfo(&context, pb::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    Die(absl::StrCat("GetModelInfo at ", absl::GetFlag(FLAGS_server),
                     " failed: ", status.error_message()),
        1);
  }
  return info;
}

// Requests that the model cannot take are refused before anything is sent.
void CheckAgainstModel(const pb::ModelInfo& info, const std::vector<lg::RequestSpec>& requests) {
  for (const lg::RequestSpec& r : requests) {
    const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.output_len;
    if (info.max_model_len() > 0 && total > info.max_model_len()) {
      Die(absl::StrCat("a request of ", r.prompt.size(), " prompt + ", r.output_len,
                       " output tokens exceeds the server's max_model_len ", info.max_model_len()),
          2);
    }
    for (uint32_t id : r.prompt) {
      if (id >= info.vocab_size()) {
        Die(absl::StrCat("--dataset holds token id ", id, ", not below the model's vocab_size ",
                         info.vocab_size()),
            2);
      }
    }
  }
}

// A scrape of /metrics: its text and samples.
struct Scrape {
  std::string text;
  std::vector<lg::Sample> samples;
};

absl::StatusOr<Scrape> TakeScrape(const lg::MetricsScraper& scraper) {
  absl::StatusOr<std::string> text = scraper.Fetch();
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<lg::Sample>> samples = lg::ParsePrometheusText(*text);
  if (!samples.ok()) return samples.status();
  return Scrape{*std::move(text), *std::move(samples)};
}

void WriteFileOrDie(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out.flush()) Die(absl::StrCat("cannot write ", path), 1);
}

// The first few distinct failure messages, so that a failed run says why.
void PrintErrors(const std::vector<lg::RequestRecord>& records) {
  std::vector<std::string> seen;
  for (const lg::RequestRecord& r : records) {
    if (r.ok || seen.size() >= 5) continue;
    std::string line = absl::StrCat(r.error, ": ", r.error_message);
    if (std::find(seen.begin(), seen.end(), line) != seen.end()) continue;
    std::cerr << "gqa-loadgen: request failed: " << line << "\n";
    seen.push_back(std::move(line));
  }
}

// gRPC (lg::Runner) or HTTP (lg::HttpRunner): the same requests, the same records.
using RunFn = std::function<std::vector<lg::RequestRecord>(const std::vector<lg::RequestSpec>&,
                                                           const std::vector<double>&, int,
                                                           lg::Clock::time_point, lg::Progress&)>;

std::vector<lg::RequestRecord> RunPart(const RunFn& run, const char* what,
                                       const std::vector<lg::RequestSpec>& requests,
                                       const std::vector<double>& arrivals, int max_in_flight,
                                       std::function<void()> poll) {
  lg::Progress progress;
  const lg::Clock::time_point epoch = lg::Clock::now();
  lg::Monitor monitor(what, progress, std::move(poll));
  return run(requests, arrivals, max_in_flight, epoch, progress);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "gqa-loadgen --server host:port [--metrics_url http://host:port/metrics] --num_requests N "
      "(--concurrency C | --request_rate R [--max_concurrency M]) (--input_len L | "
      "--input_len_range a:b) (--output_len L | --output_len_range a:b) | --dataset FILE.jsonl "
      "[--shared_prefix_len N] [--turns T] [--json FILE] [--save_metrics PREFIX]");
  gqa::ShowProgramFlagsInHelp();
  gqa::AcceptDashedFlags(argc, argv);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) Die(absl::StrCat("unexpected argument ", positional[1]), 2);
  const Options o = ParseOptions();

  std::optional<lg::MetricsScraper> scraper;
  if (const std::string url = absl::GetFlag(FLAGS_metrics_url); !url.empty()) {
    absl::StatusOr<lg::MetricsScraper> s = lg::MetricsScraper::Create(url);
    if (!s.ok()) BadFlag("metrics_url", url, s.status().message());
    scraper = *std::move(s);
  }
  auto stubs = Connect(o);
  const pb::ModelInfo info = GetModelInfoOrDie(*stubs[0]);
  if (o.min_token_id >= info.vocab_size()) {
    BadFlag("min_token_id", absl::GetFlag(FLAGS_min_token_id),
            absl::StrCat("must be below the model's vocab_size ", info.vocab_size()));
  }
  lg::WorkloadSource source = o.source;
  // One system prompt for the warmup and the measured requests alike.
  source.shared_prefix =
      lg::RandomTokens(o.shared_prefix_len, o.seed + 3, o.min_token_id, info.vocab_size());
  const auto requests =
      lg::BuildRequests(source, o.num_requests, o.seed, o.min_token_id, info.vocab_size());
  const auto warmup =
      lg::BuildRequests(source, o.warmup_requests, o.seed + 1, o.min_token_id, info.vocab_size());
  CheckAgainstModel(info, requests);
  CheckAgainstModel(info, warmup);
  if (scraper) {
    if (absl::StatusOr<Scrape> s = TakeScrape(*scraper); !s.ok()) {
      Die(absl::StrCat("--metrics_url: ", s.status().message()), 1);
    }
  }

  lg::Runner grpc_runner(std::move(stubs), o.timeout_s);
  lg::HttpRunner http_runner(absl::GetFlag(FLAGS_http_url), "", o.timeout_s);
  const bool over_http = !absl::GetFlag(FLAGS_http_url).empty();
  const RunFn runner = [&](const std::vector<lg::RequestSpec>& r, const std::vector<double>& a,
                           int cap, lg::Clock::time_point epoch, lg::Progress& progress) {
    return over_http ? http_runner.Run(r, a, cap, epoch, progress)
                     : grpc_runner.Run(r, a, cap, epoch, progress);
  };
  const int cap = static_cast<int>(o.run.mode == lg::LoopMode::kClosed ? o.run.concurrency
                                                                       : o.run.max_concurrency);
  if (!warmup.empty()) {
    const auto records = RunPart(runner, "warmup", warmup, std::vector<double>(warmup.size(), 0.0),
                                 static_cast<int>(MaxInFlight(o)), nullptr);
    PrintErrors(records);
  }

  std::optional<Scrape> before;
  if (scraper) {
    absl::StatusOr<Scrape> s = TakeScrape(*scraper);
    if (!s.ok()) Die(absl::StrCat("--metrics_url: ", s.status().message()), 1);
    before = *std::move(s);
  }
  std::optional<double> kv_peak;
  std::function<void()> poll;
  if (scraper) {
    poll = [&] {
      absl::StatusOr<Scrape> s = TakeScrape(*scraper);
      if (!s.ok()) return;
      if (const auto v = lg::SumSamples(s->samples, "gqa_kv_cache_usage_ratio")) {
        kv_peak = kv_peak ? std::max(*kv_peak, *v) : *v;
      }
    };
  }
  const std::vector<double> arrivals =
      o.run.mode == lg::LoopMode::kClosed
          ? std::vector<double>(requests.size(), 0.0)
          : lg::ArrivalOffsets(o.num_requests, o.run.request_rate, o.seed + 2);
  const auto records = RunPart(runner, "measured", requests, arrivals, cap, poll);
  PrintErrors(records);

  std::optional<nlohmann::ordered_json> server;
  if (scraper) {
    absl::StatusOr<Scrape> after = TakeScrape(*scraper);
    if (!after.ok()) {
      std::cerr << "gqa-loadgen: --metrics_url after the run: " << after.status().message()
                << "; no server figures\n";
    } else {
      server = lg::ServerFigures(before->samples, after->samples, kv_peak);
      const std::string prefix = absl::GetFlag(FLAGS_save_metrics);
      if (!prefix.empty()) {
        WriteFileOrDie(prefix + ".before.prom", before->text);
        WriteFileOrDie(prefix + ".after.prom", after->text);
      }
    }
  }

  const lg::ClientStats stats = lg::ComputeClientStats(records);
  const std::string json_path = absl::GetFlag(FLAGS_json);
  (json_path == "-" ? std::cerr : std::cout) << lg::ReportTable(o.run, stats, server) << std::flush;
  if (!json_path.empty()) {
    const std::string json = lg::ReportJson(o.run, stats, server).dump(2) + "\n";
    if (json_path == "-") {
      std::cout << json << std::flush;
    } else {
      WriteFileOrDie(json_path, json);
    }
  }
  return stats.failed == 0 ? 0 : 1;
}
