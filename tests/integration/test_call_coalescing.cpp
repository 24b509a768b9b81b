// vhostd integration tests: guest call coalescing on vhost-user-net ports
// (NetPortConfig::call_coalescing, vhostd/virtqueue/call_coalescing.hpp), io forwarding between
// two ports whose guests are the test frontend, on the runtime's real pollers.
//
// Each packet is sent on its own and completed (complete_tx() waits for the used TX chain)
// before the next, so every packet is one poll, one delivery into the receiver's RX ring and
// one TX completion: without coalescing, a call each. The guests ack no EVENT_IDX and keep
// interrupts on (they want every call) unless a test says otherwise.
#include "net_harness.hpp"

namespace vhostd::test::nettest {
namespace {

using fwd::FwdMode;
using net::NetPortConfig;

constexpr std::uint64_t kNoEventIdx = kAllFeatures & ~kVirtioFRingEventIdx;
constexpr int kPackets = 100;

class CallCoalescingTest : public NetLayoutTest {
 protected:
  // `num_ports` ports with `coalescing`, io forwarding (0 <-> 1, a third loops back alone).
  void start_ports(const CallCoalescing& coalescing, std::size_t num_ports = 2) {
    NetPortConfig config;
    config.call_coalescing = coalescing;
    start(FwdMode::io, std::vector<NetPortConfig>(num_ports, config));
  }
  void connect_pair(const GuestOptions& receiver = guest_wants_every_call()) {
    g0_ = connect(0, guest_wants_every_call());
    g1_ = connect(1, receiver);
    g1_->post_rx(kPackets + 8);
  }
  static GuestOptions guest_wants_every_call() {
    GuestOptions o;
    o.feature_mask = kNoEventIdx;
    return o;
  }
  // Sends `n` packets from port 0's guest, one at a time, each completed before the next.
  void send_one_by_one(int n) {
    for (int i = 0; i < n; ++i) {
      g0_->send(eth_frame(kMacB, kMacA, 64, static_cast<std::uint32_t>(sent_ + 1)));
      ASSERT_EQ(g0_->complete_tx(), 1u) << "packet " << sent_;
      ++sent_;
    }
  }
  // Calls the device made on `ring` of `port` (its RingStats::notifications).
  std::uint64_t calls(std::size_t port, std::size_t ring) { return daemon(port).ring_reports().at(ring).notifications; }
  bool rx_call(std::chrono::milliseconds timeout) { return g1_->frontend().wait_call(NetGuest::rx(), timeout); }
  bool tx_call(std::chrono::milliseconds timeout) { return g0_->frontend().wait_call(NetGuest::tx(), timeout); }
  // Every packet sent so far arrived at port 1's guest, in order, byte for byte.
  void expect_all_received() {
    ASSERT_EQ(g1_->rx_pending(), static_cast<std::size_t>(sent_ - received_));
    for (; received_ < sent_; ++received_) {
      const RxPacket p = g1_->receive();
      EXPECT_EQ(p.frame, eth_frame(kMacB, kMacA, 64, static_cast<std::uint32_t>(received_ + 1)))
          << "packet " << received_;
    }
  }

