"""A query as the model reads it (Sample), and batches of them padded as the authors' loader pads them (Batch,
collate), with the saliency draw of §4.2 seeded per (seed, epoch, query)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from img_model.network.losses import SpanLabels

SALIENCY_PAIRS = 2  # positives and negatives per query (§4.2)


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
