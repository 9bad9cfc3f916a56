// Startup and shutdown of the whole server: load, build the engine, serve, drain on SIGTERM.
#pragma once

#include "options/serving_options.h"

namespace gqa {

// Runs until SIGTERM or SIGINT; returns the process exit code. Startup failures print one line.
int RunServer(const ServingOptions& options);

}  // namespace gqa
