"""The run's stages and local engine in-process, on real decoded media, with a weightless stand-in model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core.errors import StoreLockedError
from extract.media.probe import StreamMetadata, probe
from extract.media.sources import scan_folder
from extract.models.base import ExtractorOptions, FeatureExtractor
from extract.models.presets import Preset, get_preset
from extract.run import ExtractionRun, RunConfig, RunStopped, stages
from extract.run.events import Failed, SourceDone, UnitsReady
from extract.run.plan import WorkItem
from extract.run.summary import RunSummary
from extract.store import FeatureStore, StoreWriter
from tests.broken_media import make_broken_audio_video, make_empty_audio_video
from tests.standin_models import MeanModel
from tests.videos import make_video

CPU = ExtractorOptions(torch.device("cpu"))
FRAMES = get_preset("clip").with_options(weights="mean-colour")
AUDIO = get_preset("vggish")


class CountingBuild:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, preset: Preset, options: ExtractorOptions) -> FeatureExtractor:
        self.calls += 1
        return MeanModel(preset, options)


def _run(folder: Path, out: Path, presets=(FRAMES, AUDIO), **config) -> ExtractionRun:
    config = {"progress": False, "batch_size": 4, **config}
    return ExtractionRun(scan_folder(folder), out, list(presets), CPU, RunConfig(**config), CountingBuild())


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engine") / "videos"
    make_video(folder / "a.mp4", seconds=2, size="160x120")
    make_video(folder / "b.mp4", seconds=3, size="160x120")
    make_video(folder / "quiet.mp4", seconds=2, size="160x120", silent=True)
    return folder


def test_run_twice_works_with_fresh_state_and_loads_models_once(videos: Path, tmp_path: Path) -> None:
    run = _run(videos, tmp_path / "f.h5", presets=(FRAMES,))
    first = run.run()
    result: dict = {}
    second = threading.Thread(target=lambda: result.update(summary=run.run()), daemon=True)
    second.start()
    second.join(timeout=120)
    assert not second.is_alive(), "the second run() hangs"
    assert (first.done, first.skipped) == (3, 0)
    assert (result["summary"].done, result["summary"].skipped) == (0, 3)
    assert run._build.calls == 1  # type: ignore[union-attr]


def test_models_load_only_after_the_store_lock(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    holder = StoreWriter(out, {})
    run = _run(videos, out)
    try:
        with pytest.raises(StoreLockedError):
            run.run()
    finally:
        holder.abandon()
    assert run._build.calls == 0  # type: ignore[union-attr]


def test_an_interrupt_commits_the_finished_videos_and_counts_them(videos: Path, tmp_path: Path) -> None:
    class InterruptedModel(MeanModel):
        calls = 0

        def embed(self, inputs: np.ndarray) -> np.ndarray:
            InterruptedModel.calls += 1
            if InterruptedModel.calls == 2:  # Ctrl-C while the second video is embedded
                raise KeyboardInterrupt
            return super().embed(inputs)

    out = tmp_path / "f.h5"
    config = RunConfig(progress=False, batch_size=2, workers=1, commit_every=100)
    run = ExtractionRun(scan_folder(videos), out, [FRAMES], CPU, config, InterruptedModel)
    with pytest.raises(RunStopped) as stopped:
        run.run()
    assert isinstance(stopped.value.cause, KeyboardInterrupt)
    summary = stopped.value.summary
    with FeatureStore(out) as store:
        assert store.video_ids() == ["a"] and summary.committed_videos == 1
    assert summary.committed() == "1 finished video was committed"


def test_a_model_error_fails_only_that_video_and_feature(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    summary = _run(videos, out).run()
    assert [(f.video_id, f.stage, f.features) for f in summary.failures] == [("quiet", "compute", ("vggish",))]
    with FeatureStore(out) as store:
        assert store.feature_names("quiet") == ["clip"]  # its frames are kept
        assert store.feature_names("a") == ["clip", "vggish"]
        assert store.failed_features("quiet") == {"vggish"}


def test_a_stalled_decoder_fails_its_video_and_the_run_goes_on(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_iter_frames = stages.iter_frames

    def hangs_on_b(stream, sampling, threads=0) -> Iterator:  # type: ignore[no-untyped-def]
        for chunk in real_iter_frames(stream, sampling, threads=threads):
            if Path(stream.path).name == "b.mp4":
                release.wait(60)  # a decoder that stops sending, without exiting
            yield chunk

    monkeypatch.setattr(stages, "iter_frames", hangs_on_b)
    out = tmp_path / "f.h5"
    try:
        summary = _run(videos, out, presets=(FRAMES,), workers=1, stall_seconds=1.0).run()
    finally:
        release.set()
    assert summary.done == 2
    (failure,) = summary.failures
    assert failure.video_id == "b" and "no decoding progress for 1 s" in failure.message
    with FeatureStore(out) as store:
        assert store.video_ids() == ["a", "quiet"] and store.failed_features("b") == {"clip"}


def _extractors() -> dict[str, FeatureExtractor]:
    return {"clip": MeanModel(FRAMES, CPU), "vggish": MeanModel(AUDIO, CPU)}


def test_sources_decode_only_what_the_missing_tracks_need(tmp_path: Path) -> None:
    stream = probe(make_video(tmp_path / "v.mp4", seconds=1, size="160x120"))
    stream = type(stream)(**{**stream.__dict__, "path": str(tmp_path / "gone.mp4")})  # decoding it would fail
    frames, audio = stages.FrameSource(_extractors()), stages.AudioSource(_extractors())
    assert list(frames(WorkItem("v", tmp_path / "gone.mp4", ("vggish",)), stream)) == []
    assert list(audio(WorkItem("v", tmp_path / "gone.mp4", ("clip",)), stream)) == []
    (failed,) = list(frames(WorkItem("v", tmp_path / "gone.mp4", ("clip", "vggish")), stream))
    assert isinstance(failed, Failed) and failed.record.features == ("clip",)  # it did try: the file is gone


def test_empty_and_broken_audio_streams_touch_only_the_audio_tracks(tmp_path: Path) -> None:
    audio = stages.AudioSource(_extractors())
    item = WorkItem("v", tmp_path, ("clip", "vggish"))
    empty = list(audio(item, probe(make_empty_audio_video(tmp_path / "empty.mkv"))))
    assert [type(e) for e in empty] == [SourceDone] and empty[0].audio_found is False
    broken = list(audio(item, probe(make_broken_audio_video(tmp_path / "broken.mkv"))))
    assert [type(e) for e in broken] == [Failed]
    assert broken[0].record.features == ("vggish",) and broken[0].record.stage == "audio"
    good = list(audio(item, probe(make_video(tmp_path / "good.mp4", seconds=2, size="160x120"))))
    assert isinstance(good[0], UnitsReady) and isinstance(good[-1], SourceDone) and good[-1].audio_found is True
    assert not any(isinstance(e, Failed) for e in good)


@pytest.mark.slow  # two passes at real time over a 4-s video
def test_a_slow_but_steady_decode_keeps_its_video(real_time_ffmpeg: Callable[[], None], tmp_path: Path) -> None:
    """--fps 0.1 fills a 32-frame chunk from 320 s of video: a decoder slower than real time sends no chunk for
    longer than the engine's stall limit while it reads steadily. Here a 4-s video decoded at real time with the
    limit at 1.5 s: its probe and its one chunk each take longer than that."""
    make_video(tmp_path / "videos" / "slow.mp4", seconds=4, size="160x120", audio=False)
    real_time_ffmpeg()
    frames = FRAMES.with_options(fps=4.0)  # 16 frames: one chunk, sent when the decode ends
    summary = _run(tmp_path / "videos", tmp_path / "f.h5", presets=(frames,), workers=1, stall_seconds=1.5).run()
    assert [f.message for f in summary.failures] == [] and summary.done == 1
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.track("slow", "clip").features.shape == (16, 1)


def test_a_crash_inside_a_stage_fails_its_video_and_the_queue_goes_on(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a stage (not a decode error, which the stage records itself) ends its worker thread: a
    replacement takes the rest of the queue, and the summary accounts for every video."""
    real_as_attrs = StreamMetadata.as_attrs

    def crashes_on_a(self: StreamMetadata) -> dict:
        if Path(self.path).name == "a.mp4":
            raise RuntimeError("injected bug")
        return real_as_attrs(self)

    monkeypatch.setattr(StreamMetadata, "as_attrs", crashes_on_a)
    out = tmp_path / "f.h5"
    summary = _run(videos, out, presets=(FRAMES,), workers=1).run()
    assert [(f.video_id, f.features) for f in summary.failures] == [("a", ("clip",))]
    assert "RuntimeError: injected bug" in summary.failures[0].message
    assert (summary.done, summary.skipped, len(summary.failures)) == (2, 0, 1)
    assert summary.lines()[0].startswith("summary: 2 done, 0 skipped (already in store), 1 failed,")
    with FeatureStore(out) as store:
        assert store.video_ids() == ["b", "quiet"] and store.failed_features("a") == {"clip"}


