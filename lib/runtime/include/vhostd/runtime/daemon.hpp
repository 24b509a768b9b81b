// vhostd runtime: the daemon object, one vhost-user device served on one socket.
//
// A Daemon (rust-vmm's `VhostUserDaemon`) is built from a name, a backend and the Runtime
// whose lcores run it. start_server() listens on a socket path (one frontend at a time);
// start_client() connects to a frontend's socket, retrying with back-off, and reconnects after
// a disconnect. wait() blocks until stop() or a write to exit_event(). All socket work runs
// on the runtime's control lcore; the daemon's rings run on its pollers.
//
// Placement of a polled ring, when it starts (first of these that applies):
//  1. the backend's queues_per_lcore() plan, if it lists the ring;
//  2. the daemon's explicit lcore (set_lcore(), e.g. vhostd-fwd's --port ...,lcore=N);
//  3. place_ring() (placement.hpp): the least-loaded data lcore on the NUMA node of the guest
//     memory holding the ring's descriptor table (else the lowest guest region), counting every
//     daemon's rings; any data lcore when that node has none (logged as a warning).
// Each placement is logged (`port0: ring 1 -> lcore 1 (cpu 1, node 0; guest memory on node 0)`)
// and shown in ring_reports(). A ring handed back after a pause stays on its lcore unless its
// memory node changed.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "vhostd/vhost/backend.hpp"
#include "vhostd/vhost/codec.hpp"
#include "vhostd/vhost/endpoint.hpp"
#include "vhostd/vhost/session.hpp"
#include "vhostd/runtime/runtime.hpp"

namespace vhostd {

// One ring as seen from outside, readable while the daemon runs.
struct RingReport {
  std::uint16_t index = 0;
  bool started = false;
  bool enabled = false;
  bool polled = false;
  bool attached = false;  // on the data path (polled, or driven by other rings' handlers)
  int lcore = -1;         // data lcore polling it, -1 when not polled
  int lcore_node = -1;    // NUMA node of that lcore, -1 when not polled or unknown
  int memory_node = -1;   // NUMA node of the guest memory holding the ring, -1 unknown
  RingError error = RingError::none;
  std::uint64_t requests = 0;
  std::uint64_t batches = 0;
  std::uint64_t empty_polls = 0;
  std::uint64_t busy_cycles = 0;
  std::uint64_t notifications = 0;
  std::uint64_t errors = 0;
};

class Daemon : private RingHost {
 public:
  Daemon(std::string name, std::shared_ptr<Backend> backend, Runtime& runtime);
  ~Daemon() override;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Listens on `path` (stale sockets replaced, a live one refused: throws Error).
  void start_server(const std::string& path, ListenOptions options = {});
  // Connects to a frontend listening on `path`, retrying with back-off until it is there.
  void start_client(const std::string& path);
  // Blocks until the daemon is stopped.
  void wait();
  // Stops serving: the connection is torn down and the socket closed. Any thread.
  void stop();
  // Writing 1 to this eventfd stops the daemon (rust-vmm's exit event).
  int exit_event() const noexcept { return exit_event_.get(); }

  const std::string& name() const noexcept { return name_; }
  Backend& backend() noexcept { return *backend_; }
  Runtime& runtime() noexcept { return runtime_; }
  bool connected() const noexcept { return connected_.load(std::memory_order_acquire); }
  // Connections accepted (server) or established (client) so far.
  std::uint64_t connections() const noexcept { return connections_.load(std::memory_order_acquire); }
  std::vector<RingReport> ring_reports();
  // Runs fn(Session*) on the control lcore (nullptr when no frontend is connected).
  void with_session(const std::function<void(Session*)>& fn);

  // Every polled ring of this daemon on data lcore `lcore_id` (overridden only by the backend's
  // queues_per_lcore() plan), from the next time a ring starts. Throws Error if `lcore_id` is
  // not one of the runtime's data lcores.
  void set_lcore(unsigned lcore_id);
  // Tells the NUMA node of a guest memory region for placement (default:
  // MappedRegion::numa_node()). Tests use it to fake a guest on another node. Called on the
  // control lcore; must not throw.
  using MemoryNodeProbe = std::function<int(const MappedRegion&)>;
  void set_memory_node_probe(MemoryNodeProbe probe);

 private:
  void watch_kick(std::uint16_t index, int fd) override;
  void unwatch_kick(std::uint16_t index, int fd) override;
  void start_polling(std::uint16_t index, Vring& ring) override;
  void stop_polling(std::uint16_t index, Vring& ring) override;

  // The NUMA node of the guest memory holding ring `index` (see the top of this file), -1.
  int ring_memory_node(std::uint16_t index) const;
  // Chooses the poller for ring `index` and logs the choice.
  std::size_t place(std::uint16_t index, int memory_node) const;
  void on_listener_ready();
  void on_connection_ready();
  void attach(UniqueFd connection);
  void disconnect(const std::string& reason);
  void try_connect();
  // While connected: looks for rings the guest broke every kRingCheckPeriod.
  void check_rings();
  void shutdown();

  std::string name_;
  std::shared_ptr<Backend> backend_;
  Runtime& runtime_;
  UniqueFd exit_event_;

  // control lcore only
  std::optional<UnixListener> listener_;
  std::string client_path_;
  std::chrono::milliseconds reconnect_delay_{10};
  std::uint64_t reconnect_timer_ = 0;
  std::uint64_t ring_check_timer_ = 0;
  UniqueFd connection_;
  MessageReader reader_;
  std::unique_ptr<Session> session_;
  // Per ring: the poller index, or one of these.
  static constexpr int kDetached = -1;          // not on the data path
  static constexpr int kAttachedUnpolled = -2;  // on the data path, driven by other rings
  std::vector<int> ring_poller_;
  // Per ring: where it was last placed on this connection and for which memory node.
  struct LastPlacement {
    int poller = -1;
    int memory_node = -1;
  };
  std::vector<LastPlacement> last_placement_;
  std::optional<unsigned> explicit_lcore_;
  MemoryNodeProbe memory_node_probe_;
  bool shut_down_ = false;

  std::atomic<bool> connected_{false};
  std::atomic<std::uint64_t> connections_{0};
  std::mutex stopped_mutex_;
  std::condition_variable stopped_cv_;
  bool stopped_ = false;  // guarded by stopped_mutex_
};

}  // namespace vhostd
