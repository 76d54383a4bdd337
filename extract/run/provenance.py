"""The provenance each part records per feature: the recipe (what decides the numbers), software, runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from extract.ffmpeg_binary import ffmpeg_version
from extract.models.base import FeatureExtractor
from extract.versions import software_versions


def software_provenance() -> dict[str, Any]:
    return {**software_versions(), "ffmpeg": ffmpeg_version()}


def provenance_records(extractors: Sequence[FeatureExtractor]) -> dict[str, dict[str, Any]]:
    software = software_provenance()
    records = {}
    for extractor in extractors:
        options = extractor.options
        runtime = {
            "device": str(options.device),
            "precision": options.precision,
            "weights_checked": extractor.weights_checked,  # a published checksum was really compared
            **extractor.runtime(),
        }
        frames = extractor.frame_sampling
        decoder = {"frame_decoder": frames.decoder, "rotated_videos_decoder": "ffmpeg"} if frames else {}
        if frames and frames.decoder == "decord":
            import decord

            decoder["decord"] = getattr(decord, "__version__", "unknown")
        # fp16/bf16 change the numbers, so the precision that really ran belongs to the recipe (CPU runs fp32).
        precision = options.precision if options.device.type == "cuda" else "fp32"
        records[extractor.name] = {
            "recipe": {**extractor.recipe(), "precision": precision},
            "software": {**software, **decoder},
            "runtime": runtime,
        }
    return records
