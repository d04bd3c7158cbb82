# pgcdc — the one entry point for developers, the README and CI (.ci/run).
#
#   make test            install whatever is missing, then run every test suite
#   make lint            rustfmt + clippy (-D warnings)
#   make bench           benchmarks (criterion: decode+encode events/s per core)
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

PG_MAJOR       ?= 15
PG_CONFIG      ?= /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
PGRX_VERSION   := 0.18.1
PGRX_HOME      ?= $(HOME)/.pgrx
PYTHON         ?= python3
VENV           := .venv
PY             := $(VENV)/bin/python
PYTEST_TIMEOUT ?= 600

# Debian packages: server + headers (pgrx), contrib (hstore), clang (bindgen), sudo
# (pgrx tests as root), iproute2 (`ip` for netns port ranges), libssl-dev.
APT_PACKAGES := postgresql-$(PG_MAJOR) postgresql-server-dev-$(PG_MAJOR) postgresql-contrib \
                libclang-dev clang pkg-config sudo iproute2 libssl-dev

# root runs apt directly; anyone else needs sudo.
SUDO := $(shell if [ "$$(id -u)" = 0 ]; then echo; elif command -v sudo >/dev/null 2>&1; then echo sudo; else echo MISSING-SUDO; fi)

export PG_CONFIG PGRX_HOME

.PHONY: test test-core test-py deps deps-os deps-pgrx venv lint bench golden-capture clean

# ---------------------------------------------------------------- tests
# `deps` first, so a fresh machine gets everything; add suites after it (e.g. test-ext),
# each also depending on the deps it needs so it can be run alone.
test: deps test-core test-py

test-core:
	@echo "==> test-core: cargo test -p pgcdc_core"
	@cargo test -p pgcdc_core

test-py: deps-os venv
	@echo "==> test-py: pytest tests (timeout $(PYTEST_TIMEOUT)s per test)"
	@$(VENV)/bin/pytest tests -v --timeout=$(PYTEST_TIMEOUT)

# ---------------------------------------------------------------- dependencies
deps: deps-os deps-pgrx venv

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

deps-pgrx: deps-os
	@if cargo pgrx --version 2>/dev/null | grep -qx 'cargo-pgrx $(PGRX_VERSION)'; then \
	  echo "==> deps-pgrx: cargo-pgrx $(PGRX_VERSION) ok"; \
	else \
	  echo "==> deps-pgrx: cargo install cargo-pgrx $(PGRX_VERSION) (about 5 min)"; \
	  cargo install cargo-pgrx --version $(PGRX_VERSION) --locked --quiet; \
	fi
	@if grep -qs '^pg$(PG_MAJOR) *=' "$(PGRX_HOME)/config.toml"; then \
	  echo "==> deps-pgrx: pgrx knows pg$(PG_MAJOR)"; \
	else \
	  echo "==> deps-pgrx: cargo pgrx init --pg$(PG_MAJOR) $(PG_CONFIG)"; \
	  cargo pgrx init --pg$(PG_MAJOR) $(PG_CONFIG) >/dev/null; \
	fi

venv: $(VENV)/.requirements.stamp

$(VENV)/.requirements.stamp: tests/requirements.txt
	@echo "==> venv: $(VENV) with tests/requirements.txt"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# ---------------------------------------------------------------- other
lint:
	@echo "==> lint: cargo fmt --check"
	@cargo fmt --all -- --check
	@echo "==> lint: cargo clippy -p pgcdc_core -D warnings"
	@cargo clippy -p pgcdc_core --all-targets -- -D warnings

bench:
	@echo "==> bench: pgcdc_core decode+encode (criterion)"
	@cargo bench -p pgcdc_core --bench encode

golden-capture: deps-os venv
	@echo "==> golden-capture: pgcdc_core/tests/fixtures/"
	@$(PY) tests/capture_golden.py pgcdc_core/tests/fixtures

clean:
	@echo "==> clean: cargo clean, $(VENV), caches"
	@cargo clean
	@rm -rf $(VENV) .pytest_cache tests/__pycache__
