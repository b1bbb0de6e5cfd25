#!/usr/bin/env bash
# Build the dragonfly-rs container image without any base image, then prove it works.
#
# Usage: scripts/image.sh [--bin-dir DIR] [--out DIR] [--tag TAG]
#   --bin-dir  where dfdaemon, dfget, scheduler (and dforigin, used only by the proof) are
#              [target/release]; `make test` passes target/debug.
#   --out      work and result directory [target/image]: the image store (containers-storage on
#              vfs), the OCI layout `oci/`, the unpacked `rootfs/`, logs and `proof.env`.
#   --tag      image tag [the workspace version].
#
# The image is `FROM scratch`: the binaries, the shared libraries `ldd` lists for them and the
# dynamic loader, CA certificates, /etc/passwd and /etc/group with the non-root user
# dragonfly (65532:65532), the default configs under /etc/dragonfly, and the daemon's default
# directories owned by that user. Built with podman on a private vfs store (no overlay, no
# daemon), so it works as root in CI and leaves the host's container storage alone.
#
# The proof, each step failing the script when it does not hold:
#   1. export the image as an OCI layout (skopeo) and unpack it (umoci);
#   2. `chroot ROOTFS /usr/bin/{dfdaemon,dfget,scheduler} --version` as uid 65532;
#   3. `dfget` inside the chroot from a local origin without a daemon (standalone), bytes checked;
#   4. the image's own dfdaemon started in the chroot as uid 65532 on its default directories,
#      and a dfget inside the chroot through its socket, bytes checked;
#   5. push the image to a local docker-registry, pull it twice with skopeo through that
#      dfdaemon as a registry mirror: both pulls give the pushed manifest digest and the same
#      blobs, and the registry served each blob's bytes exactly once.
# Results go to OUT/proof.env (KEY=VALUE lines), read by tests/e2e/image.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=target/release
OUT=target/image
TAG=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The shipped binaries; tests/e2e/image.rs checks this list against the workspace's bin targets.
BINS=(dfdaemon dfget scheduler)
IMAGE_USER=65532
NAME=localhost/dragonfly-rs
# Tools and the Debian packages that hold them (all in the Makefile's TEST_PACKAGES).
TOOLS=(podman:podman skopeo:skopeo umoci:umoci docker-registry:docker-registry curl:curl
  jq:jq ldd:libc-bin chroot:coreutils sha256sum:coreutils)

die() { echo "image.sh: $*" >&2; exit 1; }
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || die "needs root (chroot, a vfs store, files owned by uid $IMAGE_USER)"
for t in "${TOOLS[@]}"; do
  command -v "${t%%:*}" >/dev/null || die "${t%%:*} is missing (Debian package ${t#*:}; make test installs it)"
done
for b in "${BINS[@]}" dforigin; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: build it first (cargo build --workspace --bins${BIN_DIR/*release*/ --release})"
done
if [ -z "$TAG" ]; then
  TAG=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
  [ -n "$TAG" ] || die "no version in Cargo.toml's [workspace.package]"
fi
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
IMAGE="$NAME:$TAG"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STORE="$OUT/storage"
RUNROOT="$OUT/runroot"
CTX="$OUT/context"
ROOTFS="$OUT/rootfs"
WORK="$OUT/work"
PODMAN=(podman --root "$STORE" --runroot "$RUNROOT" --storage-driver vfs)
STORAGE_REF="containers-storage:[vfs@$STORE+$RUNROOT]$IMAGE"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
rm -rf "$CTX" "$ROOTFS" "$WORK" "$OUT/oci" "$OUT/proof.env"
mkdir -p "$CTX/root" "$WORK"

