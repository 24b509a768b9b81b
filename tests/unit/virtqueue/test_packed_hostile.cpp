// Hostile packed rings (conformance.md "Hostile rings"): each case puts the ring in error with
// the right kind, counts it once, consumes and publishes nothing, and leaves other rings working.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "packed_harness.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint32_t kSize = 16;
constexpr std::uint16_t N = kVringDescFNext, W = kVringDescFWrite, I = kVringDescFIndirect;
constexpr std::uint16_t A = kPackedDescFAvail;  // available in the first lap (wrap counter 1)

// What the device does after the guest set the ring up.
enum class Action {
  poll,        // poll() finds the ring broken
  pop,         // poll() sees work, the first pop() fails
  pop_second,  // the first pop() succeeds, the second fails
  push_used,   // the first pop() succeeds, then push_used(kSize) fails
  push_twice,  // the first pop() succeeds, then the same id is pushed twice
  push_unpopped,  // nothing popped; push_used(3) fails
};

struct HostileCase {
  std::string name;
  RingError expected;
  Action action;
  std::function<void(PackedHarness&, std::uint64_t buf)> guest;  // writes the hostile ring
  // pop_second only: what the guest writes between the two pops
  std::function<void(PackedHarness&, std::uint64_t buf)> after_first_pop = {};
};

void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.name; }

std::uint64_t table_at(PackedHarness& h, std::size_t entries) {
  return h.buffer(static_cast<std::uint32_t>(16 * entries));
}
PackedDesc* table(PackedHarness& h, std::uint64_t gpa, std::size_t entries) {
  return reinterpret_cast<PackedDesc*>(h.guest->host(gpa, 16 * entries));
}

