# Tollway: the two commands the README promises are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: bench bench-p4 bench-compare bench-tools help venv setup run demo serve migrate seed test test-fast lint typecheck pytest pytest-pgbouncer pytest-faults services format clean stack stack-down stack-status docs docs-serve

help:
	@echo "make run        build the venv, migrate, seed demo data, serve on 127.0.0.1:$(PORT)"
	@echo "                (gunicorn, and a Celery worker with beat for the scheduled work)"
	@echo "make demo       the same, with three past months of usage to close into invoices"
	@echo "make test       ruff, mypy, the docs build, pytest against real Postgres and Redis,"
	@echo "                then the live tests through PgBouncer"
	@echo "make test-fast  the unit lane only (no servers, browsers or nginx): the inner loop"
	@echo "make docs       build the manual (docs/, MkDocs) into var/site; make docs-serve serves it on :8001"
	@echo "make bench      the benchmark (bench/run.py); P4=1 adds the 10,000,000-row ledger, make bench-p4 runs it alone"
	@echo "make bench-compare A=HEAD~1 B=HEAD   two versions measured in one sitting (bench/compare.py); P2=1 adds the streams"
	@echo "make stack      nginx (TLS) in front of 2 gunicorn replicas (REPLICAS=N for more),"
	@echo "                Celery worker and beat, on loopback: https://127.0.0.1:8443"
	@echo "                (http :8080 redirects); make stack-status, make stack-down"

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# The embedded default: SQLite under var/, local-memory cache, unless DATABASE_URL /
# REDIS_URL say otherwise. var/local.env (written once by config/localenv.py) holds DEBUG=1,
# a generated SECRET_KEY and a Celery broker on files; every manage.py command run from
# this checkout reads it too, so the README's commands work as written.
export TOLLWAY_VAR_DIR ?= $(CURDIR)/var

setup: $(STAMP)
	$(BIN)/python -m config.localenv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seeddemo

# gunicorn and a Celery worker with beat, side by side under supervisord (config/supervisord.conf).
run: setup serve

demo: setup
	$(BIN)/python manage.py seeddemo --history
	$(MAKE) --no-print-directory serve

serve:
	PORT=$(PORT) TOLLWAY_BIN=$(abspath $(BIN)) TOLLWAY_USER=$$(id -un) \
	  exec $(BIN)/supervisord -n -c config/supervisord.conf

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput

services:
	.ci/services

# The production stack on loopback, without Docker: docker/stack.py says how.
stack: $(STAMP) services
	$(BIN)/python docker/stack.py up $(if $(REPLICAS),--replicas $(REPLICAS))

stack-down:
	$(BIN)/python docker/stack.py down

stack-status:
	$(BIN)/python docker/stack.py status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

pytest: $(STAMP) services
	$(BIN)/pytest $(PYTEST_ARGS)

# The manual. --strict: a broken link, anchor, image or included file fails the build.
# NO_MKDOCS_2_WARNING silences Material's banner about its successor on every build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir var/site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

# The live tests that write the ledger, budgets, invoices and sessions once more, with
# every server's database connections through a real PgBouncer in transaction mode
# (tests/pgbouncer.py; Debian's pgbouncer package). Live tests that never reach the
# database from a server (CORS, gunicorn's own errors, the client libraries, process
# supervision, the SQLite first hour) run once, in `make pytest`. This lane has its own
# test database, Redis database and var/ directory, so `make test` runs it beside
# `make pytest`.
POOLED_TESTS ?= tests/e2e/test_live_server.py tests/e2e/test_limits_live.py \
	tests/e2e/test_alerts_live.py tests/e2e/test_graceful_stop.py tests/e2e/test_conformance.py \
	tests/e2e/test_failover_live.py tests/e2e/test_browser.py tests/deploy/test_stack.py
POOLED_DESELECT ?= tests/e2e/test_live_server.py::test_embedded_default_as_make_run_serves_it
POOLED_DATABASE_URL ?= postgres://postgres:postgres@127.0.0.1:5432/tollway_pooled
POOLED_REDIS_URL ?= redis://127.0.0.1:6379/13
pytest-pgbouncer: $(STAMP) services
	DATABASE_URL=$(POOLED_DATABASE_URL) REDIS_URL=$(POOLED_REDIS_URL) TOLLWAY_VAR_DIR=$(CURDIR)/var/pooled \
	  $(BIN)/pytest -m live --via-pgbouncer $(PYTEST_ARGS) $(POOLED_TESTS) \
	  $(addprefix --deselect ,$(POOLED_DESELECT))

