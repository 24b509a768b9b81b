// prefetch_buffers(): the hint a net RX burst gives before writing into the next guest buffers.
// On both ring layouts it reads ahead in the ring and must consume nothing and judge nothing:
// the chains pop() returns afterwards, and the errors it finds, are what they would have been.
#include <gtest/gtest.h>

#include "packed_harness.hpp"

namespace vhostd::test {
namespace {

template <typename Harness>
class PrefetchBuffersTest : public ::testing::Test {
 protected:
  Harness h_{64};
};
TYPED_TEST_SUITE(PrefetchBuffersTest, BothLayouts, LayoutName);

TYPED_TEST(PrefetchBuffersTest, ConsumesNothing) {
  auto& h = this->h_;
  h.queue.prefetch_buffers(8, 12, 128);  // not translated yet: nothing to read, nothing happens
  const std::uint32_t lens[] = {100, 200, 300};
  for (std::uint32_t len : lens) h.ring->add_chain({DriverBuffer{h.buffer(len), len, true}});
  ASSERT_EQ(h.queue.poll(), 3);
  h.queue.prefetch_buffers(8, 12, 128);
  h.queue.prefetch_buffers(2, 12, 4096);
  EXPECT_EQ(h.queue.stats().requests.load(), 0u);
  EXPECT_EQ(h.queue.poll_cached(), 3);
  DescriptorChain chain;
  for (std::uint32_t len : lens) {
    ASSERT_TRUE(h.queue.pop(chain));
    EXPECT_EQ(chain.writable_bytes, len);
  }
  EXPECT_FALSE(h.queue.pop(chain));
  EXPECT_FALSE(h.queue.in_error());
}

TYPED_TEST(PrefetchBuffersTest, LeavesHostileBuffersForPopToJudge) {
  auto& h = this->h_;
  h.ring->add_chain({DriverBuffer{h.buffer(64), 64, true}});
  h.ring->add_chain({DriverBuffer{kMiB - 8, 64, true}});  // runs 56 bytes past guest memory
  h.ring->add_chain({DriverBuffer{h.buffer(64), 64, true}});
  ASSERT_EQ(h.queue.poll(), 3);
  h.queue.prefetch_buffers(8, 12, 128);
  EXPECT_FALSE(h.queue.in_error()) << "the hint judged the ring";
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_FALSE(h.queue.pop(chain));
  EXPECT_EQ(h.queue.error(), RingError::descriptor_address);
  EXPECT_EQ(h.queue.stats().requests.load(), 1u);
}

TYPED_TEST(PrefetchBuffersTest, AChainEndsTheLookAheadAndPopsAsBefore) {
  auto& h = this->h_;
  h.ring->add_chain({DriverBuffer{h.buffer(16), 16, false}, DriverBuffer{h.buffer(32), 32, true}});
  h.ring->add_chain({DriverBuffer{h.buffer(48), 48, true}});
  ASSERT_EQ(h.queue.poll(), 2);
  h.queue.prefetch_buffers(8, 12, 128);
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.readable_bytes, 16u);
  EXPECT_EQ(chain.writable_bytes, 32u);
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.writable_bytes, 48u);
  EXPECT_FALSE(h.queue.in_error());
}

}  // namespace
}  // namespace vhostd::test
