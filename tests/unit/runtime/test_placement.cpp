// Unit tests for vhostd/runtime/placement.hpp over a fake two-node machine (hwloc synthetic
// topology "node:2 core:2 pu:1": cpus 0-1 on node 0, cpus 2-3 on node 1), with the lcores'
// nodes taken from the topology as Runtime does: the memory's node picks the lcore, load
// balances within a node, fallback when the node has no data lcore, explicit override.
#include "vhostd/runtime/placement.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/runtime/core_list.hpp"

namespace vhostd {
namespace {

using ::testing::HasSubstr;

// `-l 0-3 --main-lcore 0` on the fake machine: data lcores 1 (node 0), 2 and 3 (node 1).
class TwoNodePlacement : public ::testing::Test {
 protected:
  void SetUp() override {
    topology_ = CpuTopology::from_synthetic("node:2 core:2 pu:1");
    cores_ = parse_core_options({"-l", "0-3", "--main-lcore", "0"}, topology_);
    for (unsigned id : cores_.data_lcores()) {
      loads_.push_back({id, topology_.numa_node_of(cores_.lcore(id).cpus.front()), 0});
    }
    ASSERT_EQ(loads_.size(), 3u);
    ASSERT_EQ(loads_[0].node, 0);
    ASSERT_EQ(loads_[1].node, 1);
    ASSERT_EQ(loads_[2].node, 1);
  }

  // Places a ring and counts it on the chosen lcore, as the daemon's add() does; returns the id.
  unsigned place_and_count(int memory_node) {
    const Placement p = place_ring(loads_, memory_node);
    ++loads_.at(p.lcore).rings;
    return loads_[p.lcore].lcore_id;
  }

  CpuTopology topology_;
  CoreConfig cores_;
  std::vector<LcoreLoad> loads_;
};

TEST_F(TwoNodePlacement, MemoryOnNodeOneGoesToAnLcoreOnNodeOne) {
  const Placement p = place_ring(loads_, 1);
  EXPECT_EQ(loads_.at(p.lcore).lcore_id, 2u) << "node 1, lowest id on a tie";
  EXPECT_FALSE(p.cross_node);
  const Placement q = place_ring(loads_, 0);
  EXPECT_EQ(loads_.at(q.lcore).lcore_id, 1u);
  EXPECT_FALSE(q.cross_node);
}

TEST_F(TwoNodePlacement, LocalNodeWinsOverALessLoadedRemoteLcore) {
  loads_[1].rings = 5;  // lcore 2
  loads_[2].rings = 7;  // lcore 3
  // lcore 1 (node 0) is idle, but the memory is on node 1.
  EXPECT_EQ(loads_.at(place_ring(loads_, 1).lcore).lcore_id, 2u);
}

TEST_F(TwoNodePlacement, BalancesWithinTheNode) {
  loads_[1].rings = 3;  // lcore 2
  loads_[2].rings = 1;  // lcore 3
  EXPECT_EQ(loads_.at(place_ring(loads_, 1).lcore).lcore_id, 3u);
  // Successive rings of node-1 memory alternate over lcores 2 and 3; node 0's lcore gets none.
  loads_[1].rings = loads_[2].rings = 0;
  std::vector<unsigned> chosen;
  for (int i = 0; i < 4; ++i) chosen.push_back(place_and_count(1));
  EXPECT_EQ(chosen, (std::vector<unsigned>{2, 3, 2, 3}));
  EXPECT_EQ(loads_[0].rings, 0u);
  EXPECT_EQ(place_and_count(0), 1u);
}

TEST_F(TwoNodePlacement, TiesGoToTheLowestLcoreIdWhateverTheOrder) {
  std::vector<LcoreLoad> reversed(loads_.rbegin(), loads_.rend());  // 3, 2, 1
  EXPECT_EQ(reversed.at(place_ring(reversed, 1).lcore).lcore_id, 2u);
  EXPECT_EQ(reversed.at(place_ring(reversed, -1).lcore).lcore_id, 1u);
}

TEST_F(TwoNodePlacement, NodeWithoutDataLcoreFallsBackToTheLeastLoadedAndSaysSo) {
  // `-l 0,1 --lcores`-like: only node 0 has a data lcore.
  std::vector<LcoreLoad> node0_only{{1, 0, 4}, {5, 0, 2}};
  const Placement p = place_ring(node0_only, 1);
  EXPECT_EQ(node0_only.at(p.lcore).lcore_id, 5u);
  EXPECT_TRUE(p.cross_node);
  // A node the machine does not have at all: same.
  loads_[0].rings = 1;
  const Placement q = place_ring(loads_, 7);
  EXPECT_EQ(loads_.at(q.lcore).lcore_id, 2u);
  EXPECT_TRUE(q.cross_node);
}

TEST_F(TwoNodePlacement, UnknownMemoryNodeTakesTheLeastLoadedWithoutWarning) {
  loads_[0].rings = 2;
  loads_[1].rings = 1;
  loads_[2].rings = 1;
  const Placement p = place_ring(loads_, -1);
  EXPECT_EQ(loads_.at(p.lcore).lcore_id, 2u);
  EXPECT_FALSE(p.cross_node);
}

TEST_F(TwoNodePlacement, ExplicitLcoreOverridesNodeAndLoad) {
  loads_[0].rings = 9;
  const Placement p = place_ring(loads_, 1, 1u);
  EXPECT_EQ(loads_.at(p.lcore).lcore_id, 1u);
  EXPECT_FALSE(p.cross_node);
  EXPECT_EQ(loads_.at(place_ring(loads_, -1, 3u).lcore).lcore_id, 3u);
}

TEST_F(TwoNodePlacement, ExplicitLcoreThatIsNotADataLcoreIsAnError) {
  for (unsigned bad : {0u /* the main lcore */, 4u, 99u}) {
    try {
      place_ring(loads_, 1, bad);
      ADD_FAILURE() << "lcore " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("lcore " + std::to_string(bad) + " is not a data lcore"));
      EXPECT_THAT(e.what(), HasSubstr("data lcores: 1-3"));
    }
  }
}

TEST(Placement, NoDataLcoreIsAnError) {
  EXPECT_THROW(place_ring(std::vector<LcoreLoad>{}, 0), Error);
}

}  // namespace
}  // namespace vhostd
