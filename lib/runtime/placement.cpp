// vhostd runtime: ring placement (see placement.hpp).
#include "vhostd/runtime/placement.hpp"

#include <algorithm>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/runtime/core_list.hpp"

namespace vhostd {

namespace {

// Least-loaded lcore among those `accept` takes, ties to the lowest lcore id; -1 if none.
template <typename Accept>
long least_loaded(std::span<const LcoreLoad> lcores, Accept&& accept) {
  long best = -1;
  for (std::size_t i = 0; i < lcores.size(); ++i) {
    if (!accept(lcores[i])) continue;
    if (best < 0) {
      best = static_cast<long>(i);
      continue;
    }
    const LcoreLoad& b = lcores[static_cast<std::size_t>(best)];
    if (lcores[i].rings < b.rings || (lcores[i].rings == b.rings && lcores[i].lcore_id < b.lcore_id)) {
      best = static_cast<long>(i);
    }
  }
  return best;
}

}  // namespace

Placement place_ring(std::span<const LcoreLoad> lcores, int memory_node, std::optional<unsigned> explicit_lcore) {
  if (lcores.empty()) throw_error("ring placement: no data lcore");
  if (explicit_lcore) {
    for (std::size_t i = 0; i < lcores.size(); ++i) {
      if (lcores[i].lcore_id == *explicit_lcore) return Placement{i, false};
    }
    std::vector<unsigned> ids;
    for (const LcoreLoad& l : lcores) ids.push_back(l.lcore_id);
    std::sort(ids.begin(), ids.end());
    throw_error("ring placement: lcore ", *explicit_lcore, " is not a data lcore (data lcores: ",
                format_id_list(ids), ")");
  }
  if (memory_node >= 0) {
    const long local = least_loaded(lcores, [&](const LcoreLoad& l) { return l.node == memory_node; });
    if (local >= 0) return Placement{static_cast<std::size_t>(local), false};
  }
  const long any = least_loaded(lcores, [](const LcoreLoad&) { return true; });
  return Placement{static_cast<std::size_t>(any), memory_node >= 0};
}

}  // namespace vhostd
