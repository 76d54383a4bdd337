"""The features a checkpoint reads, made from a video file as its training features were made.

The checkpoint's provenance records, per feature, the recipe its training store held (preset, fps, windows,
crop, weights file and sha256...). Here the preset is rebuilt from that recipe (the named preset with the
recorded overrides: --fps, --decoder, --audio-window/--audio-hop), the extractors are loaded, and their recipe
must be the recorded one (img_model/predict/recipe_check.py: other weights are refused unless trusted, another
precision is a warning). The video then goes through the real extraction run (extract/run/: probe, decode,
windows, models, store) into a cache store under an id made from the file's path, size and modification time.

Cache layout: one folder per recorded recipe, CACHE/<recorded key>/, named from the checkpoint's recipes only
(not from the models loaded here), so that a new process finds a video's features before loading any model.
In it, feats.h5 holds features made with exactly the recorded recipe and feats-<key>.h5 those made with an
accepted other one (another precision: fp16 features extracted on a CPU; other weights under --trust-weights),
one store per recipe, each recording its own provenance. A cached video is read from the first store that holds
it with a recipe check_recorded_recipe accepts (feats.h5 first; a non-exact one is warned about once): a second
query on the same video, in this process or a new one, costs only the IMG model.

Processes share a cache: extraction into a recipe folder takes its lock (CACHE/<key>/extract.lock); a process
that finds it taken waits (up to `lock_timeout`, logging whom for), then looks again, since the other process
may have just extracted the same video. A video that fails is a VideoDecodeError naming the stage (probe,
decode, audio, compute) and ffmpeg's or the model's reason; an audio stream that fails alone leaves the visual
track, and the answer says the audio was not used and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from extract.core.download import cache_dir
from extract.core.errors import ImgVmrError, OutputWriteError, StoreLockedError, UsageError, VideoDecodeError, writing
from extract.core.files import acquire_writer_lock, release_writer_lock
from extract.core.precision import Precision
from extract.media.probe import read_stream_attrs, stored_duration
from extract.media.sources import VideoSource
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.models.presets import PRESETS, Preset, get_preset
from extract.store import (
    PARTS_SUFFIX,
    FailureRecord,
    FeatureStore,
    Track,
)
from img_model.checkpoint import Checkpoint, CheckpointMismatchError
from img_model.predict.recipe_check import check_recorded_recipe, recipe_accepted

log = logging.getLogger(f"img_vmr.{__name__}")

KINDS = ("visual", "audio")
EXACT_STORE = "feats.h5"  # features made with exactly the recorded recipe
CACHE_LOCK = "extract.lock"
CACHE_WAIT_SECONDS = 1800.0  # how long a process waits for another one extracting into the same cache


def default_cache_dir() -> Path:
    """$IMG_PREDICT_CACHE, else ~/.cache/img-vmr/predict (extract/core/download.py `cache_dir`)."""
    return cache_dir("predict")


@dataclass(frozen=True)
class FeatureSpec:
    """What the checkpoint reads for one modality: the feature's name and its recipe."""

    kind: str  # visual | audio
    name: str
    recipe: dict[str, Any]


@dataclass
class VideoFeatures:
    """One video's tracks as the checkpoint's features, with what the store recorded about the file."""

    path: Path
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
            specs.append(FeatureSpec(kind, name, recipe))
            continue
        if given[kind] is not None and given[kind] != recorded["name"]:
            raise UsageError(f"--{kind} {given[kind]}: the checkpoint was trained on {recorded['name']!r} features")
        if "tracks" in recorded:
            raise CheckpointMismatchError(
                f"the checkpoint reads several {kind} tracks as one ({recorded['name']}); img-predict makes one "
                f"{kind} track per video: extract them with img-extract and answer the queries with img-eval "
                "--dataset QUERIES.jsonl --predictions FILE"
            )
        if "preset" not in recorded["recipe"]:
            raise CheckpointMismatchError(
                f"the checkpoint's {kind} features {recorded['name']!r} were not made by an img-extract preset (their "
                "recipe names none), so they cannot be made from a video file; train on img-extract features"
            )
        specs.append(FeatureSpec(kind, recorded["name"], dict(recorded["recipe"])))
    return specs


