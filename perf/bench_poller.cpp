// vhostd perf: what idle rings cost a data lcore's poll loop.
//
//   BM_PollerIdleRings/idle:N  one real Poller (the runtime's pinned data-lcore thread and its
//                    loop, QSBR quiescent point included) polls one busy guest TX ring and N
//                    idle rings. The busy ring is a BenchPort's (bench_fixture.hpp): its
//                    backend's handle_queue() runs NetPort::receive() + release() of a burst
//                    and the guest's refill, so it always has work. Each idle ring is a split
//                    ring in its own guest's memory (as N idle ports, one pair each), set up as
//                    Session::start_ring() does, on which the guest never makes anything
//                    available.
//
// Reported (wall-clock rates: the poller is a thread of its own; the benchmark thread only
// samples its counters every 50 ms): pkts/s of the busy ring and ns/loop, one pass over the
// poll list. pkts/s at idle:63 over pkts/s at idle:0 is what the 64-port scenario of the issue
// asks to keep >= 0.9 (perf/ports64.sh measures it end to end).
#include <benchmark/benchmark.h>
#include <time.h>

#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "bench_fixture.hpp"
#include "vhostd/runtime/core_list.hpp"
#include "vhostd/runtime/poller.hpp"

namespace vhostd::bench {
namespace {

// The busy ring's device: one burst per call, counted (single writer: the poller).
class BusyBackend : public Backend {
 public:
  explicit BusyBackend(BenchPort& port) : port_(port), burst_(32) {}
  std::size_t num_queues() const override { return 3; }
  std::uint32_t max_queue_size() const override { return kQueueSize; }
  std::uint64_t features() const override { return 0; }
  void handle_queue(std::uint16_t, VringState&) noexcept override {
    const std::uint16_t n = port_.port().receive(0, burst_);
    port_.port().release(0, burst_);
    port_.guest_tx().refill();
    add_single_writer(packets, n);
  }
  std::atomic<std::uint64_t> packets{0};

 private:
  BenchPort& port_;
  net::PacketBurst burst_;
};

// The idle rings' device: never called while the guest makes nothing available.
class IdleBackend : public Backend {
 public:
  std::size_t num_queues() const override { return 3; }
  std::uint32_t max_queue_size() const override { return kQueueSize; }
  std::uint64_t features() const override { return 0; }
  void handle_queue(std::uint16_t, VringState&) noexcept override { ++calls; }
  std::uint64_t calls = 0;
};

// An idle port's guest TX ring: its own guest memory, a configured ring, nothing available.
struct IdleRing {
  explicit IdleRing(QsbrDomain& domain)
      : guest(domain, 1ull << 20), driver(test::DriverRing::allocate(guest.memory(), kQueueSize)) {
    start_ring(vring.unlocked(), *driver, guest.device(), true);
    vring.unlocked().set_enabled(true);
  }
  BenchGuest guest;
  std::unique_ptr<test::DriverRing> driver;
  Vring vring;
};

void BM_PollerIdleRings(benchmark::State& state) {
  try {
    const auto idle = static_cast<std::size_t>(state.range(0));
    QsbrDomain domain;
    BenchPort busy_port("busy", domain, PortOptions{});
    BusyBackend busy(busy_port);
    IdleBackend idle_backend;
    std::vector<std::unique_ptr<IdleRing>> idle_rings;
    for (std::size_t i = 0; i < idle; ++i) idle_rings.push_back(std::make_unique<IdleRing>(domain));

    // The data lcore on the last CPU, as Runtime::default_cores() places it.
    const unsigned cpu = CpuTopology::from_system().cpus().back();
    auto poller = std::make_unique<Poller>(1, std::vector<unsigned>{cpu}, /*numa_node=*/-1, domain);
    // The busy ring first, as the port that connected first; the idle ones after it.
    poller->add({&busy, net::NetPort::tx_ring(0), &busy_port.tx_vring()});
    for (std::size_t i = 0; i < idle; ++i) {
      poller->add({&idle_backend, net::NetPort::tx_ring(0), &idle_rings[i]->vring});
    }

    std::uint64_t packets = 0, loops = 0;
    double seconds = 0;
    for (auto _ : state) {
      const std::uint64_t p0 = busy.packets.load(std::memory_order_relaxed);
      const std::uint64_t l0 = poller->stats().loops.load(std::memory_order_relaxed);
      const auto t0 = std::chrono::steady_clock::now();
      struct timespec ts {0, 50'000'000};
      ::nanosleep(&ts, nullptr);
      const auto t1 = std::chrono::steady_clock::now();
      const std::uint64_t p1 = busy.packets.load(std::memory_order_relaxed);
      const std::uint64_t l1 = poller->stats().loops.load(std::memory_order_relaxed);
      const double dt = std::chrono::duration<double>(t1 - t0).count();
      state.SetIterationTime(dt);
      packets += p1 - p0;
      loops += l1 - l0;
      seconds += dt;
    }
    poller.reset();  // joined: every ring is off the data path

    std::string error;
    if (busy_port.tx_state().in_error()) error = "busy ring in error";
    if (error.empty() && busy_port.port().stats(0).rx.errors.load() != 0) error = "rx errors";
    if (error.empty() && idle_backend.calls != 0) error = "an idle ring's backend was called";
    for (const auto& r : idle_rings) {
      if (error.empty() && r->vring.unlocked().in_error()) error = "idle ring in error";
    }
    if (error.empty() && packets == 0) error = "no packet";
    if (!error.empty()) return state.SkipWithError(error.c_str());
    state.counters["pkts/s"] = benchmark::Counter(static_cast<double>(packets) / seconds);
    state.counters["ns/loop"] = benchmark::Counter(loops == 0 ? 0 : seconds * 1e9 / static_cast<double>(loops));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_PollerIdleRings)
    ->ArgName("idle")
    ->Arg(0)
    ->Arg(1)
    ->Arg(15)
    ->Arg(63)
    ->Arg(255)
    ->UseManualTime()
    ->Iterations(20)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace vhostd::bench
