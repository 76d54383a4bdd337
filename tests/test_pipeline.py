"""img-pipeline: a recipe from raw videos to evaluated models through the project's own commands, skipping every
stage whose output is complete."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from extract.store import FeatureStore, StoreWriter, Track, VideoRecord
from pipelines.cli import main as pipeline_command
from pipelines.pipeline_stages import ExtractStage
from pipelines.recipes import RECIPES
from tests.conftest import run_cli
from tests.img_cli import TINY_CONFIG
from tests.test_text_glove import shared_glove_6b
from tests.videos import make_video

SENTENCES = (
    "a person opens the door",
    "someone closes the window",
    "the man drinks a glass of water",
    "a woman sits down on the sofa",
)
STAGES = ("manifest", "extract", "text", "train", "eval queries")


def run_pipeline(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """img-pipeline as a user runs it (a real subprocess), offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    installed = Path(sys.executable).parent / "img-pipeline"
    entry = [str(installed)] if installed.exists() else [sys.executable, "-m", "pipelines.cli"]
    return subprocess.run([*entry, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def my_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 4-s videos made with ffmpeg (stereo 48 kHz sound, 29.97 fps), two queries each: four training videos,
    two test videos, in the custom JSONL format; and the tiny training config."""
    folder = tmp_path_factory.mktemp("my-dataset")
    rng = np.random.default_rng(0)
    rows = []
    for number in range(6):
        make_video(
            folder / "videos" / f"clip{number}.mp4",
            seconds=4.0,
            size="96x64",
            rate=30,
            channels=2,
            audio_rate=48000,
            extra=("-r", "30000/1001"),
        )
        for query in range(2):
            start = round(float(rng.uniform(0, 2.0)), 2)
            split = "train" if number < 4 else "test"
            rows.append(
                {
                    "video_id": f"clip{number}",
                    "start": start,
                    "end": round(start + 1.5, 2),
                    "query": SENTENCES[(number + query) % 4],
                    "split": split,
                }
            )
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "tiny.toml").write_text(TINY_CONFIG)
    return folder


def _pipeline_args(data: Path, work: Path, tiny_clip: Path, weights: Path, glove: Path) -> list[str | Path]:
    return [
        data / "queries.jsonl",
        "--videos",
        data / "videos",
        "--work",
        work,
        "--visual",
        "clip",
        "--clip-model",
        tiny_clip,
        "--audio",
        "vggish",
        "--weights-dir",
        weights,
        "--trust-weights",
        "--glove",
        glove,
        "--glove-cache",
        work.parent / "glove-cache",
        "--config",
        data / "tiny.toml",
        "--device",
        "cpu",
        "--no-progress",
    ]


@pytest.mark.slow
def test_a_custom_recipe_runs_end_to_end_then_a_second_run_skips_every_stage(
    my_dataset: Path, tiny_clip: Path, published_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    glove = shared_glove_6b(tmp_path_factory)[0]
    work = tmp_path_factory.mktemp("run") / "work"
    args = _pipeline_args(my_dataset, work, tiny_clip, published_weights, glove)

    first = run_pipeline(*args)
    assert first.returncode == 0, first.stderr[-4000:]
    for number, stage in enumerate(STAGES, start=1):
        assert f"[{number}/5] {stage}: running" in first.stderr
    mine = work / "queries"  # the folder of the training dataset (your .jsonl file's name)
    report = json.loads((mine / "eval" / "queries.json").read_text())
    assert (
        report["queries"] == 4 and report["split"] == "test" and set(report["branches"]) == {"fused", "visual", "audio"}
    )
    assert len((mine / "eval" / "queries.predictions.jsonl").read_text().splitlines()) == 4
    assert "queries test, 4 queries (fused branch" in first.stdout and "this run" in first.stdout
    with open(mine / "run" / "config.toml", "rb") as handle:
        trained = tomllib.load(handle)
    assert trained["train"]["epochs"] == 2 and trained["data"]["visual"] == "clip"
    assert trained["data"]["audio"] == "vggish" and trained["model"]["dim"] == 16
    outputs = sorted(p for p in work.rglob("*") if p.is_file() and p.name != "pipeline.log")
    stamps = {p: p.stat().st_mtime_ns for p in outputs}

    second = run_pipeline(*args)
    assert second.returncode == 0, second.stderr[-4000:]
    for number, stage in enumerate(STAGES, start=1):
        assert f"[{number}/5] {stage}: skipped" in second.stderr
    assert "running" not in second.stderr
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps  # nothing was written again
    assert second.stdout.startswith("queries test, 4 queries") and first.stdout.endswith(second.stdout)

    # A partial state: the evaluation report is gone, so only the evaluation runs again.
    (mine / "eval" / "queries.json").unlink()
    third = run_pipeline(*args)
    assert third.returncode == 0, third.stderr[-4000:]
    assert "[4/5] train: skipped" in third.stderr and "[5/5] eval queries: running" in third.stderr
    assert json.loads((mine / "eval" / "queries.json").read_text()) == report

    # Another query set about the same videos shares the work folder's features, and only them.
    other = work.parent / "other.jsonl"
    other.write_text((my_dataset / "queries.jsonl").read_text().replace("the door", "a door"))
    # The dry runs start no stage: in this process (the subprocess path is the runs above).
    planned = pipeline_in_process(other, *args[1:], "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert "[1/5] manifest: run" in planned.stdout and "[2/5] extract: run (no video list yet)" in planned.stdout
    listed = run_cli("manifest", other, "--videos", my_dataset / "videos", "--out", work / "other" / "videos.jsonl")
    assert listed.returncode == 0, listed.stderr  # what its manifest stage runs
    planned = pipeline_in_process(other, *args[1:], "--dry-run")
    assert "[2/5] extract: skip" in planned.stdout and "[3/5] text: run" in planned.stdout
    assert f"{work / 'other' / 'text.h5'}" in planned.stdout
    presets = pipeline_in_process(*args[:-1], "--audio", "panns", "--dry-run")
    assert presets.exit_code == 2 and "holds a pipeline of other inputs (audio: 'vggish' -> 'panns')" in presets.stderr


@pytest.mark.slow
def test_a_recipe_starts_from_released_features_instead_of_videos(tmp_path: Path) -> None:
    """The authors' layout: one .npy per video for the visual features, a VGGish.pickle for the audio."""
    rng = np.random.default_rng(1)
    (tmp_path / "i3d_video").mkdir()
    audio, rows = {}, []
    for number in range(6):
        np.save(tmp_path / "i3d_video" / f"v{number}.npy", rng.standard_normal((20, 32)).astype(np.float32))
        audio[f"v{number}"] = rng.integers(0, 256, (20, 128)).astype(np.float64)  # quantised values, float dtype
        for query in range(2):
            start = round(float(rng.uniform(0, 10)), 2)
            split = "train" if number < 4 else "test"
            rows.append(
                {
                    "video_id": f"v{number}",
                    "start": start,
                    "end": start + 5,
                    "duration": 20.0,
                    "query": SENTENCES[(number + query) % 4],
                    "split": split,
                }
            )
    (tmp_path / "VGGish.pickle").write_bytes(pickle.dumps(audio))
    (tmp_path / "released.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "tiny.toml").write_text(TINY_CONFIG)
    glove = tmp_path / "glove.txt"
    words = sorted({word for sentence in SENTENCES for word in sentence.split()})
    glove.write_text(
        "".join(f"{word} " + " ".join(f"{v:.3f}" for v in rng.standard_normal(8)) + "\n" for word in words)
    )
    work = tmp_path / "work"
    result = run_pipeline(
        tmp_path / "released.jsonl",
        "--released-visual",
        tmp_path / "i3d_video",
        "--released-audio",
        tmp_path / "VGGish.pickle",
        "--audio",
        "vggish-quantized",
        "--glove",
        glove,
        "--glove-cache",
        tmp_path / "cache",
        "--config",
        tmp_path / "tiny.toml",
        "--epochs",
        "1",
        "--work",
        work,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[1/5] import visual: running" in result.stderr and "[2/5] import audio: running" in result.stderr
    assert "--row-seconds 0.96" in result.stderr and "manifest" not in result.stderr
    with FeatureStore(work / "feats.h5") as store:
        assert store.track("v0", "released-vggish-quantized").features.dtype == np.uint8  # read back / 255
    report = json.loads((work / "released" / "eval" / "released.json").read_text())
    assert report["queries"] == 4 and report["coverage"]["no_video"] == 0


def pipeline_in_process(*args: str | Path) -> Result:
    """img-pipeline's command in this process (for quick checks that run no stage)."""
    return CliRunner().invoke(pipeline_command, [str(a) for a in args])


def test_dry_run_prints_every_stage_and_its_command_and_runs_nothing(my_dataset: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    glove = tmp_path / "glove.txt"
    glove.write_text("door 0.1 0.2\n")
    result = pipeline_in_process(
        my_dataset / "queries.jsonl",
        "--videos",
        my_dataset / "videos",
        "--work",
        work,
        "--glove",
        glove,
        "--epochs",
        "3",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("[")] == [
        f"[{n}/5] {stage}" for n, stage in enumerate(STAGES, start=1)
    ]
    commands = [line.strip() for line in lines if line.startswith("    ")]
    assert commands[0].startswith("img-extract manifest ") and "--videos" in commands[0]
    assert commands[1].startswith(
        f"img-extract {work / 'queries' / 'videos.jsonl'} --out {work / 'feats.h5'} "
        "--features i3d-charades-vslnet,panns"
    )
    assert commands[2].startswith("img-extract text --annotations ") and f"--embed glove:{glove}" in commands[2]
    assert commands[3].startswith("img-train --dataset ") and "--epochs 3" in commands[3]
    assert commands[4].startswith(f"img-eval {work / 'queries' / 'run' / 'best.pt'} --dataset ")
    assert "--json" in commands[4]
    assert not work.exists()  # a dry run writes nothing


def test_options_a_stage_still_needs_are_refused_before_anything_runs(my_dataset: Path, tmp_path: Path) -> None:
    mine = [my_dataset / "queries.jsonl", "--videos", my_dataset / "videos", "--work", tmp_path / "w"]
    no_glove = pipeline_in_process(*mine)
    assert no_glove.exit_code == 2 and no_glove.stderr.count("\n") == 1
    assert "text: give --glove PATH/glove.840B.300d.txt" in no_glove.stderr and "not on PyPI" in no_glove.stderr
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[train]\nepoch = 3\n")
    result = pipeline_in_process(*mine, "--glove", bad_config, "--config", bad_config)
    assert result.exit_code == 2 and "[train] has no setting 'epoch'" in result.stderr
    unknown = pipeline_in_process("charades", "--work", tmp_path / "w")
    assert unknown.exit_code == 2 and "unknown recipe 'charades'; use one of charades-sta" in unknown.stderr
    assert not (tmp_path / "w").exists()


def test_help_lists_the_recipes_and_teaches_the_flags() -> None:
    result = run_pipeline("--help")
    assert result.returncode == 0
    for name in RECIPES:
        assert name in result.stdout
    for flag in ("--glove", "--videos", "--work", "--released-visual", "--device", "--epochs", "--config", "--dry-run"):
        assert flag in result.stdout
    assert "not on PyPI" in result.stdout


def test_extraction_counts_as_done_when_every_video_has_its_tracks_or_a_failure(tmp_path: Path) -> None:
    from extract.store import FailureRecord

    manifest = tmp_path / "videos.jsonl"
    manifest.write_text("".join(json.dumps({"video_id": v, "path": f"/v/{v}.mp4"}) + "\n" for v in "abcd"))
    store = tmp_path / "feats.h5"
    track = Track(np.zeros((2, 4), np.float32), np.array([[0.0, 1.0], [1.0, 2.0]]))
    provenance = {"clip": {"recipe": {"r": 1}}, "vggish": {"recipe": {"r": 2}}}
    writer = StoreWriter(store, provenance)
    writer.add_video(VideoRecord("a", {"has_audio": True}, {"clip": track, "vggish": track}))
    writer.add_video(VideoRecord("b", {"has_audio": False}, {"clip": track}))  # no audio stream: nothing missing
    writer.add_video(VideoRecord("c", {"has_audio": True}, {"clip": track}))
    writer.add_failure(FailureRecord("c", "/v/c.mp4", "audio", "VideoDecodeError", "bad audio", ("vggish",)))
    writer.close()
    stage = ExtractStage(manifest, store, "clip", "vggish")
    status = stage.check()
    assert status.state == "partial" and status.detail.startswith("1 of 4 videos still to extract")
    writer = StoreWriter(store, provenance)
    writer.add_video(VideoRecord("d", {"has_audio": True}, {"clip": track, "vggish": track}))
    writer.close()
    status = stage.check()
    assert status.state == "done" and "for 4 videos, 1 with failed tracks" in status.detail


def test_a_named_dataset_extracts_the_videos_of_its_train_and_test_splits(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    glove = tmp_path / "glove.txt"
    glove.write_text("door 0.1 0.2\n")
    result = pipeline_in_process(
        "activitynet", "--videos", videos, "--glove", glove, "--work", tmp_path / "w", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    manifest = next(
        line.strip() for line in result.stdout.splitlines() if line.strip().startswith("img-extract manifest")
    )
    assert manifest.startswith("img-extract manifest activitynet --videos") and "--split train --split test" in manifest
    assert "[2/5] extract: run" in result.stdout and "--features i3d-anet-vslnet,vggish-quantized" in result.stdout


SIGTERM_SCRIPT = """
import sys
from pathlib import Path

from pipelines.pipeline import StageFailed, _run_command
from pipelines.pipeline_stages import Command

work = Path(sys.argv[1])
STAGE = (
    "import signal, sys, time\\n"
    "def stop(*args):\\n"
    "    open(sys.argv[1], 'w').write('committed')\\n"
    "    sys.exit(143)\\n"
    "signal.signal(signal.SIGTERM, stop)\\n"
    "print('ready', flush=True)\\n"
    "time.sleep(120)\\n"
)


class SlowStage(Command):
    def argv(self) -> list[str]:
        return [sys.executable, "-c", STAGE, str(work / "stage.out")]


try:
    _run_command(SlowStage("img-extract", ()), "extract", work / "pipeline.log")
except StageFailed as failure:
    print(failure.code, failure, flush=True)
"""


def test_sigterm_is_passed_on_to_the_running_stage_which_finishes_its_work(tmp_path: Path) -> None:
    import signal

    (tmp_path / "script.py").write_text(SIGTERM_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    pipeline = subprocess.Popen(
        [sys.executable, str(tmp_path / "script.py"), str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert pipeline.stdout is not None and pipeline.stdout.readline().strip() == "ready"  # the stage runs
    pipeline.send_signal(signal.SIGTERM)
    output, _ = pipeline.communicate(timeout=60)
    assert pipeline.returncode == 0 and output.startswith("143 extract: terminated (SIGTERM)"), output
    assert (tmp_path / "stage.out").read_text() == "committed"  # the stage itself got the signal and finished


SIGTERM_AS_THE_STAGE_STARTS = (
    """
import os, signal, subprocess, sys
from pathlib import Path

start = subprocess.Popen


def starting(*args, **kwargs):  # the stage's process exists, _run_command has not had it back yet
    process = start(*args, **kwargs)
    Path(sys.argv[1], "stage.pid").write_text(str(process.pid))
    os.kill(os.getpid(), signal.SIGTERM)
    return process


subprocess.Popen = starting
"""
    + SIGTERM_SCRIPT
)


def test_a_sigterm_while_the_stage_starts_stops_the_stage_too(tmp_path: Path) -> None:
    """The forwarding handler used to be installed after the stage's process was started: a SIGTERM in between
    ended the pipeline at once and left the stage running on its own. A fault point delivers it right there."""
    import signal

    (tmp_path / "script.py").write_text(SIGTERM_AS_THE_STAGE_STARTS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        pipeline = subprocess.run(
            [sys.executable, str(tmp_path / "script.py"), str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        last = pipeline.stdout.strip().splitlines()[-1:]  # (the stage may have said "ready" before it stopped)
        assert pipeline.returncode == 0 and last[0].startswith("143 extract: terminated (SIGTERM)"), (
            pipeline.returncode,
            pipeline.stdout,
            pipeline.stderr,
        )
        stage = int((tmp_path / "stage.pid").read_text())
        assert not Path(f"/proc/{stage}").exists()  # the stage was stopped and waited for, not left behind
    finally:
        if (tmp_path / "stage.pid").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int((tmp_path / "stage.pid").read_text()), signal.SIGKILL)


def test_the_final_table_puts_a_named_recipes_run_beside_the_papers_numbers(tmp_path: Path) -> None:
    """A named recipe's evaluation is printed beside its paper row (Table 7 for Charades-AudioMatter), with the note
    on model selection when the run selected on held-out training videos."""
    from types import SimpleNamespace

    from pipelines.pipeline import summary

    report = tmp_path / "eval" / "charades-am.json"
    report.parent.mkdir()
    fused = {"R1@0.3": 80.5, "R1@0.5": 70.25, "R1@0.7": 50.0, "mIoU": 60.125}
    report.write_text(json.dumps({"queries": 1196, "select_on": "val", "branches": {"fused": fused}}))
    plan = SimpleNamespace(recipe=RECIPES["charades-am"], reports={"charades-am": report})
    lines = summary(plan).splitlines()  # type: ignore[arg-type]
    assert lines[0].startswith("charades-am test, 1196 queries (fused branch; ")
    assert lines[2].split() == ["this", "run", "80.50", "70.25", "50.00", "60.12"]
    assert lines[3].split() == ["paper", "(Table", "7)", "82.74", "71.93", "54.27", "62.76"]
    assert "the paper selected on the test split: --select-on test" in lines[4]
    custom = SimpleNamespace(recipe=replace(RECIPES["charades-am"], paper={}), reports={"charades-am": report})
    assert "paper" not in summary(custom).replace("the paper selected", "")  # type: ignore[arg-type]


def test_a_run_is_finished_by_its_final_line_even_after_a_torn_one(tmp_path: Path) -> None:
    """A kill can tear metrics.jsonl's last line; the training stage's check read it as JSON and crashed."""
    from pipelines.pipeline_stages import run_finished

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    (run / "metrics.jsonl").write_text('{"kind": "eval", "step": 2}\n{"kind": "ev')
    assert not run_finished(run)
    (run / "metrics.jsonl").write_text('{"kind": "eval", "step": 2}\n{"kind": "final", "step": 4}\n')
    assert run_finished(run)
