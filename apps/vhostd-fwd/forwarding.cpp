// vhostd-fwd: the forwarding engine (see forwarding.hpp).
#include "forwarding.hpp"

#include <algorithm>
#include <cstring>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/memory/numa.hpp"
#include "vhostd/runtime/poller.hpp"

namespace vhostd::fwd {

using net::NetPort;
using net::Packet;
using net::PacketBurst;

// One data lcore's scratch, in one NodeLocalBuffer on that lcore's NUMA node (a 2 MB hugepage
// when one is free): the burst's arrays and the per-destination lists come from a monotonic
// arena over it, sized up front (the heap would only serve a miscount).
struct Forwarder::LcoreContext {
  LcoreContext(std::uint16_t burst, std::size_t num_ports, int numa_node)
      : node(numa_node),
        memory(NodeLocalBuffer::allocate(arena_bytes(burst, num_ports), numa_node)),
        arena(memory.data(), memory.size()),
        packets(burst, &arena),
        pointers(burst, &arena),
        per_port(&arena),
        counts(num_ports, &arena) {
    per_port.reserve(num_ports);
    for (std::size_t p = 0; p < num_ports; ++p) per_port.emplace_back(burst);  // allocator propagates
  }
  static std::size_t arena_bytes(std::uint16_t burst, std::size_t num_ports) {
    return PacketBurst::array_bytes(burst) + burst * sizeof(Packet*) +
           num_ports * (sizeof(std::pmr::vector<Packet*>) + burst * sizeof(Packet*) + sizeof(std::uint16_t)) +
           16 * kCacheLine;  // alignment padding between the arrays
  }

