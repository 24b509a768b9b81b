#!/usr/bin/env bash
# The README's main job: installs what is needed (scripts/install-deps.sh, DPDK's testpmd
# included), builds vhostd-fwd (release) and runs the end-to-end comparison perf/e2e.sh for a
# few seconds per scenario: vhostd-fwd and DPDK's own vhost backend (net_vhost in testpmd),
# each against DPDK virtio-user in testpmd as the guest, pinned the same way, 64-byte frames;
# prints the Mpps table with the vhostd/DPDK ratio. Hugepages are reserved when possible
# (root), otherwise both sides run on memfd memory (--no-huge).
#
# Usage: scripts/run-fwd.sh [perf/e2e.sh options]   (default: --seconds 6 --repeat 2 --ring split)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ $# -eq 0 ]; then set -- --seconds 6 --repeat 2 --ring split; fi
exec perf/e2e.sh --build build-release "$@"
