# gca-jax: `make demo` runs the main job, `make test` the test suite; both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo replicate test bench data clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=runs/demo

replicate: $(STAMP)
	$(PY) -m experiments.replicate --workdir=runs/replicate

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -n 2 --dist=loadfile tests

bench: $(STAMP)
	$(PY) benchmarks/forward_backward.py

data: $(STAMP)
	$(PY) -m gca_jax.data.fetch --corpus=books

clean:
	rm -rf $(VENV) runs .pytest_cache
