#include "loadgen/http_runner.h"

#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "httplib.h"
#include "nlohmann/json.hpp"

namespace gqa::loadgen {
namespace {

double SecondsSince(Clock::time_point epoch) {
  return std::chrono::duration<double>(Clock::now() - epoch).count();
}

std::string RequestBody(const RequestSpec& spec) {
  nlohmann::json body{{"prompt", spec.prompt}, {"max_tokens", spec.output_len},
                      {"temperature", 0},      {"ignore_eos", true},
                      {"stream", true},        {"stream_options", {{"include_usage", true}}}};
  return body.dump();
}

// Reads SSE events ("data: {...}\n\n") into a record as they arrive.
class SseReader {
 public:
  SseReader(RequestRecord& record, Clock::time_point epoch, Progress& progress)
      : record_(record), epoch_(epoch), progress_(progress) {}

  bool Feed(const char* data, size_t size) {
    buffer_.append(data, size);
    for (size_t end; (end = buffer_.find("\n\n")) != std::string::npos;) {
      const std::string event = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      if (event.rfind("data: ", 0) == 0) OnData(event.substr(6));
    }
    return true;
  }

  bool done() const { return done_; }

 private:
  void OnData(const std::string& data) {
    const double now = SecondsSince(epoch_);
    if (data == "[DONE]") {
      done_ = true;
      return;
    }
    const nlohmann::json event = nlohmann::json::parse(data, nullptr, false);
    if (event.is_discarded()) return;
    if (event.contains("error")) {
      record_.error = "STREAM_ERROR";
      record_.error_message = event["error"].value("message", "");
      return;
    }
    if (const auto usage = event.find("usage"); usage != event.end() && usage->is_object()) {
      record_.output_tokens = usage->value("completion_tokens", 0);
    }
    for (const auto& choice : event.value("choices", nlohmann::json::array())) {
      record_.token_message_s.push_back(now);
      record_.token_message_tokens.push_back(1);
      progress_.tokens.fetch_add(1);
      if (!choice["finish_reason"].is_null()) record_.final_s = now;
    }
  }

  RequestRecord& record_;
  const Clock::time_point epoch_;
  Progress& progress_;
  std::string buffer_;
  bool done_ = false;
};

}  // namespace

HttpRunner::HttpRunner(std::string base_url, std::string token, double timeout_s)
    : base_url_(std::move(base_url)), token_(std::move(token)), timeout_s_(timeout_s) {}

RequestRecord HttpRunner::RunOne(const RequestSpec& spec, Clock::time_point epoch,
                                 Progress& progress) const {
  RequestRecord record;
  record.prompt_tokens = static_cast<int64_t>(spec.prompt.size());
  httplib::Client client(base_url_);
  const auto timeout = std::chrono::microseconds(static_cast<int64_t>(timeout_s_ * 1e6));
  client.set_read_timeout(timeout);
  client.set_write_timeout(timeout);
  client.set_connection_timeout(std::chrono::seconds(15));
  client.set_tcp_nodelay(true);  // the body leaves with the headers, not after their ACK
  httplib::Headers headers;
  if (!token_.empty()) headers.emplace("Authorization", "Bearer " + token_);
  SseReader reader(record, epoch, progress);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = headers;
  req.headers.emplace("Content-Type", "application/json");
  req.body = RequestBody(spec);
  req.content_receiver = [&reader](const char* data, size_t size, uint64_t, uint64_t) {
    return reader.Feed(data, size);
  };
  record.send_s = SecondsSince(epoch);
  httplib::Result result = client.send(req);
  record.done_s = SecondsSince(epoch);
  if (!result) {
    record.error = "HTTP_" + httplib::to_string(result.error());
    record.error_message = "the request failed before a response";
  } else if (result->status != 200) {
    record.error = "HTTP_" + std::to_string(result->status);
    record.error_message = result->body.substr(0, 300);
  } else if (!record.error.empty()) {
    // an error event in the stream
  } else if (!reader.done() || std::isnan(record.final_s)) {
    record.error = "NO_FINAL_MESSAGE";
    record.error_message = "the stream ended without a finish_reason and [DONE]";
  } else {
    record.ok = true;
  }
  return record;
}

std::vector<RequestRecord> HttpRunner::Run(const std::vector<RequestSpec>& requests,
                                           const std::vector<double>& arrivals, int max_in_flight,
                                           Clock::time_point epoch, Progress& progress) {
  progress.total = static_cast<int64_t>(requests.size());
  std::vector<RequestRecord> records(requests.size());
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    std::this_thread::sleep_until(epoch + std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(arrivals[i])));
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return max_in_flight == 0 || in_flight < max_in_flight; });
      ++in_flight;
    }
    threads.emplace_back([&, i] {
      RequestRecord record = RunOne(requests[i], epoch, progress);
      if (!record.ok) progress.failed.fetch_add(1);
      progress.finished.fetch_add(1);
      std::lock_guard lock(mu);
      records[i] = std::move(record);
      --in_flight;
      cv.notify_all();
    });
  }
  for (std::thread& t : threads) t.join();
  return records;
}

}  // namespace gqa::loadgen
