#!/usr/bin/env bash
# Demo: a local origin serves a generated file; dfget downloads it (pieces in parallel),
# verifies its sha256 and prints throughput; the origin says how many bytes it served.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SIZE_MIB=${SIZE_MIB:-256}
PORT=${PORT:-18080}
WORK=$(mktemp -d /tmp/dfdemo.XXXXXX)
cleanup() { [ -n "${ORIGIN_PID:-}" ] && kill "$ORIGIN_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/origin"
echo "== generating a ${SIZE_MIB} MiB file and starting the origin on 127.0.0.1:$PORT"
"$BIN/dforigin" --listen "127.0.0.1:$PORT" --dir "$WORK/origin" --generate "file.bin=$SIZE_MIB" 2>"$WORK/origin.log" &
ORIGIN_PID=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PORT/_stats" >/dev/null 2>&1 && break; sleep 0.1; done
DIGEST="sha256:$(sha256sum "$WORK/origin/file.bin" | cut -d' ' -f1)"
echo "== dfget http://127.0.0.1:$PORT/file.bin --digest $DIGEST"
"$BIN/dfget" "http://127.0.0.1:$PORT/file.bin" -O "$WORK/out.bin" --digest "$DIGEST"
echo "== origin counters: $(curl -fsS "http://127.0.0.1:$PORT/_stats")"
cmp "$WORK/origin/file.bin" "$WORK/out.bin" && echo "== output is byte-identical to the origin's file"
