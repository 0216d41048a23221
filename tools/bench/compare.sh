#!/usr/bin/env bash
# Side-by-side benchmark: Target against its peers on this machine, in one run.
#
#   make bench                      (builds bin/target first)
#   bash tools/bench/compare.sh     (uses bin/target as it is)
#
# NBD (fio --ioengine=nbd): Target, nbdkit memory, nbdkit file, qemu-nbd --cache=none --aio=native,
# plus the raw back-end disk (fio libaio O_DIRECT on a file in /tmp) as the physical reference and
# nbdkit null (keeps nothing, reads zeros) as the ceiling of the fio client itself.
# iSCSI (qemu-img bench, iscsi-perf): tgtd with a file backing store, and Target when
# `target serve --help` lists --iscsi.
# Every server binds to 127.0.0.1 on a free port, runs from a fresh directory under /tmp, and is
# stopped on exit (also on Ctrl-C). Runs are interleaved: each round runs every workload on every
# server in turn (the server order rotates per round); the tables report medians over rounds.
#
# Settings (environment):
#   ROUNDS=3         rounds (medians over them)
#   RUNTIME=8        seconds per measured job (fio runtime, iscsi-perf time; qemu-img bench's
#                    request count is sized to take about this long)
#   RAMP=1           fio ramp_time in seconds (not measured)
#   SIZE=1g          working set per job (and the size prefilled before reads)
#   VOLUME_SIZE=4G   size of every volume / export / backing file
#   POOL_SIZE=8G     Target pool size
#   TARGET_BIN=bin/target        the Target binary to measure
#   TARGET_ARGS=""   extra `target serve` arguments (e.g. "--write-mode wt")
#   SERVERS=target,nbdkit-memory,nbdkit-file,qemu-nbd,nbdkit-null,raw-disk,raw-disk-sync,tgtd
#                    raw-disk-sync: the raw file with an fdatasync after every 32 writes, sequential
#                    writes only (what a log durable every 32 MiB pays: Target's destage flushed each
#                    group of up to 32 MiB until 2026-11-23; now only with --journal-flush-ms 0)
#   WORKLOADS=randwrite,randread,seqwrite,seqwrite-dup,dedup50,mix7030,qimg-write,qimg-read,iperf-randread
#   SETTLE_MAX=30    after each job, wait up to this many seconds for the server to go idle
#                    (Target destages its write cache); that CPU time is counted
#   OUT=/tmp/target-bench-<date>.md   the markdown report (results also in <OUT>.jsonl)
#   KEEP=1           keep the work directory (logs, fio JSON) instead of deleting it
#   BENCH_DIR=/tmp/...   work directory (default: a new mktemp -d under /tmp)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-8}
RAMP=${RAMP:-1}
SIZE=${SIZE:-1g}
VOLUME_SIZE=${VOLUME_SIZE:-4G}
POOL_SIZE=${POOL_SIZE:-8G}
TARGET_BIN=${TARGET_BIN:-$repo/bin/target}
TARGET_ARGS=${TARGET_ARGS:-}
SERVERS=${SERVERS:-target,nbdkit-memory,nbdkit-file,qemu-nbd,nbdkit-null,raw-disk,raw-disk-sync,tgtd}
WORKLOADS=${WORKLOADS:-randwrite,randread,seqwrite,seqwrite-dup,dedup50,mix7030,qimg-write,qimg-read,iperf-randread}
SETTLE_MAX=${SETTLE_MAX:-30}
KEEP=${KEEP:-0}
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
OUT=${OUT:-/tmp/target-bench-$(date +%Y%m%d-%H%M%S).md}

report=(python3 "$here/report.py")
clk_tck=$(getconf CLK_TCK)
size_bytes=$(numfmt --from=iec "${SIZE^^}")
volume_bytes=$(numfmt --from=iec "${VOLUME_SIZE^^}")

die() { echo "compare.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*"; }

for tool in fio python3 numfmt; do
  command -v "$tool" >/dev/null || die "$tool is missing; run: bash tools/install-deps.sh"
