"""img-eval --report: the self-contained HTML report, opened in headless Chromium (Playwright).

One report comes from the real run through img-eval (metrics table against img-eval's own numbers, the split and
wrong-answer filters, a player that seeks to the predicted start of an H.264 video made with ffmpeg); another from
a generated predictions list of ActivityNet's size (17,502 queries) that must render one page at a time and
filter without a reload; the learning check's model with and without audio side by side from one img-eval command
(its CSV, its relative paths); sorting, per-row P(start)/P(end), n/a branches, warnings and chart text size on
generated rows."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from img_model.evaluate.evaluator import BRANCHES
from img_model.evaluate.report import CURVE_ALPHABET, CURVE_POINTS, Compared, encode_curves, report_data, write_report
from img_model.network.metrics import temporal_iou
from tests.img_cli import LearningCheck, run_img_eval
from tests.real_run import RealRun

TABLE_NAMES = (  # without clip-level saliency labels: no HL-mAP / HL-HIT@1
    *("R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "R5-NMS@0.3", "R5-NMS@0.5", "R5-NMS@0.7"),
    *("mAP@0.5", "mAP@0.75", "mAP@[0.5:0.95]", "R5-noNMS@0.3", "R5-noNMS@0.5", "R5-noNMS@0.7"),
)

ACTIVITYNET_TEST_QUERIES = 17502
PAGE_SIZE = 50
SCREENSHOTS_ENV = "IMG_VMR_SCREENSHOTS"  # a folder: the browser tests also save their screenshots there (docs/)


def generated_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Prediction rows shaped like img-eval's JSONL (two splits, a few videos without audio), with IoUs that
    really are the IoUs of the spans."""
    rng = np.random.default_rng(seed)
    duration = rng.uniform(20, 200, count)
    truth = np.sort(rng.uniform(0, 1, (count, 2)), axis=1) * duration[:, None]
    branches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for branch in BRANCHES:
        spans = np.sort(rng.uniform(0, 1, (count, 5, 2)), axis=2) * duration[:, None, None]
        near = rng.random(count) < 0.4  # the best span is a near miss or a hit
        noise = rng.normal(0, 1, (count, 2)) * (0.1 * (truth[:, 1:] - truth[:, :1]) + 1)
        spans[near, 0] = np.sort(np.clip(truth + noise, 0, duration[:, None]), axis=1)[near]
        ious = temporal_iou(spans[..., 0], spans[..., 1], truth[:, :1], truth[:, 1:])
        branches[branch] = (spans, ious)
    importance = rng.uniform(size=count)
    # one saliency list per branch, shared by the rows (img-eval writes float32's shortest decimals)
    saliency = {branch: np.round(np.random.default_rng(seed + 1).normal(size=128), 2).tolist() for branch in BRANCHES}
    start, end = probability_curves(128, seed + 2)  # img-eval keeps the fused branch's curves
    rows = []
    for n in range(count):
        predicted = {}
        for branch, (spans, ious) in branches.items():
            top = [
                {"span": spans[n, k].tolist(), "steps": [0, 1], "score": 0.1, "iou": float(ious[n, k])}
                for k in range(5)
            ]
            predicted[branch] = {
                "span": top[0]["span"],
                "steps": [0, 1],
                "score": 0.1,
                "iou": top[0]["iou"],
                "top": top,
                "top_nms": top,
                "saliency": saliency[branch],
                **({"start_probability": start, "end_probability": end} if branch == "fused" else {}),
            }
        rows.append(
            {
                "qid": f"q{n}",
                "video_id": f"v_{n // 4:05d}",
                "query": f"query number {n}",
                "split": "val_2" if n % 3 == 0 else "val_1",
                "duration": float(duration[n]),
                "num_steps": 128,
                "ground_truth": truth[n].tolist(),
                "has_audio": n % 50 != 0,
                "audio_importance": float(importance[n]),
                "branches": predicted,
            }
        )
    return rows


def probability_curves(steps: int, seed: int) -> tuple[list[float], list[float]]:
    """P(start) and P(end) over `steps` (softmaxes of random logits, as img-eval writes them: float32 decimals)."""
    logits = np.random.default_rng(seed).normal(0, 2.5, (2, steps))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    start, end = ([float(str(v)) for v in curve.astype(np.float32)] for curve in probabilities)
    return start, end


