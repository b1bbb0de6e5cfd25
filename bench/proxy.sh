#!/usr/bin/env bash
# dfdaemon's proxy and registry mirror against a real docker-registry (TLS, registry.test), with
# nginx as a caching reverse proxy of the same registry (blob cache keyed by digest) to compare:
#  1. cache hit of one BLOB_MIB (512) MiB blob, median of RUNS (5), dfdaemon and nginx alternating:
#     - TLS: curl through the hijacking proxy (-x, trusting the proxy CA) vs curl to nginx's TLS
#       front (trusting the registry CA); both HTTP/1.1;
#     - plain HTTP: curl to the mirror (/v2/... with X-Dragonfly-Registry) vs nginx over http;
#     - one client (curl's speed) and CLIENTS (4) at once (their bytes / wall time).
#     The first request of each is the miss, timed separately. Target: hit >= 1.0x nginx.
#  2. cold `skopeo copy docker://... dir:` of a LAYERS_MIB (64,128,256) MiB image, direct vs
#     through HTTPS_PROXY with an empty dfdaemon each time, alternating, median of PULL_RUNS (3).
#     Target: proxy <= 1.1x direct. Also timed: the pull through the daemon's registry mirror
#     (skopeo's registries.conf, plain HTTP to the daemon, as containerd's hosts.toml), and two
#     floors of an intercepting proxy on this machine: the daemon as a plain CONNECT tunnel, and
#     hijacking without P2P (decrypt and encrypt again, nothing stored or hashed).
#  3. dfdaemon's peak RSS (VmHWM): during the miss; during the hits after a restart with the blob
#     stored (reset between phases with /proc/PID/clear_refs); during each cold pull.
#  CPU seconds (utime + stime from /proc) of dfdaemon, nginx and the registry are reported too:
#  on a small shared machine they explain the wall times better than the wall times themselves.
# The registry comes from `registry-fixture` (testkit): certificates, docker-registry on a free
# port, images pushed. Everything listens on 127.0.0.1; registry.test goes into /etc/hosts (Go
# clients skip HTTPS_PROXY for loopback IPs). Working set ~2 GiB in $BENCH_WORK/proxy, removed
# at exit.
# Env: RUNS, PULL_RUNS, CLIENTS, BLOB_MIB, LAYERS_MIB, PROXY_PORT (18301), NGINX_TLS_PORT
#      (18302), NGINX_HTTP_PORT (18303), UPLOAD_PORT (18304), BIN, BENCH_WORK, KEEP=1 (keep logs).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${RUNS:-5}
PULL_RUNS=${PULL_RUNS:-3}
CLIENTS=${CLIENTS:-4}
BLOB_MIB=${BLOB_MIB:-512}
LAYERS_MIB=${LAYERS_MIB:-64,128,256}
PROXY_PORT=${PROXY_PORT:-18301}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18302}
NGINX_HTTP_PORT=${NGINX_HTTP_PORT:-18303}
UPLOAD_PORT=${UPLOAD_PORT:-18304}
P="$W/proxy"
FIX_PID="" DPID=""

stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
stop_nginx_cache() {
  if [ -s "$P/nginx/nginx.pid" ]; then
    local pid; pid=$(cat "$P/nginx/nginx.pid")
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$P/nginx/nginx.pid"
  fi
}
cleanup() {
  stop_pid "$DPID"; stop_nginx_cache
  stop_pid "$FIX_PID" # stops the registry it started
  if [ -n "${KEEP:-}" ]; then rm -rf "$P/fixture/registry/storage" "$P/d/data" "$P/nginx/cache" "$P/out"; echo "kept logs in $P"
  else rm -rf "$P"; fi
}
die() { echo "proxy.sh: $*" >&2; exit 1; }

bash scripts/ensure-deps.sh nginx curl bc docker-registry skopeo
for b in dfdaemon registry-fixture; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing: cargo build --release --workspace --bins"
done
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PROXY_PORT" "$NGINX_TLS_PORT" "$NGINX_HTTP_PORT" "$UPLOAD_PORT"; do
  if listening "$p"; then die "port $p is taken; set PROXY_PORT/NGINX_TLS_PORT/NGINX_HTTP_PORT/UPLOAD_PORT"; fi
