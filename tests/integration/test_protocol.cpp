// Integration: request/reply framing, REPLY_ACK, invalid and unknown requests, config space,
// memory slots, malformed messages and stop(), over a real socket to the echo daemon.
#include <chrono>
#include <cstring>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using ProtocolTest = DaemonTest;
using ProtocolTrafficTest = LayoutTest;

// Negotiation only (no memory, no rings), with REPLY_ACK and every offered protocol feature.
TestFrontend negotiated(TestFrontend frontend) {
  frontend.negotiate(DeviceOptions{});
  EXPECT_TRUE(frontend.reply_ack()) << "REPLY_ACK was not offered";
  return frontend;
}

TEST_F(ProtocolTest, NeedReplyOnValidRequestGetsExactlyOneZeroAck) {
  TestFrontend frontend = negotiated(connect());
  EXPECT_EQ(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0, 256}), 0u);
  // Exactly one: the very next message is the answer to the next request.
  frontend.expect_in_sync();
  EXPECT_EQ(frontend.request_ack_struct(Request::set_vring_base, wire::VringState{1, 7}), 0u);
  frontend.expect_in_sync();
}

TEST_F(ProtocolTest, NeedReplyOnInvalidRequestGetsExactlyOneErrorAck) {
  TestFrontend frontend = negotiated(connect());
  EXPECT_NE(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0, 3}), 0u);
  frontend.expect_in_sync();
  EXPECT_NE(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{2, 256}), 0u)
      << "ring index 2 of a 2-ring device must be refused";
  frontend.expect_in_sync();
  EXPECT_NE(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0xffffffffu, 256}), 0u);
  frontend.expect_in_sync();
  EXPECT_TRUE(daemon_->connected());
}

TEST_F(ProtocolTest, SetVringNumRejectsBadSizes) {
  TestFrontend frontend = negotiated(connect());
  for (std::uint32_t bad : {0u, 3u, 65536u, 2048u /* over the echo device's 1024 */, 1000u}) {
    EXPECT_NE(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0, bad}), 0u) << "size " << bad;
    frontend.expect_in_sync();
  }
  for (std::uint32_t good : {1u, 2u, 256u, 1024u}) {
    EXPECT_EQ(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{1, good}), 0u) << "size " << good;
  }
  frontend.expect_in_sync();
}

TEST_F(ProtocolTest, UnknownAndUnsupportedRequestsGetErrorAcksAndTheConnectionStays) {
  TestFrontend frontend = negotiated(connect());
  const std::uint64_t features = frontend.get_features();

  std::uint64_t junk = 0x1234;
  EXPECT_NE(frontend.request_ack_struct(static_cast<Request>(200), junk), 0u) << "unknown request id 200";
  frontend.expect_in_sync();

  std::uint8_t iotlb[32] = {};  // struct vhost_iotlb_msg; IOTLB is not offered
  EXPECT_NE(frontend.request_ack(Request::iotlb_msg, iotlb), 0u) << "IOTLB_MSG";
  frontend.expect_in_sync();

  // Without NEED_REPLY an unknown request is answered with nothing at all.
  frontend.send_u64(static_cast<Request>(200), junk);
  frontend.expect_in_sync();

  EXPECT_EQ(frontend.get_features(), features);
  EXPECT_TRUE(daemon_->connected());
  EXPECT_EQ(daemon_->connections(), 1u);
}

TEST_F(ProtocolTest, AckedRequestsKeepTheirOrder) {
  TestFrontend frontend = negotiated(connect());
  // Ten acked requests in flight at once: ten acks, in order, then nothing else.
  for (int i = 0; i < 10; ++i) {
    frontend.send_struct(Request::set_vring_num, wire::VringState{static_cast<std::uint32_t>(i % 2), 128}, {}, true);
  }
  for (int i = 0; i < 10; ++i) EXPECT_EQ(frontend.read_reply(Request::set_vring_num).u64(), 0u) << i;
  frontend.expect_in_sync();
}

