# make run: fresh machine -> .venv -> dvc repro (default params) -> metrics summary.
# make test: .venv -> ruff -> pytest.  make serve: the HTTP service on port 8000.
# Versions come from constraints.txt (the tested environment); make lock refreshes it.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install run test lint serve bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q -c constraints.txt pip
	# Pinned first: an unpinned torch (or one pulled in by deepspeed) is the multi-GB CUDA build.
	$(PYTHON) -m pip install -q "torch==2.13.0"
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: install
	dvc repro
	$(PYTHON) -m lmforge.summary

lint: install
	ruff check .
	ruff format --check .

test: lint
	$(PYTHON) -m pytest

# Serves the tasks params.yaml fine-tunes (the last run's) unless LMFORGE_TASKS says otherwise.
serve: install
	LMFORGE_TASKS=$${LMFORGE_TASKS:-$$($(PYTHON) -c 'from lmforge.config import load_params; print(",".join(load_params().finetune.tasks))')} \
		uvicorn serve.app:app --host 0.0.0.0 --port 8000

bench: install
	$(PYTHON) bench/train_throughput.py
	$(PYTHON) bench/inference.py
	$(PYTHON) bench/serve_load.py

# Re-resolve constraints.txt after a change to pyproject.toml's dependencies, keeping every
# pin that still fits (add --upgrade to move to the newest releases), then run make test.
# torch is left out: it is pinned in pyproject.toml and installed first, as the CPU build.
lock: install
	$(VENV)/bin/pip-compile -q --extra dev --strip-extras --unsafe-package torch --unsafe-package lmforge \
		--no-emit-index-url --no-emit-find-links -o constraints.txt pyproject.toml

clean:
	rm -rf $(VENV)