done
rm -rf "$P"; mkdir -p "$P"
free_mib=$(df -Pm "$P" | awk 'NR==2 {print $4}')
[ "$free_mib" -ge 3072 ] || die "only $free_mib MiB free under $P; need ~3 GiB (set BENCH_WORK)"
trap cleanup EXIT

# --- registry with the images -----------------------------------------------------------------
echo "starting docker-registry and pushing bench/blob:v1 ($BLOB_MIB MiB) and bench/app:v1 ($LAYERS_MIB MiB)..."
"$BIN/registry-fixture" --dir "$P/fixture" --image "bench/blob:v1=$BLOB_MIB" --image "bench/app:v1=$LAYERS_MIB" \
  --env-file "$P/fixture.env" >/dev/null 2>"$P/fixture.log" &
FIX_PID=$!
for _ in $(seq 1200); do [ -f "$P/fixture.env" ] && break; kill -0 "$FIX_PID" 2>/dev/null || break; sleep 0.25; done
[ -f "$P/fixture.env" ] || die "registry-fixture failed: $(cat "$P/fixture.log")"
# shellcheck disable=SC1091
source "$P/fixture.env"
REG="$REG_HOST:$REG_PORT"
BLOB=$IMAGE1_LAYERS
BLOB_BYTES=$IMAGE1_BYTES
BLOB_PATH="/v2/$IMAGE1_REPO/blobs/$BLOB"

# origin_gets DIGEST: "GETs bytes" the registry served for the blob (its access log). Sums print
# with %.0f: mawk's %d stops at 2^31-1, which once froze the count of a layer served 8 times.
origin_gets() {
  awk -v d="$1" '$6 == "\"GET" && index($7, "/blobs/" d) && ($9 == 200 || $9 == 206) {n++; b += $10}
    END {printf "%d %.0f\n", n, b}' "$REG_ACCESS_LOG"
}

# --- trust, CA, configs -------------------------------------------------------------------------
"$BIN/dfdaemon" gen-ca --out "$P/proxy-ca" >/dev/null
PROXY_CA="$P/proxy-ca/ca.crt"
mkdir -p "$P/trust-origin" "$P/trust-proxy"
cp "$ORIGIN_CA" "$P/trust-origin/ca.crt"; cp "$PROXY_CA" "$P/trust-proxy/ca.crt"

D="$P/d"
mkdir -p "$D"
cat >"$D/dfget.yaml" <<CONF
dataDir: $D/data
logDir: $D/log
download:
  unixListen:
    socket: $D/sock
upload:
  tcpListen:
    listen: 127.0.0.1
    port: $UPLOAD_PORT
metrics:
  tcpListen:
    listen: 127.0.0.1
proxy:
  tcpListen:
    listen: 127.0.0.1
    port: $PROXY_PORT
  hijackHTTPS:
    cert: $PROXY_CA
    key: $P/proxy-ca/ca.key
    hosts:
      - regx: $REG_HOST
        certs: [$ORIGIN_CA]
  registryMirror:
    dynamic: true
    url: https://$REG
    certs: [$ORIGIN_CA]
CONF

# The floors of a proxied pull: the same daemon with nothing intercepted (every CONNECT a byte
# tunnel), and intercepting without P2P (a proxies rule that matches nothing: blobs are
# forwarded, decrypted and encrypted again, never stored).
sed 's/^      - regx: .*/      - regx: ^nothing-matches$/' "$D/dfget.yaml" >"$D/tunnel.yaml"
sed 's/^proxy:$/proxy:\n  proxies:\n    - regx: ^nothing-matches$/' "$D/dfget.yaml" >"$D/forward.yaml"
grep -q 'nothing-matches' "$D/tunnel.yaml" && grep -q 'nothing-matches' "$D/forward.yaml" || die "floor configs"

