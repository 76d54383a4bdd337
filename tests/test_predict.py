"""img-predict on real video files made with ffmpeg, with a checkpoint trained on CLIP + VGGish features that the
real presets extract (tests/real_run.py): answers, the cache, the plot, and every one-line error.

The CLI runs as users run it (subprocesses) where its own behaviour is checked: the answers, the plot, the text
output and one-line errors. The other checks use the Python API with one shared feature cache, so each video
is extracted once in this module."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from extract.core.console import format_probability
from extract.core.errors import StoreLockedError, UsageError
from img_model.checkpoint import CheckpointMismatchError, read_checkpoint
from img_model.cli.predict import _read_queries_file
from img_model.network.convert import CheckpointLayoutError
from img_model.network.metrics import temporal_iou
from img_model.predict.feature_cache import recorded_specs
from img_model.predict.predictor import Predictor, PredictorOptions, VideoAnswers
from img_model.predict.queries import QueryError
from tests.broken_media import make_broken_audio_video
from tests.img_cli import run_img_eval, run_img_predict, start_img_predict
from tests.real_run import SILENT_VIDEO, RealRun

pytestmark = pytest.mark.slow  # the session's real_run: extraction, text and training through the CLIs (~40 s)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("predict-cache")


@pytest.fixture(scope="module")
def predictor(real_run: RealRun, cache: Path) -> Predictor:
    return Predictor.from_checkpoint(
        real_run.checkpoint, PredictorOptions(device="cpu", **predictor_options(real_run, cache))
    )


def predictor_options(real_run: RealRun, cache: Path) -> dict[str, Any]:
    return {
        "cache_dir": cache,
        "weights_dir": real_run.weights_dir,
        "clip_model": str(real_run.clip_model),
        "threads": 1,
    }


@pytest.fixture(scope="module")
def cli_answers(real_run: RealRun, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """img-predict on the test video with audio: its test queries (one on the command line, one from --queries
    with its true span) and a query with an unknown word, with --json, --drop-audio and --plot; and img-eval's
    predictions of the same queries, with their audio and without (img-eval --drop-audio)."""
    folder = tmp_path_factory.mktemp("cli-answers")
    evaluated_rows = {}
    for name, extra in (("test", ()), ("no-audio", ("--drop-audio",))):
        predictions = folder / f"{name}.jsonl"
        evaluated = run_img_eval(
            real_run.checkpoint, "--batch-size", "1", "--threads", "1", "--predictions", predictions, *extra
        )
        assert evaluated.returncode == 0, evaluated.stderr
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        evaluated_rows[name] = [row for row in rows if row["video_id"] == "clip4"]
    truth = evaluated_rows["test"][1]["ground_truth"]
    queries = folder / "queries.jsonl"
    line = {"query": evaluated_rows["test"][1]["query"], "qid": "ignored", "start": truth[0], "end": truth[1]}
    queries.write_text(json.dumps(line) + "\n\n")
    predicted = run_img_predict(
        *real_run.predict_options(cache),
        real_run.videos / "clip4.mp4",
        evaluated_rows["test"][0]["query"],
        "--queries",
        queries,
        "a dog barks loudly",
        "--json",
        "--drop-audio",
        "--plot",
        folder / "plot.png",
    )
    assert predicted.returncode == 0, predicted.stderr
    return {
        "rows": evaluated_rows["test"],
        "rows_without_audio": evaluated_rows["no-audio"],
        "answers": json.loads(predicted.stdout),
        "stderr": predicted.stderr,
        "plot": folder / "plot.png",
    }


def test_predict_answers_a_real_video_exactly_as_img_eval_scores_its_features(cli_answers: dict[str, Any]) -> None:
    answers = cli_answers["answers"]
    rows = cli_answers["rows"]
    assert answers["audio_used"] and answers["num_steps"] == rows[0]["num_steps"]
    # Command-line queries come first, then the file's: the file's query is the third answer.
    for row, answer in zip(rows, (answers["answers"][0], answers["answers"][2]), strict=True):
        fused = row["branches"]["fused"]
        assert answer["query"] == row["query"] and answer["branch"] == "fused"
        assert [answer["start"], answer["end"]] == pytest.approx(fused["span"], abs=1e-4)
        assert answer["score"] == pytest.approx(fused["score"], rel=1e-4)
        assert answer["audio_importance"] == pytest.approx(row["audio_importance"], rel=1e-4, abs=1e-9)
        top = [[span["start"], span["end"]] for span in answer["top"]]
        np.testing.assert_allclose(top, [span["span"] for span in fused["top"]], atol=1e-4)
        assert len({tuple(span) for span in top}) == len(top) == 5


def test_every_answer_shows_each_branch_its_saliency_and_the_iou_with_a_truth_as_img_eval(
    cli_answers: dict[str, Any],
) -> None:
    """Fused, visual-only and audio-only spans side by side, the fused saliency head per step, and (for the
    --queries line with start/end) the truth and each branch's IoU: all as img-eval computes them."""
    answers = cli_answers["answers"]["answers"]
    for row, answer in zip(cli_answers["rows"], (answers[0], answers[2]), strict=True):
        for name in ("fused", "visual", "audio"):
            branch = row["branches"][name]
            span = answer["branches"][name]
            assert [span["start"], span["end"]] == pytest.approx(branch["span"], abs=1e-4), name
            assert span["score"] == pytest.approx(branch["score"], rel=1e-4)
        assert answer["saliency"] == pytest.approx(row["branches"]["fused"]["saliency"], rel=1e-4, abs=1e-5)
        assert len(answer["saliency"]) == cli_answers["answers"]["num_steps"]
    assert answers[0]["truth"] is None and answers[0]["iou"] is None  # a command-line query has no truth
    row, answer = cli_answers["rows"][1], answers[2]
    assert [answer["truth"]["start"], answer["truth"]["end"]] == row["ground_truth"]
    assert answer["iou"] == pytest.approx({name: row["branches"][name]["iou"] for name in ("fused", "visual", "audio")})


