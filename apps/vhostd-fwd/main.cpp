// vhostd-fwd: the vhost-user-net forwarding app (doc/vhostd-fwd.md has the contract).
//
//   vhostd-fwd -l 1 --main-lcore 0 --port path=/tmp/p0.sock[,queues=2][,client][,mrg_rxbuf=0|1]
//              [,lcore=N][,coalesce-usecs=U[,coalesce-packets=N]] [--port ...] --fwd io|macswap|rxonly|txonly|l2 [--burst 64]
//              [--txpkts 64] [--stats-period 1] [--tx-retry N]
//              [--poll-mode busy|interrupt|adaptive] [--idle-threshold-us 200]
//
// The main thread parses, starts one Daemon per port on a shared Runtime, prints the ring
// placement known at start and `ready`, then prints stats every period until SIGINT/SIGTERM;
// then it stops every daemon (sockets removed) and prints the totals.
//
// Placement: a port's polled rings go, as each starts, to the least-loaded data lcore on the
// NUMA node of the guest's memory (the daemon logs `port0: ring 1 -> lcore 1 (cpu 1, node 0;
// guest memory on node 0)`); `lcore=N` puts them all on data lcore N instead. --fwd l2 needs
// queue pair q of every port on one lcore (any port's TX q may write any RX q), so it keeps
// Forwarder::plan_placement() unless every port names the same lcore=.
#include <poll.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <optional>
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
               "                  --port path=PATH[,queues=N][,client][,mrg_rxbuf=0|1][,mac=XX:..:XX][,lcore=N]\n"
               "                             [,coalesce-usecs=U[,coalesce-packets=N]]\n"
               "                  [--port ...]\n"
               "                  [--fwd io|macswap|rxonly|txonly|l2] [--burst N] [--txpkts N]\n"
               "                  [--stats-period SECONDS] [--tx-retry N]\n"
               "                  [--poll-mode busy|interrupt|adaptive] [--idle-threshold-us N]\n",
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
  std::optional<unsigned> lcore;  // lcore=N: every polled ring on data lcore N
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
    } else if (key == "coalesce-usecs") {
      const unsigned long usecs = parse_number("--port coalesce-usecs", value);
      if (usecs == 0 || usecs > 1000000) usage("--port coalesce-usecs=" + value + ": must be 1..1000000");
      spec.config.call_coalescing.max_delay = std::chrono::microseconds(usecs);
    } else if (key == "coalesce-packets") {
      const unsigned long packets = parse_number("--port coalesce-packets", value);
      if (packets == 0 || packets > kMaxQueueSize) usage("--port coalesce-packets=" + value + ": must be 1..32768");
      spec.config.call_coalescing.max_buffers = static_cast<std::uint16_t>(packets);
    } else if (key == "lcore") {
      const unsigned long lcore = parse_number("--port lcore", value);
      if (lcore > std::numeric_limits<unsigned>::max()) usage("--port lcore=" + value + ": out of range");
      spec.lcore = static_cast<unsigned>(lcore);
    } else if (!item.empty()) {
      usage("--port: unknown or malformed item '" + item + "'");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (spec.path.empty()) usage("--port needs path=PATH");
  // A count alone would hold the last calls of a burst until more traffic came.
  if (spec.config.call_coalescing.max_buffers != 0 && !spec.config.call_coalescing.enabled()) {
    usage("--port coalesce-packets needs coalesce-usecs (how long a held call may wait)");
  }
  return spec;
}

// Per-port counters at the previous stats line.
struct Sample {
  net::PortTotals totals;
  std::uint64_t busy_cycles = 0;
  std::uint64_t calls = 0;
};

// Busy cycles of every ring of a port, and the data lcores polling its rings now.
struct PortRings {
  std::uint64_t busy_cycles = 0;
  std::uint64_t calls = 0;       // guest notifications made, every ring
  std::vector<unsigned> lcores;  // ascending, unique
};

PortRings port_rings(Daemon& daemon) {
  PortRings rings;
  for (const RingReport& r : daemon.ring_reports()) {
    rings.busy_cycles += r.busy_cycles;
    rings.calls += r.notifications;
    if (r.lcore >= 0) rings.lcores.push_back(static_cast<unsigned>(r.lcore));
  }
  std::sort(rings.lcores.begin(), rings.lcores.end());
  rings.lcores.erase(std::unique(rings.lcores.begin(), rings.lcores.end()), rings.lcores.end());
  return rings;
}

// The `assign:` line of each queue pair whose lcore is known before the guest connects.
void print_assignment(std::size_t port, std::uint16_t pair, const Poller& poller) {
  std::printf("assign: port %zu queue-pair %u -> lcore %u (cpu %s)\n", port, pair, poller.lcore_id(),
              format_id_list(poller.cpus()).c_str());
}

