"""IMG's datasets from the stores: queries (manifests/), video features (feature stores), text (text store).

Per query (img_spec.md §2.2): the visual track pooled to at most max_pos_len rows and the audio track aligned to
it (img_model/data/alignment.py, `img` or `time` rule), the word and character ids (or precomputed token features)
of the query's first max_pos_len tokens (§1.3 step 4), the start / end step labels of the authors' time-to-index
rule (§1.3, computed for the whole split in bounded memory), whether the video has audio, and in training the
saliency positives / negatives of §4.2, drawn from a generator seeded by (seed, epoch, query) so that any
worker, any resume, draws the same ones.

The lengths used for labels and decoding are those of the stored tracks (§7.18): the pooled visual length
min(T, max_pos_len), read from the track's shape. Nothing else is trusted for it.

Missing data never crashes a run: queries whose video has no visual features (or lacks one of several visual tracks
read as one, `--visual clip,slowfast`), whose video file was truncated when it was extracted (its tracks end early,
the annotation's times and duration do not), or whose text is not in the text store, are left out and listed in one
line; `strict=True` makes that an error. Videos without audio are dropped from training (`missing_audio="drop"`, the
authors' behaviour) or get a zero audio track with has_audio false (`"zeros"`, always the case in evaluation,
§7.17).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from extract.core.errors import ImgVmrError, UsageError
from extract.store import video_durations
from extract.store.interop import UNKNOWN
from img_model.data.alignment import aligned_length, aligned_tracks
from img_model.data.audio_perturbation import AudioPerturbation
from img_model.data.batch import Sample, saliency_samples, sample_rng
from img_model.data.config import DataConfig
from img_model.data.coverage import Coverage
from img_model.data.feature_stores import FeatureStores
from img_model.data.text_store import QueryTexts
from img_model.data.visual_tracks import combined_recipe
from img_model.network.decoding import time_to_index
from manifests.records import QueryRecord


class DataError(ImgVmrError):
    """The queries, features and text cannot be put together into a dataset (missing, stale or mismatched)."""


log = logging.getLogger(f"img_vmr.{__name__}")

Role = Literal["train", "eval"]
HELD_OUT_SPLIT = "train-val"  # the validation split carved from the training videos (see carve_validation)
OWN_VALIDATION_SPLIT = "val"  # a custom JSONL's own validation split: selection uses it when present


@dataclass(frozen=True)
class HeldOut:
    """How a run carves its train-val split: `fraction` of the training videos, chosen by `seed`."""

    fraction: float
    seed: int


# --- the sources and the dataset -----------------------------------------------------------------------------


def dataset_splits(
    name: str, data_dir: Path | None, durations: Callable[[], Mapping[str, float]] = dict
) -> dict[str, list[QueryRecord]]:
    """The query records of every split of --dataset NAME: a manifests/ dataset, or a custom JSONL file whose rows
    without a duration take the feature store's (`durations`, read only for a custom file)."""
    from manifests.custom import read_custom
    from manifests.registry import DATASETS, load_dataset

    if name in DATASETS:
        records = load_dataset(name, data_dir).records
    elif name.endswith(".jsonl"):
        records, _ = read_custom(Path(name), durations())
    else:
        raise UsageError(f"--dataset {name!r}: use one of {', '.join(DATASETS)} or a .jsonl file of your queries")
    splits: dict[str, list[QueryRecord]] = {}
    for record in records:
        splits.setdefault(record.split, []).append(record)
    return splits


