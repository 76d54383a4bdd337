"""Feature models. `build_extractor` maps a preset's `model` key onto its extractor class (imported lazily)."""

from __future__ import annotations

import importlib

from extract.core.errors import UsageError
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.models.presets import Preset

EXTRACTORS: dict[str, tuple[str, str]] = {
    "clip-vision": ("extract.models.clip_vision", "ClipVisionExtractor"),
    "i3d": ("extract.models.published", "I3DExtractor"),
    "vggish": ("extract.models.published", "VGGishExtractor"),
    "panns-cnn14": ("extract.models.published", "PannsExtractor"),
    "slowfast": ("extract.models.published", "SlowFastExtractor"),
}


def build_extractor(preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
    if preset.model not in EXTRACTORS:
        raise UsageError(f"preset {preset.name!r} names an unknown model {preset.model!r}")
    module, name = EXTRACTORS[preset.model]
    return getattr(importlib.import_module(module), name)(preset, options)


__all__ = ["EXTRACTORS", "ExtractorOptions", "FeatureExtractor", "build_extractor"]
