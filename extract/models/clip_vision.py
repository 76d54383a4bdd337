"""CLIP image tower (extract/models/clip_network.py, transformers' CLIPVisionModelWithProjection in plain torch): the
projected `image_embeds` per frame.

The decoder already resizes the shorter side to the model's input size (bicubic) and centre-crops it, which is
what CLIPImageProcessor does; here the frames are only rescaled to [0, 1] and normalised with the mean/std of the
folder's preprocessor_config.json. tests/test_clip.py checks the result against CLIPImageProcessor and transformers'
model on the same frames.
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
from extract.models.clip_network import ClipVisionConfig, load_clip_image_encoder
from extract.models.presets import Preset
from extract.models.weights import search_dirs

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_FILE = "preprocessor_config.json"
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


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


def processor_values(
    processor_file: Path | None, mean: tuple[float, ...], std: tuple[float, ...], image_size: int
) -> tuple[tuple[float, ...], tuple[float, ...], int, int]:
    """(mean, std, shorter side, crop) from a CLIPImageProcessor's preprocessor_config.json; without one (or where
    it is unreadable or lacks a value), CLIP's published mean/std at the model's input size."""
    try:
        processor = json.loads(processor_file.read_text(encoding="utf-8")) if processor_file else {}
    except (OSError, ValueError):
        processor = {}
    if not isinstance(processor, dict):
        processor = {}

    def side(value: Any, key: str) -> int:  # a bare int is the old form of size and crop_size
        value = value.get(key) if isinstance(value, dict) else value
        return image_size if value is None else int(value)

    try:
        return (
            tuple(float(v) for v in processor.get("image_mean", mean)),
            tuple(float(v) for v in processor.get("image_std", std)),
            side(processor.get("size"), "shortest_edge"),
            side(processor.get("crop_size"), "height"),
        )
    except (KeyError, TypeError, ValueError):
        return mean, std, image_size, image_size


def download_model(source: str, model: str) -> None:
    """Fetch a hub id's config, first weights file and preprocessor config into the Hugging Face cache (the
    machine is online and the hub answers: loads_locally said so)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    for names, required in ((("config.json",), True), (WEIGHT_FILES, True), ((PREPROCESSOR_FILE,), False)):
        for name in names:
            try:
                hf_hub_download(source, name)
                break
            except RemoteEntryNotFoundError:  # the repository has no such file: try the next name
                continue
            except OSError as exc:
                reason = str(exc).splitlines()[0] if str(exc) else None
                raise ClipVisionExtractor.not_available(model, reason) from None
        else:
            if required:
                raise ClipVisionExtractor.not_available(model, f"it has none of {', '.join(names)}")


@dataclasses.dataclass(frozen=True)
class ClipModel:
    """A CLIP model as found here, by its files, its weights not loaded: where it loads from, its config, and the
    preset as the model's config and image processor make it (input sizes, mean/std, projection size) with the
    weights' sha256. The recipe comes from this alone, so a resumed run with nothing to extract reads no weights."""

    source: str
    preset: Preset
    config_file: Path
    weights_file: Path
    config_sha256: str
    config: ClipVisionConfig

    @classmethod
    def find(cls, preset: Preset, options: ExtractorOptions) -> ClipModel:
        source = resolve_model_source(preset.weights, options.weights_dir, CLIP_MODEL_TYPES)
        if not loads_locally(source, lambda reason: ClipVisionExtractor.not_available(preset.weights, reason)):
            download_model(source, preset.weights)
        config_file = model_file(source, ("config.json",))
        weights_path = weights_file(source)
        if config_file is None or weights_path is None:
            raise ClipVisionExtractor.not_available(preset.weights)
        config = ClipVisionConfig.from_file(config_file)
        mean, std, short_side, crop = processor_values(
            model_file(source, (PREPROCESSOR_FILE,)),
            preset.preprocessing["mean"],
            preset.preprocessing["std"],
            config.image_size,
        )
        assert preset.frames is not None
        resolved = dataclasses.replace(
            preset,
            frames=dataclasses.replace(preset.frames, short_side=short_side, crop=crop),
            preprocessing={**preset.preprocessing, "mean": mean, "std": std},
            output_dim=config.projection_dim,
            weights_sha256=sha256_file(weights_path),
        )
        return cls(source, resolved, config_file, weights_path, config_sha256(config_file), config)

    def recipe(self) -> dict[str, Any]:
        """The model by its identity (config and weights sha256), not by the folder or id it was loaded from:
        the same model reached through another folder extends a store."""
        recipe = self.preset.recipe()
        del recipe["weights"]
        recipe["weights_file"] = self.weights_file.name
        recipe["model_config_sha256"] = self.config_sha256
        return recipe


class ClipVisionExtractor(FeatureExtractor):
    def __init__(self, preset: Preset, options: ExtractorOptions) -> None:
        super().__init__(preset, options)
        self.found = ClipModel.find(preset, options)
        self.source = self.found.source
        self.model = load_clip_image_encoder(self.found.config_file, self.found.weights_file).to(options.device)
        self.preset = self.found.preset
        self.config_sha256 = self.found.config_sha256
        self.weights_file = self.found.weights_file
        mean, std = self.preset.preprocessing["mean"], self.preset.preprocessing["std"]
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=options.device).view(shape)
        self._std = torch.tensor(std, dtype=torch.float32, device=options.device).view(shape)
        size = self.found.config.image_size
        example = torch.zeros(2, 3, size, size)
        part = NetworkPart(self.model, lambda model, pixels: model(pixels))
        self.load_network(part, example, self.weights_file, config_sha256=self.config_sha256)

    @classmethod
    def recipe_without_model(cls, preset: Preset, options: ExtractorOptions) -> dict[str, Any] | None:
        """The recipe from the model's config, image processor and weights' sha256 (read as for the model), no
        weights loaded."""
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