std::vector<HostileCase> hostile_cases() {
  return {
      {"buffer_id_out_of_range", RingError::head_out_of_range, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) { h.ring->put(0, {buf, 16, kSize, A}); }},
      {"buffer_id_out_of_range_in_a_chain", RingError::head_out_of_range, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         h.ring->put(1, {buf, 16, 0, A | W});
         h.ring->put(0, {buf, 16, 0, A | N});
         h.ring->desc(1).id = 0xffff;  // only the last descriptor's id counts
       }},
      {"chain_longer_than_the_ring", RingError::chain_loop, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         for (std::uint32_t s = kSize; s-- > 0;) h.ring->put(s, {buf, 16, 0, A | N});
       }},
      {"chain_loop_of_zero_length_descriptors", RingError::chain_loop, Action::pop,
       [](PackedHarness& h, std::uint64_t) {
         for (std::uint32_t s = kSize; s-- > 0;) h.ring->put(s, {0, 0, 0, A | N});
       }},
      {"chain_continues_into_a_descriptor_not_available", RingError::next_out_of_range, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) { h.ring->put(0, {buf, 16, 0, A | N}); }},
      {"chain_continues_into_a_stale_lap", RingError::next_out_of_range, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         h.ring->put(1, {buf, 16, 0, kPackedDescFUsed});  // available for wrap 0, not this lap
         h.ring->put(0, {buf, 16, 0, A | N});
       }},
      {"indirect_length_zero", RingError::indirect_bad_length, Action::pop,
       [](PackedHarness& h, std::uint64_t) { h.ring->put(0, {table_at(h, 2), 0, 0, A | I}); }},
      {"indirect_length_not_multiple_of_16", RingError::indirect_bad_length, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 2);
         table(h, t, 2)[0] = {buf, 16, 0, 0};
         h.ring->put(0, {t, 24, 0, A | I});
       }},
      {"indirect_nested", RingError::indirect_nested, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         const std::uint64_t inner = table_at(h, 1), outer = table_at(h, 1);
         table(h, inner, 1)[0] = {buf, 16, 0, 0};
         table(h, outer, 1)[0] = {inner, 16, 0, I};
         h.ring->put(0, {outer, 16, 0, A | I});
       }},
      {"indirect_with_next", RingError::indirect_with_next, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 1);
         table(h, t, 1)[0] = {buf, 16, 0, 0};
         h.ring->put(1, {buf, 16, 0, A | W});
         h.ring->put(0, {t, 16, 0, A | I | N});
       }},
      {"indirect_after_next", RingError::indirect_with_next, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 1);
         table(h, t, 1)[0] = {buf, 16, 0, W};
         h.ring->put(1, {t, 16, 0, A | I});
         h.ring->put(0, {buf, 16, 0, A | N});
       }},
      {"indirect_table_outside_memory", RingError::descriptor_address, Action::pop,
       [](PackedHarness& h, std::uint64_t) { h.ring->put(0, {64 * kMiB, 32, 0, A | I}); }},
      {"readable_after_writable", RingError::readable_after_writable, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         h.ring->put(1, {buf + 16, 16, 0, A});
         h.ring->put(0, {buf, 16, 0, A | W | N});
       }},
      {"readable_after_writable_in_indirect_table", RingError::readable_after_writable, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 2);
         table(h, t, 2)[0] = {buf, 16, 0, W};
         table(h, t, 2)[1] = {buf, 16, 0, 0};
         h.ring->put(0, {t, 32, 0, A | I});
       }},
      {"address_outside_memory", RingError::descriptor_address, Action::pop,
       [](PackedHarness& h, std::uint64_t) { h.ring->add_chain({{kMiB - 8, 16, false}}); }},  // 8 bytes past the end
      {"address_outside_memory_in_a_chain", RingError::descriptor_address, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) { h.ring->add_chain({{buf, 16, false}, {2 * kMiB, 16, true}}); }},
      {"addr_plus_len_overflow", RingError::descriptor_address, Action::pop,
       [](PackedHarness& h, std::uint64_t) { h.ring->add_chain({{~0ull - 7, 64, true}}); }},
      {"chain_too_long", RingError::chain_too_long, Action::pop,
       [](PackedHarness& h, std::uint64_t buf) {
         constexpr std::size_t kEntries = kMaxChainSegments + 1;
         const std::uint64_t t = table_at(h, kEntries);
         PackedDesc* entries = table(h, t, kEntries);
         for (std::size_t i = 0; i < kEntries; ++i) entries[i] = {buf + i, 1, 0, W};
         h.ring->put(0, {t, 16 * kEntries, 0, A | I});
       }},
      {"id_made_available_again_while_outstanding", RingError::used_id_out_of_range, Action::pop_second,
       [](PackedHarness& h, std::uint64_t buf) {
         h.ring->put(0, {buf, 16, 3, A | W});
         h.ring->put(1, {buf, 16, 3, A | W});
       }},
      {"more_slots_outstanding_than_the_ring_has", RingError::avail_idx_jump, Action::pop_second,
       [](PackedHarness& h, std::uint64_t buf) {
         std::vector<DriverBuffer> long_chain(kSize - 1, DriverBuffer{buf, 16, true});
         h.ring->add_chain(long_chain, 5);  // slots 0-14
       },
       [](PackedHarness& h, std::uint64_t buf) {
         // A 3-slot chain from slot 15 into the next lap, over slots 0 and 1 of the first chain,
         // which is still outstanding: 15 + 3 slots in a ring of 16.
         h.ring->put(1, {buf, 16, 8, kPackedDescFUsed | W});  // wrap 0: the next lap
         h.ring->put(0, {buf, 16, 7, kPackedDescFUsed | W | N});
         h.ring->put(15, {buf, 16, 6, A | W | N});
       }},
      {"used_id_out_of_range", RingError::used_id_out_of_range, Action::push_used,
       [](PackedHarness& h, std::uint64_t buf) { h.ring->add_chain({{buf, 16, true}}); }},
      {"used_id_pushed_twice", RingError::used_id_out_of_range, Action::push_twice,
       [](PackedHarness& h, std::uint64_t buf) { h.ring->add_chain({{buf, 16, true}}); }},
      {"used_id_never_popped", RingError::used_id_out_of_range, Action::push_unpopped,
       [](PackedHarness& h, std::uint64_t buf) { h.ring->add_chain({{buf, 16, true}}, 3); }},
      {"ring_area_not_mapped", RingError::ring_address, Action::poll,
       [](PackedHarness& h, std::uint64_t) {
         VringAddresses addresses = h.ring->addresses();
         addresses.used_user_addr = kDefaultUvaBase + kMiB - 2;  // device area runs past the end
         h.queue.set_addresses(addresses);
         EXPECT_THROW(h.queue.check_addresses(*h.memory.current()), Error);
       }},
      {"ring_area_misaligned", RingError::ring_address, Action::poll,
       [](PackedHarness& h, std::uint64_t) {
         VringAddresses addresses = h.ring->addresses();
         addresses.avail_user_addr += 2;  // driver area 2-aligned only
         h.queue.set_addresses(addresses);
         EXPECT_THROW(h.queue.check_addresses(*h.memory.current()), Error);
       }},
  };
}

