#!/bin/bash
# perf/instructions.sh: how many instructions vhostd-fwd's data lcore runs per forwarded packet,
# counted by callgrind while DPDK's net_virtio_user PMD in dpdk-testpmd (the "guest") drives the
# one-port loop or the two-port forward of perf/e2e.sh. Rates on a shared VM move with the host;
# instruction counts do not, so a change to the data path can be judged by them first.
#
# vhostd-fwd runs under `valgrind --tool=callgrind` (tens of times slower), so the frontend is
# always the fast side and every burst is full: the counts are those of full bursts (32 packets
# in the loop, testpmd's --tx-first burst). Printed, per packet forwarded (tx-packets of every
# port): the inclusive instructions of Forwarder::on_guest_tx (everything the data lcore does
# for a burst) and of NetPort::receive, transmit and release inside it, then the ten costliest
# functions on their own (exclusive).
#
# Usage: perf/instructions.sh [--ring split|packed] [--scenario loop|fwd2] [--seconds N]
#                             [--build DIR] [--logs DIR]
#   --ring       ring layout the frontend negotiates (default packed)
#   --scenario   loop: one port looped back (default); fwd2: two ports forwarding to each other
#   --seconds    how long the frontend sends (default 20)
#   --build      where vhostd-fwd is built (default build-callgrind in the source tree); set up
#                with `meson setup DIR -Dbuildtype=release -Ddebug=true -Dtests=false` (release
#                code with line information) if it is not a build directory yet
#   --logs       keep the logs and callgrind.out in DIR (default: a temporary directory, removed)
# Needs valgrind (Debian: valgrind), dpdk-testpmd (Debian: dpdk), meson and ninja, CPUs 0 and 1.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=perf/lib.sh
. "$ROOT/perf/lib.sh" || { echo "instructions: error: cannot read $ROOT/perf/lib.sh" >&2; exit 1; }
RING=packed
SCENARIO=loop
RUN_SECONDS=20
BUILD=$ROOT/build-callgrind
LOGS=""
START_TIMEOUT=120    # seconds for vhostd-fwd under valgrind to listen / testpmd to start
EXIT_TIMEOUT=120     # seconds for vhostd-fwd under valgrind to exit and write its profile

say() { echo "instructions: $*" >&2; }
die() { echo "instructions: error: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage:/,/^# Needs/s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --ring) RING=${2:?}; shift ;;
    --scenario) SCENARIO=${2:?}; shift ;;
    --seconds) RUN_SECONDS=${2:?}; shift ;;
    --build) BUILD=${2:?}; shift ;;
    --logs) LOGS=${2:?}; shift ;;
    -h|--help) usage 0 ;;
    *) echo "instructions: unknown option: $1" >&2; usage 2 ;;
  esac
  shift
