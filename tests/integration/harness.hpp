// vhostd integration tests: one echo daemon on a real socket per test, driven by TestFrontend.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include "frontend.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/echo/echo_backend.hpp"
#include "vhostd/runtime/daemon.hpp"
#include "vhostd/runtime/runtime.hpp"

namespace vhostd::test {

// Lines in /proc/self/maps (those containing `filter`, if given): stable across connect
// cycles when no mapping leaks.
inline std::size_t count_mappings(const std::string& filter = {}) {
  std::ifstream maps("/proc/self/maps");
  std::size_t lines = 0;
  std::string line;
  while (std::getline(maps, line)) {
    if (filter.empty() || line.find(filter) != std::string::npos) ++lines;
  }
  return lines;
}

// ASan's allocator maps its own regions lazily as allocation patterns change, so the total
// line count is only meaningful without it; memfd mappings are counted exactly either way.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kExactMappingCount = false;
#else
inline constexpr bool kExactMappingCount = true;
#endif

inline bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vhostd-it-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/echo.sock";
    runtime_ = std::make_unique<Runtime>(Runtime::default_cores(), poller_options_);
    backend_ = std::make_shared<EchoBackend>();
    daemon_ = std::make_unique<Daemon>("echo", backend_, *runtime_);
    if (start_server_) daemon_->start_server(path_);
  }

  void TearDown() override {
    if (daemon_) {
      daemon_->stop();
      daemon_->wait();
      daemon_.reset();
    }
    runtime_.reset();
    ::unlink(path_.c_str());
    ::unlink((dir_ + "/frontend.sock").c_str());
    ::rmdir(dir_.c_str());
  }

  // Connects a frontend and waits until the daemon has accepted it.
  TestFrontend connect() {
    const std::uint64_t before = daemon_->connections();
    TestFrontend frontend = TestFrontend::connect(path_);
    EXPECT_TRUE(wait_until([&] { return daemon_->connections() > before && daemon_->connected(); }))
        << "the daemon did not accept the connection";
    return frontend;
  }

  // The ring report of ring `index` (fails the test when no session is attached).
  RingReport report(std::size_t index) {
    auto reports = daemon_->ring_reports();
    if (index >= reports.size()) {
      ADD_FAILURE() << "no ring report for ring " << index << " (" << reports.size() << " reports)";
      return {};
    }
    return reports[index];
  }

  bool wait_disconnected(std::chrono::milliseconds timeout = 10s) {
    return wait_until([&] { return !daemon_->connected(); }, timeout);
  }

  bool start_server_ = true;
  PollerOptions poller_options_;  // set before DaemonTest::SetUp() runs
  std::string dir_;
  std::string path_;
  std::unique_ptr<Runtime> runtime_;
  std::shared_ptr<EchoBackend> backend_;
  std::unique_ptr<Daemon> daemon_;
};

// A DaemonTest run once per ring layout (INSTANTIATE_LAYOUTS): options() sets up the device
// with split rings, or with RING_PACKED acked and packed driver rings.
class LayoutTest : public DaemonTest, public ::testing::WithParamInterface<RingLayout> {
 protected:
  RingLayout layout() const { return GetParam(); }
  bool packed() const { return GetParam() == RingLayout::packed; }
  DeviceOptions options() const {
    DeviceOptions o;
    o.packed = packed();
    return o;
  }
};

inline std::string layout_param_name(const ::testing::TestParamInfo<RingLayout>& info) {
  return to_string(info.param);
}

}  // namespace vhostd::test

// Runs every TEST_P of `suite` (a LayoutTest) on split rings and on packed rings.
#define INSTANTIATE_LAYOUTS(suite)                                                                   \
  INSTANTIATE_TEST_SUITE_P(Layouts, suite,                                                           \
                           ::testing::Values(::vhostd::RingLayout::split, ::vhostd::RingLayout::packed), \
                           ::vhostd::test::layout_param_name)
