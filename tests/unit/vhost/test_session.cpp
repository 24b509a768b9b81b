// Unit tests for the vhost-user session state machine (lib/vhost/session.*), driven with real
// messages, real memfd guest memory and real eventfds; the runtime is replaced by a RingHost
// that records what the session asks of it.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "vhostd/vhost/session.hpp"

namespace vhostd {
namespace {

constexpr std::uint64_t kGuestBase = 0x100000;      // guest-physical base of the one region
constexpr std::uint64_t kUserBase = 0x7f0000000000;  // the frontend's virtual address of it
constexpr std::uint64_t kGuestSize = 1 << 20;

class RecordingHost : public RingHost {
 public:
  void watch_kick(std::uint16_t index, int) override { events.push_back("watch " + std::to_string(index)); }
  void unwatch_kick(std::uint16_t index, int) override { events.push_back("unwatch " + std::to_string(index)); }
  void start_polling(std::uint16_t index, Vring&) override { events.push_back("start " + std::to_string(index)); }
  void stop_polling(std::uint16_t index, Vring&) override { events.push_back("stop " + std::to_string(index)); }
  bool saw(const std::string& event) const {
    return std::find(events.begin(), events.end(), event) != events.end();
  }
  std::vector<std::string> events;
};

class TestBackend : public Backend {
 public:
  std::size_t num_queues() const override { return 2; }
  std::uint32_t max_queue_size() const override { return 256; }
  std::uint64_t features() const override { return kVirtioFVersion1 | kVirtioFRingEventIdx; }
  std::uint64_t protocol_features() const override { return protocol_bit(ProtocolFeature::config); }
  std::vector<std::uint8_t> get_config(std::uint32_t offset, std::uint32_t size) override {
    if (offset > 4 || size > 4 - offset) return {};
    return std::vector<std::uint8_t>(config + offset, config + offset + size);
  }
  void handle_queue(std::uint16_t, VringState&) noexcept override {}
  void reset() override { ++resets; }
  std::uint8_t config[4] = {1, 2, 3, 4};
  int resets = 0;
};

Message make(Request request, bool need_reply = false) {
  Message m;
  m.header.request = static_cast<std::uint32_t>(request);
  m.header.flags = kMessageVersion | (need_reply ? kFlagNeedReply : 0u);
  m.header.size = 0;
  return m;
}

Message make_u64(Request request, std::uint64_t value, bool need_reply = false) {
  Message m = make(request, need_reply);
  m.set_u64(value);
  return m;
}

Message make_state(Request request, std::uint32_t index, std::uint32_t num, bool need_reply = false) {
  Message m = make(request, need_reply);
  m.set_payload(VringStatePayload{index, num});
  return m;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memfd_ = UniqueFd(::memfd_create("guest", MFD_CLOEXEC));
    ASSERT_TRUE(memfd_);
    ASSERT_EQ(::ftruncate(memfd_.get(), kGuestSize), 0);
  }

  std::optional<Message> send(Message m) { return session_.handle(m); }

  std::uint64_t ack(Message m) {
    std::optional<Message> reply = session_.handle(m);
    EXPECT_TRUE(reply.has_value());
    if (!reply) return ~0ull;
    EXPECT_EQ(reply->header.flags, kReplyFlags);
    EXPECT_EQ(reply->header.request, m.header.request);
    EXPECT_EQ(reply->header.size, 8u);
    return reply->u64();
  }

  void negotiate(bool protocol_features = true) {
    send(make(Request::set_owner));
    std::uint64_t features = kVirtioFVersion1 | (protocol_features ? kVhostUserFProtocolFeatures : 0);
    if (protocol_features) {
      send(make_u64(Request::set_protocol_features,
                    protocol_bit(ProtocolFeature::reply_ack) | protocol_bit(ProtocolFeature::config) |
                        protocol_bit(ProtocolFeature::configure_mem_slots) |
                        protocol_bit(ProtocolFeature::reset_device)));
    }
    ASSERT_FALSE(send(make_u64(Request::set_features, features)).has_value());
  }

  void set_mem_table() {
    Message m = make(Request::set_mem_table);
    MemTablePayload table{};
    table.num_regions = 1;
    table.regions[0] = {kGuestBase, kGuestSize, kUserBase, 0};
    std::memcpy(m.payload.data(), &table, 8 + 32);
    m.header.size = 8 + 32;
    m.fds.push_back(UniqueFd(::dup(memfd_.get())));
    send(std::move(m));
    ASSERT_EQ(session_.memory().current()->num_regions(), 1u);
  }