@pytest.fixture(scope="module")
def activitynet_sized(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    """17,502 generated rows (one with markup in its query) and their report."""
    rows = generated_rows(ACTIVITYNET_TEST_QUERIES)
    rows[1]["query"] = "<img src=x onerror=window.injected=1> a person waves"
    return rows, write_report(tmp_path_factory.mktemp("report") / "report.html", rows, title="ActivityNet-sized")


def open_page(chromium: Any, url: str) -> tuple[Any, list[str]]:
    """A page at `url` and the list of every request it makes (all must stay on this machine's files)."""
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("#list tbody tr")
    assert not errors, errors
    return page, requests


def save_screenshot(page: Any, path: Path, name: str) -> None:
    page.screenshot(path=path, full_page=False)
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        page.screenshot(path=Path(folder) / name, full_page=False)


def count_shown(page: Any) -> int:
    return int(page.inner_text("#count").split(" of ")[0])


# --- without a browser ------------------------------------------------------------------------------------------


def test_the_report_is_one_file_with_nothing_to_fetch_and_escapes_what_it_shows(tmp_path: Path) -> None:
    rows = generated_rows(3)
    rows[0]["query"] = "</script><script>window.injected = 1</script> <!-- <b>bold</b>"
    path = write_report(tmp_path / "report.html", rows, title="<i>title</i>")
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<link" not in text and " src=" not in text
    assert text.count("</script>") == 2  # the data block and the page's script: the query's is escaped
    assert "<title>&lt;i&gt;title&lt;/i&gt;</title>" in text


@pytest.mark.slow
def test_the_size_of_an_activitynet_report_stays_small(activitynet_sized: tuple[list, Path]) -> None:
    assert activitynet_sized[1].stat().st_size < 5_500_000  # the measured 5.1 MB of docs/prediction.md, with room


def report_context(report: Path) -> dict[str, Any]:
    """The context (checkpoint, dataset, notes, ...) a report's page shows under its title."""
    text = report.read_text(encoding="utf-8")
    data = text.split('<script type="application/json" id="report-data">', 1)[1].split("</script>", 1)[0]
    return json.loads(data)["context"]


def test_the_report_names_the_checkpoint_and_the_dataset_relative_to_itself(side_by_side: dict[str, Any]) -> None:
    """A report is read where it lies, like its video links: the files it names are found from it, and the
    folders of the machine that wrote it are not shown (img-eval was given absolute paths here)."""
    learning_check, report = side_by_side["learning_check"], side_by_side["report"]
    assert learning_check.checkpoint.is_absolute() and learning_check.data.annotations.is_absolute()
    context = report_context(report)
    assert context["checkpoint"] == os.path.relpath(learning_check.checkpoint, report.parent)
    assert context["checkpoint"].startswith(os.path.join("..", ".."))  # the checkpoint lies in another folder
    assert context["dataset"] == os.path.relpath(learning_check.data.annotations, report.parent)
    assert (report.parent / context["dataset"]).resolve() == learning_check.data.annotations.resolve()
    text = report.read_text(encoding="utf-8")
    assert str(learning_check.checkpoint.parents[2]) not in text and str(report.parent) not in text


def test_the_filters_flags_are_the_metrics_ious() -> None:
    rows = generated_rows(400)
    data = report_data(rows, "t")
    correct = np.array([row[data["columns"].index("correct")] for row in data["rows"]])
    fused_at_half = (correct >> 1) & 1  # bit 3·branch + threshold: fused, 0.5
    assert fused_at_half.mean() * 100 == pytest.approx(data["overall"]["metrics"]["fused"]["R1@0.5"])
    visual_at_07 = (correct >> (3 * 1 + 2)) & 1
    assert visual_at_07.mean() * 100 == pytest.approx(data["overall"]["metrics"]["visual"]["R1@0.7"])
    assert data["summaries"]["val_2"]["queries"] == len([r for r in rows if r["split"] == "val_2"])


def test_a_split_named_all_keeps_the_summary_of_all_splits() -> None:
    rows = generated_rows(30)
    for number, row in enumerate(rows):
        row["split"] = "all" if number % 3 == 0 else "test"
    data = report_data(rows, "t")
    assert data["overall"]["queries"] == 30 and data["summaries"]["all"]["queries"] == 10
    assert data["summaries"]["test"]["queries"] == 20


def rows_with_ious_on_the_edges(count: int) -> list[dict[str, Any]]:
    """generated_rows, the first few with spans whose IoU is exactly a bin edge or a threshold (3/10, 6/10, 7/10,
    1, 0 and 1/20: as a model on 10 or 20 steps gives them), in every branch."""
    rows = generated_rows(count)
    edges = [(0.0, 3.0), (4.0, 10.0), (0.0, 7.0), (0.0, 10.0), (10.0, 12.0), (0.0, 0.5)]  # truth is [0, 10]
    for row, (start, end) in zip(rows, edges, strict=False):
        row["duration"], row["ground_truth"] = 20.0, [0.0, 10.0]
        for branch in BRANCHES:
            iou = float(temporal_iou(start, end, 0.0, 10.0))
            row["branches"][branch] |= {"span": [start, end], "iou": iou}
            row["branches"][branch]["top"][0] |= {"span": [start, end], "iou": iou}
    assert [rows[n]["branches"]["fused"]["iou"] for n in range(6)] == [0.3, 0.6, 0.7, 1.0, 0.0, 0.05]
    return rows


def expected_charts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The two charts computed here from the rows: per branch the number of queries whose IoU lies in
    [k/10, (k+1)/10) (1.0 in the last bin), and R1 (%) at 0.05, 0.10, ..., 0.95 (IoU >= threshold)."""
    histogram, recall = {}, {}
    for branch in BRANCHES:
        ious = [row["branches"][branch]["iou"] for row in rows]
        histogram[branch] = [
            sum(1 for x in ious if k / 10 <= x < (k + 1) / 10 or (k == 9 and x == 1.0)) for k in range(10)
        ]
        recall[branch] = [100 * sum(1 for x in ious if x >= k / 20) / len(ious) for k in range(1, 20)]
    return {"histogram": histogram, "recall": recall}


def test_the_charts_data_are_the_iou_histogram_and_r1_curves_of_each_branch_and_split() -> None:
    rows = rows_with_ious_on_the_edges(300)
    data = report_data(rows, "t")
    assert data["histogram_bins"] == 10 and data["recall_thresholds"] == [k / 20 for k in range(1, 20)]
    scopes = {"all": (data["overall"], rows)} | {
        split: (data["summaries"][split], [row for row in rows if row["split"] == split]) for split in data["splits"]
    }
    assert set(scopes) == {"all", "val_1", "val_2"}
    for scope, (shown, scoped) in scopes.items():
        expected = expected_charts(scoped)
        for branch in BRANCHES:
            assert shown["histogram"][branch] == expected["histogram"][branch], (scope, branch)
            assert shown["recall"][branch] == pytest.approx(expected["recall"][branch], abs=1e-9), (scope, branch)
            # the charts agree with the metrics table: R1 at 0.3/0.5/0.7 is the curve's point and the bins above
            for threshold in (0.3, 0.5, 0.7):
                r1 = shown["metrics"][branch][f"R1@{threshold}"]
                assert shown["recall"][branch][round(threshold * 20) - 1] == pytest.approx(r1)
                above = sum(shown["histogram"][branch][round(threshold * 10) :])
                assert 100 * above / len(scoped) == pytest.approx(r1), (scope, branch, threshold)


def test_the_report_summary_is_img_evals(tmp_path: Path) -> None:
    """The metrics and the mean audio importance are EvalReport's own, over every query (videos without audio too)."""
    from img_model.evaluate.evaluator import EvalReport
    from img_model.evaluate.report import read_prediction

    rows = generated_rows(200)
    rows[3]["branches"]["audio"]["top"] = rows[3]["branches"]["audio"]["top"][:2]  # a video of one or two steps
    evaluated = EvalReport.from_predictions("all", [read_prediction(row) for row in rows])
    overall = report_data(rows, "t")["overall"]
    assert overall["metrics"] == evaluated.branches
    assert overall["mean_importance"] == pytest.approx(np.mean([row["audio_importance"] for row in rows]))
    assert read_prediction(rows[5]).as_json() == {**rows[5], "num_steps": 128}


def test_the_docs_show_a_screenshot_of_the_report_and_of_the_demo_page_under_300_kb() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    prediction = (root / "docs" / "prediction.md").read_text(encoding="utf-8")
    assert "](docs/report.png)" in readme
    for name in ("report.png", "demo.png"):
        assert f"]({name})" in prediction
        image = root / "docs" / name
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size < 300_000


# --- in the browser -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_report_of_17502_queries_renders_a_page_at_a_time_and_filters(
    chromium: Any, activitynet_sized: tuple[list, Path]
) -> None:
    rows, path = activitynet_sized
    page, requests = open_page(chromium, path.as_uri())
    assert page.locator("#list tbody tr").count() == PAGE_SIZE
    assert page.inner_text("#count") == f"{ACTIVITYNET_TEST_QUERIES} of {ACTIVITYNET_TEST_QUERIES} queries"
    assert "a person waves" in page.inner_text("#list tbody") and page.locator("#list tbody img").count() == 0

    wrong = sum(row["branches"]["fused"]["iou"] < 0.5 for row in rows)
    page.check("#wrong")
    assert count_shown(page) == wrong and page.locator("#list tbody tr").count() == PAGE_SIZE
    page.uncheck("#wrong")
    page.check("#audio-decided")
    decided = [
        r
        for r in rows
        if r["has_audio"] and r["branches"]["fused"]["iou"] >= 0.5 and r["branches"]["visual"]["iou"] < 0.5
    ]  # the sound decided: a video without audio never counts
    assert count_shown(page) == len(decided)
    page.select_option("#split", "val_2")
    assert count_shown(page) == sum(r["split"] == "val_2" for r in decided)
    page.select_option("#threshold", "0.7")
    strict = [
        r
        for r in rows
        if r["split"] == "val_2"
        and r["has_audio"]
        and r["branches"]["fused"]["iou"] >= 0.7 > r["branches"]["visual"]["iou"]
    ]
    assert count_shown(page) == len(strict)
    page.click("#next")
    assert page.inner_text("#page").startswith("page 2 of ")
    assert all(url == path.as_uri() for url in requests), requests  # nothing fetched: one self-contained file
    assert page.evaluate("window.injected") is None


