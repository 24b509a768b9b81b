#!/usr/bin/env bash
# Installs the dependencies, builds vhostd twice (plain, and with ASan+UBSan) with warnings as
# errors, and runs every test suite in both builds. This is the README's test command and what
# CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== dependencies installed at ${SECONDS}s"

# run_suites DIR "SUITES" [meson options]
run_suites() {
  local dir=$1 suites=$2; shift 2
  meson setup "$dir" --wipe -Dwerror=true "$@" >/dev/null 2>&1 || meson setup "$dir" -Dwerror=true "$@"
  ninja -C "$dir"
  echo "== $dir built at ${SECONDS}s"
  local args=()
  for suite in $suites; do args+=(--suite "$suite"); done
  local log
  log=$(mktemp)
  meson test -C "$dir" --print-errorlogs "${args[@]}" | tee "$log"
  passed=$((passed + $(awk '/^Ok:/ {print $2}' "$log")))
  failed=$((failed + $(awk '/^Fail:/ {print $2}' "$log")))
  rm -f "$log"
  echo "== $dir suites done at ${SECONDS}s"
}
passed=0
failed=0

# The interop suite (a real dpdk-testpmd frontend, busy-polling both CPUs) runs in the plain
# build only: under ASan the frontend's timing, not our code, would be what is measured.
run_suites build-test "unit integration interop" --prefix="$PWD/build-test/prefix"
# The sanitizer build is for finding faults, not for speed: -O1 (what ASan recommends) with line
# tables only (-g1) builds in about 70% of the time of -O2 -g, and reports still give file:line.
run_suites build-asan "unit integration" -Db_sanitize=address,undefined -Db_lundef=false -Dperf=false \
  -Doptimization=1 -Dcpp_args=-g1

# The framework as an outside project sees it: installed headers, library and vhostd.pc.
meson install -C build-test --quiet
libdir=$(meson introspect build-test --buildoptions | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="libdir"))')
export PKG_CONFIG_PATH="$PWD/build-test/prefix/$libdir/pkgconfig"
meson setup build-external tests/external --wipe >/dev/null 2>&1 || meson setup build-external tests/external
ninja -C build-external
LD_LIBRARY_PATH="$PWD/build-test/prefix/$libdir" build-external/null-device
echo "all suites passed (plain and ASan+UBSan); an outside project builds against the installed vhostd"
echo "$passed passed, $failed failed"
