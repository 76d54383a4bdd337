"""Feature presets: one frozen object per preset pins everything that decides the numbers.

A preset is what gets written as provenance (its `recipe`), in the spirit of torchvision's weights enums.
Issue-by-issue the registry grows (I3D, VGGish, PANNs); the runner only ever sees `Preset` objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from extract.decode import AudioSampling, FrameSampling
from extract.errors import UsageError

Modality = Literal["visual", "audio"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # which extractor class builds it (extract.models registry key)
    weights: str  # published file name, or HF model id / directory
    modality: Modality
    output_dim: int
    description: str
    frames: FrameSampling | None = None
    audio: AudioSampling | None = None
    weights_sha256: str | None = None
    weights_url: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def with_overrides(
        self, *, fps: float | None = None, weights: str | None = None, decoder: str | None = None
    ) -> Preset:
        """The same preset with a user's --fps, --decoder or model choice (all end up in the recipe)."""
        preset = self
        if decoder is not None and preset.frames is not None:
            if decoder not in ("ffmpeg", "decord"):
                raise UsageError(f"--decoder must be ffmpeg or decord, got {decoder!r}")
            preset = dataclasses.replace(preset, frames=dataclasses.replace(preset.frames, decoder=decoder))
        if fps is not None:
            if preset.frames is None:
                raise UsageError(f"--fps does not apply to the audio preset {preset.name!r}")
            if fps <= 0:
                raise UsageError(f"--fps must be positive, got {fps}")
            preset = dataclasses.replace(preset, frames=dataclasses.replace(preset.frames, fps=fps))
        if weights is not None:
            preset = dataclasses.replace(preset, weights=weights, weights_sha256=None, weights_url=None)
        return preset

    def recipe(self) -> dict[str, Any]:
        """Every parameter that changes the numbers, as plain JSON-able values."""
        out: dict[str, Any] = {
            "preset": self.name,
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "modality": self.modality,
            "output_dim": self.output_dim,
            **{f"preprocessing.{k}": v for k, v in self.preprocessing.items()},
        }
        if self.frames is not None:
            frames = dataclasses.asdict(self.frames)
            frames.pop("chunk_frames")  # a memory knob, not a numeric one
            out.update({f"frames.{k}": v for k, v in frames.items()})
        if self.audio is not None:
            audio = dataclasses.asdict(self.audio)
            audio.pop("chunk_seconds")
            out.update({f"audio.{k}": v for k, v in audio.items()})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


CLIP = Preset(
    name="clip",
    model="clip-vision",
    weights="openai/clip-vit-base-patch32",
    modality="visual",
    output_dim=512,
    description="CLIP ViT-B/32 projected image embedding per frame, frames at 1 fps (--fps to change)",
    frames=FrameSampling(fps=1.0, short_side=224, resize="shorter", crop=224, decoder="ffmpeg"),
    weights_url="https://huggingface.co/openai/clip-vit-base-patch32",
    preprocessing={"interpolation": "bicubic", "scale": "1/255", "mean": CLIP_MEAN, "std": CLIP_STD},
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (CLIP,)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown feature preset {name!r}; choose from: {', '.join(PRESETS)}") from None
