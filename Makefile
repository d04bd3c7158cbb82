# pgcdc — the one entry point for developers, the README and CI (.ci/run).
#
#   make demo            build everything, start a throwaway cluster with pgcdc, stream live
#                        events to the terminal (FOLLOW=1 keeps streaming until Ctrl-C)
#   make test            install whatever is missing, lint, then run every test suite
#                        (PG_MAJOR=13..18 picks the server version; 15 by default)
#   make test-matrix     make test on every version, one after the other
#   make test-smoke      the smoke suite only (PG_MAJOR=N); .ci/run: 15 and 18 full, smoke on the rest
#   make lint            rustfmt, clippy (-D warnings), mypy --strict, ruff check and format --check
#   make bench           every benchmark (core, extension staging, Python client), ratios
#   make golden-capture  regenerate pgcdc_core/tests/fixtures/ from a throwaway PostgreSQL
#   make clean           remove build output, the venv (and its stamp) and pytest caches
#
# Every deps-* target is idempotent and cheap when already satisfied (dpkg / command checks
# and stamp files), so `make test` on a prepared machine goes straight to the tests.

SHELL          := /bin/bash
.SHELLFLAGS    := -eu -o pipefail -c
.DEFAULT_GOAL  := test
# --keep-going: one failing suite must not hide the results of the others.
MAKEFLAGS      += --no-print-directory --keep-going

# PostgreSQL major version to build and test against (13-18): 15 is Debian's, the others are
# fetched into $(PGVERS_ROOT)/<major> by tests/get-pg.sh (checksummed, cached downloads).
PG_MAJOR       ?= 15
PG_VERSIONS    := 13 14 15 16 17 18
# Outside the checkout (a fresh clone on the same machine reuses them), readable by the
# postgres OS user that runs the test servers.
PGVERS_ROOT    ?= /var/cache/pgcdc/pgvers
export PGVERS_CACHE ?= /var/cache/pgcdc/downloads
# Derived from PG_MAJOR unless given on the command line (an inherited environment value
# may belong to another version: test-matrix runs one make per version).
ifneq ($(origin PG_CONFIG),command line)
ifeq ($(PG_MAJOR),15)
PG_CONFIG      := /usr/lib/postgresql/15/bin/pg_config
else
PG_CONFIG      := $(PGVERS_ROOT)/$(PG_MAJOR)/bin/pg_config
endif
endif
ifeq ($(filter $(PG_MAJOR),$(PG_VERSIONS)),)
$(error PG_MAJOR=$(PG_MAJOR): supported versions are $(PG_VERSIONS))
endif
PGRX_VERSION   := 0.18.1
# One private pgrx home per version: `cargo pgrx init` of one never disturbs another.
ifneq ($(origin PGRX_HOME),command line)
PGRX_HOME      := $(CURDIR)/target/pgrx-home/pg$(PG_MAJOR)
endif
PYTHON         ?= python3
VENV           := .venv
PY             := $(VENV)/bin/python
PYTEST_TIMEOUT ?= 600
PGRX_TEST_PGDATA ?= /tmp/pgcdc-test-pgdata-pg$(PG_MAJOR)
# PY_RELEASE=1: optimised Python extension (slower to build; benchmarks use it).
PY_RELEASE     ?=

# Debian packages: server + headers (pgrx), contrib (hstore), clang (bindgen), sudo
# (pgrx tests as root), iproute2 (`ip` for netns port ranges), libssl-dev; libxml2-dev for the
# PostgreSQL 13 that tests/get-pg.sh builds (the type matrix has xml).
APT_PACKAGES := postgresql-15 postgresql-server-dev-15 postgresql-contrib \
                libclang-dev clang pkg-config sudo iproute2 libssl-dev libxml2-dev

# root runs apt directly; anyone else needs sudo.
SUDO := $(shell if [ "$$(id -u)" = 0 ]; then echo; elif command -v sudo >/dev/null 2>&1; then echo sudo; else echo MISSING-SUDO; fi)

export PG_CONFIG PGRX_HOME

.PHONY: test test-core test-ext test-ext-pgrx test-ext-e2e test-py test-matrix test-smoke deps deps-os deps-pg deps-pgrx venv \
        ext-install py-develop demo lint bench bench-core bench-ext bench-py bench-snapshot bench-stream golden-capture clean

