"""The features a checkpoint reads, made from a video file as its training features were made.

The checkpoint's provenance records, per feature, the recipe its training store held (preset, fps, windows,
crop, weights file and sha256...). Here the preset is rebuilt from that recipe (the named preset with the
recorded overrides: --fps, --decoder, --audio-window/--audio-hop), the extractors are loaded, and their recipe
must be the recorded one (img_model/recipe_check.py: other weights are refused unless trusted). The video then
goes through the real extraction run (extract/run/: probe, decode, windows, models, store) into a cache store,
one per recipe (CACHE/<recipe key>/feats.h5), under an id made from the file's path, size and modification time.

A video already in the cache is read back without loading any extraction model: a second query on the same
video costs only the IMG model. A video that fails is a VideoDecodeError naming the stage (probe, decode,
audio, compute) and ffmpeg's or the model's reason; an audio stream that fails alone leaves the visual track,
and the answer says the audio was not used and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from extract.errors import ImgVmrError, UsageError, VideoDecodeError
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.presets import PRESETS, Preset, get_preset
from extract.probe import read_stream_attrs, stored_duration
from extract.sources import VideoSource
from extract.store import FailureRecord, FeatureStore, Track
from img_model.checkpoint import Checkpoint
from img_model.errors import CheckpointMismatchError
from img_model.recipe_check import check_recipe

log = logging.getLogger("img_vmr.predict")

KINDS = ("visual", "audio")
CACHE_ENV = "IMG_PREDICT_CACHE"


def default_cache_dir() -> Path:
    """$IMG_PREDICT_CACHE, else ~/.cache/img-vmr/predict."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "img-vmr" / "predict")


@dataclass(frozen=True)
class FeatureSpec:
    """What the checkpoint reads for one modality: the feature's name, its row size and its recipe."""

    kind: str  # visual | audio
    name: str
    dim: int
    recipe: dict[str, Any]


@dataclass
class VideoFeatures:
    """One video's tracks as the checkpoint's features, with what the store recorded about the file."""

    path: Path
    video_id: str
    duration: float
    has_audio: bool  # the file has an audio stream with samples
    visual: Track
    audio: Track | None  # None: no audio stream, or its extraction failed (audio_note says which)
    audio_note: str = ""


def recorded_specs(checkpoint: Checkpoint, visual: str | None = None, audio: str | None = None) -> list[FeatureSpec]:
    """The checkpoint's features. A converted checkpoint records none: `visual` / `audio` name the presets its
    features were made with (their sizes are checked against the model)."""
    config = checkpoint.config
    dims = {"visual": config.video_feature_dim, "audio": config.audio_feature_dim}
    given = {"visual": visual, "audio": audio}
    specs = []
    for kind in KINDS:
        recorded = checkpoint.provenance.get(kind)
        if recorded is None:
            name = given[kind]
            if name is None:
                raise CheckpointMismatchError(
                    f"the checkpoint records no {kind} feature recipe (converted from the authors' file): name the "
                    f"preset its {kind} features were made with, --{kind} NAME ({', '.join(PRESETS)})"
                )
            recipe = get_preset(name).recipe()
            if recipe["output_dim"] != dims[kind]:
                raise CheckpointMismatchError(
                    f"--{kind} {name} gives {recipe['output_dim']}-d rows; the model reads {dims[kind]}-d {kind} rows"
                )
            specs.append(FeatureSpec(kind, name, dims[kind], recipe))
            continue
        if given[kind] is not None and given[kind] != recorded["name"]:
            raise UsageError(f"--{kind} {given[kind]}: the checkpoint was trained on {recorded['name']!r} features")
        if "preset" not in recorded["recipe"]:
            raise CheckpointMismatchError(
                f"the checkpoint's {kind} features {recorded['name']!r} were not made by an img-extract preset (their "
                "recipe names none), so they cannot be made from a video file; train on img-extract features"
            )
        specs.append(FeatureSpec(kind, recorded["name"], int(recorded["dim"]), dict(recorded["recipe"])))
    return specs


def preset_for(spec: FeatureSpec, clip_model: str | None = None) -> Preset:
    """The preset of a recorded recipe, with the overrides the recipe shows (what img-extract's flags set)."""
    recipe = spec.recipe
    preset = get_preset(recipe["preset"])
    if preset.frames is not None:
        preset = preset.with_overrides(fps=recipe.get("frames.fps"), decoder=recipe.get("frames.decoder"))
    if "windowing.window_seconds" in recipe:
        preset = preset.with_audio_windows(recipe["windowing.window_seconds"], recipe["windowing.hop_seconds"])
    if preset.model == "clip-vision" and clip_model:
        preset = preset.with_overrides(weights=clip_model)
    return preset