@pytest.mark.slow
def test_a_split_name_is_text_in_the_page_and_all_is_a_split_like_any_other(chromium: Any, tmp_path: Path) -> None:
    rows = generated_rows(40)
    hostile = "<img src=x onerror=window.injected=1>"
    for number, row in enumerate(rows):
        row["split"] = ("all", hostile, "test")[number % 3]
    page, _ = open_page(chromium, write_report(tmp_path / "report.html", rows).as_uri())
    assert page.evaluate("window.injected") is None and page.locator("#list img").count() == 0
    assert f"({hostile})" in page.inner_text("#list tbody")
    options = page.locator("#split option")
    assert options.all_inner_texts() == ["all splits (40)", "all (14)", f"{hostile} (13)", "test (13)"]
    assert page.inner_text("#metrics-scope") == "all splits: 40 queries"
    page.select_option("#split", index=1)  # the split named "all"
    assert page.inner_text("#metrics-scope") == "split all: 14 queries" and count_shown(page) == 14
    page.select_option("#split", index=0)
    assert page.inner_text("#metrics-scope") == "all splits: 40 queries" and count_shown(page) == 40


def _tick_labels(page: Any, chart: str) -> tuple[list[tuple[float, str]], list[tuple[float, str]], list[str]]:
    """A chart's y-axis ticks (y of the gridline, label), x-axis ticks (x, label) and its rotated axis title."""
    texts = page.locator(f"#{chart} > text").evaluate_all(
        "ts => ts.map(t => [t.getAttribute('x'), t.getAttribute('y'), t.getAttribute('transform'), t.textContent])"
    )
    y_ticks = [(float(y) - 4, label) for x, y, turn, label in texts if x == "35" and turn is None]
    x_ticks = [(float(x), label) for x, y, turn, label in texts if y == "185"]
    return y_ticks, x_ticks, [label for *_, turn, label in texts if turn is not None]


