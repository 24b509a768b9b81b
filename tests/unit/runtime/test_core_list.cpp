// Unit tests for vhostd/runtime/core_list.hpp: CpuTopology (lists, hwloc XML, synthetic,
// this machine) and parse_core_options (-l, --lcores, --main-lcore, errors).
#include "vhostd/runtime/core_list.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "vhostd/base/error.hpp"

namespace vhostd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A two-CPU machine (like the CI box).
CpuTopology two_cpus() { return CpuTopology::from_lists({0, 1}, {0, 1}); }
// Eight CPUs, cpu 6 offline.
CpuTopology eight_cpus() {
  return CpuTopology::from_lists({0, 1, 2, 3, 4, 5, 6, 7}, {0, 1, 2, 3, 4, 5, 7});
}

CoreConfig parse(std::vector<std::string> args, const CpuTopology& topo) {
  return parse_core_options(args, topo);
}

// Returns the Error message of parsing `args`; fails the test if it does not throw.
std::string parse_error(std::vector<std::string> args, const CpuTopology& topo) {
  try {
    parse_core_options(args, topo);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for " << ::testing::PrintToString(args);
  return {};
}

LcoreMapping m(unsigned id, std::vector<unsigned> cpus) { return LcoreMapping{id, std::move(cpus)}; }

// ---- format_id_list -------------------------------------------------------------------------

TEST(FormatIdList, CompactsRanges) {
  EXPECT_EQ(format_id_list({}), "none");
  EXPECT_EQ(format_id_list({3}), "3");
  EXPECT_EQ(format_id_list({0, 1}), "0-1");
  EXPECT_EQ(format_id_list({5, 0, 1, 2, 7, 8}), "0-2,5,7-8");
}

// ---- -l -------------------------------------------------------------------------------------

TEST(ParseCoreOptions, DashLSeparateValue) {
  CoreConfig c = parse({"-l", "1,3-4"}, eight_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(1, {1}), m(3, {3}), m(4, {4})));
  EXPECT_EQ(c.main_lcore, 1u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(3u, 4u));
}

TEST(ParseCoreOptions, DashLAttachedValue) {
  CoreConfig c = parse({"-l0-1"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0}), m(1, {1})));
  EXPECT_EQ(c.main_lcore, 0u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(1u));
}

TEST(ParseCoreOptions, DashLSingleCpuHasNoDataLcores) {
  CoreConfig c = parse({"-l", "1"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(1, {1})));
  EXPECT_EQ(c.main_lcore, 1u);
  EXPECT_TRUE(c.data_lcores().empty());
}

TEST(ParseCoreOptions, DashLUnorderedListIsSortedAndMainIsLowest) {
  CoreConfig c = parse({"-l", "4,2,0"}, eight_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0}), m(2, {2}), m(4, {4})));
  EXPECT_EQ(c.main_lcore, 0u);
}

TEST(ParseCoreOptions, LcoreLookup) {
  CoreConfig c = parse({"-l", "1,3"}, eight_cpus());
  EXPECT_EQ(c.lcore(3), m(3, {3}));
  try {
    c.lcore(2);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("lcore 2 is not configured"));
    EXPECT_THAT(e.what(), HasSubstr("1,3"));
  }
}

// ---- --lcores -------------------------------------------------------------------------------

TEST(ParseCoreOptions, LcoresPlainNumbersAndRanges) {
  CoreConfig c = parse({"--lcores=0,2-4"}, eight_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0}), m(2, {2}), m(3, {3}), m(4, {4})));
}

TEST(ParseCoreOptions, LcoresSeparateValue) {
  CoreConfig c = parse({"--lcores", "1"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(1, {1})));
}

TEST(ParseCoreOptions, LcoresAtSingleCpu) {
  CoreConfig c = parse({"--lcores=0@1,5@0"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {1}), m(5, {0})));
  EXPECT_EQ(c.main_lcore, 0u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(5u));
}

