# make run: fresh machine -> .venv -> dvc repro (default params) -> metrics summary.
# make test: .venv -> ruff -> pytest.  make serve: the HTTP service on port 8000.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install run test lint serve bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# Pinned first: an unpinned torch (or one pulled in by deepspeed) is the multi-GB CUDA build.
	$(PYTHON) -m pip install -q "torch==2.13.0"
	$(PYTHON) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: install
	dvc repro
	$(PYTHON) -m lmforge.summary

lint: install
	ruff check .
	ruff format --check .

test: lint
	$(PYTHON) -m pytest

serve: install
	uvicorn serve.app:app --host 0.0.0.0 --port 8000

bench: install
	$(PYTHON) bench/train_throughput.py
	$(PYTHON) bench/inference.py
	$(PYTHON) bench/serve_load.py

clean:
	rm -rf $(VENV)