done
case $RING in split) vu_extra="" ;; packed) vu_extra=,packed_vq=1 ;; *) die "--ring: split or packed" ;; esac
case $SCENARIO in loop) nports=1 ;; fwd2) nports=2 ;; *) die "--scenario: loop or fwd2" ;; esac
[[ $RUN_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--seconds: a positive integer"
command -v valgrind >/dev/null || die "valgrind not found (Debian: apt-get install valgrind)"
command -v callgrind_annotate >/dev/null || die "callgrind_annotate not found (Debian: valgrind)"
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found (Debian: apt-get install dpdk)"
[ "$(nproc)" -ge 2 ] || die "needs CPUs 0 and 1"

# ---- clean-up of everything this script starts or changes, whatever happens (perf/lib.sh) ----
PREFIX=ins$$
start_session instructions

# ---- vhostd-fwd, release code with line information ----
if [ ! -f "$BUILD/build.ninja" ]; then
  say "setting up $BUILD (release, with debug information)"
  meson setup "$BUILD" "$ROOT" -Dbuildtype=release -Ddebug=true -Dtests=false >"$tmp/build.log" 2>&1 ||
    { tail -n 15 "$tmp/build.log" >&2; die "meson setup failed"; }
fi
say "building $BUILD/apps/vhostd-fwd"
ninja -C "$BUILD" apps/vhostd-fwd >>"$tmp/build.log" 2>&1 || { tail -n 15 "$tmp/build.log" >&2; die "ninja failed"; }
commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)

testpmd_memory auto
say "memory: ${memory:-no-huge}"

# ---- the backend under callgrind, then the frontend ----
socks=() be_args=() fe_args=()
for ((i = 0; i < nports; i++)); do
  socks+=("$tmp/s$i")
  be_args+=(--port "path=$tmp/s$i")
  fe_args+=(--vdev "net_virtio_user$i,path=$tmp/s$i,queues=1$vu_extra")
done
profile=$tmp/callgrind.out
start_bg "$tmp/backend.log" valgrind --tool=callgrind --callgrind-out-file="$profile" \
  "$BUILD/apps/vhostd-fwd" -l 0,1 --main-lcore 0 "${be_args[@]}" --fwd io --stats-period 2
be_pid=$bg_pid
deadline=$((SECONDS + START_TIMEOUT))
until grep -aqs '^vhostd-fwd: ready' "$tmp/backend.log"; do
  kill -0 "$be_pid" 2>/dev/null || { tail -n 8 "$tmp/backend.log" >&2; die "vhostd-fwd exited at start"; }
  [ "$SECONDS" -lt "$deadline" ] || die "vhostd-fwd not ready within ${START_TIMEOUT} s"
  sleep 0.2
done
say "$RING $SCENARIO: the frontend sends for $RUN_SECONDS s (vhostd-fwd under callgrind)"
testpmd "$tmp/frontend.log" --lcores '0@1,1@0' --single-file-segments "${fe_args[@]}" -- --nb-cores=1 \
  --forward-mode=io --txpkts=64 --tx-first --stats-period 2
fe_pid=$bg_pid
sleep "$RUN_SECONDS"
stop "$fe_pid"
# vhostd-fwd prints its totals and callgrind writes the profile on the way out: give it time.
kill -INT "$be_pid" 2>/dev/null
deadline=$((SECONDS + EXIT_TIMEOUT))
while kill -0 "$be_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
stop "$be_pid"
[ -s "$profile" ] || die "no callgrind profile (vhostd-fwd did not exit in time?)"

# ---- per forwarded packet ----
packets=$(awk '/^total port/ { for (i = 1; i <= NF; i++) if ($i == "tx-packets") s += $(i + 1) } END { print s + 0 }' \
  "$tmp/backend.log")
[ "$packets" -gt 0 ] || die "nothing was forwarded (see the logs: --logs DIR)"
echo "vhostd-fwd ($BUILD, commit $commit), $RING $SCENARIO, 64 B frames: $packets packets forwarded under callgrind"
echo "instructions per forwarded packet, inclusive:"
callgrind_annotate --auto=no --inclusive=yes "$profile" 2>/dev/null |
  awk -v n="$packets" '
    /^ *[0-9,]+ .*(Forwarder::on_guest_tx|NetPort::receive|NetPort::transmit|NetPort::release)\(/ {
      name = $0
      if (name ~ /on_guest_tx/) key = "Forwarder::on_guest_tx"
      else if (name ~ /NetPort::receive\(/) key = "  NetPort::receive"
      else if (name ~ /NetPort::transmit\(/) key = "  NetPort::transmit"
      else if (name ~ /NetPort::release\(/) key = "  NetPort::release"
      else next
      if (key in seen) next
      seen[key] = 1; c = $1; gsub(",", "", c)
      printf "  %8.1f  %s\n", c / n, key
    }'
echo "costliest functions on their own (exclusive, code inlined into them included), per forwarded packet:"
callgrind_annotate --auto=no "$profile" 2>/dev/null |
  awk -v n="$packets" '/file:function/ { on = 1; next }
    on && /^ *[0-9,]+ / { c = $1; gsub(",", "", c); f = $0
                          sub(/^[^:]*:/, "", f); gsub(/\(anonymous namespace\)/, "{anon}", f)
                          sub(/\(.*/, "", f); sub(/ \[.*/, "", f); sum[f] += c }
    END { for (f in sum) printf "  %8.1f  %s\n", sum[f] / n, f }' | sort -rn | head -n 10