TEST(ParseCoreOptions, LcoresAtCpuSet) {
  CoreConfig c = parse({"--lcores=3@(1,4-5)"}, eight_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(3, {1, 4, 5})));
}

TEST(ParseCoreOptions, LcoreGroupAtCpu) {
  CoreConfig c = parse({"--lcores=(10,11)@1"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(10, {1}), m(11, {1})));
}

TEST(ParseCoreOptions, LcoreGroupRangeAtCpuSet) {
  CoreConfig c = parse({"--lcores=(0-2)@(0,1)"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0, 1}), m(1, {0, 1}), m(2, {0, 1})));
}

TEST(ParseCoreOptions, LcoreGroupMixedAtCpuSet) {
  CoreConfig c = parse({"--lcores=(0,1)@(2,3)"}, eight_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {2, 3}), m(1, {2, 3})));
}

TEST(ParseCoreOptions, LcoreRangeAtCpu) {
  CoreConfig c = parse({"--lcores=4-5@1"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(4, {1}), m(5, {1})));
}

TEST(ParseCoreOptions, LcoreGroupWithoutAtAllowsWholeGroup) {
  // DPDK: without '@' a (group) is its own cpu set; N-M pins each lcore to its own cpu.
  CoreConfig c = parse({"--lcores=(0,1),3-4"}, eight_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0, 1}), m(1, {0, 1}), m(3, {3}), m(4, {4})));
}

TEST(ParseCoreOptions, LcoresMixedElements) {
  CoreConfig c = parse({"--lcores", "7@0,(1,2)@(0-1),4-5@1,9"}, CpuTopology::from_lists(
      {0, 1, 9}, {0, 1, 9}));
  EXPECT_THAT(c.lcores, ElementsAre(m(1, {0, 1}), m(2, {0, 1}), m(4, {1}), m(5, {1}),
                                    m(7, {0}), m(9, {9})));
  EXPECT_EQ(c.main_lcore, 1u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(2u, 4u, 5u, 7u, 9u));
}

TEST(ParseCoreOptions, LcoresMayShareCpus) {
  CoreConfig c = parse({"--lcores=0@0,1@0"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0}), m(1, {0})));
}

// ---- --main-lcore and defaults --------------------------------------------------------------

TEST(ParseCoreOptions, MainLcoreExplicitInList) {
  CoreConfig c = parse({"-l", "0-1", "--main-lcore", "1"}, two_cpus());
  EXPECT_EQ(c.main_lcore, 1u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(0u));
}

TEST(ParseCoreOptions, MainLcoreEqualsForm) {
  CoreConfig c = parse({"--main-lcore=4", "--lcores=3-4"}, eight_cpus());
  EXPECT_EQ(c.main_lcore, 4u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(3u));
}

TEST(ParseCoreOptions, MainLcoreOutsideListIsAddedOnSameCpu) {
  CoreConfig c = parse({"-l", "1", "--main-lcore", "0"}, two_cpus());
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0}), m(1, {1})));
  EXPECT_EQ(c.main_lcore, 0u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(1u));
}

TEST(ParseCoreOptions, MainLcoreOutsideListMustBeAUsableCpu) {
  std::string msg = parse_error({"-l", "1", "--main-lcore", "7"}, two_cpus());
  EXPECT_THAT(msg, HasSubstr("--main-lcore '7'"));
  EXPECT_THAT(msg, HasSubstr("cpu 7 does not exist (this machine has cpus 0-1)"));
}

TEST(ParseCoreOptions, NoCoreOptionsUsesEveryOnlineCpu) {
  CoreConfig c = parse({}, eight_cpus());
  ASSERT_EQ(c.lcores.size(), 7u);
  EXPECT_EQ(c.lcores.back(), m(7, {7}));
  EXPECT_EQ(c.main_lcore, 0u);
  EXPECT_THAT(c.data_lcores(), ElementsAre(1u, 2u, 3u, 4u, 5u, 7u));
}

