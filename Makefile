# spacelock — run `make help` for the targets.
SHELL        := /bin/bash
CARGO        ?= cargo
# Follows CARGO_TARGET_DIR, so tests load the module cargo just built.
MODULE       := $(abspath $(or $(CARGO_TARGET_DIR),$(CURDIR)/target))/release/libspacelock.so
REDIS_SERVER ?= redis-server
export SPACELOCK_MODULE := $(MODULE)

.DEFAULT_GOAL := help
.PHONY: help deps build run test test-unit test-integration lint fmt clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

deps: ## Install redis-server, redis-sentinel and libclang-dev (bindgen) if missing (Debian, needs root)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null || missing="$$missing redis-sentinel"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps ## Build the module: target/release/libspacelock.so
	$(CARGO) build --release -p spacelock

run: build ## Build, then serve the module on 127.0.0.1:6379 (redis.conf.example)
	$(REDIS_SERVER) $(CURDIR)/redis.conf.example --loadmodule $(MODULE)

test: build ## Unit + integration tests against a real redis-server
	$(CARGO) test --release --workspace

.PHONY: test-compat
test-compat: build ## Integration suite on Redis 7.0/8.2 + Valkey 8.1/9.1, and Redis 6.2 refusal (TESTS=, SERVERS= to narrow)
	scripts/test-compat.sh

lint: ## cargo fmt --check + clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean

.PHONY: bench
bench: ## Benchmarks vs native SET/DELIFEQ and the seed's Lua (QUICK=1: < 1 min); writes target/bench/results.md
	QUICK=$(QUICK) bash bench/run.sh

.PHONY: bench-profile
bench-profile: ## callgrind instruction counts per call, module vs native (PROFILE_SERVER=, PROFILE_CASES=); writes target/bench/profile/table.md
	bash bench/run.sh profile

.PHONY: bench-readme
bench-readme: ## Copy target/bench/results.md (from the last `make bench`) into README.md's Performance section, unedited
	python3 bench/readme_table.py target/bench/results.md README.md
