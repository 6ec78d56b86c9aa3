# Printworks — `make help` lists the targets.
#
# With DATABASE_URL unset, `run`, `test` and `db` use a private PostgreSQL cluster under
# the data directory (deploy/embedded-postgres.sh); with DATABASE_URL set, that server is
# used and nothing is started.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export PATH := $(HOME)/.cargo/bin:$(PATH)
export CARGO_TERM_COLOR ?= never

DB := deploy/embedded-postgres.sh
# Runs the rest of the line with DATABASE_URL set: the caller's, or else the embedded
# cluster's (started on demand; a failure to start stops make).
with_db = url="$${DATABASE_URL:-}"; [ -n "$$url" ] || url=$$($(DB) start); export DATABASE_URL="$$url";

.PHONY: help run test test-faults test-deps lint deny fuzz fmt db db-stop build bench k8s-check

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

run: ## start the whole system on its embedded defaults (http://127.0.0.1:8080)
	@$(with_db) cargo run --quiet --locked -p printworks -- serve

test: lint deny k8s-check test-deps ## fmt check, clippy -D warnings, cargo deny, the Kubernetes manifests, every test against a real PostgreSQL, a short fuzz pass
	@$(with_db) gcs=$$(deploy/gcs-emulator.sh start); export PRINTWORKS_TEST_GCS_ENDPOINT=$$gcs; \
	  trap 'deploy/gcs-emulator.sh stop' EXIT; \
	  cargo test --locked --workspace --all-targets
	@deploy/fuzz.sh 30

test-faults: ## only the fault tests (replica killed or stopped, PostgreSQL restarted, network cut, disk full); make test runs them too
	@$(with_db) gcs=$$(deploy/gcs-emulator.sh start); export PRINTWORKS_TEST_GCS_ENDPOINT=$$gcs; \
	  trap 'deploy/gcs-emulator.sh stop' EXIT; \
	  cargo test --locked -p printworks --test api -- faults:: relay::agent::a_download_cut_in_the_middle_resumes_with_range

test-deps: ## install what the tests need beyond Rust (headless Chromium, chromedriver, oidc-provider, OctoPrint; the GCS emulator comes with make test)
	@deploy/test-deps.sh

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets --quiet -- -D warnings

fuzz: ## fuzz the G-code checker against its second reading (FUZZ_SECONDS, default 300)
	@deploy/fuzz.sh $(or $(FUZZ_SECONDS),300)

k8s-check: ## render every k8s/ overlay (Debian's kubectl), validate it offline, scan it and deploy/Dockerfile (checkov, hadolint)
	@deploy/k8s-check.sh

deny: ## cargo deny check: advisories, licences, banned crates (one TLS stack), sources
	@deploy/deny.sh

fmt: ## format the code
	cargo fmt --all

build: ## build the printworks binary
	cargo build --locked -p printworks

bench: ## every benchmark of docs/benchmarks.md, medians into its table (release build; BENCH_QUICK=1 for a short run)
	cargo build --release --locked --quiet -p printworks -p printworks-bench
	@$(with_db) python3 bench/run.py

db: ## start the embedded PostgreSQL (unless DATABASE_URL is set) and print its URL
	@if [ -n "$${DATABASE_URL:-}" ]; then echo "DATABASE_URL is set; using it"; else $(DB) start; fi

db-stop: ## stop the embedded PostgreSQL
	@$(DB) stop
