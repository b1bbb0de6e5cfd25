#!/usr/bin/env bash
# Swarm benchmark: PEERS (16) daemons pull one SIZE_MIB (512) MiB file at once through the
# scheduler and one seed peer, every part its own process on its own 127.0.9.x address:
#   dforigin   127.0.0.1:$ORIGIN_PORT  serves the file and counts the bytes it sends (/_stats)
#   scheduler  127.0.0.1:$SCHED_PORT   seedPeer.enable: true
#   seed peer  127.0.9.1               peers 127.0.9.2 .. 127.0.9.(PEERS+1), upload port $UPLOAD_PORT
# Targets: origin bytes / file size <= 1.02; swarm wall time <= 1.5x one direct download.
#
# Scenarios (RATES, default "0 100M 16M"): an uncapped origin (on one small machine the 16 copies
# are 16x the disk and CPU work of one download, so this measures that work), and an origin
# capped for all connections together (dforigin --rate-limit), as when the origin's bandwidth is
# the bottleneck of a real cluster. On 2 cores the swarm moves ~300 MiB/s in total, so at
# 100 MiB/s the machine is still the bottleneck (16 x 100 > 300); at 16 MiB/s the origin is.
# Per scenario: one direct download (curl -o to a file on the same disk, and dfget --standalone),
# median of RUNS (3); then RUNS swarm runs with a fresh scheduler, fresh daemons and empty
# storage each, timed from the start of the 16 dfget until the last one exits.
# Env: RUNS, PEERS, SIZE_MIB, RATES, ORIGIN_PORT, SCHED_PORT, UPLOAD_PORT, BIN, BENCH_WORK,
#      NIC (e.g. 100Mi: every daemon's upload.rateLimit and download.totalRateLimit, as if each
#      host had a NIC of that speed; unset: no cap), VERBOSE=1 (who fed whom per daemon),
#      KEEP=1 (keep the last run's configs and logs).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${RUNS:-3}
PEERS=${PEERS:-16}
SIZE_MIB=${SIZE_MIB:-512}
RATES=${RATES:-0 100M 16M}
ORIGIN_PORT=${ORIGIN_PORT:-19080}
SCHED_PORT=${SCHED_PORT:-19002}
UPLOAD_PORT=${UPLOAD_PORT:-19102}
S="$W/swarm"
SIZE=$((SIZE_MIB << 20))
URL="http://127.0.0.1:$ORIGIN_PORT/file.bin"
ORIGIN_PID="" SCHED_PID=""
declare -A DPID=()

stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
stop_swarm() {
  for n in "${!DPID[@]}"; do stop_pid "${DPID[$n]}"; done
  DPID=()
  stop_pid "$SCHED_PID"; SCHED_PID=""
}
cleanup() {
  stop_swarm; stop_pid "$ORIGIN_PID"
  if [ -n "${KEEP:-}" ]; then echo "kept $S"; else rm -rf "$S/run" "$S/out"; fi
}
trap cleanup EXIT

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
for hp in "127.0.0.1 $ORIGIN_PORT" "127.0.0.1 $SCHED_PORT" "127.0.9.1 $UPLOAD_PORT"; do
  # shellcheck disable=SC2086
  if listening $hp; then echo "port ${hp/ /:} is taken; set ORIGIN_PORT/SCHED_PORT/UPLOAD_PORT" >&2; exit 1; fi
done

