// vhostd-fwd's command line and lifecycle as scripts depend on them (doc/vhostd-fwd.md),
// without a frontend: a bad option is refused with exit status 2 and a message naming it;
// a socket path already served is refused with exit status 1; a started app prints `ready`,
// stops on SIGTERM with exit status 0, prints its totals and removes its sockets.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "process.hpp"

namespace vhostd::interop {
namespace {

std::string fwd_binary() {
  const char* path = std::getenv("VHOSTD_FWD");
  return path == nullptr ? std::string() : std::string(path);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

class CommandLineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (fwd_binary().empty()) GTEST_SKIP() << "VHOSTD_FWD is not set (meson sets it)";
  }
  // Runs vhostd-fwd with `args` to completion; returns its wait status and output.
  std::pair<std::optional<int>, std::string> run(std::vector<std::string> args) {
    args.insert(args.begin(), fwd_binary());
    Process process(Process::Options{args, dir_ / ("run" + std::to_string(runs_++) + ".log")});
    auto status = process.wait(10s);
    if (!status) process.kill();
    return {status, process.output()};
  }
  TempDir dir_;
  int runs_ = 0;
};

TEST_F(CommandLineTest, BadOptionsAreRefusedWithExitStatusTwoAndTheirName) {
  const std::string sock = "path=" + (dir_ / "p0.sock");
  struct Case {
    std::vector<std::string> args;
    std::string named;  // part of the message that names the problem
  };
  const std::vector<Case> cases = {
      {{"-l", "0,1", "--main-lcore", "0", "--fwd", "io"}, "--port is required"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", "queues=2"}, "path="},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",queues=0"}, "queues=0"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",queues=129"}, "queues=129"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",mrg_rxbuf=2"}, "mrg_rxbuf=2"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",mac=zz:00:00:00:00:01"}, "mac="},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",lcore=0"}, "lcore=0: not a data lcore"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",lcore=7"}, "lcore=7: not a data lcore"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",lcore=x"}, "lcore"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",coalesce-usecs=0"}, "coalesce-usecs=0"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",coalesce-usecs=1000001"}, "coalesce-usecs=1000001"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",coalesce-usecs=50,coalesce-packets=0"},
       "coalesce-packets=0"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",coalesce-packets=32"}, "needs coalesce-usecs"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock + ",lcore=1", "--port", "path=" + (dir_ / "p1.sock"),
        "--fwd", "l2"}, "same on every port"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--fwd", "bogus"}, "bogus"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--burst", "0"}, "--burst"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--burst", "257"}, "--burst"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--txpkts", "59"}, "--txpkts"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--stats-period", "x"}, "--stats-period"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--frobnicate"}, "--frobnicate"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--poll-mode", "sleepy"}, "sleepy"},
      {{"-l", "0,1", "--main-lcore", "0", "--port", sock, "--idle-threshold-us", "-5"}, "--idle-threshold-us"},
      {{"-l", "0,4095", "--main-lcore", "0", "--port", sock}, "4095"},
      {{"-l", "0,1,1", "--main-lcore", "0", "--port", sock}, "1"},
  };
  for (const Case& c : cases) {
    auto [status, output] = run(c.args);
    std::string line;
    for (const auto& a : c.args) line += a + " ";
    ASSERT_TRUE(status.has_value()) << line << ": did not exit";
    EXPECT_TRUE(exited_with(status, 2)) << line << ": " << describe_status(*status) << "\n" << output;
    EXPECT_NE(output.find("usage:"), std::string::npos) << line << ": no usage text\n" << output;
    EXPECT_NE(output.find(c.named), std::string::npos) << line << ": message does not name '" << c.named
                                                       << "'\n" << output;
    EXPECT_EQ(output.find("ready"), std::string::npos) << line << ": started anyway";
  }
}

TEST_F(CommandLineTest, ASocketPathServedTwiceIsRefused) {
  const std::string sock = "path=" + (dir_ / "p0.sock");
  auto [status, output] = run({"-l", "0,1", "--main-lcore", "0", "--port", sock, "--port", sock, "--fwd", "io"});
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(exited_with(status, 1)) << describe_status(*status) << "\n" << output;
  EXPECT_EQ(output.find("vhostd-fwd: ready"), std::string::npos) << output;
}

TEST_F(CommandLineTest, ExplicitLcoreIsAssignedAtStart) {
  const std::string s0 = dir_ / "p0.sock";
  Process process(Process::Options{{fwd_binary(), "-l", "0,1", "--main-lcore", "0", "--port",
                                    "path=" + s0 + ",queues=2,lcore=1", "--fwd", "io"},
                                   dir_ / "fwd.log"});
  ASSERT_TRUE(process.wait_for_text("vhostd-fwd: ready", 10s)) << process.tail();
  const std::string out = process.output();
  EXPECT_NE(out.find("assign: port 0 queue-pair 0 -> lcore 1"), std::string::npos) << out;
  EXPECT_NE(out.find("assign: port 0 queue-pair 1 -> lcore 1"), std::string::npos) << out;
  auto status = process.terminate(SIGTERM, 10s);
  ASSERT_TRUE(status.has_value()) << "did not exit on SIGTERM\n" << process.tail();
  EXPECT_TRUE(exited_with(status, 0)) << describe_status(*status) << "\n" << process.tail();
}

TEST_F(CommandLineTest, StartsReadyAndStopsCleanlyOnSigterm) {
  const std::string s0 = dir_ / "p0.sock", s1 = dir_ / "p1.sock";
  Process process(Process::Options{{fwd_binary(), "-l", "0,1", "--main-lcore", "0", "--port", "path=" + s0,
                                    "--port", "path=" + s1 + ",queues=2,coalesce-usecs=50,coalesce-packets=32",
                                    "--fwd", "l2"},
                                   dir_ / "fwd.log"});
  ASSERT_TRUE(process.wait_for_text("vhostd-fwd: ready", 10s)) << process.tail();
  EXPECT_TRUE(exists(s0) && exists(s1)) << "sockets not created";
  const std::string out = process.output();
  EXPECT_NE(out.find("assign: port 0 queue-pair 0 -> lcore 1"), std::string::npos) << out;
  EXPECT_NE(out.find("assign: port 1 queue-pair 1 -> lcore 1"), std::string::npos) << out;
  auto status = process.terminate(SIGTERM, 10s);
  ASSERT_TRUE(status.has_value()) << "did not exit on SIGTERM\n" << process.tail();
  EXPECT_TRUE(exited_with(status, 0)) << describe_status(*status) << "\n" << process.tail();
  const std::string done = process.output();
  EXPECT_NE(done.find("total port 0: rx-packets 0 rx-bytes 0 tx-packets 0 tx-bytes 0 drops 0 errors 0"),
            std::string::npos) << done;
  EXPECT_NE(done.find("total port 1: rx-packets 0"), std::string::npos) << done;
  EXPECT_FALSE(exists(s0) || exists(s1)) << "sockets left behind";
}

}  // namespace
}  // namespace vhostd::interop
