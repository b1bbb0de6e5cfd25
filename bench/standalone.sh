#!/usr/bin/env bash
# Benchmark: cold download of a 1 GiB file from a local nginx, dfget (standalone, parallel
# pieces) vs curl -o. Runs alternate; prints each run and the medians and their ratio.
# Env: SIZE_MIB (1024), RUNS (5), PORT (18090), BIN (target/release), CONCURRENCY (dfget default).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-5}
gen_file file.bin "$SIZE_MIB"
start_nginx
trap stop_nginx EXIT
mkdir -p "$W/out"
URL="http://127.0.0.1:$PORT/file.bin"
curl -fsS -o /dev/null "$URL" # warm the server's page cache
: >"$W/curl.txt"; : >"$W/dfget.txt"
for i in $(seq "$RUNS"); do
  rm -f "$W/out/c" "$W/out/d"; sync
  c=$(secs curl -fsS -o "$W/out/c" "$URL")
  rm -f "$W/out/c"; sync
  d=$(secs "$BIN/dfget" --standalone -q "$URL" -O "$W/out/d" ${CONCURRENCY:+--concurrency $CONCURRENCY})
  [ "$(stat -c %s "$W/out/d")" = $((SIZE_MIB << 20)) ] || { echo "dfget output has the wrong size" >&2; exit 1; }
  echo "$SIZE_MIB / $c" | bc -l >>"$W/curl.txt"
  echo "$SIZE_MIB / $d" | bc -l >>"$W/dfget.txt"
  printf 'run %d: curl %.0f MiB/s  dfget %.0f MiB/s\n' "$i" "$(tail -1 "$W/curl.txt")" "$(tail -1 "$W/dfget.txt")"
done
rm -f "$W/out/c" "$W/out/d"
cm=$(median <"$W/curl.txt"); dm=$(median <"$W/dfget.txt")
printf 'median of %d runs, %d MiB: curl %.0f MiB/s, dfget %.0f MiB/s, dfget/curl = %.2f (target >= 0.95)\n' \
  "$RUNS" "$SIZE_MIB" "$cm" "$dm" "$(echo "$dm / $cm" | bc -l)"