  // Ring `index` laid out at offset 64 KiB * (index + 1) of the region.
  void configure_ring(std::uint32_t index) {
    send(make_state(Request::set_vring_num, index, 256));
    Message addr = make(Request::set_vring_addr);
    std::uint64_t base = kUserBase + 0x10000 * (index + 1);
    addr.set_payload(VringAddrPayload{index, 0, base, base + 0x2000, base + 0x1000, 0});
    send(std::move(addr));
    send(make_state(Request::set_vring_base, index, 0));
  }

  int kick_ring(std::uint32_t index) {
    Message kick = make_u64(Request::set_vring_kick, index);
    UniqueFd fd = make_eventfd();
    int raw = fd.get();
    kick.fds.push_back(std::move(fd));
    send(std::move(kick));
    return raw;
  }

  UniqueFd memfd_;
  TestBackend backend_;
  RecordingHost host_;
  QsbrDomain domain_;
  Session session_{"test", backend_, host_, domain_};
};

TEST_F(SessionTest, FeaturesOfferedIncludeProtocolFeaturesAndLogAll) {
  auto reply = send(make(Request::get_features));
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->header.flags, kReplyFlags);
  EXPECT_EQ(reply->u64(), kVirtioFVersion1 | kVirtioFRingEventIdx | kVhostUserFProtocolFeatures | kVirtioFLogAll);
}

TEST_F(SessionTest, FeaturesNotOfferedAreRefused) {
  send(make_u64(Request::set_protocol_features, protocol_bit(ProtocolFeature::reply_ack)));
  EXPECT_NE(ack(make_u64(Request::set_features, kVirtioFRingPacked, true)), 0u);
  EXPECT_EQ(session_.acked_features(), 0u);
}

TEST_F(SessionTest, ReplyAckAnswersExactlyOnceWithZeroOrError) {
  negotiate();
  EXPECT_EQ(ack(make_state(Request::set_vring_num, 0, 128, true)), 0u);
  EXPECT_NE(ack(make_state(Request::set_vring_num, 0, 3, true)), 0u);
  EXPECT_NE(ack(make_state(Request::set_vring_num, 0, 0, true)), 0u);
  EXPECT_NE(ack(make_state(Request::set_vring_num, 0, 65536, true)), 0u);
  EXPECT_NE(ack(make_state(Request::set_vring_num, 7, 128, true)), 0u);  // no ring 7
  // Without NEED_REPLY nothing is sent, success or not.
  EXPECT_FALSE(send(make_state(Request::set_vring_num, 0, 3)).has_value());
  EXPECT_FALSE(send(make_state(Request::set_vring_num, 0, 64)).has_value());
}

TEST_F(SessionTest, UnknownAndUnimplementedRequestsGetAnErrorNotADisconnect) {
  negotiate();
  Message unknown = make(static_cast<Request>(200), true);
  EXPECT_NE(ack(std::move(unknown)), 0u);
  Message iotlb = make(Request::iotlb_msg, true);
  iotlb.header.size = 64;
  EXPECT_NE(ack(std::move(iotlb)), 0u);
  EXPECT_TRUE(send(make(Request::get_features)).has_value());
  EXPECT_GE(session_.failed_requests(), 2u);
}

TEST_F(SessionTest, RequestsNeedTheirProtocolFeature) {
  send(make_u64(Request::set_protocol_features, protocol_bit(ProtocolFeature::reply_ack)));
  EXPECT_NE(ack(make(Request::reset_device, true)), 0u);                 // RESET_DEVICE not acked
  auto slots = send(make(Request::get_max_mem_slots));                   // CONFIGURE_MEM_SLOTS not acked
  ASSERT_TRUE(slots);
  EXPECT_EQ(slots->header.size, 0u);
}

TEST_F(SessionTest, RingIsNotPolledBeforeTheFirstKick) {
  negotiate();
  set_mem_table();
  configure_ring(0);
  send(make_state(Request::set_vring_enable, 0, 1));
  kick_ring(0);
  EXPECT_TRUE(host_.saw("watch 0"));
  EXPECT_FALSE(host_.saw("start 0"));
  EXPECT_FALSE(session_.ring_started(0));
  session_.on_kick(0);
  EXPECT_TRUE(session_.ring_started(0));
  EXPECT_TRUE(session_.ring_polled(0));
  EXPECT_TRUE(host_.saw("unwatch 0"));
  EXPECT_TRUE(host_.saw("start 0"));
}

TEST_F(SessionTest, KickWhileDisabledStartsTheRingAndEnableThenPollsIt) {
  negotiate();
  set_mem_table();
  configure_ring(0);
  kick_ring(0);
  session_.on_kick(0);
  EXPECT_TRUE(session_.ring_started(0));
  EXPECT_FALSE(session_.ring_enabled(0));
  EXPECT_FALSE(session_.ring_polled(0));
  send(make_state(Request::set_vring_enable, 0, 1));
  EXPECT_TRUE(session_.ring_polled(0));
  send(make_state(Request::set_vring_enable, 0, 0));
  EXPECT_FALSE(session_.ring_polled(0));
  EXPECT_TRUE(host_.saw("stop 0"));
}

