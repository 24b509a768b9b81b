#!/usr/bin/env bash
# perf/e2e.sh: end-to-end packet rates of vhostd-fwd against DPDK's own vhost-user backend.
#
# For each scenario and ring layout it runs two backends one after the other against the same
# frontend, DPDK's net_virtio_user PMD in dpdk-testpmd (the "guest"):
#   DPDK    dpdk-testpmd with net_vhost ports (DPDK's own vhost-user backend, the baseline)
#   vhostd  DIR/apps/vhostd-fwd (doc/vhostd-fwd.md)
# and prints Mpps for both and the ratio vhostd/DPDK, as a table and as CSV (and as a PNG bar
# chart when python3 can import matplotlib).
#
# Pinning (as the DPDK baseline in the anchors is measured, on CPUs 0 and 1): the backend's
# forwarding/data lcore on CPU 1 and its main lcore on CPU 0; the frontend with
# --lcores '0@1,1@0', so its forwarding core is on CPU 0. 64-byte frames. Every rate is the
# maximum over the 2-second stats periods of a run ("--seconds" long, counted from the frontend's
# first stats print).
#
# Scenarios (backend mode / frontend mode) and the headline figure of each, the same rule for
# both backends:
#   g2b   guest->backend   backend rxonly / frontend txonly          backend rx
#   b2g   backend->guest   backend txonly / frontend rxonly          frontend rx
#   loop  one-port loop    backend io (port loops to itself) /
#                          frontend io --tx-first                    frontend rx
#   fwd2  two-port forward backend io over 2 ports (0<->1) /
#                          frontend 2 ports io --tx-first            frontend rx, summed over ports
# The other side's own figure (testpmd's Rx-pps/Tx-pps, vhostd-fwd's "port N: rx X Mpps ... |
# tx Y Mpps" lines) is reported next to it. A cell is "n/a" when its backend is not built, the
# frontend never starts forwarding, the headline rate is 0, or (packed) the frontend ended up on
# a split ring because the backend did not offer VIRTIO_F_RING_PACKED.
#
# Memory: as root, 2 MiB hugepages are reserved (nr_hugepages raised so that 2 GiB are free,
# hugetlbfs mounted at /dev/hugepages if there is no mount; both put back on exit) and both
# testpmds use them; otherwise both run with --no-huge (EAL then backs their memory with a memfd,
# which net_virtio_user shares with the backend).
#
# Usage: perf/e2e.sh [--ring split|packed|both] [--seconds N] [--repeat N] [--scenarios g2b,b2g,loop,fwd2]
#                    [--csv FILE] [--png FILE] [--build DIR] [--native] [--no-huge] [--logs DIR]
#                    [--vhostd-args "ARGS"]
#   --repeat     runs per backend and cell, alternating the backends; the best is kept (default 3)
#   --scenarios  also takes numbers: 1=g2b 2=b2g 3=loop 4=fwd2 (default: all four)
#   --build      where vhostd-fwd is built (default build-perf in the source tree); set up with
#                `meson setup DIR -Dbuildtype=release -Dtests=false [-Dnative=true]` if it is
#                not a build directory yet; `ninja -C DIR apps/vhostd-fwd` runs every time
#   --csv/--png  also write the CSV / the chart there (default chart: DIR/e2e.png)
#   --logs       keep every process's log in DIR (default: a temporary directory, removed)
#   --vhostd-args more vhostd-fwd options, word-split (e.g. "--poll-mode adaptive")
# Needs dpdk-testpmd (Debian: dpdk), meson and ninja, CPUs 0 and 1.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=perf/lib.sh
. "$ROOT/perf/lib.sh" || { echo "e2e: error: cannot read $ROOT/perf/lib.sh" >&2; exit 1; }
RING="split"
SECONDS_PER_RUN=8
REPEAT=3
SCENARIOS=g2b,b2g,loop,fwd2
CSV_FILE=""
PNG_FILE=""
BUILD=$ROOT/build-perf
NATIVE=false
HUGE=auto
LOGS=""
VHOSTD_ARGS=()
STATS_PERIOD=2
PKT_BYTES=64
START_TIMEOUT=30     # seconds for a backend to listen / a frontend to start forwarding