TEST(ParseCoreOptions, UnknownArgumentsAreReturnedInOrder) {
  std::vector<std::string> rest;
  CoreConfig c = parse_core_options(
      {"--socket", "/tmp/x.sock", "-l", "1", "-v", "--main-lcore=1", "--lcores-ish"},
      two_cpus(), &rest);
  EXPECT_THAT(c.lcores, ElementsAre(m(1, {1})));
  EXPECT_THAT(rest, ElementsAre("--socket", "/tmp/x.sock", "-v", "--lcores-ish"));
}

// ---- errors ---------------------------------------------------------------------------------

TEST(ParseCoreOptionsErrors, CpuDoesNotExist) {
  std::string msg = parse_error({"-l", "0,7"}, two_cpus());
  EXPECT_THAT(msg, HasSubstr("-l '0,7'"));
  EXPECT_THAT(msg, HasSubstr("cpu 7 does not exist (this machine has cpus 0-1)"));
}

TEST(ParseCoreOptionsErrors, CpuDoesNotExistInLcoresCpuSet) {
  std::string msg = parse_error({"--lcores=0@(0,2)"}, two_cpus());
  EXPECT_THAT(msg, HasSubstr("--lcores '0@(0,2)'"));
  EXPECT_THAT(msg, HasSubstr("cpu 2 does not exist (this machine has cpus 0-1)"));
}

TEST(ParseCoreOptionsErrors, CpuOffline) {
  std::string msg = parse_error({"-l", "5-6"}, eight_cpus());
  EXPECT_THAT(msg, HasSubstr("cpu 6 is offline or not allowed"));
  EXPECT_THAT(msg, HasSubstr("usable cpus: 0-5,7"));
  msg = parse_error({"--lcores=1@6"}, eight_cpus());
  EXPECT_THAT(msg, HasSubstr("cpu 6 is offline"));
}

TEST(ParseCoreOptionsErrors, CpuNamedTwiceInDashL) {
  EXPECT_THAT(parse_error({"-l", "0,1,0"}, two_cpus()), HasSubstr("cpu 0 named twice"));
  EXPECT_THAT(parse_error({"-l", "0-1,1"}, two_cpus()), HasSubstr("cpu 1 named twice"));
}

TEST(ParseCoreOptionsErrors, LcoreNamedTwice) {
  std::string msg = parse_error({"--lcores=0@1,0@0"}, two_cpus());
  EXPECT_THAT(msg, HasSubstr("--lcores '0@1,0@0'"));
  EXPECT_THAT(msg, HasSubstr("lcore 0 named twice"));
  EXPECT_THAT(parse_error({"--lcores=(0,1)@0,1-2@1"}, two_cpus()),
              HasSubstr("lcore 1 named twice"));
  EXPECT_THAT(parse_error({"--lcores=(1,1)@0"}, two_cpus()), HasSubstr("lcore 1 named twice"));
}

TEST(ParseCoreOptionsErrors, CpuNamedTwiceInOneSet) {
  EXPECT_THAT(parse_error({"--lcores=0@(1,0-1)"}, two_cpus()), HasSubstr("cpu 1 named twice"));
}

TEST(ParseCoreOptionsErrors, TrailingComma) {
  EXPECT_THAT(parse_error({"-l", "0,1,"}, two_cpus()), HasSubstr("trailing comma"));
  EXPECT_THAT(parse_error({"--lcores=0,1,"}, two_cpus()), HasSubstr("trailing comma"));
  EXPECT_THAT(parse_error({"--lcores=0@(0,1,)"}, two_cpus()), HasSubstr("trailing comma"));
}

TEST(ParseCoreOptionsErrors, EmptyElement) {
  EXPECT_THAT(parse_error({"-l", "0,,1"}, two_cpus()), HasSubstr("empty element"));
  EXPECT_THAT(parse_error({"--lcores=0,,1"}, two_cpus()), HasSubstr("empty element"));
  EXPECT_THAT(parse_error({"--lcores=,0"}, two_cpus()), HasSubstr("empty element"));
}

TEST(ParseCoreOptionsErrors, ReversedRange) {
  std::string msg = parse_error({"-l", "3-1"}, eight_cpus());
  EXPECT_THAT(msg, HasSubstr("-l '3-1'"));
  EXPECT_THAT(msg, HasSubstr("reversed range 3-1"));
  EXPECT_THAT(parse_error({"--lcores=(3-1)@0"}, eight_cpus()), HasSubstr("reversed range 3-1"));
  EXPECT_THAT(parse_error({"--lcores=0@(5-4)"}, eight_cpus()), HasSubstr("reversed range 5-4"));
}

TEST(ParseCoreOptionsErrors, Letters) {
  std::string msg = parse_error({"-l", "1,a"}, two_cpus());
  EXPECT_THAT(msg, HasSubstr("-l '1,a'"));
  EXPECT_THAT(msg, HasSubstr("found 'a'"));
  EXPECT_THAT(parse_error({"-lx"}, two_cpus()), HasSubstr("found 'x'"));
  EXPECT_THAT(parse_error({"-l", "1x"}, two_cpus()), HasSubstr("unexpected 'x'"));
  EXPECT_THAT(parse_error({"--lcores=0@x"}, two_cpus()), HasSubstr("found 'x'"));
  EXPECT_THAT(parse_error({"--lcores=0#1"}, two_cpus()), HasSubstr("unexpected '#'"));
  EXPECT_THAT(parse_error({"--lcores=-1"}, two_cpus()), HasSubstr("found '-'"));
}

TEST(ParseCoreOptionsErrors, Empty) {
  EXPECT_THAT(parse_error({"-l", ""}, two_cpus()), HasSubstr("empty core list"));
  EXPECT_THAT(parse_error({"--lcores="}, two_cpus()), HasSubstr("empty lcore map"));
  EXPECT_THAT(parse_error({"--lcores=()@0"}, two_cpus()), HasSubstr("empty lcore set"));
  EXPECT_THAT(parse_error({"--lcores=0@()"}, two_cpus()), HasSubstr("empty cpu set"));
  EXPECT_THAT(parse_error({"--main-lcore="}, two_cpus()), HasSubstr("--main-lcore ''"));
}

TEST(ParseCoreOptionsErrors, UnbalancedParenthesis) {
  EXPECT_THAT(parse_error({"--lcores=(0,1@0"}, two_cpus()), HasSubstr("to close the lcore set"));
  EXPECT_THAT(parse_error({"--lcores=0@(0,1"}, two_cpus()), HasSubstr("to close the set"));
}

TEST(ParseCoreOptionsErrors, MissingValue) {
  EXPECT_THAT(parse_error({"-l"}, two_cpus()), HasSubstr("-l needs a value"));
  EXPECT_THAT(parse_error({"--lcores"}, two_cpus()), HasSubstr("--lcores needs a value"));
  EXPECT_THAT(parse_error({"-l", "0", "--main-lcore"}, two_cpus()),
              HasSubstr("--main-lcore needs a value"));
}

TEST(ParseCoreOptionsErrors, DashLAndLcoresTogether) {
  std::string msg = parse_error({"-l", "0", "--lcores=1"}, two_cpus());
  EXPECT_THAT(msg, HasSubstr("-l '0' and --lcores '1' cannot be used together"));
}

TEST(ParseCoreOptionsErrors, OptionGivenTwice) {
  EXPECT_THAT(parse_error({"-l", "0", "-l1"}, two_cpus()), HasSubstr("-l given twice"));
  EXPECT_THAT(parse_error({"-l", "0", "--main-lcore=0", "--main-lcore", "0"}, two_cpus()),
              HasSubstr("--main-lcore given twice"));
}

TEST(ParseCoreOptionsErrors, BadMainLcore) {
  EXPECT_THAT(parse_error({"-l", "0", "--main-lcore", "zero"}, two_cpus()),
              HasSubstr("--main-lcore 'zero'"));
  EXPECT_THAT(parse_error({"-l", "0", "--main-lcore", "1,2"}, two_cpus()),
              HasSubstr("unexpected ','"));
}

TEST(ParseCoreOptionsErrors, HugeNumbers) {
  EXPECT_THAT(parse_error({"-l", "99999999999999999999"}, two_cpus()), HasSubstr("too large"));
  EXPECT_THAT(parse_error({"--lcores=5000@0"}, two_cpus()), HasSubstr("lcore number 5000 is too large"));
}

// ---- CpuTopology ----------------------------------------------------------------------------

// Two packages, one NUMA node each, two cores each. PUs are interleaved across the nodes as on
// many dual-socket machines: node 0 = {0,2}, node 1 = {1,3}. PU 4 exists but is offline
// (complete_cpuset only) and PU 3 is outside the allowed cpuset.
constexpr const char* kTwoNodeXml = R"(<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc2.dtd">
<topology version="2.0">
  <object type="Machine" os_index="0" cpuset="0x0000000f" complete_cpuset="0x0000001f" allowed_cpuset="0x00000007" nodeset="0x00000003" complete_nodeset="0x00000003" allowed_nodeset="0x00000003" gp_index="1">
    <object type="Package" os_index="0" cpuset="0x00000005" complete_cpuset="0x00000005" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="2">
      <object type="NUMANode" os_index="0" cpuset="0x00000005" complete_cpuset="0x00000005" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="3" local_memory="1073741824"/>
      <object type="Core" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="4">
        <object type="PU" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="5"/>
      </object>
      <object type="Core" os_index="1" cpuset="0x00000004" complete_cpuset="0x00000004" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="6">
        <object type="PU" os_index="2" cpuset="0x00000004" complete_cpuset="0x00000004" nodeset="0x00000001" complete_nodeset="0x00000001" gp_index="7"/>
      </object>
    </object>
    <object type="Package" os_index="1" cpuset="0x0000000a" complete_cpuset="0x0000001a" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="8">
      <object type="NUMANode" os_index="1" cpuset="0x0000000a" complete_cpuset="0x0000001a" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="9" local_memory="1073741824"/>
      <object type="Core" os_index="0" cpuset="0x00000002" complete_cpuset="0x00000002" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="10">
        <object type="PU" os_index="1" cpuset="0x00000002" complete_cpuset="0x00000002" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="11"/>
      </object>
      <object type="Core" os_index="1" cpuset="0x00000008" complete_cpuset="0x00000008" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="12">
        <object type="PU" os_index="3" cpuset="0x00000008" complete_cpuset="0x00000008" nodeset="0x00000002" complete_nodeset="0x00000002" gp_index="13"/>
      </object>
    </object>
  </object>
</topology>
)";

void expect_two_node_xml_topology(const CpuTopology& t) {
  EXPECT_THAT(t.all_cpus(), ElementsAre(0u, 1u, 2u, 3u, 4u));
  EXPECT_THAT(t.cpus(), ElementsAre(0u, 1u, 2u));
  EXPECT_EQ(t.num_cpus(), 3u);
  EXPECT_TRUE(t.cpu_exists(4));
  EXPECT_FALSE(t.cpu_online(4));
  EXPECT_TRUE(t.cpu_exists(3));
  EXPECT_FALSE(t.cpu_online(3));
  EXPECT_FALSE(t.cpu_exists(5));
  EXPECT_EQ(t.numa_node_of(0), 0);
  EXPECT_EQ(t.numa_node_of(2), 0);
  EXPECT_EQ(t.numa_node_of(1), 1);
  EXPECT_EQ(t.numa_node_of(3), 1);
  EXPECT_EQ(t.numa_node_of(4), 1);
  EXPECT_EQ(t.numa_node_of(5), -1);
}

TEST(CpuTopology, FromXmlBuffer) { expect_two_node_xml_topology(CpuTopology::from_xml(kTwoNodeXml)); }

TEST(CpuTopology, FromXmlFile) {
  char path[] = "/tmp/vhostd-topo-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  {
    std::ofstream out(path);
    out << kTwoNodeXml;
  }
  CpuTopology t = CpuTopology::from_xml(path);
  std::remove(path);
  expect_two_node_xml_topology(t);
}

TEST(CpuTopology, FromXmlMissingFileThrows) {
  EXPECT_THROW(CpuTopology::from_xml("/nonexistent/vhostd-topology.xml"), Error);
}

TEST(CpuTopology, XmlTopologyDrivesParsing) {
  CpuTopology t = CpuTopology::from_xml(kTwoNodeXml);
  CoreConfig c = parse({"--lcores=0@0,1@(1,2)"}, t);
  EXPECT_THAT(c.lcores, ElementsAre(m(0, {0}), m(1, {1, 2})));
  EXPECT_THAT(parse_error({"-l", "3"}, t), HasSubstr("cpu 3 is offline or not allowed (usable cpus: 0-2)"));
  EXPECT_THAT(parse_error({"-l", "8"}, t), HasSubstr("cpu 8 does not exist (this machine has cpus 0-4)"));
}

TEST(CpuTopology, FromSyntheticTwoNodes) {
  CpuTopology t = CpuTopology::from_synthetic("node:2 core:2 pu:1");
  EXPECT_THAT(t.cpus(), ElementsAre(0u, 1u, 2u, 3u));
  EXPECT_EQ(t.num_cpus(), 4u);
  EXPECT_EQ(t.numa_node_of(0), 0);
  EXPECT_EQ(t.numa_node_of(1), 0);
  EXPECT_EQ(t.numa_node_of(2), 1);
  EXPECT_EQ(t.numa_node_of(3), 1);
  EXPECT_EQ(t.numa_node_of(4), -1);
}

TEST(CpuTopology, FromSyntheticWithoutNumaIsNodeZero) {
  CpuTopology t = CpuTopology::from_synthetic("core:2 pu:2");
  EXPECT_EQ(t.num_cpus(), 4u);
  for (unsigned cpu = 0; cpu < 4; ++cpu) EXPECT_EQ(t.numa_node_of(cpu), 0);
}

TEST(CpuTopology, BadSyntheticThrows) {
  try {
    CpuTopology::from_synthetic("bogus:3");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("bogus:3"));
  }
}

TEST(CpuTopology, FromSystemMatchesThisMachine) {
  CpuTopology t = CpuTopology::from_system();
  ASSERT_GE(t.num_cpus(), 1u);
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_EQ(t.num_cpus(), static_cast<unsigned>(CPU_COUNT(&set)));
  for (unsigned cpu : t.cpus()) {
    EXPECT_TRUE(CPU_ISSET(cpu, &set)) << "cpu " << cpu;
    EXPECT_TRUE(t.cpu_exists(cpu));
    EXPECT_GE(t.numa_node_of(cpu), 0);
  }
  CoreConfig c = parse({}, t);
  EXPECT_EQ(c.lcores.size(), t.num_cpus());
}

TEST(CpuTopology, FromListsValidates) {
  EXPECT_THROW(CpuTopology::from_lists({0, 1}, {2}), Error);
  EXPECT_THROW(CpuTopology::from_lists({0, 0}, {0}), Error);
  EXPECT_THROW(CpuTopology::from_lists({0, 1}, {0}, {0}), Error);
  CpuTopology t = CpuTopology::from_lists({3, 1}, {1}, {1, 0});
  EXPECT_EQ(t.numa_node_of(3), 1);
  EXPECT_EQ(t.numa_node_of(1), 0);
}

}  // namespace
}  // namespace vhostd