def preset_for(spec: FeatureSpec, clip_model: str | None = None) -> Preset:
    """The preset of a recorded recipe, with the overrides the recipe shows (what img-extract's flags set)."""
    recipe = spec.recipe
    return get_preset(recipe["preset"]).with_options(
        fps=recipe.get("frames.fps"),
        decoder=recipe.get("frames.decoder"),
        weights=clip_model,
        audio_window=recipe.get("windowing.window_seconds"),
        audio_hop=recipe.get("windowing.hop_seconds"),
    )


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
        lock_timeout: float = CACHE_WAIT_SECONDS,
    ) -> None:
        self.specs = {spec.kind: spec for spec in specs}
        self.cache_dir = Path(cache_dir)
        self.presets = [preset_for(spec, clip_model) for spec in specs]
        self.options = ExtractorOptions(device=device, weights_dir=weights_dir, verify_weights=False)
        self.trust_weights = trust_weights
        self.progress = progress
        self.lock_timeout = lock_timeout
        self._extractors: dict[str, FeatureExtractor] | None = None
        self._store_path: Path | None = None  # where the models loaded here write
        self._warned: set[Path] = set()

    @property
    def folder(self) -> Path:
        """CACHE/<key of the recorded recipes>: the stores of this checkpoint's features."""
        return self.cache_dir / recipe_key({s.kind: s.recipe for s in self.specs.values()})

    @property
    def recorded_store(self) -> Path:
        return self.folder / EXACT_STORE

    def stores(self) -> list[Path]:
        """The folder's stores: feats.h5 (the recorded recipe) first, then those of accepted other recipes."""
        others = sorted(self.folder.glob(f"feats-*.h5{PARTS_SUFFIX}")) if self.folder.is_dir() else []
        return [self.recorded_store, *(self.folder / path.name.removesuffix(PARTS_SUFFIX) for path in others)]

    def features(self, path: str | os.PathLike[str]) -> VideoFeatures:
        video = Path(path)
        if not video.is_file():
            raise VideoDecodeError(f"{video}: no such file")
        video_id = cache_video_id(video)
        found = self._lookup(video, video_id)
        if found is not None:
            return found
        with self._extraction_lock():
            found = self._lookup(video, video_id)  # another process may have extracted it while we waited
            if found is None:
                store_path = self._extract(video, video_id)
                found = self._read(store_path, video, video_id)
        if found is None:  # _extract raises for a failed visual track; anything else is a bug
            raise ImgVmrError(f"{video}: the extraction finished but {self.folder} holds no features of it")
        return found

    def _lookup(self, video: Path, video_id: str) -> VideoFeatures | None:
        for store_path in self.stores():
            found = self._read(store_path, video, video_id)
            if found is not None:
                log.debug("%s: features read from the cache %s", video, store_path)
                return found
        return None

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
                what = f"{spec.kind} features {spec.name!r}"
                check_recorded_recipe(what, spec.recipe, actual[spec.name], self.trust_weights, hint)
            self._extractors = built
            exact = all(actual[spec.name] == spec.recipe for spec in self.specs.values())
            key = recipe_key({spec.kind: actual[spec.name] for spec in self.specs.values()})
            self._store_path = self.recorded_store if exact else self.folder / f"feats-{key}.h5"
            self._warned.add(self._store_path)  # check_recorded_recipe warned about its differences just now
        return self._extractors

    def _options(self, name: str) -> ExtractorOptions:
        """The recorded precision, where this device runs it (extract/core/precision.py: fp16 needs CUDA)."""
        recipe = next(spec.recipe for spec in self.specs.values() if spec.name == name)
        precision = Precision(recipe.get("precision", "fp32")).effective(self.options.device)
        return dataclasses.replace(self.options, precision=precision)

    @contextlib.contextmanager
    def _extraction_lock(self) -> Iterator[None]:
        """Hold the folder's extraction lock, waiting up to lock_timeout for another process that holds it."""

        def waiting(holder: str) -> None:
            log.info("waiting for %s, which extracts a video into the cache %s", holder, self.cache_dir)

        try:
            with writing(f"the feature cache {self.folder}", self.folder):
                self.folder.mkdir(parents=True, exist_ok=True)
                handle = acquire_writer_lock(self.folder, self.cache_dir, CACHE_LOCK, self.lock_timeout, waiting)
        except StoreLockedError as locked:
            raise StoreLockedError(
                f"the feature cache {self.cache_dir} is still being written by {locked.holder} after "
                f"{self.lock_timeout:g} s; wait for it to finish or use another --cache",
                locked.holder,
            ) from None
        try:
            yield
        finally:
            release_writer_lock(handle)

    def _extract(self, video: Path, video_id: str) -> Path:
        from extract.run import ExtractionRun, RunConfig, RunStopped

        extractors = self.extractors()
        assert self._store_path is not None
        config = RunConfig(workers=1, retry_failed=True, commit_every=1, progress=self.progress)
        run = ExtractionRun(
            [VideoSource(video_id, video)],
            self._store_path,
            self.presets,
            self.options,
            config,
            build=lambda preset, _options: extractors[preset.name],
        )
        try:
            summary = run.run()
        except StoreLockedError as locked:  # a writer that is not an img-predict (they take the cache's lock first)
            raise StoreLockedError(
                f"the feature cache {self.cache_dir} is being written by {locked.holder}; wait for it to finish or "
                "use another --cache",
                locked.holder,
            ) from None
        except RunStopped as stopped:
            if isinstance(stopped.cause, OutputWriteError):  # a full disk under the cache: one line, exit 3
                raise stopped.cause from None
            raise ImgVmrError(f"{video}: feature extraction stopped ({stopped.cause})") from stopped.cause
        visual = self.specs["visual"].name
        for failure in summary.failures:
            if failure.video_id == video_id and (not failure.features or visual in failure.features):
                raise VideoDecodeError(_failure_line(video, failure))
        return self._store_path

    # --- reading -----------------------------------------------------------------------------------------------

    def _read(self, store_path: Path, video: Path, video_id: str) -> VideoFeatures | None:
        """The video's features from a cache store, or None when it does not hold them (all of them) with a
        recipe the checkpoint accepts."""
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
            read = [spec for spec in (visual, audio) if spec.name in store.feature_names(video_id)]
            made = {spec.name: store.part_provenance(video_id, spec.name).get("recipe", {}) for spec in read}
            if not all(recipe_accepted(spec.recipe, made[spec.name], self.trust_weights) for spec in read):
                return None
            if store_path not in self._warned and any(made[spec.name] != spec.recipe for spec in read):
                self._warned.add(store_path)
                for spec in read:  # accepted: only warnings (another precision, trusted weights)
                    check_recorded_recipe(
                        f"{spec.kind} features {spec.name!r} cached in {store_path}",
                        spec.recipe,
                        made[spec.name],
                        self.trust_weights,
                        "",
                    )
            note = ""
            if not has_audio:
                note = "the video has no audio stream"
            elif not audio_here:
                failure = next(f for f in store.failures() if f.video_id == video_id and audio.name in f.features)
                note = f"its audio could not be used: {_failure_line(video, failure)}"
            return VideoFeatures(
                path=video,
                duration=stored_duration(metadata) or float(store.track(video_id, visual.name).timestamps[-1, 1]),
                has_audio=has_audio,
                visual=store.track(video_id, visual.name),
                audio=store.track(video_id, audio.name) if audio_here else None,
                audio_note=note,
            )


def _failure_line(video: Path, failure: FailureRecord) -> str:
    """The one line "VIDEO failed at the STAGE stage: REASON", the path said once (the stages' messages start
    with it, perhaps followed by the stream: "PATH (audio): decoding failed (...)")."""
    message = failure.message
    for path in (str(failure.path), str(video)):
        if path and message.startswith(path):
            message = re.sub(r"^(?: \([^)]*\))?: ", "", message[len(path) :])
            break
    return f"{video} failed at the {failure.stage} stage: {message}"
