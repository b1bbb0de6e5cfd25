#!/usr/bin/env bash
# Demo: a real swarm on one machine, every part its own process on its own 127.0.0.x address.
#   origin      127.0.0.1:18080  serves a generated file and counts the bytes it sends
#   scheduler   127.0.0.1:18002
#   seed peer   127.0.0.2        (seedPeer.enable: true)
#   peers       127.0.0.3-5
# dfget downloads the file on the three peers at once. The scheduler asks the seed peer to fetch
# the file, hands the seed (and then each other) to the peers as parents, and the origin serves
# the file once. At the end: who fed whom, and the origin's byte count.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SIZE_MIB=${SIZE_MIB:-256}
PORT=${PORT:-18080}
SCHED_PORT=${SCHED_PORT:-18002}
UPLOAD_PORT=${UPLOAD_PORT:-18102}
METRICS_PORT=${METRICS_PORT:-18103}   # each daemon's /metrics on its own address; the scheduler's on 127.0.0.1
WORK=$(mktemp -d /tmp/dfdemo.XXXXXX)
PIDS=()
# KEEP=1 keeps the work directory (configs, logs) for a look afterwards.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
stats() { curl -fsS "http://127.0.0.1:$PORT/_stats"; }
bytes() { stats | sed 's/.*"bytes":\([0-9]*\).*/\1/'; }

mkdir -p "$WORK/origin"
echo "== origin: a ${SIZE_MIB} MiB file on 127.0.0.1:$PORT"
"$BIN/dforigin" --listen "127.0.0.1:$PORT" --dir "$WORK/origin" --generate "file.bin=$SIZE_MIB" 2>"$WORK/origin.log" &
PIDS+=($!)
for _ in $(seq 100); do stats >/dev/null 2>&1 && break; sleep 0.1; done
stats >/dev/null || { echo "origin did not start: $(cat "$WORK/origin.log")" >&2; exit 1; }
URL="http://127.0.0.1:$PORT/file.bin"
DIGEST="sha256:$(sha256sum "$WORK/origin/file.bin" | cut -d' ' -f1)"

echo "== scheduler on 127.0.0.1:$SCHED_PORT"
printf 'server:\n  listenIP: 127.0.0.1\n  port: %s\n  logDir: %s/scheduler\nseedPeer:\n  enable: true\nmetrics:\n  addr: 127.0.0.1:%s\n' \
  "$SCHED_PORT" "$WORK" "$METRICS_PORT" >"$WORK/scheduler.yaml"
"$BIN/scheduler" --config "$WORK/scheduler.yaml" 2>"$WORK/scheduler.log" &
PIDS+=($!)
SCHED_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$SCHED_PORT") 2>/dev/null && break; sleep 0.05; done
kill -0 "$SCHED_PID" 2>/dev/null || { echo "scheduler did not start: $(cat "$WORK/scheduler.log")" >&2; exit 1; }

daemon() { # NAME IP SEED
  local d="$WORK/$1"
  mkdir -p "$d"
  printf 'dataDir: %s/data\nlogDir: %s/log\nhost:\n  hostname: %s\nscheduler:\n  netAddrs: ["127.0.0.1:%s"]\nseedPeer:\n  enable: %s\ndownload:\n  unixListen:\n    socket: %s/sock\nupload:\n  tcpListen:\n    listen: %s\n    port: %s\nmetrics:\n  tcpListen:\n    listen: %s\n    port: %s\nstorage:\n  multiplex: true\n' \
    "$d" "$d" "$1" "$SCHED_PORT" "$3" "$d" "$2" "$UPLOAD_PORT" "$2" "$METRICS_PORT" >"$d/dfget.yaml"
  "$BIN/dfdaemon" --config "$d/dfget.yaml" 2>"$d/stderr.log" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$d/sock" ] && return 0; sleep 0.05; done
  echo "daemon $1 did not start: $(cat "$d/stderr.log")" >&2; exit 1
}
echo "== seed peer on 127.0.0.2, peers on 127.0.0.3, .4, .5 (upload port $UPLOAD_PORT each)"
daemon seed 127.0.0.2 true
daemon peer1 127.0.0.3 false
daemon peer2 127.0.0.4 false
daemon peer3 127.0.0.5 false

echo
echo "== dfget on the three peers at once"
start=$(date +%s.%N)
for p in peer1 peer2 peer3; do
  DFGET_DAEMON_SOCK="$WORK/$p/sock" "$BIN/dfget" "$URL" -O "$WORK/$p.bin" --digest "$DIGEST" -q &
  DL+=($!)
done
for pid in "${DL[@]}"; do wait "$pid"; done
secs=$(awk "BEGIN {printf \"%.2f\", $(date +%s.%N) - $start}")
echo "   all three done in ${secs}s, each copy verified against $DIGEST"

echo
echo "== who fed whom (pieces per origin, from each daemon's core.log)"
name_of() { case "$1" in 127.0.0.2:*) echo seed;; 127.0.0.3:*) echo peer1;; 127.0.0.4:*) echo peer2;; 127.0.0.5:*) echo peer3;; source) echo ORIGIN;; *) echo "$1";; esac; }
for n in seed peer1 peer2 peer3; do
  line=$(grep -h '"msg":"peer task done' "$WORK/$n/log/core.log" | tail -1)
  from=$(sed 's/.*"from":"\([^"]*\)".*/\1/' <<<"$line")
  cost=$(sed 's/.*peer task done, cost: \([0-9]*\)ms.*/\1/' <<<"$line")
  parts=()
  IFS=, read -ra kv <<<"$from"
  for e in "${kv[@]}"; do parts+=("$(name_of "${e%=*}") ${e##*=}"); done
  printf '   %-6s <- %s   (%s ms)\n' "$n" "$(IFS=,; echo "${parts[*]}" | sed 's/,/, /g')" "$cost"
done

echo
echo "== what each daemon's /metrics says (dragonfly_dfdaemon_download_bytes_total, upload_bytes_total)"
ip=2
for n in seed peer1 peer2 peer3; do
  m=$(curl -fsS "http://127.0.0.$ip:$METRICS_PORT/metrics")
  val() { awk -v k="$1" 'index($0, k) == 1 {print $NF}' <<<"$m"; }
  printf '   %-6s in from origin %s, from parents %s; out to peers %s\n' "$n" \
    "$(val 'dragonfly_dfdaemon_download_bytes_total{source="origin"}')" \
    "$(val 'dragonfly_dfdaemon_download_bytes_total{source="parent"}')" \
    "$(val 'dragonfly_dfdaemon_upload_bytes_total ')"
  ip=$((ip + 1))
done

served=$(bytes)
echo
echo "== the origin served $served bytes; the file is $((SIZE_MIB << 20)) bytes: $(awk "BEGIN {printf \"%.2f\", $served / ($SIZE_MIB * 1048576)}")x the file for 4 daemons"
