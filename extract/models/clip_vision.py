"""CLIP image tower (transformers' CLIPVisionModelWithProjection): the projected `image_embeds` per frame.

The decoder already resizes the shorter side to the model's input size (bicubic) and centre-crops it, which is
what CLIPImageProcessor does; here the frames are only rescaled to [0, 1] and normalised with the processor's
mean/std. tests/test_clip.py checks the result against CLIPImageProcessor on the same frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.core.download import hub_unreachable, offline, sha256_file
from extract.core.errors import MissingWeightsError, ModelUnavailableError
from extract.models.base import ExtractorOptions, FeatureExtractor, FrameUnits, NetworkPart, Windower
from extract.models.presets import Preset
from extract.models.weights import search_dirs

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


def _version() -> str:
    import transformers

    return transformers.__version__


def _looks_like_path(model: str) -> bool:
    """A folder the user meant, not a Hugging Face id ("org/name" or "name")."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model_source(model: str, weights_dir: Path | None, model_types: tuple[str, ...] = ()) -> str:
    """A local folder for `model` if there is one, else the HF id.

    Looked for: `model` itself as a folder; then in --weights-dir and the weights cache as DIR/<id> or
    DIR/<last part of the id>; and DIR itself when it holds a model whose config says one of `model_types`.
    A path that is not a folder is an error, not an id.
    """
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    if _looks_like_path(model):
        raise MissingWeightsError(f"model folder {model} does not exist; pass a saved model folder or a HF id")
    for folder in search_dirs(weights_dir):
        for candidate in (folder / model, folder / model.rsplit("/", 1)[-1]):
            if (candidate / "config.json").is_file():
                return str(candidate.resolve())
        if model_types and _model_type(folder) in model_types:
            return str(folder.resolve())
    return model


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def model_file(source: str, names: tuple[str, ...]) -> Path | None:
    """The first of `names` in a model folder, or in the Hugging Face cache for an id."""
    if Path(source).is_dir():
        return next((Path(source) / f for f in names if (Path(source) / f).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for filename in names:
        cached = try_to_load_from_cache(source, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None


def weights_file(source: str) -> Path | None:
    return model_file(source, WEIGHT_FILES)


def loads_locally(source: str, not_available: Callable[[str | None], Exception]) -> bool:
    """Whether `source` loads from disk alone: a folder, or a hub id whose config and weights are cached (then the
    hub is not asked again: a model is known by its files' sha256 anyway). A hub id that is not cached is fetched
    only when the machine is online and the hub answers; otherwise `not_available(reason)` is raised at once."""
    if Path(source).is_dir() or (model_file(source, ("config.json",)) and weights_file(source)):
        return True
    if offline():
        raise not_available(None)
    reason = hub_unreachable()
    if reason:
        raise not_available(reason)
    return False


def config_sha256(config_file: Path) -> str:
    """The model's identity by its configuration: sha256 of config.json without the keys that only say where
    from or by which library version it was saved (`_name_or_path`, `transformers_version`, ...)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.startswith("_") and k != "transformers_version"}
        return value

    config = strip(json.loads(config_file.read_text(encoding="utf-8")))
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ClipModel:
    """A CLIP model as found here, by its files, its weights not loaded: where it loads from, and the preset as
    transformers reads the model's config and image processor (input sizes, mean/std, projection size) with the
    weights' sha256. The recipe comes from this alone, so a resumed run with nothing to extract reads no weights."""

    source: str
    local: bool  # loads from disk alone (local_files_only)
    preset: Preset
    weights_file: Path | None
    config_sha256: str | None
    image_size: int

    @classmethod
    def find(cls, preset: Preset, options: ExtractorOptions) -> ClipModel:
        source = resolve_model_source(preset.weights, options.weights_dir, CLIP_MODEL_TYPES)
        local = loads_locally(source, lambda reason: ClipVisionExtractor.not_available(preset.weights, reason))
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:  # the config as from_pretrained reads it for the model
            config = CLIPVisionModelWithProjection.config_class.from_pretrained(source, local_files_only=local)
        except OSError:
            raise ClipVisionExtractor.not_available(preset.weights) from None
        image_size = int(config.image_size)
        mean, std = preset.preprocessing["mean"], preset.preprocessing["std"]
        short_side, crop = image_size, image_size
        try:
            processor = CLIPImageProcessor.from_pretrained(source, local_files_only=local)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
            short_side = int(processor.size["shortest_edge"])
            crop = int(processor.crop_size["height"])
        except (OSError, KeyError, TypeError, ValueError):
            pass  # no preprocessor_config.json: CLIP's published defaults at the model's input size
        assert preset.frames is not None
        weights_path = weights_file(source)
        config_file = model_file(source, ("config.json",))
        resolved = dataclasses.replace(
            preset,
            frames=dataclasses.replace(preset.frames, short_side=short_side, crop=crop),
            preprocessing={**preset.preprocessing, "mean": mean, "std": std},
            output_dim=int(config.projection_dim),
            weights_sha256=sha256_file(weights_path) if weights_path else None,
        )
        identity = config_sha256(config_file) if config_file else None
        return cls(source, local, resolved, weights_path, identity, image_size)

    def recipe(self) -> dict[str, Any]:
        """The model by its identity (config and weights sha256), not by the folder or id it was loaded from:
        the same model reached through another folder extends a store."""
        recipe = self.preset.recipe()
        del recipe["weights"]
        recipe["weights_file"] = self.weights_file.name if self.weights_file else None
        recipe["model_config_sha256"] = self.config_sha256
        return recipe


class ClipVisionExtractor(FeatureExtractor):
    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        super().__init__(preset, options)
        self.found = ClipModel.find(preset, options)
        self.source = self.found.source
        from transformers import CLIPVisionModelWithProjection

        try:
            model = CLIPVisionModelWithProjection.from_pretrained(self.source, local_files_only=self.found.local)
        except OSError:
            raise self.not_available(preset.weights) from None
        self.model = model.eval().to(options.device)
        self.preset = self.found.preset
        self.config_sha256 = self.found.config_sha256
        self.weights_file = self.found.weights_file
        mean, std = self.preset.preprocessing["mean"], self.preset.preprocessing["std"]
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=options.device).view(shape)
        self._std = torch.tensor(std, dtype=torch.float32, device=options.device).view(shape)
        part = NetworkPart(self.model, lambda model, pixels: model(pixel_values=pixels).image_embeds)
        size = self.found.image_size
        example = torch.zeros(2, 3, size, size)
        self.load_network(part, example, self.weights_file, config_sha256=self.config_sha256, transformers=_version())

    @classmethod
    def recipe_without_model(cls, preset: Preset, options: ExtractorOptions) -> dict[str, Any] | None:
        """The recipe from the model's config, image processor and weights' sha256: transformers reads the two
        configs as it does for the model, but no weights are loaded."""
        cls.check_options(preset, options)
        return ClipModel.find(preset, options).recipe()

    @staticmethod
    def not_available(model: str, reason: str | None = None) -> MissingWeightsError:
        name = model.rsplit("/", 1)[-1]
        why = f" ({reason})" if reason else ""
        return ModelUnavailableError(
            f"CLIP model {model!r} is not available offline{why}: download https://huggingface.co/{model} into "
            f"DIR/{name} and pass --weights-dir DIR (or --clip-model DIR/{name})"
        )

    def windower(self) -> Windower:
        return FrameUnits()

    @torch.inference_mode()
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        frames = self.to_device(inputs).permute(0, 3, 1, 2).float().div_(255.0)
        pixels = (frames - self._mean) / self._std
        assert self.network is not None
        return self.network(pixels).float().cpu().numpy()

    def recipe(self) -> dict[str, Any]:
        return self.found.recipe()

    def runtime(self) -> dict[str, Any]:
        return {"weights_source": self.source}
