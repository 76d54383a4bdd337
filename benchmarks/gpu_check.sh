#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in well under 8 minutes, written to one JSON and one markdown table: a
# preflight (Python, every package the steps import, torch's CUDA, ffmpeg: what is missing is named with the
# command that brings it), then the CUDA-only tests, the IMG training step in fp32/bf16/fp16, fp16/bf16 cosine to
# fp32 per extractor, extraction throughput per preset (decode- or compute-bound, GPU utilisation and memory from
# nvidia-smi), and the 2-GPU DDP check when two GPUs are visible. Every step is time-boxed; the steps are in
# benchmarks/gpu_check.py. It downloads nothing: it makes its videos, the goldens' weights in the published
# layouts and a random CLIP. It runs from the source tree (PYTHONPATH, no install), on Python 3.11 or 3.12.
#
#   benchmarks/gpu_check.sh [--out DIR]     # on a GPU node (default DIR: bench-out/gpu-check)
#   benchmarks/gpu_check.sh --dry-run       # the same steps on the CPU with tiny inputs (CI runs this)
#   benchmarks/gpu_check.sh --preflight     # only the checks of the machine
#   benchmarks/gpu_check.sh --help          # the steps, their budgets, and how to run on a node without internet
#
# On the device machine (no internet, no ffmpeg): here, `bash benchmarks/gpu_wheels.sh`, then carry [".whl"] and
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site && bash benchmarks/gpu_check.sh --out $OUT
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "gpu_check: $PYTHON is not a Python 3.11 or newer ($("$PYTHON" --version 2>&1 || echo 'not found')); set PYTHON=/path/to/python3" >&2
    exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 IMG_VMR_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