def recipe_key(recipes: dict[str, dict[str, Any]]) -> str:
    """The cache folder of features made with these recipes."""
    text = json.dumps(recipes, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_video_id(path: Path) -> str:
    """The file's id in the cache: its name and a digest of its absolute path, size and modification time (a
    file replaced in place gets a new id)."""
    resolved = path.resolve()
    stat = resolved.stat()
    digest = hashlib.sha256(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{resolved.stem}-{digest}"


class FeatureCache:
    """Extracts (once) and reads the checkpoint's features of video files."""

    def __init__(
        self,
        specs: list[FeatureSpec],
        cache_dir: Path,
        device: torch.device,
        weights_dir: Path | None = None,
        clip_model: str | None = None,
        trust_weights: bool = False,
        progress: bool = False,
    ) -> None:
        self.specs = {spec.kind: spec for spec in specs}
        self.cache_dir = Path(cache_dir)
        self.presets = [preset_for(spec, clip_model) for spec in specs]
        self.options = ExtractorOptions(device=device, weights_dir=weights_dir, verify_weights=False)
        self.trust_weights = trust_weights
        self.progress = progress
        self._extractors: dict[str, FeatureExtractor] | None = None
        self._store_path: Path | None = None

    @property
    def recorded_store(self) -> Path:
        return self.cache_dir / recipe_key({s.kind: s.recipe for s in self.specs.values()}) / "feats.h5"

    def features(self, path: str | os.PathLike[str]) -> VideoFeatures:
        video = Path(path)
        if not video.is_file():
            raise VideoDecodeError(f"{video}: no such file")
        video_id = cache_video_id(video)
        for store_path in dict.fromkeys(p for p in (self._store_path, self.recorded_store) if p is not None):
            found = self._read(store_path, video, video_id)
            if found is not None:
                log.debug("%s: features read from the cache %s", video, store_path)
                return found
        store_path = self._extract(video, video_id)
        found = self._read(store_path, video, video_id)
        if found is None:  # _extract raises for a failed visual track; anything else is a bug
            raise ImgVmrError(f"{video}: the extraction finished but {store_path} holds no features of it")
        return found

    # --- extraction ------------------------------------------------------------------------------------------

    def extractors(self) -> dict[str, FeatureExtractor]:
        """The extraction models, loaded once and checked against the checkpoint's recipes."""
        if self._extractors is None:
            from extract.models import build_extractor
            from extract.run.provenance import provenance_records

            built = {preset.name: build_extractor(preset, self._options(preset.name)) for preset in self.presets}
            actual = {name: record["recipe"] for name, record in provenance_records(list(built.values())).items()}
            for spec in self.specs.values():
                hint = "pass the files it was trained with (--weights-dir" + (
                    ", --clip-model)" if spec.recipe.get("model") == "clip-vision" else ")"
                )
                check_recipe(f"{spec.kind} features {spec.name!r}", spec.recipe, actual[spec.name], self.trust_weights,
                             hint)  # fmt: skip
            self._extractors = built
            key = recipe_key({spec.kind: actual[spec.name] for spec in self.specs.values()})
            self._store_path = self.cache_dir / key / "feats.h5"  # the recorded store unless weights were trusted
        return self._extractors

    def _options(self, name: str) -> ExtractorOptions:
        """The recorded precision where it can run (autocast is CUDA only; CPU extraction is fp32)."""
        recipe = next(spec.recipe for spec in self.specs.values() if spec.name == name)
        precision = recipe.get("precision", "fp32") if self.options.device.type == "cuda" else "fp32"
        return dataclasses.replace(self.options, precision=precision)

    def _extract(self, video: Path, video_id: str) -> Path:
        from extract.run import ExtractionRun, RunConfig, RunStopped

        extractors = self.extractors()
        assert self._store_path is not None
        self._store_path.parent.mkdir(parents=True, exist_ok=True)
        config = RunConfig(workers=1, retry_failed=True, commit_every=1, progress=self.progress)
        run = ExtractionRun(
            [VideoSource(video_id, video)],
            self._store_path,
            self.presets,
            self.options,
            config,
            build=lambda preset, options: extractors[preset.name],
        )
        try:
            summary = run.run()
        except RunStopped as stopped:
            raise ImgVmrError(f"{video}: feature extraction stopped ({stopped.cause})") from stopped.cause
        visual = self.specs["visual"].name
        for failure in summary.failures:
            if failure.video_id == video_id and (not failure.features or visual in failure.features):
                raise VideoDecodeError(_failure_line(video, failure))
        return self._store_path

    # --- reading -----------------------------------------------------------------------------------------------

    def _read(self, store_path: Path, video: Path, video_id: str) -> VideoFeatures | None:
        """The video's features from a cache store, or None when it does not hold them (all of them) yet."""
        if not FeatureStore.exists(store_path):
            return None
        visual, audio = self.specs["visual"], self.specs["audio"]
        with FeatureStore(store_path) as store:
            if video_id not in store or visual.name not in store.feature_names(video_id):
                return None
            metadata = read_stream_attrs(store.metadata(video_id))
            has_audio = bool(metadata.get("has_audio"))
            audio_failed = audio.name in store.failed_features(video_id)
            audio_here = audio.name in store.feature_names(video_id)
            if has_audio and not (audio_here or audio_failed):
                return None
            if store_path == self.recorded_store and any(
                store.provenance(spec.name) != spec.recipe for spec in (visual, audio) if spec.name in store.recipes()
            ):
                return None
            note = ""
            if not has_audio:
                note = "the video has no audio stream"
            elif not audio_here:
                failure = next(f for f in store.failures() if f.video_id == video_id and audio.name in f.features)
                note = f"its audio could not be used: {_failure_line(video, failure)}"
            return VideoFeatures(
                path=video,
                video_id=video_id,
                duration=stored_duration(metadata) or float(store.track(video_id, visual.name).timestamps[-1, 1]),
                has_audio=has_audio,
                visual=store.track(video_id, visual.name),
                audio=store.track(video_id, audio.name) if audio_here else None,
                audio_note=note,
            )


def _failure_line(video: Path, failure: FailureRecord) -> str:
    message = failure.message.removeprefix(f"{failure.path}: ").removeprefix(f"{video}: ")
    return f"{video} failed at the {failure.stage} stage: {message}"
