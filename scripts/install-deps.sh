#!/usr/bin/env bash
# Installs exactly what vhostd needs to build and test, from Debian 12 packages.
# Usage: scripts/install-deps.sh        (as root, or with sudo available)
set -euo pipefail

packages=(
  g++ meson ninja-build pkg-config    # toolchain
  libhwloc-dev libnuma-dev            # topology, pinning, NUMA-local allocation
  libgtest-dev libgmock-dev           # unit and integration tests
  libbenchmark-dev                    # perf/ microbenchmarks
  dpdk dpdk-dev                       # dpdk-testpmd: the virtio-user frontend of the interop
                                      # tests and perf suite, and the net_vhost baseline
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet: update once and retry.
$SUDO apt-get install -y --no-install-recommends "${missing[@]}" ||
  { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
