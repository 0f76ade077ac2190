# The README's commands. `make test` first runs `make setup`, which installs what the tests
# need on a fresh Debian machine (redis-server, openssl, Envoy) and skips what is there.
CARGO ?= cargo

.PHONY: run test test-integration lint bench bench-script load-test setup fmt image deny fuzz fuzz-smoke

# Extra flags for the service, e.g. ARGS="--redis-url redis://127.0.0.1:6379".
ARGS ?=

run:
	$(CARGO) run --release -- --config config/ratelimiter.yaml $(ARGS)

test: setup
	$(CARGO) test --all-targets

# Only the tests against a real redis-server (single, Cluster, Sentinel, TLS) and a real Envoy,
# the chaos tests among them.
# (envoy_doors speaks Envoy's protocols to the service without an Envoy: not among them.)
INTEGRATION_TESTS := $(filter-out envoy_doors,\
	$(sort $(basename $(notdir $(wildcard tests/redis_*.rs tests/envoy_*.rs tests/istio_*.rs \
	tests/rolling_update.rs tests/chaos_*.rs)))))

test-integration: setup
	$(CARGO) test $(addprefix --test ,$(INTEGRATION_TESTS))

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

# criterion: a full in-memory decision, and descriptor matching in a 5,600-descriptor config.
bench:
	$(CARGO) bench --bench decide --bench matching

# The decide script's time inside Redis against the smallest script per algorithm.
bench-script: setup
	$(CARGO) bench --bench script_cost

# The load tests, written into k6/results/ (k6/results.md reads them): k6 through each door at
# fixed rates, in memory and with Redis, then ghz side by side against the no-op gRPC server.
# About 35 minutes; everything runs on this machine, so run it on a quiet one.
load-test: setup
	bash scripts/setup-load.sh
	bash k6/load-test.sh memory
	bash k6/load-test.sh redis
	bash k6/side-by-side.sh

setup:
	bash scripts/setup.sh

# The container image, built with Podman from a release binary built here (no base image is
# pulled), and its entrypoint run from the exported filesystem. Needs podman and root.
image:
	bash scripts/image.sh

# Licenses, advisories (from a local snapshot of RustSec's database), duplicate versions and
# sources of every dependency, against deny.toml. Without the snapshot, the advisories are
# skipped with a warning saying so.
deny:
	bash scripts/setup-checks.sh
	if [ -d .tools/advisory-dbs/advisory-db-3157b0e258782691 ]; then \
		$(CARGO) deny --offline check; \
	else \
		echo "WARNING: no RustSec advisory database (see scripts/setup-checks.sh): advisories NOT checked"; \
		$(CARGO) deny --offline check bans licenses sources; \
	fi

FUZZ_TARGETS := config descriptors http_check grpc_doors redis_reply
# Each fuzz target for FUZZ_RUNS executions (a million by default), growing fuzz/corpus/.
FUZZ_RUNS ?= 1000000
fuzz:
	bash scripts/setup-checks.sh fuzz
	cd fuzz && toolchain=$$(cat ../.tools/nightly-toolchain) && for t in $(FUZZ_TARGETS); do \
		$(CARGO) +$$toolchain fuzz run -O $$t -- -runs=$(FUZZ_RUNS) -max_len=4096 || exit 1; \
	done

# A short run of each target over its committed corpus, for CI.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_RUNS=20000
