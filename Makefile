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

# `make demo` knobs: a larger run is `make demo USERS=20000 LENGTH=1000 EPOCHS=10`.
USERS ?= 2000
LENGTH ?= 500
EPOCHS ?= 3
SEED ?= 0
DEMO_DIR ?= data/demo
DEMO_RUNS ?= runs/demo
DEMO_MODELS ?= cm cm-paper cm-recall dien gru4rec avg-pool
EXPERIMENT ?= demo
# DIEN runs its extractor and AUGRU once per target (O(L) each), so it gets no dense targets but
# this many training targets per user: what fits the training wall-clock of `cm` (measured: one
# target took DIEN 160 s an epoch where `cm` took 266 s, so two would not fit; docs/results.md).
DIEN_TARGETS ?= 1
# The paper's recipe trains with Adam at 1e-3 (batch 128, the earlier default); the rest use
# cmrec's defaults (docs/model.md, "Choices").
PAPER_ARGS ?= --lr 1e-3 --batch-size 128

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

# Generate XLong-style data, train every demo model on it, print the comparison table.
demo: $(STAMP)
	$(VENV)/bin/cmrec generate --users $(USERS) --length $(LENGTH) --seed $(SEED) --out $(DEMO_DIR) --overwrite
	for model in $(DEMO_MODELS); do \
		case $$model in dien) extra="--train-targets-per-user $(DIEN_TARGETS)";; \
			cm-paper) extra="$(PAPER_ARGS)";; *) extra="";; esac; \
		$(VENV)/bin/cmrec train --model $$model --events $(DEMO_DIR)/events.parquet --max-len $(LENGTH) \
			--epochs $(EPOCHS) --seed $(SEED) --experiment $(EXPERIMENT) --out $(DEMO_RUNS)/$$model-seed$(SEED) --overwrite \
			$$extra || exit 1; \
	done
	$(VENV)/bin/cmrec compare --experiment $(EXPERIMENT)
	@echo "MLflow store: $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} (experiment $(EXPERIMENT)); run folders in $(DEMO_RUNS)/"

# Re-resolve the stack and rewrite requirements/cpu.lock (needs the package registry).
lock:
	$(PYTHON) requirements/make_lock.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_RUNS) .pytest_cache .mypy_cache .ruff_cache
