# img-extract on GPU nodes. torch 2.11.0 from PyPI is the CUDA 13 build and brings its CUDA libraries, so the
# base only needs Python 3.11; the host's NVIDIA driver comes in through the container runtime (--gpus all).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    IMG_WEIGHTS_DIR=/root/.cache/img-vmr

WORKDIR /opt/img-vmr
COPY pyproject.toml README.md ./
COPY extract ./extract
COPY img_model ./img_model
COPY pipelines ./pipelines
COPY manifests ./manifests
RUN pip install .

WORKDIR /data
ENTRYPOINT ["img-extract"]
CMD ["--help"]
