#!/usr/bin/env bash
# Benchmarks of the daemon engine over loopback:
#  1. daemon B fetching a 1 GiB file from its parent A (every piece from A) vs curl from nginx;
#  2. peak RSS of daemon A while it serves a 512 MiB file to 16 children at once.
# Env: RUNS (5), CHILDREN (16), BIN, BENCH_WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${RUNS:-5}
CHILDREN=${CHILDREN:-16}
trap 'for p in "$W"/d/*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; stop_nginx' EXIT
rm -rf "$W/d"; mkdir -p "$W/out"
gen_file big.bin 1024
gen_file mid.bin 512
start_nginx
URL="http://127.0.0.1:$PORT/big.bin"
curl -fsS -o /dev/null "$URL"
start_daemon a 18100
DFGET_DAEMON_SOCK=$(sock a) "$BIN/dfget" -q "$URL" -O "$W/out/a"
rm -f "$W/out/a"

: >"$W/curl.txt"; : >"$W/p2p.txt"
for i in $(seq "$RUNS"); do
  rm -f "$W/out/c"; sync
  c=$(secs curl -fsS -o "$W/out/c" "$URL"); rm -f "$W/out/c"
  rm -rf "$W/d/b"; start_daemon b 18101 18100; sync
  p=$(secs env DFGET_DAEMON_SOCK="$(sock b)" "$BIN/dfget" -q "$URL" -O "$W/out/b")
  [ "$(stat -c %s "$W/out/b")" = $((1024 << 20)) ] || { echo "wrong size from B" >&2; exit 1; }
  rm -f "$W/out/b"; stop_daemon b
  echo "1024 / $c" | bc -l >>"$W/curl.txt"; echo "1024 / $p" | bc -l >>"$W/p2p.txt"
  printf 'run %d: curl<-nginx %.0f MiB/s  B<-parent A %.0f MiB/s\n' "$i" "$(tail -1 "$W/curl.txt")" "$(tail -1 "$W/p2p.txt")"
done
cm=$(median <"$W/curl.txt"); pm=$(median <"$W/p2p.txt")
printf 'median of %d runs, 1 GiB: curl from nginx %.0f MiB/s, B from parent A %.0f MiB/s, ratio %.2f (target >= 0.9)\n' \
  "$RUNS" "$cm" "$pm" "$(echo "$pm / $cm" | bc -l)"

# RSS: A already holds mid.bin and is restarted, so its peak reflects serving only.
MID="http://127.0.0.1:$PORT/mid.bin"
DFGET_DAEMON_SOCK=$(sock a) "$BIN/dfget" -q "$MID" -O "$W/out/mid-a"; rm -f "$W/out/mid-a"
stop_daemon a; start_daemon a 18100
for i in $(seq "$CHILDREN"); do start_daemon "c$i" $((18200 + i)) 18100; done
base=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$W/d/a/pid")/status")
s=$(date +%s.%N)
pids=()
for i in $(seq "$CHILDREN"); do
  DFGET_DAEMON_SOCK=$(sock "c$i") "$BIN/dfget" -q "$MID" -O "$W/out/mid-$i" &
  pids+=($!)
done
wait_ok=0; for j in "${pids[@]}"; do wait "$j" || wait_ok=1; done
e=$(date +%s.%N)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$W/d/a/pid")/status")
for i in $(seq "$CHILDREN"); do
  [ "$(stat -c %s "$W/out/mid-$i" 2>/dev/null || echo 0)" = $((512 << 20)) ] || { echo "child $i: wrong size" >&2; wait_ok=1; }
  rm -f "$W/out/mid-$i"
done
[ "$wait_ok" = 0 ] || { echo "some children failed" >&2; exit 1; }
printf '%d children x 512 MiB from A in %.1fs; A peak RSS %d MiB (idle after restart %d MiB; target <= 64)\n' \
  "$CHILDREN" "$(echo "$e - $s" | bc -l)" $((peak / 1024)) $((base / 1024))