# ---------------------------------------------------------------- tests
# `deps` first, so a fresh machine gets everything, then `lint`: with --keep-going a lint
# failure does not stop the suites, but `make test` still fails. Order matters (no -j): `cargo
# pgrx test` installs its own test build of the extension, so ext-install must come after it.
test: deps lint test-core test-ext test-py

test-core:
	@echo "==> test-core: cargo test -p pgcdc_core -p pgcdc_wire (with and without TLS)"
	@cargo test -p pgcdc_core
	@cargo test -p pgcdc_wire
	@cargo test -p pgcdc_wire --features tls

test-ext: test-ext-pgrx test-ext-e2e

test-ext-pgrx: deps-pgrx
	@echo "==> test-ext-pgrx: cargo pgrx test pg$(PG_MAJOR) (#[pg_test]s in a throwaway cluster)"
	@$(SUDO) mkdir -p $(PGRX_TEST_PGDATA) && $(SUDO) chown postgres:postgres $(PGRX_TEST_PGDATA)
	@cd pgcdc_ext && CARGO_PGRX_TEST_RUNAS=postgres CARGO_PGRX_TEST_PGDATA=$(PGRX_TEST_PGDATA) \
	  cargo pgrx test pg$(PG_MAJOR)

# py-develop: test_ext_streaming.py checks the feed against LogicalReplicationReader.
test-ext-e2e: ext-install venv py-develop
	@echo "==> test-ext-e2e: pytest tests/test_ext_*.py"
	@$(VENV)/bin/pytest tests/test_ext_feed.py tests/test_ext_crash.py tests/test_ext_regress.py \
	  tests/test_ext_snapshot.py tests/test_ext_streaming.py -v \
	  --timeout=$(PYTEST_TIMEOUT)

test-py: deps-os venv ext-install py-develop
	@echo "==> test-py: cargo test -p pycdc (the Python extension's Rust unit tests)"
	@PYO3_PYTHON=$(abspath $(PY)) cargo test -p pycdc
	@echo "==> test-py: pytest tests (timeout $(PYTEST_TIMEOUT)s per test)"
	@$(VENV)/bin/pytest tests -v --timeout=$(PYTEST_TIMEOUT) --ignore-glob='tests/test_ext_*.py'

# Every version, one after the other (one pgrx build at a time): the full suite on each.
test-matrix:
	@failed=""; for v in $(PG_VERSIONS); do \
	  echo "==> test-matrix: PostgreSQL $$v"; \
	  $(MAKE) test PG_MAJOR=$$v || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix: failed on PostgreSQL$$failed" >&2; exit 1; fi

# The smoke suite (tests marked `smoke`: feed of every type-matrix kind, ack, crash-restart
# accounting, reader streaming) against PostgreSQL $(PG_MAJOR).
test-smoke: deps ext-install py-develop
	@echo "==> test-smoke: pytest -m smoke on PostgreSQL $(PG_MAJOR)"
	@$(VENV)/bin/pytest tests -m smoke -v --timeout=$(PYTEST_TIMEOUT)

# ---------------------------------------------------------------- build and install
ext-install: deps-pgrx
	@echo "==> ext-install: pgcdc_ext (release) into $(PG_CONFIG)'s directories"
	@PG_CONFIG=$(PG_CONFIG) pgcdc_ext/install.sh

py-develop: venv
	@echo "==> py-develop: maturin develop pycdc -> pgcdc in $(VENV)$(if $(PY_RELEASE), (release))"
	@cd pycdc && VIRTUAL_ENV=$(abspath $(VENV)) PYO3_PYTHON=$(abspath $(PY)) \
	  $(abspath $(VENV))/bin/maturin develop $(if $(PY_RELEASE),--release) --quiet

demo: deps ext-install py-develop
	@$(PY) tests/demo.py $(if $(FOLLOW),--follow)

# ---------------------------------------------------------------- dependencies
deps: deps-os deps-pg deps-pgrx venv

# PostgreSQL $(PG_MAJOR) with headers and pg_config: Debian's 15, or fetched (tests/get-pg.sh).
deps-pg: deps-os
	@if [ "$(PG_MAJOR)" = 15 ]; then echo "==> deps-pg: PostgreSQL 15 from Debian"; \
	else tests/get-pg.sh $(PG_MAJOR) $(PGVERS_ROOT)/$(PG_MAJOR); fi

