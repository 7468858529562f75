# Two commands matter: `make test` and `make demo`. Each builds .venv from requirements/cpu.lock when
# it is missing or older than the lock, reinstalls cmrec when pyproject.toml changed, then runs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK_STAMP := $(VENV)/.lock-installed
STAMP := $(VENV)/.cmrec-installed
# torch's CPU build (2.13.0+cpu) is not on PyPI; our machines keep its wheel here.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
export MLFLOW_DISABLE_TELEMETRY := true

# `make demo` knobs: a larger run is `make demo USERS=20000 LENGTH=1000`.
USERS ?= 2000
LENGTH ?= 1000
SEED ?= 0
DEMO_DIR ?= data/demo

.PHONY: venv test lint typecheck pytest demo lock clean

venv: $(STAMP)

# A new lock rebuilds the environment from scratch, so that nothing outside the lock survives.
$(LOCK_STAMP): requirements/cpu.lock
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-deps --require-hashes $(FIND_LINKS) -r requirements/cpu.lock
	touch $(LOCK_STAMP)

# A changed pyproject.toml only reinstalls cmrec itself.
$(STAMP): $(LOCK_STAMP) pyproject.toml
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check cmrec pipelines tests requirements
	$(VENV)/bin/ruff format --check cmrec pipelines tests requirements

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	$(VENV)/bin/cmrec generate --users $(USERS) --length $(LENGTH) --seed $(SEED) --out $(DEMO_DIR) --overwrite

# Re-resolve the stack and rewrite requirements/cpu.lock (needs the package registry).
lock:
	$(PYTHON) requirements/make_lock.py

clean:
	rm -rf $(VENV) data/demo .pytest_cache .mypy_cache .ruff_cache
