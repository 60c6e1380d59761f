# Everyday targets. `make run` and `make test` work on a fresh clone with nothing done before.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
# Where `make test-pg` puts the tests' databases (test_banana_<pid>_gw<n>, made and dropped by the
# run) and their queues (one per process) and cache.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/banana_test
TEST_REDIS_URL    ?= redis://127.0.0.1:6379/12

.PHONY: run dev createsuperuser test test-pg install migrate lint format simulator bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# scripts/run.sh migrates and collects the static files before it starts anything, with the
# secret key it keeps in var/secret_key.
run: install
	@VENV=$(VENV) bash scripts/run.sh

dev: install
	@VENV=$(VENV) bash scripts/run.sh dev

createsuperuser: install
	@VENV=$(VENV) bash scripts/run.sh manage createsuperuser

migrate: install
	@VENV=$(VENV) bash scripts/run.sh manage migrate --noinput

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

# The same suite on PostgreSQL and django-q2's Redis broker, as a scaled-out site runs.
test-pg: install
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) $(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

simulator: install
	$(PY) -m simulator

bench: install
	$(PY) benchmarks/bench_simulator.py
	$(PY) benchmarks/bench_pipeline.py basic
	$(PY) benchmarks/bench_pipeline.py scale
	$(PY) benchmarks/soak.py
	$(PY) benchmarks/bench_gallery.py
	$(PY) benchmarks/bench_thumbnails.py
	$(PY) benchmarks/bench_serving.py
	$(PY) benchmarks/bench_export.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles
