// vhostd perf: main of bench-datapath (Google Benchmark), with the build settings that matter
// for reading its numbers recorded in the output's context.
#include <benchmark/benchmark.h>

int main(int argc, char** argv) {
#ifdef NDEBUG
  benchmark::AddCustomContext("vhostd_assertions", "off");
#else
  benchmark::AddCustomContext("vhostd_assertions", "on (not a release build)");
#endif
  benchmark::AddCustomContext("vhostd_native", VHOSTD_BUILD_NATIVE ? "true (-march=native)" : "false");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