step "staging the image's files from $BIN_DIR"
R="$CTX/root"
mkdir -p "$R/usr/bin" "$R/etc/dragonfly" "$R/etc/ssl/certs" "$R/tmp" "$R/run" "$R/var"
for b in "${BINS[@]}"; do install -m 0755 "$BIN_DIR/$b" "$R/usr/bin/$b"; done
# Every library ldd resolves, and the loader, at the paths the binaries ask for.
libs=$(for b in "${BINS[@]}"; do ldd "$BIN_DIR/$b"; done |
  awk '/not found/ {print "MISSING " $1; next} $2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
grep '^MISSING' <<<"$libs" && die "ldd cannot resolve the libraries above"
for lib in $libs; do
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt" ||
  die "/etc/ssl/certs/ca-certificates.crt is missing (Debian package ca-certificates)"
cp config/dfdaemon.yaml config/scheduler.yaml "$R/etc/dragonfly/"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\ndragonfly:x:%s:%s:dragonfly:/var/lib/dragonfly:/usr/sbin/nologin\n' \
  "$IMAGE_USER" "$IMAGE_USER" >"$R/etc/passwd"
printf 'root:x:0:\ndragonfly:x:%s:\n' "$IMAGE_USER" >"$R/etc/group"
# Name lookups go through files, then DNS (glibc 2.34+ has both built in: no NSS modules to copy).
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$R/etc/nsswitch.conf"
chmod 1777 "$R/tmp"
ln -s ../run "$R/var/run"
# Directories the daemon and the scheduler write by default, owned by the image's user (their
# parents stay root's).
for d in var/lib/dragonfly var/log/dragonfly var/cache/dragonfly run/dragonfly; do
  mkdir -p "$R/$d"
  chown "$IMAGE_USER:$IMAGE_USER" "$R/$d"
done
# One layer from a tar: ADD keeps the tar's owners and modes (COPY --chown would also chown
# every parent directory it creates).
tar --numeric-owner --sort=name -C "$R" -cf "$CTX/rootfs.tar" .
rm -rf "$R"

REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
cat >"$CTX/Containerfile" <<EOF
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="dragonfly-rs" \\
      org.opencontainers.image.description="P2P file and image distribution: dfdaemon, dfget, scheduler" \\
      org.opencontainers.image.version="$VERSION" \\
      org.opencontainers.image.revision="$REVISION" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      org.opencontainers.image.base.name="scratch"
# dfdaemon: proxy, upload, metrics; scheduler: gRPC, metrics.
EXPOSE 65001 65002 65003 8002 8003
USER $IMAGE_USER:$IMAGE_USER
WORKDIR /var/lib/dragonfly
CMD ["/usr/bin/dfdaemon", "--config", "/etc/dragonfly/dfdaemon.yaml"]
EOF

step "building $IMAGE (podman, vfs store $STORE)"
"${PODMAN[@]}" build --pull=never --quiet --tag "$IMAGE" "$CTX" >"$WORK/build.log" 2>&1 ||
  die "podman build failed: $(tail -20 "$WORK/build.log")"
"${PODMAN[@]}" image prune --force >/dev/null # an earlier build under this tag, now untagged

step "exporting it as an OCI layout and unpacking it"
skopeo copy --quiet "$STORAGE_REF" "oci:$OUT/oci:$TAG" >"$WORK/export.log" 2>&1 ||
  die "skopeo copy $STORAGE_REF oci:$OUT/oci:$TAG failed: $(cat "$WORK/export.log")"
umoci raw unpack --image "$OUT/oci:$TAG" "$ROOTFS" >"$WORK/unpack.log" 2>&1 ||
  die "umoci raw unpack failed: $(cat "$WORK/unpack.log")"
MANIFEST_DIGEST=$(jq -r --arg t "$TAG" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$OUT/oci/index.json")
[ -n "$MANIFEST_DIGEST" ] || die "no manifest tagged $TAG in $OUT/oci/index.json"
blob() { echo "$OUT/oci/blobs/${1%%:*}/${1#*:}"; }
CONFIG_DIGEST=$(jq -r .config.digest "$(blob "$MANIFEST_DIGEST")")
BLOBS=$(jq -r '.config.digest, .layers[].digest' "$(blob "$MANIFEST_DIGEST")")
IMAGE_BYTES=$(jq '[.config.size, .layers[].size] | add' "$(blob "$MANIFEST_DIGEST")")
echo "   manifest $MANIFEST_DIGEST, $(wc -l <<<"$BLOBS") blobs, $IMAGE_BYTES bytes"

IN=(chroot --userspec="$IMAGE_USER:$IMAGE_USER" "$ROOTFS")
step "chroot $ROOTFS: --version of each binary, as uid $IMAGE_USER"
for b in "${BINS[@]}"; do
  v=$("${IN[@]}" "/usr/bin/$b" --version 2>&1) || die "chroot ROOTFS /usr/bin/$b --version failed: $v"
  echo "   $v"
  [ "$v" = "$b $VERSION" ] || die "/usr/bin/$b --version printed '$v', expected '$b $VERSION'"
done
DFDAEMON_VERSION=$("${IN[@]}" /usr/bin/dfdaemon --version)

# Start "$@" in the background, logging to $WORK/$NAME.log, and wait until `ready` succeeds.
start() { # NAME READY_CMD CMD...
  local name=$1 ready=$2
  shift 2
  "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 300); do
    eval "$ready" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited at start: $(tail -20 "$WORK/$name.log")"
    sleep 0.1
  done
  die "$name did not get ready ($ready): $(tail -20 "$WORK/$name.log")"
}
port() { # a port nothing listens on now
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Htln "sport = :$p")" ] && echo "$p" && return 0
  done
  die "no free port found"
}

step "dfget inside the chroot from a local origin, no daemon (standalone)"
mkdir -p "$WORK/origin"
ORIGIN_PORT=$(port)
start origin "curl -fsS http://127.0.0.1:$ORIGIN_PORT/_stats" \
  "$BIN_DIR/dforigin" --listen "127.0.0.1:$ORIGIN_PORT" --dir "$WORK/origin" --generate "file.bin=16"
ORIGIN_SHA=$(sha256sum "$WORK/origin/file.bin" | cut -d' ' -f1)
"${IN[@]}" /usr/bin/dfget --standalone -q "http://127.0.0.1:$ORIGIN_PORT/file.bin" -O /tmp/standalone.bin ||
  die "dfget --standalone inside the chroot failed"
STANDALONE_SHA=$(sha256sum "$ROOTFS/tmp/standalone.bin" | cut -d' ' -f1)
[ "$STANDALONE_SHA" = "$ORIGIN_SHA" ] || die "standalone dfget wrote other bytes: $STANDALONE_SHA != $ORIGIN_SHA"
echo "   16 MiB, sha256 $ORIGIN_SHA"

step "a docker-registry on 127.0.0.1, and the image pushed to it"
REGISTRY_PORT=$(port)
mkdir -p "$WORK/registry"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $WORK/registry/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$REGISTRY_PORT}
EOF
start registry "curl -fsS http://127.0.0.1:$REGISTRY_PORT/v2/" docker-registry serve "$WORK/registry/config.yml"
REPO=dragonfly-rs
skopeo copy --quiet --dest-tls-verify=false --digestfile "$WORK/pushed.digest" \
  "oci:$OUT/oci:$TAG" "docker://127.0.0.1:$REGISTRY_PORT/$REPO:$TAG" >"$WORK/push.log" 2>&1 ||
  die "push failed: $(cat "$WORK/push.log")"