TEST_F(ProtocolTest, GetConfigInRangeReturnsTheBytesAndOutOfRangeAnEmptyReply) {
  TestFrontend frontend = negotiated(connect());
  ASSERT_TRUE(frontend.acked_protocol_features() & (1ull << 9)) << "CONFIG not offered by the echo device";

  auto all = frontend.get_config(0, 8);
  ASSERT_TRUE(all.has_value());
  std::uint32_t words[2];
  std::memcpy(words, all->data(), sizeof words);
  EXPECT_EQ(words[0], 2u) << "number of queues";
  EXPECT_EQ(words[1], 1024u) << "max queue size";

  auto tail = frontend.get_config(4, 4);
  ASSERT_TRUE(tail.has_value());
  std::uint32_t max_size;
  std::memcpy(&max_size, tail->data(), sizeof max_size);
  EXPECT_EQ(max_size, 1024u);

  EXPECT_FALSE(frontend.get_config(4, 8).has_value()) << "crosses the end of the config space";
  EXPECT_FALSE(frontend.get_config(9, 1).has_value()) << "past the end";
  EXPECT_FALSE(frontend.get_config(0xfffffffcu, 8).has_value()) << "offset + size overflows";
  frontend.expect_in_sync();
  EXPECT_TRUE(daemon_->connected());
}

TEST_F(ProtocolTest, GetConfigWithoutTheConfigFeatureIsRefused) {
  TestFrontend frontend = connect();
  DeviceOptions options;
  options.protocol_feature_mask = ~(1ull << 9);
  frontend.negotiate(options);
  EXPECT_FALSE(frontend.get_config(0, 8).has_value());
  frontend.expect_in_sync();
}

TEST_F(ProtocolTest, GetMaxMemSlotsIs509) {
  TestFrontend frontend = negotiated(connect());
  EXPECT_EQ(frontend.get_max_mem_slots(), 509u);
}

TEST_F(ProtocolTest, StatusRoundTrips) {
  TestFrontend frontend = negotiated(connect());
  frontend.set_status(0x0f);
  EXPECT_EQ(frontend.get_status(), 0x0f);
  EXPECT_NE(frontend.request_ack_struct(Request::set_status, std::uint64_t{0x100}), 0u);
  EXPECT_EQ(frontend.get_status(), 0x0f);
}

TEST_F(ProtocolTest, HeaderVersion2ClosesTheConnectionAndTheDaemonAcceptsANewOne) {
  TestFrontend frontend = connect();
  frontend.send_header(wire::Header{static_cast<std::uint32_t>(Request::get_features), 0x2, 0}, {});
  EXPECT_TRUE(frontend.wait_closed()) << "the daemon kept a connection that sent header version 2";
  EXPECT_TRUE(wait_disconnected());

  TestFrontend second = connect();
  EXPECT_NE(second.get_features(), 0u);
  EXPECT_EQ(daemon_->connections(), 2u);
}

TEST_P(ProtocolTrafficTest, OversizedMessageClosesTheConnectionAndTheDaemonAcceptsANewOne) {
  TestFrontend frontend = connect();
  std::vector<std::uint8_t> junk(4096, 0xab);
  frontend.send_header(wire::Header{static_cast<std::uint32_t>(Request::set_mem_table), 0x1, 100000}, junk);
  EXPECT_TRUE(frontend.wait_closed()) << "the daemon kept a connection that announced a 100000-byte payload";
  EXPECT_TRUE(wait_disconnected());

  TestFrontend second = connect();
  second.setup_device(options());
  echo_one(second, 0);
  echo_one(second, 1);
}

TEST_P(ProtocolTrafficTest, StopReturnsPromptlyWithAFrontendConnected) {
  TestFrontend frontend = connect();
  frontend.setup_device(options());
  echo_one(frontend, 0);
  ASSERT_TRUE(path_exists(path_));

  const auto start = std::chrono::steady_clock::now();
  daemon_->stop();
  daemon_->wait();
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, 2s) << "stop() + wait() took "
                      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  EXPECT_FALSE(daemon_->connected());
  EXPECT_FALSE(path_exists(path_)) << "the socket path was left behind";
  EXPECT_TRUE(frontend.wait_closed()) << "the frontend's connection was not closed";
  // The destructor (TearDown) stops again: must be harmless.
}

TEST_F(ProtocolTest, ExitEventStopsTheDaemon) {
  TestFrontend frontend = connect();
  eventfd_signal(daemon_->exit_event());
  std::thread waiter([&] { daemon_->wait(); });
  waiter.join();
  EXPECT_FALSE(path_exists(path_));
  EXPECT_TRUE(frontend.wait_closed());
}

INSTANTIATE_LAYOUTS(ProtocolTrafficTest);

}  // namespace
}  // namespace vhostd::test
