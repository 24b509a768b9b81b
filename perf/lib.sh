# shellcheck shell=bash
# perf/lib.sh: what perf/e2e.sh and perf/ports64.sh share, sourced by both (not run on its own).
# It owns the clean-up on exit of everything they start or change (background processes, the log
# directory, testpmd's hugepage files and runtime directories, hugetlbfs mount, nr_hugepages),
# the hugepage memory for dpdk-testpmd (reserved and mounted as root), starting and stopping
# background processes, starting dpdk-testpmd (one --file-prefix each) and reading its rates.
# The sourcing script defines die and sets PREFIX (the testpmd --file-prefix stem) and
# LOGS (a log directory to keep, or empty) before start_session.
# shellcheck disable=SC2034,SC2153  # variables read by the sourcing script; PREFIX is set there

tmp=""                   # the log directory: LOGS, or a temporary directory removed on exit
pids=()                  # background processes still running
hugedir=""               # the hugetlbfs mount testpmd uses; empty: no hugepages
old_nr_hugepages=""
set_nr_hugepages=""
mounted_hugetlbfs=""
created_hugepages_dir=""
prefixes=()              # --file-prefix of each testpmd started since the last forget_prefixes
nproc_started=0

# ---- clean-up of everything the script starts or changes, whatever happens ----
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  [ -n "$tmp" ] && [ -z "$LOGS" ] && rm -rf "$tmp"
  [ -n "$hugedir" ] && rm -f "$hugedir/$PREFIX"n*map_*
  rm -rf /var/run/dpdk/"$PREFIX"n* "${XDG_RUNTIME_DIR:-/nonexistent}"/dpdk/"$PREFIX"n* /tmp/dpdk/"$PREFIX"n*
  [ -n "$mounted_hugetlbfs" ] && { umount "$mounted_hugetlbfs" 2>/dev/null || true; }
  [ -n "$created_hugepages_dir" ] && { rmdir /dev/hugepages 2>/dev/null || true; }
  # Put nr_hugepages back only if nobody else changed it in the meantime.
  if [ -n "$old_nr_hugepages" ] && [ "$(cat /proc/sys/vm/nr_hugepages)" = "$set_nr_hugepages" ]; then
    echo "$old_nr_hugepages" 2>/dev/null >/proc/sys/vm/nr_hugepages || true
  fi
}

start_session() {  # start_session NAME: cleanup on exit; $tmp = LOGS (created) or /tmp/vhostd-NAME.XXXXXX
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  if [ -n "$LOGS" ]; then
    mkdir -p "$LOGS" || die "cannot create $LOGS"
    tmp=$(cd "$LOGS" && pwd)
  else
    tmp=$(mktemp -d "/tmp/vhostd-$1.XXXXXX")
  fi
}

