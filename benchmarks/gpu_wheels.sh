#!/usr/bin/env bash
# The wheels a GPU node without internet lacks for benchmarks/gpu_check.sh, downloaded HERE (with PyPI) into
# .whl/ for Python 3.12 on manylinux x86_64 (the device machine: /opt/torch/.venv, torch 2.11 + CUDA 13). The list
# is every package the check's steps import that the node's package list does not hold (benchmarks/gpu_check.py:
# STEP_IMPORTS, NODE_PACKAGES, WHEEL_PINS): today imageio-ffmpeg (the node has no ffmpeg at all).
#
#   bash benchmarks/gpu_wheels.sh               # download into .whl/ (ignored by git through .git/info/exclude)
#   bash benchmarks/gpu_wheels.sh --print-list  # NAME==VERSION per line, nothing downloaded
#
# Then run the check on the device with carry [".whl"] and this command:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site && bash benchmarks/gpu_check.sh --out $OUT
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS=$("$PYTHON" benchmarks/gpu_check.py --print-wheels)
if [ "${1:-}" = "--print-list" ]; then
    printf '%s\n' "$WHEELS"
    exit 0
fi
if [ -n "${1:-}" ]; then
    echo "usage: bash benchmarks/gpu_wheels.sh [--print-list]" >&2
    exit 2
fi
EXCLUDE="$(git rev-parse --git-path info/exclude 2>/dev/null || true)"
if [ -n "$EXCLUDE" ] && ! grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null; then
    mkdir -p "$(dirname "$EXCLUDE")" && echo '/.whl/' >> "$EXCLUDE"
fi
mkdir -p .whl
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux2010_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
for wheel in $WHEELS; do
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$wheel"
done
ls -l .whl
echo "gpu_wheels: $(du -sh .whl | cut -f1) in .whl/ (a device call carries 64 MiB with the working tree). On the device:"
echo '  carry [".whl"]; python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site && bash benchmarks/gpu_check.sh --out $OUT'