class DataSources:
    """The feature stores, the text store and the query records of one DataConfig, opened once."""

    def __init__(self, config: DataConfig) -> None:
        for name, value in (
            ("dataset", config.dataset),
            ("visual", config.visual),
            ("audio", config.audio),
            ("text", config.text),
        ):
            if not value:
                raise UsageError(f"no --{name} given")
        self.config = config
        self.stores = FeatureStores(config.features)
        self.texts = QueryTexts(config.text)
        recipes = {name: self.stores.recipe(name) for name in config.visual_tracks}  # first: names what stores hold
        self.visual_track_provenance = [
            {"name": name, "dim": self._feature_dim(name), "recipe": recipe} for name, recipe in recipes.items()
        ]
        self.visual_recipe = combined_recipe([track["recipe"] for track in self.visual_track_provenance])
        self.audio_recipe = self.stores.recipe(config.audio)
        if config.align == "time":
            self._check_timed({**recipes, config.audio: self.audio_recipe})
        self.video_dim = sum(track["dim"] for track in self.visual_track_provenance)
        self.audio_dim = self._feature_dim(config.audio)

    @staticmethod
    def _check_timed(recipes: dict[str, dict[str, Any]]) -> None:
        """--align time reads the rows' times: features imported without --row-seconds have none (NaN)."""
        for name, recipe in recipes.items():
            if recipe.get("imported_from") and recipe.get("sampling") == UNKNOWN:
                raise UsageError(
                    f"--align time needs the times of the rows, and {name!r} was imported without them; import it "
                    "again with img-extract import-img --row-seconds S, or use --align img"
                )

    def _feature_dim(self, feature: str) -> int:
        for video_id in self.stores.video_ids():
            if feature in self.stores.feature_names(video_id):
                return int(self.stores.track_shape(video_id, feature)[1])
        raise UsageError(f"no video in {', '.join(map(str, self.stores.paths))} has a {feature!r} track")

    def visual_provenance(self) -> dict[str, Any]:
        """The visual input's name, width and recipe, and for several tracks read as one each track's."""
        visual: dict[str, Any] = {"name": self.config.visual, "dim": self.video_dim, "recipe": self.visual_recipe}
        if len(self.visual_track_provenance) > 1:
            visual["tracks"] = self.visual_track_provenance
        return visual

    def provenance(self) -> dict[str, Any]:
        """What the checkpoint records about its inputs, and what evaluation compares."""
        return {
            "visual": self.visual_provenance(),
            "audio": {"name": self.config.audio, "dim": self.audio_dim, "recipe": self.audio_recipe},
            "text": self.texts.provenance(),
        }

    def splits(self) -> dict[str, list[QueryRecord]]:
        """The query records of every split of the dataset (a manifests/ name or a custom JSONL file)."""
        data_dir = Path(self.config.data_dir) if self.config.data_dir else None
        return dataset_splits(self.config.dataset, data_dir, lambda: video_durations(self.stores))

    def unreadable(self, video_id: str) -> str | None:
        """Why a video's queries cannot be read, the one rule of the datasets and of validation carving:
        "no visual track", "no <name> track" (one of several visual tracks read as one is missing), or "truncated"
        (its file was cut short: the tracks end early while the annotations' times do not); None when they can."""
        held = self.stores.feature_names(video_id) if video_id in self.stores else []
        missing = [name for name in self.config.visual_tracks if name not in held]
        if len(missing) == len(self.config.visual_tracks):
            return "no visual track"
        if missing:
            return f"no {missing[0]} track"
        if self.stores.metadata(video_id).get("truncated"):
            return "truncated"
        return None

    def readable_videos(self, records: Sequence[QueryRecord]) -> set[str]:
        """Videos of these records that a dataset reads (`unreadable` says none of them) with at least one query
        in the text store."""
        with_text = {r.video_id for r in records if self.texts.sentences.get(r.qid) == r.sentence}
        return {video_id for video_id in with_text if self.unreadable(video_id) is None}

    def evaluation_splits(self, names: Sequence[str], held_out: HeldOut | None) -> dict[str, list[QueryRecord]]:
        """The records of each named split, every name checked before anything is computed: a split of the
        dataset, or `train-val`, the held-out training videos of a run (re-carved by `held_out`; None: the
        checkpoint was not trained by img-train)."""
        available = self.splits()
        can_carve = held_out is not None and "train" in available
        chosen = {}
        for split in dict.fromkeys(names):
            if split == HELD_OUT_SPLIT and can_carve:
                assert held_out is not None
                name, _, chosen[split] = self.validation(available, held_out.fraction, held_out.seed)
                if name != HELD_OUT_SPLIT:
                    raise UsageError(
                        f"--split {split}: this run trained on all of train and selected on the dataset's own "
                        f"{name} split; use --split {name}"
                    )
            elif split in available:
                chosen[split] = available[split]
            elif split == HELD_OUT_SPLIT:
                raise UsageError(
                    f"--split {split}: the held-out training videos of a run; the checkpoint was not trained by "
                    "img-train (or its dataset has no train split)"
                )
            else:
                named = ", ".join([*sorted(available), *([HELD_OUT_SPLIT] if can_carve else [])])
                raise UsageError(f"--split {split}: {self.config.dataset} has the splits {named}")
        return chosen

    def validation(
        self, splits: dict[str, list[QueryRecord]], fraction: float, seed: int
    ) -> tuple[str, list[QueryRecord], list[QueryRecord]]:
        """(selection split name, training records, selection records) of a run that selects on validation data:
        a custom JSONL's own `val` split with all of train, or `train-val`, a seeded `fraction` of the training
        videos that have features and text (carve_validation)."""
        if self.config.dataset.endswith(".jsonl") and splits.get(OWN_VALIDATION_SPLIT):
            return OWN_VALIDATION_SPLIT, splits["train"], splits[OWN_VALIDATION_SPLIT]
        train = splits["train"]
        return (HELD_OUT_SPLIT, *carve_validation(train, fraction, seed, self.readable_videos(train)))

    def dataset(
        self,
        records: Sequence[QueryRecord],
        split: str,
        role: Role,
        max_pos_len: int,
        seed: int = 0,
        drop_audio: bool = False,
        audio_perturbation: AudioPerturbation | None = None,
    ) -> MomentDataset:
        return MomentDataset(self, records, split, role, max_pos_len, seed, drop_audio, audio_perturbation)

    def close(self) -> None:
        self.stores.close()
        self.texts.close()