# start_dfdaemon [keep] [CONFIG]: a dfdaemon (config $D/CONFIG.yaml, default dfget) with an empty
# data dir (kept with `keep`); DPID.
start_dfdaemon() {
  stop_pid "$DPID"; DPID=""
  [ "${1:-}" = keep ] || rm -rf "$D/data"
  rm -f "$D/sock"
  "$BIN/dfdaemon" --config "$D/${2:-dfget}.yaml" >"$D/stdout.log" 2>"$D/stderr.log" &
  DPID=$!
  for _ in $(seq 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PROXY_PORT/ca.crt" 2>/dev/null && return 0
    kill -0 "$DPID" 2>/dev/null || break; sleep 0.05
  done
  die "dfdaemon did not start: $(tail -5 "$D/stderr.log")"
}
hwm_mib() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
rss_mib() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
reset_hwm() { echo 5 >"/proc/$1/clear_refs"; }
HZ=$(getconf CLK_TCK)
# ticks PID...: user + system CPU ticks of these processes so far.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
nginx_pids() { local m; m=$(cat "$P/nginx/nginx.pid"); echo "$m" $(pgrep -P "$m"); }
# per_gib TICKS BYTES: CPU seconds per GiB.
per_gib() { echo "$1 / $HZ / ($2 / 1073741824)" | bc -l; }

mkdir -p "$P/nginx/cache" "$P/nginx/tmp"
cat >"$P/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $P/nginx/nginx.pid;
error_log $P/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $P/nginx/tmp; proxy_temp_path $P/nginx/tmp; fastcgi_temp_path $P/nginx/tmp;
  uwsgi_temp_path $P/nginx/tmp; scgi_temp_path $P/nginx/tmp;
  sendfile on; tcp_nopush on; keepalive_timeout 65;
  proxy_cache_path $P/nginx/cache levels=1:2 keys_zone=blobs:32m max_size=10g inactive=30d use_temp_path=off;
  upstream origin { server 127.0.0.1:$REG_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    listen 127.0.0.1:$NGINX_HTTP_PORT;
    server_name $REG_HOST;
    ssl_certificate $SERVER_CERT; ssl_certificate_key $SERVER_KEY;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $REG;
    proxy_ssl_server_name on; proxy_ssl_name $REG_HOST;
    proxy_ssl_verify on; proxy_ssl_trusted_certificate $ORIGIN_CA;
    proxy_read_timeout 600s;
    location ~ "^/v2/.+/blobs/(sha256:[0-9a-f]{64})\$" {
      proxy_pass https://origin;
      proxy_cache blobs; proxy_cache_key \$1;
      proxy_cache_valid 200 30d; proxy_cache_lock on; proxy_cache_lock_timeout 600s;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
      add_header X-Cache-Status \$upstream_cache_status always;
    }
    location / { proxy_pass https://origin; }
  }
}
CONF
nginx -p "$P/nginx" -c "$P/nginx/nginx.conf" -t -q || die "bad nginx config $P/nginx/nginx.conf"
nginx -p "$P/nginx" -c "$P/nginx/nginx.conf"
for _ in $(seq 100); do listening "$NGINX_TLS_PORT" && break; sleep 0.05; done

# The four ways to fetch the blob: curl arguments before the URL, and the URL.
DF_TLS=(-x "http://127.0.0.1:$PROXY_PORT" --cacert "$PROXY_CA" "https://$REG$BLOB_PATH")
NG_TLS=(--cacert "$ORIGIN_CA" "https://$REG_HOST:$NGINX_TLS_PORT$BLOB_PATH")
DF_HTTP=(-H "X-Dragonfly-Registry: https://$REG" "http://127.0.0.1:$PROXY_PORT$BLOB_PATH")
NG_HTTP=("http://127.0.0.1:$NGINX_HTTP_PORT$BLOB_PATH")

# fetch CURL_ARGS...: one GET to /dev/null; prints "MiB/s seconds" (curl's figures).
fetch() {
  local out
  out=$(env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY \
    curl -fsS --http1.1 -o /dev/null -w '%{speed_download} %{time_total} %{size_download}' "$@") ||
    die "curl $* failed"
  read -r speed total size <<<"$out"
  [ "$size" = "$BLOB_BYTES" ] || die "curl $* got $size bytes, want $BLOB_BYTES"
  echo "$speed $total" | awk '{printf "%.1f %.3f\n", $1 / 1048576, $2}'
}
# fetch_parallel CURL_ARGS...: CLIENTS GETs at once; prints their total MiB / wall seconds.
fetch_parallel() {
  local s e i pids=()
  s=$(date +%s.%N)
  for i in $(seq "$CLIENTS"); do fetch "$@" >"$P/par.$i" & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i" || die "a parallel client failed: curl $*"; done
  e=$(date +%s.%N)
  echo "$CLIENTS * $BLOB_BYTES / 1048576 / ($e - $s)" | bc -l | awk '{printf "%.1f\n", $1}'
}

# --- 1. cache misses, then hits -----------------------------------------------------------------
start_dfdaemon
echo "blob $BLOB ($BLOB_BYTES bytes) on https://$REG"
read -r miss_before_gets miss_before_bytes < <(origin_gets "$BLOB")
out=$(fetch "${DF_TLS[@]}"); read -r df_miss_speed df_miss_s <<<"$out"
out=$(fetch "${NG_TLS[@]}"); read -r ng_miss_speed ng_miss_s <<<"$out"
hwm_miss=$(hwm_mib "$DPID")
printf 'miss (TLS): dfdaemon %.2fs (%.0f MiB/s), nginx %.2fs (%.0f MiB/s)\n' \
  "$df_miss_s" "$df_miss_speed" "$ng_miss_s" "$ng_miss_speed"
# Both caches must hold the blob now: nginx says HIT, dfdaemon answers HEAD from its storage.
for _ in $(seq 50); do
  curl -fsS --cacert "$ORIGIN_CA" -o /dev/null -D - "https://$REG_HOST:$NGINX_TLS_PORT$BLOB_PATH" |
    grep -qi '^x-cache-status: hit' && break
  sleep 0.2
done
curl -fsS --cacert "$ORIGIN_CA" -o /dev/null -D - "https://$REG_HOST:$NGINX_TLS_PORT$BLOB_PATH" |
  grep -qi '^x-cache-status: hit' || die "nginx does not serve the blob from its cache"
curl -fsSI "${DF_HTTP[@]}" | grep -qi '^x-dragonfly-task' || die "dfdaemon does not store the blob after the miss"
read -r gets_after_miss bytes_after_miss < <(origin_gets "$BLOB")
# A restart (storage kept) so the peak RSS of the hits is theirs, not the download's.
start_dfdaemon keep
idle=$(rss_mib "$DPID")
HIT_BYTES=$((RUNS * (1 + CLIENTS) * BLOB_BYTES))

declare -A R=()
for mode in TLS HTTP; do
  if [ "$mode" = TLS ]; then df=("${DF_TLS[@]}"); ng=("${NG_TLS[@]}"); else df=("${DF_HTTP[@]}"); ng=("${NG_HTTP[@]}"); fi
  : >"$P/df1"; : >"$P/ng1"; : >"$P/dfN"; : >"$P/ngN"
  reset_hwm "$DPID"
  # shellcheck disable=SC2046
  df_t0=$(ticks "$DPID"); ng_t0=$(ticks $(nginx_pids))
  for i in $(seq "$RUNS"); do
    # Alternate who goes first, so neither always runs on the other's warm page cache.
    if [ $((i % 2)) = 1 ]; then a=$(fetch "${df[@]}"); b=$(fetch "${ng[@]}"); else b=$(fetch "${ng[@]}"); a=$(fetch "${df[@]}"); fi
    echo "${a% *}" >>"$P/df1"; echo "${b% *}" >>"$P/ng1"
    printf 'hit %-4s 1 client,  run %d: dfdaemon %7.1f MiB/s  nginx %7.1f MiB/s\n' "$mode" "$i" "${a% *}" "${b% *}"
  done
  R[$mode.hwm1]=$(hwm_mib "$DPID")
  reset_hwm "$DPID"
  for i in $(seq "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then a=$(fetch_parallel "${df[@]}"); b=$(fetch_parallel "${ng[@]}"); else b=$(fetch_parallel "${ng[@]}"); a=$(fetch_parallel "${df[@]}"); fi
    echo "$a" >>"$P/dfN"; echo "$b" >>"$P/ngN"
    printf 'hit %-4s %d clients, run %d: dfdaemon %7.1f MiB/s  nginx %7.1f MiB/s (total)\n' "$mode" "$CLIENTS" "$i" "$a" "$b"
  done
  R[$mode.hwmN]=$(hwm_mib "$DPID")
  # shellcheck disable=SC2046
  R[$mode.dfcpu]=$(per_gib $(($(ticks "$DPID") - df_t0)) "$HIT_BYTES"); R[$mode.ngcpu]=$(per_gib $(($(ticks $(nginx_pids)) - ng_t0)) "$HIT_BYTES")
  R[$mode.df1]=$(median <"$P/df1"); R[$mode.ng1]=$(median <"$P/ng1")
  R[$mode.dfN]=$(median <"$P/dfN"); R[$mode.ngN]=$(median <"$P/ngN")
done
read -r gets_after_hits _ < <(origin_gets "$BLOB")
[ "$gets_after_hits" = "$gets_after_miss" ] ||
  die "the origin served the blob again during the hits ($gets_after_miss -> $gets_after_hits GETs)"
stop_pid "$DPID"; DPID=""
stop_nginx_cache
rm -rf "$P/nginx/cache" "$D/data"

# --- 2. cold skopeo copy, direct vs through the proxy ---------------------------------------------
APP="docker://$REG/$IMAGE2_REPO:$IMAGE2_TAG"
: >"$P/direct"; : >"$P/viaproxy"; : >"$P/regcpu-direct"; : >"$P/regcpu-proxy"; : >"$P/dfcpu"
: >"$P/tunnel"; : >"$P/forward"; : >"$P/mirror"; : >"$P/regcpu-tunnel"; : >"$P/regcpu-forward"; : >"$P/regcpu-mirror"
pull_hwm=0; pull_gets_ok=1
# skopeo's mirror config: pulls of the registry go to the daemon's mirror port over plain HTTP
# (as containerd does with a hosts.toml mirror); the daemon's registryMirror.url is the registry.
cat >"$P/registries.conf" <<CONF
[[registry]]
location = "$REG"
[[registry.mirror]]
location = "127.0.0.1:$PROXY_PORT"
insecure = true
CONF
# pull WAY: time one `skopeo copy` into an empty dir (WAY = direct | proxy | tunnel | forward |
# mirror; proxy, tunnel and forward through HTTPS_PROXY, the tunnel showing the client the
# registry's certificate; mirror through registries.conf).
pull() {
  local s e env_args=(env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u NO_PROXY -u no_proxy)
  local certs="$P/trust-origin"
  local global=()
  case $1 in
    proxy | forward) env_args+=(HTTPS_PROXY="http://127.0.0.1:$PROXY_PORT"); certs="$P/trust-proxy" ;;
    tunnel) env_args+=(HTTPS_PROXY="http://127.0.0.1:$PROXY_PORT") ;;
    mirror) global=(--registries-conf "$P/registries.conf") ;;
  esac
  rm -rf "$P/out"; sync
  s=$(date +%s.%N)
  local r0; r0=$(ticks "$REG_PID")
  "${env_args[@]}" skopeo "${global[@]}" copy -q --src-cert-dir "$certs" "$APP" "dir:$P/out" >"$P/skopeo.log" 2>&1 ||
    die "skopeo copy ($1) failed: $(tail -5 "$P/skopeo.log")"
  e=$(date +%s.%N)
  echo $(($(ticks "$REG_PID") - r0)) >>"$P/regcpu-$1"
  local got=0 f
  for f in $IMAGE2_LAYERS; do got=$((got + $(stat -c %s "$P/out/${f#sha256:}"))); done
  [ "$got" = "$IMAGE2_BYTES" ] || die "skopeo copy ($1) wrote $got layer bytes, want $IMAGE2_BYTES"
  rm -rf "$P/out"
  echo "$e - $s" | bc -l
}
# layer_bytes_since LINE: bytes of the image's layers the registry sent in the GETs it logged
# after line LINE of its access log.
layer_bytes_since() {
  awk -v from="$1" -v layers="$IMAGE2_LAYERS" 'BEGIN {n = split(layers, l, " ")}
    NR > from && $6 == "\"GET" && ($9 == 200 || $9 == 206) {for (i = 1; i <= n; i++) if (index($7, "/blobs/" l[i])) b += $10}
    END {printf "%.0f\n", b}' "$REG_ACCESS_LOG"
}
# log_settled: the access log's line count once it stopped growing for 0.3 s (the registry logs
# a request after its response ended, which can trail the client by a moment).
log_settled() {
  local a b same=0; a=$(wc -l <"$REG_ACCESS_LOG")
  for _ in $(seq 50); do
    sleep 0.1; b=$(wc -l <"$REG_ACCESS_LOG")
    if [ "$a" = "$b" ]; then same=$((same + 1)); [ "$same" -ge 3 ] && break; else same=0; a=$b; fi
  done
  echo "$a"
}
# proxied_pull: time a pull through the proxy (printed), and the layer bytes the registry sent
# for it (into $P/pulled).
proxied_pull() {
  local l0 t; l0=$(log_settled)
  t=$(pull proxy)
  for _ in $(seq 100); do [ "$(layer_bytes_since "$l0")" -ge "$IMAGE2_BYTES" ] && break; sleep 0.05; done
  log_settled >/dev/null
  layer_bytes_since "$l0" >"$P/pulled"
  echo "$t"
}
for i in $(seq "$PULL_RUNS"); do
  start_dfdaemon
  df_t0=$(ticks "$DPID")
  if [ $((i % 2)) = 1 ]; then p=$(proxied_pull); d=$(pull direct); else d=$(pull direct); p=$(proxied_pull); fi
  pulled=$(cat "$P/pulled")
  h=$(hwm_mib "$DPID"); [ "$h" -gt "$pull_hwm" ] && pull_hwm=$h
  echo $(($(ticks "$DPID") - df_t0)) >>"$P/dfcpu"
  [ "$pulled" = "$IMAGE2_BYTES" ] || pull_gets_ok=0
  stop_pid "$DPID"; DPID=""
  echo "$d" >>"$P/direct"; echo "$p" >>"$P/viaproxy"
  start_dfdaemon "" tunnel; t=$(pull tunnel)
  start_dfdaemon "" forward; f=$(pull forward)
  start_dfdaemon; m=$(pull mirror)
  stop_pid "$DPID"; DPID=""
  echo "$t" >>"$P/tunnel"; echo "$f" >>"$P/forward"; echo "$m" >>"$P/mirror"
  printf 'cold skopeo copy, run %d: direct %.2fs  proxy %.2fs (origin sent %d MiB for the proxied pull; dfdaemon peak RSS %d MiB); mirror %.2fs; floors: tunnel %.2fs, hijack without P2P %.2fs\n' \
    "$i" "$d" "$p" $((pulled >> 20)) "$h" "$m" "$t" "$f"
