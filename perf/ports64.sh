#!/usr/bin/env bash
# perf/ports64.sh: many ports on one data lcore, end to end.
#
# vhostd-fwd with one data lcore (CPU 1, main lcore CPU 0) is run two ways against the same
# frontend, DPDK's net_virtio_user PMD in dpdk-testpmd (as perf/e2e.sh drives it, forwarding core
# on CPU 0), one after the other:
#   1 port     vhostd-fwd serves one port, the one testpmd drives
#   N ports    vhostd-fwd serves N ports (default 64): the same one driven by testpmd, and N-1
#              connected to idle guests (perf/idle-guests: one queue pair each, rings set up,
#              enabled and started, memfd memory, nothing ever made available)
# and prints the driven port's Mpps both ways and the ratio N ports / 1 port, which the issue
# wants >= 0.9 (idle rings must cost the poll loop almost nothing).
#
# Scenarios (backend mode / frontend mode, headline):
#   g2b   guest->backend   vhostd-fwd rxonly / testpmd txonly              vhostd-fwd port 0 rx
#   loop  one-port loop    vhostd-fwd macswap (back on the same port) /
#                          testpmd io --tx-first                           testpmd rx
# (macswap, not io: with N ports io would pair port 0 with port 1, an idle guest.)
# 64-byte frames; every rate is the maximum over the 2-second stats periods of a run
# ("--seconds" long, from the frontend's first stats print); --repeat runs of each way,
# alternating, the best of each kept (runs on a 2-vCPU VM are bimodal, see perf/e2e.sh).
#
# Memory: as root, 2 MiB hugepages are reserved for testpmd (nr_hugepages raised so that 2 GiB
# are free, hugetlbfs mounted at /dev/hugepages if there is no mount; both put back on exit);
# otherwise --no-huge. The idle guests use memfds.
#
# Usage: perf/ports64.sh [--ring split|packed] [--ports N] [--seconds N] [--repeat N]
#                        [--scenarios g2b,loop] [--build DIR] [--no-huge] [--logs DIR]
#   --build   where vhostd-fwd and idle-guests are built (default build-ports64 in the source
#             tree; set up with `meson setup DIR -Dbuildtype=release -Dtests=true` if it is not
#             a build directory yet: idle-guests is built on the in-tree test frontend);
#             `ninja -C DIR apps/vhostd-fwd perf/idle-guests` runs every time
#   --logs    keep every process's log in DIR (default: a temporary directory, removed)
# Needs dpdk-testpmd (Debian: dpdk), meson and ninja, CPUs 0 and 1.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=perf/lib.sh
. "$ROOT/perf/lib.sh" || { echo "ports64: error: cannot read $ROOT/perf/lib.sh" >&2; exit 1; }
RING=split
NPORTS=64
SECONDS_PER_RUN=8
REPEAT=3
SCENARIOS=g2b,loop
BUILD=$ROOT/build-ports64
HUGE=auto
LOGS=""
STATS_PERIOD=2
PKT_BYTES=64
START_TIMEOUT=30

say() { echo "ports64: $*" >&2; }
die() { echo "ports64: error: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage:/,/^# Needs/s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --ring) RING=${2:?}; shift ;;
    --ports) NPORTS=${2:?}; shift ;;
    --seconds) SECONDS_PER_RUN=${2:?}; shift ;;
    --repeat) REPEAT=${2:?}; shift ;;
    --scenarios) SCENARIOS=${2:?}; shift ;;
    --build) BUILD=${2:?}; shift ;;
    --no-huge) HUGE=no ;;
    --logs) LOGS=${2:?}; shift ;;
    -h|--help) usage 0 ;;
    *) echo "ports64: unknown option: $1" >&2; usage 2 ;;
  esac
  shift
