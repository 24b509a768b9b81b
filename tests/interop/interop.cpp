#include "interop.hpp"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

namespace vhostd::interop {

namespace {

// Every testpmd allocates at most this much (8192 mbufs of 2 KiB, rings, a few queues).
constexpr std::uint64_t kTestpmdMemoryMb = 128;

std::string env_or(const char* name, const std::string& fallback = {}) {
  const char* value = ::getenv(name);
  return value != nullptr ? std::string(value) : fallback;
}

std::string stdbuf() {
  static const std::string path = find_in_path("stdbuf");
  return path;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// ---- hugepages ----

struct Meminfo {
  std::uint64_t total = 0, free = 0, page_kb = 0;
};

Meminfo read_meminfo() {
  Meminfo info;
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);) {
    auto fields = parse_counters(line);
    if (starts_with(line, "HugePages_Total:")) info.total = fields["HugePages_Total"];
    if (starts_with(line, "HugePages_Free:")) info.free = fields["HugePages_Free"];
    if (starts_with(line, "Hugepagesize:")) info.page_kb = fields["Hugepagesize"];
  }
  return info;
}

const char* const kNrHugepages = "/proc/sys/vm/nr_hugepages";
// What this binary set nr_hugepages to, and what it was before.
std::optional<std::pair<std::uint64_t, std::uint64_t>> g_reserved;

std::uint64_t read_nr_hugepages() {
  std::ifstream in(kNrHugepages);
  std::uint64_t pages = 0;
  in >> pages;
  return pages;
}

bool write_nr_hugepages(std::uint64_t pages) {
  std::ofstream out(kNrHugepages);
  out << pages << "\n";
  out.flush();
  return static_cast<bool>(out);
}

DpdkMemory decide_memory() {
  const std::string mode = env_or("VHOSTD_INTEROP_HUGEPAGES");
  DpdkMemory memory;
  const std::string mb = std::to_string(kTestpmdMemoryMb);
  auto no_huge = [&](const std::string& why) {
    memory.hugepages = false;
    memory.eal_args = {"--no-huge", "--no-shconf", "-m", mb};
    memory.description = "no hugepages (--no-huge --no-shconf -m " + mb + ": memfd): " + why;
    return memory;
  };
  if (mode == "0") return no_huge("VHOSTD_INTEROP_HUGEPAGES=0");

  Meminfo info = read_meminfo();
  if (info.page_kb == 0) return no_huge("no hugepage support");
  // Two testpmd's memory at once: a killed one's pages stay mapped by the backend until it
  // has seen the disconnection.
  const std::uint64_t per_testpmd = (kTestpmdMemoryMb * 1024 + info.page_kb - 1) / info.page_kb;
  const std::uint64_t needed = 2 * per_testpmd + 8;
  std::string how = std::to_string(info.free) + " free";
  if (info.free < needed && ::geteuid() == 0) {
    const std::uint64_t before = read_nr_hugepages();
    const std::uint64_t wanted = before + (needed - info.free);
    if (write_nr_hugepages(wanted)) {
      info = read_meminfo();
      const std::uint64_t now = read_nr_hugepages();
      if (now != before) g_reserved = std::make_pair(now, before);
      how = "reserved " + std::to_string(now - before) + " for this run";
    }
  }
  if (info.free < needed) {
    if (mode == "1") {
      throw InteropError("VHOSTD_INTEROP_HUGEPAGES=1 but only " + std::to_string(info.free) +
                         " free hugepages (" + std::to_string(needed) + " needed)");
    }
    return no_huge(std::to_string(info.free) + " free hugepages, " + std::to_string(needed) +
                   " needed");
  }
  memory.hugepages = true;
  memory.eal_args = {"--in-memory", "--single-file-segments", "-m", mb};
  memory.description = "hugepages (" + std::to_string(info.page_kb) +
                       " kB, --in-memory --single-file-segments -m " + mb + "): " + how;
  return memory;
}

// Gives back the hugepages this binary reserved.
class HugepageEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    // Unless someone else changed the setting meanwhile.
    if (g_reserved && read_nr_hugepages() == g_reserved->first) {
      write_nr_hugepages(g_reserved->second);
    }
    g_reserved.reset();
  }
};
[[maybe_unused]] ::testing::Environment* const g_hugepage_environment =
    ::testing::AddGlobalTestEnvironment(new HugepageEnvironment);

std::string unique_file_prefix() {
  static std::atomic<int> next{0};
  return "vhostd-interop-" + std::to_string(::getpid()) + "-" + std::to_string(next++);
}

}  // namespace

