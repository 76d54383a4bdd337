"""What the Ray engine runs inside the cluster: one decode task per video, and model actors.

    decode_video   a Ray generator task (1 CPU): Probe, FrameSource, AudioSource of one work item (the stages of
                   extract/run/stages.py). Each event is yielded as two objects: its payload (the units' input
                   array, or None) and then the event itself with the payload left out. The driver reads only
                   the small second object; the arrays stay in the object store of the node that decoded them
                   until a model actor reads them, so decoded frames never pass through the driver.
    ModelWorker    an actor holding the loaded models (one load per actor): the Embed stage on a batch whose
                   inputs are RemoteRows (slices of those arrays), returning rows and failure records only.

Errors of a video never escape as exceptions: the stages turn them into failure records, and anything else a
decode task meets becomes a failure record of that video too. What does escape (a worker process killed, a node
lost, an object lost with it) is the driver's to handle (engine_ray.py). Nothing here imports ray at module
level: the driver wraps these with ray.remote, so the local engine never needs Ray installed.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from extract.core.errors import WorkerLostError
from extract.media.decode import AudioSampling, FrameSampling
from extract.models.base import ExtractorOptions, FeatureExtractor, Units, Windower
from extract.models.presets import Preset
from extract.run.batcher import Piece, UnitBatch
from extract.run.events import Embedded, Failed, UnitsReady
from extract.run.plan import WorkItem
from extract.run.provenance import load_models
from extract.run.stages import AudioSource, Embed, FrameSource, Probe, failure, video_events

log = logging.getLogger(f"img_vmr.{__name__}")


class DecodeView:
    """What the decode side needs of a loaded extractor (its samplings and a fresh windower), without its weights:
    the driver ships these to the decode tasks, which never load a model."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.name = extractor.name
        self.frame_sampling: FrameSampling | None = extractor.frame_sampling
        self.audio_sampling: AudioSampling | None = extractor.audio_sampling
        self._windower = extractor.windower()  # untouched; every video gets a copy

    def windower(self) -> Windower:
        return copy.deepcopy(self._windower)


@dataclass(frozen=True)
class RemoteRows:
    """Rows [start, stop) of an array held in Ray's object store, standing in for Units.inputs on the driver.

    The Batcher only takes its length and slices it, so batches are formed without fetching any frame.
    """

    ref: Any  # ray.ObjectRef of an np.ndarray
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: slice) -> RemoteRows:
        begin, end, step = key.indices(len(self))
        if step != 1:
            raise ValueError("RemoteRows slices are contiguous")
        return RemoteRows(self.ref, self.start + begin, self.start + max(begin, end))


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def placeholder(count: int) -> np.ndarray:
    """Zero-byte inputs of `count` units: Units keeps its length and spans without the data."""
    return np.empty((count, 0), np.uint8)


def decode_video(item: WorkItem, views: dict[str, DecodeView]) -> Iterator[Any]:
    """The events of one video as (payload, event) pairs of yields; see the module doc."""
    try:
        for event in video_events(item, Probe(), FrameSource(views, threads=1), AudioSource(views)):
            if isinstance(event, UnitsReady):
                yield event.units.inputs
                yield UnitsReady(event.item, event.feature, Units(placeholder(len(event.units)), event.units.spans))
            else:
                yield None
                yield event
    except Exception as error:  # a bug in a stage: this video fails, the others go on
        log.debug("decoding %s failed", item.video_id, exc_info=True)
        yield None
        yield Failed(failure(item, item.features, "decode", error))


@dataclass
class Description:
    """What a model actor tells the driver once its models are loaded."""

    provenance: dict[str, dict[str, Any]]
    views: dict[str, DecodeView]
    max_batch: dict[str, int | None]
    device: str
    pid: int


class ModelWorker:
    """A model actor: the presets' models loaded once on this actor's device, embedding batches.

    Construction never raises (an actor whose constructor raises is restarted by Ray, loading again and again):
    the error is kept and `describe` raises it, so the driver reports the real reason in one line.
    """

    def __init__(
        self,
        presets: Sequence[Preset],
        options: ExtractorOptions,
        device_spec: str,
        build: Callable[[Preset, ExtractorOptions], FeatureExtractor],
    ) -> None:
        self.error: BaseException | None = None
        self.extractors: list[FeatureExtractor] = []
        self.provenance: dict[str, dict[str, Any]] = {}
        try:
            # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so it is cuda:0 here.
            self.extractors, self.provenance = load_models(presets, options, build, device_spec)
        except Exception as error:
            self.error = error
        self.embed_stage = Embed({extractor.name: extractor for extractor in self.extractors})

    def describe(self) -> Description:
        if self.error is not None:
            raise self.error  # the real reason (e.g. MissingWeightsError) in its own words
        return Description(
            self.provenance,
            {extractor.name: DecodeView(extractor) for extractor in self.extractors},
            {extractor.name: extractor.max_batch for extractor in self.extractors},
            str(self.extractors[0].options.device) if self.extractors else "cpu",
            os.getpid(),
        )

    def _raise_load_error(self) -> None:
        """A restarted actor may fail to load where the first one did not: its batches fail naming why, not with
        a KeyError of a model it does not hold."""
        if self.error is not None:
            raise WorkerLostError(f"the model actor could not load its models ({one_line(self.error)})")

    def embed(self, batch: UnitBatch[WorkItem]) -> list[Embedded | Failed]:
        """Embedded rows (without their inputs) and failure records of the batch's videos."""
        import ray

        self._raise_load_error()
        refs = list({piece.units.inputs.ref: None for piece in batch.pieces})
        arrays = dict(zip(refs, ray.get(refs), strict=True))
        pieces = []
        for piece in batch.pieces:
            rows: RemoteRows = piece.units.inputs
            pieces.append(Piece(piece.key, Units(arrays[rows.ref][rows.start : rows.stop], piece.units.spans)))
        results = self.embed_stage(UnitBatch(batch.feature, pieces))
        return [
            Embedded(r.item, r.feature, Units(placeholder(len(r.units)), r.units.spans), r.rows)
            if isinstance(r, Embedded)
            else r
            for r in results
        ]

    def pid(self) -> int:
        return os.getpid()
