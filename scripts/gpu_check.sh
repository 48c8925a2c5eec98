#!/usr/bin/env bash
# One prepared check for a single H100/H200: every part prints as it goes and
# runs under its own time limit, so one slow part cannot eat the others' time.
# Nothing is fetched: it uses the machine's python3 (torch with CUDA,
# transformers, tokenizers, pandas, pyarrow, numpy) with clipctl from src/ on
# PYTHONPATH. It builds builtin:tiny once for its tokenizer (~1 min; carry a
# prebuilt cache with CLIPCTL_CACHE=... to skip that), then runs
# bench/gpu_check.py's parts (see its docstring): the 1.5B-shaped training
# steps (update MFU, tokens/s, peak memory), the 7B-shaped fit check with
# gradient checkpointing, and the LM-head benchmark. Extra arguments go to
# every part (e.g. --steps 2).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print('gpu:', torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 1
OMP_NUM_THREADS=4 timeout 180 "$PY" -c "from clipctl.models import resolve_model_path; print('tokenizer from', resolve_model_path('builtin:tiny'))" || exit 1
for part in "train:${TRAIN_LIMIT:-200}" "7b:${SEVEN_B_LIMIT:-300}" "lm-head:${LM_HEAD_LIMIT:-120}"; do
  name=${part%%:*}; limit=${part##*:}
  echo "== part $name (limit ${limit}s)"
  timeout "$limit" "$PY" bench/gpu_check.py --part "$name" "$@" || echo "== part $name ended with exit $?"
done
