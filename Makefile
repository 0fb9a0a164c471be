# rsp: thin wrappers over cargo. `make` alone prints this help.
.DEFAULT_GOAL := help
.PHONY: help build run backend test lint clean diff \
        run-1 run-2 run-3 run-4 run-5 run-6 test-1 test-2 test-3 test-4 test-5 test-6
.PHONY: bench bench-deps

CARGO ?= cargo
BIN := target/debug
BACKEND_PORT ?= 8888
PROXY_PORT ?= 8000

help: ## show this help
	@echo "rsp — the Really Simple Proxy, in Rust"
	@echo
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-14s %s\n", $$1, $$2}'

build: ## build the proxy, the demo backend and the lessons
	$(CARGO) build --bins

# Start the demo backend in the background, run $(1) in front of it, stop the backend after.
define with_backend
	@$(CARGO) build --bins --quiet
	@$(BIN)/demo_backend $(BACKEND_PORT) & echo $$! > target/demo_backend.pid; \
	trap 'kill $$(cat target/demo_backend.pid 2>/dev/null) 2>/dev/null; rm -f target/demo_backend.pid' EXIT INT TERM; \
	echo "Demo backend on 127.0.0.1:$(BACKEND_PORT). Try, in another terminal:"; \
	echo "    curl http://127.0.0.1:$(PROXY_PORT)/"; \
	echo "Press Ctrl-C to stop."; \
	$(1)
endef

run: ## run rsp (proxy.lua) in front of the demo backend
	$(call with_backend,$(BIN)/rsp proxy.lua)

backend: build ## run the demo backend alone on port 8888
	$(BIN)/demo_backend $(BACKEND_PORT)

run-1: ## run lesson part 1 in front of the demo backend
	$(call with_backend,$(BIN)/part1 $(PROXY_PORT) 127.0.0.1 $(BACKEND_PORT))
run-2: ## run lesson part 2 in front of the demo backend
	$(call with_backend,$(BIN)/part2 $(PROXY_PORT) 127.0.0.1 $(BACKEND_PORT))
run-3: ## run lesson part 3 (lessons/part3.lua) in front of the demo backend
	$(call with_backend,$(BIN)/part3 lessons/part3.lua)
run-4: ## run lesson part 4 (lessons/part3.lua) in front of the demo backend
	$(call with_backend,$(BIN)/part4 lessons/part3.lua)
run-5: ## run lesson part 5 (lessons/part3.lua) in front of the demo backend
	$(call with_backend,$(BIN)/part5 lessons/part3.lua)
run-6: ## run lesson part 6 (lessons/part3.lua) in front of the demo backend
	$(call with_backend,$(BIN)/part6 lessons/part3.lua)

test: ## run every test (with and without the mio feature), then the lint
	$(CARGO) test
	$(CARGO) test --no-default-features
	$(MAKE) lint

test-1: ## run part 1's tests
	$(CARGO) test --test part1_single_connection
test-2: ## run part 2's tests
	$(CARGO) test --test part2_threads
test-3: ## run part 3's tests
	$(CARGO) test --test part3_lua_config
test-4: ## run part 4's tests
	$(CARGO) test --test part4_slow_clients
test-5: ## run part 5's tests
	$(CARGO) test --test part5_worker_pool
test-6: ## run part 6's tests
	$(CARGO) test --test part6_mio

diff: ## show what changed between two lessons: make diff A=1 B=2
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make diff A=1 B=2"; exit 2; }
	@diff -u $(wildcard lessons/part$(A)_*.rs) $(wildcard lessons/part$(B)_*.rs) || true

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	$(CARGO) clippy --all-targets --no-default-features -- -D warnings

bench: ## compare rsp with HAProxy, nginx and direct (BENCH_QUICK=1 for a smoke run)
	$(CARGO) build --release --bins
	python3 -B bench/bench.py

bench-deps: ## install wrk, ab, HAProxy and nginx for make bench (apt, needs root)
	bash bench/deps.sh

clean: ## remove build output
	$(CARGO) clean
