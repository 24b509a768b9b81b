// Hostile rings (conformance.md "Hostile rings"): each case puts the ring in error with the
// right kind, counts it once, consumes nothing, and leaves other rings working.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "ring_harness.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint32_t kSize = 16;

// What the device does after the guest set the ring up.
enum class Action { poll, pop, push_used };

struct HostileCase {
  std::string name;
  RingError expected;
  Action action;
  std::function<void(RingHarness&, std::uint64_t buf)> guest;  // writes the hostile ring
};

void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.name; }

std::uint64_t table_at(RingHarness& h, std::size_t entries) { return h.buffer(static_cast<std::uint32_t>(16 * entries)); }
VringDesc* indirect(RingHarness& h, std::uint64_t gpa, std::size_t entries) {
  return reinterpret_cast<VringDesc*>(h.guest->host(gpa, 16 * entries));
}

std::vector<HostileCase> hostile_cases() {
  constexpr std::uint16_t N = kVringDescFNext, W = kVringDescFWrite, I = kVringDescFIndirect;
  return {
      {"avail_idx_jump", RingError::avail_idx_jump, Action::poll,
       [](RingHarness& h, std::uint64_t) { h.ring->set_avail_idx(kSize + 1); }},
      {"head_out_of_range", RingError::head_out_of_range, Action::pop,
       [](RingHarness& h, std::uint64_t) { h.ring->publish_head(kSize); }},
      {"next_out_of_range", RingError::next_out_of_range, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         h.ring->desc(0) = {buf, 16, N, kSize};
         h.ring->publish_head(0);
       }},
      {"chain_loop", RingError::chain_loop, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         h.ring->desc(3) = {buf, 16, N, 7};
         h.ring->desc(7) = {buf, 16, N, 3};
         h.ring->publish_head(3);
       }},
      {"chain_loop_zero_length_self", RingError::chain_loop, Action::pop,
       [](RingHarness& h, std::uint64_t) {
         h.ring->desc(0) = {0, 0, N, 0};
         h.ring->publish_head(0);
       }},
      {"chain_loop_in_indirect_table", RingError::chain_loop, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 2);
         indirect(h, t, 2)[0] = {buf, 16, N, 1};
         indirect(h, t, 2)[1] = {buf, 16, N, 0};
         h.ring->desc(0) = {t, 32, I, 0};
         h.ring->publish_head(0);
       }},
      {"next_out_of_range_in_indirect_table", RingError::next_out_of_range, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 2);
         indirect(h, t, 2)[0] = {buf, 16, N, 2};  // valid in the ring's table, not in this one
         h.ring->desc(0) = {t, 32, I, 0};
         h.ring->publish_head(0);
       }},
      {"indirect_length_zero", RingError::indirect_bad_length, Action::pop,
       [](RingHarness& h, std::uint64_t) {
         h.ring->desc(0) = {table_at(h, 2), 0, I, 0};
         h.ring->publish_head(0);
       }},
      {"indirect_length_not_multiple_of_16", RingError::indirect_bad_length, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 2);
         indirect(h, t, 2)[0] = {buf, 16, 0, 0};
         h.ring->desc(0) = {t, 24, I, 0};
         h.ring->publish_head(0);
       }},
      {"indirect_nested", RingError::indirect_nested, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         const std::uint64_t inner = table_at(h, 1), outer = table_at(h, 1);
         indirect(h, inner, 1)[0] = {buf, 16, 0, 0};
         indirect(h, outer, 1)[0] = {inner, 16, I, 0};
         h.ring->desc(0) = {outer, 16, I, 0};
         h.ring->publish_head(0);
       }},
      {"indirect_with_next", RingError::indirect_with_next, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 1);
         indirect(h, t, 1)[0] = {buf, 16, 0, 0};
         h.ring->desc(0) = {t, 16, I | N, 1};
         h.ring->desc(1) = {buf, 16, W, 0};
         h.ring->publish_head(0);
       }},
      {"indirect_table_outside_memory", RingError::descriptor_address, Action::pop,
       [](RingHarness& h, std::uint64_t) {
         h.ring->desc(0) = {64 * kMiB, 32, I, 0};
         h.ring->publish_head(0);
       }},
      {"readable_after_writable", RingError::readable_after_writable, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         h.ring->desc(0) = {buf, 16, W | N, 1};
         h.ring->desc(1) = {buf + 16, 16, 0, 0};
         h.ring->publish_head(0);
       }},
      {"readable_after_writable_in_indirect_table", RingError::readable_after_writable, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         const std::uint64_t t = table_at(h, 2);
         indirect(h, t, 2)[0] = {buf, 16, W | N, 1};
         indirect(h, t, 2)[1] = {buf, 16, 0, 0};
         h.ring->desc(0) = {t, 32, I, 0};
         h.ring->publish_head(0);
       }},
      {"address_outside_memory", RingError::descriptor_address, Action::pop,
       [](RingHarness& h, std::uint64_t) { h.ring->add_chain({{kMiB - 8, 16, false}}); }},  // 8 bytes past the end
      {"addr_plus_len_overflow", RingError::descriptor_address, Action::pop,
       [](RingHarness& h, std::uint64_t) { h.ring->add_chain({{~0ull - 7, 64, true}}); }},
      {"chain_too_long", RingError::chain_too_long, Action::pop,
       [](RingHarness& h, std::uint64_t buf) {
         constexpr std::size_t kEntries = kMaxChainSegments + 1;
         const std::uint64_t t = table_at(h, kEntries);
         VringDesc* table = indirect(h, t, kEntries);
         for (std::size_t i = 0; i < kEntries; ++i) {
           table[i] = {buf + i, 1, static_cast<std::uint16_t>(i + 1 < kEntries ? N : 0),
                       static_cast<std::uint16_t>(i + 1)};
         }
         h.ring->desc(0) = {t, 16 * kEntries, I, 0};
         h.ring->publish_head(0);
       }},
      {"used_id_out_of_range", RingError::used_id_out_of_range, Action::push_used,
       [](RingHarness& h, std::uint64_t buf) { h.ring->add_chain({{buf, 16, true}}); }},
      {"ring_area_not_mapped", RingError::ring_address, Action::poll,
       [](RingHarness& h, std::uint64_t) {
         VringAddresses addresses = h.ring->addresses();
         addresses.used_user_addr = kDefaultUvaBase + kMiB - 8;  // runs past the end of memory
         h.queue.set_addresses(addresses);
         EXPECT_THROW(h.queue.check_addresses(*h.memory.current()), Error);
       }},
  };
}

