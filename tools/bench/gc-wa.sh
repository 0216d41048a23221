#!/usr/bin/env bash
# Write amplification of random 4 KiB unique overwrites at a given pool fill (default 80%):
# starts `target serve` on a fresh pool, fills a volume sized FILL% of the pool's capacity,
# then overwrites it at random through fio's nbd engine and reports
#   WA = device bytes written / host bytes written, over the overwrite phase only,
# plus the cleaner's work and the space in use afterwards. A benchmark, not a test.
#   POOL_SIZE=2G FILL=80 OVERWRITE=4G TARGET_BIN=bin/target bash tools/bench/gc-wa.sh
# PATTERN=uniform (default): every write picks a block uniformly at random (fio --norandommap),
#   so a block's next overwrite is equally likely at any time: no policy can tell hot from cold.
# PATTERN=permutation: fio's random map, each pass writes every block once in a random order.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

POOL_SIZE=${POOL_SIZE:-2G}
FILL=${FILL:-80}
OVERWRITE=${OVERWRITE:-4G}
PATTERN=${PATTERN:-uniform}
case "$PATTERN" in
  uniform) randommap=(--norandommap) ;;
  permutation) randommap=() ;;
  *) echo "gc-wa: PATTERN is uniform or permutation" >&2; exit 2 ;;
esac
TARGET_BIN=${TARGET_BIN:-bin/target}
[[ -x "$TARGET_BIN" ]] || { echo "gc-wa: $TARGET_BIN missing: run make build" >&2; exit 1; }
command -v fio >/dev/null || { echo "gc-wa: fio missing: bash tools/install-deps.sh" >&2; exit 1; }

work=$(mktemp -d /tmp/target-gcwa-XXXXXX)
log="$work/serve.log"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM

# The pool's capacity is known only once it exists: start with a placeholder volume.
"$TARGET_BIN" serve --pool "$work/pool" --pool-size "$POOL_SIZE" --nbd 127.0.0.1:0 --admin 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do grep -q "listening nbd=" "$log" && break; sleep 0.1; done
line=$(grep -o "listening nbd=[^ ]* .*admin=[0-9.:]*" "$log" | head -1)
nbd=${line#listening nbd=}; nbd=${nbd%% *}
admin=${line##*admin=}
stats() { "$TARGET_BIN" stats --admin "$admin" --json; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
capacity=$(stats | field capacityBytes)
volume=$(( capacity * FILL / 100 / 1048576 ))M
"$TARGET_BIN" volume create wa --admin "$admin" --size "$volume" >/dev/null
echo "pool $POOL_SIZE (capacity $((capacity >> 20)) MiB), volume $volume (${FILL}% fill), overwrite $OVERWRITE ($PATTERN); load $(cut -d' ' -f1-3 /proc/loadavg)"

fio --name=fill --ioengine=nbd --uri="nbd://$nbd/wa" --rw=write --bs=1M --iodepth=8 --refill_buffers --randrepeat=0 --output-format=terse >/dev/null
s0=$(stats)
start=$(date +%s.%N)
fio --name=overwrite --ioengine=nbd --uri="nbd://$nbd/wa" --rw=randwrite --bs=4k --iodepth=32 --io_size="$OVERWRITE" \
    --refill_buffers --randrepeat=0 "${randommap[@]}" --output-format=json >"$work/fio.json"
end=$(date +%s.%N)
s1=$(stats)
python3 - "$s0" "$s1" "$work/fio.json" "$start" "$end" <<'PY'
import json, sys
s0, s1 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
text = open(sys.argv[3]).read()
job = json.loads(text[text.index('{'):])["jobs"][0]["write"]
host = s1["hostBytesWritten"] - s0["hostBytesWritten"]
device = s1["deviceBytesWritten"] - s0["deviceBytesWritten"]
moved = s1["gcBytesMoved"] - s0["gcBytesMoved"]
inline = s1.get("gcBytesMovedInline", 0) - s0.get("gcBytesMovedInline", 0)
used = s1["capacityBytes"] - s1["freeBytes"]
print(f"overwrite: {job['iops']:.0f} IOPS, {host / 2**20:.0f} MiB from the host in {float(sys.argv[5]) - float(sys.argv[4]):.0f} s")
print(f"write amplification {device / host:.2f} (device {device / 2**20:.0f} MiB, cleaner moved {moved / 2**20:.0f} MiB ({inline / 2**20:.0f} MiB inline), "
      f"{s1['gcSegmentsCleaned'] - s0['gcSegmentsCleaned']} segments cleaned, {(s1['gcMs'] - s0['gcMs']) / 1000:.1f} s in the cleaner)")
print(f"after: live {s1['liveBytes'] / 2**20:.0f} MiB, in use {used / 2**20:.0f} MiB, free segments {s1['segmentsFree']}/{s1['segmentsTotal']}")
PY
