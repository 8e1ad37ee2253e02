#!/usr/bin/env bash
# GPU benchmark: SD-1.5-shaped swap round trip, mixed-tenant batches (1/4/8/16, 64 tenants) vs single-tenant
# batches and the swap path, learner step vs a rank-4 LoRA; fp16 on one CUDA device, tables in markdown.
#
#   bash benchmarks/gpu.sh            # one CUDA device (CUDA_VISIBLE_DEVICES picks it), <= 8 minutes
#   bash benchmarks/gpu.sh --quick    # the same code on CPU, fp32, a small SD-shaped UNet (the CI smoke run)
#
# Extra arguments go to benchmarks/bench_gpu.py (--reps, --steps, --size, --only swap,batch,learn).
# Offline: no model is downloaded (random weights in SD-1.5's shapes). Python: $PYTHON, else .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [[ " $* " != *" --quick "* ]]; then
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"  # one device
fi
exec timeout "${GPU_BENCH_TIMEOUT_S:-480}" "$PY" -m benchmarks.bench_gpu "$@"
