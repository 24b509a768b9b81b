// vhostd runtime: ring placement, which data lcore polls a ring.
//
// Owns the policy alone (a pure function, no runtime state), so it is unit-tested over fake
// topologies. OVS's rule for vhost ports: a ring is best polled by a data lcore on the NUMA
// node of the guest memory holding it (the guest wrote the ring there and its buffers are
// usually there too); an explicit lcore overrides that.
#pragma once

#include <cstddef>
#include <optional>
#include <span>

namespace vhostd {

// One data lcore as the policy sees it.
struct LcoreLoad {
  unsigned lcore_id = 0;
  int node = -1;          // NUMA node of the lcore (of its first CPU); -1 unknown
  std::size_t rings = 0;  // rings it polls now
};

struct Placement {
  std::size_t lcore = 0;    // index into the `lcores` given
  bool cross_node = false;  // the memory's node is known but has no data lcore: fallback
};

// Picks the data lcore for one ring:
//  1. `explicit_lcore` (an lcore id) when given; throws Error if it is not among `lcores`;
//  2. otherwise the least-loaded lcore on `memory_node` (ties: lowest lcore id);
//  3. if `memory_node` is -1 (unknown) or has no data lcore: the least-loaded lcore of all
//     (ties: lowest lcore id), with cross_node set when the node was known (the caller warns).
// Throws Error when `lcores` is empty.
Placement place_ring(std::span<const LcoreLoad> lcores, int memory_node,
                     std::optional<unsigned> explicit_lcore = std::nullopt);

}  // namespace vhostd
