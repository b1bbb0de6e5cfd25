#!/usr/bin/env bash
# Benchmark: cold download of a 1 GiB file from a local nginx, dfget (standalone, parallel
# pieces) vs curl -o. Runs alternate; prints each run and the medians and their ratio.
# Env: SIZE_MIB (1024), RUNS (5), PORT (18090), BIN (target/release), CONCURRENCY (dfget default).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-5}
PORT=${PORT:-18090}
W=${BENCH_WORK:-/tmp/dfbench}
mkdir -p "$W/www" "$W/nginx" "$W/out"
if [ "$(stat -c %s "$W/www/file.bin" 2>/dev/null || echo 0)" != $((SIZE_MIB << 20)) ]; then
  echo "generating $SIZE_MIB MiB..."
  head -c $((SIZE_MIB << 20)) /dev/urandom >"$W/www/file.bin"
fi
cat >"$W/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $W/nginx/tmp;
  proxy_temp_path $W/nginx/tmp;
  fastcgi_temp_path $W/nginx/tmp;
  uwsgi_temp_path $W/nginx/tmp;
  scgi_temp_path $W/nginx/tmp;
  server { listen 127.0.0.1:$PORT; root $W/www; }
}
CONF
mkdir -p "$W/nginx/tmp"
[ -f "$W/nginx/nginx.pid" ] && kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null || true
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx"
trap 'kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PORT/file.bin"
curl -fsS -o /dev/null "$URL" # warm the server's page cache
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: >"$W/curl.txt"; : >"$W/dfget.txt"
for i in $(seq "$RUNS"); do
  rm -f "$W/out/c" "$W/out/d"; sync
  c=$(secs curl -fsS -o "$W/out/c" "$URL")
  rm -f "$W/out/c"; sync
  d=$(secs "$BIN/dfget" -q "$URL" -O "$W/out/d" ${CONCURRENCY:+--concurrency $CONCURRENCY})
  [ "$(stat -c %s "$W/out/d")" = $((SIZE_MIB << 20)) ] || { echo "dfget output has the wrong size" >&2; exit 1; }
  echo "$SIZE_MIB / $c" | bc -l >>"$W/curl.txt"
  echo "$SIZE_MIB / $d" | bc -l >>"$W/dfget.txt"
  printf 'run %d: curl %.0f MiB/s  dfget %.0f MiB/s\n' "$i" "$(tail -1 "$W/curl.txt")" "$(tail -1 "$W/dfget.txt")"
done
rm -f "$W/out/c" "$W/out/d"
cm=$(median <"$W/curl.txt"); dm=$(median <"$W/dfget.txt")
printf 'median of %d runs, %d MiB: curl %.0f MiB/s, dfget %.0f MiB/s, dfget/curl = %.2f (target >= 0.95)\n' \
  "$RUNS" "$SIZE_MIB" "$cm" "$dm" "$(echo "$dm / $cm" | bc -l)"