say() { echo "e2e: $*" >&2; }
die() { echo "e2e: error: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage:/,/^# Needs/s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --ring) RING=${2:?}; shift ;;
    --seconds) SECONDS_PER_RUN=${2:?}; shift ;;
    --repeat) REPEAT=${2:?}; shift ;;
    --scenarios) SCENARIOS=${2:?}; shift ;;
    --csv) CSV_FILE=${2:?}; shift ;;
    --png) PNG_FILE=${2:?}; shift ;;
    --build) BUILD=${2:?}; shift ;;
    --native) NATIVE=true ;;
    --no-huge) HUGE=no ;;
    --logs) LOGS=${2:?}; shift ;;
    --vhostd-args) read -ra VHOSTD_ARGS <<<"${2?}"; shift ;;
    -h|--help) usage 0 ;;
    *) echo "e2e: unknown option: $1" >&2; usage 2 ;;
  esac
  shift
done
case $RING in split|packed) RINGS=("$RING") ;; both) RINGS=(split packed) ;; *) die "--ring: split, packed or both" ;; esac
[[ $SECONDS_PER_RUN =~ ^[1-9][0-9]*$ ]] || die "--seconds: a positive integer"
SCENS=()
IFS=, read -ra list <<<"$SCENARIOS"
for s in "${list[@]}"; do
  case $s in
    1|g2b) SCENS+=(g2b) ;; 2|b2g) SCENS+=(b2g) ;; 3|loop) SCENS+=(loop) ;; 4|fwd2) SCENS+=(fwd2) ;;
    *) die "--scenarios: unknown scenario '$s' (g2b, b2g, loop, fwd2 or 1-4)" ;;
  esac
done
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found (Debian: apt-get install dpdk)"
[ -z "$PNG_FILE" ] && PNG_FILE=$BUILD/e2e.png

# ---- clean-up of everything this script starts or changes, whatever happens (perf/lib.sh) ----
PREFIX=e2e$$             # testpmd --file-prefix stem; one per process: ${PREFIX}n<k>
start_session e2e

# ---- vhostd-fwd: build (or update) it; the vhostd column is n/a when there is none ----
vhostd_bin=$BUILD/apps/vhostd-fwd
build_note=""
build_log=$tmp/build.log
if [ ! -f "$BUILD/build.ninja" ]; then
  say "setting up $BUILD (release, native $NATIVE)"
  meson setup "$BUILD" "$ROOT" -Dbuildtype=release -Dtests=false -Dnative="$NATIVE" >>"$build_log" 2>&1 ||
    build_note="meson setup failed"
elif [ "$NATIVE" = true ]; then
  meson configure "$BUILD" -Dnative=true >>"$build_log" 2>&1 || build_note="meson configure failed"
fi
if [ -z "$build_note" ]; then
  say "building $vhostd_bin"
  ninja -C "$BUILD" apps/vhostd-fwd >>"$build_log" 2>&1 || build_note="ninja failed"
fi
if [ -n "$build_note" ]; then
  tail -n 15 "$build_log" | sed 's/^/  | /' >&2
  if [ -x "$vhostd_bin" ]; then
    say "warning: $build_note; using the existing $vhostd_bin (it may be stale)"
    build_note="$build_note: stale binary"
  else
    say "warning: $build_note; no $vhostd_bin, the vhostd column will be n/a"
  fi
