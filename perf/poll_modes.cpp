// poll-modes: what each poll mode costs when the guests are idle, and how fast it wakes up.
//
//   poll-modes [--modes busy,interrupt,adaptive] [--idle-seconds 3] [--samples 2000]
//              [--gap-us 1000] [--idle-threshold-us 200] [--ring split|packed]
//
// For each mode, in one process: a Runtime (control lcore on the first CPU, one data lcore on
// the last, as the tests use), the echo device on a real socket, and the in-tree test frontend
// as the guest driver of its two rings (memfd memory), on the first CPU. Then:
//   idle CPU    the data lcore thread's CPU time (utime + stime from /proc) over --idle-seconds
//               with both rings set up and idle, as a percentage of one core;
//   wake-up     --samples times: wait --gap-us (longer than the idle threshold, so adaptive and
//               interrupt pollers are asleep), publish one 64-byte echo request, kick if the
//               device asked for a kick (as Linux and DPDK drivers do), and spin until its used
//               element is visible. The time from the publish to the used element is the
//               wake-up latency plus the echo itself (the busy row is the echo alone); p50, p99
//               and max in microseconds. Every response is checked (id, length, bytes).
// The packet rate under load in each mode is measured end to end: perf/e2e.sh --vhostd-args
// "--poll-mode adaptive" (perf/README.md).
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "frontend.hpp"
#include "vhostd/echo/echo_backend.hpp"
#include "vhostd/runtime/daemon.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace {

using namespace vhostd;
using namespace vhostd::test;
using Clock = std::chrono::steady_clock;

[[noreturn]] void usage(const std::string& error) {
  std::fprintf(stderr,
               "poll-modes: %s\n"
               "usage: poll-modes [--modes busy,interrupt,adaptive] [--idle-seconds N] [--samples N]\n"
               "                  [--gap-us N] [--idle-threshold-us N] [--ring split|packed]\n",
               error.c_str());
  std::exit(2);
}

unsigned long number(const std::string& what, const std::string& value) {
  char* end = nullptr;
  const unsigned long n = std::strtoul(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0') usage(what + ": '" + value + "' is not a number");
  return n;
}

// The kernel thread id of this process's thread named `name` (/proc/self/task/*/comm), or -1.
long thread_id(const std::string& name) {
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  long found = -1;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::ifstream comm(std::string("/proc/self/task/") + entry->d_name + "/comm");
    std::string line;
    if (std::getline(comm, line) && line == name) found = std::atol(entry->d_name);
  }
  ::closedir(dir);
  return found;
}

