// The interop suite's side of the two programs under test: DPDK's testpmd driving
// net_virtio_user ports (the frontend, i.e. the guest), and vhostd-fwd (the backend).
//
// Every helper throws InteropError with the relevant log tail when a program misbehaves (did not
// start, did not answer, exited badly); gtest reports an exception as a test failure, and the
// fixture's TearDown kills whatever still runs and prints every log tail.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "process.hpp"

namespace vhostd::interop {

struct InteropError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- DPDK memory ---------------------------------------------------------------------------

// How testpmd gets its memory, decided once per test binary:
//  - hugepages: `--in-memory --single-file-segments` (memfd-backed hugepages: no hugetlbfs
//    mount and no files left behind, even when a testpmd is SIGKILLed; one fd per memseg list,
//    since virtio-user can only send a few memory regions to the backend);
//  - no hugepages: `--no-huge --no-shconf` (EAL backs its memory with a shared memfd, which
//    virtio-user passes to the backend like any hugepage fd).
// VHOSTD_INTEROP_HUGEPAGES=0 forces no-huge, =1 requires hugepages; unset: use free hugepages,
// else (as root) reserve some for the run (given back at exit), else no-huge.
struct DpdkMemory {
  bool hugepages = false;
  std::vector<std::string> eal_args;
  std::string description;
};
const DpdkMemory& dpdk_memory();

// ---- testpmd with net_virtio_user ports ---------------------------------------------------

struct VirtioUserPort {
  VirtioUserPort(std::string path_, int queues_ = 1, std::optional<int> mrg_rxbuf_ = {},
                 std::string mac_ = {}, bool server_ = false)
      : path(std::move(path_)),
        queues(queues_),
        mrg_rxbuf(mrg_rxbuf_),
        mac(std::move(mac_)),
        server(server_) {}
  std::string path;
  int queues = 1;
  std::optional<int> mrg_rxbuf;  // unset: virtio-user's default (on)
  std::string mac;               // unset: random
  bool server = false;           // virtio-user listens on path (the backend connects)
  std::optional<int> packed_vq;  // unset: virtio-user's default (split rings)
  std::optional<int> in_order;   // unset: virtio-user's default (on)
};

struct TestpmdConfig {
  std::vector<VirtioUserPort> ports;
  std::string forward_mode = "io";
  std::string txpkts = "64";  // txonly / tx_first frame: size, or segment sizes "64,936"
  int burst = 32;
  std::vector<std::string> extra_args;  // more testpmd (application) arguments
  // The forwarding lcore's CPU (testpmd's main lcore goes to the other one of cpus 0-1).
  int fwd_cpu = 0;
};

// One port's block of testpmd's "Forward statistics" (printed by `stop`).
struct FwdPortStats {
  std::uint64_t rx_packets = 0, rx_dropped = 0, tx_packets = 0, tx_dropped = 0;
};
// One stream's "Forward Stats for RX Port= P/Queue= Q -> TX Port= P/Queue= Q" block (printed
// when a port has several streams, i.e. several queues).
struct FwdStreamStats {
  int rx_port = 0, rx_queue = 0, tx_port = 0, tx_queue = 0;
  std::uint64_t rx_packets = 0, tx_packets = 0, tx_dropped = 0;
};
struct ForwardStats {
  std::map<int, FwdPortStats> ports;
  std::vector<FwdStreamStats> streams;
};
// One port's "NIC statistics" block (`show port stats all`): counted since the port started.
struct NicStats {
  std::uint64_t rx_packets = 0, rx_missed = 0, rx_bytes = 0, rx_errors = 0, rx_nombuf = 0;
  std::uint64_t tx_packets = 0, tx_errors = 0, tx_bytes = 0;
};
// One packet of `set verbose 1`'s receive dump.
struct RxDump {
  int port = -1, queue = -1;
  std::string src, dst, type, sw_ptype;
  std::uint64_t length = 0, nb_segs = 0, l2_len = 0, l3_len = 0, l4_len = 0;
};

ForwardStats parse_forward_stats(const std::string& text);
std::map<int, NicStats> parse_nic_stats(const std::string& text);
std::vector<RxDump> parse_rx_dumps(const std::string& text);

// dpdk-testpmd in interactive mode, fed its commands on a pipe (stdout line-buffered through
// stdbuf so that command output and prompts come in order).
class Testpmd {
 public:
  // The testpmd binary: $DPDK_TESTPMD or dpdk-testpmd in PATH; empty when not installed.
  static std::string binary();

