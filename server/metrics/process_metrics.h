// The standard process_* series every Prometheus client library exports (CPU time, memory, file
// descriptors, start time), read from /proc/self at each scrape.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace gqa {

class MetricsRegistry;

// The fields of /proc/<pid>/stat the process series need (proc(5)), in clock ticks and bytes.
struct ProcStat {
  uint64_t utime_ticks = 0;
  uint64_t stime_ticks = 0;
  uint64_t start_time_ticks = 0;  // since boot
  uint64_t virtual_memory_bytes = 0;
  int64_t resident_pages = 0;
};
// Parses one /proc/<pid>/stat line; nullopt when it is not one. The command name may hold
// spaces and parentheses: fields are counted after its last ')'.
std::optional<ProcStat> ParseProcStat(std::string_view line);

// Adds process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
// process_start_time_seconds, process_open_fds and process_max_fds to the registry, refreshed
// each time it renders (where /proc/self cannot be read the values stay 0).
void AddProcessMetrics(MetricsRegistry& registry);

}  // namespace gqa
