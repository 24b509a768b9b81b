// vhostd runtime: the process's lcores.
//
// A Runtime owns the control lcore (a pinned thread running the ControlLoop that serves every
// daemon's socket) and the data lcores (one Poller each), all placed per a CoreConfig parsed
// from an EAL-style command line. Many daemons (ports) share one Runtime.
#pragma once

#include <memory>
#include <vector>

#include "vhostd/base/quiescence.hpp"
#include "vhostd/runtime/control_loop.hpp"
#include "vhostd/runtime/core_list.hpp"
#include "vhostd/runtime/poller.hpp"

namespace vhostd {

class LcoreThread;

class Runtime {
 public:
  // Starts the control lcore and one poller per data lcore. Throws Error if a CPU cannot be
  // used or the config has no data lcore.
  explicit Runtime(const CoreConfig& cores);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // A small default for tests and samples: main lcore on the first CPU, one data lcore on the
  // last one (the same CPU on a one-CPU machine).
  static CoreConfig default_cores();

  ControlLoop& control() noexcept { return control_; }
  QsbrDomain& qsbr() noexcept { return qsbr_; }
  std::size_t num_pollers() const noexcept { return pollers_.size(); }
  Poller& poller(std::size_t i) noexcept { return *pollers_[i]; }
  // Control lcore only: the poller with the fewest rings right now (ties: the lowest index),
  // where a ring goes when its backend does not place it. Rings of ports that come and go
  // thus stay spread evenly over the data lcores; no running ring is moved.
  std::size_t least_loaded_poller() const noexcept;
  const CoreConfig& cores() const noexcept { return cores_; }

 private:
  CoreConfig cores_;
  QsbrDomain qsbr_;
  ControlLoop control_;
  std::vector<std::unique_ptr<Poller>> pollers_;
  std::unique_ptr<LcoreThread> control_thread_;
};

}  // namespace vhostd
