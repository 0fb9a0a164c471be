# rsp: thin wrappers over cargo. `make` alone prints this help.
.DEFAULT_GOAL := help
.PHONY: help build run backend test lint clean diff \
        run-1 run-2 run-3 run-4 run-5 run-6 run-7 test-1 test-2 test-3 test-4 test-5 test-6 test-7
.PHONY: bench bench-deps

CARGO ?= cargo
# Where cargo puts our binaries. `make test-N BIN=path/to/proxy` gives BIN on the command
# line instead: then it names YOUR proxy, for the tests to judge (see "Write your own").
BIN := target/debug
ifeq ($(origin BIN),command line)
OWN_BIN := $(abspath $(BIN))
endif
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
run-6: ## run lesson part 6 (lessons/part6.lua) in front of demo backends on 8888 and 8889
	@$(CARGO) build --bins --quiet
	@trap 'kill $$b1 $$b2 2>/dev/null' EXIT INT TERM; \
	$(BIN)/demo_backend 8888 > /dev/null & b1=$$!; \
	$(BIN)/demo_backend 8889 > /dev/null & b2=$$!; \
	echo "Demo backends on 127.0.0.1:8888 and :8889; lessons/part6.lua also names :8890, where"; \
	echo "nothing runs yet. Try, in other terminals:"; \
	echo "    curl http://127.0.0.1:$(PROXY_PORT)/"; \
	echo "    $(BIN)/demo_backend 8890      # then Ctrl-C it, and start it again"; \
	echo "Press Ctrl-C to stop."; \
	$(BIN)/part6 lessons/part6.lua
run-7: ## run lesson part 7 (mio) (lessons/part3.lua) in front of the demo backend
	$(call with_backend,$(BIN)/part7 lessons/part3.lua)

test: ## run every test (with and without the mio feature), then the lint
	$(CARGO) test
	$(CARGO) test --no-default-features
	$(MAKE) lint

# $(1): a part. Without BIN=, runs tests/part$(1)_*.rs against our lessons and rsp. With
# BIN=, runs tests/part1_*.rs … tests/part$(1)_*.rs against that proxy, started with part
# $(1)'s command line (RSP_TEST_BIN and RSP_TEST_PART tell the tests), every file even if
# an earlier one fails (--no-fail-fast). Either way tests/summary.py passes cargo's output
# on and ends with one table: each test passed, FAILED or skipped, and why.
# (--show-output prints what passing tests printed too: a skipped test's reason.)
define lesson_tests
	@$(if $(OWN_BIN),RSP_TEST_BIN=$(OWN_BIN) RSP_TEST_PART=$(1)) $(CARGO) test --no-fail-fast \
	    $(foreach t,$(sort $(wildcard tests/part$(if $(OWN_BIN),[1-$(1)],$(1))_*.rs)),--test $(basename $(notdir $(t)))) \
	    -- --show-output $(if $(OWN_BIN),--test-threads=1) 2>&1 | python3 -B tests/summary.py
endef

test-1: ## run part 1's tests (BIN=path/to/proxy: against your own proxy)
	$(call lesson_tests,1)
test-2: ## run part 2's tests (BIN=…: parts 1–2's tests against your proxy)
	$(call lesson_tests,2)
test-3: ## run part 3's tests (BIN=…: parts 1–3's tests against your proxy)
	$(call lesson_tests,3)
test-4: ## run part 4's tests (BIN=…: parts 1–4's tests against your proxy)
	$(call lesson_tests,4)
test-5: ## run part 5's tests (BIN=…: parts 1–5's tests against your proxy)
	$(call lesson_tests,5)
test-6: ## run part 6's tests (BIN=…: parts 1–6's tests against your load balancer)
	$(call lesson_tests,6)
test-7: ## run part 7's tests (BIN=…: parts 1–7's tests against your proxy)
	$(call lesson_tests,7)

# The lessons mark each new or changed line `// New in part N`; those marks would show up
# as changes of their own, so both files are compared with the marks stripped.
diff: ## show the code that changed between two lessons: make diff A=1 B=2
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make diff A=1 B=2"; exit 2; }
	@a=$(wildcard lessons/part$(A)_*.rs); b=$(wildcard lessons/part$(B)_*.rs); \
	test -n "$$a" -a -n "$$b" || { echo "make diff: no lessons/part$(A)_*.rs or lessons/part$(B)_*.rs"; exit 2; }; \
	mkdir -p target/diff; \
	sed -e '/^ *\/\/ New in part [0-9]*$$/d' -e 's| *// New in part [0-9]*$$||' "$$a" > target/diff/a.rs; \
	sed -e '/^ *\/\/ New in part [0-9]*$$/d' -e 's| *// New in part [0-9]*$$||' "$$b" > target/diff/b.rs; \
	diff -u --label "$$a" --label "$$b" target/diff/a.rs target/diff/b.rs || true

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
