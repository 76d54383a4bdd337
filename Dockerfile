# img-vmr on GPU nodes: img-extract (the entry point), img-train, img-eval and every other console script of
# pyproject.toml, with the Ray engine (the `ray` extra, as ray[default]). The Python is CI's (.ci/run, pyproject's
# requires-python); torch is pinned to the CUDA 13 build the project is tested with (driver R580+, Turing or
# newer) and brings its CUDA libraries, so the base needs no CUDA; the host's driver and nvidia-smi come in through
# the container runtime (--gpus all). For older drivers or V100/P100 GPUs, build against a torch index that fits
# them, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 --build-arg TORCH_VERSION=2.8.0 \
#                --build-arg TORCHVISION_VERSION=0.23.0 --build-arg TORCHAUDIO_VERSION=2.8.0 -t img-vmr .
# `docker run IMAGE doctor` checks ffmpeg, torch, the GPUs, the weights and the models (no HEALTHCHECK: it is a
# batch job, not a service).
FROM python:3.11-slim

ARG TORCH_VERSION=2.11.0
ARG TORCHVISION_VERSION=0.26.0
ARG TORCHAUDIO_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
# ray[default]: the dashboard and job server that `ray job submit` and KubeRay's RayJob talk to (plain `ray`, the
# extra's minimum that CI installs, has neither). docs/engines.md's RayJob names this version as its rayVersion.
ARG RAY_VERSION=2.60.0

# HOME and the caches are writable by any uid: `docker run --user "$(id -u):$(id -g)"` has no passwd entry (HOME
# would be /, and getpass.getuser() fails), and --compile writes Triton's and Inductor's caches there.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMG_WEIGHTS_DIR=/cache/img-vmr \
    HF_HOME=/cache/huggingface \
    HOME=/home/img \
    USER=img \
    XDG_CACHE_HOME=/home/img/.cache \
    TRITON_CACHE_DIR=/home/img/.cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/home/img/.cache/torchinductor

# wget: KubeRay's liveness and readiness probes run it in the container (KubeRay 1.1+ with Ray before 2.53).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# torch first, in its own layer: a code change does not download 3 GB again.
RUN PIP_INDEX_URL="$TORCH_INDEX" pip install --no-cache-dir \
        torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION} torchaudio==${TORCHAUDIO_VERSION}

WORKDIR /opt/img-vmr
COPY . .
# The project itself (pyproject's bounds; the torch above satisfies them and stays).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[ray]" "ray[default]==${RAY_VERSION}" \
    && useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin img \
    && mkdir -p /cache/img-vmr /cache/huggingface /data /home/img/.cache \
    && chown -R img:img /cache /data /home/img \
    && chmod 1777 /home/img /home/img/.cache

# The published weights and the Hugging Face models: mount them to download once and reuse, or to run offline.
VOLUME ["/cache/img-vmr", "/cache/huggingface"]
USER 1000:1000
WORKDIR /data
ENTRYPOINT ["img-extract"]
CMD ["--help"]
