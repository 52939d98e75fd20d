# Two entry points: `make demo` (set up + demo reconstruction) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pin the CPU wheel first so nothing below resolves to a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m idm_med demo --output demo_output

# Tests use tiny tensors: one thread per library is faster and avoids oversubscribing
# small machines (torch, numpy/BLAS, numba and sigpy all read OMP_NUM_THREADS).
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) -m benchmarks operators

clean:
	rm -rf $(VENV) demo_output build *.egg-info