TEST_F(SessionTest, WithoutProtocolFeaturesSetFeaturesEnablesRings) {
  negotiate(/*protocol_features=*/false);
  EXPECT_TRUE(session_.ring_enabled(0));
  EXPECT_TRUE(session_.ring_enabled(1));
  // And SET_VRING_ENABLE is then not a valid request.
  set_mem_table();
  configure_ring(0);
  kick_ring(0);
  session_.on_kick(0);
  EXPECT_TRUE(session_.ring_polled(0));
}

TEST_F(SessionTest, NofdKickStartsTheRingAtOnce) {
  negotiate();
  set_mem_table();
  configure_ring(1);
  send(make_state(Request::set_vring_enable, 1, 1));
  send(make_u64(Request::set_vring_kick, 1 | kVringNoFdMask));
  EXPECT_TRUE(session_.ring_polled(1));
  EXPECT_FALSE(host_.saw("watch 1"));
}

TEST_F(SessionTest, GetVringBaseStopsTheRingBeforeAnsweringAndReturnsTheIndex) {
  negotiate();
  set_mem_table();
  configure_ring(0);
  send(make_state(Request::set_vring_base, 0, 4242));
  send(make_state(Request::set_vring_enable, 0, 1));
  kick_ring(0);
  session_.on_kick(0);
  ASSERT_TRUE(session_.ring_polled(0));
  host_.events.clear();
  auto reply = send(make_state(Request::get_vring_base, 0, 0));
  ASSERT_TRUE(reply);
  ASSERT_EQ(host_.events.size(), 1u);
  EXPECT_EQ(host_.events[0], "stop 0");
  EXPECT_EQ(reply->header.size, sizeof(VringStatePayload));
  auto state = reply->payload_as<VringStatePayload>();
  EXPECT_EQ(state.index, 0u);
  EXPECT_EQ(state.num, 4242u);
  EXPECT_FALSE(session_.ring_started(0));
  // A stopped ring can be reconfigured and restarted from a new base.
  EXPECT_EQ(ack(make_state(Request::set_vring_base, 0, 17, true)), 0u);
  kick_ring(0);
  session_.on_kick(0);
  EXPECT_TRUE(session_.ring_polled(0));
  EXPECT_EQ(session_.ring(0).unlocked().split_queue().last_avail_idx(), 17);
}

TEST_F(SessionTest, RunningRingRefusesSizeAndBaseChanges) {
  negotiate();
  set_mem_table();
  configure_ring(0);
  send(make_state(Request::set_vring_enable, 0, 1));
  kick_ring(0);
  session_.on_kick(0);
  EXPECT_NE(ack(make_state(Request::set_vring_num, 0, 128, true)), 0u);
  EXPECT_NE(ack(make_state(Request::set_vring_base, 0, 5, true)), 0u);
  EXPECT_TRUE(session_.ring_polled(0));
}

TEST_F(SessionTest, TogglingLogAllNeverStopsARing) {
  negotiate();
  set_mem_table();
  configure_ring(0);
  send(make_state(Request::set_vring_enable, 0, 1));
  kick_ring(0);
  session_.on_kick(0);
  host_.events.clear();
  const std::uint64_t base = kVirtioFVersion1 | kVhostUserFProtocolFeatures;
  EXPECT_EQ(ack(make_u64(Request::set_features, base | kVirtioFLogAll, true)), 0u);
  EXPECT_TRUE(session_.memory().current()->log_all());
  EXPECT_EQ(ack(make_u64(Request::set_features, base, true)), 0u);
  EXPECT_FALSE(session_.memory().current()->log_all());
  EXPECT_TRUE(host_.events.empty());
  EXPECT_TRUE(session_.ring_polled(0));
}

TEST_F(SessionTest, CallFdChangeOnARunningRingPausesAndResumesIt) {
  negotiate();
  set_mem_table();
  configure_ring(0);
  send(make_state(Request::set_vring_enable, 0, 1));
  kick_ring(0);
  session_.on_kick(0);
  host_.events.clear();
  Message call = make_u64(Request::set_vring_call, 0);
  call.fds.push_back(make_eventfd());
  send(std::move(call));
  EXPECT_EQ(host_.events, (std::vector<std::string>{"stop 0", "start 0"}));
  EXPECT_GE(session_.ring(0).unlocked().call_fd(), 0);
}