done
case $RING in split|packed) ;; *) die "--ring: split or packed" ;; esac
[[ $NPORTS =~ ^[1-9][0-9]*$ ]] && [ "$NPORTS" -ge 2 ] || die "--ports: an integer >= 2"
[[ $SECONDS_PER_RUN =~ ^[1-9][0-9]*$ ]] || die "--seconds: a positive integer"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat: a positive integer"
SCENS=()
IFS=, read -ra list <<<"$SCENARIOS"
for s in "${list[@]}"; do
  case $s in g2b|loop) SCENS+=("$s") ;; *) die "--scenarios: unknown scenario '$s' (g2b, loop)" ;; esac
done
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found (Debian: apt-get install dpdk)"

# ---- clean-up of everything this script starts or changes, whatever happens (perf/lib.sh) ----
PREFIX=p64$$
start_session ports64

# ---- build ----
build_log=$tmp/build.log
if [ ! -f "$BUILD/build.ninja" ]; then
  say "setting up $BUILD (release, tests on: idle-guests needs the test frontend)"
  meson setup "$BUILD" "$ROOT" -Dbuildtype=release -Dtests=true >>"$build_log" 2>&1 ||
    { tail -n 15 "$build_log" >&2; die "meson setup failed"; }
fi
say "building vhostd-fwd and idle-guests in $BUILD"
ninja -C "$BUILD" apps/vhostd-fwd perf/idle-guests >>"$build_log" 2>&1 || { tail -n 15 "$build_log" >&2; die "ninja failed"; }
fwd_bin=$BUILD/apps/vhostd-fwd
idle_bin=$BUILD/perf/idle-guests
buildtype=$(meson introspect "$BUILD" --buildoptions 2>/dev/null |
  python3 -c 'import json, sys; print({x["name"]: x["value"] for x in json.load(sys.stdin)}.get("buildtype", "unknown"))' 2>/dev/null)
commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
dpdk_version=$(dpkg-query -W -f='${Version}' dpdk 2>/dev/null || echo unknown)

# ---- memory for testpmd (perf/lib.sh) ----
testpmd_memory "$HUGE"
if [ -n "$huge_fail" ]; then memory="no-huge (hugepages could not be reserved)"; elif [ -z "$memory" ]; then memory="no-huge"; fi
say "memory: $memory"

