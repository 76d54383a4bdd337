"""The extractor interface every feature model implements (visual and audio alike).

The run (extract/run/) turns decoded chunks of one video into model *units* with a per-video `Windower` (a frame for
CLIP, a window of frames for I3D, an audio example for VGGish or PANNs), batches units ACROSS videos, and
calls `embed` on each batch. An extractor therefore only says how to cut units and how to embed a batch.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.core.precision import FP32, Precision
from extract.media.decode import AudioChunk, AudioSampling, FrameBatch, FrameSampling
from extract.media.probe import StreamMetadata
from extract.models.backends import LoadedNetwork, load_network, resolve_backend
from extract.models.presets import Preset


@dataclass(frozen=True)
class ExtractorOptions:
    device: torch.device
    weights_dir: Path | None = None
    precision: Precision = FP32  # extract/core/precision.py; a name (fp32, bf16, fp16) is taken too
    verify_weights: bool = True  # refuse published files whose sha256 contradicts the published one
    backend: str = "torch"  # torch | openvino | auto (OpenVINO on a CPU where it is installed)

    def __post_init__(self) -> None:
        if not isinstance(self.precision, Precision):
            object.__setattr__(self, "precision", Precision(self.precision))


@dataclass
class Units:
    """Model inputs cut from one video: `inputs[i]` covers seconds `spans[i, 0]` to `spans[i, 1]`."""

    inputs: np.ndarray
    spans: np.ndarray  # [N, 2] float64

    def __len__(self) -> int:
        return len(self.inputs)


class Windower(abc.ABC):
    """Per-video state that turns decoded chunks into units. `finish` flushes what is left at the end."""

    def start(self, stream: StreamMetadata) -> None:  # noqa: B027 (most windowers need nothing of the stream)
        """Called once per video, before its first chunk, with its stream facts (HERO's clips need its rate)."""

    @abc.abstractmethod
    def push(self, chunk: FrameBatch | AudioChunk) -> Units | None: ...

    def finish(self) -> Units | None:
        return None


class FrameUnits(Windower):
    """One unit per sampled frame: the frame and the time span it stands for."""

    def push(self, chunk: FrameBatch | AudioChunk) -> Units | None:
        assert isinstance(chunk, FrameBatch)
        spans = np.stack([chunk.pts_seconds, chunk.pts_seconds + chunk.duration_seconds], axis=1)
        return Units(chunk.data, spans)


class NetworkPart(torch.nn.Module):
    """What a backend runs of a model: `take(model, inputs)` as a module's forward (e.g. I3D's extract_features,
    CLIP's image_embeds), so that OpenVINO converts exactly the part the extractor calls."""

    def __init__(self, model: torch.nn.Module, take: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._take = take

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._take(self.model, inputs)


def source_sha256(model: torch.nn.Module) -> str:
    """sha256 of the file that defines `model`'s class: a converted model is stale once its code changes."""
    return hashlib.sha256(Path(inspect.getfile(type(model))).read_bytes()).hexdigest()


class FeatureExtractor(abc.ABC):
    """A loaded feature model bound to a preset and a device."""

    # Most units one forward pass may take (None: --batch-size decides), e.g. I3D windows are heavy.
    max_batch: int | None = None
    # Whether loading compared the weights with a published checksum (provenance says so only when it did).
    weights_checked: bool = False

    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        self.check_options(preset, options)
        self.preset = preset
        self.options = options
        self.backend = resolve_backend(options.backend, options.device)
        self.network: LoadedNetwork | None = None

    @classmethod
    def check_options(cls, preset: Preset, options: ExtractorOptions) -> None:
        """UsageError for options this model cannot run with, before any weights are read."""
        if options.precision.name == "bf16":  # refused where the CPU lacks bf16
            options.precision.checked(options.device)  # (fp16 asked of a model on a CPU runs fp32: .effective)
        resolve_backend(options.backend, options.device)

    @classmethod
    def recipe_without_model(cls, preset: Preset, options: ExtractorOptions) -> dict[str, Any] | None:
        """What `recipe()` of this preset will be once built, found without building the network (a resumed run
        whose videos are all in the store needs no model); None where only the built model knows (the default)."""
        return None

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def frame_sampling(self) -> FrameSampling | None:
        return self.preset.frames

    @property
    def audio_sampling(self) -> AudioSampling | None:
        return self.preset.audio

    @abc.abstractmethod
    def windower(self) -> Windower:
        """Fresh per-video unit cutter."""

    @abc.abstractmethod
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """Embed a batch of units (stacked along axis 0) into rows [B, D], or [B, R, D] for R rows per unit."""

    @abc.abstractmethod
    def recipe(self) -> dict[str, Any]:
        """The preset's recipe with what loading resolved (actual weights file, its sha256, output dim)."""

    def runtime(self) -> dict[str, Any]:
        """Facts about this run that do not change the numbers (e.g. where the weights were found)."""
        return {}

    def backend_runtime(self) -> dict[str, Any]:
        """The backend that really runs the network (after any fallback) and its version, for provenance."""
        if self.network is None:
            return {"backend": "torch", "backend_version": torch.__version__}
        return {"backend": self.network.backend, "backend_version": self.network.version}

    def load_network(
        self, part: NetworkPart, example: torch.Tensor, weights_file: Path | None, **identity: Any
    ) -> LoadedNetwork:
        """`part` ready on this extractor's backend and precision, for inputs shaped like `example` (any batch)."""
        self.network = load_network(
            part,
            example.to(self.options.device),
            backend=self.backend,
            precision=self.options.precision,
            device=self.options.device,
            identity={
                "name": self.preset.model,
                "weights_sha256": self.preset.weights_sha256,
                "source_sha256": source_sha256(part.model),
                "torch": torch.__version__,
                **identity,
            },
            weights_file=weights_file,
        )
        return self.network

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """Host array to the model's device (pinned, non-blocking copy on CUDA)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.options.device.type == "cuda":
            return tensor.pin_memory().to(self.options.device, non_blocking=True)
        return tensor