def _check_histogram(page: Any, expected: dict[str, list[int]]) -> None:
    y_ticks, x_ticks, title = _tick_labels(page, "histogram")
    assert title == ["queries"]
    assert x_ticks == [(40 + 37 * k, f"{k / 10:.1f}") for k in range(0, 11, 2)]
    top = float(y_ticks[-1][1])
    assert top >= max(max(counts) for counts in expected.values())
    for y, label in y_ticks:  # every gridline's label is the count at its height
        assert float(label) == pytest.approx(top * (170 - y) / 160), (y, label, [t for _, t in y_ticks])
    bars = page.locator("#histogram rect").evaluate_all(
        "rs => rs.map(r => [r.getAttribute('fill'), +r.getAttribute('x'), +r.getAttribute('y'),"
        " +r.getAttribute('height'), r.querySelector('title').textContent])"
    )
    assert len(bars) == 10 * len(BRANCHES)
    colours = {"#2b6cb0": "fused", "#2f855a": "visual", "#c05621": "audio"}
    for branch in BRANCHES:
        drawn = sorted((x, y, height, text) for fill, x, y, height, text in bars if colours[fill] == branch)
        assert len(drawn) == 10
        for k, (x, y, height, text) in enumerate(drawn):
            count = expected[branch][k]
            assert text == f"{branch}, IoU {k / 10:.1f}-{(k + 1) / 10:.1f}: {count}"
            assert height == pytest.approx(160 * count / top) and y + height == pytest.approx(170)
            assert 40 + 37 * k <= x < 40 + 37 * (k + 1)  # inside its bin on the x axis


