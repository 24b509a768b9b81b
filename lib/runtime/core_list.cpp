// vhostd runtime: CPU topology from hwloc and parsing of -l / --lcores / --main-lcore.
#include "vhostd/runtime/core_list.hpp"

#include <hwloc.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <optional>
#include <string_view>

#include "vhostd/base/error.hpp"

namespace vhostd {

// ---------------------------------------------------------------------------------------------
// CoreConfig

std::vector<unsigned> CoreConfig::data_lcores() const {
  std::vector<unsigned> ids;
  for (const LcoreMapping& m : lcores) {
    if (m.lcore_id != main_lcore) ids.push_back(m.lcore_id);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

const LcoreMapping& CoreConfig::lcore(unsigned id) const {
  for (const LcoreMapping& m : lcores) {
    if (m.lcore_id == id) return m;
  }
  std::vector<unsigned> ids;
  for (const LcoreMapping& m : lcores) ids.push_back(m.lcore_id);
  throw_error("lcore ", id, " is not configured (lcores: ", format_id_list(ids), ")");
}

std::string format_id_list(const std::vector<unsigned>& input) {
  std::vector<unsigned> ids = input;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  if (ids.empty()) return "none";
  std::string out;
  std::size_t i = 0;
  while (i < ids.size()) {
    std::size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(ids[i]);
    if (j > i) out += str_cat('-', ids[j]);
    i = j + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// CpuTopology

namespace {

struct TopologyDeleter {
  void operator()(hwloc_topology* t) const noexcept { hwloc_topology_destroy(t); }
};
using TopologyPtr = std::unique_ptr<hwloc_topology, TopologyDeleter>;

std::vector<unsigned> bitmap_ids(hwloc_const_bitmap_t set) {
  std::vector<unsigned> ids;
  if (set == nullptr) return ids;
  if (hwloc_bitmap_weight(set) < 0) throw_error("hwloc cpuset is infinite");
  for (int i = hwloc_bitmap_first(set); i >= 0; i = hwloc_bitmap_next(set, i)) {
    ids.push_back(static_cast<unsigned>(i));
  }
  return ids;
}

// Creates a topology, lets `configure` pick the source (system, XML, synthetic), loads it.
template <typename Configure>
TopologyPtr load_topology(const char* what, Configure&& configure) {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) throw_errno("hwloc_topology_init");
  TopologyPtr topo(raw);
  configure(topo.get());
  if (hwloc_topology_load(topo.get()) != 0) throw_errno("hwloc: cannot load ", what);
  return topo;
}

// Extracts what CpuTopology keeps from a loaded hwloc topology.
CpuTopology topology_from_hwloc(hwloc_topology_t topo) {
  std::vector<unsigned> all = bitmap_ids(hwloc_topology_get_complete_cpuset(topo));

  hwloc_bitmap_t usable = hwloc_bitmap_alloc();
  if (usable == nullptr) throw_error("hwloc_bitmap_alloc failed");
  hwloc_bitmap_and(usable, hwloc_topology_get_topology_cpuset(topo),
                   hwloc_topology_get_allowed_cpuset(topo));
  std::vector<unsigned> online;
  try {
    online = bitmap_ids(usable);
  } catch (...) {
    hwloc_bitmap_free(usable);
    throw;
  }
  hwloc_bitmap_free(usable);

  std::vector<int> nodes(all.size(), 0);
  int num_nodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  for (int n = 0; n < num_nodes; ++n) {
    hwloc_obj_t node = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(n));
    if (node == nullptr) continue;
    // complete_cpuset also holds the node's offline CPUs.
    hwloc_const_bitmap_t set = node->complete_cpuset != nullptr ? node->complete_cpuset
                                                                 : node->cpuset;
    if (set == nullptr) continue;
    for (std::size_t i = 0; i < all.size(); ++i) {
      if (hwloc_bitmap_isset(set, all[i])) nodes[i] = static_cast<int>(node->os_index);
    }
  }
  return CpuTopology::from_lists(std::move(all), std::move(online), std::move(nodes));
}

}  // namespace

CpuTopology CpuTopology::from_system() {
  TopologyPtr topo = load_topology("this machine's topology", [](hwloc_topology_t t) {
    // Keep CPUs outside our cgroup / cpuset visible so they can be reported as "not allowed"
    // rather than "does not exist".
    if (hwloc_topology_set_flags(t, HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED) != 0) {
      throw_errno("hwloc_topology_set_flags");
    }
  });
  return topology_from_hwloc(topo.get());
}

CpuTopology CpuTopology::from_xml(const std::string& path_or_buffer) {
  std::size_t first = path_or_buffer.find_first_not_of(" \t\r\n");
  bool is_buffer = first != std::string::npos && path_or_buffer[first] == '<';
  TopologyPtr topo = load_topology("XML topology", [&](hwloc_topology_t t) {
    int rc = is_buffer
                 ? hwloc_topology_set_xmlbuffer(t, path_or_buffer.data(),
                                                static_cast<int>(path_or_buffer.size() + 1))
                 : hwloc_topology_set_xml(t, path_or_buffer.c_str());
    if (rc != 0) {
      if (is_buffer) throw_errno("hwloc: cannot use XML topology buffer");
      throw_errno("hwloc: cannot use XML topology '", path_or_buffer, "'");
    }
  });
  return topology_from_hwloc(topo.get());
}

CpuTopology CpuTopology::from_synthetic(const std::string& description) {
  TopologyPtr topo = load_topology("synthetic topology", [&](hwloc_topology_t t) {
    if (hwloc_topology_set_synthetic(t, description.c_str()) != 0) {
      throw_errno("hwloc: bad synthetic topology '", description, "'");
    }
  });
  return topology_from_hwloc(topo.get());
}

CpuTopology CpuTopology::from_lists(std::vector<unsigned> cpus, std::vector<unsigned> online,
                                    std::vector<int> numa_nodes) {
  if (!numa_nodes.empty() && numa_nodes.size() != cpus.size()) {
    throw_error("CpuTopology: ", numa_nodes.size(), " NUMA node entries for ", cpus.size(),
                " cpus");
  }
  if (numa_nodes.empty()) numa_nodes.assign(cpus.size(), 0);
  // Sort cpus together with their nodes.
  std::vector<std::pair<unsigned, int>> pairs;
  for (std::size_t i = 0; i < cpus.size(); ++i) pairs.emplace_back(cpus[i], numa_nodes[i]);
  std::sort(pairs.begin(), pairs.end());
  for (std::size_t i = 1; i < pairs.size(); ++i) {
    if (pairs[i].first == pairs[i - 1].first) {
      throw_error("CpuTopology: cpu ", pairs[i].first, " listed twice");
    }
  }
  CpuTopology t;
  for (const auto& [cpu, node] : pairs) {
    t.all_.push_back(cpu);
    t.node_of_.push_back(node);
  }
  std::sort(online.begin(), online.end());
  online.erase(std::unique(online.begin(), online.end()), online.end());
  for (unsigned cpu : online) {
    if (!std::binary_search(t.all_.begin(), t.all_.end(), cpu)) {
      throw_error("CpuTopology: online cpu ", cpu, " is not among the cpus");
    }
  }
  t.online_ = std::move(online);
  return t;
}

bool CpuTopology::cpu_exists(unsigned cpu) const {
  return std::binary_search(all_.begin(), all_.end(), cpu);
}

bool CpuTopology::cpu_online(unsigned cpu) const {
  return std::binary_search(online_.begin(), online_.end(), cpu);
}

int CpuTopology::numa_node_of(unsigned cpu) const {
  auto it = std::lower_bound(all_.begin(), all_.end(), cpu);
  if (it == all_.end() || *it != cpu) return -1;
  return node_of_[static_cast<std::size_t>(it - all_.begin())];
}

// ---------------------------------------------------------------------------------------------
// Core option parsing

namespace {

// Largest lcore / cpu number accepted; keeps typos like "10000000" from allocating tables.
constexpr unsigned kMaxId = 4095;

// Recursive-descent parser over one option value. `what` names the option and its value for
// messages: "--lcores '(0,1)@2'".
class ListParser {
 public:
  ListParser(std::string_view text, std::string what) : text_(text), what_(std::move(what)) {}

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }
  bool accept(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c, const char* context) {
    if (accept(c)) return;
    if (at_end()) fail("expected '", c, "' ", context, " but the value ends");
    fail("expected '", c, "' ", context, " at offset ", pos_, ", found '", peek(), "'");
  }

  template <typename... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw_error("bad ", what_, ": ", std::forward<Parts>(parts)...);
  }

  unsigned number(const char* kind) {
    std::size_t start = pos_;
    while (!at_end() && std::isdigit(static_cast<unsigned char>(peek()))) ++pos_;
    if (pos_ == start) {
      if (at_end()) {
        if (pos_ > 0 && text_[pos_ - 1] == ',') fail("trailing comma");
        fail("expected a ", kind, " number but the value ends");
      }
      if (peek() == ',') fail("empty element at offset ", pos_);
      fail("expected a ", kind, " number at offset ", pos_, ", found '", peek(), "'");
    }
    std::string_view digits = text_.substr(start, pos_ - start);
    if (digits.size() > 6) fail(kind, " number '", digits, "' is too large (max ", kMaxId, ")");
    unsigned value = 0;
    for (char d : digits) value = value * 10 + static_cast<unsigned>(d - '0');
    if (value > kMaxId) fail(kind, " number ", value, " is too large (max ", kMaxId, ")");
    return value;
  }

  // N or N-M, appended to `out` in ascending order.
  void range(const char* kind, std::vector<unsigned>& out) {
    unsigned lo = number(kind);
    unsigned hi = lo;
    if (accept('-')) {
      hi = number(kind);
      if (hi < lo) fail("reversed range ", lo, "-", hi, " (write ", hi, "-", lo, ")");
    }
    for (unsigned v = lo; v <= hi; ++v) out.push_back(v);
  }

  // range (',' range)* ; stops at `terminator` (not consumed) or at the end.
  std::vector<unsigned> list(const char* kind, char terminator) {
    std::vector<unsigned> out;
    range(kind, out);
    while (accept(',')) {
      if (terminator != '\0' && peek() == terminator) fail("trailing comma before '", terminator, "'");
      range(kind, out);
    }
    return out;
  }

  // '(' list ')' or a single number.
  std::vector<unsigned> group_or_number(const char* kind, bool* was_group) {
    if (accept('(')) {
      if (peek() == ')') fail("empty ", kind, " set '()'");
      std::vector<unsigned> out = list(kind, ')');
      expect(')', "to close the set");
      *was_group = true;
      return out;
    }
    *was_group = false;
    return {number(kind)};
  }

  // Fails if `ids` holds a value twice.
  void unique(std::vector<unsigned>& ids, const char* kind) const {
    std::vector<unsigned> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    if (dup != sorted.end()) fail(kind, " ", *dup, " named twice");
    ids = std::move(sorted);
  }

  std::size_t pos() const { return pos_; }

 private:
  std::string_view text_;
  std::string what_;
  std::size_t pos_ = 0;
};

void check_cpu(const CpuTopology& topo, unsigned cpu, const std::string& what) {
  if (!topo.cpu_exists(cpu)) {
    throw_error("bad ", what, ": cpu ", cpu, " does not exist (this machine has cpus ",
                format_id_list(topo.all_cpus()), ")");
  }
  if (!topo.cpu_online(cpu)) {
    throw_error("bad ", what, ": cpu ", cpu, " is offline or not allowed (usable cpus: ",
                format_id_list(topo.cpus()), ")");
  }
}

std::vector<LcoreMapping> parse_l(const std::string& value, const CpuTopology& topo) {
  std::string what = str_cat("-l '", value, "'");
  ListParser p(value, what);
  if (value.empty()) p.fail("empty core list");
  std::vector<unsigned> cpus = p.list("cpu", '\0');
  if (!p.at_end()) {
    p.fail("unexpected '", p.peek(), "' at offset ", p.pos(), " (expected ',' or '-')");
  }
  p.unique(cpus, "cpu");
  std::vector<LcoreMapping> out;
  for (unsigned cpu : cpus) {
    check_cpu(topo, cpu, what);
    out.push_back(LcoreMapping{cpu, {cpu}});
  }
  return out;
}

std::vector<LcoreMapping> parse_lcores(const std::string& value, const CpuTopology& topo) {
  std::string what = str_cat("--lcores '", value, "'");
  ListParser p(value, what);
  if (value.empty()) p.fail("empty lcore map");
  std::vector<LcoreMapping> out;
  std::vector<unsigned> seen_ids;
  do {
    if (p.at_end()) p.fail("trailing comma");
    if (p.peek() == ',') p.fail("empty element at offset ", p.pos());
    // The lcore set: (list) or N or N-M.
    std::vector<unsigned> ids;
    bool lgroup = false;
    if (p.accept('(')) {
      if (p.peek() == ')') p.fail("empty lcore set '()'");
      ids = p.list("lcore", ')');
      p.expect(')', "to close the lcore set");
      lgroup = true;
    } else {
      p.range("lcore", ids);
    }
    std::vector<unsigned> sorted_ids = ids;
    p.unique(sorted_ids, "lcore");
    // The cpu set: '@' then (list) or N. Without '@' DPDK uses the lcore ids as cpus: N-M
    // pins each lcore to its own cpu, a (group) allows each lcore the whole group.
    std::optional<std::vector<unsigned>> cpus;
    if (p.accept('@')) {
      bool cgroup = false;
      std::vector<unsigned> c = p.group_or_number("cpu", &cgroup);
      p.unique(c, "cpu");
      cpus = std::move(c);
    }
    if (!p.at_end() && p.peek() != ',') {
      p.fail("unexpected '", p.peek(), "' at offset ", p.pos(), " (expected ',', '-' or '@')");
    }
    for (unsigned id : sorted_ids) {
      if (std::find(seen_ids.begin(), seen_ids.end(), id) != seen_ids.end()) {
        p.fail("lcore ", id, " named twice");
      }
      seen_ids.push_back(id);
      LcoreMapping m{id, {}};
      if (cpus) {
        m.cpus = *cpus;
      } else if (lgroup) {
        m.cpus = sorted_ids;
      } else {
        m.cpus = {id};
      }
      for (unsigned cpu : m.cpus) check_cpu(topo, cpu, what);
      out.push_back(std::move(m));
    }
  } while (p.accept(','));
  std::sort(out.begin(), out.end(),
            [](const LcoreMapping& a, const LcoreMapping& b) { return a.lcore_id < b.lcore_id; });
  return out;
}

unsigned parse_main_lcore(const std::string& value) {
  std::string what = str_cat("--main-lcore '", value, "'");
  ListParser p(value, what);
  if (value.empty()) p.fail("empty value");
  unsigned id = p.number("lcore");
  if (!p.at_end()) p.fail("unexpected '", p.peek(), "' at offset ", p.pos());
  return id;
}

}  // namespace

CoreConfig parse_core_options(const std::vector<std::string>& args, const CpuTopology& topo,
                              std::vector<std::string>* rest) {
  std::optional<std::string> l_value;
  std::optional<std::string> lcores_value;
  std::optional<std::string> main_value;

  auto set_once = [](std::optional<std::string>& slot, const char* name, std::string value) {
    if (slot) throw_error(name, " given twice ('", *slot, "' and '", value, "')");
    slot = std::move(value);
  };
  auto next_value = [&](std::size_t& i, const char* name) -> std::string {
    if (i + 1 >= args.size()) throw_error(name, " needs a value");
    return args[++i];
  };

  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-l") {
      set_once(l_value, "-l", next_value(i, "-l"));
    } else if (a.size() > 2 && a.starts_with("-l")) {
      set_once(l_value, "-l", a.substr(2));
    } else if (a == "--lcores") {
      set_once(lcores_value, "--lcores", next_value(i, "--lcores"));
    } else if (a.starts_with("--lcores=")) {
      set_once(lcores_value, "--lcores", a.substr(9));
    } else if (a == "--main-lcore") {
      set_once(main_value, "--main-lcore", next_value(i, "--main-lcore"));
    } else if (a.starts_with("--main-lcore=")) {
      set_once(main_value, "--main-lcore", a.substr(13));
    } else if (rest != nullptr) {
      rest->push_back(a);
    }
  }

  if (l_value && lcores_value) {
    throw_error("-l '", *l_value, "' and --lcores '", *lcores_value,
                "' cannot be used together (pick one)");
  }

  CoreConfig config;
  if (l_value) {
    config.lcores = parse_l(*l_value, topo);
  } else if (lcores_value) {
    config.lcores = parse_lcores(*lcores_value, topo);
  } else {
    for (unsigned cpu : topo.cpus()) config.lcores.push_back(LcoreMapping{cpu, {cpu}});
    if (config.lcores.empty()) throw_error("no usable cpus on this machine");
  }

  if (main_value) {
    unsigned id = parse_main_lcore(*main_value);
    config.main_lcore = id;
    bool present = std::any_of(config.lcores.begin(), config.lcores.end(),
                               [id](const LcoreMapping& m) { return m.lcore_id == id; });
    if (!present) {
      // Our choice (DPDK would fail): add the main lcore, pinned to the cpu of the same id.
      check_cpu(topo, id, str_cat("--main-lcore '", *main_value, "' (lcore ", id,
                                  " is not in the core list, so it would run on cpu ", id, ")"));
      config.lcores.push_back(LcoreMapping{id, {id}});
      std::sort(config.lcores.begin(), config.lcores.end(),
                [](const LcoreMapping& a, const LcoreMapping& b) { return a.lcore_id < b.lcore_id; });
    }
  } else {
    config.main_lcore = config.lcores.front().lcore_id;
  }
  return config;
}

}  // namespace vhostd