fi
[ -x "$vhostd_bin" ] || { vhostd_bin=""; build_note=${build_note:-not built}; }
buildtype=unknown
native=unknown
if [ -f "$BUILD/build.ninja" ]; then
  read -r buildtype native < <(meson introspect "$BUILD" --buildoptions 2>/dev/null | python3 -c '
import json, sys
o = {x["name"]: x["value"] for x in json.load(sys.stdin)}
print(o.get("buildtype", "unknown"), str(o.get("native", "unknown")).lower())' 2>/dev/null)
fi
buildtype=${buildtype:-unknown}
native=${native:-unknown}
commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
dpdk_version=$(dpkg-query -W -f='${Version}' dpdk 2>/dev/null || echo unknown)
build_desc="$BUILD (buildtype $buildtype, native $native, commit $commit${build_note:+, $build_note})"

# ---- memory: hugepages when they can be had (as root), --no-huge otherwise (perf/lib.sh) ----
testpmd_memory "$HUGE"
if [ -n "$huge_fail" ]; then
  memory="no-huge (hugepages could not be reserved: $huge_fail)"
elif [ -z "$memory" ]; then
  if [ "$HUGE" = no ]; then memory="no-huge (--no-huge given)"; else memory="no-huge (not root, or nr_hugepages not writable)"; fi
fi
memory_mode=${memory%% *}
say "memory: $memory"
say "vhostd-fwd: ${vhostd_bin:-none} ($build_desc)"

# ---- rates (testpmd_rate: perf/lib.sh) ----
# Rates in Mpps, max over stats periods, summed over ports within a period.
vhostd_rate() {  # vhostd_rate LOG rx|tx      ("port N: rx X Mpps ... | tx Y Mpps ...")
  awk -v k="$2" '/^port [0-9]+: rx [0-9.]+ Mpps/ {
                   p = $2 + 0; if (n && p <= last) { if (s > m) m = s; s = 0 }
                   last = p; n = 1
                   for (i = 3; i < NF; i++) if ($i == k) { s += $(i + 1); break } }
                 END { if (s > m) m = s; printf "%.2f", m }' "$1"
}

