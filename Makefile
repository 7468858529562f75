# Two commands matter: `make test` and `make demo`. Each builds .venv from requirements/cpu.lock when
# it is missing or older than the lock, reinstalls cmrec when pyproject.toml changed, then runs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK_STAMP := $(VENV)/.lock-installed
STAMP := $(VENV)/.cmrec-installed
# torch's CPU build (2.13.0+cpu) is not on PyPI. Our machines keep its wheel in WHEELS; anywhere
# else pip takes the same pinned, hashed file from PyTorch's CPU wheel index (TORCH_INDEX).
WHEELS ?= /opt/wheels
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),--extra-index-url $(TORCH_INDEX))
export MLFLOW_DISABLE_TELEMETRY := true

# `make demo` knobs (`cmrec demo --help`): the larger study of docs/results.md is
# `make demo USERS=2000 LENGTH=500 EPOCHS=3 MODELS=all`.
USERS ?= 1000
LENGTH ?= 400
EPOCHS ?= 2
SEED ?= 0
MODELS ?= cm dien avg-pool
DEMO_OUT ?= runs/demo
EXPERIMENT ?= demo

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

# The whole story (`cmrec demo`): generate, train and compare with MLflow, refresh a store from a
# day-2 file in chunks, score from the store beside the batch path; one line per step, timed.
demo: $(STAMP)
	$(VENV)/bin/cmrec demo --users $(USERS) --length $(LENGTH) --epochs $(EPOCHS) --seed $(SEED) \
		--models $(MODELS) --out $(DEMO_OUT) --experiment $(EXPERIMENT)

# Re-resolve the stack and rewrite requirements/cpu.lock (needs the package registry).
lock:
	$(PYTHON) requirements/make_lock.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
