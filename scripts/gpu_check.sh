#!/usr/bin/env bash
# One prepared check for a single H100/H200. Nothing is fetched: it uses the
# machine's python3 (which must hold torch with CUDA, transformers, tokenizers,
# pandas, pyarrow, numpy) with clipctl from src/ on PYTHONPATH. It builds
# builtin:tiny once (for its tokenizer, ~1 min), then runs bench/gpu_check.py:
# a Qwen2.5-1.5B-shaped random policy trained for a few clipctl steps (rollout
# and update tokens/s, peak GPU memory, step-time breakdown as JSON lines),
# then the LM-head memory benchmark on the GPU. Extra arguments go to
# bench/gpu_check.py (e.g. --steps 2 --max-new-tokens 256).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print('gpu:', torch.cuda.get_device_name(), 'torch', torch.__version__)"
OMP_NUM_THREADS=4 "$PY" -c "from clipctl.models import resolve_model_path; print('tokenizer from', resolve_model_path('builtin:tiny'))"
"$PY" bench/gpu_check.py "$@"
