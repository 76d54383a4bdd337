"""What the feature store holds, as the writer commits it and the reader gives it back: tracks, videos, failures."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Track:
    """One feature track of one video: rows [T, D] and the [T, 2] start/end seconds each row covers."""

    features: np.ndarray
    timestamps: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class VideoRecord:
    """A video as the writer commits it: its metadata and the tracks computed for it (possibly not all)."""

    video_id: str
    metadata: dict[str, Any]
    tracks: dict[str, Track]


@dataclass
class FailureRecord:
    """Features of a video that could not be extracted: which stage failed and the one-line reason.

    `features` names the tracks that failed; a later part holding one of them supersedes the failure for that
    track only. A record naming no feature stands for the whole video (superseded by any later record of it).
    `recipes` ({feature: recipe_id}) are the recipes the features failed with: a new record leaves it None and the
    writer stamps each feature with the recipe its part records; a record read back keeps what it was written with
    ("" for records written before recipes were recorded), also through a compaction.
    """

    video_id: str
    path: str
    stage: str
    error_type: str
    message: str
    features: tuple[str, ...] = ()
    time: float = field(default_factory=time.time)
    recipes: Mapping[str, str] | None = field(default=None, compare=False)

    def reason_attrs(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
            "time": self.time,
        }

    def as_attrs(self) -> dict[str, Any]:
        return {"video_id": self.video_id, **self.reason_attrs(), "features": ",".join(self.features)}


def recipe_id(recipe: Mapping[str, Any]) -> str:
    """A short, stable hash of a feature's recipe (everything that decides its numbers). Failure records carry it,
    so that a failure made with one recipe (a bad --fps) does not stop a run with another from trying again."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
