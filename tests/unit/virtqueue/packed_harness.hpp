// Shared setup for the packed virtqueue unit tests: real guest memory (memfd regions mapped
// through GuestMemory), a PackedDriverRing playing the guest, and a PackedQueue attached to it;
// and BothLayouts, for typed tests over this harness and the split one.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "packed_driver_ring.hpp"
#include "ring_harness.hpp"
#include "vhostd/virtqueue/packed_queue.hpp"

namespace vhostd::test {

// Configures `queue` as the device side of `ring`.
inline void attach(PackedQueue& queue, const PackedDriverRing& ring, const GuestMemory& memory, bool event_idx = false,
                   std::uint32_t addr_flags = 0) {
  queue.set_size(ring.size());
  queue.set_addresses(ring.addresses(addr_flags));
  queue.set_memory(&memory);
  queue.set_event_idx(event_idx);
}

struct PackedHarness {
  explicit PackedHarness(std::uint32_t queue_size = 256, const Layout& layout = {{0, kMiB}}, bool event_idx = false,
                         std::uint32_t addr_flags = 0)
      : guest(TestGuestMemory::create(layout)) {
    guest->install(memory);
    ring = PackedDriverRing::allocate(*guest, queue_size);
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

  // push_used() + flush_used() of one chain, and the driver's view of it.
  std::optional<PackedUsed> complete(std::uint16_t id, std::uint32_t len) {
    queue.push_used(id, len);
    queue.flush_used();
    return ring->pop_used();
  }

  QsbrDomain domain;
  GuestMemory memory{domain};
  std::unique_ptr<TestGuestMemory> guest;
  std::unique_ptr<PackedDriverRing> ring;
  PackedQueue queue;
};

// Typed tests over both ring layouts: TYPED_TEST_SUITE(Suite, BothLayouts, LayoutName).
using BothLayouts = ::testing::Types<RingHarness, PackedHarness>;
struct LayoutName {
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, PackedHarness> ? "packed" : "split";
  }
};

}  // namespace vhostd::test
