"""img-predict batch through the real CLI: a manifest of (video, query[, start, end]) rows on ffmpeg-made videos
(the real run's) and a file that is no video, answered by the real run's checkpoint into one JSONL and one page."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from extract.core.errors import UsageError
from img_model.predict.manifest import BatchRow, read_manifest
from img_model.predict.predictor import Predictor, PredictorOptions
from tests.img_cli import run_img_predict
from tests.real_run import RealRun

pytestmark = pytest.mark.slow  # the session's real_run

QUERIES = ("a person waves a hand", "someone knocks on the door")


@pytest.fixture(scope="module")
def batch(real_run: RealRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """img-predict batch on a JSONL manifest: two queries on a real video (one with its true span), a query of
    unknown words only, and a row whose file is not a video; with --drop-audio."""
    folder = tmp_path_factory.mktemp("batch")
    (folder / "videos").mkdir()
    (folder / "videos" / "broken.mp4").write_bytes(b"this is not a video\n" * 50)
    video = str(real_run.videos / "clip4.mp4")  # absolute: kept as the manifest gives it
    rows = [
        {"video": video, "query": QUERIES[0], "start": 1.0, "end": 4.5},
        {"video": "videos/broken.mp4", "query": QUERIES[0]},
        {"video": video, "query": "xqzzv qqzxv"},
        {"video": video, "query": QUERIES[1], "video_id": "kitchen"},
    ]
    manifest = folder / "rows.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cache, out = folder / "cache", folder / "out"
    options = [
        "--cache",
        str(cache),
        "--weights-dir",
        str(real_run.weights_dir),
        "--clip-model",
        str(real_run.clip_model),
    ]
    result = run_img_predict(
        "batch", "--checkpoint", real_run.checkpoint, *options, "--threads", "1", "--manifest", manifest, "--out", out,
        "--drop-audio",
    )  # fmt: skip
    lines = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"result": result, "lines": lines, "out": out, "cache": cache, "folder": folder, "video": video}


def test_every_row_is_a_line_and_one_bad_video_or_query_does_not_stop_the_others(batch: dict[str, Any]) -> None:
    result, lines = batch["result"], batch["lines"]
    assert result.returncode == 1, result.stderr  # some rows failed
    assert [line["row"] for line in lines] == [1, 3, 4, 2]  # video by video, manifest order within one
    answered = {line["row"]: line for line in lines if "error" not in line}
    failed = {line["row"]: line["error"] for line in lines if "error" in line}
    assert sorted(answered) == [1, 4] and sorted(failed) == [2, 3]
    assert (
        failed[2].startswith("videos/broken.mp4 failed at the probe stage: ") and str(batch["folder"]) not in failed[2]
    )
    assert "no word of 'xqzzv qqzxv' is in the checkpoint's vocabulary" in failed[3]
    assert [answered[1]["video_id"], answered[4]["video_id"]] == ["clip4", "kitchen"]
    summary = result.stdout.splitlines()
    assert summary[0].startswith("batch: 4 rows, 2 videos: 2 answered, 2 failed; 1 of 2 videos could not be read; ")
    assert summary[0].endswith(" rows/s") and summary[1].startswith("answers: ")
    assert (
        "video videos/broken.mp4" not in result.stderr
        and "video broken, rows 2: videos/broken.mp4 failed" in result.stderr
    )


def test_the_answers_are_the_predictors_with_truth_and_without_audio(batch: dict[str, Any], real_run: RealRun) -> None:
    predictor = Predictor.from_checkpoint(
        real_run.checkpoint,
        PredictorOptions(
            device="cpu",
            cache_dir=batch["cache"],  # the batch extracted the video there: nothing is extracted again
            weights_dir=real_run.weights_dir,
            clip_model=str(real_run.clip_model),
            threads=1,
        ),
    )
    expected = predictor.predict(batch["video"], QUERIES, truths=[(1.0, 4.5), None], drop_audio=True).as_json()
    answered = [line for line in batch["lines"] if "error" not in line]
    for line, answer in zip(answered, expected["answers"], strict=True):
        assert {key: line[key] for key in answer} == answer
        assert line["video"] == batch["video"] and line["duration"] == expected["duration"]
        assert line["audio_used"] and line["drop_audio"] is not None
    assert answered[0]["iou"] is not None and answered[1]["truth"] is None


def test_the_page_shows_each_row_and_the_branches_metrics_without_machine_paths(batch: dict[str, Any]) -> None:
    page = (batch["out"] / "report.html").read_text(encoding="utf-8")
    assert page.count("<tr>") == 1 + 4 + 1 + 4  # the metrics' header and branches (fused, visual, audio, without
    # audio) and the answers' header and rows
    for name in ("fused", "visual", "audio", "without audio"):
        assert f'<tr><td>{name}</td><td class="num">1</td>' in page  # over the one row with a truth
    assert batch["result"].stdout.splitlines()[0] in page
    assert "xqzzv qqzxv" in page and "videos/broken.mp4" in page and "<script" not in page
    assert str(batch["folder"]) not in page.replace(batch["video"], "")  # only the path the manifest gave


def test_a_csv_manifest_reads_as_the_same_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text(
        'video,query,start,end,video_id\nv/a.mp4,a person waves,1,4.5,\nv/b.mp4,"a door, shut",,,b2\n',
        encoding="utf-8",
    )
    (tmp_path / "rows.jsonl").write_text(
        '{"video": "v/a.mp4", "query": "a person waves", "start": 1, "end": 4.5}\n\n'
        '{"path": "v/b.mp4", "query": "a door, shut", "video_id": "b2"}\n',
        encoding="utf-8",
    )
    expected = [
        BatchRow(2, "v/a.mp4", tmp_path / "v/a.mp4", "a", "a person waves", (1.0, 4.5)),
        BatchRow(3, "v/b.mp4", tmp_path / "v/b.mp4", "b2", "a door, shut", None),
    ]
    assert read_manifest(tmp_path / "rows.csv") == expected  # CSV: the header is line 1
    assert read_manifest(tmp_path / "rows.jsonl") == [replace(expected[0], row=1), replace(expected[1], row=3)]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("rows.txt", "", "name it .jsonl (one JSON object a line) or .csv"),
        ("rows.jsonl", "", "has no rows"),
        ("rows.jsonl", '{"video": "a.mp4"}\n', 'line 1: needs "query"'),
        ("rows.jsonl", '{"query": "q"}\n', 'line 1: needs "video"'),
        ("rows.jsonl", "[1]\n", 'line 1: expected an object with "video" and "query"'),
        ("rows.jsonl", '{"video": "a.mp4", "query": "q", "start": 3, "end": 2}\n', "line 1: need finite seconds"),
        ("rows.jsonl", '{"video": "a.mp4", "query": "q", "start": 3}\n', 'line 1: "start" and "end" must both'),
        ("rows.csv", "file,text\na.mp4,q\n", "the header must name the columns video (or path) and query"),
        ("rows.csv", "video,query,start,end\na.mp4,q,x,2\n", 'line 2: "start" and "end" must both be numbers'),
    ],
)
def test_a_malformed_manifest_is_one_line_naming_the_line(name: str, text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(path)


def test_a_malformed_manifest_stops_before_the_model_loads(tmp_path: Path) -> None:
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text('{"video": "a.mp4"}\n', encoding="utf-8")
    result = run_img_predict(
        "batch", "--checkpoint", tmp_path / "absent.pt", "--manifest", manifest, "--out", tmp_path / "out"
    )
    assert (
        result.returncode == 2
        and result.stderr.strip()
        == f'img-predict: error: {manifest} line 1: needs "query" (the text to find in the video)'
    )
    assert not (tmp_path / "out").exists()
