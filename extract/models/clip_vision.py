"""CLIP image tower (transformers' CLIPVisionModelWithProjection): the projected `image_embeds` per frame.

The decoder already resizes the shorter side to the model's input size (bicubic) and centre-crops it, which is
what CLIPImageProcessor does; here the frames are only rescaled to [0, 1] and normalised with the processor's
mean/std. tests/test_clip.py checks the result against CLIPImageProcessor on the same frames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.errors import MissingWeightsError
from extract.models.base import ExtractorOptions, FeatureExtractor, FrameUnits, Windower
from extract.presets import Preset
from extract.weights import sha256_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_source(model: str, weights_dir: Path | None) -> str:
    """A local directory for `model` if one exists (as given, or under --weights-dir), else the HF id."""
    if Path(model).is_dir():
        return str(Path(model).resolve())
    if weights_dir is not None:
        for candidate in (weights_dir / model, weights_dir / model.rsplit("/", 1)[-1]):
            if candidate.is_dir():
                return str(candidate.resolve())
    return model


def weights_file(source: str) -> Path | None:
    if Path(source).is_dir():
        return next((Path(source) / f for f in WEIGHT_FILES if (Path(source) / f).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHT_FILES:
        cached = try_to_load_from_cache(source, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None


class ClipVisionExtractor(FeatureExtractor):
    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        super().__init__(preset, options)
        self.source = resolve_model_source(preset.weights, options.weights_dir)
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(self.source)
        except OSError:
            raise MissingWeightsError(
                f"CLIP model {preset.weights!r} is not available offline: download it from "
                f"https://huggingface.co/{preset.weights} into DIR and pass --weights-dir DIR or --clip-model DIR"
            ) from None
        self.model = model.eval().to(options.device)
        image_size = int(model.config.image_size)
        mean, std = preset.preprocessing["mean"], preset.preprocessing["std"]
        short_side, crop = image_size, image_size
        try:
            processor = CLIPImageProcessor.from_pretrained(self.source)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
            short_side = int(processor.size["shortest_edge"])
            crop = int(processor.crop_size["height"])
        except (OSError, KeyError, TypeError, ValueError):
            pass  # no preprocessor_config.json: CLIP's published defaults at the model's input size
        assert preset.frames is not None
        frames = dataclasses.replace(preset.frames, short_side=short_side, crop=crop)
        preprocessing = {**preset.preprocessing, "mean": mean, "std": std}
        weights_path = weights_file(self.source)
        self.preset = dataclasses.replace(
            preset,
            frames=frames,
            preprocessing=preprocessing,
            output_dim=int(model.config.projection_dim),
            weights_sha256=sha256_file(weights_path) if weights_path else None,
        )
        self.weights_file = weights_path
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=options.device).view(shape)
        self._std = torch.tensor(std, dtype=torch.float32, device=options.device).view(shape)

    def windower(self) -> Windower:
        return FrameUnits()

    @torch.inference_mode()
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        frames = self.to_device(inputs).permute(0, 3, 1, 2).float().div_(255.0)
        pixels = (frames - self._mean) / self._std
        with self.autocast():
            embeds = self.model(pixel_values=pixels).image_embeds
        return embeds.float().cpu().numpy()

    def recipe(self) -> dict[str, Any]:
        recipe = self.preset.recipe()
        recipe["weights_file"] = self.weights_file.name if self.weights_file else None
        return recipe
