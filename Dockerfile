# syntax=docker/dockerfile:1
# The dragonfly-rs image for builders with a registry: docker build -t dragonfly-rs .
# (podman and buildah build it too). The same files as `make image`, which builds FROM scratch
# where no base image can be pulled: see docs/install.md.
#
# One image for every role: dfdaemon (default command), dfget, scheduler. It runs as the
# non-root user dragonfly (65532:65532), which owns the default data, log, cache and socket
# directories; a dfdaemon that needs hostPath directories owned by root runs with
# `runAsUser: 0` (the chart decides), the scheduler never needs it.

# Build stage: the toolchain pinned to the version the project is built and tested with.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dfdaemon -p scheduler \
        --bin dfdaemon --bin dfget --bin scheduler \
    && mkdir -p /out \
    && cp target/release/dfdaemon target/release/dfget target/release/scheduler /out/

# Run stage: the Debian release the build stage links against (same glibc).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 dragonfly \
    && useradd --uid 65532 --gid 65532 --home-dir /var/lib/dragonfly --no-create-home \
        --shell /usr/sbin/nologin dragonfly \
    && mkdir -p /var/lib/dragonfly /var/log/dragonfly /var/cache/dragonfly /run/dragonfly \
    && chown 65532:65532 /var/lib/dragonfly /var/log/dragonfly /var/cache/dragonfly /run/dragonfly
COPY --from=build /out/dfdaemon /out/dfget /out/scheduler /usr/bin/
COPY config/dfdaemon.yaml config/scheduler.yaml /etc/dragonfly/
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dragonfly-rs" \
      org.opencontainers.image.description="P2P file and image distribution: dfdaemon, dfget, scheduler" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# dfdaemon: proxy 65001, upload 65002, metrics 65003; scheduler: gRPC 8002, metrics 8003.
EXPOSE 65001 65002 65003 8002 8003
USER 65532:65532
WORKDIR /var/lib/dragonfly
# No ENTRYPOINT: `docker run IMAGE` runs the daemon, `docker run IMAGE scheduler --config
# /etc/dragonfly/scheduler.yaml` the scheduler, `docker run IMAGE dfget URL -O FILE` a download.
CMD ["/usr/bin/dfdaemon", "--config", "/etc/dragonfly/dfdaemon.yaml"]