class PackedHostile : public ::testing::TestWithParam<HostileCase> {};

TEST_P(PackedHostile, PutsTheRingInErrorAndLeavesOthersWorking) {
  const HostileCase& c = GetParam();
  PackedHarness h(kSize);
  const std::uint64_t buf = h.buffer(4096);
  // Snapshot of the descriptor ring as the guest left it, to prove nothing was written there.
  c.guest(h, buf);
  auto ring_bytes = [&h] {
    return std::vector<std::uint8_t>(h.ring->host(), h.ring->host() + packed_desc_ring_bytes(kSize));
  };
  std::vector<std::uint8_t> ring_before = ring_bytes();

  DescriptorChain chain;
  std::uint32_t consumed = 0;  // slots a successful first pop took
  switch (c.action) {
    case Action::poll:
      EXPECT_EQ(h.queue.poll(), 0);
      break;
    case Action::pop:
      ASSERT_GE(h.queue.poll(), 1);
      EXPECT_FALSE(h.queue.pop(chain));
      break;
    case Action::pop_second:
      ASSERT_GE(h.queue.poll(), 1);
      ASSERT_TRUE(h.queue.pop(chain));
      consumed = h.queue.in_flight();
      if (c.after_first_pop) {
        c.after_first_pop(h, buf);
        ring_before = ring_bytes();
      }
      EXPECT_FALSE(h.queue.pop(chain));
      break;
    case Action::push_used:
      ASSERT_TRUE(h.pop_one(chain));
      consumed = 1;
      h.queue.push_used(kSize, 0);
      h.queue.flush_used();
      break;
    case Action::push_twice:
      ASSERT_TRUE(h.pop_one(chain));
      consumed = 1;
      h.queue.push_used(chain.head, 0);
      h.queue.push_used(chain.head, 0);
      h.queue.flush_used();
      break;
    case Action::push_unpopped:
      ASSERT_EQ(h.queue.poll(), 1);
      h.queue.push_used(3, 0);
      h.queue.flush_used();
      break;
  }
  EXPECT_TRUE(h.queue.in_error());
  EXPECT_EQ(h.queue.error(), c.expected) << "got " << to_string(h.queue.error());
  for (std::size_t k = 1; k < kNumRingErrors; ++k) {
    EXPECT_EQ(h.queue.stats().errors[k].load(), k == static_cast<std::size_t>(c.expected) ? 1u : 0u)
        << to_string(static_cast<RingError>(k));
  }
  // Nothing consumed beyond a successful first pop, nothing published.
  EXPECT_EQ(h.queue.in_flight(), consumed);
  EXPECT_EQ(h.queue.used_idx(), 0);
  EXPECT_FALSE(h.ring->has_used());
  EXPECT_EQ(ring_bytes(), ring_before);
  // The error is sticky and counted once; the data path does nothing more.
  EXPECT_EQ(h.queue.poll(), 0);
  EXPECT_FALSE(h.queue.pop(chain));
  h.queue.push_used(chain.head, 0);
  h.queue.flush_used();
  EXPECT_FALSE(h.queue.notify());
  EXPECT_FALSE(h.ring->has_used());
  EXPECT_EQ(h.queue.stats().errors[static_cast<std::size_t>(c.expected)].load(), 1u);

  // Another ring in the same memory keeps working.
  PackedDriverRing other(*h.guest, h.guest->alloc(PackedDriverRing::footprint(kSize), 4096), kSize);
  PackedQueue queue;
  attach(queue, other, h.memory);
  const auto req = pattern(16, 11);
  const std::uint64_t data = h.buffer(16, req);
  const std::uint16_t id = other.add_chain({{data, 16, false}});
  ASSERT_EQ(queue.poll(), 1);
  ASSERT_TRUE(queue.pop(chain));
  std::vector<std::uint8_t> got(16);
  ChainReader(chain).read(got.data(), 16);
  EXPECT_EQ(got, req);
  queue.push_used(chain.head, 0);
  queue.flush_used();
  EXPECT_EQ(other.pop_used()->id, id);
  EXPECT_FALSE(queue.in_error());

  // reset() clears the error but keeps the counters.
  h.queue.reset();
  EXPECT_FALSE(h.queue.in_error());
  EXPECT_EQ(h.queue.stats().errors[static_cast<std::size_t>(c.expected)].load(), 1u);
}