def test_drop_audio_is_the_fused_answer_img_eval_gives_without_the_audio(cli_answers: dict[str, Any]) -> None:
    answers = cli_answers["answers"]["answers"]
    for row, answer in zip(cli_answers["rows_without_audio"], (answers[0], answers[2]), strict=True):
        assert not row["has_audio"]
        fused = row["branches"]["fused"]
        dropped = answer["drop_audio"]
        assert [dropped["start"], dropped["end"]] == pytest.approx(fused["span"], abs=1e-4)
        assert dropped["score"] == pytest.approx(fused["score"], rel=1e-4)


def test_an_unknown_word_reads_as_unk_with_a_warning_naming_it(cli_answers: dict[str, Any]) -> None:
    assert "'a dog barks loudly': barks not in the checkpoint's vocabulary, read as <UNK>" in cli_answers["stderr"]
    assert cli_answers["answers"]["answers"][1]["unknown_words"] == ["barks"]


def test_the_plot_shows_the_waveform_and_a_panel_per_query(cli_answers: dict[str, Any]) -> None:
    from matplotlib.image import imread

    image = imread(cli_answers["plot"])
    assert image.shape[:2] == (710, 1000)  # 10 x (1.4 + 3 x 1.9) inches at 100 dpi: waveform + 3 queries
    dark = (image[..., :3].mean(axis=2) < 0.5).mean(axis=1)
    assert (dark > 0.3).sum() > 5  # the waveform panel is filled: the 440 Hz tone, drawn as its envelope


