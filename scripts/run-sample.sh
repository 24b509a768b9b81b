#!/usr/bin/env bash
# The README's main job (until the vhost-user-net forwarding app lands): installs the
# dependencies, builds a release tree in build-sample/, serves the sample echo device with
# vhostd-echo on a socket in a temporary directory (control lcore and data lcore pinned), drives
# it for a few seconds with perf/echo-load (the in-tree vhost-user frontend as the guest driver
# of one ring, pinned to another CPU), prints the request rate, then stops vhostd-echo with
# SIGINT and checks that it exited 0 and removed its socket.
#
# Guest memory is on hugetlbfs when 2 MiB pages can be reserved (as root: nr_hugepages is raised
# to 256 and /dev/hugepages mounted if needed, both put back on exit), a memfd otherwise.
#
# Usage: scripts/run-sample.sh     (as root on Debian 12; root is needed for the packages and
#                                   the hugepages only)
# Knobs (environment): RUN_SECONDS=5 SIZE=64 QUEUE_SIZE=256 BURST=32 HUGEPAGES=auto|no
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_SECONDS=${RUN_SECONDS:-5}
SIZE=${SIZE:-64}
QUEUE_SIZE=${QUEUE_SIZE:-256}
BURST=${BURST:-32}
HUGEPAGES=${HUGEPAGES:-auto}
BUILD=build-sample

say() { echo "run-sample: $*"; }
die() { echo "run-sample: error: $*" >&2; exit 1; }

# ---- clean-up of everything this script changes, whatever happens ----
tmp=""
daemon_pid=""
old_nr_hugepages=""
mounted_hugetlbfs=""
created_hugepages_dir=""
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  [ -n "$tmp" ] && rm -rf "$tmp"
  [ -n "$mounted_hugetlbfs" ] && { umount "$mounted_hugetlbfs" 2>/dev/null || true; }
  [ -n "$created_hugepages_dir" ] && { rmdir /dev/hugepages 2>/dev/null || true; }
  if [ -n "$old_nr_hugepages" ]; then
    echo "$old_nr_hugepages" > /proc/sys/vm/nr_hugepages 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- dependencies and build ----
say "installing dependencies (scripts/install-deps.sh)"
scripts/install-deps.sh

log=$(mktemp /tmp/run-sample-build.XXXXXX.log)
say "building $BUILD (release; log in $log)"
if [ -f "$BUILD/build.ninja" ]; then
  setup=(meson setup "$BUILD" --reconfigure --buildtype=release -Dtests=true -Dperf=true)
else
  setup=(meson setup "$BUILD" --buildtype=release -Dtests=true -Dperf=true)
