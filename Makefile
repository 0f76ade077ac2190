# The README's commands. `make setup` installs what the tests need on a fresh Debian machine.
CARGO ?= cargo

.PHONY: run test lint bench setup fmt

# Extra flags for the service, e.g. ARGS="--redis-url redis://127.0.0.1:6379".
ARGS ?=

run:
	$(CARGO) run --release -- --config config/ratelimiter.yaml $(ARGS)

test:
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench:
	$(CARGO) bench --bench decide

setup:
	bash scripts/setup.sh