# ---- process helpers (start_bg, stop, testpmd, forget_prefixes, testpmd_rate: perf/lib.sh) ----
port0_rate() {  # port0_rate LOG rx|tx: vhostd-fwd's port 0, Mpps, max over stats periods
  awk -v k="$1" '$1 == "port" && $2 == "0:" { for (i = 3; i < NF; i++) if ($i == k) { if ($(i + 1) > m) m = $(i + 1); break } }
                 END { printf "%.2f", m }' "$2"
}
wait_for() {  # wait_for PID FILE PATTERN: until PATTERN is in FILE (0), PID exits or timeout (1)
  local deadline=$((SECONDS + START_TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    grep -aqs "$3" "$2" && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# ---- one run: $1 ports (1 or N), scenario $2; sets rate, fe_rate, be_rate, note ----
run_one() {
  local n=$1 scen=$2 dir=$tmp/$2-$1ports-run$3 be_mode fe_mode txfirst=() i vu_extra=""
  mkdir -p "$dir"
  case $scen in
    g2b) be_mode=rxonly; fe_mode=txonly ;;
    loop) be_mode=macswap; fe_mode=io; txfirst=(--tx-first) ;;
  esac
  [ "$RING" = packed ] && vu_extra=,packed_vq=1
  rate=n/a; fe_rate=n/a; be_rate=n/a; note=""
  local be_args=()
  for ((i = 0; i < n; i++)); do be_args+=(--port "path=$dir/s$i"); done
  start_bg "$dir/vhostd-fwd.log" "$fwd_bin" -l 0,1 --main-lcore 0 "${be_args[@]}" --fwd "$be_mode" \
    --stats-period "$STATS_PERIOD"
  local be_pid=$bg_pid idle_pid=""
  if ! wait_for "$be_pid" "$dir/vhostd-fwd.log" '^vhostd-fwd: ready'; then
    note="vhostd-fwd did not start"; tail -n 5 "$dir/vhostd-fwd.log" >&2; stop "$be_pid"; return
  fi
  if [ "$n" -gt 1 ]; then
    start_bg "$dir/idle-guests.log" "$idle_bin" --socket-dir "$dir" --first 1 --count $((n - 1)) --cpu 0
    idle_pid=$bg_pid
    if ! wait_for "$idle_pid" "$dir/idle-guests.log" '^idle-guests: ready'; then
      note="idle guests did not connect"; tail -n 5 "$dir/idle-guests.log" >&2
      stop "$idle_pid"; stop "$be_pid"; return
    fi
  fi
  testpmd "$dir/testpmd.log" --lcores '0@1,1@0' --single-file-segments \
    --vdev "net_virtio_user0,path=$dir/s0,queues=1$vu_extra" \
    -- --nb-cores=1 --forward-mode="$fe_mode" --txpkts="$PKT_BYTES" "${txfirst[@]}" --stats-period "$STATS_PERIOD"
  local fe_pid=$bg_pid
  if wait_for "$fe_pid" "$dir/testpmd.log" 'Port statistics'; then
    sleep "$SECONDS_PER_RUN"
  else
    note="testpmd did not start forwarding"; tail -n 5 "$dir/testpmd.log" >&2
  fi
  stop "$fe_pid"
  forget_prefixes
  if [ -n "$idle_pid" ]; then
    stop "$idle_pid"
    [ "$stop_rc" -eq 0 ] || note="${note:+$note; }idle-guests exit status $stop_rc (a guest lost its connection?)"
  fi
  stop "$be_pid"
  [ "$stop_rc" -eq 0 ] || note="${note:+$note; }vhostd-fwd exit status $stop_rc"
  fe_rate=$(testpmd_rate "$dir/testpmd.log" Rx-pps)
  be_rate=$(port0_rate rx "$dir/vhostd-fwd.log")
  case $scen in g2b) rate=$be_rate ;; loop) rate=$fe_rate ;; esac
  [ "$rate" = 0.00 ] && { note="${note:+$note; }0 pps"; rate=n/a; }
  [ -n "$note" ] && rate=n/a
  return 0
}

rows=()
for scen in "${SCENS[@]}"; do
  one=n/a; many=n/a
  for ((rep = 1; rep <= REPEAT; rep++)); do
    run_one 1 "$scen" "$rep"
    say "$scen, 1 port (run $rep/$REPEAT): $rate Mpps (testpmd rx $fe_rate, vhostd-fwd port 0 rx $be_rate)${note:+: $note}"
    better "$rate" "$one" && one=$rate
    run_one "$NPORTS" "$scen" "$rep"
    say "$scen, $NPORTS ports (run $rep/$REPEAT): $rate Mpps (testpmd rx $fe_rate, vhostd-fwd port 0 rx $be_rate)${note:+: $note}"
    better "$rate" "$many" && many=$rate
  done
  ratio=n/a
  [ "$one" != n/a ] && [ "$many" != n/a ] && ratio=$(awk -v a="$many" -v b="$one" 'BEGIN { printf "%.2f", a / b }')
  rows+=("$(printf '%-6s %-7s %10s %10s %7s' "$scen" "$RING" "$one" "$many" "$ratio")")
done

echo
echo "vhostd-fwd, one data lcore (CPU 1), 1 port vs $NPORTS ports ($((NPORTS - 1)) idle guests), against dpdk-testpmd $dpdk_version net_virtio_user"
echo "${PKT_BYTES} B frames, ${SECONDS_PER_RUN} s per run, best of ${REPEAT} runs each, Mpps = max over ${STATS_PERIOD}-s periods"
echo "build: $BUILD (buildtype ${buildtype:-unknown}, commit $commit); memory: $memory"
echo
printf '%-6s %-7s %10s %10s %7s\n' scen ring "1 port" "$NPORTS ports" ratio
printf '%s\n' "${rows[@]}"