fi
if ! { "${setup[@]}" && ninja -C "$BUILD"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  die "build failed (full log: $log)"
fi
rm -f "$log"
echo_bin=$BUILD/apps/vhostd-echo
load_bin=$BUILD/perf/echo-load
[ -x "$echo_bin" ] && [ -x "$load_bin" ] || die "the build did not produce $echo_bin and $load_bin"

# ---- CPUs: the ones this process may run on (affinity / cpuset), ascending ----
cpus=()
IFS=, read -ra parts <<<"$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)"
for part in "${parts[@]}"; do
  if [[ $part == *-* ]]; then
    for ((c = ${part%-*}; c <= ${part#*-}; c++)); do cpus+=("$c"); done
  else
    cpus+=("$part")
  fi
done
[ ${#cpus[@]} -ge 1 ] || die "no usable CPU found in /proc/self/status"
if [ ${#cpus[@]} -ge 3 ]; then
  core_opts=(-l "${cpus[1]}" --main-lcore "${cpus[0]}")
  load_cpu=${cpus[2]}
  say "${#cpus[@]} CPUs: control lcore on CPU ${cpus[0]}, data lcore on CPU ${cpus[1]}, load generator on CPU $load_cpu"
elif [ ${#cpus[@]} -eq 2 ]; then
  core_opts=(-l "${cpus[1]}" --main-lcore "${cpus[0]}")
  load_cpu=${cpus[0]}
  say "2 CPUs: control lcore on CPU ${cpus[0]}, data lcore on CPU ${cpus[1]}," \
      "load generator on CPU $load_cpu (shared with the mostly idle control lcore)"
else
  # No CPU to spare: lcore 0 (control) and lcore 1 (data) both on the one CPU.
  core_opts=(--lcores "0@${cpus[0]},1@${cpus[0]}" --main-lcore 0)
  load_cpu=${cpus[0]}
  say "only 1 CPU: control lcore, data lcore and load generator all on CPU ${cpus[0]}" \
      "(the poller and the load generator time-share it: expect a far lower rate)"
fi

# ---- guest memory: hugetlbfs if pages can be had, memfd otherwise ----
hugedir=""
memory_note="memfd (hugepages need root and a writable /proc/sys/vm/nr_hugepages)"
if [ "$HUGEPAGES" = no ]; then
  memory_note="memfd (HUGEPAGES=no)"
elif [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
  page_kb=$(awk '/^Hugepagesize:/ {print $2}' /proc/meminfo)
  want=$(( 512 * 1024 / ${page_kb:-2048} ))  # 512 MiB: 256 pages of 2 MiB
  [ "$want" -ge 1 ] || want=1
  current=$(cat /proc/sys/vm/nr_hugepages)
  if [ "$current" -lt "$want" ]; then
    old_nr_hugepages=$current
    echo "$want" > /proc/sys/vm/nr_hugepages 2>/dev/null || true
  fi
  # A mount with the default page size (no pagesize= option, or the default one).
  hugedir=$(awk -v kb="$page_kb" '$3 == "hugetlbfs" &&
              ($4 !~ /pagesize=/ || $4 ~ ("pagesize=" kb "k") || $4 ~ ("pagesize=" kb/1024 "M")) {print $2; exit}' /proc/mounts)
  if [ -z "$hugedir" ] && grep -qw hugetlbfs /proc/filesystems; then
    if [ ! -e /dev/hugepages ] && mkdir /dev/hugepages 2>/dev/null; then
      created_hugepages_dir=yes
    fi
    if [ -d /dev/hugepages ] && mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null; then
      mounted_hugetlbfs=/dev/hugepages
      hugedir=/dev/hugepages
    fi
  fi
  free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
  if [ -z "$hugedir" ]; then
    memory_note="memfd (no hugetlbfs mount and none could be mounted)"
  elif [ "${free:-0}" -lt 1 ]; then
    memory_note="memfd (no free hugepages: nr_hugepages could not be raised)"
    hugedir=""
  else
    memory_note="hugetlbfs at $hugedir ($free free $((page_kb / 1024)) MiB pages)"
  fi
fi
say "guest memory: $memory_note"

# ---- serve the echo device ----
tmp=$(mktemp -d /tmp/vhostd-sample.XXXXXX)
sock=$tmp/echo.sock
queue_max=$(( QUEUE_SIZE > 1024 ? QUEUE_SIZE : 1024 ))
say "starting: $echo_bin ${core_opts[*]} --socket $sock --queues 1 --queue-size $queue_max"
"$echo_bin" "${core_opts[@]}" --socket "$sock" --queues 1 --queue-size "$queue_max" >"$tmp/vhostd-echo.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
  [ -S "$sock" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$tmp/vhostd-echo.log" >&2; die "vhostd-echo exited at start"; }
  sleep 0.05
done
[ -S "$sock" ] || { cat "$tmp/vhostd-echo.log" >&2; die "vhostd-echo did not create $sock within 5 s"; }

# ---- drive it ----
load_args=(--socket "$sock" --seconds "$RUN_SECONDS" --size "$SIZE" --queue-size "$QUEUE_SIZE" --burst "$BURST"
           --cpu "$load_cpu")
[ -n "$hugedir" ] && load_args+=(--hugepages "$hugedir")
say "running: $load_bin ${load_args[*]}"
load_rc=0
"$load_bin" "${load_args[@]}" 2>&1 | tee "$tmp/echo-load.log" || load_rc=$?
[ "$load_rc" -eq 0 ] || { cat "$tmp/vhostd-echo.log" >&2; die "echo-load failed (exit $load_rc)"; }

# ---- stop the daemon: SIGINT, exit status 0, socket removed ----
kill -INT "$daemon_pid"
for _ in $(seq 100); do
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.05
done
if kill -0 "$daemon_pid" 2>/dev/null; then
  cat "$tmp/vhostd-echo.log" >&2
  die "vhostd-echo did not stop within 5 s of SIGINT"
fi
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=""
sed 's/^/  | /' "$tmp/vhostd-echo.log"
[ "$daemon_rc" -eq 0 ] || die "vhostd-echo exited with status $daemon_rc after SIGINT"
[ ! -e "$sock" ] || die "vhostd-echo left its socket $sock behind"
say "vhostd-echo stopped on SIGINT: exit status 0, socket removed"

# ---- the result ----
summary=$(grep -E '^echo-load: [0-9.]+ Mreq/s \(' "$tmp/echo-load.log" | tail -n 1)
rate=$(awk '{print $2}' <<<"$summary")
inflight=$(sed -nE 's/.* ([0-9]+) in flight.*/\1/p' <<<"$summary")
burst=$(sed -nE 's/.*, burst ([0-9]+),.*/\1/p' <<<"$summary")
[ -n "$rate" ] || die "no summary line from echo-load"
memory=${hugedir:+hugetlbfs}
echo
printf '  %-14s %-9s %-11s %-6s %-10s %s\n' "requests/s" "payload" "queue size" "burst" "in flight" "guest memory"
printf '  %-14s %-9s %-11s %-6s %-10s %s\n' "$rate Mreq/s" "$SIZE B" "$QUEUE_SIZE" "$burst" "$inflight" "${memory:-memfd}"
echo