def _check_recall(page: Any, expected: dict[str, list[float]]) -> None:
    y_ticks, x_ticks, title = _tick_labels(page, "recall")
    assert title == ["R1 (%)"]
    assert y_ticks == [(170 - 40 * k, str(25 * k)) for k in range(5)]
    assert x_ticks == [(40 + 370 * t, f"{t:.2f}") for t in (0, 0.25, 0.5, 0.75, 1)]
    lines = page.locator("#recall polyline").evaluate_all(
        "ps => ps.map(p => [p.dataset.branch, p.getAttribute('stroke'), p.getAttribute('points')])"
    )
    assert [branch for branch, _, _ in lines] == list(BRANCHES)
    for branch, _, points in lines:
        xy = [tuple(map(float, point.split(","))) for point in points.split()]
        assert len(xy) == 19
        for k, (x, y) in enumerate(xy):
            assert x == pytest.approx(40 + 370 * (k + 1) / 20)
            assert (170 - y) / 1.6 == pytest.approx(expected[branch][k], abs=1e-6), (branch, (k + 1) / 20)


def test_the_charts_draw_every_bar_and_point_of_the_shown_split_with_axes_that_match(
    chromium: Any, tmp_path: Path
) -> None:
    rows = rows_with_ious_on_the_edges(90)
    page, _ = open_page(chromium, write_report(tmp_path / "report.html", rows).as_uri())
    for scope in ("all", "val_2", "val_1"):
        if scope != "all":
            page.select_option("#split", scope)
        scoped = [row for row in rows if scope in ("all", row["split"])]
        expected = expected_charts(scoped)
        _check_histogram(page, expected["histogram"])
        _check_recall(page, expected["recall"])
        for legend in ("#legend-histogram", "#legend-recall"):  # a swatch of the branch's colour, then its name
            keys = page.locator(legend).evaluate(
                "e => [...e.querySelectorAll('i')].map(i => [i.style.background, i.nextSibling.textContent])"
            )
            swatches = ["rgb(43, 108, 176)", "rgb(47, 133, 90)", "rgb(192, 86, 33)"]  # the bars' and lines' colours
            assert keys == [[colour, branch] for colour, branch in zip(swatches, BRANCHES, strict=True)]


