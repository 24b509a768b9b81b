// vhostd runtime: the process's lcores (see runtime.hpp).
#include "vhostd/runtime/runtime.hpp"

#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace vhostd {

Runtime::Runtime(const CoreConfig& cores, PollerOptions pollers)
    : Runtime(cores, CpuTopology::from_system(), pollers) {}

Runtime::Runtime(const CoreConfig& cores, const CpuTopology& topology, PollerOptions pollers)
    : cores_(cores), topology_(topology) {
  std::vector<unsigned> data = cores_.data_lcores();
  if (data.empty()) throw_error("runtime: no data lcore (give at least two lcores, or --lcores with a data lcore)");
  for (unsigned id : data) {
    const std::vector<unsigned>& cpus = cores_.lcore(id).cpus;
    // An lcore allowed several CPUs counts as on its first CPU's node (CoreConfig keeps them
    // ascending; an lcore spanning nodes is the user's choice).
    const int node = topology_.numa_node_of(cpus.front());
    pollers_.push_back(std::make_unique<Poller>(id, cpus, node, qsbr_, pollers));
    log_debug("lcore ", id, " (cpu ", format_id_list(cpus), "): NUMA node ", node, ", state on ",
              pollers_.back()->state_on_hugepage() ? "a hugepage" : "normal pages");
  }
  const LcoreMapping& main = cores_.lcore(cores_.main_lcore);
  control_thread_ = std::make_unique<LcoreThread>(
      main.lcore_id, main.cpus, [this](std::stop_token) { control_.run(); }, "vhostd-control");
}

Runtime::~Runtime() {
  control_.stop();
  control_thread_.reset();
  pollers_.clear();
}

CoreConfig Runtime::default_cores() {
  CpuTopology topology = CpuTopology::from_system();
  std::vector<unsigned> cpus = topology.cpus();
  if (cpus.empty()) throw_error("runtime: no usable CPU");
  CoreConfig config;
  config.lcores.push_back({0, {cpus.front()}});
  config.lcores.push_back({1, {cpus.back()}});
  config.main_lcore = 0;
  return config;
}

}  // namespace vhostd