deps-os:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "==> deps-os: ok"; exit 0; fi; \
	if [ "$(SUDO)" = MISSING-SUDO ]; then \
	  echo "deps-os: missing Debian packages:$$missing — not root and no sudo; install them as root" >&2; exit 1; \
	fi; \
	echo "==> deps-os: apt-get install$$missing"; \
	$(SUDO) apt-get update -qq; \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null

deps-pgrx: deps-os deps-pg
	@if cargo pgrx --version 2>/dev/null | grep -qx 'cargo-pgrx $(PGRX_VERSION)'; then \
	  echo "==> deps-pgrx: cargo-pgrx $(PGRX_VERSION) ok"; \
	else \
	  echo "==> deps-pgrx: cargo install cargo-pgrx $(PGRX_VERSION) (about 5 min)"; \
	  cargo install cargo-pgrx --version $(PGRX_VERSION) --locked --quiet; \
	fi
	@if grep -qs '^pg$(PG_MAJOR) *=' "$(PGRX_HOME)/config.toml"; then \
	  echo "==> deps-pgrx: pgrx knows pg$(PG_MAJOR)"; \
	else \
	  echo "==> deps-pgrx: cargo pgrx init --pg$(PG_MAJOR) $(PG_CONFIG) (PGRX_HOME $(PGRX_HOME))"; \
	  mkdir -p "$(PGRX_HOME)"; \
	  cargo pgrx init --pg$(PG_MAJOR) $(PG_CONFIG) >/dev/null; \
	fi

venv: $(VENV)/.requirements.stamp

$(VENV)/.requirements.stamp: tests/requirements.txt
	@echo "==> venv: $(VENV) with tests/requirements.txt"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# ---------------------------------------------------------------- other
# deps-pgrx: clippy of pgcdc_ext needs pgrx's config (and checks the code of PG_MAJOR's
# feature); venv: the Python for PyO3, mypy, ruff.
lint: deps-pgrx venv
	@echo "==> lint: cargo fmt --check"
	@cargo fmt --all -- --check
	@echo "==> lint: cargo clippy -D warnings (core, wire client, extension, Python extension)"
	@cargo clippy -p pgcdc_core --all-targets -- -D warnings
	@cargo clippy -p pgcdc_wire --all-targets -- -D warnings
	@cargo clippy -p pgcdc_wire --all-targets --features tls -- -D warnings
	@cargo clippy -p pgcdc_ext --all-targets --no-default-features --features pg$(PG_MAJOR) -- -D warnings
	@PYO3_PYTHON=$(abspath $(PY)) cargo clippy -p pycdc --all-targets -- -D warnings
	@echo "==> lint: mypy --strict, ruff check, ruff format --check (pycdc/python/pgcdc)"
	@$(VENV)/bin/mypy --strict pycdc/python/pgcdc
	@$(VENV)/bin/ruff check pycdc/python/pgcdc
	@$(VENV)/bin/ruff format --check pycdc/python/pgcdc

bench: deps-os venv ext-install
	@$(MAKE) py-develop PY_RELEASE=1
	@$(PY) bench/report.py

bench-core:
	@echo "==> bench-core: pgcdc_core decode+encode (criterion)"
	@cargo bench -p pgcdc_core --bench encode

bench-ext: deps-os venv ext-install
	@echo "==> bench-ext: feed staging rate and latency vs pg_recvlogical"
	@$(PY) bench/ext_staging.py

bench-py: deps-os venv ext-install
	@$(MAKE) py-develop PY_RELEASE=1
	@echo "==> bench-py: Python consumers vs pg_recvlogical"
	@$(PY) bench/py_client_bench.py --repeat 3

bench-snapshot: deps-os venv ext-install
	@echo "==> bench-snapshot: initial snapshot rows/s staged and to Python vs COPY TO STDOUT"
	@$(PY) bench/snapshot_bench.py

bench-stream: deps-os venv ext-install
	@echo "==> bench-stream: one 5M-row transaction, COMMIT -> staged with streaming off and on"
	@$(PY) bench/stream_bench.py

golden-capture: deps-os venv
	@echo "==> golden-capture: pgcdc_core/tests/fixtures/"
	@$(PY) tests/capture_golden.py pgcdc_core/tests/fixtures

clean:
	@echo "==> clean: cargo clean, $(VENV), caches"
	@cargo clean
	@rm -rf $(VENV) .pytest_cache tests/__pycache__
