"""What a user asks of an extraction, checked into the run that does it: `extract(ExtractionRequest(...))`.

img-extract's flags map one to one onto ExtractionRequest; every rule about them lives here, where pipelines and
tests call it without click: which presets and how each takes the options (Preset.with_options), --out naming a
store, --device against --devices and the Ray engine, the precision a device runs (extract/core/precision.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from extract.core.devices import resolve_device
from extract.core.errors import UsageError
from extract.core.precision import Precision
from extract.media.sources import video_sources
from extract.models.base import ExtractorOptions
from extract.models.presets import Preset, get_preset
from extract.run.config import RunConfig
from extract.run.engine_devices import parse_devices
from extract.run.extraction import ExtractionRun
from extract.run.shard import Shard
from extract.run.summary import RunSummary

AUDIO_WINDOW_OPTIONS = ("audio_window", "audio_hop")


@dataclass(frozen=True)
class ExtractionRequest:
    """img-extract run's options (their help says what each does)."""

    videos: Path
    out: Path
    features: str = "clip"  # comma-separated presets
    device: str = "auto"
    devices: str | None = None  # several devices: one local worker process each
    engine: str = "local"  # local | ray
    ray_address: str | None = None
    batch_size: int = 64
    workers: int = 2
    fps: float | None = None
    decoder: str | None = None
    audio_window: float | None = None
    audio_hop: float | None = None
    clip_model: str | None = None
    weights_dir: Path | None = None
    trust_weights: bool = False
    precision: str | None = None  # None: fp32
    backend: str = "torch"  # torch | openvino | auto (extract/models/backends/)
    resume: bool = True
    retry_failed: bool = False
    limit: int | None = None
    commit_every: int = 32
    stall_seconds: float | None = None  # None: RunConfig's default
    shard: str | None = None
    progress: bool = True


def presets_of(request: ExtractionRequest) -> list[Preset]:
    """The requested presets, each with the options that apply to it; an option that applies to none is refused."""
    names = [name.strip() for name in request.features.split(",") if name.strip()]
    if not names:
        raise UsageError("--features is empty; name at least one preset, e.g. --features clip")
    options = {
        "fps": request.fps,
        "decoder": request.decoder,
        "weights": request.clip_model,
        "audio_window": request.audio_window,
        "audio_hop": request.audio_hop,
    }
    presets = [get_preset(name).with_options(**options) for name in dict.fromkeys(names)]
    given = [name for name in AUDIO_WINDOW_OPTIONS if options[name] is not None]
    if given and not any(preset.accepts(given[0]) for preset in presets):
        raise UsageError("--audio-window/--audio-hop apply to windowed audio presets (panns); none was requested")
    return presets


def extraction_run(request: ExtractionRequest) -> ExtractionRun:
    """The run of a request, every rule checked before anything is written (one-line UsageErrors)."""
    presets = presets_of(request)
    sources = video_sources(request.videos)
    if request.out.suffix.lower() not in (".h5", ".hdf5"):
        raise UsageError(f"--out {request.out} should end in .h5 (the store's index file)")
    device_list = parse_devices(request.devices) if request.devices is not None else ()
    if device_list and request.device != "auto":
        raise UsageError("give --device (one) or --devices (several), not both")
    if request.engine == "ray" and (device_list or request.device.startswith("cuda:")):
        raise UsageError(
            f"--engine ray places one model actor on each GPU of the cluster: use --device auto, cuda or cpu "
            f"(not {'--devices' if device_list else '--device ' + request.device})"
        )
    if request.engine == "ray" or len(device_list) > 1:
        device = torch.device("cpu")  # each worker or actor resolves its own device, and checks the precision
        precision = Precision(request.precision or "fp32")
    else:
        device = resolve_device(device_list[0] if device_list else request.device)
        precision = Precision.resolve(request.precision or "fp32", device)
    options = ExtractorOptions(
        device, request.weights_dir, precision, verify_weights=not request.trust_weights, backend=request.backend
    )
    config = RunConfig(
        batch_size=request.batch_size,
        workers=request.workers,
        resume=request.resume,
        retry_failed=request.retry_failed,
        limit=request.limit,
        commit_every=request.commit_every,
        progress=request.progress,
        shard=Shard.parse(request.shard) if request.shard is not None else None,
        engine=request.engine,
        devices=device_list if len(device_list) > 1 else (),
        ray_address=request.ray_address,
        ray_device=request.device,
        **({"stall_seconds": request.stall_seconds} if request.stall_seconds is not None else {}),
    )
    return ExtractionRun(sources, request.out, presets, options, config)


def extract(request: ExtractionRequest) -> RunSummary:
    """Run the extraction a request asks for (the models load once the store is locked); its summary."""
    run = extraction_run(request)
    try:
        return run.run()
    finally:
        run.close()
