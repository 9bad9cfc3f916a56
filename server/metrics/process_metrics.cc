#include "metrics/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "metrics/registry.h"

namespace gqa {
namespace {

std::string ReadFirstLine(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// Seconds since the epoch at which the machine booted (/proc/stat's btime), or 0.
double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double btime = 0;
      in >> btime;
      return btime;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

double OpenFds() {
  std::error_code ec;
  double count = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++count;
  }
  return ec ? 0 : count - 1;  // less the descriptor that lists the directory
}

}  // namespace

std::optional<ProcStat> ParseProcStat(std::string_view line) {
  const size_t close = line.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  std::vector<std::string_view> fields;  // fields[0] is field 3 of proc(5), the state
  size_t pos = close + 1;
  while (pos < line.size()) {
    while (pos < line.size() && line[pos] == ' ') ++pos;
    const size_t end = std::min(line.find(' ', pos), line.size());
    if (end > pos) fields.push_back(line.substr(pos, end - pos));
    pos = end;
  }
  if (fields.size() < 22) return std::nullopt;
  auto number = [&](int field, auto& out) {
    const std::string_view f = fields[field - 3];
    return std::from_chars(f.data(), f.data() + f.size(), out).ec == std::errc();
  };
  ProcStat stat;
  if (!number(14, stat.utime_ticks) || !number(15, stat.stime_ticks) ||
      !number(22, stat.start_time_ticks) || !number(23, stat.virtual_memory_bytes) ||
      !number(24, stat.resident_pages)) {
    return std::nullopt;
  }
  return stat;
}

void AddProcessMetrics(MetricsRegistry& r) {
  Counter* cpu =
      r.AddCounter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.");
  Gauge* resident = r.AddGauge("process_resident_memory_bytes", "Resident memory size in bytes.");
  Gauge* virtual_memory =
      r.AddGauge("process_virtual_memory_bytes", "Virtual memory size in bytes.");
  Gauge* start_time = r.AddGauge("process_start_time_seconds",
                                 "Start time of the process since unix epoch in seconds.");
  Gauge* open_fds = r.AddGauge("process_open_fds", "Number of open file descriptors.");
  Gauge* max_fds = r.AddGauge("process_max_fds", "Maximum number of open file descriptors.");

  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page_bytes = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (auto stat = ParseProcStat(ReadFirstLine("/proc/self/stat"))) {
    start_time->Set(BootTimeSeconds() + stat->start_time_ticks / ticks);
  }
  r.AddCollector([=] {
    if (auto stat = ParseProcStat(ReadFirstLine("/proc/self/stat"))) {
      const double seconds = (stat->utime_ticks + stat->stime_ticks) / ticks;
      if (seconds > cpu->value()) cpu->Inc(seconds - cpu->value());
      resident->Set(stat->resident_pages * page_bytes);
      virtual_memory->Set(static_cast<double>(stat->virtual_memory_bytes));
    }
    open_fds->Set(OpenFds());
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      max_fds->Set(limit.rlim_cur == RLIM_INFINITY ? -1 : static_cast<double>(limit.rlim_cur));
    }
  });
}

}  // namespace gqa