class MomentDataset(Dataset):
    """The queries of one split with their labels; features are read (and aligned) when an item is fetched.

    An item key is an index, or (epoch, index) in training: the epoch seeds the saliency draw, so workers that
    live across epochs (persistent workers) need no notice of the epoch. `audio_perturbation` (evaluation): the
    audio of a seeded share of the queries read missing or noisy (img_model/data/audio_perturbation.py);
    `audio_missing` and `audio_noisy` say which."""

    def __init__(
        self,
        sources: DataSources,
        records: Sequence[QueryRecord],
        split: str,
        role: Role,
        max_pos_len: int,
        seed: int = 0,
        drop_audio: bool = False,
        audio_perturbation: AudioPerturbation | None = None,
    ) -> None:
        self.sources = sources
        self.split = split
        self.role = role
        self.max_pos_len = max_pos_len
        self.seed = seed
        self.drop_audio = drop_audio
        config = sources.config
        self.coverage = Coverage(split, queries=len(records))
        kept: list[QueryRecord] = []
        audio_flags: list[bool] = []
        lengths: list[int] = []
        video_info: dict[str, tuple[int, bool] | str] = {}
        for record in records:
            if record.video_id not in video_info:
                video_info[record.video_id] = self._video_info(record.video_id)
            info = video_info[record.video_id]
            if info == "no visual track":
                self.coverage.no_video.append(f"{record.qid} (video {record.video_id})")
                continue
            if info == "truncated":
                self.coverage.truncated.append(f"{record.qid} (video {record.video_id})")
                continue
            if isinstance(info, str):  # "no <name> track": one of the visual tracks read as one is missing
                self.coverage.missing_track.append(f"{record.qid} (video {record.video_id}: {info})")
                continue
            assert isinstance(info, tuple)
            if sources.texts.sentences.get(record.qid) != record.sentence:
                self.coverage.no_text.append(record.qid)
                continue
            length, has_audio = info
            has_audio = has_audio and not drop_audio
            if not has_audio and role == "train" and config.missing_audio == "drop":
                self.coverage.dropped_no_audio += 1
                continue
            self.coverage.zero_audio += not has_audio
            kept.append(record)
            audio_flags.append(has_audio)
            lengths.append(length)
        problems = self.coverage.missing_lines()
        if problems and config.strict:
            raise DataError(problems[0] + " (--strict)")
        for line in problems:
            log.warning("%s", line + "; left out (--strict makes this an error)")
        if not kept:
            raise DataError(f"{split}: none of the {len(records)} queries has features and text; nothing to read")
        self.records = kept
        self.has_audio = np.array(audio_flags, bool)
        self.audio_perturbation = audio_perturbation
        qids = [record.qid for record in kept]
        self.audio_missing = audio_perturbation.missing(qids) & self.has_audio if audio_perturbation else None
        if self.audio_missing is not None:
            self.coverage.zero_audio += int(self.audio_missing.sum())
            self.has_audio &= ~self.audio_missing
        self.audio_noisy = audio_perturbation.noisy(qids) & self.has_audio if audio_perturbation else None
        self.lengths = np.array(lengths, np.int64)
        starts = np.array([r.start for r in kept])
        ends = np.array([r.end for r in kept])
        durations = np.array([r.duration for r in kept])
        self.start_index, self.end_index = time_to_index(starts, ends, self.lengths, durations)
        sources.texts.load(r.qid for r in kept)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None
        if config.cache_features:
            self.cache_features()

    def _video_info(self, video_id: str) -> tuple[int, bool] | str:
        """(pooled length, has audio features) of a video, or why it is left out: "no visual track", or
        "truncated" (its file was cut short: the tracks end early while the annotations' times do not)."""
        stores, config = self.sources.stores, self.sources.config
        why = self.sources.unreadable(video_id)
        if why is not None:
            return why
        metadata = stores.metadata(video_id)
        length = aligned_length(stores.track_shape(video_id, config.visual_tracks[0])[0], self.max_pos_len)
        has_audio_track = config.audio in stores.feature_names(video_id)
        if not has_audio_track and metadata.get("has_audio", False):
            self.coverage.no_audio_track.append(video_id)
        return length, has_audio_track

    def cache_features(self) -> None:
        """Read and align every video's features into memory now (--cache-features)."""
        cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        videos = list(dict.fromkeys(r.video_id for r in self.records))
        for video_id in tqdm(videos, desc=f"caching {self.split} features", unit="video", leave=False, delay=2):
            cache[video_id] = self._read(video_id)
        self._cache = cache
        self.sources.stores.close()

    def _read(self, video_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        config = self.sources.config
        aligned = aligned_tracks(
            self.sources.stores, video_id, config.visual_tracks, config.audio, self.max_pos_len, config.align
        )
        return aligned.visual, aligned.audio

    def __len__(self) -> int:
        return len(self.records)

    def qids_sha256(self) -> str:
        """sha256 of the query ids in order (the order is part of the data: batches index into it)."""
        return hashlib.sha256("\n".join(record.qid for record in self.records).encode()).hexdigest()

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        record = self.records[index]
        video, audio = self._cache[record.video_id] if self._cache is not None else self._read(record.video_id)
        has_audio = bool(self.has_audio[index])
        if not has_audio or audio is None:
            audio = np.zeros((len(video), self.sources.audio_dim), np.float32)
        elif self.audio_noisy is not None and self.audio_noisy[index]:
            assert self.audio_perturbation is not None
            audio = self.audio_perturbation.add_noise(audio, record.qid)
        start_index, end_index = int(self.start_index[index]), int(self.end_index[index])
        sample = Sample(
            qid=record.qid,
            video=video,
            audio=audio,
            has_audio=has_audio,
            start_index=start_index,
            end_index=end_index,
            start_time=record.start,
            end_time=record.end,
            duration=record.duration,
        )
        texts, words = self.sources.texts, self.max_pos_len  # the first max_pos_len tokens, as the authors (§1.3)
        if texts.precomputed:
            sample.query_features = texts.features(record.qid)[:words]
        else:
            inputs = texts.glove(record.qid)
            sample.word_ids, sample.char_ids = inputs.word_ids[:words], inputs.char_ids[:words]
        if self.role == "train":
            rng = sample_rng(self.seed, epoch, index)
            positives, negatives = saliency_samples(start_index, end_index, int(self.lengths[index]), rng)
            sample.saliency_positives, sample.saliency_negatives = positives, negatives
        return sample


def carve_validation(
    records: Sequence[QueryRecord], fraction: float, seed: int, readable: Collection[str] | None = None
) -> tuple[list[QueryRecord], list[QueryRecord]]:
    """Split training records by video id: a seeded `fraction` of the videos (at least one) and all their queries
    become the validation split, so no video is in both. `readable`: the videos to carve from (those with features
    and text, DataSources.readable_videos); the others stay in the training records, where the dataset lists them
    as missing. A store covering part of the dataset thus still gives a validation split of `fraction` of what
    can be read."""
    videos = sorted({r.video_id for r in records if readable is None or r.video_id in readable})
    if len(videos) < 2:
        raise DataError(
            f"a validation split needs at least 2 training videos with features and text; there are {len(videos)}"
        )
    count = min(len(videos) - 1, max(1, round(fraction * len(videos))))
    chosen = set(np.random.default_rng(seed).permutation(len(videos))[:count].tolist())
    held_out = {videos[i] for i in chosen}
    train = [r for r in records if r.video_id not in held_out]
    validation = [r for r in records if r.video_id in held_out]
    return train, validation


def keep_video_fraction(records: Sequence[QueryRecord], fraction: float, seed: int) -> list[QueryRecord]:
    """The queries of a seeded `fraction` of the records' videos (by video id, at least one video): training on
    part of the data (the paper's Table 15). A fraction of 1 keeps every record."""
    if fraction >= 1.0:
        return list(records)
    videos = sorted({r.video_id for r in records})
    count = max(1, round(fraction * len(videos)))
    kept = {videos[i] for i in np.random.default_rng(seed).permutation(len(videos))[:count].tolist()}
    return [r for r in records if r.video_id in kept]
