# img-extract on GPU nodes. torch from PyPI is the CUDA 13 build (driver R580+, Turing or newer) and brings its
# CUDA libraries, so the base only needs Python 3.11; the host's NVIDIA driver comes in through the container
# runtime (--gpus all). For older drivers or V100/P100 GPUs build with a torch index that fits them, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t img-vmr .
FROM python:3.11-slim

ARG TORCH_INDEX=""

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    IMG_WEIGHTS_DIR=/root/.cache/img-vmr

WORKDIR /opt/img-vmr
COPY pyproject.toml README.md ./
COPY extract ./extract
COPY img_model ./img_model
COPY pipelines ./pipelines
COPY manifests ./manifests
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch torchvision torchaudio --index-url "$TORCH_INDEX"; fi \
    && pip install .

WORKDIR /data
ENTRYPOINT ["img-extract"]
CMD ["--help"]
