// vhostd-fwd: the vhost-user-net forwarding app (doc/vhostd-fwd.md has the contract).
//
//   vhostd-fwd -l 1 --main-lcore 0 --port path=/tmp/p0.sock[,queues=2][,client][,mrg_rxbuf=0|1]
//              [--port ...] --fwd io|macswap|rxonly|txonly|l2 [--burst 64] [--txpkts 64]
//              [--stats-period 1] [--tx-retry N]
//
// The main thread parses, starts one Daemon per port on a shared Runtime, prints the ring
// placement and `ready`, then prints stats every period until SIGINT/SIGTERM; then it stops
// every daemon (sockets removed) and prints the totals.
#include <poll.h>
#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "forwarding.hpp"
#include "vhostd/base/compiler.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/runtime/daemon.hpp"

namespace {

using namespace vhostd;

int g_signal_event = -1;

void on_signal(int) {
  if (g_signal_event >= 0) eventfd_signal(g_signal_event);  // async-signal-safe write(2)
}

[[noreturn]] void usage(const std::string& error) {
  std::fprintf(stderr,
               "vhostd-fwd: %s\n"
               "usage: vhostd-fwd [-l LIST | --lcores MAP] [--main-lcore N]\n"
               "                  --port path=PATH[,queues=N][,client][,mrg_rxbuf=0|1][,mac=XX:..:XX] [--port ...]\n"
               "                  [--fwd io|macswap|rxonly|txonly|l2] [--burst N] [--txpkts N]\n"
               "                  [--stats-period SECONDS] [--tx-retry N]\n",
               error.c_str());
  std::exit(2);
}

unsigned long parse_number(const std::string& what, const std::string& value) {
  char* end = nullptr;
  unsigned long n = std::strtoul(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0') usage(what + ": '" + value + "' is not a number");
  return n;
}

struct PortSpec {
  std::string path;
  bool client = false;
  net::NetPortConfig config;
};

net::MacAddress parse_mac(const std::string& text) {
  net::MacAddress mac{};
  unsigned b[6];
  char tail;
  if (std::sscanf(text.c_str(), "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6) {
    usage("mac='" + text + "': expected six hex bytes separated by ':'");
  }
  for (int i = 0; i < 6; ++i) {
    if (b[i] > 0xff) usage("mac='" + text + "': byte out of range");
    mac[i] = static_cast<std::uint8_t>(b[i]);
  }
  return mac;
}

PortSpec parse_port(const std::string& text, std::size_t index) {
  PortSpec spec;
  spec.config.mac = net::MacAddress{0x02, 0, 0, 0, 0, static_cast<std::uint8_t>(index + 1)};
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const std::size_t eq = item.find('=');
    const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
    if (key == "path") {
      spec.path = value;
    } else if (key == "queues") {
      const unsigned long q = parse_number("--port queues", value);
      if (q == 0 || q > net::kMaxQueuePairs) usage("--port queues=" + value + ": must be 1..128");
      spec.config.queue_pairs = static_cast<std::uint16_t>(q);
    } else if (key == "client" && value.empty()) {
      spec.client = true;
    } else if (key == "mrg_rxbuf" && (value == "0" || value == "1")) {
      spec.config.mrg_rxbuf = value == "1";
    } else if (key == "mac") {
      spec.config.mac = parse_mac(value);
    } else if (!item.empty()) {
      usage("--port: unknown or malformed item '" + item + "'");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (spec.path.empty()) usage("--port needs path=PATH");
  return spec;
}

// Per-port counters at the previous stats line.
struct Sample {
  net::PortTotals totals;
  std::uint64_t busy_cycles = 0;
};

std::uint64_t port_busy_cycles(Daemon& daemon) {
  std::uint64_t cycles = 0;
  for (const RingReport& r : daemon.ring_reports()) cycles += r.busy_cycles;
  return cycles;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> rest;
  CoreConfig cores;
  try {
    cores = parse_core_options(args, CpuTopology::from_system(), &rest);
  } catch (const Error& error) {
    usage(error.what());
  }

  std::vector<PortSpec> specs;
  fwd::FwdOptions options;
  unsigned long stats_period = 0;
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const std::string& arg = rest[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= rest.size()) usage(arg + " needs a value");
      return rest[++i];
    };
    if (arg == "--port") {
      specs.push_back(parse_port(value(), specs.size()));
    } else if (arg == "--fwd") {
      try {
        options.mode = fwd::parse_fwd_mode(value());
      } catch (const Error& error) {
        usage(error.what());
      }
    } else if (arg == "--burst") {
      const unsigned long burst = parse_number(arg, value());
      if (burst == 0 || burst > net::kMaxBurst) usage("--burst must be 1..256");
      options.burst = static_cast<std::uint16_t>(burst);
    } else if (arg == "--txpkts") {
      const unsigned long txpkts = parse_number(arg, value());
      if (txpkts < 60 || txpkts > 9000) usage("--txpkts must be 60..9000");
      options.txpkts = static_cast<std::uint32_t>(txpkts);
    } else if (arg == "--stats-period") {
      stats_period = parse_number(arg, value());
    } else if (arg == "--tx-retry") {
      options.tx_retries = static_cast<std::uint32_t>(parse_number(arg, value()));
    } else {
      usage("unknown option " + arg);
    }
  }
  if (specs.empty()) usage("at least one --port is required");

  // Every ring holds a kick and a call eventfd: 128 pairs, or many ports, pass the usual soft
  // limit of 1024 fds. Take what the hard limit allows, as QEMU does.
  struct rlimit files {};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }

  try {
    Runtime runtime(cores);
    std::vector<std::shared_ptr<net::NetPort>> ports;
    std::vector<net::NetPort*> raw;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      ports.push_back(std::make_shared<net::NetPort>("port" + std::to_string(i), specs[i].config));
      raw.push_back(ports.back().get());
    }
    fwd::Forwarder forwarder(options, raw, runtime.num_pollers());

    std::printf("vhostd-fwd: fwd %s, burst %u, %zu data lcore(s), main lcore %u (cpu %s)\n",
                fwd::to_string(options.mode), options.burst, runtime.num_pollers(), cores.main_lcore,
                format_id_list(cores.lcore(cores.main_lcore).cpus).c_str());
    for (std::size_t i = 0; i < ports.size(); ++i) {
      auto plan = forwarder.plan_placement(i);
      for (std::size_t l = 0; l < plan.size(); ++l) {
        const Poller& poller = runtime.poller(l);
        for (std::uint16_t ring : plan[l]) {
          if (ring % 2 != 1 || ring == ports[i]->ctrl_ring()) continue;  // one line per pair
          std::printf("assign: port %zu queue-pair %u -> lcore %u (cpu %s)\n", i, ring / 2u, poller.lcore_id(),
                      format_id_list(poller.cpus()).c_str());
        }
      }
      ports[i]->set_handler(&forwarder);
      ports[i]->set_queue_placement(std::move(plan));
    }

    std::vector<std::unique_ptr<Daemon>> daemons;
    for (std::size_t i = 0; i < ports.size(); ++i) {
      daemons.push_back(std::make_unique<Daemon>("port" + std::to_string(i), ports[i], runtime));
      if (specs[i].client) daemons.back()->start_client(specs[i].path);
      else daemons.back()->start_server(specs[i].path);
    }

    UniqueFd signal_event = make_eventfd();
    g_signal_event = signal_event.get();
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    std::printf("vhostd-fwd: ready\n");
    std::fflush(stdout);

    // Main loop: a 1-second tick (the l2 table's clock) and a stats line every period.
    std::vector<Sample> last(ports.size());
    std::uint64_t last_cycles = read_cycles();
    auto last_time = std::chrono::steady_clock::now();
    const auto start_time = last_time;
    unsigned ticks = 0;
    for (;;) {
      pollfd pfd{signal_event.get(), POLLIN, 0};
      const int ready = ::poll(&pfd, 1, 1000);
      if (ready > 0) break;
      const auto now = std::chrono::steady_clock::now();
      forwarder.tick(static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(now - start_time).count()));
      if (stats_period == 0 || ++ticks % stats_period != 0) continue;
      const double seconds = std::chrono::duration<double>(now - last_time).count();
      const std::uint64_t cycles = read_cycles();
      for (std::size_t i = 0; i < ports.size(); ++i) {
        const net::PortTotals t = ports[i]->totals();
        const std::uint64_t busy = port_busy_cycles(*daemons[i]);
        Sample& prev = last[i];
        if (busy < prev.busy_cycles) prev.busy_cycles = 0;  // a new connection's rings count from zero
        const double rx_pps = static_cast<double>(t.rx_packets - prev.totals.rx_packets) / seconds;
        const double tx_pps = static_cast<double>(t.tx_packets - prev.totals.tx_packets) / seconds;
        const double rx_gbps = static_cast<double>(t.rx_bytes - prev.totals.rx_bytes) * 8 / seconds / 1e9;
        const double tx_gbps = static_cast<double>(t.tx_bytes - prev.totals.tx_bytes) * 8 / seconds / 1e9;
        const double busy_pct = 100.0 * static_cast<double>(busy - prev.busy_cycles) /
                                static_cast<double>(std::max<std::uint64_t>(cycles - last_cycles, 1));
        std::printf("port %zu: rx %.3f Mpps %.3f Gbit/s | tx %.3f Mpps %.3f Gbit/s | drops %llu | busy %.1f%%\n", i,
                    rx_pps / 1e6, rx_gbps, tx_pps / 1e6, tx_gbps,
                    static_cast<unsigned long long>(t.tx_drops - prev.totals.tx_drops), busy_pct);
        prev = Sample{t, busy};
      }
      std::fflush(stdout);
      last_cycles = cycles;
      last_time = now;
    }

    for (auto& daemon : daemons) daemon->stop();
    for (auto& daemon : daemons) daemon->wait();
    daemons.clear();  // rings detached from the pollers, sockets removed
    for (std::size_t i = 0; i < ports.size(); ++i) {
      const net::PortTotals t = ports[i]->totals();
      std::printf("total port %zu: rx-packets %llu rx-bytes %llu tx-packets %llu tx-bytes %llu drops %llu errors %llu\n",
                  i, static_cast<unsigned long long>(t.rx_packets), static_cast<unsigned long long>(t.rx_bytes),
                  static_cast<unsigned long long>(t.tx_packets), static_cast<unsigned long long>(t.tx_bytes),
                  static_cast<unsigned long long>(t.tx_drops), static_cast<unsigned long long>(t.rx_errors));
    }
    std::fflush(stdout);
  } catch (const Error& error) {
    std::fprintf(stderr, "vhostd-fwd: %s\n", error.what());
    return 1;
  }
  return 0;
}
