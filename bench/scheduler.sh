#!/usr/bin/env bash
# Scheduler load benchmarks: scheduler-loadgen drives a real scheduler process over loopback gRPC.
#  1. one task, PEERS peers (one per host) arriving at RATE per second: register-to-parents latency
#     (target p99 < 5 ms) and the scheduler's RSS with every stream open;
#  2. the same task size with CONCURRENCY peers registering back to back (saturation throughput);
#  3. TASKS tasks x 4 peers coming and going (peers leave or go silent, hosts leave or go silent)
#     with short GC TTLs: the scheduler's RSS over time and after its GC ran (target: flat).
# Env: PEERS (10000), RATE (2000), CONCURRENCY (32), TASKS (20000), SCHED_PORT (18002), BIN, BENCH_WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PEERS=${PEERS:-10000}
RATE=${RATE:-2000}
CONCURRENCY=${CONCURRENCY:-32}
TASKS=${TASKS:-20000}
SCHED_PORT=${SCHED_PORT:-18002}
S="$W/sched"
trap 'stop_scheduler' EXIT
rm -rf "$S"; mkdir -p "$S"

# start_scheduler NAME [YAML]: a scheduler on 127.0.0.1:$SCHED_PORT with YAML appended to its config.
start_scheduler() {
  stop_scheduler
  cat >"$S/$1.yaml" <<CONF
server:
  listenIP: 127.0.0.1
  port: $SCHED_PORT
seedPeer:
  enable: false
${2:-}
CONF
  "$BIN/scheduler" --config "$S/$1.yaml" >"$S/$1.out" 2>"$S/$1.log" &
  echo $! >"$S/pid"
  for _ in $(seq 100); do grep -q "scheduler listening" "$S/$1.log" 2>/dev/null && return 0; sleep 0.05; done
  echo "scheduler $1 did not start: $(cat "$S/$1.log")" >&2; return 1
}
stop_scheduler() {
  [ -f "$S/pid" ] || return 0
  kill "$(cat "$S/pid")" 2>/dev/null; wait "$(cat "$S/pid")" 2>/dev/null || true; rm -f "$S/pid"
}
loadgen() { "$BIN/scheduler-loadgen" --addr "http://127.0.0.1:$SCHED_PORT" --scheduler-pid "$(cat "$S/pid")" "$@"; }
# gc_total LOG WHAT: sum of "gc: WHAT collected WHAT=N" lines.
gc_total() { sed 's/\x1b\[[0-9;]*m//g' "$1" | awk -v k="$2=" '/gc: .* collected/ { for (i = 1; i <= NF; i++) if (index($i, k) == 1) s += substr($i, length(k) + 1) } END { print s + 0 }'; }

echo "== 1. one task, $PEERS peers arriving at $RATE/s"
start_scheduler one
loadgen --mode one-task --peers "$PEERS" --rate "$RATE" --concurrency 256

echo; echo "== 2. one task, $PEERS peers, $CONCURRENCY registering back to back"
start_scheduler one
loadgen --mode one-task --peers "$PEERS" --concurrency "$CONCURRENCY"

echo; echo "== 3. $TASKS tasks x 4 peers coming and going (peerTTL 3s, hosts silent after 3 missed 1s announces)"
start_scheduler many "scheduler:
  gc:
    peerGCInterval: 1s
    peerTTL: 3s
    taskGCInterval: 1s
    hostGCInterval: 1s
    hostTTL: 3s"
loadgen --mode many-tasks --tasks "$TASKS" --peers-per-task 4 --concurrency "$CONCURRENCY" \
  --announce-interval-ms 1000 --sample-every $((TASKS / 10)) --settle-secs 6
printf 'scheduler GC over the run: %d peers, %d tasks, %d hosts collected (log: %s)\n' \
  "$(gc_total "$S/many.log" peers)" "$(gc_total "$S/many.log" tasks)" "$(gc_total "$S/many.log" hosts)" "$S/many.log"