done
[[ -x "$TARGET_BIN" ]] || die "no Target binary at $TARGET_BIN; run 'make build' or set TARGET_BIN"

work=${BENCH_DIR:-$(mktemp -d /tmp/target-bench-XXXXXX)}
mkdir -p "$work/out"
results="$OUT.jsonl"
: >"$results"

declare -A PID=()          # server name -> process id (the server process itself)
declare -A URI=()          # NBD server -> nbd:// URI
declare -A ISCSI_URL=()    # iSCSI server -> iscsi://127.0.0.1:PORT/IQN/LUN
declare -A ISCSI_BS=()     # iSCSI server -> logical block size
declare -A ISCSI_COUNT=()  # iSCSI server -> qemu-img bench request count
declare -A SYNC_FILE=()    # server -> backing file to fsync after write jobs (page-cache servers)
declare -A CMDLINE=()      # server -> how it was started (for the report)
helpers=()
tgtd_ctl=""

# ---------------------------------------------------------------- cleanup

stop_pid() {  # stop_pid PID: TERM, wait up to 10 s, then KILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  trap - EXIT INT TERM
  local pid name
  for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null; done
  if [[ -n "$tgtd_ctl" && -n "${PID[tgtd]:-}" ]]; then
    # tgtd ignores SIGTERM; it exits when asked to through its control socket.
    tgtadm -C "$tgtd_ctl" --op update --mode sys --name State -v offline >/dev/null 2>&1
    tgtadm -C "$tgtd_ctl" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1
    tgtadm -C "$tgtd_ctl" --op delete --mode system >/dev/null 2>&1
    for ((i = 0; i < 50; i++)); do kill -0 "${PID[tgtd]}" 2>/dev/null || break; sleep 0.1; done
  fi
  for name in "${!PID[@]}"; do
    stop_pid "${PID[$name]}"
  done
  [[ -n "$tgtd_ctl" ]] && rm -f "/var/run/tgtd/socket.$tgtd_ctl" "/var/run/tgtd/socket.$tgtd_ctl.lock"
  if [[ "$KEEP" == 1 ]]; then
    echo "compare.sh: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'echo; echo "compare.sh: interrupted, stopping servers"; exit 130' INT TERM

# ---------------------------------------------------------------- helpers

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {  # wait_port PORT PID LOGFILE: until 127.0.0.1:PORT accepts, or the server died
  local port=$1 pid=$2 logfile=$3 i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "server exited:"; tail -5 "$logfile"; return 1; }
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' \
      "$port" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $port did not open in 30 s"; return 1
}

