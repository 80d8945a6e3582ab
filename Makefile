# spacelock — run `make help` for the targets.
SHELL        := /bin/bash
CARGO        ?= cargo
# Follows CARGO_TARGET_DIR, so tests load the module cargo just built.
MODULE       := $(abspath $(or $(CARGO_TARGET_DIR),$(CURDIR)/target))/release/libspacelock.so
REDIS_SERVER ?= redis-server
export SPACELOCK_MODULE := $(MODULE)

.DEFAULT_GOAL := help
.PHONY: help deps build run test lint fmt clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

deps: ## Install redis-server, redis-sentinel, libclang-dev (bindgen), nodejs and npm if missing (Debian, needs root)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-sentinel >/dev/null || missing="$$missing redis-sentinel"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Builds never install anything: `make deps` does, and only what is missing
# (run, test and lint call it, so a fresh Debian machine needs no step of its own).
build: ## Build the module: target/release/libspacelock.so (offline; `make deps` first on a fresh machine)
	$(CARGO) build --release -p spacelock

run: deps build ## Build, then serve the module on 127.0.0.1:6379 (redis.conf.example)
	$(REDIS_SERVER) $(CURDIR)/redis.conf.example --loadmodule $(MODULE)

test: deps build ## Unit + integration tests against real servers (Rust workspace, then the Node client)
	CARGO_TARGET_DIR=$(abspath $(or $(CARGO_TARGET_DIR),$(CURDIR)/target))/bench-tool \
	  $(CARGO) build --release --quiet --manifest-path bench/Cargo.toml
	$(CARGO) test --release --workspace
	$(MAKE) --no-print-directory test-node

# The Node client (clients/node). npm ci runs again only when the lockfile changes.
NODE_DIR     := $(CURDIR)/clients/node
NODE_STAMP   := $(NODE_DIR)/node_modules/.spacelock-npm-ci
FLEET_WORKER := $(abspath $(or $(CARGO_TARGET_DIR),$(CURDIR)/target))/release/examples/fleet_worker
export SPACELOCK_FLEET_WORKER := $(FLEET_WORKER)

$(NODE_STAMP): $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

.PHONY: test-node
test-node: build $(NODE_STAMP) ## Node client tests (node --test) against real redis-servers, incl. the mixed fleet with the Rust client
	$(CARGO) build --release -p spacelock-client --example fleet_worker
	cd $(NODE_DIR) && npm run --silent build && npm run --silent build:test
	cd $(NODE_DIR) && node --test build/test/*.test.js

.PHONY: test-compat
test-compat: build $(NODE_STAMP) ## Integration suite on Redis 7.0/8.2 + Valkey 8.1/9.1, the Node suite on Valkey 9.1 (NODE_SERVERS=), and Redis 6.2 refusal (TESTS=, SERVERS= to narrow)
	scripts/test-compat.sh

# The publish check packages the three published crates together (the client
# and the CLI depend on versions of core and client that crates.io does not
# have yet) and skips the debug rebuild; `make publish-check` runs it in full.
PUBLISHED    := -p spacelock-core -p spacelock-client -p spacelock-cli

lint: deps $(NODE_STAMP) ## fmt, clippy and rustdoc with warnings denied, test files registered, publish dry run, the Node type check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --release --workspace --no-deps --quiet
	python3 scripts/check-tests.py
	$(CARGO) publish --dry-run --no-verify --allow-dirty --quiet $(PUBLISHED)
	cd $(NODE_DIR) && npm run --silent typecheck

.PHONY: publish-check soak
publish-check: ## cargo publish --dry-run of the published crates, with the build each would get on crates.io (a few minutes)
	$(CARGO) publish --dry-run --allow-dirty $(PUBLISHED)

soak: ## make test with the long runs of the soak-length suites (SPACELOCK_SOAK=1: WAIT contention, the model, hostile input, the core fuzz)
	SPACELOCK_SOAK=1 $(MAKE) --no-print-directory test

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean
	rm -rf $(NODE_DIR)/dist $(NODE_DIR)/build

# The long run of the history checker (chaos/): a primary, two replicas and
# three Sentinels on loopback, CLI, Rust and Node clients, a fault every
# 8-15 s; prints the table and exits non-zero on any violation.
# CHAOS_ARGS="--topology cluster": a Redis Cluster of three primaries with a
# replica each instead.
CHAOS_SECONDS ?= 600
.PHONY: chaos
chaos: deps build $(NODE_STAMP) ## History checker under faults for CHAOS_SECONDS (default 600): prints the table, fails on any violation
	$(CARGO) build --release -p spacelock-cli -p spacelock-chaos
	cd $(NODE_DIR) && npm run --silent build && npm run --silent build:test
	$(abspath $(or $(CARGO_TARGET_DIR),$(CURDIR)/target))/release/spacelock-chaos run \
	  --seconds $(CHAOS_SECONDS) --node-worker $(NODE_DIR)/build/test/chaos-worker.js $(CHAOS_ARGS)

.PHONY: bench
bench: ## Benchmarks vs native SET/DELIFEQ and the existing service's Lua (QUICK=1: about a minute); writes target/bench/results.md
	QUICK=$(QUICK) bash bench/run.sh

.PHONY: bench-profile
bench-profile: ## callgrind instruction counts per call, module vs native (PROFILE_SERVER=, PROFILE_CASES=); writes target/bench/profile/table.md
	bash bench/run.sh profile

.PHONY: bench-docs
bench-docs: ## Copy target/bench/results.md (from the last `make bench`) into docs/performance.md, unedited
	python3 bench/readme_table.py target/bench/results.md docs/performance.md