# ---- one run: one backend, one ring layout, one scenario ----
# Sets fe_rx fe_tx be_rx be_tx (Mpps or n/a), headline, note (empty when all went well) and
# fe_path (the frontend's Rx/Tx functions, e.g. "inorder Rx;inorder Tx").
run_one() {
  local backend=$1 ring=$2 scen=$3
  local dir=$tmp/$ring-$scen-$backend nports=1 be_mode fe_mode txfirst=() i s vu_extra=""
  mkdir -p "$dir"
  case $scen in
    g2b) be_mode=rxonly; fe_mode=txonly ;;
    b2g) be_mode=txonly; fe_mode=rxonly ;;
    loop) be_mode=io; fe_mode=io; txfirst=(--tx-first) ;;
    fwd2) be_mode=io; fe_mode=io; txfirst=(--tx-first); nports=2 ;;
  esac
  [ "$ring" = packed ] && vu_extra=,packed_vq=1
  fe_rx=n/a; fe_tx=n/a; be_rx=n/a; be_tx=n/a; headline=n/a; note=""; fe_path=""
  prefixes=()

  # The backend, listening on one socket per port.
  local be_args=() fe_args=() socks=()
  for ((i = 0; i < nports; i++)); do socks+=("$dir/s$i"); done
  if [ "$backend" = dpdk ]; then
    for ((i = 0; i < nports; i++)); do be_args+=(--vdev "net_vhost$i,iface=${socks[i]},queues=1"); done
    testpmd "$dir/backend.log" -l 0,1 "${be_args[@]}" -- --nb-cores=1 --forward-mode="$be_mode" \
      --txpkts="$PKT_BYTES" --stats-period "$STATS_PERIOD"
  else
    [ -n "$vhostd_bin" ] || { note=$build_note; return; }
    for ((i = 0; i < nports; i++)); do be_args+=(--port "path=${socks[i]}"); done
    [ "$be_mode" = txonly ] && be_args+=(--txpkts "$PKT_BYTES")
    start_bg "$dir/backend.log" "$vhostd_bin" -l 0,1 --main-lcore 0 "${be_args[@]}" --fwd "$be_mode" \
      --stats-period "$STATS_PERIOD" "${VHOSTD_ARGS[@]}"
  fi
  local be_pid=$bg_pid ready="" deadline=$((SECONDS + START_TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$be_pid" 2>/dev/null || break
    ready=yes
    for s in "${socks[@]}"; do [ -S "$s" ] || ready=""; done
    [ "$backend" = vhostd ] && ! grep -aqs '^vhostd-fwd: ready' "$dir/backend.log" && ready=""
    [ -n "$ready" ] && break
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    if kill -0 "$be_pid" 2>/dev/null; then
      stop "$be_pid"
      note="backend not listening within ${START_TIMEOUT} s"
    else
      stop "$be_pid"
      note="backend exited at start (exit status $stop_rc)"
    fi
    tail -n 8 "$dir/backend.log" | sed "s/^/  | $backend: /" >&2
    forget_prefixes
    return
  fi

  # The frontend: measure for --seconds from its first stats print.
  for ((i = 0; i < nports; i++)); do fe_args+=(--vdev "net_virtio_user$i,path=${socks[i]},queues=1$vu_extra"); done
  testpmd "$dir/frontend.log" --lcores '0@1,1@0' --single-file-segments --log-level=pmd.net.virtio.init:info \
    "${fe_args[@]}" -- --nb-cores=1 --forward-mode="$fe_mode" --txpkts="$PKT_BYTES" "${txfirst[@]}" \
    --stats-period "$STATS_PERIOD"
  local fe_pid=$bg_pid started="" fe_exited=""
  deadline=$((SECONDS + START_TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    grep -aqs 'Port statistics' "$dir/frontend.log" && { started=yes; break; }
    kill -0 "$fe_pid" 2>/dev/null || { fe_exited=yes; break; }
    kill -0 "$be_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$started" ] && sleep "$SECONDS_PER_RUN"
  local be_died=""
  kill -0 "$be_pid" 2>/dev/null || be_died=yes
  stop "$fe_pid"
  local fe_rc=$stop_rc
  stop "$be_pid"
  local be_rc=$stop_rc be_killed=$stop_killed
  [ -n "$be_died" ] && note="backend died during the run (exit status $be_rc)"
  forget_prefixes

  if [ -z "$started" ]; then
    if [ -n "$fe_exited" ]; then
      note="${note:-frontend exited before forwarding (exit status $fe_rc)}"
    else
      note="${note:-frontend did not start forwarding within ${START_TIMEOUT} s}"
    fi
    tail -n 8 "$dir/frontend.log" | sed "s/^/  | frontend: /" >&2
  fi
  fe_rx=$(testpmd_rate "$dir/frontend.log" Rx-pps)
  # The frontend's data path follows the features negotiated (in-order, mergeable, packed).
  fe_path=$(grep -ao 'virtio: using [a-z ]* [RT]x path on port 0' "$dir/frontend.log" |
            sed 's/virtio: using //; s/ path on port 0//' | sort -u | paste -sd ';' -)
  fe_tx=$(testpmd_rate "$dir/frontend.log" Tx-pps)
  if [ "$backend" = dpdk ]; then
    be_rx=$(testpmd_rate "$dir/backend.log" Rx-pps)
    be_tx=$(testpmd_rate "$dir/backend.log" Tx-pps)
  else
    be_rx=$(vhostd_rate "$dir/backend.log" rx)
    be_tx=$(vhostd_rate "$dir/backend.log" tx)
    # The output contract: stats lines, exit 0 on SIGINT, one totals line per port, sockets gone.
    local problems=""
    grep -aq '^port [0-9]*: rx [0-9.]* Mpps' "$dir/backend.log" || problems+="; no stats lines"
    [ -n "$be_killed" ] && problems+="; did not exit within 10 s of SIGINT"
    [ -z "$be_killed" ] && [ -z "$be_died" ] && [ "$be_rc" -ne 0 ] && problems+="; exit status $be_rc after SIGINT"
    [ "$(grep -ac '^total port [0-9]*: rx-packets' "$dir/backend.log")" -eq "$nports" ] ||
      problems+="; no totals line per port"
    for s in "${socks[@]}"; do [ -e "$s" ] && problems+="; left socket $(basename "$s")"; done
    if [ -n "$problems" ]; then
      note="${note:+$note; }vhostd-fwd: ${problems#; }"
      tail -n 8 "$dir/backend.log" | sed 's/^/  | vhostd-fwd: /' >&2
    fi
  fi
  case $scen in g2b) headline=$be_rx ;; *) headline=$fe_rx ;; esac
  if [ -n "$started" ] && [ "$headline" = 0.00 ]; then
    note="${note:+$note; }0 pps"
    headline=n/a
  fi
  if [ "$ring" = packed ] && [ -n "$started" ] && ! grep -aq 'using packed ring' "$dir/frontend.log"; then
    note="${note:+$note; }packed ring not negotiated (ran split)"
    headline=n/a
  fi
  [ -z "$started" ] && headline=n/a
}