  int node;                       // of the lcore this context is meant for (-1 unknown)
  std::atomic<bool> claimed{false};  // by a poller thread, on its first call
  std::atomic<int> lcore{-1};        // the claiming poller's lcore id (relaxed: a report)
  NodeLocalBuffer memory;
  std::pmr::monotonic_buffer_resource arena;
  PacketBurst packets;
  std::pmr::vector<Packet*> pointers;               // io / macswap: the burst in order
  std::pmr::vector<std::pmr::vector<Packet*>> per_port;  // l2: packets per destination port
  std::pmr::vector<std::uint16_t> counts;
};

namespace {

std::atomic<std::uint64_t> g_next_forwarder_id{1};
thread_local std::uint64_t t_context_owner = 0;
thread_local void* t_context = nullptr;

// The 16-bit ones-complement sum used by IPv4 and UDP headers.
std::uint16_t fold_checksum(const std::uint8_t* data, std::size_t len, std::uint32_t sum = 0) {
  for (std::size_t i = 0; i + 1 < len; i += 2) sum += static_cast<std::uint32_t>(data[i] << 8 | data[i + 1]);
  if (len & 1) sum += static_cast<std::uint32_t>(data[len - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<std::uint16_t>(~sum);
}

void put16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v);
}

// A UDP/IPv4 frame of `size` bytes from `src` to `dst` (testpmd txonly's shape: 198.18.0.1:9
// -> 198.18.0.2:9, zero payload, both checksums valid).
std::vector<std::uint8_t> build_udp_frame(std::uint32_t size, const net::MacAddress& dst,
                                          const net::MacAddress& src) {
  std::vector<std::uint8_t> f(size, 0);
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  put16(&f[12], 0x0800);
  std::uint8_t* ip = &f[14];
  const auto ip_len = static_cast<std::uint16_t>(size - 14);
  ip[0] = 0x45;
  put16(ip + 2, ip_len);
  ip[8] = 64;  // ttl
  ip[9] = 17;  // udp
  const std::uint8_t saddr[4] = {198, 18, 0, 1}, daddr[4] = {198, 18, 0, 2};
  std::memcpy(ip + 12, saddr, 4);
  std::memcpy(ip + 16, daddr, 4);
  put16(ip + 10, fold_checksum(ip, 20));
  std::uint8_t* udp = ip + 20;
  const auto udp_len = static_cast<std::uint16_t>(ip_len - 20);
  put16(udp, 9);
  put16(udp + 2, 9);
  put16(udp + 4, udp_len);
  std::uint8_t pseudo[12];
  std::memcpy(pseudo, saddr, 4);
  std::memcpy(pseudo + 4, daddr, 4);
  pseudo[8] = 0, pseudo[9] = 17;
  put16(pseudo + 10, udp_len);
  std::uint32_t sum = 0;
  for (int i = 0; i < 12; i += 2) sum += static_cast<std::uint32_t>(pseudo[i] << 8 | pseudo[i + 1]);
  std::uint16_t csum = fold_checksum(udp, udp_len, sum);
  put16(udp + 6, csum == 0 ? 0xffff : csum);
  return f;
}

}  // namespace

FwdMode parse_fwd_mode(const std::string& name) {
  if (name == "io") return FwdMode::io;
  if (name == "macswap") return FwdMode::macswap;
  if (name == "rxonly") return FwdMode::rxonly;
  if (name == "txonly") return FwdMode::txonly;
  if (name == "l2") return FwdMode::l2;
  throw_error("--fwd '", name, "': expected io, macswap, rxonly, txonly or l2");
}

const char* to_string(FwdMode mode) noexcept {
  switch (mode) {
    case FwdMode::io: return "io";
    case FwdMode::macswap: return "macswap";
    case FwdMode::rxonly: return "rxonly";
    case FwdMode::txonly: return "txonly";
    case FwdMode::l2: return "l2";
  }
  return "?";
}

Forwarder::Forwarder(const FwdOptions& options, std::vector<NetPort*> ports, std::size_t num_lcores)
    : Forwarder(options, std::move(ports), std::vector<int>(std::max<std::size_t>(num_lcores, 1), -1)) {}

Forwarder::Forwarder(const FwdOptions& options, std::vector<NetPort*> ports, const std::vector<int>& lcore_nodes)
    : options_(options),
      ports_(std::move(ports)),
      num_lcores_(std::max<std::size_t>(lcore_nodes.size(), 1)),
      mac_table_(options.l2_age_seconds) {
  if (options_.burst == 0 || options_.burst > net::kMaxBurst) {
    throw_error("--burst ", options_.burst, ": must be 1..", net::kMaxBurst);
  }
  if (options_.txpkts < 60 || options_.txpkts > 9000) throw_error("--txpkts ", options_.txpkts, ": must be 60..9000");
  if (ports_.empty()) throw_error("no port");
  for (std::size_t i = 0; i < num_lcores_; ++i) {
    const int node = i < lcore_nodes.size() ? lcore_nodes[i] : -1;
    contexts_.push_back(std::make_unique<LcoreContext>(options_.burst, ports_.size(), node));
  }
  // Frames generated in txonly mode: a zeroed virtio-net header (12 bytes; a legacy guest's
  // 10-byte header is the same bytes' prefix) then the frame, as one readable segment.
  template_chains_ = std::make_unique<DescriptorChain[]>(ports_.size());
  template_packets_ = std::make_unique<Packet[]>(ports_.size());
  const net::MacAddress source{0x02, 0x76, 0x68, 0x6f, 0x73, 0x74};  // "vhost"
  for (std::size_t p = 0; p < ports_.size(); ++p) {
    std::vector<std::uint8_t> bytes(net::kNetHeaderLen, 0);
    const auto frame = build_udp_frame(options_.txpkts, ports_[p]->config().mac, source);
    bytes.insert(bytes.end(), frame.begin(), frame.end());
    templates_.push_back(std::move(bytes));
  }
  for (std::size_t p = 0; p < ports_.size(); ++p) {
    DescriptorChain& chain = template_chains_[p];
    chain.segments[0] = ChainSegment{templates_[p].data(), 0, static_cast<std::uint32_t>(templates_[p].size())};
    chain.num_readable = 1;
    chain.readable_bytes = static_cast<std::uint32_t>(templates_[p].size());
    Packet& packet = template_packets_[p];
    packet.chain = &chain;
    packet.len = options_.txpkts;
    packet.data_offset = net::kNetHeaderLen;
    std::memcpy(packet.eth.data(), templates_[p].data() + net::kNetHeaderLen, net::kEthHeaderLen);
  }
  id_ = g_next_forwarder_id.fetch_add(1, std::memory_order_relaxed);
}

Forwarder::~Forwarder() = default;

Forwarder::LcoreContext& Forwarder::context() noexcept {
  if (VHOSTD_UNLIKELY(t_context_owner != id_)) {
    t_context = &claim_context();
    t_context_owner = id_;
  }
  return *static_cast<LcoreContext*>(t_context);
}

std::vector<Forwarder::ScratchReport> Forwarder::scratch_reports() const {
  std::vector<ScratchReport> reports;
  for (const auto& context : contexts_) {
    reports.push_back({context->node, context->memory.bound_node(), context->memory.hugepages(),
                       context->lcore.load(std::memory_order_relaxed)});
  }
  return reports;
}

Forwarder::LcoreContext& Forwarder::claim_context() noexcept {
  // First call from this thread: a free context made for this lcore's node, else any free one.
  // The runtime calls in from at most num_lcores threads.
  const Poller* poller = Poller::current();
  const int node = poller != nullptr ? poller->numa_node() : -1;
  for (const bool same_node_only : {true, false}) {
    for (auto& context : contexts_) {
      if (same_node_only && context->node != node) continue;
      bool free = false;
      // Acq_rel: one thread wins each context.
      if (context->claimed.compare_exchange_strong(free, true, std::memory_order_acq_rel)) {
        if (poller != nullptr) context->lcore.store(static_cast<int>(poller->lcore_id()), std::memory_order_relaxed);
        return *context;
      }
    }
  }
  return *contexts_.back();
}

std::size_t Forwarder::index_of(const NetPort& port) const noexcept {
  for (std::size_t i = 0; i < ports_.size(); ++i) {
    if (ports_[i] == &port) return i;
  }
  return 0;
}

std::size_t Forwarder::io_peer(std::size_t port_index) const noexcept {
  const std::size_t peer = port_index ^ 1u;
  return peer < ports_.size() ? peer : port_index;
}

std::vector<std::vector<std::uint16_t>> Forwarder::plan_placement(std::size_t port_index) const {
  std::vector<std::vector<std::uint16_t>> plan(num_lcores_);
  // Position of this port's pairs in the global round-robin over (port, pair).
  std::size_t slot = 0;
  for (std::size_t p = 0; p < port_index; ++p) slot += ports_[p]->config().queue_pairs;
  const NetPort& port = *ports_[port_index];
  for (std::uint16_t q = 0; q < port.config().queue_pairs; ++q) {
    const std::size_t lcore = options_.mode == FwdMode::l2 ? q % num_lcores_ : (slot + q) % num_lcores_;
    plan[lcore].push_back(NetPort::tx_ring(q));
    plan[lcore].push_back(NetPort::rx_ring(q));  // polled only in txonly mode
  }
  plan[port_index % num_lcores_].push_back(port.ctrl_ring());
  return plan;
}

void Forwarder::send(NetPort& dest, std::uint16_t pair, Packet* const* packets, std::uint16_t n) noexcept {
  std::uint16_t done = dest.transmit(pair, packets, n);
  for (std::uint32_t retry = 0; done < n && retry < options_.tx_retries; ++retry) {
    cpu_relax();
    done = static_cast<std::uint16_t>(done + dest.transmit(pair, packets + done, static_cast<std::uint16_t>(n - done)));
  }
  dest.drop(pair, n - done);
}

void Forwarder::on_guest_tx(NetPort& port, std::uint16_t pair) noexcept {
  LcoreContext& ctx = context();
  PacketBurst& burst = ctx.packets;
  std::uint16_t budget = burst.capacity();
  if (options_.mode == FwdMode::io) {
    // Whole lines of plain packets go straight from ring to ring (packed rings); receive() takes
    // what is left of the burst.
    NetPort& dest = *ports_[io_peer(index_of(port))];
    if (pair < dest.config().queue_pairs) {
      budget = static_cast<std::uint16_t>(budget - port.forward_lines(pair, dest, pair, budget));
      if (budget == 0) return;
    }
  }
  const std::uint16_t n = port.receive(pair, burst, budget);
  if (n != 0) {
    switch (options_.mode) {
      case FwdMode::rxonly:
      case FwdMode::txonly: {
        // Read every Ethernet header (already copied by receive()), as testpmd's rxonly does.
        std::uint32_t types = 0;
        for (std::uint16_t i = 0; i < n; ++i) types += burst[i].eth[12];
        asm volatile("" : : "r"(types));  // keep the reads
        break;
      }
      case FwdMode::io:
      case FwdMode::macswap: {
        if (options_.mode == FwdMode::macswap) {
          for (std::uint16_t i = 0; i < n; ++i) {
            auto& eth = burst[i].eth;
            std::swap_ranges(eth.begin(), eth.begin() + 6, eth.begin() + 6);
          }
        }
        NetPort& dest = options_.mode == FwdMode::io ? *ports_[io_peer(index_of(port))] : port;
        for (std::uint16_t i = 0; i < n; ++i) ctx.pointers[i] = &burst[i];
        if (pair < dest.config().queue_pairs) {
          send(dest, pair, ctx.pointers.data(), n);
        } else {
          dest.drop(0, n);  // the destination has no such queue pair
        }
        break;
      }
      case FwdMode::l2:
        switch_l2(port, index_of(port), pair, burst, ctx);
        break;
    }
  }
  port.release(pair, burst);
}

void Forwarder::switch_l2(NetPort& port, std::size_t in, std::uint16_t pair, PacketBurst& burst,
                          LcoreContext& ctx) noexcept {
  (void)port;
  std::fill(ctx.counts.begin(), ctx.counts.end(), 0);
  for (std::uint16_t i = 0; i < burst.size(); ++i) {
    Packet& packet = burst[i];
    mac_table_.learn(packet.eth.data() + 6, static_cast<int>(in));
    const int out = (packet.eth[0] & 1) ? MacTable::kNone : mac_table_.lookup(packet.eth.data());
    if (out == static_cast<int>(in)) continue;  // the destination is on the port it came from
    if (out != MacTable::kNone) {
      ctx.per_port[out][ctx.counts[out]++] = &packet;
      continue;
    }
    for (std::size_t p = 0; p < ports_.size(); ++p) {  // flood: unknown or group destination
      if (p != in) ctx.per_port[p][ctx.counts[p]++] = &packet;
    }
  }
  for (std::size_t p = 0; p < ports_.size(); ++p) {
    if (ctx.counts[p] == 0) continue;
    if (pair < ports_[p]->config().queue_pairs) {
      send(*ports_[p], pair, ctx.per_port[p].data(), ctx.counts[p]);
    } else {
      ports_[p]->drop(0, ctx.counts[p]);  // the destination has no such queue pair
    }
  }
}

void Forwarder::on_guest_rx(NetPort& port, std::uint16_t pair) noexcept {
  if (options_.mode != FwdMode::txonly) return;
  LcoreContext& ctx = context();
  Packet* frame = &template_packets_[index_of(port)];
  std::fill_n(ctx.pointers.begin(), options_.burst, frame);
  // As fast as the guest accepts them: what does not fit now is not generated.
  port.transmit(pair, ctx.pointers.data(), options_.burst);
}

void Forwarder::on_rarp(NetPort& port, const net::MacAddress& mac) {
  const std::size_t in = index_of(port);
  if (options_.mode == FwdMode::l2) mac_table_.learn(mac.data(), static_cast<int>(in));
  for (std::size_t p = 0; p < ports_.size(); ++p) {
    if (p != in) ports_[p]->announce(mac);
  }
}

}  // namespace vhostd::fwd