TEST_F(SessionTest, RingAddressOutsideMemoryIsRefused) {
  negotiate();
  set_mem_table();
  send(make_state(Request::set_vring_num, 0, 256));
  Message addr = make(Request::set_vring_addr, true);
  std::uint64_t outside = kUserBase + kGuestSize - 0x100;  // the used ring would run past the end
  addr.set_payload(VringAddrPayload{0, 0, kUserBase, outside, kUserBase + 0x1000, 0});
  EXPECT_NE(ack(std::move(addr)), 0u);
  Message misaligned = make(Request::set_vring_addr, true);
  misaligned.set_payload(VringAddrPayload{0, 0, kUserBase + 8, kUserBase + 0x2000, kUserBase + 0x1000, 0});
  EXPECT_NE(ack(std::move(misaligned)), 0u);
}

TEST_F(SessionTest, GetConfigOutOfRangeGetsAnEmptyReply) {
  negotiate();
  Message in_range = make(Request::get_config);
  ConfigPayloadHeader header{1, 2, 0};
  std::memcpy(in_range.payload.data(), &header, sizeof header);
  in_range.header.size = sizeof header + 2;
  auto reply = send(std::move(in_range));
  ASSERT_TRUE(reply);
  ASSERT_EQ(reply->header.size, sizeof header + 2);
  EXPECT_EQ(reply->payload[sizeof header], 2);
  EXPECT_EQ(reply->payload[sizeof header + 1], 3);

  Message out_of_range = make(Request::get_config);
  header = {3, 4, 0};
  std::memcpy(out_of_range.payload.data(), &header, sizeof header);
  out_of_range.header.size = sizeof header + 4;
  reply = send(std::move(out_of_range));
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->header.size, 0u);
}

TEST_F(SessionTest, ResetDeviceStopsEveryRingAndResetsTheBackend) {
  negotiate();
  set_mem_table();
  configure_ring(0);
  configure_ring(1);
  send(make_state(Request::set_vring_enable, 0, 1));
  send(make_state(Request::set_vring_enable, 1, 1));
  kick_ring(0);
  kick_ring(1);
  session_.on_kick(0);
  session_.on_kick(1);
  ASSERT_TRUE(session_.ring_polled(0) && session_.ring_polled(1));
  EXPECT_EQ(ack(make(Request::reset_device, true)), 0u);
  EXPECT_FALSE(session_.ring_polled(0) || session_.ring_polled(1));
  EXPECT_FALSE(session_.ring_started(0) || session_.ring_enabled(0));
  EXPECT_EQ(session_.acked_features(), 0u);
  EXPECT_EQ(backend_.resets, 1);
}

TEST_F(SessionTest, TeardownReleasesEveryFdAndMapping) {
  const int fds_before = count_open_fds();
  negotiate();
  set_mem_table();
  configure_ring(0);
  send(make_state(Request::set_vring_enable, 0, 1));
  kick_ring(0);
  Message call = make_u64(Request::set_vring_call, 0);
  call.fds.push_back(make_eventfd());
  send(std::move(call));
  session_.on_kick(0);
  EXPECT_GT(count_open_fds(), fds_before);
  session_.teardown();
  EXPECT_EQ(count_open_fds(), fds_before);
  EXPECT_EQ(session_.memory().current()->num_regions(), 0u);
  EXPECT_FALSE(session_.ring_polled(0));
  EXPECT_EQ(session_.acked_protocol_features(), 0u);
}

TEST_F(SessionTest, AddAndRemoveMemoryRegions) {
  negotiate();
  auto slots = send(make(Request::get_max_mem_slots));
  ASSERT_TRUE(slots);
  EXPECT_EQ(slots->u64(), 509u);
  Message add = make(Request::add_mem_reg, true);
  add.set_payload(MemRegPayload{0, {kGuestBase, kGuestSize, kUserBase, 0}});
  add.fds.push_back(UniqueFd(::dup(memfd_.get())));
  EXPECT_EQ(ack(std::move(add)), 0u);
  EXPECT_EQ(session_.memory().current()->num_regions(), 1u);
  Message overlapping = make(Request::add_mem_reg, true);
  overlapping.set_payload(MemRegPayload{0, {kGuestBase + 4096, 4096, kUserBase + kGuestSize, 0}});
  overlapping.fds.push_back(UniqueFd(::dup(memfd_.get())));
  EXPECT_NE(ack(std::move(overlapping)), 0u);
  Message remove = make(Request::rem_mem_reg, true);
  remove.set_payload(MemRegPayload{0, {kGuestBase, kGuestSize, kUserBase, 0}});
  EXPECT_EQ(ack(std::move(remove)), 0u);
  EXPECT_EQ(session_.memory().current()->num_regions(), 0u);
  Message remove_again = make(Request::rem_mem_reg, true);
  remove_again.set_payload(MemRegPayload{0, {kGuestBase, kGuestSize, kUserBase, 0}});
  EXPECT_NE(ack(std::move(remove_again)), 0u);
}

}  // namespace
}  // namespace vhostd