def test_the_plot_is_the_figure_of_the_answers_probabilities_spans_importance_and_waveform(
    cli_answers: dict[str, Any], real_run: RealRun, tmp_path: Path
) -> None:
    """The Figure video_figure builds from img-predict's JSON answers is the one --plot wrote (pixel for pixel), and
    it shows what the answers say: P(start)/P(end) per step of the grid, the answer shaded, the top-k spans best
    first, the audio importance, and the video's 440 Hz tone (ffmpeg's sine: amplitude 1/8) over the timeline."""
    from matplotlib.image import imread
    from matplotlib.patches import Rectangle

    from img_model.predict.plot import video_figure

    data = cli_answers["answers"]
    answers = VideoAnswers.from_json(data)
    assert answers.as_json() == data and answers.video == str(real_run.videos / "clip4.mp4")
    figure = video_figure(answers)
    figure.savefig(tmp_path / "again.png", dpi=100)
    np.testing.assert_array_equal(imread(tmp_path / "again.png"), imread(cli_answers["plot"]))  # --plot's figure

    artists = {a.get_gid(): a for axis in figure.axes for a in axis.get_children() if a.get_gid()}
    wave, *panels = figure.axes[: len(data["answers"]) + 1]  # then the saliency axes, twins of the panels
    assert len(panels) == len(data["answers"]) == 3 and wave.get_ylabel() == "audio"
    assert panels[-1].get_xlim() == (0.0, data["duration"]) and panels[-1].get_xlabel() == "seconds"
    envelope = artists["waveform"].get_paths()[0].vertices
    assert envelope[:, 0].min() == pytest.approx(0, abs=0.01) and envelope[:, 0].max() == pytest.approx(
        data["duration"], abs=0.01
    )  # the whole timeline
    highs, lows = envelope[envelope[:, 1] > 0, 1], envelope[envelope[:, 1] < 0, 1]
    assert len(highs) >= 2000 and len(lows) >= 2000  # WAVEFORM_BINS slices, each its max and its min
    assert np.median(highs) == pytest.approx(0.125, abs=0.01) and np.median(lows) == pytest.approx(-0.125, abs=0.01)
    assert np.percentile(highs, 1) > 0.1 and np.percentile(lows, 99) < -0.1  # the tone is heard all along
    n, duration = data["num_steps"], data["duration"]
    for number, (axis, answer) in enumerate(zip(panels, data["answers"], strict=True)):
        for kind in ("start", "end"):
            values, edges, _ = artists[f"p_{kind}:{number}"].get_data()
            assert values.tolist() == answer[f"{kind}_probabilities"] and len(values) == n
            np.testing.assert_allclose(edges, np.arange(n + 1) * duration / n)  # step i covers [iD/N, (i+1)D/N)
            assert artists[f"p_{kind}:{number}"].axes is axis
        first, last = round(answer["start"] * n / duration), round(answer["end"] * n / duration) - 1
        assert answer["score"] == pytest.approx(
            answer["start_probabilities"][first] * answer["end_probabilities"][last], rel=1e-5
        )  # the curves are the answer's: its score is P_start(i) P_end(j) read off them
        shaded = artists[f"answer:{number}"]
        assert isinstance(shaded, Rectangle) and shaded.axes is axis
        assert (shaded.get_x(), shaded.get_x() + shaded.get_width()) == pytest.approx((answer["start"], answer["end"]))
        bars = [artists[f"top:{number}:{rank}"] for rank in range(len(answer["top"]))]
        assert len(bars) == 5 and f"top:{number}:5" not in artists
        for rank, (bar, span) in enumerate(zip(bars, answer["top"], strict=True)):
            (x0, y0), (x1, y1) = bar.get_segments()[0]
            assert (x0, x1) == pytest.approx((span["start"], span["end"])) and y0 == y1 < 0  # under the curves
            assert bar.get_alpha() == pytest.approx(1 - 0.15 * rank)  # best first, darkest
        assert (bars[0].get_segments()[0][0][0], bars[0].get_segments()[0][1][0]) == pytest.approx(
            (answer["start"], answer["end"])
        )
        title = axis.get_title()
        assert f'"{answer["query"]}": {answer["start"]:.2f}-{answer["end"]:.2f} s' in title
        importance = format_probability(answer["audio_importance"])
        assert f"audio importance {importance}" in title and "bars: top 5" in title
        legend = ["P(start)", "P(end)", "answer", *(["truth"] if answer["truth"] else []), "saliency"]
        assert [t.get_text() for t in axis.get_legend().get_texts()] == legend
        saliency = artists[f"saliency:{number}"]
        np.testing.assert_allclose(saliency.get_xdata(), (np.arange(n) + 0.5) * duration / n)  # step centres
        assert saliency.get_ydata().tolist() == answer["saliency"] and saliency.axes.get_ylabel() == "saliency (raw)"
        assert saliency.axes.get_shared_x_axes().joined(saliency.axes, axis)
        if answer["truth"]:
            truth = artists[f"truth:{number}"]
            assert (truth.get_x(), truth.get_x() + truth.get_width()) == pytest.approx(
                (answer["truth"]["start"], answer["truth"]["end"])
            )
            assert f"IoU {answer['iou']['fused']:.2f} with the truth" in title
        else:
            assert f"truth:{number}" not in artists and "IoU" not in title

    # answered by the visual branch (a video without audio): no waveform is read, and the figure says why
    visual = [{**answer, "audio_importance": None, "branch": "visual"} for answer in data["answers"]]
    silent = {**data, "has_audio": False, "audio_used": False, "note": "no audio stream", "answers": visual}
    figure = video_figure(VideoAnswers.from_json(silent))
    wave, *panels = figure.axes[:4]
    assert not [a for a in wave.get_children() if a.get_gid() == "waveform"]
    assert [t.get_text() for t in wave.texts] == ["no audio stream"] and "audio not used" in wave.get_title()
    assert all("no audio: visual branch" in axis.get_title() for axis in panels)


