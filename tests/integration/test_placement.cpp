// Integration: ring placement by the guest memory's NUMA node, on a fake two-node machine.
//
// The Runtime gets the hwloc synthetic topology "node:2 core:1 pu:1" (cpu 0 on node 0, cpu 1
// on node 1) and three lcores: 0 (control) and data lcore 1 on cpu 0, data lcore 2 on cpu 1,
// so lcore 1 is "on node 0" and lcore 2 "on node 1" while both CPUs really exist here. Each
// daemon's memory node probe says which node the guest's memory is on; the rings must be
// polled by the lcore on that node (ring_reports()), serve traffic there, and an explicit lcore
// overrides the node.
#include <numa.h>

#include <chrono>
#include <memory>
#include <set>

#include "harness.hpp"
#include "vhostd/memory/numa.hpp"

namespace vhostd::test {
namespace {

class PlacementTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vhostd-place-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    const CpuTopology topology = CpuTopology::from_synthetic("node:2 core:1 pu:1");
    ASSERT_EQ(topology.numa_node_of(0), 0);
    ASSERT_EQ(topology.numa_node_of(1), 1);
    CoreConfig cores;
    cores.lcores = {{0, {0}}, {1, {0}}, {2, {1}}};
    cores.main_lcore = 0;
    runtime_ = std::make_unique<Runtime>(cores, topology);
    ASSERT_EQ(runtime_->num_pollers(), 2u);
    ASSERT_EQ(runtime_->poller(0).numa_node(), 0);
    ASSERT_EQ(runtime_->poller(1).numa_node(), 1);
  }

  void TearDown() override {
    for (auto& d : daemons_) {
      d->stop();
      d->wait();
    }
    daemons_.clear();
    runtime_.reset();
    for (std::size_t i = 0; i < paths_.size(); ++i) ::unlink(paths_[i].c_str());
    ::rmdir(dir_.c_str());
  }

  // A listening echo daemon whose guest memory reads as on `memory_node` (none: the real probe).
  Daemon& start_daemon(std::optional<int> memory_node) {
    const std::string name = "echo" + std::to_string(daemons_.size());
    paths_.push_back(dir_ + "/" + name + ".sock");
    daemons_.push_back(std::make_unique<Daemon>(name, std::make_shared<EchoBackend>(), *runtime_));
    if (memory_node) {
      daemons_.back()->set_memory_node_probe([node = *memory_node](const MappedRegion&) { return node; });
    }
    daemons_.back()->start_server(paths_.back());
    return *daemons_.back();
  }

  // Connects, sets the device up and sends one request through each ring (starting it).
  TestFrontend connect_and_serve(Daemon& daemon, std::size_t index) {
    TestFrontend frontend = TestFrontend::connect(paths_.at(index));
    EXPECT_TRUE(wait_until([&] { return daemon.connected(); }));
    frontend.setup_device();
    for (std::size_t ring = 0; ring < 2; ++ring) echo_one(frontend, ring, 100, static_cast<std::uint32_t>(ring));
    return frontend;
  }

  std::string dir_;
  std::vector<std::string> paths_;
  std::unique_ptr<Runtime> runtime_;
  std::vector<std::unique_ptr<Daemon>> daemons_;
};

TEST_F(PlacementTest, GuestMemoryOnNodeOneIsPolledByTheNodeOneLcore) {
  Daemon& daemon = start_daemon(1);
  TestFrontend frontend = connect_and_serve(daemon, 0);
  const auto reports = daemon.ring_reports();
  ASSERT_EQ(reports.size(), 2u);
  for (const RingReport& r : reports) {
    SCOPED_TRACE("ring " + std::to_string(r.index));
    EXPECT_TRUE(r.polled);
    EXPECT_EQ(r.memory_node, 1);
    EXPECT_EQ(r.lcore, 2);
    EXPECT_EQ(r.lcore_node, 1);
    EXPECT_GE(r.requests, 1u);
  }
  EXPECT_EQ(runtime_->poller(1).num_rings(), 2u);
  EXPECT_EQ(runtime_->poller(0).num_rings(), 0u);
  frontend.close();
}

