# Tollway: the two commands the README promises are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: bench help venv run migrate seed test lint typecheck pytest pytest-pgbouncer services format clean stack stack-down stack-status docs docs-serve

help:
	@echo "make run    build the venv, migrate, seed demo data, serve on 127.0.0.1:$(PORT)"
	@echo "make test   ruff, mypy, the docs build, pytest against real Postgres and Redis, then the live tests through PgBouncer"
	@echo "make docs   build the manual (docs/, MkDocs) into var/site; make docs-serve serves it on :8001"
	@echo "make stack  nginx (TLS) in front of 2 gunicorn replicas, Celery worker and beat, on loopback"
	@echo "            https://127.0.0.1:8443 (http :8080 redirects); stop with make stack-down"

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# The embedded default: SQLite under var/, local-memory cache, eager Celery, unless
# DATABASE_URL / REDIS_URL say otherwise. DEBUG=1 so no SECRET_KEY is required locally.
run: export DEBUG ?= 1
run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seeddemo
	PORT=$(PORT) exec $(BIN)/gunicorn -c config/gunicorn.py

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput

services:
	.ci/services

# The production stack on loopback, without Docker: docker/stack.py says how.
stack: $(STAMP) services
	$(BIN)/python docker/stack.py up

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

# The live lane (tests that start gunicorn, Celery and nginx) once more, with every
# server's database connections through a real PgBouncer in transaction mode
# (tests/pgbouncer.py; Debian's pgbouncer package).
pytest-pgbouncer: $(STAMP) services
	$(BIN)/pytest -m live --via-pgbouncer $(PYTEST_ARGS)

test: lint typecheck docs pytest pytest-pgbouncer

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# The benchmark (bench/run.py): QUICK=1 for a short run, PEER=litellm to compare in the
# same run, P4=1 for the 1,000,000-row month close. It installs wrk, nginx and nginx's echo
# module (the slow streaming upstream) if missing.
bench: $(STAMP) services
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx)
	@test -f /usr/lib/nginx/modules/ngx_http_echo_module.so || (apt-get update -qq && apt-get install -y -qq libnginx-mod-http-echo) || true
	$(BIN)/python bench/run.py $(if $(QUICK),--quick) $(if $(PEER),--peer $(PEER)) $(if $(P4),--p4)
