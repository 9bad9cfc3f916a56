// gqa-server's flags (defined in serving_flags.cc, with their names, defaults and help) and the
// one function that reads them into the options tree.
#pragma once

#include "absl/status/statusor.h"
#include "options/serving_options.h"

namespace gqa {

// The tree as the parsed flags give it. Fails (INVALID_ARGUMENT, naming the flag) only where a
// flag's text does not parse (--backend, --max_request_size, --kv_cache_memory); range and
// combination checks are ValidateServingOptions'.
absl::StatusOr<ServingOptions> ServingOptionsFromFlags();

}  // namespace gqa
