# Developer entry points. `make demo` shows the system working; `make test` runs every test.
CARGO ?= cargo
# Debian packages the test suite needs (installed by `make test` when missing).
TEST_PACKAGES := ca-certificates curl gcc libc6-dev docker-registry skopeo containerd podman apache2-utils runc python3-venv procps util-linux prometheus
BENCH_PACKAGES := nginx curl bc docker-registry skopeo

.PHONY: all build release demo test chart-test lint fmt bench clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace --bins

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