const Poller& poller_of(Runtime& runtime, unsigned lcore_id) {
  for (std::size_t p = 0; p < runtime.num_pollers(); ++p) {
    if (runtime.poller(p).lcore_id() == lcore_id) return runtime.poller(p);
  }
  throw_error("lcore ", lcore_id, " is not a data lcore");
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
  PollerOptions poller_options;
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
    } else if (arg == "--poll-mode") {
      try {
        poller_options.mode = parse_poll_mode(value());
      } catch (const Error& error) {
        usage(error.what());
      }
    } else if (arg == "--idle-threshold-us") {
      const unsigned long us = parse_number(arg, value());
      if (us > 10'000'000) usage("--idle-threshold-us must be at most 10000000");
      poller_options.idle_threshold = std::chrono::microseconds(us);
    } else if (arg == "--tx-retry") {
      options.tx_retries = static_cast<std::uint32_t>(parse_number(arg, value()));
    } else {
      usage("unknown option " + arg);
    }
  }
  if (specs.empty()) usage("at least one --port is required");
  const std::vector<unsigned> data_lcores = cores.data_lcores();
  for (const PortSpec& spec : specs) {
    if (spec.lcore && std::find(data_lcores.begin(), data_lcores.end(), *spec.lcore) == data_lcores.end()) {
      usage("--port lcore=" + std::to_string(*spec.lcore) + ": not a data lcore (data lcores: " +
            format_id_list(data_lcores) + ")");
    }
    if (options.mode == fwd::FwdMode::l2 && spec.lcore != specs.front().lcore) {
      usage("--fwd l2: lcore= must be the same on every port, or given on none (any port's queue pair q "
            "may write every port's RX ring q)");
    }
  }

  // Every ring holds a kick and a call eventfd: 128 pairs, or many ports, pass the usual soft
  // limit of 1024 fds. Take what the hard limit allows, as QEMU does.
  struct rlimit files {};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }

  try {
    Runtime runtime(cores, poller_options);
    std::vector<std::shared_ptr<net::NetPort>> ports;
    std::vector<net::NetPort*> raw;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      ports.push_back(std::make_shared<net::NetPort>("port" + std::to_string(i), specs[i].config));
      raw.push_back(ports.back().get());
    }
    std::vector<int> lcore_nodes;
    for (std::size_t l = 0; l < runtime.num_pollers(); ++l) lcore_nodes.push_back(runtime.poller(l).numa_node());
    fwd::Forwarder forwarder(options, raw, lcore_nodes);

    std::printf("vhostd-fwd: fwd %s, burst %u, %zu data lcore(s), main lcore %u (cpu %s), poll mode %s\n",
                fwd::to_string(options.mode), options.burst, runtime.num_pollers(), cores.main_lcore,
                format_id_list(cores.lcore(cores.main_lcore).cpus).c_str(), to_string(poller_options.mode));
    for (std::size_t i = 0; i < ports.size(); ++i) {
      ports[i]->set_handler(&forwarder);
      const std::uint16_t pairs = ports[i]->config().queue_pairs;
      if (specs[i].lcore) {
        for (std::uint16_t q = 0; q < pairs; ++q) print_assignment(i, q, poller_of(runtime, *specs[i].lcore));
      } else if (options.mode == fwd::FwdMode::l2) {
        auto plan = forwarder.plan_placement(i);
        for (std::size_t l = 0; l < plan.size(); ++l) {
          for (std::uint16_t ring : plan[l]) {
            if (ring % 2 != 1 || ring == ports[i]->ctrl_ring()) continue;  // one line per pair
            print_assignment(i, ring / 2u, runtime.poller(l));
          }
        }
        ports[i]->set_queue_placement(std::move(plan));
      } else if (runtime.num_pollers() == 1) {
        for (std::uint16_t q = 0; q < pairs; ++q) print_assignment(i, q, runtime.poller(0));
      } else {
        std::printf("assign: port %zu -> data lcores on its guest memory's NUMA node (as its rings start)\n", i);
      }
    }

    std::vector<std::unique_ptr<Daemon>> daemons;
    for (std::size_t i = 0; i < ports.size(); ++i) {
      daemons.push_back(std::make_unique<Daemon>("port" + std::to_string(i), ports[i], runtime));
      if (specs[i].lcore) daemons.back()->set_lcore(*specs[i].lcore);
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
        const PortRings rings = port_rings(*daemons[i]);
        const std::uint64_t busy = rings.busy_cycles;
        Sample& prev = last[i];
        if (busy < prev.busy_cycles) prev.busy_cycles = 0;  // a new connection's rings count from zero
        if (rings.calls < prev.calls) prev.calls = 0;
        const double rx_pps = static_cast<double>(t.rx_packets - prev.totals.rx_packets) / seconds;
        const double tx_pps = static_cast<double>(t.tx_packets - prev.totals.tx_packets) / seconds;
        const double rx_gbps = static_cast<double>(t.rx_bytes - prev.totals.rx_bytes) * 8 / seconds / 1e9;
        const double tx_gbps = static_cast<double>(t.tx_bytes - prev.totals.tx_bytes) * 8 / seconds / 1e9;
        const double busy_pct = 100.0 * static_cast<double>(busy - prev.busy_cycles) /
                                static_cast<double>(std::max<std::uint64_t>(cycles - last_cycles, 1));
        const double calls_per_second = static_cast<double>(rings.calls - prev.calls) / seconds;
        std::printf("port %zu: rx %.3f Mpps %.3f Gbit/s | tx %.3f Mpps %.3f Gbit/s | drops %llu | busy %.1f%% | "
                    "lcores %s | calls %.0f/s\n",
                    i, rx_pps / 1e6, rx_gbps, tx_pps / 1e6, tx_gbps,
                    static_cast<unsigned long long>(t.tx_drops - prev.totals.tx_drops), busy_pct,
                    format_id_list(rings.lcores).c_str(), calls_per_second);
        prev = Sample{t, busy, rings.calls};
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
    for (std::size_t l = 0; l < runtime.num_pollers(); ++l) {
      const Poller& poller = runtime.poller(l);
      std::printf("total lcore %u: loops %llu busy-loops %llu sleeps %llu\n", poller.lcore_id(),
                  static_cast<unsigned long long>(poller.stats().loops.load()),
                  static_cast<unsigned long long>(poller.stats().busy_loops.load()),
                  static_cast<unsigned long long>(poller.stats().sleeps.load()));
    }
    std::fflush(stdout);
  } catch (const Error& error) {
    std::fprintf(stderr, "vhostd-fwd: %s\n", error.what());
    return 1;
  }
  return 0;
}
