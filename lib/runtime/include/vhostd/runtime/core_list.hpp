// vhostd runtime: the CPU topology (hwloc) and EAL-style core options (-l, --lcores,
// --main-lcore) that decide which lcores exist and which CPUs each one may run on.
//
// An lcore is a vhostd thread slot (DPDK's logical core). With `-l 1,3-4` lcore ids equal CPU
// ids; with `--lcores` an lcore id is independent of the CPUs it is allowed on, and an lcore
// may be allowed a set of CPUs: `--lcores '(0,1)@(2,3)'`. The main lcore runs the control
// path (every vhost-user socket); every other lcore is a data lcore busy-polling vrings.
#pragma once

#include <string>
#include <vector>

namespace vhostd {

struct LcoreMapping {
  unsigned lcore_id = 0;
  std::vector<unsigned> cpus;  // ascending, no duplicates, never empty

  friend bool operator==(const LcoreMapping&, const LcoreMapping&) = default;
};

struct CoreConfig {
  std::vector<LcoreMapping> lcores;  // ascending lcore_id, ids unique
  unsigned main_lcore = 0;

  // Every lcore except the main one, ascending.
  std::vector<unsigned> data_lcores() const;
  // The mapping of lcore `id`; throws Error if there is no such lcore.
  const LcoreMapping& lcore(unsigned id) const;
};

// The machine's CPUs as hwloc sees them. A plain value (the hwloc topology is only used while
// constructing), cheap to copy. CPU numbers are OS indexes (what sched_getcpu() returns).
class CpuTopology {
 public:
  // This machine: existing CPUs = hwloc complete cpuset; usable ("online") CPUs = the
  // topology cpuset (online PUs) intersected with the allowed cpuset (cgroup / affinity).
  static CpuTopology from_system();
  // An exported hwloc XML topology: `path_or_buffer` is an XML document if it starts with
  // '<' (after blanks), otherwise a file path. Used for fake multi-node machines in tests.
  static CpuTopology from_xml(const std::string& path_or_buffer);
  // hwloc's synthetic description, e.g. "node:2 core:2 pu:1" (PUs numbered 0..n-1).
  static CpuTopology from_synthetic(const std::string& description);
  // Built directly from lists (tests that do not need hwloc). Every online cpu must exist;
  // cpu -> NUMA node is given by `numa_nodes[i]` for `cpus[i]` (empty: all on node 0).
  static CpuTopology from_lists(std::vector<unsigned> cpus, std::vector<unsigned> online,
                                std::vector<int> numa_nodes = {});

  bool cpu_exists(unsigned cpu) const;
  bool cpu_online(unsigned cpu) const;
  // Online (usable) CPUs, ascending.
  std::vector<unsigned> cpus() const { return online_; }
  // Existing CPUs including offline / disallowed ones, ascending.
  const std::vector<unsigned>& all_cpus() const { return all_; }
  unsigned num_cpus() const { return static_cast<unsigned>(online_.size()); }
  // OS index of the NUMA node holding `cpu`; 0 on a machine without NUMA information;
  // -1 if the CPU does not exist.
  int numa_node_of(unsigned cpu) const;

 private:
  std::vector<unsigned> all_;     // ascending
  std::vector<unsigned> online_;  // ascending, subset of all_
  std::vector<int> node_of_;      // parallel to all_
};

// Formats a CPU / lcore list compactly: {0,1,2,5} -> "0-2,5"; {} -> "none".
std::string format_id_list(const std::vector<unsigned>& ids);

// Parses the core options out of `args` (argv without the program name):
//   -l LIST | -lLIST           lcore ids == cpu ids; LIST = N | N-M, comma separated
//   --lcores=MAP | --lcores MAP   DPDK map: elements N, N-M, N@CPU, N@(c1,c2-c3), (N1,N2)@CPU,
//                              (N1-N2)@(cpus), N-M@cpus, (N1,N2) (each lcore allowed the set)
//   --main-lcore N | --main-lcore=N
// Choices:
//  * Neither -l nor --lcores: every online CPU becomes an lcore with the same id (DPDK's
//    default of "all detected cores"). Giving both is an error, as is giving one twice.
//  * lcores are kept sorted by id; the default main lcore is the lowest id, i.e. the first
//    lcore of an ascending list (DPDK picks the first enabled lcore id as well).
//  * --main-lcore N with N not among the lcores adds lcore N pinned to CPU N (which must
//    exist and be online), rather than failing as DPDK does: `-l 1 --main-lcore 0` gives a
//    control lcore on CPU 0 and one data lcore on CPU 1.
//  * In --lcores, several lcores may share CPUs (DPDK allows it), but an lcore id named twice
//    and a CPU named twice inside one set are errors; in -l a CPU named twice is an error.
//  * Arguments it does not know are not errors: they are appended to `*rest` in order when
//    `rest` is given, and ignored otherwise.
// Throws Error naming the offending token and the reason.
CoreConfig parse_core_options(const std::vector<std::string>& args, const CpuTopology& topo,
                              std::vector<std::string>* rest = nullptr);

}  // namespace vhostd