# The fault suite (tests/faults/): each test starts its own Postgres cluster, Redis and
# replicas, then mostly waits (a Redis hung for 10 s, a Postgres restarted). It has its
# own test database, Redis database and var/ directory, so `make test` runs it beside
# `make pytest`, after the PgBouncer lane.
FAULTS_DATABASE_URL ?= postgres://postgres:postgres@127.0.0.1:5432/tollway_faults
FAULTS_REDIS_URL ?= redis://127.0.0.1:6379/12
pytest-faults: $(STAMP) services
	DATABASE_URL=$(FAULTS_DATABASE_URL) REDIS_URL=$(FAULTS_REDIS_URL) TOLLWAY_VAR_DIR=$(CURDIR)/var/faults \
	  $(BIN)/pytest $(PYTEST_ARGS) tests/faults

# Beside pytest, which mostly waits on its servers: the PgBouncer lane then the fault
# suite, and the static checks (about a minute of one core). Their output follows the
# tests'; any of them failing fails `make test`.
test: $(STAMP) services
	@mkdir -p var
	@($(MAKE) --no-print-directory lint typecheck docs > var/checks.log 2>&1; echo $$? > var/checks.rc) & \
	($(MAKE) --no-print-directory pytest-pgbouncer > var/pooled.log 2>&1; echo $$? > var/pooled.rc; \
	 $(MAKE) --no-print-directory pytest-faults > var/faults.log 2>&1; echo $$? > var/faults.rc) & \
	$(MAKE) --no-print-directory pytest PYTEST_ARGS="$(PYTEST_ARGS) --ignore=tests/faults"; tests=$$?; wait; \
	echo "--- make pytest-pgbouncer, run beside the tests:"; cat var/pooled.log; \
	echo "--- make pytest-faults, run beside the tests after it:"; cat var/faults.log; \
	echo "--- make lint typecheck docs, run beside the tests:"; cat var/checks.log; \
	[ "$$tests" = 0 ] && [ "$$(cat var/pooled.rc)" = 0 ] && [ "$$(cat var/faults.rc)" = 0 ] && \
	[ "$$(cat var/checks.rc)" = 0 ]

# The unit lane (tests/conftest.py sorts tests into lanes): no gunicorn, browser, nginx or
# fault-injection servers. `make test` still runs every lane.
test-fast: $(STAMP) services
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# The benchmark (bench/run.py): QUICK=1 for a short run, PEER=litellm to compare in the
# same run, RUNS=N rounds of P1 and P3 (default 3; the verdict takes the median), P4=1 for
# the month close and the usage API on a 10,000,000-row ledger (1,000,000 with QUICK=1),
# REDIS_HA=1 to add the cost per call of Redis Sentinel and Cluster against one Redis
# (bench/redis_ha.py); `make bench-p4` runs P4 alone, without the stack. It installs wrk, nginx and nginx's echo
# module (the slow streaming upstream) if missing.
bench: $(STAMP) services bench-tools
	$(BIN)/python bench/run.py $(if $(QUICK),--quick) $(if $(PEER),--peer $(PEER)) $(if $(P4),--p4) $(if $(RUNS),--runs $(RUNS))
	$(if $(REDIS_HA),$(BIN)/python bench/redis_ha.py)

bench-p4: $(STAMP) services
	$(BIN)/python bench/run.py --only-p4 $(if $(QUICK),--quick)

# Versions measured in one sitting (bench/compare.py): A and B are git revisions or tree
# directories (. is the working tree), RUNS=N rounds (default 3), P2=1 adds 2,000 streams.
bench-compare: $(STAMP) services bench-tools
	$(BIN)/python bench/compare.py $(A) $(B) $(if $(RUNS),--rounds $(RUNS)) $(if $(P2),--p2)

bench-tools:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx)
	@test -f /usr/lib/nginx/modules/ngx_http_echo_module.so || (apt-get update -qq && apt-get install -y -qq libnginx-mod-http-echo) || true
