"""Feature models. `build_extractor` maps a preset's `model` key onto its extractor class."""

from __future__ import annotations

from extract.errors import UsageError
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.presets import Preset


def build_extractor(preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
    if preset.model == "clip-vision":
        from extract.models.clip_vision import ClipVisionExtractor

        return ClipVisionExtractor(preset, options)
    raise UsageError(f"preset {preset.name!r} names an unknown model {preset.model!r}")


__all__ = ["ExtractorOptions", "FeatureExtractor", "build_extractor"]