const DpdkMemory& dpdk_memory() {
  static const DpdkMemory memory = [] {
    DpdkMemory m = decide_memory();
    std::cerr << "[interop] DPDK memory: " << m.description << "\n";
    return m;
  }();
  return memory;
}

// ---- parsing ----

ForwardStats parse_forward_stats(const std::string& text) {
  ForwardStats stats;
  FwdPortStats* port = nullptr;
  FwdStreamStats* stream = nullptr;
  for (const auto& line : split_lines(text)) {
    int a = 0, b = 0, c = 0, d = 0;
    if (const auto pos = line.find("Forward statistics for port "); pos != std::string::npos) {
      if (std::sscanf(line.c_str() + pos, "Forward statistics for port %d", &a) == 1) {
        port = &stats.ports[a];
        stream = nullptr;
      }
      continue;
    }
    if (const auto pos = line.find("Forward Stats for RX Port="); pos != std::string::npos) {
      if (std::sscanf(line.c_str() + pos, "Forward Stats for RX Port=%d/Queue=%d -> TX Port=%d/Queue=%d",
                      &a, &b, &c, &d) == 4) {
        stats.streams.push_back({a, b, c, d, 0, 0, 0});
        stream = &stats.streams.back();
        port = nullptr;
      }
      continue;
    }
    if (line.find("Accumulated forward statistics") != std::string::npos) {
      port = nullptr;
      stream = nullptr;
      continue;
    }
    auto f = parse_counters(line);
    if (port != nullptr) {
      if (f.count("RX-packets")) port->rx_packets = f["RX-packets"];
      if (f.count("RX-dropped")) port->rx_dropped = f["RX-dropped"];
      if (f.count("TX-packets")) port->tx_packets = f["TX-packets"];
      if (f.count("TX-dropped")) port->tx_dropped = f["TX-dropped"];
    } else if (stream != nullptr) {
      if (f.count("RX-packets")) stream->rx_packets = f["RX-packets"];
      if (f.count("TX-packets")) stream->tx_packets = f["TX-packets"];
      if (f.count("TX-dropped")) stream->tx_dropped = f["TX-dropped"];
    }
  }
  return stats;
}

std::map<int, NicStats> parse_nic_stats(const std::string& text) {
  std::map<int, NicStats> ports;
  NicStats* port = nullptr;
  for (const auto& line : split_lines(text)) {
    int n = 0;
    if (const auto pos = line.find("NIC statistics for port "); pos != std::string::npos) {
      port = std::sscanf(line.c_str() + pos, "NIC statistics for port %d", &n) == 1 ? &ports[n]
                                                                                   : nullptr;
      continue;
    }
    if (port == nullptr) continue;
    if (line.find("######") != std::string::npos) {
      port = nullptr;
      continue;
    }
    auto f = parse_counters(line);
    if (f.count("RX-packets")) port->rx_packets = f["RX-packets"];
    if (f.count("RX-missed")) port->rx_missed = f["RX-missed"];
    if (f.count("RX-bytes")) port->rx_bytes = f["RX-bytes"];
    if (f.count("RX-errors")) port->rx_errors = f["RX-errors"];
    if (f.count("RX-nombuf")) port->rx_nombuf = f["RX-nombuf"];
    if (f.count("TX-packets")) port->tx_packets = f["TX-packets"];
    if (f.count("TX-errors")) port->tx_errors = f["TX-errors"];
    if (f.count("TX-bytes")) port->tx_bytes = f["TX-bytes"];
  }
  return ports;
}