def test_a_full_disk_summary_says_what_finished_and_what_was_committed(
    videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    from extract.store import writer as store_module

    real_write_part = store_module.write_part
    written: list[int] = []

    def disk_fills_after_one_part(*args, **kwargs):  # type: ignore[no-untyped-def]
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(1)
        return real_write_part(*args, **kwargs)

    monkeypatch.setattr(store_module, "write_part", disk_fills_after_one_part)
    release = threading.Event()
    real_iter_frames = stages.iter_frames

    def last_video_waits(stream, sampling, threads=0) -> Iterator:  # type: ignore[no-untyped-def]
        if Path(stream.path).name == "quiet.mp4":
            release.wait(20)  # the first two finish and fill the disk before the third is decoded
        yield from real_iter_frames(stream, sampling, threads=threads)

    monkeypatch.setattr(stages, "iter_frames", last_video_waits)
    caplog.set_level("INFO", logger="img_vmr")
    try:
        with pytest.raises(RunStopped) as stopped:
            _run(videos, tmp_path / "f.h5", presets=(FRAMES,), workers=1, commit_every=1, stall_seconds=4).run()
    finally:
        release.set()
    summary = stopped.value.summary
    assert (summary.done, summary.committed_videos) == (2, 1)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary:")]
    assert line.startswith("summary: 2 finished, 1 committed (the run stopped before the rest was written), ")


class FailsAt8Fps(MeanModel):
    """A recipe that cannot work (standing in for a bad --fps): every video fails with it, not with another."""

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        if self.preset.frames is not None and self.preset.frames.fps == 8.0:
            raise ValueError("this recipe cannot work")
        return super().embed(inputs)


def test_failures_made_with_another_recipe_do_not_block_a_good_one(
    videos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "f.h5"

    def run(fps: float) -> RunSummary:
        config = RunConfig(progress=False, batch_size=4, workers=1)
        frames = FRAMES.with_options(fps=fps)
        return ExtractionRun(scan_folder(videos), out, [frames], CPU, config, FailsAt8Fps).run()

    bad = run(8.0)
    assert (bad.done, len(bad.failures)) == (0, 3)
    assert (run(8.0).skipped_failed, run(8.0).exit_code) == (3, 1)  # the same recipe: skipped (--retry-failed)
    caplog.set_level("INFO", logger="img_vmr")
    good = run(4.0)
    assert (good.done, good.skipped_failed, good.failures, good.exit_code) == (3, 0, [], 0)
    assert "3 videos failed before with another recipe (e.g. another --fps) and are tried again with this one" in (
        caplog.text
    )
    with FeatureStore(out) as store:
        assert store.failures() == [] and store.provenance("clip")["frames.fps"] == 4.0


def test_a_model_error_over_several_lines_is_recorded_in_one(videos: Path, tmp_path: Path) -> None:
    class MultiLineError(MeanModel):
        def embed(self, inputs: np.ndarray) -> np.ndarray:
            raise RuntimeError("shapes do not match:\n  expected [1, 3]\n  got [1, 4]")

    out = tmp_path / "f.h5"
    config = RunConfig(progress=False, batch_size=4, workers=1)
    summary = ExtractionRun(scan_folder(videos), out, [FRAMES], CPU, config, MultiLineError).run()
    assert len(summary.failures) == 3
    for failure in summary.failures:
        assert failure.message.endswith(".mp4: RuntimeError: shapes do not match: expected [1, 3] got [1, 4]")
    with FeatureStore(out) as store:
        assert all("\n" not in failure.message for failure in store.failures())