TEST_F(PlacementTest, GuestMemoryOnNodeZeroIsPolledByTheNodeZeroLcore) {
  Daemon& daemon = start_daemon(0);
  TestFrontend frontend = connect_and_serve(daemon, 0);
  for (const RingReport& r : daemon.ring_reports()) {
    SCOPED_TRACE("ring " + std::to_string(r.index));
    EXPECT_EQ(r.memory_node, 0);
    EXPECT_EQ(r.lcore, 1);
    EXPECT_EQ(r.lcore_node, 0);
  }
  EXPECT_EQ(runtime_->poller(0).num_rings(), 2u);
  frontend.close();
}

TEST_F(PlacementTest, TwoGuestsOnTwoNodesEachServedFromTheirOwnNode) {
  Daemon& near0 = start_daemon(0);
  Daemon& near1 = start_daemon(1);
  TestFrontend f0 = connect_and_serve(near0, 0);
  TestFrontend f1 = connect_and_serve(near1, 1);
  for (const RingReport& r : near0.ring_reports()) EXPECT_EQ(r.lcore, 1) << "node-0 guest, ring " << r.index;
  for (const RingReport& r : near1.ring_reports()) EXPECT_EQ(r.lcore, 2) << "node-1 guest, ring " << r.index;
  // Both keep serving from there.
  for (std::size_t ring = 0; ring < 2; ++ring) {
    echo_one(f0, ring, 2000, 7);
    echo_one(f1, ring, 2000, 8);
  }
  f0.close();
  f1.close();
}

TEST_F(PlacementTest, ExplicitLcoreOverridesTheMemoryNode) {
  Daemon& daemon = start_daemon(1);
  EXPECT_THROW(daemon.set_lcore(0), Error) << "the control lcore is not a data lcore";
  EXPECT_THROW(daemon.set_lcore(3), Error) << "no such lcore";
  daemon.set_lcore(1);
  TestFrontend frontend = connect_and_serve(daemon, 0);
  for (const RingReport& r : daemon.ring_reports()) {
    SCOPED_TRACE("ring " + std::to_string(r.index));
    EXPECT_EQ(r.memory_node, 1);
    EXPECT_EQ(r.lcore, 1) << "the explicit lcore, although the memory is on node 1";
    EXPECT_EQ(r.lcore_node, 0);
  }
  frontend.close();
}

TEST_F(PlacementTest, NodeWithoutDataLcoreSpreadsOverTheLeastLoaded) {
  Daemon& daemon = start_daemon(3);  // a node no data lcore is on
  TestFrontend frontend = connect_and_serve(daemon, 0);
  std::set<int> lcores;
  for (const RingReport& r : daemon.ring_reports()) {
    EXPECT_TRUE(r.polled);
    EXPECT_EQ(r.memory_node, 3);
    lcores.insert(r.lcore);
  }
  EXPECT_EQ(lcores, (std::set<int>{1, 2})) << "the second ring goes to the lcore without one";
  frontend.close();
}

TEST_F(PlacementTest, RealProbeReportsTheGuestMemorysNode) {
  Daemon& daemon = start_daemon(std::nullopt);
  TestFrontend frontend = connect_and_serve(daemon, 0);
  for (const RingReport& r : daemon.ring_reports()) {
    SCOPED_TRACE("ring " + std::to_string(r.index));
    if (numa_supported()) {
      ASSERT_GE(r.memory_node, 0) << "the memfd guest memory's node was not found";
      EXPECT_LE(r.memory_node, ::numa_max_node());
    } else {
      EXPECT_EQ(r.memory_node, 0);
    }
    // Guest memory on real node 0 (this machine) sits with fake node 0's lcore; on a bigger
    // machine the fake topology may have no lcore on the real node: any lcore then.
    if (r.memory_node == 0) {
      EXPECT_EQ(r.lcore, 1);
    } else if (r.memory_node == 1) {
      EXPECT_EQ(r.lcore, 2);
    }
  }
  frontend.close();
}

}  // namespace
}  // namespace vhostd::test
