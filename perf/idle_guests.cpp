// idle-guests: idle vhost-user-net guests, to load a backend with connected ports that carry
// nothing (perf/ports64.sh: 63 of them next to the one port dpdk-testpmd drives).
//
//   idle-guests [--socket-dir DIR --count N [--first K]] [--pairs 1] [--cpu N] [SOCKET...]
//
// For each socket (DIR/s<K> .. DIR/s<K+N-1>, then every SOCKET given), connects with the
// in-tree test frontend, negotiates what the port offers (LOG_ALL, RING_PACKED and IN_ORDER
// left out, as the frontend's default), puts memfd guest memory in place with SET_MEM_TABLE,
// sets up, enables and kicks the guest RX and TX ring of every pair (ring 2q guest RX, 2q+1
// guest TX; the control queue stays with the guest, as with DPDK virtio-user) and posts no
// buffer: the TX rings stay empty, which is what an idle guest's TX ring looks like to the
// backend's poller. Then prints "idle-guests: ready N" and sleeps until SIGINT or SIGTERM, and
// checks each connection is still open (exit 1 if the backend closed one).
// Exit 0 when all went well, 1 on any error, 2 on bad usage.
#include <poll.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "frontend.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace {

using namespace vhostd;
using namespace vhostd::test;

struct Options {
  std::vector<std::string> sockets;
  std::uint16_t pairs = 1;
  std::optional<unsigned> cpu;
};

constexpr perf::Cli kCli{
    "idle-guests",
    "usage: idle-guests [--socket-dir DIR --count N [--first K]] [--pairs 1] [--cpu N] [SOCKET...]\n"};

Options parse_options(int argc, char** argv) {
  Options o;
  std::string dir;
  unsigned long count = 0, first = 0;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) kCli.usage(arg + " needs a value");
      return args[++i];
    };
    if (arg == "--socket-dir") {
      dir = value();
    } else if (arg == "--count") {
      count = kCli.number(arg, value(), 1, 4096);
    } else if (arg == "--first") {
      first = kCli.number(arg, value(), 0, 1u << 20);
    } else if (arg == "--pairs") {
      o.pairs = static_cast<std::uint16_t>(kCli.number(arg, value(), 1, 128));
    } else if (arg == "--cpu") {
      o.cpu = static_cast<unsigned>(kCli.number(arg, value(), 0, 1u << 20));
    } else if (arg == "-h" || arg == "--help") {
      kCli.usage("help");
    } else if (!arg.empty() && arg[0] == '-') {
      kCli.usage("unknown option " + arg);
    } else {
      o.sockets.push_back(arg);
    }
  }
  if (dir.empty() != (count == 0)) kCli.usage("--socket-dir and --count go together");
  std::vector<std::string> from_dir;
  for (unsigned long k = first; k < first + count; ++k) from_dir.push_back(dir + "/s" + std::to_string(k));
  o.sockets.insert(o.sockets.begin(), from_dir.begin(), from_dir.end());
  if (o.sockets.empty()) kCli.usage("no socket given");
  return o;
}

int run(const Options& o) {
  if (o.cpu) pin_current_thread({*o.cpu});
  // Block the signals we wait for before anything else runs; sigwait() takes them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  if (::pthread_sigmask(SIG_BLOCK, &signals, nullptr) != 0) throw_error("pthread_sigmask failed");

  const std::size_t rings = 2u * o.pairs;
  DeviceOptions device;
  device.num_rings = rings;
  device.queue_size = 256;
  // Ring structures plus TestFrontend's data arena of each ring (kMaxSlots slots): untouched,
  // so the memfd stays sparse.
  device.memory_bytes = 4u * 1024 * 1024 + rings * (TestFrontend::kMaxSlots * TestFrontend::kSlotBytes + 64 * 1024);
  std::vector<TestFrontend> guests;
  guests.reserve(o.sockets.size());
  for (const std::string& socket : o.sockets) {
    try {
      guests.push_back(TestFrontend::connect(socket));
      guests.back().setup_device(device);
      for (std::size_t r = 0; r < rings; ++r) guests.back().kick(r);  // starts the ring
      guests.back().expect_in_sync();
    } catch (const Error& error) {
      throw_error(socket, ": ", error.what());
    }
  }
  std::printf("idle-guests: ready %zu\n", guests.size());
  std::fflush(stdout);

  int signal = 0;
  if (::sigwait(&signals, &signal) != 0) throw_error("sigwait failed");

  // Still connected: a closed socket reads as POLLHUP/POLLIN with EOF.
  int closed = 0;
  for (std::size_t i = 0; i < guests.size(); ++i) {
    struct pollfd p {guests[i].fd(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) {
      std::fprintf(stderr, "idle-guests: %s: the backend closed the connection or sent something\n",
                   o.sockets[i].c_str());
      ++closed;
    }
  }
  std::printf("idle-guests: %zu guests, %d closed by the backend\n", guests.size(), closed);
  return closed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "idle-guests: error: %s\n", e.what());
    return 1;
  }
}
