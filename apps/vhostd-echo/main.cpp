// vhostd-echo: serves the sample echo device on a vhost-user socket.
//
//   vhostd-echo -l 1 --main-lcore 0 --socket /tmp/echo.sock [--client] [--queues 2]
//               [--queue-size 1024] [--stats-period 1]
//
// Core options follow DPDK EAL (-l, --lcores, --main-lcore). SIGINT/SIGTERM stop it cleanly.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "vhostd/base/log.hpp"
#include "vhostd/echo/echo_backend.hpp"
#include "vhostd/runtime/daemon.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace {

int g_exit_event = -1;

void on_signal(int) {
  if (g_exit_event >= 0) vhostd::eventfd_signal(g_exit_event);  // async-signal-safe write(2)
}

[[noreturn]] void usage(const std::string& error) {
  std::fprintf(stderr,
               "vhostd-echo: %s\n"
               "usage: vhostd-echo [-l LIST | --lcores MAP] [--main-lcore N] --socket PATH [--client]\n"
               "                   [--queues N] [--queue-size N] [--stats-period SECONDS]\n",
               error.c_str());
  std::exit(2);
}

unsigned long parse_number(const std::string& option, const std::string& value) {
  char* end = nullptr;
  unsigned long n = std::strtoul(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0') usage(option + ": '" + value + "' is not a number");
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vhostd;
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> rest;
  CoreConfig cores;
  try {
    cores = parse_core_options(args, CpuTopology::from_system(), &rest);
  } catch (const Error& error) {
    usage(error.what());
  }

  std::string socket;
  bool client = false;
  unsigned long queues = 2, queue_size = 1024, stats_period = 0;
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const std::string& arg = rest[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= rest.size()) usage(arg + " needs a value");
      return rest[++i];
    };
    if (arg == "--socket") socket = value();
    else if (arg == "--client") client = true;
    else if (arg == "--queues") queues = parse_number(arg, value());
    else if (arg == "--queue-size") queue_size = parse_number(arg, value());
    else if (arg == "--stats-period") stats_period = parse_number(arg, value());
    else usage("unknown option " + arg);
  }
  if (socket.empty()) usage("--socket is required");
  if (queues == 0 || queues > 65536) usage("--queues must be in [1, 65536]");

  try {
    Runtime runtime(cores);
    auto backend = std::make_shared<EchoBackend>(queues, static_cast<std::uint32_t>(queue_size));
    Daemon daemon("echo", backend, runtime);
    g_exit_event = daemon.exit_event();
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    std::printf("vhostd-echo: control lcore %u, data lcores %s, %lu queues, socket %s (%s)\n",
                cores.main_lcore, format_id_list(cores.data_lcores()).c_str(), queues, socket.c_str(),
                client ? "client" : "server");
    std::fflush(stdout);
    if (client) daemon.start_client(socket); else daemon.start_server(socket);

    std::jthread stats;
    if (stats_period > 0) {
      stats = std::jthread([&](std::stop_token stop) {
        std::uint64_t last = 0;
        while (!stop.stop_requested()) {
          for (unsigned s = 0; s < stats_period * 10 && !stop.stop_requested(); ++s) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
          std::uint64_t total = 0;
          for (const RingReport& r : daemon.ring_reports()) total += r.requests;
          if (total < last) last = 0;  // a new connection's rings count from zero
          std::printf("vhostd-echo: %.3f Mreq/s (%llu requests)\n",
                      static_cast<double>(total - last) / 1e6 / static_cast<double>(stats_period),
                      static_cast<unsigned long long>(total));
          std::fflush(stdout);
          last = total;
        }
      });
    }
    daemon.wait();
    std::printf("vhostd-echo: stopped\n");
  } catch (const Error& error) {
    std::fprintf(stderr, "vhostd-echo: %s\n", error.what());
    return 1;
  }
  return 0;
}
