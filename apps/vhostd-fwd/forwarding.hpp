// vhostd-fwd: the forwarding engine (the PacketHandler of every port) and ring placement.
//
// Modes (testpmd's names): io (ports in pairs 0<->1, 2<->3; a lone last port loops back),
// macswap, rxonly, txonly, l2 (MAC-learning switch). Every guest RX ring must have one
// writing lcore:
//   io, macswap, rxonly: each RX ring is written only from the one TX ring that feeds it, and
//     txonly writes an RX ring only from that ring's own poller, so any placement of the polled
//     rings keeps one writer: vhostd-fwd lets the daemons place them by NUMA node (or lcore=);
//   l2: any port's TX q may write any port's RX q, so queue pair q of every port must be on one
//     lcore: plan_placement() (q mod n), applied through NetPort::set_queue_placement().
// plan_placement() also gives a round-robin plan for the other modes (TX rings of successive
// pairs over the lcores; txonly: both rings of a pair together).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mac_table.hpp"
#include "vhostd/net/net_port.hpp"

namespace vhostd::fwd {

enum class FwdMode { io, macswap, rxonly, txonly, l2 };
FwdMode parse_fwd_mode(const std::string& name);  // throws Error
const char* to_string(FwdMode mode) noexcept;

struct FwdOptions {
  FwdMode mode = FwdMode::io;
  std::uint16_t burst = 64;       // 1..net::kMaxBurst
  std::uint32_t txpkts = 64;      // txonly frame size, 60..9000
  std::uint32_t tx_retries = 0;   // retries of a burst into a full RX ring before dropping
  std::uint32_t l2_age_seconds = 300;
};

class Forwarder : public net::PacketHandler {
 public:
  // `ports` outlive the forwarder; one data lcore per entry of `lcore_nodes` will call it, each
  // getting its scratch on its NUMA node (the entry; -1 unknown), found through
  // Poller::current() on its first call.
  Forwarder(const FwdOptions& options, std::vector<net::NetPort*> ports, const std::vector<int>& lcore_nodes);
  // `num_lcores` data lcores on unknown nodes.
  Forwarder(const FwdOptions& options, std::vector<net::NetPort*> ports, std::size_t num_lcores);
  ~Forwarder() override;

  // Where each data lcore's scratch (burst arrays, per-port lists) lives, one entry per
  // context made up front: the node it was made for, the node its memory is bound to (-1: not
  // bound), whether it got a hugepage, and the lcore that claimed it (-1: none yet, or a thread
  // that is not a poller).
  struct ScratchReport {
    int node = -1;
    int bound_node = -1;
    bool hugepage = false;
    int lcore = -1;
  };
  std::vector<ScratchReport> scratch_reports() const;

  // Ring indexes per data lcore for port `port_index` (NetPort::set_queue_placement()).
  std::vector<std::vector<std::uint16_t>> plan_placement(std::size_t port_index) const;
  // Index of the port `port_index` forwards to in io mode.
  std::size_t io_peer(std::size_t port_index) const noexcept;
  // The l2 table's clock (seconds); advanced by the app's main loop.
  void tick(std::uint32_t now_seconds) noexcept { mac_table_.set_now(now_seconds); }
  const MacTable& mac_table() const noexcept { return mac_table_; }

  void on_guest_tx(net::NetPort& port, std::uint16_t pair) noexcept override;
  void on_guest_rx(net::NetPort& port, std::uint16_t pair) noexcept override;
  bool polls_guest_rx() const noexcept override { return options_.mode == FwdMode::txonly; }
  void on_rarp(net::NetPort& port, const net::MacAddress& mac) override;

 private:
  // One data lcore's scratch: a burst and the per-destination packet lists, node-local.
  // Allocated up front; claimed by a poller thread the first time it calls in.
  struct LcoreContext;
  LcoreContext& context() noexcept;
  LcoreContext& claim_context() noexcept;
  std::size_t index_of(const net::NetPort& port) const noexcept;
  // Transmits with the configured retries; drops and counts what does not fit.
  void send(net::NetPort& dest, std::uint16_t pair, net::Packet* const* packets, std::uint16_t n) noexcept;
  void switch_l2(net::NetPort& port, std::size_t in, std::uint16_t pair, net::PacketBurst& burst,
                 LcoreContext& ctx) noexcept;

  FwdOptions options_;
  std::uint64_t id_ = 0;  // tells this forwarder's per-thread context claim from another's
  std::vector<net::NetPort*> ports_;
  std::size_t num_lcores_;
  std::vector<std::unique_ptr<LcoreContext>> contexts_;
  MacTable mac_table_;
  // txonly: one template frame per port (virtio-net header + UDP frame).
  std::vector<std::vector<std::uint8_t>> templates_;
  std::unique_ptr<DescriptorChain[]> template_chains_;
  std::unique_ptr<net::Packet[]> template_packets_;
};

}  // namespace vhostd::fwd
