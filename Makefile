# The README's commands. `make test` first runs `make setup`, which installs what the tests
# need on a fresh Debian machine (redis-server, openssl, Envoy) and skips what is there.
CARGO ?= cargo

.PHONY: run test test-integration lint bench setup fmt image

# Extra flags for the service, e.g. ARGS="--redis-url redis://127.0.0.1:6379".
ARGS ?=

run:
	$(CARGO) run --release -- --config config/ratelimiter.yaml $(ARGS)

test: setup
	$(CARGO) test --all-targets

# Only the tests against a real redis-server (single, Cluster, Sentinel, TLS) and a real Envoy.
# (envoy_doors speaks Envoy's protocols to the service without an Envoy: not among them.)
INTEGRATION_TESTS := $(filter-out envoy_doors,\
	$(sort $(basename $(notdir $(wildcard tests/redis_*.rs tests/envoy_*.rs tests/istio_*.rs \
	tests/rolling_update.rs)))))

test-integration: setup
	$(CARGO) test $(addprefix --test ,$(INTEGRATION_TESTS))

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench:
	$(CARGO) bench --bench decide

setup:
	bash scripts/setup.sh

# The container image, built with Podman from a release binary built here (no base image is
# pulled), and its entrypoint run from the exported filesystem. Needs podman and root.
image:
	bash scripts/image.sh