class Hostile : public ::testing::TestWithParam<HostileCase> {};

TEST_P(Hostile, PutsTheRingInErrorAndLeavesOthersWorking) {
  const HostileCase& c = GetParam();
  RingHarness h(kSize);
  const std::uint64_t buf = h.buffer(4096);
  c.guest(h, buf);

  DescriptorChain chain;
  switch (c.action) {
    case Action::poll:
      EXPECT_EQ(h.queue.poll(), 0);
      break;
    case Action::pop:
      ASSERT_EQ(h.queue.poll(), 1);
      EXPECT_FALSE(h.queue.pop(chain));
      break;
    case Action::push_used:
      ASSERT_TRUE(h.pop_one(chain));
      h.queue.push_used(kSize, 0);
      h.queue.flush_used();
      break;
  }
  EXPECT_TRUE(h.queue.in_error());
  EXPECT_EQ(h.queue.error(), c.expected) << "got " << to_string(h.queue.error());
  for (std::size_t k = 1; k < kNumRingErrors; ++k) {
    EXPECT_EQ(h.queue.stats().errors[k].load(), k == static_cast<std::size_t>(c.expected) ? 1u : 0u)
        << to_string(static_cast<RingError>(k));
  }
  // Nothing consumed, nothing published.
  EXPECT_EQ(h.queue.last_avail_idx(), c.action == Action::push_used ? 1 : 0);
  EXPECT_EQ(h.ring->used_idx(), 0);
  // The error is sticky and counted once.
  EXPECT_EQ(h.queue.poll(), 0);
  EXPECT_FALSE(h.queue.pop(chain));
  EXPECT_EQ(h.queue.stats().errors[static_cast<std::size_t>(c.expected)].load(), 1u);

  // Another ring in the same memory keeps working.
  DriverRing other(*h.guest, h.guest->alloc(DriverRing::footprint(kSize), 4096), kSize);
  SplitQueue queue;
  attach(queue, other, h.memory);
  const auto req = pattern(16, 11);
  const std::uint64_t data = h.buffer(16, req);
  const std::uint16_t head = other.add_chain({{data, 16, false}});
  ASSERT_EQ(queue.poll(), 1);
  ASSERT_TRUE(queue.pop(chain));
  std::vector<std::uint8_t> got(16);
  ChainReader(chain).read(got.data(), 16);
  EXPECT_EQ(got, req);
  queue.push_used(chain.head, 0);
  queue.flush_used();
  EXPECT_EQ(other.pop_used()->id, head);
  EXPECT_FALSE(queue.in_error());

  // reset() clears the error but keeps the counters.
  h.queue.reset();
  EXPECT_FALSE(h.queue.in_error());
  EXPECT_EQ(h.queue.stats().errors[static_cast<std::size_t>(c.expected)].load(), 1u);
}