done
pd=$(median <"$P/direct"); pp=$(median <"$P/viaproxy"); pt=$(median <"$P/tunnel"); pf=$(median <"$P/forward"); pm=$(median <"$P/mirror")
cpu_s() { echo "$(median <"$1") / $HZ" | bc -l; }
reg_d=$(cpu_s "$P/regcpu-direct"); reg_p=$(cpu_s "$P/regcpu-proxy"); df_p=$(cpu_s "$P/dfcpu")

# --- tables -----------------------------------------------------------------------------------------
ratio() { echo "$1 / $2" | bc -l | awk '{printf "%.2fx", $1}'; }
row() { printf '| %-46s | %13s | %13s | %6s | %s\n' "$@"; }
rule() { row "$(printf -- '-%.0s' $(seq 46))" "-------------" "-------------" "------" "------"; }
echo
echo "Cache hit of a $BLOB_MIB MiB blob, median of $RUNS runs (HTTP/1.1 on loopback):"
row "" "dfdaemon" "nginx" "ratio" "target"; rule
row "miss, TLS (first GET; not in the hits)" "$(printf '%.2f s' "$df_miss_s")" "$(printf '%.2f s' "$ng_miss_s")" "$(ratio "$ng_miss_s" "$df_miss_s")" "(speed)"
for mode in TLS HTTP; do
  label=$([ "$mode" = TLS ] && echo "TLS: hijacking proxy / nginx https" || echo "HTTP: mirror / nginx http")
  row "$label, 1 client" "$(printf '%.0f MiB/s' "${R[$mode.df1]}")" "$(printf '%.0f MiB/s' "${R[$mode.ng1]}")" "$(ratio "${R[$mode.df1]}" "${R[$mode.ng1]}")" ">= 1.0x"
  row "$label, $CLIENTS clients*" "$(printf '%.0f MiB/s' "${R[$mode.dfN]}")" "$(printf '%.0f MiB/s' "${R[$mode.ngN]}")" "$(ratio "${R[$mode.dfN]}" "${R[$mode.ngN]}")" ">= 1.0x"
  row "$label, CPU/GiB" "$(printf '%.2f s' "${R[$mode.dfcpu]}")" "$(printf '%.2f s' "${R[$mode.ngcpu]}")" "" ""
