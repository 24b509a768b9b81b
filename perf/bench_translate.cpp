// vhostd perf: MemoryTable::translate_gpa() with 1, 8 (SET_MEM_TABLE's limit) and 509
// (kMaxMemSlots, ADD_MEM_REG) regions.
//
// The table is real: one memfd of kTranslateBytes split into n adjacent regions, each mapped by
// lib/memory (MappedRegion) and published through GuestMemory as SET_MEM_TABLE (n <= 8) or
// ADD_MEM_REG (n > 8) does. Each lookup asks for 64 bytes inside one region.
//
//   BM_TranslateSpread  addresses spread uniformly over every region (a fixed pseudo-random
//                       sequence of 4096), the hint carried from lookup to lookup as
//                       SplitQueue::pop() carries desc_hint_: for n > 1 it mostly misses, so
//                       this is the hint check plus the binary search.
//   BM_TranslateHinted  every address in one region (the middle one), hint carried: the
//                       last-hit-hint best case (a guest whose buffers are all in one region).
//   BM_TranslateNoHint  spread addresses, the overload without a hint (hint 0 each time).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <vector>

#include "bench_fixture.hpp"

namespace vhostd::bench {
namespace {

inline constexpr std::uint64_t kTranslateBytes = 64ull << 20;
inline constexpr std::size_t kAddresses = 4096;  // power of two
inline constexpr std::size_t kLookupsPerIteration = 256;
inline constexpr std::uint64_t kLookupLen = 64;

struct TranslateSetup {
  QsbrDomain domain;
  test::TestGuestMemory memory{{{kGuestBase, kTranslateBytes}}};
  GuestMemory device{domain};
  std::vector<std::uint64_t> addresses;

  TranslateSetup(std::size_t num_regions, bool one_region) {
    const std::vector<MemoryRegionInfo> regions = memory.split_regions(num_regions);
    if (num_regions <= kMaxSetMemTableRegions) {
      device.set_regions(regions, memory.region_fds(num_regions));
    } else {
      for (const MemoryRegionInfo& region : regions) device.add_region(region, std::move(memory.region_fds(1)[0]));
    }
    if (device.current()->num_regions() != num_regions) throw_error("table has ", device.current()->num_regions(), " regions");
    std::uint64_t x = 0x9e3779b97f4a7c15ull;  // xorshift64: a fixed sequence
    auto next = [&x] {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      return x;
    };
    for (std::size_t i = 0; i < kAddresses; ++i) {
      const MemoryRegionInfo& r = regions[one_region ? num_regions / 2 : next() % num_regions];
      const std::uint64_t offset = (next() % (r.memory_size - kLookupLen)) & ~(kLookupLen - 1);
      addresses.push_back(r.guest_phys_addr + offset);
    }
  }
};

template <bool kCarryHint>
void run_lookups(benchmark::State& state, const TranslateSetup& setup) {
  const MemoryTable& table = *setup.device.current();
  const std::uint64_t* addresses = setup.addresses.data();
  std::uint32_t hint = 0;
  std::size_t next = 0;
  for (auto _ : state) {
    for (std::size_t i = 0; i < kLookupsPerIteration; ++i) {
      const std::uint64_t gpa = addresses[(next + i) & (kAddresses - 1)];
      std::uint8_t* host = kCarryHint ? table.translate_gpa(gpa, kLookupLen, hint) : table.translate_gpa(gpa, kLookupLen);
      benchmark::DoNotOptimize(host);
    }
    next += kLookupsPerIteration;
  }
  // Outside the loop: every lookup must have hit.
  for (std::size_t i = 0; i < kAddresses; ++i) {
    if (table.translate_gpa(addresses[i], kLookupLen) == nullptr) {
      state.SkipWithError("a lookup missed");
      return;
    }
  }
  const auto lookups = static_cast<double>(state.iterations()) * kLookupsPerIteration;
  state.SetItemsProcessed(static_cast<std::int64_t>(lookups));
  state.counters["time/lookup"] = benchmark::Counter(lookups, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_TranslateSpread(benchmark::State& state) {
  try {
    TranslateSetup setup(static_cast<std::size_t>(state.range(0)), false);
    run_lookups<true>(state, setup);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_TranslateSpread)->ArgName("regions")->Arg(1)->Arg(8)->Arg(509);

void BM_TranslateHinted(benchmark::State& state) {
  try {
    TranslateSetup setup(static_cast<std::size_t>(state.range(0)), true);
    run_lookups<true>(state, setup);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_TranslateHinted)->ArgName("regions")->Arg(1)->Arg(8)->Arg(509);

void BM_TranslateNoHint(benchmark::State& state) {
  try {
    TranslateSetup setup(static_cast<std::size_t>(state.range(0)), false);
    run_lookups<false>(state, setup);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}
BENCHMARK(BM_TranslateNoHint)->ArgName("regions")->Arg(1)->Arg(8)->Arg(509);

}  // namespace
}  // namespace vhostd::bench
