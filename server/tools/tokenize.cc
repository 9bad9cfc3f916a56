// gqa-tokenize: the tokenizer from the command line, for parity tests and the benchmark.
//   gqa-tokenize TOKENIZER_DIR --cases cases.json   JSON lines in, per text: ids, prompt ids
//                                                    (BOS added as a Generate prompt gets it),
//                                                    decoded text and the text streamed one
//                                                    token at a time
//   gqa-tokenize TOKENIZER_DIR --bench FILE [--repeat N]   single-thread encode throughput
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

int RunCases(const gqa::Tokenizer& tokenizer, const std::string& path) {
  const nlohmann::json texts = nlohmann::json::parse(ReadFile(path)).at("texts");
  nlohmann::json out = nlohmann::json::array();
  for (const auto& t : texts) {
    const std::vector<int32_t> ids = tokenizer.Encode(t.get<std::string>());
    gqa::IncrementalDetokenizer stream(&tokenizer);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.Add({id});
    streamed += stream.Flush();
    // Streaming any prefix that ends on a whole character, then flushing, gives that prefix's
    // full decode (every prefix of short texts, 32 spread over long ones). A prefix that ends
    // inside a byte-fallback character is skipped: `tokenizers` then turns the whole byte run,
    // already complete characters included, into U+FFFD, which no stream can take back.
    bool prefixes_ok = true;
    const size_t step = ids.size() <= 128 ? 1 : ids.size() / 32;
    for (size_t k = 1; k <= ids.size() && prefixes_ok; k += step) {
      gqa::IncrementalDetokenizer partial(&tokenizer);
      std::string text;
      for (size_t i = 0; i < k; ++i) text += partial.Add({ids[i]});
      text += partial.Flush();
      const std::string full = tokenizer.Decode(std::vector<int32_t>(ids.begin(), ids.begin() + k));
      if (full.size() >= 3 && full.compare(full.size() - 3, 3, "\xEF\xBF\xBD") == 0) continue;
      prefixes_ok = text == full;
    }
    out.push_back({{"ids", ids},
                   {"prompt_ids", tokenizer.EncodePrompt(t.get<std::string>())},
                   {"decoded", tokenizer.Decode(ids)},
                   {"streamed", streamed},
                   {"prefixes_ok", prefixes_ok}});
  }
  std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return 0;
}

int RunBench(const gqa::Tokenizer& tokenizer, const std::string& path, int repeat) {
  std::vector<std::string> lines;
  std::istringstream in(ReadFile(path));
  size_t bytes = 0;
  for (std::string line; std::getline(in, line);) {
    bytes += line.size();
    lines.push_back(std::move(line));
  }
  size_t tokens = 0;
  const auto cold_start = std::chrono::steady_clock::now();
  for (const auto& l : lines) tokens += tokenizer.Encode(l).size();  // fills the word cache
  const double cold =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - cold_start).count();
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeat; ++r) {
    for (const auto& l : lines) tokens += tokenizer.Encode(l).size();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "{\"bytes\": " << bytes * repeat << ", \"seconds\": " << seconds
            << ", \"mb_per_s\": " << bytes * repeat / seconds / 1e6
            << ", \"cold_mb_per_s\": " << bytes / cold / 1e6 << "}\n";
  return tokens > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: gqa-tokenize DIR --cases FILE | --bench FILE [--repeat N]\n";
    return 2;
  }
  auto tokenizer = gqa::Tokenizer::Load(argv[1]);
  if (!tokenizer.ok()) {
    std::cerr << "gqa-tokenize: " << tokenizer.status().message() << "\n";
    return 1;
  }
  const std::string mode = argv[2];
  if (mode == "--cases") return RunCases(**tokenizer, argv[3]);
  if (mode == "--bench") return RunBench(**tokenizer, argv[3], argc > 5 ? std::atoi(argv[5]) : 20);
  return 2;
}
