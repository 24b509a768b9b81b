// Shared setup for the virtqueue unit tests: real guest memory (memfd regions mapped through
// GuestMemory), a DriverRing playing the guest, and a SplitQueue attached to it.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "driver_ring.hpp"
#include "vhostd/base/quiescence.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/virtqueue/split_queue.hpp"

namespace vhostd::test {

using Layout = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

inline constexpr std::uint64_t kMiB = 1ull << 20;

// Configures `queue` as the device side of `ring`.
inline void attach(SplitQueue& queue, const DriverRing& ring, const GuestMemory& memory, bool event_idx = false,
                   std::uint32_t addr_flags = 0) {
  queue.set_size(ring.size());
  queue.set_addresses(ring.addresses(addr_flags));
  queue.set_memory(&memory);
  queue.set_event_idx(event_idx);
}

// Bytes that differ per position and per seed, so a misplaced or missing byte shows.
inline std::vector<std::uint8_t> pattern(std::size_t n, std::uint8_t seed) {
  std::vector<std::uint8_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(seed + i * 7 + (i >> 8));
  return out;
}

struct RingHarness {
  explicit RingHarness(std::uint32_t queue_size = 256, const Layout& layout = {{0, kMiB}}, bool event_idx = false,
                       std::uint32_t addr_flags = 0)
      : guest(TestGuestMemory::create(layout)) {
    guest->install(memory);
    ring = DriverRing::allocate(*guest, queue_size);
    attach(queue, *ring, memory, event_idx, addr_flags);
  }

  // A buffer of `len` bytes in guest memory holding `data` (or zeros).
  std::uint64_t buffer(std::uint32_t len, const std::vector<std::uint8_t>& data = {}) {
    const std::uint64_t gpa = guest->alloc(len == 0 ? 1 : len, 16);
    if (!data.empty()) guest->write(gpa, data.data(), data.size());
    return gpa;
  }

  // poll() + pop() of exactly one chain.
  bool pop_one(DescriptorChain& chain) {
    if (queue.poll() == 0) return false;
    return queue.pop(chain);
  }

  QsbrDomain domain;
  GuestMemory memory{domain};
  std::unique_ptr<TestGuestMemory> guest;
  std::unique_ptr<DriverRing> ring;
  SplitQueue queue;
};

}  // namespace vhostd::test
