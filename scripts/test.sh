#!/usr/bin/env bash
# Installs the dependencies, builds vhostd twice (plain, and with ASan+UBSan) with warnings as
# errors, and runs every test suite in both builds. This is the README's test command and what
# CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

run_suites() {
  local dir=$1; shift
  meson setup "$dir" --wipe -Dwerror=true "$@" >/dev/null 2>&1 || meson setup "$dir" -Dwerror=true "$@"
  ninja -C "$dir"
  meson test -C "$dir" --print-errorlogs --suite unit --suite integration
}

run_suites build-test
run_suites build-asan -Db_sanitize=address,undefined -Db_lundef=false
echo "all suites passed (plain and ASan+UBSan)"