PUSHED_DIGEST=$(cat "$WORK/pushed.digest")
[ "$PUSHED_DIGEST" = "$MANIFEST_DIGEST" ] || die "pushed manifest $PUSHED_DIGEST != layout manifest $MANIFEST_DIGEST"
echo "   pushed 127.0.0.1:$REGISTRY_PORT/$REPO:$TAG $PUSHED_DIGEST"

step "the image's dfdaemon in the chroot as uid $IMAGE_USER, on its default directories"
PROXY_PORT=$(port)
UPLOAD_PORT=$(port)
METRICS_PORT=$(port)
# Only addresses and ports differ from /etc/dragonfly/dfdaemon.yaml: dataDir, logDir, cacheDir and
# the socket keep their defaults, so this proves the image's user can write them.
cat >"$ROOTFS/tmp/proof-dfdaemon.yaml" <<EOF
host: {hostname: image-proof, advertiseIP: 127.0.0.1, listenIP: 127.0.0.1}
upload: {tcpListen: {listen: 127.0.0.1, port: $UPLOAD_PORT}}
metrics: {tcpListen: {listen: 127.0.0.1, port: $METRICS_PORT}}
proxy:
  tcpListen: {listen: 127.0.0.1, port: $PROXY_PORT}
  registryMirror: {url: "http://127.0.0.1:$REGISTRY_PORT"}
  whiteList: [{host: 127.0.0.1}]
EOF
start dfdaemon "curl -fsS http://127.0.0.1:$PROXY_PORT/healthy" \
  "${IN[@]}" /usr/bin/dfdaemon --config /tmp/proof-dfdaemon.yaml
[ -S "$ROOTFS/run/dragonfly/dfdaemon.sock" ] || die "no socket at /var/run/dragonfly/dfdaemon.sock in the chroot"
[ -s "$ROOTFS/var/log/dragonfly/daemon/core.log" ] || die "no /var/log/dragonfly/daemon/core.log in the chroot"

