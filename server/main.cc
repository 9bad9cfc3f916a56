// gqa-server: flags -> ServingOptions (filled and validated once) -> RunServer.
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/dashed_flags.h"
#include "google/protobuf/stubs/logging.h"
#include "options/serving_flags.h"
#include "server.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("gqa-server --model DIR [flags]: serve a Llama-family model");
  gqa::ShowProgramFlagsInHelp();
  gqa::AcceptDashedFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  // Protobuf reports every malformed client message on stderr; a client could flood the log.
  // The client gets INVALID_ARGUMENT; the log keeps it at debug level.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string& message) {
        spdlog::debug("protobuf: {}", message);
      });

  absl::StatusOr<gqa::ServingOptions> options = gqa::ServingOptionsFromFlags();
  absl::Status valid = options.ok() ? gqa::ValidateServingOptions(*options) : options.status();
  if (!valid.ok()) {
    std::cerr << "gqa-server: " << valid.message() << "\n";
    return 2;
  }
  return gqa::RunServer(*options);
}
