// vhostd runtime: the process's lcores (see runtime.hpp).
#include "vhostd/runtime/runtime.hpp"

#include "vhostd/base/error.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace vhostd {

Runtime::Runtime(const CoreConfig& cores) : cores_(cores) {
  std::vector<unsigned> data = cores_.data_lcores();
  if (data.empty()) throw_error("runtime: no data lcore (give at least two lcores, or --lcores with a data lcore)");
  for (unsigned id : data) {
    pollers_.push_back(std::make_unique<Poller>(id, cores_.lcore(id).cpus, qsbr_));
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

std::size_t Runtime::least_loaded_poller() const noexcept {
  std::size_t best = 0;
  for (std::size_t i = 1; i < pollers_.size(); ++i) {
    if (pollers_[i]->num_rings() < pollers_[best]->num_rings()) best = i;
  }
  return best;
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