# ---- memory for dpdk-testpmd: hugepages when they can be had (as root), --no-huge otherwise ----
# testpmd_memory HUGE (auto or no). With auto, as root with nr_hugepages writable: raises
# nr_hugepages so that 2 GiB are free and mounts hugetlbfs at /dev/hugepages if no mount fits
# (cleanup puts both back). Sets:
#   memory     "hugepages (...)" when testpmd gets them (mem_args -m 256 --huge-dir, hugedir set);
#              empty otherwise
#   huge_fail  when the reservation was tried and failed, "N free, mount 'DIR'" (hugedir
#              empty); empty otherwise
# and, unless testpmd gets hugepages (not tried, or failed), mem_args --no-huge -m 1024
# (testpmd's default mbuf pool alone is 338 MB; with --no-huge -m is all it gets).
testpmd_memory() {
  local page_kb want free
  memory=""
  huge_fail=""
  if [ "$1" = auto ] && [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
    page_kb=$(awk '/^Hugepagesize:/ {print $2}' /proc/meminfo)
    want=$((2 * 1024 * 1024 / ${page_kb:-2048}))          # 2 GiB free: 1024 pages of 2 MiB
    free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
    if [ "${free:-0}" -lt "$want" ]; then
      old_nr_hugepages=$(cat /proc/sys/vm/nr_hugepages)
      set_nr_hugepages=$((old_nr_hugepages + want - ${free:-0}))
      echo "$set_nr_hugepages" 2>/dev/null >/proc/sys/vm/nr_hugepages
      set_nr_hugepages=$(cat /proc/sys/vm/nr_hugepages)   # what the kernel managed
    fi
    hugedir=$(awk -v kb="$page_kb" '$3 == "hugetlbfs" &&
                ($4 !~ /pagesize=/ || $4 ~ ("pagesize=" kb "k") || $4 ~ ("pagesize=" kb/1024 "M")) {print $2; exit}' /proc/mounts)
    if [ -z "$hugedir" ] && grep -qw hugetlbfs /proc/filesystems; then
      [ -e /dev/hugepages ] || { mkdir /dev/hugepages 2>/dev/null && created_hugepages_dir=yes; }
      if mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null; then
        mounted_hugetlbfs=/dev/hugepages
        hugedir=/dev/hugepages
      fi
    fi
    free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
    if [ -n "$hugedir" ] && [ "${free:-0}" -ge $((want / 2)) ]; then
      memory="hugepages ($free free ${page_kb} kB pages, hugetlbfs $hugedir)"
      mem_args=(-m 256 --huge-dir "$hugedir")
    else
      huge_fail="${free:-0} free, mount '${hugedir:-none}'"
      hugedir=""
    fi
  fi
  [ -z "$memory" ] && mem_args=(--no-huge -m 1024)
  return 0
}

# ---- process helpers ----
# Background commands of a non-interactive shell start with SIGINT ignored; give the processes
# the default disposition back so that SIGINT reaches them as it would from a terminal.
if env --default-signal=INT true 2>/dev/null; then sigdefault=(env --default-signal=INT); else sigdefault=(); fi
start_bg() {  # start_bg LOG CMD...: starts CMD in the background, sets $bg_pid
  local log=$1; shift
  "${sigdefault[@]}" "$@" </dev/null >"$log" 2>&1 &
  bg_pid=$!
  pids+=("$bg_pid")
}
stop() {  # stop PID: SIGINT, up to 10 s to exit, then SIGKILL; sets $stop_rc and $stop_killed
  local pid=$1 i
  stop_killed=""
  kill -INT "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; stop_killed=yes; fi
  wait "$pid" 2>/dev/null
  stop_rc=$?
  local left=() p
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || left+=("$p"); done
  pids=("${left[@]}")
}
testpmd() {  # testpmd LOG EAL-ARGS... -- APP-ARGS...: one dpdk-testpmd in the background
  local log=$1; shift
  nproc_started=$((nproc_started + 1))
  local prefix=${PREFIX}n$nproc_started
  prefixes+=("$prefix")
  start_bg "$log" dpdk-testpmd --file-prefix="$prefix" -n 1 --no-pci "${mem_args[@]}" "$@"
}
forget_prefixes() {  # hugepage files and runtime dirs of the testpmds started since the last call
  local p
  for p in "${prefixes[@]}"; do
    [ -n "$hugedir" ] && rm -f "$hugedir/${p}"map_*
    rm -rf "/var/run/dpdk/$p" "${XDG_RUNTIME_DIR:-/nonexistent}/dpdk/$p" "/tmp/dpdk/$p"
  done
  prefixes=()
}

# ---- rates ----
testpmd_rate() {  # testpmd_rate LOG Rx-pps|Tx-pps: Mpps, max over stats periods, summed over ports within a period
  awk -v k="$2:" '/Port statistics/ { if (s > m) m = s; s = 0 }
                  $1 == k { s += $2 }
                  END { if (s > m) m = s; printf "%.2f", m / 1e6 }' "$1"
}
better() {  # better NEW OLD: NEW is a rate and OLD is n/a or a lower rate
  [ "$1" != n/a ] && { [ "$2" = n/a ] || awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
}
