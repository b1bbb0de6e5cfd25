# Shared helpers of the benchmark scripts (sourced).
BIN=${BIN:-target/release}
W=${BENCH_WORK:-/tmp/dfbench}
PORT=${PORT:-18090}

# gen_file NAME MIB: random content in $W/www/NAME (kept between runs).
gen_file() {
  mkdir -p "$W/www"
  if [ "$(stat -c %s "$W/www/$1" 2>/dev/null || echo 0)" != $(($2 << 20)) ]; then
    echo "generating $2 MiB $1..."
    head -c $(($2 << 20)) /dev/urandom >"$W/www/$1"
  fi
}

# start_nginx: serve $W/www on 127.0.0.1:$PORT (sendfile on), stopped at exit.
start_nginx() {
  mkdir -p "$W/nginx/tmp"
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
  [ -f "$W/nginx/nginx.pid" ] && kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null && sleep 0.3 || true
  nginx -c "$W/nginx/nginx.conf" -p "$W/nginx"
}
stop_nginx() { [ -f "$W/nginx/nginx.pid" ] && kill "$(cat "$W/nginx/nginx.pid")" 2>/dev/null || true; }

# secs CMD...: wall seconds of a command (its output discarded).
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# start_daemon NAME UPLOAD_PORT [PARENT_PORT]: a dfdaemon with its state in $W/d/NAME.
start_daemon() {
  local d="$W/d/$1" parents=""
  [ -n "${3:-}" ] && parents="\"127.0.0.1:$3\""
  mkdir -p "$d"
  cat >"$d/dfget.yaml" <<CONF
dataDir: $d/data
logDir: $d/log
download:
  unixListen:
    socket: $d/dfdaemon.sock
  parents: [$parents]
upload:
  tcpListen:
    listen: 127.0.0.1
    port: $2
storage:
  multiplex: ${MULTIPLEX:-false}
# Several daemons share 127.0.0.1: none serves /metrics (counting still happens).
metrics:
  enable: false
CONF
  "$BIN/dfdaemon" --config "$d/dfget.yaml" >"$d/stdout.log" 2>"$d/stderr.log" &
  echo $! >"$d/pid"
  for _ in $(seq 100); do [ -S "$d/dfdaemon.sock" ] && return 0; sleep 0.05; done
  echo "daemon $1 did not start: $(cat "$d/stderr.log")" >&2; return 1
}
stop_daemon() { local d="$W/d/$1"; [ -f "$d/pid" ] && kill "$(cat "$d/pid")" 2>/dev/null; wait "$(cat "$d/pid")" 2>/dev/null || true; rm -f "$d/pid"; }
sock() { echo "$W/d/$1/dfdaemon.sock"; }