done
echo "* total MiB/s of $CLIENTS curl at once (their bytes / wall time); CPU/GiB: server CPU seconds per GiB served in the hits"
echo
printf 'Cold skopeo copy of %s (%s MiB, %d layers) into dir:, median of %d, empty dfdaemon each run:\n' \
  "$IMAGE2_REPO:$IMAGE2_TAG" "$LAYERS_MIB" "$(wc -w <<<"$IMAGE2_LAYERS")" "$PULL_RUNS"
row "" "direct" "via proxy" "ratio" "target"; rule
row "wall time" "$(printf '%.2f s' "$pd")" "$(printf '%.2f s' "$pp")" "$(ratio "$pp" "$pd")" "<= 1.1x"
row "P2P through the mirror (plain HTTP to it)" "$(printf '%.2f s' "$pd")" "$(printf '%.2f s' "$pm")" "$(ratio "$pm" "$pd")" ""
row "floor: CONNECT tunnel, nothing intercepted" "$(printf '%.2f s' "$pd")" "$(printf '%.2f s' "$pt")" "$(ratio "$pt" "$pd")" ""
row "floor: hijacked, forwarded (no P2P, no disk)" "$(printf '%.2f s' "$pd")" "$(printf '%.2f s' "$pf")" "$(ratio "$pf" "$pd")" ""
row "registry CPU" "$(printf '%.2f s' "$reg_d")" "$(printf '%.2f s' "$reg_p")" "$(ratio "$reg_p" "$reg_d")" ""
row "dfdaemon CPU" "-" "$(printf '%.2f s' "$df_p")" "" ""
echo "origin bytes per proxied pull = image size (each layer fetched once): $([ "$pull_gets_ok" = 1 ] && echo yes || echo NO)"
echo
echo "dfdaemon peak RSS (VmHWM): cache miss ${hwm_miss} MiB; restarted with the blob stored ${idle} MiB;" \
  "hits TLS 1 client ${R[TLS.hwm1]} / $CLIENTS clients ${R[TLS.hwmN]} MiB, HTTP ${R[HTTP.hwm1]} / ${R[HTTP.hwmN]} MiB;" \
  "cold pull ${pull_hwm} MiB (max of $PULL_RUNS)"
printf 'origin: %d GETs, %d MiB for the two misses (dfdaemon, nginx: one copy each), nothing during the hits\n' \
  $((gets_after_miss - miss_before_gets)) $(((bytes_after_miss - miss_before_bytes) >> 20))