stats() { curl -fsS "http://127.0.0.1:$ORIGIN_PORT/_stats"; }
origin_bytes() { stats | sed 's/.*"bytes":\([0-9]*\).*/\1/'; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# start_origin RATE: dforigin serving $S/www (file.bin generated once), capped when RATE != 0.
start_origin() {
  stop_pid "$ORIGIN_PID"
  local cap=()
  [ "$1" != 0 ] && cap=(--rate-limit "$1")
  mkdir -p "$S/www"
  "$BIN/dforigin" --listen "127.0.0.1:$ORIGIN_PORT" --dir "$S/www" --generate "file.bin=$SIZE_MIB" \
    "${cap[@]}" 2>"$S/origin.log" &
  ORIGIN_PID=$!
  for _ in $(seq 600); do stats >/dev/null 2>&1 && break; kill -0 "$ORIGIN_PID" 2>/dev/null || break; sleep 0.1; done
  stats >/dev/null 2>&1 || { echo "origin did not start: $(cat "$S/origin.log")" >&2; exit 1; }
}

start_scheduler() {
  local d="$S/run/scheduler"
  mkdir -p "$d"
  printf 'server:\n  listenIP: 127.0.0.1\n  port: %s\n  logDir: %s/log\nseedPeer:\n  enable: true\nmetrics:\n  addr: 127.0.0.1:8003\n' \
    "$SCHED_PORT" "$d" >"$d/scheduler.yaml"
  "$BIN/scheduler" --config "$d/scheduler.yaml" >"$d/stdout.log" 2>"$d/stderr.log" &
  SCHED_PID=$!
  for _ in $(seq 200); do listening 127.0.0.1 "$SCHED_PORT" && break; sleep 0.05; done
  kill -0 "$SCHED_PID" 2>/dev/null && listening 127.0.0.1 "$SCHED_PORT" ||
    { echo "scheduler did not start: $(cat "$d/stderr.log")" >&2; exit 1; }
}

# start_peer NAME IP SEED: a dfdaemon in $S/run/NAME.
start_peer() {
  local d="$S/run/$1"
  mkdir -p "$d"
  cat >"$d/dfget.yaml" <<CONF
dataDir: $d/data
logDir: $d/log
host:
  hostname: $1
scheduler:
  netAddrs: ["127.0.0.1:$SCHED_PORT"]
seedPeer:
  enable: $3
download:
  unixListen:
    socket: $d/sock
  totalRateLimit: ${NIC:-0}
upload:
  rateLimit: ${NIC:-0}
  tcpListen:
    listen: $2
    port: $UPLOAD_PORT
metrics:
  tcpListen:
    listen: $2
storage:
  multiplex: true
CONF
  "$BIN/dfdaemon" --config "$d/dfget.yaml" >"$d/stdout.log" 2>"$d/stderr.log" &
  DPID[$1]=$!
  for _ in $(seq 200); do [ -S "$d/sock" ] && return 0; kill -0 "${DPID[$1]}" 2>/dev/null || break; sleep 0.05; done
  echo "daemon $1 did not start: $(cat "$d/stderr.log")" >&2; exit 1
}

# The scheduler knows every daemon (its log says "host announced" for each, the seed among them)
# before any download starts.
wait_announced() {
  local logs=("$S/run/scheduler/stderr.log" "$S/run/scheduler/stdout.log")
  local ann
  for _ in $(seq 200); do
    ann=$(grep -h 'host announced' "${logs[@]}" || true)
    [ "$(grep -c . <<<"$ann")" -ge $((PEERS + 1)) ] && grep -q '127\.0\.9\.1\b' <<<"$ann" && return 0
    sleep 0.05
  done
  echo "warning: the scheduler's log does not show all $((PEERS + 1)) daemons announced" >&2
}

# fed NAME: "SOURCE PEER MS" pieces from the source and from peers, and the task's cost.
fed() {
  local line from src=0 peer=0 e
  line=$(grep -h '"msg":"peer task done' "$S/run/$1/log/core.log" 2>/dev/null | tail -1)
  [ -n "$line" ] || { echo "- - -"; return; }
  from=$(sed 's/.*"from":"\([^"]*\)".*/\1/' <<<"$line")
  IFS=, read -ra kv <<<"$from"
  for e in "${kv[@]}"; do
    if [ "${e%=*}" = source ]; then src=$((src + ${e##*=})); else peer=$((peer + ${e##*=})); fi
  done
  echo "$src $peer $(sed 's/.*peer task done, cost: \([0-9]*\)ms.*/\1/' <<<"$line")"
}

# who_fed NAME: the `from` field with addresses as names (seed, p1 ..).
who_fed() {
  local from e out=()
  from=$(grep -h '"msg":"peer task done' "$S/run/$1/log/core.log" 2>/dev/null | tail -1 | sed 's/.*"from":"\([^"]*\)".*/\1/')
  IFS=, read -ra kv <<<"$from"
  for e in "${kv[@]}"; do
    local k=${e%=*} ip
    ip=${k%:*}
    case "$k" in
      source) k=ORIGIN ;;
      127.0.9.1:*) k=seed ;;
      127.0.9.*:*) k=p$((${ip##*.} - 1)) ;;
    esac
    out+=("$k=${e##*=}")
  done
  echo "${out[*]}"
}

# swarm_run RATE I: one run; appends "secs origin_bytes src_pieces peer_pieces seed_src seed_hwm_kib peer_hwm_kib" to $S/swarm-RATE.txt.
swarm_run() {
  rm -rf "$S/run"; mkdir -p "$S/run"; sync
  start_scheduler
  start_peer seed 127.0.9.1 true
  for i in $(seq "$PEERS"); do start_peer "p$i" "127.0.9.$((i + 1))" false; done
  wait_announced
  local before after s e fails=0 pids=() i
  before=$(origin_bytes)
  s=$(date +%s.%N)
  for i in $(seq "$PEERS"); do
    DFGET_DAEMON_SOCK="$S/run/p$i/sock" "$BIN/dfget" -q "$URL" -O "$S/run/p$i/out.bin" \
      --digest "$DIGEST" --timeout 10m 2>"$S/run/p$i/dfget.err" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { fails=$((fails + 1)); echo "   p$((i + 1)): dfget failed: $(cat "$S/run/p$((i + 1))/dfget.err")" >&2; }
  done
  e=$(date +%s.%N)
  after=$(origin_bytes)
  for i in $(seq "$PEERS"); do
    [ "$(stat -c %s "$S/run/p$i/out.bin" 2>/dev/null || echo 0)" = "$SIZE" ] ||
      { fails=$((fails + 1)); echo "   p$i: output missing or wrong size" >&2; }
  done
  # The seed's own task may still be finishing (it feeds the peers as pieces land).
  for _ in $(seq 100); do grep -qs '"msg":"peer task done' "$S/run/seed/log/core.log" && break; sleep 0.1; done
  local src=0 peer=0 seed_src seed_ms peer_hwm=0 h f secs min_ms=999999999 max_ms=0
  read -r seed_src _ seed_ms <<<"$(fed seed)"
  for i in $(seq "$PEERS"); do
    read -r a b ms <<<"$(fed "p$i")"
    [ "$a" = - ] && { echo "   p$i: no 'peer task done' line in its core.log" >&2; continue; }
    src=$((src + a)); peer=$((peer + b))
    ((ms < min_ms)) && min_ms=$ms
    ((ms > max_ms)) && max_ms=$ms
    h=$(hwm_kib "${DPID[p$i]}"); ((h > peer_hwm)) && peer_hwm=$h
  done
  local seed_hwm
  seed_hwm=$(hwm_kib "${DPID[seed]}")
  secs=$(echo "$e - $s" | bc -l)
  f=$(echo "($after - $before) / $SIZE" | bc -l)
  printf '   run %d: %6.2fs  origin %.3fx file  peers got %d pieces from peers, %d from source; seed %s from source; seed task %.1fs, peer tasks %.1f-%.1fs; seed RSS %d MiB%s\n' \
    "$2" "$secs" "$f" "$peer" "$src" "$seed_src" "$(echo "${seed_ms/-/0} / 1000" | bc -l)" "$(echo "$min_ms / 1000" | bc -l)" "$(echo "$max_ms / 1000" | bc -l)" \
    $((seed_hwm / 1024)) "$( ((fails)) && echo "  ($fails FAILED)")"
  if [ -n "${VERBOSE:-}" ]; then
    for n in seed $(seq -f 'p%g' "$PEERS"); do printf '      %-4s <- %s\n' "$n" "$(who_fed "$n")"; done
  fi
  echo "$secs $((after - before)) $src $peer $seed_src $seed_hwm $peer_hwm $fails" >>"$S/swarm-$1.txt"
  stop_swarm
}

col() { awk -v c="$1" '{print $c}' "$2"; }

mkdir -p "$S/out"
: >"$S/summary.txt"
for rate in $RATES; do
  label="origin uncapped"
  [ "$rate" != 0 ] && label="origin capped at $rate/s (dforigin --rate-limit $rate)"
  [ -n "${NIC:-}" ] && label="$label, every daemon capped at $NIC/s up and down"
  echo "== $label: $PEERS peers x $SIZE_MIB MiB"
  start_origin "$rate"
  [ -z "${DIGEST:-}" ] && DIGEST="sha256:$(sha256sum "$S/www/file.bin" | cut -d' ' -f1)"
  : >"$S/curl-$rate.txt"; : >"$S/standalone-$rate.txt"; : >"$S/swarm-$rate.txt"; rm -f "$S/many-$rate.txt"
  for i in $(seq "$RUNS"); do
    rm -f "$S/out/direct"; sync
    b0=$(origin_bytes)
    c=$(secs curl -fsS -o "$S/out/direct" "$URL")
    [ "$(stat -c %s "$S/out/direct")" = "$SIZE" ] || { echo "curl: wrong size" >&2; exit 1; }
    cb=$(($(origin_bytes) - b0))
    rm -f "$S/out/direct"; sync
    d=$(secs "$BIN/dfget" --standalone -q "$URL" -O "$S/out/direct" --digest "$DIGEST")
    [ "$(stat -c %s "$S/out/direct")" = "$SIZE" ] || { echo "dfget --standalone: wrong size" >&2; exit 1; }
    rm -f "$S/out/direct"
    echo "$c" >>"$S/curl-$rate.txt"; echo "$d" >>"$S/standalone-$rate.txt"
    printf '   direct %d: curl -o %.2fs (origin sent %.3fx file)  dfget --standalone %.2fs\n' "$i" "$c" "$(echo "$cb / $SIZE" | bc -l)" "$d"
  done
  if [ "$rate" = 0 ]; then
    # For reference: what the machine does with PEERS copies and no P2P (the origin sends each).
    : >"$S/many-$rate.txt"
    for i in $(seq "$RUNS"); do
      rm -f "$S/out"/many-*; sync
      s0=$(date +%s.%N); pids=()
      for j in $(seq "$PEERS"); do curl -fsS -o "$S/out/many-$j" "$URL" & pids+=($!); done
      for j in "${pids[@]}"; do wait "$j"; done
      echo "$(date +%s.%N) - $s0" | bc -l >>"$S/many-$rate.txt"
      rm -f "$S/out"/many-*
      printf '   %d x curl -o at once %d: %.2fs (the origin sends %dx the file)\n' "$PEERS" "$i" "$(tail -1 "$S/many-$rate.txt")" "$PEERS"
    done
  fi
  for i in $(seq "$RUNS"); do swarm_run "$rate" "$i"; done

  cm=$(median <"$S/curl-$rate.txt"); dm=$(median <"$S/standalone-$rate.txt")
  sm=$(col 1 "$S/swarm-$rate.txt" | median)
  om=$(col 2 "$S/swarm-$rate.txt" | median)
  omax=$(col 2 "$S/swarm-$rate.txt" | sort -g | tail -1)
  fails=$(col 8 "$S/swarm-$rate.txt" | paste -sd+ | bc)
  src=$(col 3 "$S/swarm-$rate.txt" | paste -sd+ | bc); peer=$(col 4 "$S/swarm-$rate.txt" | paste -sd+ | bc)
  seed_src=$(col 5 "$S/swarm-$rate.txt" | paste -sd, )
  shwm=$(col 6 "$S/swarm-$rate.txt" | sort -g | tail -1); phwm=$(col 7 "$S/swarm-$rate.txt" | sort -g | tail -1)
  ratio=$(echo "$sm / $cm" | bc -l); oratio=$(echo "$om / $SIZE" | bc -l)
  {
    echo
    echo "== summary: $label"
    printf '   file                         %d MiB, %d peers + 1 seed, %d runs\n' "$SIZE_MIB" "$PEERS" "$RUNS"
    printf '   one direct download          curl -o %.2fs (%.0f MiB/s), dfget --standalone %.2fs (medians)\n' "$cm" "$(echo "$SIZE_MIB / $cm" | bc -l)" "$dm"
    printf '   %2d peers at once (swarm)     %.2fs (median; runs: %s)\n' "$PEERS" "$sm" "$(col 1 "$S/swarm-$rate.txt" | xargs printf '%.2f ' | sed 's/ $//')"
    printf '   swarm / direct               %.2fx   (target <= 1.5)%s\n' "$ratio" "$(awk "BEGIN {exit !($ratio <= 1.5)}" && echo '  ok' || echo '  MISSED')"
    printf '   per copy                     %.2fs   (swarm time / %d, vs %.2fs direct)\n' "$(echo "$sm / $PEERS" | bc -l)" "$PEERS" "$cm"
    [ -s "$S/many-$rate.txt" ] && printf '   %2d x curl at once, no P2P    %.2fs (median; origin sends %dx the file): swarm / that %.2fx\n' \
      "$PEERS" "$(median <"$S/many-$rate.txt")" "$PEERS" "$(echo "$sm / $(median <"$S/many-$rate.txt")" | bc -l)"
    printf '   origin bytes / file size     %.3f median, %.3f worst  (target <= 1.02)%s\n' "$oratio" "$(echo "$omax / $SIZE" | bc -l)" \
      "$(awk "BEGIN {exit !($omax / $SIZE <= 1.02)}" && echo '  ok' || echo '  MISSED')"
    printf '   pieces the peers got         %d from peers, %d from the source (all runs); the seed from the source: %s\n' "$peer" "$src" "$seed_src"
    printf '   peak RSS (VmHWM)             seed %d MiB, largest peer %d MiB\n' $((shwm / 1024)) $((phwm / 1024))
    ((fails == 0)) || printf '   FAILED downloads             %d\n' "$fails"
  } | tee -a "$S/summary.txt"
  echo
done
echo "== all scenarios"
cat "$S/summary.txt"
