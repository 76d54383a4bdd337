"""The provenance each part records per feature: the recipe (what decides the numbers), software, runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from extract.core.errors import ProvenanceMismatchError
from extract.core.provenance import compare_recipes
from extract.core.versions import software_versions
from extract.media.ffmpeg import ffmpeg_version
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.models.presets import Preset

Build = Callable[[Preset, ExtractorOptions], FeatureExtractor]


def software_provenance() -> dict[str, Any]:
    return {**software_versions(), "ffmpeg": ffmpeg_version()}


def provenance_records(extractors: Sequence[FeatureExtractor]) -> dict[str, dict[str, Any]]:
    software = software_provenance()
    records = {}
    for extractor in extractors:
        options = extractor.options
        runtime = {
            "device": str(options.device),
            "precision": options.precision.name,
            "weights_checked": extractor.weights_checked,  # a published checksum was really compared
            # fp32 rows of either backend agree within the golden tolerances: a store may hold both (inspect says so)
            **extractor.backend_runtime(),
            **extractor.runtime(),
        }
        frames = extractor.frame_sampling
        decoder = {"frame_decoder": frames.decoder, "rotated_videos_decoder": "ffmpeg"} if frames else {}
        if frames and frames.decoder == "decord":
            import decord

            decoder["decord"] = getattr(decord, "__version__", "unknown")
        records[extractor.name] = {
            "recipe": run_recipe(extractor.recipe(), options),
            "software": {**software, **decoder},
            "runtime": runtime,
        }
    return records


def run_recipe(recipe: dict[str, Any], options: ExtractorOptions) -> dict[str, Any]:
    """An extractor's recipe as a run records it. bf16 / fp16 change the numbers, so the precision that really
    runs belongs to the recipe: bf16 rows never join fp32 rows of the same feature."""
    return {**recipe, "precision": options.precision.effective(options.device).name}


def run_options(options: ExtractorOptions, device: str | None = None) -> ExtractorOptions:
    """The options the models are built with: on `device`, resolved here where the models will run ('auto',
    'cpu', 'cuda', 'cuda:1'; None keeps options.device), in a precision that device runs (else UsageError)."""
    if device is not None:
        from extract.core.devices import resolve_device

        options = dataclasses.replace(options, device=resolve_device(device))
    return dataclasses.replace(options, precision=options.precision.checked(options.device))


def load_models(
    presets: Sequence[Preset], options: ExtractorOptions, build: Build, device: str | None = None
) -> tuple[list[FeatureExtractor], dict[str, dict[str, Any]]]:
    """Every engine's model loading: the presets' models (run_options: on `device`) and their provenance records."""
    options = run_options(options, device)
    extractors = [build(preset, options) for preset in presets]
    return extractors, provenance_records(extractors)


def recipes_without_models(
    presets: Sequence[Preset], options: ExtractorOptions, build: Build
) -> dict[str, dict[str, Any]] | None:
    """The recipes load_models(presets, options, build) records, found without building a model (each preset's
    recipe_without_model); None when `build` is not build_extractor (a test's stand-in) or a preset's recipe
    needs its model. A run that finds nothing to extract stops with these, never loading a model."""
    from extract.models import build_extractor, recipe_without_model

    if build is not build_extractor:
        return None
    options = run_options(options)
    recipes = {}
    for preset in presets:
        recipe = recipe_without_model(preset, options)
        if recipe is None:
            return None
        recipes[preset.name] = run_recipe(recipe, options)
    return recipes


def check_same_recipes(workers: Sequence[tuple[str, dict[str, dict[str, Any]]]], remedy: str) -> None:
    """ProvenanceMismatchError naming two workers (by where they run) whose models would make a feature
    differently, and how; `workers` are (where, provenance records) pairs."""
    (first_where, first), *others = workers
    for where, records in others:
        for name, record in first.items():
            detail = compare_recipes(record["recipe"], records.get(name, {}).get("recipe", {})).refused
            if detail:
                raise ProvenanceMismatchError(
                    f"the workers on {first_where} and {where} would make {name!r} features differently ({detail}); "
                    f"{remedy}"
                )
