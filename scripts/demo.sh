#!/usr/bin/env bash
# Demo: a local origin serves a generated file.
#  1. dfget alone downloads it (pieces in parallel), verifies its sha256, prints throughput.
#  2. Two daemons: A downloads it from the origin, B (A as its parent) gets every piece from A.
#     The origin's counter shows it served the file once for both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SIZE_MIB=${SIZE_MIB:-256}
PORT=${PORT:-18080}
WORK=$(mktemp -d /tmp/dfdemo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
stats() { curl -fsS "http://127.0.0.1:$PORT/_stats"; }
bytes() { stats | sed 's/.*"bytes":\([0-9]*\).*/\1/'; }

mkdir -p "$WORK/origin"
echo "== generating a ${SIZE_MIB} MiB file; origin on 127.0.0.1:$PORT"
"$BIN/dforigin" --listen "127.0.0.1:$PORT" --dir "$WORK/origin" --generate "file.bin=$SIZE_MIB" 2>"$WORK/origin.log" &
PIDS+=($!)
for _ in $(seq 100); do stats >/dev/null 2>&1 && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT/file.bin"
DIGEST="sha256:$(sha256sum "$WORK/origin/file.bin" | cut -d' ' -f1)"

echo
echo "== 1. dfget alone (no daemon)"
"$BIN/dfget" --standalone "$URL" -O "$WORK/alone.bin" --digest "$DIGEST"
echo "   origin served $(bytes) bytes so far"

daemon() { # NAME UPLOAD_PORT [PARENT_PORT]
  local d="$WORK/$1" parents=""
  [ -n "${3:-}" ] && parents="\"127.0.0.1:$3\""
  mkdir -p "$d"
  printf 'dataDir: %s/data\nlogDir: %s/log\ndownload:\n  unixListen:\n    socket: %s/sock\n  parents: [%s]\nupload:\n  tcpListen:\n    listen: 127.0.0.1\n    port: %s\n' \
    "$d" "$d" "$d" "$parents" "$2" >"$d/dfget.yaml"
  "$BIN/dfdaemon" --config "$d/dfget.yaml" 2>"$d/stderr.log" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$d/sock" ] && return 0; sleep 0.05; done
  echo "daemon $1 did not start: $(cat "$d/stderr.log")" >&2; exit 1
}
echo
echo "== 2. two daemons: A (upload port 18101) and B (upload port 18102, parent A)"
daemon a 18101
daemon b 18102 18101
before=$(bytes)
DFGET_DAEMON_SOCK="$WORK/a/sock" "$BIN/dfget" "$URL" -O "$WORK/via-a.bin" --digest "$DIGEST"
DFGET_DAEMON_SOCK="$WORK/b/sock" "$BIN/dfget" "$URL" -O "$WORK/via-b.bin" --digest "$DIGEST"
served=$(( $(bytes) - before ))
echo "   origin served $served bytes for both daemons (file: $((SIZE_MIB << 20)) bytes): $(awk "BEGIN {printf \"%.2f\", $served / ($SIZE_MIB * 1048576)}")x the file"
grep -h -o '"msg":"peer task done[^"]*"' "$WORK"/a/log/core.log "$WORK"/b/log/core.log | sed 's/^/   /'
cmp "$WORK/origin/file.bin" "$WORK/via-b.bin" && echo "   B's copy is byte-identical to the origin's file"