step "dfget inside the chroot through the daemon's socket"
"${IN[@]}" /usr/bin/dfget -q "http://127.0.0.1:$ORIGIN_PORT/file.bin" -O /tmp/daemon.bin ||
  die "dfget through the daemon failed: $(tail -5 "$ROOTFS/var/log/dragonfly/daemon/core.log")"
DAEMON_SHA=$(sha256sum "$ROOTFS/tmp/daemon.bin" | cut -d' ' -f1)
[ "$DAEMON_SHA" = "$ORIGIN_SHA" ] || die "dfget through the daemon wrote other bytes: $DAEMON_SHA != $ORIGIN_SHA"
grep -q "file.bin" "$ROOTFS/var/log/dragonfly/daemon/core.log" ||
  die "the daemon's core.log does not mention file.bin: dfget did not go through the daemon"
echo "   same bytes; the task is in the daemon's core.log"

step "pulling the image through the daemon's registry mirror (twice)"
pull() { # N
  skopeo copy --quiet --src-tls-verify=false --digestfile "$WORK/pulled$1.digest" \
    "docker://127.0.0.1:$PROXY_PORT/$REPO:$TAG" "oci:$WORK/pulled$1:$TAG" >"$WORK/pull$1.log" 2>&1 ||
    die "pull $1 through the mirror failed: $(cat "$WORK/pull$1.log")"
  local d
  d=$(cat "$WORK/pulled$1.digest")
  [ "$d" = "$PUSHED_DIGEST" ] || die "pull $1 gave manifest $d, pushed $PUSHED_DIGEST"
  for b in $BLOBS; do
    cmp -s "$(blob "$b")" "$WORK/pulled$1/blobs/${b%%:*}/${b#*:}" || die "pull $1: blob $b differs from the image's"
  done
  echo "   pull $1: $d, every blob identical"
}
pull 1
pull 2
PULLED_DIGEST=$(cat "$WORK/pulled2.digest")
# Bytes of successful blob GETs in the registry's access log (gorilla combined format; the push
# sends no blob GET). A line is written after its handler returns, so wait for the last ones.
served() { # DIGEST
  awk -v d="/blobs/$1" '$6 == "\"GET" && index($7, d) && ($9 == 200 || $9 == 206) {s += $10} END {print s + 0}' \
    "$WORK/registry.log"
}
for _ in $(seq 50); do
  SERVED="" SERVED_ALL=1
  for b in $BLOBS; do
    size=$(stat -c %s "$(blob "$b")")
    got=$(served "$b")
    SERVED+="$b=$got/$size "
    [ "$got" = "$size" ] || SERVED_ALL=0
  done
  [ "$SERVED_ALL" = 1 ] && break
  sleep 0.1
done
echo "   registry bytes served per blob (served/size): $SERVED"
[ "$SERVED_ALL" = 1 ] || die "the registry did not serve each blob exactly once: $SERVED"
TASKS=$(grep -c 'blobs/sha256' "$ROOTFS/var/log/dragonfly/daemon/core.log" || true)
[ "$TASKS" -gt 0 ] || die "the daemon's core.log names no blob: the pulls did not go through its P2P path"

cat >"$OUT/proof.env" <<EOF
IMAGE=$IMAGE
VERSION=$VERSION
DFDAEMON_VERSION=$DFDAEMON_VERSION
MANIFEST_DIGEST=$MANIFEST_DIGEST
CONFIG_DIGEST=$CONFIG_DIGEST
IMAGE_BYTES=$IMAGE_BYTES
BLOBS=$(echo $BLOBS)
ORIGIN_SHA256=$ORIGIN_SHA
STANDALONE_SHA256=$STANDALONE_SHA
DAEMON_SHA256=$DAEMON_SHA
PUSHED_DIGEST=$PUSHED_DIGEST
PULLED_DIGEST=$PULLED_DIGEST
REGISTRY_SERVED=$SERVED
EOF
step "proved: $IMAGE ($MANIFEST_DIGEST)"
echo "   OCI layout: $OUT/oci:$TAG   image store: $STORAGE_REF"
echo "   push it elsewhere: skopeo copy oci:$OUT/oci:$TAG docker://REGISTRY/dragonfly-rs:$TAG"