  std::unique_ptr<NetGuest> g0_, g1_;
  int sent_ = 0;
  int received_ = 0;
};

// The reference the other tests are measured against: off, every completion is called.
TEST_P(CallCoalescingTest, WithoutCoalescingEveryCompletionIsCalled) {
  start_ports({});
  connect_pair();
  send_one_by_one(kPackets);
  // The TX call follows the used index complete_tx() saw: wait for the counter.
  EXPECT_TRUE(wait_until([&] { return calls(0, NetGuest::tx()) == kPackets; })) << calls(0, NetGuest::tx());
  EXPECT_EQ(calls(1, NetGuest::rx()), static_cast<std::uint64_t>(kPackets));
  expect_all_received();
}

// Held for up to 20 ms: a call covers many packets, and the last one still comes.
TEST_P(CallCoalescingTest, HeldCallsCoverManyPacketsAndTheLastOneComes) {
  start_ports({0, std::chrono::milliseconds(20)});
  connect_pair();
  send_one_by_one(kPackets);
  EXPECT_TRUE(rx_call(2s)) << "the held call for the last deliveries never came";
  EXPECT_TRUE(tx_call(2s)) << "the held call for the last TX completions never came";
  const std::uint64_t rx_calls = calls(1, NetGuest::rx());
  const std::uint64_t tx_calls = calls(0, NetGuest::tx());
  EXPECT_GE(rx_calls, 1u);
  EXPECT_LE(rx_calls, static_cast<std::uint64_t>(kPackets / 2)) << "calls were not coalesced";
  EXPECT_LE(tx_calls, static_cast<std::uint64_t>(kPackets / 2)) << "calls were not coalesced";
  expect_all_received();
}

// A count limit makes the call as soon as that many buffers wait, however long the delay.
TEST_P(CallCoalescingTest, EnoughWaitingPacketsMakeTheCallAtOnce) {
  start_ports({8, std::chrono::hours(1)});
  connect_pair();
  send_one_by_one(7);
  EXPECT_FALSE(rx_call(100ms)) << "called before 8 packets waited";
  EXPECT_FALSE(tx_call(0ms));
  send_one_by_one(1);
  EXPECT_TRUE(rx_call(2s)) << "8 packets delivered and no call";
  EXPECT_TRUE(tx_call(2s)) << "8 TX chains completed and no call";
  EXPECT_EQ(calls(1, NetGuest::rx()), 1u);
  expect_all_received();
}

// A held call points at a ring across poll loops: when the control lcore starts a grace period
// (here: another port's rings join the data path) the data lcore makes every held call first.
TEST_P(CallCoalescingTest, HeldCallsAreMadeWhenTheControlLcoreWaitsForTheDataLcores) {
  start_ports({0, std::chrono::hours(1)}, 3);
  connect_pair();
  send_one_by_one(3);
  EXPECT_FALSE(rx_call(100ms)) << "an hour's delay, and the call came at once";
  auto g2 = connect(2);  // Poller::add() waits for every data lcore's quiescent point
  EXPECT_TRUE(rx_call(2s)) << "the held call was not made before the new epoch was reported";
  EXPECT_TRUE(tx_call(2s));
  expect_all_received();
}

// Coalescing delays calls; it never makes one the guest did not ask for.
TEST_P(CallCoalescingTest, TheGuestStillDecidesWhetherAHeldCallIsMade) {
  start_ports({0, std::chrono::milliseconds(1)});
  connect_pair(GuestOptions{});  // the receiver acks EVENT_IDX
  ASSERT_TRUE(g1_->has(kVirtioFRingEventIdx));
  GuestRing& rx = g1_->ring(NetGuest::rx());
  rx.set_used_event(0);
  send_one_by_one(1);
  EXPECT_TRUE(rx_call(2s)) << "used_event passed and no call";
  rx.set_used_event(rx.size());  // far ahead
  rx_call(50ms);                 // absorbs a call still being made for the first packet
  send_one_by_one(3);
  EXPECT_FALSE(rx_call(100ms)) << "a held call was made although used_event is far ahead";
  expect_all_received();
}

// Receivers come and go while calls on their rings are held: every disconnect detaches the
// rings (a grace period), so no data lcore keeps a ring of a gone connection on its list.
// (Under ASan a held call outliving its ring is a use-after-free.)
TEST_P(CallCoalescingTest, ReceiversComeAndGoWhileCallsAreHeld) {
  start_ports({0, std::chrono::hours(1)});
  g0_ = connect(0, guest_wants_every_call());
  for (int round = 0; round < 10; ++round) {
    g1_ = connect(1, guest_wants_every_call());
    g1_->post_rx(16);
    received_ = sent_;
    send_one_by_one(4);
    ASSERT_NO_FATAL_FAILURE(expect_all_received()) << "round " << round;
    g1_.reset();
    ASSERT_TRUE(wait_disconnected(1)) << "round " << round;
  }
  g1_ = connect(1, guest_wants_every_call());
  g1_->post_rx(16);
  received_ = sent_;
  send_one_by_one(2);
  expect_all_received();
  EXPECT_FALSE(rx_call(50ms)) << "an hour's delay, and the call came at once";
  // The sender leaving is a grace period too: the receiver's held call is made.
  g0_.reset();
  EXPECT_TRUE(rx_call(2s)) << "the held call was lost when the sender disconnected";
}

INSTANTIATE_TEST_SUITE_P(Layouts, CallCoalescingTest,
                         ::testing::Values(RingLayout::split, RingLayout::packed), net_layout_param_name);

}  // namespace
}  // namespace vhostd::test::nettest
