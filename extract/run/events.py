"""What the per-video stages emit, as plain data: an engine moves these between workers and the model.

For one work item the sources emit `Probed` once, then `UnitsReady` for each piece of model input, then one
`SourceDone` per group of features they served, or a `Failed` for the features they could not serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from extract.media.probe import StreamMetadata
from extract.models.base import Units
from extract.run.plan import WorkItem
from extract.store import FailureRecord


@dataclass
class Probed:
    item: WorkItem
    stream: StreamMetadata
    metadata: dict[str, Any]  # what the store records about the video (stream facts, source path, truncated)


@dataclass
class UnitsReady:
    item: WorkItem
    feature: str
    units: Units


@dataclass
class SourceDone:
    """A source has emitted every unit of these features (none at all for audio of a silent video)."""

    item: WorkItem
    features: tuple[str, ...]
    decoders: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    audio_found: bool | None = None  # audio sources: whether the audio stream held any sample


@dataclass
class Failed:
    record: FailureRecord  # record.features: the tracks of this video that failed


@dataclass
class Embedded:
    """Rows of one video's units from a batch: rows[i] (one row, or several for I3D) covers units.spans[i]."""

    item: WorkItem
    feature: str
    units: Units
    rows: np.ndarray


Event = Probed | UnitsReady | SourceDone | Failed