# ---- all runs ----
pair() { if [ "$1" = n/a ]; then echo n/a; else echo "$1/$2"; fi; }  # "rx/tx"
headline_name() { case $1 in g2b) echo "backend rx" ;; fwd2) echo "frontend rx (sum)" ;; *) echo "frontend rx" ;; esac; }
scen_name() { case $1 in g2b) echo "guest->backend" ;; b2g) echo "backend->guest" ;; loop) echo "one-port loop" ;; fwd2) echo "two-port fwd" ;; esac; }
modes() { case $1 in g2b) echo "rxonly txonly" ;; b2g) echo "txonly rxonly" ;; *) echo "io io" ;; esac; }
csv=$tmp/e2e.csv
echo "ring,scenario,backend_mode,frontend_mode,headline,dpdk_mpps,vhostd_mpps,vhostd_per_dpdk,dpdk_fe_rx,dpdk_fe_tx,dpdk_be_rx,dpdk_be_tx,vhostd_fe_rx,vhostd_fe_tx,vhostd_be_rx,vhostd_be_tx,dpdk_note,vhostd_note,dpdk_fe_path,vhostd_fe_path,build_dir,buildtype,native,commit,memory,seconds,pkt_bytes,dpdk_version" >"$csv"
rows=()
notes=()
row() { printf '%-15s %-7s %-18s %6s %6s %6s   %-11s %-11s   %-11s %-11s\n' "$@"; }
for ring in "${RINGS[@]}"; do
  for scen in "${SCENS[@]}"; do
    # --repeat runs of each backend, alternating so both see the same machine; the best run of
    # each is kept (these closed loops are bimodal on a 2-vCPU VM: a run lands in a fast or a
    # slow phase for its whole length, for either backend).
    d=(n/a n/a n/a n/a n/a); d_note=""; d_path=""
    v=(n/a n/a n/a n/a n/a); v_note=""; v_path=""
    for ((rep = 1; rep <= REPEAT; rep++)); do
      say "$ring $scen: DPDK net_vhost (run $rep/$REPEAT)"
      run_one dpdk "$ring" "$scen"
      say "  $headline Mpps (fe rx/tx $fe_rx/$fe_tx, be rx/tx $be_rx/$be_tx; frontend path: ${fe_path:-?})${note:+: $note}"
      if better "$headline" "${d[0]}" || [ "$rep" -eq 1 ]; then
        d=("$headline" "$fe_rx" "$fe_tx" "$be_rx" "$be_tx"); d_note=$note; d_path=$fe_path
      fi
      say "$ring $scen: vhostd-fwd (run $rep/$REPEAT)"
      run_one vhostd "$ring" "$scen"
      say "  $headline Mpps (fe rx/tx $fe_rx/$fe_tx, be rx/tx $be_rx/$be_tx; frontend path: ${fe_path:-?})${note:+: $note}"
      if better "$headline" "${v[0]}" || [ "$rep" -eq 1 ]; then
        v=("$headline" "$fe_rx" "$fe_tx" "$be_rx" "$be_tx"); v_note=$note; v_path=$fe_path
      fi
    done
    ratio=n/a
    [ "${d[0]}" != n/a ] && [ "${v[0]}" != n/a ] && ratio=$(awk -v a="${v[0]}" -v b="${d[0]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    read -r bm fm < <(modes "$scen")
    echo "$ring,$scen,$bm,$fm,$(headline_name "$scen"),${d[0]},${v[0]},$ratio,${d[1]},${d[2]},${d[3]},${d[4]},${v[1]},${v[2]},${v[3]},${v[4]},${d_note//,/;},${v_note//,/;},$d_path,$v_path,${BUILD//,/;},$buildtype,$native,$commit,$memory_mode,$SECONDS_PER_RUN,$PKT_BYTES,$dpdk_version" >>"$csv"
    rows+=("$(row "$(scen_name "$scen")" "$ring" "$(headline_name "$scen")" \
      "${d[0]}" "${v[0]}" "$ratio" "$(pair "${d[1]}" "${d[2]}")" "$(pair "${d[3]}" "${d[4]}")" \
      "$(pair "${v[1]}" "${v[2]}")" "$(pair "${v[3]}" "${v[4]}")")")
    [ -n "$d_note" ] && notes+=("$ring $scen, DPDK: $d_note")
    [ -n "$v_note" ] && notes+=("$ring $scen, vhostd: $v_note")
    [ "$ratio" != n/a ] && [ "$d_path" != "$v_path" ] &&
      notes+=("$ring $scen: the frontend ran different paths: DPDK '$d_path', vhostd '$v_path'")
  done
done

# ---- results ----
echo
echo "vhostd-fwd vs DPDK net_vhost, each against DPDK net_virtio_user (dpdk-testpmd $dpdk_version)"
echo "${PKT_BYTES} B frames, ${SECONDS_PER_RUN} s per run, best of ${REPEAT} runs per backend, Mpps = max over ${STATS_PERIOD}-s periods; backend on CPU 1 (main lcore CPU 0), frontend on CPU 0"
echo "vhostd-fwd build: $build_desc${VHOSTD_ARGS[*]:+; options: ${VHOSTD_ARGS[*]}}"
echo "memory: $memory"
echo
row scenario ring headline DPDK vhostd ratio "DPDK fe" "DPDK be" "vhostd fe" "vhostd be"
row "" "" "" Mpps Mpps v/D rx/tx rx/tx rx/tx rx/tx
printf '%s\n' "${rows[@]}"
for n in "${notes[@]}"; do echo "  note: $n"; done
echo
cat "$csv"
[ -n "$CSV_FILE" ] && cp "$csv" "$CSV_FILE" && say "CSV written to $CSV_FILE"

# ---- chart, when matplotlib is there ----
if python3 -c 'import matplotlib' 2>/dev/null; then
  if python3 - "$csv" "$PNG_FILE" "vhostd-fwd ($buildtype, native $native) vs DPDK net_vhost, $memory_mode, ${PKT_BYTES} B" <<'EOF'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1])))
val = lambda s: float(s) if s not in ("", "n/a") else 0.0
labels = [f'{r["scenario"]}\n{r["ring"]}' for r in rows]
x = range(len(rows))
fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
ax.bar([i - 0.2 for i in x], [val(r["dpdk_mpps"]) for r in rows], 0.4, label="DPDK net_vhost")
ax.bar([i + 0.2 for i in x], [val(r["vhostd_mpps"]) for r in rows], 0.4, label="vhostd-fwd")
for i, r in zip(x, rows):
    top = max(val(r["dpdk_mpps"]), val(r["vhostd_mpps"]))
    ax.annotate(r["vhostd_per_dpdk"] if r["vhostd_per_dpdk"] == "n/a" else f'{r["vhostd_per_dpdk"]}x',
                (i, top), ha="center", va="bottom", fontsize=8)
ax.set_xticks(list(x))
ax.set_xticklabels(labels)
ax.set_ylabel("Mpps")
ax.set_title(sys.argv[3], fontsize=9)
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
EOF
  then
    say "chart written to $PNG_FILE"
  fi
fi
