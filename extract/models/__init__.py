"""Feature models. `build_extractor` maps a preset's `model` key onto its extractor class (imported lazily).

The package itself imports no torch: `extract.models.presets` is read by commands that never load a model
(img-pipeline's recipes, --help), and importing torch starts subprocesses of its own (ldconfig) and takes seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from extract.core.errors import UsageError

if TYPE_CHECKING:
    from extract.models.base import ExtractorOptions, FeatureExtractor
    from extract.models.presets import Preset

EXTRACTORS: dict[str, tuple[str, str]] = {
    "clip-vision": ("extract.models.clip_vision", "ClipVisionExtractor"),
    "i3d": ("extract.models.published", "I3DExtractor"),
    "vggish": ("extract.models.published", "VGGishExtractor"),
    "panns-cnn14": ("extract.models.published", "PannsExtractor"),
    "slowfast": ("extract.models.published", "SlowFastExtractor"),
}


def extractor_class(preset: Preset) -> type[FeatureExtractor]:
    if preset.model not in EXTRACTORS:
        raise UsageError(f"preset {preset.name!r} names an unknown model {preset.model!r}")
    module, name = EXTRACTORS[preset.model]
    return getattr(importlib.import_module(module), name)


def build_extractor(preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
    return extractor_class(preset)(preset, options)


def recipe_without_model(preset: Preset, options: ExtractorOptions) -> dict[str, Any] | None:
    """The recipe `build_extractor(preset, options).recipe()` gives, without building the model; None where only
    the built model knows it (FeatureExtractor.recipe_without_model)."""
    return extractor_class(preset).recipe_without_model(preset, options)


def __getattr__(name: str) -> Any:
    """ExtractorOptions and FeatureExtractor (extract/models/base.py), imported when first asked for."""
    if name in ("ExtractorOptions", "FeatureExtractor"):
        from extract.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EXTRACTORS", "ExtractorOptions", "FeatureExtractor", "build_extractor", "recipe_without_model"]