std::vector<RxDump> parse_rx_dumps(const std::string& text) {
  std::vector<RxDump> dumps;
  int port = -1, queue = -1;
  for (const auto& line : split_lines(text)) {
    // "port 1/queue 0: received 32 packets"
    if (const auto pos = line.find("port "); pos != std::string::npos &&
                                             line.find(": received ") != std::string::npos) {
      int p = 0, q = 0;
      if (std::sscanf(line.c_str() + pos, "port %d/queue %d:", &p, &q) == 2) port = p, queue = q;
      continue;
    }
    // "  src=.. - dst=.. - pool=mb_pool_0 - type=0x0800 - length=64 - nb_segs=1 - sw ptype:
    //  L2_ETHER L3_IPV4 L4_UDP  - l2_len=14 - l3_len=20 - l4_len=8 - Receive queue=0x0"
    const auto start = line.find("src=");
    if (start == std::string::npos || line.find(" - dst=") == std::string::npos) continue;
    RxDump dump;
    dump.port = port;
    dump.queue = queue;
    std::string rest = line.substr(start);
    std::size_t pos = 0;
    while (pos <= rest.size()) {
      const auto end = rest.find(" - ", pos);
      const std::string item = trim(rest.substr(pos, end == std::string::npos ? end : end - pos));
      pos = end == std::string::npos ? rest.size() + 1 : end + 3;
      if (starts_with(item, "sw ptype:")) {
        dump.sw_ptype = trim(item.substr(9));
        continue;
      }
      const auto eq = item.find('=');
      if (eq == std::string::npos) continue;
      const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
      auto number = [&] { return std::strtoull(value.c_str(), nullptr, 0); };
      if (key == "src") dump.src = value;
      else if (key == "dst") dump.dst = value;
      else if (key == "type") dump.type = value;
      else if (key == "length") dump.length = number();
      else if (key == "nb_segs") dump.nb_segs = number();
      else if (key == "l2_len") dump.l2_len = number();
      else if (key == "l3_len") dump.l3_len = number();
      else if (key == "l4_len") dump.l4_len = number();
    }
    dumps.push_back(dump);
  }
  return dumps;
}

std::map<int, PortTotals> parse_totals(const std::string& text) {
  std::map<int, PortTotals> totals;
  for (const auto& line : split_lines(text)) {
    int port = -1;
    if (std::sscanf(line.c_str(), "total port %d:", &port) != 1) continue;
    auto f = parse_counters(line);
    PortTotals& t = totals[port];
    t.rx_packets = f["rx-packets"];
    t.rx_bytes = f["rx-bytes"];
    t.tx_packets = f["tx-packets"];
    t.tx_bytes = f["tx-bytes"];
    t.drops = f["drops"];
    t.errors = f["errors"];
  }
  return totals;
}

// ---- testpmd ----

std::string Testpmd::binary() {
  return find_in_path(env_or("DPDK_TESTPMD", "dpdk-testpmd"));
}

Testpmd::Testpmd(const TempDir& dir, const std::string& name, TestpmdConfig config)
    : config_(std::move(config)), file_prefix_(unique_file_prefix()) {
  const std::string bin = binary();
  if (bin.empty()) throw InteropError("dpdk-testpmd is not installed");
  std::vector<std::string> argv;
  if (!stdbuf().empty()) argv = {stdbuf(), "-oL", "-eL"};
  const int other_cpu = config_.fwd_cpu == 0 ? 1 : 0;
  argv.insert(argv.end(), {bin, "--lcores",
                           "0@" + std::to_string(other_cpu) + ",1@" + std::to_string(config_.fwd_cpu),
                           "-n", "1", "--file-prefix=" + file_prefix_, "--no-pci"});
  const auto& memory = dpdk_memory();
  argv.insert(argv.end(), memory.eal_args.begin(), memory.eal_args.end());
  int queues = 1;
  for (std::size_t i = 0; i < config_.ports.size(); ++i) {
    const VirtioUserPort& port = config_.ports[i];
    std::string vdev = "net_virtio_user" + std::to_string(i) + ",path=" + port.path +
                       ",queues=" + std::to_string(port.queues);
    if (port.mrg_rxbuf) vdev += ",mrg_rxbuf=" + std::to_string(*port.mrg_rxbuf);
    if (!port.mac.empty()) vdev += ",mac=" + port.mac;
    if (port.server) vdev += ",server=1";
    if (port.packed_vq) vdev += ",packed_vq=" + std::to_string(*port.packed_vq);
    if (port.in_order) vdev += ",in_order=" + std::to_string(*port.in_order);
    argv.insert(argv.end(), {"--vdev", vdev});
    queues = std::max(queues, port.queues);
  }
  argv.insert(argv.end(),
              {"--", "-i", "--no-mlockall", "--no-flush-rx", "--nb-cores=1", "--total-num-mbufs=8192",
               "--rxq=" + std::to_string(queues), "--txq=" + std::to_string(queues),
               "--forward-mode=" + config_.forward_mode, "--txpkts=" + config_.txpkts,
               "--burst=" + std::to_string(config_.burst)});
  argv.insert(argv.end(), config_.extra_args.begin(), config_.extra_args.end());
  process_ = std::make_unique<Process>(
      Process::Options{std::move(argv), dir / (name + ".log"), /*stdin_pipe=*/true});
}

