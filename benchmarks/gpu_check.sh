#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in under 8 minutes, written to one JSON and one markdown table:
# the CUDA-only tests, extraction throughput per preset (decode- or compute-bound, GPU utilisation and memory
# from nvidia-smi), fp16/bf16 cosine to fp32 per extractor, the IMG training step in fp32/bf16/fp16, and the
# 2-GPU DDP check when two GPUs are visible. Every step is time-boxed; the steps are in benchmarks/gpu_check.py.
# It downloads nothing: it makes its videos, the goldens' weights in the published layouts and a random CLIP.
#
#   benchmarks/gpu_check.sh [--out DIR]     # on a GPU node (default DIR: bench-out/gpu-check)
#   benchmarks/gpu_check.sh --dry-run       # the same steps on the CPU with tiny inputs (CI runs this)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 IMG_VMR_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
