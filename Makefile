# Developer entry points. `make demo` shows the system working; `make test` runs every test.
CARGO ?= cargo
# Debian packages the test suite needs (installed by `make test` when missing).
TEST_PACKAGES := ca-certificates curl gcc libc6-dev docker-registry skopeo containerd podman apache2-utils runc python3-venv procps util-linux umoci jq iproute2 systemd prometheus
# Debian packages `make image` needs (its build and proof; see scripts/image.sh).
IMAGE_PACKAGES := ca-certificates curl podman skopeo umoci docker-registry jq iproute2
BENCH_PACKAGES := nginx curl bc docker-registry skopeo

.PHONY: all build release demo test lint fmt bench clean image install uninstall chart-test

# Where cargo builds (CARGO_TARGET_DIR when set).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The binaries shipped by `make install` and the images; tests/e2e/image.rs checks this list
# against the workspace's bin targets.
DIST_BINS := dfdaemon dfget scheduler
# `make install` layout: binaries under PREFIX, configs and units under SYSCONFDIR, all below DESTDIR.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(SYSCONFDIR)/systemd/system
# Install binaries from this directory instead of building them (`make install BINS_FROM=target/debug`).
BINS_FROM ?=

all: build

build:
	$(CARGO) build --workspace

# Release binaries say their commit in dragonfly_*_build_info (docs/metrics.md).
release:
	GIT_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) $(CARGO) build --release --workspace --bins

demo: release
	bash scripts/ensure-deps.sh curl
	bash scripts/demo.sh

test:
	bash scripts/ensure-deps.sh $(TEST_PACKAGES)
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	bash scripts/chart-test.sh

# The Helm chart: lint, render, validate, configs, the rendered topology as processes (docs/helm.md).
chart-test:
	bash scripts/ensure-deps.sh $(TEST_PACKAGES)
	bash scripts/chart-test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: release
	bash scripts/ensure-deps.sh $(BENCH_PACKAGES)
	bash bench/standalone.sh
	bash bench/p2p.sh
	bash bench/scheduler.sh
	bash bench/swarm.sh
	bash bench/proxy.sh

clean:
	$(CARGO) clean

# A container image built without a base image (FROM scratch, podman on a vfs store), proved by
# running it (see scripts/image.sh); the Dockerfile is for builders with a registry.
image: release
	bash scripts/ensure-deps.sh $(IMAGE_PACKAGES)
	bash scripts/image.sh --bin-dir $(TARGET_DIR)/release --out $(TARGET_DIR)/image

# Binaries, systemd units and default configs; an existing config is never replaced.
install: $(if $(BINS_FROM),,release)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/dragonfly
	for b in $(DIST_BINS); do install -m 0755 $(or $(BINS_FROM),$(TARGET_DIR)/release)/$$b $(DESTDIR)$(BINDIR)/$$b || exit 1; done
	for u in dfdaemon scheduler; do \
	  sed -e 's|/usr/local/bin/|$(BINDIR)/|' -e 's|/etc/dragonfly/|$(SYSCONFDIR)/dragonfly/|' \
	    config/systemd/$$u.service >$(DESTDIR)$(UNITDIR)/$$u.service && \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.service || exit 1; \
	done
	for c in dfdaemon scheduler; do \
	  f=$(DESTDIR)$(SYSCONFDIR)/dragonfly/$$c.yaml; \
	  if [ ! -e $$f ]; then install -m 0644 config/$$c.yaml $$f || exit 1; \
	  elif ! cmp -s config/$$c.yaml $$f; then echo "install: kept $$f (the new defaults are in config/$$c.yaml)"; fi; \
	done
	@echo "installed; then: systemctl daemon-reload && systemctl enable --now dfdaemon (and scheduler)"

# Removes binaries and units, and a config only while it still equals the shipped default.
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(DIST_BINS))
	rm -f $(DESTDIR)$(UNITDIR)/dfdaemon.service $(DESTDIR)$(UNITDIR)/scheduler.service
	for c in dfdaemon scheduler; do \
	  f=$(DESTDIR)$(SYSCONFDIR)/dragonfly/$$c.yaml; \
	  if cmp -s config/$$c.yaml $$f; then rm -f $$f; \
	  elif [ -e $$f ]; then echo "uninstall: kept the changed $$f"; fi; \
	done
	rmdir $(DESTDIR)$(SYSCONFDIR)/dragonfly 2>/dev/null || true