Testpmd::~Testpmd() {
  process_.reset();  // killed and reaped if it still runs
  // EAL's runtime directory: /var/run/dpdk as root, else $XDG_RUNTIME_DIR/dpdk (or /tmp/dpdk).
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  const std::filesystem::path base =
      ::getuid() == 0 ? "/var/run/dpdk" : std::filesystem::path(xdg != nullptr ? xdg : "/tmp") / "dpdk";
  std::error_code ignored;
  std::filesystem::remove_all(base / file_prefix_, ignored);
}

void Testpmd::wait_ready(std::chrono::milliseconds timeout) {
  if (!process_->wait_for_text("testpmd> ", timeout)) {
    throw InteropError("testpmd did not come up (" +
                       (process_->running() ? "no prompt within " +
                                                  std::to_string(timeout.count()) + " ms"
                                            : describe_status(*process_->status())) +
                       "):\n" + process_->tail());
  }
  const std::string out = process_->output();
  for (const char* sign : {"Failed to start device", "Failed to setup backend",
                           "No probed ethernet devices", "Fail to start port",
                           "Too many memory regions", "Failed to set memory table"}) {
    if (out.find(sign) != std::string::npos) {
      throw InteropError(std::string("testpmd: ") + sign + ":\n" + process_->tail());
    }
  }
}

std::string Testpmd::command(const std::string& cmd, std::chrono::milliseconds timeout) {
  const std::size_t before = process_->output().size();
  if (!process_->write_stdin(cmd + "\n")) {
    throw InteropError("testpmd: cannot send '" + cmd + "' (it exited?):\n" + process_->tail());
  }
  std::string reply;
  const bool done = process_->wait_for(
      [&](const std::string& out) {
        const auto prompt = out.find("testpmd> ", before);
        if (prompt == std::string::npos) return false;
        reply = out.substr(before, prompt - before);
        return true;
      },
      timeout);
  if (!done) {
    throw InteropError("testpmd: no prompt after '" + cmd + "':\n" + process_->tail());
  }
  return reply;
}

ForwardStats Testpmd::stop() { return parse_forward_stats(command("stop")); }

std::map<int, NicStats> Testpmd::port_stats() {
  return parse_nic_stats(command("show port stats all"));
}

void Testpmd::quit(bool backend_gone, std::chrono::milliseconds timeout) {
  process_->write_stdin("quit\n");
  const auto status = process_->wait(timeout);
  if (!status) {
    process_->kill();
    throw InteropError("testpmd did not exit after 'quit':\n" + process_->tail());
  }
  if (!exited_with(status, 0) && !(backend_gone && killed_by(status, SIGPIPE))) {
    throw InteropError("testpmd " + describe_status(*status) + " after 'quit':\n" +
                       process_->tail());
  }
}

// ---- vhostd-fwd ----

std::string VhostdFwd::binary() {
  std::string path = env_or("VHOSTD_FWD");
  if (path.empty()) {
    // Run by hand from a build directory: BUILD/tests/interop/test_interop -> BUILD/apps.
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    const auto candidate = self.parent_path().parent_path().parent_path() / "apps" / "vhostd-fwd";
    if (!ec && ::access(candidate.c_str(), X_OK) == 0) path = candidate.string();
  }
  return path;
}

std::vector<std::string> VhostdFwd::arguments(const FwdSpec& spec) {
  std::vector<std::string> args = {"-l", "0,1", "--main-lcore", "0"};
  for (const auto& port : spec.ports) {
    std::string value = "path=" + port.path;
    if (port.queues != 1) value += ",queues=" + std::to_string(port.queues);
    if (port.client) value += ",client";
    if (port.mrg_rxbuf) value += ",mrg_rxbuf=" + std::to_string(*port.mrg_rxbuf);
    args.insert(args.end(), {"--port", value});
  }
  args.insert(args.end(), {"--fwd", spec.fwd, "--burst", std::to_string(spec.burst)});
  if (spec.fwd == "txonly") args.insert(args.end(), {"--txpkts", std::to_string(spec.txpkts)});
  if (spec.stats_period > 0) {
    args.insert(args.end(), {"--stats-period", std::to_string(spec.stats_period)});
  }
  args.insert(args.end(), spec.extra_args.begin(), spec.extra_args.end());
  return args;
}

VhostdFwd::VhostdFwd(const TempDir& dir, const FwdSpec& spec) : spec_(spec) {
  const std::string bin = binary();
  if (bin.empty()) throw InteropError("VHOSTD_FWD is not set (meson sets it) and no ../../apps/vhostd-fwd");
  std::vector<std::string> argv;
  if (!stdbuf().empty()) argv = {stdbuf(), "-oL", "-eL"};
  argv.push_back(bin);
  for (auto& arg : arguments(spec)) argv.push_back(arg);
  process_ = std::make_unique<Process>(Process::Options{std::move(argv), dir / "vhostd-fwd.log"});
}

