# dbcreds — developer and CI entry points.
#   make demo   the end-to-end demo (local PostgreSQL + PgBouncer + Secrets Manager endpoint)
#   make test   the test suite against the same real stack
#   make lint   ruff + mypy --strict
#   make test-matrix  the pool tests with the oldest and the newest supported psycopg/psycopg_pool
#   make package  the rotation Lambda zip (see rotation/README.md)
#   make checkov  checkov (pinned, in its own .venv-checkov) on rotation/template.yaml
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: test test-matrix lint checkov demo bench package system-deps venv clean

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

# The pool tests (the seam's contract, the psycopg_pool contract, the sync and asyncio pools)
# with the oldest and the newest psycopg/psycopg_pool of the supported range (pyproject.toml).
# Each end is a venv of its own (.venv-matrix-<end>) holding only psycopg, psycopg-binary and
# psycopg_pool; everything else (dbcreds itself, pytest, the test stack's dependencies) comes
# from .venv, appended to its sys.path by a .pth file, so its own psycopg comes first.
MATRIX_OLDEST ?= psycopg==3.2.0 psycopg-binary==3.2.0 psycopg-pool==3.3.0 typing-extensions==4.6.0
MATRIX_NEWEST ?= psycopg<3.4 psycopg-binary<3.4 psycopg-pool<3.4 typing-extensions
MATRIX_TESTS ?= tests/unit/test_pool_compat.py tests/e2e/test_pool_contract.py tests/e2e/test_pool.py \
  tests/e2e/test_pool_behaviour.py \
  tests/e2e/test_aio.py

define matrix_run
	test -x .venv-matrix-$(1)/bin/python || "$$($(PY) -c 'import os, sys; \
	  print(os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2]))')" \
	  -m venv .venv-matrix-$(1)
	.venv-matrix-$(1)/bin/python -m pip install -q --upgrade $(foreach r,$(2),'$(r)')
	$(PY) -c 'import sysconfig; print("import site; site.addsitedir(%r)" % sysconfig.get_paths()["purelib"])' \
	  > "$$(.venv-matrix-$(1)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-dbcreds-dev.pth"
	.venv-matrix-$(1)/bin/python -c 'import psycopg, psycopg_pool; print("$(1): psycopg", psycopg.__version__, "psycopg_pool", psycopg_pool.__version__, "libpq", psycopg.pq.version())'
	.venv-matrix-$(1)/bin/python -m pytest -q -p no:cacheprovider $(MATRIX_TESTS) $(PYTEST_ARGS)
endef

test-matrix: system-deps $(STAMP)
	$(call matrix_run,oldest,$(MATRIX_OLDEST))
	$(call matrix_run,newest,$(MATRIX_NEWEST))

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks rotation examples
	$(VENV)/bin/mypy --strict src

# checkov in a virtualenv of its own (its many pinned dependencies stay out of .venv); it
# fails on any finding that is neither fixed nor skipped with a reason in the template's
# Metadata. --skip-download: no call to the Prisma Cloud API (offline, and nothing to upload).
# tests/unit/test_template.py runs the same checkov on the template with every option on as well.
CHECKOV_VERSION ?= 3.3.30
CHECKOV_VENV ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

$(CHECKOV_STAMP):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==$(CHECKOV_VERSION)
	touch $(CHECKOV_STAMP)

checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov -f rotation/template.yaml --framework cloudformation \
	  --skip-download --quiet --compact

# The rotation Lambda zips, dist/dbcreds-rotation-<arch>.zip, byte-identical for the same
# source tree and lock files (rotation/requirements-*.txt); see rotation/README.md.
#   ARCH=arm64|x86_64 (default both)  BUNDLE_BOTO3=1 (boto3 in the zip, not the runtime's)
#   CA_BUNDLE=path.pem (shipped as certs/ca-bundle.pem)  DIST=dir  SOURCE_DATE_EPOCH=seconds
ARCH ?= arm64 x86_64
DIST ?= dist
BUNDLE_BOTO3 ?= 0
CA_BUNDLE ?=
SOURCE_DATE_EPOCH ?= 315532800
PACKAGE_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

package:
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(PACKAGE_PYTHON) rotation/build_package.py build \
	  $(foreach a,$(ARCH),--arch $(a)) --dist $(DIST) \
	  $(if $(filter 1 yes true,$(BUNDLE_BOTO3)),--bundle-boto3) \
	  $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE))

# The end-to-end demo (README.md): rotation under load on the local stack, a report, and
# demo-output/timeline.png. E.g. DEMO_ARGS="--duration 60 --rotations 5 --proxy pgbouncer".
DEMO_ARGS ?=

demo: system-deps $(STAMP)
	$(VENV)/bin/dbcreds demo $(DEMO_ARGS)

# The benchmarks (cold start, warm path, concurrent cold start, rotation under load, fleet
# simulation) against dbcreds' peers; writes benchmarks/README.md. BENCH_ARGS="--quick" for a
# short run, "--only cold,fleet" for some of them.
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: system-deps $(BENCH_STAMP)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .venv-matrix-oldest .venv-matrix-newest build dist .pytest_cache .mypy_cache .ruff_cache
