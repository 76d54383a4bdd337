"""IMG's datasets from the stores: queries (manifests/), video features (feature stores), text (text store).

Per query (img_spec.md §2.2): the visual track pooled to at most max_pos_len rows and the audio track aligned to
it (img_model/alignment.py, `img` or `time` rule), the word and character ids (or precomputed token features)
of the query's first max_pos_len tokens (§1.3 step 4), the start / end step labels of the authors' time-to-index
rule (§1.3, computed for the whole split in bounded memory), whether the video has audio, and in training the
saliency positives / negatives of §4.2, drawn from a generator seeded by (seed, epoch, query) so that any
worker, any resume, draws the same ones.

The lengths used for labels and decoding are those of the stored tracks (§7.18): the pooled visual length
min(T, max_pos_len), read from the track's shape. Nothing else is trusted for it.

Missing data never crashes a run: queries whose video has no visual features, whose video file was truncated when
it was extracted (its tracks end early, the annotation's times and duration do not), or whose text is not in the
text store, are left out and listed in one line; `strict=True` makes that an error. Videos without audio are dropped
from training (`missing_audio="drop"`, the authors' behaviour) or get a zero audio track with has_audio false
(`"zeros"`, always the case in evaluation, §7.17).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from extract.errors import UsageError
from extract.probe import stored_duration
from img_model.alignment import ALIGNMENT_RULES, AlignmentRule, aligned_length, aligned_tracks
from img_model.decoding import time_to_index
from img_model.errors import DataError, listed
from img_model.features import FeatureStores
from img_model.losses import SpanLabels
from img_model.query_text import QueryTexts
from manifests.records import QueryRecord

log = logging.getLogger("img_vmr.train")

MissingAudio = Literal["drop", "zeros"]
Role = Literal["train", "eval"]
SALIENCY_PAIRS = 2  # positives and negatives per query (§4.2)
HELD_OUT_SPLIT = "train-val"  # the validation split carved from the training videos (see carve_validation)
OWN_VALIDATION_SPLIT = "val"  # a custom JSONL's own validation split: selection uses it when present


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset's parts are and how they are put together. Paths are strings so the config round-trips
    through TOML; `features` lists one or more feature stores read as one (shards)."""

    dataset: str = ""  # a dataset name of manifests/ (charades-sta, charades-am, activitynet) or a custom .jsonl
    features: tuple[str, ...] = ()
    visual: str = ""
    audio: str = ""
    text: str = ""
    data_dir: str = ""  # annotation files (empty: $IMG_DATA_DIR or the cache)
    align: AlignmentRule = "img"
    missing_audio: MissingAudio = "drop"
    strict: bool = False
    cache_features: bool = False

    def __post_init__(self) -> None:
        if self.align not in ALIGNMENT_RULES:
            raise UsageError(f"align must be one of {', '.join(ALIGNMENT_RULES)}, not {self.align!r}")
        if self.missing_audio not in ("drop", "zeros"):
            raise UsageError(f"missing_audio must be 'drop' or 'zeros', not {self.missing_audio!r}")
        if not all(isinstance(store, str) and store for store in self.features):
            raise UsageError(f"features must be a list of feature store paths, not {list(self.features)!r}")


# --- saliency sampling (§4.2) ----------------------------------------------------------------------------------


def saliency_samples(
    start_index: int, end_index: int, length: int, rng: np.random.Generator, count: int = SALIENCY_PAIRS
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' get_saliency with a given generator: `count` distinct positives inside [s, e] ([s]*count when
    s = e) and `count` distinct negatives in [0, s) ∪ (e, length), or [0]*count when fewer exist (§7.10)."""
    start, end = min(start_index, end_index), end_index
    inside = np.arange(start, end + 1)
    positives = rng.choice(inside, count, replace=False) if start != end else np.full(count, start)
    outside = np.concatenate([np.arange(0, start), np.arange(end + 1, length)])
    negatives = rng.choice(outside, count, replace=False) if len(outside) >= count else np.zeros(count, np.int64)
    return positives.astype(np.int64), negatives.astype(np.int64)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one query's saliency draw in one epoch: the same in any process, on any resume."""
    return np.random.default_rng([seed, epoch, index])


