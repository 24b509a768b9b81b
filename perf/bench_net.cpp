// vhostd perf: NetPort data-path microbenchmarks, one thread, real split rings in real
// memfd-backed guest memory (see bench_fixture.hpp for the setup and the guest's steady state).
//
//   BM_Dequeue       NetPort::receive() + release() of a burst from a guest TX ring
//   BM_Enqueue       NetPort::transmit() of a burst into a guest RX ring (MRG_RXBUF on/off)
//   BM_Forward       guest A TX -> guest B RX through vhostd-fwd's Forwarder in io mode
//                    (receive, transmit: the one copy, release), what a data lcore runs
//   BM_ForwardDirect the same three calls without the Forwarder (its own cost is the difference)
//
// Every iteration is one burst and includes the guest's refill (one load and two stores per
// ring, see GuestRing::refill()). Each benchmark checks after its loop that every packet was
// handled (no drop, no error, ring not in error) and that the last delivered frame is intact.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "bench_fixture.hpp"
#include "forwarding.hpp"

namespace vhostd::bench {
namespace {

// Common post-run checks; empty when fine.
std::string check_ring(VringState& state, const char* what) {
  if (state.in_error()) return std::string(what) + " ring in error: " + to_string(state.error());
  return {};
}

void fail(benchmark::State& state, const std::string& why) { state.SkipWithError(why.c_str()); }

// Every iteration handles one full burst.
std::uint64_t expected_packets(const benchmark::State& state, std::uint16_t burst_size) {
  return static_cast<std::uint64_t>(state.iterations()) * burst_size;
}

// ---- dequeue: receive() + release() ----

void BM_Dequeue(benchmark::State& state) {
  try {
    const auto burst_size = static_cast<std::uint16_t>(state.range(0));
    PortOptions options;
    options.frame_len = static_cast<std::uint32_t>(state.range(1));
    QsbrDomain domain;
    BenchPort a("a", domain, options);
    net::NetPort& port = a.port();
    GuestRing& tx = a.guest_tx();
    net::PacketBurst burst(burst_size);
    std::uint64_t packets = 0;
    for (auto _ : state) {
      packets += port.receive(0, burst);
      port.release(0, burst);
      tx.refill();
    }
    std::string error = check_ring(a.tx_state(), "guest TX");
    if (error.empty() && packets != expected_packets(state, burst_size)) error = "short bursts";
    if (error.empty() && port.stats(0).rx.errors.load() != 0) error = "rx errors";
    if (!error.empty()) return fail(state, error);
    report_packets(state, packets);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}
BENCHMARK(BM_Dequeue)
    ->ArgNames({"burst", "size"})
    ->Args({32, 64})
    ->Args({64, 64})
    ->Args({256, 64})
    ->Args({64, 1518});

// ---- enqueue: transmit() ----

void BM_Enqueue(benchmark::State& state) {
  try {
    const auto burst_size = static_cast<std::uint16_t>(state.range(0));
    PortOptions src_options;
    src_options.frame_len = static_cast<std::uint32_t>(state.range(2));
    PortOptions dst_options = peer_options(src_options);
    dst_options.mrg_rxbuf = state.range(1) != 0;
    QsbrDomain domain;
    BenchPort src("src", domain, src_options);
    BenchPort dst("dst", domain, dst_options);
    // The packets: one burst received from the source guest's TX ring once (views into its
    // memory, as the forwarding engine gets them), sent again and again; released at the end.
    net::PacketBurst burst(burst_size);
    if (src.port().receive(0, burst) != burst_size) return fail(state, "source burst short");
    std::vector<net::Packet*> packets(burst_size);
    for (std::uint16_t i = 0; i < burst_size; ++i) packets[i] = &burst[i];
    net::NetPort& port = dst.port();
    GuestRing& rx = dst.guest_rx();
    std::uint64_t sent = 0;
    for (auto _ : state) {
      sent += port.transmit(0, packets.data(), burst_size);
      rx.refill();
    }
    src.port().release(0, burst);
    std::string error = check_ring(dst.rx_state(), "guest RX");
    if (error.empty() && sent != expected_packets(state, burst_size)) error = "short bursts";
    if (error.empty() && port.stats(0).tx.drops.load() != 0) error = "tx drops";
    if (error.empty()) error = dst.check_last_rx(src_options);
    if (!error.empty()) return fail(state, error);
    report_packets(state, sent);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}
BENCHMARK(BM_Enqueue)
    ->ArgNames({"burst", "mrg", "size"})
    ->Args({32, 1, 64})
    ->Args({64, 1, 64})
    ->Args({256, 1, 64})
    ->Args({32, 0, 64})
    ->Args({64, 0, 64})
    ->Args({256, 0, 64})
    ->Args({64, 1, 1518});

// ---- forward: guest A TX -> guest B RX ----

// After a forwarding run of `expected` packets from A to B; empty when fine.
std::string check_forwarded(BenchPort& a, BenchPort& b, std::uint64_t expected) {
  std::string error = check_ring(a.tx_state(), "A guest TX");
  if (error.empty()) error = check_ring(b.rx_state(), "B guest RX");
  const net::PairStats& in = a.port().stats(0);
  const net::PairStats& out = b.port().stats(0);
  if (error.empty() && in.rx.packets.load() != expected) error = "A received " + std::to_string(in.rx.packets.load());
  if (error.empty() && out.tx.packets.load() != expected) error = "B delivered " + std::to_string(out.tx.packets.load());
  if (error.empty() && out.tx.drops.load() != 0) error = "B dropped " + std::to_string(out.tx.drops.load());
  if (error.empty()) error = b.check_last_rx(a.options());
  return error;
}

void BM_Forward(benchmark::State& state) {
  try {
    const auto burst_size = static_cast<std::uint16_t>(state.range(1));
    PortOptions options;
    options.frame_len = static_cast<std::uint32_t>(state.range(0));
    QsbrDomain domain;
    BenchPort a("a", domain, options);
    BenchPort b("b", domain, peer_options(options));
    fwd::FwdOptions fwd_options;
    fwd_options.mode = fwd::FwdMode::io;
    fwd_options.burst = burst_size;
    fwd::Forwarder forwarder(fwd_options, {&a.port(), &b.port()}, 1);
    a.port().set_handler(&forwarder);
    b.port().set_handler(&forwarder);
    net::NetPort& in = a.port();
    GuestRing& tx = a.guest_tx();
    GuestRing& rx = b.guest_rx();
    for (auto _ : state) {
      forwarder.on_guest_tx(in, 0);  // what the poller calls when A's TX ring has work
      tx.refill();
      rx.refill();
    }
    const std::uint64_t forwarded = b.port().stats(0).tx.packets.load();
    const std::string error = check_forwarded(a, b, expected_packets(state, burst_size));
    if (!error.empty()) return fail(state, error);
    report_packets(state, forwarded);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}
BENCHMARK(BM_Forward)
    ->ArgNames({"size", "burst"})
    ->Args({64, 32})
    ->Args({64, 64})
    ->Args({256, 64})
    ->Args({1518, 64});

void BM_ForwardDirect(benchmark::State& state) {
  try {
    const auto burst_size = static_cast<std::uint16_t>(state.range(1));
    PortOptions options;
    options.frame_len = static_cast<std::uint32_t>(state.range(0));
    QsbrDomain domain;
    BenchPort a("a", domain, options);
    BenchPort b("b", domain, peer_options(options));
    net::NetPort& in = a.port();
    net::NetPort& out = b.port();
    GuestRing& tx = a.guest_tx();
    GuestRing& rx = b.guest_rx();
    net::PacketBurst burst(burst_size);
    std::vector<net::Packet*> packets(burst_size);
    for (std::uint16_t i = 0; i < burst_size; ++i) packets[i] = &burst[i];
    for (auto _ : state) {
      const std::uint16_t n = in.receive(0, burst);
      const std::uint16_t done = out.transmit(0, packets.data(), n);
      out.drop(0, n - done);
      in.release(0, burst);
      tx.refill();
      rx.refill();
    }
    const std::uint64_t forwarded = out.stats(0).tx.packets.load();
    const std::string error = check_forwarded(a, b, expected_packets(state, burst_size));
    if (!error.empty()) return fail(state, error);
    report_packets(state, forwarded);
  } catch (const std::exception& e) {
    fail(state, e.what());
  }
}
BENCHMARK(BM_ForwardDirect)
    ->ArgNames({"size", "burst"})
    ->Args({64, 64})
    ->Args({1518, 64});

}  // namespace
}  // namespace vhostd::bench
