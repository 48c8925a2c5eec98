# The README's two commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines: pin the local CPU build (an unpinned torch pulls a multi-GB CUDA build).
TORCH_PIN ?= torch==2.13.0
PYTEST_FAST := -m "not slow and not deepspeed and not vllm and not gpu"
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: demo test test-slow test-all clean-venv

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; else $(PIP) install -q "$(TORCH_PIN)"; fi
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/clipctl train --preset tiny-cpu

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q $(PYTEST_FAST)

test-slow: $(VENV)/.dev-installed
	$(PY) -m pytest -q -m slow

test-all: test test-slow

clean-venv:
	rm -rf $(VENV)