# --- samples and batches -------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One query as the model reads it (numpy; `collate` pads a list of them into a Batch)."""

    qid: str
    video: np.ndarray  # [T, Dv] float32
    audio: np.ndarray  # [T, Da] float32 (zeros when has_audio is false)
    has_audio: bool
    start_index: int
    end_index: int
    start_time: float
    end_time: float
    duration: float
    word_ids: np.ndarray | None = None  # [L] int64
    char_ids: list[np.ndarray] | None = None
    query_features: np.ndarray | None = None  # [L, Dt] float32
    saliency_positives: np.ndarray | None = None  # [2] int64, training only
    saliency_negatives: np.ndarray | None = None


@dataclass
class Batch:
    """A padded batch (§2.2 step 7): tensors for the model and the loss, plus what evaluation needs."""

    qids: list[str]
    video: torch.Tensor  # (B, Lv, Dv), zero rows past each length
    audio: torch.Tensor  # (B, Lv, Da)
    video_mask: torch.Tensor  # (B, Lv) float, 1 on valid steps
    query_mask: torch.Tensor  # (B, Lq) float
    has_audio: torch.Tensor  # (B,) bool
    start_index: torch.Tensor  # (B,) int64
    end_index: torch.Tensor
    start_time: torch.Tensor  # (B,) float64 seconds, clipped to [0, duration]
    end_time: torch.Tensor
    duration: torch.Tensor  # (B,) float64
    word_ids: torch.Tensor | None = None  # (B, Lq) int64, 0 = padding
    char_ids: torch.Tensor | None = None  # (B, Lq, Lc) int64
    query_features: torch.Tensor | None = None  # (B, Lq, Dt)
    saliency_positives: torch.Tensor | None = None  # (B, 2) int64
    saliency_negatives: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.video_mask.sum(dim=1).long()

    def to(self, device: torch.device) -> Batch:
        moved: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            moved[name] = value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        return Batch(**{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {
            "video": self.video,
            "audio": self.audio,
            "video_mask": self.video_mask,
            "query_mask": self.query_mask,
        }
        if self.query_features is not None:
            return inputs | {"query_features": self.query_features}
        assert self.word_ids is not None and self.char_ids is not None
        return inputs | {"word_ids": self.word_ids, "char_ids": self.char_ids}

    def padded_sizes(self) -> tuple[int, int, int]:
        """(video steps, query steps, characters per word; 0 for query features): the padding of this batch."""
        chars = self.char_ids.shape[2] if self.char_ids is not None else 0
        return self.video.shape[1], self.query_mask.shape[1], chars

    def padded_to(self, video_steps: int, query_steps: int, chars: int) -> Batch:
        """This batch padded further, as `collate` pads a batch whose longest video, query and word are these
        (a distributed run pads each process's part to the whole batch's sizes: padded steps change outputs,
        §7.12)."""
        if (video_steps, query_steps, chars) == self.padded_sizes():
            return self

        def pad(tensor: torch.Tensor | None, *sizes: int) -> torch.Tensor | None:
            """Zeros after the end of dimensions 1, 2, ... up to `sizes`."""
            if tensor is None:
                return None
            extra = [size - tensor.shape[dim] for dim, size in enumerate(sizes, start=1)]
            extra += [0] * (tensor.dim() - 1 - len(extra))
            return F.pad(tensor, [width for after in reversed(extra) for width in (0, after)])

        return replace(
            self,
            video=pad(self.video, video_steps),
            audio=pad(self.audio, video_steps),
            video_mask=pad(self.video_mask, video_steps),
            query_mask=pad(self.query_mask, query_steps),
            word_ids=pad(self.word_ids, query_steps),
            char_ids=pad(self.char_ids, query_steps, chars),
            query_features=pad(self.query_features, query_steps),
        )

    def labels(self) -> SpanLabels:
        if self.saliency_positives is None or self.saliency_negatives is None:
            raise ValueError("an evaluation batch has no saliency samples; build the dataset with role='train'")
        return SpanLabels(self.start_index, self.end_index, self.saliency_positives, self.saliency_negatives)


def _pad_rows(arrays: Sequence[np.ndarray], length: int) -> torch.Tensor:
    out = np.zeros((len(arrays), length, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for row, array in enumerate(arrays):
        out[row, : len(array)] = array
    return torch.from_numpy(out)


def collate(samples: Sequence[Sample]) -> Batch:
    """Pad as the authors' collate does (§2.2 step 7): video and audio with zero rows to the longest video;
    words with 0 to the longest query; characters to (most words, longest word) of the batch."""
    longest = max(len(s.video) for s in samples)
    lengths = torch.tensor([len(s.video) for s in samples])
    video_mask = (torch.arange(longest) < lengths.unsqueeze(1)).float()
    fields: dict[str, Any] = {}
    if samples[0].query_features is not None:
        features = [s.query_features for s in samples]
        words = max(len(f) for f in features)
        fields["query_features"] = _pad_rows(features, words)
        query_lengths = torch.tensor([len(f) for f in features])
        query_mask = (torch.arange(words) < query_lengths.unsqueeze(1)).float()
    else:
        word_ids = _pad_rows([s.word_ids for s in samples], max(len(s.word_ids) for s in samples))
        chars = [c for s in samples for c in s.char_ids]
        char_ids = np.zeros((len(samples), word_ids.shape[1], max((len(c) for c in chars), default=1)), np.int64)
        for row, sample in enumerate(samples):
            for column, word in enumerate(sample.char_ids):
                char_ids[row, column, : len(word)] = word
        fields |= {"word_ids": word_ids, "char_ids": torch.from_numpy(char_ids)}
        query_mask = (word_ids != 0).float()
    if samples[0].saliency_positives is not None:
        fields["saliency_positives"] = torch.from_numpy(np.stack([s.saliency_positives for s in samples]))
        fields["saliency_negatives"] = torch.from_numpy(np.stack([s.saliency_negatives for s in samples]))
    return Batch(
        qids=[s.qid for s in samples],
        video=_pad_rows([s.video for s in samples], longest),
        audio=_pad_rows([s.audio for s in samples], longest),
        video_mask=video_mask,
        query_mask=query_mask,
        has_audio=torch.tensor([s.has_audio for s in samples]),
        start_index=torch.tensor([s.start_index for s in samples], dtype=torch.int64),
        end_index=torch.tensor([s.end_index for s in samples], dtype=torch.int64),
        start_time=torch.tensor([s.start_time for s in samples], dtype=torch.float64),
        end_time=torch.tensor([s.end_time for s in samples], dtype=torch.float64),
        duration=torch.tensor([s.duration for s in samples], dtype=torch.float64),
        **fields,
    )


# --- what was left out ---------------------------------------------------------------------------------------


@dataclass
class Coverage:
    """Which queries of a split made it into the dataset, and why the others did not."""

    split: str
    queries: int = 0
    no_video: list[str] = field(default_factory=list)  # qids whose video has no visual features
    truncated: list[str] = field(default_factory=list)  # qids whose video file was cut short when it was extracted
    no_text: list[str] = field(default_factory=list)  # qids missing from the text store or with another sentence
    no_audio_track: list[str] = field(default_factory=list)  # videos said to have audio, but no audio track
    dropped_no_audio: int = 0  # training queries dropped for a video without audio (missing_audio="drop")
    zero_audio: int = 0  # queries read with a zero audio track

    @property
    def kept(self) -> int:
        return self.queries - len(self.no_video) - len(self.truncated) - len(self.no_text) - self.dropped_no_audio

    def missing_lines(self) -> list[str]:
        lines = []
        if self.no_video:
            lines.append(f"{len(self.no_video)} of {self.queries} {self.split} queries have no visual features: "
                         f"{listed(self.no_video)}")  # fmt: skip
        if self.truncated:
            lines.append(f"{len(self.truncated)} of {self.queries} {self.split} queries are on videos whose file was "
                         "truncated when extracted (their features stop early, the annotations' times do not; "
                         f"re-download them, then img-extract --retry-failed): {listed(self.truncated)}")  # fmt: skip
        if self.no_text:
            lines.append(f"{len(self.no_text)} of {self.queries} {self.split} queries are not in the text store "
                         f"(or with another sentence): {listed(self.no_text)}")  # fmt: skip
        if self.no_audio_track:
            lines.append(f"{len(self.no_audio_track)} {self.split} videos have audio but no audio features: "
                         f"{listed(self.no_audio_track)}")  # fmt: skip
        return lines

    def summary(self) -> str:
        parts = [f"{self.split}: {self.kept} of {self.queries} queries"]
        if self.dropped_no_audio:
            parts.append(f"{self.dropped_no_audio} dropped (video without audio)")
        if self.zero_audio:
            parts.append(f"{self.zero_audio} with a zero audio track")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "queries": self.queries,
            "kept": self.kept,
            "no_video": len(self.no_video),
            "truncated": len(self.truncated),
            "no_text": len(self.no_text),
            "no_audio_track": len(self.no_audio_track),
            "dropped_no_audio": self.dropped_no_audio,
            "zero_audio": self.zero_audio,
        }


# --- the sources and the dataset -----------------------------------------------------------------------------


class DataSources:
    """The feature stores, the text store and the query records of one DataConfig, opened once."""

    def __init__(self, config: DataConfig) -> None:
        for name, value in (("dataset", config.dataset), ("visual", config.visual), ("audio", config.audio),
                            ("text", config.text)):  # fmt: skip
            if not value:
                raise UsageError(f"no --{name} given")
        self.config = config
        self.stores = FeatureStores(config.features)
        self.texts = QueryTexts(config.text)
        self.visual_recipe = self.stores.recipe(config.visual)
        self.audio_recipe = self.stores.recipe(config.audio)
        self.video_dim = self._feature_dim(config.visual)
        self.audio_dim = self._feature_dim(config.audio)

    def _feature_dim(self, feature: str) -> int:
        for video_id in self.stores.video_ids():
            if feature in self.stores.feature_names(video_id):
                return int(self.stores.track_shape(video_id, feature)[1])
        raise UsageError(f"no video in {', '.join(map(str, self.stores.paths))} has a {feature!r} track")

    def provenance(self) -> dict[str, Any]:
        """What the checkpoint records about its inputs, and what evaluation compares."""
        return {
            "visual": {"name": self.config.visual, "dim": self.video_dim, "recipe": self.visual_recipe},
            "audio": {"name": self.config.audio, "dim": self.audio_dim, "recipe": self.audio_recipe},
            "text": self.texts.provenance(),
        }

    def splits(self) -> dict[str, list[QueryRecord]]:
        """The query records of every split of the dataset (a manifests/ name or a custom JSONL file)."""
        from manifests.custom import read_custom
        from manifests.registry import DATASETS, load_dataset

        name = self.config.dataset
        if name in DATASETS:
            data_dir = Path(self.config.data_dir) if self.config.data_dir else None
            records = load_dataset(name, data_dir).records
        elif name.endswith(".jsonl"):
            stored = {video_id: stored_duration(self.stores.metadata(video_id)) for video_id in self.stores.video_ids()}
            durations = {video_id: duration for video_id, duration in stored.items() if duration is not None}
            records, _ = read_custom(Path(name), durations)
        else:
            raise UsageError(f"--dataset {name!r}: use one of {', '.join(DATASETS)} or a .jsonl file of your queries")
        splits: dict[str, list[QueryRecord]] = {}
        for record in records:
            splits.setdefault(record.split, []).append(record)
        return splits

    def readable_videos(self, records: Sequence[QueryRecord]) -> set[str]:
        """Videos of these records with a visual track in the stores and at least one query in the text store."""
        stores, visual, sentences = self.stores, self.config.visual, self.texts.sentences
        with_text = {r.video_id for r in records if sentences.get(r.qid) == r.sentence}
        return {video_id for video_id in with_text if video_id in stores and visual in stores.feature_names(video_id)}

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
    ) -> MomentDataset:
        return MomentDataset(self, records, split, role, max_pos_len, seed, drop_audio)

    def close(self) -> None:
        self.stores.close()
        self.texts.close()


class MomentDataset(Dataset):
    """The queries of one split with their labels; features are read (and aligned) when an item is fetched.

    An item key is an index, or (epoch, index) in training: the epoch seeds the saliency draw, so workers that
    live across epochs (persistent workers) need no notice of the epoch."""

    def __init__(
        self,
        sources: DataSources,
        records: Sequence[QueryRecord],
        split: str,
        role: Role,
        max_pos_len: int,
        seed: int = 0,
        drop_audio: bool = False,
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
        if video_id not in stores or config.visual not in stores.feature_names(video_id):
            return "no visual track"
        metadata = stores.metadata(video_id)
        if metadata.get("truncated"):
            return "truncated"
        length = aligned_length(stores.track_shape(video_id, config.visual)[0], self.max_pos_len)
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
        aligned = aligned_tracks(self.sources.stores, video_id, config.visual, config.audio, self.max_pos_len,
                                 config.align)  # fmt: skip
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
        raise DataError(f"a validation split needs at least 2 training videos with features and text; there are "
                        f"{len(videos)}")  # fmt: skip
    count = min(len(videos) - 1, max(1, round(fraction * len(videos))))
    chosen = set(np.random.default_rng(seed).permutation(len(videos))[:count].tolist())
    held_out = {videos[i] for i in chosen}
    train = [r for r in records if r.video_id not in held_out]
    validation = [r for r in records if r.video_id in held_out]
    return train, validation