  Testpmd(const TempDir& dir, const std::string& name, TestpmdConfig config);
  // Ends the process if it still runs and removes the runtime directory EAL made for its file
  // prefix (/var/run/dpdk/PREFIX as root), which EAL leaves behind even with --in-memory.
  ~Testpmd();

  // Waits for the first prompt; throws when testpmd failed to start a port.
  void wait_ready(std::chrono::milliseconds timeout = 60s);
  // Runs one command and returns what it printed (up to the next prompt).
  std::string command(const std::string& cmd, std::chrono::milliseconds timeout = 30s);
  void start(bool tx_first = false) { command(tx_first ? "start tx_first" : "start"); }
  ForwardStats stop();
  std::map<int, NicStats> port_stats();
  // `quit`: closes the ports (the backend sees the frontend go) and waits for the exit.
  // With `backend_gone`, dying of SIGPIPE is accepted too: DPDK 22.11's virtio-user writes
  // its vhost-user messages to a socket the backend closed without MSG_NOSIGNAL.
  void quit(bool backend_gone = false, std::chrono::milliseconds timeout = 30s);

  Process& process() { return *process_; }
  const TestpmdConfig& config() const { return config_; }

 private:
  TestpmdConfig config_;
  std::string file_prefix_;
  std::unique_ptr<Process> process_;
};

// ---- vhostd-fwd ------------------------------------------------------------------------------

// One `total port N:` line.
struct PortTotals {
  std::uint64_t rx_packets = 0, rx_bytes = 0, tx_packets = 0, tx_bytes = 0, drops = 0, errors = 0;
};
std::map<int, PortTotals> parse_totals(const std::string& text);

struct FwdPortSpec {
  FwdPortSpec(std::string path_, int queues_ = 1, std::optional<int> mrg_rxbuf_ = {},
              bool client_ = false)
      : path(std::move(path_)), queues(queues_), mrg_rxbuf(mrg_rxbuf_), client(client_) {}
  std::string path;
  int queues = 1;
  std::optional<int> mrg_rxbuf;  // unset: the default (on)
  bool client = false;           // connect to a frontend listening on path
};
struct FwdSpec {
  std::vector<FwdPortSpec> ports;
  std::string fwd = "io";
  int txpkts = 64;
  int burst = 64;
  int stats_period = 0;
  std::vector<std::string> extra_args;  // appended as they are (e.g. --poll-mode adaptive)
};

class VhostdFwd {
 public:
  // $VHOSTD_FWD (set by meson); empty when unset.
  static std::string binary();
  static std::vector<std::string> arguments(const FwdSpec& spec);

  VhostdFwd(const TempDir& dir, const FwdSpec& spec);
  // Waits for `vhostd-fwd: ready` (and its sockets, in server mode).
  void wait_ready(std::chrono::milliseconds timeout = 30s);
  // SIGINT (or SIGTERM); expects exit 0, its sockets removed, and returns the totals it
  // printed.
  std::map<int, PortTotals> stop(int sig = SIGINT, std::chrono::milliseconds timeout = 30s);
  bool running() { return process_->running(); }
  Process& process() { return *process_; }

 private:
  FwdSpec spec_;
  std::unique_ptr<Process> process_;
};

// ---- the fixture -------------------------------------------------------------------------

class InteropTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  std::string socket(const std::string& name) const { return *dir_ / name; }
  VhostdFwd& start_vhostd(const FwdSpec& spec);
  // Starts testpmd and (unless told not to: a virtio-user server waits for its backend
  // before it prompts) waits for its prompt.
  Testpmd& start_testpmd(const TestpmdConfig& config, bool wait_ready = true);
  // Kills (SIGKILL, whole group) a testpmd and forgets it.
  void kill_testpmd(Testpmd& pmd);

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<VhostdFwd> vhostd_;
  std::vector<std::unique_ptr<Testpmd>> testpmds_;
  std::vector<std::unique_ptr<Testpmd>> killed_;  // kept for their logs
  int next_testpmd_ = 0;
};

}  // namespace vhostd::interop