void VhostdFwd::wait_ready(std::chrono::milliseconds timeout) {
  if (!process_->wait_for_text("vhostd-fwd: ready", timeout)) {
    throw InteropError("vhostd-fwd did not print 'vhostd-fwd: ready' (" +
                       (process_->running() ? "still running after " +
                                                  std::to_string(timeout.count()) + " ms"
                                            : describe_status(*process_->status())) +
                       "):\n" + process_->tail());
  }
  for (const auto& port : spec_.ports) {
    if (!port.client && !path_exists(port.path)) {
      throw InteropError("vhostd-fwd is ready but " + port.path + " does not exist:\n" +
                         process_->tail());
    }
  }
}

std::map<int, PortTotals> VhostdFwd::stop(int sig, std::chrono::milliseconds timeout) {
  if (!process_->running()) {
    throw InteropError("vhostd-fwd is not running any more (" +
                       describe_status(*process_->status()) + "):\n" + process_->tail());
  }
  const auto status = process_->terminate(sig, timeout);
  const std::string signame = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal " + std::to_string(sig);
  if (!status) {
    throw InteropError("vhostd-fwd did not exit within " + std::to_string(timeout.count()) +
                       " ms of " + signame + ":\n" + process_->tail());
  }
  if (!exited_with(status, 0)) {
    throw InteropError("vhostd-fwd " + describe_status(*status) + " on " + signame +
                       " (expected exit 0):\n" + process_->tail());
  }
  auto totals = parse_totals(process_->output());
  if (totals.size() != spec_.ports.size()) {
    throw InteropError("vhostd-fwd printed " + std::to_string(totals.size()) +
                       " 'total port' lines for " + std::to_string(spec_.ports.size()) +
                       " ports:\n" + process_->tail());
  }
  for (const auto& port : spec_.ports) {
    if (port.client) continue;  // the frontend's socket
    EXPECT_FALSE(path_exists(port.path)) << "vhostd-fwd left its socket " << port.path;
  }
  return totals;
}

// ---- the fixture ----

void InteropTest::SetUp() {
  if (Testpmd::binary().empty()) {
    GTEST_SKIP() << "dpdk-testpmd is not installed (Debian: apt-get install dpdk); "
                    "set DPDK_TESTPMD to use another one";
  }
  dir_ = std::make_unique<TempDir>();
  (void)dpdk_memory();
}

VhostdFwd& InteropTest::start_vhostd(const FwdSpec& spec) {
  vhostd_ = std::make_unique<VhostdFwd>(*dir_, spec);
  vhostd_->wait_ready();
  return *vhostd_;
}

Testpmd& InteropTest::start_testpmd(const TestpmdConfig& config, bool wait_ready) {
  testpmds_.push_back(
      std::make_unique<Testpmd>(*dir_, "testpmd" + std::to_string(next_testpmd_++), config));
  Testpmd& pmd = *testpmds_.back();
  if (wait_ready) pmd.wait_ready();
  return pmd;
}

void InteropTest::kill_testpmd(Testpmd& pmd) {
  for (auto it = testpmds_.begin(); it != testpmds_.end(); ++it) {
    if (it->get() == &pmd) {
      pmd.process().kill();
      killed_.push_back(std::move(*it));
      testpmds_.erase(it);
      return;
    }
  }
}

void InteropTest::TearDown() {
  if (!dir_) return;
  // Frontends first, then the backend (SIGINT, so that it removes its sockets).
  for (auto& pmd : testpmds_) pmd->process().kill();
  if (vhostd_ && vhostd_->running()) vhostd_->process().terminate(SIGINT, 10s);
  if (HasFailure()) {
    std::vector<Process*> all;
    for (auto& pmd : killed_) all.push_back(&pmd->process());
    for (auto& pmd : testpmds_) all.push_back(&pmd->process());
    if (vhostd_) all.push_back(&vhostd_->process());
    for (Process* p : all) {
      std::cerr << "---- " << p->log_path() << " ("
                << (p->status() ? describe_status(*p->status()) : "running") << ")\n  $ "
                << p->command_line() << "\n"
                << p->tail(80);
    }
    if (env_or("VHOSTD_INTEROP_KEEP") == "1") {
      dir_->keep();
      std::cerr << "---- kept " << dir_->path() << "\n";
    }
  }
  testpmds_.clear();
  killed_.clear();
  vhostd_.reset();
  dir_.reset();
}

}  // namespace vhostd::interop
