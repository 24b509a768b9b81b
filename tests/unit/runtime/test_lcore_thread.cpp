// Unit tests for vhostd/runtime/lcore_thread.hpp: pinning, naming, stop tokens, errors.
#include "vhostd/runtime/lcore_thread.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"

namespace vhostd {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::vector<unsigned> allowed_cpus() {
  cpu_set_t set;
  std::vector<unsigned> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (unsigned cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

struct Observed {
  std::vector<int> cpus_seen;  // sched_getcpu() samples
  std::vector<unsigned> affinity;
  std::string name;
};

// Runs a body on an LcoreThread pinned to `cpu` and reports what the thread saw.
Observed run_pinned(unsigned cpu) {
  std::promise<Observed> result;
  auto future = result.get_future();
  {
    LcoreThread t(cpu, {cpu}, [&](std::stop_token) {
      Observed o;
      for (int i = 0; i < 50; ++i) {
        o.cpus_seen.push_back(sched_getcpu());
        std::this_thread::yield();
      }
      o.affinity = allowed_cpus();
      char name[16] = {};
      pthread_getname_np(pthread_self(), name, sizeof name);
      o.name = name;
      result.set_value(std::move(o));
    });
    EXPECT_EQ(t.lcore_id(), cpu);
  }
  return future.get();
}

TEST(LcoreThread, RunsPinnedOnCpu0) {
  Observed o = run_pinned(0);
  for (int c : o.cpus_seen) EXPECT_EQ(c, 0);
  EXPECT_THAT(o.affinity, ::testing::ElementsAre(0u));
  EXPECT_EQ(o.name, "lcore-0");
}

TEST(LcoreThread, RunsPinnedOnCpu1) {
  std::vector<unsigned> cpus = allowed_cpus();
  if (cpus.size() < 2 || cpus[1] != 1) GTEST_SKIP() << "cpu 1 not available";
  Observed o = run_pinned(1);
  for (int c : o.cpus_seen) EXPECT_EQ(c, 1);
  EXPECT_THAT(o.affinity, ::testing::ElementsAre(1u));
  EXPECT_EQ(o.name, "lcore-1");
}

TEST(LcoreThread, CpuSetAffinity) {
  std::vector<unsigned> cpus = allowed_cpus();
  std::promise<std::vector<unsigned>> seen;
  auto future = seen.get_future();
  LcoreThread t(7, cpus, [&](std::stop_token) { seen.set_value(allowed_cpus()); });
  EXPECT_EQ(future.get(), cpus);
  EXPECT_EQ(t.cpus(), cpus);
}

TEST(LcoreThread, StopTokenHonoured) {
  std::atomic<unsigned long> loops{0};
  std::atomic<bool> returned{false};
  {
    LcoreThread t(0, {0}, [&](std::stop_token stop) {
      while (!stop.stop_requested()) {
        loops.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::yield();
      }
      returned = true;
    });
    while (loops.load() < 10) std::this_thread::sleep_for(1ms);
    EXPECT_FALSE(t.stop_requested());
    t.request_stop();
    EXPECT_TRUE(t.stop_requested());
    t.join();
    EXPECT_TRUE(returned.load());
    t.join();  // idempotent
  }
}

TEST(LcoreThread, DestructorStopsAndJoins) {
  std::atomic<bool> returned{false};
  std::atomic<bool> running{false};
  {
    LcoreThread t(0, {0}, [&](std::stop_token stop) {
      running = true;
      while (!stop.stop_requested()) std::this_thread::sleep_for(1ms);
      returned = true;
    });
    while (!running.load()) std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(returned.load());
}

TEST(LcoreThread, CustomNameTruncatedTo15) {
  std::promise<std::string> seen;
  auto future = seen.get_future();
  LcoreThread t(3, {0}, [&](std::stop_token) {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof name);
    seen.set_value(name);
  }, "control-lcore-with-long-name");
  EXPECT_EQ(future.get(), "control-lcore-w");
  EXPECT_EQ(t.name(), "control-lcore-with-long-name");
}

TEST(LcoreThread, UnusableCpuThrowsAndBodyNeverRuns) {
  std::atomic<bool> ran{false};
  try {
    LcoreThread t(5, {1000}, [&](std::stop_token) { ran = true; });
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("lcore 5"));
    EXPECT_THAT(e.what(), HasSubstr("cannot pin thread to cpus 1000"));
  }
  EXPECT_FALSE(ran.load());
}

TEST(LcoreThread, EmptyCpuSetThrows) {
  try {
    LcoreThread t(2, {}, [](std::stop_token) {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("lcore 2: empty cpu set"));
  }
}

TEST(LcoreThread, BodyExceptionIsRethrownByJoin) {
  LogLevel saved = log_level();
  set_log_level(LogLevel::none);
  LcoreThread t(0, {0}, [](std::stop_token) { throw std::runtime_error("boom"); });
  EXPECT_THROW(
      {
        try {
          t.join();
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "boom");
          throw;
        }
      },
      std::runtime_error);
  EXPECT_NO_THROW(t.join());
  set_log_level(saved);
}

}  // namespace
}  // namespace vhostd