@pytest.mark.slow
def test_the_report_of_a_real_run_shows_img_eval_metrics_filters_and_plays_from_the_predicted_start(
    chromium: Any, real_run: RealRun, tmp_path: Path
) -> None:
    report, predictions = tmp_path / "report.html", tmp_path / "predictions.jsonl"
    evaluated = run_img_eval(
        real_run.checkpoint,
        "--split",
        "test",
        "--split",
        "train-val",
        "--threads",
        "1",
        "--json",
        "--predictions",
        predictions,
        "--report",
        report,
        "--videos",
        real_run.videos,
        "--compare-drop-audio",  # the docs' screenshot shows the side by side
    )
    assert evaluated.returncode == 0, evaluated.stderr
    splits = {entry["split"]: entry for entry in json.loads(evaluated.stdout)["splits"]}
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    page, requests = open_page(chromium, report.as_uri())

    page.select_option("#split", "test")
    for branch, metrics in splits["test"]["branches"].items():
        cells = page.locator(f'#metrics tr[data-branch="{branch}"] td').all_inner_texts()
        assert cells[1:] == [f"{metrics[name]:.2f}" for name in TABLE_NAMES]
    test_rows = [row for row in rows if row["split"] == "test"]
    assert page.locator("#list tbody tr").count() == len(test_rows)
    assert not all(row["has_audio"] for row in test_rows)  # clip5: its mean importance counts as img-eval's does
    assert f"importance {splits['test']['mean_audio_importance']:.3f} " in page.inner_text("#importance-note")
    page.check("#wrong")
    wrong = [row for row in test_rows if row["branches"]["fused"]["iou"] < 0.5]
    assert page.locator("#list tbody tr").count() == count_shown(page) == len(wrong)
    page.uncheck("#wrong")
    page.select_option("#split", "train-val")
    assert count_shown(page) == len(rows) - len(test_rows) > 0

    page.select_option("#split", "test")
    row = test_rows[0]
    page.locator(f'#list tbody tr[data-index="{rows.index(row)}"] button.play').click()
    video = page.locator("tr.player video")
    page.wait_for_function("v => v.dataset.seeked === '1'", arg=video.element_handle(), timeout=20000)
    current = video.evaluate("v => v.currentTime")
    start = row["branches"]["fused"]["span"][0]
    assert start - 0.05 <= current <= start + 1.0, (current, start)  # seeked there (and may have played on)
    assert video.evaluate("v => v.error") is None  # Chromium decoded the H.264 file
    linked = os.path.relpath(real_run.videos / f"{row['video_id']}.mp4", tmp_path)
    assert video.get_attribute("src") == linked  # the file is linked, relative to the report, not embedded
    page.locator(f'#list tbody tr[data-index="{rows.index(row)}"] button.play').click()  # closed again
    page.locator(f'#list tbody tr[data-index="{rows.index(row)}"] button.curves').click()
    page.set_viewport_size({"width": 1400, "height": 1750})
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    save_screenshot(page, tmp_path / "report.png", "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert all(url.startswith("file://") for url in requests), requests


# --- issue 18: charts of the breakdowns, sorting, curves, n/a branches, side by side, CSV -----------------------


def test_a_rows_curves_are_at_most_64_characters_each_and_decode_to_its_probabilities() -> None:
    alphabet = CURVE_ALPHABET
    for steps in (20, 128, 300):
        start, end = probability_curves(steps, steps)
        encoded = encode_curves(np.array(start), np.array(end))
        assert encoded is not None
        length, peak, start_text, end_text = encoded
        points = min(steps, CURVE_POINTS)
        assert length == steps and len(start_text) == len(end_text) == points
        groups = np.array_split(np.arange(steps), points)  # reduceat's groups differ by at most one step from these
        for curve, text in ((start, start_text), (end, end_text)):
            decoded = np.array([alphabet.index(c) for c in text]) * peak / (len(alphabet) - 1)
            if points == steps:
                assert decoded == pytest.approx(curve, abs=peak / 126 + 1e-4 * peak)
            assert decoded.sum() == pytest.approx(1.0, abs=points * peak / 126)
        assert max(len(g) for g in groups) <= -(-steps // points)
    assert encode_curves(np.zeros(0), np.zeros(0)) is None  # rows written before img-eval kept the curves


def curve_points(page: Any, kind: str) -> list[tuple[float, float]]:
    points = page.locator(f'tr.curves polyline[data-curve="{kind}"]').get_attribute("points")
    return [tuple(map(float, point.split(","))) for point in points.split()]


def test_a_row_opens_its_p_start_and_p_end_on_one_labelled_axis(chromium: Any, tmp_path: Path) -> None:
    rows = generated_rows(3)
    start, end = probability_curves(20, 7)
    rows[0] |= {"num_steps": 20, "duration": 40.0, "ground_truth": [10.0, 20.0]}
    rows[0]["branches"]["fused"] |= {"start_probability": start, "end_probability": end}
    for name in ("start_probability", "end_probability"):  # a predictions file written before the curves were kept
        del rows[2]["branches"]["fused"][name]
    page, _ = open_page(chromium, write_report(tmp_path / "report.html", rows).as_uri())
    page.locator('#list tbody tr[data-index="0"] button.curves').click()
    peak = max(max(start), max(end))
    ticks = page.locator("tr.curves svg text[data-tick]").all_text_contents()
    assert ticks[0] == "0" and ticks[-1] == f"{float(f'{peak:.4g}'):.3f}"  # one axis for both curves, labelled
    for kind, curve in (("start", start), ("end", end)):
        xy = curve_points(page, kind)
        assert len(xy) == 20
        assert [x for x, _ in xy] == pytest.approx([60 + 580 * (k + 0.5) / 20 for k in range(20)], abs=0.06)
        shown = [(150 - y) * float(f"{peak:.4g}") / 130 for _, y in xy]
        assert shown == pytest.approx(curve, abs=peak / 100)
    truth = page.locator('tr.curves rect[data-kind="truth"]')
    assert float(truth.get_attribute("x")) == pytest.approx(60 + 580 * 10 / 40)
    page.locator('#list tbody tr[data-index="0"] button.curves').click()  # closes again
    assert page.locator("tr.curves").count() == 0
    page.locator('#list tbody tr[data-index="1"] button.curves').click()
    assert len(curve_points(page, "start")) == CURVE_POINTS  # 128 steps: 64 points of two steps each
    page.locator('#list tbody tr[data-index="2"] button.curves').click()
    assert "no P(start)/P(end) in these predictions" in page.locator("tr.curves").last.inner_text()


def list_column(page: Any, index: int) -> list[str]:
    return page.locator(f"#list tbody tr[data-index] > td:nth-child({index + 1})").all_inner_texts()


def test_clicking_a_header_sorts_every_shown_row_numerically_and_again_reverses(chromium: Any, tmp_path: Path) -> None:
    rows = generated_rows(130)
    page, _ = open_page(chromium, write_report(tmp_path / "report.html", rows).as_uri())
    moments = sorted(row["ground_truth"][1] - row["ground_truth"][0] for row in rows)  # 0.4 < 9.6 < 10.2 < 100.3
    page.click('#list th[data-sort="moment"]')
    assert page.get_attribute('#list th[data-sort="moment"]', "aria-sort") == "ascending"
    assert [float(v) for v in list_column(page, 3)] == pytest.approx(moments[:PAGE_SIZE], abs=0.006)
    page.click('#list th[data-sort="moment"]')
    assert page.get_attribute('#list th[data-sort="moment"]', "aria-sort") == "descending"
    assert [float(v) for v in list_column(page, 3)] == pytest.approx(moments[::-1][:PAGE_SIZE], abs=0.006)
    page.click('#list th[data-sort="qid"]')  # numbers inside text by value: q2 before q10
    assert list_column(page, 0) == [f"q{n}" for n in range(PAGE_SIZE)]
    assert page.get_attribute('#list th[data-sort="moment"]', "aria-sort") is None
    page.click('#list th[data-sort="fused"]')
    page.click('#list th[data-sort="fused"]')
    page.check("#wrong")  # a filter keeps the order: the wrong answers, best IoU first, over every page
    wrong = sorted(
        (row["branches"]["fused"]["iou"] for row in rows if row["branches"]["fused"]["iou"] < 0.5), reverse=True
    )
    shown = [float(v) for v in list_column(page, 4)]
    page.click("#next")
    shown += [float(v) for v in list_column(page, 4)]
    assert shown == pytest.approx(wrong, abs=0.006)


def test_branches_that_do_not_apply_read_n_a_and_are_never_green(chromium: Any, tmp_path: Path) -> None:
    rows = generated_rows(40)
    for row in rows[:3]:  # silent videos whose audio branch (reading zeros) happens to hit the truth
        row["has_audio"] = False
        row["branches"]["audio"] |= {"span": row["ground_truth"], "iou": 1.0}
    page, _ = open_page(chromium, write_report(tmp_path / "report.html", rows).as_uri())
    for index in range(3):
        cell = page.locator(f'#list tbody tr[data-index="{index}"] td[data-branch="audio"]')
        assert cell.inner_text() == "n/a" and cell.get_attribute("class") == "na"
        assert page.locator(f'#list tbody tr[data-index="{index}"] .timeline .audio').count() == 0
    assert page.locator('#list tbody tr[data-index="3"] td[data-branch="audio"]').inner_text() != "n/a"

    without_audio = [dict(row, audio_importance=None) for row in generated_rows(40)]
    for row in without_audio:  # a model without an audio branch
        row["branches"] = {name: value for name, value in row["branches"].items() if name != "audio"}
    page, _ = open_page(chromium, write_report(tmp_path / "visual.html", without_audio).as_uri())
    assert set(page.locator('#metrics tr[data-branch="audio"] td:not(.branch)').all_inner_texts()) == {"n/a"}
    audio_cells = page.locator('#list tbody td[data-branch="audio"]')
    assert audio_cells.count() == PAGE_SIZE - 10 and set(audio_cells.all_inner_texts()) == {"n/a"}
    assert page.locator('#list tbody td[data-branch="audio"].ok').count() == 0
    assert "n/a: the model predicts no audio importance" in page.text_content("#importance-chart")
    assert "audio: n/a" in page.inner_text("#legend-importance")
    assert page.locator("#importance-chart rect").count() == 0


def test_warnings_come_first_and_tiny_importances_read_below_0_001(chromium: Any, tmp_path: Path) -> None:
    rows = generated_rows(6)
    for row, importance in zip(rows, (1e-17, 0.0, 0.0004, 0.0015), strict=False):
        row["audio_importance"] = importance
        row["has_audio"] = True
    warnings = ["audio importance collapsed: every p below 1e-3", "<b>loss</b> spiked 4.1x its running mean"]
    page, _ = open_page(chromium, write_report(tmp_path / "report.html", rows, warnings=warnings).as_uri())
    assert page.locator("#warnings li").all_inner_texts() == warnings  # as text
    assert page.locator("#warnings").bounding_box()["y"] < page.locator("#metrics").bounding_box()["y"]
    assert list_column(page, 7)[:4] == ["< 0.001", "0", "< 0.001", "0.002"]
    page, _ = open_page(chromium, write_report(tmp_path / "quiet.html", rows).as_uri())
    assert not page.locator("#warnings").is_visible()


def test_chart_text_is_at_least_11_px_on_a_wide_and_a_narrow_screen(chromium: Any, tmp_path: Path) -> None:
    path = write_report(tmp_path / "report.html", generated_rows(40), compared=Compared("B", generated_rows(40, 1)))
    for width in (1400, 760):
        page, _ = open_page(chromium, path.as_uri())
        page.set_viewport_size({"width": width, "height": 900})
        page.locator("#list tbody button.curves").first.click()
        sizes = page.evaluate(
            "() => [...document.querySelectorAll('svg text')].filter(t => t.textContent).map(t => {"
            " const m = t.getScreenCTM(); return Math.hypot(m.a, m.b) * parseFloat(getComputedStyle(t).fontSize); })"
        )
        assert len(sizes) > 60 and min(sizes) >= 11, (width, min(sizes))


def csv_cells(text: str) -> list[list[Any]]:
    """CSV rows with each number as a float: Python writes 3.0 and 1e-05 where JavaScript writes 3 and 0.00001."""

    def value(cell: str) -> Any:
        try:
            return float(cell)
        except ValueError:
            return cell

    return [[value(cell) for cell in row] for row in csv.reader(io.StringIO(text))]


@pytest.fixture(scope="module")
def side_by_side(learning_check: LearningCheck, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One img-eval command on the learning check's checkpoint, with and without audio, into a report and a CSV
    in a folder of their own (absolute paths given): its result, the report, the CSV and the learning check."""
    out = tmp_path_factory.mktemp("side-by-side") / "published"
    report, table = out / "report.html", out / "rows.csv"
    evaluated = run_img_eval(
        learning_check.checkpoint,
        "--compare-drop-audio",
        *("--report", report, "--csv", table, "--title", "with and without audio"),
        *("--threads", "1", "--json"),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    return {"evaluated": evaluated, "report": report, "table": table, "learning_check": learning_check}


def test_one_img_eval_command_shows_the_checkpoint_with_and_without_audio_side_by_side(
    chromium: Any, side_by_side: dict[str, Any]
) -> None:
    evaluated, report, table = side_by_side["evaluated"], side_by_side["report"], side_by_side["table"]
    learning_check, out = side_by_side["learning_check"], side_by_side["report"].parent
    result = json.loads(evaluated.stdout)
    with_audio, without = result["branches"], result["compared"]["splits"][0]["branches"]
    text = report.read_text(encoding="utf-8")
    assert str(out) not in text and str(learning_check.checkpoint.parent) not in text  # no machine paths
    page, requests = open_page(chromium, report.as_uri())
    assert page.inner_text("#title") == page.title() == "with and without audio"
    label = os.path.relpath(learning_check.checkpoint, out)
    assert f"A: {label} · B: {label}, audio dropped" in page.inner_text("#compare-scope")
    for branch in ("fused", "visual"):
        for name in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU"):
            row = f'#compare-table tr[data-branch="{branch}"] td[data-metric="{name}"]'
            assert page.inner_text(f'{row}[data-column="A"]') == f"{with_audio[branch][name]:.2f}"
            assert page.inner_text(f'{row}[data-column="B"]') == f"{without[branch][name]:.2f}"
    assert with_audio["fused"] != without["fused"]  # the audio mattered to this model
    b_audio = page.locator('#compare-table tr[data-branch="audio"] td[data-column="B"]').all_inner_texts()
    assert set(b_audio) == {"n/a"}  # B read no audio at all: its audio branch does not apply

    written = csv_cells(table.read_text(encoding="utf-8"))  # img-eval --csv is the page's CSV link
    with page.expect_download() as download:
        page.click("#csv")
    assert csv_cells(Path(download.value.path()).read_text(encoding="utf-8")) == written
    header, body = written[0], written[1:]
    assert header[-3:] == ["compared_fused_start", "compared_fused_end", "compared_fused_iou"]
    assert len(body) == result["queries"] and {row[0] for row in body} == {row["qid"] for row in learning_check.rows()}
    b_iou = [row[header.index("compared_fused_iou")] for row in body]
    assert 100 * np.mean(np.array(b_iou) >= 0.3) == pytest.approx(without["fused"]["R1@0.3"])
    shown = dict(zip(list_column(page, 0), list_column(page, 8), strict=True))  # the B column of every row
    assert shown == {row[0]: f"{row[header.index('compared_fused_iou')]:.2f}" for row in body[: len(shown)]}
    page.check("#differ")
    a_iou = [row[header.index("fused_iou")] for row in body]
    assert count_shown(page) == sum((a >= 0.5) != (b >= 0.5) for a, b in zip(a_iou, b_iou, strict=True))
    assert all(url.startswith("file://") for url in requests), requests


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--compare-drop-audio"], "add --report report.html or --csv"),
        (["--compare", "a.pt", "--compare", "b.pt", "--report", "r.html"], "takes one checkpoint"),
        (["--title", "t"], "--title goes into the HTML report"),
    ],
)
def test_side_by_side_and_title_options_say_what_they_need(options: list[str], message: str, tmp_path: Path) -> None:
    """img-eval's click command in this process (the installed script's usage errors: test_img_eval.py)."""
    from img_model.cli.evaluate import main as img_eval

    evaluated = CliRunner().invoke(img_eval, [str(tmp_path / "best.pt"), *options])
    assert evaluated.exit_code == 2 and message in evaluated.stderr and len(evaluated.stderr.splitlines()) == 1