cpu_ticks() {  # utime + stime of a process, in clock ticks (-1 if it is gone)
  local line rest
  read -r line 2>/dev/null <"/proc/$1/stat" || { echo -1; return; }
  rest=${line##*) }
  # shellcheck disable=SC2086
  set -- $rest
  echo $(( ${12} + ${13} ))
}

settle() {  # wait until the server uses under ~4% of a core over 0.5 s (at most SETTLE_MAX s)
  local pid=$1 a b deadline=$((SECONDS + SETTLE_MAX))
  a=$(cpu_ticks "$pid")
  while ((SECONDS < deadline)); do
    sleep 0.5
    b=$(cpu_ticks "$pid")
    ((b < 0 || b - a <= clk_tck / 50)) && return 0
    a=$b
  done
}

loadavg() { cut -d' ' -f1 /proc/loadavg; }

in_list() { [[ ",$1," == *",$2,"* ]]; }

skip() {  # skip GROUP SERVER REASON
  log "$1/$2 skipped: $3"
  "${report[@]}" skip --results "$results" --group "$1" --server "$2" --reason "$3"
}

# ---------------------------------------------------------------- servers

target_has_iscsi=0
if "$TARGET_BIN" serve --help 2>&1 | grep -q -- '--iscsi'; then target_has_iscsi=1; fi

start_target() {
  local nport aport iport="" args logfile="$work/target.log" i
  nport=$(free_port); aport=$(free_port)
  args=(serve --pool "$work/target-pool" --pool-size "$POOL_SIZE" --volume "bench:$VOLUME_SIZE"
        --nbd "127.0.0.1:$nport" --admin "127.0.0.1:$aport")
  if in_list "$SERVERS,$WORKLOADS" target && ((target_has_iscsi)); then
    iport=$(free_port)
    args+=(--iscsi "127.0.0.1:$iport")
  fi
  # shellcheck disable=SC2206
  args+=($TARGET_ARGS)
  "$TARGET_BIN" "${args[@]}" >"$logfile" 2>&1 &
  PID[target]=$!
  CMDLINE[target]="target ${args[*]}"
  CMDLINE[target]=$(sed -E 's/127\.0\.0\.1:[0-9]+/127.0.0.1:PORT/g; s#'"$work"'#WORKDIR#g' <<<"${CMDLINE[target]}")
  for ((i = 0; i < 600; i++)); do
    grep -q 'listening nbd=' "$logfile" && break
    kill -0 "${PID[target]}" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q 'listening nbd=' "$logfile"; then
    echo "Target did not start:"; tail -20 "$logfile"; return 1
  fi
  URI[target]="nbd://127.0.0.1:$nport/bench"
  target_write_mode=$(sed -n 's/.*write mode \([a-z0-9-]*\).*/\1/p' "$logfile" | head -1)
  target_read_cache=$(sed -n 's/.*, read cache \([0-9.]* [KMGT]*i*B\).*/\1/p' "$logfile" | head -1)
  if [[ -n "$iport" ]]; then
    start_target_iscsi "$iport" || true
  fi
}

start_target_iscsi() {  # find the IQN and the first disk LUN Target serves
  local port=$1 listing iqn lun
  wait_port "$port" "${PID[target]}" "$work/target.log" >/dev/null || return 1
  listing=$(timeout 20 iscsi-ls -s "iscsi://127.0.0.1:$port" 2>&1)
  iqn=$(sed -n 's/^Target:\([^ ]*\).*/\1/p' <<<"$listing" | head -1)
  lun=$(sed -n 's/^Lun:\([0-9]*\) *Type:DIRECT_ACCESS.*/\1/p' <<<"$listing" | head -1)
  if [[ -z "$iqn" || -z "$lun" ]]; then
    target_iscsi_error="Target lists --iscsi but iscsi-ls found no disk LUN: $(head -c 200 <<<"$listing")"
    return 1
  fi
  ISCSI_URL[target]="iscsi://127.0.0.1:$port/$iqn/$lun"
}

start_nbdkit() {  # start_nbdkit NAME PLUGIN ARGS...
  local name=$1 port logfile="$work/$1.log"; shift
  port=$(free_port)
  nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$port" "$@" >"$logfile" 2>&1 &
  PID[$name]=$!
  CMDLINE[$name]="nbdkit -f -i 127.0.0.1 -p PORT ${*//$work/WORKDIR}"
  wait_port "$port" "${PID[$name]}" "$logfile" || return 1
  URI[$name]="nbd://127.0.0.1:$port/"
}

start_qemu_nbd() {
  local port file="$work/qemu-nbd.img" logfile="$work/qemu-nbd.log"
  port=$(free_port)
  truncate -s "$VOLUME_SIZE" "$file"
  qemu-nbd -f raw --cache=none --aio=native -x bench -b 127.0.0.1 -p "$port" -t -e 16 "$file" \
    >"$logfile" 2>&1 &
  PID[qemu-nbd]=$!
  CMDLINE[qemu-nbd]="qemu-nbd -f raw --cache=none --aio=native -x bench -b 127.0.0.1 -p PORT -t -e 16 FILE"
  wait_port "$port" "${PID[qemu-nbd]}" "$logfile" || return 1
  URI[qemu-nbd]="nbd://127.0.0.1:$port/bench"
}

start_tgtd() {
  local port file="$work/tgtd-lun.img" logfile="$work/tgtd.log" iqn="iqn.2026-01.target-bench:tgtd" i
  port=$(free_port)
  # The LUN is the working set, written in full first so no read lands on a hole.
  fio --name=fill --ioengine=psync --rw=write --bs=1m --size="$SIZE" --refill_buffers \
    --filename="$file" --output=/dev/null >/dev/null 2>&1 || { echo "could not write $file"; return 1; }
  # tgtd and tgtadm take a control port (-C) of at most 32767.
  tgtd_ctl=$((20000 + RANDOM % 12000))
  while [[ -e /var/run/tgtd/socket.$tgtd_ctl ]]; do tgtd_ctl=$((20000 + RANDOM % 12000)); done
  tgtd -f -C "$tgtd_ctl" --iscsi "portal=127.0.0.1:$port" >"$logfile" 2>&1 &
  PID[tgtd]=$!
  CMDLINE[tgtd]="tgtd -f -C CTL --iscsi portal=127.0.0.1:PORT; LUN 1 = $SIZE file (backing store rdwr)"
  for ((i = 0; i < 100; i++)); do
    tgtadm -C "$tgtd_ctl" --op show --mode sys >/dev/null 2>&1 && break
    kill -0 "${PID[tgtd]}" 2>/dev/null || break
    sleep 0.1
  done
  tgtadm -C "$tgtd_ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn" &&
    tgtadm -C "$tgtd_ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$file" &&
    tgtadm -C "$tgtd_ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL || { tail -5 "$logfile"; return 1; }
  wait_port "$port" "${PID[tgtd]}" "$logfile" || return 1
  ISCSI_URL[tgtd]="iscsi://127.0.0.1:$port/$iqn/1"
  SYNC_FILE[tgtd]=$file
}

# ---------------------------------------------------------------- workloads

fio_common=(--size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --output-format=json)
declare -A FIO_ARGS=(
  [randwrite]="--rw=randwrite --bs=4k --iodepth=32 --refill_buffers --randrepeat=0 --norandommap"
  [randread]="--rw=randread --bs=4k --iodepth=32 --randrepeat=0 --norandommap"
  [seqwrite]="--rw=write --bs=1m --iodepth=8 --refill_buffers --randrepeat=0"
  [seqwrite-dup]="--rw=write --bs=1m --iodepth=8 --buffer_pattern=0x54415247"
  [dedup50]="--rw=randwrite --bs=4k --iodepth=32 --refill_buffers --randrepeat=0 --norandommap --dedupe_percentage=50"
  [mix7030]="--rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --refill_buffers --randrepeat=0 --norandommap"
)
nbd_workloads=() iscsi_workloads=()
for w in randwrite randread seqwrite seqwrite-dup dedup50 mix7030; do in_list "$WORKLOADS" "$w" && nbd_workloads+=("$w"); done
for w in qimg-write qimg-read iperf-randread; do in_list "$WORKLOADS" "$w" && iscsi_workloads+=("$w"); done

# The raw-disk references: each its own file, and the sync one an fdatasync every 32 writes.
declare -A RAW_FILE=([raw-disk]="$work/raw.img" [raw-disk-sync]="$work/raw-sync.img")
declare -A RAW_EXTRA=([raw-disk]="" [raw-disk-sync]="--fdatasync=32")

engine_args() {  # the fio engine/target arguments of a server
  if [[ -n "${RAW_FILE[$1]:-}" ]]; then
    echo "--ioengine=libaio --direct=1 --filename=${RAW_FILE[$1]} ${RAW_EXTRA[$1]}"
  else
    echo "--ioengine=nbd --uri=${URI[$1]}"
  fi
}

measure() {  # measure GROUP SERVER WORKLOAD ROUND
  local group=$1 server=$2 w=$3 round=$4 pid=${PID[$2]:-} out="$work/out/$4-$3-$2" load c0 c1 ticks=""
  local sampler="" rc
  load=$(loadavg)
  if [[ -n "$pid" ]]; then
    # Server CPU is counted from the end of the ramp (fio) or the start (others) ...
    if [[ $group == nbd ]]; then
      (sleep "$RAMP"; cpu_ticks "$pid" >"$out.cpu0") &
      sampler=$!; helpers+=("$sampler")
    else
      cpu_ticks "$pid" >"$out.cpu0"
    fi
  fi
  case $w in
    qimg-write|qimg-read)
      local wflag=(); [[ $w == qimg-write ]] && wflag=(-w)
      timeout $((RUNTIME * 10 + 60)) qemu-img bench -f raw -t none "${wflag[@]}" -c "${ISCSI_COUNT[$server]}" \
        -d 32 -s 4096 "${ISCSI_URL[$server]}" >"$out" 2>&1 ;;
    iperf-randread)
      timeout $((RUNTIME + 60)) iscsi-perf -m 32 -b $((4096 / ISCSI_BS[$server])) -r -t "$RUNTIME" \
        "${ISCSI_URL[$server]}" >"$out" 2>&1 ;;
    *)
      # shellcheck disable=SC2046,SC2086
      fio --name="$w" $(engine_args "$server") ${FIO_ARGS[$w]} "${fio_common[@]}" >"$out" 2>"$out.err" ;;
  esac
  rc=$?
  ((rc == 130)) && exit 130
  [[ -n "$sampler" ]] && wait "$sampler" 2>/dev/null
  if [[ -n "$pid" ]]; then
    # ... to the moment it is idle again after the job (Target's destage is part of the cost).
    settle "$pid"
    c1=$(cpu_ticks "$pid"); c0=$(cat "$out.cpu0" 2>/dev/null || echo -1)
    ((c0 >= 0 && c1 >= 0)) && ticks=$((c1 - c0))
  fi
  # Page-cache servers: push their dirty pages out now, not during the next server's turn.
  if [[ -n "${SYNC_FILE[$server]:-}" && $w != *read* ]]; then sync "${SYNC_FILE[$server]}"; fi
  local kind=fio
  case $w in qimg-*) kind=qemu-img ;; iperf-*) kind=iscsi-perf ;; esac
  "${report[@]}" add --results "$results" --group "$group" --server "$server" --workload "$w" \
    --round "$round" --kind "$kind" --file "$out" --count "${ISCSI_COUNT[$server]:-0}" --bs 4096 \
    --runtime "$RUNTIME" ${ticks:+--cpu-ticks "$ticks"} --clk-tck "$clk_tck" --load "$load"
}