INSTANTIATE_TEST_SUITE_P(SplitQueue, Hostile, ::testing::ValuesIn(hostile_cases()),
                         [](const ::testing::TestParamInfo<HostileCase>& info) { return info.param.name; });

TEST(SplitQueueLimits, AvailIdxExactlyOneRingAheadIsFine) {
  RingHarness h(kSize);
  const std::uint64_t buf = h.buffer(16);
  for (std::uint32_t i = 0; i < kSize; ++i) h.ring->add_chain({{buf, 16, true}});
  EXPECT_EQ(h.queue.poll(), kSize);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(SplitQueueLimits, LongestAllowedChains) {
  RingHarness h(kSize);
  const std::uint64_t buf = h.buffer(4096);
  // A direct chain using every descriptor of the table.
  std::vector<DriverBuffer> all(kSize, DriverBuffer{buf, 16, false});
  h.ring->add_chain(all);
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.num_readable, kSize);
  h.queue.push_used(chain.head, 0);
  h.queue.flush_used();
  h.ring->pop_used();
  // An indirect table of exactly kMaxChainSegments entries (longer than the ring).
  std::vector<DriverBuffer> max(kMaxChainSegments, DriverBuffer{buf, 1, true});
  h.ring->add_indirect(max, h.buffer(16 * kMaxChainSegments));
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.num_writable, kMaxChainSegments);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(SplitQueueControl, CheckAddressesNamesTheArea) {
  RingHarness h(kSize);
  EXPECT_NO_THROW(h.queue.check_addresses(*h.memory.current()));
  VringAddresses addresses = h.ring->addresses();
  addresses.desc_user_addr = 0x1234000;
  h.queue.set_addresses(addresses);
  try {
    h.queue.check_addresses(*h.memory.current());
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("descriptor table"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1234000"), std::string::npos) << e.what();
  }
}

TEST(SplitQueueControl, SetSizeRejectsNonPowersOfTwo) {
  SplitQueue queue;
  EXPECT_THROW(queue.set_size(0), Error);
  EXPECT_THROW(queue.set_size(3), Error);
  EXPECT_THROW(queue.set_size(65536), Error);
  EXPECT_NO_THROW(queue.set_size(32768));
  EXPECT_EQ(queue.size(), 32768u);
}

TEST(SplitQueueControl, ErrorNames) {
  EXPECT_STREQ(to_string(RingError::chain_loop), "chain_loop");
  EXPECT_STREQ(to_string(RingError::used_id_out_of_range), "used_id_out_of_range");
  for (std::size_t k = 0; k < kNumRingErrors; ++k) {
    EXPECT_STRNE(to_string(static_cast<RingError>(k)), "unknown") << k;
  }
}

}  // namespace
}  // namespace vhostd::test