INSTANTIATE_TEST_SUITE_P(PackedQueue, PackedHostile, ::testing::ValuesIn(hostile_cases()),
                         [](const ::testing::TestParamInfo<HostileCase>& info) { return info.param.name; });

TEST(PackedQueueLimits, WholeRingOutstandingIsFine) {
  PackedHarness h(kSize);
  const std::uint64_t buf = h.buffer(16);
  for (std::uint32_t i = 0; i < kSize; ++i) h.ring->add_chain({{buf, 16, true}});
  DescriptorChain chain;
  ASSERT_EQ(h.queue.poll(), kSize);
  for (std::uint32_t i = 0; i < kSize; ++i) ASSERT_TRUE(h.queue.pop(chain)) << i;
  EXPECT_EQ(h.queue.in_flight(), kSize);
  EXPECT_FALSE(h.queue.pop(chain)) << "slot 0 still holds the first lap's descriptor";
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueLimits, LongestAllowedChains) {
  PackedHarness h(kSize);
  const std::uint64_t buf = h.buffer(4096);
  // A direct chain using every slot of the ring.
  std::vector<DriverBuffer> all(kSize, DriverBuffer{buf, 16, false});
  h.ring->add_chain(all);
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.num_readable, kSize);
  ASSERT_TRUE(h.complete(chain.head, 0).has_value());
  // An indirect table of exactly kMaxChainSegments entries (longer than the ring).
  std::vector<DriverBuffer> max(kMaxChainSegments, DriverBuffer{buf, 1, true});
  h.ring->add_indirect(max, h.buffer(16 * kMaxChainSegments));
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.num_writable, kMaxChainSegments);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueControl, CheckAddressesNamesTheArea) {
  PackedHarness h(kSize);
  EXPECT_NO_THROW(h.queue.check_addresses(*h.memory.current()));
  VringAddresses addresses = h.ring->addresses();
  addresses.avail_user_addr = 0x1234000;
  h.queue.set_addresses(addresses);
  try {
    h.queue.check_addresses(*h.memory.current());
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("driver event area"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1234000"), std::string::npos) << e.what();
  }
}

TEST(PackedQueueControl, SetSizeAcceptsAnySizeUpToTheLimit) {
  PackedQueue queue;
  EXPECT_THROW(queue.set_size(0), Error);
  EXPECT_THROW(queue.set_size(kMaxQueueSize + 1), Error);
  EXPECT_NO_THROW(queue.set_size(3));
  EXPECT_EQ(queue.size(), 3u);
  EXPECT_NO_THROW(queue.set_size(kMaxQueueSize));
}

}  // namespace
}  // namespace vhostd::test