def test_a_video_without_audio_is_answered_by_the_visual_branch_and_says_so(real_run: RealRun, cache: Path) -> None:
    query = real_run.queries()[-1]["query"]
    video = real_run.videos / f"{SILENT_VIDEO}.mp4"
    result = run_img_predict(*real_run.predict_options(cache), video, query)
    assert result.returncode == 0, result.stderr
    assert f"{video}: 13.00 s, 13 steps, audio not used (the video has no audio stream): visual branch" in result.stdout
    assert f'1. "{query}": ' in result.stdout and "audio importance" not in result.stdout


def test_the_answer_of_a_video_without_audio_says_which_branch(predictor: Predictor, real_run: RealRun) -> None:
    answers = predictor.predict(real_run.videos / f"{SILENT_VIDEO}.mp4", ["a person waves a hand"])
    assert (answers.has_audio, answers.audio_used, answers.note) == (False, False, "the video has no audio stream")
    assert answers.answers[0].branch == "visual" and answers.answers[0].audio_importance is None


def test_a_second_query_on_a_cached_video_loads_no_extraction_model(
    predictor: Predictor, real_run: RealRun, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = real_run.videos / "clip4.mp4"
    first = predictor.predict(video, ["a person waves a hand"])
    monkeypatch.setattr("extract.models.build_extractor", no_model)
    again = Predictor.from_checkpoint(
        real_run.checkpoint, PredictorOptions(device="cpu", **predictor_options(real_run, cache))
    )  # a new run
    second = again.predict(video, ["a person waves a hand", "the door slams shut"])
    assert second.answers[0] == first.answers[0]
    assert second.answers[1].query == "the door slams shut"


def no_model(*args: object) -> None:
    raise AssertionError("an extraction model was loaded for a video already in the cache")


def test_a_video_cached_with_another_precision_is_read_by_a_new_process_without_a_model(
    real_run: RealRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint's features were made in fp16 (on a GPU); on a CPU they are extracted in fp32 (a warning), and a
    new Predictor (a new process) finds them in the cache without building or hashing any extraction model."""
    stored = torch.load(real_run.checkpoint, weights_only=True)
    for kind in ("visual", "audio"):
        stored["provenance"][kind]["recipe"]["precision"] = "fp16"
    torch.save(stored, tmp_path / "fp16-features.pt")
    options = predictor_options(real_run, tmp_path / "cache")
    video = real_run.videos / "clip4.mp4"
    with caplog.at_level(logging.WARNING, logger="img_vmr.img_model"):
        first = Predictor.from_checkpoint(
            tmp_path / "fp16-features.pt", PredictorOptions(device="cpu", **options)
        ).predict(video, "a person")
    assert "the checkpoint's were made in fp16, these in fp32" in caplog.text
    monkeypatch.setattr("extract.models.build_extractor", no_model)
    again = Predictor.from_checkpoint(tmp_path / "fp16-features.pt", PredictorOptions(device="cpu", **options)).predict(
        video, "a person"
    )
    assert again.answers == first.answers


def test_two_processes_sharing_a_cache_answer_at_once(real_run: RealRun, tmp_path: Path) -> None:
    command = [*real_run.predict_options(tmp_path / "cache"), real_run.videos / "clip4.mp4", "a person waves a hand"]
    processes = [start_img_predict(*command) for _ in range(2)]
    results = [(process.wait(timeout=300), *process.communicate()) for process in processes]
    for code, stdout, stderr in results:
        assert code == 0, stderr
        assert '1. "a person waves a hand": ' in stdout
    assert results[0][1] == results[1][1]  # one extracted, the other waited for it (or found it) and read it


def test_a_process_waits_for_another_extracting_into_the_cache_then_names_cache(
    real_run: RealRun, tmp_path: Path
) -> None:
    predictor = Predictor.from_checkpoint(
        real_run.checkpoint, PredictorOptions(device="cpu", **predictor_options(real_run, tmp_path / "c"))
    )
    predictor.features.lock_timeout = 0.5
    predictor.features.folder.mkdir(parents=True)
    with open(predictor.features.folder / "extract.lock", "w") as other:  # another img-predict extracting
        fcntl.flock(other, fcntl.LOCK_EX)
        other.write("pid 4242 on elsewhere\n")
        other.flush()
        with pytest.raises(StoreLockedError) as refused:
            predictor.predict(real_run.videos / "clip4.mp4", "a person waves a hand")
    assert str(refused.value) == (
        f"the feature cache {tmp_path / 'c'} is still being written by pid 4242 on elsewhere after 0.5 s; wait for it "
        "to finish or use another --cache"
    )
    assert predictor.predict(real_run.videos / "clip4.mp4", "a person waves a hand").audio_used  # released: it runs


def test_one_query_may_be_a_string(predictor: Predictor, real_run: RealRun) -> None:
    answers = predictor.predict(real_run.videos / "clip4.mp4", "a person waves a hand")
    assert [answer.query for answer in answers.answers] == ["a person waves a hand"]


def test_the_answers_use_the_runs_precision_where_the_device_runs_it(
    real_run: RealRun, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 run answered in fp32 on a CPU while img-eval evaluated it in bf16: one rule now
    (extract/core/precision.py), bf16 runs on a CPU with bf16 instructions; a run's fp16 falls back to fp32 there."""
    from extract.core import cpu

    monkeypatch.setattr(cpu, "native_bf16", lambda: True)  # torch computes bf16 on any CPU (emulated where it lacks it)
    stored = torch.load(real_run.checkpoint, weights_only=True)
    video = real_run.videos / "clip4.mp4"
    for recorded, expected in (("bf16", "bf16"), ("fp16", "fp32")):
        stored["run"]["runtime"]["precision"] = recorded
        torch.save(stored, tmp_path / f"{recorded}-run.pt")
        default = Predictor.from_checkpoint(
            tmp_path / f"{recorded}-run.pt", PredictorOptions(device="cpu", **predictor_options(real_run, cache))
        )
        assert default.predict(video, "a person waves a hand").as_json()["precision"] == expected
    forced = Predictor.from_checkpoint(
        tmp_path / "bf16-run.pt", PredictorOptions(device="cpu", precision="fp32", **predictor_options(real_run, cache))
    )
    assert forced.predict(video, "a person waves a hand").precision == "fp32"
    with pytest.raises(UsageError, match="--precision fp16 needs a CUDA GPU"):
        Predictor.from_checkpoint(
            tmp_path / "bf16-run.pt",
            PredictorOptions(device="cpu", precision="fp16", **predictor_options(real_run, cache)),
        )


def test_a_query_of_unknown_words_only_is_refused(predictor: Predictor, real_run: RealRun) -> None:
    with pytest.raises(QueryError, match=r"no word of 'barks knocks' is in the checkpoint's vocabulary \(12 words"):
        predictor.predict(real_run.videos / "clip4.mp4", ["barks knocks"])


def test_a_query_longer_than_max_pos_len_is_read_up_to_there_as_img_eval_reads_it_and_says_so(
    real_run: RealRun, cache: Path
) -> None:
    """img-predict used to end with "internal error: 17 query tokens exceed max_pos_len 16" (exit 1; the demo page
    answered 500); img-eval reads the first max_pos_len tokens of such a query (§1.3)."""
    checkpoint = read_checkpoint(real_run.checkpoint)
    limit = checkpoint.config.max_pos_len
    known = [word for word in checkpoint.vocabulary["words"][2:] if word.isalpha()]
    words = [known[number % len(known)] for number in range(limit + 4)]
    long, first = " ".join(words), " ".join(words[:limit])
    result = run_img_predict(*real_run.predict_options(cache), real_run.videos / "clip4.mp4", long, first, "--json")
    assert result.returncode == 0, result.stderr
    read_long, read_first = json.loads(result.stdout)["answers"]
    assert (read_long["tokens_dropped"], read_first["tokens_dropped"]) == (4, 0)
    assert {key: value for key, value in read_long.items() if key not in ("query", "tokens_dropped")} == {
        key: value for key, value in read_first.items() if key not in ("query", "tokens_dropped")
    }
    note = (
        f"{long!r}: the model reads its first {limit} tokens (max_pos_len), as img-eval does; the last 4 are not read"
    )
    assert note in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_full_disk_under_the_cache_or_the_plot_is_one_line_exit_3_and_loses_nothing(
    real_run: RealRun, cache: Path, tmp_path: Path
) -> None:
    """It used to be "feature extraction stopped (...)" with exit 2, or a half-written figure."""
    from tests.test_img_disk_full import run_on_a_filling_disk

    empty, video, plot = tmp_path / "cache", real_run.videos / "clip4.mp4", tmp_path / "out" / "answers.png"
    query = [video, "a person waves a hand", "--json"]
    cached = run_on_a_filling_disk(
        tmp_path, "img_model.cli.predict", "part-*.h5.tmp", 1, 0, *real_run.predict_options(empty), *query
    )
    assert cached.returncode == 3, cached.stderr
    last = cached.stderr.splitlines()[-1]
    assert last.startswith(f"img-predict: error: cannot write the feature store {empty}/") and "Traceback" not in last
    assert ": no space left on device; make room (" in last
    assert last.endswith("then run img-predict again (or give --cache a folder with room)")
    assert not list(empty.rglob("*.tmp")) and cached.stdout == ""
    plotted = run_on_a_filling_disk(  # the module's cache: the video's features are read, not extracted again
        tmp_path,
        "img_model.cli.predict",
        ".answers.png.*.tmp",
        1,
        1_000,
        *real_run.predict_options(cache),
        *query,
        "--plot",
        plot,
    )
    assert plotted.returncode == 3, plotted.stderr
    assert plotted.stderr.splitlines()[-1].startswith(f"img-predict: error: cannot write --plot {plot}: no space left")
    assert plotted.stderr.splitlines()[-1].endswith("then run img-predict again (the answers are printed above)")
    assert json.loads(plotted.stdout)["answers"][0]["query"] == "a person waves a hand"  # printed before the plot
    assert list((tmp_path / "out").iterdir()) == []  # no half figure


def test_an_empty_query_is_one_line_before_anything_is_extracted(real_run: RealRun, tmp_path: Path) -> None:
    result = run_img_predict(*real_run.predict_options(tmp_path / "cache"), real_run.videos / "clip4.mp4", "  ")
    assert result.returncode == 2, result.stderr
    assert result.stderr == "img-predict: error: empty query: type what happens in the moment you are looking for\n"
    assert not (tmp_path / "cache").exists()


def test_a_checkpoint_from_a_newer_version_is_refused(real_run: RealRun, tmp_path: Path) -> None:
    stored = torch.load(real_run.checkpoint, weights_only=True)
    stored["format_version"] = 2
    torch.save(stored, tmp_path / "newer.pt")
    with pytest.raises(CheckpointLayoutError, match=r"written by a newer img-vmr \(format 2\); upgrade to read it"):
        Predictor.from_checkpoint(tmp_path / "newer.pt", PredictorOptions(device="cpu", cache_dir=tmp_path))


def test_a_video_that_fails_to_decode_is_one_line_naming_the_stage(real_run: RealRun, cache: Path, tmp_path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((real_run.videos / "clip4.mp4").read_bytes()[:2000])  # half-downloaded: no moov atom
    result = run_img_predict(*real_run.predict_options(cache), broken, "a person waves a hand")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"img-predict: error: {broken} failed at the probe stage: not a readable media file (moov atom not found: "
        "the file is truncated or was never finished)\n"
    )


def test_an_undecodable_audio_stream_leaves_the_visual_branch_and_says_why(predictor: Predictor, tmp_path) -> None:
    video = make_broken_audio_video(tmp_path / "broken-audio.mkv", seconds=6.0)
    answers = predictor.predict(video, ["a person waves a hand"])
    assert answers.has_audio and not answers.audio_used
    assert answers.note.startswith(f"its audio could not be used: {video} failed at the audio stage: decoding failed (")
    assert answers.note.count(str(video)) == 1  # the path is said once
    assert answers.answers[0].branch == "visual"


def test_the_plot_of_a_video_whose_audio_fails_to_decode_keeps_the_answers(
    real_run: RealRun, cache: Path, tmp_path: Path
) -> None:
    video = make_broken_audio_video(tmp_path / "broken-audio.mkv", seconds=6.0)
    result = run_img_predict(
        *real_run.predict_options(cache), video, "a person waves a hand", "--plot", tmp_path / "plot.png"
    )
    assert result.returncode == 0, result.stderr
    assert f"{video}: 6.02 s, 6 steps, audio not used (its audio could not be used: " in result.stdout
    assert '1. "a person waves a hand": ' in result.stdout
    assert (tmp_path / "plot.png").stat().st_size > 10_000  # drawn with "audio could not be decoded"
    assert result.stderr.count("failed at the audio stage") == 1  # the features' note, not a second decode


@pytest.mark.parametrize(
    ("plot", "message"),
    [
        ("/proc/answers.png", "--plot /proc/answers.png: cannot write in /proc ("),
        ("{tmp}/answers.xyz", "--plot {tmp}/answers.xyz: the suffix says no image format matplotlib writes; use "),
    ],
)
def test_a_plot_path_that_cannot_be_written_is_one_line_before_anything_is_computed(
    real_run: RealRun, tmp_path: Path, plot: str, message: str
) -> None:
    plot, message = plot.format(tmp=tmp_path), message.format(tmp=tmp_path)
    result = run_img_predict(
        *real_run.predict_options(tmp_path / "cache"),
        real_run.videos / "clip4.mp4",
        "a person waves a hand",
        "--plot",
        plot,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"img-predict: error: {message}") and result.stderr.count("\n") == 1
    assert result.stdout == "" and not (tmp_path / "cache").exists()


def test_other_weights_are_refused_unless_trusted(
    real_run: RealRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-clip"
    shutil.copytree(real_run.clip_model, other)
    tensors = load_file(other / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    options = {**predictor_options(real_run, tmp_path / "cache"), "clip_model": str(other)}
    video = real_run.videos / "clip4.mp4"
    with pytest.raises(CheckpointMismatchError, match=r"not the ones the checkpoint was trained on .*--trust-weights"):
        Predictor.from_checkpoint(real_run.checkpoint, PredictorOptions(device="cpu", **options)).predict(
            video, ["a person waves a hand"]
        )
    trusted = Predictor.from_checkpoint(
        real_run.checkpoint, PredictorOptions(device="cpu", trust_weights=True, **options)
    )
    first = trusted.predict(video, ["a person waves a hand"])
    assert first.audio_used
    with monkeypatch.context() as patched:  # a new process reads the trusted features without a model
        patched.setattr("extract.models.build_extractor", no_model)
        again = Predictor.from_checkpoint(
            real_run.checkpoint, PredictorOptions(device="cpu", trust_weights=True, **options)
        )
        assert again.predict(video, ["a person waves a hand"]).answers == first.answers
    with pytest.raises(CheckpointMismatchError, match="--trust-weights"):  # untrusted: never read from the cache
        Predictor.from_checkpoint(real_run.checkpoint, PredictorOptions(device="cpu", **options)).predict(
            video, ["a person waves a hand"]
        )


def test_the_checkpoint_of_the_run_records_the_presets_of_its_features(real_run: RealRun) -> None:
    specs = recorded_specs(read_checkpoint(real_run.checkpoint))
    assert [
        (s.kind, s.name, s.recipe["preset"], s.recipe["frames.fps"] if s.kind == "visual" else None) for s in specs
    ] == [
        ("visual", "clip", "clip", 1.0),
        ("audio", "vggish", "vggish", None),
    ]


def test_queries_file_lines_must_hold_a_query(tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "a person waves a hand"}\n{"sentence": "no query key"}\n')
    with pytest.raises(UsageError, match=f'{queries} line 2: expected an object with a "query" string'):
        _read_queries_file(queries)


def test_queries_file_lines_keep_their_true_span_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "a", "start": 1, "end": 2.5}\n{"query": "b"}\n')
    assert _read_queries_file(queries) == [("a", (1.0, 2.5)), ("b", None)]
    for bad in ('"start": 3, "end": 2', '"start": 1', '"start": "1", "end": "2"', '"start": -1, "end": 2'):
        queries.write_text(f'{{"query": "a", {bad}}}\n')
        with pytest.raises(
            UsageError, match=f'{queries} line 1: (.*0 <= start < end|"start" and "end" must both be numbers)'
        ):
            _read_queries_file(queries)


def test_gt_prints_each_branchs_span_and_iou_and_the_answer_without_audio(
    cli_answers: dict[str, Any], real_run: RealRun, cache: Path
) -> None:
    """The text output: the fused / visual / audio spans side by side, --gt's IoU of each, and --drop-audio's
    fused span without the audio; the numbers are those of the JSON answer of the same query."""
    answer = cli_answers["answers"]["answers"][0]
    video = real_run.videos / "clip4.mp4"
    result = run_img_predict(
        *real_run.predict_options(cache), video, answer["query"], "--gt", "1", "4.5", "--drop-audio"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    first = lines.index(
        f'1. "{answer["query"]}": {answer["start"]:.2f}-{answer["end"]:.2f} s, score {answer["score"]:.4f}'
        f", audio importance {format_probability(answer['audio_importance'])}"
    )
    spans = [answer["branches"][name] for name in ("fused", "visual", "audio")]
    assert lines[first + 1] == "   branches: " + " | ".join(
        f"{name} {span['start']:.2f}-{span['end']:.2f} s ({span['score']:.4f})"
        for name, span in zip(("fused", "visual", "audio"), spans, strict=True)
    )
    ious = [temporal_iou(span["start"], span["end"], 1.0, 4.5) for span in spans]
    assert lines[first + 2] == "   truth 1.00-4.50 s, IoU: " + " | ".join(
        f"{name} {iou:.2f}" for name, iou in zip(("fused", "visual", "audio"), ious, strict=True)
    )
    dropped = answer["drop_audio"]
    assert lines[first + 3].startswith(
        f"   without audio: fused {dropped['start']:.2f}-{dropped['end']:.2f} s ({dropped['score']:.4f}), "
    )
    assert lines[first + 3].endswith(f"; IoU {temporal_iou(dropped['start'], dropped['end'], 1.0, 4.5):.2f}")
    assert lines[first + 4].startswith("   top: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gt", "4", "2"), "Invalid value for '--gt': START 4 must be before END 2"),
        (("--gt", "nan", "2"), "Invalid value for '--gt': 'nan' is not a finite number from 0 to 1e+07"),
        (("--gt", "1"), "Option '--gt' requires 2 arguments."),
    ],
)
def test_a_bad_gt_is_one_line_exit_2_before_the_model_loads(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    result = run_img_predict("--checkpoint", tmp_path / "absent.pt", tmp_path / "v.mp4", "a query", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