prefill_nbd() {  # write the working set with unique data so reads hit stored data
  local server=$1 span=$SIZE
  # Target's iSCSI LUN is the whole volume and iscsi-perf reads all of it: fill it all then.
  [[ $server == target && -n "${ISCSI_URL[target]:-}" ]] && span=$VOLUME_SIZE
  [[ -n "${RAW_FILE[$server]:-}" ]] && fallocate -l "$SIZE" "${RAW_FILE[$server]}"
  # shellcheck disable=SC2046
  fio --name=prefill $(engine_args "$server") --rw=write --bs=1m --iodepth=8 --size="$span" \
    --refill_buffers --output=/dev/null >/dev/null 2>"$work/prefill-$server.err" ||
    { echo "prefill of $server failed: $(tail -2 "$work/prefill-$server.err")"; return 1; }
  [[ -n "${PID[$server]:-}" ]] && settle "${PID[$server]}"
  return 0
}

calibrate_iscsi() {  # size qemu-img bench's request count to about RUNTIME seconds
  local server=$1 out="$work/calibrate-$1" secs iops count bs
  bs=$(timeout 20 iscsi-readcapacity16 "${ISCSI_URL[$server]}" 2>/dev/null |
       sed -n 's/.*[Bb]lock [Ll]ength *[:=] *\([0-9]*\).*/\1/p' | head -1)
  ISCSI_BS[$server]=${bs:-512}
  timeout 120 qemu-img bench -f raw -t none -w -c 20000 -d 32 -s 4096 "${ISCSI_URL[$server]}" >"$out" 2>&1 ||
    { echo "qemu-img bench failed: $(tail -1 "$out")"; return 1; }
  secs=$(sed -n 's/Run completed in \([0-9.]*\) seconds.*/\1/p' "$out")
  iops=$(python3 -c "print(int(20000 / max(float('$secs'), 0.001)))")
  count=$((iops * RUNTIME))
  ((count < 20000)) && count=20000
  # Stay inside the written working set (and the LUN): qemu-img bench goes sequentially from 0.
  ((count > size_bytes / 4096)) && count=$((size_bytes / 4096))
  ISCSI_COUNT[$server]=$count
  log "iscsi/$server: block size ${ISCSI_BS[$server]}, qemu-img bench count $count (calibration ${iops} IOPS)"
}

