"""Weightless stand-in models for engine tests, importable by worker processes (device workers, Ray actors and
tasks): MeanModel, and a build that kills the process it runs in once, to test that engines survive it."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.media.decode import AudioChunk, FrameBatch
from extract.models.base import ExtractorOptions, FeatureExtractor, FrameUnits, Units, Windower
from extract.models.presets import Preset
from extract.models.windows import AudioWindows


class MeanModel(FeatureExtractor):
    """A model without weights: one row per unit, its mean (the same bits whatever the batch holds). Silent audio
    (all zeros) makes it raise, standing in for a model that fails on some inputs."""

    def windower(self) -> Windower:
        return FrameUnits() if self.preset.frames is not None else AudioWindows(16000, 16000, 16000, True)

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        flat = inputs.reshape(len(inputs), -1).astype(np.float32)
        if self.preset.audio is not None and not np.abs(flat).max(axis=1).all():
            raise ValueError("silent input")
        return flat.mean(axis=1, keepdims=True)

    def recipe(self) -> dict:
        return self.preset.recipe()


def claim(marker: Path) -> bool:
    """True for the one process that creates `marker` first (atomic across processes)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillingWindower(Windower):
    """Kills the decoding process at its first chunk, once per marker: a worker lost in the middle of a video."""

    def __init__(self, inner: Windower, marker: Path) -> None:
        self.inner, self.marker = inner, marker

    def push(self, chunk: FrameBatch | AudioChunk) -> Units | None:
        if claim(self.marker):
            kill_this_process()
        return self.inner.push(chunk)

    def finish(self) -> Units | None:
        return self.inner.finish()


class _KillingModel(MeanModel):
    def __init__(self, preset: Preset, options: ExtractorOptions, build: KillOnce) -> None:
        super().__init__(preset, options)
        self.build = build

    def windower(self) -> Windower:
        inner = super().windower()
        return _KillingWindower(inner, self.build.folder / "decode") if self.build.decode else inner

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        if self.build.model and claim(self.build.folder / "model"):
            kill_this_process()
        return super().embed(inputs)


@dataclass(frozen=True)
class KillOnce:
    """A build of MeanModels that SIGKILL the process decoding (decode=True) or embedding (model=True) a video,
    once each (markers in `folder`), as a lost worker or actor would vanish."""

    folder: Path
    decode: bool = False
    model: bool = False

    def __call__(self, preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
        return _KillingModel(preset, options, self)


class _SlowModel(MeanModel):
    def __init__(self, preset: Preset, options: ExtractorOptions, seconds: float) -> None:
        super().__init__(preset, options)
        self.seconds = seconds

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        # as in a long call into C (a CUDA kernel, a BLAS routine), a signal takes effect only when it returns
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            time.sleep(self.seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return super().embed(inputs)


@dataclass(frozen=True)
class SlowOnce:
    """A build of MeanModels of which the first process to build one (marker in `folder`) is slow, `seconds` per
    batch during which signals wait, and the others are not: a run whose workers finish far apart, to signal or
    kill in between."""

    folder: Path
    seconds: float

    def __call__(self, preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
        if claim(self.folder / "slow"):
            return _SlowModel(preset, options, self.seconds)
        return MeanModel(preset, options)


class _KillingAfterCommitModel(MeanModel):
    def __init__(self, preset: Preset, options: ExtractorOptions, build: KillAfterCommit) -> None:
        super().__init__(preset, options)
        self.build = build

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        ours = [part for part in self.build.parts.glob(f"part-*-{os.getpid()}-*.h5")]
        if ours and claim(self.build.folder / "killed-after-commit"):
            kill_this_process()
        return super().embed(inputs)


@dataclass(frozen=True)
class KillAfterCommit:
    """A build of MeanModels that SIGKILL the first process to embed again after committing a part into the
    folder `parts` (once; marker in `folder`): a worker lost after some of its work reached the store."""

    folder: Path
    parts: Path

    def __call__(self, preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
        return _KillingAfterCommitModel(preset, options, self)


class _HangingWindower(Windower):
    """Hangs the decoding process at its first chunk, once per marker: a decoder stuck without an error."""

    def __init__(self, inner: Windower, marker: Path) -> None:
        self.inner, self.marker = inner, marker

    def push(self, chunk: FrameBatch | AudioChunk) -> Units | None:
        if claim(self.marker):
            time.sleep(3600)
        return self.inner.push(chunk)

    def finish(self) -> Units | None:
        return self.inner.finish()


class _HangingModel(MeanModel):
    def __init__(self, preset: Preset, options: ExtractorOptions, folder: Path) -> None:
        super().__init__(preset, options)
        self.folder = folder

    def windower(self) -> Windower:
        return _HangingWindower(super().windower(), self.folder / "hang")


@dataclass(frozen=True)
class HangOnce:
    """A build of MeanModels whose decoding hangs once (marker in `folder`), in whichever process decodes."""

    folder: Path

    def __call__(self, preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
        return _HangingModel(preset, options, self.folder)


class _LoadFailingModel(MeanModel):
    def __init__(self, preset: Preset, options: ExtractorOptions, build: KillThenFailToLoad) -> None:
        if not claim(build.folder / f"loaded-{preset.name}"):
            raise RuntimeError("the weights are gone")
        super().__init__(preset, options)
        self.build = build

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        if claim(self.build.folder / "model"):
            kill_this_process()
        return super().embed(inputs)


@dataclass(frozen=True)
class KillThenFailToLoad:
    """A build of MeanModels that loads once per preset (markers in `folder`); its process is SIGKILLed at its
    first embed, and every later load fails: a model actor that Ray restarts but that cannot load again."""

    folder: Path

    def __call__(self, preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
        return _LoadFailingModel(preset, options, self)


def _read_until_interrupted(folder: Path) -> ReadSlowly:
    """Unpickling a ReadSlowly, in a Ray worker reading a task's arguments: announce it, then hold the read until
    Ray's interrupt (a gentle cancel) has reached this worker. Ray defers it while arguments are read, its handler
    meanwhile being the bound method of its DeferSigint; at most 60 s."""
    (folder / "reading").touch()
    deferring = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    deadline = time.monotonic() + 60
    while not getattr(deferring, "signal_received", False) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ReadSlowly(folder)


@dataclass(frozen=True)
class ReadSlowly:
    """A task argument whose reading in a Ray worker announces itself (`folder`/reading) and lasts until a cancel
    arrives: a task held while it reads its arguments, to be cancelled right there."""

    folder: Path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return _read_until_interrupted, (self.folder,)