// utime + stime of thread `tid`, in clock ticks.
unsigned long long thread_cpu_ticks(long tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
  std::istringstream rest(text.substr(text.rfind(')') + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return utime + stime;
}

struct Result {
  PollMode mode;
  double idle_cpu_percent = 0;
  double p50_us = 0, p99_us = 0, max_us = 0;
  std::uint64_t sleeps = 0;
};

Result measure(PollMode mode, const DeviceOptions& device, unsigned idle_seconds, unsigned samples,
               std::chrono::microseconds gap, std::chrono::microseconds idle_threshold) {
  char tmpl[] = "/tmp/vhostd-poll-modes-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) throw_errno("mkdtemp");
  const std::string dir = tmpl, path = dir + "/echo.sock";

  Result result;
  result.mode = mode;
  {
    PollerOptions options;
    options.mode = mode;
    options.idle_threshold = idle_threshold;
    const CoreConfig cores = Runtime::default_cores();
    Runtime runtime(cores, options);
    auto daemon = std::make_unique<Daemon>("echo", std::make_shared<EchoBackend>(), runtime);
    daemon->start_server(path);
    // The guest runs where the control lcore does, away from the data lcore.
    pin_current_thread(cores.lcore(cores.main_lcore).cpus);
    TestFrontend frontend = TestFrontend::connect(path);
    frontend.setup_device(device);
    echo_one(frontend, 0);  // both rings are handed to the poller by now

    const long tid = thread_id("lcore-" + std::to_string(runtime.poller(0).lcore_id()));
    if (tid < 0) throw_error("no thread named lcore-", runtime.poller(0).lcore_id());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const unsigned long long ticks_before = thread_cpu_ticks(tid);
    const auto idle_start = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(idle_seconds));
    const double idle_elapsed = std::chrono::duration<double>(Clock::now() - idle_start).count();
    const unsigned long long ticks = thread_cpu_ticks(tid) - ticks_before;
    result.idle_cpu_percent =
        100.0 * static_cast<double>(ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK)) / idle_elapsed;

    const bool event_idx = (frontend.acked_features() & (1ull << 29)) != 0;
    std::vector<double> latencies;
    latencies.reserve(samples);
    EchoChain chain;
    chain.request.resize(64);
    chain.readable_sizes = {64};
    chain.writable_sizes = {64};
    for (unsigned i = 0; i < samples; ++i) {
      for (std::size_t b = 0; b < chain.request.size(); ++b) chain.request[b] = static_cast<std::uint8_t>(i + b);
      std::this_thread::sleep_for(gap);
      std::vector<PendingEcho> pending{push_echo(frontend, 0, chain)};
      const auto start = Clock::now();
      if (frontend.ring(0).kick_needed(event_idx)) frontend.kick(0);
      const auto deadline = start + std::chrono::seconds(5);
      while (!frontend.ring(0).has_used()) {
        if (Clock::now() > deadline) throw_error("request ", i, " not completed within 5 s");
      }
      latencies.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      complete_echoes(frontend, 0, pending);  // checks id, length and bytes
    }
    std::sort(latencies.begin(), latencies.end());
    result.p50_us = latencies[latencies.size() / 2];
    result.p99_us = latencies[std::min(latencies.size() - 1, latencies.size() * 99 / 100)];
    result.max_us = latencies.back();
    result.sleeps = runtime.poller(0).stats().sleeps.load();

    frontend.close();
    daemon->stop();
    daemon->wait();
    daemon.reset();
  }
  ::unlink(path.c_str());
  ::rmdir(dir.c_str());
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<PollMode> modes = {PollMode::busy, PollMode::interrupt, PollMode::adaptive};
  unsigned idle_seconds = 3, samples = 2000;
  std::chrono::microseconds gap{1000}, idle_threshold{200};
  DeviceOptions device;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--modes") {
      modes.clear();
      std::istringstream list(value());
      std::string item;
      try {
        while (std::getline(list, item, ',')) modes.push_back(parse_poll_mode(item));
      } catch (const Error& error) {
        usage(error.what());
      }
    } else if (arg == "--idle-seconds") {
      idle_seconds = static_cast<unsigned>(number(arg, value()));
    } else if (arg == "--samples") {
      samples = static_cast<unsigned>(std::max(1ul, number(arg, value())));
    } else if (arg == "--gap-us") {
      gap = std::chrono::microseconds(number(arg, value()));
    } else if (arg == "--idle-threshold-us") {
      idle_threshold = std::chrono::microseconds(number(arg, value()));
    } else if (arg == "--ring") {
      const std::string ring = value();
      if (ring != "split" && ring != "packed") usage("--ring: split or packed");
      device.packed = ring == "packed";
    } else {
      usage("unknown option " + arg);
    }
  }
  try {
    std::printf("poll-modes: echo device, %s rings, idle %u s, %u wake-ups after %lld us gaps, idle threshold %lld us\n",
                device.packed ? "packed" : "split", idle_seconds, samples, static_cast<long long>(gap.count()),
                static_cast<long long>(idle_threshold.count()));
    std::printf("%-10s %16s %12s %12s %12s %10s\n", "mode", "idle CPU (%core)", "wake p50 us", "wake p99 us",
                "wake max us", "sleeps");
    std::fflush(stdout);
    for (PollMode mode : modes) {
      const Result r = measure(mode, device, idle_seconds, samples, gap, idle_threshold);
      std::printf("%-10s %16.2f %12.2f %12.2f %12.2f %10llu\n", to_string(r.mode), r.idle_cpu_percent, r.p50_us,
                  r.p99_us, r.max_us, static_cast<unsigned long long>(r.sleeps));
      std::fflush(stdout);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "poll-modes: %s\n", error.what());
    return 1;
  }
  return 0;
}
