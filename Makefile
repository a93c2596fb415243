# dbcreds — developer and CI entry points.
#   make demo   the end-to-end demo (local PostgreSQL + PgBouncer + Secrets Manager endpoint)
#   make test   the test suite against the same real stack
#   make lint   ruff + mypy --strict
#   make package  the rotation Lambda zip (see rotation/README.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: test lint demo bench package system-deps venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's pgbouncer is the local stand-in for RDS Proxy. Installed before any test
# PostgreSQL starts: an apt run that upgrades libpq5 under a running server breaks it.
system-deps:
	@if ! command -v pgbouncer >/dev/null 2>&1 && ! test -x /usr/sbin/pgbouncer; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; \
	  else \
	    echo "pgbouncer is missing: install Debian's pgbouncer package (or run as root)" >&2; exit 1; \
	  fi; \
	fi

test: system-deps $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks rotation
	$(VENV)/bin/mypy --strict src

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