# ---------------------------------------------------------------- machine header

version_of() { "$@" 2>&1 | head -1; }
header() {
  local mem avail
  mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  avail=$(awk '/MemAvailable/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  cat <<EOF
# Target side-by-side benchmark ($started_at)

Command: \`ROUNDS=$ROUNDS RUNTIME=$RUNTIME RAMP=$RAMP SIZE=$SIZE bash tools/bench/compare.sh\` (\`make bench\`).
Medians of $ROUNDS interleaved rounds (round-robin over the servers per workload); loopback, one client at a time.

| machine | |
|---|---|
| CPU | $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)) |
| memory | $mem total, $avail available at the end |
| kernel | $(uname -sr) |
| /tmp | $(findmnt -no FSTYPE -T /tmp 2>/dev/null) on $(findmnt -no SOURCE -T /tmp 2>/dev/null), $df_start free at start |
| load average (1/5/15 min) | start: $load_start; end: $(cut -d' ' -f1-3 /proc/loadavg) |
| fio / nbdkit / qemu-nbd / qemu-img | $(version_of fio --version) / $(version_of nbdkit --version) / $(version_of qemu-nbd --version | sed 's/ (.*//') / $(version_of qemu-img --version | sed 's/ (.*//') |
| tgtd / libiscsi-bin | $(version_of tgtd --version) / $(dpkg-query -W -f='${Version}' libiscsi-bin 2>/dev/null) |
| Target | $("$TARGET_BIN" --version 2>&1 | head -1), .NET $(dotnet --list-runtimes 2>/dev/null | sed -n 's/^Microsoft.NETCore.App \([^ ]*\).*/\1/p' | tail -1) |

Settings: each job ${RUNTIME} s after a ${RAMP} s ramp (fio), working set $SIZE of $VOLUME_SIZE volumes,
files in $work (ext4). Target: dedup on, write mode ${target_write_mode:-?} (its default unless TARGET_ARGS says
otherwise; TARGET_ARGS="$TARGET_ARGS"), read cache ${target_read_cache:-?} (as logged at start), O_DIRECT pool of
$POOL_SIZE created fresh for this run.

How each is measured:
- fio: \`fio --ioengine=nbd --uri=nbd://127.0.0.1:PORT/EXPORT ${fio_common[*]}\` plus, per workload:
$(for w in "${nbd_workloads[@]}"; do echo "  - $w: \`${FIO_ARGS[$w]}\`"; done)
- raw disk: the same with \`--ioengine=libaio --direct=1 --filename=FILE\` (a $SIZE file in /tmp).
- raw disk + fdatasync (1 MiB sequential write only): the same plus \`--fdatasync=32\` on a file of its own: an
  fdatasync after every 32 MiB, the cadence of Target's destage groups when each ends with one
  (\`--journal-flush-ms 0\`; by default Target flushes on FLUSH/FUA, before checkpoints and at least every 5 s).
  A log durable at that cadence pays for those syncs; the plain raw row does not (a virtual disk may hold
  its writes in the host's cache).
- Before the first round every NBD server and the raw file get the working set written once (1 MiB, unique data).
- seqwrite-dup writes one 4 KiB pattern over the same working set pass after pass: after its first pass
  every block already holds those bytes, so Target's writes are nop-writes (nothing stored). Duplicates
  landing on blocks that hold other data go through destage; docs/PERFORMANCE.md measures that case apart.
- iSCSI: \`qemu-img bench -f raw -t none [-w] -c COUNT -d 32 -s 4096 iscsi://127.0.0.1:PORT/IQN/LUN\`
  (COUNT sized to about ${RUNTIME} s, capped to the working set; qemu-img bench writes one constant
  pattern, which dedups to a single chunk on Target) and \`iscsi-perf -m 32 -b 4096/BLOCK -r -t $RUNTIME\`.
- Server CPU s/GB: utime+stime of the server process (/proc/PID/stat) from the end of the ramp until the
  server is idle again after the job (so Target's destage after the job counts), divided by the GB the
  client moved in the measured window. Kernel page-cache writeback (nbdkit file, tgtd) is not counted;
  those backing files are fsynced between jobs so writeback does not land in the next server's turn.
- Client CPU s/GB: fio's own CPU (its usr_cpu + sys_cpu share of the job's runtime) per GB moved. The
  client and the server share this machine's $(nproc) cores: the client's CPU per GB at a peer's rate is
  what that rate leaves the server.
- Servers:
$(for s in "${!CMDLINE[@]}"; do echo "  - $s: \`${CMDLINE[$s]}\`"; done)
EOF
}

# ---------------------------------------------------------------- run

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
df_start=$(df -h --output=avail /tmp | tail -1 | tr -d ' ')
log "work directory $work; report $OUT; ROUNDS=$ROUNDS RUNTIME=$RUNTIME RAMP=$RAMP SIZE=$SIZE"
log "load average at start: $load_start"

nbd_servers=() iscsi_servers=()
target_iscsi_error=""
target_write_mode="" target_read_cache=""

if in_list "$SERVERS" target; then
  log "starting Target ($TARGET_BIN)"
  if start_target; then
    nbd_servers+=(target)
  else
    skip nbd target "Target did not start (see the log above)"
  fi
fi
if in_list "$SERVERS" nbdkit-memory; then
  if ! command -v nbdkit >/dev/null; then skip nbd nbdkit-memory "nbdkit missing (bash tools/install-deps.sh)"
  elif start_nbdkit nbdkit-memory memory "$VOLUME_SIZE"; then nbd_servers+=(nbdkit-memory)
  else skip nbd nbdkit-memory "nbdkit memory did not start"; fi
fi
if in_list "$SERVERS" nbdkit-file; then
  truncate -s "$VOLUME_SIZE" "$work/nbdkit-file.img"
  if ! command -v nbdkit >/dev/null; then skip nbd nbdkit-file "nbdkit missing (bash tools/install-deps.sh)"
  elif start_nbdkit nbdkit-file file "$work/nbdkit-file.img"; then
    nbd_servers+=(nbdkit-file); SYNC_FILE[nbdkit-file]="$work/nbdkit-file.img"
  else skip nbd nbdkit-file "nbdkit file did not start"; fi
fi
if in_list "$SERVERS" qemu-nbd; then
  if ! command -v qemu-nbd >/dev/null; then skip nbd qemu-nbd "qemu-nbd missing (bash tools/install-deps.sh)"
  elif start_qemu_nbd; then nbd_servers+=(qemu-nbd)
  else skip nbd qemu-nbd "qemu-nbd did not start"; fi
fi
if in_list "$SERVERS" nbdkit-null; then
  # Keeps nothing and reads zeros: what the fio client reaches against a server that does no work.
  if ! command -v nbdkit >/dev/null; then skip nbd nbdkit-null "nbdkit missing (bash tools/install-deps.sh)"
  elif start_nbdkit nbdkit-null null "$VOLUME_SIZE"; then nbd_servers+=(nbdkit-null)
  else skip nbd nbdkit-null "nbdkit null did not start"; fi
fi
in_list "$SERVERS" raw-disk && nbd_servers+=(raw-disk)
in_list "$SERVERS" raw-disk-sync && in_list "$WORKLOADS" seqwrite && nbd_servers+=(raw-disk-sync)

if ((${#iscsi_workloads[@]} > 0)); then
  if in_list "$SERVERS" target; then
    if ((!target_has_iscsi)); then
      echo "Target iSCSI not available yet ('target serve --help' does not list --iscsi): measuring tgtd alone"
      skip iscsi target "Target iSCSI not available yet ('target serve --help' does not list --iscsi)"
    elif [[ -z "${ISCSI_URL[target]:-}" ]]; then
      skip iscsi target "${target_iscsi_error:-Target iSCSI listener did not answer}"
    else
      iscsi_servers+=(target)
    fi
  fi
  if in_list "$SERVERS" tgtd; then
    if ! command -v tgtd >/dev/null || ! command -v iscsi-perf >/dev/null; then
      skip iscsi tgtd "tgtd or iscsi-perf missing (bash tools/install-deps.sh)"
    elif start_tgtd; then iscsi_servers+=(tgtd)
    else skip iscsi tgtd "tgtd did not start (see above)"; fi
  fi
fi

for s in "${nbd_servers[@]}"; do
  log "prefill nbd/$s ($SIZE)"
  prefill_nbd "$s" || { skip nbd "$s" "prefill failed"; nbd_servers=("${nbd_servers[@]/$s/}"); }
done
ok=()
for s in "${nbd_servers[@]}"; do [[ -n "$s" ]] && ok+=("$s"); done
nbd_servers=("${ok[@]}")
ok=()
for s in "${iscsi_servers[@]}"; do
  if calibrate_iscsi "$s"; then ok+=("$s"); else skip iscsi "$s" "qemu-img bench failed in calibration"; fi
done
iscsi_servers=("${ok[@]}")

rotate() {  # rotate N ITEMS...: the items starting at index N mod count
  local n=$1; shift
  local items=("$@") i c=$#
  for ((i = 0; i < c; i++)); do echo "${items[(i + n) % c]}"; done
}

for ((round = 1; round <= ROUNDS; round++)); do
  log "round $round of $ROUNDS"
  for w in "${nbd_workloads[@]}"; do
    for s in $(rotate "$round" "${nbd_servers[@]}"); do
      [[ $s == raw-disk && $w == dedup50 ]] && continue  # a plain disk has no dedup to show
      [[ $s == raw-disk-sync && $w != seqwrite ]] && continue  # the durable-stream reference only
      measure nbd "$s" "$w" "$round"
    done
  done
  if ((${#iscsi_servers[@]} > 0)); then
    for w in "${iscsi_workloads[@]}"; do
      for s in $(rotate "$round" "${iscsi_servers[@]}"); do
        measure iscsi "$s" "$w" "$round"
      done
    done
  fi
done

header >"$work/header.md"
all_nbd=() all_iscsi=()
for s in target nbdkit-memory nbdkit-file qemu-nbd nbdkit-null raw-disk raw-disk-sync; do in_list "$SERVERS" "$s" && all_nbd+=("$s"); done
for s in target tgtd; do in_list "$SERVERS" "$s" && all_iscsi+=("$s"); done
table_args=()
if ((${#nbd_workloads[@]} > 0)); then
  table_args+=(--servers "nbd:$(IFS=,; echo "${all_nbd[*]}")" --workloads "nbd:$(IFS=,; echo "${nbd_workloads[*]}")")
fi
if ((${#iscsi_workloads[@]} > 0)); then
  table_args+=(--servers "iscsi:$(IFS=,; echo "${all_iscsi[*]}")" --workloads "iscsi:$(IFS=,; echo "${iscsi_workloads[*]}")")
fi
"${report[@]}" table --results "$results" --header "$work/header.md" "${table_args[@]}" >"$OUT"
echo
cat "$OUT"
echo
log "report written to $OUT (raw results: $results)"
