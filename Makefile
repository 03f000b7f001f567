# fxr: the entry points people type. `make demo` and `make test` do all set-up themselves.

CARGO ?= cargo
FXR := target/release/fxr
# Debian packages the build and the tests need: cmake builds NNG; clang/libclang for bindgen
# (the MPI bindings); Slurm daemons and clients, its Torque wrappers, and MPICH for the
# batch-system tests; bubblewrap, podman (with runc) and Charliecloud for the container tests;
# redis-server as the data-transfer baseline; Chromium and its driver for the dashboard test;
# PostgreSQL for the broker's shared store (the tests start clusters of their own).
DEBS := cmake clang libclang-dev pkg-config python3 python3-venv slurmctld slurmd slurm-client slurm-wlm-torque libpmix2 mpich libmpich-dev bubblewrap podman runc charliecloud-runtime redis-server chromium chromium-driver postgresql

# The MPI-enabled pilot is built when an MPI compiler wrapper is installed (deps installs MPICH).
# Evaluated in each recipe, after `deps` has run.
FEATURES = $$(command -v mpicc >/dev/null 2>&1 && echo --features fxr-cli/mpi)

.PHONY: all deps pydeps build demo test lint bench clean experiments experiment-anchors compare-python
EXPERIMENTS := scaling latency throughput routing data
VENV := target/anchors-venv

all: build

deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

# Python tools the tests use, in a virtual environment of their own under target/: schemathesis
# checks the broker against its OpenAPI document; pytest runs the Python SDK's suite, whose
# functions pickle NumPy arrays (the test endpoint's workers use this interpreter too).
PYENV := target/pyenv
pydeps:
	@if [ ! -x $(PYENV)/bin/schemathesis ] || ! $(PYENV)/bin/python -c 'import pytest, numpy' 2>/dev/null; then \
		echo "installing schemathesis, pytest and numpy into $(PYENV)"; \
		python3 -m venv $(PYENV) && $(PYENV)/bin/pip install -q schemathesis pytest numpy; \
	fi

build: deps
	$(CARGO) build --release --workspace $(FEATURES)

demo: build
	FXR=$(FXR) ./scripts/demo.sh

# The broker's tests run twice: on SQLite (with everything else), then on PostgreSQL.
BROKER_TESTS := broker broker_promise containers dashboard endpoint_ops faults history large_results openapi_conformance python_sdk tls trust
test: deps pydeps
	$(CARGO) test --workspace --release $(FEATURES) -- --test-threads=2
	FXR_TEST_STORE=postgres $(CARGO) test --release -p fxr-cli $(FEATURES) $(addprefix --test ,$(BROKER_TESTS)) -- --test-threads=2

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --release $(FEATURES) -- -D warnings

bench: build
	$(CARGO) bench --workspace

# `make experiment-scaling` etc.; QUICK=1 for the small versions.
experiment-%: build
	$(FXR) experiment run $* $(if $(QUICK),--quick,)

experiments: $(addprefix experiment-,$(EXPERIMENTS))

# Parsl's HighThroughputExecutor, installed in a virtual environment of its own, measured with
# the same workload; the experiments' summaries quote it when present.
experiment-anchors:
	@mkdir -p results/anchors
	@if [ ! -x $(VENV)/bin/python ] || ! $(VENV)/bin/python -c 'import parsl' 2>/dev/null; then \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install -q parsl || { \
			echo "Parsl could not be installed here; no anchors measured." | tee results/anchors/UNAVAILABLE.md; exit 0; }; \
	fi
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python scripts/anchors.py results/anchors/anchors.json 10000 1000
	@printf '# Setup\n\n- machine: %s cores, %s\n- commit: %s\n- date: %s\n- command: make experiment-anchors\n' \
		"$$(nproc)" "$$(head -1 /proc/meminfo)" "$$(git rev-parse HEAD)" "$$(date -u)" > results/anchors/SETUP.md

# Python no-op functions, 2 workers: fxr through the SDK's Executor (a real broker and endpoint),
# Parsl HTEX, Ray and Dask distributed, in one run, all on the interpreter of $(VENV).
compare-python: build
	@if [ ! -x $(VENV)/bin/python ] || ! $(VENV)/bin/python -c 'import parsl, ray, distributed' 2>/dev/null; then \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install -q parsl "ray[default]" "dask[distributed]"; \
	fi
	@mkdir -p results/python
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/python scripts/python_compare.py $(FXR) results/python/compare.json 10000 500 3
	@printf '# Setup\n\n- machine: %s cores, %s\n- commit: %s\n- date: %s\n- command: make compare-python\n' \
		"$$(nproc)" "$$(head -1 /proc/meminfo)" "$$(git rev-parse HEAD)" "$$(date -u)" > results/python/SETUP.md

clean:
	$(CARGO) clean
