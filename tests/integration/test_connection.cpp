// Integration: connection life cycle over a real socket: disconnect in every state and
// reconnect, no fd or mapping leak over many cycles, one frontend at a time, and client mode
// (the daemon connects to a listening frontend and reconnects by itself); with traffic on split
// and on packed rings.
#include <chrono>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using ConnectionTest = LayoutTest;

// Full handshake, then random traffic through both rings.
void handshake_and_traffic(TestFrontend& frontend, const DeviceOptions& options, std::uint64_t seed,
                           int bursts = 4) {
  frontend.setup_device(options);
  std::uint64_t rng = seed;
  for (int b = 0; b < bursts; ++b) {
    for (std::size_t ring = 0; ring < 2; ++ring) {
      std::vector<EchoChain> burst;
      for (int k = 0; k < 16; ++k) burst.push_back(random_chain(rng, 3000, true));
      echo_burst(frontend, ring, burst);
    }
  }
}

enum class State { connected, features, memory, running_mid_traffic };
const char* name(State s) {
  switch (s) {
    case State::connected: return "right after connect";
    case State::features: return "after features";
    case State::memory: return "after the memory table";
    case State::running_mid_traffic: return "with rings running mid-traffic";
  }
  return "?";
}

TEST_P(ConnectionTest, DisconnectInEveryStateThenReconnectAndServe) {
  std::uint64_t seed = 1;
  for (State state : {State::connected, State::features, State::memory, State::running_mid_traffic}) {
    SCOPED_TRACE(name(state));
    {
      TestFrontend frontend = connect();
      DeviceOptions options = this->options();
      switch (state) {
        case State::connected:
          break;
        case State::features:
          frontend.negotiate(options);
          break;
        case State::memory:
          frontend.negotiate(options);
          frontend.send_memory(options);
          break;
        case State::running_mid_traffic: {
          handshake_and_traffic(frontend, options, seed++, 1);
          std::uint64_t rng = 77;
          for (std::size_t ring = 0; ring < 2; ++ring) {
            for (int k = 0; k < 24; ++k) push_echo(frontend, ring, random_chain(rng, 3000, true));
            frontend.kick(ring);
          }
          break;
        }
      }
      frontend.close();
      ASSERT_TRUE(wait_disconnected()) << "daemon still connected after the frontend closed";
      // Guest memory is unmapped here only now: the daemon must be done with it already.
    }
    TestFrontend next = connect();
    ASSERT_NO_THROW(handshake_and_traffic(next, options(), seed++));
    for (std::size_t ring = 0; ring < 2; ++ring) EXPECT_EQ(report(ring).errors, 0u);
    next.close();
    ASSERT_TRUE(wait_disconnected());
  }
  EXPECT_EQ(daemon_->connections(), 8u);
}

TEST_P(ConnectionTest, NoFdOrMappingLeakOverTwentyCycles) {
  int fds_after_first = -1;
  std::size_t maps_after_first = 0;
  std::size_t memfd_maps_after_first = 0;
  for (int cycle = 1; cycle <= 20; ++cycle) {
    {
      TestFrontend frontend = connect();
      ASSERT_NO_THROW(handshake_and_traffic(frontend, options(), cycle, 2)) << "cycle " << cycle;
      if (cycle % 2 == 0) {
        // Every other cycle closes with requests in flight.
        std::uint64_t rng = cycle;
        for (int k = 0; k < 32; ++k) push_echo(frontend, 0, random_chain(rng, 3000, true));
        frontend.kick(0);
      }
      frontend.close();
      ASSERT_TRUE(wait_disconnected()) << "cycle " << cycle;
    }
    if (cycle == 1) {
      fds_after_first = count_open_fds();
      maps_after_first = count_mappings();
      memfd_maps_after_first = count_mappings("memfd:");
      EXPECT_EQ(memfd_maps_after_first, 0u) << "guest memory still mapped after the disconnect";
    }
  }
  EXPECT_EQ(count_open_fds(), fds_after_first) << "fds leaked over 19 connections";
  // Guest memory and dirty logs are memfds: the daemon's mappings of them are gone after each
  // disconnect (and the test's own with each TestFrontend).
  EXPECT_EQ(count_mappings("memfd:"), memfd_maps_after_first) << "memfd mappings leaked over 19 connections";
  if (kExactMappingCount) {
    EXPECT_EQ(count_mappings(), maps_after_first) << "mappings leaked over 19 connections";
  }
  EXPECT_EQ(daemon_->connections(), 20u);
}

TEST_P(ConnectionTest, ASecondFrontendIsRefusedWhileOneIsConnected) {
  TestFrontend first = connect();
  first.setup_device(options());
  echo_one(first, 0);
  TestFrontend second = TestFrontend::connect(path_);
  EXPECT_TRUE(second.wait_closed()) << "the daemon kept a second frontend";
  EXPECT_EQ(daemon_->connections(), 1u);
  for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(first, i % 2, 100, i));
  first.expect_in_sync();
}

class ClientModeTest : public DaemonTest {
 protected:
  ClientModeTest() { start_server_ = false; }
  std::string frontend_path() const { return dir_ + "/frontend.sock"; }
};

class ClientModeLayoutTest : public LayoutTest {
 protected:
  ClientModeLayoutTest() { start_server_ = false; }
  std::string frontend_path() const { return dir_ + "/frontend.sock"; }
};

TEST_P(ClientModeLayoutTest, DaemonConnectsRetriesAndReconnectsAfterADisconnect) {
  // The daemon starts first and must retry until the frontend listens.
  daemon_->start_client(frontend_path());
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(daemon_->connected());
  UnixListener listener = UnixListener::listen(frontend_path());

  {
    TestFrontend frontend = TestFrontend::accept_from(listener, 10s);
    ASSERT_TRUE(wait_until([&] { return daemon_->connected(); }));
    ASSERT_NO_THROW(handshake_and_traffic(frontend, options(), 1));
    frontend.close();
  }
  ASSERT_TRUE(wait_disconnected());

  // No call from the test: the daemon comes back by itself.
  TestFrontend again = TestFrontend::accept_from(listener, 10s);
  ASSERT_TRUE(wait_until([&] { return daemon_->connected() && daemon_->connections() == 2; }));
  ASSERT_NO_THROW(handshake_and_traffic(again, options(), 2));
  for (std::size_t ring = 0; ring < 2; ++ring) EXPECT_GT(report(ring).requests, 0u);
}

TEST_F(ClientModeTest, StopWhileRetryingReturnsPromptly) {
  daemon_->start_client(frontend_path());
  std::this_thread::sleep_for(100ms);
  const auto start = std::chrono::steady_clock::now();
  daemon_->stop();
  daemon_->wait();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_EQ(daemon_->connections(), 0u);
}

INSTANTIATE_LAYOUTS(ConnectionTest);
INSTANTIATE_LAYOUTS(ClientModeLayoutTest);

}  // namespace
}  // namespace vhostd::test
